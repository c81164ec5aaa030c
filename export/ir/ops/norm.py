"""Per-channel normalisation: :class:`BatchNorm` (before folding) and :class:`Affine` (what folding leaves)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..tensor import CLIP, REAL, IRError, TensorSpec
from .base import CostInput, Node, _need, _per_channel


def _elementwise_cost(op: Node, c: CostInput) -> dict[str, int]:
    return {"macs": 0, "elementwise": c.steps * c.n_out, "params": sum(a.size for a in op.arrays().values())}


@dataclass(frozen=True, eq=False)
class BatchNorm(Node):
    """Batch normalisation with running statistics (inference), before folding.

    Y[t][c] = (X[t][c] - μ[t, c]) / sqrt(σ²[t, c] + ε) · γ[t, c] + β[t, c]
    Arrays are [T, C] for time-dependent BN (TDBN: one BN channel per (step, channel) pair) or [C]
    for plain BN (then the t index is dropped). ``axis`` is the channel axis of the per-step tensor
    (0 for [C, H, W] and the head's [C, 1, 1, 1], -1 for tokens [N, C]). No fixed-point form:
    ``quantize`` runs after ``fold_bn``.
    """

    op: ClassVar[str] = "batchnorm"
    accepts_clip: ClassVar[bool] = True
    counted: ClassVar[bool] = True
    mean: np.ndarray = None
    var: np.ndarray = None
    weight: np.ndarray = None
    bias: np.ndarray = None
    eps: float = 1e-5
    axis: int = 0

    @property
    def per_step(self) -> bool:
        return self.mean.ndim == 2

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        x = ins[0]
        _need(-len(x.shape) <= self.axis < len(x.shape), f"batchnorm axis {self.axis} out of range for {x.shape}")
        for name in ("mean", "var", "weight", "bias"):
            arr = getattr(self, name)
            _need(arr is not None and arr.shape == self.mean.shape, f"batchnorm {name} must have the shape of mean")
            _per_channel(arr, x.shape, self.axis, True, f"batchnorm {name}")
        _need(not (self.per_step and x.rate == CLIP), "a per-step batchnorm cannot run at clip rate")
        return TensorSpec(x.shape, REAL, x.rate)

    def cost(self, c: CostInput) -> dict[str, int]:
        return _elementwise_cost(self, c)

    def count(self, c: Any) -> None:
        c.set("mul", c.n_out)
        c.set("add", c.n_out)
        c.set("weight_reads", 2 * c.n_out)
        return None

    def sim_float(self, sim: Any, n: str) -> Any:
        import torch.nn.functional as F

        rank, dt = sim.rank(n), sim.dtype
        arrs = [sim.tensor(getattr(self, f), dt) for f in ("mean", "var", "weight", "bias")]
        last = rank > 1 and self.axis % rank == rank - 1
        per_step, eps = self.per_step, self.eps

        def fn(t, ins, nnz):
            args = [a[t] if per_step else a for a in arrs]
            x = ins[0]  # [B, ...]
            if last:
                return F.batch_norm(x.transpose(1, -1), *args, False, 0.0, eps).transpose(1, -1)
            return F.batch_norm(x, *args, False, 0.0, eps)
        return fn

    def sim_fixed(self, sim: Any, n: str) -> Any:
        raise IRError(f"{n}: batchnorm has no fixed-point semantics (quantize runs after fold_bn)")

    def ref_float(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        import torch.nn.functional as F

        x = ins[0]
        sel = (lambda a: a[t]) if self.per_step else (lambda a: a)
        args = [sel(ref.p(n, f)) for f in ("mean", "var", "weight", "bias")]
        if self.axis % ref.rank[n] == ref.rank[n] - 1 and ref.rank[n] > 1:
            y = F.batch_norm(x.transpose(1, -1), args[0], args[1], args[2], args[3], False, 0.0, self.eps)
            return y.transpose(1, -1)
        return F.batch_norm(x, args[0], args[1], args[2], args[3], False, 0.0, self.eps)

    def ref_fixed(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        raise IRError(f"{n}: batchnorm has no fixed-point semantics (quantize runs after fold_bn)")

    def to_nir(self, x: Any) -> Any:
        return x.ext.SVFBatchNorm(x.in_shape, x.shape, self.mean, self.var, self.weight, self.bias, self.eps,
                                  self.axis, metadata=x.meta)

    def netx_refusal(self) -> str | None:
        return "unfolded BatchNorm: run fold_bn first"


@dataclass(frozen=True, eq=False)
class Affine(Node):
    """Per-step, per-channel scale and bias: Y[t][c] = A[t, c] · X[t][c] + B[t, c].

    ``scale``/``bias``: [T, C] (time-dependent; what TDBN folding leaves), [C] (time-independent) or
    None (1 and 0). ``axis``: channel axis of the per-step tensor, as for :class:`BatchNorm`.
    Fixed point: y[t] = sat_a(rshift(x[t], m[t, c], shift[t, c]) + bias[t, c]).
    """

    op: ClassVar[str] = "affine"
    accepts_clip: ClassVar[bool] = True
    counted: ClassVar[bool] = True
    scale: np.ndarray | None = None
    bias: np.ndarray | None = None
    axis: int = 0

    @property
    def per_step(self) -> bool:
        return any(a is not None and a.ndim == 2 for a in (self.scale, self.bias))

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        x = ins[0]
        _need(-len(x.shape) <= self.axis < len(x.shape), f"affine axis {self.axis} out of range for {x.shape}")
        _per_channel(self.scale, x.shape, self.axis, True, "affine scale")
        _per_channel(self.bias, x.shape, self.axis, True, "affine bias")
        _need(not (self.per_step and x.rate == CLIP), "a per-step affine cannot run at clip rate")
        return TensorSpec(x.shape, REAL, x.rate)

    def cost(self, c: CostInput) -> dict[str, int]:
        return _elementwise_cost(self, c)

    def count(self, c: Any) -> None:
        mul = c.n_out if self.scale is not None else 0
        add = c.n_out if self.bias is not None else 0
        c.set("mul", mul)
        c.set("add", add)
        c.set("weight_reads", mul + add)
        return None

    def sim_float(self, sim: Any, n: str) -> Any:
        s = sim.per_step_views(n, self.scale, sim.dtype, self.axis)
        b = sim.per_step_views(n, self.bias, sim.dtype, self.axis)

        def fn(t, ins, nnz):
            y = ins[0]
            if s is not None:
                y = y * s[t]
                if b is not None:
                    y.add_(b[t])  # same rounding as y + b, one allocation less
            elif b is not None:
                y = y + b[t]
            return y
        return fn

    def sim_fixed(self, sim: Any, n: str) -> Any:
        import torch

        q, fixed = sim.quant(n), sim.fixed
        m = sim.per_step_views(n, q["m"], torch.int64, self.axis)
        s = sim.per_step_views(n, q["shift"], torch.int64, self.axis)
        b = sim.per_step_views(n, q.get("bias"), torch.int64, self.axis)
        bits = int(q["bits"])

        def fn(t, ins, nnz):
            y = fixed.rshift(ins[0], m[t], s[t])
            if b is not None:
                y = y + b[t]
            return fixed.sat(y, bits)
        return fn

    def ref_float(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        y = ins[0]
        s, b = ref.p(n, "scale"), ref.p(n, "bias")
        if s is not None:
            y = y * ref.view(s[t] if s.dim() == 2 else s, ref.rank[n], self.axis)
        if b is not None:
            y = y + ref.view(b[t] if b.dim() == 2 else b, ref.rank[n], self.axis)
        return y

    def ref_fixed(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:

        m, half, inv, b = (ref.p(n, f) for f in ("m", "half", "inv", "bias"))

        def pick(a):
            return ref.view(a[t] if a.dim() == 2 else a, ref.rank[n], self.axis)

        y = ref.floor((ins[0] * pick(m) + pick(half)) * pick(inv))
        if b is not None:
            y = y + pick(b)
        return ref.sat(y, ref.p(n, "bits"))

    def to_nir(self, x: Any) -> Any:
        return x.ext.SVFChannelAffine(x.in_shape, x.shape, self.axis, self.scale, self.bias, metadata=x.meta)

    def netx_refusal(self) -> str | None:
        if self.per_step:
            return ("per-step affine left by time-dependent BN (scale/bias differ between steps): netx and NIR "
                    "parameters are time-invariant")
        return "affine that was not folded into a weight"
