"""Georeferencing end to end on the synthetic world: GNSS/IMU pose -> DEM ray-cast -> fusion,
checked against the exact truth (core only: the same DepthPipeline the node and replay use)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geo_depth_node.core.contract import Flag, Provenance
from geo_depth_node.synth.config import SynthConfig
from geo_depth_node.tools.prior_coverage import process_world, truth_cameras, truth_points_enu

W, H = 256, 192


def _run(tmp: Path, **kw) -> list[dict]:
    """Generate a world, run the pipeline with the world's params over every frame."""
    cfg = SynthConfig(width=W, height=H, **kw)
    pipe, truth, results = process_world(tmp, cfg, {'stereo.num_disparities': 64})
    left, _, norm = truth_cameras(truth)
    return [{'res': res, 'r_true': truth['depth'][i] * norm, 'surface': truth['surface'][i],
             'T_true': truth['T_enu_left'][i], 'pipe': pipe, 'depth': truth['depth'][i],
             'p_true': truth_points_enu(truth, i), 'cfg': cfg, 'left': left}
            for i, res in enumerate(results)]


def _coverage(runs, cls: Provenance, terrain_only: bool = True) -> tuple[int, float, float, float]:
    n = w1 = w2 = w3 = 0
    for f in runs:
        res = f['res']
        sel = (res.provenance == cls) & np.isfinite(f['r_true'])
        if terrain_only:
            sel &= f['surface'] == 1
        e = np.abs(np.linalg.norm(res.points[sel], axis=-1) - f['r_true'][sel])
        s = res.sigma[sel]
        n += int(sel.sum())
        w1 += int((e <= s).sum())
        w2 += int((e <= 2 * s).sum())
        w3 += int((e > 3 * s).sum())
    return n, w1 / max(n, 1), w2 / max(n, 1), w3 / max(n, 1)


@pytest.fixture(scope='module')
def default_runs(tmp_path_factory):
    runs = []
    for seed in (0, 2, 3):
        runs += _run(tmp_path_factory.mktemp(f'g{seed}'), seed=seed, frames=1)
    return runs


def test_every_frame_is_georeferenced_with_the_true_pose(default_runs):
    for f in default_runs:
        res = f['res']
        assert res.pose_status == 'ok' and not res.pose_degraded
        d = res.T_enu_cam[:3, 3] - f['T_true'][:3, 3]
        assert np.linalg.norm(d[:2]) < 0.4 and abs(d[2]) < 0.6  # GNSS 0.1 / 0.2 m (1 sigma)


def test_fused_and_prior_points_agree_with_the_truth(default_runs):
    n_f, f1, f2, f3 = _coverage(default_runs, Provenance.FUSED)
    n_p, p1, p2, p3 = _coverage(default_runs, Provenance.PRIOR)
    print(f'\nFUSED {n_f}: {100 * f1:.1f} % / {100 * f2:.1f} % within 1/2 sigma, '
          f'{100 * f3:.2f} % beyond 3; PRIOR (terrain) {n_p}: {100 * p1:.1f} % / '
          f'{100 * p2:.1f} %, {100 * p3:.2f} % beyond 3 sigma')
    assert n_f > 10000 and n_p > 10000
    assert 0.6 < f1 and f2 > 0.95 and f3 < 0.005
    # The prior sigma is conservative here: within one frame every pixel shares the same few
    # (correlated) DEM error draws; see the notes of issue 6.
    assert p2 > 0.93 and p3 < 0.02
    # Sky is labelled, never given a depth.
    for f in default_runs:
        res, sky = f['res'], ~np.isfinite(f['r_true'])
        assert np.all(res.provenance[sky] != Provenance.FUSED)
        assert ((res.flags[sky] & Flag.SKY) != 0).mean() > 0.95


def test_objects_above_a_bare_earth_dem_are_conflicts_not_fused(tmp_path):
    """Stereo points on boxes, trees and poles standing more than 3 m above the terrain
    (which a bare-earth DEM does not contain) stay MEASURED with PRIOR_CONFLICT; none is
    fused into the ground. Lower parts, within the height gate (gate_k = 3 times the DEM's
    0.5 m vertical sigma combined with the pose and stereo sigmas: ~2 m), cannot be told
    from DEM error; where they fuse, the stereo dominates (checked: not dragged to the
    ground: within 2 sigma for > 80 %, median error < 0.5 m). (A 0.5 m baseline: at
    256x192 the objects, 15-70 m away, are beyond the resolution of the default 0.12 m
    rig.)"""
    from geo_depth_node.synth.generate import World

    runs = []
    for seed in (0, 2):
        runs += _run(tmp_path / f's{seed}', seed=seed, frames=1, baseline_m=0.5, objects=30)
    n_stereo = n_conflict = n_fused = n_prior = 0
    for f in runs:
        res, p = f['res'], f['p_true']
        terrain = World(f['cfg']).terrain
        with np.errstate(invalid='ignore'):
            height = p[..., 2] - terrain.height(p[..., 0], p[..., 1])
        obj = (f['surface'] >= 2) & np.isfinite(f['depth']) & (height > 3.0)
        low = (f['surface'] >= 2) & (height > 0.5) & (height <= 3.0) \
            & (res.provenance == Provenance.FUSED)
        if low.sum() > 20:
            err = np.abs(np.linalg.norm(res.points[low], axis=-1) - f['r_true'][low])
            # object edges are stereo's hardest pixels; the point: not pulled to the ground
            assert np.mean(err <= 2 * res.sigma[low]) > 0.8 and np.median(err) < 0.5
        stereo = obj & np.isin(res.provenance, (Provenance.MEASURED, Provenance.FUSED))
        n_stereo += int(stereo.sum())
        n_conflict += int((stereo & (res.provenance == Provenance.MEASURED)
                           & ((res.flags & Flag.PRIOR_CONFLICT) != 0)).sum())
        n_fused += int((stereo & (res.provenance == Provenance.FUSED)).sum())
        n_prior += int((obj & (res.provenance == Provenance.PRIOR)).sum())
    print(f'\nobject points above 3 m with stereo: {n_stereo}, MEASURED+PRIOR_CONFLICT '
          f'{n_conflict}, FUSED {n_fused}; object pixels given a DEM prior: {n_prior}')
    assert n_stereo > 500
    assert n_conflict >= 0.99 * n_stereo and n_fused <= 0.01 * n_stereo


