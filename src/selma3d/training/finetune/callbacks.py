"""The callbacks that turn a finetuning run into files: ``checkpoints/last.ckpt`` at each step
boundary (:class:`StepCheckpoint`), ``curves.csv``/``curves.png`` (:class:`CurvesWriter`) and
``model.pt`` at the best validation step (:class:`BestModelKeeper`).

Their state travels in every checkpoint, so a resumed run continues the curves and the best model
where the killed one stopped instead of losing or repeating them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytorch_lightning as pl

from ...artifacts.run import MODEL_FILE, save_model_file
from ...utils.atomic import atomic_path
from ..determinism import kill_point

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
CURVES_CSV = "curves.csv"
CURVES_PNG = "curves.png"


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
