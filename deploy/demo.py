"""The embedded end-to-end demo behind ``svformer-deploy demo``: its folder layout and its five steps.

One output folder (``DIR``, default ``./svformer-demo``) holds everything (``docs/demo.md``)::

    DIR/data/            the synthetic action set (svformer.data.synthetic; MP4 clips, dataset.json)
    DIR/train/           the training run: epoch-NNN.pt, last.pt, metrics.jsonl, summary.json
    DIR/model.svfd/      the export bundle of train/last.pt (IR, NIR, ONNX, manifest.json)
    DIR/runs/            run records of the simulated held-out clip
    DIR/report/          the energy report and the evaluation: index.html (plots), energy.json, evaluation.json
    DIR/evaluation/      per-clip results of the held-out evaluation (clean + one noise level, early exit)
    DIR/qat/             with --qat: the QAT checkpoint qat.pt, the int8 bundles model-int8.svfd (post-training)
                         and model-qat.svfd (fine-tuned), and their held-out evaluations (integer executor)
    DIR/demo.json        the summary of the last complete run (written last)

The configuration is :mod:`svformer.demo_config`. Re-running in the same folder reuses every step whose
result is complete and still matches (the data set by its parameters, the training run by its stored
configuration, the bundle by its source checkpoint's hash, the run record by model hash and clip);
an interrupted training resumes from ``train/last.pt``. Outputs made with another configuration are
refused unless ``force``, which starts over (regenerates the data, retrains, re-exports). Every file
is written atomically by the step that makes it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svformer_deploy.svformer import demo_config
from svformer_deploy.svformer.errors import SVFormerError

# what a demo folder may hold: its outputs, and the hidden temporary siblings of atomic writes
OUTPUTS = ("data", "train", "model.svfd", "runs", "report", "evaluation", "qat", "demo.json")
# TrainConfig fields that do not change what a run computes (paths, display)
_IGNORED_TRAIN_FIELDS = ("out_dir", "data", "quiet", "resume", "workers")


@dataclass(frozen=True)
class Layout:
    """The paths of one demo folder."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def checkpoint(self) -> Path:
        return self.train / "last.pt"

    @property
    def bundle(self) -> Path:
        return self.root / "model.svfd"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def summary(self) -> Path:
        return self.root / "demo.json"

    @property
    def qat(self) -> Path:
        return self.root / "qat"


@dataclass
class DemoSizes:
    """The size knobs of a demo run (``None``: the value of :mod:`svformer.demo_config`)."""

    epochs: int | None = None
    train_per_class: int | None = None
    test_per_class: int | None = None

    def data_params(self) -> dict[str, Any]:
        """Arguments of :func:`svformer.data.synthetic.generate_dataset` (besides the folder)."""
        params = dict(demo_config.DATA)
        for key in ("train_per_class", "test_per_class"):
            if getattr(self, key) is not None:
                params[key] = getattr(self, key)
        if params["test_per_class"] < 1:
            raise SVFormerError(f"--test-per-class must be >= 1 (a held-out clip is simulated), "
                                f"got {params['test_per_class']}")
        if params["train_per_class"] < 1:
            raise SVFormerError(f"--train-per-class must be >= 1, got {params['train_per_class']}")
        return params

    def train_config(self, layout: Layout) -> Any:
        """The :class:`svformer.train.TrainConfig` of the demo run in ``layout``."""
        from svformer_deploy.svformer.train import TrainConfig

        train = dict(demo_config.TRAIN)
        if self.epochs is not None:
            train["epochs"] = self.epochs
        return TrainConfig(source="synthetic", data=str(layout.data.resolve()), arch=demo_config.ARCH,
                           model={k: list(v) if isinstance(v, tuple) else v for k, v in demo_config.MODEL.items()},
                           synthetic=self.data_params(), out_dir=str(layout.train), quiet=True, **train)


