"""iBOT's masked-token loss (Zhou et al. 2022): at the patch tokens the student saw masked,
cross-entropy between the teacher's (centered, sharpened) distribution for the unmasked crop and
the student's; visible tokens do not contribute."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ibot_loss(teacher_probs: torch.Tensor, student_masked_logits: torch.Tensor, mask: torch.Tensor,
              student_temp: float) -> torch.Tensor:
    """Mean over masked tokens of −Σ_k t_k log softmax(s / student_temp)_k.

    ``teacher_probs`` (B, N, K) for every token, ``mask`` (B, N) boolean, and
    ``student_masked_logits`` (M, K) the student head's outputs at the M masked tokens, in
    ``mask``'s row-major order (``head(tokens[mask])``)."""
    log_student = F.log_softmax(student_masked_logits / student_temp, dim=-1)
    return -(teacher_probs[mask] * log_student).sum(dim=-1).mean()
