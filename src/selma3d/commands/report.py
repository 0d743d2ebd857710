"""``selma3d report``: an HTML page with the metrics tables and overlay figures of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        metrics: Path = typer.Argument(..., metavar="METRICS", help="metrics.json written by `selma3d evaluate`."),
        out: Path = typer.Option(..., "--out", help="Folder for index.html and figures/."),
        pred: Optional[Path] = typer.Option(None, "--pred", help="Prediction NIfTI file or folder."),
        gt: Optional[Path] = typer.Option(None, "--gt", help="Ground-truth folder (<case>_label.nii.gz)."),
        images: Optional[Path] = typer.Option(None, "--images",
                                              help="Image folder (<case>_img.nii.gz); default: --gt."),
        title: str = typer.Option("selma3d report", "--title"),
        max_figures: int = typer.Option(24, "--max-figures", help="Overlay figures for the first N cases."),
        study: Optional[Path] = typer.Option(None, "--study", help="A finished `selma3d study` folder: adds "
                                             "its pretrained-vs-scratch tables, verdicts and curves."),
    ) -> None:
        """Write OUT/index.html: mean ± std per structure type, per-case metrics, overlays."""
        from ..errors import InputError
        from ..io.nifti import is_nifti
        from ..paths import check_input, check_output

        check_input(metrics, "file", "metrics file")
        for given, what in ((pred, "--pred"), (gt, "--gt"), (images, "--images")):
            if given is not None:
                check_input(given, what=f"{what} path")
                if given.is_dir() and not any(is_nifti(p) for p in given.rglob("*")):
                    raise InputError(f"{given}: {what} folder holds no NIfTI files (.nii, .nii.gz)")
        check_output(out, "dir", inputs=[metrics, pred, gt, images])
        from ..report.html import build_report

        index = build_report(metrics, out, pred=pred, gt=gt, images=images, title=title,
                             max_figures=max_figures, study=study)
        typer.echo(f"report written to {index}")