# ---------------------------------------------------------------------------------------------
# the folder
# ---------------------------------------------------------------------------------------------
def _is_demo_entry(name: str) -> bool:
    if name in OUTPUTS:
        return True
    # temporary siblings left by an interrupted atomic write: ".<output>.<random>.tmp", ".<output>.old-<pid>"
    return name.startswith(".") and any(name.startswith(f".{o}.") for o in OUTPUTS)


def prepare_folder(root: str | Path) -> Layout:
    """Check that ``root`` is new, empty or a demo folder (nothing else is ever written or removed there),
    create it, and drop the temporary leftovers of interrupted atomic writes."""
    layout = Layout(Path(root))
    r = layout.root
    if r.exists() and not r.is_dir():
        raise SVFormerError(f"{r}: exists and is not a folder; choose another -o DIR")
    if r.is_dir():
        foreign = sorted(p.name for p in r.iterdir() if not _is_demo_entry(p.name))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise SVFormerError(f"{r}: not a demo folder (it holds {shown}); the demo writes only into a new or "
                                f"empty folder or one of its own; choose another -o DIR")
    for name in OUTPUTS:  # an output of another kind (e.g. a file named "train") cannot be reused
        p = r / name
        want_dir = name != "demo.json"
        if p.exists() and p.is_dir() != want_dir:
            raise SVFormerError(f"{p}: expected a {'folder' if want_dir else 'file'}; remove it or choose another "
                                "-o DIR")
    try:
        r.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SVFormerError(f"{r}: cannot create the demo folder ({e.strerror or e})") from None
    for p in r.iterdir():
        if p.name.startswith("."):
            _remove(p)
    return layout


def start_run(layout: Layout, sizes: DemoSizes, cfg: Any, force: bool) -> tuple[str, Any]:
    """Before any step: check what can be reused and clear what this run remakes.

    Without ``force`` a data set or training run made with another configuration is an error (nothing
    is touched); with ``force`` both are removed (start over; the bundle and run records are replaced
    or added by their steps). Returns :func:`existing_training`'s answer for the training step.
    The summary (``demo.json``) and the report are always remade, so they are removed here: after a
    failed run no summary describes outputs this run did not check.
    """
    if force:
        _remove(layout.data)
        _remove(layout.train)
        state: tuple[str, Any] = ("none", None)
    else:
        differ = data_mismatch(layout, sizes.data_params())
        if differ:
            raise SVFormerError(f"{layout.data}: holds a synthetic set made with other parameters (differs in "
                                f"{', '.join(differ)}); rerun with --force to regenerate it, or choose another -o DIR")
        state = existing_training(layout, cfg)
    _remove(layout.summary)
    _remove(layout.report)
    return state


def data_mismatch(layout: Layout, params: dict[str, Any]) -> list[str]:
    """The parameters in which an existing ``layout.data`` set differs from ``params`` ([] if none or no set)."""
    from svformer_deploy.svformer.data.synthetic import dataset_manifest, read_dataset_manifest

    if not layout.data.exists():
        return []
    have = read_dataset_manifest(layout.data)
    if have is None:
        return ["dataset.json (not a synthetic set)"]
    want = dataset_manifest(**params)
    return sorted(k for k in want if have.get(k) != want[k])


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


# ---------------------------------------------------------------------------------------------
# step 1: data
# ---------------------------------------------------------------------------------------------
@dataclass
class DataStep:
    root: Path
    params: dict[str, Any]
    classes: list[str]
    train_clips: int
    test_clips: int
    reused: bool


def make_data(layout: Layout, sizes: DemoSizes) -> DataStep:
    """Generate the synthetic set into ``layout.data`` (an identical existing set is reused)."""
    from svformer_deploy.svformer.data.synthetic import clip_paths, generate_dataset, read_dataset_manifest

    params = sizes.data_params()
    manifest = layout.data / "dataset.json"
    before = manifest.read_text() if manifest.is_file() else None
    root = generate_dataset(layout.data, **params)
    reused = before is not None and before == manifest.read_text()
    classes = read_dataset_manifest(root)["classes"]
    return DataStep(root=root, params=params, classes=classes, train_clips=len(clip_paths(root, "train")),
                    test_clips=len(clip_paths(root, "test")), reused=reused)


