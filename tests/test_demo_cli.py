"""``svformer-deploy demo``: the whole chain on a tiny synthetic set through the real CLI: Ctrl-C during
training, resuming, every announced output, --json, reuse on a second run, refusal of mismatching
outputs without --force, a failure mid-chain, --force, and bad output folders."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLI, one_error_line
from fixtures_models import single_thread  # noqa: F401
from svformer_deploy.deploy.cli import main
from svformer_deploy.deploy.energy.records import read_record
from svformer_deploy.export.bundle import load_bundle, sha256_file
from svformer_deploy.export.qat import checkpoint_graph
from svformer_deploy.simulators.executor import Simulator
from svformer_deploy.simulators.run import bundle_input_spec, prepare_input
from svformer_deploy.simulators.stream import StreamSession
from svformer_deploy.svformer.checkpoint import load_checkpoint
from test_energy_html import WIDTH, _browser, _chromium

# 1 held-out + 2 training clips per class, one batch per epoch; the default targets (NIR and the one-step ONNX graph)
TINY = ("--epochs", "6", "--train-per-class", "2", "--test-per-class", "1")


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(["demo", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code: int, err: str, *fragments: str) -> None:
    one_error_line(code, err, *fragments)


def failed_mid_chain(code: int, err: str, fragment: str) -> None:
    """A failure after some steps ran: exit 2, the step headings, then exactly one ``error:`` line, last."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines and lines[-1].startswith("error:"), (code, err)
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[-1], (fragment, lines[-1])


def interrupt_during_training(out: Path) -> subprocess.CompletedProcess:
    """Start the demo, send SIGINT (Ctrl-C) once the first epoch is reported, return the finished process."""
    env = dict(os.environ, SVFORMER_NO_PROGRESS="1")
    proc = subprocess.Popen([str(CLI), "demo", "-o", str(out), *TINY], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith("epoch 1/6"):
            proc.send_signal(signal.SIGINT)  # 5 more epochs to go: well inside the training step
            break
    out_text, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out_text, "".join(seen) + err)


def no_temporaries(*folders: Path) -> None:
    for f in folders:
        if f.is_dir():
            assert [p.name for p in f.iterdir() if p.name.startswith(".")] == [], f


