"""The one small interface every self-supervised method implements, and the method registry.

A method is an ``nn.Module`` that owns a ``backbone`` (a network from
:func:`selma3d.models.build_model`, whose ``encoder`` ends up in ``encoder.pt``) plus whatever
heads, target/teacher networks and buffers its objective needs. The training loop only calls
:meth:`SSLMethod.training_loss` on a batch from the patch sampler and
:meth:`SSLMethod.on_after_step` after each optimizer step (EMA updates).
"""

from __future__ import annotations

import copy
import importlib
import math
from typing import ClassVar, Sequence

import torch
from torch import nn

from ..errors import Selma3dError

#: name -> "module:Class" (imported on demand so ``build_method`` stays cheap).
METHODS: dict[str, str] = {
    "byol": "selma3d.ssl.byol:BYOL",
    "multitask": "selma3d.ssl.multitask:MultiTask",
    "inpainting": "selma3d.ssl.inpainting:Inpainting",
    "dino": "selma3d.ssl.dino_ibot:DinoIBot",
    "simclr": "selma3d.ssl.simclr:SimCLR",
    "shape": "selma3d.ssl.shape:ShapeAware",
}


class SSLMethod(nn.Module):
    """Base class of the SSL objectives.

    Subclasses set ``name``, ``default_model`` and ``allowed_models`` and implement
    :meth:`training_loss`. ``backbone`` is the model whose ``encoder`` is saved.
    """

    name: ClassVar[str] = ""
    default_model: ClassVar[str] = ""
    allowed_models: ClassVar[tuple[str, ...]] = ()
    #: default backbone options when the user gives none (None: the model's own defaults)
    default_model_options: ClassVar[dict] = {}

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    # -- the interface -------------------------------------------------------------------
    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss to minimize, {name: scalar tensor} to log) for one batch of the sampler."""
        raise NotImplementedError

    def on_after_step(self, step: int, max_steps: int) -> None:
        """Called after every optimizer step (``step`` counts from 1); EMA updates go here."""

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, E) representation of a batch, for monitoring collapse; pooled encoder features."""
        return pooled(self.backbone.encode(images))

    def encoder_only(self) -> None:
        """Freeze the backbone parameters outside ``backbone.encoder`` (e.g. the U-Net decoder):
        an encoder-only objective leaves them untouched, and DDP must not wait for their grads."""
        encoder_params = {id(p) for p in self.backbone.encoder.parameters()}
        for p in self.backbone.parameters():
            if id(p) not in encoder_params:
                p.requires_grad_(False)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def build_backbone(cls, model: str | None, model_options: dict | None, **fixed) -> nn.Module:
        from ..models import build_model

        model = model or cls.default_model
        if cls.allowed_models and model not in cls.allowed_models:
            raise Selma3dError(f"method {cls.name!r} works with model(s) {', '.join(cls.allowed_models)}, "
                               f"not {model!r}")
        options = dict(cls.default_model_options if model_options is None else {})
        options.update(model_options or {})
        options.update(fixed)
        return build_model(model, **options)


def method_names() -> list[str]:
    return list(METHODS)


def method_class(name: str) -> type[SSLMethod]:
    if name not in METHODS:
        raise Selma3dError(f"unknown SSL method {name!r}; choose one of: {', '.join(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_method(name: str, *, model: str | None = None, model_options: dict | None = None,
                 patch_size: Sequence[int] = (32, 32, 32), num_structures: int = 1,
                 **options) -> SSLMethod:
    """Build SSL method ``name`` around a fresh backbone.

    ``model``/``model_options`` choose the backbone (default: the method's own), ``patch_size``
    is the sampler's (z, y, x) patch size, ``num_structures`` the number of structure classes;
    other keyword options go to the method (e.g. ``base_momentum`` for BYOL).
    """
    cls = method_class(name)
    try:
        return cls.create(model=model, model_options=model_options, patch_size=tuple(patch_size),
                          num_structures=num_structures, **options)
    except TypeError as exc:
        raise Selma3dError(f"method {name!r}: bad option ({exc})") from None


# -- shared building blocks ----------------------------------------------------------------

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


def cosine_momentum(step: int, max_steps: int, base: float) -> float:
    """EMA momentum rising from ``base`` to 1 on a cosine (BYOL, DINO):
    tau = 1 - (1 - base) * (cos(pi * step / max_steps) + 1) / 2."""
    progress = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def frozen_copy(module: nn.Module) -> nn.Module:
    """A gradient-free deep copy, the start of an EMA target/teacher network."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target ← momentum · target + (1 − momentum) · online, parameter-wise; buffers copied."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)


def embedding_spread(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the std across the batch of L2-normalized embeddings: about
    1/sqrt(E) for well-spread embeddings, 0 when they collapse to one point (SimSiam's monitor)."""
    z = nn.functional.normalize(z.detach().float(), dim=1)
    return z.std(dim=0).mean()
