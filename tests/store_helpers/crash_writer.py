"""Write a run store forever (until killed): deterministic frames and batches.

Usage: python crash_writer.py PATH [H W [SHARD_FRAMES]]

Frame ``i`` and localization batch ``i`` are functions of ``i`` alone
(:func:`make_frame`, :func:`make_batch`), so a test can check what it reads back
after killing this process.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

BATCH_ROWS = 20


def make_frame(i: int, h: int, w: int) -> np.ndarray:
    """Frame ``i``: a pattern that differs in every pixel and every frame."""
    base = np.arange(2 * h * w, dtype=np.uint64).reshape(2, h, w)
    return ((base * 2654435761 + i * 40503) % 65521).astype(np.uint16)


def make_meta(i: int) -> dict:
    """Metadata of frame ``i``."""
    return {
        "t_s": i * 0.01,
        "stage_z_um": 5.0 + 0.05 * i,
        "stage_x_um": -1.0 * i,
        "stage_y_um": 2.0,
        "image_number": 1000 + i,
        "position_index": i % 3,
        "analyzed": i % 2 == 0,
    }


def make_batch(b: int) -> dict[str, np.ndarray]:
    """Localization batch ``b`` (``BATCH_ROWS`` rows, all with frame == b)."""
    r = np.arange(BATCH_ROWS, dtype=np.float64)
    return {
        "frame": np.full(BATCH_ROWS, b, dtype=np.int64),
        "t_s": np.full(BATCH_ROWS, b * 0.01),
        "x_um": r + b,
        "y_um": r * 2 + b,
        "z_um": r * 0.01 + b * 0.001,
        "dz_um": r * 0.01,
        "sigma_z_um": np.full(BATCH_ROWS, 0.02),
        "photons": 1000 + r,
        "background": np.full(BATCH_ROWS, 10.0),
        "track_id": np.arange(BATCH_ROWS, dtype=np.int64) + 100 * b,
    }


def main() -> None:
    from axialtrack.store import RunWriter, WriterOptions

    path = sys.argv[1]
    h, w = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (16, 24)
    shards = int(sys.argv[4]) if len(sys.argv) > 4 else None
    writer = RunWriter(
        path,
        kind="live",
        plane_shape=(h, w),
        pixel_size_um=0.1,
        rig={"config": "crash-test"},
        options=WriterOptions(
            commit_interval_s=0.02,
            table_flush_interval_s=0.02,
            time_block=16,
            shard_frames=shards,
        ),
    )
    print("ready", flush=True)
    t_end = time.monotonic() + 30
    i = 0
    while time.monotonic() < t_end:
        writer.append_frame(make_frame(i, h, w), make_meta(i))
        writer.append_localizations(make_batch(i))
        i += 1
        time.sleep(0.002)
    os._exit(3)  # never closes: only a kill should end this script


if __name__ == "__main__":
    main()
