"""The compiled-engine cache: keys, paths, validation, atomic writes.

A plan (a serialized TensorRT engine) is only valid for one ONNX file, TensorRT
version, GPU model, compute capability, precision and batch profile. Each plan
``<name>.plan`` has a sidecar ``<name>.json`` with its :class:`EngineKey` and the
plan's sha256; a plan is used only when the sidecar's key equals the wanted key
and the plan's bytes hash to the recorded sha256. Anything else (missing or
unreadable sidecar, another key, a truncated or replaced plan) is rebuilt.

Everything here is pure Python so it can be tested without TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

__all__ = [
    "CACHE_ENV",
    "EngineKey",
    "cache_root",
    "invalidate",
    "load_or_build",
    "plan_path",
    "profile_of",
    "read_plan",
    "sha256_bytes",
    "sha256_file",
    "sidecar_path",
    "validate_plan",
    "write_atomic",
    "write_plan",
]

#: Environment variable overriding the engine cache directory.
CACHE_ENV = "AXIALTRACK_CACHE_DIR"
#: Version of the sidecar layout.
SIDECAR_VERSION = 1


class EngineKey(BaseModel):
    """Everything a compiled plan depends on.

    Attributes
    ----------
    onnx_sha256
        sha256 of the bundle's ``model.onnx``.
    backend_version
        TensorRT version string.
    gpu_name
        GPU model, e.g. ``"NVIDIA H100 80GB HBM3"``.
    compute_capability
        e.g. ``"9.0"``.
    precision
        ``"fp32"`` or ``"fp16"``.
    profile
        Batch buckets of the optimization profile, ascending.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    onnx_sha256: str
    backend_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: tuple[int, ...]

    def digest(self) -> str:
        """A short hash of the whole key (part of the file name)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def stem(self) -> str:
        """File name stem: readable parts plus :meth:`digest`."""
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-").lower()
        return (
            f"{self.onnx_sha256[:12]}-trt{self.backend_version}-{gpu}-"
            f"sm{self.compute_capability.replace('.', '')}-{self.precision}-"
            f"{self.digest()}"
        )


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The engine cache directory (not created).

    ``cache_dir`` if given, else ``$AXIALTRACK_CACHE_DIR``, else
    ``platformdirs.user_cache_dir("axialtrack")/engines``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("axialtrack")) / "engines"


def plan_path(key: EngineKey, cache_dir: str | Path | None = None) -> Path:
    """Path of the plan for ``key``."""
    return cache_root(cache_dir) / f"{key.stem()}.plan"


def sidecar_path(plan: Path) -> Path:
    """The sidecar JSON of a plan file."""
    return plan.with_suffix(".json")


def sha256_bytes(data: bytes) -> str:
    """sha256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """sha256 hex digest of a file."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_plan(path: Path, plan: bytes, key: EngineKey) -> None:
    """Atomically write a plan and then its sidecar (key + plan sha256)."""
    write_atomic(path, plan)
    meta = {
        "sidecar_version": SIDECAR_VERSION,
        "key": key.model_dump(mode="json"),
        "plan_sha256": sha256_bytes(plan),
        "plan_bytes": len(plan),
    }
    write_atomic(sidecar_path(path), json.dumps(meta, indent=2).encode())


def validate_plan(path: Path, key: EngineKey) -> str | None:
    """Why the cached plan at ``path`` must not be used, or ``None`` if it is valid.

    Checks the sidecar (present, parseable, same :class:`EngineKey`) and the
    plan's sha256.
    """
    side = sidecar_path(path)
    if not path.is_file():
        return "no cached plan"
    if not side.is_file():
        return "the cached plan has no sidecar"
    try:
        meta = json.loads(side.read_text())
        stored = EngineKey.model_validate(meta["key"])
        want_sha = str(meta["plan_sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        return f"the sidecar is unreadable ({type(exc).__name__})"
    if stored != key:
        diff = [
            f"{k}: {getattr(stored, k)!r} != {getattr(key, k)!r}"
            for k in EngineKey.model_fields
            if getattr(stored, k) != getattr(key, k)
        ]
        return "stale plan (" + "; ".join(diff) + ")"
    if sha256_file(path) != want_sha:
        return "the plan is corrupt (sha256 does not match its sidecar)"
    return None


def read_plan(path: Path, key: EngineKey) -> bytes | None:
    """The plan's bytes if valid for ``key`` (hash checked on the bytes read)."""
    if validate_plan(path, key) is not None:
        return None
    data = path.read_bytes()
    meta = json.loads(sidecar_path(path).read_text())
    return data if sha256_bytes(data) == meta["plan_sha256"] else None


def load_or_build(
    key: EngineKey,
    builder: Callable[[], bytes],
    cache_dir: str | Path | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> tuple[bytes, str]:
    """A valid plan for ``key``: from the cache, or built and cached.

    Parameters
    ----------
    key
        The wanted plan's key.
    builder
        Builds the plan's bytes (called only when no valid plan is cached).
    cache_dir
        Cache directory (see :func:`cache_root`).
    log
        Called with one line on a rebuild.

    Returns
    -------
    tuple[bytes, str]
        The plan and how it was obtained: ``"cached"``, ``"built"`` (nothing
        cached) or ``"rebuilt: <why the cached one was refused>"``.
    """
    path = plan_path(key, cache_dir)
    why = validate_plan(path, key)
    if why is None:
        data = read_plan(path, key)
        if data is not None:
            return data, "cached"
        why = "the plan changed while it was read"
    plan = bytes(builder())
    if not plan:
        raise RuntimeError("the engine builder returned an empty plan")
    write_plan(path, plan, key)
    status = "built" if why == "no cached plan" else f"rebuilt: {why}"
    if log is not None and status != "built":
        log(f"engine cache {path.name}: {status}")
    return plan, status


def invalidate(key: EngineKey, cache_dir: str | Path | None = None) -> None:
    """Remove the cached plan of ``key`` and its sidecar (e.g. it did not load)."""
    path = plan_path(key, cache_dir)
    path.unlink(missing_ok=True)
    sidecar_path(path).unlink(missing_ok=True)


def profile_of(buckets: Sequence[int]) -> tuple[int, ...]:
    """The profile part of a key: the sorted buckets."""
    return tuple(sorted(int(b) for b in buckets))
