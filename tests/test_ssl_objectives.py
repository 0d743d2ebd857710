"""Each SSL objective against its definition (issue 15, item 1).

Two levels: the loss functions of ``selma3d.ssl.losses`` on tiny hand-made tensors with values
worked out by hand (or by a direct computation written here independently), and each method's
``training_loss`` recomputed from the tensors its heads actually produced (recorded with forward
hooks), so the wiring (which view pairs with which target, which temperature, which center,
which mask) is checked too, not just the formula.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selma3d.ssl import METHODS, build_method
from selma3d.ssl.ema import cosine_momentum, ema_update, frozen_copy
from selma3d.ssl.losses import (byol_loss, dino_cross_entropy, ibot_loss, koleo_loss, masked_reconstruction_loss,
                                normalized_mse, nt_xent, reconstruction_l1, rotation_loss, structure_loss,
                                teacher_entropy, teacher_probabilities, update_center, weighted_sum)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def record(module: nn.Module, what: str = "output") -> list:
    """Outputs (or first inputs) of every call of ``module`` from now on."""
    calls: list = []

    def hook(_module, inputs, output):
        calls.append((inputs[0] if what == "input" else output).detach().clone())

    module.register_forward_hook(hook)
    return calls


def patches(batch: int, size=(16, 16, 16), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = -torch.ones(batch, 1, *size)
    for i in range(batch):
        for _ in range(3):
            c = [int(torch.randint(2, s - 2, (1,), generator=g)) for s in size]
            x[i, 0, c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = 1
    return x + 0.1 * torch.randn(x.shape, generator=g)


def tiny(name: str, **options):
    spec = METHODS[name]
    torch.manual_seed(0)
    return build_method(name, patch_size=spec.tiny_patch, num_structures=3, **{**spec.tiny_options(), **options})


def cross_entropy_by_hand(target_probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Batch mean of −Σ_k t_k log(exp(s_k) / Σ_j exp(s_j)), written out."""
    log_probs = logits - torch.log(torch.exp(logits).sum(dim=-1, keepdim=True))
    return -(target_probs * log_probs).sum(dim=-1).mean()


