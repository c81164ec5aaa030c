"""Simulate a video or event file with an export bundle: the library behind ``svformer-deploy simulate``.

:func:`simulate_file` opens the bundle (``--model DIR``, or the newest ``*.svfd`` in the current
folder), prepares the input exactly as the bundle's ``preprocessing`` says (one
:class:`svformer.data.datasets.InputSpec`: video: T frames over a window of T·frame_stride frames,
short side resized, crops, mean/std; video-events: luma changes of T + 1 such frames; events: T
slices of 2 polarity count frames), runs every view through :class:`simulators.executor.Simulator` (float or
integer executor), sums the views' logits (the authors' multi-view test) and writes one run
record per view. All user-fixable problems raise :class:`SVFormerError` naming the file; no
record is written unless every view succeeded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch
from svformer_deploy.export import ir
from svformer_deploy.export.bundle import Bundle, find_latest_bundle, load_bundle
from svformer_deploy.svformer.data.datasets import InputSpec
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.fileio import sha256_file

from . import DEFAULT_BATCH
from .executor import SimResult, Simulator
from .record import COUNT_KEYS, DEFAULT_RUNS_DIR, build_record, firing_rate, top_k, write_records

EXECUTORS = ("float", "integer")


@dataclass
class PreparedInput:
    """Model input views ``[V, T, C, S, S]`` (float32) and where they come from."""

    kind: str  # the file given: "video" | "events" (details["encoding"] says how it was encoded)
    path: Path
    tensor: torch.Tensor
    frame_indices: list[list[int] | None]
    views: tuple[int, int]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class SimulationReport:
    """Everything ``simulate`` reports: the summed prediction, per-view results and records."""

    bundle: Bundle
    executor: str
    input: PreparedInput
    simulator: Simulator
    results: list[SimResult]
    records: list[dict[str, Any]]
    record_paths: list[Path]
    class_names: list[str]
    wall_s: float
    early_exit: dict[str, Any] | None = None

    @property
    def logits(self) -> np.ndarray:
        """Logits summed over the views (float64 [classes])."""
        return np.sum([r.logits for r in self.results], axis=0)

    def top5(self) -> list[list[Any]]:
        return top_k(self.logits, self.class_names)

    def layer_summary(self) -> list[dict[str, Any]]:
        """Per work node: counts summed over the views; ``firing_rate`` = spikes / (neurons x T x views)."""
        T, V = self.simulator.time_steps, len(self.results)
        rows = []
        for info in self.simulator.layers:
            table = np.sum([r.counts[info.name] for r in self.results], axis=0)
            counts = {k: int(table[i].sum()) for i, k in enumerate(COUNT_KEYS)}
            rows.append({
                "name": info.name, "stage": info.stage, "op": info.op,
                "firing_rate": firing_rate(counts["spikes_out"], info.neurons, T * V) if info.op == "neuron" else None,
                **counts,
            })
        return rows

    def to_dict(self) -> dict[str, Any]:
        """The ``simulate --json`` document (docs/cli.md, plus details)."""
        layers = self.layer_summary()
        totals = {k: sum(row[k] for row in layers) for k in COUNT_KEYS}
        inp = self.input
        return {
            "video": str(inp.path) if inp.kind == "video" else None,
            "events": str(inp.path) if inp.kind == "events" else None,
            "input_kind": inp.kind,
            "input_encoding": inp.details.get("encoding"),
            "model": str(self.bundle.path),
            "model_hash": self.bundle.model_hash,
            "executor": self.executor,
            "time_steps": self.simulator.time_steps,
            "input_shape": list(self.simulator.input_shape),
            "views": len(self.results),
            "views_spec": list(inp.views),
            "frame_indices": inp.frame_indices,
            "top5": self.top5(),
            "logits": [float(v) for v in self.logits],
            "record": str(self.record_paths[0]),
            "records": [str(p) for p in self.record_paths],
            "layers": layers,
            "totals": totals,
            "timing": {"wall_s": self.wall_s, "simulate_s": sum(r.wall_s for r in self.results)},
            **({"early_exit": self.early_exit} if self.early_exit is not None else {}),
        }


# --------------------------------------------------------------------------------------------
def open_bundle(model: str | Path | Bundle | None, cwd: str | Path = ".") -> Bundle:
    """``model`` (a folder, or a bundle already loaded) or the most recent bundle in ``cwd`` (the contract's
    default)."""
    if isinstance(model, Bundle):
        return model
    return load_bundle(model if model is not None else find_latest_bundle(cwd))


def bundle_input_spec(bundle: Bundle) -> InputSpec:
    """The bundle's :class:`InputSpec`: its manifest ``preprocessing`` (the config's default when absent),
    checked against its config."""
    from svformer_deploy.svformer.config import SVFormerConfig

    try:
        config = SVFormerConfig.from_dict(bundle.manifest["config"])
    except (SVFormerError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise SVFormerError(f"{bundle.path}: the manifest has an unusable config ({e})") from None
    return InputSpec.from_preprocessing(bundle.manifest.get("preprocessing") or None, config, where=str(bundle.path))


def prepare_input(spec: InputSpec, video: str | Path | None, events: str | Path | None,
                  views: tuple[int, int], bundle_path: Path) -> PreparedInput:
    """Decode/frame the input as the bundle's input spec says; refuse a mismatching kind."""
    if (video is None) == (events is None):
        raise SVFormerError("give exactly one input: --video FILE or --events FILE")
    path = Path(video if video is not None else events)
    given = "video" if video is not None else "events"
    if given != spec.file_kind:
        if spec.file_kind == "events":
            raise SVFormerError(f"{path}: the model {bundle_path.name} takes event recordings ({spec.channels} "
                                "polarity channels), not video; use --events FILE")
        raise SVFormerError(f"{path}: the model {bundle_path.name} takes {spec.kind} input ({spec.channels} channels "
                            f"from a video file), not event recordings; use --video FILE")
    tensor, indices, details = spec.load_views(path, *views)
    return PreparedInput(given, path, tensor, indices, views, {"encoding": spec.kind, **details})


