"""Fidelity checks: compare two executions (IR graphs or the PyTorch model) on the same inputs.

Figures reported (:class:`FidelityReport`): max |logit difference|, top-1 agreement, and per
neuron layer the number of spike positions (neurons x steps x clips), the spikes of each side,
the *flips* (positions where the two sides differ), flips per reference spike, precision and recall
of the new side's spikes, and the first (layer, step) where the two runs diverge. Every spike
comparison in the project goes through :class:`SpikeTally` (:func:`compare_spikes` for one run).
Layers are matched by name, which works because the tracer names neuron nodes after their PyTorch
modules and passes never rename them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import torch
from spikingjelly.activation_based import neuron as sj_neuron
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.model import SVFormer
from torch import Tensor

from . import ir
from .reference import ReferenceModel

Subject = nx.DiGraph | SVFormer


@dataclass
class LayerAgreement:
    """Spike agreement of one neuron layer (counts over neurons x steps x clips).

    ``flips``: positions where exactly one side spikes; ``matched``: positions where both spike;
    ``first_step``: the first time step with a flip (``None``: identical spikes).
    """

    name: str
    positions: int
    spikes_ref: int
    spikes_new: int
    flips: int
    matched: int = 0
    first_step: int | None = None

    @property
    def agreement(self) -> float:
        """Fraction of positions where both sides agree (1.0 = identical)."""
        return 1.0 - self.flips / self.positions if self.positions else 1.0

    @property
    def flip_rate(self) -> float:
        """Flips per reference spike."""
        return self.flips / max(self.spikes_ref, 1)

    @property
    def precision(self) -> float:
        """Share of the new side's spikes that the reference also fires (1.0 when the new side is silent)."""
        return self.matched / self.spikes_new if self.spikes_new else 1.0

    @property
    def recall(self) -> float:
        """Share of the reference's spikes that the new side also fires (1.0 when the reference is silent)."""
        return self.matched / self.spikes_ref if self.spikes_ref else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agreement": self.agreement, "flip_rate": self.flip_rate,
                "precision": self.precision, "recall": self.recall}


_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def _popcount(bits: np.ndarray) -> int:
    """Set bits in a uint8 array."""
    return int(_BITS[bits].sum())


@dataclass
class PackedSpikes:
    """The spikes of one layer, 8 neuron-steps per byte: ``bits`` uint8 ``[T, ceil(n / 8)]`` (numpy's
    ``packbits`` order), ``n`` positions per step. A run's spikes are kept packed until compared, so
    that a whole clip of SVFormer-base (about 10^9 neuron-steps) costs 1/8 of a bool tensor."""

    bits: np.ndarray
    n: int

    @property
    def steps(self) -> int:
        return int(self.bits.shape[0])

    @classmethod
    def of(cls, x: Tensor | Any) -> PackedSpikes:
        """Pack ``x`` (any values, non-zero = spike, time step first ``[T, ...]``); packed input is returned as is."""
        if isinstance(x, PackedSpikes):
            return x
        a = torch.as_tensor(x)
        a = (a != 0).reshape(a.shape[0] if a.dim() else 1, -1)
        return cls(np.packbits(a.numpy(), axis=1), int(a.shape[1]))

    @classmethod
    def stack(cls, steps: list[Tensor]) -> PackedSpikes:
        """Pack a list of per-step spike tensors (step ``t`` is row ``t``)."""
        rows = [np.packbits((s != 0).reshape(-1).numpy()) for s in steps]
        return cls(np.stack(rows), int(steps[0].numel()) if steps else 0)

    def count(self) -> int:
        return _popcount(self.bits)


class SpikeTally:
    """The one spike comparison: accumulate per-layer agreement of two runs over batches.

    :meth:`add` takes the spikes (any values; non-zero = spike) of one layer from both runs, time step
    first (``[T, ...]``, or :class:`PackedSpikes`), and may be called repeatedly for the same layer (more
    clips). Layers keep the
    order of their first :meth:`add` (network order), which decides the first divergence among layers
    that diverge at the same step.
    """

    def __init__(self) -> None:
        self._layers: dict[str, LayerAgreement] = {}

    def add(self, name: str, ref: Tensor | Any, new: Tensor | Any) -> LayerAgreement:
        a, b = PackedSpikes.of(ref), PackedSpikes.of(new)
        if (a.steps, a.n) != (b.steps, b.n):
            raise SVFormerError(f"neuron layer {name}: spike shapes differ ({a.steps} x {a.n} vs {b.steps} x {b.n} "
                                "neuron-steps)")
        la = self._layers.setdefault(name, LayerAgreement(name, 0, 0, 0, 0))
        diff = a.bits ^ b.bits
        la.positions += a.steps * a.n
        la.spikes_ref += a.count()
        la.spikes_new += b.count()
        la.flips += _popcount(diff)
        la.matched += _popcount(a.bits & b.bits)
        rows = np.flatnonzero(diff.any(axis=1))
        if rows.size:
            step = int(rows[0])
            la.first_step = step if la.first_step is None else min(la.first_step, step)
        return la

    @property
    def layers(self) -> list[LayerAgreement]:
        return list(self._layers.values())


