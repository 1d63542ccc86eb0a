"""The synthetic world checked against itself by independent means (geometry, statistics)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from geo_depth_node.synth.config import SynthConfig
from geo_depth_node.synth.generate import (START_NS, World, generate_world, load_truth,
                                           render_frames)
from geo_depth_node.synth.motion import (GRAVITY, quat_xyzw_to_matrix, simulate_gnss,
                                         simulate_imu, so3_exp, so3_log)
from geo_depth_node.synth.world import DEM_NODATA, FIRST_OBJECT, SURFACE_SKY, SURFACE_TERRAIN

SMALL = dict(frames=4, width=320, height=240, dem_holes=2, dem_offset_m=0.7, dem_sigma_m=0.5,
             gnss_nofix_s=((1.2, 1.45),), gnss_degraded_s=((0.2, 0.6),))


@pytest.fixture(scope='module')
def small_world(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp('synth')
    cfg = SynthConfig(seed=7, **SMALL)
    info = generate_world(out, cfg, progress=False)
    return {'out': out, 'cfg': cfg, 'info': info, 'truth': load_truth(info['truth']),
            'world': World(cfg)}


def _bag_messages(bag: str | Path) -> dict[str, list]:
    from rosbags.highlevel import AnyReader

    out: dict[str, list] = {}
    with AnyReader([Path(bag)]) as reader:
        for conn, stamp, raw in reader.messages():
            out.setdefault(conn.topic, []).append((stamp, reader.deserialize(raw, conn.msgtype),
                                                   raw))
    return out


def _enu_points(truth: dict, i: int) -> tuple[np.ndarray, np.ndarray]:
    """ENU points (H, W, 3) of frame i's truth depth, and the ray directions (H, W, 3) in ENU."""
    K = truth['K']
    h, w = truth['depth'].shape[1:]
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    z = truth['depth'][i].astype(np.float64)
    T = truth['T_enu_left'][i]
    with np.errstate(invalid='ignore'):
        pts = (rays * z[..., None]) @ T[:3, :3].T + T[:3, 3]
    return pts, rays @ T[:3, :3].T


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match='terrain'):
        SynthConfig(terrain='moon').validate()
    with pytest.raises(ValueError, match='dem_survey_date'):
        SynthConfig(dem_survey_date='last year').validate()
    with pytest.raises(ValueError, match='frames'):
        SynthConfig(frames=0).validate()
    with pytest.raises(ValueError, match='gnss_nofix_s'):
        SynthConfig(gnss_nofix_s=((2.0, 1.0),)).validate()


def test_outputs_exist_with_expected_topics(small_world):
    info = small_world['info']
    counts = info['counts']
    cfg = small_world['cfg']
    assert counts['/left/image_rect'] == counts['/right/image_rect'] == cfg.frames
    assert counts['/left/camera_info'] == cfg.frames
    assert counts['/tf_static'] == 1
    assert counts['/imu/data'] == int(math.floor(cfg.duration_s * cfg.imu_rate_hz)) + 1
    assert counts['/gnss/fix'] == int(math.floor(cfg.duration_s * cfg.gnss_rate_hz)) + 1
    for key in ('dem', 'truth', 'params', 'world'):
        assert Path(info[key]).stat().st_size > 0
    truth = small_world['truth']
    assert truth['depth'].shape == (cfg.frames, cfg.height, cfg.width)
    # Image stamps = truth stamps, not aligned to the IMU clock.
    msgs = _bag_messages(info['bag'])
    stamps = [m.header.stamp.sec * 10 ** 9 + m.header.stamp.nanosec
              for _, m, _ in msgs['/left/image_rect']]
    assert stamps == truth['stamps_ns'].tolist()
    assert all((s - START_NS) % int(1e9 / cfg.imu_rate_hz) != 0 for s in stamps)


