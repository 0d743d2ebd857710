"""Heads and projectors the SSL methods put on a backbone's encoder features.

- :func:`pooled`: global average pooling of a feature map;
- :func:`mlp`: the BYOL/SimCLR projector and predictor (Linear → BN → ReLU → Linear);
- :class:`ProjectedEncoder`: backbone encoder → pooled vector → projector (BYOL's online and
  target networks);
- :class:`DINOHead`: DINO/iBOT's MLP → L2-normalized bottleneck → weight-normalized prototypes;
- :func:`reconstruction_decoder`: Tang et al.'s light transposed-convolution decoder from the
  deepest feature map back to the image.

Written by hand where no maintained library offers them for 3D (lightly and solo-learn are 2D
and import torchvision).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def pooled(features: torch.Tensor) -> torch.Tensor:
    """Global average pooling of a (B, C, *spatial) feature map to (B, C)."""
    return features.flatten(2).mean(dim=2) if features.ndim > 2 else features


def mlp(in_dim: int, hidden: int, out_dim: int, batch_norm: bool = True) -> nn.Sequential:
    """Linear → (BatchNorm) → ReLU → Linear: the BYOL/SimCLR projector and predictor."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)]
    return nn.Sequential(*layers)


class ProjectedEncoder(nn.Module):
    """Backbone encoder features → pooled vector → projector MLP."""

    def __init__(self, backbone: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(pooled(self.backbone.encode(x)))


class DINOHead(nn.Module):
    """MLP → L2-normalized bottleneck → weight-normalized linear layer onto prototypes."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        self.prototypes = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck_dim, out_dim, bias=False))
        original0 = self.prototypes.parametrizations.weight.original0
        original0.data.fill_(1.0)
        original0.requires_grad_(False)  # the norm stays 1, as in DINO

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.mlp(x), dim=-1))


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
