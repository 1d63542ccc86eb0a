"""Analytic tests of the core: disparity -> depth -> sigma, the resolution limit,
rectification, CameraInfo validation and image decoding."""
from __future__ import annotations

import numpy as np
import pytest

from geo_depth_node.core.camera import (CameraModel, Rectifier, StereoModel, distort_points,
                                        ray_norms)
from geo_depth_node.core.contract import (POINT_DTYPE, POINT_FIELDS, POINT_STEP, Flag,
                                          Provenance)
from geo_depth_node.core.images import ImageDecodeError, decode_image, to_gray8
from geo_depth_node.core.pipeline import DepthPipeline

W, H, F, B = 320, 240, 400.0, 0.12


def rig(width=W, height=H, f=F, baseline=B, cx_l=None, cx_r=None, cy=None, R=None, D=None,
        K=None):
    cx_l = (width - 1) / 2 if cx_l is None else cx_l
    cx_r = cx_l if cx_r is None else cx_r
    cy = (height - 1) / 2 if cy is None else cy
    K = K if K is not None else [f, 0, cx_l, 0, f, cy, 0, 0, 1]
    left = CameraModel.from_arrays(width, height, K, D if D is not None else [0] * 5,
                                   R if R is not None else np.eye(3),
                                   [f, 0, cx_l, 0, 0, f, cy, 0, 0, 0, 1, 0], 'plumb_bob',
                                   'left_optical')
    right = CameraModel.from_arrays(width, height, K, D if D is not None else [0] * 5,
                                    R if R is not None else np.eye(3),
                                    [f, 0, cx_r, -f * baseline, 0, f, cy, 0, 0, 0, 1, 0])
    return left, right


def test_depth_from_disparity_is_fb_over_d():
    left, right = rig()
    st = StereoModel.from_cameras(left, right)
    assert st.baseline_m == pytest.approx(B)
    d = np.array([1.0, 4.8, 48.0, 96.0, 0.0, -1.0], dtype=np.float32)
    z = st.depth_from_disparity(d)
    np.testing.assert_allclose(z[:4], F * B / d[:4], rtol=1e-6)
    assert np.isposinf(z[4]) and np.isposinf(z[5])
    np.testing.assert_allclose(st.disparity_from_depth(z[:4]), d[:4], rtol=1e-6)


def test_principal_point_offset_as_stereo_image_proc():
    """Z = f*B / (d - (cx_l - cx_r)), as image_geometry's StereoCameraModel."""
    left, right = rig(cx_l=170.0, cx_r=150.0)
    st = StereoModel.from_cameras(left, right)
    assert st.delta_cx == pytest.approx(20.0)
    z = st.depth_from_disparity(np.array([20.0 + 9.6], dtype=np.float32))
    assert z[0] == pytest.approx(F * B / 9.6, rel=1e-6)


def test_not_rectified_pair_is_rejected():
    left, _ = rig()
    _, right = rig(f=410.0)
    with pytest.raises(ValueError, match='fx'):
        StereoModel.from_cameras(left, right)
    l2, r2 = rig(baseline=-0.1)
    with pytest.raises(ValueError, match='baseline'):
        StereoModel.from_cameras(l2, r2)


@pytest.mark.parametrize('bad', [dict(K=[1, 2, 3]), dict(R=np.zeros((3, 3)) + 2),
                                 dict(D=[np.nan, 0, 0, 0, 0])])
def test_camera_info_validation(bad):
    with pytest.raises(ValueError):
        rig(**bad)


def _pipeline_on_disparity(disp: np.ndarray, params=None, **rig_kw):
    """Run the pipeline's triangulation/classification on a given disparity map."""
    left, right = rig(**rig_kw)
    pl = DepthPipeline(params or {})
    st = StereoModel.from_cameras(left, right)
    flags = np.zeros(disp.shape, dtype=np.uint16)
    flags[np.isnan(disp)] = Flag.NO_MATCH
    return pl, pl._triangulate(disp.astype(np.float32), np.zeros_like(disp, dtype=np.float32),
                               flags, st), left


def test_sigma_follows_the_physics():
    """sigma_Z = Z^2/(f B) sigma_d and sigma_r = sigma_Z |ray| on every MEASURED pixel."""
    rng = np.random.default_rng(1)
    disp = rng.uniform(8.0, 100.0, (H, W)).astype(np.float32)
    pl, r, left = _pipeline_on_disparity(disp, {'sigma.disparity_px': 0.25,
                                                'limit.max_relative_sigma': 0.2})
    assert np.all(r.provenance == Provenance.MEASURED)
    z = F * B / disp.astype(np.float64)
    np.testing.assert_allclose(r.depth, z, rtol=1e-5)
    np.testing.assert_allclose(r.depth_sigma, z ** 2 / (F * B) * 0.25, rtol=1e-5)
    np.testing.assert_allclose(r.sigma, r.depth_sigma * ray_norms(left), rtol=1e-5)
    # the points lie on their rays at range r = Z |ray|
    rng_m = np.linalg.norm(r.points, axis=-1)
    np.testing.assert_allclose(rng_m, z * ray_norms(left), rtol=1e-5)
    u, v = 17, 201
    assert r.points[v, u, 0] == pytest.approx((u - left.cx) / F * z[v, u], rel=1e-5)
    assert r.points[v, u, 1] == pytest.approx((v - left.cy) / F * z[v, u], rel=1e-5)


