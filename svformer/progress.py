"""Progress bars on stderr, shown only on a terminal (and never with ``--quiet``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = bool(quiet)


def enabled() -> bool:
    if _QUIET or os.environ.get("SVFORMER_NO_PROGRESS"):
        return False
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr when progress display is enabled."""
    if not enabled():
        yield from iterable
        return
    yield from tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)


def bar(total: int, desc: str, unit: str = "it") -> tqdm:
    """A manual bar (``.update(n)``, ``.close()``); disabled when progress display is off."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, disable=not enabled(),
                dynamic_ncols=True)
