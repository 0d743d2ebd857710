"""A second, deliberately independent phantom generator, for out-of-distribution checks.

A model that scores well on :mod:`selma3d.data.synthetic` may have learned that generator: its
object shapes, its PSF, its noise. This module shares no code with :mod:`.phantoms` or
:mod:`.imaging` and makes other choices on purpose — voxel-unit geometry with no physical
spacing, cells as superellipsoids with soft texture, tubes as smoothed random walks, background
from filtered noise instead of cosines, a Gaussian PSF of its own width, Poisson noise on a
uint16 camera with no int16 storage — so that "beats an Otsu threshold here" says something
about the method rather than about the generator. Labels are the objects before blur and noise.

Used by the transfer benchmark (``benchmarks/transfer_bench.py``), the transfer tests and
``selma3d study`` (as an extra test set, ``--ood``).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

KINDS = ("spot", "tree")


def _background(shape, rng, level: float, variation: float) -> np.ndarray:
    """Smooth autofluorescence: low-pass filtered white noise, rescaled to mean ``level``."""
    field = gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=[s / 4 for s in shape])
    field = (field - field.mean()) / max(float(field.std()), 1e-6)
    texture = gaussian_filter(rng.normal(size=shape).astype(np.float32), 1.5)
    texture /= max(float(texture.std()), 1e-6)
    return level * (1 + variation * field + 0.05 * texture).clip(0.2, None)


def _cells(shape, rng, count: int, radius: tuple[float, float]):
    """Superellipsoid cells (exponent 2.5, slightly boxy), soft inner texture; (signal, label)."""
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    signal = np.zeros(shape, np.float32)
    label = np.zeros(shape, np.uint8)
    for _ in range(count):
        r = rng.uniform(*radius) * rng.uniform(0.8, 1.2, 3)
        c = [rng.uniform(r[i], s - r[i]) for i, s in enumerate(shape)]
        lo = [max(0, int(c[i] - r[i] - 1)) for i in range(3)]
        hi = [min(s, int(c[i] + r[i] + 2)) for i, s in enumerate(shape)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        d = (np.abs((zz[box] - c[0]) / r[0]) ** 2.5 + np.abs((yy[box] - c[1]) / r[1]) ** 2.5
             + np.abs((xx[box] - c[2]) / r[2]) ** 2.5)
        inside = d <= 1
        brightness = rng.lognormal(0.0, 0.35)
        signal[box] = np.maximum(signal[box], inside * brightness * (1 - 0.3 * d))
        label[box] |= inside.astype(np.uint8)
    return signal, label


def _tubes(shape, rng, count: int, radius: tuple[float, float]):
    """Branching smoothed random walks drawn as balls along the path; (signal, label)."""
    label = np.zeros(shape, np.uint8)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    shape_arr = np.asarray(shape, float)
    starts = [rng.uniform(0, 1, 3) * shape_arr for _ in range(count)]
    queue = [(p, None, rng.uniform(*radius), 0) for p in starts]
    while queue:
        p, direction, r, depth = queue.pop()
        direction = rng.normal(size=3) if direction is None else direction
        direction = direction / np.linalg.norm(direction)
        for step in range(int(rng.integers(20, 60))):
            direction = direction + rng.normal(0, 0.25, 3)
            direction /= np.linalg.norm(direction)
            p = p + direction * max(1.0, r)
            if np.any(p < 0) or np.any(p >= shape_arr):
                break
            lo = np.maximum(0, np.floor(p - r - 1)).astype(int)
            hi = np.minimum(shape_arr, np.ceil(p + r + 2)).astype(int)
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            ball = ((zz[box[0]] - p[0]) ** 2 + (yy[:, box[1]] - p[1]) ** 2
                    + (xx[:, :, box[2]] - p[2]) ** 2) <= r * r
            label[box] |= ball.astype(np.uint8)
            if depth < 2 and step > 5 and rng.random() < 0.04:
                queue.append((p.copy(), direction + rng.normal(0, 1.0, 3), max(0.8, r * 0.8), depth + 1))
    signal = label.astype(np.float32) * rng.uniform(0.7, 1.0)
    return signal, label


def ood_case(kind: str, shape=(96, 96, 96), seed: int = 0, *, contrast: float | None = None,
             radius: tuple[float, float] | None = None, count: int | None = None,
             psf_sigma=None, photons: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint16, label uint8) pair of ``kind`` ``spot`` or ``tree``, all (z, y, x).

    Unset parameters are drawn from "another lab" ranges: spots are larger (radius 3.5–6.5
    voxels) and sparser than the synthetic c-Fos cells, contrast 1.5–5 × background, a z-wide
    PSF, 30–100 photons of background per voxel.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng([seed, KINDS.index(kind), 77])
    shape = tuple(int(s) for s in shape)
    if kind == "spot":
        radius = radius or (3.5, 6.5)
        count = count if count is not None else int(rng.integers(6, 20))
        signal, label = _cells(shape, rng, count, radius)
    else:
        radius = radius or (0.9, 2.2)
        count = count if count is not None else int(rng.integers(4, 9))
        signal, label = _tubes(shape, rng, count, radius)
    contrast = contrast if contrast is not None else float(rng.uniform(1.5, 5.0))
    psf = psf_sigma if psf_sigma is not None else (rng.uniform(1.5, 2.5), rng.uniform(0.6, 1.1), rng.uniform(0.6, 1.1))
    photons = photons if photons is not None else float(rng.uniform(30.0, 100.0))
    background = _background(shape, rng, level=1.0, variation=float(rng.uniform(0.05, 0.25)))
    expected = gaussian_filter(background + contrast * signal, sigma=psf)
    counts = rng.poisson(expected * photons).astype(np.float32) + rng.normal(0, 2.0, shape)
    image = np.clip(np.rint(counts * 8 + 180), 0, 65535).astype(np.uint16)  # gain 8, offset 180
    return image, label

