"""What a study found: tables per structure type, verdicts, label-efficiency curves, HTML.

For every trained structure (its type decides the test cases and metrics):

* a table per metric: mean ± std over seeds (of the per-seed mean over test cases) per arm and
  label budget, with the Otsu threshold as the first row;
* the paired difference of every pretrained arm to scratch of the same mode and budget, with
  its 95 % interval (:mod:`selma3d.study.stats` says how it is computed) and a one-line verdict;
* whether any arm beats the threshold;
* curves of each metric against the label budget, one line per arm, error bars = std over seeds.

Everything lands in ``STUDY/``: ``summary.json``, ``comparisons.csv``, ``curves_<structure>.png``,
``index.html``; :func:`html_section` gives the same content for another page (the demo report).
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..evaluation.metrics import METRICS_BY_TYPE
from ..report.cells import METRIC_LABELS, format_cell
from ..utils.atomic import atomic_path, atomic_write
from . import stats
from .plan import SCRATCH

OTSU = "otsu"
PRIMARY = "dice"


def _labels(value) -> str:
    return "1 label" if str(value) == "1" else f"{value} labels"


def _budget_order(value) -> tuple:
    return (1, 0) if str(value) == "all" else (0, int(value))


def _arm_name(fields: dict, several_models: bool) -> str:
    name = f"{fields['method']} · {fields['mode']}"
    return f"{name} ({fields['model']})" if several_models else name


def analyze(rows: list[dict], confidence: float = 0.95) -> dict:
    """Tables, comparisons, verdicts and headlines per trained structure (module doc)."""
    trained = sorted({r["structure"] for r in rows if r["method"] != OTSU})
    otsu = [r for r in rows if r["method"] == OTSU]
    sections = []
    for structure in trained:
        arm_rows = [r for r in rows if r["structure"] == structure and r["method"] != OTSU]
        kind = arm_rows[0]["type"]
        metrics = list(METRICS_BY_TYPE[kind])
        cases = {stats.case_id(r) for r in arm_rows}
        base = [r for r in otsu if stats.case_id(r) in cases]
        budgets = sorted({str(r["labels"]) for r in arm_rows}, key=_budget_order)
        models = {r["model"] for r in arm_rows}
        groups = stats.groups(arm_rows)
        arms = sorted({(f["model"], f["method"], f["mode"]) for f in
                       (dict(zip(stats.GROUP_FIELDS, k)) for k in groups)},
                      key=lambda a: (a[0], a[1] != SCRATCH, a[1], ["full", "frozen", "linear"].index(a[2])
                                     if a[2] in ("full", "frozen", "linear") else 9))
        table = []
        for model, method, mode in arms:
            fields = {"model": model, "method": method, "mode": mode}
            entry = {**fields, "name": _arm_name(fields, len(models) > 1), "cells": {}}
            for budget in budgets:
                group = groups.get(tuple(str(v) for v in (structure, model, method, mode, budget)), [])
                entry["cells"][budget] = {m: stats.summarize_group(group, m) for m in metrics}
            table.append(entry)
        otsu_cells = {m: {"mean": float(np.mean([r[m] for r in base])) if base else None,
                          "std": None, "n_cases": len(base)} for m in metrics}
        versus_scratch = stats.scratch_comparisons(arm_rows, metrics, confidence)
        versus_otsu = stats.threshold_comparisons(arm_rows + base, metrics, confidence)
        versus_team = stats.best_team_comparisons(arm_rows, metrics, confidence)
        # the same comparisons on each test structure alone (e.g. microglia, never annotated)
        test_structures = sorted({r["test_structure"] for r in arm_rows})
        by_test_structure = {}
        if len(test_structures) > 1:
            for name in test_structures:
                subset = [r for r in arm_rows if r["test_structure"] == name]
                by_test_structure[name] = {"versus_scratch": stats.scratch_comparisons(subset, metrics, confidence),
                                           "versus_team": stats.best_team_comparisons(subset, metrics, confidence)}
        sections.append({
            "structure": structure, "type": kind, "metrics": metrics, "budgets": budgets,
            "test_structures": sorted({r["test_structure"] for r in arm_rows}),
            "test_splits": sorted({r["split"] for r in arm_rows}), "n_cases": len(cases),
            "seeds": sorted({int(r["seed"]) for r in arm_rows}),
            "table": table, "otsu": otsu_cells, "versus_scratch": versus_scratch, "versus_otsu": versus_otsu,
            "versus_team": versus_team, "by_test_structure": by_test_structure,
            "headline": headline(structure, kind, versus_scratch, versus_otsu, table, otsu_cells)
            + team_headline(versus_team, by_test_structure),
        })
    return {"interval": stats.INTERVAL_METHOD, "confidence": confidence, "sections": sections}


def verdict_line(comparison: dict) -> str:
    """``spot · byol · full · 4 labels: better than scratch (Dice +0.051 [+0.012, +0.090])``."""
    label = METRIC_LABELS.get(comparison["metric"], comparison["metric"]).split(" ")[0]
    value = comparison.get("text", "n/a")
    verdict = comparison["verdict"]
    what = f"{verdict} than scratch" if verdict in (stats.BETTER, stats.WORSE) else verdict
    return (f"{comparison['method']} · {comparison['mode']} · {_labels(comparison['labels'])}: "
            f"{what} ({label} {value})")


def team_line(comparison: dict, where: str = "") -> str:
    """``shape · full · 1 label vs best team method (byol): Dice +0.012 [-0.020, +0.044], no ...``."""
    label = METRIC_LABELS.get(comparison["metric"], comparison["metric"]).split(" ")[0]
    return (f"{comparison['method']} · {comparison['mode']} · {_labels(comparison['labels'])}{where} vs "
            f"{comparison['baseline']}: {label} {comparison.get('text', 'n/a')}, {comparison['verdict']}")


def team_headline(versus_team: list[dict], by_test_structure: dict) -> list[str]:
    """One line per non-team method and budget against the best team method (Dice, and on each
    test structure alone when there are several)."""
    lines = [team_line(c) for c in versus_team if c["metric"] == PRIMARY]
    for name, found in by_test_structure.items():
        lines += [team_line(c, f" on {name}") for c in found["versus_team"] if c["metric"] == PRIMARY]
    return lines


def headline(structure: str, kind: str, versus_scratch: list[dict], versus_otsu: list[dict],
             table: list[dict], otsu_cells: dict) -> list[str]:
    """Plain-language answers: did SSL help, and does anything beat a threshold."""
    primary = [c for c in versus_scratch if c["metric"] == PRIMARY]
    counts = {v: sum(c["verdict"] == v for c in primary) for v in
              (stats.BETTER, stats.WORSE, stats.NO_DIFFERENCE, stats.TOO_FEW)}
    lines = []
    if not primary:
        lines.append("No pretrained arm in this study: nothing to compare with scratch.")
    elif counts[stats.TOO_FEW] == len(primary):
        lines.append(f"Cannot tell whether self-supervised pretraining helped on {kind}-like structures: "
                     "one seed gives no interval; run two or more (e.g. --seeds 0,1,2).")
    elif counts[stats.BETTER] == 0:
        lines.append(f"Self-supervised pretraining did NOT help on {kind}-like structures (trained on "
                     f"{structure}): in none of {len(primary)} comparisons was Dice detectably better "
                     f"than from scratch (worse in {counts[stats.WORSE]}, no detectable difference in "
                     f"{counts[stats.NO_DIFFERENCE]}, too few seeds in {counts[stats.TOO_FEW]}).")
    else:
        helped = [f"{c['method']} · {c['mode']} · {_labels(c['labels'])}" for c in primary
                  if c["verdict"] == stats.BETTER]
        lines.append(f"Self-supervised pretraining helped on {kind}-like structures (trained on {structure}) "
                     f"in {counts[stats.BETTER]} of {len(primary)} comparisons (Dice): {', '.join(helped)}; "
                     f"worse in {counts[stats.WORSE]}, no detectable difference in {counts[stats.NO_DIFFERENCE]}.")
    otsu_dice = otsu_cells.get(PRIMARY, {}).get("mean")
    best = max(((cell[PRIMARY]["mean"], entry["name"], budget) for entry in table
                for budget, cell in entry["cells"].items() if cell[PRIMARY]["mean"] is not None), default=None)
    beating = [f"{c['method']} · {c['mode']} · {_labels(c['labels'])}" for c in versus_otsu
               if c["metric"] == PRIMARY and c["verdict"] == stats.BETTER]
    if otsu_dice is not None and best is not None:
        if beating:
            lines.append(f"{len(beating)} arm(s) detectably beat an Otsu threshold (Dice {otsu_dice:.3f}); "
                         f"best: {best[1]} with {_labels(best[2])}, Dice {best[0]:.3f}.")
        else:
            lines.append(f"No arm detectably beats an Otsu threshold of the raw image (Dice {otsu_dice:.3f}); "
                         f"best: {best[1]} with {_labels(best[2])}, Dice {best[0]:.3f}.")
    return lines


# ------------------------------------------------------------------------------- files
def plot_curves(section: dict, path: Path) -> Path:
    """Metric vs label budget, one line per arm (error bars: std over seeds); Otsu dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, budgets = section["metrics"], section["budgets"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    x = np.arange(len(budgets))
    for ax, metric in zip(axes[0], metrics):
        for i, entry in enumerate(section["table"]):
            means = [entry["cells"][b][metric]["mean"] for b in budgets]
            stds = [entry["cells"][b][metric]["std"] or 0.0 for b in budgets]
            means = [np.nan if m is None else m for m in means]
            style = "-" if entry["method"] != SCRATCH else "--"
            ax.errorbar(x + (i - len(section["table"]) / 2) * 0.03, means, yerr=stds, marker="o", ls=style,
                        capsize=3, lw=1.3, ms=4, label=entry["name"])
        otsu = section["otsu"][metric]["mean"]
        if otsu is not None:
            ax.axhline(otsu, color="black", ls=":", lw=1, label="Otsu threshold")
        ax.set_xticks(x, budgets)
        ax.set_xlabel("training patches (labels)")
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{section['structure']} → {', '.join(section['test_structures'])} ({section['type']}-like): "
                 f"mean ± std over seeds {section['seeds']}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return path


def _cell(stat: dict) -> str:
    return format_cell(stat) if stat and stat.get("mean") is not None else "–"


def html_section(analysis: dict, image_dir: str = "") -> str:
    """The study as an HTML fragment: headlines, tables, comparisons, curves (``image_dir``/PNG)."""
    parts = ["<h2>Does self-supervised pretraining pay? (selma3d study)</h2>",
             f"<p>Intervals: {html.escape(analysis['interval'])}. Verdicts on Dice; the other metrics are in "
             "the difference tables. Every arm has the same steps, batch, crops, seeds and training patches; "
             "each uses the finetuning library's default schedule for its initialization (recorded per arm "
             "in arms/&lt;arm&gt;.json).</p>"]
    for section in analysis["sections"]:
        budgets = section["budgets"]
        parts.append(f"<h3>{html.escape(section['type'])}-like: trained on {html.escape(section['structure'])}, "
                     f"tested on {html.escape(', '.join(section['test_structures']))} "
                     f"({html.escape(', '.join(section['test_splits']))}; {section['n_cases']} cases, "
                     f"seeds {section['seeds']})</h3>")
        parts.append("<ul>" + "".join(f"<li><b>{html.escape(line)}</b></li>" for line in section["headline"])
                     + "</ul>")
        parts.append(f"<img src='{image_dir}curves_{html.escape(section['structure'])}.png'>")
        for metric in section["metrics"]:
            parts.append(f"<h4>{METRIC_LABELS.get(metric, metric)}: mean ± std over seeds</h4><table><tr>"
                         "<th>arm</th>" + "".join(f"<th>{_labels(b)}</th>" for b in budgets) + "</tr>")
            parts.append("<tr><td>Otsu threshold (no training)</td>"
                         + "".join(f"<td>{_cell(section['otsu'][metric])}</td>" for _ in budgets) + "</tr>")
            for entry in section["table"]:
                parts.append(f"<tr><td>{html.escape(entry['name'])}</td>"
                             + "".join(f"<td>{_cell(entry['cells'][b][metric])}</td>" for b in budgets) + "</tr>")
            parts.append("</table>")
        comparisons = section["versus_scratch"]
        if comparisons:
            parts.append("<h4>Pretrained − scratch (same mode, budget, seeds and test cases): difference "
                         "[95 % interval] and verdict</h4><table><tr><th>arm</th><th>labels</th>"
                         + "".join(f"<th>{METRIC_LABELS.get(m, m)}</th>" for m in section["metrics"]) + "</tr>")
            keyed: dict[tuple, dict] = {}
            for c in comparisons:
                keyed.setdefault((c["model"], c["method"], c["mode"], c["labels"]), {})[c["metric"]] = c
            for (model, method, mode, labels), by_metric in sorted(keyed.items(), key=lambda kv: (
                    kv[0][:3], _budget_order(kv[0][3]))):
                cells = "".join(f"<td>{html.escape(by_metric[m].get('text', '–'))}<br><i>"
                                f"{html.escape(by_metric[m]['verdict'])}</i></td>" for m in section["metrics"])
                parts.append(f"<tr><td>{html.escape(method)} · {html.escape(mode)}</td><td>{labels}</td>{cells}</tr>")
            parts.append("</table><h4>Verdicts (Dice)</h4><ul>" + "".join(
                f"<li>{html.escape(verdict_line(c))}</li>" for c in comparisons if c["metric"] == PRIMARY)
                + "</ul>")
        team = section.get("versus_team", []) + [c | {"where": name} for name, found in
                                                 section.get("by_test_structure", {}).items()
                                                 for c in found["versus_team"]]
        if team:
            parts.append("<h4>Beyond the five team methods: each other method − the best team method of the same "
                         "mode and budget (difference [95 % interval], verdict)</h4><table><tr><th>arm</th>"
                         "<th>labels</th><th>tested on</th><th>baseline</th><th>metric</th><th>difference</th>"
                         "<th>verdict</th></tr>")
            for c in team:
                parts.append(f"<tr><td>{html.escape(c['method'])} · {html.escape(c['mode'])}</td><td>{c['labels']}</td>"
                             f"<td>{html.escape(c.get('where', 'all test cases'))}</td><td>{html.escape(c['baseline'])}</td>"
                             f"<td>{html.escape(METRIC_LABELS.get(c['metric'], c['metric']))}</td>"
                             f"<td>{html.escape(c.get('text', '–'))}</td><td>{html.escape(c['verdict'])}</td></tr>")
            parts.append("</table>")
    return "\n".join(parts)


def comparisons_csv(analysis: dict) -> str:
    fields = ["baseline", "structure", "model", "method", "mode", "labels", "tested_on", "metric", "difference",
              "low", "high", "n_seeds", "verdict"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for section in analysis["sections"]:
        rows = [r | {"tested_on": "all"} for r in section["versus_scratch"] + section["versus_otsu"]
                + section.get("versus_team", [])]
        for name, found in section.get("by_test_structure", {}).items():
            rows += [r | {"tested_on": name} for r in found["versus_scratch"] + found["versus_team"]]
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in fields})
    return buffer.getvalue()


