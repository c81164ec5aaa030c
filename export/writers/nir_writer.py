"""NIR files of an IR graph: the whole graph with documented extension nodes, and standard-only parts.

``model.nir`` (:func:`write_nir`, read back by :func:`read_nir`, converted back by :func:`nir_to_ir`)
holds every IR node, one NIR node each:

Each op's ``to_nir`` hook (:mod:`export.ir.ops`) builds its node from a :class:`NirContext`:

=================  ==========================================================================
IR op              NIR node
=================  ==========================================================================
``input``          ``Input`` (shape [C, H, W])
``conv2d``         ``Conv2d`` (groups kept; zero bias when the op has none); a position-
                   dependent bias (``fuse_linear``) -> extension ``SVFPositionalConv2d``
``linear``         on a vector: ``Affine`` (``Linear`` without bias); on tokens [N, C] ->
                   extension ``SVFTokenLinear`` (NIR's Affine is 1-D only)
``neuron``         ``LIF`` with dt = 1e-4, tau = dt/k, r = 1 (``decay_input``; else r = 1/k),
                   v_leak = v_reset, v_threshold = nextafter(float32(V_th), -inf) (peers fire on
                   ``>``, SpikingJelly on ``>=``; targets.md §6)
``add``            ``Scale`` with scale 1 receiving both inputs (NIR sums fan-in edges)
``flatten``        ``Flatten`` (start_dim 0)
``affine``         extension ``SVFChannelAffine`` (per-step scale/bias left by TDBN)
``batchnorm``      extension ``SVFBatchNorm`` (unfolded graphs only)
``split_heads`` …  extensions ``SVFSplitHeads``, ``SVFMergeHeads``, ``SVFToTokens``, ``SVFToImage``
``spike_matmul_*`` extensions ``SVFSpikeMatmulKV`` (Kᵀ·V), ``SVFSpikeMatmulQKV`` (s·Q·KV)
``concat``         extension ``SVFConcat``
``conv3d``         extension ``SVFConv3dHead`` (grouped Conv3d over all T steps, once per clip)
``output``         ``Output``
=================  ==========================================================================

Every node carries ``metadata["svformer"]``: a JSON string with the IR name, op, attributes, input
order (ports), origin and output spec, so :func:`nir_to_ir` rebuilds the IR graph exactly (arrays
keep their dtypes); the graph's metadata holds ``dt`` and the IR graph attributes. NIR node names
are the IR names with ``.``/``+`` replaced (torch module names cannot contain dots). Plain
``nir.read`` refuses the extension types; :func:`read_nir` knows them without touching nir's
private registry.

``nir/part_<i>.nir`` (:func:`write_nir_part`): one sequential part of :mod:`.partition` with only
standard nodes (``Input`` -> [``Conv2d`` -> ``LIF``] x L -> ``Output``), float32, grouped
convolutions written dense with zero off-group weights, readable by plain ``nir.read`` and
runnable in SpikingJelly (``nir_exchange.import_from_nir``), snnTorch and Norse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import h5py
import networkx as nx
import nir
import numpy as np
from nir.serialization import hdf2dict
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.fileio import write_buffered_atomic

from .. import ir
from .partition import Part, dense_groups, layer_stride_padding, layer_weights

DT = 1e-4  # seconds per step written for peers (snnTorch assumes 1e-4 whatever the file says)
FORMAT = "svformer-deploy/nir"
VERSION = 1


class NIRFileError(SVFormerError):
    """A NIR file that cannot be read (not HDF5, not NIR, unknown node type, missing metadata)."""


# ---------------------------------------------------------------------------------------------
# extension nodes
# ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Extension(nir.NIRNode):
    """Base of the extension nodes: ``input_shape`` (per step, no batch axis), ``output_shape``.

    Two-input nodes also have ``input2_shape`` (port 1). Optional arrays that are absent are left
    out of the file (HDF5 has no None).
    """

    optional: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.input_type = {"input": np.asarray(self.input_shape)}
        if getattr(self, "input2_shape", None) is not None:
            self.input_type["input2"] = np.asarray(self.input2_shape)
        self.output_type = {"output": np.asarray(self.output_shape)}

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, kwargs: dict[str, Any]) -> nir.NIRNode:
        kwargs = dict(kwargs)
        for name in cls.optional:
            kwargs.setdefault(name, None)
        return super().from_dict(kwargs)


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
    optional: ClassVar[tuple[str, ...]] = ("scale", "bias")


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
    optional: ClassVar[tuple[str, ...]] = ("bias",)


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
    optional: ClassVar[tuple[str, ...]] = ("bias",)


EXTENSIONS: dict[str, type[_Extension]] = {
    cls.__name__: cls
    for cls in (SVFChannelAffine, SVFBatchNorm, SVFTokenLinear, SVFPositionalConv2d, SVFSplitHeads, SVFMergeHeads,
                SVFToTokens, SVFToImage, SVFSpikeMatmulKV, SVFSpikeMatmulQKV, SVFConcat, SVFConv3dHead)
}


# ---------------------------------------------------------------------------------------------
# neuron parameters for peers
# ---------------------------------------------------------------------------------------------
def peer_threshold(v_threshold: float) -> np.float32:
    """The float32 threshold that makes ``h > θ'`` (snnTorch, Norse, NIR) fire exactly when SpikingJelly's
    ``h >= V_th`` fires in float32: the next float32 below float32(V_th)."""
    return np.nextafter(np.float32(v_threshold), np.float32(-np.inf))


def peer_tau(k: float, dt: float = DT) -> np.float32:
    """float32 tau = dt/k, nudged by a few ulps until float32(float32(dt)·(1/tau)) == float32(k) when
    possible (Norse then reproduces the membrane bit for bit; targets.md §6)."""
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


def _meta(g: nx.DiGraph, n: str, arrays: list[str]) -> dict[str, str]:
    d = g.nodes[n]
    op = d["op"]
    doc = {"name": n, "op": op.op, "attrs": {k: ir.json_value(v, f"{n}.{k}") for k, v in op.attributes().items()},
           "arrays": arrays, "inputs": ir.inputs_of(g, n), "origin": list(d["origin"]), "stage": d["stage"],
           "shape": list(d["shape"]),
           "kind": d["kind"], "rate": d["rate"]}
    return {"svformer": json.dumps(doc)}


def _shape(g: nx.DiGraph, n: str) -> np.ndarray:
    return np.asarray(ir.spec(g, n).shape, dtype=np.int64)


@dataclass
class NirContext:
    """What an op's ``to_nir`` hook (:mod:`export.ir.ops`) gets: the ``nir`` module, the extension classes
    (``ext.SVFConcat``, ...), per-step shapes of input 0 / input 1 / the output, the node's metadata,
    ``dt`` and :func:`lif_node`."""

    in_shape: np.ndarray
    in2_shape: np.ndarray | None
    shape: np.ndarray
    meta: dict[str, str]
    dt: float
    nir: ClassVar[Any] = nir
    ext: ClassVar[Any] = SimpleNamespace(**EXTENSIONS)
    lif: ClassVar[Any] = staticmethod(lif_node)


def _node(g: nx.DiGraph, n: str, dt: float) -> nir.NIRNode:
    op = ir.op_of(g, n)
    ins = ir.inputs_of(g, n)
    shape = _shape(g, n)
    ctx = NirContext(in_shape=_shape(g, ins[0]) if ins else shape,
                     in2_shape=_shape(g, ins[1]) if len(ins) > 1 else None, shape=shape,
                     meta=_meta(g, n, list(op.arrays())), dt=dt)
    return op.to_nir(ctx)


def ir_to_nir(g: nx.DiGraph, dt: float = DT) -> nir.NIRGraph:
    """The whole IR graph as a NIR graph (standard nodes + extensions; not type-checked: tokens and
    heads do not fit NIR's 1-D Affine types)."""
    ir.validate(g)
    names = nir_names(g)
    nodes = {names[n]: _node(g, n, dt) for n in g.nodes}
    edges = [(names[s], names[t]) for s, t in g.edges]
    doc = {"format": FORMAT, "version": VERSION, "graph": ir.json_attributes(g.graph), "order": list(g.nodes),
           "extensions": sorted({type(v).__name__ for v in nodes.values() if isinstance(v, _Extension)})}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": float(dt), "svformer": json.dumps(doc)},
                        type_check=False)


