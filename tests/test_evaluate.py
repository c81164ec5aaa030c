"""`svformer-deploy evaluate`, input noise as the paper defines it, anytime logits and early exit.

The demo-model check trains the demo's model (its configuration, at a tiny size: 1 epoch, 3 clips per
class) with ``svformer-deploy demo``, then evaluates its held-out split on the float64 graph and holds
the predictions to the PyTorch model's on the same clips.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_in_process as cli
from conftest import data_path, one_error_line
from fixtures_models import single_thread  # noqa: F401
from svformer_deploy.deploy.cli import main
from svformer_deploy.deploy.energy.cost_models import get_cost_model
from svformer_deploy.deploy.energy.methods import evaluate_record
from svformer_deploy.export.bundle import load_bundle
from svformer_deploy.simulators.anytime import READOUT_LAYER, exit_energies_pj, exit_step, margins, truncated_record
from svformer_deploy.simulators.executor import Simulator
from svformer_deploy.simulators.record import COUNT_KEYS, RunRecord, build_record, validate_record
from svformer_deploy.simulators.run import bundle_input_spec
from svformer_deploy.svformer.checkpoint import load_model
from svformer_deploy.svformer.data.noise import Noise, frame_rng, gaussian_noise, parse_noise, salt_pepper_noise
from svformer_deploy.svformer.errors import SVFormerError
from test_energy_html import WIDTH, _browser, _chromium
from test_sim_cli import make_bundle, write_clip


# ------------------------------------------------------------------------------------------
# noise: the paper's formulas on synthetic frames
# ------------------------------------------------------------------------------------------
def test_gaussian_noise_has_sigma_a_times_the_frames_std_and_is_seeded():
    rng = np.random.default_rng(5)
    frame = rng.integers(90, 170, (120, 160, 3)).astype(np.uint8)  # mid-range: no clipping at a = 0.3
    sigma_ori = frame.astype(np.float64).std()
    noise = Noise("gaussian", 0.3)
    noisy = noise.apply(frame, frame_rng(7, "clip", noise, 3))
    diff = noisy.astype(np.float64) - frame
    assert noisy.dtype == np.float32 and noisy.shape == frame.shape
    assert abs(diff.mean()) < 0.02 * sigma_ori
    assert diff.std() == pytest.approx(0.3 * sigma_ori, rel=0.01)
    # exactly x + sigma * N(0, 1) from the frame's own generator
    expected = frame + frame_rng(7, "clip", noise, 3).normal(0.0, 1.0, frame.shape) * 0.3 * sigma_ori
    np.testing.assert_allclose(noisy, expected.astype(np.float32), rtol=0, atol=1e-4)
    np.testing.assert_array_equal(noisy, noise.apply(frame, frame_rng(7, "clip", noise, 3)))  # seeded
    assert not np.array_equal(noisy, noise.apply(frame, frame_rng(7, "clip", noise, 4)))  # per frame
    assert not np.array_equal(noisy, noise.apply(frame, frame_rng(8, "clip", noise, 3)))  # per seed
    loud = gaussian_noise(frame, 20.0, np.random.default_rng(0))  # clipped to the pixel range
    assert loud.min() == 0.0 and loud.max() == 255.0
    assert np.array_equal(gaussian_noise(frame, 0.0, np.random.default_rng(0)), frame.astype(np.float32))


def test_salt_and_pepper_sets_exactly_the_drawn_pixels_to_the_frames_lowest_or_highest_value():
    rng = np.random.default_rng(1)
    frame = rng.integers(30, 200, (100, 120, 3)).astype(np.uint8)
    lo, hi = frame.min(), frame.max()
    p = 0.2
    noisy = salt_pepper_noise(frame, p, np.random.default_rng(11))
    u = np.random.default_rng(11).random(frame.shape[:2])
    pepper, salt = u < p / 2, (u >= p / 2) & (u < p)
    assert (noisy[pepper] == lo).all() and (noisy[salt] == hi).all()  # all three channels of the pixel
    untouched = ~(pepper | salt)
    np.testing.assert_array_equal(noisy[untouched], frame[untouched])
    changed = (noisy != frame).any(axis=2)
    assert changed.sum() <= pepper.sum() + salt.sum()
    assert pepper.sum() + salt.sum() == pytest.approx(p * u.size, rel=0.05)  # probability P per pixel
    assert pepper.sum() == pytest.approx(salt.sum(), rel=0.1)  # lowest and highest equally likely


def test_noise_specs_parse_and_bad_ones_are_errors():
    assert parse_noise(["gaussian:0.1,0.5", "salt-pepper:0.01"]) == [
        Noise("gaussian", 0.1), Noise("gaussian", 0.5), Noise("salt-pepper", 0.01)]
    for bad in ("gaussian", "blur:0.1", "gaussian:x", "salt-pepper:1.5", "gaussian:-1"):
        with pytest.raises(SVFormerError, match="--noise"):
            parse_noise([bad])


# ------------------------------------------------------------------------------------------
# anytime logits and the records of an early exit
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "m.svfd", "3stg", img_size=32, time_steps=4, in_channels=3)


@pytest.mark.parametrize("mode", ["float", "integer"])
def test_anytime_logits_end_at_the_logits_and_early_exit_records_are_valid_and_add_up(bundle, mode):
    b = load_bundle(bundle)
    sim = Simulator(b.graph("ir_quantized" if mode == "integer" else "ir"), mode=mode)
    x = torch.randn(sim.input_shape, generator=torch.Generator().manual_seed(1))
    plain, res = sim.run(x), sim.run(x, anytime=True)
    np.testing.assert_array_equal(res.logits, plain.logits)  # the read-outs change nothing
    assert all((res.counts[k] == plain.counts[k]).all() for k in plain.counts)
    T = sim.time_steps
    assert res.step_logits.shape == (T, len(plain.logits))
    np.testing.assert_array_equal(res.step_logits[-1], plain.logits)
    assert not res.readout_counts[:, -1].any() and res.readout_counts[:, :-1].any()
    rec = build_record(sim, res, model={"hash": b.model_hash, "config": b.manifest["config"]},
                       input={"kind": "video"}, class_names=b.class_names)
    cost = get_cost_model("fp32")
    full = evaluate_record(RunRecord(Path("r"), validate_record(rec, "r")), cost).totals_pj
    for steps in range(1, T + 1):
        data = validate_record(truncated_record(sim, res, steps, model=rec["model"], input=rec["input"],
                                                full_record=rec), f"exit {steps}")  # the schema holds
        assert data["time_steps"] == steps
        by = {layer["name"]: layer for layer in data["layers"]}
        for layer in rec["layers"]:
            if steps == T:  # all steps kept: the full record plus the read-outs of steps 0..T-2
                assert by[layer["name"]]["counts"] == layer["counts"]
            elif layer["op"] == "neuron":
                assert by[layer["name"]]["per_step"]["spikes_out"] == layer["per_step"]["spikes_out"][:steps]
        assert by[READOUT_LAYER]["counts"]["mac"] > 0
    exits = exit_energies_pj(sim, res, rec, cost, b.class_names)
    rc = dict(zip(COUNT_KEYS, res.readout_counts.sum(axis=1).tolist(), strict=True))
    readout_pj = (cost.e_ac_pj * rc["ac"] + cost.e_mac_pj * rc["mac"] + cost.e_mul_pj * rc["mul"]
                  + cost.e_add_pj * rc["add"] + cost.e_neuron_update_pj * rc["neuron_updates"])
    assert readout_pj > 0 and exits["exact"][-1] == pytest.approx(full["exact"] + readout_pj, rel=1e-12)
    assert all(a < b for a, b in zip(exits["exact"], exits["exact"][1:], strict=False))  # more steps cost more


def test_anytime_logits_are_the_head_on_the_seen_steps_completed_by_their_mean(bundle):
    """Independent of the simulator's read-out code: the completed volume through conv3d, flatten, linear."""
    import torch.nn.functional as F

    sim = Simulator(load_bundle(bundle).graph("ir"), mode="float", dtype=torch.float64)
    assert [sim.ops[n].op for n in sim.clip_nodes] == ["conv3d", "flatten", "linear", "output"]
    head, _, lin, _ = (sim.ops[n] for n in sim.clip_nodes)
    x = torch.randn(sim.input_shape, generator=torch.Generator().manual_seed(2))
    res = sim.run(x, anytime=True, record_values=True)
    vol = res.values[sim.inputs[sim.clip_nodes[0]][0]].to(torch.float64)  # head input [T, C, h, w]
    T = sim.time_steps
    w, b = torch.from_numpy(head.weight).double(), torch.from_numpy(head.bias).double()
    for t in range(T):
        mean = vol[:t + 1].mean(0)
        est = torch.cat([vol[:t + 1], mean.expand(T - t - 1, *mean.shape)])  # [T, C, h, w]
        y = F.conv3d(est.permute(1, 0, 2, 3)[None], w, b, groups=head.groups).flatten()
        logits = torch.from_numpy(lin.weight).double() @ y + torch.from_numpy(lin.bias).double()
        np.testing.assert_allclose(res.step_logits[t], logits.numpy(), rtol=0, atol=1e-9)


