"""Particle detection in a dual-plane frame.

The detection image is plane 0, or plane 0 plus plane 1 moved onto it with the
registration (``source="sum"``: a particle in focus in either plane is found). It is
smoothed with a separable Gaussian, a smooth background map is subtracted, and the
local maxima above a threshold in photons are the detections.

Two code paths, both tested against each other (``docs/pipeline.md`` gives
their costs, ``benchmarks/bench_detect.py`` measures them):

- detection image and smoothing: with numba (:mod:`._kernels`) and a
  whole-pixel registration, one compiled call streams over the rows, building
  the detection image from the uint16 planes and smoothing it with the
  separable truncated Gaussian (a vertical pass over a ring of rows, then a
  horizontal pass over the edge-padded row; the GIL released). Otherwise the
  detection image is written straight into an edge-padded float32 buffer
  (bilinear resampling of plane 1 for a non-integer registration) and
  smoothed by two depthwise convolutions in a small onnxruntime graph (one
  thread, one session per shape), the padded image cut into 16 overlapping
  strips of rows, one per channel, so onnxruntime takes its vectorized
  blocked-channel path (docs/pipeline.md gives the timings of both paths);
- background: the sigma-clipped mean of each ``background_block_px`` block
  (sub-sampled by 2), both planes at once, order statistics in int32 for 16-bit
  counts; bilinear interpolation only at the peaks;
- maxima: the pixels above the threshold are tested against their whole
  ``(2 d + 1)`` square, left and right neighbours first (a compiled loop over
  the candidates; in numpy, three whole-image comparisons on the flat image,
  then the other neighbours one at a time, then the few survivors against the
  rest of the square), instead of a full-image maximum filter.

All of it gives the same detections as the straightforward numpy filters (the
smoothed values differ by float32 rounding, ~1e-5 ADU). Frame-sized scratch
arrays are reused per thread.

Pixel coordinates are ``(x, y)`` = (column, row), the first pixel's centre at
``(0, 0)``, as in :mod:`axialtrack.geometry`.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

from axialtrack.geometry import apply_affine

from . import _kernels
from .config import CameraCalibration, DetectionConfig

__all__ = [
    "Detections",
    "background_map",
    "detect",
    "detection_image",
    "sample_background",
    "smooth",
]


@dataclass(frozen=True)
class Detections:
    """Particles found in one frame, brightest first.

    Attributes
    ----------
    xy_px
        ``(N, 2)`` float64 peak pixels ``(x, y)`` in plane 0 (whole pixels).
    peak_photons
        ``(N,)`` matched-filter photon estimate of each peak in the detection image
        (see :attr:`DetectionConfig.threshold_photons`).
    background_photons
        ``(N,)`` plane-0 background at each peak, photons per pixel.
    background1_photons
        ``(N,)`` plane-1 background at the registered position of each peak,
        photons per pixel (NaN where not computed: ``source="plane0"``).
    """

    xy_px: np.ndarray
    peak_photons: np.ndarray
    background_photons: np.ndarray
    background1_photons: np.ndarray

    def __len__(self) -> int:
        return int(self.xy_px.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        """No detections."""
        return cls(np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros(0))

    def take(self, index: np.ndarray | slice) -> Detections:
        """The detections selected by ``index``."""
        return Detections(
            self.xy_px[index],
            self.peak_photons[index],
            self.background_photons[index],
            self.background1_photons[index],
        )


# ------------------------------------------------------------------ buffers
class _Buffers(threading.local):
    """Per-thread scratch arrays, reused across frames.

    Allocating frame-sized temporaries anew for every frame costs more than the
    arithmetic (fresh pages from the OS), so the filters write into these.
    """

    def __init__(self) -> None:
        self.arrays: dict[tuple[str, tuple[int, ...], str], np.ndarray] = {}
        self.bindings: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        key = (name, tuple(int(v) for v in shape), np.dtype(dtype).str)
        a = self.arrays.get(key)
        if a is None:
            if len(self.arrays) > 64:
                self.arrays.clear()
            a = np.empty(key[1], dtype=dtype)
            self.arrays[key] = a
        return a


_BUF = _Buffers()

# strips (channels) of the onnxruntime smoothing graph, see _ort_smoother
_STRIPS = 16


# ------------------------------------------------------------------ smoothing
@lru_cache(maxsize=16)
def _kernel(sigma_px: float) -> np.ndarray:
    """Half of a normalized Gaussian, taps ``0..r`` (``r = ceil(2.5 sigma)``)."""
    r = max(1, math.ceil(2.5 * sigma_px))
    k = np.exp(-(np.arange(r + 1, dtype=np.float64) ** 2) / (2.0 * sigma_px**2))
    k /= k[0] + 2.0 * k[1:].sum()
    return k.astype(np.float32)


def _strips(h: int) -> tuple[int, int]:
    """``(n, rows)``: the image is smoothed as ``n`` strips of ``rows`` rows."""
    n = max(1, min(_STRIPS, h))
    return n, -(-h // n)


@lru_cache(maxsize=8)
def _ort_smoother(kernel_key: bytes, strips: int, rows: int, width: int) -> Any:
    """onnxruntime session of the separable smoothing.

    The graph is two depthwise convolutions (``group = strips``) of a
    ``(1, strips, rows + 2 r, width + 2 r)`` float32 input, the edge-padded image
    cut into overlapping strips of rows, one strip per channel; its output
    ``(1, strips, rows, width)`` is the smoothed image, row-major. Depthwise
    convolutions take onnxruntime's vectorized path (blocked channels); one
    single-channel convolution would go through im2col and be slower than numpy.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    half = np.frombuffer(kernel_key, dtype=np.float32)
    r = half.size - 1
    k = np.concatenate([half[:0:-1], half])
    kv = np.tile(k.reshape(1, 1, -1, 1), (strips, 1, 1, 1))
    kh = np.tile(k.reshape(1, 1, 1, -1), (strips, 1, 1, 1))
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "kv"], ["m"], group=strips),
            helper.make_node("Conv", ["m", "kh"], ["y"], group=strips),
        ],
        "smooth",
        [
            helper.make_tensor_value_info(
                "x", TensorProto.FLOAT, [1, strips, rows + 2 * r, width + 2 * r]
            )
        ],
        [
            helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, [1, strips, rows, width]
            )
        ],
        initializer=[
            numpy_helper.from_array(kv, "kv"),
            numpy_helper.from_array(kh, "kh"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )


def _padded(h: int, w: int, r: int) -> np.ndarray:
    """Scratch image with ``r`` edge pixels around an ``(h, w)`` image.

    It has ``n rows + 2 r`` rows (see :func:`_strips`): the image goes in
    ``[r : r + h, r : r + w]``, then :func:`_fill_edges` replicates its edges.
    """
    n, rows = _strips(h)
    return _BUF.get("smooth_pad", (n * rows + 2 * r, w + 2 * r), np.float32)


def _fill_edges(pad: np.ndarray, h: int, w: int, r: int) -> None:
    """Replicate the edge pixels of the image in ``pad`` (see :func:`_padded`)."""
    pad[:r, r : r + w] = pad[r, r : r + w]
    pad[r + h :, r : r + w] = pad[r + h - 1, r : r + w]
    pad[:, :r] = pad[:, r : r + 1]
    pad[:, r + w :] = pad[:, r + w - 1 : r + w]


def _smooth_padded(
    pad: np.ndarray, h: int, w: int, k: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """Smooth the image held in ``pad`` (edges filled) into float32 ``out``."""
    r = k.shape[0] - 1
    n, rows = _strips(h)
    sess = _ort_smoother(k.tobytes(), n, rows, w)
    x = _BUF.get("smooth_x", (1, n, rows + 2 * r, w + 2 * r), np.float32)
    s0, s1 = pad.strides
    np.copyto(
        x[0],
        np.lib.stride_tricks.as_strided(
            pad, (n, rows + 2 * r, w + 2 * r), (rows * s0, s0, s1), writeable=False
        ),
    )
    direct = n * rows == h and out.dtype == np.float32 and out.flags.c_contiguous
    y = out if direct else _BUF.get("smooth_y", (n * rows, w), np.float32)
    # a binding is reused while the session and both buffers are the same
    key = (id(sess), x.ctypes.data, y.ctypes.data, y.shape)
    bound = _BUF.bindings.get(key)
    if bound is None:
        io = sess.io_binding()
        io.bind_cpu_input("x", x)
        io.bind_output("y", "cpu", 0, np.float32, (1, n, rows, w), y.ctypes.data)
        bound = (io, sess, x, y)  # keeps what the key names alive
        if any(y is a for a in _BUF.arrays.values()):  # not a caller's array
            if len(_BUF.bindings) > 8:
                _BUF.bindings.clear()
            _BUF.bindings[key] = bound
    sess.run_with_iobinding(bound[0])
    if not direct:
        out[...] = y[:h]
    return out


def _smooth_into(img: np.ndarray, k: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Separable smoothing of float32 ``img`` into ``out`` (edges replicated)."""
    r = k.shape[0] - 1
    h, w = img.shape
    pad = _padded(h, w, r)
    pad[r : r + h, r : r + w] = img
    _fill_edges(pad, h, w, r)
    return _smooth_padded(pad, h, w, k, out)


def smooth(
    image: np.ndarray, sigma_px: float, out: np.ndarray | None = None
) -> np.ndarray:
    """Gaussian smoothing (truncated at 2.5 sigma, edges replicated), float32.

    Parameters
    ----------
    image
        2-D image.
    sigma_px
        Gaussian sigma (px).
    out
        Optional float32 output array of the image's shape.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D; got shape {img.shape}")
    if out is None:
        out = np.empty(img.shape, dtype=np.float32)
    return _smooth_into(img, _kernel(float(sigma_px)), out)


# ----------------------------------------------------------------- background
def _block_view(images: np.ndarray, block: int, dtype: Any) -> np.ndarray:
    """Pixels of each block, ``(K, nby, nbx, n)`` ``dtype`` of a ``(K, H, W)`` stack.

    Every 2nd pixel (every ``block // 8``-th) for blocks >= 8.
    """
    k, h, w = images.shape
    nby, nbx = max(1, -(-h // block)), max(1, -(-w // block))
    ph, pw = nby * block - h, nbx * block - w
    img = images
    if ph or pw:
        img = np.pad(images, ((0, 0), (0, ph), (0, pw)), mode="symmetric")
    step = max(1, block // 8)  # at most 8 x 8 = 64 samples per block
    v = img.reshape(k, nby, block, nbx, block)[:, :, ::step, :, ::step]
    return v.transpose(0, 1, 3, 2, 4).reshape(k, nby, nbx, -1).astype(dtype)


def _background_maps(images: np.ndarray, block_px: int) -> np.ndarray:
    """:func:`background_map` of each image of a ``(K, H, W)`` stack at once."""
    images = np.asarray(images)
    if images.dtype.kind in "ui" and images.dtype.itemsize <= 2:
        # 16-bit counts: the same order statistics in int32 (exact, and
        # np.partition is faster on int32 than on float32 or 16-bit integers)
        v = _block_view(images, int(block_px), np.int32)
    else:
        v = _block_view(images, int(block_px), np.float32)
    n = v.shape[-1]
    med = np.partition(v, n // 2, axis=-1)[..., n // 2 : n // 2 + 1]
    dev = np.abs(v - med)
    mad = np.partition(dev, n // 2, axis=-1)[..., n // 2 : n // 2 + 1]
    clip = 3.0 * 1.4826 * mad.astype(np.float32) + np.float32(1e-6)
    if v.dtype.kind != "i":
        keep = dev <= clip
        total = np.where(keep, v, 0).sum(-1)
        return (total / np.maximum(keep.sum(-1), 1)).astype(np.float32)
    # whole counts: the same test against the floor of the clip, and sums of at
    # most 64 16-bit values, exact in float32 in any order (matrix-vector products)
    # (at least 1: a MAD that rounds to 0, for coarsely quantized counts, would
    # keep only the median's value, the bias the mean is there to avoid)
    keep = dev <= np.maximum(np.floor(clip), 1).astype(v.dtype)
    kf = keep.astype(np.float32)
    ones = np.ones(n, dtype=np.float32)
    total = (v.astype(np.float32) * kf) @ ones
    count = kf @ ones
    return (total.astype(np.float64) / np.maximum(count, 1)).astype(np.float32)


def background_map(image: np.ndarray, block_px: int) -> np.ndarray:
    """Background on a grid of ``block_px`` blocks: sigma-clipped block means.

    Each block's pixels (sub-sampled to at most 8 x 8 per block) are clipped
    at 3 robust standard deviations about their median, so particles
    hardly bias the estimate (and, unlike a median of integer counts, the mean is
    not biased by the quantization). Returns ``(ceil(H / block), ceil(W / block))``
    float32; block ``(i, j)`` is centred on pixel
    ``((j + 0.5) block - 0.5, (i + 0.5) block - 0.5)``.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D; got shape {image.shape}")
    return _background_maps(image[None], block_px)[0]


@lru_cache(maxsize=32)
def _block_centres(n: int, block: int) -> np.ndarray:
    """Where each block's value of :func:`background_map` lies along an axis of
    ``n`` px: the mean position of the pixels it samples (every ``block // 8``-th
    from the block's start, the partial last block padded symmetrically as in
    :func:`_block_view`, so its pixels lie inside the image)."""
    nb = max(1, -(-n // block))
    step = max(1, block // 8)
    pos = np.arange(nb * block).reshape(nb, block)[:, ::step]
    real = np.where(pos < n, pos, 2 * n - 1 - pos)  # numpy's "symmetric"
    return np.clip(real, 0, n - 1).mean(axis=1)


def _bilinear_weights(
    xy_px: np.ndarray,
    shape: tuple[int, ...],
    block_px: int,
    image_shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, ...]:
    """Flat grid indices and weights of points ``(N, 2)`` for :func:`_sample`.

    With the ``(H, W)`` of the image the grid was made from, each block's
    value sits where its samples lie (:func:`_block_centres`: near the bottom
    and right edges of an image that is not a whole number of blocks, and
    1.5 px before the nominal centre of 32 px blocks, this matters for a
    background gradient); without, on the nominal block centres.
    """
    xy = np.asarray(xy_px, dtype=float).reshape(-1, 2)
    nb = np.array([shape[1], shape[0]])
    if image_shape is not None:
        h, w = image_shape
        cx, cy = _block_centres(int(w), block_px), _block_centres(int(h), block_px)
        pos = np.stack(
            [
                np.interp(xy[:, 0], cx, np.arange(len(cx), dtype=float)),
                np.interp(xy[:, 1], cy, np.arange(len(cy), dtype=float)),
            ],
            axis=1,
        )
    else:
        pos = (xy + 0.5) / block_px - 0.5
    pos = np.minimum(np.maximum(pos, 0.0), nb - 1.0)
    i0 = np.minimum(np.floor(pos).astype(np.int64), np.maximum(nb - 2, 0))
    i1 = np.minimum(i0 + 1, nb - 1)
    f = pos - i0
    nbx = int(shape[1])
    r0, r1 = i0[:, 1] * nbx, i1[:, 1] * nbx
    fc, fr = f[:, 0], f[:, 1]
    return r0 + i0[:, 0], r0 + i1[:, 0], r1 + i0[:, 0], r1 + i1[:, 0], fc, fr


def _sample(grid: np.ndarray, weights: tuple[np.ndarray, ...]) -> np.ndarray:
    """Bilinear interpolation of ``grid`` with :func:`_bilinear_weights`."""
    g = np.asarray(grid, dtype=float).ravel()
    i00, i01, i10, i11, fc, fr = weights
    return (g[i00] * (1 - fc) + g[i01] * fc) * (1 - fr) + (
        g[i10] * (1 - fc) + g[i11] * fc
    ) * fr


def sample_background(
    grid: np.ndarray,
    xy_px: np.ndarray,
    block_px: int,
    image_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Bilinear value of a :func:`background_map` grid at points ``(N, 2)``;
    give the image's ``(H, W)`` to place the blocks where their samples lie
    (see :func:`_bilinear_weights`)."""
    g = np.asarray(grid, dtype=float)
    return _sample(g, _bilinear_weights(xy_px, g.shape, block_px, image_shape))


# ---------------------------------------------------------- detection image
@lru_cache(maxsize=8)
def _warp_coords(affine_key: bytes, shape: tuple[int, int]) -> np.ndarray:
    affine = np.frombuffer(affine_key, dtype=np.float64).reshape(2, 3)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = affine.astype(np.float32)
    x1 = a[0, 0] * xx + a[0, 1] * yy + a[0, 2]
    y1 = a[1, 0] * xx + a[1, 1] * yy + a[1, 2]
    return np.stack([y1, x1])


def _integer_shift(
    affine: np.ndarray, shape: tuple[int, int], tol: float
) -> tuple[int, int] | None:
    """Whole-pixel shift ``(sx, sy)`` close to the affine everywhere, if any."""
    key = np.ascontiguousarray(affine, dtype=np.float64).tobytes()
    return _integer_shift_cached(key, (int(shape[0]), int(shape[1])), float(tol))


@lru_cache(maxsize=16)
def _integer_shift_cached(
    affine_key: bytes, shape: tuple[int, int], tol: float
) -> tuple[int, int] | None:
    affine = np.frombuffer(affine_key, dtype=np.float64).reshape(2, 3)
    h, w = shape
    corners = np.array(
        [[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1], [(w - 1) / 2, (h - 1) / 2]],
        dtype=float,
    )
    d = apply_affine(affine, corners) - corners
    s = np.rint(d[-1])
    if np.max(np.hypot(*(d - s).T)) <= tol:
        return int(s[0]), int(s[1])
    return None


def detection_image(
    planes: np.ndarray,
    config: DetectionConfig,
    affine: np.ndarray | None = None,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The image particles are detected in (float32, plane-0 pixel grid).

    ``source="plane0"``: plane 0. ``source="sum"``: plane 0 plus plane 1 sampled at
    the registered positions ``affine @ (x, y, 1)`` (a whole-pixel shift when that
    is within ``max_sum_misregistration_px`` of the affine everywhere; otherwise
    bilinear resampling). Where the mapped position falls outside plane 1,
    plane 0 stands in for it.
    """
    p0 = np.asarray(planes[0])
    h, w = p0.shape
    if out is None:
        out = np.empty((h, w), dtype=np.float32)
    if config.source == "plane0":
        np.copyto(out, p0, casting="unsafe")
        return out
    p1 = np.asarray(planes[1])
    a = np.eye(2, 3) if affine is None else np.asarray(affine, dtype=float)
    shift = _integer_shift(a, (h, w), config.max_sum_misregistration_px)
    if shift is not None:
        sx, sy = shift
        ys, ye = max(0, -sy), min(h, h - sy)
        xs, xe = max(0, -sx), min(w, w - sx)
        if ys >= ye or xs >= xe:
            np.add(p0, p0, out=out, dtype=np.float32)
            return out
        if (ys, ye, xs, xe) != (0, h, 0, w):
            np.add(p0, p0, out=out, dtype=np.float32)
        np.add(
            p0[ys:ye, xs:xe],
            p1[ys + sy : ye + sy, xs + sx : xe + sx],
            out=out[ys:ye, xs:xe],
            dtype=np.float32,
        )
        return out
    coords = _warp_coords(np.ascontiguousarray(a, dtype=np.float64).tobytes(), (h, w))
    warped = ndimage.map_coordinates(
        p1.astype(np.float32), coords, order=1, mode="constant", cval=np.nan
    )
    bad = ~np.isfinite(warped)
    warped[bad] = p0[bad]
    np.add(p0, warped, out=out, dtype=np.float32)
    return out


# -------------------------------------------------------------------- maxima
@lru_cache(maxsize=16)
def _offsets(radius: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """``(dy, dx)`` of the 8 neighbours, then of the rest of the square."""
    dy, dx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    dy, dx = dy.ravel(), dx.ravel()
    ring = np.maximum(np.abs(dy), np.abs(dx))
    return tuple((dy[sel], dx[sel]) for sel in (ring == 1, ring > 1))


def _local_maxima(
    image: np.ndarray, rows: np.ndarray, cols: np.ndarray, radius: int
) -> np.ndarray:
    """Which candidate pixels are the maximum of their ``(2 r + 1)`` square.

    Of equal pixels the first in raster order wins; the square is clipped at the
    image border.
    """
    h, w = image.shape
    r = int(radius)
    out = np.zeros(rows.size, dtype=bool)
    if rows.size == 0:
        return out
    inner = (rows >= r) & (cols >= r) & (rows < h - r) & (cols < w - r)
    if inner.all():
        out[_maxima_inner(image, rows, cols, r)] = True
        return out
    ii = np.flatnonzero(inner)
    if ii.size:
        out[ii[_maxima_inner(image, rows[ii], cols[ii], r)]] = True
    bb = np.flatnonzero(~inner)
    out[bb] = _maxima_clipped(image, rows[bb], cols[bb], r)
    return out


def _maxima_inner(
    image: np.ndarray, rows: np.ndarray, cols: np.ndarray, r: int
) -> np.ndarray:
    """Indices of the candidates that are maxima, windows inside the image.

    Linear offsets into the flat image. The 8 neighbours are tested one at a time,
    each test dropping the candidates it beats (most fail the first ones), the few
    survivors against the rest of the square at once.
    """
    w = image.shape[1]
    flat = image.ravel()
    lin = rows * w + cols
    val = flat[lin]
    keep = np.arange(rows.size)
    for off in (1, -1, w, -w, w + 1, w - 1, 1 - w, -1 - w):
        nb = flat[lin + off]
        # beaten by a larger neighbour, or an equal one earlier in raster order
        ok = np.less(nb, val) if off < 0 else np.less_equal(nb, val)
        keep, lin, val = keep[ok], lin[ok], val[ok]
        if keep.size == 0:
            return keep
    dy, dx = _offsets(r)[1]
    if dy.size:
        off = dy * w + dx
        nb = flat[lin[:, None] + off]
        beaten = (nb > val[:, None]) | ((nb == val[:, None]) & (off < 0))
        keep = keep[~beaten.any(axis=1)]
    return keep


def _maxima_clipped(
    image: np.ndarray, rows: np.ndarray, cols: np.ndarray, r: int
) -> np.ndarray:
    """:func:`_local_maxima` of candidates near the border (windows clipped)."""
    h, w = image.shape
    keep_idx = np.arange(rows.size)
    val = image[rows, cols]
    lin = rows * w + cols
    for dy, dx in _offsets(r):
        if dy.size == 0 or keep_idx.size == 0:
            continue
        r_, c_, v_, l_ = rows[keep_idx], cols[keep_idx], val[keep_idx], lin[keep_idx]
        nr = np.clip(r_[:, None] + dy, 0, h - 1)
        nc = np.clip(c_[:, None] + dx, 0, w - 1)
        nb = image[nr, nc]
        nlin = nr * w + nc
        beaten = (nb > v_[:, None]) | ((nb == v_[:, None]) & (nlin < l_[:, None]))
        keep_idx = keep_idx[~beaten.any(axis=1)]
    out = np.zeros(rows.size, dtype=bool)
    out[keep_idx] = True
    return out


def _candidates(
    sm: np.ndarray, floor: np.float32, m: int, radius: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns (raster order) of the local maxima of ``sm`` above
    ``floor``, ``m`` px or more from the border (numpy; see
    :func:`axialtrack.pipeline._kernels.local_maxima`)."""
    h, w = sm.shape
    empty = np.zeros(0, np.int64)
    band = sm[m : h - m] if m > 0 else sm
    mask = _BUF.get("mask", band.shape, bool)
    np.greater(band, floor, out=mask)
    if w > 1:
        # ties: the first in raster order wins. On the flat rows (contiguous, far
        # faster than 2-D slices); the first and last columns, wrongly compared
        # with the neighbouring rows there, are then redone.
        flat, fmask = band.ravel(), mask.ravel()
        tmp = _BUF.get("mask_tmp", (flat.size - 1,), bool)
        np.greater_equal(flat[:-1], flat[1:], out=tmp)
        np.logical_and(fmask[:-1], tmp, out=fmask[:-1])
        np.greater(flat[1:], flat[:-1], out=tmp)
        np.logical_and(fmask[1:], tmp, out=fmask[1:])
        mask[:, 0] = (band[:, 0] > floor) & (band[:, 0] >= band[:, 1])
        mask[:, -1] = (band[:, -1] > floor) & (band[:, -1] > band[:, -2])
    if m > 0:
        mask[:, :m] = False
        mask[:, w - m :] = False
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return empty, empty
    rows, cols = np.divmod(idx, w)
    if m > 0:
        rows += m
    # maxima of the smoothed image (the smooth background does not move them)
    is_max = _local_maxima(sm, rows, cols, radius)
    return rows[is_max], cols[is_max]


# --------------------------------------------------------------------- detect
def detect(
    planes: np.ndarray,
    config: DetectionConfig | None = None,
    camera: CameraCalibration | None = None,
    affine: np.ndarray | None = None,
    *,
    margin_px: int = 0,
) -> Detections:
    """Find particles in one dual-plane frame.

    Parameters
    ----------
    planes
        ``(2, H, W)`` raw counts (any dtype), plane 0 first.
    config
        Detection settings (default :class:`DetectionConfig`).
    camera
        ADU to photons (default :class:`CameraCalibration`).
    affine
        Plane-0 -> plane-1 affine ``(2, 3)`` for ``source="sum"`` (``None``: the
        planes are aligned).
    margin_px
        Drop peaks closer than this to the plane-0 border.

    Returns
    -------
    Detections
        Peak pixels in plane 0, brightest first.
    """
    config = config or DetectionConfig()
    camera = camera or CameraCalibration()
    planes = np.asarray(planes)
    if planes.ndim != 3 or planes.shape[0] != 2:
        raise ValueError(f"planes must have shape (2, H, W); got {planes.shape}")
    h, w = planes.shape[1:]
    block = int(config.background_block_px)
    k = _kernel(float(config.sigma_px))
    r = k.shape[0] - 1
    sm = _BUF.get("sm", (h, w), np.float32)
    # the compiled kernel builds and smooths the detection image in one call
    # (whole-pixel registration); otherwise the detection image goes straight
    # into the edge-padded input of the onnxruntime (or numpy) smoothing
    compiled = False
    if config.source == "plane0":
        shift: tuple[int, int] | None = (0, 0)
    else:
        a = np.eye(2, 3) if affine is None else np.asarray(affine, dtype=float)
        shift = _integer_shift(a, (h, w), config.max_sum_misregistration_px)
    if shift is not None:
        compiled = _kernels.smooth_detection(
            planes[0],
            None if config.source == "plane0" else planes[1],
            shift,
            k,
            sm,
        )
    if not compiled:
        pad = _padded(h, w, r)
        detection_image(planes, config, affine, out=pad[r : r + h, r : r + w])
        _fill_edges(pad, h, w, r)
    # background of each plane; that of the sum is their sum (the registration
    # moves plane 1 by far less than a block)
    if config.source == "plane0":
        grid0, grid1 = background_map(planes[0], block), None
        grid = grid0
    else:
        grid0, grid1 = _background_maps(planes, block)
        grid = grid0 + grid1
    if not compiled:
        sm = _smooth_padded(pad, h, w, k, sm)
    # matched-filter photons = 4 pi sigma^2 * smoothed ADU above background * ph/ADU
    to_photons = 4.0 * math.pi * config.sigma_px**2 * camera.photons_per_adu
    thr = config.threshold_photons / to_photons
    if config.threshold_sigma is not None:
        yy, xx = np.mgrid[0:h:3, 0:w:3]
        sub = sm[0:h:3, 0:w:3].ravel() - sample_background(
            grid, np.stack([xx.ravel(), yy.ravel()], 1), block, (h, w)
        )
        noise = 1.4826 * float(np.median(np.abs(sub - np.median(sub))))
        thr = max(thr, config.threshold_sigma * noise)
    # maxima of the smoothed image above the threshold over the lowest
    # background (compiled, or numpy in _candidates), then the exact threshold
    # above the local background
    m = int(margin_px)
    if h - 2 * m <= 0 or w - 2 * m <= 0:
        return Detections.empty()
    floor = np.float32(thr + float(grid.min()))
    lin = _kernels.local_maxima(sm, float(floor), m, int(config.min_distance_px))
    if lin is not None:
        rows, cols = np.divmod(lin, w)
    else:
        rows, cols = _candidates(sm, floor, m, int(config.min_distance_px))
    if rows.size == 0:
        return Detections.empty()
    xy = np.stack([cols, rows], axis=1).astype(float)
    wts = _bilinear_weights(xy, grid.shape, block, (h, w))
    peak = sm[rows, cols] - _sample(grid, wts)
    above = np.flatnonzero(peak > thr)
    if above.size == 0:
        return Detections.empty()
    peak = peak[above] * to_photons
    brightest = np.argsort(-peak, kind="stable")
    order, peak = above[brightest], peak[brightest]
    xy = xy[order]
    wts = tuple(a[order] for a in wts)
    bg0 = camera.photons(_sample(grid0, wts))
    if grid1 is None:
        bg1 = np.full(len(xy), np.nan)
    else:
        xy1 = xy if affine is None else apply_affine(np.asarray(affine, float), xy)
        if xy1 is not xy and not np.array_equal(xy1, xy):
            wts = _bilinear_weights(xy1, grid1.shape, block, (h, w))
        bg1 = camera.photons(_sample(grid1, wts))
    return Detections(
        xy_px=xy, peak_photons=peak, background_photons=bg0, background1_photons=bg1
    )
