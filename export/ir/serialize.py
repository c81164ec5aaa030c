"""IR files: ``<name>.json`` (structure) plus ``<name>.npz`` (arrays); no pickle anywhere."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from svformer_deploy.svformer.checks import is_int, short
from svformer_deploy.svformer.fileio import atomic_path, file_sha256, sha256_file

from .graph import legacy_stage
from .ops import NODE_TYPES
from .tensor import FORMAT, IR_VERSION, IRError
from .validate import validate


def json_value(v: Any, where: str) -> Any:
    if isinstance(v, bool | str | type(None)):
        return v
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        f = float(v)
        if not math.isfinite(f):
            raise IRError(f"{where}: non-finite value {f} cannot be written")
        return f
    if isinstance(v, list | tuple):
        return [json_value(x, where) for x in v]
    raise IRError(f"{where}: value of type {type(v).__name__} is not serialisable")


def to_json_and_arrays(g: nx.DiGraph) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON document and the arrays (npz keys ``<node index>.<field>`` / ``<i>.quant.<key>``)."""
    validate(g)
    arrays: dict[str, np.ndarray] = {}
    nodes = []
    index = {n: i for i, n in enumerate(g.nodes)}
    for n, d in g.nodes(data=True):
        i = index[n]
        op = d["op"]
        entry = {
            "name": n, "op": op.op,
            "attrs": {k: json_value(v, f"{n}.{k}") for k, v in op.attributes().items()},
            "arrays": {}, "origin": list(d["origin"]), "stage": d["stage"],
            "shape": list(d["shape"]), "kind": d["kind"], "rate": d["rate"],
        }
        for k, arr in op.arrays().items():
            key = f"{i}.{k}"
            arrays[key] = np.asarray(arr, order="C")
            entry["arrays"][k] = key
        if "quant" in d:
            entry["quant"] = {}
            for k, arr in d["quant"].items():
                key = f"{i}.quant.{k}"
                arrays[key] = np.asarray(arr, order="C")
                entry["quant"][k] = key
        nodes.append(entry)
    edges = [{"src": s, "dst": t, "port": e["port"], "shape": list(e["shape"]), "kind": e["kind"], "rate": e["rate"]}
             for s, t, e in g.edges(data=True)]
    doc = {"format": FORMAT, "ir_version": IR_VERSION, "graph": json_attributes(g.graph),
           "nodes": nodes, "edges": edges}
    return doc, arrays


def json_attributes(d: dict) -> dict:
    try:
        return json.loads(json.dumps(d, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise IRError(f"graph attributes are not JSON-serialisable: {e}") from None


def npz_path_for(json_path: str | Path) -> Path:
    p = Path(json_path)
    return p.with_suffix(".npz") if p.suffix == ".json" else p.with_name(p.name + ".npz")


def save(g: nx.DiGraph, path: str | Path) -> tuple[Path, Path]:
    """Write ``g`` to ``path`` (JSON) and the sibling ``.npz``; both atomically. Returns both paths."""
    path = Path(path)
    doc, arrays = to_json_and_arrays(g)
    npz = npz_path_for(path)
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        doc["arrays_file"] = npz.name
        doc["arrays_sha256"] = sha256_file(tmp)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return path, npz


# --------------------------------------------------------------------------------------------
# loading: every file is untrusted input, checked before anything is allocated from it
# --------------------------------------------------------------------------------------------
MAX_JSON_BYTES = 64 << 20
"""Largest IR JSON (or bundle manifest) read; SVFormer-base's is 74 kB."""
MAX_ARRAYS_BYTES = 4 << 30
"""Largest npz read (SVFormer-base: 63.5 MB float, 176 MB quantized)."""
MAX_TIME_STEPS = 1024
MAX_TENSOR_ELEMENTS = 1 << 26
"""Largest per-step tensor of a node (SVFormer-base at 224²: 0.8 M); bounds what the simulators allocate."""
MAX_ABS_VALUE = 1e30
"""Largest magnitude of a float array entry or float attribute (float32 holds 3.4e38)."""
MAX_INT = 1 << 31
_REAL_KINDS = "biuf"  # bool, signed, unsigned, float: no complex, object, string, void or datetime arrays
_KINDS = ("spike", "real")
_RATES = ("step", "clip")
_SHA256 = frozenset("0123456789abcdef")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} (strict JSON has no NaN or Infinity)")


def strict_json_loads(data: bytes | str, where: str, what: str = "JSON file") -> Any:
    """Parse strict JSON (no NaN/Infinity, no number that overflows to inf); one-line IRError otherwise."""
    try:
        doc = json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise IRError(f"{where}: not a readable {what} (nested too deeply)") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise IRError(f"{where}: not a readable {what} ({' '.join(str(e).split())})") from None
    _check_finite_json(doc, where)
    return doc


def _check_finite_json(v: Any, where: str) -> None:
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, float) and not math.isfinite(x):
            raise IRError(f"{where}: number out of range ({x}; JSON numbers must be finite)")
        if isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())


