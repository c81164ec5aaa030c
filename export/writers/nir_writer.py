"""NIR files of an IR graph: the whole graph (plain NIR with documented extension subgraphs), and standard-only parts.

``model.nir`` (:func:`write_nir`; :func:`read_nir` is plain ``nir.read``; :func:`nir_to_ir` converts back)
opens with the released ``nir.read`` (default arguments, type-checked, nothing registered). Each op's
``to_nir`` hook (:mod:`export.ir.ops`) gives its NIR form from a :class:`NirContext`:

=================  ==========================================================================
IR op              NIR form
=================  ==========================================================================
``input``          ``Input`` (shape [C, H, W])
``conv2d``         ``Conv2d`` (groups written dense with zero off-group weights, groups = 1; zero
                   bias when the op has none); a position-dependent bias (``fuse_linear``) ->
                   extension ``SVFPositionalConv2d``; a non-square kernel -> ``SVFConv2d``
``linear``         on a vector: ``Affine`` (``Linear`` without bias); on tokens [N, C] ->
                   extension ``SVFTokenLinear`` (NIR's Affine is 1-D only)
``neuron``         ``LIF`` with dt = 1e-4, tau = dt/k, r = 1 (``decay_input``; else r = 1/k),
                   v_leak = v_reset, v_threshold = nextafter(float32(V_th), -inf) (peers fire on
                   ``>``, SpikingJelly on ``>=``; docs/export.md)
``add``            no node: every consumer gets the edges of both inputs (NIR sums fan-in); the
                   IR node is kept in the graph metadata (``implicit``)
``flatten``        ``Flatten`` (start_dim 0)
``affine``         extension ``SVFChannelAffine`` (per-step scale/bias left by TDBN)
``batchnorm``      extension ``SVFBatchNorm`` (unfolded graphs only)
``split_heads`` …  extensions ``SVFSplitHeads``, ``SVFMergeHeads``, ``SVFToTokens``, ``SVFToImage``
``spike_matmul_*`` extensions ``SVFSpikeMatmulKV`` (Kᵀ·V), ``SVFSpikeMatmulQKV`` (s·Q·KV)
``concat``         extension ``SVFConcat``
``conv3d``         extension ``SVFConv3dHead`` (grouped Conv3d over all T steps, once per clip)
``output``         ``Output``
=================  ==========================================================================

An extension is a nested ``nir.NIRGraph`` (NIR's own node type) whose metadata says what it is
(``nir_extension``, ``op``, ``params`` JSON, ``array_<field>`` datasets) and whose body is
``input -> <op>__<node>__in (self-loop)``, ``<op>__<node> (self-loop) -> output``: two ``Delay`` nodes of
NaN delays, so that it type-checks for any input/output shapes while no consumer can run it (none of
the peers maps ``Delay``; one that did would meet a NaN delay and an output that does not depend on
the input). An extension with several inputs gets one ``SVFPort`` extension per input, placing the
flattened input at its offset in a vector of the summed sizes, so NIR's fan-in sum of the ports is
their concatenation in port order. Every node carries ``metadata["svformer"]``: a JSON string with
the IR name, op, attributes, input order (ports), origin and output spec, so :func:`nir_to_ir`
rebuilds the IR graph exactly (arrays keep their dtypes); the graph's metadata holds ``dt`` and the
IR graph attributes. NIR node names are the IR names with ``.``/``+`` replaced (torch module names
cannot contain dots).

``nir/part_<i>.nir`` (:func:`write_nir_part`): one sequential part of :mod:`.partition` with only
standard nodes (``Input`` -> [``Conv2d`` -> ``LIF``] x L -> ``Output``), float32, grouped
convolutions written dense with zero off-group weights, readable by plain ``nir.read`` and
runnable in SpikingJelly (``nir_exchange.import_from_nir``), snnTorch and Norse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import h5py
import networkx as nx
import nir
import numpy as np
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.fileio import write_buffered_atomic

from .. import ir
from .partition import Part, dense_groups, layer_stride_padding, layer_weights

DT = 1e-4  # seconds per step written for peers (snnTorch assumes 1e-4 whatever the file says)
FORMAT = "svformer-deploy/nir"
VERSION = 2  # 1: custom node types (plain nir.read refused them); 2: plain NIR with extension subgraphs
EXTENSION = "svformer/nir-extension/1"  # metadata["nir_extension"] of every extension subgraph


class NIRFileError(SVFormerError):
    """A NIR file that cannot be read (not HDF5, not NIR, unknown node type, missing metadata)."""


# ---------------------------------------------------------------------------------------------
# extension operations (what an op's to_nir hook returns when NIR has no node for it)
# ---------------------------------------------------------------------------------------------
_SHAPES = ("input_shape", "input2_shape", "output_shape")


@dataclass(eq=False)
class _Extension:
    """Base of the extension operations: ``input_shape`` (per step, no batch axis), ``output_shape``;
    two-input operations also have ``input2_shape`` (port 1). Written as a nested ``nir.NIRGraph``
    (:func:`extension_graph`); array fields become ``array_<field>`` metadata datasets (absent when None),
    the other fields the ``params`` JSON."""

    metadata: dict[str, Any] = field(default_factory=dict, kw_only=True)

    def params(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able parameters incl. shapes, arrays by field name)."""
        js: dict[str, Any] = {}
        arrays: dict[str, np.ndarray] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "metadata" or v is None:
                continue
            if f.name in _SHAPES:
                js[f.name] = [int(s) for s in np.asarray(v).reshape(-1)]
            elif isinstance(v, np.ndarray):
                arrays[f.name] = v
            else:
                js[f.name] = v.item() if isinstance(v, np.generic) else v
        return js, arrays