# ---------------------------------------------------------------------------------------------
# step 2: training
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainStep:
    result: Any  # svformer.train.TrainResult
    status: str  # "trained" | "resumed" | "reused"


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in _IGNORED_TRAIN_FIELDS}


def existing_training(layout: Layout, cfg: Any) -> tuple[str, Any]:
    """What ``layout.train`` holds for ``cfg``: ("none", None), ("partial", epoch) or ("complete", result).

    A run made with another configuration (or an unreadable ``last.pt``) is an error that names the
    differing fields and suggests ``--force``.
    """
    from svformer_deploy.svformer.checkpoint import load_checkpoint

    last = layout.checkpoint
    if not last.exists():
        return "none", None
    try:
        ckpt = load_checkpoint(last)
    except SVFormerError as e:
        raise SVFormerError(f"{e}; rerun with --force to retrain, or choose another -o DIR") from None
    stored = (ckpt.training or {}).get("config")
    if not isinstance(stored, dict) or "epoch" not in ckpt.training:
        raise SVFormerError(f"{last}: not a training checkpoint; rerun with --force to retrain, or choose another "
                            "-o DIR")
    want, have = _comparable(cfg.to_dict()), _comparable(stored)
    differ = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if differ:
        raise SVFormerError(f"{layout.train}: holds a training run with another configuration (differs in "
                            f"{', '.join(differ)}); rerun with --force to retrain, or choose another -o DIR")
    epoch = int(ckpt.training["epoch"])
    if epoch < cfg.epochs:
        return "partial", epoch
    return "complete", _finished_result(layout, ckpt)


def _finished_result(layout: Layout, ckpt: Any) -> Any:
    """The :class:`TrainResult` of a finished run: its ``summary.json``, else rebuilt from ``last.pt``."""
    import json

    from svformer_deploy.svformer.train import TrainResult

    path = layout.train / "summary.json"
    try:
        d = json.loads(path.read_text())
        result = TrainResult(**d)
        if int(result.epochs) == int(ckpt.training["epoch"]):
            return result
    except (OSError, ValueError, TypeError):
        pass  # interrupted between the last checkpoint and the summary: rebuild it from the checkpoint
    t = ckpt.training
    history = [dict(h) for h in t.get("history", [])]
    data = t.get("data") or {}
    return TrainResult(out_dir=str(layout.train), checkpoint=str(layout.checkpoint), epochs=int(t["epoch"]),
                       metrics=dict(history[-1]) if history else dict(t.get("metrics") or {}), history=history,
                       class_names=list(ckpt.class_names), train_data=dict(data.get("train") or {}),
                       test_data=dict(data.get("test") or {}),
                       params=sum(p.numel() for p in ckpt.build_model().parameters()),
                       seconds=round(sum(float(h.get("seconds", 0.0)) for h in history), 3))


def train(layout: Layout, cfg: Any, state: tuple[str, Any],
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          on_start: Callable[[str, int], None] | None = None) -> TrainStep:
    """Train, resume or reuse the demo model in ``layout.train``, as ``state`` (from :func:`start_run`) says.

    ``on_start(status, start_epoch)`` is called before any training ("trained" from 0 or "resumed").
    """
    from svformer_deploy.svformer.train import train_model

    state, value = state
    if state == "complete":
        return TrainStep(result=value, status="reused")
    status, start = ("resumed", int(value)) if state == "partial" else ("trained", 0)
    if status == "resumed":
        cfg.resume = str(layout.checkpoint)
    if on_start is not None:
        on_start(status, start)
    return TrainStep(result=train_model(cfg, on_epoch=on_epoch), status=status)


# ---------------------------------------------------------------------------------------------
# step 3: export
# ---------------------------------------------------------------------------------------------
@dataclass
class ExportStep:
    result: Any  # export.exporter.ExportResult
    reused: bool


