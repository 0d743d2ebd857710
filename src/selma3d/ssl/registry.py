"""The SSL method registry: the one place that lists the methods.

Each entry names the method class (imported on demand, so the command line starts without
torch), the backbones it works with (the first one is its default), a one-line summary (for
``--help`` and the README) and the options of a seconds-long run on tiny patches (the contract
test trains every registered method with them). Adding a method = its module (+ its loss in
``ssl/losses/`` if new) + one entry here; the CLI, the docs and the tests read this table.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from ..errors import Selma3dError

if TYPE_CHECKING:  # pragma: no cover
    from .base import SSLMethod


@dataclass(frozen=True)
class MethodSpec:
    """One registered method.

    ``target`` is ``"module:Class"`` (imported when first built) or the class itself;
    ``models`` the backbones it works with, the default first; ``tiny`` the ``build_method``
    options (``model_options`` and method options) of a tiny, seconds-long instance and
    ``tiny_patch`` its (z, y, x) patch size.
    """

    target: str | type
    models: tuple[str, ...]
    summary: str
    tiny: dict = field(default_factory=dict)
    tiny_patch: tuple[int, int, int] = (16, 16, 16)

    @property
    def default_model(self) -> str:
        return self.models[0]

    def tiny_options(self) -> dict:
        """A fresh copy of ``tiny`` (callers may change it)."""
        return copy.deepcopy(self.tiny)

    def load(self) -> type["SSLMethod"]:
        if isinstance(self.target, str):
            module, cls = self.target.split(":")
            return getattr(importlib.import_module(module), cls)
        return self.target


_TINY_UNET = {"features": [4, 8, 16]}

#: name -> method; the order is the order of ``--help`` and the README.
METHODS: dict[str, MethodSpec] = {
    "byol": MethodSpec(
        "selma3d.ssl.byol:BYOL", ("unet3d", "swinunetr", "vit3d"),
        "BYOL (Grill et al. 2020): online network predicts an EMA target's projection of another view",
        tiny=dict(model_options=_TINY_UNET, hidden_dim=32, projection_dim=16)),
    "multitask": MethodSpec(
        "selma3d.ssl.multitask:MultiTask", ("swinunetr", "unet3d"),
        "Tang et al. 2022 SwinUNETR pretraining: rotation, contrastive, inpainting (+ structure class)",
        tiny=dict(model_options={"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
                                 "window_size": 4, "norm": "group"}, contrast_dim=32),
        tiny_patch=(32, 32, 32)),  # SwinUNETR needs multiples of 32
    "inpainting": MethodSpec(
        "selma3d.ssl.inpainting:Inpainting", ("unet3d", "swinunetr"),
        "masked volume inpainting: reconstruct random hidden blocks (loss on masked voxels only)",
        tiny=dict(model_options=_TINY_UNET)),
    "dino": MethodSpec(
        "selma3d.ssl.dino_ibot:DinoIBot", ("vit3d",),
        "DINOv2-style self-distillation on the 3D ViT: DINO + iBOT masked tokens + KoLeo",
        tiny=dict(model_options={"patch_size": 4, "hidden_size": 32, "num_layers": 2, "num_heads": 2,
                                 "mlp_dim": 64, "decoder_channels": 4},
                  out_dim=64, hidden_dim=64, bottleneck_dim=16, local_crops=2, base_momentum=0.9)),
    "simclr": MethodSpec(
        "selma3d.ssl.simclr:SimCLR", ("attunet2d",),
        "SimCLR (Chen et al. 2020) on 2D slices: NT-Xent between two views of each slice",
        tiny=dict(model_options=_TINY_UNET, hidden_dim=32, projection_dim=16)),
    "shape": MethodSpec(
        "selma3d.ssl.shape:ShapeAware", ("unet3d", "swinunetr"),
        "shape-aware (selma3d): Hessian blob/tube/plate maps regressed from a masked view, "
        "foreground-weighted inpainting, spot/tree head",
        tiny=dict(model_options=_TINY_UNET, scales=(1.0,), structure_types=["spot", "tree", "spot"])),
}


def method_names() -> list[str]:
    return list(METHODS)


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise Selma3dError(f"unknown SSL method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def method_class(name: str) -> type["SSLMethod"]:
    return method_spec(name).load()


def default_models() -> dict[str, str]:
    """{method: its default backbone}, for help texts."""
    return {name: spec.default_model for name, spec in METHODS.items()}


def build_method(name: str, *, model: str | None = None, model_options: dict | None = None,
                 patch_size: Sequence[int] = (32, 32, 32), num_structures: int = 1,
                 **options) -> "SSLMethod":
    """Build SSL method ``name`` around a fresh backbone.

    ``model``/``model_options`` choose the backbone (default: the method's first model),
    ``patch_size`` is the sampler's (z, y, x) patch size, ``num_structures`` the number of
    structure classes; other keyword options go to the method (e.g. ``base_momentum`` for BYOL).
    """
    spec = method_spec(name)
    model = model or spec.default_model
    if model not in spec.models:
        raise Selma3dError(f"method {name!r} works with model(s) {', '.join(spec.models)}, not {model!r}")
    cls = spec.load()
    try:
        return cls.create(model, model_options, tuple(patch_size), num_structures, **options)
    except TypeError as exc:
        raise Selma3dError(f"method {name!r}: bad option ({exc})") from None


def sample_size(name: str, patch_size: Sequence[int]) -> tuple[int, int, int]:
    """The (z, y, x) window the patch sampler draws for method ``name`` at ``patch_size``:
    the patch itself, or one slice of it for a 2D method
    (:attr:`selma3d.ssl.base.SSLMethod.sample_depth`)."""
    return method_class(name).sample_size(patch_size)


def methods_markdown() -> str:
    """The README's method table (a test keeps the README's copy equal to it)."""
    rows = ["| method | backbones (default first) | objective |", "| --- | --- | --- |"]
    rows += [f"| `{name}` | {', '.join(spec.models)} | {spec.summary} |" for name, spec in METHODS.items()]
    return "\n".join(rows)
