"""Export a checkpoint to a deployable bundle: the library function behind ``svformer-deploy export``.

:func:`export_checkpoint` loads the checkpoint safely, runs the pipeline (trace -> ``fold_bn`` ->
``fuse_linear`` (optional) -> ``quantize`` (optional), each step checked against the one before),
partitions the graph into what a neuromorphic core runs and what stays on a host, writes the
targets (NIR, ONNX, netx) into a bundle that appears only when complete, checks every written file
against the graph it came from, and records everything in ``manifest.json`` (``docs/export.md``).

Fidelity inputs (held-out clips for the checks, calibration clips for quantization), in order:

1. ``calibration`` / ``check_data`` paths (tensors ``.pt``/``.npy``/``.npz``, or video/event files
   decoded with the checkpoint's preprocessing; a folder is searched recursively).
2. The data the checkpoint was trained on, when its ``training`` record names it and the files
   still exist: the training split calibrates, the test split (held out during training) checks.
3. For checks only: the ``calibration`` clips after the ones used for calibration.
4. Random clips shaped by the preprocessing (a documented fallback, reported as such): N(0, 1)
   normalised frames for video, Poisson(0.2) event counts per pixel, polarity and step for events.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch
from svformer_deploy.svformer.checkpoint import Checkpoint, load_checkpoint
from svformer_deploy.svformer.checkpoint import versions as checkpoint_versions
from svformer_deploy.svformer.config import SVFormerConfig
from svformer_deploy.svformer.data.datasets import InputSpec
from svformer_deploy.svformer.errors import CheckFailed, SVFormerError
from svformer_deploy.svformer.interrupts import deferred_interrupts

from . import ir
from .bundle import BundleWriter, default_bundle_path, sha256_file
from .fidelity import FidelityReport, SpikeTally, spike_totals
from .passes.quantize import QuantConfig, load_calibration, quantize, search_calibration
from .passes.quantize import report as quant_report
from .pipeline import check_chain, run_pipeline
from .qat import checkpoint_graph
from .reference import ReferenceModel
from .writers.partition import Part, partition, record_part_io

TARGETS = ("nir", "onnx", "netx")
CHECK_BUDGET_MACS = 5e10  # default held-out clips: as many as fit this many dense MACs (2..100)
CALIBRATION_BUDGET_MACS = 2e11  # default calibration clips: as many as fit (2..32)
PART_CHECK_CLIPS = 4  # clips whose recorded spikes feed the NIR-part and netx checks


@dataclass
class ExportOptions:
    """What to export and how (the command's options; ``None`` means the documented default)."""

    output: str | Path | None = None
    weight_bits: int | None = None  # None: no quantization
    calibration: str | Path | None = None
    check_data: str | Path | None = None
    targets: tuple[str, ...] | None = None
    fuse: bool = False
    force: bool = False
    arch: str | None = None
    check_clips: int | None = None
    calibration_clips: int | None = None
    seed: int = 0
    calibration_search: bool = False  # per-layer weight-range search and bias correction (quantize.search_calibration)
    qat_epochs: int | None = None  # QAT of a float checkpoint on its recorded training data first (export.qat.run_qat)
    qat_lr: float | None = None  # its peak learning rate (None: QATOptions' default)
    onnx: str = "step"  # which ONNX graphs: "step" (model_step.onnx), "unrolled" (model.onnx ...) or "both"


@dataclass
class FidelityRow:
    """One line of the fidelity table: a pass or a writer checked against what it came from."""

    step: str
    label: str
    max_abs_diff: float | None = None
    spike_agreement: float | None = None
    top1_agreement: float | None = None
    clips: int | None = None
    target: str | None = None
    passed: bool | None = None
    detail: str = ""
    spikes: dict[str, Any] | None = None  # :func:`export.fidelity.spike_totals` of the spike comparison
    layers: list[dict[str, Any]] | None = None  # per-layer rows (:meth:`LayerAgreement.to_dict`)

    # the headline spike figures (from ``spikes``): flips per reference spike, precision, recall, first divergence
    @property
    def flip_rate(self) -> float | None:
        return None if self.spikes is None else self.spikes["flip_rate"]

    @property
    def precision(self) -> float | None:
        return None if self.spikes is None else self.spikes["precision"]

    @property
    def recall(self) -> float | None:
        return None if self.spikes is None else self.spikes["recall"]

    @property
    def first_divergence(self) -> dict[str, Any] | None:
        return None if self.spikes is None else self.spikes["first_divergence"]

    def to_dict(self) -> dict[str, Any]:
        """All fields; ``flip_rate`` (flips per reference spike), ``flips``, ``spikes_ref``, ``precision``,
        ``recall`` and ``first_divergence`` at the top level when spikes were compared (``spike_agreement``,
        the share of agreeing neuron-steps, silent ones included, is kept as an extra figure)."""
        d = asdict(self)
        if self.spikes is not None:
            d.update({k: self.spikes[k] for k in ("flip_rate", "flips", "spikes_ref", "precision", "recall",
                                                  "first_divergence")})
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FidelityRow:
        """The row of a manifest's ``fidelity.checks`` entry (:meth:`to_dict`; derived keys are dropped)."""
        from dataclasses import fields

        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_spikes(cls, step: str, label: str, tally: SpikeTally, clips: int, what: str) -> FidelityRow:
        """A row whose target is identical spikes, from the tally of a writer's file run against the graph."""
        totals = spike_totals(tally.layers)
        return cls(step=step, label=label, spike_agreement=totals["spike_agreement"], clips=clips,
                   target="identical spikes", passed=totals["flips"] == 0, spikes=totals,
                   layers=[la.to_dict() for la in tally.layers],
                   detail=f"{what}: {totals['flips']} flips of {totals['spikes_ref']} spikes")

    @classmethod
    def from_report(cls, step: str, r: FidelityReport) -> FidelityRow:
        return cls(step=step, label=r.label, max_abs_diff=r.max_abs_logit_diff,
                   spike_agreement=r.spike_agreement if r.positions else None, top1_agreement=r.top1_agreement,
                   clips=r.clips, target=r.target, passed=r.passed,
                   spikes=spike_totals(r.layers) if r.positions else None,
                   layers=[la.to_dict() for la in r.layers] if r.positions else None,
                   detail=f"{r.flips} spike flips of {r.spikes_ref} reference spikes ({r.dtype})")

    @classmethod
    def from_onnx(cls, label: str, r: Any) -> FidelityRow:
        """A row from an :class:`export.writers.onnx_writer.OnnxCheck` (``passed`` None: reported, not enforced)."""
        return cls(step="onnx", label=label, max_abs_diff=r.max_abs_diff, top1_agreement=r.top1_agreement,
                   clips=r.clips, target=r.target, passed=r.passed, detail=r.detail)


@dataclass
class ExportResult:
    """What an export produced (the ``--json`` document is :meth:`to_json`)."""

    output_dir: Path
    files: dict[str, Any]
    manifest: dict[str, Any]
    fidelity: list[FidelityRow]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.passed is not False for r in self.fidelity)

    @property
    def misses(self) -> list[FidelityRow]:
        return [r for r in self.fidelity if r.passed is False]

    def to_json(self) -> dict[str, Any]:
        fid = {r.label: {k: v for k, v in r.to_dict().items() if k != "label"} for r in self.fidelity}
        m = self.manifest
        return {"output_dir": str(self.output_dir), "files": self.files, "fidelity": fid, "passed": self.passed,
                "arch": m.get("arch"), "model_hash": m.get("model_hash"), "passes": m.get("passes"),
                "quantization": m.get("quantization"), "targets": m.get("targets"),
                "partition": m.get("partition", {}).get("summary"), "inputs": m.get("fidelity", {}).get("inputs"),
                "warnings": self.warnings, "timings": self.timings}


