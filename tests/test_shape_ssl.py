"""``--method shape``: each pretext task against its definition, and the method end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selma3d.ssl import build_method
from selma3d.ssl.losses import foreground_weights, shape_regression_loss, weighted_masked_l1
from selma3d.ssl.shape_maps import shape_maps


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _ball_and_tube(size: int = 20) -> torch.Tensor:
    z, y, x = np.mgrid[:size, :size, :size]
    c = size // 2
    ball = ((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2 <= 9).astype(np.float32)
    tube = (((y - c) ** 2 + (x - 4) ** 2) <= 2).astype(np.float32)
    return torch.from_numpy(np.stack([ball * 2 - 1, tube * 2 - 1])[:, None])


def test_shape_regression_is_mse_after_dividing_each_target_channel_by_its_rms():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 3, 4, 4, 4, generator=g) * torch.tensor([1.0, 10.0, 100.0]).view(1, 3, 1, 1, 1)
    predicted = torch.randn(2, 3, 4, 4, 4, generator=g)
    loss, targets = shape_regression_loss(predicted, maps)
    rms = targets.pow(2).mean(dim=(0, 2, 3, 4))
    torch.testing.assert_close(rms, torch.ones(3))
    manual = F.mse_loss(predicted, maps / maps.pow(2).mean(dim=(0, 2, 3, 4), keepdim=True).sqrt())
    torch.testing.assert_close(loss, manual)


def test_foreground_weights_rise_on_blobs_and_tubes_only():
    maps = shape_maps(_ball_and_tube(), scales=(1.0,))
    _, targets = shape_regression_loss(torch.zeros_like(maps), maps)
    weights = foreground_weights(targets, scales=1, strength=4.0)
    assert weights.shape == (2, 1, 20, 20, 20)
    assert float(weights[0, 0, 10, 10, 10]) > 3.0  # ball centre
    assert float(weights[1, 0, 10, 10, 4]) > 3.0  # on the tube's axis
    assert float(weights[0, 0, 1, 1, 1]) == pytest.approx(1.0)  # empty background
    # plate responses do not count
    plate_only = torch.zeros(1, 3, 2, 2, 2)
    plate_only[:, 2] = 5.0
    assert torch.equal(foreground_weights(plate_only, 1, 4.0), torch.ones(1, 1, 2, 2, 2))


def test_inpainting_term_sees_masked_voxels_only_with_their_weights():
    image = torch.zeros(1, 1, 2, 2, 2)
    mask = torch.zeros(1, 1, 2, 2, 2, dtype=torch.bool)
    mask[..., 0, 0, 0] = mask[..., 1, 1, 1] = True
    weights = torch.ones(1, 1, 2, 2, 2)
    weights[..., 1, 1, 1] = 3.0
    recon = torch.zeros(1, 1, 2, 2, 2)
    recon[..., 0, 0, 0], recon[..., 1, 1, 1] = 1.0, 2.0
    recon[..., 0, 1, 0] = 100.0  # visible: ignored
    assert float(weighted_masked_l1(recon, image, mask, weights)) == pytest.approx((1 * 1 + 2 * 3) / 4)


def _method(**options):
    return build_method("shape", model_options={"features": [4, 8, 16]}, patch_size=(16, 16, 16),
                        num_structures=2, scales=(1.0,), **options)


def test_type_head_trains_only_when_both_families_are_in_the_batch():
    torch.manual_seed(0)
    images = _ball_and_tube(16)
    both = _method(structure_types=["spot", "tree"])
    loss, logs = both.training_loss({"image": images, "structure": torch.tensor([0, 1])})
    assert "loss_type" in logs
    loss.backward()
    assert both.type_head.weight.grad is not None and both.type_head.weight.grad.abs().sum() > 0
    _, logs = both.training_loss({"image": images, "structure": torch.tensor([0, 0])})
    assert "loss_type" not in logs
    _, logs = _method().training_loss({"image": images, "structure": torch.tensor([0, 1])})
    assert "loss_type" not in logs  # no types known
    with pytest.raises(Exception, match="spot or tree"):
        _method(structure_types=["spot", "blob"])


def test_the_network_learns_to_predict_the_maps_under_the_masks():
    """Trained a few dozen steps on a ball and a tube, the predicted tube map correlates with the
    clean target on the masked voxels far better than at the start."""
    torch.manual_seed(0)
    images = _ball_and_tube(16)
    method = _method(structure_types=["spot", "tree"], mask_ratio=0.3)
    batch = {"image": images, "structure": torch.tensor([0, 1])}

    def masked_correlation() -> float:
        torch.manual_seed(7)
        with torch.no_grad():
            view, mask = method.view(images)
            predicted = method.backbone(view)[:, 1:]
            _, targets = shape_regression_loss(predicted, shape_maps(images, method.scales))
        m = mask.expand_as(targets)
        a, b = predicted[m], targets[m]
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    before = masked_correlation()
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    for _ in range(40):
        loss, _ = method.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = masked_correlation()
    assert after > 0.35 and after > before + 0.25, (before, after)


def test_pretrain_records_the_recipe_and_finetuning_starts_from_it(tiny_dataset, tmp_path):
    from selma3d.artifacts.encoder import load_encoder_checkpoint
    from selma3d.training.finetune import FinetuneConfig, finetune
    from selma3d.training.pretrain import PretrainConfig, run_pretraining

    encoder = run_pretraining(PretrainConfig(
        method="shape", data=str(tiny_dataset), out=str(tmp_path / "pre"), model_options={"features": [4, 8, 16]},
        method_options={"scales": [1.0]}, max_steps=3, patch_size=(16, 16, 16), batch_size=2, num_workers=0,
        checkpoint_every=3, progress=False, health_every=0))
    ckpt = load_encoder_checkpoint(encoder)
    recipe = ckpt["method_recipe"]
    assert ckpt["method"] == "shape" and recipe["scales"] == [1.0]
    from selma3d.data.layout import load_dataset

    dataset = load_dataset(tiny_dataset)
    assert recipe["structure_types"] == [dataset.type_of(s) for s in ckpt["structures"]]
    assert {"spot", "tree"} <= set(recipe["structure_types"])  # the type head had both families
    run = finetune(FinetuneConfig(data=str(tiny_dataset), out=str(tmp_path / "ft"), pretrained=str(encoder),
                                  model_options={"features": [4, 8, 16]}, max_steps=2, batch_size=2,
                                  patch_size=(16, 16, 16), checkpoint_every=2, val_fraction=0.0, progress=False,
                                  num_workers=0, structures=["cfos"]))
    info = json.loads((run / "run.json").read_text())
    assert info["training"]["pretrained"] == str(encoder) and info["training"]["resolved_schedule"] == "sawtooth"
