"""PTQ, searched PTQ and QAT of trained checkpoints: accuracy, top-1 agreement and spike flips on held-out clips.

For each checkpoint (``train``-written, its training data on disk) and each weight width: the plain
post-training quantization (``quantize``), the per-layer weight-range search (``search_calibration``, on
the calibration clips) and quantization-aware fine-tuning (``export.qat``, started from the plain PTQ graph),
each measured on the same held-out clips against the float graph (float64): accuracy, top-1 agreement,
spikes flipped per float spike. Scales follow ``export``: per-tensor with Lava thresholds when the model has
netx parts, else per-channel. One torch thread; prints the load (``uptime``) and writes JSON.

    python benchmarks/qat_figures.py CKPT [CKPT ...] --bits 8 4 --epochs 2 --out qat.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from svformer_deploy.export.exporter import input_spec, training_data
from svformer_deploy.export.passes.quantize import QuantConfig, quantize, search_calibration
from svformer_deploy.export.pipeline import run_pipeline
from svformer_deploy.export.qat import QATModel, finetune, labelled_clips, measure, run_float
from svformer_deploy.export.writers.partition import partition
from svformer_deploy.svformer.checkpoint import load_checkpoint
from svformer_deploy.svformer.data.datasets import make_loader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--held", type=int, default=100)
    ap.add_argument("--cal", type=int, default=16)
    ap.add_argument("--max-train-clips", type=int)
    ap.add_argument("--no-search", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print("load:", os.popen("uptime").read().strip())
    rows = []
    for path in a.checkpoints:
        ckpt = load_checkpoint(path)
        train, test, described = training_data(ckpt, input_spec(ckpt))
        model = ckpt.build_model()
        g = run_pipeline(model).graph
        netx = bool(partition(g).parts)
        cal, _ = labelled_clips(train, a.cal)
        held, y = labelled_clips(test, a.held)
        float_acc = float((run_float(g, held, a.batch).argmax(1) == y).double().mean())
        print(f"{path}: {described}, float accuracy {float_acc:.2%} on {held.shape[1]} clips, "
              f"{'per-tensor (netx parts)' if netx else 'per-channel'}")
        for bits in a.bits:
            cfg = QuantConfig(weight_bits=bits, per_channel=not netx, lava_thresholds=netx)
            ptq = quantize(g, cal, cfg, batch_size=a.batch)
            row = {"checkpoint": path, "bits": bits, "float_accuracy": float_acc, "netx": netx,
                   "ptq": measure(g, ptq, held, y, a.batch)}
            if not a.no_search:
                t0 = time.perf_counter()
                s = search_calibration(g, cal, cfg, batch_size=a.batch)
                row["search"] = {**measure(g, s.graph, held, y, a.batch), "seconds": time.perf_counter() - t0,
                                 "calibration": s.to_dict()}
            qat = QATModel(ptq)

            def batches(epoch: int, train=train):  # noqa: ANN001
                seen = 0
                for b in make_loader(train, a.batch, epoch=epoch, shuffle=True):
                    if a.max_train_clips is not None and seen >= a.max_train_clips:
                        break
                    seen += b.clips.shape[0]
                    yield b.clips.transpose(0, 1).contiguous(), b.labels

            res = finetune(qat, batches, a.epochs, lr=a.lr)
            row["qat"] = {**measure(g, qat.to_graph(), held, y, a.batch), "seconds": res.seconds,
                          "history": res.history}
            rows.append(row)
            line = f"  int{bits}  " + "  ".join(
                f"{k}: acc {row[k]['accuracy']:.2%} top-1 agr {row[k]['top1_agreement']:.2%} "
                f"flips/spike {row[k]['flip_rate']:.2%}" for k in ("ptq", "search", "qat") if k in row)
            print(line, flush=True)
    print("load:", os.popen("uptime").read().strip())
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
