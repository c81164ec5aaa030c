"""Run records (``docs/run-record.md``, ``svformer-deploy/run-record`` version 1): build and write them.

One record per simulated clip view: the model (bundle hash, config, executor), the input, the
prediction, the timing and, per work node of the executed graph, its exact counts over the clip
and per time step (:mod:`simulators.counting`). Records are written atomically; a set of records
(the views of one clip) appears completely or not at all.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.fileio import write_text_atomic

from .counting import COUNT_KEYS, LayerInfo, firing_rate
from .executor import SimResult, Simulator

FORMAT = "svformer-deploy/run-record"
VERSION = 1
DEFAULT_RUNS_DIR = "runs"


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tool_versions() -> dict[str, str]:
    from svformer_deploy.svformer.checkpoint import versions

    return versions()


def top_k(logits: np.ndarray, class_names: Sequence[str], k: int = 5) -> list[list[Any]]:
    """``[[label, score], ...]`` of the ``k`` largest logits (labels ``class_<i>`` when unnamed)."""
    order = np.argsort(-np.asarray(logits, dtype=np.float64), kind="stable")[:k]
    names = list(class_names)
    return [[names[i] if i < len(names) else f"class_{i}", float(logits[i])] for i in order]


def layer_entry(info: LayerInfo, table: np.ndarray, time_steps: int) -> dict[str, Any]:
    """One LAYER object of the record from a layer's static info and its ``[keys, T]`` count table."""
    counts = {k: int(table[i].sum()) for i, k in enumerate(COUNT_KEYS) if table[i].any()}
    per_step = {k: [int(v) for v in table[i]] for i, k in enumerate(COUNT_KEYS) if table[i].any()}
    entry: dict[str, Any] = {
        "name": info.name, "stage": info.stage, "op": info.op, "input_kind": info.input_kind,
        "input_neurons": list(info.input_neurons), "dense_macs": info.dense_macs, "params": info.params,
        "counts": counts, "per_step": per_step,
    }
    if info.op == "neuron":
        entry.update(neurons=info.neurons,
                     firing_rate=firing_rate(counts.get("spikes_out", 0), info.neurons, time_steps),
                     tau=info.tau, v_threshold=info.v_threshold)
    entry["word_bits"] = info.word_bits
    return entry


def build_record(sim: Simulator, result: SimResult, *, model: dict[str, Any], input: dict[str, Any],
                 class_names: Sequence[str] = ()) -> dict[str, Any]:
    """The run record of one simulated view.

    ``model``: at least ``hash`` (the bundle's ``model_hash``), plus ``bundle``, ``arch``, ``config``...;
    ``input``: ``kind``, ``path``, ``sha256``, ``view``, ``views``, ``frame_indices``.
    """
    if not result.counts:
        raise SVFormerError("a run record needs a simulation with counting enabled")
    T = sim.time_steps
    quant = sim.graph.graph.get("quant") or {}
    layers = [layer_entry(info, result.counts[info.name], T) for info in sim.layers]
    totals = {k: sum(layer["counts"].get(k, 0) for layer in layers) for k in COUNT_KEYS}
    totals["spikes"] = totals["spikes_out"]
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": utc_now(),
        "tool": tool_versions(),
        "model": {
            "class_names": list(class_names),
            "quantized": sim.mode == "integer",
            "weight_bits": int(quant["weight_bits"]) if sim.mode == "integer" and "weight_bits" in quant else None,
            "passes": list(sim.graph.graph.get("passes", [])),
            **model,
        },
        "input": input,
        "executor": sim.mode,
        "dtype": str(sim.dtype).replace("torch.", "") if sim.mode == "float" else "int64",
        "kernel": sim.policy.mode,
        "time_steps": T,
        "prediction": {"logits": [float(v) for v in result.logits], "top5": top_k(result.logits, class_names)},
        "timing": {"wall_s": result.wall_s, "per_step_s": list(result.step_seconds)},
        "layers": layers,
        "totals": totals,
    }


def dumps(record: dict[str, Any]) -> str:
    """The record as JSON text: indented, one line per layer (records of big models stay readable)."""
    head = {k: v for k, v in record.items() if k != "layers"}
    lines = ",\n".join("  " + json.dumps(layer, allow_nan=False) for layer in record.get("layers", []))
    text = json.dumps(head, indent=1, allow_nan=False)
    return text[:-2] + ',\n "layers": [\n' + lines + "\n ]\n}\n"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "clip"


def record_name(stem: str, view: int, created: str | None = None) -> str:
    """``<UTC time stamp>_<input stem>_v<view>.json``."""
    stamp = (created or utc_now()).replace("-", "").replace(":", "")
    return f"{stamp}_{_safe(stem)}_v{view}.json"


def write_records(records: Sequence[dict[str, Any]], out_dir: str | Path, stem: str) -> list[Path]:
    """Write the records of one clip's views into ``out_dir`` (created if needed), atomically, all or none.

    File names follow :func:`record_name`; an existing file is never overwritten (a ``-<n>`` suffix is
    added). If any write fails, the records already written by this call are removed.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SVFormerError(f"{out}: exists and is not a folder (run records go into a folder)")
    texts = [dumps(rec) for rec in records]  # serialisation errors surface before anything is written
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SVFormerError(f"{out}: cannot create the run record folder ({e.strerror})") from None
    written: list[Path] = []
    try:
        for rec, text in zip(records, texts, strict=True):
            name = record_name(stem, int(rec["input"].get("view", 0)), rec.get("created"))
            path, n = out / name, 1
            while path.exists() or path in written:
                path = out / name.replace(".json", f"-{n}.json")
                n += 1
            write_text_atomic(path, text)
            written.append(path)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        for d in created:  # folders this call created, innermost first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return written
