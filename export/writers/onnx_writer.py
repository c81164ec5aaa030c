"""ONNX export of an IR graph, unrolled over T, with the torch dynamo exporter; checked with onnxruntime.

The exported module is :class:`export.reference.ReferenceModel`, whose forward is a plain Python
loop over the T steps, so ``torch.onnx.export(..., dynamo=True)`` unrolls it: the ONNX graph takes
``frames`` ``[T, B, C, H, W]`` (float32, B dynamic) and returns ``logits`` ``[B, classes]``.

- ``mode="float"``: the folded float graph in float32 (what ``ir.json`` describes).
- ``mode="fixed"``: the quantized graph's fixed-point spec executed on floats holding integers
  (the fake-quantized model; float64 except the conv/linear weights, which are float32 because
  onnxruntime has no float64 Conv; exact while accumulators stay below 2^24); logits are float64.

:func:`check_onnx` runs the file in onnxruntime and compares it with the same ReferenceModel in
PyTorch (target: max |Δlogit| <= 1e-4, design.md).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import torch
from torch import Tensor

from svformer.errors import SVFormerError
from svformer.fileio import atomic_path

from ..fidelity import batches
from ..reference import ReferenceModel

TARGET_MAX_ABS_DIFF = 1e-4
INPUT_NAME = "frames"
OUTPUT_NAME = "logits"


def onnx_module(graph: nx.DiGraph, mode: str = "float") -> ReferenceModel:
    """The module that is exported for ``mode`` (``"float"`` or ``"fixed"``)."""
    if mode == "float":
        return ReferenceModel(graph, dtype=torch.float32, mode="float")
    if mode == "fixed":
        return ReferenceModel(graph, mode="fixed", weight_dtype=torch.float32)
    raise SVFormerError(f"unknown ONNX export mode {mode!r}; use 'float' or 'fixed'")


def write_onnx(graph: nx.DiGraph, path: str | Path, example: Tensor, mode: str = "float",
               opset: int | None = None) -> Path:
    """Export ``graph`` to ``path`` (atomically) with a dynamic batch axis; ``example``: frames ``[T, B, C, H, W]``."""
    path = Path(path)
    module = onnx_module(graph, mode)
    module.check_input(example)
    batch = torch.export.Dim("batch", min=1, max=4096)
    kwargs: dict[str, Any] = {"dynamo": True, "input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME],
                              "dynamic_shapes": {"x": {1: batch}}, "verbose": False, "external_data": False,
                              "optimize": True}  # also needed: unoptimised fixed-point graphs fail in onnxruntime
    if opset is not None:
        kwargs["opset_version"] = opset
    with atomic_path(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        try:
            with torch.no_grad():
                # an example batch of 2: a size-1 batch would be specialised to a constant by torch.export
                torch.onnx.export(module, (example[:, :1].repeat(1, 2, 1, 1, 1).contiguous(),), str(tmp), **kwargs)
        except (torch.onnx.errors.OnnxExporterError, RuntimeError) as e:  # pragma: no cover - exporter bugs
            raise SVFormerError(f"{path}: ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return path


@dataclass
class OnnxCheck:
    """onnxruntime vs PyTorch on the same frames: max |Δlogit|, top-1 agreement, clips."""

    label: str
    max_abs_diff: float
    top1_agreement: float
    clips: int
    target: str = f"max |dlogit| <= {TARGET_MAX_ABS_DIFF:g}"
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= TARGET_MAX_ABS_DIFF

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement,
                "clips": self.clips, "target": self.target, "passed": self.passed, "detail": self.detail}


def check_onnx(path: str | Path, graph: nx.DiGraph, inputs: Tensor, mode: str = "float",
               batch_size: int = 8, label: str = "onnx") -> OnnxCheck:
    """Run ``path`` in onnxruntime (CPU) and PyTorch on ``inputs`` ``[T, B, C, H, W]``.

    The PyTorch side is the float32 graph (``"float"``), or the exact integer spec (``"fixed"``: the
    fixed-point reference with float64 weights, so rounding of float32 accumulators above 2^24 in the
    exported file counts against it).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise SVFormerError(f"{path}: onnxruntime cannot load the file ({type(e).__name__}: {e})") from None
    module = onnx_module(graph, "float") if mode == "float" else ReferenceModel(graph, mode="fixed")
    max_diff, agree, clips = 0.0, 0, 0
    for x in batches(inputs, batch_size):
        x = x.to(torch.float32).contiguous()
        got = torch.from_numpy(sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
        with torch.no_grad():
            want = module(x)
        max_diff = max(max_diff, float((got.double() - want.double()).abs().max()))
        agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        clips += x.shape[1]
    if clips == 0:
        raise SVFormerError("the ONNX check needs at least one input clip")
    detail = ("onnxruntime vs the float32 graph in PyTorch" if mode == "float" else
              "onnxruntime vs the exact fixed-point spec (integers in float64) in PyTorch")
    return OnnxCheck(label=label, max_abs_diff=max_diff, top1_agreement=agree / clips, clips=clips, detail=detail)
