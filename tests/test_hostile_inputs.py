"""A hostile new user: bad inputs over every command.

Each case of :data:`CASES` builds its files in a fresh folder, runs ``selma3d`` (in process through
the real entry point :func:`selma3d.cli.app`; read-only locations in a subprocess inside a private
mount namespace) and asserts: the exit status (1 for an error, 2 for a usage error), exactly one
``error:`` line naming the file and the problem (click's ``Usage``/``Error`` pair for usage
errors), no traceback, every pre-existing file byte-identical afterwards and no new file left
behind (no half-written output that looks finished). RELIABILITY.md records the matrix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest

from selma3d.io.nifti import write_nifti


# ------------------------------------------------------------------------------------- helpers

def sha_tree(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (a file root is hashed itself)."""
    digests = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def corrupt_gzip(path: Path) -> Path:
    """Zero 50 bytes in the middle of a gzip file: still a gzip, but `gzip -t` fails (CRC)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 50] = bytes(50)
    path.write_bytes(bytes(data))
    return path


class World:
    """The files one case sees: its own folder ``tmp`` plus the shared tiny dataset and run."""

    def __init__(self, tmp: Path, data: Path, run: Path):
        self.tmp, self.data, self.run = tmp, data, run

    def nii(self, name: str, array=None, shape=(16, 20, 20)) -> Path:
        if array is None:
            array = (np.random.default_rng(len(name)).random(shape) * 1000).astype(np.int16)
        return write_nifti(self.tmp / name, array)

    def raw_nii(self, name: str, data: np.ndarray) -> Path:
        """A NIfTI with any number of dimensions (bypasses selma3d's 3D-only writer)."""
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
        return path

    def folder(self, name: str, *files: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        for file in files:
            self.nii(f"{name}/{file}")
        return path

    def slices(self, name: str, depth: int = 4) -> Path:
        import tifffile

        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        for z in range(depth):
            tifffile.imwrite(path / f"slice_{z:05d}.tif", np.full((20, 20), z, np.int16))
        return path

    def zarr(self, name: str, shape=(24, 32, 32)) -> Path:
        from selma3d.io.zarr_convert import convert_to_zarr

        volume = (np.random.default_rng(0).random(shape) * 1000).astype(np.int16)
        return convert_to_zarr(volume, self.tmp / name, chunks=16, progress=False)

    def file(self, name: str, text: str = "mine\n") -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def dataset_copy(self, name: str = "data") -> Path:
        return Path(shutil.copytree(self.data, self.tmp / name))

    def pretrain_config(self, name: str = "prun") -> Path:
        """The config.json an earlier `selma3d pretrain` run leaves (byol, 16³ patches, tiny UNet)."""
        from dataclasses import asdict

        from selma3d.training.pretrain import CONFIG_NAME, PretrainConfig

        run = self.tmp / name
        run.mkdir()
        config = PretrainConfig(method="byol", data=str(self.data), out=str(run), model="unet3d",
                                model_options={"features": [4, 8, 16]}, patch_size=(16, 16, 16))
        (run / CONFIG_NAME).write_text(json.dumps(asdict(config), default=str))
        return run


@dataclass
class Case:
    id: str
    build: Callable[[World], list]  # → the arguments after `selma3d`
    expect: tuple[str, ...] = ()  # substrings of stderr ({tmp}, {data}, {run} are filled in)
    code: int = 1
    readonly: str | None = None  # a folder under tmp that is mounted read-only for the run
    leaves: tuple[str, ...] = ()  # files (relative to tmp) the command writes on purpose despite the error
    cpu_only: bool = False  # asks for a GPU: an error only where torch has no CUDA


def _predict(w, *args):
    return ["predict", "--model", w.run, "--quiet", *args]


def _ft(w, *args, data=None):
    return ["finetune", "--data", data or w.data, "--max-steps", "1", "--patch-size", "16", "--quiet",
            "--num-workers", "0", "--model-option", "features=[4,8,16]", *args]


def _label_on_another_grid(w) -> Path:
    """A dataset copy whose first c-Fos label was written with another spacing than its image."""
    from selma3d.io.nifti import read_nifti_array, write_nifti

    data = w.dataset_copy()
    label = sorted((data / "annotated" / "train" / "cfos").glob("*_label.nii.gz"))[0]
    write_nifti(label, read_nifti_array(label), spacing_zyx=(1.0, 3.0, 3.0))
    return data


def _pt(w, *args, patch="16"):
    return ["pretrain", "--method", "byol", "--model-option", "features=[4,8,16]", "--patch-size", patch,
            "--max-steps", "1", "--num-workers", "0", "--no-progress", *args]


def _predict_folder_with(w, make_bad):
    """in/a.nii.gz, a bad in/b.nii.gz (made by ``make_bad``), in/c.nii.gz → OUT folder."""
    folder = w.folder("in", "a.nii.gz", "c.nii.gz")
    make_bad(w)
    return _predict(w, folder, w.tmp / "out")


def _nan_image(w, value):
    array = np.random.default_rng(0).random((16, 20, 20)).astype(np.float32)
    array[3, 4, 5] = value
    return w.nii("in/nan.nii.gz", array)


def _synth_then_add(w, extra: str):
    from selma3d.data.synthetic import make_dataset

    out = make_dataset(w.tmp / "R", preset="tiny", seed=1)
    w.file(f"R/{extra}", "user's own notes\n")
    return ["synth", out, "--preset", "tiny", "--overwrite", "--quiet"]


CASES = [
    # ---- usage errors: click's message, exit 2
    Case("usage-finetune-unknown-option", lambda w: ["finetune", "--bogus"], ("No such option",), 2),
    Case("usage-predict-missing-arguments", lambda w: ["predict"], ("Missing",), 2),
    Case("usage-synth-seed-not-int", lambda w: ["synth", w.tmp / "S", "--seed", "abc"], ("--seed",), 2),
    Case("usage-convert-chunks-not-int", lambda w: ["convert", w.tmp, w.tmp / "o.zarr", "--chunks", "x"],
         ("--chunks",), 2),
    Case("usage-evaluate-jobs-float", lambda w: ["evaluate", w.tmp, w.tmp, "--jobs", "1.5"], ("--jobs",), 2),
    Case("usage-pretrain-missing-method", lambda w: ["pretrain", "--data", w.tmp, "--out", w.tmp / "p"],
         ("--method",), 2),
    Case("usage-unknown-command", lambda w: ["frobnicate"], ("No such command",), 2),
    Case("usage-report-max-figures-word", lambda w: ["report", "m.json", "--out", "r", "--max-figures", "many"],
         ("--max-figures",), 2),
    Case("usage-convert-spacing-two-values", lambda w: ["convert", w.tmp, w.tmp / "o.zarr", "--spacing", "1", "2"],
         ("--spacing",), 2),
    Case("usage-demo-seed-word", lambda w: ["demo", w.tmp / "d", "--seed", "x"], ("--seed",), 2),

    # ---- predict: never overwrite an input (data loss items 1, 2)
    Case("predict-output-is-input-file", lambda w: _predict(w, w.nii("x.nii.gz"), w.tmp / "x.nii.gz"),
         ("{tmp}/x.nii.gz", "is the input")),
    Case("predict-output-is-input-folder", lambda w: _predict(w, w.folder("in", "a.nii.gz"), w.tmp / "in"),
         ("{tmp}/in", "is the input")),
    Case("predict-output-inside-input", lambda w: _predict(w, w.folder("in", "a.nii.gz"), w.tmp / "in" / "masks"),
         ("{tmp}/in/masks", "inside the input")),
    Case("predict-output-contains-input", lambda w: _predict(w, w.nii("in/a.nii.gz"), w.tmp / "in"),
         ("{tmp}/in", "contains the input")),
    Case("predict-zarr-onto-itself-overwrite", lambda w: _predict(w, w.zarr("s.zarr"), w.tmp / "s.zarr",
                                                                  "--overwrite"),
         ("{tmp}/s.zarr", "is the input")),
    Case("predict-zarr-into-itself", lambda w: _predict(w, w.zarr("s.zarr"), w.tmp / "s.zarr" / "m.zarr"),
         ("m.zarr", "inside the input")),
    Case("predict-tiff-folder-onto-itself", lambda w: _predict(w, w.slices("sl"), w.tmp / "sl", "--overwrite"),
         ("{tmp}/sl", "is the input")),
    # ---- predict: inputs checked before any mask is written (items 4, 9, 12)
    Case("predict-missing-input", lambda w: _predict(w, w.tmp / "nope.nii.gz", w.tmp / "o.nii.gz"),
         ("nope.nii.gz", "no such file")),
    Case("predict-empty-folder", lambda w: _predict(w, w.folder("in"), w.tmp / "out"), ("{tmp}/in", "no NIfTI")),
    Case("predict-wrong-extension", lambda w: _predict(w, w.file("scan.txt"), w.tmp / "out"),
         ("scan.txt", "unsupported input")),
    Case("predict-nan-image", lambda w: _predict(w, _nan_image(w, np.nan), w.tmp / "out"), ("nan.nii.gz", "NaN")),
    Case("predict-inf-image", lambda w: _predict(w, _nan_image(w, np.inf), w.tmp / "out"), ("nan.nii.gz", "infinite")),
    Case("predict-corrupt-file-mid-folder", lambda w: _predict_folder_with(w, lambda w: w.file("in/b.nii.gz", "x")),
         ("in/b.nii.gz", "cannot read NIfTI")),
    Case("predict-gzip-crc-error", lambda w: _predict(w, corrupt_gzip(w.nii("x.nii.gz", shape=(40, 48, 48))),
                                                      w.tmp / "o.nii.gz"),
         ("x.nii.gz", "corrupt gzip")),
    Case("predict-crc-error-mid-folder", lambda w: _predict_folder_with(
        w, lambda w: corrupt_gzip(w.nii("in/b.nii.gz", shape=(40, 48, 48)))), ("in/b.nii.gz", "corrupt gzip")),
    Case("predict-2d-nifti", lambda w: _predict(w, w.raw_nii("flat.nii.gz", np.zeros((20, 20), np.int16)),
                                                w.tmp / "o.nii.gz"),
         ("flat.nii.gz", "expected a 3D image")),
    Case("predict-4d-nifti", lambda w: _predict(w, w.raw_nii("multi.nii.gz", np.zeros((8, 8, 8, 3), np.int16)),
                                                w.tmp / "o.nii.gz"),
         ("multi.nii.gz", "expected a 3D image")),
    Case("predict-output-folder-is-a-file", lambda w: _predict(w, w.folder("in", "a.nii.gz"), w.file("out")),
         ("{tmp}/out", "exists as a file, expected a folder")),
    Case("predict-output-file-is-a-folder", lambda w: _predict(w, w.nii("x.nii.gz"), w.folder("o.nii.gz")),
         ("o.nii.gz", "exists as a folder, expected a file")),
    Case("predict-output-parent-is-a-file", lambda w: _predict(w, w.nii("x.nii.gz"), w.file("f") / "o.nii.gz"),
         ("{tmp}/f", "is a file, not a folder")),
    Case("predict-plain-zarr-array-2d", lambda w: _predict(w, _plain_zarr(w, (32, 32)), w.tmp / "m.zarr"),
         ("a.zarr", "3D")),
    Case("predict-zarr-bad-metadata", lambda w: _predict(w, w.file("b.zarr/zarr.json", "{broken").parent, w.tmp / "m.zarr"),
         ("zarr.json", "unreadable Zarr metadata")),
    Case("predict-device-cuda-on-cpu-torch", lambda w: _predict(w, w.nii("x.nii.gz"), w.tmp / "o.nii.gz",
                                                                "--device", "cuda"),
         ("--device cuda",), cpu_only=True),
    Case("predict-device-nonsense", lambda w: _predict(w, w.nii("x.nii.gz"), w.tmp / "o.nii.gz", "--device", "gpu9"),
         ("--device gpu9", "not a device")),
    Case("predict-model-missing", lambda w: ["predict", "--model", w.tmp / "norun", w.nii("x.nii.gz"),
                                             w.tmp / "o.nii.gz"],
         ("norun", "no such file")),
    Case("predict-model-not-a-run", lambda w: ["predict", "--model", w.folder("fake"), w.nii("x.nii.gz"),
                                               w.tmp / "o.nii.gz"],
         ("fake", "model.pt missing")),
    Case("predict-overlap-out-of-range", lambda w: _predict(w, w.nii("x.nii.gz"), w.tmp / "o.nii.gz",
                                                            "--overlap", "1.5"),
         ("--overlap", "[0, 1)")),
    Case("predict-threshold-out-of-range", lambda w: _predict(w, w.nii("x.nii.gz"), w.tmp / "o.nii.gz",
                                                              "--threshold", "2"),
         ("--threshold",)),
    Case("predict-negative-min-size", lambda w: _predict(w, w.nii("x.nii.gz"), w.tmp / "o.nii.gz",
                                                         "--min-size", "-3"),
         ("--min-size",)),
    Case("predict-block-size-word", lambda w: _predict(w, w.zarr("s.zarr"), w.tmp / "m.zarr", "--block-size", "big"),
         ("--block-size", "big")),
    Case("predict-negative-block-size", lambda w: _predict(w, w.zarr("s.zarr"), w.tmp / "m.zarr",
                                                           "--block-size", "-8"),
         ("--block-size",)),
    Case("predict-whole-volume-to-tif-file", lambda w: _predict(w, w.zarr("s.zarr"), w.tmp / "mask.tif"),
         ("mask.tif", "unknown output kind")),
    Case("predict-readonly-output", lambda w: _predict(w, w.nii("x.nii.gz"), w.folder("ro") / "o.nii.gz"),
         ("{tmp}/ro", "read-only file system"), readonly="ro"),

    # ---- convert (items 4, 10, 15)
    Case("convert-missing-input", lambda w: ["convert", w.tmp / "nowhere", w.tmp / "o.zarr"],
         ("nowhere", "no such file")),
    Case("convert-empty-folder", lambda w: ["convert", w.folder("empty"), w.tmp / "o.zarr"], ("empty",)),
    Case("convert-folder-of-text-files", lambda w: ["convert", w.file("txt/a.txt").parent, w.tmp / "o.zarr"],
         ("txt",)),
    Case("convert-output-is-input", lambda w: ["convert", w.slices("sl"), w.tmp / "sl"], ("{tmp}/sl", "is the input")),
    Case("convert-output-inside-input", lambda w: ["convert", w.slices("sl"), w.tmp / "sl" / "o.zarr"],
         ("o.zarr", "inside the input")),
    Case("convert-output-is-a-file", lambda w: ["convert", w.slices("sl"), w.file("o.zarr")],
         ("o.zarr", "exists as a file")),
    Case("convert-overwrite-user-folder", lambda w: ["convert", w.slices("sl"), w.file("mine/notes.txt").parent,
                                                     "--overwrite"],
         ("mine", "not a Zarr store")),
    Case("convert-overwrite-while-locked", lambda w: ["convert", w.slices("sl"), _locked_store(w), "--overwrite"],
         ("o.zarr", "is writing this output", "pid")),
    Case("convert-zero-chunks", lambda w: ["convert", w.slices("sl"), w.tmp / "o.zarr", "--chunks", "0"],
         ("--chunks",)),
    Case("convert-negative-spacing", lambda w: ["convert", w.slices("sl"), w.tmp / "o.zarr", "--spacing", "-1", "1", "1"],
         ("--spacing",)),
    Case("convert-zero-levels", lambda w: ["convert", w.slices("sl"), w.tmp / "o.zarr", "--levels", "0"],
         ("--levels",)),
    Case("convert-gzip-crc-error", lambda w: ["convert", corrupt_gzip(w.nii("x.nii.gz", shape=(40, 48, 48))),
                                              w.tmp / "o.zarr"],
         ("x.nii.gz", "corrupt gzip")),
    Case("convert-readonly-output", lambda w: ["convert", w.slices("sl"), w.folder("ro") / "o.zarr"],
         ("{tmp}/ro", "read-only file system"), readonly="ro"),

    # ---- synth (items 3, 14)
    Case("synth-negative-seed", lambda w: ["synth", w.tmp / "S", "--preset", "tiny", "--seed", "-1", "--quiet"],
         ("--seed", "-1")),
    Case("synth-unknown-preset", lambda w: ["synth", w.tmp / "S", "--preset", "huge"], ("huge",)),
    Case("synth-overwrite-user-dataset", lambda w: ["synth", w.file("R/dataset.json", "{\"mine\": 1}").parent,
                                                    "--preset", "tiny", "--overwrite", "--quiet"],
         ("{tmp}/R", "refusing to overwrite")),
    Case("synth-overwrite-with-user-file-added", lambda w: _synth_then_add(w, "annotated/notes.txt"),
         ("notes.txt", "not written by `selma3d synth`")),
    Case("synth-overwrite-with-user-file-changed", lambda w: _synth_then_add(w, "dataset.json"),
         ("dataset.json", "not written by `selma3d synth`")),
    Case("synth-output-is-a-file", lambda w: ["synth", w.file("S"), "--preset", "tiny"], ("{tmp}/S", "a file")),
    Case("synth-readonly-output", lambda w: ["synth", w.folder("ro") / "S", "--preset", "tiny", "--quiet"],
         ("{tmp}/ro", "read-only file system"), readonly="ro"),

    # ---- pretrain (items 8, 10, 11, 13)
    Case("pretrain-unknown-method", lambda w: ["pretrain", "--method", "nonsense", "--data", w.data, "--out", w.tmp / "p"],
         ("nonsense",)),
    Case("pretrain-data-missing", lambda w: _pt(w, "--data", w.tmp / "nodata", "--out", w.tmp / "p"),
         ("nodata", "no such file")),
    Case("pretrain-data-is-a-file", lambda w: _pt(w, "--data", w.file("d.txt"), "--out", w.tmp / "p"),
         ("d.txt", "expected a folder")),
    Case("pretrain-data-empty", lambda w: _pt(w, "--data", w.folder("empty"), "--out", w.tmp / "p"),
         ("empty", "not a selma3d dataset")),
    Case("pretrain-out-is-a-file", lambda w: _pt(w, "--data", w.data, "--out", w.file("p")), ("{tmp}/p", "a file")),
    Case("pretrain-out-is-data", lambda w: _pt(w, "--data", w.dataset_copy(), "--out", w.tmp / "data"),
         ("{tmp}/data", "is the input")),
    Case("pretrain-negative-patch-size", lambda w: _pt(w, "--data", w.data, "--out", w.tmp / "p", "--patch-size", "-4"),
         ("--patch-size",)),
    Case("pretrain-negative-lr", lambda w: _pt(w, "--data", w.data, "--out", w.tmp / "p", "--lr", "-1"), ("--lr",)),
    Case("pretrain-model-option-without-value", lambda w: _pt(w, "--data", w.data, "--out", w.tmp / "p",
                                                              "--model-option", "features"),
         ("--model-option", "key=value")),
    Case("pretrain-accelerator-gpu-on-cpu-torch", lambda w: _pt(w, "--data", w.data, "--out", w.tmp / "p",
                                                                "--accelerator", "gpu"),
         ("--accelerator gpu",), cpu_only=True),
    Case("pretrain-resume-without-run", lambda w: _pt(w, "--data", w.data, "--out", w.tmp / "p", "--resume"),
         ("{tmp}/p/config.json", "--resume needs the folder of an earlier run")),
    Case("pretrain-resume-other-patch-size", lambda w: _pt(w, "--data", w.data, "--out", w.pretrain_config(),
                                                           "--resume", patch="32"),
         ("patch_size", "(16, 16, 16)", "may change only", "--max-steps")),
    Case("pretrain-resume-other-model-option", lambda w: [
        "pretrain", "--method", "byol", "--data", w.data, "--out", w.pretrain_config(), "--resume",
        "--model-option", "features=[4,8,32]", "--patch-size", "16"], ("model_options", "may change only")),
    Case("pretrain-resume-same-options-no-checkpoint", lambda w: _pt(w, "--data", w.data, "--out",
                                                                     w.pretrain_config(), "--resume"),
         ("last.ckpt", "no checkpoint")),
    Case("pretrain-readonly-out", lambda w: _pt(w, "--data", w.data, "--out", w.folder("ro") / "p"),
         ("{tmp}/ro", "read-only file system"), readonly="ro"),

    # ---- finetune (items 4, 9, 11, 13)
    Case("finetune-freeze-encoder-without-pretrained", lambda w: _ft(w, "--out", w.tmp / "f", "--freeze-encoder"),
         ("--freeze-encoder", "--pretrained")),
    Case("finetune-data-missing", lambda w: ["finetune", "--data", w.tmp / "nodata", "--out", w.tmp / "f"],
         ("nodata", "no such file")),
    Case("finetune-out-is-a-file", lambda w: _ft(w, "--out", w.file("f")), ("{tmp}/f", "a file")),
    Case("finetune-pretrained-missing", lambda w: _ft(w, "--out", w.tmp / "f", "--pretrained", w.tmp / "enc.pt"),
         ("enc.pt", "no such file")),
    Case("finetune-pretrained-not-a-checkpoint", lambda w: _ft(w, "--out", w.tmp / "f", "--pretrained",
                                                               w.file("enc.pt", "garbage")),
         ("enc.pt", "cannot read")),
    Case("finetune-label-on-another-grid",
         lambda w: _ft(w, "--out", w.tmp / "r", "--structures", "cfos", data=_label_on_another_grid(w)),
         ("cfos_000_label.nii.gz", "voxel grid")),
    Case("finetune-out-inside-data", lambda w: _ft(w, "--out", w.tmp / "data" / "run", data=w.dataset_copy()),
         ("{tmp}/data/run", "inside the input")),
    Case("finetune-zero-patch-size", lambda w: _ft(w, "--out", w.tmp / "f") + ["--patch-size", "0"],
         ("--patch-size",)),
    Case("finetune-unknown-loss", lambda w: _ft(w, "--out", w.tmp / "f", "--loss", "bogus"), ("bogus",)),
    Case("finetune-zero-labels", lambda w: _ft(w, "--out", w.tmp / "f", "--labels", "0"), ("--labels", ">= 1")),
    Case("finetune-accelerator-gpu-on-cpu-torch", lambda w: _ft(w, "--out", w.tmp / "f", "--accelerator", "gpu"),
         ("--accelerator gpu",), cpu_only=True),
    Case("finetune-resume-without-run", lambda w: ["finetune", "--out", w.tmp / "f", "--resume"],
         ("{tmp}/f", "no checkpoint to resume")),
    Case("finetune-gzip-crc-error-in-dataset", lambda w: _ft(w, "--out", w.tmp / "f", "--structures", "cfos",
                                                             data=_crc_dataset(w)),
         ("cfos_000_img.nii.gz", "corrupt gzip")),

    # ---- evaluate (items 4, 10, 11)
    Case("evaluate-missing-prediction", lambda w: ["evaluate", w.tmp / "nopred", w.data, "--out", w.tmp / "m.json"],
         ("nopred", "no such file")),
    Case("evaluate-out-is-a-folder", lambda w: ["evaluate", w.nii("p/a.nii.gz"), w.nii("g/a_label.nii.gz"),
                                                "--out", w.folder("m.json")],
         ("m.json", "exists as a folder, expected a file")),
    Case("evaluate-csv-is-a-folder", lambda w: ["evaluate", w.nii("p/a.nii.gz"), w.nii("g/a_label.nii.gz"),
                                                "--out", w.tmp / "m.json", "--csv", w.folder("c.csv")],
         ("c.csv", "exists as a folder")),
    Case("evaluate-out-is-ground-truth", lambda w: ["evaluate", w.nii("p/a.nii.gz"), w.nii("g/a_label.nii.gz"),
                                                    "--out", w.tmp / "g" / "a_label.nii.gz"],
         ("a_label.nii.gz", "is the input")),
    Case("evaluate-out-inside-predictions", lambda w: ["evaluate", w.folder("p", "a.nii.gz"), w.nii("g/a_label.nii.gz"),
                                                       "--out", w.tmp / "p" / "m.json"],
         ("m.json", "inside the input")),
    Case("evaluate-gzip-crc-error", lambda w: ["evaluate", corrupt_gzip(w.nii("p/a.nii.gz", shape=(40, 48, 48))),
                                               w.nii("g/a_label.nii.gz", shape=(40, 48, 48)), "--out", w.tmp / "m.json",
                                               "--quiet", "--structure", "cfos"],
         ("a.nii.gz", "corrupt gzip", "no case could be scored"), leaves=("m.json",)),  # the failure list
    Case("evaluate-readonly-out", lambda w: ["evaluate", w.nii("p/a.nii.gz"), w.nii("g/a_label.nii.gz"),
                                             "--out", w.folder("ro") / "m.json"],
         ("{tmp}/ro", "read-only file system"), readonly="ro"),

    # ---- leaderboard, report, demo (item 11)
    Case("leaderboard-submission-without-team", lambda w: ["leaderboard", w.data, "just_a_folder"],
         ("just_a_folder", "TEAM=PRED_DIR")),
    Case("leaderboard-submission-missing", lambda w: ["leaderboard", w.data, f"a={w.tmp / 'nopred'}"],
         ("nopred", "no such file")),
    Case("leaderboard-out-is-a-file", lambda w: ["leaderboard", w.data, f"a={w.folder('p')}", "--out", w.file("lb")],
         ("{tmp}/lb", "a file")),
    Case("leaderboard-out-is-ground-truth", lambda w: ["leaderboard", w.folder("g", "a_label.nii.gz"),
                                                       f"a={w.folder('p')}", "--out", w.tmp / "g"],
         ("{tmp}/g", "is the input")),
    Case("report-missing-metrics", lambda w: ["report", w.tmp / "m.json", "--out", w.tmp / "r"],
         ("m.json", "no such file")),
    Case("report-metrics-not-json", lambda w: ["report", w.file("m.json", "{oops"), "--out", w.tmp / "r"],
         ("m.json", "cannot read metrics JSON")),
    Case("report-out-is-a-file", lambda w: ["report", w.file("m.json", "{\"cases\": []}"), "--out", w.file("r")],
         ("{tmp}/r", "a file")),
    Case("report-pred-empty-folder", lambda w: ["report", w.file("m.json", "{\"cases\": []}"), "--out", w.tmp / "r",
                                                "--pred", w.folder("p")],
         ("{tmp}/p", "no NIfTI")),
    Case("report-out-is-metrics", lambda w: ["report", w.file("m.json", "{\"cases\": []}"), "--out", w.tmp / "m.json"],
         ("m.json",)),
    Case("demo-out-is-a-file", lambda w: ["demo", w.file("d"), "--mode", "quick"], ("{tmp}/d", "a file")),
    Case("demo-unknown-mode", lambda w: ["demo", w.tmp / "d", "--mode", "fast"], ("fast",)),
    Case("study-missing-data", lambda w: ["study", "--data", w.tmp / "nothing", "--out", w.tmp / "s"],
         ("{tmp}/nothing",)),
    Case("study-out-is-a-file", lambda w: ["study", "--data", w.data, "--out", w.file("s")], ("{tmp}/s", "a file")),
    Case("study-out-inside-data", lambda w: ["study", "--data", w.data, "--out", w.data / "study"], ("study",)),
    Case("study-unknown-preset", lambda w: ["study", "--data", w.data, "--out", w.tmp / "s", "--preset", "huge"],
         ("huge",)),
    Case("study-bad-labels", lambda w: ["study", "--data", w.data, "--out", w.tmp / "s", "--labels", "two"],
         ("--labels",)),
    Case("study-encoder-missing", lambda w: ["study", "--data", w.data, "--out", w.tmp / "s", "--encoder",
                                             f"byol={w.tmp / 'none.pt'}"], ("none.pt",)),

    # ---- stats (issue 9): inputs on different grids, a mask that is not binary, outputs that
    # would overwrite an input or cannot be written; nothing may be left behind
    Case("export-model-is-not-a-run", lambda w: ["export", "--model", w.folder("notrun", "readme.txt"), "--out", w.tmp / "m.zip"],
         ("{tmp}/notrun", "model.pt missing")),
    Case("export-model-missing", lambda w: ["export", "--model", w.tmp / "missing", "--out", w.tmp / "m.zip"],
         ("{tmp}/missing", "no such file")),
    Case("export-out-not-zip", lambda w: ["export", "--model", w.run, "--out", w.tmp / "m.txt"],
         ("{tmp}/m.txt", ".zip")),
    Case("stats-mask-and-image-shapes-differ", lambda w: _stats(w, w.nii("m.nii.gz", _binary()), "--image",
                                                                w.nii("i.nii.gz", shape=(16, 20, 24))),
         ("i.nii.gz", "(16, 20, 24)", "same voxel grid")),
    Case("stats-regions-shape-differs", lambda w: _stats(w, w.nii("m.nii.gz", _binary()), "--regions",
                                                         w.nii("r.nii.gz", np.zeros((8, 20, 20), np.int16))),
         ("r.nii.gz", "same voxel grid")),
    Case("stats-mask-not-binary", lambda w: _stats(w, w.nii("m.nii.gz", _binary() * np.int16(3) + _binary(1))),
         ("m.nii.gz", "not binary")),
    Case("stats-probability-map-as-mask", lambda w: _stats(w, w.nii("p.nii.gz", np.random.default_rng(0).random(
        (16, 20, 20)).astype(np.float32))), ("p.nii.gz", "not binary")),
    Case("stats-regions-not-integers", lambda w: _stats(w, w.nii("m.nii.gz", _binary()), "--regions",
                                                        w.nii("r.nii.gz", np.zeros((16, 20, 20), np.float32))),
         ("r.nii.gz", "integers")),
    Case("stats-missing-mask", lambda w: _stats(w, w.tmp / "nomask.zarr"), ("nomask.zarr", "no such file")),
    Case("stats-output-is-input", lambda w: ["stats", w.zarr("s.zarr"), "--out", w.tmp / "s.zarr", "--quiet"],
         ("{tmp}/s.zarr", "is the input")),
    Case("stats-output-inside-image", lambda w: _stats(w, w.nii("m.nii.gz", _binary()), "--image",
                                                       w.zarr("s.zarr"), out=w.tmp / "s.zarr" / "st"),
         ("st", "inside the input")),
    Case("stats-output-parent-is-a-file", lambda w: _stats(w, w.nii("m.nii.gz", _binary()), out=w.file("f") / "st"),
         ("{tmp}/f", "is a file, not a folder")),
    Case("stats-output-not-written-by-stats", lambda w: _stats(w, w.nii("m.nii.gz", _binary()),
                                                               out=w.file("mine/notes.txt").parent),
         ("mine", "not written by `selma3d stats`")),
    Case("stats-unknown-type", lambda w: _stats(w, w.nii("m.nii.gz", _binary()), "--type", "blob"),
         ("--type", "blob")),
    Case("stats-block-size-word", lambda w: _stats(w, w.nii("m.nii.gz", _binary()), "--block-size", "big"),
         ("--block-size", "big")),
    Case("stats-zero-density-factor", lambda w: _stats(w, w.nii("m.nii.gz", _binary()), "--density-factor", "0"),
         ("--density-factor",)),
    Case("stats-negative-spacing", lambda w: _stats(w, w.nii("m.nii.gz", _binary()), "--spacing", "1,-1,1"),
         ("--spacing",)),
    Case("stats-readonly-output", lambda w: _stats(w, w.nii("m.nii.gz", _binary()), out=w.folder("ro") / "st"),
         ("{tmp}/ro", "read-only file system"), readonly="ro"),
    Case("usage-stats-missing-out", lambda w: ["stats", w.tmp / "m.nii.gz"], ("--out",), 2),

    # ---- --config files of the training commands (and predict): one error naming file and key
    Case("finetune-config-unknown-key", lambda w: _cfg(w, "finetune", "max_step: 3\n"),
         ("{tmp}/run.yaml", "unknown key 'max_step'", "did you mean max_steps", "valid keys: data, out")),
    Case("finetune-config-wrong-type", lambda w: _cfg(w, "finetune", "max_steps: many\n"),
         ("{tmp}/run.yaml", "max_steps: expected an integer", "'many'")),
    Case("finetune-config-missing-file", lambda w: ["finetune", "--config", w.tmp / "nope.yaml", "--out", w.tmp / "r"],
         ("{tmp}/nope.yaml", "no such file")),
    Case("finetune-config-not-a-mapping", lambda w: _cfg(w, "finetune", "- 1\n- 2\n"),
         ("{tmp}/run.yaml", "expected a mapping", "got a list")),
    Case("finetune-config-not-yaml", lambda w: _cfg(w, "finetune", "max_steps: [1\n"),
         ("{tmp}/run.yaml", "not valid YAML")),
    Case("finetune-config-is-a-folder", lambda w: ["finetune", "--config", w.folder("conf"), "--out", w.tmp / "r"],
         ("{tmp}/conf", "is a folder")),
    Case("finetune-config-key-twice", lambda w: _cfg(w, "finetune", "max-steps: 1\nmax_steps: 2\n"),
         ("{tmp}/run.yaml", "max_steps is given twice")),
    Case("pretrain-config-bool-for-int", lambda w: _cfg(w, "pretrain", "method: byol\nbatch_size: true\n"),
         ("{tmp}/run.yaml", "batch_size: expected an integer", "a boolean")),
    Case("pretrain-config-unknown-key", lambda w: _cfg(w, "pretrain", "methods: byol\n"),
         ("{tmp}/run.yaml", "unknown key 'methods'", "did you mean method")),
    Case("study-config-mapping-for-a-list", lambda w: _cfg(w, "study", "labels: {a: 1}\n"),
         ("{tmp}/run.yaml", "labels: expected a text, a number or a list", "a mapping")),
    Case("study-config-unknown-key", lambda w: _cfg(w, "study", "max_steps: 3\n"),
         ("{tmp}/run.yaml", "unknown key 'max_steps'", "valid keys:")),
    Case("predict-config-wrong-type", lambda w: ["predict", w.nii("x.nii.gz"), w.tmp / "o.nii.gz", "--model", w.run,
                                                 "--config", w.file("run.yaml", "overlap: half\n")],
         ("{tmp}/run.yaml", "overlap: expected a number", "'half'")),
]


def _cfg(w, command: str, text: str) -> list:
    """``selma3d COMMAND --config run.yaml --out R`` with ``text`` as the file (cwd is w.tmp)."""
    return [command, "--config", w.file("run.yaml", text), "--out", w.tmp / "r"]


def _binary(seed: int = 0) -> np.ndarray:
    """A 16×20×20 0/1 int16 mask."""
    return (np.random.default_rng(seed).random((16, 20, 20)) < 0.1).astype(np.int16)


def _stats(w, mask, *args, out=None):
    return ["stats", mask, "--out", out or w.tmp / "st", "--quiet", "--block-size", "8", *args]


def _plain_zarr(w, shape) -> Path:
    import zarr

    path = w.tmp / "a.zarr"
    zarr.create_array(store=str(path), shape=shape, dtype="int16", chunks=shape, fill_value=0)
    return path


def _locked_store(w) -> Path:
    """An output whose lock is held by a live process on this host (another conversion)."""
    from selma3d.lockfile import lock_path

    store = w.zarr("o.zarr")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    w.holders.append(holder)
    lock_path(store).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
    return store


def _crc_dataset(w) -> Path:
    data = w.dataset_copy()
    image = data / "annotated" / "train" / "cfos" / "cfos_000_img.nii.gz"
    image.write_bytes(b"")  # replace by a larger image so 50 zeroed bytes fall inside the deflate data
    write_nifti(image, (np.random.default_rng(0).random((40, 48, 48)) * 1000).astype(np.int16))
    corrupt_gzip(image)
    return data


# ------------------------------------------------------------------------------------ runners

def run_in_process(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    from selma3d.cli import app

    monkeypatch.setattr(sys, "argv", ["selma3d", *map(str, argv)])
    code = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # a bug: report it as the user would see it
        code, err = -1, traceback.format_exc()
        return code, capsys.readouterr().err + err
    return code, capsys.readouterr().err


def _readonly_command(folder: Path, argv: list[str]) -> list[str]:
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(folder), sys.executable, "-m", "selma3d", *map(str, argv)]


@pytest.fixture(scope="session")
def readonly_mounts(tmp_path_factory) -> bool:
    """Whether a read-only bind mount in a private mount namespace can be made here (root, unshare)."""
    folder = tmp_path_factory.mktemp("ro-probe")
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" '
                            '"$0" && ! touch "$0/x"', str(folder)], capture_output=True)
    return probe.returncode == 0 and not (folder / "x").exists()


