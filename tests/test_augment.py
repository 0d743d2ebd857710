"""Finetuning and SSL augmentation pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selma3d.errors import Selma3dError
from selma3d.training.augment import finetune_transforms, make_views, ssl_view_transforms


def sample(shape=(1, 12, 40, 40), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1, 1, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[0, 5:7, 30:33, 30:33] = 1  # one small object in a corner
    return {"image": image, "label": label}


def test_finetune_crops_are_balanced_binary_and_reproducible():
    data = sample()
    pipeline = finetune_transforms((8, 16, 16), seed=3, num_samples=4, strength="strong")
    crops = [c for _ in range(10) for c in pipeline(data)]
    assert all(c["image"].shape == (1, 8, 16, 16) and c["label"].shape == (1, 8, 16, 16) for c in crops)
    assert all(c["image"].dtype == torch.float32 for c in crops)
    assert all(set(torch.unique(c["label"]).tolist()) <= {0.0, 1.0} for c in crops)
    # The object fills 18 of 19200 voxels; pos=neg=1 still puts it in about half of the crops.
    with_fg = sum(bool(c["label"].any()) for c in crops)
    assert 10 <= with_fg <= 35
    again = finetune_transforms((8, 16, 16), seed=3, num_samples=4, strength="strong")(data)
    first = pipeline.set_random_state(seed=3)(data)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, again))


def test_finetune_augmentation_moves_image_and_label_together():
    data = sample((1, 16, 16, 16))
    data["label"][0, 4:10, 3:8, 6:12] = 1
    data["image"] = np.where(data["label"] > 0, 1.0, -1.0).astype(np.float32)  # the image shows the label
    pipeline = finetune_transforms(16, seed=0, strength="strong")
    for t in pipeline.transforms:  # intensity augmentations (image only) off: this is about geometry
        if tuple(getattr(t, "keys", ())) == ("image",) and hasattr(t, "prob"):
            t.prob = 0.0
    positions = set()
    for _ in range(12):
        (crop,) = pipeline(data)
        # Bilinear (image) and nearest (label) resampling (affine, then zoom) may disagree on boundary voxels.
        agree = (crop["label"] > 0) == (crop["image"] > 0)
        assert agree.float().mean() > 0.96
        positions.add(tuple(torch.nonzero(crop["label"][0]).float().mean(0).round().tolist()))
    assert len(positions) > 3  # the object really moves around


def test_small_inputs_are_padded_and_bad_arguments_refused():
    small = sample((1, 4, 10, 10))
    small["label"][0, 1:3, 2:5, 2:5] = 1
    (crop,) = finetune_transforms((8, 16, 16), seed=0)(small)
    assert crop["image"].shape == (1, 8, 16, 16)
    with pytest.raises(Selma3dError, match="patch size"):
        finetune_transforms((8, 16), seed=0)
    with pytest.raises(Selma3dError, match="strength"):
        finetune_transforms(8, strength="extreme")


def test_ssl_views_differ_per_sample_and_per_view():
    torch.manual_seed(0)
    batch = torch.randn(3, 1, 12, 20, 20)
    views = make_views(batch, ssl_view_transforms((8, 16, 16), seed=0), n_views=2)
    assert len(views) == 2 and all(v.shape == (3, 1, 8, 16, 16) for v in views)
    assert all(torch.isfinite(v).all() for v in views)
    assert not torch.allclose(views[0], views[1])
    same = make_views(batch[:1].expand(2, -1, -1, -1, -1), ssl_view_transforms(8, seed=1), n_views=1)[0]
    assert not torch.allclose(same[0], same[1])  # each sample gets its own draw
    with pytest.raises(Selma3dError):
        make_views(batch[0], ssl_view_transforms(8))


# --- light-sheet augmentations (training.lsm_augment, wired into finetune_transforms) -------------

from monai.transforms import (  # noqa: E402
    RandAdjustContrastd,
    RandBiasFieldd,
    RandScaleIntensityFixedMeand,
    RandZoomd,
)

from selma3d.training.augment import STRENGTHS  # noqa: E402
from selma3d.training.lsm_augment import (  # noqa: E402
    RandBackgroundLeveld,
    RandDepthAttenuationd,
    RandPoissonGaussianNoised,
    RandPSFBlurd,
    RandStripesd,
    unit_range_block,
)
from selma3d.training.skeleton import SkeletonizeLabeld, tubed_skeleton  # noqa: E402
from monai.transforms import Compose  # noqa: E402


def apply(transform, image, seed=0, **extra):
    """One call of ``transform`` (seeded) on {"image": image, **extra}; returns the output dict."""
    transform.set_random_state(seed=seed)
    return transform({"image": torch.as_tensor(image, dtype=torch.float32), **extra})


def blobs(shape=(1, 24, 32, 32), seed=0, background=0.2):
    """u-space image: flat background plus bright cubes, and its label."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.float32)
    for _ in range(6):
        z, y, x = (rng.integers(2, s - 6) for s in shape[1:])
        label[0, z:z + 4, y:y + 4, x:x + 4] = 1
    return torch.from_numpy(np.where(label > 0, 0.9, background).astype(np.float32)), torch.from_numpy(label)


