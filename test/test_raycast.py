"""Ray-casting into a height field: closed-form planes, statuses, sigma vs Monte Carlo, devices.

Every test runs with each CPU march of :func:`raycast` (the torch loop and, when numba is
installed, the compiled numba march) through the ``march`` fixture, which fixes what
``march='auto'`` picks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geo_depth_node.core.raycast import HeightField, PoseCovariance, RayStatus, raycast

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
MARCHES_CPU = ['torch', 'numba']


@pytest.fixture(autouse=True, params=MARCHES_CPU)
def march(request, monkeypatch):
    """The march that raycast(march='auto') uses on the CPU in this test."""
    from geo_depth_node.core import raycast as rc
    from geo_depth_node.core.raycast_numba import numba_available

    if request.param == 'numba' and not numba_available():
        pytest.skip('numba is not installed')
    auto = rc._auto_march
    monkeypatch.setattr(rc, '_auto_march',
                        lambda dev, dt: request.param if dev.type == 'cpu' else auto(dev, dt))
    return request.param


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """torch's CPU thread pool collapses when another process competes for the cores (measured
    here: 0.7 s with 1 thread vs 4-37 s with 2 under load); pin 1 thread for these tests."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _plane_field(a=0.0, b=0.0, c=0.0, *, cell=2.0, half=600.0, dtype=torch.float32, device='cpu',
                 sigma_v=0.0, sigma_h=0.0, source=3):
    """Height field of the plane z = a x + b y + c, nodes from -half to +half."""
    n = int(round(2 * half / cell)) + 1
    xs = -half + cell * np.arange(n)
    h = a * xs[None, :] + b * xs[:, None] + c
    return HeightField(torch.tensor(h, dtype=dtype, device=device), -half, -half, cell,
                       source=torch.full(h.shape, source, dtype=torch.int32),
                       sigma_v=sigma_v, sigma_h=sigma_h)


def _plane_range(o, d, a, b, c):
    """Closed-form range to z = a x + b y + c along unit rays d from o."""
    n = np.array([-a, -b, 1.0])
    p0 = np.array([0.0, 0.0, c])
    return ((p0 - o) @ n) / (d @ n)