def test_truth_depth_lands_on_the_true_surface(small_world):
    """Truth depth reprojected with the true pose lies on the analytic terrain / the objects."""
    truth, world = small_world['truth'], small_world['world']
    route = world.trajectory.ground_xy_heading(np.linspace(0, world.cfg.duration_s, 50))[0]
    n_terrain = n_box = 0
    for i in range(truth['depth'].shape[0]):
        pts, dirs = _enu_points(truth, i)
        surf = truth['surface'][i]
        terr = surf == SURFACE_TERRAIN
        x, y, z = pts[..., 0][terr], pts[..., 1][terr], pts[..., 2][terr]
        near = np.min(np.hypot(x[:, None] - route[None, :, 0], y[:, None] - route[None, :, 1]),
                      axis=1) < 120.0  # inside the 0.5 m mesh
        dz = np.abs(z[near] - world.terrain.height(x[near], y[near]))
        assert near.sum() > 1000
        # The rendered mesh is the truth; it follows the analytic terrain to its discretisation
        # error (0.5 m cells: mm on the hills, ~2 cm at the steep rim of the pit).
        assert np.percentile(dz, 99) < 0.005 and np.max(dz) < 0.03, (np.percentile(dz, 99),
                                                                      np.max(dz))
        n_terrain += near.sum()
        for k, obj in enumerate(world.objects):
            sel = surf == FIRST_OBJECT + k
            if not sel.any() or obj.kind != 'box':
                continue
            c, s = math.cos(obj.yaw), math.sin(obj.yaw)
            p = pts[sel] - [obj.x, obj.y, obj.z0]
            lx, ly = c * p[:, 0] + s * p[:, 1], -s * p[:, 0] + c * p[:, 1]
            sx, sy, sz = obj.size
            tol = 1e-4 + 2e-5 * truth['depth'][i][sel]  # truth depth is float32
            inside = (np.abs(lx) <= sx / 2 + tol) & (np.abs(ly) <= sy / 2 + tol) \
                & (p[:, 2] >= -tol) & (p[:, 2] <= sz + tol)
            on_face = np.abs(np.minimum.reduce([sx / 2 - np.abs(lx), sy / 2 - np.abs(ly),
                                                sz - p[:, 2]])) < tol
            assert inside.all() and on_face.all()
            n_box += sel.sum()
        # Sky: the ray leaves the terrain: it points above the horizon or past the mesh edge.
        sky = surf == SURFACE_SKY
        assert np.all(~np.isfinite(truth['depth'][i][sky]))
        elev = np.degrees(np.arcsin(dirs[sky][:, 2] / np.linalg.norm(dirs[sky], axis=1)))
        assert np.all(elev > -1.0), elev.min()
    assert n_terrain > 10000 and n_box > 0


def test_truth_disparity_matches_the_rendered_shift(small_world):
    """On textured, unoccluded terrain the right image at u - f*B/Z matches the left image."""
    import cv2

    truth = small_world['truth']
    msgs = _bag_messages(small_world['info']['bag'])
    left = msgs['/left/image_rect'][0][1]
    right = msgs['/right/image_rect'][0][1]
    L = left.data.reshape(left.height, left.width).astype(np.float32)
    R = right.data.reshape(right.height, right.width).astype(np.float32)
    d = truth['disparity'][0]
    h, w = d.shape
    good = ((truth['surface'][0] == SURFACE_TERRAIN) & ~truth['textureless'][0]
            & ~truth['occluded'][0] & (d > 4) & (d < 60))
    good[:, :70] = False
    gx = np.abs(cv2.Sobel(L, cv2.CV_32F, 1, 0)) > 8  # textured in x
    good &= gx
    assert good.sum() > 2000
    u, v = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    residual = {}
    for delta in (-1.0, -0.5, 0.0, 0.5, 1.0):
        Rs = cv2.remap(R, u - d + delta, v, cv2.INTER_LINEAR)
        residual[delta] = float(np.sqrt(np.mean((L - Rs)[good] ** 2)))
    # The true shift is the best one, and its residual is sensor noise + resampling.
    assert residual[0.0] == min(residual.values()), residual
    assert residual[0.0] < 0.6 * residual[1.0] and residual[0.0] < 0.6 * residual[-1.0], residual
    assert residual[0.0] < 4.0, residual


def _long_sensors(**kw):
    cfg = SynthConfig(seed=3, **kw)
    world = World(cfg)
    return cfg, world


