"""Partition: which nodes form sequential core chains, and the stated reason for every host node."""

from __future__ import annotations

import pytest
import torch
from fixtures_models import CASES, make_model, single_thread  # noqa: F401
from svformer_deploy.export import ir
from svformer_deploy.export.pipeline import run_pipeline
from svformer_deploy.export.writers.partition import dense_groups, partition, to_part_layout
from writers_fixtures import chain_graph


def folded(variant: str = "base", **overrides):
    return run_pipeline(make_model(variant, **overrides)).graph


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_every_node_is_either_in_one_part_or_on_the_host_with_a_reason(case: str) -> None:
    _, variant, overrides = next(c for c in CASES if c[0] == case)
    g = folded(variant, **overrides)
    p = partition(g)
    core = [n for part in p.parts for n in part.nodes]
    shared = {la.weighted for part in p.parts for la in part.layers if la.rows is not None}  # q/k/v row slices
    assert len([n for n in core if n not in shared]) == len(set(core) - shared)
    assert set(core) | set(p.host) == set(g.nodes) and not set(core) & set(p.host)
    assert all(isinstance(r, str) and len(r) > 15 for r in p.host.values())


def test_time_dependent_bn_leaves_no_chain_and_says_why() -> None:
    g = folded("base")  # TDBN with per-step statistics: per-step affines after every conv/linear
    p = partition(g)
    assert p.parts == []
    affines = [n for n, _ in ir.iter_ops(g, "affine")]
    assert affines and all("per-step affine" in p.host[n] for n in affines)
    assert "per-step affine" in p.host["blocks1.0.mlp.fc1"]
    assert "residual add" in p.host["blocks1.0.add1"]
    assert "attention matmul" in p.host["blocks3.0.attn.kv"]
    assert "concat" in p.host["concat"]
    assert "Conv3d head" in p.host["dwconv_bf_head"]
    assert "real-valued input" in p.host["input"]


def test_plain_bn_blocks_give_mlp_and_projection_chains() -> None:
    g = folded("base", norm="bn")
    parts = {p.output: p for p in partition(g).parts}
    lfe = parts["blocks1.0.mlp.act2"]
    assert (lfe.source, lfe.layout, lfe.nodes) == ("blocks1.0.mlp.act1", "image", ["blocks1.0.mlp.fc1",
                                                                                    "blocks1.0.mlp.act2"])
    q = parts["blocks3.0.attn.q_lif"]
    assert q.layout == "tokens" and q.layers[0].split == "blocks3.0.attn.q" and q.layers[0].rows == (0, 24)
    assert parts["blocks3.0.attn.v_lif"].layers[0].rows == (48, 72)
    assert parts["blocks3.0.mlp.act2"].in_shape == (24, 4, 1)  # tokens [N=4, C=24] as a [C, N, 1] image
    assert "residual add" in partition(g).host["blocks1.0.mlp.fc2"]


def test_consecutive_layers_merge_into_one_part() -> None:
    g = chain_graph()
    (p,) = partition(g).parts
    assert p.source == "lif0" and p.nodes == ["conv1", "lif1", "conv2", "lif2"]
    assert p.in_shape == (4, 7, 7) and p.layers[0].out_shape == (6, 4, 7) and p.out_shape == (5, 4, 6)
    host = partition(g).host
    assert "real-valued" in host["conv0"] and "clip-rate" in host["fc"]


def test_part_layouts_put_tokens_and_heads_into_image_channels() -> None:
    g = folded("base", norm="bn")
    p = next(p for p in partition(g).parts if p.output == "blocks3.0.attn.k_lif")
    x = torch.arange(2 * 1 * 4 * 24, dtype=torch.float32).reshape(2, 1, 4, 24)  # tokens [N=4, C=24]
    img = to_part_layout(p, x, (4, 24))
    assert img.shape == (2, 1, 24, 4, 1) and img[1, 0, 5, 3, 0] == x[1, 0, 3, 5]
    h = torch.arange(2 * 1 * 3 * 4 * 8, dtype=torch.float32).reshape(2, 1, 3, 4, 8)  # heads [h, N, d]
    himg = to_part_layout(p, h, (3, 4, 8))
    assert himg.shape == (2, 1, 24, 4, 1) and himg[0, 0, 2 * 8 + 5, 1, 0] == h[0, 0, 2, 1, 5]


def test_grouped_weights_expand_to_dense_with_zeros_off_the_groups() -> None:
    w = torch.randn(6, 2, 3, 3).numpy()
    d = dense_groups(w, 2)
    assert d.shape == (6, 4, 3, 3)
    x = torch.randn(1, 4, 5, 5)
    a = torch.nn.functional.conv2d(x, torch.from_numpy(w), groups=2)
    b = torch.nn.functional.conv2d(x, torch.from_numpy(d))
    assert torch.allclose(a, b, atol=1e-6)
