"""``selma3d dataset``: build and check the dataset layout from a lab's own files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

dataset_app = typer.Typer(no_args_is_help=True, help="Build a dataset from your own files (init, add-volume, "
                          "add-patch) and check it (check).")


def _type_option():
    return typer.Option(None, "--type", help="spot (isolated objects) or tree (connected structures); needed "
                        "once for a structure selma3d does not know.")


@dataset_app.command("init")
def init(
    data: Path = typer.Argument(..., metavar="DATA", help="New (or empty) dataset folder."),
    spacing: Optional[str] = typer.Option(None, "--spacing", help="Default voxel spacing Z,Y,X in micrometers "
                                          "for volumes whose files record none."),
) -> None:
    """Create DATA with annotated/, unannotated/ and dataset.json."""
    from ..data.assemble import init_dataset, parse_spacing
    from ..paths import check_output

    default = parse_spacing(spacing)
    check_output(data, "dir", what="dataset folder")
    init_dataset(data, default)
    typer.echo(f"initialized {data}" + (f" (default spacing {spacing} µm)" if default else ""))


@dataset_app.command("add-volume")
def add_volume(
    data: Path = typer.Argument(..., metavar="DATA", help="Dataset folder (from `selma3d dataset init`)."),
    structure: str = typer.Argument(..., metavar="STRUCTURE", help="Structure name, e.g. axon, vessel, cfos."),
    path: Path = typer.Argument(..., metavar="PATH", help="Unannotated volume: multi-page TIFF/OME-TIFF, OME-Zarr, TIFF slice "
                                "folder or NIfTI."),
    type: Optional[str] = _type_option(),
    link: bool = typer.Option(True, "--link/--convert", help="Link the volume where it lies (default) or convert "
                              "it into a chunked OME-Zarr inside DATA (resumable)."),
    name: Optional[str] = typer.Option(None, "--name", help="Volume name (default: the file or folder name)."),
    level: int = typer.Option(0, "--level", help="Resolution level of an OME-Zarr or pyramidal TIFF (0: full)."),
    spacing: Optional[str] = typer.Option(None, "--spacing", help="Voxel spacing Z,Y,X in micrometers, for files "
                                          "that record none."),
    chunks: int = typer.Option(64, "--chunks", help="--convert: chunk edge in voxels."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Add an unannotated volume (for pretraining) under DATA/unannotated/STRUCTURE/."""
    from ..data.assemble import add_volume as run, parse_spacing, volume_summary
    from ..io.volume import open_volume
    from ..paths import check_input

    given = parse_spacing(spacing)
    check_input(data, "dir", "dataset folder")
    check_input(path, what="volume")
    record = run(data, structure, path, type=type, mode="link" if link else "convert", name=name, level=level,
                 spacing=given, chunks=chunks, progress=not quiet)
    summary = volume_summary(open_volume(data / record["path"]))
    how = f"linked to {record['source']}" if link else f"converted from {record['source']}"
    typer.echo(f"added {record['path']}: {summary}, spacing {'x'.join(f'{s:g}' for s in record['spacing_zyx'])} µm "
               f"({how}{', level ' + str(level) if level else ''})")


@dataset_app.command("add-patch")
def add_patch(
    data: Path = typer.Argument(..., metavar="DATA", help="Dataset folder (from `selma3d dataset init`)."),
    structure: str = typer.Argument(..., metavar="STRUCTURE", help="Structure name, e.g. axon."),
    image: Path = typer.Argument(..., metavar="IMAGE", help="Image crop (NIfTI)."),
    label: Path = typer.Argument(..., metavar="LABEL", help="Its 0/1 label (NIfTI, same voxel grid)."),
    split: str = typer.Option(..., "--split", help="train, preliminary_test, final_test or a name of your own."),
    type: Optional[str] = _type_option(),
    case: Optional[str] = typer.Option(None, "--case", help="Case name (default STRUCTURE_NNN)."),
    binarize: bool = typer.Option(False, "--binarize", help="Store label > 0 as 1 (e.g. instance labels)."),
) -> None:
    """Copy an annotated crop into DATA/annotated/SPLIT/STRUCTURE/ as <case>_img.nii.gz and <case>_label.nii.gz."""
    from ..data.assemble import add_patch as run
    from ..paths import check_input

    check_input(data, "dir", "dataset folder")
    check_input(image, "file", "image")
    check_input(label, "file", "label")
    img, lbl = run(data, structure, image, label, split=split, type=type, case=case, binarize=binarize)
    typer.echo(f"added {img.relative_to(data)} and {lbl.name}")


@dataset_app.command("check")
def check(data: Path = typer.Argument(..., metavar="DATA", help="Dataset folder.")) -> None:
    """List every problem at once (shapes, dtypes, labels, pairs, spacing, types, splits); exit 1 if any."""
    from ..data.check import check_dataset
    from ..errors import Selma3dError
    from ..paths import check_input

    check_input(data, "dir", "dataset folder")
    problems, summary = check_dataset(data)
    for problem in problems:
        typer.echo(f"problem: {problem}")
    if problems:
        raise Selma3dError(f"{data}: {len(problems)} problem(s), listed above")
    types = ", ".join(f"{name} ({kind})" for name, kind in summary["structures"].items()) or "none"
    cases = ", ".join(f"{split} {n}" for split, n in summary["cases"].items()) or "none"
    typer.echo(f"{data}: ok: structures {types}; {summary['volumes']} unannotated volume(s); annotated cases: {cases}")


def register(app: typer.Typer) -> None:
    app.add_typer(dataset_app, name="dataset")
