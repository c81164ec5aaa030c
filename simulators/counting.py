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
- ``neuron_updates``: one per neuron per step; ``neurons_active``: the neuron updates whose input
  (synaptic current plus bias) is non-zero in that step (the rest only leak: a neuromorphic chip's
  cheaper inactive update). ``spikes_in``: binary events arriving at an op;
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
from svformer_deploy.export.ir.ops import conv_fanout, conv_fanout_map  # noqa: F401 - public here too
from torch import Tensor

from .record import COUNT_KEYS, firing_rate  # the run-record schema owns the count keys

__all__ = ["COUNT_KEYS", "K", "WORK_OPS", "LayerCounter", "LayerInfo", "build_counters", "conv_fanout",
           "conv_fanout_map", "firing_rate", "input_neurons", "layer_infos", "work_nodes"]
K = {k: i for i, k in enumerate(COUNT_KEYS)}
# ops that do arithmetic (the run record's layers); each states its rule in its ``count`` hook
WORK_OPS = tuple(op for op, cls in ir.NODE_TYPES.items() if cls.counted)


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
    """Counts of one work node for a batch of B clips: ``table[b, key, t]`` (int64), one table per clip.

    The rule is the op's ``count`` hook (:mod:`export.ir.ops`): it sets the counts that depend
    only on shapes (neuron updates, state words, bias/scale/residual arithmetic) with :meth:`set`,
    which :meth:`finish` adds to every clip, and returns the per-step function of the counts that
    depend on the activity (spikes, synaptic events, nonzero inputs), which :meth:`step` calls while
    the executor runs (``dynamic`` tells whether a layer has one). That function sees the step's
    tensors with their leading batch axis and adds one value per clip (reductions over every axis
    but the batch axis, :meth:`nnz` and :meth:`per_clip`), so clips are never summed together.
    """

    def __init__(self, g: nx.DiGraph, name: str, batch: int = 1):
        self.name = name
        self.op = ir.op_of(g, name)
        self.T = int(g.graph["time_steps"])
        self.batch = int(batch)
        self.clip = ir.spec(g, name).rate == ir.CLIP
        self.table = np.zeros((self.batch, len(COUNT_KEYS), self.T), dtype=np.int64)
        ins = ir.inputs_of(g, name)
        self.in_specs = [ir.spec(g, i) for i in ins]
        self.n_out = int(np.prod(ir.spec(g, name).shape))
        self.static = np.zeros(len(COUNT_KEYS), dtype=np.int64)  # every step (clip-rate ops: once, last step)
        self.final = np.zeros(len(COUNT_KEYS), dtype=np.int64)  # once, at the last step
        self._step = self.op.count(self)
        self.dynamic = self._step is not None

    @staticmethod
    def key(name: str) -> int:
        """Row of count ``name`` in the table (:data:`COUNT_KEYS`)."""
        return K[name]

    @staticmethod
    def nnz(x: Tensor) -> np.ndarray:
        """Nonzero elements of each clip of ``x`` ``[B, ...]``: int64 ``[B]``."""
        return x.reshape(x.shape[0], -1).count_nonzero(1).numpy()

    @staticmethod
    def per_clip(x: Tensor) -> np.ndarray:
        """Sum of each clip of the integer tensor ``x`` ``[B, ...]``: int64 ``[B]``."""
        return x.reshape(x.shape[0], -1).sum(1, dtype=torch.int64).numpy()

    def set(self, key: str, value: int, final: bool = False) -> None:
        """Add ``value`` to the static count ``key`` (every step; ``final``: once, at the last step)."""
        (self.final if final else self.static)[K[key]] += int(value)

    def step(self, t: int, ins: list[Tensor], out: Tensor, nnz_in: np.ndarray | None = None,
             nnz_out: np.ndarray | None = None) -> None:
        """Add the activity-dependent counts of step ``t`` (clip-rate ops: ``t = T-1``) for every clip.

        ``ins`` / ``out``: the step's tensors ``[B, ...]``; ``nnz_in`` / ``nnz_out``: per-clip spike
        counts (int64 ``[B]``) of input 0 / the output when the executor knows them.
        """
        if self._step is not None:
            self._step(self.table[:, :, t], ins, out, nnz_in, nnz_out)

    def finish(self) -> np.ndarray:
        """Add the static counts (once; call after the last step) and return the table ``[B, keys, T]``."""
        if self.clip and not self.op.accumulates:
            self.table[:, :, -1] += self.static
        else:
            self.table += self.static[None, :, None]
        self.table[:, :, -1] += self.final
        return self.table


def build_counters(g: nx.DiGraph, batch: int = 1) -> dict[str, LayerCounter]:
    """One :class:`LayerCounter` per work node of ``g``, for ``batch`` clips."""
    return {n: LayerCounter(g, n, batch) for n in work_nodes(g)}
