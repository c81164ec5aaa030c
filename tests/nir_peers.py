"""NIR peers for the tests: run a standard part file in SpikingJelly, snnTorch or Norse.

snnTorch and Norse are dev extras, so this lives with the tests, not in the product.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import nir
import torch
from svformer_deploy.export.fidelity import compare_spikes
from svformer_deploy.export.writers.nir_writer import DT, run_spikingjelly_part

PEERS = ("spikingjelly", "snntorch", "norse")


def run_peer(path: str | Path, x: torch.Tensor, peer: str) -> torch.Tensor:
    """Output spikes ``[T, B, ...]`` of the part file in ``peer`` on input spikes ``x`` ``[T, B, C, H, W]``.

    snnTorch (``snntorch.import_nir.import_from_nir``) and Norse (``norse.torch.from_nir``, dt = ``DT``) read
    the file with plain ``nir.read`` and run one time step per call with their own state.
    """
    if peer == "spikingjelly":
        return run_spikingjelly_part(path, x)
    graph = nir.read(str(path))
    if peer == "snntorch":
        from snntorch.import_nir import import_from_nir

        with contextlib.redirect_stdout(io.StringIO()):  # snnTorch 1.0 prints the tau arrays it reads
            net = import_from_nir(graph)
    elif peer == "norse":
        from norse.torch import from_nir

        net = from_nir(graph, dt=DT)
    else:
        raise ValueError(f"unknown NIR peer {peer!r}; use one of {', '.join(PEERS)}")
    outs, state = [], None
    with torch.no_grad():
        for frame in x.to(torch.float32):
            y, state = net(frame) if state is None else net(frame, state)
            outs.append(y)
    return torch.stack(outs)


def peer_part_check(path: str | Path, x: torch.Tensor, expected: torch.Tensor, peer: str) -> dict[str, Any]:
    """:func:`export.fidelity.compare_spikes` of the peer's output spikes against ``expected`` (same layout)."""
    return compare_spikes({"out": expected}, {"out": run_peer(path, x, peer)})
