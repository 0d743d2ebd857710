"""Export a finetuned run as a BioImage Model Zoo (bioimage.io, spec 0.5) model package.

The package holds the network as TorchScript (a trace of the run's model: no selma3d or MONAI
needed to run it), the run's normalization as the spec's pre-processing operations, sigmoid and
the run's threshold as post-processing, a test input cropped from the run's own training data
with the output selma3d computes for it, a cover image and a README. It is built and validated
with ``bioimageio.spec`` (optional extra ``selma3d[bioimageio]``).

Normalization: selma3d maps the 0.05th/99.95th percentiles to [-1, 1] and clips
(:class:`~selma3d.data.normalize.Normalization`), which the spec expresses exactly as
``scale_range`` → ``scale_linear`` (×2 − 1) → ``clip``. The noise floor (upper end ≥ lower end +
k·σ_noise) has no spec operation; it changes the scaling only for images whose structure is
fainter than k noise sigmas (empty or nearly empty crops). The package therefore uses plain
percentiles and says so in its README, with whether the floor is active on the test crop; the
test output is computed with exactly the package's pre-processing, so the package test checks
the package, not selma3d.
"""

from __future__ import annotations

import getpass
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..data.normalize import Normalization, normalize, percentiles
from ..errors import InputError, Selma3dError
from ..inference.predict import LoadedRun, load_run
from ..io.nifti import read_nifti
from ..utils.atomic import atomic_path

INPUT_ID = "raw"
OUTPUT_ID = "mask"
#: papers of each architecture (DOIs of the arXiv records); MONAI for anything else
ARCHITECTURE_CITATIONS = {
    "unet3d": ("Çiçek et al. 2016, 3D U-Net: learning dense volumetric segmentation from sparse annotation",
               "10.48550/arXiv.1606.06650"),
    "swinunetr": ("Hatamizadeh et al. 2022, Swin UNETR: Swin transformers for semantic segmentation of "
                  "brain tumors in MRI images", "10.48550/arXiv.2201.01266"),
}
MONAI_CITATION = ("Cardoso et al. 2022, MONAI: an open-source framework for deep learning in healthcare",
                  "10.48550/arXiv.2211.02701")


def _require_spec():
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise Selma3dError("model export needs bioimageio.spec: pip install 'selma3d[bioimageio]'") from None


# --------------------------------------------------------------------------- test data

def find_training_image(run: LoadedRun) -> tuple[Path, Path | None]:
    """(image, label) of the first training case recorded in ``run.json`` that still exists."""
    data = Path(str(run.info.get("training", {}).get("data", "")))
    cases = list(run.info.get("split", {}).get("train", [])) + list(run.info.get("split", {}).get("val", []))
    for case in cases:
        for image in sorted(data.glob(f"annotated/*/*/{case}_img.nii*")):
            label = next(iter(sorted(image.parent.glob(f"{case}_label.nii*"))), None)
            return image, label
    raise InputError(f"{run.path}: the training data recorded in run.json ({data}) is not there any more; "
                     "give a test image with --test-input")


def crop_around_foreground(image: np.ndarray, label: np.ndarray | None, size) -> np.ndarray:
    """A ``size`` crop of ``image`` centred on the label's foreground (else on the image centre)."""
    size = [min(int(s), int(n)) for s, n in zip(size, image.shape)]
    if label is not None and label.shape == image.shape and np.any(label > 0):
        centre = np.argwhere(label > 0).mean(axis=0)
    else:
        centre = np.array(image.shape) / 2.0
    starts = [int(np.clip(round(c - s / 2), 0, n - s)) for c, s, n in zip(centre, size, image.shape)]
    return image[tuple(slice(a, a + s) for a, s in zip(starts, size))]


def test_crop_size(run: LoadedRun, shape) -> tuple[int, int, int]:
    """The run's patch size, cut down to a multiple of the network's size divisor inside ``shape``."""
    divisor = int(getattr(run.model, "size_divisor", 1) or 1)
    size = []
    for p, n in zip(run.patch_size, shape):
        s = min(int(p), int(n)) // divisor * divisor
        if s < divisor:
            raise InputError(f"test image of shape {tuple(shape)} is smaller than the network's size "
                             f"divisor {divisor} along an axis")
        size.append(s)
    return tuple(size)


