"""Self-supervised methods: each objective trains, BYOL/DINO do not collapse, the pretrained
encoder reaches finetuning unchanged, runs resume, DDP on two CPU processes, CLI errors."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selma3d.errors import Selma3dError
from selma3d.ssl import build_method
from selma3d.ssl.base import embedding_spread

TINY = {
    "byol": dict(model_options={"features": [4, 8, 16]}, hidden_dim=32, projection_dim=16),
    "inpainting": dict(model_options={"features": [4, 8, 16]}),
    "multitask": dict(model_options={"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
                                     "window_size": 4, "norm": "group"}, contrast_dim=32),
    "dino": dict(model_options={"patch_size": 4, "hidden_size": 32, "num_layers": 2, "num_heads": 2,
                                "mlp_dim": 64, "decoder_channels": 4},
                 out_dim=64, hidden_dim=64, bottleneck_dim=16, local_crops=2, base_momentum=0.9),
    "simclr": dict(model_options={"features": [4, 8, 16]}, hidden_dim=32, projection_dim=16),
    "shape": dict(model_options={"features": [4, 8, 16]}, scales=(1.0,), structure_types=["spot", "tree", "spot"]),
}
PATCH = {"multitask": (32, 32, 32)}  # SwinUNETR needs multiples of 32


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster than two on a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blob_patches(batch: int, size, seed: int = 0) -> torch.Tensor:
    """Distinct patches in [-1, 1]: a few bright cubes at random places plus noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(batch, 1, *size)
    for i in range(batch):
        for _ in range(3):
            c = [int(torch.randint(2, s - 2, (1,), generator=g)) for s in size]
            x[i, 0, c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = 1
    return x * 2 - 1 + 0.1 * torch.randn(x.shape, generator=g)


def fixed_loss(method, batch) -> float:
    """The loss with fixed random views/masks, leaving the method's state untouched."""
    state = {k: v.clone() for k, v in method.state_dict().items()}
    rng = torch.get_rng_state()
    torch.manual_seed(1234)
    with torch.no_grad():
        loss, _ = method.training_loss(batch)
    torch.set_rng_state(rng)
    method.load_state_dict(state)
    return float(loss)


def train(method, batch, steps: int, lr: float = 1e-3):
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=lr)
    logs = []
    for step in range(1, steps + 1):
        loss, log = method.training_loss(batch)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.on_after_step(step, 100)
        logs.append({k: float(v) for k, v in log.items()})
    return logs


@pytest.mark.parametrize("name", list(TINY))
def test_method_trains_with_falling_loss(name):
    torch.manual_seed(0)
    size = PATCH.get(name, (16, 16, 16))
    batch_size = 2 if name == "multitask" else 4
    batch = {"image": blob_patches(batch_size, size), "structure": torch.arange(batch_size) % 3}
    method = build_method(name, patch_size=size, num_structures=3, **TINY[name])
    encoder_before = {k: v.clone() for k, v in method.backbone.encoder.state_dict().items()}
    before = fixed_loss(method, batch)
    logs = train(method, batch, steps=6 if name in ("multitask", "byol") else 8)
    after = fixed_loss(method, batch)
    assert all(torch.isfinite(torch.tensor(list(row.values()))).all() for row in logs)
    assert after < before, (name, before, after)
    changed = [k for k, v in method.backbone.encoder.state_dict().items() if not torch.equal(v, encoder_before[k])]
    assert changed  # the objective trains the encoder that gets saved
    if name == "multitask":
        assert {"loss_rotation", "loss_contrast", "loss_inpainting", "loss_structure"} <= set(logs[-1])
    if name == "shape":
        assert {"loss_shape", "loss_inpainting", "loss_type"} <= set(logs[-1])


@pytest.mark.parametrize("name", ["byol", "dino"])
def test_no_collapse(name):
    """After training, L2-normalized embeddings of different patches still differ: the std across
    the batch stays well above 0 (a collapsed representation gives 0)."""
    torch.manual_seed(0)
    batch = {"image": blob_patches(8, (16, 16, 16), seed=1), "structure": torch.zeros(8, dtype=torch.long)}
    method = build_method(name, patch_size=(16, 16, 16), **TINY[name])
    probe = blob_patches(8, (16, 16, 16), seed=2)
    method.eval()
    initial = float(embedding_spread(method.embed(probe)))
    method.train()
    logs = train(method, batch, steps=12)
    method.eval()
    spread = float(embedding_spread(method.embed(probe)))
    assert spread > 1e-3 and spread > 0.3 * initial, (initial, spread)
    # the spread of the trained objective's own embeddings (BYOL projections, DINO CLS tokens)
    assert logs[-1]["embedding_std"] > max(0.3 * logs[0]["embedding_std"], 5e-3), logs
    if name == "dino":  # the teacher neither picks one prototype nor becomes uniform
        entropy = logs[-1]["teacher_entropy"]
        assert 0.05 < entropy < 0.98 * torch.log(torch.tensor(64.0)), entropy


