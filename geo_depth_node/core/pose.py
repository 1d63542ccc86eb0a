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
* Imu: orientation of imu_link relative to ENU, a unit quaternion (norm within
  :data:`QUAT_UNIT_TOL` of 1, else the sample is refused like an Odometry one: ``imu_bad``);
  ``orientation_covariance[0] == -1`` -> no orientation: roll and pitch come from a
  complementary filter (gyro integration corrected toward the measured gravity direction with
  gain ``tilt_gain`` per second) and yaw from the GNSS course over ground while the vehicle
  moves faster than ``course_min_speed_mps`` (no sideslip assumed); before the first course the
  yaw is unknown (sigma = pi, degraded). An orientation whose covariance is unknown (all zero,
  "unknown" in sensor_msgs/Imu, or non-finite, or a variance <= 0) gets
  ``default_orientation_sigma_rad`` on those axes and the pose is degraded
  (``imu_unknown_cov``). ``angular_velocity_covariance[0] == -1`` /
  ``linear_acceleration_covariance[0] == -1`` mean "not provided": with an orientation they are
  not needed (the orientation is used, the rates are not); without one the filter needs both,
  so such a sample is refused (``imu_bad``). Other rate / acceleration covariances are not used
  (the filter has fixed gains).

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

Stamp order (every stream: GNSS, IMU, odometry)
-----------------------------------------------
A stamp <= 0 is refused (``<kind>_zero_stamp``; the node and replay drop such messages before,
a direct caller gets the same). Each stream has a :class:`~geo_depth_node.core.stamps.StampGuard`:
a newer stamp is used; a stamp that is not newer is held until the next message of the stream
says what it was. A late or stray one (1970, a reset clock, one delayed message) is dropped and
counted: ``<kind>_stamp_outliers`` when it is more than :data:`STAMP_OUTLIER_NS` older than the
newest stamp of the stream, else ``<kind>_out_of_order``; the buffers are untouched. A jump back
confirmed by the next message is either

* a true loop or restart (``rosbag play --loop``; nothing buffered runs on into the held stamps,
  :func:`~geo_depth_node.core.stamps.restart_index`): every buffer of the pose source starts
  over (``time_jumps``; the ENU datum is kept, the IMU filter restarts, the guards of the other
  streams start over too so that they follow the loop without a reset of their own), or
* the end of a stray FUTURE stamp: the buffered entries newer than the held stamps are dropped
  (``<kind>_stamp_outliers``) and the rest is kept (a buffer is trimmed to ``buffer_s`` before
  its SECOND newest stamp, so one future stamp never empties it). If the IMU filter (no
  orientation) had
  integrated the dropped samples, it goes on from the newest kept filter attitude (its yaw
  included) instead, or restarts from the held samples when there is none.

Outlier gate (GNSS fixes, odometry positions)
---------------------------------------------
A new fix / odometry sample is refused (``gnss_rejected`` / ``odometry_rejected``, warned about
at most every :data:`GATE_LOG_THROTTLE_S` s; it is NOT buffered, so no pose is ever made from it)
when

* its height is outside [``gate_min_alt_m``, ``gate_max_alt_m``] above the WGS84 ellipsoid,
* the speed it implies from the newest accepted sample, beyond 3 sigma of the two positions
  (sigma^2 = the trace of their two covariances + ``gate_jitter_m``^2), is above
  ``gate_max_speed_mps`` (odometry also: the rotation rate beyond 3 sigma of the two attitudes
  (the trace of their covariances) above ``gate_max_rate_radps``), or
* its innovation against a constant-velocity prediction fails the chi-square test
  ``d^2 = v^T S^-1 v > gate_chi2`` (3 dof). The prediction: velocity = chord from the oldest
  accepted sample within ``gate_window_s`` before the newest one (T s earlier) to the newest,
  ``p_pred = p_j + v dt``; ``S = (1 + dt/T)^2 C_j + (dt/T)^2 C_i + R_new + (q^2 + s_j^2) I`` with
  ``q = gate_accel_mps2 dt (T + dt) / 2`` (the position error of a constant acceleration
  ``gate_accel_mps2`` for the chord velocity, treated as a 1-sigma: the gate tolerates
  accelerations up to ~sqrt(gate_chi2) x gate_accel_mps2) and ``s_j = gate_jitter_m`` (a 1-sigma
  jump per sample that is always tolerated: RTK fixed/float switches, estimator corrections;
  it also keeps the false rejections of high-rate honest data far below the chi-square rate:
  with 0.05 m fixes at 10 Hz a single fix is refused from a jump of ~1.5 m on). With a
  single accepted sample (or a chord too short to give a velocity better than the maximum
  speed) the velocity is taken as 0 with sigma ``gate_max_speed_mps``.

The first sample (empty buffer) is only checked for its height. The gate re-initialises
(``gate_resets``, a warning) when ``gate_reset_count`` rejected samples in a row are consistent
with each other (the same test among themselves: the robot was moved, the GNSS re-converged)
or when a rejected sample comes more than ``gate_reset_s`` after the newest accepted one: the
consistent rejected samples are taken (they stay
counted as rejected) and start a new track segment; the prediction, the GNSS speed and the
course never span segments. A pose interpolated across a re-initialisation is degraded and its
position covariance is inflated by the jump (``d d^T``); a pose whose bracketing samples
enclose a rejected one, or within ``gate_degraded_s`` after a rejected one, is degraded
('GNSS fix rejected by the outlier gate ...'). The IMU is not used by the gate (a prediction
from its accelerations would need the attitude and the accelerometer biases; the chord
predictor with the acceleration bound is enough for gross outliers).
"""
from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import time
from typing import Any, Callable, Sequence

import numpy as np

from .geodesy import EnuFrame
from .stamps import StampGuard, Verdict, restart_index

_LOG = logging.getLogger(__name__)

STATUS_NO_FIX = -1
#: A late sample (not newer than the newest of its stream) this much older than the newest is a
#: stray stamp (``<kind>_stamp_outliers``), a less late one is out of order
#: (``<kind>_out_of_order``); ns.
STAMP_OUTLIER_NS = 1_000_000_000
COV_UNKNOWN = 0
GRAVITY = 9.80665
#: an IMU reading beyond these is broken, not a motion (MEMS IMUs saturate near 35 rad/s and
#: 16 g; shocks pass): refused as imu_bad
MAX_GYRO_RADPS = 100.0
MAX_ACCEL_MPS2 = 1000.0
#: Rejections of an outlier gate are logged at most once per this many seconds (wall clock).
GATE_LOG_THROTTLE_S = 5.0
#: A quaternion whose norm differs from 1 by more than this is refused (ValueError); within
#: it, the quaternion is normalised (float32 round trips, estimators that do not renormalise).
QUAT_UNIT_TOL = 1e-3


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
    orientation (x, y, z, w) of imu_link in ENU or None, its covariance (3, 3) rad^2 or None
    (None, all zero or non-finite = unknown: default sigma, degraded); ``gyro_valid`` /
    ``accel_valid`` False when the message says the field is not provided (its covariance[0] is
    -1)."""

    stamp_ns: int
    gyro: np.ndarray
    accel: np.ndarray
    orientation_xyzw: tuple[float, float, float, float] | None
    orientation_cov: np.ndarray | None
    gyro_valid: bool = True
    accel_valid: bool = True


