"""How close can a post-training quantized graph come to the float model? The float graph's own sensitivity.

For each checkpoint (``train``-written, its test data on disk) the float graph (float64) is compared on the same
held-out clips with copies of itself that differ in one respect, everything else float:

- ``weights wN``: every weighted layer's weights on the nearest point of the N-bit grid ``export`` uses
  (per-tensor when the model has netx parts, else per-channel), i.e. what any rounding-to-nearest PTQ keeps;
- ``leak 12-bit``: each neuron's leak k on the 12-bit decay grid (round(4096·k)/4096) with the threshold left
  where the float k puts it, as the fixed-point spec does;
- ``noise σ``: every weight times (1 + σ·N(0, 1)), ``--draws`` draws per σ (σ = 1e-3 is several times smaller
  than the rounding error of 8-bit weights);

and with the fixed-point graph itself (``quantize`` at ``--bits``, 16 calibration clips). Printed per row: top-1
agreement with the float model and spikes flipped per float spike (``export.fidelity.compare``). One torch
thread; prints the load.

    python benchmarks/ptq_floor.py CKPT [CKPT ...] --out floor.json
    python benchmarks/ptq_floor.py --table floor-*.json      # markdown: a line per checkpoint
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import networkx as nx
import numpy as np
import torch
from svformer_deploy.export import ir
from svformer_deploy.export.exporter import input_spec, training_data
from svformer_deploy.export.fidelity import compare
from svformer_deploy.export.passes.quantize import DECAY_ONE, QuantConfig, calibrate, leak_decay, qmax, quantize
from svformer_deploy.export.pipeline import run_pipeline
from svformer_deploy.export.qat import labelled_clips
from svformer_deploy.export.writers.partition import partition
from svformer_deploy.svformer.checkpoint import load_checkpoint


def with_weights(g: nx.DiGraph, change) -> nx.DiGraph:  # noqa: ANN001 - change(name, weight) -> new weight
    """A copy of ``g`` whose weighted ops hold ``change(name, weight)``."""
    h = ir.copy_graph(g)
    for n, op in ir.iter_ops(g, ir.WEIGHTED):
        ir.replace_op(h, n, dataclasses.replace(op, weight=change(n, op.weight.astype(np.float64))))
    return h


def on_grid(bits: int, per_channel: bool):  # noqa: ANN201
    """Weights rounded to the nearest point of the symmetric ``bits``-bit grid of the quantize pass."""
    def change(_: str, w: np.ndarray) -> np.ndarray:
        peak = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        if not per_channel:
            peak = np.full_like(peak, peak.max())
        step = (np.where(peak > 0, peak, 1.0) / qmax(bits)).reshape((-1,) + (1,) * (w.ndim - 1))
        return np.clip(np.rint(w / step), -qmax(bits), qmax(bits)) * step
    return change


def noisy(sigma: float, seed: int):  # noqa: ANN201
    """Weights times (1 + sigma·N(0, 1)), one generator per draw."""
    rng = np.random.default_rng(seed)
    return lambda _, w: w * (1.0 + sigma * rng.standard_normal(w.shape))


def leak_on_grid(g: nx.DiGraph) -> nx.DiGraph:
    """Each neuron's leak k -> round(4096·k)/4096, threshold kept where the float k puts it (the spec's theta):
    with decay_input the float neuron H = (1-k)V + kX, H >= V_th becomes H = (1-k')V + k'X, H >= V_th·k'/k."""
    h = ir.copy_graph(g)
    for n, op in ir.iter_ops(g, "neuron"):
        k = op.k
        kq = leak_decay(k) / DECAY_ONE
        leak = {"a": float(np.log(kq / (1.0 - kq)))} if op.model == "plif" else {"tau": 1.0 / kq}
        vth = op.v_threshold * kq / k if op.decay_input else op.v_threshold
        ir.replace_op(h, n, dataclasses.replace(op, v_threshold=vth, **leak))
    return h


def floor_rows(args: argparse.Namespace, path: str) -> dict:
    ckpt = load_checkpoint(path)
    train, test, described = training_data(ckpt, input_spec(ckpt))
    g = run_pipeline(ckpt.build_model()).graph
    per_channel = not partition(g).parts
    held, _ = labelled_clips(test, args.held)
    subjects: list[tuple[str, nx.DiGraph, str]] = [(f"weights w{b}", with_weights(g, on_grid(b, per_channel)), "float")
                                                   for b in args.bits]
    subjects.append(("leak 12-bit", leak_on_grid(g), "float"))
    subjects += [(f"noise {s:g} #{d}", with_weights(g, noisy(s, d)), "float")
                 for s in args.sigma for d in range(args.draws)]
    cal = calibrate(g, labelled_clips(train, args.cal)[0])
    subjects += [(f"fixed-point w{b}", quantize(g, cal, QuantConfig(weight_bits=b, per_channel=per_channel,
                                                                    lava_thresholds=not per_channel)), "fixed")
                 for b in args.bits]
    print(f"{path}: {described}, {'per-channel' if per_channel else 'per-tensor (netx parts)'}, "
          f"{held.shape[1]} held-out clips", flush=True)
    rows = []
    for name, h, mode in subjects:
        r = compare(g, h, held, torch.float64, "float", mode, name, args.batch)
        rows.append({"subject": name, "top1_agreement": r.top1_agreement, "flip_rate": r.flip_rate,
                     "first_divergence": r.first_divergence})
        print(f"  {name:20s} agreement {r.top1_agreement:7.2%}  flips {r.flip_rate:7.2%}", flush=True)
    return {"checkpoint": path, "model": args.label or path, "per_channel": per_channel,
            "held_out_clips": int(held.shape[1]), "rows": rows}


def table(files: list[str]) -> str:
    """Markdown: per checkpoint, top-1 agreement / flips per float spike of every subject (noise: the range of the
    draws' agreement / their mean flips)."""
    runs = [r for f in files for r in json.loads(Path(f).read_text())]
    kinds: dict[str, None] = {}
    for run in runs:
        for row in run["rows"]:
            kinds.setdefault(row["subject"].split(" #")[0], None)
    lines = ["| model | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for run in runs:
        cells = []
        for kind in kinds:
            rows = [r for r in run["rows"] if r["subject"].split(" #")[0] == kind]
            agr = sorted(100 * r["top1_agreement"] for r in rows)
            flips = float(np.mean([100 * r["flip_rate"] for r in rows]))
            span = f"{agr[0]:.0f}" if agr[0] == agr[-1] else f"{agr[0]:.0f}-{agr[-1]:.0f}"
            cells.append(f"{span} / {flips:.1f}")
        lines.append(f"| {run['model']} `{Path(run['checkpoint']).parent.name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="*")
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 12, 16])
    ap.add_argument("--sigma", type=float, nargs="+", default=[1e-4, 1e-3])
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--held", type=int, default=100)
    ap.add_argument("--cal", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--label", help="model name in the JSON (default: the checkpoint path)")
    ap.add_argument("--out")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="print the markdown table of earlier runs and stop")
    a = ap.parse_args()
    if a.table:
        print(table(a.table), end="")
        return
    torch.set_num_threads(1)
    print("load:", os.popen("uptime").read().strip(), flush=True)
    t0 = time.perf_counter()
    out = []
    for path in a.checkpoints:
        out.append(floor_rows(a, path))
        if a.out:
            Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wall {time.perf_counter() - t0:.0f} s; load:", os.popen("uptime").read().strip())


if __name__ == "__main__":
    main()