def _unit(d):
    d = np.asarray(d, dtype=np.float64)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def _rot_rpy(roll, pitch, yaw):
    cr, sr, cp, sp, cy, sy = (math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch),
                              math.cos(yaw), math.sin(yaw))
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1.0]])
    ry = np.array([[cp, 0, sp], [0, 1.0, 0], [-sp, 0, cp]])
    rx = np.array([[1.0, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return rz @ ry @ rx


def _rolling_field(device, cell=2.0, n=201, seed=0):
    """Rolling terrain (sum of sines, up to ~25 m) with a nodata hole and a spike."""
    rng = np.random.default_rng(seed)
    xs = cell * np.arange(n) - cell * (n - 1) / 2
    x, y = np.meshgrid(xs, xs)
    h = np.zeros_like(x)
    for _ in range(6):
        k = rng.uniform(0.005, 0.05, 2)
        h += rng.uniform(1.0, 5.0) * np.sin(k[0] * x + k[1] * y + rng.uniform(0, 6.3))
    h[120:135, 60:80] = np.nan
    h[30, 170] = 60.0
    return HeightField(torch.tensor(h, dtype=torch.float32, device=device), xs[0], xs[0], cell,
                       sigma_v=0.5, sigma_h=0.5)


def _camera_rays(width=640, height=480, f=500.0, pitch_deg=-8.0, yaw_deg=30.0):
    """Unit ENU rays of a pinhole camera (optical frame: x right, y down, z forward)."""
    u, v = np.meshgrid(np.arange(width) - width / 2 + 0.5, np.arange(height) - height / 2 + 0.5)
    d_cam = np.stack([u / f, v / f, np.ones_like(u)], -1).reshape(-1, 3)
    # body x forward, y left, z up; optical = body rotated: z_opt = x_body, x_opt = -y_body
    opt_to_body = np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, -1.0, 0]])
    r = _rot_rpy(0.0, math.radians(-pitch_deg), math.radians(yaw_deg)) @ opt_to_body
    return _unit(d_cam @ r.T)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_flat_plane_ranges_match_closed_form(dtype):
    f = _plane_field(c=-3.0, dtype=dtype)
    o = np.array([5.0, -7.0, 1.5])
    elev = np.radians(np.array([-90.0, -60.0, -30.0, -10.0, -3.0, -1.0]))
    az = np.radians(np.linspace(0, 300, elev.size))
    d = np.stack([np.cos(elev) * np.cos(az), np.cos(elev) * np.sin(az), np.sin(elev)], -1)
    res = raycast(f, o, d, max_range_m=800.0)
    assert torch.all(res.status == RayStatus.HIT)
    np.testing.assert_allclose(f.sample([0.3, -599.0], [1.7, 599.0]).double().numpy(), [-3.0, -3.0])
    assert torch.isnan(f.sample([700.0], [0.0])).all()  # outside the grid
    r_true = 4.5 / -d[:, 2]
    err = np.abs(res.range_m.double().numpy() - r_true)
    assert err.max() < 1e-3, err
    np.testing.assert_allclose(res.point.double().numpy(), o + r_true[:, None] * d, atol=2e-3)
    np.testing.assert_allclose(res.normal.double().numpy(), np.tile([0, 0, 1.0], (elev.size, 1)), atol=1e-6)
    np.testing.assert_allclose(res.grazing_rad.double().numpy(), -elev, atol=1e-5)
    assert torch.all(res.source == 3)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_inclined_plane_full_image_matches_closed_form(dtype):
    a, b, c = 0.12, -0.05, 2.0
    f = _plane_field(a, b, c, cell=2.0, half=1000.0, dtype=dtype)
    o = np.array([10.0, 20.0, 12.0])
    d = _camera_rays(320, 240, 250.0)  # 77k rays (640x480 takes ~1 s on 2 idle cores)
    res = raycast(f, o, d, max_range_m=1500.0)
    hit = (res.status == RayStatus.HIT).numpy()
    r_true = _plane_range(o, d, a, b, c)
    np.testing.assert_allclose(f.sample([13.0, -501.5], [7.25, 250.0]).double().numpy(),
                               [a * 13.0 + b * 7.25 + c, a * -501.5 + b * 250.0 + c], atol=1e-4)
    n = _unit([-a, -b, 1.0])
    grazing = np.arcsin(-(d @ n))
    # every ray that meets the plane inside the grid and range is a HIT, and no other
    p_true = o + r_true[:, None] * d
    inside = (r_true > 0) & (r_true < 1500) & (np.abs(p_true[:, :2]) < 999.0).all(1)
    clear = inside & (grazing > math.radians(0.5))  # away from the grazing/edge ambiguity
    assert hit[clear].all() and not hit[~inside & (r_true < 0)].any()
    assert 0.3 < hit.mean() < 0.9
    err = np.abs(res.range_m.double().numpy() - r_true)
    if dtype == torch.float64:
        assert err[hit].max() < 1e-5, err[hit].max()  # bisection + secant: exact on a plane
    else:
        # float32 heights (~1.5e-5 m at 170 m) grow by 1 / sin(grazing) along the ray
        assert (err * np.sin(grazing))[hit].max() < 5e-5
        assert err[hit & (grazing > math.radians(3))].max() < 1e-3
    np.testing.assert_allclose(res.normal.double().numpy()[hit], np.tile(n, (hit.sum(), 1)), atol=1e-5)
    np.testing.assert_allclose(res.grazing_rad.double().numpy()[hit], grazing[hit], atol=1e-4)
    # everything else: upward rays are SKY (the grid is smaller than the range: by the
    # "leaves high" rule), the rest left the grid low and is UNAVAILABLE
    st = res.status.numpy()
    assert set(np.unique(st[~hit])) <= {int(RayStatus.SKY), int(RayStatus.UNAVAILABLE)}
    assert np.all(st[d[:, 2] > 0.3] == RayStatus.SKY)


