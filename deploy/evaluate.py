"""Accuracy, energy, noise robustness and early exit of an export bundle's graph on a labelled dataset.

The library behind ``svformer-deploy evaluate`` (``docs/evaluate.md``). Every clip of the dataset
(the layouts of :mod:`svformer.data.datasets`: a folder per class, a CSV list, N-MNIST) is simulated
once per condition (clean, then every ``--noise`` level) on the float or integer executor, with
anytime read-outs; from that one run come the prediction, the energy by the three methods of
:mod:`deploy.energy` (the run record priced as ``energy-report`` prices it), the firing rate, and the
energy of stopping after every step (:mod:`simulators.anytime`), from which the early-exit sweep is
computed without simulating again.

Clips run in a process pool or as Ray tasks (:func:`deploy.batch.map_clips`); the workers return each
clip's results and the driver writes them to ``RUNS/<clip slot>.json`` atomically; a rerun with the same
model, executor, precision, views, seed and cost model reuses them (and computes only conditions it
lacks), so an interrupted evaluation resumes. A clip that cannot be read is reported and skipped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from svformer_deploy.svformer.data.noise import EVENTS_REFUSAL, Noise
from svformer_deploy.svformer.errors import SVFormerError

if TYPE_CHECKING:
    from svformer_deploy.export.bundle import Bundle

FORMAT = "svformer-deploy/evaluation"
CLEAN = "clean"
DEFAULT_MARGINS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
LAYOUTS = ("videos", "events", "nmnist", "csv")
PRECISIONS = ("float32", "float64")


@dataclass(frozen=True)
class Settings:
    """What a clip's results depend on (besides the clip): they are reused only when all of it matches."""

    model: str  # bundle folder
    model_hash: str
    executor: str = "float"  # "float" | "integer"
    precision: str = "float32"  # float executor only
    views: tuple[int, int] = (1, 1)
    seed: int = 0
    cost_model: str = "fp32"
    compare_float: bool = False  # integer executor: also the float graph's clean prediction (agreement)

    def key(self) -> str:
        d = asdict(self)
        d.pop("model")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Evaluation:
    """Per-clip results (``clips``: path -> label, conditions) and the failures (path, reason)."""

    settings: Settings
    class_names: list[str]
    conditions: list[str]
    clips: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    resumed: int = 0
    simulated: int = 0
    runs_dir: Path | None = None
    source: str = ""
    time_steps: int = 0


def condition_label(noise: Noise | None) -> str:
    return CLEAN if noise is None else noise.label


def load_dataset(layout: str, path: str | Path, spec: Any, class_names: Sequence[str], split: str = "test") -> Any:
    """The labelled clips of ``path`` in ``layout`` (:data:`LAYOUTS`), classes as the model names them."""
    from svformer_deploy.svformer.data import datasets

    names = list(class_names) or None
    if layout in ("videos", "events"):
        want = "events" if layout == "events" else "video"
        if spec.file_kind != want:
            other = "--events" if spec.file_kind == "events" else "--videos"
            raise SVFormerError(f"{path}: the model takes {spec.kind} input; give its clips with {other} DIR")
        return datasets.folder_dataset(path, spec, class_names=names)
    if layout == "nmnist":
        if spec.file_kind != "events":
            raise SVFormerError(f"{path}: --nmnist needs an event model (2 channels); this model takes {spec.kind}")
        ds = datasets.nmnist_dataset(path, split, spec)
        if names is not None and names != ds.class_names:
            raise SVFormerError(f"{path}: the model's classes ({', '.join(names[:5])}, ...) are not N-MNIST's 0-9")
        return ds
    if layout == "csv":
        return datasets.csv_dataset(path, spec, class_names=names)
    raise SVFormerError(f"unknown dataset layout {layout!r}; use one of {', '.join(LAYOUTS)}")


# ---------------------------------------------------------------------------------------------
# one clip (runs in a worker process)
# ---------------------------------------------------------------------------------------------
_CONTEXT: dict[str, Any] = {}  # per process: the bundle's simulators of the current settings


def _context(bundle: Bundle, settings: Settings) -> dict[str, Any]:
    key = settings.key() + bundle.model_hash
    if _CONTEXT.get("key") != key:
        import torch
        from svformer_deploy.deploy.energy.cost_models import get_cost_model
        from svformer_deploy.simulators.executor import Simulator
        from svformer_deploy.simulators.run import bundle_input_spec, executor_graph, model_info

        dtype = torch.float64 if settings.precision == "float64" else torch.float32
        sims = {}
        if settings.executor == "integer":
            sims["integer"] = Simulator(executor_graph(bundle, "integer"), mode="integer")
        if settings.executor == "float" or settings.compare_float:
            sims["float"] = Simulator(executor_graph(bundle, "float"), mode="float", dtype=dtype)
        _CONTEXT.clear()
        _CONTEXT.update(key=key, model=model_info(bundle), spec=bundle_input_spec(bundle), sims=sims,
                        cost=get_cost_model(settings.cost_model), class_names=list(bundle.class_names))
    return _CONTEXT


