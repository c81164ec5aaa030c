"""The export bundle: one directory (``<name>.svfd/``) holding everything ``export`` produced.

Layout (file roles in ``manifest.json["files"]``)::

    model.svfd/
      manifest.json          role "manifest": everything below, plus fidelity results
      ir.json + ir.npz       role "ir": the float graph after the passes (what ``simulate`` runs)
      ir_int.json + .npz     role "ir_quantized" (only with --quantize): the quantized graph
      model.nir              role "nir"
      model.onnx             role "onnx": float64 (float export) or fake-quantized (--quantize)
      model_fp32.onnx        role "onnx_fp32" (float export only): the float graph in float32
      netx/part_<i>.h5       role "netx" (list): Lava-DL netx blocks

``manifest.json``::

    {"format": "svformer-deploy/bundle", "version": 1, "created": ISO-8601 UTC,
     "versions": {...}, "source": {"path": ..., "sha256": ...},
     "arch": "base", "config": {...}, "class_names": [...], "preprocessing": {...},
     "input": {"layout": "TCHW", "shape": [T, C, H, W], "encoding": "pixels" | "events"},
     "passes": ["fold_bn", ...], "quantization": null | {"bits": 8, ...},
     "model_hash": sha256 of the "ir" files (run records use it to tell models apart),
     "files": {role: {"path": relative path, "sha256": ..., "bytes": n} | [ ... ]},
     "partition": {...}, "fidelity": {...}}

Bundles are built in a temporary sibling directory and renamed into place only when complete
(:class:`BundleWriter`), so an interrupted export leaves no partial bundle.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.fileio import atomic_directory

from . import ir

FORMAT = "svformer-deploy/bundle"
VERSION = 1
SUFFIX = ".svfd"
MANIFEST = "manifest.json"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_bundle_path(checkpoint: str | Path) -> Path:
    """``model.pt`` -> ``model.svfd`` beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + SUFFIX)


@dataclass
class Bundle:
    """A loaded bundle: its manifest and (lazily) its graphs."""

    path: Path
    manifest: dict[str, Any]
    _graphs: dict[str, nx.DiGraph] = field(default_factory=dict, repr=False)

    def file(self, role: str) -> Path:
        entry = self.manifest["files"].get(role)
        if entry is None:
            raise SVFormerError(f"{self.path}: the bundle has no {role!r} file (exported without it?)")
        if isinstance(entry, list):
            raise SVFormerError(f"{self.path}: role {role!r} holds several files")
        return self.path / entry["path"]

    def has(self, role: str) -> bool:
        return role in self.manifest.get("files", {})

    def graph(self, role: str = "ir") -> nx.DiGraph:
        """The IR graph of ``role`` ("ir" float, "ir_quantized" integer), read and validated."""
        if role not in self._graphs:
            self._graphs[role] = ir.load(self.file(role))
        return self._graphs[role]

    @property
    def model_hash(self) -> str:
        return str(self.manifest["model_hash"])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.get("class_names") or [])