# ---------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------
def parse_targets(text: str | None) -> tuple[str, ...] | None:
    """``"nir,onnx"`` -> ("nir", "onnx"); None/"" -> None (the default); unknown names are refused."""
    if text is None or not text.strip():
        return None
    names = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    bad = [t for t in names if t not in TARGETS]
    if bad:
        raise SVFormerError(f"unknown export target {bad[0]!r}; choose from {', '.join(TARGETS)}")
    return names


def parse_quantize(text: str | None, bits: int | None) -> int | None:
    """``--quantize none|int8|int<N>`` and ``--bits N`` -> weight bits, or None for no quantization."""
    mode = (text or "none").strip().lower()
    if mode == "none":
        if bits is not None:
            return bits
        return None
    if not mode.startswith("int") or not mode[3:].isdigit():
        raise SVFormerError(f"--quantize {text!r}: use none, int8 or int<N> (e.g. int4)")
    n = int(mode[3:])
    if bits is not None and bits != n:
        raise SVFormerError(f"--quantize {text} and --bits {bits} disagree; give one of them")
    return n


def resolve_targets(targets: tuple[str, ...] | None, quantized: bool) -> tuple[str, ...]:
    if targets is None:
        return ("nir", "onnx", "netx") if quantized else ("nir", "onnx")
    if "netx" in targets and not quantized:
        raise SVFormerError("the netx target needs a quantized graph (integer weights and thresholds); "
                            "add --quantize int8 or drop netx from --targets")
    return targets


# ---------------------------------------------------------------------------------------------
# fidelity inputs
# ---------------------------------------------------------------------------------------------
def input_spec(ckpt: Checkpoint) -> InputSpec:
    """The checkpoint's :class:`InputSpec`: its ``preprocessing``, checked against its config."""
    return InputSpec.from_preprocessing(ckpt.preprocessing, ckpt.config, where=ckpt.source or "checkpoint")


