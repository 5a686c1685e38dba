"""Checking what callers give the writer: tables as columns, lossless dtypes,
JSON provenance."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import BaseModel

from axialtrack.store.errors import InvalidTableError

__all__ = ["check_dtype", "json_dict", "now_iso", "to_columns"]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def json_dict(value: Any, field: str) -> dict[str, Any]:
    """A JSON-compatible dict from a dict or pydantic model; clear error if not."""
    if value is None:
        return {}
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{field} must be a dict (or a pydantic model), got {type(value).__name__}"
        )
    try:
        out = json.loads(json.dumps(dict(value), allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{field} must be JSON-serializable (str, numbers, lists, dicts): {exc}"
        ) from None
    return dict(out)


def to_columns(table: Any, what: str) -> dict[str, np.ndarray]:
    """Columns of a DataFrame, a mapping of arrays or a structured array."""
    if isinstance(table, np.ndarray) and table.dtype.names:
        return {k: np.asarray(table[k]) for k in table.dtype.names}
    if hasattr(table, "columns") and hasattr(table, "to_numpy"):
        return {str(k): np.asarray(table[k].to_numpy()) for k in table.columns}
    if isinstance(table, Mapping):
        return {str(k): np.asarray(v) for k, v in table.items()}
    raise InvalidTableError(
        f"{what}: expected a pandas DataFrame, a dict of 1-D arrays or a structured "
        f"array, got {type(table).__name__}"
    )


def check_dtype(name: str, col: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    if col.dtype.kind not in "biuf" or not np.can_cast(
        col.dtype, dtype, casting="same_kind"
    ):
        raise InvalidTableError(
            f"{what}: column {name!r} has dtype {col.dtype}, which cannot be stored "
            f"as {dtype} without losing information; convert it to {dtype}."
        )
    return np.ascontiguousarray(col, dtype=dtype)
