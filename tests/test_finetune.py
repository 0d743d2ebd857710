"""Supervised finetuning: data module, Lightning module, run folder, resume, freezing, router."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from selma3d.errors import InputError
from selma3d.io.nifti import read_nifti, write_nifti

TINY_UNET = {"features": [4, 8, 16]}
TINY_OPTIONS = {
    "unet3d": (TINY_UNET, 16),
    "swinunetr": ({"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "norm": "batch"}, 32),
    "vit3d": ({"img_size": 16, "patch_size": 8, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
               "mlp_dim": 32, "decoder_channels": 4}, 16),
    "attunet2d": ({"features": [4, 8, 16]}, 16),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _config(data, out, **overrides):
    from selma3d.training.finetune import FinetuneConfig

    options = dict(data=str(data), out=str(out), model="unet3d", model_options=dict(TINY_UNET), max_steps=2,
                   batch_size=2, patch_size=(16, 16, 16), checkpoint_every=50, val_fraction=0.0, progress=False, num_workers=0,
                   structures=["cfos", "vessel"])
    options.update(overrides)
    return FinetuneConfig(**options)


class _Result:
    def __init__(self, exit_code: int, output: str):
        self.exit_code, self.output = exit_code, output


def _cli(*args) -> _Result:
    """Run ``selma3d ARGS`` in-process; user errors become exit code 1 and ``error: ...`` as in the CLI."""
    from selma3d.cli import app_typer
    from selma3d.errors import Selma3dError

    result = CliRunner().invoke(app_typer, [str(a) for a in args])
    if isinstance(result.exception, Selma3dError):
        return _Result(1, f"error: {result.exception}")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return _Result(result.exit_code, result.output)


# --------------------------------------------------------------------------- data

def test_split_is_stratified_deterministic_and_kfold_partitions(tiny_dataset):
    from selma3d.data.layout import load_dataset
    from selma3d.training.finetune_data import split_cases

    cases = load_dataset(tiny_dataset).annotated_cases(split="train")
    train, val = split_cases(cases, val_fraction=0.5, seed=3)
    assert {c.structure for c in val} == {c.structure for c in cases}  # every structure held out once
    assert {c.structure for c in train} == {c.structure for c in cases}
    assert split_cases(cases, 0.5, seed=3) == (train, val)
    folds = [split_cases(cases, folds=2, fold=k, seed=1)[1] for k in range(2)]
    assert sorted(c.case for f in folds for c in f) == sorted(c.case for c in cases)
    assert not {c.case for c in folds[0]} & {c.case for c in folds[1]}
    with pytest.raises(InputError, match="--fold"):
        split_cases(cases, folds=2, fold=2)


def test_datamodule_normalizes_pads_and_balances_crops(tiny_dataset):
    from selma3d.training.finetune_data import FinetuneDataModule

    # tiny patches are 32³: a 48³ crop must be padded
    data = FinetuneDataModule(tiny_dataset, (48, 48, 48), structures=["cfos"], batch_size=4, val_fraction=0.0,
                              seed=0, samples_per_epoch=8)
    data.setup("fit")
    case = data.train_cases[0]
    assert case.image.dtype == np.float32 and case.image.min() == -1.0 and case.image.max() == 1.0
    assert set(np.unique(case.label)) <= {0, 1}
    batch = next(iter(data.train_dataloader()))
    assert tuple(batch["image"].shape) == (4, 1, 48, 48, 48)
    assert tuple(batch["label"].shape) == (4, 1, 48, 48, 48)

    # balanced crops: half are centred on foreground, so far more 8³ crops hold some foreground
    # than the share of all 8³ windows of these sparse c-Fos patches that do (counted here)
    from numpy.lib.stride_tricks import sliding_window_view

    small = FinetuneDataModule(tiny_dataset, (8, 8, 8), structures=["cfos"], batch_size=16, val_fraction=0.0,
                               seed=0, samples_per_epoch=64)
    small.setup("fit")
    from itertools import islice

    # the training loader is endless (one epoch until max_steps): take 64 crops
    hits = [bool(label.any()) for b in islice(small.train_dataloader(), 4) for label in b["label"]]
    windows = np.mean([sliding_window_view(c.label > 0, (8, 8, 8)).any(axis=(-1, -2, -3)).mean()
                       for c in small.train_cases])
    assert len(hits) == 64 and windows < 0.3
    assert np.mean(hits) >= 0.45, (np.mean(hits), windows)


def test_same_seed_gives_the_same_crops_and_the_same_model(tiny_dataset, tmp_path):
    from selma3d.training.finetune import finetune
    from selma3d.training.finetune_data import FinetuneDataModule

    def first_batch(seed):
        data = FinetuneDataModule(tiny_dataset, (16, 16, 16), batch_size=4, val_fraction=0.0, seed=seed)
        data.setup("fit")
        torch.manual_seed(0)  # the global RNG must not matter: the loader has its own generator
        return next(iter(data.train_dataloader()))["image"]

    assert torch.equal(first_batch(1), first_batch(1))
    assert not torch.equal(first_batch(1), first_batch(2))
    states = [torch.load(finetune(_config(tiny_dataset, tmp_path / f"run{i}", seed=5)) / "model.pt",
                         weights_only=False)["state_dict"] for i in range(2)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_non_binary_label_is_rejected_naming_the_case(tmp_path):
    from selma3d.training.finetune_data import FinetuneDataModule

    folder = tmp_path / "annotated" / "train" / "cfos"
    image = np.random.default_rng(0).integers(0, 1000, (16, 16, 16)).astype(np.int16)
    label = np.zeros((16, 16, 16), np.uint8)
    label[2:4, 2:4, 2:4], label[8:10, 8:10, 8:10] = 1, 2  # an instance map, not a mask
    write_nifti(folder / "cfos_007_img.nii.gz", image)
    write_nifti(folder / "cfos_007_label.nii.gz", label)
    data = FinetuneDataModule(tmp_path, (16, 16, 16), val_fraction=0.0)
    with pytest.raises(InputError, match="cfos_007_label.*not a binary mask"):
        data.setup("fit")
    label[label == 2] = 0
    label[label == 1] = 255  # {0, v} is a valid mask
    write_nifti(folder / "cfos_007_label.nii.gz", label)
    data.setup("fit")
    assert set(np.unique(data.train_cases[0].label)) == {0, 1}


# --------------------------------------------------------------------------- training

def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny_dataset):
    import pytorch_lightning as pl

    from selma3d.models import build_model
    from selma3d.training.finetune import SegmentationModule
    from selma3d.training.finetune_data import FinetuneDataModule

    pl.seed_everything(0, verbose=False)
    data = FinetuneDataModule(tiny_dataset, (16, 16, 16), structures=["cfos", "vessel"], batch_size=4,
                              val_fraction=0.0, seed=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module = SegmentationModule(build_model("unet3d", **TINY_UNET), loss="dicece", lr=2e-2, max_steps=30)
    optimizer = module.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(15):
        loss = module.loss_fn(module(batch["image"]), batch["label"].float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.85 * losses[0], losses


@pytest.mark.parametrize("name", ["swinunetr", "vit3d", "attunet2d"])
def test_every_model_finetunes_and_predicts(tiny_dataset, tmp_path, name):
    from selma3d.inference.predict import load_run
    from selma3d.training.finetune import finetune

    options, patch = TINY_OPTIONS[name]
    run = finetune(_config(tiny_dataset, tmp_path / name, model=name, model_options=options,
                           patch_size=(patch,) * 3, structures=["cfos"]))
    loaded = load_run(run)
    assert loaded.model.config["name"] == name
    image = read_nifti(next((tiny_dataset / "annotated" / "final_test" / "cfos").glob("*_img.nii.gz"))).array
    mask = loaded.predict(image[:, :24, :])  # a non-cubic patch
    assert mask.shape == (32, 24, 32) and mask.dtype == np.uint8
    # on one window the mask is the saved network's forward pass, thresholded at the run's
    # threshold, without 26-connected objects under 5 voxels (scikit-image, not cc3d)
    from skimage.morphology import remove_small_objects

    crop = image[:patch, :patch, :patch]
    with torch.no_grad():
        probs = torch.sigmoid(loaded.model(torch.from_numpy(loaded.normalization(crop))[None, None]))[0, 0].numpy()
    expected = remove_small_objects(probs > loaded.threshold, max_size=4, connectivity=3)
    np.testing.assert_array_equal(loaded.predict(crop), expected.astype(np.uint8))
    saved = torch.load(run / "model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in saved.items())


def test_cli_finetune_validates_checkpoints_and_resumes_from_the_saved_step(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    common = ["--data", tiny_dataset, "--out", run, "--model-option", "features=[4,8,16]", "--patch-size", "16",
              "--structures", "cfos,vessel", "--val-fraction", "0.5", "--checkpoint-every", "2", "--quiet"]
    result = _cli("finetune", *common, "--max-steps", "2")
    assert result.exit_code == 0, result.output
    for name in ("model.pt", "run.json", "curves.csv", "curves.png", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["patch_size"] == [16, 16, 16] and info["type"] == "mixed"
    assert info["normalization"]["low"] == 0.05 and info["normalization"]["high"] == 99.95
    assert info["best"]["step"] == 2 and 0 <= info["best"]["val_dice"] <= 1
    assert len(info["split"]["val"]) == 2  # one per structure
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2

    again = _cli("finetune", *common, "--max-steps", "2")  # refuses to overwrite a run
    assert again.exit_code == 1 and "--resume" in again.output

    result = _cli("finetune", "--out", run, "--resume", "--max-steps", "4", "--quiet")
    assert result.exit_code == 0, result.output
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == 4
    adam_steps = {int(s["step"]) for s in resumed["optimizer_states"][0]["state"].values()}
    assert adam_steps == {4}  # the optimizer state was restored, not restarted
    with open(run / "curves.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [bool(r["val_dice"]) for r in rows] == [False, True, False, True]


def test_freeze_encoder_keeps_pretrained_encoder_bit_identical(tiny_dataset, tmp_path):
    import pytorch_lightning as pl

    from selma3d.models import build_model
    from selma3d.artifacts.encoder import model_from_encoder_checkpoint, save_encoder
    from selma3d.training.finetune import build_network, finetune

    # batch norm: its running statistics would drift if the frozen encoder were left in train mode
    source = build_model("unet3d", features=[4, 8, 16], norm="batch")
    with torch.no_grad():
        for p in source.encoder.parameters():
            p.add_(0.01)
    encoder_pt = save_encoder(source, tmp_path / "encoder.pt", method="test")
    expected = {k: v.clone() for k, v in source.encoder.state_dict().items()}

    config = _config(tiny_dataset, tmp_path / "frozen", model=None, model_options={},
                     pretrained=str(encoder_pt), freeze_encoder=True, max_steps=3)
    loaded = build_network(config)  # --pretrained: the weights arrive unchanged
    for key, value in loaded.encoder.state_dict().items():
        assert torch.equal(value, expected[key]), key

    pl.seed_everything(config.seed, verbose=False)
    initial_decoder = {k: v.clone() for k, v in model_from_encoder_checkpoint(encoder_pt).decoder.state_dict().items()}
    run = finetune(config)
    state = torch.load(run / "model.pt", weights_only=False)["state_dict"]
    for key, value in expected.items():
        assert torch.equal(state[f"encoder.{key}"], value), key
    assert any(not torch.equal(state[f"decoder.{k}"], v) for k, v in initial_decoder.items())


def test_cli_errors_are_one_line(tiny_dataset, tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-c", "from selma3d.cli import app; app()", "finetune", "--data", str(tiny_dataset),
               "--out", str(tmp_path / "r"), "--patch-size", "18", "--model-option", "features=[4,8,16]"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["error: --patch-size 18 18 18 is not a multiple of 4x4x4 as the "
                                                "unet3d model needs"]
    result = _cli("finetune", "--data", tiny_dataset, "--out", tmp_path / "r", "--structures", "dendrite")
    assert result.exit_code == 1 and "dendrite" in result.output
    result = _cli("finetune", "--out", tmp_path / "nothing", "--resume")
    assert result.exit_code == 1 and "no checkpoint to resume" in result.output


# --------------------------------------------------------------------------- router

def test_router_learns_to_tell_spots_from_trees(tiny_dataset):
    from selma3d.data.layout import load_dataset
    from selma3d.training.finetune_data import load_case
    from selma3d.training.router import router_accuracy, train_router

    dataset = load_dataset(tiny_dataset)
    cases = [load_case(c, dataset.type_of(c.structure)) for c in dataset.annotated_cases(split="train")]
    train = [c for c in cases if c.name.endswith("_000")]  # one patch per structure to learn from
    held_out = [c for c in cases if not c.name.endswith("_000")]
    assert {c.type for c in held_out} == {"spot", "tree"}
    untrained = train_router([c.image for c in train], [c.type for c in train], steps=1, crop_size=24, seed=0)
    router = train_router([c.image for c in train], [c.type for c in train], steps=200, crop_size=24, seed=0)
    assert router_accuracy(router, [c.image for c in train], [c.type for c in train]) == 1.0
    assert router_accuracy(router, [c.image for c in held_out], [c.type for c in held_out]) == 1.0
    # a one-step router answers one class for everything: the accuracy above is learnt
    assert len({untrained.classify(c.image, normalized=True) for c in cases}) == 1


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_unet_finetuned_from_scratch_on_small_set_segments_cfos_test_patches(tmp_path):
    """The issue's bar: a 3D U-Net trained from scratch on the CPU reaches Dice >= 0.7 on c-Fos test patches."""
    from selma3d.data.synthetic import make_dataset
    from selma3d.evaluation.metrics import dice

    data = make_dataset(tmp_path / "small", preset="small", seed=0)
    run = tmp_path / "run"
    code = _cli("finetune", "--data", data, "--out", run, "--model", "unet3d", "--model-option",
                "features=[8,16,32]", "--structures", "cfos", "--patch-size", "32", "--batch-size", "2",
                "--lr", "5e-3", "--max-steps", "120", "--checkpoint-every", "40", "--quiet")
    assert code.exit_code == 0, code.output
    for split in ("preliminary_test", "final_test"):
        folder = data / "annotated" / split / "cfos"
        code = _cli("predict", "--model", run, folder, tmp_path / split, "--quiet")
        assert code.exit_code == 0, code.output
        scores = [dice(read_nifti(label).array, read_nifti(tmp_path / split / label.name.replace("_label", "_img")).array)
                  for label in sorted(folder.glob("*_label.nii.gz"))]
        print(f"{split}: c-Fos Dice {np.round(scores, 3).tolist()} mean {np.mean(scores):.3f}")
        assert len(scores) == 4 and np.mean(scores) >= 0.7, (split, scores)
