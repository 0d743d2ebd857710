"""selma3d.evaluation: SELMA3D's metrics, exactly and fast.

* :mod:`.metrics` — Dice, clDice, Betti numbers and errors on (z, y, x) arrays.
* :mod:`.challenge` — score a folder of NIfTI predictions (``selma3d evaluate``).
* :mod:`.editions` — each challenge edition's routing, metrics and official metrics.json.
* :mod:`.panoptic` — panoptic quality and object-level scores through panoptica.
* :mod:`.betti_matching` — the Betti matching error through Betti-Matching-3D (2025).
* :mod:`.leaderboard` — rank several submissions (``selma3d leaderboard``).
"""
