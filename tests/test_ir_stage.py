"""IR nodes carry their stage: set by the tracer, kept by passes and files, derived once for older files."""

from __future__ import annotations

import json

import pytest
from fixtures_models import make_model
from svformer_deploy.export import ir
from svformer_deploy.export.pipeline import run_pipeline
from svformer_deploy.svformer.complexity import stage_order


@pytest.fixture(scope="module")
def graphs():
    model = make_model("base")
    return model.cfg, run_pipeline(model, fuse=True).graphs


def test_traced_nodes_carry_the_stage_of_the_module_they_come_from(graphs):
    cfg, gs = graphs
    g = gs["traced"]
    stages = {n: ir.stage_of(g, n) for n in g.nodes}
    assert stages["input"] == "PE1" and stages["patch_embed2.in_lif"] == "PE2"
    assert stages["blocks3.0.attn.kv"] == "S3" and stages["blocks1.0.add2"] == "S1"
    assert stages["lplif"] == stages["lpBN"] == "LP"
    assert stages["concat"] == stages["head"] == stages["output"] == "CH"
    assert sorted(set(stages.values()), key=stage_order(cfg).index) == stage_order(cfg)


def test_passes_keep_stages_and_files_round_trip_them(graphs, tmp_path):
    _, gs = graphs
    fused = gs["fused"]
    assert ir.stage_of(fused, "blocks1.0.conv1+attn+conv2") == "S1"
    path, _ = ir.save(fused, tmp_path / "g.json")
    assert ir.diff_graphs(fused, ir.load(path)) == []


def test_an_ir_file_without_stages_gets_them_derived_once_on_load(graphs, tmp_path):
    _, gs = graphs
    g = gs["folded"]
    path, _ = ir.save(g, tmp_path / "old.json")
    doc = json.loads(path.read_text())
    for node in doc["nodes"]:
        del node["stage"]
    path.write_text(json.dumps(doc))
    old = ir.load(path)
    assert {n: ir.stage_of(old, n) for n in old.nodes} == {n: ir.stage_of(g, n) for n in g.nodes}


def test_a_stage_difference_is_a_graph_difference(graphs):
    _, gs = graphs
    g = gs["folded"]
    h = ir.copy_graph(g)
    h.nodes["head"]["stage"] = "S4"
    assert ir.diff_graphs(g, h) == ["head: stage differs"]


def test_add_op_without_a_stage_takes_the_stage_of_its_input():
    g = ir.new_graph(2)
    ir.add_op(g, "input", ir.Input(shape=(1, 2, 2)))
    ir.add_op(g, "lif", ir.Neuron(a=0.0), ["input"], stage="S2")
    ir.add_op(g, "add", ir.Add(), ["lif", "input"])
    assert [ir.stage_of(g, n) for n in ("input", "lif", "add")] == ["PE1", "S2", "S2"]
