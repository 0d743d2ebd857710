"""Supervised finetuning with PyTorch Lightning: the module, its callbacks and the run folder.

``RUN/`` (the ``--out`` folder) ends up holding everything ``selma3d predict`` needs:

* ``model.pt``: weights of the best validation step (by mean Dice) + the model config;
* ``run.json``: model options, patch size, normalization, threshold, xy downsampling (the
  ``--pretrained`` encoder's adaptation plan unless ``--downsample-xy`` says otherwise),
  structures and their type, the training arguments, the best step and score, library versions
  (the contract: :mod:`selma3d.artifacts.run`);
* ``curves.csv`` / ``curves.png``: training loss, learning rate and validation metrics per step;
* ``checkpoints/last.ckpt``: the full training state (weights, optimizer, scheduler, step,
  curves with the validation values, best score and step, RNG states) written atomically every
  ``checkpoint_every`` steps, once that step's validation is done, for ``--resume``.

A run killed (even ``kill -9``) and resumed ends bit-identical to the uninterrupted one: the
crops of a step depend on (seed, step) only (:class:`~selma3d.training.finetune_data.IndexedCrops`)
and so does every other random draw of the step (:mod:`selma3d.training.determinism`).
"""

from __future__ import annotations

import csv
import json
import os
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch

from .. import __version__
from ..errors import InputError, Selma3dError
from ..artifacts.run import MODEL_FILE, RUN_FILE, save_model_file, write_run_info
from ..inference.predict import sliding_window_probabilities
from ..utils.atomic import atomic_path
from ..utils.schedules import warmup_cosine
from ..utils.triples import parse_triple
from .checkpoint_io import AtomicCheckpointIO
from .progress import progress_display, quiet_lightning
from .determinism import kill_point, rng_state, seed_step, set_rng_state
from .finetune_data import FinetuneDataModule

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
CURVES_CSV = "curves.csv"
CURVES_PNG = "curves.png"
DEFAULT_MODEL = "unet3d"
SCHEDULES = ("constant", "sawtooth")
DEFAULT_THRESHOLD = 0.5
#: thresholds tried by the calibration on validation patches
THRESHOLD_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97)
#: per structure type: thresholds whose validation Dice is within this of the best one count as
#: equally good there, and the calibration keeps the highest of them (:func:`choose_threshold`)
THRESHOLD_TOLERANCE = {"tree": 0.03, "spot": 0.0}
#: the learning rate decays to this fraction of --lr (pretraining decays to 0)
LR_FLOOR = 0.01


