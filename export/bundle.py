"""The export bundle: one directory (``<name>.svfd/``) holding everything ``export`` produced.

Layout (file roles in ``manifest.json["files"]``)::

    model.svfd/
      manifest.json          role "manifest": everything below, plus fidelity results
      ir.json + ir.npz       role "ir": the float graph after the passes (what ``simulate`` runs)
      ir_int.json + .npz     role "ir_quantized" (only with --quantize): the quantized graph
      model.nir              role "nir"
      model_step.onnx        role "onnx_step" (--onnx step, the default, or both): one time step, explicit state
      model.onnx             role "onnx" (--onnx unrolled/both): float64 (float export) or fake-quantized (--quantize)
      model_fp32.onnx        role "onnx_fp32" (--onnx unrolled/both, float export only): the float graph in float32
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
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import networkx as nx
from svformer_deploy.svformer.checkpoint import check_preprocessing
from svformer_deploy.svformer.checks import is_int, short
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.fileio import atomic_directory, file_sha256, sha256_file, sha256_hex_pair

from . import ir
from .ir.serialize import MAX_ARRAYS_BYTES, MAX_JSON_BYTES, is_sha256, strict_json_loads

__all__ = ["Bundle", "BundleWriter", "default_bundle_path", "find_latest_bundle", "load_bundle", "sha256_file",
           "MAX_FILE_BYTES", "MAX_CLASSES"]

FORMAT = "svformer-deploy/bundle"
VERSION = 1
SUFFIX = ".svfd"
MANIFEST = "manifest.json"
MAX_FILE_BYTES = 16 << 30
"""Largest file a manifest may list (bytes); IR files have their own, smaller limits."""
MAX_CLASSES = 1 << 20
_GRAPH_ROLES = {"ir": "ir_arrays", "ir_quantized": "ir_quantized_arrays"}


def default_bundle_path(checkpoint: str | Path) -> Path:
    """``model.pt`` -> ``model.svfd`` beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + SUFFIX)




def _check_entry(mpath: Path, role: str, entry: Any) -> None:
    where = f"{mpath}: files[{role!r}]"
    if not isinstance(entry, dict):
        raise SVFormerError(f"{where} must be an object with path, sha256 and bytes, got {short(entry)}")
    rel = entry.get("path")
    if not isinstance(rel, str) or not rel:
        raise SVFormerError(f"{where}: path must be a non-empty string, got {short(rel)}")
    parts = PurePosixPath(rel).parts
    if ("\\" in rel or "\0" in rel or rel.startswith("/") or PurePosixPath(rel).is_absolute()
            or any(p in ("..", ".") for p in rel.split("/")) or not parts):
        raise SVFormerError(f"{where}: path {short(rel)} must be relative and stay inside the bundle "
                            "(no absolute path, no '..')")
    if not is_sha256(entry.get("sha256")):
        raise SVFormerError(f"{where}: sha256 must be a hex SHA-256 digest, got {short(entry.get('sha256'))}")
    size = entry.get("bytes")
    if not is_int(size) or not 0 <= size <= MAX_FILE_BYTES:
        raise SVFormerError(f"{where}: bytes must be an integer in 0..{MAX_FILE_BYTES}, got {short(size)}")


def _check_manifest(mpath: Path, m: dict[str, Any]) -> None:
    """Types of every manifest field the tools read; file entries must stay inside the bundle."""
    files = m["files"]
    if not isinstance(files, dict):
        raise SVFormerError(f"{mpath}: files must be an object of role -> file entry, got {type(files).__name__}")
    for role, entry in files.items():
        if isinstance(entry, list):
            if not entry:
                raise SVFormerError(f"{mpath}: files[{role!r}] is an empty list")
            for e in entry:
                _check_entry(mpath, role, e)
        else:
            _check_entry(mpath, role, entry)
    for role, arrays in _GRAPH_ROLES.items():
        if role in files and (arrays not in files or isinstance(files[role], list) or isinstance(files[arrays], list)):
            raise SVFormerError(f"{mpath}: files[{role!r}] needs exactly one {arrays!r} entry beside it")
    if "ir" not in files:
        raise SVFormerError(f"{mpath}: the manifest lists no 'ir' graph")
    if not is_sha256(m["model_hash"]):
        raise SVFormerError(f"{mpath}: model_hash must be a hex SHA-256 digest, got {short(m['model_hash'])}")
    for key in ("config", "input"):
        if not isinstance(m[key], dict):
            raise SVFormerError(f"{mpath}: {key} must be an object, got {short(m[key])}")
    if m["input"].get("encoding", "pixels") not in ("pixels", "events"):
        raise SVFormerError(f"{mpath}: input encoding must be \"pixels\" or \"events\", "
                            f"got {short(m['input'].get('encoding'))}")
    names = m.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) <= MAX_CLASSES
                                  and all(isinstance(n, str) for n in names)):
        raise SVFormerError(f"{mpath}: class_names must be a list of strings")
    if m.get("preprocessing") is not None:
        check_preprocessing(str(mpath), m["preprocessing"])
    for key in ("arch", "created"):
        if m.get(key) is not None and not isinstance(m[key], str):
            raise SVFormerError(f"{mpath}: {key} must be a string, got {short(m[key])}")
    for key in ("source", "versions", "quantization", "partition", "fidelity"):
        if m.get(key) is not None and not isinstance(m[key], dict):
            raise SVFormerError(f"{mpath}: {key} must be an object, got {short(m[key])}")


