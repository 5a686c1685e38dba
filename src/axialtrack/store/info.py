"""``axialtrack info RUN.zarr``: what a run store holds, and in what state."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from axialtrack.store.calibration_qc import (
    calibration_lines,
    camera_line,
    qc_only_text,
    read_calibration_qc,
    read_rig_record,
)
from axialtrack.store.errors import StoreError
from axialtrack.store.reader import find_leftovers, open_run

__all__ = ["format_summary", "run_info", "run_recover", "summarize"]


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


def _span_rate(t: np.ndarray) -> tuple[float, float | None]:
    """Span (s) and mean rate (frames/s) of the finite times ``t``."""
    t = t[np.isfinite(t)]
    span = float(t[-1] - t[0]) if t.size > 1 else 0.0
    return span, (_finite((t.size - 1) / span) if span > 0 else None)


def _nominal_rate(attrs: dict[str, Any]) -> float | None:
    """The rate the run was asked for, where the rig recorded it."""
    rig = attrs.get("rig") or {}
    for key in ("frame_rate_hz", "requested_frame_rate_hz"):
        v = rig.get(key) if isinstance(rig, dict) else None
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    return None


def _leftover_notes(path: Path) -> list[str]:
    """Leftovers of interrupted processes beside and inside the store."""
    from axialtrack.store.amend import amend_leftovers
    from axialtrack.store.replace import find_leftovers_beside

    notes = []
    for left in find_leftovers_beside(path):
        if left.alive:
            continue
        if left.what == "replaced":
            notes.append(
                f"{left.path.name}: the previous {path.name}, set aside by an "
                f"--overwrite that was interrupted (process {left.pid})"
            )
        else:
            notes.append(
                f"{left.path.name}: a store whose creation was interrupted "
                f"(process {left.pid})"
            )
    for p in amend_leftovers(path):
        notes.append(f"{p.name}: left by an interrupted axialtrack localize")
    return notes


def summarize(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a run store as a JSON-compatible dict.

    Keys: ``path``, ``format``, ``kind``, ``state``, ``writer_alive``,
    ``created``, ``closed``, ``last_commit``, ``frames``, ``frame_shape``,
    ``dtype``, ``compression``, ``pixel_size_um``, ``size_bytes``, ``files``,
    ``duration_s``, ``frame_rate_hz`` (measured on the host clock, from
    ``frame_meta/host_t_s``, where the store records it; else from the camera
    timestamps ``t_s``), ``frame_rate_clock`` (``"host"`` or ``"camera"``),
    ``camera_duration_s``, ``camera_frame_rate_hz`` (from ``t_s``),
    ``host_duration_s``, ``host_frame_rate_hz``, ``nominal_frame_rate_hz``
    (what the rig record asked for, if it says), ``leftovers`` (what
    interrupted processes left beside or inside the store, for ``axialtrack
    recover``), ``frames_analyzed``, ``localizations``,
    ``localization_columns``, ``tracks``, ``rig``, ``splitter``, ``model``,
    ``writer``, ``stats``, ``recovered`` (for an open run: what a reader gets and
    what is left over), ``recovery`` (if :func:`recover` tidied it) and
    ``calibration`` (the calibration QC, if the store holds one), ``camera``
    (the camera model the run records, or None) and ``camera_source`` (where
    a calibration's camera fields came from).

    Raises
    ------
    NotARunStoreError, UnsupportedFormatError
        ``path`` is not a run store this axialtrack reads.
    """
    run = open_run(path)
    a = run.attrs
    n = run.n_frames
    meta = run.frame_meta
    cam_s, cam_hz = _span_rate(meta["t_s"].to_numpy(dtype=float))
    host_s, host_hz = _span_rate(meta["host_t_s"].to_numpy(dtype=float))
    measured = bool(np.isfinite(meta["host_t_s"].to_numpy(dtype=float)).any())
    duration, rate = (host_s, host_hz) if measured else (cam_s, cam_hz)
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
        "frame_rate_hz": rate,
        "frame_rate_clock": "host" if measured else "camera",
        "camera_duration_s": cam_s,
        "camera_frame_rate_hz": cam_hz,
        "host_duration_s": host_s if measured else None,
        "host_frame_rate_hz": host_hz,
        "nominal_frame_rate_hz": _nominal_rate(a),
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
        "camera": a.get("camera"),
        "camera_source": (read_rig_record(run.path) or {}).get("camera_source"),
    }
    summary["leftovers"] = _leftover_notes(run.path)
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
                f"Run `axialtrack recover {s['path']}` to trim and close it.",
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
    lines.append(("Duration", _duration_line(s)))
    if s["frames"]:
        lines.append(("Analyzed", f"{s['frames_analyzed']} of {s['frames']} frames"))
    lines.append(("Localizations", f"{s['localizations']} rows"))
    lines.append(("Tracks", str(s["tracks"])))
    lines.append(("Rig", _compact(s.get("rig"))))
    lines.append(("Splitter", _compact(s.get("splitter"))))
    lines.append(camera_line(s.get("camera"), s.get("camera_source")))
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
    left = s.get("leftovers") or []
    if left:
        lines.append(
            (
                "Leftovers",
                "; ".join(left) + f". Run `axialtrack recover {s['path']}` to "
                "restore or remove them.",
            )
        )
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)


