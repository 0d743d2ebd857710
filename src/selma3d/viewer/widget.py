"""napari dock widget: segment the current image layer with a finetuned run, in a worker thread.

The prediction is the one ``selma3d predict`` makes for a NIfTI patch (run normalization, sliding
windows with Gaussian blending, the run's threshold, small components removed), on the layer's
level-0 data held in memory: for whole volumes larger than memory use ``selma3d predict`` (blockwise)
and open its OME-Zarr mask with the reader.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..inference.postprocess import DEFAULT_MIN_SIZE
from ..inference.predict import LoadedRun, load_run, predict_volume

SW_BATCH_SIZE = 4


def window_count(shape, patch_size, overlap: float) -> int:
    """Number of sliding windows MONAI's ``sliding_window_inference`` runs over ``shape``
    (its ``dense_patch_slices`` rule: ceil((n − r) / interval) + 1 per axis, one if n ≤ r)."""
    total = 1
    for n, r in zip(shape, patch_size):
        interval = max(int(r * (1 - overlap)), 1)
        total *= 1 if n <= r else math.ceil((n - r) / interval) + 1
    return total


class _CountingModel(torch.nn.Module):
    """The run's network, calling ``callback(windows_done, windows_total)`` after each batch."""

    def __init__(self, model: torch.nn.Module, total: int, callback: Callable[[int, int], None]):
        super().__init__()
        self.model, self.total, self.callback, self.done = model, total, callback, 0

    def forward(self, x):
        out = self.model(x)
        self.done = min(self.done + x.shape[0], self.total)
        self.callback(self.done, self.total)
        return out


def predict_with_progress(run: LoadedRun, array: np.ndarray, callback: Callable[[int, int], None] | None = None,
                          overlap: float = 0.5, threshold: float | None = None,
                          min_size: int = DEFAULT_MIN_SIZE) -> np.ndarray:
    """:meth:`LoadedRun.predict` reporting ``(windows done, windows total)`` to ``callback``."""
    array = np.asarray(array)
    total = window_count(array.shape, run.patch_size, overlap)
    model = _CountingModel(run.model, total, callback or (lambda done, total: None))
    return predict_volume(model, array, run.patch_size, overlap=overlap, sw_batch_size=SW_BATCH_SIZE,
                          threshold=run.threshold if threshold is None else threshold, min_size=min_size,
                          normalize=run.normalization, downsample_xy=run.downsample_xy)


def _level0(data) -> np.ndarray:
    """In-memory level 0 of a layer's data (multiscale: the first level)."""
    if isinstance(data, (list, tuple)) or type(data).__name__ == "MultiScaleData":
        data = data[0]
    return np.asarray(data)


class PredictWidget:
    """Stands in for the Qt widget below when napari / Qt are not installed: says what is missing."""

    def __init__(self, *args, **kwargs):
        from ..errors import Selma3dError

        raise Selma3dError("the selma3d napari widget needs napari and a Qt binding: pip install 'selma3d[napari]'")


try:  # the widget needs napari's Qt; the functions above do not
    from napari.qt.threading import thread_worker
    from qtpy.QtCore import QObject, Signal
    from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                                QProgressBar, QPushButton, QVBoxLayout, QWidget)
except ImportError:  # pragma: no cover - exercised only without the napari extra
    pass
else:
    class _Progress(QObject):
        """Carries progress from the worker thread to the GUI thread (queued signal connection)."""

        advanced = Signal(int, int)

    class PredictWidget(QWidget):  # noqa: F811
        """Run folder + image layer → a Labels layer, predicted in a worker thread with a progress bar."""

        def __init__(self, napari_viewer):
            super().__init__()
            self.viewer = napari_viewer
            self.worker = None
            self.run_edit = QLineEdit()
            self.run_edit.setPlaceholderText("finetuned run folder (RUN/ with model.pt, run.json)")
            browse = QPushButton("Browse…")
            browse.clicked.connect(self._browse)
            self.layer_box = QComboBox()
            self.button = QPushButton("Segment")
            self.button.clicked.connect(self.start)
            self.progress = QProgressBar()
            self.status = QLabel("")
            self.status.setWordWrap(True)
            row = QHBoxLayout()
            row.addWidget(self.run_edit)
            row.addWidget(browse)
            form = QFormLayout()
            form.addRow("model run", row)
            form.addRow("image layer", self.layer_box)
            layout = QVBoxLayout(self)
            layout.addLayout(form)
            layout.addWidget(self.button)
            layout.addWidget(self.progress)
            layout.addWidget(self.status)
            self._progress = _Progress()
            self._progress.advanced.connect(self._advance)
            for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
                event.connect(self._refresh_layers)
            self._refresh_layers()

        # ------------------------------------------------------------------ GUI state
        def _browse(self):
            folder = QFileDialog.getExistingDirectory(self, "selma3d run folder")
            if folder:
                self.run_edit.setText(folder)

        def _refresh_layers(self, *_):
            from napari.layers import Image

            current = self.layer_box.currentText()
            self.layer_box.clear()
            names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
            self.layer_box.addItems(names)
            if current in names:
                self.layer_box.setCurrentText(current)

        def _advance(self, done: int, total: int):
            self.progress.setMaximum(total)
            self.progress.setValue(done)

        # ------------------------------------------------------------------ prediction
        def start(self):
            """Start predicting; returns the worker (its ``finished`` signal ends the run)."""
            name = self.layer_box.currentText()
            if not name or not self.run_edit.text().strip():
                self.status.setText("choose a run folder and an image layer")
                return None
            layer = self.viewer.layers[name]
            run_dir = Path(self.run_edit.text().strip())
            image = _level0(layer.data)
            self.button.setEnabled(False)
            self.progress.setValue(0)
            self.status.setText(f"segmenting {name} with {run_dir.name}…")

            @thread_worker
            def work():
                run = load_run(run_dir)
                return run, predict_with_progress(run, image, self._progress.advanced.emit)

            self.worker = work()
            self.worker.returned.connect(lambda result: self._add_labels(layer, *result))
            self.worker.errored.connect(lambda exc: self.status.setText(f"error: {exc}"))
            self.worker.finished.connect(lambda: self.button.setEnabled(True))
            self.worker.start()
            return self.worker

        def _add_labels(self, layer, run: LoadedRun, mask: np.ndarray):
            self.viewer.add_labels(mask, name=f"{layer.name} {run.path.name} mask", scale=layer.scale,
                                   translate=layer.translate,
                                   metadata={"run": str(run.path), "threshold": run.threshold})
            self.status.setText(f"{int(mask.sum())} foreground voxels (threshold {run.threshold:g})")
