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
from .fidelity import FidelityReport, compare_chain
from .passes import fold_bn as fold_pass
from .passes import fuse_linear as fuse_pass
from .passes import quantize as quant_pass
from .passes.fold_bn import fold_bn
from .passes.fuse_linear import FusionReport, fuse_linear, fusion_report
from .passes.quantize import QuantConfig, QuantReport, quantize
from .trace import trace

PASS_ORDER = ("fold_bn", "fuse_linear", "quantize")


@dataclass
class PipelineResult:
    """Graphs after each step (``traced``, ``folded``, ``fused``, ``quantized``), the final one, and reports.

    ``logits``: the final graph's logits on the check inputs, float64 ``[clips, classes]``, by semantics
    (``"float64"`` for the last float graph, ``"fixed"`` for the quantized one), kept from the checks so that
    the ONNX checks compare against them without running the graph again.
    """

    graphs: dict[str, nx.DiGraph] = field(default_factory=dict)
    reports: list[FidelityReport] = field(default_factory=list)
    fusion: FusionReport | None = None
    quant: QuantReport | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    logits: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def graph(self) -> nx.DiGraph:
        return list(self.graphs.values())[-1]

    @property
    def float_graph(self) -> nx.DiGraph:
        """The last graph before quantization."""
        return [g for k, g in self.graphs.items() if k != "quantized"][-1]

    @property
    def passed(self) -> bool:
        """True when every check that has a target met it."""
        return all(r.passed is not False for r in self.reports)


def judge_trace(r64: FidelityReport, r32: FidelityReport) -> list[FidelityReport]:
    """Targets of the trace check: float64 identical spikes and max |dlogit| <= 1e-9; float32 max |dlogit| <= 1e-5."""
    r64.target = "identical spikes, max |dlogit| <= 1e-9"
    r64.passed = r64.identical_spikes() and r64.max_abs_logit_diff <= 1e-9
    r32.target = "max |dlogit| <= 1e-5"
    r32.passed = r32.max_abs_logit_diff <= 1e-5
    return [r64, r32]


def trace_check(model: SVFormer, graph: nx.DiGraph, inputs: torch.Tensor, batch_size: int = 8) -> list[FidelityReport]:
    """Reference interpreter vs the PyTorch model, in float64 and float32 (targets: :func:`judge_trace`)."""
    return judge_trace(*(compare_chain([(model, "float"), (graph, "float")], inputs, dt, [f"trace {name}"],
                                       batch_size)[0][0]
                         for dt, name in ((torch.float64, "float64"), (torch.float32, "float32"))))


def check_chain(res: PipelineResult, inputs: torch.Tensor, model: SVFormer | None = None,
                batch_size: int = 8, on_step: Callable[[str], None] | None = None) -> PipelineResult:
    """Check every step of ``res`` against the one before on ``inputs`` (``model`` -> traced -> folded ->
    fused -> quantized), running each graph once per dtype: the float64 chain ends with the quantized graph
    (fixed-point semantics), the float32 chain with the last float graph. Sets ``res.reports`` (in step
    order, float64 then float32 per step), ``res.quant.fidelity`` and ``res.logits``."""
    step = on_step or (lambda name: None)
    floats = [(k, g) for k, g in res.graphs.items() if k != "quantized"]
    subjects = ([("trace", model)] if model is not None else []) + [(k, g) for k, g in floats]
    names = {"traced": "trace", "folded": "fold_bn", "fused": "fuse_linear"}
    judges = {"trace": judge_trace, "fold_bn": fold_pass.judge, "fuse_linear": fuse_pass.judge}
    pairs = [names[k] for k, _ in floats][0 if model is not None else 1:]
    qg = res.graphs.get("quantized")
    by_dtype: dict[str, list[FidelityReport]] = {}
    for dt, name in ((torch.float64, "float64"), (torch.float32, "float32")):
        chain = [(g, "float") for _, g in subjects]
        labels = [f"{p} {name}" for p in pairs]
        if qg is not None and name == "float64":
            chain.append((qg, "fixed"))
            labels.append(quant_pass.label(qg))
        if len(chain) < 2:
            continue
        step(f"check {name}")
        reports, last = compare_chain(chain, inputs, dt, labels, batch_size)
        by_dtype[name] = reports
        if name == "float64":
            res.logits["fixed" if qg is not None else "float64"] = last
    res.reports = []
    for i, p in enumerate(pairs):
        res.reports += judges[p](by_dtype["float64"][i], by_dtype["float32"][i])
    if qg is not None:
        fid = quant_pass.judge(by_dtype["float64"][-1])
        res.quant = quant_pass.report(qg, fid)
        res.reports.append(fid)
    return res


def run_pipeline(source: SVFormer | nx.DiGraph, *, fuse: bool = False, quant: QuantConfig | None = None,
                 calibration: torch.Tensor | None = None, check_inputs: torch.Tensor | None = None,
                 batch_size: int = 8, on_step: Callable[[str], None] | None = None) -> PipelineResult:
    """Trace (if given a model) and run the passes in :data:`PASS_ORDER`.

    ``quant`` enables quantization (needs ``calibration`` frames ``[T, B, C, H, W]``); ``fuse``
    enables ``fuse_linear``. With ``check_inputs`` (held-out frames) every step is checked against
    the graph before it (:func:`check_chain`); the quantized graph is checked against the float graph
    it came from. ``on_step(name)`` is called before each step (progress display).
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
        res.graphs["traced"] = timed("trace", lambda: trace(source))
    elif isinstance(source, nx.DiGraph):
        res.graphs["traced"] = ir.validate(source)
    else:
        raise SVFormerError(f"run_pipeline expects an SVFormer or an IR graph, got {type(source).__name__}")
    res.graphs["folded"] = timed("fold_bn", lambda: fold_bn(res.graphs["traced"]))
    if fuse:
        folded = res.graphs["folded"]
        res.graphs["fused"] = timed("fuse_linear", lambda: fuse_linear(folded))
        res.fusion = fusion_report(folded, res.graphs["fused"])
    if quant is not None:
        if calibration is None:
            raise SVFormerError("quantization needs calibration inputs")
        float_graph = res.float_graph
        res.graphs["quantized"] = timed("quantize", lambda: quantize(float_graph, calibration, quant, batch_size))
    if check_inputs is not None:
        check_chain(res, check_inputs, source if isinstance(source, SVFormer) else None, batch_size, step)
    elif quant is not None:
        res.quant = quant_pass.report(res.graphs["quantized"])
    return res
