"""Faulty pose inputs: stray, zero and future stamps, bag loops, GNSS / odometry outliers and the
outlier gate, bad IMU quaternions and unknown IMU orientation covariances (core only)."""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace as NS
from typing import Any

import numpy as np
import pytest

from geo_depth_node.core.geodesy import EnuFrame
from geo_depth_node.core.pose import (IMU_COV_UNKNOWN_REASON, Extrinsics, GnssFix, ImuSample,
                                      OdometryPoseConfig, OdometryPoseSource, OdometrySample,
                                      PoseConfig, PoseEstimator, imu_sample_from_msg,
                                      rpy_to_matrix, so3_log)
from geo_depth_node.synth.motion import matrix_to_quat_xyzw

T0_S = 1_700_000_000  # a 2023 stamp, s
DATUM = (49.0, 8.4, 200.0)
FRAME = EnuFrame(*DATUM)
EXT = Extrinsics(np.eye(4), np.eye(4), np.eye(4))
IMU_COV = np.eye(3) * 1e-4  # rad^2: a known orientation covariance
STRAY_1970_NS = 5 * 10 ** 9  # 1970-01-01 00:00:05
FUTURE_NS = 86_400 * 10 ** 9  # one day ahead


def _ns(t: float) -> int:
    return T0_S * 10 ** 9 + int(round(t * 1e9))


def _pos(t: float) -> np.ndarray:
    """ENU position (m) of the GNSS antenna / base_link at t s: 5 m/s east, weaving, hills."""
    return np.array([5.0 * t, 0.5 * math.sin(0.3 * t), 0.2 * math.sin(0.5 * t)])


def _rot(t: float) -> np.ndarray:
    return rpy_to_matrix(0.02 * math.sin(t), 0.01 * math.cos(0.7 * t), 0.1 * math.sin(0.3 * t))


def _fix(t: float, p: np.ndarray | None = None, sigma: float = 0.05, stamp: int | None = None,
         alt: float | None = None) -> GnssFix:
    lat, lon, h = FRAME.enu_to_geodetic(_pos(t) if p is None else p)
    return GnssFix(_ns(t) if stamp is None else stamp, 0, float(lat), float(lon),
                   float(h) if alt is None else alt, np.eye(3) * sigma ** 2, 2)


def _imu(t: float, stamp: int | None = None, orientation: bool = True,
         cov: np.ndarray | None = IMU_COV, q: tuple | None = None) -> ImuSample:
    r = _rot(t)
    # specific force at rest: gravity "up" seen in imu_link; a slow yaw rate
    accel = r.T @ np.array([0.0, 0.0, 9.80665])
    gyro = np.array([0.0, 0.0, 0.03 * math.cos(0.3 * t)])
    if not orientation:
        return ImuSample(_ns(t) if stamp is None else stamp, gyro, accel, None,
                         np.diag([-1.0, 0.0, 0.0]))
    quat = tuple(float(x) for x in matrix_to_quat_xyzw(r)) if q is None else q
    return ImuSample(_ns(t) if stamp is None else stamp, gyro, accel, quat, cov)


def _events(t_end: float = 6.0, orientation: bool = True) -> list[tuple[float, str, Any]]:
    """(t, kind, sample) of a 10 Hz GNSS + 100 Hz IMU stream, in stamp order."""
    ev = [(k / 10, 'gnss', _fix(k / 10)) for k in range(int(t_end * 10) + 1)]
    ev += [(k / 100, 'imu', _imu(k / 100, orientation=orientation))
           for k in range(int(t_end * 100) + 1)]
    return sorted(ev, key=lambda e: (e[0], e[1]))


def _estimator(**kw) -> PoseEstimator:
    return PoseEstimator(PoseConfig(datum=DATUM, **kw), EXT)


def _feed(est: PoseEstimator, events, extra: dict[float, list[tuple[str, Any]]] | None = None
          ) -> PoseEstimator:
    """Feed ``events``; ``extra[t]`` is fed right after the events at t (the faults)."""
    extra = dict(extra or {})
    for t, kind, s in events:
        (est.add_gnss if kind == 'gnss' else est.add_imu)(s)
        for tx in [tx for tx in extra if tx <= t + 1e-9]:
            for kind_x, sx in extra.pop(tx):
                (est.add_gnss if kind_x == 'gnss' else est.add_imu)(sx)
    return est


