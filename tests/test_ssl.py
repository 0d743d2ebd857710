"""Self-supervised methods: every registered method honours the method contract (it trains,
its EMA target follows the EMA rule, its encoder round-trips through encoder.pt), a toy method
added through the registry alone pretrains and finetunes, the pretrained encoder reaches
finetuning unchanged, runs resume, DDP on two CPU processes, CLI errors. The objectives against
their definitions are in test_ssl_objectives.py, collapse in test_ssl_collapse.py."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from selma3d.errors import Selma3dError
from selma3d.ssl import METHODS, MethodSpec, SSLMethod, build_method, method_names
from selma3d.ssl.ema import cosine_momentum
from selma3d.ssl.registry import methods_markdown

#: each method's tiny options, from the registry (a method is tested by being registered)
TINY = {name: spec.tiny_options() for name, spec in METHODS.items()}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


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


def train(method, batch, steps: int, lr: float = 1e-3, max_steps: int = 100):
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=lr)
    logs = []
    for step in range(1, steps + 1):
        loss, log = method.training_loss(batch)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.on_after_step(step, max_steps)
        logs.append({k: float(v) for k, v in log.items()})
    return logs


def check_method_contract(name: str, tmp_path: Path) -> None:
    """What every SSL method promises the trainer, checked on its registered tiny instance."""
    from selma3d.artifacts.encoder import load_encoder_checkpoint, model_from_encoder_checkpoint, save_encoder

    spec = METHODS[name]
    size = spec.tiny_patch
    batch_size = 2 if max(size) > 16 else 4
    torch.manual_seed(0)
    batch = {"image": blob_patches(batch_size, size), "structure": torch.arange(batch_size) % 3}
    method = build_method(name, patch_size=size, num_structures=3, **spec.tiny_options())
    assert isinstance(method, SSLMethod) and method.backbone.config["name"] == spec.default_model

    # one step: a finite scalar loss with a gradient, logged as "loss" with the other terms
    loss, logs = method.training_loss(batch)
    assert loss.ndim == 0 and loss.requires_grad and torch.isfinite(loss)
    assert float(logs["loss"]) == pytest.approx(float(loss.detach()))
    assert all(torch.as_tensor(v).numel() == 1 and torch.isfinite(torch.as_tensor(v)) for v in logs.values())

    # a few steps on one batch: the loss with fixed views falls and the saved encoder trains
    pairs = method.ema_pairs()
    ema_start = [{k: v.clone() for k, v in target.state_dict().items()} for target, _ in pairs]
    encoder_before = {k: v.clone() for k, v in method.backbone.encoder.state_dict().items()}
    before = fixed_loss(method, batch)
    steps = 6 if max(size) > 16 or name == "byol" else 8
    train(method, batch, steps=steps)
    after = fixed_loss(method, batch)
    assert after < before, (name, before, after)
    changed = [k for k, v in method.backbone.encoder.state_dict().items() if not torch.equal(v, encoder_before[k])]
    assert changed

    # EMA networks are neither the online network nor frozen: they follow it by the EMA rule
    for (target, online), start in zip(pairs, ema_start):
        assert target is not online
        assert any(not torch.equal(v, start[k]) for k, v in target.state_dict().items())  # it moved
        assert any(not torch.equal(t, o) for t, o in zip(target.parameters(), online.parameters()))  # a copy
        old = [p.clone() for p in target.parameters()]
        step, max_steps = steps + 1, 40
        method.on_after_step(step, max_steps)
        tau = cosine_momentum(step, max_steps, method.base_momentum)
        for t, o, before_step in zip(target.parameters(), online.parameters(), old):
            assert torch.allclose(t, tau * before_step + (1 - tau) * o, atol=1e-6), name

    # the monitoring embedding: one finite row per patch, no state changed
    state = {k: v.clone() for k, v in method.state_dict().items()}
    method.eval()
    z = method.embed(batch["image"])
    method.train()
    assert z.ndim == 2 and z.shape[0] == batch_size and z.shape[1] > 0 and torch.isfinite(z).all()
    assert all(torch.equal(v, state[k]) for k, v in method.state_dict().items())

    # the trained encoder is what encoder.pt carries and what finetuning starts from
    path = save_encoder(method.backbone, tmp_path / f"{name}.pt", method=name)
    assert load_encoder_checkpoint(path)["method"] == name
    loaded = model_from_encoder_checkpoint(path, out_channels=2).encoder.state_dict()
    trained = method.backbone.encoder.state_dict()
    assert set(loaded) == set(trained) and all(torch.equal(loaded[k], trained[k]) for k in trained)


@pytest.mark.parametrize("name", method_names())
def test_method_contract(name, tmp_path):
    check_method_contract(name, tmp_path)


def test_unknown_method_and_model_are_clear_errors():
    with pytest.raises(Selma3dError, match="unknown SSL method 'nope'; choose one of: " + ", ".join(method_names())):
        build_method("nope")
    with pytest.raises(Selma3dError, match="works with model"):
        build_method("simclr", model="unet3d")
    with pytest.raises(Selma3dError, match="bad option"):
        build_method("byol", no_such_option=1, **TINY["byol"])


def test_readme_lists_the_registered_methods():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- ssl-methods:start[^>]*-->\n(.*?)\n<!-- ssl-methods:end -->", readme, re.S)
    assert block, "README.md lost its ssl-methods block"
    assert block.group(1) == methods_markdown(), (
        "README.md's SSL method table is stale; replace it with selma3d.ssl.registry.methods_markdown()")


# --------------------------------------------------------------------------- a method added by registering it

class ToyDenoiser(SSLMethod):
    """A method written in the test alone: the full network removes Gaussian noise (MSE)."""

    backbone_options = {"in_channels": 1, "out_channels": 1}

    def __init__(self, backbone: nn.Module, patch_size, noise: float = 0.3):
        super().__init__(backbone)
        self.noise = float(noise)

    def training_loss(self, batch):
        x = batch["image"]
        loss = ((self.backbone(x + self.noise * torch.randn_like(x)) - x) ** 2).mean()
        return loss, {"loss": loss.detach()}


TOY = MethodSpec(ToyDenoiser, ("unet3d",), "toy denoiser (tests only)",
                 tiny=dict(model_options={"features": [4, 8, 16]}, noise=0.5))


def test_toy_method_added_through_the_registry_alone_pretrains_and_finetunes(tiny_dataset, tmp_path, monkeypatch,
                                                                             capsys):
    from cli_helpers import run_cli
    from selma3d.inference.predict import load_run

    monkeypatch.setitem(METHODS, "toy", TOY)
    check_method_contract("toy", tmp_path)

    run = tmp_path / "pretrain"
    code, out, err = run_cli(monkeypatch, capsys, "pretrain", "--method", "toy", "--data", tiny_dataset,
                             "--out", run, "--model-option", "features=[4,8,16]", "--method-option", "noise=0.5",
                             "--patch-size", "16", "--batch-size", "2", "--max-steps", "2", "--num-workers", "0",
                             "--fg-fraction", "0.02", "--accelerator", "cpu", "--health-every", "0",
                             "--no-progress")
    assert code == 0, err
    encoder = torch.load(run / "encoder.pt", weights_only=True)
    assert encoder["method"] == "toy" and encoder["steps"] == 2 and encoder["model"]["name"] == "unet3d"

    finetuned = tmp_path / "finetune"
    code, out, err = run_cli(monkeypatch, capsys, "finetune", "--data", tiny_dataset, "--out", finetuned,
                             "--pretrained", run / "encoder.pt", "--freeze-encoder", "--structures", "cfos",
                             "--patch-size", "16", "--max-steps", "2", "--val-fraction", "0", "--num-workers", "0",
                             "--accelerator", "cpu", "--quiet")
    assert code == 0, err
    model = load_run(finetuned, device="cpu").model
    for key, value in encoder["encoder_state"].items():  # frozen: the toy's encoder, unchanged
        assert torch.equal(model.encoder.state_dict()[key], value), key


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
    from selma3d.artifacts.encoder import load_encoder_checkpoint, model_from_encoder_checkpoint
    from selma3d.training.pretrain import run_pretraining

    encoder_path = run_pretraining(run_config(tiny_dataset, tmp_path / "run", max_steps=3))
    ckpt = load_encoder_checkpoint(encoder_path)
    assert ckpt["method"] == "byol" and ckpt["steps"] == 3 and ckpt["model"]["name"] == "unet3d"
    assert ckpt["patch_size"] == [16, 16, 16] and ckpt["normalization"]["low"] == 0.05
    assert ckpt["sample_size"] == [16, 16, 16]  # a 3D method reads whole patches
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


def test_a_2d_method_samples_single_slices(tiny_dataset, tmp_path, monkeypatch):
    """SimCLR learns from one z-slice of each patch, so the sampler reads 1-slice windows (the
    foreground filter judges that slice); 3D methods read whole patches. The SSL health check
    embeds a held batch drawn the same way, and encoder.pt records the patch size to finetune
    with next to the window the encoder learned from."""
    from selma3d.artifacts.encoder import load_plan
    from selma3d.data import sampling
    from selma3d.ssl.registry import sample_size
    from selma3d.training.pretrain import run_pretraining

    assert sample_size("simclr", (16, 32, 48)) == (1, 32, 48)
    assert all(sample_size(name, (16, 32, 48)) == (16, 32, 48) for name in method_names() if name != "simclr")
    windows = []
    real = sampling.read_window

    def recording(volume, start, window):
        windows.append(tuple(window))
        return real(volume, start, window)

    monkeypatch.setattr(sampling, "read_window", recording)
    tiny = TINY["simclr"]
    run = tmp_path / "simclr"
    encoder = run_pretraining(run_config(
        tiny_dataset, run, method="simclr", model_options=tiny["model_options"],
        method_options={k: v for k, v in tiny.items() if k != "model_options"}, max_steps=2, health_every=2))
    assert windows and set(windows) == {(1, 16, 16)}
    plan = load_plan(encoder)
    assert plan.patch_size == (16, 16, 16) and plan.sample_size == (1, 16, 16)
    health = list(csv.DictReader(open(run / "health.csv")))
    assert [int(r["step"]) for r in health] == [0, 2] and all(float(r["effective_rank"]) > 1 for r in health)


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
        "error: unknown SSL method 'nope'; choose one of: " + ", ".join(method_names())]


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_dataset, tmp_path):
    out = tmp_path / "ddp"
    result = _cli("pretrain", "--method", "byol", "--data", str(tiny_dataset), "--out", str(out),
                  "--model-option", "features=[4,8,16]", "--method-option", "hidden_dim=32",
                  "--method-option", "projection_dim=16", "--patch-size", "16", "--batch-size", "2",
                  "--max-steps", "2", "--num-workers", "0", "--fg-fraction", "0.02",
                  "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    # (Lightning's gloo banners are silenced now; tests/test_ddp.py checks the two ranks themselves)
    assert torch.load(out / "encoder.pt", weights_only=True)["steps"] == 2
