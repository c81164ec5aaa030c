"""Lava-DL netx HDF5 files for the parts of a quantized graph that a Loihi-style core runs exactly.

One file per part of :mod:`.partition` (``netx/part_<i>.h5``). Schema (netx 0.6.0; every value is a
dataset)::

    /layer/0/type  b"input"      shape (C, H, W)                (no neuron: input spikes only)
    /layer/i/type  b"conv"       shape (C', H', W'), weight int (C', C/g, kH, kW), bias int (C') [optional],
                                 stride (2), padding (2), dilation (2), groups,
                                 inChannels, outChannels, kernelSize (informational)
             /neuron/            type b"CUBA", iDecay 4096, vDecay, vThMant, refDelay 1, gradedSpike False
    /svformer                    JSON string: part index, IR node names, layouts, source graph hash

Integer semantics (Lava's fixed-point CPU model, ``targets.md`` §7; reproduced by :func:`simulate_netx`):
``a = conv(spikes, weight)``; ``u = rtz(u·(4096 - iDecay)) + (a << 6)`` (iDecay = 4096: no current
memory); ``v = clip24(rtz(v·(4096 - vDecay)) + u + (bias << 6))``; spike where ``v > vThMant << 6``;
``v = 0`` where spiking. This is exactly the quantize pass's neuron (``decay`` = vDecay,
``theta`` = vThMant·64, ``x = acc + bias``) when the conditions of :func:`netx_issue` hold. Lava
delays every layer by one step (the synaptic sum of step k reaches the neuron at step k+1), and its
neurons integrate their bias during those warm-up steps; :func:`simulate_netx` with
``lava_timing=True`` reproduces that timing, with ``False`` the undelayed timing of the IR.
Running the file as ``netx.hdf5.Network(path, reset_interval=R, reset_offset=1)`` (R larger than
the run) with L zero steps after the T input steps (:data:`LAVA_ALIGNED`) clears layer i's state at
Lava step i + 2, just before its first input, and then Lava reproduces the quantized graph exactly,
L steps late (``export/writers/lava_run.py --aligned``; tested).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.fileio import write_buffered_atomic

from .. import ir
from .partition import Part, layer_stride_padding, layer_weights

DECAY_ONE = 4096
V_MAX = 2**23 - 1  # 24-bit membrane
ACC_BITS_MAX = 18  # |acc| <= 2^17 - 1: a << 6 fits Lava's 24-bit current and the spec's input clamp
BIAS_MAX = 2**15 - 1  # Lava keeps bias_mant as int16
WEIGHT_MAX = 127  # 8-bit signed synaptic weights
FORMAT = "svformer-deploy/netx"
LAVA_ALIGNED = ("netx.hdf5.Network(net_config=path, reset_interval=R, reset_offset=1) with R > T + L, fed the T "
                "input steps then L zero steps: Lava's output at step t + L (layer i's v, u at step t + i + 1) "
                "equals the graph's at step t")


@dataclass
class NetxLayer:
    """One conv layer + CUBA neuron of a netx file (integers; shapes [C, H, W])."""

    weight: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    v_decay: int
    threshold: int  # vThMant: spikes where v > threshold << 6
    i_decay: int = DECAY_ONE


@dataclass
class NetxNet:
    """A netx network: input shape [C, H, W] and its conv layers; ``meta`` from the file."""

    in_shape: tuple[int, int, int]
    layers: list[NetxLayer]
    meta: dict[str, Any] = field(default_factory=dict)


def netx_issue(qg: nx.DiGraph, part: Part) -> str | None:
    """Why ``part`` of the quantized graph ``qg`` cannot be written as an exact netx file, or None."""
    if "quant" not in qg.graph:
        return "the graph is not quantized (netx takes integer weights; export with --quantize)"
    for layer in part.layers:
        q = qg.nodes[layer.weighted]["quant"]
        nq = qg.nodes[layer.neuron]["quant"]
        w, b, _ = layer_weights(qg, layer, quantized=True)
        theta = np.asarray(nq["theta"]).reshape(-1)
        if "m" in q:
            return (f"{layer.weighted}: its accumulator is rescaled (m·2^-shift) before {layer.neuron} "
                    "because it shares one scale with other consumers; netx has no rescale between synapse and neuron")
        if np.unique(theta).size != 1:
            return (f"{layer.neuron}: one threshold per channel (per-channel weight scales); a netx layer has one "
                    "vThMant (quantize with per-tensor scales)")
        th = int(theta[0])
        if th % 64 != 0 or th <= 0:
            return (f"{layer.neuron}: threshold {th} is not a positive multiple of 64 (Lava compares v > vThMant << 6; "
                    "quantize with Lava thresholds)")
        if np.abs(w).max() > WEIGHT_MAX:
            return f"{layer.weighted}: weights exceed 8 bits (|w| max {int(np.abs(w).max())})"
        if b is not None and np.abs(b).max() > BIAS_MAX:
            return f"{layer.weighted}: bias exceeds Lava's int16 bias mantissa (|b| max {int(np.abs(b).max())})"
        if int(q["acc_bits"]) > ACC_BITS_MAX:
            return (f"{layer.weighted}: the accumulator may need {int(q['acc_bits'])} bits; a << 6 must fit Lava's "
                    f"24-bit current ({ACC_BITS_MAX} bits)")
        op = ir.op_of(qg, layer.neuron)
        if op.v_reset != 0.0:
            return f"{layer.neuron}: resets to {op.v_reset}; Lava resets to 0"
        if int(nq["decay"]) >= DECAY_ONE:
            return f"{layer.neuron}: voltage decay {int(nq['decay'])} does not fit Lava's 12-bit dv"
    return None


def netx_net(qg: nx.DiGraph, part: Part) -> NetxNet:
    """The netx layers of ``part`` (integer weights, biases and CUBA parameters of the quantized graph)."""
    issue = netx_issue(qg, part)
    if issue is not None:
        raise SVFormerError(f"part {part.index} is not netx-expressible: {issue}")
    layers = []
    for layer in part.layers:
        w, b, groups = layer_weights(qg, layer, quantized=True)
        nq = qg.nodes[layer.neuron]["quant"]
        stride, padding = layer_stride_padding(qg, layer)
        layers.append(NetxLayer(weight=np.asarray(w, dtype=np.int64),
                                bias=None if b is None else np.asarray(b, dtype=np.int64),
                                stride=stride, padding=padding, groups=groups, in_shape=tuple(layer.in_shape),
                                out_shape=tuple(layer.out_shape), v_decay=int(nq["decay"]),
                                threshold=int(np.asarray(nq["theta"]).reshape(-1)[0]) // 64))
    return NetxNet(in_shape=tuple(part.in_shape), layers=layers, meta=part.to_dict())


def write_netx(net: NetxNet, path: str | Path) -> Path:
    """Write ``net`` as a netx HDF5 file, atomically.

    The file is built in memory and written with plain Python I/O, so a full disk is an ``OSError``
    naming ``path`` (libhdf5 writing to a full disk can crash the interpreter).
    """
    path = Path(path)
    write_buffered_atomic(path, lambda buf: _fill_netx(net, buf))
    return path


def _fill_netx(net: NetxNet, buf: BinaryIO) -> None:
    with h5py.File(buf, "w") as f:
        root = f.create_group("layer")
        g0 = root.create_group("0")
        g0.create_dataset("type", data=np.bytes_("input"))
        g0.create_dataset("shape", data=np.asarray(net.in_shape, dtype=np.int64))
        for i, la in enumerate(net.layers, start=1):
            g = root.create_group(str(i))
            g.create_dataset("type", data=np.bytes_("conv"))
            g.create_dataset("shape", data=np.asarray(la.out_shape, dtype=np.int64))
            g.create_dataset("weight", data=la.weight.astype(np.int64))
            if la.bias is not None:
                g.create_dataset("bias", data=la.bias.astype(np.int64))
            g.create_dataset("stride", data=np.asarray(la.stride, dtype=np.int64))
            g.create_dataset("padding", data=np.asarray(la.padding, dtype=np.int64))
            g.create_dataset("dilation", data=np.asarray((1, 1), dtype=np.int64))
            g.create_dataset("groups", data=np.int64(la.groups))
            g.create_dataset("inChannels", data=np.int64(la.in_shape[0]))
            g.create_dataset("outChannels", data=np.int64(la.out_shape[0]))
            g.create_dataset("kernelSize", data=np.asarray(la.weight.shape[2:], dtype=np.int64))
            n = g.create_group("neuron")
            n.create_dataset("type", data=np.bytes_("CUBA"))
            n.create_dataset("iDecay", data=np.int64(la.i_decay))
            n.create_dataset("vDecay", data=np.int64(la.v_decay))
            n.create_dataset("vThMant", data=np.int64(la.threshold))
            n.create_dataset("refDelay", data=np.int64(1))
            n.create_dataset("gradedSpike", data=np.bool_(False))
        f.create_dataset("svformer", data=json.dumps({"format": FORMAT, **net.meta}), dtype=h5py.string_dtype())


def read_netx(path: str | Path) -> NetxNet:
    """Read a netx file written by :func:`write_netx` (conv layers with CUBA neurons) back into a :class:`NetxNet`."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            layers_g = f["layer"]
            keys = sorted(layers_g.keys(), key=int)
            first = layers_g[keys[0]]
            if first["type"][()].decode() != "input":
                raise SVFormerError(f"{path}: layer 0 is not an input layer")
            in_shape = tuple(int(s) for s in first["shape"][()])
            layers = []
            shape = in_shape
            for k in keys[1:]:
                g = layers_g[k]
                if g["type"][()].decode() != "conv":
                    raise SVFormerError(f"{path}: layer {k} is {g['type'][()].decode()}, this reader takes conv layers")
                n = g["neuron"]
                out_shape = tuple(int(s) for s in g["shape"][()])
                layers.append(NetxLayer(
                    weight=g["weight"][()].astype(np.int64),
                    bias=g["bias"][()].astype(np.int64) if "bias" in g else None,
                    stride=tuple(int(s) for s in np.broadcast_to(g["stride"][()], 2)),
                    padding=tuple(int(s) for s in np.broadcast_to(g["padding"][()], 2)),
                    groups=int(g["groups"][()]), in_shape=shape, out_shape=out_shape,
                    v_decay=int(n["vDecay"][()]), threshold=int(n["vThMant"][()]), i_decay=int(n["iDecay"][()])))
                shape = out_shape
            meta = json.loads(f["svformer"][()].decode()) if "svformer" in f else {}
    except (OSError, KeyError, ValueError) as e:
        raise SVFormerError(f"{path}: not a readable netx file ({type(e).__name__}: {e})") from None
    return NetxNet(in_shape=in_shape, layers=layers, meta=meta)


