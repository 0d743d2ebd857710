"""napari reader: any volume selma3d reads or writes, as layers with the voxel spacing as scale.

- an OME-Zarr store (``convert`` output, a whole-volume mask, ``stats`` labels / skeleton / density):
  every pyramid level, lazily, as one multiscale layer;
- a NIfTI file (patches, masks from ``predict``), a TIFF slice folder (lazily, via dask);
- a folder of those (a ``predict`` output folder, a ``stats`` output folder): one layer each.

Masks, instance labels and skeletons become Labels layers, images and density maps Image layers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io.nifti import case_name, is_nifti
from ..io.volume import is_zarr

#: names that mark a label volume whatever its dtype
LABEL_HINTS = ("label", "mask", "pred", "skeleton", "seg")


def is_label_volume(name: str, dtype, selma3d_output: bool = False) -> bool:
    """Labels: boolean / unsigned integer outputs of selma3d, or integer volumes named like labels.
    Raw microscopy is int16/uint16 and stays an image unless its name says otherwise."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return True
    if dtype.kind not in "iu":
        return False
    hinted = any(h in name.lower() for h in LABEL_HINTS)
    return hinted or (selma3d_output and dtype.kind == "u") or dtype == np.uint8


def _zarr_layer(path: Path):
    import zarr

    from ..io.zarrstore import open_zarr_volume, read_ome

    group = zarr.open_group(str(path), mode="r")
    attrs = group.attrs.asdict()
    multiscale = read_ome(path)  # validated OME-NGFF 0.4/0.5, any writer
    levels = [open_zarr_volume(path, level=i) for i in range(len(multiscale.levels))]
    spacing = multiscale.spacing(0)
    name = path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.name
    info = attrs.get("selma3d") or {}
    density = "density" in name or "density" in str(info.get("content", ""))
    labels = not density and is_label_volume(name, levels[0].dtype, selma3d_output="selma3d" in attrs)
    meta = {"name": name, "scale": tuple(spacing), "multiscale": len(levels) > 1,
            "metadata": {"path": str(path), "selma3d": info}}
    if density:
        meta |= {"colormap": "magma", "blending": "additive"}
    data = levels if len(levels) > 1 else levels[0]
    return data, meta, "labels" if labels else "image"


def _nifti_layer(path: Path):
    from ..io.nifti import read_nifti

    volume = read_nifti(path)
    name = case_name(path)
    labels = is_label_volume(name, volume.array.dtype)
    data = volume.array.astype(np.uint32) if labels and volume.array.dtype.kind == "i" else volume.array
    return data, {"name": name, "scale": tuple(volume.spacing_zyx), "metadata": {"path": str(path)}}, \
        "labels" if labels else "image"


def _tiff_folder_layer(path: Path):
    import dask.array as da

    from ..io.tiffstack import TiffStack

    stack = TiffStack(path)
    data = da.from_array(stack, chunks=(1,) + tuple(stack.shape[1:]))  # one slice per chunk, read on view
    labels = is_label_volume(path.name, stack.dtype)
    return data, {"name": path.name, "metadata": {"path": str(path)}}, "labels" if labels else "image"


def _layer(path: Path):
    if is_zarr(path):
        return _zarr_layer(path)
    if is_nifti(path):
        return _nifti_layer(path)
    return _tiff_folder_layer(path)


def _members(path: Path) -> list[Path]:
    """The volumes a path names: itself, or (a results folder) the volumes directly inside it."""
    if is_zarr(path) or is_nifti(path):
        return [path]
    if path.is_dir():
        if any(path.glob("*.tif*")):
            return [path]
        return sorted(p for p in path.iterdir() if not p.name.startswith(".") and (is_nifti(p) or is_zarr(p)))
    return []


def read_layers(path: str | os.PathLike) -> list[tuple]:
    """napari LayerData tuples ``(data, meta, layer_type)`` of every volume ``path`` names."""
    return [_layer(p) for p in _members(Path(path))]


def get_reader(path):
    """napari ``reader`` hook: a reader function for a path selma3d can open, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not _members(Path(path)):
        return None
    return lambda p: read_layers(p[0] if isinstance(p, (list, tuple)) else p)
