"""Names, dtypes and metadata of the run store, format 1.

::

    <name>.zarr/
      zarr.json        attributes["axialtrack"]: format, kind, created, rig, splitter,
                       model, state, n_frames (committed), ...
      frames/          OME-Zarr 0.5 image group; array "0" (t, c, y, x) uint16,
                       one chunk per frame
      frame_meta/      1-D arrays along t (FRAME_META_COLUMNS)
      localizations/   1-D arrays, one per column; attributes n_rows, columns
      tracks/          1-D arrays, one per column; attributes n_rows, columns

The arrays along t and along rows may be longer than the committed counts while a
run is being written (they grow in blocks); the counts say what is valid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "ATTRS_KEY",
    "COLUMN_UNITS",
    "COMPRESSIONS",
    "FORMAT_VERSION",
    "FRAMES",
    "FRAME_ARRAY",
    "FRAME_META",
    "FRAME_META_COLUMNS",
    "FRAME_META_FILLS",
    "LOCALIZATIONS",
    "LOCALIZATION_COLUMNS",
    "LOCALIZATION_DEFAULTS",
    "TRACKS",
    "Compression",
    "chunk_encoder",
    "fill_for",
    "frame_codecs",
    "frame_window_sample",
    "merge_windows",
    "ome_image_attrs",
    "read_json",
    "with_time_scale",
]

FORMAT_VERSION = 1
ATTRS_KEY = "axialtrack"

FRAMES = "frames"
FRAME_ARRAY = "0"
FRAME_META = "frame_meta"
LOCALIZATIONS = "localizations"
TRACKS = "tracks"

Kind = Literal["calibration", "live"]
KINDS: tuple[str, ...] = ("calibration", "live")

FRAME_META_COLUMNS: dict[str, np.dtype] = {
    "t_s": np.dtype("float64"),
    "stage_z_um": np.dtype("float64"),
    "stage_x_um": np.dtype("float64"),
    "stage_y_um": np.dtype("float64"),
    "image_number": np.dtype("int64"),
    "position_index": np.dtype("int64"),
    "analyzed": np.dtype("bool"),
    "host_t_s": np.dtype("float64"),
}

LOCALIZATION_COLUMNS: dict[str, np.dtype] = {
    "frame": np.dtype("int64"),
    "t_s": np.dtype("float64"),
    "x_um": np.dtype("float64"),
    "y_um": np.dtype("float64"),
    "z_um": np.dtype("float64"),
    "dz_um": np.dtype("float64"),
    "sigma_z_um": np.dtype("float64"),
    "photons": np.dtype("float64"),
    "background": np.dtype("float64"),
    "track_id": np.dtype("int64"),
}

#: Units of the columns of the run's tables (``units`` in each table group's
#: attributes; columns not named here have none).
COLUMN_UNITS: dict[str, str] = {
    "t_s": "s",
    "host_t_s": "s",
    "stage_z_um": "um",
    "stage_x_um": "um",
    "stage_y_um": "um",
    "x_um": "um",
    "y_um": "um",
    "z_um": "um",
    "dz_um": "um",
    "sigma_z_um": "um",
    "sigma_xy_um": "um",
    "photons": "photons",
    "background": "photons/pixel",
    "x_px": "pixel",
    "y_px": "pixel",
    "neighbour_px": "pixel",
    "duration_s": "s",
    "D_um2_s": "um^2/s",
    "D_se_um2_s": "um^2/s",
    "D_xy_um2_s": "um^2/s",
    "D_z_um2_s": "um^2/s",
    "loc_error_xy_um": "um",
    "loc_error_z_um": "um",
    # the world-frame columns readers add (axialtrack.store.world)
    "t_frame_s": "s",
    "t_camera_s": "s",
    "x_stage_um": "um",
    "y_stage_um": "um",
}


def units_of(columns: Any) -> dict[str, str]:
    """Units of those of ``columns`` that have one (:data:`COLUMN_UNITS`)."""
    return {str(c): COLUMN_UNITS[c] for c in columns if c in COLUMN_UNITS}


#: Localization columns that may be left out of a batch, and their value then.
LOCALIZATION_DEFAULTS: dict[str, float | int] = {"sigma_z_um": math.nan, "track_id": -1}

FRAME_META_FILLS: dict[str, float | int | bool] = {
    "t_s": math.nan,
    "stage_z_um": math.nan,
    "stage_x_um": math.nan,
    "stage_y_um": math.nan,
    "image_number": -1,
    "position_index": 0,
    "analyzed": False,
    "host_t_s": math.nan,
}

#: Chunk keys ``c.<t>.0.0.0``: one file per frame directly in the array's directory.
#: (The ``/`` separator costs three directories per frame, which on ext4 halved
#: the to-disk frame rate; see docs/store.md.)
CHUNK_KEY_ENCODING: dict[str, str] = {"name": "default", "separator": "."}

Compression = Literal["zstd", "blosc-lz4", "blosc-zstd"]
COMPRESSIONS: tuple[str, ...] = ("zstd", "blosc-lz4", "blosc-zstd")
_DEFAULT_LEVEL = {"zstd": 1, "blosc-lz4": 5, "blosc-zstd": 1}


def fill_for(dtype: np.dtype) -> float | int | bool:
    """The value of a table cell that was never written: NaN, -1 or False."""
    if dtype.kind == "f":
        return math.nan
    if dtype.kind == "b":
        return False
    return -1 if dtype.kind == "i" else 0


def compression_level(compression: str, level: int | None) -> int:
    """The compression level used for ``compression`` when ``level`` is None."""
    return _DEFAULT_LEVEL[compression] if level is None else int(level)


def frame_codecs(
    compression: str | None, level: int | None = None
) -> tuple[Any, tuple[Any, ...]]:
    """Zarr v3 ``(serializer, compressors)`` for the frame array."""
    from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec

    serializer = BytesCodec(endian="little")
    if compression is None:
        return serializer, ()
    lvl = compression_level(compression, level)
    if compression == "zstd":
        return serializer, (ZstdCodec(level=lvl, checksum=False),)
    cname: Literal["lz4", "zstd"] = "lz4" if compression == "blosc-lz4" else "zstd"
    return serializer, (
        BloscCodec(
            cname=cname, clevel=lvl, shuffle="bitshuffle", typesize=2, blocksize=0
        ),
    )


def chunk_encoder(
    compression: str | None, level: int | None = None
) -> Callable[[np.ndarray], Any]:
    """Encode one chunk (a C-contiguous array) into the bytes of its zarr chunk file.

    The result equals what the codecs of :func:`frame_codecs` (or, for
    ``"zstd"``, the table arrays' codecs) produce: the raw little-endian bytes,
    or those bytes through zstd or blosc (bit-shuffle, typesize = itemsize). The
    returned callable releases the GIL while it compresses.
    """

    def raw(chunk: np.ndarray) -> np.ndarray:
        if chunk.dtype.byteorder == ">":
            chunk = chunk.astype(chunk.dtype.newbyteorder("<"))
        return np.ascontiguousarray(chunk)

    if compression is None:
        return raw
    from numcodecs import Blosc, Zstd

    lvl = compression_level(compression, level)
    if compression == "zstd":
        zstd = Zstd(level=lvl, checksum=False)
        return lambda chunk: zstd.encode(raw(chunk).reshape(-1).view(np.uint8))
    cname = {"blosc-lz4": "lz4", "blosc-zstd": "zstd"}[compression]
    coders: dict[int, Any] = {}

    def blosc(chunk: np.ndarray) -> Any:
        size = chunk.dtype.itemsize
        if size not in coders:
            coders[size] = Blosc(
                cname=cname,
                clevel=lvl,
                shuffle=Blosc.BITSHUFFLE,
                blocksize=0,
                typesize=size,
            )
        return coders[size].encode(raw(chunk).reshape(-1).view(np.uint8))

    return blosc


#: The display window written until the data give one: the whole uint16 range.
FULL_WINDOW: tuple[float, float] = (0.0, 65535.0)


def ome_image_attrs(
    *,
    pixel_size_um: float,
    frame_interval_s: float | None,
    name: str = "frames",
    path: str = FRAME_ARRAY,
    windows: list[tuple[float, float, float, float]] | None = None,
) -> dict[str, Any]:
    """The OME-Zarr (NGFF 0.5) ``ome`` attribute of an image group.

    Parameters
    ----------
    pixel_size_um, frame_interval_s
        The scale of ``y``/``x`` and ``t`` (``t``: 1 until the interval is known).
    name
        The multiscale's name.
    path
        The frame array relative to the group holding this attribute: ``"0"``
        in ``frames``, ``"frames/0"`` at the store's root.
    windows
        Per plane ``(min, max, start, end)`` of the ``omero`` channel window:
        the data's range and the display range (a low and a high percentile).
        ``None``: the whole uint16 range.
    """
    dt = frame_interval_s if frame_interval_s and frame_interval_s > 0 else 1.0
    lo, hi = FULL_WINDOW
    wins = windows or [(lo, hi, lo, hi)] * 2
    channels = []
    for i, color in enumerate(("00FF00", "FF00FF")):
        wmin, wmax, start, end = (float(v) for v in wins[i])
        channels.append(
            {
                "label": f"plane {i}",
                "color": color,
                "active": True,
                "window": {"min": wmin, "max": wmax, "start": start, "end": end},
            }
        )
    return {
        "version": "0.5",
        "multiscales": [
            {
                "name": name,
                "axes": [
                    {"name": "t", "type": "time", "unit": "second"},
                    {"name": "c", "type": "channel"},
                    {"name": "y", "type": "space", "unit": "micrometer"},
                    {"name": "x", "type": "space", "unit": "micrometer"},
                ],
                "datasets": [
                    {
                        "path": path,
                        "coordinateTransformations": [
                            {
                                "type": "scale",
                                "scale": [
                                    float(dt),
                                    1.0,
                                    float(pixel_size_um),
                                    float(pixel_size_um),
                                ],
                            }
                        ],
                    }
                ],
            }
        ],
        "omero": {"channels": channels, "rdefs": {"model": "color"}},
    }


def with_time_scale(ome: dict[str, Any], frame_interval_s: float) -> dict[str, Any]:
    """A copy of an ``ome`` attribute with ``frame_interval_s`` as the t scale."""
    import copy

    out = copy.deepcopy(ome)
    for ms in out.get("multiscales", []):
        for ds in ms.get("datasets", []):
            for tr in ds.get("coordinateTransformations", []):
                if tr.get("type") == "scale":
                    tr["scale"][0] = float(frame_interval_s)
    return out


def frame_window_sample(frame: np.ndarray) -> np.ndarray:
    """Per plane ``(min, max, p0.1, p99.99)`` of a ``(2, H, W)`` frame.

    The high percentile keeps a few bright particles in range and a few hot
    pixels out of it (about 5 ms for 2 x 512 x 512).
    """
    flat = frame.reshape(frame.shape[0], -1)
    q = np.percentile(flat, (0.1, 99.99), axis=1)
    return np.stack([flat.min(axis=1), flat.max(axis=1), q[0], q[1]], axis=1).astype(
        np.float64
    )


def merge_windows(samples: np.ndarray) -> list[tuple[float, float, float, float]]:
    """The ``omero`` windows of per-frame samples ``(k, 2, 4)`` from
    :func:`frame_window_sample`: the overall min and max, the lowest low and
    the highest high percentile (end > start always)."""
    s = np.asarray(samples, dtype=np.float64)
    out = []
    for p in range(s.shape[1]):
        wmin, wmax = float(s[:, p, 0].min()), float(s[:, p, 1].max())
        start, end = float(s[:, p, 2].min()), float(s[:, p, 3].max())
        if end <= start:
            end = start + 1.0
        out.append((wmin, max(wmax, end), start, end))
    return out


def read_json(path: Path) -> Any:
    """Read a JSON file (a ``zarr.json``)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)
