"""Small predicates for validating untrusted input (checkpoints, bundles, records, cost models)."""

from __future__ import annotations

import math
from typing import Any


def is_int(v: Any) -> bool:
    """An int that is not a bool (JSON ``true`` must not pass as 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float, not a bool; an int too large for a float (10^400) is not a number."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def short(v: Any, limit: int = 60) -> str:
    """``repr(v)`` cut to ``limit`` characters: error messages quote untrusted values."""
    try:
        text = repr(v)
    except ValueError:  # an int too long to print
        text = f"<{type(v).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
