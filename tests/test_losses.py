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
    assert LOSS_NAMES == ("dice", "dicece", "dicefocal", "dice+boundary", "dice+cldice")


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
    with pytest.raises(Selma3dError, match="dice, dicece, dicefocal, dice\\+boundary, dice\\+cldice"):
        build_loss("bce")
    with pytest.raises(Selma3dError, match="no option"):
        build_loss("dice", boundary_weight=1.0)
    with pytest.raises(Selma3dError, match="≥ 0"):
        build_loss("dice+boundary", boundary_weight=-1)
    with pytest.raises(Selma3dError, match="does not match"):
        build_loss("dice")(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5))
