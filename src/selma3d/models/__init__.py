"""Segmentation networks behind one registry.

Every model built by :func:`build_model` offers ``model(x)`` (logits at input resolution),
``model.encoder`` (what SSL trains and ``--freeze-encoder`` freezes), ``model.encode(x)``
(deepest encoder features), ``model.encoder_channels``, ``model.size_divisor`` and
``model.config`` (``build_model(**model.config)`` rebuilds it).

Encoder checkpoints are an artifact: :mod:`selma3d.artifacts.encoder`. Its functions stay
importable from here (looked up on first use, so this package does not import the artifacts).
"""

from selma3d.models._common import canonical
from selma3d.models.registry import MODEL_NAMES, build_model, model_options

_MOVED_TO_ARTIFACTS = ("save_encoder", "load_encoder_checkpoint", "load_encoder_into", "model_from_encoder_checkpoint")

__all__ = ["MODEL_NAMES", "build_model", "canonical", "model_options", *_MOVED_TO_ARTIFACTS]


def __getattr__(name: str):
    if name in _MOVED_TO_ARTIFACTS:
        from selma3d.artifacts import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module 'selma3d.models' has no attribute {name!r}")