def _write(graph: nir.NIRGraph, path: Path) -> Path:
    write_buffered_atomic(path, lambda buf: nir.write(buf, graph))  # HDF5 in memory: a full disk is an OSError
    return path


def write_nir(g: nx.DiGraph, path: str | Path, dt: float = DT) -> Path:
    """Write the whole graph to ``path`` (NIR HDF5 with extension nodes), atomically."""
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


def _build(name: str, d: dict[str, Any], path: Path) -> nir.NIRNode:
    t = _plain(d.get("type"))
    if t in EXTENSIONS:
        cls = EXTENSIONS[t]
        known = {f.name for f in fields(cls) if f.init}
        unknown = set(d) - known - {"type"}
        if unknown:
            raise NIRFileError(f"{path}: node {name!r} ({t}) has unknown fields {sorted(unknown)}")
        kwargs = {k: v for k, v in d.items() if k != "type"}
        for k in ("axis", "part", "parts", "heads", "head_dim", "height", "width", "groups"):
            if k in kwargs:
                kwargs[k] = int(kwargs[k])
        for k in ("eps", "scale") if t != "SVFChannelAffine" else ("eps",):
            if k in kwargs and np.ndim(kwargs[k]) == 0:
                kwargs[k] = float(kwargs[k])
        return cls.from_dict({"type": t, **kwargs})
    if t == "NIRGraph":
        raise NIRFileError(f"{path}: node {name!r} is a nested NIR graph, which this reader does not take")
    try:
        return nir.dict2NIRNode(dict(d))
    except AssertionError:
        raise NIRFileError(f"{path}: node {name!r} has an unknown NIR type {t!r}") from None


