"""Figures a microscopist looks at: image slices and projections with masks overlaid.

The challenge paper shows predictions in red on the raw LSM image; we do the same, with the
ground truth as a green contour, on a middle slice and on maximum-intensity projections (the
usual way to look at sparse 3D structures such as c-Fos+ cells or microglia processes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _display_range(image: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(image, [0.5, 99.8])
    return float(lo), float(max(hi, lo + 1e-6))


def overlay_figure(image: np.ndarray, pred: np.ndarray | None = None, gt: np.ndarray | None = None,
                   path: str | os.PathLike | None = None, title: str = "") -> Path | plt.Figure:
    """Middle z-slice plus max projections along z and y, with pred in red and gt contoured green.

    ``image``, ``pred`` and ``gt`` are (z, y, x) arrays of the same shape. Saved as PNG when
    ``path`` is given (returns the path), else the figure is returned.
    """
    image = np.asarray(image, dtype=np.float32)
    shapes = {name: np.shape(a) for name, a in (("pred", pred), ("gt", gt)) if a is not None}
    for name, shape in shapes.items():
        if shape != image.shape:
            raise ValueError(f"{name} shape {shape} differs from image shape {image.shape}")
    lo, hi = _display_range(image)
    zmid = image.shape[0] // 2
    views = [
        ("slice z=%d" % zmid, lambda a, reduce: a[zmid]),
        ("MIP along z", lambda a, reduce: reduce(a, axis=0)),
        ("MIP along y", lambda a, reduce: reduce(a, axis=1)),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    for ax, (name, view) in zip(axes, views):
        ax.imshow(view(image, np.max), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest",
                  aspect="auto")
        if pred is not None:
            p = view(np.asarray(pred) > 0, np.any).astype(np.float32)
            rgba = np.zeros(p.shape + (4,), np.float32)
            rgba[..., 0] = 1.0
            rgba[..., 3] = 0.45 * p
            ax.imshow(rgba, interpolation="nearest", aspect="auto")
        if gt is not None:
            g = view(np.asarray(gt) > 0, np.any).astype(np.float32)
            if g.any() and not g.all():
                ax.contour(g, levels=[0.5], colors=["#33ff33"], linewidths=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title + ("  (red: prediction, green: ground truth)" if pred is not None or gt is not None else ""),
                 fontsize=10)
    fig.tight_layout()
    if path is None:
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def curve_figure(csv_path: str | os.PathLike, png_path: str | os.PathLike,
                 x: str = "step", title: str = "") -> Path:
    """Plot every numeric column of a training-curve CSV against ``x`` (one panel per column)."""
    import csv

    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{csv_path}: no rows to plot")
    columns = [c for c in rows[0] if c != x]
    series = {}
    for c in columns:
        pts = [(float(r[x]), float(r[c])) for r in rows if r.get(c) not in (None, "", "nan") and r.get(x)]
        if pts:
            series[c] = np.array(pts)
    n = max(1, len(series))
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    for ax, (c, pts) in zip(axes[0], series.items()):
        ax.plot(pts[:, 0], pts[:, 1], lw=1.2)
        ax.set_xlabel(x)
        ax.set_title(c, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return png_path