def _provided(msg: Any, field: str) -> bool:
    """False when the message's ``field`` (a 9-number covariance) starts with -1 ("not
    provided", sensor_msgs/Imu); True when it is absent (duck-typed messages)."""
    cov = getattr(msg, field, None)
    if cov is None:
        return True
    c = np.asarray(cov, dtype=np.float64).reshape(-1)
    return not (c.size > 0 and c[0] == -1.0)


def imu_sample_from_msg(msg: Any) -> ImuSample:
    """ImuSample of a sensor_msgs/Imu-like object (rclpy or rosbags message; duck-typed);
    the orientation is None when orientation_covariance[0] == -1; ``gyro_valid`` /
    ``accel_valid`` follow angular_velocity_covariance[0] / linear_acceleration_covariance[0]
    == -1 (not provided).

    Raises:
        ValueError: on an orientation covariance that is not 9 numbers, or an orientation
            (when provided) that is not a finite unit quaternion (norm off 1 by more than
            QUAT_UNIT_TOL; it is not silently normalised).
    """
    oc = np.asarray(msg.orientation_covariance, dtype=np.float64)
    if oc.size != 9:
        raise ValueError(f'orientation_covariance has {oc.size} elements, expected 9')
    oc = oc.reshape(3, 3)
    q = msg.orientation
    has = oc[0, 0] != -1.0
    quat = _unit_quaternion((q.x, q.y, q.z, q.w)) if has else None
    stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
    return ImuSample(stamp,
                     np.array([msg.angular_velocity.x, msg.angular_velocity.y,
                               msg.angular_velocity.z], dtype=np.float64),
                     np.array([msg.linear_acceleration.x, msg.linear_acceleration.y,
                               msg.linear_acceleration.z], dtype=np.float64),
                     quat, oc, _provided(msg, 'angular_velocity_covariance'),
                     _provided(msg, 'linear_acceleration_covariance'))


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


# ---------------------------------------------------------------------------------------------
# Outlier gate (shared by the GNSS fixes of PoseEstimator and the OdometryPoseSource samples).

#: name -> (lowest, highest, lowest allowed itself) of the gate settings of both configs
_GATE_LIMITS: dict[str, tuple[float, float, bool]] = {
    'gate_chi2': (0.0, 1e9, False),
    'gate_accel_mps2': (0.0, 1e3, False),
    'gate_jitter_m': (0.0, 1e4, True),
    'gate_window_s': (0.0, 60.0, False),
    'gate_max_speed_mps': (0.0, 1e5, False),
    'gate_min_alt_m': (-1e7, 1e7, True),
    'gate_max_alt_m': (-1e7, 1e7, True),
    'gate_reset_count': (2, 1000, True),
    'gate_reset_s': (0.0, 1e6, False),
    'gate_degraded_s': (0.0, 1e6, True),
    'gate_max_rate_radps': (0.0, 1e4, False),
}


def _validate_gate(cfg: Any) -> None:
    """Check the ``gate_*`` fields of a pose config.

    Raises:
        ValueError: a field that is not a number in its range (named with the value), a
            non-integer ``gate_reset_count``, or ``gate_min_alt_m >= gate_max_alt_m``.
    """
    for name, (lo, hi, lo_ok) in _GATE_LIMITS.items():
        if not hasattr(cfg, name):
            continue
        v = getattr(cfg, name)
        integer = name == 'gate_reset_count'
        if isinstance(v, bool) or not isinstance(v, (int, np.integer) if integer
                                                 else (int, float, np.integer, np.floating)):
            raise ValueError(f'{type(cfg).__name__}.{name} must be '
                             f'{"an integer" if integer else "a number"}, got {v!r}')
        if not (math.isfinite(v) and (lo <= v if lo_ok else lo < v) and v <= hi):
            raise ValueError(f'{type(cfg).__name__}.{name} must be in '
                             f'{"[" if lo_ok else "("}{lo}, {hi}], got {v!r}')
    if cfg.gate_min_alt_m >= cfg.gate_max_alt_m:
        raise ValueError(f'{type(cfg).__name__}: gate_min_alt_m ({cfg.gate_min_alt_m}) must be '
                         f'below gate_max_alt_m ({cfg.gate_max_alt_m})')


def _var_bound(c: np.ndarray) -> float:
    """A bound (>= 0) of the largest eigenvalue of a positive semi-definite (3, 3) matrix: its
    trace (cheap; at most 3 times too large, which only makes the hard checks more lenient)."""
    return max(0.0, float(np.trace(c)))


#: an accepted sample as the gate sees it: (p (3,) m, position cov (3, 3) m^2, R (3, 3) or None,
#: attitude cov (3, 3) rad^2 or None)
_GateEntry = tuple[np.ndarray, np.ndarray, 'np.ndarray | None', 'np.ndarray | None']


def _admit(gate: '_OutlierGate', counts: dict[str, int], kind: str, cfg: Any,
           ts: Sequence[int], entry: Callable[[int], _GateEntry], last_p: np.ndarray | None,
           t: int, sample: _GateEntry, payload: Any, append: Callable[[int, Any], None]
           ) -> None:
    """One sample (stamp ``t`` ns; ``sample`` = position, its covariance, attitude, its
    covariance) through the outlier gate of a pose source: accepted, it is ``append``-ed with
    its ``payload``; rejected, it is counted (``<kind>_rejected``) and, when the rejections
    re-initialise the gate (``gate_resets``), the consistent rejected samples are appended
    (``last_p``: the newest buffered position, or None)."""
    why = _gate_test(cfg, ts, entry, gate.segment_start(ts), t, *sample)
    if why is None:
        gate.accepted()
        append(t, payload)
        return
    counts[f'{kind}_rejected'] += 1
    if gate.reject(cfg, t, why, ts, sample, payload):
        counts['gate_resets'] += 1
        for tc, candidate in gate.take_candidates(last_p):
            append(tc, candidate)


