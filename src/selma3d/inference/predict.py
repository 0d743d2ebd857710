"""Patch segmentation with a finetuned run: sliding windows, Gaussian blending, flip TTA.

A finetuned ``RUN/`` folder holds ``model.pt`` (weights + model config) and ``run.json``
(patch size, normalization, threshold, structures, type, xy downsampling; the contract is
:mod:`selma3d.artifacts.run`), so :func:`predict_path` needs nothing else. Windows are stitched by MONAI's ``sliding_window_inference`` with Gaussian weights, which
down-weights window borders where a convolutional network sees the least context.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..artifacts.run import MODEL_FILE, MODEL_FORMAT, RUN_FILE, FinetunedRun, load_finetuned_run  # noqa: F401
from ..artifacts.run import save_model_file  # noqa: F401  (kept importable from here)
from ..data.normalize import DEFAULT_NORMALIZATION, Normalization
from ..data.resample import pool_image_xy, upsample_xy
from ..errors import InputError
from ..io.nifti import NIFTI_SUFFIXES, case_name, is_nifti, read_nifti, write_nifti
from ..paths import check_output
from ..utils.devices import default_device, model_device
from ..utils.progress import progress_bar
from .postprocess import DEFAULT_MIN_SIZE, remove_small_components


def flip_combinations(tta_flips) -> list[tuple[int, ...]]:
    """Spatial axes (of a (B, C, D, H, W) tensor) to flip for each TTA pass; ``()`` is identity.

    ``True`` means all 8 mirrorings (as nnU-Net); a sequence of axis tuples is used as given.
    """
    if not tta_flips:
        return [()]
    if tta_flips is True:
        return [combo for r in range(4) for combo in itertools.combinations((2, 3, 4), r)]
    return [tuple(axes) for axes in tta_flips]


@torch.no_grad()
def sliding_window_probabilities(model: torch.nn.Module, image: torch.Tensor, patch_size: Sequence[int],
                                 overlap: float = 0.5, tta_flips=False, sw_batch_size: int = 4,
                                 progress: bool = False, precision: str = "fp32") -> torch.Tensor:
    """Foreground probabilities (B, 1, D, H, W) of a normalized (B, 1, D, H, W) tensor.

    Windows have exactly ``patch_size`` (a multiple of the model's size divisor); inputs smaller
    than a window are padded by MONAI and cropped back. ``sw_batch_size`` windows go through the
    network at once, under ``precision`` (fp32, bf16 or fp16 autocast); blending stays float32.
    """
    from monai.inferers import sliding_window_inference

    from .windows import autocast

    device = model_device(model)

    def predictor(x):
        with autocast(device, precision):
            return model(x).float()

    total = None
    flips = flip_combinations(tta_flips)
    for axes in flips:
        x = torch.flip(image, axes) if axes else image
        logits = sliding_window_inference(x, roi_size=tuple(int(p) for p in patch_size),
                                          sw_batch_size=sw_batch_size, predictor=predictor,
                                          overlap=overlap, mode="gaussian", progress=progress)
        probs = torch.sigmoid(logits.float())
        if axes:
            probs = torch.flip(probs, axes)
        total = probs if total is None else total + probs
    return total / len(flips)


def predict_probabilities(model: torch.nn.Module, array: np.ndarray, patch_size: Sequence[int],
                          overlap: float = 0.5, tta_flips=False, normalize: bool | Normalization = True,
                          sw_batch_size: int = 4, progress: bool = False, precision: str = "fp32",
                          downsample_xy: int = 1) -> np.ndarray:
    """Float32 (z, y, x) foreground probabilities of a raw (or already normalized) patch.

    ``normalize``: a :class:`Normalization` (the run's), ``True`` for the default one, or
    ``False`` for an image that is already normalized. ``downsample_xy`` > 1 (a run trained at
    that xy pooling): the normalized image is mean-pooled in xy, predicted, and the
    probabilities repeated back to the input grid.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"expected a 3D (z, y, x) image, got shape {array.shape}")
    if normalize is True:
        normalize = DEFAULT_NORMALIZATION
    image = normalize(array) if normalize else np.asarray(array, dtype=np.float32)
    image = pool_image_xy(image, downsample_xy)
    was_training = model.training
    model.eval()
    try:
        x = torch.from_numpy(np.ascontiguousarray(image))[None, None].to(model_device(model))
        probs = sliding_window_probabilities(model, x, patch_size, overlap=overlap, tta_flips=tta_flips,
                                             sw_batch_size=sw_batch_size, progress=progress, precision=precision)
    finally:
        model.train(was_training)
    return upsample_xy(probs[0, 0].cpu().numpy(), downsample_xy, array.shape)


def predict_volume(model: torch.nn.Module, array: np.ndarray, patch_size: Sequence[int],
                   overlap: float = 0.5, tta_flips=False, threshold: float = 0.5,
                   min_size: int = 0, normalize: bool | Normalization = True, sw_batch_size: int = 4,
                   progress: bool = False, precision: str = "fp32", downsample_xy: int = 1) -> np.ndarray:
    """Binary uint8 (z, y, x) mask: probabilities > ``threshold``, components < ``min_size`` removed."""
    probs = predict_probabilities(model, array, patch_size, overlap=overlap, tta_flips=tta_flips,
                                  normalize=normalize, sw_batch_size=sw_batch_size, progress=progress,
                                  precision=precision, downsample_xy=downsample_xy)
    mask = (probs > threshold).astype(np.uint8)
    return remove_small_components(mask, min_size) if min_size > 1 else mask


# --------------------------------------------------------------------------- runs on disk

class LoadedRun(FinetunedRun):
    """A finetuned model ready to predict, with the settings it was trained under."""

    def predict(self, array: np.ndarray, overlap: float = 0.5, tta_flips=False,
                threshold: float | None = None, min_size: int = DEFAULT_MIN_SIZE, batch_size: int = 4,
                precision: str = "fp32") -> np.ndarray:
        return predict_volume(self.model, array, self.patch_size, overlap=overlap, tta_flips=tta_flips,
                              threshold=self.threshold if threshold is None else threshold,
                              min_size=min_size, normalize=self.normalization, sw_batch_size=batch_size,
                              precision=precision, downsample_xy=self.downsample_xy)


def load_run(run_dir: str | os.PathLike, device: torch.device | str | None = None) -> LoadedRun:
    """Load ``RUN/model.pt`` and ``RUN/run.json``; raises :class:`InputError` naming what is missing."""
    return load_finetuned_run(run_dir, device=device, cls=LoadedRun)


# --------------------------------------------------------------------------- files and folders

def _unsupported_input(path: Path) -> InputError:
    name = str(path).rstrip("/")
    if name.endswith(".zarr") or (path.is_dir() and any(path.glob("*.tif*"))):
        kind = "a Zarr volume" if name.endswith(".zarr") else "a TIFF slice folder"
        return InputError(
            f"{path}: {kind} is a whole volume; `selma3d predict` handles NIfTI patches (a .nii/.nii.gz "
            f"file or a folder of them) for now; blockwise whole-volume prediction is a separate feature")
    if path.is_dir():
        return InputError(f"{path}: no NIfTI files (.nii, .nii.gz) in this folder")
    if not path.exists():
        return InputError(f"{path}: input not found")
    return InputError(f"{path}: unsupported input; expected a NIfTI file (.nii, .nii.gz) or a folder of them")


def list_inputs(input_path: str | os.PathLike) -> list[Path]:
    """The NIfTI files INPUT names (itself, or the ones directly inside a folder), sorted.

    In a dataset folder (``<case>_img`` next to ``<case>_label``) the labels are not inputs.
    """
    path = Path(input_path)
    if path.is_file() and is_nifti(path):
        return [path]
    if path.is_dir() and not str(path).rstrip("/").endswith(".zarr"):
        files = sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith("."))
        names = {case_name(p) for p in files}
        files = [p for p in files if not (case_name(p).endswith("_label")
                                          and case_name(p)[: -len("_label")] + "_img" in names)]
        if files:
            return files
    raise _unsupported_input(path)


