"""Event-driven executors of an IR graph: float reference and integer fixed-point, with exact counts.

:class:`Simulator` runs one clip (frames ``[T, C, H, W]``) through a graph written by the export
pipeline, **one frame per time step**: at step t every step-rate node is evaluated once in
topological order, neurons carry their membrane from step t-1, the head conv3d accumulates its
share of step t, and after step T-1 the clip-rate nodes (head BN/flatten/linear/output) run once.

Spike tensors are boolean masks (one per step). Weighted ops read them as events through
:mod:`simulators.kernels` (CSR / scatter kernels over the active indices below a density
threshold, a GEMM on the 0/1 mask above it: same sums). Real-valued tensors (pixels, residual
streams, BN outputs) are dense. :mod:`simulators.counting` counts, from the same events, the
work of every layer at every step.

Modes:

- ``"float"``: the graph's float semantics (node docstrings in :mod:`export.ir`, as the reference
  interpreter :mod:`export.reference` and SpikingJelly evaluate them: same expressions, same
  order inside each op), in float32 (default) or float64 (for verification: identical spikes to
  the PyTorch model).
- ``"integer"``: the fixed-point spec of :mod:`export.passes.quantize` on int64 (the arithmetic is
  restated in :mod:`simulators.fixed`); needs a quantized graph (``quant`` on every node). Its
  spikes, codes and logits are identical to ``ReferenceModel(graph, mode="fixed")``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F
from svformer_deploy.export import ir
from svformer_deploy.svformer.errors import SVFormerError
from torch import Tensor

from . import fixed
from .counting import LayerCounter, LayerInfo, build_counters, layer_infos
from .kernels import Conv2dKernel, HeadConv3dKernel, KernelPolicy, LinearKernel, spike_kv, spike_q_kv

MODES = ("float", "integer")
StepFn = Callable[[int, list[Tensor], int | None], Tensor]  # (step, inputs, spikes in input 0)


@dataclass
class SimResult:
    """What one clip's simulation produced.

    ``logits``: float64 ``[classes]``. ``counts``: per work node, int64 ``[len(COUNT_KEYS), T]``
    (``simulators.counting.COUNT_KEYS`` order). ``spikes``: per neuron layer, bool ``[T, ...]``
    (with ``record_spikes``). ``values``: every node's output (``[T, ...]`` for step-rate nodes;
    integer codes in integer mode), with ``record_values``. Times in seconds.
    """

    logits: np.ndarray
    counts: dict[str, np.ndarray]
    step_seconds: list[float]
    wall_s: float
    spikes: dict[str, Tensor] | None = None
    values: dict[str, Tensor] | None = None


def _as_tensor(arr: np.ndarray | float, dtype: torch.dtype) -> Tensor:
    a = np.asarray(arr)
    if a.dtype.kind in "iub" and dtype.is_floating_point:
        a = a.astype(np.float64)
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def _channel_view(arr: Tensor, rank: int, axis: int) -> Tensor:
    """Reshape a per-channel vector to broadcast along ``axis`` of a per-step tensor of rank ``rank``."""
    shape = [1] * rank
    shape[axis % rank] = arr.shape[-1]
    return arr.reshape(shape)


class Simulator:
    """Executes one IR graph clip by clip (see the module docstring).

    ``mode``: ``"float"`` or ``"integer"``; ``dtype``: float32/float64 (float mode); ``kernel``:
    ``"auto"``, ``"events"`` or ``"dense"`` (or a :class:`KernelPolicy`); ``count``: keep exact
    per-layer, per-step counts (turning it off only saves the counting time).
    """

    def __init__(self, graph: nx.DiGraph, mode: str = "float", dtype: torch.dtype = torch.float32,
                 kernel: str | KernelPolicy = "auto", count: bool = True):
        ir.validate(graph)
        if mode not in MODES:
            raise SVFormerError(f"unknown simulator mode {mode!r}; use one of {', '.join(MODES)}")
        if dtype not in (torch.float32, torch.float64):
            raise SVFormerError(f"the float simulator runs float32 or float64, not {dtype}")
        if mode == "integer":
            missing = [n for n in graph.nodes if "quant" not in graph.nodes[n]]
            if missing:
                raise SVFormerError(f"the integer simulator needs a quantized graph (no fixed-point parameters on "
                                    f"{missing[0]}); export with quantization")
        self.graph = graph
        self.mode = mode
        self.dtype = dtype
        self.policy = kernel if isinstance(kernel, KernelPolicy) else KernelPolicy(kernel)
        self.time_steps = int(graph.graph["time_steps"])
        self.names = ir.topo_order(graph)
        self.ops = {n: ir.op_of(graph, n) for n in self.names}
        self.inputs = {n: ir.inputs_of(graph, n) for n in self.names}
        self.specs = {n: ir.spec(graph, n) for n in self.names}
        self.in_name, self.out_name = ir.input_node(graph), ir.output_node(graph)
        self.step_nodes = [n for n in self.names if self.specs[n].rate == ir.STEP]
        self.clip_nodes = [n for n in self.names if self.specs[n].rate == ir.CLIP]
        self.heads = [n for n in self.clip_nodes if self.ops[n].op == "conv3d"]
        self.neurons = [n for n in self.names if self.ops[n].op == "neuron"]
        self.count = count
        self.layers: list[LayerInfo] = layer_infos(graph, mode, dtype)
        self._fns: dict[str, StepFn] = {}
        self._state: dict[str, Tensor] = {}
        self._heads: dict[str, tuple[HeadConv3dKernel, torch.dtype]] = {}
        prefix = "_i_" if mode == "integer" else "_f_"
        for n in self.names:
            op = self.ops[n]
            builder = getattr(self, f"{prefix}{op.op}", None) or getattr(self, f"_any_{op.op}")
            self._fns[n] = builder(n, op)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(T, C, H, W)`` of the frames :meth:`run` expects."""
        return (self.time_steps, *self.specs[self.in_name].shape)

    def check_input(self, frames: Tensor) -> None:
        if frames.dim() != 4 or tuple(frames.shape) != self.input_shape:
            raise SVFormerError(f"input frames {list(frames.shape)} do not fit the graph: expected "
                                f"[T, C, H, W] = {list(self.input_shape)}")

    # -- running ------------------------------------------------------------------------------
    def run(self, frames: Tensor, record_spikes: bool = False, record_values: bool = False,
            on_step: Callable[[int], None] | None = None) -> SimResult:
        """Simulate one clip ``[T, C, H, W]`` (float32 frames) and return logits, counts and timing.

        ``on_step(t)`` is called after each time step (progress display).
        """
        self.check_input(frames)
        counters: dict[str, LayerCounter] = build_counters(self.graph) if self.count else {}
        spikes: dict[str, list[Tensor]] = {n: [] for n in self.neurons} if record_spikes else {}
        values: dict[str, list[Tensor]] = {n: [] for n in self.step_nodes} if record_values else {}
        self._state = {}
        step_s: list[float] = []
        # (name, step function, input names, dynamic counter or None), resolved once per run
        plan = [(n, (lambda t, ins, nnz: self._input(frames[t])) if n == self.in_name else self._fns[n],
                 tuple(self.inputs[n]), counters[n] if n in counters and counters[n].dynamic else None)
                for n in self.step_nodes]
        t_start = time.perf_counter()
        with torch.no_grad():
            for t in range(self.time_steps):
                t0 = time.perf_counter()
                env: dict[str, Tensor] = {}
                nnz: dict[str, int] = {}
                for n, fn, in_names, c in plan:
                    ins = [env[i] for i in in_names]
                    nnz_in = nnz.get(in_names[0]) if in_names else None
                    out = fn(t, ins, nnz_in)
                    env[n] = out
                    if out.dtype == torch.bool:
                        nnz[n] = int(out.count_nonzero())
                    if c is not None:
                        c.step(t, ins, out, nnz_in, nnz.get(n))
                    if record_spikes and n in spikes:
                        spikes[n].append(out)
                    if record_values:
                        values[n].append(out)
                for h in self.heads:
                    src = self.inputs[h][0]
                    self._head_step(h, t, env[src], nnz.get(src))
                    c = counters.get(h)
                    if c is not None:
                        c.step(t, [env[src]], env[src], nnz.get(src))
                step_s.append(time.perf_counter() - t0)
                if on_step is not None:
                    on_step(t)
            t0 = time.perf_counter()
            env = {}
            for n in self.clip_nodes:  # the head conv3d reads its accumulator, not a clip-rate input
                ins = [] if n in self._heads else [env[i] for i in self.inputs[n]]
                env[n] = self._fns[n](self.time_steps - 1, ins, None)
                c = counters.get(n)
                if c is not None and n not in self._heads:
                    c.step(self.time_steps - 1, ins, env[n])
            step_s[-1] += time.perf_counter() - t0
        logits = env[self.out_name].to(torch.float64).reshape(-1).numpy().copy()
        result = SimResult(logits=logits, counts={n: c.finish() for n, c in counters.items()},
                           step_seconds=step_s, wall_s=time.perf_counter() - t_start)
        if record_spikes:
            result.spikes = {n: torch.stack(v) for n, v in spikes.items()}
        if record_values:
            result.values = {n: torch.stack(v) for n, v in values.items()}
            result.values.update({n: env[n] for n in self.clip_nodes})
        self._state = {}
        return result

    def _input(self, frame: Tensor) -> Tensor:
        if self.mode == "float":
            return frame.to(self.dtype)
        q = self.graph.nodes[self.in_name]["quant"]
        return fixed.quantize_input(frame, float(q["scale"]), int(q["bits"]))

    def _head_step(self, n: str, t: int, x: Tensor, nnz: int | None) -> None:
        kernel, acc_dtype = self._heads[n]
        part = kernel.spikes(x, nnz, t) if x.dtype == torch.bool else kernel.dense(x, t)
        part = part.to(torch.int64) if self.mode == "integer" else part.to(acc_dtype)
        self._state[n] = part if t == 0 else self._state[n] + part

    def _rank(self, n: str) -> int:
        return len(self.specs[n].shape)

    # -- layout ops (both modes) ----------------------------------------------------------------
    def _any_input(self, n, op):
        return None

    def _any_output(self, n, op):
        return lambda t, ins, nnz: ins[0]

    def _any_split_heads(self, n, op):
        def fn(t, ins, nnz):
            x = ins[0]
            return x.reshape(x.shape[0], op.parts, op.heads, op.head_dim)[:, op.part].permute(1, 0, 2).contiguous()
        return fn

    def _any_merge_heads(self, n, op):
        def fn(t, ins, nnz):
            h, nt, d = ins[0].shape
            return ins[0].transpose(0, 1).reshape(nt, h * d)
        return fn

    def _any_to_tokens(self, n, op):
        return lambda t, ins, nnz: ins[0].flatten(1).t()

    def _any_to_image(self, n, op):
        return lambda t, ins, nnz: ins[0].t().reshape(ins[0].shape[1], op.height, op.width)

    def _any_flatten(self, n, op):
        return lambda t, ins, nnz: ins[0].reshape(-1)

    def _any_concat(self, n, op):
        axis = op.axis % self._rank(n)
        return lambda t, ins, nnz: torch.cat(ins, dim=axis)

    # -- float semantics ------------------------------------------------------------------------
    def _weighted_float(self, n: str, op, make_kernel, bias_view: Callable[[Tensor], Tensor]) -> StepFn:
        dt = self.dtype
        kernel = make_kernel(_as_tensor(op.weight, dt))
        b = None if op.bias is None else bias_view(_as_tensor(op.bias, dt))

        def fn(t, ins, nnz):
            x = ins[0]
            y = kernel.spikes(x, nnz) if x.dtype == torch.bool else kernel.dense(x)
            return y if b is None else y.add_(b)  # y is the kernel's fresh output
        return fn

    def _f_conv2d(self, n, op):
        in_shape = self.specs[self.inputs[n][0]].shape
        return self._weighted_float(
            n, op, lambda w: Conv2dKernel(w, op.stride, op.padding, op.groups, in_shape, self.policy),
            lambda b: b.reshape(-1, 1, 1) if b.dim() == 1 else b)

    def _f_linear(self, n, op):
        return self._weighted_float(n, op, lambda w: LinearKernel(w, self.policy), lambda b: b)

    def _f_conv3d(self, n, op):
        self._heads[n] = (HeadConv3dKernel(_as_tensor(op.weight, self.dtype), op.groups, self.policy), self.dtype)
        b = None if op.bias is None else _as_tensor(op.bias, self.dtype)

        def fn(t, ins, nnz):
            acc = self._state[n]
            return (acc if b is None else acc + b).reshape(-1, 1, 1, 1)
        return fn

    def _per_step_views(self, n: str, arr: np.ndarray | None, dtype: torch.dtype, axis: int) -> list[Tensor] | None:
        """A per-channel ([C]) or per-step ([T, C]) parameter as one broadcastable view per step."""
        if arr is None:
            return None
        a = _as_tensor(arr, dtype)
        return [_channel_view(a[t] if a.dim() == 2 else a, self._rank(n), axis) for t in range(self.time_steps)]

    def _f_affine(self, n, op):
        s = self._per_step_views(n, op.scale, self.dtype, op.axis)
        b = self._per_step_views(n, op.bias, self.dtype, op.axis)

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

    def _f_batchnorm(self, n, op):
        rank, dt = self._rank(n), self.dtype
        arrs = [_as_tensor(getattr(op, f), dt) for f in ("mean", "var", "weight", "bias")]
        last = rank > 1 and op.axis % rank == rank - 1

        def fn(t, ins, nnz):
            args = [a[t] if op.per_step else a for a in arrs]
            x = ins[0][None]
            if last:
                return F.batch_norm(x.transpose(1, -1), *args, False, 0.0, op.eps).transpose(1, -1)[0]
            return F.batch_norm(x, *args, False, 0.0, op.eps)[0]
        return fn

    def _f_neuron(self, n, op):
        dt = self.dtype
        vr, vth = op.v_reset, op.v_threshold
        k = torch.tensor(op.a, dtype=torch.float64).to(dt).sigmoid() if op.model == "plif" else None

        def fn(t, ins, nnz):
            x = ins[0]
            v = self._state.get(n)
            if v is None:
                v = torch.zeros_like(x)
            # (v - vr) is v itself when vr = 0 (exact in IEEE arithmetic), so that subtraction is skipped;
            # in-place steps on a fresh tensor round exactly as the out-of-place expression
            dv = v if vr == 0.0 else v - vr
            if op.decay_input:  # H = V + (X - (V - V_reset))·k  (PLIF) or ... / tau (LIF)
                h = torch.sub(x, dv)
                h = h.mul_(k) if op.model == "plif" else h.div_(op.tau)
                h.add_(v)
            else:  # H = V - (V - V_reset)·k + X
                h = v - (dv * k if op.model == "plif" else dv / op.tau)
                h.add_(x)
            s = h >= vth
            self._state[n] = h.masked_fill_(s, vr)  # V = S·V_reset + (1 - S)·H
            return s
        return fn

    def _f_spike_matmul_kv(self, n, op):
        return lambda t, ins, nnz: spike_kv(ins[0], ins[1], self.dtype)

    def _f_spike_matmul_q_kv(self, n, op):
        return lambda t, ins, nnz: spike_q_kv(ins[0], ins[1]) * op.scale

    def _f_add(self, n, op):
        return lambda t, ins, nnz: ins[0] + ins[1]

    # -- integer semantics (simulators.fixed) ---------------------------------------------------
    def _q(self, n: str) -> dict[str, np.ndarray]:
        return self.graph.nodes[n]["quant"]

    def _requant(self, n: str, view: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        """acc (int64) -> acc + bias, then sat_a(rshift(., m, shift)) when the node has a requantizer."""
        q = self._q(n)
        b = None if "bias" not in q else _as_tensor(q["bias"], torch.int64)
        if b is not None and b.dim() == 1:
            b = view(b)
        if "m" not in q:
            return (lambda acc: acc) if b is None else (lambda acc: acc + b)
        m, s, bits = view(_as_tensor(q["m"], torch.int64)), view(_as_tensor(q["shift"], torch.int64)), int(q["bits"])

        def requant(acc: Tensor) -> Tensor:
            if b is not None:
                acc = acc + b
            return fixed.sat(fixed.rshift(acc, m, s), bits)
        return requant

    def _weighted_int(self, n: str, make_kernel, view: Callable[[Tensor], Tensor]) -> StepFn:
        q = self._q(n)
        acc_dtype = fixed.accumulator_dtype(int(q["acc_bits"]))
        kernel = make_kernel(_as_tensor(q["weight"], acc_dtype))
        requant = self._requant(n, view)

        def fn(t, ins, nnz):
            x = ins[0]
            y = kernel.spikes(x, nnz) if x.dtype == torch.bool else kernel.dense(x)
            return requant(y.to(torch.int64))
        return fn

    def _i_conv2d(self, n, op):
        in_shape = self.specs[self.inputs[n][0]].shape
        return self._weighted_int(
            n, lambda w: Conv2dKernel(w, op.stride, op.padding, op.groups, in_shape, self.policy),
            lambda a: a.reshape(-1, 1, 1))

    def _i_linear(self, n, op):
        return self._weighted_int(n, lambda w: LinearKernel(w, self.policy), lambda a: a)

    def _i_conv3d(self, n, op):
        q = self._q(n)
        acc_dtype = fixed.accumulator_dtype(int(q["acc_bits"]))
        self._heads[n] = (HeadConv3dKernel(_as_tensor(q["weight"], acc_dtype), op.groups, self.policy), torch.int64)
        requant = self._requant(n, lambda a: a.reshape(-1))
        return lambda t, ins, nnz: requant(self._state[n]).reshape(-1, 1, 1, 1)

    def _i_affine(self, n, op):
        q = self._q(n)
        m = self._per_step_views(n, q["m"], torch.int64, op.axis)
        s = self._per_step_views(n, q["shift"], torch.int64, op.axis)
        b = self._per_step_views(n, q.get("bias"), torch.int64, op.axis)
        bits = int(q["bits"])

        def fn(t, ins, nnz):
            y = fixed.rshift(ins[0], m[t], s[t])
            if b is not None:
                y = y + b[t]
            return fixed.sat(y, bits)
        return fn

    def _i_neuron(self, n, op):
        q = self._q(n)
        decay = int(q["decay"])
        theta = _as_tensor(q["theta"], torch.int64)

        def fn(t, ins, nnz):
            v = self._state.get(n)
            if v is None:
                v = torch.zeros_like(ins[0])
            v, s = fixed.neuron_step(v, ins[0], decay, theta)
            self._state[n] = v
            return s
        return fn

    def _i_add(self, n, op):
        bits = int(self._q(n)["bits"])
        return lambda t, ins, nnz: fixed.sat(ins[0] + ins[1], bits)

    def _i_spike_matmul_kv(self, n, op):
        return lambda t, ins, nnz: spike_kv(ins[0], ins[1], torch.float64).to(torch.int64)

    def _i_spike_matmul_q_kv(self, n, op):
        q = self._q(n)
        shift, bits = int(q["shift"]), int(q["bits"])

        def fn(t, ins, nnz):
            return fixed.sat(spike_q_kv(ins[0], ins[1].to(torch.float64)).to(torch.int64) << shift, bits)
        return fn

    def _i_output(self, n, op):
        scale = _as_tensor(self._q(n)["scale"], torch.float64)
        return lambda t, ins, nnz: ins[0].to(torch.float64) * scale


def simulate(graph: nx.DiGraph, frames: Tensor, mode: str = "float", dtype: torch.dtype = torch.float32,
             kernel: str = "auto", **kwargs) -> SimResult:
    """One-shot :meth:`Simulator.run` of ``frames`` ``[T, C, H, W]`` on ``graph``."""
    return Simulator(graph, mode=mode, dtype=dtype, kernel=kernel).run(frames, **kwargs)