@dataclass
class Bundle:
    """A loaded bundle: its manifest and (lazily) its graphs.

    Files are resolved only inside the bundle folder and checked against the manifest's sizes and
    SHA-256 digests the first time they are used (each file is hashed once per load).
    """

    path: Path
    manifest: dict[str, Any]
    _graphs: dict[str, nx.DiGraph] = field(default_factory=dict, repr=False)
    _digests: dict[str, str] = field(default_factory=dict, repr=False)
    _model_hash_ok: bool = field(default=False, repr=False)

    def _entry(self, role: str) -> dict[str, Any]:
        entry = self.manifest["files"].get(role)
        if entry is None:
            raise SVFormerError(f"{self.path}: the bundle has no {role!r} file (exported without it?)")
        if isinstance(entry, list):
            raise SVFormerError(f"{self.path}: role {role!r} holds several files")
        return entry

    def _resolve(self, role: str, entry: dict[str, Any]) -> Path:
        """The file of ``entry``, refused unless it is a regular file inside the bundle of the listed size."""
        root = self.path.resolve()
        target = self.path / entry["path"]
        try:
            real = target.resolve(strict=True)
        except FileNotFoundError:
            raise SVFormerError(f"{target}: listed in the manifest as {role!r} but missing") from None
        except (OSError, RuntimeError) as e:
            raise SVFormerError(f"{target}: cannot resolve the {role!r} file ({e})") from None
        if not real.is_relative_to(root):
            raise SVFormerError(f"{target}: the {role!r} file resolves outside the bundle ({real}); refused")
        if not real.is_file():
            raise SVFormerError(f"{target}: the {role!r} file is not a regular file")
        size = real.stat().st_size
        if size != entry["bytes"]:
            raise SVFormerError(f"{target}: {size} bytes, but the manifest lists {entry['bytes']} "
                                "(the file was changed or truncated)")
        return target

    def _verify(self, role: str, entry: dict[str, Any], digest: str, target: Path) -> None:
        if digest != entry["sha256"]:
            raise SVFormerError(f"{target}: SHA-256 mismatch: the file is not the one the manifest lists "
                                f"(expected {entry['sha256'][:12]}..., found {digest[:12]}...)")
        self._digests[entry["path"]] = digest

    def file(self, role: str) -> Path:
        """The path of ``role``'s file, checked (inside the bundle, size, SHA-256) on first use."""
        entry = self._entry(role)
        target = self._resolve(role, entry)
        if entry["path"] not in self._digests:
            self._verify(role, entry, sha256_file(target), target)
        return target

    def _read(self, role: str, limit: int) -> tuple[Path, bytes, str]:
        entry = self._entry(role)
        target = self._resolve(role, entry)
        if entry["bytes"] > limit:
            raise SVFormerError(f"{target}: {entry['bytes']} bytes, above the limit of {limit} for a {role!r} file")
        digest, data = file_sha256(target, keep=True)
        self._verify(role, entry, digest, target)
        return target, data or b"", digest

    def has(self, role: str) -> bool:
        return role in self.manifest.get("files", {})

    def graph(self, role: str = "ir") -> nx.DiGraph:
        """The IR graph of ``role`` ("ir" float, "ir_quantized" integer), read, verified and validated."""
        if role not in self._graphs:
            if role not in _GRAPH_ROLES:
                raise SVFormerError(f"{self.path}: {role!r} is not a graph role")
            jpath, jdata, jdigest = self._read(role, MAX_JSON_BYTES)
            npath, ndata, ndigest = self._read(_GRAPH_ROLES[role], MAX_ARRAYS_BYTES)
            if role == "ir":
                self._check_model_hash(jdigest, ndigest)
            self._graphs[role] = ir.load(jpath, json_data=jdata, arrays_path=npath, arrays_data=ndata,
                                         arrays_sha256=ndigest)
        return self._graphs[role]

    def _check_model_hash(self, json_digest: str, arrays_digest: str) -> None:
        if sha256_hex_pair(json_digest, arrays_digest) != self.manifest["model_hash"]:
            raise SVFormerError(f"{self.path / MANIFEST}: model_hash does not describe the bundle's 'ir' graph "
                                "(the manifest or the graph was changed)")
        self._model_hash_ok = True

    @property
    def model_hash(self) -> str:
        """The manifest's ``model_hash``, checked against the 'ir' graph files (hashing them if not yet done)."""
        if not self._model_hash_ok:
            digests = []
            for role in ("ir", "ir_arrays"):
                entry = self._entry(role)
                target = self._resolve(role, entry)
                if entry["path"] not in self._digests:
                    self._verify(role, entry, sha256_file(target), target)
                digests.append(self._digests[entry["path"]])
            self._check_model_hash(*digests)
        return str(self.manifest["model_hash"])

    def check_files(self) -> int:
        """Verify every file the manifest lists (inside the bundle, size, SHA-256) and the model hash; the count."""
        n = 0
        for role, entry in self.manifest["files"].items():
            for e in entry if isinstance(entry, list) else [entry]:
                target = self._resolve(role, e)
                if e["path"] not in self._digests:
                    self._verify(role, e, sha256_file(target), target)
                n += 1
        _ = self.model_hash
        return n

    def files(self, role: str) -> list[Path]:
        """The paths of ``role``'s files (one or several), each checked on first use; [] when absent."""
        entry = self.manifest["files"].get(role)
        if entry is None:
            return []
        out = []
        for e in entry if isinstance(entry, list) else [entry]:
            target = self._resolve(role, e)
            if e["path"] not in self._digests:
                self._verify(role, e, sha256_file(target), target)
            out.append(target)
        return out

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.get("class_names") or [])