def _same_pose(ref, est, times, degraded_ok: bool = False) -> None:
    """Poses of ``est`` at ``times`` exist and equal those of ``ref``."""
    for t in times:
        pr, why_r = ref.pose_at(_ns(t))
        pe, why = est.pose_at(_ns(t))
        assert why_r == 'ok' and why == 'ok', (t, why_r, why)
        np.testing.assert_allclose(pe.p_enu_cam, pr.p_enu_cam, atol=1e-9, err_msg=str(t))
        np.testing.assert_allclose(pe.R_enu_cam, pr.R_enu_cam, atol=1e-9, err_msg=str(t))
        np.testing.assert_allclose(pe.position_cov, pr.position_cov, atol=1e-12)
        if not degraded_ok:
            assert pe.degraded == pr.degraded and pe.reasons == pr.reasons, (t, pe.reasons)


SIDES = (1.0, 2.5, 2.95, 3.0, 3.03, 3.07, 3.5, 5.9)  # stamps on both sides of the faults at 3 s


# ------------------------------------------------------------------------ stray stamps
@pytest.mark.parametrize('kind', ['gnss', 'imu'])
@pytest.mark.parametrize('stray_ns', [STRAY_1970_NS, 0], ids=['1970', 'zero'])
def test_a_stray_old_stamp_keeps_the_pose_buffers(kind, stray_ns):
    """One NavSatFix / Imu stamped 1970 (or 0) in the middle of a good stream: no buffer is
    reset, the poses on both sides are those of the stream without it; counted."""
    events = _events()
    ref = _feed(_estimator(), events)
    stray = _fix(3.0, stamp=stray_ns) if kind == 'gnss' else _imu(3.0, stamp=stray_ns)
    est = _feed(_estimator(), events, {3.0: [(kind, stray)]})
    _same_pose(ref, est, SIDES)
    assert est.counts['time_jumps'] == 0
    key = f'{kind}_zero_stamp' if stray_ns == 0 else f'{kind}_stamp_outliers'
    assert est.counts[key] == 1
    assert est.counts[f'{kind}_out_of_order'] == 0


def test_a_stray_old_stamp_in_the_imu_filter_mode_keeps_the_filter():
    events = _events(orientation=False)
    ref = _feed(_estimator(), events)
    est = _feed(_estimator(), events,
                {3.0: [('imu', _imu(3.0, stamp=STRAY_1970_NS, orientation=False))]})
    _same_pose(ref, est, SIDES)
    assert est.counts['imu_stamp_outliers'] == 1 and est.counts['time_jumps'] == 0


@pytest.mark.parametrize('kind', ['gnss', 'imu', 'imu_filter'])
def test_a_future_stamp_is_dropped_and_the_stream_goes_on(kind):
    """A fix / IMU sample stamped a day ahead, then the normal stream: the stream goes on (the
    jump back to it is confirmed), only the future one is dropped and counted; the poses before
    and after are those of the stream without it (the IMU filter goes on from its last good
    attitude)."""
    orientation = kind != 'imu_filter'
    events = _events(orientation=orientation)
    ref = _feed(_estimator(), events)
    stamp = _ns(3.0) + FUTURE_NS
    stray = ('gnss', _fix(3.05, stamp=stamp)) if kind == 'gnss' \
        else ('imu', _imu(3.005, stamp=stamp, orientation=orientation))
    est = _feed(_estimator(), events, {3.0: [stray]})
    _same_pose(ref, est, SIDES)
    k = 'gnss' if kind == 'gnss' else 'imu'
    assert est.counts[f'{k}_stamp_outliers'] == 1 and est.counts['time_jumps'] == 0
    assert est.pose_at(stamp)[0] is None


