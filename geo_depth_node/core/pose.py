"""Pose of the camera on the Earth from buffered GNSS and IMU, looked up at an image stamp.

ROS-free. The ROS shell converts sensor_msgs/NavSatFix and sensor_msgs/Imu into
:class:`GnssFix` / :class:`ImuSample` and calls :meth:`PoseEstimator.add_gnss`,
:meth:`PoseEstimator.add_imu` and :meth:`PoseEstimator.pose_at`.

Frames and conventions
----------------------
* ``enu``: local East-North-Up frame at the datum (:class:`~geo_depth_node.core.geodesy.EnuFrame`),
  fixed by parameters or taken from the first good fix.
* ``base_link`` (REP-103: x forward, y left, z up); the IMU, GNSS antenna and left camera optical
  frame are rigidly mounted with :class:`Extrinsics` (``p_base = R p_sensor + t``).
* Rotations: ``R_a_b`` maps vectors of frame b into frame a. roll/pitch/yaw are fixed-axis
  (``R = Rz(yaw) Ry(pitch) Rx(roll)``, transforms3d ``euler2mat(r, p, y, 'sxyz')``).

Message conventions honoured
----------------------------
* NavSatFix: altitude above the WGS84 ellipsoid; ``status < 0`` (NO_FIX) -> ignored (counted);
  covariance in ENU, m^2; ``COVARIANCE_TYPE_UNKNOWN`` -> the configured default sigma is used and
  the pose is flagged degraded.
* Imu: orientation of imu_link relative to ENU; ``orientation_covariance[0] == -1`` -> no
  orientation: roll and pitch come from a complementary filter (gyro integration corrected
  toward the measured gravity direction with gain ``tilt_gain`` per second) and yaw from the
  GNSS course over ground while the vehicle moves faster than ``course_min_speed_mps`` (no
  sideslip assumed); before the first course the yaw is unknown (sigma = pi, degraded).

Alternative source (``pose.source: odometry``): :class:`OdometryPoseSource` takes the pose of
base_link from an existing estimator (nav_msgs/Odometry, e.g. robot_localization) whose header
frame is a local ENU frame (REP-103/105: x east, y north, z up) with its origin at the fixed
georef datum; ``pose.covariance`` (6x6, row-major x, y, z, rotX, rotY, rotZ, rotations about the
fixed axes of the header frame) becomes the pose covariance; an all-zero, non-finite or not
positive definite block is replaced by the configured default sigma and the pose is degraded.

Lookup at a stamp: never "latest". Position is interpolated linearly between the two fixes
that bracket the stamp (at most ``max_gnss_gap_s`` apart; the covariance is interpolated
linearly, conservatively, since GNSS errors are correlated in time); attitude is interpolated
(slerp) between the two IMU attitudes that bracket it (at most ``max_imu_gap_s`` apart). A stamp
outside the buffered data gives ``None`` with the reason (the caller labels its points
PRIOR_UNAVAILABLE / POSE_DEGRADED and counts it).
"""
from __future__ import annotations

import bisect
import dataclasses
import logging
import math
from typing import Any, Sequence

import numpy as np

from .geodesy import EnuFrame

_LOG = logging.getLogger(__name__)

STATUS_NO_FIX = -1
#: A sample this much older than the newest of its stream is a time jump (a rosbag loop), not
#: a late sample: the pose buffers start over (the datum is kept) and it is accepted.
TIME_JUMP_BACK_NS = 1_000_000_000
COV_UNKNOWN = 0
GRAVITY = 9.80665


def rpy_to_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """(3, 3) R = Rz(yaw) Ry(pitch) Rx(roll)."""
    cr, sr, cp, sp = math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def matrix_to_rpy(r: np.ndarray) -> tuple[float, float, float]:
    """(roll, pitch, yaw) of ``R = Rz(yaw) Ry(pitch) Rx(roll)``."""
    pitch = math.asin(max(-1.0, min(1.0, -float(r[2, 0]))))
    return math.atan2(float(r[2, 1]), float(r[2, 2])), pitch, math.atan2(float(r[1, 0]),
                                                                        float(r[0, 0]))


def _skew(w: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])


def so3_exp(w: np.ndarray) -> np.ndarray:
    """Rotation matrix of a rotation vector (3,) (Rodrigues)."""
    th = float(np.linalg.norm(w))
    k = _skew(np.asarray(w, dtype=np.float64))
    if th < 1e-12:
        return np.eye(3) + k
    return np.eye(3) + math.sin(th) / th * k + (1 - math.cos(th)) / th ** 2 * (k @ k)


