"""QAT: the fake-quantized training forward is the integer spec, bit for bit, before and after fine-tuning.

Before training, every code QAT computes from float parameters equals the quantize pass's. After a short
fine-tuning that moves codes, the graph QAT writes back runs in the integer executor (``simulators``,
int64 arithmetic of its own), in the fixed-point step ONNX graph (onnxruntime) and, for netx parts, in
Lava's integer model and stock Lava with every spike and every logit of the QAT model's own forward.
A QAT view with one rounding changed (floor -> round) is shown to break that parity, so the tests can fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from fixtures_models import CASES, make_input, make_model, single_thread  # noqa: F401
from svformer_deploy.export import ir
from svformer_deploy.export.fidelity import compare_chain
from svformer_deploy.export.passes.quantize import (
    QuantConfig,
    bias_nodes,
    calibrate,
    correct_biases,
    quantize,
    search_calibration,
)
from svformer_deploy.export.pipeline import run_pipeline
from svformer_deploy.export.qat import QATModel, finetune, ste_round
from svformer_deploy.export.reference import ReferenceModel
from svformer_deploy.export.writers.netx_writer import (
    default_lava_venv,
    lava_compare,
    lava_python,
    netx_issue,
    netx_net,
    write_netx,
)
from svformer_deploy.export.writers.onnx_step import (
    FRAME_NAME,
    OUTPUT_NAME,
    SPIKE_PREFIX,
    STEP_NAME,
    step_module,
    write_onnx_step,
    zero_states,
)
from svformer_deploy.export.writers.partition import partition, record_part_io
from svformer_deploy.simulators.executor import Simulator
from svformer_deploy.svformer import demo_config
from svformer_deploy.svformer.data.synthetic import render_clip, synthetic_classes
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.variants import create_model
from writers_fixtures import NETX_QUANT, netx_parts_match_lava_model


def _frames(model, batch: int, seed: int) -> torch.Tensor:
    x = make_input(model, batch=batch, seed=seed)
    return x.abs().round() if model.cfg.in_channels == 2 else x  # event counts: non-negative integers


DEFAULT = QuantConfig()


def quantized(model, config: QuantConfig = DEFAULT):
    return run_pipeline(model, quant=config, calibration=_frames(model, 4, 21)).graphs["quantized"]


def tuned(model, config: QuantConfig = DEFAULT, steps: int = 3, lr: float = 0.02) -> tuple[QATModel, object]:
    """A QAT model fine-tuned for a few steps on random clips and labels (large lr: codes move)."""
    qg = quantized(model, config)
    qat = QATModel(qg)
    x = _frames(model, 4, 5)
    y = torch.arange(4) % model.cfg.num_classes
    finetune(qat, lambda epoch: [(x, y)], epochs=steps, lr=lr)
    return qat, qg


def own_forward(qat: QATModel, x: torch.Tensor):
    with torch.no_grad():
        return qat.run(x, record=set(ir.neuron_names(qat.graph)) | {qat.out_name})


def g_out(g) -> str:
    return ir.output_node(g)


def moved_codes(g_new, g_old) -> int:
    return sum(int(np.sum(g_new.nodes[n]["quant"]["weight"] != g_old.nodes[n]["quant"]["weight"]))
               for n, _ in ir.iter_ops(g_old, ir.WEIGHTED))


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor-lava"])
@pytest.mark.parametrize("case,variant,overrides", CASES, ids=[c[0] for c in CASES])
def test_codes_and_forward_at_initialisation_are_the_quantize_pass(case, variant, overrides, per_channel) -> None:
    model = make_model(variant, **overrides)
    qg = quantized(model, QuantConfig(per_channel=per_channel, lava_thresholds=not per_channel))
    qat = QATModel(qg)
    with torch.no_grad():
        codes = qat.codes()
    assert {f for _, f in codes} >= {"weight", "bias"} | ({"decay", "theta"} if model.cfg.neuron == "plif" else set())
    for (n, field), t in codes.items():
        want = np.asarray(qg.nodes[n]["quant"][field], dtype=np.float64)
        assert np.array_equal(t.numpy().reshape(want.shape), want), (n, field)
    x = _frames(model, 2, 22)
    logits, rec = own_forward(qat, x)
    want_logits, want_rec = ReferenceModel(qg, mode="fixed").run(x, record=set(rec))
    assert torch.equal(logits, want_logits)
    assert all(torch.equal(rec[n], want_rec[n]) for n in rec)
    g = qat.to_graph()
    for n in g.nodes:
        for field, arr in qg.nodes[n]["quant"].items():
            assert np.array_equal(np.asarray(g.nodes[n]["quant"][field]), np.asarray(arr)), (n, field)


def _onnx_step_run(path: Path, graph, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and per-neuron spikes [T, B, ...] of the fixed step graph in onnxruntime, state carried."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    specs = step_module(graph, "fixed").states
    states = {k: v.numpy() for k, v in zero_states(specs, x.shape[1]).items()}
    names = [o.name for o in sess.get_outputs()]
    spikes: dict[str, list[torch.Tensor]] = {}
    for t in range(x.shape[0]):
        outs = dict(zip(names, sess.run(None, {FRAME_NAME: x[t].float().numpy(), STEP_NAME: np.array(t),
                                               **states}), strict=True))
        states = {s.name: outs[s.output] for s in specs}
        for k, v in outs.items():
            if k.startswith(SPIKE_PREFIX):
                spikes.setdefault(k[len(SPIKE_PREFIX):], []).append(torch.from_numpy(v))
    return torch.from_numpy(outs[OUTPUT_NAME]), {k: torch.stack(v) for k, v in spikes.items()}


@pytest.mark.parametrize("case,variant,overrides", CASES, ids=[c[0] for c in CASES])
def test_after_finetuning_the_integer_executor_and_onnx_reproduce_the_qat_model(case, variant, overrides,
                                                                                  tmp_path: Path) -> None:
    model = make_model(variant, **overrides)
    qat, qg0 = tuned(model)
    g = qat.to_graph()
    assert moved_codes(g, qg0) > 0  # fine-tuning changed integer weights
    x = _frames(model, 3, 23)
    logits, rec = own_forward(qat, x)
    neurons = ir.neuron_names(g)
    assert sum(int(rec[n].sum()) for n in neurons) > 0
    # the integer executor: int64 arithmetic of its own (simulators/fixed.py), clip by clip
    for b, r in enumerate(Simulator(g, "integer").run_batch(x.transpose(0, 1), record_spikes=True)):
        assert np.array_equal(r.logits, logits[b].numpy()), case
        for n in neurons:
            assert torch.equal(torch.as_tensor(r.spikes[n]).to(torch.float64).reshape(rec[n][:, b].shape),
                               rec[n][:, b]), (case, n)
    # the fixed-point step graph in onnxruntime
    path = write_onnx_step(g, tmp_path / "model_step.onnx", "fixed")
    o_logits, o_spikes = _onnx_step_run(path, g, x)
    # the logits are the same integer codes times the output scale: equal codes, products within float rounding
    scale = torch.as_tensor(np.asarray(g.nodes[g_out(g)]["quant"]["scale"], dtype=np.float64))
    assert torch.equal(torch.round(o_logits.to(torch.float64) / scale), torch.round(logits / scale)), case
    assert torch.allclose(o_logits.to(torch.float64), logits, rtol=1e-12, atol=0), (o_logits - logits).abs().max()
    for n in neurons:
        assert torch.equal(o_spikes[n].to(torch.float64).reshape(rec[n].shape), rec[n]), (case, n)


class OneRoundingOff(QATModel):
    """A QAT view whose rounding right shifts round to nearest instead of flooring: one rounding off the spec."""

    floor = staticmethod(ste_round)


def test_parity_breaks_when_one_rounding_differs_from_the_spec() -> None:
    model = make_model("base")
    qg = quantized(model)
    x = _frames(model, 3, 23)
    bad = OneRoundingOff(qg)
    logits, rec = own_forward(bad, x)
    diffs = 0
    for b, r in enumerate(Simulator(qg, "integer").run_batch(x.transpose(0, 1), record_spikes=True)):
        diffs += int(not np.array_equal(r.logits, logits[b].numpy()))
        diffs += sum(int((torch.as_tensor(r.spikes[n]).to(torch.float64).reshape(rec[n][:, b].shape)
                          != rec[n][:, b]).sum()) for n in ir.neuron_names(qg))
    assert diffs > 0


def test_gradients_reach_weights_biases_affines_and_leaks() -> None:
    model = make_model("base")
    qat = QATModel(quantized(model))
    x = _frames(model, 2, 5)
    torch.nn.functional.cross_entropy(qat(x), torch.tensor([0, 1])).backward()
    grads = {k: float(p.grad.abs().sum()) if p.grad is not None else 0.0 for k, p in qat.params.items()}
    for suffix in ("_weight", "_bias", "_scale", "_a"):
        assert any(v > 0 for k, v in grads.items() if k.endswith(suffix)), suffix


def test_finetune_reports_every_epoch_and_the_written_graph_scores_what_qat_scored() -> None:
    model = make_model("3stg")
    qat = QATModel(quantized(model))
    x = _frames(model, 8, 5)
    y = torch.arange(8) % model.cfg.num_classes
    seen = []
    res = finetune(qat, lambda epoch: [(x[:, :4], y[:4]), (x[:, 4:], y[4:])], epochs=3, lr=1e-3, on_epoch=seen.append)
    assert [h["epoch"] for h in res.history] == [1, 2, 3] and seen == res.history
    assert all(np.isfinite(h["loss"]) and 0 <= h["train_acc"] <= 1 for h in res.history)
    with torch.no_grad():  # the written graph, in the integer executor, scores what QAT scored
        g = qat.to_graph()
        runs = Simulator(g, "integer").run_batch(x.transpose(0, 1))
        sim_logits = torch.stack([torch.as_tensor(r.logits) for r in runs])
        assert torch.equal(sim_logits, qat(x))


# ---------------------------------------------------------------------------------------------
# netx parts: Lava's integer model (in process) and stock Lava run the QAT model's own spikes
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def netx_tuned():
    """A plain-BN model (netx parts exist) fine-tuned with per-tensor scales and Lava thresholds, its written
    graph, and the QAT model's own recorded node outputs on two clips."""
    model = make_model("base", norm="bn")
    qat, qg0 = tuned(model, NETX_QUANT)
    g = qat.to_graph()
    assert moved_codes(g, qg0) > 0
    x = _frames(model, 2, 31)
    with torch.no_grad():
        _, rec = qat.run(x, record=True)
    return g, partition(g), rec


