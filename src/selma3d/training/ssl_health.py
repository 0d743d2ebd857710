"""SSL health during pretraining: is the encoder still learning something, or has it collapsed?

Every ``health_every`` steps, on a fixed held batch of unannotated patches (drawn once, with its
own random stream), :class:`SSLHealth` measures the encoder's pooled embeddings
(``method.embed``, the one code path every method offers):

- **spread**: the mean over dimensions of the std across the batch of the L2-normalized
  embeddings (:func:`selma3d.ssl.base.embedding_spread`, SimSiam's monitor);
- **effective rank**: RankMe (Garrido et al., ICML 2023), ``exp`` of the entropy of the
  singular values of the (uncentered) embedding matrix normalized to sum 1 (plus ``eps``);

and, when the dataset has annotated train patches, a cheap **linear probe**: a 1×1×1 head on
the frozen encoder's features (``backbone.encode``) upsampled to full resolution, trained for a
few dozen steps on some annotated patches and scored by Dice on held-back ones.

Rows go to ``health.csv`` in the run folder (at once) and ``health.png`` (loss, spread, rank,
probe Dice against the step; redrawn with each checkpoint and at the end). One check costs
about as much as 5–10 training steps of the same batch size (mostly the forward pass of the 32
held patches and the probe's features), hence the default of every 250 steps. A collapsed run prints one ``warning:`` line on stdout and is flagged
in ``summary.json`` (``"collapsed": true`` and the first step it was seen).

Collapse thresholds (:func:`is_collapsed`), measured on this project's encoders:

- ``effective_rank < COLLAPSE_RANK`` (1.01). RankMe is 1 exactly when every embedding points
  the same way. Randomly initialized encoders give 1.2 (attunet2d), 1.7 (unet3d [8,16,32]),
  2.6 (unet3d [32..256]) and 3.0 (small vit3d) on 32 synthetic 32³ patches — low, because
  pooled post-activation features share a large common mean — while an encoder with constant
  output plus 1e-6 noise gives 1.0002. 1.01 sits well below every healthy value and above
  numerical noise.
- ``spread < COLLAPSE_SPREAD / sqrt(E)`` with ``E`` the embedding size and COLLAPSE_SPREAD =
  1e-3. Isotropic unit vectors have a spread of ``1/sqrt(E)``; the same random encoders give
  0.014–0.08 ``/sqrt(E)`` and the constant encoder about 1e-5 ``/sqrt(E)``: the threshold lies a
  decade below the least spread healthy encoder and two above the collapsed one.

Health never changes training: it runs in eval mode without gradients (batch-norm statistics
untouched), restores every module's train/eval flag, draws its patches from its own numpy
generator and its probe from its own torch generator, and runs inside ``torch.random.fork_rng``
so the training RNG stream is the same with and without it (identical weights).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ..ssl.base import embedding_spread
from ..utils.atomic import atomic_path

HEALTH_NAME = "health.csv"
HEALTH_FIGURE = "health.png"
COLUMNS = ("step", "spread", "effective_rank", "probe_dice", "collapsed")
COLLAPSE_RANK = 1.01
COLLAPSE_SPREAD = 1e-3
#: seed offsets of the held batch and the probe, apart from the training streams
HELD_SEED, PROBE_SEED = 7919, 104729


def effective_rank(embeddings: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp(−Σ p_k log p_k) with p_k = σ_k / Σσ + eps, σ the singular
    values of the (N, E) embedding matrix. Between 1 (all rows parallel) and min(N, E)."""
    z = embeddings.detach().double()
    if z.ndim != 2 or min(z.shape) == 0:
        raise ValueError(f"effective_rank needs an (N, E) matrix, got shape {tuple(z.shape)}")
    sv = torch.linalg.svdvals(z)
    total = sv.sum()
    if not torch.isfinite(total) or total <= 0:
        return 1.0 if torch.isfinite(total) else float("nan")
    p = sv / total + eps
    return float(torch.exp(-(p * p.log()).sum()))


