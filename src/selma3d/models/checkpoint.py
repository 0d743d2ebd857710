"""Encoder checkpoints: what self-supervised pretraining writes and finetuning starts from.

File format (``torch.save`` of a plain dict, readable with ``weights_only=True``)::

    {"format": "selma3d-encoder", "version": 1, "model": model.config,
     "encoder_state": model.encoder.state_dict(), **extra}

``model`` names the architecture, so ``finetune --pretrained enc.pt`` needs no ``--model``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from selma3d.errors import Selma3dError
from selma3d.models._common import canonical
from selma3d.models.registry import MODEL_NAMES, MODELS, build_model

FORMAT = "selma3d-encoder"
VERSION = 1
_RESERVED = ("format", "version", "model", "encoder_state")


def save_encoder(model: nn.Module, path: str | os.PathLike, **extra) -> Path:
    """Write ``model``'s encoder weights and config atomically (temporary file, then rename).

    ``extra`` holds plain values (numbers, strings, lists, dicts, tensors), e.g. the SSL method
    and step, and must not use the reserved keys format/version/model/encoder_state.
    """
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise Selma3dError(f"save_encoder: extra keys {clash} are reserved")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": canonical(dict(model.config)),
        "encoder_state": {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()},
        **extra,
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_encoder_checkpoint(path: str | os.PathLike) -> dict:
    """Read and validate an encoder checkpoint (on the CPU); ``Selma3dError`` says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise Selma3dError(f"encoder checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a torch file, disallowed pickled objects, ...
        raise Selma3dError(f"cannot read encoder checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise Selma3dError(f"{path} is not a selma3d encoder checkpoint (format {found!r}, expected {FORMAT!r})")
    config, state = ckpt.get("model"), ckpt.get("encoder_state")
    if not isinstance(config, dict) or config.get("name") not in MODEL_NAMES:
        raise Selma3dError(f"encoder checkpoint {path} names no known model (known: {', '.join(MODEL_NAMES)})")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise Selma3dError(f"encoder checkpoint {path} has no valid encoder_state")
    return ckpt


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


def model_from_encoder_checkpoint(path: str | os.PathLike, out_channels: int = 1, **overrides) -> nn.Module:
    """Build the checkpoint's architecture (with ``out_channels`` and any decoder ``overrides``)
    and load its encoder weights; overriding an encoder option raises ``Selma3dError``."""
    ckpt = load_encoder_checkpoint(path)
    config = dict(ckpt["model"])
    name = config.pop("name")
    config.update(overrides, out_channels=out_channels)
    return load_encoder_into(build_model(name, **config), ckpt)
