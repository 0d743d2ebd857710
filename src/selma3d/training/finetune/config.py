"""Every option of a finetuning run (:class:`FinetuneConfig`, the CLI's flags), parsed and checked.

One place for the options and their validation, so the CLI, ``--config`` files, ``--resume`` (which
rebuilds the config from ``run.json``) and the study runner all get the same one-line errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ...errors import InputError
from ...utils.triples import parse_triple

DEFAULT_MODEL = "unet3d"
SCHEDULES = ("constant", "sawtooth")
#: the probability threshold when neither --threshold nor the calibration gives one
DEFAULT_THRESHOLD = 0.5


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
        from ..losses import LOSS_NAMES

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


def parse_model_options(pairs: Sequence[str]) -> dict:
    """``["features=[4,8,16]", "norm=batch"]`` → dict (see :func:`selma3d.utils.options.parse_options`)."""
    from ...utils.options import parse_options

    return parse_options(list(pairs or []), "--model-option")
