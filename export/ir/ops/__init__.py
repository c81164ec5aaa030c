"""The IR operations: one frozen dataclass per op, whose docstring is its specification.

Each op family has one module; the class there states everything about the op (shape rule,
cost, counting rule, float and fixed-point semantics for the simulator and the reference
interpreter, NIR lowering, netx refusal): see :mod:`.base` for the hooks. :data:`NODE_TYPES`
is the registry (type name in files -> class); ``tests/test_op_registry.py`` enumerates it.

Adding an operation: write its class in the family module (or a new one), define every hook of
:data:`~.base.HOOKS`, and list the class in :data:`NODE_TYPES` below.
"""

from __future__ import annotations

from .attention import MergeHeads, SpikeMatmulKV, SpikeMatmulQKV, SplitHeads
from .base import HOOKS, WEIGHTED, CostInput, Layout, NoArithmetic, Node, no_cost
from .io import Input, Output
from .layout import Concat, Flatten, ToImage, ToTokens
from .neuron import V_CLIP, X_CLIP, Neuron
from .norm import Affine, BatchNorm
from .residual import Add
from .weighted import Conv2d, Conv3dHead, Linear, conv_fanout, conv_fanout_map

NODE_TYPES: dict[str, type[Node]] = {
    cls.op: cls
    for cls in (Input, Output, Conv2d, Linear, BatchNorm, Affine, Neuron, SplitHeads, MergeHeads, SpikeMatmulKV,
                SpikeMatmulQKV, ToTokens, ToImage, Add, Concat, Conv3dHead, Flatten)
}
LAYOUT = ("split_heads", "merge_heads", "to_tokens", "to_image", "flatten")


def missing_hooks(cls: type[Node]) -> list[str]:
    """The hooks of :data:`HOOKS` that ``cls`` does not define itself (it inherits :class:`Node`'s placeholder)."""
    return [h for h in HOOKS if getattr(cls, h) is getattr(Node, h)]


__all__ = [
    "HOOKS", "NODE_TYPES", "WEIGHTED", "LAYOUT", "V_CLIP", "X_CLIP", "CostInput", "Layout", "NoArithmetic", "Node",
    "no_cost",
    "missing_hooks", "conv_fanout", "conv_fanout_map",
    "Input", "Output", "Conv2d", "Linear", "BatchNorm", "Affine", "Neuron", "SplitHeads", "MergeHeads",
    "SpikeMatmulKV", "SpikeMatmulQKV", "ToTokens", "ToImage", "Add", "Concat", "Conv3dHead", "Flatten",
]
