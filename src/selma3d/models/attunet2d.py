"""2D Attention U-Net (Oktay et al. 2018) applied slice by slice to 3D volumes.

MONAI's ``AttentionUnet`` nests its down and up paths recursively, so its encoder cannot be
trained or frozen on its own. This rebuilds the same network from MONAI blocks (``Convolution``
and the attention gate ``AttentionBlock``) with a separable ``encoder``. 3D input (B, C, D, H, W)
is processed as B*D independent (H, W) slices, the way several SELMA3D teams used 2D networks.
"""

from __future__ import annotations

import torch
from torch import nn
from monai.networks.blocks import Convolution
from monai.networks.nets.attentionunet import AttentionBlock

from selma3d.errors import InputError
from selma3d.models._common import SkipDecoder, bad_option, canonical, int_sequence, norm_option, positive_int, probability

NAME = "attunet2d"


def _double_conv(in_ch: int, out_ch: int, norm, dropout: float, stride: int = 1) -> nn.Sequential:
    """Two 3x3 conv-norm-dropout-ReLU layers; the first one may downsample by ``stride``."""
    return nn.Sequential(
        Convolution(2, in_ch, out_ch, strides=stride, kernel_size=3, norm=norm, act="relu",
                    dropout=dropout, adn_ordering="NDA"),
        Convolution(2, out_ch, out_ch, strides=1, kernel_size=3, norm=norm, act="relu",
                    dropout=dropout, adn_ordering="NDA"),
    )


def fold_slices(x: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) -> (B*D, C, H, W)."""
    b, c, d, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)


def unfold_slices(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*D, C, H, W) -> (B, C, D, H, W)."""
    bd, c, h, w = x.shape
    return x.reshape(batch, bd // batch, c, h, w).permute(0, 2, 1, 3, 4).contiguous()


class AttentionEncoder2D(nn.Module):
    """Down path on 2D slices: full-resolution double conv, then strided double convs."""

    def __init__(self, in_channels: int, features: tuple[int, ...], norm, dropout: float):
        super().__init__()
        self.stem = _double_conv(in_channels, features[0], norm, dropout)
        self.downs = nn.ModuleList(
            _double_conv(features[i], features[i + 1], norm, dropout, stride=2) for i in range(len(features) - 1)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of every level for 4D slices, finest first; the last is the bottleneck."""
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        return skips


class AttentionUpStage(nn.Module):
    """Upsample the coarser map, gate the skip with it (attention gate), concatenate, convolve."""

    def __init__(self, in_ch: int, out_ch: int, norm, dropout: float):
        super().__init__()
        self.up = Convolution(2, in_ch, out_ch, strides=2, kernel_size=3, norm=norm, act="relu",
                              dropout=dropout, adn_ordering="NDA", is_transposed=True)
        self.gate = AttentionBlock(2, f_int=max(out_ch // 2, 1), f_g=out_ch, f_l=out_ch, dropout=dropout)
        self.merge = _double_conv(2 * out_ch, out_ch, norm, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)
        return self.merge(torch.cat([self.gate(g=up, x=skip), up], dim=1))


class AttentionDecoder2D(SkipDecoder):
    def __init__(self, out_channels: int, features: tuple[int, ...], norm, dropout: float):
        super().__init__()
        self.ups = nn.ModuleList(
            AttentionUpStage(features[i + 1], features[i], norm, dropout) for i in reversed(range(len(features) - 1))
        )
        self.head = nn.Conv2d(features[0], out_channels, kernel_size=1)


class AttentionUNet2D(nn.Module):
    """Slice-wise 2D Attention U-Net; ``features`` gives the channels of each level."""

    encoder_options = ("in_channels", "features", "norm", "dropout")

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features=(32, 64, 128, 256, 512),
        norm="batch",
        dropout: float = 0.0,
    ):
        super().__init__()
        in_channels = positive_int(NAME, "in_channels", in_channels)
        out_channels = positive_int(NAME, "out_channels", out_channels)
        feats = int_sequence(NAME, "features", features, min_length=2)
        if len(feats) > 8:
            raise bad_option(NAME, f"option features has {len(feats)} levels; at most 8 are supported")
        norm_spec = norm_option(NAME, norm)
        dropout = probability(NAME, "dropout", dropout)
        self.config = canonical(
            {"name": NAME, "in_channels": in_channels, "out_channels": out_channels,
             "features": feats, "norm": norm, "dropout": dropout}
        )
        self.encoder = AttentionEncoder2D(in_channels, feats, norm_spec, dropout)
        self.decoder = AttentionDecoder2D(out_channels, feats, norm_spec, dropout)
        self.encoder_channels = feats[-1]
        k = 2 ** (len(feats) - 1)
        self.size_divisor = (1, k, k)

    def _check(self, x: torch.Tensor, dims: tuple[int, ...]) -> None:
        if x.ndim not in dims:
            raise InputError(f"attunet2d expects a {' or '.join(f'{d}D' for d in dims)} tensor, got shape {tuple(x.shape)}")
        k = self.size_divisor[-1]
        if x.shape[-1] % k or x.shape[-2] % k:
            raise InputError(f"attunet2d needs H and W to be multiples of {k}, got shape {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck of 4D slices (B, C, h, w), or of every slice of a 5D volume (B, C, D, h, w)."""
        self._check(x, (4, 5))
        if x.ndim == 4:
            return self.encoder(x)[-1]
        return unfold_slices(self.encoder(fold_slices(x))[-1], x.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for 5D volumes (slice by slice) or for 4D slices."""
        self._check(x, (4, 5))
        if x.ndim == 4:
            return self.decoder(self.encoder(x))
        return unfold_slices(self.decoder(self.encoder(fold_slices(x))), x.shape[0])
