"""Export IR figures: trace/fold/fuse time, peak memory and IR file size of SVFormer-base (224x224, T=16,
random weights), and optionally int8 fidelity of a trained checkpoint on held-out clips.

    .venv/bin/python benchmarks/export_ir.py [--arch base] [--quantize-clips 1]
    .venv/bin/python benchmarks/export_ir.py --checkpoint model.pt --nmnist ../shared/data/events/nmnist-small

Prints one line per measurement. Peak memory is the process's maximum resident set size (Linux
``ru_maxrss``), reported with the resident size after the model was built, so the difference is what
tracing and the passes added.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svformer_deploy.export import ir  # noqa: E402
from svformer_deploy.export.passes.fold_bn import check as fold_check  # noqa: E402
from svformer_deploy.export.passes.fold_bn import fold_bn, remaining_affines  # noqa: E402
from svformer_deploy.export.passes.fuse_linear import fuse_linear, fusion_report  # noqa: E402
from svformer_deploy.export.passes.quantize import QuantConfig, check, quantize  # noqa: E402
from svformer_deploy.export.trace import trace  # noqa: E402
from svformer_deploy.svformer.variants import create_model  # noqa: E402


def rss_mb() -> float:
    """Current resident set size in MB (from /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BN random running statistics and affine parameters (a freshly built model has the same
    statistics at every step, so its TDBN would fold completely; a trained one does not)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.randn(n, generator=g) * 0.2 + 1.0)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)


def timed(label: str, fn):
    t0 = time.perf_counter()
    out = fn()
    print(f"{label}: {time.perf_counter() - t0:.2f} s", flush=True)
    return out


def base_figures(arch: str, quantize_clips: int, check_clips: int) -> None:
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    model = create_model(arch).eval()
    randomise_bn(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {arch}: {n_params:,} parameters, T={model.cfg.time_steps}, {model.cfg.img_size}px; "
          f"RSS after build {rss_mb():.0f} MB")
    traced = timed("trace", lambda: trace(model))
    folded = timed("fold_bn", lambda: fold_bn(traced))
    print(f"peak RSS after trace + fold: {peak_mb():.0f} MB (nodes {traced.number_of_nodes()} -> "
          f"{folded.number_of_nodes()}, per-step affines left {len(remaining_affines(folded))})")
    fused = timed("fuse_linear", lambda: fuse_linear(folded))
    rep = fusion_report(folded, fused)
    print(f"fuse_linear: params {rep.before['params']:,} -> {rep.after['params']:,}; dense MACs/clip "
          f"{rep.before['dense_macs']:,} -> {rep.after['dense_macs']:,}; MACs on real-valued inputs "
          f"{rep.before['macs_on_real_inputs']:,} -> {rep.after['macs_on_real_inputs']:,}")
    with tempfile.TemporaryDirectory() as d:
        for name, g in (("traced", traced), ("folded", folded), ("fused", fused)):
            js, npz = timed(f"save {name}", lambda g=g, name=name: ir.save(g, Path(d) / f"{name}.json"))
            print(f"  {name}: JSON {js.stat().st_size / 1e3:.0f} kB, npz {npz.stat().st_size / 1e6:.1f} MB")
            back = timed(f"load {name}", lambda js=js: ir.load(js))
            assert ir.diff_graphs(g, back) == []
    print(f"peak RSS overall: {peak_mb():.0f} MB")
    if check_clips:
        x = torch.randn(model.cfg.time_steps, check_clips, 3, model.cfg.img_size, model.cfg.img_size)
        for r in timed(f"fold_bn check on {check_clips} random clip(s)", lambda: fold_check(traced, folded, x)):
            print(f"  {r.summary()}")
        print(f"peak RSS after the fold check: {peak_mb():.0f} MB")
    if quantize_clips:
        x = torch.randn(model.cfg.time_steps, quantize_clips, 3, model.cfg.img_size, model.cfg.img_size)
        q = timed(f"quantize (calibration on {quantize_clips} random clip(s))", lambda: quantize(folded, x))
        print(f"peak RSS after quantize: {peak_mb():.0f} MB; worst accumulator "
              f"{max(int(q.nodes[n]['quant']['acc_bits']) for n, _ in ir.iter_ops(q, ir.WEIGHTED))} bits")


def trained_figures(checkpoint: Path, nmnist: Path, cal_stride: int) -> None:
    from svformer_deploy.svformer.checkpoint import load_model
    from svformer_deploy.svformer.data.datasets import InputSpec, nmnist_dataset

    model, ck = load_model(checkpoint)
    spec = InputSpec.from_preprocessing(ck.preprocessing, ck.config)
    train, test = nmnist_dataset(nmnist, "train", spec), nmnist_dataset(nmnist, "test", spec)
    cal_idx = set(range(0, len(train), cal_stride))
    cal = torch.stack([train[i][0] for i in sorted(cal_idx)], dim=1)
    held = [train[i] for i in range(len(train)) if i not in cal_idx] + [test[i] for i in range(len(test))]
    x = torch.stack([h[0] for h in held], dim=1)
    labels = torch.tensor([h[1] for h in held])
    print(f"checkpoint {checkpoint}: {ck.arch}, T={model.cfg.time_steps}; calibration {cal.shape[1]} train clips; "
          f"held out {x.shape[1]} clips ({x.shape[1] - len(test)} train not used for calibration + {len(test)} test)")
    folded = fold_bn(trace(model))
    for cfg in (QuantConfig(), QuantConfig(per_channel=False, lava_thresholds=True), QuantConfig(weight_bits=4)):
        q = quantize(folded, cal, cfg)
        rep = timed(f"check {cfg}", lambda q=q: check(folded, q, x, batch_size=64))
        f = rep.fidelity
        print(f"  {f.summary()}")
        worst = ", ".join(f"{la.name} {la.flip_rate:.2%} flips/ref spike" for la in f.worst_layers(3))
        print(f"  worst layers: {worst}; max weight rel. error "
              f"{max(r['rel_error'] for r in rep.weights):.4f}")
    del labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="base")
    ap.add_argument("--quantize-clips", type=int, default=0, help="also time quantize with this many random clips")
    ap.add_argument("--check-clips", type=int, default=0, help="also run the fold_bn check on this many random clips")
    ap.add_argument("--checkpoint", type=Path, help="a trained N-MNIST checkpoint for the int8 fidelity figures")
    data = Path(os.environ.get("SVFORMER_DATA", ROOT.parent / "shared" / "data"))
    ap.add_argument("--nmnist", type=Path, default=data / "events" / "nmnist-small")
    ap.add_argument("--cal-stride", type=int, default=31, help="every n-th train clip is a calibration clip")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        trained_figures(args.checkpoint, args.nmnist, args.cal_stride)
    else:
        base_figures(args.arch, args.quantize_clips, args.check_clips)


if __name__ == "__main__":
    main()