def so3_log(r: np.ndarray) -> np.ndarray:
    """Rotation vector (3,) of a rotation matrix (angle < pi)."""
    c = max(-1.0, min(1.0, (float(np.trace(r)) - 1.0) / 2.0))
    th = math.acos(c)
    v = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if th < 1e-9:
        return 0.5 * v
    return v * (th / (2.0 * math.sin(th)))


def quat_xyzw_to_matrix(q: Sequence[float]) -> np.ndarray:
    """(3, 3) rotation of a quaternion (x, y, z, w) (normalised here).

    Raises:
        ValueError: on a zero or non-finite quaternion.
    """
    x, y, z, w = (float(v) for v in q)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if not math.isfinite(n) or n < 1e-9:
        raise ValueError(f'invalid orientation quaternion {list(q)}')
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def pose6_to_matrix(pose: Sequence[float]) -> np.ndarray:
    """4x4 transform of ``[x, y, z, roll, pitch, yaw]`` (or ``[x, y, z]``: no rotation).

    Raises:
        ValueError: on a length other than 3 or 6, or a non-finite value.
    """
    v = [float(x) for x in pose]
    if len(v) not in (3, 6) or not all(math.isfinite(x) for x in v):
        raise ValueError(f'extrinsic must be [x, y, z] or [x, y, z, roll, pitch, yaw], got {pose}')
    m = np.eye(4)
    m[:3, 3] = v[:3]
    if len(v) == 6:
        m[:3, :3] = rpy_to_matrix(*v[3:])
    return m


@dataclasses.dataclass(frozen=True)
class Extrinsics:
    """Rigid mounts on base_link (4x4, ``p_base = T @ p_sensor``)."""

    base_imu: np.ndarray
    base_camera: np.ndarray
    base_gnss: np.ndarray

    @staticmethod
    def from_params(params: dict[str, Any]) -> 'Extrinsics':
        """From ``extrinsics.base_to_imu|base_to_camera|base_to_gnss`` (see core/params.py)."""
        return Extrinsics(pose6_to_matrix(params['extrinsics.base_to_imu']),
                          pose6_to_matrix(params['extrinsics.base_to_camera']),
                          pose6_to_matrix(params['extrinsics.base_to_gnss']))


@dataclasses.dataclass(frozen=True)
class GnssFix:
    """One NavSatFix: stamp (ns), status, lat/lon (deg), alt (m above the ellipsoid), covariance
    (3, 3) ENU m^2, covariance type (sensor_msgs constants)."""

    stamp_ns: int
    status: int
    lat_deg: float
    lon_deg: float
    alt_m: float
    cov: np.ndarray
    cov_type: int


@dataclasses.dataclass(frozen=True)
class ImuSample:
    """One Imu message: stamp (ns), gyro (3,) rad/s and accel (3,) m/s^2 in imu_link,
    orientation (x, y, z, w) of imu_link in ENU or None, its covariance (3, 3) rad^2 or None."""

    stamp_ns: int
    gyro: np.ndarray
    accel: np.ndarray
    orientation_xyzw: tuple[float, float, float, float] | None
    orientation_cov: np.ndarray | None


def imu_sample_from_msg(msg: Any) -> ImuSample:
    """ImuSample of a sensor_msgs/Imu-like object (rclpy or rosbags message; duck-typed);
    the orientation is None when orientation_covariance[0] == -1.

    Raises:
        ValueError: on a covariance that is not 9 numbers.
    """
    oc = np.asarray(msg.orientation_covariance, dtype=np.float64)
    if oc.size != 9:
        raise ValueError(f'orientation_covariance has {oc.size} elements, expected 9')
    oc = oc.reshape(3, 3)
    q = msg.orientation
    has = oc[0, 0] != -1.0
    stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
    return ImuSample(stamp,
                     np.array([msg.angular_velocity.x, msg.angular_velocity.y,
                               msg.angular_velocity.z]),
                     np.array([msg.linear_acceleration.x, msg.linear_acceleration.y,
                               msg.linear_acceleration.z]),
                     (q.x, q.y, q.z, q.w) if has else None, oc)


