"""Wall-clock timing shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable


def timed(fn: Callable[[], object], repeat: int, warmup: bool = True) -> list[float]:
    """Seconds of ``repeat`` calls of ``fn``, after one untimed warm-up call (allocations, lazy set-up)."""
    if warmup:
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out