def test_a_future_fix_never_brackets_a_frame():
    """Right after a fix stamped a day ahead, before the next fix shows it was stray: a frame
    between the last good fix and the next one is 'after the newest' (the worker waits for
    the next fix) and, once that fix is in, gets the pose of the stream without the stray one.
    Before, the stray fix was buffered and the frame got 'GNSS: gap of 86400.00 s' (no wait,
    no pose)."""
    events = [e for e in _events() if e[0] <= 3.0 + 1e-9]
    ref = _feed(_estimator(), _events())
    est = _feed(_estimator(), events)
    est.add_gnss(_fix(3.05, stamp=_ns(3.0) + FUTURE_NS))
    for t in (3.01, 3.02, 3.03, 3.04, 3.05, 3.06, 3.07, 3.08, 3.09, 3.1):
        est.add_imu(_imu(t))
    pose, why = est.pose_at(_ns(3.05))
    assert pose is None and 'after the newest' in why, why
    est.add_gnss(_fix(3.1))
    _same_pose(ref, est, (3.02, 3.05, 3.08))
    assert est.counts['gnss_stamp_outliers'] == 1 and est.counts['time_jumps'] == 0


def test_a_real_loop_still_starts_the_buffers_over():
    """The whole stream replayed from the start (ros2 bag play --loop): one time jump, the
    poses after the loop are those of the first pass, nothing counted as late."""
    events = _events(4.0)
    ref = _feed(_estimator(), events)
    est = _feed(_feed(_estimator(), events), events)
    assert est.counts['time_jumps'] == 1
    assert all(est.counts[k] == 0 for k in ('gnss_out_of_order', 'imu_out_of_order',
                                             'gnss_stamp_outliers', 'imu_stamp_outliers'))
    _same_pose(ref, est, (0.5, 1.0, 2.5, 3.95))


# ------------------------------------------------------------------------ odometry stamps
DT_ODOM = 0.02  # 50 Hz


def _odom(t: float, p: np.ndarray | None = None, r: np.ndarray | None = None,
          stamp: int | None = None, sigma_p: float = 0.05, sigma_a: float = 0.003
          ) -> OdometrySample:
    r = _rot(t) if r is None else r
    cov = np.diag([sigma_p ** 2] * 3 + [sigma_a ** 2] * 3)
    return OdometrySample(_ns(t) if stamp is None else stamp, _pos(t) if p is None else p,
                          tuple(float(x) for x in matrix_to_quat_xyzw(r)), cov, 'map', 'base_link')


def _odom_source(**kw) -> OdometryPoseSource:
    return OdometryPoseSource(OdometryPoseConfig(datum=DATUM, **kw), EXT)


def _feed_odom(src, t_end: float = 6.0, extra: dict[float, list[OdometrySample]] | None = None,
               shift: dict[float, np.ndarray] | None = None) -> OdometryPoseSource:
    extra = dict(extra or {})
    for k in range(int(round(t_end / DT_ODOM)) + 1):
        t = k * DT_ODOM
        p = _pos(t) + (shift(t) if shift else 0.0)
        src.add_odometry(_odom(t, p))
        for tx in [tx for tx in extra if tx <= t + 1e-9]:
            for s in extra.pop(tx):
                src.add_odometry(s)
    return src


@pytest.mark.parametrize('stamp', [STRAY_1970_NS, 0, _ns(3.0) + FUTURE_NS],
                         ids=['1970', 'zero', 'future'])
def test_odometry_stray_stamps_keep_the_buffer(stamp):
    ref = _feed_odom(_odom_source())
    est = _feed_odom(_odom_source(), extra={3.0: [_odom(3.01, stamp=stamp)]})
    _same_pose(ref, est, SIDES)
    key = 'odometry_zero_stamp' if stamp == 0 else 'odometry_stamp_outliers'
    assert est.counts[key] == 1 and est.counts['time_jumps'] == 0


def test_odometry_loop_starts_the_buffer_over():
    ref = _feed_odom(_odom_source(), 3.0)
    est = _feed_odom(_feed_odom(_odom_source(), 3.0), 3.0)
    assert est.counts['time_jumps'] == 1 and est.counts['odometry_out_of_order'] == 0
    _same_pose(ref, est, (0.5, 1.51, 2.99))


# ------------------------------------------------------------------------ outlier gate
def _far_away(t: float) -> np.ndarray:
    return _pos(t) + np.array([1000.0, 0.0, 0.0])


