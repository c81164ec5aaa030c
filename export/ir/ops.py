"""The IR operations: one frozen dataclass per op, whose docstring is its specification."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .tensor import CLIP, REAL, SPIKE, STEP, IRError, Shape, TensorSpec


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