def reusable_bundle(layout: Layout, targets: tuple[str, ...] | None, bundle: Path | None = None,
                    checkpoint: Path | None = None, weight_bits: int | None = None) -> Any | None:
    """The :class:`ExportResult` of an existing complete bundle (default ``layout.bundle``) of ``checkpoint``
    (default ``layout.checkpoint``) with these targets and quantization (``weight_bits``, None: float)."""
    from svformer_deploy.export.bundle import load_bundle, sha256_file
    from svformer_deploy.export.exporter import ExportResult, FidelityRow, resolve_targets

    bundle_dir = bundle or layout.bundle
    checkpoint = checkpoint or layout.checkpoint
    if not (bundle_dir / "manifest.json").is_file():
        return None
    try:
        loaded = load_bundle(bundle_dir)
    except SVFormerError:
        return None
    m = loaded.manifest
    if (m.get("source") or {}).get("sha256") != sha256_file(checkpoint):
        return None
    quant = m.get("quantization") or {}
    if list(m.get("targets") or []) != list(resolve_targets(targets, weight_bits is not None)) or \
            quant.get("weight_bits") != weight_bits:
        return None
    files: dict[str, Any] = {}
    for role, entry in m["files"].items():
        entries = entry if isinstance(entry, list) else [entry]
        paths = [bundle_dir / e["path"] for e in entries]
        if not all(p.is_file() for p in paths):
            return None
        files[role] = [str(p) for p in paths] if isinstance(entry, list) else str(paths[0])
    files["manifest"] = str(bundle_dir / "manifest.json")
    fid = m.get("fidelity") or {}
    try:
        rows = [FidelityRow.from_dict(row) for row in fid.get("checks", [])]
    except (TypeError, AttributeError):
        return None
    return ExportResult(output_dir=bundle_dir, files=files, manifest=m, fidelity=rows,
                        warnings=list(m.get("warnings") or []), timings=dict(m.get("timings") or {}))


def export(layout: Layout, targets: tuple[str, ...] | None = None,
           on_step: Callable[[str], None] | None = None) -> ExportStep:
    """Export ``layout.checkpoint`` to ``layout.bundle`` (default targets), or reuse a bundle made from it.

    A bundle made from another checkpoint is replaced, atomically, once the new one is complete.
    """
    from svformer_deploy.export.exporter import ExportOptions, export_checkpoint

    found = reusable_bundle(layout, targets)
    if found is not None:
        return ExportStep(result=found, reused=True)
    opts = ExportOptions(output=layout.bundle, targets=targets, force=True)
    return ExportStep(result=export_checkpoint(layout.checkpoint, opts, on_step=on_step), reused=False)


# ---------------------------------------------------------------------------------------------
# step 4: simulation of one held-out clip
# ---------------------------------------------------------------------------------------------
@dataclass
class SimulateStep:
    clip: Path
    true_class: str
    top5: list[list[Any]]
    record: Path
    totals: dict[str, int]
    seconds: float
    reused: bool
    time_steps: int = 0

    @property
    def correct(self) -> bool:
        return bool(self.top5) and self.top5[0][0] == self.true_class


def held_out_clip(data_root: Path, class_index: int = 0) -> tuple[Path, str]:
    """The first held-out clip of class ``class_index`` of the synthetic set, and its class name."""
    from svformer_deploy.svformer.data.synthetic import clip_paths, read_dataset_manifest

    classes = read_dataset_manifest(data_root)["classes"]
    for path, label in clip_paths(data_root, "test"):
        if label == class_index:
            return path, classes[label]
    raise SVFormerError(f"{data_root}: no held-out clip of class {classes[class_index]!r}")