@pytest.mark.parametrize('fault', ['altitude_1e9', 'jump_1km'])
def test_a_gnss_outlier_is_rejected_and_the_pose_unchanged(fault):
    """A fix at 1e9 m altitude, or 1 km off with a 0.1 m covariance, between two good fixes:
    rejected (counted), never buffered: the positions are those without it; poses next to it
    are degraded with the reason, later ones are not."""
    events = _events()
    ref = _feed(_estimator(), events)
    bad = _fix(3.05, alt=1e9) if fault == 'altitude_1e9' else _fix(3.05, _far_away(3.05), 0.1)
    est = _feed(_estimator(), events, {3.0: [('gnss', bad)]})
    assert est.counts['gnss_rejected'] == 1 and est.counts['gate_resets'] == 0
    _same_pose(ref, est, SIDES, degraded_ok=True)
    pe, _ = est.pose_at(_ns(3.07))
    assert pe.degraded and any(r.startswith('GNSS fix rejected by the outlier gate')
                               for r in pe.reasons)
    _same_pose(ref, est, (1.0, 2.5, 4.1, 5.9))  # not degraded away from it


@pytest.mark.parametrize('fault', ['altitude_1e9', 'jump_1km', 'attitude_flip'])
def test_an_odometry_outlier_is_rejected(fault):
    ref = _feed_odom(_odom_source())
    t = 3.01
    bad = {'altitude_1e9': _odom(t, _pos(t) + np.array([0.0, 0.0, 1e9])),
           'jump_1km': _odom(t, _far_away(t), sigma_p=0.1),
           'attitude_flip': _odom(t, r=rpy_to_matrix(0.0, 0.0, math.pi) @ _rot(t))}[fault]
    est = _feed_odom(_odom_source(), extra={3.0: [bad]})
    assert est.counts['odometry_rejected'] == 1 and est.counts['gate_resets'] == 0
    _same_pose(ref, est, SIDES, degraded_ok=True)
    pe, _ = est.pose_at(_ns(3.015))
    assert pe.degraded and any('rejected by the outlier gate' in r for r in pe.reasons)
    _same_pose(ref, est, (1.0, 2.5, 4.1, 5.9))


def test_the_gate_reinitialises_after_consistent_fixes_at_a_new_place(caplog):
    """From 3.1 s on every fix is 1 km east (the robot was carried away / the GNSS re-converged):
    the first gate_reset_count are rejected, then the gate re-initialises on them (counted,
    logged) and the poses follow the new place; a pose interpolated across the jump is degraded
    with a covariance that covers it; poses before are untouched."""
    events = [(t, kind, _fix(t, _far_away(t)) if kind == 'gnss' and t > 3.05 else s)
              for t, kind, s in _events()]
    ref = _feed(_estimator(), _events())
    with caplog.at_level('WARNING', logger='geo_depth_node.core.pose'):
        est = _feed(_estimator(gate_reset_count=5), events)
    assert est.counts['gnss_rejected'] == 5 and est.counts['gate_resets'] == 1
    assert 'GNSS outlier gate re-initialised on 5 consecutive rejected samples' in caplog.text
    assert 'rejected by the outlier gate' in caplog.text
    _same_pose(ref, est, (1.0, 2.5, 2.95, 3.0))
    for t in (3.1, 3.33, 4.0, 5.9):
        pe, why = est.pose_at(_ns(t))
        assert why == 'ok'
        np.testing.assert_allclose(pe.p_enu_cam, _far_away(t), atol=1e-3)  # interpolation
    pe, _ = est.pose_at(_ns(4.0))  # 0.5 s after the last rejected fix
    assert pe.degraded and any('rejected by the outlier gate' in r for r in pe.reasons)
    pe, _ = est.pose_at(_ns(5.9))
    assert not pe.degraded, pe.reasons
    pe, why = est.pose_at(_ns(3.05))  # between the last old and the first new fix
    assert why == 'ok' and pe.degraded
    assert any('outlier gate re-initialised' in r for r in pe.reasons), pe.reasons
    assert pe.position_cov[0, 0] > 1000.0 ** 2


def test_the_odometry_gate_reinitialises_too():
    est = _feed_odom(_odom_source(gate_reset_count=4),
                     shift=lambda t: np.array([0.0, 1000.0, 0.0]) if t > 3.0 else 0.0)
    assert est.counts['odometry_rejected'] == 4 and est.counts['gate_resets'] == 1
    pe, why = est.pose_at(_ns(5.5))
    assert why == 'ok' and not pe.degraded
    np.testing.assert_allclose(pe.p_enu_base, _pos(5.5) + [0.0, 1000.0, 0.0], atol=1e-3)


