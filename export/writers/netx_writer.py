"""Lava-DL netx HDF5 files for the parts of a quantized graph that a Loihi-style core runs exactly.

One file per part of :mod:`.partition` (``netx/part_<i>.h5``). Schema (netx 0.6.0; every value is a
dataset)::

    /layer/0/type  b"input"      shape (C + n, H, W)            (no neuron: input spikes only)
    /layer/i/type  b"conv"       shape (C' + r, H', W'), weight int (C' + r, (C + n)/g, kH, kW),
                                 bias int (C') [only with fold=False; the exporter never writes it],
                                 stride (2), padding (2), dilation (2), groups,
                                 inChannels, outChannels, kernelSize (informational)
             /neuron/            type b"CUBA", iDecay 4096, vDecay, vThMant, refDelay 1, gradedSpike False
    /svformer                    JSON string: part index, IR node names, layouts, source graph hash,
                                 const_channels n, relays (r per layer; 0 for the last)

Integer semantics (Lava's fixed-point CPU model, ``docs/export.md``; reproduced by :func:`simulate_netx`):
``a = conv(spikes, weight)``; ``u = rtz(u·(4096 - iDecay)) + (a << 6)`` (iDecay = 4096: no current
memory); ``v = clip24(rtz(v·(4096 - vDecay)) + u + (bias << 6))``; spike where ``v > vThMant << 6``;
``v = 0`` where spiking. This is exactly the quantize pass's neuron (``decay`` = vDecay,
``theta`` = vThMant·64, ``x = acc + bias``) when the conditions of :func:`netx_issue` hold.

Lava delays every layer by one step (the synaptic sum of step k reaches the neuron at step k+1) and
adds a file ``bias`` to ``v`` at every step, also during those warm-up steps, before any input
arrives; no file content switches either off. The written files therefore hold **no bias**
(:func:`fold_bias`): the input layer has ``n`` extra *constant channels* after the data channels
(the user sets them to 1 at every input step), each layer's bias is a weight from those channels at
one tap that lies inside the unpadded input for every output position, and every non-final layer
gets ``n`` *relay* neurons that fire exactly when the constant channels reach them and serve as the
next layer's constant channels, in step with the data. Run as :data:`LAVA_RECIPE` (default
``netx.hdf5.Network`` arguments), Lava then equals the quantized graph from its first step, L steps
late (``export/writers/lava_run.py``, :func:`lava_compare`; tested).
"""

from __future__ import annotations

import json
import os
import subprocess
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
MAX_CONST_CHANNELS = 16  # constant input channels (and relays per layer) a file may need
LAVA_RECIPE = ("netx.hdf5.Network(net_config=part_<i>.h5) with default arguments; source io.source.RingBuffer: "
               "the part's input spikes [T, C, H, W] with lava.const_channels channels of ones appended, then "
               "lava.layers (L) zero frames, in netx order (W, H, C, t); sink io.sink.RingBuffer(buffer=T + L) on "
               "net.out; net.run(RunSteps(T + L), Loihi2SimCfg(select_tag='fixed_pt')); sink frames L .. L + T - 1 "
               "are the graph's output steps 0 .. T - 1")


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
    relays: int = 0  # the last ``relays`` output channels relay the constant channels (not graph neurons)


@dataclass
class NetxNet:
    """A netx network: input shape [C, H, W] and its conv layers; ``meta`` from the file."""

    in_shape: tuple[int, int, int]
    layers: list[NetxLayer]
    meta: dict[str, Any] = field(default_factory=dict)
    const_channels: int = 0  # the last ``const_channels`` input channels are 1 at every input step

    @property
    def data_in_channels(self) -> int:
        return self.in_shape[0] - self.const_channels


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
    return _fold_issue(_graph_layers(qg, part))


def _graph_layers(qg: nx.DiGraph, part: Part) -> list[NetxLayer]:
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
    return layers


