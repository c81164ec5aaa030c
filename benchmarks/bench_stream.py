"""Live latency: time per frame of a bundle's one-step ONNX graph (``StreamSession``, onnxruntime) and of the
graph simulator, against a camera's frame budget, and the memory of the state one stream carries.

    .venv/bin/python benchmarks/bench_stream.py --bundle svformer-demo/model.svfd --video clip.mp4
    .venv/bin/python benchmarks/bench_stream.py --arch base --img-size 224 --time-steps 16   # random weights

With ``--bundle`` the bundle is used as it is (its ``model_step.onnx`` and its graph); frames come from
``--video`` (decoded with the bundle's preprocessing, the first view) or are random (the documented
fallback of the exporter's checks). Without it a random-weight model of ``--arch`` (per-step BN statistics
randomised as in a trained TDBN) is saved and exported with the real exporter (ONNX step graph only, no
checks) into a temporary folder.

Per frame: ``StreamSession.step`` (one onnxruntime call, float64 or fixed point as the bundle holds it),
and the simulator's own per-step time (``SimResult.step_seconds``: event-driven kernels plus exact op
counting; the last step includes the head), in float64 and float32 (or the integer executor for a
quantized bundle). Every figure is printed with its ratio to the baseline measured in the same process:
the dense PyTorch execution of the same graph (``ReferenceModel``, float32, whole clip / T). Medians and
99th percentiles are over ``--clips`` clips x T frames after one warm-up clip. Timings depend on the
machine and its load; the script prints both.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_export import randomise_bn  # noqa: E402
from svformer_deploy.export.bundle import Bundle, load_bundle  # noqa: E402
from svformer_deploy.export.exporter import ExportOptions, export_checkpoint, random_clips  # noqa: E402
from svformer_deploy.export.reference import ReferenceModel  # noqa: E402
from svformer_deploy.simulators.executor import Simulator  # noqa: E402
from svformer_deploy.simulators.run import bundle_input_spec, prepare_input  # noqa: E402
from svformer_deploy.simulators.stream import StreamSession  # noqa: E402
from svformer_deploy.svformer.checkpoint import save_checkpoint  # noqa: E402
from svformer_deploy.svformer.variants import create_model  # noqa: E402


def random_bundle(args: argparse.Namespace, tmp: Path) -> Bundle:
    model = create_model(args.arch, img_size=args.img_size, time_steps=args.time_steps, num_classes=args.num_classes)
    randomise_bn(model)
    ckpt = save_checkpoint(tmp / f"{args.arch}.pt", model.eval())
    t0 = time.perf_counter()
    export_checkpoint(ckpt, ExportOptions(output=tmp / "b.svfd", targets=("onnx",), check_clips=0, force=True))
    print(f"exported random-weight {args.arch} {args.img_size}x{args.img_size} T={args.time_steps} "
          f"(ONNX step graph only, no checks) in {time.perf_counter() - t0:.1f} s", flush=True)
    return load_bundle(tmp / "b.svfd")


def clip_frames(bundle: Bundle, video: Path | None) -> torch.Tensor:
    """One clip ``[T, C, H, W]`` (float32): the first view of ``video``, or random frames."""
    spec = bundle_input_spec(bundle)
    if video is not None:
        return prepare_input(spec, video, None, (1, 1), bundle.path).tensor[0].float()
    return random_clips(spec, 1, seed=0)[:, 0].float()


def stats(per_frame: list[float]) -> tuple[float, float, float]:
    """Median, 99th percentile and maximum (seconds)."""
    a = np.asarray(per_frame)
    return float(np.median(a)), float(np.percentile(a, 99)), float(a.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="An exported bundle with model_step.onnx (default: a random model).")
    ap.add_argument("--video", type=Path, help="Frames from this clip (default: random frames).")
    ap.add_argument("--arch", default="base")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--time-steps", type=int, default=16)
    ap.add_argument("--num-classes", type=int, default=101)
    ap.add_argument("--clips", type=int, default=5, help="Timed clips per runtime (after one warm-up clip).")
    ap.add_argument("--fps", type=float, default=25.0, help="Camera frame rate whose budget is reported.")
    args = ap.parse_args()
    budget = 1.0 / args.fps
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        bundle = load_bundle(args.bundle) if args.bundle else random_bundle(args, Path(tmp))
        frames = clip_frames(bundle, args.video)
        T = frames.shape[0]
        graph = bundle.graph("ir")
        session = StreamSession(bundle, threads=torch.get_num_threads())
        state_bytes = session.state_bytes
        quantized = session.mode == "fixed"
        source = f"from {args.video}" if args.video else "random"
        print(f"bundle {bundle.path}: step graph {session.mode}, T={T}, frame {list(frames.shape[1:])}; "
              f"torch/onnxruntime threads {torch.get_num_threads()}; frames {source}")
        print(f"state per stream: {len(session.state)} tensors, {state_bytes / 2**20:.2f} MiB "
              f"({state_bytes:,} bytes; batch 1)")

        # baseline: the dense PyTorch execution of the same graph (float32, whole clip), per frame
        dense = ReferenceModel(graph, dtype=torch.float32)
        x = frames[:, None]
        with torch.no_grad():
            dense(x)
            times = []
            for _ in range(args.clips):
                t0 = time.perf_counter()
                dense(x)
                times.append((time.perf_counter() - t0) / T)
        base = float(np.median(times))

        rows: dict[str, list[float]] = {}
        np_frames = frames.numpy().astype(np.float64 if session.frame_dtype == np.float64 else np.float32)
        per = []
        for c in range(args.clips + 1):
            session.reset()
            for t in range(T):
                t0 = time.perf_counter()
                session.step(np_frames[t])
                if c:
                    per.append(time.perf_counter() - t0)
        rows[f"StreamSession, onnxruntime ({session.mode})"] = per
        sims = [("integer", Simulator(graph if not quantized else bundle.graph("ir_quantized"), mode="integer"))] \
            if quantized else [(str(dt).removeprefix("torch."), Simulator(graph, dtype=dt))
                               for dt in (torch.float64, torch.float32)]
        for name, sim in sims:
            per = []
            for c in range(args.clips + 1):
                res = sim.run(frames)
                if c:
                    per += list(res.step_seconds)
            rows[f"graph simulator ({name}, with op counting)"] = per

    load = os.getloadavg()
    print(f"\nper-frame latency over {args.clips} clips x {T} frames; budget {1e3 * budget:.1f} ms ({args.fps:g} fps); "
          f"load average {load[0]:.1f} / {load[1]:.1f} (1 / 5 min)")
    print(f"  baseline: dense PyTorch execution of the graph (float32, clip / T): {1e3 * base:.2f} ms per frame")
    print(f"  {'runtime':<48} {'median':>9} {'p99':>9} {'max':>9} {'within budget':>14} {'median/dense':>13}")
    for name, per in rows.items():
        med, p99, mx = stats(per)
        ok = sum(p <= budget for p in per) / len(per)
        print(f"  {name:<48} {1e3 * med:7.2f}ms {1e3 * p99:7.2f}ms {1e3 * mx:7.2f}ms {ok:13.1%} {med / base:12.2f}x")


if __name__ == "__main__":
    main()
