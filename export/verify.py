"""Verify a received bundle: the library function behind ``svformer-deploy verify``.

:func:`verify_bundle` checks what a bundle claims, with the runtimes a receiver has:

1. every file the manifest lists: inside the bundle, size and SHA-256 (a mismatch, a missing file or
   a folder that is not a bundle is an error, exit 2), the model hash, and the IR graphs read and
   validated;
2. ``model.onnx`` (and ``model_fp32.onnx``, reported only) and the one-step ``model_step.onnx`` (one call
   per step, state carried over) run in onnxruntime against the bundle's graph (the quantized graph's
   fixed-point semantics when quantized, else the float graph in float64);
3. ``model.nir`` opened with plain ``nir.read`` (a standard NIR reader) and with our reader, whose graph
   must equal the bundle's float graph;
4. the standard NIR part files (``nir/part_<i>.nir``) run in every NIR peer that is installed
   (SpikingJelly, snnTorch, Norse; imported here only, never at module level) on the part inputs recorded
   from the bundle's graph;
5. the netx files (``netx/part_<i>.h5``) read back and run in our model of Lava's fixed-point CUBA
   arithmetic, and in Lava itself when the Lava environment exists (``SVFORMER_LAVA_VENV``, default
   ``~/.cache/svformer-deploy/lava-venv``, built by ``scripts/make_lava_venv.sh``), against the quantized
   graph's spikes.

Inputs are fresh clips: ``check_data`` if given, else the check clips the manifest records when they
name a file that still exists, else random clips shaped by the preprocessing (with a warning). Every
spike comparison goes through :class:`export.fidelity.SpikeTally`; the rows are the export's
:class:`export.exporter.FidelityRow` (the same table).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch
from svformer_deploy.svformer.errors import SVFormerError

from . import ir
from .bundle import Bundle, load_bundle
from .exporter import FidelityRow, check_batch_size, random_clips, record_nodes
from .fidelity import SpikeTally
from .reference import ReferenceModel
from .writers.partition import Part, partition, record_part_io

DEFAULT_CLIPS = 4
PART_CLIPS = 4  # clips whose recorded spikes feed the NIR-part and netx checks
LAVA_CLIPS = 2  # clips run in Lava (one Lava process, one step per call: slow)
RANDOM_SEED = 1009  # random clips differ from the export's (seeds 0 and 1)


@dataclass
class VerifyResult:
    """What :func:`verify_bundle` found (the ``--json`` document is :meth:`to_json`)."""

    bundle: Path
    model_hash: str
    files_checked: int
    inputs: dict[str, Any]
    fidelity: list[FidelityRow]
    peers_run: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def misses(self) -> list[FidelityRow]:
        return [r for r in self.fidelity if r.passed is False]

    @property
    def passed(self) -> bool:
        return not self.misses

    def to_json(self) -> dict[str, Any]:
        fid = {r.label: {k: v for k, v in r.to_dict().items() if k != "label"} for r in self.fidelity}
        return {"bundle": str(self.bundle), "model_hash": self.model_hash, "files_checked": self.files_checked,
                "inputs": self.inputs, "fidelity": fid, "passed": self.passed,
                "misses": [r.label for r in self.misses], "peers_run": self.peers_run, "skipped": self.skipped,
                "warnings": self.warnings}


# ---------------------------------------------------------------------------------------------
def _inputs(bundle: Bundle, check_data: str | Path | None, clips: int, seed: int,
            warnings: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
    from svformer_deploy.simulators.run import bundle_input_spec

    from .passes.quantize import load_calibration

    spec = bundle_input_spec(bundle)
    recorded = ((bundle.manifest.get("fidelity") or {}).get("inputs") or {}).get("check")
    if check_data is not None:
        x, what = load_calibration(check_data, spec, limit=clips), str(check_data)
    elif isinstance(recorded, str) and recorded and Path(recorded).exists():
        x, what = load_calibration(recorded, spec, limit=clips), f"{recorded} (the check clips the manifest records)"
    else:
        x, what = random_clips(spec, clips, seed + RANDOM_SEED), "random"
        warnings.append(f"check clips are random ({spec.kind}-shaped): the manifest records no check-clip file "
                        "that exists here; pass --check-data PATH with real clips for figures that reflect deployment")
    want = [int(v) for v in bundle.manifest["input"].get("shape", [])]
    if want and [x.shape[0], *x.shape[2:]] != want:
        raise SVFormerError(f"{what}: clips have shape {list(x.shape)} [T, B, C, H, W]; the bundle takes "
                            f"[T, C, H, W] = {want}")
    return x, {"check": what, "check_clips": int(x.shape[1]), "kind": spec.kind}


def _batch_size(bundle: Bundle) -> int:
    """Clips per batch, as the export chooses them (large for small models)."""
    from svformer_deploy.svformer.config import SVFormerConfig

    try:
        return check_batch_size(SVFormerConfig.from_dict(bundle.manifest["config"]))
    except (SVFormerError, TypeError, ValueError, KeyError, AttributeError):
        return 1


def _parts(bundle: Bundle, g: nx.DiGraph, key: str) -> list[tuple[Part, Path]]:
    """The parts whose ``key`` file ("nir" or "netx") the manifest lists, with the file (hash-checked)."""
    listed = {d.get("index"): d for d in (bundle.manifest.get("partition") or {}).get("parts", [])
              if isinstance(d, dict) and d.get(key)}
    if not listed:
        return []
    role = "nir_parts" if key == "nir" else "netx"
    files = {p.relative_to(bundle.path).as_posix(): p for p in bundle.files(role)}
    out = []
    for p in partition(g).parts:
        d = listed.pop(p.index, None)
        if d is None:
            continue
        if d.get("nodes") != p.nodes:
            raise SVFormerError(f"{bundle.path}: manifest partition part {p.index} does not match the bundle's graph")
        if d[key] not in files:
            raise SVFormerError(f"{bundle.path}: part {p.index}'s {key} file {d[key]!r} is not listed under "
                                f"files[{role!r}]")
        out.append((p, files[d[key]]))
    if listed:
        raise SVFormerError(f"{bundle.path}: manifest partition lists parts {sorted(listed)} that the bundle's graph "
                            "does not have")
    return out


def _error_row(step: str, label: str, target: str, e: BaseException) -> FidelityRow:
    """A miss for a file that a runtime could not open or run: the error, and where it was raised."""
    import traceback

    msg = " ".join(str(e).split())[:300]
    frames = traceback.extract_tb(e.__traceback__)
    last = frames[-1] if frames else None
    where = f" (raised in {Path(last.filename).name} line {last.lineno}, {last.name})" if last else ""
    return FidelityRow(step=step, label=label, target=target, passed=False,
                       detail=f"{type(e).__name__}{': ' + msg if msg else ''}{where}")


# ---------------------------------------------------------------------------------------------
def _simulator_row(bundle: Bundle, x: torch.Tensor) -> FidelityRow:
    """Our event-driven simulator (``simulate``'s engine) vs the reference interpreter on the bundle's graph:
    the integer executor on the quantized graph, else the float executor in float64."""
    from svformer_deploy.simulators.executor import Simulator

    quantized = bundle.has("ir_quantized")
    g = bundle.graph("ir_quantized" if quantized else "ir")
    sim_mode, ref_mode = ("integer", "fixed") if quantized else ("float", "float")
    label = f"simulator {sim_mode} ({'ir_int' if quantized else 'ir'}.json) vs reference"
    target = "identical spikes, max |dlogit| <= 1e-9"
    names = ir.neuron_names(g)
    try:
        with torch.no_grad():
            ref_logits, rec = ReferenceModel(g, dtype=torch.float64, mode=ref_mode).run(x, record=set(names))
        sim = Simulator(g, sim_mode, torch.float64, count=False)
        tally = SpikeTally()
        max_diff, agree = 0.0, 0
        for b in range(x.shape[1]):
            r = sim.run(x[:, b].to(torch.float32), record_spikes=True)
            want = ref_logits[b].double().numpy()
            max_diff = max(max_diff, float(np.abs(r.logits - want).max()))
            agree += int(np.argmax(r.logits) == np.argmax(want))
            for n in names:
                tally.add(n, rec[n][:, b], r.spikes[n])
    except Exception as e:  # noqa: BLE001
        return _error_row("simulator", label, target, e)
    row = FidelityRow.from_spikes("simulator", label, tally, int(x.shape[1]),
                                  f"svformer-deploy's {sim_mode} executor vs the reference interpreter")
    row.max_abs_diff, row.top1_agreement, row.target = max_diff, agree / x.shape[1], target
    row.passed = bool(row.passed and max_diff <= 1e-9)
    return row


def _onnx_rows(bundle: Bundle, x: torch.Tensor, batch: int) -> list[FidelityRow]:
    from .writers.onnx_writer import check_onnx

    quantized = bundle.has("ir_quantized")
    files = [("onnx", "fixed" if quantized else "float64")] + ([] if quantized else [("onnx_fp32", "float32")])
    rows = []
    for role, mode in files:
        if not bundle.has(role):
            continue
        path = bundle.file(role)
        g = bundle.graph("ir_quantized" if quantized else "ir")
        label = f"onnx {mode} ({path.name}, onnxruntime)"
        try:
            rows.append(FidelityRow.from_onnx(label, check_onnx(path, g, x, mode=mode, label=label,
                                                                 batch_size=batch)))
        except Exception as e:  # noqa: BLE001 - a file onnxruntime cannot load or run is a miss, with the reason
            rows.append(_error_row("onnx", label, "runs and matches the bundle's graph", e))
    if bundle.has("onnx_step"):
        from .writers.onnx_step import check_onnx_step

        mode = "fixed" if quantized else "float64"
        path = bundle.file("onnx_step")
        label = f"onnx step {mode} ({path.name}, onnxruntime)"
        try:
            rows.append(FidelityRow.from_onnx(label, check_onnx_step(
                path, bundle.graph("ir_quantized" if quantized else "ir"), x, mode=mode, label=label,
                batch_size=batch)))
        except Exception as e:  # noqa: BLE001 - as above
            rows.append(_error_row("onnx", label, "runs and matches the bundle's graph", e))
    return rows


def _nir_rows(bundle: Bundle) -> list[FidelityRow]:
    import nir

    from .writers.nir_writer import read_nir_ir

    path = bundle.file("nir")
    rows = []
    label = "nir model.nir (plain nir.read)"
    try:
        graph = nir.read(str(path))
        rows.append(FidelityRow(step="nir", label=label, target="opens in a standard NIR reader", passed=True,
                                detail=f"nir {getattr(nir, '__version__', '')}: {len(graph.nodes)} nodes, "
                                       f"{len(graph.edges)} edges"))
    except Exception as e:  # noqa: BLE001 - whatever nir.read raises is the finding
        rows.append(_error_row("nir", label, "opens in a standard NIR reader", e))
    label = "nir model.nir (svformer-deploy reader)"
    try:
        diffs = ir.diff_graphs(bundle.graph("ir"), read_nir_ir(path))
        rows.append(FidelityRow(step="nir", label=label, target="the bundle's graph read back", passed=not diffs,
                                detail="; ".join(diffs[:3]) or "same nodes, edges, attributes and arrays"))
    except Exception as e:  # noqa: BLE001
        rows.append(_error_row("nir", label, "the bundle's graph read back", e))
    return rows


def _nir_part_rows(bundle: Bundle, x: torch.Tensor, peers_run: list[str],
                   skipped: list[dict[str, str]]) -> list[FidelityRow]:
    from .writers.nir_writer import NIR_PEERS, nir_peer_installed, run_nir_peer

    g = bundle.graph("ir")
    parts = _parts(bundle, g, "nir")
    if not parts:
        return []
    rec = record_nodes(g, x, "float", {n for p, _ in parts for n in [p.source, *p.nodes]})
    io = [(p, path, *record_part_io(g, p, rec)) for p, path in parts]
    rows = []
    for peer in NIR_PEERS:
        label = f"nir {len(parts)} standard part files ({peer})"
        if not nir_peer_installed(peer):
            skipped.append({"check": label, "why": f"{peer} is not installed"})
            continue
        peers_run.append(peer)
        tally = SpikeTally()
        try:
            for p, path, xi, outs in io:
                tally.add(f"part {p.index} {p.output}", outs[-1], run_nir_peer(path, xi, peer))
        except Exception as e:  # noqa: BLE001 - a peer that cannot load or run a file is a miss
            rows.append(_error_row("nir", label, "identical spikes", e))
            continue
        rows.append(FidelityRow.from_spikes("nir", label, tally, int(x.shape[1]),
                                            f"{peer} vs the bundle's float graph (float32)"))
    return rows


def _netx_rows(bundle: Bundle, x: torch.Tensor, skipped: list[dict[str, str]]) -> list[FidelityRow]:
    from .writers.netx_writer import default_lava_venv, lava_compare, lava_python, part_outputs, read_netx

    if not bundle.has("netx"):
        return []
    if not bundle.has("ir_quantized"):
        raise SVFormerError(f"{bundle.path}: netx files without a quantized graph ('ir_quantized')")
    qg = bundle.graph("ir_quantized")
    parts = _parts(bundle, bundle.graph("ir"), "netx")
    if not parts:
        return []
    rec = record_nodes(qg, x, "fixed", {n for p, _ in parts for n in [p.source, *p.nodes]})
    io = [(p, path, *record_part_io(qg, p, rec)) for p, path in parts]
    rows = []
    label = f"netx {len(parts)} part files (read back, Lava CUBA integer model)"
    tally = SpikeTally()
    try:
        for p, path, xi, outs in io:
            got = part_outputs(read_netx(path), xi)
            for la, a, b in zip(p.layers, got, outs, strict=True):
                tally.add(f"part {p.index} {la.neuron}", b, a)
        rows.append(FidelityRow.from_spikes("netx", label, tally, int(x.shape[1]),
                                            "the files as read back, Lava's fixed-point CUBA arithmetic"))
    except Exception as e:  # noqa: BLE001
        rows.append(_error_row("netx", label, "identical spikes", e))
    label = f"netx {len(parts)} part files (Lava)"
    py = lava_python()
    if py is None:
        why = f"no Lava environment at {default_lava_venv()} (build it with make lava-venv or set SVFORMER_LAVA_VENV)"
        skipped.append({"check": label, "why": why})
        rows.append(FidelityRow(step="netx", label=label, target="identical spikes", detail=f"skipped: {why}"))
        return rows
    n = min(LAVA_CLIPS, int(x.shape[1]))
    try:
        with tempfile.TemporaryDirectory(prefix="svformer-verify-lava-") as tmp:
            runs = lava_compare([(path, xi[:, b].numpy()) for _, path, xi, _ in io for b in range(n)], tmp, python=py)
        tally = SpikeTally()
        for k, (p, _, _, outs) in enumerate(io):
            lava = [torch.from_numpy(r.output[r.layers:]) for r in runs[k * n:(k + 1) * n]]  # sink frames L ..
            tally.add(f"part {p.index} {p.output}", outs[-1][:, :n], torch.stack(lava, 1).to(outs[-1].dtype))
        rows.append(FidelityRow.from_spikes("netx", label, tally, n, "stock Lava (netx.hdf5.Network with default "
                                            "arguments, the manifest's recipe) vs the quantized graph"))
    except Exception as e:  # noqa: BLE001
        rows.append(_error_row("netx", label, "identical spikes", e))
    return rows


# ---------------------------------------------------------------------------------------------
def verify_bundle(path: str | Path, check_data: str | Path | None = None, clips: int = DEFAULT_CLIPS, seed: int = 0,
                  on_step: Callable[[str], None] | None = None) -> VerifyResult:
    """Verify the bundle at ``path`` (see the module docstring). A bad bundle raises ``SVFormerError`` (exit 2);
    fidelity misses are rows with ``passed`` False (the caller decides)."""
    def step(name: str) -> None:
        if on_step is not None:
            on_step(name)

    step("check files")
    bundle = load_bundle(path)
    n_files = bundle.check_files()
    for role in ("ir", "ir_quantized"):
        if bundle.has(role):
            bundle.graph(role)  # read and validated
    rows = [FidelityRow(step="files", label=f"bundle files ({n_files}, SHA-256 and sizes)",
                        target="as manifest.json lists them", passed=True,
                        detail="every listed file inside the bundle, of the listed size and SHA-256; model hash; "
                               "IR graphs read and validated")]
    warnings: list[str] = []
    step("prepare inputs")
    x, inputs = _inputs(bundle, check_data, clips, seed, warnings)
    few = x[:, :PART_CLIPS]
    batch = _batch_size(bundle)
    peers_run: list[str] = []
    skipped: list[dict[str, str]] = []
    step("run simulator")
    rows.append(_simulator_row(bundle, x))
    step("run ONNX")
    rows += _onnx_rows(bundle, x, batch)
    if bundle.has("nir"):
        step("read NIR")
        rows += _nir_rows(bundle)
    if bundle.has("nir_parts"):
        step("run NIR parts")
        rows += _nir_part_rows(bundle, few, peers_run, skipped)
    if bundle.has("netx"):
        step("run netx")
        rows += _netx_rows(bundle, few, skipped)
    return VerifyResult(bundle=bundle.path, model_hash=bundle.model_hash, files_checked=n_files, inputs=inputs,
                        fidelity=rows, peers_run=peers_run, skipped=skipped, warnings=warnings)
