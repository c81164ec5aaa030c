"""``svformer-deploy energy-report``: what the simulated clips cost, by three methods side by side."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from svformer_deploy.deploy.commands.simulate import batch_option
from svformer_deploy.simulators import DEFAULT_BATCH

from . import check_dataset_workers, dataset_worker_options, publish_report, report_file_options


@click.command("energy-report")
@click.argument("records", nargs=-1, type=click.Path(path_type=Path))
@click.option("--cost-model", "cost_model", default="fp32", show_default=True,
              metavar="fp32|fp16|int8|loihi|FILE.toml",
              help="Energy per operation: a 45 nm Horowitz preset, the loihi chip table (core parts on the chip, host "
                   "parts on its host model, see docs/energy.md) or a TOML file.")
@click.option("--host-cost-model", "host_model", metavar="fp32|fp16|int8|FILE.toml",
              help="With a chip cost model: the 45 nm model of the host parts [default: the chip's host, fp32].")
@click.option("--bundle", "bundle", type=click.Path(path_type=Path),
              help="With a chip cost model: the records' bundle (partition and layer shapes for the placement) "
                   "[default: the records' model.bundle].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the totals, stages, layers and clips as one CSV file.")
@report_file_options
@click.option("--no-layers", is_flag=True, help="Leave the per-layer table out of the terminal output.")
@click.option("--videos", "videos_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Simulate every clip below DIR (class = folder name) with --model first, then report.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Export bundle (*.svfd) used with --videos.")
@dataset_worker_options
@click.option("--batch", callback=batch_option, default=DEFAULT_BATCH, show_default=True,
              help="Clip views per simulator pass for --videos (auto: 16 for models up to 10 GMAC per clip, "
                   "else 1; docs/simulator.md, batched simulation).")
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where --videos writes run records [default: runs/batch-<model hash>]; rerunning resumes.")
@click.option("--views", "views_spec", default="1x1", show_default=True, help="Views per clip for --videos (KxS).")
@click.option("--integer", "integer", is_flag=True, help="Use the integer executor for --videos.")
def energy_report(records, cost_model, host_model, bundle, as_json, csv_path, md_path, html_dir, no_layers, videos_dir,
                  model_dir, workers, use_ray, ray_address, batch, runs_dir, views_spec, integer) -> None:
    """Energy per clip from run records (files or folders; default: the newest in ./runs).

    Three methods side by side, all from the same records: exact (counted events x cost model),
    paper_eq13 (the SVFormer paper's Eq. 12-13) and memory_aware (exact + memory traffic), with the
    ANN counterpart and a per-layer reconciliation of exact vs paper.
    """
    from svformer_deploy.deploy.energy.records import report_from_paths
    from svformer_deploy.deploy.energy.report import render_csv, render_markdown, render_terminal

    if videos_dir is not None or model_dir is not None:
        if videos_dir is None or model_dir is None:
            raise click.UsageError("--videos DIR and --model DIR go together")
        if records:
            raise click.UsageError("give run records or --videos/--model, not both")
        check_dataset_workers(workers, use_ray, ray_address)
        runner = None
        if use_ray or ray_address is not None:
            from svformer_deploy.deploy.ray_batch import ray_runner

            runner = ray_runner(ray_address, workers)
        records = (_simulate_videos(videos_dir, model_dir, workers or 2, runs_dir, views_spec, integer, as_json,
                                     batch, runner),)
    elif use_ray or ray_address is not None:
        raise click.UsageError("--ray and --ray-address go with --videos DIR --model DIR")
    report = report_from_paths(records, cost_model, bundle=bundle or (model_dir if videos_dir else None),
                               host=host_model)
    if report["skipped"]:
        click.echo(f"warning: skipped {len(report['skipped'])} corrupt run record(s): "
                   + "; ".join(s["reason"] for s in report["skipped"][:3]), err=True)
    from svformer_deploy.deploy.energy.html import INDEX, render_html

    publish_report(report, as_json, lambda: render_terminal(report, layers=not no_layers),
                   [("CSV", csv_path, lambda: render_csv(report)),
                    ("Markdown", md_path, lambda: render_markdown(report)),
                    ("HTML", html_dir / INDEX if html_dir else None, lambda: render_html(report))])


def _simulate_videos(videos_dir: Path, model_dir: Path, workers: int, runs_dir: Path | None, views_spec: str,
                     integer: bool, as_json: bool, batch: int | str, runner=None) -> Path:
    """Run ``deploy.batch.simulate_folder`` with a progress bar; returns the folder of run records."""
    from svformer_deploy.deploy.batch import find_clips, simulate_folder
    from svformer_deploy.deploy.commands.probe import parse_views
    from svformer_deploy.export.bundle import load_bundle
    from svformer_deploy.simulators.run import bundle_input_spec
    from svformer_deploy.svformer.progress import bar

    bundle = load_bundle(model_dir)
    kind = bundle_input_spec(bundle).file_kind  # video-events models read video files
    progress = bar(len(find_clips(videos_dir, kind)), "simulating clips", unit="clip")

    def on_clip(clip: str, err: str | None) -> None:
        progress.update(1)
        if err is not None:  # the reason names the file already
            progress.write(f"warning: skipped clip: {' '.join(err.split())}", file=sys.stderr)

    try:
        result = simulate_folder(videos_dir, model_dir, runs_dir, workers, parse_views(views_spec),
                                 "integer" if integer else "float", on_clip, batch, runner)
    finally:
        progress.close()
    click.echo(f"simulated {result.simulated} clip(s), {result.resumed} from earlier runs, "
               f"{len(result.failures)} failed; run records in {result.out_dir}", err=True)
    if not result.records:
        from svformer_deploy.svformer.errors import SVFormerError

        raise SVFormerError(f"{videos_dir}: no clip could be simulated ({len(result.failures)} failed)")
    return result.out_dir