def _existing_record(layout: Layout, model_hash: str, clip: Path) -> Any | None:
    from svformer_deploy.deploy.energy.records import read_record
    from svformer_deploy.export.bundle import sha256_file

    if not layout.runs.is_dir():
        return None
    clip_path, digest = str(clip.resolve()), sha256_file(clip)
    for f in sorted(layout.runs.glob("*.json"), reverse=True):  # newest first (time-stamped names)
        try:
            rec = read_record(f)
        except SVFormerError:
            continue
        inp = rec.input
        if (rec.model_hash == model_hash and rec.executor == "float" and inp.get("path") == clip_path
                and inp.get("sha256") == digest and list(inp.get("views") or []) == [1, 1] and inp.get("label")):
            return rec
    return None


def simulate(layout: Layout, clip: Path, true_class: str, on_step: Callable[[int], None] | None = None
             ) -> SimulateStep:
    """Simulate ``clip`` on the bundle's float graph (one view), or reuse its record for this model."""
    from svformer_deploy.export.bundle import load_bundle
    from svformer_deploy.simulators.run import simulate_file

    bundle = load_bundle(layout.bundle)
    rec = _existing_record(layout, bundle.model_hash, clip)
    if rec is not None:
        d = rec.data
        return SimulateStep(clip=clip, true_class=true_class, top5=d["prediction"]["top5"], record=rec.path,
                            totals=dict(d["totals"]), seconds=float(d["timing"]["wall_s"]), reused=True,
                            time_steps=rec.time_steps)
    report = simulate_file(video=clip, model=layout.bundle, out_dir=layout.runs, on_step=on_step, label=true_class)
    doc = report.to_dict()
    return SimulateStep(clip=clip, true_class=true_class, top5=doc["top5"], record=Path(doc["record"]),
                        totals=dict(doc["totals"]), seconds=float(doc["timing"]["wall_s"]), reused=False,
                        time_steps=int(doc["time_steps"]))


# ---------------------------------------------------------------------------------------------
# step 5: energy report
# ---------------------------------------------------------------------------------------------
@dataclass
class ReportStep:
    report: dict[str, Any]
    html: Path
    json: Path


def energy_report(layout: Layout, records: list[Path]) -> ReportStep:
    """Price the run records (fp32, 45 nm) and write ``report/index.html`` and ``report/energy.json``."""
    from svformer_deploy.deploy.energy.html import write_html
    from svformer_deploy.deploy.energy.records import report_from_paths
    from svformer_deploy.svformer.fileio import write_json_atomic

    report = report_from_paths(records, "fp32")
    html = write_html(report, layout.report)
    js = write_json_atomic(layout.report / "energy.json", report)
    return ReportStep(report=report, html=html, json=js)


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """Energy per clip (mJ) by the exact method, the paper's Eq. 13 and the ANN counterpart, and SNN/ANN."""
    m = report["methods"]
    ann = report["ann_counterpart"]["energy_mj"]
    return {"exact_mj": m["exact"]["energy_mj"], "paper_eq13_mj": m["paper_eq13"]["energy_mj"],
            "memory_aware_mj": m["memory_aware"]["energy_mj"], "ann_mj": ann,
            "snn_ann_ratio": m["exact"]["snn_ann_ratio"], "cost_model": report["cost_model"]["name"]}


# ---------------------------------------------------------------------------------------------
# step 6: evaluation of the held-out split
# ---------------------------------------------------------------------------------------------
@dataclass
class EvaluateStep:
    report: dict[str, Any]
    html: Path
    json: Path
    simulated: int
    resumed: int


