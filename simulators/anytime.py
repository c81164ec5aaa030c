"""Anytime inference: the early-exit rule and what a clip costs when it stops after step e.

:meth:`simulators.executor.Simulator.run` with ``anytime=True`` gives the logits after every step
(the head applied to what it accumulated so far, the unseen steps completed by the mean of the seen
ones; see :meth:`Simulator.anytime_logits`) and the cost of each of those read-outs.

Early exit (``m``, ``k``): the **margin** after step t is p1 - p2, the gap between the two largest
softmax probabilities of the anytime logits (0..1, independent of the logits' scale). The clip exits
at the first step t whose margin, and the margins of the k-1 steps before it, are all >= m; if no
step qualifies it runs to the last step. Its prediction is the top-1 class of the logits at the exit.

Energy of an early exit (:func:`truncated_record`): the run record of the clip as if it had stopped
after step e: every step-rate layer's per-step counts of steps 0..e (its dense MACs scaled to e+1
steps, firing rates over e+1 steps), the head's accumulation of steps 0..e, plus one layer
``anytime_readout`` holding the read-outs made at steps 0..e (one per step, to test the rule: the
completion MACs, the head bias and the clip-rate tail); the clip-rate layers of the full run are
left at zero, since their one read-out at T-1 never happens. Exiting at the last step keeps the full
record and adds the read-outs of steps 0..T-2. The three energy methods of :mod:`deploy.energy`
price that record like any other.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from svformer_deploy.export import ir
from svformer_deploy.svformer.errors import SVFormerError

from .executor import SimResult, Simulator
from .record import COUNT_KEYS, assemble_record, layer_record, top_k

READOUT_LAYER = "anytime_readout"


def parse_early_exit(text: str) -> tuple[float, int]:
    """``"m"`` or ``"m,k"`` -> (margin in 0..1, k >= 1 steps; default 1); one error for bad text."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        if len(parts) not in (1, 2):
            raise ValueError
        m = float(parts[0])
        k = int(parts[1]) if len(parts) == 2 else 1
    except ValueError:
        raise SVFormerError(f"--early-exit {text!r}: expected M[,K], a margin M in 0..1 and K >= 1 steps, "
                            "e.g. 0.5,2") from None
    if not 0 <= m <= 1 or k < 1:
        raise SVFormerError(f"--early-exit {text!r}: the margin must be in 0..1 and K >= 1, got {m:g}, {k}")
    return m, k


def margins(step_logits: np.ndarray) -> np.ndarray:
    """Per step: p1 - p2 of softmax(logits) (float64 [T]; 1.0 for a single class)."""
    z = np.asarray(step_logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    if p.shape[1] < 2:
        return np.ones(p.shape[0])
    top2 = -np.sort(-p, axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1]


def exit_step(step_logits: np.ndarray, margin: float, k: int = 1) -> int:
    """The step (0-based) at which the rule (``margin``, ``k``) stops the clip; T-1 if it never does."""
    ok = margins(step_logits) >= margin
    run = 0
    for t, good in enumerate(ok):
        run = run + 1 if good else 0
        if run >= k:
            return t
    return len(ok) - 1


def truncated_record(sim: Simulator, result: SimResult, steps: int, *, model: Mapping[str, Any],
                     input: Mapping[str, Any], class_names: Sequence[str] = (),
                     full_record: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run record of the clip of ``result`` stopped after ``steps`` steps (1..T), read-outs included.

    ``result`` must come from ``sim.run(..., anytime=True)``; ``full_record`` (:func:`record.build_record`
    of it) gives the model/input sections; see the module docstring for what is counted.
    """
    T = sim.time_steps
    if result.readout_counts is None or result.step_logits is None:
        raise SVFormerError("an early-exit record needs a simulation run with anytime=True")
    if not 1 <= steps <= T:
        raise SVFormerError(f"exit after {steps} steps: must be 1..{T}")
    e = steps - 1
    layers = []
    dense_per_readout = 0
    for info in sim.layers:
        table = result.counts[info.name]
        spec = sim.specs[info.name]
        if steps == T:
            kept, dense = table, info.dense_macs
        elif spec.rate == ir.STEP:
            kept, dense = table[:, :steps], info.dense_macs * steps // T
        elif info.name in sim.heads:  # accumulation of steps 0..e (its bias add is part of each read-out)
            kept, dense = table[:, :steps], info.dense_macs * steps // T
        else:  # clip-rate tail: runs inside the read-outs instead
            kept, dense = np.zeros((len(COUNT_KEYS), steps), dtype=np.int64), info.dense_macs
        if spec.rate == ir.CLIP:
            dense_per_readout += info.dense_macs // T if info.name in sim.heads else info.dense_macs
        layers.append(layer_record(
            name=info.name, stage=info.stage, op=info.op, origin=info.origin, input_kind=info.input_kind,
            input_neurons=info.input_neurons, dense_macs=dense, params=info.params,
            per_step={k: kept[i].tolist() for i, k in enumerate(COUNT_KEYS)}, time_steps=steps,
            neurons=info.neurons, tau=info.tau, v_threshold=info.v_threshold, word_bits=info.word_bits))
    readouts = result.readout_counts[:, :steps]
    n_readouts = min(steps, T - 1)
    head = next(info for info in sim.layers if info.name in sim.heads)
    layers.append(layer_record(
        name=READOUT_LAYER, stage=head.stage, op="readout", origin=[READOUT_LAYER], input_kind="real",
        input_neurons=[], dense_macs=dense_per_readout * n_readouts, params=0,
        per_step={k: readouts[i].tolist() for i, k in enumerate(COUNT_KEYS)}, time_steps=steps,
        word_bits=head.word_bits))
    base = full_record or {}
    model_doc = copy.deepcopy(dict(base.get("model") or model))
    if isinstance(model_doc.get("config"), dict):
        model_doc["config"]["time_steps"] = steps
    logits = result.step_logits[e]
    return assemble_record(
        layers, time_steps=steps, model=model_doc, input=dict(base.get("input") or input), executor=sim.mode,
        prediction={"logits": [float(v) for v in logits], "top5": top_k(logits, class_names)},
        timing={"wall_s": float(sum(result.step_seconds[:steps])), "per_step_s": list(result.step_seconds[:steps])},
        created=base.get("created"), tool=base.get("tool"),
        early_exit={"steps": steps, "of": T, "readouts": n_readouts})


def exit_energies_pj(sim: Simulator, result: SimResult, full_record: Mapping[str, Any], cost: Any,
                     class_names: Sequence[str] = ()) -> dict[str, list[float]]:
    """Energy (pJ) of the clip stopped after 1..T steps, by every method: ``{method: [T values]}``."""
    from pathlib import Path

    from svformer_deploy.deploy.energy.methods import METHODS, evaluate_record
    from svformer_deploy.simulators.record import RunRecord

    out: dict[str, list[float]] = {m: [] for m in METHODS}
    for steps in range(1, sim.time_steps + 1):
        data = truncated_record(sim, result, steps, model=full_record["model"], input=full_record["input"],
                                class_names=class_names, full_record=full_record)
        # built here from the simulator's counts (tests hold these records to validate_record); not re-validated
        energy = evaluate_record(RunRecord(path=Path(f"exit-after-{steps}"), data=data), cost)
        for m in METHODS:
            out[m].append(float(energy.totals_pj[m]))
    return out


__all__ = ["READOUT_LAYER", "exit_energies_pj", "exit_step", "margins", "parse_early_exit", "truncated_record"]