@dataclass(eq=False)
class SVFChannelAffine(_Extension):
    """Per-channel scale and bias, possibly different at every step: Y[t][c] = A[t, c]·X[t][c] + B[t, c].

    ``scale``/``bias``: [T, C] (per step), [C] or absent (1 / 0); ``axis``: channel axis of the
    per-step tensor (0 for [C, H, W], -1 for tokens [N, C]).
    """

    input_shape: np.ndarray
    output_shape: np.ndarray
    axis: int
    scale: np.ndarray | None = None
    bias: np.ndarray | None = None


@dataclass(eq=False)
class SVFBatchNorm(_Extension):
    """Y[t][c] = (X[t][c] - μ[t, c]) / sqrt(σ²[t, c] + ε)·γ[t, c] + β[t, c] (arrays [T, C] or [C])."""

    input_shape: np.ndarray
    output_shape: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    eps: float
    axis: int


@dataclass(eq=False)
class SVFTokenLinear(_Extension):
    """Per-token linear map on tokens [N, C_in]: Y[n, o] = Σ_i W[o, i]·X[n, i] + b[o] (``bias`` optional)."""

    input_shape: np.ndarray
    output_shape: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None = None


@dataclass(eq=False)
class SVFPositionalConv2d(_Extension):
    """2-D convolution whose bias depends on the output position: Y[o, y, x] = (W ⋆ X)[o, y, x] + B[o, y, x]."""

    input_shape: np.ndarray
    output_shape: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    stride: np.ndarray
    padding: np.ndarray
    groups: int


@dataclass(eq=False)
class SVFConv2d(_Extension):
    """2-D convolution as PyTorch's ``conv2d`` (``bias`` [C_out] optional): used for non-square kernels, whose
    shapes nir 1.0.8's type inference gets wrong (it uses the first kernel dimension for both)."""

    input_shape: np.ndarray
    output_shape: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None
    stride: np.ndarray
    padding: np.ndarray
    groups: int


@dataclass(eq=False)
class SVFSplitHeads(_Extension):
    """[N, P·h·d] -> [h, N, d]: Y[j, n, e] = X[n, part·h·d + j·d + e]."""

    input_shape: np.ndarray
    output_shape: np.ndarray
    part: int
    parts: int
    heads: int
    head_dim: int


@dataclass(eq=False)
class SVFMergeHeads(_Extension):
    """[h, N, d] -> [N, h·d]: Y[n, j·d + e] = X[j, n, e]."""

    input_shape: np.ndarray
    output_shape: np.ndarray


@dataclass(eq=False)
class SVFToTokens(_Extension):
    """[C, H, W] -> [H·W, C]: Y[y·W + x, c] = X[c, y, x]."""

    input_shape: np.ndarray
    output_shape: np.ndarray


