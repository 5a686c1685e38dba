"""Open a run store in a real napari Viewer (Qt, OpenGL) and report its layers.

Run under a display (``xvfb-run -a python napari_viewer.py RUN.zarr``). Prints
one JSON line. Exit status 3 (with the reason on stderr) when no OpenGL
display is available, so that the calling test can skip and say why; any
other failure is a failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

MANIFEST = (
    Path(__file__).parents[2] / "src" / "axialtrack" / "napari_plugin" / "napari.yaml"
)


def main(path: str) -> None:
    try:
        import napari
        from qtpy.QtWidgets import QApplication

        QApplication.instance() or QApplication([])
        viewer = napari.Viewer(show=False)
        canvas = viewer.window._qt_viewer.canvas
        # the canvas's OpenGL context, current: its renderer
        canvas._scene_canvas.set_current()
        from vispy.gloo import gl

        renderer = str(gl.glGetParameter(gl.GL_RENDERER))
    except Exception as exc:  # no display, no GL: say so, exit 3
        print(f"no OpenGL display: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(3)
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    if "axialtrack" not in pm._manifests:  # not installed: register the manifest
        pm.register(PluginManifest.from_file(MANIFEST))
    layers = viewer.open(path, plugin="axialtrack")
    viewer.reset_view()
    print(
        json.dumps(
            {
                "kinds": [type(layer).__name__ for layer in layers],
                "extents": [np.asarray(x.extent.world).tolist() for x in layers],
                "world_extent": np.asarray(viewer.layers.extent.world).tolist(),
                "gl_renderer": renderer,
            }
        )
    )
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1])