def gnss_fix_from_msg(msg: Any) -> GnssFix:
    """GnssFix of a sensor_msgs/NavSatFix-like object (duck-typed; covariance ENU m^2).

    NaN positions pass (NO_FIX messages carry them; the estimator counts and drops them).

    Raises:
        ValueError: a finite latitude outside [-90, 90] or longitude outside [-180, 180] deg,
            or a position_covariance that is not 9 numbers.
    """
    stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
    lat, lon = float(msg.latitude), float(msg.longitude)
    if (math.isfinite(lat) and abs(lat) > 90.0) or (math.isfinite(lon) and abs(lon) > 180.0):
        raise ValueError(f'NavSatFix latitude/longitude out of range: {lat}, {lon} deg')
    cov = np.asarray(msg.position_covariance, dtype=np.float64).reshape(-1)
    if cov.size != 9:
        raise ValueError(f'NavSatFix position_covariance must have 9 numbers, got {cov.size}')
    return GnssFix(stamp, int(msg.status.status), lat, lon, float(msg.altitude),
                   cov.reshape(3, 3), int(msg.position_covariance_type))


@dataclasses.dataclass(frozen=True)
class PoseConfig:
    """Settings of :class:`PoseEstimator` (parameters ``pose.*`` and ``georef.*``)."""

    datum: tuple[float, float, float] | None = None  # fixed datum; None = first good fix
    buffer_s: float = 10.0
    max_gnss_gap_s: float = 1.0
    max_imu_gap_s: float = 0.1
    default_gnss_sigma_m: float = 5.0  # for COVARIANCE_TYPE_UNKNOWN
    tilt_gain: float = 0.1  # 1/s, complementary filter (no IMU orientation)
    tilt_sigma_rad: float = 0.02  # stated roll/pitch sigma of the filter (vehicle accelerations)
    course_min_speed_mps: float = 1.0
    course_baseline_m: float = 5.0
    course_gain: float = 0.3
    default_orientation_sigma_rad: float = 0.02  # IMU gives orientation with zero covariance


@dataclasses.dataclass
class PoseEstimate:
    """Pose at one stamp: ``R_enu_base``, ``p_enu_base``, ``R_enu_cam``, ``p_enu_cam``,
    ``position_cov`` (3, 3) ENU m^2 of the camera centre, ``rpy_sigma`` (3,) rad of the body
    attitude, ``degraded`` and the ``reasons``; ``attitude_cov`` (3, 3) rad^2 of the attitude
    as a rotation vector about the fixed ENU axes when the source gives one (odometry), else
    None (the covariance is built from ``rpy_sigma``)."""

    R_enu_base: np.ndarray
    p_enu_base: np.ndarray
    R_enu_cam: np.ndarray
    p_enu_cam: np.ndarray
    position_cov: np.ndarray
    rpy_sigma: np.ndarray
    degraded: bool
    reasons: list[str]
    attitude_cov: np.ndarray | None = None

    def pose_covariance(self):
        """:class:`~geo_depth_node.core.raycast.PoseCovariance` of the camera (ENU).

        With ``attitude_cov`` ((3, 3) rad^2, rotation vector about the fixed ENU axes, as
        PoseCovariance.attitude) it is used as it is; otherwise it is built from the body's
        roll/pitch/yaw and ``rpy_sigma``.
        """
        from .raycast import PoseCovariance

        if self.attitude_cov is not None:
            return PoseCovariance(self.position_cov, self.attitude_cov)
        return PoseCovariance.from_rpy(self.position_cov, matrix_to_rpy(self.R_enu_base),
                                       self.rpy_sigma)