@dataclass(eq=False)
class SVFToImage(_Extension):
    """[N, C] -> [C, height, width]: Y[c, y, x] = X[y·width + x, c]."""

    input_shape: np.ndarray
    output_shape: np.ndarray
    height: int
    width: int


@dataclass(eq=False)
class SVFSpikeMatmulKV(_Extension):
    """Per head j: KV[j] = K[j]ᵀ·V[j]; input K [h, N, d] spikes, input2 V [h, N, d] spikes -> [h, d, d]."""

    input_shape: np.ndarray
    input2_shape: np.ndarray
    output_shape: np.ndarray


@dataclass(eq=False)
class SVFSpikeMatmulQKV(_Extension):
    """Per head j: A[j] = s·(Q[j]·KV[j]); input Q [h, N, d] spikes, input2 KV [h, d, d] -> [h, N, d]; no softmax."""

    input_shape: np.ndarray
    input2_shape: np.ndarray
    output_shape: np.ndarray
    scale: float


@dataclass(eq=False)
class SVFConcat(_Extension):
    """Concatenation of input and input2 (in that order) along ``axis`` of the per-step tensor."""

    input_shape: np.ndarray
    input2_shape: np.ndarray
    output_shape: np.ndarray
    axis: int


@dataclass(eq=False)
class SVFConv3dHead(_Extension):
    """Y[o] = b[o] + Σ_{t<T} Σ_i Σ_{y,x} W[o, i, t, y, x]·X[t][g(o)·C_in/g + i, y, x]: a grouped Conv3d whose
    kernel covers all T steps and the whole map; emits one [C_out, 1, 1, 1] tensor per clip."""

    input_shape: np.ndarray
    output_shape: np.ndarray
    weight: np.ndarray
    groups: int
    bias: np.ndarray | None = None


@dataclass(eq=False)
class SVFAdd(_Extension):
    """Y = X0 + X1 (shape ``output_shape``) materialised as a node: its input is the fan-in sum of two
    ``SVFPort`` at offset 0. Written only when an implicit add would repeat an edge (``add(x, x)``)."""

    input_shape: np.ndarray
    input2_shape: np.ndarray
    output_shape: np.ndarray


@dataclass(eq=False)
class SVFPort(_Extension):
    """Input ``port`` of the multi-input extension ``of``: Y = 0 ∈ R^total; Y[offset : offset + size] =
    flatten(X) (C order). NIR sums the ports entering the extension, which is then the concatenation of
    its flattened inputs in port order (ports of ``SVFAdd`` all have offset 0: their sum)."""

    input_shape: np.ndarray
    output_shape: np.ndarray
    port: int
    offset: int
    size: int
    of: str


EXTENSIONS: dict[str, type[_Extension]] = {
    cls.__name__: cls
    for cls in (SVFChannelAffine, SVFBatchNorm, SVFTokenLinear, SVFPositionalConv2d, SVFConv2d, SVFSplitHeads,
                SVFMergeHeads, SVFToTokens, SVFToImage, SVFSpikeMatmulKV, SVFSpikeMatmulQKV, SVFConcat, SVFConv3dHead,
                SVFAdd, SVFPort)
}


@dataclass(eq=False)
class _FanIn:
    """What the ``add`` hook returns: no node, consumers receive both inputs' edges."""

    metadata: dict[str, Any]


def _marker(shape: Any) -> nir.Delay:
    """A ``Delay`` of NaN delays: a node no peer maps and no correct consumer can run."""
    return nir.Delay(delay=np.full(tuple(int(s) for s in np.asarray(shape).reshape(-1)), np.nan, np.float32))


def extension_graph(spec: _Extension, name: str, in_shape: Any | None = None) -> nir.NIRGraph:
    """The nested ``nir.NIRGraph`` of an extension operation named ``name`` in the top graph: ``input ->
    <Op>__<name>__in`` (self-loop) and ``<Op>__<name>`` (self-loop) ``-> output``, metadata ``nir_extension``,
    ``op``, ``params`` (JSON), ``array_<field>`` and the node's ``svformer`` JSON. ``in_shape`` overrides
    the input shape (a multi-input extension reads the concatenation of its ports)."""
    op = type(spec).__name__
    js, arrays = spec.params()
    shape_in = js["input_shape"] if in_shape is None else [int(s) for s in in_shape]
    a, b = f"{op}__{name}__in", f"{op}__{name}"
    nodes = {"input": nir.Input(input_type={"input": np.asarray(shape_in, np.int64)}), a: _marker(shape_in),
             b: _marker(js["output_shape"]),
             "output": nir.Output(output_type={"output": np.asarray(js["output_shape"], np.int64)})}
    md: dict[str, Any] = {"nir_extension": EXTENSION, "op": op, "params": json.dumps(js), **spec.metadata}
    md.update({f"array_{k}": v for k, v in arrays.items()})
    return nir.NIRGraph(nodes=nodes, edges=[("input", a), (a, a), (b, b), (b, "output")], metadata=md,
                        type_check=False)