def _clips_from(dataset: Any, n: int, spread: bool) -> list[torch.Tensor]:
    idx = np.linspace(0, len(dataset) - 1, num=min(n, len(dataset))).round().astype(int) if spread \
        else np.arange(min(n, len(dataset)))
    out = []
    for i in dict.fromkeys(idx.tolist()):
        item = dataset[i]
        if isinstance(item, tuple) and isinstance(item[0], torch.Tensor):
            out.append(item[0])
    return out


def training_data(ckpt: Checkpoint, spec: InputSpec) -> tuple[Any, Any, str] | None:
    """(train, test, description) datasets named by the checkpoint's training record, if still on disk."""
    stored = (ckpt.training or {}).get("config")
    if not isinstance(stored, dict) or not stored.get("source"):
        return None
    from svformer_deploy.svformer.data import datasets as ds

    source, data = stored["source"], stored.get("data")
    try:
        if source == "nmnist" and data and Path(data).is_dir():
            return ds.nmnist_dataset(data, "train", spec), ds.nmnist_dataset(data, "test", spec), f"N-MNIST {data}"
        if source == "synthetic":
            root = Path(data) if data else Path(stored.get("out_dir", "")) / "synthetic-data"
            if (root / "classes.txt").is_file():
                return (ds.synthetic_dataset(root, "train", spec), ds.synthetic_dataset(root, "test", spec),
                        f"synthetic set {root}")
            return None
        if not data or not Path(data).exists():
            return None
        test_data = stored.get("test_data")
        holdout, seed = float(stored.get("holdout", 0.2)), int(stored.get("seed", 0))
        if source == "csv":
            train = ds.csv_dataset(data, spec)
            test = ds.csv_dataset(test_data, spec, class_names=train.class_names) if test_data else None
        else:
            root = Path(data)
            if test_data is None and (root / "train").is_dir() and (root / "test").is_dir():
                train = ds.folder_dataset(root / "train", spec)
                test = ds.folder_dataset(root / "test", spec, class_names=train.class_names)
            else:
                train = ds.folder_dataset(root, spec)
                test = ds.folder_dataset(test_data, spec, class_names=train.class_names) if test_data else None
        if test is None:
            train, test = ds.split_holdout(train, holdout, seed)
        return train, test, f"{source} {data}"
    except SVFormerError:
        return None


def random_clips(spec: InputSpec, n: int, seed: int) -> torch.Tensor:
    """Random frames ``[T, n, C, S, S]`` shaped like the preprocessing's output (the fallback inputs)."""
    g = torch.Generator().manual_seed(seed)
    shape = (spec.time_steps, n, spec.channels, spec.size, spec.size)
    if spec.kind == "events":
        return torch.poisson(torch.full(shape, 0.2), generator=g)
    if spec.kind == "video-events":
        return torch.rand(shape, generator=g) * (torch.rand(shape, generator=g) < 0.1)
    return torch.randn(shape, generator=g)


@dataclass
class Inputs:
    calibration: torch.Tensor | None
    check: torch.Tensor | None
    description: dict[str, Any]


