"""DINO's self-distillation loss (Caron et al. 2021; DINOv2, Oquab et al. 2023).

The teacher's outputs are *centered* (an EMA of their batch mean is subtracted, so no prototype
dominates) and *sharpened* (a low teacher temperature, so the distribution does not become
uniform); the student's distribution (higher temperature) of every crop is trained towards the
teacher distribution of every *other* global crop by cross-entropy. Centering and sharpening
together are what keeps the teacher from collapsing. Written by hand: no maintained library
offers this loss without torchvision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def teacher_probabilities(logits: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax((logits − center) / temperature): centered and sharpened teacher targets."""
    return F.softmax((logits - center) / temperature, dim=-1)


def dino_cross_entropy(teacher_probs: list[torch.Tensor], student_logits: list[torch.Tensor],
                       student_temp: float) -> torch.Tensor:
    """Mean over pairs (teacher crop i, student crop v ≠ i) of the batch-mean cross-entropy
    −Σ_k t_k log softmax(s / student_temp)_k. The first ``len(teacher_probs)`` student crops are
    the same global crops the teacher saw (so pairs of a crop with itself are skipped)."""
    terms = []
    for i, t in enumerate(teacher_probs):
        for v, s in enumerate(student_logits):
            if v == i:
                continue
            terms.append(-(t * F.log_softmax(s / student_temp, dim=-1)).sum(dim=-1).mean())
    return torch.stack(terms).mean()


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float,
                  dims: tuple[int, ...] = (0,)) -> None:
    """center ← momentum · center + (1 − momentum) · mean of ``teacher_logits`` over ``dims``
    (and over DDP ranks), in place."""
    batch_center = _all_reduce_mean(teacher_logits.mean(dim=dims, keepdim=True))
    center.mul_(momentum).add_(batch_center, alpha=1 - momentum)


@torch.no_grad()
def teacher_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the teacher distributions: log(K) when uniform, 0 on one prototype."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean()
