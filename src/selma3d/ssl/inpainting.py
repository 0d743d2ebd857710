"""Masked volume inpainting (as in SimMIM / Tang et al.'s inpainting head, for dense networks).

Random grid-aligned 3D blocks covering ``mask_ratio`` of each patch are blanked out; the full
network (3D U-Net or SwinUNETR, built with one output channel) reconstructs the patch, and the
loss (L1 or MSE, :func:`selma3d.ssl.losses.masked_reconstruction_loss`) is taken on the masked
voxels only, so the network has to infer hidden structure from its context instead of copying
visible voxels.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import Selma3dError
from .base import SSLMethod
from .losses import masked_reconstruction_loss
from .views import random_block_mask


class Inpainting(SSLMethod):
    backbone_options = {"in_channels": 1, "out_channels": 1}  # the network outputs the image

    def __init__(self, backbone: nn.Module, patch_size: Sequence[int], mask_ratio: float = 0.5,
                 block_size: int | Sequence[int] | None = None, loss: str = "l1",
                 mask_value: float = 0.0):
        super().__init__(backbone)
        if not 0.0 < float(mask_ratio) < 1.0:
            raise Selma3dError(f"inpainting: mask_ratio must lie in (0, 1), got {mask_ratio}")
        if loss not in ("l1", "mse"):
            raise Selma3dError(f"inpainting: loss must be l1 or mse, got {loss!r}")
        self.patch_size = tuple(patch_size)
        self.mask_ratio = float(mask_ratio)
        # default: an 8x8x8 grid of blocks over the patch
        self.block_size = block_size or tuple(max(1, p // 8) for p in self.patch_size)
        self.loss_kind = loss
        self.mask_value = float(mask_value)

    def training_loss(self, batch):
        x = batch["image"]
        mask = random_block_mask(x.shape, self.mask_ratio, self.block_size, device=x.device)
        corrupted = torch.where(mask, torch.full_like(x, self.mask_value), x)
        recon = self.backbone(corrupted)
        loss, visible = masked_reconstruction_loss(recon, x, mask, self.loss_kind)
        return loss, {"loss": loss.detach(), "visible_error": visible.detach(),
                      "masked_fraction": mask.to(torch.result_type(recon, x)).mean().detach()}
