"""Make docs/napari.png: a NIfTI patch opened with the selma3d reader, segmented with the selma3d
widget, the mask overlaid in red. Needs a display with OpenGL (Qt offscreen has none), e.g.

    xvfb-run -a -s "-screen 0 1400x900x24" python docs/napari_screenshot.py RUN IMAGE.nii.gz docs/napari.png
"""

from __future__ import annotations

import sys
import time

import napari
from qtpy.QtWidgets import QApplication

from selma3d.viewer.reader import get_reader
from selma3d.viewer.widget import PredictWidget


def main(run: str, image: str, out: str) -> None:
    viewer = napari.Viewer(show=True)
    for data, meta, kind in get_reader(image)(image):
        getattr(viewer, f"add_{kind}")(data, **meta)
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment (selma3d)", area="right")
    widget.run_edit.setText(run)
    done = []
    widget.start().finished.connect(lambda: done.append(True))
    while not (done and len(viewer.layers) == 2):
        QApplication.processEvents()
        time.sleep(0.05)
    labels = viewer.layers[-1]
    labels.colormap = napari.utils.colormaps.DirectLabelColormap(color_dict={None: "transparent", 0: "transparent",
                                                                             1: "red"})
    labels.opacity = 0.6
    viewer.dims.ndisplay = 2
    viewer.dims.set_point(0, viewer.dims.range[0].start + (viewer.dims.range[0].stop - viewer.dims.range[0].start) / 2)
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(out, canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
