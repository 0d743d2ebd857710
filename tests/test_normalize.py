"""The network normalization: percentiles with a noise floor, one spec for every stage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from selma3d.data.normalize import (
    DEFAULT_NORMALIZATION,
    Normalization,
    noise_sigma,
    normalize_percentile,
)
from selma3d.errors import InputError


def _blobs(shape=(40, 48, 48), sigma=20.0, background=400.0, signal=3000.0, n=12, seed=0):
    """Gaussian camera noise on a background, plus ``n`` bright blurred balls."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    clean = np.zeros(shape, np.float32)
    for _ in range(n):
        c = [rng.integers(4, s - 4) for s in shape]
        clean[c[0] - 2:c[0] + 3, c[1] - 2:c[1] + 3, c[2] - 2:c[2] + 3] = 1.0
    clean = gaussian_filter(clean, 1.0)
    clean /= max(clean.max(), 1e-6)
    return background + signal * clean + rng.normal(0, sigma, shape).astype(np.float32)


@pytest.mark.parametrize("n_blobs", [0, 12, 60])
def test_noise_sigma_measures_the_camera_noise_whatever_the_structure(n_blobs):
    image = _blobs(sigma=20.0, n=n_blobs)
    # sharp object edges (3000 counts over ~2 voxels) bias it upward as the structure gets dense
    # (+50 % at 14 % foreground): harmless, since the floor only matters without bright structure;
    # the plain standard deviation is 10-30x off
    bound = {0: 0.05, 12: 0.15, 60: 0.6}[n_blobs]
    assert noise_sigma(image) == pytest.approx(20.0, rel=bound)
    if n_blobs:
        assert image.std() > 10 * noise_sigma(image)


def test_with_real_structure_the_floor_changes_nothing():
    image = _blobs(n=12)
    np.testing.assert_array_equal(DEFAULT_NORMALIZATION(image), normalize_percentile(image))


def test_noise_only_patch_is_not_stretched_to_the_full_range():
    noise = _blobs(n=0)
    plain = normalize_percentile(noise)
    floored = DEFAULT_NORMALIZATION(noise)
    # plain percentiles put the brightest noise at +1 and 5 % of the voxels above 0.5
    assert plain.max() == 1.0 and (plain > 0.5).mean() > 0.03
    # with the floor the noise stays in the lower part of the range
    assert floored.max() < 0.4 and (floored > 0.5).mean() == 0.0
    lo, hi = DEFAULT_NORMALIZATION.statistics(noise)
    assert hi - lo == pytest.approx(DEFAULT_NORMALIZATION.noise_floor * noise_sigma(noise))


def test_dim_sparse_cells_keep_their_contrast_to_the_background():
    """One dim cell in a large patch: the 99.95th percentile is a noise value; the floor keeps
    the background well below the cell instead of stretching both over [-1, 1]."""
    image = _blobs(shape=(60, 64, 64), n=1, signal=250.0, seed=3)
    floored = DEFAULT_NORMALIZATION(image)
    plain = normalize_percentile(image)
    background = np.median(floored), np.median(plain)
    assert background[0] < background[1] - 0.2


def test_volume_statistics_agree_with_the_whole_array_and_read_few_slices():
    image = _blobs(shape=(64, 48, 48), n=30)

    class Counting:
        shape = image.shape
        reads = 0

        def __getitem__(self, key):
            Counting.reads += 1
            return image[key]

    lo, hi = DEFAULT_NORMALIZATION.volume_statistics(Counting(), max_slices=16)
    lo_all, hi_all = DEFAULT_NORMALIZATION.statistics(image)
    assert Counting.reads == 16
    assert lo == pytest.approx(lo_all, abs=30) and hi == pytest.approx(hi_all, rel=0.15)
    # without structure the floor applies to volumes too
    noise = _blobs(shape=(64, 48, 48), n=0)
    lo, hi = DEFAULT_NORMALIZATION.volume_statistics(noise)
    assert hi - lo == pytest.approx(12 * 20.0, rel=0.1)


