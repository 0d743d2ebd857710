"""The synthetic SELMA3D-like dataset: layout, ground truth, image formation, determinism,
slab-wise generation and the ``selma3d synth`` command."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tracemalloc

import cc3d
import numpy as np
import pytest

from selma3d.data import synthetic
from selma3d.data.domain import (CAMERA_OFFSET, LOG_UNIFORM, SHIFTED_DOMAINS, TRAIN_DOMAINS, Domain, case_statistics,
                                 optics_from)
from selma3d.data.imaging import optical_blur
from selma3d.data.layout import SPLITS, STRUCTURE_TYPES, load_dataset
from selma3d.data.phantoms import GENERATORS
from selma3d.data.synthetic import (PRESETS, STRUCTURES, case_parameters, make_dataset, make_imager,
                                    make_patch, make_scene, volume_imager, write_volume)
from selma3d.errors import InputError
from selma3d.io.nifti import read_nifti
from selma3d.io.tiffstack import TiffStack

TRAIN = {"vessel", "cfos", "nucleus", "plaque"}
TEST = {"cfos", "microglia"}
SHIFTED = {"cfos", "microglia", "vessel"}


def _split_stats(structure, split, n, shape, seed=0):
    rows = [case_statistics(*make_patch(structure, shape, seed, split, i)) for i in range(n)]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def _arrays(root):
    ds = load_dataset(root)
    out = {}
    for case in ds.annotated_cases():
        out[(case.split, case.structure, case.case)] = (read_nifti(case.image).array,
                                                       read_nifti(case.label).array)
    for vol in ds.unannotated_volumes():
        out[("unannotated", vol.structure, vol.name)] = (np.asarray(TiffStack(vol.path)[:]), None)
    return out


def test_layout_loads_with_the_right_splits_and_structures(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    meta = json.loads((tiny_dataset / "dataset.json").read_text())
    assert meta["preset"] == "tiny" and meta["seed"] == 0
    assert set(meta["splits"]) == {"train", "preliminary_test", "final_test"}  # no shifted_test unless asked
    assert meta["shifted_splits"] == {} and ds.shifted_splits == {}
    assert meta["domains"]["train"]["cfos"] == TRAIN_DOMAINS["cfos"].as_dict()
    assert set(meta["case_parameters"]["train"]["vessel"]) == set(meta["splits"]["train"]["vessel"])
    for name, info in meta["structures"].items():
        assert info["type"] == STRUCTURE_TYPES[name] == ds.type_of(name)
        assert ds.spacing_of(name) == tuple(STRUCTURES[name].spacing_zyx)
    assert {c.structure for c in ds.annotated_cases(split="train")} == TRAIN
    for split in ("preliminary_test", "final_test"):
        assert {c.structure for c in ds.annotated_cases(split=split)} == TEST
    assert {v.structure for v in ds.unannotated_volumes()} == TRAIN  # microglia only at test time
    # dataset.json lists exactly what is on disk
    on_disk = {}
    for c in ds.annotated_cases():
        on_disk.setdefault(c.split, {}).setdefault(c.structure, []).append(c.case)
    assert on_disk == meta["splits"]
    assert {s: [v.name for v in ds.unannotated_volumes([s])] for s in TRAIN} == meta["unannotated"]
    assert not any(p.name.startswith(".") for p in tiny_dataset.parent.iterdir())  # no partial left


def test_cases_are_int16_images_with_binary_uint8_labels_that_match(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    for case in ds.annotated_cases():
        image, label = read_nifti(case.image), read_nifti(case.label)
        assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
        assert image.array.shape == label.array.shape
        assert set(np.unique(label.array)) == {0, 1}, case.case
        spacing = STRUCTURES[case.structure].spacing_zyx
        assert image.spacing_zyx == pytest.approx(spacing)
        assert np.diag(image.affine)[:3] == pytest.approx([-spacing[2], -spacing[1], spacing[0]])  # LPS+
        # contrast: the structure is clearly brighter than its surroundings
        img = image.array.astype(np.float64)
        inside, outside = img[label.array > 0], img[label.array == 0]
        cnr = (inside.mean() - outside.mean()) / outside.std()
        assert cnr > 3.0, (case.case, cnr)


def test_unannotated_volumes_are_int16_slice_folders_with_bright_foreground(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    for vol in ds.unannotated_volumes():
        files = sorted(vol.path.glob("slice_*.tif"))
        assert [f.name for f in files] == [f"slice_{z:05d}.tif" for z in range(len(files))]
        stack = TiffStack(vol.path)
        assert stack.dtype == np.int16
        assert stack.shape == PRESETS["tiny"].unannotated[vol.structure][0]
        data = np.asarray(stack[:])
        assert data.max() > 500 and np.percentile(data, 5) < 500  # the SSL foreground filter has work to do


def test_same_seed_same_dataset_other_seed_other_data(tiny_dataset, tmp_path):
    again = make_dataset(tmp_path / "again", preset="tiny", seed=0)
    first, second = _arrays(tiny_dataset), _arrays(again)
    assert first.keys() == second.keys()
    for key in first:
        for a, b in zip(first[key], second[key]):
            if a is not None:
                np.testing.assert_array_equal(a, b, err_msg=str(key))
    other, _ = make_patch("cfos", (32, 32, 32), seed=1)
    assert not np.array_equal(other, first[("train", "cfos", "cfos_000")][0])


@pytest.mark.parametrize("domains", [TRAIN_DOMAINS, SHIFTED_DOMAINS], ids=["train", "shifted"])
def test_psf_is_wider_along_z_than_in_xy(domains):
    """Even the least anisotropic PSF a case can draw (narrowest z, widest xy)."""
    for structure, domain in domains.items():
        spacing = STRUCTURES[structure].spacing_zyx
        worst = {f.name: getattr(domain, f.name)[0] for f in dataclasses.fields(domain)}
        worst["psf_xy"] = domain.psf_xy[1]
        delta = np.zeros((41, 41, 41), np.float32)
        delta[20, 20, 20] = 1.0
        psf = optical_blur(delta, optics_from(worst))
        coords = np.arange(41) - 20.0
        var = [float((psf.sum(axis=tuple(a for a in range(3) if a != ax)) * coords ** 2).sum() / psf.sum())
               for ax in range(3)]
        assert var[0] > 1.5 * var[1] and var[1] == pytest.approx(var[2])
        # also in µm: the light sheet is thicker than the lateral resolution
        assert np.sqrt(var[0]) * spacing[0] > 1.5 * np.sqrt(var[1]) * spacing[1]


def test_blur_makes_the_imaged_spot_wider_in_z_than_its_mask():
    """In the data itself: the bright region around c-Fos cells extends further in z than in xy,
    relative to the mask (the z PSF is wider)."""
    image, label = make_patch("cfos", (48, 48, 48), seed=3)
    img = image.astype(np.float64) - np.median(image)
    mask = label > 0

    def spread(axis):  # how much bright signal lies just outside the mask along one axis
        shifted = np.roll(mask, 2, axis=axis) | np.roll(mask, -2, axis=axis)
        ring = shifted & ~mask
        return img[ring].mean() / img[mask].mean()

    assert spread(0) > spread(1) and spread(0) > spread(2)


@pytest.mark.parametrize("structure", ["vessel", "microglia"])
def test_tree_structures_are_connected(structure):
    for index in range(3):
        key = synthetic._case_key(5, structure, 0, index)
        scene = make_scene(structure, (48, 64, 64), key)
        image, label = make_imager(structure, (48, 64, 64), key, whole_specimen=False).render()
        n = cc3d.connected_components(label, connectivity=26).max()
        # every tree / cell is one 26-connected piece (pieces may merge where they touch)
        assert 1 <= n <= scene.n_objects, (structure, index, n, scene.n_objects)
        assert n <= (3 if structure == "vessel" else 4)  # a vascular network, or a few cells


@pytest.mark.parametrize("structure,minimum", [("cfos", 20), ("nucleus", 50), ("plaque", 3)])
def test_spot_structures_have_many_components(structure, minimum):
    _, label = make_patch(structure, (48, 64, 64), seed=2)
    assert cc3d.connected_components(label, connectivity=26).max() >= minimum


def test_vessels_taper_from_trunks_to_capillaries():
    scene = GENERATORS["vessel"]((64, 96, 96), STRUCTURES["vessel"].spacing_zyx, np.random.default_rng(0))
    radii = np.concatenate([scene.r0, scene.r1])
    assert radii.max() > 5.0 and np.percentile(radii, 25) < 3.0  # trunks and capillaries
    assert np.all(scene.r1 <= scene.r0 + 1e-9)  # radius never grows along a segment


@pytest.mark.parametrize("structure", sorted(GENERATORS))
def test_phantom_size_scales_the_objects(structure):
    """``size`` scales radii (spot semi-axes, soma and tube radii above the connectivity floor)."""
    spacing = STRUCTURES[structure].spacing_zyx
    shape = (64, 96, 96)

    def typical_radius(size):
        scene = GENERATORS[structure](shape, spacing, np.random.default_rng(3), size=size)
        if structure == "vessel":  # capillaries, most of the network (trunks are a random few)
            return np.concatenate([scene.r0, scene.r1]).min()
        return np.median(scene.axes)

    assert typical_radius(1.5) / typical_radius(1.0) == pytest.approx(1.5, rel=0.2)
    assert typical_radius(0.8) < typical_radius(1.0)


def test_slab_wise_generation_is_bit_identical_to_one_shot(tmp_path):
    for structure, shape in (("vessel", (40, 48, 56)), ("nucleus", (33, 40, 40))):
        imager = volume_imager(structure, shape, seed=4)
        whole_image, whole_label = imager.render()
        slabs = list(imager.slabs(depth=7))  # slabs much thinner than the PSF margin sum
        assert [z0 for z0, _, _ in slabs] == list(range(0, shape[0], 7))
        np.testing.assert_array_equal(np.concatenate([im for _, im, _ in slabs]), whole_image)
        np.testing.assert_array_equal(np.concatenate([lb for _, _, lb in slabs]), whole_label)
        folder = write_volume(tmp_path / structure, imager, slab_depth=5)
        np.testing.assert_array_equal(np.asarray(TiffStack(folder)[:]), whole_image)


def test_volume_writer_memory_is_bounded_by_the_slab():
    """Slab-by-slab imaging allocates the same whatever the volume depth, and far less than
    the volume."""
    peaks = {}
    for depth in (48, 192):
        imager = volume_imager("cfos", (depth, 64, 64), seed=0)
        tracemalloc.start()
        for _ in imager.slabs(depth=8):
            pass
        _, peaks[depth] = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peaks[192] < 1.25 * peaks[48], peaks
    assert peaks[192] < 192 * 64 * 64 * 4, peaks  # less than one float32 copy of the volume


def test_interrupted_run_resumes_and_never_looks_complete(tmp_path, monkeypatch):
    out = tmp_path / "data"
    real, calls, killed = synthetic.make_patch, [], []

    class Killed(Exception):
        pass

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 5 and not killed:
            killed.append(True)
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "make_patch", flaky)
    with pytest.raises(Killed):
        make_dataset(out, preset="tiny", seed=7)
    assert not out.exists()  # nothing that looks like a dataset
    calls.clear()
    make_dataset(out, preset="tiny", seed=7)
    n_cases = sum(n for per in PRESETS["tiny"].annotated.values() for n, _ in per.values())
    assert len(calls) == n_cases - 4  # the four finished cases were kept
    monkeypatch.setattr(synthetic, "make_patch", real)
    fresh = _arrays(make_dataset(tmp_path / "fresh", preset="tiny", seed=7))
    resumed = _arrays(out)
    for key in fresh:
        np.testing.assert_array_equal(fresh[key][0], resumed[key][0], err_msg=str(key))


def test_a_run_killed_in_the_shifted_split_resumes_to_the_same_dataset(tmp_path, monkeypatch):
    out = tmp_path / "data"
    real, calls = synthetic.make_patch, []

    class Killed(Exception):
        pass

    def killed_at_the_second_shifted_case(*args, **kwargs):
        calls.append(args)
        if [a[3] for a in calls].count("shifted_test") == 2:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "make_patch", killed_at_the_second_shifted_case)
    with pytest.raises(Killed):
        make_dataset(out, preset="tiny", seed=5, shift=True)
    assert not out.exists()
    done = len(calls) - 1
    monkeypatch.setattr(synthetic, "make_patch", lambda *a, **k: (calls.append(a), real(*a, **k))[1])
    calls.clear()
    make_dataset(out, preset="tiny", seed=5, shift=True)
    n_cases = sum(n for per in PRESETS["tiny"].splits(shift=True).values() for n, _ in per.values())
    assert len(calls) == n_cases - done  # finished cases, shifted ones included, were kept
    monkeypatch.setattr(synthetic, "make_patch", real)
    fresh = _arrays(make_dataset(tmp_path / "fresh", preset="tiny", seed=5, shift=True))
    resumed = _arrays(out)
    assert fresh.keys() == resumed.keys()
    for key in fresh:
        np.testing.assert_array_equal(fresh[key][0], resumed[key][0], err_msg=str(key))


def test_refuses_bad_preset_and_non_empty_output(tmp_path):
    with pytest.raises(InputError, match="preset"):
        make_dataset(tmp_path / "x", preset="huge")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        make_dataset(tmp_path / "busy", preset="tiny")
    with pytest.raises(InputError, match="not a selma3d dataset"):
        make_dataset(tmp_path / "busy", preset="tiny", overwrite=True)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_cli_writes_a_dataset_and_errors_in_one_line(tmp_path, monkeypatch, capsys):
    from selma3d.cli import app

    out = tmp_path / "cli"
    monkeypatch.setattr(sys, "argv", ["selma3d", "synth", str(out), "--preset", "tiny", "--seed", "2", "--quiet"])
    app()
    assert json.loads((out / "dataset.json").read_text())["seed"] == 2
    capsys.readouterr()
    for argv in (["selma3d", "synth", str(tmp_path / "other"), "--preset", "gigantic"],
                 ["selma3d", "synth", str(out), "--preset", "tiny"]):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exc:
            app()
        assert exc.value.code == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
    monkeypatch.setattr(sys, "argv", ["selma3d", "synth", str(out), "--preset", "tiny", "--seed", "3",
                                      "--overwrite", "--quiet", "--shift"])
    app()
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["seed"] == 3 and set(meta["shifted_splits"]) == {"shifted_test"}
    assert {c.structure for c in load_dataset(out).annotated_cases(split="shifted_test")} == SHIFTED


# ----------------------------------------------------------------------------- randomization
def test_domain_draws_are_deterministic_in_range_and_cover_it():
    for domains in (TRAIN_DOMAINS, SHIFTED_DOMAINS):
        for structure, domain in domains.items():
            split = "train" if domains is TRAIN_DOMAINS else "shifted_test"
            draws = [case_parameters(structure, 0, split, i) for i in range(40)]
            assert draws[7] == case_parameters(structure, 0, split, 7)  # the case key decides
            for f in dataclasses.fields(Domain):
                lo, hi = getattr(domain, f.name)
                values = np.array([d[f.name] for d in draws])
                assert np.all((values >= lo) & (values <= hi)), (structure, f.name)
                if hi > lo:  # wide: 40 draws cover most of every range
                    span = np.log(hi / lo) if f.name in LOG_UNIFORM else hi - lo
                    got = (np.log(values.max() / values.min()) if f.name in LOG_UNIFORM
                           else values.max() - values.min())
                    assert got > 0.7 * span, (structure, f.name, values.min(), values.max())
    with pytest.raises(ValueError):
        Domain(size=(0.0, 1.0))  # log-uniform ranges must be positive


#: the direction of the shift per parameter, as documented in selma3d.data.domain
SHIFT_DIRECTION = {"size": +1, "contrast": -1, "background": +1, "background_variation": +1, "grain": +1,
                   "psf_z": +1, "psf_xy": +1, "gain": +1, "read_noise": +1, "attenuation": +1}


@pytest.mark.parametrize("structure", sorted(SHIFTED))
def test_shifted_ranges_move_in_the_documented_direction_and_leave_the_training_range(structure):
    train, shifted = TRAIN_DOMAINS[structure].as_dict(), SHIFTED_DOMAINS[structure].as_dict()
    directions = dict(SHIFT_DIRECTION, **({"density": -1} if structure != "microglia" else {}))
    for name, sign in directions.items():
        (tlo, thi), (slo, shi) = train[name], shifted[name]
        centre = (lambda lo, hi: math.sqrt(lo * hi)) if name in LOG_UNIFORM else (lambda lo, hi: (lo + hi) / 2)
        assert sign * (centre(slo, shi) - centre(tlo, thi)) > 0, (structure, name)
        assert (shi > thi) if sign > 0 else (slo < tlo), (structure, name)  # partly outside training
    # stripes: always present in the shift, at a level training covers
    assert shifted["stripes"][0] > train["stripes"][0] and shifted["stripes"][1] <= train["stripes"][1]


def test_train_cases_vary_in_measured_size_background_noise_and_contrast():
    """Measured on the images, not the parameters: across 8 c-Fos training cases the mean cell
    volume varies > 2.5×, the background > 1.5×, the noise variance per background count (the
    camera gain) > 1.6×, the SNR > 2× and the foreground/background ratio > 1.6× (with fixed
    parameters these spreads are 1.2×, 1.1×, 1.1×, 1.2× and 1.2×)."""
    stats = _split_stats("cfos", "train", 8, (48, 48, 48))

    def spread(values):
        return float(values.max() / values.min())

    assert spread(stats["object_volume"]) > 2.5, stats["object_volume"]
    assert spread(stats["background"]) > 1.5, stats["background"]
    assert spread(stats["noise"] ** 2 / (stats["background"] - CAMERA_OFFSET)) > 1.6
    assert spread(stats["snr"]) > 2.0, stats["snr"]
    assert spread(stats["contrast"]) > 1.6, stats["contrast"]


def test_shifted_split_differs_from_train_in_the_documented_direction():
    """shifted_test vs train, means over cases (domain.py says why): larger and fewer c-Fos
    cells; for c-Fos, microglia and vessels a dimmer stain relative to background, a brighter
    background, more noise and a lower SNR — but still solvable by a threshold: a per-case
    Otsu threshold keeps a median Dice above 0.6."""
    for structure in sorted(SHIFTED):
        train = _split_stats(structure, "train", 5, (64, 64, 64))
        shifted = _split_stats(structure, "shifted_test", 5, (64, 64, 64))
        mean = {k: (train[k].mean(), shifted[k].mean()) for k in train}
        if structure == "cfos":
            assert mean["object_volume"][1] > 2.0 * mean["object_volume"][0], mean
            assert mean["objects"][1] < 0.6 * mean["objects"][0], mean
        if structure == "vessel":
            assert mean["fraction"][1] < 0.8 * mean["fraction"][0], mean
        assert mean["contrast"][1] < 0.75 * mean["contrast"][0], (structure, mean)
        assert mean["background"][1] > 1.3 * mean["background"][0], (structure, mean)
        assert mean["noise"][1] > 1.3 * mean["noise"][0], (structure, mean)
        assert mean["snr"][1] < 0.7 * mean["snr"][0], (structure, mean)
        assert np.median(shifted["otsu_dice"]) > 0.6, (structure, shifted["otsu_dice"])


def test_shift_writes_a_registered_shifted_test_split_and_records_it(tiny_dataset, tmp_path):
    out = make_dataset(tmp_path / "shifted", preset="tiny", seed=0, shift=True)
    ds = load_dataset(out)
    meta = json.loads((out / "dataset.json").read_text())
    assert "shifted_test" in SPLITS and "shifted_test" in ds.splits
    final = PRESETS["tiny"].annotated["final_test"]
    cases = ds.annotated_cases(split="shifted_test")
    assert {c.structure for c in cases} == SHIFTED
    for structure in SHIFTED:
        count, shape = final["cfos" if structure == "vessel" else structure]
        mine = [c for c in cases if c.structure == structure]
        assert len(mine) == count and all(read_nifti(c.image).array.shape == shape for c in mine)
    # dataset.json says which split is shifted, from what, and the ranges every split drew from
    assert set(ds.shifted_splits) == {"shifted_test"}
    assert ds.shifted_splits["shifted_test"]["relative_to"] == "train"
    for structure in SHIFTED:
        assert ds.domain_of("shifted_test", structure) == SHIFTED_DOMAINS[structure].as_dict()
        assert ds.domain_of("final_test", structure) in (TRAIN_DOMAINS[structure].as_dict(), None)
        for case, params in meta["case_parameters"]["shifted_test"][structure].items():
            for name, (lo, hi) in SHIFTED_DOMAINS[structure].as_dict().items():
                assert lo * 0.999 <= params[name] <= hi * 1.001, (case, name)
    # the shifted cases really are drawn from the shifted domain: the cfos image matches a
    # render from SHIFTED_DOMAINS, not from the training domain
    c = next(c for c in cases if c.structure == "cfos")
    key = synthetic._case_key(0, "cfos", synthetic.SPLIT_IDS["shifted_test"], 0)
    image = read_nifti(c.image).array
    shifted_render = make_imager("cfos", image.shape, key, False, SHIFTED_DOMAINS["cfos"]).render()[0]
    np.testing.assert_array_equal(image, shifted_render)
    assert not np.array_equal(image, make_imager("cfos", image.shape, key, False).render()[0])
    # adding the shifted split changes nothing else: the other splits are byte-identical
    plain, shifted = _arrays(tiny_dataset), _arrays(out)
    assert set(shifted) - set(plain) == {("shifted_test", c.structure, c.case) for c in cases}
    for key in plain:
        for a, b in zip(plain[key], shifted[key]):
            if a is not None:
                np.testing.assert_array_equal(a, b, err_msg=str(key))
