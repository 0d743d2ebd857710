"""3D ViT encoder + lightweight adapter + convolutional decoder (the SELMA3D DINOv2 team's design).

The encoder is a plain ViT (MONAI ``PatchEmbeddingBlock`` + ``TransformerBlock``) with a CLS token
and a learned mask token, so DINO/iBOT-style pretraining can use it directly. Segmentation needs
full-resolution output, so, as in ViT-Adapter / ViTDet's simple feature pyramid, a small adapter
turns the patch-token grid into a multi-scale pyramid (transposed convolutions) that a U-Net-like
decoder fuses, together with a shallow full-resolution conv stem on the image for fine detail.
Freezing ``encoder`` gives the "frozen ViT + adapter + conv decoder" mode.

Learned position embeddings live on the grid of the construction size ``img_size``; inputs of any
other size that is a multiple of ``patch_size`` get the grid resampled trilinearly (as DINOv2 does
in 2D with bicubic interpolation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock, UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import UnetResBlock, get_conv_layer

from selma3d.errors import InputError
from selma3d.models._common import (
    bad_option, canonical, int_or_triple, norm_option, positive_int, probability,
)

NAME = "vit3d"


class ViTEncoder3D(nn.Module):
    """Plain 3D ViT: conv patch embedding, CLS token, learned (interpolated) position embedding."""

    def __init__(self, in_channels, img_size, patch_size, hidden_size, num_layers, num_heads, mlp_dim, dropout):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.base_grid = tuple(s // p for s, p in zip(img_size, patch_size))
        self.hidden_size = hidden_size
        # Its conv projection and learnable position embedding are used; its forward is not,
        # because that one adds a fixed-size position table (no other input sizes, no mask token).
        self.patch_embed = PatchEmbeddingBlock(
            in_channels=in_channels, img_size=img_size, patch_size=patch_size, hidden_size=hidden_size,
            num_heads=num_heads, proj_type="conv", pos_embed_type="learnable", dropout_rate=dropout,
            spatial_dims=3,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        for p in (self.cls_token, self.cls_pos_embed, self.mask_token):
            nn.init.trunc_normal_(p, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate=dropout, qkv_bias=True)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)

    def grid_shape(self, spatial_shape) -> tuple[int, int, int]:
        """Token grid (d, h, w) for an input of spatial shape (D, H, W); checks divisibility."""
        spatial_shape = tuple(int(s) for s in spatial_shape)
        if len(spatial_shape) != 3 or any(s % p or s == 0 for s, p in zip(spatial_shape, self.patch_size)):
            raise InputError(
                f"vit3d needs a (D, H, W) input whose sizes are positive multiples of the patch size "
                f"{self.patch_size}, got {spatial_shape}"
            )
        return tuple(s // p for s, p in zip(spatial_shape, self.patch_size))  # type: ignore[return-value]

    def position_embedding(self, grid) -> torch.Tensor:
        """(1, N, E) position embedding for a token grid, resampled trilinearly if it differs."""
        table = self.patch_embed.position_embeddings
        if tuple(grid) == self.base_grid:
            return table
        volume = table.reshape(1, *self.base_grid, self.hidden_size).permute(0, 4, 1, 2, 3)
        volume = F.interpolate(volume, size=tuple(grid), mode="trilinear", align_corners=False)
        return volume.flatten(2).transpose(1, 2)

    def forward_tokens(self, x: torch.Tensor, token_mask: torch.Tensor | None = None):
        """Returns (cls (B, E), patch_tokens (B, N, E)), N = d*h*w in z, y, x order.

        ``token_mask`` (B, N) bool replaces the embeddings of the masked patches by the learned
        mask token before position embeddings are added (iBOT / BEiT masked image modelling).
        """
        grid = self.grid_shape(x.shape[2:])
        tokens = self.patch_embed.patch_embeddings(x).flatten(2).transpose(1, 2)  # (B, N, E)
        if token_mask is not None:
            if token_mask.shape != tokens.shape[:2]:
                raise InputError(f"token_mask must have shape {tuple(tokens.shape[:2])}, got {tuple(token_mask.shape)}")
            mask = token_mask.to(device=tokens.device, dtype=torch.bool).unsqueeze(-1)
            tokens = torch.where(mask, self.mask_token.to(tokens.dtype), tokens)
        tokens = tokens + self.position_embedding(grid)
        cls = (self.cls_token + self.cls_pos_embed).expand(tokens.shape[0], -1, -1)
        h = self.patch_embed.dropout(torch.cat([cls, tokens], dim=1))
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        return h[:, 0], h[:, 1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens as a feature grid (B, E, d, h, w)."""
        grid = self.grid_shape(x.shape[2:])
        _, patches = self.forward_tokens(x)
        return patches.transpose(1, 2).reshape(x.shape[0], self.hidden_size, *grid)


