"""The one-step ONNX graph (``model_step.onnx``): one frame in, explicit state in and out.

:class:`StepModel` wraps a :class:`export.reference.ReferenceModel` and runs *one* time step of it
with the state passed in and returned, calling the same per-op hooks (``ref_float``/``ref_fixed``
in ``export/ir/ops``) that the unrolled ``model.onnx`` is exported from; only the loop over T moves
out of the graph. Inputs:

- ``frame`` ``[B, C, H, W]`` (float64 for ``"float64"``, float32 otherwise, as the unrolled file),
- ``t`` int64 scalar ``[]``: the step index; per-step parameters (the ``[T, C]`` scale/bias
  of an affine left by time-dependent BN) are indexed by it inside the graph (a Gather),
- ``state.<node>`` for every neuron (its membrane, shape of its output) and for every accumulating
  head (``state.<head>``: its running sum ``[B, C_out]``, the Conv3d taps of steps ``0..t`` applied to
  their inputs; the op's ``ref_accumulate`` / ``ref_emit`` hooks in ``export/ir/ops``).

Outputs: ``logits`` ``[B, classes]`` (the clip's logits once ``t = T - 1`` has been fed; before that
they are the head applied to the steps so far), ``new_state.<node>`` for every state, then
``spikes.<node>`` (0/1, the state's dtype) for every neuron layer at this step. Initial states are
zeros (:func:`state_specs`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch
from torch import Tensor, nn

from ..fidelity import batches
from ..reference import ReferenceModel
from .onnx_writer import (
    DETAILS,
    OUTPUT_NAME,
    OnnxCheck,
    _mode,
    compare_logits,
    export_module,
    input_dtype,
    onnx_module,
    reference_logits,
    session,
)

FRAME_NAME = "frame"
STEP_NAME = "t"
STATE_PREFIX = "state."
NEW_STATE_PREFIX = "new_state."
SPIKE_PREFIX = "spikes."


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of the step graph: ONNX input ``name``, per-clip ``shape`` (batch excluded), dtype."""

    node: str
    kind: str  # "membrane" or "head_accumulator"
    shape: tuple[int, ...]
    dtype: str

    @property
    def name(self) -> str:
        return STATE_PREFIX + self.node

    @property
    def output(self) -> str:
        return NEW_STATE_PREFIX + self.node

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "output": self.output, "node": self.node, "kind": self.kind,
                "shape": ["B", *self.shape], "dtype": self.dtype, "init": "zeros"}


