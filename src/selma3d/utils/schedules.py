"""Learning-rate schedules (factors for ``torch.optim.lr_scheduler.LambdaLR``)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine decay to ``floor`` at ``total``.

    Pretraining decays to 0, finetuning to 0.01 (each passes its own floor).
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
