"""`selma3d dataset`: building a dataset from a lab's own files, and every bad input refused.

The bad-input cases follow tests/test_hostile_inputs.py: run the real entry point in process,
then assert exit 1, exactly one ``error:`` line naming the file and the problem, no traceback,
every pre-existing file byte-identical and nothing new left behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import tifffile

from cli_helpers import run_cli
from own_data_files import axon_volume, write_crop, write_foreign_ome_zarr, write_tiff_stack
from test_hostile_inputs import corrupt_gzip, sha_tree


class Files:
    """A case's folder: a dataset D (axon: tree, 2x1x1 µm, one linked stack) and the user's files."""

    def __init__(self, tmp: Path, monkeypatch, capsys):
        self.tmp, self.monkeypatch, self.capsys = tmp, monkeypatch, capsys
        self.image, self.label = axon_volume(shape=(16, 32, 32), seed=3)

    def cli(self, *args) -> tuple[int, str, str]:
        return run_cli(self.monkeypatch, self.capsys, *args)

    def dataset(self, with_volume: bool = True) -> Path:
        """Made once per case (later calls return it)."""
        data = self.tmp / "D"
        if (data / "dataset.json").is_file():
            return data
        assert self.cli("dataset", "init", data)[0] == 0
        if with_volume:
            code, out, err = self.cli("dataset", "add-volume", data, "axon", self.stack(), "--type", "tree")
            assert code == 0, err
        return data

    def stack(self, name="stack.ome.tif", spacing=(2.0, 1.0, 1.0), array=None) -> Path:
        path = self.tmp / name
        if not path.exists():
            write_tiff_stack(path, self.image if array is None else array, spacing)
        return path

    def tiff(self, name: str, array, **kwargs) -> Path:
        path = self.tmp / name
        tifffile.imwrite(path, array, **kwargs)
        return path

    def crop(self, name: str, array=None, spacing=(2.0, 1.0, 1.0), origin=(10.0, -5.0, 3.0)) -> Path:
        return write_crop(self.tmp / name, self.image if array is None else array, spacing, origin)

    def pair(self, label=None, **kwargs) -> tuple[Path, Path]:
        return self.crop("img.nii.gz"), self.crop("lbl.nii.gz", self.label if label is None else label, **kwargs)


@dataclass
class Case:
    id: str
    build: Callable[[Files], list]
    expect: tuple[str, ...]
    code: int = 1


def _patch(f: Files, image, label, *extra, split="train"):
    return ["dataset", "add-patch", f.dataset(), "axon", image, label, "--split", split, *extra]


def _vol(f: Files, path, *extra, structure="axon"):
    return ["dataset", "add-volume", f.dataset(), structure, path, *extra]


def _raw_nii(f: Files, name, data, affine=None) -> Path:
    path = f.tmp / name
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


CASES = [
    # ---- init
    Case("init-data-is-a-file", lambda f: ["dataset", "init", f.tiff("D", np.zeros((2, 4, 4), np.uint8))],
         ("{tmp}/D", "exists as a file")),
    Case("init-folder-not-empty", lambda f: ["dataset", "init", f.stack().parent], ("{tmp}", "not empty")),
    Case("init-twice", lambda f: ["dataset", "init", f.dataset(with_volume=False)], ("dataset.json", "already a dataset")),
    Case("init-spacing-two-values", lambda f: ["dataset", "init", f.tmp / "D", "--spacing", "1,2"], ("--spacing",)),
    Case("init-spacing-negative", lambda f: ["dataset", "init", f.tmp / "D", "--spacing", "1,-2,2"], ("--spacing",)),
    # ---- add-volume
    Case("volume-data-not-a-dataset", lambda f: ["dataset", "add-volume", f.stack().parent, "axon", f.stack()],
         ("{tmp}", "not a selma3d dataset", "dataset init")),
    Case("volume-missing", lambda f: _vol(f, f.tmp / "nowhere.tif"), ("nowhere.tif", "no such file")),
    Case("volume-new-structure-without-type", lambda f: _vol(f, f.stack("b.ome.tif"), structure="neuron"),
         ("'neuron'", "--type spot", "--type tree")),
    Case("volume-unknown-type", lambda f: _vol(f, f.stack("b.ome.tif"), "--type", "blob", structure="neuron"),
         ("--type 'blob'",)),
    Case("volume-type-contradicts", lambda f: _vol(f, f.stack("b.ome.tif"), "--type", "spot"),
         ("'axon'", "'tree'", "contradicts")),
    Case("volume-structure-name-with-slash", lambda f: _vol(f, f.stack("b.ome.tif"), "--type", "tree",
                                                            structure="a/b"), ("'a/b'", "letters")),
    Case("volume-two-channels", lambda f: _vol(f, f.tiff("rgb.ome.tif", np.zeros((6, 2, 8, 8), np.uint16),
                                                          metadata={"axes": "ZCYX"})), ("rgb.ome.tif", "2 channels")),
    Case("volume-2d-image", lambda f: _vol(f, f.tiff("flat.tif", np.zeros((8, 8), np.uint16))),
         ("flat.tif", "2D image")),
    Case("volume-float64", lambda f: _vol(f, f.tiff("f64.tif", np.zeros((6, 8, 8)), photometric="minisblack"),
                                          "--spacing", "2,1,1"), ("f64.tif", "dtype float64 is not supported")),
    Case("volume-no-spacing-anywhere", lambda f: _vol(f, f.tiff("plain.tif", f.image, photometric="minisblack")),
         ("plain.tif", "records no voxel spacing", "--spacing")),
    Case("volume-spacing-contradicts-file", lambda f: _vol(f, f.stack("b.ome.tif"), "--spacing", "3,1,1"),
         ("b.ome.tif", "2x1x1", "3x1x1")),
    Case("volume-spacing-differs-from-structure", lambda f: _vol(f, f.stack("b.ome.tif", spacing=(4.0, 1.0, 1.0))),
         ("b.ome.tif", "4x1x1", "differs from 2x1x1", "'axon'")),
    Case("volume-name-taken", lambda f: _vol(f, _second_stack(f)), ("'stack'", "already in the dataset", "--name")),
    Case("volume-tiff-level-link", lambda f: _vol(f, f.stack("b.ome.tif"), "--level", "1"),
         ("b.ome.tif", "level 1 does not exist")),
    Case("volume-tiff-pyramid-level-link", lambda f: _vol(f, _pyramid(f), "--level", "1", "--type", "tree",
                                                          structure="axon2"), ("pyr.ome.tif", "cannot be linked",
                                                                               "--convert")),
    Case("volume-zarr-level-missing", lambda f: _vol(f, write_foreign_ome_zarr(f.tmp / "z.ome.zarr", f.image),
                                                     "--level", "4"), ("z.ome.zarr", "level 4 does not exist")),
    Case("volume-zarr-level-other-spacing", lambda f: _vol(f, write_foreign_ome_zarr(f.tmp / "z.ome.zarr", f.image),
                                                           "--level", "1"), ("4x2x2", "differs from 2x1x1")),
    Case("volume-zarr-bad-metadata", lambda f: _vol(f, _broken_zarr(f)), (".zattrs", "OME-NGFF", "'scale'")),
    Case("volume-convert-onto-user-folder", lambda f: _vol(f, f.stack("mine.ome.tif"), "--convert")
         if _user_folder(f, "D/unannotated/axon/mine.zarr") else None, ("mine.zarr", "already exists")),
    Case("volume-is-inside-its-destination", lambda f: _inside(f), ("is the input",)),
    Case("volume-broken-link-source", lambda f: _vol(f, _dangling(f)), ("gone.tif", "no such file")),
    # ---- add-patch
    Case("patch-label-not-binary", lambda f: _patch(f, *f.pair(label=f.label * 3)), ("lbl.nii.gz", "not binary",
                                                                                    "--binarize")),
    Case("patch-label-fractional", lambda f: _patch(f, *f.pair(label=f.label * 0.5)), ("lbl.nii.gz", "fractional")),
    Case("patch-label-other-shape", lambda f: _patch(f, *f.pair(label=f.label[:, :30])),
         ("lbl.nii.gz", "not on the voxel grid", "shapes")),
    Case("patch-label-other-origin", lambda f: _patch(f, *f.pair(origin=(0.0, 0.0, 0.0))),
         ("lbl.nii.gz", "not on the voxel grid", "affines")),
    Case("patch-label-is-image", lambda f: _patch(f, f.crop("img.nii.gz"), f.tmp / "img.nii.gz"),
         ("img.nii.gz", "the label is the image file itself")),
    Case("patch-label-missing", lambda f: _patch(f, f.crop("img.nii.gz"), f.tmp / "nolabel.nii.gz"),
         ("nolabel.nii.gz", "no such file")),
    Case("patch-label-is-a-folder", lambda f: _patch(f, f.crop("img.nii.gz"), f.tmp), ("{tmp}", "expected a file")),
    Case("patch-image-float64", lambda f: _patch(f, f.crop("img.nii.gz", f.image.astype(np.float64)),
                                                 f.crop("lbl.nii.gz", f.label)), ("img.nii.gz", "float64")),
    Case("patch-image-nan", lambda f: _patch(f, f.crop("img.nii.gz", _with_nan(f.image)), f.crop("lbl.nii.gz", f.label)),
         ("img.nii.gz", "NaN")),
    Case("patch-spacing-differs-from-structure", lambda f: _patch(f, f.crop("img.nii.gz", spacing=(1.0, 1.0, 1.0)),
                                                                  f.crop("lbl.nii.gz", f.label, spacing=(1.0, 1.0, 1.0))),
         ("img.nii.gz", "1x1x1", "differs from 2x1x1")),
    Case("patch-corrupt-gzip", lambda f: _patch(f, corrupt_gzip(f.crop("img.nii.gz", _big(f))),
                                                f.crop("lbl.nii.gz", np.zeros((40, 48, 48), np.uint8))),
         ("img.nii.gz", "corrupt gzip")),
    Case("patch-4d-image", lambda f: _patch(f, _raw_nii(f, "img.nii.gz", np.zeros((8, 8, 8, 3), np.int16)),
                                            f.crop("lbl.nii.gz", f.label)), ("img.nii.gz", "3D")),
    Case("patch-case-taken", lambda f: _patch(f, *f.pair(), "--case", "a1") if _added(f, "a1") else None,
         ("'a1'", "already exists", "--case")),
    Case("patch-split-name-bad", lambda f: _patch(f, *f.pair(), split="../x"), ("split '../x'",)),
    Case("patch-missing-split", lambda f: ["dataset", "add-patch", f.dataset(), "axon", *f.pair()], ("--split",), 2),
    # ---- check
    Case("check-missing-folder", lambda f: ["dataset", "check", f.tmp / "nothing"], ("nothing", "no such file")),
    Case("check-problems", lambda f: ["dataset", "check", _broken_dataset(f)], ("D: 2 problem(s), listed above",)),
]


def _with_nan(image):
    out = image.astype(np.float32)
    out[1, 2, 3] = np.nan
    return out


def _big(f):
    return (np.random.default_rng(0).random((40, 48, 48)) * 1000).astype(np.int16)


def _broken_zarr(f) -> Path:
    store = write_foreign_ome_zarr(f.tmp / "z.ome.zarr", f.image)
    attrs = json.loads((store / ".zattrs").read_text())
    attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"] = [{"type": "translation",
                                                                            "translation": [0, 0, 0, 0]}]
    (store / ".zattrs").write_text(json.dumps(attrs))
    return store


def _pyramid(f) -> Path:
    path = f.tmp / "pyr.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(f.image, subifds=1, metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 1.0,
                                                "PhysicalSizeX": 1.0})
        tif.write(f.image[:, ::2, ::2], subfiletype=1)
    return path


def _second_stack(f) -> Path:
    f.dataset()
    (f.tmp / "other").mkdir()
    return f.stack("other/stack.ome.tif")


def _user_folder(f, rel) -> bool:
    f.dataset()
    (f.tmp / rel).mkdir(parents=True)
    (f.tmp / rel / "notes.txt").write_text("mine")
    return True


def _inside(f):
    data = f.dataset()
    inside = data / "unannotated" / "axon" / "raw.ome.tif"
    write_tiff_stack(inside, f.image)
    return ["dataset", "add-volume", data, "axon", inside]  # would be linked onto itself


def _dangling(f) -> Path:
    link = f.tmp / "gone.tif"
    link.symlink_to(f.tmp / "nowhere.tif")
    return link


def _added(f, case) -> bool:
    data = f.dataset()
    img, lbl = f.pair()
    code, _, err = f.cli("dataset", "add-patch", data, "axon", img, lbl, "--split", "train", "--case", case)
    assert code == 0, err
    return True


def _broken_dataset(f) -> Path:
    data = f.dataset()
    folder = data / "annotated" / "train" / "axon"
    folder.mkdir(parents=True)
    write_crop(folder / "x_img.nii.gz", f.image)
    return data


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_dataset_input(case: Case, tmp_path, monkeypatch, capsys):
    tmp = tmp_path / "case"
    tmp.mkdir()
    monkeypatch.chdir(tmp)
    files = Files(tmp, monkeypatch, capsys)
    argv = case.build(files)
    capsys.readouterr()
    before = sha_tree(tmp)
    links_before = sorted(str(p) for p in tmp.rglob("*") if p.is_symlink())
    code, out, err = files.cli(*argv)
    after = sha_tree(tmp)
    assert "Traceback" not in err, err
    assert code == case.code, f"exit {code}, expected {case.code}:\n{out}\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    if case.code == 2:
        assert lines[0].startswith("Usage: ") and lines[-1].startswith("Error: "), err
    else:
        assert len([line for line in lines if line.startswith("error: ")]) == 1, err
    for text in case.expect:
        assert text.format(tmp=tmp) in err, f"{text.format(tmp=tmp)!r} not in:\n{err}"
    changed = [path for path, digest in before.items() if after.get(path) != digest]
    assert not changed, f"pre-existing files changed or deleted: {changed}"
    assert not sorted(set(after) - set(before)), "left behind"
    assert sorted(str(p) for p in tmp.rglob("*") if p.is_symlink()) == links_before


# ------------------------------------------------------------------------------- good paths

def test_check_lists_every_problem_at_once(tmp_path, monkeypatch, capsys):
    f = Files(tmp_path, monkeypatch, capsys)
    data = f.dataset()
    train = data / "annotated" / "train"
    (train / "axon").mkdir(parents=True)
    write_crop(train / "axon" / "a_img.nii.gz", f.image)
    write_crop(train / "axon" / "a_label.nii.gz", f.label * 2)  # not binary
    write_crop(train / "axon" / "b_img.nii.gz", f.image, spacing_zyx=(1.0, 1.0, 1.0))  # spacing
    write_crop(train / "axon" / "b_label.nii.gz", f.label, spacing_zyx=(1.0, 1.0, 1.0))
    write_crop(train / "axon" / "e_img.nii.gz", f.image)  # no label
    write_crop(train / "axon" / "c_label.nii.gz", f.label)  # no image
    write_crop(train / "axon" / "d_img.nii.gz", f.image.astype(np.float64))  # dtype
    write_crop(train / "axon" / "d_label.nii.gz", f.label[:, :20])  # shape
    (train / "neuron").mkdir()  # a structure without a type, and empty
    (data / "annotated" / "final_test").mkdir()  # an empty split
    (data / "unannotated" / "axon" / "stack.ome.tif").unlink()  # a broken volume record
    (data / "unannotated" / "axon" / "dead.tif").symlink_to(tmp_path / "nowhere.tif")
    code, out, err = f.cli("dataset", "check", data)
    assert code == 1 and err.count("error: ") == 1 and "Traceback" not in err
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    expected = [
        ("a_label.nii.gz", "not binary (values 0, 2)"),
        ("b_img.nii.gz", "differs from 2x1x1"),
        ("e_img.nii.gz", "has no label"),
        ("c_label.nii.gz", "has no image"),
        ("d_img.nii.gz", "dtype float64"),
        ("d_label.nii.gz", "shapes"),
        ("neuron", "empty"),
        ("'neuron' has no type",),
        ("final_test", "empty split"),
        ("stack.ome.tif", "listed in dataset.json volumes but missing"),
        ("dead.tif", "no longer exists"),
        ("a_img.nii.gz", "not listed in dataset.json splits"),
    ]
    for parts in expected:
        assert any(all(p in line for p in parts) for line in problems), f"{parts} not in:\n{out}"
    assert f"error: {data}: {len(problems)} problem(s), listed above" in err


def test_synthetic_dataset_passes_check(tiny_dataset, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "dataset", "check", tiny_dataset)
    assert code == 0, out + err
    assert "vessel (tree)" in out and "cfos (spot)" in out


def test_add_patch_keeps_the_affine_and_stores_a_binary_label(tmp_path, monkeypatch, capsys):
    f = Files(tmp_path, monkeypatch, capsys)
    data = f.dataset()
    instances = (f.label * (np.arange(f.label.size).reshape(f.label.shape) % 5)).astype(np.int32)
    img, lbl = f.crop("img.nii.gz"), f.crop("lbl.nii.gz", instances)
    code, out, err = f.cli("dataset", "add-patch", data, "axon", img, lbl, "--split", "train", "--binarize")
    assert code == 0, err
    folder = data / "annotated" / "train" / "axon"
    source, copied = nib.load(str(img)), nib.load(str(folder / "axon_000_img.nii.gz"))
    np.testing.assert_array_equal(copied.affine, source.affine)
    np.testing.assert_array_equal(np.asarray(copied.dataobj), np.asarray(source.dataobj))
    label = nib.load(str(folder / "axon_000_label.nii.gz"))
    assert label.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(label.dataobj).transpose(2, 1, 0), instances > 0)
    meta = json.loads((data / "dataset.json").read_text())
    assert meta["splits"] == {"train": {"axon": ["axon_000"]}}
    assert f.cli("dataset", "check", data)[0] == 0


def test_linked_level_and_converted_volumes_are_discovered(tmp_path, monkeypatch, capsys):
    from selma3d.data.sampling import volumes_from_dataset
    from selma3d.io.volume import open_volume, volume_spacing

    f = Files(tmp_path, monkeypatch, capsys)
    data = f.dataset()
    store = write_foreign_ome_zarr(tmp_path / "z.ome.zarr", f.image, version="0.5")
    code, out, err = f.cli("dataset", "add-volume", data, "axon_coarse", store, "--type", "tree", "--level", "1")
    assert code == 0, err
    assert "spacing 4x2x2 µm" in out and "level 1" in out
    slices = tmp_path / "slices"
    from selma3d.io.tiffstack import write_slices

    write_slices(slices, f.image)
    code, out, err = f.cli("dataset", "add-volume", data, "axon", slices, "--convert", "--quiet", "--name", "sl",
                           "--spacing", "2,1,1")
    assert code == 0, err  # slices record no spacing: --spacing gives it, and the store records it
    sources = {s.name: s.path for s in volumes_from_dataset(data)}
    assert set(sources) == {"axon/stack", "axon/sl.zarr", "axon_coarse/z.ome.zarr"}
    np.testing.assert_array_equal(open_volume(sources["axon_coarse/z.ome.zarr"])[:], f.image[::2, ::2, ::2])
    assert volume_spacing(sources["axon_coarse/z.ome.zarr"]) == (4.0, 2.0, 2.0)
    assert volume_spacing(sources["axon/sl.zarr"]) == (2.0, 1.0, 1.0)
    np.testing.assert_array_equal(open_volume(sources["axon/stack"])[:], f.image)
    assert f.cli("dataset", "check", data)[0] == 0


def test_init_on_a_hand_made_layout_lists_its_structures(tmp_path, monkeypatch, capsys):
    f = Files(tmp_path, monkeypatch, capsys)
    folder = tmp_path / "D" / "annotated" / "train" / "neuron"
    folder.mkdir(parents=True)
    write_crop(folder / "n1_img.nii.gz", f.image)
    write_crop(folder / "n1_label.nii.gz", f.label)
    assert f.cli("dataset", "init", tmp_path / "D")[0] == 0
    meta = json.loads((tmp_path / "D" / "dataset.json").read_text())
    assert meta["splits"] == {"train": {"neuron": ["n1"]}}
    code, out, err = f.cli("dataset", "check", tmp_path / "D")
    assert code == 1 and "'neuron' has no type" in out


# ------------------------------------------------------------- other commands read the new inputs

def test_convert_takes_the_file_spacing_and_a_level(tmp_path, monkeypatch, capsys):
    from selma3d.io.volume import open_volume, volume_spacing

    f = Files(tmp_path, monkeypatch, capsys)
    stack = f.stack(spacing=(3.0, 0.5, 0.5))
    code, out, err = f.cli("convert", stack, tmp_path / "a.zarr")
    assert code == 0, err
    assert volume_spacing(tmp_path / "a.zarr") == (3.0, 0.5, 0.5)
    np.testing.assert_array_equal(open_volume(tmp_path / "a.zarr")[:], f.image)
    store = write_foreign_ome_zarr(tmp_path / "z.ome.zarr", f.image, spacing_zyx=(2.0, 1.0, 1.0))
    code, out, err = f.cli("convert", store, tmp_path / "b.zarr", "--level", "1")
    assert code == 0, err
    np.testing.assert_array_equal(open_volume(tmp_path / "b.zarr")[:], f.image[::2, ::2, ::2])
    assert volume_spacing(tmp_path / "b.zarr") == (4.0, 2.0, 2.0)


def test_predict_a_level_of_a_foreign_ome_zarr(tmp_path, monkeypatch, capsys, tiny_run):
    from selma3d.io.volume import open_volume, volume_spacing

    f = Files(tmp_path, monkeypatch, capsys)
    image = np.tile(f.image, (2, 2, 2))
    store = write_foreign_ome_zarr(tmp_path / "z.ome.zarr", image, spacing_zyx=(2.0, 1.0, 1.0))
    code, out, err = f.cli("predict", "--model", tiny_run, store, store / "mask.zarr", "--level", "1", "--quiet")
    assert code == 1 and "inside the input" in err and not (store / "mask.zarr").exists()
    code, out, err = f.cli("predict", "--model", tiny_run, store, tmp_path / "mask.zarr", "--level", "1", "--quiet")
    assert code == 0, err
    assert open_volume(tmp_path / "mask.zarr").shape == (16, 32, 32)
    assert volume_spacing(tmp_path / "mask.zarr") == (4.0, 2.0, 2.0)


def test_a_tiff_pyramid_level_is_converted(tmp_path, monkeypatch, capsys):
    from selma3d.io.volume import open_volume, volume_spacing

    f = Files(tmp_path, monkeypatch, capsys)
    data = f.dataset(with_volume=False)
    code, out, err = f.cli("dataset", "add-volume", data, "axon", _pyramid(f), "--level", "1", "--convert",
                           "--type", "tree", "--quiet")
    assert code == 0, err
    store = data / "unannotated" / "axon" / "pyr.zarr"
    np.testing.assert_array_equal(open_volume(store)[:], f.image[:, ::2, ::2])
    assert volume_spacing(store) == (2.0, 2.0, 2.0)