def _gate_test(cfg: Any, ts: Sequence[int], entry: Callable[[int], _GateEntry], lo: int,
               t_new: int, p_new: np.ndarray, cov_new: np.ndarray,
               r_new: np.ndarray | None = None, att_new: np.ndarray | None = None
               ) -> str | None:
    """Why the sample (``t_new`` ns, ENU position ``p_new`` m with covariance ``cov_new`` m^2,
    attitude ``r_new`` with covariance ``att_new`` rad^2) does not continue the track
    ``ts[lo:]`` / ``entry(i)``, or None when it does (see the module docstring: implied speed,
    rotation rate, constant-velocity innovation chi-square test). An empty track accepts."""
    j = len(ts) - 1
    if j < lo:
        return None
    dt = (t_new - ts[j]) * 1e-9
    if dt <= 0.0:
        return f'stamp {t_new} ns is not after the last accepted one ({ts[j]} ns)'
    p_j, c_j, r_j, a_j = entry(j)
    jit2 = float(cfg.gate_jitter_m) ** 2
    vmax = float(cfg.gate_max_speed_mps)
    # hard bounds against the newest accepted sample
    dist = float(np.linalg.norm(p_new - p_j))
    sig = math.sqrt(_var_bound(c_j + cov_new) + jit2)
    speed = max(0.0, dist - 3.0 * sig) / dt
    if speed > vmax:
        return (f'jump of {dist:.1f} m in {dt:.3f} s implies {speed:.1f} m/s beyond 3 sigma '
                f'(gate_max_speed_mps {vmax:g})')
    if r_new is not None and r_j is not None and att_new is not None and a_j is not None:
        ang = float(np.linalg.norm(so3_log(r_j.T @ r_new)))
        sa = math.sqrt(_var_bound(a_j) + _var_bound(att_new))
        rate = max(0.0, ang - 3.0 * sa) / dt
        if rate > cfg.gate_max_rate_radps:
            return (f'attitude jump of {math.degrees(ang):.1f} deg in {dt:.3f} s implies '
                    f'{rate:.2f} rad/s beyond 3 sigma (gate_max_rate_radps '
                    f'{cfg.gate_max_rate_radps:g})')
    # constant-velocity prediction from the chord over the last gate_window_s
    i = max(lo, bisect.bisect_left(ts, ts[j] - int(round(cfg.gate_window_s * 1e9))))
    v = None
    if i < j:
        p_i, c_i, _r, _a = entry(i)
        chord = (ts[j] - ts[i]) * 1e-9
        if _var_bound(c_i + c_j) / chord ** 2 <= vmax ** 2:
            v = (p_j - p_i) / chord
            a, b = 1.0 + dt / chord, dt / chord
            p_cov = a * a * c_j + b * b * c_i
            q = cfg.gate_accel_mps2 * dt * (chord + dt) / 2.0
    if v is None:  # one sample (or a useless chord): velocity 0 +- the maximum speed
        v = np.zeros(3)
        p_cov = c_j + np.eye(3) * (vmax * dt) ** 2
        q = 0.0
    innov = p_new - (p_j + v * dt)
    s = p_cov + cov_new + np.eye(3) * (q * q + jit2)
    d2 = float(innov @ np.linalg.solve(s, innov))
    if not math.isfinite(d2) or d2 > cfg.gate_chi2:
        return (f'innovation {float(np.linalg.norm(innov)):.2f} m against the constant-velocity '
                f'prediction over {dt:.3f} s: d^2 {d2:.3g} > gate_chi2 {cfg.gate_chi2:g}')
    return None


class _OutlierGate:
    """State of the outlier gate of one position stream ('GNSS fix' / 'odometry sample'):
    the stamps of the rejected samples, of the re-initialisations, the candidate track of
    consecutive rejected samples, the log throttle. The accepted track itself is the caller's
    buffer (see :func:`_gate_test`)."""

    def __init__(self, what: str, reason_what: str) -> None:
        self.what = what  # for the log, e.g. 'GNSS fix'
        self.reason_what = reason_what  # for the pose reasons, e.g. 'GNSS'
        self.rejected: list[int] = []  # stamps (ns, sorted) of rejected samples
        self.restarts: list[int] = []  # stamps (ns, sorted) of the first sample of a segment
        self.cand_t: list[int] = []  # consecutive rejected samples consistent with each other
        self.cand: list[tuple[_GateEntry, Any]] = []  # (gate entry, the caller's payload)
        self._log_t = -math.inf
        self._unlogged = 0

    def reset(self) -> None:
        """Forget everything (a time jump: the buffers start over)."""
        for buf in (self.rejected, self.restarts, self.cand_t, self.cand):
            buf.clear()

    def drop_from(self, stamp_ns: int) -> None:
        """Forget what is stamped at or after ``stamp_ns`` (stray future stamps dropped)."""
        for ts in (self.rejected, self.restarts):
            del ts[bisect.bisect_left(ts, stamp_ns):]
        k = bisect.bisect_left(self.cand_t, stamp_ns)
        del self.cand_t[k:]
        del self.cand[k:]

    def accepted(self) -> None:
        """A sample was accepted: the candidate track of rejected ones ends."""
        self.cand_t.clear()
        self.cand.clear()

    def trim(self, horizon_ns: int) -> None:
        """Forget rejections and restarts older than ``horizon_ns`` (the buffer's horizon)."""
        for ts in (self.rejected, self.restarts):
            del ts[:bisect.bisect_left(ts, horizon_ns)]

    def segment_start(self, ts: Sequence[int]) -> int:
        """Index in the caller's sorted stamps ``ts`` of the first sample of the current
        segment (0 without a re-initialisation)."""
        return bisect.bisect_left(ts, self.restarts[-1]) if self.restarts else 0

    def reject(self, cfg: Any, stamp_ns: int, reason: str, ts: Sequence[int],
               entry: _GateEntry | None = None, payload: Any = None) -> bool:
        """Note a rejected sample (logged, throttled). With ``entry`` (not for an implausible
        height) it joins the candidate track; True when the gate must re-initialise on the
        candidates now (``gate_reset_count`` consistent ones, or nothing accepted for
        ``gate_reset_s``); the caller then takes :meth:`take_candidates`."""
        bisect.insort(self.rejected, stamp_ns)
        now = time.monotonic()
        if now - self._log_t >= GATE_LOG_THROTTLE_S:
            more = f' ({self._unlogged} more since the last message)' if self._unlogged else ''
            _LOG.warning('%s at %.3f s rejected by the outlier gate: %s%s', self.what,
                         stamp_ns * 1e-9, reason, more)
            self._log_t, self._unlogged = now, 0
        else:
            self._unlogged += 1
        if entry is None:
            return False
        if self.cand_t and _gate_test(cfg, self.cand_t, lambda k: self.cand[k][0], 0, stamp_ns,
                                      entry[0], entry[1], entry[2], entry[3]) is not None:
            self.cand_t.clear()
            self.cand.clear()
        self.cand_t.append(stamp_ns)
        self.cand.append((entry, payload))
        since = (stamp_ns - ts[-1]) * 1e-9 if ts else math.inf
        return len(self.cand) >= cfg.gate_reset_count or since > cfg.gate_reset_s

    def take_candidates(self, last_p: np.ndarray | None) -> list[tuple[int, Any]]:
        """The candidate samples (stamp, payload), oldest first, as the start of a new segment
        (logged with the jump from ``last_p``, the newest accepted position; the caller counts
        ``gate_resets``)."""
        out = [(t, c[1]) for t, c in zip(self.cand_t, self.cand, strict=True)]
        jump = math.nan if last_p is None else float(np.linalg.norm(self.cand[-1][0][0] - last_p))
        _LOG.warning('%s outlier gate re-initialised on %d consecutive rejected samples from '
                     '%.3f s (a jump of %.1f m from the last accepted one: the robot was moved or '
                     'the source re-converged); they start a new segment', self.reason_what,
                     len(out), out[0][0] * 1e-9, jump)
        bisect.insort(self.restarts, out[0][0])
        self.cand_t.clear()
        self.cand.clear()
        return out

    def pose_reasons(self, cfg: Any, t: int, t0: int, t1: int, p0: np.ndarray, p1: np.ndarray
                     ) -> tuple[list[str], np.ndarray | None]:
        """Degradation reasons of a pose at ``t`` interpolated between samples at ``t0 <= t <=
        t1`` (positions ``p0``, ``p1``), and the covariance to add (``d d^T`` of the jump) when
        the interpolation spans a re-initialisation (else None)."""
        reasons: list[str] = []
        add = None
        if t0 < t1:
            k = bisect.bisect_right(self.restarts, t0)
            if k < len(self.restarts) and self.restarts[k] <= t1:
                d = np.asarray(p1 - p0, dtype=np.float64)
                add = np.outer(d, d)
                reasons.append(f'{self.reason_what} outlier gate re-initialised between the '
                               f'samples that bracket this stamp ({float(np.linalg.norm(d)):.1f} '
                               'm apart): position covariance inflated by the jump')
        hold = int(round(cfg.gate_degraded_s * 1e9))
        a = min(t0 + 1, t - hold) if t0 < t1 else t - hold
        b = max(t1 - 1, t) if t0 < t1 else t
        k = bisect.bisect_left(self.rejected, a)
        if k < len(self.rejected) and self.rejected[k] <= b:
            reasons.append(f'{self.what} rejected by the outlier gate between the samples that '
                           f'bracket this stamp or up to {cfg.gate_degraded_s:g} s before it')
        return reasons, add


