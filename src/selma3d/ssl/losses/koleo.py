"""KoLeo regularizer (Sablayrolles et al. 2019, used by DINOv2): spreads a batch of embeddings
by penalizing small nearest-neighbour distances on the unit sphere."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimator: −mean over rows of log(distance of the
    L2-normalized row to its nearest other row + eps)."""
    x = F.normalize(x, dim=-1)
    dist = torch.cdist(x, x)
    dist = dist + torch.eye(len(x), device=x.device) * 1e3
    return -torch.log(dist.min(dim=1).values + eps).mean()