def test_imu_integrates_to_the_trajectory():
    cfg, world = _long_sensors()
    imu = simulate_imu(cfg, world.trajectory, world.mounts, np.random.default_rng(5),
                       duration_s=12.0)
    dt = 1.0 / cfg.imu_rate_hz
    # Noise: residuals have the stated std (and the covariance in the message says so).
    res_g = imu.gyro - imu.gyro_true - imu.gyro_bias
    res_a = imu.accel - imu.accel_true - imu.accel_bias
    assert np.std(res_g) == pytest.approx(cfg.gyro_noise_rad_s, rel=0.05)
    assert np.std(res_a) == pytest.approx(cfg.accel_noise_m_s2, rel=0.05)
    assert imu.gyro_cov[0, 0] == pytest.approx(cfg.gyro_noise_rad_s ** 2)
    # At rest on level ground the accelerometer would read +g up: here the mean specific force
    # magnitude is g within the vehicle's small accelerations.
    assert np.median(np.linalg.norm(imu.accel_true, axis=1)) == pytest.approx(GRAVITY, abs=0.5)

    # Gyro (bias removed) integrates to the true attitude within its noise.
    n = int(10.0 / dt)
    r = imu.r_enu_imu[0].copy()
    w = imu.gyro - imu.gyro_bias
    for k in range(n):
        r = r @ so3_exp(0.5 * (w[k] + w[k + 1]) * dt)
    err = np.linalg.norm(so3_log(imu.r_enu_imu[n].T @ r))
    sigma_att = cfg.gyro_noise_rad_s * math.sqrt(dt * 10.0)
    assert err < 5 * sigma_att, (err, sigma_att)

    # Accelerometer (bias removed, true attitude) double-integrates to the true position.
    n = int(5.0 / dt)
    g = np.array([0.0, 0.0, -GRAVITY])
    a = np.einsum('nij,nj->ni', imu.r_enu_imu[:n + 1], imu.accel[:n + 1] - imu.accel_bias) + g
    v = imu.v_enu_imu[0].copy()
    p = imu.p_enu_imu[0].copy()
    for k in range(n):
        p = p + v * dt + (2 * a[k] + a[k + 1]) / 6 * dt * dt
        v = v + 0.5 * (a[k] + a[k + 1]) * dt
    sigma_p = cfg.accel_noise_m_s2 * math.sqrt(dt) * 5.0 ** 1.5 / math.sqrt(3)
    err_p = np.linalg.norm(p - imu.p_enu_imu[n])
    assert err_p < 5 * math.sqrt(3) * sigma_p, (err_p, sigma_p)
    assert np.linalg.norm(v - imu.v_enu_imu[n]) < 5 * cfg.accel_noise_m_s2 * math.sqrt(dt * 5.0) * 2

    # Orientation noise matches its covariance (rotation-vector error in ENU axes).
    delta = so3_log(quat_xyzw_to_matrix(imu.q_xyzw) @ np.swapaxes(imu.r_enu_imu, 1, 2))
    assert np.std(delta, axis=0) == pytest.approx(np.sqrt(np.diag(imu.orientation_cov)), rel=0.05)


def test_imu_without_orientation_says_so():
    cfg, world = _long_sensors(imu_orientation=False)
    imu = simulate_imu(cfg, world.trajectory, world.mounts, np.random.default_rng(0), 1.0)
    assert imu.orientation_cov[0, 0] == -1.0


