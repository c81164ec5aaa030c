"""netx HDF5 writer: exactness conditions, the file schema, Lava's integer arithmetic, and Lava itself.

The Lava comparison needs the separate Lava venv (``scripts/make_lava_venv.sh``; location from
``SVFORMER_LAVA_VENV``, default ``~/.cache/svformer-deploy/lava-venv``) and is skipped without it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fixtures_models import make_input, make_model, single_thread  # noqa: F401
from svformer_deploy.export.passes.quantize import QuantConfig, quantize
from svformer_deploy.export.pipeline import run_pipeline
from svformer_deploy.export.reference import ReferenceModel
from svformer_deploy.export.writers.netx_writer import netx_issue, netx_net, read_netx, simulate_netx, write_netx
from svformer_deploy.export.writers.partition import partition, record_part_io
from writers_fixtures import NETX_QUANT, quantized_chain

REPO = Path(__file__).resolve().parents[1]
LAVA_VENV = Path(os.environ.get("SVFORMER_LAVA_VENV", Path.home() / ".cache" / "svformer-deploy" / "lava-venv"))


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
    net = netx_net(qg, p)
    path = write_netx(net, tmp_path / "part.h5")
    with h5py.File(path) as f:
        assert f["layer/0/type"][()] == b"input" and list(f["layer/0/shape"][()]) == [4, 7, 7]
        assert "neuron" not in f["layer/0"]
        conv = f["layer/1"]
        assert conv["type"][()] == b"conv" and list(conv["shape"][()]) == [6, 4, 7]
        assert conv["weight"].shape == (6, 2, 3, 3) and conv["weight"].dtype.kind == "i"
        assert list(conv["stride"][()]) == [2, 1] and int(conv["groups"][()]) == 2
        n = f["layer/1/neuron"]
        assert n["type"][()] == b"CUBA" and int(n["iDecay"][()]) == 4096
        q = qg.nodes["lif1"]["quant"]
        assert int(n["vDecay"][()]) == int(q["decay"])
        assert int(n["vThMant"][()]) * 64 == int(np.unique(q["theta"])[0])
        assert list(f["layer/2/weight"].shape) == [5, 6, 3, 2] and list(f["layer/2/padding"][()]) == [1, 0]
    back = read_netx(path)
    assert back.in_shape == net.in_shape and len(back.layers) == 2
    for a, b in zip(back.layers, net.layers, strict=True):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
        assert (a.stride, a.padding, a.groups, a.v_decay, a.threshold) == (b.stride, b.padding, b.groups, b.v_decay,
                                                                            b.threshold)
    assert back.meta["nodes"] == ["conv1", "lif1", "conv2", "lif2"]


def test_lava_integer_model_reproduces_the_quantized_graph_spike_for_spike(svformer_parts) -> None:
    qg, part, rec = svformer_parts
    checked = 0
    for p in part.parts:
        if netx_issue(qg, p) is not None:
            continue
        x, outs = record_part_io(qg, p, rec)
        got = simulate_netx(netx_net(qg, p), x)[0]
        for a, b in zip(got, outs, strict=True):
            assert torch.equal(a != 0, b != 0)
        checked += 1
    assert checked >= 5  # LFE and GSA MLP layers of every block
    qg, x = quantized_chain()
    (p,) = partition(qg).parts
    x_in, outs = record_part_io(qg, p, record(qg, x))
    got = simulate_netx(netx_net(qg, p), x_in)[0]
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
def lava_python() -> Path:
    py = LAVA_VENV / "bin" / "python"
    if not py.exists() or not (LAVA_VENV / ".svformer-lava-ok").exists():
        pytest.skip(f"no Lava venv at {LAVA_VENV} (build it with scripts/make_lava_venv.sh or set SVFORMER_LAVA_VENV)")
    return py


def run_lava(py: Path, tmp: Path, cases: list, aligned: bool) -> dict[str, dict]:
    """Run every (name, net, input spikes [T, 1, C, H, W]) case in one Lava process; the outputs by name."""
    args = []
    for name, net, x_in in cases:
        h5 = write_netx(net, tmp / f"{name}.h5")
        np.savez(tmp / f"{name}.in.npz", spikes=x_in[:, 0].numpy().astype(np.int8))
        args += [str(h5), str(tmp / f"{name}.in.npz"), str(tmp / f"{name}.out.npz")]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cmd = [str(py), str(REPO / "export" / "writers" / "lava_run.py"), *(["--aligned"] if aligned else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: dict(np.load(tmp / f"{name}.out.npz")) for name, _, _ in cases}


@pytest.mark.slow
def test_netx_parts_run_in_lava_fixed_point_simulator_with_identical_spikes_and_states(tmp_path: Path,
                                                                                       svformer_parts) -> None:
    py = lava_python()
    cases, expected = [], {}  # (name, net, input spikes); the quantized graph's output spikes per case
    for bias in (True, False):
        qg, x = quantized_chain(bias=bias)
        (p,) = partition(qg).parts
        x_in, outs = record_part_io(qg, p, record(qg, x))
        cases.append((f"chain-bias{bias}", netx_net(qg, p), x_in[:, :1]))
        expected[cases[-1][0]] = outs[-1][:, 0]
    qg, part, rec = svformer_parts
    picked = [p for p in part.parts if netx_issue(qg, p) is None]
    for p in (picked[0], picked[-1]):  # an LFE conv layer and a GSA token layer
        x_in, outs = record_part_io(qg, p, rec)
        cases.append((f"svformer-part{p.index}", netx_net(qg, p), x_in[:, :1]))
        expected[cases[-1][0]] = outs[-1][:, 0]

    # as netx runs it: one step of delay per layer, biases integrated from the first step
    raw = run_lava(py, tmp_path, cases, aligned=False)
    for name, net, x_in in cases:
        spikes, vs, us = simulate_netx(net, x_in, lava_timing=True)
        assert np.array_equal(raw[name]["spikes"], spikes[-1][:, 0].numpy()), name
        for i in range(len(net.layers)):
            assert np.array_equal(raw[name][f"v{i}"], vs[i][:, 0].numpy()), (name, i)
            assert np.array_equal(raw[name][f"u{i}"], us[i][:, 0].numpy()), (name, i)
        assert raw[name]["spikes"].sum() > 0, name

    # aligned (netx's reset schedule clears each layer just before its first input): the graph, L steps late
    aligned = run_lava(py, tmp_path, cases, aligned=True)
    for name, net, x_in in cases:
        L, T = len(net.layers), x_in.shape[0]
        out = aligned[name]
        assert out["spikes"].shape[0] == T + L
        assert np.array_equal(out["spikes"][L:], (expected[name] != 0).numpy()), name
        _, vs, us = simulate_netx(net, x_in)
        for i in range(L):
            assert np.array_equal(out[f"v{i}"][i + 1:i + 1 + T], vs[i][:, 0].numpy()), (name, i)
            assert np.array_equal(out[f"u{i}"][i + 1:i + 1 + T], us[i][:, 0].numpy()), (name, i)
