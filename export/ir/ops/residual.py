"""The membrane shortcut :class:`Add` (a residual add of two real streams)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..tensor import REAL, TensorSpec
from .base import CostInput, Node, _need


@dataclass(frozen=True, eq=False)
class Add(Node):
    """Membrane shortcut: Y[t] = X0[t] + X1[t] (port 0: the residual stream, port 1: the branch).

    Fixed point: y = sat_a(q0 + q1) (the quantize pass gives both inputs one scale).
    """

    op: ClassVar[str] = "add"
    arity: ClassVar[int] = 2
    accepts_clip: ClassVar[bool] = True
    counted: ClassVar[bool] = True

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        a, b = ins
        _need(a.shape == b.shape and a.rate == b.rate, f"add inputs differ: {a.shape} vs {b.shape}")
        return TensorSpec(a.shape, REAL, a.rate)

    def cost(self, c: CostInput) -> dict[str, int]:
        return {"macs": 0, "elementwise": c.steps * c.n_out, "params": 0}

    def count(self, c: Any) -> None:
        c.set("add", c.n_out)
        return None

    def sim_float(self, sim: Any, n: str) -> Any:
        return lambda t, ins, nnz: ins[0] + ins[1]

    def sim_fixed(self, sim: Any, n: str) -> Any:
        bits, sat = int(sim.quant(n)["bits"]), sim.fixed.sat
        return lambda t, ins, nnz: sat(ins[0] + ins[1], bits)

    def ref_float(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        return ins[0] + ins[1]

    def ref_fixed(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        return ref.sat(ins[0] + ins[1], ref.p(n, "bits"))

    def to_nir(self, x: Any) -> Any:  # no node: NIR sums the edges entering a node, so consumers get both inputs
        return x.fan_in(metadata=x.meta)

    def netx_refusal(self) -> str | None:
        return "residual add (membrane shortcut): netx chains are strictly sequential (no fan-in)"