def package_preprocessing(array: np.ndarray, norm: Normalization) -> np.ndarray:
    """What the package's pre-processing computes: plain percentiles → [-1, 1], clipped.

    The spec's ``scale_range`` divides by ``hi − lo + eps`` (eps 1e-6); selma3d by
    ``max(hi − lo, 1e-6)``: the same to float32 precision whenever the image is not constant.
    """
    lo, hi = percentiles(np.asarray(array, dtype=np.float32), norm.low, norm.high)
    return normalize(array, lo, hi)


# --------------------------------------------------------------------------- the package

def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, *, test_input: str | os.PathLike | None = None,
               name: str | None = None, authors: list[str] | None = None, license: str = "CC-BY-4.0",
               description: str | None = None, validate: bool = True) -> Path:
    """Write ``out`` (a ``.zip`` bioimage.io model package) for the finetuned run ``run_dir``.

    ``test_input``: a NIfTI image to crop the test tensor from (default: the run's first training
    case). Returns ``out``; raises :class:`Selma3dError` with the validator's summary when the
    package does not validate.
    """
    _require_spec()
    out = Path(out)
    if out.suffix != ".zip":
        raise InputError(f"{out}: the package is a .zip file; name the output *.zip")
    run = load_run(run_dir, device="cpu")
    if run.downsample_xy != 1:
        raise InputError(f"{run_dir}: trained at --downsample-xy {run.downsample_xy}; a bioimage.io package "
                         "describes a full-resolution model, so this run cannot be exported yet")
    norm = run.normalization
    if test_input is not None:
        image, label_path = Path(test_input), None
    else:
        image, label_path = find_training_image(run)
    volume = read_nifti(image)
    label = read_nifti(label_path).array if label_path is not None else None
    spacing = tuple(float(s) for s in volume.spacing_zyx)
    crop = crop_around_foreground(volume.array, label, test_crop_size(run, volume.array.shape))

    with tempfile.TemporaryDirectory(prefix="selma3d-export-") as tmp:
        tmp = Path(tmp)
        files = _write_files(run, norm, crop, spacing, tmp)
        descr = _describe(run, norm, crop, spacing, files, name=name, authors=authors, license=license,
                          description=description, source=image)
        _save_package(descr, out, validate=validate)
    return out


def _write_files(run: LoadedRun, norm: Normalization, crop: np.ndarray, spacing, folder: Path) -> dict:
    """Weights, test tensors, cover and README in ``folder``; returns their paths by role."""
    model = run.model.cpu().eval()
    x = torch.from_numpy(np.ascontiguousarray(package_preprocessing(crop, norm)))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks of padding: sizes are fixed multiples
        traced = torch.jit.trace(model, x)
    with torch.no_grad():
        logits = traced(x)
        probability = torch.sigmoid(logits)[0, 0].numpy()
    mask = (probability > run.threshold).astype(np.float32)
    files = {"weights": folder / "weights.torchscript.pt", "test_input": folder / "test_input.npy",
             "test_output": folder / "test_output.npy", "cover": folder / "cover.png",
             "doc": folder / "README.md"}
    traced.save(str(files["weights"]))
    np.save(files["test_input"], np.ascontiguousarray(crop)[None, None])
    np.save(files["test_output"], mask[None, None])
    _write_cover(crop, mask, files["cover"])
    files["floor_active"] = _floor_active(crop, norm)
    files["foreground"] = float(mask.mean())
    return files


def _floor_active(crop: np.ndarray, norm: Normalization) -> bool | None:
    """Whether selma3d's noise floor would raise the upper end on the test crop (None: no floor)."""
    if norm.noise_floor is None:
        return None
    plain = percentiles(np.asarray(crop, dtype=np.float32), norm.low, norm.high)
    return norm.statistics(crop)[1] > plain[1] + 1e-6