def test_exit_rule_needs_the_margin_for_k_consecutive_steps():
    # margins (softmax p1-p2) of these logits: ~0.46, ~0.0, ~0.76, ~0.76, ~0.0
    steps = np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    m = margins(steps)
    assert m[1] == 0 and m[2] == pytest.approx(m[3]) and m[2] > 0.7 and m[0] == pytest.approx(np.tanh(0.5))
    assert exit_step(steps, 0.4, 1) == 0
    assert exit_step(steps, 0.5, 1) == 2
    assert exit_step(steps, 0.5, 2) == 3
    assert exit_step(steps, 0.9, 1) == 4  # never: the last step


# ------------------------------------------------------------------------------------------
# the demo model: float64 graph == PyTorch, noise, early exit, HTML
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    code = main(["demo", "-o", str(out), "--epochs", "1", "--train-per-class", "3", "--test-per-class", "3",
                 "--targets", "nir", "--quiet"])
    assert code == 0
    return out


def test_float64_graph_accuracy_equals_the_pytorch_models_on_the_demo_held_out_split(demo, tmp_path, capsys):
    code, out, err = cli(capsys, "evaluate", "--videos", demo / "data" / "test", "--model", demo / "model.svfd",
                         "--precision", "float64", "--noise", "gaussian:0.5", "--noise", "salt-pepper:0.05",
                         "--runs", tmp_path / "runs", "--json", "--html", tmp_path / "html",
                         "--markdown", tmp_path / "r.md", "--csv-report", tmp_path / "r.csv")
    assert code == 0, err
    report = json.loads(out)
    bundle = load_bundle(demo / "model.svfd")
    spec = bundle_input_spec(bundle)
    model, ckpt = load_model(demo / "train" / "last.pt")
    model = model.double()
    names = ckpt.class_names
    assert report["clips"] == 12 and report["precision"] == "float64" and not report["failed"]
    graph_logits = {d["clip"]: d["conditions"]["clean"]["logits"]
                    for d in (json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json"))}
    hits = 0
    for row in report["predictions"]:
        x = spec.load_clip(row["clip"]).double()[:, None]  # [T, 1, C, S, S]
        with torch.no_grad():
            logits = model.forward_sequence(x)[0].numpy()
        pred = names[int(logits.argmax())]
        assert row["prediction"] == pred, row  # same prediction, clip by clip
        np.testing.assert_allclose(graph_logits[row["clip"]], logits, rtol=0, atol=1e-9)  # same logits
        hits += pred == row["label"]
    clean = report["conditions"][0]
    assert clean["condition"] == "clean" and clean["top1"] == hits / 12
    assert [c["condition"] for c in report["conditions"]] == ["clean", "gaussian:0.5", "salt-pepper:0.05"]
    for c in report["conditions"]:
        assert c["energy_mj"]["exact"] > 0 and 0 < c["firing_rate"] < 1
    assert report["conditions"][1]["firing_rate"] != clean["firing_rate"]  # noise changes the activity
    assert sum(map(sum, report["confusion"])) == 12
    assert [r["clips"] for r in report["per_class"]] == [3, 3, 3, 3]
    sweep = report["early_exit"]
    assert sweep[0]["margin"] == 0 and sweep[0]["mean_exit_step"] == 1  # margin 0: every clip stops at step 1
    assert sweep[0]["energy_mj"]["exact"] < report["full_energy_mj"]["exact"]
    steps = [s["mean_exit_step"] for s in sweep]
    assert steps == sorted(steps)  # a higher margin never exits earlier
    md, csv_text = (tmp_path / "r.md").read_text(), (tmp_path / "r.csv").read_text()
    assert "| clean |" in md and "Early exit" in md and "section,name" in csv_text.splitlines()[0]

    # rerun: everything resumed from the per-clip results, same report
    code, out2, err = cli(capsys, "evaluate", "--videos", demo / "data" / "test", "--model", demo / "model.svfd",
                          "--precision", "float64", "--noise", "gaussian:0.5", "--noise", "salt-pepper:0.05",
                          "--runs", tmp_path / "runs", "--json")
    again = json.loads(out2)
    assert code == 0 and again["resumed"] == 12 and again["simulated"] == 0
    assert again["conditions"] == report["conditions"] and again["early_exit"] == report["early_exit"]


def test_ctrl_c_during_evaluate_leaves_whole_per_clip_results_no_report_and_the_rerun_resumes(demo, tmp_path):
    """SIGINT once the first clip's result exists: exit 2 with one error line, every per-clip result left is
    whole, no temporary file, no report folder; the rerun resumes those clips and finishes."""
    import shutil
    import signal
    import subprocess
    import time

    from conftest import CLI

    videos = tmp_path / "videos"
    for clip in sorted((demo / "data" / "test").rglob("*.mp4")):  # 12 clips, each 3 times: 36
        for i in range(3):
            dst = videos / clip.parent.name / f"{clip.stem}_{i}.mp4"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(clip, dst)
    runs, html = tmp_path / "runs", tmp_path / "html"
    args = [str(CLI), "evaluate", "--videos", str(videos), "--model", str(demo / "model.svfd"), "--runs", str(runs),
            "--noise", "gaussian:0.5", "--workers", "2", "--html", str(html)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(__import__("os").environ, SVFORMER_NO_PROGRESS="1"))
    try:
        while not list(runs.glob("*.json")) and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    line = one_error_line(proc.returncode, err, "interrupted")
    assert out == "" and "Traceback" not in err, err
    done = sorted(runs.glob("*.json"))
    assert 1 <= len(done) < 36, len(done)
    assert all(isinstance(json.loads(p.read_text()), dict) for p in done)  # whole files only
    assert [p for p in runs.rglob("*") if p.is_file() and p.suffix != ".json"] == [] and not html.exists(), line
    rerun = subprocess.run(args[:-2] + ["--json"], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["clips"] == 36 and report["resumed"] == len(done) and not report["failed"]


def test_the_html_page_shows_the_noise_table_and_the_early_exit_curve_in_headless_chromium(demo, tmp_path, capsys):
    browser = _browser()
    code, _, err = cli(capsys, "evaluate", "--videos", demo / "data" / "test", "--model", demo / "model.svfd",
                       "--noise", "gaussian:0.1,0.5", "--runs", tmp_path / "runs", "--html", tmp_path / "html")
    assert code == 0, err
    page = tmp_path / "html" / "index.html"
    text = page.read_text()
    assert "gaussian:0.1" in text and "Early exit (clean)" in text
    assert not re.search(r'(src|href)="(https?:)?//', text)
    dom = _chromium(browser, tmp_path / "profile", f"--window-size={WIDTH},8000", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', re.search(r'<p id="plot-status"([^>]*)>', dom.stdout).group(1)))
    assert (attrs["data-ok"], attrs["data-total"]) == ("3", "3"), attrs
    boxes = json.loads(attrs["data-boxes"].replace("&quot;", '"'))
    shot = tmp_path / "page.png"
    proc = _chromium(browser, tmp_path / "profile", f"--window-size={WIDTH},{attrs['data-page-height']}",
                     f"--screenshot={shot}", page.as_uri())
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    colourful = (img.max(axis=2) - img.min(axis=2)) > 60
    for i, (x, y, w, h) in enumerate(boxes):  # noise plot, early-exit curve, confusion matrix: drawn
        assert w > 200 and h > 100, (i, w, h)
        assert colourful[y:y + h, x:x + w].mean() > 0.005, f"plot {i} is not visible"
    demo_page = (demo / "report" / "index.html").read_text()  # make demo: the same sections in its page
    assert "Evaluation on the held-out split" in demo_page and "Early exit: accuracy vs energy" in demo_page


def test_simulate_early_exit_reports_the_exit_step_and_the_energy_saved(demo, tmp_path, capsys):
    clip = sorted((demo / "data" / "test").glob("*/*.mp4"))[0]
    args = ("simulate", "--video", clip, "--model", demo / "model.svfd", "--out", tmp_path, "--json", "-q")
    code, out, err = cli(capsys, *args, "--early-exit", "0,1")
    assert code == 0, err
    ee = json.loads(out)["early_exit"]
    assert ee["exit_step"] == 1 and ee["exited_early"] and 0.5 < ee["saved"]["exact"] < 1
    code, out, err = cli(capsys, *args, "--early-exit", "1.0,3")
    ee = json.loads(out)["early_exit"]
    assert ee["exit_step"] == ee["time_steps"] and not ee["exited_early"] and ee["saved"]["exact"] < 0  # read-outs
    for m in (0.3, 0.6):
        code, out, err = cli(capsys, *args, "--early-exit", f"{m},2")
        ee = json.loads(out)["early_exit"]
        ok = [v >= m for v in ee["margins"]]
        first = next((t for t in range(1, len(ok)) if ok[t] and ok[t - 1]), len(ok) - 1)
        assert ee["exit_step"] == first + 1
    code, _, err = cli(capsys, *args, "--early-exit", "0.5,0")
    one_error_line(code, err, "--early-exit")


# ------------------------------------------------------------------------------------------
# layouts, bad clips, bad input
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def events_bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "dvs.svfd", "3stg", img_size=32, time_steps=4, in_channels=2,
                       num_classes=10, class_names=[str(i) for i in range(10)])


def test_nmnist_and_events_folder_layouts_and_noise_is_refused_for_events(events_bundle, tmp_path, capsys):
    src = data_path("events", "nmnist-small")
    lines = (src / "test100.txt").read_text().splitlines()
    rows = [ln for ln in lines if ln.strip() and not ln.startswith("#")][:6]
    nm = tmp_path / "nmnist"
    nm.mkdir()
    (nm / "test100.txt").write_text("#sample #class\n" + "\n".join(rows) + "\n")
    for r in rows:
        (nm / f"{r.split()[0]}.bs2").symlink_to(src / f"{r.split()[0]}.bs2")
    b = load_bundle(events_bundle)
    names = b.class_names
    code, out, err = cli(capsys, "evaluate", "--nmnist", nm, "--model", events_bundle, "--runs", tmp_path / "r1",
                         "--json", "--workers", "1")
    assert code == 0 and "N-MNIST" not in err, err
    doc = json.loads(out)
    assert doc["clips"] == 6 and doc["classes"] == names and len(doc["conditions"]) == 1

    folder = tmp_path / "events"
    for r in rows[:4]:
        sample, label = r.split()
        (folder / names[int(label)]).mkdir(parents=True, exist_ok=True)
        (folder / names[int(label)] / f"{sample}.bs2").symlink_to(src / f"{sample}.bs2")
    (folder / names[0]).mkdir(exist_ok=True)
    (folder / names[0] / "broken.bs2").write_bytes(b"\x00\x01")  # 2 bytes: not a whole event
    code, out, err = cli(capsys, "evaluate", "--events", folder, "--model", events_bundle, "--runs", tmp_path / "r2",
                         "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["clips"] == 4 and [f["clip"] for f in doc["failed"]] == [str(folder / names[0] / "broken.bs2")]
    assert "warning: skipped clip" in err and "broken.bs2" in err
    code, _, err = cli(capsys, "evaluate", "--events", folder, "--model", events_bundle, "--noise", "gaussian:0.1")
    one_error_line(code, err, "--noise", "event recordings")


def test_bad_arguments_are_one_error_line(bundle, tmp_path, capsys):
    folder = tmp_path / "clips" / "walk"
    folder.mkdir(parents=True)
    write_clip(folder / "a.mp4", frames=12, size=40)
    base = ("evaluate", "--videos", tmp_path / "clips", "--model", bundle, "--runs", tmp_path / "r")
    for extra, fragment in ((("--noise", "blur:0.1"), "--noise"), (("--exit-margins", "2"), "--exit-margins"),
                            (("--cost-model", "nope"), "nope")):
        code, _, err = cli(capsys, *base, *extra)
        one_error_line(code, err, fragment)
    code, _, err = cli(capsys, "evaluate", "--videos", tmp_path / "clips", "--nmnist", tmp_path, "--model", bundle)
    one_error_line(code, err, "exactly one dataset")
    (tmp_path / "clips" / "unknown_class").mkdir()
    (tmp_path / "clips" / "unknown_class" / "b.mp4").write_bytes((folder / "a.mp4").read_bytes())
    code, _, err = cli(capsys, *base)
    one_error_line(code, err, "unknown_class")
