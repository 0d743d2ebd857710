"""Segmentation losses for one-channel logits: ``build_loss(name, **weights)``.

All of them take ``(logits, target, skeleton=None)`` with logits (B, 1, D, H, W) and a binary target
of the same shape (a (B, D, H, W) target is accepted too) and apply the sigmoid themselves; only the
``*+skelrec`` losses use ``skeleton``, the others ignore it. Dice is computed
over the whole batch (nnU-Net's "batch Dice"), which keeps it stable on LSM patches that contain
no foreground at all.

- ``dice``: MONAI ``DiceLoss``.
- ``dicece``: MONAI ``DiceCELoss`` (Dice + binary cross-entropy).
- ``dicefocal``: MONAI ``DiceFocalLoss`` (Dice + sigmoid focal loss, gamma 2).
- ``dice+boundary``: Dice + the boundary loss of Kervadec et al. (MIDL 2019), the predicted
  probability times the signed distance map of the ground truth (MONAI ``BoundaryLoss``'s map,
  computed by scipy's Euclidean distance transform). It is shifted by its per-sample minimum so that
  it is ≥ 0 and 0 for a perfect prediction; the shift is constant, so gradients are Kervadec's.
- ``dice+cldice``: Dice + MONAI ``SoftclDiceLoss`` (soft clDice of Shit et al., CVPR 2021, soft
  skeletons by iterated 3D min/max pooling).
- ``dice+skelrec``, ``dicece+skelrec``: Dice (+ CE) + skeleton recall (Kirchhoff et al., ECCV 2024):
  ``1 - sum(p * S) / sum(S)`` over the tubed skeleton ``S`` of the label, which the data loader
  computes (``finetune_transforms(..., skeleton=True)`` puts it in ``batch["skeleton"]``). Pass it
  as ``loss(logits, label, skeleton=batch["skeleton"])``; without it the skeleton is computed here
  from the target, on the CPU (correct but slower).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from monai.losses import BoundaryLoss, DiceCELoss, DiceFocalLoss, DiceLoss, SoftclDiceLoss

from selma3d.errors import Selma3dError

# Options each loss accepts, with defaults. Weights multiply the terms of the sum.
LOSS_OPTIONS: dict[str, dict[str, object]] = {
    "dice": {"batch_dice": True},
    "dicece": {"batch_dice": True, "dice_weight": 1.0, "ce_weight": 1.0},
    "dicefocal": {"batch_dice": True, "dice_weight": 1.0, "focal_weight": 1.0, "gamma": 2.0},
    # Kervadec et al. start the boundary weight small (0.01) and raise it during training; a
    # trainer may change ``loss.weights["boundary"]`` as it goes.
    "dice+boundary": {"batch_dice": True, "dice_weight": 1.0, "boundary_weight": 0.1},
    "dice+cldice": {"batch_dice": True, "dice_weight": 1.0, "cldice_weight": 0.5, "cldice_iters": 3},
    # Kirchhoff et al. add skeleton recall with weight 1 to nnU-Net's Dice + CE (more for thin structures).
    "dice+skelrec": {"batch_dice": True, "dice_weight": 1.0, "skelrec_weight": 1.0},
    "dicece+skelrec": {"batch_dice": True, "dice_weight": 1.0, "ce_weight": 1.0, "skelrec_weight": 1.0},
}
LOSS_NAMES: tuple[str, ...] = tuple(LOSS_OPTIONS)


class PositiveBoundaryLoss(nn.Module):
    """Kervadec boundary loss on sigmoid probabilities, shifted to be ≥ 0 (0 when perfect).

    Per sample: mean over voxels of ``p * phi - min(phi, 0)`` where ``phi`` is the signed
    distance to the ground-truth boundary (negative inside). Empty or full targets have no
    boundary and contribute 0. The distance maps are computed without gradients, on the CPU.
    """

    def __init__(self):
        super().__init__()
        self._monai = BoundaryLoss(sigmoid=True)  # supplies the signed distance map

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            phi = self._monai.compute_distance_map(target.detach().float().cpu()).to(logits.device)
        prob = torch.sigmoid(logits)
        per_voxel = prob * phi - phi.clamp(max=0)
        return per_voxel.flatten(1).mean(dim=1).mean()


def skeleton_recall_loss(logits: torch.Tensor, skeleton: torch.Tensor, smooth: float = 1.0,
                         batch: bool = True) -> torch.Tensor:
    """``1 - soft recall`` of the skeleton: ``1 - (sum(sigmoid(logits) * S) + smooth) / (sum(S) + smooth)``.

    Kirchhoff et al. (ECCV 2024). ``batch=True`` sums over the whole batch (like batch Dice);
    otherwise per sample, then the mean. A sample without skeleton adds nothing to the sums
    (per sample: its term is exactly 0), so an all-empty batch costs 0. ``smooth`` = 1 as in
    the authors' code. Logits and skeleton are (B, 1, D, H, W) (or (B, D, H, W) skeletons).
    """
    skeleton = _match_target(logits, skeleton)
    prob = torch.sigmoid(logits)
    dims = tuple(range(logits.ndim)) if batch else tuple(range(1, logits.ndim))
    recall = ((prob * skeleton).sum(dims) + smooth) / (skeleton.sum(dims) + smooth)
    return (1 - recall).mean()


class SkeletonRecallLoss(nn.Module):
    """``skeleton_recall_loss`` as a loss term; computes the skeleton from the target when none is given."""

    uses_skeleton = True

    def __init__(self, batch: bool = True, smooth: float = 1.0):
        super().__init__()
        self.batch, self.smooth = batch, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor, skeleton: torch.Tensor | None = None):
        if skeleton is None:  # fallback: the data loader should have done this (SkeletonizeLabeld)
            from .skeleton import tubed_skeleton

            masks = _match_target(logits, target).detach().cpu().numpy() > 0
            skeleton = torch.from_numpy(np.stack([[tubed_skeleton(c) for c in sample] for sample in masks]))
            skeleton = skeleton.to(device=logits.device, dtype=logits.dtype)
        return skeleton_recall_loss(logits, skeleton, smooth=self.smooth, batch=self.batch)


class WeightedSumLoss(nn.Module):
    """``sum_k weights[k] * terms[k](logits, target)``; ``last_terms`` keeps the parts for logging."""

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float]):
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)
        self.last_terms: dict[str, float] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor, skeleton: torch.Tensor | None = None) -> torch.Tensor:
        target = _match_target(logits, target)
        total = logits.new_zeros(())
        parts = {}
        for key, term in self.terms.items():
            if getattr(term, "uses_skeleton", False):
                value = term(logits, target, skeleton=skeleton)
            else:
                value = term(logits, target)
            parts[key] = float(value.detach())
            total = total + self.weights[key] * value
        self.last_terms = parts
        return total


class _SingleLoss(nn.Module):
    """A MONAI loss with the selma3d target handling."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor, skeleton: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss(logits, _match_target(logits, target))  # no skeleton term: ``skeleton`` is ignored


