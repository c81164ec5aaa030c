"""NIR peers for the tests: the product's runner (:func:`run_nir_peer`) plus a spike comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from svformer_deploy.export.fidelity import compare_spikes
from svformer_deploy.export.writers.nir_writer import NIR_PEERS as PEERS
from svformer_deploy.export.writers.nir_writer import run_nir_peer as run_peer

__all__ = ["PEERS", "run_peer", "peer_part_check"]


def peer_part_check(path: str | Path, x: torch.Tensor, expected: torch.Tensor, peer: str) -> dict[str, Any]:
    """:func:`export.fidelity.compare_spikes` of the peer's output spikes against ``expected`` (same layout)."""
    return compare_spikes({"out": expected}, {"out": run_peer(path, x, peer)})
