"""The calibrated disparity-sigma models (core.sigma_model) against truth on HELD-OUT data.

Coverage = fraction of the matcher's accepted pixels (finite disparity, no flags, with truth)
whose |d - d_true| <= k * sigma_d. Issue bounds: 68 +- 3 % (k = 1), 95 +- 2 % (k = 2).
Held-out data: synthetic worlds with seeds that tools/calibrate_sigma.py never uses (101..106),
rendered here, and the BOTTOM half of Middlebury Cones (the fit uses only the top half).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from geo_depth_node.core.sigma_model import (CALIBRATED, SigmaModel, disparity_context,
                                             disparity_context_torch)
from geo_depth_node.tools import calibrate_sigma as cs

COV1 = (0.65, 0.71)
COV2 = (0.93, 0.97)
# Cones' errors are heavy-tailed: foreground fattening at the cone edges gives gross mismatches
# (several px) that pass the left-right check. The models' edge and step terms
# (core.sigma_model: e * disp_range * hole_frac, j * max(step - j0, 0)) give those pixels a
# sigma of the order of their error, so Cones is held to the same bounds as the synthetic
# worlds (before those terms the held-out half reached only 92.3 % (SGBM), 92.4 % (full LR
# check) and 93.0 % (SGM) at 2 sigma and had a widened bound of 90 %).
COV2_CONES = COV2


def _coverage(model: SigmaModel, pairs) -> tuple[float, float, int]:
    """Pooled (1-sigma, 2-sigma coverage, n) over (err, sigma) pairs."""
    z = np.concatenate([e / s for e, s in pairs])
    return float(np.mean(z <= 1)), float(np.mean(z <= 2)), int(z.size)


def _run(matcher_name: str, matcher, left, right, gt, rows=None, variant: str = ''):
    m = matcher.match(left, right)
    model = SigmaModel.for_matcher(matcher_name, variant)
    sigma = model.sigma_d(m.features, m.disparity)
    ok = np.isfinite(m.disparity) & (m.flags == 0) & np.isfinite(gt)
    if rows is not None:
        ok &= rows[:, None]
    assert np.all(np.isfinite(sigma[ok])) and np.all(sigma[ok] > 0)
    assert np.all(np.isnan(sigma[np.isnan(m.disparity)]))
    return np.abs(m.disparity - gt)[ok], sigma[ok]


@pytest.fixture(scope='module')
def cones(shared_data):
    d = shared_data / 'middlebury2003_cones'
    if not d.is_dir():
        pytest.skip(f'Middlebury Cones not found at {d} (shared data absent)')
    left, right, gt = cs.load_cones(d)
    rows = np.arange(gt.shape[0]) >= gt.shape[0] // 2  # held-out half
    return left, right, gt, rows


def _check(cov1: float, cov2: float, label: str, cov2_bounds: tuple[float, float] = COV2) -> None:
    print(f'\n{label}: 1 sigma {100 * cov1:.1f} %, 2 sigma {100 * cov2:.1f} %')
    assert COV1[0] <= cov1 <= COV1[1], (label, cov1)
    assert cov2_bounds[0] <= cov2 <= cov2_bounds[1], (label, cov2)


def test_opencv_synthetic_held_out():
    # The claim is about the population of frames: single frames scatter (1-sigma coverage
    # 60..78 % per frame, scene dependent, see the report), so six worlds are pooled (~1.5 s
    # each at 320x240).
    matcher = cs.make_matcher('opencv_sgbm')
    model = SigmaModel.for_matcher('opencv_sgbm')
    pairs = []
    for seed in range(101, 107):
        terrain = cs.TERRAINS[seed % 3]
        (left, right, gt), = cs.synth_frames(seed, terrain, 320, 240, 1)
        pairs.append(_run('opencv_sgbm', matcher, left, right, gt))
        c1, c2, n1 = _coverage(model, pairs[-1:])
        print(f'\n  seed {seed} {terrain}: {n1} px, 1 sigma {100 * c1:.1f} %, 2 sigma {100 * c2:.1f} %')
    cov1, cov2, n = _coverage(model, pairs)
    assert n > 30000
    _check(cov1, cov2, f'OpenCV SGBM, 6 synthetic frames 320x240, {n} px')


@pytest.fixture
def full_lr_check(monkeypatch):
    """cs.make_matcher builds OpenCV SGBM with the exact full-resolution LR check."""
    monkeypatch.setitem(cs.OVERRIDES, 'stereo.lr_check_resolution', 'full')
    return 'lr_full'


def test_opencv_full_lr_check_variant_held_out(cones, full_lr_check):
    """stereo.lr_check_resolution full has its own constants (its lr_diff is cleaner)."""
    from geo_depth_node.core.params import defaults
    from geo_depth_node.core.sigma_model import variant_for

    variant = full_lr_check
    assert variant_for('opencv_sgbm', dict(defaults(), **cs.OVERRIDES)) == variant
    matcher = cs.make_matcher('opencv_sgbm')
    assert matcher.config.lr_check_resolution == 'full'
    pairs = []
    for seed in range(101, 107):
        (left, right, gt), = cs.synth_frames(seed, cs.TERRAINS[seed % 3], 320, 240, 1)
        pairs.append(_run('opencv_sgbm', matcher, left, right, gt, variant=variant))
    model = SigmaModel.for_matcher('opencv_sgbm', variant)
    cov1, cov2, n = _coverage(model, pairs)
    _check(cov1, cov2, f'OpenCV SGBM (full LR check), 6 synthetic frames 320x240, {n} px')
    left, right, gt, rows = cones
    e, s_ = _run('opencv_sgbm', cs.make_matcher('opencv_sgbm', cs.CONES_DISPARITIES), left, right,
                 gt, rows, variant=variant)
    cov1, cov2, n = _coverage(model, [(e, s_)])
    _check(cov1, cov2, f'OpenCV SGBM (full LR check), Cones bottom half, {n} px', COV2_CONES)


def test_opencv_cones_held_out(cones):
    left, right, gt, rows = cones
    matcher = cs.make_matcher('opencv_sgbm', cs.CONES_DISPARITIES)
    e, s = _run('opencv_sgbm', matcher, left, right, gt, rows)
    cov1, cov2, n = _coverage(SigmaModel.for_matcher('opencv_sgbm'), [(e, s)])
    _check(cov1, cov2, f'OpenCV SGBM, Cones bottom half, {n} px', COV2_CONES)


def test_sgm_synthetic_held_out():
    matcher = cs.make_matcher('sgm_torch', cs.SGM_DISPARITIES)
    (left, right, gt), = cs.synth_frames(103, 'flat', 256, 192, 1)
    pairs = [_run('sgm_torch', matcher, left, right, gt)]
    cov1, cov2, n = _coverage(SigmaModel.for_matcher('sgm_torch'), pairs)
    assert n > 5000
    _check(cov1, cov2, f'torch SGM (CPU), 1 synthetic frame 256x192, {n} px')


def test_sgm_cones_held_out(cones):
    left, right, gt, rows = cones
    matcher = cs.make_matcher('sgm_torch', cs.CONES_DISPARITIES)
    e, s = _run('sgm_torch', matcher, left, right, gt, rows)
    cov1, cov2, n = _coverage(SigmaModel.for_matcher('sgm_torch'), [(e, s)])
    _check(cov1, cov2, f'torch SGM (CPU), Cones bottom half, {n} px', COV2_CONES)


# --------------------------------------------------------------------------- API
def test_model_api_and_errors():
    assert set(CALIBRATED) == {'opencv_sgbm', 'sgm_torch'}
    with pytest.raises(ValueError, match='matcher'):
        SigmaModel.for_matcher('nope')
    with pytest.raises(ValueError, match='variant'):
        SigmaModel.for_matcher('sgm_torch', 'lr_full')
    from geo_depth_node.core.params import defaults
    from geo_depth_node.core.sigma_model import VARIANTS, variant_for

    p = defaults()
    assert variant_for('opencv_sgbm', p) == '' and variant_for('sgm_torch', p) == ''
    p['stereo.lr_check_resolution'] = 'full'
    assert variant_for('opencv_sgbm', p) == 'lr_full' and variant_for('sgm_torch', p) == ''
    assert SigmaModel.for_matcher('opencv_sgbm', 'lr_full') is VARIANTS[('opencv_sgbm', 'lr_full')]
    p['stereo.lr_check'] = False
    assert variant_for('opencv_sgbm', p) == ''
    with pytest.raises(ValueError, match='floor'):
        SigmaModel('x', a=0.0, b=1, c=1, h=1, g=1, t0=1)
    m = SigmaModel.for_matcher('sgm_torch')
    d = np.full((8, 10), 5.0, np.float32)
    feats = {'lr_diff': np.zeros_like(d), 'texture': np.full_like(d, 3.0)}
    with pytest.raises(ValueError, match='curvature'):
        m.sigma_d(feats, d)
    with pytest.raises(ValueError, match='shape'):
        m.sigma_d(dict(feats, curvature=np.ones((3, 3), np.float32)), d)


def test_sigma_grows_with_each_feature():
    m = SigmaModel.for_matcher('sgm_torch')
    d = np.full((20, 20), 5.0, np.float32)
    base = {'lr_diff': np.zeros_like(d), 'texture': np.full_like(d, 4.0),
            'curvature': np.full_like(d, 1.0)}
    s0 = m.sigma_d(base, d)[10, 10]
    assert s0 >= m.a
    assert m.sigma_d(dict(base, lr_diff=np.full_like(d, 0.8)), d)[10, 10] > s0
    assert m.sigma_d(dict(base, texture=np.full_like(d, 1.0)), d)[10, 10] > s0
    # the refit SGM model hardly uses the curvature term (k / c0 ~ 2e-5 px): check its form with
    # a larger k
    mk = dataclasses.replace(m, k=0.05)
    assert mk.sigma_d(dict(base, curvature=np.full_like(d, 0.05)), d)[10, 10] > \
        mk.sigma_d(base, d)[10, 10]
    step = d.copy()
    step[:, 11:] = 9.0
    s_step = m.sigma_d(base, step)
    assert s_step[10, 10] > s0  # discontinuity nearby
    assert m.j > 0 and s_step[10, 11] > s_step[10, 10]  # its near side: the step term too
    hole = d.copy()
    hole[8:13, 12:15] = np.nan
    assert m.sigma_d(base, hole)[10, 10] > s0  # rejected neighbours


def test_context_numpy_matches_torch():
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(3)
    d = rng.uniform(1, 30, (37, 53)).astype(np.float32)
    d[rng.random(d.shape) < 0.2] = np.nan
    d[:, :4] = np.nan
    r_np, h_np, st_np = disparity_context(d)
    r_t, h_t, st_t = disparity_context_torch(torch.from_numpy(d))
    np.testing.assert_allclose(r_t.numpy(), r_np, atol=1e-4)
    np.testing.assert_allclose(h_t.numpy(), h_np, atol=1e-5)
    np.testing.assert_allclose(st_t.numpy(), st_np, atol=1e-4)
    assert disparity_context(d, with_step=False)[2] is None
    # brute force of the definitions at a few pixels
    for y, x in ((0, 0), (10, 20), (36, 52), (5, 4), (20, 30)):
        win = d[max(0, y - 2):y + 3, max(0, x - 2):x + 3]
        v = win[np.isfinite(win)]
        assert r_np[y, x] == pytest.approx(float(v.max() - v.min()) if v.size else 0.0, abs=1e-5)
        want = float(d[y, x] - v.min()) if np.isfinite(d[y, x]) else 0.0
        assert st_np[y, x] == pytest.approx(want, abs=1e-5)
    feats = {'lr_diff': rng.uniform(0, 1, d.shape).astype(np.float32),
             'texture': rng.uniform(1, 8, d.shape).astype(np.float32),
             'curvature': rng.uniform(0, 3, d.shape).astype(np.float32)}
    tf = {k: torch.from_numpy(v) for k, v in feats.items()}
    base = SigmaModel.for_matcher('sgm_torch')
    # the calibrated models and one with every term switched on (edge and step terms included)
    models = [base, SigmaModel.for_matcher('opencv_sgbm'),
              SigmaModel.for_matcher('opencv_sgbm', 'lr_full'),
              dataclasses.replace(base, e=1.5, j=0.7, j0=2.0)]
    for m in models:
        s_np = m.sigma_d(feats, d)
        s_t = m.sigma_d_torch(tf, torch.from_numpy(d)).numpy()
        np.testing.assert_allclose(s_t, s_np, rtol=1e-5, equal_nan=True)
        # the context-level entry point (used by the calibration tool) agrees on accepted pixels
        ok = np.isfinite(d)
        s_ctx = m.sigma_d_from_context({k: v[ok] for k, v in feats.items()}, d[ok], r_np[ok],
                                       h_np[ok], st_np[ok])
        np.testing.assert_allclose(s_ctx, s_np[ok], rtol=1e-6)


def test_edge_and_step_terms():
    """The two gross-error terms: disp_range * hole_frac and the hinge on the step above the
    lowest disparity nearby (foreground fattening); both 0 (unused) by default."""
    m0 = SigmaModel('x', a=0.1, b=0.0, c=0.0, h=0.0, g=0.0, t0=1.0)
    assert m0.e == 0 and m0.j == 0 and not m0.uses_step
    d = np.full((15, 15), 10.0, np.float32)
    d[:, 9:] = 4.0  # far surface on the right: a 6 px step at column 8 | 9
    feats = {'lr_diff': np.zeros_like(d), 'texture': np.full_like(d, 5.0)}
    step_m = dataclasses.replace(m0, j=0.5, j0=1.0)
    s = step_m.sigma_d(feats, d)
    # near side within 2 px of the step: sigma = hypot(a, j * (6 - j0)); far side: the floor
    assert s[7, 8] == pytest.approx(np.hypot(0.1, 0.5 * 5.0), rel=1e-5)
    assert s[7, 7] == pytest.approx(s[7, 8]) and s[7, 6] == pytest.approx(0.1, rel=1e-5)
    assert s[7, 9] == pytest.approx(0.1, rel=1e-5) and s[7, 12] == pytest.approx(0.1, rel=1e-5)
    # a smooth slope (0.25 px/column, step 0.5 px in the window) stays below j0
    ramp = np.tile(np.arange(15, dtype=np.float32) * 0.25, (15, 1))
    np.testing.assert_allclose(step_m.sigma_d(feats, ramp), 0.1, rtol=1e-5)
    # edge term: only where both the range and the rejected fraction are > 0
    edge_m = dataclasses.replace(m0, e=2.0)
    holes = d.copy()
    holes[:, 11:] = np.nan
    se = edge_m.sigma_d(feats, holes)
    rng_, hole_, _ = disparity_context(holes)
    want = np.hypot(0.1, 2.0 * rng_ * hole_)
    np.testing.assert_allclose(se[np.isfinite(holes)], want[np.isfinite(holes)], rtol=1e-5)
    assert se[7, 9] > 0.5 and se[7, 2] == pytest.approx(0.1, rel=1e-5)
    np.testing.assert_allclose(edge_m.sigma_d(feats, d), 0.1, rtol=1e-5)  # no holes: no term
    with pytest.raises(ValueError, match='step'):
        step_m.sigma_d_from_context(feats, d, rng_, hole_)
    for bad in (dict(e=-1.0), dict(j=np.nan), dict(j0=-0.5)):
        with pytest.raises(ValueError):
            dataclasses.replace(m0, **bad)
