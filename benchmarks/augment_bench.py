"""Cost of the finetuning augmentation pipeline per crop, new light-sheet "default" vs the old one.

Both pipelines run in this process on the same synthetic vessel volume (a 96³ float patch already
normalized to [-1, 1], as the finetuning data module holds it), one crop per call. Also prints
each light-sheet transform's cost when it always fires (prob 1), and the skeleton transform.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/augment_bench.py [--patch 64] [--calls 200]
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import numpy as np
import torch
from monai.transforms import (
    Compose, EnsureTyped, RandAdjustContrastd, RandAffined, RandCropByPosNegLabeld, RandFlipd,
    RandGaussianNoised, RandRotate90d, RandScaleIntensityd, RandShiftIntensityd, SpatialPadd,
)

from selma3d.training.augment import KEYS, finetune_transforms


def old_default_pipeline(size: int, seed: int = 0) -> Compose:
    """``finetune_transforms(size, strength="default")`` as it was before the light-sheet augmentations."""
    transforms = [
        EnsureTyped(keys=KEYS, data_type="tensor", dtype=torch.float32, track_meta=False),
        SpatialPadd(keys=KEYS, spatial_size=(size,) * 3, mode="replicate"),
        RandCropByPosNegLabeld(keys=KEYS, label_key="label", spatial_size=(size,) * 3, pos=1, neg=1, num_samples=1),
        *[RandFlipd(keys=KEYS, prob=0.5, spatial_axis=axis) for axis in range(3)],
        RandRotate90d(keys=KEYS, prob=0.5, max_k=3, spatial_axes=(1, 2)),
        RandAffined(keys=KEYS, prob=0.2, rotate_range=(math.radians(10),) * 3, scale_range=(0.1,) * 3,
                    mode=("bilinear", "nearest"), padding_mode="reflection"),
        RandAdjustContrastd(keys="image", prob=0.2, gamma=(0.7, 1.3), retain_stats=True),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.2),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.2),
        RandGaussianNoised(keys="image", prob=0.15, std=0.05),
        EnsureTyped(keys=KEYS, data_type="tensor", dtype=torch.float32, track_meta=False),
    ]
    return Compose(transforms).set_random_state(seed=seed)


def sample(shape: int = 96, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:shape, :shape, :shape]
    label = ((y - shape / 2 - 8 * np.sin(z / 9)) ** 2 + (x - shape / 3) ** 2 < 16).astype(np.float32)
    image = np.clip(-0.8 + 1.6 * label + rng.normal(0, 0.1, label.shape), -1, 1).astype(np.float32)
    return {"image": torch.from_numpy(image[None]), "label": torch.from_numpy(label[None])}


def per_call_ms(fn, data, calls: int) -> float:
    fn(data)  # warm-up
    if hasattr(fn, "set_random_state"):  # every timing of a pipeline sees the same random draws
        fn.set_random_state(seed=0)
    start = time.perf_counter()
    for _ in range(calls):
        fn(data)
    return 1000 * (time.perf_counter() - start) / calls


def tiny_training_step():
    """One step of the tiny unet3d (features 8, 16, 32) on a 2 x 32³ batch, DiceCE, AdamW."""
    from selma3d.models import build_model
    from selma3d.training.losses import build_loss

    torch.manual_seed(0)
    model = build_model("unet3d", features=[8, 16, 32]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = build_loss("dicece")
    batch = torch.randn(2, 1, 32, 32, 32)
    target = (torch.rand(2, 1, 32, 32, 32) > 0.9).float()

    def step(_):
        optimizer.zero_grad()
        loss_fn(model(batch), target).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--calls", type=int, default=100, help="crops per timing")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timings; the fastest is reported")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = sample(max(96, args.patch + 16))
    arms = {
        "old default": old_default_pipeline(args.patch),
        "new default": finetune_transforms(args.patch, seed=0),
        "new default + skeleton": finetune_transforms(args.patch, seed=0, skeleton=True),
        "tiny unet3d step (2x32³)": tiny_training_step(),
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeats):  # interleaved, so a load change on the shared machine hits all arms
        for name, fn in arms.items():
            calls = max(3, args.calls // 10) if name.startswith("tiny") else args.calls
            times[name].append(per_call_ms(fn, data, calls))
    # The fastest of the interleaved timings: other processes on a shared machine only add time.
    ms = {name: float(np.min(t)) for name, t in times.items()}
    old = ms["old default"]
    print(f"torch threads 1; per {args.patch}³ crop ({args.calls} crops, same draws each time), "
          f"fastest of {args.repeats} interleaved timings:")
    for name, value in ms.items():
        print(f"  {name:28s} {value:7.1f} ms   ratio to old default {value / old:5.2f}")
    # Each transform of the new pipeline alone, forced to fire, on one crop (intensity ones in u space).
    crop = finetune_transforms(args.patch, seed=0, strength="none")(data)[0]
    crop["image"] = (crop["image"] + 1) / 2
    print("each transform when it fires (prob 1), ms:")
    for transform in finetune_transforms(args.patch, seed=0, strength="default", skeleton=True).transforms[3:-1]:
        forced = copy.deepcopy(transform)
        if hasattr(forced, "prob"):
            forced.prob = 1.0
        print(f"  {type(transform).__name__:28s} {per_call_ms(forced, crop, max(10, args.calls // 4)):6.2f}"
              f"   p = {getattr(transform, 'prob', 1.0):.2f}")


if __name__ == "__main__":
    main()
