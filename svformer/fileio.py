"""Atomic file output: write to a temporary sibling, then rename. A failed write leaves nothing behind."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; final files follow the umask
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def write_with_atomic(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` only if it succeeds."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling and rename it onto ``path`` when the block succeeds.

    With ``force`` an existing ``path`` is replaced (only after the new one is complete).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if path.exists():
            if not force:
                raise FileExistsError(path)
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class StagedOutputs:
    """Files staged beside their final paths by :func:`staged_outputs`, moved into place together."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary file, final path)
        self._made_dirs: list[Path] = []

    def text(self, path: str | os.PathLike, text: str) -> Path:
        """Stage ``text`` (UTF-8) for ``path``; parent folders are created (and removed again on failure)."""
        return self.data(path, text.encode("utf-8"))

    def data(self, path: str | os.PathLike, data: bytes) -> Path:
        """Stage ``data`` for ``path``; nothing appears at ``path`` before the whole set commits."""
        path = Path(path)
        missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        self._made_dirs += missing  # innermost first
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self._staged.append((Path(tmp), path))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        return path

    def _commit(self) -> None:
        done: list[tuple[Path, Path | None]] = []  # (final path, backup of what it replaced)
        try:
            for tmp, path in self._staged:
                backup = None
                if path.exists():
                    backup = path.with_name(f".{path.name}.{os.getpid()}.bak")
                    os.link(path, backup)
                os.replace(tmp, path)
                done.append((path, backup))
        except BaseException:
            for path, backup in reversed(done):  # undo: the old files come back, new ones go
                if backup is not None:
                    os.replace(backup, path)
                else:
                    path.unlink(missing_ok=True)
            raise
        for _, backup in done:
            if backup is not None:
                backup.unlink(missing_ok=True)

    def _discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        for d in self._made_dirs:
            with contextlib.suppress(OSError):
                d.rmdir()


@contextlib.contextmanager
def staged_outputs() -> Iterator[StagedOutputs]:
    """Write several output files all or nothing: stage each inside the block, rename all at its end.

    If the block (or any staging) raises, nothing is left at the final paths, and folders made for
    them are removed; otherwise every file appears (an existing file is replaced).
    """
    staged = StagedOutputs()
    try:
        yield staged
        staged._commit()
    except BaseException:
        staged._discard()
        raise


def file_sha256(path: str | os.PathLike, keep: bool = False) -> tuple[str, bytes | None]:
    """SHA-256 (hex) of a file, read once in 1 MB chunks; with ``keep`` also the bytes read (else None).

    The only place the project hashes files: verifying the bytes that are then parsed (``keep``) avoids
    reading a file twice and a change between the check and the use.
    """
    import hashlib

    h = hashlib.sha256()
    kept: list[bytes] | None = [] if keep else None
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            if kept is not None:
                kept.append(chunk)
    return h.hexdigest(), (b"".join(kept) if kept is not None else None)


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file, streamed."""
    return file_sha256(path)[0]


def sha256_hex_pair(first_hex: str, second_hex: str) -> str:
    """SHA-256 over two hex digests' bytes (a bundle's ``model_hash`` from its graph JSON and arrays)."""
    import hashlib

    return hashlib.sha256(bytes.fromhex(first_hex) + bytes.fromhex(second_hex)).hexdigest()
