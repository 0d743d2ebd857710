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

Written by hand: no maintained library offers these heads and losses for 3D volumes.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import Selma3dError
from .base import SSLMethod, cosine_momentum, ema_update, embedding_spread, frozen_copy
from .views import random_blur, random_flip, random_intensity, random_noise, random_resized_crop


class DINOHead(nn.Module):
    """MLP → L2-normalized bottleneck → weight-normalized linear layer onto prototypes."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        self.prototypes = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck_dim, out_dim, bias=False))
        original0 = self.prototypes.parametrizations.weight.original0
        original0.data.fill_(1.0)
        original0.requires_grad_(False)  # the norm stays 1, as in DINO

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.mlp(x), dim=-1))


def _all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimator: −mean log distance to the nearest neighbour."""
    x = F.normalize(x, dim=-1)
    dist = torch.cdist(x, x)
    dist = dist + torch.eye(len(x), device=x.device) * 1e3
    return -torch.log(dist.min(dim=1).values + eps).mean()


class _Student(nn.Module):
    def __init__(self, encoder, dino_head, ibot_head):
        super().__init__()
        self.encoder = encoder
        self.dino_head = dino_head
        self.ibot_head = ibot_head


class DinoIBot(SSLMethod):
    name = "dino"
    default_model = "vit3d"
    allowed_models = ("vit3d",)

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
    def create(cls, model=None, model_options=None, patch_size=(32, 32, 32), num_structures=1, **options):
        model_options = dict(model_options or {})
        model_options.setdefault("img_size", list(patch_size))  # position table at the crop size
        return cls(cls.build_backbone(model, model_options, in_channels=1), patch_size, **options)

    def _view(self, x, size, scale):
        v = random_resized_crop(x, size, scale)
        return random_noise(random_blur(random_intensity(random_flip(v))))

    def _token_mask(self, batch: int, tokens: int, device) -> torch.Tensor:
        """Per sample a random ratio in ``mask_ratio`` of the tokens, chosen at random."""
        ratios = torch.empty(batch).uniform_(*self.mask_ratio)
        scores = torch.rand(batch, tokens, device=device)
        counts = (ratios * tokens).round().clamp(1, tokens - 1).long().to(device)
        ranks = scores.argsort(dim=1).argsort(dim=1)
        return ranks < counts[:, None]

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
            t_probs = [F.softmax((c - self.center) / self.teacher_temp, dim=-1) for c in t_cls]
            t_patch_probs = [F.softmax((p - self.patch_center) / self.teacher_temp, dim=-1) for p in t_patch]

        s_cls_tokens, s_cls, ibot_terms = [], [], []
        for i, g in enumerate(globals_):
            n_tokens = t_patch[i].shape[1]
            mask = self._token_mask(x.shape[0], n_tokens, x.device)
            cls, patches = self.student.encoder.forward_tokens(g, mask)
            s_cls_tokens.append(cls)
            s_cls.append(self.student.dino_head(cls))
            s_patch = F.log_softmax(self.student.ibot_head(patches[mask]) / self.student_temp, dim=-1)
            ibot_terms.append(-(t_patch_probs[i][mask] * s_patch).sum(dim=-1).mean())
        for crop in locals_:
            cls, _ = self.student.encoder.forward_tokens(crop)
            s_cls.append(self.student.dino_head(cls))

        dino_terms = []
        for i, t in enumerate(t_probs):
            for v, s in enumerate(s_cls):
                if v == i:
                    continue
                dino_terms.append(-(t * F.log_softmax(s / self.student_temp, dim=-1)).sum(dim=-1).mean())
        values = {"dino": torch.stack(dino_terms).mean(), "ibot": torch.stack(ibot_terms).mean(),
                  "koleo": torch.stack([koleo_loss(c) for c in s_cls_tokens]).mean()}
        loss = sum(self.weights[k] * v for k, v in values.items())

        with torch.no_grad():  # EMA centers of the teacher outputs (across DDP ranks)
            m = self.center_momentum
            batch_center = _all_reduce_mean(torch.cat(t_cls).mean(dim=0, keepdim=True))
            self.center.mul_(m).add_(batch_center, alpha=1 - m)
            patch_center = _all_reduce_mean(torch.cat(t_patch).mean(dim=(0, 1), keepdim=True))
            self.patch_center.mul_(m).add_(patch_center, alpha=1 - m)
            # teacher entropy: near log(out_dim) is uniform, near 0 one prototype (collapse)
            entropy = -(t_probs[0] * t_probs[0].clamp_min(1e-12).log()).sum(dim=-1).mean()

        logs = {f"loss_{k}": v.detach() for k, v in values.items()}
        logs.update(loss=loss.detach(), momentum=self.momentum.clone(), teacher_entropy=entropy,
                    embedding_std=embedding_spread(s_cls_tokens[0]))
        return loss, logs

    def on_after_step(self, step, max_steps):
        tau = cosine_momentum(step, max_steps, self.base_momentum)
        ema_update(self.teacher, self.student, tau)
        self.momentum.fill_(tau)

    @torch.no_grad()
    def embed(self, images):
        return self.backbone.encoder.forward_tokens(images)[0]
