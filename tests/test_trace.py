"""Tracer + reference interpreter reproduce the PyTorch model for every variant and ablation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_models import CASES, make_input, make_model, single_thread  # noqa: F401
from svformer_deploy.export import ir
from svformer_deploy.export.fidelity import compare
from svformer_deploy.export.passes.fold_bn import fold_bn
from svformer_deploy.export.reference import ReferenceModel, run_graph
from svformer_deploy.export.trace import trace
from svformer_deploy.svformer.complexity import neuron_layer_count
from svformer_deploy.svformer.errors import SVFormerError


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_traced_graph_reproduces_the_model_spike_for_spike(case):
    _, variant, overrides = case
    model = make_model(variant, **overrides)
    x = make_input(model, batch=2)
    g = trace(model)
    r64 = compare(model, g, x, torch.float64)
    rates = [layer.spikes_ref / layer.positions for layer in r64.layers]
    assert 0.05 <= float(np.mean(rates)) <= 0.40  # a non-trivial regime, so the test can fail
    assert r64.flips == 0
    assert len(r64.layers) == neuron_layer_count(model.cfg)
    assert r64.max_abs_logit_diff <= 1e-9
    r32 = compare(model, g, x, torch.float32)
    assert r32.max_abs_logit_diff <= 1e-5


def test_node_names_are_module_paths_and_point_at_the_parameters():
    model = make_model("base")
    g = trace(model)
    modules = dict(model.named_modules())
    for name, _ in ir.iter_ops(g, ("neuron", "conv2d", "linear", "batchnorm", "conv3d")):
        assert name in modules, name
    assert "blocks3.1.attn.q_lif" in g and "blocks3.1.attn.kv" in g and "blocks3.1.attn.qkv_out" in g
    np.testing.assert_array_equal(ir.op_of(g, "blocks3.1.attn.qkv").weight,
                                  modules["blocks3.1.attn.qkv"].weight.detach().numpy())
    assert ir.op_of(g, "blocks3.1.attn.q_lif").a == float(modules["blocks3.1.attn.q_lif"].w.detach())
    # TDBN statistics keep the (time step, channel) order of the authors' T*C channels
    bn = modules["blocks3.1.mlp.norm1"]
    node = ir.op_of(g, "blocks3.1.mlp.norm1")
    np.testing.assert_array_equal(node.mean[1], bn.running_mean.numpy()[bn.channels:2 * bn.channels])
    assert ir.inputs_of(g, "concat") == ["lpBN", "blocks4.0.to_image"]  # order [LP, main]


def test_every_neuron_and_head_conv_has_the_right_rate_and_kind():
    g = trace(make_model("3stg"))
    for name, _ in ir.iter_ops(g, "neuron"):
        assert ir.spec(g, name).kind == ir.SPIKE and ir.spec(g, name).rate == ir.STEP
    assert ir.spec(g, "dwconv_bf_head").rate == ir.CLIP
    assert ir.spec(g, "output").shape == (5,)


def test_tracer_and_interpreter_reject_bad_inputs():
    model = make_model("3stg")
    with pytest.raises(SVFormerError, match="SVFormer"):
        trace(torch.nn.Linear(2, 2))
    model.blocks1[0].act1.v_reset = None
    with pytest.raises(SVFormerError, match="soft reset"):
        trace(model)
    g = trace(make_model("3stg"))
    with pytest.raises(SVFormerError, match="does not fit"):
        run_graph(g, torch.zeros(4, 1, 2, 32, 32))
    with pytest.raises(SVFormerError, match="not quantized"):
        ReferenceModel(g, mode="fixed")


def test_recorded_outputs_have_per_step_and_per_clip_shapes():
    model = make_model("3stg", time_steps=2)
    g = trace(model)
    logits, rec = run_graph(g, make_input(model, 3), record=True)
    assert logits.shape == (3, 5)
    assert rec["blocks2.0.attn.kv"].shape == (2, 3, 2, 8, 8)  # [T, B, h, d, d]
    assert rec["dwconv_bf_head"].shape == (3, 32, 1, 1, 1)


@pytest.mark.slow
def test_reference_model_exports_to_onnx_and_runs_in_onnxruntime(tmp_path):
    import onnxruntime as ort

    model = make_model("3stg", depths=(0, 1, 0), time_steps=2)
    x = make_input(model, 2)
    ref = ReferenceModel(fold_bn(trace(model)), dtype=torch.float32)
    path = tmp_path / "ref.onnx"
    torch.onnx.export(ref, (x,), str(path), dynamo=True, verbose=False)
    sess = ort.InferenceSession(str(path))
    y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = ref(x).numpy()
    assert np.abs(y - want).max() <= 1e-4
    with torch.no_grad():
        assert np.abs(want - model.forward_sequence(x).numpy()).max() <= 1e-4
