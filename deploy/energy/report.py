"""Rendering the energy report (the dict of :func:`deploy.energy.records.aggregate`): terminal, CSV, Markdown.

Every table names the cost model that produced its numbers; the JSON carries it as ``cost_model``.
The terminal and Markdown outputs show the same tables: totals first, then per stage, then per
layer (with the reconciliation reason), then the reconciliation summary, classes and clips.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svformer_deploy.svformer.fileio import write_text_atomic

from .methods import METHODS

PJ_PER_MJ = 1e9
PJ_PER_UJ = 1e6


@dataclass
class Table:
    """A titled table: plain strings per cell, ``align`` one of 'l'/'r' per column."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    align: str


def _int(x: float | int) -> str:
    return f"{round(x):,}" if abs(x - round(x)) < 1e-9 or abs(x) >= 1e4 else f"{x:,.1f}"


def _g(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def cost_model_line(report: Mapping[str, Any]) -> str:
    """One line naming the cost model and all its numbers."""
    c = report["cost_model"]
    return (f"cost model {c['name']}: E_MAC {c['e_mac_pj']:g} pJ, E_AC {c['e_ac_pj']:g} pJ, "
            f"E_mul {c['e_mul_pj']:g} pJ, E_add {c['e_add_pj']:g} pJ, "
            f"neuron update {c['e_neuron_update_pj']:g} pJ, "
            f"memory {c['e_mem_pj_per_64bit']:g} pJ per 64-bit access ({c['source']})")


def header_lines(report: Mapping[str, Any]) -> list[str]:
    m = report["model"]
    lines = [
        f"Energy report: {report['clips']} clip view(s) of {report['videos']} input(s), model "
        f"{m.get('arch') or '?'} (hash {m['hash'][:12]}), executor {m['executor']}, T={m['time_steps']}, "
        f"passes {', '.join(m.get('passes') or []) or 'none'}",
        cost_model_line(report),
    ]
    if report.get("chip"):
        lines.append(chip_line(report["chip"]))
    if report.get("skipped"):
        lines.append(f"skipped {len(report['skipped'])} corrupt run record(s): "
                     + "; ".join(s["reason"] for s in report["skipped"][:3]))
    return lines


def tables(report: Mapping[str, Any], layers: bool = True) -> list[Table]:
    """The report's tables in reading order (totals, stages, layers, reconciliation, classes, clips)."""
    cm = report["cost_model"]["name"]
    ann = report["ann_counterpart"]
    out: list[Table] = []
    rows = []
    for m in METHODS:
        d = report["methods"][m]
        other = "-" if m == "paper_eq13" else _int(d["mul"] + d["add"] + d["neuron_updates"])
        mem = _int(d["weight_reads"] + d["state_reads"] + d["state_writes"]) if m == "memory_aware" else "-"
        spread = f"{_g(d['energy_mj_std'], 3)} [{_g(d['energy_mj_min'])}, {_g(d['energy_mj_max'])}]"
        rows.append([m, _int(d["ac"]), _int(d["mac"]), other, mem, _g(d["energy_mj"], 6), spread,
                     _pct(d["snn_ann_ratio"])])
    rows.append(["ANN counterpart", "-", _int(ann["macs"]), "-", "-", _g(ann["energy_mj"], 6), "-", "100.00%"])
    out.append(Table(f"Totals per clip, mean over {report['clips']} clip(s) [cost model {cm}]",
                     ["method", "AC", "MAC", "other ops", "memory words", "energy mJ", "std [min, max]", "SNN/ANN"],
                     rows, "lrrrrrlr"))
    if report.get("chip"):
        out += chip_tables(report["chip"], layers=layers)
    rows = []
    for s in report["stages"]:
        e = s["energy_pj"]
        by = s["energy_pj_by_method"]
        rows.append([s["stage"], _int(s["ac"]), _int(s["mac"]), _int(s["other_ops"]),
                     _g(e["ac"] / PJ_PER_UJ), _g(e["mac"] / PJ_PER_UJ), _g(e["other"] / PJ_PER_UJ),
                     _g(e["memory"] / PJ_PER_UJ), _g(by["exact"] / PJ_PER_UJ), _g(by["paper_eq13"] / PJ_PER_UJ),
                     _g(by["memory_aware"] / PJ_PER_UJ)])
    out.append(Table(f"Per stage, µJ per clip [cost model {cm}]",
                     ["stage", "AC", "MAC", "other ops", "AC µJ", "MAC µJ", "other µJ", "memory µJ", "exact µJ",
                      "paper µJ", "mem-aware µJ"], rows, "lrrrrrrrrrr"))
    if layers:
        rows = []
        for layer in report["layers"]:
            by = layer["energy_pj_by_method"]
            fr = layer["firing_rate"] if layer["firing_rate"] is not None else None
            rows.append([layer["stage"], layer["name"], layer["op"], _pct(fr), _pct(layer["paper_input_rate"]),
                         _int(layer["ac"]), _int(layer["mac"]), _int(layer["mul"] + layer["add"]),
                         _int(layer["neuron_updates"]), _g(by["exact"] / PJ_PER_UJ),
                         _g(by["paper_eq13"] / PJ_PER_UJ), _g(layer["difference_pj"] / PJ_PER_UJ),
                         _g(layer["memory_pj"]["weight"] / PJ_PER_UJ + layer["memory_pj"]["state"] / PJ_PER_UJ),
                         layer["reason"]])
        out.append(Table(f"Per layer, µJ per clip [cost model {cm}] (diff = exact - paper_eq13)",
                         ["stage", "layer", "op", "fire rate", "paper fr_in", "AC", "MAC", "mul+add", "updates",
                          "exact µJ", "paper µJ", "diff µJ", "memory µJ", "reason"], rows, "lllrrrrrrrrrrl"))
    rec = report["reconciliation"]
    rows = [[e["reason"], str(e["layers"]), _g(e["difference_pj"] / PJ_PER_MJ, 6), e["description"]]
            for e in rec["by_reason"]]
    rows.append(["total", str(len(report["layers"])), _g(rec["exact_minus_paper_pj"] / PJ_PER_MJ, 6),
                 "exact - paper_eq13"])
    out.append(Table(f"Where exact and paper_eq13 differ, mJ per clip [cost model {cm}]",
                     ["reason", "layers", "exact - paper mJ", "why"], rows, "lrrl"))
    if len(report["per_class"]) > 1 or report["clips"] > 1:
        rows = []
        for c in report["per_class"]:
            e = c["energy_mj"]
            rows.append([c["class"], str(c["clips"])] + [f"{_g(e[m]['mean'])} ± {_g(e[m]['std'], 3)}" for m in METHODS])
        out.append(Table(f"Per class (class = input label, else top-1), mJ per clip [cost model {cm}]",
                         ["class", "clips", *METHODS], rows, "lrrrr"))
        rows = [[Path(c["record"]).name, str(c["input"] or "-"), str(c["view"] if c["view"] is not None else "-"),
                 c["class"]] + [_g(c["energy_mj"][m], 6) for m in (*METHODS, "ann")] for c in report["per_clip"]]
        out.append(Table(f"Per clip, mJ [cost model {cm}]",
                         ["record", "input", "view", "class", *METHODS, "ann"], rows, "llrlrrrr"))
    return out


def chip_line(chip: Mapping[str, Any]) -> str:
    """One line naming the chip table, all its per-event figures and where they come from."""
    c = chip["chip"]
    e, t = c["energy_pj"], c["time_ns"]
    return (f"chip {c['name']}: synaptic op {e['synaptic_op']:g} pJ / {t['synaptic_op']:g} ns, neuron update active "
            f"{e['neuron_update_active']:g} pJ / {t['neuron_update_active']:g} ns, inactive "
            f"{e['neuron_update_inactive']:g} pJ / {t['neuron_update_inactive']:g} ns, within-tile spike "
            f"{e['spike_within_tile']:g} pJ / {t['spike_within_tile']:g} ns, hop E-W {e['hop_east_west']:g} pJ / "
            f"{t['hop_east_west']:g} ns, N-S {e['hop_north_south']:g} pJ / {t['hop_north_south']:g} ns, barrier "
            f"{t['barrier_sync_one_tile']:g}-{t['barrier_sync_all_tiles']:g} ns; host parts on "
            f"{chip['host_cost_model']} ({c['source']})")


def chip_tables(chip: Mapping[str, Any], layers: bool = True) -> list[Table]:
    """The chip bill: the split beside the pure 45 nm methods, the reconciliation, the fit, per core layer."""
    name, host = chip["chip"]["name"], chip["host_cost_model"]
    e = chip["energy_mj"]
    pl = chip["placement"]
    cnt = chip["counts"]
    events = {"core_synaptic": _int(cnt["synaptic_ops"]) + " synaptic ops",
              "core_neuron_active": _int(cnt["neuron_updates_active"]) + " updates",
              "core_neuron_inactive": _int(cnt["neuron_updates_inactive"]) + " updates",
              "core_routing": f"{_int(cnt['spike_messages'])} messages, {_int(cnt['ew_hops'])} E-W + "
                              f"{_int(cnt['ns_hops'])} N-S hops",
              "host": f"{chip['host_layers']} host layers",
              "boundary_io": f"{_int(cnt['boundary_in'] + cnt['boundary_out'])} events"}
    total = e["total"] or 1.0
    rows = [[chip["term_labels"][k], events[k], _g(e[k], 6), _pct(e[k] / total)] for k in events]
    rows.append([f"total on {name} + {host} host", "-", _g(e["total"], 6), "100.00%"])
    for m, v in chip["pure_45nm_mj"].items():
        rows.append([f"pure {host} {m} (whole network at 45 nm)", "-", _g(v, 6), _pct(v / total)])
    out = [Table(f"Chip bill per clip, mean over {chip['clips']} clip(s) [{name} core parts, {host} host parts]; "
                 f"chip time {_g(chip['chip_time_us'], 5)} µs per clip",
                 ["term", "events per clip", "energy mJ", "share of chip bill"], rows, "llrr")]
    out.append(Table(f"Why the {name} bill differs from the pure {host} methods",
                     ["#", "reconciliation"], [[str(i + 1), line] for i, line in enumerate(chip["reconciliation"])]
                     + [[f"n{i + 1}", f"note: {n}"] for i, n in enumerate(chip["notes"])]
                     + [[f"g{i + 1}", f"not priced (no published figure): {g}"] for i, g in enumerate(chip["gaps"])],
                     "ll"))
    verdict = "fits" if pl["fits"] else "does NOT fit: " + "; ".join(pl["problems"][:3])
    rows = [[str(lp["part"]), lp["neuron"], _int(lp["neurons"]), str(lp["fan_in"]), _int(lp["neurons_per_core"]),
             _int(lp["cores"]), lp["limited_by"], f"{lp['messages_per_spike']:g}", _g(lp["ew_hops_per_spike"]),
             _g(lp["ns_hops_per_spike"])] for lp in pl["layers"]]
    out.append(Table(f"Fit on {name}: {pl['cores']} core(s), {pl['chips']} chip(s), {pl['tiles']} tile(s); "
                     f"compartments {_pct(pl['compartment_utilisation'])}, synaptic memory "
                     f"{_pct(pl['synaptic_memory_utilisation'])} of the cores used; {verdict}",
                     ["part", "layer", "neurons", "fan-in", "per core", "cores", "limited by", "msgs/spike",
                      "E-W hops/spike", "N-S hops/spike"], rows, "llrrrrlrrr"))
    if layers:
        rows = []
        for row in chip["layers"]:
            en = row["energy_pj"]
            rows.append([str(row["part"]), row["weighted"], row["neuron"], _int(row["synaptic_ops"]),
                         _int(row["neuron_updates_active"]), _int(row["neuron_updates_inactive"]),
                         _int(row["spikes_out"]), _g(en["core_synaptic"] / PJ_PER_UJ),
                         _g((en["core_neuron_active"] + en["core_neuron_inactive"]) / PJ_PER_UJ),
                         _g(en["core_routing"] / PJ_PER_UJ), _g(en["total"] / PJ_PER_UJ),
                         _g(row["exact_45nm_pj"] / PJ_PER_UJ)])
        out.append(Table(f"Core part layers on {name}, µJ per clip (45 nm = the same layers at {host} exact)",
                         ["part", "weighted", "neuron", "syn ops", "active", "inactive", "spikes", "syn µJ",
                          "neuron µJ", "routing µJ", f"{name} µJ", "45 nm µJ"], rows, "lllrrrrrrrrr"))
    return out


def render_table(t: Table) -> str:
    widths = [len(h) for h in t.headers]
    for row in t.rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(vals, widths, t.align, strict=True))

    body = [line(t.headers), "  ".join("-" * w for w in widths)] + [line(r) for r in t.rows]
    return "\n".join([t.title, *(s.rstrip() for s in body)])