def load_bundle(path: str | Path) -> Bundle:
    """Open a bundle directory; one-line errors for anything that is not a complete bundle."""
    path = Path(path)
    if not path.exists():
        raise SVFormerError(f"{path}: no such export bundle")
    if not path.is_dir():
        raise SVFormerError(f"{path}: not an export bundle (expected a {SUFFIX} directory)")
    mpath = path / MANIFEST
    if not mpath.exists():
        raise SVFormerError(f"{path}: not an export bundle (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SVFormerError(f"{mpath}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SVFormerError(f"{mpath}: not an svformer-deploy bundle manifest")
    if manifest.get("version") != VERSION:
        raise SVFormerError(f"{mpath}: bundle version {manifest.get('version')!r} is not supported ({VERSION})")
    for key in ("files", "model_hash", "config", "input"):
        if key not in manifest:
            raise SVFormerError(f"{mpath}: manifest lacks {key!r}")
    return Bundle(path, manifest)


def find_latest_bundle(directory: str | Path = ".") -> Path:
    """The most recently written bundle in ``directory`` (the contract's default for ``simulate``)."""
    directory = Path(directory)
    found = [p for p in directory.glob(f"*{SUFFIX}") if (p / MANIFEST).is_file()]
    if not found:
        raise SVFormerError(
            f"no export bundle (*{SUFFIX}) in {directory.resolve()}; run `svformer-deploy export MODEL.pt` "
            "first or pass --model DIR"
        )
    found.sort(key=lambda p: (p / MANIFEST).stat().st_mtime, reverse=True)
    if len(found) > 1 and (found[0] / MANIFEST).stat().st_mtime == (found[1] / MANIFEST).stat().st_mtime:
        raise SVFormerError(
            f"several bundles are equally recent ({found[0].name}, {found[1].name}); choose one with --model DIR"
        )
    return found[0]


class BundleWriter:
    """Collects a bundle's files in a temporary directory; the bundle appears only on success.

    >>> with BundleWriter(out_dir, force=False) as w:
    ...     w.add_graph("ir", graph, "ir.json")
    ...     w.add_file("onnx", "model.onnx", lambda p: write_onnx(p))
    ...     w.manifest.update(...)          # arch, config, class_names, input, fidelity...
    """

    def __init__(self, path: str | Path, force: bool = False):
        self.path = Path(path)
        self.force = force
        self.manifest: dict[str, Any] = {"format": FORMAT, "version": VERSION, "files": {}}
        self._ctx = None
        self.tmp: Path | None = None

    def __enter__(self) -> BundleWriter:
        if self.path.exists() and not self.force:
            raise SVFormerError(f"{self.path}: already exists; use --force to replace it or -o DIR")
        if self.path.exists() and not self.path.is_dir():
            raise SVFormerError(f"{self.path}: exists and is not a directory")
        try:
            self._ctx = atomic_directory(self.path, force=self.force)
            self.tmp = self._ctx.__enter__()
        except PermissionError:
            raise SVFormerError(f"{self.path.parent}: output folder is not writable") from None
        return self

    def _record(self, role: str, rel: str, many: bool = False) -> Path:
        p = self.tmp / rel
        entry = {"path": rel, "sha256": sha256_file(p), "bytes": p.stat().st_size}
        if many:
            self.manifest["files"].setdefault(role, []).append(entry)
        else:
            self.manifest["files"][role] = entry
        return p

    def add_file(self, role: str, rel: str, write, many: bool = False) -> Path:
        """Call ``write(path)`` to create ``rel`` inside the bundle and record it under ``role``."""
        target = self.tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        write(target)
        return self._record(role, rel, many)

    def add_graph(self, role: str, graph: nx.DiGraph, rel: str = "ir.json") -> Path:
        """Save an IR graph (JSON + npz) under ``role``; the "ir" role also sets ``model_hash``."""
        jpath, npath = ir.save(graph, self.tmp / rel)
        self._record(role, jpath.name)
        self._record(f"{role}_arrays", npath.name)
        if role == "ir":
            h = hashlib.sha256()
            h.update(bytes.fromhex(sha256_file(jpath)))
            h.update(bytes.fromhex(sha256_file(npath)))
            self.manifest["model_hash"] = h.hexdigest()
        return jpath

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.manifest.setdefault("created", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                (self.tmp / MANIFEST).write_text(json.dumps(self.manifest, indent=2) + "\n")
            except BaseException as e:  # e.g. disk full or a value JSON cannot take: drop the temporary bundle
                self._ctx.__exit__(type(e), e, e.__traceback__)
                raise
        try:
            return bool(self._ctx.__exit__(exc_type, exc, tb))
        except FileExistsError:
            raise SVFormerError(f"{self.path}: already exists; use --force to replace it") from None
