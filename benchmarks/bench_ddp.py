"""Training throughput on 1 process against ``--nproc N`` processes, at the same global batch.

Trains the demo's model (``svformer.demo_config``: 3-stage, 32x32, T=8, dims 16/32/64) on the synthetic set
for ``--epochs`` epochs through the real command, once with ``--nproc 1 -b G`` and once with
``--nproc N -b G/N`` (global batch G either way, 1 torch thread per process), and prints the
training seconds per epoch (``metrics.jsonl`` ``train_seconds``, evaluation excluded) and clips per
second, the ratio N-process / 1-process, and the load average. On a machine with fewer free cores
than N the ratio shows the contention, not DDP's scaling.

    .venv/bin/python benchmarks/bench_ddp.py [--nproc 2] [--global-batch 16] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("svformer-deploy")


def run(data: Path, out: Path, nproc: int, batch: int, epochs: int) -> list[dict]:
    """Train through the CLI; the metrics of every epoch."""
    sys.path.insert(0, str(REPO))
    from svformer_deploy.svformer import demo_config

    m = demo_config.MODEL
    args = [str(CLI), "train", "--synthetic", "--synthetic-dir", str(data), "--arch", demo_config.ARCH,
            "--size", str(m["img_size"]), "-T", str(m["time_steps"]), "--dims", ",".join(map(str, m["dims"])),
            "--depths", ",".join(map(str, m["depths"])), "--head-dim", str(m["head_dim"]),
            "--first-patch", str(m["first_patch"]), "--epochs", str(epochs), "-b", str(batch), "--threads", "1",
            "--nproc", str(nproc), "--eval-every", str(epochs), "-o", str(out), "--quiet"]
    proc = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, SVFORMER_NO_PROGRESS="1"))
    if proc.returncode != 0:
        raise SystemExit(f"training failed: {proc.stderr.strip().splitlines()[-1]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-per-class", type=int, default=40)
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from svformer_deploy.svformer.data.synthetic import generate_dataset

    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        data = generate_dataset(Path(tmp) / "set", num_classes=4, train_per_class=a.train_per_class,
                                test_per_class=5, size=64, frames=32)
        rows = []
        for n in (1, a.nproc):
            hist = run(data, Path(tmp) / f"n{n}", n, a.global_batch // n, a.epochs)
            best = min(h["train_seconds"] for h in hist)  # the later epochs skip one-off start-up costs
            clips = hist[-1]["train_samples"]
            rows.append((n, a.global_batch // n, best, clips / best, [h["loss"] for h in hist]))
    print(f"{'processes':>9} {'batch/proc':>10} {'s/epoch':>8} {'clips/s':>8}  losses")
    for n, b, s, cps, losses in rows:
        print(f"{n:>9} {b:>10} {s:8.2f} {cps:8.1f}  {', '.join(f'{x:.4f}' for x in losses)}")
    print(f"{a.nproc} processes / 1 process: {rows[1][3] / rows[0][3]:.2f}x clips per second")
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
