"""Counters and event kernels against brute force: literal loops over every event on tiny tensors."""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from fixtures_models import make_input, make_model, single_thread  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st
from svformer_deploy.export import ir
from svformer_deploy.export.pipeline import run_pipeline
from svformer_deploy.simulators.counting import COUNT_KEYS, K, LayerCounter, conv_fanout, input_neurons, layer_infos
from svformer_deploy.simulators.executor import Simulator
from svformer_deploy.simulators.kernels import (
    Conv2dKernel,
    HeadConv3dKernel,
    KernelPolicy,
    LinearKernel,
    spike_kv,
    spike_q_kv,
)

EVENTS = KernelPolicy("events")


def _graph_with(op: ir.Node, in_shape: tuple[int, ...], spikes: bool = True):
    """input -> (neuron) -> op: enough graph for a LayerCounter (not a complete network)."""
    g = ir.new_graph(1)
    ir.add_op(g, "input", ir.Input(shape=in_shape if len(in_shape) == 3 else (1, 1, 1)), [])
    src = "input"
    if len(in_shape) != 3:  # token inputs: a fake source of the right spec
        g.nodes["input"]["shape"] = tuple(in_shape)
    if spikes:
        src = ir.add_op(g, "lif", ir.Neuron(a=0.0), [src])
    ir.add_op(g, "op", op, [src])
    return g


def _count(g, ins, out=None, t=0):
    """Counts of one clip, run as a batch of one (the counters' tensors lead with the batch axis)."""
    c = LayerCounter(g, "op")
    c.step(t, [x[None] for x in ins], (out if out is not None else ins[0])[None])
    c.finish()
    return {k: int(c.table[0, K[k]].sum()) for k in COUNT_KEYS}


# ---------------------------------------------------------------------------------------------
# brute force references: loop over events
# ---------------------------------------------------------------------------------------------
def brute_conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int, groups: int):
    """Event-driven conv: every nonzero input (c, y, x) visits each tap and each output channel of its group.

    Returns (output, synapses driven) with the output accumulated event by event.
    """
    c_in, h, wd = x.shape
    c_out, ci_g, kh, kw = w.shape
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    m = c_out // groups
    out = np.zeros((c_out, ho, wo))
    synapses = 0
    for c, y, xx in zip(*np.nonzero(x), strict=True):
        g, i = divmod(int(c), ci_g)
        for u, v in itertools.product(range(kh), range(kw)):
            ny, nx = y + pad - u, xx + pad - v
            if ny % stride or nx % stride:
                continue
            oy, ox = ny // stride, nx // stride
            if not (0 <= oy < ho and 0 <= ox < wo):
                continue
            for o in range(g * m, (g + 1) * m):
                out[o, oy, ox] += w[o, i, u, v] * x[c, y, xx]
                synapses += 1
    return out, synapses


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    ci_g = draw(st.integers(1, 3))
    m = draw(st.integers(1, 3))
    k = draw(st.integers(1, 5))
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, k - 1))
    h = draw(st.integers(max(1, k - 2 * pad), 8))
    w = draw(st.integers(max(1, k - 2 * pad), 8))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    seed = draw(st.integers(0, 2**16))
    return groups, ci_g, m, k, stride, pad, h, w, density, seed