def test_resolution_limit_never_measures_beyond_it():
    """A point is MEASURED iff sigma_d/d <= max_relative_sigma; beyond: NONE + BEYOND_RESOLUTION."""
    disp = np.tile(np.linspace(0.1, 40.0, W, dtype=np.float32), (H, 1))
    disp[:, :3] = 0.0  # at infinity
    s_d, limit = 0.5, 0.05  # -> d >= 10 px is MEASURED
    _, r, _ = _pipeline_on_disparity(disp, {'sigma.disparity_px': s_d,
                                            'limit.max_relative_sigma': limit})
    measured = r.provenance == Provenance.MEASURED
    np.testing.assert_array_equal(measured, disp >= s_d / limit)
    assert np.all(np.isfinite(r.sigma[measured]))
    assert np.all(r.sigma[measured] / np.linalg.norm(r.points[measured], axis=-1) <= limit + 1e-6)
    beyond = ~measured
    assert np.all((r.flags[beyond] & Flag.BEYOND_RESOLUTION) != 0)
    assert np.all(r.provenance[beyond] == Provenance.NONE)
    assert np.all(np.isnan(r.points[beyond])) and np.all(np.isnan(r.sigma[beyond]))
    assert np.all(np.isposinf(r.depth[beyond]))  # REP-117: beyond range -> +Inf
    assert np.all(np.isnan(r.depth_sigma[beyond]))


def test_absolute_sigma_limit():
    disp = np.tile(np.linspace(1.0, 60.0, W, dtype=np.float32), (H, 1))
    _, r, left = _pipeline_on_disparity(disp, {'sigma.disparity_px': 0.3,
                                               'limit.max_relative_sigma': 1.0,
                                               'limit.max_sigma_m': 0.5})
    measured = r.provenance == Provenance.MEASURED
    assert measured.any() and (~measured).any()
    assert np.nanmax(r.sigma[measured]) <= 0.5
    z = F * B / disp
    sig_r = z ** 2 / (F * B) * 0.3 * ray_norms(left)
    np.testing.assert_array_equal(measured, sig_r <= 0.5 * (1 + 1e-6))


def test_unrectify_points_rotates_back_to_optical_frame():
    ang = np.deg2rad(3.0)
    R = np.array([[np.cos(ang), 0, np.sin(ang)], [0, 1, 0], [-np.sin(ang), 0, np.cos(ang)]])
    disp = np.full((H, W), 30.0, dtype=np.float32)
    _, r_rect, _ = _pipeline_on_disparity(disp, {'output.unrectify_points': False}, R=R)
    _, r_opt, _ = _pipeline_on_disparity(disp, {'output.unrectify_points': True}, R=R)
    p_rect = r_rect.points.reshape(-1, 3)
    np.testing.assert_allclose(r_opt.points.reshape(-1, 3), p_rect @ R, rtol=1e-5, atol=1e-5)
    # R p_opt = p_rect (CameraInfo: R maps the optical frame into the rectified frame)
    np.testing.assert_allclose(r_opt.points.reshape(-1, 3) @ R.T, p_rect, atol=1e-4)


