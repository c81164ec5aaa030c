"""The CLI's commands, one module each (loaded lazily by ``deploy/cli.py``), and the options they share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def report_file_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--markdown FILE`` and ``--html DIR``: the report files a reporting command can also write."""
    fn = click.option("--html", "html_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
                      help="Also write a self-contained HTML page with plots to DIR/index.html.")(fn)
    return click.option("--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path),
                        help="Also write the report as Markdown.")(fn)
