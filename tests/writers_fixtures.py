"""Graphs shared by the writer tests: a hand-built sequential spiking chain and tiny SVFormers with parts.

``chain_graph`` is a small IR graph whose middle is a two-layer sequential part (a grouped conv with
an asymmetric stride, then a conv with an asymmetric kernel and padding), so that a transposed
kernel, a swapped stride or a wrong group layout in a writer changes spikes. SVFormer models with
plain BN (``norm="bn"``) fold completely, which leaves conv/dense + neuron chains in every block.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import torch
from svformer_deploy.export import ir
from svformer_deploy.export.passes.quantize import QuantConfig, quantize

NETX_QUANT = QuantConfig(per_channel=False, lava_thresholds=True)


def chain_graph(time_steps: int = 5, seed: int = 0, bias: bool = True, kernel2: tuple[int, int] = (3, 2)) -> nx.DiGraph:
    """input (events 2x7x7) -> conv+PLIF -> [grouped conv (stride 2x1) + LIF -> conv ``kernel2`` (padding 1x0) +
    PLIF] -> Conv3d head -> flatten -> linear -> output. The bracketed layers form one part (source: the first
    neuron)."""
    rng = np.random.default_rng(seed)

    def b(n: int) -> np.ndarray | None:
        return rng.normal(0.0, 0.2, n) if bias else None

    g = ir.new_graph(time_steps, {}, source="test")
    ir.add_op(g, "input", ir.Input(shape=(2, 7, 7), encoding="events"))
    ir.add_op(g, "conv0", ir.Conv2d(weight=rng.normal(0, 0.6, (4, 2, 3, 3)), bias=b(4), stride=1, padding=1), ["input"])
    ir.add_op(g, "lif0", ir.Neuron(model="plif", a=0.4, v_threshold=0.9), ["conv0"])
    ir.add_op(g, "conv1", ir.Conv2d(weight=rng.normal(0, 0.7, (6, 2, 3, 3)), bias=b(6), stride=(2, 1), padding=1,
                                    groups=2), ["lif0"])
    ir.add_op(g, "lif1", ir.Neuron(model="lif", tau=3.0, v_threshold=0.8), ["conv1"])
    ir.add_op(g, "conv2", ir.Conv2d(weight=rng.normal(0, 0.7, (5, 6, *kernel2)), bias=b(5), stride=1, padding=(1, 0)),
              ["lif1"])
    ir.add_op(g, "lif2", ir.Neuron(model="plif", a=-0.3, v_threshold=0.7), ["conv2"])
    _, h, w = ir.spec(g, "lif2").shape
    ir.add_op(g, "head", ir.Conv3dHead(weight=rng.normal(0, 0.3, (5, 1, time_steps, h, w)), bias=b(5), groups=5),
              ["lif2"])
    ir.add_op(g, "flatten", ir.Flatten(), ["head"])
    ir.add_op(g, "fc", ir.Linear(weight=rng.normal(0, 0.5, (3, 5)), bias=b(3)), ["flatten"])
    ir.add_op(g, "output", ir.Output(), ["fc"])
    return ir.validate(g)


def event_clips(graph: nx.DiGraph, batch: int, seed: int = 0, rate: float = 0.6) -> torch.Tensor:
    """Poisson event counts ``[T, B, C, H, W]`` for ``graph``'s input."""
    g = torch.Generator().manual_seed(seed)
    shape = (int(graph.graph["time_steps"]), batch, *ir.spec(graph, ir.input_node(graph)).shape)
    return torch.poisson(torch.full(shape, rate), generator=g)


def quantized_chain(bias: bool = True, time_steps: int = 5) -> tuple[nx.DiGraph, torch.Tensor]:
    """The chain graph quantized for netx (per-tensor scales, Lava thresholds), and held-out clips."""
    g = chain_graph(time_steps=time_steps, bias=bias)
    qg = quantize(g, event_clips(g, 8, seed=1), NETX_QUANT)
    return qg, event_clips(g, 3, seed=2)


def netx_parts_match_lava_model(g: nx.DiGraph, part, rec: dict[str, torch.Tensor]) -> int:
    """Run every netx-expressible part of ``g`` in Lava's integer arithmetic (our model of it) on the recorded
    inputs and assert each layer's spikes equal the graph's; returns how many parts were checked."""
    from svformer_deploy.export.writers.netx_writer import (
        data_outputs,
        netx_input,
        netx_issue,
        netx_net,
        simulate_netx,
    )
    from svformer_deploy.export.writers.partition import record_part_io

    checked = 0
    for p in part.parts:
        if netx_issue(g, p) is not None:
            continue
        x, outs = record_part_io(g, p, rec)
        net = netx_net(g, p)
        got = data_outputs(net, simulate_netx(net, netx_input(net, x, flush=False))[0])
        for a, b in zip(got, outs, strict=True):
            assert torch.equal(a != 0, b != 0)
        checked += 1
    return checked
