"""``selma3d predict``: segment NIfTI patches, or whole volumes block by block, with a finetuned run."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..utils.triples import parse_triple
from .config import config_option


def is_whole_volume(path: Path) -> bool:
    """A Zarr store (or one level of it), a multi-page TIFF file or a folder of TIFF slices (and no
    NIfTI files): segmented block by block."""
    from ..io.tiffvolume import is_tiff_file
    from ..io.volume import is_zarr

    if is_zarr(path) or is_tiff_file(path):
        return True
    return path.is_dir() and any(path.glob("*.tif*")) and not any(path.glob("*.nii*"))


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict(
        input: Path = typer.Argument(..., metavar="INPUT", help="A NIfTI file, a folder of NIfTI files, a TIFF slice folder, a "
                                     "multi-page TIFF/OME-TIFF file or an OME-Zarr volume (DIR.zarr/1: one level)."),
        output: Path = typer.Argument(..., metavar="OUTPUT", help="Output NIfTI file (for one input) or folder; for a whole volume an OUT.zarr mask or a TIFF slice folder."),
        config_file: Optional[Path] = config_option("predict"),
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
        block_size: Optional[str] = typer.Option(None, "--block-size", help="Whole volumes: block size "
                                                 "N or Z,Y,X (default 128,256,256)."),
        batch_size: int = typer.Option(4, "--batch-size", help="Windows per forward pass (larger on a GPU)."),
        precision: str = typer.Option("fp32", "--precision", help="fp32 (default: identical to one pass), bf16 or "
                                      "fp16: mixed precision for GPUs; blending stays float32."),
        skip_empty: bool = typer.Option(True, "--skip-empty/--no-skip-empty", help="Whole volumes: write blocks "
                                        "without tissue (input below the whole volume's 5 % level) as 0 without "
                                        "running the network."),
        probabilities: bool = typer.Option(False, "--probabilities", help="Whole volumes (.zarr output): also "
                                           "write the float32 probabilities as the array 'probabilities'."),
        prefetch: int = typer.Option(2, "--prefetch", help="Whole volumes: blocks a reader thread reads ahead "
                                     "(0: no reader thread)."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Whole volumes: blocks in parallel."),
        scheduler_address: Optional[str] = typer.Option(None, "--scheduler-address", help="Whole volumes: "
                                                        "dask.distributed scheduler for multi-machine runs."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Whole volumes: replace an earlier output "
                                       "(a killed run resumes without it)."),
        level: int = typer.Option(0, "--level", help="Whole volumes: resolution level of an OME-Zarr input "
                                  "(0: full resolution)."),
    ):
        """Segment NIfTI patches or whole volumes: sliding windows with Gaussian blending, threshold,
        small-component removal. Whole volumes (a TIFF slice folder, a .zarr store) go block by block
        at the cost of one pass, with the same result as one pass."""
        from ..inference.predict import predict_path
        from ..io.nifti import NIFTI_SUFFIXES
        from ..paths import check_input, check_output
        from .options import check_device

        check_input(input)
        given = input
        if level:
            from ..errors import InputError
            from ..io.volume import is_zarr
            from ..io.zarrstore import zarr_level_path

            if not is_zarr(input):
                raise InputError(f"{input}: --level applies to OME-Zarr inputs; convert a TIFF pyramid level "
                                 "first with `selma3d convert --level N`")
            input = zarr_level_path(input, level)  # the level's own array: spacing and OME axes follow it
        for run in model:
            check_input(run, "dir", "--model run folder")
        if router is not None:
            check_input(router, what="--router")
        check_device(device)
        one_file = input.is_file() and str(output).endswith(NIFTI_SUFFIXES) and not is_whole_volume(input)
        # the run folders are inputs too, but masks written beside a model harm nothing
        check_output(output, "file" if one_file else "dir", inputs=[given])

        if is_whole_volume(input):
            from ..errors import InputError
            from ..inference.blockwise import predict_whole_volume

            if len(model) != 1 or router is not None:
                raise InputError("whole-volume prediction takes exactly one --model and no --router")
            from ..io.volume import open_volume, volume_spacing

            open_volume(input)  # lazy: checks the input opens as a 3D volume before the model loads
            volume_spacing(input)
            options = {}
            if block_size:
                options["block_size"] = parse_triple(block_size, "--block-size")
            path = predict_whole_volume(str(model[0]), input, output, overlap=overlap, tta_flips=tta,
                                        threshold=threshold, min_size=min_size, skip_empty=skip_empty,
                                        probabilities=probabilities, batch_size=batch_size, precision=precision,
                                        prefetch=prefetch, progress=not quiet, overwrite=overwrite,
                                        workers=workers, scheduler_address=scheduler_address, device=device,
                                        **options)
            typer.echo(f"whole-volume mask written to {path}")
            return
        written = predict_path([str(m) for m in model], input, output, tta=tta, min_size=min_size,
                               threshold=threshold, overlap=overlap, router=router, device=device,
                               progress=not quiet, batch_size=batch_size, precision=precision)
        typer.echo(f"{len(written)} mask(s) written to {output}")