def _trim_buffer(ts: list[int], vals: list, buffer_s: float) -> None:
    """Drop the entries of the sorted stamps ``ts`` (and ``vals``) older than ``buffer_s``
    before the SECOND newest stamp: one stray future stamp (dropped again when the stream
    goes on at the right time) never empties a buffer."""
    if len(ts) < 2:
        return
    k = bisect.bisect_left(ts, ts[-2] - int(buffer_s * 1e9))
    if k > 0:
        del ts[:k]
        del vals[:k]


def _route_guard(guard: StampGuard, counts: dict[str, int], kind: str, stamp_ns: int,
                 item: Any, take: Any, jump: Any) -> None:
    """One sample of stream ``kind`` through its StampGuard: late ones counted
    (:func:`_count_late`); on ACCEPT ``take`` the samples it confirmed, then this one; on a
    confirmed JUMP ``jump(items)``."""
    d = guard.check(stamp_ns, item)
    _count_late(counts, kind, d.late, guard.newest)
    if d.verdict is Verdict.ACCEPT:
        for _stamp, earlier in d.before:  # a sample far ahead that this one confirmed
            take(earlier)
        take(item)
    elif d.verdict is Verdict.JUMP:
        jump(d.items)


def _count_late(counts: dict[str, int], kind: str, late: list[tuple[int, Any]],
                newest: int | None) -> None:
    """Count the samples a StampGuard answered late: ``<kind>_stamp_outliers`` when more than
    STAMP_OUTLIER_NS older than the newest stamp of the stream, else ``<kind>_out_of_order``."""
    for stamp, _item in late:
        far = newest is not None and abs(newest - stamp) > STAMP_OUTLIER_NS
        counts[f'{kind}_stamp_outliers' if far else f'{kind}_out_of_order'] += 1
        _LOG.debug('%s sample at %d ns dropped: %s', kind, stamp,
                   'stray stamp' if far else 'out of order')


@dataclasses.dataclass(frozen=True, kw_only=True)
class GateConfig:
    """Settings of the outlier gate on the positions of a pose source (keyword-only fields,
    shared by :class:`PoseConfig` and :class:`OdometryPoseConfig`; parameters ``pose.gate_*``).

    Attributes:
        gate_chi2: outlier gate on the fixes: chi-square threshold of the Mahalanobis distance
            d^2 of a fix from the constant-velocity prediction (3 dof; 16.27 = 99.9 %).
        gate_accel_mps2: acceleration taken as the 1-sigma process noise of the prediction
            (ground robots: 3 m/s^2; accelerations up to ~sqrt(gate_chi2) times it pass), m/s^2.
        gate_jitter_m: 1-sigma position jump per fix (each ENU axis) that the gate always
            tolerates, independent of the time step, m.
        gate_window_s: baseline of the velocity chord of the prediction, s.
        gate_max_speed_mps: highest plausible speed (implied by a fix beyond 3 sigma of the
            jump; also the velocity sigma when the velocity is not known yet), m/s.
        gate_min_alt_m, gate_max_alt_m: plausible fix heights above the WGS84 ellipsoid, m.
        gate_reset_count: this many rejected fixes in a row that agree with each other
            re-initialise the gate on them (the robot was moved, the GNSS re-converged).
        gate_reset_s: no accepted fix for longer than this: the next rejected one
            re-initialises the gate, s.
        gate_degraded_s: poses up to this long after a rejected fix are degraded, s.
    """

    gate_chi2: float = 16.27
    gate_accel_mps2: float = 3.0
    gate_jitter_m: float = 0.3
    gate_window_s: float = 1.0
    gate_max_speed_mps: float = 100.0
    gate_min_alt_m: float = -500.0
    gate_max_alt_m: float = 10000.0
    gate_reset_count: int = 5
    gate_reset_s: float = 10.0
    gate_degraded_s: float = 1.0

    def __post_init__(self) -> None:
        _validate_gate(self)


