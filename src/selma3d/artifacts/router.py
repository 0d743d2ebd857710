"""The structure router artifact (``router.pt``) of ``selma3d finetune --router``.

File format (``torch.save`` of a dict)::

    {"format": "selma3d-router", "version": 1, "classes": ["spot", "tree"], "crop_size": 32,
     "net": {"channels": [...], "n_classes": 2}, "state_dict": ..., **extra (e.g. val_accuracy)}

Files written before ``version`` was recorded load as version 1.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import InputError
from ..models.router import RouterNet, StructureRouter
from ..utils.atomic import torch_save

ROUTER_FILE = "router.pt"
ROUTER_FORMAT = "selma3d-router"
ROUTER_VERSION = 1
READABLE_ROUTER_VERSIONS = (1,)


def save_router(router: StructureRouter, path: str | os.PathLike, **extra) -> Path:
    """Write ``router.pt`` atomically."""
    return torch_save({"format": ROUTER_FORMAT, "version": ROUTER_VERSION, "classes": list(router.classes),
                       "crop_size": router.crop_size, "net": router.net.config,
                       "state_dict": router.net.state_dict(), **extra}, path)


def validate_router(payload, path: str | os.PathLike) -> dict:
    """Check a loaded ``router.pt`` payload; :class:`InputError` names ``path``."""
    if not isinstance(payload, dict) or payload.get("format") != ROUTER_FORMAT:
        raise InputError(f"--router {path}: not a selma3d router checkpoint")
    version = payload.get("version", 1)
    if version not in READABLE_ROUTER_VERSIONS:
        raise InputError(f"--router {path}: router format version {version!r}; this selma3d reads version(s) "
                         f"{', '.join(map(str, READABLE_ROUTER_VERSIONS))} (a newer selma3d wrote it?)")
    return payload


def load_router(path: str | os.PathLike, device: torch.device | str | None = None) -> StructureRouter:
    """Load ``router.pt`` (or the run folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / ROUTER_FILE
    if not path.is_file():
        raise InputError(f"--router {path}: no such file (train one with `selma3d finetune --router`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(f"--router {path}: cannot read ({type(exc).__name__}: {exc})") from None
    payload = validate_router(payload, path)
    net = RouterNet(payload["net"]["channels"], payload["net"]["n_classes"])
    net.load_state_dict(payload["state_dict"])
    if device is not None:
        net.to(device)
    return StructureRouter(net, crop_size=payload["crop_size"], classes=payload["classes"])
