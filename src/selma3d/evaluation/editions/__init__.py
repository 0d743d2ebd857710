"""The SELMA3D challenge's editions: each one's routing, metrics and official ``metrics.json``.

* :mod:`.e2024` — spot/tree by structure type; Dice, clDice, Betti number errors (default).
* :mod:`.e2025` — isolated/contiguous by name prefix; Dice, Betti matching error, clDice, HD95.
* :mod:`.e2026` — isolated/contiguous by name prefix; Dice, panoptic quality, clDice (panoptica).
"""

from __future__ import annotations

from ...errors import InputError
from .base import Edition, Pitfall

EDITION_NAMES = ("2024", "2025", "2026")
DEFAULT_EDITION = "2024"


def get_edition(name: str | int) -> Edition:
    """The :class:`Edition` named ``name`` ("2024", "2025" or "2026")."""
    name = str(name)
    if name == "2024":
        from .e2024 import EDITION
    elif name == "2025":
        from .e2025 import EDITION
    elif name == "2026":
        from .e2026 import EDITION
    else:
        raise InputError(f"unknown edition {name!r}; choose one of {', '.join(EDITION_NAMES)}")
    return EDITION


__all__ = ["DEFAULT_EDITION", "EDITION_NAMES", "Edition", "Pitfall", "get_edition"]
