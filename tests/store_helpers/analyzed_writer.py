"""Write a live-like run (until killed): frames, then rows, then analyzed flags.

Usage: python analyzed_writer.py PATH

A camera loop appends frames; an analysis thread localizes each frame (its rows
are a function of the frame index, :func:`rows_of`), sometimes before the
writer has the frame, as the live pipeline does, and then marks it analyzed.
Frames whose index is a multiple of 7 are skipped by the analysis (left
unanalyzed, as an overloaded pipeline leaves them). The writer uses its default
commit intervals (frames every 0.1 s, rows every 0.25 s). A test kills this
process and checks that every frame marked analyzed has all its rows.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time

import numpy as np

H, W = 8, 8


def n_rows_of(i: int) -> int:
    """Rows of frame ``i``: 0 to 3."""
    return i % 4


def rows_of(i: int) -> dict[str, np.ndarray]:
    """The localizations of frame ``i``."""
    k = n_rows_of(i)
    r = np.arange(k, dtype=np.float64)
    return {
        "frame": np.full(k, i, dtype=np.int64),
        "t_s": np.full(k, i * 0.01),
        "x_um": r + i,
        "y_um": r - i,
        "z_um": r * 0.1,
        "dz_um": r * 0.1,
        "photons": 1000 + r,
        "background": np.full(k, 10.0),
    }


def skipped(i: int) -> bool:
    """Frames the analysis skips (left unanalyzed)."""
    return i % 7 == 0


def main() -> None:
    from axialtrack.store import RunWriter

    writer = RunWriter(sys.argv[1], kind="live", plane_shape=(H, W), pixel_size_um=0.1)
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()

    def analyze() -> None:
        while True:
            batch = [todo.get()]
            while len(batch) < 4:
                try:
                    batch.append(todo.get_nowait())
                except queue.Empty:
                    break
            batch = [i for i in batch if not skipped(i)]
            if not batch:
                continue
            parts = [rows_of(i) for i in batch]
            table = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
            writer.append_localizations(table)
            done = [i for i in batch if i < writer.frames_appended]
            while len(done) < len(batch):  # the writer has not got them all yet
                time.sleep(0.001)
                done = [i for i in batch if i < writer.frames_appended]
            writer.set_analyzed(done, True)

    threading.Thread(target=analyze, daemon=True).start()
    frame = np.zeros((2, H, W), np.uint16)
    print("ready", flush=True)
    t_end = time.monotonic() + 60
    i = 0
    while time.monotonic() < t_end:
        todo.put(i)  # the analysis may see it before the writer does
        frame[:] = i % 65536
        writer.append_frame(frame, {"t_s": i * 0.01, "image_number": i})
        i += 1
        time.sleep(0.003)
    os._exit(3)  # never closes: only a kill should end this script


if __name__ == "__main__":
    main()
