"""Score localizations and tracks against a simulation's ground truth."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

__all__ = ["TruthScore", "in_field", "match_to_truth", "score_against_truth"]


@dataclass(frozen=True)
class TruthScore:
    """How well localizations and tracks recover the simulated truth.

    Attributes
    ----------
    n_truth, n_localizations, n_matched
        Emitters in the analyzed frames (within ``z_range_um`` when given),
        localizations, and one-to-one matches within ``max_dist_px``.
    recall, precision
        ``n_matched / n_truth`` and ``n_matched / n_localizations`` (only
        localizations near an in-range emitter or unmatched count).
    rmse_x_nm, rmse_y_nm, rmse_z_nm, rmse_3d_nm
        Root-mean-square errors of the matched localizations.
    bias_z_nm
        Mean Z error.
    n_links, link_accuracy
        Links between consecutive localizations of a track whose both ends are
        matched, and the fraction of them joining the same true emitter.
    n_isolated, recall_isolated
        Emitters counted in ``n_truth`` with no other emitter of the same frame
        within ``isolated_px`` (plane 0), and the fraction of them matched: the
        recall that crowding does not limit.
    """

    n_truth: int
    n_localizations: int
    n_matched: int
    recall: float
    precision: float
    rmse_x_nm: float
    rmse_y_nm: float
    rmse_z_nm: float
    rmse_3d_nm: float
    bias_z_nm: float
    n_links: int
    link_accuracy: float
    n_isolated: int = 0
    recall_isolated: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        """The score as a JSON-compatible dict."""
        return asdict(self)


def _key(t: np.ndarray) -> np.ndarray:
    # frames are joined on their exposure start time, to the microsecond
    return np.rint(np.asarray(t, dtype=float) * 1e6).astype(np.int64)


def match_to_truth(
    locs: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    max_dist_px: float = 2.0,
    on: str = "t_s",
) -> pd.DataFrame:
    """Match localizations to true emitters, one to one, frame by frame.

    Parameters
    ----------
    locs
        Localizations with ``x_px, y_px`` (plane 0), ``z_um`` and the join column.
    truth
        Truth rows (:data:`axialtrack.sim.TRUTH_DTYPE` as a DataFrame) with
        ``id, x_px0, y_px0, x_um, y_um, z_focus_um`` and the join column.
    max_dist_px
        Largest plane-0 distance of a match.
    on
        Column identifying a frame in both tables: ``"t_s"`` (exposure start,
        joined to the microsecond) or ``"frame"``.

    Returns
    -------
    pandas.DataFrame
        One row per match: the localization's index ``loc_index``, the emitter's
        ``truth_id`` and its position ``truth_row`` in ``truth``, and the errors
        ``dx_px, dy_px, dz_um`` (localization minus truth).
    """
    lk = _key(locs[on]) if on == "t_s" else locs[on].to_numpy(np.int64)
    tk = _key(truth[on]) if on == "t_s" else truth[on].to_numpy(np.int64)
    lxy = locs[["x_px", "y_px"]].to_numpy(float)
    txy = truth[["x_px0", "y_px0"]].to_numpy(float)
    lz = locs["z_um"].to_numpy(float)
    tz = truth["z_focus_um"].to_numpy(float)
    tid = truth["id"].to_numpy(np.int64)
    loc_index = locs.index.to_numpy()
    t_order = np.argsort(tk, kind="stable")
    t_keys, t_start = np.unique(tk[t_order], return_index=True)
    t_end = np.append(t_start[1:], len(t_order))
    out: list[tuple[Any, int, int, float, float, float]] = []
    for key in np.unique(lk):
        j = np.searchsorted(t_keys, key)
        if j >= len(t_keys) or t_keys[j] != key:
            continue
        ti = t_order[t_start[j] : t_end[j]]
        li = np.nonzero(lk == key)[0]
        tree = cKDTree(txy[ti])
        pairs = tree.query_ball_point(lxy[li], r=max_dist_px)
        rows, cols, cost = [], [], []
        for a, hits in enumerate(pairs):
            for b in hits:
                rows.append(a)
                cols.append(b)
                cost.append(float(np.sum((lxy[li[a]] - txy[ti[b]]) ** 2)))
        if not rows:
            continue
        big = 1e9
        m = np.full((len(li), len(ti)), big)
        m[rows, cols] = cost
        ra, cb = linear_sum_assignment(m)
        for a, b in zip(ra, cb, strict=True):
            if m[a, b] >= big:
                continue
            la, tb = li[a], ti[b]
            out.append(
                (
                    loc_index[la],
                    int(tid[tb]),
                    int(tb),
                    float(lxy[la, 0] - txy[tb, 0]),
                    float(lxy[la, 1] - txy[tb, 1]),
                    float(lz[la] - tz[tb]),
                )
            )
    return pd.DataFrame(
        out,
        columns=["loc_index", "truth_id", "truth_row", "dx_px", "dy_px", "dz_um"],
    ).astype({"truth_id": np.int64, "truth_row": np.int64})


def in_field(truth: pd.DataFrame, field_px: tuple[int, int, int]) -> np.ndarray:
    """Which truth rows lie at least ``margin`` px inside a ``height x width``
    plane in both planes (``field_px = (height, width, margin)``; columns
    ``x_px0, y_px0`` and, when present, ``x_px1, y_px1``)."""
    h, w, margin = field_px
    ok = np.ones(len(truth), dtype=bool)
    for xc, yc in (("x_px0", "y_px0"), ("x_px1", "y_px1")):
        if xc in truth and yc in truth:
            x = truth[xc].to_numpy(float)
            y = truth[yc].to_numpy(float)
            ok &= (x >= margin) & (x <= w - 1 - margin)
            ok &= (y >= margin) & (y <= h - 1 - margin)
    return ok


def score_against_truth(
    locs: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    pixel_size_um: float,
    max_dist_px: float = 2.0,
    z_range_um: tuple[float, float] | None = None,
    on: str = "t_s",
    field_px: tuple[int, int, int] | None = None,
    isolated_px: float = 8.0,
) -> TruthScore:
    """Recall, precision, XYZ errors and link accuracy against the truth.

    Parameters
    ----------
    locs
        The localization table (``x_px, y_px, z_um, track_id`` and ``on``).
    truth
        Truth rows of the frames that were analyzed.
    pixel_size_um
        Plane-0 pixel size (um), for the XY errors.
    max_dist_px
        Largest plane-0 distance of a match.
    z_range_um
        Only emitters whose in-focus stage Z lies in this range count (e.g. the
        model's trained range around the stage position); localizations matched
        to others are dropped.
    on
        Frame join column, see :func:`match_to_truth`.
    field_px
        ``(height, width, margin)``: only emitters at least ``margin`` pixels
        inside a ``height x width`` plane, in both planes (truth columns
        ``x_px0, y_px0`` and, when present, ``x_px1, y_px1``), count, as for
        ``z_range_um``. A localizer that reads fixed-size crops sees nothing
        within half a crop of the border; this scores the field it covers.
    isolated_px
        Distance (plane-0 pixels) within which another emitter of the same
        frame makes an emitter crowded, for ``recall_isolated``.
    """
    truth = truth.reset_index(drop=True)
    locs = locs.reset_index(drop=True)
    m = match_to_truth(locs, truth, max_dist_px=max_dist_px, on=on)
    n_locs = len(locs)
    counted = np.ones(len(truth), dtype=bool)
    if z_range_um is not None:
        lo, hi = z_range_um
        counted &= truth["z_focus_um"].between(lo, hi).to_numpy()
    if field_px is not None:
        counted &= in_field(truth, field_px)
    n_truth = int(counted.sum())
    if not counted.all():
        keep = counted[m["truth_row"].to_numpy()]
        n_locs -= int((~keep).sum())
        m = m[keep]
    n = len(m)
    # emitters with no other of the same frame within isolated_px
    isolated = np.zeros(len(truth), dtype=bool)
    tkey = _key(truth[on]) if on == "t_s" else truth[on].to_numpy(np.int64)
    txy = truth[["x_px0", "y_px0"]].to_numpy(float)
    for rows in pd.Series(np.arange(len(truth))).groupby(tkey).indices.values():
        if len(rows) == 1:
            isolated[rows] = True
            continue
        d, _ = cKDTree(txy[rows]).query(txy[rows], k=2)
        isolated[rows] = d[:, 1] > isolated_px
    isolated &= counted
    n_iso = int(isolated.sum())
    iso_hit = int(isolated[m["truth_row"].to_numpy()].sum()) if n else 0
    px_nm = pixel_size_um * 1000.0

    def rms(v: np.ndarray) -> float:
        return float(np.sqrt(np.mean(v**2))) if len(v) else float("nan")

    ex = m["dx_px"].to_numpy() * px_nm
    ey = m["dy_px"].to_numpy() * px_nm
    ez = m["dz_um"].to_numpy() * 1000.0
    # links: consecutive localizations of each track, both ends matched
    truth_of = pd.Series(m["truth_id"].to_numpy(), index=m["loc_index"].to_numpy())
    n_links = 0
    good = 0
    if "track_id" in locs and n:
        # the links the linker made (consecutive rows of a track, every row of
        # it, matched or not), then those whose two ends are both matched
        tr = locs.loc[locs["track_id"] >= 0, ["frame", "track_id"]]
        tr = tr.sort_values(["track_id", "frame"], kind="stable")
        tid = tr["track_id"].to_numpy()
        idx = tr.index.to_numpy()
        same_track = tid[1:] == tid[:-1]
        a, b = idx[:-1][same_track], idx[1:][same_track]
        both = np.isin(a, truth_of.index) & np.isin(b, truth_of.index)
        a, b = a[both], b[both]
        n_links = len(a)
        good = int((truth_of.loc[a].to_numpy() == truth_of.loc[b].to_numpy()).sum())
    return TruthScore(
        n_truth=n_truth,
        n_localizations=n_locs,
        n_matched=n,
        recall=n / n_truth if n_truth else float("nan"),
        precision=n / n_locs if n_locs else float("nan"),
        rmse_x_nm=rms(ex),
        rmse_y_nm=rms(ey),
        rmse_z_nm=rms(ez),
        rmse_3d_nm=rms(np.sqrt(ex**2 + ey**2 + ez**2)),
        bias_z_nm=float(np.mean(ez)) if n else float("nan"),
        n_links=n_links,
        link_accuracy=good / n_links if n_links else float("nan"),
        n_isolated=n_iso,
        recall_isolated=iso_hit / n_iso if n_iso else float("nan"),
    )
