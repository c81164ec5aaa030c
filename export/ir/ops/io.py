"""Graph boundary operations: :class:`Input` (frames in) and :class:`Output` (logits out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..tensor import REAL, STEP, Shape, TensorSpec
from .base import NoArithmetic, Node, _need


@dataclass(frozen=True, eq=False)
class Input(NoArithmetic, Node):
    """Frames entering the network: X[t] = frame t of the clip, t = 0..T-1.

    ``shape`` = [C, H, W] per step. ``encoding``: ``"pixels"`` (normalised analog values: the first
    conv does real multiplies) or ``"events"`` (per-step event counts per polarity channel).
    Executors call the step hooks with ``ins = [frame t]``. Fixed point: q = sat(round_half_even(x / scale)).
    """

    op: ClassVar[str] = "input"
    arity: ClassVar[int] = 0
    shape: Shape = ()
    encoding: str = "pixels"

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        _need(len(self.shape) == 3 and all(s > 0 for s in self.shape), f"input shape {self.shape} is not [C, H, W]")
        _need(self.encoding in ("pixels", "events"), f"unknown input encoding {self.encoding!r}")
        return TensorSpec(tuple(self.shape), REAL, STEP)

    def sim_float(self, sim: Any, n: str) -> Any:
        dt = sim.dtype
        return lambda t, ins, nnz: ins[0].to(dt)

    def sim_fixed(self, sim: Any, n: str) -> Any:
        q, quantize = sim.quant(n), sim.fixed.quantize_input
        scale, bits = float(q["scale"]), int(q["bits"])
        return lambda t, ins, nnz: quantize(ins[0], scale, bits)

    def ref_float(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        return ins[0].to(ref.dtype)

    def ref_fixed(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        import torch

        s, bits = ref.p(n, "scale"), ref.p(n, "bits")
        return ref.sat(torch.round(ins[0].to(torch.float64) / s), bits)

    def to_nir(self, x: Any) -> Any:
        return x.nir.Input(input_type={"input": x.shape}, metadata=x.meta)

    def netx_refusal(self) -> str | None:
        return (f"real-valued input ({self.encoding}): netx input layers and the chain take binary spikes; "
                "the first layer multiplies real values on the host")


@dataclass(frozen=True, eq=False)
class Output(NoArithmetic, Node):
    """The logits Y = X (identity); input [classes] at clip rate. Fixed point: logits = q·scale."""

    op: ClassVar[str] = "output"
    accepts_clip: ClassVar[bool] = True

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        return ins[0]

    def sim_float(self, sim: Any, n: str) -> Any:
        return lambda t, ins, nnz: ins[0]

    def sim_fixed(self, sim: Any, n: str) -> Any:
        import torch

        scale = sim.tensor(sim.quant(n)["scale"], torch.float64)
        return lambda t, ins, nnz: ins[0].to(torch.float64) * scale

    def ref_float(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        return ins[0]

    def ref_fixed(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        return ins[0] * ref.p(n, "scale")

    def to_nir(self, x: Any) -> Any:
        return x.nir.Output(output_type={"output": x.shape}, metadata=x.meta)

    def netx_refusal(self) -> str | None:
        return "clip-rate logits, read by the host"
