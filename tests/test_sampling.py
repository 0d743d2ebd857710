"""Patch sampling from unannotated volumes: foreground filter, downsampling, balancing,
workers, bounded reads."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch

from selma3d.data.sampling import PatchDataset, PatchSampler, VolumeSource, read_window, volumes_from_dataset
from selma3d.errors import InputError


class CountingVolume:
    """Array-like that records every window read (to prove only the patch is read)."""

    def __init__(self, array):
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.reads: list[tuple[slice, ...]] = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.array[key]


def half_bright(shape=(32, 64, 64), seed=0):
    """Left half (x < 32) dark (100), right half bright (1000), plus noise."""
    rng = np.random.default_rng(seed)
    vol = np.full(shape, 100, np.int16)
    vol[..., shape[2] // 2:] = 1000
    return (vol + rng.integers(0, 50, shape)).astype(np.int16)


def test_foreground_filter_is_respected():
    vol = half_bright()
    sampler = PatchSampler([VolumeSource("vessel", "v", array=vol)], 16, fg_threshold=500,
                           fg_fraction=0.5, normalize=False)
    rng = np.random.default_rng(0)
    fractions = []
    for _ in range(40):
        item = sampler.sample(rng)
        fractions.append((item["image"] > 500).mean())
    assert min(fractions) >= 0.5
    assert sampler.stats["rejected"] > 0  # the dark half was actually drawn and rejected
    # without the filter, dark patches do come out
    plain = PatchSampler([VolumeSource("vessel", "v", array=vol)], 16, fg_threshold=None, normalize=False)
    assert min((plain.sample(rng)["image"] > 500).mean() for _ in range(40)) < 0.5


def test_dim_volume_falls_back_with_a_warning():
    vol = np.full((16, 32, 32), 100, np.int16)
    sampler = PatchSampler([VolumeSource("cfos", "dim", array=vol)], 8, max_tries=5)
    with pytest.warns(RuntimeWarning, match="dim: no patch with"):
        item = sampler.sample(np.random.default_rng(0))
    assert item["image"].shape == (1, 8, 8, 8)
    assert sampler.stats["fallbacks"] == 1


def test_downsampling_reads_a_larger_window_and_average_pools():
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 1000, (20, 60, 60)).astype(np.int16)
    sampler = PatchSampler([VolumeSource("vessel", "v", array=vol)], (4, 5, 5), downsample_xy=3,
                           fg_threshold=None, normalize=False)
    item = sampler.sample(np.random.default_rng(0))
    assert item["image"].shape == (1, 4, 5, 5)
    z, y, x = item["start"]
    window = vol[z:z + 4, y:y + 15, x:x + 15].astype(np.float64)
    expected = window.reshape(4, 5, 3, 5, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(item["image"][0], expected, rtol=1e-5)


def test_patches_are_normalized_with_volume_percentiles():
    vol = half_bright()
    sampler = PatchSampler([VolumeSource("vessel", "v", array=vol)], 16, fg_threshold=None)
    item = sampler.sample(np.random.default_rng(0))
    assert item["image"].dtype == np.float32
    lo, hi = sampler.percentiles["v"]
    assert 90 <= lo <= 150 and 1000 <= hi <= 1050
    # recomputed from the stored start and the volume's stored percentiles: [lo, hi] -> [-1, 1],
    # clipped (Gaussian noise, so that the volume's percentiles are not the patch's min and max)
    vol = (half_bright() + np.random.default_rng(1).normal(0, 40, (32, 64, 64))).astype(np.int16)
    sampler = PatchSampler([VolumeSource("vessel", "v", array=vol)], 16, fg_threshold=None)
    item = sampler.sample(np.random.default_rng(0))
    lo, hi = sampler.percentiles["v"]
    z, y, x = item["start"]
    window = vol[z:z + 16, y:y + 16, x:x + 16].astype(np.float64)
    expected = np.clip((window - lo) / (hi - lo) * 2 - 1, -1, 1)
    np.testing.assert_allclose(item["image"][0], expected, rtol=0, atol=2e-6)
    assert (expected > -1).any() and (expected < 1).any()  # not all clipped: the scaling is seen


def test_structures_are_balanced_not_volumes():
    small = np.full((8, 16, 16), 1000, np.int16)
    sources = [VolumeSource("vessel", f"vessel_{i}", array=small) for i in range(6)]
    sources += [VolumeSource("cfos", "cfos_0", array=small), VolumeSource("plaque", "plaque_0", array=small)]
    sampler = PatchSampler(sources, 8, normalize=False)
    rng = np.random.default_rng(0)
    counts = Counter(sampler.structures[sampler.sample(rng)["structure"]] for _ in range(900))
    assert set(counts) == {"vessel", "cfos", "plaque"}
    for n in counts.values():
        assert abs(n - 300) < 60, counts  # ~1/3 each although vessel has 6 of the 8 volumes


def test_only_the_patch_window_is_read():
    big = CountingVolume(half_bright((64, 128, 128)))
    sampler = PatchSampler([VolumeSource("vessel", "v", array=big)], (8, 16, 16), downsample_xy=2,
                           fg_threshold=500, fg_fraction=0.1,
                           percentiles={"v": (0.0, 1000.0)})
    sampler.sample(np.random.default_rng(0))
    assert big.reads
    for key in big.reads:
        extents = [s.stop - s.start for s in key]
        assert extents == [8, 32, 32]  # one window per try, never the volume


def test_small_volume_is_padded_not_refused():
    vol = np.arange(4 * 6 * 6, dtype=np.int16).reshape(4, 6, 6)
    out = read_window(vol, (0, 0, 0), (8, 8, 8))
    assert out.shape == (8, 8, 8)
    np.testing.assert_array_equal(out[:4, :6, :6], vol)


def test_workers_and_ranks_draw_different_patches():
    vol = np.random.default_rng(0).integers(0, 2000, (32, 64, 64)).astype(np.int16)
    sources = [VolumeSource("vessel", "v", array=vol)]
    dataset = PatchDataset(sources, 8, fg_threshold=None, seed=3)
    dataset.prepare()
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2)
    batches = []
    for i, batch in enumerate(loader):
        batches.append(batch["image"])
        if i == 3:
            break
    images = torch.cat(batches).flatten(1)
    assert len({tuple(row.tolist()) for row in images}) == len(images)  # no worker repeats another
    first = lambda ds: next(iter(ds))["image"]  # noqa: E731
    rank0 = PatchDataset(sources, 8, fg_threshold=None, seed=3, rank=0)
    rank1 = PatchDataset(sources, 8, fg_threshold=None, seed=3, rank=1)
    resumed = PatchDataset(sources, 8, fg_threshold=None, seed=3, rank=0, start_step=100)
    assert torch.equal(first(rank0), first(PatchDataset(sources, 8, fg_threshold=None, seed=3, rank=0)))
    assert not torch.equal(first(rank0), first(rank1))
    assert not torch.equal(first(rank0), first(resumed))


def test_tiff_dataset_stream(tiny_dataset):
    sources = volumes_from_dataset(tiny_dataset)
    assert {s.structure for s in sources} >= {"vessel", "cfos"}
    dataset = PatchDataset(sources, 16, fg_threshold=500, fg_fraction=0.02, seed=0)
    percentiles = dataset.prepare()
    assert set(percentiles) == {s.name for s in sources}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        it = iter(dataset)
        items = [next(it) for _ in range(8)]
    for item in items:
        assert item["image"].shape == (1, 16, 16, 16) and item["image"].dtype == torch.float32
        assert item["volume"] in percentiles
        assert dataset.structures[item["structure"]] == item["volume"].split("/")[0]


def test_bad_input_is_named(tmp_path):
    with pytest.raises(InputError, match="no unannotated volumes"):
        (tmp_path / "unannotated").mkdir()
        volumes_from_dataset(tmp_path)
    with pytest.raises(InputError, match="patch size"):
        PatchSampler([VolumeSource("vessel", "v", array=np.zeros((4, 4, 4)))], (4, 4))
    with pytest.raises(InputError, match="3D"):
        PatchSampler([VolumeSource("vessel", "flat", array=np.zeros((4, 4)))], 2).volume(0)
