"""A self-contained HTML report: the challenge summary table, per-case metrics and overlays.

One page a lab can open in a browser after a run: per structure type the metrics as
mean ± std (the paper's Tables 4/5 layout), every case with its numbers and a figure of the
prediction (red) over the image with the ground truth (green).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from ..errors import InputError
from ..io.nifti import read_nifti_array
from ..utils.atomic import atomic_write
from .cells import METRIC_LABELS, format_cell
from .figures import overlay_figure

SUFFIXES = ("", "_img", "_label", "_pred", "_mask")


def find_case_file(folder: str | os.PathLike | None, case: str, suffixes=SUFFIXES) -> Path | None:
    """The NIfTI file for ``case`` in ``folder`` (searched recursively), trying common suffixes."""
    if folder is None:
        return None
    folder = Path(folder)
    if folder.is_file():
        return folder
    for suffix in suffixes:
        for ext in (".nii.gz", ".nii"):
            hits = sorted(folder.rglob(f"{case}{suffix}{ext}"))
            if hits:
                return hits[0]
    return None


def build_report(metrics_json: str | os.PathLike, out_dir: str | os.PathLike,
                 pred: str | os.PathLike | None = None, gt: str | os.PathLike | None = None,
                 images: str | os.PathLike | None = None, title: str = "selma3d report",
                 max_figures: int = 24, study: str | os.PathLike | None = None) -> Path:
    """Write ``out_dir/index.html`` (+ PNG figures) from an ``evaluate`` metrics JSON; ``study``
    (a finished ``selma3d study`` folder) adds its SSL-vs-scratch section."""
    metrics_json = Path(metrics_json)
    try:
        metrics = json.loads(metrics_json.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{metrics_json}: cannot read metrics JSON ({exc})") from None
    if "cases" not in metrics:
        raise InputError(f"{metrics_json}: not a selma3d metrics file (no 'cases')")
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    images = images if images is not None else gt

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
             "th{background:#eee}td:first-child{text-align:left}img{max-width:100%}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    summary = metrics.get("summary", {})
    for kind in ("spot", "tree"):
        if kind not in summary:
            continue
        cols = [m for m in METRIC_LABELS if m in summary[kind]]
        n = max((summary[kind][m].get("n", 0) for m in cols), default=0)
        parts.append(f"<h2>{kind}-like structures (n = {n})</h2><table><tr>"
                     + "".join(f"<th>{METRIC_LABELS[m]}</th>" for m in cols) + "</tr><tr>"
                     + "".join(f"<td>{format_cell(summary[kind][m])}</td>" for m in cols) + "</tr></table>")
    if study is not None:
        from ..study.report import embed_study

        parts.append(embed_study(study, fig_dir))
    failures = metrics.get("failures", [])
    if failures:
        parts.append("<h2>Cases that could not be scored</h2><ul>" + "".join(
            f"<li>{html.escape(str(f.get('case')))}: {html.escape(str(f.get('error')))}</li>" for f in failures)
            + "</ul>")
    cols = list(METRIC_LABELS)
    parts.append("<h2>Cases</h2><table><tr><th>case</th><th>structure</th>"
                 + "".join(f"<th>{METRIC_LABELS[m]}</th>" for m in cols) + "</tr>")
    for case in metrics["cases"]:
        cells = "".join(
            f"<td>{case[m]:.3f}</td>" if isinstance(case.get(m), float) else f"<td>{case.get(m, '–')}</td>"
            for m in cols)
        parts.append(f"<tr><td>{html.escape(case['case'])}</td><td>{html.escape(case.get('structure', ''))}</td>"
                     f"{cells}</tr>")
    parts.append("</table>")

    figures = []
    for case in metrics["cases"][:max_figures]:
        name = case["case"]
        image_path = find_case_file(images, name, ("_img", ""))
        if image_path is None:
            continue
        pred_path = find_case_file(pred, name, ("", "_pred", "_mask", "_img", "_label"))
        gt_path = find_case_file(gt, name, ("_label", ""))
        image = read_nifti_array(image_path)
        p = read_nifti_array(pred_path) if pred_path is not None else None
        g = read_nifti_array(gt_path) if gt_path is not None and gt_path != image_path else None
        dice = case.get("dice")
        label = f"{name} ({case.get('structure', '')})" + (f"  Dice {dice:.3f}" if isinstance(dice, float) else "")
        png = overlay_figure(image, p, g, fig_dir / f"{name}.png", title=label)
        figures.append(png)
        parts.append(f"<h3>{html.escape(label)}</h3><img src='figures/{png.name}'>")
    parts.append("</body></html>")
    index = out_dir / "index.html"
    atomic_write(index, "\n".join(parts))
    return index
