"""Masked-inpainting reconstruction loss (SimMIM-style): the error counts on the masked voxels
only, so the network must infer hidden structure instead of copying the visible voxels."""

from __future__ import annotations

import torch


def masked_reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                               kind: str = "l1") -> tuple[torch.Tensor, torch.Tensor]:
    """(mean error over masked voxels, mean error over visible voxels), with the error
    ``|recon − target|`` (``"l1"``) or ``(recon − target)²`` (``"mse"``). Only the first is a
    training loss; the second is logged (a network that copies its input has it near 0)."""
    if kind == "l1":
        error = (recon - target).abs()
    elif kind == "mse":
        error = (recon - target) ** 2
    else:
        raise ValueError(f"masked_reconstruction_loss: kind must be 'l1' or 'mse', got {kind!r}")
    masked = mask.to(error.dtype)
    loss = (error * masked).sum() / masked.sum().clamp_min(1.0)
    visible = (error * (1 - masked)).sum() / (1 - masked).sum().clamp_min(1.0)
    return loss, visible
