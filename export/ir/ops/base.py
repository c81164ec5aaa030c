"""The contract every IR operation fulfils, and the small helpers the op families share.

An operation is one frozen dataclass (a subclass of :class:`Node`) that states, in its own
module, everything the toolchain does with it:

=================  ==========================================================================
hook               used by
=================  ==========================================================================
``infer``          shape rule: :func:`export.ir.add_op`, :func:`export.ir.validate`
``cost``           dense work (ANN counterpart): :func:`export.ir.node_cost`
``count``          exact per-step counts: ``simulators.counting.LayerCounter`` (``counted`` ops)
``sim_float``      float step function of the event-driven simulator (``simulators.executor``)
``sim_fixed``      integer step function of the simulator
``ref_float``      float semantics of the reference interpreter (``export.reference``); the
                   ONNX writer traces it (``model.onnx``, ``model_fp32.onnx``)
``ref_fixed``      fixed-point semantics of the reference interpreter; traced for ``model_int8.onnx``
``to_nir``         the NIR form the NIR writer emits (standard node, documented extension, or fan-in)
``netx_refusal``   why the op never runs in a netx/standard-NIR core chain, or None when it is a
                   chain layer (synapses or CUBA neuron; ``export.writers.partition`` decides)
=================  ==========================================================================

The hooks receive the caller as a *backend* (a cost input, a layer counter, the simulator, the
reference model, a NIR context) and use only what it offers, so the op modules import nothing
from the simulators or the writers (dependencies point one way) and torch only inside the hooks
that execute. :data:`HOOKS` lists them; ``tests/test_op_registry.py`` checks that every class in
``NODE_TYPES`` defines each one itself (a family base counts) rather than inheriting the
:class:`Node` placeholder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..tensor import IRError, Shape, TensorSpec

WEIGHTED = ("conv2d", "linear", "conv3d")  # ops with a weight matrix (synapses)
HOOKS = ("infer", "cost", "count", "sim_float", "sim_fixed", "ref_float", "ref_fixed", "to_nir", "netx_refusal")


@dataclass(frozen=True)
class CostInput:
    """What :meth:`Node.cost` may read: T, the node's output spec and its input specs."""

    time_steps: int
    out: TensorSpec
    ins: tuple[TensorSpec, ...]

    @property
    def n_out(self) -> int:
        """Output elements per step (or per clip)."""
        return int(np.prod(self.out.shape))

    @property
    def steps(self) -> int:
        """How often the node runs per clip: T at step rate, 1 at clip rate."""
        return self.time_steps if self.out.rate == "step" else 1


def no_cost() -> dict[str, int]:
    """The cost of an op without arithmetic or parameters."""
    return {"macs": 0, "elementwise": 0, "params": 0}