def test_gnss_noise_matches_the_stated_covariance():
    """Chi-square of the ENU residuals over many fixes is consistent with the covariance."""
    cfg, world = _long_sensors(gnss_degraded_s=((50.0, 80.0),), gnss_nofix_s=((90.0, 95.0),))
    g = simulate_gnss(cfg, world.trajectory, world.mounts, world.frame, np.random.default_rng(9),
                      duration_s=200.0)
    fix = g.status == 0
    assert np.all(np.isnan(g.lat[~fix])) and np.all(g.cov_type[~fix] == 0)
    assert (~fix).sum() == 50
    # Independent path back: lat/lon/alt -> ENU via the frame, residual vs the true antenna.
    enu = world.frame.geodetic_to_enu(g.lat[fix], g.lon[fix], g.alt[fix])
    res = enu - g.p_enu_true[fix]
    cov = g.cov[fix]
    chi2 = np.einsum('ni,nij,nj->n', res, np.linalg.inv(cov), res)
    dof = 3 * fix.sum()
    assert abs(chi2.sum() - dof) < 5 * math.sqrt(2 * dof), (chi2.sum(), dof)
    for axis in range(3):
        z = res[:, axis] / np.sqrt(cov[:, axis, axis])
        assert np.std(z) == pytest.approx(1.0, abs=0.06)
    degraded = (g.t >= 50.0) & (g.t < 80.0)
    assert np.all(g.cov[degraded][:, 0, 0] == pytest.approx(cfg.gnss_degraded_sigma_m ** 2))


def test_gnss_and_imu_messages(small_world):
    cfg = small_world['cfg']
    msgs = _bag_messages(small_world['info']['bag'])
    fixes = [m for _, m, _ in msgs['/gnss/fix']]
    assert all(m.header.frame_id == 'gnss_link' for m in fixes)
    nofix = [m for m in fixes if m.status.status == -1]
    assert nofix and all(math.isnan(m.latitude) and m.position_covariance_type == 0 for m in nofix)
    ok = [m for m in fixes if m.status.status == 0 and m.position_covariance_type == 2]
    assert ok and all(m.position_covariance[0] == pytest.approx(cfg.gnss_sigma_h_m ** 2)
                      and m.position_covariance[8] == pytest.approx(cfg.gnss_sigma_v_m ** 2)
                      for m in ok)
    # Altitude is ellipsoidal: near the datum the fix altitude is datum height + ENU z.
    truth = small_world['truth']
    assert abs(ok[0].altitude - (cfg.datum_height_m + truth['traj_p'][0, 2])) < 4.0
    imu = [m for _, m, _ in msgs['/imu/data']]
    assert all(m.header.frame_id == 'imu_link' for m in imu)
    assert imu[0].orientation_covariance[0] == pytest.approx(cfg.orientation_sigma_rp_rad ** 2)
    tf = msgs['/tf_static'][0][1].transforms
    assert {t.child_frame_id for t in tf} == {'imu_link', 'gnss_link',
                                              'left_camera_optical_frame',
                                              'right_camera_optical_frame'}


def _read_dem(path: str) -> tuple[np.ndarray, dict]:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1), {'crs': ds.crs.to_epsg(), 'transform': ds.transform,
                            'nodata': ds.nodata, 'tags': ds.tags(),
                            'band_tags': ds.tags(1)}


