"""Vehicle trajectory over the terrain, and IMU / GNSS samples consistent with it.

The vehicle drives a circular arc (radius ``path_radius_m``, a left turn) with a speed that
varies by +-15 % around ``speed_mps``; its base_link sits ``axle_height_m`` above the smooth
ground along the ground normal, with roll and pitch following the ground (REP-103 body axes: x
forward, y left, z up). Pose is an analytic function of time, so the IMU is derived from it by
central differences (step 1 ms, error < 1e-6 m/s^2): the world is non-rotating and gravity is
the constant ``g = (0, 0, -9.80665) m/s^2`` in ENU (Earth rotation and gravity variation are not
modelled; say so to anyone checking the gyros against an Earth-rate model).

IMU conventions (sensor_msgs/Imu, REP-145): angular velocity and linear acceleration (specific
force: reads +9.81 m/s^2 up at rest) in imu_link; orientation = rotation of imu_link relative to
ENU, with noise ``R_meas = exp([delta]x) R_true``, ``delta ~ N(0, diag(s_rp^2, s_rp^2, s_yaw^2))``
in ENU axes; covariances are those of the white noise per sample (bias not included).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .config import SynthConfig
from .world import Terrain

GRAVITY = 9.80665
_FD_STEP = 1e-3  # s, central-difference step


def rpy_to_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """R = Rz(yaw) Ry(pitch) Rx(roll) (fixed axes x, y, z), 3x3 float64."""
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def matrix_to_rpy(r: np.ndarray) -> tuple[float, float, float]:
    """(roll, pitch, yaw) with R = Rz(yaw) Ry(pitch) Rx(roll) (fixed axes x, y, z)."""
    pitch = math.asin(max(-1.0, min(1.0, -float(r[2, 0]))))
    return (math.atan2(float(r[2, 1]), float(r[2, 2])), pitch,
            math.atan2(float(r[1, 0]), float(r[0, 0])))


def so3_exp(w: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) of rotation vectors (..., 3) (Rodrigues)."""
    w = np.asarray(w, dtype=np.float64)
    th = np.linalg.norm(w, axis=-1)[..., None, None]
    k = np.zeros(w.shape[:-1] + (3, 3))
    k[..., 0, 1], k[..., 0, 2] = -w[..., 2], w[..., 1]
    k[..., 1, 0], k[..., 1, 2] = w[..., 2], -w[..., 0]
    k[..., 2, 0], k[..., 2, 1] = -w[..., 1], w[..., 0]
    small = th < 1e-12
    ths = np.where(small, 1.0, th)
    a = np.where(small, 1.0, np.sin(ths) / ths)
    b = np.where(small, 0.5, (1 - np.cos(ths)) / ths ** 2)
    return np.eye(3) + a * k + b * (k @ k)


def so3_log(r: np.ndarray) -> np.ndarray:
    """Rotation vectors (..., 3) of rotation matrices (..., 3, 3) (angle < pi)."""
    r = np.asarray(r, dtype=np.float64)
    c = np.clip((np.trace(r, axis1=-2, axis2=-1) - 1) / 2, -1.0, 1.0)
    th = np.arccos(c)
    v = np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0],
                  r[..., 1, 0] - r[..., 0, 1]], axis=-1)
    s = np.sin(th)
    f = np.where(th < 1e-9, 0.5, th / (2 * np.where(th < 1e-9, 1.0, s)))
    return v * f[..., None]


def matrix_to_quat_xyzw(r: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) as (x, y, z, w) with w >= 0 of rotation matrices (..., 3, 3)."""
    r = np.asarray(r, dtype=np.float64)
    w = np.sqrt(np.maximum(0.0, 1 + r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2])) / 2
    x = np.sqrt(np.maximum(0.0, 1 + r[..., 0, 0] - r[..., 1, 1] - r[..., 2, 2])) / 2
    y = np.sqrt(np.maximum(0.0, 1 - r[..., 0, 0] + r[..., 1, 1] - r[..., 2, 2])) / 2
    z = np.sqrt(np.maximum(0.0, 1 - r[..., 0, 0] - r[..., 1, 1] + r[..., 2, 2])) / 2
    x = np.copysign(x, r[..., 2, 1] - r[..., 1, 2])
    y = np.copysign(y, r[..., 0, 2] - r[..., 2, 0])
    z = np.copysign(z, r[..., 1, 0] - r[..., 0, 1])
    q = np.stack([x, y, z, w], axis=-1)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) of quaternions (..., 4) (x, y, z, w)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], -2)


def transform(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 homogeneous transform from R (3, 3) and t (3,)."""
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = t
    return m


