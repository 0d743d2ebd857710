"""Small helpers shared by the network modules: option checking and JSON-friendly configs.

Every model stores ``config``, a plain dict (str/int/float/bool/None/lists) with its ``name`` and
every constructor option, so it survives JSON, YAML and ``torch.load(weights_only=True)`` and
``build_model(**model.config)`` rebuilds the same architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from selma3d.errors import Selma3dError


def canonical(value):
    """Tuples become lists, recursively, so configs compare equal after a JSON/YAML round trip."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def bad_option(model: str, message: str) -> Selma3dError:
    return Selma3dError(f"model {model!r}: {message}")


def positive_int(model: str, option: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise bad_option(model, f"option {option} must be a positive integer, got {value!r}")
    return int(value)


def int_sequence(model: str, option: str, value, length: int | None = None, min_length: int = 1) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise bad_option(model, f"option {option} must be a sequence of positive integers, got {value!r}")
    out = tuple(positive_int(model, option, v) for v in value)
    if length is not None and len(out) != length:
        raise bad_option(model, f"option {option} needs {length} values, got {len(out)}: {list(out)}")
    if len(out) < min_length:
        raise bad_option(model, f"option {option} needs at least {min_length} values, got {list(out)}")
    return out


def int_or_triple(model: str, option: str, value) -> tuple[int, int, int]:
    """An int ``n`` means ``(n, n, n)``; a sequence must have three entries (z, y, x)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (positive_int(model, option, value),) * 3
    return int_sequence(model, option, value, length=3)  # type: ignore[return-value]


def probability(model: str, option: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise bad_option(model, f"option {option} must be a number in [0, 1), got {value!r}")
    return float(value)


def norm_option(model: str, value, allowed=("instance", "batch", "group", "none")):
    """A MONAI norm spec from a plain name ('instance', 'batch', ...) or a (name, kwargs) pair."""
    name = value[0] if isinstance(value, (list, tuple)) else value
    if not isinstance(name, str) or name.lower() not in allowed:
        raise bad_option(model, f"option norm must be one of {', '.join(allowed)}, got {value!r}")
    if name.lower() == "none":
        return None
    if name.lower() == "instance" and not isinstance(value, (list, tuple)):
        return ("instance", {"affine": True})
    if name.lower() == "group" and not isinstance(value, (list, tuple)):
        return ("group", {"num_groups": 1})
    if isinstance(value, (list, tuple)):
        return (value[0], dict(value[1]) if len(value) > 1 else {})
    return value


class SkipDecoder(nn.Module):
    """A U-Net up path: ``ups`` (deepest first, each ``up(x, skip)``) then a 1×1 ``head``.

    Subclasses build ``self.ups`` and ``self.head``; the walk over the skips is written once here.
    """

    ups: nn.ModuleList
    head: nn.Module

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        for up, skip in zip(self.ups, reversed(skips[:-1])):
            x = up(x, skip)
        return self.head(x)