@dataclass(frozen=True, eq=False)
class Node:
    """Base class of IR operations. Subclasses set ``op`` (the type name in files) and ``arity``
    and define every hook of :data:`HOOKS` (module docstring)."""

    op: ClassVar[str] = ""
    arity: ClassVar[int] = 1
    accepts_clip: ClassVar[bool] = False  # may run on clip-rate tensors (after the head conv)
    accumulates: ClassVar[bool] = False  # reads step-rate input, emits once per clip (the head conv3d)
    counted: ClassVar[bool] = False  # does arithmetic: a layer of the run record, with a counting rule

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:  # pragma: no cover - abstract
        """Output spec from the input specs (raises :class:`IRError` on a mismatch)."""
        raise NotImplementedError

    def cost(self, c: CostInput) -> dict[str, int]:  # pragma: no cover - abstract
        """Dense work per clip: ``macs``, ``elementwise``, ``params`` (see :func:`export.ir.node_cost`)."""
        raise NotImplementedError

    def count(self, c: Any) -> Any:  # pragma: no cover - abstract
        """Counting rule: set the static counts on the layer counter ``c`` and return the per-step
        function ``(col, ins, out, nnz_in, nnz_out) -> None`` of the activity-dependent counts, or None."""
        raise NotImplementedError

    def sim_float(self, sim: Any, n: str) -> Any:  # pragma: no cover - abstract
        """The simulator's float step function ``(t, ins, nnz_in) -> Tensor`` of node ``n`` (built once)."""
        raise NotImplementedError

    def sim_fixed(self, sim: Any, n: str) -> Any:  # pragma: no cover - abstract
        """The simulator's integer step function of node ``n`` (built once)."""
        raise NotImplementedError

    def ref_float(self, ref: Any, n: str, t: int, ins: list[Any], state: dict) -> Any:  # pragma: no cover
        """The reference interpreter's float output of node ``n`` at step ``t`` (batched tensors)."""
        raise NotImplementedError

    def ref_fixed(self, ref: Any, n: str, t: int, ins: list[Any], state: dict) -> Any:  # pragma: no cover
        """The reference interpreter's fixed-point output (integers held in float64)."""
        raise NotImplementedError

    def to_nir(self, x: Any) -> Any:  # pragma: no cover - abstract
        """The NIR node of this op; ``x`` is the NIR writer's context (``nir`` module, extensions, shapes)."""
        raise NotImplementedError

    def netx_refusal(self) -> str | None:  # pragma: no cover - abstract
        """Why this op never runs on a sequential spiking core, or None for a chain layer."""
        raise NotImplementedError

    def ref_setup(self, ref: Any, n: str) -> None:
        """Register what the ``ref_*`` hooks read through ``ref.p``: the op's float arrays, or in fixed mode its
        quant arrays plus 2^(shift-1) and 2^-shift for the rounding right shifts (exact in float64).
        Weights of weighted ops use the reference's weight dtype. Ops needing more extend this."""
        src = ref.quant(n) if ref.mode == "fixed" else self.arrays()
        for field, arr in src.items():
            ref.buffer(n, field, arr, ref.weight_dtype(n) if field == "weight" and self.op in WEIGHTED else None)
        q = ref.quant(n)
        if ref.mode == "fixed" and "shift" in q:
            s = np.asarray(q["shift"], dtype=np.int64)
            ref.buffer(n, "half", np.where(s > 0, np.ldexp(1.0, np.maximum(s - 1, 0)), 0.0))
            ref.buffer(n, "inv", np.ldexp(1.0, -s))

    def arrays(self) -> dict[str, np.ndarray]:
        """The node's numpy parameters by field name (``None`` fields omitted)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), np.ndarray)}

    def attributes(self) -> dict[str, Any]:
        """The node's non-array fields (JSON-serialisable scalars, strings, tuples)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, np.ndarray):
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


class NoArithmetic:
    """Mixin of ops that move data only: no dense cost, not a counted layer."""

    def cost(self, c: CostInput) -> dict[str, int]:
        return no_cost()

    def count(self, c: Any) -> None:
        return None


class Layout(NoArithmetic):
    """Mixin of ops that only move data. One batch-agnostic :meth:`move` is their semantics everywhere:
    codes move unchanged, so float and fixed point agree; ``lead`` is the number of leading batch axes
    (1 in the simulator and in the reference interpreter)."""

    def move(self, ins: list[Any], lead: int, rank: int) -> Any:  # pragma: no cover - abstract
        """The output for inputs ``ins`` with ``lead`` batch axes; ``rank``: the per-step output rank."""
        raise NotImplementedError

    def sim_float(self, sim: Any, n: str) -> Any:
        move, rank = self.move, sim.rank(n)
        return lambda t, ins, nnz: move(ins, 1, rank)  # the simulator's tensors lead with the batch axis

    sim_fixed = sim_float

    def ref_float(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        return self.move(ins, 1, ref.rank[n])

    ref_fixed = ref_float


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise IRError(msg)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int | np.integer) else (int(v[0]), int(v[1]))


def _per_channel(arr: np.ndarray | None, shape: Shape, axis: int, steps_ok: bool, what: str) -> None:
    if arr is None:
        return
    c = shape[axis]
    ok = arr.shape == (c,) or (steps_ok and arr.ndim == 2 and arr.shape[1] == c)
    _need(ok, f"{what} shape {arr.shape} does not fit {c} channels (expected [{c}] or [T, {c}])")