def test_psf_blur_is_wider_in_z_and_keeps_the_border_level():
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.uniform(0, 1, (1, 24, 32, 32)).astype(np.float32))
    blur = RandPSFBlurd("image", prob=1.0, sigma_z=(2.0, 2.0), sigma_y=(0.5, 0.5), sigma_x=(0.5, 0.5))
    out = apply(blur, noise)["image"]

    def gradient(img, axis):
        return img.diff(dim=axis + 1).abs().mean()

    ratio = [float(gradient(out, a) / gradient(noise, a)) for a in range(3)]
    assert ratio[0] < 0.5 * min(ratio[1], ratio[2])  # z-gradients lose much more than y and x
    assert ratio[1] < 0.95 and ratio[2] < 0.95  # y and x are blurred a little
    flat = apply(blur, torch.full((1, 16, 16, 16), 0.3))["image"]
    torch.testing.assert_close(flat, torch.full_like(flat, 0.3))  # no dark border from zero padding


def test_bias_field_in_unit_range_is_smooth_and_multiplicative():
    image = torch.full((1, 16, 24, 24), -0.8)  # [-1, 1] space: u = 0.1, dim enough not to saturate
    image[0, :, :, :4] = -1.0  # black stays black under a multiplicative field
    (bias,) = [t for t in finetune_transforms(16, strength="default").transforms if isinstance(t, RandBiasFieldd)]
    bias.prob = 1.0
    for seed in range(3):
        out = apply(Compose(unit_range_block([bias])), image, seed=seed)["image"]
        assert torch.all(out[0, :, :, :4] == -1.0)
        field = (out[0, :, :, 4:] + 1) / (image[0, :, :, 4:] + 1)  # u_out / u_in
        spread = float(field.max() - field.min())
        assert spread > 0.2  # it changes the image by tens of percent ...
        steps = max(float(field.diff(dim=axis).abs().max()) for axis in range(3))
        assert steps < 0.25 * spread  # ... smoothly: no jump between neighbours


def test_background_level_moves_the_background_and_keeps_every_structure():
    image, label = blobs(background=0.2)
    image = image + torch.linspace(0, 0.05, 32)  # a little structure in the background too
    for shift in (0.2, -0.1):
        out = apply(RandBackgroundLeveld("image", prob=1.0, shift=(shift, shift)), image)["image"]
        assert abs(float(out.median()) - float(image.median()) - shift) < 0.01
        order = torch.argsort(image.flatten())
        assert torch.all(out.flatten()[order].diff() >= -1e-6)  # monotone: structure is kept
        assert float(out[label > 0].min()) > float(out[label == 0].max())  # the cells stay the brightest
    top = apply(RandBackgroundLeveld("image", prob=1.0, shift=(0.3, 0.3)), torch.tensor([[[[0.0, 0.2, 1.0]]]]))
    torch.testing.assert_close(top["image"][0, 0, 0, [0, 2]], torch.tensor([0.0, 1.0]))  # black and white anchored


def test_gamma_and_contrast_change_midtones_and_spread():
    ramp = torch.linspace(0, 1, 16 * 16 * 16).reshape(1, 16, 16, 16)
    gamma = apply(RandAdjustContrastd("image", prob=1.0, gamma=(2.0, 2.0), retain_stats=False), ramp)["image"]
    assert float(gamma.min()) == 0.0 and abs(float(gamma.max()) - 1.0) < 1e-5
    assert float(gamma.mean()) < float(ramp.mean()) - 0.1  # mid-tones darker
    contrast = apply(RandScaleIntensityFixedMeand("image", prob=1.0, factors=(0.5, 0.5)), ramp)["image"]
    assert abs(float(contrast.mean() - ramp.mean())) < 1e-4
    assert abs(float(contrast.std() / ramp.std()) - 1.5) < 1e-3


