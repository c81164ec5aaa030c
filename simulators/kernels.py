"""Accumulation kernels of the weighted ops: event-driven for spike inputs, dense for real inputs.

A spike tensor of one time step is a ``bool`` mask. A weighted op reads it as a list of events
(``mask.nonzero()``, in row-major order) and sums, for every event, the weights of the synapses
that event drives, exactly what a neuromorphic core does:

- ``linear`` on tokens ``[N, C_in]``: events (n, i) form a CSR matrix (one row per token) that
  multiplies ``Wᵀ`` (``torch.sparse.mm``, MKL): each event adds the weight column W[:, i] to token n.
- ``conv2d`` with ``groups == 1``: for every kernel tap (u, v) the events that reach an output
  position through that tap form a CSR matrix ``[H_out·W_out, C_in]`` built directly from the
  sorted event list, multiplied by that tap's ``[C_in, C_out]`` weights; taps are summed.
- ``conv2d`` with ``groups > 1`` (depthwise, grouped) and the head's ``conv3d``: every (event, tap)
  pair scatters its group's ``C_out/g`` weights into the output (``index_add_``).

Every kernel takes a batch of clips: tensors carry a leading batch axis ``B`` (one step of B
clips), and an event of clip b only ever reaches outputs of clip b (its row/scatter index carries
b), so each clip's sums are those of running it alone.

Dense kernels (``F.conv2d`` / ``F.linear`` on the 0/1 mask) give the same sums (up to float
rounding order) and are faster on a CPU above a few percent density, so the ``"auto"`` policy
uses event kernels only below a density (input spikes / input size of one clip, decided per clip of
a batch: :func:`by_clip`) measured per kernel kind
(:data:`DEFAULT_MAX_DENSITY`); ``"events"`` forces event kernels, ``"dense"`` dense ones. Operation counts never
depend on the kernel: they are computed from the events by :mod:`simulators.counting`. Kernels
return float tensors in the caller's dtype; for integer operands they are exact (see
:mod:`simulators.fixed`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from svformer_deploy.svformer.errors import SVFormerError
from torch import Tensor

KERNEL_MODES = ("auto", "events", "dense")
# auto: event kernels below these input densities (spikes / input size), by kernel kind; the
# crossover of the event kernels (MKL CSR x dense, scatter) against MKL/oneDNN dense kernels on
# SVFormer-base layer shapes, measured with ``benchmarks/bench_simulator.py --kernels``
DEFAULT_MAX_DENSITY: dict[str, float] = {
    "linear": 0.08,  # tokens x weights (GSA qkv/proj/MLP): CSR wins up to ~10 %
    "pointwise": 0.04,  # 1x1 conv = linear over pixels: ~5 %
    "conv": 0.02,  # k x k conv, groups = 1 (patch embeddings, fused cascades): ~2 %
    "grouped": 0.0,  # depthwise / grouped: the dense kernel is cheaper at any useful density
    "head": 0.05,  # the head's per-step conv3d share
}



@dataclass(frozen=True)
class KernelPolicy:
    """Which kernel a spike-driven weighted op uses: ``"events"``, ``"dense"`` or ``"auto"`` by density."""

    mode: str = "auto"
    max_density: dict[str, float] | None = None  # per kernel kind; None: DEFAULT_MAX_DENSITY

    def __post_init__(self) -> None:
        if self.mode not in KERNEL_MODES:
            raise SVFormerError(f"unknown kernel mode {self.mode!r}; use one of {', '.join(KERNEL_MODES)}")

    def use_events(self, kind: str, nnz: int | None, size: int) -> bool:
        """Whether an op of kernel ``kind`` reading ``nnz`` spikes out of ``size`` inputs uses its event kernel."""
        if self.mode != "auto":
            return self.mode == "events"
        limit = (self.max_density or DEFAULT_MAX_DENSITY).get(kind, 0.0)
        return nnz is not None and nnz <= limit * size


def by_clip(policy: KernelPolicy, kind: str, mask: Tensor, nnz: Sequence[int] | None,
            events: Callable[[Tensor], Tensor], dense: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply ``events`` to the clips of ``mask`` ``[B, ...]`` whose own density (``nnz[b]`` spikes out of
    one clip's size) makes ``policy`` pick the event kernel, and ``dense`` to the others, so every
    clip of a batch uses the kernel it would use alone (both kernels run batched over their clips)."""
    size = mask[0].numel()
    picks = [policy.use_events(kind, None if nnz is None else int(n), size)
             for n in (nnz if nnz is not None else [None] * mask.shape[0])]
    if all(picks):
        return events(mask)
    if not any(picks):
        return dense(mask)
    ev = torch.tensor([b for b, p in enumerate(picks) if p])
    de = torch.tensor([b for b, p in enumerate(picks) if not p])
    out_e, out_d = events(mask[ev]), dense(mask[de])
    out = torch.empty((mask.shape[0], *out_e.shape[1:]), dtype=out_e.dtype)
    out[ev], out[de] = out_e, out_d
    return out


