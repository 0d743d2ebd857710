"""The structure router (BioAI team): a small 3D CNN that tells spot-like from tree-like patches.

SELMA3D mixes structures of two kinds: compact blobs (c-Fos cells, nuclei, plaques) and thin
branching tubes (vessels, microglia). A model trained for one kind does better on it than one
model for all, so ``predict`` can ask the router which kind a patch is and send it to the model
trained for that kind. The network is fully convolutional with global average pooling: it
trains on random crops and classifies a whole patch of any size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..data.normalize import DEFAULT_NORMALIZATION
from ..errors import InputError

ROUTER_FILE = "router.pt"
ROUTER_FORMAT = "selma3d-router"
CLASSES = ("spot", "tree")


class RouterNet(nn.Module):
    """Three conv blocks (conv, instance norm, LeakyReLU, max-pool), global mean+max pooling, linear head."""

    def __init__(self, channels: Sequence[int] = (8, 16, 32), n_classes: int = 2):
        super().__init__()
        layers, previous = [], 1
        for i, width in enumerate(channels):
            layers += [nn.Conv3d(previous, width, 3, padding=1), nn.InstanceNorm3d(width, affine=True),
                       nn.LeakyReLU(0.1, inplace=True)]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool3d(2))
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * previous, n_classes)
        self.config = {"channels": [int(c) for c in channels], "n_classes": int(n_classes)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mean and max pooling: sparse structures (a few c-Fos cells) vanish in a mean alone
        features = self.features(x).flatten(2)
        return self.head(torch.cat([features.mean(dim=2), features.amax(dim=2)], dim=1))


class StructureRouter:
    """A trained :class:`RouterNet` plus how to feed it; ``classify`` returns ``spot`` or ``tree``."""

    def __init__(self, net: RouterNet, crop_size: int = 32, classes: Sequence[str] = CLASSES):
        self.net = net.eval()
        self.crop_size = int(crop_size)
        self.classes = tuple(classes)

    @torch.no_grad()
    def probabilities(self, array: np.ndarray, normalized: bool = False) -> np.ndarray:
        image = np.asarray(array, dtype=np.float32) if normalized else DEFAULT_NORMALIZATION(array)
        image = _pad_to(image, self.crop_size)
        device = next(self.net.parameters()).device
        logits = self.net(torch.from_numpy(np.ascontiguousarray(image))[None, None].to(device))
        return torch.softmax(logits, dim=1)[0].cpu().numpy()

    def classify(self, array: np.ndarray, normalized: bool = False) -> str:
        return self.classes[int(np.argmax(self.probabilities(array, normalized)))]


def _pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """Pad every axis shorter than ``size`` with the background value -1 (normalized images)."""
    pads = [(0, max(0, size - s)) for s in image.shape]
    return np.pad(image, pads, constant_values=-1.0) if any(p for _, p in pads) else image


def _random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    image = _pad_to(image, size)
    starts = [int(rng.integers(0, s - size + 1)) for s in image.shape]
    crop = image[tuple(slice(a, a + size) for a in starts)]
    for axis in range(3):
        if rng.random() < 0.5:
            crop = np.flip(crop, axis)
    return np.ascontiguousarray(crop)


def train_router(images: Sequence[np.ndarray], types: Sequence[str], steps: int = 150, batch_size: int = 8,
                 crop_size: int = 32, lr: float = 3e-3, seed: int = 0, channels: Sequence[int] = (8, 16, 32),
                 progress: bool = False) -> StructureRouter:
    """Train on random flipped crops of normalized images, drawing both types equally often."""
    if len(images) != len(types):
        raise ValueError("images and types differ in length")
    missing = [c for c in CLASSES if c not in set(types)]
    if missing:
        raise InputError(f"the router needs training patches of both types (spot and tree); none of type "
                         f"{', '.join(missing)}: add such structures to --structures")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    by_class = {c: [img for img, t in zip(images, types) if t == c] for c in CLASSES}
    net = RouterNet(channels, n_classes=len(CLASSES))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    from rich.progress import Progress

    net.train()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("training the router", total=steps)
        for _ in range(steps):
            labels = rng.integers(0, len(CLASSES), size=batch_size)
            crops = [_random_crop(by_class[CLASSES[k]][rng.integers(len(by_class[CLASSES[k]]))], crop_size, rng)
                     for k in labels]
            x = torch.from_numpy(np.stack(crops))[:, None]
            loss = nn.functional.cross_entropy(net(x), torch.from_numpy(labels))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.advance(task)
    return StructureRouter(net, crop_size=crop_size)


def save_router(router: StructureRouter, path: str | os.PathLike, **extra) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    torch.save({"format": ROUTER_FORMAT, "classes": list(router.classes), "crop_size": router.crop_size,
                "net": router.net.config, "state_dict": router.net.state_dict(), **extra}, tmp)
    os.replace(tmp, path)
    return path


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
    if not isinstance(payload, dict) or payload.get("format") != ROUTER_FORMAT:
        raise InputError(f"--router {path}: not a selma3d router checkpoint")
    net = RouterNet(payload["net"]["channels"], payload["net"]["n_classes"])
    net.load_state_dict(payload["state_dict"])
    if device is not None:
        net.to(device)
    return StructureRouter(net, crop_size=payload["crop_size"], classes=payload["classes"])


def router_accuracy(router: StructureRouter, images: Sequence[np.ndarray], types: Sequence[str]) -> float:
    if not images:
        return float("nan")
    hits = [router.classify(img, normalized=True) == t for img, t in zip(images, types)]
    return float(np.mean(hits))


def finetune_router(data: str | os.PathLike, out: str | os.PathLike, structures: Sequence[str] | None = None,
                    steps: int = 200, batch_size: int = 8, crop_size: int = 32, lr: float = 3e-3,
                    val_fraction: float = 0.2, seed: int = 0, progress: bool = True) -> Path:
    """``selma3d finetune --router``: train on ``annotated/train`` patches, write ``OUT/router.pt``.

    Labels are the structures' types from the dataset; a stratified held-out part of the
    patches measures accuracy, recorded in ``OUT/router.json``.
    """
    from ..data.layout import load_dataset
    from .finetune_data import load_case, split_cases

    dataset = load_dataset(data)
    cases = dataset.annotated_cases(split="train", structures=list(structures) if structures else None)
    if not cases:
        raise InputError(f"{data}: no annotated training patches to train the router on")
    train, val = split_cases(cases, val_fraction, seed)
    train_cases = [load_case(c, dataset.type_of(c.structure)) for c in train]
    val_cases = [load_case(c, dataset.type_of(c.structure)) for c in val]
    router = train_router([c.image for c in train_cases], [c.type for c in train_cases], steps=steps,
                          batch_size=batch_size, crop_size=crop_size, lr=lr, seed=seed, progress=progress)
    accuracy = router_accuracy(router, [c.image for c in val_cases], [c.type for c in val_cases])
    out = Path(out)
    path = save_router(router, out / ROUTER_FILE, val_accuracy=accuracy)
    summary = {"format": "selma3d-router-run", "router": ROUTER_FILE, "classes": list(router.classes),
               "structures": sorted({c.structure for c in train_cases}), "steps": steps, "crop_size": crop_size,
               "val_cases": len(val_cases), "val_accuracy": None if np.isnan(accuracy) else accuracy}
    tmp = out / ".router.json.partial"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "router.json")
    return path