def test_poisson_gaussian_noise_variance_grows_with_intensity():
    image = torch.full((1, 32, 32, 32), 0.1)
    image[0, :, :, 16:] = 0.9
    noise = RandPoissonGaussianNoised("image", prob=1.0, snr=(5.0, 5.0), poisson_fraction=(0.8, 0.8))
    out = apply(noise, image)["image"]
    dark, bright = (out - image)[0, :, :, :16].var(), (out - image)[0, :, :, 16:].var()
    a, b = 0.8 / 25, 0.2 / 25  # var = a u + b at peak SNR 5
    assert abs(float(dark) / (a * 0.1 + b) - 1) < 0.1 and abs(float(bright) / (a * 0.9 + b) - 1) < 0.1
    assert bright > 2 * dark
    assert abs(float((out - image).mean())) < 0.01
    flat = apply(RandPoissonGaussianNoised("image", prob=1.0, snr=(5.0, 5.0), poisson_fraction=(0.0, 0.0)), image)
    residual = flat["image"] - image
    assert abs(float(residual[0, :, :, 16:].var() / residual[0, :, :, :16].var()) - 1) < 0.15  # constant part
    again = apply(noise, image)["image"]
    assert torch.equal(out, again)  # the seed fixes the noise


def test_stripes_vary_along_y_not_x_and_drift_with_z():
    image = torch.full((1, 20, 48, 24), 0.5)
    stripes = RandStripesd("image", prob=1.0, max_bands=1, depth=(0.6, 0.6), width=(1.5, 1.5), drift=(1.0, 1.0))
    for seed in range(5):
        field = apply(stripes, image, seed=seed)["image"][0] / 0.5
        if field.min() > 0.9:  # the band drifted out of the patch: try another draw
            continue
        assert torch.all(field <= 1.0) and field.min() < 0.5  # dark bands, multiplicative
        assert float(field.std(dim=2).max()) < 1e-6  # constant along x
        assert float(field.std(dim=1).max()) > 0.05  # varies along y
        darkest = field[:, :, 0].argmin(dim=1).float()  # y of the band at each z
        inside = (field[:, :, 0].min(dim=1).values < 0.5)
        steps = darkest[inside].diff()
        assert steps.numel() > 3 and abs(float(steps.mean()) - 1.0) < 0.2  # drifts one voxel per slice
        break
    else:
        pytest.fail("no band in the patch in 5 draws")


@pytest.mark.parametrize("axis", [0, 2])
def test_depth_attenuation_is_monotone_along_its_axis(axis):
    image = torch.full((1, 12, 14, 16), 0.8)
    out = apply(RandDepthAttenuationd("image", prob=1.0, axes=(axis,), loss=(0.5, 0.5)), image)["image"][0]
    profile = out.mean(dim=tuple(a for a in range(3) if a != axis))
    steps = profile.diff()
    assert torch.all(steps < 0) or torch.all(steps > 0)  # monotone in depth
    assert abs(float(profile.min() / profile.max()) - 0.5) < 1e-4  # half the light lost across the patch
    assert float(out.std(dim=[a for a in range(3) if a != axis][0]).max()) < 1e-6  # constant across


def test_scale_jitter_changes_object_size_and_keeps_shape_and_alignment():
    pipeline = finetune_transforms(24, seed=0, strength="default")
    (zoom,) = [t for t in pipeline.transforms if isinstance(t, RandZoomd)]
    zoom.prob = 1.0
    z, y, x = np.mgrid[:24, :24, :24]
    ball = ((z - 12) ** 2 + (y - 12) ** 2 + (x - 12) ** 2 < 36).astype(np.float32)[None]
    data = {"image": torch.from_numpy(2 * ball - 1), "label": torch.from_numpy(ball)}
    zoom.set_random_state(seed=0)
    ratios = []
    for _ in range(20):
        out = zoom(data)
        assert out["image"].shape == out["label"].shape == (1, 24, 24, 24)
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
        assert ((out["image"] > 0) == (out["label"] > 0)).float().mean() > 0.97  # all but boundary voxels
        ratios.append(float(out["label"].sum() / ball.sum()))
    assert min(ratios) < 0.7 and max(ratios) > 1.4  # ±30 % in size is about ×0.34 .. ×2.2 in volume
    assert min(ratios) > 0.7**3 * 0.8 and max(ratios) < 1.3**3 * 1.2


def test_default_pipeline_contains_every_light_sheet_augmentation():
    kinds = {type(t) for t in finetune_transforms(16, seed=0, strength="default").transforms}
    for kind in (RandPSFBlurd, RandBiasFieldd, RandBackgroundLeveld, RandAdjustContrastd, RandScaleIntensityFixedMeand,
                 RandPoissonGaussianNoised, RandStripesd, RandDepthAttenuationd, RandZoomd):
        assert kind in kinds, kind.__name__
    none = {type(t) for t in finetune_transforms(16, strength="none").transforms}
    assert not {RandPSFBlurd, RandStripesd, RandZoomd} & none
    for name in ("light", "strong"):
        kinds = {type(t) for t in finetune_transforms(16, strength=name).transforms}
        assert {RandPoissonGaussianNoised, RandStripesd, RandZoomd} <= kinds
    assert all(set(s) == set(STRENGTHS["default"]) for s in STRENGTHS.values())