def test_dem_error_statistics_match_the_request(small_world):
    """DEM minus the surveyed world at the mis-registered position: mean = offset, std =
    sigma; the mis-registration has the stated horizontal sigma; holes are nodata; geoid
    applied."""
    import pyproj

    from geo_depth_node.synth.world import heights_along_normals, surveyed_heights_at

    cfg, world = small_world['cfg'], small_world['world']
    dem, meta = _read_dem(small_world['info']['dem'])
    assert meta['crs'] == 32632 and meta['nodata'] == DEM_NODATA
    assert meta['tags']['SURVEY_DATE'] == cfg.dem_survey_date
    assert meta['band_tags']['vertical_datum'] == 'egm96'
    tr = meta['transform']
    ny, nx = dem.shape
    cols, rows = np.meshgrid(np.arange(nx), np.arange(ny))
    E = tr.c + (cols + 0.5) * tr.a
    N = tr.f + (rows + 0.5) * tr.e
    # Own geodesy path: UTM -> lat/lon, EGM96 -> ellipsoid, with pyproj directly.
    pyproj.datadir.append_data_dir('/usr/share/proj')
    lon, lat = pyproj.Transformer.from_crs(32632, 4326, always_xy=True).transform(E, N)
    valid = dem != DEM_NODATA
    to_ell = pyproj.Transformer.from_crs('EPSG:4326+5773', 'EPSG:4979', always_xy=True,
                                         only_best=True)
    _, _, h_dem = to_ell.transform(lon[valid], lat[valid], dem[valid].astype(np.float64))
    undulation = h_dem - dem[valid]
    assert 45.0 < np.median(undulation) < 52.0  # EGM96 near Karlsruhe ~48 m
    # Horizontal error: every node samples the surface at a displaced point (per-axis std =
    # the stated horizontal sigma, smooth, zero mean).
    dem_obj = world.dem
    for shift in (dem_obj.shift_e, dem_obj.shift_n):
        assert shift.shape == dem.shape
        assert np.std(shift) == pytest.approx(cfg.dem_sigma_h_m, rel=0.03)
        assert abs(np.mean(shift)) < 0.05 * cfg.dem_sigma_h_m
    lon, lat = pyproj.Transformer.from_crs(32632, 4326, always_xy=True).transform(
        E + dem_obj.shift_e, N + dem_obj.shift_n)
    survey = heights_along_normals(world.frame, world.survey_renderer(), lat[valid], lon[valid])
    err = h_dem - survey
    assert np.mean(err) == pytest.approx(cfg.dem_offset_m, abs=0.02)
    assert np.std(err) == pytest.approx(cfg.dem_sigma_m, rel=0.03)
    # Near the route the mesh is fine: the analytic surveyed terrain agrees to < 1 cm.
    enu = world.frame.geodetic_to_enu(lat[valid], lon[valid], survey)
    near = np.hypot(enu[:, 0], enu[:, 1]) < 80.0
    analytic = surveyed_heights_at(world.frame, world.terrain, lat[valid][near], lon[valid][near])
    assert near.sum() > 500
    assert np.max(np.abs(analytic - survey[near])) < 0.01
    # Holes: the first one is ahead of the vehicle; nodata where asked.
    assert (~valid).sum() > 0
    # Changes since survey: the pit is in the true world, not in the DEM.
    pit = [b for b in world.terrain.changes if b.name == 'pit']
    assert pit
    b = pit[0]
    true_h = world.terrain.height(b.x, b.y) - world.terrain.height(b.x, b.y, surveyed=True)
    assert true_h == pytest.approx(b.dz)


