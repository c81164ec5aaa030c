"""Batched simulation: B clips in one executor pass give each clip the logits and counts of running it alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_models import make_input, make_model, single_thread  # noqa: F401
from svformer_deploy.export.passes.quantize import QuantConfig
from svformer_deploy.export.pipeline import run_pipeline
from svformer_deploy.simulators.counting import K
from svformer_deploy.simulators.executor import Simulator
from svformer_deploy.svformer.errors import SVFormerError

# input scales of the four clips of a batch: a silent clip (no input MACs, biases drive the spikes), a faint, a
# normal and a loud one: the tiny random models fire 1.4-2.9x more spikes on the loud clip than on the silent one,
# so averaged counts would match none of them
SCALES = (0.0, 0.3, 1.0, 16.0)


def _clips(model, seed: int, events: bool = False) -> torch.Tensor:
    """``[B, T, C, H, W]``: one random clip per scale of :data:`SCALES`."""
    x = make_input(model, batch=len(SCALES), seed=seed)
    if events:
        x = x.abs()
    clips = torch.stack([x[:, b] * s for b, s in enumerate(SCALES)])
    return clips.round() if events else clips


def _spike_total(result) -> int:
    """Spikes emitted by every neuron layer of one clip over all steps."""
    return sum(int(table[K["spikes_out"]].sum()) for table in result.counts.values())


def _assert_batch_equals_single(sim: Simulator, clips: torch.Tensor, exact_logits: bool = True) -> list[int]:
    """Run ``clips`` as one batch and one by one; every clip's counts (and logits) must be identical."""
    batch = sim.run_batch(clips, record_spikes=True)
    assert len(batch) == clips.shape[0]
    spikes = []
    for b, got in enumerate(batch):
        one = sim.run(clips[b], record_spikes=True)
        assert got.counts.keys() == one.counts.keys()
        for name, table in one.counts.items():
            assert got.counts[name].shape == table.shape  # [keys, T]: per layer and per step
            assert np.array_equal(got.counts[name], table), (b, name)
        for name, s in one.spikes.items():
            assert torch.equal(got.spikes[name], s), (b, name)
        if exact_logits:
            assert np.array_equal(got.logits, one.logits), (b, np.abs(got.logits - one.logits).max())
        else:
            np.testing.assert_allclose(got.logits, one.logits, rtol=0, atol=1e-12)
        spikes.append(_spike_total(one))
    return spikes


def _assert_activity_differs(spikes: list[int], batch) -> None:
    """The clips' activity differs a lot, so a batch-averaged count would be wrong for every clip."""
    assert min(spikes) * 1.4 < max(spikes) and len(set(spikes)) == len(spikes), spikes
    macs = [sum(int(t[K["mac"]].sum()) for t in r.counts.values()) for r in batch]
    assert macs[0] < min(macs[1:]), macs  # the silent clip multiplies no pixel
    mean = {n: np.mean([r.counts[n] for r in batch], axis=0) for n in batch[0].counts}
    for r in batch:
        assert any(not np.array_equal(r.counts[n], mean[n]) for n in mean)


@pytest.mark.parametrize("variant", ["base", "3stg", "dp"])
def test_float64_batch_gives_every_clip_its_own_logits_and_counts(variant):
    model = make_model(variant)
    graph = run_pipeline(model).graph
    clips = _clips(model, seed=5)
    for kernel in ("dense", "events", "auto"):
        sim = Simulator(graph, "float", torch.float64, kernel=kernel)
        spikes = _assert_batch_equals_single(sim, clips)
        _assert_activity_differs(spikes, sim.run_batch(clips))
    # a batch of 1 and a batch in another order give the same per-clip results
    sim = Simulator(graph, "float", torch.float64)
    order = [2, 0, 3, 1]
    shuffled = sim.run_batch(clips[order])
    for i, b in enumerate(order):
        assert np.array_equal(shuffled[i].logits, sim.run(clips[b]).logits)


@pytest.mark.parametrize("variant,events", [("base", False), ("3stg", True)], ids=["base", "3stg-events"])
def test_integer_batch_is_bit_exact_with_one_clip_at_a_time(variant, events):
    overrides = dict(in_channels=2) if events else {}
    model = make_model(variant, **overrides)
    calib = make_input(model, batch=4, seed=21)
    if events:
        calib = calib.abs().round()
    qg = run_pipeline(model, quant=QuantConfig(), calibration=calib).graphs["quantized"]
    clips = _clips(model, seed=22, events=events)
    for kernel in ("events", "auto"):
        sim = Simulator(qg, "integer", kernel=kernel)
        spikes = _assert_batch_equals_single(sim, clips)
    _assert_activity_differs(spikes, sim.run_batch(clips))


def test_float32_batch_matches_single_clips():
    model = make_model("base")
    sim = Simulator(run_pipeline(model).graph, "float", torch.float32)
    _assert_batch_equals_single(sim, _clips(model, seed=7))


def test_a_batch_of_the_wrong_shape_is_refused():
    model = make_model("3stg")
    sim = Simulator(run_pipeline(model).graph)
    T, C, S = model.cfg.time_steps, model.cfg.in_channels, model.cfg.img_size
    for bad in (torch.zeros(T, C, S, S), torch.zeros(0, T, C, S, S), torch.zeros(2, T, C, S, S + 1)):
        with pytest.raises(SVFormerError, match=r"\[B, T, C, H, W\]"):
            sim.run_batch(bad)
