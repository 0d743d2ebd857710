"""MONAI augmentation pipelines for finetuning (image + label dicts) and for SSL views (tensors).

``finetune_transforms(patch_size, seed)`` expects ``{"image": (C, D, H, W), "label": (1, D, H, W)}``
(channel first, arrays or tensors, image already normalized to [-1, 1]) and returns a *list* of
``num_samples`` cropped, augmented dicts (MONAI's ``list_data_collate`` flattens such lists into
the batch). The crop is foreground balanced: with ``pos=neg=1`` half the crops are centred on a
foreground voxel. Spatial transforms act on image and label together (labels with nearest
neighbour interpolation); intensity transforms act on the image only. Augmentation follows
normalization (as in nnU-Net) and randomizes what differs between brains and light-sheet
microscopes: cell size, background, illumination, PSF, noise (``lsm_augment``). With
``skeleton=True`` each crop also carries ``"skeleton"`` for the skeleton recall loss.

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
    RandBiasFieldd,
    RandCropByPosNegLabeld,
    RandFlip,
    RandFlipd,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandRotate90d,
    RandScaleIntensity,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandShiftIntensity,
    RandSpatialCrop,
    RandZoomd,
    SpatialPad,
    SpatialPadd,
)

from selma3d.errors import Selma3dError
from selma3d.training.lsm_augment import (
    RandBackgroundLeveld,
    RandDepthAttenuationd,
    RandPoissonGaussianNoised,
    RandPSFBlurd,
    RandStripesd,
    unit_range_block,
)
from selma3d.training.skeleton import DEFAULT_DILATION, SkeletonizeLabeld

KEYS = ("image", "label")

# Probabilities (p_*) and magnitudes per strength. Rotations in degrees; scale, zoom and intensity
# magnitudes as fractions. Intensity magnitudes are in the physical range u = (x + 1) / 2 in [0, 1]
# (see ``lsm_augment``): background = largest raise of the background level (lowering goes half as
# far), attenuation = largest loss at the far side of the patch, stripe_depth = darkest band,
# bias = largest polynomial coefficient of the log bias field, blur_z / blur_yx = largest PSF
# sigmas in voxels, gamma = largest log-symmetric gamma change, snr_min = lowest peak SNR of the
# added noise (the highest is 10x that).
_NO_AUGMENTATION: dict[str, float] = {
    "p_flip": 0.0, "p_rot90": 0.0, "p_affine": 0.0, "rotate_deg": 0.0, "scale": 0.0, "p_zoom": 0.0, "zoom": 0.0,
    "p_background": 0.0, "background": 0.0, "p_attenuation": 0.0, "attenuation": 0.0, "p_stripes": 0.0,
    "stripe_depth": 0.0, "p_bias": 0.0, "bias": 0.0, "p_blur": 0.0, "blur_z": 0.0, "blur_yx": 0.0,
    "p_scale": 0.0, "scale_int": 0.0, "p_contrast": 0.0, "contrast": 0.0, "p_gamma": 0.0, "gamma": 0.0,
    "p_noise": 0.0, "snr_min": 0.0,
}
STRENGTHS: dict[str, dict[str, float]] = {
    "none": dict(_NO_AUGMENTATION),
    "light": {**_NO_AUGMENTATION, "p_flip": 0.5, "p_rot90": 0.5, "p_affine": 0.1, "rotate_deg": 5.0, "scale": 0.05,
              "p_zoom": 0.1, "zoom": 0.1, "p_background": 0.1, "background": 0.1, "p_attenuation": 0.1,
              "attenuation": 0.3, "p_stripes": 0.1, "stripe_depth": 0.3, "p_bias": 0.1, "bias": 0.05,
              "p_blur": 0.1, "blur_z": 1.0, "blur_yx": 0.5, "p_scale": 0.1, "scale_int": 0.1, "p_contrast": 0.1,
              "contrast": 0.1, "p_gamma": 0.1, "gamma": 0.2, "p_noise": 0.1, "snr_min": 10.0},
    "default": {**_NO_AUGMENTATION, "p_flip": 0.5, "p_rot90": 0.5, "p_affine": 0.2, "rotate_deg": 10.0,
                "scale": 0.1, "p_zoom": 0.3, "zoom": 0.3, "p_background": 0.3, "background": 0.2,
                "p_attenuation": 0.3, "attenuation": 0.5, "p_stripes": 0.25, "stripe_depth": 0.6, "p_bias": 0.3,
                "bias": 0.1, "p_blur": 0.3, "blur_z": 2.0, "blur_yx": 1.0, "p_scale": 0.2, "scale_int": 0.2,
                "p_contrast": 0.2, "contrast": 0.3, "p_gamma": 0.3, "gamma": 0.4, "p_noise": 0.3, "snr_min": 4.0},
    "strong": {**_NO_AUGMENTATION, "p_flip": 0.5, "p_rot90": 0.5, "p_affine": 0.4, "rotate_deg": 20.0,
               "scale": 0.2, "p_zoom": 0.4, "zoom": 0.4, "p_background": 0.5, "background": 0.3,
               "p_attenuation": 0.4, "attenuation": 0.7, "p_stripes": 0.4, "stripe_depth": 0.8, "p_bias": 0.4,
               "bias": 0.15, "p_blur": 0.4, "blur_z": 3.0, "blur_yx": 1.5, "p_scale": 0.3, "scale_int": 0.3,
               "p_contrast": 0.3, "contrast": 0.4, "p_gamma": 0.4, "gamma": 0.5, "p_noise": 0.5, "snr_min": 2.0},
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
    skeleton: bool = False,
    skeleton_dilation: int = DEFAULT_DILATION,
    fg_indices_key: str | None = None,
    bg_indices_key: str | None = None,
) -> Compose:
    """Pad to ``patch_size``, foreground-balanced random crop, then spatial and light-sheet augmentations.

    Spatial (image and label together): flips on all axes; random 90 degree rotations of the
    (y, x) plane, only when the patch is square in y and x (otherwise the shape would change);
    small rotations/scalings; scale jitter (``RandZoomd``, object size ± ``zoom``, image
    trilinear, label nearest-exact, shape kept). Intensity (image only, in the physical range
    u = (x + 1) / 2, clipped back to [-1, 1]): background level, depth attenuation, stripes,
    bias field, anisotropic PSF blur, gain, contrast, gamma, Poisson-Gaussian noise. Their order
    follows image formation: illumination, optics, camera.

    ``skeleton=True`` appends ``SkeletonizeLabeld``: each crop also gets ``"skeleton"``, the tubed
    skeleton of its augmented label, for the ``*+skelrec`` losses. ``seed`` makes the sequence of
    random draws reproducible.

    ``fg_indices_key`` / ``bg_indices_key``: keys of foreground / background voxel indices that the
    caller computed once per (already padded) patch with MONAI's ``FgBgToIndicesd``; the crop then
    does not recompute them from the label on every draw (same crops; ~6 ms less per 64³ crop,
    see BENCHMARKS.md).
    """
    size = _size3(patch_size)
    s = _strength(strength)
    if num_samples < 1:
        raise Selma3dError(f"num_samples must be ≥ 1, got {num_samples}")
    transforms = [
        EnsureTyped(keys=KEYS, data_type="tensor", dtype=torch.float32, track_meta=False),
        SpatialPadd(keys=KEYS, spatial_size=size, mode="replicate"),
        RandCropByPosNegLabeld(keys=KEYS, label_key="label", spatial_size=size, pos=pos, neg=neg,
                               num_samples=num_samples, fg_indices_key=fg_indices_key,
                               bg_indices_key=bg_indices_key),
        *_spatial(s, size),
        *_light_sheet(s),
    ]
    if skeleton:
        transforms.append(SkeletonizeLabeld(label_key="label", skeleton_key="skeleton", dilation=skeleton_dilation))
    keys = (*KEYS, "skeleton") if skeleton else KEYS
    transforms.append(EnsureTyped(keys=keys, data_type="tensor", dtype=torch.float32, track_meta=False))
    pipeline = Compose(transforms)
    if seed is not None:
        pipeline.set_random_state(seed=seed)
    return pipeline


def _spatial(s: dict[str, float], size: tuple[int, int, int]) -> list:
    transforms: list = []
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
    if s["p_zoom"] > 0:  # cell size: one isotropic factor; zoomed-out crops are mirror padded
        transforms.append(RandZoomd(keys=KEYS, prob=s["p_zoom"], min_zoom=1 - s["zoom"], max_zoom=1 + s["zoom"],
                                    mode=("trilinear", "nearest-exact"), padding_mode="reflect", keep_size=True))
    return transforms


def _light_sheet(s: dict[str, float]) -> list:
    """Intensity augmentations in u space, in image-formation order (empty when all are off)."""
    image = "image"
    transforms: list = []
    if s["p_background"] > 0:
        transforms.append(RandBackgroundLeveld(image, prob=s["p_background"],
                                               shift=(-s["background"] / 2, s["background"])))
    if s["p_attenuation"] > 0:
        transforms.append(RandDepthAttenuationd(image, prob=s["p_attenuation"], axes=(0, 2),
                                                loss=(0.05, s["attenuation"])))
    if s["p_stripes"] > 0:
        transforms.append(RandStripesd(image, prob=s["p_stripes"], depth=(0.1, s["stripe_depth"])))
    if s["p_bias"] > 0:
        transforms.append(RandBiasFieldd(image, prob=s["p_bias"], degree=3, coeff_range=(-s["bias"], s["bias"])))
    if s["p_blur"] > 0:
        transforms.append(RandPSFBlurd(image, prob=s["p_blur"], sigma_z=(0.5, max(0.5, s["blur_z"])),
                                       sigma_y=(0.25, max(0.25, s["blur_yx"])),
                                       sigma_x=(0.25, max(0.25, s["blur_yx"]))))
    if s["p_scale"] > 0:
        transforms.append(RandScaleIntensityd(image, factors=s["scale_int"], prob=s["p_scale"]))
    if s["p_contrast"] > 0:  # scales deviations from the mean (~ the background): foreground contrast
        transforms.append(RandScaleIntensityFixedMeand(image, factors=s["contrast"], prob=s["p_contrast"],
                                                       fixed_mean=True))
    if s["p_gamma"] > 0:
        transforms.append(RandAdjustContrastd(image, prob=s["p_gamma"],
                                              gamma=(1 / (1 + s["gamma"]), 1 + s["gamma"]), retain_stats=False))
    if s["p_noise"] > 0:
        transforms.append(RandPoissonGaussianNoised(image, prob=s["p_noise"], snr=(s["snr_min"], 10 * s["snr_min"])))
    return unit_range_block(transforms, image) if transforms else []


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
