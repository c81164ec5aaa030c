"""``svformer-deploy export``: checkpoint -> bundle (IR, NIR, ONNX, netx, manifest) with a fidelity table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from svformer_deploy.deploy.render import emit_json, fmt_si, table


def _fmt(v: float | None, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "diff":
        return "0" if v == 0 else f"{v:.2e}"
    if v == 1.0:
        return "100%"
    return f"{100 * v:.4f}%" if v > 0.99 else f"{100 * v:.2f}%"


def _fmt_flips(v: float | None) -> str:
    """Flips per reference spike: a share that can exceed 100 % (a side firing where the other is silent)."""
    if v is None:
        return "-"
    if v == 0:
        return "0"
    return f"{v:.2e}" if v < 1e-3 else f"{100 * v:.2f}%"


def _fmt_divergence(d: dict[str, Any] | None, spikes: dict[str, Any] | None) -> str:
    if spikes is None:
        return "-"
    return "none" if d is None else f"step {d['step']} {d['layer']}"


FIDELITY_HEADERS = ["check", "max |dlogit|", "flips/ref spike", "precision", "recall", "first divergence",
                    "top-1 agreement", "neuron-steps agree", "clips", "target", "result"]


def render_fidelity(rows: list[Any]) -> str:
    """The fidelity table (``export`` and ``verify``): one row per check (:class:`export.exporter.FidelityRow`).

    The spike headline is *flips per reference spike* (spikes flipped, either way, as a share of the spikes the
    reference fires) with precision and recall of the new side's spikes and the first (step, layer) where the two
    runs differ; ``neuron-steps agree`` (agreeing neuron-steps, silent ones included) is only an extra column.
    """
    out = []
    for r in rows:
        verdict = "-" if r.passed is None else ("pass" if r.passed else "MISS")
        out.append([r.label, _fmt(r.max_abs_diff, "diff"), _fmt_flips(r.flip_rate), _fmt(r.precision, "pct"),
                    _fmt(r.recall, "pct"), _fmt_divergence(r.first_divergence, r.spikes),
                    _fmt(r.top1_agreement, "pct"), _fmt(r.spike_agreement, "pct"),
                    r.clips if r.clips is not None else "-", r.target or "-", verdict])
    return table(FIDELITY_HEADERS, out, "lrrrrlrrrll")


def render_export(result: Any) -> str:
    """The human-readable summary: files, partition, then the fidelity table (one row per check)."""
    m = result.manifest
    q = m.get("quantization")
    part = m["partition"]["summary"]
    qtext = "none" if not q else f"int{q['weight_bits']} weights ({q['why']})"
    lines = [f"exported {m.get('arch')} -> {result.output_dir}",
             f"  passes        {', '.join(m.get('passes') or [])}",
             f"  quantization  {qtext}",
             f"  inputs        check: {m['fidelity']['inputs'].get('check', '-')} "
             f"({m['fidelity']['inputs'].get('check_clips', 0)} clips)"]
    if q:
        lines.append(f"                calibration: {q.get('calibration')} "
                     f"({m['fidelity']['inputs'].get('calibration_clips', 0)} clips)")
    def share(key: str) -> str:  # bundles written before the shares were split have only the core-capable one
        v = part.get(key, part.get("core_dense_mac_share") if key == "core_capable_dense_mac_share" else None)
        return "?" if v is None else f"{100 * v:.1f}%"

    lines.append(f"  partition     {part['parts']} core-capable sequential parts ({part['core_nodes']} nodes, "
                 f"{share('core_capable_dense_mac_share')} of dense MACs), {part['host_nodes']} nodes on the host")
    lines.append(f"                written: {part['netx_files']} netx files ({share('netx_dense_mac_share')} of dense "
                 f"MACs), {part.get('nir_part_files', '?')} NIR part files ({share('nir_part_dense_mac_share')} of "
                 "dense MACs)")
    if part.get("note"):
        lines.append(f"                {part['note']}")
    fit = part.get("fit")
    if fit:
        verdict = "fits" if fit["fits"] else "does NOT fit: " + "; ".join(fit["problems"])
        lines.append(f"  fit           {fit['chip']}: {fit['cores']} cores on {fit['chips']} chip(s), compartments "
                     f"{100 * fit['compartment_utilisation']:.1f}%, synaptic memory "
                     f"{100 * fit['synaptic_memory_utilisation']:.1f}% of the cores used ({fit['weight_bits']}-bit "
                     f"synapses); {verdict} (svformer-deploy fit BUNDLE --chip loihi)")
    lines.append("  files")
    for role, entry in m["files"].items():
        entries = entry if isinstance(entry, list) else [entry]
        size = sum(e["bytes"] for e in entries)
        what = entries[0]["path"] if len(entries) == 1 else f"{len(entries)} files ({Path(entries[0]['path']).parent}/)"
        lines.append(f"    {role:<20} {what:<28} {fmt_si(size, 'B')}")
    if (m.get("netx") or {}).get("lava_run"):
        lines.append(f"  netx in Lava  {m['netx']['lava_run']}")
    lines.append("")
    lines.append(render_fidelity(result.fidelity) if result.fidelity else "no fidelity checks (--check-clips 0)")
    for w in result.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              help="Bundle folder to write (default: <checkpoint>.svfd beside the checkpoint).")
@click.option("--quantize", "quant", default="none", show_default=True, metavar="none|int8|intN",
              help="Integer weights (post-training, per-output-channel unless netx needs per-tensor scales).")
@click.option("--bits", type=int, help="Weight bits (2..16); implies quantization.")
@click.option("--calibration", type=click.Path(exists=True, path_type=Path),
              help="Calibration clips: a .pt/.npy/.npz tensor, a video/event file or a folder of them.")
@click.option("--check-data", type=click.Path(exists=True, path_type=Path),
              help="Held-out clips for the fidelity checks (default: the checkpoint's own test data if found, "
                   "else --calibration clips after the calibration ones, else random clips).")
@click.option("--check-clips", type=click.IntRange(min=0),
              help="Held-out clips to check on (default: as many as fit 5e10 dense MACs, 2..100; 0 skips checks).")
@click.option("--calibration-clips", type=click.IntRange(min=1), help="Calibration clips (default 2..32).")
@click.option("--targets", help="Comma-separated writers: nir, onnx, netx (default nir,onnx; netx too when quantized).")
@click.option("--onnx", "onnx", type=click.Choice(["step", "unrolled", "both"]), default="step", show_default=True,
              help="ONNX graphs to write: the one-step graph model_step.onnx (frame, step index and state in; state "
                   "out: streaming), the graph unrolled over all T steps (model.onnx, and model_fp32.onnx when not "
                   "quantized; slow to export for large models), or both.")
@click.option("--calibration-search", is_flag=True, help="Quantized: search each layer's weight range, then "
              "correct each layer's bias, for the fewest spikes flipped against the float model on the calibration "
              "clips (docs/qat.md); before/after in the manifest.")
@click.option("--qat-epochs", type=click.IntRange(min=1), help="Quantization-aware fine-tuning first: N epochs of "
              "train --qat on the float checkpoint's recorded training data, then the fine-tuned integer graph is "
              "exported (int8 unless --bits; docs/qat.md).")
@click.option("--qat-lr", type=click.FloatRange(min=0, min_open=True), help="--qat-epochs: peak learning rate "
              "[default 1e-4].")
@click.option("--fuse-linear", is_flag=True, help="Fuse linear cascades (PW-DW-PW) into single convolutions.")
@click.option("--arch", help="Variant name for bare state_dicts (base, ss, st, dp, wd, 3stg).")
@click.option("--strict", is_flag=True, help="Exit 1 when a fidelity check misses its target.")
@click.option("--force", is_flag=True, help="Replace an existing bundle folder.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def export(checkpoint, output, quant, bits, calibration, check_data, check_clips, calibration_clips, targets,
           onnx, calibration_search, qat_epochs, qat_lr, fuse_linear, arch, strict, force, as_json, quiet) -> None:
    """Export a trained checkpoint to a bundle: IR, NIR, ONNX and (quantized) Lava-DL netx, with fidelity checks."""
    import logging

    from svformer_deploy.export.exporter import (
        ExportOptions,
        export_checkpoint,
        parse_quantize,
        parse_targets,
        raise_on_miss,
    )
    from svformer_deploy.svformer.errors import SVFormerError
    from svformer_deploy.svformer.progress import bar, set_quiet

    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)  # "Triton not available" on CPU builds
    set_quiet(quiet)
    opts = ExportOptions(output=output, weight_bits=parse_quantize(quant, bits), calibration=calibration,
                         check_data=check_data, targets=parse_targets(targets), fuse=fuse_linear, force=force,
                         arch=arch, check_clips=check_clips, calibration_clips=calibration_clips, onnx=onnx,
                         calibration_search=calibration_search, qat_epochs=qat_epochs, qat_lr=qat_lr)
    if qat_lr is not None and qat_epochs is None:
        raise SVFormerError("--qat-lr needs --qat-epochs")
    steps = 12 + (2 if fuse_linear else 0) + (4 if opts.weight_bits is not None or qat_epochs else 0) + (
        1 if qat_epochs else 0)
    pbar = bar(steps, "export")

    def on_step(name: str) -> None:
        pbar.set_description(f"export: {name}")
        pbar.update(1)

    try:
        result = export_checkpoint(checkpoint, opts, on_step=on_step)
    finally:
        pbar.close()
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(render_export(result))
    if strict:
        raise_on_miss(result)
