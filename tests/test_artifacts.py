"""The artifact contracts (selma3d.artifacts): versions, old files, and the adaptation plan applied.

A run pretrained with ``--downsample-xy 2`` is finetuned at that xy pooling (recorded in the run)
and predict pools its input the same way and returns masks on the input grid.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from selma3d.artifacts.encoder import load_encoder_checkpoint, load_plan, save_encoder
from selma3d.artifacts.run import read_run_info
from selma3d.errors import InputError, Selma3dError
from selma3d.models import build_model


def test_encoder_versions_old_files_load_and_newer_ones_are_refused_by_name(tmp_path):
    path = save_encoder(build_model("unet3d", features=[4, 8, 16]), tmp_path / "enc.pt", method="m")
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["version"] == 2
    ckpt["version"] = 1  # what the code wrote before the plan was typed: no spacing, no downsample_xy
    torch.save(ckpt, tmp_path / "v1.pt")
    plan = load_plan(tmp_path / "v1.pt")
    assert plan.downsample_xy == 1 and plan.method == "m" and plan.spacing is None
    ckpt["patch_size"] = [8, 16, 16]  # written before sample_size was recorded: the patch was read
    torch.save(ckpt, tmp_path / "v1.pt")
    assert load_plan(tmp_path / "v1.pt").sample_size == (8, 16, 16)
    ckpt["version"] = 99
    torch.save(ckpt, tmp_path / "v99.pt")
    with pytest.raises(Selma3dError, match="v99.pt.*version 99"):
        load_encoder_checkpoint(tmp_path / "v99.pt")
    with pytest.raises(Selma3dError, match="downsample_xy"):
        save_encoder(build_model("unet3d", features=[4, 8, 16]), tmp_path / "bad.pt", downsample_xy=0)


def test_run_info_without_version_or_downsampling_is_version_1_at_full_resolution(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"format": "selma3d-run", "patch_size": [16, 16, 16]}))
    assert read_run_info(tmp_path).get("downsample_xy", 1) == 1
    (tmp_path / "run.json").write_text(json.dumps({"format": "selma3d-run", "version": 7, "patch_size": [16, 16, 16]}))
    with pytest.raises(InputError, match="run.json.*version 7"):
        read_run_info(tmp_path)


def test_router_round_trip_is_versioned(tmp_path):
    from selma3d.artifacts.router import load_router, save_router
    from selma3d.models.router import RouterNet, StructureRouter

    path = save_router(StructureRouter(RouterNet((2, 4)), crop_size=8), tmp_path / "router.pt")
    assert torch.load(path, weights_only=False)["version"] == 1
    assert load_router(tmp_path).classes == ("spot", "tree")


def test_pool_and_upsample_xy():
    from selma3d.data.resample import pool_image_xy, pool_mask_xy, upsample_xy

    image = np.arange(2 * 5 * 4, dtype=np.float32).reshape(2, 5, 4)
    pooled = pool_image_xy(image, 2)
    assert pooled.shape == (2, 3, 2)
    assert pooled[0, 0, 0] == pytest.approx(image[0, :2, :2].mean())
    mask = np.zeros((1, 4, 4), np.uint8)
    mask[0, :2, :2] = 1
    mask[0, 2, 2] = 1  # a quarter of its block: not a majority
    assert pool_mask_xy(mask, 2).tolist() == [[[1, 0], [0, 0]]]
    assert upsample_xy(pooled, 2, image.shape).shape == image.shape


def test_downsample_xy_of_pretraining_is_applied_by_finetune_and_predict(tiny_dataset, tmp_path, monkeypatch,
                                                                         capsys):
    from cli_helpers import run_cli
    from test_ssl import TOY

    from selma3d.inference.predict import load_run
    from selma3d.ssl.registry import METHODS

    monkeypatch.setitem(METHODS, "toy", TOY)
    pre = tmp_path / "pretrain"
    code, out, err = run_cli(monkeypatch, capsys, "pretrain", "--method", "toy", "--data", tiny_dataset,
                             "--out", pre, "--model-option", "features=[4,8,16]", "--method-option", "noise=0.5",
                             "--patch-size", "16", "--batch-size", "2", "--max-steps", "2", "--num-workers", "0",
                             "--fg-fraction", "0.02", "--accelerator", "cpu", "--health-every", "0",
                             "--downsample-xy", "2", "--quiet")
    assert code == 0, err
    assert load_plan(pre / "encoder.pt").downsample_xy == 2
    from selma3d.data.layout import load_dataset  # the plan also says at what spacing it pretrained

    plan, dataset = load_plan(pre / "encoder.pt"), load_dataset(tiny_dataset)
    assert plan.spacing_by_structure == {name: dataset.spacing_of(name) for name in plan.structures}
    assert plan.spacing is None  # the tiny set's nuclei were imaged at another spacing

    def finetune(out, *extra):
        return run_cli(monkeypatch, capsys, "finetune", "--data", tiny_dataset, "--out", out,
                       "--pretrained", pre / "encoder.pt", "--structures", "cfos", "--patch-size", "16",
                       "--max-steps", "2", "--val-fraction", "0", "--num-workers", "0", "--threshold", "0.5",
                       "--accelerator", "cpu", "--quiet", *extra)

    # the plan is followed without a flag, silently, and recorded for predict; encoder.pt is read
    # once (network, normalization and pooling come from one copy)
    import selma3d.artifacts.encoder as encoder_artifact

    reads, read = [], encoder_artifact.load_encoder_checkpoint
    monkeypatch.setattr(encoder_artifact, "load_encoder_checkpoint", lambda path: reads.append(path) or read(path))
    code, out, err = finetune(tmp_path / "ft")
    assert code == 0, err
    assert len(reads) == 1, reads
    monkeypatch.setattr(encoder_artifact, "load_encoder_checkpoint", read)
    assert "note:" not in out + err
    assert read_run_info(tmp_path / "ft")["downsample_xy"] == 2
    assert torch.load(tmp_path / "ft" / "model.pt", weights_only=False)["downsample_xy"] == 2

    # the training crops are pooled: the network sees half the xy extent of each patch
    from selma3d.training.finetune import FinetuneConfig, downsample_for, pool_cases
    from selma3d.training.finetune_data import FinetuneDataModule

    config = FinetuneConfig(data=str(tiny_dataset), out=str(tmp_path / "x"), pretrained=str(pre / "encoder.pt"),
                            patch_size=(16, 16, 16), structures=["cfos"], val_fraction=0.0)
    assert downsample_for(config) == 2
    data = FinetuneDataModule(config.data, config.patch_size, structures=["cfos"], val_fraction=0.0)
    data.setup("fit")
    shapes = [c.image.shape for c in data.train_cases]
    pool_cases(data, 2)
    assert [c.image.shape for c in data.train_cases] == [(z, (y + 1) // 2, (x + 1) // 2) for z, y, x in shapes]
    assert all(c.label.shape == c.image.shape for c in data.train_cases)

    # predict pools the input (the network sees y/2, x/2) and returns a mask on the input grid
    run = load_run(tmp_path / "ft", device="cpu")
    assert run.downsample_xy == 2
    seen = []
    hook = run.model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[2:])))
    image = np.random.default_rng(0).normal(100, 10, size=(16, 32, 30)).astype(np.float32)
    mask = run.predict(image, min_size=0)
    hook.remove()
    assert mask.shape == image.shape
    assert seen and all(shape == (16, 16, 16) for shape in seen)  # one 16x16x15 -> padded 16^3 window

    # an explicit other factor is allowed, and said in one line
    code, out, err = finetune(tmp_path / "ft1", "--downsample-xy", "1")
    assert code == 0, err
    notes = [line for line in (out + err).splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "pretrained at 2" in notes[0]
    assert read_run_info(tmp_path / "ft1")["downsample_xy"] == 1


def test_pretraining_spacing_is_common_only_when_every_structure_agrees(tiny_dataset):
    from selma3d.data.layout import load_dataset
    from selma3d.training.pretrain import recorded_spacing

    dataset = load_dataset(tiny_dataset)
    one = recorded_spacing(tiny_dataset, ["vessel"])
    assert tuple(one["spacing"]) == dataset.spacing_of("vessel") and list(one["spacing_by_structure"]) == ["vessel"]
    assert tuple(recorded_spacing(tiny_dataset, ["vessel", "cfos"])["spacing"]) == dataset.spacing_of("cfos")
    assert dataset.spacing_of("vessel") != dataset.spacing_of("nucleus")
    assert recorded_spacing(tiny_dataset, ["vessel", "nucleus"])["spacing"] is None
