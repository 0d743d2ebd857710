"""SimCLR (Chen et al., ICML 2020) on 2D slices, for the 2D Attention U-Net's encoder.

The sampler draws single z-slices (``sample_depth = 1``: a uniformly random z, the foreground
filter applied to that slice; a 3D batch is still accepted and one random z-slice of each patch
is taken). Each slice gives two views: random resized crop, flips, a contrast
enhancement (random gamma, global histogram equalization or CLAHE via scikit-image), Gaussian
blur and a little noise. The pooled 2D encoder features go through a projection MLP and the
NT-Xent loss (:func:`selma3d.ssl.losses.nt_xent`) pulls the two views of a slice together and pushes the
other slices of the batch away.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import SSLMethod, embedding_spread
from .heads import mlp, pooled
from .losses import nt_xent
from .views import random_blur, random_contrast, random_flip, random_noise, random_resized_crop


class SimCLR(SSLMethod):
    #: the sampler reads one slice per sample (the 2D encoder never sees more)
    sample_depth = 1

    def __init__(self, backbone: nn.Module, patch_size: Sequence[int], projection_dim: int = 128,
                 hidden_dim: int = 512, temperature: float = 0.1,
                 crop_scale: tuple[float, float] = (0.3, 1.0)):
        super().__init__(backbone)
        self.encoder_only()
        self.slice_size = tuple(patch_size)[1:]
        self.projector = mlp(backbone.encoder_channels, hidden_dim, projection_dim)
        self.temperature = float(temperature)
        self.crop_scale = tuple(crop_scale)

    @staticmethod
    def random_slices(x: torch.Tensor) -> torch.Tensor:
        """One random z-slice (B, C, H, W) of each (C, D, H, W) patch."""
        z = torch.randint(0, x.shape[2], (x.shape[0],), device=x.device)
        return x[torch.arange(x.shape[0], device=x.device), :, z]

    def view(self, slices: torch.Tensor) -> torch.Tensor:
        v = random_flip(random_resized_crop(slices, self.slice_size, self.crop_scale))
        return random_noise(random_blur(random_contrast(v)), std=0.05)

    def project(self, slices: torch.Tensor) -> torch.Tensor:
        return self.projector(pooled(self.backbone.encode(slices)))

    def training_loss(self, batch):
        slices = self.random_slices(batch["image"])
        z1, z2 = self.project(self.view(slices)), self.project(self.view(slices))
        loss = nt_xent(z1, z2, self.temperature)
        return loss, {"loss": loss.detach(), "embedding_std": embedding_spread(z1)}

    @torch.no_grad()
    def embed(self, images):
        if images.ndim == 5:
            images = images[:, :, images.shape[2] // 2]
        return pooled(self.backbone.encode(images))
