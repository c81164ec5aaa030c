"""quantize: the fixed-point spec, checked against an independent int64 executor, plus calibration and reports."""

from __future__ import annotations

import os
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from fixtures_models import make_input, make_model, single_thread  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st
from svformer_deploy.export import ir
from svformer_deploy.export.passes.fold_bn import fold_bn
from svformer_deploy.export.passes.fuse_linear import fuse_linear
from svformer_deploy.export.passes.quantize import (
    QuantConfig,
    check,
    load_calibration,
    multiplier,
    neuron_errors,
    quantize,
    weight_errors,
)
from svformer_deploy.export.reference import ReferenceModel, run_graph
from svformer_deploy.export.trace import trace
from svformer_deploy.svformer.errors import SVFormerError

DATA = Path(os.environ.get("SVFORMER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


# ---------------------------------------------------------------------------------------------
# an independent integer executor of the spec (numpy int64), written from the module docstring
# ---------------------------------------------------------------------------------------------
def _sat(x, bits):
    lim = (1 << (int(bits) - 1)) - 1
    return np.clip(x, -lim, lim)


def _rshift(p, m, s):
    pm = p * m
    up = (pm + (np.int64(1) << np.maximum(s - 1, 0))) >> np.maximum(s, 0)
    return np.where(s > 0, up, pm << np.maximum(-s, 0))


def _conv(x, w, stride, pad, groups):
    b, ci, h, wd = x.shape
    co, cig, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ho, wo = (h + 2 * pad[0] - kh) // stride[0] + 1, (wd + 2 * pad[1] - kw) // stride[1] + 1
    out = np.zeros((b, co, ho, wo), dtype=np.int64)
    cog = co // groups
    for gi in range(groups):
        xg, wg = xp[:, gi * cig:(gi + 1) * cig], w[gi * cog:(gi + 1) * cog]
        for u in range(kh):
            for v in range(kw):
                patch = xg[:, :, u:u + stride[0] * ho:stride[0], v:v + stride[1] * wo:stride[1]]
                out[:, gi * cog:(gi + 1) * cog] += np.einsum("bihw,oi->bohw", patch, wg[:, :, u, v])
    return out


def _chan(a, rank, axis):
    shape = [1] * (rank + 1)
    shape[axis % rank + 1] = a.shape[-1]
    return a.reshape(shape)


def int_executor(g: nx.DiGraph, x: np.ndarray) -> tuple[np.ndarray, dict[str, list[np.ndarray]]]:
    """Run a quantized graph on frames [T, B, C, H, W] with int64 arithmetic only (besides input rounding)."""
    order = ir.topo_order(g)
    T = x.shape[0]
    rec = {n: [] for n in order}
    v_state, head_in = {}, {n: [] for n in order if ir.op_of(g, n).op == "conv3d"}

    def weighted_tail(n, q, acc, rank, axis):
        if "bias" in q:
            acc = acc + (q["bias"] if q["bias"].ndim == 3 else _chan(q["bias"], rank, axis))
        if "m" in q:
            acc = _sat(_rshift(acc, _chan(q["m"], rank, axis), _chan(q["shift"], rank, axis)), q["bits"])
        return acc

    for t in range(T):
        env = {}
        for n in order:
            op, q = ir.op_of(g, n), g.nodes[n]["quant"]
            if ir.spec(g, n).rate == ir.CLIP:
                continue
            ins = [env[i] for i in ir.inputs_of(g, n)]
            rank = len(ir.spec(g, n).shape)
            if op.op == "input":
                y = _sat(np.rint(x[t].astype(np.float64) / q["scale"]).astype(np.int64), q["bits"])
            elif op.op == "conv2d":
                y = weighted_tail(n, q, _conv(ins[0], q["weight"], op.stride, op.padding, op.groups), 3, 0)
            elif op.op == "linear":
                y = weighted_tail(n, q, np.einsum("...i,oi->...o", ins[0], q["weight"]), rank, -1)
            elif op.op == "affine":
                m, s = (_chan(q[k][t] if q[k].ndim == 2 else q[k], rank, op.axis) for k in ("m", "shift"))
                y = _rshift(ins[0], m, s)
                if "bias" in q:
                    y = y + _chan(q["bias"][t] if q["bias"].ndim == 2 else q["bias"], rank, op.axis)
                y = _sat(y, q["bits"])
            elif op.op == "neuron":
                xin = np.clip(ins[0], -(2**17 - 1), 2**17 - 1)
                v = v_state.get(n, np.zeros_like(xin))
                p = v * (4096 - int(q["decay"]))
                v = np.sign(p) * (np.abs(p) >> 12) + (xin << 6)
                v = np.clip(v, -(2**23 - 1), 2**23 - 1)
                y = (v > q["theta"]).astype(np.int64)
                v_state[n] = np.where(y == 1, 0, v)
            elif op.op == "add":
                y = _sat(ins[0] + ins[1], q["bits"])
            elif op.op == "concat":
                y = np.concatenate(ins, axis=op.axis % rank + 1)
            elif op.op == "to_tokens":
                y = ins[0].reshape(ins[0].shape[0], ins[0].shape[1], -1).transpose(0, 2, 1)
            elif op.op == "to_image":
                y = ins[0].transpose(0, 2, 1).reshape(ins[0].shape[0], -1, op.height, op.width)
            elif op.op == "split_heads":
                b, nt, _ = ins[0].shape
                y = ins[0].reshape(b, nt, op.parts, op.heads, op.head_dim)[:, :, op.part].transpose(0, 2, 1, 3)
            elif op.op == "merge_heads":
                b, h, nt, d = ins[0].shape
                y = ins[0].transpose(0, 2, 1, 3).reshape(b, nt, h * d)
            elif op.op == "spike_matmul_kv":
                y = np.swapaxes(ins[0], -1, -2) @ ins[1]
            elif op.op == "spike_matmul_q_kv":
                y = _sat((ins[0] @ ins[1]) << int(q["shift"]), q["bits"])
            else:
                raise AssertionError(op.op)
            env[n] = y
            rec[n].append(y)
        for n in head_in:
            head_in[n].append(env[ir.inputs_of(g, n)[0]])
    env = {}
    for n in order:
        if ir.spec(g, n).rate != ir.CLIP:
            continue
        op, q = ir.op_of(g, n), g.nodes[n]["quant"]
        ins = [] if op.op == "conv3d" else [env[i] for i in ir.inputs_of(g, n)]
        if op.op == "conv3d":
            frames = head_in[n]
            acc = sum(_conv(frames[t], q["weight"][:, :, t], (1, 1), (0, 0), op.groups) for t in range(T))[..., None]
            y = weighted_tail(n, q, acc, 4, 0)
        elif op.op == "flatten":
            y = ins[0].reshape(ins[0].shape[0], -1)
        elif op.op == "linear":
            y = weighted_tail(n, q, ins[0] @ q["weight"].T, 1, -1)
        elif op.op == "output":
            y = ins[0] * q["scale"]
        else:
            raise AssertionError(op.op)
        env[n] = y
        rec[n].append(y)
    return env[ir.output_node(g)], rec


def _quantized(variant="base", fuse=False, config=None, **kw):
    config = config or QuantConfig()
    model = make_model(variant, **kw)
    g = fold_bn(trace(model))
    if fuse:
        g = fuse_linear(g)
    return model, g, quantize(g, make_input(model, 6, seed=11), config)


@pytest.mark.parametrize("variant,kw,fuse,config", [
    ("base", {}, False, QuantConfig()),
    ("base", dict(norm="bn"), True, QuantConfig(weight_bits=4)),  # conv -> neuron directly: per-channel theta
    ("3stg", dict(neuron="lif", init_tau=3.0), False, QuantConfig(per_channel=False, lava_thresholds=True)),
], ids=["tdbn-int8", "plainbn-fused-int4", "3stg-lif-lava"])
def test_fixed_point_reference_equals_an_int64_executor_bit_for_bit(variant, kw, fuse, config):
    model, _, q = _quantized(variant, fuse, config, **kw)
    x = make_input(model, 2, seed=12)
    logits, rec = run_graph(q, x.double(), mode="fixed", record=True)
    want_logits, want = int_executor(q, x.numpy())
    n_spikes = 0
    for n in ir.topo_order(q):
        got = rec[n]
        w = np.stack(want[n]) if ir.spec(q, n).rate == ir.STEP else want[n][0]
        assert got.shape == w.shape, n
        if ir.op_of(q, n).op != "output":
            assert np.array_equal(got.numpy(), w.astype(np.float64)), n
        if ir.op_of(q, n).op == "neuron":
            n_spikes += int(w.sum())
    assert n_spikes > 0
    np.testing.assert_array_equal(logits.numpy(), want_logits)


def test_float32_weight_evaluation_stays_exact_while_accumulators_fit_24_bits():
    model, _, q = _quantized("3stg", fuse=True, config=QuantConfig(act_bits=12))
    assert max(int(q.nodes[n]["quant"]["acc_bits"]) for n, _ in ir.iter_ops(q, ir.WEIGHTED)) <= 24
    x = make_input(model, 2, seed=13).double()
    with torch.no_grad():
        a = ReferenceModel(q, mode="fixed")(x)
        b = ReferenceModel(q, mode="fixed", weight_dtype=torch.float32)(x)
    assert torch.equal(a, b)


def _threshold_graph(a_weight: float, a: float = 0.0, v_threshold: float = 1.0) -> nx.DiGraph:
    """input (1 channel) -> 1x1 conv (weight w) -> PLIF (k = sigmoid(a), default 0.5, V_th) -> head; T = 1."""
    g = ir.new_graph(1)
    ir.add_op(g, "input", ir.Input(shape=(1, 1, 1), encoding="events"))
    ir.add_op(g, "conv", ir.Conv2d(weight=np.full((1, 1, 1, 1), a_weight), bias=None), ["input"])
    ir.add_op(g, "lif", ir.Neuron(a=a, v_threshold=v_threshold), ["conv"])
    ir.add_op(g, "head3d", ir.Conv3dHead(weight=np.ones((1, 1, 1, 1, 1)), bias=None, groups=1), ["lif"])
    ir.add_op(g, "flatten", ir.Flatten(), ["head3d"])
    ir.add_op(g, "fc", ir.Linear(weight=np.ones((1, 1)), bias=None), ["flatten"])
    ir.add_op(g, "output", ir.Output(), ["fc"])
    return g


def test_threshold_reproduces_spikingjellys_fire_at_equality_and_lava_mode_does_not():
    g = _threshold_graph(1.0)
    x = torch.full((1, 1, 1, 1, 1), 2.0)  # H = 0 + 0.5 * (2 - 0) = 1.0 = V_th exactly
    _, rec = run_graph(g, x, record=True)
    assert rec["lif"].item() == 1.0  # Θ(0) = 1
    q = quantize(g, x)
    assert q.nodes["input"]["quant"]["scale"] == 1.0  # integer event counts stay exact
    _, rq = run_graph(q, x.double(), mode="fixed", record=True)
    assert rq["lif"].item() == 1.0
    ql = quantize(g, x, QuantConfig(lava_thresholds=True))
    assert ql.nodes["lif"]["quant"]["theta"].item() % 64 == 0
    _, rl = run_graph(ql, x.double(), mode="fixed", record=True)
    assert rl["lif"].item() == 0.0  # Lava's strict v > vThMant << 6 at the exact threshold
    _, below = run_graph(q, torch.full((1, 1, 1, 1, 1), 1.0).double(), mode="fixed", record=True)
    assert below["lif"].item() == 0.0


def test_threshold_uses_the_float_leak_so_rounding_k_to_12_bits_moves_no_threshold():
    # k = (2048 + 0.4)/4096 is rounded down to 2048/4096 for the leak; V_th puts the float threshold on the input
    # 0.005 below 100 events: the float neuron fires on 100 events, not on 99. A threshold computed with the
    # rounded k would sit 0.019 % higher, at 100.014 events, and miss the spike on 100.
    k = (2048 + 0.4) / 4096
    g = _threshold_graph(1.0, a=float(np.log(k / (1 - k))), v_threshold=k * (100 - 0.005))
    x = torch.tensor([99.0, 100.0]).reshape(1, 2, 1, 1, 1)
    _, rec = run_graph(g, x, record=True)
    assert rec["lif"].flatten().tolist() == [0.0, 1.0]
    q = quantize(g, x)
    assert int(q.nodes["lif"]["quant"]["decay"]) == 2048
    _, rq = run_graph(q, x.double(), mode="fixed", record=True)
    assert rq["lif"].flatten().tolist() == [0.0, 1.0]


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_weights_are_symmetric_integers_of_the_requested_width(bits):
    _, f, q = _quantized("3stg", config=QuantConfig(weight_bits=bits))
    lim = 2 ** (bits - 1) - 1
    for row in weight_errors(q):
        qq = q.nodes[row["name"]]["quant"]
        assert qq["weight"].dtype == np.int64 and np.abs(qq["weight"]).max() == lim
        op = ir.op_of(q, row["name"])
        scale = qq["weight_scale"].reshape((-1,) + (1,) * (op.weight.ndim - 1))
        assert np.all(np.abs(op.weight - qq["weight"] * scale) <= scale / 2 + 1e-12)
    assert q.graph["quant"]["weight_bits"] == bits


def test_int8_report_gives_per_layer_errors_and_spike_agreement():
    model, f, q = _quantized("base")
    rep = check(f, q, make_input(model, 8, seed=21))
    names = {r["name"] for r in rep.weights}
    assert names == {n for n, _ in ir.iter_ops(f, ir.WEIGHTED)}
    assert all(r["rel_error"] < 0.01 for r in rep.weights)  # int8 per-channel: < 1% relative L2 error
    assert {r["name"] for r in rep.neurons} == set(ir.neuron_names(f))
    assert all(abs(r["k_q"] - r["k"]) <= 0.5 / 4096 and r["threshold_rel_error"] < 1e-3 for r in rep.neurons)
    fid = rep.fidelity
    assert fid.clips == 8 and len(fid.layers) == len(rep.neurons) and fid.passed is not None
    first = fid.layers[0]  # the first neuron layer sees only the quantized first conv: nearly no flips
    assert first.name == "blocks1.0.act1" and first.agreement >= 0.995
    assert 0.5 < fid.spike_agreement <= 1.0
    d = rep.to_dict()
    assert d["fidelity"]["layers"][0]["name"] == "blocks1.0.act1"


def test_quantize_needs_a_folded_graph_and_valid_bits():
    model = make_model("3stg")
    with pytest.raises(SVFormerError, match="fold_bn"):
        quantize(trace(model), make_input(model, 2))
    with pytest.raises(SVFormerError, match="weight bits"):
        QuantConfig(weight_bits=1)
    with pytest.raises(SVFormerError, match="weight bits"):
        QuantConfig(weight_bits=17)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-12, max_value=6e4, allow_nan=False) | st.floats(min_value=-6e4, max_value=-1e-12))
