"""Finetuning schedules: constant, and nnssl's sawtooth (decoder warm-up on a frozen encoder)."""

from __future__ import annotations

import pytest
import torch

from selma3d.errors import InputError
from selma3d.training.finetune import LR_FLOOR, FinetuneConfig, SegmentationModule, finetune
from selma3d.utils.schedules import warmup_cosine


def _config(data, out, **overrides):
    options = dict(data=str(data), out=str(out), model="unet3d", model_options={"features": [4, 8, 16]},
                   max_steps=8, batch_size=2, patch_size=(16, 16, 16), checkpoint_every=4, val_fraction=0.0,
                   progress=False, num_workers=0, structures=["cfos"], lr=1e-2)
    return FinetuneConfig(**(options | overrides))


def test_sawtooth_is_the_default_only_for_a_trainable_pretrained_encoder(tmp_path):
    assert _config(tmp_path, tmp_path).resolved_schedule == "constant"
    assert _config(tmp_path, tmp_path, pretrained="e.pt").resolved_schedule == "sawtooth"
    assert _config(tmp_path, tmp_path, pretrained="e.pt", freeze_encoder=True).resolved_schedule == "constant"
    assert _config(tmp_path, tmp_path, schedule="sawtooth").resolved_schedule == "sawtooth"
    with pytest.raises(InputError, match="--schedule"):
        _config(tmp_path, tmp_path, schedule="zigzag")
    with pytest.raises(InputError, match="--encoder-lr-scale"):
        _config(tmp_path, tmp_path, encoder_lr_scale=0)


def test_sawtooth_learning_rates_per_group():
    from selma3d.models import build_model

    module = SegmentationModule(build_model("unet3d", features=[4, 8, 16]), lr=1e-3, warmup_steps=2,
                                max_steps=20, schedule="sawtooth", encoder_lr_scale=0.1, decoder_warmup_steps=5)
    optimizer = module.configure_optimizers()["optimizer"]
    decoder_group, encoder_group = optimizer.param_groups
    encoder_ids = {id(p) for p in module.model.encoder.parameters()}
    assert {id(p) for p in encoder_group["params"]} == encoder_ids
    assert not encoder_ids & {id(p) for p in decoder_group["params"]}
    assert encoder_group["initial_lr"] == pytest.approx(1e-4) and decoder_group["initial_lr"] == pytest.approx(1e-3)
    # encoder: nothing while the decoder warms up, then its own warm-up, then cosine to the end
    assert [module.encoder_factor(s) for s in range(5)] == [0.0] * 5
    assert module.encoder_factor(5) == pytest.approx(0.5) and module.encoder_factor(6) == pytest.approx(1.0)
    assert module.encoder_factor(19) == pytest.approx(warmup_cosine(14, 2, 15, LR_FLOOR))
    # constant: one group, one factor
    plain = SegmentationModule(build_model("unet3d", features=[4, 8, 16]), schedule="constant")
    assert len(plain.configure_optimizers()["optimizer"].param_groups) == 1


def test_sawtooth_run_keeps_the_pretrained_encoder_during_decoder_warmup_then_trains_it(tiny_dataset, tmp_path,
                                                                                      monkeypatch):
    import json

    from selma3d.models import build_model
    from selma3d.artifacts.encoder import save_encoder

    source = build_model("unet3d", features=[4, 8, 16])
    encoder_pt = save_encoder(source, tmp_path / "encoder.pt", method="test")
    pretrained = {k: v.clone() for k, v in source.encoder.state_dict().items()}
    decoder_start = {k: v.clone() for k, v in source.decoder.state_dict().items()}

    seen = []  # (step, encoder unchanged?, decoder unchanged?) at the start of every training step
    original = SegmentationModule.on_train_batch_start

    def spy(self, batch, batch_idx):
        original(self, batch, batch_idx)
        enc = all(torch.equal(v, pretrained[k]) for k, v in self.model.encoder.state_dict().items())
        seen.append((self.global_step, enc, self.model.encoder.stem.conv_0.conv.weight.requires_grad))

    monkeypatch.setattr(SegmentationModule, "on_train_batch_start", spy)
    config = _config(tiny_dataset, tmp_path / "saw", model=None, model_options={}, pretrained=str(encoder_pt),
                     max_steps=6, decoder_warmup_fraction=0.5)
    run = finetune(config)
    assert json.loads((run / "run.json").read_text())["training"]["resolved_schedule"] == "sawtooth"
    # steps 0-2 warm the decoder: the encoder is frozen and still the pretrained one after them
    assert [s for s, _, _ in seen] == list(range(6))
    assert [grad for _, _, grad in seen] == [False, False, False, True, True, True]
    assert all(unchanged for _, unchanged, _ in seen[:4])
    state = torch.load(run / "model.pt", weights_only=False)["state_dict"]
    assert any(not torch.equal(state[f"encoder.{k}"], v) for k, v in pretrained.items())
    assert any(not torch.equal(state[f"decoder.{k}"], v) for k, v in decoder_start.items())


