"""Light-sheet image formation for a :class:`~selma3d.data.phantoms.Scene`.

What a cleared-tissue light-sheet microscope does to the stained structure, in order:

1. tissue autofluorescence: a low-frequency background field plus fine grain;
2. the point-spread function: an anisotropic Gaussian, wider along z (the light-sheet
   thickness) than in xy;
3. illumination: the sheet enters from both sides along x and is attenuated on its way, and
   absorbers cast shadows along x — stripes that vary along y and drift slowly with z;
4. the camera: Poisson shot noise on photo-electrons, Gaussian read noise, an offset, and
   storage as signed int16 (clipped).

Every step is either elementwise in global coordinates, seeded per z-plane, or a Gaussian
filter computed with a margin of planes, so :meth:`LightSheetImager.render` of any z-range is
bit-identical to the same planes of a one-shot render: volumes are imaged slab by slab.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from .phantoms import Scene

INT16_MIN, INT16_MAX = np.iinfo(np.int16).min, np.iinfo(np.int16).max


@dataclass(frozen=True)
class Optics:
    """Parameters of the microscope and the stain (intensities in camera counts)."""

    psf_sigma_zyx: tuple[float, float, float] = (1.3, 0.7, 0.7)  # voxels; z coarser than xy
    signal: float = 4000.0  # counts for a primitive of brightness 1
    background: float = 350.0  # mean autofluorescence
    background_variation: float = 0.4  # relative amplitude of the low-frequency field
    grain: float = 0.3  # relative amplitude of fine autofluorescence texture
    attenuation: float = 0.8  # sheet attenuation across the specimen (dual-side illumination)
    stripes: float = 0.3  # strength of the light-sheet stripe artefacts
    stripe_spacing: float = 18.0  # mean distance between stripes along y (voxels)
    gain: float = 2.0  # counts per photo-electron
    read_noise: float = 12.0  # counts
    offset: float = 100.0  # camera offset (counts)
    truncate: float = 4.0  # Gaussian kernel radius in sigmas

    def margin(self) -> int:
        """Planes of context the PSF needs on each side of a slab."""
        return int(self.truncate * float(self.psf_sigma_zyx[0]) + 0.5) + 1


def optical_blur(volume: np.ndarray, optics: Optics) -> np.ndarray:
    """The PSF: an anisotropic Gaussian (sigma in voxels, (z, y, x))."""
    return gaussian_filter(np.asarray(volume, dtype=np.float32), sigma=optics.psf_sigma_zyx,
                           mode="reflect", truncate=optics.truncate)


class LightSheetImager:
    """Images ``scene`` plane range by plane range; deterministic for ``key``.

    ``origin_zyx`` places the scene inside a larger virtual specimen of ``specimen_shape``
    voxels, so that patches see different parts of the background and illumination fields.
    With ``tissue=True`` the specimen is an ellipsoid of tissue in dark mounting medium, as in
    whole-brain volumes.
    """

    def __init__(self, scene: Scene, optics: Optics, key: tuple[int, ...],
                 origin_zyx=(0, 0, 0), specimen_shape=None, tissue: bool = False):
        self.scene = scene
        self.optics = optics
        self.key = tuple(int(k) for k in key)
        self.shape = tuple(int(s) for s in scene.shape_zyx)
        self.origin = np.asarray(origin_zyx, dtype=np.int64)
        self.specimen = np.asarray(specimen_shape if specimen_shape is not None else self.shape, float)
        self.tissue = tissue
        rng = np.random.default_rng([*self.key, 0])
        # low-frequency autofluorescence: a sum of separable cosines, wavelengths 0.5–2 specimens
        n_waves = 4
        wavelength = rng.uniform(0.5, 2.0, (n_waves, 3)) * np.maximum(self.specimen, 64.0)[None]
        self._wave_k = 2 * np.pi / wavelength
        self._wave_phase = rng.uniform(0, 2 * np.pi, (n_waves, 3))
        self._wave_amp = rng.uniform(0.5, 1.0, n_waves)
        # stripes: one per ``stripe_spacing`` planes of y over the rows this scene covers
        y_lo, y_hi = self.origin[1] - 8, self.origin[1] + self.shape[1] + 8
        n_stripes = max(1, int(rng.poisson((y_hi - y_lo) / optics.stripe_spacing)))
        self._stripe_y = rng.uniform(y_lo, y_hi, n_stripes)
        self._stripe_width = rng.uniform(0.7, 3.0, n_stripes)
        self._stripe_drift = rng.normal(0.0, 0.03, n_stripes)  # voxels of y per plane of z
        sign = np.where(rng.random(n_stripes) < 0.75, 1.0, -0.5)  # mostly shadows, some bright
        self._stripe_amp = sign * rng.uniform(0.2, 1.0, n_stripes) * optics.stripes
        self._stripe_period = rng.uniform(60.0, 400.0, n_stripes)
        self._stripe_phase = rng.uniform(0, 2 * np.pi, n_stripes)
        # tissue envelope: ellipsoid filling most of the specimen
        self._tissue_centre = self.specimen / 2 * rng.uniform(0.95, 1.05, 3)
        self._tissue_radius = self.specimen / 2 * rng.uniform(0.8, 0.95, 3)

    # ---------------------------------------------------------------- fields (global coords)
    def _coords(self, z0, z1):
        z = np.arange(z0, z1, dtype=np.float64) + self.origin[0]
        y = np.arange(self.shape[1], dtype=np.float64) + self.origin[1]
        x = np.arange(self.shape[2], dtype=np.float64) + self.origin[2]
        return z, y, x

    def background_field(self, z0, z1) -> np.ndarray:
        """Relative autofluorescence (mean 1), smooth in all three axes; float32 (nz, ny, nx)."""
        z, y, x = self._coords(z0, z1)
        field = np.zeros((len(z), len(y), len(x)), dtype=np.float32)
        scale = self.optics.background_variation / self._wave_amp.sum()
        for k, ph, a in zip(self._wave_k, self._wave_phase, self._wave_amp):
            cz = (scale * a * np.cos(k[0] * z + ph[0])).astype(np.float32)
            cy = np.cos(k[1] * y + ph[1]).astype(np.float32)
            cx = np.cos(k[2] * x + ph[2]).astype(np.float32)
            field += cz[:, None, None] * np.outer(cy, cx)[None]
        field += np.float32(1.0)
        if self.tissue:
            field *= self.tissue_envelope(z0, z1)
        return field

    def tissue_envelope(self, z0, z1) -> np.ndarray:
        """~1 inside the specimen's tissue, ~0.1 in the mounting medium outside; float32."""
        z, y, x = self._coords(z0, z1)
        c, r = self._tissue_centre, self._tissue_radius
        rho2 = ((((z - c[0]) / r[0]) ** 2).astype(np.float32)[:, None, None]
                + ((((y - c[1]) / r[1]) ** 2)[:, None] + (((x - c[2]) / r[2]) ** 2)[None, :])
                .astype(np.float32)[None])
        np.sqrt(rho2, out=rho2)
        rho2 -= np.float32(1.0)
        rho2 /= np.float32(0.03)
        np.clip(rho2, -60.0, 60.0, out=rho2)
        np.exp(rho2, out=rho2)
        rho2 += np.float32(1.0)
        np.divide(np.float32(0.9), rho2, out=rho2)
        rho2 += np.float32(0.1)
        return rho2

    def illumination(self, z0, z1) -> tuple[np.ndarray, np.ndarray]:
        """Sheet intensity as two factors: stripes (nz, ny) and attenuation along x (nx,)."""
        z, y, x = self._coords(z0, z1)
        mu = self.optics.attenuation
        u = x / max(1.0, self.specimen[2] - 1)
        along_x = (np.exp(-mu * u) + np.exp(-mu * (1 - u))) / (1 + np.exp(-mu))
        stripes = np.ones((len(z), len(y)), dtype=np.float64)
        for yj, w, drift, amp, period, phase in zip(self._stripe_y, self._stripe_width, self._stripe_drift,
                                                    self._stripe_amp, self._stripe_period,
                                                    self._stripe_phase):
            centre = yj + drift * z  # (nz,)
            strength = amp * (0.6 + 0.4 * np.cos(2 * np.pi * z / period + phase))
            stripes -= strength[:, None] * np.exp(-0.5 * ((y[None, :] - centre[:, None]) / w) ** 2)
        np.clip(stripes, 0.2, None, out=stripes)
        return stripes.astype(np.float32), along_x.astype(np.float32)

    def _grain(self, z0, z1) -> np.ndarray:
        """White noise per plane (seeded by the global plane index) for autofluorescence texture."""
        ny, nx = self.shape[1:]
        out = np.empty((z1 - z0, ny, nx), dtype=np.float32)
        for i, z in enumerate(range(z0, z1)):
            out[i] = np.random.default_rng([*self.key, 1, z]).standard_normal((ny, nx), dtype=np.float32)
        return out

    # ---------------------------------------------------------------- rendering
    def expected_counts(self, z0: int, z1: int) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free camera counts (float32) and the label for planes ``z0:z1``."""
        o = self.optics
        m = o.margin()
        za, zb = max(0, z0 - m), min(self.shape[0], z1 + m)
        density, label = self.scene.rasterize(za, zb)
        density *= np.float32(o.signal)
        density += self._grain(za, zb) * np.float32(o.background * o.grain)
        blurred = optical_blur(density, o)[z0 - za: z1 - za]
        del density
        label = label[z0 - za: z1 - za]
        counts = self.background_field(z0, z1)
        counts *= np.float32(o.background)
        if self.tissue:
            blurred *= self.tissue_envelope(z0, z1)
        counts += blurred
        del blurred
        stripes, along_x = self.illumination(z0, z1)
        counts *= stripes[:, :, None]
        counts *= along_x[None, None, :]
        return counts, label

    def render(self, z0: int = 0, z1: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Planes ``z0:z1`` as (image int16, label uint8)."""
        z1 = self.shape[0] if z1 is None else z1
        o = self.optics
        counts, label = self.expected_counts(z0, z1)
        image = np.empty(counts.shape, dtype=np.int16)
        for i, z in enumerate(range(z0, z1)):
            rng = np.random.default_rng([*self.key, 2, z])
            electrons = rng.poisson(np.maximum(counts[i], 0.0).astype(np.float64) / o.gain)
            plane = electrons * o.gain + rng.normal(o.offset, o.read_noise, electrons.shape)
            image[i] = np.clip(np.rint(plane), INT16_MIN, INT16_MAX)
        return image, label.astype(np.uint8)

    def slabs(self, depth: int):
        """Yield (z0, image, label) slab by slab: bounded memory for any volume size."""
        for z0 in range(0, self.shape[0], depth):
            z1 = min(self.shape[0], z0 + depth)
            image, label = self.render(z0, z1)
            yield z0, image, label