def write_report(out: str | os.PathLike, rows: list[dict], title: str = "selma3d study") -> dict:
    """Write summary.json, comparisons.csv, curves PNGs and index.html into ``out``; returns the analysis."""
    out = Path(out)
    analysis = analyze(rows)
    for section in analysis["sections"]:
        plot_curves(section, out / f"curves_{section['structure']}.png")
    atomic_write(out / "summary.json", json.dumps(analysis, indent=2, default=str) + "\n")
    atomic_write(out / "comparisons.csv", comparisons_csv(analysis))
    page = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;"
            "margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
            "td:first-child{text-align:left}img{max-width:100%}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>", html_section(analysis),
            "<p>Every row: <a href='results.csv'>results.csv</a>; comparisons: "
            "<a href='comparisons.csv'>comparisons.csv</a>.</p></body></html>"]
    atomic_write(out / "index.html", "\n".join(page))
    return analysis


def embed_study(study: str | os.PathLike, figure_dir: str | os.PathLike, image_prefix: str = "figures/") -> str:
    """A finished study's HTML section for another page (the demo's report): reads
    ``STUDY/summary.json`` and copies its curve PNGs into ``figure_dir``."""
    from ..errors import InputError

    study, figure_dir = Path(study), Path(figure_dir)
    try:
        analysis = json.loads((study / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"--study {study}: not a finished `selma3d study` folder ({exc})") from None
    figure_dir.mkdir(parents=True, exist_ok=True)
    for png in sorted(study.glob("curves_*.png")):
        shutil.copy2(png, figure_dir / png.name)
    return html_section(analysis, image_dir=image_prefix)


def text_summary(analysis: dict) -> str:
    """Headlines and Dice verdicts, for the terminal."""
    lines = [f"intervals: {analysis['interval']}"]
    for section in analysis["sections"]:
        lines.append(f"{section['type']}-like (trained on {section['structure']}, tested on "
                     f"{', '.join(section['test_structures'])}):")
        lines += [f"  {line}" for line in section["headline"]]
        lines += [f"  - {verdict_line(c)}" for c in section["versus_scratch"] if c["metric"] == PRIMARY]
    return "\n".join(lines)
