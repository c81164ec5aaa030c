"""Integer arithmetic of the fixed-point spec (version 1), on int64 tensors.

This module restates, as executable integer operations, the spec written in
:mod:`export.passes.quantize` (the authoritative text); :class:`simulators.executor.Simulator`
in ``"integer"`` mode applies them node by node. Notation as there: ``q`` integer codes,
``b`` bit widths, all arithmetic on mathematical integers held in int64 (no wrap-around occurs
because the quantize pass bounds every accumulator: ``acc_bits + 15 <= 53``).

- ``sat(x, b)``       = clamp(x, -(2^(b-1) - 1), 2^(b-1) - 1)                  symmetric saturation
- ``rshift(p, m, s)`` = (p·m + 2^(s-1)) >> s   for s > 0   (arithmetic shift: floor, so ties round up)
                        (p·m) << -s            for s <= 0
- ``rtz(p)``          = sign(p) · (|p| >> 12)                                   Lava's division by 4096,
                                                                               truncated toward zero
- input:   q = sat_i(round_half_even(x / scale)), x the float32 frame promoted to float64
- neuron (Lava CUBA with iDecay = 4096, membrane v with 6 fraction bits, v = 0 before step 0)::

      x = clamp(q_in, -(2^17 - 1), 2^17 - 1)
      v = rtz(v · (4096 - decay)) + (x << 6)
      v = clamp(v, -(2^23 - 1), 2^23 - 1)
      s = v > theta                       (strict)
      v = 0 where s                       (hard reset; no refractory period)

- weighted ops: acc = Σ w·x (+ bias, in accumulator units); with a requantizer
  y = sat_a(rshift(acc, m[c], shift[c])); the head conv3d sums acc over all T steps, bias once
- affine:  y = sat_a(rshift(x, m[t, c], shift[t, c]) + bias[t, c])
- add:     y = sat_a(q0 + q1)
- attention: KV = Kᵀ·V (exact counts); y = sat_a((Q·KV) << shift)
- output:  logits = q · scale (float64)

The multiply-accumulate of a weighted op is evaluated by float BLAS/sparse kernels on integer
values: float32 when the layer's worst-case accumulator (``acc_bits``, sign included) is at most
24 bits, else float64 (53 bits). Every operand, product and partial sum is then an integer the
float format represents exactly, so the result is the exact integer sum whatever the summation
order; it is converted to int64 before any of the operations above.
"""

from __future__ import annotations

import torch
from torch import Tensor

DECAY_ONE = 4096
X_LIMIT = 2**17 - 1  # neuron input range: x << 6 fits Lava's 24-bit current
V_LIMIT = 2**23 - 1  # Lava's 24-bit membrane saturation
FLOAT32_EXACT_BITS = 24


def qmax(bits: int) -> int:
    """Largest code of a symmetric signed ``bits``-bit integer: 2^(bits-1) - 1."""
    return (1 << (int(bits) - 1)) - 1


def sat(x: Tensor, bits: int) -> Tensor:
    """Symmetric saturation of int64 ``x`` to ``bits`` bits."""
    lim = qmax(bits)
    return x.clamp(-lim, lim)


def rshift(p: Tensor, m: Tensor, s: Tensor) -> Tensor:
    """Multiply by the signed integer ``m`` and shift right by ``s`` rounding half up (``s <= 0``: shift left).

    ``m`` and ``s`` are int64 tensors broadcastable to ``p`` (per channel, per step...).
    """
    prod = p * m
    if bool((s > 0).all()):
        return (prod + (1 << (s - 1))) >> s
    right = s.clamp(min=1)
    up = (prod + (1 << (right - 1))) >> right
    return torch.where(s > 0, up, prod << (-s).clamp(min=0))


def rtz(p: Tensor) -> Tensor:
    """sign(p) · floor(|p| / 4096): Lava's fixed-point decay division, truncated toward zero."""
    return torch.sign(p) * (p.abs() >> 12)


def neuron_step(v: Tensor, q_in: Tensor, decay: int, theta: Tensor) -> tuple[Tensor, Tensor]:
    """One time step of the fixed-point CUBA neuron: ``(new membrane, spikes as bool)``."""
    x = q_in.clamp(-X_LIMIT, X_LIMIT)
    v = rtz(v * (DECAY_ONE - int(decay))) + (x << 6)
    v = v.clamp(-V_LIMIT, V_LIMIT)
    s = v > theta
    return torch.where(s, torch.zeros_like(v), v), s


def quantize_input(x: Tensor, scale: float, bits: int) -> Tensor:
    """Input codes: sat_i(round_half_even(x / scale)), computed in float64, returned as int64."""
    lim = float(qmax(bits))
    return torch.round(x.to(torch.float64) / float(scale)).clamp(-lim, lim).to(torch.int64)


def accumulator_dtype(acc_bits: int) -> torch.dtype:
    """The float dtype whose kernels sum this layer's integers exactly (see the module docstring)."""
    return torch.float32 if int(acc_bits) <= FLOAT32_EXACT_BITS else torch.float64
