"""Segmentation losses: finite, non-negative, ordered by prediction quality, differentiable."""

from __future__ import annotations

import pytest
import torch

from selma3d.errors import Selma3dError
from selma3d.training.losses import LOSS_NAMES, build_loss


def tube_target(batch: int = 2) -> torch.Tensor:
    """Tubes (a vessel-like structure) along x in a (B, 1, 12, 16, 24) volume."""
    t = torch.zeros(batch, 1, 12, 16, 24)
    t[0, 0, 5:8, 6:9, 2:22] = 1
    t[-1, 0, 2:5, 9:12, 4:20] = 1
    return t


def logits_for(mask: torch.Tensor, confidence: float = 8.0) -> torch.Tensor:
    return confidence * (2 * mask - 1)


def test_loss_names():
    assert LOSS_NAMES == ("dice", "dicece", "dicefocal", "dice+boundary", "dice+cldice", "dice+skelrec",
                          "dicece+skelrec")


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_is_finite_non_negative_ordered_and_differentiable(name):
    loss = build_loss(name)
    target = tube_target()
    torch.manual_seed(0)
    random = torch.randn_like(target, requires_grad=True)
    value = loss(random, target)
    assert value.ndim == 0 and torch.isfinite(value) and value >= 0
    value.backward()
    assert random.grad is not None and torch.isfinite(random.grad).all() and random.grad.abs().sum() > 0
    perfect = loss(logits_for(target), target)
    wrong = loss(logits_for(1 - target), target)
    assert 0 <= perfect < value.detach() < wrong
    assert perfect < 0.05
    # Targets without a channel axis and all-empty batches work too.
    assert torch.isclose(loss(logits_for(target), target[:, 0]), perfect)
    empty = torch.zeros_like(target)
    assert torch.isfinite(loss(torch.randn_like(target), empty))


def test_boundary_term_grows_with_distance_of_false_positives():
    boundary = build_loss("dice+boundary", dice_weight=0.0, boundary_weight=1.0)
    target = torch.zeros(1, 1, 8, 8, 32)
    target[..., 2:6, 2:6, 2:8] = 1
    near, far = target.clone(), target.clone()
    near[..., 2:6, 2:6, 9:11] = 1   # a false positive right next to the object
    far[..., 2:6, 2:6, 28:30] = 1   # the same false positive far away
    b_near, b_far = boundary(logits_for(near, 12), target), boundary(logits_for(far, 12), target)
    assert boundary(logits_for(target, 12), target) < 1e-3 < b_near < b_far
    assert set(boundary.last_terms) == {"dice", "boundary"}


def test_soft_cldice_punishes_broken_tubes():
    cldice = build_loss("dice+cldice", dice_weight=0.0, cldice_weight=1.0)
    target = tube_target(1)
    broken = target.clone()
    broken[..., 10:14] = 0  # cut the tube: few voxels lost, connectivity lost
    thicker = target.clone()
    thicker[0, 0, 4:9, 5:10, 2:22] = 1  # a fatter tube keeps the centreline
    perfect = cldice(logits_for(target), target)
    assert perfect < 0.02
    # Dice prefers the broken tube (fewer wrong voxels); clDice prefers the intact, fatter one,
    # whose centreline lies inside the target (so it scores like a perfect prediction).
    dice = build_loss("dice")
    assert dice(logits_for(broken), target) < dice(logits_for(thicker), target)
    assert cldice(logits_for(broken), target) > 0.1 > 0.02 > cldice(logits_for(thicker), target)


def test_weights_change_the_sum():
    target = tube_target()
    logits = torch.randn_like(target)
    one = build_loss("dice+cldice", dice_weight=1.0, cldice_weight=0.0)(logits, target)
    dice = build_loss("dice")(logits, target)
    torch.testing.assert_close(one, dice)
    doubled = build_loss("dicece", dice_weight=2.0, ce_weight=2.0)(logits, target)
    torch.testing.assert_close(doubled, 2 * build_loss("dicece")(logits, target))


def test_unknown_losses_and_options_are_refused():
    with pytest.raises(Selma3dError, match="dice, dicece, dicefocal, dice\\+boundary, dice\\+cldice, dice\\+skelrec"):
        build_loss("bce")
    with pytest.raises(Selma3dError, match="no option"):
        build_loss("dice", boundary_weight=1.0)
    with pytest.raises(Selma3dError, match="≥ 0"):
        build_loss("dice+boundary", boundary_weight=-1)
    with pytest.raises(Selma3dError, match="does not match"):
        build_loss("dice")(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5))


# --- skeleton recall (Kirchhoff et al., ECCV 2024) -------------------------------------------------

from selma3d.training.losses import skeleton_recall_loss  # noqa: E402
from selma3d.training.skeleton import tubed_skeleton  # noqa: E402