def nt_xent_by_hand(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: cosine similarities of all 2N embeddings over the temperature; for each,
    −log softmax over the 2N − 1 others at its positive (the other view); mean over the 2N."""
    n = len(z1)
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    sim = z @ z.T / temperature
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        others = [j for j in range(2 * n) if j != i]
        total += -(sim[i, positive] - torch.logsumexp(sim[i, others], dim=0))
    return total / (2 * n)


# ----------------------------------------------------------------------------- BYOL

def test_normalized_mse_is_the_squared_distance_of_unit_vectors():
    p, z = torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([[4.0, 3.0], [-2.0, 0.0]])
    # (0.6, 0.8) vs (0.8, 0.6): 0.04 + 0.04; opposite unit vectors: distance 2, squared 4
    assert torch.allclose(normalized_mse(p, z), torch.tensor([0.08, 4.0]), atol=1e-6)


def test_normalized_mse_stops_the_gradient_at_the_target():
    p = torch.tensor([[3.0, 4.0]], requires_grad=True)
    z = torch.tensor([[4.0, 3.0]], requires_grad=True)
    normalized_mse(p, z).sum().backward()
    assert z.grad is None  # no gradient reaches the target
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_byol_loss_pairs_each_prediction_with_the_other_views_target():
    p1, p2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    t1, t2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    # nmse(p1, t2) = 2 − 2/√2, nmse(p2, t1) = 2 − 0 (orthogonal)
    assert float(byol_loss(p1, p2, t1, t2)) == pytest.approx(4 - math.sqrt(2), rel=1e-6)


def test_byol_training_loss_is_the_definition_on_its_own_projections():
    method = tiny("byol")
    online_in, target_in = record(method.online, "input"), record(method.target, "input")
    predictions, targets = record(method.predictor), record(method.target)
    loss, logs = method.training_loss({"image": patches(4)})
    assert len(online_in) == len(target_in) == 2
    for a, b in zip(online_in, target_in):
        assert torch.equal(a, b)  # the target sees the same two views as the online network
    p1, p2 = predictions
    t1, t2 = targets
    cos = lambda a, b: (a / a.norm(dim=1, keepdim=True) * b / b.norm(dim=1, keepdim=True)).sum(1)  # noqa: E731
    expected = ((2 - 2 * cos(p1, t2)) + (2 - 2 * cos(p2, t1))).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in method.target.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.encoder.parameters())


# ----------------------------------------------------------------------------- EMA

def test_cosine_momentum_closed_form():
    base = 0.99
    assert cosine_momentum(0, 100, base) == pytest.approx(base)
    assert cosine_momentum(100, 100, base) == pytest.approx(1.0)
    assert cosine_momentum(50, 100, base) == pytest.approx((1 + base) / 2)
    # step 1/3 of the way: 1 − (1 − b)(cos(π/3) + 1)/2 = 1 − 0.75 (1 − b)
    assert cosine_momentum(20, 60, base) == pytest.approx(1 - 0.75 * (1 - base))
    assert cosine_momentum(250, 100, base) == pytest.approx(1.0)  # past the end: stays at 1
    assert cosine_momentum(1, 1, base) == pytest.approx(1.0)  # a one-step run ends at 1
    values = [cosine_momentum(s, 40, 0.9) for s in range(41)]
    assert all(b > a for a, b in zip(values, values[1:]))  # rises monotonically


def test_ema_update_closed_form_and_buffers_copied():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    target = frozen_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
        online[1].running_mean.fill_(5.0)
    old = [p.clone() for p in target.parameters()]
    ema_update(target, online, 0.75)
    for t, o, before in zip(target.parameters(), online.parameters(), old):
        assert torch.allclose(t, 0.75 * before + 0.25 * o)
    assert torch.equal(target[1].running_mean, torch.full((2,), 5.0))
    # frozen_copy is a copy: changing the online network later does not touch the target
    with torch.no_grad():
        online[0].weight.zero_()
    assert not torch.equal(target[0].weight, online[0].weight)


# ----------------------------------------------------------------------------- DINO / iBOT / KoLeo

def test_teacher_probabilities_are_centered_and_sharpened():
    logits, center = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    # (logits − center) / 0.5 = (2, 2, 6)
    e = [math.exp(2), math.exp(2), math.exp(6)]
    expected = torch.tensor([[v / sum(e) for v in e]])
    assert torch.allclose(teacher_probabilities(logits, center, 0.5), expected, atol=1e-6)
    # a center equal to the logits gives the uniform distribution whatever the temperature
    assert torch.allclose(teacher_probabilities(logits, logits, 0.04), torch.full((1, 3), 1 / 3))
    # a lower temperature sharpens: lower entropy, same argmax
    soft, sharp = teacher_probabilities(logits, 0 * center, 1.0), teacher_probabilities(logits, 0 * center, 0.1)
    assert float(teacher_entropy(sharp)) < float(teacher_entropy(soft))
    assert float(teacher_entropy(torch.full((2, 4), 0.25))) == pytest.approx(math.log(4))
    assert float(teacher_entropy(torch.tensor([[1.0, 0.0, 0.0]]))) == pytest.approx(0.0, abs=1e-9)


def test_dino_cross_entropy_skips_only_the_same_crop():
    g = torch.Generator().manual_seed(0)
    teacher = [F.softmax(torch.randn(3, 5, generator=g), -1) for _ in range(2)]
    student = [torch.randn(3, 5, generator=g) for _ in range(3)]  # 2 global + 1 local crop
    T = 0.2
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]
    expected = sum(cross_entropy_by_hand(teacher[i], student[v] / T) for i, v in pairs) / len(pairs)
    assert float(dino_cross_entropy(teacher, student, T)) == pytest.approx(float(expected), rel=1e-6)


def test_update_center_is_an_ema_of_the_batch_mean():
    center = torch.tensor([[1.0, 0.0]])
    logits = torch.tensor([[2.0, 4.0], [4.0, 0.0]])  # batch mean (3, 2)
    update_center(center, logits, 0.9)
    assert torch.allclose(center, torch.tensor([[0.9 * 1 + 0.1 * 3, 0.1 * 2]]))
    patch_center = torch.zeros(1, 1, 2)
    update_center(patch_center, torch.ones(2, 3, 2) * torch.tensor([1.0, 3.0]), 0.5, dims=(0, 1))
    assert torch.allclose(patch_center, torch.tensor([[[0.5, 1.5]]]))


def test_ibot_loss_counts_masked_tokens_only():
    g = torch.Generator().manual_seed(1)
    teacher = F.softmax(torch.randn(2, 4, 6, generator=g), -1)
    mask = torch.tensor([[True, False, False, True], [False, True, False, False]])
    student = torch.randn(int(mask.sum()), 6, generator=g)
    T = 0.1
    expected = cross_entropy_by_hand(teacher[mask], student / T)
    assert float(ibot_loss(teacher, student, mask, T)) == pytest.approx(float(expected), rel=1e-6)
    changed = teacher.clone()
    changed[~mask] = F.softmax(torch.randn(int((~mask).sum()), 6, generator=g), -1)
    assert float(ibot_loss(changed, student, mask, T)) == float(ibot_loss(teacher, student, mask, T))
    changed[mask] = F.softmax(torch.randn(int(mask.sum()), 6, generator=g), -1)
    assert float(ibot_loss(changed, student, mask, T)) != pytest.approx(float(ibot_loss(teacher, student, mask, T)))


def test_koleo_hand_computed():
    # unit vectors at 0°, 60°, 180° (the first given with length 2: KoLeo normalizes)
    x = torch.tensor([[2.0, 0.0], [0.5, math.sqrt(3) / 2], [-1.0, 0.0]])
    # nearest-neighbour distances: 1 (0°–60°), 1, √3 (180°–60°) → −(ln 1 + ln 1 + ln √3) / 3
    assert float(koleo_loss(x)) == pytest.approx(-math.log(3) / 6, abs=1e-6)
    # two identical rows: distance 0, kept finite by eps (−log 1e-8 for each of the two)
    twins = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(koleo_loss(twins)) == pytest.approx(-math.log(1e-8), rel=1e-4)


def test_dino_training_loss_is_the_definition_on_its_own_head_outputs():
    method = tiny("dino", weight_dino=1.0, weight_ibot=0.5, weight_koleo=0.3)
    out_dim = method.center.shape[1]
    g = torch.Generator().manual_seed(3)
    method.center.copy_(torch.randn(1, out_dim, generator=g))  # a non-zero center must matter
    method.patch_center.copy_(torch.randn(1, 1, out_dim, generator=g))
    center0, patch_center0 = method.center.clone(), method.patch_center.clone()
    t_cls, t_patch = record(method.teacher.dino_head), record(method.teacher.ibot_head)
    s_cls, s_patch = record(method.student.dino_head), record(method.student.ibot_head)
    masks, cls_tokens = [], []
    forward_tokens = method.student.encoder.forward_tokens

    def recording_forward_tokens(x, mask=None):
        cls, tokens = forward_tokens(x, mask)
        if mask is not None:
            masks.append(mask.clone())
            cls_tokens.append(cls.detach().clone())
        return cls, tokens

    method.student.encoder.forward_tokens = recording_forward_tokens
    loss, logs = method.training_loss({"image": patches(4)})

    tt, st, m = method.teacher_temp, method.student_temp, method.center_momentum
    assert (tt, st) == (0.04, 0.1)
    assert len(t_cls) == 2 and len(s_cls) == 2 + method.local_crops and len(masks) == 2
    probs = [F.softmax((t - center0) / tt, dim=-1) for t in t_cls]
    pairs = [(i, v) for i in range(2) for v in range(len(s_cls)) if v != i]
    dino = sum(cross_entropy_by_hand(probs[i], s_cls[v] / st) for i, v in pairs) / len(pairs)
    ibot = sum(cross_entropy_by_hand(F.softmax((t - patch_center0) / tt, -1)[mask], s / st)
               for t, s, mask in zip(t_patch, s_patch, masks)) / 2
    for mask, s in zip(masks, s_patch):
        assert len(s) == int(mask.sum())  # the iBOT head sees the masked tokens only
        assert (mask.sum(1) >= 1).all() and (mask.sum(1) < mask.shape[1]).all()
    koleo = 0.0
    for c in cls_tokens:
        u = c / c.norm(dim=1, keepdim=True)
        d = (u[:, None] - u[None]).norm(dim=-1) + torch.eye(len(u)) * 1e3
        koleo += -torch.log(d.min(dim=1).values + 1e-8).mean() / 2
    assert float(logs["loss_dino"]) == pytest.approx(float(dino), rel=1e-4)
    assert float(logs["loss_ibot"]) == pytest.approx(float(ibot), rel=1e-4)
    assert float(logs["loss_koleo"]) == pytest.approx(float(koleo), rel=1e-4)
    assert float(loss) == pytest.approx(float(dino + 0.5 * ibot + 0.3 * koleo), rel=1e-4)
    assert float(logs["teacher_entropy"]) == pytest.approx(float(teacher_entropy(probs[0])), rel=1e-4)
    # the centers moved by the EMA rule towards the teacher outputs of both global crops
    assert torch.allclose(method.center, m * center0 + (1 - m) * torch.cat(t_cls).mean(0, keepdim=True), atol=1e-6)
    expected_patch = m * patch_center0 + (1 - m) * torch.cat(t_patch).mean((0, 1), keepdim=True)
    assert torch.allclose(method.patch_center, expected_patch, atol=1e-6)


# ----------------------------------------------------------------------------- SimCLR / NT-Xent

def test_nt_xent_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    for temperature in (0.1, 0.5):
        assert float(nt_xent(z1, z2, temperature)) == pytest.approx(float(nt_xent_by_hand(z1, z2, temperature)),
                                                                    rel=1e-5)
    # identical views far apart from each other: each positive is the best match, loss is small
    far = torch.eye(4)
    assert float(nt_xent(far, far, 0.1)) < 1e-3 < float(nt_xent(far, far.roll(1, 0), 0.1))


def test_simclr_training_loss_is_nt_xent_of_its_projections():
    method = tiny("simclr", temperature=0.3)
    projections = record(method.projector)
    loss, _ = method.training_loss({"image": patches(4)})
    assert len(projections) == 2
    assert float(loss) == pytest.approx(float(nt_xent_by_hand(*projections, 0.3)), rel=1e-5)


# ----------------------------------------------------------------------------- inpainting

def test_masked_reconstruction_counts_masked_voxels_only():
    target = torch.zeros(1, 1, 2, 2, 2)
    mask = torch.zeros_like(target, dtype=torch.bool)
    mask[..., 0, :, :] = True  # 4 of 8 voxels hidden
    wrong_visible = torch.where(mask, target, target + 3.0)
    loss, visible = masked_reconstruction_loss(wrong_visible, target, mask, "l1")
    assert float(loss) == 0.0 and float(visible) == pytest.approx(3.0)
    wrong_masked = torch.where(mask, target + 0.5, target)
    assert float(masked_reconstruction_loss(wrong_masked, target, mask, "l1")[0]) == pytest.approx(0.5)
    assert float(masked_reconstruction_loss(wrong_masked, target, mask, "mse")[0]) == pytest.approx(0.25)
    assert float(masked_reconstruction_loss(2 * wrong_masked, target, mask)[0]) == pytest.approx(1.0)  # L1 by default
    with pytest.raises(ValueError, match="l1"):
        masked_reconstruction_loss(wrong_masked, target, mask, "L1")
    shifted = target + 2.0  # a non-zero target: the error is recon − target, not recon + target
    assert float(masked_reconstruction_loss(shifted + 0.5, shifted, mask, "mse")[0]) == pytest.approx(0.25)
    one = torch.zeros_like(mask)
    one[0, 0, 0, 0, 0] = True  # a single hidden voxel: its own error, not half of it
    assert float(masked_reconstruction_loss(wrong_masked, target, one)[0]) == pytest.approx(0.5)
    assert float(masked_reconstruction_loss(wrong_masked, target, ~one)[1]) == pytest.approx(0.5)
    assert float(masked_reconstruction_loss(wrong_masked, target, torch.zeros_like(mask))[0]) == 0.0  # no NaN


def test_inpainting_training_loss_hides_the_masked_voxels_and_scores_only_them(monkeypatch):
    import selma3d.ssl.inpainting as inpainting

    masks = []
    original = inpainting.random_block_mask

    def recording_mask(*args, **kwargs):
        masks.append(original(*args, **kwargs))
        return masks[-1]

    monkeypatch.setattr(inpainting, "random_block_mask", recording_mask)
    method = tiny("inpainting", mask_value=-0.7)
    seen, recon = record(method.backbone, "input"), record(method.backbone)
    x = patches(2)
    loss, logs = method.training_loss({"image": x})
    (mask,) = masks
    assert torch.equal(seen[0], torch.where(mask, torch.tensor(-0.7), x))  # hidden voxels carry no signal
    error = (recon[0] - x).abs()
    assert float(loss) == pytest.approx(float(error[mask].mean()), rel=1e-5)
    assert float(logs["visible_error"]) == pytest.approx(float(error[~mask].mean()), rel=1e-5)
    assert float(logs["masked_fraction"]) == pytest.approx(float(mask.float().mean()))


# ----------------------------------------------------------------------------- multi-task

def test_multitask_terms_and_weighted_sum():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    k = torch.tensor([0, 3])
    expected = -(math.log(math.exp(2) / (math.exp(2) + 3)) + math.log(math.e / (math.e + 3))) / 2
    assert float(rotation_loss(logits, k)) == pytest.approx(expected, rel=1e-6)
    assert float(structure_loss(logits[:, :3], torch.tensor([0, 2]))) == pytest.approx(
        -(math.log(math.exp(2) / (math.exp(2) + 2)) + math.log(1 / 3)) / 2, rel=1e-6)
    recon, target = torch.ones(1, 1, 2, 2, 2), torch.zeros(1, 1, 4, 4, 4)
    assert float(reconstruction_l1(recon, target)) == pytest.approx(1.0)  # resized to the target grid
    assert float(weighted_sum({"a": torch.tensor(2.0), "b": torch.tensor(3.0)}, {"a": 0.5, "b": 2.0, "c": 9.0})) == 7.0


def test_multitask_heads_are_trained_towards_their_targets(monkeypatch):
    import selma3d.ssl.multitask as multitask

    rotations = []
    original = multitask.random_rotation

    def recording_rotation(x):
        rotations.append(original(x))
        return rotations[-1]

    monkeypatch.setattr(multitask, "random_rotation", recording_rotation)
    weights = dict(weight_rotation=0.7, weight_contrast=1.3, weight_inpainting=0.4, weight_structure=2.0)
    method = tiny("multitask", model="unet3d", model_options={"features": [4, 8, 16]}, temperature=0.3, **weights)
    rot_logits, contrast, structure_logits, recon = (record(method.rotation_head), record(method.contrast_head),
                                                     record(method.structure_head), record(method.decoder))
    structure = torch.tensor([2, 0, 1])
    loss, logs = method.training_loss({"image": patches(3), "structure": structure})
    assert len(rotations) == 2
    rotation = sum(F.nll_loss(F.log_softmax(r, -1), k) for r, (_, k) in zip(rot_logits, rotations)) / 2
    structure_term = sum(F.nll_loss(F.log_softmax(s, -1), structure) for s in structure_logits) / 2
    inpaint = sum((F.interpolate(r, size=v.shape[2:], mode="trilinear") if r.shape != v.shape else r).sub(v).abs().mean()
                  for r, (v, _) in zip(recon, rotations)) / 2
    contrast_term = nt_xent_by_hand(*contrast, 0.3)
    assert float(logs["loss_rotation"]) == pytest.approx(float(rotation), rel=1e-5)
    assert float(logs["loss_structure"]) == pytest.approx(float(structure_term), rel=1e-5)
    assert float(logs["loss_inpainting"]) == pytest.approx(float(inpaint), rel=1e-5)
    assert float(logs["loss_contrast"]) == pytest.approx(float(contrast_term), rel=1e-5)
    total = 0.7 * rotation + 1.3 * contrast_term + 0.4 * inpaint + 2.0 * structure_term
    assert float(loss) == pytest.approx(float(total), rel=1e-5)
