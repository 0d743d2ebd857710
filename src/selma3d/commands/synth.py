"""``selma3d synth``: write a synthetic SELMA3D-like dataset."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("synth")
    def synth(
        out: Path = typer.Argument(..., metavar="OUT", help="Output folder (must be empty or absent)."),
        preset: str = typer.Option("small", "--preset", help="tiny (seconds), small (about a minute) or "
                                   "full (the challenge's shape: ~75 GB, hours)."),
        seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same dataset."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing synthetic dataset in OUT."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
        shift: bool = typer.Option(False, "--shift", help="Also write annotated/shifted_test/ (c-Fos, microglia, "
                                   "vessel): a test split drawn from a distribution unlike training (larger, "
                                   "sparser, dimmer objects; brighter background; wider z PSF; lower SNR)."),
    ):
        """Write vessels, c-Fos+ cells, nuclei, Aβ plaques (train) and c-Fos + microglia (test splits)
        as LSM-like int16 volumes with ground-truth masks, in the selma3d dataset layout.
        Every case draws its object size and density, contrast, PSF, noise and background from wide
        ranges (recorded in dataset.json). A killed run resumes where it stopped when started again
        with the same options."""
        from ..data.synthetic import make_dataset
        from ..paths import check_output

        check_output(out, "dir")
        path = make_dataset(out, preset=preset, seed=seed, progress=not quiet, overwrite=overwrite, shift=shift)
        typer.echo(f"dataset ({preset}, seed {seed}{', with shifted_test' if shift else ''}) written to {path}")
