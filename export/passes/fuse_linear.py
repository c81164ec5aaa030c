"""``fuse_linear`` (optional): collapse cascades of linear ops with no neuron between them into one op.

The paper's energy method assumes that the LFE's PW1 -> DW5x5 -> PW2 and the local pathway's
DW3x3 -> PW are one linear map applied to spikes, so only accumulates are charged. This pass makes
that true in the graph: two chained ``conv2d`` nodes (the first feeding only the second), one of
them pointwise (1x1, stride 1, no padding), become one dense conv:

- pointwise A then any B:  W[o, i, u, v] = Σ_m W_B[o, m, u, v] · W_A[m, i]; stride/padding of B.
  A's bias enters B's zero padding, so near the border it sees fewer taps: the fused bias is
  b_B + conv(b_A as a constant map, W_B), kept position-dependent ``[C_out, H, W]`` when it differs
  across positions (exact), else reduced to ``[C_out]``.
- any A then pointwise B:  W[o, i, u, v] = Σ_m W_B[o, m] · W_A[m, i, u, v]; b = W_B·b_A + b_B;
  stride/padding of A.

Repeated to a fixed point, PW1-DW-PW2 becomes one dense 5x5 conv C -> C and DW-PW one dense 3x3
stride-2 conv. The per-step TDBN affine after PW2 stays (it is not time-independent). Effect on
dense work (see :func:`fusion_report`): more parameters and more dense MACs (25·C² instead of
2·C² + 25·C per position), but every remaining weighted op reads spikes, so all of it becomes
spike-driven accumulates instead of multiplies on real-valued intermediate maps. The head's
Conv3d -> Linear cascade is left alone (fusing it would multiply the head's parameters by
classes / 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F

from .. import ir
from ..fidelity import FidelityReport, compare

NAME = "fuse_linear"


def dense_weight(op: ir.Conv2d) -> np.ndarray:
    """The conv weight as a dense (groups = 1) ``[C_out, C_in, kH, kW]`` float64 array (block-diagonal for groups)."""
    w = op.weight.astype(np.float64)
    g = op.groups
    if g == 1:
        return w
    co, ci_g, kh, kw = w.shape
    out = np.zeros((co, ci_g * g, kh, kw))
    per = co // g
    for j in range(g):
        out[j * per:(j + 1) * per, j * ci_g:(j + 1) * ci_g] = w[j * per:(j + 1) * per]
    return out


def _pointwise(op: ir.Conv2d) -> bool:
    return op.weight.shape[2:] == (1, 1) and op.stride == (1, 1) and op.padding == (0, 0)


def _add_bias(x: np.ndarray | None, y: np.ndarray | None) -> np.ndarray | None:
    """Sum of two biases, each None, [C] or [C, H, W]."""
    if x is None or y is None:
        return y if x is None else x
    if x.ndim != y.ndim:
        x, y = (x[:, None, None], y) if x.ndim == 1 else (x, y[:, None, None])
    return x + y


def compose(a: ir.Conv2d, b: ir.Conv2d, mid_shape: tuple[int, int, int]) -> ir.Conv2d | None:
    """The single conv equal to ``b(a(x))``, or None when neither is pointwise. ``mid_shape``: a's output [C, H, W]."""
    wa, wb = dense_weight(a), dense_weight(b)
    if _pointwise(a):
        w = np.einsum("omuv,mi->oiuv", wb, wa[:, :, 0, 0])
        bias = None if b.bias is None else b.bias.astype(np.float64)
        if a.bias is not None:
            ba = a.bias.astype(np.float64)
            bmap = ba if ba.ndim == 3 else np.broadcast_to(ba[:, None, None], mid_shape)
            contrib = F.conv2d(torch.from_numpy(np.ascontiguousarray(bmap))[None], torch.from_numpy(wb),
                               None, b.stride, b.padding)[0].numpy()
            flat = contrib.reshape(contrib.shape[0], -1)
            if np.all(flat == flat[:, :1]):
                contrib = flat[:, 0].copy()
            bias = _add_bias(contrib, bias)
        return ir.Conv2d(weight=w, bias=bias, stride=b.stride, padding=b.padding, groups=1)
    if _pointwise(b):
        m = wb[:, :, 0, 0]
        w = np.einsum("om,miuv->oiuv", m, wa)
        bias = None
        if a.bias is not None:
            ba = a.bias.astype(np.float64)
            bias = m @ ba if ba.ndim == 1 else np.einsum("om,mhw->ohw", m, ba)
        bias = _add_bias(bias, None if b.bias is None else b.bias.astype(np.float64))
        return ir.Conv2d(weight=w, bias=bias, stride=a.stride, padding=a.padding, groups=1)
    return None


def _joined(a: str, b: str) -> str:
    prefix = a.rsplit(".", 1)[0] + "." if "." in a.split("+")[0] else ""
    return f"{a}+{b[len(prefix):]}" if prefix and b.startswith(prefix) else f"{a}+{b}"