def extension_op(node: Any) -> str | None:
    """The extension operation name (``SVFConcat``, ...) of a NIR node, or None for a standard node."""
    md = getattr(node, "metadata", None)
    if isinstance(node, nir.NIRGraph) and isinstance(md, dict) and _plain(md.get("nir_extension")) == EXTENSION:
        return _plain(md.get("op"))
    return None


# ---------------------------------------------------------------------------------------------
# neuron parameters for peers
# ---------------------------------------------------------------------------------------------
def peer_threshold(v_threshold: float) -> np.float32:
    """The float32 threshold that makes ``h > θ'`` (snnTorch, Norse, NIR) fire exactly when SpikingJelly's
    ``h >= V_th`` fires in float32: the next float32 below float32(V_th)."""
    return np.nextafter(np.float32(v_threshold), np.float32(-np.inf))


def peer_tau(k: float, dt: float = DT) -> np.float32:
    """float32 tau = dt/k, nudged by a few ulps until float32(float32(dt)·(1/tau)) == float32(k) when
    possible (Norse then reproduces the membrane bit for bit; docs/export.md)."""
    tau = np.float32(dt / k)
    want, dt32 = np.float32(k), np.float32(dt)
    cand = tau
    for _ in range(16):
        if np.float32(dt32 * (np.float32(1.0) / cand)) == want:
            return cand
        got = np.float32(dt32 * (np.float32(1.0) / cand))
        cand = np.nextafter(cand, np.float32(np.inf) if got > want else np.float32(0))
    return tau


def lif_node(op: ir.Neuron, shape: tuple[int, ...], dt: float = DT, metadata: dict | None = None) -> nir.LIF:
    """``nir.LIF`` for an IR neuron (ParametricLIF / LIF, hard reset), parameters broadcast to ``shape``.

    NIR's forward-Euler step h = v + (dt/tau)(v_leak - v + r·x) equals SpikingJelly's
    h = v + k(x - (v - V_reset)) with tau = dt/k, r = 1, v_leak = V_reset (decay_input), or
    h = v - k(v - V_reset) + x with r = 1/k (decay_input False).
    """
    k = op.k
    full = np.ones(shape, dtype=np.float32)
    r = 1.0 if op.decay_input else 1.0 / k
    return nir.LIF(tau=full * peer_tau(k, dt), r=full * np.float32(r), v_leak=full * np.float32(op.v_reset),
                   v_threshold=full * peer_threshold(op.v_threshold), v_reset=full * np.float32(op.v_reset),
                   metadata=metadata or {})


