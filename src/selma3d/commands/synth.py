"""``selma3d synth``: write a synthetic SELMA3D-like dataset."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("synth")
    def synth(
        out: Path = typer.Argument(..., help="Output folder (must be empty or absent)."),
        preset: str = typer.Option("small", "--preset", help="tiny (seconds), small (about a minute) or "
                                   "full (the challenge's shape: ~75 GB, hours)."),
        seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same dataset."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing synthetic dataset in OUT."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ):
        """Write vessels, c-Fos+ cells, nuclei, Aβ plaques (train) and c-Fos + microglia (test splits)
        as LSM-like int16 volumes with ground-truth masks, in the selma3d dataset layout.
        A killed run resumes where it stopped when started again with the same options."""
        from ..data.synthetic import make_dataset
        from ..paths import check_output

        check_output(out, "dir")
        path = make_dataset(out, preset=preset, seed=seed, progress=not quiet, overwrite=overwrite)
        typer.echo(f"dataset ({preset}, seed {seed}) written to {path}")
