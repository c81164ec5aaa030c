"""The energy report as one self-contained HTML page with plots (matplotlib Agg, PNGs as data URIs).

Plots: firing rate per neuron layer and its histogram, learned membrane time constants per layer
(the paper's Fig. 3), energy by stage split into AC / MAC / other / memory, spikes per time step,
SNN vs ANN energy, and where the exact and paper methods differ. Nothing is loaded from the
network; a small script marks the page (title and ``#plot-status``) once every image decoded, which
the screenshot test reads back.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from svformer_deploy.svformer.fileio import write_text_atomic

from .methods import METHODS
from .report import Table, cost_model_line, header_lines, tables

PJ_PER_UJ = 1e6
STAGE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf", "#393b79", "#637939"]
TERM_COLORS = {"AC": "#1f77b4", "MAC": "#d62728", "other": "#ff7f0e", "memory": "#7f7f7f"}
METHOD_COLORS = {"exact": "#1f77b4", "paper_eq13": "#2ca02c", "memory_aware": "#9467bd", "ANN": "#d62728"}
INDEX = "index.html"


def _figure(width: float = 9.0, height: float = 3.6):
    from matplotlib.figure import Figure  # object API: no pyplot state, renders with Agg

    fig = Figure(figsize=(width, height), dpi=96, layout="constrained")
    return fig


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _stage_colors(stages: list[str]) -> dict[str, str]:
    return {s: STAGE_COLORS[i % len(STAGE_COLORS)] for i, s in enumerate(dict.fromkeys(stages))}


def _legend_for_stages(ax, colors: Mapping[str, str]) -> None:
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=s) for s, c in colors.items()], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.0, 1.0), frameon=False, title="stage", title_fontsize=7)


def plot_firing_rates(report: Mapping[str, Any]) -> str:
    """Firing rate per neuron layer (bars, coloured by stage, error bars = std over clips) and its histogram."""
    neurons = [x for x in report["layers"] if x["firing_rate"] is not None]
    fig = _figure(10, 3.8)
    ax, hx = fig.subplots(1, 2, width_ratios=[3, 1])
    colors = _stage_colors([x["stage"] for x in report["layers"]])
    rates = [100 * x["firing_rate"] for x in neurons]
    err = [100 * x.get("firing_rate_std", 0.0) for x in neurons]
    ax.bar(range(len(neurons)), rates, color=[colors[x["stage"]] for x in neurons],
           yerr=err if report["clips"] > 1 else None, error_kw={"elinewidth": 0.6})
    ax.set_xticks(range(len(neurons)), [x["name"] for x in neurons], rotation=90, fontsize=5)
    ax.set_ylabel("firing rate (%)")
    ax.set_title(f"Firing rate per neuron layer (mean over {report['clips']} clip(s))", fontsize=9)
    _legend_for_stages(ax, {s: c for s, c in colors.items() if any(x["stage"] == s for x in neurons)})
    hx.hist(rates, bins=min(20, max(5, len(rates) // 2)), color="#1f77b4", edgecolor="white")
    hx.set_xlabel("firing rate (%)")
    hx.set_ylabel("neuron layers")
    hx.set_title("Histogram", fontsize=9)
    return _png(fig)


def plot_tau(report: Mapping[str, Any]) -> str:
    """Learned membrane time constant tau = 1/k per neuron layer (the paper's Fig. 3)."""
    neurons = [x for x in report["layers"] if x["firing_rate"] is not None]
    fig = _figure(10, 3.4)
    ax = fig.subplots()
    colors = _stage_colors([x["stage"] for x in report["layers"]])
    taus = [x["tau"] if x["tau"] is not None else 0.0 for x in neurons]
    ax.bar(range(len(neurons)), taus, color=[colors[x["stage"]] for x in neurons])
    ax.axhline(2.0, color="black", lw=0.6, ls="--", label="init tau 2.0")
    ax.set_xticks(range(len(neurons)), [x["name"] for x in neurons], rotation=90, fontsize=5)
    ax.set_ylabel("tau (time steps)")
    ax.set_title("Membrane time constant per neuron layer (learned for PLIF)", fontsize=9)
    _legend_for_stages(ax, {s: c for s, c in colors.items() if any(x["stage"] == s for x in neurons)})
    return _png(fig)


def plot_energy_by_stage(report: Mapping[str, Any]) -> str:
    """Exact energy per stage split into AC / MAC / other (mul, add, neuron updates) / memory, µJ.

    Left: all four terms stacked (the memory_aware total); right: the compute terms alone (the
    exact total) with the paper_eq13 total per stage as diamonds.
    """
    stages = report["stages"]
    fig = _figure(11, 3.8)
    axes = fig.subplots(1, 2)
    x = list(range(len(stages)))
    for ax, terms in ((axes[0], ("AC", "MAC", "other", "memory")), (axes[1], ("AC", "MAC", "other"))):
        bottom = [0.0] * len(stages)
        for term in terms:
            vals = [s["energy_pj"][term.lower()] / PJ_PER_UJ for s in stages]
            ax.bar(x, vals, bottom=bottom, color=TERM_COLORS[term], label=term)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_xticks(x, [s["stage"] for s in stages], fontsize=8)
        ax.set_ylabel("µJ per clip")
    axes[1].plot(x, [s["energy_pj_by_method"]["paper_eq13"] / PJ_PER_UJ for s in stages], "D", color="#2ca02c",
                 label="paper_eq13")
    cm = report["cost_model"]["name"]
    axes[0].set_title(f"Energy by stage incl. memory (memory_aware) [cost model {cm}]", fontsize=9)
    axes[1].set_title(f"Compute only (exact) vs paper_eq13 [cost model {cm}]", fontsize=9)
    axes[0].legend(fontsize=7, frameon=False)
    axes[1].legend(fontsize=7, frameon=False)
    return _png(fig)


def plot_activity(report: Mapping[str, Any]) -> str:
    """Spikes emitted per time step (all neuron layers, stacked by stage; mean over clips)."""
    act = report["activity"]
    T = act["time_steps"]
    fig = _figure(9, 3.4)
    ax = fig.subplots()
    colors = _stage_colors([x["stage"] for x in report["layers"]])
    bottom = [0.0] * T
    for stage, row in act["spikes_per_step_by_stage"].items():
        ax.bar(range(T), row, bottom=bottom, color=colors[stage], label=stage)
        bottom = [b + v for b, v in zip(bottom, row, strict=True)]
    ax.set_xticks(range(T))
    ax.set_xlabel("time step")
    ax.set_ylabel("spikes")
    ax.set_title("Activity: spikes per time step, by stage", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="stage", title_fontsize=7)
    return _png(fig)


def plot_snn_vs_ann(report: Mapping[str, Any]) -> str:
    """Energy per clip of each method and of the ANN counterpart (log scale), with the SNN/ANN ratio."""
    names = [*METHODS, "ANN"]
    vals = [report["methods"][m]["energy_mj"] for m in METHODS] + [report["ann_counterpart"]["energy_mj"]]
    fig = _figure(7, 3.4)
    ax = fig.subplots()
    bars = ax.bar(names, vals, color=[METHOD_COLORS[n] for n in names])
    if all(v > 0 for v in vals):
        ax.set_yscale("log")
    for bar, m in zip(bars, names, strict=True):
        ratio = report["methods"][m]["snn_ann_ratio"] if m in report["methods"] else 1.0
        ax.annotate(f"{bar.get_height():.4g} mJ\n{100 * ratio:.2f}% of ANN" if ratio is not None else "",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("mJ per clip")
    ax.set_title(f"SNN vs ANN counterpart [cost model {report['cost_model']['name']}]", fontsize=9)
    ax.margins(y=0.25)
    return _png(fig)


def plot_reconciliation(report: Mapping[str, Any]) -> str:
    """exact - paper_eq13 per reason (µJ per clip): where the two methods part ways."""
    rows = report["reconciliation"]["by_reason"]
    fig = _figure(9, 0.5 + 0.35 * max(len(rows), 2))
    ax = fig.subplots()
    vals = [r["difference_pj"] / PJ_PER_UJ for r in rows]
    ax.barh([r["reason"] for r in rows], vals, color=["#d62728" if v > 0 else "#2ca02c" for v in vals])
    ax.axvline(0, color="black", lw=0.6)
    ax.invert_yaxis()
    ax.set_xlabel("exact - paper_eq13 (µJ per clip)")
    ax.set_title("Reconciliation by reason", fontsize=9)
    return _png(fig)


CHIP_TERM_COLORS = {"core_synaptic": "#1f77b4", "core_neuron_active": "#ff7f0e", "core_neuron_inactive": "#ffbb78",
                    "core_routing": "#2ca02c", "host": "#7f7f7f", "boundary_io": "#e377c2"}


def plot_chip_split(report: Mapping[str, Any]) -> str:
    """The chip bill as one stacked bar (core synaptic / neuron / routing, host, boundary I/O) beside the pure
    45 nm methods (mJ per clip)."""
    from .chip_bill import TERMS

    chip = report["chip"]
    e = chip["energy_mj"]
    name, host = chip["chip"]["name"], chip["host_cost_model"]
    fig = _figure(9, 3.8)
    ax = fig.subplots()
    bottom = 0.0
    for k in TERMS:
        ax.bar([f"{name} + {host} host"], [e[k]], bottom=[bottom], color=CHIP_TERM_COLORS[k],
               label=chip["term_labels"][k])
        bottom += e[k]
    ax.annotate(f"{e['total']:.4g} mJ", (0, e["total"]), ha="center", va="bottom", fontsize=7)
    for m, v in chip["pure_45nm_mj"].items():
        bar = ax.bar([f"pure {host}\n{m}"], [v], color=METHOD_COLORS[m])[0]
        ax.annotate(f"{v:.4g} mJ", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("mJ per clip")
    ax.set_title(f"Partition priced part by part on {name} vs the whole network at 45 nm ({host})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.margins(y=0.15)
    return _png(fig)


PLOTS = (
    ("Firing rate per layer and its histogram", plot_firing_rates),
    ("Membrane time constants per layer (Fig. 3 of the paper)", plot_tau),
    ("Energy by stage: AC / MAC / other / memory", plot_energy_by_stage),
    ("Activity per time step", plot_activity),
    ("SNN vs ANN", plot_snn_vs_ann),
    ("Where exact and paper_eq13 differ", plot_reconciliation),
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 6px}
th{background:#f3f3f3}td.r{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:12px 0}img{max-width:100%;border:1px solid #eee}
.meta{font-size:13px;color:#444}.status{font-size:11px;color:#888}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var el = document.getElementById('plot-status');
  el.setAttribute('data-ok', String(ok));
  el.setAttribute('data-total', String(imgs.length));
  el.textContent = 'plots rendered: ' + ok + '/' + imgs.length;
  var boxes = imgs.map(function (i) {
    var r = i.getBoundingClientRect();
    return [Math.round(r.left + window.scrollX), Math.round(r.top + window.scrollY), Math.round(r.width),
            Math.round(r.height)];
  });
  el.setAttribute('data-boxes', JSON.stringify(boxes));
  el.setAttribute('data-page-height', String(document.documentElement.scrollHeight));
  document.title = document.title + ' [plots ' + ok + '/' + imgs.length + ']';
});
"""


def _html_table(t: Table, css_class: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(f"<td class=\"{'r' if a == 'r' else 'l'}\">{html.escape(c)}</td>"
                                    for c, a in zip(row, t.align, strict=True)) + "</tr>" for row in t.rows)
    attr = f' class="{css_class}"' if css_class else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: Mapping[str, Any]) -> str:
    """The whole page as one string (images embedded as PNG data URIs, no external resources)."""
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<title>SVFormer energy report</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>SVFormer energy report</h1>"]
    parts += [f"<p class=\"meta\">{html.escape(line)}</p>" for line in header_lines(report)]
    parts.append("<ul class=\"meta\">" + "".join(
        f"<li><b>{m}</b>: {html.escape(report['methods'][m]['label'])}</li>" for m in METHODS)
        + f"<li><b>ANN counterpart</b>: {html.escape(report['ann_counterpart']['label'])}</li></ul>")
    all_tables = tables(report)
    parts += [f"<h2>{html.escape(all_tables[0].title)}</h2>", _html_table(all_tables[0])]
    if report.get("chip"):
        chip = report["chip"]
        title = f"Chip bill: core parts on {chip['chip']['name']}, host parts on {chip['host_cost_model']}"
        parts.append(f"<section id=\"chip-split\"><h2>{html.escape(title)}</h2>")
        parts.append(f"<figure><img alt=\"{html.escape(title)}\" src=\"{plot_chip_split(report)}\">"
                     f"<figcaption class=\"meta\">{html.escape(title)}</figcaption></figure>")
        parts += [f"<h3>{html.escape(t.title)}</h3>" + _html_table(t) for t in all_tables[1:3]]
        parts.append("</section>")
        all_tables = all_tables[:1] + all_tables[3:]
    parts.append("<h2>Plots</h2>")
    for title, fn in PLOTS:
        parts.append(f"<figure><img alt=\"{html.escape(title)}\" src=\"{fn(report)}\">"
                     f"<figcaption class=\"meta\">{html.escape(title)}</figcaption></figure>")
    for t in all_tables[1:]:
        big = len(t.rows) > 40
        parts.append(f"<h2>{html.escape(t.title)}</h2>")
        parts.append(("<details><summary>show all rows</summary>" if big else "") + _html_table(t)
                     + ("</details>" if big else ""))
    parts.append(f"<p class=\"meta\">{html.escape(cost_model_line(report))}</p>")
    parts.append("<p id=\"plot-status\" class=\"status\" data-ok=\"0\" data-total=\"0\">plots not checked</p>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def write_html(report: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write the page to ``out_dir/index.html`` atomically; returns its path."""
    return write_text_atomic(Path(out_dir) / INDEX, render_html(report))
