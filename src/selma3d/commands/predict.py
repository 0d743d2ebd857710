"""``selma3d predict``: segment NIfTI patches with a finetuned run."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict(
        input: Path = typer.Argument(..., help="A NIfTI file or a folder of NIfTI files."),
        output: Path = typer.Argument(..., help="Output NIfTI file (for one input) or folder."),
        model: List[Path] = typer.Option(..., "--model", help="Run folder of `selma3d finetune`; give one spot "
                                         "and one tree run together with --router."),
        router: Optional[Path] = typer.Option(None, "--router", help="router.pt (or its run folder) from "
                                              "`selma3d finetune --router`: sends each patch to the run of its type."),
        tta: bool = typer.Option(False, "--tta", help="Average over the 8 axis flips (8x slower)."),
        min_size: int = typer.Option(5, "--min-size", help="Remove 26-connected components smaller than this (voxels)."),
        threshold: Optional[float] = typer.Option(None, "--threshold", help="Probability threshold "
                                                  "(default: the run's)."),
        overlap: float = typer.Option(0.5, "--overlap", help="Sliding-window overlap in [0, 1)."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ):
        """Segment NIfTI patches: sliding windows with Gaussian blending, threshold, small-component removal."""
        from ..inference.predict import predict_path

        written = predict_path([str(m) for m in model], input, output, tta=tta, min_size=min_size,
                               threshold=threshold, overlap=overlap, router=router, device=device,
                               progress=not quiet)
        typer.echo(f"{len(written)} mask(s) written to {output}")
