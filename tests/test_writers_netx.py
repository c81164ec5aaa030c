"""netx HDF5 writer: exactness conditions, the file schema, Lava's integer arithmetic, and Lava itself.

The Lava comparison needs the separate Lava venv (``make lava-venv``; location from
``SVFORMER_LAVA_VENV``, default ``~/.cache/svformer-deploy/lava-venv``) and is skipped without it. It runs
the documented recipe (``LAVA_RECIPE``: default ``netx.hdf5.Network`` arguments, RingBuffer source and sink,
one ``RunSteps``) through ``lava_compare``, the function ``verify`` uses.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fixtures_models import make_input, make_model, single_thread  # noqa: F401
from svformer_deploy.export.passes.quantize import QuantConfig, quantize
from svformer_deploy.export.pipeline import run_pipeline
from svformer_deploy.export.reference import ReferenceModel
from svformer_deploy.export.writers.netx_writer import (
    NetxLayer,
    NetxNet,
    data_outputs,
    default_lava_venv,
    fold_bias,
    lava_compare,
    lava_python,
    netx_input,
    netx_issue,
    netx_net,
    read_netx,
    simulate_netx,
    write_netx,
)
from svformer_deploy.export.writers.partition import partition, record_part_io
from svformer_deploy.svformer.errors import SVFormerError
from writers_fixtures import NETX_QUANT, netx_parts_match_lava_model, quantized_chain


@pytest.fixture(scope="module")
def svformer_parts():
    """A tiny plain-BN SVFormer quantized for netx, its parts, and recorded fixed-point node outputs."""
    model = make_model("base", norm="bn")
    x = make_input(model, batch=4, seed=3)
    folded = run_pipeline(model).graph
    qg = quantize(folded, x, NETX_QUANT)
    part = partition(qg)
    _, rec = ReferenceModel(qg, mode="fixed").run(x[:, :2], record=True)
    return qg, part, rec


def record(qg, x):
    with torch.no_grad():
        return ReferenceModel(qg, mode="fixed").run(x, record=True)[1]


def test_netx_needs_quantized_graph_with_one_lava_threshold_per_layer() -> None:
    model = make_model("base", norm="bn")
    x = make_input(model, batch=2)
    folded = run_pipeline(model).graph
    p = partition(folded).parts[0]
    assert "not quantized" in netx_issue(folded, p)
    per_channel = quantize(folded, x, QuantConfig())
    assert "one threshold per channel" in netx_issue(per_channel, p)
    assert "multiple of 64" in netx_issue(quantize(folded, x, QuantConfig(per_channel=False)), p)
    assert netx_issue(quantize(folded, x, NETX_QUANT), p) is None


def test_attention_projections_are_refused_because_their_accumulator_is_rescaled(svformer_parts) -> None:
    qg, part, _ = svformer_parts
    issues = {p.output: netx_issue(qg, p) for p in part.parts}
    assert any(k.endswith("attn.q_lif") for k in issues)
    for name, issue in issues.items():
        if name.endswith(("q_lif", "k_lif", "v_lif")):
            assert "rescaled" in issue
        else:
            assert issue is None, (name, issue)


def test_netx_file_follows_the_schema_and_reads_back(tmp_path: Path) -> None:
    qg, _ = quantized_chain()
    (p,) = partition(qg).parts
    graph_net = netx_net(qg, p, fold=False)  # the graph's layers: bias in the neuron, grouped conv
    path = write_netx(graph_net, tmp_path / "graph.h5")
    with h5py.File(path) as f:
        assert f["layer/0/type"][()] == b"input" and list(f["layer/0/shape"][()]) == [4, 7, 7]
        assert "neuron" not in f["layer/0"]
        conv = f["layer/1"]
        assert conv["type"][()] == b"conv" and list(conv["shape"][()]) == [6, 4, 7]
        assert conv["weight"].shape == (6, 2, 3, 3) and conv["weight"].dtype.kind == "i"
        assert list(conv["stride"][()]) == [2, 1] and int(conv["groups"][()]) == 2 and "bias" in conv
        n = f["layer/1/neuron"]
        assert n["type"][()] == b"CUBA" and int(n["iDecay"][()]) == 4096
        q = qg.nodes["lif1"]["quant"]
        assert int(n["vDecay"][()]) == int(q["decay"])
        assert int(n["vThMant"][()]) * 64 == int(np.unique(q["theta"])[0])
        assert list(f["layer/2/weight"].shape) == [5, 6, 3, 2] and list(f["layer/2/padding"][()]) == [1, 0]
    net = netx_net(qg, p)  # as written: no bias, 2 constant input channels (vThMant 182 of lif1 needs 2 x 92)
    path = write_netx(net, tmp_path / "part.h5")
    with h5py.File(path) as f:
        assert list(f["layer/0/shape"][()]) == [6, 7, 7] and "neuron" not in f["layer/0"]
        assert list(f["layer/1/shape"][()]) == [8, 4, 7] and f["layer/1/weight"].shape == (8, 6, 3, 3)
        assert int(f["layer/1/groups"][()]) == 1 and list(f["layer/1/stride"][()]) == [2, 1]
        assert list(f["layer/2/shape"][()]) == [5, 4, 6] and f["layer/2/weight"].shape == (5, 8, 3, 2)
        assert not any("bias" in f[f"layer/{i}"] for i in (1, 2))
        assert np.abs(f["layer/1/weight"][()]).max() <= 127 and np.abs(f["layer/2/weight"][()]).max() <= 127
        assert int(f["layer/1/neuron/vThMant"][()]) * 64 == int(np.unique(qg.nodes["lif1"]["quant"]["theta"])[0])
    w1 = net.layers[0].weight
    b1 = np.asarray(qg.nodes["conv1"]["quant"]["bias"]).reshape(-1)
    assert np.array_equal(w1[:6, 4:].sum(axis=(1, 2, 3)), b1)  # the bias, carried by the constant channels
    assert np.array_equal(w1[:3, 2:4], np.zeros((3, 2, 3, 3))) and np.array_equal(w1[3:6, :2], np.zeros((3, 2, 3, 3)))
    assert np.array_equal(w1[:6, :4].reshape(2, 3, 2, 2, 3, 3)[[0, 1], :, [0, 1]],
                          graph_net.layers[0].weight.reshape(2, 3, 2, 3, 3))  # block-diagonal groups
    assert (w1[6:, 4:, 1, 1] == 92).all() and (w1[6:, :4] == 0).all()  # relays: 2 x 92 > vThMant 182
    back = read_netx(path)
    assert back.in_shape == net.in_shape and len(back.layers) == 2 and back.const_channels == 2
    for a, b in zip(back.layers, net.layers, strict=True):
        assert np.array_equal(a.weight, b.weight) and a.bias is None and b.bias is None
        assert (a.stride, a.padding, a.groups, a.v_decay, a.threshold, a.relays) == (
            b.stride, b.padding, b.groups, b.v_decay, b.threshold, b.relays)
    assert [la.relays for la in back.layers] == [2, 0]
    assert back.meta["nodes"] == ["conv1", "lif1", "conv2", "lif2"]


def test_folded_file_under_lava_timing_is_the_graph_late_by_one_step_per_layer_from_step_zero() -> None:
    """What stock netx computes on the recipe's input (one step of delay per layer) equals the graph."""
    qg, x = quantized_chain()
    (p,) = partition(qg).parts
    x_in, outs = record_part_io(qg, p, record(qg, x))
    T, L = x_in.shape[0], 2
    graph = simulate_netx(netx_net(qg, p, fold=False), x_in)
    net = netx_net(qg, p)
    late = simulate_netx(net, netx_input(net, x_in), lava_timing=True)
    assert late[0][-1].shape[0] == T + L
    for i in range(L):
        d = i + 1
        for k in range(3):  # spikes, v, u of the graph's neurons
            got = data_outputs(net, late[k])[i]
            assert not got[:d].any(), (i, k)  # nothing before the first input arrives
            if k < 2:
                assert torch.equal(got[d:d + T], graph[k][i]), (i, k)
        relays = late[0][i][:, :, outs[i].shape[2]:]
        assert (relays[d:d + T] == 1).all() and not relays[:d].any() and not relays[d + T:].any()
    assert torch.equal(late[0][-1][L:] != 0, outs[-1] != 0) and not late[0][-1][:L].any()
    assert int(outs[-1].sum()) > 20
    # the bias written into the file instead: Lava integrates it before the first input and the output differs
    unfolded = netx_net(qg, p, fold=False)
    raw = simulate_netx(unfolded, torch.cat([x_in, torch.zeros((L, *x_in.shape[1:]))]), lava_timing=True)
    assert not torch.equal(raw[0][-1][L:] != 0, outs[-1] != 0)