def test_intensity_augmentations_touch_only_the_image_and_stay_in_range():
    image, label = blobs()
    data = {"image": 2 * image - 1, "label": label}  # [-1, 1] normalized, like the training patches
    pipeline = finetune_transforms((24, 32, 32), seed=0, strength="strong")
    intensity = [t for t in pipeline.transforms if "image" in getattr(t, "keys", ()) and "label" not in t.keys]
    assert len(intensity) >= 11  # the u-space bracket and every intensity augmentation
    for t in intensity:
        if hasattr(t, "prob"):
            t.prob = 1.0
    block = Compose(intensity).set_random_state(seed=1)
    changed = 0
    for _ in range(5):
        out = block(dict(data))
        assert torch.equal(out["label"], label)
        assert out["image"].min() >= -1 and out["image"].max() <= 1
        changed += not torch.allclose(out["image"], data["image"])
        assert float(out["image"][label > 0].mean()) > float(out["image"][label == 0].mean())  # cells stay visible
    assert changed == 5


def test_default_pipeline_is_reproducible_and_adds_a_skeleton_inside_the_label():
    data = sample((1, 16, 32, 32))
    data["label"][0, 6:10, 14:18, 2:30] = 1  # a tube along x
    first = finetune_transforms(16, seed=5, num_samples=3, skeleton=True)
    second = finetune_transforms(16, seed=5, num_samples=3, skeleton=True)
    for _ in range(3):
        a, b = first(data), second(data)
        for x, y in zip(a, b):
            assert torch.equal(x["image"], y["image"]) and torch.equal(x["skeleton"], y["skeleton"])
            assert x["skeleton"].shape == x["label"].shape and x["skeleton"].dtype == torch.float32
            assert torch.all(x["skeleton"] <= x["label"])  # inside the (augmented) label
            assert bool(x["skeleton"].any()) == bool(x["label"].any())
    other = finetune_transforms(16, seed=6, num_samples=3, skeleton=True)(data)
    assert not all(torch.equal(x["image"], y["image"]) for x, y in zip(a, other))
    assert "skeleton" not in finetune_transforms(16, seed=5)(data)[0]


def test_tubed_skeleton_follows_a_tube_and_survives_even_thickness():
    tube = np.zeros((16, 20, 40), bool)
    tube[5:10, 7:12, 3:37] = True  # odd thickness
    even = np.zeros_like(tube)
    even[6:10, 8:12, 3:37] = True  # 4x4: scikit-image alone returns nothing here
    for mask in (tube, even):
        thin, tubed = tubed_skeleton(mask, dilation=0), tubed_skeleton(mask, dilation=1)
        assert thin.any() and not (thin & ~mask).any() and not (tubed & ~mask).any()
        assert thin.sum() < tubed.sum() < mask.sum()
        xs = np.flatnonzero(thin.any(axis=(0, 1)))
        assert xs.min() <= 8 and xs.max() >= 31  # runs along the tube
        assert len(set(range(xs.min(), xs.max() + 1)) - set(xs)) == 0  # without gaps
    assert not tubed_skeleton(np.zeros((4, 4, 4))).any()
    out = SkeletonizeLabeld(dilation=1)({"label": torch.from_numpy(tube[None].astype(np.float32))})
    assert torch.equal(out["skeleton"][0].bool(), torch.from_numpy(tubed_skeleton(tube, 1)))
    with pytest.raises(Selma3dError, match="dilation"):
        SkeletonizeLabeld(dilation=-1)


def test_precomputed_foreground_indices_give_the_same_crops():
    from monai.transforms import FgBgToIndicesd

    data = sample((1, 16, 32, 32))
    data["label"][0, 6:10, 14:18, 2:30] = 1
    with_indices = FgBgToIndicesd(keys="label", fg_postfix="_fg", bg_postfix="_bg")(
        {"image": torch.from_numpy(data["image"]), "label": torch.from_numpy(data["label"]).float()})
    plain = finetune_transforms(16, seed=2, num_samples=2)
    fast = finetune_transforms(16, seed=2, num_samples=2, fg_indices_key="label_fg", bg_indices_key="label_bg")
    for _ in range(4):
        for a, b in zip(plain(data), fast(with_indices)):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
            assert set(b) == {"image", "label"}