def _write_cover(crop: np.ndarray, mask: np.ndarray, path: Path) -> None:
    """Middle z slice of the test input with the predicted mask in red (the zoo's 2:1 cover)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1))) if mask.any() else crop.shape[0] // 2
    fig, axes = plt.subplots(1, 2, figsize=(4, 2), dpi=100)
    plane = crop[z].astype(np.float32)
    for ax in axes:
        ax.imshow(plane, cmap="gray")
        ax.axis("off")
    overlay = np.zeros(plane.shape + (4,), dtype=np.float32)
    overlay[mask[z] > 0] = (1.0, 0.0, 0.0, 0.6)
    axes[1].imshow(overlay)
    fig.subplots_adjust(0, 0, 1, 1, 0.02, 0)
    fig.savefig(path)
    plt.close(fig)


def _readme(run: LoadedRun, norm: Normalization, files: dict, source: Path, name: str) -> str:
    floor = files["floor_active"]
    if floor is None:
        floor_text = ("This run was trained with plain percentiles (no noise floor), so the package's "
                      "pre-processing is exactly the training normalization.")
    else:
        floor_text = (
            f"selma3d trained this run with a noise floor: the upper end is at least {norm.noise_floor:g} noise "
            "standard deviations (measured from neighbouring-voxel differences along x) above the lower end. "
            "The bioimage.io spec has no operation for that, so this package uses the plain percentiles. "
            "The two agree on any image whose structure is brighter than the floor; on an empty or very dim "
            "image the package stretches noise over [-1, 1] where selma3d keeps it near -1, so expect more "
            "false positives there; `selma3d predict` applies the floor. "
            f"On the test crop the floor is {'active (the test output uses plain percentiles)' if floor else 'inactive'}.")
    structures = ", ".join(run.info.get("structures", [])) or "unknown"
    return f"""# {name}

