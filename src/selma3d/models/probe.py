"""Linear probe: a frozen network's encoder features, read out by one 1×1×1 convolution.

The standard test of what a (self-supervised) encoder has learned for segmentation: nothing but
a per-voxel linear map of its features may be trained. The features of every encoder level
(multi-scale, finest first) are upsampled to the input resolution, concatenated, and a single
1×1×1 convolution maps them to logits.

Implementation note: a 1×1×1 convolution and trilinear upsampling are both linear, so they
commute; we apply each level's slice of the 1×1×1 convolution at that level's (low) resolution
and upsample the few output channels instead of the many feature channels. The result is the
same linear map as "upsample, concatenate, convolve", at a fraction of the memory.

The probe is registered as model ``probe`` (:mod:`selma3d.models.registry`): its ``config``
holds the base network's config, so ``build_model(**probe.config)`` + ``load_state_dict``
rebuild it, and ``selma3d predict`` loads a probe run like any other.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from selma3d.models._common import canonical, positive_int

NAME = "probe"


def multiscale_features(base: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Encoder feature maps (B, C_l, d, h, w) of every level the architecture exposes, finest first."""
    name = base.config["name"]
    if name == "unet3d":
        return list(base.encoder(x))
    if name == "attunet2d":  # slice by slice: fold z into the batch, unfold every level back
        from selma3d.models.attunet2d import fold_slices, unfold_slices

        base._check(x, (5,))
        return [unfold_slices(f, x.shape[0]) for f in base.encoder(fold_slices(x))]
    if name == "swinunetr":
        base._check_input_size(x.shape[2:])
        return list(base.swinViT(x, base.normalize))
    return [base.encode(x)]  # vit3d: one token grid


class LinearProbe(nn.Module):
    """``base``'s frozen encoder features → one 1×1×1 convolution (the only trained weights).

    Build it around an existing (e.g. pretrained) network with :meth:`around`, or from a config
    with ``build_model("probe", base={...})`` (what reloading a saved probe run does: the
    registry builds the base network first, so this module does not import the registry).
    """

    encoder_options = ()
    #: build_model builds the network named by the ``base`` option and passes it as ``_network``.
    wraps_model = True

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base: dict | None = None,
                 _network: nn.Module | None = None):
        super().__init__()
        out_channels = positive_int(NAME, "out_channels", out_channels)
        if _network is None:
            raise ValueError("probe needs option base: the config of the network to probe")
        self.base = _network
        self.base.requires_grad_(False)
        self.base.eval()
        self.config = canonical({"name": NAME, "in_channels": int(_network.config.get("in_channels", in_channels)),
                                 "out_channels": out_channels, "base": dict(_network.config)})
        self.size_divisor = getattr(_network, "size_divisor", 1)
        channels = self._channels()
        self.encoder_channels = sum(channels)
        # One 1x1x1 conv over the concatenated levels, stored as its per-level slices (module doc).
        self.heads = nn.ModuleList(nn.Conv3d(c, out_channels, kernel_size=1, bias=i == 0)
                                   for i, c in enumerate(channels))

    @classmethod
    def around(cls, network: nn.Module, out_channels: int = 1) -> "LinearProbe":
        """A probe on ``network`` (its weights, e.g. a loaded pretrained encoder, are kept)."""
        return cls(out_channels=out_channels, _network=network)

    @property
    def encoder(self) -> nn.Module:
        return self.base.encoder

    def _channels(self) -> list[int]:
        divisor = self.size_divisor
        # Two bottleneck voxels per axis: instance norm cannot normalize a single one.
        sizes = [2 * d for d in ([divisor] * 3 if isinstance(divisor, int) else list(divisor))]
        if self.base.config["name"] == "vit3d":
            img = self.base.config.get("img_size", divisor)
            sizes = [img] * 3 if isinstance(img, int) else list(img)
        x = torch.zeros(1, self.config["in_channels"], *sizes)
        with torch.no_grad():
            return [int(f.shape[1]) for f in multiscale_features(self.base, x)]

    def train(self, mode: bool = True):
        """The base network stays in eval mode: its normalization statistics never change."""
        super().train(mode)
        self.base.eval()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return multiscale_features(self.base, x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        with torch.no_grad():
            features = multiscale_features(self.base, x)
        logits = None
        for head, feature in zip(self.heads, features):
            out = head(feature)
            if out.shape[2:] != size:
                out = F.interpolate(out, size=size, mode="trilinear", align_corners=False)
            logits = out if logits is None else logits + out
        return logits
