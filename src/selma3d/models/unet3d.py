"""3D U-Net (Ronneberger/Çiçek et al.) with a separable encoder, built from MONAI BasicUNet blocks.

MONAI's ``BasicUNet`` keeps its down and up paths in one flat module, so SSL could not train or
freeze "the encoder" alone; here the same ``TwoConv``/``Down``/``UpCat`` blocks are split into an
``encoder`` (down path, returns every level's features) and a ``decoder`` (up path with skips).
"""

from __future__ import annotations

import torch
from torch import nn
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat

from selma3d.models._common import SkipDecoder, bad_option, canonical, int_sequence, norm_option, positive_int, probability

NAME = "unet3d"
ACT = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})


class UNetEncoder(nn.Module):
    """Down path: a full-resolution double conv, then one max-pool + double conv per level."""

    def __init__(self, in_channels: int, features: tuple[int, ...], norm, dropout: float):
        super().__init__()
        self.stem = TwoConv(3, in_channels, features[0], ACT, norm, bias=True, dropout=dropout)
        self.downs = nn.ModuleList(
            Down(3, features[i], features[i + 1], ACT, norm, bias=True, dropout=dropout)
            for i in range(len(features) - 1)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of every level, finest first; the last one is the bottleneck."""
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        return skips


class UNetDecoder(SkipDecoder):
    """Up path: transposed-conv upsampling, concatenation with the skip, double conv; 1x1 head."""

    def __init__(self, out_channels: int, features: tuple[int, ...], norm, dropout: float):
        super().__init__()
        self.ups = nn.ModuleList(
            UpCat(3, features[i + 1], features[i], features[i], ACT, norm, bias=True, dropout=dropout, halves=False)
            for i in reversed(range(len(features) - 1))
        )
        self.head = nn.Conv3d(features[0], out_channels, kernel_size=1)


class UNet3D(nn.Module):
    """3D U-Net: ``features`` gives the channels of each level (its length is the number of levels)."""

    encoder_options = ("in_channels", "features", "norm", "dropout")

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features=(32, 64, 128, 256, 320),
        norm="instance",
        dropout: float = 0.0,
    ):
        super().__init__()
        in_channels = positive_int(NAME, "in_channels", in_channels)
        out_channels = positive_int(NAME, "out_channels", out_channels)
        feats = int_sequence(NAME, "features", features, min_length=2)
        if len(feats) > 7:
            raise bad_option(NAME, f"option features has {len(feats)} levels; at most 7 are supported")
        norm_spec = norm_option(NAME, norm)
        dropout = probability(NAME, "dropout", dropout)
        self.config = canonical(
            {"name": NAME, "in_channels": in_channels, "out_channels": out_channels,
             "features": feats, "norm": norm, "dropout": dropout}
        )
        self.encoder = UNetEncoder(in_channels, feats, norm_spec, dropout)
        self.decoder = UNetDecoder(out_channels, feats, norm_spec, dropout)
        self.encoder_channels = feats[-1]
        self.size_divisor = 2 ** (len(feats) - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck features (B, features[-1], D/s, H/s, W/s) with s = size_divisor."""
        return self.encoder(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
