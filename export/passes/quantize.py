"""``quantize``: post-training fixed-point quantization of a folded graph, and its integer spec.

The pass keeps every node's float parameters and attaches integer parameters in
``G.nodes[n]["quant"]`` (numpy arrays, keys below). Scales of real-valued paths come from
calibration inputs (max |value| of the float graph). ``ReferenceModel(graph, mode="fixed")``
executes exactly this spec (on float64 tensors holding integers, which is exact arithmetic), so an
integer executor that follows it must reproduce its spikes, membranes and logits bit for bit.

Fixed-point specification (version 1)
=====================================
Notation: every real-valued tensor is carried as an integer tensor q with a scale Δ (real value
≈ q·Δ); Δ is one number per tensor, except the raw accumulator of a conv/linear that feeds only
an affine, a neuron or the output (then Δ[c] per output channel). Spike tensors are exact {0, 1}.
Integers are mathematical (no wrap-around); an executor uses int64. Bit widths (``QuantConfig``):
``w`` weight bits (default 8, any 2..16), ``a`` activation bits of real-valued streams (default 16),
``i`` input bits (default 8).

- ``sat_b(x)``   = clamp(x, -(2^(b-1) - 1), 2^(b-1) - 1)                 (symmetric saturation)
- ``rshift(p, m, s)`` = floor((p·m + 2^(s-1)) / 2^s) if s > 0, else p·m·2^(-s)
  (multiply by a signed integer m, |m| < 2^15, then an arithmetic right shift by s that rounds
  half up; this is how every real-valued rescale is done)
- ``rtz(p)``     = sign(p)·floor(|p| / 4096)                              (Lava's truncation toward zero)

Per op (``quant`` keys in brackets; every node also has ``out_scale`` = Δ of its output):

``input`` [scale, bits]: q[t] = sat_i(round_half_even(x[t] / scale)), computed in float64 from the
  float32 frame. Pixels: scale = max|calibration| / (2^(i-1) - 1) (the first conv then does real
  multiplies on these i-bit codes). Event counts (integer calibration data within range): scale 1.
``conv2d`` / ``linear`` / ``conv3d`` [weight, weight_scale, in_scale, bias?, m?, shift?, bits?]:
  weight = round_half_even(W / weight_scale[c]) with weight_scale[c] = max|W[c]| / (2^(w-1) - 1)
  (per output channel; one value for all channels with ``per_channel=False``);
  acc = Σ weight·x + bias, with bias = round_half_even(b / (weight_scale[c]·in_scale)) in
  accumulator units ([C_out] or the position-dependent [C_out, H, W] from ``fuse_linear``), and x
  the input codes (spikes, or a-bit / i-bit codes with one scale ``in_scale``). The head conv3d sums
  over all T steps (acc of steps 0..T-1, bias once). Without ``m`` the output is acc with
  Δ[c] = weight_scale[c]·in_scale. With ``m`` (when a consumer needs one scale: add, concat, a layout
  op, another weighted op): y = sat_a(rshift(acc, m[c], shift[c])) with Δ = ``out_scale``.
  ``acc_bits`` in the report is the worst-case accumulator width (sign included).
``affine`` (per-step TDBN remainder) [m, shift, bias?, bits]: y[t] = sat_a(rshift(x[t], m[t,c],
  shift[t,c]) + bias[t,c]); m·2^-shift ≈ A[t,c]·Δ_in[c]/Δ_out and bias = round_half_even(B[t,c]/Δ_out)
  ([C] arrays when time-independent). It also absorbs the per-channel scale of the conv before it.
``neuron`` [decay, theta]: Lava's fixed-point CUBA neuron with no current state (iDecay = 4096, so
  u carries only this step's input), membrane v in units of Δ_in·g/64 (6 fraction bits), v = 0 at t = 0:
      x  = clamp(q_in[t], -(2^17 - 1), 2^17 - 1)            (so x << 6 fits Lava's 24-bit current)
      v  = rtz(v · (4096 - decay)) + (x << 6)
      v  = clamp(v, -(2^23 - 1), 2^23 - 1)                    (Lava's 24-bit membrane)
      s  = v > theta                                          (strict, as in Lava)
      v  = 0 where s                                          (hard reset to V_reset = 0)
  decay = round(4096·k) (12 bits, clamped to 1..4096), the ParametricLIF leak k = sigmoid(a) (LIF:
  1/tau). The input factor k of decay_input is folded into the threshold instead of the input:
  with ĝ = k (1 when decay_input is False) the float neuron H = (1-k)V + ĝX, S = H >= V_th
  becomes, with v = 64·V/(ĝ·Δ_in), v' = (1-k)v + 64·x and S = v' >= T, T = 64·V_th/(ĝ·Δ_in).
  ĝ is the float k, not decay/4096: the threshold then carries no rounding of k (at step 0 the fixed
  neuron fires exactly where the float one does, to membrane resolution), and the 12-bit rounding of
  k enters only the leak (1 - decay/4096 for 1 - k).
  SpikingJelly fires on >= (Θ(0) = 1), Lava on >: for an integer v, v >= T <=> v > ceil(T) - 1, so
  theta = ceil(T) - 1 reproduces >= exactly at membrane resolution (default). Lava's threshold must be
  a multiple of 64 (vThMant << 6); ``lava_thresholds=True`` uses theta = 64·round(T/64) instead (at
  most half an input LSB off, reported). theta has one value, or one per channel when Δ_in is per
  channel (a conv/linear feeding the neuron directly; netx needs one value, i.e. ``per_channel=False``).
  Residual stream and attention inputs simply give Δ_in of that stream: the 0.125 attention scale
  is folded into theta and costs nothing.
``add`` (membrane shortcut) [bits]: y = sat_a(q0 + q1); the pass gives the residual stream and
  every branch added to it one common scale (a scale group), so the add is a plain integer add.
``concat``, ``to_tokens``, ``to_image``, ``split_heads``, ``merge_heads``, ``flatten``: integer
  layout only; inputs of a concat share one scale (same group).
``spike_matmul_kv``: KV = Kᵀ·V, exact integer counts (Δ = 1, at most N).
``spike_matmul_q_kv`` [shift, bits]: y = sat_a((Q·KV)·2^shift), Δ = s·2^-shift (s = d^-1/2): the
  product of spikes and counts is exact; shift (>= 0) only spreads it over the a-bit range.
``output`` [scale]: logits = q·scale (float64, per class when the head linear has per-channel Δ).

Exactness of the float64 evaluation: every value must stay below 2^53; products p·m need
acc_bits + 15 <= 53, which :func:`quantize` checks (it raises otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
import torch
from svformer_deploy.svformer.errors import SVFormerError

from .. import ir
from ..fidelity import FidelityReport, batches, compare
from ..reference import ReferenceModel

if TYPE_CHECKING:
    from svformer_deploy.svformer.data.datasets import InputSpec

NAME = "quantize"
SPEC_VERSION = 1
DECAY_ONE = 4096
MULT_BITS = 16  # |m| < 2^15
FLOAT64_EXACT_BITS = 53


@dataclass(frozen=True)
class QuantConfig:
    """Bit widths and options of the fixed-point spec (see the module docstring)."""

    weight_bits: int = 8
    act_bits: int = 16
    input_bits: int = 8
    per_channel: bool = True
    lava_thresholds: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.weight_bits <= 16:
            raise SVFormerError(f"weight bits must be in 2..16, got {self.weight_bits}")
        if not 4 <= self.act_bits <= 24:
            raise SVFormerError(f"activation bits must be in 4..24, got {self.act_bits}")
        if not 2 <= self.input_bits <= 16:
            raise SVFormerError(f"input bits must be in 2..16, got {self.input_bits}")


def qmax(bits: int) -> int:
    """Largest code of a symmetric signed ``bits``-bit integer: 2^(bits-1) - 1."""
    return 2 ** (bits - 1) - 1


def multiplier(ratio: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Integers (m, shift) with m·2^-shift ≈ ratio, |m| in [2^14, 2^15) (relative error <= 2^-15).

    ratio 0 (or below 2^-47) gives m = 0; ratios above 2^16 are refused.
    """
    r = np.asarray(ratio, dtype=np.float64)
    if not np.all(np.isfinite(r)):
        raise SVFormerError("quantize: a rescale factor is not finite (zero or non-finite scale)")
    f, e = np.frexp(np.abs(r))
    m = np.rint(f * 2.0 ** (MULT_BITS - 1)).astype(np.int64)
    over = m == 2 ** (MULT_BITS - 1)
    m = np.where(over, m // 2, m)
    e = np.where(over, e + 1, e).astype(np.int64)
    shift = (MULT_BITS - 1) - e
    if np.any((r != 0) & (shift < -16)):
        raise SVFormerError(f"quantize: a rescale factor {float(np.abs(r).max()):.3g} is too large")
    tiny = (r == 0) | (shift > 62)
    m = np.where(tiny, 0, np.sign(r).astype(np.int64) * m)
    shift = np.where(tiny, 0, shift)
    return m.astype(np.int64), shift.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """max |value| of every real-valued node over the calibration clips (float reference)."""

    amax: dict[str, float]
    integral_input: bool
    clips: int


def calibrate(graph: nx.DiGraph, inputs: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 8) -> Calibration:
    """Run the float graph (float32) on calibration frames ``[T, B, C, H, W]`` and collect ranges."""
    ref = ReferenceModel(graph, dtype=torch.float32, mode="float")
    real = {n for n in ref.names if ref.specs[n].kind == ir.REAL}
    amax = dict.fromkeys(real, 0.0)
    integral = True
    clips = 0

    def observe(name: str, value: torch.Tensor) -> None:
        if name in amax:
            amax[name] = max(amax[name], float(value.abs().max()))

    with torch.no_grad():
        for x in batches(inputs, batch_size):
            integral = integral and bool(torch.all(x == torch.round(x)))
            ref.run(x, observe=observe)
            clips += x.shape[1]
    if clips == 0:
        raise SVFormerError("quantize: no calibration clips")
    return Calibration(amax, integral, clips)


def load_calibration(source: str | Path | torch.Tensor, spec: InputSpec | None = None, limit: int = 32) -> torch.Tensor:
    """Calibration frames ``[T, B, C, H, W]`` from a tensor, a ``.pt``/``.npy``/``.npz`` file (frames
    ``[T, B, C, H, W]`` or one clip ``[T, C, H, W]``), a video/event file, or a folder of those
    (searched recursively, sorted, at most ``limit`` clips). Video/event files need ``spec``, a
    :class:`svformer.data.datasets.InputSpec` describing the model's preprocessing."""
    if isinstance(source, torch.Tensor):
        return _as_frames(source, "calibration tensor")
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        clips = []
        for p in files:
            if len(clips) >= limit:
                break
            suffix = p.suffix.lower()
            if suffix in (".pt", ".npy", ".npz") or (spec is not None and suffix in spec.extensions):
                x = _load_one(p, spec)
                clips.extend(x[:, i] for i in range(x.shape[1]))
        if not clips:
            raise SVFormerError(f"{path}: no calibration clips found (tensors .pt/.npy/.npz"
                                f"{' or ' + spec.kind + ' files' if spec is not None else ''})")
        return torch.stack(clips[:limit], dim=1)
    if not path.exists():
        raise SVFormerError(f"{path}: no such calibration file or folder")
    return _load_one(path, spec)[:, :limit]


def _load_one(path: Path, spec: InputSpec | None) -> torch.Tensor:
    suffix = path.suffix.lower()
    try:
        if suffix == ".pt":
            obj = torch.load(path, weights_only=True, map_location="cpu")
        elif suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if spec is not None and spec.kind == "events" and (arr.dtype.names or arr.ndim == 2):
                obj = spec.load_clip(path)  # an event array (x, y, t, p), not frames
            else:
                obj = torch.from_numpy(np.array(arr))
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                obj = torch.from_numpy(np.array(z[z.files[0]]))
        elif spec is not None and suffix in spec.extensions:
            obj = spec.load_clip(path)
        else:
            raise SVFormerError(f"{path}: not a calibration file (.pt, .npy, .npz or a video/event file)")
    except SVFormerError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad calibration file
        raise SVFormerError(f"{path}: unreadable calibration file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, torch.Tensor):
        raise SVFormerError(f"{path}: calibration file must hold one tensor, got {type(obj).__name__}")
    return _as_frames(obj, str(path))


def _as_frames(x: torch.Tensor, what: str) -> torch.Tensor:
    x = x.detach().float()
    if x.dim() == 4:
        x = x[:, None]
    if x.dim() != 5:
        raise SVFormerError(f"{what}: expected frames [T, B, C, H, W] or a clip [T, C, H, W], got {list(x.shape)}")
    return x


# ---------------------------------------------------------------------------------------------
# scale groups: tensors that must share one scale (add / concat inputs, layout ops)
# ---------------------------------------------------------------------------------------------
def scale_groups(g: nx.DiGraph) -> dict[str, int]:
    """Union-find over real-valued nodes: an add/concat with its inputs, a layout op with its input."""
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    for n in ir.topo_order(g):
        op = ir.op_of(g, n)
        if ir.spec(g, n).kind != ir.REAL:
            continue
        find(n)
        if op.op in ("add", "concat") or op.op in ir.LAYOUT:
            for i in ir.inputs_of(g, n):
                union(n, i)
    roots: dict[str, int] = {}
    return {n: roots.setdefault(find(n), len(roots)) for n in parent}


def _needs_requant(g: nx.DiGraph, n: str) -> bool:
    return any(ir.op_of(g, c).op not in ("affine", "neuron", "output") for c in ir.consumers(g, n))


def accumulator_bound(weight: np.ndarray, bias: np.ndarray | None, x_code: float) -> float:
    """Worst-case |accumulator| of a weighted op: max over output channels of Σ|weight|·x_code + |bias|
    (``weight`` integer codes [C_out, ...], ``bias`` codes [C_out] or [C_out, H, W], ``x_code`` the largest
    |input code|)."""
    co = weight.shape[0]
    bias_bound = np.zeros(co) if bias is None else np.abs(bias).reshape(co, -1).max(axis=1)
    return float((np.abs(weight).reshape(co, -1).sum(axis=1) * x_code + bias_bound).max())


def bits_for(bound: float) -> int:
    """Signed integer width (sign included) holding every value of magnitude <= ``bound``."""
    return int(math.ceil(math.log2(bound + 1))) + 1


def check_accumulators(acc_bits: dict[str, int]) -> None:
    """Refuse accumulators too wide for the exact float64 evaluation (acc_bits + 15 <= 53)."""
    worst = max(acc_bits.values(), default=0)
    if worst + MULT_BITS - 1 > FLOAT64_EXACT_BITS:
        raise SVFormerError(f"quantize: accumulators need {worst} bits; the fixed-point evaluation is exact only "
                            f"up to {FLOAT64_EXACT_BITS - MULT_BITS + 1}; use fewer bits")


def input_code_bound(g: nx.DiGraph, n: str) -> float:
    """Largest |code| weighted op ``n`` of a quantized graph reads: 1 for spikes, the input bits' qmax for the
    graph input, else the activation bits' qmax (every other real stream a weighted op reads is requantized)."""
    src = ir.inputs_of(g, n)[0]
    while ir.op_of(g, src).op in ir.LAYOUT:
        src = ir.inputs_of(g, src)[0]
    if ir.spec(g, src).kind == ir.SPIKE:
        return 1.0
    cfg = g.graph["quant"]
    return float(qmax(cfg["input_bits"] if ir.op_of(g, src).op == "input" else cfg["act_bits"]))


def _bias_axes(arr: np.ndarray, ndim: int) -> np.ndarray:
    return arr.reshape((-1,) + (1,) * (ndim - 1))


# ---------------------------------------------------------------------------------------------
# the pass
# ---------------------------------------------------------------------------------------------
def quantize(graph: nx.DiGraph, calibration: torch.Tensor | Iterable[torch.Tensor] | Calibration,
             config: QuantConfig = QuantConfig(), batch_size: int = 8,
             weight_clip: dict[str, float] | None = None) -> nx.DiGraph:
    """Return a new graph carrying the integer parameters of the fixed-point spec (input unchanged).

    ``graph`` must be folded (no ``batchnorm``); ``calibration``: frames ``[T, B, C, H, W]``, an
    iterable of such batches, or a :class:`Calibration` computed earlier on the same graph.
    ``weight_clip``: per weighted node, a factor in (0, 1] on its weight range (weight_scale =
    factor·max|W| / (2^(w-1) - 1); larger weights saturate), as :func:`search_calibration` picks.
    """
    weight_clip = {k: float(v) for k, v in (weight_clip or {}).items() if float(v) != 1.0}
    for n, f in weight_clip.items():
        if n not in graph.nodes or ir.op_of(graph, n).op not in ir.WEIGHTED or not 0.0 < f <= 1.0:
            raise SVFormerError(f"quantize: weight clip {f} for {n!r}: needs a weighted node and a factor in (0, 1]")
    for n, _ in ir.iter_ops(graph, "batchnorm"):
        raise SVFormerError(f"quantize needs a folded graph (found batchnorm {n}); run fold_bn first")
    cal = calibration if isinstance(calibration, Calibration) else calibrate(graph, calibration, batch_size)
    g = ir.copy_graph(graph)
    a_max, w_max, i_max = qmax(config.act_bits), qmax(config.weight_bits), qmax(config.input_bits)
    groups = scale_groups(g)
    members: dict[int, list[str]] = {}
    for n, gid in groups.items():
        members.setdefault(gid, []).append(n)
    group_scale: dict[int, float] = {}
    qkv_shift: dict[str, int] = {}
    for gid, names in members.items():
        peak = max(cal.amax.get(n, 0.0) for n in names)
        qkv = [n for n in names if ir.op_of(g, n).op == "spike_matmul_q_kv"]
        if qkv:
            producers = [n for n in names if ir.op_of(g, n).op not in ir.LAYOUT]
            if producers != qkv or len(qkv) != 1:
                raise SVFormerError(f"quantize: {qkv[0]} shares a scale with {producers}; unsupported graph")
            s = ir.op_of(g, qkv[0]).scale
            counts = peak / s
            p = 0 if counts <= 0 else max(0, math.floor(math.log2(a_max / counts)))
            p = min(p, 30)
            qkv_shift[qkv[0]] = p
            group_scale[gid] = s * 2.0 ** -p
        else:
            group_scale[gid] = peak / a_max if peak > 0 else 1.0

    scale: dict[str, np.ndarray] = {}
    acc_bits: dict[str, int] = {}
    code_max: dict[str, float] = {}  # largest |code| a node can emit (for accumulator bounds)
    for n in ir.topo_order(g):
        op = ir.op_of(g, n)
        ins = ir.inputs_of(g, n)
        q: dict[str, np.ndarray] = {}
        if op.op == "input":
            peak = cal.amax.get(n, 0.0)
            s = 1.0 if (cal.integral_input and peak <= i_max) or peak == 0 else peak / i_max
            q.update(scale=np.float64(s), bits=np.int64(config.input_bits))
            scale[n], code_max[n] = np.float64(s), float(i_max)
            if n in groups and len(members[groups[n]]) > 1:
                raise SVFormerError(f"quantize: the input {n} feeds an add/concat/layout op directly; unsupported")
        elif op.op in ir.WEIGHTED:
            src = ins[0]
            spike_in = ir.spec(g, src).kind == ir.SPIKE
            x_scale = np.float64(1.0) if spike_in else scale[src]
            if np.ndim(x_scale) != 0:
                raise SVFormerError(f"quantize: {n} reads a per-channel-scaled tensor; unsupported graph")
            w = op.weight.astype(np.float64)
            co = w.shape[0]
            peak_c = np.abs(w.reshape(co, -1)).max(axis=1)
            if not config.per_channel:
                peak_c = np.full(co, peak_c.max())
            peak_c = peak_c * weight_clip.get(n, 1.0)
            w_scale = np.where(peak_c > 0, peak_c / w_max, 1.0)
            wq = np.clip(np.rint(w / _bias_axes(w_scale, w.ndim)), -w_max, w_max).astype(np.int64)
            acc_scale = w_scale * float(x_scale)
            q.update(weight=wq, weight_scale=w_scale, in_scale=np.float64(x_scale))
            if op.bias is not None:
                b = op.bias.astype(np.float64)
                q["bias"] = np.rint(b / _bias_axes(acc_scale, b.ndim)).astype(np.int64)
            x_code = 1.0 if spike_in else code_max[src]
            bound = accumulator_bound(wq, q.get("bias"), x_code)
            acc_bits[n] = bits_for(bound)
            if _needs_requant(g, n):
                ys = group_scale[groups[n]]
                m, sh = multiplier(acc_scale / ys)
                q.update(m=m, shift=sh, bits=np.int64(config.act_bits), out_scale=np.float64(ys))
                scale[n], code_max[n] = np.float64(ys), float(a_max)
            else:
                q["out_scale"] = acc_scale
                scale[n], code_max[n] = acc_scale, bound
        elif op.op == "affine":
            x_scale = scale[ins[0]]
            ys = group_scale[groups[n]]
            c = ir.spec(g, n).shape[op.axis]
            a = np.ones(c) if op.scale is None else op.scale.astype(np.float64)
            ratio = a * np.broadcast_to(np.asarray(x_scale, dtype=np.float64), (c,)) / ys
            m, sh = multiplier(ratio)
            q.update(m=m, shift=sh, bits=np.int64(config.act_bits), out_scale=np.float64(ys),
                     in_scale=np.asarray(x_scale))
            if op.bias is not None:
                q["bias"] = np.rint(op.bias.astype(np.float64) / ys).astype(np.int64)
            acc_bits[n] = bits_for(code_max[ins[0]])
            scale[n], code_max[n] = np.float64(ys), float(a_max)
        elif op.op == "neuron":
            q.update(_neuron_params(g, n, op, scale[ins[0]], config))
        elif op.op in ("add", "concat"):
            s_in = [scale[i] for i in ins]
            if any(np.ndim(s) != 0 or s != s_in[0] for s in s_in):
                raise SVFormerError(f"quantize: inputs of {n} do not share one scale; unsupported graph")
            q.update(bits=np.int64(config.act_bits), out_scale=np.float64(s_in[0]))
            scale[n], code_max[n] = np.float64(s_in[0]), float(a_max)
        elif op.op == "spike_matmul_kv":
            n_tokens = ir.spec(g, ins[0]).shape[1]
            q["out_scale"] = np.float64(1.0)
            scale[n], code_max[n] = np.float64(1.0), float(n_tokens)
        elif op.op == "spike_matmul_q_kv":
            p = qkv_shift[n]
            q.update(shift=np.int64(p), bits=np.int64(config.act_bits), out_scale=np.float64(op.scale * 2.0 ** -p))
            scale[n], code_max[n] = q["out_scale"], float(a_max)
        elif op.op in ir.LAYOUT:
            if ir.spec(g, n).kind == ir.REAL:
                if np.ndim(scale[ins[0]]) != 0:
                    raise SVFormerError(f"quantize: layout op {n} reads a per-channel-scaled tensor; unsupported graph")
                q["out_scale"] = np.float64(scale[ins[0]])
                scale[n], code_max[n] = scale[ins[0]], code_max[ins[0]]
        elif op.op == "output":
            q["scale"] = np.asarray(scale[ins[0]], dtype=np.float64)
        else:
            raise SVFormerError(f"quantize: op {op.op} ({n}) has no fixed-point form")
        g.nodes[n]["quant"] = {k: np.asarray(v) for k, v in q.items()}
    check_accumulators(acc_bits)
    for n, b in acc_bits.items():
        g.nodes[n]["quant"]["acc_bits"] = np.asarray(b, dtype=np.int64)
    g.graph["passes"] = list(g.graph.get("passes", [])) + [NAME]
    g.graph["quant"] = {**asdict(config), "spec_version": SPEC_VERSION, "calibration_clips": cal.clips,
                        **({"weight_clip": weight_clip} if weight_clip else {})}
    return ir.validate(g)


def leak_decay(k: float) -> int:
    """The 12-bit decay of leak ``k``: round(4096·k) clamped to 1..4096 (the leak applied is decay/4096)."""
    return int(min(max(round(DECAY_ONE * k), 1), DECAY_ONE))


def _neuron_params(g: nx.DiGraph, n: str, op: ir.Neuron, x_scale: np.ndarray, config: QuantConfig) -> dict:
    if op.v_reset != 0.0:
        raise SVFormerError(f"quantize: neuron {n} resets to {op.v_reset}; the fixed-point spec needs V_reset = 0")
    decay = leak_decay(op.k)
    gain = op.k if op.decay_input else 1.0  # the float k: the 12-bit rounding stays in the leak (module docstring)
    xs = np.asarray(x_scale, dtype=np.float64)
    if xs.ndim == 1:  # per channel: from a conv (channel axis 0) or a linear (last axis)
        (src,) = ir.inputs_of(g, n)
        rank = len(ir.spec(g, n).shape)
        if ir.op_of(g, src).op != "linear":
            xs = xs.reshape((-1,) + (1,) * (rank - 1))
    t_exact = 64.0 * op.v_threshold / (gain * xs)
    if config.lava_thresholds:
        theta = 64 * np.rint(t_exact / 64.0)
    else:
        theta = np.ceil(t_exact) - 1
    return {"decay": np.int64(decay), "theta": np.asarray(theta, dtype=np.int64), "in_scale": xs}


# ---------------------------------------------------------------------------------------------
# report and fidelity check
# ---------------------------------------------------------------------------------------------
@dataclass
class QuantReport:
    """Per-layer quantization error and the float-vs-fixed fidelity on held-out clips."""

    config: dict
    weights: list[dict] = field(default_factory=list)
    neurons: list[dict] = field(default_factory=list)
    fidelity: FidelityReport | None = None

    @property
    def passed(self) -> bool | None:
        return None if self.fidelity is None else self.fidelity.passed

    def to_dict(self) -> dict:
        return {"config": self.config, "weights": self.weights, "neurons": self.neurons,
                "fidelity": None if self.fidelity is None else self.fidelity.to_dict(), "passed": self.passed}


def weight_errors(quant_graph: nx.DiGraph) -> list[dict]:
    """Per weighted layer: relative L2 and max abs error of the dequantized weights, and acc_bits."""
    rows = []
    for n, op in ir.iter_ops(quant_graph, ir.WEIGHTED):
        q = quant_graph.nodes[n]["quant"]
        w = op.weight.astype(np.float64)
        wd = q["weight"] * _bias_axes(q["weight_scale"], w.ndim)
        rows.append({"name": n, "rel_error": float(np.linalg.norm(w - wd) / max(np.linalg.norm(w), 1e-300)),
                     "max_abs_error": float(np.abs(w - wd).max()), "acc_bits": int(q["acc_bits"]),
                     "requantized": "m" in q})
    return rows


def neuron_errors(quant_graph: nx.DiGraph) -> list[dict]:
    """Per neuron layer: k and its 12-bit value (the leak), V_th and the effective threshold (v >= theta + 1)."""
    rows = []
    for n, op in ir.iter_ops(quant_graph, "neuron"):
        q = quant_graph.nodes[n]["quant"]
        kq = int(q["decay"]) / DECAY_ONE
        gain = op.k if op.decay_input else 1.0
        eff = (q["theta"].astype(np.float64) + 1.0) * gain * q["in_scale"] / 64.0
        rel = np.abs(eff - op.v_threshold) / abs(op.v_threshold)
        rows.append({"name": n, "k": op.k, "k_q": kq, "decay": int(q["decay"]), "v_threshold": op.v_threshold,
                     "threshold_rel_error": float(rel.max()), "theta_max": int(q["theta"].max()),
                     "never_fires": bool(np.all(q["theta"] >= 2**23 - 1))})
    return rows


MIN_TOP1 = 0.99
"""Default target of the float-vs-fixed check: top-1 agreement."""


def check(float_graph: nx.DiGraph, quant_graph: nx.DiGraph, inputs: torch.Tensor | Iterable[torch.Tensor],
          batch_size: int = 8, min_top1: float = MIN_TOP1) -> QuantReport:
    """Float (float64) vs fixed-point on held-out ``inputs``: top-1 agreement (target >= ``min_top1``),
    per-layer spike agreement, plus per-layer weight and neuron quantization errors."""
    fid = compare(float_graph, quant_graph, inputs, torch.float64, ref_mode="float", new_mode="fixed",
                  label=label(quant_graph), batch_size=batch_size)
    return report(quant_graph, judge(fid, min_top1))


def label(quant_graph: nx.DiGraph) -> str:
    """The check's label, ``quantize int<bits>``."""
    return f"{NAME} int{quant_graph.graph['quant']['weight_bits']}"


def judge(fid: FidelityReport, min_top1: float = MIN_TOP1) -> FidelityReport:
    """Set the float-vs-fixed report's target: top-1 agreement >= ``min_top1``."""
    fid.target = f"top-1 agreement >= {min_top1:.0%}"
    fid.passed = fid.top1_agreement >= min_top1
    return fid


def report(quant_graph: nx.DiGraph, fid: FidelityReport | None = None) -> QuantReport:
    """The :class:`QuantReport` of ``quant_graph``: its configuration, weight and neuron errors, and ``fid``."""
    return QuantReport(config=dict(quant_graph.graph["quant"]), weights=weight_errors(quant_graph),
                       neurons=neuron_errors(quant_graph), fidelity=fid)


# ---------------------------------------------------------------------------------------------
# improved post-training calibration: a per-layer search of weight ranges and bias correction against
# spike divergence
# ---------------------------------------------------------------------------------------------
CLIP_FACTORS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
"""Weight-range factors :func:`search_calibration` tries per layer (1.0: max|W|, the plain calibration)."""


def bias_nodes(graph: nx.DiGraph) -> list[str]:
    """Nodes whose float bias :func:`search_calibration` may correct, in network order: conv/linear/conv3d with
    a per-channel bias and affines with a bias (``[C]`` or per step ``[T, C]``)."""
    out = []
    for n in ir.topo_order(graph):
        op = ir.op_of(graph, n)
        if (op.op in ir.WEIGHTED and op.bias is not None and op.bias.ndim == 1) or (
                op.op == "affine" and op.bias is not None):
            out.append(n)
    return out


def _channel_axis(graph: nx.DiGraph, n: str) -> int:
    """Channel axis of node ``n``'s output within one sample (conv: 0, linear: last, affine: its own)."""
    op = ir.op_of(graph, n)
    axis = op.axis if op.op == "affine" else (-1 if op.op == "linear" else 0)
    return axis % len(ir.spec(graph, n).shape)


def correct_biases(graph: nx.DiGraph, shifts: dict[str, np.ndarray]) -> nx.DiGraph:
    """A copy of the float ``graph`` with ``shifts[n]`` (real units, ``[C]`` or ``[T, C]`` like the bias) added to
    the bias of each node ``n`` of :func:`bias_nodes`."""
    import dataclasses

    g = ir.copy_graph(graph)
    allowed = set(bias_nodes(graph))
    for n, d in shifts.items():
        if n not in allowed:
            raise SVFormerError(f"quantize: bias correction for {n!r}: not a node with a correctable bias")
        op = ir.op_of(g, n)
        d = np.asarray(d, dtype=np.float64)
        if d.shape != op.bias.shape:
            raise SVFormerError(f"quantize: bias correction for {n!r} has shape {d.shape}, the bias {op.bias.shape}")
        ir.replace_op(g, n, dataclasses.replace(op, bias=(op.bias.astype(np.float64) + d).astype(op.bias.dtype)))
    return ir.validate(g)


class _ChannelMeans:
    """Per-channel sums of the real values of some nodes over runs (per step when the bias is per step)."""

    def __init__(self, graph: nx.DiGraph, nodes: list[str], fixed: bool):
        self.graph, self.fixed = graph, fixed
        self.axis = {n: _channel_axis(graph, n) for n in nodes}
        self.per_step = {n: ir.op_of(graph, n).bias.ndim == 2 for n in nodes}
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def __call__(self, name: str, value: torch.Tensor) -> None:
        if name not in self.axis:
            return
        axis = self.axis[name] + 1  # after the batch axis
        v = value.to(torch.float64)
        other = [d for d in range(v.dim()) if d != axis]
        s = v.sum(dim=other).numpy()
        count = float(v.numel() // v.shape[axis])
        if self.fixed:
            s = s * np.broadcast_to(np.asarray(self.graph.nodes[name]["quant"]["out_scale"], dtype=np.float64),
                                    s.shape)
        t = self.calls.get(name, 0)
        self.calls[name] = t + 1
        if self.per_step[name]:
            steps = ir.op_of(self.graph, name).bias.shape[0]
            acc = self.sums.setdefault(name, np.zeros((steps, s.shape[0])))
            acc[t % steps] += s
            self.counts[name] = self.counts.get(name, 0.0) + count / steps
        else:
            self.sums[name] = self.sums.get(name, 0.0) + s
            self.counts[name] = self.counts.get(name, 0.0) + count

    def mean(self, name: str) -> np.ndarray:
        return self.sums[name] / self.counts[name]


@dataclass
class SearchResult:
    """What :func:`search_calibration` chose and measured on the calibration clips (float graph as reference)."""

    graph: nx.DiGraph
    weight_clip: dict[str, float]
    bias_shift: dict[str, np.ndarray]
    before: dict[str, float]
    after: dict[str, float]
    evaluations: int
    seconds: float
    steps: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"weight_clip": self.weight_clip,
                "bias_corrected": {n: float(np.abs(d).max()) for n, d in self.bias_shift.items()},
                "before": self.before, "after": self.after, "steps": self.steps,
                "evaluations": self.evaluations, "seconds": round(self.seconds, 3)}


def search_calibration(graph: nx.DiGraph, calibration: torch.Tensor, config: QuantConfig = QuantConfig(),
                       factors: tuple[float, ...] = CLIP_FACTORS, bias_correction: bool = True,
                       batch_size: int = 8) -> SearchResult:
    """Improved post-training calibration on the calibration clips ``[T, B, C, H, W]``, greedy, one pass each,
    every step kept only when it lowers spike divergence from the float graph (spikes flipped per float spike
    over all neuron layers, then top-1 disagreement):

    1. per weighted layer in network order, the weight-range factor of ``factors``;
    2. with ``bias_correction``, per node of :func:`bias_nodes` in network order, shift its float bias by minus
       the mean difference (integer output x scale - float output, per channel and per step of a per-step bias)
       measured on the calibration clips with every earlier correction in place (empirical bias correction).

    Activation scales, threshold rounding (exact at membrane resolution) and every rule of the spec are
    unchanged; the result is an ordinary quantized graph of the corrected float graph
    (:func:`correct_biases`, scales from the calibration of ``graph``; ``graph.graph["quant"]`` records
    ``weight_clip`` and ``bias_corrected``)."""
    import time

    from ..fidelity import SpikeTally, _Runner

    t0 = time.perf_counter()
    cal = calibrate(graph, calibration, batch_size)
    xs = list(batches(calibration, batch_size))
    corrigible = bias_nodes(graph) if bias_correction else []
    float_means = _ChannelMeans(graph, corrigible, fixed=False)
    run_float = _Runner(graph, torch.float64, "float")
    ref = [run_float(x, observe=float_means) for x in xs]

    def score(clip: dict[str, float], shift: dict[str, np.ndarray]
              ) -> tuple[tuple[float, float], nx.DiGraph, dict[str, float], _ChannelMeans]:
        qg = quantize(correct_biases(graph, shift), cal, config, batch_size, weight_clip=clip)
        means = _ChannelMeans(qg, corrigible, fixed=True)
        run = _Runner(qg, torch.float64, "fixed")
        tally, agree, clips = SpikeTally(), 0, 0
        for x, (logits, spikes) in zip(xs, ref, strict=True):
            q_logits, q_spikes = run(x, observe=means)
            agree += int((logits.argmax(-1) == q_logits.argmax(-1)).sum())
            clips += x.shape[1]
            for name, s in spikes.items():
                tally.add(name, s, q_spikes[name])
        flips, spikes_ref = sum(la.flips for la in tally.layers), sum(la.spikes_ref for la in tally.layers)
        stats = {"flip_rate": flips / max(spikes_ref, 1), "top1_agreement": agree / max(clips, 1),
                 "flips": flips, "spikes_ref": spikes_ref, "clips": clips}
        return (stats["flip_rate"], -stats["top1_agreement"]), qg, stats, means

    clip: dict[str, float] = {}
    shift: dict[str, np.ndarray] = {}
    best, best_graph, before, best_means = score(clip, shift)
    stats, evaluations = before, 1

    def attempt(trial_clip: dict[str, float], trial_shift: dict[str, np.ndarray]) -> None:
        """Score one trial; keep it when it lowers the divergence."""
        nonlocal best, best_graph, stats, clip, shift, best_means, evaluations
        key, qg, st, means = score(trial_clip, trial_shift)
        evaluations += 1
        if key < best:
            best, best_graph, stats, clip, shift, best_means = key, qg, st, trial_clip, trial_shift, means

    for n in [n for n in ir.topo_order(graph) if ir.op_of(graph, n).op in ir.WEIGHTED]:
        for f in factors:
            if f != clip.get(n, 1.0):
                attempt({**clip, n: f}, shift)
    clip = {k: v for k, v in clip.items() if v != 1.0}
    steps = [{"step": "weight ranges", **stats}]
    for n in corrigible:
        d = float_means.mean(n) - best_means.mean(n)
        if np.any(d):
            attempt(clip, {**shift, n: d})
    if corrigible:
        steps.append({"step": "bias correction", **stats})
    if shift:
        best_graph.graph["quant"] = {**best_graph.graph["quant"], "bias_corrected": list(shift)}
    return SearchResult(best_graph, clip, shift, before, stats, evaluations, time.perf_counter() - t0, steps)
