"""The finetuned run folder: everything ``selma3d predict`` needs, in two files.

``RUN/model.pt`` (``torch.save`` of a dict)::

    {"format": "selma3d-model", "model": model.config, "state_dict": ..., "step", "val_dice",
     "patch_size", "threshold", "downsample_xy"}

``RUN/run.json``::

    {"format": "selma3d-run", "version": 1, "status": "training" | "finished",
     "model", "patch_size", "normalization", "threshold", "overlap", "downsample_xy",
     "structures", "type", "split", "training" (the full resolved config), "best", "versions",
     ["threshold_calibration", "steps_done", "pretrained_plan"]}

``normalization`` is :meth:`~selma3d.data.normalize.Normalization.to_dict` plus ``"per":
"source"``: its statistics are those of each whole input (an annotated patch in finetuning, the
whole file or volume in ``predict``), never of a network window. Runs before this record say
``"per": "patch"`` for the same rule; ``per`` is informative only.

Runs written before ``version`` and ``downsample_xy`` were recorded load as version 1 at full
resolution (``downsample_xy`` 1). :class:`FinetunedRun` is the typed view of a loaded run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError, Selma3dError
from ..utils.atomic import torch_save, write_json
from ..utils.devices import default_device

MODEL_FILE = "model.pt"
RUN_FILE = "run.json"
MODEL_FORMAT = "selma3d-model"
RUN_FORMAT = "selma3d-run"
RUN_VERSION = 1
READABLE_RUN_VERSIONS = (1,)


@dataclass
class FinetunedRun:
    """A finetuned model with the settings it was trained under (``run.json``)."""

    path: Path
    model: torch.nn.Module
    info: dict = field(default_factory=dict)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(p) for p in self.info["patch_size"])

    @property
    def threshold(self) -> float:
        return float(self.info.get("threshold", 0.5))

    @property
    def type(self) -> str:
        return str(self.info.get("type", "mixed"))

    @property
    def structures(self) -> list[str]:
        return list(self.info.get("structures") or [])

    @property
    def downsample_xy(self) -> int:
        """The xy average-pooling the model was trained at (1: full resolution)."""
        return int(self.info.get("downsample_xy") or 1)

    @property
    def normalization(self):
        """The normalization the run was trained with (runs without a record: plain percentiles)."""
        from ..data.normalize import Normalization

        try:
            return Normalization.from_dict(self.info.get("normalization"))
        except InputError as exc:
            raise Selma3dError(f"{self.path}: {exc}") from None


def save_model_file(model: torch.nn.Module, path: str | os.PathLike, **extra) -> Path:
    """Write ``{"format", "model": config, "state_dict", **extra}`` atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return torch_save({"format": MODEL_FORMAT, "model": dict(model.config), "state_dict": state, **extra}, path)


def write_run_info(path: str | os.PathLike, info: dict) -> Path:
    """``run.json`` atomically, stamped with the format and version."""
    return write_json(path, {"format": RUN_FORMAT, "version": RUN_VERSION, **info})


def validate_run_info(info, path: str | os.PathLike) -> dict:
    """Check a ``run.json`` payload; :class:`InputError` names ``path`` and what is wrong."""
    if not isinstance(info, dict):
        raise InputError(f"{path}: not a selma3d run description (a JSON object expected)")
    if info.get("format", RUN_FORMAT) != RUN_FORMAT:
        raise InputError(f"{path}: format {info.get('format')!r}, expected {RUN_FORMAT!r}")
    version = info.get("version", 1)
    if version not in READABLE_RUN_VERSIONS:
        raise InputError(f"{path}: run format version {version!r}; this selma3d reads version(s) "
                         f"{', '.join(map(str, READABLE_RUN_VERSIONS))} (a newer selma3d wrote it?)")
    patch = info.get("patch_size")
    if not isinstance(patch, list) or len(patch) != 3 or not all(isinstance(p, int) and p > 0 for p in patch):
        raise InputError(f"{path}: patch_size must be three positive integers, got {patch!r}")
    factor = info.get("downsample_xy", 1)
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise InputError(f"{path}: downsample_xy must be a positive integer, got {factor!r}")
    return info


def read_run_info(run_dir: str | os.PathLike) -> dict:
    """``RUN/run.json``, validated."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise InputError(f"{run_dir}: {RUN_FILE} missing; is this a finished `selma3d finetune` run?")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc})") from None
    return validate_run_info(info, path)


def load_model_file(path: str | os.PathLike) -> torch.nn.Module:
    """The network stored in a ``model.pt`` (on the CPU)."""
    from ..models import build_model

    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise InputError(f"{path}: not a selma3d model file")
    model = build_model(**payload["model"])
    model.load_state_dict(payload["state_dict"])
    return model


def load_finetuned_run(run_dir: str | os.PathLike, device: torch.device | str | None = None,
                       cls: type[FinetunedRun] = FinetunedRun) -> FinetunedRun:
    """Load ``RUN/model.pt`` and ``RUN/run.json``; raises :class:`InputError` naming what is missing."""
    run_dir = Path(run_dir)
    model_path = run_dir / MODEL_FILE
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run folder not found (expected the --out folder of `selma3d finetune`)")
    for needed in (model_path, run_dir / RUN_FILE):
        if not needed.is_file():
            raise InputError(f"{run_dir}: {needed.name} missing; is this a finished `selma3d finetune` run?")
    info = read_run_info(run_dir)
    model = load_model_file(model_path)
    model.to(device or default_device()).eval()
    return cls(path=run_dir, model=model, info=info)
