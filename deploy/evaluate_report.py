"""Rendering the evaluation report (:func:`deploy.evaluate.summarise`): terminal, Markdown, CSV, HTML with plots.

The tables are the same everywhere: accuracy, energy and firing rate per condition (clean and every
noise level, the paper's Table 2 with energy), the early-exit sweep, accuracy per class and the
confusion matrix. The HTML page adds three plots (accuracy and energy per noise level, accuracy vs
energy of the early-exit sweep, the confusion matrix) and marks itself once every image decoded,
like the energy report (:mod:`deploy.energy.html`).
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Mapping
from typing import Any

from .energy.html import _CSS, _SCRIPT, METHOD_COLORS, _figure, _html_table, _png
from .energy.methods import METHODS
from .energy.report import Table, render_table

INDEX = "index.html"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _mj(x: float) -> str:
    return f"{x:.4g}"


def header_lines(r: Mapping[str, Any]) -> list[str]:
    lines = [f"Evaluation of {r['model']['bundle']} (hash {r['model']['hash'][:12]}) on {r['source']}: "
             f"{r['clips']} clip(s), {len(r['failed'])} failed; {r['executor']} executor ({r['precision']}), "
             f"views {r['views'][0]}x{r['views'][1]}, T={r['time_steps']}, noise seed {r['seed']}, "
             f"cost model {r['cost_model']}"]
    if "agreement_with_float" in r:
        lines.append(f"integer vs float graph (clean): top-1 {_pct(r['conditions'][0]['top1'])} vs "
                     f"{_pct(r['float_top1'])}, same top-1 prediction on {_pct(r['agreement_with_float'])} of clips")
    if r["failed"]:
        lines.append(f"skipped {len(r['failed'])} clip(s): " + "; ".join(
            f"{f['clip']}: {f['reason']}" for f in r["failed"][:3]) + (" ..." if len(r["failed"]) > 3 else ""))
    return lines


def tables(r: Mapping[str, Any]) -> list[Table]:
    """The report's tables in reading order."""
    out = []
    rows = [[c["condition"], _pct(c["top1"]), _pct(c["top5"]), *(_mj(c["energy_mj"][m]) for m in METHODS),
             _pct(c["firing_rate"])] for c in r["conditions"]]
    out.append(Table(f"Accuracy and energy per clip by input condition ({r['clips']} clips; noise as in the "
                     "paper's Table 2)", ["condition", "top-1", "top-5", *(f"{m} mJ" for m in METHODS),
                                          "firing rate"], rows, "lrrrrrr"))
    full = r["full_energy_mj"]
    rows = [["no exit (T steps)", "-", str(r["time_steps"]), _pct(r["conditions"][0]["top1"]),
             *(_mj(full[m]) for m in METHODS), "0.00%"]]
    for s in r["early_exit"]:
        rows.append([f"{s['margin']:g}", str(s["k"]), f"{s['mean_exit_step']:.2f}", _pct(s["top1"]),
                     *(_mj(s["energy_mj"][m]) for m in METHODS), _pct(s["saved"]["exact"])])
    out.append(Table("Early exit (clean): stop when the softmax margin p1-p2 >= m for k steps; energy up to the "
                     "exit step, read-outs included", ["margin m", "k", "mean steps", "top-1",
                                                       *(f"{m} mJ" for m in METHODS), "saved (exact)"],
                     rows, "lrrrrrrr"))
    rows = [[c["class"], str(c["clips"]), _pct(c["top1"]), _pct(c["top5"])] for c in r["per_class"]]
    out.append(Table("Per class (clean)", ["class", "clips", "top-1", "top-5"], rows, "lrrr"))
    names = r["classes"]
    rows = [[names[i], *(str(v) for v in row)] for i, row in enumerate(r["confusion"])]
    out.append(Table("Confusion matrix (clean; rows: true class, columns: predicted)", ["true \\ predicted", *names],
                     rows, "l" + "r" * len(names)))
    return out


def render_terminal(r: Mapping[str, Any]) -> str:
    return "\n\n".join(["\n".join(header_lines(r)), *(render_table(t) for t in tables(r))])


def render_markdown(r: Mapping[str, Any]) -> str:
    out = ["# SVFormer evaluation", ""] + [f"- {line}" for line in header_lines(r)]
    out += ["", f"- anytime logits: {r['anytime']}"]
    for t in tables(r):
        out += ["", f"## {t.title}", "", "| " + " | ".join(t.headers) + " |",
                "|" + "|".join("---:" if a == "r" else ":---" for a in t.align) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in t.rows]
    return "\n".join(out) + "\n"


CSV_COLUMNS = ["section", "name", "k", "clips", "top1", "top5", "mean_exit_step", "energy_mj_exact",
               "energy_mj_paper_eq13", "energy_mj_memory_aware", "firing_rate", "saved_exact", "label",
               "prediction", "float_prediction"]


