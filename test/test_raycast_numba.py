"""The numba CPU ray-march (core.raycast_numba) against the torch loop, and the auto fallback.

test_raycast.py runs its closed-form, status and sigma tests with both CPU marches; here the two
are compared ray by ray on rolling terrain with a nodata hole, a spike, sky and grazing rays.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from geo_depth_node.core import raycast as rc
from geo_depth_node.core.raycast import RayStatus, raycast
from geo_depth_node.core.raycast_numba import numba_available
from test_raycast import _camera_rays, _plane_field, _rolling_field

needs_numba = pytest.mark.skipif(not numba_available(), reason='numba is not installed')


def _first_crossing(field, o, d, r_max, ds=0.01):
    """Dense reference: the first sample (every ``ds`` m) with z_ray <= terrain, or None."""
    ts = np.arange(0.0, r_max + ds, ds)
    p = o[None, :] + ts[:, None] * d[None, :]
    f = p[:, 2] - field.sample(p[:, 0], p[:, 1]).double().numpy()
    below = f <= 0
    return float(ts[np.argmax(below)]) if below.any() else None


@needs_numba
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_numba_march_equals_torch_loop(dtype):
    """Statuses, ranges (2 mm) and sigma of the torch loop for 99.9 % of 3 poses x 160x120 rays.

    The two sample the rays at different places (the numba march takes slope-bound steps), so
    a ray grazing a feature thinner than ``step`` may be caught by one and missed by the
    other; where their ranges differ, the nearer one must be a real crossing and the first one
    a dense (1 cm) reference finds, to 2 cm."""
    field = _rolling_field('cpu')
    field = type(field)(field.height.to(dtype), field.x0_m, field.y0_m, field.cell_m,
                        sigma_v=0.5, sigma_h=0.5)
    seen: set[int] = set()
    checked = 0
    w, h = 160, 120
    for (x, y, above), pitch, yaw in (((0.0, 0.0, 4.0), -12.0, 30.0),
                                      ((-30.0, 10.0, 2.0), -3.0, 160.0),
                                      ((80.0, -90.0, 15.0), -25.0, 110.0)):
        o = np.array([x, y, float(field.sample(np.array([x]), np.array([y]))[0]) + above])
        d = _camera_rays(w, h, w * 0.8, pitch_deg=pitch, yaw_deg=yaw)
        ref = raycast(field, o, d, max_range_m=400.0, march='torch')
        got = raycast(field, o, d, max_range_m=400.0, march='numba')
        st_r, st_g = ref.status.numpy(), got.status.numpy()
        assert (st_r == st_g).mean() >= 0.999, np.unique(st_r[st_r != st_g])
        both = (st_r == RayStatus.HIT) & (st_g == RayStatus.HIT)
        r_r, r_g = ref.range_m.double().numpy(), got.range_m.double().numpy()
        close = both & (np.abs(r_r - r_g) <= 2e-3)
        assert close.sum() >= 0.999 * both.sum(), (both.sum() - close.sum(), both.sum())
        for i in np.flatnonzero(both & ~close):
            near = min(r_r[i], r_g[i])
            first = _first_crossing(field, o, d[i], near + 1.0)
            assert first is not None and abs(first - near) < 0.02, (i, r_r[i], r_g[i], first)
        np.testing.assert_allclose(got.sigma_m.numpy()[close], ref.sigma_m.numpy()[close],
                                   rtol=1e-3)
        checked += int(close.sum())
        seen |= set(np.unique(st_g).tolist())
    assert {RayStatus.HIT, RayStatus.SKY, RayStatus.UNAVAILABLE} <= seen, seen
    assert checked > 0.3 * 3 * w * h


def _spiky_field(seed=3):
    """Rolling terrain plus 300 one-node spikes 2-12 m high: features a step longer than the
    slope bound allows would jump over."""
    from geo_depth_node.core.raycast import HeightField

    f = _rolling_field('cpu', seed=seed)
    h = f.height.clone()
    rng = np.random.default_rng(seed)
    iy, ix = rng.integers(60, 140, 300), rng.integers(60, 140, 300)
    h[iy, ix] += torch.tensor(rng.uniform(2.0, 12.0, 300), dtype=h.dtype)
    return HeightField(h, f.x0_m, f.y0_m, f.cell_m)


@needs_numba
def test_numba_march_slope_steps_never_cross_the_terrain():
    """With a fine step of 5 cm (thin features barely matter) the numba march, whose slope-bound
    steps are metres long, finds the torch loop's crossings among 300 spikes: statuses and
    ranges (2 mm) differ for at most 0.1 % of the rays (2 + 2 of 9216 measured; a slope bound
    5x too small makes it 132 + 62)."""
    field = _spiky_field()
    n_rays = n_bad = n_hit = 0
    for (x, y, above), pitch, yaw in (((0.0, 0.0, 3.0), -6.0, 40.0), ((50.0, 20.0, 12.0), -2.0, 250.0),
                                      ((-20.0, -30.0, 6.0), -10.0, 130.0)):
        o = np.array([x, y, float(field.sample(np.array([x]), np.array([y]))[0]) + above])
        d = _camera_rays(64, 48, 50.0, pitch_deg=pitch, yaw_deg=yaw)
        ref = raycast(field, o, d, max_range_m=250.0, step_m=0.05, march='torch')
        got = raycast(field, o, d, max_range_m=250.0, step_m=0.05, march='numba')
        hit = (ref.status == RayStatus.HIT) & (got.status == RayStatus.HIT)
        n_bad += int((ref.status != got.status).sum())
        n_bad += int(((ref.range_m - got.range_m).abs()[hit] > 2e-3).sum())
        n_hit += int(hit.sum())
        n_rays += d.shape[0]
    assert n_hit > 0.5 * n_rays
    assert n_bad <= 0.001 * n_rays, (n_bad, n_rays)


@needs_numba
def test_numba_march_nodata_inside_a_bracket():
    """A one-node nodata hole met during the bisection makes the ray UNAVAILABLE, as in the
    torch loop (not a HIT through the hole)."""
    f = _plane_field(0.0, 0.0, 0.0, cell=1.0, half=40.0)
    hgt = f.height.clone()
    hgt[40, 60] = float('nan')  # the node at x = 20 m, y = 0
    hgt[75, 5] = 5.0  # z_max above the camera: the ray is marched from 0
    f = type(f)(hgt, f.x0_m, f.y0_m, f.cell_m)
    o = np.array([0.0, 0.0, 2.0])
    tx, ty = np.meshgrid(np.linspace(19.2, 20.8, 9), np.linspace(-0.8, 0.8, 5))
    d = np.stack([tx.ravel(), ty.ravel(), -2.0 * np.ones(tx.size)], -1)
    n_unavailable = 0
    for step in (2.5, 3.0, 3.7):
        ref = raycast(f, o, d, max_range_m=60.0, step_m=step, march='torch')
        got = raycast(f, o, d, max_range_m=60.0, step_m=step, march='numba')
        assert torch.equal(got.status, ref.status), step
        n_unavailable += int((ref.status == RayStatus.UNAVAILABLE).sum())
        both = (ref.status == RayStatus.HIT).numpy()
        np.testing.assert_allclose(got.range_m.numpy()[both], ref.range_m.numpy()[both], atol=2e-3)
    assert n_unavailable > 0


@needs_numba
def test_compiled_march_failure_falls_back_to_the_torch_loop(monkeypatch, caplog):
    """A compiled march that fails in auto mode is logged once and the torch loop answers, now
    and for the rest of the process; a forced march re-raises."""
    from geo_depth_node.core import raycast_numba

    def broken(*_a, **_k):
        raise RuntimeError('no compiler here')

    monkeypatch.setattr(raycast_numba, 'march', broken)
    monkeypatch.setattr(rc, '_KERNEL_BROKEN', [])
    f = _plane_field(0.05, 0.02, 1.0, half=200.0)
    o = np.array([0.0, 0.0, 8.0])
    d = _camera_rays(40, 30, 32.0)
    ref = raycast(f, o, d, max_range_m=150.0, march='torch')
    assert rc._auto_march(torch.device('cpu'), torch.float32) == 'numba'
    with caplog.at_level('WARNING'):
        got = raycast(f, o, d, max_range_m=150.0)
    assert torch.equal(got.status, ref.status)
    np.testing.assert_array_equal(got.range_m.numpy(), ref.range_m.numpy())
    assert 'no compiler here' in caplog.text and rc._KERNEL_BROKEN == ['numba']
    assert rc._auto_march(torch.device('cpu'), torch.float32) == 'torch'  # not tried again
    raycast(f, o, d, max_range_m=150.0)
    assert rc._KERNEL_BROKEN == ['numba']
    with pytest.raises(RuntimeError, match='no compiler here'):
        raycast(f, o, d, max_range_m=150.0, march='numba')


def test_march_argument_is_checked(monkeypatch):
    f = _plane_field(0.0, 0.0, 0.0, half=20.0)
    d = _camera_rays(4, 3, 4.0)
    with pytest.raises(ValueError, match='march must be one of'):
        raycast(f, np.array([0.0, 0.0, 2.0]), d, max_range_m=10.0, march='fast')
    from geo_depth_node.core import raycast_numba

    monkeypatch.setattr(raycast_numba, 'numba_available', lambda: False)
    assert rc._auto_march(torch.device('cpu'), torch.float32) == 'torch'
    with pytest.raises(ValueError, match='numba is not installed'):
        raycast(f, np.array([0.0, 0.0, 2.0]), d, max_range_m=10.0, march='numba')


def test_geoprior_refuses_a_march_its_device_cannot_run():
    from geo_depth_node.core.geoprior import GeoPrior

    with pytest.raises(ValueError, match='march must be one of'):
        GeoPrior([], None, device='cpu', march='fastest')
    with pytest.raises(ValueError, match="'triton' cannot run on the DEM device cpu"):
        GeoPrior([], None, device='cpu', march='triton')