def skeleton_of(target: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    return torch.stack([torch.from_numpy(tubed_skeleton(t[0].numpy(), dilation))[None] for t in target]).float()


def test_skeleton_recall_is_zero_when_perfect_one_when_missed_and_differentiable():
    target = tube_target()
    skeleton = skeleton_of(target)
    assert 0 < skeleton.sum() < target.sum() and torch.all(skeleton <= target)
    assert skeleton_recall_loss(logits_for(target), skeleton) < 0.01
    missed = logits_for(target * (1 - skeleton))  # everything but the skeleton
    assert skeleton_recall_loss(missed, skeleton) > 0.97
    assert skeleton_recall_loss(missed, skeleton, smooth=1e-6) > 0.999
    logits = torch.zeros_like(target, requires_grad=True)
    value = skeleton_recall_loss(logits, skeleton)
    assert abs(float(value.detach()) - 0.5) < 0.01  # p = 0.5 everywhere recalls half the skeleton
    value.backward()
    assert torch.all(logits.grad[skeleton > 0] < 0) and torch.all(logits.grad[skeleton == 0] == 0)


def test_skeleton_recall_ignores_samples_without_skeleton():
    target = tube_target()
    skeleton = skeleton_of(target)
    empty_second = skeleton.clone()
    empty_second[1] = 0
    logits = logits_for(target)
    logits[1] = -8.0  # the second sample predicts nothing: no skeleton there, so no penalty
    assert skeleton_recall_loss(logits, empty_second) < 0.01
    assert skeleton_recall_loss(logits, empty_second, batch=False) < 0.01
    assert skeleton_recall_loss(logits, skeleton) > 0.3  # with its skeleton it counts
    assert skeleton_recall_loss(torch.randn_like(target), torch.zeros_like(target)) == 0


def test_dicece_skelrec_punishes_a_broken_tube_more_than_dicece():
    target = tube_target(1)
    broken = target.clone()
    broken[..., 10:13] = 0  # a gap in the tube: a few voxels, the connectivity
    skeleton = skeleton_of(target)
    plain = build_loss("dicece")
    with_skeleton = build_loss("dicece+skelrec")
    assert with_skeleton(logits_for(target), target, skeleton=skeleton) < 0.05
    broken_plain = plain(logits_for(broken), target)
    broken_skel = with_skeleton(logits_for(broken), target, skeleton=skeleton)
    assert broken_skel > broken_plain + 0.05
    assert with_skeleton.last_terms["skelrec"] > 0.05
    torch.testing.assert_close(broken_skel, broken_plain + with_skeleton.last_terms["skelrec"])
    # Without a skeleton from the loader, the loss computes the same one from the target.
    fallback = build_loss("dicece+skelrec")(logits_for(broken), target)
    default_skeleton = skeleton_of(target, dilation=2)
    torch.testing.assert_close(fallback, with_skeleton(logits_for(broken), target, skeleton=default_skeleton))
    # The weight scales the skeleton term; weight 0 is plain DiceCE.
    zero = build_loss("dicece+skelrec", skelrec_weight=0.0)(logits_for(broken), target, skeleton=skeleton)
    torch.testing.assert_close(zero, broken_plain)
    dice_only = build_loss("dice+skelrec", skelrec_weight=2.0)
    dice_only(logits_for(broken), target, skeleton=skeleton)
    assert set(dice_only.last_terms) == {"dice", "skelrec"}


def test_every_loss_accepts_a_skeleton_argument():
    target = tube_target()
    logits = torch.randn_like(target)
    for name in LOSS_NAMES:
        loss = build_loss(name)
        value = loss(logits, target, skeleton=skeleton_of(target))
        assert torch.isfinite(value)
        if "skelrec" not in name:
            torch.testing.assert_close(value, loss(logits, target))
    with pytest.raises(Selma3dError, match="skeleton"):
        build_loss("dicece+skelrec")(logits, target, skeleton=torch.zeros(2, 1, 4, 4, 4))


def test_skeleton_recall_batch_and_per_sample_by_hand():
    """Killed mutants (TESTING.md): sums over the batch vs per sample, and ``smooth`` passed on."""
    from selma3d.training.losses import SkeletonRecallLoss, skeleton_recall_loss

    skeleton = torch.zeros(2, 1, 1, 1, 4)
    skeleton[0, 0, 0, 0, :1] = 1  # 1 skeleton voxel
    skeleton[1, 0, 0, 0, :] = 1  # 4 skeleton voxels
    logits = torch.full_like(skeleton, -30.0)
    logits[1] = 30.0  # the first sample misses its skeleton, the second recalls all of it
    # batch: 1 − (0 + 4 + s) / (1 + 4 + s); per sample: mean of 1 − s/(1 + s) and 1 − (4 + s)/(4 + s) = 0
    assert float(skeleton_recall_loss(logits, skeleton, smooth=1.0)) == pytest.approx(1 - 5 / 6, abs=1e-6)
    assert float(skeleton_recall_loss(logits, skeleton, smooth=1.0, batch=False)) == pytest.approx(0.25, abs=1e-6)
    assert float(SkeletonRecallLoss()(logits, skeleton, skeleton)) == pytest.approx(1 - 5 / 6, abs=1e-6)
    term = SkeletonRecallLoss(batch=False, smooth=0.5)
    assert float(term(logits, skeleton, skeleton)) == pytest.approx((1 - 0.5 / 1.5) / 2, abs=1e-6)


def test_positive_boundary_loss_by_hand():
    """Mean over voxels of p·phi − min(phi, 0), phi the signed distance to the boundary (negative
    inside) computed here with scipy; 0 for a perfect prediction."""
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    from selma3d.training.losses import PositiveBoundaryLoss

    target = torch.zeros(1, 1, 6, 6, 6)
    target[0, 0, 1:4, 1:4, 1:4] = 1
    mask = target[0, 0].numpy() > 0
    # MONAI's convention: distance of outside voxels to the object minus (distance of inside
    # voxels to the background − 1) (signed distance to the boundary surface)
    phi = distance_transform_edt(~mask) - (distance_transform_edt(mask) - 1) * mask
    loss = PositiveBoundaryLoss()
    assert float(loss(30 * (2 * target - 1), target)) == pytest.approx(0.0, abs=1e-6)
    expected = float(np.mean(0.5 * phi - np.minimum(phi, 0)))
    assert float(loss(torch.zeros_like(target), target)) == pytest.approx(expected, rel=1e-5)
