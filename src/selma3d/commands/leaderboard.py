"""``selma3d leaderboard``: score and rank several submissions (rank then aggregate)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


HELP = (
    "Score several submissions on the same ground truth and rank them.\n\n"
    "Rank then aggregate: for each case and metric the teams are ranked (higher Dice/clDice, "
    "lower Betti errors is better; ties share the mean rank; a failed case ranks last), the "
    "ranks are averaged per metric, then over metrics, and the lowest average wins. Prints "
    "the SELMA3D paper's Table 4/5 layout (mean ± std per structure type) and the ranking as "
    "Markdown; --out also writes CSV, LaTeX and JSON. --edition picks the metrics (2024 default, "
    "2025, 2026); the tables and leaderboard.json say which edition ranked them."
)


def register(app: typer.Typer) -> None:
    @app.command("leaderboard", help=HELP)
    def leaderboard(
        gt: Path = typer.Argument(..., metavar="GT", help="Ground-truth NIfTI folder."),
        submissions: List[str] = typer.Argument(..., metavar="SUBMISSIONS", help="TEAM=PRED_DIR, one per submission."),
        out: Optional[Path] = typer.Option(None, "--out", help="Folder for leaderboard.{md,csv,tex,json} "
                                           "and teams/<team>.json."),
        jobs: int = typer.Option(0, "--jobs", "-j", help="Cases scored in parallel (0: one per CPU, at most 8)."),
        structure: Optional[str] = typer.Option(None, "--structure", help="Force this structure for every case."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
        edition: str = typer.Option("2024", "--edition", help="Rank by this challenge edition's metrics: "
                                    "2024, 2025 or 2026."),
    ):
        from ..evaluation.leaderboard import parse_submissions, run_leaderboard, to_markdown, write_outputs

        from ..paths import check_input, check_output

        teams = parse_submissions(submissions)
        check_input(gt, what="ground truth")
        for team, folder in teams.items():
            check_input(folder, what=f"submission of team {team!r}")
        if out is not None:
            check_output(out, "dir", inputs=[gt, *teams.values()])
        standings, results = run_leaderboard(gt, teams, jobs=jobs or None, progress=not quiet,
                                             structure=structure, edition=edition)
        for team, result in results.items():
            for failure in result["failures"]:
                typer.echo(f"failed: {team}: {failure['error']}", err=True)
        if not any(result["cases"] for result in results.values()):
            from ..errors import Selma3dError

            raise Selma3dError("no case of any team could be scored")
        typer.echo(to_markdown(standings))
        if out is not None:
            write_outputs(standings, results, out)
            typer.echo(f"tables written to {out}")
