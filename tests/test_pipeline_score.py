"""Scoring localizations and tracks against simulated truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from axialtrack.pipeline.score import match_to_truth, score_against_truth

PX = 0.1


def _truth(n_frames: int = 20, n: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(10, 190, (n, 2))
    z = rng.uniform(49, 51, n)
    rows = []
    for f in range(n_frames):
        xy = xy + rng.normal(0, 0.5, xy.shape)
        for i in range(n):
            rows.append((f, f * 0.01, i, xy[i, 0], xy[i, 1], z[i]))
    return pd.DataFrame(
        rows, columns=["frame", "t_s", "id", "x_px0", "y_px0", "z_focus_um"]
    )


def test_errors_recall_and_links_are_measured() -> None:
    truth = _truth()
    rng = np.random.default_rng(1)
    locs = pd.DataFrame(
        {
            "frame": truth["frame"],
            "t_s": truth["t_s"] + 1e-8,  # joined to the microsecond
            "x_px": truth["x_px0"] + rng.normal(0, 0.2, len(truth)),
            "y_px": truth["y_px0"] + rng.normal(0, 0.2, len(truth)),
            "z_um": truth["z_focus_um"] + 0.05 + rng.normal(0, 0.03, len(truth)),
            "track_id": truth["id"],
        }
    )
    # drop 10 % of the detections, add 5 false ones
    locs = locs.drop(index=locs.index[::10])
    fake = locs.iloc[:5].copy()
    fake["x_px"] += 50
    fake["y_px"] += 50
    fake["track_id"] = -1
    locs = pd.concat([locs, fake], ignore_index=True)
    # swap identities of two tracks from frame 10 on: one wrong link each
    sel = locs["frame"] >= 10
    a, b = locs["track_id"] == 3, locs["track_id"] == 4
    locs.loc[sel & a, "track_id"] = 4
    locs.loc[sel & b, "track_id"] = 3
    s = score_against_truth(locs, truth, pixel_size_um=PX)
    assert s.n_truth == len(truth)
    assert s.recall == pytest.approx(0.9, abs=0.01)
    assert s.precision == pytest.approx(s.n_matched / (s.n_matched + 5), abs=1e-9)
    assert s.rmse_x_nm == pytest.approx(20, rel=0.1)
    assert s.rmse_z_nm == pytest.approx(np.hypot(50, 30), rel=0.1)
    assert s.bias_z_nm == pytest.approx(50, abs=5)
    # exactly the two swapped links are wrong
    assert round(s.n_links * (1 - s.link_accuracy)) == 2


def test_z_range_and_frame_join() -> None:
    truth = _truth(n_frames=3)
    locs = truth.rename(
        columns={"x_px0": "x_px", "y_px0": "y_px", "z_focus_um": "z_um"}
    )
    locs["track_id"] = -1
    s = score_against_truth(locs, truth, pixel_size_um=PX, z_range_um=(49.0, 50.0))
    inside = truth["z_focus_um"].between(49.0, 50.0).sum()
    assert s.n_truth == inside == s.n_matched
    assert s.rmse_3d_nm == 0
    m = match_to_truth(locs, truth, on="frame")
    assert len(m) == len(truth)
    assert (
        m["truth_id"].to_numpy() == truth.loc[m["loc_index"], "id"].to_numpy()
    ).all()


def test_links_count_only_those_the_linker_made_with_both_ends_matched() -> None:
    from axialtrack.pipeline.score import score_against_truth

    # one emitter at (10, 10) px in frames 0..3
    truth = pd.DataFrame(
        {
            "frame": [0, 1, 2, 3],
            "t_s": [0.0, 0.01, 0.02, 0.03],
            "id": [1, 1, 1, 1],
            "x_px0": [10.0] * 4,
            "y_px0": [10.0] * 4,
            "z_focus_um": [0.0] * 4,
        }
    )
    # a track on the emitter, a false positive 40 px away in frame 1, back on it
    # in frames 2 and 3: the links 0->1 and 1->2 have an unmatched end, and
    # 0->2 is not a link the linker made; only 2->3 counts
    locs = pd.DataFrame(
        {
            "frame": [0, 1, 2, 3],
            "t_s": [0.0, 0.01, 0.02, 0.03],
            "x_px": [10.1, 50.0, 10.1, 10.1],
            "y_px": [10.0, 50.0, 10.0, 10.0],
            "z_um": [0.0] * 4,
            "track_id": [0, 0, 0, 0],
        }
    )
    s = score_against_truth(locs, truth, pixel_size_um=0.1)
    assert s.n_links == 1
    assert s.link_accuracy == 1.0
    # the middle emitter outside z_range: its links leave the score
    truth2 = truth.assign(z_focus_um=[0.0, 5.0, 0.0, 0.0])
    locs2 = locs.assign(x_px=[10.1] * 4, z_um=[0.0, 5.0, 0.0, 0.0])
    s2 = score_against_truth(locs2, truth2, pixel_size_um=0.1, z_range_um=(-1, 1))
    assert s2.n_links == 1  # 2->3 only


def test_field_and_isolated_recall() -> None:
    # three emitters in one frame: one near the border, two 5 px apart
    truth = pd.DataFrame(
        {
            "frame": [0, 0, 0, 0],
            "t_s": [0.0] * 4,
            "id": [0, 1, 2, 3],
            "x_px0": [3.0, 100.0, 105.0, 150.0],
            "y_px0": [100.0, 100.0, 100.0, 150.0],
            "x_px1": [3.0, 100.0, 105.0, 195.0],  # id 3 is off plane 1's field
            "y_px1": [100.0, 100.0, 100.0, 150.0],
            "z_focus_um": [50.0] * 4,
        }
    )
    # found: the one at the border (a lucky crop) and one of the pair
    locs = truth.loc[[0, 1]].rename(
        columns={"x_px0": "x_px", "y_px0": "y_px", "z_focus_um": "z_um"}
    )
    s = score_against_truth(locs, truth, pixel_size_um=PX)
    assert (s.n_truth, s.n_matched) == (4, 2)
    assert s.n_isolated == 2
    assert s.recall_isolated == 0.5
    # only the two emitters 7 px inside both 200 x 200 planes count, and the
    # localization of the emitter at the border no longer counts against precision
    s = score_against_truth(locs, truth, pixel_size_um=PX, field_px=(200, 200, 7))
    assert (s.n_truth, s.n_matched, s.n_localizations) == (2, 1, 1)
    assert s.recall == 0.5
    assert s.precision == 1.0
    assert s.n_isolated == 0  # the pair is 5 px apart
    assert np.isnan(s.recall_isolated)
    s = score_against_truth(
        locs, truth, pixel_size_um=PX, field_px=(200, 200, 7), isolated_px=4.0
    )
    assert s.n_isolated == 2
    assert s.recall_isolated == 0.5