A 3D segmentation network for light-sheet microscopy of cleared tissue, trained with
[selma3d](https://pypi.org/project/selma3d/) (`selma3d finetune`) and exported with `selma3d export`.

- structures: {structures} (type: {run.type})
- architecture: {run.info.get('model', {}).get('name', 'unknown')} ({json.dumps(run.info.get('model', {}))})
- training patch size (z, y, x): {list(run.patch_size)}
- probability threshold: {run.threshold:g}

## Input and pre-processing
One channel, axes (batch, channel, z, y, x), any integer or float type (cast to float32). The
{norm.low:g}th and {norm.high:g}th percentiles of the whole input map to -1 and 1, values outside are
clipped (`scale_range` → `scale_linear` ×2 −1 → `clip`). Compute the percentiles over a whole volume,
not per tile: a crop with little structure gets a stretched noise scale otherwise.

{floor_text}

## Output and post-processing
`sigmoid` of the network's logits, then `binarize` at the run's threshold {run.threshold:g}: a binary
foreground mask of the input's shape. Spatial sizes must be multiples of
{int(getattr(run.model, 'size_divisor', 1) or 1)}; windows of the training patch size with overlap and
Gaussian blending (as `selma3d predict` does) give the best results on large volumes.

## Validation
The test input is a crop of `{source.name}` from the run's own training data; the test output is the
mask this package's pre-processing, weights and post-processing compute for it
(foreground fraction {files['foreground']:.4f}). The package validates with `bioimageio.spec` and its
test runs with `bioimageio.core` (`test_model`).

## Limitations
Trained on few annotated patches; check the masks on your own data (e.g. `selma3d evaluate`) before
counting objects with them.
"""


def _describe(run: LoadedRun, norm: Normalization, crop: np.ndarray, spacing, files: dict, *, name, authors,
              license, description, source: Path):
    from bioimageio.spec.model import v0_5 as spec

    structures = list(run.info.get("structures", []))
    name = name or f"selma3d {'-'.join(structures) or 'segmentation'} {run.type} model"
    files["doc"].write_text(_readme(run, norm, files, source, name))
    divisor = int(getattr(run.model, "size_divisor", 1) or 1)
    axis_ids = ("z", "y", "x")
    input_axes = [spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("intensity")])] + [
        spec.SpaceInputAxis(id=spec.AxisId(a), size=spec.ParameterizedSize(min=divisor, step=divisor),
                            scale=s, unit="micrometer") for a, s in zip(axis_ids, spacing)]
    output_axes = [spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("foreground")])] + [
        spec.SpaceOutputAxis(id=spec.AxisId(a), scale=s, unit="micrometer",
                             size=spec.SizeReference(tensor_id=spec.TensorId(INPUT_ID), axis_id=spec.AxisId(a)))
        for a, s in zip(axis_ids, spacing)]
    preprocessing = [
        spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")),
        spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(axes=[spec.AxisId(a) for a in axis_ids],
                                                          min_percentile=norm.low, max_percentile=norm.high)),
        spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=2.0, offset=-1.0)),
        spec.ClipDescr(kwargs=spec.ClipKwargs(min=-1.0, max=1.0)),
        # bioimageio.core 0.11 casts processed tensors back to the input's declared type: float32 again
        spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")),
    ]
    postprocessing = [
        spec.SigmoidDescr(),
        spec.BinarizeDescr(kwargs=spec.BinarizeKwargs(threshold=run.threshold)),
        spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")),
    ]
    inputs = [spec.InputTensorDescr(
        id=spec.TensorId(INPUT_ID), axes=input_axes, test_tensor=spec.FileDescr(source=files["test_input"]),
        data=spec.IntervalOrRatioDataDescr(type=str(np.dtype(crop.dtype))), preprocessing=preprocessing,
        description="light-sheet image, one channel")]
    outputs = [spec.OutputTensorDescr(
        id=spec.TensorId(OUTPUT_ID), axes=output_axes, test_tensor=spec.FileDescr(source=files["test_output"]),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)), postprocessing=postprocessing,
        description=f"binary foreground mask (probability > {run.threshold:g})")]
    model_name = run.info.get("model", {}).get("name", "")
    citations = [ARCHITECTURE_CITATIONS.get(model_name, MONAI_CITATION)]
    if citations[0] != MONAI_CITATION:
        citations.append(MONAI_CITATION)
    return spec.ModelDescr(
        name=name,
        description=description or (f"3D segmentation of {', '.join(structures) or 'structures'} in light-sheet "
                                    f"microscopy of cleared tissue ({model_name}, selma3d)."),
        authors=[spec.Author(name=a) for a in (authors or [getpass.getuser()])],
        cite=[spec.CiteEntry(text=text, doi=spec.Doi(doi)) for text, doi in citations],
        license=license,
        documentation=spec.FileDescr(source=files["doc"]),
        covers=[spec.FileDescr(source=files["cover"])],
        tags=["3d", "light-sheet", "segmentation", "selma3d", "pytorch", run.type] + structures,
        inputs=inputs,
        outputs=outputs,
        weights=spec.WeightsDescr(torchscript=spec.TorchscriptWeightsDescr(
            source=files["weights"], pytorch_version=spec.Version(torch.__version__.split("+")[0]))),
    )


def _save_package(descr, out: Path, validate: bool) -> None:
    """Validate ``descr`` and write the zip atomically (a temporary name, then rename)."""
    from bioimageio.spec import save_bioimageio_package

    summary = getattr(descr, "validation_summary", None)
    if validate and summary is not None and summary.status == "failed":
        raise Selma3dError(f"the model description does not validate:\n{summary.format()}")
    with atomic_path(out, suffix=".zip") as tmp:
        save_bioimageio_package(descr, output_path=tmp)


def validate_package(path: str | os.PathLike):
    """``bioimageio.spec``'s validation summary of a package (``.status`` is "valid-format" or
    "failed"; ``.format()`` is the human-readable report)."""
    _require_spec()
    from bioimageio.spec import load_description

    descr = load_description(str(path))
    return descr.validation_summary
