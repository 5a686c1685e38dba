"""``axialtrack info RUN.zarr``: what a run store holds, and in what state."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from axialtrack.store.calibration_qc import (
    calibration_lines,
    qc_only_text,
    read_calibration_qc,
)
from axialtrack.store.errors import StoreError
from axialtrack.store.reader import find_leftovers, open_run

__all__ = ["format_summary", "run_info", "summarize"]


def _disk_usage(path: Path) -> tuple[int, int]:
    total = files = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
            files += 1
    return total, files


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def summarize(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a run store as a JSON-compatible dict.

    Keys: ``path``, ``format``, ``kind``, ``state``, ``writer_alive``,
    ``created``, ``closed``, ``last_commit``, ``frames``, ``frame_shape``,
    ``dtype``, ``compression``, ``pixel_size_um``, ``size_bytes``, ``files``,
    ``duration_s``, ``frame_rate_hz``, ``frames_analyzed``, ``localizations``,
    ``localization_columns``, ``tracks``, ``rig``, ``splitter``, ``model``,
    ``writer``, ``stats``, ``recovered`` (for an open run: what a reader gets and
    what is left over), ``recovery`` (if :func:`recover` tidied it) and
    ``calibration`` (the calibration QC, if the store holds one).

    Raises
    ------
    NotARunStoreError, UnsupportedFormatError
        ``path`` is not a run store this axialtrack reads.
    """
    run = open_run(path)
    a = run.attrs
    n = run.n_frames
    meta = run.frame_meta
    t = meta["t_s"].to_numpy(dtype=float)
    t = t[np.isfinite(t)]
    duration = float(t[-1] - t[0]) if t.size > 1 else 0.0
    rate = (t.size - 1) / duration if duration > 0 else None
    size, files = _disk_usage(run.path)
    locs_n = run.n_localizations
    summary: dict[str, Any] = {
        "path": str(run.path),
        "format": a.get("format"),
        "kind": a.get("kind"),
        "state": run.state,
        "writer_alive": run.writer_alive if run.state == "open" else None,
        "created": a.get("created"),
        "closed": a.get("closed"),
        "last_commit": a.get("updated"),
        "frames": n,
        "frame_shape": list(run.frames.shape[1:]),
        "dtype": str(run.frames.dtype),
        "compression": a.get("compression"),
        "pixel_size_um": a.get("pixel_size_um"),
        "size_bytes": size,
        "files": files,
        "duration_s": duration,
        "frame_rate_hz": _finite(rate) if rate is not None else None,
        "frames_analyzed": int(meta["analyzed"].sum()) if n else 0,
        "localizations": locs_n,
        "localization_columns": list(run.localizations.columns),
        "tracks": len(run.tracks),
        "rig": a.get("rig", {}),
        "splitter": a.get("splitter", {}),
        "model": a.get("model", {}),
        "writer": a.get("writer", {}),
        "stats": a.get("stats"),
        "recovered": None,
        "recovery": a.get("recovery"),
        "calibration": read_calibration_qc(run.path),
    }
    if run.state == "open":
        left = find_leftovers(run.path, n)
        summary["recovered"] = {
            "frames": n,
            "localization_rows": locs_n,
            "uncommitted_frame_chunks": left.frame_chunks,
            "temp_files": len(left.temp_files),
        }
    return summary


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"  # pragma: no cover


