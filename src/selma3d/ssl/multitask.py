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

The loss is the weighted sum; each term is logged.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import Selma3dError
from .base import SSLMethod, embedding_spread, pooled
from .views import random_block_mask, random_intensity


def random_rotation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each (C, D, H, W) sample by k·90° in the (H, W) plane; returns (views, k)."""
    k = torch.randint(0, 4, (x.shape[0],), device=x.device)
    rotated = torch.stack([torch.rot90(sample, int(r), dims=(2, 3)) for sample, r in zip(x, k)])
    return rotated, k


def reconstruction_decoder(channels: int, size_divisor, min_channels: int = 8) -> nn.Sequential:
    """Transposed convolutions (stride 2 per stage, channels halving) from the deepest feature
    map back to full resolution, then a 1x1x1 conv to one channel (Tang et al.'s light decoder)."""
    factors = (size_divisor,) * 3 if isinstance(size_divisor, int) else tuple(size_divisor)
    stages = int(math.log2(max(factors)))
    layers: list[nn.Module] = []
    remaining = list(factors)
    c = channels
    for _ in range(stages):
        stride = tuple(2 if r > 1 else 1 for r in remaining)
        remaining = [r // s for r, s in zip(remaining, stride)]
        out = max(min_channels, c // 2)
        layers += [nn.ConvTranspose3d(c, out, kernel_size=stride, stride=stride),
                   nn.InstanceNorm3d(out, affine=True), nn.LeakyReLU(0.1, inplace=True)]
        c = out
    layers.append(nn.Conv3d(c, 1, kernel_size=1))
    return nn.Sequential(*layers)


class MultiTask(SSLMethod):
    name = "multitask"
    default_model = "swinunetr"
    allowed_models = ("swinunetr", "unet3d")

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
        from monai.losses import ContrastiveLoss

        c = backbone.encoder_channels
        self.rotation_head = nn.Linear(c, 4)
        self.contrast_head = nn.Linear(c, contrast_dim)
        self.structure_head = nn.Linear(c, max(1, int(num_structures)))
        self.decoder = reconstruction_decoder(c, backbone.size_divisor)
        self.contrastive = ContrastiveLoss(temperature=temperature)
        self.mask_ratio = float(mask_ratio)
        self.block_size = block_size or tuple(max(1, p // 8) for p in self.patch_size)
        self.weights = {"rotation": weight_rotation, "contrast": weight_contrast,
                        "inpainting": weight_inpainting, "structure": weight_structure}
        self.num_structures = int(num_structures)

    @classmethod
    def create(cls, model=None, model_options=None, patch_size=(32, 32, 32), num_structures=1, **options):
        backbone = cls.build_backbone(model, model_options, in_channels=1)
        return cls(backbone, patch_size, num_structures=num_structures, **options)

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
            terms["rotation"].append(F.cross_entropy(self.rotation_head(vector), k))
            recon = self.decoder(features)
            if recon.shape[2:] != rotated.shape[2:]:
                recon = F.interpolate(recon, size=rotated.shape[2:], mode="trilinear", align_corners=False)
            terms["inpainting"].append(F.l1_loss(recon, rotated))
            if self.num_structures > 1:
                terms["structure"].append(F.cross_entropy(self.structure_head(vector), structure))
        values = {name: torch.stack(v).mean() for name, v in terms.items() if v}
        values["contrast"] = self.contrastive(embeddings[0], embeddings[1])
        loss = sum(self.weights[name] * value for name, value in values.items())
        logs = {f"loss_{name}": value.detach() for name, value in values.items()}
        logs["loss"] = loss.detach()
        logs["embedding_std"] = embedding_spread(embeddings[0])
        return loss, logs