@dataclasses.dataclass(frozen=True)
class PoseConfig(GateConfig):
    """Settings of :class:`PoseEstimator` (parameters ``pose.*`` and ``georef.*``).

    Attributes:
        datum: fixed datum (lat deg, lon deg, h m above the ellipsoid); None = first good fix.
        buffer_s: samples older than this before the newest are dropped, s.
        max_gnss_gap_s: largest time between the two fixes that bracket a stamp, s (also the
            gap that tells a stray future stamp from a loop).
        max_imu_gap_s: the same for the IMU attitudes, s.
        default_gnss_sigma_m: position sigma for COVARIANCE_TYPE_UNKNOWN fixes, m.
        tilt_gain: complementary filter gain (no IMU orientation), 1/s.
        tilt_sigma_rad: stated roll/pitch sigma of the filter (vehicle accelerations), rad.
        course_min_speed_mps: the GNSS course gives the yaw only above this speed, m/s.
        course_baseline_m: shortest chord of fixes for the course, m.
        course_gain: weight of each later course correction (the first is taken fully).
        default_orientation_sigma_rad: sigma of an IMU orientation whose covariance is unknown
            (all zero, non-finite, a variance <= 0), rad.
        unknown_orientation_cov_degrades: poses from an IMU orientation with an unknown
            covariance are POSE_DEGRADED (sensor_msgs/Imu: all zero = "unknown"); False: the
            user vouches for ``default_orientation_sigma_rad`` (counted all the same).
        gate_*: the outlier gate on the fixes (:class:`GateConfig`).
    """

    datum: tuple[float, float, float] | None = None
    buffer_s: float = 10.0
    max_gnss_gap_s: float = 1.0
    max_imu_gap_s: float = 0.1
    default_gnss_sigma_m: float = 5.0
    tilt_gain: float = 0.1
    tilt_sigma_rad: float = 0.02
    course_min_speed_mps: float = 1.0
    course_baseline_m: float = 5.0
    course_gain: float = 0.3
    default_orientation_sigma_rad: float = 0.02
    unknown_orientation_cov_degrades: bool = True


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


#: pose reason of an IMU orientation whose covariance is unknown
IMU_COV_UNKNOWN_REASON = 'IMU orientation covariance unknown: default sigma used'
#: pose reason of a filter attitude before the first course over ground
YAW_UNKNOWN_REASON = 'yaw unknown (no IMU orientation, no course yet)'


