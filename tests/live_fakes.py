"""Fakes of the live path's parts, shared by the runner's tests: a frame
source over a list of frames, an analyzer that finds bright peaks, one that
fails from a given frame on, and a writer for them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from axialtrack.geometry import SplitterGeometry, compose_frame
from axialtrack.live import SourceFrame, open_live_writer
from axialtrack.store import FrameMeta

PLANE = (64, 64)


# ------------------------------------------------------------ fakes
class PeakAnalyzer:
    """Thresholded local maxima of plane 0 -> localization rows; toy linking."""

    def __init__(self, pixel_size_um: float = 0.1, delay_s: float = 0.0) -> None:
        self.px = pixel_size_um
        self.delay_s = delay_s
        self.calls: list[np.ndarray] = []
        self.finished = False

    def analyze(
        self, planes: np.ndarray, indices: np.ndarray, meta: Sequence[FrameMeta]
    ) -> pd.DataFrame:
        assert planes.ndim == 4
        assert planes.shape[1] == 2
        assert planes.shape[0] == len(indices) == len(meta)
        assert np.all(np.diff(indices) > 0)
        self.calls.append(indices.copy())
        if self.delay_s:
            time.sleep(self.delay_s)
        rows = []
        for frame, idx, m in zip(planes, indices, meta, strict=True):
            p0 = frame[0].astype(np.float32)
            thr = np.median(p0) + 5 * p0.std() if p0.std() > 0 else np.inf
            ys, xs = np.nonzero(p0 > thr)
            for k, (y, x) in enumerate(zip(ys[:5], xs[:5], strict=True)):
                rows.append(
                    {
                        "frame": int(idx),
                        "t_s": m.t_s,
                        "x_um": x * self.px,
                        "y_um": y * self.px,
                        "z_um": m.stage_z_um,
                        "dz_um": 0.0,
                        "photons": float(p0[y, x]),
                        "background": float(np.median(p0)),
                        "track_id": k,
                    }
                )
        cols = [
            "frame",
            "t_s",
            "x_um",
            "y_um",
            "z_um",
            "dz_um",
            "photons",
            "background",
            "track_id",
        ]
        return pd.DataFrame(rows, columns=cols).astype(
            {"frame": "int64", "track_id": "int64"}
        )

    def finish(self) -> pd.DataFrame:
        self.finished = True
        return pd.DataFrame(
            {"track_id": np.arange(3, dtype=np.int64), "n_localizations": [1, 2, 3]}
        )


class StagedPeakAnalyzer(PeakAnalyzer):
    """:class:`PeakAnalyzer` split into ``prepare`` / ``complete`` stages.

    Records which thread ran each stage, and the order of ``complete`` calls.
    """

    def __init__(self, fail_prepare_at: int | None = None) -> None:
        super().__init__()
        self.fail_prepare_at = fail_prepare_at
        self.threads: dict[str, set[str]] = {"prepare": set(), "complete": set()}
        self.warmed = False

    def warmup(self) -> None:
        self.warmed = True

    def prepare(self, planes, indices, meta):  # type: ignore[no-untyped-def]
        self.threads["prepare"].add(threading.current_thread().name)
        if self.fail_prepare_at is not None and indices[-1] >= self.fail_prepare_at:
            raise ZeroDivisionError("prepare boom")
        return planes.copy(), indices.copy(), list(meta)

    def complete(self, prepared):  # type: ignore[no-untyped-def]
        self.threads["complete"].add(threading.current_thread().name)
        return PeakAnalyzer.analyze(self, *prepared)

    def analyze(self, planes, indices, meta):  # type: ignore[no-untyped-def]
        return self.complete(self.prepare(planes, indices, meta))


class ListSource:
    """Frames from memory at a fixed rate; optionally stalls after ``stall_after``."""

    def __init__(
        self,
        n: int,
        geometry: SplitterGeometry,
        rate_hz: float = 500.0,
        stall_after: int | None = None,
    ) -> None:
        rng = np.random.default_rng(1)
        self.planes = rng.integers(100, 200, size=(n, 2, *PLANE), dtype=np.uint16)
        self.planes[:, :, 20, 30] = 5000  # one bright spot per frame
        self.geometry = geometry
        self.n = n
        self.period = 1.0 / rate_hz
        self.stall_after = stall_after
        self.k = 0
        self.started = self.stopped = False
        self.t0 = 0.0

    def start(self, n_frames: int | None = None) -> None:
        self.started = True
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        self.stopped = True

    def finished(self) -> bool:
        return self.k >= self.n or (self.stopped and self.stall_after is None)

    def next(self, timeout_s: float) -> SourceFrame | None:
        if (
            self.stopped
            or self.k >= self.n
            or (self.stall_after is not None and self.k >= self.stall_after)
        ):
            time.sleep(timeout_s)
            return None
        due = self.t0 + self.k * self.period
        wait = due - time.perf_counter()
        if wait > timeout_s:
            time.sleep(timeout_s)
            return None
        if wait > 0:
            time.sleep(wait)
        k = self.k
        self.k += 1
        raw = compose_frame(self.planes[k], self.geometry)
        return SourceFrame(raw, k * self.period, 50.0 + 0.01 * k, 0.0, 0.0, k)


def _writer(path: Path, geometry: SplitterGeometry, **kw):
    return open_live_writer(
        path, geometry=geometry, plane_shape=PLANE, pixel_size_um=0.1, **kw
    )


class FailingAnalyzer(PeakAnalyzer):
    """A :class:`PeakAnalyzer` whose batches from frame ``from_frame`` on
    raise ``error`` (after ``before_raise()``, e.g. a wait on a condition)."""

    def __init__(
        self,
        from_frame: int = 5,
        error: BaseException | None = None,
        before_raise: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.from_frame = from_frame
        self.error = error if error is not None else ZeroDivisionError("boom")
        self.before_raise = before_raise

    def analyze(self, planes, indices, meta):  # type: ignore[no-untyped-def]
        if indices[-1] >= self.from_frame:
            if self.before_raise is not None:
                self.before_raise()
            raise self.error
        return super().analyze(planes, indices, meta)
