"""The one small interface every self-supervised method implements.

A method is an ``nn.Module`` that owns a ``backbone`` (a network from
:func:`selma3d.models.build_model`, whose ``encoder`` ends up in ``encoder.pt``) plus whatever
heads (:mod:`selma3d.ssl.heads`), target/teacher networks (:mod:`selma3d.ssl.ema`) and buffers
its objective (:mod:`selma3d.ssl.losses`) needs. The training loop only calls
:meth:`SSLMethod.training_loss` on a batch from the patch sampler and
:meth:`SSLMethod.on_after_step` after each optimizer step (EMA updates). Methods are listed,
with their backbones, in :mod:`selma3d.ssl.registry`.
"""

from __future__ import annotations

import inspect
from typing import ClassVar, Sequence

import torch
from torch import nn

from .heads import pooled


class SSLMethod(nn.Module):
    """Base class of the SSL objectives.

    Subclasses implement :meth:`training_loss` (and :meth:`on_after_step` if they keep an EMA
    network); their ``__init__`` takes ``(backbone, patch_size, **options)`` (plus
    ``num_structures`` if they use the structure labels). ``backbone`` is the model whose
    ``encoder`` is saved.
    """

    #: backbone options the method fixes, over the user's (every method reads one channel)
    backbone_options: ClassVar[dict] = {"in_channels": 1}
    #: z-depth of the windows the patch sampler draws for this method: None = the whole patch;
    #: 1 for a 2D method (SimCLR) that learns from one slice: the sampler then reads one slice,
    #: and the foreground filter judges that slice, not a 3D block around it
    sample_depth: ClassVar[int | None] = None

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    # -- the interface -------------------------------------------------------------------
    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss to minimize, {name: scalar tensor} to log) for one batch of the sampler."""
        raise NotImplementedError

    def on_after_step(self, step: int, max_steps: int) -> None:
        """Called after every optimizer step (``step`` counts from 1); EMA updates go here."""

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(EMA target or teacher, the online network it follows) for each EMA network the method
        keeps (BYOL, DINO); none by default. Tests check the EMA rule on these pairs."""
        return []

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
    def sample_size(cls, patch_size: Sequence[int]) -> tuple[int, int, int]:
        """The (z, y, x) window the patch sampler draws for a run with ``patch_size``."""
        patch_size = tuple(int(p) for p in patch_size)
        if cls.sample_depth is None:
            return patch_size
        return (min(int(cls.sample_depth), patch_size[0]),) + patch_size[1:]

    @classmethod
    def backbone_model_options(cls, model_options: dict, patch_size: tuple[int, ...], options: dict) -> dict:
        """The user's backbone options completed for this method, which may depend on the crop and
        on the method's own ``options`` (hook; DINO sizes the ViT's position table for the crop, the
        shape-aware method gives the network one output channel per map of its ``scales``)."""
        return model_options

    @classmethod
    def create(cls, model: str, model_options: dict | None, patch_size: Sequence[int],
               num_structures: int = 1, **options) -> "SSLMethod":
        """The method around a fresh ``model`` backbone (called by
        :func:`selma3d.ssl.registry.build_method`, which checks the model is allowed)."""
        from ..models import build_model

        patch_size = tuple(patch_size)
        backbone_options = cls.backbone_model_options(dict(model_options or {}), patch_size, dict(options))
        backbone_options.update(cls.backbone_options)
        backbone = build_model(model, **backbone_options)
        if "num_structures" in inspect.signature(cls.__init__).parameters:
            return cls(backbone, patch_size, num_structures=num_structures, **options)
        return cls(backbone, patch_size, **options)


def embedding_spread(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the std across the batch of L2-normalized embeddings: about
    1/sqrt(E) for well-spread embeddings, 0 when they collapse to one point (SimSiam's monitor)."""
    z = nn.functional.normalize(z.detach().float(), dim=1)
    return z.std(dim=0).mean()
