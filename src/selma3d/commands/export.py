"""``selma3d export``: a finetuned run as a BioImage Model Zoo (bioimage.io) model package."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        model: Path = typer.Option(..., "--model", help="Run folder of `selma3d finetune`."),
        out: Path = typer.Option(..., "--out", help="The package to write (model.zip)."),
        test_input: Optional[Path] = typer.Option(None, "--test-input", help="NIfTI image to crop the "
                                                  "package's test tensor from (default: the run's first training case)."),
        name: Optional[str] = typer.Option(None, "--name", help="Model name (default: from the run's structures)."),
        author: Optional[List[str]] = typer.Option(None, "--author", help="Author name (repeatable; default: "
                                                   "the current user)."),
        license: str = typer.Option("CC-BY-4.0", "--license", help="SPDX license identifier of the weights."),
        quiet: bool = typer.Option(False, "--quiet", help="Print only errors."),
    ):
        """Write a bioimage.io model package (spec 0.5): TorchScript weights, the run's normalization as
        pre-processing, sigmoid + threshold as post-processing, test tensors from the run's own data."""
        from ..export.bioimageio import export_run
        from ..paths import check_input, check_output

        check_input(model, "dir", "--model run folder")
        if test_input is not None:
            check_input(test_input, "file", "--test-input")
        check_output(out, "file", inputs=[test_input] if test_input else [])
        path = export_run(model, out, test_input=test_input, name=name, authors=author or None, license=license)
        if not quiet:
            typer.echo(f"bioimage.io model package written to {path} (validated with bioimageio.spec)")