def test_fold_refuses_a_layer_without_an_always_valid_tap() -> None:
    w = np.ones((2, 1, 1, 1), np.int64)
    la = NetxLayer(weight=w, bias=np.asarray([5, -5]), stride=(1, 1), padding=(1, 1), groups=1, in_shape=(1, 3, 3),
                   out_shape=(2, 5, 5), v_decay=0, threshold=10)  # 1x1 kernel, padding 1: border outputs see no input
    with pytest.raises(SVFormerError, match="no kernel tap"):
        fold_bias(NetxNet(in_shape=(1, 3, 3), layers=[la]))
    la.padding, la.out_shape = (0, 0), (2, 3, 3)
    folded = fold_bias(NetxNet(in_shape=(1, 3, 3), layers=[la]))
    assert folded.const_channels == 1 and folded.in_shape == (2, 3, 3) and folded.layers[0].relays == 0
    la.bias = np.asarray([300, -20])
    folded = fold_bias(NetxNet(in_shape=(1, 3, 3), layers=[la]))
    assert folded.const_channels == 3 and folded.layers[0].weight[0, 1:, 0, 0].tolist() == [127, 127, 46]


def test_lava_integer_model_reproduces_the_quantized_graph_spike_for_spike(svformer_parts) -> None:
    qg, part, rec = svformer_parts
    assert netx_parts_match_lava_model(qg, part, rec) >= 5  # LFE and GSA MLP layers of every block
    qg, x = quantized_chain()
    (p,) = partition(qg).parts
    x_in, outs = record_part_io(qg, p, record(qg, x))
    net = netx_net(qg, p)
    got = data_outputs(net, simulate_netx(net, netx_input(net, x_in, flush=False))[0])
    assert all(torch.equal(a != 0, b != 0) for a, b in zip(got, outs, strict=True))
    assert sum(int(o.sum()) for o in outs) > 20


