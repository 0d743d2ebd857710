"""selma3d.evaluation: SELMA3D's metrics, exactly and fast.

* :mod:`.metrics` — Dice, clDice, Betti numbers and errors on (z, y, x) arrays.
* :mod:`.challenge` — score a folder of NIfTI predictions (``selma3d evaluate``).
* :mod:`.leaderboard` — rank several submissions (``selma3d leaderboard``).
"""