def test_unknown_method_and_model_are_clear_errors():
    with pytest.raises(Selma3dError, match="unknown SSL method 'nope'; choose one of: byol"):
        build_method("nope")
    with pytest.raises(Selma3dError, match="works with model"):
        build_method("simclr", model="unet3d")


# --------------------------------------------------------------------------- full runs

def run_config(data, out, **overrides):
    from selma3d.training.pretrain import PretrainConfig

    options = dict(method="byol", data=str(data), out=str(out),
                   model_options=TINY["byol"]["model_options"],
                   method_options={k: v for k, v in TINY["byol"].items() if k != "model_options"},
                   max_steps=4, patch_size=(16, 16, 16), batch_size=2, lr=1e-3, num_workers=0,
                   fg_fraction=0.02, checkpoint_every=2, accelerator="cpu", progress=False)
    options.update(overrides)
    return PretrainConfig(**options)


def test_pretrained_encoder_arrives_unchanged_in_finetuning_model(tiny_dataset, tmp_path):
    from selma3d.models import load_encoder_checkpoint, model_from_encoder_checkpoint
    from selma3d.training.pretrain import run_pretraining

    encoder_path = run_pretraining(run_config(tiny_dataset, tmp_path / "run", max_steps=3))
    ckpt = load_encoder_checkpoint(encoder_path)
    assert ckpt["method"] == "byol" and ckpt["steps"] == 3 and ckpt["model"]["name"] == "unet3d"
    assert ckpt["patch_size"] == [16, 16, 16] and ckpt["normalization"]["low"] == 0.05
    model = model_from_encoder_checkpoint(encoder_path, out_channels=2)
    trained = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu",
                         weights_only=False)["state_dict"]
    prefix = "method.backbone.encoder."
    trained = {k[len(prefix):]: v for k, v in trained.items() if k.startswith(prefix)}
    loaded = model.encoder.state_dict()
    assert set(trained) == set(loaded)
    for key, value in trained.items():
        assert torch.equal(value, loaded[key]), key
    rows = list(csv.DictReader(open(tmp_path / "run" / "loss.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0


def test_interrupted_run_resumes_at_saved_step(tiny_dataset, tmp_path, monkeypatch):
    from selma3d.ssl.byol import BYOL
    from selma3d.training.pretrain import checkpoint_step, run_pretraining

    original = BYOL.training_loss
    calls = {"n": 0}

    def dies_at_third_step(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return original(self, batch)

    monkeypatch.setattr(BYOL, "training_loss", dies_at_third_step)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pretraining(run_config(tiny_dataset, run))
    ckpt = run / "checkpoints" / "last.ckpt"
    assert checkpoint_step(ckpt) == 2 and not (run / "encoder.pt").exists()
    with pytest.raises(Selma3dError, match="--resume"):
        run_pretraining(run_config(tiny_dataset, run))
    monkeypatch.setattr(BYOL, "training_loss", original)
    run_pretraining(run_config(tiny_dataset, run), resume=True)
    assert checkpoint_step(ckpt) == 4
    steps = [int(r["step"]) for r in csv.DictReader(open(run / "loss.csv"))]
    assert steps == [1, 2, 3, 4]  # continued at step 3, nothing repeated or lost
    assert torch.load(run / "encoder.pt", weights_only=True)["steps"] == 4


def _cli(*args, timeout=300):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    exe = Path(sys.executable).with_name("selma3d")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_unknown_method_is_one_line(tmp_path):
    result = _cli("pretrain", "--method", "nope", "--data", str(tmp_path), "--out", str(tmp_path / "r"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: unknown SSL method 'nope'; choose one of: byol, multitask, inpainting, dino, simclr, shape"]


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_dataset, tmp_path):
    out = tmp_path / "ddp"
    result = _cli("pretrain", "--method", "byol", "--data", str(tiny_dataset), "--out", str(out),
                  "--model-option", "features=[4,8,16]", "--method-option", "hidden_dim=32",
                  "--method-option", "projection_dim=16", "--patch-size", "16", "--batch-size", "2",
                  "--max-steps", "2", "--num-workers", "0", "--fg-fraction", "0.02",
                  "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    assert "All distributed processes registered. Starting with 2 processes" in result.stderr + result.stdout
    assert torch.load(out / "encoder.pt", weights_only=True)["steps"] == 2
