"""The encoder checkpoint (``encoder.pt``): what self-supervised pretraining writes and
finetuning starts from, with the *adaptation plan* that says how to use it.

File format (``torch.save`` of a plain dict, readable with ``weights_only=True``)::

    {"format": "selma3d-encoder", "version": 2,
     "model": model.config,                 # architecture name + options
     "encoder_state": model.encoder.state_dict(),
     # the adaptation plan (all optional in the file; see AdaptationPlan):
     "method", "method_options", "method_recipe", "steps",
     "normalization", "spacing", "spacing_by_structure", "downsample_xy", "patch_size", "sample_size",
     "structures"}

Version 1 files (before ``spacing`` was recorded) load unchanged; a file of a newer version
is refused with a message naming it. ``model`` names the architecture, so
``finetune --pretrained enc.pt`` needs no ``--model``; :class:`AdaptationPlan` is what the
downstream side reads (nnssl's name): the normalization, the xy downsampling and the patch size
the encoder learned under. ``patch_size`` is the run's ``--patch-size`` (the crop size to finetune
with); ``sample_size`` the (z, y, x) window the sampler actually read for it: the same for 3D
methods, one slice of it (``[1, y, x]``) for a 2D method such as SimCLR (absent in files written
before it was recorded: then it is ``patch_size``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import Selma3dError
from ..models import canonical
from ..models.registry import MODEL_NAMES, MODELS, build_model
from ..utils.atomic import torch_save

FORMAT = "selma3d-encoder"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_RESERVED = ("format", "version", "model", "encoder_state")


@dataclass(frozen=True)
class AdaptationPlan:
    """How an encoder was pretrained, so finetuning and prediction can match it.

    ``downsample_xy`` > 1 means the encoder saw volumes average-pooled by that factor in y and x;
    finetuning crops and prediction inputs are pooled the same way (``finetune --pretrained``).
    """

    model: dict
    method: str | None = None
    method_options: dict = field(default_factory=dict)
    method_recipe: dict = field(default_factory=dict)
    normalization: dict | None = None
    spacing: tuple[float, float, float] | None = None  # the same for every structure; else None
    spacing_by_structure: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    downsample_xy: int = 1
    patch_size: tuple[int, int, int] | None = None
    sample_size: tuple[int, int, int] | None = None  # the sampler's window (a 2D method: one slice)
    structures: list[str] | None = None
    steps: int | None = None

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "AdaptationPlan":
        """The plan of a validated checkpoint dict (missing entries: the defaults)."""
        spacing, patch = ckpt.get("spacing"), ckpt.get("patch_size")
        sample = ckpt.get("sample_size") or patch
        return cls(model=dict(ckpt["model"]), method=ckpt.get("method"),
                   method_options=dict(ckpt.get("method_options") or {}),
                   method_recipe=dict(ckpt.get("method_recipe") or {}),
                   normalization=ckpt.get("normalization"),
                   spacing=tuple(float(s) for s in spacing) if spacing else None,
                   spacing_by_structure={str(k): tuple(float(s) for s in v)
                                         for k, v in (ckpt.get("spacing_by_structure") or {}).items()},
                   downsample_xy=int(ckpt.get("downsample_xy") or 1),
                   patch_size=tuple(int(p) for p in patch) if patch else None,
                   sample_size=tuple(int(p) for p in sample) if sample else None,
                   structures=list(ckpt["structures"]) if ckpt.get("structures") else None,
                   steps=ckpt.get("steps"))

    def normalization_object(self):
        """The :class:`~selma3d.data.normalize.Normalization` to use (default when unrecorded)."""
        from ..data.normalize import DEFAULT_NORMALIZATION, Normalization

        return Normalization.from_dict(self.normalization) if self.normalization else DEFAULT_NORMALIZATION


def save_encoder(model: nn.Module, path: str | os.PathLike, **extra) -> Path:
    """Write ``model``'s encoder weights and config atomically (temporary file, then rename).

    ``extra`` holds plain values (numbers, strings, lists, dicts, tensors): the plan entries
    (method, normalization, downsample_xy, ...) and anything else, e.g. the step; it must not use
    the reserved keys format/version/model/encoder_state.
    """
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise Selma3dError(f"save_encoder: extra keys {clash} are reserved")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": canonical(dict(model.config)),
        "encoder_state": {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()},
        **extra,
    }
    validate_encoder(payload, path)
    return torch_save(payload, path)


def validate_encoder(ckpt, path: str | os.PathLike) -> dict:
    """Check a loaded checkpoint dict; :class:`Selma3dError` names ``path`` and what is wrong."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise Selma3dError(f"{path} is not a selma3d encoder checkpoint (format {found!r}, expected {FORMAT!r})")
    version = ckpt.get("version", 1)
    if version not in READABLE_VERSIONS:
        raise Selma3dError(f"encoder checkpoint {path} has format version {version!r}; this selma3d reads "
                           f"versions {', '.join(map(str, READABLE_VERSIONS))} (a newer selma3d wrote it?)")
    config, state = ckpt.get("model"), ckpt.get("encoder_state")
    if not isinstance(config, dict) or config.get("name") not in MODEL_NAMES:
        raise Selma3dError(f"encoder checkpoint {path} names no known model (known: {', '.join(MODEL_NAMES)})")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise Selma3dError(f"encoder checkpoint {path} has no valid encoder_state")
    factor = ckpt.get("downsample_xy", 1)
    if factor is not None and (not isinstance(factor, int) or isinstance(factor, bool) or factor < 1):
        raise Selma3dError(f"encoder checkpoint {path}: downsample_xy must be a positive integer, got {factor!r}")
    return ckpt


