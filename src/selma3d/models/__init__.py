"""Segmentation networks behind one registry, and encoder checkpoints.

Every model built by :func:`build_model` offers ``model(x)`` (logits at input resolution),
``model.encoder`` (what SSL trains and ``--freeze-encoder`` freezes), ``model.encode(x)``
(deepest encoder features), ``model.encoder_channels``, ``model.size_divisor`` and
``model.config`` (``build_model(**model.config)`` rebuilds it).
"""

from selma3d.models.checkpoint import (
    load_encoder_checkpoint,
    load_encoder_into,
    model_from_encoder_checkpoint,
    save_encoder,
)
from selma3d.models.registry import MODEL_NAMES, build_model, model_options

__all__ = [
    "MODEL_NAMES",
    "build_model",
    "model_options",
    "save_encoder",
    "load_encoder_checkpoint",
    "load_encoder_into",
    "model_from_encoder_checkpoint",
]
