"""Hand-made run records (``docs/run-record.md``) with known counts, for the energy-report tests.

- :func:`make_layer` / :func:`make_record`: build a valid record from a few layers; totals, firing
  rates, neuron updates and per-step lists are derived so the record is self-consistent.
- :func:`hand_record`: a tiny hand-worked network (first conv on pixels, a TDBN affine, an attention
  pair, a real-input head layer) whose energies are worked out by hand in ``HAND``.
- :func:`synthetic_record`: a record shaped like the IR of a real SVFormer config (layer names,
  stages, dense MACs from ``svformer.complexity``) with random firing rates; for aggregation, the
  reconciliation on realistic graphs, and the plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from svformer_deploy.simulators import record as schema
from svformer_deploy.svformer.complexity import layer_costs
from svformer_deploy.svformer.variants import variant_config

HASH_A = "a" * 64
HASH_B = "b" * 64


def _split(total: int, T: int) -> list[int]:
    base, rem = divmod(total, T)
    return [base + (1 if t < rem else 0) for t in range(T)]


def make_layer(name: str, stage: str, op: str, T: int, *, input_kind: str = "spike",
               input_neurons: tuple[str, ...] = (), dense_macs: int = 0, params: int = 0,
               neurons: int | None = None, tau: float | None = None, v_threshold: float = 1.0,
               word_bits: int | None = 32, dense_bias_adds: int | None = None,
               spikes_per_step: list[int] | None = None, origin: list[str] | None = None,
               **counts: int) -> dict[str, Any]:
    """One record layer (through :func:`simulators.record.layer_record`); counts are spread evenly over the T steps.

    For neuron layers give ``neurons`` and ``spikes_per_step`` (or ``spikes_out``); their neuron
    updates default to ``neurons x T``.
    """
    per_step = {k: _split(int(v), T) for k, v in counts.items()}
    if op == "neuron":
        assert neurons is not None
        per_step["spikes_out"] = list(spikes_per_step) if spikes_per_step is not None else per_step.get(
            "spikes_out", [0] * T)
        per_step.setdefault("neuron_updates", [neurons] * T)
    return schema.layer_record(
        name=name, stage=stage, op=op, origin=origin or [name], input_kind=input_kind,
        input_neurons=input_neurons, dense_macs=dense_macs, params=params, per_step=per_step, time_steps=T,
        neurons=neurons, tau=(tau if tau else 2.0) if op == "neuron" else None,
        v_threshold=v_threshold if op == "neuron" else None, word_bits=word_bits, dense_bias_adds=dense_bias_adds)


def make_record(layers: list[dict[str, Any]], *, T: int, model_hash: str = HASH_A, top1: str = "walk",
                label: str | None = None, input_path: str = "/clips/clip.mp4", view: int = 0,
                config: dict | None = None, arch: str = "hand", executor: str = "float",
                class_names: list[str] | None = None) -> dict[str, Any]:
    """A complete, valid run record holding ``layers`` (through :func:`simulators.record.assemble_record`)."""
    inp: dict[str, Any] = {"kind": "video", "path": input_path, "sha256": f"sha-{input_path}", "view": view,
                           "views": [1, 1], "frame_indices": list(range(T))}
    if label is not None:
        inp["label"] = label
    return schema.assemble_record(
        layers, time_steps=T, executor=executor, input=inp, created="2026-11-24T12:00:00Z",
        tool={"svformer_deploy": "0.1.0", "torch": "2.13.0+cpu", "spikingjelly": "2.0.0"},
        model={"hash": model_hash, "bundle": "/models/m.svfd", "arch": arch, "config": config or {},
               "class_names": class_names or ["walk", "run", "jump"], "quantized": False, "weight_bits": None,
               "passes": ["fold_bn"]},
        prediction={"logits": [2.0, 1.0, 0.5], "top5": [[top1, 2.0], ["other", 1.0]]},
        timing={"wall_s": 0.1, "per_step_s": [0.1 / T] * T})


def write_record(directory: str | Path, name: str, record: dict[str, Any]) -> Path:
    """``record`` as ``directory/name`` (text of :func:`simulators.record.dumps`; the name is given, not generated)."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(schema.dumps(record))
    return path


