"""Event-driven executors of an IR graph: float reference and integer fixed-point, with exact counts.

:class:`Simulator` runs one clip (frames ``[T, C, H, W]``, :meth:`Simulator.run`) or a batch of
clips (``[B, T, C, H, W]``, :meth:`Simulator.run_batch`, every tensor with the batch axis first and
every count kept per clip) through a graph written by the export pipeline, **one frame per time
step**: at step t every step-rate node is evaluated once in topological order, neurons carry
their membrane from step t-1, the head conv3d accumulates its share of step t, and after step
T-1 the clip-rate nodes (head BN/flatten/linear/output) run once.

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
from svformer_deploy.export import ir
from svformer_deploy.svformer.errors import SVFormerError
from torch import Tensor

from . import fixed, kernels
from .counting import COUNT_KEYS, LayerCounter, LayerInfo, build_counters, layer_infos
from .kernels import HeadConv3dKernel, KernelPolicy

MODES = ("float", "integer")
StepFn = Callable[[int, list[Tensor], np.ndarray | None], Tensor]  # (step, inputs, spikes per clip in input 0)


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
    step_logits: np.ndarray | None = None  # with ``anytime``: float64 [T, classes], row T-1 == logits
    readout_counts: np.ndarray | None = None  # with ``anytime``: int64 [len(COUNT_KEYS), T], see Simulator.run


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
        self.heads = [n for n in self.clip_nodes if self.ops[n].accumulates]
        self.neurons = [n for n in self.names if self.ops[n].op == "neuron"]
        self.count = count
        self.layers: list[LayerInfo] = layer_infos(graph, mode, dtype)
        self.state: dict[str, Tensor] = {}  # neuron membranes and head accumulators of the running clip
        self._heads: dict[str, tuple[HeadConv3dKernel, torch.dtype]] = {}
        # every op builds its own step function once (export/ir/ops: sim_float / sim_fixed), with this
        # simulator as its backend (kernels, fixed-point arithmetic, parameter views, state)
        self._fns: dict[str, StepFn] = {n: (self.ops[n].sim_fixed(self, n) if mode == "integer"
                                            else self.ops[n].sim_float(self, n)) for n in self.names}

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(T, C, H, W)`` of the frames :meth:`run` expects."""
        return (self.time_steps, *self.specs[self.in_name].shape)

    def check_input(self, frames: Tensor) -> None:
        """Refuse frames that are not ``[T, C, H, W]`` of this graph."""
        if frames.dim() != 4 or tuple(frames.shape) != self.input_shape:
            raise SVFormerError(f"input frames {list(frames.shape)} do not fit the graph: expected "
                                f"[T, C, H, W] = {list(self.input_shape)}")

    def check_batch(self, clips: Tensor) -> None:
        """Refuse clips that are not ``[B, T, C, H, W]`` of this graph (B >= 1)."""
        if clips.dim() != 5 or clips.shape[0] < 1 or tuple(clips.shape[1:]) != self.input_shape:
            raise SVFormerError(f"input clips {list(clips.shape)} do not fit the graph: expected "
                                f"[B, T, C, H, W] = [B, {', '.join(map(str, self.input_shape))}] with B >= 1")

    # -- running ------------------------------------------------------------------------------
    def run(self, frames: Tensor, record_spikes: bool = False, record_values: bool = False,
            on_step: Callable[[int], None] | None = None, anytime: bool = False) -> SimResult:
        """Simulate one clip ``[T, C, H, W]`` (float32 frames) and return logits, counts and timing.

        ``on_step(t)`` is called after each time step (progress display). ``anytime``: also the logits
        after every step t (``step_logits``, see :meth:`anytime_logits`) and what each of those early
        read-outs costs (``readout_counts[:, t]``, counted like the record's layers; 0 at t = T-1,
        whose read-out is the ordinary clip-rate tail already in ``counts``). A batch of one of
        :meth:`run_batch`.
        """
        self.check_input(frames)
        return self.run_batch(frames[None], record_spikes, record_values, on_step, anytime)[0]

    def run_batch(self, clips: Tensor, record_spikes: bool = False, record_values: bool = False,
                  on_step: Callable[[int], None] | None = None, anytime: bool = False) -> list[SimResult]:
        """Simulate B clips ``[B, T, C, H, W]`` in one pass; one :class:`SimResult` per clip.

        Every step tensor carries the batch axis first, so each op runs once per step for all B
        clips (fewer, larger kernel calls). Clips never mix: every kernel keeps clip b's events in
        clip b's outputs, neurons are elementwise, and every counter reduces over all axes but the
        batch axis, so each clip's counts are its own (never a batch average). In integer mode each
        clip's logits and counts are identical to :meth:`run` of that clip alone. In float mode each
        clip gets the kernel it would get alone (``"auto"`` decides per clip, :func:`kernels.by_clip`)
        and the same kernels on a larger batch; the tests find identical logits, spikes and counts
        (float64 and float32), but a BLAS / oneDNN may sum a larger batch in another order (seen:
        float32 1x1 convolutions at B = 16), so a value within rounding of a threshold can flip.
        Each result's ``wall_s`` and ``step_seconds`` are the batch's times divided by B.
        """
        self.check_batch(clips)
        B = int(clips.shape[0])
        early = self._anytime_setup() if anytime else None
        step_logits: list[np.ndarray] = []  # [B, classes] after each step t < T-1
        readout = np.zeros((B, len(COUNT_KEYS), self.time_steps), dtype=np.int64) if anytime else None
        counters: dict[str, LayerCounter] = build_counters(self.graph, B) if self.count else {}
        spikes: dict[str, list[Tensor]] = {n: [] for n in self.neurons} if record_spikes else {}
        values: dict[str, list[Tensor]] = {n: [] for n in self.step_nodes} if record_values else {}
        self.state = {}
        step_s: list[float] = []
        inp = self._fns[self.in_name]
        # (name, step function, input names, dynamic counter or None), resolved once per run
        plan = [(n, (lambda t, ins, nnz: inp(t, [clips[:, t]], None)) if n == self.in_name else self._fns[n],
                 tuple(self.inputs[n]), counters[n] if n in counters and counters[n].dynamic else None)
                for n in self.step_nodes]
        t_start = time.perf_counter()
        with torch.no_grad():
            for t in range(self.time_steps):
                t0 = time.perf_counter()
                env: dict[str, Tensor] = {}
                nnz: dict[str, np.ndarray] = {}  # per-clip spike counts of every spike tensor, int64 [B]
                for n, fn, in_names, c in plan:
                    ins = [env[i] for i in in_names]
                    src = in_names[0] if in_names else None
                    out = fn(t, ins, nnz.get(src))
                    env[n] = out
                    if out.dtype == torch.bool:
                        nnz[n] = LayerCounter.nnz(out)
                    if c is not None:
                        c.step(t, ins, out, nnz.get(src), nnz.get(n))
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
                if early is not None and t < self.time_steps - 1:
                    step_logits.append(self.anytime_logits(t, env, early, readout[:, :, t]))
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
        wall = time.perf_counter() - t_start
        logits = env[self.out_name].to(torch.float64).reshape(B, -1).numpy().copy()
        tables = {n: c.finish() for n, c in counters.items()}
        per_step = [s / B for s in step_s]
        results = [SimResult(logits=logits[b], counts={n: tab[b] for n, tab in tables.items()},
                             step_seconds=list(per_step), wall_s=wall / B) for b in range(B)]
        if record_spikes:
            stacked = {n: torch.stack(v, 1) for n, v in spikes.items()}  # [B, T, ...]
            for b, r in enumerate(results):
                r.spikes = {n: v[b] for n, v in stacked.items()}
        if record_values:
            stacked = {n: torch.stack(v, 1) for n, v in values.items()}
            for b, r in enumerate(results):
                r.values = {n: v[b] for n, v in stacked.items()}
                r.values.update({n: env[n][b] for n in self.clip_nodes})
        if early is not None:
            for b, r in enumerate(results):
                r.step_logits = np.stack([*(s[b] for s in step_logits), logits[b]])
                r.readout_counts = readout[b]
        self.state = {}
        return results

    # -- anytime read-out ---------------------------------------------------------------------
    def _anytime_setup(self) -> dict[str, object]:
        """What :meth:`anytime_logits` needs: the head, its suffix weights and the running input sum."""
        if len(self.heads) != 1:
            raise SVFormerError(f"anytime logits need exactly one accumulating head; the graph has {len(self.heads)}")
        h = self.heads[0]
        kernel, _ = self._heads[h]
        w = kernel.weight.to(torch.float64)  # [C_out, C_in/g, T, h, w]; integer codes in integer mode
        rest = w.flip(2).cumsum(2).flip(2)  # rest[:, :, t] = sum over s >= t
        T = self.time_steps
        suffix = [rest[:, :, t + 1].contiguous() for t in range(T - 1)]
        if self.mode == "float":
            suffix = [s.to(self.dtype) for s in suffix]
        return {"head": h, "src": self.inputs[h][0], "suffix": suffix, "groups": kernel.groups,
                "fan_out": kernel.m, "sum": None,
                "final": LayerCounter(self.graph, h).final.copy() if self.count else None}

    def anytime_logits(self, t: int, env: dict[str, Tensor], early: dict, readout: np.ndarray | None) -> np.ndarray:
        """The logits ``[B, classes]`` after step ``t`` < T-1: the head applied to what it accumulated, completed.

        The head conv3d is linear in its input volume X[0..T-1]: Y = B + Σ_s W_s·X_s. After step t the
        accumulator holds Σ_{s<=t} W_s·X_s; the steps not seen yet are estimated by the mean of the
        seen inputs, m_t = (1/(t+1))·Σ_{s<=t} X_s, so Ŷ_t = B + Σ_{s<=t} W_s·X_s + (Σ_{s>t} W_s)·m_t,
        then the clip-rate tail (BN, flatten, linear) runs on Ŷ_t. At t = T-1 the estimate is the
        exact output. Integer mode: the completion term is rounded half up to an integer before the
        head's requantisation. ``readout`` (a [B, keys] column) gets the cost of this read-out: one MAC
        and one weight read per nonzero input sum x C_out/g, one multiply per output (the 1/(t+1)),
        the head's bias and the tail's counts.
        """
        import torch.nn.functional as F

        from .counting import K

        h, src = early["head"], early["src"]
        x = env[src].to(torch.float64)  # [B, C, h, w]
        early["sum"] = x if early["sum"] is None else early["sum"] + x
        run_sum = early["sum"]
        w = early["suffix"][t]
        saved = self.state[h]
        if self.mode == "integer":
            num = F.conv2d(run_sum, w, None, 1, 0, 1, early["groups"]).reshape(saved.shape)
            est = torch.div(2 * num + (t + 1), 2 * (t + 1), rounding_mode="floor").to(torch.int64)
            self.state[h] = saved + est
        else:
            num = F.conv2d(run_sum.to(w.dtype), w, None, 1, 0, 1, early["groups"]).reshape(saved.shape)
            self.state[h] = saved + (num / (t + 1)).to(saved.dtype)
        tail_counters = {}
        out_env: dict[str, Tensor] = {}
        try:
            for n in self.clip_nodes:
                ins = [] if n in self._heads else [out_env[i] for i in self.inputs[n]]
                out_env[n] = self._fns[n](self.time_steps - 1, ins, None)
                if readout is not None and n not in self._heads and self.ops[n].counted:
                    c = tail_counters[n] = LayerCounter(self.graph, n, x.shape[0])
                    c.step(self.time_steps - 1, ins, out_env[n])
        finally:
            self.state[h] = saved
        if readout is not None and self.count:
            nnz = LayerCounter.nnz(run_sum)  # per clip
            readout[:, K["mac"]] += nnz * early["fan_out"]
            readout[:, K["weight_reads"]] += nnz * early["fan_out"]
            readout[:, K["mul"]] += int(saved[0].numel())
            readout += early["final"]
            for c in tail_counters.values():
                readout += c.finish().sum(axis=2)
        return out_env[self.out_name].to(torch.float64).reshape(x.shape[0], -1).numpy().copy()

    def _head_step(self, n: str, t: int, x: Tensor, nnz: np.ndarray | None) -> None:
        kernel, acc_dtype = self._heads[n]
        part = kernel.spikes(x, nnz, t) if x.dtype == torch.bool else kernel.dense(x, t)
        part = part.to(torch.int64) if self.mode == "integer" else part.to(acc_dtype)
        self.state[n] = part if t == 0 else self.state[n] + part

    # -- the backend the op hooks build their step functions with (export/ir/ops) -------------
    kernels = kernels  # event/dense accumulation kernels (simulators.kernels)
    fixed = fixed  # the integer arithmetic of the fixed-point spec (simulators.fixed)

    @staticmethod
    def tensor(arr: np.ndarray | float, dtype: torch.dtype) -> Tensor:
        """A parameter array as a tensor of ``dtype``."""
        return _as_tensor(arr, dtype)

    def rank(self, n: str) -> int:
        """Rank of node ``n``'s per-step output."""
        return len(self.specs[n].shape)

    def in_shape(self, n: str) -> tuple[int, ...]:
        """Per-step shape of node ``n``'s first input."""
        return self.specs[self.inputs[n][0]].shape

    def quant(self, n: str) -> dict[str, np.ndarray]:
        """The fixed-point parameters of node ``n``."""
        return self.graph.nodes[n]["quant"]

    def set_head(self, n: str, kernel: HeadConv3dKernel, acc_dtype: torch.dtype) -> None:
        """Register an accumulating node: ``kernel`` adds each step's share to ``state[n]`` (in ``acc_dtype``)."""
        self._heads[n] = (kernel, acc_dtype)

    def per_step_views(self, n: str, arr: np.ndarray | None, dtype: torch.dtype, axis: int) -> list[Tensor] | None:
        """A per-channel ([C]) or per-step ([T, C]) parameter as one broadcastable view per step."""
        if arr is None:
            return None
        a = _as_tensor(arr, dtype)
        return [_channel_view(a[t] if a.dim() == 2 else a, self.rank(n), axis) for t in range(self.time_steps)]

    def weighted_float(self, n: str, op: ir.Node, make_kernel: Callable[[Tensor], object],
                       bias_view: Callable[[Tensor], Tensor]) -> StepFn:
        """Float step of a weighted op: the kernel's sums (events or dense) plus the bias."""
        dt = self.dtype
        kernel = make_kernel(_as_tensor(op.weight, dt))
        b = None if op.bias is None else bias_view(_as_tensor(op.bias, dt))

        def fn(t, ins, nnz):
            x = ins[0]
            y = kernel.spikes(x, nnz) if x.dtype == torch.bool else kernel.dense(x)
            return y if b is None else y.add_(b)  # y is the kernel's fresh output
        return fn

    def requant(self, n: str, view: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        """acc (int64) -> acc + bias, then sat_a(rshift(., m, shift)) when the node has a requantizer."""
        q = self.quant(n)
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

    def weighted_fixed(self, n: str, make_kernel: Callable[[Tensor], object],
                       view: Callable[[Tensor], Tensor]) -> StepFn:
        """Integer step of a weighted op: exact float sums of integer weights, then :meth:`requant`."""
        q = self.quant(n)
        acc_dtype = fixed.accumulator_dtype(int(q["acc_bits"]))
        kernel = make_kernel(_as_tensor(q["weight"], acc_dtype))
        requant = self.requant(n, view)

        def fn(t, ins, nnz):
            x = ins[0]
            y = kernel.spikes(x, nnz) if x.dtype == torch.bool else kernel.dense(x)
            return requant(y.to(torch.int64))
        return fn


def simulate(graph: nx.DiGraph, frames: Tensor, mode: str = "float", dtype: torch.dtype = torch.float32,
             kernel: str = "auto", **kwargs) -> SimResult:
    """One-shot :meth:`Simulator.run` of ``frames`` ``[T, C, H, W]`` on ``graph``."""
    return Simulator(graph, mode=mode, dtype=dtype, kernel=kernel).run(frames, **kwargs)
