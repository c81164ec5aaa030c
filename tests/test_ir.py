"""The IR schema: validation, (de)serialisation round trips and malformed files."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_models import make_input, make_model, single_thread  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st
from svformer_deploy.export import ir
from svformer_deploy.export.passes.fold_bn import fold_bn
from svformer_deploy.export.passes.fuse_linear import fuse_linear
from svformer_deploy.export.passes.quantize import QuantConfig, quantize
from svformer_deploy.export.trace import trace
from svformer_deploy.svformer.errors import SVFormerError


@pytest.fixture(scope="module")
def graphs():
    model = make_model("base", time_steps=2)
    traced = trace(model)
    folded = fold_bn(traced)
    fused = fuse_linear(folded)
    quant = quantize(fused, make_input(model, 4, seed=5), QuantConfig())
    return {"traced": traced, "folded": folded, "fused": fused, "quantized": quant}


def _mini_graph() -> nx.DiGraph:
    """input -> conv -> neuron -> conv3d head -> flatten -> linear -> output (T = 2)."""
    rng = np.random.default_rng(0)
    g = ir.new_graph(2)
    ir.add_op(g, "input", ir.Input(shape=(2, 4, 4)))
    ir.add_op(g, "conv", ir.Conv2d(weight=rng.standard_normal((3, 2, 3, 3)), bias=np.zeros(3), padding=1), ["input"])
    ir.add_op(g, "lif", ir.Neuron(a=0.0), ["conv"])
    ir.add_op(g, "head3d", ir.Conv3dHead(weight=rng.standard_normal((3, 1, 2, 4, 4)), bias=None, groups=3), ["lif"])
    ir.add_op(g, "flatten", ir.Flatten(), ["head3d"])
    ir.add_op(g, "fc", ir.Linear(weight=rng.standard_normal((5, 3)), bias=None), ["flatten"])
    ir.add_op(g, "output", ir.Output(), ["fc"])
    return g


def test_every_graph_round_trips_losslessly_through_json_and_npz(graphs, tmp_path):
    for name, g in graphs.items():
        json_path, npz_path = ir.save(g, tmp_path / f"{name}.json")
        assert npz_path.is_file()
        back = ir.load(json_path)
        assert ir.diff_graphs(g, back) == [], name
        assert ir.topo_order(back) == ir.topo_order(g)
    # the quantized graph keeps its integer arrays with their dtypes
    q = ir.load(tmp_path / "quantized.json")
    w = q.nodes["patch_embed1.proj"]["quant"]["weight"]
    assert w.dtype == np.int64 and np.abs(w).max() <= 127


def test_diff_graphs_sees_a_changed_array_and_attribute(graphs):
    g = graphs["folded"]
    h = ir.copy_graph(g)
    op = ir.op_of(h, "blocks1.0.conv1")
    w = op.weight.copy()
    w.flat[0] = np.nextafter(w.flat[0], np.inf)
    ir.replace_op(h, "blocks1.0.conv1", ir.Conv2d(weight=w, bias=op.bias, stride=op.stride, padding=op.padding))
    assert any("weight" in d for d in ir.diff_graphs(g, h))
    h2 = ir.copy_graph(g)
    n = ir.op_of(h2, "lif_bf_head")
    ir.replace_op(h2, "lif_bf_head", ir.Neuron(model=n.model, a=n.a, v_threshold=n.v_threshold + 1e-9))
    assert any("v_threshold" in d for d in ir.diff_graphs(g, h2))


def test_saved_file_is_plain_json_and_npz_without_pickle(graphs, tmp_path):
    json_path, npz_path = ir.save(graphs["traced"], tmp_path / "m.ir.json")
    doc = json.loads(json_path.read_text())
    assert doc["format"] == "svformer-deploy/ir" and doc["ir_version"] == ir.IR_VERSION
    with np.load(npz_path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    names = [n["name"] for n in doc["nodes"]]
    assert "blocks3.1.attn.q_lif" in names and "blocks1.0.add1" in names


def _write_pair(tmp_path, g):
    return ir.save(g, tmp_path / "g.json")


def test_missing_array_is_an_error_naming_the_file(tmp_path):
    json_path, npz_path = _write_pair(tmp_path, _mini_graph())
    with np.load(npz_path) as z:
        arrays = {k: z[k] for k in z.files}
    key = next(k for k in arrays if k.endswith(".weight"))
    del arrays[key]
    np.savez(npz_path, **arrays)
    doc = json.loads(json_path.read_text())
    doc.pop("arrays_sha256")
    json_path.write_text(json.dumps(doc))
    with pytest.raises(SVFormerError, match=r"g\.json.*missing"):
        ir.load(json_path)


def test_unknown_op_bad_json_and_mismatched_arrays_are_errors(tmp_path):
    json_path, npz_path = _write_pair(tmp_path, _mini_graph())
    good = json_path.read_text()
    doc = json.loads(good)
    doc["nodes"][2]["op"] = "softmax"
    json_path.write_text(json.dumps(doc))
    with pytest.raises(SVFormerError, match="unknown op 'softmax'"):
        ir.load(json_path)
    json_path.write_text(good[: len(good) // 2])
    with pytest.raises(SVFormerError, match="not a readable IR JSON"):
        ir.load(json_path)
    json_path.write_text(good)
    npz_path.write_bytes(npz_path.read_bytes()[:-10])
    with pytest.raises(SVFormerError, match="does not match"):
        ir.load(json_path)
    npz_path.unlink()
    with pytest.raises(SVFormerError, match="missing"):
        ir.load(json_path)
    with pytest.raises(SVFormerError, match="no such IR file"):
        ir.load(tmp_path / "absent.json")


def test_structurally_wrong_file_is_rejected_by_validation(tmp_path):
    json_path, _ = _write_pair(tmp_path, _mini_graph())
    doc = json.loads(json_path.read_text())
    conv = next(n for n in doc["nodes"] if n["name"] == "conv")
    conv["shape"] = [4, 4, 4]
    json_path.write_text(json.dumps(doc))
    with pytest.raises(SVFormerError, match="conv"):
        ir.load(json_path)


def test_validate_rejects_cycles_missing_output_and_bad_ports():
    g = _mini_graph()
    ir.validate(g)
    h = ir.copy_graph(g)
    h.add_edge("fc", "conv", port=1, shape=(5,), kind="real", rate="clip")
    with pytest.raises(SVFormerError, match="cycle"):
        ir.validate(h)
    h = ir.copy_graph(g)
    h.remove_node("output")
    with pytest.raises(SVFormerError, match="output"):
        ir.validate(h)
    h = ir.copy_graph(g)
    h.edges["conv", "lif"]["port"] = 1
    with pytest.raises(SVFormerError, match="ports"):
        ir.validate(h)


def test_add_op_rejects_shape_kind_and_rate_errors():
    g = ir.new_graph(2)
    ir.add_op(g, "input", ir.Input(shape=(2, 4, 4)))
    with pytest.raises(SVFormerError, match="input channels"):
        ir.add_op(g, "conv", ir.Conv2d(weight=np.zeros((3, 3, 1, 1))), ["input"])
    with pytest.raises(SVFormerError, match="spike inputs"):
        ir.add_op(g, "kv", ir.SpikeMatmulKV(), ["input", "input"])
    ir.add_op(g, "lif", ir.Neuron(a=0.0), ["input"])
    ir.add_op(g, "head", ir.Conv3dHead(weight=np.zeros((2, 1, 2, 4, 4)), groups=2), ["lif"])
    with pytest.raises(SVFormerError, match="clip-rate"):
        ir.add_op(g, "lif2", ir.Neuron(a=0.0), ["head"])
    with pytest.raises(SVFormerError, match="duplicate"):
        ir.add_op(g, "lif", ir.Neuron(a=0.0), ["input"])


@settings(max_examples=40, deadline=None)
@given(c_in=st.integers(1, 4), mult=st.integers(1, 3), groups=st.sampled_from([1, 2]), k=st.integers(1, 5),
       stride=st.integers(1, 3), pad=st.integers(0, 2), size=st.integers(5, 9))
def test_conv2d_shape_inference_matches_torch(c_in, mult, groups, k, stride, pad, size):
    c_in, c_out = c_in * groups, mult * groups
    w = np.zeros((c_out, c_in // groups, k, k))
    op = ir.Conv2d(weight=w, stride=stride, padding=pad, groups=groups)
    out = op.infer([ir.TensorSpec((c_in, size, size))])
    x = torch.zeros(1, c_in, size, size, dtype=torch.float64)
    y = F.conv2d(x, torch.from_numpy(w), None, stride, pad, 1, groups)
    assert out.shape == tuple(y.shape[1:]) and out.kind == ir.REAL


def test_graph_dense_macs_equal_the_first_principles_count():
    from svformer_deploy.svformer.complexity import dense_macs

    for variant, kw in [("base", {}), ("3stg", {}), ("base", dict(local_pathway=False))]:
        model = make_model(variant, **kw)
        costs = ir.graph_costs(trace(model))
        assert sum(c["macs"] for c in costs.values()) == dense_macs(model.cfg)