def _compact(d: Any, limit: int = 160) -> str:
    if not d:
        return "(none recorded)"
    s = json.dumps(d, separators=(", ", ": "), default=str)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def format_summary(summary: dict[str, Any]) -> str:
    """Render :func:`summarize`'s dict as plain text for a terminal."""
    s = summary
    lines: list[tuple[str, str]] = []
    lines.append(("Run store", f"{s['path']} (axialtrack format {s['format']})"))
    lines.append(("Kind", str(s["kind"])))
    state = str(s["state"])
    if state == "open":
        alive = s.get("writer_alive")
        pid = (s.get("writer") or {}).get("pid")
        if alive:
            state = f"open: being written now (process {pid})"
        else:
            state = (
                "open: NOT cleanly closed (the writer stopped without closing; "
                f"last commit {s.get('last_commit') or 'never'})"
            )
    elif s.get("recovery"):
        r = s["recovery"]
        state = f"closed by recovery at {r.get('at')} (writer had stopped uncleanly)"
    lines.append(("State", state))
    rec = s.get("recovered")
    if rec:
        extra = []
        if rec["uncommitted_frame_chunks"]:
            extra.append(
                f"{rec['uncommitted_frame_chunks']} frame chunk(s) written after the "
                "last commit are ignored"
            )
        if rec["temp_files"]:
            extra.append(f"{rec['temp_files']} partial file(s) ignored")
        tail = ("; " + "; ".join(extra)) if extra else ""
        lines.append(
            (
                "Recovered",
                f"{rec['frames']} frames and {rec['localization_rows']} "
                f"localizations, every committed one (whole batches){tail}. "
                "Run axialtrack.store.recover(path) to trim and close it.",
            )
        )
    elif s.get("recovery"):
        r = s["recovery"]
        lines.append(
            (
                "Recovered",
                f"{r.get('frames')} frames, {r.get('localization_rows')} "
                f"localizations; dropped {r.get('dropped_frame_chunks')} "
                "uncommitted frame chunk(s)",
            )
        )
    fs = s["frame_shape"]
    comp = s.get("compression") or "none"
    lines.append(
        (
            "Frames",
            f"{s['frames']} x {fs[0]} planes x {fs[1]} x {fs[2]} px {s['dtype']}, "
            f"pixel {s['pixel_size_um']} um, compression {comp}",
        )
    )
    lines.append(("Size on disk", f"{_size(s['size_bytes'])} in {s['files']} files"))
    rate = s.get("frame_rate_hz")
    rate_s = f", {rate:.2f} frames/s" if rate else ""
    lines.append(("Duration", f"{s['duration_s']:.3f} s{rate_s}"))
    if s["frames"]:
        lines.append(("Analyzed", f"{s['frames_analyzed']} of {s['frames']} frames"))
    lines.append(("Localizations", f"{s['localizations']} rows"))
    lines.append(("Tracks", str(s["tracks"])))
    lines.append(("Rig", _compact(s.get("rig"))))
    lines.append(("Splitter", _compact(s.get("splitter"))))
    lines.append(("Model", _compact(s.get("model"))))
    w = s.get("writer") or {}
    when = f"created {s.get('created')}"
    if s.get("closed"):
        when += f", closed {s['closed']}"
    lines.append(("Written by", f"{w.get('software', '?')} on {w.get('host', '?')}"))
    lines.append(("Dates", when))
    st = s.get("stats")
    if st:
        p50, p99 = st.get("write_ms_p50"), st.get("write_ms_p99")
        lat = f", write p50 {p50:.2f} ms p99 {p99:.2f} ms" if p50 is not None else ""
        lines.append(("Writer", f"{st.get('write_mb_s', 0):.0f} MB/s average{lat}"))
    lines.extend(calibration_lines(s.get("calibration")))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)


def run_info(path: str | os.PathLike[str], *, console: Any = None) -> int:
    """Print the summary of a run store; return a process exit status.

    This is ``axialtrack info RUN.zarr``. Prints the error and returns 1 if
    ``path`` is not a readable run store, unless it holds a calibration's QC
    (written by ``calibrate --out`` without frames), which is shown.

    Parameters
    ----------
    path
        The run store.
    console
        A ``rich.console.Console`` (default: a new one on stdout).
    """
    if console is None:
        from rich.console import Console

        console = Console()
    try:
        text = format_summary(summarize(path))
    except StoreError as exc:
        if (qc_text := qc_only_text(path)) is not None:
            console.print(qc_text, markup=False, highlight=False)
            return 0
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 1
    console.print(text, markup=False, highlight=False)
    return 0
