"""Schema validation and bitwise comparison of IR graphs."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import networkx as nx
import numpy as np

from .graph import inputs_of, spec, topo_order
from .ops import NODE_TYPES, Node
from .tensor import CLIP, IRError


def validate(g: nx.DiGraph) -> nx.DiGraph:
    """Check the schema: known ops, arity and ports, shapes/kinds/rates, acyclic, one input, one output.

    Returns ``g``; raises :class:`IRError` (an ``SVFormerError``) naming the offending node.
    """
    if not isinstance(g, nx.DiGraph) or g.number_of_nodes() == 0:
        raise IRError("IR graph is empty")
    for key in ("ir_version", "time_steps"):
        if key not in g.graph:
            raise IRError(f"IR graph lacks the attribute {key!r}")
    if not nx.is_directed_acyclic_graph(g):
        raise IRError(f"IR graph has a cycle: {nx.find_cycle(g)}")
    kinds = {}
    for n, d in g.nodes(data=True):
        op = d.get("op")
        if not isinstance(op, Node) or NODE_TYPES.get(op.op) is not type(op):
            raise IRError(f"{n}: not a known IR op ({type(op).__name__})")
        if not isinstance(d.get("stage"), str) or not d["stage"]:
            raise IRError(f"{n}: node has no stage")
        kinds.setdefault(op.op, []).append(n)
    for t in ("input", "output"):
        if len(kinds.get(t, [])) != 1:
            raise IRError(f"IR graph must have exactly one {t} node, found {len(kinds.get(t, []))}")
    out = kinds["output"][0]
    if g.out_degree(out) != 0:
        raise IRError(f"{out}: the output node has consumers")
    for n in topo_order(g):
        d = g.nodes[n]
        op = d["op"]
        preds = list(g.predecessors(n))
        ports = sorted(g.edges[p, n]["port"] for p in preds)
        if ports != list(range(op.arity)):
            raise IRError(f"{n}: {op.op} needs input ports {list(range(op.arity))}, found {ports}")
        ins = [spec(g, p) for p in inputs_of(g, n)]
        for p in preds:
            e = g.edges[p, n]
            if (tuple(e["shape"]), e["kind"], e["rate"]) != tuple(dataclasses.astuple(spec(g, p))):
                raise IRError(f"edge {p} -> {n}: its spec {tuple(e['shape'])}/{e['kind']}/{e['rate']} "
                              f"differs from {p}'s output")
        if any(s.rate == CLIP for s in ins) and not op.accepts_clip:
            raise IRError(f"{n}: {op.op} cannot run on a clip-rate tensor")
        try:
            want = op.infer(ins)
        except IRError as e:
            raise IRError(f"{n}: {e}") from None
        if want != spec(g, n):
            raise IRError(f"{n}: stored output {spec(g, n)} differs from the inferred {want}")
        if n != out and g.out_degree(n) == 0:
            raise IRError(f"{n}: its output is not used")
    if spec(g, out).rate != CLIP:
        raise IRError("the output must be at clip rate (after the head)")
    return g


# --------------------------------------------------------------------------------------------
# comparison and cost helpers
# --------------------------------------------------------------------------------------------
def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


def diff_graphs(a: nx.DiGraph, b: nx.DiGraph) -> list[str]:
    """Differences in structure, attributes and arrays (bitwise, dtypes included); empty if equal."""
    out = []
    if a.graph != b.graph:
        out.append(f"graph attributes differ: {a.graph} vs {b.graph}")
    if list(a.nodes) != list(b.nodes):
        out.append(f"node sets/orders differ: {sorted(set(a.nodes) ^ set(b.nodes))[:10]}")
    for n in a.nodes:
        if n not in b:
            continue
        da, db = a.nodes[n], b.nodes[n]
        oa, ob = da["op"], db["op"]
        if type(oa) is not type(ob):
            out.append(f"{n}: op {oa.op} vs {ob.op}")
            continue
        for f in dataclasses.fields(oa):
            if not _values_equal(getattr(oa, f.name), getattr(ob, f.name)):
                out.append(f"{n}: field {f.name} differs")
        for key in ("shape", "kind", "rate", "origin", "stage"):
            if tuple(da[key]) != tuple(db[key]) if key in ("shape", "origin") else da[key] != db[key]:
                out.append(f"{n}: {key} differs")
        qa, qb = da.get("quant"), db.get("quant")
        if (qa is None) != (qb is None) or (qa is not None and (set(qa) != set(qb) or
                                                               any(not _values_equal(qa[k], qb[k]) for k in qa))):
            out.append(f"{n}: quant differs")
    ea = {(s, t): (d["port"], tuple(d["shape"]), d["kind"], d["rate"]) for s, t, d in a.edges(data=True)}
    eb = {(s, t): (d["port"], tuple(d["shape"]), d["kind"], d["rate"]) for s, t, d in b.edges(data=True)}
    if ea != eb:
        out.append(f"edges differ: {sorted(set(ea.items()) ^ set(eb.items()))[:5]}")
    return out
