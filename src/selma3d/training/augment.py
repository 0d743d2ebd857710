"""MONAI augmentation pipelines for finetuning (image + label dicts) and for SSL views (tensors).

``finetune_transforms(patch_size, seed)`` expects ``{"image": (C, D, H, W), "label": (1, D, H, W)}``
(channel first, arrays or tensors, image already normalized to [-1, 1]) and returns a *list* of
``num_samples`` cropped, augmented dicts (MONAI's ``list_data_collate`` flattens such lists into
the batch). The crop is foreground balanced: with ``pos=neg=1`` half the crops are centred on a
foreground voxel. Spatial transforms act on image and label together (labels with nearest
neighbour interpolation); intensity transforms act on the image only.

``ssl_view_transforms(crop_size, seed)`` maps one sample (C, D, H, W) to a random view of
``crop_size``; ``make_views(batch, transform, n_views)`` applies it to each sample of a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureType,
    EnsureTyped,
    RandAdjustContrast,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlip,
    RandFlipd,
    RandGaussianNoise,
    RandGaussianNoised,
    RandGaussianSmooth,
    RandRotate90d,
    RandScaleIntensity,
    RandScaleIntensityd,
    RandShiftIntensity,
    RandShiftIntensityd,
    RandSpatialCrop,
    SpatialPad,
    SpatialPadd,
)

from selma3d.errors import Selma3dError

KEYS = ("image", "label")

# Probabilities and ranges per strength. Rotations in degrees, scales as +- fractions,
# intensity values in units of the [-1, 1] normalized range.
STRENGTHS: dict[str, dict[str, float]] = {
    "none": {"p_flip": 0.0, "p_rot90": 0.0, "p_affine": 0.0, "rotate_deg": 0.0, "scale": 0.0, "p_contrast": 0.0,
             "gamma": 0.0, "p_noise": 0.0, "noise_std": 0.0, "p_scale": 0.0, "scale_int": 0.0, "p_shift": 0.0,
             "shift": 0.0},
    "light": {"p_flip": 0.5, "p_rot90": 0.5, "p_affine": 0.1, "rotate_deg": 5.0, "scale": 0.05, "p_contrast": 0.1,
              "gamma": 0.2, "p_noise": 0.1, "noise_std": 0.02, "p_scale": 0.1, "scale_int": 0.05, "p_shift": 0.1,
              "shift": 0.05},
    "default": {"p_flip": 0.5, "p_rot90": 0.5, "p_affine": 0.2, "rotate_deg": 10.0, "scale": 0.1, "p_contrast": 0.2,
                "gamma": 0.3, "p_noise": 0.15, "noise_std": 0.05, "p_scale": 0.2, "scale_int": 0.1, "p_shift": 0.2,
                "shift": 0.1},
    "strong": {"p_flip": 0.5, "p_rot90": 0.5, "p_affine": 0.4, "rotate_deg": 20.0, "scale": 0.2, "p_contrast": 0.3,
               "gamma": 0.5, "p_noise": 0.3, "noise_std": 0.1, "p_scale": 0.3, "scale_int": 0.2, "p_shift": 0.3,
               "shift": 0.2},
}


def _size3(patch_size) -> tuple[int, int, int]:
    if isinstance(patch_size, int) and not isinstance(patch_size, bool):
        patch_size = (patch_size,) * 3
    if not isinstance(patch_size, Sequence) or len(patch_size) != 3 or not all(
        isinstance(s, (int, np.integer)) and s > 0 for s in patch_size
    ):
        raise Selma3dError(f"patch size must be a positive int or three positive ints (z, y, x), got {patch_size!r}")
    return tuple(int(s) for s in patch_size)  # type: ignore[return-value]


def _strength(strength: str) -> dict[str, float]:
    if strength not in STRENGTHS:
        raise Selma3dError(f"unknown augmentation strength {strength!r}; choose one of: {', '.join(STRENGTHS)}")
    return STRENGTHS[strength]


def finetune_transforms(
    patch_size,
    seed: int | None = 0,
    strength: str = "default",
    num_samples: int = 1,
    pos: float = 1.0,
    neg: float = 1.0,
) -> Compose:
    """Pad to ``patch_size``, foreground-balanced random crop, then MONAI augmentations.

    Random 90 degree rotations turn the (y, x) plane only, and only when the patch is square
    in y and x (otherwise the output shape would change); flips on all three axes cover the
    remaining symmetries. ``seed`` makes the sequence of random draws reproducible.
    """
    size = _size3(patch_size)
    s = _strength(strength)
    if num_samples < 1:
        raise Selma3dError(f"num_samples must be ≥ 1, got {num_samples}")
    transforms = [
        EnsureTyped(keys=KEYS, data_type="tensor", dtype=torch.float32, track_meta=False),
        SpatialPadd(keys=KEYS, spatial_size=size, mode="replicate"),
        RandCropByPosNegLabeld(keys=KEYS, label_key="label", spatial_size=size, pos=pos, neg=neg,
                               num_samples=num_samples),
    ]
    if s["p_flip"] > 0:
        transforms += [RandFlipd(keys=KEYS, prob=s["p_flip"], spatial_axis=axis) for axis in range(3)]
    if s["p_rot90"] > 0 and size[1] == size[2]:
        transforms.append(RandRotate90d(keys=KEYS, prob=s["p_rot90"], max_k=3, spatial_axes=(1, 2)))
    if s["p_affine"] > 0:
        angle = math.radians(s["rotate_deg"])
        transforms.append(RandAffined(
            keys=KEYS, prob=s["p_affine"], rotate_range=(angle,) * 3, scale_range=(s["scale"],) * 3,
            mode=("bilinear", "nearest"), padding_mode="reflection",
        ))
    if s["p_contrast"] > 0:
        transforms.append(RandAdjustContrastd(keys="image", prob=s["p_contrast"],
                                              gamma=(1 - s["gamma"], 1 + s["gamma"]), retain_stats=True))
    if s["p_scale"] > 0:
        transforms.append(RandScaleIntensityd(keys="image", factors=s["scale_int"], prob=s["p_scale"]))
    if s["p_shift"] > 0:
        transforms.append(RandShiftIntensityd(keys="image", offsets=s["shift"], prob=s["p_shift"]))
    if s["p_noise"] > 0:
        transforms.append(RandGaussianNoised(keys="image", prob=s["p_noise"], std=s["noise_std"]))
    transforms.append(EnsureTyped(keys=KEYS, data_type="tensor", dtype=torch.float32, track_meta=False))
    pipeline = Compose(transforms)
    if seed is not None:
        pipeline.set_random_state(seed=seed)
    return pipeline


def ssl_view_transforms(
    crop_size,
    seed: int | None = None,
    flip_prob: float = 0.5,
    intensity_prob: float = 0.8,
    blur_prob: float = 0.5,
    noise_prob: float = 0.5,
) -> Compose:
    """One random view of a (C, D, H, W) sample: crop, flips, intensity, Gaussian blur, noise.

    The SimCLR/BYOL/DINO recipe adapted to single-channel LSM volumes (contrast/scale/shift
    instead of colour jitter): two calls on the same sample give two correlated views. Images
    are assumed normalized to [-1, 1]; samples smaller than ``crop_size`` are edge padded.
    """
    size = _size3(crop_size)
    for name, p in (("flip_prob", flip_prob), ("intensity_prob", intensity_prob), ("blur_prob", blur_prob),
                    ("noise_prob", noise_prob)):
        if not 0.0 <= p <= 1.0:
            raise Selma3dError(f"{name} must be in [0, 1], got {p}")
    pipeline = Compose([
        EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
        SpatialPad(spatial_size=size, mode="replicate"),
        RandSpatialCrop(roi_size=size, random_size=False),
        *[RandFlip(prob=flip_prob, spatial_axis=axis) for axis in range(3)],
        RandAdjustContrast(prob=intensity_prob, gamma=(0.7, 1.4), retain_stats=True),
        RandScaleIntensity(factors=0.2, prob=intensity_prob),
        RandShiftIntensity(offsets=0.2, prob=intensity_prob),
        RandGaussianSmooth(sigma_x=(0.5, 1.5), sigma_y=(0.5, 1.5), sigma_z=(0.5, 1.5), prob=blur_prob),
        RandGaussianNoise(prob=noise_prob, std=0.05),
        EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
    ])
    if seed is not None:
        pipeline.set_random_state(seed=seed)
    return pipeline


def make_views(batch: torch.Tensor, transform: Compose, n_views: int = 2) -> list[torch.Tensor]:
    """``n_views`` augmented views of each sample of ``batch`` (B, C, D, H, W), each (B, C, d, h, w).

    Each sample gets its own random draw (MONAI array transforms treat dim 0 as channels, so a
    whole batch passed at once would share one draw).
    """
    if batch.ndim != 5:
        raise Selma3dError(f"make_views expects a (B, C, D, H, W) batch, got shape {tuple(batch.shape)}")
    return [
        torch.stack([torch.as_tensor(transform(sample)) for sample in batch]).to(batch.device)
        for _ in range(n_views)
    ]