def is_sha256(v: Any) -> bool:
    """True for a lower-case hex SHA-256 digest."""
    return isinstance(v, str) and len(v) == 64 and set(v) <= _SHA256



def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise IRError(msg)


def _check_shape(v: Any, what: str, min_size: int = 0) -> tuple[int, ...]:
    _need(isinstance(v, list) and len(v) <= 8 and all(is_int(s) and min_size <= s < MAX_INT for s in v),
          f"{what} must be a list of at most 8 integers >= {min_size}, got {short(v)}")
    n = 1
    for s in v:
        n *= s
    _need(n <= MAX_TENSOR_ELEMENTS, f"{what} {v} has {n} elements per step, above the limit {MAX_TENSOR_ELEMENTS}")
    return tuple(v)



# attribute name -> smallest allowed value (ints); other ints only need |v| < 2**31
_INT_MIN = {"stride": 1, "padding": 0, "groups": 1, "parts": 1, "heads": 1, "head_dim": 1, "part": 0,
            "height": 1, "width": 1}


def _attr_value(cls: type, name: str, annotation: str, v: Any, where: str) -> Any:
    """Type-check one JSON attribute against the op field's annotation; returns the constructor value."""
    what = f"{where}: attribute {name!r}"
    if annotation.startswith("tuple[int, int]"):  # stride, padding: an int or a pair
        items = [v] if is_int(v) else v
        _need(isinstance(items, list) and len(items) == (1 if is_int(v) else 2) and all(map(is_int, items)),
              f"{what} must be an integer or a pair of integers, got {short(v)}")
        lo = _INT_MIN.get(name, -MAX_INT)
        _need(all(lo <= i <= 1 << 16 for i in items), f"{what} {v} is out of range ({lo}..65536)")
        return v if is_int(v) else tuple(v)
    if annotation == "Shape":
        return _check_shape(v, what, 1)
    optional = annotation.endswith("| None")
    if v is None:
        _need(optional, f"{what} must not be null")
        return None
    base = annotation.split("|")[0].strip()
    if base == "int":
        _need(is_int(v) and _INT_MIN.get(name, -MAX_INT) <= v < MAX_INT,
              f"{what} must be an integer >= {_INT_MIN.get(name, -MAX_INT)}, got {short(v)}")
    elif base == "float":
        _need(_is_number(v) and abs(v) <= MAX_ABS_VALUE, f"{what} must be a finite number, got {short(v)}")
        return float(v)
    elif base == "bool":
        _need(isinstance(v, bool), f"{what} must be true or false, got {short(v)}")
    elif base == "str":
        _need(isinstance(v, str) and len(v) <= 64, f"{what} must be a short string, got {short(v)}")
    else:
        raise IRError(f"{what} is an array field and belongs under \"arrays\"")
    return v


def _check_array(arr: np.ndarray, where: str) -> np.ndarray:
    _need(arr.dtype.kind in _REAL_KINDS, f"{where}: dtype {arr.dtype} is not a real number type")
    if arr.dtype.kind == "f" and arr.size:
        _need(bool(np.isfinite(arr).all()), f"{where}: holds NaN or infinite values")
        _need(float(np.abs(arr).max()) <= MAX_ABS_VALUE, f"{where}: holds values beyond {MAX_ABS_VALUE:g}")
    return arr