class PoseEstimator:
    """Buffers GNSS and IMU; gives the camera pose in ENU at an image stamp.

    Args:
        config: :class:`PoseConfig`.
        extrinsics: :class:`Extrinsics`.

    Attributes:
        frame: the :class:`EnuFrame` of the datum (None until the first good fix without a
            fixed datum).
        counts: diagnostics (``pose_input.<key>`` on /diagnostics): 'gnss_no_fix',
            'gnss_unknown_cov', 'gnss_zero_stamp', 'gnss_out_of_order', 'gnss_stamp_outliers',
            'gnss_rejected' (outlier gate), 'gate_resets', 'imu_bad' (non-finite, non-unit
            quaternion, no orientation and no rates), 'imu_unknown_cov', 'imu_zero_stamp',
            'imu_out_of_order', 'imu_stamp_outliers', 'time_jumps' (see the module docstring).
    """

    def __init__(self, config: PoseConfig, extrinsics: Extrinsics) -> None:
        self.config = config
        self.ext = extrinsics
        self.frame: EnuFrame | None = EnuFrame(*config.datum) if config.datum else None
        self._gnss_t: list[int] = []
        self._gnss: list[tuple[np.ndarray, np.ndarray, bool]] = []  # (p_ant_enu, cov, unknown)
        self._att_t: list[int] = []
        # (R_enu_imu, rpy_sigma, degradation reasons, made by the filter)
        self._att: list[tuple[np.ndarray, np.ndarray, tuple[str, ...], bool]] = []
        self._filter_r: np.ndarray | None = None
        self._filter_t: int | None = None
        self._yaw_known = False
        self._yaw_sigma = math.pi
        self._speed = 0.0  # m/s over ground from GNSS (>= 1 s baseline)
        # a sample more than the bracketing gap after the newest waits for the next one: a
        # stray future stamp is then dropped, never bracketed (it would cost every frame up to
        # the confirming sample its pose: 'gap of ... s')
        self._guards: dict[str, StampGuard[Any]] = {
            'gnss': StampGuard(max_ahead_ns=int(round(config.max_gnss_gap_s * 1e9))),
            'imu': StampGuard(max_ahead_ns=int(round(config.max_imu_gap_s * 1e9)))}
        self._gate = _OutlierGate('GNSS fix', 'GNSS')
        self._warned: set[str] = set()
        self.counts = {'gnss_no_fix': 0, 'gnss_unknown_cov': 0, 'gnss_zero_stamp': 0,
                       'gnss_out_of_order': 0, 'gnss_stamp_outliers': 0, 'gnss_rejected': 0,
                       'gate_resets': 0, 'imu_bad': 0, 'imu_unknown_cov': 0,
                       'imu_zero_stamp': 0, 'imu_out_of_order': 0, 'imu_stamp_outliers': 0,
                       'time_jumps': 0}

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _LOG.warning(text)

    # -- stamp order ----------------------------------------------------------------------
    def _route(self, kind: str, stamp_ns: int, item: Any) -> None:
        """Pass one checked sample of stream ``kind`` ('gnss' / 'imu') through its StampGuard."""
        _route_guard(self._guards[kind], self.counts, kind, stamp_ns, item,
                     lambda it: self._take(kind, it), lambda items: self._jump(kind, items))

    def _take(self, kind: str, item: Any) -> None:
        (self._take_gnss if kind == 'gnss' else self._take_imu)(item)

    def _jump(self, kind: str, items: list[tuple[int, Any]]) -> None:
        """A confirmed jump back of stream ``kind`` to ``items`` (oldest first): a loop (all
        buffers start over) or the end of stray future stamps (dropped); then the items."""
        ts = self._gnss_t if kind == 'gnss' else self._att_t
        first = items[0][0]
        others: list[tuple[str, int, Any]] = []
        # nothing buffered at or after the held stamps: the newer stamp the guard saw was never
        # buffered (refused, e.g. by the outlier gate); the stream simply goes on
        if ts and ts[-1] >= first:
            gap_s = self.config.max_gnss_gap_s if kind == 'gnss' else self.config.max_imu_gap_s
            k = restart_index(ts, first, int(round(gap_s * 1e9)))
            if k is None:
                others = self._reset_buffers(kind, first)
            else:
                self._drop_future(kind, k, first)
        for _stamp, item in items:
            self._take(kind, item)
        for other, stamp, item in others:  # held by the other stream when the loop came
            self._route(other, stamp, item)

    def _reset_buffers(self, kind: str, first_ns: int) -> list[tuple[str, int, Any]]:
        """Time went back (bag loop), seen by stream ``kind``: forget the buffered fixes,
        attitudes, the filter and the outlier gate; the ENU datum stays. The guards of the other
        streams start over (so they follow the loop without a reset of their own); what they
        held is returned (stream, stamp, sample) to be fed again."""
        self.counts['time_jumps'] += 1
        _LOG.warning('%s stamps went back to %.3f s and the stream goes on from there (bag loop, '
                     'restarted player?): pose buffers reset', kind.upper(), first_ns * 1e-9)
        for buf in (self._gnss_t, self._gnss, self._att_t, self._att):
            buf.clear()
        self._gate.reset()
        self._restart_filter()
        self._speed = 0.0
        others = []
        for name, guard in self._guards.items():
            if name != kind:
                others += [(name, stamp, item) for stamp, item in guard.flush()]
                guard.reset()
        return others

    def _restart_filter(self) -> None:
        self._filter_r = None
        self._filter_t = None
        self._yaw_known = False
        self._yaw_sigma = math.pi

    def _drop_future(self, kind: str, k: int, first_ns: int) -> None:
        """Drop the buffered entries from index ``k`` on (stray future stamps, all newer than
        ``first_ns``, the oldest held stamp)."""
        if kind == 'gnss':
            n = len(self._gnss_t) - k
            del self._gnss_t[k:]
            del self._gnss[k:]
            self._gate.drop_from(first_ns)
            self._speed = 0.0
            if self._gnss_t:
                self._update_speed()
        else:
            n = len(self._att_t) - k
            del self._att_t[k:]
            del self._att[k:]
            if self._filter_t is not None and self._filter_t >= first_ns:
                # the filter integrated the stray samples: go on from the newest kept filter
                # attitude (course corrections included), or start it over from the held ones
                for i in range(len(self._att) - 1, -1, -1):
                    if self._att[i][3]:
                        self._filter_r = self._att[i][0].copy()
                        self._filter_t = self._att_t[i]
                        break
                else:
                    self._restart_filter()
        self.counts[f'{kind}_stamp_outliers'] += n
        _LOG.warning('%d %s sample(s) with stray future stamps dropped (the stream goes on at '
                     '%.3f s)', n, kind.upper(), first_ns * 1e-9)

    # -- inputs -------------------------------------------------------------------------
    def add_gnss(self, fix: GnssFix) -> None:
        """Buffer one fix. A stamp <= 0, NO_FIX and non-finite fixes, late ones and those the
        outlier gate refuses are counted and dropped (see the module docstring)."""
        if fix.stamp_ns <= 0:
            self.counts['gnss_zero_stamp'] += 1
            return
        if fix.status <= STATUS_NO_FIX or not all(math.isfinite(v) for v in
                                                  (fix.lat_deg, fix.lon_deg, fix.alt_m)):
            self.counts['gnss_no_fix'] += 1
            return
        self._route('gnss', int(fix.stamp_ns), fix)

    def _gnss_entry(self, i: int) -> _GateEntry:
        return self._gnss[i][0], self._gnss[i][1], None, None

    def _take_gnss(self, fix: GnssFix) -> None:
        """A fix in stamp order: the height check, the datum, the outlier gate, the buffer."""
        cfg = self.config
        t = int(fix.stamp_ns)
        if not cfg.gate_min_alt_m <= fix.alt_m <= cfg.gate_max_alt_m:
            self.counts['gnss_rejected'] += 1
            self._gate.reject(cfg, t, f'height {fix.alt_m:.6g} m above the ellipsoid is outside '
                              f'[{cfg.gate_min_alt_m:g}, {cfg.gate_max_alt_m:g}] m', self._gnss_t)
            return
        if self.frame is None:
            self.frame = EnuFrame(fix.lat_deg, fix.lon_deg, fix.alt_m)
            _LOG.info('ENU datum set from the first good fix: %.8f %.8f %.3f m', fix.lat_deg,
                      fix.lon_deg, fix.alt_m)
        cov = None if fix.cov_type == COV_UNKNOWN else _usable_cov(fix.cov, MAX_POSITION_VAR_M2)
        unknown = cov is None
        if unknown:
            self.counts['gnss_unknown_cov'] += 1
            cov = np.eye(3) * self.config.default_gnss_sigma_m ** 2
        p = self.frame.geodetic_to_enu(fix.lat_deg, fix.lon_deg, fix.alt_m).reshape(3)
        _admit(self._gate, self.counts, 'gnss', cfg, self._gnss_t, self._gnss_entry,
               self._gnss[-1][0] if self._gnss else None, t, (p, cov, None, None),
               (p, cov, unknown), self._append_gnss)

    def _append_gnss(self, t: int, entry: tuple[np.ndarray, np.ndarray, bool]) -> None:
        self._gnss_t.append(t)
        self._gnss.append(entry)
        self._trim(self._gnss_t, self._gnss)
        self._gate.trim(self._gnss_t[0])
        self._update_speed()
        if self._filter_r is not None:
            self._update_course()

    def _update_speed(self) -> None:
        """Ground speed from the newest fix and the latest fix >= 1 s older in the same gate
        segment (m/s)."""
        tj = self._gnss_t[-1]
        lo = self._gate.segment_start(self._gnss_t)
        for i in range(len(self._gnss_t) - 2, lo - 1, -1):
            if tj - self._gnss_t[i] >= 1_000_000_000:
                d = self._gnss[-1][0][:2] - self._gnss[i][0][:2]
                self._speed = float(np.linalg.norm(d)) / ((tj - self._gnss_t[i]) * 1e-9)
                return

    @staticmethod
    def _has_orientation(s: ImuSample) -> bool:
        return s.orientation_xyzw is not None and _provided(s, 'orientation_cov')

    def _imu_problem(self, s: ImuSample) -> str | None:
        """Why ``s`` cannot be used (None when it can). With an orientation only the
        orientation is used (and checked); without one the rates feed the filter and must be
        provided, finite and plausible."""
        if s.orientation_xyzw is not None:  # add_imu dropped an orientation not provided
            try:
                _unit_quaternion(s.orientation_xyzw)
            except ValueError as exc:
                return str(exc)
            return None
        gyro_ok = not s.gyro_valid or bool(np.all(np.abs(s.gyro) <= MAX_GYRO_RADPS))
        accel_ok = not s.accel_valid or bool(np.all(np.abs(s.accel) <= MAX_ACCEL_MPS2))
        if not (gyro_ok and accel_ok):
            return (f'angular velocity {np.asarray(s.gyro).tolist()} rad/s or linear '
                    f'acceleration {np.asarray(s.accel).tolist()} m/s^2 non-finite or beyond '
                    f'{MAX_GYRO_RADPS:g} rad/s / {MAX_ACCEL_MPS2:g} m/s^2')
        if not (s.gyro_valid and s.accel_valid):
            self._warn_once('imu_no_rates', 'IMU gives no orientation and no angular velocity or '
                            'no linear acceleration (covariance[0] == -1): the attitude filter '
                            'cannot run, such samples are refused (imu_bad)')
            return 'no orientation, and angular velocity or linear acceleration not provided'
        return None

    def add_imu(self, s: ImuSample) -> None:
        """Buffer one IMU sample: its orientation, or a filter step when it has none. A stamp
        <= 0, an unusable sample (non-finite rates, a non-unit quaternion, no orientation and no
        rates) and late ones are counted and dropped (see the module docstring)."""
        if s.stamp_ns <= 0:
            self.counts['imu_zero_stamp'] += 1
            return
        if s.orientation_xyzw is not None and not self._has_orientation(s):
            s = dataclasses.replace(s, orientation_xyzw=None)  # decided once: the filter's
        why = self._imu_problem(s)
        if why is not None:
            self.counts['imu_bad'] += 1
            _LOG.debug('IMU sample at %d ns dropped: %s', s.stamp_ns, why)
            return
        self._route('imu', int(s.stamp_ns), s)

    def _orientation_sigma(self, oc: np.ndarray | None) -> tuple[np.ndarray, bool]:
        """(roll, pitch, yaw) sigma (3,) rad of an IMU orientation covariance and whether (some
        of) it was unknown: None, non-finite or not 9 numbers -> the default on every axis; a
        variance <= 0 (all zero = "unknown" in sensor_msgs/Imu) -> the default on that axis."""
        dflt = self.config.default_orientation_sigma_rad
        c = None if oc is None else np.asarray(oc, dtype=np.float64).reshape(-1)
        if c is None or c.size != 9 or not np.all(np.isfinite(c)):
            return np.full(3, dflt), True
        var = c.reshape(3, 3).diagonal()
        ok = var > 0.0
        if np.all(ok):
            return np.sqrt(var), False
        return np.where(ok, np.sqrt(np.where(ok, var, 1.0)), dflt), True

    def _take_imu(self, s: ImuSample) -> None:
        """An IMU sample in stamp order: its orientation, or a filter step."""
        if s.orientation_xyzw is not None:  # provided (add_imu)
            r = quat_xyzw_to_matrix(s.orientation_xyzw)
            sig, unknown = self._orientation_sigma(s.orientation_cov)
            reasons: tuple[str, ...] = ()
            if unknown:
                self.counts['imu_unknown_cov'] += 1
                degrades = self.config.unknown_orientation_cov_degrades
                if 'imu_cov' not in self._warned:  # the text is built once, not per sample
                    self._warn_once('imu_cov', 'IMU orientation covariance unknown (all zero, '
                                    'non-finite or a variance <= 0): default sigma '
                                    f'{self.config.default_orientation_sigma_rad:g} rad used'
                                    + (', the poses are degraded' if degrades else ''))
                reasons = (IMU_COV_UNKNOWN_REASON,) if degrades else ()
            self._att_t.append(int(s.stamp_ns))
            self._att.append((r, sig, reasons, False))
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
        self._att.append((self._filter_r.copy(), sig,
                          () if self._yaw_known else (YAW_UNKNOWN_REASON,), True))

    def _update_course(self) -> None:
        """Yaw from the GNSS course over ground (filter mode only).

        The course is the direction of the chord between the newest fix and the latest older
        fix (of the same outlier-gate segment) at least ``course_baseline_m`` away (its sigma is
        ~sqrt(2) sigma_h / length); it is the heading at the chord's middle time, so it is
        compared with the filter's yaw THEN and the current attitude is rotated about ENU z by
        the difference (fully the first time, by ``course_gain`` afterwards).
        """
        if self._filter_r is None or len(self._gnss) < 2 or not self._att_t:
            return
        pj, cj, _ = self._gnss[-1]
        tj = self._gnss_t[-1]
        lo = self._gate.segment_start(self._gnss_t)
        for i in range(len(self._gnss) - 2, lo - 1, -1):
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
        # older stamp then also gets the better yaw, and the next course compares like with like);
        # attitudes from IMU orientations are absolute and stay as they are.
        sig = np.array([self.config.tilt_sigma_rad, self.config.tilt_sigma_rad,
                        max(self._yaw_sigma, self.config.tilt_sigma_rad)])
        self._att = [(corr @ r, sig, (), True) if filt else (r, s, rs, filt)
                     for r, s, rs, filt in self._att]

    def _trim(self, ts: list[int], vals: list) -> None:
        _trim_buffer(ts, vals, self.config.buffer_s)

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
        """Camera pose in ENU at ``stamp_ns``; ``(None, reason)`` when it cannot be had.

        Only accepted fixes are interpolated; the pose is degraded (with the reasons) for an
        unknown GNSS or IMU orientation covariance, an unknown yaw, and near the outlier gate's
        rejections and re-initialisations (see the module docstring).
        """
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
        r0, s0, rs0, _f0 = self._att[i0]
        r1, s1, rs1, _f1 = self._att[i1]
        r_imu = r0 @ so3_exp(wa * so3_log(r0.T @ r1))
        sig = np.maximum(s0, s1)
        reasons = []
        if self._gnss[g0][2] or self._gnss[g1][2]:
            reasons.append('GNSS covariance unknown: default sigma used')
        reasons += list(dict.fromkeys(rs0 + rs1))
        gate_reasons, jump = self._gate.pose_reasons(self.config, stamp_ns, self._gnss_t[g0],
                                                     self._gnss_t[g1], self._gnss[g0][0],
                                                     self._gnss[g1][0])
        reasons += gate_reasons
        if jump is not None:
            cov = cov + jump
        r_base = r_imu @ self.ext.base_imu[:3, :3].T
        p_base = p_ant - r_base @ self.ext.base_gnss[:3, 3]
        r_cam = r_base @ self.ext.base_camera[:3, :3]
        p_cam = p_base + r_base @ self.ext.base_camera[:3, 3]
        return PoseEstimate(r_base, p_base, r_cam, p_cam, cov, sig, bool(reasons), reasons), 'ok'


