"""Small widgets the panels share: the error dialog, the dual-plane image
view with localizations and track tails, a matplotlib plot, a path field."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, Signal
from qtpy.QtGui import QColor, QImage, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

__all__ = [
    "DualPlaneView",
    "PathField",
    "PlotCanvas",
    "error_text",
    "show_error",
]


def error_text(exc: BaseException | str) -> str:
    """One line for a user: ``Name: message`` with whitespace collapsed (the
    project's errors already name the file, field, value and the fix)."""
    if isinstance(exc, str):
        return " ".join(exc.split())
    msg = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {msg}" if msg else name


def show_error(
    parent: QWidget | None, exc: BaseException | str, title: str = "axialtrack"
) -> QMessageBox:
    """Show ``exc`` as a dialog: its one-line message, the traceback under
    "Show Details...". Window-modal and non-blocking (``open()``); returns
    the box (tests read its text)."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Critical)
    box.setWindowTitle(title)
    box.setText(error_text(exc))
    if isinstance(exc, BaseException):
        details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        box.setDetailedText(details)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, True)
    box.open()
    return box


class PathField(QWidget):
    """A line edit with a "Browse..." button (file or folder dialog)."""

    changed = Signal(str)

    def __init__(
        self,
        placeholder: str = "",
        *,
        mode: str = "save",
        caption: str = "Choose a path",
        filters: str = "",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.edit = QLineEdit(self)
        self.edit.setPlaceholderText(placeholder)
        self.edit.textChanged.connect(self.changed)
        self.button = QPushButton("Browse...", self)
        self.button.clicked.connect(self._browse)
        self._mode, self._caption, self._filters = mode, caption, filters
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.edit, 1)
        lay.addWidget(self.button)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:
        self.edit.setText(text)

    def _browse(self) -> None:
        start = self.text() or str(Path.home())
        if self._mode == "dir":
            path = QFileDialog.getExistingDirectory(self, self._caption, start)
        elif self._mode == "open":
            path, _ = QFileDialog.getOpenFileName(
                self, self._caption, start, self._filters
            )
        else:
            path, _ = QFileDialog.getSaveFileName(
                self,
                self._caption,
                start,
                self._filters,
                options=QFileDialog.Option.DontConfirmOverwrite,
            )
        if path:
            self.setText(path)


class PlotCanvas(QWidget):
    """A matplotlib figure in the window (Qt Agg canvas)."""

    def __init__(
        self, parent: QWidget | None = None, figsize: tuple[float, float] = (5.0, 3.0)
    ) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=figsize, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(
            QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding
        )
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)

    def draw(self) -> None:
        self.canvas.draw_idle()


class FigureImage(QWidget):
    """A figure rendered elsewhere (an RGBA array, e.g. a matplotlib figure
    drawn in a worker thread), shown scaled to the widget: the GUI thread
    only paints a pixmap."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumSize(200, 120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self._image: QImage | None = None
        self.shape: tuple[int, ...] = ()

    def set_rgba(self, rgba: np.ndarray | None) -> None:
        """Show an ``(H, W, 4)`` uint8 image (``None``: clear)."""
        if rgba is None:
            self._image, self.shape = None, ()
        else:
            a = np.ascontiguousarray(rgba, dtype=np.uint8)
            h, w = a.shape[:2]
            self._image = QImage(
                a.tobytes(), w, h, 4 * w, QImage.Format.Format_RGBA8888
            ).copy()
            self.shape = a.shape
        self.update()

    def paintEvent(self, event: Any) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("white"))
        img = self._image
        if img is not None:
            scaled = img.scaled(
                self.size(),
                Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.SmoothTransformation,
            )
            x = (self.width() - scaled.width()) // 2
            y = (self.height() - scaled.height()) // 2
            painter.drawImage(x, y, scaled)
        painter.end()


def _viridis(v: np.ndarray) -> list[QColor]:
    from matplotlib import colormaps

    rgba = colormaps["viridis"](np.clip(v, 0.0, 1.0))
    return [QColor.fromRgbF(float(r), float(g), float(b)) for r, g, b, _ in rgba]


