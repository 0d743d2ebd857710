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
    "could be scored.\n\n"
    "--edition picks the challenge edition's rules: 2024 (default; spot/tree by structure), "
    "2025 (Dice, Betti matching error, clDice, HD95) or 2026 (Dice, panoptic quality, clDice "
    "via panoptica); 2025 and 2026 route cases by name prefix (blood_vessel_..., cfos_neuron_...). "
    "--format official writes the edition's own metrics.json (results + aggregates), the "
    "numbers its leaderboard shows. Degenerate official scores (a clDice of 1.0 for an empty "
    "prediction, NaN clDice or PQ...) are reported as warnings; --strict scores them 0. "
    "A prediction must be a binary mask unless --threshold is given."
)


def register(app: typer.Typer) -> None:
    @app.command("evaluate", help=HELP)
    def evaluate(
        pred: Path = typer.Argument(..., metavar="PRED", help="Prediction NIfTI file or folder."),
        gt: Path = typer.Argument(..., metavar="GT", help="Ground-truth NIfTI file or folder (e.g. DATA/annotated/final_test)."),
        out: Path = typer.Option(Path("metrics.json"), "--out", help="Metrics JSON to write."),
        csv: Optional[Path] = typer.Option(None, "--csv", help="Also write one CSV row per case."),
        jobs: int = typer.Option(0, "--jobs", "-j", help="Cases scored in parallel (0: one per CPU, at most 8)."),
        structure: Optional[str] = typer.Option(None, "--structure",
                                                help="Force this structure (e.g. microglia) for every case."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
        edition: str = typer.Option("2024", "--edition", help="Challenge edition: 2024, 2025 or 2026."),
        output_format: str = typer.Option("selma3d", "--format",
                                          help="selma3d (cases, summary, warnings, official aggregates) or "
                                               "official (the edition's metrics.json: results + aggregates)."),
        strict: bool = typer.Option(False, "--strict", help="Score degenerate official values (vacuous "
                                    "clDice 1.0, NaN clDice) as 0 instead of keeping them."),
        threshold: Optional[float] = typer.Option(None, "--threshold", help="Binarize predictions with "
                                                  "> THRESHOLD (needed for probability maps; not official)."),
    ):
        from ..errors import InputError, Selma3dError
        from ..evaluation.challenge import evaluate as run, format_summary, official_metrics, write_csv, write_result
        from ..paths import check_input, check_output

        if output_format not in ("selma3d", "official"):
            raise InputError(f"--format {output_format!r}: choose selma3d or official")
        if output_format == "official" and (strict or threshold is not None):
            raise InputError("--format official writes the official scores; it cannot be combined with "
                             "--strict or --threshold")
        check_input(pred, what="prediction")
        check_input(gt, what="ground truth")
        for path, what in ((out, "--out"), (csv, "--csv")):
            if path is not None:
                check_output(path, "file", inputs=[pred, gt], what=f"{what} file")

        result = run(pred, gt, jobs=jobs or None, progress=not quiet, structure=structure, edition=edition,
                     threshold=threshold, strict=strict)
        write_result(out, official_metrics(result) if output_format == "official" else result)
        if csv is not None:
            write_csv(result["cases"], csv)
        for failure in result["failures"]:
            typer.echo(f"failed: {failure['error']}", err=True)
        for path in result["unmatched_predictions"]:
            typer.echo(f"ignored: {path} matches no ground-truth case", err=True)
        for warning in result["warnings"] + (result["official_notes"] if output_format == "official" else []):
            typer.echo(f"warning: {warning}", err=True)
        if not result["cases"]:
            raise Selma3dError(f"no case could be scored ({len(result['failures'])} failed); see {out}")
        typer.echo(format_summary(result["summary"]))
        degenerate = sum(1 for c in result["cases"] if c["warnings"])
        if degenerate:
            typer.echo(f"warning: {degenerate} case(s) have degenerate official scores "
                       + ("(scored 0 where --strict applies)" if strict else "(kept as the official "
                          "scorer gives them; --strict scores them 0)"), err=True)
        typer.echo(f"edition {result['edition']}: {len(result['cases'])} cases scored, "
                   f"{len(result['failures'])} failed; metrics in {out}"
                   + (f" and {csv}" if csv else ""))