@pytest.mark.parametrize("loss", ["dicece+skelrec", "dicece"])
def test_skeleton_recall_gets_its_skeletons_from_the_loader(tiny_dataset, tmp_path, monkeypatch, loss):
    seen = {}
    original = SegmentationModule.training_step

    def spy(self, batch, batch_idx):
        seen["skeleton"] = batch.get("skeleton")
        seen["label"] = batch["label"]
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationModule, "training_step", spy)
    finetune(_config(tiny_dataset, tmp_path / "run", structures=["vessel"], max_steps=1, loss=loss))
    if loss.endswith("+skelrec"):
        skeleton, label = seen["skeleton"], seen["label"]
        assert skeleton is not None and skeleton.shape == label.shape
        # the tubed skeleton lies inside the label and is thinner than it
        assert skeleton.sum() > 0 and skeleton.sum() < label.sum()
        assert bool((skeleton <= (label > 0)).all())
    else:
        assert seen["skeleton"] is None
    with pytest.raises(InputError, match="--loss"):
        _config(tiny_dataset, tmp_path, loss="dice+nonsense")


def test_threshold_is_calibrated_on_validation_patches_unless_given(tiny_dataset, tmp_path, monkeypatch):
    import json

    import numpy as np

    from selma3d.evaluation.metrics import dice
    from selma3d.inference.predict import load_run, predict_probabilities
    from selma3d.training import finetune as ft
    from selma3d.training.finetune_data import FinetuneDataModule

    run = finetune(_config(tiny_dataset, tmp_path / "cal", structures=["cfos", "vessel"], val_fraction=0.5,
                           max_steps=6))
    info = json.loads((run / "run.json").read_text())
    calibration = info["threshold_calibration"]
    assert info["threshold"] == calibration["threshold"] and info["threshold"] in ft.THRESHOLD_GRID
    # recompute the Dice of every threshold independently, on the same held-out patches
    data = FinetuneDataModule(tiny_dataset, (16, 16, 16), structures=["cfos", "vessel"], val_fraction=0.5, seed=0)
    data.setup()
    assert sorted(c.name for c in data.val_cases) == calibration["cases"]
    loaded = load_run(run)
    probs = [predict_probabilities(loaded.model, c.image, loaded.patch_size, normalize=False) for c in data.val_cases]
    for t, score in calibration["dice_by_threshold"].items():
        expected = np.mean([dice(c.label, p > float(t)) for c, p in zip(data.val_cases, probs)])
        assert score == pytest.approx(expected)
    scores = {float(t): v for t, v in calibration["dice_by_threshold"].items()}
    tolerance = ft.THRESHOLD_TOLERANCE["tree"]  # cfos and vessel: a tree among the cases
    assert calibration["tolerance"] == tolerance
    assert scores[info["threshold"]] >= max(scores.values()) - tolerance
    assert all(scores[t] < max(scores.values()) - tolerance for t in scores if t > info["threshold"])
    # predict uses it
    assert loaded.threshold == info["threshold"]

    assert calibration["on"] == "validation"

    fixed = finetune(_config(tiny_dataset, tmp_path / "fixed", val_fraction=0.5, max_steps=2, threshold=0.35))
    info = json.loads((fixed / "run.json").read_text())
    assert info["threshold"] == 0.35 and "threshold_calibration" not in info


def test_without_validation_patches_the_threshold_is_calibrated_on_the_training_patches(tiny_dataset, tmp_path):
    """Study arms and one-patch budgets have no validation split: calibrate in-sample, and say so."""
    import json

    import numpy as np

    from selma3d.evaluation.metrics import dice
    from selma3d.inference.predict import load_run, predict_probabilities
    from selma3d.training.finetune_data import FinetuneDataModule

    run = finetune(_config(tiny_dataset, tmp_path / "train_cal", structures=["cfos"], val_fraction=0.0, max_steps=4))
    info = json.loads((run / "run.json").read_text())
    calibration = info["threshold_calibration"]
    assert calibration["on"] == "train" and info["threshold"] == calibration["threshold"]
    data = FinetuneDataModule(tiny_dataset, (16, 16, 16), structures=["cfos"], val_fraction=0.0, seed=0)
    data.setup()
    assert not data.val_cases and sorted(c.name for c in data.train_cases) == calibration["cases"]
    loaded = load_run(run)
    probs = [predict_probabilities(loaded.model, c.image, loaded.patch_size, normalize=False) for c in data.train_cases]
    for t, score in calibration["dice_by_threshold"].items():
        assert score == pytest.approx(np.mean([dice(c.label, p > float(t)) for c, p in zip(data.train_cases, probs)]))


def test_the_calibration_keeps_the_highest_threshold_within_the_tolerance_of_the_best():
    """Off the training distribution background probabilities rise, so among thresholds that the
    validation patches cannot tell apart the highest is kept (BENCHMARKS.md, "Transfer")."""
    from selma3d.training.finetune import choose_threshold

    scores = {0.5: 0.83, 0.6: 0.88, 0.7: 0.908, 0.8: 0.893, 0.85: 0.857, 0.9: 0.79}
    assert choose_threshold(scores, tolerance=0.02) == 0.8
    assert choose_threshold(scores, tolerance=0.0) == 0.7  # plain argmax (spots)
    assert choose_threshold(scores, tolerance=0.06) == 0.85
    assert choose_threshold({0.3: 0.5, 0.9: 0.5}, tolerance=0.01) == 0.9  # all equal: the highest
    assert choose_threshold({0.3: 0.5, 0.6: 0.5, 0.9: 0.5}, tolerance=0.0) == 0.6  # argmax ties: nearest 0.5
    with pytest.raises(ValueError):
        choose_threshold({}, tolerance=0.02)
    with pytest.raises(ValueError):
        choose_threshold(scores, tolerance=-0.1)
