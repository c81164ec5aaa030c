"""Clips per second of batched simulation (``Simulator.run_batch``) for B = 1, 4, 16 clips per pass.

Models: ``demo`` (the demo's 3-stage model, ``svformer.demo_config``: 32x32, T=8, dims 16/32/64) and
``base`` (SVFormer-base, 224x224, T=16). Each model is prepared once by ``bench_simulator.prepare``
(random weights, BN statistics from the clip, one BN shift bisected to ~12 % overall firing; a real
UCF101 clip for ``base`` when ``SVFORMER_DATA`` holds it, random frames otherwise). The B clips of a
batch are that clip made different: clip i is rolled by i steps in time, mirrored for odd i and scaled
by 0.5 + i/B, so the clips' activity differs.

Every (model, B) runs in its own subprocess, which times, one torch thread each:

- ``sim``: ``Simulator(graph, "float", float32).run_batch(clips[:B])`` with full counting (the
  executor ``simulate`` and ``energy-report --videos`` use), minimum over ``--repeat`` runs after
  one warm-up; clips/s = B / that time;
- ``torch``: the dense PyTorch eval forward of the same model on one clip (batch 1) in the same
  process: the baseline; the ratio printed is (sim clips/s) / (torch clips/s);
- memory: the subprocess's peak RSS after the simulation (before the PyTorch forward runs), and
  its growth over the RSS just before the batch ran;
- check: clips 0 and B-1 simulated alone give the same counts as in the batch (and the same logits).

    SVFORMER_DATA=/path/to/data .venv/bin/python benchmarks/bench_batch.py [--models demo,base]
        [--batches 1,4,16] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_simulator as bs  # noqa: E402 - prepare(), load_model(), rss/peak helpers
from timing import timed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _demo_spec() -> dict:
    from svformer_deploy.svformer import demo_config

    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in demo_config.MODEL.items()}
    overrides["in_channels"] = 3  # the demo trains on RGB frames (TRAIN video_input "rgb")
    return dict(variant=demo_config.ARCH, overrides=overrides, kind="video", file=("no-such-file",))


def batch_clips(clip, batch: int):
    """``[B, T, C, H, W]``: clip i rolled by i steps, mirrored for odd i, scaled by 0.5 + i/B."""
    import torch

    out = []
    for i in range(batch):
        c = clip.roll(i, dims=0)
        if i % 2:
            c = c.flip(-1)
        out.append(c * (0.5 + i / batch))
    return torch.stack(out)


def child(work: Path, batch: int, repeat: int) -> dict:
    import numpy as np
    import torch
    from svformer_deploy.export import ir
    from svformer_deploy.simulators.counting import K
    from svformer_deploy.simulators.executor import Simulator

    clip = torch.load(work / "clip.pt", weights_only=True)
    clips = batch_clips(clip, batch)
    sim = Simulator(ir.load(work / "ir.json"), "float", torch.float32)
    before = bs.rss_mb()
    out = {}
    sim_times = timed(lambda: out.__setitem__("r", sim.run_batch(clips)), repeat)
    peak = bs.peak_mb()
    results = out.pop("r")
    spikes = [int(sum(t[K["spikes_out"]].sum() for t in r.counts.values())) for r in results]
    same = True
    for b in sorted({0, batch - 1}):
        one = sim.run(clips[b])
        same &= all(np.array_equal(one.counts[n], results[b].counts[n]) for n in one.counts)
        same &= bool(np.array_equal(one.logits, results[b].logits))
    model = bs.load_model(work)
    with torch.no_grad():
        torch_times = timed(lambda: model.forward_sequence(clip[:, None]), repeat)
    return {"batch": batch, "sim_s": min(sim_times), "sim_times": sim_times, "torch_s": min(torch_times),
            "torch_times": torch_times, "peak_rss_mb": peak, "rss_growth_mb": peak - before,
            "spikes_per_clip": spikes, "same_as_single": same, "threads": torch.get_num_threads()}


def run_child(args: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return {"error": tail, "returncode": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,base")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--target-rate", type=float, default=0.12)
    ap.add_argument("--json", type=Path, help="Also write the results as JSON.")
    ap.add_argument("--child", nargs=3, metavar=("WORK", "BATCH", "REPEAT"), help=argparse.SUPPRESS)
    ap.add_argument("--prepare", nargs=2, metavar=("MODEL", "WORK"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    bs.MODELS["demo"] = _demo_spec()
    if a.child:
        import torch

        torch.set_num_threads(1)
        print(json.dumps(child(Path(a.child[0]), int(a.child[1]), int(a.child[2]))))
        return
    if a.prepare:
        import torch

        torch.set_num_threads(1)
        print(json.dumps(bs.prepare(a.prepare[0], Path(a.prepare[1]), a.target_rate)))
        return
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; "
          "1 torch thread per process")
    report = {"load_start": load, "models": {}}
    for name in a.models.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-batch-{name}-") as tmp:
            prep = run_child(["--prepare", name, tmp])
            if "error" in prep:
                print(f"{name}: preparation failed: {prep['error']}")
                continue
            print(f"\n{name}: clip {prep['clip_shape']} from {prep['source']}, {prep['params']:,} parameters, "
                  f"firing {100 * prep['model_rate']:.1f} %")
            print(f"{'B':>3} {'sim s/batch':>12} {'sim clips/s':>12} {'vs B=1':>7} {'torch clips/s':>14} "
                  f"{'sim/torch':>10} {'peak RSS MB':>12} {'growth MB':>10}  same as single")
            rows = []
            for b in (int(x) for x in a.batches.split(",")):
                r = run_child(["--child", tmp, str(b), str(a.repeat)])
                r.setdefault("batch", b)
                rows.append(r)
                if "error" in r:
                    print(f"{b:>3} failed (exit {r.get('returncode')}): {r['error']}")
                    continue
                cps, tps = b / r["sim_s"], 1 / r["torch_s"]
                first = next((x for x in rows if "error" not in x), r)
                base_cps = first["batch"] / first["sim_s"]
                r.update(sim_clips_per_s=cps, torch_clips_per_s=tps, ratio_to_torch=cps / tps,
                         speedup_vs_first=cps / base_cps)
                print(f"{b:>3} {r['sim_s']:12.3f} {cps:12.2f} {cps / base_cps:6.2f}x {tps:14.2f} {cps / tps:9.2f}x "
                      f"{r['peak_rss_mb']:12.0f} {r['rss_growth_mb']:10.0f}  {r['same_as_single']}")
            report["models"][name] = {"prepare": prep, "rows": rows}
    load = os.getloadavg()
    report["load_end"] = load
    print(f"\nload average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