@dataclasses.dataclass(frozen=True)
class Mounts:
    """Extrinsics: 4x4 transforms base_link -> sensor frame (p_base = T @ p_sensor)."""

    base_imu: np.ndarray
    base_gnss: np.ndarray
    base_left: np.ndarray
    left_right: np.ndarray

    @staticmethod
    def from_config(cfg: SynthConfig) -> 'Mounts':
        """The mounts of ``cfg`` (see config.py for conventions)."""
        # optical axes in a forward-looking camera body (x fwd, y left, z up):
        # x_opt = right = -y, y_opt = down = -z, z_opt = forward = +x
        r_body_opt = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
        r_base_left = rpy_to_matrix(0.0, math.radians(cfg.camera_pitch_deg), 0.0) @ r_body_opt
        return Mounts(
            base_imu=transform(rpy_to_matrix(*cfg.imu_rpy_rad), np.array(cfg.imu_xyz_m)),
            base_gnss=transform(np.eye(3), np.array(cfg.gnss_xyz_m)),
            base_left=transform(r_base_left, np.array(cfg.camera_xyz_m)),
            left_right=transform(np.eye(3), np.array([cfg.baseline_m, 0.0, 0.0])))


class Trajectory:
    """Pose of base_link in ENU as an analytic function of time (seconds)."""

    SPEED_VARIATION = 0.15
    SPEED_PERIOD_S = 4.0

    def __init__(self, cfg: SynthConfig, terrain: Terrain, start_xy: tuple[float, float],
                 heading0_rad: float) -> None:
        self.cfg = cfg
        self.terrain = terrain
        self.p0 = np.asarray(start_xy, dtype=np.float64)
        self.psi0 = float(heading0_rad)
        self.radius = cfg.path_radius_m
        self.centre = self.p0 + self.radius * np.array([-math.sin(self.psi0),
                                                        math.cos(self.psi0)])

    def arc_length(self, t: np.ndarray) -> np.ndarray:
        """Distance driven since t = 0, metres."""
        t = np.asarray(t, dtype=np.float64)
        v, a, per = self.cfg.speed_mps, self.SPEED_VARIATION, self.SPEED_PERIOD_S
        return v * t + a * v * per / (2 * math.pi) * (1 - np.cos(2 * math.pi * t / per))

    def ground_xy_heading(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(xy (..., 2), heading psi (...)) of the vehicle at times t."""
        s = self.arc_length(t)
        psi = self.psi0 + s / self.radius
        xy = self.centre + self.radius * np.stack([np.sin(psi), -np.cos(psi)], axis=-1)
        return xy, psi

    def pose(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(R_enu_base (..., 3, 3), p_enu_base (..., 3)) at times t (s)."""
        xy, psi = self.ground_xy_heading(t)
        z, gx, gy = self.terrain.height_and_gradient(xy[..., 0], xy[..., 1], smooth_only=True)
        n = np.stack([-gx, -gy, np.ones_like(gx)], axis=-1)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        h = np.stack([np.cos(psi), np.sin(psi), np.zeros_like(psi)], axis=-1)
        xb = h - np.sum(h * n, axis=-1, keepdims=True) * n
        xb /= np.linalg.norm(xb, axis=-1, keepdims=True)
        yb = np.cross(n, xb)
        r = np.stack([xb, yb, n], axis=-1)  # columns = body axes in ENU
        p = np.concatenate([xy, z[..., None]], axis=-1) + self.cfg.axle_height_m * n
        return r, p

    def frame_pose(self, t: np.ndarray, base_frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(R_enu_frame, p_enu_frame) of a frame mounted at ``base_frame`` (4x4)."""
        r, p = self.pose(t)
        return r @ base_frame[:3, :3], p + r @ base_frame[:3, 3]

    def kinematics(self, t: np.ndarray, base_frame: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(R_enu_frame, p, v_enu, a_enu, omega_frame) of a mounted frame at times t.

        ``omega_frame`` is the angular velocity in the frame's own axes (rad/s); ``a_enu`` the
        kinematic acceleration (m/s^2, without gravity).
        """
        t = np.asarray(t, dtype=np.float64)
        h = _FD_STEP
        r0, p0 = self.frame_pose(t, base_frame)
        rm, pm = self.frame_pose(t - h, base_frame)
        rp, pp = self.frame_pose(t + h, base_frame)
        v = (pp - pm) / (2 * h)
        a = (pp - 2 * p0 + pm) / (h * h)
        omega = so3_log(np.swapaxes(rm, -1, -2) @ rp) / (2 * h)
        return r0, p0, v, a, omega


@dataclasses.dataclass
class ImuSamples:
    """IMU data: t (N,) s; gyro, accel (N, 3) in imu_link; q_xyzw (N, 4) measured orientation
    (zeros + orientation_covariance[0] = -1 when not provided); truth r_enu_imu (N, 3, 3),
    gyro_true, accel_true (N, 3); biases (3,); covariances (3, 3)."""

    t: np.ndarray
    gyro: np.ndarray
    accel: np.ndarray
    q_xyzw: np.ndarray
    gyro_true: np.ndarray
    accel_true: np.ndarray
    r_enu_imu: np.ndarray
    p_enu_imu: np.ndarray
    v_enu_imu: np.ndarray
    gyro_bias: np.ndarray
    accel_bias: np.ndarray
    gyro_cov: np.ndarray
    accel_cov: np.ndarray
    orientation_cov: np.ndarray


def simulate_imu(cfg: SynthConfig, traj: Trajectory, mounts: Mounts,
                 rng: np.random.Generator, duration_s: float | None = None) -> ImuSamples:
    """IMU samples at ``imu_rate_hz`` over [0, duration] with noise and a constant bias."""
    dur = cfg.duration_s if duration_s is None else duration_s
    t = np.arange(int(math.floor(dur * cfg.imu_rate_hz)) + 1) / cfg.imu_rate_hz
    r, p, v, a, omega = traj.kinematics(t, mounts.base_imu)
    g = np.array([0.0, 0.0, -GRAVITY])
    f_true = np.einsum('nji,nj->ni', r, a - g)  # R^T (a - g)
    gb = rng.normal(0.0, cfg.gyro_bias_rad_s, 3) if cfg.gyro_bias_rad_s > 0 else np.zeros(3)
    ab = rng.normal(0.0, cfg.accel_bias_m_s2, 3) if cfg.accel_bias_m_s2 > 0 else np.zeros(3)
    gyro = omega + gb + rng.normal(0.0, 1.0, omega.shape) * cfg.gyro_noise_rad_s
    accel = f_true + ab + rng.normal(0.0, 1.0, f_true.shape) * cfg.accel_noise_m_s2
    sig = np.array([cfg.orientation_sigma_rp_rad, cfg.orientation_sigma_rp_rad,
                    cfg.orientation_sigma_yaw_rad])
    delta = rng.normal(0.0, 1.0, (t.size, 3)) * sig
    if cfg.imu_orientation:
        q = matrix_to_quat_xyzw(so3_exp(delta) @ r)
        ocov = np.diag(sig ** 2)
    else:
        q = np.zeros((t.size, 4))
        ocov = np.zeros((3, 3))
        ocov[0, 0] = -1.0
    return ImuSamples(t, gyro, accel, q, omega, f_true, r, p, v, gb, ab,
                      np.eye(3) * cfg.gyro_noise_rad_s ** 2, np.eye(3) * cfg.accel_noise_m_s2 ** 2,
                      ocov)


# sensor_msgs/NavSatStatus and NavSatFix constants
STATUS_NO_FIX, STATUS_FIX = -1, 0
SERVICE_GPS = 1
COV_UNKNOWN, COV_APPROXIMATED, COV_DIAGONAL_KNOWN = 0, 1, 2


@dataclasses.dataclass
class GnssSamples:
    """GNSS fixes: t (N,) s; status (N,) int; lat, lon, alt (N,) (alt above the WGS84
    ellipsoid, NaN when NO_FIX); cov (N, 3, 3) ENU m^2; cov_type (N,); truth p_enu (N, 3) of the
    antenna and the applied noise (N, 3) ENU (NaN when NO_FIX)."""

    t: np.ndarray
    status: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    alt: np.ndarray
    cov: np.ndarray
    cov_type: np.ndarray
    p_enu_true: np.ndarray
    noise_enu: np.ndarray


def simulate_gnss(cfg: SynthConfig, traj: Trajectory, mounts: Mounts, frame,
                  rng: np.random.Generator, duration_s: float | None = None) -> GnssSamples:
    """Fixes of the antenna at ``gnss_rate_hz`` with ENU noise matching the stated covariance."""
    dur = cfg.duration_s if duration_s is None else duration_s
    t = np.arange(int(math.floor(dur * cfg.gnss_rate_hz)) + 1) / cfg.gnss_rate_hz
    _, p = traj.frame_pose(t, mounts.base_gnss)
    n = t.size
    sig = np.tile([cfg.gnss_sigma_h_m, cfg.gnss_sigma_h_m, cfg.gnss_sigma_v_m], (n, 1))
    cov_type = np.full(n, COV_DIAGONAL_KNOWN, dtype=np.int64)
    status = np.full(n, STATUS_FIX, dtype=np.int64)
    for a, b in cfg.gnss_degraded_s:
        sel = (t >= a) & (t < b)
        sig[sel] = [cfg.gnss_degraded_sigma_m, cfg.gnss_degraded_sigma_m,
                    1.5 * cfg.gnss_degraded_sigma_m]
        cov_type[sel] = COV_APPROXIMATED
    noise = rng.normal(0.0, 1.0, (n, 3)) * sig
    meas = p + noise
    lat, lon, alt = frame.enu_to_geodetic(meas)
    cov = np.zeros((n, 3, 3))
    cov[:, [0, 1, 2], [0, 1, 2]] = sig ** 2
    for a, b in cfg.gnss_nofix_s:
        sel = (t >= a) & (t < b)
        status[sel] = STATUS_NO_FIX
        cov_type[sel] = COV_UNKNOWN
        cov[sel] = 0.0
        noise[sel] = np.nan
        lat, lon, alt = (np.where(sel, np.nan, x) for x in (lat, lon, alt))
    return GnssSamples(t, status, np.asarray(lat), np.asarray(lon), np.asarray(alt), cov,
                       cov_type, p, noise)
