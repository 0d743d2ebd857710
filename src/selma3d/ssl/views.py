"""Random augmented views of a batch of patches, made on the training device.

The SSL objectives need several differently augmented views of every patch in a batch. MONAI's
``Rand*`` transforms act on one sample at a time in the data pipeline; here the views are made
from the already-collated batch, on the GPU when there is one, so the loader only has to read
patches. The operations are the standard ones (random resized crop, flips, intensity
scale/shift, gamma, Gaussian blur with MONAI's ``GaussianFilter``, Gaussian noise, histogram
equalization, CLAHE with scikit-image, quarter turns, block and token masking); each sample of
the batch draws its own parameters. Works for 3D (B, C, D, H, W) and 2D (B, C, H, W) batches.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


def random_resized_crop(x: torch.Tensor, out_size: Sequence[int], scale: tuple[float, float] = (0.3, 1.0),
                        ) -> torch.Tensor:
    """Per sample, crop a random box holding ``scale`` of the volume (same aspect ratio as the
    input, as in 3D SSL practice) and resize it (trilinear/bilinear) to ``out_size``."""
    spatial = x.shape[2:]
    mode = "trilinear" if len(spatial) == 3 else "bilinear"
    out = []
    for sample in x:
        fraction = float(torch.empty(1).uniform_(*scale))
        side = fraction ** (1.0 / len(spatial))
        box = [max(1, min(n, round(n * side))) for n in spatial]
        start = [int(torch.randint(0, n - b + 1, (1,))) for n, b in zip(spatial, box)]
        crop = sample[(slice(None),) + tuple(slice(s, s + b) for s, b in zip(start, box))]
        out.append(F.interpolate(crop[None], size=tuple(out_size), mode=mode, align_corners=False))
    return torch.cat(out)


def random_flip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Flip each sample independently along each spatial axis with probability ``p``."""
    out = x.clone()
    for axis in range(2, x.ndim):
        flip = torch.rand(x.shape[0], device=x.device) < p
        if flip.any():
            out[flip] = out[flip].flip(axis)
    return out


def random_intensity(x: torch.Tensor, scale: float = 0.2, shift: float = 0.2) -> torch.Tensor:
    """x * (1 + U(-scale, scale)) + U(-shift, shift), per sample."""
    view = (x.shape[0],) + (1,) * (x.ndim - 1)
    factor = 1.0 + _uniform(x.shape[0], -scale, scale, x.device).view(view)
    offset = _uniform(x.shape[0], -shift, shift, x.device).view(view)
    return x * factor + offset


def random_gamma(x: torch.Tensor, gamma: tuple[float, float] = (0.6, 1.6), p: float = 0.8) -> torch.Tensor:
    """Contrast change by a random gamma on intensities rescaled to [0, 1] (then mapped back)."""
    out = x.clone()
    dims = tuple(range(1, x.ndim))
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    unit = (x - lo) / (hi - lo).clamp_min(1e-6)
    g = torch.exp(_uniform(x.shape[0], math.log(gamma[0]), math.log(gamma[1]), x.device))
    g = g.view((-1,) + (1,) * (x.ndim - 1))
    adjusted = unit.clamp_min(0).pow(g) * (hi - lo) + lo
    apply = torch.rand(x.shape[0], device=x.device) < p
    out[apply] = adjusted[apply]
    return out


def histogram_equalize(x: torch.Tensor) -> torch.Tensor:
    """Global histogram equalization per sample: each value is replaced by its rank (its
    empirical CDF), mapped to [-1, 1]. Done with a sort so it stays on the device."""
    flat = x.reshape(x.shape[0], -1)
    ranks = flat.argsort(dim=1).argsort(dim=1).to(x.dtype)
    return (ranks / max(flat.shape[1] - 1, 1) * 2.0 - 1.0).reshape(x.shape)


