"""Light-sheet intensity augmentations that MONAI does not have, as MONAI dictionary transforms.

What changes between brains, labs and microscopes is mostly *physical*: the background level
(autofluorescence, scattered light), shadows cast along the light sheet, loss of light with depth,
the point spread function, camera noise. These transforms simulate those effects.

They act on intensities in the *physical* range ``u = (x + 1) / 2`` in [0, 1] (0 = black), not on
the [-1, 1] normalized image the networks see: a multiplicative effect on a [-1, 1] image would
brighten the (negative) background. ``unit_range_block(transforms)`` brackets a list of them with
the conversion to ``u`` and back (clipped to [-1, 1]), which ``training.augment`` uses.

MONAI has none of these (its ``RandGaussianNoise`` is signal independent, ``RandBiasField`` is a
smooth polynomial, ``RandHistogramShift`` moves random control points rather than the background);
each one is written here, as ``RandomizableTransform`` + ``MapTransform`` so that
``Compose.set_random_state`` seeds them like MONAI's own.

- ``RandBackgroundLeveld``: moves the background level up or down by a monotone piecewise-linear
  map (0 -> 0, background -> new background, 1 -> 1), so every structure stays in place and in order.
- ``RandPoissonGaussianNoised``: signal-dependent + constant noise, variance ``a*u + b``
  (the Poisson-Gaussian model of Foi et al., IEEE TIP 2008, in its Gaussian approximation), at a
  random peak SNR.
- ``RandStripesd``: light-sheet shadows: multiplicative dark bands that vary along y, are constant
  along x (the illumination axis) and drift slowly in y with z.
- ``RandDepthAttenuationd``: exponential loss of intensity along z (imaging depth) or x
  (illumination axis), monotone across the patch.
- ``RandPSFBlurd``: MONAI's ``RandGaussianSmoothd`` (per-axis sigma ranges) around the image mean, so
  the borders are not darkened by MONAI's zero padding.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandGaussianSmoothd, RandomizableTransform, ScaleIntensityRanged
from monai.utils import convert_to_tensor

from selma3d.errors import Selma3dError


def unit_range_block(transforms: Sequence, keys: KeysCollection = "image") -> list:
    """``transforms`` bracketed by [-1, 1] -> u in [0, 1] and back (clipped to [-1, 1])."""
    return [
        ScaleIntensityRanged(keys=keys, a_min=-1.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=False),
        *transforms,
        ScaleIntensityRanged(keys=keys, a_min=0.0, a_max=1.0, b_min=-1.0, b_max=1.0, clip=True),
    ]


def _range(name: str, value, low: float = -np.inf, high: float = np.inf) -> tuple[float, float]:
    """A (min, max) pair inside [low, high]."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise Selma3dError(f"{name} must be a number or a (min, max) pair, got {value!r}") from None
    if not low <= lo <= hi <= high:
        raise Selma3dError(f"{name} must satisfy {low} <= min <= max <= {high}, got {value!r}")
    return lo, hi


def _float_image(img) -> torch.Tensor:
    return convert_to_tensor(img, track_meta=False, dtype=torch.float32)


