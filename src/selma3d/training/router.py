"""The structure router (BioAI team): a small 3D CNN that tells spot-like from tree-like patches.

SELMA3D mixes structures of two kinds: compact blobs (c-Fos cells, nuclei, plaques) and thin
branching tubes (vessels, microglia). A model trained for one kind does better on it than one
model for all, so ``predict`` can ask the router which kind a patch is and send it to the model
trained for that kind. The network is fully convolutional with global average pooling: it
trains on random crops and classifies a whole patch of any size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

# the network, its file (and its use) live with the models and the artifacts; re-exported here
from ..artifacts.router import ROUTER_FILE, ROUTER_FORMAT, load_router, save_router  # noqa: F401
from ..models.router import CLASSES, RouterNet, StructureRouter, pad_to  # noqa: F401
from ..errors import InputError
from ..utils.atomic import write_json
from ..utils.progress import progress_bar


def _random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    image = pad_to(image, size)
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
    net.train()
    with progress_bar(progress, "router", unit="steps") as bar:
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
    write_json(out / "router.json", summary, default=None)
    return path