# ---------------------------------------------------------------------------------------------
# Alternative pose source: nav_msgs/Odometry of an existing estimator in a local ENU frame.


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
class OdometryPoseConfig(GateConfig):
    """Settings of :class:`OdometryPoseSource` (parameters ``pose.*`` and ``georef.datum_*``).

    Attributes:
        datum: (lat deg, lon deg, h m above the ellipsoid) of the origin of the odometry's
            header frame (georef.datum_mode must be fixed).
        buffer_s: samples older than this before the newest are dropped, s.
        max_gap_s: largest time between the two samples that bracket a stamp, s (also the gap
            that tells a stray future stamp from a loop).
        default_position_sigma_m: position sigma used when the message's position covariance
            is unusable (all zero, non-finite, not positive definite), m.
        default_attitude_sigma_rad: the same for the attitude block, rad.
        frame_id: expected header frame id (the ENU frame, e.g. output.enu_frame_id); a
            different one is counted and warned about once, not refused; '' = not checked.
        gate_*: the outlier gate on the odometry positions (:class:`GateConfig`; the height is
            that of the sample's position above the WGS84 ellipsoid).
        gate_max_rate_radps: highest plausible rotation rate between two samples (beyond 3
            sigma of their attitudes), rad/s.
    """

    datum: tuple[float, float, float]
    buffer_s: float = 10.0
    max_gap_s: float = 0.25
    default_position_sigma_m: float = 5.0
    default_attitude_sigma_rad: float = 0.05
    frame_id: str = ''
    gate_max_rate_radps: float = 5.0


#: largest usable variances of a message's covariance: larger ones say "unknown" as loudly as
#: all-zero ones do (and overflow the maths downstream)
MAX_POSITION_VAR_M2 = 1e12  # (1000 km)^2
MAX_ATTITUDE_VAR_RAD2 = 100.0  # (10 rad)^2