def test_netx_parts_of_the_qat_graph_reproduce_its_spikes_in_lavas_integer_model(netx_tuned) -> None:
    g, part, rec = netx_tuned
    assert netx_parts_match_lava_model(g, part, rec) >= 5


@pytest.mark.slow
def test_netx_parts_of_the_qat_graph_run_in_stock_lava_spike_for_spike(netx_tuned, tmp_path: Path) -> None:
    py = lava_python()
    if py is None:
        pytest.skip(f"no Lava venv at {default_lava_venv()} (build it with make lava-venv or set SVFORMER_LAVA_VENV)")
    g, part, rec = netx_tuned
    picked = [p for p in part.parts if netx_issue(g, p) is None]
    cases, expected = [], []
    for p in (picked[0], picked[-1]):  # an LFE conv layer and a GSA token layer
        x_in, outs = record_part_io(g, p, rec)
        h5 = write_netx(netx_net(g, p), tmp_path / f"qat-part{p.index}.h5")
        for b in range(x_in.shape[1]):
            cases.append((h5, x_in[:, b].numpy()))
            expected.append(outs[-1][:, b])
    results = lava_compare(cases, tmp_path, python=py, states=True)
    for r, want in zip(results, expected, strict=True):
        assert r.spike_mismatches == 0 and r.early_spikes == 0 and r.state_mismatches == 0 and r.exact, r
        assert np.array_equal(r.output[r.layers:], (want != 0).numpy()), r.path
    assert sum(r.output_spikes for r in results) > 0


