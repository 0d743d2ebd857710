"""Segmentation networks behind one registry.

Every model built by :func:`build_model` offers ``model(x)`` (logits at input resolution),
``model.encoder`` (what SSL trains and ``--freeze-encoder`` freezes), ``model.encode(x)``
(deepest encoder features), ``model.encoder_channels``, ``model.size_divisor`` and
``model.config`` (``build_model(**model.config)`` rebuilds it).

Encoder checkpoints are an artifact: :mod:`selma3d.artifacts.encoder` (which imports this
package, never the other way round).
"""

from selma3d.models._common import canonical
from selma3d.models.registry import MODEL_NAMES, build_model, model_options

__all__ = ["MODEL_NAMES", "build_model", "canonical", "model_options"]