def default_clip_counts(ckpt: Checkpoint, quantized: bool, opts: ExportOptions) -> tuple[int, int]:
    from svformer_deploy.svformer.complexity import dense_macs

    macs = max(dense_macs(ckpt.config), 1)
    check = opts.check_clips if opts.check_clips is not None else int(np.clip(CHECK_BUDGET_MACS // macs, 2, 100))
    cal = opts.calibration_clips if opts.calibration_clips is not None else \
        int(np.clip(CALIBRATION_BUDGET_MACS // macs, 2, 32))
    return max(0, check), (max(1, cal) if quantized else 0)


def resolve_inputs(ckpt: Checkpoint, opts: ExportOptions, quantized: bool) -> Inputs:
    """Calibration and held-out check clips, by the rules in the module docstring."""
    spec = input_spec(ckpt)
    n_check, n_cal = default_clip_counts(ckpt, quantized, opts)
    desc: dict[str, Any] = {"kind": spec.kind, "check_clips": 0, "calibration_clips": 0}
    cal = check = rest = None
    if opts.calibration is not None:
        got = load_calibration(opts.calibration, spec, limit=n_cal + (n_check if opts.check_data is None else 0))
        cal = got[:, :n_cal] if quantized else None
        rest = got[:, n_cal:] if quantized else got
        desc["calibration"] = str(opts.calibration)
    if opts.check_data is not None and n_check > 0:
        check = load_calibration(opts.check_data, spec, limit=n_check)
        desc["check"] = str(opts.check_data)
    if (quantized and cal is None) or (check is None and n_check > 0):
        found = training_data(ckpt, spec)
        if found is not None:
            train, test, what = found
            if quantized and cal is None:
                clips = _clips_from(train, n_cal, spread=True)
                if clips:
                    cal, desc["calibration"] = torch.stack(clips, 1), f"training split of {what}"
            if check is None and n_check > 0:
                clips = _clips_from(test, n_check, spread=False)
                if clips:
                    check, desc["check"] = torch.stack(clips, 1), f"held-out split of {what}"
    if check is None and n_check > 0 and rest is not None and rest.shape[1] > 0:
        check, desc["check"] = rest[:, :n_check], f"{opts.calibration} (the clips after the calibration ones)"
    channels = ckpt.config.in_channels
    if quantized and cal is None:
        cal = random_clips(spec, n_cal, opts.seed)
        desc["calibration"] = "random (no --calibration and no training data found)"
    if check is None and n_check > 0:
        check = random_clips(spec, n_check, opts.seed + 1)
        desc["check"] = "random (no --check-data, --calibration or training data found)"
    for name, x in (("calibration", cal), ("check", check)):
        if x is not None:
            want = (ckpt.config.time_steps, channels, ckpt.config.img_size, ckpt.config.img_size)
            if (x.shape[0],) + tuple(x.shape[2:]) != want:
                raise SVFormerError(f"{desc.get(name)}: {name} clips have shape {list(x.shape)} [T, B, C, H, W]; "
                                    f"the model takes T={want[0]}, {want[1]}x{want[2]}x{want[3]}")
    desc["check_clips"] = 0 if check is None else int(check.shape[1])
    desc["calibration_clips"] = 0 if cal is None else int(cal.shape[1])
    return Inputs(cal, check, desc)


# ---------------------------------------------------------------------------------------------
# the export
# ---------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    out = dict(checkpoint_versions())
    for dist in ("nir", "nirtorch", "onnx", "onnxscript", "onnxruntime", "h5py", "numpy", "networkx"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["python"] = platform.python_version()
    return out


def check_batch_size(config: SVFormerConfig) -> int:
    """Clips per batch in the checks: large for small models (per-op overhead dominates), 1 for SVFormer-base."""
    from svformer_deploy.svformer.complexity import dense_macs

    return int(np.clip(4e9 // max(dense_macs(config), 1), 1, 64))


def _mac_share(g: nx.DiGraph, parts: list[Part]) -> float:
    """Share of the graph's dense MACs done inside ``parts``."""
    costs = ir.graph_costs(g)
    total = sum(c["macs"] for c in costs.values()) or 1
    core = sum(costs.get(n, {"macs": 0})["macs"] for n in {n for p in parts for n in p.nodes})
    return core / total


def record_nodes(graph: nx.DiGraph, x: torch.Tensor, mode: str, names: set[str]) -> dict[str, torch.Tensor]:
    """The outputs of nodes ``names`` on clips ``x`` ``[T, B, C, H, W]`` (reference interpreter, float32 or fixed)."""
    ref = ReferenceModel(graph, dtype=torch.float32, mode=mode)
    with torch.no_grad():
        return ref.run(x, record=names)[1]


def export_checkpoint(checkpoint: str | Path, opts: ExportOptions | None = None,
                      on_step: Callable[[str], None] | None = None) -> ExportResult:
    """Export ``checkpoint`` (see the module docstring); raises ``SVFormerError`` for bad input.

    ``on_step(name)`` is called before every step (progress display). The bundle is written only
    when everything succeeded; fidelity misses do not stop the export (the caller decides, e.g.
    ``--strict``).
    """
    opts = opts or ExportOptions()
    timings: dict[str, float] = {}
    warnings: list[str] = []
    checkpoint = Path(checkpoint)
    t_start = time.perf_counter()
    current: list[Any] = []  # [name, start] of the running step

    def step(name: str | None) -> None:
        """Close the running step's timer and start ``name`` (seconds per step go to ``timings``)."""
        now = time.perf_counter()
        if current:
            timings[current[0]] = timings.get(current[0], 0.0) + now - current[1]
        current[:] = [name, now] if name else []
        if name and on_step is not None:
            on_step(name)

    step("load checkpoint")
    ckpt = load_checkpoint(checkpoint, opts.arch)
    model = ckpt.build_model()
    qat_graph = checkpoint_graph(ckpt)
    if opts.qat_epochs is not None:
        _check_fine_tune(checkpoint, ckpt, opts)
        opts = dataclasses.replace(opts, weight_bits=opts.weight_bits or 8)
    if qat_graph is not None:  # train --qat: the fine-tuned integer graph is written as it is, not re-quantized
        bits = int(qat_graph.graph["quant"]["weight_bits"])
        if opts.weight_bits not in (None, bits):
            raise SVFormerError(f"{checkpoint}: a QAT checkpoint fine-tuned at int{bits}; --quantize/--bits "
                                f"{opts.weight_bits} disagrees (drop it, or run train --qat --bits {opts.weight_bits})")
        if opts.fuse:
            raise SVFormerError(f"{checkpoint}: a QAT checkpoint's graph is unfused; drop --fuse")
        opts = dataclasses.replace(opts, weight_bits=bits)
    quantized = opts.weight_bits is not None
    if opts.calibration_search and (not quantized or qat_graph is not None):
        raise SVFormerError("--calibration-search needs --quantize (and a float checkpoint, not a QAT one)")
    targets = resolve_targets(opts.targets, quantized)
    if opts.onnx not in ONNX_CHOICES:
        raise SVFormerError(f"unknown --onnx choice {opts.onnx!r}; use one of {', '.join(ONNX_CHOICES)}")
    if quantized:
        QuantConfig(weight_bits=opts.weight_bits)  # validates the bit width before any work
    out = Path(opts.output) if opts.output is not None else default_bundle_path(checkpoint)
    writer = BundleWriter(out, force=opts.force)
    if opts.qat_epochs is not None:  # minutes of work: after every cheap check, before anything is written
        writer.check()
        qat_graph = _fine_tune(checkpoint, ckpt, opts, step)

    # The temporary bundle exists only inside this try, whose except removes it: a signal (SIGINT/SIGTERM)
    # while it is being created, or while the finished bundle is published, is held until that is done.
    closing = False  # set once the writer's own exit (publish, or clean up if that fails) has started
    try:
        with deferred_interrupts():
            try:
                writer.__enter__()
            except OSError as e:
                raise SVFormerError(f"{out}: cannot create the bundle there ({e.strerror or e})") from None
        result = _export_into(writer, checkpoint, ckpt, model, opts, targets, quantized, step, warnings, qat_graph)
        step("publish bundle")
        writer.manifest["timings"] = {k: round(v, 3) for k, v in timings.items()}
        with deferred_interrupts():
            closing = True
            writer.__exit__(None, None, None)
    except BaseException as e:
        step(None)
        if writer.tmp is not None and not closing:
            writer.__exit__(type(e), e, e.__traceback__)
        raise
    step(None)
    timings["total"] = time.perf_counter() - t_start
    result.timings = timings
    result.files = {role: _abs(out, entry) for role, entry in result.manifest["files"].items()}
    result.files["manifest"] = str(out / "manifest.json")
    return result


def _check_fine_tune(checkpoint: Path, ckpt: Checkpoint, opts: ExportOptions) -> None:
    """The options ``--qat-epochs`` cannot be combined with, refused before any work."""
    if opts.qat_epochs < 1:
        raise SVFormerError(f"--qat-epochs must be at least 1, not {opts.qat_epochs}")
    for flag, given in (("--calibration-search", opts.calibration_search), ("--fuse-linear", opts.fuse)):
        if given:
            raise SVFormerError(f"--qat-epochs cannot be combined with {flag}")
    if ckpt.qat:
        raise SVFormerError(f"{checkpoint}: already a QAT checkpoint; --qat-epochs starts from a float checkpoint")


def _fine_tune(checkpoint: Path, ckpt: Checkpoint, opts: ExportOptions, step: Callable[[str | None], None]
               ) -> nx.DiGraph:
    """``--qat-epochs``: :func:`export.qat.run_qat` of the float checkpoint (its recorded training data, the path of
    ``train --qat``), before anything is written; the checkpoint in memory gets the ``qat`` summary, so the export
    continues exactly as for a ``train --qat`` checkpoint. Returns the fine-tuned integer graph."""
    from .qat import QATOptions, run_qat

    step("QAT fine-tuning")
    qat_opts = QATOptions(weight_bits=opts.weight_bits, epochs=opts.qat_epochs, seed=opts.seed,
                          **({"lr": opts.qat_lr} if opts.qat_lr is not None else {}))
    g, summary = run_qat(ckpt, qat_opts, where=str(checkpoint))
    ckpt.qat = {"summary": {"init": str(checkpoint), "by": "export --qat-epochs", **summary}}
    return g


def _abs(out: Path, entry: Any) -> Any:
    if isinstance(entry, list):
        return [str(out / e["path"]) for e in entry]
    return str(out / entry["path"])


def _export_into(w: BundleWriter, checkpoint: Path, ckpt: Checkpoint, model: Any, opts: ExportOptions,
                 targets: tuple[str, ...], quantized: bool, step: Callable[[str], None],
                 warnings: list[str], qat_graph: nx.DiGraph | None = None) -> ExportResult:
    from .writers.netx_writer import (
        LAVA_RECIPE,
        netx_issue,
        netx_net,
        part_outputs,
        write_netx,
    )
    from .writers.nir_writer import nir_part_issue, read_nir_ir, run_spikingjelly_part, write_nir, write_nir_part
    from .writers.onnx_writer import FLOAT32_WHY, check_onnx, write_onnx

    step("prepare inputs")
    inputs = resolve_inputs(ckpt, opts, quantized)
    for what in ("calibration", "check"):
        if str(inputs.description.get(what, "")).startswith("random"):
            warnings.append(f"{what} clips are random ({inputs.description['kind']}-shaped): pass "
                            f"{'--calibration' if what == 'calibration' else '--check-data'} PATH with real clips "
                            "for figures that reflect deployment")
    check = inputs.check
    batch = check_batch_size(ckpt.config)
    res = run_pipeline(model, fuse=opts.fuse, batch_size=batch, on_step=step)
    float_graph = res.graph
    step("partition")
    part = partition(float_graph)

    qg = None
    quant_info = None
    searched = None
    onnx_files = _onnx_files(quantized) if opts.onnx in ("unrolled", "both") else []
    if qat_graph is not None:
        netx_mode = not qat_graph.graph["quant"]["per_channel"]
        if "netx" in targets and part.parts and not netx_mode:
            raise SVFormerError(f"{checkpoint}: the QAT graph has per-channel scales and the netx target needs "
                                "per-tensor ones; run train --qat without --per-channel, or drop netx from --targets")
        if set(qat_graph.nodes) != set(float_graph.nodes) or any(
                ir.op_of(qat_graph, n).op != ir.op_of(float_graph, n).op for n in float_graph.nodes):
            raise SVFormerError(f"{checkpoint}: the QAT graph does not match the checkpoint's model")
        qg = qat_graph
        res.graphs["quantized"] = qg
        res.quant = quant_report(qg)
    elif quantized:
        netx_mode = "netx" in targets and bool(part.parts)
        config = QuantConfig(weight_bits=opts.weight_bits, per_channel=not netx_mode, lava_thresholds=netx_mode)
        step("quantize")
        if opts.calibration_search:
            searched = search_calibration(float_graph, inputs.calibration, config, batch_size=batch)
            qg = searched.graph
        else:
            qg = quantize(float_graph, inputs.calibration, config, batch_size=batch)
        res.graphs["quantized"] = qg
        res.quant = quant_report(qg)
    if check is not None:
        # every step against the one before, each graph run once per dtype (model -> traced -> folded [-> fused]
        # [-> quantized]); the last graph's logits are kept for the ONNX checks
        check_chain(res, check, model, batch, step)
        if qat_graph is not None and res.quant is not None and res.quant.fidelity is not None:
            res.quant.fidelity.target = "reported (a QAT graph is the fine-tuned model, not an approximation of it)"
            res.quant.fidelity.passed = None
    rows = [FidelityRow.from_report(r.label.split(" ")[0], r) for r in res.reports]
    if quantized:
        quant_info = {**qg.graph["quant"], "calibration": inputs.description.get("calibration"),
                      "netx_compatible": netx_mode,
                      **({"qat_summary": ckpt.qat.get("summary")} if qat_graph is not None else {}),
                      **({"calibration_search": searched.to_dict()} if searched is not None else {}),
                      "why": ("quantization-aware fine-tuning (train --qat): " if qat_graph is not None else "") + (
                              "per-tensor weight scales and thresholds in multiples of 64, so that netx layers "
                              "run exactly in Lava" if netx_mode else "per-channel weight scales")}
        if res.quant is not None:
            quant_info.update(weights=res.quant.weights, neurons=res.quant.neurons)

    step("write IR")
    w.add_graph("ir", float_graph, "ir.json")
    if qg is not None:
        w.add_graph("ir_quantized", qg, "ir_int.json")

    few = check[:, :PART_CHECK_CLIPS] if check is not None else None
    nir_parts = 0
    onnx_info = None
    part_names = {n for p in part.parts for n in [p.source, *p.nodes]}
    part_dicts = {p.index: p.to_dict() for p in part.parts}

    if "nir" in targets:
        step("write NIR")
        path = w.add_file("nir", "model.nir", lambda p: write_nir(float_graph, p))
        step("check NIR")
        diffs = ir.diff_graphs(float_graph, read_nir_ir(path))
        rows.append(FidelityRow(step="nir", label="nir model.nir round trip", target="identical graph read back",
                                passed=not diffs, detail="; ".join(diffs[:3]) or
                                "plain nir.read + nir_to_ir give the same nodes, edges, attributes and arrays"))
        if part.parts:
            step("write NIR parts")
            written = []
            for p in part.parts:
                issue = nir_part_issue(float_graph, p)
                if issue is not None:
                    part_dicts[p.index]["nir_issue"] = issue
                    continue
                w.add_file("nir_parts", f"nir/part_{p.index}.nir", lambda f, p=p: write_nir_part(float_graph, p, f),
                           many=True)
                part_dicts[p.index]["nir"] = f"nir/part_{p.index}.nir"
                written.append(p)
            nir_parts = len(written)
            if few is not None and written:
                step("check NIR parts")
                rows.append(_nir_parts_row(float_graph, written, w.tmp, few, run_spikingjelly_part))

    onnx_step_info = None
    if "onnx" in targets:
        # quantized: one file, the fake-quantized graph (exact; the unrolled export is slow). Float: model.onnx in
        # float64 (the verified file: float32 rounding can flip a spike near a threshold) and model_fp32.onnx
        # (float32, what most runtimes take; checked and reported, not enforced).
        example = check if check is not None else random_clips(input_spec(ckpt), 2, 0)
        files = [(role, rel, float_graph if qg is None else qg, mode) for role, rel, mode in onnx_files]
        if files:
            onnx_info = {"graph": "fake-quantized (the fixed-point spec in float64, float32 weights)" if qg is not None
                         else "float (folded graph) in float64; convolutions as gather + MatMul (onnxruntime has no "
                              "float64 Conv)", **_onnx_io(files[0][3])}
        for role, rel, g, mode in files:
            step(f"write ONNX {mode}")
            path = w.add_file(role, rel, lambda p, g=g, mode=mode: write_onnx(g, p, example, mode=mode))
            if role == "onnx_fp32":
                onnx_info["float32"] = {"path": rel, "graph": "float (folded graph) in float32", **_onnx_io(mode),
                                        "verified": False, "why": FLOAT32_WHY}
            if check is not None:
                step(f"check ONNX {mode}")
                oc = check_onnx(path, g, check, mode=mode, label=f"onnx {mode}", batch_size=batch,
                                reference=res.logits.get(mode))
                rows.append(FidelityRow.from_onnx(f"onnx {mode} ({rel})", oc))
        if opts.onnx in ("step", "both"):
            # the one-step graph: one frame, the step index and every state in, the new state out (streaming)
            from .writers.onnx_step import check_onnx_step, state_specs, step_io, write_onnx_step

            g, mode = (float_graph, "float64") if qg is None else (qg, "fixed")
            step("write ONNX step")
            path = w.add_file(STEP_ROLE, STEP_FILE, lambda p: write_onnx_step(g, p, mode=mode))
            onnx_step_info = {"file": STEP_FILE, **step_io(state_specs(g, mode), mode)}
            if check is not None:
                step("check ONNX step")
                oc = check_onnx_step(path, g, check, mode=mode, label=f"onnx step {mode}", batch_size=batch,
                                     reference=res.logits.get(mode))
                rows.append(FidelityRow.from_onnx(f"onnx step {mode} ({STEP_FILE})", oc))

    netx_files = 0
    if "netx" in targets and qg is not None:
        step("write netx")
        rec = record_nodes(qg, few, "fixed", part_names) if few is not None and part.parts else None
        tally = SpikeTally()
        for p in part.parts:
            issue = netx_issue(qg, p)
            if issue is not None:
                part_dicts[p.index]["netx_issue"] = issue
                continue
            net = netx_net(qg, p)
            rel = f"netx/part_{p.index}.h5"
            w.add_file("netx", rel, lambda f, net=net: write_netx(net, f), many=True)
            part_dicts[p.index]["netx"] = rel
            part_dicts[p.index]["lava"] = {"layers": len(p.layers), "const_channels": net.const_channels,
                                           "input_shape": list(net.in_shape)}
            netx_files += 1
            if rec is not None:
                x, outs = record_part_io(qg, p, rec)
                got = part_outputs(net, x)
                for la, a, b in zip(p.layers, got, outs, strict=True):
                    tally.add(f"part {p.index} {la.neuron}", b, a)
        if netx_files and rec is not None:
            rows.append(FidelityRow.from_spikes(
                "netx", f"netx {netx_files} part files (Lava CUBA integer model)", tally, int(few.shape[1]),
                "netx files run with Lava's fixed-point CUBA arithmetic vs the quantized graph"))
        if not netx_files:
            why = "no sequential conv/dense + neuron chain" if not part.parts else \
                "no chain meets the exact-integer conditions (manifest partition.parts[].netx_issue)"
            warnings.append(f"netx: nothing written: {why}; manifest partition.host gives the reason for every node")

    summary = {"parts": len(part.parts), "netx_files": netx_files,
               "nir_part_files": nir_parts,
               "core_nodes": len({n for p in part.parts for n in p.nodes}), "host_nodes": len(part.host),
               # dense MACs: in every core-capable part (sequential chains), and in the parts actually written
               "core_capable_dense_mac_share": _mac_share(float_graph, part.parts),
               "netx_dense_mac_share": _mac_share(float_graph, [p for p in part.parts
                                                                 if "netx" in part_dicts[p.index]]),
               "nir_part_dense_mac_share": _mac_share(float_graph, [p for p in part.parts
                                                                     if "nir" in part_dicts[p.index]])}
    summary["fit"] = _fit_summary(float_graph, part, opts.weight_bits)
    if not part.parts:
        summary["note"] = ("no conv/dense + neuron chain: every weighted layer feeds a residual add, a per-step "
                           "affine (time-dependent BN), an attention product or the head")
    man = w.manifest
    man.update({
        "versions": _versions(),
        "source": {"path": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint), "arch": ckpt.arch,
                   "checkpoint_versions": ckpt.versions,
                   "training": {k: ckpt.training.get(k) for k in ("epoch", "metrics") if k in (ckpt.training or {})}},
        "arch": ckpt.arch, "config": ckpt.config.to_dict(), "class_names": list(ckpt.class_names),
        "preprocessing": dict(ckpt.preprocessing),
        "input": {"layout": "TCHW", "shape": [ckpt.config.time_steps, ckpt.config.in_channels, ckpt.config.img_size,
                                              ckpt.config.img_size],
                  "encoding": ir.op_of(float_graph, ir.input_node(float_graph)).encoding, "dtype": "float32",
                  "onnx": "; ".join([f"{rel}: {io['input']} -> {io['output']}"
                                     for rel, io in ((rel, _onnx_io(mode)) for _, rel, mode in onnx_files)]
                                    + ([f"{STEP_FILE}: frame [B, C, H, W], t, state.* -> logits, new_state.*"]
                                       if onnx_step_info else []))},
        "passes": list(float_graph.graph.get("passes", [])) + (["quantize"] if qg is not None else []),
        "targets": list(targets), "quantization": quant_info, "onnx": onnx_info,
        "onnx_step": onnx_step_info,
        "fusion": res.fusion.to_dict() if res.fusion is not None else None,
        "netx": {"lava_run": LAVA_RECIPE} if netx_files else None,
        "partition": {"summary": summary, "parts": [part_dicts[p.index] for p in part.parts], "host": part.host},
        "fidelity": {"inputs": inputs.description, "checks": [r.to_dict() for r in rows],
                     "passed": all(r.passed is not False for r in rows)},
        "warnings": warnings,
    })
    return ExportResult(output_dir=w.path, files={}, manifest=man, fidelity=rows, warnings=warnings)


def _fit_summary(g: Any, part: Any, weight_bits: int | None) -> dict[str, Any]:
    """Where the core parts would go on the Loihi chip table (``svformer-deploy fit`` gives the full report)."""
    from svformer_deploy.deploy.energy.cost_models import LOIHI
    from svformer_deploy.deploy.energy.placement import FLOAT_WEIGHT_BITS, fit_summary, geometry_from_graph, place

    return fit_summary(place(geometry_from_graph(g, part.parts), LOIHI,
                             weight_bits if weight_bits is not None else FLOAT_WEIGHT_BITS))


STEP_ROLE, STEP_FILE = "onnx_step", "model_step.onnx"
ONNX_CHOICES = ("step", "unrolled", "both")


def _onnx_io(mode: str) -> dict[str, str]:
    """The ``input``/``output`` entries of the manifest's ``onnx`` record for a file written in ``mode``."""
    from .writers.onnx_writer import input_dtype

    frames = str(input_dtype(mode)).removeprefix("torch.")
    logits = "float32" if mode == "float32" else "float64"
    return {"input": f"frames [T, B, C, H, W] {frames}", "output": f"logits [B, classes] {logits}"}


def _onnx_files(quantized: bool) -> list[tuple[str, str, str]]:
    """``(role, file, mode)`` of the ONNX files of a bundle: the fake-quantized ``model.onnx`` when quantized,
    else ``model.onnx`` in float64 (the verified file) and ``model_fp32.onnx``."""
    if quantized:
        return [("onnx", "model.onnx", "fixed")]
    return [("onnx", "model.onnx", "float64"), ("onnx_fp32", "model_fp32.onnx", "float32")]


def _nir_parts_row(g: nx.DiGraph, parts: list[Part], root: Path, x: torch.Tensor, run_sj: Callable) -> FidelityRow:
    """Read every standard part file with plain ``nir.read`` and run it in SpikingJelly on recorded spikes."""
    import nir

    names = {n for p in parts for n in [p.source, *p.nodes]}
    rec = record_nodes(g, x, "float", names)
    tally = SpikeTally()
    for p in parts:
        path = root / f"nir/part_{p.index}.nir"
        nir.read(path)  # plain reader, type-checked
        xi, outs = record_part_io(g, p, rec)
        tally.add(f"part {p.index} {p.layers[-1].neuron}", outs[-1], run_sj(path, xi))
    return FidelityRow.from_spikes("nir", f"nir {len(parts)} standard part files (SpikingJelly)", tally,
                                   int(x.shape[1]), "plain nir.read + SpikingJelly import_from_nir vs the float32 "
                                                    "graph")


def raise_on_miss(result: ExportResult) -> None:
    """``--strict``: a fidelity miss becomes :class:`CheckFailed` (exit 1); the bundle stays written."""
    if result.misses:
        r = result.misses[0]
        more = f" (+{len(result.misses) - 1} more)" if len(result.misses) > 1 else ""
        raise CheckFailed(f"fidelity target missed: {r.label}: {r.target}{more}; bundle written to "
                          f"{result.output_dir} with the results in manifest.json")

