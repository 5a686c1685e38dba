"""The engine interface: :class:`Engine`, :class:`InferResult`, batching."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import NamedTuple

import numpy as np

from axialtrack.errors import AxialtrackError
from axialtrack.model import Bundle

__all__ = [
    "BACKENDS",
    "DEFAULT_BUCKETS",
    "Engine",
    "EngineError",
    "InferResult",
    "bucket_for",
    "normalize_buckets",
    "plan_chunks",
]

#: Backend names, fastest first (the order of automatic selection).
BACKENDS: tuple[str, ...] = ("tensorrt", "torch-cuda", "onnxruntime", "torch-cpu")
#: Default batch buckets (fixed shapes for engine profiles and CUDA graphs).
DEFAULT_BUCKETS: tuple[int, ...] = (1, 16, 64, 256, 1024)
#: Batch buckets of the CPU backends: chunks of at most 64 pairs stay in the
#: core's caches; onnxruntime ran 36k pairs/s in chunks of 64 against 28k in
#: chunks of 1024 (one thread; ``benchmarks/bench_engines.py``, onnxruntime-chunks).
CPU_BUCKETS: tuple[int, ...] = (1, 16, 64)
#: Output columns of :class:`InferResult`, in order.
RESULT_COLUMNS: tuple[str, ...] = ("dz_um", "sigma_z_um", "dx_px", "dy_px")


class EngineError(AxialtrackError, RuntimeError):
    """An inference backend is unavailable, failed to build, or failed to run."""


class InferResult(NamedTuple):
    """Per-pair model outputs, all ``(N,)`` float32.

    Attributes
    ----------
    dz_um
        Axial offset from the current stage position (um).
    sigma_z_um
        Predicted uncertainty of ``dz_um`` (um); NaN without an uncertainty head.
    dx_px, dy_px
        Sub-pixel offset from the crop centre in plane 0 (px); NaN without a
        sub-pixel head.
    """

    dz_um: np.ndarray
    sigma_z_um: np.ndarray
    dx_px: np.ndarray
    dy_px: np.ndarray


def normalize_buckets(buckets: Sequence[int] | None) -> tuple[int, ...]:
    """Sorted unique positive bucket sizes (``None``: :data:`DEFAULT_BUCKETS`)."""
    if buckets is None:
        return DEFAULT_BUCKETS
    out = tuple(sorted({int(b) for b in buckets}))
    if not out or out[0] < 1:
        raise ValueError(f"buckets must be positive integers; got {buckets!r}")
    return out


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """Smallest bucket holding ``n`` items (``n`` <= the largest bucket)."""
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"{n} items exceed the largest bucket {buckets[-1]}")


def plan_chunks(n: int, buckets: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """Split ``n`` items into ``(start, stop, bucket)`` chunks.

    Chunks are of the largest bucket size; the last one goes to the smallest
    bucket that holds it.
    """
    big = buckets[-1]
    start = 0
    while start < n:
        stop = min(n, start + big)
        yield start, stop, bucket_for(stop - start, buckets)
        start = stop


class Engine(abc.ABC):
    """A compiled model behind one call: :meth:`infer`.

    Subclasses implement :meth:`_forward` for one chunk of at most the largest
    bucket. One thread at a time may call :meth:`infer` (one inference thread per
    engine).

    Attributes
    ----------
    name
        ``"tensorrt"``, ``"torch-cuda"``, ``"onnxruntime"`` or ``"torch-cpu"``.
    bundle
        The model bundle.
    buckets
        Batch sizes the engine is built for, ascending.
    reason
        Why :func:`~axialtrack.engine.select_engine` chose this backend.
    precision
        ``"fp32"`` or ``"fp16"``.
    pad_to_bucket
        Whether chunks are padded to their bucket size before running (backends
        with fixed shapes: TensorRT profiles, CUDA graphs). Backends with free
        dynamic shapes run the exact batch; results are the same either way.
    """

    name: str = ""
    pad_to_bucket: bool = True

    def __init__(
        self,
        bundle: Bundle,
        *,
        precision: str = "fp32",
        buckets: Sequence[int] | None = None,
        reason: str = "",
    ) -> None:
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16'; got {precision!r}")
        self.bundle = bundle
        self.precision = precision
        self.buckets = normalize_buckets(buckets)
        self.reason = reason or f"{self.name} requested"
        names = bundle.output_names
        self._columns = [names.index(c) if c in names else -1 for c in RESULT_COLUMNS]
        self._img_bufs: dict[int, np.ndarray] = {}
        self._xy_bufs: dict[int, np.ndarray] = {}

    # -- public -------------------------------------------------------------------
    @property
    def crop_size(self) -> int:
        """Crop side (px) the model expects."""
        return int(self.bundle.crop_size)

    @property
    def needs_xy(self) -> bool:
        """Whether the model has the field-position branch (``field_xy`` needed)."""
        return bool(self.bundle.config.field_branch)

    @property
    def n_outputs(self) -> int:
        """Number of model output columns."""
        return len(self.bundle.output_names)

    def infer(
        self, pairs: np.ndarray, field_xy: np.ndarray | None = None
    ) -> InferResult:
        """Run the model on crop pairs.

        Parameters
        ----------
        pairs
            ``(N, 2, S, S)`` raw camera counts, plane 0 then plane 1, any real
            dtype (uint16 is fine). ``N`` may be 0 or larger than the largest
            bucket.
        field_xy
            ``(N, 2)`` plane-0 positions normalized to ``[-1, 1]``; required when
            :attr:`needs_xy`, ignored otherwise.

        Returns
        -------
        InferResult
            Exactly ``N`` results per column.
        """
        pairs = np.asarray(pairs)
        s = self.crop_size
        if pairs.ndim != 4 or pairs.shape[1:] != (2, s, s):
            raise ValueError(
                f"pairs must have shape (N, 2, {s}, {s}); got {tuple(pairs.shape)}"
            )
        if not (
            np.issubdtype(pairs.dtype, np.integer)
            or np.issubdtype(pairs.dtype, np.floating)
            or pairs.dtype == np.bool_
        ):
            raise ValueError(f"pairs must be a real array; got dtype {pairs.dtype}")
        n = pairs.shape[0]
        xy: np.ndarray | None = None
        if self.needs_xy:
            if field_xy is None:
                raise ValueError(
                    "this model has a field-position branch: pass field_xy (N, 2), "
                    "the plane-0 positions normalized to [-1, 1]"
                )
            xy = np.asarray(field_xy, dtype=np.float32)
            if xy.shape != (n, 2):
                raise ValueError(
                    f"field_xy must have shape ({n}, 2) to match pairs; "
                    f"got {tuple(xy.shape)}"
                )
        out = np.empty((n, self.n_outputs), dtype=np.float32)
        for start, stop, bucket in plan_chunks(n, self.buckets):
            out[start:stop] = self._forward(
                pairs[start:stop], None if xy is None else xy[start:stop], bucket
            )
        return self._result(out)

    def warmup(self) -> None:
        """Run every bucket once (builds graphs, allocates buffers)."""
        s = self.crop_size
        for b in self.buckets:
            pairs = np.zeros((b, 2, s, s), np.float32)
            xy = np.zeros((b, 2), np.float32) if self.needs_xy else None
            self._forward(pairs, xy, b)

    def close(self) -> None:
        """Release the backend's resources."""
        self._img_bufs.clear()
        self._xy_bufs.clear()

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name} {self.precision} "
            f"buckets={self.buckets} model={self.bundle.path.name}>"
        )

    # -- for subclasses -----------------------------------------------------------
    @abc.abstractmethod
    def _forward(
        self, pairs: np.ndarray, xy: np.ndarray | None, bucket: int
    ) -> np.ndarray:
        """Outputs ``(n, K)`` for ``n <= bucket`` pairs (any dtype) and ``xy``."""

    def _stage(
        self, pairs: np.ndarray, xy: np.ndarray | None, bucket: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Copy a chunk into the float32 host buffers of its bucket.

        Returns views of ``bucket`` rows (padding rows zeroed) when
        :attr:`pad_to_bucket`, else of the ``n`` rows. A C-contiguous float32 chunk
        is returned as is when no padding is needed.
        """
        n = pairs.shape[0]
        rows = bucket if self.pad_to_bucket else n
        if (
            rows == n
            and pairs.dtype == np.float32
            and pairs.flags.c_contiguous
            and (xy is None or xy.flags.c_contiguous)
        ):
            return pairs, xy
        img = self._img_bufs.get(bucket)
        if img is None:
            s = self.crop_size
            img = self._img_bufs[bucket] = self._alloc((bucket, 2, s, s))
        np.copyto(img[:n], pairs, casting="unsafe")
        if rows > n:
            img[n:rows] = 0
        xyb: np.ndarray | None = None
        if xy is not None:
            xyb = self._xy_bufs.get(bucket)
            if xyb is None:
                xyb = self._xy_bufs[bucket] = self._alloc((bucket, 2))
            xyb[:n] = xy
            if rows > n:
                xyb[n:rows] = 0
            xyb = xyb[:rows]
        return img[:rows], xyb

    def _alloc(self, shape: tuple[int, ...]) -> np.ndarray:
        """A zeroed float32 host buffer (pinned memory in CUDA backends)."""
        return np.zeros(shape, np.float32)

    def _result(self, out: np.ndarray) -> InferResult:
        n = out.shape[0]
        cols = []
        for j in self._columns:
            if j < 0:
                cols.append(np.full(n, np.nan, np.float32))
            else:
                cols.append(np.ascontiguousarray(out[:, j]))
        return InferResult(*cols)
