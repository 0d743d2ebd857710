"""What finetuning takes from a ``--pretrained`` encoder: its network and its adaptation plan
(normalization, xy downsampling; :class:`~selma3d.artifacts.encoder.AdaptationPlan`).

``encoder.pt`` is read and validated once (:func:`load_pretrained`); the network, the
normalization and the xy pooling all come from that one copy.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ...errors import InputError
from ..finetune_data import FinetuneDataModule
from .config import DEFAULT_MODEL, FinetuneConfig


def load_pretrained(config: FinetuneConfig) -> dict | None:
    """The ``--pretrained`` encoder checkpoint, read and validated (None without ``--pretrained``)."""
    from ...artifacts.encoder import load_encoder_checkpoint

    if not config.pretrained:
        return None
    path = Path(config.pretrained)
    if not path.is_file():
        raise InputError(f"--pretrained {path}: no such encoder checkpoint")
    return load_encoder_checkpoint(path)


def build_network(config: FinetuneConfig, encoder: dict | None = None) -> torch.nn.Module:
    """The model from ``--pretrained`` (architecture named by the checkpoint; ``encoder`` is that
    checkpoint when already loaded) or ``build_model``."""
    from ...artifacts.encoder import model_from_encoder_checkpoint
    from ...models import build_model

    if config.pretrained:
        encoder = encoder if encoder is not None else load_pretrained(config)
        saved = encoder["model"]
        if config.model and config.model != saved.get("name"):
            raise InputError(f"--model {config.model} does not match the encoder checkpoint {Path(config.pretrained)}, "
                             f"which holds a {saved.get('name')} encoder")
        # Decoder options may change; the checkpoint's encoder options may not (Selma3dError).
        return model_from_encoder_checkpoint(encoder, out_channels=1, **config.model_options)
    return build_model(config.model or DEFAULT_MODEL, in_channels=1, out_channels=1, **config.model_options)


def adaptation_plan(config: FinetuneConfig, encoder: dict | None = None):
    """The ``--pretrained`` encoder's :class:`~selma3d.artifacts.encoder.AdaptationPlan` (or None);
    ``encoder`` is its checkpoint when already loaded."""
    from ...artifacts.encoder import AdaptationPlan

    if not config.pretrained:
        return None
    return AdaptationPlan.from_checkpoint(encoder if encoder is not None else load_pretrained(config))


def normalization_for(config: FinetuneConfig, plan=None):
    """The pretrained encoder's normalization (its adaptation ``plan``, read from ``--pretrained``
    when not given), else the default one: an encoder only transfers if it sees intensities
    scaled as in pretraining."""
    from ...data.normalize import DEFAULT_NORMALIZATION

    plan = plan if plan is not None else adaptation_plan(config)
    return plan.normalization_object() if plan else DEFAULT_NORMALIZATION


def downsample_for(config: FinetuneConfig, plan=None, echo=print) -> int:
    """The xy pooling to finetune (and predict) at: the encoder's plan (read from ``--pretrained``
    when not given) unless ``--downsample-xy`` says otherwise, which is allowed (e.g. to finetune
    finer than pretraining) and said in one line."""
    plan = plan if plan is not None else adaptation_plan(config)
    planned = plan.downsample_xy if plan else 1
    if config.downsample_xy is None:
        return planned
    given = int(config.downsample_xy)
    if plan is not None and given != planned:
        echo(f"note: finetuning at --downsample-xy {given}, while the encoder {config.pretrained} was "
             f"pretrained at {planned}: its features were learned at {planned}x coarser xy sampling, so "
             f"transfer may suffer (omit --downsample-xy to follow the encoder's plan)", flush=True)
    return given


def pool_cases(data: FinetuneDataModule, factor: int) -> None:
    """Average-pool the images (majority-pool the labels) of the loaded cases by ``factor`` in xy."""
    if factor == 1:
        return
    from ...data.resample import pool_image_xy, pool_mask_xy

    for cases in (data.train_cases, data.val_cases):
        cases[:] = [replace(c, image=pool_image_xy(c.image, factor), label=pool_mask_xy(c.label, factor))
                    for c in cases]
