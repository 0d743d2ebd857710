"""BYOL (Grill et al., NeurIPS 2020) on 3D patches, with the 3D U-Net encoder.

Online network: encoder → global average pool → projector MLP → predictor MLP. Target network:
an EMA copy of encoder + projector, momentum rising from ``base_momentum`` (0.996) to 1 on a
cosine. Two augmented views of each patch (random resized crop, flips, intensity scale/shift,
Gaussian blur, noise); the loss (:func:`selma3d.ssl.losses.byol_loss`) is the symmetrized
normalized MSE 2 − 2·cos between the online prediction of one view and the (stop-gradient)
target projection of the other.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import SSLMethod, embedding_spread
from .ema import cosine_momentum, ema_update, frozen_copy
from .heads import ProjectedEncoder, mlp
from .losses import byol_loss
from .views import augment_3d


class BYOL(SSLMethod):
    def __init__(self, backbone: nn.Module, patch_size: Sequence[int], projection_dim: int = 256,
                 hidden_dim: int = 1024, base_momentum: float = 0.996,
                 crop_scale: tuple[float, float] = (0.3, 1.0)):
        super().__init__(backbone)
        self.encoder_only()
        self.patch_size = tuple(patch_size)
        self.base_momentum = float(base_momentum)
        self.crop_scale = tuple(crop_scale)
        self.online = ProjectedEncoder(backbone, mlp(backbone.encoder_channels, hidden_dim, projection_dim))
        self.predictor = mlp(projection_dim, hidden_dim, projection_dim)
        self.target = frozen_copy(self.online)
        self.register_buffer("momentum", torch.tensor(self.base_momentum))

    def training_loss(self, batch):
        x = batch["image"]
        v1 = augment_3d(x, self.patch_size, self.crop_scale)
        v2 = augment_3d(x, self.patch_size, self.crop_scale)
        z1, z2 = self.online(v1), self.online(v2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1, t2 = self.target(v1), self.target(v2)
        loss = byol_loss(p1, p2, t1, t2)
        return loss, {"loss": loss.detach(), "momentum": self.momentum.clone(),
                      "embedding_std": embedding_spread(z1)}

    def ema_pairs(self):
        return [(self.target, self.online)]

    def on_after_step(self, step, max_steps):
        tau = cosine_momentum(step, max_steps, self.base_momentum)
        ema_update(self.target, self.online, tau)
        self.momentum.fill_(tau)