def _drive(rng: np.random.Generator, duration: float, rate: float, speed: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, true ENU positions, true headings) of a drive at ``speed`` m/s +- 2 m/s on a winding
    road (radius down to ~200 m: up to ~2 m/s^2 sideways) over hills, sampled at ``rate`` Hz."""
    fine = 1000.0
    tt = np.arange(int(duration * fine) + 1) / fine
    v = speed + 2.0 * np.sin(0.2 * tt + rng.uniform(0, 6))
    yaw = 1.0 * np.sin(0.1 * tt + rng.uniform(0, 6))  # rate up to 0.1 rad/s
    ds = v / fine
    p = np.zeros((tt.size, 3))
    p[1:, 0] = np.cumsum(ds[:-1] * np.cos(yaw[:-1]))
    p[1:, 1] = np.cumsum(ds[:-1] * np.sin(yaw[:-1]))
    p[:, 2] = 5.0 * np.sin(p[:, 0] / 150.0)  # hills
    step = int(round(fine / rate))
    return tt[::step], p[::step], yaw[::step]


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_an_honest_fast_drive_is_never_rejected(seed):
    """60 s of 10 Hz fixes at ~20 m/s (accelerating, turning, over hills) with 0.05 m white noise
    as stated plus a slowly wandering bias (Gauss-Markov 0.1 m, 30 s): no fix is rejected and
    no pose is degraded."""
    rng = np.random.default_rng(seed)
    t, p, _yaw = _drive(rng, 60.0, 10.0, 20.0)
    bias = np.zeros(3)
    est = _estimator(buffer_s=120.0)
    k_imu = 0
    for k in range(t.size):
        bias = bias * math.exp(-0.1 / 30.0) + rng.normal(0, 0.1 * math.sqrt(1 - math.exp(-0.2 / 30)), 3)
        meas = p[k] + bias + rng.normal(0.0, 0.05, 3)
        while k_imu <= 10 * k:  # 100 Hz IMU (orientation only matters for pose_at)
            est.add_imu(_imu(0.0, stamp=_ns(k_imu / 100)))
            k_imu += 1
        est.add_gnss(_fix(t[k], meas, 0.05))
    assert est.counts['gnss_rejected'] == 0 and est.counts['gate_resets'] == 0
    for ts in np.arange(0.05, 59.9, 0.1):
        pe, why = est.pose_at(_ns(float(ts)))
        assert why == 'ok' and not pe.degraded, (ts, why, pe and pe.reasons)


def test_honest_noisy_odometry_at_50_hz_is_never_rejected():
    """60 s of 50 Hz odometry at ~20 m/s with independent 0.1 m / 0.003 rad noise per sample
    (as stated): no sample rejected."""
    rng = np.random.default_rng(5)
    t, p, yaw = _drive(rng, 60.0, 50.0, 20.0)
    src = _odom_source(buffer_s=120.0)
    for k in range(t.size):
        r = rpy_to_matrix(*rng.normal(0.0, 0.003, 2), yaw[k] + rng.normal(0.0, 0.003))
        src.add_odometry(_odom(float(t[k]), p[k] + rng.normal(0.0, 0.1, 3), r, sigma_p=0.1))
    assert src.counts['odometry_rejected'] == 0 and src.counts['gate_resets'] == 0


def test_gate_settings_are_checked():
    with pytest.raises(ValueError, match=r'gate_chi2 must be in .* got -1'):
        PoseConfig(gate_chi2=-1.0)
    with pytest.raises(ValueError, match='gate_reset_count must be an integer, got 2.5'):
        OdometryPoseConfig(datum=DATUM, gate_reset_count=2.5)
    with pytest.raises(ValueError, match='gate_min_alt_m'):
        PoseConfig(gate_min_alt_m=100.0, gate_max_alt_m=0.0)


# ------------------------------------------------------------------------ IMU messages
def _imu_msg(q=(0.0, 0.0, 0.0, 1.0), ocov=(1e-4, 0, 0, 0, 1e-4, 0, 0, 0, 1e-4),
             gcov=(0.0,) * 9, acov=(0.0,) * 9):
    v = NS
    return v(header=v(stamp=v(sec=T0_S + 3, nanosec=5_000_000)),
             orientation=v(x=q[0], y=q[1], z=q[2], w=q[3]), orientation_covariance=list(ocov),
             angular_velocity=v(x=0.0, y=0.0, z=0.0), angular_velocity_covariance=list(gcov),
             linear_acceleration=v(x=0.0, y=0.0, z=9.8),
             linear_acceleration_covariance=list(acov))


def test_a_non_unit_imu_quaternion_is_refused():
    """w + 0.5 was silently normalised (a 9 deg error with an 'ok' pose): refused like an
    Odometry quaternion, by the converter (ValueError with the value) and by the estimator
    (imu_bad); the pose there comes from the good samples."""
    with pytest.raises(ValueError, match=r'not a unit quaternion \(norm 1\.5'):
        imu_sample_from_msg(_imu_msg(q=(0.0, 0.0, 0.0, 1.5)))
    assert imu_sample_from_msg(_imu_msg(q=(0.0, 0.0, 0.0, 1.0 + 1e-5))).orientation_xyzw
    events = _events()
    ref = _feed(_estimator(), events)
    q = tuple(float(x) for x in matrix_to_quat_xyzw(_rot(3.005)))
    bad = _imu(3.005, q=(q[0], q[1], q[2], q[3] + 0.5))
    est = _feed(_estimator(), events, {3.0: [('imu', bad)]})
    assert est.counts['imu_bad'] == 1
    _same_pose(ref, est, SIDES)


@pytest.mark.parametrize('cov', [np.full((3, 3), np.nan), np.zeros((3, 3)), None],
                         ids=['nan', 'all_zero', 'none'])
def test_unknown_imu_orientation_covariance_degrades_the_pose(cov):
    """NaN or all-zero ("unknown" in sensor_msgs/Imu) orientation covariance: the default sigma
    AND a degraded pose with the reason (before: the default, silently)."""
    est = _estimator(default_orientation_sigma_rad=0.03)
    for _t, kind, s in _events(2.0):
        est.add_gnss(s) if kind == 'gnss' else est.add_imu(dataclasses.replace(s, orientation_cov=cov))
    pe, why = est.pose_at(_ns(1.234))
    assert why == 'ok' and pe.degraded and pe.reasons == [IMU_COV_UNKNOWN_REASON]
    np.testing.assert_allclose(pe.rpy_sigma, 0.03)
    assert est.counts['imu_unknown_cov'] == 201


def test_imu_rates_not_provided():
    """angular_velocity / linear_acceleration covariance[0] = -1 (not provided): with an
    orientation the sample is used (the rates are not needed); without one the filter cannot
    run: refused (imu_bad)."""
    s = imu_sample_from_msg(_imu_msg(gcov=(-1.0,) + (0.0,) * 8, acov=(-1.0,) + (0.0,) * 8))
    assert not s.gyro_valid and not s.accel_valid and s.orientation_xyzw is not None
    est = _estimator()
    est.add_imu(s)
    assert est.counts['imu_bad'] == 0
    s = imu_sample_from_msg(_imu_msg(ocov=(-1.0,) + (0.0,) * 8, gcov=(-1.0,) + (0.0,) * 8))
    assert s.orientation_xyzw is None
    est.add_imu(s)
    assert est.counts['imu_bad'] == 1


def test_orientation_with_one_unknown_axis_keeps_the_others():
    est = _estimator(default_orientation_sigma_rad=0.05)
    cov = np.diag([1e-4, 1e-4, 0.0])  # no yaw variance: e.g. no magnetometer
    for _t, kind, s in _events(1.0):
        est.add_gnss(s) if kind == 'gnss' else est.add_imu(dataclasses.replace(s, orientation_cov=cov))
    pe, _ = est.pose_at(_ns(0.5))
    np.testing.assert_allclose(pe.rpy_sigma, [0.01, 0.01, 0.05])
    assert pe.degraded and float(np.linalg.norm(so3_log(pe.R_enu_base.T @ _rot(0.5)))) < 1e-6