class PoseEstimator:
    """Buffers GNSS and IMU; gives the camera pose in ENU at an image stamp.

    Args:
        config: :class:`PoseConfig`.
        extrinsics: :class:`Extrinsics`.
    """

    def __init__(self, config: PoseConfig, extrinsics: Extrinsics) -> None:
        self.config = config
        self.ext = extrinsics
        self.frame: EnuFrame | None = EnuFrame(*config.datum) if config.datum else None
        self._gnss_t: list[int] = []
        self._gnss: list[tuple[np.ndarray, np.ndarray, bool]] = []  # (p_ant_enu, cov, unknown)
        self._att_t: list[int] = []
        self._att: list[tuple[np.ndarray, np.ndarray, bool]] = []  # (R_enu_imu, rpy_sigma, deg.)
        self._filter_r: np.ndarray | None = None
        self._filter_t: int | None = None
        self._yaw_known = False
        self._yaw_sigma = math.pi
        self._speed = 0.0  # m/s over ground from GNSS (>= 1 s baseline)
        self.counts = {'gnss_no_fix': 0, 'gnss_unknown_cov': 0, 'imu_bad': 0,
                       'gnss_out_of_order': 0, 'imu_out_of_order': 0, 'time_jumps': 0}

    def _reset_buffers(self) -> None:
        """Time went back (bag loop): forget the buffered fixes, attitudes and the filter; the
        ENU datum stays."""
        self.counts['time_jumps'] += 1
        _LOG.warning('IMU/GNSS stamps went back by more than %.1f s (bag loop?): pose buffers '
                     'reset', TIME_JUMP_BACK_NS * 1e-9)
        for buf in (self._gnss_t, self._gnss, self._att_t, self._att):
            buf.clear()
        self._filter_r = None
        self._filter_t = None
        self._yaw_known = False
        self._yaw_sigma = math.pi
        self._speed = 0.0

    # -- inputs -------------------------------------------------------------------------
    def add_gnss(self, fix: GnssFix) -> None:
        """Buffer one fix (NO_FIX and non-finite fixes are counted and dropped)."""
        if fix.status <= STATUS_NO_FIX or not all(math.isfinite(v) for v in
                                                  (fix.lat_deg, fix.lon_deg, fix.alt_m)):
            self.counts['gnss_no_fix'] += 1
            return
        if self.frame is None:
            self.frame = EnuFrame(fix.lat_deg, fix.lon_deg, fix.alt_m)
            _LOG.info('ENU datum set from the first good fix: %.8f %.8f %.3f m', fix.lat_deg,
                      fix.lon_deg, fix.alt_m)
        if self._gnss_t and self._gnss_t[-1] - fix.stamp_ns > TIME_JUMP_BACK_NS:
            self._reset_buffers()
        elif self._gnss_t and fix.stamp_ns <= self._gnss_t[-1]:
            self.counts['gnss_out_of_order'] += 1
            return
        unknown = fix.cov_type == COV_UNKNOWN or not np.all(np.isfinite(fix.cov)) \
            or np.linalg.eigvalsh(0.5 * (fix.cov + fix.cov.T)).min() <= 0
        if unknown:
            self.counts['gnss_unknown_cov'] += 1
            cov = np.eye(3) * self.config.default_gnss_sigma_m ** 2
        else:
            cov = np.asarray(fix.cov, dtype=np.float64)
        p = self.frame.geodetic_to_enu(fix.lat_deg, fix.lon_deg, fix.alt_m).reshape(3)
        self._gnss_t.append(int(fix.stamp_ns))
        self._gnss.append((p, cov, unknown))
        self._trim(self._gnss_t, self._gnss)
        self._update_speed()
        if self._filter_r is not None:
            self._update_course()

    def _update_speed(self) -> None:
        """Ground speed from the newest fix and the latest fix >= 1 s older (m/s)."""
        tj = self._gnss_t[-1]
        for i in range(len(self._gnss_t) - 2, -1, -1):
            if tj - self._gnss_t[i] >= 1_000_000_000:
                d = self._gnss[-1][0][:2] - self._gnss[i][0][:2]
                self._speed = float(np.linalg.norm(d)) / ((tj - self._gnss_t[i]) * 1e-9)
                return

    def add_imu(self, s: ImuSample) -> None:
        """Buffer one IMU sample: its orientation, or a filter step when it has none."""
        if not (np.all(np.isfinite(s.gyro)) and np.all(np.isfinite(s.accel))):
            self.counts['imu_bad'] += 1
            return
        newest = self._att_t[-1] if self._att_t else self._filter_t
        if newest is not None and newest - s.stamp_ns > TIME_JUMP_BACK_NS:
            self._reset_buffers()
        elif self._att_t and s.stamp_ns <= self._att_t[-1]:
            self.counts['imu_out_of_order'] += 1
            return
        if s.orientation_xyzw is not None and s.orientation_cov is not None \
                and s.orientation_cov[0, 0] != -1.0:
            try:
                r = quat_xyzw_to_matrix(s.orientation_xyzw)
            except ValueError:
                self.counts['imu_bad'] += 1
                return
            var = np.diag(s.orientation_cov)
            sig = np.sqrt(np.maximum(var, 0.0))
            if not np.all(sig > 0):
                sig = np.full(3, self.config.default_orientation_sigma_rad)
            self._att_t.append(int(s.stamp_ns))
            self._att.append((r, sig, False))
        else:
            self._filter_step(s)
        self._trim(self._att_t, self._att)

    def _filter_step(self, s: ImuSample) -> None:
        """Complementary filter: gyro integration + tilt correction toward gravity."""
        a = np.asarray(s.accel, dtype=np.float64)
        if self._filter_r is None:
            # initial tilt from gravity (the specific force points up at rest), yaw 0 (unknown)
            up = a / max(np.linalg.norm(a), 1e-9)
            roll = math.atan2(up[1], up[2])
            pitch = math.atan2(-up[0], math.hypot(up[1], up[2]))
            self._filter_r = rpy_to_matrix(roll, pitch, 0.0)
            self._filter_t = s.stamp_ns
        else:
            dt = (s.stamp_ns - self._filter_t) * 1e-9
            self._filter_t = s.stamp_ns
            w_imu = np.asarray(s.gyro, dtype=np.float64)
            r = self._filter_r @ so3_exp(w_imu * dt)
            # remove the centripetal acceleration omega x v (v along base x at the GNSS speed,
            # no sideslip) so that turns do not tilt the gravity estimate
            v_imu = self.ext.base_imu[:3, :3].T @ np.array([self._speed, 0.0, 0.0])
            a = a - np.cross(w_imu, v_imu)
            g_world = r @ (a / max(np.linalg.norm(a), 1e-9))
            err = np.cross(g_world, np.array([0.0, 0.0, 1.0]))  # horizontal: tilt only
            n_a = abs(np.linalg.norm(a) - GRAVITY)
            w = self.config.tilt_gain * dt if n_a < 0.5 else 0.0  # skip while accelerating
            self._filter_r = so3_exp(w * err) @ r
        yaw_sigma = max(self._yaw_sigma, self.config.tilt_sigma_rad) if self._yaw_known \
            else math.pi
        sig = np.array([self.config.tilt_sigma_rad, self.config.tilt_sigma_rad, yaw_sigma])
        self._att_t.append(int(s.stamp_ns))
        self._att.append((self._filter_r.copy(), sig, not self._yaw_known))

    def _update_course(self) -> None:
        """Yaw from the GNSS course over ground (filter mode only).

        The course is the direction of the chord between the newest fix and the latest older
        fix at least ``course_baseline_m`` away (its sigma is ~sqrt(2) sigma_h / length); it is
        the heading at the chord's middle time, so it is compared with the filter's yaw THEN
        and the current attitude is rotated about ENU z by the difference (fully the first
        time, by ``course_gain`` afterwards).
        """
        if self._filter_r is None or len(self._gnss) < 2 or not self._att_t:
            return
        pj, cj, _ = self._gnss[-1]
        tj = self._gnss_t[-1]
        for i in range(len(self._gnss) - 2, -1, -1):
            pi = self._gnss[i][0]
            dist = float(np.linalg.norm(pj[:2] - pi[:2]))
            if dist >= self.config.course_baseline_m:
                break
        else:
            return
        ti = self._gnss_t[i]
        dt = (tj - ti) * 1e-9
        if dt <= 0 or dist / dt < self.config.course_min_speed_mps:
            return
        course = math.atan2(pj[1] - pi[1], pj[0] - pi[0])
        t_mid = (ti + tj) // 2
        a = self._bracket(self._att_t, t_mid, int(self.config.max_imu_gap_s * 1e9))
        if isinstance(a, str):
            return
        i0, i1, w = a
        r0, r1 = self._att[i0][0], self._att[i1][0]
        r_mid = (r0 @ so3_exp(w * so3_log(r0.T @ r1))) @ self.ext.base_imu[:3, :3].T
        err = (course - matrix_to_rpy(r_mid)[2] + math.pi) % (2 * math.pi) - math.pi
        gain = 1.0 if not self._yaw_known else self.config.course_gain
        corr = rpy_to_matrix(0.0, 0.0, gain * err)
        self._filter_r = corr @ self._filter_r
        sig_h = math.sqrt(max(cj[0, 0], cj[1, 1], self._gnss[i][1][0, 0]))
        self._yaw_sigma = math.sqrt(2.0) * sig_h / dist
        self._yaw_known = True
        # Keep the buffered filter attitudes consistent with the corrected yaw (a look-up of an
        # older stamp then also gets the better yaw, and the next course compares like with like).
        sig = np.array([self.config.tilt_sigma_rad, self.config.tilt_sigma_rad,
                        max(self._yaw_sigma, self.config.tilt_sigma_rad)])
        self._att = [(corr @ r, sig, False) for r, _s, _d in self._att]

    def _trim(self, ts: list[int], vals: list) -> None:
        horizon = ts[-1] - int(self.config.buffer_s * 1e9)
        k = bisect.bisect_left(ts, horizon)
        if k > 0:
            del ts[:k]
            del vals[:k]

    # -- lookup -------------------------------------------------------------------------
    @staticmethod
    def _bracket(ts: list[int], t: int, max_gap_ns: int) -> tuple[int, int, float] | str:
        k = bisect.bisect_left(ts, t)
        if k < len(ts) and ts[k] == t:
            return k, k, 0.0
        if k == 0:
            return 'before the buffered data'
        if k == len(ts):
            return 'after the newest data (not arrived yet?)'
        if ts[k] - ts[k - 1] > max_gap_ns:
            return f'gap of {(ts[k] - ts[k - 1]) * 1e-9:.2f} s'
        return k - 1, k, (t - ts[k - 1]) / (ts[k] - ts[k - 1])

    def pose_at(self, stamp_ns: int) -> tuple[PoseEstimate | None, str]:
        """Camera pose in ENU at ``stamp_ns``; ``(None, reason)`` when it cannot be had."""
        if self.frame is None:
            return None, 'no datum yet (no good GNSS fix)'
        b = self._bracket(self._gnss_t, stamp_ns, int(self.config.max_gnss_gap_s * 1e9))
        if isinstance(b, str):
            return None, f'GNSS: {b}'
        a = self._bracket(self._att_t, stamp_ns, int(self.config.max_imu_gap_s * 1e9))
        if isinstance(a, str):
            return None, f'IMU: {a}'
        g0, g1, wg = b
        p_ant = (1 - wg) * self._gnss[g0][0] + wg * self._gnss[g1][0]
        cov = (1 - wg) * self._gnss[g0][1] + wg * self._gnss[g1][1]
        i0, i1, wa = a
        r0, s0, d0 = self._att[i0]
        r1, s1, d1 = self._att[i1]
        r_imu = r0 @ so3_exp(wa * so3_log(r0.T @ r1))
        sig = np.maximum(s0, s1)
        reasons = []
        if self._gnss[g0][2] or self._gnss[g1][2]:
            reasons.append('GNSS covariance unknown: default sigma used')
        if d0 or d1:
            reasons.append('yaw unknown (no IMU orientation, no course yet)')
        r_base = r_imu @ self.ext.base_imu[:3, :3].T
        p_base = p_ant - r_base @ self.ext.base_gnss[:3, 3]
        r_cam = r_base @ self.ext.base_camera[:3, :3]
        p_cam = p_base + r_base @ self.ext.base_camera[:3, 3]
        return PoseEstimate(r_base, p_base, r_cam, p_cam, cov, sig, bool(reasons), reasons), 'ok'


