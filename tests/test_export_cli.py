"""``svformer-deploy export``: the bundle and its manifest, fidelity inputs, --strict, and the error contract
(corrupt/foreign checkpoint, unwritable or existing output, Ctrl-C: one ``error:`` line, exit 2, no bundle)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import CLI, assert_one_line_error
from conftest import cli_in_process as run
from fixtures_models import make_model, single_thread  # noqa: F401
from svformer_deploy.deploy.commands.export import render_export
from svformer_deploy.export.bundle import load_bundle, sha256_file
from svformer_deploy.export.writers.netx_writer import read_netx
from svformer_deploy.svformer.checkpoint import load_checkpoint, save_checkpoint
from svformer_deploy.svformer.data.events import EVENT_DTYPE
from svformer_deploy.svformer.errors import CheckFailed
from svformer_deploy.svformer.train import TrainConfig, train_model


def one_error(code: int, err: str, *fragments: str, exit_code: int = 2) -> None:
    assert code == exit_code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len([line for line in lines if line.startswith("error:")]) == 1, err
    assert "Traceback" not in err
    line = next(line for line in lines if line.startswith("error:"))
    for f in fragments:
        assert f.lower() in line.lower(), (f, line)


def no_bundle_left(folder: Path, name: str) -> None:
    left = [p.name for p in folder.iterdir() if name in p.name and p.suffix != ".pt"]
    assert left == [], left


@pytest.fixture
def tiny_ckpt(tmp_path: Path) -> Path:
    """A tiny plain-BN 3stg model (T = 2, event input): every block has netx-expressible chains."""
    return save_checkpoint(tmp_path / "tiny.pt", make_model("3stg", time_steps=2, norm="bn"))


def test_quantized_export_writes_a_complete_bundle_and_manifest(capsys, tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.svfd"
    code, stdout, err = run(capsys, "export", tiny_ckpt, "-o", out, "--quantize", "int8", "--targets", "nir,netx",
                            "--check-clips", "4", "--json")
    assert code == 0, err
    doc = json.loads(stdout)  # one JSON document and nothing else on stdout
    assert doc["output_dir"] == str(out) and doc["passed"] in (True, False)
    assert {"ir", "ir_quantized", "nir", "nir_parts", "netx", "manifest"} <= set(doc["files"])
    assert all(Path(p).is_file() for p in doc["files"]["netx"])
    fid = doc["fidelity"]
    assert {"trace float64", "fold_bn float64", "quantize int8", "nir model.nir round trip"} <= set(fid)
    for key in ("max_abs_diff", "spike_agreement", "top1_agreement"):
        assert key in fid["quantize int8"]
    assert fid["nir model.nir round trip"]["passed"]
    assert next(v for k, v in fid.items() if k.startswith("netx"))["passed"]
    assert next(v for k, v in fid.items() if k.startswith("nir") and "SpikingJelly" in k)["passed"]
    for row in (v for k, v in fid.items() if k.startswith(("netx", "nir ")) and v["spikes"]):
        s = row["spikes"]  # the shared spike comparison: identical spikes mean no divergence, full recall
        assert s["flips"] == 0 and s["first_divergence"] is None and s["recall"] == s["precision"] == 1.0
    q = fid["quantize int8"]["spikes"]
    assert q["spikes_ref"] > 0 and 0 < q["recall"] <= 1 and 0 < q["precision"] <= 1
    assert (q["first_divergence"] is None) == (q["flips"] == 0)
    head = fid["quantize int8"]  # the headline: flips per reference spike, precision, recall, first divergence
    assert head["flip_rate"] == q["flip_rate"] == q["flips"] / q["spikes_ref"] and head["flips"] == q["flips"]
    assert (head["precision"], head["recall"], head["first_divergence"]) == (q["precision"], q["recall"],
                                                                              q["first_divergence"])
    assert head["layers"] and sum(la["flips"] for la in head["layers"]) == q["flips"]

    bundle = load_bundle(out)
    m = bundle.manifest
    ckpt = load_checkpoint(tiny_ckpt)
    assert m["source"] == {**m["source"], "path": str(tiny_ckpt.resolve()), "sha256": sha256_file(tiny_ckpt)}
    assert {"torch", "spikingjelly", "nir", "onnx", "h5py", "numpy"} <= set(m["versions"])
    assert m["input"]["shape"] == [2, 2, 32, 32] and m["input"]["encoding"] == "events"
    assert m["class_names"] == ckpt.class_names and m["preprocessing"] == ckpt.preprocessing
    assert m["passes"] == ["fold_bn", "quantize"] and m["targets"] == ["nir", "netx"]
    q = m["quantization"]
    assert q["weight_bits"] == 8 and q["netx_compatible"] and not q["per_channel"] and q["lava_thresholds"]
    assert q["weights"] and q["neurons"]
    for role, entry in m["files"].items():
        for e in entry if isinstance(entry, list) else [entry]:
            assert sha256_file(out / e["path"]) == e["sha256"] and (out / e["path"]).stat().st_size == e["bytes"], role
    part = m["partition"]
    assert part["summary"]["parts"] == len(part["parts"]) > 0 and part["summary"]["netx_files"] > 0
    checks = {c["label"]: c for c in m["fidelity"]["checks"]}
    assert checks["quantize int8"]["flip_rate"] == head["flip_rate"] and "precision" in checks["quantize int8"]
    s = part["summary"]  # shares of dense MACs: written netx files < every core-capable part
    assert 0 < s["netx_dense_mac_share"] < s["core_capable_dense_mac_share"] <= 1
    assert s["nir_part_dense_mac_share"] == s["core_capable_dense_mac_share"]  # every part has a NIR file here
    netx_parts = [p for p in part["parts"] if "netx" in p]
    assert all("rescaled" in p["netx_issue"] for p in part["parts"] if "netx" not in p)
    assert read_netx(out / netx_parts[0]["netx"]).meta["nodes"] == netx_parts[0]["nodes"]
    for p in netx_parts:  # the Lava invocation the files cannot carry: constant channels, L flush steps
        net = read_netx(out / p["netx"])
        assert p["lava"] == {"layers": len(net.layers), "const_channels": net.const_channels,
                             "input_shape": list(net.in_shape)}
    assert "Network(net_config=part_<i>.h5) with default arguments" in m["netx"]["lava_run"]
    summary = render_export(SimpleNamespace(manifest=m, output_dir=out, fidelity=[], warnings=[]))
    assert f"  netx in Lava  {m['netx']['lava_run']}" in summary.splitlines()
    assert "residual add" in part["host"]["blocks1.0.add1"]
    assert m["fidelity"]["inputs"]["check_clips"] == 4 and m["fidelity"]["inputs"]["check"].startswith("random")
    assert len(m["model_hash"]) == 64 and bundle.graph("ir_quantized").graph["quant"]["weight_bits"] == 8
    assert "warning: check clips are random" in err or "random" in " ".join(doc["warnings"])


def test_netx_without_quantization_and_unknown_targets_are_refused(capsys, tiny_ckpt: Path) -> None:
    code, _, err = run(capsys, "export", tiny_ckpt, "--targets", "netx")
    one_error(code, err, "netx", "--quantize int8")
    code, _, err = run(capsys, "export", tiny_ckpt, "--targets", "nir,tflite")
    one_error(code, err, "unknown export target 'tflite'")
    code, _, err = run(capsys, "export", tiny_ckpt, "--quantize", "int1", "--targets", "nir")
    one_error(code, err, "weight bits must be in 2..16")
    no_bundle_left(tiny_ckpt.parent, "tiny.svfd")


def test_strict_turns_a_fidelity_miss_into_exit_1_and_keeps_the_bundle(capsys, tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "m.pt", make_model("3stg", time_steps=2))
    args = ["export", ckpt, "--bits", "2", "--targets", "nir", "--check-clips", "16", "--calibration-clips", "2"]
    code, out, err = run(capsys, *args, "-o", tmp_path / "a.svfd")
    assert code == 0 and "MISS" in out  # 2-bit weights: top-1 agreement far below 99 %
    code, out, err = run(capsys, *args, "-o", tmp_path / "b.svfd", "--strict")
    one_error(code, err, "fidelity target missed", "quantize int2", exit_code=1)
    assert load_bundle(tmp_path / "b.svfd").manifest["fidelity"]["passed"] is False


def test_strict_ignores_the_reported_float32_onnx_row_but_not_the_float64_one(tmp_path: Path) -> None:
    """The float32 ONNX check is reported, not enforced (float32 rounding can flip a spike near a threshold:
    0.42 on one clip of a trained N-MNIST model); the same figure on model.onnx (float64) is a miss."""
    from svformer_deploy.export.exporter import ExportResult, FidelityRow, raise_on_miss
    from svformer_deploy.export.writers.onnx_writer import FLOAT32_TARGET, OnnxCheck

    fp32 = FidelityRow.from_onnx("onnx float32 (model_fp32.onnx)",
                                 OnnxCheck("onnx float32", 0.42, 0.99, 100, target=FLOAT32_TARGET, enforced=False))
    assert fp32.passed is None and "float32" in fp32.target
    ok = ExportResult(output_dir=tmp_path, files={}, manifest={}, fidelity=[fp32])
    raise_on_miss(ok)
    assert ok.passed and ok.misses == []
    fp64 = FidelityRow.from_onnx("onnx float64 (model.onnx)", OnnxCheck("onnx float64", 0.42, 0.99, 100))
    assert fp64.passed is False
    with pytest.raises(CheckFailed, match="onnx float64"):
        raise_on_miss(ExportResult(output_dir=tmp_path, files={}, manifest={}, fidelity=[fp32, fp64]))


def test_calibration_file_calibrates_and_its_remaining_clips_are_checked(capsys, tiny_ckpt: Path,
                                                                         tmp_path: Path) -> None:
    clips = torch.poisson(torch.full((2, 7, 2, 32, 32), 0.3))  # [T, B, C, H, W] event counts
    torch.save(clips, tmp_path / "cal.pt")
    code, out, err = run(capsys, "export", tiny_ckpt, "-o", tmp_path / "c.svfd", "--quantize", "int8", "--targets",
                         "nir", "--calibration", tmp_path / "cal.pt", "--calibration-clips", "3", "--check-clips", "4",
                         "--json")
    assert code == 0, err
    inputs = json.loads(out)["inputs"]
    assert inputs["calibration"] == str(tmp_path / "cal.pt") and inputs["calibration_clips"] == 3
    assert "after the calibration ones" in inputs["check"] and inputs["check_clips"] == 4
    assert json.loads(out)["quantization"]["calibration_clips"] == 3
    torch.save(torch.zeros(2, 3, 2, 16, 16), tmp_path / "small.pt")
    code, _, err = run(capsys, "export", tiny_ckpt, "-o", tmp_path / "d.svfd", "--check-data", tmp_path / "small.pt",
                       "--targets", "nir")
    one_error(code, err, "small.pt", "the model takes T=2, 2x32x32")
    assert not (tmp_path / "d.svfd").exists()


def write_events(path: Path, label: int, seed: int) -> None:
    """A recording whose events drift left (label 0) or right (label 1)."""
    rng = np.random.default_rng(seed)
    ev = np.zeros(400, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, 100_000, 400))
    drift = (ev["t"] / 100_000 * 10).astype(int)
    ev["x"] = np.clip(rng.integers(3, 6, 400) + (drift if label else 10 - drift), 0, 15)
    ev["y"], ev["p"] = rng.integers(0, 16, 400), rng.integers(0, 2, 400)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, ev)


def test_trained_model_is_checked_on_its_own_held_out_data(capsys, tmp_path: Path) -> None:
    root = tmp_path / "events"
    for split, n in (("train", 4), ("test", 3)):
        for label, name in enumerate(("left", "right")):
            for i in range(n):
                write_events(root / split / name / f"{i}.npy", label, 100 * label + i + (50 if split == "test" else 0))
    tiny = {"img_size": 16, "time_steps": 3, "dims": [8, 16, 32], "depths": [1, 1, 1], "head_dim": 8, "first_patch": 2}
    cfg = TrainConfig(source="events", data=str(root), arch="3stg", epochs=2, batch_size=4,
                      out_dir=str(tmp_path / "run"), model=tiny, quiet=True)
    ckpt = Path(train_model(cfg).checkpoint)
    code, out, err = run(capsys, "export", ckpt, "-o", tmp_path / "t.svfd", "--quantize", "int8", "--targets",
                         "nir,netx", "--json")
    assert code == 0, err
    doc = json.loads(out)
    inputs = doc["inputs"]
    assert inputs["check"].startswith("held-out split of events") and inputs["check_clips"] == 6
    assert inputs["calibration"].startswith("training split of events") and inputs["calibration_clips"] == 8
    q = doc["fidelity"]["quantize int8"]
    assert q["clips"] == 6 and q["spike_agreement"] > 0.9  # per-layer agreement; top-1 on 6 clips is coarse
    assert doc["partition"]["parts"] == 0  # trained TDBN: per-step affines after every conv/linear
    assert any("netx: nothing written" in w for w in doc["warnings"])
    host = load_bundle(tmp_path / "t.svfd").manifest["partition"]["host"]
    assert "per-step affine" in host["blocks1.0.mlp.fc1"]


# ---------------------------------------------------------------------------------------------
# the error contract
# ---------------------------------------------------------------------------------------------
def test_corrupt_and_foreign_checkpoints_give_one_line_and_no_bundle(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(os.urandom(2000))
    code, _, err = run(capsys, "export", bad)
    one_error(code, err, "bad.pt")
    foreign = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, foreign)
    code, _, err = run(capsys, "export", foreign)
    one_error(code, err, "resnet.pt", "--arch")
    code, _, err = run(capsys, "export", foreign, "--arch", "3stg")
    one_error(code, err, "resnet.pt", "does not fit")
    code, _, err = run(capsys, "export", tmp_path / "missing.pt")
    one_error(code, err, "missing.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "resnet.pt"]


def test_unwritable_or_existing_output_gives_one_line_and_leaves_files_alone(capsys, tiny_ckpt: Path,
                                                                               tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, _, err = run(capsys, "export", tiny_ckpt, "-o", blocker / "out.svfd", "--targets", "nir")
    one_error(code, err, "out.svfd", "cannot create the bundle")
    code, _, err = run(capsys, "export", tiny_ckpt, "-o", "/sys/svformer-test.svfd", "--targets", "nir")
    one_error(code, err, "/sys", "not writable")
    existing = tmp_path / "tiny.svfd"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "export", tiny_ckpt, "--targets", "nir")  # default output: tiny.svfd beside it
    one_error(code, err, "tiny.svfd", "already exists", "--force")
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "tiny.pt", "tiny.svfd"]
    code, _, err = run(capsys, "export", tiny_ckpt, "--targets", "nir", "--check-clips", "0", "--force")
    assert code == 0, err
    assert (existing / "manifest.json").is_file() and not (existing / "keep.txt").exists()


def test_ctrl_c_mid_export_leaves_no_partial_bundle(tiny_ckpt: Path) -> None:
    folder = tiny_ckpt.parent
    env = dict(os.environ, SVFORMER_NO_PROGRESS="1")
    proc = subprocess.Popen([str(CLI), "export", str(tiny_ckpt), "--targets", "nir,onnx", "--check-clips", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=folder)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".tiny.svfd.") for p in folder.iterdir()):  # the bundle's temporary folder
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the export (the ONNX step alone takes many seconds)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), "interrupted")
    assert sorted(p.name for p in folder.iterdir()) == ["tiny.pt"]


def test_a_manifest_that_cannot_be_written_leaves_no_bundle(tmp_path: Path) -> None:
    from svformer_deploy.export.bundle import BundleWriter

    with pytest.raises(TypeError):
        with BundleWriter(tmp_path / "x.svfd") as w:
            w.manifest["bad"] = object()  # not JSON: the manifest write fails at the very end
    assert list(tmp_path.iterdir()) == []
