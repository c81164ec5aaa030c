"""Speed and memory of the event-driven simulator against dense PyTorch, onnxruntime and SpikingJelly's counter.

For each model (``small``: the 3-stage DVS variant at 128x128, T=16, on a real AEDAT4 event
recording; ``base``: SVFormer-base at 224x224, T=16, on a real video clip) and the **same clip**:

- (a) ``torch``: the dense PyTorch eval forward of the original SpikingJelly model (no counting);
- (b) ``sim``: our simulator (float32, ``kernel="auto"``) with full per-layer, per-step counting;
  also ``sim-nocount`` (same, counting off), ``sim-events`` (event kernels for every spike
  input, whatever the density) and ``sim-int`` (the integer executor on the int8-quantized graph,
  calibrated on the clip; its logits differ from the float model by the quantization error);
- (c) ``onnx``: onnxruntime on the float32 ONNX file the exporter writes for the graph
  (``model_fp32.onnx``, ``export.writers.onnx_writer.write_onnx(..., mode="float32")``:
  ``ReferenceModel`` unrolled over T, ``torch.onnx.export(..., dynamo=True)``; export time reported
  separately). Float32, because that is what a deployment runs and what (a) and (b) run; the
  bundle's verified ``model.onnx`` is float64 with its convolutions as gather + MatMul (onnxruntime
  has no float64 Conv), which would time another program;
- (d) ``sj``: SpikingJelly 2.0's op counter (``DispatchCounterMode`` with AC, MAC and SynOp
  counters) around one forward of the original model.

Weights are random (no trained model ships with the repository); BN running statistics are set
from one train-mode pass over the clip, then one common shift is added to every BN's beta, found by
bisection so that the overall firing rate is ``--target-rate`` (default 12 %, the range of a trained
SVFormer; the per-layer range is printed). Every phase runs in its own subprocess: wall
times are the minimum and median over ``--repeat`` runs after one warm-up (SJ: one run), memory is
the subprocess's peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and its
growth over the RSS measured just before the timed runs (``/proc/self/status`` VmRSS), i.e. what
the execution itself allocated. Cross-checks printed: max |logit difference| of (b) and (c) vs (a),
and SJ's SynOp total vs the simulator's AC total.

    .venv/bin/python benchmarks/bench_simulator.py [--models small,base] [--repeat 3] [--threads N]
        [--phases torch,sim,sim-nocount,sim-events,onnx,sj] [--data DIR] [--kernels]

``--kernels`` instead times the event kernels against the dense kernels on SVFormer-base layer
shapes at several input densities (the crossover behind ``simulators.kernels.DEFAULT_MAX_DENSITY``).
``--trained CKPT`` instead measures fidelity on a trained N-MNIST checkpoint (e.g. the one
``benchmarks/train_nmnist.py`` writes) over the labelled test samples: spike flips and logit
differences of the float64/float32 simulator against the PyTorch model, and the int8 integer
simulator's top-1 agreement and accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import timed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = Path(os.environ.get("SVFORMER_DATA", REPO.parent / "shared" / "data"))
MODELS = {
    "small": dict(variant="3stg", overrides=dict(img_size=128, time_steps=16), kind="events",
                  file=("events", "samples", "davis346_sample.aedat4")),
    "base": dict(variant="base", overrides=dict(img_size=224, time_steps=16), kind="video",
                 file=("video", "eye_makeup_ucf101.avi")),
}
PHASES = ("pair", "torch", "sim", "sim-nocount", "sim-events", "sim-int", "onnx", "sj", "fidelity")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# preparation (own subprocess): model with calibrated BN, folded graph, clip
# ---------------------------------------------------------------------------------------------
def overall_rate(model, clip) -> float:
    """Spikes / (neurons x steps) over all neuron layers of the PyTorch model on one clip."""
    import torch
    from spikingjelly.activation_based import neuron as sj_neuron

    acc = [0.0, 0]

    def hook(_m, _i, out):
        acc[0] += float(out.sum())
        acc[1] += out.numel()

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, sj_neuron.BaseNode)]
    try:
        with torch.no_grad():
            model.forward_sequence(clip[:, None])
    finally:
        for h in hooks:
            h.remove()
    return acc[0] / acc[1]


def prepare(name: str, work: Path, target_rate: float) -> dict:
    import torch
    from svformer_deploy.export import ir
    from svformer_deploy.export.pipeline import run_pipeline
    from svformer_deploy.svformer.variants import create_model
    from torch import nn

    spec = MODELS[name]
    torch.manual_seed(0)
    model = create_model(spec["variant"], **spec["overrides"])
    cfg = model.cfg
    path = DATA.joinpath(*spec["file"])
    if path.exists():
        if spec["kind"] == "events":
            from svformer_deploy.svformer.data.events import load_event_clip

            clip = load_event_clip(path, cfg.time_steps, cfg.img_size)
        else:
            from svformer_deploy.svformer.data.video import load_clip

            clip = load_clip(path, time_steps=cfg.time_steps, size=cfg.img_size)
        source = str(path)
    else:
        g = torch.Generator().manual_seed(1)
        clip = torch.randn(cfg.time_steps, cfg.in_channels, cfg.img_size, cfg.img_size, generator=g)
        source = "random frames (real data not found)"
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            m.momentum = 1.0
        model.train()
        model.forward_sequence(torch.stack([clip, clip.flip(-1)], dim=1))  # BN statistics of this input
        model.eval()
        for m in bns:
            m.momentum = 0.1
        beta = [m.bias.clone() for m in bns]
        lo, hi, shift, rate = -0.3, 0.5, 0.0, 0.0
        for _ in range(8):  # bisection on a common BN shift for the target overall firing rate
            for m, b0 in zip(bns, beta, strict=True):
                m.bias.copy_(b0 + shift)
            rate = overall_rate(model, clip)
            if abs(rate - target_rate) < 0.01:
                break
            lo, hi = (shift, hi) if rate < target_rate else (lo, shift)
            shift = (lo + hi) / 2
    from svformer_deploy.export.passes.quantize import QuantConfig

    calib = torch.stack([clip, clip.flip(-1)], dim=1)  # [T, 2, C, H, W]
    res = run_pipeline(model, quant=QuantConfig(), calibration=calib)
    torch.save({"config": cfg.to_dict(), "state_dict": model.state_dict()}, work / "model.pt")
    ir.save(res.graphs["folded"], work / "ir.json")
    ir.save(res.graphs["quantized"], work / "ir_int.json")
    torch.save(clip, work / "clip.pt")
    return {"source": source, "clip_shape": list(clip.shape), "params": sum(p.numel() for p in model.parameters()),
            "bn_shift": shift, "model_rate": rate}


def load_model(work: Path):
    import torch
    from svformer_deploy.svformer.config import SVFormerConfig
    from svformer_deploy.svformer.model import SVFormer

    blob = torch.load(work / "model.pt", weights_only=True)
    model = SVFormer(SVFormerConfig.from_dict(blob["config"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval()


# ---------------------------------------------------------------------------------------------
# phases (each in its own subprocess)
# ---------------------------------------------------------------------------------------------


def phase(name: str, work: Path, repeat: int) -> dict:
    import numpy as np
    import torch

    clip = torch.load(work / "clip.pt", weights_only=True)
    x = clip[:, None]  # [T, 1, C, H, W]
    res: dict = {}
    if name == "torch":
        model = load_model(work)
        base = rss_mb()
        with torch.no_grad():
            times = timed(lambda: model.forward_sequence(x), repeat)
            res["logits"] = model.forward_sequence(x)[0].tolist()
    elif name.startswith("sim"):
        from svformer_deploy.export import ir
        from svformer_deploy.simulators.counting import K
        from svformer_deploy.simulators.executor import Simulator

        integer = name == "sim-int"
        graph = ir.load(work / ("ir_int.json" if integer else "ir.json"))
        kernel = "events" if name == "sim-events" else "auto"
        sim = Simulator(graph, "integer" if integer else "float", torch.float32, kernel=kernel,
                        count=name != "sim-nocount")
        base = rss_mb()
        out = {}
        times = timed(lambda: out.__setitem__("r", sim.run(clip)), repeat)
        r = out["r"]
        res["logits"] = r.logits.tolist()
        if r.counts:
            tot = {k: int(sum(c[K[k]].sum() for c in r.counts.values())) for k in K}
            res["totals"] = tot
            rates = [float(r.counts[n][K["spikes_out"]].sum()) / (np.prod(graph.nodes[n]["shape"]) * sim.time_steps)
                     for n in sim.neurons]
            res["rates"] = {"mean": float(np.mean(rates)), "min": float(np.min(rates)), "max": float(np.max(rates)),
                            "overall": tot["spikes_out"] / sum(np.prod(graph.nodes[n]["shape"]) * sim.time_steps
                                                               for n in sim.neurons)}
    elif name == "pair":  # (a) and (b) alternated in one process: their ratio is robust to load drift
        from svformer_deploy.export import ir
        from svformer_deploy.simulators.executor import Simulator

        model = load_model(work)
        sim = Simulator(ir.load(work / "ir.json"), "float", torch.float32)
        base = rss_mb()
        with torch.no_grad():
            model.forward_sequence(x)
            sim.run(clip)
            ta, tb = [], []
            for _ in range(repeat):
                ta += timed(lambda: model.forward_sequence(x), 1, warmup=False)
                tb += timed(lambda: sim.run(clip), 1, warmup=False)
        times = ta
        res["sim_times"] = tb
        res["round_ratios"] = [b / a for a, b in zip(ta, tb, strict=True)]
    elif name == "fidelity":  # spikes and logits of the simulator vs the PyTorch model, float64 and float32
        from spikingjelly.activation_based import neuron as sj_neuron
        from svformer_deploy.export import ir
        from svformer_deploy.export.fidelity import compare_spikes
        from svformer_deploy.simulators.executor import Simulator

        model = load_model(work)
        graph = ir.load(work / "ir.json")
        base = rss_mb()
        times = []
        for dtype, label in ((torch.float64, "f64"), (torch.float32, "f32")):
            m = model.to(dtype)
            spikes: dict = {}
            hooks = [mod.register_forward_hook(lambda _m, _i, o, n=n, d=spikes: d.__setitem__(n, o[:, 0] != 0))
                     for n, mod in m.named_modules() if isinstance(mod, sj_neuron.BaseNode)]
            with torch.no_grad():
                ref = m.forward_sequence(x.to(dtype))[0].double().numpy()
            for h in hooks:
                h.remove()
            t0 = time.perf_counter()
            r = Simulator(graph, "float", dtype).run(clip, record_spikes=True)
            times.append(time.perf_counter() - t0)
            cmp = compare_spikes(spikes, r.spikes)
            res[label] = {"flips": cmp["flips"], "spikes": cmp["spikes_ref"], "recall": cmp["recall"],
                          "precision": cmp["precision"], "first_divergence": cmp["first_divergence"],
                          "max_abs_dlogit": float(np.abs(r.logits - ref).max()),
                          "max_abs_logit": float(np.abs(ref).max()),
                          "top1_same": int(np.argmax(r.logits)) == int(np.argmax(ref))}
            del spikes
    elif name == "onnx":
        from svformer_deploy.export import ir
        from svformer_deploy.export.writers.onnx_writer import session, write_onnx

        graph = ir.load(work / "ir.json")
        path = work / "model_fp32.onnx"
        t0 = time.perf_counter()
        write_onnx(graph, path, x, mode="float32")  # the project's ONNX writer: `export`'s model_fp32.onnx
        res["export_s"] = time.perf_counter() - t0
        sess = session(path)  # the exporter's session settings: CPU, torch's thread count
        feed = {sess.get_inputs()[0].name: x.numpy()}
        base = rss_mb()
        times = timed(lambda: sess.run(None, feed), repeat)
        res["logits"] = sess.run(None, feed)[0][0].tolist()
        res["onnx_mb"] = path.stat().st_size / 2**20
    elif name == "sj":
        from spikingjelly.activation_based.op_counter import (
            ACCounter,
            DispatchCounterMode,
            MACCounter,
            SynOpCounter,
        )

        model = load_model(work)
        counters = [ACCounter(), MACCounter(), SynOpCounter()]
        base = rss_mb()

        def run():
            for c in counters:
                c.reset()
            with torch.no_grad(), DispatchCounterMode(counters):
                model.forward_sequence(x)

        times = timed(run, 1, warmup=False)
        res["sj"] = {"ac": counters[0].get_total(), "mac": counters[1].get_total(), "synop": counters[2].get_total()}
    else:
        raise SystemExit(f"unknown phase {name}")
    res.update(times=times, rss_before_mb=base, peak_rss_mb=peak_mb(), threads=torch.get_num_threads())
    return res


def run_child(args: list[str], threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# kernel crossover
# ---------------------------------------------------------------------------------------------
def kernel_crossover(repeat: int) -> None:
    import torch
    from svformer_deploy.simulators.kernels import Conv2dKernel, KernelPolicy, LinearKernel

    events, dense = KernelPolicy("events"), KernelPolicy("dense")
    g = torch.Generator().manual_seed(0)
    cases = [  # SVFormer-base shapes (one time step)
        ("PE2 conv 4x4/2 128->256 @56", "conv", (128, 56, 56), (256, 128, 4, 4), 2, 1, 1),
        ("LFE conv1 1x1 128->128 @56", "conv", (128, 56, 56), (128, 128, 1, 1), 1, 0, 1),
        ("LFE MLP fc2 1x1 256->128 @56", "conv", (256, 56, 56), (128, 256, 1, 1), 1, 0, 1),
        ("LP DW 3x3/2 384 @14", "conv", (384, 14, 14), (384, 1, 3, 3), 2, 1, 384),
        ("GSA qkv 384->1152, 196 tokens", "linear", (196, 384), (1152, 384), 0, 0, 0),
        ("GSA fc2 1024->512, 49 tokens", "linear", (49, 1024), (512, 1024), 0, 0, 0),
    ]
    print(f"threads {torch.get_num_threads()}; min of {repeat} runs, ms per call")
    print(f"{'layer':34s} {'dense':>8s}  " + "  ".join(f"ev@{d:<5g}" for d in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)))
    for label, kind, xs, ws, stride, pad, groups in cases:
        w = torch.randn(*ws, generator=g)

        def mk(pol, w=w, kind=kind, xs=xs, stride=stride, pad=pad, groups=groups):
            if kind == "conv":
                return Conv2dKernel(w, (stride,) * 2, (pad,) * 2, groups, xs, pol)
            return LinearKernel(w, pol)

        row = []
        for d in (0.1, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2):
            mask = torch.rand(1, *xs, generator=g) < d  # the kernels take a batch of clips: a batch of one
            k = mk(dense if len(row) == 0 else events)
            nnz = [int(mask.sum())]
            row.append(min(timed(lambda k=k, mask=mask, nnz=nnz: k.spikes(mask, nnz), repeat)) * 1e3)
        print(f"{label:34s} {row[0]:8.2f}  " + "  ".join(f"{v:8.2f}" for v in row[1:]))


# ---------------------------------------------------------------------------------------------
# fidelity on a trained model
# ---------------------------------------------------------------------------------------------
def trained_fidelity(checkpoint: Path, folder: Path, limit: int) -> None:
    """Simulator vs the PyTorch model of a trained N-MNIST checkpoint on the labelled test samples."""
    import numpy as np
    import torch
    from spikingjelly.activation_based import neuron as sj_neuron
    from svformer_deploy.export.fidelity import compare_spikes
    from svformer_deploy.export.passes.quantize import QuantConfig
    from svformer_deploy.export.pipeline import run_pipeline
    from svformer_deploy.simulators.executor import Simulator
    from svformer_deploy.svformer.checkpoint import load_model
    from svformer_deploy.svformer.data.datasets import InputSpec, nmnist_dataset

    model, ck = load_model(checkpoint)
    model.eval()
    spec = InputSpec.from_preprocessing(ck.preprocessing, ck.config)
    test = nmnist_dataset(folder, "test", spec)
    train = nmnist_dataset(folder, "train", spec)
    calib = torch.stack([train[i][0] for i in range(16)], dim=1)
    res = run_pipeline(model, quant=QuantConfig(), calibration=calib)
    sims = {"f64": Simulator(res.graphs["folded"], "float", torch.float64),
            "f32": Simulator(res.graphs["folded"], "float", torch.float32),
            "int": Simulator(res.graphs["quantized"], "integer")}
    stats = {k: {"flips": 0, "spikes": 0, "dlogit": 0.0, "agree": 0, "correct": 0} for k in sims}
    torch_correct, n = 0, min(limit, len(test))
    for i in range(n):
        clip, label = test[i]
        for key, dtype in (("f64", torch.float64), ("f32", torch.float32)):
            m = model.to(dtype)
            spikes: dict = {}
            hooks = [mod.register_forward_hook(lambda _m, _i, o, n=name, d=spikes: d.__setitem__(n, o[:, 0] != 0))
                     for name, mod in m.named_modules() if isinstance(mod, sj_neuron.BaseNode)]
            with torch.no_grad():
                ref = m.forward_sequence(clip[:, None].to(dtype))[0].double().numpy()
            for h in hooks:
                h.remove()
            targets = [key, "int"] if key == "f32" else [key]
            for k in targets:
                r = sims[k].run(clip, record_spikes=True)
                st = stats[k]
                cmp = compare_spikes(spikes, r.spikes)
                st["flips"] += cmp["flips"]
                st["spikes"] += cmp["spikes_ref"]
                st["dlogit"] = max(st["dlogit"], float(np.abs(r.logits - ref).max()))
                st["agree"] += int(np.argmax(r.logits) == np.argmax(ref))
                st["correct"] += int(np.argmax(r.logits) == label)
            if key == "f32":
                torch_correct += int(np.argmax(ref) == label)
        model.to(torch.float32)
    print(f"trained model {checkpoint} ({ck.arch}, T={spec.time_steps}, {spec.size}x{spec.size}), {n} labelled "
          f"N-MNIST test samples; PyTorch float32 top-1 {torch_correct / n:.3f}")
    for k, label in (("f64", "float64 simulator vs PyTorch float64"), ("f32", "float32 simulator vs PyTorch float32"),
                     ("int", "integer simulator (int8) vs PyTorch float32")):
        st = stats[k]
        print(f"  {label}: {st['flips']:,} spike flips of {st['spikes']:,} "
              f"({st['flips'] / max(st['spikes'], 1):.2e}), max |dlogit| {st['dlogit']:.3g}, "
              f"top-1 agreement {st['agree'] / n:.3f}, accuracy {st['correct'] / n:.3f}")


def fmt_mb(v: float) -> str:
    return f"{v:,.0f} MB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="small,base")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch/ORT threads (default: torch's default)")
    ap.add_argument("--target-rate", type=float, default=0.12,
                    help="overall firing rate the BN shifts are tuned to (random weights)")
    ap.add_argument("--kernels", action="store_true", help="time event vs dense kernels instead")
    ap.add_argument("--json", type=Path, help="also write all figures to this JSON file")
    ap.add_argument("--trained", type=Path, help="instead: fidelity of a trained N-MNIST checkpoint (see --data)")
    ap.add_argument("--data", type=Path, default=DATA / "events" / "nmnist-small", help="N-MNIST folder for --trained")
    ap.add_argument("--limit", type=int, default=100, help="test samples for --trained")
    ap.add_argument("--_phase", help=argparse.SUPPRESS)
    ap.add_argument("--_prepare", help=argparse.SUPPRESS)
    ap.add_argument("--_work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args._prepare:
        print(json.dumps(prepare(args._prepare, args._work, args.target_rate)))
        return
    if args._phase:
        print(json.dumps(phase(args._phase, args._work, args.repeat)))
        return
    if args.kernels:
        kernel_crossover(args.repeat)
        return
    if args.trained:
        trained_fidelity(args.trained, args.data, args.limit)
        return
    import numpy as np

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; python {sys.version.split()[0]}")
    figures = {}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-sim-{name}-") as tmp:
            work = Path(tmp)
            t0 = time.perf_counter()
            prep = run_child(["--_prepare", name, "--_work", str(work), "--target-rate", str(args.target_rate)],
                             args.threads)
            if "error" in prep:
                print(f"{name}: preparation failed: {prep['error']}")
                continue
            spec = MODELS[name]
            print(f"\n== {name}: {spec['variant']} {spec['overrides']}, {prep['params']:,} parameters; clip "
                  f"{prep['clip_shape']} from {prep['source']}; BN shift {prep['bn_shift']:+.3f} -> model firing "
                  f"rate {prep['model_rate']:.1%} (prepared in {time.perf_counter() - t0:.1f} s)")
            results = {}
            for ph in args.phases.split(","):
                extra = [] if args.threads is None else ["--threads", str(args.threads)]
                results[ph] = run_child(["--_phase", ph, "--_work", str(work), "--repeat", str(args.repeat), *extra],
                                        args.threads)
            figures[name] = {"prepare": prep, "phases": results}
            ref = results.get("torch", {})
            ref_t = min(ref["times"]) if "times" in ref else None
            pair = results.pop("pair", None)
            fid = results.pop("fidelity", None)
            print(f"{'phase':12s} {'min s':>9s} {'median s':>9s} {'x torch':>8s} {'peak RSS':>10s} "
                  f"{'run growth':>11s}  notes")
            for ph, r in results.items():
                if "error" in r:
                    print(f"{ph:12s} failed: {r['error']}")
                    continue
                tmin, tmed = min(r["times"]), statistics.median(r["times"])
                ratio = f"{tmin / ref_t:8.2f}" if ref_t else "       -"
                notes = []
                if "logits" in r and "logits" in ref and ph != "torch":
                    notes.append(f"max|dlogit| vs torch {np.abs(np.subtract(r['logits'], ref['logits'])).max():.2e}")
                if "export_s" in r:
                    notes.append(f"export {r['export_s']:.1f} s, {r['onnx_mb']:.0f} MB file")
                if "sj" in r:
                    sj = r["sj"]
                    notes.append(f"SJ AC {sj['ac']:,} MAC {sj['mac']:,} SynOp {sj['synop']:,}")
                print(f"{ph:12s} {tmin:9.3f} {tmed:9.3f} {ratio} {fmt_mb(r['peak_rss_mb']):>10s} "
                      f"{fmt_mb(r['peak_rss_mb'] - r['rss_before_mb']):>11s}  {'; '.join(notes)}")
            if pair and "times" in pair:
                print(f"interleaved (a)/(b) in one process, {len(pair['times'])} rounds: torch min "
                      f"{min(pair['times']):.3f} s, simulator with counting min {min(pair['sim_times']):.3f} s; "
                      f"sim/torch = {min(pair['sim_times']) / min(pair['times']):.2f} (ratio of minima), "
                      f"{statistics.median(pair['round_ratios']):.2f} (median of per-round ratios)")
            elif pair:
                print(f"interleaved (a)/(b) failed: {pair['error']}")
            if fid and "f64" in fid:
                for label in ("f64", "f32"):
                    f = fid[label]
                    print(f"fidelity {label}: simulator vs PyTorch model: {f['flips']:,} spike flips of "
                          f"{f['spikes']:,} spikes ({f['flips'] / max(f['spikes'], 1):.2e}), "
                          f"max |dlogit| {f['max_abs_dlogit']:.3g} "
                          f"(max |logit| {f['max_abs_logit']:.3g}), same top-1: {f['top1_same']}")
            sim = results.get("sim", {})
            if "rates" in sim:
                rt = sim["rates"]
                print(f"firing rates (simulator): overall {rt['overall']:.1%}, per layer mean {rt['mean']:.1%} "
                      f"[{rt['min']:.1%}, {rt['max']:.1%}]")
                tot = sim["totals"]
                print(f"simulator counts: AC {tot['ac']:,}, MAC {tot['mac']:,}, mul {tot['mul']:,}, "
                      f"add {tot['add']:,}, "
                      f"neuron updates {tot['neuron_updates']:,}, spikes {tot['spikes_out']:,}")
                sj = results.get("sj", {}).get("sj")
                if sj:
                    print(f"cross-check: SJ SynOp {sj['synop']:,} vs simulator AC {tot['ac']:,} "
                          f"(relative difference {abs(sj['synop'] - tot['ac']) / max(tot['ac'], 1):.2e})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
