"""Train a small DVS-style SVFormer on the real N-MNIST samples (1000 train / 100 test) on CPU.

Prints the machine (cores, torch threads), the model, one line per epoch, the held-out top-1/top-5
accuracy, the wall time, and for comparison a linear classifier on 3 time bins x 2 polarities.
Target (issue 3): test top-1 >= 0.92 within 15 minutes on 2 cores.

    .venv/bin/python benchmarks/train_nmnist.py [--epochs 30] [--time-steps 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svformer_deploy.svformer.data.datasets import InputSpec, nmnist_dataset  # noqa: E402
from svformer_deploy.svformer.train import TrainConfig, format_epoch, train_model  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("SVFORMER_DATA", ROOT.parent / "shared" / "data")) / "events" / "nmnist-small"


def linear_baseline(data: Path, seed: int = 0) -> float:
    """Test accuracy of a logistic-regression classifier on event counts in 3 time bins x 2 polarities."""
    spec = InputSpec(kind="events", time_steps=3, size=34)
    train, test = nmnist_dataset(data, "train", spec), nmnist_dataset(data, "test", spec)

    def stack(ds):
        xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
        return torch.stack(xs).flatten(1), torch.tensor(ys)

    (xtr, ytr), (xte, yte) = stack(train), stack(test)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-3
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    torch.manual_seed(seed)
    lin = torch.nn.Linear(xtr.shape[1], 10)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-3, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(xtr), ytr).backward()
        opt.step()
    with torch.no_grad():
        return float((lin(xte).argmax(1) == yte).float().mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--time-steps", type=int, default=8)
    ap.add_argument("--dims", default="32,64,128")
    ap.add_argument("--depths", default="1,1,1")
    ap.add_argument("--norm", default="tdbn", help="tdbn (default) or bn: plain BN folds completely into the "
                    "weights, which leaves conv/dense + neuron chains that a neuromorphic core can run")
    ap.add_argument("--first-patch", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--warmup-epochs", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="output folder (default: a temporary one)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the linear classifier")
    ap.add_argument("--target", type=float, default=0.92)
    ap.add_argument("--threads", type=int, help="torch threads (1 is much faster when other jobs share the CPU)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        print(f"N-MNIST small not found at {args.data} (set SVFORMER_DATA or --data)", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="svformer-nmnist-"))
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: nproc {os.cpu_count()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f} (other processes share the CPU)")
    model = {"img_size": 34, "time_steps": args.time_steps, "dims": [int(v) for v in args.dims.split(",")],
             "depths": [int(v) for v in args.depths.split(",")], "head_dim": 32, "first_patch": args.first_patch,
             "norm": args.norm}
    cfg = TrainConfig(source="nmnist", data=str(args.data), arch="3stg", model=model, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, warmup_epochs=args.warmup_epochs, workers=args.workers,
                      seed=args.seed, out_dir=str(out), quiet=True)
    print(f"model: 3stg {json.dumps(model)}, input [T={args.time_steps}, 2, 34, 34] event counts "
          f"(equal-count slices), 10 classes")
    print(f"recipe: AdamW lr {args.lr} wd 0.05, warm-up {args.warmup_epochs} + cosine, {args.epochs} epochs, "
          f"batch {args.batch_size}, label smoothing 0.1, random shift 2 px, random erasing 0.25")
    t0 = time.perf_counter()
    result = train_model(cfg, on_epoch=lambda m: print(format_epoch(m, args.epochs), flush=True))
    wall = time.perf_counter() - t0
    m = result.metrics
    print(f"parameters: {result.params:,}; data: {result.train_data['samples']} train / "
          f"{result.test_data['samples']} test, {result.train_data['skipped'] + result.test_data['skipped']} skipped")
    print(f"RESULT N-MNIST test top-1 {m['test_top1']:.3f} top-5 {m['test_top5']:.3f} "
          f"(best epoch {max(h['test_top1'] for h in result.history):.3f}), wall {wall / 60:.1f} min, "
          f"checkpoint {result.checkpoint}")
    if not args.no_baseline:
        t1 = time.perf_counter()
        print(f"linear classifier (3 bins x 2 polarities): test top-1 {linear_baseline(args.data, args.seed):.3f} "
              f"({time.perf_counter() - t1:.0f} s)")
    ok = m["test_top1"] >= args.target and wall <= 15 * 60
    print(f"target top-1 >= {args.target} within 15 min: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
