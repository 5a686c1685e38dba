"""Export a run's localizations and tracks to the formats other tools read.

Every export is in the run's world frame (:mod:`axialtrack.store.world`):
micrometres (or nanometres, where the format says so) from the centre of pixel
``(0, 0)`` of plane 0, seconds from the run start. ``axialtrack export RUN.zarr
--to FORMAT`` calls :func:`export_run`.
"""

from __future__ import annotations

import itertools
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from axialtrack.store.errors import StoreExistsError
from axialtrack.store.reader import open_run
from axialtrack.store.world import frame_interval, table_units, world_localizations

if TYPE_CHECKING:
    import pandas as pd

    from axialtrack.store.reader import Run

__all__ = ["FORMATS", "export_run", "outputs_for"]

#: ``--to`` choices, and the file(s) each writes beside ``OUT`` (its base name)
FORMATS: dict[str, tuple[str, ...]] = {
    "csv": ("_localizations.csv", "_tracks.csv"),
    "parquet": ("_localizations.parquet", "_tracks.parquet"),
    "trackpy": ("_trackpy.csv",),
    "geff": (".geff",),
    "napari": ("_napari_tracks.npy", "_napari_tracks.csv"),
    "thunderstorm": ("_thunderstorm.csv",),
    "picasso": ("_locs.hdf5", "_locs.yaml"),
    "trackmate": ("_trackmate.xml",),
}


def outputs_for(fmt: str, base: str | os.PathLike[str]) -> list[Path]:
    """The files :func:`export_run` writes for ``fmt`` with base name ``base``."""
    return [Path(f"{os.fspath(base)}{suffix}") for suffix in FORMATS[fmt]]


def _linked(locs: pd.DataFrame) -> pd.DataFrame:
    linked = locs[locs["track_id"].to_numpy() >= 0]
    return linked.sort_values(["track_id", "frame"], kind="stable")


def _track_summary(run: Run, world: pd.DataFrame) -> pd.DataFrame:
    """The stored per-track summary, or one computed from the world table."""
    tracks = run.tracks
    if len(tracks):
        return tracks
    from axialtrack.pipeline import summarize_tracks

    return summarize_tracks(world, frame_interval_s=frame_interval(run))


def _csv(run: Run, world: pd.DataFrame, out: list[Path]) -> None:
    world.to_csv(out[0], index=False)
    _track_summary(run, world).to_csv(out[1], index=False)