def output_paths(inputs: list[Path], input_path: Path, output: Path) -> list[Path]:
    """Where each mask goes: OUTPUT itself for one file named *.nii[.gz], else OUTPUT/<same name>."""
    if input_path.is_file() and str(output).endswith(NIFTI_SUFFIXES) and not output.is_dir():
        return [output]
    return [output / p.name for p in inputs]


def check_finite(array: np.ndarray, path: str | os.PathLike) -> None:
    """A NaN or infinite voxel would silently turn into an empty mask: refuse the image."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(f"{path}: image holds {bad} NaN or infinite voxel(s); fix or mask them before predicting")


def predict_path(run_dirs: str | os.PathLike | Sequence[str | os.PathLike], input_path: str | os.PathLike,
                 output: str | os.PathLike, tta: bool = False, min_size: int = DEFAULT_MIN_SIZE,
                 threshold: float | None = None, overlap: float = 0.5, router: str | os.PathLike | None = None,
                 device: torch.device | str | None = None, progress: bool = True, batch_size: int = 4,
                 precision: str = "fp32") -> list[Path]:
    """Segment a NIfTI file or a folder of NIfTI files; returns the written mask paths.

    Masks are uint8 {0, 1} with the input's file name, affine and header. With several runs,
    ``router`` (a ``router.pt`` or a run folder holding one) picks, per patch, the run trained
    for the patch's structure type (spot or tree).
    """
    if not 0 <= overlap < 1:
        raise InputError(f"--overlap must be in [0, 1), got {overlap}")
    if threshold is not None and not 0 < threshold < 1:
        raise InputError(f"--threshold must be in (0, 1), got {threshold}")
    if min_size < 0:
        raise InputError(f"--min-size must be >= 0, got {min_size}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    from .windows import PRECISIONS

    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise InputError("give at least one --model RUN")
    input_path, output = Path(input_path), Path(output)
    inputs = list_inputs(input_path)
    outputs = output_paths(inputs, input_path, output)
    check_output(output, "file" if outputs == [output] else "dir", inputs=[input_path])
    for src in inputs:  # every input readable and finite before any mask is written
        check_finite(read_nifti(src).array, src)
    device = torch.device(device) if device is not None else default_device()
    runs = [load_run(r, device=device) for r in run_dirs]

    route = None
    if router is not None:
        from ..artifacts.router import load_router

        route = load_router(router, device=device)
        by_type = {}
        for run in runs:
            if run.type in by_type:
                raise InputError(f"{run.path} and {by_type[run.type].path} are both {run.type!r} models; "
                                 "with --router give one spot and one tree model")
            by_type[run.type] = run
        missing = [t for t in route.classes if t not in by_type]
        if missing:
            raise InputError(f"--router needs a model for each type {route.classes}; no --model run is "
                             f"of type {', '.join(missing)} (types: {', '.join(by_type) or 'none'})")
    elif len(runs) > 1:
        raise InputError("several --model runs need --router to choose between them")

    written = []
    with progress_bar(progress, "predict", unit="files") as bar:
        task = bar.add_task("predicting", total=len(inputs))
        for src, dst in zip(inputs, outputs):
            volume = read_nifti(src)
            run = runs[0] if route is None else by_type[route.classify(volume.array)]
            mask = run.predict(volume.array, overlap=overlap, tta_flips=tta, threshold=threshold,
                               min_size=min_size, batch_size=batch_size, precision=precision)
            written.append(write_nifti(dst, mask.astype(np.uint8), affine=volume.affine, header=volume.header))
            bar.advance(task)
    return written