def test_wrong_dem_is_flagged_not_averaged_away(tmp_path):
    """A DEM 3 m too low (6x its stated sigma): stereo points come out MEASURED +
    PRIOR_CONFLICT, and the few FUSED ones are not dragged off the truth. (A DEM too HIGH by
    more than the camera height puts the camera below it: every ray BELOW_TERRAIN, no prior.)"""
    runs = _run(tmp_path, seed=2, frames=1, dem_offset_m=-3.0)
    res = runs[0]['res']
    meas = res.provenance == Provenance.MEASURED
    conflict = (res.flags & Flag.PRIOR_CONFLICT) != 0
    assert meas.sum() > 3000 and conflict[meas].mean() > 0.9
    n_f, _, _, f3 = _coverage(runs, Provenance.FUSED)
    assert n_f < 0.2 * meas.sum() and f3 <= 0.005
    n_m, _, m2, _ = _coverage(runs, Provenance.MEASURED)
    assert m2 > 0.95  # the stereo kept its own (correct) depth


def test_vertical_datum_of_the_dem_does_not_change_the_priors(tmp_path):
    """The same world with the DEM stored as EGM96 heights and as ellipsoidal heights."""
    a = _run(tmp_path / 'egm', seed=3, frames=1, dem_vertical_datum='egm96')[0]['res']
    b = _run(tmp_path / 'ell', seed=3, frames=1, dem_vertical_datum='ellipsoid')[0]['res']
    prior = (a.provenance == Provenance.PRIOR) & (b.provenance == Provenance.PRIOR)
    assert prior.sum() > 5000
    ra = np.linalg.norm(a.points[prior], axis=-1)
    rb = np.linalg.norm(b.points[prior], axis=-1)
    assert np.percentile(np.abs(ra - rb), 99) < 0.02  # float32 DEM storage: mm-level
    np.testing.assert_array_equal(a.provenance, b.provenance)


def test_output_in_the_enu_frame(tmp_path):
    """output.frame enu: the same points, moved into the local ENU frame with the frame's
    pose; they land on the true terrain."""
    import copy

    from geo_depth_node.synth.generate import World

    runs = _run(tmp_path, seed=0, frames=1)
    cam = runs[0]['res']
    pipe = runs[0]['pipe']
    pipe.params['output.frame'] = 'enu'
    try:
        res = copy.deepcopy(cam)
        pipe._to_enu(res, runs[0]['left'])
    finally:
        pipe.params['output.frame'] = 'camera'
    assert res.output_frame == 'enu'
    T = cam.T_enu_cam
    sel = np.isin(cam.provenance, [Provenance.FUSED, Provenance.PRIOR])
    want = cam.points[sel].astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    np.testing.assert_allclose(res.points[sel], want, atol=1e-3)
    # FUSED points in ENU are on the true terrain within their sigma (3 sigma)
    f = (cam.provenance == Provenance.FUSED) & (runs[0]['surface'] == 1)
    world = World(SynthConfig(seed=0, frames=1, width=W, height=H))
    p = res.points[f].astype(np.float64)
    dz = p[:, 2] - world.terrain.height(p[:, 0], p[:, 1])
    assert np.mean(np.abs(dz) <= 3 * res.sigma[f] + 0.3) > 0.95  # + GNSS height error



def test_prior_sigma_coverage_over_many_independent_dem_draws(tmp_path):
    """Pooled over 4 worlds x 4 frames 5 m apart, with a DEM whose error (0.5 m vertical,
    0.5 m horizontal, correlated over 4 m) is exactly its stated accuracy: the PRIOR sigma
    covers the truth without over-confidence (measured 78.5 % / 98.6 % / 0.27 % for these
    seeds). It is conservative: 71.5 % / 98.8 % before the weak-stereo test, which drops the
    priors a beyond-limit disparity contradicts, so the survivors are the better ones; and
    the first-order sigma alone is over-confident (62.9 % / 94.5 % / 1.6 %). FUSED stays
    honest. See the notes of issue 6."""
    from geo_depth_node.tools.prior_coverage import evaluate, format_table

    rep = evaluate(worlds=4, frames=4, seed0=200, workdir=str(tmp_path))
    print('\n' + format_table(rep))
    prior, fused = rep['classes']['PRIOR'], rep['classes']['FUSED']
    assert prior['n'] > 100000 and fused['n'] > 10000
    assert 0.62 <= prior['within_1sigma'] <= 0.82
    assert 0.93 <= prior['within_2sigma'] <= 0.995
    assert prior['beyond_3sigma'] < 0.01
    assert fused['within_2sigma'] > 0.95 and fused['beyond_3sigma'] < 0.005
