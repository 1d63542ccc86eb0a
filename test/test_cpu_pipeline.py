"""The CPU frame path (OpenCV SGBM matcher, calibrated sigma, triangulation, packing).

The production code is vectorised for speed (no masked assignments, reused scratch buffers,
outputs carved out of one allocation); these tests hold it to plain, obviously-correct
reference implementations (masked numpy, one fresh array per quantity), check the depth-image
conventions at every class of pixel, that a frame's outputs are not touched by the next
frame, and the bench's ``--pipeline`` mode. Triangulation and packing run in two
implementations (numpy passes + pack_points, or one compiled numba pass that also packs,
core.triangulate_numba); the tests that touch them run with both (``tail`` fixture).
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from geo_depth_node.core.camera import CameraModel, StereoModel, ray_norms
from geo_depth_node.core.cloud import pack_points
from geo_depth_node.core.contract import POINT_DTYPE, Flag, Provenance
from geo_depth_node.core.images import Workspace, alloc_arrays
from geo_depth_node.core.pipeline import DepthPipeline
from geo_depth_node.core.scene import render_scene
from geo_depth_node.core.stereo import MatcherConfig, OpenCVStereoMatcher
from geo_depth_node.core.triangulate_numba import numba_available

TAILS = ['numpy', pytest.param('numba', marks=pytest.mark.skipif(
    not numba_available(), reason='numba is not installed'))]


# --------------------------------------------------------------------------- references
def _disp(sgbm, left, right, min_disparity):
    raw = sgbm.compute(left, right)
    d = raw.astype(np.float32) / 16
    d[raw < min_disparity * 16] = np.nan
    return d


def _reference_match(m: OpenCVStereoMatcher, left, right, left_valid=None, right_valid=None):
    """OpenCVStereoMatcher.match written plainly (the SGBM objects are the matcher's own, the
    right pass with the search range the matcher's last call set: checked separately)."""
    c = m.config
    h, w = left.shape
    d = _disp(m._sgbm, left, right, c.min_disparity)
    grad = np.abs(cv2.Sobel(left, cv2.CV_32F, 1, 0, ksize=3)) / 8
    tex = cv2.boxFilter(grad, -1, (c.texture_window,) * 2, borderType=cv2.BORDER_REFLECT)
    no_match = np.isnan(d) | (tex < c.min_texture)
    x_match = np.arange(w)[None, :] - np.where(no_match, 0, d)
    xr = np.rint(x_match).astype(int)
    oov = np.zeros((h, w), bool)
    band = np.arange(w)[None, :] < c.max_disparity
    oov |= band & (no_match | (x_match < 0))
    if left_valid is not None:
        oov |= ~left_valid
    if right_valid is not None:
        inside = (xr >= 0) & (xr < w)
        rv = np.zeros((h, w), bool)
        rows = np.broadcast_to(np.arange(h)[:, None], (h, w))
        rv[inside] = right_valid[rows[inside], xr[inside]]
        oov |= ~no_match & ~rv
    lr = np.zeros((h, w), np.float32)
    bad = np.zeros((h, w), bool)
    if c.lr_check:
        if c.lr_check_resolution == 'full':
            dr = _disp(m._right, right[:, ::-1].copy(), left[:, ::-1].copy(),
                       m._right_min)[:, ::-1]
            sx, sy, scale = xr, np.broadcast_to(np.arange(h)[:, None], (h, w)), 1
        else:
            lh, rh = cv2.pyrDown(left), cv2.pyrDown(right)
            dr = _disp(m._right, rh[:, ::-1].copy(), lh[:, ::-1].copy(), m._right_min)[:, ::-1]
            sx = np.rint(x_match / 2).astype(int)
            sy = np.broadcast_to(np.rint(np.arange(h) / 2).astype(int)[:, None], (h, w))
            scale = 2
        ok = ~no_match & (sx >= 0) & (sx < dr.shape[1]) & (sy < dr.shape[0])
        drs = np.full((h, w), np.nan, np.float32)
        drs[ok] = dr[sy[ok], sx[ok]] * scale
        checked = ok & ~np.isnan(drs)
        lr[checked] = np.abs(d[checked] - drs[checked])
        bad = checked & (lr > c.lr_max_diff_px)
    tc = ~no_match & (d >= c.max_disparity - 1)
    flags = np.zeros((h, w), np.uint16)
    flags[oov] |= np.uint16(Flag.OUT_OF_VIEW)
    flags[no_match & ~oov] |= np.uint16(Flag.NO_MATCH)
    flags[bad & ~oov] |= np.uint16(Flag.LR_INCONSISTENT)
    flags[tc & ~oov] |= np.uint16(Flag.TOO_CLOSE)
    d[flags != 0] = np.nan
    return d, lr, flags, tex


def _reference_triangulate(params, disparity, lr_diff, match_flags, stereo, sigma_d=None):
    """DepthPipeline._triangulate written plainly (dict of the FrameResult arrays)."""
    left = stereo.left
    h, w = disparity.shape
    matched = ~np.isnan(disparity)
    if sigma_d is None:
        sigma_d = np.sqrt(params['sigma.disparity_px'] ** 2
                          + (params['sigma.lr_gain'] * lr_diff.astype(np.float64)) ** 2)
    sigma_d = np.where(matched, sigma_d, np.nan)
    d_eff = disparity.astype(np.float64) - stereo.delta_cx
    with np.errstate(divide='ignore', invalid='ignore'):
        z = stereo.fb / d_eff
        rel = sigma_d / d_eff
    sigma_z = rel * z
    sigma_r = sigma_z * ray_norms(left)
    beyond = matched & ~((d_eff > 0) & (rel <= params['limit.max_relative_sigma']))
    if params['limit.max_sigma_m'] > 0:
        beyond |= matched & ~(sigma_r <= params['limit.max_sigma_m'])
    measured = matched & ~beyond
    flags = match_flags.copy()
    flags[beyond] |= np.uint16(Flag.BEYOND_RESOLUTION)
    depth = np.full((h, w), np.nan)
    depth[measured] = z[measured]
    depth[beyond] = np.inf
    depth[(match_flags & Flag.TOO_CLOSE) != 0] = -np.inf
    zm = np.where(measured, z, np.nan)
    u = (np.arange(w) - left.cx) / left.fx
    v = (np.arange(h) - left.cy) / left.fy
    pts = np.stack([u[None, :] * zm, v[:, None] * zm, zm], -1)
    if params['output.unrectify_points']:
        pts = pts @ left.R  # p_cam = R^T p_rect, row vectors
    return {'depth': depth, 'depth_sigma': np.where(measured, sigma_z, np.nan),
            'sigma': np.where(measured, sigma_r, np.nan), 'points': pts, 'flags': flags,
            'provenance': np.where(measured, Provenance.MEASURED, Provenance.NONE),
            'sigma_disparity': sigma_d}


# --------------------------------------------------------------------------- fixtures
def _models(scene, R=None):
    h, w = scene.left.shape
    R = np.eye(3) if R is None else R
    lm = CameraModel.from_arrays(w, h, scene.K, np.zeros(5), R, scene.P_left)
    rm = CameraModel.from_arrays(w, h, scene.K, np.zeros(5), R, scene.P_right)
    return lm, rm


@pytest.fixture(scope='module')
def scene():
    return render_scene(320, 240, seed=2)


@pytest.fixture(params=TAILS)
def tail(request):
    """The host triangulation + packing implementation (DepthPipeline.frame_tail)."""
    return request.param


def _pipeline(params, tail):
    pl = DepthPipeline(params)
    pl.frame_tail = tail
    return pl


def _masks(h, w):
    lv = np.ones((h, w), bool)
    lv[:10] = False
    lv[:, -25:] = False
    rv = np.ones((h, w), bool)
    rv[:, :70] = False
    rv[-12:] = False
    return lv, rv


# --------------------------------------------------------------------------- matcher
@pytest.mark.parametrize('resolution', ['half', 'full'])
@pytest.mark.parametrize('masks', [False, True])
def test_matcher_equals_reference(scene, resolution, masks):
    m = OpenCVStereoMatcher(MatcherConfig(num_disparities=48, lr_check_resolution=resolution))
    h, w = scene.left.shape
    lv, rv = _masks(h, w) if masks else (None, None)
    for _ in range(2):  # the second call runs on reused scratch buffers
        r = m.match(scene.left, scene.right, lv, rv)
    d, lr, flags, tex = _reference_match(m, scene.left, scene.right, lv, rv)
    np.testing.assert_array_equal(r.flags, flags)
    np.testing.assert_array_equal(r.disparity, d)  # NaN in the same places
    np.testing.assert_allclose(r.lr_diff, lr, atol=1e-6)
    np.testing.assert_allclose(r.features['texture'], tex, rtol=1e-5, atol=1e-5)
    assert r.features['lr_diff'] is r.lr_diff
    counts = {f.name: int(((flags & f) != 0).sum()) for f in (Flag.NO_MATCH, Flag.OUT_OF_VIEW,
                                                                Flag.LR_INCONSISTENT)}
    assert all(counts.values()), counts  # every label is exercised


@pytest.mark.parametrize('resolution, scale', [('half', 2), ('full', 1)])
def test_right_pass_searches_the_accepted_range(scene, resolution, scale):
    """The right pass covers every disparity that may be accepted, and no more than needed."""
    m = OpenCVStereoMatcher(MatcherConfig(num_disparities=64, lr_check_resolution=resolution))
    r = m.match(scene.left, scene.right)
    lo, nd = m._right.getMinDisparity(), m._right.getNumDisparities()
    acc = r.disparity[np.isfinite(r.disparity)]
    assert acc.size > 10000
    # with a margin, except where the configured range ends (min_disparity 0)
    assert lo * scale <= max(acc.min() - 1, 0) and acc.max() + 1 <= (lo + nd - 1) * scale
    assert nd * scale < 64 and nd % 16 == 0  # the scene uses fewer disparities than searched
    # a scene without any accepted pixel: no right pass, nothing checked
    flat = np.full_like(scene.left, 128)
    r = m.match(flat, flat)
    assert not r.lr_diff.any() and np.isnan(r.disparity).all()


def test_matcher_without_lr_check_and_odd_sizes():
    sc = render_scene(203, 97, seed=4)  # odd sizes: the half-resolution level rounds up
    for cfg in (MatcherConfig(num_disparities=32), MatcherConfig(num_disparities=32,
                                                                 lr_check=False),
                MatcherConfig(num_disparities=32, min_disparity=-3)):
        m = OpenCVStereoMatcher(cfg)
        r = m.match(sc.left, sc.right)
        d, lr, flags, _ = _reference_match(m, sc.left, sc.right)
        np.testing.assert_array_equal(r.flags, flags)
        np.testing.assert_array_equal(r.disparity, d)
        np.testing.assert_allclose(r.lr_diff, lr, atol=1e-6)
        if not cfg.lr_check:
            assert not r.lr_diff.any() and 'match_right' not in r.timings_ms


def test_matcher_config_errors():
    with pytest.raises(ValueError, match='lr_check_resolution'):
        MatcherConfig(lr_check_resolution='quarter')
    # an image no wider than the disparity range: a clear error (OpenCV itself fails with an
    # assertion or tries to allocate 18 EB); one pixel wider works
    m = OpenCVStereoMatcher(MatcherConfig(num_disparities=128))
    img = (np.random.default_rng(0).random((48, 128)) * 255).astype(np.uint8)
    with pytest.raises(ValueError, match='image width 128 px must exceed'):
        m.match(img, img)
    img = (np.random.default_rng(0).random((48, 129)) * 255).astype(np.uint8)
    assert m.match(img, img).disparity.shape == (48, 129)
    with pytest.raises(ValueError, match='texture window'):
        from geo_depth_node.core.stereo import texture_map
        texture_map(np.zeros((8, 8), np.uint8), 4)


# --------------------------------------------------------------------------- triangulation
@pytest.mark.parametrize('params', [
    {},
    {'sigma.model': 'constant', 'limit.max_sigma_m': 0.5},
    {'limit.max_relative_sigma': 0.02},
])
def test_triangulate_equals_reference(scene, params, tail):
    tilt = 0.02
    R = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    lm, rm = _models(scene, R)
    pl = _pipeline(dict(params, **{'stereo.num_disparities': 32}), tail)
    stereo = StereoModel.from_cameras(lm, rm)
    m = pl.matcher.match(scene.left, scene.right)
    d = m.disparity.copy()
    flags = m.flags.copy()
    # a few TOO_CLOSE pixels (the scene has none at this range) and tiny disparities
    d[5:8, 100:110] = np.nan
    flags[5:8, 100:110] = np.uint16(Flag.TOO_CLOSE)
    d[200:205, 200:220] = 0.3
    flags[200:205, 200:220] = 0
    sd = pl.sigma_model.sigma_d(m.features, d) if pl.sigma_model is not None else None
    r = pl._triangulate(d, m.lr_diff, flags, stereo, sd)
    assert (r.packed is not None) == (tail == 'numba')
    ref = _reference_triangulate(pl.params, d, m.lr_diff, flags, stereo, sd)
    for k in ('depth', 'depth_sigma', 'sigma', 'points', 'sigma_disparity'):
        np.testing.assert_allclose(getattr(r, k), ref[k], rtol=2e-6, atol=1e-6, err_msg=k)
    np.testing.assert_array_equal(r.flags, ref['flags'])
    np.testing.assert_array_equal(r.provenance, ref['provenance'])
    assert not r.source.any()
    # REP-117 at every class of pixel
    assert np.isneginf(r.depth[5:8, 100:110]).all()
    beyond = (r.flags & Flag.BEYOND_RESOLUTION) != 0
    assert beyond[200:205, 200:220].all() and np.isposinf(r.depth[beyond]).all()
    meas = r.provenance == Provenance.MEASURED
    assert meas.sum() > 1000
    assert np.array_equal(np.isfinite(r.depth), meas)
    assert np.array_equal(np.isfinite(r.depth_sigma), meas)
    assert np.array_equal(np.isfinite(r.sigma), meas)
    assert np.isnan(r.points[~meas]).all() and np.isfinite(r.points[meas]).all()


def test_pack_points_bytes(scene, tail):
    lm, rm = _models(scene)
    r = _pipeline({'stereo.num_disparities': 32}, tail).process(scene.left, scene.right, lm, rm)
    ref = np.zeros(r.shape, POINT_DTYPE)
    for i, k in enumerate('xyz'):
        ref[k] = r.points[..., i]
    for k in ('sigma', 'provenance', 'flags', 'source'):
        ref[k] = getattr(r, k)
    cloud = pack_points(r)
    assert cloud.flags.c_contiguous and cloud.dtype == POINT_DTYPE
    assert cloud.tobytes() == ref.tobytes()
    sparse = pack_points(r, organized=False)
    keep = r.provenance.reshape(-1) != Provenance.NONE
    assert sparse.dtype == POINT_DTYPE and sparse.shape == (int(keep.sum()),)
    # whole records, zero padding included (README: padding bytes are zero)
    assert sparse.tobytes() == ref.view(np.uint8).reshape(-1, 24)[keep].tobytes()


def test_outputs_survive_the_next_frame(scene, tail):
    """Scratch buffers are reused between frames; the arrays of a result must not be."""
    lm, rm = _models(scene)
    pl = _pipeline({'stereo.num_disparities': 32}, tail)
    r1 = pl.process(scene.left, scene.right, lm, rm)
    names = ('depth', 'depth_sigma', 'points', 'sigma', 'provenance', 'flags', 'disparity',
             'sigma_disparity')
    snap = {k: getattr(r1, k).copy() for k in names}
    other = render_scene(320, 240, seed=9)
    r2 = pl.process(other.left, other.right, lm, rm)
    for k in names:
        np.testing.assert_array_equal(getattr(r1, k), snap[k], err_msg=k)
        assert not np.shares_memory(getattr(r1, k), getattr(r2, k)), k
    assert not np.array_equal(r1.disparity, r2.disparity, equal_nan=True)


@pytest.mark.skipif(not numba_available(), reason='numba is not installed')
@pytest.mark.parametrize('params', [{}, {'sigma.model': 'constant', 'limit.max_sigma_m': 0.5}])
@pytest.mark.parametrize('tilt', [0.0, 0.02])
def test_numba_tail_equals_numpy_tail(scene, params, tilt):
    """The compiled pass gives the numpy passes' bytes: same float32 operations in the same
    order. Only points rotated back by R^T (a matrix product in numpy) may differ, in the last
    bit."""
    R = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    lm, rm = _models(scene, R)
    out = {}
    for tail in ('numpy', 'numba'):
        r = _pipeline(dict(params, **{'stereo.num_disparities': 32}), tail).process(
            scene.left, scene.right, lm, rm)
        out[tail] = (r, pack_points(r))
    (a, ca), (b, cb) = out['numpy'], out['numba']
    assert b.packed is cb and a.packed is None
    for k in ('depth', 'depth_sigma', 'sigma', 'provenance', 'flags', 'source',
              'sigma_disparity'):
        np.testing.assert_array_equal(getattr(b, k), getattr(a, k), err_msg=k)
    if tilt == 0.0:
        assert cb.tobytes() == ca.tobytes()
    else:
        np.testing.assert_allclose(b.points, a.points, rtol=1e-6, atol=1e-6)
        for k in ('sigma', 'provenance', 'flags', 'source'):
            np.testing.assert_array_equal(cb[k], ca[k], err_msg=k)
    assert (a.provenance == Provenance.MEASURED).sum() > 1000


@pytest.mark.parametrize('error', [RuntimeError('no LLVM here'),
                                   ValueError('No threading layer could be loaded')])
def test_numba_tail_failure_falls_back_to_numpy(scene, monkeypatch, caplog, error):
    """A compiled pass that cannot run here (whatever numba raises, ValueError included) is
    logged once; the numpy passes answer, with the same result, from then on."""
    import geo_depth_node.core.pipeline as pipeline_mod
    import geo_depth_node.core.triangulate_numba as tn

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(tn, 'triangulate_pack', broken)
    monkeypatch.setattr(pipeline_mod, '_TAIL_BROKEN', [])
    lm, rm = _models(scene)
    ref = _pipeline({'stereo.num_disparities': 32}, 'numpy').process(
        scene.left, scene.right, lm, rm)
    pl = _pipeline({'stereo.num_disparities': 32}, 'numba')
    with caplog.at_level('WARNING'):
        r = pl.process(scene.left, scene.right, lm, rm)
    assert pl.frame_tail == 'numpy' and pipeline_mod._TAIL_BROKEN
    assert 'numba triangulation failed' in caplog.text and str(error) in caplog.text
    assert pack_points(r).tobytes() == pack_points(ref).tobytes()
    assert DepthPipeline({'stereo.num_disparities': 32}).frame_tail == 'numpy'


def test_numba_tail_refuses_bad_inputs():
    """Inputs the kernel cannot take are the caller's bug: TriangulateInputError names them
    (the pipeline re-raises it instead of falling back)."""
    from geo_depth_node.core.triangulate_numba import TriangulateInputError, triangulate_pack

    f32 = np.float32
    ok = np.zeros((2, 3), f32)
    args = [ok, ok, True, np.zeros((2, 3), np.uint16), ok, np.zeros(3, f32), np.zeros(2, f32),
            (1.0, 0.0, 0.1, 0.0, 0.2, 0.5), None, np.zeros((2, 3), POINT_DTYPE),
            ok.copy(), ok.copy(), ok.copy()]
    bad = list(args)
    bad[0] = np.zeros((2, 3), np.float64)
    with pytest.raises(TriangulateInputError, match='disparity must be'):
        triangulate_pack(*bad)
    bad = list(args)
    bad[9] = np.zeros((3, 2), POINT_DTYPE)
    with pytest.raises(TriangulateInputError, match='cloud must be'):
        triangulate_pack(*bad)


@pytest.mark.skipif(not numba_available(), reason='numba is not installed')
def test_warm_up_loads_the_compiled_kernels(monkeypatch):
    """DepthPipeline.warm_up makes the compiled triangulation ready before the first frame
    (the node and replay call it at start-up); without DEM sources nothing else is cast."""
    import geo_depth_node.core.pipeline as pipeline_mod
    import geo_depth_node.core.triangulate_numba as tn
    from geo_depth_node.core import raycast

    pl = DepthPipeline({'stereo.num_disparities': 32})
    took = pl.warm_up()
    assert set(took) == {'triangulation'} and took['triangulation'] >= 0
    assert tn._IMPL is not None
    assert raycast.warm_up('cpu', 'numba') > 0  # the DEM march's tiny cast runs
    with pytest.raises(ValueError, match='march must be one of'):
        raycast.warm_up('cpu', 'bogus')

    def broken():
        raise RuntimeError('no LLVM here')

    monkeypatch.setattr(tn, 'warm_up', broken)
    monkeypatch.setattr(pipeline_mod, '_TAIL_BROKEN', [])
    pl = DepthPipeline({'stereo.num_disparities': 32})
    assert pl.warm_up() == {} and pl.frame_tail == 'numpy'


# --------------------------------------------------------------------------- buffers
def test_workspace_and_alloc_arrays():
    ws = Workspace()
    a = ws.get('a', (4, 5), np.float32)
    assert ws.get('a', (4, 5), np.float32) is a
    assert ws.get('a', (4, 6), np.float32) is not a
    arrs = alloc_arrays([((480, 640), np.float32), ((480, 640, 3), np.float32),
                         ((480, 640), np.uint8), ((3,), np.uint16)])
    assert [x.shape for x in arrs] == [(480, 640), (480, 640, 3), (480, 640), (3,)]
    assert all(x.ctypes.data % 64 == 0 and x.flags.c_contiguous for x in arrs)
    assert arrs[0].ctypes.data % (2 << 20) == 0  # a large block starts on a huge page
    for i, x in enumerate(arrs):
        x[...] = i
    assert [int(x.reshape(-1)[0]) for x in arrs] == [0, 1, 2, 3]  # no overlap
    assert arrs[0].max() == 0 and arrs[1].min() == 1


# --------------------------------------------------------------------------- bench
def test_bench_pipeline_mode(capsys):
    from geo_depth_node.tools import bench

    r = bench.run_pipeline_bench('cpu', (160, 120), 32, iters=2, warmup=1)
    for key in ('device', 'size', 'disparities', 'stages_ms', 'total_ms',
                'baseline_opencv_sgbm_ms', 'ratio_to_baseline'):
        assert key in r, key
    assert r['size'] == '160x120' and r['disparities'] == 32 and r['matcher'] == 'opencv_sgbm'
    st = r['stages_ms']
    assert {'match_left', 'match_right', 'match_post', 'sigma', 'triangulate', 'pack'} <= set(st)
    assert r['baseline_opencv_sgbm_ms'] > 0 and r['ratio_to_baseline'] > 0
    assert bench.main(['--pipeline', '--device', 'cpu', '--size', '96x64', '--disparities', '16',
                       '--iters', '1', '--warmup', '0', '--json',
                       '--set', 'stereo.lr_check_resolution=full']) == 0
    out = json.loads(capsys.readouterr().out)
    assert out['lr_check_resolution'] == 'full' and out['size'] == '96x64'
    assert bench.main(['--pipeline', '--device', 'cpu', '--size', '96x64', '--disparities', '16',
                       '--iters', '1', '--warmup', '0', '--set', 'nonsense']) == 2


def test_bench_pipeline_with_georeferencing():
    """--scene synth-georef times the whole node frame with pose, DEM ray-cast and fusion."""
    from geo_depth_node.tools import bench

    r = bench.run_pipeline_bench('cpu', (128, 96), 32, iters=2, warmup=0, scene='synth-georef')
    st = r['stages_ms']
    assert {'match_left', 'sigma', 'triangulate', 'pose', 'dem_raycast', 'dem_sigma_points',
            'fusion', 'pack'} <= set(st), st
    assert all(v >= 0 for k, v in st.items() if k != 'other') and st['dem_raycast'] > 0
    # the pose and the cast run beside the stereo: the frame waited dem_wait for them
    assert 'dem_wait' in st
    assert r['total_ms'] >= sum(v for k, v in st.items()
                                if k != 'other' and k not in bench.BESIDE_STEREO) - 1e-6
    assert r['classes']['FUSED'] + r['classes']['PRIOR'] > 0.1, r['classes']  # priors used
    from geo_depth_node.core.raycast_numba import numba_available

    if numba_available():  # the numba march against the torch loop on the same world
        m = r['dem_march']
        assert m['march'] == 'numba' and m['raycast_ms'] > 0 and m['torch_loop_raycast_ms'] > 0


def test_bench_device_mode_keys(capsys):
    """The matcher bench (``geo-depth bench``, issue 4's JSON contract) on the CPU."""
    from geo_depth_node.tools import bench

    assert bench.main(['--device', 'cpu', '--size', '96x64', '--disparities', '16', '--iters', '1',
                       '--warmup', '0', '--json']) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ('device', 'size', 'disparities', 'stages_ms', 'total_ms', 'baseline_opencv_sgbm_ms',
                'ratio_to_baseline'):
        assert key in out, key
    assert list(out['stages_ms']) == ['upload', 'cost', 'aggregate', 'select', 'postfilter', 'sigma',
                                      'triangulate', 'pack', 'download']
    assert abs(sum(out['stages_ms'].values()) - out['total_ms']) < 1e-3 * max(1.0, out['total_ms'])
    assert out['ratio_to_baseline'] == pytest.approx(out['total_ms'] / out['baseline_opencv_sgbm_ms'],
                                                     rel=1e-3)