def test_sky_definitions():
    f = _plane_field(c=0.0, half=300.0)
    o = np.array([0.0, 0.0, 2.0])
    up = _unit([[1.0, 0.0, 0.05], [0.0, 1.0, 0.0], [0.3, -0.2, 1.0]])
    # range inside the grid: nothing within range -> SKY whatever the option
    for option in (True, False):
        res = raycast(f, o, up, max_range_m=250.0, sky_outside_grid=option)
        assert torch.all(res.status == RayStatus.SKY)
        assert torch.all(torch.isnan(res.range_m)) and torch.all(res.source == 0)
    # range beyond the grid: leaving high and not descending -> SKY only with the option
    res = raycast(f, o, up, max_range_m=2000.0, sky_outside_grid=True)
    assert torch.all(res.status == RayStatus.SKY)
    res = raycast(f, o, up, max_range_m=2000.0, sky_outside_grid=False)
    assert torch.all(res.status == RayStatus.UNAVAILABLE)
    # a descending ray that would hit at 2000 m: SKY with max range 250 m (nothing within
    # range), UNAVAILABLE when the range reaches past the grid (it may hit outside)
    down = _unit([[1.0, 0.0, -0.001]])
    assert raycast(f, o, down, max_range_m=250.0).status.item() == RayStatus.SKY
    assert raycast(f, o, down, max_range_m=5000.0).status.item() == RayStatus.UNAVAILABLE
    # hill far beyond the horizon: a ray above the highest node leaving the grid is SKY
    hill = _plane_field(0.1, 0.0, 0.0, half=300.0)  # z up to 30 m at the east edge
    o2 = np.array([0.0, 0.0, 40.0])
    assert raycast(hill, o2, _unit([[1.0, 0.0, 0.0]]), max_range_m=1000.0).status.item() == RayStatus.SKY
    # the same ray from below the top of the hill hits it
    r = raycast(hill, np.array([0.0, 0.0, 20.0]), _unit([[1.0, 0.0, 0.0]]), max_range_m=1000.0)
    assert r.status.item() == RayStatus.HIT and abs(r.range_m.item() - 200.0) < 1e-3


def test_nodata_hole_is_unavailable_and_other_rays_still_hit():
    f = _plane_field(c=0.0, half=300.0)
    h = f.height.clone()
    h[150 + 20:150 + 40, 150 + 20:150 + 40] = float('nan')  # x, y in [40, 80) m
    h[25, 25] = 20.0  # a spike far away: the highest node, z_max = 20 m
    f = HeightField(h, f.x0_m, f.y0_m, f.cell_m)
    assert f.z_max == 20.0
    o = np.array([0.0, 0.0, 10.0])
    targets = np.array([[60.0, 60.0, 0.0], [-60.0, 60.0, 0.0], [120.0, 120.0, 0.0]])
    d = _unit(targets - o)
    res = raycast(f, o, d, max_range_m=500.0)
    st = res.status.tolist()
    assert st[0] == RayStatus.UNAVAILABLE  # lands in the hole
    assert st[1] == RayStatus.HIT
    assert st[2] == RayStatus.UNAVAILABLE  # passes over the hole below z_max: unknown
    assert abs(res.range_m[1].item() - np.linalg.norm(targets[1] - o)) < 1e-3
    assert math.isnan(res.sigma_m[0].item()) and res.source[0].item() == 0
    # passing over the hole above the highest node cannot touch it (by definition): HIT
    o_high = np.array([0.0, 0.0, 70.0])
    r = raycast(f, o_high, _unit(targets[2:] - o_high), max_range_m=500.0)
    assert r.status.item() == RayStatus.HIT
    assert abs(r.range_m.item() - np.linalg.norm(targets[2] - o_high)) < 1e-3


