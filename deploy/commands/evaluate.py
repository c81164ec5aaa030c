"""``svformer-deploy evaluate``: accuracy, energy, noise robustness and early exit of the exported graph."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import check_dataset_workers, dataset_worker_options, publish_report, report_file_options


def _margins(text: str) -> list[float]:
    from svformer_deploy.svformer.errors import SVFormerError

    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SVFormerError(f"--exit-margins {text!r}: expected numbers in 0..1 separated by commas") from None
    if not vals or not all(0 <= v <= 1 for v in vals) or len(vals) > 64:
        raise SVFormerError(f"--exit-margins {text!r}: expected 1 to 64 numbers in 0..1")
    return sorted(set(vals))


@click.command()
@click.option("--videos", "videos", type=click.Path(path_type=Path), help="Folder of video clips, DIR/<class>/<clip>.")
@click.option("--events", "events", type=click.Path(path_type=Path),
              help="Folder of event recordings, DIR/<class>/<file>.")
@click.option("--nmnist", "nmnist", type=click.Path(path_type=Path),
              help="N-MNIST small folder (*.bs2 + test100.txt / train1K.txt).")
@click.option("--csv", "csv_list", type=click.Path(path_type=Path), help="CSV list of 'path,label' lines.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Which N-MNIST label file to evaluate.")
@click.option("--model", "model", type=click.Path(path_type=Path),
              help="Export bundle (a .svfd folder); default: the most recent one in the current folder.")
@click.option("--views", "views_spec", default="1x1", show_default=True, help="Views per clip (KxS); logits summed.")
@click.option("--integer/--float", "integer", default=False, show_default=True,
              help="Integer executor on the quantized graph (reports its agreement with the float graph too).")
@click.option("--precision", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="Arithmetic of the float executor (float64: the PyTorch model's exact spikes).")
@click.option("--noise", "noise_specs", multiple=True, metavar="KIND:LEVELS",
              help="Add input noise, e.g. gaussian:0.1,0.5 or salt-pepper:0.01,0.05 (repeatable; video only).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the input noise.")
@click.option("--exit-margins", "margins_text", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95,0.99",
              show_default=True, help="Margins m of the early-exit sweep (softmax p1 - p2).")
@click.option("--exit-steps", "exit_k", type=click.IntRange(min=1), default=1, show_default=True,
              help="k: the margin must hold for k consecutive steps.")
@click.option("--cost-model", "cost_model", default="fp32", show_default=True, metavar="fp32|fp16|int8|FILE.toml",
              help="Energy per operation (see docs/energy.md).")
@dataset_worker_options
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Per-clip results [default: runs/evaluate-<model hash>-<settings>]; rerunning resumes.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--csv-report", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the tables as one CSV file (--csv names the dataset list).")
@report_file_options
def evaluate(videos, events, nmnist, csv_list, split, model, views_spec, integer, precision, noise_specs, seed,
             margins_text, exit_k, cost_model, workers, use_ray, ray_address, runs_dir, as_json, csv_path, md_path,
             html_dir) -> None:
    """Top-1/top-5, per class, confusion matrix and energy per clip of the exported graph on a labelled
    dataset, under input noise (the paper's Table 2), with the early-exit accuracy-vs-energy sweep.

    Accuracy and energy come from the same simulation of every clip (docs/evaluate.md).
    """
    from svformer_deploy.deploy.commands.probe import parse_views
    from svformer_deploy.deploy.energy.cost_models import get_cost_model
    from svformer_deploy.deploy.evaluate import Settings, evaluate_dataset, summarise
    from svformer_deploy.deploy.evaluate_report import INDEX, render_csv, render_html, render_markdown, render_terminal
    from svformer_deploy.simulators.run import open_bundle
    from svformer_deploy.svformer.data.noise import parse_noise
    from svformer_deploy.svformer.progress import bar

    given = [(name, p) for name, p in (("videos", videos), ("events", events), ("nmnist", nmnist),
                                        ("csv", csv_list)) if p is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one dataset: --videos DIR, --events DIR, --nmnist DIR or --csv FILE")
    layout, path = given[0]
    check_dataset_workers(workers, use_ray, ray_address)
    noises = parse_noise(noise_specs)
    margins = _margins(margins_text)
    views = parse_views(views_spec)
    get_cost_model(cost_model)  # a bad cost model is an error before any simulation
    bundle = open_bundle(model)
    settings = Settings(model=str(bundle.path), model_hash=bundle.model_hash,
                        executor="integer" if integer else "float", precision=precision, views=views, seed=seed,
                        cost_model=cost_model, compare_float=integer)
    progress = None

    def on_total(n: int) -> None:
        nonlocal progress
        progress = bar(n, "evaluating clips", unit="clip")

    def on_clip(clip: str, err: str | None) -> None:
        if progress is not None:
            progress.update(1)
            if err is not None:
                progress.write(f"warning: skipped clip: {' '.join(err.split())}", file=sys.stderr)
        elif err is not None:
            click.echo(f"warning: skipped clip: {' '.join(err.split())}", err=True)

    try:
        ev = evaluate_dataset(layout, path, settings, noises, runs_dir, workers, split,
                              on_clip=on_clip, on_total=on_total, ray=use_ray, ray_address=ray_address)
    finally:
        if progress is not None:
            progress.close()
    click.echo(f"evaluated {ev.simulated} clip(s), {ev.resumed} from earlier runs, {len(ev.failures)} failed; "
               f"results in {ev.runs_dir}", err=True)
    report = summarise(ev, margins, exit_k)
    publish_report(report, as_json, lambda: render_terminal(report),
                   [("CSV", csv_path, lambda: render_csv(report)),
                    ("Markdown", md_path, lambda: render_markdown(report)),
                    ("HTML", html_dir / INDEX if html_dir else None, lambda: render_html(report))])
