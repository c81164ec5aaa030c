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


def _size() -> dict:
    """tqdm's size options: follow the terminal, or 80 x 24 on one that reports 0 x 0 (a fresh pseudo-terminal
    that nobody sized), where tqdm would draw nothing."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        size = os.terminal_size((0, 0))
    return {"dynamic_ncols": True} if size.columns > 0 and size.lines > 0 else {"ncols": 80, "nrows": 24}


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr when progress display is enabled."""
    if not enabled():
        yield from iterable
        return
    yield from tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr, leave=False, **_size())


def bar(total: int, desc: str, unit: str = "it") -> tqdm:
    """A manual bar (``.update(n)``, ``.close()``); disabled when progress display is off."""
    on = enabled()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, disable=not on,
                **(_size() if on else {}))
