"""Float simulator vs the PyTorch model: identical spikes in float64, logits within 1e-5 in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_models import CASES, make_input, make_model, single_thread  # noqa: F401
from spikingjelly.activation_based import neuron as sj_neuron
from svformer_deploy.export import ir
from svformer_deploy.export.pipeline import run_pipeline
from svformer_deploy.export.trace import trace
from svformer_deploy.simulators.executor import Simulator
from svformer_deploy.svformer.errors import SVFormerError


def model_run(model, x: torch.Tensor, dtype: torch.dtype) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Logits ``[B, classes]`` and every neuron layer's spikes ``[T, B, ...]`` of the PyTorch model."""
    m = model.to(dtype)
    spikes: dict[str, torch.Tensor] = {}
    hooks = [mod.register_forward_hook(lambda _m, _i, o, n=n: spikes.__setitem__(n, o.detach().clone()))
             for n, mod in m.named_modules() if isinstance(mod, sj_neuron.BaseNode)]
    try:
        with torch.no_grad():
            logits = m.forward_sequence(x.to(dtype))
    finally:
        for h in hooks:
            h.remove()
        model.to(torch.float32)
    return logits.double().numpy(), spikes


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_float_simulator_reproduces_the_pytorch_model(case):
    _, variant, overrides = case
    model = make_model(variant, **overrides)
    x = make_input(model, batch=2, seed=11)
    graph = run_pipeline(model).graph  # what a bundle holds: BN/TDBN folded
    ref64, spikes64 = model_run(model, x, torch.float64)
    ref32, _ = model_run(model, x, torch.float32)
    total_spikes = total_positions = 0
    for kernel in ("events", "auto"):
        sim64 = Simulator(graph, "float", torch.float64, kernel=kernel)
        sim32 = Simulator(graph, "float", torch.float32, kernel=kernel)
        for b in range(x.shape[1]):
            r64 = sim64.run(x[:, b], record_spikes=True)
            assert set(r64.spikes) == set(spikes64)
            for name, s in r64.spikes.items():
                want = spikes64[name][:, b] != 0
                assert s.shape == want.shape, name
                assert torch.equal(s, want), f"{kernel}: {name} flips {int((s != want).sum())} of {s.numel()}"
                total_spikes += int(s.sum())
                total_positions += s.numel()
            assert np.abs(r64.logits - ref64[b]).max() <= 1e-9
            r32 = sim32.run(x[:, b])
            assert np.abs(r32.logits - ref32[b]).max() <= 1e-5, kernel
    rate = total_spikes / total_positions
    assert 0.05 <= rate <= 0.40, f"mean firing rate {rate:.3f}: the comparison would be too easy"


def test_unfolded_graph_with_batchnorm_nodes_runs_identically():
    model = make_model("base", norm="bn")
    x = make_input(model, batch=1, seed=3)
    traced = trace(model)
    assert any(op.op == "batchnorm" for _, op in ir.iter_ops(traced))
    ref, spikes = model_run(model, x, torch.float64)
    r = Simulator(traced, "float", torch.float64).run(x[:, 0], record_spikes=True)
    assert all(torch.equal(r.spikes[n], spikes[n][:, 0] != 0) for n in spikes)
    assert np.abs(r.logits - ref[0]).max() <= 1e-9
    # folded and unfolded graphs do the same synaptic work; folding removes only the BN arithmetic
    folded = Simulator(run_pipeline(model).graph, "float", torch.float64).run(x[:, 0])
    ac = {n: c[0].sum() for n, c in folded.counts.items()}
    assert all(r.counts[n][0].sum() == ac[n] for n in ac)


def test_neuron_state_is_carried_across_steps_and_reset_between_clips():
    model = make_model("3stg")
    graph = run_pipeline(model).graph
    x = make_input(model, batch=1, seed=5)[:, 0]
    sim = Simulator(graph, "float", torch.float64)
    a, b = sim.run(x), sim.run(x)
    assert np.array_equal(a.logits, b.logits)
    assert all(np.array_equal(a.counts[n], b.counts[n]) for n in a.counts)
    # the same frames in another order change the spikes of later steps (state carries over)
    c = sim.run(x.flip(0))
    assert not np.array_equal(a.logits, c.logits)


def test_simulator_refuses_frames_of_the_wrong_shape():
    model = make_model("3stg")
    sim = Simulator(run_pipeline(model).graph)
    with pytest.raises(SVFormerError, match="do not fit the graph"):
        sim.run(torch.zeros(sim.time_steps, 3, 16, 16))
