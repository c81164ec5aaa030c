"""ONNX writer: the unrolled float64, float32 and fake-quantized graphs exported with the dynamo exporter,
checked in onnxruntime against PyTorch (max |dlogit| <= 1e-4), with a dynamic batch axis; the gather +
MatMul convolutions that the float64 file uses instead of Conv (onnxruntime has no float64 Conv).

The float export runs through ``svformer-deploy export model.pt --strict`` with no other flags (the
contract's default); exports are slow (seconds to tens of seconds even for a tiny model), so each
happens once.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from fixtures_models import TINY, make_input, make_model, single_thread  # noqa: F401
from svformer_deploy.deploy.cli import main
from svformer_deploy.export import ir
from svformer_deploy.export.bundle import load_bundle
from svformer_deploy.export.passes.fold_bn import fold_bn
from svformer_deploy.export.passes.fuse_linear import fuse_linear
from svformer_deploy.export.passes.quantize import QuantConfig, quantize
from svformer_deploy.export.reference import ReferenceModel, conv_gather_index, matmul_conv2d, matmul_conv3d_head
from svformer_deploy.export.trace import trace
from svformer_deploy.export.writers.onnx_writer import INPUT_NAME, OUTPUT_NAME, check_onnx, onnx_module, write_onnx
from svformer_deploy.svformer.checkpoint import load_model, save_checkpoint
from svformer_deploy.svformer.errors import SVFormerError

# (C_in, C_out, groups, kernel, stride, padding, H, W): SVFormer's convolutions (patch embeddings k = patch + 2,
# stride patch, padding 1; depthwise 5x5; local-pathway depthwise 3x3 stride 2; 1x1) and odd shapes
CONVS = [
    (3, 8, 1, (6, 6), (4, 4), (1, 1), 32, 32),  # first patch embedding, patch 4
    (8, 16, 1, (4, 4), (2, 2), (1, 1), 8, 8),  # later patch embedding, patch 2
    (16, 16, 16, (5, 5), (1, 1), (2, 2), 8, 8),  # LFE depthwise attention
    (16, 16, 16, (3, 3), (2, 2), (1, 1), 7, 9),  # local-pathway depthwise, stride 2, odd size
    (16, 24, 1, (1, 1), (1, 1), (0, 0), 5, 5),  # pointwise
    (6, 9, 3, (1, 1), (2, 1), (0, 0), 7, 6),  # grouped 1x1 with a stride
    (4, 6, 2, (3, 2), (2, 1), (1, 0), 7, 7),  # asymmetric kernel, stride and padding, grouped
    (2, 5, 1, (7, 7), (3, 3), (3, 3), 11, 10),
]


@pytest.mark.parametrize("case", CONVS, ids=[f"{c[3][0]}x{c[3][1]}s{c[4][0]}{c[4][1]}g{c[2]}" for c in CONVS])
def test_matmul_conv2d_equals_conv2d_in_float64(case) -> None:
    cin, cout, groups, kernel, stride, padding, h, w = case
    g = torch.Generator().manual_seed(sum(kernel) * 31 + cin)
    x = torch.randn(3, cin, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(cout, cin // groups, *kernel, generator=g, dtype=torch.float64)
    bias = torch.randn(cout, generator=g, dtype=torch.float64)
    for b in (bias, None):
        want = F.conv2d(x, wt, b, stride, padding, 1, groups)
        got = matmul_conv2d(x, wt, b, stride, padding, groups)
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 1e-12 * want.abs().max()
        index = conv_gather_index(h, w, kernel, stride, padding)
        assert torch.equal(matmul_conv2d(x, wt, b, stride, padding, groups, index), got)
    # every tap reads its own pixel: a one-hot input gives each output the one weight that touches it
    x1 = torch.zeros(1, cin, h, w, dtype=torch.float64)
    x1[0, 0, h // 2, w // 2] = 1.0
    assert torch.equal(matmul_conv2d(x1, wt, None, stride, padding, groups), F.conv2d(x1, wt, None, stride, padding,
                                                                                     1, groups))


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_matmul_conv3d_head_equals_conv3d_in_float64(groups: int) -> None:
    g = torch.Generator().manual_seed(groups)
    x = torch.randn(2, 8, 3, 4, 5, generator=g, dtype=torch.float64)  # [B, C, T, h, w]
    wt = torch.randn(8, 8 // groups, 3, 4, 5, generator=g, dtype=torch.float64)
    bias = torch.randn(8, generator=g, dtype=torch.float64)
    for b in (bias, None):
        want = F.conv3d(x, wt, b, groups=groups)
        got = matmul_conv3d_head(x, wt, b, groups)
        assert got.shape == want.shape == (2, 8, 1, 1, 1)
        assert (got - want).abs().max() <= 1e-12 * want.abs().max()


@pytest.mark.parametrize("variant", ["base", "3stg"])
def test_matmul_reference_equals_the_native_one_including_fused_position_dependent_biases(variant: str) -> None:
    """The module model.onnx is exported from (gather + MatMul) computes the float64 graph, also after
    ``fuse_linear`` (conv biases that vary over positions)."""
    model = make_model(variant, time_steps=2, depths=(1,) * len(TINY[variant]["dims"]))
    folded = fold_bn(trace(model))
    fused = fuse_linear(folded)
    assert any(op.bias is not None and op.bias.ndim == 3 for _, op in ir.iter_ops(fused, ("conv2d",)))
    x = make_input(model, batch=2, seed=3).double()
    for g in (folded, fused):
        with torch.no_grad():
            want = ReferenceModel(g, torch.float64)(x)
            got = onnx_module(g, "float64")(x)
        assert (got - want).abs().max() <= 1e-12 * max(1.0, float(want.abs().max()))


def test_unknown_modes_are_refused(tmp_path: Path) -> None:
    g = flip_graph(1.0)
    with pytest.raises(SVFormerError, match="unknown ONNX export mode 'float'"):
        onnx_module(g, "float")
    with pytest.raises(SVFormerError, match="unknown convolution implementation"):
        ReferenceModel(g, conv_impl="im2col")
    with pytest.raises(SVFormerError, match="needs the kernel size"):
        matmul_conv2d(torch.zeros(1, 4, 5, 5), torch.zeros(1, 4, 36), None, (1, 1), (1, 1), 1)
    with pytest.raises(SVFormerError, match="unknown ONNX export mode"):
        write_onnx(g, tmp_path / "x.onnx", torch.zeros(1, 1, 16, 6, 6), mode="float16")
    assert not (tmp_path / "x.onnx").exists()


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    """``svformer-deploy export tiny.pt --strict --onnx unrolled`` (the unrolled files, otherwise the defaults) on a
    tiny random 3stg model with T = 2."""
    root = tmp_path_factory.mktemp("onnx")
    model = make_model("3stg", time_steps=2)
    ckpt = save_checkpoint(root / "tiny.pt", model)
    code = main(["export", str(ckpt), "--strict", "--onnx", "unrolled"])
    assert code == 0
    return root / "tiny.svfd", load_model(ckpt)[0]  # (per-layer thresholds of make_model are not in state_dicts)


def run_ort(path: Path, x: torch.Tensor) -> torch.Tensor:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


@pytest.mark.slow
def test_default_export_writes_float64_and_float32_onnx_that_match_pytorch_for_any_batch(default_export) -> None:
    bundle_path, model = default_export
    bundle = load_bundle(bundle_path)
    man = bundle.manifest
    assert set(man["files"]) >= {"ir", "nir", "onnx", "onnx_fp32"}
    assert man["files"]["onnx"]["path"] == "model.onnx" and man["files"]["onnx_fp32"]["path"] == "model_fp32.onnx"
    assert man["quantization"] is None and man["onnx"]["graph"].startswith("float (folded graph) in float64")
    assert man["onnx"]["input"].endswith("float64") and man["onnx"]["output"].endswith("float64")
    assert man["onnx"]["float32"]["input"].endswith("float32") and not man["onnx"]["float32"]["verified"]
    graph = bundle.graph("ir")
    ref64, ref32 = ReferenceModel(graph, torch.float64), ReferenceModel(graph, torch.float32)
    model64 = copy.deepcopy(model).double()
    for role, dtype in (("onnx", np.float64), ("onnx_fp32", np.float32)):
        m = onnx.load(str(bundle.file(role)))
        onnx.checker.check_model(m)
        assert [i.name for i in m.graph.input] == [INPUT_NAME] and [o.name for o in m.graph.output] == [OUTPUT_NAME]
        elem = onnx.helper.tensor_dtype_to_np_dtype(m.graph.input[0].type.tensor_type.elem_type)
        has_conv = any(n.op_type == "Conv" for n in m.graph.node)
        assert elem == dtype and has_conv == (role == "onnx_fp32")  # float64: no Conv (onnxruntime has none)
    for batch in (1, 3):
        x = make_input(model, batch=batch, seed=batch)
        got64 = run_ort(bundle.file("onnx"), x.double())
        got32 = run_ort(bundle.file("onnx_fp32"), x)
        assert got64.dtype == torch.float64 and got32.dtype == torch.float32
        with torch.no_grad():
            assert (got64 - ref64(x.double())).abs().max() <= 1e-9
            assert (got32 - ref32(x)).abs().max() <= 1e-4
            assert (got64 - model64.forward_sequence(x.double())).abs().max() <= 1e-9  # the original model
    rows = {r["label"]: r for r in man["fidelity"]["checks"]}
    assert rows["onnx float64 (model.onnx)"]["passed"] and rows["onnx float64 (model.onnx)"]["max_abs_diff"] <= 1e-9
    fp32 = rows["onnx float32 (model_fp32.onnx)"]
    assert fp32["passed"] is None and "float32" in fp32["target"] and fp32["max_abs_diff"] is not None
    assert man["fidelity"]["passed"]


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"neuron": "lif", "init_tau": 3.0, "norm": "bn"}],
                         ids=["tdbn-plif", "bn-lif"])
def test_float64_onnx_equals_the_float64_graph(overrides: dict, tmp_path: Path) -> None:
    """SVFormer-base at its smallest (one block per stage, T = 2): every op kind of the zoo (patch embeddings,
    depthwise 5x5, local pathway 3x3 stride 2, GSA, Conv3d head); the other variants only change depths and
    widths, and the 3-stage DVS variant is the default export above."""
    model = make_model("base", depths=(1, 1, 1, 1), time_steps=2, **overrides)
    graph = fold_bn(trace(model))
    x = make_input(model, batch=3, seed=5).double()
    path = write_onnx(graph, tmp_path / "m.onnx", x[:, :2], mode="float64")
    c = check_onnx(path, graph, x, mode="float64", batch_size=2)
    assert c.passed and c.max_abs_diff <= 1e-9 and c.top1_agreement == 1.0 and c.clips == 3, c
    with torch.no_grad():
        want = copy.deepcopy(model).double().forward_sequence(x)
    assert (run_ort(path, x) - want).abs().max() <= 1e-9


def flip_graph(v_threshold: float) -> nx.DiGraph:
    """input (16x6x6 pixels, T = 1) -> conv 3x3 -> LIF (tau 2, ``v_threshold``) -> Conv3d head -> linear -> output."""
    rng = np.random.default_rng(3)
    g = ir.new_graph(1, {}, source="test")
    ir.add_op(g, "input", ir.Input(shape=(16, 6, 6), encoding="pixels"))
    ir.add_op(g, "conv", ir.Conv2d(weight=rng.normal(0, 0.3, (8, 16, 3, 3)), bias=rng.normal(0, 0.1, 8), padding=1),
              ["input"])
    ir.add_op(g, "lif", ir.Neuron(model="lif", tau=2.0, v_threshold=v_threshold), ["conv"])
    ir.add_op(g, "head", ir.Conv3dHead(weight=rng.normal(0, 0.3, (8, 1, 1, 6, 6)), groups=8), ["lif"])
    ir.add_op(g, "flatten", ir.Flatten(), ["head"])
    ir.add_op(g, "fc", ir.Linear(weight=rng.normal(0, 1.0, (3, 8))), ["flatten"])
    ir.add_op(g, "output", ir.Output(), ["fc"])
    return ir.validate(g)


@pytest.mark.slow
def test_a_membrane_within_float32_rounding_of_the_threshold_keeps_its_spike_in_the_float64_file(tmp_path) -> None:
    """The threshold sits between a membrane's float32 and float64 values (a float32 number just above the
    float32 membrane): float32 evaluation drops that spike, float64 keeps it, and so must model.onnx."""
    x = torch.randn(1, 2, 16, 6, 6, generator=torch.Generator().manual_seed(0))
    probe = flip_graph(1.0)
    with torch.no_grad():
        v64 = ReferenceModel(probe, torch.float64).run(x, record={"conv"})[1]["conv"].numpy() / 2.0  # charge x/tau
        v32 = ReferenceModel(probe, torch.float32).run(x, record={"conv"})[1]["conv"].numpy().astype(np.float64) / 2.0
    gap = np.where(v32 > 0.3, v64 - v32, 0.0)
    i = np.unravel_index(np.argmax(gap), gap.shape)
    th = float(np.nextafter(np.float32(v32[i]), np.float32(np.inf)))  # float32 membrane < th <= float64 membrane
    assert v64[i] - th > 1e-9  # far outside float64 rounding
    g = flip_graph(th)
    with torch.no_grad():
        s64 = ReferenceModel(g, torch.float64).run(x, record={"lif"})[1]["lif"]
        s32 = ReferenceModel(g, torch.float32).run(x, record={"lif"})[1]["lif"]
        want = ReferenceModel(g, torch.float64)(x)
        assert (ReferenceModel(g, torch.float32)(x).double() - want).abs().max() > 1e-3  # float32 loses the spike
    assert s64[i] == 1 and s32[i] == 0
    got = run_ort(write_onnx(g, tmp_path / "flip.onnx", x, mode="float64"), x.double())
    assert (got - want).abs().max() <= 1e-12
