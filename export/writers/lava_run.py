"""Run netx HDF5 files written by svformer-deploy in stock Lava; a standalone script for the Lava venv.

    $LAVA_VENV/bin/python export/writers/lava_run.py [--states] part_0.h5 in.npz out.npz [h5 in out ...]

``in.npz`` holds ``spikes``: one clip of the part's input spikes ``[T, C, H, W]`` (0/1, the graph's
data channels). :func:`run` is the documented recipe, literally (docs/export.md, "netx and Lava"):

1. ``net = netx.hdf5.Network(net_config=h5)`` with default arguments;
2. append the file's ``const_channels`` channels of ones (``/svformer`` JSON of the file; also in the
   bundle manifest) to every input step, then L zero frames (L = layers with a neuron);
3. ``io.source.RingBuffer(data=x)`` -> ``net.inp``, ``net.out`` -> ``io.sink.RingBuffer`` of T + L frames;
4. ``net.run(RunSteps(T + L), Loihi2SimCfg(select_tag="fixed_pt"))``; sink frames L .. L + T - 1 are the
   graph's output steps 0 .. T - 1.

``out.npz`` gets ``spikes`` ``[T + L, C', H', W']`` (the whole sink). With ``--states`` the same network is
built and run a second time one step at a time (``RunSteps(1)``, T + L times), reading each layer's
membrane ``v`` and current ``u`` after every step: ``v<i>``/``u<i>`` ``[T + L, C_i, H_i, W_i]`` and that
run's sink as ``spikes_stepped``. Arrays are in the file's (C, H, W) order.

This file imports only numpy, h5py and Lava (it never imports svformer-deploy, whose numpy 2 cannot
load beside Lava's numpy < 2).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def recipe_input(h5: str, spikes: np.ndarray) -> np.ndarray:
    """Step 2 of the recipe: ``[T, C, H, W]`` data spikes -> ``[T + L, C + n, H, W]`` (ones, then zero frames)."""
    import h5py
    with h5py.File(h5, "r") as f:
        n_layers = sum(1 for k in f["layer"] if "neuron" in f["layer"][k])
        meta = json.loads(f["svformer"][()].decode()) if "svformer" in f else {}
    n = int(meta.get("const_channels", 0))
    T, _, H, W = spikes.shape
    x = np.concatenate([spikes.astype(np.int32), np.ones((T, n, H, W), np.int32)], axis=1)
    return np.concatenate([x, np.zeros((n_layers, *x.shape[1:]), np.int32)])


def run(h5: str, spikes: np.ndarray, states: bool = False) -> dict[str, np.ndarray]:
    """The recipe on ``h5`` for data spikes ``[T, C, H, W]``; see the module doc for the result."""
    x = recipe_input(h5, spikes)
    result = {"spikes": _run(h5, x, stepped=False)[0]}
    if states:
        out, vs, us = _run(h5, x, stepped=True)
        result["spikes_stepped"] = out
        for i, (v, u) in enumerate(zip(vs, us, strict=True)):
            result[f"v{i}"] = v
            result[f"u{i}"] = u
    return result


def _run(h5: str, x: np.ndarray, stepped: bool) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc import io

    steps = x.shape[0]
    net = netx.hdf5.Network(net_config=h5)
    data = np.transpose(x, (3, 2, 1, 0))  # [T, C, H, W] -> netx (x, y, z, t) = (W, H, C, T)
    if tuple(data.shape[:3]) != tuple(net.inp.shape):
        raise SystemExit(f"input {x.shape} (data + constant channels) does not fit the network input "
                         f"{net.inp.shape} (x, y, z)")
    source = io.source.RingBuffer(data=data)
    sink = io.sink.RingBuffer(shape=net.out.shape, buffer=steps)
    source.s_out.connect(net.inp)
    net.out.connect(sink.a_in)
    cfg = Loihi2SimCfg(select_tag="fixed_pt")
    vs = [[] for _ in net.layers]
    us = [[] for _ in net.layers]
    try:
        if not stepped:
            net.run(condition=RunSteps(num_steps=steps), run_cfg=cfg)
        else:
            for _ in range(steps):
                net.run(condition=RunSteps(num_steps=1), run_cfg=cfg)
                for i, layer in enumerate(net.layers):
                    vs[i].append(np.asarray(layer.neuron.v.get()))
                    us[i].append(np.asarray(layer.neuron.u.get()))
        out = np.asarray(sink.data.get())
    finally:
        net.stop()
    spikes = np.transpose(out, (3, 2, 1, 0))  # (x, y, z, t) -> [T, C, H, W]
    return (spikes, [np.transpose(np.stack(v), (0, 3, 2, 1)) for v in vs] if stepped else [],
            [np.transpose(np.stack(u), (0, 3, 2, 1)) for u in us] if stepped else [])


def main(argv: list[str]) -> int:
    states = bool(argv) and argv[0] == "--states"
    argv = argv[1:] if states else argv
    if not argv or len(argv) % 3:
        print(__doc__, file=sys.stderr)
        return 2
    for i in range(0, len(argv), 3):  # several files in one process: Lava's import takes seconds
        h5, inp, out = argv[i:i + 3]
        spikes = np.load(inp)["spikes"]
        t0 = time.perf_counter()
        result = run(h5, spikes, states)
        result["seconds"] = np.float64(time.perf_counter() - t0)
        np.savez(out, **result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