def _upsample_plan(patch_size) -> list[tuple[int, int, int]]:
    """Per-step (z, y, x) upsampling factors (2 or 1) that take the token grid to full resolution."""
    steps = int(math.log2(max(patch_size)))
    plan, stride = [], list(patch_size)
    for _ in range(steps):
        factor = tuple(2 if s > 1 else 1 for s in stride)
        stride = [s // f for s, f in zip(stride, factor)]
        plan.append(factor)
    return plan


class FeaturePyramidAdapter(nn.Module):
    """ViTDet-style simple feature pyramid: the token grid projected to every decoder stride."""

    def __init__(self, hidden_size, channels, cumulative, norm):
        super().__init__()
        levels = []
        for ch, factor in zip(channels, cumulative):
            if factor == (1, 1, 1):
                proj = get_conv_layer(3, hidden_size, ch, kernel_size=1, stride=1, conv_only=True)
            else:
                proj = get_conv_layer(3, hidden_size, ch, kernel_size=factor, stride=factor,
                                      conv_only=True, is_transposed=True)
            levels.append(nn.Sequential(proj, UnetResBlock(3, ch, ch, kernel_size=3, stride=1, norm_name=norm)))
        self.levels = nn.ModuleList(levels)

    def forward(self, grid: torch.Tensor) -> list[torch.Tensor]:
        """Features coarsest (patch stride) first."""
        return [level(grid) for level in self.levels]


class ViT3D(nn.Module):
    """3D ViT + adapter + convolutional decoder; ``patch_size`` entries must be powers of two."""

    encoder_options = ("in_channels", "img_size", "patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim")

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        img_size=96,
        patch_size=8,
        hidden_size: int = 384,
        num_layers: int = 12,
        num_heads: int = 6,
        mlp_dim: int = 1536,
        dropout: float = 0.0,
        decoder_channels: int = 32,
        norm="instance",
    ):
        super().__init__()
        in_channels = positive_int(NAME, "in_channels", in_channels)
        out_channels = positive_int(NAME, "out_channels", out_channels)
        img = int_or_triple(NAME, "img_size", img_size)
        patch = int_or_triple(NAME, "patch_size", patch_size)
        if any(p & (p - 1) for p in patch):
            raise bad_option(NAME, f"option patch_size entries must be powers of two, got {list(patch)}")
        if max(patch) < 2:
            raise bad_option(NAME, "option patch_size must be at least 2 along one axis")
        if any(s % p for s, p in zip(img, patch)):
            raise bad_option(NAME, f"option img_size {list(img)} must be a multiple of patch_size {list(patch)}")
        hidden_size = positive_int(NAME, "hidden_size", hidden_size)
        num_layers = positive_int(NAME, "num_layers", num_layers)
        num_heads = positive_int(NAME, "num_heads", num_heads)
        if hidden_size % num_heads:
            raise bad_option(NAME, f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        mlp_dim = positive_int(NAME, "mlp_dim", mlp_dim)
        dropout = probability(NAME, "dropout", dropout)
        decoder_channels = positive_int(NAME, "decoder_channels", decoder_channels)
        norm_spec = norm_option(NAME, norm)
        if norm_spec is None:
            raise bad_option(NAME, "option norm cannot be 'none' for vit3d")
        self.config = canonical(
            {"name": NAME, "in_channels": in_channels, "out_channels": out_channels, "img_size": img,
             "patch_size": patch, "hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads,
             "mlp_dim": mlp_dim, "dropout": dropout, "decoder_channels": decoder_channels, "norm": norm}
        )
        self.encoder = ViTEncoder3D(in_channels, img, patch, hidden_size, num_layers, num_heads, mlp_dim, dropout)

        plan = _upsample_plan(patch)  # one entry per 2x decoder stage
        levels = len(plan)
        # Channels per decoder level, coarsest first: widest at the patch stride, ``decoder_channels``
        # at full resolution.
        channels = [decoder_channels * 2 ** max(levels - 1 - j, 0) for j in range(levels)] + [decoder_channels]
        cumulative, factor = [], (1, 1, 1)
        for step in [(1, 1, 1)] + plan[:-1]:
            factor = tuple(a * b for a, b in zip(factor, step))
            cumulative.append(factor)
        self.adapter = FeaturePyramidAdapter(hidden_size, channels[:levels], cumulative, norm_spec)
        self.stem = UnetrBasicBlock(3, in_channels, decoder_channels, kernel_size=3, stride=1,
                                    norm_name=norm_spec, res_block=True)
        self.decoder = nn.ModuleList(
            UnetrUpBlock(3, channels[j], channels[j + 1], kernel_size=3, upsample_kernel_size=plan[j],
                         norm_name=norm_spec, res_block=True)
            for j in range(levels)
        )
        self.head = UnetOutBlock(3, decoder_channels, out_channels)
        self.encoder_channels = hidden_size
        self.size_divisor = patch

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens as a grid (B, hidden_size, D/pz, H/py, W/px)."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = self.adapter(self.encoder(x))
        skips = pyramid[1:] + [self.stem(x)]
        h = pyramid[0]
        for up, skip in zip(self.decoder, skips):
            h = up(h, skip)
        return self.head(h)