def first_divergence(layers: Iterable[LayerAgreement]) -> dict[str, Any] | None:
    """The earliest time step with a flip and the first layer (in network order) flipping then, or None."""
    hits = [(la.first_step, i, la.name) for i, la in enumerate(layers) if la.first_step is not None]
    if not hits:
        return None
    step, _, name = min(hits)
    return {"layer": name, "step": step}


def spike_totals(layers: Iterable[LayerAgreement]) -> dict[str, Any]:
    """Totals over layers: positions, spikes of both sides, flips, flips per reference spike, agreement,
    precision, recall and the first divergence."""
    layers = list(layers)
    total = LayerAgreement("total", *(sum(getattr(la, k) for la in layers)
                                      for k in ("positions", "spikes_ref", "spikes_new", "flips", "matched")))
    return {"positions": total.positions, "spikes_ref": total.spikes_ref, "spikes_new": total.spikes_new,
            "flips": total.flips, "flip_rate": total.flip_rate, "spike_agreement": total.agreement,
            "precision": total.precision, "recall": total.recall, "first_divergence": first_divergence(layers)}


def compare_spikes(ref: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Compare two runs' spikes by layer name (``[T, ...]`` each; layers of ``ref`` missing in ``new`` are
    skipped): :func:`spike_totals` plus ``layers``, the per-layer :meth:`LayerAgreement.to_dict` rows."""
    tally = SpikeTally()
    for name, a in ref.items():
        if name in new:
            tally.add(name, a, new[name])
    return {**spike_totals(tally.layers), "layers": [la.to_dict() for la in tally.layers]}


@dataclass
class FidelityReport:
    """Result of one comparison; ``passed`` is set by the check that owns a target."""

    label: str
    dtype: str
    clips: int
    max_abs_logit_diff: float
    top1_agreement: float
    layers: list[LayerAgreement] = field(default_factory=list)
    target: str | None = None
    passed: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def positions(self) -> int:
        return sum(layer.positions for layer in self.layers)

    @property
    def spikes_ref(self) -> int:
        return sum(layer.spikes_ref for layer in self.layers)

    @property
    def flips(self) -> int:
        return sum(layer.flips for layer in self.layers)

    @property
    def spike_agreement(self) -> float:
        return 1.0 - self.flips / self.positions if self.positions else 1.0

    @property
    def first_divergence(self) -> dict[str, Any] | None:
        """``{"layer", "step"}``: where the two runs first differ (earliest step, then network order)."""
        return first_divergence(self.layers)

    @property
    def flip_rate(self) -> float:
        """Flips per reference spike, over all layers."""
        return self.flips / max(self.spikes_ref, 1)

    def identical_spikes(self) -> bool:
        return self.flips == 0

    def worst_layers(self, n: int = 3) -> list[LayerAgreement]:
        """The ``n`` layers with the most flips per reference spike."""
        return sorted(self.layers, key=lambda la: -la.flip_rate)[:n]

    def summary(self) -> str:
        """One line: label, logits, top-1, spikes (flips per reference spike, precision, recall, divergence)."""
        t = spike_totals(self.layers)
        d = t["first_divergence"]
        where = "none" if d is None else f"step {d['step']} {d['layer']}"
        s = (f"{self.label} [{self.dtype}, {self.clips} clips]: max |dlogit| {self.max_abs_logit_diff:.3g}, "
             f"top-1 agreement {self.top1_agreement:.2%}, spike flips {self.flips} of {self.spikes_ref} reference "
             f"spikes ({self.flip_rate:.2%}; precision {t['precision']:.2%}, recall {t['recall']:.2%}; first "
             f"divergence {where}; neuron-step agreement "
             f"{self.spike_agreement:.6f})")
        if self.passed is not None:
            s += f" -> {'PASS' if self.passed else 'FAIL'} ({self.target})"
        return s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [la.to_dict() for la in self.layers]
        d.update(spike_totals(self.layers))
        return d


# ---------------------------------------------------------------------------------------------
def batches(inputs: Tensor | Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    """Yield frame batches ``[T, b, C, H, W]`` from one tensor or an iterable of tensors."""
    if isinstance(inputs, Tensor):
        if inputs.dim() != 5:
            raise SVFormerError(f"inputs must be frames [T, B, C, H, W], got shape {list(inputs.shape)}")
        for i in range(0, inputs.shape[1], batch_size):
            yield inputs[:, i:i + batch_size]
    else:
        for x in inputs:
            yield from batches(x, batch_size)


def neuron_layers(subject: Subject) -> list[str]:
    """Names of the neuron layers of a graph or a model, in network order (how runs are matched)."""
    if isinstance(subject, SVFormer):
        return [n for n, m in subject.named_modules() if isinstance(m, sj_neuron.BaseNode)]
    if isinstance(subject, nx.DiGraph):
        return list(ir.neuron_names(subject))
    raise SVFormerError(f"cannot run a {type(subject).__name__}; give an IR graph or an SVFormer")


class _Runner:
    """Runs a graph or a model on batches and returns logits and neuron spikes by layer name."""

    def __init__(self, subject: Subject, dtype: torch.dtype, mode: str):
        self.is_model = isinstance(subject, SVFormer)
        if self.is_model:
            self.model = copy.deepcopy(subject).to(dtype).eval()
            self.dtype = dtype
            self.neurons = {n: m for n, m in self.model.named_modules() if isinstance(m, sj_neuron.BaseNode)}
        elif isinstance(subject, nx.DiGraph):
            self.ref = ReferenceModel(subject, dtype=dtype, mode=mode)
            self.neurons = {n: None for n in ir.neuron_names(subject)}
        else:
            raise SVFormerError(f"cannot run a {type(subject).__name__}; give an IR graph or an SVFormer")

    def __call__(self, x: Tensor, observe: Callable[[str, Tensor], None] | None = None
                 ) -> tuple[Tensor, dict[str, PackedSpikes]]:
        """Logits and packed spikes of batch ``x``; ``observe(name, value)`` also sees every node output of a
        graph (:meth:`export.reference.ReferenceModel.run`)."""
        with torch.no_grad():
            if not self.is_model:
                steps: dict[str, list[np.ndarray]] = {n: [] for n in self.neurons}
                sizes: dict[str, int] = {}

                def keep(name: str, value: Tensor) -> None:
                    if name in steps:  # packed at once: 1 bit per neuron and step
                        steps[name].append(np.packbits((value != 0).reshape(-1).numpy()))
                        sizes[name] = int(value.numel())
                    if observe is not None:
                        observe(name, value)

                logits, _ = self.ref.run(x, observe=keep)
                return logits, {n: PackedSpikes(np.stack(v), sizes[n]) for n, v in steps.items()}
            spikes: dict[str, PackedSpikes] = {}
            hooks = [m.register_forward_hook(lambda mod, i, o, n=n: spikes.__setitem__(n, PackedSpikes.of(o)))
                     for n, m in self.neurons.items()]
            try:
                logits = self.model.forward_sequence(x.to(self.dtype))
            finally:
                for h in hooks:
                    h.remove()
            return logits, spikes


def compare(ref: Subject, new: Subject, inputs: Tensor | Iterable[Tensor], dtype: torch.dtype = torch.float64,
            ref_mode: str = "float", new_mode: str = "float", label: str = "", batch_size: int = 8) -> FidelityReport:
    """Run ``ref`` and ``new`` on the same inputs and report logit and spike agreement.

    ``*_mode`` selects the graph semantics (``"float"`` or ``"fixed"``, see :mod:`export.reference`);
    a fixed-point side always runs in float64. Neuron layers present on both sides are compared.
    """
    reports, _ = compare_chain([(ref, ref_mode), (new, new_mode)], inputs, dtype, [label], batch_size)
    return reports[0]


def compare_chain(subjects: list[tuple[Subject, str]], inputs: Tensor | Iterable[Tensor], dtype: torch.dtype,
                  labels: list[str], batch_size: int = 8) -> tuple[list[FidelityReport], Tensor]:
    """Compare every consecutive pair of ``subjects`` (``(graph or model, mode)``, e.g. model -> traced -> folded)
    on the same inputs, running each subject once per batch: report ``i`` (labelled ``labels[i]``) compares
    subject ``i`` with subject ``i + 1``. Also returns the last subject's logits ``[clips, classes]`` (float64),
    so that a later check against the same graph need not run it again."""
    if len(subjects) < 2 or len(labels) != len(subjects) - 1:
        raise SVFormerError("compare_chain needs two or more subjects and one label per consecutive pair")
    layers = [neuron_layers(s) for s, _ in subjects]
    names = [[n for n in a if n in set(b)] for a, b in zip(layers[:-1], layers[1:], strict=True)]
    tallies = [SpikeTally() for _ in labels]
    max_diff, agree = [0.0] * len(labels), [0] * len(labels)
    clips, last = 0, []
    for x in batches(inputs, batch_size):
        # one subject at a time (its runner is built for the batch and dropped after it): the peak memory is one
        # executable copy of the network plus the packed spikes of the subject before
        prev = _Runner(subjects[0][0], dtype, subjects[0][1])(x)
        for i, (subject, mode) in enumerate(subjects[1:]):
            cur = _Runner(subject, dtype, mode)(x)
            (la, sa), (lb, sb) = prev, cur
            max_diff[i] = max(max_diff[i], float((la.double() - lb.double()).abs().max()))
            agree[i] += int((la.argmax(-1) == lb.argmax(-1)).sum())
            for n in names[i]:
                tallies[i].add(n, sa[n], sb[n])
            prev = cur
        last.append(prev[0].double())
        clips += x.shape[1]
    if clips == 0:
        raise SVFormerError("fidelity check needs at least one input clip")
    dt = str(dtype).replace("torch.", "")
    reports = [FidelityReport(label=label, dtype=dt, clips=clips, max_abs_logit_diff=max_diff[i],
                              top1_agreement=agree[i] / clips, layers=tallies[i].layers)
               for i, label in enumerate(labels)]
    return reports, torch.cat(last)
