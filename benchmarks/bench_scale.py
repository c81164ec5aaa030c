"""Folder throughput: the local process pool against Ray on the same clips and workers, and what a
UCF101 test pass would take.

1. A bundle: ``--model BUNDLE``, or a random SVFormer (default ``--arch ss --size 64 -T 8``, 4
   classes) exported into a temporary folder.
2. ``--clips`` synthetic test clips (the built-in action set, 64x64, 32 frames) in a temporary folder.
3. The folder simulated with ``--workers`` workers through the code ``energy-report --videos`` runs
   (``deploy.batch.simulate_folder``), each pass into a fresh run folder: with the process pool
   (a new pool per pass, as each command makes one) and with Ray (``deploy.ray_batch.ray_runner``
   on one local runtime of ``--workers`` CPUs, driven from a child process of this one: a process
   that holds a Ray connection must not fork pool workers, whose copies of Ray's threads' locks can
   hang them). Timed apart: Ray's start (``ray.init``) and its first
   pass (each worker process imports torch and the package, takes the graph from the object store
   and builds its simulator); then ``--repeat`` pool passes and warm Ray passes, alternated so that
   load drift hits both alike. Ratios are Ray's clips/s over the pool's (medians): warm (what a long
   folder sees) and for one whole command on this folder (start + first pass), and the folder size
   from which one command on Ray reaches 0.9x the pool (from the fixed and per-clip costs measured).
4. The projection: the per-clip cost in worker-seconds (workers x wall / clips) of a pool pass with
   ``--views`` (default 3x1, the three temporal views of the UCF101 test protocol), times 3,783 clips
   (UCF101 split-1 test list), over N workers for each N of ``--project``. It assumes the clips cost
   what these synthetic ones cost (decode of a 64x64 clip, the bundle's own resolution after resizing;
   real UCF101 clips are 320x240 and ~7 s long: more decode time) and that throughput scales
   linearly with workers (Ray tasks are independent; the driver only writes records).

The load average is printed before and after: on a shared machine absolute clips/s move with it.

    .venv/bin/python benchmarks/bench_scale.py [--model BUNDLE] [--clips 16] [--workers 2] [--repeat 3]
        [--views 3x1] [--project 2,8,32,128] [--arch ss --size 64 -T 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

UCF101_TEST_CLIPS = 3783

from timing import timed  # noqa: E402 - benchmarks/timing.py, next to this script


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


def batch_pass(videos: Path, model: Path, runs: Path, workers: int, views: tuple[int, int], runner=None) -> float:
    """One ``simulate_folder`` pass into the fresh folder ``runs``; its wall seconds. Fails on a failed clip."""
    from svformer_deploy.deploy.batch import simulate_folder

    assert not runs.exists()
    t0 = time.perf_counter()
    result = simulate_folder(videos, model, runs, workers=workers, views=views, runner=runner)
    wall = time.perf_counter() - t0
    if result.failures or result.resumed:
        raise SystemExit(f"{len(result.failures)} clip(s) failed, {result.resumed} resumed: {result.failures[:1]}")
    return wall


def ray_driver(conn, workers: int, videos: Path, model: Path, tmp: Path) -> None:
    """Child process: start a local Ray runtime of ``workers`` CPUs, then run one Ray pass per ``"pass"``
    received on ``conn`` (its wall seconds sent back) until ``"stop"``. Sends the start time first."""
    from svformer_deploy.deploy.ray_batch import import_ray, init_ray, ray_runner

    ray = import_ray()  # as the CLI imports it
    t0 = time.perf_counter()
    init_ray(ray, None, workers)  # the local runtime the CLI starts (its settings: workers at its priority)
    conn.send((ray.__version__, time.perf_counter() - t0))
    try:
        for i in iter(conn.recv, "stop"):
            conn.send(batch_pass(videos, model, tmp / f"runs-ray-{i}", workers, (1, 1), ray_runner()))
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="Bundle to run (default: a small random model, exported here).")
    ap.add_argument("--arch", default="ss", help="Variant of the random model (default ss).")
    ap.add_argument("--size", type=int, default=64, help="Input size of the random model (default 64).")
    ap.add_argument("-T", "--time-steps", type=int, default=8, help="Time steps of the random model (default 8).")
    ap.add_argument("--clips", type=int, default=16, help="Synthetic clips in the folder (default 16).")
    ap.add_argument("--workers", type=int, default=2, help="Pool processes = Ray CPUs (default 2).")
    ap.add_argument("--repeat", type=int, default=3, help="Pool and warm Ray passes, alternated (default 3).")
    ap.add_argument("--views", default="3x1", help="Views per clip for the projection run (default 3x1).")
    ap.add_argument("--project", default="2,8,32,128", help="Worker counts to project the UCF101 test pass for.")
    args = ap.parse_args()

    import multiprocessing

    from svformer_deploy.deploy.commands.probe import parse_views
    from svformer_deploy.svformer.data.synthetic import generate_dataset

    views = parse_views(args.views)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(tmp)
        model = args.model or random_bundle(tmp, args.arch, args.size, args.time_steps)
        per_class = -(-args.clips // 4)
        data = generate_dataset(tmp / "synthetic", num_classes=4, train_per_class=0, test_per_class=per_class)
        videos = data / "test"
        n = sum(1 for _ in videos.rglob("*.mp4"))
        passes = iter(range(10**6))

        def pool_pass() -> float:
            return batch_pass(videos, model, tmp / f"runs-{next(passes)}", args.workers, (1, 1))

        ours, theirs = multiprocessing.Pipe()
        driver = multiprocessing.get_context("spawn").Process(
            target=ray_driver, args=(theirs, args.workers, videos, model, tmp), daemon=True)
        driver.start()

        def ray_pass() -> float:
            ours.send(next(passes))
            return ours.recv()

        try:
            version, ray_start = ours.recv()
            print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; Ray {version}")
            print(f"bundle {model}; {n} synthetic clips (64x64, 32 frames, 1 view); {args.workers} workers",
                  flush=True)
            ray_first = ray_pass()
            pool, warm = [], []
            for _ in range(args.repeat):
                pool += timed(pool_pass, 1, warmup=False)
                warm += timed(ray_pass, 1, warmup=False)
        finally:
            if driver.is_alive():
                ours.send("stop")
            driver.join(60)
        pool_s, warm_s = statistics.median(pool), statistics.median(warm)
        command_s = ray_start + ray_first
        rows = [("process pool, one pass (median)", pool_s, ""),
                ("Ray start (ray.init)", ray_start, ""),
                ("Ray first pass (worker start-up)", ray_first, ""),
                ("Ray warm pass (median)", warm_s, f"{pool_s / warm_s:.2f}x the pool"),
                ("Ray, one command (start + first pass)", command_s, f"{pool_s / command_s:.2f}x the pool")]
        print(f"\n{'':40s} {'s':>7s} {'clips/s':>8s}")
        for name, sec, note in rows:
            rate = f"{n / sec:8.2f}" if "start (" not in name else f"{'':8s}"
            print(f"{name:40s} {sec:7.2f} {rate} {note}")
        print(f"passes: pool {', '.join(f'{t:.2f}' for t in pool)} s; Ray warm {', '.join(f'{t:.2f}' for t in warm)} s")
        fixed = command_s - warm_s  # Ray's cost per command beyond a warm pass
        per_clip_pool, per_clip_ray = pool_s / n, warm_s / n
        if per_clip_ray < per_clip_pool / 0.9:
            break_even = 0.9 * fixed / (per_clip_pool - 0.9 * per_clip_ray)
            print(f"one command on Ray: {fixed:.1f} s fixed (start + worker start-up), then "
                  f"{per_clip_ray * 1e3:.0f} ms/clip against the pool's {per_clip_pool * 1e3:.0f} ms/clip: "
                  f">= 0.9x the pool from about {break_even:.0f} clips on {args.workers} workers")
        else:
            print("Ray's warm passes are below 0.9x the pool: no folder size reaches 0.9x")

        wall = batch_pass(videos, model, tmp / "runs-views", args.workers, views)
        cost = args.workers * wall / n  # worker-seconds per clip of views[0] x views[1] views
        print(f"\nper-clip cost with {args.views} views (pool): {cost:.2f} worker-s "
              f"({n} clips in {wall:.2f} s on {args.workers} workers)", flush=True)
        print(f"projected UCF101 test pass ({UCF101_TEST_CLIPS} clips x {views[0] * views[1]} views), "
              "linear scaling:")
        for workers in (int(w) for w in args.project.split(",")):
            hours = UCF101_TEST_CLIPS * cost / workers / 3600
            print(f"  {workers:5d} workers: {hours:.3g} h")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
