"""Pose on the Earth from the synthetic world's GNSS + IMU against its true trajectory."""
from __future__ import annotations

import math

import numpy as np
import pytest

from geo_depth_node.core.pose import (Extrinsics, GnssFix, ImuSample, PoseConfig, PoseEstimator,
                                      matrix_to_rpy, pose6_to_matrix, rpy_to_matrix, so3_log)
from geo_depth_node.synth.config import SynthConfig
from geo_depth_node.synth.generate import START_NS, World
from geo_depth_node.synth.motion import simulate_gnss, simulate_imu
from geo_depth_node.synth.params_out import node_params


def _feed(world: World, duration: float, *, orientation: bool = True, seed: int = 1,
          datum=None, **gnss_kw):
    cfg = world.cfg
    imu = simulate_imu(cfg, world.trajectory, world.mounts, np.random.default_rng(seed), duration)
    gnss = simulate_gnss(cfg, world.trajectory, world.mounts, world.frame,
                         np.random.default_rng(seed + 1), duration)
    from pathlib import Path

    p = node_params(world, Path('/dev/null'))
    ext = Extrinsics.from_params(p)
    est = PoseEstimator(PoseConfig(datum=datum or (cfg.datum_lat_deg, cfg.datum_lon_deg,
                                                   cfg.datum_height_m), buffer_s=60.0), ext)
    _replay_into(est, imu, gnss, orientation)
    return est, imu, gnss


def _replay_into(est, imu, gnss, orientation: bool = True) -> None:
    """Feed the simulated IMU and GNSS to ``est`` in stamp order."""
    events = [(int(START_NS + t * 1e9), 0, k) for k, t in enumerate(imu.t)]
    events += [(int(START_NS + t * 1e9), 1, k) for k, t in enumerate(gnss.t)]
    for stamp, kind, k in sorted(events):
        if kind == 0:
            ocov = imu.orientation_cov if orientation else np.diag([-1.0, 0, 0])
            est.add_imu(ImuSample(stamp, imu.gyro[k], imu.accel[k],
                                  tuple(imu.q_xyzw[k]) if orientation else None, ocov))
        else:
            est.add_gnss(GnssFix(stamp, int(gnss.status[k]), float(gnss.lat[k]),
                                 float(gnss.lon[k]), float(gnss.alt[k]), gnss.cov[k],
                                 int(gnss.cov_type[k])))


def _errors(world, est, times):
    pos, att, zs, reasons = [], [], [], []
    for t in times:
        pe, why = est.pose_at(int(START_NS + t * 1e9))
        if pe is None:
            reasons.append(why)
            continue
        r_true, p_true = world.camera_pose(t)
        e = pe.p_enu_cam - p_true
        pos.append(e)
        zs.append(e / np.sqrt(np.diag(pe.position_cov)))
        att.append(np.array(matrix_to_rpy(pe.R_enu_base))
                   - np.array(matrix_to_rpy(world.trajectory.pose(np.array(t))[0])))
        assert np.linalg.norm(so3_log(r_true.T @ pe.R_enu_cam)) < 0.2
    return np.array(pos), np.array(att), np.array(zs), reasons


def test_pose_with_imu_orientation_matches_truth_within_its_covariance():
    world = World(SynthConfig(seed=4))
    est, _, _ = _feed(world, 30.0)
    times = np.arange(1.0, 29.0, 0.137)
    pos, att, z, reasons = _errors(world, est, times)
    assert not reasons and len(pos) == len(times)
    # Interpolated position: errors consistent with the (conservatively interpolated) covariance.
    assert np.all(np.std(z, axis=0) < 1.1) and np.all(np.std(z, axis=0) > 0.5)
    assert np.abs(pos).max() < 5 * 0.2 + 0.05
    att = (att + np.pi) % (2 * np.pi) - np.pi
    cfg = world.cfg
    assert np.std(att[:, 0]) < 2 * cfg.orientation_sigma_rp_rad
    assert np.std(att[:, 2]) < 2 * cfg.orientation_sigma_yaw_rad


def test_pose_without_imu_orientation_uses_the_filter_and_the_course():
    world = World(SynthConfig(seed=4, imu_orientation=False))
    early, _, _ = _feed(world, 0.6, orientation=False)  # < 5 m driven: no course yet
    pe, _ = early.pose_at(int(START_NS + 0.3 * 1e9))
    assert pe is not None and pe.degraded and 'yaw unknown' in pe.reasons[0]
    assert pe.rpy_sigma[2] == pytest.approx(math.pi)
    est, _, _ = _feed(world, 30.0, orientation=False)
    times = np.arange(10.0, 29.0, 0.25)
    _, att, _, reasons = _errors(world, est, times)
    assert not reasons
    att = (att + np.pi) % (2 * np.pi) - np.pi
    # Roll/pitch from gravity + gyro (the speed changes of +-1.2 m/s^2 bias the filter: that is
    # what tilt_sigma_rad states); yaw from the course over ground (5 m/s, 0.1 m GNSS).
    sig = PoseConfig().tilt_sigma_rad
    print('filter rms roll/pitch/yaw', np.sqrt(np.mean(att ** 2, axis=0)))
    assert np.sqrt(np.mean(att[:, :2] ** 2)) < sig and np.abs(att[:, :2]).max() < 2.5 * sig
    assert np.abs(att[:, 2]).max() < 0.1


