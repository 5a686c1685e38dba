"""The ``export`` subcommand: a run's localizations and tracks for other tools."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``export`` subcommand on an ``add_subparsers()`` object."""
    from axialtrack.store.export import FORMATS

    p = subparsers.add_parser(
        "export",
        help="write a run's localizations and tracks for other tools",
        description="Export a run store's localizations and tracks in the run's "
        "world frame (um from pixel (0, 0) of plane 0, s from the run start): "
        "csv / parquet (localizations and the per-track summary), trackpy "
        "(frame, x, y, z, particle), geff, napari (tracks array), thunderstorm "
        "(CSV in nm and photons), picasso (HDF5 + YAML), trackmate (XML). "
        "See docs/store.md.",
    )
    p.add_argument("run", metavar="RUN.zarr")
    p.add_argument("--to", required=True, choices=list(FORMATS), help="format")
    p.add_argument(
        "--out",
        default=None,
        help="base name of the output files (default: RUN beside RUN.zarr)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace outputs")
    p.set_defaults(func=_cmd_export)
    return p


def _cmd_export(args: argparse.Namespace) -> int:
    from rich.console import Console

    from axialtrack.store.export import export_run

    console = Console()

    written = export_run(args.run, args.to, args.out, overwrite=args.overwrite)
    for path in written:
        console.print(f"wrote {path}")
    return 0