# ---------------------------------------------------------------------------------------------
# Alternative pose source: nav_msgs/Odometry of an existing estimator in a local ENU frame.

#: A quaternion whose norm differs from 1 by more than this is refused (ValueError); within
#: it, the quaternion is normalised (float32 round trips, estimators that do not renormalise).
QUAT_UNIT_TOL = 1e-3


def _unit_quaternion(q: Sequence[float]) -> tuple[float, float, float, float]:
    """``q`` (x, y, z, w) as floats, checked to be a finite unit quaternion.

    Raises:
        ValueError: not 4 numbers, a non-finite element, or a norm off 1 by > QUAT_UNIT_TOL.
    """
    v = tuple(float(x) for x in q)
    if len(v) != 4:
        raise ValueError(f'orientation quaternion must be (x, y, z, w), got {list(v)}')
    n = math.sqrt(sum(x * x for x in v))
    if not math.isfinite(n) or abs(n - 1.0) > QUAT_UNIT_TOL:
        raise ValueError(f'orientation quaternion (x, y, z, w) {list(v)} is not a unit '
                         f'quaternion (norm {n:.6g})')
    return v[0], v[1], v[2], v[3]


@dataclasses.dataclass(frozen=True)
class OdometrySample:
    """The pose part of one nav_msgs/Odometry message.

    Attributes:
        stamp_ns: header stamp, ns.
        position: (3,) position of base_link (the child frame) in the header frame, m; the
            header frame is the local ENU frame at the datum (x east, y north, z up).
        orientation_xyzw: unit quaternion (x, y, z, w) of base_link in the header frame
            (``R_enu_base``).
        covariance: (6, 6) ``pose.covariance`` reshaped row-major: order x, y, z, rotX, rotY,
            rotZ; m^2, m*rad, rad^2; rotations about the FIXED axes of the header frame (as
            geometry_msgs/PoseWithCovariance).
        frame_id: header frame id (the ENU frame), for diagnostics.
        child_frame_id: the body frame id (base_link), for diagnostics.
    """

    stamp_ns: int
    position: np.ndarray
    orientation_xyzw: tuple[float, float, float, float]
    covariance: np.ndarray
    frame_id: str = ''
    child_frame_id: str = ''


