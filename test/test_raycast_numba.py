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


def _compare(field, cases, w, h, max_range_m, step_m=None):
    """Cast each (origin, pitch, yaw) case with both marches; (rays, rays whose status or
    range (> 2 mm) differ, common hits, statuses seen)."""
    n = bad = hits = 0
    seen: set[int] = set()
    for (x, y, above), pitch, yaw in cases:
        o = np.array([x, y, float(field.sample(np.array([x]), np.array([y]))[0]) + above])
        d = _camera_rays(w, h, w * 0.8, pitch_deg=pitch, yaw_deg=yaw)
        ref = raycast(field, o, d, max_range_m=max_range_m, step_m=step_m, march='torch')
        got = raycast(field, o, d, max_range_m=max_range_m, step_m=step_m, march='numba')
        both = (ref.status == RayStatus.HIT) & (got.status == RayStatus.HIT)
        bad += int((ref.status != got.status).sum())
        bad += int(((ref.range_m - got.range_m).abs()[both] > 2e-3).sum())
        close = (both & ((ref.range_m - got.range_m).abs() <= 2e-3)).numpy()
        np.testing.assert_allclose(got.sigma_m.numpy()[close], ref.sigma_m.numpy()[close],
                                   rtol=1e-3)
        hits += int(both.sum())
        n += d.shape[0]
        seen |= set(np.unique(got.status.numpy()).tolist())
    return n, bad, hits, seen


@needs_numba
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_numba_march_equals_torch_loop(dtype):
    """The torch loop's statuses, ranges (2 mm) and sigma, 3 poses x 160x120 rays over rolling
    terrain with a nodata hole and a spike: both sample the rays on the same lattice
    t0 + k step (0 of 921 600 rays differed at 640x480; allowed: 1 in 10^4)."""
    field = _rolling_field('cpu')
    field = type(field)(field.height.to(dtype), field.x0_m, field.y0_m, field.cell_m,
                        sigma_v=0.5, sigma_h=0.5)
    cases = (((0.0, 0.0, 4.0), -12.0, 30.0), ((-30.0, 10.0, 2.0), -3.0, 160.0),
             ((80.0, -90.0, 15.0), -25.0, 110.0))
    n, bad, hits, seen = _compare(field, cases, 160, 120, 400.0)
    assert {RayStatus.HIT, RayStatus.SKY, RayStatus.UNAVAILABLE} <= seen, seen
    assert hits > 0.3 * n
    assert bad <= 1e-4 * n, (bad, n)


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
@pytest.mark.parametrize('step_m', [None, 0.05])
def test_numba_march_slope_steps_never_cross_the_terrain(step_m):
    """Among 300 spikes the numba march, whose slope-bound steps are metres long, finds the
    torch loop's crossings (0 of 18 432 rays differed over both steps; with a slope bound 5x
    too small, 285 did)."""
    cases = (((0.0, 0.0, 3.0), -6.0, 40.0), ((50.0, 20.0, 12.0), -2.0, 250.0),
             ((-20.0, -30.0, 6.0), -10.0, 130.0))
    n, bad, hits, _ = _compare(_spiky_field(), cases, 64, 48, 250.0, step_m)
    assert hits > 0.5 * n
    assert bad <= 1e-4 * n, (bad, n)


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


def high_camera_rays(n=20000, seed=1):
    """Random downward rays (z 0.3 of the horizontal spread) from 30 m over the rolling field:
    long coarse skips before the fine phase starts."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d[:, 2] = -np.abs(d[:, 2]) * 0.3
    return np.array([0.0, 0.0, 30.0]), d


#: rays of high_camera_rays() a march with a stale terrain value after coarse skips got wrong
STALE_FA_RAYS = [8028, 9847, 10643, 11207, 11266, 12187, 13525, 14577, 17104, 19524, 19660]


@needs_numba
def test_numba_march_after_coarse_skips():
    """The slope-bound steps of a fine phase are sized from the terrain where the phase starts,
    not from the last value before the coarse skips: with the stale value 11 of these 20 000
    rays jumped over their crossing (HIT turned UNAVAILABLE, or a range 70 m too far)."""
    field = _rolling_field('cpu')
    o, d = high_camera_rays()
    ref = raycast(field, o, d, max_range_m=400.0, march='torch')
    got = raycast(field, o, d, max_range_m=400.0, march='numba')
    both = (ref.status == RayStatus.HIT) & (got.status == RayStatus.HIT)
    assert int(both.sum()) > 10000
    assert torch.equal(got.status, ref.status)
    assert float((ref.range_m - got.range_m).abs()[both].max()) < 2e-3
    assert (ref.status[STALE_FA_RAYS] == RayStatus.HIT).all()


@needs_numba
def test_compiled_march_failure_falls_back_to_the_torch_loop(monkeypatch, caplog):
    """A compiled march that fails in auto mode is logged once and the torch loop answers, now
    and for the rest of the process; a forced march re-raises."""
    from geo_depth_node.core import raycast_numba

    def broken(*_a, **_k):
        raise RuntimeError('no compiler here')

    monkeypatch.setattr(raycast_numba, 'cast', broken)
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
