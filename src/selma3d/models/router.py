"""The structure router's network (BioAI team): a small 3D CNN that tells spot-like from tree-like patches.

Trained by :mod:`selma3d.training.router`, saved and loaded by :mod:`selma3d.artifacts.router`,
used by ``predict --router``. Fully convolutional with global pooling: it classifies a whole patch
of any size.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..data.normalize import DEFAULT_NORMALIZATION

CLASSES = ("spot", "tree")


class RouterNet(nn.Module):
    """Three conv blocks (conv, instance norm, LeakyReLU, max-pool), global mean+max pooling, linear head."""

    def __init__(self, channels: Sequence[int] = (8, 16, 32), n_classes: int = 2):
        super().__init__()
        layers, previous = [], 1
        for i, width in enumerate(channels):
            layers += [nn.Conv3d(previous, width, 3, padding=1), nn.InstanceNorm3d(width, affine=True),
                       nn.LeakyReLU(0.1, inplace=True)]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool3d(2))
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * previous, n_classes)
        self.config = {"channels": [int(c) for c in channels], "n_classes": int(n_classes)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mean and max pooling: sparse structures (a few c-Fos cells) vanish in a mean alone
        features = self.features(x).flatten(2)
        return self.head(torch.cat([features.mean(dim=2), features.amax(dim=2)], dim=1))


class StructureRouter:
    """A trained :class:`RouterNet` plus how to feed it; ``classify`` returns ``spot`` or ``tree``."""

    def __init__(self, net: RouterNet, crop_size: int = 32, classes: Sequence[str] = CLASSES):
        self.net = net.eval()
        self.crop_size = int(crop_size)
        self.classes = tuple(classes)

    @torch.no_grad()
    def probabilities(self, array: np.ndarray, normalized: bool = False) -> np.ndarray:
        image = np.asarray(array, dtype=np.float32) if normalized else DEFAULT_NORMALIZATION(array)
        image = pad_to(image, self.crop_size)
        device = next(self.net.parameters()).device
        logits = self.net(torch.from_numpy(np.ascontiguousarray(image))[None, None].to(device))
        return torch.softmax(logits, dim=1)[0].cpu().numpy()

    def classify(self, array: np.ndarray, normalized: bool = False) -> str:
        return self.classes[int(np.argmax(self.probabilities(array, normalized)))]


def pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """Pad every axis shorter than ``size`` with the background value -1 (normalized images)."""
    pads = [(0, max(0, size - s)) for s in image.shape]
    return np.pad(image, pads, constant_values=-1.0) if any(p for _, p in pads) else image
