"""Exact operation counts of an IR graph execution, per layer and per time step.

Every counter reads only the events and values the executor actually produced (spike masks,
nonzero inputs) plus the static shapes of the graph; no count is a rate x dense estimate.
Definitions (``docs/simulator.md`` has the full text; ``docs/run-record.md`` the file format):

- ``ac``: one per synaptic event: a binary input spike x the synapses it drives. conv2d: an event
  at (c, y, x) drives ``C_out/g`` output channels at ``r_y(y)·r_x(x)`` output positions, where
  ``r_y(y)`` counts the output rows whose receptive field contains row y (border-, stride- and
  padding-aware); so ``ac = (C_out/g)·Σ_{y,x} S_c(y, x)·r_y(y)·r_x(x)`` with ``S_c`` the channel
  sum of the spike mask. linear: ``C_out`` per spike. Head conv3d (kernel covers the map):
  ``C_out/g`` per spike. ``K^T V``: one per coincident pair, ``Σ_heads Σ_n (Σ_i K[n,i])(Σ_j V[n,j])``.
  ``Q (K^T V)``: ``d`` per Q spike (the 1/sqrt(d) scale is folded downstream and costs nothing).
- ``mac``: the same synapse count for a real-valued input, over its **nonzero** elements (a zero
  drives no multiply); the first conv on pixels, unfused cascades, the head linear.
- ``mul`` / ``add``: per-step scales and biases left by folding (``affine``: one mul and/or one add
  per element), un-folded ``batchnorm`` (one mul + one add per element), bias adds of weighted ops
  (one per output element per step; once per clip for clip-rate ops) and residual ``add`` nodes
  (one per element).
- ``neuron_updates``: one per neuron per step. ``spikes_in``: binary events arriving at an op;
  ``spikes_out``: spikes a neuron layer emits.
- ``weight_reads``: one word per weight used (a weight driven by n events is read n times: ``ac +
  mac``), plus one parameter word per bias/scale application (``mul + add`` of that op). Attention
  has no weights; its ``K^T V`` matrix is state.
- ``state_reads`` / ``state_writes``: neuron membranes (one read + one write per neuron per step),
  the head's per-output accumulators (one read + one write per output per step), ``K^T V``
  (``h·d²`` words written per step; each Q spike reads the ``d`` words of one row).
  Synaptic currents, residual streams and other intermediate tensors are not memory traffic here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
from svformer_deploy.export import ir
from torch import Tensor

from .record import COUNT_KEYS, firing_rate  # the run-record schema owns the count keys

__all__ = ["COUNT_KEYS", "K", "WORK_OPS", "LayerCounter", "LayerInfo", "build_counters", "conv_fanout",
           "conv_fanout_map", "firing_rate", "input_neurons", "layer_infos", "work_nodes"]
K = {k: i for i, k in enumerate(COUNT_KEYS)}
WORK_OPS = ("conv2d", "linear", "conv3d", "affine", "batchnorm", "neuron", "add", "spike_matmul_kv",
            "spike_matmul_q_kv")


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


# --------------------------------------------------------------------------------------------
# layer metadata
# --------------------------------------------------------------------------------------------
def input_neurons(g: nx.DiGraph) -> dict[str, list[str]]:
    """For every node: the nearest upstream neuron layers feeding it through non-neuron ops (port order)."""
    nearest: dict[str, list[str]] = {}
    out: dict[str, list[str]] = {}
    for n in ir.topo_order(g):
        found: list[str] = []
        for src in ir.inputs_of(g, n):
            for x in nearest[src]:
                if x not in found:
                    found.append(x)
        out[n] = found
        nearest[n] = [n] if ir.op_of(g, n).op == "neuron" else found
    return out


def work_nodes(g: nx.DiGraph) -> list[str]:
    """Nodes that do arithmetic (the run record's layers), in execution order."""
    return [n for n in ir.topo_order(g) if ir.op_of(g, n).op in WORK_OPS]


@dataclass
class LayerInfo:
    """Static description of one counted layer (what the run record needs besides the counts)."""

    name: str
    stage: str  # the IR node's stage (PE<i>, S<i>, LP, CH)
    op: str
    input_kind: str
    input_neurons: list[str]
    dense_macs: int
    params: int
    neurons: int | None = None
    tau: float | None = None
    v_threshold: float | None = None
    word_bits: int = 32
    origin: list[str] = field(default_factory=list)  # module paths the node implements (IR ``origin``)
    extra: dict = field(default_factory=dict)


def layer_infos(g: nx.DiGraph, mode: str = "float", dtype: torch.dtype = torch.float32) -> list[LayerInfo]:
    """:class:`LayerInfo` of every work node; ``word_bits`` from the executor mode (see docs/simulator.md)."""
    feeding = input_neurons(g)
    quant = g.graph.get("quant") or {}
    float_bits = 64 if dtype == torch.float64 else 32
    out = []
    for n in work_nodes(g):
        op = ir.op_of(g, n)
        cost = ir.node_cost(g, n)
        first = ir.inputs_of(g, n)[0]
        info = LayerInfo(name=n, stage=ir.stage_of(g, n), op=op.op, input_kind=ir.spec(g, first).kind,
                         input_neurons=list(feeding[n]), dense_macs=int(cost["macs"]), params=int(cost["params"]),
                         origin=list(g.nodes[n]["origin"]))
        if mode == "integer":
            if op.op in ir.WEIGHTED:
                info.word_bits = int(quant.get("weight_bits", 8))
            elif op.op == "neuron":
                info.word_bits = 24
            else:
                info.word_bits = int(quant.get("act_bits", 16))
        else:
            info.word_bits = float_bits
        if op.op == "neuron":
            info.neurons = int(np.prod(ir.spec(g, n).shape))
            info.tau = 1.0 / op.k
            info.v_threshold = float(op.v_threshold)
        out.append(info)
    return out


# --------------------------------------------------------------------------------------------
# counters
# --------------------------------------------------------------------------------------------
class LayerCounter:
    """Counts of one work node: ``table[key, t]`` (int64).

    Counts that depend only on shapes (neuron updates, state words, bias/scale/residual arithmetic)
    are ``static`` and filled in by :meth:`finish`; counts that depend on the activity (spikes,
    synaptic events, nonzero inputs) are added by :meth:`step` while the executor runs
    (``dynamic`` tells whether a layer needs it).
    """

    def __init__(self, g: nx.DiGraph, name: str):
        self.name = name
        self.op = ir.op_of(g, name)
        self.T = int(g.graph["time_steps"])
        self.clip = ir.spec(g, name).rate == ir.CLIP
        self.table = np.zeros((len(COUNT_KEYS), self.T), dtype=np.int64)
        ins = ir.inputs_of(g, name)
        self.in_specs = [ir.spec(g, i) for i in ins]
        self.spike_in = self.in_specs[0].kind == ir.SPIKE
        self.n_out = int(np.prod(ir.spec(g, name).shape))
        self.static = np.zeros(len(COUNT_KEYS), dtype=np.int64)  # every step (clip-rate ops: once, last step)
        self.final = np.zeros(len(COUNT_KEYS), dtype=np.int64)  # once, at the last step
        self.dynamic = self.op.op in ("conv2d", "linear", "conv3d", "neuron", "spike_matmul_kv", "spike_matmul_q_kv")
        self._setup()

    def _set(self, key: str, value: int, where: np.ndarray | None = None) -> None:
        (self.static if where is None else where)[K[key]] += int(value)

    def _setup(self) -> None:
        op = self.op
        kind = op.op
        self.fan = None
        if kind == "conv2d":
            c_in, h, w = self.in_specs[0].shape
            fan = conv_fanout_map((h, w), op.weight.shape[2:], op.stride, op.padding)
            self.per_synapse = op.weight.shape[0] // op.groups
            if np.all(fan == fan.flat[0]):  # every position reaches the same number of outputs
                self.per_synapse *= int(fan.flat[0])
            else:
                self.fan = torch.from_numpy(fan)
            self._bias(op.bias is not None)
        elif kind == "linear":
            self.per_synapse = op.weight.shape[0]
            self._bias(op.bias is not None)
        elif kind == "conv3d":
            self.per_synapse = op.weight.shape[0] // op.groups
            self._set("state_reads", op.weight.shape[0])
            self._set("state_writes", op.weight.shape[0])
            if op.bias is not None:
                self._set("add", op.weight.shape[0], self.final)
                self._set("weight_reads", op.weight.shape[0], self.final)
        elif kind == "affine":
            if op.scale is not None:
                self._set("mul", self.n_out)
            if op.bias is not None:
                self._set("add", self.n_out)
            self._set("weight_reads", self.static[K["mul"]] + self.static[K["add"]])
        elif kind == "batchnorm":
            for key in ("mul", "add"):
                self._set(key, self.n_out)
            self._set("weight_reads", 2 * self.n_out)
        elif kind == "add":
            self._set("add", self.n_out)
        elif kind == "neuron":
            for key in ("neuron_updates", "state_reads", "state_writes"):
                self._set(key, self.n_out)
        elif kind == "spike_matmul_kv":
            self._set("state_writes", self.n_out)  # the h x d x d matrix, written once per step
        elif kind == "spike_matmul_q_kv":
            self.per_synapse = self.in_specs[0].shape[2]  # d

    def _bias(self, has_bias: bool) -> None:
        if has_bias:
            self._set("add", self.n_out)
            self._set("weight_reads", self.n_out)

    def step(self, t: int, ins: list[Tensor], out: Tensor, nnz_in: int | None = None,
             nnz_out: int | None = None) -> None:
        """Add the activity-dependent counts of step ``t`` (clip-rate ops: ``t = T-1``).

        ``nnz_in`` / ``nnz_out``: spike counts of input 0 / the output when the executor knows them.
        """
        if not self.dynamic:
            return
        col = self.table[:, t]
        kind = self.op.op
        if kind in ("conv2d", "linear", "conv3d"):
            x = ins[0]
            if self.spike_in:
                active = int(x.count_nonzero()) if nnz_in is None else nnz_in
                n = self.per_synapse * (active if self.fan is None else int((x.sum(0) * self.fan).sum()))
                col[K["ac"]] += n
                col[K["spikes_in"]] += active
            else:
                n = self.per_synapse * (int(x.count_nonzero()) if self.fan is None
                                        else int(((x != 0).sum(0) * self.fan).sum()))
                col[K["mac"]] += n
            col[K["weight_reads"]] += n
        elif kind == "neuron":
            col[K["spikes_out"]] += int(out.count_nonzero()) if nnz_out is None else nnz_out
        elif kind == "spike_matmul_kv":
            k, v = ins
            col[K["ac"]] += int((k.sum(-1) * v.sum(-1)).sum())
            col[K["spikes_in"]] += int(k.count_nonzero()) + int(v.count_nonzero())
        elif kind == "spike_matmul_q_kv":
            q = int(ins[0].count_nonzero()) if nnz_in is None else nnz_in
            col[K["ac"]] += q * self.per_synapse
            col[K["spikes_in"]] += q
            col[K["state_reads"]] += q * self.per_synapse

    def finish(self) -> np.ndarray:
        """Add the static counts (once; call after the last step) and return the table."""
        if self.clip and self.op.op != "conv3d":
            self.table[:, -1] += self.static
        else:
            self.table += self.static[:, None]
        self.table[:, -1] += self.final
        return self.table

    def totals(self) -> dict[str, int]:
        return {k: int(self.table[i].sum()) for i, k in enumerate(COUNT_KEYS)}


def build_counters(g: nx.DiGraph) -> dict[str, LayerCounter]:
    """One :class:`LayerCounter` per work node of ``g``."""
    return {n: LayerCounter(g, n) for n in work_nodes(g)}
