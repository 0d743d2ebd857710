"""Tang et al. (CVPR 2022) self-supervised SwinUNETR pretraining, plus a structure head.

Two views of each patch are rotated by a random multiple of 90° in the (y, x) plane and
corrupted by random cutout blocks (and intensity jitter). From the pooled Swin encoder output:

- rotation prediction: a linear head predicts which of the 4 rotations was applied (CE);
- contrastive coding: a linear projection of each view, NT-Xent between the two views
  (MONAI ``ContrastiveLoss``);
- masked volume inpainting: a light transposed-convolution decoder reconstructs the rotated,
  uncorrupted view from the deepest feature map (L1 on the image);
- structure classification (the BioAI team's addition): a linear head predicts which
  biological structure the source volume shows (CE on the sampler's ``structure`` index).

The loss is the weighted sum (:mod:`selma3d.ssl.losses.multitask`); each term is logged.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import Selma3dError
from .base import SSLMethod, embedding_spread
from .heads import pooled, reconstruction_decoder
from .losses import nt_xent, reconstruction_l1, rotation_loss, structure_loss, weighted_sum
from .views import random_block_mask, random_intensity, random_rotation


class MultiTask(SSLMethod):
    def __init__(self, backbone: nn.Module, patch_size: Sequence[int], num_structures: int = 1,
                 contrast_dim: int = 512, temperature: float = 0.5, mask_ratio: float = 0.3,
                 block_size: int | Sequence[int] | None = None, weight_rotation: float = 1.0,
                 weight_contrast: float = 1.0, weight_inpainting: float = 1.0,
                 weight_structure: float = 1.0):
        super().__init__(backbone)
        self.encoder_only()
        self.patch_size = tuple(patch_size)
        if self.patch_size[1] != self.patch_size[2]:
            raise Selma3dError(f"multitask: rotation prediction turns patches in the (y, x) plane, "
                               f"so y and x sizes must be equal, got patch size {self.patch_size}")
        c = backbone.encoder_channels
        self.rotation_head = nn.Linear(c, 4)
        self.contrast_head = nn.Linear(c, contrast_dim)
        self.structure_head = nn.Linear(c, max(1, int(num_structures)))
        self.decoder = reconstruction_decoder(c, backbone.size_divisor)
        self.temperature = float(temperature)
        self.mask_ratio = float(mask_ratio)
        self.block_size = block_size or tuple(max(1, p // 8) for p in self.patch_size)
        self.weights = {"rotation": weight_rotation, "contrast": weight_contrast,
                        "inpainting": weight_inpainting, "structure": weight_structure}
        self.num_structures = int(num_structures)

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """Cutout (random blocks set to 0, i.e. mid-gray) plus intensity jitter."""
        mask = random_block_mask(x.shape, self.mask_ratio, self.block_size, device=x.device)
        return random_intensity(torch.where(mask, torch.zeros_like(x), x), 0.1, 0.1)

    def training_loss(self, batch):
        x = batch["image"]
        structure = torch.as_tensor(batch["structure"], device=x.device).long()
        terms = {"rotation": [], "contrast": [], "inpainting": [], "structure": []}
        embeddings = []
        for _ in range(2):
            rotated, k = random_rotation(x)
            features = self.backbone.encode(self.corrupt(rotated))
            vector = pooled(features)
            embeddings.append(self.contrast_head(vector))
            terms["rotation"].append(rotation_loss(self.rotation_head(vector), k))
            terms["inpainting"].append(reconstruction_l1(self.decoder(features), rotated))
            if self.num_structures > 1:
                terms["structure"].append(structure_loss(self.structure_head(vector), structure))
        values = {name: torch.stack(v).mean() for name, v in terms.items() if v}
        values["contrast"] = nt_xent(embeddings[0], embeddings[1], self.temperature)
        loss = weighted_sum(values, self.weights)
        logs = {f"loss_{name}": value.detach() for name, value in values.items()}
        logs["loss"] = loss.detach()
        logs["embedding_std"] = embedding_spread(embeddings[0])
        return loss, logs
