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


def dataset_worker_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--workers N``, ``--ray`` and ``--ray-address ADDR``: where a command that walks a dataset runs its clips
    (a local process pool, a local Ray runtime, a running Ray cluster; docs/cluster.md)."""
    fn = click.option("--ray-address", metavar="ADDR",
                      help="Join the running Ray cluster at ADDR (host:port printed by `ray start --head`) instead; "
                           "implies --ray.")(fn)
    fn = click.option("--ray", "use_ray", is_flag=True,
                      help="Run the clips as Ray tasks on a local Ray runtime of --workers CPUs "
                           "(needs the extra: pip install 'svformer-deploy[ray]'; docs/cluster.md).")(fn)
    return click.option("--workers", type=click.IntRange(min=1), default=None,
                        help="Parallel processes [default: 2; with --ray: the local runtime's CPUs, all cores].")(fn)


def check_dataset_workers(workers: int | None, use_ray: bool, ray_address: str | None) -> None:
    """Refuse ``--workers`` with a cluster (usage error) and, when Ray is asked for, import it now: without the
    extra that is one error line before anything is read or written."""
    if ray_address is not None and workers is not None:
        raise click.UsageError("--workers sets the CPUs of a local Ray runtime; a cluster (--ray-address) has its own")
    if use_ray or ray_address is not None:
        from svformer_deploy.deploy.ray_batch import import_ray

        import_ray()


def publish_report(report: dict[str, Any], as_json: bool, terminal: Callable[[], str],
                   files: list[tuple[str, Path | None, Callable[[], str]]]) -> None:
    """Write the report files asked for (``(what, path or None, render)``) all or none, then print the report:
    one JSON document with ``as_json``, else ``terminal()``; then where each file went (stderr with JSON).
    A non-finite figure is an error before anything is written when JSON or a file is asked for."""
    from svformer_deploy.deploy.render import emit_json, json_document
    from svformer_deploy.svformer.fileio import staged_outputs

    outputs = [(what, path, render) for what, path, render in files if path]
    if as_json or outputs:
        json_document(report)
    rendered = [(what, path, render()) for what, path, render in outputs]  # rendered first, then written
    with staged_outputs() as stage:  # an OSError names the file; none of the outputs is written
        written = [(what, stage.text(path, text)) for what, path, text in rendered]
    if as_json:
        emit_json(report)
    else:
        click.echo(terminal())
    for what, path in written:
        click.echo(f"wrote {what} report: {path}", err=as_json)
