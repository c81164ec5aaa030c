"""``train --qat`` and the export of its checkpoint, through the CLI (in process), on a tiny synthetic model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_in_process as run_cli
from conftest import one_error_line
from fixtures_models import single_thread  # noqa: F401
from svformer_deploy.deploy.cli import main
from svformer_deploy.export import ir
from svformer_deploy.export.bundle import load_bundle
from svformer_deploy.export.qat import checkpoint_graph
from svformer_deploy.simulators.executor import Simulator
from svformer_deploy.svformer.checkpoint import load_checkpoint

TINY = ["--arch", "3stg", "--size", "16", "-T", "3", "--dims", "8,16,32", "--depths", "1,1,1", "--head-dim", "8",
        "--first-patch", "2"]


def train_float(out: Path) -> Path:
    """A tiny plain-BN float checkpoint trained by ``train`` on a synthetic set (its training data recorded, as
    QAT needs): ``out/last.pt``."""
    code = main(["train", "--synthetic", "--synthetic-classes", "2", "--synthetic-train", "6", "--synthetic-test",
                 "3", "--synthetic-size", "32", "--synthetic-frames", "12", *TINY, "--epochs", "1", "-b", "4",
                 "-o", str(out), "--quiet", "--norm", "bn"])
    assert code == 0
    return out / "last.pt"


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory) -> Path:
    return train_float(tmp_path_factory.mktemp("qatcli") / "float")


def test_train_qat_writes_a_checkpoint_whose_integer_graph_export_writes_as_it_is(float_ckpt, tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "--qat", "--init", float_ckpt, "--epochs", "2", "-b", "4", "--lr",
                             "1e-3", "-o", tmp_path / "q", "--json", "--threads", "1")
    assert code == 0, err
    s = json.loads(out)
    assert Path(s["checkpoint"]).is_file() and len(s["history"]) == 2 and s["held_out_clips"] == 6
    assert s["quant"]["weight_bits"] == 8 and s["quant"]["qat"] is True
    assert not s["quant"]["per_channel"] and s["quant"]["lava_thresholds"]  # plain BN: netx parts -> per-tensor
    for key in ("ptq", "qat"):
        assert 0 <= s[key]["accuracy"] <= 1 and 0 <= s[key]["top1_agreement"] <= 1 and s[key]["spikes_ref"] > 0
    ckpt = load_checkpoint(s["checkpoint"])
    g = checkpoint_graph(ckpt)
    assert g is not None and ckpt.training  # the float checkpoint's record is kept (its data)

    code, out, err = run_cli(capsys, "export", s["checkpoint"], "-o", tmp_path / "bundle", "--json")
    assert code == 0, err
    bundle = load_bundle(tmp_path / "bundle")
    bg = bundle.graph("ir_quantized")
    for n in g.nodes:  # the bundle's integer graph is the QAT graph, code for code
        for field, arr in g.nodes[n]["quant"].items():
            assert np.array_equal(np.asarray(bg.nodes[n]["quant"][field]), np.asarray(arr)), (n, field)
    man = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert man["quantization"]["qat_summary"]["epochs"] == 2
    checks = {c["label"]: c for c in man["fidelity"]["checks"]}
    quant = [c for label, c in checks.items() if label.startswith("quantize")]
    assert quant and quant[0]["passed"] is None and "reported" in quant[0]["target"]
    assert man["fidelity"]["passed"], [c for c in checks.values() if c["passed"] is False]
    # the bundle runs in the integer executor with the logits of the graph in the checkpoint
    x = torch.randn(3, 2, 3, 16, 16)
    from svformer_deploy.export.reference import ReferenceModel
    want = ReferenceModel(g, mode="fixed")(x)
    got = [r.logits for r in Simulator(bg, "integer").run_batch(x.transpose(0, 1))]
    assert np.array_equal(np.stack(got), want.numpy())
    assert ir.neuron_names(bg)
    # a QAT checkpoint is exported at its own width; a broken QAT entry is one error line
    code, _, err = run_cli(capsys, "export", s["checkpoint"], "--quantize", "int4", "-o", tmp_path / "b4")
    one_error_line(code, err, "int8", "disagrees")
    raw = torch.load(s["checkpoint"], weights_only=True)
    raw["qat"]["graph"]["ir"] = raw["qat"]["graph"]["ir"][:-5]
    torch.save(raw, tmp_path / "broken.pt")
    code, _, err = run_cli(capsys, "export", tmp_path / "broken.pt", "-o", tmp_path / "b5")
    one_error_line(code, err, "broken.pt")
    assert not (tmp_path / "b4").exists() and not (tmp_path / "b5").exists()


def test_qat_options_are_refused_with_one_error_line(float_ckpt, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--init", float_ckpt, "-o", tmp_path / "x")
    one_error_line(code, err, "--init", "--qat")
    code, _, err = run_cli(capsys, "train", "--qat", "-o", tmp_path / "x")
    one_error_line(code, err, "--qat", "--init")
    code, _, err = run_cli(capsys, "train", "--qat", "--init", float_ckpt, "--bits", "1", "-o", tmp_path / "x")
    one_error_line(code, err, "weight bits")
    code, _, err = run_cli(capsys, "train", "--qat", "--init", float_ckpt, "--synthetic", "-o", tmp_path / "x")
    one_error_line(code, err, "--synthetic", "--qat")
    code, _, err = run_cli(capsys, "train", "--qat", "--init", tmp_path / "missing.pt", "-o", tmp_path / "x")
    one_error_line(code, err, "missing.pt")
    assert not (tmp_path / "x" / "qat.pt").exists()


def test_export_with_calibration_search_reports_before_and_after(float_ckpt, tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", float_ckpt, "--calibration-search", "-o", tmp_path / "none")
    one_error_line(code, err, "--calibration-search", "--quantize")
    assert not (tmp_path / "none").exists()
    code, out, err = run_cli(capsys, "export", float_ckpt, "--quantize", "int4", "--calibration-search",
                             "--targets", "onnx", "--calibration-clips", "4", "-o", tmp_path / "b", "--json")
    assert code == 0, err
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    cs = man["quantization"]["calibration_search"]
    assert cs["after"]["flip_rate"] <= cs["before"]["flip_rate"] and cs["evaluations"] > 1
    assert cs["before"]["clips"] == 4
    assert load_bundle(tmp_path / "b").graph("ir_quantized").graph["quant"].get("weight_clip", {}) == cs["weight_clip"]


def test_export_qat_epochs_fine_tunes_on_the_recorded_data_exactly_as_train_qat(float_ckpt, tmp_path, capsys):
    # the same code path as train --qat: same options, same seed -> the same integer graph, code for code
    code, out, err = run_cli(capsys, "train", "--qat", "--init", float_ckpt, "--epochs", "1", "-b", "8", "-o",
                             tmp_path / "q", "--json", "--threads", "1")
    assert code == 0, err
    trained = checkpoint_graph(load_checkpoint(json.loads(out)["checkpoint"]))
    code, out, err = run_cli(capsys, "export", float_ckpt, "--qat-epochs", "1", "--targets", "onnx,netx", "-o",
                             tmp_path / "b", "--json")
    assert code == 0, err
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    s = man["quantization"]["qat_summary"]
    assert s["by"] == "export --qat-epochs" and s["epochs"] == 1 and len(s["history"]) == 1
    assert s["quant"]["qat"] and man["quantization"]["weight_bits"] == 8
    bg = load_bundle(tmp_path / "b").graph("ir_quantized")
    assert bg.graph["quant"]["qat"] is True and set(bg.nodes) == set(trained.nodes)
    for n in trained.nodes:
        for field, arr in trained.nodes[n]["quant"].items():
            assert np.array_equal(np.asarray(bg.nodes[n]["quant"][field]), np.asarray(arr)), (n, field)
    assert any(role.startswith("netx") for role in man["files"]), man["files"]  # per-tensor: netx parts written
    assert man["fidelity"]["passed"], [c for c in man["fidelity"]["checks"] if c["passed"] is False]


def test_export_qat_epochs_refusals_are_one_error_line_and_write_nothing(float_ckpt, tmp_path, capsys):
    raw = torch.load(float_ckpt, weights_only=False)
    raw["training"]["config"]["data"] = str(tmp_path / "gone")  # the recorded training data is not there
    torch.save(raw, tmp_path / "nodata.pt")
    code, _, err = run_cli(capsys, "export", tmp_path / "nodata.pt", "--qat-epochs", "1", "-o", tmp_path / "a")
    one_error_line(code, err, "nodata.pt", "training data")
    del raw["training"]
    torch.save(raw, tmp_path / "norecord.pt")
    code, _, err = run_cli(capsys, "export", tmp_path / "norecord.pt", "--qat-epochs", "1", "-o", tmp_path / "a")
    one_error_line(code, err, "norecord.pt", "training data")
    code, _, err = run_cli(capsys, "export", float_ckpt, "--qat-epochs", "1", "--calibration-search", "-o",
                           tmp_path / "a")
    one_error_line(code, err, "--qat-epochs", "--calibration-search")
    code, _, err = run_cli(capsys, "export", float_ckpt, "--qat-epochs", "0", "-o", tmp_path / "a")
    one_error_line(code, err, "--qat-epochs")
    code, _, err = run_cli(capsys, "export", float_ckpt, "--qat-lr", "1e-3", "-o", tmp_path / "a")
    one_error_line(code, err, "--qat-lr", "--qat-epochs")
    code, _, err = run_cli(capsys, "export", float_ckpt, "--qat-epochs", "1", "--bits", "1", "-o", tmp_path / "a")
    one_error_line(code, err, "weight bits")
    assert not (tmp_path / "a").exists()
    (tmp_path / "taken").mkdir()  # refused before the fine-tuning, not after it
    code, _, err = run_cli(capsys, "export", float_ckpt, "--qat-epochs", "1", "-o", tmp_path / "taken")
    one_error_line(code, err, "already exists")
