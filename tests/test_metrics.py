"""SELMA3D metrics: known shapes and exact agreement with two independent references.

The references live only here: the plain scikit-image recipe of the official evaluator
(``label`` / ``euler_number`` / ``skeletonize`` on whole padded arrays) and gudhi's cubical
complex. gudhi takes voxels as top-dimensional cells; with the value 0 on foreground and 1 on
background, the sublevel set at 0 is the union of the *closed* foreground cubes, i.e.
foreground with 26-connectivity (cubes meeting at a corner are connected), whose complement
is background with 6-connectivity. Its Betti numbers are the bars born at 0 that are still
alive at 0.
"""

from __future__ import annotations

import gudhi
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import euler_number, label
from skimage.morphology import skeletonize

from selma3d.errors import InputError
from selma3d.evaluation import metrics as M


# ----------------------------------------------------------------------------- references
def recipe_betti(mask):
    p = np.pad(np.asarray(mask) > 0, 1)
    b0 = int(label(p, connectivity=3).max())
    b2 = int(label(~p, connectivity=1).max()) - 1
    chi = int(euler_number(p, connectivity=3))
    return (b0, b0 + b2 - chi, b2)


def recipe_tree(gt, pred):
    g, p = np.asarray(gt) > 0, np.asarray(pred) > 0
    total = int(g.sum()) + int(p.sum())
    dice = 1.0 if total == 0 else 2.0 * int((g & p).sum()) / total
    sg, sp = skeletonize(g), skeletonize(p)
    tprec = int((p & sg).sum()) / int(sg.sum()) if sg.any() else 0.0
    tsens = int((g & sp).sum()) / int(sp.sum()) if sp.any() else 0.0
    cldice = (2.0 * tprec * tsens + 1e-6) / (tprec + tsens + 1e-6)
    if not g.any() and not p.any():
        e0 = e1 = 0
    else:
        bg, bp = recipe_betti(g), recipe_betti(p)
        e0, e1 = abs(bp[0] - bg[0]), abs(bp[1] - bg[1])
    return {"dice": dice, "cldice": cldice, "betti0_error": e0, "betti1_error": e1}


def gudhi_betti(mask):
    values = 1.0 - (np.asarray(mask) > 0).astype(np.float64)
    complex_ = gudhi.CubicalComplex(top_dimensional_cells=values)
    betti = [0, 0, 0]
    for dim, (birth, death) in complex_.persistence(homology_coeff_field=2, min_persistence=-1):
        if dim < 3 and birth <= 0.0 < death:
            betti[dim] += 1
    return tuple(betti)


# ----------------------------------------------------------------------------- known shapes
def _box(shape=(9, 9, 9)):
    return np.zeros(shape, dtype=np.uint8)


def _solid_torus():
    m = _box((7, 12, 12))
    m[2:5, 2:10, 2:10] = 1
    m[2:5, 4:8, 4:8] = 0
    return m


def _hollow_cube():
    m = _box()
    m[2:7, 2:7, 2:7] = 1
    m[3:6, 3:6, 3:6] = 0
    return m


def _two_islands():
    m = _box()
    m[1:3, 1:3, 1:3] = 1
    m[5:8, 5:8, 5:8] = 1
    return m


def _corner_touch():
    m = _box((4, 4, 4))
    m[1, 1, 1] = m[2, 2, 2] = 1
    return m


def _border_slab():  # spans the whole array: only the padding keeps the background one piece
    m = _box((6, 5, 5))
    m[2:4] = 1
    return m


def _border_ring():  # a ring cut open by the array border on one side
    m = _box((3, 8, 8))
    m[:, 0:8, 0:8] = 1
    m[:, 2:6, 2:6] = 0
    return m


KNOWN = {
    "empty": (_box(), (0, 0, 0)),
    "full cube": (np.ones((5, 6, 7), np.uint8), (1, 0, 0)),
    "solid torus": (_solid_torus(), (1, 1, 0)),
    "two islands": (_two_islands(), (2, 0, 0)),
    "hollow cube": (_hollow_cube(), (1, 0, 1)),
    "corner touch": (_corner_touch(), (1, 0, 0)),
    "slab touching the border": (_border_slab(), (1, 0, 0)),
    "ring touching the border": (_border_ring(), (1, 1, 0)),
}