def price_view(sim: Any, res: Any, cost: Any, model: dict[str, Any], input: dict[str, Any],
               class_names: Sequence[str] = ()) -> tuple[dict[str, Any], dict[str, float]]:
    """The run record of one view simulated by ``sim`` (a :class:`simulators.executor.Simulator`; ``res`` its
    result), checked as a record read from disk is, and its energy by method (pJ) under ``cost``, priced as
    ``energy-report`` prices records. ``input``: the record's input entry (its ``path`` names the run)."""
    from svformer_deploy.deploy.energy.methods import evaluate_record
    from svformer_deploy.simulators.record import RunRecord, build_record, validate_record

    rec = build_record(sim, res, model=model, class_names=class_names, input=input)
    where = str(input["path"])
    return rec, evaluate_record(RunRecord(path=Path(where), data=validate_record(rec, where)), cost).totals_pj


def neuron_steps(sim: Any) -> int:
    """Neuron updates of one view: the neurons of ``sim``'s spiking layers times its time steps (the firing
    rate's denominator)."""
    return sum(int(info.neurons) for info in sim.layers if info.neurons) * sim.time_steps


def evaluate_clip(bundle: Bundle, clip: str, path: Path, label: str, settings: Settings,
                  noises: Sequence[Noise | None], previous: dict[str, Any] | None) -> dict[str, Any]:
    """Simulate ``clip`` (read from ``path``: the clip or a worker's copy of it) with ``bundle`` under every
    condition in ``noises`` (None: clean) that ``previous`` lacks.

    Returns the clip's document (written by the driver): ``{"label", "conditions": {name: result}}``; a result
    has ``logits`` (summed over views), ``energy_pj`` by method, ``firing_rate`` and ``spikes``; the
    clean one also ``step_logits`` [T][classes] and ``exit_energy_pj`` (by method, stopping after 1..T
    steps), what the early-exit sweep reads.
    """
    from svformer_deploy.deploy.energy.methods import METHODS
    from svformer_deploy.simulators.anytime import exit_energies_pj
    from svformer_deploy.svformer.data.noise import frame_transform
    from svformer_deploy.svformer.fileio import sha256_file

    ctx = _context(bundle, settings)
    spec, names = ctx["spec"], ctx["class_names"]
    doc = previous if previous is not None else {"format": FORMAT, "settings": settings.key(), "clip": clip,
                                                 "label": label, "conditions": {}}
    digest = sha256_file(path)
    doc["sha256"] = digest
    todo = [n for n in noises if condition_label(n) not in doc["conditions"]]
    todo_float = settings.compare_float and "float_clean" not in doc
    main_sim = ctx["sims"][settings.executor]
    for noise in todo:
        if noise is not None and spec.file_kind == "events":
            raise SVFormerError(EVENTS_REFUSAL)
        tensor, indices, _ = spec.load_views(path, *settings.views,
                                             frame_transform=frame_transform(noise, settings.seed, digest))
        anytime = noise is None  # the early-exit sweep reads the clean runs only
        results = [main_sim.run(tensor[v], anytime=anytime) for v in range(tensor.shape[0])]
        if not all(np.isfinite(r.logits).all() for r in results):
            raise SVFormerError(f"{clip}: the simulation overflowed (non-finite logits)")
        energy = dict.fromkeys(METHODS, 0.0)
        exits = {m: [0.0] * main_sim.time_steps for m in METHODS}
        spikes = 0
        for v, res in enumerate(results):
            rec, totals = price_view(main_sim, res, ctx["cost"], ctx["model"], class_names=names,
                                     input={"kind": spec.file_kind, "path": clip, "sha256": digest, "view": v,
                                            "views": list(settings.views), "frame_indices": indices[v],
                                            "label": label})
            for m in METHODS:
                energy[m] += totals[m]
            if anytime:
                for m, vals in exit_energies_pj(main_sim, res, rec, ctx["cost"], names).items():
                    exits[m] = [a + b for a, b in zip(exits[m], vals, strict=True)]
            spikes += rec["totals"]["spikes"]
        updates = neuron_steps(main_sim) * len(results)
        logits = np.sum([r.logits for r in results], axis=0)
        result = {"logits": [float(x) for x in logits], "energy_pj": energy, "spikes": int(spikes),
                  "firing_rate": spikes / updates if updates else 0.0}
        if anytime:
            steps = np.sum([r.step_logits for r in results], axis=0)
            result.update(step_logits=[[float(x) for x in row] for row in steps], exit_energy_pj=exits)
        doc["conditions"][condition_label(noise)] = result
    if todo_float:
        tensor, _, _ = spec.load_views(path, *settings.views)
        sim = ctx["sims"]["float"]
        doc["float_clean"] = [float(x) for x in np.sum([sim.run(tensor[v]).logits for v in range(tensor.shape[0])],
                                                          axis=0)]
    return doc