# ---------------------------------------------------------------------------------------------
# IR -> NIR (whole graph)
# ---------------------------------------------------------------------------------------------
def nir_names(g: nx.DiGraph) -> dict[str, str]:
    """IR node name -> NIR node name (dots and pluses replaced; unique)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for n in g.nodes:
        base = n.replace(".", "_").replace("+", "__")
        name, i = base, 1
        while name in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name)
        out[n] = name
    return out


def _doc(g: nx.DiGraph, n: str, arrays: list[str]) -> dict[str, Any]:
    d = g.nodes[n]
    op = d["op"]
    return {"name": n, "op": op.op, "attrs": {k: ir.json_value(v, f"{n}.{k}") for k, v in op.attributes().items()},
            "arrays": arrays, "inputs": ir.inputs_of(g, n), "origin": list(d["origin"]), "stage": d["stage"],
            "shape": list(d["shape"]), "kind": d["kind"], "rate": d["rate"]}


def _shape(g: nx.DiGraph, n: str) -> np.ndarray:
    return np.asarray(ir.spec(g, n).shape, dtype=np.int64)


@dataclass
class NirContext:
    """What an op's ``to_nir`` hook (:mod:`export.ir.ops`) gets: the ``nir`` module, the extension classes
    (``ext.SVFConcat``, ...), ``fan_in`` (an op that is no node: consumers get its inputs' edges),
    ``dense`` (a grouped conv weight written dense), per-step shapes of input 0 / input 1 / the output, the
    node's metadata, ``dt`` and :func:`lif_node`."""

    in_shape: np.ndarray
    in2_shape: np.ndarray | None
    shape: np.ndarray
    meta: dict[str, str]
    dt: float
    nir: ClassVar[Any] = nir
    ext: ClassVar[Any] = SimpleNamespace(**EXTENSIONS)
    fan_in: ClassVar[Any] = _FanIn
    dense: ClassVar[Any] = staticmethod(dense_groups)
    lif: ClassVar[Any] = staticmethod(lif_node)


def _node(g: nx.DiGraph, n: str, dt: float) -> Any:
    op = ir.op_of(g, n)
    ins = ir.inputs_of(g, n)
    shape = _shape(g, n)
    ctx = NirContext(in_shape=_shape(g, ins[0]) if ins else shape,
                     in2_shape=_shape(g, ins[1]) if len(ins) > 1 else None, shape=shape,
                     meta={"svformer": json.dumps(_doc(g, n, list(op.arrays())))}, dt=dt)
    return op.to_nir(ctx)


@dataclass
class _Plan:
    nodes: dict[str, Any]  # NIR name -> standard nir node, _Extension, or (_Extension, total) for ported ones
    edges: list[tuple[str, str]]
    implicit: list[dict[str, Any]]  # docs of the IR nodes written as fan-in (add)


def _plan(g: nx.DiGraph, dt: float) -> _Plan:
    """Which NIR node each IR node becomes, the port nodes and the edges (fan-in adds resolved)."""
    names = nir_names(g)
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    implicit: list[dict[str, Any]] = []
    srcs: dict[str, list[str]] = {}  # IR name -> NIR nodes whose outputs sum to its value
    taken = set(names.values())
    for n in nx.topological_sort(g):
        spec, ins, nm = _node(g, n, dt), ir.inputs_of(g, n), names[n]
        if isinstance(spec, _FanIn):
            union = [s for i in ins for s in srcs[i]]
            if len(set(union)) == len(union):
                srcs[n] = union
                implicit.append(json.loads(spec.metadata["svformer"]))
                continue
            size = int(np.prod(_shape(g, n)))  # add(x, x) and the like: a node fed by two ports at offset 0
            spec = SVFAdd(_shape(g, ins[0]), _shape(g, ins[1]), _shape(g, n), metadata=spec.metadata)
            layout = [(0, size)] * len(ins)
        elif len(ins) > 1:
            if not isinstance(spec, _Extension):
                raise SVFormerError(f"{n}: a standard NIR node cannot take {len(ins)} distinct inputs")
            sizes = [int(np.prod(_shape(g, i))) for i in ins]
            layout = [(sum(sizes[:k]), sizes[k]) for k in range(len(ins))]
        else:
            layout = None
        if layout is None:
            edges += [(s, nm) for i in ins for s in srcs[i]]
            nodes[nm] = spec
        else:
            total = max(o + s for o, s in layout)
            for k, (src, (off, size)) in enumerate(zip(ins, layout, strict=True)):
                pn = f"{nm}__port{k}"
                if pn in taken:
                    raise SVFormerError(f"{n}: NIR port name {pn!r} clashes with a node name")
                taken.add(pn)
                nodes[pn] = SVFPort(_shape(g, src), np.asarray([total]), k, off, size, n)
                edges += [(s, pn) for s in srcs[src]] + [(pn, nm)]
            nodes[nm] = (spec, total)
        srcs[n] = [nm]
    return _Plan(nodes, edges, implicit)


def ir_to_nir(g: nx.DiGraph, dt: float = DT) -> nir.NIRGraph:
    """The whole IR graph as a plain NIR graph (standard nodes + extension subgraphs), type-checked by nir
    exactly as ``nir.read`` will check it."""
    ir.validate(g)
    plan = _plan(g, dt)
    nodes: dict[str, nir.NIRNode] = {}
    for nm, spec in plan.nodes.items():
        if isinstance(spec, tuple):
            nodes[nm] = extension_graph(spec[0], nm, (spec[1],))
        elif isinstance(spec, _Extension):
            nodes[nm] = extension_graph(spec, nm)
        else:
            nodes[nm] = spec
    doc = {"format": FORMAT, "version": VERSION, "graph": ir.json_attributes(g.graph), "order": list(g.nodes),
           "implicit": plan.implicit, "extensions": sorted({extension_op(v) for v in nodes.values()} - {None})}
    names = set(nodes)
    try:
        graph = nir.NIRGraph(nodes=nodes, edges=list(plan.edges), type_check=True,
                             metadata={"dt": float(dt), "svformer": json.dumps(doc)})
    except (ValueError, AssertionError, KeyError) as e:
        raise SVFormerError(f"NIR type check of the whole graph failed ({type(e).__name__}: {e})") from None
    if set(graph.nodes) != names:  # nir adds Input/Output nodes to dangling roots/leaves
        raise SVFormerError(f"NIR graph has dangling nodes: nir added {sorted(set(graph.nodes) - names)}")
    return graph


def _write(graph: nir.NIRGraph, path: Path) -> Path:
    write_buffered_atomic(path, lambda buf: nir.write(buf, graph))  # HDF5 in memory: a full disk is an OSError
    return path


def write_nir(g: nx.DiGraph, path: str | Path, dt: float = DT) -> Path:
    """Write the whole graph to ``path`` (plain NIR HDF5 with extension subgraphs), atomically."""
    return _write(ir_to_nir(g, dt), Path(path))


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray) and v.dtype.kind in "SO":
        return [_plain(x) for x in v.tolist()]
    return v


