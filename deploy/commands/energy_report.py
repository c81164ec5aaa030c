"""``svformer-deploy energy-report``: what the simulated clips cost, by three methods side by side."""

from __future__ import annotations

from pathlib import Path

import click

from deploy.render import emit_json


@click.command("energy-report")
@click.argument("records", nargs=-1, type=click.Path(path_type=Path))
@click.option("--cost-model", "cost_model", default="fp32", show_default=True, metavar="fp32|fp16|int8|FILE.toml",
              help="Energy per operation: a 45 nm Horowitz preset or a TOML file (see docs/energy.md).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the totals, stages, layers and clips as one CSV file.")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the report as Markdown.")
@click.option("--html", "html_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Also write a self-contained HTML page with plots to DIR/index.html.")
@click.option("--no-layers", is_flag=True, help="Leave the per-layer table out of the terminal output.")
def energy_report(records, cost_model, as_json, csv_path, md_path, html_dir, no_layers) -> None:
    """Energy per clip from run records (files or folders; default: the newest in ./runs).

    Three methods side by side, all from the same records: exact (counted events x cost model),
    paper_eq13 (the SVFormer paper's Eq. 12-13) and memory_aware (exact + memory traffic), with the
    ANN counterpart and a per-layer reconciliation of exact vs paper.
    """
    from deploy.energy.records import report_from_paths
    from deploy.energy.report import render_terminal, write_csv, write_markdown

    report = report_from_paths(records, cost_model)
    if report["skipped"]:
        click.echo(f"warning: skipped {len(report['skipped'])} corrupt run record(s): "
                   + "; ".join(s["reason"] for s in report["skipped"][:3]), err=True)
    written = []
    if csv_path:
        written.append(("CSV", write_csv(report, csv_path)))
    if md_path:
        written.append(("Markdown", write_markdown(report, md_path)))
    if html_dir:
        from deploy.energy.html import write_html

        written.append(("HTML", write_html(report, html_dir)))
    if as_json:
        emit_json(report)
    else:
        click.echo(render_terminal(report, layers=not no_layers))
    for what, path in written:
        click.echo(f"wrote {what} report: {path}", err=as_json)
