"""The partition priced part by part: core parts on a chip table, host parts on a 45 nm model, the boundary as I/O.

For one run record, its bundle's placement (:mod:`deploy.energy.placement`) and a :class:`ChipModel`
(all energies in pJ per clip, the record's exact counts):

- **core parts** (every weighted op and neuron layer of a core-capable part):
  ``synaptic ops x E_syn`` (synaptic ops = the weighted op's counted synaptic events ``ac``, times the
  layer's ``share`` of the op's rows after a head split; bias adds are part of the neuron update on the
  chip and not charged separately) + ``active updates x E_active +
  inactive updates x E_inactive`` (``neurons_active`` of the neuron layer; records before version 3
  have no such count and every update is priced active, an upper bound the report states) + routing:
  every spike of a part layer is sent to the cores of the next layer (or the host interface), each
  message priced within-tile or per E-W / N-S hop from the placement, and the part's input spikes
  (``spikes_in`` of its first weighted op) travel from the host interface to the first layer's cores;
- **host parts** (every other layer of the record): the host cost model's ``exact`` method (the
  same per-layer prices as ``energy-report``'s exact column);
- **boundary I/O**: each spike entering a part (``spikes_in`` of its first op) and each spike leaving
  it (``spikes_out`` of its last neuron layer) is one host memory access of ``boundary_word_bits``
  bits at the host model's memory figure (Horowitz 2014, 32 KB SRAM, 20 pJ per 64-bit access).

Chip time per clip (ns): per step, the slowest core (its share of the layer's synaptic ops x
``t_syn`` + its neurons x the active/inactive update times, spread evenly over the layer's cores) +
the longest spike route of that step + the barrier (``barrier_sync_one_tile`` when the placement uses
one tile, else ``barrier_sync_all_tiles``); summed over the steps. Host time is not modelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from svformer_deploy.simulators.record import RunRecord
from svformer_deploy.svformer.errors import SVFormerError

from .cost_models import ChipModel, CostModel
from .methods import ClipEnergy, evaluate_record
from .placement import Placement

PJ_PER_MJ = 1e9
TERMS = ("core_synaptic", "core_neuron_active", "core_neuron_inactive", "core_routing", "host", "boundary_io")
TERM_LABELS = {
    "core_synaptic": "core parts: synaptic ops x E_syn",
    "core_neuron_active": "core parts: active neuron updates x E_active",
    "core_neuron_inactive": "core parts: inactive neuron updates x E_inactive",
    "core_routing": "core parts: spike messages (within tile, E-W and N-S hops)",
    "host": "host parts: the host cost model's exact method",
    "boundary_io": "boundary: events crossing host <-> chip, one host memory word each",
}


def _steps(layer: dict[str, Any], key: str, T: int) -> list[int]:
    return list(layer["per_step"].get(key) or [0] * T)


def bill_record(record: RunRecord, placement: Placement, chip: ChipModel, host: CostModel,
                host_clip: ClipEnergy | None = None) -> dict[str, Any]:
    """One clip's bill (pJ, counts per clip, chip time in ns); ``host_clip``: the record under ``host``."""
    host_clip = host_clip if host_clip is not None else evaluate_record(record, host)
    by_name = {layer["name"]: layer for layer in record.layers}
    missing = sorted(n for n in placement.core_nodes() if n not in by_name)
    if missing:
        raise SVFormerError(f"{record.path}: the record has no layer {', '.join(missing[:3])} of the bundle's core "
                            "parts: the record and the bundle are not of the same model")
    T = record.time_steps
    has_active = int(record.data.get("version", 1)) >= 3
    e, t = chip.energy_pj, chip.time_ns
    e_word = host.e_mem_word_pj(chip.boundary_word_bits)
    core = placement.core_nodes()
    exact45 = {x.name: x.exact_total_pj for x in host_clip.layers}
    layers: list[dict[str, Any]] = []
    terms = dict.fromkeys(TERMS, 0.0)
    counts = {"synaptic_ops": 0, "neuron_updates_active": 0, "neuron_updates_inactive": 0, "spikes_routed": 0,
              "spike_messages": 0.0, "within_tile_messages": 0.0, "ew_hops": 0.0, "ns_hops": 0.0,
              "boundary_in": 0, "boundary_out": 0}
    step_core = [0.0] * T
    step_route = [0.0] * T
    parts = [lp.part for lp in placement.layers]
    for i, lp in enumerate(placement.layers):
        w, n = by_name[lp.weighted], by_name[lp.neuron]
        first = i == 0 or parts[i - 1] != lp.part
        last = i == len(parts) - 1 or parts[i + 1] != lp.part
        syn = round(lp.share * (int(w["counts"]["ac"]) + int(w["counts"]["mac"])))
        updates = int(n["counts"]["neuron_updates"])
        active = int(n["counts"]["neurons_active"]) if has_active else updates
        inactive = updates - active
        spikes = int(n["counts"]["spikes_out"])
        spikes_in = int(w["counts"]["spikes_in"]) if first else 0
        route = lp.routing_pj(chip, spikes) + (lp.routing_pj(chip, spikes_in, incoming=True) if first else 0.0)
        row = {"part": lp.part, "weighted": lp.weighted, "neuron": lp.neuron, "cores": lp.cores,
               "synaptic_ops": syn, "neuron_updates_active": active, "neuron_updates_inactive": inactive,
               "spikes_out": spikes, "spikes_in_from_host": spikes_in, "spikes_to_host": spikes if last else 0,
               "energy_pj": {"core_synaptic": syn * e["synaptic_op"],
                             "core_neuron_active": active * e["neuron_update_active"],
                             "core_neuron_inactive": inactive * e["neuron_update_inactive"],
                             "core_routing": route},
               "exact_45nm_pj": lp.share * exact45[lp.weighted] + exact45[lp.neuron]}
        row["energy_pj"]["total"] = sum(row["energy_pj"].values())
        layers.append(row)
        for k in ("core_synaptic", "core_neuron_active", "core_neuron_inactive", "core_routing"):
            terms[k] += row["energy_pj"][k]
        counts["synaptic_ops"] += syn
        counts["neuron_updates_active"] += active
        counts["neuron_updates_inactive"] += inactive
        counts["spikes_routed"] += spikes + spikes_in
        counts["spike_messages"] += spikes * lp.messages_per_spike + spikes_in * lp.input_messages_per_spike
        counts["within_tile_messages"] += (spikes * lp.within_tile_per_spike
                                           + spikes_in * lp.input_within_tile_per_spike)
        counts["ew_hops"] += spikes * lp.ew_hops_per_spike + spikes_in * lp.input_ew_hops_per_spike
        counts["ns_hops"] += spikes * lp.ns_hops_per_spike + spikes_in * lp.input_ns_hops_per_spike
        counts["boundary_in"] += spikes_in
        counts["boundary_out"] += spikes if last else 0
        # chip time: this layer's busiest core, per step (events spread evenly over the layer's cores)
        share = lp.neurons_per_core / lp.neurons
        ac_t = [lp.share * (a + b) for a, b in zip(_steps(w, "ac", T), _steps(w, "mac", T), strict=True)]
        up_t = _steps(n, "neuron_updates", T)
        act_t = _steps(n, "neurons_active", T) if has_active else up_t
        sp_t = _steps(n, "spikes_out", T)
        in_t = _steps(w, "spikes_in", T) if first else [0] * T
        for s in range(T):
            frac = act_t[s] / up_t[s] if up_t[s] else 0.0
            busy = (ac_t[s] * share * t["synaptic_op"]
                    + lp.neurons_per_core * (frac * t["neuron_update_active"]
                                             + (1 - frac) * t["neuron_update_inactive"]))
            step_core[s] = max(step_core[s], busy)
            if sp_t[s]:
                step_route[s] = max(step_route[s], lp.max_route_ns)
            if in_t[s]:
                step_route[s] = max(step_route[s], lp.input_max_route_ns)
    host_layers = [x for x in host_clip.layers if x.name not in core]
    terms["host"] = sum(x.exact_total_pj for x in host_layers)
    terms["boundary_io"] = (counts["boundary_in"] + counts["boundary_out"]) * e_word
    barrier = t["barrier_sync_one_tile"] if placement.tiles <= 1 else t["barrier_sync_all_tiles"]
    step_ns = [c + r + barrier for c, r in zip(step_core, step_route, strict=True)] if placement.layers else [0.0] * T
    return {
        "record": str(record.path), "terms_pj": terms, "total_pj": sum(terms.values()), "counts": counts,
        "layers": layers, "host_layers": len(host_layers),
        "core_exact_45nm_pj": sum(row["exact_45nm_pj"] for row in layers),
        "chip_time_ns": sum(step_ns), "step_time_ns": step_ns, "active_counted": has_active,
    }


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def chip_section(records: Sequence[RunRecord], clips: Sequence[ClipEnergy], placement: Placement, chip: ChipModel,
                 host: CostModel, methods_mj: dict[str, float]) -> dict[str, Any]:
    """The ``chip`` section of the energy report: the bills of ``records`` (means over clips) beside the pure
    45 nm methods (``methods_mj``: mJ per clip of the host model's exact / paper_eq13 / memory_aware)."""
    bills = [bill_record(r, placement, chip, host, c) for r, c in zip(records, clips, strict=True)]
    terms = {k: _mean([b["terms_pj"][k] for b in bills]) for k in TERMS}
    total = sum(terms.values())
    counts = {k: _mean([b["counts"][k] for b in bills]) for k in bills[0]["counts"]}
    layers = []
    for i, ref in enumerate(bills[0]["layers"]):
        rows = [b["layers"][i] for b in bills]
        entry = {k: ref[k] for k in ("part", "weighted", "neuron", "cores")}
        for k in ("synaptic_ops", "neuron_updates_active", "neuron_updates_inactive", "spikes_out",
                  "spikes_in_from_host", "spikes_to_host", "exact_45nm_pj"):
            entry[k] = _mean([r[k] for r in rows])
        entry["energy_pj"] = {k: _mean([r["energy_pj"][k] for r in rows]) for k in ref["energy_pj"]}
        layers.append(entry)
    core_chip = sum(terms[k] for k in TERMS if k.startswith("core_"))
    core45 = _mean([b["core_exact_45nm_pj"] for b in bills])
    notes = []
    if not all(b["active_counted"] for b in bills):
        notes.append("records before version 3 do not count active neurons: every neuron update is priced at the "
                     "active figure (an upper bound)")
    if placement.chips > 1:
        notes.append(f"{placement.chips} chips: the barrier time is the single-chip figure and chip-to-chip links "
                     "are priced as tile hops (no published figures)")
    if not placement.fits:
        notes.append("the network does NOT fit the chip's per-core limits (see the fit report); the bill prices "
                     "the placement anyway")
    return {
        "chip": chip.to_dict(), "host_cost_model": host.name, "placement": placement.to_dict(),
        "clips": len(bills),
        "energy_mj": {k: v / PJ_PER_MJ for k, v in terms.items()} | {"total": total / PJ_PER_MJ},
        "term_labels": dict(TERM_LABELS), "counts": counts,
        "chip_time_us": _mean([b["chip_time_ns"] for b in bills]) / 1e3,
        "host_layers": bills[0]["host_layers"], "layers": layers,
        "pure_45nm_mj": dict(methods_mj),
        "core_parts": {"chip_mj": core_chip / PJ_PER_MJ, "exact_45nm_mj": core45 / PJ_PER_MJ},
        "reconciliation": reconcile(terms, counts, core45, chip, host, methods_mj),
        "notes": notes, "gaps": list(chip.gaps),
    }


