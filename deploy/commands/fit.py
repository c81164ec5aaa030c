"""``svformer-deploy fit``: would the bundle's core parts fit a neuromorphic chip, on how many cores and chips."""

from __future__ import annotations

from pathlib import Path

import click
from svformer_deploy.deploy.render import emit_json


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--chip", default="loihi", show_default=True, metavar="loihi|FILE.toml",
              help="Chip table: a preset or a chip TOML file (kind = \"chip\", see docs/energy.md).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def fit(bundle, chip, as_json) -> None:
    """Place the bundle's core-capable parts on a chip (layer-contiguous, row-major, under the per-core limits:
    compartments, synaptic memory at the bundle's weight bits, fan-in axons, fan-out edges) and report cores,
    chips, utilisation and the hops per spike that the chip bill uses."""
    from svformer_deploy.deploy.energy.cost_models import get_chip
    from svformer_deploy.deploy.energy.placement import place_bundle, render_fit
    from svformer_deploy.export.bundle import load_bundle

    model = get_chip(chip)
    b = load_bundle(bundle)
    placement = place_bundle(b, model)
    if as_json:
        emit_json({"format": "svformer-deploy/fit", "version": 1, "bundle": str(b.path),
                   "model_hash": b.model_hash, "chip_model": model.to_dict(), **placement.to_dict()})
    else:
        click.echo(f"bundle {b.path} (model hash {b.model_hash[:12]})")
        click.echo(render_fit(placement, model))
