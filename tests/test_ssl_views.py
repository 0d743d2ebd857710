"""``selma3d.ssl.views``: the augmented views and masks the SSL methods train on (issue 15: they
had no test). Each operation is checked against what it promises, sample by sample."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from selma3d.ssl.views import (augment_3d, histogram_equalize, random_block_mask, random_blur, random_contrast,
                               random_flip, random_gamma, random_intensity, random_noise, random_resized_crop,
                               random_rotation, random_token_mask)


@pytest.fixture(autouse=True)
def seeded():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def ramp(batch: int = 3, size=(8, 8, 8)) -> torch.Tensor:
    """Distinct, asymmetric samples: every voxel value is unique within a sample."""
    n = math.prod(size)
    return torch.stack([torch.arange(n, dtype=torch.float32).reshape(1, *size) / n + i for i in range(batch)])


# ----------------------------------------------------------------------------- geometry

def test_resized_crop_at_full_scale_is_the_identity():
    x = ramp()
    assert torch.allclose(random_resized_crop(x, x.shape[2:], scale=(1.0, 1.0)), x, atol=1e-6)


def test_resized_crop_takes_a_box_of_the_asked_volume_and_resizes_it():
    x = ramp(2)
    out = random_resized_crop(x, (6, 6, 6), scale=(1 / 8, 1 / 8))  # side 1/2: a 4³ box
    assert out.shape == (2, 1, 6, 6, 6)
    for sample, view in zip(x, out):
        candidates = [F.interpolate(sample[None, :, z:z + 4, y:y + 4, w:w + 4], size=(6, 6, 6), mode="trilinear",
                                    align_corners=False)[0]
                      for z, y, w in itertools.product(range(5), repeat=3)]
        assert any(torch.allclose(view, c, atol=1e-6) for c in candidates)
    # each sample draws its own box: over many draws the boxes differ
    views = random_resized_crop(ramp(1).expand(12, -1, -1, -1, -1), (4, 4, 4), scale=(0.1, 0.1))
    assert len({tuple(v.flatten()[:3].tolist()) for v in views}) > 1


def test_flip_is_one_of_the_eight_flips_per_sample_and_p_controls_it():
    x = ramp(16)
    out = random_flip(x)
    flips = [tuple(a for a, f in zip((2, 3, 4), bits) if f) for bits in itertools.product((0, 1), repeat=3)]
    chosen = []
    for sample, view in zip(x, out):
        match = [axes for axes in flips if torch.equal(sample[None].flip(axes) if axes else sample[None], view[None])]
        assert len(match) == 1
        chosen.append(match[0])
    assert len(set(chosen)) > 2  # independent per sample
    assert torch.equal(random_flip(x, p=0.0), x)
    assert torch.equal(random_flip(x, p=1.0), x.flip((2, 3, 4)))


def test_rotation_turns_each_sample_by_its_quarter_turns_in_the_yx_plane():
    x = ramp(12)
    rotated, k = random_rotation(x)
    assert k.dtype == torch.long and set(k.tolist()) <= {0, 1, 2, 3} and len(set(k.tolist())) > 1
    for sample, view, turns in zip(x, rotated, k):
        assert torch.equal(view, torch.rot90(sample, int(turns), dims=(2, 3)))
    # the label is the rotation: turning back by k restores the sample
    for sample, view, turns in zip(x, rotated, k):
        assert torch.equal(torch.rot90(view, -int(turns), dims=(2, 3)), sample)


# ----------------------------------------------------------------------------- intensity

def test_intensity_is_a_per_sample_affine_map_within_its_ranges():
    x = ramp(6)
    out = random_intensity(x, scale=0.2, shift=0.1)
    factors = []
    for sample, view in zip(x, out):
        a = (view.flatten()[-1] - view.flatten()[0]) / (sample.flatten()[-1] - sample.flatten()[0])
        b = view.flatten()[0] - a * sample.flatten()[0]
        assert torch.allclose(view, a * sample + b, atol=1e-5)
        assert 0.8 - 1e-4 <= float(a) <= 1.2 + 1e-4 and -0.1 - 1e-4 <= float(b) <= 0.1 + 1e-4
        factors.append(round(float(a), 4))
    assert len(set(factors)) == len(factors)


def test_noise_levels_and_probability():
    x = torch.zeros(64, 1, 6, 6, 6)
    assert torch.equal(random_noise(x, std=0.3, p=0.0), x)
    stds = random_noise(x, std=0.3, p=1.0).flatten(1).std(dim=1)
    assert float(stds.max()) < 0.3 * 1.3 and float(stds.min()) >= 0 and float(stds.std()) > 0.03  # U(0, 0.3)
    noisy = (random_noise(x, std=0.3, p=0.5).flatten(1).abs().sum(1) > 0).float().mean()
    assert 0.25 < float(noisy) < 0.75


def test_blur_smooths_keeps_constants_and_respects_p():
    x = torch.zeros(4, 1, 9, 9, 9)
    x[:, :, 4, 4, 4] = 1.0
    assert torch.equal(random_blur(x, p=0.0), x)
    blurred = random_blur(x, sigma=(1.0, 1.0), p=1.0)
    assert (blurred[:, 0, 4, 4, 4] < 0.5).all() and (blurred[:, 0, 4, 4, 5] > 0).all()
    assert torch.allclose(blurred.sum(dim=(2, 3, 4)), torch.ones(4, 1), atol=5e-3)  # mass kept (3σ truncation)
    const = torch.full((2, 1, 9, 9, 9), 0.3)
    assert torch.allclose(random_blur(const, p=1.0)[:, :, 3:6, 3:6, 3:6], const[:, :, 3:6, 3:6, 3:6], atol=1e-3)


def test_gamma_is_monotone_keeps_the_range_and_respects_p():
    x = ramp(4)
    assert torch.equal(random_gamma(x, p=0.0), x)
    out = random_gamma(x, gamma=(0.5, 0.5), p=1.0)
    for sample, view in zip(x, out):
        lo, hi = sample.min(), sample.max()
        assert torch.allclose(view, ((sample - lo) / (hi - lo)) ** 0.5 * (hi - lo) + lo, atol=1e-5)


def test_histogram_equalization_maps_ranks_to_minus_one_one():
    x = torch.tensor([[[10.0, -3.0, 7.0, 0.5, 100.0]]])
    assert torch.allclose(histogram_equalize(x), torch.tensor([[[0.5, -1.0, 0.0, -0.5, 1.0]]]))


def test_contrast_with_no_enhancement_is_the_identity_and_clahe_stays_in_range():
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    assert torch.equal(random_contrast(x, p_gamma=0.0, p_equalize=0.0, p_clahe=0.0), x)
    assert torch.allclose(random_contrast(x, p_gamma=0.0, p_equalize=1.0, p_clahe=0.0), histogram_equalize(x))
    clahe = random_contrast(x, p_gamma=0.0, p_equalize=0.0, p_clahe=1.0)
    assert clahe.shape == x.shape and float(clahe.min()) >= -1 and float(clahe.max()) <= 1 and not torch.equal(clahe, x)


# ----------------------------------------------------------------------------- the view

def test_augment_3d_views_are_resized_random_and_stay_with_their_patch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 1, 8, 8, 8, generator=g).repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    v1, v2 = augment_3d(x, (12, 12, 12), crop_scale=(0.8, 1.0)), augment_3d(x, (12, 12, 12), crop_scale=(0.8, 1.0))
    assert v1.shape == (6, 1, 12, 12, 12) and not torch.allclose(v1, v2)
    # views of the same patch resemble each other more than views of different patches
    # (up to flips: compare with the best of the 8 flips)
    flips = [tuple(a for a, f in zip((1, 2, 3), bits) if f) for bits in itertools.product((0, 1), repeat=3)]

    def similarity(a, b):
        return max(float(F.cosine_similarity((a.flip(f) if f else a).flatten() - a.mean(), b.flatten() - b.mean(), 0))
                   for f in flips)

    for i in range(6):
        own = similarity(v1[i], v2[i])
        assert all(own > similarity(v1[i], v2[j]) for j in range(6) if j != i)
    assert augment_3d(x).shape == x.shape  # default: the input size


# ----------------------------------------------------------------------------- masks

def test_block_mask_covers_the_ratio_in_whole_grid_blocks():
    mask = random_block_mask((5, 1, 16, 16, 16), ratio=0.25, block=4)
    assert mask.shape == (5, 1, 16, 16, 16) and mask.dtype == torch.bool
    cells = mask.view(5, 4, 4, 4, 4, 4, 4).permute(0, 1, 3, 5, 2, 4, 6).reshape(5, 64, 64)
    assert ((cells.all(-1)) | (~cells.any(-1))).all()  # every 4³ block is all masked or all visible
    assert (cells.all(-1).sum(1) == 16).all()  # round(0.25 · 64) blocks per sample
    assert len({tuple(m.flatten().tolist()) for m in mask}) == 5  # each sample its own blocks


def test_block_mask_edge_cases():
    mask = random_block_mask((2, 1, 10, 6, 6), ratio=0.5, block=(4, 4, 4))  # grid 3×2×2, cut at the edge
    assert mask.shape == (2, 1, 10, 6, 6)
    assert random_block_mask((3, 1, 8, 8, 8), ratio=1e-6, block=4).flatten(1).any(1).all()  # at least one block
    assert random_block_mask((3, 1, 8, 8, 8), ratio=5.0, block=4).all()  # at most every block
    flat = random_block_mask((2, 1, 8, 8), ratio=0.5, block=2)  # 2D as well
    assert flat.shape == (2, 1, 8, 8) and float(flat.float().mean()) == 0.5


def test_token_mask_counts_per_sample():
    mask = random_token_mask(200, 10, (0.1, 0.5))
    counts = mask.sum(1)
    assert mask.shape == (200, 10) and mask.dtype == torch.bool
    assert int(counts.min()) >= 1 and int(counts.max()) <= 5 and len(set(counts.tolist())) > 2
    assert (random_token_mask(4, 10, (0.0, 0.0)).sum(1) == 1).all()  # at least one token
    assert (random_token_mask(4, 10, (1.0, 1.0)).sum(1) == 9).all()  # at least one visible
    assert (random_token_mask(4, 10, (0.3, 0.3)).sum(1) == 3).all()
