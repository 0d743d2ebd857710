"""EMA target/teacher networks (BYOL, DINO): a frozen copy of the online network that follows
it with a momentum rising from a base value to 1 on a cosine."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def cosine_momentum(step: int, max_steps: int, base: float) -> float:
    """EMA momentum rising from ``base`` to 1 on a cosine (BYOL, DINO):
    tau = 1 - (1 - base) * (cos(pi * step / max_steps) + 1) / 2."""
    progress = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def frozen_copy(module: nn.Module) -> nn.Module:
    """A gradient-free deep copy, the start of an EMA target/teacher network."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target ← momentum · target + (1 − momentum) · online, parameter-wise; buffers copied."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)
