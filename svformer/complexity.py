"""Dense operation counts of the ANN counterpart, from first principles (no model is run).

The ANN counterpart is the same network with every spiking neuron replaced by a ReLU, so every
conv/linear layer and attention matmul does its full dense work. Counts are per clip (B = 1):
``macs`` are multiply-accumulates of conv, linear and attention matmuls, biases excluded;
``bias_adds`` are the bias additions, reported separately. BN is assumed folded (no cost).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import SVFormerConfig


@dataclass(frozen=True)
class LayerCost:
    """One weight layer or attention matmul of the network and its dense cost per clip."""

    name: str  # module path in the PyTorch model (or '<block>.attn.kv' / '.qkv_out' for matmuls)
    stage: str  # PE1, S1, ..., LP, CH
    op: str  # conv2d, dwconv2d, linear, matmul_ktv, matmul_q_ktv, conv3d, linear_head
    output_shape: tuple[int, ...]  # per time step for per-step layers, per clip for the head
    params: int  # weights + biases
    macs: int  # dense multiply-accumulates per clip, bias excluded
    bias_adds: int  # bias additions per clip

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output_shape"] = list(self.output_shape)
        return d


def _conv(name, stage, T, c_in, c_out, k, s_out, groups=1) -> LayerCost:
    fan_in = (c_in // groups) * k * k
    out = c_out * s_out * s_out
    op = "dwconv2d" if groups > 1 else "conv2d"
    return LayerCost(name, stage, op, (c_out, s_out, s_out), c_out * fan_in + c_out, T * out * fan_in, T * out)


def _linear(name, stage, T, n_tokens, c_in, c_out) -> LayerCost:
    macs = T * n_tokens * c_in * c_out
    return LayerCost(name, stage, "linear", (n_tokens, c_out), c_in * c_out + c_out, macs, T * n_tokens * c_out)


def layer_costs(cfg: SVFormerConfig) -> list[LayerCost]:
    """Every weight layer and attention matmul, in execution order, with its dense cost per clip."""
    T, r = cfg.time_steps, cfg.mlp_ratio
    sizes = cfg.spatial_sizes()
    layers: list[LayerCost] = []
    c_prev = cfg.in_channels
    n = cfg.num_stages
    for i in range(n):
        s, c = sizes[i], cfg.dims[i]
        p = cfg.first_patch if i == 0 else cfg.patch
        layers.append(_conv(f"patch_embed{i + 1}.proj", f"PE{i + 1}", T, c_prev, c, p + 2, s))
        if i == n - 2 and cfg.local_pathway:  # branches off this patch embedding's output
            c_lp, s_lp = c, cfg.local_pathway_size()
            layers.append(_conv("lpDWConv", "LP", T, c_lp, c_lp, 3, s_lp, groups=c_lp))
            layers.append(_conv("lpPWConv", "LP", T, c_lp, cfg.dims[-1], 1, s_lp))
        hidden = int(c * r)
        stage = f"S{i + 1}"
        for j in range(cfg.depths[i]):
            b = f"blocks{i + 1}.{j}"
            if cfg.stage_types[i] == "lfe":
                layers += [
                    _conv(f"{b}.conv1", stage, T, c, c, 1, s),
                    _conv(f"{b}.attn", stage, T, c, c, 5, s, groups=c),
                    _conv(f"{b}.conv2", stage, T, c, c, 1, s),
                    _conv(f"{b}.mlp.fc1", stage, T, c, hidden, 1, s),
                    _conv(f"{b}.mlp.fc2", stage, T, hidden, c, 1, s),
                ]
            else:
                N, h, d = s * s, c // cfg.head_dim, cfg.head_dim
                layers += [
                    _linear(f"{b}.attn.qkv", stage, T, N, c, 3 * c),
                    # K^T V: per head [d, N] x [N, d];  Q (K^T V): per head [N, d] x [d, d]
                    LayerCost(f"{b}.attn.kv", stage, "matmul_ktv", (h, d, d), 0, T * h * d * N * d, 0),
                    LayerCost(f"{b}.attn.qkv_out", stage, "matmul_q_ktv", (h, N, d), 0, T * h * N * d * d, 0),
                    _linear(f"{b}.attn.proj", stage, T, N, c, c),
                    _linear(f"{b}.mlp.fc1", stage, T, N, c, hidden),
                    _linear(f"{b}.mlp.fc2", stage, T, N, hidden, c),
                ]
        c_prev = c
    # classification head: grouped Conv3d with a kernel covering (T, h, w), then Linear
    ch, g, s = cfg.head_channels, cfg.head_groups, sizes[-1]
    fan_in = (ch // g) * T * s * s
    layers.append(LayerCost("dwconv_bf_head", "CH", "conv3d", (ch, 1, 1, 1), ch * fan_in + ch, ch * fan_in, ch))
    layers.append(
        LayerCost("head", "CH", "linear_head", (cfg.num_classes,), ch * cfg.num_classes + cfg.num_classes,
                  ch * cfg.num_classes, cfg.num_classes)
    )
    return layers


def stage_order(cfg: SVFormerConfig) -> list[str]:
    """Stage labels in execution order: PE1, S1, ..., PE(n-1), LP, S(n-1), PEn, Sn, CH."""
    order: list[str] = []
    for i in range(cfg.num_stages):
        order.append(f"PE{i + 1}")
        if i == cfg.num_stages - 2 and cfg.local_pathway:
            order.append("LP")
        order.append(f"S{i + 1}")
    return order + ["CH"]


def dense_macs(cfg: SVFormerConfig) -> int:
    """Total dense MACs of the ANN counterpart for one clip (bias excluded)."""
    return sum(layer.macs for layer in layer_costs(cfg))


def dense_macs_by_stage(cfg: SVFormerConfig) -> dict[str, int]:
    by_stage = dict.fromkeys(stage_order(cfg), 0)
    for layer in layer_costs(cfg):
        by_stage[layer.stage] += layer.macs
    return by_stage


def neuron_layer_count(cfg: SVFormerConfig) -> int:
    """Number of spiking neuron layers (39 for SVFormer-base)."""
    per_block = {"lfe": 3, "gsa": 7}
    n = sum(per_block[t] * d for t, d in zip(cfg.stage_types, cfg.depths, strict=True))
    return n + (cfg.num_stages - 1) + int(cfg.local_pathway) + 1
