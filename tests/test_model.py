"""The model zoo: exact parameter counts, forward passes, neuron settings, state resets."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import neuron, surrogate
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.layers import TemporalBatchNorm1d, TemporalBatchNorm2d
from svformer_deploy.svformer.model import Attention, SVFormer
from svformer_deploy.svformer.variants import VARIANTS, create_model, variant_config


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# svformer-architecture.md §5: a from-scratch rebuild of the authors' code
@pytest.mark.parametrize(
    "name, overrides, expected",
    [
        ("base", {}, 13_801_612),
        ("ss", {}, 12_533_253),
        ("st", {}, 8_773_004),
        ("dp", {}, 17_719_325),
        ("wd", {}, 24_068_492),
        ("base", {"local_pathway": False}, 12_326_795),
        ("base", {"norm": "bn"}, 13_352_332),
        ("base", {"time_steps": 8}, 12_759_180),
        ("base", {"time_steps": 24}, 14_844_044),
        ("base", {"num_classes": 60}, 13_759_587),
        ("3stg", {}, 1_879_974),
        ("3stg", {"in_channels": 3}, 1_882_278),
        ("base", {"neuron": "lif"}, 13_801_612 - 39),
    ],
)
def test_parameter_count_matches_architecture_table(name, overrides, expected):
    assert n_params(create_model(name, **overrides)) == expected


def test_parameter_count_is_linear_in_time_steps():
    # params(T) = 11,716,748 + 130,304 T for base (architecture §4)
    for t in (1, 4, 16):
        assert n_params(create_model("base", time_steps=t)) == 11_716_748 + 130_304 * t


SMALL = {
    # every variant at a small input size (same structure, smaller maps)
    "base": {"img_size": 64, "time_steps": 2},
    "ss": {"img_size": 64, "time_steps": 2},
    "st": {"img_size": 64, "time_steps": 2},
    "dp": {"img_size": 64, "time_steps": 2},
    "wd": {"img_size": 64, "time_steps": 2},
    "3stg": {"img_size": 32, "time_steps": 2},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_runs_forward_on_cpu(name):
    model = create_model(name, **SMALL[name]).eval()
    cfg = model.cfg
    x = torch.rand(2, cfg.in_channels, cfg.time_steps, cfg.img_size, cfg.img_size) * 4
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, cfg.num_classes)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(
    "overrides",
    [{"local_pathway": False}, {"neuron": "lif"}, {"norm": "bn"}, {"time_steps": 3}, {"num_classes": 7},
     {"in_channels": 1}, {"surrogate": "sigmoid", "surrogate_alpha": 4.0}],
)
def test_ablation_switches_build_and_run(overrides):
    model = create_model("base", **{"img_size": 64, "time_steps": 2, **overrides}).eval()
    cfg = model.cfg
    with torch.no_grad():
        y = model(torch.rand(1, cfg.in_channels, cfg.time_steps, 64, 64))
    assert y.shape == (1, cfg.num_classes)


def test_identical_clips_give_identical_outputs_because_states_reset():
    torch.manual_seed(0)
    model = create_model("3stg", img_size=32, time_steps=4).eval()
    x = torch.rand(1, 2, 4, 32, 32) * 3
    other = torch.rand(1, 2, 4, 32, 32) * 3
    with torch.no_grad():
        a = model(x)
        model(other)  # leaves non-zero membranes behind
        b = model(x)
    assert torch.equal(a, b)


def test_both_input_layouts_agree():
    torch.manual_seed(1)
    model = create_model("3stg", img_size=32, time_steps=3).eval()
    x = torch.rand(2, 2, 3, 32, 32) * 3
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_sequence(x.permute(2, 0, 1, 3, 4)))


def test_neurons_are_released_parametric_lif_settings():
    model = create_model("base")
    nodes = [m for m in model.modules() if isinstance(m, neuron.BaseNode)]
    assert len(nodes) == 39
    for m in nodes:
        assert isinstance(m, neuron.ParametricLIFNode)
        assert m.v_threshold == 1.0 and m.v_reset == 0.0 and m.detach_reset and m.step_mode == "m"
        assert m.decay_input
        assert isinstance(m.surrogate_function, surrogate.ATan) and m.surrogate_function.alpha == 2.0
        assert torch.isclose(1.0 / m.w.sigmoid(), torch.tensor(2.0))  # init tau 2


def test_first_patch_embedding_has_no_neuron_and_the_others_do():
    model = create_model("base")
    assert not hasattr(model.patch_embed1, "in_lif")
    for i in (2, 3, 4):
        assert isinstance(getattr(model, f"patch_embed{i}").in_lif, neuron.ParametricLIFNode)


def test_head_is_grouped_conv3d_over_time_and_space():
    model = create_model("base")
    conv = model.dwconv_bf_head
    assert conv.weight.shape == (1024, 2, 16, 7, 7) and conv.groups == 512
    assert isinstance(model.dwconv_bn, torch.nn.BatchNorm3d)
    no_lp = create_model("base", local_pathway=False).dwconv_bf_head
    assert no_lp.weight.shape == (512, 1, 16, 7, 7)  # depthwise without the local pathway


def test_tdbn_normalises_each_time_step_and_channel_separately():
    torch.manual_seed(2)
    T, B, C, H, W = 3, 4, 2, 5, 5
    bn = TemporalBatchNorm2d(C, T).train()
    x = torch.randn(T, B, C, H, W) * torch.arange(1, T + 1).view(T, 1, 1, 1, 1) + 5
    y = bn(x)
    for t in range(T):
        for c in range(C):
            ref = x[t, :, c]
            ref = (ref - ref.mean()) / torch.sqrt(ref.var(unbiased=False) + bn.eps)
            torch.testing.assert_close(y[t, :, c], ref, atol=1e-5, rtol=1e-5)
    assert bn.weight.shape == (T * C,)
    tokens = TemporalBatchNorm1d(C, T).train()
    xt = torch.randn(T, B, 7, C) + torch.arange(T).view(T, 1, 1, 1)
    yt = tokens(xt)
    torch.testing.assert_close(yt.mean(dim=(1, 2)), torch.zeros(T, C), atol=1e-5, rtol=0)


def test_tdbn_rejects_a_different_number_of_time_steps():
    with pytest.raises(SVFormerError, match="T=4"):
        TemporalBatchNorm2d(3, 4).eval()(torch.rand(3, 1, 3, 2, 2))
    model = create_model("3stg", img_size=32, time_steps=4).eval()
    with pytest.raises(SVFormerError, match=r"\[4, B, 2, 32, 32\]"):
        model.forward_sequence(torch.rand(3, 1, 2, 32, 32))


def test_wrong_input_shape_is_a_clear_error():
    model = create_model("3stg", img_size=32, time_steps=2).eval()
    with pytest.raises(SVFormerError, match="does not fit"):
        model(torch.rand(1, 3, 2, 32, 32))


def test_attention_is_q_times_ktv_times_eighth_without_softmax():
    torch.manual_seed(3)
    cfg = variant_config("3stg", img_size=32, time_steps=2, dims=(64, 128, 128))
    attn = Attention(cfg, 128).double().eval()
    for m in attn.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_var.fill_(0.05)  # strong drive so q, k, v actually spike
    x = torch.randn(2, 1, 9, 128, dtype=torch.float64) * 3
    captured = {}
    hooks = [getattr(attn, n).register_forward_hook(lambda m, i, o, n=n: captured.__setitem__(n, o))
             for n in ("q_lif", "k_lif", "v_lif", "proj_lif")]
    hooks.append(attn.proj_lif.register_forward_pre_hook(lambda m, i: captured.__setitem__("a", i[0])))
    attn(x)
    for h in hooks:
        h.remove()
    q, k, v = captured["q_lif"], captured["k_lif"], captured["v_lif"]
    assert 0 < q.mean() < 1 and 0 < k.mean() < 1 and 0 < v.mean() < 1
    expected = (q @ k.transpose(-2, -1) @ v) * 0.125  # [T, B, h, N, d]
    expected = expected.transpose(2, 3).reshape(2, 1, 9, 128)
    torch.testing.assert_close(captured["a"], expected, atol=1e-9, rtol=0)


def test_config_validation_messages():
    with pytest.raises(SVFormerError, match="unknown architecture"):
        variant_config("huge")
    with pytest.raises(SVFormerError, match="local pathway"):
        variant_config("base", img_size=120)
    with pytest.raises(SVFormerError, match="head_dim"):
        variant_config("base", dims=(128, 256, 100, 512))


def test_config_round_trips_through_dict():
    cfg = variant_config("3stg", time_steps=5)
    again = type(cfg).from_dict(cfg.to_dict())
    assert again == cfg
    assert isinstance(SVFormer(again), SVFormer)
