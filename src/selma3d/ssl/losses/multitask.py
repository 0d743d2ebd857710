"""The terms of Tang et al.'s multi-task SwinUNETR pretraining (CVPR 2022) plus the structure
head, and their weighted sum. The contrastive term is :func:`selma3d.ssl.losses.nt_xent`."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rotation_loss(logits: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the (B, 4) rotation logits against the number of 90° turns applied."""
    return F.cross_entropy(logits, quarter_turns)


def structure_loss(logits: torch.Tensor, structure: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the (B, S) structure logits against the source volume's structure index."""
    return F.cross_entropy(logits, structure)


def reconstruction_l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |recon − target| over every voxel; ``recon`` is resized (trilinear) to the target's
    grid first when the decoder's output grid differs."""
    if recon.shape[2:] != target.shape[2:]:
        recon = F.interpolate(recon, size=target.shape[2:], mode="trilinear", align_corners=False)
    return F.l1_loss(recon, target)


def weighted_sum(values: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Σ weights[name] · value over the terms present in ``values``."""
    return sum(weights[name] * value for name, value in values.items())
