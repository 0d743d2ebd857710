"""Annotated patches for supervised finetuning: loading, checking, splitting, batching.

Every patch is read once, normalized on the statistics of the whole patch
(:class:`selma3d.data.normalize.Normalization`: percentiles 0.05–99.95 → [-1, 1] with a noise
floor, DESIGN.md) and kept in memory: SELMA3D has a handful of small patches, and re-reading/normalizing them on
every step would cost more than the network on a CPU. Training draws foreground-balanced random
crops with MONAI augmentations (``selma3d.training.augment``); validation sees whole held-out
patches (sliding-window inference in the Lightning module).

Training crop number ``g`` (crop ``i`` of step ``s`` is ``g = s * batch_size + i``) is a pure
function of (seed, g): which patch (a seeded shuffle per pass over the patches) and every
augmentation draw (the pipeline reseeded from (seed, g)). So a run killed and resumed at step
``s`` sees exactly the crops the uninterrupted run saw, with any number of loader workers.
"""

from __future__ import annotations

import itertools
import math
import os
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pytorch_lightning as pl
import torch

from ..data.layout import AnnotatedCase, load_dataset
from ..data.normalize import DEFAULT_NORMALIZATION, Normalization
from ..errors import InputError
from ..io.nifti import grid_difference, read_nifti

@dataclass
class PatchCase:
    """One annotated patch in memory: normalized image and binary label, both (z, y, x)."""

    name: str
    structure: str
    type: str  # "spot" | "tree"
    image: np.ndarray  # float32 in [-1, 1]
    label: np.ndarray  # uint8 {0, 1}


def binarize_label(label: np.ndarray, where: str) -> np.ndarray:
    """``label > 0`` as uint8, after checking the mask is binary: {0} or {0, v} for one v > 0.

    The challenge binarizes with ``> 0``; several positive values (an instance map, a label
    with several classes) or negative values are rejected rather than silently merged.
    """
    values = np.unique(label)
    positive = values[values != 0]
    if (values < 0).any() or len(positive) > 1:
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise InputError(f"{where}: label is not a binary mask (values {shown}); expected 0 and one positive value")
    return (label > 0).astype(np.uint8)


def load_case(case: AnnotatedCase, structure_type: str | None = None,
              normalization: Normalization = DEFAULT_NORMALIZATION) -> PatchCase:
    """Read, check and normalize one annotated case (statistics of the whole patch)."""
    image_file, label_file = read_nifti(case.image), read_nifti(case.label)
    image, label = image_file.array, label_file.array
    if image.shape != label.shape:
        raise InputError(f"{case.image}: image shape {image.shape} differs from its label's {label.shape}")
    difference = grid_difference(image_file, label_file)
    if difference:
        raise InputError(f"{case.label}: not on its image's voxel grid ({difference})")
    return PatchCase(name=case.case, structure=case.structure, type=structure_type or case.type,
                     image=normalization(image), label=binarize_label(label, str(case.label)))


def split_cases(cases: Sequence, val_fraction: float = 0.2, seed: int = 0, folds: int | None = None,
                fold: int | None = None) -> tuple[list, list]:
    """(train, val) split, stratified by structure and reproducible for a seed.

    With ``folds``/``fold`` the cases of every structure are dealt round-robin into ``folds``
    folds after a seeded shuffle and fold ``fold`` is held out; otherwise ``val_fraction`` of
    each structure's cases (rounded, at least one when the structure has two or more cases and
    the fraction is positive) is held out.
    """
    if folds is not None or fold is not None:
        if folds is None or fold is None:
            raise InputError("--folds and --fold go together (e.g. --folds 5 --fold 0)")
        if folds < 2:
            raise InputError(f"--folds must be >= 2, got {folds}")
        if not 0 <= fold < folds:
            raise InputError(f"--fold must be in 0..{folds - 1}, got {fold}")
    elif not 0 <= val_fraction < 1:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    by_structure: dict[str, list] = defaultdict(list)
    for case in sorted(cases, key=lambda c: (c.structure, c.name if hasattr(c, "name") else c.case)):
        by_structure[case.structure].append(case)
    train, val = [], []
    for index, structure in enumerate(sorted(by_structure)):
        group = by_structure[structure]
        order = np.random.default_rng([seed, index]).permutation(len(group))
        shuffled = [group[i] for i in order]
        if folds is not None:
            held = {i for i in range(len(shuffled)) if i % folds == fold}
        else:
            n_val = int(round(len(shuffled) * val_fraction))
            if val_fraction > 0 and len(shuffled) >= 2:
                n_val = min(max(n_val, 1), len(shuffled) - 1)
            elif len(shuffled) < 2:
                n_val = 0
            held = set(range(n_val))
        val.extend(c for i, c in enumerate(shuffled) if i in held)
        train.extend(c for i, c in enumerate(shuffled) if i not in held)
    return train, val