def odometry_sample_from_msg(msg: Any) -> OdometrySample:
    """OdometrySample of a nav_msgs/Odometry-like object (rclpy or rosbags message;
    duck-typed). The twist is not used.

    Raises:
        ValueError: a non-finite position, a non-unit or non-finite quaternion, or a pose
            covariance that is not 36 numbers.
    """
    stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
    pp, q = msg.pose.pose.position, msg.pose.pose.orientation
    pos = np.array([pp.x, pp.y, pp.z], dtype=np.float64)
    if not np.all(np.isfinite(pos)):
        raise ValueError(f'odometry position {pos.tolist()} is not finite')
    quat = _unit_quaternion((q.x, q.y, q.z, q.w))
    cov = np.asarray(msg.pose.covariance, dtype=np.float64)
    if cov.size != 36:
        raise ValueError(f'pose covariance has {cov.size} elements, expected 36')
    return OdometrySample(stamp, pos, quat, cov.reshape(6, 6).copy(), str(msg.header.frame_id),
                          str(msg.child_frame_id))


@dataclasses.dataclass(frozen=True)
class OdometryPoseConfig:
    """Settings of :class:`OdometryPoseSource` (parameters ``pose.*`` and ``georef.datum_*``).

    Attributes:
        datum: (lat deg, lon deg, h m above the ellipsoid) of the origin of the odometry's
            header frame (georef.datum_mode must be fixed).
        buffer_s: samples older than this before the newest are dropped, s.
        max_gap_s: largest time between the two samples that bracket a stamp, s.
        default_position_sigma_m: position sigma used when the message's position covariance
            is unusable (all zero, non-finite, not positive definite), m.
        default_attitude_sigma_rad: the same for the attitude block, rad.
        frame_id: expected header frame id (the ENU frame, e.g. output.enu_frame_id); a
            different one is counted and warned about once, not refused; '' = not checked.
    """

    datum: tuple[float, float, float]
    buffer_s: float = 10.0
    max_gap_s: float = 0.25
    default_position_sigma_m: float = 5.0
    default_attitude_sigma_rad: float = 0.05
    frame_id: str = ''