def test_lava_timing_delays_each_layer_by_one_step_for_bias_free_layers() -> None:
    qg, x = quantized_chain(bias=False)
    (p,) = partition(qg).parts
    net = netx_net(qg, p)
    x_in, _ = record_part_io(qg, p, record(qg, x))
    now = simulate_netx(net, x_in)
    late = simulate_netx(net, x_in, lava_timing=True)
    for i in range(2):
        d = i + 1
        assert torch.equal(late[0][i][d:], now[0][i][:-d])
        assert torch.equal(late[1][i][d:], now[1][i][:-d])


# ---------------------------------------------------------------------------------------------
# Lava itself
# ---------------------------------------------------------------------------------------------
def lava_py() -> Path:
    py = lava_python()
    if py is None:
        pytest.skip(f"no Lava venv at {default_lava_venv()} (build it with make lava-venv or set SVFORMER_LAVA_VENV)")
    return py


@pytest.mark.slow
def test_netx_parts_run_in_stock_lava_with_identical_spikes_and_states_from_the_first_step(tmp_path: Path,
                                                                                            svformer_parts) -> None:
    """The documented recipe, literally (lava_run.py), vs the quantized graph: every spike, v and u."""
    py = lava_py()
    cases, expected = [], []  # (file, input spikes [T, C, H, W]); the quantized graph's output spikes
    for bias in (True, False):
        qg, x = quantized_chain(bias=bias)
        (p,) = partition(qg).parts
        x_in, outs = record_part_io(qg, p, record(qg, x))
        h5 = write_netx(netx_net(qg, p), tmp_path / f"chain-bias{bias}.h5")
        for b in range(x_in.shape[1]):
            cases.append((h5, x_in[:, b].numpy()))
            expected.append(outs[-1][:, b])
    qg, part, rec = svformer_parts
    picked = [p for p in part.parts if netx_issue(qg, p) is None]
    for p in (picked[0], picked[-1]):  # an LFE conv layer and a GSA token layer
        x_in, outs = record_part_io(qg, p, rec)
        h5 = write_netx(netx_net(qg, p), tmp_path / f"svformer-part{p.index}.h5")
        cases.append((h5, x_in[:, 0].numpy()))
        expected.append(outs[-1][:, 0])
    assert read_netx(cases[0][0]).const_channels > 0  # biases carried by constant channels

    results = lava_compare(cases, tmp_path, python=py, states=True)
    for r, want in zip(results, expected, strict=True):
        assert r.spike_mismatches == 0 and r.early_spikes == 0 and r.state_mismatches == 0, r
        assert r.exact
        assert np.array_equal(r.output[r.layers:], (want != 0).numpy()), r.path  # the graph itself, L steps late
        assert not r.output[:r.layers].any()
    assert all(r.output_spikes > 0 for r in results)
    assert sum(r.output_spikes for r in results) > 300


@pytest.mark.slow
def test_stock_lava_integrates_a_file_bias_before_the_first_input(tmp_path: Path) -> None:
    """Why the files carry no bias: the same chain with the bias in the file, run by the same recipe, differs
    from the graph; simulate_netx(lava_timing=True) is what Lava computes (every spike, v and u)."""
    py = lava_py()
    qg, x = quantized_chain()
    (p,) = partition(qg).parts
    x_in, outs = record_part_io(qg, p, record(qg, x))
    h5 = write_netx(netx_net(qg, p, fold=False), tmp_path / "bias-in-file.h5")
    cases = [(h5, x_in[:, b].numpy()) for b in range(x_in.shape[1])]
    results = lava_compare(cases, tmp_path, python=py, states=True)
    assert all(r.state_mismatches == 0 for r in results)  # Lava's timing, reproduced
    assert sum(r.spike_mismatches for r in results) > 0  # but not the graph
    assert not all(np.array_equal(r.output[2:], (outs[-1][:, b] != 0).numpy()) for b, r in enumerate(results))