def test_demo_chain_interrupted_resumed_reused_refused_and_forced(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"

    # Ctrl-C during training: one error line, exit 2; finished epochs kept, nothing of the later steps
    proc = interrupt_during_training(out)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert "interrupted during the train step" in errors[0] and "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["data", "train"]
    done = int(load_checkpoint(out / "train" / "last.pt").training["epoch"])
    assert 1 <= done < 6
    no_temporaries(out, out / "train")

    # the next run resumes the training and finishes the chain; --json: one document on stdout
    code, stdout, err = run(capsys, "-o", out, *TINY, "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    status = {s["step"]: s["status"] for s in doc["steps"]}
    assert status == {"data": "reused", "train": "resumed", "export": "exported", "simulate": "simulated",
                      "report": "written", "evaluate": "evaluated"}
    assert f"resuming the interrupted run at epoch {done + 1} of 6" in err
    for i, name in enumerate(["data:", "training:", "export:", "simulate:", "energy report:", "evaluate:"], 1):
        assert f"[{i}/6] {name}" in err, err
    assert "epoch 6/6" in err and "demo finished" in err  # the human summary goes to stderr with --json

    # every announced output exists and is valid
    assert doc == json.loads((out / "demo.json").read_text())
    assert doc["data"]["classes"] == ["move_left", "move_right", "move_up", "move_down"]
    assert (doc["data"]["train_clips"], doc["data"]["test_clips"]) == (8, 4)
    ckpt = load_checkpoint(doc["train"]["checkpoint"])
    assert ckpt.training["epoch"] == 6 and ckpt.class_names == doc["data"]["classes"]
    assert ckpt.training["config"]["synthetic"]["train_per_class"] == 2
    assert 0.0 <= doc["train"]["test_top1"] <= 1.0 and doc["train"]["test_clips"] == 4
    bundle = load_bundle(doc["export"]["bundle"])
    assert Path(doc["export"]["bundle"]) == (out / "model.svfd").resolve()
    assert bundle.manifest["source"]["sha256"] == sha256_file(doc["train"]["checkpoint"])
    assert bundle.manifest["targets"] == ["nir", "onnx"] and Path(doc["export"]["files"]["nir"]).is_file()
    assert Path(doc["export"]["files"]["onnx_step"]).is_file()
    assert doc["export"]["passed"] and doc["export"]["checks"] >= 5
    assert "fold_bn float32" in doc["export"]["fidelity"]
    rec = read_record(doc["simulate"]["record"])
    assert rec.model_hash == bundle.model_hash and rec.input["label"] == doc["simulate"]["true_class"] == "move_left"
    assert rec.input["path"] == doc["simulate"]["clip"] and doc["simulate"]["clip"].endswith("test/move_left/0000.mp4")
    assert [t[0] for t in doc["simulate"]["top5"]] == [t[0] for t in rec.data["prediction"]["top5"]]
    # the demo model's one-step graph streams the held-out clip frame by frame in onnxruntime exactly as the graph
    # simulator runs it: identical spikes in every layer at every step, |dlogit| <= 1e-9 (float64)
    frames = prepare_input(bundle_input_spec(bundle), doc["simulate"]["clip"], None, (1, 1), bundle.path).tensor[0]
    logits, spikes = StreamSession(bundle).run(frames.numpy())
    sim = Simulator(bundle.graph("ir"), mode="float", dtype=torch.float64).run(frames, record_spikes=True)
    assert np.abs(logits[0] - sim.logits).max() <= 1e-9 and logits[0].argmax() == sim.logits.argmax()
    assert spikes.keys() == sim.spikes.keys() and sum(int(v.sum()) for v in spikes.values()) > 0
    for name, got in spikes.items():
        assert np.array_equal(got[:, 0], sim.spikes[name].numpy()), name
    html = Path(doc["energy"]["html"]).read_text()
    assert Path(doc["energy"]["html"]) == (out / "report" / "index.html").resolve()
    assert html.count("<img") >= 3 and "data:image/png;base64," in html
    report = json.loads(Path(doc["energy"]["json"]).read_text())
    assert report["records"] == [doc["simulate"]["record"]]
    e = doc["energy"]
    assert e["exact_mj"] == report["methods"]["exact"]["energy_mj"] > 0
    assert e["ann_mj"] == report["ann_counterpart"]["energy_mj"] > e["exact_mj"]
    assert e["snn_ann_ratio"] == pytest.approx(e["exact_mj"] / e["ann_mj"])
    no_temporaries(out, out / "train", out / "runs", out / "report", out / "evaluation")
    ev = json.loads((out / "report" / "evaluation.json").read_text())  # step 6: the held-out split evaluated
    assert ev["clips"] == 4 and [c["condition"] for c in ev["conditions"]] == ["clean", "gaussian:0.5"]
    assert doc["evaluate"]["conditions"]["clean"]["top1"] == ev["conditions"][0]["top1"]
    assert "Early exit (clean)" in html and "Accuracy and energy per clip by input condition" in html

    # a second run reuses every step (same files, no new record) and prints where everything is
    mtime = (out / "train" / "last.pt").stat().st_mtime_ns
    code, stdout, err = run(capsys, "-o", out, *TINY)
    assert code == 0, err
    again = json.loads((out / "demo.json").read_text())
    assert {s["step"]: s["status"] for s in again["steps"]} == {
        "data": "reused", "train": "reused", "export": "reused", "simulate": "reused", "report": "written",
        "evaluate": "reused"}
    assert (out / "train" / "last.pt").stat().st_mtime_ns == mtime
    assert len(list((out / "runs").glob("*.json"))) == 1
    assert again["train"]["test_top1"] == doc["train"]["test_top1"] and again["energy"] == doc["energy"]
    for fragment in (f"checkpoint  {out / 'train' / 'last.pt'}", f"bundle      {out / 'model.svfd'}",
                     f"report      {out / 'report' / 'index.html'}", "held-out top-1", "SNN/ANN",
                     "true class move_left"):
        assert fragment in stdout, (fragment, stdout)
    assert "[1/6]" in err and "[1/6]" not in stdout

    # --qat (make demo QAT=1) adds step 7 to the finished chain: QAT of the checkpoint, the PTQ and QAT int8
    # bundles, all three models evaluated at int8 prices and shown together on the report page
    code, stdout, err = run(capsys, "-o", out, *TINY, "--qat", "--json")
    assert code == 0, err
    q = json.loads(stdout)
    assert {s["step"]: s["status"] for s in q["steps"]} == {
        "data": "reused", "train": "reused", "export": "reused", "simulate": "reused", "report": "written",
        "evaluate": "reused", "qat": "ran"}
    assert "[7/7] QAT:" in err and "qat epoch 1:" in err
    qat_ckpt = load_checkpoint(q["qat"]["checkpoint"])
    assert qat_ckpt.qat["summary"]["init_sha256"] == sha256_file(out / "train" / "last.pt")
    qat_graph = checkpoint_graph(qat_ckpt)
    qb = load_bundle(q["qat"]["qat"]["bundle"]).graph("ir_quantized")
    for n in qat_graph.nodes:  # the QAT bundle's integer graph is the fine-tuned one, code for code
        for field, arr in qat_graph.nodes[n]["quant"].items():
            assert np.array_equal(np.asarray(qb.nodes[n]["quant"][field]), np.asarray(arr)), (n, field)
    ptq_bundle = load_bundle(q["qat"]["ptq"]["bundle"])
    assert ptq_bundle.manifest["quantization"]["weight_bits"] == 8 and "qat" not in ptq_bundle.graph(
        "ir_quantized").graph["quant"]
    qj = json.loads((out / "report" / "qat.json").read_text())
    for key in ("float", "ptq", "qat"):
        clean = qj["evaluations"][key]["conditions"][0]
        assert q["qat"][key]["top1"] == clean["top1"] and q["qat"][key]["exact_mj"] == clean["energy_mj"]["exact"] > 0
        assert qj["evaluations"][key]["clips"] == 4
    for key in ("ptq", "qat"):
        assert q["qat"][key]["agreement_with_float"] == qj["evaluations"][key]["agreement_with_float"]
        assert q["qat"][key]["flip_rate"] == qj["qat"][key]["flip_rate"] >= 0
    html = (out / "report" / "index.html").read_text()
    for fragment in ("Quantization-aware fine-tuning", "PTQ int8 (post-training)", "QAT int8 (fine-tuned)",
                     "integer executor on the held-out split", "Early exit (clean)"):
        assert fragment in html, fragment
    no_temporaries(out, out / "qat")
    qat_page = tmp_path / "qat-page.html"  # self-contained: a copy renders the same (checked in Chromium at the end)
    qat_page.write_text(html)
    code, stdout, err = run(capsys, "-o", out, *TINY, "--qat", "--json", "--quiet")  # all reused the next time
    assert code == 0, err
    assert json.loads(stdout)["steps"][-1] == {"step": "qat", "status": "reused",
                                               "seconds": json.loads(stdout)["steps"][-1]["seconds"]}
    assert load_checkpoint(q["qat"]["checkpoint"]).qat["summary"] == qat_ckpt.qat["summary"]

    # another configuration without --force: refused before anything is removed
    code, _, err = run(capsys, "-o", out, *TINY[2:], "--epochs", "7")
    one_error(code, err, "another configuration", "epochs", "--force")
    assert (out / "demo.json").is_file() and (out / "report" / "index.html").is_file()
    code, _, err = run(capsys, "-o", out, *TINY, "--train-per-class", "3")
    one_error(code, err, "other parameters", "train_per_class", "--force")

    # a failure mid-chain (the held-out clip is damaged; its old record no longer matches it): exit 2 with
    # one error line after the step headings, no summary and no report of this run, earlier outputs intact
    clip = out / "data" / "test" / "move_left" / "0000.mp4"
    clip.write_bytes(b"not a video")
    code, _, err = run(capsys, "-o", out, *TINY)
    failed_mid_chain(code, err, "0000.mp4")
    assert "[4/6] simulate" in err and "[5/6]" not in err
    assert not (out / "demo.json").exists() and not (out / "report").exists()
    assert load_bundle(out / "model.svfd").manifest["source"]["sha256"] == sha256_file(out / "train" / "last.pt")
    assert len(list((out / "runs").glob("*.json"))) == 1

    # --force starts over: regenerates the data (the damaged clip too), retrains with the new configuration
    code, stdout, err = run(capsys, "-o", out, *TINY[2:], "--epochs", "1", "--force", "--json", "--quiet")
    assert code == 0, err
    assert err == ""  # --quiet: no headings, epoch lines or summary on stderr
    forced = json.loads(stdout)
    assert {s["step"]: s["status"] for s in forced["steps"]}["train"] == "trained"
    assert sorted(p.name for p in (out / "train").glob("epoch-*.pt")) == ["epoch-001.pt"]
    assert load_bundle(out / "model.svfd").manifest["source"]["sha256"] == sha256_file(out / "train" / "last.pt")
    assert forced["simulate"]["record"] != doc["simulate"]["record"]
    assert {s["step"]: s["status"] for s in forced["steps"]}["data"] == "generated"
    assert clip.read_bytes()[:4] != b"not "

    # the --qat page in headless Chromium: every plot drawn, the QAT table shown
    browser = _browser()
    dom = _chromium(browser, tmp_path / "profile", f"--window-size={WIDTH},8000", "--dump-dom", qat_page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', re.search(r'<p id="plot-status"([^>]*)>', dom.stdout).group(1)))
    assert attrs["data-ok"] == attrs["data-total"] and int(attrs["data-total"]) >= 9, attrs
    table = re.search(r'<table class="qat">(.*?)</table>', dom.stdout, re.S).group(1)
    assert table.count("<tr>") == 4 and "QAT int8 (fine-tuned)" in table


def test_bad_output_folders_are_one_error_line_and_exit_2(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "-o", tmp_path / "never", "--qat-epochs", "1")
    one_error(code, err, "--qat-epochs", "--qat")
    assert not (tmp_path / "never").exists()
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    code, _, err = run(capsys, "-o", a_file)
    one_error(code, err, "file.txt")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, _, err = run(capsys, "-o", mine)
    one_error(code, err, "not a demo folder", "notes.txt")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "train").write_text("not a folder")
    code, _, err = run(capsys, "-o", odd)
    one_error(code, err, "train", "expected a folder")
    code, _, err = run(capsys, "-o", tmp_path / "x", "--epochs", "0")
    one_error(code, err, "--epochs")
    code, _, err = run(capsys, "-o", tmp_path / "x", "--targets", "nir,netx")
    one_error(code, err, "netx", "quantized")
    assert not (tmp_path / "x").exists()
