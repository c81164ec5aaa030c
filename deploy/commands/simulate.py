"""``svformer-deploy simulate``: run a clip through an export bundle's graph, count every operation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from svformer_deploy.deploy.commands.probe import parse_views
from svformer_deploy.deploy.render import emit_json, fmt_int, fmt_si, table
from svformer_deploy.simulators import DEFAULT_BATCH, parse_batch


def batch_option(ctx: click.Context, param: click.Parameter, value: str | int) -> str | int:
    """``--batch auto|N`` (views per simulator pass), shared by ``simulate`` and ``energy-report --videos``."""
    try:
        return parse_batch(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def render_simulation(doc: dict[str, Any]) -> str:
    """The terminal report of :meth:`simulators.run.SimulationReport.to_dict`."""
    src = doc["video"] or doc["events"]
    v = doc["views"]
    lines = [
        f"model     {doc['model']} (hash {doc['model_hash'][:12]}, {doc['executor']} executor)",
        f"input     {src}: {doc['input_kind']}, {v} view(s) of {list(doc['input_shape'])} [T, C, H, W]",
        "",
        f"top-5 (logits{' summed over ' + str(v) + ' views' if v > 1 else ''}):",
    ]
    for i, (label, score) in enumerate(doc["top5"], 1):
        lines.append(f"  {i}. {label:<32} {score:10.4f}")
    lines += ["", f"per layer (counts over {doc['time_steps']} time steps{', summed over views' if v > 1 else ''}):"]
    rows = []
    for r in doc["layers"]:
        rate = "" if r["firing_rate"] is None else f"{100 * r['firing_rate']:.2f}%"
        rows.append([r["stage"], r["name"], r["op"], rate, fmt_int(r["spikes_out"]) if r["op"] == "neuron" else "",
                     fmt_int(r["ac"]), fmt_int(r["mac"]), fmt_int(r["mul"] + r["add"])])
    lines.append(table(["stage", "layer", "op", "rate", "spikes", "AC", "MAC", "mul+add"], rows, "llllrrrr"))
    t = doc["totals"]
    lines += [
        "",
        f"totals    AC {fmt_si(t['ac'])}, MAC {fmt_si(t['mac'])}, mul {fmt_si(t['mul'])}, add {fmt_si(t['add'])}, "
        f"neuron updates {fmt_si(t['neuron_updates'])}, spikes {fmt_int(t['spikes_out'])}",
        f"memory    weight reads {fmt_si(t['weight_reads'])}, state reads {fmt_si(t['state_reads'])}, "
        f"state writes {fmt_si(t['state_writes'])} (words)",
        f"time      {doc['timing']['wall_s']:.2f} s ({doc['timing']['simulate_s']:.2f} s simulating)",
    ]
    recs = doc["records"]
    lines.append(f"record{'s' if len(recs) > 1 else ' '}   " + ("\n          ".join(recs)))
    ee = doc.get("early_exit")
    if ee:
        e = ee["exit_step"]
        verdict = f"exits after step {e} of {ee['time_steps']}" if ee["exited_early"] else \
            f"does not exit early (runs all {ee['time_steps']} steps)"
        lines += ["", f"early exit (margin p1-p2 >= {ee['margin']:g} for {ee['k']} step(s)): {verdict}, "
                      f"top-1 there {ee['top5'][0][0]} ({ee['top5'][0][1]:.4f})",
                  "          margins per step: " + " ".join(f"{v:.3f}" for v in ee["margins"])]
        for m in ee["energy_mj_full"]:
            lines.append(f"          {m:<13} {ee['energy_mj_full'][m]:.6g} mJ -> {ee['energy_mj_exit'][m]:.6g} mJ "
                         f"(saved {100 * ee['saved'][m]:.1f}%, read-outs included) [cost model {ee['cost_model']}]")
    return "\n".join(lines)


@click.command()
@click.option("--video", type=click.Path(dir_okay=False, path_type=Path), help="Video clip to classify.")
@click.option("--events", type=click.Path(dir_okay=False, path_type=Path),
              help="Event recording (.aedat4, N-MNIST .bin/.bs2, .npy) for a 2-channel model.")
@click.option("--model", "model", type=click.Path(path_type=Path),
              help="Export bundle (a .svfd folder); default: the most recent one in the current folder.")
@click.option("--views", "views_spec", default="1x1", show_default=True,
              help="Temporal views x spatial crops, e.g. 5x3; logits are summed over views.")
@click.option("--integer/--float", "integer", default=False, show_default=True,
              help="Run the quantized graph on the integer executor (needs an export with quantization).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Folder for the run records (one JSON file per view).")
@click.option("--kernel", type=click.Choice(["auto", "events", "dense"]), default="auto", show_default=True,
              help="Accumulation kernels for spike inputs (counts do not depend on it).")
@click.option("--batch", callback=batch_option, default=DEFAULT_BATCH, show_default=True,
              help="Views per simulator pass (batched simulation: the same counts; auto: 16 for models up to 10 "
                   "GMAC per clip, else 1; docs/simulator.md).")
@click.option("--runtime", type=click.Choice(["graph", "onnx"]), default="graph", show_default=True,
              help="graph: the event-driven simulator (op counts, run records); onnx: the bundle's one-step ONNX "
                   "graph in onnxruntime, fed one frame at a time (top-5 only).")
@click.option("--live", is_flag=True, help="With --runtime onnx: print the running top-5 after every step.")
@click.option("--early-exit", "early_exit", metavar="M[,K]",
              help="Anytime read-out: report the step at which the softmax margin p1-p2 has been >= M for K "
                   "steps (default 1) and the energy saved by stopping there (docs/evaluate.md).")
@click.option("--cost-model", "cost_model", default="fp32", show_default=True, metavar="fp32|fp16|int8|FILE.toml",
              help="Energy per operation for --early-exit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def simulate(video, events, model, views_spec, integer, out_dir, kernel, batch, runtime, live, early_exit, cost_model,
             as_json, quiet) -> None:
    """Simulate a clip on the exported graph: top-5 classes, per-layer firing rates and exact op counts.

    Writes one run record per view (read by `svformer-deploy energy-report`).
    """
    from svformer_deploy.simulators.run import simulate_file
    from svformer_deploy.svformer.progress import bar, set_quiet

    if (video is None) == (events is None):
        raise click.UsageError("give exactly one input: --video FILE or --events FILE")
    views = parse_views(views_spec)
    if live and runtime != "onnx":
        raise click.UsageError("--live needs --runtime onnx")
    rule = None
    if early_exit is not None:
        from svformer_deploy.simulators.anytime import parse_early_exit

        if runtime != "graph":
            raise click.UsageError("--early-exit needs --runtime graph (it reads the simulator's per-step counts)")
        rule = parse_early_exit(early_exit)
    if runtime == "onnx":
        _simulate_onnx(video, events, model, views, integer, live, as_json)
        return
    set_quiet(quiet)
    progress = bar(total=None, desc="simulate", unit="step")

    def on_step(t: int) -> None:
        progress.update(1)

    try:
        report = simulate_file(video=video, events=events, model=model, views=views,
                               executor="integer" if integer else "float", out_dir=out_dir, kernel=kernel,
                               on_step=on_step, batch=batch, early_exit=rule, cost_model=cost_model)
    finally:
        progress.close()
    doc = report.to_dict()
    if as_json:
        emit_json(doc)
    else:
        click.echo(render_simulation(doc))


def _simulate_onnx(video, events, model, views, integer, live, as_json) -> None:
    """``--runtime onnx``: the step graph in onnxruntime; ``--live`` lines go to stdout, or stderr with ``--json``."""
    import sys

    from svformer_deploy.simulators.stream import render_stream, stream_file

    def on_step(view: int, t: int, top5: list) -> None:
        best = ", ".join(f"{label} {score:.3f}" for label, score in top5)
        print(f"view {view} step {t}: {best}", file=sys.stderr if as_json else sys.stdout, flush=True)

    doc = stream_file(video=video, events=events, model=model, views=views, integer=integer,
                      on_step=on_step if live else None)
    if as_json:
        emit_json(doc)
    else:
        click.echo(render_stream(doc))
