"""SVFormer, faithful to the authors' released model (``docs/model.md``).

Module and parameter names follow the authors' code, so their state_dicts load unchanged.
Input: a clip ``[B, C, T, H, W]`` (the authors' layout, :meth:`SVFormer.forward`) or a frame
sequence ``[T, B, C, H, W]`` (:meth:`SVFormer.forward_sequence`); one frame enters per time step.
Output: logits ``[B, num_classes]``. Neuron states are reset at the start of every call, so each
call is an independent clip (``spikingjelly.activation_based.functional.reset_net`` also works).
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import functional, layer
from torch import Tensor, nn

from .config import SVFormerConfig
from .errors import SVFormerError
from .layers import DropPath, make_neuron, make_norm1d, make_norm2d


def _drop_path(p: float) -> nn.Module:
    return DropPath(p) if p > 0 else nn.Identity()


class PatchEmbed(nn.Module):
    """[SN] -> Conv2d(k = patch + 2, stride = patch, padding 1) -> BN. The first one has no SN."""

    def __init__(self, cfg: SVFormerConfig, c_in: int, c_out: int, patch: int, spiking_input: bool):
        super().__init__()
        if spiking_input:
            self.in_lif = make_neuron(cfg)
        self.proj = layer.Conv2d(c_in, c_out, patch + 2, patch, 1, step_mode="m")
        self.norm = make_norm2d(cfg, c_out)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "in_lif"):
            x = self.in_lif(x)
        return self.norm(self.proj(x))


class CMlp(nn.Module):
    """Convolutional MLP: SN -> 1x1 (C -> rC) -> BN -> SN -> 1x1 (rC -> C) -> BN."""

    def __init__(self, cfg: SVFormerConfig, dim: int, hidden: int):
        super().__init__()
        self.act1 = make_neuron(cfg)
        self.fc1 = layer.Conv2d(dim, hidden, 1, step_mode="m")
        self.norm1 = make_norm2d(cfg, hidden)
        self.act2 = make_neuron(cfg)
        self.fc2 = layer.Conv2d(hidden, dim, 1, step_mode="m")
        self.norm2 = make_norm2d(cfg, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(self.fc1(self.act1(x)))
        return self.norm2(self.fc2(self.act2(x)))


class CBlock(nn.Module):
    """Local feature extractor (LFE) on ``[T, B, C, H, W]``.

    x = x + BN(PW2(DW5x5(PW1(SN(x)))));  x = x + CMlp(x). Both additions are membrane shortcuts
    (real-valued). There is no neuron between PW1, DW and PW2.
    """

    def __init__(self, cfg: SVFormerConfig, dim: int, drop_path: float = 0.0):
        super().__init__()
        self.act1 = make_neuron(cfg)
        self.conv1 = layer.Conv2d(dim, dim, 1, step_mode="m")
        self.attn = layer.Conv2d(dim, dim, 5, 1, 2, groups=dim, step_mode="m")
        self.conv2 = layer.Conv2d(dim, dim, 1, step_mode="m")
        self.drop_path = _drop_path(drop_path)
        self.norm2 = make_norm2d(cfg, dim)
        self.mlp = CMlp(cfg, dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.attn(self.conv1(self.act1(x))))
        x = x + self.norm2(self.drop_path(y))
        return x + self.drop_path(self.mlp(x))


class Mlp(nn.Module):
    """Token MLP on ``[T, B, N, C]``: SN -> Linear (C -> rC) -> BN -> SN -> Linear (rC -> C) -> BN."""

    def __init__(self, cfg: SVFormerConfig, dim: int, hidden: int):
        super().__init__()
        self.act1 = make_neuron(cfg)
        self.fc1 = layer.Linear(dim, hidden, step_mode="m")
        self.norm1 = make_norm1d(cfg, hidden)
        self.act2 = make_neuron(cfg)
        self.fc2 = layer.Linear(hidden, dim, step_mode="m")
        self.norm2 = make_norm1d(cfg, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(self.fc1(self.act1(x)))
        return self.norm2(self.fc2(self.act2(x)))


class Attention(nn.Module):
    """Spiking self-attention (SSA) on tokens ``[T, B, N, C]``, h = C / d heads.

    s = SN(x); [q|k|v] = BN(Linear(C -> 3C)(s)); Q, K, V = SN_q(q), SN_k(k), SN_v(v) (binary,
    ``[T, B, h, N, d]``); A = (Q · (Kᵀ V)) · s with s = d^-1/2 and no softmax (Kᵀ V first);
    out = BN(Linear(C -> C)(SN_proj(merge_heads(A)))).
    """

    def __init__(self, cfg: SVFormerConfig, dim: int):
        super().__init__()
        self.num_heads = dim // cfg.head_dim
        self.head_dim = cfg.head_dim
        self.scale = cfg.attn_scale
        self.in_lif = make_neuron(cfg)
        self.qkv = layer.Linear(dim, dim * 3, step_mode="m")
        self.norm1 = make_norm1d(cfg, dim * 3)
        self.q_lif = make_neuron(cfg)
        self.k_lif = make_neuron(cfg)
        self.v_lif = make_neuron(cfg)
        self.proj_lif = make_neuron(cfg)
        self.proj = layer.Linear(dim, dim, step_mode="m")
        self.norm2 = make_norm1d(cfg, dim)

    def forward(self, x: Tensor) -> Tensor:
        T, B, N, C = x.shape
        h, d = self.num_heads, self.head_dim
        qkv = self.norm1(self.qkv(self.in_lif(x)))  # [T, B, N, 3C], channel order [q | k | v]
        qkv = qkv.reshape(T, B, N, 3, h, d).permute(3, 0, 1, 4, 2, 5)  # [3, T, B, h, N, d]
        q = self.q_lif(qkv[0].contiguous())
        k = self.k_lif(qkv[1].contiguous())
        v = self.v_lif(qkv[2].contiguous())
        kv = k.transpose(-2, -1) @ v  # [T, B, h, d, d]
        a = (q @ kv) * self.scale  # [T, B, h, N, d]
        a = a.transpose(2, 3).reshape(T, B, N, C)
        return self.norm2(self.proj(self.proj_lif(a)))


class SABlock(nn.Module):
    """Global self-attention (GSA) block on ``[T, B, C, H, W]``: x = x + SSA(x); x = x + Mlp(x) over N = H·W tokens."""

    def __init__(self, cfg: SVFormerConfig, dim: int, drop_path: float = 0.0):
        super().__init__()
        self.attn = Attention(cfg, dim)
        self.drop_path = _drop_path(drop_path)
        self.mlp = Mlp(cfg, dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        T, B, C, H, W = x.shape
        x = x.flatten(3).transpose(2, 3)  # [T, B, N, C]
        x = x + self.drop_path(self.attn(x))
        x = x + self.drop_path(self.mlp(x))
        return x.transpose(2, 3).reshape(T, B, C, H, W)


BLOCKS = {"lfe": CBlock, "gsa": SABlock}


class SVFormer(nn.Module):
    """The spiking video transformer: patch embeddings, LFE/GSA stages, local pathway, head.

    Attributes follow the authors' names: ``patch_embed{i}``, ``blocks{i}`` (i = 1..stages),
    ``lplif``/``lpDWConv``/``lpPWConv``/``lpBN`` (local pathway), ``lif_bf_head``,
    ``dwconv_bf_head`` (grouped Conv3d over (T, H, W)), ``dwconv_bn`` (BatchNorm3d), ``head``.
    """

    def __init__(self, cfg: SVFormerConfig):
        super().__init__()
        self.cfg = cfg
        n = cfg.num_stages
        rates = torch.linspace(0, cfg.drop_path, max(sum(cfg.depths), 1), device="cpu").tolist()
        block_index = 0
        c_prev = cfg.in_channels
        for i in range(n):
            patch = cfg.first_patch if i == 0 else cfg.patch
            pe = PatchEmbed(cfg, c_prev, cfg.dims[i], patch, spiking_input=i > 0)
            setattr(self, f"patch_embed{i + 1}", pe)
            block_cls = BLOCKS[cfg.stage_types[i]]
            blocks = []
            for _ in range(cfg.depths[i]):
                blocks.append(block_cls(cfg, cfg.dims[i], rates[block_index]))
                block_index += 1
            setattr(self, f"blocks{i + 1}", nn.ModuleList(blocks))
            c_prev = cfg.dims[i]
        if cfg.local_pathway:
            c_lp = cfg.dims[-2]
            self.lplif = make_neuron(cfg)
            self.lpDWConv = layer.Conv2d(c_lp, c_lp, 3, 2, 1, groups=c_lp, step_mode="m")
            self.lpPWConv = layer.Conv2d(c_lp, cfg.dims[-1], 1, step_mode="m")
            self.lpBN = make_norm2d(cfg, cfg.dims[-1])
        c_head = cfg.head_channels
        s = cfg.spatial_sizes()[-1]
        self.lif_bf_head = make_neuron(cfg)
        self.dwconv_bf_head = nn.Conv3d(c_head, c_head, (cfg.time_steps, s, s), groups=cfg.head_groups)
        self.dwconv_bn = nn.BatchNorm3d(c_head)
        self.head = layer.Linear(c_head, cfg.num_classes)
        self.apply(_init_weights)

    # -- forward ----------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, classes]`` for clips ``[B, C, T, H, W]``."""
        if x.dim() != 5:
            raise SVFormerError(f"expected a clip [B, C, T, H, W], got shape {list(x.shape)}")
        return self.forward_sequence(x.permute(2, 0, 1, 3, 4))

    def forward_sequence(self, x: Tensor) -> Tensor:
        """Logits ``[B, classes]`` for frame sequences ``[T, B, C, H, W]``."""
        self.check_input(x)
        functional.reset_net(self)
        feats = self.forward_features(x)
        return self.forward_head(feats)

    def check_input(self, x: Tensor) -> None:
        cfg = self.cfg
        want = [cfg.time_steps, "B", cfg.in_channels, cfg.img_size, cfg.img_size]
        got = list(x.shape)
        if x.dim() != 5 or got[0] != want[0] or got[2:] != want[2:]:
            raise SVFormerError(
                f"input shape {got} does not fit the model: expected [T, B, C, H, W] = "
                f"[{cfg.time_steps}, B, {cfg.in_channels}, {cfg.img_size}, {cfg.img_size}]"
            )

    def stages(self):
        """Yield ``(index, patch_embed, blocks)`` for every stage (index from 1)."""
        for i in range(1, self.cfg.num_stages + 1):
            yield i, getattr(self, f"patch_embed{i}"), getattr(self, f"blocks{i}")

    def forward_features(self, x: Tensor) -> Tensor:
        """``[T, B, C_in, H, W]`` -> fused features ``[T, B, head_channels, h, w]`` (concat [LP, main])."""
        n = self.cfg.num_stages
        x_lp = None
        for i, pe, blocks in self.stages():
            x = pe(x)
            if i == n - 1 and self.cfg.local_pathway:
                x_lp = self.lpBN(self.lpPWConv(self.lpDWConv(self.lplif(x))))
            for blk in blocks:
                x = blk(x)
        if x_lp is not None:
            x = torch.cat((x_lp, x), dim=2)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        """``[T, B, C, h, w]`` -> logits: SN -> Conv3d over (T, h, w) -> BatchNorm3d -> Linear."""
        x = self.lif_bf_head(x).permute(1, 2, 0, 3, 4)  # [B, C, T, h, w]
        x = self.dwconv_bn(self.dwconv_bf_head(x)).flatten(1)  # [B, C]
        return self.head(x)


def _init_weights(m: nn.Module) -> None:
    """Linear: truncated normal (std 0.02), bias 0; conv, BN and neurons keep their defaults."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