@pytest.mark.parametrize("name", list(KNOWN))
def test_betti_numbers_of_known_shapes(name):
    mask, expected = KNOWN[name]
    assert M.betti_numbers(mask) == expected
    assert recipe_betti(mask) == expected
    assert gudhi_betti(mask) == expected
    assert M.euler_characteristic(mask) == euler_number(np.pad(mask, 1), connectivity=3)


def test_empty_masks_follow_the_challenge_rules():
    empty = _box()
    assert M.dice(empty, empty) == 1.0
    assert M.betti_errors(empty, empty) == (0, 0)
    assert M.cldice(empty, empty) == 1.0  # both skeletons empty: (0 + 1e-6) / (0 + 1e-6)
    cube = _box()
    cube[2:5, 2:5, 2:5] = 1
    assert M.dice(empty, cube) == 0.0
    assert M.betti_errors(empty, cube) == (1, 0)
    assert M.tree_metrics(empty, cube) == recipe_tree(empty, cube)
    assert M.spot_metrics(cube, empty) == {"dice": 0.0, "betti0_error": 1}
    # The binding formula's quirk, reproduced on purpose: disjoint non-empty masks have
    # tprec = tsens = 0, hence clDice = (0 + 1e-6) / (0 + 1e-6) = 1.0.
    other = _box()
    other[6:9, 6:9, 6:9] = 1
    assert M.skeleton(cube).any() and M.skeleton(other).any()
    assert M.cldice(cube, other) == recipe_tree(cube, other)["cldice"] == 1.0


def test_two_by_two_rod_has_an_empty_lee_skeleton_and_clDice_follows():
    rod = _box((12, 6, 6))
    rod[1:11, 2:4, 2:4] = 1
    thick = _box((12, 6, 6))
    thick[1:11, 1:4, 1:4] = 1  # 3×3 rod containing the 2×2 one: its centreline lies in it
    assert not M.skeleton(rod).any()
    assert M.skeleton(thick).sum() == skeletonize(thick > 0).sum() > 0
    assert M.cldice(rod, rod) == 1.0  # no skeleton on either side
    # tprec = 0 (empty S(G)); tsens = |G ∩ S(P)| / |S(P)| = 1
    assert M.cldice(rod, thick) == pytest.approx(1e-6 / (1.0 + 1e-6), rel=0, abs=1e-15)
    assert M.cldice(rod, thick) == recipe_tree(rod, thick)["cldice"]


def test_dice_value_and_dtypes():
    gt = _box()
    gt[1, 1, 1:5] = 255  # label values like 255 are foreground
    pred = np.zeros(gt.shape, dtype=np.float32)
    pred[1, 1, 3:5] = 0.7
    pred[0, 0, 0] = -3.0  # negative is background (> 0 rule)
    assert M.dice(gt, pred) == 2 * 2 / 6
    assert M.dice(gt.astype(bool), pred) == M.dice(gt.astype(np.int16), (pred > 0).astype(np.int64))


