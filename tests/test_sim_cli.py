"""``svformer-deploy simulate``: real clips and event recordings through export bundles, run records, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import cli_in_process as cli
from conftest import data_path, one_error_line, run_cli
from fixtures_models import make_input, make_model, single_thread  # noqa: F401
from svformer_deploy.deploy.cli import main
from svformer_deploy.deploy.energy.records import read_record
from svformer_deploy.export.bundle import BundleWriter, load_bundle
from svformer_deploy.export.passes.quantize import QuantConfig
from svformer_deploy.export.pipeline import run_pipeline
from svformer_deploy.svformer.checkpoint import default_preprocessing

VIDEO_CLASSES = ["walk", "run", "jump", "wave", "sit"]


def make_bundle(path: Path, variant: str = "base", quantize: bool = True, class_names: list[str] | None = None,
                **overrides) -> Path:
    """An export bundle of a tiny random model, built as ``export`` does: trace, passes, BundleWriter."""
    model = make_model(variant, **overrides)
    cfg = model.cfg
    calib = make_input(model, batch=2, seed=3)
    if cfg.in_channels == 2:
        calib = calib.abs().round()
    res = run_pipeline(model, quant=QuantConfig() if quantize else None, calibration=calib if quantize else None)
    with BundleWriter(path) as w:
        w.add_graph("ir", res.graphs["folded"], "ir.json")
        if quantize:
            w.add_graph("ir_quantized", res.graphs["quantized"], "ir_int.json")
        w.manifest.update(
            arch=variant, config=cfg.to_dict(), class_names=class_names or VIDEO_CLASSES[:cfg.num_classes],
            preprocessing=default_preprocessing(cfg), passes=list(res.graph.graph["passes"]),
            input={"layout": "TCHW", "shape": [cfg.time_steps, cfg.in_channels, cfg.img_size, cfg.img_size],
                   "encoding": "events" if cfg.in_channels == 2 else "pixels"},
            quantization=dict(res.graphs["quantized"].graph["quant"]) if quantize else None)
    return path


@pytest.fixture(scope="module")
def rgb_bundle(tmp_path_factory) -> Path:
    """Sized for real clips as the preprocessing says: T = 8 frames, 64 x 64."""
    return make_bundle(tmp_path_factory.mktemp("b") / "rgb.svfd", img_size=64, time_steps=8)


@pytest.fixture(scope="module")
def events_bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "dvs.svfd", "3stg", img_size=32, time_steps=4, in_channels=2)


def write_clip(path: Path, frames: int, size: int = 48) -> Path:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for _ in range(frames):
            rgb = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def check_record(path: Path, bundle: Path, executor: str = "float") -> dict:
    rec = read_record(path).data  # the energy report's own validation of docs/run-record.md
    assert rec["model"]["hash"] == load_bundle(bundle).model_hash
    assert rec["executor"] == executor and rec["model"]["quantized"] == (executor == "integer")
    T = rec["time_steps"]
    neurons = [layer for layer in rec["layers"] if layer["op"] == "neuron"]
    assert neurons and all(len(layer["per_step"]["neuron_updates"]) == T for layer in neurons)
    assert rec["totals"]["ac"] == sum(layer["counts"].get("ac", 0) for layer in rec["layers"]) > 0
    assert rec["totals"]["mac"] > 0  # the first conv on pixels / event counts
    assert len(rec["timing"]["per_step_s"]) == T
    return rec


# ---------------------------------------------------------------------------------------------
@pytest.mark.data
@pytest.mark.parametrize("clip", ["arm_wrestling_kinetics.mp4", "chaplin_bw.mp4", "clean_and_jerk.mp4",
                                  "eye_makeup_ucf101.avi", "ntu_drink_water_1080p.avi", "tai_chi.mp4"])
def test_simulate_runs_every_real_clip(clip, rgb_bundle, tmp_path, capsys):
    video = data_path("video", clip)
    code, out, err = cli(capsys, "simulate", "--video", video, "--model", rgb_bundle, "--out", tmp_path, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["video"] == str(video) and doc["time_steps"] == 8
    assert [label for label, _ in doc["top5"]] and all(label in VIDEO_CLASSES for label, _ in doc["top5"])
    scores = [s for _, s in doc["top5"]]
    assert scores == sorted(scores, reverse=True)
    names = {layer["name"] for layer in doc["layers"]}
    assert {"patch_embed1.proj", "blocks3.0.attn.kv", "lif_bf_head", "head"} <= names
    rates = [layer["firing_rate"] for layer in doc["layers"] if layer["op"] == "neuron"]
    assert all(0.0 <= r <= 1.0 for r in rates) and any(r > 0 for r in rates)
    assert all({"name", "firing_rate", "ac", "mac"} <= set(layer) for layer in doc["layers"])
    rec = check_record(Path(doc["record"]), rgb_bundle)
    assert rec["input"]["kind"] == "video" and len(rec["input"]["frame_indices"]) == 8
    assert rec["prediction"]["top5"] == doc["top5"]


@pytest.mark.data
@pytest.mark.parametrize("rel", [("events", "samples", "nmnist_sample.bin"),
                                 ("events", "samples", "davis346_sample.aedat4"),
                                 ("events", "nmnist-small", "60001.bs2")], ids=["nmnist-bin", "aedat4", "nmnist-bs2"])
def test_simulate_event_recordings_with_a_two_channel_model(rel, events_bundle, tmp_path, capsys):
    path = data_path(*rel)
    code, out, err = cli(capsys, "simulate", "--events", path, "--model", events_bundle, "--out", tmp_path,
                         "--json", "--integer")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["events"] == str(path) and doc["video"] is None and doc["executor"] == "integer"
    rec = check_record(Path(doc["record"]), events_bundle, "integer")
    assert rec["input"]["kind"] == "events" and rec["model"]["weight_bits"] == 8
    first = rec["layers"][0]
    assert first["name"] == "patch_embed1.proj" and first["input_kind"] == "real" and first["input_neurons"] == []


@pytest.mark.data
def test_end_to_end_in_a_folder_uses_the_latest_bundle_and_writes_runs(tmp_path, rgb_bundle):
    import shutil

    shutil.copytree(rgb_bundle, tmp_path / "model.svfd")
    proc = run_cli("simulate", "--video", data_path("video", "tai_chi.mp4"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "top-5" in proc.stdout and "blocks3.0.attn.kv" in proc.stdout and "AC" in proc.stdout
    records = sorted((tmp_path / "runs").glob("*.json"))
    assert len(records) == 1 and records[0].name.endswith("_tai_chi_v0.json")
    assert str(Path("runs") / records[0].name) in proc.stdout
    check_record(records[0], tmp_path / "model.svfd")


@pytest.mark.data
def test_multi_view_sums_logits_and_writes_one_record_per_view(rgb_bundle, tmp_path, capsys):
    code, out, err = cli(capsys, "simulate", "--video", data_path("video", "clean_and_jerk.mp4"), "--model",
                         rgb_bundle, "--views", "2x3", "--out", tmp_path, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["views"] == 6 and len(doc["records"]) == 6 and doc["record"] == doc["records"][0]
    recs = [check_record(Path(p), rgb_bundle) for p in doc["records"]]
    assert [r["input"]["view"] for r in recs] == list(range(6))
    summed = np.sum([r["prediction"]["logits"] for r in recs], axis=0)
    best = int(np.argmax(summed))
    assert doc["top5"][0] == [VIDEO_CLASSES[best], pytest.approx(float(summed[best]))]
    acs = [layer["ac"] for layer in doc["layers"]]
    assert sum(acs) == sum(r["totals"]["ac"] for r in recs)


def test_integer_and_float_records_share_the_model_hash(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "m.svfd", img_size=32, time_steps=3)
    clip = write_clip(tmp_path / "clip.mp4", frames=20, size=40)
    hashes = []
    for flag in ("--float", "--integer"):
        code, out, err = cli(capsys, "simulate", "--video", clip, "--model", bundle, flag, "--out", tmp_path / "r",
                             "--json")
        assert code == 0, err
        rec = check_record(Path(json.loads(out)["record"]), bundle, flag.strip("-"))
        hashes.append(rec["model"]["hash"])
    assert hashes[0] == hashes[1]
    assert len(list((tmp_path / "r").glob("*.json"))) == 2  # same second, same clip: no overwrite


# ---------------------------------------------------------------------------------------------
# bad input: one error line, exit 2, no run record
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_rgb(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("bad")
    bundle = make_bundle(d / "rgb.svfd", quantize=False, img_size=32, time_steps=8)
    return bundle, write_clip(d / "ok.mp4", frames=12, size=40)


def expect_error(capsys, tmp_path, args, *fragments):
    code = main([str(a) for a in [*args, "--out", tmp_path / "runs"]])
    out, err = capsys.readouterr()
    one_error_line(code, err, *fragments)
    assert out == ""
    assert not (tmp_path / "runs").exists(), "a failed run left a run record folder behind"


def test_no_bundle_in_the_folder_is_one_error(tmp_path, capsys, monkeypatch, small_rgb):
    monkeypatch.chdir(tmp_path)
    expect_error(capsys, tmp_path, ["simulate", "--video", small_rgb[1]], "no export bundle")


def test_missing_model_folder_is_one_error(tmp_path, capsys, small_rgb):
    expect_error(capsys, tmp_path, ["simulate", "--video", small_rgb[1], "--model", tmp_path / "nope.svfd"],
                 "nope.svfd", "no such export bundle")


def test_event_file_for_an_rgb_model_is_refused(tmp_path, capsys, small_rgb):
    events = tmp_path / "ev.npy"
    np.save(events, np.array([[1, 2, 10, 1], [3, 4, 20, 0]], dtype=np.int64))
    expect_error(capsys, tmp_path, ["simulate", "--events", events, "--model", small_rgb[0]],
                 "ev.npy", "not event recordings")


def test_video_for_an_event_model_is_refused(tmp_path, capsys, events_bundle, small_rgb):
    expect_error(capsys, tmp_path, ["simulate", "--video", small_rgb[1], "--model", events_bundle],
                 "ok.mp4", "takes event recordings")


def test_corrupt_clip_is_refused(tmp_path, capsys, small_rgb):
    bad = tmp_path / "broken.mp4"
    data = small_rgb[1].read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    expect_error(capsys, tmp_path, ["simulate", "--video", bad, "--model", small_rgb[0]], "broken.mp4")
    junk = tmp_path / "junk.avi"
    junk.write_bytes(os.urandom(4000))
    expect_error(capsys, tmp_path, ["simulate", "--video", junk, "--model", small_rgb[0]], "junk.avi")


def test_clip_shorter_than_t_is_refused(tmp_path, capsys, small_rgb):
    short = write_clip(tmp_path / "short.mp4", frames=5, size=40)
    expect_error(capsys, tmp_path, ["simulate", "--video", short, "--model", small_rgb[0]], "short.mp4", "T=8")


def test_integer_without_a_quantized_export_is_refused(tmp_path, capsys, small_rgb):
    expect_error(capsys, tmp_path, ["simulate", "--video", small_rgb[1], "--model", small_rgb[0], "--integer"],
                 "without quantization")


def test_inconsistent_bundle_preprocessing_is_refused(tmp_path, capsys, small_rgb):
    import shutil

    bundle = tmp_path / "edited.svfd"
    shutil.copytree(small_rgb[0], bundle)
    man = json.loads((bundle / "manifest.json").read_text())
    man["preprocessing"]["size"] = 48
    (bundle / "manifest.json").write_text(json.dumps(man))
    expect_error(capsys, tmp_path, ["simulate", "--video", small_rgb[1], "--model", bundle], "does not match")


def test_bad_usage_is_one_error(tmp_path, capsys, small_rgb):
    expect_error(capsys, tmp_path, ["simulate", "--model", small_rgb[0]], "--video")
    expect_error(capsys, tmp_path, ["simulate", "--video", small_rgb[1], "--model", small_rgb[0], "--views", "2x2"],
                 "spatial crops")


def test_a_failing_view_leaves_no_records(tmp_path, capsys, small_rgb, monkeypatch):
    from svformer_deploy.simulators import executor

    calls = {"n": 0}
    real = executor.Simulator.run_batch

    def flaky(self, clips, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated failure on the second view")
        return real(self, clips, *args, **kw)

    monkeypatch.setattr(executor.Simulator, "run_batch", flaky)
    code = main(["simulate", "--video", str(small_rgb[1]), "--model", str(small_rgb[0]), "--views", "2x1",
                 "--batch", "1", "--out", str(tmp_path / "runs")])  # one view per pass: the second pass fails
    capsys.readouterr()
    assert code != 0 and calls["n"] == 2
    assert not (tmp_path / "runs").exists()
