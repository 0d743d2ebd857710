"""Tubed skeletons of binary labels, for the skeleton recall loss (Kirchhoff et al., ECCV 2024).

The skeleton is computed once per training crop in the data loader, on the *augmented* label
(``SkeletonizeLabeld`` at the end of ``finetune_transforms(..., skeleton=True)``), so the loss
itself costs one multiply-and-sum. As in the authors' reference code, the 3D skeleton
(scikit-image, Lee et al. 1994) is dilated ("tubed") with a 6-connected cross and kept inside
the label.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage
from skimage.morphology import skeletonize

from selma3d.errors import Selma3dError

DEFAULT_DILATION = 2  # the reference implementation dilates twice with a 3x3(x3) cross


def tubed_skeleton(mask: np.ndarray, dilation: int = DEFAULT_DILATION) -> np.ndarray:
    """The 3D skeleton of ``mask > 0``, dilated ``dilation`` times with a cross, inside the mask (bool)."""
    if not isinstance(dilation, (int, np.integer)) or isinstance(dilation, bool) or dilation < 0:
        raise Selma3dError(f"skeleton dilation must be an integer ≥ 0, got {dilation!r}")
    mask = np.asarray(mask) > 0
    if mask.ndim != 3:
        raise Selma3dError(f"tubed_skeleton expects a (z, y, x) mask, got shape {mask.shape}")
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    # Work on the label's bounding box (plus a margin of 1 voxel): thinning a sparse label is
    # then several times cheaper. The dilation stays inside the mask, hence inside the box.
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in ndimage.find_objects(mask.astype(np.uint8))[0])
    inner = mask[box]
    skeleton = _skeleton_of_every_component(inner)
    if dilation:
        skeleton = ndimage.binary_dilation(skeleton, ndimage.generate_binary_structure(3, 1), iterations=int(dilation),
                                           mask=inner)
    out[box] = skeleton & inner
    return out


def _skeleton_of_every_component(mask: np.ndarray) -> np.ndarray:
    """scikit-image's 3D skeleton, with a medial core for components it erases.

    ``skeletonize`` (Lee's thinning) returns nothing for some objects of even thickness, e.g. a
    4x4-voxel tube or a cube (scikit-image issue #3757, open). Such a component gets the voxels
    of its maximal distance to the background instead (the middle of the tube or cell), so every
    labelled object has a skeleton to recall.
    """
    skeleton = skeletonize(mask) > 0
    components, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    has_skeleton = np.zeros(n + 1, bool)
    has_skeleton[np.unique(components[skeleton])] = True
    missing = np.flatnonzero(~has_skeleton[1:]) + 1
    if missing.size:
        distance = ndimage.distance_transform_edt(mask)
        peak = np.asarray(ndimage.maximum(distance, components, index=np.arange(n + 1)))
        lost = np.isin(components, missing)
        skeleton |= lost & (distance >= peak[components])
    return skeleton


class SkeletonizeLabeld(MapTransform):
    """Add ``data[skeleton_key]``: the tubed skeleton of ``data[label_key]`` (1, D, H, W), float32 0/1.

    Each channel is skeletonized on its own. Put it after every spatial transform so the
    skeleton matches the label the loss sees.
    """

    def __init__(self, label_key: str = "label", skeleton_key: str = "skeleton", dilation: int = DEFAULT_DILATION):
        super().__init__(keys=label_key)
        tubed_skeleton(np.zeros((1, 1, 1)), dilation)  # validates dilation
        self.label_key, self.skeleton_key, self.dilation = label_key, skeleton_key, int(dilation)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        label = d[self.label_key]
        array = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
        if array.ndim != 4:
            raise Selma3dError(f"SkeletonizeLabeld expects a (C, D, H, W) label, got shape {array.shape}")
        skeleton = np.stack([tubed_skeleton(channel, self.dilation) for channel in array]).astype(np.float32)
        d[self.skeleton_key] = torch.from_numpy(skeleton)
        return d
