"""How a metric is named and a mean ± std is written in every HTML table (report and study)."""

from __future__ import annotations

METRIC_LABELS = {
    "dice": "Dice ↑",
    "cldice": "clDice ↑",
    "betti0_error": "β0 error ↓",
    "betti1_error": "β1 error ↓",
}


def format_cell(stat: dict | None) -> str:
    """``mean ± std`` to three decimals (just the mean without a std; a dash when empty)."""
    if not stat or stat.get("mean") is None:
        return "–"
    if stat.get("std") is None:
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"
