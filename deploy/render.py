"""Terminal rendering helpers shared by the commands (tables, numbers, JSON on stdout)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import click
from svformer_deploy.svformer.errors import SVFormerError


def fmt_int(n: int | float) -> str:
    return f"{int(round(n)):,}"


def fmt_si(n: float, unit: str = "") -> str:
    """1.23 G, 45.6 M, ... (decimal prefixes)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.3f} {prefix}{unit}"
    return f"{n:.3g} {unit}".rstrip()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A plain-text table; ``align`` is one character per column, 'l' or 'r' (default: numbers right)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    if align is None:
        align = "".join("r" if rows and _looks_numeric(rows[0][i]) else "l" for i in range(len(headers)))

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(values, widths, align, strict=True))

    out = [line(list(headers)), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    return "\n".join(s.rstrip() for s in out)


def _looks_numeric(v: Any) -> bool:
    if isinstance(v, int | float):
        return True
    s = str(v).replace(",", "").replace("%", "").strip()
    try:
        float(s.split()[0])
        return True
    except (ValueError, IndexError):
        return False


def _non_finite_path(obj: Any, where: str = "") -> str | None:
    """Where the first NaN/infinite float sits in ``obj`` (``a.b[3]``), or None."""
    stack: list[tuple[Any, str]] = [(obj, where)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return f"{at or 'the document'} = {v}"
        if isinstance(v, dict):
            stack.extend((x, f"{at}.{k}" if at else str(k)) for k, x in reversed(list(v.items())))
        elif isinstance(v, list | tuple):
            stack.extend((x, f"{at}[{i}]") for i, x in reversed(list(enumerate(v))))
    return None


def json_document(obj: Any) -> str:
    """``obj`` as strict JSON text (no NaN/Infinity, which JSON does not have): the one serialiser of every
    ``--json`` output. A non-finite figure is a clean error naming where it is, never ``Infinity`` in output."""
    try:
        return json.dumps(obj, indent=2, allow_nan=False)
    except ValueError:
        where = _non_finite_path(obj)
        raise SVFormerError(f"cannot write the JSON output: a figure is not a finite number ({where}); "
                            "the inputs are out of range") from None


def emit_json(obj: Any) -> None:
    """The one JSON document of a ``--json`` run, on stdout (strict JSON, see :func:`json_document`)."""
    text = json_document(obj)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def echo(msg: str = "") -> None:
    click.echo(msg)
