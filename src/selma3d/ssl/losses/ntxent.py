"""NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR (Chen et al. 2020), via
MONAI's ``ContrastiveLoss``: for each of the 2N embeddings, −log of the softmax (over the 2N − 1
others, cosine similarities / temperature) of its positive, the other view of the same sample;
averaged over the 2N."""

from __future__ import annotations

import torch


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent of the (N, E) embeddings of two views; row i of ``z1`` and of ``z2`` are positives."""
    from monai.losses import ContrastiveLoss

    return ContrastiveLoss(temperature=temperature)(z1, z2)