class StepModel(nn.Module):
    """One time step of ``ref`` with explicit state: ``forward(frame, t, *states) -> (logits, *new_states,
    *spikes)``."""

    def __init__(self, ref: ReferenceModel):
        super().__init__()
        self.ref = ref
        self.time_steps = ref.time_steps
        self.neurons = [n for n in ref.step_nodes if ref.ops[n].op == "neuron"]
        self.states = state_specs_of(ref)
        self.eval()

    def forward(self, frame: Tensor, t: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        ref = self.ref
        t = t.reshape(())
        state = {s.node: v for s, v in zip(self.states, states, strict=True) if s.kind == "membrane"}
        env: dict[str, Tensor] = {}
        for n in ref.step_nodes:
            ins = [frame] if n == ref.in_name else [env[i] for i in ref.inputs[n]]
            env[n] = ref._fns[n](ref, n, t, ins, state)
        env_step = env
        new: dict[str, Tensor] = dict(state)
        for s, v in zip(self.states, states, strict=True):
            if s.kind == "head_accumulator":
                new[s.node] = ref.ops[s.node].ref_accumulate(ref, s.node, t, env[ref.inputs[s.node][0]], v)
        env = {}
        for n in ref.clip_nodes:
            if n in ref.heads:
                env[n] = ref.ops[n].ref_emit(ref, n, new[n])
            else:
                env[n] = ref._fns[n](ref, n, self.time_steps - 1, [env[i] for i in ref.inputs[n]], {})
        spikes = [env_step[n] for n in self.neurons]
        return (env[ref.out_name], *(new[s.node] for s in self.states), *spikes)


def state_specs_of(ref: ReferenceModel) -> list[StateSpec]:
    dt = str(ref.dtype).removeprefix("torch.")
    out = []
    for n in ref.step_nodes:
        if ref.ops[n].op == "neuron":
            out.append(StateSpec(n, "membrane", tuple(ref.specs[n].shape), dt))
    for n in ref.heads:
        out.append(StateSpec(n, "head_accumulator", (int(ref.specs[n].shape[0]),), dt))
    return out


def step_module(graph: nx.DiGraph, mode: str = "float64") -> StepModel:
    """The module ``model_step.onnx`` is exported from, for ``mode`` (as :func:`onnx_writer.onnx_module`)."""
    return StepModel(onnx_module(graph, mode))


def state_specs(graph: nx.DiGraph, mode: str = "float64") -> list[StateSpec]:
    return step_module(graph, mode).states


def zero_states(specs: list[StateSpec], batch: int) -> dict[str, Tensor]:
    return {s.name: torch.zeros(batch, *s.shape, dtype=getattr(torch, s.dtype)) for s in specs}


def write_onnx_step(graph: nx.DiGraph, path: str | Path, mode: str = "float64", opset: int | None = None) -> Path:
    """Export one step of ``graph`` to ``path`` (atomically), batch axis dynamic."""
    path = Path(path)
    mode = _mode(mode)
    module = step_module(graph, mode)
    ref = module.ref
    b = 2
    frame = torch.zeros(b, *ref.specs[ref.in_name].shape, dtype=input_dtype(mode))
    states = list(zero_states(module.states, b).values())
    names = [FRAME_NAME, STEP_NAME, *(s.name for s in module.states)]
    outs = [OUTPUT_NAME, *(s.output for s in module.states), *(SPIKE_PREFIX + n for n in module.neurons)]
    args = (frame, torch.tensor(1, dtype=torch.int64), *states)
    dyn = {name: {0: "batch"} for name in [*names, *outs] if name != STEP_NAME}
    return export_module(module, args, path, names, outs, dyn, opset, "ONNX step export")


def step_io(specs: list[StateSpec], mode: str) -> dict[str, Any]:
    """The manifest's ``onnx_step`` inputs/outputs/states for a step file written in ``mode``."""
    frames = str(input_dtype(mode)).removeprefix("torch.")
    logits = "float32" if mode == "float32" else "float64"
    return {"mode": mode,
            "inputs": [{"name": FRAME_NAME, "shape": ["B", "C", "H", "W"], "dtype": frames},
                       {"name": STEP_NAME, "shape": [], "dtype": "int64", "range": "0 <= t < T"},
                       *({"name": s.name, "shape": ["B", *s.shape], "dtype": s.dtype} for s in specs)],
            "outputs": [{"name": OUTPUT_NAME, "shape": ["B", "classes"], "dtype": logits,
                         "valid": "after t = T - 1"},
                        *({"name": s.output, "shape": ["B", *s.shape], "dtype": s.dtype} for s in specs),
                        *({"name": SPIKE_PREFIX + s.node, "shape": ["B", *s.shape], "dtype": s.dtype, "values": "0/1"}
                          for s in specs if s.kind == "membrane")],
            "states": [s.to_dict() for s in specs]}


def check_onnx_step(path: str | Path, graph: nx.DiGraph, inputs: Tensor, mode: str = "float64",
                    label: str = "onnx step", batch_size: int = 8, reference: Tensor | None = None) -> OnnxCheck:
    """Run the step file ``path`` in onnxruntime over every clip of ``inputs`` ``[T, B, C, H, W]`` (all clips side
    by side, state carried between calls) and compare the logits after the last step with the graph in PyTorch
    (as :func:`onnx_writer.check_onnx`: the float64 graph with native convolutions, or the exact integer spec;
    ``reference``: its logits when already computed on ``inputs``)."""
    mode = _mode(mode)
    sess = session(path)
    specs = step_module(graph, mode).states
    want = reference_logits(graph, mode, reference)
    out_names = [o.name for o in sess.get_outputs()]

    def pairs() -> Iterator[tuple[Tensor, Tensor]]:
        for i, x in enumerate(batches(inputs, batch_size)):
            x = x.to(input_dtype(mode)).contiguous()
            states = {k: v.numpy() for k, v in zero_states(specs, x.shape[1]).items()}
            for t in range(x.shape[0]):
                outs = dict(zip(out_names, sess.run(None, {FRAME_NAME: x[t].numpy(),
                                                           STEP_NAME: np.array(t, dtype=np.int64), **states}),
                                strict=True))
                states = {s.name: outs[s.output] for s in specs}
            yield torch.from_numpy(outs[OUTPUT_NAME]), want(x, i * batch_size)

    detail = "onnxruntime, one call per step with the state carried over, vs " + DETAILS[mode].split(" vs ", 1)[1]
    return compare_logits(label, mode, pairs(), detail)
