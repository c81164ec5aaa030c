"""``fold_bn``: fold BatchNorm / time-dependent BN (TDBN) into the preceding conv/linear.

Two rewrites, each exact in real arithmetic:

1. every ``batchnorm`` becomes an ``affine`` with A = γ / sqrt(σ² + ε) and B = β - μ·A (per step
   [T, C] for TDBN, [C] for plain BN and the head's BatchNorm3d);
2. an ``affine`` directly after a conv2d / linear / conv3d that feeds nothing else is folded into it
   as far as time allows. Writing the weighted op as y = W*x + b and the affine as z[t] = A[t]·y + B[t]:

   - A the same for every step (plain BN, the head BN, or a TDBN whose per-step scales happen to be
     equal): W <- A·W, b <- A·b. Then if B is the same for every step, b <- b + B and the affine
     disappears (**plain BN folds completely**); otherwise an affine with only the per-step bias
     B[t] + b stays and the weighted op loses its bias.
   - A differs between steps (TDBN in general): a time-independent weight cannot absorb it, so the
     weights stay as they are, the bias moves into the affine (B[t] <- A[t]·b + B[t], b <- none),
     and the affine **stays as an explicit per-step op**: one multiply and one add per output
     element per step (counted by the simulator as real work).

   A position-dependent bias (``fuse_linear`` output) stays on the conv. What stays is listed by
   :func:`remaining_affines`.

Fidelity target (``docs/export.md``): float64 identical spikes; float32 max |dlogit| <= 1e-4 and spike
flips <= 1e-4 of spikes (:func:`check`).
"""

from __future__ import annotations

from dataclasses import replace as dataclass_replace

import networkx as nx
import numpy as np
import torch

from .. import ir
from ..fidelity import FidelityReport, compare

NAME = "fold_bn"


def _time_constant(a: np.ndarray | None) -> np.ndarray | None:
    """``a`` as a [C] vector if it is the same for every step (or already [C]); None if it varies."""
    if a is None or a.ndim == 1:
        return a
    return a[0] if np.all(a == a[0]) else None


def _bn_to_affine(op: ir.BatchNorm) -> ir.Affine:
    inv = 1.0 / np.sqrt(op.var.astype(np.float64) + op.eps)
    scale = op.weight.astype(np.float64) * inv
    bias = op.bias.astype(np.float64) - op.mean.astype(np.float64) * scale
    return ir.Affine(scale=scale, bias=bias, axis=op.axis)


def _scale_out(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    return w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))


def _channel_axis_ok(g: nx.DiGraph, wname: str, aff: ir.Affine) -> bool:
    rank = len(ir.spec(g, wname).shape)
    axis = aff.axis % rank
    return axis == (rank - 1 if ir.op_of(g, wname).op == "linear" else 0)


def _fold_into(g: nx.DiGraph, aname: str) -> None:
    aff: ir.Affine = ir.op_of(g, aname)
    (wname,) = ir.inputs_of(g, aname)
    w = ir.op_of(g, wname)
    if w.op not in ir.WEIGHTED or g.out_degree(wname) != 1 or not _channel_axis_ok(g, wname, aff):
        return
    bias = None if w.bias is None else w.bias.astype(np.float64)
    map_bias = bias is not None and bias.ndim > 1
    scale_c = _time_constant(aff.scale) if aff.scale is not None else np.ones(w.weight.shape[0])
    if scale_c is not None:
        weight = _scale_out(w.weight, scale_c)
        bias = None if bias is None else _scale_out(bias, scale_c) if map_bias else bias * scale_c
        bias_c = _time_constant(aff.bias)
        if aff.bias is None or bias_c is not None:
            if bias_c is not None:
                bias = (bias_c.reshape((-1,) + (1,) * (bias.ndim - 1)) + bias) if bias is not None else bias_c.copy()
            ir.replace_op(g, wname, dataclass_replace(w, weight=weight, bias=bias),
                          origin=g.nodes[wname]["origin"] + g.nodes[aname]["origin"])
            ir.bypass(g, aname)
            return
        new_aff_bias = aff.bias.astype(np.float64)
        if bias is not None and not map_bias:
            new_aff_bias = new_aff_bias + bias
            bias = None
        ir.replace_op(g, wname, dataclass_replace(w, weight=weight, bias=bias))
        ir.replace_op(g, aname, ir.Affine(scale=None, bias=new_aff_bias, axis=aff.axis))
        return
    # per-step scale: weights stay, a per-channel bias moves into the affine
    if bias is None or map_bias:
        return
    s = aff.scale.astype(np.float64)
    b = np.zeros_like(s) if aff.bias is None else aff.bias.astype(np.float64)
    ir.replace_op(g, wname, dataclass_replace(w, bias=None))
    ir.replace_op(g, aname, ir.Affine(scale=s, bias=s * bias + b, axis=aff.axis))


def fold_bn(graph: nx.DiGraph) -> nx.DiGraph:
    """Return a new graph with every BN/TDBN folded (the input graph is not modified)."""
    g = ir.copy_graph(graph)
    for name, op in list(ir.iter_ops(g, "batchnorm")):
        ir.replace_op(g, name, _bn_to_affine(op))
    for name, _ in list(ir.iter_ops(g, "affine")):
        _fold_into(g, name)
    g.graph["passes"] = list(g.graph.get("passes", [])) + [NAME]
    return ir.validate(g)


def remaining_affines(graph: nx.DiGraph) -> list[dict]:
    """The affine ops left after folding: name, whether scale/bias are per step, elementwise ops per clip."""
    out = []
    for name, op in ir.iter_ops(graph, "affine"):
        out.append({
            "name": name,
            "scale": None if op.scale is None else ("per-step" if op.scale.ndim == 2 else "per-channel"),
            "bias": None if op.bias is None else ("per-step" if op.bias.ndim == 2 else "per-channel"),
            "elementwise_per_clip": ir.node_cost(graph, name)["elementwise"],
        })
    return out


def check(before: nx.DiGraph, after: nx.DiGraph, inputs: torch.Tensor, batch_size: int = 8) -> list[FidelityReport]:
    """Fidelity of folding on ``inputs`` in float64 and float32 (targets: :func:`judge`)."""
    return judge(compare(before, after, inputs, torch.float64, label=f"{NAME} float64", batch_size=batch_size),
                 compare(before, after, inputs, torch.float32, label=f"{NAME} float32", batch_size=batch_size))


def judge(r64: FidelityReport, r32: FidelityReport) -> list[FidelityReport]:
    """Set the targets of folding's float64 report (identical spikes) and float32 report (max |dlogit| <= 1e-4
    and spike flips <= 1e-4 of spikes)."""
    r64.target, r64.passed = "identical spikes", r64.identical_spikes()
    r32.target = "max |dlogit| <= 1e-4, flips <= 1e-4 of spikes"
    r32.passed = r32.max_abs_logit_diff <= 1e-4 and r32.flips <= 1e-4 * r32.spikes_ref
    return [r64, r32]