def netx_net(qg: nx.DiGraph, part: Part, fold: bool = True) -> NetxNet:
    """The netx network of ``part``: as written (``fold``: biases carried by constant channels, :func:`fold_bias`)
    or, with ``fold=False``, the quantized graph's layers themselves (bias in the neuron)."""
    issue = netx_issue(qg, part)
    if issue is not None:
        raise SVFormerError(f"part {part.index} is not netx-expressible: {issue}")
    net = NetxNet(in_shape=tuple(part.in_shape), layers=_graph_layers(qg, part), meta=part.to_dict())
    return fold_bias(net) if fold else net


def _always_valid_tap(k: int, pad: int, stride: int, n_in: int, n_out: int) -> int | None:
    """A kernel tap that lands inside the unpadded input for every output position, or None."""
    for j in range(k):
        if pad <= j and (n_out - 1) * stride - pad + j <= n_in - 1:
            return j
    return None


def _const_channels_needed(layers: list[NetxLayer]) -> int:
    """n: each bias is a sum of n weights of at most 127, and n relay weights of at most 127 exceed vThMant."""
    if not any(la.bias is not None and np.any(la.bias) for la in layers):
        return 0
    n = 1
    for i, la in enumerate(layers):
        if la.bias is not None:
            n = max(n, -(-int(np.abs(la.bias).max()) // WEIGHT_MAX))
        if i + 1 < len(layers):
            n = max(n, -(-(la.threshold + 1) // WEIGHT_MAX))
    return n


def _fold_issue(layers: list[NetxLayer]) -> str | None:
    n = _const_channels_needed(layers)
    if n == 0:
        return None
    if n > MAX_CONST_CHANNELS:
        return (f"its biases/thresholds need {n} constant input channels of 8-bit weights "
                f"(more than {MAX_CONST_CHANNELS}); netx adds a file bias from Lava's first step, before any input")
    for i, la in enumerate(layers, start=1):
        for d in range(2):
            if _always_valid_tap(la.weight.shape[2 + d], la.padding[d], la.stride[d], la.in_shape[1 + d],
                                 la.out_shape[1 + d]) is None:
                return (f"layer {i}: no kernel tap lies inside the unpadded input for every output position, so its "
                        "bias cannot be carried by a constant input channel (netx would add it from Lava's first step)")
    return None


def fold_bias(net: NetxNet) -> NetxNet:
    """``net`` without biases: what stock netx (default arguments) runs like the quantized graph from step 0.

    With n = :func:`_const_channels_needed` > 0: the input gets n constant channels after the data channels;
    layer i's weights become ``[O_i + r_i, C_i + n, kH, kW]`` with ``groups`` 1 (a grouped conv becomes
    block-diagonal): the data weights, the bias b[o] split into n weights ``|w| <= 127`` from the constant
    channels at an always-valid tap, and for non-final layers r_i = n relay neurons with weight
    ``ceil((vThMant + 1) / n)`` from each constant channel at that tap (input ``> vThMant << 6``, so they spike
    exactly at the steps the constants arrive and reset to 0). The relays are the next layer's constant
    channels. The final layer has no relays: the output shape is the graph's. With n = 0 ``net`` is returned.
    """
    n = _const_channels_needed(net.layers)
    if n == 0:
        return net
    issue = _fold_issue(net.layers)
    if issue is not None:
        raise SVFormerError(f"cannot fold the biases into constant channels: {issue}")
    out = []
    for i, la in enumerate(net.layers):
        last = i + 1 == len(net.layers)
        o_n, ci = la.weight.shape[0], la.in_shape[0]
        kh, kw = la.weight.shape[2:]
        w = np.zeros((o_n + (0 if last else n), ci + n, kh, kw), np.int64)
        og, cg = o_n // la.groups, ci // la.groups
        for g in range(la.groups):
            w[g * og:(g + 1) * og, g * cg:(g + 1) * cg] = la.weight[g * og:(g + 1) * og]
        ty, tx = (_always_valid_tap(w.shape[2 + d], la.padding[d], la.stride[d], la.in_shape[1 + d],
                                    la.out_shape[1 + d]) for d in range(2))
        for o, b in enumerate(np.zeros(o_n, np.int64) if la.bias is None else la.bias.reshape(-1)):
            rest = int(b)
            for j in range(n):
                w[o, ci + j, ty, tx] = int(np.sign(rest)) * min(abs(rest), WEIGHT_MAX)
                rest -= int(w[o, ci + j, ty, tx])
        if not last:
            w[o_n:, ci:, ty, tx] = -(-(la.threshold + 1) // n)
        r = 0 if last else n
        out.append(NetxLayer(weight=w, bias=None, stride=la.stride, padding=la.padding, groups=1,
                             in_shape=(ci + n, *la.in_shape[1:]), out_shape=(o_n + r, *la.out_shape[1:]),
                             v_decay=la.v_decay, threshold=la.threshold, i_decay=la.i_decay, relays=r))
    meta = {**net.meta, "const_channels": n, "relays": [la.relays for la in out]}
    return NetxNet(in_shape=(net.in_shape[0] + n, *net.in_shape[1:]), layers=out, meta=meta, const_channels=n)


def netx_input(net: NetxNet, spikes: torch.Tensor, flush: bool = True) -> torch.Tensor:
    """The input of :data:`LAVA_RECIPE` for data spikes ``[T, B, C, H, W]``: the file's constant channels
    (ones) appended and, with ``flush``, L zero frames after the T steps (``[T + L, B, C + n, H, W]``)."""
    x = spikes.to(torch.float64)
    if x.dim() != 5 or x.shape[2] != net.data_in_channels:
        raise SVFormerError(f"netx data input must be spikes [T, B, {net.data_in_channels}, H, W], got {list(x.shape)}")
    x = torch.cat([x, torch.ones((*x.shape[:2], net.const_channels, *x.shape[3:]), dtype=x.dtype)], dim=2)
    if flush:
        x = torch.cat([x, torch.zeros((len(net.layers), *x.shape[1:]), dtype=x.dtype)])
    return x


def data_outputs(net: NetxNet, per_layer: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-layer results ``[T, B, C', H, W]`` of :func:`simulate_netx` without the relay channels (graph neurons)."""
    return [t[:, :, :t.shape[2] - la.relays] for la, t in zip(net.layers, per_layer, strict=True)]


def part_outputs(net: NetxNet, x: torch.Tensor) -> list[torch.Tensor]:
    """Per-layer spikes ``[T, B, C', H, W]`` of the file's integer semantics on the graph's timing.

    ``x``: the part's input spikes ``[T, B, C, H, W]`` (data channels only; the always-on channels are
    added). What the quantized graph computes for the part, and what Lava gives L steps later.
    """
    return data_outputs(net, simulate_netx(net, netx_input(net, x, flush=False))[0])


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
        relays = meta.get("relays", [0] * len(layers))
        if len(relays) != len(layers):
            raise ValueError(f"meta lists relays of {len(relays)} layers, the file has {len(layers)}")
        for la, r in zip(layers, relays, strict=True):
            la.relays = int(r)
        const_channels = int(meta.get("const_channels", 0))
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise SVFormerError(f"{path}: not a readable netx file ({type(e).__name__}: {e})") from None
    return NetxNet(in_shape=in_shape, layers=layers, meta=meta, const_channels=const_channels)


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


# ---------------------------------------------------------------------------------------------
# Stock Lava (separate venv): run the recipe and compare
# ---------------------------------------------------------------------------------------------
LAVA_RUN = Path(__file__).with_name("lava_run.py")


def default_lava_venv() -> Path:
    """``SVFORMER_LAVA_VENV`` or ``~/.cache/svformer-deploy/lava-venv`` (built by ``make lava-venv``)."""
    return Path(os.environ.get("SVFORMER_LAVA_VENV", Path.home() / ".cache" / "svformer-deploy" / "lava-venv"))


def lava_python(venv: str | Path | None = None) -> Path | None:
    """The Lava venv's python, or None when the venv is missing or incomplete."""
    venv = Path(venv) if venv is not None else default_lava_venv()
    py = venv / "bin" / "python"
    return py if py.exists() and (venv / ".svformer-lava-ok").exists() else None


@dataclass
class LavaComparison:
    """One netx file run in stock Lava by :data:`LAVA_RECIPE` vs :func:`simulate_netx` on the same file."""

    path: str
    steps: int  # T input steps (Lava ran T + L)
    layers: int
    output_values: int  # output neuron-steps compared (T · C' · H' · W')
    output_spikes: int  # spikes among them in the integer executor
    spike_mismatches: int  # sink frames L .. L + T - 1 vs the integer executor's output steps 0 .. T - 1
    early_spikes: int  # spikes in sink frames 0 .. L - 1 (none expected)
    state_mismatches: int | None  # v, u of every neuron at every Lava step vs Lava's timing (None: not read)
    seconds: float
    output: np.ndarray = field(repr=False)  # Lava's sink, all T + L frames [T + L, C', H', W']

    @property
    def exact(self) -> bool:
        return self.spike_mismatches == 0 and self.early_spikes == 0 and self.state_mismatches in (0, None)


def lava_compare(cases: list[tuple[str | Path, np.ndarray]], workdir: str | Path, python: str | Path | None = None,
                 states: bool = False, timeout: float = 1800.0) -> list[LavaComparison]:
    """Run netx files in stock Lava exactly as :data:`LAVA_RECIPE` says and compare with our integer executor.

    ``cases``: (netx file, one clip of the part's input spikes ``[T, C, H, W]``, data channels only). All
    files run in one Lava process (``lava_run.py``; ``python``: the Lava venv's, default :func:`lava_python`).
    The output of sink frames L .. L + T - 1 is compared with :func:`simulate_netx` of the file on the
    undelayed input (the quantized graph's semantics, :func:`netx_issue`); with ``states`` every layer's
    ``v`` and ``u`` (relays included) at every Lava step is compared with ``simulate_netx(lava_timing=True)``
    on the recipe's input, and the stepped run's sink with the one-shot run's.
    """
    py = Path(python) if python is not None else lava_python()
    if py is None:
        raise SVFormerError(f"no Lava venv at {default_lava_venv()} (build it with make lava-venv)")
    workdir = Path(workdir)
    args, nets = [], []
    for k, (h5, spikes) in enumerate(cases):
        x = np.asarray(spikes)
        np.savez(workdir / f"lava_in_{k}.npz", spikes=x.astype(np.int8))
        args += [str(h5), str(workdir / f"lava_in_{k}.npz"), str(workdir / f"lava_out_{k}.npz")]
        nets.append((read_netx(h5), torch.from_numpy(x.astype(np.float64))[:, None]))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(py), str(LAVA_RUN), *(["--states"] if states else []), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise SVFormerError(f"Lava run failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    results = []
    for k, ((h5, _), (net, x)) in enumerate(zip(cases, nets, strict=True)):
        out = dict(np.load(workdir / f"lava_out_{k}.npz"))
        T, L = x.shape[0], len(net.layers)
        want = data_outputs(net, simulate_netx(net, netx_input(net, x, flush=False))[0])[-1][:, 0].numpy()
        got = out["spikes"]
        if got.shape != (T + L, *want.shape[1:]):
            raise SVFormerError(f"{h5}: Lava's output has shape {got.shape}, expected {(T + L, *want.shape[1:])}")
        state_mismatches = None
        if states:
            _, vs, us = simulate_netx(net, netx_input(net, x), lava_timing=True)
            state_mismatches = int((out["spikes_stepped"] != got).sum())
            for i in range(L):
                state_mismatches += int((out[f"v{i}"] != vs[i][:, 0].numpy()).sum())
                state_mismatches += int((out[f"u{i}"] != us[i][:, 0].numpy()).sum())
        results.append(LavaComparison(
            path=str(h5), steps=T, layers=L, output_values=int(want.size), output_spikes=int(want.sum()),
            spike_mismatches=int((got[L:] != want).sum()), early_spikes=int(got[:L].sum()),
            state_mismatches=state_mismatches, seconds=float(out["seconds"]), output=got))
    return results
