"""The Lightning module of finetuning: a segmentation network, its loss, its learning-rate schedules
(constant, or nnssl's sawtooth for a pretrained encoder) and the validation metrics of each step.

Kept apart from the callbacks and the driver so that what a training step computes can be read,
and tested, on its own.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytorch_lightning as pl
import torch

from ...inference.predict import sliding_window_probabilities
from ...utils.schedules import warmup_cosine
from ..determinism import rng_state, seed_step, set_rng_state

#: the learning rate decays to this fraction of --lr (pretraining decays to 0)
LR_FLOOR = 0.01


def validation_metrics(structure_type: str, gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The challenge metric set of the type (selma3d.evaluation.metrics), or Dice if unavailable."""
    try:
        from ...evaluation.metrics import metrics_for_type
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
        from ..losses import build_loss

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