_NIR_TYPES = {name for name, v in vars(nir).items() if isinstance(v, type) and issubclass(v, nir.NIRNode)}


def _unknown_type(group: h5py.Group, where: str = "") -> str | None:
    """'node <name> has an unknown NIR type <t>' for the first node (nested graphs too) nir does not know."""
    for name, sub in group.get("nodes", {}).items():
        t = _plain(sub["type"][()]) if "type" in sub else None
        if t not in _NIR_TYPES:
            return f"node {where + name!r} has an unknown NIR type {t!r}"
        if t == "NIRGraph":
            found = _unknown_type(sub, f"{where}{name}/")
            if found:
                return found
    return None


def read_nir(path: str | Path) -> nir.NIRGraph:
    """``nir.read(path)`` (released nir, default arguments: type-checked) of any NIR file, with errors as
    :class:`NIRFileError` naming the file (nir itself gives a bare AssertionError for unknown types)."""
    path = Path(path)
    if not path.is_file():
        raise NIRFileError(f"{path}: no such NIR file")
    try:
        with h5py.File(path, "r") as f:
            if "node" not in f:
                raise NIRFileError(f"{path}: not a NIR file (no 'node' group)")
            node = f["node"]
            if "type" not in node or _plain(node["type"][()]) != "NIRGraph" or "nodes" not in node:
                raise NIRFileError(f"{path}: the top node is not a NIR graph")
            unknown = _unknown_type(node)
    except NIRFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise NIRFileError(f"{path}: not a readable NIR (HDF5) file ({e})") from None
    if unknown:
        raise NIRFileError(f"{path}: {unknown}")
    try:
        return nir.read(str(path))
    except (TypeError, ValueError, KeyError, AssertionError, OSError) as e:
        raise NIRFileError(f"{path}: malformed NIR graph ({type(e).__name__}: {e})") from None


def _json_meta(md: dict, what: str) -> dict:
    raw = _plain(md.get("svformer")) if isinstance(md, dict) else None
    if raw is None:
        raise NIRFileError(f"{what} has no svformer metadata (not written by svformer-deploy)")
    try:
        return json.loads(raw)
    except (TypeError, json.JSONDecodeError) as e:
        raise NIRFileError(f"{what}: unreadable svformer metadata ({e})") from None