# ---------------------------------------------------------------------------------------------
# the dataset
# ---------------------------------------------------------------------------------------------
def default_runs_dir(settings: Settings) -> Path:
    return Path("runs") / f"evaluate-{settings.model_hash[:12]}-{settings.key()}"


def _read_previous(path: Path, settings: Settings, clip: str) -> dict[str, Any] | None:
    """A clip's earlier results when they belong to these settings and this file; None otherwise."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("settings") != settings.key():
        return None
    from svformer_deploy.svformer.fileio import sha256_file

    try:
        if doc.get("clip") != clip or doc.get("sha256") != sha256_file(clip):
            return None
    except OSError:
        return None
    return doc if isinstance(doc.get("conditions"), dict) else None


def evaluate_dataset(layout: str, path: str | Path, settings: Settings, noises: Sequence[Noise] = (),
                     runs_dir: str | Path | None = None, workers: int | None = None, split: str = "test",
                     on_clip: Callable[[str, str | None], None] | None = None,
                     on_total: Callable[[int], None] | None = None, ray: bool = False,
                     ray_address: str | None = None) -> Evaluation:
    """Evaluate every clip of the dataset (see the module docstring); returns the per-clip results.

    ``workers`` processes (default 2), or Ray tasks with ``ray`` (a local runtime of ``workers`` CPUs, default
    all cores) or ``ray_address`` (a running cluster): :func:`deploy.batch.map_clips`.
    """
    from svformer_deploy.deploy.batch import check_writable, clip_slot, map_clips
    from svformer_deploy.export.bundle import load_bundle
    from svformer_deploy.simulators.run import bundle_input_spec, executor_graph
    from svformer_deploy.svformer.fileio import write_json_atomic

    bundle = load_bundle(settings.model)
    spec = bundle_input_spec(bundle)
    executor_graph(bundle, settings.executor)  # read and verified once, here: the workers get the loaded graphs
    if settings.compare_float:
        executor_graph(bundle, "float")
    if noises and spec.file_kind == "events":
        raise SVFormerError(EVENTS_REFUSAL)
    if spec.file_kind == "events" and tuple(settings.views) != (1, 1):
        raise SVFormerError(f"--views {settings.views[0]}x{settings.views[1]}: event recordings give one view; use 1x1")
    dataset = load_dataset(layout, path, spec, bundle.class_names, split)
    names = list(dataset.class_names)
    conditions: list[Noise | None] = [None, *noises]
    out = Path(runs_dir) if runs_dir is not None else default_runs_dir(settings)
    check_writable(out)
    ev = Evaluation(settings=settings, class_names=names, conditions=[condition_label(n) for n in conditions],
                    runs_dir=out, source=str(path), time_steps=spec.time_steps)
    todo, slots = [], {}
    for clip, y in dataset.samples:
        full = Path(clip).resolve()
        slot = out / f"{clip_slot(Path(full.anchor), full)}.json"
        prev = _read_previous(slot, settings, clip)
        if prev is not None and all(condition_label(n) in prev["conditions"] for n in conditions) and (
                not settings.compare_float or "float_clean" in prev):
            ev.clips[clip] = prev
            ev.resumed += 1
            if on_clip:
                on_clip(clip, None)
            continue
        todo.append((clip, (names[y], settings, conditions, prev)))
        slots[clip] = slot
    if on_total:
        on_total(len(dataset.samples))

    def done(clip: str, doc: dict[str, Any] | None, err: str | None) -> None:
        if err is None and doc is not None:
            write_json_atomic(slots[clip], doc)
            ev.clips[clip] = doc
            ev.simulated += 1
        else:
            ev.failures.append((clip, " ".join((err or "no result").split())))
        if on_clip:
            on_clip(clip, err)

    map_clips(evaluate_clip, todo, done, bundle, workers, ray=ray, ray_address=ray_address)
    if not ev.clips:
        raise SVFormerError(f"{path}: no clip could be evaluated ({len(ev.failures)} failed"
                            + (f"; first: {ev.failures[0][1]}" if ev.failures else "") + ")")
    return ev


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------
def _topk_hit(logits: Sequence[float], y: int, k: int) -> bool:
    order = np.argsort(-np.asarray(logits, dtype=np.float64), kind="stable")[:k]
    return bool(y in order)


def summarise(ev: Evaluation, margins: Sequence[float] = DEFAULT_MARGINS, k: int = 1) -> dict[str, Any]:
    """The evaluation report (JSON-ready): accuracy, energy and firing rate per condition, per class and
    confusion matrix (clean), float/integer agreement, and the early-exit sweep over ``margins``."""
    from svformer_deploy.deploy.energy.methods import METHODS
    from svformer_deploy.simulators.anytime import exit_step

    names = ev.class_names
    index = {n: i for i, n in enumerate(names)}
    clips = sorted(ev.clips.items())
    n = len(clips)
    T = ev.time_steps
    conditions = []
    for cond in ev.conditions:
        top1 = top5 = 0
        energy = dict.fromkeys(METHODS, 0.0)
        rate = 0.0
        for _, doc in clips:
            r = doc["conditions"][cond]
            y = index[doc["label"]]
            top1 += _topk_hit(r["logits"], y, 1)
            top5 += _topk_hit(r["logits"], y, 5)
            for m in METHODS:
                energy[m] += r["energy_pj"][m]
            rate += r["firing_rate"]
        kind, _, level = cond.partition(":")
        conditions.append({"condition": cond, "noise": None if cond == CLEAN else kind,
                           "level": None if cond == CLEAN else float(level), "clips": n, "top1": top1 / n,
                           "top5": top5 / n, "energy_mj": {m: energy[m] / n / 1e9 for m in METHODS},
                           "firing_rate": rate / n})
    confusion = [[0] * len(names) for _ in names]
    per_class = {c: {"clips": 0, "top1": 0, "top5": 0} for c in names}
    agree = 0
    predictions = []
    for clip, doc in clips:
        r = doc["conditions"][CLEAN]
        y = index[doc["label"]]
        pred = int(np.argmax(r["logits"]))
        confusion[y][pred] += 1
        pc = per_class[doc["label"]]
        pc["clips"] += 1
        pc["top1"] += _topk_hit(r["logits"], y, 1)
        pc["top5"] += _topk_hit(r["logits"], y, 5)
        row = {"clip": clip, "label": doc["label"], "prediction": names[pred] if pred < len(names) else str(pred)}
        if "float_clean" in doc:
            fp = int(np.argmax(doc["float_clean"]))
            agree += fp == pred
            row["float_prediction"] = names[fp] if fp < len(names) else str(fp)
        predictions.append(row)
    classes = [{"class": c, "clips": v["clips"], "top1": v["top1"] / v["clips"] if v["clips"] else None,
                "top5": v["top5"] / v["clips"] if v["clips"] else None} for c, v in per_class.items()]
    full = {m: sum(doc["conditions"][CLEAN]["energy_pj"][m] for _, doc in clips) / n / 1e9 for m in METHODS}
    sweep = []
    for m_val in margins:
        hits = 0
        steps = 0
        energy = dict.fromkeys(METHODS, 0.0)
        for _, doc in clips:
            r = doc["conditions"][CLEAN]
            sl = np.asarray(r["step_logits"])
            e = exit_step(sl, m_val, k)
            steps += e + 1
            hits += int(np.argmax(sl[e])) == index[doc["label"]]
            for meth in METHODS:
                energy[meth] += r["exit_energy_pj"][meth][e]
        emj = {meth: energy[meth] / n / 1e9 for meth in METHODS}
        sweep.append({"margin": float(m_val), "k": k, "top1": hits / n, "mean_exit_step": steps / n,
                      "energy_mj": emj, "saved": {meth: 1 - emj[meth] / full[meth] if full[meth] else 0.0
                                                 for meth in METHODS}})
    s = ev.settings
    report: dict[str, Any] = {
        "format": FORMAT, "version": 1, "source": ev.source,
        "model": {"bundle": s.model, "hash": s.model_hash}, "executor": s.executor,
        "precision": s.precision if s.executor == "float" else "int64", "views": list(s.views), "seed": s.seed,
        "cost_model": s.cost_model, "time_steps": T, "classes": names, "clips": n,
        "failed": [{"clip": c, "reason": r} for c, r in ev.failures], "resumed": ev.resumed,
        "simulated": ev.simulated, "runs": str(ev.runs_dir) if ev.runs_dir else None,
        "conditions": conditions, "per_class": classes, "confusion": confusion, "predictions": predictions,
        "full_energy_mj": full, "early_exit": sweep,
        "anytime": "head on the accumulated steps plus the mean of the seen head inputs for the unseen steps; "
                   "margin = p1 - p2 of the softmax",
    }
    if s.compare_float:
        report["agreement_with_float"] = agree / n
        report["float_top1"] = sum(int(np.argmax(doc["float_clean"])) == index[doc["label"]]
                                   for _, doc in clips) / n
    return report


__all__ = ["CLEAN", "DEFAULT_MARGINS", "Evaluation", "LAYOUTS", "Settings", "condition_label", "evaluate_clip",
           "evaluate_dataset", "load_dataset", "summarise"]
