"""The three energy methods on hand-worked run records: exact, paper_eq13, memory_aware, ANN counterpart."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from energy_fixtures import HAND, hand_record, make_layer, make_record, synthetic_record
from svformer_deploy.deploy.energy.cost_models import PRESETS, get_cost_model
from svformer_deploy.deploy.energy.methods import evaluate_record
from svformer_deploy.deploy.energy.records import RunRecord, aggregate, validate_record

FP32 = PRESETS["fp32"]


def _rec(data, name="r.json") -> RunRecord:
    validate_record(data, name)
    return RunRecord(Path(name), data)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9)


def test_exact_energy_is_each_count_times_its_cost_on_the_hand_record():
    clip = evaluate_record(_rec(hand_record()), FP32)
    for key in ("ac", "mac", "mul", "add", "neuron_updates"):
        assert clip.total_counts(key) == HAND[key]
    expected = 0.9 * 726 + 4.6 * 1050 + 3.7 * 40 + 0.9 * 255 + 4.6 * 200
    assert close(clip.totals_pj["exact"], expected) and close(expected, HAND["exact_pj"])
    assert close(sum(layer.exact_total_pj for layer in clip.layers), clip.totals_pj["exact"])


def test_exact_energy_matches_the_formula_for_every_preset_on_a_real_shaped_record():
    rec = _rec(synthetic_record("base", seed=3))
    totals = rec.data["totals"]
    for cm in PRESETS.values():
        clip = evaluate_record(rec, cm)
        expected = (cm.e_ac_pj * totals["ac"] + cm.e_mac_pj * totals["mac"] + cm.e_mul_pj * totals["mul"]
                    + cm.e_add_pj * totals["add"] + cm.e_neuron_update_pj * totals["neuron_updates"])
        assert clip.totals_pj["exact"] == expected  # priced from the summed counts: bit-identical


def test_paper_eq13_equals_the_papers_formula_worked_by_hand():
    clip = evaluate_record(_rec(hand_record()), FP32)
    # E = E_AC x sum SOP + E_MAC x FLOP^1, SOP^l = fr^{l-1} x FLOP^l (worked out in energy_fixtures.HAND)
    assert sum(layer.paper_mac for layer in clip.layers) == 1040
    assert close(sum(layer.paper_sop for layer in clip.layers), 763.0)
    assert close(clip.totals_pj["paper_eq13"], 0.9 * 763 + 4.6 * 1040)
    assert close(clip.totals_pj["paper_eq13"], HAND["paper_pj"])
    by_name = {layer.name: layer for layer in clip.layers}
    for name, pj in HAND["paper_layer_pj"].items():
        assert close(by_name[name].paper_pj, pj), name
    # K^T V at min(fr_K, fr_V), Q (K^T V) at fr_Q, neurons / BN / residual adds are free in the paper's method
    assert by_name["blocks1.0.attn.kv"].paper_rate == 0.125
    assert by_name["blocks1.0.attn.qkv_out"].paper_rate == 0.5
    assert all(by_name[n].paper_pj == 0 for n in ("patch_embed1.norm", "blocks1.0.add1", "lif_bf_head"))


def test_paper_eq13_with_another_cost_model_scales_with_its_e_ac_and_e_mac():
    clip = evaluate_record(_rec(hand_record()), PRESETS["int8"])
    assert close(clip.totals_pj["paper_eq13"], 0.03 * 763 + 0.23 * 1040)


def test_memory_aware_adds_weight_and_state_words_at_the_word_cost():
    clip = evaluate_record(_rec(hand_record()), FP32)
    memory = (1730 + 400) * 20.0 * 32 / 64
    assert close(memory, HAND["memory_pj"])
    assert close(clip.totals_pj["memory_aware"], HAND["exact_pj"] + memory)


def test_memory_words_use_the_layer_word_bits_else_the_quantized_weight_bits():
    T = 1
    layers = [
        make_layer("a_lif", "S1", "neuron", T, input_kind="real", neurons=4, spikes_out=2, word_bits=None),
        make_layer("fc8", "S1", "linear", T, input_neurons=("a_lif",), dense_macs=8, ac=4, weight_reads=4,
                   word_bits=None),
        make_layer("fc16", "S1", "linear", T, input_neurons=("a_lif",), dense_macs=8, ac=4, weight_reads=4,
                   word_bits=16),
    ]
    data = make_record(layers, T=T)
    data["model"].update(quantized=True, weight_bits=8)
    clip = evaluate_record(_rec(data), FP32)
    by_name = {layer.name: layer for layer in clip.layers}
    assert by_name["fc8"].memory_pj["weight"] == 4 * 20.0 * 8 / 64
    assert by_name["fc16"].memory_pj["weight"] == 4 * 20.0 * 16 / 64


def test_ann_counterpart_is_all_dense_macs_at_e_mac_and_ratios_follow():
    report = aggregate([_rec(hand_record())], FP32)
    assert report["ann_counterpart"]["macs"] == HAND["ann_macs"]
    assert close(report["ann_counterpart"]["energy_mj"] * 1e9, HAND["ann_pj"])
    for m, pj in (("exact", HAND["exact_pj"]), ("paper_eq13", HAND["paper_pj"]),
                  ("memory_aware", HAND["memory_aware_pj"])):
        assert close(report["methods"][m]["energy_mj"] * 1e9, pj)
        assert close(report["methods"][m]["snn_ann_ratio"], pj / HAND["ann_pj"])


def test_reconciliation_differences_sum_to_the_method_totals_difference():
    for data in (hand_record(), synthetic_record("base", seed=1), synthetic_record("3stg", seed=2)):
        report = aggregate([_rec(data)], FP32)
        diff = (report["methods"]["exact"]["energy_mj"] - report["methods"]["paper_eq13"]["energy_mj"]) * 1e9
        per_layer = sum(layer["difference_pj"] for layer in report["layers"])
        per_reason = sum(e["difference_pj"] for e in report["reconciliation"]["by_reason"])
        assert math.isclose(per_layer, diff, rel_tol=1e-9)
        assert math.isclose(per_reason, diff, rel_tol=1e-9)
        assert math.isclose(report["reconciliation"]["exact_minus_paper_pj"], diff, rel_tol=1e-9)


def test_reconciliation_names_why_each_layer_differs():
    report = aggregate([_rec(synthetic_record("base", seed=1))], FP32)
    reason = {layer["name"]: layer["reason"] for layer in report["layers"]}
    assert reason["patch_embed1.proj"] == "first_layer"
    assert reason["blocks1.0.attn"] == "unfused_cascade"  # LFE DW on the real output of PW1
    assert reason["blocks1.0.conv2"] == "unfused_cascade"
    assert reason["lpPWConv"] == "unfused_cascade"
    assert reason["blocks3.0.attn.kv"] == reason["blocks3.0.attn.qkv_out"] == "attention"
    assert reason["blocks1.0.add1"] == "membrane_shortcut"
    assert reason["blocks1.0.norm2"] == "per_step_bn"
    assert reason["blocks1.0.act1"] == "neuron_updates"
    assert reason["blocks1.0.mlp.fc1"] == "spike_input"


def test_pe1_of_svformer_base_costs_the_papers_0700_g_flops():
    report = aggregate([_rec(synthetic_record("base", seed=0))], FP32)
    paper = report["methods"]["paper_eq13"]
    assert paper["first_layer_flops"] == paper["mac"] == 700_055_552  # 16 x 56^2 x 128 x (3 x 36 + 1)
    assert paper["bias_flops_source"].startswith("svformer.complexity")
    pe1 = next(layer for layer in report["layers"] if layer["name"] == "patch_embed1.proj")
    assert pe1["dense_macs"] == 693_633_024 and pe1["mac"] == 693_633_024


def _fused_record(version: int) -> dict:
    data = synthetic_record("base", seed=4, img_size=64, time_steps=2, dims=(16, 32, 64, 64), head_dim=16)
    names = [layer["name"] for layer in data["layers"]]
    i = names.index("blocks1.0.conv1")
    conv1, dw, conv2 = data["layers"][i:i + 3]
    # the name is only a label: the record says what the layer implements in ``origin``
    fused = dict(conv2, name="fused_conv", input_kind="spike", dense_macs=conv1["dense_macs"] * 25,
                 origin=["blocks1.0.conv1", "blocks1.0.attn", "blocks1.0.conv2", "blocks1.0.norm2"],
                 counts={"ac": 1000}, per_step={})
    if version == 1:  # version 1 records had no origin: a fused layer was named a+b
        fused.pop("origin")
        fused["name"] = "blocks1.0.conv1+attn+conv2"
    data["layers"][i:i + 3] = [fused]
    data["model"]["passes"] = ["fold_bn", "fuse_linear"]
    data["version"] = version
    data.pop("totals")
    return data


@pytest.mark.parametrize("version", [2, 1])
def test_fused_layer_takes_the_bias_of_its_last_part_and_is_reconciled_as_fused(version):
    data = _fused_record(version)
    report = aggregate([_rec(data)], FP32)
    row = next(layer for layer in report["layers"] if layer["name"] in ("fused_conv", "blocks1.0.conv1+attn+conv2"))
    c, s, T = 16, 16, 2
    assert row["paper_flops"] == row["dense_macs"] + T * c * s * s
    assert row["reason"] == "fused_cascade"


def test_a_layer_implementing_one_dense_layer_and_its_folded_bn_is_not_a_fused_cascade():
    data = synthetic_record("base", seed=4, img_size=64, time_steps=2, dims=(16, 32, 64, 64), head_dim=16)
    layer = next(x for x in data["layers"] if x["name"] == "patch_embed2.proj")
    layer["origin"] = ["patch_embed2.proj", "patch_embed2.norm"]
    row = next(x for x in aggregate([_rec(data)], FP32)["layers"] if x["name"] == "patch_embed2.proj")
    assert row["reason"] == "spike_input"


def test_paper_rate_of_an_op_fed_by_several_neuron_layers_is_their_pooled_rate():
    T = 1
    layers = [
        make_layer("a", "S1", "neuron", T, input_kind="real", neurons=10, spikes_out=5),
        make_layer("b", "S1", "neuron", T, input_kind="real", neurons=30, spikes_out=3),
        make_layer("fc", "S1", "linear", T, input_neurons=("a", "b"), dense_macs=100, ac=20),
    ]
    clip = evaluate_record(_rec(make_record(layers, T=T)), FP32)
    assert clip.layers[2].paper_rate == pytest.approx(8 / 40)


def test_per_clip_and_per_class_spread_over_records():
    recs = [_rec(hand_record(label=lab, input_path=f"/c/{i}.mp4"), f"r{i}.json")
            for i, lab in enumerate(["walk", "walk", "run"])]
    # make clip 1 spike more in the first attention input: +10 ACs on qkv
    recs[1].data["layers"][3]["counts"]["ac"] += 10
    recs[1].data["layers"][3]["per_step"] = {}
    recs[1].data.pop("totals")
    report = aggregate(recs, get_cost_model("fp32"))
    exact = [HAND["exact_pj"] / 1e9, (HAND["exact_pj"] + 9.0) / 1e9, HAND["exact_pj"] / 1e9]
    m = report["methods"]["exact"]
    assert report["clips"] == 3 and report["videos"] == 3
    assert close(m["energy_mj"] * 1e9, sum(exact) / 3 * 1e9)
    assert close(m["energy_mj_max"], exact[1]) and close(m["energy_mj_min"], exact[0])
    mean = sum(exact) / 3
    assert close(m["energy_mj_std"] * 1e9, math.sqrt(sum((e - mean) ** 2 for e in exact) / 3) * 1e9)
    classes = {c["class"]: c for c in report["per_class"]}
    assert classes["walk"]["clips"] == 2 and classes["run"]["clips"] == 1
    assert close(classes["walk"]["energy_mj"]["exact"]["mean"] * 1e9, (exact[0] + exact[1]) / 2 * 1e9)
    qkv = next(layer for layer in report["layers"] if layer["name"] == "blocks1.0.attn.qkv")
    assert qkv["ac"] == pytest.approx(590 + 10 / 3)
    assert [c["class"] for c in report["per_clip"]] == ["walk", "walk", "run"]


def test_class_falls_back_to_the_predicted_top1():
    report = aggregate([_rec(hand_record(top1="jump"))], FP32)
    assert report["per_class"][0]["class"] == "jump"
