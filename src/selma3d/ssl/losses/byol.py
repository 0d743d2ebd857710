"""BYOL's regression loss (Grill et al. 2020): normalized MSE between the online prediction of
one view and the stop-gradient target projection of the other, symmetrized over the views."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """‖p/‖p‖ − z/‖z‖‖² = 2 − 2·cos(p, z) per sample; ``z`` is treated as a constant
    (stop-gradient: no gradient reaches the target network)."""
    return 2.0 - 2.0 * F.cosine_similarity(p, z.detach(), dim=-1)


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of nmse(p1, t2) + nmse(p2, t1): predictions ``p`` of views 1 and 2,
    target projections ``t`` of views 1 and 2 (so between 0 and 8)."""
    return (normalized_mse(p1, t2) + normalized_mse(p2, t1)).mean()
