"""The spiking neuron layer :class:`Neuron` (ParametricLIF / LIF; Lava's CUBA neuron in fixed point)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..tensor import SPIKE, STEP, TensorSpec
from .base import CostInput, Node, _need

V_CLIP = float(2**23 - 1)  # Lava's 24-bit membrane saturation
X_CLIP = float(2**17 - 1)  # neuron input range so that x << 6 fits 24 bits


@dataclass(frozen=True, eq=False)
class Neuron(Node):
    """Spiking neuron layer (SpikingJelly ParametricLIF / LIF, multi-step), elementwise on any shape.

    With input X[t], membrane V[t] (V[-1] = 0), charge H[t], spikes S[t]:
      H[t] = V[t-1] + k(a) · (X[t] - (V[t-1] - V_reset))       (decay_input = True, the SVFormer case)
      H[t] = V[t-1] - k(a) · (V[t-1] - V_reset) + X[t]          (decay_input = False)
      S[t] = Θ(H[t] - V_th), Θ(x) = 1 for x >= 0 (so Θ(0) = 1), else 0
      V[t] = S[t] · V_reset + (1 - S[t]) · H[t]                 (hard reset; V_reset = 0 in SVFormer)
    ``model`` ``"plif"``: k(a) = sigmoid(a) with the trained scalar ``a`` (SpikingJelly's ``w``);
    ``"lif"``: k = 1 / ``tau`` (computed as a division, as SpikingJelly does). One k per layer.
    Fixed point (Lava CUBA): x = clamp(q, ±(2¹⁷-1)); v = rtz(v·(4096-decay)) + (x≪6), clamped to
    24 bits; s = v > theta; v = 0 where s.
    """

    op: ClassVar[str] = "neuron"
    counted: ClassVar[bool] = True
    model: str = "plif"
    a: float | None = None
    tau: float | None = None
    v_threshold: float = 1.0
    v_reset: float = 0.0
    decay_input: bool = True

    @property
    def k(self) -> float:
        """The leak factor k = sigmoid(a) (PLIF) or 1/tau (LIF), in float64."""
        if self.model == "plif":
            return 1.0 / (1.0 + math.exp(-self.a))
        return 1.0 / self.tau

    def infer(self, ins: list[TensorSpec]) -> TensorSpec:
        _need(self.model in ("plif", "lif"), f"unknown neuron model {self.model!r}")
        if self.model == "plif":
            _need(self.a is not None and math.isfinite(self.a), "plif neuron needs a finite parameter a")
        else:
            _need(self.tau is not None and self.tau > 0, "lif neuron needs tau > 0")
        _need(math.isfinite(self.v_threshold) and math.isfinite(self.v_reset), "neuron threshold/reset must be finite")
        return TensorSpec(ins[0].shape, SPIKE, STEP)

    def cost(self, c: CostInput) -> dict[str, int]:
        return {"macs": 0, "elementwise": c.steps * c.n_out, "params": 1}

    def count(self, c: Any) -> Callable:
        for key in ("neuron_updates", "state_reads", "state_writes"):
            c.set(key, c.n_out)
        out_key, active_key = c.key("spikes_out"), c.key("neurons_active")

        def step(col, ins, out, nnz_in=None, nnz_out=None):
            col[:, out_key] += c.nnz(out) if nnz_out is None else nnz_out
            col[:, active_key] += c.nnz(ins[0])  # neurons with a non-zero input this step
        return step

    def sim_float(self, sim: Any, n: str) -> Any:
        import torch

        dt = sim.dtype
        vr, vth, tau, plif = self.v_reset, self.v_threshold, self.tau, self.model == "plif"
        k = torch.tensor(self.a, dtype=torch.float64).to(dt).sigmoid() if plif else None

        def fn(t, ins, nnz):
            x = ins[0]
            v = sim.state.get(n)
            if v is None:
                v = torch.zeros_like(x)
            # (v - vr) is v itself when vr = 0 (exact in IEEE arithmetic), so that subtraction is skipped;
            # in-place steps on a fresh tensor round exactly as the out-of-place expression
            dv = v if vr == 0.0 else v - vr
            if self.decay_input:  # H = V + (X - (V - V_reset))·k  (PLIF) or ... / tau (LIF)
                h = torch.sub(x, dv)
                h = h.mul_(k) if plif else h.div_(tau)
                h.add_(v)
            else:  # H = V - (V - V_reset)·k + X
                h = v - (dv * k if plif else dv / tau)
                h.add_(x)
            s = h >= vth
            sim.state[n] = h.masked_fill_(s, vr)  # V = S·V_reset + (1 - S)·H
            return s
        return fn

    def sim_fixed(self, sim: Any, n: str) -> Any:
        import torch

        q, neuron_step = sim.quant(n), sim.fixed.neuron_step
        decay = int(q["decay"])
        theta = sim.tensor(q["theta"], torch.int64)

        def fn(t, ins, nnz):
            v = sim.state.get(n)
            if v is None:
                v = torch.zeros_like(ins[0])
            v, s = neuron_step(v, ins[0], decay, theta)
            sim.state[n] = v
            return s
        return fn

    def ref_setup(self, ref: Any, n: str) -> None:
        super().ref_setup(ref, n)
        if ref.mode == "float" and self.model == "plif":
            ref.buffer(n, "a", np.asarray(self.a, dtype=np.float64))

    def ref_float(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        import torch

        x = ins[0]
        v = state.get(n)
        if v is None:
            v = torch.zeros_like(x)
        vr = self.v_reset
        if self.model == "plif":
            k = ref.p(n, "a").sigmoid()
            h = v + (x - (v - vr)) * k if self.decay_input else v - (v - vr) * k + x
        else:
            h = v + (x - (v - vr)) / self.tau if self.decay_input else v - (v - vr) / self.tau + x
        s = (h >= self.v_threshold).to(x.dtype)
        state[n] = s * vr + (1.0 - s) * h
        return s

    def ref_fixed(self, ref: Any, n: str, t: int, ins: list, state: dict) -> Any:
        import torch

        x = torch.clamp(ins[0], -X_CLIP, X_CLIP)
        v = state.get(n)
        if v is None:
            v = torch.zeros_like(x)
        decay = ref.p(n, "decay")
        leaked = v * (4096.0 - decay) / 4096.0
        # rounded toward zero (C integer division, as Lava); sign * floor(|.|) is trunc in ops every ONNX
        # exporter has (the TorchScript exporter has no aten::trunc)
        v = torch.sign(leaked) * ref.floor(torch.abs(leaked)) + x * 64.0
        v = torch.clamp(v, -V_CLIP, V_CLIP)
        s = ref.fire(v, ref.p(n, "theta"))
        state[n] = v * (1.0 - s)
        return s

    def to_nir(self, x: Any) -> Any:
        return x.lif(self, tuple(int(s) for s in x.shape), x.dt, x.meta)

    def netx_refusal(self) -> str | None:
        return None  # a CUBA neuron layer when a conv/dense layer on spikes drives it (partition decides)