def test_stale_and_missing_data_are_refused_not_extrapolated():
    world = World(SynthConfig(seed=4, gnss_nofix_s=((3.0, 5.0),)))
    est, _, _ = _feed(world, 8.0)
    pe, why = est.pose_at(int(START_NS + 4.0 * 1e9))
    assert pe is None and 'gap' in why
    pe, why = est.pose_at(int(START_NS + 30.0 * 1e9))
    assert pe is None and 'after the newest' in why
    assert est.counts['gnss_no_fix'] == 20


@pytest.mark.parametrize('orientation', [True, False])
def test_a_bag_loop_starts_the_pose_buffers_over(orientation):
    """The same 6 s of IMU and GNSS fed twice (ros2 bag play --loop): the second pass resets
    the buffers (one time jump per stream that noticed it) instead of being dropped as out of
    order, and the pose after the loop is as good as before it; the datum is kept."""
    world = World(SynthConfig(seed=4, imu_orientation=orientation))
    est, imu, gnss = _feed(world, 6.0, orientation=orientation)
    frame = est.frame
    times = np.arange(2.0, 5.5, 0.25)
    before = _errors(world, est, times)
    _replay_into(est, imu, gnss, orientation)
    assert est.frame is frame
    assert est.counts['time_jumps'] >= 1
    assert est.counts['imu_out_of_order'] == 0 and est.counts['gnss_out_of_order'] == 0
    after = _errors(world, est, times)
    assert not after[3] and len(after[0]) == len(times)
    np.testing.assert_allclose(np.abs(after[0]).max(), np.abs(before[0]).max(), rtol=0.5)


def test_unknown_gnss_covariance_uses_the_default_and_degrades():
    ext = Extrinsics(np.eye(4), np.eye(4), np.eye(4))
    est = PoseEstimator(PoseConfig(datum=(49.0, 8.0, 100.0), default_gnss_sigma_m=4.0), ext)
    for k in range(1, 4):  # stamps > 0 (a stamp <= 0 is refused)
        est.add_gnss(GnssFix(k * 10 ** 8, 0, 49.0, 8.0, 100.0, np.zeros((3, 3)), 0))
        est.add_imu(ImuSample(k * 10 ** 8, np.zeros(3), np.array([0, 0, 9.8]), (0, 0, 0, 1),
                              np.eye(3) * 1e-4))
    pe, _ = est.pose_at(15 * 10 ** 7)
    assert pe.degraded and pe.position_cov[0, 0] == pytest.approx(16.0)
    np.testing.assert_allclose(pe.p_enu_base, 0.0, atol=1e-6)


def test_pose6_and_rpy_conventions():
    r = rpy_to_matrix(0.1, -0.2, 0.3)
    assert matrix_to_rpy(r) == pytest.approx((0.1, -0.2, 0.3))
    import transforms3d

    np.testing.assert_allclose(r, transforms3d.euler.euler2mat(0.1, -0.2, 0.3, 'sxyz'), atol=1e-12)
    with pytest.raises(ValueError, match='extrinsic'):
        pose6_to_matrix([1.0, 2.0])


def test_navsatfix_conversion_refuses_impossible_fixes():
    """Out-of-range latitude/longitude and a malformed covariance are refused with the value
    (the node turns that into a diagnostic); a NO_FIX message with NaN position passes (the
    estimator counts and drops it)."""
    from types import SimpleNamespace as NS

    from geo_depth_node.core.pose import gnss_fix_from_msg

    def msg(lat, lon, cov=(0.01,) * 9, status=0):
        return NS(header=NS(stamp=NS(sec=1, nanosec=5)), status=NS(status=status),
                  latitude=lat, longitude=lon, altitude=100.0, position_covariance=list(cov),
                  position_covariance_type=2)

    fix = gnss_fix_from_msg(msg(49.0, 8.4))
    assert fix.stamp_ns == 1_000_000_005 and fix.cov.shape == (3, 3)
    assert math.isnan(gnss_fix_from_msg(msg(float('nan'), float('nan'), status=-1)).lat_deg)
    with pytest.raises(ValueError, match='out of range'):
        gnss_fix_from_msg(msg(91.0, 8.4))
    with pytest.raises(ValueError, match='out of range'):
        gnss_fix_from_msg(msg(49.0, 181.0))
    with pytest.raises(ValueError, match='9 numbers'):
        gnss_fix_from_msg(msg(49.0, 8.4, cov=(0.01,) * 4))
