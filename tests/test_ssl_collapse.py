"""Collapse detection that can fail (issue 15, item 2).

Each real objective is trained next to a deliberately broken variant known to collapse — BYOL
without its predictor, BYOL without the stop-gradient (Grill et al. 2020, Table 5; Chen & He
2021), DINO without centering (Caron et al. 2021, Fig. 7) — on the same tiny data, seed and
steps. The real one must keep its embeddings spread (the measures of
:mod:`selma3d.training.ssl_health`: spread and effective rank) by a clear margin over the broken
one. With training switched off (learning rate 0) both stay at their common starting point and
these tests fail, unlike bounds relative to the start (in eval mode the batch-norm statistics
gathered by the forward passes alone already change the projections' spread).

The embeddings measured are the ones each objective acts on, where collapse shows first: BYOL's
online projections and DINO's teacher distributions, on held-out patches.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selma3d.ssl import METHODS, build_method
from selma3d.ssl.base import embedding_spread
from selma3d.ssl.views import augment_3d
from selma3d.training.ssl_health import effective_rank, is_collapsed, spread

SIZE = (16, 16, 16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def blob_patches(batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(batch, 1, *SIZE)
    for i in range(batch):
        for _ in range(3):
            c = [int(torch.randint(2, s - 2, (1,), generator=g)) for s in SIZE]
            x[i, 0, c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = 1
    return x * 2 - 1 + 0.1 * torch.randn(x.shape, generator=g)


TRAIN, HELD = blob_patches(8, seed=1), blob_patches(16, seed=2)


def byol_without_stop_gradient(self, batch):
    """BYOL's loss with the online network as its own target, gradients through both sides."""
    x = batch["image"]
    v1, v2 = augment_3d(x, self.patch_size, self.crop_scale), augment_3d(x, self.patch_size, self.crop_scale)
    z1, z2 = self.online(v1), self.online(v2)
    p1, p2 = self.predictor(z1), self.predictor(z2)
    loss = (4 - 2 * F.cosine_similarity(p1, z2, dim=-1) - 2 * F.cosine_similarity(p2, z1, dim=-1)).mean()
    return loss, {"loss": loss.detach(), "embedding_std": embedding_spread(z1)}


def trained(name: str, variant: str | None = None, steps: int = 30, lr: float = 3e-3, **options):
    torch.manual_seed(0)
    method = build_method(name, patch_size=SIZE, **{**METHODS[name].tiny_options(), **options})
    if variant == "no predictor":
        method.predictor = nn.Identity()
    elif variant == "no stop-gradient":
        method.training_loss = byol_without_stop_gradient.__get__(method)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=lr)
    for step in range(1, steps + 1):
        loss, _ = method.training_loss({"image": TRAIN})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.on_after_step(step, 100)
    return method.eval()


def health(z: torch.Tensor) -> dict:
    return {"spread": spread(z), "rank": effective_rank(z), "collapsed": is_collapsed(effective_rank(z), spread(z),
                                                                                       z.shape[1])}


@torch.no_grad()
def byol_projections(method) -> dict:
    return health(method.online(HELD))


@torch.no_grad()
def dino_teacher(method) -> dict:
    cls, _ = method.teacher.encoder.forward_tokens(HELD)
    probs = F.softmax((method.teacher.dino_head(cls) - method.center) / method.teacher_temp, dim=-1)
    entropy = float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean())
    return health(probs) | {"entropy": entropy}


@pytest.fixture(scope="module")
def real_byol():
    return byol_projections(trained("byol"))


@pytest.mark.parametrize("variant", ["no predictor", "no stop-gradient"])
def test_byol_stays_spread_where_its_broken_variant_collapses(real_byol, variant):
    real, broken = real_byol, byol_projections(trained("byol", variant))
    assert real["spread"] > 1.8 * broken["spread"], (real, broken)
    assert real["rank"] > broken["rank"] + 1.0, (real, broken)


def test_dino_teacher_stays_spread_where_dino_without_centering_collapses():
    real = dino_teacher(trained("dino", steps=20, lr=1e-3))
    broken = dino_teacher(trained("dino", steps=20, lr=1e-3, center_momentum=1.0))  # center stays 0
    assert broken["collapsed"] and not real["collapsed"], (real, broken)
    assert real["rank"] > broken["rank"] + 0.1, (real, broken)
    assert real["spread"] > 5 * broken["spread"] + 1e-4, (real, broken)
    assert real["entropy"] > 0.5 > 0.01 > broken["entropy"], (real, broken)  # one prototype for every patch