def evaluate(layout: Layout, energy: ReportStep, workers: int = 2,
             on_clip: Callable[[str, str | None], None] | None = None,
             on_total: Callable[[int], None] | None = None) -> EvaluateStep:
    """``evaluate`` of the held-out split (float graph; clean and :data:`demo_config.EVALUATE` noise; the
    early-exit sweep), results in ``layout.evaluation`` (reused on a rerun); the report goes to
    ``report/evaluation.json`` and is appended to the energy report's page ``report/index.html``."""
    from svformer_deploy.deploy.energy.html import render_html
    from svformer_deploy.deploy.evaluate import Settings, evaluate_dataset, summarise
    from svformer_deploy.deploy.evaluate_report import append_to_page
    from svformer_deploy.export.bundle import load_bundle
    from svformer_deploy.svformer.data.noise import parse_noise
    from svformer_deploy.svformer.fileio import write_json_atomic, write_text_atomic

    bundle = load_bundle(layout.bundle)
    settings = Settings(model=str(layout.bundle), model_hash=bundle.model_hash, seed=demo_config.EVALUATE["seed"])
    ev = evaluate_dataset("videos", layout.data / "test", settings, parse_noise(demo_config.EVALUATE["noise"]),
                          runs_dir=layout.evaluation, workers=workers, on_clip=on_clip, on_total=on_total)
    report = summarise(ev)
    js = write_json_atomic(layout.report / "evaluation.json", report)
    html = write_text_atomic(energy.html, append_to_page(render_html(energy.report), report))
    return EvaluateStep(report=report, html=html, json=js, simulated=ev.simulated, resumed=ev.resumed)


# ---------------------------------------------------------------------------------------------
# step 7 (--qat): quantization-aware fine-tuning next to post-training quantization
# ---------------------------------------------------------------------------------------------
QAT_VARIANTS = (("ptq", "PTQ int8 (post-training)", "model-int8.svfd"),
                ("qat", "QAT int8 (fine-tuned)", "model-qat.svfd"))


@dataclass
class QATStep:
    checkpoint: Path
    summary: dict[str, Any]  # export.qat.run_qat's: PTQ and QAT against the float graph on held-out clips
    bundles: dict[str, Path]
    reports: dict[str, dict[str, Any]]  # evaluation reports of the two int8 bundles (integer executor)
    json: Path
    reused: list[str]


def qat_config(epochs: int | None = None) -> dict[str, Any]:
    """Step 7's settings: :data:`demo_config.QAT`, with ``epochs`` when given (``--qat-epochs``)."""
    return {**demo_config.QAT, **({"epochs": epochs} if epochs is not None else {})}


def qat(layout: Layout, energy: ReportStep, targets: tuple[str, ...] | None = None,
        epochs: int | None = None, workers: int = 2, on_epoch: Callable[[dict[str, float]], None] | None = None,
        on_step: Callable[[str], None] | None = None) -> QATStep:
    """Fine-tune the demo checkpoint with QAT (``train --qat``'s path, :data:`demo_config.QAT`), export the
    post-training int8 bundle and the QAT bundle, evaluate both on the held-out split with the integer executor
    (int8 prices, agreement with the float graph), the float bundle at the same prices, and add them to the report
    page.
    Finished outputs of the same checkpoint and settings are reused."""
    from svformer_deploy.deploy.evaluate import Settings, evaluate_dataset, summarise
    from svformer_deploy.deploy.evaluate_report import STATUS, append_to_page
    from svformer_deploy.export.bundle import load_bundle, sha256_file
    from svformer_deploy.export.exporter import ExportOptions, export_checkpoint
    from svformer_deploy.export.qat import QATOptions, qat_checkpoint
    from svformer_deploy.svformer.checkpoint import load_checkpoint
    from svformer_deploy.svformer.fileio import write_json_atomic, write_text_atomic

    cfg = qat_config(epochs)
    layout.qat.mkdir(exist_ok=True)
    ckpt_path = layout.qat / "qat.pt"
    digest = sha256_file(layout.checkpoint)
    reused: list[str] = []
    summary = None
    if ckpt_path.is_file():
        try:
            summary = (load_checkpoint(ckpt_path).qat or {}).get("summary")
        except SVFormerError:
            summary = None
        if not summary or summary.get("init_sha256") != digest or summary.get("epochs") != cfg["epochs"] or \
                summary.get("lr") != cfg["lr"] or summary.get("quant", {}).get("weight_bits") != cfg["weight_bits"]:
            summary = None
    if summary is None:
        summary = qat_checkpoint(str(layout.checkpoint), str(ckpt_path), QATOptions(
            weight_bits=cfg["weight_bits"], epochs=cfg["epochs"], lr=cfg["lr"], batch_size=cfg["batch_size"],
            seed=cfg["seed"]), on_epoch=on_epoch)
    else:
        reused.append("qat.pt")
    bundles = {"float": layout.bundle}
    for key, _, name in QAT_VARIANTS:
        out = bundles[key] = layout.qat / name
        src = layout.checkpoint if key == "ptq" else ckpt_path
        if reusable_bundle(layout, targets, out, src, cfg["weight_bits"]) is not None:
            reused.append(name)
        else:
            export_checkpoint(src, ExportOptions(output=out, weight_bits=cfg["weight_bits"], targets=targets,
                                                 force=True), on_step=on_step)
    reports = {}
    for key, out in bundles.items():
        bundle = load_bundle(out)
        settings = Settings(model=str(out), model_hash=bundle.model_hash, cost_model="int8",
                            seed=demo_config.EVALUATE["seed"],
                            **({"executor": "integer", "compare_float": True} if key != "float" else {}))
        ev = evaluate_dataset("videos", layout.data / "test", settings, (), runs_dir=layout.qat / f"evaluation-{key}",
                              workers=workers)
        reports[key] = summarise(ev)
    doc = {"config": cfg, "qat": summary, "evaluations": reports}
    js = write_json_atomic(layout.report / "qat.json", doc)
    page = energy.html.read_text()
    page = page.replace(STATUS, qat_section(summary, reports) + "\n" + STATUS, 1)
    for key, title, _ in QAT_VARIANTS:
        page = append_to_page(page, reports[key], title=f"{title}: integer executor on the held-out split")
    write_text_atomic(energy.html, page)
    return QATStep(checkpoint=ckpt_path, summary=summary, bundles=bundles, reports=reports, json=js, reused=reused)