def render_csv(r: Mapping[str, Any]) -> str:
    """One CSV table: rows of section condition / early_exit / class / clip."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for c in r["conditions"]:
        w.writerow({"section": "condition", "name": c["condition"], "clips": c["clips"], "top1": c["top1"],
                    "top5": c["top5"], "firing_rate": c["firing_rate"],
                    **{f"energy_mj_{m}": c["energy_mj"][m] for m in METHODS}})
    for s in r["early_exit"]:
        w.writerow({"section": "early_exit", "name": s["margin"], "k": s["k"], "clips": r["clips"], "top1": s["top1"],
                    "mean_exit_step": s["mean_exit_step"], "saved_exact": s["saved"]["exact"],
                    **{f"energy_mj_{m}": s["energy_mj"][m] for m in METHODS}})
    for c in r["per_class"]:
        w.writerow({"section": "class", "name": c["class"], "clips": c["clips"], "top1": c["top1"], "top5": c["top5"]})
    for p in r["predictions"]:
        w.writerow({"section": "clip", "name": p["clip"], "label": p["label"], "prediction": p["prediction"],
                    "float_prediction": p.get("float_prediction", "")})
    return buf.getvalue()


# -- plots ------------------------------------------------------------------------------------
def plot_noise(r: Mapping[str, Any]) -> str:
    """Top-1 accuracy (left) and energy per clip by method (right) for every input condition."""
    fig = _figure(10, 3.6)
    ax, ex = fig.subplots(1, 2)
    conds = r["conditions"]
    labels = [c["condition"] for c in conds]
    x = range(len(conds))
    ax.bar(x, [100 * c["top1"] for c in conds], color=["#2ca02c"] + ["#ff7f0e" if c["noise"] == "gaussian"
                                                                     else "#9467bd" for c in conds[1:]])
    ax.set_xticks(list(x), labels, rotation=30, fontsize=7, ha="right")
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy under input noise", fontsize=9)
    width = 0.8 / len(METHODS)
    for i, m in enumerate(METHODS):
        ex.bar([v + (i - 1) * width for v in x], [c["energy_mj"][m] for c in conds], width=width,
               color=METHOD_COLORS[m], label=m)
    ex.set_xticks(list(x), labels, rotation=30, fontsize=7, ha="right")
    ex.set_ylabel("energy per clip (mJ)")
    ex.set_title("Energy per clip under input noise", fontsize=9)
    ex.legend(fontsize=7, frameon=False)
    return _png(fig)


def plot_early_exit(r: Mapping[str, Any]) -> str:
    """Accuracy vs energy per clip of the early-exit sweep (one curve per method; labels = margin m)."""
    fig = _figure(10, 3.8)
    ax = fig.subplots()
    sweep = r["early_exit"]
    for m in METHODS:
        xs = [s["energy_mj"][m] for s in sweep] + [r["full_energy_mj"][m]]
        ys = [100 * s["top1"] for s in sweep] + [100 * r["conditions"][0]["top1"]]
        ax.plot(xs, ys, marker="o", color=METHOD_COLORS[m], label=m)
        ax.plot(xs[-1:], ys[-1:], marker="*", markersize=12, color=METHOD_COLORS[m])
    for s in sweep:
        ax.annotate(f"{s['margin']:g}", (s["energy_mj"]["exact"], 100 * s["top1"]), fontsize=6,
                    textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("energy per clip (mJ)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"Early exit: accuracy vs energy over the margin m (k = {sweep[0]['k'] if sweep else 1}); "
                 "star: all T steps without exit", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def plot_confusion(r: Mapping[str, Any]) -> str:
    """The clean confusion matrix as a heat map."""
    import numpy as np

    names = r["classes"]
    size = min(9.0, 2.5 + 0.35 * len(names))
    fig = _figure(size + 1.5, size)
    ax = fig.subplots()
    m = np.asarray(r["confusion"], dtype=float)
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true class")
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] < m.max() / 2 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title("Confusion matrix (clean)", fontsize=9)
    return _png(fig)


PLOTS = (("Accuracy and energy per input condition", plot_noise),
         ("Early exit: accuracy vs energy per clip", plot_early_exit),
         ("Confusion matrix", plot_confusion))


def html_sections(r: Mapping[str, Any], level: int = 2) -> list[str]:
    """The report's header lines, tables and plots as HTML fragments (headings ``<h{level}>``)."""
    parts = [f"<p class=\"meta\">{html.escape(line)}</p>" for line in header_lines(r)]
    parts.append(f"<p class=\"meta\">anytime logits: {html.escape(r['anytime'])}</p>")
    figures = {title: fn(r) for title, fn in PLOTS}
    t = tables(r)
    order = [(t[0], "Accuracy and energy per input condition"), (t[1], "Early exit: accuracy vs energy per clip"),
             (t[2], None), (t[3], "Confusion matrix")]
    for table, fig in order:
        parts += [f"<h{level}>{html.escape(table.title)}</h{level}>", _html_table(table)]
        if fig:
            parts.append(f"<figure><img alt=\"{html.escape(fig)}\" src=\"{figures[fig]}\">"
                         f"<figcaption class=\"meta\">{html.escape(fig)}</figcaption></figure>")
    return parts


STATUS = "<p id=\"plot-status\" class=\"status\" data-ok=\"0\" data-total=\"0\">plots not checked</p>"


def render_html(r: Mapping[str, Any], title: str = "SVFormer evaluation") -> str:
    """The whole page (plots as PNG data URIs, no external resources)."""
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">", f"<title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>", *html_sections(r), STATUS,
             f"<script>{_SCRIPT}</script></body></html>"]
    return "\n".join(parts)


def append_to_page(page: str, r: Mapping[str, Any], title: str = "Evaluation on the held-out split") -> str:
    """``page`` (an energy-report page of :mod:`deploy.energy.html`) with this report added before its end."""
    if STATUS not in page:
        raise ValueError("not a report page (no plot-status marker)")
    section = "\n".join([f"<h1>{html.escape(title)}</h1>", *html_sections(r)])
    return page.replace(STATUS, section + "\n" + STATUS, 1)


__all__ = ["INDEX", "PLOTS", "append_to_page", "header_lines", "html_sections", "render_csv", "render_html",
           "render_markdown", "render_terminal", "tables"]