def select_labels(cases: Sequence, labels: int | None, seed: int = 0) -> list:
    """The first ``labels`` cases of a seeded permutation of each structure's cases (all if None).

    Deterministic for a seed and nested across budgets (the 1-patch set is inside the 4-patch
    set), so every arm of a label-efficiency study trains on the same patches.
    """
    if labels is None:
        return list(cases)
    by_structure: dict[str, list] = defaultdict(list)
    for case in sorted(cases, key=lambda c: (c.structure, c.name if hasattr(c, "name") else c.case)):
        by_structure[case.structure].append(case)
    chosen = []
    for structure, group in sorted(by_structure.items()):
        rng = np.random.default_rng([int(seed), zlib.crc32(structure.encode())])
        chosen.extend(group[i] for i in sorted(rng.permutation(len(group))[: int(labels)]))
    return chosen


#: stream tags of the crop order and of the per-crop augmentation seeds
ORDER_STREAM = 0x0D3
CROP_STREAM = 0xC40


class IndexedCrops(torch.utils.data.Dataset):
    """Augmented training crop ``g`` for any ``g >= 0``: a function of (seed, g) alone.

    Passes of ``per_pass`` crops (every patch repeated to fill ``samples_per_pass``) are
    shuffled by a generator seeded by (seed, pass); the augmentation pipeline is reseeded from
    (seed, g) before each crop (MONAI's ``set_random_state``), so neither the worker that makes
    a crop nor the crops made before it matter.
    """

    def __init__(self, samples: Sequence[dict], transform, seed: int = 0, samples_per_pass: int = 64):
        if not samples:
            raise InputError("no training patches")
        self.samples = list(samples)
        self.transform = transform
        self.seed = int(seed)
        self.per_pass = len(self.samples) * max(1, math.ceil(samples_per_pass / len(self.samples)))
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, which: int) -> np.ndarray:
        """The shuffled crop order of pass ``which`` (cached: consecutive crops share it)."""
        if self._order is None or self._order[0] != which:
            rng = np.random.default_rng([self.seed, ORDER_STREAM, which])
            self._order = (which, rng.permutation(self.per_pass))
        return self._order[1]

    def __getitem__(self, g: int) -> dict:
        from monai.transforms import apply_transform

        which, position = divmod(int(g), self.per_pass)
        sample = self.samples[int(self.order(which)[position]) % len(self.samples)]
        crop_seed = np.random.SeedSequence([self.seed, CROP_STREAM, int(g)]).generate_state(1)[0]
        self.transform.set_random_state(seed=int(crop_seed))
        return apply_transform(self.transform, sample)


class CropIndices(torch.utils.data.Sampler):
    """The endless crop indices ``start, start + 1, ...`` (no length: Lightning runs one
    endless epoch until ``max_steps``)."""

    def __init__(self, start: int = 0):
        self.start = int(start)

    def __iter__(self):
        return itertools.count(self.start)


def _as_sample(case: PatchCase) -> dict:
    return {"image": case.image[None], "label": case.label[None], "structure": case.structure,
            "type": case.type, "name": case.name}