# ---------------------------------------------------------------------------------------------
# the hand-worked record (T = 2)
# ---------------------------------------------------------------------------------------------
def hand_record(**kw: Any) -> dict[str, Any]:
    """Ten layers, hand-countable. Firing rates: in_lif 0.25, q 0.5, k 0.25, v 0.125, lif_bf_head 0.2."""
    T = 2
    L = [
        make_layer("patch_embed1.proj", "PE1", "conv2d", T, input_kind="real", dense_macs=1000, dense_bias_adds=40,
                   params=120, mac=1000, add=40, weight_reads=1000),
        make_layer("patch_embed1.norm", "PE1", "affine", T, input_kind="real", mul=40, add=40),
        make_layer("blocks1.0.attn.in_lif", "S1", "neuron", T, input_kind="real", neurons=20, tau=2.0,
                   spikes_per_step=[6, 4], state_reads=40, state_writes=40),
        make_layer("blocks1.0.attn.qkv", "S1", "linear", T, input_neurons=("blocks1.0.attn.in_lif",),
                   dense_macs=2400, dense_bias_adds=120, params=252, ac=590, add=120, weight_reads=590),
        make_layer("blocks1.0.attn.q_lif", "S1", "neuron", T, input_kind="real", neurons=20, tau=1.5,
                   spikes_per_step=[12, 8], state_reads=40, state_writes=40),
        make_layer("blocks1.0.attn.k_lif", "S1", "neuron", T, input_kind="real", neurons=20, tau=3.0,
                   spikes_per_step=[5, 5], state_reads=40, state_writes=40),
        make_layer("blocks1.0.attn.v_lif", "S1", "neuron", T, input_kind="real", neurons=20, tau=4.0,
                   spikes_per_step=[2, 3], state_reads=40, state_writes=40),
        make_layer("blocks1.0.attn.kv", "S1", "spike_matmul_kv", T,
                   input_neurons=("blocks1.0.attn.k_lif", "blocks1.0.attn.v_lif"), dense_macs=64, ac=6),
        make_layer("blocks1.0.attn.qkv_out", "S1", "spike_matmul_q_kv", T,
                   input_neurons=("blocks1.0.attn.q_lif", "blocks1.0.attn.k_lif", "blocks1.0.attn.v_lif"),
                   dense_macs=64, ac=40),
        make_layer("blocks1.0.add1", "S1", "add", T, input_kind="real", add=40),
        make_layer("lif_bf_head", "CH", "neuron", T, input_kind="real", neurons=20, tau=1.2,
                   spikes_per_step=[3, 5], state_reads=40, state_writes=40),
        make_layer("dwconv_bf_head", "CH", "conv3d", T, input_neurons=("lif_bf_head",), dense_macs=400,
                   dense_bias_adds=10, params=410, ac=90, add=10, weight_reads=90),
        make_layer("head", "CH", "linear", T, input_kind="real", input_neurons=("lif_bf_head",), dense_macs=50,
                   dense_bias_adds=5, params=55, mac=50, add=5, weight_reads=50),
    ]
    return make_record(L, T=T, **kw)


# Worked by hand for hand_record() with the fp32 preset (E_MAC 4.6, E_AC 0.9, E_mul 3.7, E_add 0.9,
# neuron update 4.6 pJ, memory 20 pJ / 64 bit -> 10 pJ per 32-bit word):
#   paper: FLOP^1 = 1000 + 40 = 1040 -> 4.6 x 1040 = 4784 pJ
#          SOP: qkv 0.25 x 2520 = 630; kv min(0.25, 0.125) x 64 = 8; q_kv 0.5 x 64 = 32;
#               conv3d 0.2 x 410 = 82; head 0.2 x 55 = 11  -> 763 SOP -> 0.9 x 763 = 686.7 pJ
#          E = 5470.7 pJ
#   exact: ac 590+6+40+90 = 726; mac 1000+50 = 1050; mul 40; add 40+40+120+40+10+5 = 255;
#          neuron updates 5 x 40 = 200 -> 653.4 + 4830 + 148 + 229.5 + 920 = 6780.9 pJ
#   memory: weight reads 1000+590+90+50 = 1730, state 5 x (40+40) = 400 words x 10 pJ = 21300 pJ
#   ANN: 1000+2400+64+64+400+50 = 3978 MACs x 4.6 = 18298.8 pJ
HAND = {
    "paper_first_layer_flops": 1040, "paper_sop": 763.0, "paper_pj": 5470.7,
    "ac": 726, "mac": 1050, "mul": 40, "add": 255, "neuron_updates": 200, "exact_pj": 6780.9,
    "memory_pj": 21300.0, "memory_aware_pj": 28080.9, "ann_macs": 3978, "ann_pj": 18298.8,
    "paper_layer_pj": {"patch_embed1.proj": 4784.0, "blocks1.0.attn.qkv": 567.0, "blocks1.0.attn.kv": 7.2,
                       "blocks1.0.attn.qkv_out": 28.8, "dwconv_bf_head": 73.8, "head": 9.9},
}


