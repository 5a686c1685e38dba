"""What the run-store tests share: the crash writer's deterministic frames and
batches, fast writer options, waiting on a condition. The fixtures
(``io_paths``) are in conftest.py."""

from __future__ import annotations

import time
from typing import Any

from store_helpers import crash_writer

from axialtrack.store import WriterOptions

__all__ = [
    "BATCH_ROWS",
    "FAST",
    "H",
    "W",
    "crash_writer",
    "make_batch",
    "make_frame",
    "make_meta",
    "wait_for",
]

make_frame = crash_writer.make_frame
make_meta = crash_writer.make_meta
make_batch = crash_writer.make_batch
BATCH_ROWS = crash_writer.BATCH_ROWS

#: plane shape of the store tests' frames
H, W = 16, 24
#: commits and table flushes every 10 ms: tests see their writes at once
FAST = WriterOptions(commit_interval_s=0.01, table_flush_interval_s=0.01)


def wait_for(cond: Any, what: str, timeout_s: float = 60.0) -> None:
    """Poll ``cond()`` until true; fail after a generous ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
