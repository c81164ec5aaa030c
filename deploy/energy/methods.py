"""Energy of one run record by three methods, layer by layer, plus the ANN counterpart.

All three methods read the same run record (``docs/run-record.md``) and one :class:`CostModel`:

``exact``
    The simulator's event counts priced one by one (pJ):
    E = E_AC·ac + E_MAC·mac + E_mul·mul + E_add·add + E_neuron·neuron_updates.
    Neuron updates are a separate line (one leak multiply + one charge add per neuron per step by
    default; the threshold compare and reset are free).
``paper_eq13``
    The SVFormer paper's Eq. 12-13, labelled as the paper's method: for every layer with dense
    work (conv, linear, attention matmul) SOP^l = fr^{l-1} · FLOP^l, where fr^{l-1} is the firing
    rate of the neuron layer(s) feeding it (``input_neurons``; K^T V at min(fr_K, fr_V), Q (K^T V)
    at fr_Q = the first of its input neurons); a layer fed by no neuron (the first layer, on
    pixels) is charged E_MAC · FLOP^1. E = E_AC · ΣSOP + E_MAC · FLOP^1. FLOP^l is the layer's dense
    MACs plus its bias additions (one per output element per step, as the authors' syops-based
    tool counted: this is how PE1 of SVFormer-base costs 0.700 G). Neurons, residual adds and BN
    are not charged (the paper assumes BN fused).
``memory_aware``
    ``exact`` plus memory traffic: (weight_reads + state_reads + state_writes) words, each priced at
    E_mem(word_bits) = e_mem_pj_per_64bit · word_bits / 64.

ANN counterpart: every neuron a ReLU, every layer's dense MACs at E_MAC (Σ dense_macs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from svformer_deploy.simulators.record import RunRecord
from svformer_deploy.svformer.errors import SVFormerError

from .cost_models import CostModel

PJ_PER_MJ = 1e9
METHODS = ("exact", "paper_eq13", "memory_aware")
METHOD_LABELS = {
    "exact": "exact: the simulator's counted events, each priced by the cost model",
    "paper_eq13": "paper_eq13: the SVFormer paper's Eq. 12-13 (SOP = input firing rate x dense FLOPs incl. bias; "
                  "first layer at E_MAC)",
    "memory_aware": "memory_aware: exact plus weight and neuron-state memory traffic",
}
EXACT_TERMS = ("ac", "mac", "mul", "add", "neuron_updates")

# why exact and paper_eq13 differ on a layer (one reason per layer)
REASONS: dict[str, str] = {
    "first_layer": "first layer on non-spike input: both charge MACs; exact counts executed MACs, "
                   "the paper charges FLOP^1 including bias adds",
    "unfused_cascade": "real-valued input of an unfused cascade: exact charges MACs, the paper charges SOPs "
                       "at the upstream neuron's rate",
    "fused_cascade": "fused cascade: one dense op on spikes; exact counts its ACs, the paper charges "
                     "rate x fused FLOPs",
    "attention": "spiking attention: exact counts coincident (k, v) pairs and d ACs per Q spike; the paper "
                 "charges min(fr_K, fr_V) resp. fr_Q x dense MACs",
    "spike_input": "spike input: exact counts synaptic events (border- and group-aware, plus any bias adds); "
                   "the paper charges input rate x dense FLOPs incl. bias",
    "membrane_shortcut": "membrane-shortcut (residual) adds: exact charges E_add each; the paper does not count them",
    "per_step_bn": "BN scale/bias executed explicitly (TDBN's per-step scales cannot fold into the weights): "
                   "exact charges mul + add; the paper assumes BN fused",
    "neuron_updates": "neuron state updates: exact charges one update per neuron per step; the paper does not",
    "other_work": "other work (bias adds, scales): exact charges it; the paper does not count it",
    "no_work": "no arithmetic (data movement only)",
}
_ATTENTION_OPS = ("spike_matmul_kv", "spike_matmul_q_kv")
_BN_OPS = ("affine", "batchnorm")


@dataclass
class LayerEnergy:
    """One record layer: its counts and its energy (pJ) under every method."""

    name: str
    stage: str
    op: str
    input_kind: str
    input_neurons: list[str]
    counts: dict[str, int]
    dense_macs: int  # MACs of the ANN counterpart (ops per clip)
    paper_flops: int  # dense MACs + bias adds (the paper's FLOP^l, ops per clip)
    paper_rate: float | None  # fr^{l-1} used by Eq. 12 (None: first layer at E_MAC, or no dense work)
    paper_sop: float  # SOPs charged at E_AC (ops per clip)
    paper_mac: int  # FLOPs charged at E_MAC (first layer only)
    exact_pj: dict[str, float]  # by term: ac, mac, mul, add, neuron_updates
    memory_pj: dict[str, float]  # weight, state
    paper_pj: float
    reason: str
    word_bits: int
    firing_rate: float | None = None  # neuron layers: spikes / (neurons x T)
    neurons: int | None = None
    tau: float | None = None
    v_threshold: float | None = None
    per_step_spikes: list[int] | None = None

    @property
    def exact_total_pj(self) -> float:
        return sum(self.exact_pj.values())

    @property
    def memory_total_pj(self) -> float:
        return sum(self.memory_pj.values())

    def energy_pj(self, method: str) -> float:
        """This layer's energy under ``method`` (pJ per clip)."""
        if method == "exact":
            return self.exact_total_pj
        if method == "paper_eq13":
            return self.paper_pj
        if method == "memory_aware":
            return self.exact_total_pj + self.memory_total_pj
        raise KeyError(method)


