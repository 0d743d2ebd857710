"""SwinUNETR (Hatamizadeh et al. 2022) from MONAI, with its Swin transformer exposed as ``encoder``.

As in Tang et al. (CVPR 2022), self-supervised pretraining trains the hierarchical Swin-ViT
(``swinViT``); the convolutional encoder blocks and the decoder are trained during finetuning.
"""

from __future__ import annotations

import torch
from torch import nn
from monai.networks.nets import SwinUNETR

from selma3d.errors import InputError
from selma3d.models._common import (
    bad_option, canonical, int_sequence, norm_option, positive_int, probability,
)

NAME = "swinunetr"


class SwinUNETRModel(SwinUNETR):
    """MONAI ``SwinUNETR`` plus the selma3d model interface (``encoder``, ``encode``, ``config``)."""

    encoder_options = ("in_channels", "feature_size", "depths", "num_heads", "window_size", "use_v2")

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        feature_size: int = 48,
        depths=(2, 2, 2, 2),
        num_heads=(3, 6, 12, 24),
        window_size: int = 7,
        norm="instance",
        dropout_path_rate: float = 0.0,
        use_checkpoint: bool = False,
        use_v2: bool = False,
    ):
        in_channels = positive_int(NAME, "in_channels", in_channels)
        out_channels = positive_int(NAME, "out_channels", out_channels)
        feature_size = positive_int(NAME, "feature_size", feature_size)
        if feature_size % 12:
            raise bad_option(NAME, f"option feature_size must be a multiple of 12, got {feature_size}")
        depths = int_sequence(NAME, "depths", depths, length=4)
        num_heads = int_sequence(NAME, "num_heads", num_heads, length=4)
        for stage, heads in enumerate(num_heads):
            if (feature_size * 2**stage) % heads:
                raise bad_option(
                    NAME, f"num_heads[{stage}]={heads} does not divide the stage width {feature_size * 2**stage}"
                )
        window_size = positive_int(NAME, "window_size", window_size)
        norm_spec = norm_option(NAME, norm)
        if norm_spec is None:
            raise bad_option(NAME, "option norm cannot be 'none' for swinunetr")
        dropout_path_rate = probability(NAME, "dropout_path_rate", dropout_path_rate)
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            feature_size=feature_size,
            depths=depths,
            num_heads=num_heads,
            window_size=window_size,
            norm_name=norm_spec,
            dropout_path_rate=dropout_path_rate,
            use_checkpoint=bool(use_checkpoint),
            use_v2=bool(use_v2),
            spatial_dims=3,
        )
        self.config = canonical(
            {"name": NAME, "in_channels": in_channels, "out_channels": out_channels,
             "feature_size": feature_size, "depths": depths, "num_heads": num_heads,
             "window_size": window_size, "norm": norm, "dropout_path_rate": dropout_path_rate,
             "use_checkpoint": bool(use_checkpoint), "use_v2": bool(use_v2)}
        )
        self._instance_norm = str(norm_spec[0] if isinstance(norm_spec, tuple) else norm_spec).lower() == "instance"
        self.encoder_channels = 16 * feature_size
        self.size_divisor = 32  # patch embedding (2) times four 2x patch-merging stages

    @torch.jit.unused
    def _check_input_size(self, spatial_shape):
        bad = [int(n) for n in spatial_shape if int(n) % self.size_divisor]
        if bad:
            raise InputError(
                f"swinunetr needs every spatial size to be a multiple of {self.size_divisor}, "
                f"got {tuple(int(n) for n in spatial_shape)}"
            )
        if self.training and self._instance_norm and all(int(n) == self.size_divisor for n in spatial_shape):
            # The bottleneck would be one voxel, which instance norm cannot normalize in training.
            raise InputError(
                f"swinunetr needs an input of at least 64 along one axis for training, got {tuple(spatial_shape)}"
            )

    @property
    def encoder(self) -> nn.Module:
        """The Swin transformer (patch embedding + 4 stages); a property so weights are stored once."""
        return self.swinViT

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Last Swin stage output (B, 16*feature_size, D/32, H/32, W/32)."""
        self._check_input_size(x.shape[2:])
        return self.swinViT(x, self.normalize)[-1]
