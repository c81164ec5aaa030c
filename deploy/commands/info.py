"""``svformer-deploy info``: parameters, layers and dense MACs of a model (no data needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from svformer_deploy.deploy.render import emit_json, fmt_int, fmt_si, table


def model_info(arch: str | None = None, checkpoint: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """Everything ``info`` reports, as one JSON-ready dict (see docs/cli.md)."""
    from svformer_deploy.svformer.checkpoint import load_checkpoint
    from svformer_deploy.svformer.complexity import dense_macs_by_stage, layer_costs, neuron_layer_count, stage_order
    from svformer_deploy.svformer.model import SVFormer
    from svformer_deploy.svformer.variants import variant_config

    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint, arch, **overrides)
        cfg, name, source = ckpt.config, ckpt.arch, str(checkpoint)
        class_names = ckpt.class_names
    else:
        if arch is None:
            raise click.UsageError("give a checkpoint file or --arch NAME")
        cfg, name, source, class_names = variant_config(arch, **overrides), arch, None, None
    model = SVFormer(cfg)
    params = sum(p.numel() for p in model.parameters())
    layers = layer_costs(cfg)
    by_stage = dense_macs_by_stage(cfg)
    stage_params: dict[str, int] = dict.fromkeys(stage_order(cfg), 0)
    for layer in layers:
        stage_params[layer.stage] += layer.params
    return {
        "arch": name,
        "source": source,
        "params": params,
        "params_by_module": _params_by_top_module(model),
        "dense_macs": sum(layer.macs for layer in layers),
        "dense_macs_by_stage": by_stage,
        "bias_adds": sum(layer.bias_adds for layer in layers),
        "neuron_layers": neuron_layer_count(cfg),
        "time_steps": cfg.time_steps,
        "input_shape": [1, cfg.in_channels, cfg.time_steps, cfg.img_size, cfg.img_size],
        "input_layout": "BCTHW",
        "num_classes": cfg.num_classes,
        "class_names": class_names,
        "config": cfg.to_dict(),
        "layers": [layer.to_dict() for layer in layers],
    }


def _params_by_top_module(model) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        out[top] = out.get(top, 0) + p.numel()
    return out


def render_info(info: dict[str, Any]) -> str:
    lines = [
        f"SVFormer '{info['arch']}'" + (f" from {info['source']}" if info["source"] else ""),
        f"  parameters     {fmt_int(info['params'])}",
        f"  input          {info['input_shape']} ({info['input_layout']}), {info['num_classes']} classes",
        f"  neuron layers  {info['neuron_layers']}",
        f"  dense MACs     {fmt_int(info['dense_macs'])} per clip ({fmt_si(info['dense_macs'])}), ANN counterpart,"
        f" bias adds {fmt_int(info['bias_adds'])} not included",
        "",
    ]
    rows = []
    for layer in info["layers"]:
        rows.append([layer["stage"], layer["name"], layer["op"], "x".join(map(str, layer["output_shape"])),
                     fmt_int(layer["params"]), fmt_int(layer["macs"])])
    lines.append(table(["stage", "layer", "op", "output/step", "params", "dense MACs"], rows, "llllrr"))
    lines.append("")
    total = info["dense_macs"] or 1
    srows = [[s, fmt_int(m), f"{100 * m / total:.1f}%"] for s, m in info["dense_macs_by_stage"].items()]
    lines.append(table(["stage", "dense MACs", "share"], srows, "lrr"))
    return "\n".join(lines)


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--arch", help="Variant name (base, ss, st, dp, wd, 3stg); required for bare state_dicts.")
@click.option("--time-steps", "-T", type=int, help="Override T (frames per clip).")
@click.option("--size", type=int, help="Override the input size (pixels).")
@click.option("--num-classes", type=int, help="Override the number of classes.")
@click.option("--no-local-pathway", is_flag=True, help="Ablation: remove the local pathway.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def info(checkpoint, arch, time_steps, size, num_classes, no_local_pathway, as_json) -> None:
    """Parameters, per-stage layers and dense MACs of a checkpoint or a named architecture."""
    overrides = {"time_steps": time_steps, "img_size": size, "num_classes": num_classes}
    if no_local_pathway:
        overrides["local_pathway"] = False
    overrides = {k: v for k, v in overrides.items() if v is not None}
    result = model_info(arch=arch, checkpoint=checkpoint, **overrides)
    if as_json:
        emit_json(result)
    else:
        click.echo(render_info(result))
