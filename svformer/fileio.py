"""Atomic file output: write to a temporary sibling, then rename; a failed or interrupted write leaves nothing."""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .interrupts import deferred_interrupts

# errors of a file system that cannot take the output: full, over quota, read-only, not permitted
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_leaf(name: str) -> str:
    """``.model.nir.x1y2.tmp`` (an atomic helper's temporary) -> ``model.nir``; other names unchanged."""
    if name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3:
        return name[1:].rsplit(".", 2)[0]
    return name


def _name_final(e: BaseException, tmp: Path | None, final: Path) -> None:
    """Make an OSError name ``final`` (or the path below it) instead of the temporary ``tmp`` or nothing."""
    if not isinstance(e, OSError):
        return
    if e.filename is None:
        if e.errno in DISK_ERRNOS and tmp is not None:
            e.filename = str(final)
        return
    try:
        name = Path(os.fsdecode(e.filename))
    except TypeError:
        return
    if tmp is not None and name.is_relative_to(tmp):
        e.filename = str(final.joinpath(*(_temp_leaf(part) for part in name.relative_to(tmp).parts)))
    elif name.parent == final.parent and _temp_leaf(name.name) == final.name:  # creating the temporary failed
        e.filename = str(final)


def _missing_parents(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, innermost first."""
    return [p for p in path.parents if not p.exists()]


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed write created (innermost first), unless something else is in them now."""
    for d in folders:
        with contextlib.suppress(OSError):
            d.rmdir()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it.

    OSErrors are re-raised naming ``path`` rather than the temporary. SIGINT/SIGTERM (see
    :mod:`.interrupts`) cannot cut the creation, the rename or the clean-up in half.
    """
    path = Path(path)
    tmp_path: Path | None = None
    made = _missing_parents(path)
    try:
        with deferred_interrupts():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            tmp_path = Path(tmp)
            os.close(fd)
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; final files follow the umask
        yield tmp_path
        with deferred_interrupts():
            os.replace(tmp_path, path)
    except BaseException as e:
        with deferred_interrupts():
            if tmp_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    tmp_path.unlink()
            _remove_empty(made)
        _name_final(e, tmp_path, path)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def write_buffered_atomic(path: str | os.PathLike, writer: Callable[[BinaryIO], None]) -> Path:
    """Call ``writer(buffer)`` on an in-memory binary file, then write its bytes to ``path`` atomically.

    For libraries that write through C code (HDF5): they never touch the disk, so a full disk is an
    ordinary ``OSError`` of the final write, not a failure inside the library.
    """
    buf = io.BytesIO()
    writer(buf)
    return write_bytes_atomic(path, buf.getvalue())


def write_with_atomic(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` only if it succeeds."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling and rename it onto ``path`` when the block succeeds.

    With ``force`` an existing ``path`` is replaced (only after the new one is complete). On any
    exception or interrupt the temporary is removed; OSErrors inside it are re-raised naming the
    corresponding path below ``path``.
    """
    path = Path(path)
    tmp: Path | None = None
    made = _missing_parents(path)
    try:
        with deferred_interrupts():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield tmp
        with deferred_interrupts():
            if path.exists():
                if not force:
                    raise FileExistsError(path)
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    except BaseException as e:
        with deferred_interrupts():
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            _remove_empty(made)
        _name_final(e, tmp, path)
        raise


def write_new_file(folder: str | os.PathLike, name: str, data: bytes) -> Path:
    """Write ``data`` into ``folder`` as ``name``, or ``<stem>-1<suffix>``, ``-2``, ... if taken, atomically.

    The bytes go to a temporary file that is then hard-linked to the name: ``os.link`` fails when
    the name is taken, so concurrent writers never get the same file and readers never see a
    partial one (where hard links are not supported: an ``O_EXCL`` create). OSErrors name the
    final path, not the temporary.
    """
    folder = Path(folder)
    tmp: Path | None = None
    path = folder / name
    stem, suffix = path.stem, path.suffix
    try:
        with deferred_interrupts():
            fd, tmp_name = tempfile.mkstemp(prefix=".new.", suffix=".tmp", dir=folder)
            tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        for n in itertools.count():
            path = folder / (name if n == 0 else f"{stem}-{n}{suffix}")
            try:
                with deferred_interrupts():
                    os.link(tmp, path)
                return path
            except FileExistsError:
                continue
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
            try:  # no hard links on this file system
                with deferred_interrupts():
                    fd2 = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
            except FileExistsError:
                continue
            try:
                with os.fdopen(fd2, "wb") as f:
                    f.write(data)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            return path
    except BaseException as e:
        if isinstance(e, OSError) and (e.filename is None or tmp is not None and Path(os.fsdecode(e.filename)) == tmp):
            e.filename = str(path)
        raise
    finally:
        if tmp is not None:
            with deferred_interrupts(), contextlib.suppress(FileNotFoundError):
                tmp.unlink()


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
        tmp: Path | None = None
        try:
            with deferred_interrupts():
                self._made_dirs += _missing_parents(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.is_dir():
                    raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
                fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                tmp = Path(name)
                self._staged.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~_umask())
        except BaseException as e:
            _name_final(e, tmp, path)
            raise
        return path

    def _commit(self) -> None:
        done: list[tuple[Path, Path | None]] = []  # (final path, backup of what it replaced)
        with deferred_interrupts():
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
        with deferred_interrupts():
            for tmp, _ in self._staged:
                tmp.unlink(missing_ok=True)
            _remove_empty(self._made_dirs)


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