def test_same_seed_same_bytes(tmp_path):
    from rosbags.rosbag2 import Reader

    cfg = dict(frames=2, width=160, height=120, seed=11)
    payloads, truths = [], []
    for k in range(2):
        info = generate_world(tmp_path / f'w{k}', SynthConfig(**cfg), progress=False)
        with Reader(info['bag']) as reader:
            payloads.append([(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()])
        truths.append(load_truth(info['truth']))
    assert payloads[0] == payloads[1]
    assert truths[0].keys() == truths[1].keys()
    for key in truths[0]:
        np.testing.assert_array_equal(truths[0][key], truths[1][key])
    assert (tmp_path / 'w0' / 'dem.tif').read_bytes() == (tmp_path / 'w1' / 'dem.tif').read_bytes()
    # A different seed gives a different world.
    other = World(SynthConfig(**dict(cfg, seed=12)))
    assert other.trajectory.psi0 != World(SynthConfig(**cfg)).trajectory.psi0


def test_sqlite3_storage(tmp_path):
    info = generate_world(tmp_path / 'w', SynthConfig(frames=1, width=160, height=120,
                                                      storage='sqlite3'), progress=False)
    assert list(Path(info['bag']).glob('*.db3'))
    msgs = _bag_messages(info['bag'])
    assert len(msgs['/left/image_rect']) == 1


def _camera_models(truth: dict):
    from geo_depth_node.core.camera import CameraModel

    h, w = truth['depth'].shape[1:]
    return [CameraModel.from_arrays(w, h, truth['K'], truth['D'], np.eye(3), truth[p])
            for p in ('P_left', 'P_right')]


def _measured_agreement(results, truth) -> tuple[float, float, int]:
    within1 = within2 = n = 0
    for i, res in enumerate(results):
        m = res.provenance == 1
        z = truth['depth'][i][m]
        assert np.all(np.isfinite(z)), 'MEASURED on sky'
        err = np.abs(res.depth[m] - z)
        within1 += int((err <= res.depth_sigma[m]).sum())
        within2 += int((err <= 2 * res.depth_sigma[m]).sum())
        n += int(m.sum())
    return within1 / n, within2 / n, n


def test_core_pipeline_on_the_world_agrees_with_truth(small_world):
    from geo_depth_node.core.pipeline import DepthPipeline

    truth = small_world['truth']
    msgs = _bag_messages(small_world['info']['bag'])
    lm, rm = _camera_models(truth)
    pipe = DepthPipeline({'stereo.num_disparities': 64})
    results = []
    for (_, left, _), (_, right, _) in zip(msgs['/left/image_rect'], msgs['/right/image_rect'],
                                           strict=True):
        results.append(pipe.process(left.data.reshape(left.height, left.width),
                                    right.data.reshape(right.height, right.width), lm, rm))
    _, within2, n = _measured_agreement(results, truth)
    assert n > 5000
    assert within2 > 0.95
    # Texture-free patches are not measured.
    tl = np.stack([truth['textureless'][i] for i in range(len(results))])
    meas = np.stack([r.provenance == 1 for r in results])
    assert tl.sum() > 200 and meas[tl].mean() < 0.05


def test_raw_distorted_world_rectifies_to_the_truth(tmp_path):
    """--raw: distorted images; the pipeline's rectification brings them to the truth grid."""
    from geo_depth_node.core.pipeline import DepthPipeline

    info = generate_world(tmp_path / 'raw', SynthConfig(frames=1, width=320, height=240, raw=True,
                                                        seed=2), progress=False)
    truth = load_truth(info['truth'])
    assert truth['D'][0] == pytest.approx(-0.12)
    msgs = _bag_messages(info['bag'])
    assert '/left/image_raw' in msgs and '/left/image_rect' not in msgs
    left, right = msgs['/left/image_raw'][0][1], msgs['/right/image_raw'][0][1]
    assert list(msgs['/left/camera_info'][0][1].d[:2]) == pytest.approx([-0.12, 0.03])
    lm, rm = _camera_models(truth)
    res = DepthPipeline({'stereo.num_disparities': 64}).process(
        left.data.reshape(240, 320), right.data.reshape(240, 320), lm, rm, rectify=True)
    _, within2, n = _measured_agreement([res], truth)
    assert n > 3000 and within2 > 0.93, (n, within2)


def test_world_renders_deterministically_without_writing():
    world = World(SynthConfig(frames=1, width=96, height=64, seed=4))
    a = render_frames(world)
    b = render_frames(World(SynthConfig(frames=1, width=96, height=64, seed=4)))
    np.testing.assert_array_equal(a[0]['left'], b[0]['left'])
    assert dataclasses.asdict(world.cfg)['seed'] == 4


def test_params_file_points_at_the_dem_with_its_statement(small_world):
    from geo_depth_node.core.dem import parse_dem_sources
    from geo_depth_node.core.params import load_params_yaml
    from geo_depth_node.synth.motion import matrix_to_rpy

    cfg, world = small_world['cfg'], small_world['world']
    p = load_params_yaml(small_world['info']['params'])
    (spec,) = parse_dem_sources({k: v for k, v in p.items() if k.startswith('dem.')}
                                | {'dem.sources': ['synth']})
    assert Path(spec.path) == Path(small_world['info']['dem']).resolve()
    assert spec.sigma_v_m == cfg.dem_sigma_m and spec.vertical_datum == 'egm96'
    assert str(spec.survey_date) == cfg.dem_survey_date
    assert p['georef.datum_mode'] == 'fixed' and p['georef.datum_height_m'] == cfg.datum_height_m
    # Extrinsics round trip: rpy -> matrix equals the mount.
    from geo_depth_node.synth.motion import rpy_to_matrix

    cam = p['extrinsics.base_to_camera']
    np.testing.assert_allclose(rpy_to_matrix(*cam[3:]), world.mounts.base_left[:3, :3], atol=1e-12)
    np.testing.assert_allclose(cam[:3], cfg.camera_xyz_m)
    assert matrix_to_rpy(rpy_to_matrix(0.1, -0.2, 0.3)) == pytest.approx((0.1, -0.2, 0.3))
