"""Tracer: an :class:`~svformer.model.SVFormer` (any variant or ablation) -> IR graph.

The model's module structure is regular, so the tracer walks it (stages, blocks, local pathway,
head) instead of fx-tracing SpikingJelly internals. Every node carries the ``stage`` being traced
(``PE<i>``, ``S<i>``, ``LP``, ``CH``), so nothing downstream parses names. Node names are the
PyTorch module paths (``blocks3.1.attn.q_lif``); ops without a module get derived names
(``blocks1.0.add1`` for the first membrane shortcut of a block, ``blocks3.0.to_tokens``,
``blocks3.0.attn.q`` for the split of the q part, ``blocks3.0.attn.kv`` / ``.qkv_out`` for the two
attention products, ``concat``, ``flatten``). The graph describes inference: BN uses running
statistics and drop-path is the identity, whatever mode the module is in. Parameters are copied
exactly (float32 stays float32).
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import torch
from spikingjelly.activation_based import neuron as sj_neuron
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.layers import SeqBatchNorm1d, SeqBatchNorm2d, TemporalBatchNorm1d, TemporalBatchNorm2d
from svformer_deploy.svformer.model import CBlock, SABlock, SVFormer
from torch import nn

from . import ir


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy().copy()


class _Tracer:
    def __init__(self, model: SVFormer):
        self.model = model
        self.cfg = model.cfg
        self.T = int(self.cfg.time_steps)
        self.g = ir.new_graph(self.T, self.cfg.to_dict(), source="svformer")
        self.stage = "PE1"  # the part of the network being traced: PE<i>, S<i>, LP or CH

    def add(self, name: str, op: ir.Node, inputs: list[str]) -> str:
        return ir.add_op(self.g, name, op, inputs, stage=self.stage)

    # -- leaf modules -------------------------------------------------------------------
    def neuron(self, name: str, m: nn.Module, x: str) -> str:
        if isinstance(m, sj_neuron.ParametricLIFNode):
            op = ir.Neuron(model="plif", a=float(m.w.detach().cpu().double()))
        elif type(m) is sj_neuron.LIFNode:
            op = ir.Neuron(model="lif", tau=float(m.tau))
        else:
            raise SVFormerError(f"{name}: unsupported neuron type {type(m).__name__}")
        if m.v_reset is None:
            raise SVFormerError(f"{name}: soft reset (v_reset=None) is not supported")
        op = ir.Neuron(model=op.model, a=op.a, tau=op.tau, v_threshold=float(m.v_threshold),
                       v_reset=float(m.v_reset), decay_input=bool(m.decay_input))
        return self.add(name, op, [x])

    def conv(self, name: str, m: nn.Conv2d, x: str) -> str:
        if m.dilation != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise SVFormerError(f"{name}: only zero-padded, undilated convolutions are supported")
        op = ir.Conv2d(weight=_np(m.weight), bias=_np(m.bias), stride=m.stride, padding=m.padding, groups=m.groups)
        return self.add(name, op, [x])

    def linear(self, name: str, m: nn.Linear, x: str) -> str:
        return self.add(name, ir.Linear(weight=_np(m.weight), bias=_np(m.bias)), [x])

    def bn(self, name: str, m: nn.Module, x: str, axis: int) -> str:
        if isinstance(m, TemporalBatchNorm2d | TemporalBatchNorm1d):
            if m.time_steps != self.T:
                raise SVFormerError(f"{name}: built for T={m.time_steps}, the model runs T={self.T}")
            shape = (m.time_steps, m.channels)
        elif isinstance(m, SeqBatchNorm2d | SeqBatchNorm1d | nn.BatchNorm3d):
            shape = (m.num_features,)
        else:
            raise SVFormerError(f"{name}: unsupported normalisation {type(m).__name__}")
        if not m.track_running_stats or m.running_mean is None:
            raise SVFormerError(f"{name}: BN without running statistics cannot be exported")
        n = m.num_features
        weight = _np(m.weight) if m.affine else np.ones(n, dtype=_np(m.running_mean).dtype)
        bias = _np(m.bias) if m.affine else np.zeros(n, dtype=weight.dtype)
        op = ir.BatchNorm(mean=_np(m.running_mean).reshape(shape), var=_np(m.running_var).reshape(shape),
                          weight=weight.reshape(shape), bias=bias.reshape(shape), eps=float(m.eps), axis=axis)
        return self.add(name, op, [x])

    # -- blocks -------------------------------------------------------------------------
    def lfe(self, p: str, blk: CBlock, x: str) -> str:
        y = self.neuron(f"{p}.act1", blk.act1, x)
        y = self.conv(f"{p}.conv1", blk.conv1, y)
        y = self.conv(f"{p}.attn", blk.attn, y)
        y = self.conv(f"{p}.conv2", blk.conv2, y)
        y = self.bn(f"{p}.norm2", blk.norm2, y, axis=0)
        x = self.add(f"{p}.add1", ir.Add(), [x, y])
        m = blk.mlp
        y = self.neuron(f"{p}.mlp.act1", m.act1, x)
        y = self.conv(f"{p}.mlp.fc1", m.fc1, y)
        y = self.bn(f"{p}.mlp.norm1", m.norm1, y, axis=0)
        y = self.neuron(f"{p}.mlp.act2", m.act2, y)
        y = self.conv(f"{p}.mlp.fc2", m.fc2, y)
        y = self.bn(f"{p}.mlp.norm2", m.norm2, y, axis=0)
        return self.add(f"{p}.add2", ir.Add(), [x, y])

    def gsa(self, p: str, blk: SABlock, x: str) -> str:
        _, h, w = ir.spec(self.g, x).shape
        x = self.add(f"{p}.to_tokens", ir.ToTokens(), [x])
        a = blk.attn
        q = f"{p}.attn"
        y = self.neuron(f"{q}.in_lif", a.in_lif, x)
        y = self.linear(f"{q}.qkv", a.qkv, y)
        y = self.bn(f"{q}.norm1", a.norm1, y, axis=-1)
        parts = {}
        for i, part in enumerate("qkv"):
            s = self.add(f"{q}.{part}", ir.SplitHeads(part=i, parts=3, heads=a.num_heads, head_dim=a.head_dim), [y])
            parts[part] = self.neuron(f"{q}.{part}_lif", getattr(a, f"{part}_lif"), s)
        kv = self.add(f"{q}.kv", ir.SpikeMatmulKV(), [parts["k"], parts["v"]])
        y = self.add(f"{q}.qkv_out", ir.SpikeMatmulQKV(scale=float(a.scale)), [parts["q"], kv])
        y = self.add(f"{q}.merge_heads", ir.MergeHeads(), [y])
        y = self.neuron(f"{q}.proj_lif", a.proj_lif, y)
        y = self.linear(f"{q}.proj", a.proj, y)
        y = self.bn(f"{q}.norm2", a.norm2, y, axis=-1)
        x = self.add(f"{p}.add1", ir.Add(), [x, y])
        m = blk.mlp
        y = self.neuron(f"{p}.mlp.act1", m.act1, x)
        y = self.linear(f"{p}.mlp.fc1", m.fc1, y)
        y = self.bn(f"{p}.mlp.norm1", m.norm1, y, axis=-1)
        y = self.neuron(f"{p}.mlp.act2", m.act2, y)
        y = self.linear(f"{p}.mlp.fc2", m.fc2, y)
        y = self.bn(f"{p}.mlp.norm2", m.norm2, y, axis=-1)
        x = self.add(f"{p}.add2", ir.Add(), [x, y])
        return self.add(f"{p}.to_image", ir.ToImage(height=h, width=w), [x])

    # -- the network --------------------------------------------------------------------
    def run(self) -> nx.DiGraph:
        cfg, model = self.cfg, self.model
        enc = "events" if cfg.in_channels == 2 else "pixels"
        x = self.add("input", ir.Input(shape=(cfg.in_channels, cfg.img_size, cfg.img_size), encoding=enc), [])
        n = cfg.num_stages
        x_lp = None
        for i, pe, blocks in model.stages():
            p = f"patch_embed{i}"
            self.stage = f"PE{i}"
            if hasattr(pe, "in_lif"):
                x = self.neuron(f"{p}.in_lif", pe.in_lif, x)
            x = self.conv(f"{p}.proj", pe.proj, x)
            x = self.bn(f"{p}.norm", pe.norm, x, axis=0)
            if i == n - 1 and cfg.local_pathway:
                self.stage = "LP"
                y = self.neuron("lplif", model.lplif, x)
                y = self.conv("lpDWConv", model.lpDWConv, y)
                y = self.conv("lpPWConv", model.lpPWConv, y)
                x_lp = self.bn("lpBN", model.lpBN, y, axis=0)
            self.stage = f"S{i}"
            for j, blk in enumerate(blocks):
                b = f"blocks{i}.{j}"
                if isinstance(blk, CBlock):
                    x = self.lfe(b, blk, x)
                elif isinstance(blk, SABlock):
                    x = self.gsa(b, blk, x)
                else:
                    raise SVFormerError(f"{b}: unsupported block type {type(blk).__name__}")
        self.stage = "CH"
        if x_lp is not None:
            x = self.add("concat", ir.Concat(axis=0), [x_lp, x])
        x = self.neuron("lif_bf_head", model.lif_bf_head, x)
        c3 = model.dwconv_bf_head
        if c3.padding != (0, 0, 0) or c3.stride != (1, 1, 1) or c3.dilation != (1, 1, 1) or c3.kernel_size[0] != self.T:
            raise SVFormerError("dwconv_bf_head: the head conv must cover all T steps and the whole map")
        x = self.add("dwconv_bf_head", ir.Conv3dHead(weight=_np(c3.weight), bias=_np(c3.bias), groups=c3.groups), [x])
        x = self.bn("dwconv_bn", model.dwconv_bn, x, axis=0)
        x = self.add("flatten", ir.Flatten(), [x])
        x = self.linear("head", model.head, x)
        self.add("output", ir.Output(), [x])
        return ir.validate(self.g)


def trace(model: SVFormer) -> nx.DiGraph:
    """The IR graph of ``model`` (inference semantics: BN running statistics, no drop-path).

    Raises ``SVFormerError`` for a module the IR cannot express (soft reset, dilated conv, ...).
    """
    if not isinstance(model, SVFormer):
        raise SVFormerError(f"trace expects an SVFormer model, got {type(model).__name__}")
    with torch.no_grad():
        return _Tracer(model).run()
