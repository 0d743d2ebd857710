"""``selma3d evaluate``: SELMA3D metrics of predictions against ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


HELP = (
    "Dice and β0 error for spot-like structures; Dice, clDice, β0 and β1 errors for tree-like "
    "ones.\n\n"
    "Cases are matched by file name: ground truth <case>_label.nii.gz (or any NIfTI name when "
    "no *_label file exists), prediction <case>.nii.gz, <case>_label.nii.gz or "
    "<case>_pred.nii.gz (else <case>_img.nii.gz, the name selma3d predict keeps), searched "
    "recursively. The structure comes from the nearest "
    "dataset.json at or above GT, else the GT file's folder, else the case name. Failed cases "
    "are listed (one line each) and in the JSON; the exit status is non-zero only if no case "
    "could be scored."
)


def register(app: typer.Typer) -> None:
    @app.command("evaluate", help=HELP)
    def evaluate(
        pred: Path = typer.Argument(..., help="Prediction NIfTI file or folder."),
        gt: Path = typer.Argument(..., help="Ground-truth NIfTI file or folder (e.g. DATA/annotated/final_test)."),
        out: Path = typer.Option(Path("metrics.json"), "--out", help="Metrics JSON to write."),
        csv: Optional[Path] = typer.Option(None, "--csv", help="Also write one CSV row per case."),
        jobs: int = typer.Option(0, "--jobs", "-j", help="Cases scored in parallel (0: one per CPU, at most 8)."),
        structure: Optional[str] = typer.Option(None, "--structure",
                                                help="Force this structure (e.g. microglia) for every case."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ):
        from ..errors import Selma3dError
        from ..evaluation.challenge import evaluate as run, format_summary, write_csv, write_json
        from ..paths import check_input, check_output

        check_input(pred, what="prediction")
        check_input(gt, what="ground truth")
        for path, what in ((out, "--out"), (csv, "--csv")):
            if path is not None:
                check_output(path, "file", inputs=[pred, gt], what=f"{what} file")

        result = run(pred, gt, jobs=jobs or None, progress=not quiet, structure=structure)
        write_json(result, out)
        if csv is not None:
            write_csv(result["cases"], csv)
        for failure in result["failures"]:
            typer.echo(f"failed: {failure['error']}", err=True)
        for path in result["unmatched_predictions"]:
            typer.echo(f"ignored: {path} matches no ground-truth case", err=True)
        if not result["cases"]:
            raise Selma3dError(f"no case could be scored ({len(result['failures'])} failed); see {out}")
        typer.echo(format_summary(result["summary"]))
        typer.echo(f"{len(result['cases'])} cases scored, {len(result['failures'])} failed; metrics in {out}"
                   + (f" and {csv}" if csv else ""))
