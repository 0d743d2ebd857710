"""Finetuning and SSL augmentation pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selma3d.errors import Selma3dError
from selma3d.training.augment import finetune_transforms, make_views, ssl_view_transforms


def sample(shape=(1, 12, 40, 40), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1, 1, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[0, 5:7, 30:33, 30:33] = 1  # one small object in a corner
    return {"image": image, "label": label}


def test_finetune_crops_are_balanced_binary_and_reproducible():
    data = sample()
    pipeline = finetune_transforms((8, 16, 16), seed=3, num_samples=4, strength="strong")
    crops = [c for _ in range(10) for c in pipeline(data)]
    assert all(c["image"].shape == (1, 8, 16, 16) and c["label"].shape == (1, 8, 16, 16) for c in crops)
    assert all(c["image"].dtype == torch.float32 for c in crops)
    assert all(set(torch.unique(c["label"]).tolist()) <= {0.0, 1.0} for c in crops)
    # The object fills 18 of 19200 voxels; pos=neg=1 still puts it in about half of the crops.
    with_fg = sum(bool(c["label"].any()) for c in crops)
    assert 10 <= with_fg <= 35
    again = finetune_transforms((8, 16, 16), seed=3, num_samples=4, strength="strong")(data)
    first = pipeline.set_random_state(seed=3)(data)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, again))


def test_finetune_augmentation_moves_image_and_label_together():
    data = sample((1, 16, 16, 16))
    data["label"][0, 4:10, 3:8, 6:12] = 1
    data["image"] = np.where(data["label"] > 0, 1.0, -1.0).astype(np.float32)  # the image shows the label
    pipeline = finetune_transforms(16, seed=0, strength="strong")
    positions = set()
    for _ in range(12):
        (crop,) = pipeline(data)
        # Bilinear (image) and nearest (label) resampling may disagree only on boundary voxels.
        agree = (crop["label"] > 0) == (crop["image"] > 0)
        assert agree.float().mean() > 0.98
        positions.add(tuple(torch.nonzero(crop["label"][0]).float().mean(0).round().tolist()))
    assert len(positions) > 3  # the object really moves around


def test_small_inputs_are_padded_and_bad_arguments_refused():
    small = sample((1, 4, 10, 10))
    small["label"][0, 1:3, 2:5, 2:5] = 1
    (crop,) = finetune_transforms((8, 16, 16), seed=0)(small)
    assert crop["image"].shape == (1, 8, 16, 16)
    with pytest.raises(Selma3dError, match="patch size"):
        finetune_transforms((8, 16), seed=0)
    with pytest.raises(Selma3dError, match="strength"):
        finetune_transforms(8, strength="extreme")


def test_ssl_views_differ_per_sample_and_per_view():
    torch.manual_seed(0)
    batch = torch.randn(3, 1, 12, 20, 20)
    views = make_views(batch, ssl_view_transforms((8, 16, 16), seed=0), n_views=2)
    assert len(views) == 2 and all(v.shape == (3, 1, 8, 16, 16) for v in views)
    assert all(torch.isfinite(v).all() for v in views)
    assert not torch.allclose(views[0], views[1])
    same = make_views(batch[:1].expand(2, -1, -1, -1, -1), ssl_view_transforms(8, seed=1), n_views=1)[0]
    assert not torch.allclose(same[0], same[1])  # each sample gets its own draw
    with pytest.raises(Selma3dError):
        make_views(batch[0], ssl_view_transforms(8))