def _usable_cov(block: np.ndarray) -> np.ndarray | None:
    """(3, 3) block symmetrised, or None when it is non-finite, not symmetric or not
    positive definite (an all-zero block is the ROS way of saying "unknown")."""
    b = np.asarray(block, dtype=np.float64)
    if not np.all(np.isfinite(b)):
        return None
    scale = float(np.abs(b).max())
    if scale == 0.0 or not np.allclose(b, b.T, rtol=0.0, atol=1e-9 * scale):
        return None
    b = 0.5 * (b + b.T)
    if np.linalg.eigvalsh(b).min() <= 0.0:
        return None
    return b


class OdometryPoseSource:
    """Buffers nav_msgs/Odometry poses of base_link in a local ENU frame; gives the camera pose
    at an image stamp (the same contract as :meth:`PoseEstimator.pose_at`).

    Position is interpolated linearly and attitude by slerp between the two samples that
    bracket the stamp (at most ``max_gap_s`` apart); the two covariance blocks are
    interpolated linearly (conservative for correlated errors). The camera centre gets the
    base's position covariance (the lever arm of extrinsics.base_to_camera times the attitude
    sigma is neglected, as for the GNSS antenna); the attitude covariance (rotation vector
    about the fixed ENU axes) is the same for every rigidly mounted frame.

    Args:
        config: :class:`OdometryPoseConfig`.
        extrinsics: :class:`Extrinsics` (only ``base_camera`` is used).

    Attributes:
        frame: the :class:`EnuFrame` of the datum (the odometry's header frame).
        counts: 'odometry_bad', 'odometry_out_of_order', 'odometry_unknown_cov',
            'odometry_frame_mismatch' (diagnostics).
    """

    def __init__(self, config: OdometryPoseConfig, extrinsics: Extrinsics) -> None:
        self.config = config
        self.ext = extrinsics
        self.frame: EnuFrame = EnuFrame(*config.datum)
        self._t: list[int] = []
        # (p_enu_base (3,), R_enu_base (3, 3), position cov, attitude cov, reasons)
        self._v: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]] = []
        self._announced = False
        self.counts = {'odometry_bad': 0, 'odometry_out_of_order': 0,
                       'odometry_unknown_cov': 0, 'odometry_frame_mismatch': 0,
                       'time_jumps': 0}

    def add_odometry(self, s: OdometrySample) -> None:
        """Buffer one sample; bad (non-finite, non-unit quaternion, covariance not 6x6) and
        out-of-order samples are counted and dropped."""
        try:
            p = np.asarray(s.position, dtype=np.float64).reshape(3)
            if not np.all(np.isfinite(p)):
                raise ValueError(f'position {p.tolist()} is not finite')
            r = quat_xyzw_to_matrix(_unit_quaternion(s.orientation_xyzw))
            cov = np.asarray(s.covariance, dtype=np.float64).reshape(6, 6)
        except ValueError as exc:
            self.counts['odometry_bad'] += 1
            _LOG.debug('odometry sample at %d ns dropped: %s', s.stamp_ns, exc)
            return
        if not self._announced:
            self._announced = True
            _LOG.info('odometry pose: header frame %r taken as ENU at the datum %.8f %.8f '
                      '%.3f m, child frame %r as base_link', s.frame_id, self.frame.lat0_deg,
                      self.frame.lon0_deg, self.frame.h0_m, s.child_frame_id)
        if self.config.frame_id and s.frame_id and s.frame_id != self.config.frame_id:
            if self.counts['odometry_frame_mismatch'] == 0:
                _LOG.warning('odometry header frame %r is not %r (output.enu_frame_id): it is '
                             'used as ENU at the datum all the same', s.frame_id,
                             self.config.frame_id)
            self.counts['odometry_frame_mismatch'] += 1
        if self._t and self._t[-1] - s.stamp_ns > TIME_JUMP_BACK_NS:
            self.counts['time_jumps'] += 1
            _LOG.warning('odometry stamps went back by more than %.1f s (bag loop?): buffer '
                         'reset', TIME_JUMP_BACK_NS * 1e-9)
            self._t.clear()
            self._v.clear()
        elif self._t and s.stamp_ns <= self._t[-1]:
            self.counts['odometry_out_of_order'] += 1
            return
        reasons: list[str] = []
        pos_cov = _usable_cov(cov[:3, :3])
        if pos_cov is None:
            pos_cov = np.eye(3) * self.config.default_position_sigma_m ** 2
            reasons.append('odometry position covariance unknown: default sigma used')
        att_cov = _usable_cov(cov[3:, 3:])
        if att_cov is None:
            att_cov = np.eye(3) * self.config.default_attitude_sigma_rad ** 2
            reasons.append('odometry attitude covariance unknown: default sigma used')
        if reasons:
            self.counts['odometry_unknown_cov'] += 1
        self._t.append(int(s.stamp_ns))
        self._v.append((p, r, pos_cov, att_cov, tuple(reasons)))
        horizon = self._t[-1] - int(self.config.buffer_s * 1e9)
        k = bisect.bisect_left(self._t, horizon)
        if k > 0:
            del self._t[:k]
            del self._v[:k]

    def pose_at(self, stamp_ns: int) -> tuple[PoseEstimate | None, str]:
        """Camera pose in ENU at ``stamp_ns``; ``(None, reason)`` when it cannot be had
        ('odometry: after the newest data ...' while the sample after the stamp has not
        arrived, 'odometry: before the buffered data', 'odometry: gap of X s',
        'odometry: no data yet')."""
        if not self._t:
            return None, 'odometry: no data yet'
        b = PoseEstimator._bracket(self._t, stamp_ns, int(self.config.max_gap_s * 1e9))
        if isinstance(b, str):
            return None, f'odometry: {b}'
        i0, i1, w = b
        p0, r0, pc0, ac0, rs0 = self._v[i0]
        p1, r1, pc1, ac1, rs1 = self._v[i1]
        p_base = (1 - w) * p0 + w * p1
        r_base = r0 @ so3_exp(w * so3_log(r0.T @ r1))
        pos_cov = (1 - w) * pc0 + w * pc1
        att_cov = (1 - w) * ac0 + w * ac1
        reasons = list(dict.fromkeys(rs0 + rs1))
        r_cam = r_base @ self.ext.base_camera[:3, :3]
        p_cam = p_base + r_base @ self.ext.base_camera[:3, 3]
        return PoseEstimate(r_base, p_base, r_cam, p_cam, pos_cov, np.sqrt(np.diag(att_cov)),
                            bool(reasons), reasons, att_cov), 'ok'