def qat_table(summary: dict[str, Any], reports: dict[str, dict[str, Any]]) -> Any:
    """The comparison table (:class:`deploy.energy.report.Table`), one row per model (float, PTQ int8, QAT int8):
    held-out top-1, same prediction as the float graph, spikes flipped per float spike, firing rate, exact energy
    per clip (µJ, int8 prices for all three)."""
    from svformer_deploy.deploy.energy.report import Table

    def clean(r: dict[str, Any]) -> dict[str, Any]:
        return r["conditions"][0]

    f = clean(reports["float"])
    rows = [["float", f"{100 * f['top1']:.1f}%", "-", "-", f"{100 * f['firing_rate']:.2f}%",
             f"{1e3 * f['energy_mj']['exact']:.4g}"]]
    for key, title, _ in QAT_VARIANTS:
        c = clean(reports[key])
        rows.append([title, f"{100 * c['top1']:.1f}%", f"{100 * reports[key].get('agreement_with_float', 0):.1f}%",
                     f"{100 * summary[key]['flip_rate']:.1f}%", f"{100 * c['firing_rate']:.2f}%",
                     f"{1e3 * c['energy_mj']['exact']:.4g}"])
    return Table("Quantization-aware fine-tuning", ["model", "top-1", "same top-1 as float", "flips per float spike",
                                                    "firing rate", "energy per clip, exact (µJ)"], rows, "lrrrrr")


def qat_section(summary: dict[str, Any], reports: dict[str, dict[str, Any]]) -> str:
    """The report page's section comparing the float model, PTQ int8 and QAT int8 (:func:`qat_table`)."""
    import html

    from svformer_deploy.deploy.energy.html import _html_table

    t = qat_table(summary, reports)
    return (f"<h1>{html.escape(t.title)}</h1>\n<p>{summary['epochs']} epoch(s) of QAT at lr "
            f"{summary['lr']:g} on {html.escape(str(summary['data']))}; all three bundles priced at int8 "
            f"(45 nm), flips counted on {summary['held_out_clips']} held-out clips against the float graph.</p>\n"
            f"{_html_table(t, 'qat')}")