def test_origin_below_terrain_outside_grid_and_leaving_low():
    f = _plane_field(0.0, 0.0, 5.0, half=100.0)
    d = _unit([[1.0, 0.0, -0.1], [0.0, 0.0, 1.0]])
    res = raycast(f, np.array([0.0, 0.0, 4.0]), d, max_range_m=100.0)
    assert torch.all(res.status == RayStatus.BELOW_TERRAIN)
    res = raycast(f, np.array([500.0, 0.0, 10.0]), d, max_range_m=1000.0)
    assert torch.all(res.status == RayStatus.UNAVAILABLE)
    # a shallow ray leaving the grid below the highest node (= 5 m, flat) is unknown
    res = raycast(f, np.array([0.0, 0.0, 5.5]), _unit([[1.0, 0.0, -0.001]]), max_range_m=1000.0)
    assert res.status.item() == RayStatus.UNAVAILABLE


def test_per_ray_origins_and_bad_inputs():
    f = _plane_field(c=0.0, half=100.0)
    o = np.array([[0.0, 0.0, 2.0], [10.0, 0.0, 4.0]])
    d = _unit([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    np.testing.assert_allclose(raycast(f, o, d, max_range_m=50.0).range_m.numpy(), [2.0, 4.0], atol=1e-4)
    with pytest.raises(ValueError, match=r'directions must be \(N, 3\)'):
        raycast(f, o[0], np.zeros((3, 2)), max_range_m=10.0)
    with pytest.raises(ValueError, match='zero or non-finite'):
        raycast(f, o[0], np.zeros((1, 3)), max_range_m=10.0)
    with pytest.raises(ValueError, match='origin must be'):
        raycast(f, np.zeros((3, 3)), d, max_range_m=10.0)
    with pytest.raises(ValueError, match='max_range_m'):
        raycast(f, o[0], d, max_range_m=0.0)
    with pytest.raises(ValueError, match='height must be'):
        HeightField(torch.zeros(1, 5), 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match='sigma_v must have the shape'):
        HeightField(torch.zeros(4, 5), 0.0, 0.0, 1.0, sigma_v=torch.zeros(5, 4))
    with pytest.raises(ValueError, match='cell_m'):
        HeightField(torch.zeros(4, 5), 0.0, 0.0, 0.0)


def test_rpy_attitude_covariance_matches_finite_differences():
    """J maps roll/pitch/yaw perturbations to the ENU rotation vector (checked numerically)."""
    from transforms3d.euler import euler2mat

    rpy = np.array([0.2, -0.3, 1.1])
    r0 = euler2mat(*rpy, 'sxyz')
    np.testing.assert_allclose(r0, _rot_rpy(*rpy), atol=1e-12)  # same convention as ours
    sig = np.array([0.01, 0.02, 0.03])
    cov = PoseCovariance.from_rpy(np.diag([1.0, 2.0, 3.0]), rpy, sig)
    cols = []
    eps = 1e-7
    for k in range(3):
        p = rpy.copy()
        p[k] += eps
        w = (euler2mat(*p, 'sxyz') @ r0.T - np.eye(3)) / eps  # [omega]x
        cols.append([w[2, 1], w[0, 2], w[1, 0]])
    jac = np.array(cols).T
    np.testing.assert_allclose(cov.attitude, jac @ np.diag(sig ** 2) @ jac.T, atol=1e-9)
    np.testing.assert_allclose(PoseCovariance.from_rpy([0.1, 0.2, 0.3], rpy, sig).position,
                               np.diag([0.01, 0.04, 0.09]), atol=1e-15)
    with pytest.raises(ValueError, match='symmetric'):
        PoseCovariance(np.array([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]), np.eye(3))
    with pytest.raises(ValueError, match='positive semi-definite'):
        PoseCovariance(-np.eye(3), np.eye(3))


def _monte_carlo(field_args, o, d_cam, rpy, sig_v, sig_h, pos_sig, rpy_sig, n_mc, seed):
    """Empirical std of the range of each camera ray under the stated perturbations."""
    rng = np.random.default_rng(seed)
    a, b, c = field_args
    f = _plane_field(a, b, c, cell=2.0, half=400.0, dtype=torch.float64,
                     sigma_v=sig_v, sigma_h=sig_h)
    r_cam = _rot_rpy(*rpy)
    d0 = _unit(d_cam @ r_cam.T)
    cov = PoseCovariance.from_rpy(np.asarray(pos_sig), rpy, rpy_sig)
    pred = raycast(f, o, d0, max_range_m=1000.0, pose_cov=cov)
    assert torch.all(pred.status == RayStatus.HIT)
    k = d_cam.shape[0]
    origins, dirs = [], []
    for _ in range(n_mc):
        dh = rng.normal(0.0, sig_v)  # the surface moves up by dh == the camera moves down
        ds = np.append(rng.normal(0.0, sig_h, 2), 0.0)  # surface shift == camera shift -ds
        dc = rng.normal(0.0, pos_sig)
        drpy = rng.normal(0.0, rpy_sig)
        oo = o + dc - ds - np.array([0.0, 0.0, dh])
        origins.append(np.tile(oo, (k, 1)))
        dirs.append(d_cam @ _rot_rpy(*(np.asarray(rpy) + drpy)).T)
    res = raycast(f, np.concatenate(origins), _unit(np.concatenate(dirs)), max_range_m=1000.0)
    assert torch.all(res.status == RayStatus.HIT)
    ranges = res.range_m.numpy().reshape(n_mc, k)
    return pred, ranges.std(axis=0, ddof=1), pred.grazing_rad.numpy()


@pytest.mark.parametrize('case', ['dem', 'pose', 'all'])
def test_prior_sigma_matches_monte_carlo(case):
    # camera 6 m above a 15 % slope, looking across it; rays of 11..54 deg grazing, 7..32 m
    d_cam = _unit(np.array([[0.05, 0.09, 1.0], [0.0, 0.2, 1.0], [0.3, 0.35, 1.0], [-0.3, 0.5, 1.0],
                            [0.1, 0.8, 1.0], [-0.2, 1.2, 1.0]]))
    rpy = (0.02, -0.05, 0.7)  # body attitude; camera optical axis = body x via opt_to_body
    opt_to_body = np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, -1.0, 0]])
    d_cam = d_cam @ opt_to_body.T  # express the camera rays in the body frame
    sig_v, sig_h = (0.4, 1.0) if case in ('dem', 'all') else (0.0, 0.0)
    pos_sig = [0.15, 0.1, 0.3] if case in ('pose', 'all') else [0.0, 0.0, 0.0]
    rpy_sig = np.radians([0.4, 0.6, 0.8]) if case in ('pose', 'all') else np.zeros(3)
    pred, emp, grazing = _monte_carlo((0.15, 0.05, 0.0), np.array([0.0, 0.0, 6.0]), d_cam, rpy,
                                      sig_v, sig_h, pos_sig, rpy_sig, n_mc=6000, seed=7)
    assert np.all((grazing > math.radians(10)) & (grazing < math.radians(60))), np.degrees(grazing)
    sigma = pred.sigma_m.numpy()
    ratio = sigma / emp
    assert np.all(np.abs(ratio - 1) < 0.05), (ratio, sigma, emp)
    parts = np.hypot(pred.sigma_dem_m.numpy(), pred.sigma_pose_m.numpy())
    np.testing.assert_allclose(parts, sigma, rtol=1e-6)
    if case == 'dem':
        assert np.all(pred.sigma_pose_m.numpy() == 0)
    if case == 'pose':
        assert np.all(pred.sigma_dem_m.numpy() == 0)


