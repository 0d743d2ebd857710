"""What ``selma3d evaluate`` writes and prints from an :func:`~selma3d.evaluation.challenge.evaluate`
result: the JSON (all of it, or the edition's own ``metrics.json``), the per-case CSV and the
one-line-per-type summary. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from ...utils.atomic import atomic_write, write_json

CASE_FIELDS = ("case", "structure", "type", "dice", "cldice", "betti0_error", "betti1_error")
#: Columns of the later editions, written when a case has them.
EDITION_FIELDS = ("panoptic_quality", "betti_matching_error_0", "betti_matching_error_1", "hd95")


def official_metrics(result: dict) -> dict:
    """The edition's own ``metrics.json`` (``results`` + ``aggregates``) from an evaluate() result."""
    return {"results": result["official"]["results"], "aggregates": result["official"]["aggregates"]}


def write_result(path: str | os.PathLike, result: dict) -> Path:
    """An evaluate() result (or its official part) as JSON, atomically."""
    return write_json(path, result, default=None)


def cases_csv(cases: list[dict]) -> str:
    buffer = io.StringIO()
    fields = CASE_FIELDS + tuple(f for f in EDITION_FIELDS if any(f in c for c in cases))
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for case in cases:
        writer.writerow({k: case.get(k, "") for k in fields})
    return buffer.getvalue()


def write_csv(cases: list[dict], path: str | os.PathLike) -> Path:
    return atomic_write(path, cases_csv(cases))


def format_summary(summary: dict) -> str:
    """One line per type: ``tree (n=3): dice 0.91 ± 0.02, ...``."""
    lines = []
    for kind, metrics in summary.items():
        parts = []
        n = 0
        for metric, stats in metrics.items():
            n = stats["n"] + stats.get("n_nan", 0)
            std = "" if stats["std"] is None or math.isnan(stats["std"]) else f" ± {stats['std']:.4f}"
            mean = "–" if stats["mean"] is None else f"{stats['mean']:.4f}"
            nan = f" ({stats['n_nan']} NaN left out)" if stats.get("n_nan") else ""
            parts.append(f"{metric} {mean}{std}{nan}")
        lines.append(f"{kind} (n={n}): " + ", ".join(parts))
    return "\n".join(lines)