def spread(embeddings: torch.Tensor) -> float:
    """Mean per-dimension std of the L2-normalized embeddings (see the module docstring)."""
    return float(embedding_spread(embeddings))


def is_collapsed(rank: float, spread_value: float, dim: int) -> bool:
    """True when the effective rank is near 1 or the spread near 0 (thresholds above)."""
    return bool(rank < COLLAPSE_RANK or spread_value < COLLAPSE_SPREAD / math.sqrt(max(dim, 1)))


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩G| / (|P|+|G|), 1.0 when both are empty (DESIGN.md), via the project's metric."""
    from ..evaluation.metrics import dice

    return dice(truth, pred)


# ----------------------------------------------------------------------------- probe

@dataclass
class ProbeSet:
    """Annotated patches for the probe: images (N, 1, *patch) in the finetuning normalization
    and binary labels (N, 1, *patch), split into probe-train and held-back patches."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def densest_crop(label: np.ndarray, size: Sequence[int]) -> tuple[slice, ...]:
    """The ``size`` window (on a half-window grid) holding the most foreground of ``label``."""
    starts = []
    for n, s in zip(label.shape, size):
        step = max(1, s // 2)
        axis = list(range(0, max(n - s, 0) + 1, step))
        if axis[-1] != max(n - s, 0):
            axis.append(max(n - s, 0))
        starts.append(axis)
    best, best_count = None, -1
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                box = (slice(z, z + size[0]), slice(y, y + size[1]), slice(x, x + size[2]))
                count = int(np.count_nonzero(label[box]))
                if count > best_count:
                    best, best_count = box, count
    return best


def _fit(array: np.ndarray, size: Sequence[int], box: tuple[slice, ...]) -> np.ndarray:
    """Crop to ``box`` and edge-pad a patch smaller than ``size``."""
    crop = array[box]
    pads = [(0, max(0, s - n)) for n, s in zip(crop.shape, size)]
    return np.pad(crop, pads, mode="edge") if any(p[1] for p in pads) else crop


def load_probe_set(data_dir: str | os.PathLike, patch_size: Sequence[int],
                   structures: Sequence[str] | None = None, max_patches: int = 8) -> ProbeSet | None:
    """Up to ``max_patches`` annotated train patches (finetuning's loader and normalization,
    cropped to ``patch_size`` where they hold the most foreground), alternately dealt to
    probe-train and held-back. None when the dataset has fewer than two annotated patches."""
    from ..data.layout import load_dataset
    from .finetune_data import load_case

    dataset = load_dataset(data_dir)
    cases = dataset.annotated_cases("train", list(structures) if structures else None)
    if len(cases) < 2:
        return None
    # spread the patches over the structures: round-robin over structures in sorted order
    by_structure: dict[str, list] = {}
    for case in cases:
        by_structure.setdefault(case.structure, []).append(case)
    chosen, queues = [], [list(v) for _, v in sorted(by_structure.items())]
    while len(chosen) < max_patches and any(queues):
        for queue in queues:
            if queue and len(chosen) < max_patches:
                chosen.append(queue.pop(0))
    images, labels = [], []
    for case in chosen:
        patch = load_case(case, dataset.type_of(case.structure))
        box = densest_crop(patch.label, patch_size)
        images.append(_fit(patch.image, patch_size, box)[None])
        labels.append(_fit(patch.label, patch_size, box)[None])
    images_t = torch.as_tensor(np.stack(images), dtype=torch.float32)
    labels_t = torch.as_tensor(np.stack(labels), dtype=torch.float32)
    train = list(range(0, len(chosen), 2))
    test = list(range(1, len(chosen), 2))
    return ProbeSet(images_t[train], labels_t[train], images_t[test], labels_t[test])


@torch.no_grad()
def _features(backbone: torch.nn.Module, images: torch.Tensor, chunk: int) -> torch.Tensor:
    device = next(backbone.parameters()).device
    return torch.cat([backbone.encode(images[i:i + chunk].to(device)).float()
                      for i in range(0, len(images), chunk)])


def linear_probe_dice(backbone: torch.nn.Module, probe: ProbeSet, steps: int = 40, lr: float = 0.1,
                      seed: int = PROBE_SEED, chunk: int = 4) -> float:
    """Mean Dice on the held-back patches of a linear 1×1×1 head trained for ``steps`` Adam steps
    (BCE + soft Dice) on the frozen ``backbone.encode`` features of the probe-train patches.

    The head is applied to the low-resolution features and its one-channel logits are upsampled
    (trilinear) to the label size: trilinear interpolation is linear per channel with weights
    summing to 1, so this equals the head applied to upsampled features, without ever holding
    C full-resolution feature maps. Features are standardized per channel on the train patches.
    """
    train = _features(backbone, probe.train_images, chunk)
    test = _features(backbone, probe.test_images, chunk)
    dims = (0,) + tuple(range(2, train.ndim))
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True).clamp_min(1e-6)
    train, test = (train - mean) / std, (test - mean) / std
    device = train.device
    labels = probe.train_labels.to(device)
    size = tuple(labels.shape[2:])
    generator = torch.Generator().manual_seed(seed)
    channels = train.shape[1]
    weight = (torch.randn(1, channels, generator=generator) * 0.01).to(device).requires_grad_(True)
    bias = torch.zeros(1, device=device, requires_grad=True)

    def logits(features: torch.Tensor) -> torch.Tensor:
        low = torch.einsum("oc,bc...->bo...", weight, features) + bias
        mode = "trilinear" if low.ndim == 5 else "bilinear"
        return F.interpolate(low, size=size, mode=mode, align_corners=False)

    with torch.enable_grad():
        optimizer = torch.optim.Adam([weight, bias], lr=lr)
        for _ in range(int(steps)):
            out = logits(train)
            prob = torch.sigmoid(out)
            soft_dice = 1 - (2 * (prob * labels).sum() + 1) / (prob.sum() + labels.sum() + 1)
            loss = F.binary_cross_entropy_with_logits(out, labels) + soft_dice
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        pred = (logits(test) > 0).cpu().numpy()
    truth = probe.test_labels.numpy() > 0
    return float(np.mean([dice_score(p[0], t[0]) for p, t in zip(pred, truth)]))


# ----------------------------------------------------------------------------- measuring

@torch.no_grad()
def embed_batch(method: torch.nn.Module, images: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """(N, E) embeddings from ``method.embed`` in chunks, on the method's device."""
    device = next(method.parameters()).device
    return torch.cat([method.embed(images[i:i + chunk].to(device)).float().cpu()
                      for i in range(0, len(images), chunk)])


