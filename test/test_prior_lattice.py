"""The CPU prior cast (core.prior_lattice) and the BVH safe start (core.raycast_embree) against
the full exact march: every pixel's status, and ranges to the refinement tolerance, including
silhouettes, a nodata hole, spikes and a camera over the hole; the compiled hit terms against
raycast's hit geometry (the reference)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from geo_depth_node.core import prior_lattice
from geo_depth_node.core.raycast import HeightField, PoseCovariance, RayStatus, raycast
from geo_depth_node.core.raycast_embree import (TerrainBvh, bvh_available, envelope_heights,
                                                envelope_triangles)
from test_raycast import _camera_rays, _rolling_field
from test_raycast_numba import _spiky_field

needs_numba = pytest.mark.skipif(not prior_lattice.available(), reason='numba is not installed')
needs_bvh = pytest.mark.skipif(not bvh_available(), reason='open3d is not installed')

W, H = 320, 240
#: (camera x, y, height above the terrain), pitch, yaw: views with sky, silhouettes of crests
#: in front of farther terrain, the nodata hole and spikes in view
CASES = (((0.0, 0.0, 4.0), -6.0, 30.0), ((-30.0, 10.0, 2.0), -2.0, 160.0),
         ((80.0, -90.0, 15.0), -12.0, 110.0), ((50.0, 20.0, 12.0), -2.0, 250.0))


def _with_bvh(field: HeightField) -> HeightField:
    f = HeightField(field.height, field.x0_m, field.y0_m, field.cell_m, field.source,
                    field.sigma_v, field.sigma_h)
    assert f.build_bvh()
    return f


def _origin(field, x, y, above):
    z = float(field.sample(np.array([x]), np.array([y]))[0])
    return np.array([x, y, (z if np.isfinite(z) else 20.0) + above])


def _norm(w, h, f):
    u, v = np.meshgrid(np.arange(w) - w / 2 + 0.5, np.arange(h) - h / 2 + 0.5)
    return np.sqrt(1 + (u / f) ** 2 + (v / f) ** 2)


def test_envelope_is_never_below_the_bilinear_surface():
    """The chosen triangulation of every cell is at or above the bilinear patch (dense check
    over 400 random cells), and nodes around nodata are raised above the highest terrain."""
    rng = np.random.default_rng(1)
    h = rng.normal(0, 3, (21, 21))
    h[5, 7] = np.nan
    z, wall = envelope_heights(h)
    assert wall == pytest.approx(np.nanmax(h) + 1.0)
    assert np.all(z[4:7, 6:9] == wall) and z[8, 10] == h[8, 10]
    tri = envelope_triangles(z)
    assert tri.shape == (2 * 20 * 20, 3)
    zf = z.reshape(-1)
    xs = np.arange(21)
    worst = np.inf
    for i, j in rng.integers(0, 20, (400, 2)):
        h00, h01, h10, h11 = z[i, j], z[i, j + 1], z[i + 1, j], z[i + 1, j + 1]
        u, v = np.meshgrid(np.linspace(0, 1, 11), np.linspace(0, 1, 11))
        bil = h00 + u * (h01 - h00) + v * (h10 - h00) + u * v * (h00 - h01 - h10 + h11)
        # the two triangles of this cell, evaluated by barycentric interpolation
        env = np.full_like(bil, -np.inf)
        for t in tri[[i * 20 + j, 400 + i * 20 + j]]:
            p = np.stack([xs[t % 21] - j, xs[t // 21] - i], 1).astype(float)  # (3, 2) (u, v)
            m = np.linalg.inv(np.array([[p[0, 0], p[1, 0], p[2, 0]],
                                        [p[0, 1], p[1, 1], p[2, 1]], [1, 1, 1]]))
            lam = np.einsum('ij,jkl->ikl', m, np.stack([u, v, np.ones_like(u)]))
            inside = np.all(lam >= -1e-12, axis=0)
            env = np.where(inside, np.maximum(env, np.einsum('i,ikl->kl', zf[t], lam)), env)
        worst = min(worst, float(np.min(env - bil)))
    assert worst >= -1e-9, worst


@needs_numba
@needs_bvh
@pytest.mark.parametrize('make', [_rolling_field, _spiky_field], ids=['rolling', 'spikes'])
def test_bvh_safe_start_gives_the_march_s_answer(make):
    """With the BVH the march starts late on its own lattice: every status and range equals
    the march from the camera (4 views x 76 800 rays; 0 differ)."""
    plain = make('cpu') if make is _rolling_field else make()
    fast = _with_bvh(plain)
    seen: set[int] = set()
    for (x, y, above), pitch, yaw in CASES:
        o = _origin(plain, x, y, above)
        d = _camera_rays(W, H, W * 0.8, pitch_deg=pitch, yaw_deg=yaw)
        ref = raycast(plain, o, d, max_range_m=300.0, march='numba')
        got = raycast(fast, o, d, max_range_m=300.0, march='numba')
        assert torch.equal(ref.status, got.status)
        np.testing.assert_array_equal(ref.range_m.numpy(), got.range_m.numpy())
        seen |= set(np.unique(got.status.numpy()).tolist())
    assert {RayStatus.HIT, RayStatus.SKY, RayStatus.UNAVAILABLE} <= seen


@needs_numba
@needs_bvh
def test_bvh_start_from_inside_the_envelope_is_zero():
    """A camera over the nodata hole (or below the envelope) gets start 0: the march runs
    from the camera, as without a BVH; a ray that meets no triangle gets +inf."""
    field = _with_bvh(_rolling_field('cpu'))
    bvh: TerrainBvh = field.bvh
    hole = np.array([[-200.0 + 2 * 70 + 1, -200.0 + 2 * 127 + 1, 30.0]])  # over the hole
    up = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, -0.8]])
    start = bvh.safe_start(torch.tensor(hole), torch.tensor(up)).numpy()
    assert np.all(start == 0.0)
    over = np.array([[0.0, 0.0, 100.0]])
    start = bvh.safe_start(torch.tensor(over), torch.tensor(up / np.linalg.norm(
        up, axis=1, keepdims=True))).numpy()
    assert start[0] == np.inf and 0 < start[1] < np.inf


@needs_numba
@pytest.mark.parametrize('stride', [2, 4, 8])
@pytest.mark.parametrize('make', [_rolling_field, _spiky_field], ids=['rolling', 'spikes'])
def test_lattice_cast_equals_the_full_cast(stride, make):
    """Every pixel's status of the lattice cast equals the full exact cast, and every range
    (1 mm) on rolling terrain, crest silhouettes included; most inner pixels are found
    between their neighbours. Its one assumption fails only for features narrower than the
    lattice spacing: among 300 one-node spikes (2-12 m high on 2 m cells) 13 / 39 / 147 of
    206 807 hit rays at stride 2 / 4 / 8 hit the terrain behind a spike instead of it."""
    field = make('cpu') if make is _rolling_field else make()
    field.build_bvh()
    f_px = W * 0.8
    norm = _norm(W, H, f_px)
    n_near = n_exact = n_sil = n_hit = n_off = 0
    for (x, y, above), pitch, yaw in CASES:
        o = _origin(field, x, y, above)
        d = _camera_rays(W, H, f_px, pitch_deg=pitch, yaw_deg=yaw).reshape(H, W, 3)
        ref_st, ref_r, _ = prior_lattice.cast_frame(field, o, d, norm, max_range_m=300.0,
                                                    stride=1)
        st, r, info = prior_lattice.cast_frame(field, o, d, norm, max_range_m=300.0,
                                               stride=stride)
        np.testing.assert_array_equal(st, ref_st)
        hit = ref_st == RayStatus.HIT
        n_hit += int(hit.sum())
        n_off += int((np.abs(r[hit] - ref_r[hit]) > 1e-3).sum())
        # silhouettes: a HIT beside a SKY or a range jump of > 30 % to a neighbour
        with np.errstate(invalid='ignore'):
            jump = np.zeros_like(hit)
            jump[:, 1:] |= ~(np.abs(np.diff(ref_r, axis=1)) <= 0.3 * ref_r[:, 1:])
            jump[1:, :] |= ~(np.abs(np.diff(ref_r, axis=0)) <= 0.3 * ref_r[1:, :])
        n_sil += int((jump & hit).sum())
        n_near += info['near'] + info['guessed']
        n_exact += info['exact']
    assert n_sil > 100  # the views have silhouettes
    allowed = 0 if make is _rolling_field else 2e-4 * stride * n_hit
    assert n_off <= allowed, (n_off, n_hit)
    assert n_near > 0.4 * len(CASES) * W * H, (n_near, n_exact)


@needs_numba
def test_hit_terms_equal_the_reference_hit_geometry():
    """The compiled sigma terms equal raycast's _hit_geometry (float32 field, full pose
    covariance) to 1e-4 relative."""
    field = _rolling_field('cpu')
    o = _origin(field, 0.0, 0.0, 4.0)
    d = _camera_rays(160, 120, 128.0, pitch_deg=-6.0, yaw_deg=30.0)
    a = np.array([[1.0, 0.2, 0.1], [0.2, 2.0, 0.3], [0.1, 0.3, 1.5]])
    cov = PoseCovariance(a * 0.04, a * 1e-5)
    ref = raycast(field, o, d, max_range_m=300.0, pose_cov=cov, march='numba')
    hit = (ref.status == RayStatus.HIT).numpy()
    assert hit.sum() > 5000
    t = prior_lattice.hit_terms(field, o, d[hit], ref.range_m.double().numpy()[hit], cov)
    s = ref.sigma_m.double().numpy()[hit]
    sv = ref.sigma_vertical_m.double().numpy()[hit]
    sa = ref.sigma_attitude_m.double().numpy()[hit]
    # the reference rounds its sigmas to float32: 1e-4 relative at grazing rays
    np.testing.assert_allclose(np.sqrt(t['var_rest'] + t['var_vert'] + t['var_att']), s,
                               rtol=1e-4)
    np.testing.assert_allclose(np.sqrt(t['var_vert']), sv, rtol=1e-4)
    np.testing.assert_allclose(np.sqrt(t['var_att']), sa, rtol=1e-4)
    np.testing.assert_array_equal(t['source'], ref.source.numpy()[hit])
    np.testing.assert_allclose(t['sin_g'], np.sin(ref.grazing_rad.double().numpy()[hit]),
                               rtol=1e-5, atol=1e-7)


def test_interpolate_lattice_is_exact_on_linear_images_and_nan_near_gaps():
    """Bilinear between lattice pixels: a linear image comes back exactly; a NaN corner
    makes its cells NaN."""
    yy, xx = np.mgrid[0:23, 0:31].astype(float)
    img = 2.0 * xx - 0.5 * yy + 3.0
    lat = np.full_like(img, np.nan)
    ly, lx = prior_lattice.lattice_index(23, 4), prior_lattice.lattice_index(31, 4)
    lat[np.ix_(ly, lx)] = img[np.ix_(ly, lx)]
    np.testing.assert_allclose(prior_lattice.interpolate_lattice(lat, 4), img, atol=1e-12)
    lat[4, 8] = np.nan
    out = prior_lattice.interpolate_lattice(lat, 4)
    assert np.isnan(out[5, 9]) and np.isnan(out[2, 6]) and np.isfinite(out[10, 14])
    with pytest.raises(ValueError):
        prior_lattice.lattice_index(10, 0)


@needs_numba
@needs_bvh
@pytest.mark.parametrize('make', [_rolling_field, _spiky_field], ids=['rolling', 'spikes'])
def test_rays_above_the_horizon_meet_nothing(make):
    """Rays the camera's horizon clears are never a HIT of the full march (4 views), and it
    clears most of the SKY rays (so they skip the BVH)."""
    field = _with_bvh(make('cpu') if make is _rolling_field else make())
    n_sky = n_claimed_sky = 0
    for (x, y, above), pitch, yaw in CASES:
        o = _origin(field, x, y, above)
        d = _camera_rays(W, H, W * 0.8, pitch_deg=pitch, yaw_deg=yaw)
        claimed = field.bvh.above_horizon(o, d, 300.0)
        ref = raycast(HeightField(field.height, field.x0_m, field.y0_m, field.cell_m), o, d,
                      max_range_m=300.0, march='numba').status.numpy()
        assert not np.any(claimed & (ref == RayStatus.HIT))
        n_sky += int((ref == RayStatus.SKY).sum())
        n_claimed_sky += int((claimed & (ref == RayStatus.SKY)).sum())
    assert n_sky > 10000 and n_claimed_sky > 0.5 * n_sky, (n_claimed_sky, n_sky)
