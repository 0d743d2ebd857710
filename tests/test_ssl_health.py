"""SSL health: RankMe and spread on hand-computed inputs, collapse detection, the linear probe,
health.csv / summary.json from a real run, and training unchanged by the health checks."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from selma3d.ssl import build_method
from selma3d.training.ssl_health import (COLUMNS, ProbeSet, effective_rank, is_collapsed,
                                         linear_probe_dice, measure, spread)

TINY_BYOL = dict(model_options={"features": [4, 8, 16]}, hidden_dim=32, projection_dim=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def blobs(batch: int, size=(16, 16, 16), seed: int = 0, noise: float = 0.1, half: int = 2, count: int = 3):
    """Patches in [-1, 1] with ``count`` bright cubes of side ``2 * half``, and the cubes as labels."""
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(batch, 1, *size)
    for i in range(batch):
        for _ in range(count):
            c = [int(torch.randint(half, s - half, (1,), generator=g)) for s in size]
            label[i, 0, c[0] - half:c[0] + half, c[1] - half:c[1] + half, c[2] - half:c[2] + half] = 1
    return label * 2 - 1 + noise * torch.randn(label.shape, generator=g), label


# ----------------------------------------------------------------------------- the measures

def test_effective_rank_matches_hand_computed_values():
    assert effective_rank(torch.eye(8)) == pytest.approx(8.0, rel=1e-4)  # 8 equal singular values
    assert effective_rank(5 * torch.eye(6, 4)) == pytest.approx(4.0, rel=1e-4)  # min(N, E)
    u, v = torch.randn(10, 1), torch.randn(1, 6)
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-4)  # rank 1
    # singular values (3, 1): p = (3/4, 1/4), exp(-(3/4 ln 3/4 + 1/4 ln 1/4)) = 1.7548
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(expected, rel=1e-5)
    # invariant to rotations and to the overall scale
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    z = torch.randn(12, 5, dtype=torch.float64)
    assert effective_rank(7 * z @ q) == pytest.approx(effective_rank(z), rel=1e-6)


def test_spread_on_known_inputs():
    # rows (1,0) and (0,1): per-dimension std (ddof 1) of [1, 0] is 1/sqrt(2) in both dimensions
    assert spread(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    # L2 normalization first: (3,0) and (0,5) are the same two directions
    assert spread(torch.tensor([[3.0, 0.0], [0.0, 5.0]])) == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    assert spread(torch.ones(6, 4) * 2.5) == pytest.approx(0.0, abs=1e-7)  # one point
    # well-spread random unit vectors: about 1/sqrt(E)
    z = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))
    assert spread(z) == pytest.approx(1 / math.sqrt(16), rel=0.05)


def test_collapse_thresholds():
    assert is_collapsed(1.0002, 0.05, 32)  # rank near 1
    assert is_collapsed(3.0, 1e-7, 32)  # spread near 0
    assert not is_collapsed(1.2, 0.0025, 32)  # the least spread healthy random encoder measured


def test_zeroed_encoder_is_collapsed_and_trained_byol_is_not():
    torch.manual_seed(0)
    held, _ = blobs(16, seed=3)
    method = build_method("byol", patch_size=(16, 16, 16), **TINY_BYOL)
    batch = {"image": blobs(8, seed=1)[0]}
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    for step in range(1, 9):  # a normal short BYOL run
        loss, _ = method.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.on_after_step(step, 100)
    healthy = measure(method, held)
    assert healthy["collapsed"] == 0, healthy
    assert healthy["effective_rank"] > 1.05 and healthy["probe_dice"] == ""

    with torch.no_grad():
        for p in method.backbone.encoder.parameters():
            p.zero_()
    collapsed = measure(method, held)
    assert collapsed["collapsed"] == 1, collapsed
    assert collapsed["spread"] < 1e-6 and collapsed["effective_rank"] < 1.001


def test_measure_leaves_modes_and_rng_untouched():
    method = build_method("byol", patch_size=(16, 16, 16), **TINY_BYOL)
    method.train()
    method.target.eval()  # a mixed state must come back as it was
    flags = [m.training for m in method.modules()]
    state = torch.get_rng_state()
    measure(method, blobs(4)[0])
    assert [m.training for m in method.modules()] == flags
    assert torch.equal(torch.get_rng_state(), state)


def test_linear_probe_dice_increases_with_training_on_an_easy_task():
    """Two bright 8³ cubes per 32³ patch (3 % foreground): a few dozen steps of the linear head
    on a random encoder's features (8³ bottleneck, upsampled) find them; the untrained head does
    not. (Objects much smaller than a bottleneck voxel are beyond a linear probe's reach.)"""
    torch.manual_seed(0)
    method = build_method("byol", patch_size=(32, 32, 32), **TINY_BYOL).eval()
    images, labels = blobs(8, size=(32, 32, 32), seed=5, noise=0.05, half=4, count=2)
    probe = ProbeSet(images[:4], labels[:4], images[4:], labels[4:])
    untrained = linear_probe_dice(method.backbone, probe, steps=0)
    short = linear_probe_dice(method.backbone, probe, steps=5)
    trained = linear_probe_dice(method.backbone, probe, steps=40)
    assert untrained < short < trained, (untrained, short, trained)
    assert trained > untrained + 0.3 and trained > 0.45, (untrained, trained)


# ----------------------------------------------------------------------------- in a real run

def run_config(data, out, **overrides):
    from selma3d.training.pretrain import PretrainConfig

    options = dict(method="byol", data=str(data), out=str(out), model_options=TINY_BYOL["model_options"],
                   method_options={k: v for k, v in TINY_BYOL.items() if k != "model_options"},
                   max_steps=4, patch_size=(16, 16, 16), batch_size=2, lr=1e-3, num_workers=0,
                   fg_fraction=0.02, checkpoint_every=2, accelerator="cpu", progress=False, health_every=2)
    options.update(overrides)
    return PretrainConfig(**options)


def test_run_writes_health_and_reports_collapse(tiny_dataset, tmp_path, monkeypatch, capsys):
    """A run whose encoder is zeroed after its last step: health.csv has a row at steps 0, 2, 4
    with the expected columns, the last one collapsed, a warning on stdout, and summary.json
    says so; the probe ran on the dataset's annotated patches."""
    from selma3d.ssl.byol import BYOL
    from selma3d.training.pretrain import run_pretraining

    original = BYOL.on_after_step

    def collapse_at_end(self, step, max_steps):
        original(self, step, max_steps)
        if step == max_steps:
            with torch.no_grad():
                for p in self.backbone.encoder.parameters():
                    p.zero_()

    monkeypatch.setattr(BYOL, "on_after_step", collapse_at_end)
    run = tmp_path / "run"
    run_pretraining(run_config(tiny_dataset, run))
    rows = list(csv.DictReader(open(run / "health.csv")))
    assert tuple(rows[0]) == COLUMNS
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    assert [int(r["collapsed"]) for r in rows] == [0, 0, 1]
    assert all(0.0 <= float(r["probe_dice"]) <= 1.0 for r in rows)
    assert float(rows[0]["effective_rank"]) > 1.05 and float(rows[-1]["spread"]) < 1e-6
    assert (run / "health.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "warning: SSL collapse at step 4" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["collapsed"] is True and summary["collapsed_step"] == 4 and summary["steps"] == 4


def test_healthy_run_is_not_flagged_and_resume_continues_health(tiny_dataset, tmp_path, capsys):
    from selma3d.training.pretrain import run_pretraining

    run = tmp_path / "run"
    run_pretraining(run_config(tiny_dataset, run, max_steps=2))
    run_pretraining(run_config(tiny_dataset, run, max_steps=4), resume=True, given={"max_steps"})
    rows = list(csv.DictReader(open(run / "health.csv")))
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    assert "SSL collapse" not in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["collapsed"] is False and summary["collapsed_step"] is None


def test_weights_identical_with_and_without_health(tiny_dataset, tmp_path):
    from selma3d.training.pretrain import run_pretraining

    states = []
    for every in (0, 1):
        run = tmp_path / f"health{every}"
        run_pretraining(run_config(tiny_dataset, run, max_steps=3, health_every=every))
        assert (run / "health.csv").exists() == bool(every)
        states.append(torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu",
                                 weights_only=False)["state_dict"])
    assert set(states[0]) == set(states[1])
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