def _check_doc(doc: Any) -> None:
    """Types of every JSON field the loader reads (values and shapes are checked while building)."""
    _need(isinstance(doc, dict), "the document is not a JSON object")
    graph = doc.get("graph")
    _need(isinstance(graph, dict), "\"graph\" must be an object")
    T = graph.get("time_steps")
    _need(is_int(T) and 1 <= T <= MAX_TIME_STEPS, f"graph time_steps must be an integer in 1..{MAX_TIME_STEPS}, "
          f"got {short(T)}")
    _need(graph.get("ir_version") == IR_VERSION, f"graph ir_version must be {IR_VERSION}")
    passes = graph.get("passes", [])
    _need(isinstance(passes, list) and all(isinstance(p, str) for p in passes), "graph passes must be a list of names")
    for key in ("config", "quant"):
        _need(graph.get(key) is None or isinstance(graph[key], dict), f"graph {key} must be an object")
    nodes, edges = doc.get("nodes"), doc.get("edges")
    _need(isinstance(nodes, list) and nodes, "\"nodes\" must be a non-empty list")
    _need(isinstance(edges, list), "\"edges\" must be a list")
    for i, e in enumerate(nodes):
        _need(isinstance(e, dict), f"node #{i} is not an object")
        name = e.get("name")
        _need(isinstance(name, str) and 0 < len(name) <= 256, f"node #{i}: name must be a non-empty string")
        _need(isinstance(e.get("op"), str), f"node {name!r}: op must be a string")
        _need(isinstance(e.get("attrs"), dict), f"node {name!r}: attrs must be an object")
        for key in ("arrays", "quant"):
            m = e.get(key, {})
            _need(isinstance(m, dict) and all(isinstance(v, str) and v for v in m.values()),
                  f"node {name!r}: {key} must map names to npz keys")
        origin = e.get("origin", [])
        _need(isinstance(origin, list) and all(isinstance(o, str) for o in origin),
              f"node {name!r}: origin must be a list of strings")
        _need(isinstance(e.get("stage", ""), str), f"node {name!r}: stage must be a string")
        _check_shape(e.get("shape"), f"node {name!r}: shape")
        _need(e.get("kind") in _KINDS and e.get("rate") in _RATES,
              f"node {name!r}: kind must be one of {_KINDS} and rate one of {_RATES}")
    for i, e in enumerate(edges):
        _need(isinstance(e, dict) and isinstance(e.get("src"), str) and isinstance(e.get("dst"), str),
              f"edge #{i} must be an object with src and dst names")
        _need(is_int(e.get("port")) and 0 <= e["port"] <= 1, f"edge #{i}: port must be 0 or 1")
        _check_shape(e.get("shape"), f"edge #{i}: shape")
        _need(e.get("kind") in _KINDS and e.get("rate") in _RATES, f"edge #{i}: bad kind or rate")


def _read_limited(path: Path, limit: int, what: str) -> tuple[bytes, str]:
    """The bytes and SHA-256 of ``path`` (a regular file of at most ``limit`` bytes)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise IRError(f"{path}: no such {what}") from None
    except OSError as e:
        raise IRError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if not path.is_file():
        raise IRError(f"{path}: the {what} is not a regular file")
    if st.st_size > limit:
        raise IRError(f"{path}: the {what} is {st.st_size} bytes, above the limit of {limit}")
    try:
        digest, data = file_sha256(path, keep=True)
    except OSError as e:
        raise IRError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    return data or b"", digest


def read_npz(data: bytes, where: str) -> dict[str, np.ndarray]:
    """The arrays of an npz held in memory; every member's header is checked before its data is read.

    Members must be plain ``.npy`` arrays of real numbers whose declared shape fits the stored bytes,
    so a crafted header cannot make numpy allocate more than the file holds.
    """
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            total = 0
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    raise IRError(f"{where}: member {info.filename!r} is not a .npy array")
                total += info.file_size
                if total > MAX_ARRAYS_BYTES:
                    raise IRError(f"{where}: arrays add up to more than {MAX_ARRAYS_BYTES} bytes")
                key = info.filename[:-4]
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version in ((2, 0), (3, 0)):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                    else:
                        raise IRError(f"{where}: array {key!r} has an unsupported .npy version {version}")
                    if dtype.kind not in _REAL_KINDS or dtype.hasobject:
                        raise IRError(f"{where}: array {key!r} has dtype {dtype}, not a real number type")
                    count = math.prod(shape)
                    if count * dtype.itemsize != info.file_size - f.tell():
                        raise IRError(f"{where}: array {key!r}: its header ({list(shape)} {dtype}) does not "
                                      "match the stored bytes")
                    arr = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
                    arrays[key] = arr.reshape(shape, order="F" if fortran else "C").copy()
    except IRError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, NotImplementedError) as e:
        raise IRError(f"{where}: unreadable array file ({' '.join(str(e).split())})") from None
    return arrays


def load(path: str | Path, *, json_data: bytes | None = None, arrays_path: str | Path | None = None,
         arrays_data: bytes | None = None, arrays_sha256: str | None = None) -> nx.DiGraph:
    """Read a graph written by :func:`save`; any malformed content raises :class:`IRError` naming the file.

    A bundle passes the bytes it has already read and verified against its manifest (``json_data``,
    ``arrays_path``/``arrays_data`` with their ``arrays_sha256``) so that nothing is read or hashed twice.
    """
    path = Path(path)
    if json_data is None:
        json_data, _ = _read_limited(path, MAX_JSON_BYTES, "IR file")
    doc = strict_json_loads(json_data, str(path), "IR JSON file")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise IRError(f"{path}: not an svformer-deploy IR file (format {short(fmt)})")
    if doc.get("ir_version") != IR_VERSION:
        raise IRError(f"{path}: IR version {short(doc.get('ir_version'))} is not supported "
                      f"(this build reads {IR_VERSION})")
    name = doc.get("arrays_file", npz_path_for(path).name)
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise IRError(f"{path}: arrays_file must be the plain name of a file beside it, got {short(name)}")
    recorded = doc.get("arrays_sha256")
    if recorded is not None and not is_sha256(recorded):
        raise IRError(f"{path}: arrays_sha256 is not a SHA-256 digest")
    if arrays_data is None:
        npz = path.with_name(name)
        if not npz.exists():
            raise IRError(f"{path}: its array file {name} is missing")
        arrays_data, arrays_sha256 = _read_limited(npz, MAX_ARRAYS_BYTES, "array file")
    else:
        npz = Path(arrays_path) if arrays_path is not None else path.with_name(name)
        if npz.name != name:
            raise IRError(f"{path}: names its array file {name!r} but the bundle lists {npz.name!r}")
    if recorded is not None and arrays_sha256 != recorded:
        raise IRError(f"{path}: array file {npz.name} does not match (SHA-256 differs)")
    arrays = read_npz(arrays_data, str(npz))
    try:
        return from_json_and_arrays(doc, arrays)
    except IRError as e:
        raise IRError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, ZeroDivisionError) as e:
        raise IRError(f"{path}: malformed IR ({type(e).__name__}: {e})") from None


def _per_step_arrays(op: Any, name: str, T: int) -> None:
    """Arrays indexed by time step must have T rows: [T, C] BN/affine parameters, the head's T axis."""
    if op.op in ("batchnorm", "affine"):
        for k, arr in op.arrays().items():
            if arr.ndim == 2 and arr.shape[0] != T:
                raise IRError(f"node {name!r}: {k} has {arr.shape[0]} time steps ({list(arr.shape)}), the graph T={T}")
    if op.op == "conv3d" and op.weight is not None and op.weight.ndim == 5:
        _need(op.weight.shape[2] == T, f"node {name!r}: weight covers {op.weight.shape[2]} time steps "
              f"({list(op.weight.shape)}), the graph T={T}")
    if op.op == "neuron":
        try:
            k = op.k
        except (OverflowError, ZeroDivisionError, TypeError):
            k = math.nan
        _need(math.isfinite(k) and k > 0, f"node {name!r}: neuron leak factor out of range")


# integer quant parameters the fixed-point executor reads as scalars: allowed range
_QUANT_SCALARS = {"bits": (1, 32), "acc_bits": (1, 64), "decay": (0, 4096)}
_QUANT_INTS = ("weight", "bias", "m", "shift", "theta", *_QUANT_SCALARS)
# per op: quant keys that must be present (the executor reads them unconditionally)
_QUANT_REQUIRED = {"input": ("scale", "bits"), "conv2d": ("weight", "acc_bits"), "linear": ("weight", "acc_bits"),
                   "conv3d": ("weight", "acc_bits"), "affine": ("m", "shift", "bits"), "neuron": ("decay", "theta"),
                   "add": ("bits",), "spike_matmul_q_kv": ("shift", "bits"), "output": ("scale",)}


