"""Dense work of IR nodes (the ANN counterpart's MACs, elementwise ops, parameters)."""

from __future__ import annotations

import networkx as nx
import numpy as np

from .graph import inputs_of, op_of, spec, topo_order
from .tensor import STEP


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