def _duration_line(s: dict[str, Any]) -> str:
    """Duration and frame rate, naming the clock of each figure."""
    cam_s, cam_hz = (
        s.get("camera_duration_s", s["duration_s"]),
        s.get("camera_frame_rate_hz"),
    )
    cam = f"{cam_s:.3f} s" + (f", {cam_hz:.2f} frames/s" if cam_hz else "")
    parts = []
    if s.get("frame_rate_clock") == "host":
        host_hz = s.get("host_frame_rate_hz")
        parts.append(
            f"{s['host_duration_s']:.3f} s"
            + (f", {host_hz:.2f} frames/s" if host_hz else "")
            + " measured (host clock: when each frame reached the computer)"
        )
        parts.append(f"camera timestamps: {cam}")
    else:
        parts.append(f"{cam} (camera timestamps; no host times recorded)")
    nominal = s.get("nominal_frame_rate_hz")
    if nominal:
        parts.append(f"requested {nominal:.2f} frames/s")
    return "; ".join(parts)


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
        console.print(
            f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True
        )
        p = Path(path).expanduser().absolute()
        notes = _leftover_notes(p) if p.parent.is_dir() else []
        if notes:
            console.print(
                "Beside it: "
                + "; ".join(notes)
                + f". Run `axialtrack recover {p}` to restore or remove them.",
                style="yellow",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        return 1
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    return 0


def run_recover(
    path: str | os.PathLike[str],
    *,
    action: Literal["auto", "restore", "discard"] = "auto",
    console: Any = None,
) -> int:
    """Recover a run store and what interrupted processes left around it.

    This is ``axialtrack recover RUN.zarr``. In order:

    1. a previous store hidden by an interrupted ``--overwrite``
       (``.NAME.replaced-PID``): by default (``"auto"``) put back if ``path``
       holds no run with a frame; otherwise kept, and the user is asked to
       choose ``--restore`` (put it back, deleting the newer run) or
       ``--discard`` (delete it). A store whose creation was interrupted
       (``.NAME.creating-PID``) is removed;
    2. tables an interrupted ``axialtrack localize`` left
       (``localizations.amend-PID``, ``localizations.old-PID``): a table
       swapped out and never replaced is put back, the rest removed;
    3. a run whose writer stopped without closing it: :func:`recover` (trim
       to the committed counts, remove temporary files, mark it closed).

    Returns 0 when everything is settled, 1 when a choice is left to the user
    (exit status of the command), 2 when ``path`` cannot be recovered (the
    writer still runs, or it is not a run store and nothing beside it is ours).
    """
    from rich.console import Console

    from axialtrack.store.amend import settle_amend_leftovers
    from axialtrack.store.errors import StoreInUseError
    from axialtrack.store.reader import read_attrs, recover
    from axialtrack.store.replace import (
        find_leftovers_beside,
        is_run_store,
        settle_leftover,
    )

    out = console if console is not None else Console()

    def say(text: str, style: str | None = None) -> None:
        out.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    p = Path(path).expanduser().absolute()
    status = 0
    beside = [x for x in find_leftovers_beside(p) if not x.alive]
    for left in beside:
        try:
            done = settle_leftover(left, action)
        except OSError as exc:
            say(f"error: {left.path}: {exc}", "red")
            return 2
        if done.startswith("kept"):
            status = 1
            say(done, "yellow")
        else:
            say(done)
    if not is_run_store(p):
        if beside:
            return status
        try:
            read_attrs(p)  # the precise reason
        except StoreError as exc:
            say(f"error: {exc}", "red")
            return 2
        return 2  # pragma: no cover - read_attrs accepts only run stores
    try:
        for done in settle_amend_leftovers(p):
            say(done)
        report = recover(p)
    except StoreInUseError as exc:
        say(f"error: {exc}", "red")
        return 2
    except (StoreError, OSError) as exc:
        say(f"error: {exc}", "red")
        return 2
    if report.was_open:
        extra = []
        if report.dropped_frame_chunks:
            extra.append(
                f"{report.dropped_frame_chunks} uncommitted frame chunk(s) dropped"
            )
        if report.removed_temp_files:
            extra.append(f"{report.removed_temp_files} partial file(s) removed")
        tail = f" ({'; '.join(extra)})" if extra else ""
        say(
            f"Recovered {p}: {report.frames} frames, {report.localization_rows} "
            f"localizations, {report.track_rows} tracks; marked closed{tail}."
        )
        n_todo = _unanalyzed(p)
        if n_todo:
            say(
                f"{n_todo} frame(s) are not analyzed; `axialtrack localize {p} "
                "--model MODEL` fills them in."
            )
    else:
        say(f"{p} is closed; its data needed no recovery.")
    return status


def _unanalyzed(path: Path) -> int:
    meta = open_run(path).frame_meta
    return int((~meta["analyzed"].to_numpy(dtype=bool)).sum())
