"""Time and peak memory of every step of ``svformer-deploy export`` (the library call behind it).

    .venv/bin/python benchmarks/bench_export.py                       # SVFormer-base, 224x224, T=16, random weights
    .venv/bin/python benchmarks/bench_export.py --checkpoint model.pt --check-clips 100   # a trained checkpoint

Without ``--checkpoint`` a random-weight model of ``--arch`` is built and its BN statistics and
affine parameters are randomised per time step (as in a trained TDBN; a freshly built model has equal
statistics at every step, which would fold completely and hide the per-step affines). It is saved as
a checkpoint in a temporary folder and exported with int8 quantization and all targets (nir, onnx,
netx) unless told otherwise. Prints one line per step: seconds and the peak resident memory during
the step (sampled every 20 ms from /proc), then the file sizes and the fidelity table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svformer_deploy.deploy.commands.export import render_export  # noqa: E402
from svformer_deploy.export.exporter import ExportOptions, export_checkpoint, parse_targets  # noqa: E402
from svformer_deploy.svformer.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from svformer_deploy.svformer.variants import create_model  # noqa: E402
from timing import timed  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def dense_forward_s(checkpoint: Path) -> float:
    """Median wall time of one dense PyTorch forward (one clip, float32) of the checkpoint's model, seconds."""
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build_model()
    c = ckpt.config
    x = torch.rand(1, c.in_channels, c.time_steps, c.img_size, c.img_size)
    with torch.no_grad():
        return sorted(timed(lambda: model(x), 3))[1]


class StepMemory:
    """Peak RSS per step: a sampler thread keeps the maximum since the last step boundary."""

    def __init__(self, baseline_s: float, period: float = 0.02):
        self.baseline_s = baseline_s  # one dense PyTorch forward of the same model, measured in this run
        self.period = period
        self.peak = rss_mb()
        self.current: str | None = None
        self.t0 = time.perf_counter()
        self.rows: list[tuple[str, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.period)

    def step(self, name: str | None) -> None:
        now = time.perf_counter()
        self.peak = max(self.peak, rss_mb())
        if self.current is not None:
            self.rows.append((self.current, now - self.t0, self.peak))
            dt = now - self.t0
            print(f"  {self.current:<24} {dt:9.2f} s {dt / self.baseline_s:8.1f}x forward   "
                  f"peak RSS {self.peak:9.1f} MB", flush=True)
        self.current, self.t0, self.peak = name, now, rss_mb()

    def stop(self) -> None:
        self.step(None)
        self._stop.set()
        self._thread.join()


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Per-(step, channel) BN statistics and affine parameters around their defaults, like a trained TDBN."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                if m.affine:
                    m.weight.copy_(torch.randn(n, generator=g) * 0.1 + 1.0)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="Export this checkpoint instead of a random model.")
    ap.add_argument("--arch", default="base")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("-T", "--time-steps", type=int, default=16)
    ap.add_argument("--num-classes", type=int, default=101)
    ap.add_argument("--bits", type=int, default=8, help="Weight bits; 0 = no quantization.")
    ap.add_argument("--targets", default="nir,onnx,netx")
    ap.add_argument("--check-clips", type=int, default=2)
    ap.add_argument("--calibration-clips", type=int, default=2)
    ap.add_argument("--fuse-linear", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, help="Bundle folder (default: a temporary folder, removed afterwards).")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, RSS at start {rss_mb():.0f} MB", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        if args.checkpoint is None:
            t0 = time.perf_counter()
            model = create_model(args.arch, img_size=args.size, time_steps=args.time_steps,
                                 num_classes=args.num_classes)
            randomise_bn(model)
            ckpt = save_checkpoint(Path(tmp) / f"{args.arch}.pt", model.eval())
            n = sum(p.numel() for p in model.parameters())
            print(f"built {args.arch} ({n / 1e6:.2f} M parameters, {args.size}x{args.size}, T={args.time_steps}) "
                  f"in {time.perf_counter() - t0:.1f} s; RSS {rss_mb():.0f} MB", flush=True)
            del model
        else:
            ckpt = args.checkpoint
        baseline = dense_forward_s(ckpt)
        print(f"one dense PyTorch forward of the model (1 clip, float32, median of 3): {baseline:.3f} s", flush=True)
        out = args.out or Path(tmp) / "bundle.svfd"
        opts = ExportOptions(output=out, weight_bits=args.bits or None, targets=parse_targets(args.targets),
                             fuse=args.fuse_linear, force=True, check_clips=args.check_clips,
                             calibration_clips=args.calibration_clips)
        mem = StepMemory(baseline)
        t0 = time.perf_counter()
        try:
            result = export_checkpoint(ckpt, opts, on_step=mem.step)
        finally:
            mem.stop()
        total = time.perf_counter() - t0
        peak = max((r[2] for r in mem.rows), default=rss_mb())
        print(f"export total {total:.1f} s ({total / 60:.1f} min, {total / baseline:.0f}x one dense forward), "
              f"peak RSS {peak:.0f} MB; load average {os.getloadavg()[0]:.1f}", flush=True)
        print(render_export(result))


if __name__ == "__main__":
    main()