def clahe(x: torch.Tensor, clip_limit: float = 0.02) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalization (scikit-image) of each 2D slice of a
    (B, 1, H, W) batch in [-1, 1]; runs on the CPU."""
    from skimage.exposure import equalize_adapthist

    out = []
    for sample in x.detach().float().cpu().numpy():
        plane = np.clip((sample[0] + 1.0) / 2.0, 0.0, 1.0)
        out.append(equalize_adapthist(plane, clip_limit=clip_limit)[None] * 2.0 - 1.0)
    return torch.as_tensor(np.stack(out), dtype=x.dtype, device=x.device)


def random_contrast(x: torch.Tensor, p_gamma: float = 0.5, p_equalize: float = 0.2,
                    p_clahe: float = 0.2) -> torch.Tensor:
    """One contrast enhancement per sample: gamma, histogram equalization, CLAHE, or none."""
    choice = torch.rand(x.shape[0])
    out = x.clone()
    gamma = choice < p_gamma
    equal = (choice >= p_gamma) & (choice < p_gamma + p_equalize)
    adapt = (choice >= p_gamma + p_equalize) & (choice < p_gamma + p_equalize + p_clahe)
    if gamma.any():
        out[gamma] = random_gamma(x[gamma], p=1.0)
    if equal.any():
        out[equal] = histogram_equalize(x[equal])
    if adapt.any():
        out[adapt] = clahe(x[adapt])
    return out


def random_blur(x: torch.Tensor, sigma: tuple[float, float] = (0.3, 1.5), p: float = 0.5) -> torch.Tensor:
    """Gaussian blur (MONAI ``GaussianFilter``) with a random sigma for a random subset."""
    from monai.networks.layers import GaussianFilter

    out = x.clone()
    spatial_dims = x.ndim - 2
    for i in range(x.shape[0]):
        if float(torch.rand(1)) < p:
            s = float(torch.empty(1).uniform_(*sigma))
            out[i:i + 1] = GaussianFilter(spatial_dims, sigma=s, truncated=3.0).to(x.device)(x[i:i + 1])
    return out


def random_noise(x: torch.Tensor, std: float = 0.1, p: float = 0.5) -> torch.Tensor:
    """Add Gaussian noise of a random std in [0, ``std``] to a random subset."""
    apply = (torch.rand(x.shape[0], device=x.device) < p).to(x.dtype)
    level = torch.rand(x.shape[0], device=x.device) * std * apply
    return x + torch.randn_like(x) * level.view((-1,) + (1,) * (x.ndim - 1))


def augment_3d(x: torch.Tensor, out_size: Sequence[int] | None = None,
               crop_scale: tuple[float, float] = (0.3, 1.0)) -> torch.Tensor:
    """The BYOL/contrastive view of a batch of 3D patches: resized crop, flips, intensity
    scale/shift, blur, noise."""
    out_size = tuple(out_size or x.shape[2:])
    v = random_resized_crop(x, out_size, crop_scale)
    v = random_flip(v)
    v = random_intensity(v)
    v = random_blur(v)
    return random_noise(v)


def random_block_mask(shape: Sequence[int], ratio: float, block: Sequence[int] | int,
                      device=None) -> torch.Tensor:
    """Boolean mask (B, 1, *spatial) of random grid-aligned blocks covering about ``ratio`` of
    each sample (the masked volume inpainting / SimMIM recipe)."""
    b, spatial = shape[0], tuple(shape[2:])
    block = (block,) * len(spatial) if isinstance(block, int) else tuple(block)
    grid = tuple(math.ceil(n / k) for n, k in zip(spatial, block))
    cells = math.prod(grid)
    count = max(1, min(cells, round(ratio * cells)))
    scores = torch.rand(b, cells, device=device)
    chosen = scores.argsort(dim=1)[:, :count]
    cell_mask = torch.zeros(b, cells, dtype=torch.bool, device=device)
    cell_mask.scatter_(1, chosen, True)
    mask = cell_mask.view((b, 1) + grid)
    for axis, k in enumerate(block):
        mask = mask.repeat_interleave(k, dim=axis + 2)
    return mask[(slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)]


def random_token_mask(batch: int, tokens: int, ratio: tuple[float, float], device=None) -> torch.Tensor:
    """Boolean (batch, tokens) mask: per sample a random ratio in ``ratio`` of the tokens (at
    least 1, at most tokens − 1), chosen at random (iBOT's masked patch tokens)."""
    ratios = torch.empty(batch).uniform_(*ratio)
    scores = torch.rand(batch, tokens, device=device)
    counts = (ratios * tokens).round().clamp(1, tokens - 1).long().to(device)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < counts[:, None]


def random_rotation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each (C, D, H, W) sample by k·90° in the (H, W) plane; returns (views, k)."""
    k = torch.randint(0, 4, (x.shape[0],), device=x.device)
    rotated = torch.stack([torch.rot90(sample, int(r), dims=(2, 3)) for sample, r in zip(x, k)])
    return rotated, k
