"""Dense work of IR nodes (the ANN counterpart's MACs, elementwise ops, parameters).

The rule of each operation is its ``cost`` hook (:mod:`.ops`); this module gives it the node's specs.
"""

from __future__ import annotations

import networkx as nx

from .graph import inputs_of, op_of, spec, topo_order
from .ops import CostInput


def node_cost(g: nx.DiGraph, name: str) -> dict[str, int]:
    """Dense work of one node per clip (B = 1): ``macs`` (multiply-accumulates of weights and
    attention matmuls, bias excluded), ``elementwise`` (bias adds, affine multiply-adds, residual
    adds, neuron updates: one per output element per step) and ``params`` (stored parameters)."""
    c = CostInput(int(g.graph["time_steps"]), spec(g, name), tuple(spec(g, i) for i in inputs_of(g, name)))
    return {k: int(v) for k, v in op_of(g, name).cost(c).items()}


def graph_costs(g: nx.DiGraph) -> dict[str, dict[str, int]]:
    """:func:`node_cost` for every node with work or parameters, in topological order."""
    out = {}
    for n in topo_order(g):
        c = node_cost(g, n)
        if any(c.values()):
            out[n] = c
    return out
