"""The export IR: one typed graph of an SVFormer network, its schema and its (de)serialisation.

A graph is a :class:`networkx.DiGraph`. Every node is one operation and produces exactly one
tensor; every edge carries that tensor to one input port of a consumer.

Node attributes (``G.nodes[name]``; the node key is the PyTorch module path, e.g.
``blocks3.1.attn.q_lif``, or a derived name such as ``blocks1.0.add1`` for ops without a module):

- ``op``: one of the frozen dataclasses below (the operation and its numpy parameters);
- ``shape``, ``kind``, ``rate``: the output tensor (see :class:`TensorSpec`);
- ``origin``: list of PyTorch module paths this node implements (several after folding/fusion);
- ``quant`` (optional, after the ``quantize`` pass): ``dict[str, np.ndarray]`` of integer
  parameters; keys per op are specified in :mod:`export.passes.quantize`.

Edge attributes (``G.edges[src, dst]``): ``port`` (input index at ``dst``), ``shape``, ``kind``
and ``rate`` (copies of the source's output spec). A source feeds a consumer at most once.

Tensor conventions: shapes are **per time step and without the batch axis**: images
``[C, H, W]``, tokens ``[N, C]`` (``N = H·W``, token ``n = y·W + x``), attention heads
``[h, N, d]``. ``kind`` is ``"spike"`` (binary {0, 1}) or ``"real"``. ``rate`` is ``"step"`` (one
tensor per time step, t = 0..T-1) or ``"clip"`` (one tensor per clip, emitted after step T-1).
Every op except :class:`Conv3dHead` maps step-rate inputs to step-rate outputs; neurons carry
their membrane across steps. Graph attributes: ``ir_version``, ``time_steps`` (T), ``config``
(the ``SVFormerConfig`` dict), ``passes`` (names of the passes applied, in order) and free-form
JSON metadata.

Files (:func:`save` / :func:`load`): ``<name>.json`` (structure, attributes, scalars) plus
``<name>.npz`` (every array; read with ``allow_pickle=False``); no pickle anywhere. The JSON
records the npz's SHA-256 so a mismatched pair is refused. The full reference is ``docs/ir.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import networkx as nx
import numpy as np
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.fileio import atomic_path

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


# --------------------------------------------------------------------------------------------
# node types
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Node:
    """Base class of IR operations. Subclasses set ``op`` (the type name in files) and ``arity``."""

    op: ClassVar[str] = ""
    arity: ClassVar[int] = 1
    accepts_clip: ClassVar[bool] = False  # may run on clip-rate tensors (after the head conv)

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:  # pragma: no cover - abstract
        raise NotImplementedError

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


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise IRError(msg)


@dataclass(frozen=True, eq=False)
class Input(Node):
    """Frames entering the network: X[t] = frame t of the clip, t = 0..T-1.

    ``shape`` = [C, H, W] per step. ``encoding``: ``"pixels"`` (normalised analog values: the first
    conv does real multiplies) or ``"events"`` (per-step event counts per polarity channel).
    """

    op: ClassVar[str] = "input"
    arity: ClassVar[int] = 0
    shape: Shape = ()
    encoding: str = "pixels"

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        _need(len(self.shape) == 3 and all(s > 0 for s in self.shape), f"input shape {self.shape} is not [C, H, W]")
        _need(self.encoding in ("pixels", "events"), f"unknown input encoding {self.encoding!r}")
        return TensorSpec(tuple(self.shape), REAL, STEP)


@dataclass(frozen=True, eq=False)
class Output(Node):
    """The logits Y = X (identity); input [classes] at clip rate."""

    op: ClassVar[str] = "output"
    accepts_clip: ClassVar[bool] = True

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        return ins[0]


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int | np.integer) else (int(v[0]), int(v[1]))


@dataclass(frozen=True, eq=False)
class Conv2d(Node):
    """2-D cross-correlation, one frame per step (grouped/depthwise when ``groups`` > 1).

    Y[t][o, y, x] = B[o(, y, x)]
                    + Σ_{i < C_in/g} Σ_{u, v} W[o, i, u, v] · X[t][g(o)·C_in/g + i, s·y + u - p, s·x + v - p]
    with zero padding p, stride s and g(o) = o // (C_out/g). ``weight``: [C_out, C_in/g, kH, kW];
    ``bias``: None, [C_out] or a position-dependent [C_out, H_out, W_out] (only produced by
    ``fuse_linear``, which must keep the border effect of a bias entering a padded conv).
    """

    op: ClassVar[str] = "conv2d"
    weight: np.ndarray = None
    bias: np.ndarray | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1

    def __post_init__(self):
        object.__setattr__(self, "stride", _pair(self.stride))
        object.__setattr__(self, "padding", _pair(self.padding))
        object.__setattr__(self, "groups", int(self.groups))

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        kh, kw = self.weight.shape[2:]
        return ((h + 2 * self.padding[0] - kh) // self.stride[0] + 1,
                (w + 2 * self.padding[1] - kw) // self.stride[1] + 1)

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        x = ins[0]
        _need(self.weight is not None and self.weight.ndim == 4, "conv2d weight must be [C_out, C_in/g, kH, kW]")
        _need(len(x.shape) == 3, f"conv2d input must be [C, H, W], got {x.shape}")
        co, ci_g = self.weight.shape[:2]
        _need(self.groups >= 1 and x.shape[0] % self.groups == 0 and co % self.groups == 0,
              f"conv2d groups {self.groups} do not divide channels {x.shape[0]} -> {co}")
        _need(x.shape[0] // self.groups == ci_g,
              f"conv2d weight expects {ci_g * self.groups} input channels, got {x.shape[0]}")
        ho, wo = self.out_size(x.shape[1], x.shape[2])
        _need(ho > 0 and wo > 0, f"conv2d output would be empty for input {x.shape}")
        if self.bias is not None:
            _need(tuple(self.bias.shape) in ((co,), (co, ho, wo)),
                  f"conv2d bias shape {self.bias.shape} is not [{co}] or [{co}, {ho}, {wo}]")
        return TensorSpec((co, ho, wo), REAL, STEP)


@dataclass(frozen=True, eq=False)
class Linear(Node):
    """Dense map on the last axis: Y[..., o] = B[o] + Σ_i W[o, i] X[..., i]; tokens [N, C_in] -> [N, C_out].

    Runs per step, or once per clip after the head (``[C] -> [classes]``).
    """

    op: ClassVar[str] = "linear"
    accepts_clip: ClassVar[bool] = True
    weight: np.ndarray = None
    bias: np.ndarray | None = None

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        x = ins[0]
        _need(self.weight is not None and self.weight.ndim == 2, "linear weight must be [C_out, C_in]")
        _need(len(x.shape) >= 1 and x.shape[-1] == self.weight.shape[1],
              f"linear expects {self.weight.shape[1]} input features, got shape {x.shape}")
        if self.bias is not None:
            _need(tuple(self.bias.shape) == (self.weight.shape[0],), "linear bias must be [C_out]")
        return TensorSpec(tuple(x.shape[:-1]) + (self.weight.shape[0],), REAL, x.rate)


def _per_channel(arr: np.ndarray | None, shape: Shape, axis: int, steps_ok: bool, what: str) -> None:
    if arr is None:
        return
    c = shape[axis]
    ok = arr.shape == (c,) or (steps_ok and arr.ndim == 2 and arr.shape[1] == c)
    _need(ok, f"{what} shape {arr.shape} does not fit {c} channels (expected [{c}] or [T, {c}])")


@dataclass(frozen=True, eq=False)
class BatchNorm(Node):
    """Batch normalisation with running statistics (inference), before folding.

    Y[t][c] = (X[t][c] - μ[t, c]) / sqrt(σ²[t, c] + ε) · γ[t, c] + β[t, c]
    Arrays are [T, C] for time-dependent BN (TDBN: one BN channel per (step, channel) pair) or [C]
    for plain BN (then the t index is dropped). ``axis`` is the channel axis of the per-step tensor
    (0 for [C, H, W] and the head's [C, 1, 1, 1], -1 for tokens [N, C]).
    """

    op: ClassVar[str] = "batchnorm"
    accepts_clip: ClassVar[bool] = True
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


@dataclass(frozen=True, eq=False)
class Affine(Node):
    """Per-step, per-channel scale and bias: Y[t][c] = A[t, c] · X[t][c] + B[t, c].

    ``scale``/``bias``: [T, C] (time-dependent; what TDBN folding leaves), [C] (time-independent) or
    None (1 and 0). ``axis``: channel axis of the per-step tensor, as for :class:`BatchNorm`.
    """

    op: ClassVar[str] = "affine"
    accepts_clip: ClassVar[bool] = True
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


@dataclass(frozen=True, eq=False)
class Neuron(Node):
    """Spiking neuron layer (SpikingJelly ParametricLIF / LIF, multi-step), elementwise on any shape.

    With input X[t], membrane V[t] (V[-1] = 0), charge H[t], spikes S[t]:
      H[t] = V[t-1] + k(a) · (X[t] - (V[t-1] - V_reset))       (decay_input = True, the SVFormer case)
      H[t] = V[t-1] - k(a) · (V[t-1] - V_reset) + X[t]          (decay_input = False)
      S[t] = Θ(H[t] - V_th), Θ(x) = 1 for x >= 0 (so Θ(0) = 1), else 0
      V[t] = S[t] · V_reset + (1 - S[t]) · H[t]                 (hard reset; V_reset = 0 in SVFormer)
    ``model`` ``"plif"``: k(a) = sigmoid(a) with the trained scalar ``a`` (SpikingJelly's ``w``);
    ``"lif"``: k = 1 / ``tau`` (computed as a division, as SpikingJelly does). One k per layer.
    """

    op: ClassVar[str] = "neuron"
    model: str = "plif"
    a: float | None = None
    tau: float | None = None
    v_threshold: float = 1.0
    v_reset: float = 0.0
    decay_input: bool = True

    @property
    def k(self) -> float:
        """The leak factor k = sigmoid(a) (PLIF) or 1/tau (LIF), in float64."""
        if self.model == "plif":
            return 1.0 / (1.0 + math.exp(-self.a))
        return 1.0 / self.tau

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        _need(self.model in ("plif", "lif"), f"unknown neuron model {self.model!r}")
        if self.model == "plif":
            _need(self.a is not None and math.isfinite(self.a), "plif neuron needs a finite parameter a")
        else:
            _need(self.tau is not None and self.tau > 0, "lif neuron needs tau > 0")
        _need(math.isfinite(self.v_threshold) and math.isfinite(self.v_reset), "neuron threshold/reset must be finite")
        return TensorSpec(ins[0].shape, SPIKE, STEP)


@dataclass(frozen=True, eq=False)
class SplitHeads(Node):
    """Take one part of a fused projection and split it into heads: [N, P·h·d] -> [h, N, d].

    Y[j, n, e] = X[n, part·h·d + j·d + e] (channel order [q | k | v], heads contiguous in each part).
    """

    op: ClassVar[str] = "split_heads"
    part: int = 0
    parts: int = 3
    heads: int = 1
    head_dim: int = 1

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        x = ins[0]
        _need(len(x.shape) == 2 and x.shape[1] == self.parts * self.heads * self.head_dim,
              f"split_heads expects [N, {self.parts * self.heads * self.head_dim}], got {x.shape}")
        _need(0 <= self.part < self.parts, f"split_heads part {self.part} not in 0..{self.parts - 1}")
        return TensorSpec((self.heads, x.shape[0], self.head_dim), x.kind, x.rate)


@dataclass(frozen=True, eq=False)
class MergeHeads(Node):
    """Merge heads back into tokens: [h, N, d] -> [N, h·d], Y[n, j·d + e] = X[j, n, e]."""

    op: ClassVar[str] = "merge_heads"

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        x = ins[0]
        _need(len(x.shape) == 3, f"merge_heads expects [h, N, d], got {x.shape}")
        return TensorSpec((x.shape[1], x.shape[0] * x.shape[2]), x.kind, x.rate)


@dataclass(frozen=True, eq=False)
class SpikeMatmulKV(Node):
    """First attention product, per head: KV[j] = K[j]ᵀ · V[j]  ([d, N] x [N, d] -> [d, d]).

    Port 0: K [h, N, d] spikes; port 1: V [h, N, d] spikes. Output [h, d, d], real (integer counts
    of coincident (k = 1, v = 1) pairs; one AC each).
    """

    op: ClassVar[str] = "spike_matmul_kv"
    arity: ClassVar[int] = 2

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        k, v = ins
        _need(k.kind == SPIKE and v.kind == SPIKE, "spike_matmul_kv needs spike inputs K and V")
        _need(len(k.shape) == 3 and k.shape == v.shape,
              f"spike_matmul_kv: K {k.shape} and V {v.shape} must be equal [h, N, d]")
        h, _, d = k.shape
        return TensorSpec((h, d, d), REAL, STEP)


@dataclass(frozen=True, eq=False)
class SpikeMatmulQKV(Node):
    """Second attention product, per head: A[j] = s · (Q[j] · KV[j])  ([N, d] x [d, d] -> [N, d]).

    Port 0: Q [h, N, d] spikes; port 1: KV [h, d, d] (from :class:`SpikeMatmulKV`). ``scale`` s =
    d^-1/2 (0.125 for d = 64), no softmax. Each Q spike costs d ACs.
    """

    op: ClassVar[str] = "spike_matmul_q_kv"
    arity: ClassVar[int] = 2
    scale: float = 0.125

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        q, kv = ins
        _need(q.kind == SPIKE, "spike_matmul_q_kv needs spike input Q on port 0")
        _need(len(q.shape) == 3 and len(kv.shape) == 3 and kv.shape == (q.shape[0], q.shape[2], q.shape[2]),
              f"spike_matmul_q_kv: Q {q.shape} and KV {kv.shape} do not fit ([h, N, d] and [h, d, d])")
        return TensorSpec(q.shape, REAL, STEP)


@dataclass(frozen=True, eq=False)
class ToTokens(Node):
    """Image to tokens: [C, H, W] -> [H·W, C], Y[y·W + x, c] = X[c, y, x]."""

    op: ClassVar[str] = "to_tokens"

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        x = ins[0]
        _need(len(x.shape) == 3, f"to_tokens expects [C, H, W], got {x.shape}")
        return TensorSpec((x.shape[1] * x.shape[2], x.shape[0]), x.kind, x.rate)


@dataclass(frozen=True, eq=False)
class ToImage(Node):
    """Tokens to image: [N, C] -> [C, height, width], Y[c, y, x] = X[y·width + x, c]."""

    op: ClassVar[str] = "to_image"
    height: int = 1
    width: int = 1

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        x = ins[0]
        _need(len(x.shape) == 2 and x.shape[0] == self.height * self.width,
              f"to_image {self.height}x{self.width} does not fit tokens {x.shape}")
        return TensorSpec((x.shape[1], self.height, self.width), x.kind, x.rate)


@dataclass(frozen=True, eq=False)
class Add(Node):
    """Membrane shortcut: Y[t] = X0[t] + X1[t] (port 0: the residual stream, port 1: the branch)."""

    op: ClassVar[str] = "add"
    arity: ClassVar[int] = 2
    accepts_clip: ClassVar[bool] = True

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        a, b = ins
        _need(a.shape == b.shape and a.rate == b.rate, f"add inputs differ: {a.shape} vs {b.shape}")
        return TensorSpec(a.shape, REAL, a.rate)


@dataclass(frozen=True, eq=False)
class Concat(Node):
    """Concatenate along ``axis`` in port order: Y = [X0, X1] (SVFormer: [local pathway, main])."""

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


@dataclass(frozen=True, eq=False)
class Conv3dHead(Node):
    """The head's grouped Conv3d over (T, h, w): a per-step accumulation that emits once per clip.

    Y[o] = B[o] + Σ_{t < T} Σ_{i < C_in/g} Σ_{y, x} W[o, i, t, y, x] · X[t][g(o)·C_in/g + i, y, x]
    ``weight`` [C_out, C_in/g, T, h, w] covers all T steps and the whole h x w map (no padding), so
    the output is [C_out, 1, 1, 1] at clip rate, available after the last step.
    """

    op: ClassVar[str] = "conv3d"
    weight: np.ndarray = None
    bias: np.ndarray | None = None
    groups: int = 1

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        x = ins[0]
        _need(self.weight is not None and self.weight.ndim == 5, "conv3d weight must be [C_out, C_in/g, T, h, w]")
        _need(x.rate == STEP and len(x.shape) == 3, f"conv3d head expects step-rate [C, h, w], got {x.shape}")
        co, ci_g, _, kh, kw = self.weight.shape
        _need(x.shape[0] % self.groups == 0 and co % self.groups == 0 and x.shape[0] // self.groups == ci_g,
              f"conv3d weight {self.weight.shape} with groups {self.groups} does not fit input {x.shape}")
        _need((kh, kw) == tuple(x.shape[1:]), f"conv3d kernel {kh}x{kw} must cover the {x.shape[1]}x{x.shape[2]} map")
        if self.bias is not None:
            _need(tuple(self.bias.shape) == (co,), "conv3d bias must be [C_out]")
        return TensorSpec((co, 1, 1, 1), REAL, CLIP)


@dataclass(frozen=True, eq=False)
class Flatten(Node):
    """Flatten the per-step (or per-clip) tensor: [d0, d1, ...] -> [d0·d1·...] (row-major)."""

    op: ClassVar[str] = "flatten"
    accepts_clip: ClassVar[bool] = True

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        x = ins[0]
        return TensorSpec((int(np.prod(x.shape)),), x.kind, x.rate)


NODE_TYPES: dict[str, type[Node]] = {
    cls.op: cls
    for cls in (Input, Output, Conv2d, Linear, BatchNorm, Affine, Neuron, SplitHeads, MergeHeads, SpikeMatmulKV,
                SpikeMatmulQKV, ToTokens, ToImage, Add, Concat, Conv3dHead, Flatten)
}
WEIGHTED = ("conv2d", "linear", "conv3d")
LAYOUT = ("split_heads", "merge_heads", "to_tokens", "to_image", "flatten")


# --------------------------------------------------------------------------------------------
# building and walking graphs
# --------------------------------------------------------------------------------------------
def new_graph(time_steps: int, config: dict | None = None, **meta: Any) -> nx.DiGraph:
    """An empty IR graph for clips of ``time_steps`` frames."""
    g = nx.DiGraph()
    g.graph.update({"ir_version": IR_VERSION, "time_steps": int(time_steps), "config": config or {}, "passes": []})
    g.graph.update(meta)
    return g


def spec(g: nx.DiGraph, name: str) -> TensorSpec:
    """The output tensor spec of node ``name``."""
    d = g.nodes[name]
    return TensorSpec(tuple(d["shape"]), d["kind"], d["rate"])


def add_op(g: nx.DiGraph, name: str, op: Node, inputs: list[str] = (), origin: list[str] | None = None,
           quant: dict[str, np.ndarray] | None = None) -> str:
    """Add node ``name`` computing ``op`` on ``inputs`` (port order); infers and stores its output spec."""
    if name in g:
        raise IRError(f"duplicate node name {name!r}")
    if len(inputs) != op.arity:
        raise IRError(f"{name}: {op.op} takes {op.arity} input(s), got {len(inputs)}")
    ins = [spec(g, i) for i in inputs]
    try:
        out = op.infer(ins)
    except IRError as e:
        raise IRError(f"{name}: {e}") from None
    if any(s.rate == CLIP for s in ins) and not op.accepts_clip:
        raise IRError(f"{name}: {op.op} cannot run on a clip-rate tensor")
    g.add_node(name, op=op, shape=out.shape, kind=out.kind, rate=out.rate,
               origin=list(origin if origin is not None else [name]))
    if quant is not None:
        g.nodes[name]["quant"] = quant
    for port, src in enumerate(inputs):
        if g.has_edge(src, name):
            raise IRError(f"{name}: {src} feeds it twice")
        s = ins[port]
        g.add_edge(src, name, port=port, shape=s.shape, kind=s.kind, rate=s.rate)
    return name


def op_of(g: nx.DiGraph, name: str) -> Node:
    return g.nodes[name]["op"]


def inputs_of(g: nx.DiGraph, name: str) -> list[str]:
    """Predecessors of ``name`` in port order."""
    return [s for s, _ in sorted(((s, g.edges[s, name]["port"]) for s in g.predecessors(name)), key=lambda p: p[1])]


def consumers(g: nx.DiGraph, name: str) -> list[str]:
    return list(g.successors(name))


def topo_order(g: nx.DiGraph) -> list[str]:
    """Node names in a topological order (stable: ties keep insertion order)."""
    return list(nx.topological_sort(g))


def iter_ops(g: nx.DiGraph, op: str | tuple[str, ...] | None = None) -> Iterator[tuple[str, Node]]:
    """``(name, op)`` in topological order, optionally only ops of the given type name(s)."""
    kinds = (op,) if isinstance(op, str) else op
    for n in topo_order(g):
        o = g.nodes[n]["op"]
        if kinds is None or o.op in kinds:
            yield n, o


def input_node(g: nx.DiGraph) -> str:
    return next(n for n, o in iter_ops(g, "input"))


def output_node(g: nx.DiGraph) -> str:
    return next(n for n, o in iter_ops(g, "output"))


def neuron_names(g: nx.DiGraph) -> list[str]:
    return [n for n, _ in iter_ops(g, "neuron")]


def copy_graph(g: nx.DiGraph) -> nx.DiGraph:
    """A copy whose node/edge attribute dicts are new (ops are immutable and shared)."""
    h = nx.DiGraph()
    h.graph.update(json.loads(json.dumps(g.graph)))
    for n, d in g.nodes(data=True):
        nd = dict(d)
        nd["origin"] = list(d["origin"])
        if "quant" in d:
            nd["quant"] = dict(d["quant"])
        h.add_node(n, **nd)
    for s, t, d in g.edges(data=True):
        h.add_edge(s, t, **dict(d))
    return h


def replace_op(g: nx.DiGraph, name: str, op: Node, origin: list[str] | None = None) -> None:
    """Swap the op of ``name`` (in place on ``g``, for use inside passes on a copy); the output spec must not change."""
    ins = [spec(g, i) for i in inputs_of(g, name)]
    out = op.infer(ins)
    old = spec(g, name)
    if out != old:
        raise IRError(f"{name}: replacing {g.nodes[name]['op'].op} changes its output {old} -> {out}")
    g.nodes[name]["op"] = op
    if origin is not None:
        g.nodes[name]["origin"] = list(origin)


def bypass(g: nx.DiGraph, name: str) -> None:
    """Remove single-input node ``name`` and connect its input to its consumers (same ports).

    Only valid when the node's output spec equals its input spec (identity-like removal).
    """
    (src,) = inputs_of(g, name)
    if spec(g, src) != spec(g, name):
        raise IRError(f"cannot bypass {name}: its output differs from its input")
    for dst in list(g.successors(name)):
        attrs = dict(g.edges[name, dst])
        g.add_edge(src, dst, **attrs)
    g.remove_node(name)


def rename(g: nx.DiGraph, old: str, new: str) -> None:
    if new in g:
        raise IRError(f"duplicate node name {new!r}")
    nx.relabel_nodes(g, {old: new}, copy=False)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def validate(g: nx.DiGraph) -> nx.DiGraph:
    """Check the schema: known ops, arity and ports, shapes/kinds/rates, acyclic, one input, one output.

    Returns ``g``; raises :class:`IRError` (an ``SVFormerError``) naming the offending node.
    """
    if not isinstance(g, nx.DiGraph) or g.number_of_nodes() == 0:
        raise IRError("IR graph is empty")
    for key in ("ir_version", "time_steps"):
        if key not in g.graph:
            raise IRError(f"IR graph lacks the attribute {key!r}")
    if not nx.is_directed_acyclic_graph(g):
        raise IRError(f"IR graph has a cycle: {nx.find_cycle(g)}")
    kinds = {}
    for n, d in g.nodes(data=True):
        op = d.get("op")
        if not isinstance(op, Node) or NODE_TYPES.get(op.op) is not type(op):
            raise IRError(f"{n}: not a known IR op ({type(op).__name__})")
        kinds.setdefault(op.op, []).append(n)
    for t in ("input", "output"):
        if len(kinds.get(t, [])) != 1:
            raise IRError(f"IR graph must have exactly one {t} node, found {len(kinds.get(t, []))}")
    out = kinds["output"][0]
    if g.out_degree(out) != 0:
        raise IRError(f"{out}: the output node has consumers")
    for n in topo_order(g):
        d = g.nodes[n]
        op = d["op"]
        preds = list(g.predecessors(n))
        ports = sorted(g.edges[p, n]["port"] for p in preds)
        if ports != list(range(op.arity)):
            raise IRError(f"{n}: {op.op} needs input ports {list(range(op.arity))}, found {ports}")
        ins = [spec(g, p) for p in inputs_of(g, n)]
        for p in preds:
            e = g.edges[p, n]
            if (tuple(e["shape"]), e["kind"], e["rate"]) != tuple(dataclasses.astuple(spec(g, p))):
                raise IRError(f"edge {p} -> {n}: its spec {tuple(e['shape'])}/{e['kind']}/{e['rate']} "
                              f"differs from {p}'s output")
        if any(s.rate == CLIP for s in ins) and not op.accepts_clip:
            raise IRError(f"{n}: {op.op} cannot run on a clip-rate tensor")
        try:
            want = op.infer(ins)
        except IRError as e:
            raise IRError(f"{n}: {e}") from None
        if want != spec(g, n):
            raise IRError(f"{n}: stored output {spec(g, n)} differs from the inferred {want}")
        if n != out and g.out_degree(n) == 0:
            raise IRError(f"{n}: its output is not used")
    if spec(g, out).rate != CLIP:
        raise IRError("the output must be at clip rate (after the head)")
    return g


# --------------------------------------------------------------------------------------------
# comparison and cost helpers
# --------------------------------------------------------------------------------------------
def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


def diff_graphs(a: nx.DiGraph, b: nx.DiGraph) -> list[str]:
    """Differences in structure, attributes and arrays (bitwise, dtypes included); empty if equal."""
    out = []
    if a.graph != b.graph:
        out.append(f"graph attributes differ: {a.graph} vs {b.graph}")
    if list(a.nodes) != list(b.nodes):
        out.append(f"node sets/orders differ: {sorted(set(a.nodes) ^ set(b.nodes))[:10]}")
    for n in a.nodes:
        if n not in b:
            continue
        da, db = a.nodes[n], b.nodes[n]
        oa, ob = da["op"], db["op"]
        if type(oa) is not type(ob):
            out.append(f"{n}: op {oa.op} vs {ob.op}")
            continue
        for f in dataclasses.fields(oa):
            if not _values_equal(getattr(oa, f.name), getattr(ob, f.name)):
                out.append(f"{n}: field {f.name} differs")
        for key in ("shape", "kind", "rate", "origin"):
            if tuple(da[key]) != tuple(db[key]) if key in ("shape", "origin") else da[key] != db[key]:
                out.append(f"{n}: {key} differs")
        qa, qb = da.get("quant"), db.get("quant")
        if (qa is None) != (qb is None) or (qa is not None and (set(qa) != set(qb) or
                                                               any(not _values_equal(qa[k], qb[k]) for k in qa))):
            out.append(f"{n}: quant differs")
    ea = {(s, t): (d["port"], tuple(d["shape"]), d["kind"], d["rate"]) for s, t, d in a.edges(data=True)}
    eb = {(s, t): (d["port"], tuple(d["shape"]), d["kind"], d["rate"]) for s, t, d in b.edges(data=True)}
    if ea != eb:
        out.append(f"edges differ: {sorted(set(ea.items()) ^ set(eb.items()))[:5]}")
    return out


def node_cost(g: nx.DiGraph, name: str) -> dict[str, int]:
    """Dense work of one node per clip (B = 1): ``macs`` (multiply-accumulates of weights and
    attention matmuls, bias excluded), ``elementwise`` (bias adds, affine multiply-adds, residual
    adds, neuron updates: one per output element per step) and ``params`` (stored parameters)."""
    op = op_of(g, name)
    T = int(g.graph["time_steps"])
    s = spec(g, name)
    n_out = int(np.prod(s.shape))
    steps = T if s.rate == STEP else 1
    macs = elem = params = 0
    if op.op == "conv2d":
        fan_in = int(np.prod(op.weight.shape[1:]))
        macs = T * n_out * fan_in
        params = op.weight.size + (op.bias.size if op.bias is not None else 0)
        elem = T * n_out if op.bias is not None else 0
    elif op.op == "linear":
        macs = steps * n_out * op.weight.shape[1]
        params = op.weight.size + (op.bias.size if op.bias is not None else 0)
        elem = steps * n_out if op.bias is not None else 0
    elif op.op == "conv3d":
        macs = n_out * int(np.prod(op.weight.shape[1:]))
        params = op.weight.size + (op.bias.size if op.bias is not None else 0)
        elem = n_out if op.bias is not None else 0
    elif op.op in ("spike_matmul_kv", "spike_matmul_q_kv"):
        n_tokens = spec(g, inputs_of(g, name)[0]).shape[1]
        macs = T * n_out * (n_tokens if op.op == "spike_matmul_kv" else s.shape[2])
    elif op.op in ("batchnorm", "affine"):
        params = sum(a.size for a in op.arrays().values())
        elem = steps * n_out
    elif op.op in ("neuron", "add"):
        elem = steps * n_out
        params = 1 if op.op == "neuron" else 0
    return {"macs": macs, "elementwise": elem, "params": params}


def graph_costs(g: nx.DiGraph) -> dict[str, dict[str, int]]:
    """:func:`node_cost` for every node with work or parameters, in topological order."""
    out = {}
    for n in topo_order(g):
        c = node_cost(g, n)
        if any(c.values()):
            out[n] = c
    return out


# --------------------------------------------------------------------------------------------
# (de)serialisation: JSON + npz, no pickle
# --------------------------------------------------------------------------------------------
def _json_value(v: Any, where: str) -> Any:
    if isinstance(v, bool | str | type(None)):
        return v
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        f = float(v)
        if not math.isfinite(f):
            raise IRError(f"{where}: non-finite value {f} cannot be written")
        return f
    if isinstance(v, list | tuple):
        return [_json_value(x, where) for x in v]
    raise IRError(f"{where}: value of type {type(v).__name__} is not serialisable")


def to_json_and_arrays(g: nx.DiGraph) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON document and the arrays (npz keys ``<node index>.<field>`` / ``<i>.quant.<key>``)."""
    validate(g)
    arrays: dict[str, np.ndarray] = {}
    nodes = []
    index = {n: i for i, n in enumerate(g.nodes)}
    for n, d in g.nodes(data=True):
        i = index[n]
        op = d["op"]
        entry = {
            "name": n, "op": op.op,
            "attrs": {k: _json_value(v, f"{n}.{k}") for k, v in op.attributes().items()},
            "arrays": {}, "origin": list(d["origin"]),
            "shape": list(d["shape"]), "kind": d["kind"], "rate": d["rate"],
        }
        for k, arr in op.arrays().items():
            key = f"{i}.{k}"
            arrays[key] = np.asarray(arr, order="C")
            entry["arrays"][k] = key
        if "quant" in d:
            entry["quant"] = {}
            for k, arr in d["quant"].items():
                key = f"{i}.quant.{k}"
                arrays[key] = np.asarray(arr, order="C")
                entry["quant"][k] = key
        nodes.append(entry)
    edges = [{"src": s, "dst": t, "port": e["port"], "shape": list(e["shape"]), "kind": e["kind"], "rate": e["rate"]}
             for s, t, e in g.edges(data=True)]
    doc = {"format": FORMAT, "ir_version": IR_VERSION, "graph": _json_value_dict(g.graph),
           "nodes": nodes, "edges": edges}
    return doc, arrays


def _json_value_dict(d: dict) -> dict:
    try:
        return json.loads(json.dumps(d, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise IRError(f"graph attributes are not JSON-serialisable: {e}") from None


def npz_path_for(json_path: str | Path) -> Path:
    p = Path(json_path)
    return p.with_suffix(".npz") if p.suffix == ".json" else p.with_name(p.name + ".npz")


def save(g: nx.DiGraph, path: str | Path) -> tuple[Path, Path]:
    """Write ``g`` to ``path`` (JSON) and the sibling ``.npz``; both atomically. Returns both paths."""
    path = Path(path)
    doc, arrays = to_json_and_arrays(g)
    npz = npz_path_for(path)
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        doc["arrays_file"] = npz.name
        doc["arrays_sha256"] = _sha256(tmp)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path, npz


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(path: str | Path) -> nx.DiGraph:
    """Read a graph written by :func:`save`; any malformed content raises :class:`IRError` naming the file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IRError(f"{path}: no such IR file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IRError(f"{path}: not a readable IR JSON file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise IRError(f"{path}: not an svformer-deploy IR file (format {fmt!r})")
    if doc.get("ir_version") != IR_VERSION:
        raise IRError(f"{path}: IR version {doc.get('ir_version')!r} is not supported (this build reads {IR_VERSION})")
    npz = path.with_name(str(doc.get("arrays_file", npz_path_for(path).name)))
    if not npz.is_file():
        raise IRError(f"{path}: its array file {npz.name} is missing")
    if doc.get("arrays_sha256") and _sha256(npz) != doc["arrays_sha256"]:
        raise IRError(f"{path}: array file {npz.name} does not match (SHA-256 differs)")
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise IRError(f"{npz}: unreadable array file ({e})") from None
    try:
        return from_json_and_arrays(doc, arrays)
    except IRError as e:
        raise IRError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise IRError(f"{path}: malformed IR ({type(e).__name__}: {e})") from None


def from_json_and_arrays(doc: dict, arrays: dict[str, np.ndarray]) -> nx.DiGraph:
    g = nx.DiGraph()
    g.graph.update(doc["graph"])
    for entry in doc["nodes"]:
        name = entry["name"]
        cls = NODE_TYPES.get(entry["op"])
        if cls is None:
            raise IRError(f"node {name!r}: unknown op {entry['op']!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for k, v in entry["attrs"].items():
            if k not in fields:
                raise IRError(f"node {name!r}: unknown attribute {k!r} for {entry['op']}")
            kwargs[k] = tuple(v) if isinstance(v, list) else v
        for k, key in entry["arrays"].items():
            if k not in fields:
                raise IRError(f"node {name!r}: unknown array {k!r} for {entry['op']}")
            if key not in arrays:
                raise IRError(f"node {name!r}: array {key!r} ({k}) is missing from the npz file")
            kwargs[k] = arrays[key]
        try:
            op = cls(**kwargs)
        except TypeError as e:
            raise IRError(f"node {name!r}: {e}") from None
        attrs = {"op": op, "shape": tuple(entry["shape"]), "kind": entry["kind"], "rate": entry["rate"],
                 "origin": list(entry["origin"])}
        if "quant" in entry:
            q = {}
            for k, key in entry["quant"].items():
                if key not in arrays:
                    raise IRError(f"node {name!r}: quant array {key!r} is missing from the npz file")
                q[k] = arrays[key]
            attrs["quant"] = q
        if name in g:
            raise IRError(f"duplicate node name {name!r}")
        g.add_node(name, **attrs)
    for e in doc["edges"]:
        if e["src"] not in g or e["dst"] not in g:
            raise IRError(f"edge {e['src']} -> {e['dst']} names an unknown node")
        g.add_edge(e["src"], e["dst"], port=int(e["port"]), shape=tuple(e["shape"]), kind=e["kind"], rate=e["rate"])
    return validate(g)


__all__ = [
    "IR_VERSION", "SPIKE", "REAL", "STEP", "CLIP", "IRError", "TensorSpec", "Node", "NODE_TYPES", "WEIGHTED", "LAYOUT",
    "Input", "Output", "Conv2d", "Linear", "BatchNorm", "Affine", "Neuron", "SplitHeads", "MergeHeads",
    "SpikeMatmulKV", "SpikeMatmulQKV", "ToTokens", "ToImage", "Add", "Concat", "Conv3dHead", "Flatten",
    "new_graph", "add_op", "spec", "op_of", "inputs_of", "consumers", "topo_order", "iter_ops", "input_node",
    "output_node", "neuron_names", "copy_graph", "replace_op", "bypass", "rename", "validate", "diff_graphs",
    "node_cost", "graph_costs", "save", "load", "to_json_and_arrays", "from_json_and_arrays", "npz_path_for",
]
