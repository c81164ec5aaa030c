"""``svformer-deploy verify``: check a received bundle (hashes, formats) and run its files in their runtimes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from svformer_deploy.deploy.render import emit_json


def render_verify(result: Any) -> str:
    """The terminal report: what was checked, the fidelity table (as ``export``), misses and skipped checks."""
    from svformer_deploy.deploy.commands.export import render_fidelity

    lines = [f"verified {result.bundle} (model hash {result.model_hash[:12]}, {result.files_checked} files)",
             f"  inputs        {result.inputs['check']} ({result.inputs['check_clips']} clips)",
             f"  NIR peers run {', '.join(result.peers_run) or 'none'}", ""]
    lines.append(render_fidelity(result.fidelity))
    for r in result.misses:
        lines.append(f"MISS {r.label}: {r.detail}")
    for s in result.skipped:
        lines.append(f"skipped {s['check']}: {s['why']}")
    for w in result.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--check-data", type=click.Path(exists=True, path_type=Path),
              help="Clips to check on: a .pt/.npy/.npz tensor, a video/event file or a folder of them (default: the "
                   "check clips the manifest records, if that file exists here, else random clips).")
@click.option("--clips", type=click.IntRange(min=1), default=4, show_default=True, help="Clips to check on.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def verify(bundle, check_data, clips, as_json) -> None:
    """Verify an export bundle: file hashes and formats, then model.onnx in onnxruntime, model.nir in plain nir.read
    and our reader, NIR part files in the installed NIR peers, netx files in Lava (when its environment exists),
    all against the bundle's own graph. Exit 1 when a check misses, 2 for a bad bundle."""
    import logging

    from svformer_deploy.export.verify import verify_bundle
    from svformer_deploy.svformer.errors import CheckFailed

    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)
    result = verify_bundle(bundle, check_data=check_data, clips=clips)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(render_verify(result))
    if result.misses:
        more = f" (+{len(result.misses) - 1} more)" if len(result.misses) > 1 else ""
        raise CheckFailed(f"{bundle}: verification missed: {result.misses[0].label}{more}")