@dataclass
class SimSetup:
    """An opened bundle ready to simulate: its graph's :class:`Simulator`, input spec and class names."""

    bundle: Bundle
    executor: str
    simulator: Simulator
    spec: InputSpec
    class_names: list[str]


def executor_graph(bundle: Bundle, executor: str) -> nx.DiGraph:
    """The graph of ``bundle`` that ``executor`` runs, read and verified (cached by the bundle): ``ir`` for
    ``"float"``, ``ir_quantized`` for ``"integer"``; one error for an unknown executor or an integer run of a
    bundle exported without quantization."""
    if executor not in EXECUTORS:
        raise SVFormerError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    if executor == "integer" and not bundle.has("ir_quantized"):
        raise SVFormerError(f"{bundle.path}: exported without quantization (no ir_quantized graph), so the integer "
                            "executor has nothing to run; re-export with quantization or run without --integer")
    return bundle.graph("ir_quantized" if executor == "integer" else "ir")


def open_simulation(model: str | Path | Bundle | None = None, executor: str = "float", kernel: str = "auto",
                    cwd: str | Path = ".") -> SimSetup:
    """Open the bundle (``model``: a folder or a loaded :class:`Bundle`; or the newest in ``cwd``) and build
    the executor of its graph.

    ``executor``: ``"float"`` (the bundle's ``ir`` graph, float32) or ``"integer"`` (its
    ``ir_quantized`` graph, the fixed-point spec). Raises ``SVFormerError`` for an unusable bundle.
    """
    if executor not in EXECUTORS:
        raise SVFormerError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    bundle = open_bundle(model, cwd)
    sim = Simulator(executor_graph(bundle, executor), mode=executor, kernel=kernel)
    spec = bundle_input_spec(bundle)
    spec.check_shape(sim.input_shape[1:], sim.time_steps, where=str(bundle.path))
    class_names = bundle.class_names
    n_classes = sim.specs[sim.out_name].shape[0]
    if class_names and len(class_names) != n_classes:
        raise SVFormerError(f"{bundle.path}: the manifest names {len(class_names)} classes, the graph has {n_classes}")
    return SimSetup(bundle, executor, sim, spec, class_names)


# ``"auto"`` batches models up to this many dense MACs per clip; measured (benchmarks/bench_batch.py, 1 thread):
# 16 views per pass are 3-15x faster for the demo model (0.02 GMAC/clip), 1.6x for the 3-stage DVS model at
# 128x128, T=16 (3.4 GMAC), 0.97x for SVFormer-base at 224x224, T=16 (38 GMAC, and 2.3 GB peak RSS at B=16)
AUTO_BATCH_MAX_GMAC = 10.0
AUTO_BATCH = 16


def auto_batch(graph: nx.DiGraph) -> int:
    """Views per pass for ``batch="auto"``: :data:`AUTO_BATCH` when the graph's dense MACs per clip are at most
    :data:`AUTO_BATCH_MAX_GMAC` billion (per-op overheads dominate, batching pays), else 1."""
    gmac = sum(int(ir.node_cost(graph, n)["macs"]) for n in graph.nodes) / 1e9
    return AUTO_BATCH if gmac <= AUTO_BATCH_MAX_GMAC else 1