def _gray_qimage(plane: np.ndarray, lo: float, hi: float) -> QImage:
    scaled = np.clip((plane.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    a = np.ascontiguousarray(scaled.astype(np.uint8))
    h, w = a.shape
    buf = a.tobytes()  # alive until the copy below
    img = QImage(buf, w, h, w, QImage.Format.Format_Grayscale8)
    return img.copy()  # owns its pixels


class DualPlaneView(QWidget):
    """Both planes side by side (plane 1 registered onto plane 0), with
    localizations as dots colored by z and track tails.

    Drawn with QPainter from a ``(2, H, W)`` array: cheap enough for 10 Hz and
    renders offscreen (screenshots, tests).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumSize(360, 180)
        self._images: list[QImage] = []
        self._shape = (0, 0)
        self._points = np.zeros((0, 3))  # x_px, y_px, z (0..1)
        self._tails: list[np.ndarray] = []
        self._caption = ""
        self.frames_shown = 0
        self.max_points = 0

    def set_planes(self, planes: np.ndarray) -> None:
        """Show a ``(2, H, W)`` registered dual-plane frame."""
        # contrast from every 4th pixel each way: 16x less work at 10 Hz
        lo, hi = np.percentile(planes[0][::4, ::4], [1.0, 99.8])
        self._images = [_gray_qimage(p, float(lo), float(hi)) for p in planes]
        self._shape = (int(planes.shape[-2]), int(planes.shape[-1]))
        self.frames_shown += 1
        self.update()

    def set_overlay(
        self,
        points_px: np.ndarray,
        z_norm: np.ndarray,
        tails_px: list[np.ndarray] | None = None,
    ) -> None:
        """Localizations ``(N, 2)`` in plane-0 pixels, their z scaled to 0..1,
        and track tails (each ``(M, 2)`` pixels, oldest first)."""
        pts = np.asarray(points_px, dtype=float).reshape(-1, 2)
        self._points = np.column_stack([pts, np.asarray(z_norm, float).reshape(-1)])
        self._tails = list(tails_px or [])
        self.max_points = max(self.max_points, len(self._points))
        self.update()

    def set_caption(self, text: str) -> None:
        self._caption = text
        self.update()

    @property
    def n_points(self) -> int:
        return len(self._points)

    def paintEvent(self, event: Any) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(20, 20, 20))
        if not self._images:
            p.setPen(QColor(160, 160, 160))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "no image yet")
            p.end()
            return
        h, w = self._shape
        gap = 6.0
        avail_w = (self.width() - gap) / 2.0
        s = min(avail_w / w, (self.height() - 18.0) / h)
        rects = [QRectF(i * (w * s + gap), 18.0, w * s, h * s) for i in range(2)]
        p.setPen(QColor(200, 200, 200))
        for i, (img, r) in enumerate(zip(self._images, rects, strict=False)):
            p.drawImage(r, img)
            p.drawText(QPointF(r.left() + 2, 13.0), f"plane {i}")
        if self._caption:
            p.drawText(QPointF(rects[1].left() + 60, 13.0), self._caption)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        for r in rects:
            p.save()
            p.translate(r.topLeft())
            p.scale(s, s)
            pen = QPen(QColor(255, 160, 0, 200))
            pen.setWidthF(1.2 / s)
            p.setPen(pen)
            for tail in self._tails:
                if len(tail) > 1:
                    p.drawPolyline(QPolygonF([QPointF(x, y) for x, y in tail]))
            if len(self._points):
                colors = _viridis(self._points[:, 2])
                rad = 3.0 / s
                for (x, y, _z), c in zip(self._points, colors, strict=False):
                    pen = QPen(c)
                    pen.setWidthF(1.5 / s)
                    p.setPen(pen)
                    p.drawEllipse(QPointF(x, y), 2 * rad, 2 * rad)
            p.restore()
        p.end()


def register_planes(planes: np.ndarray, affine: np.ndarray | None) -> np.ndarray:
    """Resample plane 1 onto plane 0's pixels through ``affine`` (the ``(2, 3)``
    plane-0 ``(x, y)`` to plane-1 ``(x, y)`` map of the splitter or the
    calibration); identity: returned as is."""
    if affine is None or np.allclose(affine, [[1, 0, 0], [0, 1, 0]]):
        return planes
    from scipy.ndimage import affine_transform

    a = np.asarray(affine, dtype=float)
    # (row, col) order for scipy: output (y, x) -> input (y, x)
    m = np.array([[a[1, 1], a[1, 0]], [a[0, 1], a[0, 0]]])
    off = np.array([a[1, 2], a[0, 2]])
    p1 = affine_transform(planes[1].astype(np.float32), m, offset=off, order=1)
    return np.stack([planes[0].astype(np.float32), p1])


def run_later(callback: Callable[[], None]) -> None:
    """Call ``callback`` on the GUI thread at the next event-loop turn."""
    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, callback)


def start_worker(
    func: Callable[..., Any],
    *args: Any,
    on_done: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    **kwargs: Any,
) -> Any:
    """Run ``func(*args, **kwargs)`` in a worker thread (superqt's
    ``create_worker``); ``on_done(result)`` or ``on_error(exc)`` run on the
    GUI thread. Returns the worker."""
    from superqt.utils import create_worker

    worker = create_worker(func, *args, _ignore_errors=True, **kwargs)
    worker.returned.connect(on_done)
    worker.errored.connect(on_error)
    worker.start()
    return worker


class PanelJob:
    """A panel's long operation off the GUI thread, with its display timer.

    :meth:`start` runs ``func`` in a worker (:func:`start_worker`) and, with
    a ``refresh``, calls it every ``interval_ms`` on the GUI thread while the
    job runs (what the worker and its signals left for display: progress,
    epochs, metrics; the subscribers only store references). When the job
    ends the timer stops, ``refresh`` runs once more, ``busy(False)`` and
    then ``on_done(result)`` or ``on_error(exc)``, all on the GUI thread.
    """

    def __init__(
        self,
        parent: QWidget,
        *,
        refresh: Callable[[], None] | None = None,
        interval_ms: int = 100,
        busy: Callable[[bool], None] | None = None,
    ) -> None:
        from qtpy.QtCore import QTimer

        self.timer = QTimer(parent)
        self.timer.setInterval(interval_ms)
        self._refresh = refresh
        if refresh is not None:
            self.timer.timeout.connect(refresh)
        self._busy = busy
        self.worker: Any = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(
        self,
        func: Callable[..., Any],
        *args: Any,
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        timer: bool = True,
        **kwargs: Any,
    ) -> None:
        """Start ``func(*args, **kwargs)`` (``timer=False``: no display
        timer for this one)."""
        if self._busy is not None:
            self._busy(True)
        if timer and self._refresh is not None:
            self.timer.start()

        def end() -> None:
            self.timer.stop()
            if self._refresh is not None:
                self._refresh()
            self.worker = None
            if self._busy is not None:
                self._busy(False)

        def done(result: Any) -> None:
            end()
            on_done(result)

        def failed(exc: BaseException) -> None:
            end()
            on_error(exc)

        self.worker = start_worker(func, *args, on_done=done, on_error=failed, **kwargs)


class LinePlot(QWidget):
    """A small line plot drawn with QPainter: cheap enough to redraw every
    epoch without stalling the GUI thread (a matplotlib redraw took 1-2 s on a
    loaded 2-core machine)."""

    COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#444444")

    def __init__(
        self,
        title: str = "",
        *,
        xlabel: str = "",
        ylabel: str = "",
        log_y: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setMinimumSize(240, 160)
        self.title, self.xlabel, self.ylabel, self.log_y = title, xlabel, ylabel, log_y
        self.series: dict[str, tuple[np.ndarray, np.ndarray, bool]] = {}

    def set_series(self, name: str, x: Any, y: Any, *, dashed: bool = False) -> None:
        """Set (or replace) the curve ``name``."""
        self.series[name] = (
            np.asarray(x, dtype=float),
            np.asarray(y, dtype=float),
            dashed,
        )
        self.update()

    def clear(self) -> None:
        self.series.clear()
        self.update()

    def _ty(self, y: np.ndarray) -> np.ndarray:
        if self.log_y:
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(y > 0, np.log10(y), np.nan)
        return y

    def paintEvent(self, event: Any) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("white"))
        p.setPen(QColor("black"))
        left, top, right, bottom = 58.0, 20.0, 10.0, 30.0
        w = self.width() - left - right
        h = self.height() - top - bottom
        p.drawText(QPointF(left, 14.0), self.title)
        p.drawText(QPointF(left + w / 2 - 20, self.height() - 6.0), self.xlabel)
        p.drawRect(QRectF(left, top, w, h))
        pts = [(x, self._ty(y)) for x, y, _ in self.series.values() if len(x)]
        xs = np.concatenate([x for x, _ in pts]) if pts else np.zeros(0)
        ys = np.concatenate([y for _, y in pts]) if pts else np.zeros(0)
        fin = np.isfinite(xs) & np.isfinite(ys)
        if not fin.any():
            p.drawText(QRectF(left, top, w, h), Qt.AlignmentFlag.AlignCenter, "no data")
            p.end()
            return
        x0, x1 = float(xs[fin].min()), float(xs[fin].max())
        y0, y1 = float(ys[fin].min()), float(ys[fin].max())
        if x1 == x0:
            x0, x1 = x0 - 0.5, x1 + 0.5
        pad = 0.05 * (y1 - y0) if y1 > y0 else 0.5
        y0, y1 = y0 - pad, y1 + pad

        def tick(v: float) -> str:
            return f"{10**v:.3g}" if self.log_y else f"{v:.3g}"

        p.drawText(QPointF(2.0, top + 10), tick(y1))
        p.drawText(QPointF(2.0, top + h), tick(y0))
        p.drawText(QPointF(left, top + h + 14), f"{x0:.3g}")
        p.drawText(QPointF(left + w - 30, top + h + 14), f"{x1:.3g}")
        if self.ylabel:
            p.drawText(QPointF(2.0, top + h / 2), self.ylabel)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        for i, (name, (x, y, dashed)) in enumerate(self.series.items()):
            color = QColor(self.COLORS[i % len(self.COLORS)])
            pen = QPen(color)
            pen.setWidthF(1.6)
            if dashed:
                pen.setStyle(Qt.PenStyle.DashLine)
            p.setPen(pen)
            ty = self._ty(y)
            ok = np.isfinite(x) & np.isfinite(ty)
            px = left + (x[ok] - x0) / (x1 - x0) * w
            py = top + (1 - (ty[ok] - y0) / (y1 - y0)) * h
            if len(px) > 1:
                p.drawPolyline(
                    QPolygonF([QPointF(a, b) for a, b in zip(px, py, strict=True)])
                )
            for a, b in zip(px, py, strict=True):
                p.drawEllipse(QPointF(a, b), 2.0, 2.0)
            p.drawText(QPointF(left + w - 150, top + 14 + 14 * i), name)
        p.end()


class TrackPlot(QWidget):
    """XY, XZ and Z(t) of the current tracks' tails, drawn with QPainter."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(150)
        self.tails: list[np.ndarray] = []  # each (M, 4): frame, x, y, z (um)
        self.max_tracks = 0

    def set_tails(self, tails: list[np.ndarray]) -> None:
        self.tails = [t for t in tails if len(t)]
        self.max_tracks = max(self.max_tracks, len(self.tails))
        self.update()

    def paintEvent(self, event: Any) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("white"))
        panels = (("XY (um)", 1, 2), ("XZ (um)", 1, 3), ("Z(t): z (um) vs frame", 0, 3))
        gap = 8.0
        w = (self.width() - 4 * gap) / 3.0
        h = self.height() - 2 * gap - 14.0
        allp = np.concatenate(self.tails) if self.tails else np.zeros((0, 4))
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        for i, (title, cx, cy) in enumerate(panels):
            r = QRectF(gap + i * (w + gap), gap + 14.0, w, h)
            p.setPen(QColor("black"))
            p.drawText(QPointF(r.left(), gap + 10.0), title)
            p.drawRect(r)
            if not len(allp):
                continue
            xs, ys = allp[:, cx], allp[:, cy]
            x0, x1 = float(np.nanmin(xs)), float(np.nanmax(xs))
            y0, y1 = float(np.nanmin(ys)), float(np.nanmax(ys))
            x1, y1 = max(x1, x0 + 1e-3), max(y1, y0 + 1e-3)
            for k, t in enumerate(self.tails):
                pen = QPen(QColor(LinePlot.COLORS[k % len(LinePlot.COLORS)]))
                pen.setWidthF(1.4)
                p.setPen(pen)
                px = r.left() + (t[:, cx] - x0) / (x1 - x0) * r.width()
                py = r.bottom() - (t[:, cy] - y0) / (y1 - y0) * r.height()
                ok = np.isfinite(px) & np.isfinite(py)
                pts = [QPointF(a, b) for a, b in zip(px[ok], py[ok], strict=True)]
                if len(pts) > 1:
                    p.drawPolyline(QPolygonF(pts))
                elif pts:
                    p.drawEllipse(pts[0], 1.5, 1.5)
        p.end()