class _EvalMode:
    """Eval mode for every submodule, then each one's own flag back (BYOL's target, DINO's
    teacher and the online network may differ)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.module.modules()]
        self.module.eval()

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag


def measure(method: torch.nn.Module, held: torch.Tensor, probe: ProbeSet | None = None,
            probe_steps: int = 40) -> dict:
    """One health row (without the step): spread, effective rank, probe Dice, collapsed."""
    devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    with torch.random.fork_rng(devices=devices), _EvalMode(method):
        z = embed_batch(method, held)
        row = {"spread": spread(z), "effective_rank": effective_rank(z), "probe_dice": ""}
        if probe is not None:
            row["probe_dice"] = linear_probe_dice(method.backbone, probe, steps=probe_steps)
    row["collapsed"] = int(is_collapsed(row["effective_rank"], row["spread"], z.shape[1]))
    return row


def write_health(rows: list[dict], run_dir: Path, history: list[dict] | None = None,
                 figure: bool = True) -> None:
    """``health.csv`` (COLUMNS) and, with ``figure``, ``health.png`` (loss next to spread, rank
    and probe Dice), both written atomically."""
    run_dir = Path(run_dir)
    with atomic_path(run_dir / HEALTH_NAME) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in COLUMNS} for row in rows)
    if not rows or not figure:
        return

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    has_probe = any(r.get("probe_dice", "") != "" for r in rows)
    panels = 3 + has_probe
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.0))
    if history:
        axes[0].plot([h["step"] for h in history], [h.get("loss", float("nan")) for h in history], lw=1)
    axes[0].set(title="loss", xlabel="step")
    axes[1].plot(steps, [r["spread"] for r in rows], "o-", ms=3)
    axes[1].set(title="embedding spread", xlabel="step")
    axes[2].plot(steps, [r["effective_rank"] for r in rows], "o-", ms=3)
    axes[2].axhline(COLLAPSE_RANK, color="r", ls="--", lw=1, label="collapse")
    axes[2].set(title="effective rank (RankMe)", xlabel="step")
    axes[2].legend(fontsize=7)
    if has_probe:
        axes[3].plot(steps, [float(r["probe_dice"]) if r["probe_dice"] != "" else float("nan") for r in rows],
                     "o-", ms=3)
        axes[3].set(title="linear probe Dice", xlabel="step", ylim=(0, 1))
    for step in [r["step"] for r in rows if int(r.get("collapsed", 0))][:1]:
        for ax in axes:
            ax.axvline(step, color="r", lw=0.8, alpha=0.6)
    fig.tight_layout()
    with atomic_path(run_dir / HEALTH_FIGURE, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


class SSLHealth(pl.Callback):
    """Lightning callback: a health row at step 0, every ``every`` steps and at the end (rank 0).

    ``held`` is the fixed (N, 1, *patch) batch of normalized unannotated patches; ``probe`` the
    optional annotated probe set. Rows are kept in the checkpoint, so a resumed run continues
    its ``health.csv``; the collapse verdict is exposed as :attr:`summary`.
    """

    def __init__(self, run_dir: str | os.PathLike, every: int, held: torch.Tensor,
                 probe: ProbeSet | None = None, probe_steps: int = 40):
        self.run_dir = Path(run_dir)
        self.every = int(every)
        self.held = held
        self.probe = probe
        self.probe_steps = int(probe_steps)
        self.rows: list[dict] = []
        self.warned = False

    @property
    def summary(self) -> dict:
        flagged = [r["step"] for r in self.rows if int(r["collapsed"])]
        last = self.rows[-1] if self.rows else {}
        return {"collapsed": bool(flagged), "collapsed_step": flagged[0] if flagged else None,
                "collapse_thresholds": {"effective_rank_below": COLLAPSE_RANK,
                                        "spread_below": f"{COLLAPSE_SPREAD}/sqrt(embedding size)"},
                "last": {k: last.get(k) for k in COLUMNS} if last else None}

    def check(self, trainer: pl.Trainer, module) -> None:
        step = int(trainer.global_step)
        if not trainer.is_global_zero or any(r["step"] == step for r in self.rows):
            return
        row = {"step": step, **measure(module.method, self.held, self.probe, self.probe_steps)}
        self.rows.append(row)
        if row["collapsed"] and not self.warned:
            self.warned = True
            print(f"warning: SSL collapse at step {step}: effective rank {row['effective_rank']:.4f} "
                  f"(collapsed below {COLLAPSE_RANK}), embedding spread {row['spread']:.3g}; "
                  "the encoder maps different patches to the same representation", flush=True)
        # the figure is redrawn with each checkpoint and at the end (matplotlib costs ~0.5 s)
        write_health(self.rows, self.run_dir, figure=False)

    def on_save_checkpoint(self, trainer, module, checkpoint):
        if trainer.is_global_zero and self.rows:
            write_health(self.rows, self.run_dir, getattr(module, "history", None))

    def on_train_start(self, trainer, module):
        if trainer.global_step == 0:
            self.check(trainer, module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0:
            self.check(trainer, module)

    def on_train_end(self, trainer, module):
        self.check(trainer, module)
        if trainer.is_global_zero:
            write_health(self.rows, self.run_dir, getattr(module, "history", None))
        module.health_summary = self.summary

    def state_dict(self) -> dict:
        return {"rows": self.rows, "warned": self.warned}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict.get("rows", []))
        self.warned = bool(state_dict.get("warned", False))