def test_spec_round_trips_and_legacy_records_mean_plain_percentiles():
    spec = Normalization(low=1.0, high=99.0, noise_floor=6.0)
    assert Normalization.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    image = _blobs(n=0)
    for legacy in ({"method": "percentile", "low": 0.05, "high": 99.95, "per": "patch"},
                   {"scheme": "percentile", "low": 0.05, "high": 99.95, "estimated_per": "volume"}, None):
        old = Normalization.from_dict(legacy)
        assert old.noise_floor is None
        np.testing.assert_array_equal(old(image), normalize_percentile(image))
    with pytest.raises(InputError, match="unknown normalization"):
        Normalization.from_dict({"method": "zscore"})
    with pytest.raises(InputError, match="percentiles"):
        Normalization(low=50, high=10)


def test_finetune_predict_and_pretrained_plan_share_one_normalization(tiny_dataset, tmp_path):
    """The run records the spec it trained with; predict applies that spec; a pretrained encoder's
    spec (its adaptation plan) is what finetuning uses."""
    from selma3d.inference.predict import load_run
    from selma3d.models import build_model
    from selma3d.artifacts.encoder import save_encoder
    from selma3d.training.finetune import FinetuneConfig, finetune

    def config(out, **kw):
        options = dict(data=str(tiny_dataset), out=str(out), model_options={"features": [4, 8, 16]},
                       max_steps=1, batch_size=1, patch_size=(16, 16, 16), val_fraction=0.0,
                       progress=False, num_workers=0, structures=["cfos"])
        return FinetuneConfig(**(options | kw))

    run = finetune(config(tmp_path / "plain"))
    info = json.loads((run / "run.json").read_text())
    assert info["normalization"]["noise_floor"] == DEFAULT_NORMALIZATION.noise_floor
    assert info["normalization"]["per"] == "source"  # the whole patch here, the whole input in predict
    loaded = load_run(run)
    assert loaded.normalization == DEFAULT_NORMALIZATION

    # predict uses the recorded spec: a noise-only image differs from plain percentile scaling,
    # so the probabilities change when the record says "plain percentiles"
    noise = _blobs(shape=(16, 16, 16), n=0)
    from selma3d.inference.predict import predict_probabilities
    with_floor = predict_probabilities(loaded.model, noise, loaded.patch_size, normalize=loaded.normalization)
    info["normalization"]["noise_floor"] = None
    (run / "run.json").write_text(json.dumps(info))
    legacy = load_run(run)
    without = predict_probabilities(legacy.model, noise, legacy.patch_size, normalize=legacy.normalization)
    assert not np.allclose(with_floor, without)

    source = build_model("unet3d", features=[4, 8, 16])
    encoder_pt = save_encoder(source, tmp_path / "encoder.pt", method="test",
                              normalization=Normalization(noise_floor=5.0).to_dict() | {"per": "volume"})
    run = finetune(config(tmp_path / "pre", pretrained=str(encoder_pt), model=None, model_options={}))
    recorded = json.loads((run / "run.json").read_text())["normalization"]
    assert recorded["noise_floor"] == 5.0 and recorded["per"] == "source"


def test_a_large_volume_gets_the_same_statistics_in_memory_and_read_lazily():
    """`predict` on a NIfTI file normalizes the array in memory; on a TIFF folder or Zarr store it
    reads the volume lazily. Both must give one (lo, hi), or their masks differ."""
    from selma3d.data.normalize import MAX_STAT_VOXELS

    image = _blobs(shape=(20, 480, 440), n=40)
    assert image.size > MAX_STAT_VOXELS

    class Lazy:
        shape, dtype = image.shape, image.dtype
        reads = 0

        def __getitem__(self, key):
            Lazy.reads += 1
            return image[key]

    assert DEFAULT_NORMALIZATION.statistics(image) == DEFAULT_NORMALIZATION.statistics(Lazy())
    assert 0 < Lazy.reads <= 16  # a subsample of whole slices, never the whole volume
    small = image[:4, :100, :100]
    assert DEFAULT_NORMALIZATION.statistics(small) == DEFAULT_NORMALIZATION.statistics(_Small(small))


class _Small:
    """A lazy view of a small volume: read whole, like the in-memory array."""

    def __init__(self, array):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype

    def __getitem__(self, key):
        return self.array[key]