def test_grazing_rays_get_large_sigma():
    """sigma_v / sin(g) on flat ground: a shallow ray turns 0.5 m of height into metres of range."""
    f = _plane_field(c=0.0, half=600.0, sigma_v=0.5, sigma_h=3.0)
    elev = np.radians([-45.0, -10.0, -2.0, -0.5])
    d = np.stack([np.cos(elev), np.zeros_like(elev), np.sin(elev)], -1)
    res = raycast(f, np.array([0.0, 0.0, 2.0]), d, max_range_m=1000.0)
    assert torch.all(res.status == RayStatus.HIT)
    np.testing.assert_allclose(res.sigma_m.double().numpy(), 0.5 / np.sin(-elev), rtol=1e-4)
    assert res.sigma_m[-1].item() > 50.0  # flat: sigma_h does not matter (n_h = 0)


@pytest.mark.parametrize('device', DEVICES)
def test_device_agnostic(device):
    a, b, c = 0.05, 0.02, 1.0
    f_cpu = _plane_field(a, b, c, half=400.0, sigma_v=0.3)
    f_dev = f_cpu.to(device)
    assert f_dev.device.type == device
    d = _camera_rays(160, 120, 125.0)
    o = np.array([0.0, 0.0, 8.0])
    r_cpu = raycast(f_cpu, o, d, max_range_m=600.0)
    r_dev = raycast(f_dev, o, d, max_range_m=600.0)
    assert r_dev.status.device.type == device
    assert torch.equal(r_cpu.status, r_dev.status.cpu())
    hit = (r_cpu.status == RayStatus.HIT).numpy()
    assert hit.mean() > 0.3
    np.testing.assert_allclose(r_dev.range_m.cpu().numpy()[hit], r_cpu.range_m.numpy()[hit], atol=1e-3)
    r_true = _plane_range(o, d, a, b, c)
    assert np.abs(r_dev.range_m.cpu().double().numpy()[hit] - r_true[hit]).max() < 2e-3


