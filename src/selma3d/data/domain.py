"""Domain randomization: the ranges from which every synthetic case draws its specimen and
microscope.

A network trained on one fixed rendering learns the renderer, not the structure (issue 8: a
U-Net finetuned on fixed-parameter phantoms scored Dice 0.42 on sparser, dimmer, larger c-Fos
cells where an Otsu threshold scored 0.81). So each case (annotated patch or unannotated volume)
draws its own object size and density, stain contrast, PSF, camera noise, background, grain,
stripes and attenuation from a :class:`Domain`: one table of ``(low, high)`` ranges per
structure, kept here in one place so they are easy to review.

Two distributions exist per structure: ``TRAIN_DOMAINS`` (training, preliminary and final test
splits, unannotated volumes) and ``SHIFTED_DOMAINS`` (the ``shifted_test`` split): sparser,
larger objects, dimmer stain over a brighter and more uneven background, a wider z PSF, fewer
photons and stronger stripes — partly outside the training ranges, still physically plausible
and still solvable by a global threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from .imaging import Optics

Range = tuple[float, float]

#: Ranges drawn log-uniformly (multiplicative quantities); all others are drawn uniformly.
LOG_UNIFORM = frozenset({"size", "density", "contrast", "background", "gain"})


@dataclass(frozen=True)
class Domain:
    """Ranges ``(low, high)`` of one structure's specimen and microscope (one case draws one
    value of each; ``low == high`` fixes it).

    size: radius scale of cells / nuclei / plaques / somata / tubes (× the phantom default).
    density: objects per volume (× the phantom default; for vessels the volume fraction).
    contrast: stain signal / mean background (counts per unit brightness over background counts).
    background: mean autofluorescence (camera counts).
    background_variation: relative amplitude of the low-frequency background field.
    grain: relative amplitude of fine autofluorescence texture.
    psf_z, psf_xy: Gaussian PSF sigma in voxels (the light sheet is wider in z).
    gain: camera counts per photo-electron (higher gain, fewer photons: lower shot-noise SNR).
    read_noise: Gaussian camera read noise (counts).
    stripes: strength of the light-sheet shadow stripes.
    attenuation: sheet attenuation across the specimen.
    """

    size: Range = (0.75, 1.4)
    density: Range = (0.3, 1.6)
    contrast: Range = (6.0, 20.0)
    background: Range = (150.0, 650.0)
    background_variation: Range = (0.1, 0.5)
    grain: Range = (0.1, 0.45)
    psf_z: Range = (1.0, 1.9)
    psf_xy: Range = (0.5, 0.8)
    gain: Range = (1.0, 3.5)
    read_noise: Range = (6.0, 18.0)
    stripes: Range = (0.0, 0.45)
    attenuation: Range = (0.2, 1.2)

    def __post_init__(self):
        for f in fields(self):
            lo, hi = getattr(self, f.name)
            if not lo <= hi or (f.name in LOG_UNIFORM and lo <= 0):
                raise ValueError(f"Domain.{f.name}: invalid range {(lo, hi)}")

    def draw(self, rng: np.random.Generator) -> dict[str, float]:
        """One value of every parameter (always in field order, so a key gives one draw)."""
        values = {}
        for f in fields(self):
            lo, hi = getattr(self, f.name)
            u = float(rng.random())
            if f.name in LOG_UNIFORM:
                values[f.name] = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
            else:
                values[f.name] = lo + u * (hi - lo)
        return values

    def as_dict(self) -> dict[str, list[float]]:
        return {name: list(r) for name, r in asdict(self).items()}


def optics_from(params: dict[str, float]) -> Optics:
    """The microscope of one drawn case."""
    return Optics(psf_sigma_zyx=(params["psf_z"], params["psf_xy"], params["psf_xy"]),
                  signal=params["contrast"] * params["background"], background=params["background"],
                  background_variation=params["background_variation"], grain=params["grain"],
                  attenuation=params["attenuation"], stripes=params["stripes"], gain=params["gain"],
                  read_noise=params["read_noise"])


# --------------------------------------------------------------------------- the tables
# Training distribution per structure: wide, centred on what the phantoms looked like before
# randomization (e.g. c-Fos: signal 4500 over background 350, PSF sigma 1.3 / 0.7 voxels).
TRAIN_DOMAINS: dict[str, Domain] = {
    "cfos": Domain(),
    "microglia": Domain(size=(0.8, 1.4), density=(0.6, 1.6), contrast=(6.0, 20.0)),
    "vessel": Domain(size=(0.75, 1.35), density=(0.6, 1.5), contrast=(8.0, 25.0)),
    # human tissue, finer voxels (1 µm in xy): a little more blur in voxels, denser staining
    "nucleus": Domain(size=(0.85, 1.2), density=(0.7, 1.3), contrast=(4.0, 12.0),
                      background=(300.0, 650.0), psf_z=(1.1, 1.7), psf_xy=(0.6, 0.85)),
    # Aβ plaques are very bright (methoxy-X04 / Congo red) and grainy around
    "plaque": Domain(size=(0.7, 1.4), density=(0.5, 2.0), contrast=(40.0, 120.0),
                     grain=(0.25, 0.6)),
}

# The deliberately shifted distribution (``shifted_test``): what another lab, brain or
# microscope does to the same structures; each range reaches outside the training one (most
# overlap it only at the edge), so the shift is partly outside what training saw. Direction of each change vs training:
# larger objects (size ↑; c-Fos and vessels also sparser: density ↓), dimmer stain relative to
# background (contrast ↓), brighter and more uneven background (background ↑,
# background_variation ↑, grain ↑), a thicker light sheet and softer lateral focus (psf_z ↑,
# psf_xy ↑), fewer photons per count and more read noise (gain ↑, read_noise ↑: lower SNR),
# stronger attenuation, and stripes always present at a middle level (0.15–0.35, where training
# spans 0–0.45). Tuned so that a per-case Otsu threshold still reaches Dice ~0.7–0.85 (strong
# stripe shadows or fewer photons make Otsu split the background of sparse patches instead).
_SHIFTED_MICROSCOPE = dict(background=(600.0, 1500.0), background_variation=(0.35, 0.6),
                           grain=(0.3, 0.5), psf_z=(1.8, 2.6), psf_xy=(0.7, 1.0), gain=(2.5, 4.5),
                           read_noise=(12.0, 24.0), stripes=(0.15, 0.35), attenuation=(1.0, 2.0))
SHIFTED_DOMAINS: dict[str, Domain] = {
    "cfos": Domain(size=(1.3, 1.7), density=(0.15, 0.35), contrast=(4.0, 7.0), **_SHIFTED_MICROSCOPE),
    # microglia: larger cells with thicker processes at a similar density (they are already
    # sparse: fewer would leave patches with one cell and nothing for a threshold to find)
    "microglia": Domain(size=(1.3, 1.7), density=(0.5, 1.0), contrast=(5.0, 9.0), **_SHIFTED_MICROSCOPE),
    "vessel": Domain(size=(1.2, 1.6), density=(0.35, 0.6), contrast=(4.0, 7.0), **_SHIFTED_MICROSCOPE),
}

SHIFT_DESCRIPTION = ("larger objects (c-Fos and vessels also sparser); dimmer stain over a brighter, "
                     "more uneven background; wider PSF, in z above all; lower SNR (higher gain, more "
                     "read noise); stronger attenuation; stripes always present at a middle level")


#: the synthetic camera's offset (counts), subtracted before intensity ratios
CAMERA_OFFSET = 100.0


def case_statistics(image: np.ndarray, label: np.ndarray, camera_offset: float = CAMERA_OFFSET) -> dict[str, float]:
    """What a reviewer measures on one case, to check what a domain claims: mean object volume
    (voxels per 26-connected component), objects per 10⁵ voxels, foreground fraction,
    foreground/background ratio above the camera offset (``contrast``), background (median),
    noise (robust std of neighbour differences in the background), SNR and the Dice of a
    per-case Otsu threshold."""
    import cc3d

    from ..evaluation.baselines import otsu_mask
    from .normalize import sigma_from_differences

    img, lab = image.astype(np.float64), label > 0
    n = int(cc3d.connected_components(lab, connectivity=26).max())
    bg, fg = float(np.median(img[~lab])), float(img[lab].mean())
    noise = sigma_from_differences(np.diff(img, axis=2)[~lab[:, :, 1:] & ~lab[:, :, :-1]])
    otsu = otsu_mask(img) > 0
    return {"object_volume": lab.sum() / max(n, 1), "objects": 1e5 * n / lab.size, "fraction": lab.mean(),
            "contrast": (fg - camera_offset) / (bg - camera_offset), "background": bg, "noise": noise,
            "snr": (fg - bg) / noise, "otsu_dice": 2 * (otsu & lab).sum() / (otsu.sum() + lab.sum())}
