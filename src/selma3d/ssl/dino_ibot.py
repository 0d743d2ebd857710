"""DINOv2-style self-distillation (DINO + iBOT + KoLeo) on the 3D ViT.

Student and teacher share the ViT encoder architecture; the teacher is an EMA of the student
(momentum rising from ``base_momentum`` to 1 on a cosine). Each patch gives 2 global crops and
``local_crops`` smaller local crops (the ViT interpolates its position embeddings to any grid).

- DINO: a head (MLP → L2-normalized bottleneck → weight-normalized prototypes) on the CLS
  token; the teacher's global-crop outputs are centered (EMA center) and sharpened (teacher
  temperature < student temperature); cross-entropy between the teacher distribution of one
  global crop and the student distribution of every other crop.
- iBOT: a random fraction of the student's global-crop patch tokens is replaced by the mask
  token (``encoder.forward_tokens(x, token_mask)``); a patch head's outputs at the masked
  positions are trained towards the teacher's outputs for the unmasked crop (own center).
- KoLeo (DINOv2): spreads the student's CLS embeddings within a batch.

The heads are in :mod:`selma3d.ssl.heads`, the three losses in :mod:`selma3d.ssl.losses`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import Selma3dError
from .base import SSLMethod, embedding_spread
from .ema import cosine_momentum, ema_update, frozen_copy
from .heads import DINOHead
from .losses import (dino_cross_entropy, ibot_loss, koleo_loss, teacher_entropy, teacher_probabilities,
                     update_center, weighted_sum)
from .views import random_blur, random_flip, random_intensity, random_noise, random_resized_crop, random_token_mask


class _Student(nn.Module):
    def __init__(self, encoder, dino_head, ibot_head):
        super().__init__()
        self.encoder = encoder
        self.dino_head = dino_head
        self.ibot_head = ibot_head


class DinoIBot(SSLMethod):
    def __init__(self, backbone: nn.Module, patch_size: Sequence[int], out_dim: int = 4096,
                 patch_out_dim: int | None = None, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 local_crops: int = 4, local_size: Sequence[int] | None = None,
                 global_scale: tuple[float, float] = (0.4, 1.0),
                 local_scale: tuple[float, float] = (0.1, 0.4),
                 student_temp: float = 0.1, teacher_temp: float = 0.04,
                 center_momentum: float = 0.9, base_momentum: float = 0.992,
                 mask_ratio: tuple[float, float] = (0.1, 0.5), weight_dino: float = 1.0,
                 weight_ibot: float = 1.0, weight_koleo: float = 0.1):
        super().__init__(backbone)
        if not hasattr(backbone.encoder, "forward_tokens"):
            raise Selma3dError("dino needs a ViT backbone whose encoder has forward_tokens (vit3d)")
        self.encoder_only()
        self.patch_size = tuple(patch_size)
        token = tuple(backbone.encoder.patch_size)
        if any(p % t for p, t in zip(self.patch_size, token)):
            raise Selma3dError(f"dino: patch size {self.patch_size} must be a multiple of the ViT "
                               f"token size {token}")
        if local_size is None:  # half the global crop, rounded to whole tokens
            local_size = [max(t, (p // 2) // t * t) for p, t in zip(self.patch_size, token)]
        self.local_size = tuple(int(s) for s in local_size)
        if any(s % t for s, t in zip(self.local_size, token)):
            raise Selma3dError(f"dino: local crop size {self.local_size} must be a multiple of {token}")
        e = backbone.encoder_channels
        self.student = _Student(backbone.encoder, DINOHead(e, out_dim, hidden_dim, bottleneck_dim),
                                DINOHead(e, patch_out_dim or out_dim, hidden_dim, bottleneck_dim))
        self.teacher = frozen_copy(self.student)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("patch_center", torch.zeros(1, 1, patch_out_dim or out_dim))
        self.register_buffer("momentum", torch.tensor(float(base_momentum)))
        self.local_crops = int(local_crops)
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
        self.student_temp, self.teacher_temp = float(student_temp), float(teacher_temp)
        self.center_momentum, self.base_momentum = float(center_momentum), float(base_momentum)
        self.mask_ratio = tuple(mask_ratio)
        self.weights = {"dino": weight_dino, "ibot": weight_ibot, "koleo": weight_koleo}

    @classmethod
    def backbone_model_options(cls, model_options, patch_size, options):
        model_options.setdefault("img_size", list(patch_size))  # position table at the crop size
        return model_options

    def _view(self, x, size, scale):
        v = random_resized_crop(x, size, scale)
        return random_noise(random_blur(random_intensity(random_flip(v))))

    def training_loss(self, batch):
        x = batch["image"]
        globals_ = [self._view(x, self.patch_size, self.global_scale) for _ in range(2)]
        locals_ = [self._view(x, self.local_size, self.local_scale) for _ in range(self.local_crops)]

        with torch.no_grad():
            t_cls, t_patch = [], []
            for g in globals_:
                cls, patches = self.teacher.encoder.forward_tokens(g)
                t_cls.append(self.teacher.dino_head(cls))
                t_patch.append(self.teacher.ibot_head(patches))
            t_probs = [teacher_probabilities(c, self.center, self.teacher_temp) for c in t_cls]
            t_patch_probs = [teacher_probabilities(p, self.patch_center, self.teacher_temp) for p in t_patch]

        s_cls_tokens, s_cls, ibot_terms = [], [], []
        for i, g in enumerate(globals_):
            mask = random_token_mask(x.shape[0], t_patch[i].shape[1], self.mask_ratio, x.device)
            cls, patches = self.student.encoder.forward_tokens(g, mask)
            s_cls_tokens.append(cls)
            s_cls.append(self.student.dino_head(cls))
            ibot_terms.append(ibot_loss(t_patch_probs[i], self.student.ibot_head(patches[mask]), mask,
                                        self.student_temp))
        for crop in locals_:
            cls, _ = self.student.encoder.forward_tokens(crop)
            s_cls.append(self.student.dino_head(cls))

        values = {"dino": dino_cross_entropy(t_probs, s_cls, self.student_temp),
                  "ibot": torch.stack(ibot_terms).mean(),
                  "koleo": torch.stack([koleo_loss(c) for c in s_cls_tokens]).mean()}
        loss = weighted_sum(values, self.weights)

        # EMA centers of the teacher outputs (across DDP ranks)
        update_center(self.center, torch.cat(t_cls), self.center_momentum, dims=(0,))
        update_center(self.patch_center, torch.cat(t_patch), self.center_momentum, dims=(0, 1))

        logs = {f"loss_{k}": v.detach() for k, v in values.items()}
        # teacher entropy: near log(out_dim) is uniform, near 0 one prototype (collapse)
        logs.update(loss=loss.detach(), momentum=self.momentum.clone(), teacher_entropy=teacher_entropy(t_probs[0]),
                    embedding_std=embedding_spread(s_cls_tokens[0]))
        return loss, logs

    def ema_pairs(self):
        return [(self.teacher, self.student)]

    def on_after_step(self, step, max_steps):
        tau = cosine_momentum(step, max_steps, self.base_momentum)
        ema_update(self.teacher, self.student, tau)
        self.momentum.fill_(tau)

    @torch.no_grad()
    def embed(self, images):
        return self.backbone.encoder.forward_tokens(images)[0]
