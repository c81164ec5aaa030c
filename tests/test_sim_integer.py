"""Integer simulator: the fixed-point spec by hand-computed cases; bit-exact with the fake-quantized reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_models import make_input, make_model, single_thread  # noqa: F401
from svformer_deploy.export import ir
from svformer_deploy.export.passes.quantize import QuantConfig
from svformer_deploy.export.pipeline import run_pipeline
from svformer_deploy.export.reference import ReferenceModel
from svformer_deploy.simulators import fixed
from svformer_deploy.simulators.executor import Simulator
from svformer_deploy.svformer.errors import SVFormerError

I64 = torch.int64


def t(*v):
    return torch.tensor(v, dtype=I64)


# ---------------------------------------------------------------------------------------------
# the spec's primitives, by hand
# ---------------------------------------------------------------------------------------------
def test_saturation_is_symmetric():
    assert fixed.sat(t(200, -200, 127, -127, 5), 8).tolist() == [127, -127, 127, -127, 5]
    assert fixed.sat(t(2**40), 16).tolist() == [32767]


def test_rshift_rounds_half_up_and_shifts_left_for_negative_shifts():
    # 5*3/4 = 3.75 -> 4; -13*3/4 = -9.75 -> -10; 2/4 = 0.5 -> 1 (half up); -2/4 = -0.5 -> 0 (half up)
    assert fixed.rshift(t(5, -13, 2, -2), t(3, 3, 1, 1), t(2, 2, 2, 2)).tolist() == [4, -10, 1, 0]
    # per-element shifts, including 0 (plain multiply) and -2 (multiply by 4)
    assert fixed.rshift(t(7, 7, 7), t(3, 3, -3), t(1, 0, -2)).tolist() == [11, 21, -84]


def test_decay_division_truncates_toward_zero():
    # 1001 * 2048 / 4096 = 500.5 -> 500 and -500 (not -501); 4096 * 4095 / 4096 = 4095 exactly
    assert fixed.rtz(t(1001 * 2048, -1001 * 2048, 4096 * 4095, -4095)).tolist() == [500, -500, 4095, 0]


def test_input_codes_round_half_to_even_and_saturate():
    x = torch.tensor([1.25, -1.25, 1.75, 100.0, -100.0, 0.25], dtype=torch.float32)
    # /0.5: 2.5 -> 2, -2.5 -> -2, 3.5 -> 4, 200 -> 127, -200 -> -127, 0.5 -> 0
    assert fixed.quantize_input(x, 0.5, 8).tolist() == [2, -2, 4, 127, -127, 0]


def test_neuron_step_leak_input_shift_strict_threshold_and_reset():
    theta = t(1000)
    # v = rtz(1001 * (4096 - 2048)) + (3 << 6) = 500 + 192 = 692: below theta
    v, s = fixed.neuron_step(t(1001), t(3), 2048, theta)
    assert (v.tolist(), s.tolist()) == ([692], [False])
    # exactly theta does not fire (Lava's strict compare); theta + 1 fires and resets to 0
    v, s = fixed.neuron_step(t(0, 0), t(1000 // 64, 0), 4096, theta)
    assert v.tolist()[0] == 960 and not s[0]
    v, s = fixed.neuron_step(t(1000, 1001), t(0, 0), 1, t(1000))
    # rtz(1000 * 4095) = 999 (999.75 truncated), rtz(1001 * 4095) = 1000: neither exceeds 1000
    assert (v.tolist(), s.tolist()) == ([999, 1000], [False, False])
    v, s = fixed.neuron_step(t(1002), t(0), 1, t(1000))  # rtz(1002 * 4095) = 1001 > 1000
    assert (v.tolist(), s.tolist()) == ([0], [True])


def test_neuron_input_and_membrane_saturate_at_lavas_widths():
    big = t(10**9)
    v, s = fixed.neuron_step(t(0), big, 4096, big)  # x clamps to 2^17 - 1 before the << 6
    assert v.tolist() == [(2**17 - 1) * 64] and not s[0]
    # rtz(8388544 * 4095) = 8386496, + 8388544 = 16775040 -> membrane clamps to 2^23 - 1
    v, _ = fixed.neuron_step(v, big, 1, big)
    assert v.tolist() == [2**23 - 1]
    v, _ = fixed.neuron_step(t(-(2**23 - 1)), -big, 1, big)
    assert v.tolist() == [-(2**23 - 1)]


# ---------------------------------------------------------------------------------------------
# a hand-built quantized graph that drives every clamp
# ---------------------------------------------------------------------------------------------
def hand_graph() -> ir.nx.DiGraph:
    T = 3
    g = ir.new_graph(T)
    ir.add_op(g, "input", ir.Input(shape=(1, 1, 2)), [], quant={"scale": np.float64(0.5), "bits": np.int64(4)})
    w = np.array([2, -3], dtype=np.float32).reshape(2, 1, 1, 1)
    ir.add_op(g, "conv", ir.Conv2d(weight=w, bias=np.array([0.5, 0.0])), ["input"],
              quant={"weight": np.array([2, -3]).reshape(2, 1, 1, 1), "bias": np.array([1, 0]),
                     "m": np.array([3, 30000]), "shift": np.array([2, 0]), "bits": np.int64(20),
                     "acc_bits": np.int64(8)})
    ir.add_op(g, "lif", ir.Neuron(a=0.0), ["conv"],
              quant={"decay": np.int64(1), "theta": np.array([600, 2**23 - 2]).reshape(2, 1, 1)})
    w3 = np.arange(2 * 1 * T * 1 * 2, dtype=np.float32).reshape(2, 1, T, 1, 2) - 5
    ir.add_op(g, "head3d", ir.Conv3dHead(weight=w3, bias=np.array([0.0, 1.0]), groups=2), ["lif"],
              quant={"weight": w3.astype(np.int64), "bias": np.array([0, 7]), "acc_bits": np.int64(8)})
    ir.add_op(g, "flatten", ir.Flatten(), ["head3d"], quant={})
    ir.add_op(g, "fc", ir.Linear(weight=np.array([[1.0, 2.0], [3.0, -1.0]]), bias=np.zeros(2)), ["flatten"],
              quant={"weight": np.array([[1, 2], [3, -1]]), "bias": np.array([0, -2]), "acc_bits": np.int64(10)})
    ir.add_op(g, "output", ir.Output(), ["fc"], quant={"scale": np.array([0.25, 0.5])})
    return ir.validate(g)


def test_hand_built_graph_matches_hand_arithmetic_and_the_reference():
    g = hand_graph()
    x = torch.tensor([[[[1.25, -4.0]]], [[[0.75, 3.0]]], [[[10.0, 0.25]]]], dtype=torch.float32)  # [T, 1, 1, 2]
    r = Simulator(g, "integer").run(x, record_values=True, record_spikes=True)
    v = r.values
    # input codes: /0.5 then half-even, sat_4 (|q| <= 7): [2.5, -8] -> [2, -7]; [1.5, 6] -> [2, 6]; [20, .5] -> [7, 0]
    assert v["input"].reshape(3, 2).tolist() == [[2, -7], [2, 6], [7, 0]]
    # conv channel 0: acc = 2q + 1 -> rshift(acc, 3, 2); channel 1: acc = -3q -> acc * 30000, sat_20 (|y| <= 524287)
    # t0: ch0 acc [5, -13] -> [4, -10]; ch1 acc [-6, 21] -> [-180000, 524287 (630000 saturated)]
    assert v["conv"][0].reshape(2, 2).tolist() == [[4, -10], [-180000, 524287]]
    # neuron channel 1, position 1: x = 524287 clamps to 2^17 - 1, v = 131071 << 6 = 8388544 (< theta)
    # t1: q = 6 -> acc -18 -> -540000: v = rtz(8388544 * 4095) + (-131071 << 6) = 8386496 - 8388544 = -2048
    spikes = r.spikes["lif"].reshape(3, 2, 2)
    assert not spikes[:, 1].any()  # theta 2^23 - 2 is never exceeded
    # channel 0, position 0: x = 4 -> v = 256; t1 (q=2, acc 5 -> 4): rtz(256*4095) + 256 = 255 + 256 = 511;
    # t2 (q=7, acc 15 -> rshift(15, 3, 2) = 11): rtz(511*4095) + 704 = 510 + 704 = 1214 > 600: spike
    assert spikes[:, 0, 0].tolist() == [False, False, True]
    # head: channel 0 (group 0) sums W[0, 0, t, 0, x] over spikes; only (t=2, x=0) spiked, W = 4 - 5 = -1
    w3 = np.arange(12).reshape(2, 1, 3, 1, 2) - 5
    s = spikes.numpy()
    head = [int(sum(w3[o, 0, tt, 0, xx] * s[tt, o, xx] for tt in range(3) for xx in range(2))) + [0, 7][o]
            for o in range(2)]
    assert v["head3d"].reshape(-1).tolist() == head
    fc = [head[0] * 1 + head[1] * 2 + 0, head[0] * 3 - head[1] - 2]
    assert v["fc"].tolist() == fc
    assert r.logits.tolist() == [fc[0] * 0.25, fc[1] * 0.5]
    ref = ReferenceModel(g, mode="fixed")
    with torch.no_grad():
        logits, rec = ref.run(x[:, None], record=True)
    assert np.array_equal(r.logits, logits[0].numpy())
    for name, val in r.values.items():
        want = rec[name][:, 0] if ir.spec(g, name).rate == ir.STEP else rec[name][0]
        assert torch.equal(val.to(torch.float64), want.to(torch.float64)), name


# ---------------------------------------------------------------------------------------------
# real variants: identical to the fake-quantized reference, node by node
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,overrides", [
    ("base", {}), ("3stg", {}), ("base", dict(neuron="lif", init_tau=3.0)), ("base", dict(local_pathway=False)),
    ("st", {}), ("base", dict(time_steps=5, img_size=64, num_classes=7, in_channels=2)),
], ids=["base", "3stg-events", "base-LIF", "base-noLP", "st", "base-2ch-T5"])
def test_integer_simulator_is_bit_exact_with_the_fake_quantized_reference(variant, overrides):
    model = make_model(variant, **overrides)
    calib = make_input(model, batch=4, seed=21)
    if model.cfg.in_channels == 2:  # event counts: non-negative integers
        calib = calib.abs().round()
    res = run_pipeline(model, quant=QuantConfig(), calibration=calib)
    qg = res.graphs["quantized"]
    x = make_input(model, batch=2, seed=22)
    if model.cfg.in_channels == 2:
        x = x.abs().round()
    ref = ReferenceModel(qg, mode="fixed")
    with torch.no_grad():
        logits, rec = ref.run(x, record=True)
    spikes = 0
    for kernel in ("events", "auto"):
        sim = Simulator(qg, "integer", kernel=kernel)
        for b in range(x.shape[1]):
            r = sim.run(x[:, b], record_values=True, record_spikes=True)
            assert np.array_equal(r.logits, logits[b].numpy())
            for name, val in r.values.items():
                want = rec[name][:, b] if ir.spec(qg, name).rate == ir.STEP else rec[name][b]
                assert torch.equal(val.to(torch.float64), want.to(torch.float64)), (kernel, name)
            spikes += sum(int(s.sum()) for s in r.spikes.values())
    assert spikes > 0


def test_integer_executor_needs_a_quantized_graph():
    model = make_model("3stg")
    with pytest.raises(SVFormerError, match="quantized graph"):
        Simulator(run_pipeline(model).graph, "integer")