def test_multiplier_approximates_any_ratio_to_15_bits(r):
    m, s = multiplier(r)
    assert 2**14 <= abs(int(m)) < 2**15
    assert abs(int(m) * 2.0 ** -int(s) - r) <= abs(r) * 2.0**-15


def test_calibration_loads_tensors_files_and_folders(tmp_path):
    x = torch.randn(3, 2, 2, 8, 8)
    torch.save(x, tmp_path / "a.pt")
    np.save(tmp_path / "b.npy", x[:, 0].numpy())  # one clip [T, C, H, W]
    assert torch.equal(load_calibration(tmp_path / "a.pt"), x)
    assert load_calibration(tmp_path / "b.npy").shape == (3, 1, 2, 8, 8)
    assert load_calibration(tmp_path).shape == (3, 3, 2, 8, 8)
    assert load_calibration(tmp_path, limit=2).shape[1] == 2
    (tmp_path / "bad.pt").write_bytes(b"not a tensor file")
    with pytest.raises(SVFormerError, match="bad.pt"):
        load_calibration(tmp_path / "bad.pt")
    with pytest.raises(SVFormerError, match="no such"):
        load_calibration(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SVFormerError, match="no calibration clips"):
        load_calibration(empty)


@pytest.mark.data
def test_calibration_from_a_real_video_folder():
    video = DATA / "video"
    if not video.is_dir():
        pytest.skip(f"real data not found at {video} (set SVFORMER_DATA)")
    from svformer_deploy.svformer.data.datasets import InputSpec

    spec = InputSpec(kind="video", time_steps=2, size=32)
    x = load_calibration(video, spec, limit=2)
    assert x.shape == (2, 2, 3, 32, 32) and torch.isfinite(x).all()
    model = make_model("3stg", in_channels=3, time_steps=2)
    q = quantize(fold_bn(trace(model)), x)
    assert float(q.nodes["input"]["quant"]["scale"]) > 0
    assert neuron_errors(q)
