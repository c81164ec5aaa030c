"""Building blocks shared by every SVFormer variant: spiking neurons and (time-dependent) BN.

Tensor layouts: images ``[T, B, C, H, W]``, tokens ``[T, B, N, C]`` (channels last).
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import neuron, surrogate
from torch import Tensor, nn

from .config import SVFormerConfig


def make_neuron(cfg: SVFormerConfig) -> nn.Module:
    """A multi-step SpikingJelly neuron layer with the released model's settings.

    ParametricLIF: H = V + k(a)(X - (V - V_reset)), k(a) = sigmoid(a), S = Θ(H - V_th) with Θ(0) = 1,
    V = H(1 - S) (hard reset to V_reset = 0, reset detached from the graph); one trainable a per layer,
    initialised so that tau = 1/k = ``init_tau``. LIF is the same with k fixed to 1/``init_tau``.
    """
    if cfg.surrogate == "atan":
        sg = surrogate.ATan(alpha=cfg.surrogate_alpha)
    else:
        sg = surrogate.Sigmoid(alpha=cfg.surrogate_alpha)
    common = dict(
        decay_input=True,
        v_threshold=float(cfg.v_threshold),
        v_reset=0.0,
        surrogate_function=sg,
        detach_reset=True,
        step_mode="m",
    )
    if cfg.neuron == "plif":
        return neuron.ParametricLIFNode(init_tau=float(cfg.init_tau), **common)
    return neuron.LIFNode(tau=float(cfg.init_tau), **common)


class TemporalBatchNorm2d(nn.BatchNorm2d):
    """Time-dependent BN for ``[T, B, C, H, W]``: one BN channel per (time step, channel) pair.

    The input is viewed as ``[B, T·C, H, W]`` and normalised by a standard BatchNorm2d with T·C
    channels, so every (t, c) pair has its own batch statistics, running statistics and γ/β
    (the authors' ``BatchNorm2d_eT``; its state_dict keys are those of ``nn.BatchNorm2d``).
    """

    def __init__(self, channels: int, time_steps: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(channels * time_steps, eps=eps, momentum=momentum)
        self.channels = channels
        self.time_steps = time_steps

    def forward(self, x: Tensor) -> Tensor:
        T, B, C, H, W = x.shape
        _check_steps(self, T)
        y = super().forward(x.transpose(0, 1).reshape(B, T * C, H, W))
        return y.reshape(B, T, C, H, W).transpose(0, 1)


class TemporalBatchNorm1d(nn.BatchNorm1d):
    """Time-dependent BN for tokens ``[T, B, N, C]``: BatchNorm1d with T·C channels over the N tokens."""

    def __init__(self, channels: int, time_steps: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(channels * time_steps, eps=eps, momentum=momentum)
        self.channels = channels
        self.time_steps = time_steps

    def forward(self, x: Tensor) -> Tensor:
        T, B, N, C = x.shape
        _check_steps(self, T)
        y = super().forward(x.permute(1, 0, 3, 2).reshape(B, T * C, N))
        return y.reshape(B, T, C, N).permute(1, 0, 3, 2)


class SeqBatchNorm2d(nn.BatchNorm2d):
    """Plain BN (C channels, statistics shared by all time steps) for ``[T, B, C, H, W]``."""

    def __init__(self, channels: int, time_steps: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(channels, eps=eps, momentum=momentum)
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.flatten(0, 1)).reshape(x.shape)


class SeqBatchNorm1d(nn.BatchNorm1d):
    """Plain BN (C channels, shared by all time steps) for tokens ``[T, B, N, C]``."""

    def __init__(self, channels: int, time_steps: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(channels, eps=eps, momentum=momentum)
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        T, B, N, C = x.shape
        y = super().forward(x.reshape(T * B, N, C).transpose(1, 2))
        return y.transpose(1, 2).reshape(T, B, N, C)


def _check_steps(bn: nn.Module, steps: int) -> None:
    if steps != bn.time_steps:
        from .errors import SVFormerError

        raise SVFormerError(
            f"the model was built for T={bn.time_steps} time steps (time-dependent BN) but got T={steps}"
        )


def make_norm2d(cfg: SVFormerConfig, channels: int) -> nn.Module:
    cls = TemporalBatchNorm2d if cfg.norm == "tdbn" else SeqBatchNorm2d
    return cls(channels, cfg.time_steps)


def make_norm1d(cfg: SVFormerConfig, channels: int) -> nn.Module:
    cls = TemporalBatchNorm1d if cfg.norm == "tdbn" else SeqBatchNorm1d
    return cls(channels, cfg.time_steps)


class DropPath(nn.Module):
    """Stochastic depth on ``[T, B, ...]`` tensors: drops whole samples (the B axis) while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep
