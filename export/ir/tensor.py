"""Tensor conventions of the IR: kinds, rates, :class:`TensorSpec` and :class:`IRError`."""

from __future__ import annotations

from dataclasses import dataclass

from svformer_deploy.svformer.errors import SVFormerError

IR_VERSION = 1
FORMAT = "svformer-deploy/ir"
SPIKE = "spike"
REAL = "real"
STEP = "step"
CLIP = "clip"

Shape = tuple[int, ...]


class IRError(SVFormerError):
    """A graph that breaks the schema (bad shape, kind, arity, cycle...) or an unreadable IR file."""


@dataclass(frozen=True)
class TensorSpec:
    """The tensor a node produces: per-step ``shape`` (no batch axis), ``kind`` and ``rate``."""

    shape: Shape
    kind: str = REAL
    rate: str = STEP
