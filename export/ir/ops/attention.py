"""Spiking self-attention: head split/merge and the two spike matmuls (Kᵀ·V, then Q·(KᵀV))."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..tensor import REAL, SPIKE, STEP, TensorSpec
from .base import CostInput, Layout, Node, _need


@dataclass(frozen=True, eq=False)
class SplitHeads(Layout, Node):
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

    def move(self, ins: list, lead: int, rank: int) -> Any:
        x = ins[0].reshape(*ins[0].shape[:lead + 1], self.parts, self.heads, self.head_dim)
        x = x[(slice(None),) * (lead + 1) + (self.part,)]
        return x.permute(*range(lead), lead + 1, lead, lead + 2).contiguous()

    def to_nir(self, x: Any) -> Any:
        return x.ext.SVFSplitHeads(x.in_shape, x.shape, self.part, self.parts, self.heads, self.head_dim,
                                   metadata=x.meta)

    def netx_refusal(self) -> str | None:
        return "head split of a rescaled or shared projection: a token/head reshape on the host"


@dataclass(frozen=True, eq=False)
class MergeHeads(Layout, Node):
    """Merge heads back into tokens: [h, N, d] -> [N, h·d], Y[n, j·d + e] = X[j, n, e]."""

    op: ClassVar[str] = "merge_heads"

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        x = ins[0]
        _need(len(x.shape) == 3, f"merge_heads expects [h, N, d], got {x.shape}")
        return TensorSpec((x.shape[1], x.shape[0] * x.shape[2]), x.kind, x.rate)

    def move(self, ins: list, lead: int, rank: int) -> Any:
        x = ins[0]
        h, nt, d = x.shape[lead:]
        return x.transpose(lead, lead + 1).reshape(*x.shape[:lead], nt, h * d)

    def to_nir(self, x: Any) -> Any:
        return x.ext.SVFMergeHeads(x.in_shape, x.shape, metadata=x.meta)

    def netx_refusal(self) -> str | None:
        return "head merge (token/head reshape) on the host"


@dataclass(frozen=True, eq=False)
class SpikeMatmulKV(Node):
    """First attention product, per head: KV[j] = K[j]ᵀ · V[j]  ([d, N] x [N, d] -> [d, d]).

    Port 0: K [h, N, d] spikes; port 1: V [h, N, d] spikes. Output [h, d, d], real (integer counts
    of coincident (k = 1, v = 1) pairs; one AC each). Exact in both modes.
    """

    op: ClassVar[str] = "spike_matmul_kv"
    arity: ClassVar[int] = 2
    counted: ClassVar[bool] = True

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        k, v = ins
        _need(k.kind == SPIKE and v.kind == SPIKE, "spike_matmul_kv needs spike inputs K and V")
        _need(len(k.shape) == 3 and k.shape == v.shape,
              f"spike_matmul_kv: K {k.shape} and V {v.shape} must be equal [h, N, d]")
        h, _, d = k.shape
        return TensorSpec((h, d, d), REAL, STEP)

    def cost(self, c: CostInput) -> dict[str, int]:
        return {"macs": c.time_steps * c.n_out * c.ins[0].shape[1], "elementwise": 0, "params": 0}

    def count(self, c: Any) -> Callable:
        c.set("state_writes", c.n_out)  # the h x d x d matrix, written once per step
        ac, sin = c.key("ac"), c.key("spikes_in")

        def step(col, ins, out, nnz_in=None, nnz_out=None):
            k, v = ins  # [B, h, N, d]
            col[:, ac] += c.per_clip(k.sum(-1) * v.sum(-1))
            col[:, sin] += c.nnz(k) + c.nnz(v)
        return step

    def sim_float(self, sim: Any, n: str) -> Any:
        spike_kv, dt = sim.kernels.spike_kv, sim.dtype
        return lambda t, ins, nnz: spike_kv(ins[0], ins[1], dt)

    def sim_fixed(self, sim: Any, n: str) -> Any:
        import torch

        spike_kv = sim.kernels.spike_kv
        return lambda t, ins, nnz: spike_kv(ins[0], ins[1], torch.float64).to(torch.int64)

    def ref_float(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        k, v = ins
        return k.transpose(-2, -1) @ v

    ref_fixed = ref_float

    def to_nir(self, x: Any) -> Any:
        return x.ext.SVFSpikeMatmulKV(x.in_shape, x.in2_shape, x.shape, metadata=x.meta)

    def netx_refusal(self) -> str | None:
        return "attention matmul Kᵀ·V between two spike tensors: no netx layer or NIR node multiplies activations"


@dataclass(frozen=True, eq=False)
class SpikeMatmulQKV(Node):
    """Second attention product, per head: A[j] = s · (Q[j] · KV[j])  ([N, d] x [d, d] -> [N, d]).

    Port 0: Q [h, N, d] spikes; port 1: KV [h, d, d] (from :class:`SpikeMatmulKV`). ``scale`` s =
    d^-1/2 (0.125 for d = 64), no softmax. Each Q spike costs d ACs. Fixed point:
    y = sat_a((Q·KV)·2^shift).
    """

    op: ClassVar[str] = "spike_matmul_q_kv"
    arity: ClassVar[int] = 2
    counted: ClassVar[bool] = True
    scale: float = 0.125

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        q, kv = ins
        _need(q.kind == SPIKE, "spike_matmul_q_kv needs spike input Q on port 0")
        _need(len(q.shape) == 3 and len(kv.shape) == 3 and kv.shape == (q.shape[0], q.shape[2], q.shape[2]),
              f"spike_matmul_q_kv: Q {q.shape} and KV {kv.shape} do not fit ([h, N, d] and [h, d, d])")
        return TensorSpec(q.shape, REAL, STEP)

    def cost(self, c: CostInput) -> dict[str, int]:
        return {"macs": c.time_steps * c.n_out * c.out.shape[2], "elementwise": 0, "params": 0}

    def count(self, c: Any) -> Callable:
        d = c.in_specs[0].shape[2]
        ac, sin, sr = c.key("ac"), c.key("spikes_in"), c.key("state_reads")

        def step(col, ins, out, nnz_in=None, nnz_out=None):
            q = c.nnz(ins[0]) if nnz_in is None else nnz_in
            col[:, ac] += q * d
            col[:, sin] += q
            col[:, sr] += q * d  # each Q spike reads one row of KV
        return step

    def sim_float(self, sim: Any, n: str) -> Any:
        spike_q_kv, scale = sim.kernels.spike_q_kv, self.scale
        return lambda t, ins, nnz: spike_q_kv(ins[0], ins[1]) * scale

    def sim_fixed(self, sim: Any, n: str) -> Any:
        import torch

        q, spike_q_kv, sat = sim.quant(n), sim.kernels.spike_q_kv, sim.fixed.sat
        shift, bits = int(q["shift"]), int(q["bits"])
        return lambda t, ins, nnz: sat(spike_q_kv(ins[0], ins[1].to(torch.float64)).to(torch.int64) << shift, bits)

    def ref_setup(self, ref: Any, n: str) -> None:
        if ref.mode != "fixed":
            return super().ref_setup(ref, n)
        q = ref.quant(n)
        for field, arr in q.items():
            ref.buffer(n, field, arr)
        ref.buffer(n, "mult", np.ldexp(1.0, int(q["shift"])))  # 2^shift, exact in float64

    def ref_float(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        q, kv = ins
        return (q @ kv) * self.scale

    def ref_fixed(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        q, kv = ins
        return ref.sat((q @ kv) * ref.p(n, "mult"), ref.p(n, "bits"))

    def to_nir(self, x: Any) -> Any:
        return x.ext.SVFSpikeMatmulQKV(x.in_shape, x.in2_shape, x.shape, self.scale, metadata=x.meta)

    def netx_refusal(self) -> str | None:
        return "attention matmul Q·(KᵀV) between activations: no netx layer or NIR node multiplies activations"
