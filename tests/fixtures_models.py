"""Tiny SVFormer models of every variant/ablation with non-trivial BN statistics and neuron leaks.

Shared by the export tests. Every model is built through the real zoo (``create_model``) and then
given random running statistics, BN affine parameters, PLIF parameters and biases, so that a wrong
fold, a wrong channel order or a wrong time index changes spikes (firing rates land around 5-40%).
"""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import neuron as sj_neuron
from svformer_deploy.svformer.layers import SeqBatchNorm1d, SeqBatchNorm2d, TemporalBatchNorm1d, TemporalBatchNorm2d
from svformer_deploy.svformer.model import SVFormer
from svformer_deploy.svformer.variants import create_model
from torch import nn

# every zoo variant at a tiny size (the variants' depths and stage types, their widths / 16)
TINY: dict[str, dict] = {
    "base": dict(img_size=32, dims=(8, 16, 24, 32)),
    "ss": dict(img_size=32, dims=(8, 16, 24, 32)),
    "st": dict(img_size=32, dims=(8, 8, 16, 32)),
    "dp": dict(img_size=32, dims=(8, 16, 24, 32)),
    "wd": dict(img_size=32, dims=(8, 16, 32, 48)),
    "3stg": dict(img_size=32, dims=(8, 16, 32)),
}
COMMON = dict(time_steps=3, head_dim=8, num_classes=5)

# (id, variant, overrides): the zoo plus the ablations (no LP, LIF, plain BN, other T / size / classes / channels)
CASES: list[tuple[str, str, dict]] = [(v, v, {}) for v in TINY] + [
    ("base-noLP", "base", dict(local_pathway=False)),
    ("base-LIF", "base", dict(neuron="lif", init_tau=3.0)),
    ("base-plainBN", "base", dict(norm="bn")),
    ("base-T5-7cls-2ch", "base", dict(time_steps=5, num_classes=7, in_channels=2)),
    ("3stg-64px-3ch-T2", "3stg", dict(img_size=64, in_channels=3, time_steps=2)),
]


def make_model(variant: str = "base", seed: int = 0, **overrides) -> SVFormer:
    """A tiny eval-mode model of ``variant`` with randomised BN statistics/affine, PLIF leaks and biases."""
    kw = {**COMMON, **TINY[variant], **overrides}
    torch.manual_seed(seed)
    model = create_model(variant, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    bn_types = (TemporalBatchNorm2d, TemporalBatchNorm1d, SeqBatchNorm2d, SeqBatchNorm1d, nn.BatchNorm3d)
    bns = [m for m in model.modules() if isinstance(m, bn_types)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, sj_neuron.ParametricLIFNode):
                m.w.copy_(torch.rand((), generator=g) * 3.0 - 1.5)
            if isinstance(m, sj_neuron.BaseNode):  # per-layer thresholds; attention outputs are small here
                m.v_threshold = float(torch.rand((), generator=g) * 0.6 + 0.7)
            elif isinstance(m, nn.Conv2d | nn.Linear | nn.Conv3d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        # running statistics from one batch (momentum 1), so every BN sees inputs of its own scale
        for m in bns:
            m.momentum = 1.0
        model.train()
        model.forward_sequence(make_input(model, batch=2, seed=seed + 7))
        for m in bns:
            n = m.num_features
            m.momentum = 0.1
            m.running_mean.add_(torch.randn(n, generator=g) * 0.2 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(n, generator=g) * 0.6 + 0.7)
            m.weight.copy_(torch.randn(n, generator=g) * 0.3 + 1.0)
            m.bias.copy_(torch.randn(n, generator=g) * 0.3 + 0.1)
        for name, m in model.named_modules():
            if name.endswith("attn.proj_lif"):
                m.v_threshold = 0.2
    return model.eval()


def make_input(model: SVFormer, batch: int = 2, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """Random frames ``[T, B, C, H, W]`` (float32) for ``model``: N(0, 1) times ``scale``."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed + 100)
    return torch.randn(cfg.time_steps, batch, cfg.in_channels, cfg.img_size, cfg.img_size, generator=g) * scale


def firing_rates(model: SVFormer, x: torch.Tensor) -> dict[str, float]:
    """Per neuron layer firing rate (spikes per neuron per step) of the PyTorch model on ``x``."""
    rates: dict[str, float] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, sj_neuron.BaseNode):
            hooks.append(m.register_forward_hook(lambda mod, i, o, name=name: rates.__setitem__(name, float(o.mean()))))
    try:
        with torch.no_grad():
            model.forward_sequence(x)
    finally:
        for h in hooks:
            h.remove()
    return rates


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Run tiny-model tests on one torch thread (on a shared 2-core machine two threads thrash on tiny ops).

    Import it into a test module to activate it there; the previous thread count is restored after.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
