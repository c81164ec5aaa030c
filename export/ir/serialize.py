"""IR files: ``<name>.json`` (structure) plus ``<name>.npz`` (arrays); no pickle anywhere."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from svformer_deploy.svformer.fileio import atomic_path

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
        doc["arrays_sha256"] = _sha256(tmp)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path, npz


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(path: str | Path) -> nx.DiGraph:
    """Read a graph written by :func:`save`; any malformed content raises :class:`IRError` naming the file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IRError(f"{path}: no such IR file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IRError(f"{path}: not a readable IR JSON file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise IRError(f"{path}: not an svformer-deploy IR file (format {fmt!r})")
    if doc.get("ir_version") != IR_VERSION:
        raise IRError(f"{path}: IR version {doc.get('ir_version')!r} is not supported (this build reads {IR_VERSION})")
    npz = path.with_name(str(doc.get("arrays_file", npz_path_for(path).name)))
    if not npz.is_file():
        raise IRError(f"{path}: its array file {npz.name} is missing")
    if doc.get("arrays_sha256") and _sha256(npz) != doc["arrays_sha256"]:
        raise IRError(f"{path}: array file {npz.name} does not match (SHA-256 differs)")
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise IRError(f"{npz}: unreadable array file ({e})") from None
    try:
        return from_json_and_arrays(doc, arrays)
    except IRError as e:
        raise IRError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise IRError(f"{path}: malformed IR ({type(e).__name__}: {e})") from None


def from_json_and_arrays(doc: dict, arrays: dict[str, np.ndarray]) -> nx.DiGraph:
    g = nx.DiGraph()
    g.graph.update(doc["graph"])
    for entry in doc["nodes"]:
        name = entry["name"]
        cls = NODE_TYPES.get(entry["op"])
        if cls is None:
            raise IRError(f"node {name!r}: unknown op {entry['op']!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for k, v in entry["attrs"].items():
            if k not in fields:
                raise IRError(f"node {name!r}: unknown attribute {k!r} for {entry['op']}")
            kwargs[k] = tuple(v) if isinstance(v, list) else v
        for k, key in entry["arrays"].items():
            if k not in fields:
                raise IRError(f"node {name!r}: unknown array {k!r} for {entry['op']}")
            if key not in arrays:
                raise IRError(f"node {name!r}: array {key!r} ({k}) is missing from the npz file")
            kwargs[k] = arrays[key]
        try:
            op = cls(**kwargs)
        except TypeError as e:
            raise IRError(f"node {name!r}: {e}") from None
        stage = entry["stage"] if "stage" in entry else legacy_stage(list(entry["origin"]))
        if not isinstance(stage, str):
            raise IRError(f"node {name!r}: stage must be a string")
        attrs = {"op": op, "shape": tuple(entry["shape"]), "kind": entry["kind"], "rate": entry["rate"],
                 "origin": list(entry["origin"]), "stage": stage}
        if "quant" in entry:
            q = {}
            for k, key in entry["quant"].items():
                if key not in arrays:
                    raise IRError(f"node {name!r}: quant array {key!r} is missing from the npz file")
                q[k] = arrays[key]
            attrs["quant"] = q
        if name in g:
            raise IRError(f"duplicate node name {name!r}")
        g.add_node(name, **attrs)
    for e in doc["edges"]:
        if e["src"] not in g or e["dst"] not in g:
            raise IRError(f"edge {e['src']} -> {e['dst']} names an unknown node")
        g.add_edge(e["src"], e["dst"], port=int(e["port"]), shape=tuple(e["shape"]), kind=e["kind"], rate=e["rate"])
    return validate(g)
