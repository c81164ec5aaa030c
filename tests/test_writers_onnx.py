"""ONNX writer: the unrolled float and fake-quantized graphs exported with the dynamo exporter, checked
in onnxruntime against PyTorch (max |dlogit| <= 1e-4), with a dynamic batch axis.

The float export runs through ``svformer-deploy export model.pt`` with no other flags (the contract's
default); exports are slow (tens of seconds even for a tiny model), so each happens once per module.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from fixtures_models import make_input, make_model, single_thread  # noqa: F401

from deploy.cli import main
from export.bundle import load_bundle
from export.passes.quantize import QuantConfig, quantize
from export.reference import ReferenceModel
from export.writers.onnx_writer import INPUT_NAME, OUTPUT_NAME, check_onnx, write_onnx
from svformer.checkpoint import load_model, save_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    """``svformer-deploy export tiny.pt`` (no flags) on a tiny random 3stg model with T = 2."""
    root = tmp_path_factory.mktemp("onnx")
    model = make_model("3stg", time_steps=2)
    ckpt = save_checkpoint(root / "tiny.pt", model)
    code = main(["export", str(ckpt)])
    assert code == 0
    return root / "tiny.svfd", load_model(ckpt)[0]  # (per-layer thresholds of make_model are not in state_dicts)


def run_ort(path: Path, x: torch.Tensor) -> torch.Tensor:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


def test_default_export_writes_float_onnx_that_matches_pytorch_for_any_batch(default_export) -> None:
    bundle_path, model = default_export
    bundle = load_bundle(bundle_path)
    assert set(bundle.manifest["files"]) >= {"ir", "nir", "onnx"}
    assert bundle.manifest["quantization"] is None and bundle.manifest["onnx"]["graph"].startswith("float")
    path = bundle.file("onnx")
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    assert [i.name for i in m.graph.input] == [INPUT_NAME] and [o.name for o in m.graph.output] == [OUTPUT_NAME]
    ref = ReferenceModel(bundle.graph("ir"), torch.float32)
    for batch in (1, 3):
        x = make_input(model, batch=batch, seed=batch)
        got = run_ort(path, x)
        with torch.no_grad():
            assert (got - ref(x)).abs().max() <= 1e-4
            assert (got - model.forward_sequence(x)).abs().max() <= 1e-4  # and the original SpikingJelly model
    row = next(r for r in bundle.manifest["fidelity"]["checks"] if r["label"].startswith("onnx float"))
    assert row["passed"] and row["max_abs_diff"] <= 1e-4


def test_fake_quantized_onnx_reproduces_the_integer_spec(default_export, tmp_path: Path) -> None:
    bundle_path, model = default_export
    g = load_bundle(bundle_path).graph("ir")
    qg = quantize(g, make_input(model, batch=4, seed=7), QuantConfig(weight_bits=6))
    x = make_input(model, batch=3, seed=8)
    path = write_onnx(qg, tmp_path / "int.onnx", x, mode="fixed")
    c = check_onnx(path, qg, x, mode="fixed")
    assert c.passed and c.max_abs_diff <= 1e-4, c
    got = run_ort(path, x[:, :1])
    with torch.no_grad():
        want = ReferenceModel(qg, mode="fixed")(x[:, :1])
    assert got.dtype == torch.float64 and (got - want).abs().max() <= 1e-4
    assert json.loads(json.dumps(c.to_dict()))["passed"]