# ---------------------------------------------------------------------------------------------
# records shaped like a real model's IR
# ---------------------------------------------------------------------------------------------
def synthetic_record(variant: str = "3stg", seed: int = 0, model_hash: str = HASH_A, label: str | None = None,
                     input_path: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A valid record with the IR layer names of ``variant`` (after fold_bn), dense MACs from
    ``svformer.complexity`` and random firing rates (2-35 %); ACs are rate x dense (a fixture, not a count)."""
    cfg = variant_config(variant, **overrides)
    costs = {c.name: c for c in layer_costs(cfg)}
    rng = np.random.default_rng(seed)
    T = cfg.time_steps
    sizes = cfg.spatial_sizes()
    L: list[dict[str, Any]] = []
    rate: dict[str, float] = {}

    def neuron(name: str, stage: str, n: int) -> str:
        fr = float(rng.uniform(0.02, 0.35))
        steps = rng.multinomial(int(round(fr * n * T)), [1 / T] * T).tolist()
        L.append(make_layer(name, stage, "neuron", T, input_kind="real", neurons=n,
                            tau=float(rng.uniform(1.03, 4.4)), spikes_per_step=steps,
                            state_reads=n * T, state_writes=n * T))
        rate[name] = L[-1]["firing_rate"]
        return name

    def weighted(name: str, stage: str, feeding: tuple[str, ...], real: bool, op: str | None = None) -> None:
        c = costs[name]
        kw: dict[str, int] = {}
        if real:
            kw.update(mac=c.macs, weight_reads=c.macs)
        else:
            if op == "spike_matmul_kv":
                fr = rate[feeding[0]] * rate[feeding[1]]
            else:
                fr = rate[feeding[0]]
            kw.update(ac=int(round(fr * c.macs)), weight_reads=int(round(fr * c.macs)))
        kw.update(add=c.bias_adds, state_reads=c.bias_adds, state_writes=c.bias_adds)
        L.append(make_layer(name, stage, op or ("conv3d" if c.op == "conv3d" else "linear" if "linear" in c.op
                                                 else "conv2d"), T, input_kind="real" if real else "spike",
                            input_neurons=feeding, dense_macs=c.macs, params=c.params, **kw))

    def elementwise(name: str, stage: str, op: str, elems: int) -> None:
        kw = {"mul": elems * T, "add": elems * T} if op == "affine" else {"add": elems * T}
        L.append(make_layer(name, stage, op, T, input_kind="real", **kw))

    n = cfg.num_stages
    prev: str | None = None
    prev_elems = 0
    for i in range(1, n + 1):
        p, s, c = f"patch_embed{i}", sizes[i - 1], cfg.dims[i - 1]
        if i > 1:
            prev = neuron(f"{p}.in_lif", f"PE{i}", prev_elems)
        weighted(f"{p}.proj", f"PE{i}", (prev,) if prev else (), real=prev is None)
        elementwise(f"{p}.norm", f"PE{i}", "affine", c * s * s)
        if i == n - 1 and cfg.local_pathway:
            lp = neuron("lplif", "LP", c * s * s)
            weighted("lpDWConv", "LP", (lp,), real=False)
            weighted("lpPWConv", "LP", (lp,), real=True)
            s_lp = cfg.local_pathway_size()
            elementwise("lpBN", "LP", "affine", cfg.dims[-1] * s_lp * s_lp)
        hidden = int(c * cfg.mlp_ratio)
        st = f"S{i}"
        for j in range(cfg.depths[i - 1]):
            b = f"blocks{i}.{j}"
            e, eh = c * s * s, hidden * s * s
            if cfg.stage_types[i - 1] == "lfe":
                a = neuron(f"{b}.act1", st, e)
                weighted(f"{b}.conv1", st, (a,), real=False)
                weighted(f"{b}.attn", st, (a,), real=True)
                weighted(f"{b}.conv2", st, (a,), real=True)
                elementwise(f"{b}.norm2", st, "affine", e)
            else:
                q = f"{b}.attn"
                a = neuron(f"{q}.in_lif", st, e)
                weighted(f"{q}.qkv", st, (a,), real=False)
                elementwise(f"{q}.norm1", st, "affine", 3 * e)
                ql, kl, vl = (neuron(f"{q}.{x}_lif", st, e) for x in "qkv")
                weighted(f"{q}.kv", st, (kl, vl), real=False, op="spike_matmul_kv")
                weighted(f"{q}.qkv_out", st, (ql, kl, vl), real=False, op="spike_matmul_q_kv")
                pl = neuron(f"{q}.proj_lif", st, e)
                weighted(f"{q}.proj", st, (pl,), real=False)
                elementwise(f"{q}.norm2", st, "affine", e)
            elementwise(f"{b}.add1", st, "add", e)
            a1 = neuron(f"{b}.mlp.act1", st, e)
            weighted(f"{b}.mlp.fc1", st, (a1,), real=False)
            elementwise(f"{b}.mlp.norm1", st, "affine", eh)
            a2 = neuron(f"{b}.mlp.act2", st, eh)
            weighted(f"{b}.mlp.fc2", st, (a2,), real=False)
            elementwise(f"{b}.mlp.norm2", st, "affine", e)
            elementwise(f"{b}.add2", st, "add", e)
        prev_elems = c * s * s
    head_in = neuron("lif_bf_head", "CH", cfg.head_channels * sizes[-1] ** 2)
    weighted("dwconv_bf_head", "CH", (head_in,), real=False)
    weighted("head", "CH", (head_in,), real=True)
    names = [f"class{k}" for k in range(cfg.num_classes)]
    top1 = names[int(rng.integers(cfg.num_classes))]
    return make_record(L, T=T, model_hash=model_hash, top1=top1, label=label, config=cfg.to_dict(), arch=variant,
                       input_path=input_path or f"/clips/clip{seed}.mp4", class_names=names)