def test_bad_arrays_raise_input_errors():
    gt = _box()
    with pytest.raises(InputError, match="shape mismatch"):
        M.dice(gt, _box((9, 9, 8)))
    nan = np.zeros((9, 9, 9), np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        M.tree_metrics(gt, nan)
    with pytest.raises(InputError, match="3D"):
        M.betti_numbers(np.zeros((4, 4)))


def test_crop_with_margin_reads_zeros_outside_the_array():
    m = np.ones((2, 3, 4), bool)
    box = M.bounding_box(m, margin=1)
    assert box == (slice(-1, 3), slice(-1, 4), slice(-1, 5))
    crop = M.crop_with_margin(m, box)
    assert crop.shape == (4, 5, 6) and crop.sum() == m.sum() and not crop[0].any()


# ----------------------------------------------------------------------------- random cross-checks
def _random_volume(rng, index):
    shape = tuple(int(s) for s in rng.integers(4, 22, 3))
    kind = index % 3
    if kind == 0:  # salt noise of varied density: many components, cavities, tunnels
        return rng.random(shape) < rng.uniform(0.03, 0.6)
    if kind == 1:  # smooth blobs
        return ndi.gaussian_filter(rng.random(shape), 1.2) > rng.uniform(0.47, 0.53)
    mask = np.zeros(shape, bool)  # thin random lines (26-connected walks), some thickened
    for _ in range(int(rng.integers(1, 5))):
        point = rng.integers(0, shape)
        for _ in range(int(rng.integers(5, 30))):
            point = np.clip(point + rng.integers(-1, 2, 3), 0, np.array(shape) - 1)
            mask[tuple(point)] = True
    if rng.random() < 0.5:
        mask = ndi.binary_dilation(mask)
    return mask


def _perturbed(rng, mask):
    pred = mask.copy()
    pred ^= rng.random(mask.shape) < rng.uniform(0.0, 0.08)
    return pred.astype(np.uint8) * 255


@pytest.fixture(scope="module")
def random_pairs():
    rng = np.random.default_rng(2024)
    return [(m, _perturbed(rng, m)) for m in (_random_volume(rng, i) for i in range(30))]


def test_random_volumes_match_the_scikit_image_recipe_exactly(random_pairs):
    dense = sparse = 0
    for gt, pred in random_pairs:
        for mask in (gt, pred):
            assert M.betti_numbers(mask) == recipe_betti(mask)
            assert M.euler_characteristic(mask) == euler_number(np.pad(mask > 0, 1), connectivity=3)
            assert np.array_equal(M.skeleton(mask), skeletonize(mask > 0))
        assert M.tree_metrics(gt, pred) == recipe_tree(gt, pred)  # bit-exact floats
        assert M.spot_metrics(gt, pred) == {k: recipe_tree(gt, pred)[k] for k in ("dice", "betti0_error")}
        fraction = (gt > 0).mean()
        dense += fraction * M._SPARSE_FRACTION >= 1
        sparse += 0 < fraction * M._SPARSE_FRACTION < 1
    assert dense and sparse  # both ways of finding component boxes were exercised


def test_random_volumes_match_gudhi(random_pairs):
    bettis = []
    for gt, pred in random_pairs:
        for mask in (gt, pred):
            bettis.append(M.betti_numbers(mask))
            assert bettis[-1] == gudhi_betti(mask)
    # the set exercises every dimension, not just trivially zero Betti numbers
    assert all(any(b[k] > (1 if k == 0 else 0) for b in bettis) for k in range(3))


@pytest.mark.parametrize("budget, max_separate", [(0.0, 128), (1e9, 128), (1e9, 3), (0.05, 128)])
def test_any_grouping_of_components_is_exact(monkeypatch, budget, max_separate):
    """Components thinned alone, all together, or mixed: the same numbers as the whole array."""
    monkeypatch.setattr(M, "_ALONE_BUDGET", budget)
    monkeypatch.setattr(M, "_MAX_SEPARATE", max_separate)
    rng = np.random.default_rng(7)
    for _ in range(4):
        gt = ndi.binary_dilation(rng.random((18, 20, 16)) < 0.02) | (rng.random((18, 20, 16)) < 0.02)
        pred = _perturbed(rng, gt)
        assert M.tree_metrics(gt, pred) == recipe_tree(gt, pred)
        assert M.betti_numbers(gt) == recipe_betti(gt) == gudhi_betti(gt)
        assert np.array_equal(M.skeleton(gt), skeletonize(gt))


def test_skeleton_of_a_crop_with_a_zero_margin_equals_the_whole():
    rng = np.random.default_rng(3)
    mask = np.zeros((30, 30, 30), bool)
    mask[8:20, 9:22, 7:19] = ndi.gaussian_filter(rng.random((12, 13, 12)), 1.0) > 0.5
    whole = skeletonize(mask)
    box = M.bounding_box(mask, margin=1)
    crop_skeleton = skeletonize(M.crop_with_margin(mask, box))
    assert whole.any() and np.array_equal(whole[box], crop_skeleton) and whole.sum() == crop_skeleton.sum()