def test_enu_output_places_rectified_and_optical_points_alike():
    """output.frame enu: the ENU cloud does not depend on output.unrectify_points. With false
    the points are in the rectified frame, so the pose of the optical frame is composed with
    R^T (p_cam = R^T p_rect) before it is applied, on the host and in the torch twin."""
    import torch

    from geo_depth_node.core.georef_torch import to_enu_torch
    from geo_depth_node.core.pipeline import points_to_enu

    ang = np.deg2rad(3.0)
    R = np.array([[np.cos(ang), 0, np.sin(ang)], [0, 1, 0], [-np.sin(ang), 0, np.cos(ang)]])
    disp = np.full((H, W), 30.0, dtype=np.float32)
    T = np.eye(4)
    T[:3, :3] = [[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]  # looking east, level
    T[:3, 3] = [10.0, -5.0, 2.0]
    enu = {}
    for unrect in (False, True):
        params = {'output.unrectify_points': unrect, 'output.frame': 'enu'}
        pl, r, left = _pipeline_on_disparity(disp, params, R=R)
        frame = {'points': torch.from_numpy(r.points.copy())}
        to_enu_torch(frame, points_to_enu(T, left, pl.params))
        r.T_enu_cam = T
        pl._to_enu(r, left)
        np.testing.assert_allclose(frame['points'].numpy(), r.points, atol=1e-4)
        enu[unrect] = r.points.reshape(-1, 3)
    np.testing.assert_allclose(enu[False], enu[True], atol=1e-4)
    assert np.ptp(enu[True][:, 1]) > 1.0  # not a degenerate cloud


def test_rectification_round_trip():
    """Project 3-D points into the raw (distorted, rotated) image; rectifying the raw image
    moves a blob there to the rectified projection P [R p]."""
    K = np.array([[F, 0, 160.0], [0, F, 120.0], [0, 0, 1]])
    D = np.array([-0.25, 0.08, 0.001, -0.0015, 0.0])
    ang = np.deg2rad(2.0)
    R = np.array([[1, 0, 0], [0, np.cos(ang), -np.sin(ang)], [0, np.sin(ang), np.cos(ang)]])
    P = np.array([[380.0, 0, 158.0, 0], [0, 380.0, 121.0, 0], [0, 0, 1, 0]])
    cam = CameraModel.from_arrays(W, H, K, D, R, P)
    rect = Rectifier()
    errs = []
    for p in ([0.3, -0.2, 2.0], [-0.5, 0.3, 3.0], [0.0, 0.0, 1.0], [0.6, 0.35, 2.5]):
        p = np.array(p)
        raw_uv = distort_points(p[None], cam)[0]
        img = np.zeros((H, W), np.float32)
        yy, xx = np.mgrid[0:H, 0:W]
        img[:] = np.exp(-((xx - raw_uv[0]) ** 2 + (yy - raw_uv[1]) ** 2) / (2 * 1.5 ** 2))
        out, valid = rect.rectify(img, cam)
        v, u = np.unravel_index(np.argmax(out), out.shape)
        win = out[v - 3:v + 4, u - 3:u + 4]
        ys, xs = np.mgrid[v - 3:v + 4, u - 3:u + 4]
        got = np.array([(win * xs).sum() / win.sum(), (win * ys).sum() / win.sum()])
        q = R @ p
        expect = (P[:, :3] @ q)[:2] / q[2]
        errs.append(np.linalg.norm(got - expect))
        assert valid[v, u]
    assert max(errs) < 0.15, errs


def test_point_layout_matches_pointcloud2_fields():
    assert POINT_DTYPE.itemsize == POINT_STEP == 24
    for name, offset, datatype, count in POINT_FIELDS:
        assert POINT_DTYPE.fields[name][1] == offset
        size = {2: 1, 4: 2, 7: 4}[datatype]
        assert POINT_DTYPE.fields[name][0].itemsize == size
        assert count == 1
    assert POINT_DTYPE.fields['x'][0].byteorder in ('<', '=')


def test_flag_bits_are_distinct_powers_of_two():
    bits = [int(f) for f in Flag]
    assert len(set(bits)) == len(bits)
    assert all(b & (b - 1) == 0 for b in bits)
    assert max(bits) < 1 << 16


# ------------------------------------------------------------------ image decoding
def test_decode_respects_step_and_endianness():
    img = np.arange(6 * 5, dtype=np.uint16).reshape(5, 6) * 1000
    padded = np.zeros((5, 16), dtype=np.uint8)
    padded[:, :12] = img.astype('>u2').view(np.uint8).reshape(5, 12)
    out = decode_image(padded.tobytes(), 6, 5, 'mono16', 16, is_bigendian=True)
    np.testing.assert_array_equal(out, img)
    rgb = np.random.default_rng(0).integers(0, 255, (4, 3, 3), dtype=np.uint8)
    buf = np.zeros((4, 12), np.uint8)
    buf[:, :9] = rgb.reshape(4, 9)
    np.testing.assert_array_equal(decode_image(buf.tobytes(), 3, 4, 'rgb8', 12), rgb)
    g_rgb = to_gray8(rgb, 'rgb8')
    g_bgr = to_gray8(rgb[..., ::-1].copy(), 'bgr8')
    np.testing.assert_array_equal(g_rgb, g_bgr)


@pytest.mark.parametrize('kwargs,match', [
    (dict(encoding='yuv422'), 'unsupported'),
    (dict(step=5), 'step'),
    (dict(height=100), 'bytes'),
    (dict(width=0), 'positive'),
])
def test_decode_errors_are_clear(kwargs, match):
    base = dict(data=bytes(8 * 4), width=8, height=4, encoding='mono8', step=8)
    base.update(kwargs)
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(**base)


def test_mono16_uses_one_scale_for_both_images():
    left = np.full((4, 4), 4000, np.uint16)
    right = np.full((4, 4), 2000, np.uint16)
    ref = float(left.max())
    assert to_gray8(left, 'mono16', 0, ref)[0, 0] == 255
    assert to_gray8(right, 'mono16', 0, ref)[0, 0] == 128
