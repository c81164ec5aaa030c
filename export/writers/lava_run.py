"""Run one netx HDF5 file in Lava's fixed-point CPU simulator; a standalone script for the Lava venv.

    $LAVA_VENV/bin/python export/writers/lava_run.py [--aligned] part_0.h5 in.npz out.npz [h5 in out ...]

``in.npz`` holds ``spikes``: one clip of input spikes ``[T, C, H, W]`` (0/1). The network
(``netx.hdf5.Network``) is fed by a ``RingBuffer`` source and read by a ``RingBuffer`` sink and run
one step at a time with ``Loihi2SimCfg(select_tag="fixed_pt")``; after every step the membrane
``v`` and current ``u`` of each layer are read. ``out.npz`` gets ``spikes`` ``[T', C', H', W']`` (the
last layer) and ``v<i>``/``u<i>`` ``[T', C_i, H_i, W_i]`` per layer, in the file's (C, H, W) order.

Lava delays every layer by one step and its neurons integrate their bias from the first step, before
any synaptic input arrives. Without ``--aligned`` the network runs as is for T' = T steps. With
``--aligned`` the input is followed by L zero steps (T' = T + L for L layers) and netx's reset
schedule (``reset_interval``, ``reset_offset=1``) clears layer i's ``u`` and ``v`` at the start of
Lava step i + 2, just before its first synaptic input: then the output at step t + L and layer i's
state at step t + i + 1 are the undelayed chain's at step t, bias included.

This file imports only numpy and Lava (it never imports svformer-deploy, whose numpy 2 cannot
load beside Lava's numpy < 2).
"""

from __future__ import annotations

import sys
import time

import numpy as np


def run(h5: str, spikes: np.ndarray, aligned: bool = False) -> dict[str, np.ndarray]:
    import h5py
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc import io

    kwargs = {}
    if aligned:
        with h5py.File(h5, "r") as f:
            n_layers = sum(1 for k in f["layer"] if "neuron" in f["layer"][k])
        spikes = np.concatenate([spikes, np.zeros((n_layers, *spikes.shape[1:]), spikes.dtype)])
        kwargs = {"reset_interval": 1 << 20, "reset_offset": 1}
    T = spikes.shape[0]
    net = netx.hdf5.Network(net_config=h5, **kwargs)
    data = np.transpose(spikes, (3, 2, 1, 0)).astype(np.int32)  # [T, C, H, W] -> netx (x, y, z, t) = (W, H, C, T)
    if tuple(data.shape[:3]) != tuple(net.inp.shape):
        raise SystemExit(f"input spikes {spikes.shape} do not fit the network input {net.inp.shape} (x, y, z)")
    source = io.source.RingBuffer(data=data)
    sink = io.sink.RingBuffer(shape=net.out.shape, buffer=T)
    source.s_out.connect(net.inp)
    net.out.connect(sink.a_in)
    cfg = Loihi2SimCfg(select_tag="fixed_pt")
    vs = [[] for _ in net.layers]
    us = [[] for _ in net.layers]
    try:
        for _ in range(T):
            net.run(condition=RunSteps(num_steps=1), run_cfg=cfg)
            for i, layer in enumerate(net.layers):
                vs[i].append(np.asarray(layer.neuron.v.get()))
                us[i].append(np.asarray(layer.neuron.u.get()))
        out = np.asarray(sink.data.get())
    finally:
        net.stop()
    result = {"spikes": np.transpose(out, (3, 2, 1, 0))}  # (x, y, z, t) -> [T, C, H, W]
    for i in range(len(net.layers)):
        result[f"v{i}"] = np.transpose(np.stack(vs[i]), (0, 3, 2, 1))
        result[f"u{i}"] = np.transpose(np.stack(us[i]), (0, 3, 2, 1))
    return result


def main(argv: list[str]) -> int:
    aligned = bool(argv) and argv[0] == "--aligned"
    argv = argv[1:] if aligned else argv
    if not argv or len(argv) % 3:
        print(__doc__, file=sys.stderr)
        return 2
    for i in range(0, len(argv), 3):  # several files in one process: Lava's import takes seconds
        h5, inp, out = argv[i:i + 3]
        spikes = np.load(inp)["spikes"]
        t0 = time.perf_counter()
        result = run(h5, spikes, aligned)
        result["seconds"] = np.float64(time.perf_counter() - t0)
        np.savez(out, **result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