# ---------------------------------------------------------------------------------------------
# the demo's model (svformer/demo_config.py) on synthetic motion clips
# ---------------------------------------------------------------------------------------------
def demo_clips(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` synthetic clips of the demo's classes at the demo model's input ([T, B, 3, 32, 32], normalised)."""
    rng = np.random.default_rng(seed)
    names = synthetic_classes(demo_config.DATA["num_classes"])
    t = demo_config.MODEL["time_steps"]
    clips, labels = [], []
    for i in range(n):
        frames = render_clip(names[i % len(names)], rng, size=64, frames=t)  # uint8 [T, 64, 64, 3]
        x = torch.from_numpy(frames).float().permute(0, 3, 1, 2) / 255.0
        clips.append(torch.nn.functional.avg_pool2d(x, 2))
        labels.append(i % len(names))
    x = torch.stack(clips, dim=1)
    return (x - x.mean()) / x.std(), torch.tensor(labels)


@pytest.mark.slow
def test_demo_model_after_a_short_finetune_runs_spike_for_spike_in_the_integer_executor_and_onnx(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model(demo_config.ARCH, num_classes=demo_config.DATA["num_classes"], in_channels=3,
                         **demo_config.MODEL).eval()
    cal, _ = demo_clips(4, 1)
    qg0 = run_pipeline(model, quant=DEFAULT, calibration=cal).graphs["quantized"]
    qat = QATModel(qg0)
    x, y = demo_clips(8, 2)
    finetune(qat, lambda epoch: [(x[:, :4], y[:4]), (x[:, 4:], y[4:])], epochs=2, lr=5e-3)
    g = qat.to_graph()
    assert moved_codes(g, qg0) > 0
    held, _ = demo_clips(3, 3)
    logits, rec = own_forward(qat, held)
    neurons = ir.neuron_names(g)
    assert sum(int(rec[n].sum()) for n in neurons) > 0
    for b, r in enumerate(Simulator(g, "integer").run_batch(held.transpose(0, 1), record_spikes=True)):
        assert np.array_equal(r.logits, logits[b].numpy())
        for n in neurons:
            assert torch.equal(torch.as_tensor(r.spikes[n]).to(torch.float64).reshape(rec[n][:, b].shape),
                               rec[n][:, b]), n
    o_logits, o_spikes = _onnx_step_run(write_onnx_step(g, tmp_path / "model_step.onnx", "fixed"), g, held)
    scale = torch.as_tensor(np.asarray(g.nodes[g_out(g)]["quant"]["scale"], dtype=np.float64))
    assert torch.equal(torch.round(o_logits.to(torch.float64) / scale), torch.round(logits / scale))
    for n in neurons:
        assert torch.equal(o_spikes[n].to(torch.float64).reshape(rec[n].shape), rec[n]), n


# ---------------------------------------------------------------------------------------------
# improved post-training calibration: the per-layer weight-range search
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["tdbn", "bn"])
def test_calibration_search_never_diverges_more_than_plain_calibration_and_runs_exactly_in_the_integer_executor(
        norm: str) -> None:
    model = make_model("3stg", norm=norm)
    g = run_pipeline(model).graph
    cal = _frames(model, 4, 21)
    cfg = QuantConfig(weight_bits=4, per_channel=norm == "tdbn", lava_thresholds=norm == "bn")
    r = search_calibration(g, cal, cfg, factors=(1.0, 0.7, 0.5))
    plain = quantize(g, cal, cfg)
    n_weighted, corrigible = len(list(ir.iter_ops(g, ir.WEIGHTED))), bias_nodes(g)
    assert corrigible and 1 + 2 * n_weighted < r.evaluations <= 1 + 2 * n_weighted + len(corrigible)
    # every step is kept only when it lowers the objective: never worse than the plain calibration
    assert r.after["flip_rate"] <= r.steps[0]["flip_rate"] <= r.before["flip_rate"]
    assert r.before["spikes_ref"] == r.after["spikes_ref"] > 0
    assert r.bias_shift, "bias correction lowered the divergence on no layer of this model"
    assert r.after["flip_rate"] < r.steps[0]["flip_rate"]
    # "before" is the plain calibration, measured the same way
    (fid,), _ = compare_chain([(g, "float"), (plain, "fixed")], cal, torch.float64, ["plain"], 8)
    assert r.before["flips"] == fid.flips and r.before["top1_agreement"] == fid.top1_agreement
    # "after" is the returned graph, measured the same way
    (fid,), _ = compare_chain([(g, "float"), (r.graph, "fixed")], cal, torch.float64, ["searched"], 8)
    assert r.after["flips"] == fid.flips and r.after["top1_agreement"] == fid.top1_agreement
    # an ordinary quantized graph: the quantize pass of the corrected float graph with the chosen ranges (scales
    # from the calibration of the float graph)
    assert r.graph.graph["quant"].get("weight_clip", {}) == r.weight_clip
    assert r.graph.graph["quant"]["bias_corrected"] == list(r.bias_shift)
    again = quantize(correct_biases(g, r.bias_shift), calibrate(g, cal), cfg, weight_clip=r.weight_clip)
    for n in g.nodes:
        for field, arr in again.nodes[n]["quant"].items():
            assert np.array_equal(np.asarray(r.graph.nodes[n]["quant"][field]), np.asarray(arr)), (n, field)
    # ... that the integer executor (int64 arithmetic of its own) runs spike for spike and logit for logit
    x = _frames(model, 3, 23)
    with torch.no_grad():
        logits, rec = ReferenceModel(r.graph, mode="fixed").run(x, record=set(ir.neuron_names(r.graph)))
    for b, res in enumerate(Simulator(r.graph, "integer").run_batch(x.transpose(0, 1), record_spikes=True)):
        assert np.array_equal(res.logits, logits[b].numpy())
        for n in ir.neuron_names(r.graph):
            assert torch.equal(torch.as_tensor(res.spikes[n]).to(torch.float64).reshape(rec[n][:, b].shape),
                               rec[n][:, b]), n
    some = next(n for n, _ in ir.iter_ops(g, ir.WEIGHTED))
    clipped = quantize(g, cal, cfg, weight_clip={some: 0.5})
    ws, ws0 = clipped.nodes[some]["quant"]["weight_scale"], plain.nodes[some]["quant"]["weight_scale"]
    assert np.allclose(ws, ws0 * 0.5)
    with pytest.raises(SVFormerError, match="factor in"):
        quantize(g, cal, cfg, weight_clip={some: 1.5})
    with pytest.raises(SVFormerError, match="weighted node"):
        quantize(g, cal, cfg, weight_clip={ir.input_node(g): 0.5})
    with pytest.raises(SVFormerError, match="correctable bias"):
        correct_biases(g, {ir.input_node(g): np.zeros(1)})
    with pytest.raises(SVFormerError, match="has shape"):
        correct_biases(g, {corrigible[0]: np.zeros(1)})
