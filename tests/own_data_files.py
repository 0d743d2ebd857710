"""A lab's own files, made the way other tools make them (not with selma3d's writers).

- :func:`write_tiff_stack`: one multi-page uint16 OME-TIFF (tifffile, as microscope software does),
  with ``PhysicalSizeZ/Y/X``;
- :func:`write_foreign_ome_zarr`: an OME-Zarr written with plain ``zarr`` and hand-written
  OME-NGFF metadata (0.4 on zarr v2 as ome-zarr-py writes it, or 0.5 on zarr v3), with a
  channel axis and a second resolution level;
- :func:`write_crop`: a NIfTI crop with ``nibabel`` directly, as a napari/ITK-SNAP export.

The images are axon-like: thin random-walk tubes, blurred, on a camera offset with shot noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def axon_volume(shape=(32, 64, 64), seed=0, tubes=6) -> tuple[np.ndarray, np.ndarray]:
    """(uint16 image, uint8 label) of thin tubes running mostly in the xy plane."""
    from scipy.ndimage import binary_dilation, gaussian_filter

    rng = np.random.default_rng(seed)
    centre = np.zeros(shape, bool)
    for _ in range(tubes):
        point = rng.uniform([2, 0, 0], np.array(shape) - [2, 1, 1])
        direction = rng.normal(size=3) * [0.2, 1, 1]
        for _step in range(200):
            direction = direction + rng.normal(size=3) * [0.05, 0.2, 0.2]
            direction /= np.linalg.norm(direction)
            point = point + direction
            index = tuple(int(round(p)) for p in point)
            if not all(0 <= i < n for i, n in zip(index, shape)):
                break
            centre[index] = True
    label = binary_dilation(centre, iterations=1)
    signal = gaussian_filter(label.astype(np.float32), 0.8)
    counts = rng.poisson(20 + 300 * signal)
    image = np.clip(180 + 8 * counts, 0, 65535).astype(np.uint16)  # offset 180, gain 8: camera data
    return image, label.astype(np.uint8)


def write_tiff_stack(path: Path, image: np.ndarray, spacing_zyx=(2.0, 1.0, 1.0)) -> Path:
    import tifffile

    tifffile.imwrite(path, image, photometric="minisblack", metadata={
        "axes": "ZYX", "PhysicalSizeZ": spacing_zyx[0], "PhysicalSizeY": spacing_zyx[1],
        "PhysicalSizeX": spacing_zyx[2], "PhysicalSizeZUnit": "µm", "PhysicalSizeYUnit": "µm",
        "PhysicalSizeXUnit": "µm"})
    return path


def write_foreign_ome_zarr(path: Path, image: np.ndarray, spacing_zyx=(2.0, 1.0, 1.0), version: str = "0.4",
                           unit: str = "micrometer") -> Path:
    """(c, z, y, x) with one channel and two levels (level 1: 2x in z, y, x)."""
    import zarr

    levels = [image[None], image[None, ::2, ::2, ::2]]
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": unit} for n in "zyx"]
    datasets = [{"path": str(i), "coordinateTransformations": [
        {"type": "scale", "scale": [1.0] + [s * 2 ** i for s in spacing_zyx]}]} for i in range(len(levels))]
    multiscale = {"name": path.stem, "axes": axes, "datasets": datasets}
    if version == "0.4":
        group = zarr.open_group(str(path), mode="w", zarr_format=2)
        for i, data in enumerate(levels):
            array = group.create_array(str(i), shape=data.shape, dtype=data.dtype, chunks=(1, 16, 32, 32),
                                       chunk_key_encoding={"name": "v2", "separator": "/"})
            array[:] = data
        group.attrs.update({"multiscales": [{"version": "0.4", **multiscale}],
                            "omero": {"channels": [{"label": "axons", "color": "00FF00"}]}})
    else:
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        for i, data in enumerate(levels):
            array = group.create_array(str(i), shape=data.shape, dtype=data.dtype, chunks=(1, 16, 32, 32),
                                       dimension_names=["c", "z", "y", "x"])
            array[:] = data
        group.attrs.update({"ome": {"version": "0.5", "multiscales": [multiscale]}})
    return path


def write_crop(path: Path, array: np.ndarray, spacing_zyx=(2.0, 1.0, 1.0), origin=(10.0, -5.0, 3.0)) -> Path:
    """A NIfTI written with nibabel (x, y, z order on disk, LPS-like affine), not selma3d's writer."""
    import nibabel as nib

    sz, sy, sx = spacing_zyx
    affine = np.array([[-sx, 0, 0, origin[0]], [0, -sy, 0, origin[1]], [0, 0, sz, origin[2]], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(np.asarray(array).transpose(2, 1, 0), affine), str(path))
    return path
