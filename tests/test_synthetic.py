"""The synthetic SELMA3D-like dataset: layout, ground truth, image formation, determinism,
slab-wise generation and the ``selma3d synth`` command."""

from __future__ import annotations

import json
import sys
import tracemalloc

import cc3d
import numpy as np
import pytest

from selma3d.data import synthetic
from selma3d.data.imaging import optical_blur
from selma3d.data.layout import STRUCTURE_TYPES, load_dataset
from selma3d.data.synthetic import (PRESETS, STRUCTURES, make_dataset, make_imager, make_patch,
                                    make_scene, volume_imager, write_volume)
from selma3d.errors import InputError
from selma3d.io.nifti import read_nifti
from selma3d.io.tiffstack import TiffStack

TRAIN = {"vessel", "cfos", "nucleus", "plaque"}
TEST = {"cfos", "microglia"}


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
    assert set(meta["splits"]) == {"train", "preliminary_test", "final_test"}
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


def test_psf_is_wider_along_z_than_in_xy():
    for spec in STRUCTURES.values():
        delta = np.zeros((41, 41, 41), np.float32)
        delta[20, 20, 20] = 1.0
        psf = optical_blur(delta, spec.optics)
        coords = np.arange(41) - 20.0
        var = [float((psf.sum(axis=tuple(a for a in range(3) if a != ax)) * coords ** 2).sum() / psf.sum())
               for ax in range(3)]
        assert var[0] > 1.5 * var[1] and var[1] == pytest.approx(var[2])
        # also in µm: the light sheet is thicker than the lateral resolution
        assert np.sqrt(var[0]) * spec.spacing_zyx[0] > 1.5 * np.sqrt(var[1]) * spec.spacing_zyx[1]


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
    scene = make_scene("vessel", (64, 96, 96), synthetic._case_key(0, "vessel", 0, 0))
    radii = np.concatenate([scene.r0, scene.r1])
    assert radii.max() > 5.0 and np.percentile(radii, 25) < 3.0  # trunks and capillaries
    assert np.all(scene.r1 <= scene.r0 + 1e-9)  # radius never grows along a segment


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
                                      "--overwrite", "--quiet"])
    app()
    assert json.loads((out / "dataset.json").read_text())["seed"] == 3
