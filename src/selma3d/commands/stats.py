"""``selma3d stats MASK --image IMAGE --out DIR``: objects, tables and maps of a whole-volume mask."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("stats")
    def stats(
        mask: Path = typer.Argument(..., metavar="MASK", help="Binary mask: a .zarr store, a TIFF slice folder or a NIfTI file "
                                    "(e.g. the output of `selma3d predict`)."),
        out: Path = typer.Option(..., "--out", help="Output folder: labels.zarr, objects.csv/.parquet, "
                                 "density.zarr, summary.csv (+ skeleton.zarr, branches.csv for --type tree)."),
        image: Optional[Path] = typer.Option(None, "--image", help="Intensity volume on the same grid: mean and "
                                             "max intensity per object."),
        kind: str = typer.Option("spot", "--type", help="spot (objects table) or tree (also skeleton and "
                                 "per-branch table)."),
        block_size: Optional[str] = typer.Option(None, "--block-size", help="Block size N or Z,Y,X "
                                                 "(default 128,256,256); memory grows with it."),
        spacing: Optional[str] = typer.Option(None, "--spacing", help="Voxel spacing Z,Y,X in micrometers "
                                              "(default: the mask's own, else 1,1,1)."),
        density_factor: int = typer.Option(8, "--density-factor", help="Density map: objects counted per "
                                           "N x N x N voxels."),
        regions: Optional[Path] = typer.Option(None, "--regions", help="Label volume of brain regions on the "
                                               "same grid: counts and lengths per region in summary.csv."),
        halo: int = typer.Option(16, "--halo", help="--type tree: context voxels around each block for the "
                                 "skeleton (more than the thickest radius)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Start again instead of resuming an earlier "
                                       "run in --out."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ) -> None:
        """Instance labels joined across blocks, per-object table (CSV + Parquet), density map, and for
        tree-like structures skeleton statistics; block by block, resumable after a kill."""
        from ..lockfile import output_lock
        from ..objects.blocks import DEFAULT_BLOCK_SIZE
        from ..utils.triples import parse_triple
        from ..objects.pipeline import run_stats
        from ..paths import check_input, check_output

        check_input(mask, what="mask")
        for path, what in ((image, "--image"), (regions, "--regions")):
            if path is not None:
                check_input(path, what=what)
        check_output(out, "dir", inputs=[mask, image, regions])
        sizes = parse_triple(block_size, "--block-size") if block_size is not None else DEFAULT_BLOCK_SIZE
        voxel = parse_triple(spacing, "--spacing", float)
        with output_lock(out, "selma3d stats"):
            result = run_stats(mask, out, image=image, kind=kind, block_size=sizes, spacing=voxel,
                               density_factor=density_factor, regions=regions, halo=halo, overwrite=overwrite,
                               progress=not quiet)
        typer.echo(f"statistics written to {result}")