def _check_quant(op: Any, name: str, q: dict[str, np.ndarray], shape: tuple[int, ...], T: int) -> None:
    """Dtypes, ranges and shapes of a node's fixed-point parameters (``docs/ir.md``, quantize)."""
    where = f"node {name!r}: quant"
    for k in _QUANT_REQUIRED.get(op.op, ()):
        _need(k in q, f"{where} lacks {k!r}")
    if "m" in q:
        _need("shift" in q and "bits" in q, f"{where}: m needs shift and bits")
    w = getattr(op, "weight", None)
    if isinstance(w, np.ndarray) and w.ndim:
        channels = w.shape[0]  # C_out of conv/linear/conv3d
    elif shape and op.op == "affine" and -len(shape) <= op.axis < len(shape):
        channels = shape[op.axis]
    else:
        channels = shape[0] if shape else 1
    for k, a in q.items():
        if k in _QUANT_INTS:
            _need(a.dtype.kind in "iu", f"{where} {k} must be integers, got {a.dtype}")
        if k in _QUANT_SCALARS:
            lo, hi = _QUANT_SCALARS[k]
            _need(a.ndim == 0 and lo <= int(a) <= hi, f"{where} {k} must be one integer in {lo}..{hi}")
        elif k == "shift":
            # quantize.multiplier: a right shift of up to 62, or a left shift of up to 16 (ratios up to 2^16)
            _need(a.size == 0 or (int(a.min()) >= -16 and int(a.max()) <= 62), f"{where} shift must be in -16..62")
        elif k in ("m", "theta") and a.dtype.kind in "iu":
            _need(a.size == 0 or int(np.abs(a.astype(np.float64)).max()) < 2**62, f"{where} {k} is out of range")
        if k == "weight":
            w = getattr(op, "weight", None)
            _need(w is not None and a.shape == w.shape, f"{where} weight shape {list(a.shape)} differs from the op's")
        elif k == "bias":
            b = getattr(op, "bias", None)
            _need(b is not None and a.shape == b.shape, f"{where} bias shape {list(a.shape)} differs from the op's")
        elif k in ("m", "shift", "out_scale", "weight_scale"):
            ok = a.ndim == 0 or a.shape == (channels,) or (op.op == "affine" and a.shape == (T, channels))
            _need(ok, f"{where} {k} shape {list(a.shape)} does not fit {channels} channels")
        elif k in ("theta", "scale", "in_scale"):
            try:
                fits = a.ndim <= len(shape) and np.broadcast_shapes(a.shape, shape) == tuple(shape)
            except ValueError:
                fits = False
            _need(fits or a.ndim == 0 or (k == "in_scale" and a.shape == (channels,)),
                  f"{where} {k} shape {list(a.shape)} does not fit the output {list(shape)}")


def from_json_and_arrays(doc: dict, arrays: dict[str, np.ndarray]) -> nx.DiGraph:
    """Build and validate the graph of an IR document; every field's type, every array's dtype, values
    (finite) and shape (by the op's own shape inference and the graph's T) are checked."""
    _check_doc(doc)
    T = doc["graph"]["time_steps"]
    g = nx.DiGraph()
    g.graph.update(doc["graph"])
    for entry in doc["nodes"]:
        name = entry["name"]
        cls = NODE_TYPES.get(entry["op"])
        if cls is None:
            raise IRError(f"node {name!r}: unknown op {short(entry['op'])}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for k, v in entry["attrs"].items():
            if k not in fields:
                raise IRError(f"node {name!r}: unknown attribute {short(k)} for {entry['op']}")
            kwargs[k] = _attr_value(cls, k, str(fields[k].type), v, f"node {name!r}")
        for k, key in entry.get("arrays", {}).items():
            if k not in fields or "np.ndarray" not in str(fields[k].type):
                raise IRError(f"node {name!r}: unknown array {short(k)} for {entry['op']}")
            if key not in arrays:
                raise IRError(f"node {name!r}: array {short(key)} ({k}) is missing from the npz file")
            kwargs[k] = _check_array(arrays[key], f"node {name!r}: array {k}")
        for k, f in fields.items():
            if str(f.type) == "np.ndarray" and kwargs.get(k) is None:
                raise IRError(f"node {name!r}: {entry['op']} needs the array {k!r}")
        try:
            op = cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise IRError(f"node {name!r}: {e}") from None
        _per_step_arrays(op, name, T)
        origin = list(entry.get("origin", []))
        stage = entry["stage"] if "stage" in entry else legacy_stage(origin)
        attrs = {"op": op, "shape": tuple(entry["shape"]), "kind": entry["kind"], "rate": entry["rate"],
                 "origin": origin, "stage": stage}
        if "quant" in entry:
            q = {}
            for k, key in entry["quant"].items():
                if key not in arrays:
                    raise IRError(f"node {name!r}: quant array {short(key)} is missing from the npz file")
                q[k] = _check_array(arrays[key], f"node {name!r}: quant array {k}")
            _check_quant(op, name, q, tuple(entry["shape"]), T)
            attrs["quant"] = q
        if name in g:
            raise IRError(f"duplicate node name {name!r}")
        g.add_node(name, **attrs)
    for e in doc["edges"]:
        if e["src"] not in g or e["dst"] not in g:
            raise IRError(f"edge {short(e['src'])} -> {short(e['dst'])} names an unknown node")
        if g.has_edge(e["src"], e["dst"]):
            raise IRError(f"edge {e['src']} -> {e['dst']} is listed twice")
        g.add_edge(e["src"], e["dst"], port=e["port"], shape=tuple(e["shape"]), kind=e["kind"], rate=e["rate"])
    return validate(g)