def _csr(rows: Tensor, cols: Tensor, n_rows: int, n_cols: int, dtype: torch.dtype) -> Tensor:
    """A 0/1 CSR matrix from (row, col) pairs sorted by row (then col)."""
    counts = torch.bincount(rows, minlength=n_rows)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=crow[1:])
    with warnings.catch_warnings():  # "sparse CSR support is in beta" (the kernels used here are stable)
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, cols, torch.ones(cols.numel(), dtype=dtype), size=(n_rows, n_cols),
                                       check_invariants=False)


class LinearKernel:
    """Y[..., o] = Σ_i W[o, i] · X[..., i] (no bias) for spikes or real inputs."""

    def __init__(self, weight: Tensor, policy: KernelPolicy):
        self.weight = weight.contiguous()  # [C_out, C_in]
        self.weight_t = weight.t().contiguous()  # [C_in, C_out]
        self.policy = policy

    def dense(self, x: Tensor) -> Tensor:
        x = x.to(self.weight.dtype)
        if x.dim() == 2:  # one vector per clip (the head): a matrix-vector product per clip, as for a single
            return torch.stack([F.linear(row, self.weight) for row in x])  # clip (BLAS sums a GEMM differently)
        return F.linear(x, self.weight)

    def spikes(self, mask: Tensor, nnz: Sequence[int] | None) -> Tensor:
        """``[B, ..., C_in]`` spikes (``nnz``: spikes per clip) -> ``[B, ..., C_out]``."""
        return by_clip(self.policy, "linear", mask, nnz, self._events, self.dense)

    def _events(self, mask: Tensor) -> Tensor:
        return self.events_2d(mask.reshape(-1, mask.shape[-1])).reshape(*mask.shape[:-1], self.weight.shape[0])

    def events_2d(self, m2: Tensor) -> Tensor:
        """``[M, C_in]`` mask -> ``[M, C_out]``: each event (m, i) adds W[:, i] to row m."""
        ev = m2.nonzero()
        csr = _csr(ev[:, 0], ev[:, 1], m2.shape[0], m2.shape[1], self.weight.dtype)
        return torch.sparse.mm(csr, self.weight_t)


