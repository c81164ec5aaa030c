"""Folder throughput: the local process pool against Ray on the same clips and workers, and what a
UCF101 test pass would take.

1. A bundle: ``--model BUNDLE``, or a random SVFormer (default ``--arch ss --size 64 -T 8``, 4
   classes) exported into a temporary folder.
2. ``--clips`` synthetic test clips (the built-in action set, 64x64, 32 frames) in a temporary folder.
3. The folder simulated twice with ``--workers`` workers, each into a fresh run folder, through the
   code ``energy-report --videos`` runs (``deploy.batch.simulate_folder``): with the process pool and
   with Ray (``deploy.ray_batch.ray_runner`` on a local runtime of ``--workers`` CPUs). Ray's start
   (``ray.init``, once per command) is timed on its own; clips/s are given without it and, for Ray,
   with it. The ratio is Ray's clips/s over the pool's.
4. The projection: the per-clip cost in worker-seconds (workers x wall / clips) of a pool run with
   ``--views`` (default 3x1, the three temporal views of the UCF101 test protocol), times 3,783 clips
   (UCF101 split-1 test list), over N workers for each N of ``--project``. It assumes the clips cost
   what these synthetic ones cost (decode of a 64x64 clip, the bundle's own resolution after resizing;
   real UCF101 clips are 320x240 and ~7 s long: more decode time) and that throughput scales
   linearly with workers (Ray tasks are independent; the driver only writes records).

    .venv/bin/python benchmarks/bench_scale.py [--model BUNDLE] [--clips 16] [--workers 2]
        [--views 3x1] [--project 2,8,32,128] [--arch ss --size 64 -T 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

UCF101_TEST_CLIPS = 3783


def random_bundle(folder: Path, arch: str, size: int, time_steps: int) -> Path:
    """A random SVFormer exported as ``export`` does (float graph, NIR)."""
    import torch
    from svformer_deploy.export.exporter import ExportOptions, export_checkpoint
    from svformer_deploy.svformer.checkpoint import save_checkpoint
    from svformer_deploy.svformer.variants import create_model

    torch.manual_seed(0)
    model = create_model(arch, img_size=size, time_steps=time_steps, num_classes=4)
    ckpt = save_checkpoint(folder / f"{arch}.pt", model.eval())
    opts = ExportOptions(output=folder / f"{arch}.svfd", targets=("nir",), force=True, check_clips=1,
                         calibration_clips=1)
    return Path(export_checkpoint(ckpt, opts).output_dir)


def timed_batch(videos: Path, model: Path, runs: Path, workers: int, views: tuple[int, int], runner=None) -> tuple:
    from svformer_deploy.deploy.batch import simulate_folder

    t0 = time.perf_counter()
    result = simulate_folder(videos, model, runs, workers=workers, views=views, runner=runner)
    wall = time.perf_counter() - t0
    if result.failures:
        raise SystemExit(f"{len(result.failures)} clip(s) failed: {result.failures[0]}")
    return result.simulated, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="Bundle to run (default: a small random model, exported here).")
    ap.add_argument("--arch", default="ss", help="Variant of the random model (default ss).")
    ap.add_argument("--size", type=int, default=64, help="Input size of the random model (default 64).")
    ap.add_argument("-T", "--time-steps", type=int, default=8, help="Time steps of the random model (default 8).")
    ap.add_argument("--clips", type=int, default=16, help="Synthetic clips in the folder (default 16).")
    ap.add_argument("--workers", type=int, default=2, help="Pool processes = Ray CPUs (default 2).")
    ap.add_argument("--views", default="3x1", help="Views per clip for the projection run (default 3x1).")
    ap.add_argument("--project", default="2,8,32,128", help="Worker counts to project the UCF101 test pass for.")
    args = ap.parse_args()

    import ray
    from svformer_deploy.deploy.commands.probe import parse_views
    from svformer_deploy.deploy.ray_batch import ray_runner
    from svformer_deploy.svformer.data.synthetic import generate_dataset

    views = parse_views(args.views)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(tmp)
        model = args.model or random_bundle(tmp, args.arch, args.size, args.time_steps)
        per_class = -(-args.clips // 4)
        data = generate_dataset(tmp / "synthetic", num_classes=4, train_per_class=0, test_per_class=per_class)
        videos = data / "test"
        n_clips = sum(1 for _ in videos.rglob("*.mp4"))
        print(f"bundle {model}; {n_clips} synthetic clips (64x64, 32 frames); {args.workers} workers", flush=True)

        n, pool_wall = timed_batch(videos, model, tmp / "runs-pool", args.workers, (1, 1))
        pool_rate = n / pool_wall
        print(f"process pool: {n} clips in {pool_wall:.2f} s = {pool_rate:.2f} clips/s", flush=True)

        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
        ray_start = time.perf_counter() - t0
        try:
            n, ray_wall = timed_batch(videos, model, tmp / "runs-ray", args.workers, (1, 1), ray_runner())
        finally:
            ray.shutdown()
        ray_rate = n / ray_wall
        print(f"Ray:          {n} clips in {ray_wall:.2f} s = {ray_rate:.2f} clips/s "
              f"(+ {ray_start:.2f} s ray.init: {n / (ray_wall + ray_start):.2f} clips/s with it)", flush=True)
        print(f"ratio Ray / pool: {ray_rate / pool_rate:.2f} (with Ray's start: "
              f"{n / (ray_wall + ray_start) / pool_rate:.2f})", flush=True)

        n, wall = timed_batch(videos, model, tmp / "runs-views", args.workers, views)
        cost = args.workers * wall / n  # worker-seconds per clip of views[0] x views[1] views
        print(f"per-clip cost with {args.views} views: {cost:.2f} worker-s "
              f"({n} clips in {wall:.2f} s on {args.workers} workers)", flush=True)
        print(f"projected UCF101 test pass ({UCF101_TEST_CLIPS} clips x {views[0] * views[1]} views), "
              "linear scaling:")
        for workers in (int(w) for w in args.project.split(",")):
            hours = UCF101_TEST_CLIPS * cost / workers / 3600
            print(f"  {workers:5d} workers: {hours:.3g} h")


if __name__ == "__main__":
    main()
