"""Export time of the one-step ONNX graph vs the unrolled one, and per-frame latency of StreamSession vs the simulator.

    .venv/bin/python benchmarks/bench_stream.py                          # 3-stage SVFormer, 64x64, T=8, dims 16..64
    .venv/bin/python benchmarks/bench_stream.py --img-size 32 --time-steps 4 --dims 8,16,32 --reps 20

A random-weight model (per-step BN statistics randomised, as in a trained TDBN, so the per-step affines
stay) is traced and folded in this process, then

1. ``model_step.onnx`` and ``model.onnx`` (both float64) are exported and timed;
2. one clip is streamed ``--reps`` times through :class:`simulators.stream.StreamSession` (onnxruntime,
   one call per frame) and through the graph simulator (float64 and float32), and the dense PyTorch
   model's forward over the whole clip is timed in the same process; medians per frame are printed with
   their ratios to the dense forward's time per frame (clip time / T).

Timings depend on the machine and its load; the script prints the thread count it ran with.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svformer_deploy.export.bundle import BundleWriter  # noqa: E402
from svformer_deploy.export.passes.fold_bn import fold_bn  # noqa: E402
from svformer_deploy.export.trace import trace  # noqa: E402
from svformer_deploy.export.writers.onnx_step import (  # noqa: E402
    state_specs,
    step_io,
    write_onnx_step,
)
from svformer_deploy.export.writers.onnx_writer import write_onnx  # noqa: E402
from svformer_deploy.simulators.executor import Simulator  # noqa: E402
from svformer_deploy.simulators.stream import StreamSession  # noqa: E402
from svformer_deploy.svformer.variants import create_model  # noqa: E402
from timing import timed  # noqa: E402


def randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            for name in ("running_mean", "running_var", "weight", "bias"):
                t = getattr(m, name, None)
                if isinstance(t, torch.Tensor) and t.dtype.is_floating_point and "Norm" in type(m).__name__:
                    r = torch.rand(t.shape, generator=g)
                    t.copy_(0.5 + r if name in ("running_var", "weight") else 0.2 * (r - 0.5))




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="3stg")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--time-steps", type=int, default=8)
    ap.add_argument("--dims", default="16,32,64")
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    dims = tuple(int(d) for d in a.dims.split(","))
    model = create_model(a.arch, img_size=a.img_size, time_steps=a.time_steps, dims=dims, num_classes=10,
                         head_dim=8).eval()
    randomise(model, 0)
    T = a.time_steps
    graph = fold_bn(trace(model))
    x = torch.rand(T, 1, model.cfg.in_channels, a.img_size, a.img_size)
    print(f"model {a.arch} {a.img_size}x{a.img_size} T={T} dims={dims}; torch threads {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_onnx_step(graph, tmp / "model_step.onnx", mode="float64")
        t_step = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_onnx(graph, tmp / "model.onnx", x, mode="float64")
        t_unrolled = time.perf_counter() - t0
        print(f"export  model_step.onnx {t_step:6.2f} s ({(tmp / 'model_step.onnx').stat().st_size / 1e6:.2f} MB)   "
              f"model.onnx (unrolled) {t_unrolled:6.2f} s ({(tmp / 'model.onnx').stat().st_size / 1e6:.2f} MB)   "
              f"ratio unrolled/step {t_unrolled / t_step:.1f}")

        # a minimal bundle around the step file, so that StreamSession opens it as users do
        bundle = tmp / "b.svfd"
        specs = state_specs(graph, "float64")
        with BundleWriter(bundle) as w:
            w.add_graph("ir", graph, "ir.json")
            w.add_file("onnx_step", "model_step.onnx",
                       lambda p: p.write_bytes((tmp / "model_step.onnx").read_bytes()))
            w.manifest.update(config=model.cfg.to_dict(), input={"layout": "TCHW", "shape": [T, *x.shape[2:]]},
                              onnx_step={"file": "model_step.onnx", **step_io(specs, "float64")})
        session = StreamSession(bundle, threads=torch.get_num_threads())
        frames = x[:, 0].numpy()

        def stream() -> None:
            session.reset()
            for t in range(T):
                session.step(frames[t])

        per_frame = {}
        per_frame["StreamSession (onnxruntime, float64)"] = statistics.median(timed(stream, a.reps)) / T
        for dt in (torch.float64, torch.float32):
            sim = Simulator(graph, dtype=dt)
            per_frame[f"graph simulator ({str(dt).removeprefix('torch.')})"] = statistics.median(
                timed(lambda sim=sim: sim.run(x[:, 0]), a.reps)) / T
        with torch.no_grad():
            per_frame["dense PyTorch forward (float32, whole clip / T)"] = statistics.median(
                timed(lambda: model.forward_sequence(x), a.reps)) / T
    dense = per_frame["dense PyTorch forward (float32, whole clip / T)"]
    print(f"per-frame latency, median of {a.reps} clips:")
    for k, v in per_frame.items():
        print(f"  {k:<50} {1e3 * v:8.3f} ms   x{v / dense:6.2f} of dense")
    s, g = per_frame["StreamSession (onnxruntime, float64)"], per_frame["graph simulator (float64)"]
    print(f"StreamSession / simulator (float64): {s / g:.2f}")


if __name__ == "__main__":
    main()
