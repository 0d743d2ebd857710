"""``selma3d convert SLICES_DIR OUT.zarr``: a TIFF slice folder to chunked OME-Zarr."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("convert")
    def convert(
        slices_dir: Path = typer.Argument(..., metavar="SLICES_DIR", help="Folder of 2D TIFF slices (one per z), or a multi-page "
                                          "TIFF/OME-TIFF, OME-Zarr or NIfTI volume."),
        out: Path = typer.Argument(..., metavar="OUT", help="Output OME-Zarr store (e.g. brain.zarr)."),
        chunks: int = typer.Option(64, "--chunks", help="Chunk edge in voxels; memory use is about 2 slabs of this many slices."),
        spacing: Optional[tuple[float, float, float]] = typer.Option(
            None, "--spacing", help="Voxel spacing Z Y X in micrometers (default: the input's own, "
            "else 1 1 1)."),
        level: int = typer.Option(0, "--level", help="Resolution level of an OME-Zarr or pyramidal TIFF input."),
        levels: Optional[int] = typer.Option(None, "--levels", help="Maximum number of pyramid levels (level 0 included)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store instead of resuming it."),
        no_verify: bool = typer.Option(False, "--no-verify", help="Skip the final check that level 0 equals the input."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ) -> None:
        """Convert a TIFF slice folder to a chunked, compressed OME-Zarr with a multiscale pyramid.

        Resumable: if interrupted, run the same command again to finish only what is missing."""
        from selma3d.io.zarr_convert import convert_to_zarr
        from selma3d.io.zarrstore import open_zarr_volume
        from selma3d.lockfile import output_lock
        from selma3d.paths import check_input, check_output

        from selma3d.io.volume import is_zarr, open_volume, volume_spacing
        from selma3d.io.zarrstore import zarr_level_path

        check_input(slices_dir)
        check_output(out, "dir", inputs=[slices_dir])
        source = slices_dir
        if level:  # one level of a pyramid: its array folder (Zarr) or the opened level (TIFF)
            source = str(zarr_level_path(slices_dir, level)) if is_zarr(slices_dir) else \
                open_volume(slices_dir, level=level)
        spacing = spacing or volume_spacing(slices_dir, level=level) or (1.0, 1.0, 1.0)
        with output_lock(out, "selma3d convert"):  # a second writer of the same store is refused
            result = convert_to_zarr(source, out, chunks=chunks, spacing=spacing,
                                     levels=levels, overwrite=overwrite, verify=not no_verify, progress=not quiet)
        volume = open_zarr_volume(result)
        typer.echo(f"wrote {result} (level 0: {'x'.join(map(str, volume.shape))} {volume.dtype})")
