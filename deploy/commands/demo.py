"""``svformer-deploy demo``: the whole chain on the built-in synthetic action set, no data and no flags.

Generate the data, train a small SVFormer on CPU, export it, simulate one held-out clip on the exported
graph and write the energy report, printing where everything went (``deploy.demo``, ``docs/demo.md``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from svformer_deploy.deploy.render import emit_json

STEPS = 6


class _Out:
    """Where the demo's text goes: step headings and epoch lines on stderr (not with --quiet); results on
    stdout, or on stderr with --json (stdout then holds only the JSON document)."""

    def __init__(self, as_json: bool, quiet: bool):
        self.as_json, self.quiet = as_json, quiet

    def log(self, msg: str) -> None:
        if not self.quiet:
            click.echo(msg, err=True)

    def show(self, msg: str) -> None:
        if self.as_json:
            self.log(msg)
        else:
            click.echo(msg)


def _timed(times: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        times[name] = round(time.perf_counter() - t0, 3)


@click.command()
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("svformer-demo"),
              show_default=True, help="Demo folder: data/, train/, model.svfd/, runs/, report/, demo.json.")
@click.option("--force", is_flag=True, help="Start over: regenerate the data, retrain and re-export, even when "
              "the folder holds a finished demo or one made with other sizes.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Torch CPU threads (1 is much faster for this small model when other jobs share the cores).")
@click.option("--epochs", type=click.IntRange(min=1), help="Training epochs [default: 16]; fewer is quicker "
              "and less accurate.")
@click.option("--train-per-class", type=click.IntRange(min=1), help="Synthetic training clips per class "
              "[default: 150].")
@click.option("--test-per-class", type=click.IntRange(min=1), help="Synthetic held-out clips per class "
              "[default: 25].")
@click.option("--qat", is_flag=True, help="Add step 7: quantization-aware fine-tuning of the demo checkpoint, "
              "the post-training and the QAT int8 bundles, both evaluated with the integer executor and shown next "
              "to the float model in the report (DIR/qat, docs/qat.md).")
@click.option("--qat-epochs", type=click.IntRange(min=1), help="--qat: fine-tuning epochs [default: 1].")
@click.option("--targets", hidden=True, help="Export writers (nir, onnx) [default: export's default]; "
              "for quick tests.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON document on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No step headings, per-epoch lines or progress bars.")
def demo(output: Path, force: bool, threads: int, epochs: int | None, train_per_class: int | None,
         test_per_class: int | None, qat: bool, qat_epochs: int | None, targets: str | None, as_json: bool,
         quiet: bool) -> None:
    """Run the whole chain on the built-in synthetic action set: no data and no flags needed.

    \b
    1. generate the synthetic action set (4 motion classes, MP4 clips)   -> DIR/data
    2. train a small 3-stage SVFormer on CPU (a few minutes)             -> DIR/train/last.pt
    3. export it with fidelity checks (IR, NIR, ONNX)                    -> DIR/model.svfd
    4. simulate one held-out clip on the exported graph, counting ops    -> DIR/runs/*.json
    5. energy report: exact counts vs the paper's method vs an ANN       -> DIR/report/index.html
    6. evaluate the held-out split: accuracy, energy, Gaussian noise,
       early-exit accuracy vs energy (added to the same page)            -> DIR/report/evaluation.json
    7. with --qat: QAT of the checkpoint, int8 bundles of PTQ and QAT,
       evaluated with the integer executor (added to the same page)      -> DIR/qat, DIR/report/qat.json

    Running it again in the same folder reuses every finished step (an interrupted training resumes);
    --force starts over.
    """
    import logging

    import torch
    from svformer_deploy.deploy import demo as lib
    from svformer_deploy.export.exporter import parse_targets, resolve_targets
    from svformer_deploy.svformer import demo_config
    from svformer_deploy.svformer.progress import set_quiet

    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)  # "Triton not available" on CPU builds
    # One thread by default: measured on a 2-core machine with another training job running, an epoch of this
    # model on 128 clips took 1.1-2.1 s with 1 thread and 5.6-18.8 s with 2 (docs/demo.md): the second
    # thread mostly waits for a busy core, and the model's ops are too small to gain from splitting.
    torch.set_num_threads(threads)
    set_quiet(quiet)
    if qat_epochs is not None and not qat:
        from svformer_deploy.svformer.errors import SVFormerError

        raise SVFormerError("--qat-epochs needs --qat")
    steps = STEPS + (1 if qat else 0)
    out = _Out(as_json, quiet)
    export_targets = parse_targets(targets)
    resolve_targets(export_targets, False)  # a target needing quantization is refused before any work
    sizes = lib.DemoSizes(epochs=epochs, train_per_class=train_per_class, test_per_class=test_per_class)
    data_params = sizes.data_params()
    layout = lib.prepare_folder(output)
    cfg = sizes.train_config(layout)
    state = lib.start_run(layout, sizes, cfg, force)  # refuses mismatching outputs before any work
    times: dict[str, float] = {}
    t_start = time.perf_counter()
    current = ["data"]

    def heading(i: int, name: str, text: str) -> None:
        current[0] = name
        out.log(f"\n[{i}/{steps}] {text}")

    try:
        # 1. data ------------------------------------------------------------------------------
        p = data_params
        heading(1, "data", f"data: the synthetic action set, {p['num_classes']} classes x ({p['train_per_class']} "
                f"train + {p['test_per_class']} held-out) clips of {p['size']}x{p['size']} pixels, {p['frames']} "
                f"frames -> {layout.data}")
        data = _timed(times, "data", lambda: lib.make_data(layout, sizes))
        out.show(f"{'reused the identical set in' if data.reused else 'generated'} {data.root}: {data.train_clips} "
                 f"train + {data.test_clips} held-out clips, classes {', '.join(data.classes)}"
                 + ("" if data.reused else f" ({times['data']:.1f} s)"))

        # 2. training --------------------------------------------------------------------------
        m = demo_config.MODEL
        heading(2, "train", f"training: {demo_config.ARCH} SVFormer (dims {','.join(map(str, m['dims']))}, "
                f"T={m['time_steps']} RGB frames of {m['img_size']}x{m['img_size']}), {cfg.epochs} epochs, batch "
                f"{cfg.batch_size}, AdamW lr {cfg.lr:g}, {threads} CPU thread(s) -> {layout.train}")

        def on_start(status: str, start: int) -> None:
            if status == "resumed":
                out.log(f"resuming the interrupted run at epoch {start + 1} of {cfg.epochs} ({layout.checkpoint})")

        from svformer_deploy.svformer.train import format_epoch

        trained = _timed(times, "train", lambda: lib.train(
            layout, cfg, state, on_epoch=lambda e: out.log(format_epoch(e, cfg.epochs)), on_start=on_start))
        r = trained.result
        top1 = r.metrics.get("test_top1")
        what = {"reused": "reused the finished run", "resumed": "resumed and finished",
                "trained": "trained"}[trained.status]
        out.show(f"{what}: {r.epochs} epochs, {r.params:,} parameters, {r.seconds:.0f} s of training; held-out "
                 f"top-1 {top1:.3f}, top-5 {r.metrics.get('test_top5', 0):.3f} ({r.test_data.get('samples')} clips); "
                 f"checkpoint {layout.checkpoint}")

        # 3. export ----------------------------------------------------------------------------
        writers = ", ".join(t.upper() for t in resolve_targets(export_targets, False))
        heading(3, "export", f"export: {layout.checkpoint} -> {layout.bundle} (IR, {writers}), with fidelity checks "
                "on the held-out clips")
        exported = _timed(times, "export", lambda: _export(lib, layout, export_targets))
        from svformer_deploy.deploy.commands.export import render_export

        if exported.reused:
            out.show(f"reused {layout.bundle} (exported from this checkpoint; sha256 in its manifest)")
        out.show(render_export(exported.result))

        # 4. simulation ------------------------------------------------------------------------
        clip, true_class = lib.held_out_clip(data.root)
        heading(4, "simulate", f"simulate: the first held-out {true_class} clip ({clip}) on the exported graph, "
                "counting every operation")
        sim = _timed(times, "simulate", lambda: _simulate(lib, layout, clip, true_class, m["time_steps"]))
        out.show(_render_simulation(sim))

        # 5. energy report ---------------------------------------------------------------------
        heading(5, "report", f"energy report: 45 nm fp32 cost model (Horowitz 2014) -> {layout.report}")
        rep = _timed(times, "report", lambda: lib.energy_report(layout, [sim.record]))
        from svformer_deploy.deploy.energy.report import header_lines, render_table, tables

        out.show("\n".join(header_lines(rep.report)) + "\n\n" + render_table(tables(rep.report, layers=False)[0]))
        out.show(f"wrote {rep.html} (plots: firing rates, energy by stage, SNN vs ANN, ...) and {rep.json}")

        # 6. evaluation of the held-out split ------------------------------------------------
        noise = ", ".join(demo_config.EVALUATE["noise"])
        heading(6, "evaluate", f"evaluate: the {data.test_clips} held-out clips on the exported graph, clean and with "
                f"noise {noise} (the paper's Table 2), early exit -> {layout.report}")
        evaluated = _timed(times, "evaluate", lambda: _evaluate(lib, layout, rep))
        from svformer_deploy.deploy.evaluate_report import tables as eval_tables

        et = eval_tables(evaluated.report)
        out.show(render_table(et[0]) + "\n\n" + render_table(et[1]))
        out.show(f"added the evaluation to {evaluated.html} (plots: accuracy and energy under noise, accuracy vs "
                 f"energy of early exit, confusion matrix) and wrote {evaluated.json}")

        # 7. QAT (--qat) ----------------------------------------------------------------------
        qat_step = None
        if qat:
            q = lib.qat_config(qat_epochs)
            heading(7, "qat", f"QAT: {q['epochs']} epoch(s) of quantization-aware fine-tuning at int{q['weight_bits']} "
                    f"(lr {q['lr']:g}), then the post-training and the QAT int{q['weight_bits']} bundles, both "
                    f"evaluated with the integer executor -> {layout.qat}")
            qat_step = _timed(times, "qat", lambda: _qat(lib, layout, rep, export_targets, qat_epochs, out))
            out.show(_render_qat(lib, qat_step))
    except KeyboardInterrupt:
        from svformer_deploy.svformer.errors import SVFormerError

        raise SVFormerError(f"interrupted during the {current[0]} step; the finished steps' outputs in {layout.root} "
                            "are complete and the next run reuses them (training resumes from its last epoch)"
                            ) from None

    total = time.perf_counter() - t_start
    doc = _summary(layout, data, trained, exported, sim, rep, times, total, threads, evaluated, qat_step)
    from svformer_deploy.svformer.fileio import write_json_atomic

    write_json_atomic(layout.summary, doc)
    out.log("")
    out.show(_render_summary(layout, doc, sim))
    if as_json:
        emit_json(doc)


def _export(lib: Any, layout: Any, targets: tuple[str, ...] | None) -> Any:
    from svformer_deploy.svformer.progress import bar

    pbar = bar(None, "export", unit="step")  # the number of steps depends on the targets and the graph

    def on_step(name: str) -> None:
        pbar.set_description(f"export: {name}")
        pbar.update(1)

    try:
        return lib.export(layout, targets, on_step=on_step)
    finally:
        pbar.close()


def _simulate(lib: Any, layout: Any, clip: Path, true_class: str, time_steps: int) -> Any:
    from svformer_deploy.svformer.progress import bar

    pbar = bar(time_steps, "simulate", unit="step")
    try:
        return lib.simulate(layout, clip, true_class, on_step=lambda t: pbar.update(1))
    finally:
        pbar.close()


def _qat(lib: Any, layout: Any, rep: Any, targets: tuple[str, ...] | None, epochs: int | None, out: _Out) -> Any:
    from svformer_deploy.svformer.progress import bar

    pbar = bar(None, "qat export", unit="step")

    def on_step(name: str) -> None:
        pbar.set_description(f"qat export: {name}")
        pbar.update(1)

    def on_epoch(row: dict[str, float]) -> None:
        out.log(f"qat epoch {row['epoch']}: loss {row['loss']:.4f}, train acc {row['train_acc']:.3f}")

    try:
        return lib.qat(layout, rep, targets, epochs, on_epoch=on_epoch, on_step=on_step)
    finally:
        pbar.close()


def _render_qat(lib: Any, step: Any) -> str:
    from svformer_deploy.deploy.render import table

    s = step.summary
    qat = lib.qat_table(s, step.reports)
    lines = [f"{'reused ' + ', '.join(step.reused) + '; ' if step.reused else ''}QAT checkpoint {step.checkpoint} "
             f"({s['epochs']} epoch(s), {s['seconds']:.0f} s); bundles {step.bundles['ptq']} and {step.bundles['qat']}",
             table(qat.headers, qat.rows, qat.align),
             f"added to the report page and wrote {step.json}"]
    return "\n".join(lines)


def _evaluate(lib: Any, layout: Any, rep: Any) -> Any:
    from svformer_deploy.svformer.progress import bar

    pbar = None

    def on_total(n: int) -> None:
        nonlocal pbar
        pbar = bar(n, "evaluate", unit="clip")

    try:
        return lib.evaluate(layout, rep, on_clip=lambda clip, err: pbar.update(1) if pbar else None,
                            on_total=on_total)
    finally:
        if pbar is not None:
            pbar.close()


def _render_simulation(sim: Any) -> str:
    from svformer_deploy.deploy.render import fmt_int, fmt_si

    lines = [f"{'reused the run record of this model and clip' if sim.reused else 'simulated'}: {sim.clip}",
             f"true class {sim.true_class}; top-5 (logits):"]
    for i, (label, score) in enumerate(sim.top5, 1):
        mark = "  <- true class" if label == sim.true_class else ""
        lines.append(f"  {i}. {label:<16} {score:10.4f}{mark}")
    t = sim.totals
    lines.append(f"counted over {sim.time_steps} time steps: AC {fmt_si(t['ac'])}, MAC {fmt_si(t['mac'])}, "
                 f"spikes {fmt_int(t.get('spikes_out', t.get('spikes', 0)))} ({sim.seconds:.1f} s)")
    lines.append(f"run record {sim.record}")
    return "\n".join(lines)


def _summary(layout: Any, data: Any, trained: Any, exported: Any, sim: Any, rep: Any, times: dict[str, float],
             total: float, threads: int, evaluated: Any, qat_step: Any = None) -> dict[str, Any]:
    """The ``--json`` document, also written to ``DIR/demo.json`` (absolute paths)."""
    from svformer_deploy.deploy import demo as lib
    from svformer_deploy.svformer import demo_config

    r, e = trained.result, exported.result
    status = {"data": "reused" if data.reused else "generated", "train": trained.status,
              "export": "reused" if exported.reused else "exported",
              "simulate": "reused" if sim.reused else "simulated", "report": "written",
              "evaluate": "reused" if not evaluated.simulated else "evaluated",
              **({"qat": "reused" if len(qat_step.reused) == 3 else "ran"} if qat_step is not None else {})}
    fid = {row.label: {k: v for k, v in row.to_dict().items() if k != "label"} for row in e.fidelity}
    return {
        "format": "svformer-deploy/demo", "version": 1,
        "output_dir": str(layout.root.resolve()),
        "config": {"data": data.params, "arch": demo_config.ARCH, "model": demo_config.MODEL,
                   "train": {**demo_config.TRAIN, "epochs": r.epochs},
                   "threads": threads},
        "steps": [{"step": name, "status": status[name], "seconds": times.get(name)} for name in status],
        "seconds": round(total, 3),
        "data": {"path": str(data.root.resolve()), "classes": data.classes, "train_clips": data.train_clips,
                 "test_clips": data.test_clips},
        "train": {"dir": str(layout.train.resolve()), "checkpoint": str(layout.checkpoint.resolve()),
                  "epochs": r.epochs, "params": r.params, "seconds": r.seconds,
                  "test_top1": r.metrics.get("test_top1"), "test_top5": r.metrics.get("test_top5"),
                  "test_clips": r.test_data.get("samples")},
        "export": {"bundle": str(layout.bundle.resolve()), "files": e.files, "passed": e.passed,
                   "checks": len(e.fidelity), "reported_only": sum(row.passed is None for row in e.fidelity),
                   "misses": [row.label for row in e.misses], "fidelity": fid},
        "simulate": {"clip": str(sim.clip.resolve()), "true_class": sim.true_class, "top5": sim.top5,
                     "correct": sim.correct, "record": str(sim.record.resolve()), "totals": sim.totals},
        "energy": {**lib.headline(rep.report), "html": str(rep.html.resolve()), "json": str(rep.json.resolve())},
        "evaluate": _evaluation_headline(evaluated),
        **({"qat": _qat_headline(qat_step)} if qat_step is not None else {}),
        "summary": str(layout.summary.resolve()),
    }


def _qat_headline(step: Any) -> dict[str, Any]:
    s = step.summary
    out = {"checkpoint": str(step.checkpoint.resolve()), "json": str(step.json.resolve()), "epochs": s["epochs"],
           "lr": s["lr"], "seconds": s["seconds"], "float_accuracy": s["float_accuracy"]}
    for key, r in step.reports.items():
        c = r["conditions"][0]
        if key == "float":
            out["float"] = {"top1": c["top1"], "firing_rate": c["firing_rate"], "exact_mj": c["energy_mj"]["exact"],
                            "cost_model": "int8"}
            continue
        out[key] = {"bundle": str(step.bundles[key].resolve()), "top1": c["top1"],
                    "agreement_with_float": r.get("agreement_with_float"), "flip_rate": s[key]["flip_rate"],
                    "firing_rate": c["firing_rate"], "exact_mj": c["energy_mj"]["exact"], "cost_model": "int8"}
    return out


def _evaluation_headline(evaluated: Any) -> dict[str, Any]:
    r = evaluated.report
    best = max((s for s in r["early_exit"] if s["top1"] >= r["conditions"][0]["top1"]),
               key=lambda s: s["saved"]["exact"], default=None)
    return {"clips": r["clips"], "json": str(evaluated.json.resolve()),
            "conditions": {c["condition"]: {"top1": c["top1"], "exact_mj": c["energy_mj"]["exact"],
                                            "firing_rate": c["firing_rate"]} for c in r["conditions"]},
            "early_exit_at_full_accuracy": None if best is None else {
                "margin": best["margin"], "k": best["k"], "mean_exit_step": best["mean_exit_step"],
                "saved_exact": best["saved"]["exact"]}}


def _secs(s: float) -> str:
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"


def _duration(s: float) -> str:
    return _secs(s) if s < 60 else f"{s / 60:.1f} min"


def _render_summary(layout: Any, doc: dict[str, Any], sim: Any) -> str:
    ex, en, tr = doc["export"], doc["energy"], doc["train"]
    steps = ", ".join(f"{s['step']} {_secs(s['seconds'])}" + (" (reused)" if s["status"] == "reused" else "")
                      for s in doc["steps"])
    enforced = ex["checks"] - ex["reported_only"]
    fid = (f"all {enforced} enforced checks pass" if ex["passed"]
           else f"{len(ex['misses'])} of {enforced} enforced checks MISS their target ({', '.join(ex['misses'])})")
    if ex["reported_only"]:
        fid += f" ({ex['reported_only']} more reported only)"
    pred = sim.top5[0][0] if sim.top5 else "-"
    root = layout.root
    lines = [
        f"demo finished in {_duration(doc['seconds'])} ({steps}); everything is in {root}:",
        f"  data        {layout.data}  ({doc['data']['train_clips']} train + {doc['data']['test_clips']} held-out "
        "clips)",
        f"  checkpoint  {layout.checkpoint}",
        f"  bundle      {layout.bundle}",
        f"  run record  {sim.record}",
        f"  report      {layout.report / 'index.html'}  (JSON: {layout.report / 'energy.json'})",
        f"  summary     {layout.summary}",
        f"held-out top-1 {tr['test_top1']:.3f} ({tr['test_clips']} clips); export fidelity: {fid}; "
        f"the {sim.true_class} clip was predicted {pred}",
        f"energy per clip ({en['cost_model']}): exact {en['exact_mj']:.4g} mJ vs ANN counterpart {en['ann_mj']:.4g} mJ "
        f"(SNN/ANN {100 * en['snn_ann_ratio']:.1f}%); the paper's Eq. 13 gives {en['paper_eq13_mj']:.4g} mJ",
    ]
    ev = doc["evaluate"]
    conds = "; ".join(f"{name} top-1 {100 * c['top1']:.1f}% at {c['exact_mj']:.4g} mJ"
                      for name, c in ev["conditions"].items())
    lines.append(f"exported graph on the {ev['clips']} held-out clips: {conds}")
    best = ev["early_exit_at_full_accuracy"]
    if best is not None:
        lines.append(f"early exit at margin {best['margin']:g} keeps that top-1 and stops after "
                     f"{best['mean_exit_step']:.2f} steps on average, saving {100 * best['saved_exact']:.1f}% of "
                     "the exact energy")
    classes = doc["data"]["classes"]
    other = classes[1] if len(classes) > 1 else classes[0]
    lines.append(f"next: cd {root} && svformer-deploy simulate --video data/test/{other}/0000.mp4 "
                 "&& svformer-deploy energy-report")
    return "\n".join(lines)