def _rtz_decay(x: torch.Tensor, decay: int) -> torch.Tensor:
    """rtz(x·(4096 - decay)): multiply, then divide by 4096 truncating toward zero (exact in float64)."""
    return torch.trunc(x * float(DECAY_ONE - decay) / DECAY_ONE)


def _wrap24(x: torch.Tensor) -> torch.Tensor:
    m = float(2**23)
    return torch.where(x > m, x - 2 * m, torch.where(x <= -m, x + 2 * m, x))


def simulate_netx(net: NetxNet, spikes: torch.Tensor, lava_timing: bool = False
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Run ``net`` on input spikes ``[T, B, C, H, W]`` with Lava's integer CUBA arithmetic (module doc).

    Returns per layer the spikes, the membrane v and the current u after every step (``[T, B, ...]``,
    float64 holding integers). ``lava_timing``: every layer sees the previous layer's spikes one step
    late (zeros at first) and integrates its bias from step 0, as Lava's CPU simulator does;
    otherwise the layers are undelayed, as in the IR and the quantize pass's spec.
    """
    x = spikes.to(torch.float64)
    if x.dim() != 5 or tuple(x.shape[2:]) != tuple(net.in_shape):
        raise SVFormerError(f"netx input must be spikes [T, B, {', '.join(map(str, net.in_shape))}], "
                            f"got {list(x.shape)}")
    T, B = x.shape[:2]
    outs, vs, us = [], [], []
    cur = x
    for la in net.layers:
        w = torch.from_numpy(la.weight.astype(np.float64))
        bias = 0.0 if la.bias is None else torch.from_numpy(la.bias.astype(np.float64)).reshape(-1, 1, 1) * 64.0
        u = torch.zeros((B, *la.out_shape), dtype=torch.float64)
        v = torch.zeros_like(u)
        s_steps, v_steps, u_steps = [], [], []
        prev_a = torch.zeros_like(u)
        for t in range(T):
            a_now = F.conv2d(cur[t], w, None, la.stride, la.padding, 1, la.groups)
            a = prev_a if lava_timing else a_now
            prev_a = a_now
            u = _wrap24(_rtz_decay(u, la.i_decay) + a * 64.0)
            v = torch.clamp(_rtz_decay(v, la.v_decay) + u + bias, -V_MAX, V_MAX)
            s = (v > la.threshold * 64.0).to(torch.float64)
            v = v * (1.0 - s)
            s_steps.append(s)
            v_steps.append(v)
            u_steps.append(u)
        cur = torch.stack(s_steps)
        outs.append(cur)
        vs.append(torch.stack(v_steps))
        us.append(torch.stack(u_steps))
    return outs, vs, us