def _match_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    if target.shape != logits.shape:
        raise Selma3dError(f"loss: target (or skeleton) shape {tuple(target.shape)} does not match logits "
                           f"{tuple(logits.shape)}")
    return (target > 0).to(logits.dtype)


def build_loss(name: str, **options) -> nn.Module:
    """A loss module for one-channel logits; ``options`` are the weights listed in ``LOSS_OPTIONS``."""
    if name not in LOSS_OPTIONS:
        raise Selma3dError(f"unknown loss {name!r}; choose one of: {', '.join(LOSS_NAMES)}")
    allowed = LOSS_OPTIONS[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise Selma3dError(f"loss {name!r} has no option(s) {', '.join(unknown)}; its options are: {', '.join(allowed)}")
    opts = {**allowed, **options}
    for key, value in opts.items():
        if key == "batch_dice":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise Selma3dError(f"loss {name!r}: option {key} must be a number ≥ 0, got {value!r}")
    batch = bool(opts["batch_dice"])
    dice = DiceLoss(sigmoid=True, batch=batch)
    if name == "dice":
        return _SingleLoss(dice)
    if name == "dicece":
        return _SingleLoss(DiceCELoss(sigmoid=True, batch=batch, lambda_dice=float(opts["dice_weight"]),
                                      lambda_ce=float(opts["ce_weight"])))
    if name == "dicefocal":
        return _SingleLoss(DiceFocalLoss(sigmoid=True, batch=batch, gamma=float(opts["gamma"]),
                                         lambda_dice=float(opts["dice_weight"]),
                                         lambda_focal=float(opts["focal_weight"])))
    if name == "dice+boundary":
        return WeightedSumLoss({"dice": dice, "boundary": PositiveBoundaryLoss()},
                               {"dice": float(opts["dice_weight"]), "boundary": float(opts["boundary_weight"])})
    if name == "dice+skelrec":
        return WeightedSumLoss({"dice": dice, "skelrec": SkeletonRecallLoss(batch=batch)},
                               {"dice": float(opts["dice_weight"]), "skelrec": float(opts["skelrec_weight"])})
    if name == "dicece+skelrec":
        dicece = DiceCELoss(sigmoid=True, batch=batch, lambda_dice=float(opts["dice_weight"]),
                            lambda_ce=float(opts["ce_weight"]))
        return WeightedSumLoss({"dicece": dicece, "skelrec": SkeletonRecallLoss(batch=batch)},
                               {"dicece": 1.0, "skelrec": float(opts["skelrec_weight"])})
    iters = opts["cldice_iters"]
    if not isinstance(iters, int) or isinstance(iters, bool):
        raise Selma3dError(f"loss {name!r}: option cldice_iters must be an integer, got {iters!r}")
    return WeightedSumLoss({"dice": dice, "cldice": SoftclDiceLoss(iter_=iters, sigmoid=True)},
                           {"dice": float(opts["dice_weight"]), "cldice": float(opts["cldice_weight"])})