def test_dem_grid_and_raycast_see_the_earth_curve(tmp_path):
    """End to end: a GeoTIFF of constant ellipsoidal height; rays out to 1.5 km hit where the
    curved surface h = 100 m really is (found independently by bisection on geodetic height)."""
    import rasterio
    from rasterio.transform import from_origin

    from geo_depth_node.core.dem import DemSourceSpec, LocalHeightGrid
    from geo_depth_node.core.geodesy import EnuFrame

    path = tmp_path / 'flat_ellipsoidal.tif'
    with rasterio.open(path, 'w', driver='GTiff', height=200, width=300, count=1, dtype='float32',
                       crs='EPSG:4326', transform=from_origin(8.35, 49.03, 0.0005, 0.0003)) as ds:
        ds.write(np.full((200, 300), 100.0, np.float32), 1)
    spec = DemSourceSpec.from_dict(dict(name='flat', id=9, path=str(path), kind='dem',
                                        vertical_datum='ellipsoid', sigma_v_m=1.0, sigma_h_m=0.0))
    frame = EnuFrame(49.0, 8.4, 100.0)
    g = LocalHeightGrid([spec], frame, cell_m=5.0, half_extent_m=1800.0, retile_margin_m=300.0,
                        device='cpu', dtype='float64')
    g.retile_if_needed([0.0, 0.0])
    o = np.array([0.0, 0.0, 3.0])
    elev = np.radians([-1.5, -0.5, -0.2, -0.12])
    az = np.radians([0.0, 45.0, 90.0, 200.0])
    d = np.stack([np.cos(elev) * np.sin(az), np.cos(elev) * np.cos(az), np.sin(elev)], -1)
    res = raycast(g.field, o, d, max_range_m=1700.0)
    assert torch.all(res.status == RayStatus.HIT)
    truth = []
    for di in d:
        lo, hi = 0.0, 1700.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            _, _, h = frame.enu_to_geodetic(o + mid * di)
            lo, hi = (mid, hi) if h > 100.0 else (lo, mid)
        truth.append(0.5 * (lo + hi))
    truth = np.array(truth)
    flat_earth = 3.0 / -d[:, 2]  # what a flat DEM would say
    assert np.abs(flat_earth - truth)[-1] > 50.0  # 1.4 km: curvature matters a lot here
    np.testing.assert_allclose(res.range_m.numpy(), truth, atol=5e-3)
    assert torch.all(res.source == 9)


