"""Simulate a video or event file with an export bundle: the library behind ``svformer-deploy simulate``.

:func:`simulate_file` opens the bundle (``--model DIR``, or the newest ``*.svfd`` in the current
folder), prepares the input exactly as the bundle's ``preprocessing`` says (video: T frames over a
window of T·frame_stride frames, short side resized, crops, mean/std; events: T slices of 2
polarity count frames), runs every view through :class:`simulators.executor.Simulator` (float or
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

import numpy as np
import torch
from svformer_deploy.export.bundle import Bundle, find_latest_bundle, load_bundle
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.fileio import sha256_file

from .counting import COUNT_KEYS, firing_rate
from .executor import SimResult, Simulator
from .record import DEFAULT_RUNS_DIR, build_record, top_k, write_records

EXECUTORS = ("float", "integer")


@dataclass
class PreparedInput:
    """Model input views ``[V, T, C, S, S]`` (float32) and where they come from."""

    kind: str  # "video" | "events"
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
        """The ``simulate --json`` document (cli-contract.md, plus details)."""
        layers = self.layer_summary()
        totals = {k: sum(row[k] for row in layers) for k in COUNT_KEYS}
        inp = self.input
        return {
            "video": str(inp.path) if inp.kind == "video" else None,
            "events": str(inp.path) if inp.kind == "events" else None,
            "input_kind": inp.kind,
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
        }


# --------------------------------------------------------------------------------------------
def open_bundle(model: str | Path | None, cwd: str | Path = ".") -> Bundle:
    """``model`` or the most recent bundle in ``cwd`` (the contract's default)."""
    return load_bundle(model if model is not None else find_latest_bundle(cwd))


def _preprocessing(bundle: Bundle) -> dict[str, Any]:
    prep = bundle.manifest.get("preprocessing")
    if isinstance(prep, dict) and prep:
        return prep
    from svformer_deploy.svformer.checkpoint import default_preprocessing
    from svformer_deploy.svformer.config import SVFormerConfig

    try:
        return default_preprocessing(SVFormerConfig.from_dict(bundle.manifest["config"]))
    except (SVFormerError, TypeError, ValueError, KeyError) as e:
        raise SVFormerError(f"{bundle.path}: the manifest has no preprocessing and an unusable config ({e})") from None


def _expected(bundle: Bundle, graph_shape: tuple[int, int, int], T: int) -> dict[str, Any]:
    """Preprocessing checked against the executed graph's input (T, channels, size)."""
    prep = _preprocessing(bundle)
    c, h, w = graph_shape
    kind = "events" if prep.get("input") == "events" else "video"
    size = int(prep.get("size", h))
    steps = int(prep.get("time_steps", T))
    if h != w or size != h or steps != T:
        raise SVFormerError(f"{bundle.path}: preprocessing (T={steps}, size {size}) does not match the exported "
                            f"graph's input (T={T}, {c}x{h}x{w}); re-export the model")
    if (kind == "events") != (c == 2):
        raise SVFormerError(f"{bundle.path}: preprocessing says {kind} input but the graph takes {c} channels")
    return {**prep, "kind": kind, "channels": c, "size": size, "time_steps": T}


def prepare_input(exp: dict[str, Any], video: str | Path | None, events: str | Path | None,
                  views: tuple[int, int], bundle_path: Path) -> PreparedInput:
    """Decode/frame the input as the bundle's preprocessing says; refuse a mismatching kind."""
    if (video is None) == (events is None):
        raise SVFormerError("give exactly one input: --video FILE or --events FILE")
    T, size = exp["time_steps"], exp["size"]
    if video is not None:
        path = Path(video)
        if exp["kind"] == "events":
            raise SVFormerError(f"{path}: the model {bundle_path.name} takes event recordings ({exp['channels']} "
                                "polarity channels), not video; use --events FILE")
        if exp["channels"] != 3:
            raise SVFormerError(f"{path}: the model {bundle_path.name} takes {exp['channels']}-channel input; "
                                "videos are decoded as 3-channel RGB")
        from svformer_deploy.svformer.data.video import DEFAULT_MEAN, DEFAULT_STD, read_views

        k, s = views
        cv = read_views(path, time_steps=T, size=size, temporal_views=k, spatial_crops=s,
                        frame_stride=int(exp.get("frame_stride", 4)), mean=exp.get("mean", DEFAULT_MEAN),
                        std=exp.get("std", DEFAULT_STD))
        details = {"width": cv.info.width, "height": cv.info.height, "fps": cv.info.fps, "frames": cv.info.frames,
                   "codec": cv.info.codec, "crops": [list(c) for c in cv.crops]}
        return PreparedInput("video", path, cv.tensor, [list(i) for i in cv.indices], views, details)
    path = Path(events)
    if exp["kind"] != "events":
        raise SVFormerError(f"{path}: the model {bundle_path.name} takes {exp['channels']}-channel video, not event "
                            "recordings (2 polarity channels); use --video FILE")
    if views != (1, 1):
        raise SVFormerError(f"--views {views[0]}x{views[1]}: event recordings give one view; use 1x1")
    from svformer_deploy.svformer.data.events import load_event_clip

    sensor = exp.get("sensor_size")
    clip = load_event_clip(path, T, size, exp.get("split", "number"), exp.get("fit", "auto"),
                           tuple(sensor) if sensor else None)
    return PreparedInput("events", path, clip[None], [None], views, {"events_framed": int(clip.sum())})


def simulate_file(video: str | Path | None = None, events: str | Path | None = None,
                  model: str | Path | None = None, views: tuple[int, int] = (1, 1), executor: str = "float",
                  out_dir: str | Path = DEFAULT_RUNS_DIR, kernel: str = "auto", cwd: str | Path = ".",
                  on_step: Callable[[int], None] | None = None, label: str | None = None) -> SimulationReport:
    """Simulate every view of ``video`` (or the ``events`` recording) and write one run record per view.

    ``executor``: ``"float"`` (the bundle's ``ir`` graph, float32) or ``"integer"`` (its
    ``ir_quantized`` graph, the fixed-point spec). ``on_step(t)`` is called after every time step
    (progress display). ``label``: the clip's true class, stored in the records' ``input.label``
    (dataset evaluations). Returns the report; raises ``SVFormerError`` for bad input.
    """
    t0 = time.perf_counter()
    if executor not in EXECUTORS:
        raise SVFormerError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    bundle = open_bundle(model, cwd)
    if executor == "integer" and not bundle.has("ir_quantized"):
        raise SVFormerError(f"{bundle.path}: exported without quantization (no ir_quantized graph), so the integer "
                            "executor has nothing to run; re-export with quantization or use --float")
    graph = bundle.graph("ir_quantized" if executor == "integer" else "ir")
    sim = Simulator(graph, mode=executor, kernel=kernel)
    T = sim.time_steps
    exp = _expected(bundle, sim.input_shape[1:], T)
    prepared = prepare_input(exp, video, events, views, bundle.path)
    class_names = bundle.class_names
    n_classes = sim.specs[sim.out_name].shape[0]
    if class_names and len(class_names) != n_classes:
        raise SVFormerError(f"{bundle.path}: the manifest names {len(class_names)} classes, the graph has {n_classes}")
    results = [sim.run(prepared.tensor[v], on_step=on_step) for v in range(prepared.tensor.shape[0])]
    if not all(np.isfinite(r.logits).all() for r in results):
        raise SVFormerError(f"{bundle.path}: the simulation overflowed (non-finite logits): the graph's values are "
                            f"out of range for the {executor} executor")
    digest = sha256_file(prepared.path)
    man = bundle.manifest
    model_info = {"hash": bundle.model_hash, "bundle": str(bundle.path.resolve()), "arch": man.get("arch"),
                  "config": man.get("config")}
    records = []
    for v, res in enumerate(results):
        inp = {"kind": prepared.kind, "path": str(prepared.path.resolve()), "sha256": digest, "view": v,
               "views": list(prepared.views), "frame_indices": prepared.frame_indices[v]}
        if label is not None:
            inp["label"] = label
        records.append(build_record(sim, res, model=model_info, input=inp, class_names=class_names))
    paths = write_records(records, out_dir, prepared.path.stem)
    return SimulationReport(bundle=bundle, executor=executor, input=prepared, simulator=sim, results=results,
                            records=records, record_paths=paths, class_names=class_names,
                            wall_s=time.perf_counter() - t0)
