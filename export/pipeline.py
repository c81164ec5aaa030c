"""The export pipeline: trace, then the passes in their one fixed order, each followed by its check.

Order: ``trace`` -> ``fold_bn`` -> ``fuse_linear`` (optional) -> ``quantize`` (optional). Every pass
is a pure function IR -> IR; the pipeline keeps each intermediate graph and, when check inputs are
given, the fidelity report of every step against the graph it came from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx
import torch
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.model import SVFormer

from . import ir
from .fidelity import FidelityReport, compare
from .passes.fold_bn import check as fold_check
from .passes.fold_bn import fold_bn
from .passes.fuse_linear import FusionReport, fuse_linear, fusion_report
from .passes.fuse_linear import check as fuse_check
from .passes.quantize import QuantConfig, QuantReport, neuron_errors, quantize, weight_errors
from .passes.quantize import check as quant_check
from .trace import trace

PASS_ORDER = ("fold_bn", "fuse_linear", "quantize")


@dataclass
class PipelineResult:
    """Graphs after each step (``traced``, ``folded``, ``fused``, ``quantized``), the final one, and reports."""

    graphs: dict[str, nx.DiGraph] = field(default_factory=dict)
    reports: list[FidelityReport] = field(default_factory=list)
    fusion: FusionReport | None = None
    quant: QuantReport | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step

    @property
    def graph(self) -> nx.DiGraph:
        return list(self.graphs.values())[-1]

    @property
    def passed(self) -> bool:
        """True when every check that has a target met it."""
        return all(r.passed is not False for r in self.reports)


def trace_check(model: SVFormer, graph: nx.DiGraph, inputs: torch.Tensor, batch_size: int = 8) -> list[FidelityReport]:
    """Reference interpreter vs the PyTorch model: float64 identical spikes and max |dlogit| <= 1e-9;
    float32 max |dlogit| <= 1e-5."""
    r64 = compare(model, graph, inputs, torch.float64, label="trace float64", batch_size=batch_size)
    r64.target = "identical spikes, max |dlogit| <= 1e-9"
    r64.passed = r64.identical_spikes() and r64.max_abs_logit_diff <= 1e-9
    r32 = compare(model, graph, inputs, torch.float32, label="trace float32", batch_size=batch_size)
    r32.target = "max |dlogit| <= 1e-5"
    r32.passed = r32.max_abs_logit_diff <= 1e-5
    return [r64, r32]


def run_pipeline(source: SVFormer | nx.DiGraph, *, fuse: bool = False, quant: QuantConfig | None = None,
                 calibration: torch.Tensor | None = None, check_inputs: torch.Tensor | None = None,
                 batch_size: int = 8, on_step: Callable[[str], None] | None = None) -> PipelineResult:
    """Trace (if given a model) and run the passes in :data:`PASS_ORDER`.

    ``quant`` enables quantization (needs ``calibration`` frames ``[T, B, C, H, W]``); ``fuse``
    enables ``fuse_linear``. With ``check_inputs`` (held-out frames) every step is checked against
    the graph before it; the quantized graph is checked against the float graph it came from.
    ``on_step(name)`` is called before each step (progress display).
    """
    res = PipelineResult()
    step = on_step or (lambda name: None)

    def timed(name: str, fn: Callable[[], nx.DiGraph]) -> nx.DiGraph:
        step(name)
        t0 = time.perf_counter()
        g = fn()
        res.timings[name] = time.perf_counter() - t0
        return g

    if isinstance(source, SVFormer):
        g = timed("trace", lambda: trace(source))
        res.graphs["traced"] = g
        if check_inputs is not None:
            step("check trace")
            res.reports += trace_check(source, g, check_inputs, batch_size)
    elif isinstance(source, nx.DiGraph):
        g = ir.validate(source)
        res.graphs["traced"] = g
    else:
        raise SVFormerError(f"run_pipeline expects an SVFormer or an IR graph, got {type(source).__name__}")
    folded = timed("fold_bn", lambda: fold_bn(g))
    res.graphs["folded"] = folded
    if check_inputs is not None:
        step("check fold_bn")
        res.reports += fold_check(g, folded, check_inputs, batch_size)
    g = folded
    if fuse:
        fused = timed("fuse_linear", lambda: fuse_linear(g))
        res.graphs["fused"] = fused
        res.fusion = fusion_report(g, fused)
        if check_inputs is not None:
            step("check fuse_linear")
            res.reports += fuse_check(g, fused, check_inputs, batch_size)
        g = fused
    if quant is not None:
        if calibration is None:
            raise SVFormerError("quantization needs calibration inputs")
        float_graph = g
        qg = timed("quantize", lambda: quantize(float_graph, calibration, quant, batch_size))
        res.graphs["quantized"] = qg
        if check_inputs is not None:
            step("check quantize")
            res.quant = quant_check(float_graph, qg, check_inputs, batch_size)
            res.reports.append(res.quant.fidelity)
        else:
            res.quant = QuantReport(config=dict(qg.graph["quant"]), weights=weight_errors(qg),
                                              neurons=neuron_errors(qg))
    return res