def _usable_cov(block: np.ndarray, max_var: float) -> np.ndarray | None:
    """(3, 3) block symmetrised, or None when it is non-finite, not symmetric, not positive
    definite or has a variance above ``max_var`` (an all-zero block is the ROS way of saying
    "unknown")."""
    b = np.asarray(block, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(b)):
        return None
    scale = float(np.abs(b).max())
    if scale == 0.0 or scale > max_var or not np.allclose(b, b.T, rtol=0.0, atol=1e-9 * scale):
        return None
    b = 0.5 * (b + b.T)
    if np.linalg.eigvalsh(b / scale).min() <= 0.0:
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
    about the fixed ENU axes) is the same for every rigidly mounted frame. Stamp order and the
    outlier gate (positions, and the rotation rate) as for the GNSS fixes of
    :class:`PoseEstimator` (module docstring).

    Args:
        config: :class:`OdometryPoseConfig`.
        extrinsics: :class:`Extrinsics` (only ``base_camera`` is used).

    Attributes:
        frame: the :class:`EnuFrame` of the datum (the odometry's header frame).
        counts: 'odometry_bad', 'odometry_zero_stamp', 'odometry_out_of_order',
            'odometry_stamp_outliers', 'odometry_rejected' (outlier gate), 'gate_resets',
            'odometry_unknown_cov', 'odometry_frame_mismatch', 'time_jumps' (diagnostics).
    """

    def __init__(self, config: OdometryPoseConfig, extrinsics: Extrinsics) -> None:
        self.config = config
        self.ext = extrinsics
        self.frame: EnuFrame = EnuFrame(*config.datum)
        self._t: list[int] = []
        # (p_enu_base (3,), R_enu_base (3, 3), position cov, attitude cov, reasons)
        self._v: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]] = []
        self._announced = False
        self._guard: StampGuard[Any] = StampGuard(  # see PoseEstimator: stray future stamps
            max_ahead_ns=int(round(config.max_gap_s * 1e9)))
        self._gate = _OutlierGate('odometry sample', 'odometry')
        self.counts = {'odometry_bad': 0, 'odometry_zero_stamp': 0, 'odometry_out_of_order': 0,
                       'odometry_stamp_outliers': 0, 'odometry_rejected': 0, 'gate_resets': 0,
                       'odometry_unknown_cov': 0, 'odometry_frame_mismatch': 0,
                       'time_jumps': 0}

    def add_odometry(self, s: OdometrySample) -> None:
        """Buffer one sample; a stamp <= 0, bad (non-finite, non-unit quaternion, covariance not
        6x6), late samples and those the outlier gate refuses are counted and dropped."""
        if s.stamp_ns <= 0:
            self.counts['odometry_zero_stamp'] += 1
            return
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
        item = (int(s.stamp_ns), p, r, cov)
        _route_guard(self._guard, self.counts, 'odometry', item[0], item, self._take, self._jump)

    def _jump(self, items: list[tuple[int, Any]]) -> None:
        """A confirmed jump back to ``items`` (oldest first): a loop (the buffer starts over) or
        the end of stray future stamps (dropped); then the items."""
        first = items[0][0]
        if self._t and self._t[-1] >= first:
            k = restart_index(self._t, first, int(round(self.config.max_gap_s * 1e9)))
            if k is None:
                self.counts['time_jumps'] += 1
                _LOG.warning('odometry stamps went back to %.3f s and the stream goes on from '
                             'there (bag loop, restarted player?): buffer reset', first * 1e-9)
                self._t.clear()
                self._v.clear()
                self._gate.reset()
            else:
                n = len(self._t) - k
                del self._t[k:]
                del self._v[k:]
                self._gate.drop_from(first)
                self.counts['odometry_stamp_outliers'] += n
                _LOG.warning('%d odometry sample(s) with stray future stamps dropped (the stream '
                             'goes on at %.3f s)', n, first * 1e-9)
        for _stamp, item in items:
            self._take(item)

    def _entry(self, i: int) -> _GateEntry:
        v = self._v[i]
        return v[0], v[2], v[1], v[3]

    def _take(self, item: tuple[int, np.ndarray, np.ndarray, np.ndarray]) -> None:
        """A sample in stamp order: covariances, the outlier gate, the buffer."""
        t, p, r, cov = item
        cfg = self.config
        reasons: list[str] = []
        pos_cov = _usable_cov(cov[:3, :3], MAX_POSITION_VAR_M2)
        if pos_cov is None:
            pos_cov = np.eye(3) * cfg.default_position_sigma_m ** 2
            reasons.append('odometry position covariance unknown: default sigma used')
        att_cov = _usable_cov(cov[3:, 3:], MAX_ATTITUDE_VAR_RAD2)
        if att_cov is None:
            att_cov = np.eye(3) * cfg.default_attitude_sigma_rad ** 2
            reasons.append('odometry attitude covariance unknown: default sigma used')
        if reasons:
            self.counts['odometry_unknown_cov'] += 1
        h = float(self.frame.enu_to_geodetic(p)[2])
        if not cfg.gate_min_alt_m <= h <= cfg.gate_max_alt_m:
            self.counts['odometry_rejected'] += 1
            self._gate.reject(cfg, t, f'height {h:.6g} m above the ellipsoid is outside '
                              f'[{cfg.gate_min_alt_m:g}, {cfg.gate_max_alt_m:g}] m', self._t)
            return
        _admit(self._gate, self.counts, 'odometry', cfg, self._t, self._entry,
               self._v[-1][0] if self._v else None, t, (p, pos_cov, r, att_cov),
               (p, r, pos_cov, att_cov, tuple(reasons)), self._append)

    def _append(self, t: int, entry: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                           tuple[str, ...]]) -> None:
        self._t.append(t)
        self._v.append(entry)
        _trim_buffer(self._t, self._v, self.config.buffer_s)
        self._gate.trim(self._t[0])

    def pose_at(self, stamp_ns: int) -> tuple[PoseEstimate | None, str]:
        """Camera pose in ENU at ``stamp_ns``; ``(None, reason)`` when it cannot be had
        ('odometry: after the newest data ...' while the sample after the stamp has not
        arrived, 'odometry: before the buffered data', 'odometry: gap of X s',
        'odometry: no data yet'). Only accepted samples are interpolated."""
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
        gate_reasons, jump = self._gate.pose_reasons(self.config, stamp_ns, self._t[i0],
                                                     self._t[i1], p0, p1)
        reasons += gate_reasons
        if jump is not None:
            pos_cov = pos_cov + jump
        r_cam = r_base @ self.ext.base_camera[:3, :3]
        p_cam = p_base + r_base @ self.ext.base_camera[:3, 3]
        return PoseEstimate(r_base, p_base, r_cam, p_cam, pos_cov, np.sqrt(np.diag(att_cov)),
                            bool(reasons), reasons, att_cov), 'ok'