def _parquet(run: Run, world: pd.DataFrame, out: list[Path]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for table, path in ((world, out[0]), (_track_summary(run, world), out[1])):
        t = pa.Table.from_pandas(table, preserve_index=False)
        meta = dict(t.schema.metadata or {})
        meta[b"axialtrack"] = json.dumps(
            {
                "units": table_units(table.columns),
                "frame": "world: um from pixel (0, 0) of plane 0, s from run start",
                "run": str(run.path),
            }
        ).encode()
        pq.write_table(t.replace_schema_metadata(meta), path)


def _trackpy(run: Run, world: pd.DataFrame, out: list[Path]) -> None:
    import pandas as pd

    linked = _linked(world)
    pd.DataFrame(
        {
            "frame": linked["frame"].to_numpy(),
            "x": linked["x_um"].to_numpy(),
            "y": linked["y_um"].to_numpy(),
            "z": linked["z_um"].to_numpy(),
            "particle": linked["track_id"].to_numpy(),
            "mass": linked["photons"].to_numpy(),
            "t_s": linked["t_s"].to_numpy(),
        }
    ).to_csv(out[0], index=False)


def _geff(run: Run, world: pd.DataFrame, out: list[Path]) -> None:
    from axialtrack.pipeline import write_geff

    write_geff(world.reset_index(drop=True), out[0], overwrite=True)


def _napari(run: Run, world: pd.DataFrame, out: list[Path]) -> None:
    linked = _linked(world)
    data = np.column_stack(
        [
            linked["track_id"].to_numpy(dtype=np.float64),
            linked["t_frame_s"].to_numpy(dtype=np.float64),
            linked["z_um"].to_numpy(dtype=np.float64),
            linked["y_um"].to_numpy(dtype=np.float64),
            linked["x_um"].to_numpy(dtype=np.float64),
        ]
    ).reshape(-1, 5)
    np.save(out[0], data)
    linked.drop(columns=["track_id"]).to_csv(out[1], index=False)


def _thunderstorm(run: Run, world: pd.DataFrame, out: list[Path]) -> None:
    import pandas as pd

    nm = 1000.0
    sigma = world["sigma_z_um"].to_numpy(dtype=np.float64) * nm
    pd.DataFrame(
        {
            "id": np.arange(1, len(world) + 1),
            "frame": world["frame"].to_numpy() + 1,  # ThunderSTORM counts from 1
            "x [nm]": world["x_um"].to_numpy() * nm,
            "y [nm]": world["y_um"].to_numpy() * nm,
            "z [nm]": world["z_um"].to_numpy() * nm,
            "intensity [photon]": world["photons"].to_numpy(),
            "offset [photon]": world["background"].to_numpy(),
            "uncertainty_z [nm]": sigma,
            "track_id": world["track_id"].to_numpy(),
        }
    ).to_csv(out[0], index=False)


def _picasso(run: Run, world: pd.DataFrame, out: list[Path]) -> None:
    import h5py
    import yaml

    px = run.pixel_size_um
    h, w = (int(v) for v in run.attrs.get("plane_shape", (0, 0)))
    n = len(world)
    sig = world["sigma_z_um"].to_numpy(dtype=np.float64)
    dtype = [
        ("frame", "u4"),
        ("x", "f4"),
        ("y", "f4"),
        ("z", "f4"),
        ("photons", "f4"),
        ("bg", "f4"),
        ("lpz", "f4"),
        ("track_id", "i4"),
    ]
    locs = np.rec.array(
        (
            world["frame"].to_numpy().astype("u4"),
            (world["x_um"].to_numpy() / px).astype("f4"),
            (world["y_um"].to_numpy() / px).astype("f4"),
            (world["z_um"].to_numpy() * 1000.0).astype("f4"),
            world["photons"].to_numpy().astype("f4"),
            world["background"].to_numpy().astype("f4"),
            (sig * 1000.0 / (px * 1000.0)).astype("f4"),
            world["track_id"].to_numpy().astype("i4"),
        ),
        dtype=dtype,
    ).reshape(n)
    with h5py.File(out[0], "w") as f:
        f.create_dataset("locs", data=locs)
    info = [
        {
            "Generated by": "axialtrack export",
            "Byte Order": "<",
            "Data Type": "uint16",
            "Frames": int(run.n_frames),
            "Width": w,
            "Height": h,
            "Pixelsize": px * 1000.0,
            "Run": str(run.path),
            "Units": "x, y: camera pixels from pixel (0, 0) of plane 0; z: nm; "
            "lpz: pixels",
        }
    ]
    with open(out[1], "w", encoding="utf-8") as f:
        yaml.safe_dump_all(info, f, sort_keys=False)


def _trackmate(run: Run, world: pd.DataFrame, out: list[Path]) -> None:
    dt = frame_interval(run)
    root = ET.Element("TrackMate", version="7.13.2")
    model = ET.SubElement(root, "Model", spatialunits="micron", timeunits="sec")
    decl = ET.SubElement(model, "FeatureDeclarations")
    spot_feats = ET.SubElement(decl, "SpotFeatures")
    names = [
        ("QUALITY", "Quality", "QUALITY"),
        ("POSITION_X", "X", "POSITION"),
        ("POSITION_Y", "Y", "POSITION"),
        ("POSITION_Z", "Z", "POSITION"),
        ("POSITION_T", "T", "TIME"),
        ("FRAME", "Frame", "NONE"),
        ("RADIUS", "Radius", "LENGTH"),
        ("VISIBILITY", "Visibility", "NONE"),
        ("TOTAL_INTENSITY", "Total intensity", "INTENSITY"),
    ]
    for feat, name, dim in names:
        ET.SubElement(
            spot_feats,
            "Feature",
            feature=feat,
            name=name,
            shortname=name,
            dimension=dim,
            isint="true" if feat in ("FRAME", "VISIBILITY") else "false",
        )
    ET.SubElement(decl, "EdgeFeatures")
    ET.SubElement(decl, "TrackFeatures")
    all_spots = ET.SubElement(model, "AllSpots", nspots=str(len(world)))
    radius = 2.0 * run.pixel_size_um
    frames = world["frame"].to_numpy()
    order = np.argsort(frames, kind="stable")
    ids = np.arange(len(world))
    for f in np.unique(frames):
        group = ET.SubElement(all_spots, "SpotsInFrame", frame=str(int(f)))
        for i in order[frames[order] == f]:
            row = world.iloc[int(i)]
            ET.SubElement(
                group,
                "Spot",
                ID=str(int(ids[i])),
                name=f"ID{int(ids[i])}",
                QUALITY=repr(float(row["photons"])),
                POSITION_X=repr(float(row["x_um"])),
                POSITION_Y=repr(float(row["y_um"])),
                POSITION_Z=repr(float(row["z_um"])),
                POSITION_T=repr(float(row["frame"]) * dt),
                FRAME=str(int(row["frame"])),
                RADIUS=repr(radius),
                VISIBILITY="1",
                TOTAL_INTENSITY=repr(float(row["photons"])),
            )
    all_tracks = ET.SubElement(model, "AllTracks")
    filtered = ET.SubElement(model, "FilteredTracks")
    tid = world["track_id"].to_numpy()
    for t in np.unique(tid[tid >= 0]):
        rows = np.flatnonzero(tid == t)
        rows = rows[np.argsort(frames[rows], kind="stable")]
        track = ET.SubElement(
            all_tracks,
            "Track",
            name=f"Track_{int(t)}",
            TRACK_ID=str(int(t)),
            NUMBER_SPOTS=str(len(rows)),
        )
        for a, b in itertools.pairwise(rows):
            ET.SubElement(
                track,
                "Edge",
                SPOT_SOURCE_ID=str(int(ids[a])),
                SPOT_TARGET_ID=str(int(ids[b])),
                EDGE_TIME=repr((float(frames[a]) + float(frames[b])) / 2 * dt),
            )
        ET.SubElement(filtered, "TrackID", TRACK_ID=str(int(t)))
    settings = ET.SubElement(root, "Settings")
    h, w = (int(v) for v in run.attrs.get("plane_shape", (0, 0)))
    ET.SubElement(
        settings,
        "ImageData",
        filename=run.path.name,
        folder=str(run.path.parent),
        width=str(w),
        height=str(h),
        nslices="1",
        nframes=str(run.n_frames),
        pixelwidth=repr(run.pixel_size_um),
        pixelheight=repr(run.pixel_size_um),
        voxeldepth="1.0",
        timeinterval=repr(dt),
    )
    ET.SubElement(
        settings, "InitialSpotFilter", feature="QUALITY", value="0.0", isabove="true"
    )
    ET.SubElement(settings, "SpotFilterCollection")
    ET.SubElement(settings, "TrackFilterCollection")
    ET.indent(root)
    ET.ElementTree(root).write(out[0], encoding="UTF-8", xml_declaration=True)


_WRITERS: dict[str, Callable[[Run, pd.DataFrame, list[Path]], None]] = {
    "csv": _csv,
    "parquet": _parquet,
    "trackpy": _trackpy,
    "geff": _geff,
    "napari": _napari,
    "thunderstorm": _thunderstorm,
    "picasso": _picasso,
    "trackmate": _trackmate,
}


def _is_geff(path: Path) -> bool:
    """Whether ``path`` is a GEFF store (zarr v2 or v3 with ``geff`` attrs)."""
    for name in (".zattrs", "zarr.json"):
        try:
            meta = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        attrs = meta.get("attributes", meta) if isinstance(meta, dict) else {}
        if isinstance(attrs, dict) and "geff" in attrs:
            return True
    return False


def export_run(
    path: str | os.PathLike[str],
    fmt: str,
    out: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Export the run store at ``path`` as ``fmt`` (one of :data:`FORMATS`).

    Parameters
    ----------
    path
        The run store.
    fmt
        ``csv``, ``parquet`` (localizations and the per-track summary),
        ``trackpy`` (``frame, x, y, z, particle, mass, t_s``), ``geff``,
        ``napari`` (tracks array ``[track_id, t, z, y, x]`` and its features),
        ``thunderstorm`` (CSV in nm, photons), ``picasso`` (HDF5 + YAML),
        ``trackmate`` (XML).
    out
        Base name of the files (``RUN`` beside ``RUN.zarr`` by default); the
        suffixes are :data:`FORMATS`'s.
    overwrite
        Replace existing outputs; otherwise an existing one is refused before
        anything is written.

    Returns
    -------
    list of Path
        The files (or, for GEFF, the directory) written.
    """
    if fmt not in _WRITERS:
        raise ValueError(
            f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}"
        )
    run = open_run(path)
    base = Path(out) if out is not None else run.path.with_suffix("")
    targets = outputs_for(fmt, base)
    for t in targets:
        if not (t.exists() or t.is_symlink()):
            continue
        if not overwrite:
            raise StoreExistsError(
                f"{t} exists; pass --overwrite to replace it or --out to write "
                "elsewhere."
            )
        if (
            t.is_symlink()
            or (t.is_dir() and not _is_geff(t))
            or (not t.is_dir() and fmt == "geff")
        ):
            raise StoreExistsError(
                f"{t} is not an export this command replaces (a directory other "
                "than a GEFF, or a link); move it or choose another --out."
            )
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
    world = world_localizations(run).reset_index(drop=True)
    _WRITERS[fmt](run, world, targets)
    return targets