class Conv2dKernel:
    """Y[b, o, y, x] = Σ W[o, i, u, v] · X[b, g(o)·C_in/g + i, s·y + u - p, s·x + v - p] (no bias), per clip b."""

    def __init__(self, weight: Tensor, stride: tuple[int, int], padding: tuple[int, int], groups: int,
                 in_shape: tuple[int, int, int], policy: KernelPolicy):
        self.weight = weight.contiguous()  # [C_out, C_in/g, kh, kw]
        self.stride, self.padding, self.groups = tuple(stride), tuple(padding), int(groups)
        self.in_shape = tuple(in_shape)
        c_out, ci_g, kh, kw = weight.shape
        _, h, w = in_shape
        self.out_hw = ((h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1)
        self.policy = policy
        self.c_out, self.kh, self.kw = c_out, kh, kw
        g = self.groups
        self.m = c_out // g
        self.pointwise = (kh, kw) == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0) and g == 1
        self.kind = "pointwise" if self.pointwise else "conv" if g == 1 else "grouped"
        if self.pointwise:
            self.linear = LinearKernel(weight.reshape(c_out, ci_g), policy)
        if g == 1:
            self.taps = weight.permute(2, 3, 1, 0).contiguous()  # [kh, kw, C_in, C_out]
        else:  # per input channel c and tap: the m weights of its group, [C_in, kh, kw, m]
            self.src = weight.reshape(g, self.m, ci_g, kh, kw).permute(0, 2, 3, 4, 1).reshape(g * ci_g, kh, kw, self.m)
            self.src = self.src.contiguous()
            self.ci_g = ci_g

    def dense(self, x: Tensor) -> Tensor:
        return F.conv2d(x.to(self.weight.dtype), self.weight, None, self.stride, self.padding, 1, self.groups)

    def spikes(self, mask: Tensor, nnz: Sequence[int] | None) -> Tensor:
        """``[B, C_in, H, W]`` spikes (``nnz``: spikes per clip) -> ``[B, C_out, H_out, W_out]``."""
        return by_clip(self.policy, self.kind, mask, nnz, self._events, self.dense)

    def _events(self, mask: Tensor) -> Tensor:
        """Event kernels; the output is contiguous, as the dense kernel's (a consumer's BLAS path can depend
        on the memory layout, and so could its rounding)."""
        if self.pointwise:  # a linear map over pixels: rows = (clip, position), sorted (b, y, x, c) events
            b, c, h, w = mask.shape
            out = self.linear.events_2d(mask.permute(0, 2, 3, 1).reshape(b * h * w, c))
            return out.reshape(b, h, w, self.c_out).permute(0, 3, 1, 2).contiguous()
        return (self._events_dense_groups(mask) if self.groups == 1 else self._events_scatter(mask)).contiguous()

    def _tap_targets(self, ys: Tensor, xs: Tensor, u: int, v: int) -> tuple[Tensor, Tensor]:
        """Valid flag and output position (oy·W_out + ox) of events at (ys, xs) through tap (u, v)."""
        (sy, sx), (py, px), (ho, wo) = self.stride, self.padding, self.out_hw
        ny, nx = ys + (py - u), xs + (px - v)
        oy, ox = torch.div(ny, sy, rounding_mode="floor"), torch.div(nx, sx, rounding_mode="floor")
        ok = (ny >= 0) & (nx >= 0) & (oy * sy == ny) & (ox * sx == nx) & (oy < ho) & (ox < wo)
        return ok, oy * wo + ox

    def _events_dense_groups(self, mask: Tensor) -> Tensor:
        ev = mask.permute(0, 2, 3, 1).nonzero()  # (b, y, x, c), sorted row-major
        bs, ys, xs, cs = ev[:, 0], ev[:, 1], ev[:, 2], ev[:, 3]
        ho, wo = self.out_hw
        nb = mask.shape[0]
        acc = torch.zeros(nb * ho * wo, self.c_out, dtype=self.weight.dtype)
        base = bs * (ho * wo)
        for u in range(self.kh):
            for v in range(self.kw):
                ok, pos = self._tap_targets(ys, xs, u, v)
                if not bool(ok.any()):
                    continue
                csr = _csr((base + pos)[ok], cs[ok], nb * ho * wo, self.in_shape[0], self.weight.dtype)
                acc += torch.sparse.mm(csr, self.taps[u, v])
        return acc.reshape(nb, ho * wo, self.c_out).transpose(1, 2).reshape(nb, self.c_out, ho, wo)

    def _events_scatter(self, mask: Tensor) -> Tensor:
        ev = mask.nonzero()  # (b, c, y, x)
        bs, cs, ys, xs = ev[:, 0], ev[:, 1], ev[:, 2], ev[:, 3]
        ho, wo = self.out_hw
        g, m = self.groups, self.m
        nb = mask.shape[0]
        out = torch.zeros(nb * ho * wo * g, m, dtype=self.weight.dtype)
        grp = torch.div(cs, self.ci_g, rounding_mode="floor") + bs * (ho * wo * g)
        for u in range(self.kh):
            for v in range(self.kw):
                ok, pos = self._tap_targets(ys, xs, u, v)
                if bool(ok.any()):
                    out.index_add_(0, pos[ok] * g + grp[ok], self.src[cs[ok], u, v])
        return out.reshape(nb, ho, wo, g, m).permute(0, 3, 4, 1, 2).reshape(nb, self.c_out, ho, wo)


