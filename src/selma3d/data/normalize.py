"""Intensity normalization for networks, one function for pretraining, finetuning and prediction.

The convention (DESIGN.md): the 0.05th and 99.95th percentiles map to [-1, 1], clipped. On its
own that stretches *noise* to the full range whenever a patch holds little or no structure (a
100³ patch with a few dim cells: the 99.95th percentile is then a noise value), and a network
trained on bright, dense patches calls that stretched noise foreground. :class:`Normalization`
therefore adds a **noise floor**: the upper end is at least ``noise_floor`` noise standard
deviations above the lower end. The noise is measured from differences of neighbouring voxels
along x (median absolute deviation), which structure barely touches: blurred objects are smooth
at the voxel scale, camera and shot noise are not. Patches with real structure (SNR above the
floor) are normalized exactly as by plain percentiles; empty or very dim ones keep their noise
near the bottom of the range instead of spreading it over [-1, 1].

Statistics are estimated once per *source* — the whole annotated patch, or the whole volume
from a bounded subsample of its slices (:meth:`Normalization.volume_statistics`) — never per
network window or block, so neighbouring windows never see different scalings. The spec
travels with every artifact (``encoder.pt``, ``run.json``) as :meth:`Normalization.to_dict`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError

LOW_PERCENTILE = 0.05
HIGH_PERCENTILE = 99.95
#: upper end ≥ lower end + this many noise sigmas (≈ background + 9σ for Gaussian noise)
DEFAULT_NOISE_FLOOR = 12.0
#: voxels used for the statistics of one patch (a random subsample beyond that)
MAX_STAT_VOXELS = 4_000_000
METHODS = ("percentile",)


def noise_sigma(array: np.ndarray) -> float:
    """Robust standard deviation of voxel noise from neighbour differences along the last axis.

    ``1.4826 · MAD(x[i+1] − x[i]) / √2``: for independent noise of std σ the difference has std
    σ√2, and the median ignores the few differences that straddle an object's edge.
    """
    array = np.asarray(array, dtype=np.float32)
    if array.shape[-1] < 2:
        return 0.0
    diff = np.diff(array, axis=-1).ravel()
    if diff.size > MAX_STAT_VOXELS:
        diff = diff[:: diff.size // MAX_STAT_VOXELS + 1]
    return sigma_from_differences(diff)


def sigma_from_differences(diff: np.ndarray) -> float:
    """Noise std from differences of neighbouring voxels: ``1.4826 · MAD(diff) / √2``."""
    diff = np.asarray(diff).ravel()
    mad = float(np.median(np.abs(diff - np.median(diff))))
    return 1.4826 * mad / np.sqrt(2.0)


@dataclass(frozen=True)
class Normalization:
    """Percentiles ``low``/``high`` → [-1, 1] with a noise floor; see the module docstring.

    ``noise_floor=None`` is the plain percentile scaling of runs made before the floor existed.
    """

    method: str = "percentile"
    low: float = LOW_PERCENTILE
    high: float = HIGH_PERCENTILE
    noise_floor: float | None = DEFAULT_NOISE_FLOOR

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"unknown normalization method {self.method!r}; known: {', '.join(METHODS)}")
        if not 0 <= self.low < self.high <= 100:
            raise InputError(f"normalization percentiles must satisfy 0 <= low < high <= 100, "
                             f"got {self.low}, {self.high}")
        if self.noise_floor is not None and self.noise_floor < 0:
            raise InputError(f"normalization noise_floor must be >= 0, got {self.noise_floor}")

    # ------------------------------------------------------------------ statistics
    def statistics(self, array) -> tuple[float, float]:
        """(lo, hi) of a whole source: every voxel of one up to ``MAX_STAT_VOXELS`` (an annotated
        patch), else :meth:`volume_statistics` — so a volume gets the same statistics whether it is
        an in-memory array (a NIfTI file) or read lazily (a TIFF folder, a Zarr store)."""
        if not hasattr(array, "shape"):
            array = np.asarray(array)
        if len(array.shape) == 3 and int(np.prod(array.shape)) > MAX_STAT_VOXELS:
            return self.volume_statistics(array)
        array = array if isinstance(array, np.ndarray) else np.asarray(array[...])
        flat = array.ravel()
        if flat.size > MAX_STAT_VOXELS:
            flat = flat[:: flat.size // MAX_STAT_VOXELS + 1]
        lo, hi = percentiles(flat, self.low, self.high)
        sigma = noise_sigma(array) if self.noise_floor is not None else 0.0
        return self._floored(lo, hi, sigma)

    def volume_statistics(self, volume, max_slices: int = 16, max_voxels: int = 2_000_000,
                          seed: int = 0) -> tuple[float, float]:
        """(lo, hi) of a lazily read (z, y, x) volume from a random subsample of whole z-slices.

        Reads at most ``max_slices`` slices and keeps at most ``max_voxels`` of their voxels for
        the percentiles; the noise is measured on the full sampled rows, so memory stays bounded
        whatever the volume size.
        """
        rng = np.random.default_rng(seed)
        nz = int(volume.shape[0])
        zs = np.sort(rng.choice(nz, size=min(nz, max_slices), replace=False))
        per_slice = max(1, max_voxels // len(zs))
        samples, sigmas = [], []
        for z in zs:
            plane = np.asarray(volume[int(z)], dtype=np.float32)
            if self.noise_floor is not None:
                sigmas.append(noise_sigma(plane))
            flat = plane.ravel()
            if flat.size > per_slice:
                flat = flat[rng.choice(flat.size, size=per_slice, replace=False)]
            samples.append(flat)
        lo, hi = percentiles(np.concatenate(samples), self.low, self.high)
        return self._floored(lo, hi, float(np.median(sigmas)) if sigmas else 0.0)

    def _floored(self, lo: float, hi: float, sigma: float) -> tuple[float, float]:
        if self.noise_floor is not None:
            hi = max(hi, lo + self.noise_floor * sigma)
        return float(lo), float(hi)

    # ------------------------------------------------------------------ application
    def __call__(self, array: np.ndarray, stats: tuple[float, float] | None = None) -> np.ndarray:
        """Float32 in [-1, 1]: ``array`` scaled by ``stats`` (default: its own statistics)."""
        lo, hi = self.statistics(array) if stats is None else stats
        return normalize(array, lo, hi)

    # ------------------------------------------------------------------ the artifact form
    def to_dict(self) -> dict:
        return asdict(self) | {"range": [-1.0, 1.0]}

    @classmethod
    def from_dict(cls, saved: dict | None) -> "Normalization":
        """The spec recorded in an artifact; artifacts without one (or with the pre-floor
        ``{"method"|"scheme": "percentile", ...}`` form) get plain percentiles, as they were trained."""
        saved = dict(saved or {})
        method = saved.get("method", saved.get("scheme", "percentile"))
        return cls(method=method, low=float(saved.get("low", LOW_PERCENTILE)),
                   high=float(saved.get("high", HIGH_PERCENTILE)), noise_floor=saved.get("noise_floor"))


#: what new runs use
DEFAULT_NORMALIZATION = Normalization()


def percentiles(values: np.ndarray, low: float = LOW_PERCENTILE,
                high: float = HIGH_PERCENTILE) -> tuple[float, float]:
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64).ravel(), [low, high])
    return float(lo), float(hi)


def normalize(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly to [-1, 1] and clip; float32 out."""
    array = np.asarray(array, dtype=np.float32)
    scale = max(float(hi) - float(lo), 1e-6)
    out = (array - np.float32(lo)) * np.float32(2.0 / scale) - np.float32(1.0)
    return np.clip(out, -1.0, 1.0, out=out)


def normalize_percentile(array: np.ndarray, low: float = LOW_PERCENTILE,
                         high: float = HIGH_PERCENTILE) -> np.ndarray:
    """Normalize a patch by its own plain percentiles (no noise floor)."""
    lo, hi = percentiles(array, low, high)
    return normalize(array, lo, hi)


def estimate_volume_percentiles(volume, max_slices: int = 16, max_voxels: int = 2_000_000,
                                low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE,
                                seed: int = 0) -> tuple[float, float]:
    """Plain percentiles of a lazily read volume (see :meth:`Normalization.volume_statistics`)."""
    return Normalization(low=low, high=high, noise_floor=None).volume_statistics(
        volume, max_slices=max_slices, max_voxels=max_voxels, seed=seed)
