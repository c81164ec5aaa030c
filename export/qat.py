"""Quantization-aware fine-tuning: a differentiable view of a quantized graph that computes the fixed-point spec.

:class:`QATModel` is the reference interpreter in ``"fixed"`` mode (:class:`export.reference.ReferenceModel`)
with two changes and nothing else:

- The integer parameters the op hooks read through ``ref.p`` (weight and bias codes of conv/linear/conv3d,
  the multiplier and bias codes of per-step affines, the 12-bit decay and the threshold of PLIF neurons)
  are computed at every forward from trainable float parameters, with the quantize pass's scales
  (``weight_scale``, ``in_scale``, ``out_scale``, ``shift`` fixed by calibration) and the spec's rounding
  (:func:`weight_codes`, :func:`bias_codes`, :func:`affine_multiplier`, :func:`decay_code`,
  :func:`theta_code`).
- The backend's two non-differentiable primitives, ``floor`` (rounding right shifts, Lava's truncation
  toward zero) and ``fire`` (``v > theta``), get straight-through / surrogate gradients. Forward values
  are unchanged: the same float64 operations on the same integers as ``ReferenceModel(mode="fixed")``.

So the forward pass *is* the integer spec (same op hooks, same arithmetic): :meth:`QATModel.to_graph`
writes the current codes into a copy of the quantized graph, and the integer executor, the fixed-point
ONNX graphs and Lava (netx parts) run exactly what was trained. The scales stay those of the calibration;
weights beyond ``weight_scale·(2^(w-1) - 1)`` saturate (clamped codes, zero gradient).

Trainable: every weight and bias (float32, the graph's own dtype, so the codes of a re-quantization with
the same scales are the same), affine scale and bias (float64), PLIF leak parameters ``a`` (float64).
Thresholds follow from V_th (fixed, as in the float model), the decay and the input scale.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import networkx as nx
import numpy as np
import torch
from svformer_deploy.svformer.errors import SVFormerError
from torch import Tensor, nn

from . import ir
from .passes.quantize import (
    DECAY_ONE,
    MULT_BITS,
    accumulator_bound,
    bits_for,
    check_accumulators,
    input_code_bound,
    qmax,
)
from .reference import ReferenceModel

SURROGATE_ALPHA = 2.0  # SpikingJelly's ATan surrogate (the float model's default), in threshold units


def _straight_through(fn: Callable[[Tensor], Tensor], name: str) -> Callable[[Tensor], Tensor]:
    """``fn`` in the forward pass, identity gradient in the backward pass."""

    def forward(ctx, x):  # noqa: ANN001 - autograd.Function signature
        return fn(x)

    def backward(ctx, g):  # noqa: ANN001
        return g

    cls = type(name, (torch.autograd.Function,), {"forward": staticmethod(forward), "backward": staticmethod(backward)})
    return cls.apply


ste_floor = _straight_through(torch.floor, "STEFloor")
ste_round = _straight_through(torch.round, "STERound")  # half to even, as np.rint in the quantize pass
ste_ceil = _straight_through(torch.ceil, "STECeil")


def _sum_to(g: Tensor, shape: torch.Size) -> Tensor:
    """Reduce a broadcast gradient ``g`` back to ``shape``."""
    while g.dim() > len(shape):
        g = g.sum(0)
    for i, s in enumerate(shape):
        if s == 1 and g.shape[i] != 1:
            g = g.sum(i, keepdim=True)
    return g


class _Fire(torch.autograd.Function):
    """s = (v > theta) with the ATan surrogate of SpikingJelly on the membrane in threshold units: with
    z = (v - theta - 1/2) / (theta + 1) (the float model's H - V_th over V_th), ds/dv = α/2 / (1 + (π/2·α·z)²)
    / (theta + 1), ds/dtheta = -ds/dv."""

    @staticmethod
    def forward(ctx, v, theta):  # noqa: ANN001
        ctx.save_for_backward(v, theta)
        return (v > theta).to(torch.float64)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001
        v, theta = ctx.saved_tensors
        unit = (theta + 1.0).clamp(min=1.0)
        z = (v - theta - 0.5) / unit
        sg = g * (SURROGATE_ALPHA / 2.0) / (1.0 + (math.pi / 2.0 * SURROGATE_ALPHA * z) ** 2) / unit
        return sg, (_sum_to(-sg, theta.shape) if ctx.needs_input_grad[1] else None)


def fire(v: Tensor, theta: Tensor) -> Tensor:
    """Spikes ``v > theta`` (0/1 float64) with a surrogate gradient (:class:`_Fire`)."""
    return _Fire.apply(v, theta)


# ---------------------------------------------------------------------------------------------
# the spec's quantizers, in torch (float64), differentiable (straight-through)
# ---------------------------------------------------------------------------------------------
def _axes(arr: Tensor, ndim: int) -> Tensor:
    return arr.reshape((-1,) + (1,) * (ndim - 1))


def weight_codes(w: Tensor, weight_scale: Tensor, bits: int) -> Tensor:
    """sat_w(round_half_even(W / weight_scale[c])), the quantize pass's weight codes (W promoted to float64)."""
    lim = float(qmax(bits))
    return ste_round(w.to(torch.float64) / _axes(weight_scale, w.dim())).clamp(-lim, lim)


def bias_codes(b: Tensor, weight_scale: Tensor, in_scale: float) -> Tensor:
    """round_half_even(b / (weight_scale[c]·in_scale)): the bias in accumulator units."""
    return ste_round(b.to(torch.float64) / _axes(weight_scale * in_scale, b.dim()))


def affine_multiplier(scale: Tensor, in_scale: Tensor, out_scale: float, shift: Tensor) -> Tensor:
    """m = round(A·Δ_in/Δ_out·2^shift) with the calibration's ``shift``, |m| <= 2^15 - 1: what
    :func:`export.passes.quantize.multiplier` returns for the same ratio (m·2^-shift ≈ A·Δ_in/Δ_out)."""
    lim = float(2 ** (MULT_BITS - 1) - 1)
    ratio = scale * torch.broadcast_to(in_scale, scale.shape[-1:]) / out_scale
    return ste_round(ratio * torch.pow(2.0, shift)).clamp(-lim, lim)


def decay_code(a: Tensor) -> Tensor:
    """decay = round(4096·sigmoid(a)) clamped to 1..4096 (the PLIF leak in 1/4096)."""
    k = 1.0 / (1.0 + torch.exp(-a))
    return ste_round(DECAY_ONE * k).clamp(1, DECAY_ONE)


def theta_code(a: Tensor, v_threshold: float, decay_input: bool, in_scale: Tensor, lava: bool) -> Tensor:
    """theta = ceil(T) - 1 (or 64·round(T/64) for Lava), T = 64·V_th/(ĝ·Δ_in), ĝ = sigmoid(a) with decay_input."""
    gain = 1.0 / (1.0 + torch.exp(-a)) if decay_input else torch.ones((), dtype=torch.float64)
    t_exact = 64.0 * v_threshold / (gain * in_scale)
    return 64 * ste_round(t_exact / 64.0) if lava else ste_ceil(t_exact) - 1


class QATModel(ReferenceModel):
    """The fixed-point forward of a quantized graph with trainable float parameters (module docstring)."""

    floor = staticmethod(ste_floor)
    fire = staticmethod(fire)

    def __init__(self, quant_graph: nx.DiGraph, train_leak: bool = True):
        if "quant" not in quant_graph.graph:
            raise SVFormerError("QAT needs a quantized graph (run the quantize pass with calibration clips)")
        super().__init__(quant_graph, mode="fixed")
        self.graph = ir.copy_graph(quant_graph)
        cfg = quant_graph.graph["quant"]
        self.weight_bits, self.lava = int(cfg["weight_bits"]), bool(cfg["lava_thresholds"])
        self.params = nn.ParameterDict()
        self.trained: dict[str, tuple[str, ...]] = {}  # node -> code fields computed from parameters
        for n in self.names:
            op, k = self.ops[n], self._key[n]
            if op.op in ir.WEIGHTED:
                self.params[k + "_weight"] = nn.Parameter(torch.from_numpy(np.array(op.weight)))
                fields = ("weight",)
                if op.bias is not None:
                    self.params[k + "_bias"] = nn.Parameter(torch.from_numpy(np.array(op.bias)))
                    fields += ("bias",)
                self.trained[n] = fields
            elif op.op == "affine":
                fields = ()
                if op.scale is not None:
                    self.params[k + "_scale"] = nn.Parameter(torch.from_numpy(op.scale.astype(np.float64)))
                    fields += ("m",)
                if op.bias is not None:
                    self.params[k + "_bias"] = nn.Parameter(torch.from_numpy(op.bias.astype(np.float64)))
                    fields += ("bias",)
                self.trained[n] = fields
            elif op.op == "neuron" and op.model == "plif" and train_leak:
                self.params[k + "_a"] = nn.Parameter(torch.tensor(float(op.a), dtype=torch.float64))
                self.trained[n] = ("decay", "theta")
        self._codes: dict[tuple[str, str], Tensor] = {}

    # -- the codes of the current parameters --------------------------------------------------
    def codes(self) -> dict[tuple[str, str], Tensor]:
        """Integer codes (float64 tensors, with gradients) of every trained ``(node, field)``."""
        out: dict[tuple[str, str], Tensor] = {}
        for n, fields in self.trained.items():
            op, k = self.ops[n], self._key[n]
            if op.op in ir.WEIGHTED:
                ws = self.p_fixed(n, "weight_scale")
                out[n, "weight"] = weight_codes(self.params[k + "_weight"], ws, self.weight_bits).to(self.wdtype)
                if "bias" in fields:
                    out[n, "bias"] = bias_codes(self.params[k + "_bias"], ws, float(self.quant(n)["in_scale"]))
            elif op.op == "affine":
                if "m" in fields:
                    out[n, "m"] = affine_multiplier(self.params[k + "_scale"], self.p_fixed(n, "in_scale"),
                                                    float(self.quant(n)["out_scale"]), self.p_fixed(n, "shift"))
                if "bias" in fields:
                    out[n, "bias"] = ste_round(self.params[k + "_bias"] / float(self.quant(n)["out_scale"]))
            elif op.op == "neuron":
                a = self.params[k + "_a"]
                out[n, "decay"] = decay_code(a)
                out[n, "theta"] = theta_code(a, op.v_threshold, op.decay_input, self.p_fixed(n, "in_scale"), self.lava)
        return out

    def p_fixed(self, n: str, field: str) -> Tensor:
        """The calibration-fixed array ``field`` of node ``n`` (float64)."""
        return torch.as_tensor(np.asarray(self.quant(n)[field], dtype=np.float64))

    def p(self, node: str, field: str) -> Tensor | None:
        got = getattr(self, "_codes", {}).get((node, field))
        return got if got is not None else super().p(node, field)

    def run(self, x: Tensor, record=False, observe=None):  # noqa: ANN001 - ReferenceModel.run's signature
        """:meth:`ReferenceModel.run` with the codes of the current parameters."""
        self._codes = self.codes()
        try:
            return super().run(x, record=record, observe=observe)
        finally:
            self._codes = {}

    # -- back to a graph ---------------------------------------------------------------------
    def to_graph(self) -> nx.DiGraph:
        """A copy of the quantized graph holding the current codes (the integer graph *is* this model) and the
        trained float parameters; ``acc_bits`` recomputed for the new weights."""
        g = ir.copy_graph(self.graph)
        with torch.no_grad():
            codes = self.codes()
        for (n, field), t in codes.items():
            g.nodes[n]["quant"][field] = np.asarray(t.detach().numpy().astype(np.int64)).reshape(
                np.shape(self.quant(n)[field]))
        acc_bits = {}
        for n, fields in self.trained.items():
            op, k = self.ops[n], self._key[n]
            q = g.nodes[n]["quant"]
            if op.op in ir.WEIGHTED:
                new = {"weight": self.params[k + "_weight"].detach().numpy().copy()}
                if "bias" in fields:
                    new["bias"] = self.params[k + "_bias"].detach().numpy().copy()
                ir.replace_op(g, n, dataclasses.replace(op, **new))
                acc_bits[n] = bits_for(accumulator_bound(q["weight"], q.get("bias"), input_code_bound(g, n)))
                q["acc_bits"] = np.asarray(acc_bits[n], dtype=np.int64)
            elif op.op == "affine":
                new = {f: self.params[k + "_" + f].detach().numpy().copy() for f in ("scale", "bias")
                       if k + "_" + f in self.params}
                ir.replace_op(g, n, dataclasses.replace(op, **new))
            elif op.op == "neuron":
                ir.replace_op(g, n, dataclasses.replace(op, a=self.params[k + "_a"].item()))
        check_accumulators(acc_bits)
        g.graph["quant"] = {**g.graph["quant"], "qat": True}
        return ir.validate(g)


@dataclasses.dataclass
class QATResult:
    """What :func:`finetune` did: per epoch mean loss and training accuracy (share of clips)."""

    history: list[dict[str, float]]
    seconds: float


def finetune(model: QATModel, batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]], epochs: int,
             lr: float = 1e-4, weight_decay: float = 0.0, label_smoothing: float = 0.1,
             on_epoch: Callable[[dict[str, float]], None] | None = None) -> QATResult:
    """Fine-tune ``model`` with AdamW on cross-entropy; ``batches(epoch)`` yields (frames ``[T, B, C, H, W]``,
    labels ``[B]``). The learning rate follows a cosine from ``lr`` to 0 over the epochs (per epoch). A progress
    bar per epoch counts its batches."""
    import time

    from svformer_deploy.svformer.progress import progress

    t0 = time.perf_counter()
    opt = torch.optim.AdamW(model.params.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
        total, correct, loss_sum = 0, 0, 0.0
        for x, y in progress(batches(epoch), f"QAT epoch {epoch + 1}/{epochs}", unit="batch"):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += int(y.numel())
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += loss.item() * int(y.numel())
        if total == 0:
            raise SVFormerError("QAT: no training clips")
        row = {"epoch": epoch + 1, "loss": loss_sum / total, "train_acc": correct / total}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return QATResult(history, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# the QAT graph inside a checkpoint, measurements, and the checkpoint-to-checkpoint run (train --qat)
# ---------------------------------------------------------------------------------------------
def pack_graph(g: nx.DiGraph) -> dict:
    """The checkpoint form of a QAT graph: its IR document (JSON text) and arrays (tensors), pickle-safe."""
    import json

    from .ir.serialize import to_json_and_arrays

    doc, arrays = to_json_and_arrays(g)
    return {"ir": json.dumps(doc), "arrays": {k: torch.from_numpy(np.array(a)) for k, a in arrays.items()}}


def unpack_graph(packed: dict, where: str) -> nx.DiGraph:
    """The QAT graph of a checkpoint's ``qat`` entry, checked as strictly as a bundle's IR (one-line errors)."""
    from .ir.serialize import from_json_and_arrays, strict_json_loads

    try:
        doc = strict_json_loads(packed["ir"], where, "QAT graph")
        arrays = {str(k): v.numpy() for k, v in packed["arrays"].items()}
    except (KeyError, TypeError, AttributeError) as e:
        raise SVFormerError(f"{where}: malformed QAT graph ({type(e).__name__}: {e})") from None
    g = from_json_and_arrays(doc, arrays)
    if not g.graph.get("quant", {}).get("qat") or any("quant" not in g.nodes[n] for n in g.nodes):
        raise SVFormerError(f"{where}: the QAT entry does not hold a quantized QAT graph")
    return g


def checkpoint_graph(ckpt) -> nx.DiGraph | None:  # noqa: ANN001 - svformer.checkpoint.Checkpoint
    """The QAT graph a checkpoint carries (``train --qat``), or None."""
    if not ckpt.qat:
        return None
    return unpack_graph(ckpt.qat.get("graph") or {}, ckpt.source or "checkpoint")


def measure(float_graph: nx.DiGraph, quant_graph: nx.DiGraph, clips: Tensor, labels: Tensor,
            batch_size: int = 8) -> dict[str, float]:
    """Accuracy of the integer graph on labelled clips ``[T, B, ...]``, its top-1 agreement with the float graph,
    and spikes flipped per float spike (:func:`export.fidelity.compare`, float64 float graph as reference)."""
    from .fidelity import compare_chain

    (fid,), logits = compare_chain([(float_graph, "float"), (quant_graph, "fixed")], clips, torch.float64,
                                   ["qat measure"], batch_size)
    return {"accuracy": float((logits.argmax(1) == labels).double().mean()), "top1_agreement": fid.top1_agreement,
            "flip_rate": fid.flip_rate, "flips": fid.flips, "spikes_ref": fid.spikes_ref, "clips": fid.clips}


@dataclasses.dataclass
class QATOptions:
    """Options of :func:`qat_checkpoint` (``svformer-deploy train --qat``)."""

    weight_bits: int = 8
    epochs: int = 2
    lr: float = 1e-4
    batch_size: int = 8
    per_channel: bool | None = None  # None: per-tensor with Lava thresholds when the graph has netx parts
    calibration_clips: int = 16
    eval_clips: int = 100
    max_train_clips: int | None = None
    seed: int = 0


def labelled_clips(dataset, n: int) -> tuple[Tensor, Tensor]:  # noqa: ANN001 - a ClipDataset
    """Up to ``n`` clips spread over ``dataset`` (unreadable ones left out): frames ``[T, B, ...]``, labels ``[B]``."""
    idx = np.linspace(0, len(dataset) - 1, num=min(n, len(dataset))).round().astype(int)
    clips, labels = [], []
    for i in dict.fromkeys(idx.tolist()):
        item = dataset[i]
        if isinstance(item, tuple) and isinstance(item[0], Tensor):
            clips.append(item[0])
            labels.append(int(item[1]))
    if not clips:
        raise SVFormerError("QAT: no readable clips in the data")
    return torch.stack(clips, dim=1), torch.tensor(labels)


def train_batches(train, batch_size: int, max_train_clips: int | None = None  # noqa: ANN001 - a ClipDataset
                  ) -> Callable[[int], Iterable[tuple[Tensor, Tensor]]]:
    """``batches(epoch)`` for :func:`finetune`: the training split shuffled per epoch, frames ``[T, B, ...]``, at
    most ``max_train_clips`` clips per epoch."""
    from svformer_deploy.svformer.data.datasets import make_loader

    def batches(epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
        seen = 0
        for b in make_loader(train, batch_size, epoch=epoch, shuffle=True):
            if b.clips.numel() == 0:
                continue
            if max_train_clips is not None and seen >= max_train_clips:
                break
            seen += b.clips.shape[0]
            yield b.clips.transpose(0, 1).contiguous(), b.labels

    return batches


def run_qat(ckpt, opts: QATOptions, on_epoch: Callable[[dict[str, float]], None] | None = None,  # noqa: ANN001
            where: str = "checkpoint") -> tuple[nx.DiGraph, dict]:
    """QAT of the float checkpoint ``ckpt`` (a loaded :class:`svformer.checkpoint.Checkpoint`) on its recorded
    training data: quantize (calibration on training clips), fine-tune the integer model, measure PTQ and QAT on
    held-out clips. Returns the fine-tuned integer graph and the summary. ``where`` names the checkpoint in errors.
    The one QAT path of ``train --qat`` and ``export --qat-epochs``."""
    from .exporter import input_spec, training_data
    from .passes.quantize import QuantConfig, quantize
    from .pipeline import run_pipeline
    from .writers.partition import partition

    config_check = QuantConfig(weight_bits=opts.weight_bits)  # refuses a bad bit width before any work
    if ckpt.qat:
        raise SVFormerError(f"{where}: already a QAT checkpoint; start from the float checkpoint")
    data = training_data(ckpt, input_spec(ckpt))
    if data is None:
        raise SVFormerError(f"{where}: QAT needs the training data the checkpoint's training record names, and it "
                            "is not there (train with svformer-deploy train, keep the data in place)")
    train, test, described = data
    torch.manual_seed(opts.seed)
    model = ckpt.build_model()
    float_graph = run_pipeline(model).graph
    netx = bool(partition(float_graph).parts) if opts.per_channel is None else not opts.per_channel
    config = QuantConfig(weight_bits=config_check.weight_bits, per_channel=not netx, lava_thresholds=netx)
    cal, _ = labelled_clips(train, opts.calibration_clips)
    ptq = quantize(float_graph, cal, config, batch_size=opts.batch_size)
    held, held_y = labelled_clips(test, opts.eval_clips)
    before = measure(float_graph, ptq, held, held_y, opts.batch_size)
    qat = QATModel(ptq)
    res = finetune(qat, train_batches(train, opts.batch_size, opts.max_train_clips), opts.epochs, lr=opts.lr,
                   on_epoch=on_epoch)
    g = qat.to_graph()
    after = measure(float_graph, g, held, held_y, opts.batch_size)
    summary = {"data": described, "quant": dict(g.graph["quant"]), "epochs": opts.epochs,
               "lr": opts.lr, "history": res.history, "seconds": res.seconds, "held_out_clips": int(held.shape[1]),
               "float_accuracy": float((run_float(float_graph, held, opts.batch_size).argmax(1) == held_y)
                                       .double().mean()),
               "ptq": before, "qat": after}
    return g, summary


def qat_checkpoint(init: str, out: str, opts: QATOptions,
                   on_epoch: Callable[[dict[str, float]], None] | None = None) -> dict:
    """:func:`run_qat` of the float checkpoint ``init``, written to ``out``: ``init`` plus a ``qat`` entry holding
    the fine-tuned integer graph (``export`` writes it instead of quantizing). Returns the summary."""
    from pathlib import Path

    from svformer_deploy.svformer.checkpoint import load_checkpoint
    from svformer_deploy.svformer.fileio import sha256_file, write_buffered_atomic

    from .passes.quantize import QuantConfig

    QuantConfig(weight_bits=opts.weight_bits)  # refuses a bad bit width before loading anything
    ckpt = load_checkpoint(init)
    g, summary = run_qat(ckpt, opts, on_epoch, where=str(init))
    summary = {"init": str(init), "init_sha256": sha256_file(init), **summary}
    ckpt.qat = {"graph": pack_graph(g), "summary": summary}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_buffered_atomic(out, lambda buf: torch.save(ckpt.to_dict(), buf))
    return summary


def run_float(graph: nx.DiGraph, clips: Tensor, batch_size: int = 8) -> Tensor:
    """Float64 logits of ``graph`` on ``clips`` ``[T, B, ...]``."""
    from .reference import run_graph

    return run_graph(graph, clips, torch.float64, batch_size=batch_size)[0]
