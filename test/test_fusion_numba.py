"""core.fusion_numba (the DEM fusion stage in one compiled pass) against the numpy reference:
GeoPrior.height_consistency followed by fusion.fuse, on a synthetic frame over an analytic
height field (every class and flag of the contract) and on a frame of a synthetic world."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from geo_depth_node.core.camera import CameraModel
from geo_depth_node.core.contract import POINT_DTYPE, Flag, Provenance
from geo_depth_node.core.fusion import RAY_HIT, RAY_SKY, FusionConfig, fuse
from geo_depth_node.core.fusion_numba import available, fuse_frame
from geo_depth_node.core.geoprior import GeoPrior
from geo_depth_node.core.pipeline import FrameResult
from geo_depth_node.core.pose import PoseEstimate
from geo_depth_node.core.raycast import HeightField

pytestmark = pytest.mark.skipif(not available(), reason='numba is not installed')

UNAVAILABLE = 3
DSM_ID = 2
FB = 36.0  # f * B, px m
OUT_FIELDS = ('points', 'depth', 'depth_sigma', 'sigma')


class _Grid:
    """The part of dem.LocalHeightGrid that GeoPrior uses."""

    def __init__(self, field: HeightField) -> None:
        self.field = field


def _prior(field: HeightField, gate_k: float = 3.0) -> GeoPrior:
    prior = GeoPrior.__new__(GeoPrior)  # without DEM files: the grid is given
    prior.grid = _Grid(field)
    prior.fusion = FusionConfig(gate_k=gate_k)
    prior._ray_cache = None
    return prior


def _terrain(x, y):
    """Analytic rolling terrain, ENU metres, rising to the east."""
    return 3.0 * np.sin(x / 37.0) + 2.0 * np.cos(y / 23.0) + 0.02 * x


def _field(dtype: torch.dtype) -> HeightField:
    """The terrain on a 2 m grid, with a nodata hole; sigma_v larger in the east."""
    cell = 2.0
    xs = np.arange(-100.0, 500.0 + cell, cell)
    ys = np.arange(-300.0, 300.0 + cell, cell)
    x, y = np.meshgrid(xs, ys)
    h = _terrain(x, y)
    h[(x > 150) & (x < 170) & (y > -20) & (y < 10)] = np.nan
    sv = np.where(x > 200.0, 0.6, 0.3)
    src = np.where(x > 250.0, DSM_ID, 1).astype(np.int32)
    return HeightField(torch.tensor(h, dtype=dtype), xs[0], ys[0], cell, source=src,
                       sigma_v=torch.tensor(sv, dtype=dtype), sigma_h=0.5)


def _rot(axis: int, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i] = r[j, j] = c
    r[i, j], r[j, i] = -s, s
    return r


def _pose(degraded: bool) -> PoseEstimate:
    # looking east (optical z = ENU x), pitched 6 deg down, a little roll and yaw
    r = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    r = _rot(2, 3.0) @ r @ _rot(0, -6.0) @ _rot(2, 1.5)
    p = np.array([0.0, 0.0, _terrain(0.0, 0.0) + 8.0])
    return PoseEstimate(R_enu_base=np.eye(3), p_enu_base=p, R_enu_cam=r, p_enu_cam=p,
                        position_cov=np.diag([0.04, 0.04, 0.09]),
                        rpy_sigma=np.array([2e-3, 1e-3, 5e-3]), degraded=degraded, reasons=[])


def _model(w: int = 160, h: int = 120) -> CameraModel:
    f = 0.75 * w
    k = [f, 0.0, w / 2, 0.0, f, h / 2, 0.0, 0.0, 1.0]
    p = [f, 0.0, w / 2 + 0.3, 0.0, 0.0, f, h / 2 - 0.2, 0.0, 0.0, 0.0, 1.0, 0.0]
    rect = _rot(1, 2.0) @ _rot(0, -0.7)  # a rectifying rotation: camera rays != rectified
    return CameraModel.from_arrays(w, h, k, [0.0] * 5, rect.reshape(-1).tolist(), p,
                                   'plumb_bob', 'cam')


def _true_range(pose: PoseEstimate, d_enu: np.ndarray, max_range_m: float = 400.0
                ) -> np.ndarray:
    """First crossing of each ENU ray with the analytic terrain (NaN: none), metres."""
    o = pose.p_enu_cam

    def f(t):
        p = o + d_enu * t[:, None]
        return p[:, 2] - _terrain(p[:, 0], p[:, 1])

    n = d_enu.shape[0]
    lo, hi = np.zeros(n), np.full(n, np.nan)
    found = np.zeros(n, bool)
    for t in np.arange(0.5, max_range_m, 0.5):
        below = ~found & (f(np.full(n, t)) <= 0)
        hi[below] = t
        lo[below] = t - 0.5
        found |= below
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        neg = f(np.nan_to_num(mid)) <= 0
        hi = np.where(found & neg, mid, hi)
        lo = np.where(found & ~neg, mid, lo)
    return np.where(found, hi, np.nan)


def _synthetic(seed: int, *, degraded: bool, field64: bool = False, prior64: bool = False,
               packed: bool = False):
    """A frame with MEASURED / NONE points, priors HIT / SKY / UNAVAILABLE and the weak
    stereo inputs: (prior, result, pose, model, ray_unit, norm, priors dict, weak)."""
    rng = np.random.default_rng(seed)
    field = _field(torch.float64 if field64 else torch.float32)
    prior, pose, model = _prior(field), _pose(degraded), _model()
    d_cam, ray_unit, norm = prior.rays(model, True)
    h, w = norm.shape
    d_enu = d_cam.reshape(-1, 3) @ pose.R_enu_cam.T
    r_true = _true_range(pose, d_enu).reshape(h, w)
    hit_xyz = pose.p_enu_cam + d_enu.reshape(h, w, 3) * r_true[..., None]
    in_hole = np.isnan(field.sample(hit_xyz[..., 0], hit_xyz[..., 1]).double().numpy())
    # priors: HIT with a small range error, SKY where no crossing, UNAVAILABLE in the hole
    # and at random
    hit = np.isfinite(r_true) & ~in_hole
    unavailable = (np.isfinite(r_true) & in_hole) | (hit & (rng.random((h, w)) < 0.05))
    hit &= ~unavailable
    status = np.where(hit, RAY_HIT, np.where(unavailable, UNAVAILABLE, RAY_SKY))
    pr = np.where(hit, r_true * (1 + rng.normal(0, 0.003, (h, w))), np.nan)
    ps = np.where(hit, 0.1 + 0.02 * r_true, np.nan)
    wide = hit & (rng.random((h, w)) < 0.08)  # not usable alone (relative sigma > 0.5)
    ps[wide] = pr[wide] * rng.uniform(0.3, 0.9, wide.sum())
    ij = np.argwhere(hit)[rng.choice(hit.sum(), 6, replace=False)]
    pr[tuple(ij[0])] = np.nan  # HIT without a finite range or sigma, or with sigma 0
    ps[tuple(ij[1])] = np.nan
    ps[tuple(ij[2])] = 0.0
    source = np.where(hit, np.where(hit_xyz[..., 0] > 250.0, DSM_ID, 1), 0)
    # stereo: MEASURED near the camera (noisy, some objects in front of the terrain, some
    # points floating a few metres above it, some against the sky), NONE elsewhere
    near = np.isfinite(r_true) & (r_true < 120.0)
    meas = near & (rng.random((h, w)) < 0.7)
    r_s = r_true * (1 + rng.normal(0, 0.004, (h, w)))
    obj = meas & (rng.random((h, w)) < 0.1)
    r_s[obj] *= rng.uniform(0.5, 0.9, obj.sum())
    lift = meas & ~obj & (rng.random((h, w)) < 0.1)  # a few metres above the DEM
    r_s[lift] -= rng.uniform(2.0, 6.0, lift.sum()) / np.maximum(-d_enu.reshape(h, w, 3)[..., 2],
                                                                  0.02)[lift]
    r_s[lift] = np.maximum(r_s[lift], 1.0)
    ps[lift] = np.where(hit[lift], 0.45 * pr[lift], ps[lift])  # a wide range gate
    sky_meas = (status == RAY_SKY) & (rng.random((h, w)) < 0.05)
    meas |= sky_meas
    r_s[sky_meas] = rng.uniform(20.0, 80.0, sky_meas.sum())
    s_s = 0.01 + 1e-4 * r_s ** 2
    r_s = np.where(meas, r_s, np.nan).astype(np.float32)
    sig = np.where(meas, s_s, np.nan).astype(np.float32)
    pts = (ray_unit * r_s[..., None]).astype(np.float32)
    flags = np.zeros((h, w), np.uint16)
    reasons = np.array([Flag.BEYOND_RESOLUTION, Flag.NO_MATCH, Flag.LR_INCONSISTENT,
                        Flag.OUT_OF_VIEW | Flag.NO_MATCH], dtype=np.uint16)
    none = ~meas
    flags[none] = reasons[rng.choice(4, none.sum(), p=[0.55, 0.2, 0.15, 0.1])]
    beyond = (flags & Flag.BEYOND_RESOLUTION) != 0
    depth = np.where(meas, r_s / norm, np.where(beyond, np.inf, np.nan)).astype(np.float32)
    prov = np.where(meas, Provenance.MEASURED, Provenance.NONE).astype(np.uint8)
    if packed:  # the views of a packed cloud, as the compiled triangulation leaves them
        cloud = np.zeros((h, w), POINT_DTYPE)
        points = np.ndarray((h, w, 3), dtype=np.float32, buffer=cloud,
                            strides=(w * POINT_DTYPE.itemsize, POINT_DTYPE.itemsize, 4))
        points[...] = pts
        for k, v in (('sigma', sig), ('provenance', prov), ('flags', flags)):
            cloud[k] = v
        pts, sig, prov, flags = points, cloud['sigma'], cloud['provenance'], cloud['flags']
        src_out = cloud['source']
    else:
        cloud, src_out = None, np.zeros((h, w), np.uint16)
    # the matcher's disparity beyond the stereo limit: agreeing with the prior, or not; some
    # NaN, some without a sigma
    d_prior = FB * norm / np.where(hit, pr, np.nan)
    disp = np.where(beyond, d_prior + rng.normal(0, 0.1, (h, w)), np.nan)
    off = beyond & (rng.random((h, w)) < 0.3)
    disp[off] += rng.choice([-1.0, 1.0], off.sum()) * rng.uniform(0.5, 3.0, off.sum())
    disp[beyond & (rng.random((h, w)) < 0.05)] = np.nan
    s_d = np.where(beyond, 0.25, np.nan)
    s_d[beyond & (rng.random((h, w)) < 0.05)] = 0.0
    res = FrameResult(depth=depth, depth_sigma=(sig / norm).astype(np.float32), points=pts,
                      sigma=sig, provenance=prov, flags=flags, source=src_out,
                      disparity=disp.astype(np.float32),
                      sigma_disparity=s_d.astype(np.float32), timings_ms={}, packed=cloud)
    fdt = np.float64 if prior64 else np.float32
    idt = np.int64 if prior64 else (np.int8, np.int32)
    priors = {'range': pr.astype(fdt), 'sigma': ps.astype(fdt),
              'status': status.astype(idt if prior64 else idt[0]),
              'source': source.astype(idt if prior64 else idt[1])}
    weak = (res.disparity, res.sigma_disparity, d_prior)
    return prior, res, pose, model, ray_unit, norm, priors, weak


def _reference(prior, res, pose, model, ray_unit, norm, pri, weak, ids, consistent=True):
    """GeoPrior.height_consistency + fusion.fuse on a copy of ``res``: (copy, counts)."""
    ref = copy.deepcopy(res)
    ok = prior.height_consistency(ref, pose, model) if consistent else None
    counts = fuse(ref, ray_unit, norm, pri['range'], pri['sigma'], pri['status'], pri['source'],
                  prior.fusion, pose_degraded=pose.degraded, surface_model_ids=ids,
                  consistent=ok, weak_stereo=weak)
    return ref, counts


def _compiled(prior, res, pose, d_cam, ray_unit, norm, pri, weak, ids):
    got = copy.deepcopy(res)
    counts = fuse_frame(got, prior.grid.field, pose, d_cam, ray_unit, norm, pri['range'],
                        pri['sigma'], pri['status'], pri['source'], prior.fusion,
                        surface_model_ids=ids, weak_stereo=weak)
    return got, counts


def _assert_same(got, ref, counts_got, counts_ref):
    assert counts_got == counts_ref
    for k in ('provenance', 'flags', 'source'):
        a, b = getattr(got, k), getattr(ref, k)
        assert a.dtype == b.dtype and a.shape == b.shape, k
        np.testing.assert_array_equal(a, b, err_msg=k)
    for k in OUT_FIELDS:
        a, b = getattr(got, k), getattr(ref, k)
        assert a.dtype == b.dtype and a.shape == b.shape, k
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0, equal_nan=True, err_msg=k)
        assert ((a == b) | (np.isnan(a) & np.isnan(b))).all(), k  # bit-equal in practice
    assert got.packed is None and ref.packed is None


@pytest.mark.parametrize('seed, degraded, use_weak, variant', [
    (1, False, False, {}),
    (2, True, True, {}),
    (3, False, True, {'packed': True}),
    (4, True, False, {'field64': True, 'prior64': True}),
])
def test_compiled_fusion_equals_numpy(seed, degraded, use_weak, variant):
    prior, res, pose, model, ray_unit, norm, pri, weak = _synthetic(seed, degraded=degraded,
                                                                    **variant)
    weak = weak if use_weak else None
    ids = [DSM_ID, 9]
    d_cam = prior.rays(model, True)[0]
    ref, counts_ref = _reference(prior, res, pose, model, ray_unit, norm, pri, weak, ids)
    got, counts = _compiled(prior, res, pose, d_cam, ray_unit, norm, pri, weak, ids)
    _assert_same(got, ref, counts, counts_ref)
    # the data exercise every class and rule
    assert counts_ref['fused'] > 300 and counts_ref['prior'] > 300, counts_ref
    assert counts_ref['conflict'] > 100 and counts_ref['measured'] > 200, counts_ref
    assert (counts_ref['prior_ruled_out'] > 20) == use_weak, counts_ref
    flags = ref.flags
    for f in (Flag.PRIOR_CONFLICT, Flag.PRIOR_UNAVAILABLE, Flag.SKY, Flag.PRIOR_SURFACE_MODEL):
        assert ((flags & f) != 0).sum() > 20, f.name
    assert ((flags & Flag.POSE_DEGRADED) != 0).any() == degraded
    # the height test decides pixels the range gate alone passes
    _, counts_range = _reference(prior, res, pose, model, ray_unit, norm, pri, weak, ids,
                                 consistent=False)
    assert counts_range['fused'] - counts_ref['fused'] > 20, (counts_range, counts_ref)


def test_height_gate_decided_in_the_field_dtype():
    """Stereo points on either side of the height gate, one float32 step apart (found by
    bisecting each pixel's range with the numpy test): the compiled test decides each as
    numpy does, which needs the terrain sampled in the field's float32 as HeightField.sample
    does (in float64 a few of them change sides)."""
    rng = np.random.default_rng(7)
    field = _field(torch.float32)
    prior, pose, model = _prior(field), _pose(False), _model()
    d_cam, ray_unit, norm = prior.rays(model, True)
    h, w = norm.shape
    r_true = _true_range(pose, d_cam.reshape(-1, 3) @ pose.R_enu_cam.T).reshape(h, w)
    near = np.isfinite(r_true) & (r_true < 150.0)
    sig = np.where(near, 0.05, np.nan).astype(np.float32)
    nan = np.full((h, w), np.nan, np.float32)

    def frame(r):
        pts = (ray_unit * np.where(near, r, np.nan)[..., None]).astype(np.float32)
        return FrameResult(depth=nan.copy(), depth_sigma=nan.copy(), points=pts, sigma=sig,
                           provenance=near.astype(np.uint8), flags=np.zeros((h, w), np.uint16),
                           source=np.zeros((h, w), np.uint16), disparity=nan, sigma_disparity=nan,
                           timings_ms={})

    def consistent(r):
        return prior.height_consistency(frame(r), pose, model)

    lo = np.where(near, r_true, 1.0).astype(np.float32)  # on the terrain: consistent
    hi = (0.5 * lo).astype(np.float32)  # far above it: not
    keep = near & consistent(lo) & ~consistent(hi)
    for _ in range(40):
        mid = (0.5 * (lo.astype(np.float64) + hi)).astype(np.float32)
        c = consistent(mid)
        lo = np.where(keep & c, mid, lo)
        hi = np.where(keep & ~c, mid, hi)
    assert keep.sum() > 1000
    assert (np.nextafter(lo, hi) == hi)[keep].all()  # one float32 step apart
    r = np.where(rng.random((h, w)) < 0.5, lo, hi)
    res = frame(r)
    pri = {'range': np.where(near, r_true, np.nan).astype(np.float32),
           'sigma': np.where(near, 0.3 * r_true, np.nan).astype(np.float32),  # range gate: wide
           'status': np.where(near, RAY_HIT, RAY_SKY).astype(np.int8),
           'source': np.ones((h, w), np.int32)}
    ref, counts_ref = _reference(prior, res, pose, model, ray_unit, norm, pri, None, ())
    got, counts = _compiled(prior, res, pose, d_cam, ray_unit, norm, pri, None, ())
    _assert_same(got, ref, counts, counts_ref)
    assert counts['fused'] > 500 and counts['conflict'] > 500, counts


def test_compiled_fusion_without_stereo_points():
    """No MEASURED point (the height test has nothing to judge): priors only."""
    prior, res, pose, model, ray_unit, norm, pri, weak = _synthetic(5, degraded=False)
    meas = res.provenance == Provenance.MEASURED
    res.provenance[meas] = Provenance.NONE
    res.points[meas] = np.nan
    res.sigma[meas] = np.nan
    res.flags[meas] = Flag.NO_MATCH
    d_cam = prior.rays(model, True)[0]
    ref, counts_ref = _reference(prior, res, pose, model, ray_unit, norm, pri, weak, ())
    got, counts = _compiled(prior, res, pose, d_cam, ray_unit, norm, pri, weak, ())
    _assert_same(got, ref, counts, counts_ref)
    assert counts['prior'] > 1000 and counts['fused'] == 0


def test_compiled_fusion_refuses_bad_shapes():
    prior, res, pose, model, ray_unit, norm, pri, weak = _synthetic(6, degraded=False)
    d_cam = prior.rays(model, True)[0]
    field = prior.grid.field
    args = [pri['range'], pri['sigma'], pri['status'], pri['source'], prior.fusion]
    with pytest.raises(ValueError, match=r'ray_unit has shape \(120, 159, 3\)'):
        fuse_frame(res, field, pose, d_cam, ray_unit[:, :-1], norm, *args)
    with pytest.raises(ValueError, match=r'prior_range has shape \(119, 160\)'):
        fuse_frame(res, field, pose, d_cam, ray_unit, norm, pri['range'][1:], *args[1:])
    with pytest.raises(ValueError, match=r'weak_stereo prior_disparity has shape \(120, 1\)'):
        fuse_frame(res, field, pose, d_cam, ray_unit, norm, *args,
                   weak_stereo=(weak[0], weak[1], weak[2][:, :1]))
    with pytest.raises(ValueError, match='prior_sigma must be float32 or float64, got int64'):
        fuse_frame(res, field, pose, d_cam, ray_unit, norm, pri['range'],
                   pri['sigma'].astype(np.int64), *args[2:])


def test_compiled_fusion_on_a_synthetic_world_frame(tmp_path):
    """A frame of a synthetic world (stereo pipeline, pose, DEM ray-cast) fused both ways."""
    pytest.importorskip('rasterio')
    pytest.importorskip('rosbags')
    from geo_depth_node.core.camera import StereoModel
    from geo_depth_node.synth.config import SynthConfig
    from geo_depth_node.tools.prior_coverage import load_world

    cfg = SynthConfig(seed=300, frames=1, width=160, height=120)
    pipe, _, pairs, lm, rm = load_world(tmp_path, cfg, {})
    georef, pipe.georef = pipe.georef, None  # stereo only, then the fusion by hand
    stereo = StereoModel.from_cameras(lm, rm)
    stamp, left, right = pairs[0]
    res = pipe.process(left, right, lm, rm)
    pose, why = georef.pose.pose_at(stamp)
    assert pose is not None, why
    prior = georef.ensure_prior(pipe.params)
    pri = prior.cast(pose, lm)
    pri = {'range': pri['range_m'], 'sigma': pri['sigma_m'], 'status': pri['status'],
           'source': pri['source']}
    d_cam, ray_unit, norm = prior.rays(lm, bool(pipe.params.get('output.unrectify_points', True)))
    with np.errstate(divide='ignore', invalid='ignore'):
        d_prior = float(stereo.fb) * norm / pri['range'] + float(stereo.delta_cx)
    weak = (res.disparity, res.sigma_disparity, d_prior)
    ids = prior.surface_model_ids
    ref, counts_ref = _reference(prior, res, pose, lm, ray_unit, norm, pri, weak, ids)
    got, counts = _compiled(prior, res, pose, d_cam, ray_unit, norm, pri, weak, ids)
    _assert_same(got, ref, counts, counts_ref)
    assert counts_ref['fused'] > 100 and counts_ref['prior'] > 100, counts_ref