class FinetuneDataModule(pl.LightningDataModule):
    """Train/validation patches of ``DATA/annotated/train`` for the given structures."""

    def __init__(self, data_dir: str | os.PathLike, patch_size: Sequence[int], structures: Sequence[str] | None = None,
                 batch_size: int = 2, val_fraction: float = 0.2, folds: int | None = None,
                 fold: int | None = None, seed: int = 0, num_workers: int = 0, samples_per_epoch: int = 64,
                 augment_options: dict | None = None, normalization: Normalization = DEFAULT_NORMALIZATION):
        super().__init__()
        self.normalization = normalization
        self.data_dir = data_dir
        self.patch_size = tuple(int(p) for p in patch_size)
        self.structures = list(structures) if structures else None
        self.batch_size = int(batch_size)
        self.val_fraction = float(val_fraction)
        self.folds, self.fold = folds, fold
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.samples_per_epoch = int(samples_per_epoch)
        self.augment_options = dict(augment_options or {})
        #: training steps already done (a resumed run starts its crops there)
        self.start_step = 0
        self.train_cases: list[PatchCase] = []
        self.val_cases: list[PatchCase] = []
        self._train_samples: list[dict] | None = None
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {batch_size}")

    # Lightning calls setup() once per stage; the cases are loaded only the first time.
    def setup(self, stage: str | None = None) -> None:
        if self.train_cases:
            return
        dataset = load_dataset(self.data_dir)
        if self.structures:
            unknown = [s for s in self.structures if s not in dataset.structures]
            if unknown and dataset.structures:
                raise InputError(f"--structures: {', '.join(unknown)} not in {self.data_dir} "
                                 f"(has {', '.join(sorted(dataset.structures))})")
        cases = dataset.annotated_cases(split="train", structures=self.structures)
        if not cases:
            which = f" for structures {', '.join(self.structures)}" if self.structures else ""
            raise InputError(f"{self.data_dir}: no annotated training patches{which} "
                             "(expected annotated/train/<structure>/<case>_img.nii.gz and _label.nii.gz)")
        train, val = split_cases(cases, self.val_fraction, self.seed, self.folds, self.fold)
        self.train_cases = [load_case(c, dataset.type_of(c.structure), self.normalization) for c in train]
        self.val_cases = [load_case(c, dataset.type_of(c.structure), self.normalization) for c in val]

    @property
    def structure_names(self) -> list[str]:
        return sorted({c.structure for c in self.train_cases + self.val_cases})

    @property
    def structure_type(self) -> str:
        """``spot`` or ``tree`` when every structure has that type, else ``mixed``."""
        types = {c.type for c in self.train_cases + self.val_cases}
        return types.pop() if len(types) == 1 else "mixed"

    def train_transform(self):
        from .augment import finetune_transforms

        return finetune_transforms(self.patch_size, seed=self.seed, **self.augment_options)

    def train_samples(self) -> list[dict]:
        """The training patches as (1, z, y, x) tensors, padded once to at least the crop size.

        Done once rather than per sample: padding and numpy → tensor conversion on every
        draw cost as much as a tiny network's step. Padding uses the normalized background
        value (-1) and label 0 (not edge replication, which would smear labels).
        """
        if self._train_samples is None:
            samples = []
            for case in self.train_cases:
                pads = [(0, 0)] + [(max(0, p - s) // 2, max(0, p - s) - max(0, p - s) // 2)
                                   for p, s in zip(self.patch_size, case.image.shape)]
                image = np.pad(case.image[None], pads, constant_values=-1.0)
                label = np.pad(case.label[None], pads, constant_values=0).astype(np.float32)
                samples.append({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
            self._train_samples = samples
        return self._train_samples

    def train_dataset(self) -> IndexedCrops:
        return IndexedCrops(self.train_samples(), self.train_transform(), self.seed, self.samples_per_epoch)

    def train_dataloader(self):
        """Batches of crops ``start_step * batch_size`` onwards, endless and in order, so batch
        ``k`` holds the crops of step ``start_step + k`` whichever worker made it."""
        from monai.data import DataLoader

        return DataLoader(self.train_dataset(), batch_size=self.batch_size,
                          sampler=CropIndices(self.start_step * self.batch_size),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        from torch.utils.data import DataLoader

        samples = [_as_sample(c) for c in self.val_cases]
        for s in samples:
            s["image"] = torch.from_numpy(s["image"])
            s["label"] = torch.from_numpy(s["label"])
        return DataLoader(samples, batch_size=1, shuffle=False, num_workers=0, collate_fn=_collate_whole)

    def keep_labels(self, labels: int | None) -> None:
        """After :meth:`setup`: train on only ``labels`` patches per structure (:func:`select_labels`
        with this module's seed; the held-out patches are untouched). None keeps them all."""
        self.train_cases = select_labels(self.train_cases, labels, self.seed)
        self._train_samples = None


def _collate_whole(batch: list[dict]) -> dict:
    """Whole patches differ in size: batch size 1, tensors get a batch axis, strings stay strings."""
    (sample,) = batch
    return {k: (v[None] if torch.is_tensor(v) else v) for k, v in sample.items()}