def render_terminal(report: Mapping[str, Any], layers: bool = True) -> str:
    """The report as plain-text tables (totals first, then per stage, then per layer)."""
    parts = ["\n".join(header_lines(report))]
    parts += [render_table(t) for t in tables(report, layers=layers)]
    return "\n\n".join(parts)


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as a Markdown document (same tables as the terminal)."""
    out = ["# SVFormer energy report", ""]
    out += [f"- {_md_cell(line)}" for line in header_lines(report)]
    out += ["", "Methods:", ""]
    out += [f"- **{m}**: {_md_cell(report['methods'][m]['label'])}" for m in METHODS]
    out.append(f"- **ANN counterpart**: {_md_cell(report['ann_counterpart']['label'])}")
    for t in tables(report):
        out += ["", f"## {t.title}", ""]
        out.append("| " + " | ".join(_md_cell(h) for h in t.headers) + " |")
        out.append("|" + "|".join("---:" if a == "r" else ":---" for a in t.align) + "|")
        out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(out) + "\n"


CSV_COLUMNS = ["cost_model", "section", "name", "stage", "op", "clips", "firing_rate", "ac", "mac", "mul", "add",
               "neuron_updates", "spikes_out", "weight_reads", "state_reads", "state_writes", "dense_macs",
               "energy_pj_exact", "energy_pj_paper_eq13", "energy_pj_memory_aware", "energy_pj_ann",
               "difference_pj", "reason", "class"]


def render_csv(report: Mapping[str, Any]) -> str:
    """One CSV table, one row per total / stage / layer / clip (``section`` says which); energies in pJ per clip."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    cm = report["cost_model"]["name"]
    meth = report["methods"]
    total = {"cost_model": cm, "section": "total", "name": "all", "clips": report["clips"],
             **{k: meth["memory_aware"][k] for k in ("ac", "mac", "mul", "add", "neuron_updates",
                                                     "weight_reads", "state_reads", "state_writes")},
             "dense_macs": report["ann_counterpart"]["macs"],
             **{f"energy_pj_{m}": meth[m]["energy_mj"] * PJ_PER_MJ for m in METHODS},
             "energy_pj_ann": report["ann_counterpart"]["energy_mj"] * PJ_PER_MJ,
             "difference_pj": report["reconciliation"]["exact_minus_paper_pj"]}
    w.writerow(total)
    for s in report["stages"]:
        w.writerow({"cost_model": cm, "section": "stage", "name": s["stage"], "stage": s["stage"],
                    "clips": report["clips"], "ac": s["ac"], "mac": s["mac"], "spikes_out": s["spikes_out"],
                    "dense_macs": s["dense_macs"],
                    **{f"energy_pj_{m}": s["energy_pj_by_method"][m] for m in METHODS},
                    "energy_pj_ann": s["dense_macs"] * report["cost_model"]["e_mac_pj"],
                    "difference_pj": s["energy_pj_by_method"]["exact"] - s["energy_pj_by_method"]["paper_eq13"]})
    for layer in report["layers"]:
        row = {k: layer.get(k) for k in CSV_COLUMNS if k in layer}
        row.update({"cost_model": cm, "section": "layer", "clips": report["clips"],
                    **{f"energy_pj_{m}": layer["energy_pj_by_method"][m] for m in METHODS},
                    "energy_pj_ann": layer["dense_macs"] * report["cost_model"]["e_mac_pj"]})
        w.writerow(row)
    for c in report["per_clip"]:
        w.writerow({"cost_model": cm, "section": "clip", "name": c["record"], "clips": 1,
                    **{f"energy_pj_{m}": c["energy_mj"][m] * PJ_PER_MJ for m in METHODS},
                    "energy_pj_ann": c["energy_mj"]["ann"] * PJ_PER_MJ,
                    "difference_pj": (c["energy_mj"]["exact"] - c["energy_mj"]["paper_eq13"]) * PJ_PER_MJ,
                    "class": c["class"]})
    chip = report.get("chip")
    if chip:
        for k, v in chip["energy_mj"].items():
            w.writerow({"cost_model": f"{chip['chip']['name']}+{chip['host_cost_model']}", "section": "chip",
                        "name": k, "clips": chip["clips"], "energy_pj_exact": v * PJ_PER_MJ})
    return buf.getvalue()


def write_csv(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write :func:`render_csv` atomically."""
    return write_text_atomic(path, render_csv(report))


def write_markdown(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write :func:`render_markdown` atomically."""
    return write_text_atomic(path, render_markdown(report))