@pytest.fixture
def world(tmp_path, tiny_dataset, tiny_run):
    w = World(tmp_path / "case", tiny_dataset, tiny_run)
    w.tmp.mkdir()
    w.holders = []
    yield w
    for holder in w.holders:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, world: World, monkeypatch, capsys, readonly_mounts):
    if case.readonly and not readonly_mounts:
        pytest.skip("read-only locations need root and `unshare -m` (a read-only bind mount in a private "
                    "mount namespace); not available here")
    if case.cpu_only:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this torch has CUDA: asking for a GPU is not an error here")
    argv = case.build(world)
    monkeypatch.chdir(world.tmp)
    roots = (world.tmp, world.data, world.run)
    before = sha_tree(*roots)
    if case.readonly:
        result = subprocess.run(_readonly_command(world.tmp / case.readonly, argv), capture_output=True, text=True,
                                timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        code, err = result.returncode, result.stderr
    else:
        code, err = run_in_process(argv, monkeypatch, capsys)
    after = sha_tree(*roots)

    assert "Traceback" not in err, err
    assert code == case.code, f"exit {code}, expected {case.code}:\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    if case.code == 2:
        assert lines[0].startswith("Usage: ") and lines[-1].startswith("Error: "), err
    else:
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1, err
    fill = {"tmp": str(world.tmp), "data": str(world.data), "run": str(world.run)}
    for text in case.expect:
        assert text.format(**fill) in err, f"{text.format(**fill)!r} not in:\n{err}"
    changed = [path for path, digest in before.items() if after.get(path) != digest]
    assert not changed, f"pre-existing files changed or deleted: {changed}"
    created = sorted(set(after) - set(before) - {str(world.tmp / name) for name in case.leaves})
    assert not created, f"left behind: {created}"


def test_matrix_has_at_least_60_cases_over_every_command():
    from selma3d.cli import app_typer

    assert len(CASES) >= 60
    commands = {c.name for c in app_typer.registered_commands}
    covered = {case.id.split("-")[0] for case in CASES} | {case.id.split("-")[1] for case in CASES
                                                          if case.id.startswith("usage-")}
    assert commands <= covered, commands - covered


# ------------------------------------------------------------------- cases that need more than one step

def test_second_conversion_of_the_same_store_is_refused_while_the_first_runs(tmp_path, monkeypatch, capsys):
    """Item 15: a real first `convert` (paused with SIGSTOP while it holds the lock), a second
    `convert --overwrite` of the same store → refused; the first then finishes a verified store."""
    import tifffile

    from selma3d.io.zarrstore import open_zarr_volume
    from selma3d.lockfile import lock_path

    slices = tmp_path / "slices"
    slices.mkdir()
    volume = (np.random.default_rng(0).random((40, 64, 64)) * 1000).astype(np.int16)
    for z, plane in enumerate(volume):
        tifffile.imwrite(slices / f"slice_{z:05d}.tif", plane)
    store = tmp_path / "brain.zarr"
    first = subprocess.Popen([sys.executable, "-m", "selma3d", "convert", str(slices), str(store), "--chunks", "8"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        deadline = time.monotonic() + 120
        while not (store / "selma3d_conversion.json").is_file() and first.poll() is None:
            assert time.monotonic() < deadline, "first conversion never started"
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGSTOP)
        assert json.loads(lock_path(store).read_text())["pid"] == first.pid
        code, err = run_in_process(["convert", slices, store, "--overwrite"], monkeypatch, capsys)
        assert code == 1 and "Traceback" not in err
        assert err.startswith(f"error: {store}: another selma3d convert (pid {first.pid} on "), err
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    np.testing.assert_array_equal(open_zarr_volume(store)[:], volume)
    assert not lock_path(store).exists()


def test_stale_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    from selma3d.lockfile import lock_path, output_lock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "o.zarr"
    lock_path(out).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with output_lock(out) as held:
        assert json.loads(held.read_text())["pid"] == os.getpid()
    assert not lock_path(out).exists()
    lock_path(out).write_text(json.dumps({"pid": dead.pid, "host": "another-host"}))  # never guessed stale
    from selma3d.errors import InputError

    with pytest.raises(InputError, match="another-host"):
        with output_lock(out):
            pass


def test_plain_zarr_array_is_predicted_as_a_whole_volume(world, monkeypatch, capsys):
    """Item 12: a Zarr array without a group (no OME metadata) is a valid 3D input."""
    from selma3d.io.zarrstore import open_zarr_volume

    source = _plain_zarr(world, (24, 32, 32))
    code, err = run_in_process(_predict(world, source, world.tmp / "m.zarr", "--workers", "1"), monkeypatch, capsys)
    assert code == 0, err
    assert open_zarr_volume(world.tmp / "m.zarr").shape == (24, 32, 32)


def test_synth_overwrite_replaces_its_own_dataset_and_nothing_else(tmp_path, monkeypatch, capsys):
    from selma3d.data.synthetic import MANIFEST, make_dataset

    out = make_dataset(tmp_path / "R", preset="tiny", seed=1)
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    assert "dataset.json" in manifest and len(manifest) == sum(1 for p in out.rglob("*") if p.is_file()) - 1
    neighbour = tmp_path / "R-notes.txt"
    neighbour.write_text("keep")
    code, err = run_in_process(["synth", out, "--preset", "tiny", "--seed", "2", "--overwrite", "--quiet"],
                               monkeypatch, capsys)
    assert code == 0, err
    assert json.loads((out / "dataset.json").read_text())["seed"] == 2
    assert neighbour.read_text() == "keep"


def test_environment_oserror_mid_work_is_one_error_line(tmp_path, monkeypatch, capsys):
    """A file system that turns read-only (or full) after the checks: one line naming the file."""
    import errno

    from selma3d.data import synthetic

    def full_disk(out, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "dataset.json"))

    monkeypatch.setattr(synthetic, "make_dataset", full_disk)
    code, err = run_in_process(["synth", tmp_path / "S", "--quiet"], monkeypatch, capsys)
    assert code == 1 and err == f"error: {tmp_path / 'S' / 'dataset.json'}: No space left on device\n", err
