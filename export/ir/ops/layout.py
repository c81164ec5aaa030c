"""Layout operations (no arithmetic): :class:`ToTokens`, :class:`ToImage`, :class:`Flatten`, :class:`Concat`.

Each states its semantics once, as the batch-agnostic ``move`` of :class:`~.base.Layout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..tensor import REAL, SPIKE, TensorSpec
from .base import Layout, Node, _need


@dataclass(frozen=True, eq=False)
class ToTokens(Layout, Node):
    """Image to tokens: [C, H, W] -> [H·W, C], Y[y·W + x, c] = X[c, y, x]."""

    op: ClassVar[str] = "to_tokens"

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        x = ins[0]
        _need(len(x.shape) == 3, f"to_tokens expects [C, H, W], got {x.shape}")
        return TensorSpec((x.shape[1] * x.shape[2], x.shape[0]), x.kind, x.rate)

    def move(self, ins: list, lead: int, rank: int) -> Any:
        return ins[0].flatten(lead + 1).transpose(lead, lead + 1)

    def to_nir(self, x: Any) -> Any:
        return x.ext.SVFToTokens(x.in_shape, x.shape, metadata=x.meta)

    def netx_refusal(self) -> str | None:
        return "image-to-token reshape of the residual stream on the host"


@dataclass(frozen=True, eq=False)
class ToImage(Layout, Node):
    """Tokens to image: [N, C] -> [C, height, width], Y[c, y, x] = X[y·width + x, c]."""

    op: ClassVar[str] = "to_image"
    height: int = 1
    width: int = 1

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        x = ins[0]
        _need(len(x.shape) == 2 and x.shape[0] == self.height * self.width,
              f"to_image {self.height}x{self.width} does not fit tokens {x.shape}")
        return TensorSpec((x.shape[1], self.height, self.width), x.kind, x.rate)

    def move(self, ins: list, lead: int, rank: int) -> Any:
        x = ins[0]
        return x.transpose(lead, lead + 1).reshape(*x.shape[:lead], x.shape[lead + 1], self.height, self.width)

    def to_nir(self, x: Any) -> Any:
        return x.ext.SVFToImage(x.in_shape, x.shape, self.height, self.width, metadata=x.meta)

    def netx_refusal(self) -> str | None:
        return "token-to-image reshape of the residual stream on the host"


@dataclass(frozen=True, eq=False)
class Flatten(Layout, Node):
    """Flatten the per-step (or per-clip) tensor: [d0, d1, ...] -> [d0·d1·...] (row-major)."""

    op: ClassVar[str] = "flatten"
    accepts_clip: ClassVar[bool] = True

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        x = ins[0]
        return TensorSpec((int(np.prod(x.shape)),), x.kind, x.rate)

    def move(self, ins: list, lead: int, rank: int) -> Any:
        return ins[0].flatten(lead)

    def to_nir(self, x: Any) -> Any:
        return x.nir.Flatten(input_type={"input": x.in_shape}, start_dim=0, end_dim=-1, metadata=x.meta)

    def netx_refusal(self) -> str | None:
        return "flatten of the clip-rate head output on the host"


@dataclass(frozen=True, eq=False)
class Concat(Layout, Node):
    """Concatenate along ``axis`` in port order: Y = [X0, X1] (SVFormer: [local pathway, main]).

    Fixed point: the inputs share one scale, so the codes are concatenated unchanged.
    """

    op: ClassVar[str] = "concat"
    arity: ClassVar[int] = 2
    axis: int = 0

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        a, b = ins
        _need(len(a.shape) == len(b.shape), "concat inputs must have the same rank")
        ax = self.axis % len(a.shape)
        _need(all(a.shape[i] == b.shape[i] for i in range(len(a.shape)) if i != ax),
              f"concat inputs {a.shape} and {b.shape} differ off axis {self.axis}")
        shape = list(a.shape)
        shape[ax] += b.shape[ax]
        kind = SPIKE if a.kind == SPIKE and b.kind == SPIKE else REAL
        return TensorSpec(tuple(shape), kind, a.rate)

    def move(self, ins: list, lead: int, rank: int) -> Any:
        import torch

        return torch.cat(ins, dim=self.axis % rank + lead)

    def to_nir(self, x: Any) -> Any:
        return x.ext.SVFConcat(x.in_shape, x.in2_shape, x.shape, self.axis, metadata=x.meta)

    def netx_refusal(self) -> str | None:
        return "concat: netx 0.6.0 raises NotImplementedError for concat layers; NIR 1.0.8 has no Concat"