def reconcile(terms: dict[str, float], counts: dict[str, float], core45_pj: float, chip: ChipModel,
              host: CostModel, methods_mj: dict[str, float]) -> list[str]:
    """Why the chip bill differs from the pure 45 nm methods, term by term (text lines, figures in mJ per clip)."""
    e = chip.energy_pj
    mj = PJ_PER_MJ
    core_chip = sum(terms[k] for k in TERMS if k.startswith("core_"))
    total = sum(terms.values())
    syn, act, inact = counts["synaptic_ops"], counts["neuron_updates_active"], counts["neuron_updates_inactive"]
    lines = [
        f"chip bill {total / mj:.6g} mJ = core parts {core_chip / mj:.6g} + host parts {terms['host'] / mj:.6g} "
        f"+ boundary I/O {terms['boundary_io'] / mj:.6g}; pure {host.name} exact {methods_mj['exact']:.6g}, "
        f"paper_eq13 {methods_mj['paper_eq13']:.6g}, memory_aware {methods_mj['memory_aware']:.6g}.",
        f"host parts cost the same on both sides ({terms['host'] / mj:.6g} mJ, {host.name} exact method); the "
        f"difference is the core parts ({core45_pj / mj:.6g} mJ at {host.name} exact -> {core_chip / mj:.6g} mJ on "
        f"{chip.name}) and the boundary I/O, which the 45 nm methods do not have.",
        f"synaptic ops: {syn:,.0f} x {e['synaptic_op']:g} pJ on {chip.name} vs x E_AC {host.e_ac_pj:g} pJ at 45 nm "
        f"({e['synaptic_op'] / host.e_ac_pj:.3g}x per op): the chip figure is a whole synaptic event (synapse SRAM "
        "read, weight decode, dendritic accumulate) in 14 nm; E_AC is one bare add with no memory.",
        f"neuron updates: {act:,.0f} active x {e['neuron_update_active']:g} pJ + {inact:,.0f} inactive x "
        f"{e['neuron_update_inactive']:g} pJ vs {act + inact:,.0f} x {host.e_neuron_update_pj:g} pJ at 45 nm "
        "(one multiply + one add, no state memory).",
        f"routing: {counts['spike_messages']:,.0f} spike messages ({counts['within_tile_messages']:,.0f} within a "
        f"tile, {counts['ew_hops']:,.0f} E-W and {counts['ns_hops']:,.0f} N-S hops) cost "
        f"{terms['core_routing'] / mj:.6g} mJ; the 45 nm methods move no data between layers.",
        f"boundary: {counts['boundary_in']:,.0f} spikes into and {counts['boundary_out']:,.0f} out of the core parts, "
        f"each one {chip.boundary_word_bits}-bit host memory access ({host.e_mem_word_pj(chip.boundary_word_bits):g} "
        f"pJ): {terms['boundary_io'] / mj:.6g} mJ.",
    ]
    return lines
