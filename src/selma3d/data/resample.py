"""xy average-pooling of images and masks, and its inverse for predictions.

An encoder pretrained with ``--downsample-xy F`` saw volumes mean-pooled by F in y and x (z
kept; :func:`selma3d.data.sampling.downsample_xy`). Finetuning pools its patches the same way
(:func:`pool_image_xy`, :func:`pool_mask_xy`) and prediction pools its input, predicts, and
brings the probabilities back to the input grid (:func:`upsample_xy`), so the network always
works at the resolution it learned.
"""

from __future__ import annotations

import numpy as np


def _padded(array: np.ndarray, factor: int) -> np.ndarray:
    """Pad y and x (edge values) to multiples of ``factor``."""
    pads = [(0, 0)] + [(0, (-s) % factor) for s in array.shape[1:]]
    return np.pad(array, pads, mode="edge") if any(p for _, p in pads) else array


def _blocks(array: np.ndarray, factor: int) -> np.ndarray:
    z, y, x = array.shape
    return array.reshape(z, y // factor, factor, x // factor, factor)


def pool_image_xy(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` × ``factor`` xy block (edge-padded at the far borders), float32."""
    if int(factor) == 1:
        return image
    image = _padded(np.asarray(image, dtype=np.float32), int(factor))
    return _blocks(image, int(factor)).mean(axis=(2, 4), dtype=np.float32)


def pool_mask_xy(mask: np.ndarray, factor: int) -> np.ndarray:
    """A binary mask pooled by majority: a coarse voxel is foreground when at least half of its
    ``factor`` × ``factor`` block is (uint8 {0, 1})."""
    if int(factor) == 1:
        return mask
    fraction = pool_image_xy((np.asarray(mask) > 0).astype(np.float32), factor)
    return (fraction >= 0.5).astype(np.uint8)


def upsample_xy(array: np.ndarray, factor: int, shape) -> np.ndarray:
    """Each coarse voxel repeated ``factor`` × ``factor`` in xy, cropped to ``shape`` (z, y, x)."""
    if int(factor) == 1:
        return array
    full = np.repeat(np.repeat(array, int(factor), axis=1), int(factor), axis=2)
    return np.ascontiguousarray(full[: shape[0], : shape[1], : shape[2]])