def load_bundle(path: str | Path) -> Bundle:
    """Open a bundle directory; one-line errors for anything that is not a complete, well-formed bundle.

    The manifest is read as strict JSON and its fields are type-checked; the files it lists are
    verified (inside the bundle, size, SHA-256) when they are first used.
    """
    path = Path(path)
    if not path.exists():
        raise SVFormerError(f"{path}: no such export bundle")
    if not path.is_dir():
        raise SVFormerError(f"{path}: not an export bundle (expected a {SUFFIX} directory)")
    mpath = path / MANIFEST
    if not mpath.exists():
        raise SVFormerError(f"{path}: not an export bundle (no {MANIFEST})")
    if mpath.is_symlink() or not mpath.is_file():
        raise SVFormerError(f"{mpath}: the manifest must be a regular file inside the bundle")
    try:
        size = mpath.stat().st_size
        if size > MAX_JSON_BYTES:
            raise SVFormerError(f"{mpath}: manifest of {size} bytes is above the limit of {MAX_JSON_BYTES}")
        with open(mpath, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise SVFormerError(f"{mpath}: unreadable manifest ({e.strerror or e})") from None
    try:
        manifest = strict_json_loads(data, str(mpath), "manifest")
    except SVFormerError as e:
        raise SVFormerError(str(e).replace("not a readable manifest", "unreadable manifest")) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SVFormerError(f"{mpath}: not an svformer-deploy bundle manifest")
    if manifest.get("version") != VERSION:
        raise SVFormerError(f"{mpath}: bundle version {short(manifest.get('version'))} is not supported ({VERSION})")
    for key in ("files", "model_hash", "config", "input"):
        if key not in manifest:
            raise SVFormerError(f"{mpath}: manifest lacks {key!r}")
    _check_manifest(mpath, manifest)
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

    def check(self) -> None:
        """Refuse a folder that exists (without ``force``) or a path that is not a folder (one-line errors)."""
        if self.path.exists() and not self.force:
            raise SVFormerError(f"{self.path}: already exists; use --force to replace it or -o DIR")
        if self.path.exists() and not self.path.is_dir():
            raise SVFormerError(f"{self.path}: exists and is not a directory")

    def __enter__(self) -> BundleWriter:
        self.check()
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
            files = self.manifest["files"]
            self.manifest["model_hash"] = sha256_hex_pair(files["ir"]["sha256"], files["ir_arrays"]["sha256"])
        return jpath

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.manifest.setdefault("created", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                (self.tmp / MANIFEST).write_text(json.dumps(self.manifest, indent=2, allow_nan=False) + "\n")
            except BaseException as e:  # e.g. disk full or a value JSON cannot take: drop the temporary bundle
                self._ctx.__exit__(type(e), e, e.__traceback__)
                raise
        try:
            return bool(self._ctx.__exit__(exc_type, exc, tb))
        except FileExistsError:
            raise SVFormerError(f"{self.path}: already exists; use --force to replace it") from None
