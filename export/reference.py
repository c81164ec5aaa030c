"""Reference interpreter: executes an IR graph time step by time step with plain torch ops.

:class:`ReferenceModel` is an ``nn.Module`` built from a graph. ``forward(x)`` takes frames
``[T, B, C, H, W]`` and returns logits ``[B, classes]``; the loop over T and over the nodes is
plain Python, so ``torch.onnx.export`` (TorchScript tracing) unrolls it (no SpikingJelly op involved).

Modes:

- ``"float"``: the graph's float semantics (node docstrings in :mod:`export.ir`), in float32 or
  float64. Ops are written exactly as SpikingJelly/PyTorch compute them (same expression order),
  so a traced model is reproduced bit for bit wherever the kernels agree.
- ``"fixed"``: the integer semantics of a quantized graph (the spec in
  :mod:`export.passes.quantize`), evaluated on float64 tensors that hold integers. Every value
  stays an integer below 2^53, so float64 evaluation *is* the integer arithmetic: an integer
  executor following the spec must give identical spikes, states and logits. Weighted ops may run
  in ``weight_dtype=torch.float32`` (onnxruntime has no float64 Conv), which is exact while the
  accumulator stays below 2^24: layers whose worst case (``acc_bits``) is wider keep float64
  weights (:meth:`ReferenceModel.weight_dtype`), their convolutions computed as gather + matmul
  with ``conv_impl="matmul"`` (the ONNX fixed files), so every file is exact.

Convolutions (``conv_impl``; in fixed mode only for float64 weights): ``"native"`` (default) calls
``F.conv2d``/``F.conv3d``;
``"matmul"`` computes the same sums as one gather of the padded input at precomputed tap
positions (im2col) and one batched matmul with the weight matrix (:func:`matmul_conv2d`,
:func:`matmul_conv3d_head`). It is meant for ONNX export in float64: onnxruntime's CPU provider
has no float64 ``Conv`` kernel but has float64 ``Pad``/``Gather``/``MatMul``. Only the summation
order differs from ``"native"`` (float64: ~1e-14 relative).

Neuron state is local to one call (every call is an independent clip, like ``SVFormer.forward``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F
from svformer_deploy.svformer.errors import SVFormerError
from torch import Tensor, nn

from . import ir

MODES = ("float", "fixed")
CONV_IMPLS = ("native", "matmul")
V_CLIP, X_CLIP = ir.ops.V_CLIP, ir.ops.X_CLIP  # Lava's 24-bit membrane; neuron input so that x << 6 fits


def _view(arr: Tensor, rank: int, axis: int) -> Tensor:
    """Reshape a per-channel vector so it broadcasts over a batched tensor of per-step rank ``rank``."""
    ax = axis % rank
    shape = [1] * (rank + 1)
    shape[ax + 1] = arr.shape[-1]
    return arr.reshape(shape)


class ReferenceModel(nn.Module):
    """An executable view of an IR graph (see the module docstring for modes and dtypes)."""

    def __init__(self, graph: nx.DiGraph, dtype: torch.dtype = torch.float32, mode: str = "float",
                 weight_dtype: torch.dtype | None = None, conv_impl: str = "native"):
        super().__init__()
        ir.validate(graph)
        if mode not in MODES:
            raise SVFormerError(f"unknown reference mode {mode!r}; use one of {MODES}")
        if conv_impl not in CONV_IMPLS:
            raise SVFormerError(f"unknown convolution implementation {conv_impl!r}; use one of {CONV_IMPLS}")
        self.conv_impl = conv_impl
        if mode == "fixed":
            missing = [n for n in graph.nodes if "quant" not in graph.nodes[n]]
            if missing:
                raise SVFormerError(f"graph is not quantized (no quant parameters on {missing[0]}); "
                                    "run the quantize pass")
            dtype = torch.float64
        self.mode = mode
        self.dtype = dtype
        self.wdtype = weight_dtype or dtype
        self.time_steps = int(graph.graph["time_steps"])
        self.names = ir.topo_order(graph)
        self.ops = {n: graph.nodes[n]["op"] for n in self.names}
        self.inputs = {n: ir.inputs_of(graph, n) for n in self.names}
        self.specs = {n: ir.spec(graph, n) for n in self.names}
        self.rank = {n: len(self.specs[n].shape) for n in self.names}
        self.in_name = ir.input_node(graph)
        self.out_name = ir.output_node(graph)
        self.step_nodes = [n for n in self.names if self.specs[n].rate == ir.STEP]
        self.clip_nodes = [n for n in self.names if self.specs[n].rate == ir.CLIP]
        self.heads = [n for n in self.names if self.ops[n].accumulates]
        # each op's semantics in this mode (export/ir/ops: ref_float / ref_fixed), with this model as backend
        self._fns = {n: (op.ref_fixed if mode == "fixed" else op.ref_float) for n, op in self.ops.items()}
        self._key = {n: f"n{i}" for i, n in enumerate(self.names)}
        self._quant = {n: graph.nodes[n].get("quant", {}) for n in self.names}
        for n in self.names:  # each op registers the parameters its ref hooks read (export/ir/ops: ref_setup)
            self.ops[n].ref_setup(self, n)
        self.eval()  # no training behaviour; keeps torch.onnx.export from warning

    # -- parameters -----------------------------------------------------------------------
    def buffer(self, node: str, field: str, arr: np.ndarray | Tensor, dtype: torch.dtype | None = None) -> None:
        """Register ``arr`` as the buffer :meth:`p` returns for ``(node, field)``, in ``dtype`` (default: the
        model's dtype; integers become exact floats). A tensor is stored as it is."""
        if isinstance(arr, Tensor):
            self.register_buffer(f"{self._key[node]}_{field}", arr)
            return
        arr = np.asarray(arr)
        arr = np.asarray(arr.astype(np.float64) if arr.dtype.kind in "iub" else arr, order="C")
        t = torch.from_numpy(arr.copy()).to(self.dtype if dtype is None else dtype)
        self.register_buffer(f"{self._key[node]}_{field.replace('.', '_')}", t, persistent=True)

    def quant(self, node: str) -> dict[str, np.ndarray]:
        """The fixed-point parameters of ``node`` (empty before quantization)."""
        return self._quant[node]

    def in_shape(self, node: str) -> tuple[int, ...]:
        """Per-step shape of ``node``'s first input."""
        return self.specs[self.inputs[node][0]].shape

    def weight_dtype(self, node: str) -> torch.dtype:
        """dtype of ``node``'s weights and multiply-accumulate: the model's weight dtype, except in fixed mode with
        float32 weights for a layer whose worst-case accumulator exceeds 24 bits (``acc_bits``): float64, where
        every sum of the spec is exact (with ``conv_impl="matmul"`` convolutions then need no float64 Conv)."""
        if self.mode == "fixed" and self.wdtype == torch.float32 and int(self._quant[node].get("acc_bits", 0)) > 24:
            return torch.float64
        return self.wdtype

    def p(self, node: str, field: str) -> Tensor | None:
        return getattr(self, f"{self._key[node]}_{field}", None)

    # -- execution ------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, classes]`` for frames ``[T, B, C, H, W]``."""
        return self.run(x)[0]

    def check_input(self, x: Tensor) -> None:
        want = self.specs[self.in_name].shape
        if x.dim() != 5 or x.shape[0] != self.time_steps or tuple(x.shape[2:]) != tuple(want):
            raise SVFormerError(f"input shape {list(x.shape)} does not fit the graph: expected "
                                f"[T, B, C, H, W] = [{self.time_steps}, B, {', '.join(map(str, want))}]")

    def run(self, x: Tensor, record: bool | Collection[str] = False,
            observe: Callable[[str, Tensor], None] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and, with ``record``, every node's output (step rate: ``[T, B, ...]``; clip rate: ``[B, ...]``);
        ``record`` may also name the nodes to keep (e.g. only the neurons, to bound memory).

        ``observe(name, value)`` is called on every node output as it is produced (per step for
        step-rate nodes) without keeping them. In ``"fixed"`` mode recorded/observed real-valued
        outputs are the integer codes (as float64); the logits are always real (codes x output scale).
        """
        self.check_input(x)
        keep = set(self.names) if record is True else set(record or ())
        rec: dict[str, list[Tensor]] = {n: [] for n in self.step_nodes if n in keep}
        state: dict[str, Tensor] = {}
        head_in: dict[str, list[Tensor]] = {n: [] for n in self.heads}
        for t in range(x.shape[0]):
            env: dict[str, Tensor] = {}
            for n in self.step_nodes:
                ins = [env[i] for i in self.inputs[n]]
                env[n] = self._fns[n](self, n, t, [x[t]] if n == self.in_name else ins, state)
                if n in rec:
                    rec[n].append(env[n])
                if observe is not None:
                    observe(n, env[n])
            for n in self.heads:
                head_in[n].append(env[self.inputs[n][0]])
        out: dict[str, Tensor] = {n: torch.stack(v) for n, v in rec.items()}
        env = {}
        for n in self.clip_nodes:
            if n in head_in:  # accumulating op: the whole clip at once, [B, C, T, ...]
                env[n] = self._fns[n](self, n, self.time_steps - 1, [torch.stack(head_in[n], dim=2)], state)
            else:
                env[n] = self._fns[n](self, n, 0, [env[i] for i in self.inputs[n]], state)
            if n in keep:
                out[n] = env[n]
            if observe is not None:
                observe(n, env[n])
        return env[self.out_name], out

    # -- the backend the op hooks execute with (export/ir/ops) ------------------------------
    @staticmethod
    def view(arr: Tensor, rank: int, axis: int) -> Tensor:
        """A per-channel vector shaped to broadcast over a batched tensor of per-step rank ``rank``."""
        return _view(arr, rank, axis)

    @staticmethod
    def floor(x: Tensor) -> Tensor:
        """floor, the one rounding of the fixed-point hooks (right shifts, Lava's truncation); the QAT view
        (:mod:`export.qat`) replaces it by a straight-through floor."""
        return torch.floor(x)

    @staticmethod
    def fire(v: Tensor, theta: Tensor) -> Tensor:
        """Spikes of a fixed-point membrane ``v`` (strict threshold ``v > theta``, as Lava) as 0/1 float64; the QAT
        view gives it a surrogate gradient."""
        return (v > theta).to(torch.float64)

    @staticmethod
    def sat(x: Tensor, bits: Tensor) -> Tensor:
        """Symmetric saturation to ``bits``: clamp to ±(2^(bits-1) - 1)."""
        return _sat(x, bits)

    @staticmethod
    def matmul_conv2d(*args, **kwargs) -> Tensor:
        """:func:`matmul_conv2d` (``conv_impl="matmul"``)."""
        return matmul_conv2d(*args, **kwargs)

    @staticmethod
    def conv_gather_index(*args, **kwargs) -> Tensor:
        """:func:`conv_gather_index` (``conv_impl="matmul"``)."""
        return conv_gather_index(*args, **kwargs)

    @staticmethod
    def matmul_conv3d_head(*args, **kwargs) -> Tensor:
        """:func:`matmul_conv3d_head` (``conv_impl="matmul"``)."""
        return matmul_conv3d_head(*args, **kwargs)

    def requant(self, n: str, acc: Tensor, rank: int, axis: int = 0) -> Tensor:
        """acc (+ integer bias), then the optional per-channel requantization to ``bits``."""
        b = self.p(n, "bias")
        if b is not None:
            acc = acc + (b if b.dim() == 3 else _view(b, rank, axis))
        m = self.p(n, "m")
        if m is None:
            return acc
        half, inv = self.p(n, "half"), self.p(n, "inv")
        y = self.floor((acc * _view(m, rank, axis) + _view(half, rank, axis)) * _view(inv, rank, axis))
        return _sat(y, self.p(n, "bits"))


def conv_gather_index(h: int, w: int, kernel: tuple[int, int], stride: tuple[int, int],
                      padding: tuple[int, int]) -> Tensor:
    """Flat positions in the zero-padded ``[H + 2pH, W + 2pW]`` image read by every kernel tap and output pixel.

    int64 ``[kH·kW·H_out·W_out]``, tap-major: entry ``(u, v, i, j)`` is ``(u + sH·i)·W_pad + v + sW·j``.
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    wp = w + 2 * pw
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    rows = (torch.arange(kh).view(kh, 1, 1, 1) + sh * torch.arange(ho).view(1, 1, ho, 1)) * wp
    cols = torch.arange(kw).view(1, kw, 1, 1) + sw * torch.arange(wo).view(1, 1, 1, wo)
    return (rows + cols).reshape(-1)


def matmul_conv2d(x: Tensor, w: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int],
                  groups: int, index: Tensor | None = None, kernel: tuple[int, int] | None = None) -> Tensor:
    """``F.conv2d(x, w, bias, stride, padding, 1, groups)`` as one gather and one batched matmul (no Conv op).

    ``x`` [B, C, H, W]; ``w`` [C_out, C/g, kH, kW], or already the per-group matrix
    [g, C_out/g, C/g·kH·kW] with ``kernel`` = (kH, kW); ``bias`` [C_out], or anything that broadcasts
    to [C_out, H_out, W_out]. The zero-padded image, flattened per channel, is gathered at
    :func:`conv_gather_index` (``index``, computed when not given): per channel a
    [kH·kW, H_out·W_out] block of the values every tap reads (im2col), so that per group the input
    is a [C/g·kH·kW, H_out·W_out] matrix whose row order is the weight's flattened [C/g, kH, kW]
    order, and ``W_g @ X_g`` gives the output. Every product and sum is one of conv2d's, in another
    order. A 1x1 kernel with stride 1 and no padding needs no gather. Shapes use -1 for the batch,
    so that an exported graph has no shape arithmetic for it.
    """
    c, h, wd = x.shape[1:]
    if w.dim() == 4:
        kernel = w.shape[2:]
        w = w.reshape(groups, w.shape[0] // groups, -1)
    elif kernel is None:
        raise SVFormerError("matmul_conv2d: a weight matrix needs the kernel size")
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    co, k = groups * w.shape[1], w.shape[2]
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
        cols = x.reshape(-1, groups, k, h * wd)
    else:
        if index is None:
            index = conv_gather_index(h, wd, (kh, kw), (sh, sw), (ph, pw))
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        cols = x.reshape(-1, c, (h + 2 * ph) * (wd + 2 * pw)).index_select(2, index).reshape(-1, groups, k, ho * wo)
    y = (w @ cols).reshape(-1, co, ho, wo)  # [B, g, C_out/g, H_out·W_out] -> [B, C_out, H_out, W_out]
    if bias is None:
        return y
    return y + (bias.reshape(co, 1, 1) if bias.dim() == 1 else bias)


def matmul_conv3d_head(x: Tensor, w: Tensor, bias: Tensor | None, groups: int) -> Tensor:
    """``F.conv3d(x, w, bias, groups=groups)`` for a kernel that covers the whole input (the head), as a matmul.

    ``x`` [B, C, T, h, w]; ``w`` [C_out, C/g, T, h, w] or its per-group matrix [g, C_out/g, C/g·T·h·w]
    -> [B, C_out, 1, 1, 1]: per group, the weight matrix times the flattened input.
    """
    if w.dim() == 5:
        w = w.reshape(groups, w.shape[0] // groups, -1)
    co, k = groups * w.shape[1], w.shape[2]
    y = (w @ x.reshape(-1, groups, k, 1)).reshape(-1, co)  # [B, g, C_out/g, 1] -> [B, C_out]
    if bias is not None:
        y = y + bias
    return y.reshape(-1, co, 1, 1, 1)


def _sat(x: Tensor, bits: Tensor) -> Tensor:
    """Symmetric saturation to ``bits``: clamp to ±(2^(bits-1) - 1)."""
    lim = torch.pow(2.0, bits - 1) - 1
    return torch.maximum(torch.minimum(x, lim), -lim)


def run_graph(graph: nx.DiGraph, x: Tensor, dtype: torch.dtype = torch.float64, mode: str = "float",
              record: bool | Collection[str] = False,
              batch_size: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Run ``graph`` on frames ``[T, B, C, H, W]`` (in batches of ``batch_size`` clips) without gradients."""
    ref = ReferenceModel(graph, dtype=dtype, mode=mode)
    with torch.no_grad():
        if batch_size is None or x.shape[1] <= batch_size:
            return ref.run(x, record=record)
        parts = [ref.run(x[:, i:i + batch_size], record=record) for i in range(0, x.shape[1], batch_size)]
    logits = torch.cat([p[0] for p in parts])
    rec = {}
    if record:
        for n in parts[0][1]:
            dim = 1 if ref.specs[n].rate == ir.STEP else 0
            rec[n] = torch.cat([p[1][n] for p in parts], dim=dim)
    return logits, rec
