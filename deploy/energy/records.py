"""Run records: finding, reading, validating and aggregating them into one energy report.

A run record (``docs/run-record.md``; the schema, reader and validation live in
:mod:`simulators.record`) is the only input of the energy report. :func:`collect_records` finds
them (files, folders, or the newest one under ``./runs``), :func:`read_record` reads and validates
one, and :func:`aggregate` turns a list of records of
one model into the report dictionary (mean and spread per clip, per class and per layer) that
every output format renders. Feed :func:`aggregate` records from anywhere (files, or a batch of
simulations run in worker processes).

Folder policy: inside a folder given on the command line, JSON files that are not run records
(no ``"format": "svformer-deploy/run-record"``) are ignored, and corrupt run records (unreadable
JSON, missing or inconsistent fields) are skipped and reported with their reason, as long as at
least one valid record remains. A corrupt file named explicitly, or the newest record when none
is named, is an error.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from svformer_deploy.simulators.record import (
    COUNT_KEYS,
    DEFAULT_RUNS_DIR,
    FORMAT,
    MEMORY_KEYS,
    VERSION,
    CorruptRecord,
    RunRecord,
    is_record_json,
    load_record_json,
    read_record,
    validate_record,
)
from svformer_deploy.svformer.errors import SVFormerError

from .cost_models import ChipModel, CostModel
from .methods import EXACT_TERMS, METHOD_LABELS, METHODS, PJ_PER_MJ, REASONS, ClipEnergy, evaluate_record

REPORT_FORMAT = "svformer-deploy/energy-report"
__all__ = ["COUNT_KEYS", "FORMAT", "VERSION", "CorruptRecord", "RunRecord", "aggregate", "check_same_model",
           "collect_records", "newest_record", "read_record", "report_from_paths", "validate_record"]


def newest_record(cwd: str | Path | None = None, runs_dir: str = DEFAULT_RUNS_DIR) -> RunRecord:
    """The most recently written run record under ``<cwd>/runs`` (by modification time)."""
    base = Path(cwd or Path.cwd()) / runs_dir
    candidates = sorted(base.rglob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True) if base.is_dir() else []
    for path in candidates:
        try:
            data = load_record_json(path)
        except CorruptRecord:
            raise CorruptRecord(f"{path}: the newest file in {base} is not readable JSON") from None
        if is_record_json(data):
            return RunRecord(path=path, data=validate_record(data, path))
    raise SVFormerError(f"no run records found in {base} (run `svformer-deploy simulate --video CLIP` first, "
                        "or give run record files or folders)")


def collect_records(paths: Sequence[str | Path] = (), cwd: str | Path | None = None
                    ) -> tuple[list[RunRecord], list[dict[str, str]]]:
    """Run records from files and folders (recursively), or the newest under ``./runs`` when none given.

    Returns ``(records, skipped)`` where ``skipped`` lists corrupt records found in folders
    (``{"path", "reason"}``); see the module docstring for the policy.
    """
    if not paths:
        return [newest_record(cwd)], []
    records: list[RunRecord] = []
    skipped: list[dict[str, str]] = []
    for p in map(Path, paths):
        if not p.exists():
            raise SVFormerError(f"{p}: no such run record file or folder")
        if p.is_file():
            records.append(read_record(p))
            continue
        found = 0
        for f in sorted(p.rglob("*.json")):
            try:
                data = load_record_json(f)
            except CorruptRecord as e:
                skipped.append({"path": str(f), "reason": str(e)})
                continue
            if not is_record_json(data):
                continue
            try:
                records.append(RunRecord(path=f, data=validate_record(data, f)))
            except CorruptRecord as e:
                skipped.append({"path": str(f), "reason": str(e)})
                continue
            found += 1
        if not found:
            extra = f" ({len(skipped)} corrupt, e.g. {skipped[0]['reason']})" if skipped else ""
            raise SVFormerError(f"{p}: no valid run records in this folder{extra}")
    return records, skipped


def check_same_model(records: Sequence[RunRecord]) -> None:
    """Refuse records of different models (``model.hash``), executors, or layer lists."""
    if not records:
        raise SVFormerError("no run records to report")
    by_hash: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        by_hash[r.model_hash].append(r)
    if len(by_hash) > 1:
        parts = [f"{h[:12]} ({len(rs)} record(s), e.g. {rs[0].path})" for h, rs in by_hash.items()]
        raise SVFormerError("run records come from different models (model.hash differs): " + "; ".join(parts)
                            + "; report one model at a time")
    first = records[0]
    executors = {r.executor for r in records}
    if len(executors) > 1:
        raise SVFormerError(f"run records mix executors {sorted(executors)} (e.g. {first.path}); "
                            "report one executor at a time")
    shape = [(layer["name"], layer["op"], layer["stage"]) for layer in first.layers]
    for r in records[1:]:
        if r.time_steps != first.time_steps:
            raise CorruptRecord(f"{r.path}: corrupt run record: time_steps {r.time_steps} differs from "
                                f"{first.time_steps} in {first.path} although both name the same model hash")
        if [(layer["name"], layer["op"], layer["stage"]) for layer in r.layers] != shape:
            raise CorruptRecord(f"{r.path}: corrupt run record: its layers differ from {first.path} "
                                "although both name the same model hash")


# ------------------------------------------------------------------------------------------
# aggregation
# ------------------------------------------------------------------------------------------
def _stats(values: Iterable[float]) -> dict[str, float]:
    """Mean, population standard deviation (over clips), min and max."""
    v = [float(x) for x in values]
    return {"mean": statistics.fmean(v), "std": statistics.pstdev(v) if len(v) > 1 else 0.0,
            "min": min(v), "max": max(v)}


def _num(x: float) -> int | float:
    """An integral mean as an int (exact counts stay integers), else the float."""
    return int(x) if float(x).is_integer() and abs(x) < 2**63 else float(x)


def _mean(values: Iterable[float]) -> float:
    return statistics.fmean(values)


def aggregate(records: Sequence[RunRecord], cost: CostModel, skipped: Sequence[Mapping[str, str]] = ()
              ) -> dict[str, Any]:
    """The energy report of ``records`` (one model) priced by ``cost``: a JSON-ready dict.

    Counts are operations per clip and energies pJ or mJ per clip, both the mean over the
    records (one record = one clip view); ``*_std``/``*_min``/``*_max`` give the spread.
    """
    check_same_model(records)
    clips = [evaluate_record(r, cost) for r in records]
    n = len(clips)
    first = records[0]
    ann_pj = clips[0].ann_pj
    ann_mj = ann_pj / PJ_PER_MJ

    def per_clip_mj(method: str) -> list[float]:
        return [c.totals_pj[method] / PJ_PER_MJ for c in clips]

    def mean_count(key: str) -> int | float:
        return _num(_mean(c.total_counts(key) for c in clips))

    methods: dict[str, dict[str, Any]] = {}
    for m in METHODS:
        s = _stats(per_clip_mj(m))
        methods[m] = {"label": METHOD_LABELS[m], "energy_mj": s["mean"], "energy_mj_std": s["std"],
                      "energy_mj_min": s["min"], "energy_mj_max": s["max"],
                      "snn_ann_ratio": (s["mean"] / ann_mj) if ann_mj > 0 else None, "cost_model": cost.name}
    exact_counts = {k: mean_count(k) for k in EXACT_TERMS}
    exact_breakdown = {k: _mean(sum(layer.exact_pj[k] for layer in c.layers) for c in clips) / PJ_PER_MJ
                       for k in EXACT_TERMS}
    methods["exact"].update(exact_counts, breakdown_mj=exact_breakdown)
    sop = _mean(sum(layer.paper_sop for layer in c.layers) for c in clips)
    flop1 = _num(_mean(sum(layer.paper_mac for layer in c.layers) for c in clips))
    methods["paper_eq13"].update(
        ac=sop, mac=flop1, sop=sop, first_layer_flops=flop1,
        breakdown_mj={"ac": cost.e_ac_pj * sop / PJ_PER_MJ, "mac": cost.e_mac_pj * flop1 / PJ_PER_MJ},
        bias_flops_source=clips[0].bias_source,
    )
    memory_counts = {k: mean_count(k) for k in MEMORY_KEYS}
    memory_breakdown = dict(exact_breakdown)
    memory_breakdown["weight_memory"] = _mean(sum(x.memory_pj["weight"] for x in c.layers) for c in clips) / PJ_PER_MJ
    memory_breakdown["state_memory"] = _mean(sum(x.memory_pj["state"] for x in c.layers) for c in clips) / PJ_PER_MJ
    methods["memory_aware"].update(exact_counts, **memory_counts, breakdown_mj=memory_breakdown)

    layers = _aggregate_layers(clips)
    stages = _aggregate_stages(layers)
    diff_total = _mean(c.totals_pj["exact"] - c.totals_pj["paper_eq13"] for c in clips)
    by_reason: dict[str, dict[str, Any]] = {}
    for layer in layers:
        why = layer["reason"]
        entry = by_reason.setdefault(why, {"reason": why, "description": REASONS[why], "difference_pj": 0.0,
                                           "layers": 0})
        entry["difference_pj"] += layer["difference_pj"]
        entry["layers"] += 1

    per_clip = []
    for c in clips:
        r = c.record
        per_clip.append({
            "record": str(r.path), "input": r.input.get("path"), "view": r.input.get("view"),
            "class": r.label, "top1": r.top1,
            "energy_mj": {m: c.totals_pj[m] / PJ_PER_MJ for m in METHODS} | {"ann": c.ann_pj / PJ_PER_MJ},
        })
    by_class: dict[str, list[ClipEnergy]] = defaultdict(list)
    for c in clips:
        by_class[c.record.label].append(c)
    per_class = [{"class": k, "clips": len(v),
                  "energy_mj": {m: _stats(c.totals_pj[m] / PJ_PER_MJ for c in v) for m in METHODS}}
                 for k, v in sorted(by_class.items())]

    T = first.time_steps
    spikes_per_step = [0.0] * T
    by_stage_steps: dict[str, list[float]] = {}
    for layer in layers:
        if layer["per_step_spikes"] is not None:
            row = by_stage_steps.setdefault(layer["stage"], [0.0] * T)
            for t, v in enumerate(layer["per_step_spikes"]):
                spikes_per_step[t] += v
                row[t] += v
    model = first.model
    return {
        "format": REPORT_FORMAT,
        "version": 1,
        "cost_model": cost.to_dict(),
        "model": {"hash": model["hash"], "arch": model.get("arch"), "bundle": model.get("bundle"),
                  "passes": model.get("passes"), "quantized": model.get("quantized"),
                  "weight_bits": model.get("weight_bits"), "executor": first.executor, "time_steps": T},
        "clips": n,
        "videos": len({(r.input.get("sha256") or r.input.get("path") or str(r.path)) for r in records}),
        "records": [str(r.path) for r in records],
        "skipped": [dict(s) for s in skipped],
        "units": {"counts": "operations per clip (mean over clips)", "energy_mj": "millijoules per clip",
                  "energy_pj": "picojoules per clip", "spread": "population std, min and max over clips"},
        "methods": methods,
        "ann_counterpart": {"label": "ANN counterpart: every neuron a ReLU, all dense MACs at E_MAC",
                            "macs": clips[0].ann_macs, "energy_mj": ann_mj, "cost_model": cost.name},
        "stages": stages,
        "layers": layers,
        "reconciliation": {"exact_minus_paper_pj": diff_total,
                           "by_reason": sorted(by_reason.values(), key=lambda e: -abs(e["difference_pj"]))},
        "per_clip": per_clip,
        "per_class": per_class,
        "activity": {"time_steps": T, "spikes_per_step": spikes_per_step,
                     "spikes_per_step_by_stage": by_stage_steps},
    }


def _aggregate_layers(clips: Sequence[ClipEnergy]) -> list[dict[str, Any]]:
    out = []
    for i, ref in enumerate(clips[0].layers):
        rows = [c.layers[i] for c in clips]
        exact = [r.exact_total_pj for r in rows]
        s = _stats(exact)
        entry: dict[str, Any] = {
            "name": ref.name, "stage": ref.stage, "op": ref.op, "input_kind": ref.input_kind,
            "input_neurons": ref.input_neurons,
            "firing_rate": None, "neurons": ref.neurons, "tau": ref.tau, "v_threshold": ref.v_threshold,
            "word_bits": ref.word_bits, "dense_macs": ref.dense_macs, "paper_flops": ref.paper_flops,
            "paper_input_rate": None if ref.paper_rate is None else _mean(r.paper_rate for r in rows),
            "paper_sop": _mean(r.paper_sop for r in rows),
        }
        if ref.firing_rate is not None:
            fr = _stats(r.firing_rate for r in rows)
            entry.update(firing_rate=fr["mean"], firing_rate_std=fr["std"], firing_rate_min=fr["min"],
                         firing_rate_max=fr["max"])
        for k in COUNT_KEYS:
            entry[k] = _num(_mean(r.counts.get(k, 0) for r in rows))
        entry.update(
            energy_pj=s["mean"], energy_pj_std=s["std"], energy_pj_min=s["min"], energy_pj_max=s["max"],
            energy_pj_by_method={m: _mean(r.energy_pj(m) for r in rows) for m in METHODS},
            exact_pj_by_term={k: _mean(r.exact_pj[k] for r in rows) for k in EXACT_TERMS},
            memory_pj={k: _mean(r.memory_pj[k] for r in rows) for k in ("weight", "state")},
            difference_pj=_mean(r.exact_total_pj - r.paper_pj for r in rows),
            reason=ref.reason,
            per_step_spikes=None if ref.per_step_spikes is None
            else [_mean(r.per_step_spikes[t] for r in rows) for t in range(len(ref.per_step_spikes))],
        )
        out.append(entry)
    return out


def _aggregate_stages(layers: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    stages: dict[str, dict[str, Any]] = {}
    for layer in layers:
        s = stages.setdefault(layer["stage"], {
            "stage": layer["stage"], "ac": 0, "mac": 0, "other_ops": 0, "dense_macs": 0, "spikes_out": 0,
            "energy_pj": {"ac": 0.0, "mac": 0.0, "other": 0.0, "memory": 0.0},
            "energy_pj_by_method": dict.fromkeys(METHODS, 0.0),
        })
        s["ac"] += layer["ac"]
        s["mac"] += layer["mac"]
        s["other_ops"] += layer["mul"] + layer["add"] + layer["neuron_updates"]
        s["dense_macs"] += layer["dense_macs"]
        s["spikes_out"] += layer["spikes_out"]
        t = layer["exact_pj_by_term"]
        s["energy_pj"]["ac"] += t["ac"]
        s["energy_pj"]["mac"] += t["mac"]
        s["energy_pj"]["other"] += t["mul"] + t["add"] + t["neuron_updates"]
        s["energy_pj"]["memory"] += layer["memory_pj"]["weight"] + layer["memory_pj"]["state"]
        for m in METHODS:
            s["energy_pj_by_method"][m] += layer["energy_pj_by_method"][m]
    return list(stages.values())


def report_from_paths(paths: Sequence[str | Path] = (), cost_model: str | Path | CostModel | ChipModel | None = None,
                      cwd: str | Path | None = None, bundle: str | Path | None = None,
                      host: str | Path | None = None) -> dict[str, Any]:
    """Find the run records (see :func:`collect_records`), price them and aggregate: the report dict.

    A chip cost model (``loihi`` or a chip TOML) adds the ``chip`` section (:mod:`deploy.energy.chip_bill`):
    the pure 45 nm methods are priced with ``host`` (default: the chip's ``host`` model) and the partition
    with the chip; the placement needs the bundle (``bundle``, else the records' ``model.bundle``).
    """
    from .cost_models import get_cost_model

    cost = cost_model if isinstance(cost_model, CostModel | ChipModel) else get_cost_model(cost_model)
    chip = cost if isinstance(cost, ChipModel) else None
    if chip is not None:
        cost = chip.host_model() if host is None else get_cost_model(host)
        if not isinstance(cost, CostModel):
            raise SVFormerError(f"host cost model {host}: a chip cannot be the host model")
    elif host is not None:
        raise SVFormerError("--host-cost-model goes with a chip cost model (e.g. --cost-model loihi)")
    records, skipped = collect_records(paths, cwd=cwd)
    report = aggregate(records, cost, skipped)
    if chip is not None:
        report["chip"] = chip_report(records, chip, cost, report, bundle)
    return report


def chip_report(records: Sequence[RunRecord], chip: ChipModel, host: CostModel, report: Mapping[str, Any],
                bundle: str | Path | None = None) -> dict[str, Any]:
    """The ``chip`` section of ``report`` (records of one model; their bundle placed on ``chip``)."""
    from svformer_deploy.export.bundle import load_bundle

    from .chip_bill import chip_section
    from .placement import place_bundle

    given = bundle is not None
    path = Path(bundle) if given else Path(str(records[0].model.get("bundle") or ""))
    if not given and (not records[0].model.get("bundle") or not path.is_dir()):
        raise SVFormerError(f"the chip bill needs the model's bundle (its partition and layer shapes): pass --bundle "
                            f"PATH (the records name {records[0].model.get('bundle') or 'no bundle'}, not found)")
    b = load_bundle(path)
    if b.model_hash != records[0].model_hash:
        raise SVFormerError(f"{path}: bundle model hash {b.model_hash[:12]} is not the records' "
                            f"{records[0].model_hash[:12]} (a different model)")
    placement = place_bundle(b, chip)
    clips = [evaluate_record(r, host) for r in records]
    methods_mj = {m: report["methods"][m]["energy_mj"] for m in METHODS}
    return chip_section(records, clips, placement, chip, host, methods_mj)
