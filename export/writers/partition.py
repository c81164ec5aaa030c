"""Which parts of an IR graph a neuromorphic core can run as a sequential chain, and why the rest cannot.

A **part** is a maximal chain ``spikes -> [conv/dense -> neuron] x L`` of the graph: its input is a
binary spike tensor produced elsewhere (on the host or by another part), every weighted op feeds
exactly one neuron layer and nothing else, and every neuron inside the chain feeds only the next
weighted op. Such a chain is what Lava-DL netx (``input``/``conv``/``dense`` layers with CUBA
neurons, strictly sequential) and the standard NIR nodes that peers run (``Conv2d``/``Affine`` +
``LIF``) can express. Everything else (residual adds, per-step affines left by TDBN, attention
matmuls, concat, the grouped Conv3d head, layout ops, real-valued inputs) stays on a host, and
:func:`partition` says why for every node: the op's ``netx_refusal`` hook (:mod:`export.ir.ops`), or,
for the chain layers (conv2d/linear synapses, neurons), why this node is not in a chain.

Layouts: every layer of a part is written as a 2-D convolution on a ``[C, H, W]`` image.

- ``image``: conv2d on ``[C, H, W]`` tensors, as in the IR;
- ``tokens``: a per-token ``linear`` on ``[N, C]`` tokens is a 1x1 convolution on the image
  ``[C, N, 1]`` (token n is row n); a head split ``[h, N, d]`` of its output is channel
  ``j·d + e`` of that image;
- ``vector``: a ``linear`` on a ``[C]`` vector is a 1x1 convolution on ``[C, 1, 1]``.

:func:`to_part_layout` converts recorded IR tensors into a part's layout (for feeding a part to a
peer simulator and comparing its spikes).

Exact netx export has extra conditions on the *quantized* graph (:func:`netx_issue`): the
accumulator must reach the neuron without a rescale, one threshold per layer that is a multiple of
64 (Lava's ``vThMant << 6``), weights in 8 bits, an int16 bias and an accumulator inside the 24-bit
current.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
from torch import Tensor

from .. import ir


@dataclass
class Layer:
    """One conv layer of a part: ``weighted`` (IR conv2d/linear) drives ``neuron``.

    ``split``: the ``split_heads`` node between them (attention q/k/v), then ``rows`` are the
    output channels of the weighted op that this layer keeps. Shapes are in the part's layout
    (``[C, H, W]``).
    """

    weighted: str
    neuron: str
    split: str | None = None
    rows: tuple[int, int] | None = None
    in_shape: tuple[int, int, int] = (0, 0, 0)
    out_shape: tuple[int, int, int] = (0, 0, 0)

    def nodes(self) -> list[str]:
        return [n for n in (self.weighted, self.split, self.neuron) if n is not None]


@dataclass
class Part:
    """A sequential chain: spikes of ``source`` -> layers; ``layout`` of the source tensor (see module doc)."""

    index: int
    source: str
    layout: str
    layers: list[Layer] = field(default_factory=list)

    @property
    def nodes(self) -> list[str]:
        """IR nodes that run inside the part (weighted ops, head splits, neurons), in order."""
        return [n for layer in self.layers for n in layer.nodes()]

    @property
    def output(self) -> str:
        return self.layers[-1].neuron

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return self.layers[0].in_shape

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return self.layers[-1].out_shape

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "source": self.source, "layout": self.layout, "nodes": self.nodes,
                "output": self.output, "in_shape": list(self.in_shape), "out_shape": list(self.out_shape),
                "layers": [{"weighted": la.weighted, "neuron": la.neuron, "split": la.split,
                            "rows": list(la.rows) if la.rows else None, "in_shape": list(la.in_shape),
                            "out_shape": list(la.out_shape)} for la in self.layers]}


@dataclass
class Partition:
    """Parts (sequential chains for a core) and, for every other node, why it stays on a host."""

    parts: list[Part]
    host: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        core = {n: p.index for p in self.parts for n in p.nodes}
        return {"parts": [p.to_dict() for p in self.parts],
                "core_nodes": len(core), "host_nodes": len(self.host),
                "host": dict(self.host)}


# ---------------------------------------------------------------------------------------------
def _as_image(shape: tuple[int, ...], layout: str) -> tuple[int, int, int]:
    if layout == "image":
        return tuple(shape)
    if layout == "tokens":
        return (shape[-1], shape[0], 1)
    return (shape[0], 1, 1)


def _candidate(g: nx.DiGraph, neuron: str) -> tuple[Layer, str, str] | str:
    """The one-layer chain ending at ``neuron`` as (layer, source, layout), or why there is none."""
    (p,) = ir.inputs_of(g, neuron)
    pop = ir.op_of(g, p)
    split = None
    if pop.op == "split_heads":
        split, (p,) = p, ir.inputs_of(g, p)
        pop = ir.op_of(g, p)
        if pop.op != "linear":
            return f"its input is a head split of {pop.op} {p}, not of a linear layer"
        for s in ir.consumers(g, p):
            if ir.op_of(g, s).op != "split_heads" or [ir.op_of(g, c).op for c in ir.consumers(g, s)] != ["neuron"]:
                return f"the projection {p} also feeds {s}, which is not a head split into one neuron layer"
    elif not hasattr(pop, "chain_conv"):  # not a synapse op that a chain can hold
        return f"its input comes from {pop.op} {p}, not from a conv/dense layer on spikes"
    elif ir.consumers(g, p) != [neuron]:
        others = [c for c in ir.consumers(g, p) if c != neuron]
        return f"its input layer {p} also feeds {', '.join(others)}"
    (src,) = ir.inputs_of(g, p)
    s = ir.spec(g, src)
    if s.kind != ir.SPIKE:
        return f"the layer {p} reads a real-valued tensor ({src}), not spikes"
    if s.rate != ir.STEP:
        return f"the layer {p} runs at clip rate"
    layout = pop.chain_layout(s.shape)
    if layout is None:
        return f"{pop.op} {p} on a {list(s.shape)} tensor has no conv form"
    if pop.op == "conv2d" and pop.bias is not None and pop.bias.ndim != 1:
        return f"the conv {p} has a position-dependent bias (from fuse_linear)"
    rows = None
    if split is not None:
        sp = ir.op_of(g, split)
        width = sp.heads * sp.head_dim
        rows = (sp.part * width, (sp.part + 1) * width)
    in_shape = _as_image(s.shape, layout)
    out_ch = (rows[1] - rows[0]) if rows else ir.spec(g, p).shape[0 if layout == "image" else -1]
    out_hw = ir.spec(g, p).shape[1:] if layout == "image" else in_shape[1:]
    layer = Layer(weighted=p, neuron=neuron, split=split, rows=rows, in_shape=in_shape,
                  out_shape=(int(out_ch), int(out_hw[0]), int(out_hw[1])))
    return layer, src, layout


def partition(g: nx.DiGraph) -> Partition:
    """Split ``g`` into maximal sequential conv/dense + neuron chains and host nodes with reasons."""
    ir.validate(g)
    layers: dict[str, tuple[Layer, str, str]] = {}
    why_not: dict[str, str] = {}
    for n in ir.neuron_names(g):
        c = _candidate(g, n)
        if isinstance(c, str):
            why_not[n] = c
        else:
            layers[n] = c
    # chain layers: a layer whose source neuron ends another layer and feeds only this layer's op
    by_source: dict[str, list[str]] = {}
    for n, (_, src, _) in layers.items():
        by_source.setdefault(src, []).append(n)
    starts = []
    for n, (layer, src, layout) in layers.items():
        prev = layers.get(src)
        if (prev is not None and ir.consumers(g, src) == [layer.weighted] and prev[2] == layout
                and prev[0].split is None and prev[0].out_shape == layer.in_shape):
            continue  # continues the chain that ends at `src`
        starts.append(n)
    parts: list[Part] = []
    for n in ir.neuron_names(g):  # topological order
        if n not in starts:
            continue
        layer, src, layout = layers[n]
        part = Part(index=len(parts), source=src, layout=layout, layers=[layer])
        cur = n
        while True:
            nxt = [m for m in by_source.get(cur, []) if m not in starts]
            if len(nxt) != 1:
                break
            cur = nxt[0]
            part.layers.append(layers[cur][0])
        parts.append(part)
    core = {x for p in parts for x in p.nodes}
    host: dict[str, str] = {}
    for n in ir.topo_order(g):
        if n in core:
            continue
        host[n] = _host_reason(g, n, why_not)
    return Partition(parts, host)


def _host_reason(g: nx.DiGraph, n: str, why_not: dict[str, str]) -> str:
    op = ir.op_of(g, n)
    if op.op == "neuron":
        return "neuron: " + why_not.get(n, "its input is not a conv/dense layer on spikes")
    if hasattr(op, "chain_conv"):  # a synapse op that is not in a chain: which neighbour prevents it
        src = ir.inputs_of(g, n)[0]
        cons = [ir.op_of(g, c).op for c in ir.consumers(g, n)]
        if ir.spec(g, n).rate == ir.CLIP:
            return f"{op.op} on the clip-rate head output (host)"
        if ir.spec(g, src).kind != ir.SPIKE:
            return f"{op.op} on a real-valued tensor ({src}): a core layer takes binary spikes"
        if "affine" in cons:
            return f"{op.op} followed by a per-step affine (time-dependent BN): netx/NIR weights and biases " \
                   "are time-invariant"
        if "add" in cons:
            return f"{op.op} feeding a residual add (membrane shortcut), not a neuron layer"
        if any(c in ir.WEIGHTED for c in cons):
            return f"{op.op} feeding another linear layer with no neuron between them"
        if op.op == "conv2d" and op.bias is not None and op.bias.ndim == 3:
            return "conv with a position-dependent bias (from fuse_linear)"
        return f"{op.op} whose output feeds {', '.join(sorted(set(cons)))}, not one neuron layer"
    return op.netx_refusal() or f"{op.op} has no netx/NIR chain form"


# ---------------------------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------------------------
def to_part_layout(part: Part, x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """An IR tensor ``[T, B, *shape]`` (the part's source or one of its neurons) in the part's
    ``[T, B, C, H, W]`` image layout."""
    t, b = x.shape[:2]
    if part.layout == "image":
        return x
    if part.layout == "vector":
        return x.reshape(t, b, -1, 1, 1)
    if len(shape) == 2:  # tokens [N, C] -> [C, N, 1]
        return x.transpose(2, 3).unsqueeze(-1)
    if len(shape) == 3:  # heads [h, N, d] -> [h*d, N, 1]
        h, n, d = shape
        return x.permute(0, 1, 2, 4, 3).reshape(t, b, h * d, n, 1)
    raise ValueError(f"no part layout for a tensor of shape {shape}")


def layer_weights(g: nx.DiGraph, layer: Layer, quantized: bool = False) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(weight [C_out, C_in/g, kH, kW], bias [C_out] or None, groups) of ``layer`` as a conv in the part layout
    (the op's ``chain_conv``).

    ``quantized``: the integer weights and accumulator-unit biases of the quantize pass instead of floats.
    """
    op = ir.op_of(g, layer.weighted)
    if quantized:
        q = g.nodes[layer.weighted]["quant"]
        w, b = q["weight"], q.get("bias")
    else:
        w, b = op.weight, op.bias
    w, groups, _, _ = op.chain_conv(w)
    if layer.rows is not None:
        lo, hi = layer.rows
        w = w[lo:hi]
        b = None if b is None else np.asarray(b)[lo:hi]
    return w, (None if b is None else np.asarray(b)), int(groups)


def dense_groups(w: np.ndarray, groups: int) -> np.ndarray:
    """A grouped conv weight ``[C_out, C_in/g, kH, kW]`` as the equivalent dense ``[C_out, C_in, kH, kW]``
    (zeros off the groups), for peers that run only groups = 1."""
    if groups == 1:
        return w
    co, cig, kh, kw = w.shape
    out = np.zeros((co, cig * groups, kh, kw), dtype=w.dtype)
    per = co // groups
    for o in range(co):
        gi = o // per
        out[o, gi * cig:(gi + 1) * cig] = w[o]
    return out


def layer_stride_padding(g: nx.DiGraph, layer: Layer) -> tuple[tuple[int, int], tuple[int, int]]:
    op = ir.op_of(g, layer.weighted)
    _, _, stride, padding = op.chain_conv(op.weight)
    return stride, padding


def record_part_io(g: nx.DiGraph, part: Part, recorded: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
    """From a reference run's recorded node outputs: the part's input spikes and each layer's output
    spikes, in the part layout (``[T, B, C, H, W]``)."""
    x = to_part_layout(part, recorded[part.source], ir.spec(g, part.source).shape)
    outs = [to_part_layout(part, recorded[la.neuron], ir.spec(g, la.neuron).shape) for la in part.layers]
    return x, outs
