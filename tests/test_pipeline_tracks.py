"""Online 3D linking, diffusion estimates, per-track summary, napari and GEFF export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from axialtrack.pipeline import (
    SUMMARY_COLUMNS,
    estimate_diffusion,
    estimate_diffusion_population,
    read_geff,
    summarize_tracks,
    to_napari_tracks,
    write_geff,
)
from axialtrack.pipeline import link as link_mod
from axialtrack.pipeline.link import (
    LinkConfig,
    OnlineLinker,
    PositionLinker,
    drop_short_tracks,
    link_table,
)
from axialtrack.sim.brownian import brownian_localizations as simulate

DT = 0.01


def link_precision(df: pd.DataFrame) -> tuple[float, int]:
    """Fraction of links (consecutive rows of a track) joining the same particle."""
    d = df[df["track_id"] >= 0].sort_values(["track_id", "frame"])
    tid, tr = d["track_id"].to_numpy(), d["true_id"].to_numpy()
    same = tid[1:] == tid[:-1]
    return float((tr[1:] == tr[:-1])[same].mean()), int(same.sum())


def link_recall(df: pd.DataFrame, memory: int) -> float:
    """Fraction of true links (same particle, <= memory + 1 frames apart) made."""
    t = df.sort_values(["true_id", "frame"])
    ti, tf, tk = (t[c].to_numpy() for c in ("true_id", "frame", "track_id"))
    ok = (ti[1:] == ti[:-1]) & (tf[1:] - tf[:-1] <= memory + 1)
    made = (tk[1:] == tk[:-1]) & (tk[1:] >= 0)
    return float(made[ok].mean())


@pytest.fixture(scope="module")
def sim_linked() -> pd.DataFrame:
    return link_table(simulate(seed=1), LinkConfig(search_range_um=1.0, memory=3))


# ------------------------------------------------------------------ linking


def test_link_accuracy_on_simulated_diffusion(sim_linked: pd.DataFrame) -> None:
    precision, n_links = link_precision(sim_linked)
    assert n_links > 0.95 * 100 * 299
    assert precision >= 0.95
    assert precision >= 0.995  # what we measure: 99.9+ %
    assert link_recall(sim_linked, memory=3) >= 0.995
    n_true = sim_linked["true_id"].nunique()
    assert abs(sim_linked["track_id"].nunique() - n_true) <= 0.05 * n_true
    assert sim_linked["track_id"].dtype == np.int64
    assert (sim_linked["track_id"] >= 0).all()


def test_online_push_equals_link_table(sim_linked: pd.DataFrame) -> None:
    df = sim_linked.drop(columns="track_id")
    linker = OnlineLinker(LinkConfig(search_range_um=1.0, memory=3))
    ids = []
    for frame, g in df.groupby("frame", sort=True):
        out = linker.push(int(frame), g[["x_um", "y_um", "z_um"]].to_numpy())
        assert out.dtype == np.int64
        assert out.shape == (len(g),)
        ids.append(pd.Series(out, index=g.index))
    online = pd.concat(ids).sort_index()
    np.testing.assert_array_equal(online.to_numpy(), sim_linked["track_id"])
    assert linker.n_tracks == sim_linked["track_id"].max() + 1


def test_push_table_keeps_row_order_and_index() -> None:
    df = simulate(20, 30, seed=3)
    shuffled = df.sample(frac=1.0, random_state=0)
    shuffled.index = shuffled.index + 1000
    out = OnlineLinker().push_table(shuffled)
    assert list(out.index) == list(shuffled.index)
    assert "track_id" not in shuffled.columns or (shuffled["track_id"] == -1).all()
    ref = link_table(df)
    # rows of one frame in another order: new tracks are numbered in row order,
    # but the tracks (the partition of the rows) are the same
    a = out.sort_index()["track_id"].to_numpy()
    b = ref["track_id"].to_numpy()
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)
    assert len(pairs) == len(np.unique(a)) == len(np.unique(b))
    # the next chunk continues the same tracks
    linker = OnlineLinker()
    a = linker.push_table(df[df["frame"] < 15])
    b = linker.push_table(df[df["frame"] >= 15])
    np.testing.assert_array_equal(
        pd.concat([a, b])["track_id"].to_numpy(), ref["track_id"].to_numpy()
    )


def test_gap_closing_reconnects_across_missed_frames() -> None:
    a = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    step = np.array([0.1, 0.0, 0.05])
    linker = OnlineLinker(LinkConfig(search_range_um=1.0, memory=2))
    np.testing.assert_array_equal(linker.push(0, a), [0, 1])
    # particle 1 missed in frame 1, back in frame 2
    np.testing.assert_array_equal(linker.push(1, a[:1] + step), [0])
    np.testing.assert_array_equal(linker.push(2, a[::-1] + 2 * step), [1, 0])
    # frame numbers count: frames 3..5 skipped entirely is a gap of 3 > memory 2
    np.testing.assert_array_equal(linker.push(6, a + 3 * step), [2, 3])
    assert linker.n_tracks == 4

    no_memory = OnlineLinker(LinkConfig(search_range_um=1.0, memory=0))
    no_memory.push(0, a)
    no_memory.push(1, a[:1] + step)
    np.testing.assert_array_equal(no_memory.push(2, a + 2 * step), [0, 2])


def test_skipped_frames_do_not_count_against_memory() -> None:
    a = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    step = np.array([0.1, 0.0, 0.05])
    linker = OnlineLinker(LinkConfig(search_range_um=1.0, memory=1))
    linker.push(0, a)
    # frames 1-4 skipped by the runner: the tracks go on
    np.testing.assert_array_equal(linker.push(5, a + step, skipped=4), [0, 1])
    # particle 1 missed in frame 6 (analyzed), skipped 7, back in 8: a gap of one
    linker.push(6, a[:1] + 2 * step)
    np.testing.assert_array_equal(linker.push(8, a + 3 * step, skipped=1), [0, 1])
    # without the skip declaration the same gap is two frames > memory 1
    plain = OnlineLinker(LinkConfig(search_range_um=1.0, memory=1))
    plain.push(0, a)
    np.testing.assert_array_equal(plain.push(5, a + step), [2, 3])
    with pytest.raises(ValueError, match="skipped=5"):
        linker.push(10, a, skipped=5)


def test_push_rows_with_analyzed_frames() -> None:
    """Batches with skipped frames between them: every analyzed frame counts."""
    df = simulate(seed=4)
    frames = np.sort(df["frame"].unique())
    # the runner analyzed frames in batches of 4 and skipped 6 after each
    analyzed = frames[(frames % 10) < 4]
    sub = df[df["frame"].isin(analyzed)].reset_index(drop=True)
    xyz = sub[["x_um", "y_um", "z_um"]].to_numpy()
    cfg = LinkConfig(search_range_um=1.5, memory=1)
    aware, naive = OnlineLinker(cfg), OnlineLinker(cfg)
    ids_aware = np.empty(len(sub), np.int64)
    ids_naive = np.empty(len(sub), np.int64)
    for start in range(0, len(analyzed), 4):
        batch = analyzed[start : start + 4]
        rows = np.flatnonzero(sub["frame"].isin(batch).to_numpy())
        f = sub["frame"].to_numpy()[rows]
        ids_aware[rows] = aware.push_rows(f, xyz[rows], analyzed=batch)
        ids_naive[rows] = naive.push_rows(f, xyz[rows])
    sub_a = sub.assign(track_id=ids_aware)
    sub_n = sub.assign(track_id=ids_naive)
    # the skip-aware linker keeps one id per particle across the skipped frames
    per_particle_a = sub_a.groupby("true_id")["track_id"].nunique().median()
    per_particle_n = sub_n.groupby("true_id")["track_id"].nunique().median()
    assert per_particle_a <= 2
    assert per_particle_n >= 5 * per_particle_a
    assert link_precision(sub_a)[0] >= 0.97
    with pytest.raises(ValueError, match="not in `analyzed`"):
        OnlineLinker(cfg).push_rows(np.array([3]), np.zeros((1, 3)), analyzed=[4])


def test_gap_closing_on_simulated_data(sim_linked: pd.DataFrame) -> None:
    # true particles with a missed detection keep one id across the gap
    t = sim_linked.sort_values(["true_id", "frame"])
    ti, tf, tk = (t[c].to_numpy() for c in ("true_id", "frame", "track_id"))
    gap = (ti[1:] == ti[:-1]) & (tf[1:] - tf[:-1] == 2)
    assert gap.sum() > 100
    assert (tk[1:] == tk[:-1])[gap].mean() >= 0.99


def test_empty_frames_and_stable_ids() -> None:
    linker = OnlineLinker(LinkConfig(memory=1))
    empty = linker.push(0, np.empty((0, 3)))
    assert empty.shape == (0,)
    assert empty.dtype == np.int64
    assert linker.n_tracks == 0
    pts = np.array([[1.0, 1.0, 0.0], [5.0, 5.0, 1.0], [9.0, 1.0, 0.5]])
    np.testing.assert_array_equal(linker.push(1, pts), [0, 1, 2])
    assert linker.push(2, np.empty((0, 3))).shape == (0,)
    # permuted order, same particles: ids follow the particles
    np.testing.assert_array_equal(linker.push(3, pts[[2, 0, 1]] + 0.05), [2, 0, 1])
    assert linker.push(4, []).shape == (0,)
    assert linker.push(5, np.empty((0, 3))).shape == (0,)
    # two empty frames > memory 1: tracks closed, new ids
    np.testing.assert_array_equal(linker.push(6, pts), [3, 4, 5])
    assert linker.n_tracks == 6
    assert linker.last_frame == 6
    with pytest.raises(ValueError, match="increasing"):
        linker.push(6, pts)
    with pytest.raises(ValueError, match="shape"):
        linker.push(7, np.zeros((2, 2)))


def test_global_assignment_beats_greedy() -> None:
    # greedy would give B the localization at 0.6 and leave A unlinked
    linker = OnlineLinker(LinkConfig(search_range_um=1.0, memory=0))
    linker.push(0, np.array([[0.0, 0, 0], [1.0, 0, 0]]))
    ids = linker.push(1, np.array([[0.6, 0, 0], [1.5, 0, 0]]))
    np.testing.assert_array_equal(ids, [0, 1])


def test_non_finite_rows_are_not_linked() -> None:
    linker = OnlineLinker()
    ids = linker.push(0, np.array([[0.0, 0, 0], [np.nan, 1, 1], [3.0, 3, 3]]))
    np.testing.assert_array_equal(ids, [0, -1, 1])
    ids = linker.push(1, np.array([[3.1, 3, 3], [0.1, np.inf, 0]]))
    np.testing.assert_array_equal(ids, [1, -1])


def test_z_scale_shrinks_axial_distances() -> None:
    a = np.array([[0.0, 0.0, 0.0]])
    b = np.array([[0.2, 0.0, 2.0]])
    iso = OnlineLinker(LinkConfig(search_range_um=1.0))
    iso.push(0, a)
    assert iso.push(1, b)[0] == 1
    aniso = OnlineLinker(LinkConfig(search_range_um=1.0, z_scale=3.0))
    aniso.push(0, a)
    assert aniso.push(1, b)[0] == 0


def test_kdtree_candidates_match_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    df = simulate(250, 20, box_um=(20.0, 20.0, 3.0), seed=5)  # 250 x 250 > limit
    assert link_mod._BRUTE_FORCE_PAIRS < 250 * 250
    tree = link_table(df)
    monkeypatch.setattr(link_mod, "_BRUTE_FORCE_PAIRS", 10**9)
    brute = link_table(df)
    np.testing.assert_array_equal(tree["track_id"], brute["track_id"])
    assert link_precision(tree)[0] >= 0.99


def test_min_track_length_and_drop_short() -> None:
    df = simulate(30, 60, seed=2, mean_life=20.0)
    full = link_table(df)
    cut = link_table(df, LinkConfig(min_track_length=10))
    counts = full.groupby("track_id").size()
    short = counts.index[counts < 10]
    assert len(short) > 0
    assert (cut.loc[full["track_id"].isin(short), "track_id"] == -1).all()
    kept = ~full["track_id"].isin(short)
    np.testing.assert_array_equal(cut["track_id"][kept], full["track_id"][kept])
    pd.testing.assert_frame_equal(drop_short_tracks(full, 10), cut)
    with pytest.raises(ValueError, match="greater than 0"):
        LinkConfig(search_range_um=0)
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        LinkConfig(memory=-1)


# ---------------------------------------------------------------- diffusion


def test_estimate_diffusion_single_track_noise_and_blur() -> None:
    df = simulate(
        1, 20000, walls=False, d_range=(0.2, 0.2), p_miss=0.0, mean_life=1e9, seed=7
    )
    est = estimate_diffusion(df, DT)
    assert est.n_steps == 19999
    assert est.D_um2_s == pytest.approx(0.2, rel=0.05)
    assert abs(est.D_um2_s - 0.2) < 4 * est.D_se_um2_s
    assert est.D_se_um2_s / est.D_um2_s < 0.03
    assert est.D_xy_um2_s == pytest.approx(0.2, rel=0.05)
    assert est.D_z_um2_s == pytest.approx(0.2, rel=0.1)
    assert est.D_axes_um2_s[0] == pytest.approx(0.2, rel=0.08)
    # localization error is recovered with R = 1/6 (exposure = frame interval)
    assert est.loc_error_um[0] == pytest.approx(0.02, rel=0.2)
    assert est.loc_error_um[2] == pytest.approx(0.05, rel=0.2)
    # a naive MSD(1)/(2 dt) is biased by noise and blur; the estimator is not
    d = np.diff(df[["x_um", "y_um", "z_um"]].to_numpy(), axis=0)
    naive = float((d**2).mean() / (2 * DT))
    assert abs(naive / 0.2 - 1) > 0.1
    # array input gives the same; gaps are skipped, not bridged
    arr = estimate_diffusion(df[["x_um", "y_um", "z_um"]].to_numpy(), DT)
    assert arr.D_um2_s == pytest.approx(est.D_um2_s)
    gappy = df.drop(index=df.index[::7])
    est_g = estimate_diffusion(gappy, DT)
    assert est_g.n_steps < est.n_steps
    assert est_g.D_um2_s == pytest.approx(0.2, rel=0.06)
    short = estimate_diffusion(df.iloc[:2], DT)
    assert np.isnan(short.D_um2_s)
    with pytest.raises(ValueError, match="exposure_s"):
        estimate_diffusion(df, DT, exposure_s=2 * DT)


def test_axial_scale_converts_stage_z_to_sample_depth() -> None:
    """z_um in stage units (focal shift 0.73): axial_scale recovers the sample D."""
    from axialtrack.optics import axial_scale

    scale = axial_scale((0.05, 1.2))
    assert 0.68 < scale < 0.78
    df = simulate(
        1, 20000, walls=False, d_range=(0.3, 0.3), p_miss=0.0, mean_life=1e9, seed=8
    )
    df = df.assign(track_id=0)
    stage = df.assign(z_um=df["z_um"] / scale)  # what the pipeline reports
    raw = summarize_tracks(stage, frame_interval_s=DT)
    conv = summarize_tracks(stage, frame_interval_s=DT, axial_scale=scale)
    assert conv["D_z_um2_s"].iloc[0] == pytest.approx(0.3, rel=0.1)
    assert raw["D_z_um2_s"].iloc[0] == pytest.approx(0.3 / scale**2, rel=0.1)
    assert conv["D_xy_um2_s"].iloc[0] == pytest.approx(raw["D_xy_um2_s"].iloc[0])
    assert conv["z_um"].iloc[0] == pytest.approx(raw["z_um"].iloc[0])  # stage frame
    with pytest.raises(ValueError, match="axial_scale"):
        summarize_tracks(stage, frame_interval_s=DT, axial_scale=0.0)


@pytest.fixture(scope="module")
def long_tracks() -> pd.DataFrame:
    df = simulate(
        100, 2000, box_um=(60.0, 60.0, 10.0), walls=False, mean_life=1e9, seed=11
    )
    return link_table(df, LinkConfig(search_range_um=1.0, memory=3))


def test_diffusion_recovered_from_linked_tracks(long_tracks: pd.DataFrame) -> None:
    assert link_precision(long_tracks)[0] >= 0.99
    summary = summarize_tracks(long_tracks)  # frame interval from t_s
    true_d = long_tracks.groupby("track_id")["true_D"].agg(lambda v: v.mode().iloc[0])
    truth = true_d.loc[summary["track_id"]].to_numpy()
    long = summary["n_localizations"].to_numpy() >= 1000
    assert long.sum() >= 80
    rel = summary["D_um2_s"].to_numpy()[long] / truth[long] - 1
    # per track (about 1950 steps): relative SE 3-5 %, so nearly all within 10 %
    assert np.mean(np.abs(rel) < 0.1) >= 0.9
    assert abs(np.mean(rel)) < 0.02
    zscore = (summary["D_um2_s"].to_numpy() - truth)[long] / summary[
        "D_se_um2_s"
    ].to_numpy()[long]
    assert abs(zscore.mean()) < 0.4
    assert 0.7 < zscore.std() < 1.4
    # population: step-weighted mean of the true D
    pop = estimate_diffusion_population(long_tracks, DT)
    w = summary["n_localizations"].to_numpy()
    target = float(np.average(truth, weights=w))
    assert pop.D_um2_s == pytest.approx(target, rel=0.1)
    assert pop.D_um2_s == pytest.approx(target, rel=0.03)
    assert pop.D_xy_um2_s == pytest.approx(target, rel=0.03)
    assert pop.D_z_um2_s == pytest.approx(target, rel=0.05)
    assert 0 < pop.D_se_um2_s < 0.1 * target
    assert pop.n_tracks == len(summary)
    assert pop.loc_error_um[2] == pytest.approx(0.05, rel=0.1)
    assert summary["loc_error_xy_um"].median() == pytest.approx(0.02, rel=0.15)


def test_summarize_tracks_columns(sim_linked: pd.DataFrame) -> None:
    locs = sim_linked.copy()
    locs.loc[locs.index[:50], "track_id"] = -1
    s = summarize_tracks(locs, frame_interval_s=DT, min_length=5)
    for col, dtype in SUMMARY_COLUMNS.items():
        assert s[col].dtype == dtype, col
    required = [
        "track_id", "n_localizations", "first_frame", "last_frame", "duration_s",
        "x_um", "y_um", "z_um", "D_um2_s", "D_se_um2_s", "D_xy_um2_s", "D_z_um2_s",
    ]  # fmt: skip
    assert all(c in s.columns for c in required)
    linked = locs[locs["track_id"] >= 0]
    assert len(s) == linked["track_id"].nunique()
    assert s["track_id"].is_monotonic_increasing
    g = linked.groupby("track_id")
    row = s.set_index("track_id")
    np.testing.assert_array_equal(row["n_localizations"], g.size())
    np.testing.assert_array_equal(row["first_frame"], g["frame"].min())
    np.testing.assert_array_equal(row["last_frame"], g["frame"].max())
    np.testing.assert_allclose(row["z_um"], g["z_um"].mean())
    np.testing.assert_allclose(
        row["duration_s"], (g["frame"].max() - g["frame"].min()) * DT
    )
    short = row["n_localizations"] < 5
    assert short.any()
    assert row.loc[short, "D_um2_s"].isna().all()
    assert row.loc[~short, "D_um2_s"].notna().mean() > 0.99
    # frame interval from t_s gives the same
    s2 = summarize_tracks(locs, min_length=5)
    np.testing.assert_allclose(s2["D_um2_s"], s["D_um2_s"], rtol=1e-9)


def test_summarize_empty_and_unlinked() -> None:
    empty = simulate(5, 5).iloc[:0]
    s = summarize_tracks(empty, frame_interval_s=DT)
    assert len(s) == 0
    assert list(s.columns) == list(SUMMARY_COLUMNS)
    unlinked = simulate(5, 5)
    assert len(summarize_tracks(unlinked)) == 0


# ------------------------------------------------------------------ exports


def test_to_napari_tracks(sim_linked: pd.DataFrame) -> None:
    locs = sim_linked.sample(frac=1.0, random_state=1)
    locs.loc[locs.index[:10], "track_id"] = -1
    data, props = to_napari_tracks(locs)
    linked = locs[locs["track_id"] >= 0]
    assert data.shape == (len(linked), 5)
    assert data.dtype == np.float64
    order = np.lexsort((data[:, 1], data[:, 0]))
    np.testing.assert_array_equal(order, np.arange(len(data)))
    ref = linked.sort_values(["track_id", "frame"])
    np.testing.assert_array_equal(data[:, 0], ref["track_id"])
    np.testing.assert_array_equal(data[:, 1], ref["frame"])
    np.testing.assert_allclose(data[:, 2:], ref[["z_um", "y_um", "x_um"]])
    assert {"t_s", "photons", "dz_um"} <= set(props)
    for v in props.values():
        assert len(v) == len(data)
    np.testing.assert_allclose(props["photons"], ref["photons"])
    empty, _ = to_napari_tracks(locs.iloc[:0])
    assert empty.shape == (0, 5)


def test_geff_round_trip(sim_linked: pd.DataFrame, tmp_path: Path) -> None:
    locs = sim_linked[sim_linked["frame"] < 60].copy()
    locs.loc[locs.index[:5], "track_id"] = -1
    path = write_geff(locs, tmp_path / "tracks.geff")
    assert path.exists()
    nodes, edges = read_geff(path)
    linked = locs[locs["track_id"] >= 0]
    assert len(nodes) == len(linked)
    assert len(edges) == len(linked) - linked["track_id"].nunique()
    # node ids are row positions in the table; positions and times read back
    rows = np.flatnonzero(locs["track_id"].to_numpy() >= 0)
    assert set(nodes.index) == set(rows)
    back = nodes.loc[rows]
    for col in ("x_um", "y_um", "z_um", "t_s", "photons"):
        np.testing.assert_array_equal(back[col].to_numpy(), locs[col].to_numpy()[rows])
    np.testing.assert_array_equal(back["track_id"], locs["track_id"].to_numpy()[rows])
    np.testing.assert_array_equal(back["frame"], locs["frame"].to_numpy()[rows])
    # every edge joins consecutive localizations of one track
    src, dst = nodes.loc[edges[:, 0]], nodes.loc[edges[:, 1]]
    np.testing.assert_array_equal(src["track_id"].to_numpy(), dst["track_id"])
    assert (dst["frame"].to_numpy() > src["frame"].to_numpy()).all()
    assert (dst["frame"].to_numpy() - src["frame"].to_numpy()).max() <= 4

    from geff import GeffMetadata

    meta = GeffMetadata.read(str(path))
    assert [a.name for a in meta.axes or []] == ["t", "z", "y", "x"]
    assert [a.unit for a in meta.axes or []] == ["second"] + ["micrometer"] * 3
    assert meta.directed

    with pytest.raises(FileExistsError):
        write_geff(locs, path)
    write_geff(locs.iloc[:100], path, overwrite=True)
    nodes2, _ = read_geff(path)
    assert len(nodes2) == int((locs["track_id"].iloc[:100] >= 0).sum())


def test_end_tracks_stops_linking_across_a_jump() -> None:
    from axialtrack.pipeline.link import LinkConfig, OnlineLinker

    lk = OnlineLinker(LinkConfig(search_range_um=1.0, memory=3))
    a = lk.push_rows(np.array([10]), np.array([[5.0, 5.0, 0.0]]), analyzed=[10])
    lk.end_tracks()
    b = lk.push_rows(np.array([400]), np.array([[5.5, 5.0, 0.0]]), analyzed=[400])
    assert a.tolist() == [0]
    assert b.tolist() == [1]  # a new track, ids go on
    c = lk.push_rows(np.array([401]), np.array([[5.6, 5.0, 0.0]]), analyzed=[401])
    assert c.tolist() == [1]  # and it links on from there


def test_localize_analyzes_runs_of_consecutive_frames_apart() -> None:
    from axialtrack.pipeline.cli import _analyze_all

    class Recorder:
        def __init__(self) -> None:
            self.batches: list[list[int]] = []

        def analyze(self, planes, indices, meta):  # type: ignore[no-untyped-def]
            self.batches.append([int(i) for i in indices])

        def end_tracks(self) -> None:
            self.batches.append([])  # where the tracks end

    rec = Recorder()
    idx = np.array([3, 4, 5, 9, 10, 20])
    _analyze_all(rec, lambda i: np.zeros((len(i), 2, 4, 4)), idx, [None] * 6, 2)
    assert rec.batches == [[3, 4], [5], [], [9, 10], [], [20]]


def test_contested_links_are_trackpys() -> None:
    """Two tracks competing for one localization: a new localization starts a
    track at no cost (trackpy's null candidate), so track A keeps the one that
    did not move rather than both tracks taking a longer step."""
    import trackpy

    from axialtrack.pipeline.link import LinkConfig, OnlineLinker

    trackpy.quiet()
    f0 = np.array([[0.0, 0.0, 0.0], [0.0, 0.7746, 0.0]])  # tracks A, B
    f1 = np.array([[0.0, 0.0, 0.0], [0.7746, 0.0, 0.0]])
    lk = OnlineLinker(LinkConfig(search_range_um=1.0, memory=0))
    ids = np.r_[lk.push(0, f0), lk.push(1, f1)].tolist()
    df = pd.DataFrame(np.r_[f0, f1], columns=["x_um", "y_um", "z_um"])
    df["frame"] = [0, 0, 1, 1]
    ref = trackpy.link(
        df, 1.0, memory=0, pos_columns=["x_um", "y_um", "z_um"], t_column="frame"
    )["particle"].tolist()
    assert ids == [0, 1, 0, 2]
    # the same partition as trackpy's
    assert (np.array(ids)[:, None] == np.array(ids)[None, :]).tolist() == (
        np.array(ref)[:, None] == np.array(ref)[None, :]
    ).tolist()


def test_linking_keeps_its_precision_at_stage_coordinates() -> None:
    from axialtrack.pipeline.link import LinkConfig, OnlineLinker

    lk = OnlineLinker(LinkConfig(search_range_um=0.5, memory=0))
    stage = np.array([50_000.0, -30_000.0, 4_000.0])  # um, like x_um = stage + dx
    a = stage + np.array([[0.0, 0.0, 0.0], [0.4, 0.0, 0.0]])
    b = stage + np.array([[0.001, 0.0, 0.0], [0.3989, 0.0, 0.0]])
    lk.push(0, a)
    rows, cols, dist2 = lk._candidates(b * lk._scale)
    exact = ((a[rows] - b[cols]) ** 2).sum(axis=1)
    # |p|^2 + |q|^2 - 2 p.q at 5e4 um would be off by about 1e-6 um^2
    np.testing.assert_allclose(dist2, exact, rtol=0, atol=1e-9)
    assert lk.push(1, b).tolist() == [0, 1]


def test_steps_across_a_pause_in_the_acquisition_are_left_out() -> None:
    """Consecutive frames 0.5 s apart every 100 frames (a burst acquisition):
    those steps are not single-frame steps of dt."""
    from axialtrack.pipeline import summarize_tracks

    rng = np.random.default_rng(1)
    d_true, dt, n = 0.5, 0.01, 4000
    t = np.arange(n) * dt + (np.arange(n) // 100) * 0.5
    steps = rng.normal(0.0, 1.0, (n - 1, 3)) * np.sqrt(2 * d_true * np.diff(t))[:, None]
    xyz = np.r_[np.zeros((1, 3)), np.cumsum(steps, axis=0)]
    locs = pd.DataFrame(
        {
            "frame": np.arange(n),
            "t_s": t,
            "track_id": 0,
            "x_um": xyz[:, 0],
            "y_um": xyz[:, 1],
            "z_um": xyz[:, 2],
        }
    )
    s = summarize_tracks(locs)  # dt from t_s: the median interval
    assert abs(float(s["D_um2_s"].iloc[0]) / d_true - 1.0) < 0.1
    assert abs(float(s["D_xy_um2_s"].iloc[0]) / d_true - 1.0) < 0.1


# ------------------------------------------------------- multi-position runs
def _interleave(n_positions: int, seed: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    """Diffusing particles of ``n_positions`` fields, visited in turn: frame
    ``k`` images position ``k % n_positions``. Every field's particles lie in
    the same stage coordinates (each field is its own sample), so one linker
    would join particles of different fields."""
    parts = []
    n_visits = 0
    for p in range(n_positions):
        d = simulate(seed=seed + p)
        n_visits = int(d["frame"].max()) + 1
        d = d.assign(
            frame=d["frame"] * n_positions + p,
            true_id=d["true_id"] + 10_000 * p,
        )
        parts.append(d)
    table = pd.concat(parts, ignore_index=True).sort_values("frame", kind="stable")
    positions = np.tile(np.arange(n_positions), n_visits)
    return table.reset_index(drop=True), positions


def test_each_position_is_linked_on_its_own() -> None:
    cfg = LinkConfig(search_range_um=1.0, memory=3)
    table, positions = _interleave(3)
    per_pos = link_table(table, cfg, frame_positions=positions)
    # no track crosses fields, ids unique over them
    linked = per_pos[per_pos["track_id"] >= 0]
    fields = linked.groupby("track_id")["true_id"].agg(lambda v: set(v // 10_000))
    assert all(len(f) == 1 for f in fields)
    # each field links as well as it would alone (frames counted in visits)
    prec, n = link_precision(per_pos)
    assert n > 1000
    alone = link_table(simulate(seed=3), cfg)
    assert prec >= link_precision(alone)[0] - 0.01
    assert link_recall(per_pos.assign(frame=per_pos["frame"] // 3), 3) > 0.95
    # one linker for all frames: tracks jump between fields
    mixed = link_table(table, cfg)
    linked = mixed[mixed["track_id"] >= 0]
    fields = linked.groupby("track_id")["true_id"].agg(lambda v: set(v // 10_000))
    assert sum(len(f) > 1 for f in fields) > 10


def test_position_linker_live_equals_offline() -> None:
    """Pushed in batches with the frames' positions (as the analyzer does),
    the ids equal those of the offline table."""
    cfg = LinkConfig(search_range_um=1.0, memory=3)
    table, positions = _interleave(2)
    offline = link_table(table, cfg, frame_positions=positions)
    live = PositionLinker(cfg)
    ids = np.full(len(table), -1, dtype=np.int64)
    frames = table["frame"].to_numpy()
    xyz = table[["x_um", "y_um", "z_um"]].to_numpy()
    for start in range(0, len(positions), 7):
        batch = np.arange(start, min(start + 7, len(positions)))
        rows = np.flatnonzero(np.isin(frames, batch))
        ids[rows] = live.push_rows(frames[rows], xyz[rows], batch, positions[batch])
    np.testing.assert_array_equal(ids, offline["track_id"].to_numpy())
    assert live.n_tracks == offline["track_id"].max() + 1
    with pytest.raises(ValueError, match="positions for"):
        live.push_rows(frames[:0], xyz[:0], np.array([10**6]), np.array([0, 1]))


def test_multi_position_tracks_step_between_visits_of_their_field() -> None:
    """Frames alternating between two fields: each track steps from one visit
    of its field to the next, so its diffusion is estimated (without the
    fields every step spans two frames and D was NaN), at the time between
    visits, and equals the estimate of the same track alone."""
    rng = np.random.default_rng(3)
    d_true, dt_visit, n_visits = 0.5, 0.02, 400
    rows = []
    for field in (0, 1):
        steps = rng.normal(0, np.sqrt(2 * d_true * dt_visit), size=(n_visits, 3))
        xyz = np.cumsum(steps, axis=0)
        for v in range(n_visits):
            frame = 2 * v + field
            rows.append(
                {
                    "frame": frame,
                    "t_s": frame * dt_visit / 2,
                    "x_um": xyz[v, 0],
                    "y_um": xyz[v, 1],
                    "z_um": xyz[v, 2],
                    "track_id": field,
                }
            )
    locs = pd.DataFrame(rows)
    positions = np.arange(2 * n_visits) % 2
    old = summarize_tracks(locs)
    assert old["D_um2_s"].isna().all()
    s = summarize_tracks(locs, frame_positions=positions)
    assert np.isfinite(s["D_um2_s"]).all()
    np.testing.assert_allclose(s["D_um2_s"], d_true, rtol=0.2)
    for field in (0, 1):
        alone = locs[locs.track_id == field].assign(
            frame=lambda t: t.frame // 2, t_s=lambda t: t.frame * dt_visit
        )
        one = summarize_tracks(alone)
        assert s.loc[field, "D_um2_s"] == pytest.approx(one.loc[0, "D_um2_s"])
        assert s.loc[field, "first_frame"] == field  # frames stay the run's
    # without times: the frame interval times the frames between visits
    s2 = summarize_tracks(
        locs.drop(columns="t_s"),
        frame_interval_s=dt_visit / 2,
        frame_positions=positions,
    )
    np.testing.assert_allclose(s2["D_um2_s"], s["D_um2_s"])
    with pytest.raises(ValueError, match="frame_positions holds 10 frames"):
        summarize_tracks(locs, frame_positions=positions[:10])
