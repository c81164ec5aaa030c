"""NIR writer: lossless round trip of the whole graph through extension nodes, standard-only parts that
plain ``nir.read`` takes and SpikingJelly runs with identical spikes, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import nir
import numpy as np
import pytest
import torch
from fixtures_models import CASES, make_input, make_model, single_thread  # noqa: F401
from nir_peers import PEERS, peer_part_check
from svformer_deploy.export import ir
from svformer_deploy.export.pipeline import run_pipeline
from svformer_deploy.export.reference import ReferenceModel
from svformer_deploy.export.writers import nir_writer as nw
from svformer_deploy.export.writers.partition import partition, record_part_io
from svformer_deploy.svformer.errors import SVFormerError
from writers_fixtures import chain_graph, event_clips


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_folded_graph_of_every_variant_reads_back_identical(tmp_path: Path, case: str) -> None:
    _, variant, overrides = next(c for c in CASES if c[0] == case)
    g = run_pipeline(make_model(variant, **overrides)).graph
    back = nw.read_nir_ir(nw.write_nir(g, tmp_path / "model.nir"))
    assert ir.diff_graphs(g, back) == []


def test_traced_and_fused_graphs_read_back_identical(tmp_path: Path) -> None:
    res = run_pipeline(make_model("base"), fuse=True)
    for key in ("traced", "fused"):  # batchnorm and position-dependent conv bias extensions
        g = res.graphs[key]
        assert ir.diff_graphs(g, nw.read_nir_ir(nw.write_nir(g, tmp_path / f"{key}.nir"))) == []
    types = {type(n).__name__ for n in nw.read_nir(tmp_path / "fused.nir").nodes.values()}
    assert "SVFPositionalConv2d" in types
    assert "SVFBatchNorm" in {type(n).__name__ for n in nw.read_nir(tmp_path / "traced.nir").nodes.values()}


def test_whole_graph_uses_standard_nodes_where_nir_has_them_and_extensions_elsewhere(tmp_path: Path) -> None:
    g = run_pipeline(make_model("base")).graph
    path = nw.write_nir(g, tmp_path / "model.nir")
    graph = nw.read_nir(path)
    names = nw.nir_names(g)
    kinds = {n: type(graph.nodes[names[n]]).__name__ for n in g.nodes}
    assert kinds["patch_embed1.proj"] == "Conv2d" and kinds["blocks1.0.attn"] == "Conv2d"  # grouped kept
    assert kinds["blocks1.0.act1"] == "LIF" and kinds["blocks1.0.add1"] == "Scale"
    assert kinds["head"] == "Affine" and kinds["flatten"] == "Flatten"
    assert kinds["blocks3.0.attn.kv"] == "SVFSpikeMatmulKV" and kinds["blocks3.0.attn.qkv_out"] == "SVFSpikeMatmulQKV"
    assert kinds["concat"] == "SVFConcat" and kinds["dwconv_bf_head"] == "SVFConv3dHead"
    assert kinds["patch_embed1.norm"] == "SVFChannelAffine" and kinds["blocks3.0.attn.qkv"] == "SVFTokenLinear"
    assert kinds["blocks3.0.attn.q"] == "SVFSplitHeads" and kinds["blocks3.0.to_tokens"] == "SVFToTokens"
    add = names["blocks1.0.add1"]
    assert sorted(s for s, d in graph.edges if d == add) == sorted(names[i] for i in ir.inputs_of(g, "blocks1.0.add1"))
    assert float(graph.metadata["dt"]) == nw.DT
    with pytest.raises(AssertionError):  # plain nir.read does not know the extensions ...
        nir.read(path)
    private = vars(nir.ir)["__all_ir"]  # ... and read_nir did not register them in nir's private list
    assert not any(t.startswith("SVF") for t in private)


def test_lif_parameters_make_peers_fire_like_spikingjelly() -> None:
    op = ir.Neuron(model="plif", a=0.7, v_threshold=1.0)
    lif = nw.lif_node(op, (2, 3))
    k = np.float32(op.k)
    assert lif.tau.shape == (2, 3) and np.all(lif.r == 1) and np.all(lif.v_leak == 0) and np.all(lif.v_reset == 0)
    assert np.all(lif.v_threshold == np.float32(0.99999994))
    assert np.float32(np.float32(nw.DT) * (np.float32(1) / lif.tau[0, 0])) == k
    h = np.float32(1.0)  # a membrane exactly on the threshold: SpikingJelly fires (>=), peers (>) too
    assert h > lif.v_threshold[0, 0]
    lif2 = nw.lif_node(ir.Neuron(model="lif", tau=4.0, v_threshold=0.5, decay_input=False), (1,))
    assert np.isclose(lif2.r[0], 4.0) and np.isclose(lif2.tau[0], 4.0 * nw.DT)


@pytest.mark.parametrize("peer", PEERS)
def test_standard_parts_are_plain_nir_and_run_identically_in_every_peer(tmp_path: Path, peer: str) -> None:
    pytest.importorskip("nirtorch", reason="SpikingJelly's NIR import needs nirtorch")
    if peer != "spikingjelly":
        pytest.importorskip(peer, reason=f"{peer} is a dev extra (pip install -e '.[dev]')")
    model = make_model("base", norm="bn")
    g = run_pipeline(model).graph
    x = make_input(model, batch=2, seed=4)
    with torch.no_grad():
        _, rec = ReferenceModel(g, torch.float32).run(x, record=True)
    parts = partition(g).parts
    assert len(parts) >= 10
    spikes = 0
    for p in parts:
        path = nw.write_nir_part(g, p, tmp_path / f"part_{p.index}.nir")
        graph = nir.read(path)  # plain reader, type-checked
        assert {type(n).__name__ for n in graph.nodes.values()} <= {"Input", "Conv2d", "LIF", "Output"}
        xi, outs = record_part_io(g, p, rec)
        r = peer_part_check(path, xi, outs[-1], peer)
        assert r["flips"] == 0, (p.index, r)
        spikes += r["spikes_ref"]
    assert spikes > 100


@pytest.mark.parametrize("peer", PEERS)
def test_grouped_multi_layer_part_runs_in_every_peer_written_dense(tmp_path: Path, peer: str) -> None:
    pytest.importorskip("nirtorch", reason="SpikingJelly's NIR import needs nirtorch")
    if peer != "spikingjelly":
        pytest.importorskip(peer, reason=f"{peer} is a dev extra (pip install -e '.[dev]')")
    g = chain_graph(time_steps=6, kernel2=(3, 3))
    (p,) = partition(g).parts
    path = nw.write_nir_part(g, p, tmp_path / "part.nir")
    graph = nir.read(path)
    conv = graph.nodes["conv0"]
    assert int(conv.groups) == 1 and conv.weight.shape == (6, 4, 3, 3)
    assert np.all(conv.weight[:3, 2:] == 0) and np.all(conv.weight[3:, :2] == 0)
    with torch.no_grad():
        _, rec = ReferenceModel(g, torch.float32).run(event_clips(g, 3), record=True)
    xi, outs = record_part_io(g, p, rec)
    r = peer_part_check(path, xi, outs[-1], peer)
    assert r["flips"] == 0 and r["spikes_ref"] > 10


def test_non_square_kernels_have_no_plain_nir_part_because_nir_type_check_fails() -> None:
    g = chain_graph(kernel2=(3, 2))
    (p,) = partition(g).parts
    assert "non-square kernel 3x2" in nw.nir_part_issue(g, p)
    with pytest.raises(SVFormerError, match="no standard NIR form"):
        nw.part_to_nir(g, p)


def test_unreadable_or_foreign_nir_files_give_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nir"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(nw.NIRFileError, match="bad.nir: not a readable NIR"):
        nw.read_nir(bad)
    with pytest.raises(nw.NIRFileError, match="no such NIR file"):
        nw.read_nir(tmp_path / "missing.nir")
    g = chain_graph(kernel2=(3, 3))
    (p,) = partition(g).parts
    plain = nw.write_nir_part(g, p, tmp_path / "plain.nir")
    assert len(nw.read_nir(plain).nodes) == 6  # a plain NIR file reads too ...
    with pytest.raises(nw.NIRFileError, match="not an svformer-deploy NIR graph"):
        nw.read_nir_ir(plain)  # ... but is not a whole IR graph
    import h5py

    path = nw.write_nir(g, tmp_path / "model.nir")
    with h5py.File(path, "r+") as f:
        del f["node/nodes/lif1/type"]
        f["node/nodes/lif1"].create_dataset("type", data="MysteryNeuron", dtype=h5py.string_dtype())
    with pytest.raises(nw.NIRFileError, match="unknown NIR type 'MysteryNeuron'"):
        nw.read_nir(path)
