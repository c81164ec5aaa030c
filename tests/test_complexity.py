"""Dense MACs from first principles, checked against what actually executes (a brute-force count)."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from svformer_deploy.svformer.complexity import dense_macs, dense_macs_by_stage, layer_costs, neuron_layer_count
from svformer_deploy.svformer.variants import create_model, variant_config
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


class ExecutedMacs(TorchDispatchMode):
    """Counts the multiply-accumulates of every conv/matmul kernel that runs, per innermost module."""

    def __init__(self):
        super().__init__()
        self.scope: list[str] = []
        self.counts: dict[str, list[int]] = defaultdict(list)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        macs = None
        if func is aten.convolution.default:
            w = args[1]
            macs = out.numel() * w.shape[1] * w[0, 0].numel()
        elif func in (aten.mm.default, aten.addmm.default):
            a, b = (args[0], args[1]) if func is aten.mm.default else (args[1], args[2])
            macs = a.shape[0] * a.shape[1] * b.shape[1]
        elif func is aten.bmm.default:
            a, b = args[0], args[1]
            macs = a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
        if macs is not None:
            self.counts[self.scope[-1] if self.scope else ""].append(int(macs))
        return out


def executed_macs(model: torch.nn.Module) -> dict[str, list[int]]:
    cfg = model.cfg
    mode = ExecutedMacs()
    names = {m: n for n, m in model.named_modules()}
    def enter(mod, inp):
        mode.scope.append(names[mod])

    def leave(mod, inp, out):
        mode.scope.pop()

    hooks = []
    for m in model.modules():
        hooks.append(m.register_forward_pre_hook(enter))
        hooks.append(m.register_forward_hook(leave))
    x = torch.rand(1, cfg.in_channels, cfg.time_steps, cfg.img_size, cfg.img_size)
    with torch.no_grad(), mode:
        model.eval()(x)
    for h in hooks:
        h.remove()
    return mode.counts


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("base", {"img_size": 64, "time_steps": 3}),
        ("dp", {"img_size": 64, "time_steps": 2, "dims": (32, 64, 64, 128)}),
        ("3stg", {"img_size": 32, "time_steps": 2}),
        ("base", {"img_size": 64, "time_steps": 2, "local_pathway": False, "mlp_ratio": 3.0}),
    ],
)
def test_first_principles_macs_equal_executed_kernels(name, overrides):
    model = create_model(name, **overrides)
    counted = executed_macs(model)
    expected: dict[str, list[int]] = defaultdict(list)
    for layer in layer_costs(model.cfg):
        if layer.op.startswith("matmul"):  # the two attention matmuls run inside the Attention module
            expected[layer.name.rsplit(".", 1)[0]].append(layer.macs)
        else:
            expected[layer.name].append(layer.macs)
    assert dict(counted) == dict(expected)


def test_pe1_of_base_costs_the_papers_700_million_macs_with_bias():
    pe1 = next(layer for layer in layer_costs(variant_config("base")) if layer.stage == "PE1")
    assert pe1.macs + pe1.bias_adds == 700_055_552
    assert dense_macs_by_stage(variant_config("base"))["PE1"] == pe1.macs == 693_633_024


def test_stage_totals_add_up_and_layer_params_cover_all_weights():
    cfg = variant_config("base")
    assert sum(dense_macs_by_stage(cfg).values()) == dense_macs(cfg)
    model = create_model("base")
    weights = sum(p.numel() for n, p in model.named_parameters()
                  if "norm" not in n and "BN" not in n and "bn" not in n and not n.endswith(".w"))
    assert sum(layer.params for layer in layer_costs(cfg)) == weights


def test_neuron_layer_count_matches_the_model():
    from spikingjelly.activation_based import neuron

    for name in ("base", "dp", "3stg"):
        model = create_model(name)
        assert neuron_layer_count(model.cfg) == sum(isinstance(m, neuron.BaseNode) for m in model.modules())