@dataclass
class FinetuneConfig:
    """Every option of a finetuning run (the CLI's flags); stored in ``run.json``."""

    data: str
    out: str
    model: str | None = None
    model_options: dict = field(default_factory=dict)
    pretrained: str | None = None
    downsample_xy: int | None = None  # xy average-pooling; None: the --pretrained encoder's plan (else 1)
    freeze_encoder: bool = False
    schedule: str | None = None  # constant | sawtooth; default: sawtooth with --pretrained
    encoder_lr_scale: float = 0.1  # sawtooth: encoder learning rate relative to --lr
    decoder_warmup_fraction: float = 0.2  # sawtooth: share of the steps with the encoder frozen
    loss: str = "dicece"
    max_steps: int = 1000
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_steps: int | None = None  # default: 5 % of max_steps
    patch_size: tuple[int, int, int] = (64, 64, 64)
    seed: int = 0
    structures: list[str] | None = None
    labels: int | None = None  # training patches per structure (the first k of a seeded permutation); None: all
    linear_probe: bool = False  # train only one 1x1x1 conv on the frozen encoder's features (models/probe.py)
    val_fraction: float = 0.2
    folds: int | None = None
    fold: int | None = None
    checkpoint_every: int = 100
    val_every: int | None = None  # default: checkpoint_every
    threshold: float | None = None  # None: calibrated on the validation patches (else the training ones)
    overlap: float = 0.5
    augment: str = "default"  # strength: none | light | default | strong
    num_workers: int = 1  # one loader process overlaps augmentation with the step
    samples_per_epoch: int = 64
    accelerator: str = "auto"
    devices: Any = 1
    precision: str = "32-true"
    progress: bool = True

    def __post_init__(self):
        if self.labels is not None and int(self.labels) < 1:
            raise InputError(f"--labels must be >= 1 training patches per structure, got {self.labels}")
        self.freeze_encoder = self.freeze_encoder or self.linear_probe  # a probe's encoder never trains
        self.patch_size = parse_patch_size(self.patch_size)
        if self.max_steps < 1:
            raise InputError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.checkpoint_every < 1:
            raise InputError(f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        if self.lr <= 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if self.downsample_xy is not None and int(self.downsample_xy) < 1:
            raise InputError(f"--downsample-xy must be >= 1, got {self.downsample_xy}")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise InputError(f"--threshold must be in (0, 1), got {self.threshold}")
        if self.structures is not None:
            self.structures = [s.strip() for s in self.structures if s.strip()] or None
        from .losses import LOSS_NAMES

        if self.loss not in LOSS_NAMES:
            raise InputError(f"--loss must be one of {', '.join(LOSS_NAMES)}, got {self.loss!r}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise InputError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 < self.encoder_lr_scale <= 1:
            raise InputError(f"--encoder-lr-scale must be in (0, 1], got {self.encoder_lr_scale}")
        if not 0 <= self.decoder_warmup_fraction < 1:
            raise InputError(f"--decoder-warmup-fraction must be in [0, 1), got {self.decoder_warmup_fraction}")

    @property
    def resolved_schedule(self) -> str:
        """``sawtooth`` pays off only for an encoder worth protecting: a pretrained, unfrozen one."""
        if self.schedule is not None:
            return self.schedule
        return "sawtooth" if self.pretrained and not self.freeze_encoder else "constant"

    @property
    def warmup(self) -> int:
        if self.warmup_steps is not None:
            return max(0, min(int(self.warmup_steps), self.max_steps - 1))
        return int(0.05 * self.max_steps)

    @property
    def validate_every(self) -> int:
        return int(self.val_every or self.checkpoint_every)


def parse_patch_size(value) -> tuple[int, int, int]:
    """An int ``n`` → (n, n, n); three ints → (z, y, x)."""
    if value is None:
        raise InputError("--patch-size must be one or three positive integers (z y x), got None")
    return parse_triple(value, "--patch-size",
                        message="--patch-size must be one or three positive integers (z y x), got {value!r}")


def check_patch_size(model: torch.nn.Module, patch_size: Sequence[int]) -> None:
    divisor = getattr(model, "size_divisor", 1)
    divisors = (divisor,) * 3 if isinstance(divisor, int) else tuple(divisor)
    if any(p % d for p, d in zip(patch_size, divisors)):
        raise InputError(f"--patch-size {' '.join(map(str, patch_size))} is not a multiple of "
                         f"{'x'.join(map(str, divisors))} as the {model.config['name']} model needs")


# --------------------------------------------------------------------------- the Lightning module

def validation_metrics(structure_type: str, gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The challenge metric set of the type (selma3d.evaluation.metrics), or Dice if unavailable."""
    try:
        from ..evaluation.metrics import metrics_for_type
    except ImportError:  # the evaluation package is optional for training
        inter = float(np.logical_and(gt > 0, pred > 0).sum())
        total = float((gt > 0).sum() + (pred > 0).sum())
        return {"dice": 1.0 if total == 0 else 2 * inter / total}
    return {k: float(v) for k, v in metrics_for_type(structure_type, gt, pred).items()}


class SegmentationModule(pl.LightningModule):
    """A segmentation network trained with a Dice-family loss on 1-channel logits."""

    def __init__(self, model: torch.nn.Module, loss: str = "dicece", lr: float = 1e-3,
                 weight_decay: float = 1e-5, warmup_steps: int = 0, max_steps: int = 1000,
                 freeze_encoder: bool = False, patch_size: Sequence[int] = (64, 64, 64),
                 threshold: float = 0.5, overlap: float = 0.5, schedule: str = "constant",
                 encoder_lr_scale: float = 0.1, decoder_warmup_steps: int = 0, seed: int = 0):
        super().__init__()
        from .losses import build_loss

        self.model = model
        self.loss_fn = build_loss(loss)
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.max_steps = warmup_steps, max_steps
        self.freeze_encoder = freeze_encoder
        self.schedule = "constant" if freeze_encoder else schedule
        self.encoder_lr_scale = float(encoder_lr_scale)
        self.decoder_warmup_steps = int(decoder_warmup_steps) if self.schedule == "sawtooth" else 0
        self.patch_size = tuple(int(p) for p in patch_size)
        self.threshold, self.overlap = threshold, overlap
        self.seed = int(seed)
        self._val_rows: list[dict] = []
        if freeze_encoder:
            self.model.encoder.requires_grad_(False)
            self.model.encoder.eval()

    def train(self, mode: bool = True):
        """Keep a frozen encoder in eval mode, so its normalization statistics never change."""
        super().train(mode)
        if self.freeze_encoder:
            self.model.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def encoder_is_warming(self, step: int) -> bool:
        """Sawtooth phase 1: the decoder learns on a frozen encoder (no gradient computed for it)."""
        return step < self.decoder_warmup_steps

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Random draws of the step (dropout, ...) depend on (seed, step) only: a resumed run repeats
        # the uninterrupted one exactly.
        seed_step(self.seed, self.global_step, self.global_rank)
        # Derived from the global step alone, so a resumed run is in the same phase.
        if self.schedule == "sawtooth":
            self.model.encoder.requires_grad_(not self.encoder_is_warming(self.global_step))

    def training_step(self, batch, batch_idx):
        logits = self.model(batch["image"])
        loss = self.loss_fn(logits, batch["label"].float(), skeleton=batch.get("skeleton"))
        self.log("train_loss", loss, on_step=True, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        probs = sliding_window_probabilities(self.model, batch["image"], self.patch_size, overlap=self.overlap)
        pred = (probs[0, 0] > self.threshold).cpu().numpy().astype(np.uint8)
        gt = batch["label"][0, 0].cpu().numpy()
        row = {"name": batch["name"], "structure": batch["structure"], "type": batch["type"]}
        row.update(validation_metrics(batch["type"], gt, pred))
        self._val_rows.append(row)

    def on_validation_epoch_start(self) -> None:
        self._val_rows = []

    def on_validation_epoch_end(self) -> None:
        if not self._val_rows:
            return
        summary = summarize_validation(self._val_rows)
        for key, value in summary.items():
            self.log(key, value, prog_bar=key == "val_dice", batch_size=1, sync_dist=True)

    def on_save_checkpoint(self, checkpoint) -> None:
        checkpoint["rng_state"] = rng_state()

    def on_load_checkpoint(self, checkpoint) -> None:
        set_rng_state(checkpoint.get("rng_state"))

    def configure_optimizers(self):
        decoder_factor = lambda step: warmup_cosine(step, self.warmup_steps, self.max_steps, LR_FLOOR)  # noqa: E731
        if self.schedule != "sawtooth":
            params = [p for p in self.model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
            factors = [decoder_factor]
        else:
            # nnssl's "sawtooth": decoder warm-up on a frozen encoder, then the encoder joins with its
            # own warm-up at a lower learning rate, so random decoder gradients never wreck it.
            encoder = {id(p) for p in self.model.encoder.parameters()}
            rest = [p for p in self.model.parameters() if id(p) not in encoder]
            optimizer = torch.optim.AdamW([{"params": rest, "lr": self.lr},
                                           {"params": list(self.model.encoder.parameters()),
                                            "lr": self.lr * self.encoder_lr_scale}],
                                          weight_decay=self.weight_decay)
            factors = [decoder_factor, self.encoder_factor]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def encoder_factor(self, step: int) -> float:
        """Sawtooth encoder learning-rate factor: 0 while warming the decoder, then its own linear
        warm-up (as long as the decoder's) and the cosine decay of the rest of the run."""
        if self.encoder_is_warming(step):
            return 0.0
        start = self.decoder_warmup_steps
        return warmup_cosine(step - start, max(1, self.warmup_steps), max(1, self.max_steps - start), LR_FLOOR)


def summarize_validation(rows: list[dict]) -> dict[str, float]:
    """Mean of every metric over all validation cases (``val_<metric>``) and per type."""
    summary: dict[str, float] = {}
    metric_names = sorted({k for r in rows for k in r if k not in ("name", "structure", "type")})
    for metric in metric_names:
        values = [r[metric] for r in rows if metric in r]
        summary[f"val_{metric}"] = float(np.mean(values))
        for kind in sorted({r["type"] for r in rows}):
            typed = [r[metric] for r in rows if r["type"] == kind and metric in r]
            if typed and len({r["type"] for r in rows}) > 1:
                summary[f"val_{kind}_{metric}"] = float(np.mean(typed))
    return summary


# --------------------------------------------------------------------------- callbacks

class StepCheckpoint(pl.Callback):
    """``checkpoints/last.ckpt`` every ``every`` steps, once the step is complete.

    A step that validates is saved when its validation ends, so the checkpoint holds the
    validation values, the best score and ``model.pt``'s step (Lightning resumes such a
    checkpoint without validating again); other steps are saved when their batch ends.
    Lightning's own step checkpoint is written before the validation of its step, and a resume
    skipped that validation, losing its values. ``validates(step)`` says whether ``step``
    validates (the trainer's ``val_check_interval``).
    """

    def __init__(self, path: Path, every: int, validates=lambda step: False):
        self.path = Path(path)
        self.every = int(every)
        self.validates = validates
        self.last_saved = -1

    def save(self, trainer) -> None:
        step = int(trainer.global_step)
        if step % self.every or step == self.last_saved:
            return
        trainer.save_checkpoint(self.path)  # atomic (AtomicCheckpointIO)
        self.last_saved = step
        kill_point(step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.validates(int(trainer.global_step)):
            self.save(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:  # not the final trainer.validate()
            self.save(trainer)


class CurvesWriter(pl.Callback):
    """Training loss / learning rate per logged step and validation metrics, as CSV and PNG.

    The rows live in the callback's state, which Lightning stores in every checkpoint, so a
    resumed run continues the curves from the saved step instead of losing or duplicating them.
    """

    def __init__(self, run_dir: Path, log_every: int = 10):
        self.run_dir = Path(run_dir)
        self.log_every = max(1, int(log_every))
        self.rows: list[dict] = []

    def state_dict(self) -> dict:
        return {"rows": list(self.rows)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict.get("rows", []))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.log_every == 0 or step == 1 or step >= (trainer.max_steps or 0):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            self.rows.append({"step": step, "train_loss": float(loss), "lr": float(lr)})

    def on_validation_end(self, trainer, pl_module) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        if metrics and trainer.is_global_zero:
            self.rows.append({"step": trainer.global_step, **metrics})
            self.write()

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.write()

    def write(self) -> None:
        write_curves(self.rows, self.run_dir / CURVES_CSV, self.run_dir / CURVES_PNG)


class BestModelKeeper(pl.Callback):
    """Export ``model.pt`` whenever validation Dice improves (and at the end without validation)."""

    def __init__(self, run_dir: Path, extra: dict, monitor: str = "val_dice"):
        self.run_dir = Path(run_dir)
        self.extra = extra
        self.monitor = monitor
        self.best_score: float | None = None
        self.best_step: int | None = None

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_step = state_dict.get("best_step")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_step = score, int(trainer.global_step)
            if trainer.is_global_zero:
                self.save(pl_module, trainer.global_step, score)

    def save(self, pl_module, step: int, score: float | None) -> None:
        save_model_file(pl_module.model, self.run_dir / MODEL_FILE, step=int(step), val_dice=score, **self.extra)


def write_curves(rows: list[dict], csv_path: Path, png_path: Path | None = None) -> None:
    """Curves CSV (one row per step that logged something; empty cells where not), written atomically."""
    if not rows:
        return
    merged: dict[int, dict] = {}
    for row in rows:
        merged.setdefault(int(row["step"]), {}).update(row)
    ordered = [merged[s] for s in sorted(merged)]
    keys = ["step"] + sorted({k for r in ordered for k in r} - {"step"})
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(ordered)
    if png_path is not None:
        plot_curves(ordered, png_path)


def plot_curves(rows: list[dict], png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_score, ax_error) = plt.subplots(1, 3, figsize=(14, 4))
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    if train:
        ax_loss.plot(*zip(*train), label="train loss")
        ax_loss.legend()
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    metrics = sorted({k for r in rows for k in r if k.startswith("val_")})
    for metric in metrics:
        points = [(r["step"], r[metric]) for r in rows if metric in r]
        ax = ax_error if "error" in metric else ax_score
        ax.plot(*zip(*points), marker="o", label=metric[len("val_"):])
    ax_score.set(xlabel="step", ylabel="score", title="validation (higher is better)")
    ax_error.set(xlabel="step", ylabel="Betti number error", title="validation (lower is better)")
    for ax in (ax_score, ax_error):
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(png_path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- building and running

def parse_model_options(pairs: Sequence[str]) -> dict:
    """``["features=[4,8,16]", "norm=batch"]`` → dict (see :func:`selma3d.utils.options.parse_options`)."""
    from ..utils.options import parse_options

    return parse_options(list(pairs or []), "--model-option")


def build_network(config: FinetuneConfig) -> torch.nn.Module:
    """The model from ``--pretrained`` (architecture named by the checkpoint) or ``build_model``."""
    from ..artifacts.encoder import load_encoder_checkpoint, model_from_encoder_checkpoint
    from ..models import build_model

    if config.pretrained:
        path = Path(config.pretrained)
        if not path.is_file():
            raise InputError(f"--pretrained {path}: no such encoder checkpoint")
        saved = load_encoder_checkpoint(path)["model"]
        if config.model and config.model != saved.get("name"):
            raise InputError(f"--model {config.model} does not match the encoder checkpoint {path}, "
                             f"which holds a {saved.get('name')} encoder")
        # Decoder options may change; the checkpoint's encoder options may not (Selma3dError).
        return model_from_encoder_checkpoint(path, out_channels=1, **config.model_options)
    return build_model(config.model or DEFAULT_MODEL, in_channels=1, out_channels=1, **config.model_options)


def calibrate_threshold(run_dir: Path, cases, grid=THRESHOLD_GRID) -> dict:
    """The probability threshold with the best mean Dice on held-out patches, for the saved model.

    Foreground-balanced crops (half of them centred on foreground) teach the network a far
    higher foreground prior than sparse LSM structures have, so its probabilities are too high
    off the structure: on the shifted synthetic split a vessel model scored Dice 0.61 at 0.5 and
    0.82 at 0.9 (BENCHMARKS.md, "Transfer"). For tree-like structures the highest threshold
    within ``THRESHOLD_TOLERANCE`` of the best Dice is kept (:func:`choose_threshold`).
    """
    from ..evaluation.metrics import dice
    from ..inference.predict import load_run, predict_probabilities

    run = load_run(run_dir)
    probs = [predict_probabilities(run.model, c.image, run.patch_size, normalize=False) for c in cases]
    scores = {float(t): float(np.mean([dice(c.label, p > t) for c, p in zip(cases, probs)])) for t in grid}
    tolerance = max(THRESHOLD_TOLERANCE.get(c.type, 0.0) for c in cases)
    return {"threshold": choose_threshold(scores, tolerance), "dice_by_threshold": scores, "tolerance": tolerance,
            "cases": sorted(c.name for c in cases)}


def choose_threshold(scores: dict[float, float], tolerance: float = 0.0) -> float:
    """The highest threshold whose Dice is within ``tolerance`` of the best one (with 0: the best,
    ties going to the threshold nearest 0.5).

    Tree-like structures get a tolerance (``THRESHOLD_TOLERANCE``): the validation patches are
    one or two crops of the training structure, and on thinner or noisier tree-like data the
    errors are lopsided. A one-voxel halo around thin processes and specks in a noisier
    background raise the foreground probability of background voxels, so every shifted tree test
    measured preferred a higher threshold than the vessel validation patches (validation best 0.7;
    shifted vessels 0.85, unseen microglia 0.9-0.97, the independent generator 0.95:
    BENCHMARKS.md, "Transfer"). Among thresholds the validation patches cannot tell apart, the
    highest one is the safer bet there. Spot-like tests showed no such bias (shifted c-Fos
    preferred 0.6-0.7 where validation chose 0.7-0.8), so spots keep the best threshold.
    """
    if not scores:
        raise ValueError("choose_threshold: no scores")
    if tolerance < 0:
        raise ValueError(f"choose_threshold: tolerance must be >= 0, got {tolerance}")
    best = max(scores.values())
    if tolerance == 0:
        return float(max(scores, key=lambda t: (scores[t], -abs(float(t) - DEFAULT_THRESHOLD))))
    return max(float(t) for t, score in scores.items() if score >= best - tolerance)


def adaptation_plan(config: FinetuneConfig):
    """The ``--pretrained`` encoder's :class:`~selma3d.artifacts.encoder.AdaptationPlan` (or None)."""
    from ..artifacts.encoder import load_plan

    return load_plan(config.pretrained) if config.pretrained else None


def normalization_for(config: FinetuneConfig):
    """The pretrained encoder's normalization (its adaptation plan), else the default one: an
    encoder only transfers if it sees intensities scaled as in pretraining."""
    from ..data.normalize import DEFAULT_NORMALIZATION

    plan = adaptation_plan(config)
    return plan.normalization_object() if plan else DEFAULT_NORMALIZATION


def downsample_for(config: FinetuneConfig, echo=print) -> int:
    """The xy pooling to finetune (and predict) at: the encoder's plan unless ``--downsample-xy``
    says otherwise, which is allowed (e.g. to finetune finer than pretraining) and said in one line."""
    plan = adaptation_plan(config)
    planned = plan.downsample_xy if plan else 1
    if config.downsample_xy is None:
        return planned
    given = int(config.downsample_xy)
    if plan is not None and given != planned:
        echo(f"note: finetuning at --downsample-xy {given}, while the encoder {config.pretrained} was "
             f"pretrained at {planned}: its features were learned at {planned}x coarser xy sampling, so "
             f"transfer may suffer (omit --downsample-xy to follow the encoder's plan)", flush=True)
    return given


def pool_cases(data: FinetuneDataModule, factor: int) -> None:
    """Average-pool the images (majority-pool the labels) of the loaded cases by ``factor`` in xy."""
    if factor == 1:
        return
    from ..data.resample import pool_image_xy, pool_mask_xy

    for cases in (data.train_cases, data.val_cases):
        cases[:] = [replace(c, image=pool_image_xy(c.image, factor), label=pool_mask_xy(c.label, factor))
                    for c in cases]


def _versions() -> dict:
    import monai

    return {"selma3d": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "pytorch_lightning": pl.__version__, "python": platform.python_version()}


def run_info(config: FinetuneConfig, model: torch.nn.Module, data: FinetuneDataModule, status: str,
             best: dict | None = None, downsample_xy: int = 1) -> dict:
    """``run.json`` (the contract: :mod:`selma3d.artifacts.run`)."""
    return {
        "status": status,
        "model": dict(model.config),
        "patch_size": list(config.patch_size),
        "normalization": data.normalization.to_dict() | {"per": "patch"},
        "threshold": config.threshold or DEFAULT_THRESHOLD,
        "overlap": config.overlap,
        "downsample_xy": int(downsample_xy),
        "structures": data.structure_names,
        "type": data.structure_type,
        "split": {"train": sorted(c.name for c in data.train_cases), "val": sorted(c.name for c in data.val_cases)},
        "training": asdict(config) | {"patch_size": list(config.patch_size),
                                      "resolved_schedule": config.resolved_schedule},
        "best": best or {},
        "versions": _versions(),
    }


def resume_config(out: str | os.PathLike, max_steps: int | None = None) -> FinetuneConfig:
    """The saved configuration of the run in ``out`` (``--max-steps`` may be raised)."""
    out = Path(out)
    info_path, ckpt = out / RUN_FILE, out / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not info_path.is_file() or not ckpt.is_file():
        raise InputError(f"--resume: {out} holds no checkpoint to resume ({CHECKPOINT_DIR}/{LAST_CHECKPOINT} missing)")
    saved = json.loads(info_path.read_text())["training"]
    saved["patch_size"] = tuple(saved["patch_size"])
    if max_steps is not None:
        saved["max_steps"] = int(max_steps)
    known = set(FinetuneConfig.__dataclass_fields__)
    return FinetuneConfig(**{k: v for k, v in saved.items() if k in known})


def finetune(config: FinetuneConfig, resume: bool = False) -> Path:
    """Train a segmentation model as ``config`` says; returns the run folder.

    With ``resume``, training continues from ``RUN/checkpoints/last.ckpt`` (step, weights,
    optimizer and scheduler state, curves, best score) up to ``config.max_steps``.
    """
    out = Path(config.out)
    ckpt_dir = out / CHECKPOINT_DIR
    last = ckpt_dir / LAST_CHECKPOINT
    if resume and not last.is_file():
        raise InputError(f"--resume: {out} holds no checkpoint to resume ({CHECKPOINT_DIR}/{LAST_CHECKPOINT} missing)")
    if not resume and ((out / MODEL_FILE).exists() or last.exists()):
        raise InputError(f"{out} already holds a finetuning run; use --resume to continue it or choose another --out")
    if not resume:  # saved absolute, so a resume from another working directory reads the same files
        config = replace(config, data=str(Path(config.data).expanduser().resolve()),
                         pretrained=str(Path(config.pretrained).expanduser().resolve()) if config.pretrained else None)
    out.mkdir(parents=True, exist_ok=True)

    pl.seed_everything(config.seed, workers=True, verbose=False)
    model = build_network(config)
    if config.linear_probe:
        from ..models.probe import LinearProbe

        model = LinearProbe.around(model)
    check_patch_size(model, config.patch_size)
    data = FinetuneDataModule(config.data, config.patch_size, structures=config.structures,
                              batch_size=config.batch_size, val_fraction=config.val_fraction,
                              folds=config.folds, fold=config.fold, seed=config.seed,
                              num_workers=config.num_workers, samples_per_epoch=config.samples_per_epoch,
                              augment_options={"strength": config.augment},
                              normalization=normalization_for(config))
    data.setup("fit")
    factor = downsample_for(config, echo=print if not resume else (lambda *a, **k: None))
    pool_cases(data, factor)  # the resolution the encoder learned at (its adaptation plan)
    # the tubed skeleton of each augmented crop is computed in the loader, not in the step
    data.augment_options["skeleton"] = config.loss.endswith("+skelrec")
    module = SegmentationModule(model, loss=config.loss, lr=config.lr, weight_decay=config.weight_decay,
                                warmup_steps=config.warmup, max_steps=config.max_steps,
                                freeze_encoder=config.freeze_encoder, patch_size=config.patch_size,
                                threshold=config.threshold or DEFAULT_THRESHOLD, overlap=config.overlap,
                                schedule=config.resolved_schedule, encoder_lr_scale=config.encoder_lr_scale,
                                decoder_warmup_steps=int(config.decoder_warmup_fraction * config.max_steps),
                                seed=config.seed)
    if resume:  # the crops continue where the checkpoint stopped
        from .pretrain import checkpoint_step

        data.start_step = checkpoint_step(last)
    info = run_info(config, model, data, status="training", downsample_xy=factor)
    write_run_info(out / RUN_FILE, info)

    extra = {"patch_size": list(config.patch_size), "threshold": config.threshold or DEFAULT_THRESHOLD,
             "downsample_xy": factor}
    keeper = BestModelKeeper(out, extra)
    curves = CurvesWriter(out, log_every=max(1, min(10, config.max_steps // 50 or 1)))
    has_val = bool(data.val_cases)
    periodic = StepCheckpoint(last, config.checkpoint_every,
                              validates=lambda step: has_val and step % config.validate_every == 0)
    data.keep_labels(config.labels)  # the label budget, before fit builds the loaders (run.json lists it at the end)
    bar, progress_lines = progress_display(config.progress, "finetune")
    with quiet_lightning():
        trainer = pl.Trainer(
            max_steps=config.max_steps, accelerator=config.accelerator, devices=config.devices,
            precision=config.precision, logger=False, callbacks=[*progress_lines, keeper, curves, periodic],  # periodic last: it saves their state
            plugins=[AtomicCheckpointIO()], check_val_every_n_epoch=None,
            val_check_interval=config.validate_every if has_val else None,
            limit_val_batches=1.0 if has_val else 0, num_sanity_val_steps=0,
            enable_checkpointing=False,  # StepCheckpoint writes last.ckpt
            enable_progress_bar=bar, enable_model_summary=False, log_every_n_steps=1,
            default_root_dir=str(out),
        )
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
        if trainer.interrupted:
            raise Selma3dError(f"training interrupted at step {trainer.global_step}; "
                               f"continue with: selma3d finetune --out {out} --resume")
        # The last step is always checkpointed and validated, so resume/best see the final state.
        trainer.save_checkpoint(last)
        if has_val and trainer.global_step % config.validate_every:
            trainer.validate(module, datamodule=data, verbose=False)  # runs the keeper and curves callbacks
            trainer.save_checkpoint(last)
    if not trainer.is_global_zero:
        return out
    if not has_val:
        keeper.save(module, trainer.global_step, None)
        keeper.best_step = trainer.global_step
    curves.write()
    best = {"step": keeper.best_step, "val_dice": keeper.best_score}
    info = run_info(config, model, data, status="finished", best=best,
                    downsample_xy=factor) | {"steps_done": int(trainer.global_step)}
    write_run_info(out / RUN_FILE, info)
    if config.threshold is None:
        # Held-out patches when there are any; else the training patches themselves (in-sample, so
        # optimistic, but the bias it corrects, the foreground prior of balanced crops, is the same
        # on them: BENCHMARKS.md, "study").
        held_out = bool(data.val_cases)
        calibration = calibrate_threshold(out, data.val_cases if held_out else data.train_cases)
        calibration["on"] = "validation" if held_out else "train"
        write_run_info(out / RUN_FILE, info | {"threshold": calibration["threshold"],
                                               "threshold_calibration": calibration})
    return out
