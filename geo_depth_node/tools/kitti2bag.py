"""Convert a KITTI raw drive (``*_sync``) into a rosbag2 + a node params file (``geo-depth kitti2bag``).

Usage::

    python -m geo_depth_node.tools.kitti2bag [DRIVE_DIR] OUT_DIR [--storage mcap|sqlite3]
        [--gray|--color] [--dem srtm|rhine|both|none]

``DRIVE_DIR`` defaults to the KITTI drive 0001 of the shared data folder
(``<data>/kitti_raw_2011_09_26_drive_0001/2011_09_26/2011_09_26_drive_0001_sync``); the calib
files are read one level up. Writes ``OUT_DIR/bag`` (rosbag2), ``OUT_DIR/params.yaml`` and
``OUT_DIR/conversion.json`` (the numbers behind every convention below). ROS-free (rosbags).

Bag topics [frame ids]::

    /left/image_rect, /right/image_rect     sensor_msgs/Image mono8 of image_00/01 (default),
                                            or bgr8 of image_02/03 with --color
    /left/camera_info, /right/camera_info   sensor_msgs/CameraInfo [left|right_camera_optical_frame]
    /imu/data                               sensor_msgs/Imu [imu_link], one per OXTS row (~10 Hz)
    /gnss/fix                               sensor_msgs/NavSatFix [gnss_link], one per OXTS row
    /tf_static                              base_link -> imu_link, gnss_link,
                                            left_camera_optical_frame; left -> right optical

Conventions (each checked on the data; numbers in ``conversion.json`` and the report of the
task that wrote this file):

* **Images / CameraInfo.** KITTI ``*_sync`` images are rectified; the shared copy is
  downscaled by 0.4 (1242x375 -> 497x150). Intrinsics scale with the pixel-CENTRE convention
  of image resizers (OpenCV, PIL: pixel i covers [i - 0.5, i + 0.5]): ``f' = s f``,
  ``c' = s (c + 0.5) - 0.5``, and the right camera's ``Tx = -f' B`` scales with f
  (``P'[0, 3] = s P[0, 3]``), so the baseline ``B = -P[0, 3] / P[0, 0]`` is unchanged
  (0.537 m). The left optical frame IS the rectified camera-0 frame, so CameraInfo ``R`` is
  the identity for both cameras and ``R_rect_00`` goes into the extrinsic instead (the
  pipeline maps points with ``R^T``: a non-identity R would need the unrectified frame).
  Colour (``--color``, cameras 2/3): ``P_rect_02`` = K [I | t2] with t2 = K^-1 P[:, 3]
  (camera 2 sits 6 cm left of rectified camera 0); the left CameraInfo gets ``K [I | 0]``, the
  right ``Tx = fx (t3 - t2)_x`` (baseline 0.532 m; the residual y/z offsets of 2.8 mm / 0.02 mm
  are dropped), and the extrinsic moves by -t2.
* **base_link = the OXTS/IMU frame** (KITTI: x forward, y left, z up = REP-103).
  ``base_to_imu`` = identity. ``base_to_camera`` = ``inv(R_rect_00 * T_cam0_velo *
  T_velo_imu)`` (calib_velo_to_cam, calib_imu_to_velo). ``base_to_gnss`` = 0: OXTS reports the
  position of the oxts unit itself (dataformat.txt: "latitude of the oxts-unit"; the RT3003
  applies its antenna lever arm internally), so the fix is of the IMU origin.
* **Imu.** Angular rate ``wx, wy, wz`` and specific force ``ax, ay, az`` (gravity included, +g
  up at rest) in the BODY frame; ``wf/wl/wu`` and ``af/al/au`` are the same quantities in the
  heading-aligned LEVEL frame (not the body), checked by :func:`imu_frame_check`.
  Orientation of imu_link in ENU: ``R = Rz(yaw) Ry(pitch) Rx(roll)`` with OXTS roll
  (+ = left side up = +rotation about x forward), pitch (+ = front down = +rotation about y
  left), yaw (0 = east, counter-clockwise = ENU heading). Orientation covariance: OXTS gives no
  attitude accuracy; the RT3000 datasheet figures 0.03 deg roll/pitch and 0.1 deg yaw
  (1-sigma) are used (an assumption). Gyro/accelerometer covariances: unknown (all zeros, as
  sensor_msgs/Imu defines), OXTS gives none.
* **NavSatFix.** ``pos_accuracy`` (m; dataformat.txt calls it "velocity accuracy (north/east
  in m)", a typo: it is the north/east POSITION accuracy) is used as the 1-sigma of east AND
  north (conservative: it is a horizontal figure); the vertical 1-sigma is not given and is
  assumed to be 2x that plus 0.5 m for the geoid-model difference between the receiver and
  EGM96 -> ``COVARIANCE_TYPE_APPROXIMATED``. Status: navstat != 4 (not "locked") -> NO_FIX;
  posmode 5/6 (RTK float/integer) -> GBAS_FIX; 4 (differential) -> SBAS_FIX; else FIX.
  ALTITUDE: OXTS ``alt`` is ORTHOMETRIC (above mean sea level / the geoid): read so, the IMU
  is a median -0.75 m (p10 -1.10, p90 +0.25) from SRTM3 (EGM96, a surface model, 1-sigma
  9.7 m) and -0.11 m from the Rhine DEM, against an expected +0.93 m (IMU above the road);
  read as ellipsoidal it would put the car 48.9 m below the terrain (:func:`altitude_check`;
  EGM96 undulation 48.2 m here). The bag
  therefore carries ``alt + N_EGM96(lat, lon)`` (ellipsoidal, as NavSatFix defines).
* **Stamps.** The KITTI timestamp strings have no zone; they are read as UTC. Image stamps
  from image_00/timestamps.txt (image_01 is hardware-triggered with it, the same stamp is
  used for both so the stereo pair syncs exactly), OXTS stamps from oxts/timestamps.txt.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

_LOG = logging.getLogger(__name__)

IMAGE_SCALE = 0.4  #: the shared KITTI images are downscaled by this factor
DRIVE_REL = 'kitti_raw_2011_09_26_drive_0001/2011_09_26/2011_09_26_drive_0001_sync'
OXTS_FIELDS = ('lat', 'lon', 'alt', 'roll', 'pitch', 'yaw', 'vn', 've', 'vf', 'vl', 'vu',
               'ax', 'ay', 'az', 'af', 'al', 'au', 'wx', 'wy', 'wz', 'wf', 'wl', 'wu',
               'pos_accuracy', 'vel_accuracy', 'navstat', 'numsats', 'posmode', 'velmode',
               'orimode')
#: OXTS RT3000 datasheet attitude accuracy (1-sigma), used as the Imu orientation covariance.
ROLL_PITCH_SIGMA_DEG = 0.03
YAW_SIGMA_DEG = 0.1
#: assumed geoid-model difference receiver vs EGM96 added to the vertical sigma (m, 1-sigma)
GEOID_MODEL_SIGMA_M = 0.5
#: height of the OXTS unit above the road (KITTI sensor setup, Geiger et al. IJRR 2013:
#: Velodyne at 1.73 m, IMU 0.80 m below it in calib_imu_to_velo -> 0.93 m)
IMU_HEIGHT_M = 0.93
LEFT_FRAME, RIGHT_FRAME = 'left_camera_optical_frame', 'right_camera_optical_frame'
BASE_FRAME, IMU_FRAME, GNSS_FRAME = 'base_link', 'imu_link', 'gnss_link'
TOPICS = {
    'tf_static': ('/tf_static', 'tf2_msgs/msg/TFMessage'),
    'imu': ('/imu/data', 'sensor_msgs/msg/Imu'),
    'gnss': ('/gnss/fix', 'sensor_msgs/msg/NavSatFix'),
    'left_info': ('/left/camera_info', 'sensor_msgs/msg/CameraInfo'),
    'left_image': ('/left/image_rect', 'sensor_msgs/msg/Image'),
    'right_info': ('/right/camera_info', 'sensor_msgs/msg/CameraInfo'),
    'right_image': ('/right/image_rect', 'sensor_msgs/msg/Image'),
}
DEM_CHOICES = ('srtm', 'rhine', 'both', 'none')
# NavSatStatus constants
STATUS_NO_FIX, STATUS_FIX, STATUS_SBAS_FIX, STATUS_GBAS_FIX = -1, 0, 1, 2
SERVICE_GPS = 1
COV_APPROXIMATED = 1


# ----------------------------------------------------------------------------- paths
def shared_data_dir() -> Path | None:
    """The shared data folder: ``<repo>/../shared/data`` or ``/work/shared/data``; None if absent."""
    repo = Path(__file__).resolve().parents[2]
    for c in (repo.parent / 'shared' / 'data', Path('/work/shared/data')):
        if c.is_dir():
            return c
    return None


def default_drive_dir() -> Path | None:
    """The KITTI drive 0001 sync folder of the shared data, or None when it is absent."""
    d = shared_data_dir()
    return d / DRIVE_REL if d is not None and (d / DRIVE_REL).is_dir() else None


# ----------------------------------------------------------------------------- readers
def read_calib_file(path: str | Path) -> dict[str, np.ndarray]:
    """KITTI calib text file -> {key: float64 array} (the ``calib_time`` date line is skipped).

    Raises:
        ValueError: on any other line whose value is not a list of numbers (names file and key).
    """
    out: dict[str, np.ndarray] = {}
    for line in Path(path).read_text().splitlines():
        if ':' not in line:
            continue
        key, val = (x.strip() for x in line.split(':', 1))
        if key == 'calib_time':
            continue
        try:
            out[key] = np.array([float(x) for x in val.split()], dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f'{path}: {key!r} is not a list of numbers: {val!r}') from exc
    return out


def read_timestamps(path: str | Path) -> np.ndarray:
    """KITTI timestamps.txt -> int64 ns since the epoch (the zone-less strings read as UTC).

    Raises:
        ValueError: on a line that is not ``YYYY-MM-DD HH:MM:SS[.fffffffff]``.
    """
    out = []
    for line in Path(path).read_text().split('\n'):
        line = line.strip()
        if not line:
            continue
        whole, _, frac = line.partition('.')
        try:
            dt = datetime.datetime.strptime(whole, '%Y-%m-%d %H:%M:%S').replace(
                tzinfo=datetime.timezone.utc)
        except ValueError as e:
            raise ValueError(f'{path}: bad timestamp line {line!r}') from e
        ns = int((frac + '000000000')[:9]) if frac else 0
        out.append(int(dt.timestamp()) * 1_000_000_000 + ns)
    return np.asarray(out, dtype=np.int64)


def load_oxts(drive_dir: str | Path) -> dict[str, np.ndarray]:
    """All OXTS rows of a drive: {field: (N,) float64} for OXTS_FIELDS plus ``t_ns`` (N,) int64.

    Raises:
        FileNotFoundError: no oxts/data/*.txt.
        ValueError: a row without 30 numbers, or a row count that differs from the timestamps.
    """
    d = Path(drive_dir) / 'oxts'
    files = sorted((d / 'data').glob('*.txt'))
    if not files:
        raise FileNotFoundError(f'no OXTS rows in {d / "data"}')
    rows = []
    for f in files:
        v = [float(x) for x in f.read_text().split()]
        if len(v) != len(OXTS_FIELDS):
            raise ValueError(f'{f}: {len(v)} values, expected {len(OXTS_FIELDS)}')
        rows.append(v)
    arr = np.asarray(rows)
    t = read_timestamps(d / 'timestamps.txt')
    if t.size != arr.shape[0]:
        raise ValueError(f'{d}: {arr.shape[0]} rows but {t.size} timestamps')
    out = {k: arr[:, i] for i, k in enumerate(OXTS_FIELDS)}
    out['t_ns'] = t
    return out


# ----------------------------------------------------------------------------- geometry
def rot_x(a: float) -> np.ndarray:
    """Rotation about x by ``a`` rad."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a: float) -> np.ndarray:
    """Rotation about y by ``a`` rad."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def rot_z(a: float) -> np.ndarray:
    """Rotation about z by ``a`` rad."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def oxts_rotation(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """R_enu_imu (3, 3) of one OXTS row: ``Rz(yaw) Ry(pitch) Rx(roll)`` (radians; KITTI devkit
    convertOxtsToPose uses the same order; x forward, y left, z up; ENU x east, y north)."""
    return rot_z(yaw) @ rot_y(pitch) @ rot_x(roll)


def matrix_to_quat_xyzw(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) of a rotation matrix (w >= 0)."""
    from ..synth.motion import matrix_to_quat_xyzw as m2q

    return np.asarray(m2q(np.asarray(r, dtype=np.float64)), dtype=np.float64)


def _rigid(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.asarray(r).reshape(3, 3)
    m[:3, 3] = np.asarray(t).reshape(3)
    return m


def scale_projection(p: np.ndarray, s: float) -> np.ndarray:
    """A 3x4 rectified projection of full-size images -> the same camera at scale ``s``.

    fx, fy, Tx (= P[0, 3] = -fx B) and P[1, 3] scale by s; cx, cy follow the pixel-centre
    convention ``c' = s (c + 0.5) - 0.5``. The baseline -P[0, 3] / P[0, 0] is unchanged.

    Raises:
        ValueError: s not in (0, 1e3] or p not 12 numbers.
    """
    if not 0 < s <= 1e3:
        raise ValueError(f'scale must be > 0, got {s}')
    p = np.asarray(p, dtype=np.float64).reshape(3, 4).copy()
    for row in (0, 1):
        c = p[row, 2] / p[2, 2]
        p[row, 0:2] *= s
        p[row, 3] *= s
        p[row, 2] = (s * (c + 0.5) - 0.5) * p[2, 2]
    return p


def stereo_calibration(calib_dir: str | Path, scale: float = IMAGE_SCALE,
                       color: bool = False) -> dict[str, Any]:
    """Rectified stereo pair at ``scale`` (grey cameras 0/1, or colour 2/3): K (3, 3), P_left,
    P_right (3, 4) in the ROS convention (left Tx = 0, right Tx = -fx B), baseline_m,
    width, height (rounded scaled S_rect), ``t_left`` (3,) = the left camera's offset in the
    rectified camera-0 frame (p_left = p_rect0 + t_left; zero for camera 0), R_rect_00."""
    c = read_calib_file(Path(calib_dir) / 'calib_cam_to_cam.txt')
    a, b = ('02', '03') if color else ('00', '01')
    pa = c[f'P_rect_{a}'].reshape(3, 4)
    pb = c[f'P_rect_{b}'].reshape(3, 4)
    k_full = pa[:, :3]
    ta = np.linalg.solve(k_full, pa[:, 3])
    tb = np.linalg.solve(k_full, pb[:, 3])
    p_left = np.hstack([k_full, np.zeros((3, 1))])
    p_right = p_left.copy()
    p_right[0, 3] = k_full[0, 0] * (tb[0] - ta[0])
    p0 = scale_projection(p_left, scale)
    p1 = scale_projection(p_right, scale)
    w, h = (int(round(v * scale)) for v in c[f'S_rect_{a}'])
    return {'K': p0[:, :3].copy(), 'P_left': p0, 'P_right': p1,
            'baseline_m': float(-p1[0, 3] / p1[0, 0]),
            'baseline_full_m': float(-p_right[0, 3] / p_right[0, 0]),
            'fx_full': float(k_full[0, 0]), 'width': w, 'height': h, 't_left': -ta,
            'dropped_offset_yz_m': [float(tb[1] - ta[1]), float(tb[2] - ta[2])],
            'R_rect_00': c['R_rect_00'].reshape(3, 3)}


def base_to_camera(calib_dir: str | Path, color: bool = False) -> np.ndarray:
    """T_base_cam (4, 4): the rectified camera-0 optical frame in base_link (= the IMU frame),
    ``inv(T_rect_cam0 T_cam0_velo T_velo_imu)`` from calib_imu_to_velo, calib_velo_to_cam and
    R_rect_00; ``p_base = T @ p_cam``. ``color``: the rectified camera-2 frame instead
    (shifted by the offset of P_rect_02)."""
    d = Path(calib_dir)
    iv = read_calib_file(d / 'calib_imu_to_velo.txt')
    vc = read_calib_file(d / 'calib_velo_to_cam.txt')
    cc = read_calib_file(d / 'calib_cam_to_cam.txt')
    t_velo_imu = _rigid(iv['R'], iv['T'])
    t_cam0_velo = _rigid(vc['R'], vc['T'])
    t_rect_cam0 = _rigid(cc['R_rect_00'], np.zeros(3))
    t_base_rect0 = np.linalg.inv(t_rect_cam0 @ t_cam0_velo @ t_velo_imu)
    if not color:
        return t_base_rect0
    t_left = stereo_calibration(d, color=True)['t_left']  # p_cam2 = p_rect0 - t_left
    return t_base_rect0 @ _rigid(np.eye(3), t_left)


def matrix_to_pose6(m: np.ndarray) -> list[float]:
    """[x, y, z, roll, pitch, yaw] (m, rad; R = Rz Ry Rx, fixed axes) of a 4x4 transform."""
    from ..core.pose import matrix_to_rpy

    return [float(x) for x in m[:3, 3]] + [float(a) for a in matrix_to_rpy(m[:3, :3])]


# ----------------------------------------------------------------------------- checks
def _enu_track(ox: dict[str, np.ndarray]) -> np.ndarray:
    from ..core.geodesy import EnuFrame

    frame = EnuFrame(float(ox['lat'][0]), float(ox['lon'][0]), 0.0)
    return frame.geodetic_to_enu(ox['lat'], ox['lon'], np.zeros_like(ox['lat']))


def yaw_check(ox: dict[str, np.ndarray], min_speed_mps: float = 2.0) -> dict[str, Any]:
    """OXTS yaw against the GNSS course over ground (atan2 of the ENU track differences, and of
    vn/ve) while moving faster than ``min_speed_mps``; degrees."""
    p = _enu_track(ox)
    dp = p[2:, :2] - p[:-2, :2]  # central differences of the position track
    cog_track = np.arctan2(dp[:, 1], dp[:, 0])
    speed = np.hypot(ox['vn'], ox['ve'])[1:-1]
    moving = speed > min_speed_mps
    def wrap(a: np.ndarray) -> np.ndarray:
        return (a + np.pi) % (2 * np.pi) - np.pi

    d_track = np.degrees(wrap(ox['yaw'][1:-1] - cog_track))[moving]
    d_vel = np.degrees(wrap(ox['yaw'] - np.arctan2(ox['vn'], ox['ve'])))[
        np.hypot(ox['vn'], ox['ve']) > min_speed_mps]
    return {'rows_moving': int(moving.sum()),
            'yaw_minus_track_course_deg': {'median': float(np.median(d_track)),
                                           'max_abs': float(np.max(np.abs(d_track)))},
            'yaw_minus_velocity_course_deg': {'median': float(np.median(d_vel)),
                                              'max_abs': float(np.max(np.abs(d_vel)))},
            'speed_mps': {'min': float(speed.min()), 'max': float(speed.max())}}


def imu_frame_check(ox: dict[str, np.ndarray], g: float = 9.80665) -> dict[str, Any]:
    """Which OXTS accelerations are body-frame specific force: predict ``R^T (a_enu + g e_z)``
    (a_enu from differentiating ve, vn, vu) in the body frame (R = oxts_rotation) and in the
    level frame (Rz(yaw) only) and compare with ax/ay/az and af/al/au (m/s^2, RMS); also the
    gravity direction of the raw accelerometer against roll/pitch."""
    t = (ox['t_ns'] - ox['t_ns'][0]) * 1e-9
    v = np.stack([ox['ve'], ox['vn'], ox['vu']], axis=1)
    a = np.gradient(v, t, axis=0)
    up = a + np.array([0.0, 0.0, g])
    body = np.stack([oxts_rotation(r, p, y).T @ u for r, p, y, u in
                     zip(ox['roll'], ox['pitch'], ox['yaw'], up, strict=True)])
    level = np.stack([rot_z(y).T @ u for y, u in zip(ox['yaw'], up, strict=True)])
    axyz = np.stack([ox['ax'], ox['ay'], ox['az']], axis=1)
    aflu = np.stack([ox['af'], ox['al'], ox['au']], axis=1)

    def rms(x: np.ndarray) -> list[float]:
        return [float(v) for v in np.sqrt(np.mean(x ** 2, axis=0))]

    # gravity direction: roll/pitch from the raw accelerometer (vehicle acceleration removed)
    f = axyz - np.stack([oxts_rotation(r, p, y).T @ aa for r, p, y, aa in
                         zip(ox['roll'], ox['pitch'], ox['yaw'], a, strict=True)])
    roll_acc = np.arctan2(f[:, 1], f[:, 2])
    pitch_acc = np.arctan2(-f[:, 0], np.hypot(f[:, 1], f[:, 2]))
    return {'rms_axyz_vs_body_prediction': rms(axyz - body),
            'rms_axyz_vs_level_prediction': rms(axyz - level),
            'rms_aflu_vs_level_prediction': rms(aflu - level),
            'rms_aflu_vs_body_prediction': rms(aflu - body),
            'mean_az': float(np.mean(ox['az'])), 'mean_au': float(np.mean(ox['au'])),
            'roll_from_accel_minus_roll_deg': float(np.degrees(np.median(roll_acc - ox['roll']))),
            'pitch_from_accel_minus_pitch_deg': float(np.degrees(np.median(pitch_acc
                                                                           - ox['pitch']))),
            'roll_deg_range': [float(np.degrees(ox['roll'].min())),
                               float(np.degrees(ox['roll'].max()))],
            'pitch_deg_range': [float(np.degrees(ox['pitch'].min())),
                                float(np.degrees(ox['pitch'].max()))]}


def srtm_glob() -> str | None:
    """The SRTM3 tiles of the shared data (glob), or None."""
    d = shared_data_dir()
    return str(d / 'srtm3' / 'N4*E008.hgt') if d is not None and (d / 'srtm3').is_dir() else None


def altitude_check(ox: dict[str, np.ndarray], dem_glob: str | None = None) -> dict[str, Any]:
    """Decide the OXTS altitude reference from the DEM under the track.

    Returns the medians (m) of ``alt - H_dem`` (alt read as orthometric, EGM96 like SRTM) and of
    ``alt - h_dem`` (alt read as ellipsoidal; h_dem = H_dem + N_EGM96), the geoid undulation,
    and ``decision`` ('egm96' or 'ellipsoid': the reading whose residual is closer to the IMU
    height above the road, IMU_HEIGHT_M).

    Raises:
        FileNotFoundError: no DEM tiles.
    """
    from ..core.dem import DemSource, DemSourceSpec
    from ..core.geodesy import geoid_undulation

    dem_glob = dem_glob or srtm_glob()
    if dem_glob is None:
        raise FileNotFoundError('no SRTM tiles to check the altitude reference against')
    src = DemSource(DemSourceSpec(id=1, name='srtm', path=dem_glob, kind='dsm',
                                  vertical_datum='egm96', sigma_v_m=9.0, sigma_h_m=20.0))
    h_dem = src.heights(ox['lat'], ox['lon'])
    n = geoid_undulation(ox['lat'], ox['lon'], 'egm96')
    ok = np.isfinite(h_dem)
    as_ortho = ox['alt'][ok] - h_dem[ok]
    as_ell = ox['alt'][ok] - (h_dem[ok] + n[ok])
    med_o, med_e = float(np.median(as_ortho)), float(np.median(as_ell))
    decision = 'egm96' if abs(med_o - IMU_HEIGHT_M) < abs(med_e - IMU_HEIGHT_M) else 'ellipsoid'
    return {'rows': int(ok.sum()), 'geoid_undulation_m': float(np.median(n)),
            'alt_m': [float(ox['alt'].min()), float(ox['alt'].max())],
            'dem_m': [float(np.nanmin(h_dem)), float(np.nanmax(h_dem))],
            'alt_minus_dem_if_orthometric_m': {'median': med_o,
                                               'p10': float(np.percentile(as_ortho, 10)),
                                               'p90': float(np.percentile(as_ortho, 90))},
            'alt_minus_dem_if_ellipsoidal_m': {'median': med_e},
            'imu_height_above_road_m': IMU_HEIGHT_M, 'decision': decision}


def navsat_status(navstat: float, posmode: float) -> int:
    """sensor_msgs/NavSatStatus.status of an OXTS row (navstat 4 = locked; posmode per the
    OXTS NCOM table: 4 differential, 5 RTK float, 6 RTK integer)."""
    if int(navstat) != 4:
        return STATUS_NO_FIX
    if int(posmode) in (5, 6):
        return STATUS_GBAS_FIX
    if int(posmode) == 4:
        return STATUS_SBAS_FIX
    return STATUS_FIX


def gnss_covariance(pos_accuracy: float) -> np.ndarray:
    """ENU position covariance (3, 3), m^2, of a row (see the module docstring)."""
    s_h = float(pos_accuracy)
    s_v = math.hypot(2.0 * s_h, GEOID_MODEL_SIGMA_M)
    return np.diag([s_h ** 2, s_h ** 2, s_v ** 2])


# ----------------------------------------------------------------------------- params
def node_params(drive_dir: Path, dem: str = 'srtm', color: bool = False) -> dict[str, Any]:
    """Dotted node parameters for the converted bag.

    SRTM3 (kind dsm, EGM96, survey 2000-02-11): vertical 16 m LE90 (absolute, mission spec)
    -> 1-sigma 16 / 1.645 = 9.73 m for a Gaussian error. Horizontal: the spec is 20 m CE90
    absolute geolocation (about 9.3 m 1-sigma per axis); 20 m per axis is stated, conservative,
    to cover the 90 m cells. Rhine (rhine_elv0.tif of Deltares/pyflwdir, 30 arc-second; the
    file carries no vertical datum: EGM96 is ASSUMED (it agrees with SRTM3 to 0.2 m at the
    drive), sigma_v 15 m and sigma_h 500 m (half a cell) are ASSUMPTIONS; kind dem, priority
    below SRTM.

    Raises:
        ValueError: on an unknown ``dem`` choice.
    """
    if dem not in DEM_CHOICES:
        raise ValueError(f'dem must be one of {list(DEM_CHOICES)}, got {dem!r}')
    data = shared_data_dir()
    p: dict[str, Any] = {
        'rectify': False,
        'sync.mode': 'exact',
        'stereo.num_disparities': 64,
        'stereo.block_size': 5,
        'georef.datum_mode': 'first_fix',
        'extrinsics.base_to_imu': [0.0] * 6,
        'extrinsics.base_to_camera': matrix_to_pose6(base_to_camera(drive_dir.parent, color)),
        'extrinsics.base_to_gnss': [0.0, 0.0, 0.0],
        'pose.max_imu_gap_s': 0.25,  # OXTS rows at ~10 Hz (jitter up to ~0.11 s)
        'pose.max_gnss_gap_s': 0.25,
        'dem.grid_cell_m': 10.0,
        'dem.grid_half_extent_m': 3000.0,
        'dem.grid_retile_margin_m': 1000.0,
        'dem.max_range_m': 2000.0,
    }
    names = []
    if dem in ('srtm', 'both'):
        if data is None:
            raise ValueError('dem srtm: the shared data folder (srtm3/) is absent')
        names.append('srtm')
        p.update({'dem.source.srtm.' + k: v for k, v in {
            'id': 1, 'path': str(data / 'srtm3' / 'N4*E008.hgt'), 'kind': 'dsm',
            'vertical_datum': 'egm96', 'sigma_v_m': round(16.0 / 1.645, 2), 'sigma_h_m': 20.0,
            'survey_date': '2000-02-11', 'licence': 'NASA SRTM v2 (SRTM3), public domain',
            'priority': 1}.items()})
    if dem in ('rhine', 'both'):
        if data is None:
            raise ValueError('dem rhine: the shared data folder (rhine_dem/) is absent')
        names.append('rhine')
        p.update({'dem.source.rhine.' + k: v for k, v in {
            'id': 2, 'path': str(data / 'rhine_dem' / 'rhine_elv0.tif'), 'kind': 'dem',
            'vertical_datum': 'egm96', 'sigma_v_m': 15.0, 'sigma_h_m': 500.0,
            'survey_date': '', 'licence': 'Deltares/pyflwdir example data (MIT)',
            'priority': 0}.items()})
    p['dem.sources'] = ', '.join(names)
    return p


def write_params(params: dict[str, Any], path: Path, drive_dir: Path) -> Path:
    """Write ``params`` (dotted) as a ROS 2 params file for node ``geo_depth_node``."""
    from ..synth.params_out import write_params_file

    header = (f'# Node parameters for the KITTI drive {drive_dir.name} (written by geo-depth '
              'kitti2bag).\n# base_link = the OXTS/IMU frame; extrinsics [x, y, z, roll, pitch, '
              'yaw] (m, rad, fixed axes);\n# SRTM3 sigma_v = 16 m LE90 / 1.645 = 9.73 m; Rhine '
              'DEM datum EGM96 and sigmas are assumptions.\n')
    return write_params_file(params, path, header)


# ----------------------------------------------------------------------------- bag
def _stamp(ts: Any, ns: int) -> Any:
    return ts.types['builtin_interfaces/msg/Time'](sec=int(ns // 1_000_000_000),
                                                   nanosec=int(ns % 1_000_000_000))


def _header(ts: Any, ns: int, frame_id: str) -> Any:
    return ts.types['std_msgs/msg/Header'](stamp=_stamp(ts, ns), frame_id=frame_id)


def _vec3(ts: Any, v: Sequence[float]) -> Any:
    return ts.types['geometry_msgs/msg/Vector3'](x=float(v[0]), y=float(v[1]), z=float(v[2]))


def _quat(ts: Any, q: Sequence[float]) -> Any:
    return ts.types['geometry_msgs/msg/Quaternion'](x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                                    w=float(q[3]))


def _tf(ts: Any, ns: int, parent: str, child: str, m: np.ndarray) -> Any:
    return ts.types['geometry_msgs/msg/TransformStamped'](
        header=_header(ts, ns, parent), child_frame_id=child,
        transform=ts.types['geometry_msgs/msg/Transform'](
            translation=_vec3(ts, m[:3, 3]), rotation=_quat(ts, matrix_to_quat_xyzw(m[:3, :3]))))


def _read_image(path: Path, color: bool) -> np.ndarray:
    """(H, W) uint8 grey, or (H, W, 3) uint8 BGR for colour."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'cannot read image {path}')
    want = 3 if color else 2
    if img.ndim != want or img.dtype != np.uint8:
        raise ValueError(f'{path}: expected an 8-bit {"BGR" if color else "grey"} image, got '
                         f'{img.shape} {img.dtype}')
    return img


def bag_messages(drive_dir: Path, alt_datum: str = 'egm96', color: bool = False
                 ) -> tuple[list[tuple[int, str, Any]], dict[str, Any]]:
    """(stamp_ns, topic key, rosbags message) in time order, and a summary dict.

    Raises:
        ValueError: image sizes that differ from the scaled calibration, or left/right
            counts that differ.
    """
    from ..core.geodesy import to_ellipsoidal
    from .scene_bag import camera_info_message, image_message, kilted_typestore

    ts = kilted_typestore()
    cal = stereo_calibration(drive_dir.parent, color=color)
    ox = load_oxts(drive_dir)
    cam_l, cam_r = ('image_02', 'image_03') if color else ('image_00', 'image_01')
    t_img = read_timestamps(drive_dir / cam_l / 'timestamps.txt')
    left_files = sorted((drive_dir / cam_l / 'data').glob('*.png'))
    right_files = sorted((drive_dir / cam_r / 'data').glob('*.png'))
    if not (len(left_files) == len(right_files) == t_img.size):
        raise ValueError(f'{drive_dir}: {len(left_files)} left, {len(right_files)} right images, '
                         f'{t_img.size} timestamps')
    out: list[tuple[int, int, str, Any]] = []
    order = {k: i for i, k in enumerate(TOPICS)}

    def add(ns: int, key: str, msg: Any) -> None:
        out.append((int(ns), order[key], key, msg))

    t0 = int(min(ox['t_ns'][0], t_img[0]))
    t_base_cam = base_to_camera(drive_dir.parent, color)
    t_left_right = np.eye(4)
    t_left_right[0, 3] = cal['baseline_m']
    add(t0, 'tf_static', ts.types['tf2_msgs/msg/TFMessage'](transforms=[
        _tf(ts, t0, BASE_FRAME, IMU_FRAME, np.eye(4)),
        _tf(ts, t0, BASE_FRAME, GNSS_FRAME, np.eye(4)),
        _tf(ts, t0, BASE_FRAME, LEFT_FRAME, t_base_cam),
        _tf(ts, t0, LEFT_FRAME, RIGHT_FRAME, t_left_right)]))

    Imu = ts.types['sensor_msgs/msg/Imu']
    Fix = ts.types['sensor_msgs/msg/NavSatFix']
    Status = ts.types['sensor_msgs/msg/NavSatStatus']
    ori_cov = np.diag(np.radians([ROLL_PITCH_SIGMA_DEG, ROLL_PITCH_SIGMA_DEG, YAW_SIGMA_DEG]) ** 2)
    if alt_datum == 'ellipsoid':
        h_ell = ox['alt'].copy()
    else:
        h_ell = to_ellipsoidal(ox['lat'], ox['lon'], ox['alt'], alt_datum)
    for k in range(ox['t_ns'].size):
        ns = int(ox['t_ns'][k])
        q = matrix_to_quat_xyzw(oxts_rotation(ox['roll'][k], ox['pitch'][k], ox['yaw'][k]))
        add(ns, 'imu', Imu(
            header=_header(ts, ns, IMU_FRAME), orientation=_quat(ts, q),
            orientation_covariance=ori_cov.reshape(9).copy(),
            angular_velocity=_vec3(ts, (ox['wx'][k], ox['wy'][k], ox['wz'][k])),
            angular_velocity_covariance=np.zeros(9),
            linear_acceleration=_vec3(ts, (ox['ax'][k], ox['ay'][k], ox['az'][k])),
            linear_acceleration_covariance=np.zeros(9)))
        add(ns, 'gnss', Fix(
            header=_header(ts, ns, GNSS_FRAME),
            status=Status(status=navsat_status(ox['navstat'][k], ox['posmode'][k]),
                          service=SERVICE_GPS),
            latitude=float(ox['lat'][k]), longitude=float(ox['lon'][k]), altitude=float(h_ell[k]),
            position_covariance=gnss_covariance(ox['pos_accuracy'][k]).reshape(9).copy(),
            position_covariance_type=COV_APPROXIMATED))
    w, h = cal['width'], cal['height']
    for k, (lf, rf) in enumerate(zip(left_files, right_files, strict=True)):
        ns = int(t_img[k])
        for side, f, frame_id, p in (('left', lf, LEFT_FRAME, cal['P_left']),
                                     ('right', rf, RIGHT_FRAME, cal['P_right'])):
            img = _read_image(f, color)
            if img.shape[:2] != (h, w):
                raise ValueError(f'{f}: {img.shape[1]}x{img.shape[0]} but the calibration at scale '
                                 f'{IMAGE_SCALE} gives {w}x{h}')
            add(ns, f'{side}_info', camera_info_message(ts, ns, frame_id, w, h, p[:, :3], p,
                                                        D=np.zeros(5), R=np.eye(3)))
            add(ns, f'{side}_image', image_message(ts, ns, frame_id, img,
                                                   encoding='bgr8' if color else 'mono8'))
    out.sort(key=lambda e: (e[0], e[1]))
    summary = {'frames': len(left_files), 'oxts_rows': int(ox['t_ns'].size),
               'image_size': [w, h], 'fx': float(cal['K'][0, 0]), 'cx': float(cal['K'][0, 2]),
               'cy': float(cal['K'][1, 2]), 'baseline_m': cal['baseline_m'],
               'baseline_full_m': cal['baseline_full_m'], 'altitude_datum_of_oxts': alt_datum,
               'cameras': [cam_l, cam_r],
               'base_to_camera': matrix_to_pose6(t_base_cam)}
    return [(ns, key, msg) for ns, _, key, msg in out], summary


def convert(drive_dir: str | Path, out_dir: str | Path, *, storage: str = 'mcap',
            dem: str = 'srtm', alt_datum: str = 'egm96', color: bool = False) -> dict[str, Any]:
    """Convert a drive: OUT/bag, OUT/params.yaml, OUT/conversion.json. Returns the summary
    (counts per topic, calibration numbers, the checks).

    Raises:
        ValueError: bad storage/dem/alt_datum, or inconsistent input.
        FileNotFoundError: missing drive files.
    """
    from .bag_io import transient_local_qos
    from .scene_bag import check_storage, kilted_typestore, new_bag_writer

    check_storage(storage)
    if alt_datum not in ('egm96', 'ellipsoid'):
        raise ValueError(f'alt_datum must be egm96 or ellipsoid, got {alt_datum!r}')
    drive = Path(drive_dir)
    if not (drive / 'oxts').is_dir() or not (drive / 'image_00').is_dir():
        raise FileNotFoundError(f'{drive} is not a KITTI *_sync drive folder (oxts/, image_00/)')
    params = node_params(drive, dem, color)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bag = out / 'bag'
    ts = kilted_typestore()
    msgs, summary = bag_messages(drive, alt_datum, color)
    counts: dict[str, int] = {}
    with new_bag_writer(bag, storage) as writer:
        conns = {}
        for key, (topic, typ) in TOPICS.items():
            qos = transient_local_qos() if key == 'tf_static' else None
            conns[key] = writer.add_connection(topic, typ, typestore=ts,
                                               **({'offered_qos_profiles': qos} if qos else {}))
        for ns, key, msg in msgs:
            writer.write(conns[key], ns, bytes(ts.serialize_cdr(msg, TOPICS[key][1])))
            counts[TOPICS[key][0]] = counts.get(TOPICS[key][0], 0) + 1
    write_params(params, out / 'params.yaml', drive)
    ox = load_oxts(drive)
    checks: dict[str, Any] = {'yaw': yaw_check(ox), 'imu_frame': imu_frame_check(ox)}
    try:
        checks['altitude'] = altitude_check(ox)
    except (FileNotFoundError, ValueError) as e:
        checks['altitude'] = {'unavailable': str(e)}
    summary.update(counts=counts, checks=checks, bag=str(bag), params=str(out / 'params.yaml'))
    (out / 'conversion.json').write_text(json.dumps(summary, indent=1) + '\n')
    _LOG.info('KITTI drive %s -> %s: %s', drive.name, bag, counts)
    return summary


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``geo-depth kitti2bag``."""
    ap = argparse.ArgumentParser(prog='geo-depth kitti2bag', description=(
        'Convert a KITTI raw *_sync drive (0.4-scaled images) into a rosbag2 (stereo, Imu, '
        'NavSatFix, tf_static) plus a node params file with the SRTM/Rhine DEM sources.'))
    ap.add_argument('paths', nargs='+', metavar='[DRIVE_DIR] OUT_DIR',
                    help='KITTI drive folder (default: drive 0001 of the shared data) and the '
                         'output folder')
    ap.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    g = ap.add_mutually_exclusive_group()
    g.add_argument('--gray', dest='color', action='store_false', default=False,
                   help='grey cameras 0/1 (default)')
    g.add_argument('--color', dest='color', action='store_true',
                   help='colour cameras 2/3 as bgr8 (baseline 0.532 m)')
    ap.add_argument('--dem', choices=DEM_CHOICES, default='srtm',
                    help='DEM sources in params.yaml (default srtm)')
    ap.add_argument('--alt-datum', choices=('egm96', 'ellipsoid'), default='egm96',
                    help='reference of the OXTS altitude (default egm96: decided from the data, '
                         'see conversion.json checks.altitude)')
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; returns the exit code (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    if len(args.paths) > 2:
        print('kitti2bag: expected [DRIVE_DIR] OUT_DIR', file=sys.stderr)
        return 2
    if len(args.paths) == 2:
        drive, out = Path(args.paths[0]), Path(args.paths[1])
    else:
        drive, out = default_drive_dir(), Path(args.paths[0])
        if drive is None:
            print('kitti2bag: no DRIVE_DIR given and the shared KITTI drive is absent',
                  file=sys.stderr)
            return 2
    try:
        s = convert(drive, out, storage=args.storage, dem=args.dem, alt_datum=args.alt_datum,
                    color=args.color)
    except (ValueError, FileNotFoundError) as e:
        print(f'kitti2bag: {e}', file=sys.stderr)
        return 2
    alt = s['checks'].get('altitude', {})
    print(f'wrote {s["bag"]} ({s["counts"]}) and {s["params"]}; fx {s["fx"]:.2f} px, baseline '
          f'{s["baseline_m"]:.4f} m; altitude check: {json.dumps(alt)}')
    return 0


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