def _regroup(w: np.ndarray, groups: int) -> np.ndarray:
    """Inverse of :func:`dense_groups` (the diagonal blocks of a dense weight)."""
    if groups == 1:
        return w
    co, ci = w.shape[:2]
    per, cig = co // groups, ci // groups
    return np.stack([w[o, (o // per) * cig:(o // per + 1) * cig] for o in range(co)])


def _array(node: Any, meta: dict, field_name: str) -> Any:
    if extension_op(node) is not None:
        return node.metadata.get(f"array_{field_name}")
    value = getattr(node, field_name, None)
    if meta["op"] == "conv2d" and field_name == "weight" and isinstance(value, np.ndarray):
        return _regroup(value, int(meta["attrs"].get("groups", 1)))
    return value


def nir_to_ir(graph: nir.NIRGraph, source: str = "NIR graph") -> nx.DiGraph:
    """Rebuild the IR graph from a NIR graph written by :func:`write_nir` (exact: structure, attributes,
    arrays and their dtypes); validated like any IR file, and its NIR nodes and edges must be those the
    writer gives the rebuilt graph."""
    gdoc = _json_meta(graph.metadata, source)
    if gdoc.get("format") != FORMAT:
        raise NIRFileError(f"{source}: not an svformer-deploy NIR graph")
    if gdoc.get("version") != VERSION:
        raise NIRFileError(f"{source}: svformer-deploy NIR format version {gdoc.get('version')}, this reader "
                           f"takes {VERSION}; export the model again")
    by_ir: dict[str, tuple[str | None, dict]] = {}
    for nname, node in graph.nodes.items():
        if extension_op(node) == "SVFPort":
            continue
        meta = _json_meta(node.metadata, f"{source}: node {nname!r}")
        by_ir[meta["name"]] = (nname, meta)
    for meta in gdoc.get("implicit", []):
        by_ir[meta["name"]] = (None, meta)
    order = gdoc["order"]
    if sorted(order) != sorted(by_ir):
        raise NIRFileError(f"{source}: its nodes do not match the recorded IR node list")
    arrays: dict[str, np.ndarray] = {}
    docs, edges = [], []
    for i, name in enumerate(order):
        nname, meta = by_ir[name]
        entry = {"name": name, "op": meta["op"], "attrs": meta["attrs"], "arrays": {}, "origin": meta["origin"],
                 "shape": meta["shape"], "kind": meta["kind"], "rate": meta["rate"]}
        if "stage" in meta:
            entry["stage"] = meta["stage"]
        for fname in meta["arrays"]:
            value = _array(graph.nodes[nname], meta, fname) if nname is not None else None
            if not isinstance(value, np.ndarray):
                raise NIRFileError(f"{source}: node {nname or name!r} lacks its array {fname!r}")
            arrays[f"{i}.{fname}"] = value
            entry["arrays"][fname] = f"{i}.{fname}"
        docs.append(entry)
        for port, src in enumerate(meta["inputs"]):
            edges.append({"src": src, "dst": name, "port": port, "shape": by_ir[src][1]["shape"],
                          "kind": by_ir[src][1]["kind"], "rate": by_ir[src][1]["rate"]})
    try:
        back = ir.from_json_and_arrays({"graph": gdoc["graph"], "nodes": docs, "edges": edges}, arrays)
    except ir.IRError as e:
        raise NIRFileError(f"{source}: {e}") from None
    plan = _plan(back, float(graph.metadata.get("dt", DT)))
    if set(plan.nodes) != set(graph.nodes) or sorted(plan.edges) != sorted(map(tuple, graph.edges)):
        raise NIRFileError(f"{source}: its NIR nodes and edges do not match the recorded IR graph")
    return back


def read_nir_ir(path: str | Path) -> nx.DiGraph:
    """:func:`read_nir` (plain ``nir.read``) then :func:`nir_to_ir`."""
    return nir_to_ir(read_nir(path), str(path))


# ---------------------------------------------------------------------------------------------
# standard-only parts
# ---------------------------------------------------------------------------------------------
def nir_part_issue(g: nx.DiGraph, part: Part) -> str | None:
    """Why ``part`` cannot be a standard NIR file that plain ``nir.read`` accepts, or None."""
    for layer in part.layers:
        w, _, _ = layer_weights(g, layer)
        if w.shape[2] != w.shape[3]:
            return (f"{layer.weighted}: non-square kernel {w.shape[2]}x{w.shape[3]}; nir 1.0.8 infers conv output "
                    "shapes from the first kernel dimension only, so its type check (run by nir.read) fails")
    return None


def part_to_nir(g: nx.DiGraph, part: Part, dt: float = DT) -> nir.NIRGraph:
    """One sequential part as a NIR graph of standard nodes only (float32, dense convolutions), type-checked."""
    issue = nir_part_issue(g, part)
    if issue is not None:
        raise SVFormerError(f"part {part.index} has no standard NIR form: {issue}")
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type={"input": np.asarray(part.in_shape)})}
    edges = []
    prev = "input"
    for i, layer in enumerate(part.layers):
        w, b, groups = layer_weights(g, layer)
        w = dense_groups(np.asarray(w, dtype=np.float32), groups)
        b = np.zeros(w.shape[0], np.float32) if b is None else np.asarray(b, np.float32)
        stride, padding = layer_stride_padding(g, layer)
        nodes[f"conv{i}"] = nir.Conv2d(input_shape=tuple(layer.in_shape[1:]), weight=w, stride=stride, padding=padding,
                                       dilation=(1, 1), groups=1, bias=b)
        nodes[f"lif{i}"] = lif_node(ir.op_of(g, layer.neuron), layer.out_shape, dt)
        edges += [(prev, f"conv{i}"), (f"conv{i}", f"lif{i}")]
        prev = f"lif{i}"
    nodes["output"] = nir.Output(output_type={"output": np.asarray(part.out_shape)})
    edges.append((prev, "output"))
    doc = {"format": FORMAT + "/part", "version": VERSION, **part.to_dict()}
    try:
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": float(dt), "svformer": json.dumps(doc)},
                            type_check=True)
    except (ValueError, AssertionError) as e:  # pragma: no cover - a shape the checks above did not foresee
        raise SVFormerError(f"part {part.index}: NIR type check failed ({e})") from None


def write_nir_part(g: nx.DiGraph, part: Part, path: str | Path, dt: float = DT) -> Path:
    """Write one part as a standard-only NIR file (readable by plain ``nir.read``), atomically."""
    return _write(part_to_nir(g, part, dt), Path(path))


def run_spikingjelly_part(path: str | Path, x: Any) -> Any:
    """Run a standard part file in SpikingJelly (``import_from_nir``, float32, multi-step) on input spikes
    ``x`` ``[T, B, C, H, W]``; returns its output spikes (same layout; compare with
    :class:`export.fidelity.SpikeTally`)."""
    import torch
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    gm = import_from_nir(str(path), dt=DT, step_mode="m", dtype=torch.float32)
    with torch.no_grad():
        out, _ = gm(x.to(torch.float32))
    return out


NIR_PEERS = ("spikingjelly", "snntorch", "norse")
"""NIR consumers a standard part file is run in (snnTorch and Norse are optional: dev extras)."""


def nir_peer_installed(peer: str) -> bool:
    """Whether ``peer`` (one of :data:`NIR_PEERS`) can be imported here."""
    import importlib.util

    return importlib.util.find_spec("nirtorch" if peer == "spikingjelly" else peer) is not None


def run_nir_peer(path: str | Path, x: Any, peer: str) -> Any:
    """Output spikes ``[T, B, ...]`` of a standard part file run in ``peer`` on input spikes ``x`` ``[T, B, C, H, W]``.

    SpikingJelly runs it multi-step (:func:`run_spikingjelly_part`); snnTorch
    (``snntorch.import_nir.import_from_nir``) and Norse (``norse.torch.from_nir``, dt = :data:`DT`) read
    the file with plain ``nir.read`` and run one time step per call with their own state. The optional
    peers are imported by name, only when called.
    """
    import contextlib
    import importlib
    import io

    import nir
    import torch

    if peer == "spikingjelly":
        return run_spikingjelly_part(path, x)
    if peer not in NIR_PEERS:
        raise ValueError(f"unknown NIR peer {peer!r}; use one of {', '.join(NIR_PEERS)}")
    graph = nir.read(str(path))
    if peer == "snntorch":
        import_from_nir = importlib.import_module("snntorch.import_nir").import_from_nir
        with contextlib.redirect_stdout(io.StringIO()):  # snnTorch 1.0 prints the tau arrays it reads
            net = import_from_nir(graph)
    else:
        net = importlib.import_module("norse.torch").from_nir(graph, dt=DT)
    outs, state = [], None
    with torch.no_grad():
        for frame in x.to(torch.float32):
            y, state = net(frame) if state is None else net(frame, state)
            outs.append(y)
    return torch.stack(outs)
