"""fold_bn and fuse_linear: rewrites, fidelity targets, purity, and the pipeline order."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_models import make_input, make_model, single_thread  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st
from svformer_deploy.export import ir
from svformer_deploy.export.passes.fold_bn import check as fold_check
from svformer_deploy.export.passes.fold_bn import fold_bn, remaining_affines
from svformer_deploy.export.passes.fuse_linear import check as fuse_check
from svformer_deploy.export.passes.fuse_linear import compose, fuse_linear, fusion_report
from svformer_deploy.export.passes.quantize import QuantConfig
from svformer_deploy.export.pipeline import PASS_ORDER, run_pipeline
from svformer_deploy.export.trace import trace


@pytest.mark.parametrize("variant,overrides", [("base", {}), ("base", dict(norm="bn")), ("base", dict(neuron="lif")),
                                               ("3stg", dict(time_steps=4))],
                         ids=["tdbn", "plain-bn", "lif", "3stg-T4"])
def test_tdbn_fold_keeps_spikes_identical_in_float64_and_meets_float32_target(variant, overrides):
    model = make_model(variant, **overrides)
    traced = trace(model)
    folded = fold_bn(traced)
    r64, r32 = fold_check(traced, folded, make_input(model, 4, seed=3))
    assert r64.passed and r64.flips == 0 and r64.spikes_ref > 0, r64.summary()
    assert r32.passed, r32.summary()
    assert r64.max_abs_logit_diff <= 1e-9


def test_plain_bn_folds_completely_and_tdbn_leaves_per_step_affines():
    plain = fold_bn(trace(make_model("base", norm="bn")))
    assert not list(ir.iter_ops(plain, ("batchnorm", "affine")))
    tdbn_graph = trace(make_model("base"))
    bn_names = [n for n, _ in ir.iter_ops(tdbn_graph, "batchnorm") if n != "dwconv_bn"]
    folded = fold_bn(tdbn_graph)
    left = remaining_affines(folded)
    assert sorted(a["name"] for a in left) == sorted(bn_names)
    assert all(a["scale"] == "per-step" and a["bias"] == "per-step" for a in left)
    for a in left:  # the weighted op before it lost its bias (moved into the per-step bias)
        (src,) = ir.inputs_of(folded, a["name"])
        assert ir.op_of(folded, src).bias is None
    assert "dwconv_bn" not in folded  # the head's BatchNorm3d folds into the conv3d
    assert folded.nodes["dwconv_bf_head"]["origin"] == ["dwconv_bf_head", "dwconv_bn"]
    assert folded.graph["passes"] == ["fold_bn"]


def test_tdbn_with_equal_step_scales_folds_its_scale_into_the_weights():
    model = make_model("3stg")
    traced = trace(model)
    name = "blocks1.0.mlp.norm1"
    bn = ir.op_of(traced, name)
    same = {f: np.repeat(getattr(bn, f)[:1], bn.mean.shape[0], axis=0) for f in ("var", "weight")}
    mean = bn.mean.copy()  # per-step means differ: only a per-step bias can remain
    ir.replace_op(traced, name, dataclasses.replace(bn, mean=mean, **same))
    folded = fold_bn(traced)
    aff = ir.op_of(folded, name)
    assert aff.scale is None and aff.bias.shape == bn.mean.shape
    r64, _ = fold_check(traced, folded, make_input(model, 2))
    assert r64.flips == 0
    # equal statistics and affine at every step: nothing remains
    all_same = {f: np.repeat(getattr(bn, f)[:1], bn.mean.shape[0], axis=0) for f in ("mean", "var", "weight", "bias")}
    ir.replace_op(traced, name, dataclasses.replace(bn, **all_same))
    assert name not in fold_bn(traced)


def test_passes_do_not_modify_their_input():
    model = make_model("base")
    traced = trace(model)
    before = ir.copy_graph(traced)
    folded = fold_bn(traced)
    assert ir.diff_graphs(before, traced) == []
    snapshot = ir.copy_graph(folded)
    fuse_linear(folded)
    assert ir.diff_graphs(snapshot, folded) == []


@settings(max_examples=30, deadline=None)
@given(c=st.integers(1, 4), k=st.sampled_from([1, 3, 5]), stride=st.integers(1, 2), pad=st.integers(0, 2),
       groups_dw=st.booleans(), first_pointwise=st.booleans(), seed=st.integers(0, 10_000))
def test_composed_conv_equals_the_two_convs_in_float64(c, k, stride, pad, groups_dw, first_pointwise, seed):
    rng = np.random.default_rng(seed)
    size = 7
    pw = ir.Conv2d(weight=rng.standard_normal((c, c, 1, 1)), bias=rng.standard_normal(c))
    g = c if groups_dw else 1
    kk = ir.Conv2d(weight=rng.standard_normal((c, c // g, k, k)), bias=rng.standard_normal(c), stride=stride,
                   padding=pad, groups=g)
    a, b = (pw, kk) if first_pointwise else (kk, pw)
    mid = a.infer([ir.TensorSpec((c, size, size))]).shape
    fused = compose(a, b, mid)
    x = torch.from_numpy(rng.standard_normal((2, c, size, size)))

    def run(op, t):
        bias = torch.from_numpy(op.bias)
        y = F.conv2d(t, torch.from_numpy(op.weight), None if bias.dim() == 3 else bias, op.stride, op.padding, 1,
                     op.groups)
        return y + bias if bias.dim() == 3 else y

    want = run(b, run(a, x))
    got = run(fused, x)
    assert torch.allclose(got, want, rtol=0, atol=1e-10)


def test_fuse_linear_collapses_pw_dw_pw_and_dw_pw_into_dense_convs():
    model = make_model("base")
    folded = fold_bn(trace(model))
    fused = fuse_linear(folded)
    c = model.cfg.dims[0]
    lfe = ir.op_of(fused, "blocks1.0.conv1+attn+conv2")
    assert lfe.weight.shape == (c, c, 5, 5) and lfe.groups == 1
    assert lfe.bias is not None and lfe.bias.shape[1:] == ir.spec(fused, "blocks1.0.conv1+attn+conv2").shape[1:]
    lp = ir.op_of(fused, "lpDWConv+lpPWConv")
    assert lp.weight.shape[2:] == (3, 3) and lp.stride == (2, 2)
    for name in ("blocks1.0.conv1", "blocks1.0.attn", "lpDWConv"):
        assert name not in fused
    rep = fusion_report(folded, fused)
    row = next(r for r in rep.fused if r["name"] == "blocks1.0.conv1+attn+conv2")
    s, T = model.cfg.spatial_sizes()[0], model.cfg.time_steps
    assert row["macs_after"] == T * s * s * c * c * 25
    assert row["macs_before"] == T * s * s * (2 * c * c + 25 * c)
    assert rep.after["macs_on_real_inputs"] < rep.before["macs_on_real_inputs"]
    assert rep.before["weighted_ops"] - rep.after["weighted_ops"] == 2 * sum(model.cfg.depths[:2]) + 1
    r64, r32 = fuse_check(folded, fused, make_input(model, 4, seed=4))
    assert r64.passed and r32.passed, (r64.summary(), r32.summary())


def test_pipeline_runs_passes_in_order_and_reports_every_check():
    model = make_model("3stg")
    res = run_pipeline(model, fuse=True, quant=QuantConfig(), calibration=make_input(model, 4, seed=8),
                       check_inputs=make_input(model, 4, seed=9))
    assert list(res.graphs) == ["traced", "folded", "fused", "quantized"]
    assert res.graph.graph["passes"] == list(PASS_ORDER)
    labels = [r.label for r in res.reports]
    assert labels[:6] == ["trace float64", "trace float32", "fold_bn float64", "fold_bn float32",
                          "fuse_linear float64", "fuse_linear float32"]
    assert all(r.passed for r in res.reports[:6])
    assert res.quant is not None and res.quant.fidelity is res.reports[-1] and res.quant.weights
    assert set(res.timings) >= {"trace", "fold_bn", "fuse_linear", "quantize"}