def resolve_batch(sim: Simulator, batch: int | str) -> int:
    """``batch`` as a number of views per pass (``"auto"``: :func:`auto_batch` of the simulator's graph)."""
    n = auto_batch(sim.graph) if batch == "auto" else int(batch)
    if n < 1:
        raise SVFormerError(f"the batch size must be at least 1, not {n}")
    return n


def run_views(sim: Simulator, views: torch.Tensor, batch: int | str = DEFAULT_BATCH,
              on_step: Callable[[int], None] | None = None, anytime: bool = False) -> list[SimResult]:
    """Simulate clip views ``[N, T, C, H, W]`` in passes of at most ``batch`` views (``run_batch``; ``"auto"``:
    :func:`auto_batch`).

    Each result equals the view simulated alone (:meth:`Simulator.run_batch`); ``on_step(t)`` is
    called after every time step of every pass; ``anytime``: with the logits after every step.
    """
    batch = resolve_batch(sim, batch)
    out: list[SimResult] = []
    for i in range(0, views.shape[0], batch):
        out += sim.run_batch(views[i:i + batch], on_step=on_step, anytime=anytime)
    return out


def model_info(bundle: Bundle) -> dict[str, Any]:
    """The run records' ``model`` entry for ``bundle``: hash, bundle folder (absolute), arch, config."""
    man = bundle.manifest
    return {"hash": bundle.model_hash, "bundle": str(bundle.path.resolve()), "arch": man.get("arch"),
            "config": man.get("config")}


@dataclass
class PreparedRun:
    """One simulated input, nothing written yet: its views' results and run records (and early-exit summary)."""

    results: list[SimResult]
    records: list[dict[str, Any]]
    early_exit: dict[str, Any] | None = None


def simulate_records(setup: SimSetup, inputs: list[PreparedInput], labels: list[str | None] | None = None,
                     batch: int | str = DEFAULT_BATCH, on_step: Callable[[int], None] | None = None,
                     early_exit: tuple[float, int] | None = None, cost: Any = None,
                     sources: list[str] | None = None, model: dict[str, Any] | None = None
                     ) -> list[PreparedRun | SVFormerError]:
    """Simulate every view of several prepared inputs, ``batch`` views per executor pass, and build each
    input's run records without writing them.

    Returns, per input, its :class:`PreparedRun` or the :class:`SVFormerError` that input failed with
    (non-finite logits); one input's failure never touches the others. ``labels``: each input's true
    class (``input.label`` in its records) or None. ``sources``: the ``input.path`` of each input's
    records (default: the prepared file, resolved; a worker that simulates a copy of the clip names the
    original). ``model``: the records' ``model`` entry (default: :func:`model_info` of the setup's bundle).
    ``early_exit`` ``(m, k)`` with ``cost`` (a cost model): also where the rule of :mod:`simulators.anytime`
    stops the input and the energy up to that step (:func:`early_exit_summary`).
    """
    sim = setup.simulator
    labels = labels if labels is not None else [None] * len(inputs)
    sources = sources if sources is not None else [str(p.path.resolve()) for p in inputs]
    if not inputs:
        return []
    results = run_views(sim, torch.cat([p.tensor for p in inputs]), batch, on_step, anytime=early_exit is not None)
    info = model if model is not None else model_info(setup.bundle)
    out: list[PreparedRun | SVFormerError] = []
    first = 0
    for prepared, label, source in zip(inputs, labels, sources, strict=True):
        mine = results[first:first + prepared.tensor.shape[0]]
        first += prepared.tensor.shape[0]
        try:
            if not all(np.isfinite(r.logits).all() for r in mine):
                raise SVFormerError(f"{setup.bundle.path}: the simulation of {prepared.path} overflowed (non-finite "
                                    f"logits): the graph's values are out of range for the {setup.executor} executor")
            digest = sha256_file(prepared.path)
            records = []
            for v, res in enumerate(mine):
                inp = {"kind": prepared.kind, "path": source, "sha256": digest, "view": v,
                       "views": list(prepared.views), "frame_indices": prepared.frame_indices[v]}
                if label is not None:
                    inp["label"] = label
                records.append(build_record(sim, res, model=info, input=inp, class_names=setup.class_names))
            exit_doc = early_exit_summary(sim, mine, records, early_exit, cost, setup.class_names) \
                if early_exit else None
        except SVFormerError as e:
            out.append(e)
            continue
        out.append(PreparedRun(mine, records, exit_doc))
    return out