def read_nir(path: str | Path) -> nir.NIRGraph:
    """Read a NIR file written by :func:`write_nir` or any plain NIR file, knowing the extension nodes.

    Not type-checked (the extension shapes are per token/head). Raises :class:`NIRFileError` naming
    the file for anything unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise NIRFileError(f"{path}: no such NIR file")
    try:
        with h5py.File(path, "r") as f:
            if "node" not in f:
                raise NIRFileError(f"{path}: not a NIR file (no 'node' group)")
            d = hdf2dict(f["node"])
    except NIRFileError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise NIRFileError(f"{path}: not a readable NIR (HDF5) file ({e})") from None
    if _plain(d.get("type")) != "NIRGraph" or "nodes" not in d or "edges" not in d:
        raise NIRFileError(f"{path}: the top node is not a NIR graph")
    try:
        nodes = {k: _build(k, v, path) for k, v in d["nodes"].items()}
        edges = [(_plain(a), _plain(b)) for a, b in np.asarray(d["edges"]).reshape(-1, 2).tolist()]
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(d.get("metadata", {})), type_check=False)
    except NIRFileError:
        raise
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        raise NIRFileError(f"{path}: malformed NIR graph ({type(e).__name__}: {e})") from None


def _json_meta(md: dict, what: str) -> dict:
    raw = _plain(md.get("svformer")) if isinstance(md, dict) else None
    if raw is None:
        raise NIRFileError(f"{what} has no svformer metadata (not written by svformer-deploy)")
    try:
        return json.loads(raw)
    except (TypeError, json.JSONDecodeError) as e:
        raise NIRFileError(f"{what}: unreadable svformer metadata ({e})") from None


def nir_to_ir(graph: nir.NIRGraph, source: str = "NIR graph") -> nx.DiGraph:
    """Rebuild the IR graph from a NIR graph written by :func:`write_nir` (exact: structure, attributes,
    arrays and their dtypes); validated like any IR file."""
    gdoc = _json_meta(graph.metadata, source)
    if gdoc.get("format") != FORMAT:
        raise NIRFileError(f"{source}: not an svformer-deploy NIR graph")
    by_ir: dict[str, tuple[str, dict]] = {}
    for nname, node in graph.nodes.items():
        meta = _json_meta(node.metadata, f"{source}: node {nname!r}")
        by_ir[meta["name"]] = (nname, meta)
    order = gdoc["order"]
    if sorted(order) != sorted(by_ir):
        raise NIRFileError(f"{source}: its nodes do not match the recorded IR node list")
    arrays: dict[str, np.ndarray] = {}
    docs, edges = [], []
    for i, name in enumerate(order):
        nname, meta = by_ir[name]
        node = graph.nodes[nname]
        entry = {"name": name, "op": meta["op"], "attrs": meta["attrs"], "arrays": {}, "origin": meta["origin"],
                 "shape": meta["shape"], "kind": meta["kind"], "rate": meta["rate"]}
        if "stage" in meta:
            entry["stage"] = meta["stage"]
        for field in meta["arrays"]:
            value = getattr(node, field, None)
            if not isinstance(value, np.ndarray):
                raise NIRFileError(f"{source}: node {nname!r} lacks its array {field!r}")
            arrays[f"{i}.{field}"] = value
            entry["arrays"][field] = f"{i}.{field}"
        docs.append(entry)
        for port, src in enumerate(meta["inputs"]):
            edges.append({"src": src, "dst": name, "port": port, "shape": by_ir[src][1]["shape"],
                          "kind": by_ir[src][1]["kind"], "rate": by_ir[src][1]["rate"]})
    nir_edges = {(a, b) for a, b in graph.edges}
    want = {(by_ir[e["src"]][0], by_ir[e["dst"]][0]) for e in edges}
    if nir_edges != want:
        raise NIRFileError(f"{source}: its edges do not match the recorded inputs of the nodes")
    try:
        return ir.from_json_and_arrays({"graph": gdoc["graph"], "nodes": docs, "edges": edges}, arrays)
    except ir.IRError as e:
        raise NIRFileError(f"{source}: {e}") from None


def read_nir_ir(path: str | Path) -> nx.DiGraph:
    """:func:`read_nir` then :func:`nir_to_ir`."""
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