@dataclass
class ClipEnergy:
    """Energy of one run record (one clip view) under every method; totals in pJ per clip."""

    record: RunRecord
    layers: list[LayerEnergy]
    ann_macs: int
    ann_pj: float
    bias_source: str
    totals_pj: dict[str, float] = field(default_factory=dict)

    def total_counts(self, key: str) -> int:
        return sum(layer.counts.get(key, 0) for layer in self.layers)


def _paper_rate(layer: Mapping[str, Any], rates: Mapping[str, float], sizes: Mapping[str, int]) -> float:
    """fr^{l-1} of Eq. 12 for a layer with dense work and at least one input neuron layer."""
    feeding = layer["input_neurons"]
    if layer["op"] == "spike_matmul_kv":  # K^T V: min(fr_K, fr_V)
        return min(rates[n] for n in feeding)
    if layer["op"] == "spike_matmul_q_kv":  # Q (K^T V): fr_Q, Q is port 0
        return rates[feeding[0]]
    if len(feeding) == 1:
        return rates[feeding[0]]
    # several neuron layers feed one op (e.g. through a concat): the fraction of its inputs that spiked
    total = sum(sizes[n] for n in feeding)
    return sum(rates[n] * sizes[n] for n in feeding) / total


def _reason(layer: Mapping[str, Any], counts: Mapping[str, int], weighted_parts: int) -> str:
    """Why exact and paper_eq13 differ on ``layer``; ``weighted_parts``: dense layers of the model in its origin."""
    op, dense = layer["op"], layer["dense_macs"]
    if op == "neuron":
        return "neuron_updates"
    if dense > 0:
        if not layer["input_neurons"]:
            return "first_layer"
        if op in _ATTENTION_OPS:
            return "attention"
        if layer["input_kind"] == "real":
            return "unfused_cascade"
        return "fused_cascade" if weighted_parts > 1 else "spike_input"
    if op == "add":
        return "membrane_shortcut"
    if op in _BN_OPS:
        return "per_step_bn"
    if any(counts.get(k, 0) for k in EXACT_TERMS):
        return "other_work"
    return "no_work"


def bias_adds_by_layer(record: RunRecord) -> tuple[dict[str, int], dict[str, int], str]:
    """Bias additions per layer (ops per clip) for the paper's FLOP^l, the number of the model's dense
    layers each record layer implements, and where the bias counts came from.

    A layer's optional ``dense_bias_adds`` field wins; otherwise the first-principles counts of
    ``svformer.complexity`` for the record's model config, matched through the layer's ``origin``
    (a fused layer takes the bias of its last dense part, since the fused op has one bias). Without
    either, 0. The part counts come from the same match (1 per layer without a usable config).
    """
    layers = record.layers
    explicit = {layer["name"]: int(layer["dense_bias_adds"]) for layer in layers if "dense_bias_adds" in layer}
    source = "record" if explicit else "none"
    reference = _reference_bias(record.model.get("config"), len(layers))
    out: dict[str, int] = {}
    parts_of: dict[str, int] = {}
    used_reference = False
    for layer in layers:
        name = layer["name"]
        parts = [o for o in layer["origin"] if o in reference]
        parts_of[name] = max(1, len(parts))
        if name in explicit:
            out[name] = explicit[name]
        elif layer["dense_macs"] > 0 and parts:
            out[name] = reference[parts[-1]]
            used_reference = True
        else:
            out[name] = 0
    if used_reference:
        source = "record + svformer.complexity" if explicit else "svformer.complexity (model config)"
    return out, parts_of, source


def _reference_bias(config: Any, n_layers: int) -> dict[str, int]:
    """Bias adds per dense layer (by module path) of the model ``config``; {} when it cannot be rebuilt.

    A config with more blocks than the record has layers cannot be the record's model (and would
    make the reference arbitrarily expensive to build), so it is ignored.
    """
    if not isinstance(config, dict) or not config:
        return {}
    from svformer_deploy.svformer.complexity import layer_costs
    from svformer_deploy.svformer.config import SVFormerConfig

    try:
        cfg = SVFormerConfig.from_dict(config)
        if sum(cfg.depths) + cfg.num_stages > n_layers:
            return {}
        return {c.name: c.bias_adds for c in layer_costs(cfg)}
    except (SVFormerError, TypeError, ValueError, KeyError, ZeroDivisionError, OverflowError):
        return {}  # a config this version cannot rebuild: no reference bias counts