def simulate_prepared(setup: SimSetup, inputs: list[PreparedInput], out_dirs: list[str | Path],
                      labels: list[str | None] | None = None, batch: int | str = DEFAULT_BATCH,
                      on_step: Callable[[int], None] | None = None, early_exit: tuple[float, int] | None = None,
                      cost: Any = None) -> list[SimulationReport | SVFormerError]:
    """:func:`simulate_records`, then each input's run records written into its ``out_dirs`` entry
    (atomically, all views or none).

    Returns, per input, its :class:`SimulationReport` or the :class:`SVFormerError` that input
    failed with (non-finite logits, an unwritable folder); one input's failure never touches the others.
    """
    t0 = time.perf_counter()
    runs = simulate_records(setup, inputs, labels, batch, on_step, early_exit, cost)
    out: list[SimulationReport | SVFormerError] = []
    for prepared, out_dir, run in zip(inputs, out_dirs, runs, strict=True):
        try:
            if isinstance(run, SVFormerError):
                raise run
            paths = write_records(run.records, out_dir, prepared.path.stem)
        except SVFormerError as e:
            out.append(e)
            continue
        out.append(SimulationReport(bundle=setup.bundle, executor=setup.executor, input=prepared,
                                    simulator=setup.simulator, results=run.results, records=run.records,
                                    record_paths=paths, class_names=setup.class_names,
                                    wall_s=time.perf_counter() - t0, early_exit=run.early_exit))
    return out


def simulate_file(video: str | Path | None = None, events: str | Path | None = None,
                  model: str | Path | None = None, views: tuple[int, int] = (1, 1), executor: str = "float",
                  out_dir: str | Path = DEFAULT_RUNS_DIR, kernel: str = "auto", cwd: str | Path = ".",
                  on_step: Callable[[int], None] | None = None, label: str | None = None,
                  batch: int | str = DEFAULT_BATCH, early_exit: tuple[float, int] | None = None,
                  cost_model: str = "fp32") -> SimulationReport:
    """Simulate every view of ``video`` (or the ``events`` recording) and write one run record per view.

    ``executor``: ``"float"`` (the bundle's ``ir`` graph, float32) or ``"integer"`` (its
    ``ir_quantized`` graph, the fixed-point spec). The views run ``batch`` at a time through one
    executor pass (:func:`run_views`; ``"auto"``: :func:`auto_batch`). ``on_step(t)`` is called after
    every time step (progress display). ``label``: the clip's true class, stored in the records'
    ``input.label`` (dataset evaluations). ``early_exit`` ``(m, k)``: also where the rule of
    :mod:`simulators.anytime` stops the clip and the energy up to that step by every method (priced with
    ``cost_model``); the simulation still runs all T steps and the records are the full ones. Returns the
    report; raises ``SVFormerError`` for bad input.
    """
    t0 = time.perf_counter()
    cost = None
    if early_exit is not None:
        from svformer_deploy.deploy.energy.cost_models import get_cost_model

        cost = get_cost_model(cost_model)  # a bad cost model is an error before simulating
    setup = open_simulation(model, executor, kernel, cwd)
    prepared = prepare_input(setup.spec, video, events, views, setup.bundle.path)
    (report,) = simulate_prepared(setup, [prepared], [out_dir], [label], batch, on_step, early_exit, cost)
    if isinstance(report, SVFormerError):
        raise report
    report.wall_s = time.perf_counter() - t0
    return report


def early_exit_summary(sim: Simulator, results: list[SimResult], records: list[dict[str, Any]],
                       rule: tuple[float, int], cost: Any, class_names: list[str]) -> dict[str, Any]:
    """Where the rule ``(m, k)`` stops the clip (views' logits summed) and what that saves, by method."""
    from svformer_deploy.deploy.energy.methods import METHODS, evaluate_record

    from .anytime import exit_energies_pj, exit_step, margins
    from .record import RunRecord, validate_record

    m, k = rule
    T = sim.time_steps
    steps = np.sum([r.step_logits for r in results], axis=0)
    e = exit_step(steps, m, k)
    full = dict.fromkeys(METHODS, 0.0)
    at_exit = dict.fromkeys(METHODS, 0.0)
    for res, rec in zip(results, records, strict=True):
        priced = evaluate_record(RunRecord(path=Path("."), data=validate_record(rec, "run record")), cost)
        exits = exit_energies_pj(sim, res, rec, cost, class_names)
        for meth in METHODS:
            full[meth] += priced.totals_pj[meth]
            at_exit[meth] += exits[meth][e]
    return {"margin": m, "k": k, "exit_step": e + 1, "time_steps": T, "exited_early": bool(e < T - 1),
            "margins": [float(v) for v in margins(steps)], "top5": top_k(steps[e], class_names),
            "cost_model": cost.name, "energy_mj_full": {x: full[x] / 1e9 for x in METHODS},
            "energy_mj_exit": {x: at_exit[x] / 1e9 for x in METHODS},
            "saved": {x: 1 - at_exit[x] / full[x] if full[x] else 0.0 for x in METHODS}}
