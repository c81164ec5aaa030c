"""Weighted operations: :class:`Conv2d`, :class:`Linear` and the head's :class:`Conv3dHead`.

They share the synapse counting rule (:func:`synapse_counter`): an input event, or a nonzero real
input, drives the ``C_out/g`` weights of its group at every output position it reaches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..tensor import CLIP, REAL, SPIKE, STEP, TensorSpec
from .base import CostInput, Node, _need, _pair


def conv_fanout(size: int, kernel: int, stride: int, padding: int) -> np.ndarray:
    """r(y) for y = 0..size-1: the number of output rows whose receptive field contains input row y."""
    out = (size + 2 * padding - kernel) // stride + 1
    r = np.zeros(size, dtype=np.int64)
    for o in range(out):
        lo, hi = o * stride - padding, o * stride - padding + kernel
        r[max(lo, 0):max(min(hi, size), 0)] += 1
    return r


def conv_fanout_map(in_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                    padding: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` map of output positions reached from each input position (border-aware)."""
    ry = conv_fanout(in_hw[0], kernel[0], stride[0], padding[0])
    rx = conv_fanout(in_hw[1], kernel[1], stride[1], padding[1])
    return np.outer(ry, rx)


def _weighted_cost(weight: np.ndarray, bias: np.ndarray | None, macs: int, bias_adds: int) -> dict[str, int]:
    params = weight.size + (bias.size if bias is not None else 0)
    return {"macs": macs, "elementwise": bias_adds if bias is not None else 0, "params": params}


def bias_counts(c: Any, has_bias: bool) -> None:
    """One add and one parameter read per output element and step for a bias."""
    if has_bias:
        c.set("add", c.n_out)
        c.set("weight_reads", c.n_out)


