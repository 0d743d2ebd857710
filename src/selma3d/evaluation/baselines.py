"""The simple baseline every model must beat: one global Otsu threshold of the raw image."""

from __future__ import annotations

import numpy as np


def otsu_mask(image: np.ndarray) -> np.ndarray:
    """``image > threshold_otsu(image)`` as uint8; all zeros for a constant image (no threshold)."""
    from skimage.filters import threshold_otsu

    image = np.asarray(image)
    if image.max() == image.min():
        return np.zeros(image.shape, np.uint8)
    return (image > threshold_otsu(image)).astype(np.uint8)