def load_encoder_checkpoint(path: str | os.PathLike) -> dict:
    """Read and validate an encoder checkpoint (on the CPU); ``Selma3dError`` says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise Selma3dError(f"encoder checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a torch file, disallowed pickled objects, ...
        raise Selma3dError(f"cannot read encoder checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    return validate_encoder(ckpt, path)


def load_plan(path: str | os.PathLike) -> AdaptationPlan:
    """The adaptation plan of the encoder checkpoint at ``path``."""
    return AdaptationPlan.from_checkpoint(load_encoder_checkpoint(path))


def load_encoder_into(model: nn.Module, ckpt: dict | str | os.PathLike) -> nn.Module:
    """Copy a checkpoint's encoder weights into ``model`` after checking they fit exactly.

    The model name and every option that shapes the encoder (``encoder_options`` of the model
    class) must match; then the state dict is loaded strictly. Returns ``model``.
    """
    if not isinstance(ckpt, dict):
        ckpt = load_encoder_checkpoint(ckpt)
    saved, current = canonical(ckpt["model"]), canonical(model.config)
    if saved["name"] != current["name"]:
        raise Selma3dError(
            f"encoder checkpoint is for model {saved['name']!r}, not {current['name']!r}"
        )
    options = MODELS[current["name"]].encoder_options
    differ = [f"{k}: checkpoint {saved.get(k)!r} vs model {current.get(k)!r}"
              for k in options if saved.get(k) != current.get(k)]
    if differ:
        raise Selma3dError(f"encoder checkpoint does not fit this {current['name']}: " + "; ".join(differ))
    own = model.encoder.state_dict()
    state = ckpt["encoder_state"]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:8])}" + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""))
        raise Selma3dError("encoder checkpoint weights do not match the model: " + "; ".join(parts))
    model.encoder.load_state_dict(state, strict=True)
    return model


def model_from_encoder_checkpoint(ckpt: dict | str | os.PathLike, out_channels: int = 1, **overrides) -> nn.Module:
    """Build the checkpoint's architecture (with ``out_channels`` and any decoder ``overrides``)
    and load its encoder weights; overriding an encoder option raises ``Selma3dError``. ``ckpt``
    is a checkpoint already loaded (:func:`load_encoder_checkpoint`) or its path."""
    if not isinstance(ckpt, dict):
        ckpt = load_encoder_checkpoint(ckpt)
    config = dict(ckpt["model"])
    name = config.pop("name")
    config.update(overrides, out_channels=out_channels)
    return load_encoder_into(build_model(name, **config), ckpt)