class HeadConv3dKernel:
    """The head's per-step share: Y_t[o] = Σ_{i, y, x} W[o, i, t, y, x] · X_t[g(o)·C_in/g + i, y, x]."""

    def __init__(self, weight: Tensor, groups: int, policy: KernelPolicy):
        self.weight = weight.contiguous()  # [C_out, C_in/g, T, h, w]
        c_out, ci_g, steps, h, w = weight.shape
        self.groups, self.ci_g, self.m, self.c_out = int(groups), ci_g, c_out // groups, c_out
        self.policy = policy
        self.per_step = [weight[:, :, t].contiguous() for t in range(steps)]
        g = self.groups
        # per step: [C_in, h, w, m], the weights an event at (c, y, x) drives
        self.src = [wt.reshape(g, self.m, ci_g, h, w).permute(0, 2, 3, 4, 1).reshape(g * ci_g, h, w, self.m)
                    .contiguous() for wt in self.per_step]

    def dense(self, x: Tensor, t: int) -> Tensor:
        """``[B, C_in, h, w]`` -> ``[B, C_out]``: step ``t``'s share of every clip's sums."""
        return F.conv2d(x.to(self.weight.dtype), self.per_step[t], None, 1, 0, 1, self.groups).reshape(x.shape[0], -1)

    def spikes(self, mask: Tensor, nnz: Sequence[int] | None, t: int) -> Tensor:
        """``[B, C_in, h, w]`` spikes of step ``t`` (``nnz``: spikes per clip) -> ``[B, C_out]``."""
        return by_clip(self.policy, "head", mask, nnz, lambda m: self._events(m, t), lambda m: self.dense(m, t))

    def _events(self, mask: Tensor, t: int) -> Tensor:
        ev = mask.nonzero()  # (b, c, y, x)
        nb = mask.shape[0]
        out = torch.zeros(nb * self.groups, self.m, dtype=self.weight.dtype)
        grp = torch.div(ev[:, 1], self.ci_g, rounding_mode="floor") + ev[:, 0] * self.groups
        out.index_add_(0, grp, self.src[t][ev[:, 1], ev[:, 2], ev[:, 3]])
        return out.reshape(nb, -1)


def spike_kv(k: Tensor, v: Tensor, dtype: torch.dtype) -> Tensor:
    """KV[b, j] = K[b, j]ᵀ · V[b, j] per clip and head for spike masks ``[B, h, N, d]``: coincidence counts
    ``[B, h, d, d]``."""
    return torch.matmul(k.transpose(-2, -1).to(dtype), v.to(dtype))


def spike_q_kv(q: Tensor, kv: Tensor) -> Tensor:
    """Q[b, j] · KV[b, j] per clip and head: each Q spike (b, j, n, i) adds the row KV[b, j, i, :] to output row n."""
    return torch.matmul(q.to(kv.dtype), kv)