def synapse_counter(c: Any, per_synapse: int, fan: Any = None) -> Callable:
    """Per-step counts of a weighted op, per clip: ``ac`` (spike input) or ``mac`` (nonzero real inputs) =
    ``per_synapse`` x events (x the output positions each reaches, ``fan`` [H, W], when not uniform).
    Inputs carry the batch axis first (conv: ``[B, C, H, W]``)."""
    ac, mac, sin, wr = c.key("ac"), c.key("mac"), c.key("spikes_in"), c.key("weight_reads")
    if c.in_specs[0].kind == SPIKE:
        def step(col, ins, out, nnz_in=None, nnz_out=None):
            x = ins[0]
            active = c.nnz(x) if nnz_in is None else nnz_in
            n = per_synapse * (active if fan is None else c.per_clip(x.sum(1) * fan))
            col[:, ac] += n
            col[:, sin] += active
            col[:, wr] += n
    else:
        def step(col, ins, out, nnz_in=None, nnz_out=None):
            x = ins[0]
            n = per_synapse * (c.nnz(x) if fan is None else c.per_clip((x != 0).sum(1) * fan))
            col[:, mac] += n
            col[:, wr] += n
    return step


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
    counted: ClassVar[bool] = True
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

    def cost(self, c: CostInput) -> dict[str, int]:
        fan_in = int(np.prod(self.weight.shape[1:]))
        return _weighted_cost(self.weight, self.bias, c.time_steps * c.n_out * fan_in, c.time_steps * c.n_out)

    def count(self, c: Any) -> Callable:
        _, h, w = c.in_specs[0].shape
        fan = conv_fanout_map((h, w), self.weight.shape[2:], self.stride, self.padding)
        per_synapse = self.weight.shape[0] // self.groups
        fan_t = None
        if np.all(fan == fan.flat[0]):  # every position reaches the same number of outputs
            per_synapse *= int(fan.flat[0])
        else:
            import torch

            fan_t = torch.from_numpy(fan)
        bias_counts(c, self.bias is not None)
        return synapse_counter(c, per_synapse, fan_t)

    def _kernel(self, sim: Any, n: str) -> Callable:
        in_shape, kernels = sim.in_shape(n), sim.kernels
        return lambda w: kernels.Conv2dKernel(w, self.stride, self.padding, self.groups, in_shape, sim.policy)

    def ref_setup(self, ref: Any, n: str) -> None:
        """``conv_impl="matmul"`` also stores the weight as its per-group matrix ``[g, C_out/g, C_in/g·kH·kW]``, a
        ``[C_out]`` bias as ``[C_out, 1, 1]`` and the gather index, once, so the exported graph reshapes no
        constant at every step."""
        import torch

        super().ref_setup(ref, n)
        if ref.mode == "fixed" and ref.conv_impl == "matmul" and ref.weight_dtype(n) == torch.float64:
            _, h, wd = ref.in_shape(n)
            ref.buffer(n, "index", ref.conv_gather_index(h, wd, self.weight.shape[2:], self.stride, self.padding))
        if ref.mode == "float" and ref.conv_impl == "matmul":
            w, b = ref.p(n, "weight"), ref.p(n, "bias")
            ref.buffer(n, "weight", w.reshape(self.groups, w.shape[0] // self.groups, -1).contiguous())
            if b is not None and b.dim() == 1:
                ref.buffer(n, "bias", b.reshape(-1, 1, 1).contiguous())
            _, h, wd = ref.in_shape(n)
            ref.buffer(n, "index", ref.conv_gather_index(h, wd, self.weight.shape[2:], self.stride, self.padding))

    def sim_float(self, sim: Any, n: str) -> Any:
        return sim.weighted_float(n, self, self._kernel(sim, n), lambda b: b.reshape(-1, 1, 1) if b.dim() == 1 else b)

    def sim_fixed(self, sim: Any, n: str) -> Any:
        return sim.weighted_fixed(n, self._kernel(sim, n), lambda a: a.reshape(-1, 1, 1))

    def ref_float(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        import torch.nn.functional as F

        w, b = ref.p(n, "weight"), ref.p(n, "bias")
        if ref.conv_impl == "matmul":  # bias [C_out, 1, 1] or [C_out, H_out, W_out]: added after the matmul
            y = ref.matmul_conv2d(ins[0].to(w.dtype), w, b, self.stride, self.padding, self.groups, ref.p(n, "index"),
                                  self.weight.shape[2:])
            return y.to(ref.dtype)
        full_bias = b is not None and b.dim() == 3
        y = F.conv2d(ins[0].to(w.dtype), w, None if full_bias else b, self.stride, self.padding, 1, self.groups)
        y = y.to(ref.dtype)
        return y + b if full_bias else y

    def ref_fixed(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        import torch
        import torch.nn.functional as F

        w = ref.p(n, "weight")
        if ref.conv_impl == "matmul" and w.dtype == torch.float64:  # exact sums without a float64 Conv (ONNX)
            acc = ref.matmul_conv2d(ins[0].to(w.dtype), w, None, self.stride, self.padding, self.groups,
                                    ref.p(n, "index"), self.weight.shape[2:])
        else:
            acc = F.conv2d(ins[0].to(w.dtype), w, None, self.stride, self.padding, 1, self.groups)
        return ref.requant(n, acc.to(torch.float64), 3, 0)

    def to_nir(self, x: Any) -> Any:
        if self.bias is not None and self.bias.ndim == 3:
            return x.ext.SVFPositionalConv2d(x.in_shape, x.shape, self.weight, self.bias, np.asarray(self.stride),
                                             np.asarray(self.padding), self.groups, metadata=x.meta)
        if self.weight.shape[2] != self.weight.shape[3]:  # nir 1.0.8 infers conv shapes from weight.shape[2] only
            return x.ext.SVFConv2d(x.in_shape, x.shape, self.weight, self.bias, np.asarray(self.stride),
                                   np.asarray(self.padding), self.groups, metadata=x.meta)
        bias = self.bias if self.bias is not None else np.zeros(self.weight.shape[0], dtype=self.weight.dtype)
        # groups written dense (zeros off the groups): nir 1.0.8 types a grouped Conv2d's input as weight.shape[1]
        return x.nir.Conv2d(input_shape=tuple(int(s) for s in x.in_shape[1:]), weight=x.dense(self.weight, self.groups),
                            stride=self.stride, padding=self.padding, dilation=(1, 1), groups=1, bias=bias,
                            metadata=x.meta)

    def netx_refusal(self) -> str | None:
        return None  # a netx conv layer when it drives one neuron layer from spikes (partition decides)

    def chain_layout(self, in_shape: tuple[int, ...]) -> str | None:
        """The layout of a core chain this op can be a layer of, reading ``in_shape`` (None: none)."""
        return "image" if len(in_shape) == 3 else None

    def chain_conv(self, weight: np.ndarray) -> tuple[np.ndarray, int, tuple[int, int], tuple[int, int]]:
        """This op as the conv layer of a netx / standard-NIR chain: (weight, groups, stride, padding)."""
        return np.asarray(weight), self.groups, tuple(self.stride), tuple(self.padding)


@dataclass(frozen=True, eq=False)
class Linear(Node):
    """Dense map on the last axis: Y[..., o] = B[o] + Σ_i W[o, i] X[..., i]; tokens [N, C_in] -> [N, C_out].

    Runs per step, or once per clip after the head (``[C] -> [classes]``).
    """

    op: ClassVar[str] = "linear"
    accepts_clip: ClassVar[bool] = True
    counted: ClassVar[bool] = True
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

    def cost(self, c: CostInput) -> dict[str, int]:
        return _weighted_cost(self.weight, self.bias, c.steps * c.n_out * self.weight.shape[1], c.steps * c.n_out)

    def count(self, c: Any) -> Callable:
        bias_counts(c, self.bias is not None)
        return synapse_counter(c, self.weight.shape[0])

    def sim_float(self, sim: Any, n: str) -> Any:
        kernels = sim.kernels
        return sim.weighted_float(n, self, lambda w: kernels.LinearKernel(w, sim.policy), lambda b: b)

    def sim_fixed(self, sim: Any, n: str) -> Any:
        kernels = sim.kernels
        return sim.weighted_fixed(n, lambda w: kernels.LinearKernel(w, sim.policy), lambda a: a)

    def ref_float(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        import torch.nn.functional as F

        w = ref.p(n, "weight")
        return F.linear(ins[0].to(w.dtype), w, ref.p(n, "bias")).to(ref.dtype)

    def ref_fixed(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        import torch
        import torch.nn.functional as F

        w = ref.p(n, "weight")
        acc = F.linear(ins[0].to(w.dtype), w).to(torch.float64)
        return ref.requant(n, acc, ref.rank[n], -1)

    def to_nir(self, x: Any) -> Any:
        if len(x.in_shape) == 1:
            if self.bias is None:
                return x.nir.Linear(weight=self.weight, metadata=x.meta)
            return x.nir.Affine(weight=self.weight, bias=self.bias, metadata=x.meta)
        return x.ext.SVFTokenLinear(x.in_shape, x.shape, self.weight, self.bias, metadata=x.meta)

    def netx_refusal(self) -> str | None:
        return None  # a netx conv layer (1x1 over tokens or a vector) when it drives one neuron layer

    def chain_layout(self, in_shape: tuple[int, ...]) -> str | None:
        """Tokens [N, C] are the image [C, N, 1]; a vector [C] is [C, 1, 1] (None: no chain layout)."""
        return {2: "tokens", 1: "vector"}.get(len(in_shape))

    def chain_conv(self, weight: np.ndarray) -> tuple[np.ndarray, int, tuple[int, int], tuple[int, int]]:
        """This op as the 1x1 conv layer of a netx / standard-NIR chain: (weight, groups, stride, padding)."""
        return np.asarray(weight)[:, :, None, None], 1, (1, 1), (0, 0)


@dataclass(frozen=True, eq=False)
class Conv3dHead(Node):
    """The head's grouped Conv3d over (T, h, w): a per-step accumulation that emits once per clip.

    Y[o] = B[o] + Σ_{t < T} Σ_{i < C_in/g} Σ_{y, x} W[o, i, t, y, x] · X[t][g(o)·C_in/g + i, y, x]
    ``weight`` [C_out, C_in/g, T, h, w] covers all T steps and the whole h x w map (no padding), so
    the output is [C_out, 1, 1, 1] at clip rate, available after the last step. The simulator
    accumulates step by step (a head kernel it registers); the reference hooks get the stacked
    clip ``[B, C, T, h, w]``; the one-step graph keeps the running sum ``A_t[o] = Σ_{s <= t} (...)``
    (``[B, C_out]``, :meth:`ref_accumulate`) and emits ``B + A_t`` (:meth:`ref_emit`): after the last step
    that is Y, before it the head applied to the steps so far.
    """

    op: ClassVar[str] = "conv3d"
    accumulates: ClassVar[bool] = True
    counted: ClassVar[bool] = True
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

    def cost(self, c: CostInput) -> dict[str, int]:
        return _weighted_cost(self.weight, self.bias, c.n_out * int(np.prod(self.weight.shape[1:])), c.n_out)

    def count(self, c: Any) -> Callable:
        co = self.weight.shape[0]
        c.set("state_reads", co)  # the per-output accumulators, every step
        c.set("state_writes", co)
        if self.bias is not None:
            c.set("add", co, final=True)
            c.set("weight_reads", co, final=True)
        return synapse_counter(c, co // self.groups)

    def ref_setup(self, ref: Any, n: str) -> None:
        """``conv_impl="matmul"`` also stores the weight as its per-group matrix ``[g, C_out/g, C_in/g·T·h·w]``."""
        super().ref_setup(ref, n)
        if ref.mode == "float" and ref.conv_impl == "matmul":
            w = ref.p(n, "weight")
            ref.buffer(n, "weight", w.reshape(self.groups, w.shape[0] // self.groups, -1).contiguous())

    def sim_float(self, sim: Any, n: str) -> Any:
        sim.set_head(n, sim.kernels.HeadConv3dKernel(sim.tensor(self.weight, sim.dtype), self.groups, sim.policy),
                     sim.dtype)
        b = None if self.bias is None else sim.tensor(self.bias, sim.dtype)

        def fn(t, ins, nnz):
            acc = sim.state[n]  # [B, C_out]
            return (acc if b is None else acc + b).reshape(acc.shape[0], -1, 1, 1, 1)
        return fn

    def sim_fixed(self, sim: Any, n: str) -> Any:
        import torch

        q = sim.quant(n)
        acc_dtype = sim.fixed.accumulator_dtype(int(q["acc_bits"]))
        sim.set_head(n, sim.kernels.HeadConv3dKernel(sim.tensor(q["weight"], acc_dtype), self.groups, sim.policy),
                     torch.int64)
        requant = sim.requant(n, lambda a: a.reshape(-1))
        return lambda t, ins, nnz: requant(sim.state[n]).reshape(sim.state[n].shape[0], -1, 1, 1, 1)

    def ref_float(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        import torch.nn.functional as F

        x, w = ins[0], ref.p(n, "weight")  # x: [B, C, T, h, w]
        if ref.conv_impl == "matmul":
            return ref.matmul_conv3d_head(x.to(w.dtype), w, ref.p(n, "bias"), self.groups).to(ref.dtype)
        return F.conv3d(x.to(w.dtype), w, ref.p(n, "bias"), groups=self.groups).to(ref.dtype)

    def ref_fixed(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        import torch
        import torch.nn.functional as F

        w = ref.p(n, "weight")
        if ref.conv_impl == "matmul" and w.dtype == torch.float64:
            acc = ref.matmul_conv3d_head(ins[0].to(w.dtype), w, None, self.groups).to(torch.float64)
        else:
            acc = F.conv3d(ins[0].to(w.dtype), w, groups=self.groups).to(torch.float64)
        return ref.requant(n, acc, 4, 0)

    def ref_accumulate(self, ref: Any, n: str, t: Any, x: Any, acc: Any) -> Any:
        """The running sum after step ``t`` (an int64 tensor: weights are gathered by it): ``acc`` ``[B, C_out]``
        plus step ``t``'s input ``x`` ``[B, C_in, h, w]`` contracted with ``W[:, :, t]`` (per group, one MatMul;
        float modes and fixed mode alike: in fixed mode every value is an integer, so the sum is exact)."""
        import torch

        co, ci_g, steps, kh, kw = self.weight.shape
        g = self.groups
        w = ref.p(n, "weight").reshape(co, ci_g, steps, kh * kw)  # also the matmul layout [g, C_out/g, ...]
        w_t = torch.index_select(w, 2, t.reshape(1)).reshape(g, co // g, ci_g * kh * kw)
        xg = x.to(w_t.dtype).reshape(x.shape[0], g, 1, ci_g * kh * kw)
        return acc + torch.matmul(xg, w_t.transpose(1, 2)).reshape(x.shape[0], co).to(acc.dtype)

    def ref_emit(self, ref: Any, n: str, acc: Any) -> Any:
        """The head's output ``[B, C_out, 1, 1, 1]`` from the running sum (bias added; fixed mode: requantized)."""
        out = acc.reshape(*acc.shape, 1, 1, 1)
        if ref.mode == "fixed":
            return ref.requant(n, out, 4, 0)
        b = ref.p(n, "bias")
        return out if b is None else out + b.reshape(1, -1, 1, 1, 1).to(out.dtype)

    def to_nir(self, x: Any) -> Any:
        return x.ext.SVFConv3dHead(x.in_shape, x.shape, self.weight, self.groups, self.bias, metadata=x.meta)

    def netx_refusal(self) -> str | None:
        return "grouped Conv3d head over all T steps (emits once per clip): no netx layer, no NIR node"