def fuse_linear(graph: nx.DiGraph) -> nx.DiGraph:
    """Return a new graph in which every fusable conv2d cascade is one dense conv2d (input unchanged)."""
    g = ir.copy_graph(graph)
    changed = True
    while changed:
        changed = False
        for a_name, a in list(ir.iter_ops(g, "conv2d")):
            succ = ir.consumers(g, a_name)
            if len(succ) != 1 or ir.op_of(g, succ[0]).op != "conv2d":
                continue
            b_name = succ[0]
            fused = compose(a, ir.op_of(g, b_name), ir.spec(g, a_name).shape)
            if fused is None:
                continue
            (src,) = ir.inputs_of(g, a_name)
            origin = g.nodes[a_name]["origin"] + g.nodes[b_name]["origin"]
            g.remove_edge(a_name, b_name)
            s = ir.spec(g, src)
            g.add_edge(src, b_name, port=0, shape=s.shape, kind=s.kind, rate=s.rate)
            g.remove_node(a_name)
            ir.replace_op(g, b_name, fused, origin=origin)
            ir.rename(g, b_name, _joined(a_name, b_name))
            changed = True
            break
    g.graph["passes"] = list(g.graph.get("passes", [])) + [NAME]
    return ir.validate(g)


# ---------------------------------------------------------------------------------------------
def dense_by_input(graph: nx.DiGraph) -> dict[str, int]:
    """Dense MACs per clip of weighted ops and attention products, split by what they read:
    ``spike`` (binary input: accumulates on hardware) and ``real`` (real-valued input: multiplies)."""
    out = {"spike": 0, "real": 0}
    for n in ir.topo_order(graph):
        op = ir.op_of(graph, n)
        if op.op in ir.WEIGHTED:
            kind = ir.spec(graph, ir.inputs_of(graph, n)[0]).kind
            out["spike" if kind == ir.SPIKE else "real"] += ir.node_cost(graph, n)["macs"]
        elif op.op in ("spike_matmul_kv", "spike_matmul_q_kv"):
            out["spike"] += ir.node_cost(graph, n)["macs"]
    return out


@dataclass
class FusionReport:
    """What fusion did to the graph: fused groups and per-clip totals before/after."""

    fused: list[dict] = field(default_factory=list)
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"fused": self.fused, "before": self.before, "after": self.after}


def _totals(g: nx.DiGraph) -> dict[str, int]:
    costs = ir.graph_costs(g)
    d = dense_by_input(g)
    return {"params": sum(c["params"] for c in costs.values()), "dense_macs": sum(c["macs"] for c in costs.values()),
            "macs_on_spikes": d["spike"], "macs_on_real_inputs": d["real"],
            "weighted_ops": sum(1 for _ in ir.iter_ops(g, ir.WEIGHTED))}


def fusion_report(before: nx.DiGraph, after: nx.DiGraph) -> FusionReport:
    """Per fused op: the ops it replaced with their parameters and dense MACs, before and after; plus totals."""
    rep = FusionReport(before=_totals(before), after=_totals(after))
    for n, op in ir.iter_ops(after, "conv2d"):
        parts = [p for p in after.nodes[n]["origin"] if p in before and ir.op_of(before, p).op == "conv2d"]
        if len(parts) < 2:
            continue
        cb = [ir.node_cost(before, p) for p in parts]
        ca = ir.node_cost(after, n)
        rep.fused.append({"name": n, "parts": parts, "params_before": sum(c["params"] for c in cb),
                          "params_after": ca["params"], "macs_before": sum(c["macs"] for c in cb),
                          "macs_after": ca["macs"], "kernel": list(op.weight.shape)})
    return rep


def check(before: nx.DiGraph, after: nx.DiGraph, inputs: torch.Tensor, batch_size: int = 8) -> list[FidelityReport]:
    """Fidelity of fusion on ``inputs`` in float64 and float32 (targets: :func:`judge`)."""
    return judge(compare(before, after, inputs, torch.float64, label=f"{NAME} float64", batch_size=batch_size),
                 compare(before, after, inputs, torch.float32, label=f"{NAME} float32", batch_size=batch_size))


def judge(r64: FidelityReport, r32: FidelityReport) -> list[FidelityReport]:
    """Set the targets of fusion's reports: float64 identical spikes and max |dlogit| <= 1e-9; float32 as fold_bn."""
    r64.target = "identical spikes, max |dlogit| <= 1e-9"
    r64.passed = r64.identical_spikes() and r64.max_abs_logit_diff <= 1e-9
    r32.target = "max |dlogit| <= 1e-4, flips <= 1e-4 of spikes"
    r32.passed = r32.max_abs_logit_diff <= 1e-4 and r32.flips <= 1e-4 * r32.spikes_ref
    return [r64, r32]
