"""Streaming inference: feed a bundle's one-step ONNX graph (``model_step.onnx``) one frame at a time.

:class:`StreamSession` opens the bundle's ``onnx_step`` file (checked against the manifest's size
and SHA-256 before onnxruntime sees it), keeps every state tensor the manifest lists (zeros at the
start of a clip) and advances one step per :meth:`StreamSession.step`. :meth:`save_state` /
:meth:`restore_state` move the state (and the next step index) out of and into a session, so that a
stream can stop and resume later in another process or another onnxruntime session with the same
result. Every bad input (frame size, state shape or dtype, step index) is an ``SVFormerError``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from svformer_deploy.export.bundle import Bundle, load_bundle
from svformer_deploy.svformer.errors import SVFormerError

ROLE = "onnx_step"
_DTYPES = {"float64": np.float64, "float32": np.float32, "int64": np.int64}


@dataclass
class StepOutput:
    """What one step returned: ``logits`` ``[B, classes]`` (the clip's once ``t = T - 1`` was fed) and
    ``spikes`` per neuron layer ``[B, ...]`` (bool)."""

    t: int
    logits: np.ndarray
    spikes: dict[str, np.ndarray]
    final: bool  # t was the clip's last step


class StreamSession:
    """One stream of clips through ``model``'s step graph (``batch`` clips side by side)."""

    def __init__(self, model: str | Path | Bundle, batch: int = 1, threads: int | None = None):
        self.bundle = model if isinstance(model, Bundle) else load_bundle(model)
        info = self.bundle.manifest.get("onnx_step")
        if not isinstance(info, dict) or not self.bundle.has(ROLE):
            raise SVFormerError(f"{self.bundle.path}: the bundle has no one-step ONNX graph (model_step.onnx); "
                                "re-export with --onnx step or --onnx both")
        if not isinstance(batch, int) or not 1 <= batch <= 4096:
            raise SVFormerError(f"batch must be an integer in [1, 4096], got {batch!r}")
        self.batch = batch
        self.mode = str(info.get("mode"))
        self.time_steps = int(self.bundle.manifest["config"]["time_steps"])
        ins = {d["name"]: d for d in info["inputs"]}
        self.frame_dtype = _DTYPES[ins["frame"]["dtype"]]
        self.frame_shape = tuple(int(v) for v in self.bundle.manifest["input"]["shape"][1:])
        self.states = {s["name"]: (tuple(int(v) for v in s["shape"][1:]), _DTYPES[s["dtype"]])
                       for s in info["states"]}
        self._outputs = {s["output"]: s["name"] for s in info["states"]}
        path = self.bundle.file(ROLE)  # size and SHA-256 against the manifest
        self.session = _session(path, threads)
        got = [i.name for i in self.session.get_inputs()]
        want = ["frame", "t", *self.states]
        if got != want:
            raise SVFormerError(f"{path}: the step graph's inputs {got} are not the ones the manifest lists {want}")
        self._names = [o.name for o in self.session.get_outputs()]
        self.reset()

    # -- state ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new clip: zero states, next step 0."""
        self.t = 0
        self.state = {n: np.zeros((self.batch, *shape), dtype) for n, (shape, dtype) in self.states.items()}

    @property
    def state_bytes(self) -> int:
        """Memory of the state this session carries (bytes, all ``batch`` streams)."""
        return sum(v.nbytes for v in self.state.values())

    def save_state(self) -> dict[str, Any]:
        """A copy of the stream position: ``{"t": next step, "states": {name: array}}``."""
        return {"t": self.t, "states": {n: v.copy() for n, v in self.state.items()}}

    def restore_state(self, saved: dict[str, Any]) -> None:
        """Continue from :meth:`save_state`'s result (of this model; shapes and dtypes are checked)."""
        if not isinstance(saved, dict) or not isinstance(saved.get("states"), dict):
            raise SVFormerError("a saved stream state must be {'t': int, 'states': {name: array}}")
        t = saved.get("t")
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t <= self.time_steps:
            raise SVFormerError(f"saved step index {t!r} is outside [0, {self.time_steps}]")
        states = saved["states"]
        if set(states) != set(self.states):
            missing, extra = sorted(set(self.states) - set(states)), sorted(set(states) - set(self.states))
            raise SVFormerError(f"saved state does not fit this model: missing {missing}, unknown {extra}")
        new = {}
        for n, v in states.items():
            new[n] = self._check_state(n, v)
        self.t, self.state = int(t), new

    def _check_state(self, name: str, v: Any) -> np.ndarray:
        shape, dtype = self.states[name]
        if not isinstance(v, np.ndarray):
            raise SVFormerError(f"state {name}: expected a numpy array, got {type(v).__name__}")
        if v.dtype != dtype:
            raise SVFormerError(f"state {name}: dtype {v.dtype}, the model needs {np.dtype(dtype)}")
        if tuple(v.shape) != (self.batch, *shape):
            raise SVFormerError(f"state {name}: shape {list(v.shape)}, the model needs {[self.batch, *shape]}")
        if not np.isfinite(v).all():
            raise SVFormerError(f"state {name}: non-finite values")
        return np.ascontiguousarray(v).copy()

    # -- running ----------------------------------------------------------------------------------
    def step(self, frame: Any, t: int | None = None) -> StepOutput:
        """Feed one frame (``[C, H, W]`` for batch 1, or ``[B, C, H, W]``) at step ``t`` (default: the next one)."""
        t = self.t if t is None else t
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < self.time_steps:
            raise SVFormerError(f"step index {t!r} is outside [0, {self.time_steps}) (the model has T = "
                                f"{self.time_steps}; reset() starts a new clip)")
        x = np.asarray(frame.numpy() if hasattr(frame, "numpy") else frame)
        if x.ndim == len(self.frame_shape) and self.batch == 1:
            x = x[None]
        if tuple(x.shape) != (self.batch, *self.frame_shape):
            raise SVFormerError(f"frame of shape {list(x.shape)} does not fit the model: expected "
                                f"{[self.batch, *self.frame_shape]} ([B, C, H, W])")
        if x.dtype.kind not in "fiub":
            raise SVFormerError(f"frame dtype {x.dtype} is not numeric")
        feed = {"frame": np.ascontiguousarray(x, dtype=self.frame_dtype), "t": np.array(t, dtype=np.int64),
                **self.state}
        outs = self.session.run(None, feed)
        spikes = {}
        for name, v in zip(self._names[1:], outs[1:], strict=True):
            if name in self._outputs:
                self.state[self._outputs[name]] = v
            else:
                spikes[name.removeprefix("spikes.")] = v != 0
        self.t = int(t) + 1
        return StepOutput(t=int(t), logits=outs[0].astype(np.float64), spikes=spikes, final=self.t == self.time_steps)

    def run(self, frames: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """A whole clip ``[T, C, H, W]`` (batch 1) or ``[T, B, C, H, W]`` from zero state: logits ``[B, classes]`` and
        spikes per neuron layer ``[T, B, ...]``."""
        self.reset()
        outs = [self.step(frames[t]) for t in range(self.time_steps)]
        return outs[-1].logits, {n: np.stack([o.spikes[n] for o in outs]) for n in outs[0].spikes}


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise SVFormerError(f"{path}: onnxruntime cannot load the file ({type(e).__name__}: {e})") from None


def stream_file(video: str | Path | None = None, events: str | Path | None = None,
                model: str | Path | None = None, views: tuple[int, int] = (1, 1), integer: bool = False,
                cwd: str | Path = ".", on_step: Callable[[int, int, list[list[Any]]], None] | None = None
                ) -> dict[str, Any]:
    """``simulate --runtime onnx``: every view of the clip through the bundle's step graph in onnxruntime.

    ``on_step(view, t, top5)`` is called after every step with the running top-5 (logits of the views
    finished so far plus this view's current ones). Returns the ``--json`` document (no op counts and no
    run records: those come from the graph simulator)."""
    from .record import top_k
    from .run import bundle_input_spec, open_bundle, prepare_input

    t0 = time.perf_counter()
    bundle = open_bundle(model, cwd)
    session = StreamSession(bundle)
    if integer and session.mode != "fixed":
        raise SVFormerError(f"{bundle.path}: the step graph is {session.mode}, not fixed-point: --integer needs a "
                            "bundle exported with quantization")
    spec = bundle_input_spec(bundle)
    spec.check_shape(session.frame_shape, session.time_steps, where=str(bundle.path))
    prepared = prepare_input(spec, video, events, views, bundle.path)
    names = bundle.class_names
    total = None
    step_s = []
    for v in range(prepared.tensor.shape[0]):
        session.reset()
        frames = prepared.tensor[v].numpy()
        for t in range(session.time_steps):
            s0 = time.perf_counter()
            out = session.step(frames[t])
            step_s.append(time.perf_counter() - s0)
            running = out.logits[0] if total is None else total + out.logits[0]
            if on_step is not None:
                on_step(v, t, top_k(running, names))
        total = running
    if not np.isfinite(total).all():
        raise SVFormerError(f"{bundle.path}: the step graph overflowed (non-finite logits)")
    inp = prepared
    return {
        "video": str(inp.path) if inp.kind == "video" else None,
        "events": str(inp.path) if inp.kind == "events" else None,
        "input_kind": inp.kind, "input_encoding": inp.details.get("encoding"),
        "model": str(bundle.path), "model_hash": bundle.model_hash,
        "runtime": "onnx", "file": bundle.manifest["files"][ROLE]["path"], "mode": session.mode,
        "time_steps": session.time_steps, "input_shape": [session.time_steps, *session.frame_shape],
        "views": int(prepared.tensor.shape[0]), "views_spec": list(inp.views), "frame_indices": inp.frame_indices,
        "top5": top_k(total, names), "logits": [float(x) for x in total],
        "timing": {"wall_s": time.perf_counter() - t0, "steps": len(step_s),
                   "step_median_s": float(np.median(step_s)), "step_p99_s": float(np.percentile(step_s, 99))},
        "state_bytes": session.state_bytes,
    }


def render_stream(doc: dict[str, Any]) -> str:
    """The terminal report of :func:`stream_file`."""
    src = doc["video"] or doc["events"]
    v = doc["views"]
    lines = [f"model     {doc['model']} (hash {doc['model_hash'][:12]}, onnxruntime {doc['file']}, {doc['mode']})",
             f"input     {src}: {doc['input_kind']}, {v} view(s) of {list(doc['input_shape'])} [T, C, H, W]", "",
             f"top-5 (logits{' summed over ' + str(v) + ' views' if v > 1 else ''}):"]
    lines += [f"  {i}. {label:<32} {score:10.4f}" for i, (label, score) in enumerate(doc["top5"], 1)]
    t = doc["timing"]
    lines += ["", f"time      {t['wall_s']:.2f} s ({t['steps']} steps, median {1e3 * t['step_median_s']:.2f} ms, "
                  f"p99 {1e3 * t['step_p99_s']:.2f} ms per step; state {doc['state_bytes'] / 2**20:.2f} MiB "
                  "per stream)",
              "counts    none: the ONNX runtime does not count operations (use the default --runtime graph)"]
    return "\n".join(lines)