def test_prior_flags_and_empty_field():
    from geo_depth_node.core.contract import Flag

    f = _plane_field(c=0.0, half=100.0, source=4)
    o = np.array([0.0, 0.0, 2.0])
    d = _unit([[1.0, 0.0, -0.2], [1.0, 0.0, 0.2], [1.0, 0.0, -0.001]])
    res = raycast(f, o, d, max_range_m=500.0)
    assert res.status.tolist() == [RayStatus.HIT, RayStatus.SKY, RayStatus.UNAVAILABLE]
    assert res.prior_flags().tolist() == [0, int(Flag.SKY), int(Flag.PRIOR_UNAVAILABLE)]
    assert res.prior_flags([4])[0].item() == int(Flag.PRIOR_SURFACE_MODEL)
    assert res.counts() == {'HIT': 1, 'SKY': 1, 'UNAVAILABLE': 1, 'BELOW_TERRAIN': 0}
    empty = HeightField(torch.full((5, 5), float('nan')), -2.0, -2.0, 1.0)
    r = raycast(empty, np.zeros(3), d, max_range_m=1.0)  # max range inside the grid
    assert torch.all(r.status == RayStatus.UNAVAILABLE)  # no data: never SKY


def test_ranges_only_gives_the_same_statuses_and_ranges():
    f = _rolling_field('cpu')
    o = np.array([0.0, 0.0, float(f.sample(np.array([0.0]), np.array([0.0]))[0]) + 4.0])
    d = _camera_rays(64, 48, 50.0, pitch_deg=-8.0)
    full = raycast(f, o, d, max_range_m=300.0, pose_cov=PoseCovariance.zero())
    fast = raycast(f, o, d, max_range_m=300.0, ranges_only=True)
    assert torch.equal(full.status, fast.status)
    hit = (full.status == RayStatus.HIT).numpy()
    assert hit.mean() > 0.3
    np.testing.assert_array_equal(full.range_m.numpy(), fast.range_m.numpy())
    assert torch.isnan(fast.sigma_m).all() and torch.isnan(fast.point).all()


def test_min_range_starts_the_march_there():
    """min_range_m: the first crossing at or after it; a ray already below the terrain there
    is a HIT at that range; bad shapes and negative values are refused."""
    f = _rolling_field('cpu')
    o = np.array([0.0, 0.0, float(f.sample(np.array([0.0]), np.array([0.0]))[0]) + 4.0])
    d = _camera_rays(64, 48, 50.0, pitch_deg=-8.0)
    ref = raycast(f, o, d, max_range_m=300.0, ranges_only=True)
    hit = ref.status == RayStatus.HIT
    r0 = torch.where(hit, ref.range_m.double(), torch.zeros_like(ref.range_m.double()))
    # lowered camera-relative terrain (camera raised by 0.5 m): the hit can only move farther,
    # so starting at the old range changes nothing
    o_up = o + np.array([0.0, 0.0, 0.5])
    full = raycast(f, o_up, d, max_range_m=300.0, ranges_only=True)
    late = raycast(f, o_up, d, max_range_m=300.0, ranges_only=True,
                   min_range_m=(r0 - 1e-3).clamp(min=0.0))
    both = (full.status == RayStatus.HIT) & (late.status == RayStatus.HIT)
    assert both.sum() > 0.3 * d.shape[0]
    assert (full.status == late.status).float().mean() > 0.999
    np.testing.assert_allclose(late.range_m[both].numpy(), full.range_m[both].numpy(), atol=2e-3)
    assert torch.all(late.range_m[both] >= r0[both].float() - 2e-3)
    # starting beyond the ground hit, inside the terrain: HIT at the start range
    below = raycast(f, o, d[hit.numpy()][:5], max_range_m=300.0, ranges_only=True,
                    min_range_m=(r0[hit][:5] + 5.0))
    flat_below = below.status == RayStatus.HIT
    assert bool(flat_below.any())
    with pytest.raises(ValueError, match='min_range_m must be a number or'):
        raycast(f, o, d, max_range_m=300.0, min_range_m=np.zeros(3))
    with pytest.raises(ValueError, match='min_range_m must be >= 0'):
        raycast(f, o, d, max_range_m=300.0, min_range_m=-1.0)