def word_bits_of(layer: Mapping[str, Any], model: Mapping[str, Any]) -> int:
    """Bits per memory word of a layer: its ``word_bits``, else the model's weight bits if quantized, else 32."""
    if layer.get("word_bits"):
        return int(layer["word_bits"])
    if model.get("quantized") and model.get("weight_bits"):
        return int(model["weight_bits"])
    return 32


def evaluate_record(record: RunRecord, cost: CostModel) -> ClipEnergy:
    """Every layer of ``record`` priced by ``cost`` under all methods (pJ per clip)."""
    layers = record.layers
    neuron_layers = {layer["name"]: layer for layer in layers if layer["op"] == "neuron"}
    rates = {n: float(layer["firing_rate"]) for n, layer in neuron_layers.items()}
    sizes = {n: int(layer["neurons"]) for n, layer in neuron_layers.items()}
    bias, parts_of, bias_source = bias_adds_by_layer(record)
    out: list[LayerEnergy] = []
    for layer in layers:
        counts = {k: int(v) for k, v in layer["counts"].items()}
        dense = int(layer["dense_macs"])
        exact = {
            "ac": cost.e_ac_pj * counts.get("ac", 0),
            "mac": cost.e_mac_pj * counts.get("mac", 0),
            "mul": cost.e_mul_pj * counts.get("mul", 0),
            "add": cost.e_add_pj * counts.get("add", 0),
            "neuron_updates": cost.e_neuron_update_pj * counts.get("neuron_updates", 0),
        }
        bits = word_bits_of(layer, record.model)
        e_word = cost.e_mem_word_pj(bits)
        memory = {
            "weight": e_word * counts.get("weight_reads", 0),
            "state": e_word * (counts.get("state_reads", 0) + counts.get("state_writes", 0)),
        }
        flops = dense + bias.get(layer["name"], 0) if dense > 0 else 0
        rate: float | None = None
        sop, first_mac = 0.0, 0
        if dense > 0:
            if layer["input_neurons"]:
                rate = _paper_rate(layer, rates, sizes)
                sop = rate * flops
            else:
                first_mac = flops
        per_step = layer["per_step"].get("spikes_out")
        out.append(LayerEnergy(
            name=layer["name"], stage=layer["stage"], op=layer["op"], input_kind=layer.get("input_kind", "real"),
            input_neurons=list(layer["input_neurons"]), counts=counts, dense_macs=dense, paper_flops=flops,
            paper_rate=rate, paper_sop=sop, paper_mac=first_mac, exact_pj=exact, memory_pj=memory,
            paper_pj=cost.e_ac_pj * sop + cost.e_mac_pj * first_mac,
            reason=_reason(layer, counts, parts_of[layer["name"]]), word_bits=bits,
            firing_rate=rates.get(layer["name"]), neurons=sizes.get(layer["name"]),
            tau=_opt_float(layer.get("tau")), v_threshold=_opt_float(layer.get("v_threshold")),
            per_step_spikes=[int(v) for v in per_step] if per_step is not None and layer["op"] == "neuron" else None,
        ))
    ann_macs = sum(layer.dense_macs for layer in out)
    clip = ClipEnergy(record=record, layers=out, ann_macs=ann_macs, ann_pj=cost.e_mac_pj * ann_macs,
                      bias_source=bias_source)
    clip.totals_pj = method_totals_pj(out, cost, record)
    return clip


def method_totals_pj(layers: Sequence[LayerEnergy], cost: CostModel, record: RunRecord) -> dict[str, float]:
    """Total energy per method (pJ per clip).

    ``exact`` is priced from the summed counts (E_AC·Σac + E_MAC·Σmac + ...), so it equals the
    formula on the record's totals exactly; ``paper_eq13`` from ΣSOP and FLOP^1.
    """
    tot = {k: sum(layer.counts.get(k, 0) for layer in layers) for k in EXACT_TERMS}
    exact = (cost.e_ac_pj * tot["ac"] + cost.e_mac_pj * tot["mac"] + cost.e_mul_pj * tot["mul"]
             + cost.e_add_pj * tot["add"] + cost.e_neuron_update_pj * tot["neuron_updates"])
    sop = sum(layer.paper_sop for layer in layers)
    flop1 = sum(layer.paper_mac for layer in layers)
    memory = sum(layer.memory_total_pj for layer in layers)
    return {"exact": exact, "paper_eq13": cost.e_ac_pj * sop + cost.e_mac_pj * flop1, "memory_aware": exact + memory}


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)
