"""The napari plugin, headless (Qt offscreen): reader layers with the right shape and scale, and the
segmentation widget producing a Labels layer from a worker thread."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
napari = pytest.importorskip("napari", reason="the napari plugin needs the napari extra (pip install 'selma3d[napari]')")


def _qt_starts() -> str | None:
    """None when a QApplication starts headless here, else why not. Checked in a subprocess: a Qt
    platform plugin that cannot load (missing libEGL, libxkbcommon, libfontconfig ...) aborts the
    process instead of raising."""
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-c", "from qtpy.QtWidgets import QApplication; QApplication([])"],
                           capture_output=True, text=True, timeout=120)
    return None if probe.returncode == 0 else (probe.stderr.strip().splitlines() or ["exit %d" % probe.returncode])[-1]


@pytest.fixture
def viewer():
    why = _qt_starts()
    if why:
        pytest.skip(f"Qt cannot start headless here: {why}")
    try:
        v = napari.Viewer(show=False)
    except Exception as exc:  # no Qt platform plugin / system libraries (libEGL, libxkbcommon, ...)
        pytest.skip(f"Qt cannot start headless here: {type(exc).__name__}: {exc}")
    yield v
    v.close()


def test_manifest_declares_reader_and_widget():
    """The manifest validates with npe2 and its commands resolve to the plugin's callables."""
    from importlib.resources import files

    import npe2

    manifest = npe2.PluginManifest.from_file(str(files("selma3d") / "napari.yaml"))
    assert [r.command for r in manifest.contributions.readers] == ["selma3d.read"]
    assert [w.command for w in manifest.contributions.widgets] == ["selma3d.predict_widget"]
    for command in manifest.contributions.commands:
        assert callable(_resolve(command.python_name))


def _resolve(python_name: str):
    import importlib

    module, _, attr = python_name.partition(":")
    return getattr(importlib.import_module(module), attr)


def _wait(condition, timeout: float = 120.0) -> None:
    """Process Qt events until ``condition()`` (worker signals are delivered by the event loop)."""
    import time

    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out waiting for the widget"
        QApplication.processEvents()
        time.sleep(0.02)


def test_reader_opens_predicted_mask_with_shape_and_scale(tiny_dataset, tiny_run, tmp_path):
    from selma3d.inference.predict import predict_path
    from selma3d.io.nifti import read_nifti
    from selma3d.viewer.reader import get_reader

    image = sorted(tiny_dataset.glob("annotated/*/cfos/*_img.nii.gz"))[0]
    (mask_path,) = predict_path(tiny_run, image, tmp_path / "mask.nii.gz", progress=False)
    reader = get_reader(str(mask_path))
    (data, meta, kind), = reader(str(mask_path))
    source = read_nifti(image)
    assert kind == "labels" and data.shape == source.array.shape
    assert meta["scale"] == pytest.approx(source.spacing_zyx)
    (_, image_meta, image_kind), = get_reader(str(image))(str(image))
    assert image_kind == "image" and image_meta["scale"] == pytest.approx(source.spacing_zyx)
    assert get_reader(str(tmp_path / "nothing.txt")) is None


def test_reader_opens_ome_zarr_pyramid_lazily_as_multiscale(tmp_path):
    import zarr

    from selma3d.io.zarr_convert import convert_to_zarr
    from selma3d.viewer.reader import read_layers

    volume = np.random.default_rng(0).integers(0, 1000, size=(64, 72, 80)).astype(np.int16)
    store = convert_to_zarr(volume, tmp_path / "vol.zarr", chunks=8, spacing=(4.0, 1.5, 1.5), levels=3, progress=False)
    (data, meta, kind), = read_layers(store)
    assert kind == "image" and meta["multiscale"] and isinstance(data[0], zarr.Array)
    assert [tuple(d.shape) for d in data][0] == volume.shape and len(data) > 1
    assert meta["scale"] == pytest.approx((4.0, 1.5, 1.5))


def test_widget_segments_the_image_layer(viewer, tiny_dataset, tiny_run):
    from selma3d.inference.predict import load_run
    from selma3d.io.nifti import read_nifti
    from selma3d.viewer.widget import PredictWidget

    image = read_nifti(sorted(tiny_dataset.glob("annotated/*/cfos/*_img.nii.gz"))[0])
    viewer.add_image(image.array, name="cfos", scale=image.spacing_zyx)
    widget = PredictWidget(viewer)
    widget.run_edit.setText(str(tiny_run))
    assert widget.layer_box.currentText() == "cfos"
    finished = []
    worker = widget.start()
    worker.finished.connect(lambda: finished.append(True))
    _wait(lambda: finished and len(viewer.layers) == 2)
    labels = viewer.layers[-1]
    assert isinstance(labels, napari.layers.Labels)
    assert labels.data.shape == image.array.shape and tuple(labels.scale) == pytest.approx(image.spacing_zyx)
    run = load_run(tiny_run, device="cpu")
    np.testing.assert_array_equal(labels.data, run.predict(image.array))
    assert widget.progress.value() == widget.progress.maximum() > 0