@settings(max_examples=40, deadline=None)
@given(conv_cases())
def test_conv2d_ac_and_event_sums_equal_a_loop_over_spikes(case):
    groups, ci_g, m, k, stride, pad, h, w, density, seed = case
    gen = torch.Generator().manual_seed(seed)
    c_in, c_out = groups * ci_g, groups * m
    mask = torch.rand(c_in, h, w, generator=gen) < density
    weight = torch.randn(c_out, ci_g, k, k, generator=gen, dtype=torch.float64)
    op = ir.Conv2d(weight=weight.numpy(), bias=None, stride=stride, padding=pad, groups=groups)
    g = _graph_with(op, (c_in, h, w))
    ref_out, ref_syn = brute_conv(mask.numpy().astype(np.float64), weight.numpy(), stride, pad, groups)
    counts = _count(g, [mask])
    assert counts["ac"] == ref_syn
    assert counts["mac"] == 0
    assert counts["spikes_in"] == int(mask.sum())
    assert counts["weight_reads"] == ref_syn
    kern = Conv2dKernel(weight, (stride, stride), (pad, pad), groups, (c_in, h, w), EVENTS)
    np.testing.assert_allclose(kern.spikes(mask[None], [int(mask.sum())])[0].numpy(), ref_out, atol=1e-12)
    np.testing.assert_allclose(kern.dense(mask[None])[0].numpy(), ref_out, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(conv_cases())
def test_conv2d_mac_on_real_input_counts_only_nonzero_values_border_aware(case):
    groups, ci_g, m, k, stride, pad, h, w, density, seed = case
    gen = torch.Generator().manual_seed(seed)
    c_in, c_out = groups * ci_g, groups * m
    x = torch.randn(c_in, h, w, generator=gen, dtype=torch.float64) * (torch.rand(c_in, h, w, generator=gen) < density)
    weight = torch.randn(c_out, ci_g, k, k, generator=gen, dtype=torch.float64)
    op = ir.Conv2d(weight=weight.numpy(), bias=np.zeros(c_out), stride=stride, padding=pad, groups=groups)
    g = _graph_with(op, (c_in, h, w), spikes=False)
    ref_out, ref_syn = brute_conv(x.numpy(), weight.numpy(), stride, pad, groups)
    counts = _count(g, [x])
    assert counts["mac"] == ref_syn and counts["ac"] == 0
    n_out = ref_out.size
    assert counts["add"] == n_out  # one bias add per output element
    assert counts["weight_reads"] == ref_syn + n_out
    np.testing.assert_allclose(Conv2dKernel(weight, (stride,) * 2, (pad,) * 2, groups, (c_in, h, w), EVENTS)
                               .dense(x[None])[0].numpy(), ref_out, atol=1e-12)


def test_fanout_of_a_patch_embedding_counts_border_rows_once():
    # PE: kernel 6, stride 4, padding 1 on 16 rows -> 4 windows: rows 0-4, 3-8, 7-12, 11-15
    r = conv_fanout(16, 6, 4, 1)
    assert r.tolist() == [1, 1, 1, 2, 2, 1, 1, 2, 2, 1, 1, 2, 2, 1, 1, 1]
    assert r.sum() == 4 * 6 - 2  # 4 windows of 6 rows, minus the two padding rows


def test_linear_ac_is_one_per_spike_and_output_and_matches_event_loop():
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(5, 7, generator=gen) < 0.3
    weight = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    g = _graph_with(ir.Linear(weight=weight.numpy(), bias=np.ones(4)), (5, 7))
    out = np.zeros((5, 4))
    synapses = 0
    for n, i in zip(*np.nonzero(mask.numpy()), strict=True):
        for o in range(4):
            out[n, o] += weight[o, i].item()
            synapses += 1
    counts = _count(g, [mask])
    assert counts["ac"] == synapses == 4 * int(mask.sum())
    assert counts["add"] == 5 * 4 and counts["weight_reads"] == synapses + 20
    got = LinearKernel(weight, EVENTS).spikes(mask[None], [int(mask.sum())])[0]
    np.testing.assert_allclose(got.numpy(), out, atol=1e-12)


def test_attention_counts_coincident_pairs_and_d_per_q_spike():
    gen = torch.Generator().manual_seed(1)
    h, n, d = 2, 6, 4
    k = torch.rand(h, n, d, generator=gen) < 0.4
    v = torch.rand(h, n, d, generator=gen) < 0.4
    q = torch.rand(h, n, d, generator=gen) < 0.4
    pairs = sum(1 for j, t, a, b in itertools.product(range(h), range(n), range(d), range(d))
                if k[j, t, a] and v[j, t, b])
    g = ir.new_graph(1)
    ir.add_op(g, "input", ir.Input(shape=(1, 1, 1)), [])
    for name in ("k", "v", "q"):
        ir.add_op(g, f"{name}_src", ir.Input(shape=(1, 1, 1)), [])
        g.nodes[f"{name}_src"].update(shape=(h, n, d), kind=ir.SPIKE)
    ir.add_op(g, "op", ir.SpikeMatmulKV(), ["k_src", "v_src"])
    kv = spike_kv(k, v, torch.float64)
    assert int(kv.sum()) == pairs
    c = _count(g, [k, v], kv)
    assert c["ac"] == pairs and c["spikes_in"] == int(k.sum() + v.sum()) and c["state_writes"] == h * d * d
    g2 = ir.new_graph(1)
    for name in ("q_src", "kv_src"):
        ir.add_op(g2, name, ir.Input(shape=(1, 1, 1)), [])
    g2.nodes["q_src"].update(shape=(h, n, d), kind=ir.SPIKE)
    g2.nodes["kv_src"].update(shape=(h, d, d))
    ir.add_op(g2, "op", ir.SpikeMatmulQKV(scale=0.5), ["q_src", "kv_src"])
    out = np.zeros((h, n, d))
    adds = 0
    for j, t, i in zip(*np.nonzero(q.numpy()), strict=True):
        for e in range(d):  # a Q spike adds one row of KV: d accumulates
            out[j, t, e] += kv[j, i, e].item()
            adds += 1
    c2 = LayerCounter(g2, "op")
    c2.step(0, [q[None], kv[None]], spike_q_kv(q, kv)[None])
    c2.finish()
    assert int(c2.table[0, K["ac"]].sum()) == adds and int(c2.table[0, K["state_reads"]].sum()) == adds
    np.testing.assert_array_equal(spike_q_kv(q, kv).numpy(), out)


def test_head_conv3d_event_kernel_and_count_match_a_loop():
    gen = torch.Generator().manual_seed(2)
    T, c, g, m, hw = 3, 4, 2, 3, 2
    w = torch.randn(g * m, c // g, T, hw, hw, generator=gen, dtype=torch.float64)
    kern = HeadConv3dKernel(w, g, EVENTS)
    masks = [torch.rand(c, hw, hw, generator=gen) < 0.5 for _ in range(T)]
    acc, synapses = np.zeros(g * m), 0
    for t, mask in enumerate(masks):
        for ch, y, x in zip(*np.nonzero(mask.numpy()), strict=True):
            grp, i = divmod(int(ch), c // g)
            for o in range(grp * m, (grp + 1) * m):
                acc[o] += w[o, i, t, y, x].item()
                synapses += 1
    total = sum(kern.spikes(mk[None], [int(mk.sum())], t)[0] for t, mk in enumerate(masks))
    np.testing.assert_allclose(total.numpy(), acc, atol=1e-12)
    dense = F.conv3d(torch.stack(masks, 1)[None].double(), w, groups=g).reshape(-1)
    np.testing.assert_allclose(dense.numpy(), acc, atol=1e-12)
    gr = ir.new_graph(T)
    ir.add_op(gr, "input", ir.Input(shape=(c, hw, hw)), [])
    ir.add_op(gr, "lif", ir.Neuron(a=0.0), ["input"])
    ir.add_op(gr, "op", ir.Conv3dHead(weight=w.numpy(), bias=np.zeros(g * m), groups=g), ["lif"])
    cnt = LayerCounter(gr, "op")
    for t, mk in enumerate(masks):
        cnt.step(t, [mk[None]], mk[None])
    cnt.finish()
    assert int(cnt.table[0, K["ac"]].sum()) == synapses
    assert int(cnt.table[0, K["add"]].sum()) == g * m  # the bias, once per clip
    assert cnt.table[0, K["add"], :-1].sum() == 0


def test_affine_neuron_add_counts_are_per_element_per_step():
    g = ir.new_graph(2)
    ir.add_op(g, "input", ir.Input(shape=(3, 2, 2)), [])
    ir.add_op(g, "op", ir.Affine(scale=np.ones((2, 3)), bias=np.zeros((2, 3)), axis=0), ["input"])
    x = torch.randn(3, 2, 2)
    c = LayerCounter(g, "op")
    assert not c.dynamic
    c.finish()
    assert c.table[0, K["mul"]].tolist() == c.table[0, K["add"]].tolist() == [12, 12]  # per element, per step
    assert c.table[0, K["weight_reads"]].tolist() == [24, 24]
    g2 = _graph_with(ir.Neuron(a=0.0), (3, 2, 2), spikes=False)
    c2 = LayerCounter(g2, "op")
    s = torch.tensor([[[True, False], [False, True]]] * 3)
    c2.step(0, [x[None]], s[None])
    c2.finish()
    assert int(c2.table[0, K["neuron_updates"]].sum()) == 12 and int(c2.table[0, K["spikes_out"]].sum()) == 6
    assert int(c2.table[0, K["state_reads"]].sum()) == int(c2.table[0, K["state_writes"]].sum()) == 12


# ---------------------------------------------------------------------------------------------
# whole graph: every spike-driven layer recounted by brute force from the recorded activity
# ---------------------------------------------------------------------------------------------
def test_simulator_counts_equal_brute_force_recount_on_a_tiny_model():
    model = make_model("3stg", time_steps=2, dims=(4, 8, 16), img_size=32)
    graph = run_pipeline(model).graph
    x = make_input(model, batch=1)[:, 0]
    sim = Simulator(graph, "float", torch.float64)
    res = sim.run(x, record_values=True)
    checked = 0
    for name in res.counts:
        op = ir.op_of(graph, name)
        ins = ir.inputs_of(graph, name)
        for t in range(sim.time_steps):
            got = res.counts[name][:, t]
            xin = [res.values[i][t] if ir.spec(graph, i).rate == ir.STEP else res.values[i] for i in ins]
            if op.op == "conv2d":
                _, syn = brute_conv(xin[0].double().numpy(), op.weight.astype(np.float64), op.stride[0],
                                    op.padding[0], op.groups)
                key = "ac" if xin[0].dtype == torch.bool else "mac"
                assert got[K[key]] == syn, (name, t)
                checked += 1
            elif op.op == "spike_matmul_kv":
                k, v = (a.numpy() for a in xin)
                assert got[K["ac"]] == sum(int(k[j, n].sum()) * int(v[j, n].sum())
                                           for j in range(k.shape[0]) for n in range(k.shape[1]))
                checked += 1
            elif op.op == "neuron":
                assert got[K["spikes_out"]] == int(res.values[name][t].sum())
                assert got[K["neuron_updates"]] == res.values[name][t].numel()
            elif op.op == "linear" and ir.spec(graph, name).rate == ir.STEP:
                assert got[K["ac"]] == int(xin[0].sum()) * op.weight.shape[0]
                checked += 1
    assert checked >= 10
    assert sum(int(res.counts[n][K["ac"]].sum()) for n in res.counts) > 0


def test_layers_know_their_stage_and_feeding_neurons():
    model = make_model("base")
    g = run_pipeline(model).graph
    feed = input_neurons(g)
    assert feed["patch_embed1.proj"] == []
    assert feed["blocks3.0.attn.kv"] == ["blocks3.0.attn.k_lif", "blocks3.0.attn.v_lif"]
    assert feed["blocks3.0.attn.qkv_out"][0] == "blocks3.0.attn.q_lif"
    assert feed["blocks1.0.attn"] == ["blocks1.0.act1"]  # through conv1 (no neuron between)
    fused = run_pipeline(model, fuse=True).graph  # the stage comes from the IR node, fused nodes keep it
    stages = {i.name: i.stage for g_ in (g, fused) for i in layer_infos(g_)}
    assert [stages[n] for n in ("patch_embed1.proj", "patch_embed2.proj", "blocks3.1.mlp.fc1", "lplif", "lif_bf_head",
                                "head", "blocks1.0.conv1+attn+conv2")] == ["PE1", "PE2", "S3", "LP", "CH", "CH", "S1"]
    origins = {i.name: i.origin for i in layer_infos(fused)}
    assert origins["blocks1.0.conv1+attn+conv2"][:3] == ["blocks1.0.conv1", "blocks1.0.attn", "blocks1.0.conv2"]
