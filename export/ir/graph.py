"""Building and walking IR graphs (networkx.DiGraph with typed op nodes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import networkx as nx
import numpy as np

from .ops import Node
from .tensor import CLIP, IR_VERSION, IRError, TensorSpec


def new_graph(time_steps: int, config: dict | None = None, **meta: Any) -> nx.DiGraph:
    """An empty IR graph for clips of ``time_steps`` frames."""
    g = nx.DiGraph()
    g.graph.update({"ir_version": IR_VERSION, "time_steps": int(time_steps), "config": config or {}, "passes": []})
    g.graph.update(meta)
    return g


def spec(g: nx.DiGraph, name: str) -> TensorSpec:
    """The output tensor spec of node ``name``."""
    d = g.nodes[name]
    return TensorSpec(tuple(d["shape"]), d["kind"], d["rate"])


DEFAULT_STAGE = "PE1"  # the stage of a source node added without one (the network's input)


def add_op(g: nx.DiGraph, name: str, op: Node, inputs: list[str] = (), origin: list[str] | None = None,
           quant: dict[str, np.ndarray] | None = None, stage: str | None = None) -> str:
    """Add node ``name`` computing ``op`` on ``inputs`` (port order); infers and stores its output spec.

    ``stage``: the part of the network the node belongs to (``PE<i>``, ``S<i>``, ``LP``, ``CH``);
    without it the node takes the stage of its port-0 input (a source node: :data:`DEFAULT_STAGE`).
    """
    if name in g:
        raise IRError(f"duplicate node name {name!r}")
    if len(inputs) != op.arity:
        raise IRError(f"{name}: {op.op} takes {op.arity} input(s), got {len(inputs)}")
    ins = [spec(g, i) for i in inputs]
    try:
        out = op.infer(ins)
    except IRError as e:
        raise IRError(f"{name}: {e}") from None
    if any(s.rate == CLIP for s in ins) and not op.accepts_clip:
        raise IRError(f"{name}: {op.op} cannot run on a clip-rate tensor")
    if stage is None:
        stage = g.nodes[inputs[0]]["stage"] if inputs else DEFAULT_STAGE
    g.add_node(name, op=op, shape=out.shape, kind=out.kind, rate=out.rate,
               origin=list(origin if origin is not None else [name]), stage=str(stage))
    if quant is not None:
        g.nodes[name]["quant"] = quant
    for port, src in enumerate(inputs):
        if g.has_edge(src, name):
            raise IRError(f"{name}: {src} feeds it twice")
        s = ins[port]
        g.add_edge(src, name, port=port, shape=s.shape, kind=s.kind, rate=s.rate)
    return name


def stage_of(g: nx.DiGraph, name: str) -> str:
    """The stage of node ``name`` (``PE<i>``, ``S<i>``, ``LP``, ``CH``), as the tracer set it."""
    return g.nodes[name]["stage"]


def legacy_stage(origin: list[str]) -> str:
    """The stage of a node of an IR file written before nodes carried one (derived once, on load).

    Such files came from the tracer only, whose node names start with the module path:
    ``patch_embed<i>`` -> PE<i>, ``blocks<i>`` -> S<i>, ``lp*`` -> LP, ``input`` -> PE1, else CH.
    """
    head = (origin[0] if origin else "").split("+")[0].split(".")[0]
    for prefix, label in (("patch_embed", "PE"), ("blocks", "S")):
        rest = head[len(prefix):]
        if head.startswith(prefix) and rest.isdigit():
            return f"{label}{int(rest)}"
    if head == "input":
        return DEFAULT_STAGE
    return "LP" if head.startswith("lp") else "CH"


def op_of(g: nx.DiGraph, name: str) -> Node:
    return g.nodes[name]["op"]


def inputs_of(g: nx.DiGraph, name: str) -> list[str]:
    """Predecessors of ``name`` in port order."""
    return [s for s, _ in sorted(((s, g.edges[s, name]["port"]) for s in g.predecessors(name)), key=lambda p: p[1])]


def consumers(g: nx.DiGraph, name: str) -> list[str]:
    return list(g.successors(name))


def topo_order(g: nx.DiGraph) -> list[str]:
    """Node names in a topological order (stable: ties keep insertion order)."""
    return list(nx.topological_sort(g))


def iter_ops(g: nx.DiGraph, op: str | tuple[str, ...] | None = None) -> Iterator[tuple[str, Node]]:
    """``(name, op)`` in topological order, optionally only ops of the given type name(s)."""
    kinds = (op,) if isinstance(op, str) else op
    for n in topo_order(g):
        o = g.nodes[n]["op"]
        if kinds is None or o.op in kinds:
            yield n, o


def input_node(g: nx.DiGraph) -> str:
    return next(n for n, o in iter_ops(g, "input"))


def output_node(g: nx.DiGraph) -> str:
    return next(n for n, o in iter_ops(g, "output"))


def neuron_names(g: nx.DiGraph) -> list[str]:
    return [n for n, _ in iter_ops(g, "neuron")]


def copy_graph(g: nx.DiGraph) -> nx.DiGraph:
    """A copy whose node/edge attribute dicts are new (ops are immutable and shared)."""
    h = nx.DiGraph()
    h.graph.update(json.loads(json.dumps(g.graph)))
    for n, d in g.nodes(data=True):
        nd = dict(d)
        nd["origin"] = list(d["origin"])
        if "quant" in d:
            nd["quant"] = dict(d["quant"])
        h.add_node(n, **nd)
    for s, t, d in g.edges(data=True):
        h.add_edge(s, t, **dict(d))
    return h


def replace_op(g: nx.DiGraph, name: str, op: Node, origin: list[str] | None = None) -> None:
    """Swap the op of ``name`` (in place on ``g``, for use inside passes on a copy); the output spec must not change."""
    ins = [spec(g, i) for i in inputs_of(g, name)]
    out = op.infer(ins)
    old = spec(g, name)
    if out != old:
        raise IRError(f"{name}: replacing {g.nodes[name]['op'].op} changes its output {old} -> {out}")
    g.nodes[name]["op"] = op
    if origin is not None:
        g.nodes[name]["origin"] = list(origin)


def bypass(g: nx.DiGraph, name: str) -> None:
    """Remove single-input node ``name`` and connect its input to its consumers (same ports).

    Only valid when the node's output spec equals its input spec (identity-like removal).
    """
    (src,) = inputs_of(g, name)
    if spec(g, src) != spec(g, name):
        raise IRError(f"cannot bypass {name}: its output differs from its input")
    for dst in list(g.successors(name)):
        attrs = dict(g.edges[name, dst])
        g.add_edge(src, dst, **attrs)
    g.remove_node(name)


def rename(g: nx.DiGraph, old: str, new: str) -> None:
    if new in g:
        raise IRError(f"duplicate node name {new!r}")
    nx.relabel_nodes(g, {old: new}, copy=False)
