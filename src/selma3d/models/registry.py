"""``build_model(name, **options)``: the one way to make a segmentation network by name.

Tiny networks for tests and CPU runs come from options, e.g.
``build_model("unet3d", features=(4, 8, 16))``, ``build_model("swinunetr", feature_size=12,
depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))``, ``build_model("vit3d", img_size=16, patch_size=8,
hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, decoder_channels=8)``,
``build_model("attunet2d", features=(4, 8, 16))``. The defaults are sizes for real GPU runs.
"""

from __future__ import annotations

import inspect

from torch import nn

from selma3d.errors import Selma3dError
from selma3d.models.attunet2d import AttentionUNet2D
from selma3d.models.probe import LinearProbe
from selma3d.models.swinunetr import SwinUNETRModel
from selma3d.models.unet3d import UNet3D
from selma3d.models.vit3d import ViT3D

MODELS: dict[str, type[nn.Module]] = {
    "unet3d": UNet3D,
    "swinunetr": SwinUNETRModel,
    "vit3d": ViT3D,
    "attunet2d": AttentionUNet2D,
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)
#: A wrapper rather than an architecture (not in MODEL_NAMES): a linear read-out of another
#: model's frozen encoder, registered so that saved probe runs rebuild with build_model.
MODELS["probe"] = LinearProbe


def model_options(name: str) -> dict[str, object]:
    """The options ``name`` accepts with their defaults (besides in/out channels)."""
    cls = _model_class(name)
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self" and not k.startswith("_")}


def _model_class(name: str) -> type[nn.Module]:
    if name not in MODELS:
        raise Selma3dError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    return MODELS[name]


def build_model(name: str, in_channels: int = 1, out_channels: int = 1, **options) -> nn.Module:
    """A freshly initialised network; raises ``Selma3dError`` for an unknown name or a bad option."""
    cls = _model_class(name)
    known = model_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise Selma3dError(
            f"model {name!r} has no option(s) {', '.join(unknown)}; its options are: {', '.join(known)}"
        )
    if getattr(cls, "wraps_model", False):  # e.g. the probe: build the network it wraps first
        base = options.pop("base", None)
        if not isinstance(base, dict) or "name" not in base:
            raise Selma3dError(f"model {name!r} needs option base: the config of the network to wrap")
        options["_network"] = build_model(**base)
    try:
        return cls(in_channels=in_channels, out_channels=out_channels, **options)
    except Selma3dError:
        raise
    except (ValueError, TypeError, AssertionError) as exc:  # raised by MONAI for inconsistent sizes
        raise Selma3dError(f"model {name!r}: invalid options {options}: {exc}") from exc