class _RandIntensityd(RandomizableTransform, MapTransform):
    """One random draw per call, applied to every key (``_apply`` does the work)."""

    def __init__(self, keys: KeysCollection, prob: float, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def draw(self, shape: Sequence[int]) -> None:
        """Draw this call's parameters with ``self.R`` (the spatial ``shape`` is (D, H, W))."""

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        first = self.first_key(d)
        if first == ():
            return d
        shape = tuple(d[first].shape[-3:])
        if len(shape) != 3 or d[first].ndim != 4:
            raise Selma3dError(f"{type(self).__name__} expects (C, D, H, W) images, got shape {tuple(d[first].shape)}")
        self.draw(shape)
        for key in self.key_iterator(d):
            d[key] = self._apply(_float_image(d[key]))
        return d


class RandBackgroundLeveld(_RandIntensityd):
    """Raise or lower the background level, keeping every structure (a monotone intensity map).

    The background level ``b`` is the median of ``u`` (LSM patches are mostly background); a new
    level ``b' = clip(b + shift, 0, max_level)`` is drawn and ``u`` is mapped piecewise linearly
    0 -> 0, b -> b', 1 -> 1. Raising it mimics autofluorescence or scattered light (less
    contrast); lowering it a cleaner sample.
    """

    def __init__(self, keys: KeysCollection = "image", prob: float = 0.1, shift=(-0.1, 0.2),
                 max_level: float = 0.8, allow_missing_keys: bool = False):
        super().__init__(keys, prob, allow_missing_keys)
        self.shift = _range("shift", shift, -1.0, 1.0)
        self.max_level = float(max_level)
        self._shift = 0.0

    def draw(self, shape):
        self._shift = self.R.uniform(*self.shift)

    def _apply(self, img):
        sample = img.flatten()[:: max(1, img.numel() // 65536)]  # a median of 64k voxels is plenty
        eps = 1e-3
        level = float(sample.median().clamp(eps, 1 - eps))
        new = float(np.clip(level + self._shift, 0.0, self.max_level))
        below = img * (new / level)
        above = new + (img - level) * ((1 - new) / (1 - level))
        return torch.where(img <= level, below, above)


class RandPoissonGaussianNoised(_RandIntensityd):
    """Camera noise with variance ``a * u + b`` (shot noise + read noise) at a random peak SNR.

    The peak SNR (at ``u = 1``) is drawn log-uniformly from ``snr``; a fraction ``f`` (drawn from
    ``poisson_fraction``) of the peak variance ``1 / snr**2`` is signal dependent (``a``), the
    rest constant (``b``). Gaussian approximation of Poisson-Gaussian noise (Foi et al. 2008):
    cheap and accurate at the photon counts of LSM.
    """

    def __init__(self, keys: KeysCollection = "image", prob: float = 0.1, snr=(3.0, 30.0),
                 poisson_fraction=(0.3, 0.9), allow_missing_keys: bool = False):
        super().__init__(keys, prob, allow_missing_keys)
        self.snr = _range("snr", snr, 1e-3)
        self.poisson_fraction = _range("poisson_fraction", poisson_fraction, 0.0, 1.0)
        self._a = self._b = 0.0
        self._seed = 0

    def draw(self, shape):
        snr = float(np.exp(self.R.uniform(np.log(self.snr[0]), np.log(self.snr[1]))))
        fraction = self.R.uniform(*self.poisson_fraction)
        self._a, self._b = fraction / snr**2, (1 - fraction) / snr**2
        # torch draws the normals (several times faster than numpy's RandomState), seeded from self.R.
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def _apply(self, img):
        generator = torch.Generator().manual_seed(self._seed)
        noise = torch.randn(img.shape, generator=generator, dtype=img.dtype).to(img.device)
        return img + (self._a * img.clamp(min=0) + self._b).sqrt() * noise


class RandStripesd(_RandIntensityd):
    """Light-sheet shadows: dark bands along x, Gaussian profiles in y that drift slowly with z.

    ``u *= prod_k (1 - s_k * exp(-(y - c_k - v z)**2 / (2 w_k**2)))`` with ``1..max_bands`` bands of
    depth ``s_k`` (``depth``), width ``w_k`` voxels (``width``), and one drift ``v`` voxels per z
    slice (``drift``) for the patch. Constant along x (the illumination axis, the last one).
    """

    def __init__(self, keys: KeysCollection = "image", prob: float = 0.1, max_bands: int = 6,
                 depth=(0.2, 0.7), width=(0.5, 4.0), drift=(-0.3, 0.3), allow_missing_keys: bool = False):
        super().__init__(keys, prob, allow_missing_keys)
        if not isinstance(max_bands, int) or max_bands < 1:
            raise Selma3dError(f"max_bands must be an integer ≥ 1, got {max_bands!r}")
        self.max_bands = max_bands
        self.depth = _range("depth", depth, 0.0, 1.0)
        self.width = _range("width", width, 1e-3)
        self.drift = _range("drift", drift)
        self._field = torch.ones(1, 1, 1, 1)

    def draw(self, shape):
        depth_z, height, _ = shape
        drift = self.R.uniform(*self.drift)
        n = int(self.R.randint(1, self.max_bands + 1))
        reach = abs(drift) * depth_z  # bands that drift into the patch may start outside it
        centres = self.R.uniform(-reach - 2, height + reach + 2, n)
        widths = self.R.uniform(*self.width, n)
        depths = self.R.uniform(*self.depth, n)
        z = np.arange(depth_z, dtype=np.float32)[:, None, None]
        y = np.arange(height, dtype=np.float32)[None, :, None]
        offset = y - drift * z - centres[None, None, :]  # (D, H, n)
        field = np.prod(1 - depths * np.exp(-(offset**2) / (2 * widths**2)), axis=-1)
        self._field = torch.from_numpy(field.astype(np.float32))[None, :, :, None]  # (1, D, H, 1)

    def _apply(self, img):
        return img * self._field.to(img.device)


class RandDepthAttenuationd(_RandIntensityd):
    """Exponential intensity loss along z (depth) or x (illumination): ``u *= exp(-mu t)``.

    One axis of ``axes`` (spatial: 0 = z, 2 = x) and a direction are drawn per call; ``t`` runs
    from 0 to 1 across the patch and ``1 - exp(-mu)``, the loss at the far side, is drawn from
    ``loss``. Monotone along the chosen axis, constant along the others.
    """

    def __init__(self, keys: KeysCollection = "image", prob: float = 0.1, axes: Sequence[int] = (0, 2),
                 loss=(0.1, 0.6), allow_missing_keys: bool = False):
        super().__init__(keys, prob, allow_missing_keys)
        if not axes or any(a not in (0, 1, 2) for a in axes):
            raise Selma3dError(f"axes must be spatial axes among 0, 1, 2 (z, y, x), got {axes!r}")
        self.axes = tuple(int(a) for a in axes)
        self.loss = _range("loss", loss, 0.0, 0.99)
        self._axis, self._mu, self._reverse = self.axes[0], 0.0, False

    def draw(self, shape):
        self._axis = self.axes[int(self.R.randint(len(self.axes)))]
        self._mu = -np.log(1 - self.R.uniform(*self.loss))
        self._reverse = bool(self.R.randint(2))

    def _apply(self, img):
        n = img.shape[1 + self._axis]
        t = torch.linspace(0.0, 1.0, n, dtype=img.dtype, device=img.device)
        if self._reverse:
            t = t.flip(0)
        profile_shape = [1, 1, 1, 1]
        profile_shape[1 + self._axis] = n
        return img * torch.exp(-self._mu * t).reshape(profile_shape)


class RandPSFBlurd(RandGaussianSmoothd):
    """MONAI ``RandGaussianSmoothd`` (per-axis sigma ranges) applied around the image mean.

    MONAI pads with zeros, which in ``u`` space darkens the borders of the patch; smoothing
    ``u - mean`` and adding the mean back pads with the mean level instead (the Gaussian
    preserves constants). Parameters are named by our axis order: ``sigma_z`` for axis 0 (the
    light-sheet PSF is widest there), ``sigma_y``, ``sigma_x``.
    """

    def __init__(self, keys: KeysCollection = "image", prob: float = 0.1, sigma_z=(0.5, 2.0),
                 sigma_y=(0.25, 1.0), sigma_x=(0.25, 1.0), allow_missing_keys: bool = False):
        # MONAI's sigma_x is the *first* spatial axis, i.e. our z.
        super().__init__(keys, sigma_x=_range("sigma_z", sigma_z, 0.0), sigma_y=_range("sigma_y", sigma_y, 0.0),
                         sigma_z=_range("sigma_x", sigma_x, 0.0), prob=prob, allow_missing_keys=allow_missing_keys)

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)  # MONAI's RandGaussianSmoothd.__call__, with the mean taken out
        if not self._do_transform:
            return d
        self.rand_smooth.randomize(None)  # one sigma for all keys
        for key in self.key_iterator(d):
            img = _float_image(d[key])
            mean = img.mean()
            d[key] = self.rand_smooth(img - mean, randomize=False) + mean
        return d
