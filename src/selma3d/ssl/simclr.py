"""SimCLR (Chen et al., ICML 2020) on 2D slices, for the 2D Attention U-Net's encoder.

A random z-slice of each sampled patch gives two views: random resized crop, flips, a contrast
enhancement (random gamma, global histogram equalization or CLAHE via scikit-image), Gaussian
blur and a little noise. The pooled 2D encoder features go through a projection MLP and the
NT-Xent loss (MONAI ``ContrastiveLoss``) pulls the two views of a slice together and pushes the
other slices of the batch away.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .base import SSLMethod, embedding_spread, mlp, pooled
from .views import histogram_equalize, random_blur, random_flip, random_gamma, random_noise, random_resized_crop


def clahe(x: torch.Tensor, clip_limit: float = 0.02) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalization (scikit-image) of each 2D slice of a
    (B, 1, H, W) batch in [-1, 1]; runs on the CPU."""
    from skimage.exposure import equalize_adapthist

    out = []
    for sample in x.detach().float().cpu().numpy():
        plane = np.clip((sample[0] + 1.0) / 2.0, 0.0, 1.0)
        out.append(equalize_adapthist(plane, clip_limit=clip_limit)[None] * 2.0 - 1.0)
    return torch.as_tensor(np.stack(out), dtype=x.dtype, device=x.device)


def random_contrast(x: torch.Tensor, p_gamma: float = 0.5, p_equalize: float = 0.2,
                    p_clahe: float = 0.2) -> torch.Tensor:
    """One contrast enhancement per sample: gamma, histogram equalization, CLAHE, or none."""
    choice = torch.rand(x.shape[0])
    out = x.clone()
    gamma = choice < p_gamma
    equal = (choice >= p_gamma) & (choice < p_gamma + p_equalize)
    adapt = (choice >= p_gamma + p_equalize) & (choice < p_gamma + p_equalize + p_clahe)
    if gamma.any():
        out[gamma] = random_gamma(x[gamma], p=1.0)
    if equal.any():
        out[equal] = histogram_equalize(x[equal])
    if adapt.any():
        out[adapt] = clahe(x[adapt])
    return out


class SimCLR(SSLMethod):
    name = "simclr"
    default_model = "attunet2d"
    allowed_models = ("attunet2d",)

    def __init__(self, backbone: nn.Module, patch_size: Sequence[int], projection_dim: int = 128,
                 hidden_dim: int = 512, temperature: float = 0.1,
                 crop_scale: tuple[float, float] = (0.3, 1.0)):
        super().__init__(backbone)
        self.encoder_only()
        from monai.losses import ContrastiveLoss

        self.slice_size = tuple(patch_size)[1:]
        self.projector = mlp(backbone.encoder_channels, hidden_dim, projection_dim)
        self.contrastive = ContrastiveLoss(temperature=temperature)
        self.crop_scale = tuple(crop_scale)

    @classmethod
    def create(cls, model=None, model_options=None, patch_size=(32, 32, 32), num_structures=1, **options):
        return cls(cls.build_backbone(model, model_options, in_channels=1), patch_size, **options)

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
        loss = self.contrastive(z1, z2)
        return loss, {"loss": loss.detach(), "embedding_std": embedding_spread(z1)}

    @torch.no_grad()
    def embed(self, images):
        if images.ndim == 5:
            images = images[:, :, images.shape[2] // 2]
        return pooled(self.backbone.encode(images))
