"""Options of the synthetic world (units in names; ranges checked in :meth:`SynthConfig.validate`).

Frames and conventions used throughout ``geo_depth_node.synth``
----------------------------------------------------------------
* ``enu`` (called ``map`` in the bag): local East-North-Up Cartesian frame tangent to the WGS84
  ellipsoid at the datum ``(datum_lat_deg, datum_lon_deg, datum_height_m)``; the datum height is
  ellipsoidal. The TRUE world is defined in this frame: the terrain is the surface
  ``z = T(x, y)`` (metres), objects are meshes in it.
* ``base_link`` (REP-103/105): x forward, y left, z up, on the vehicle, origin ``axle_height_m``
  above the ground along the body z axis.
* ``imu_link``, ``gnss_link``, ``left_camera_optical_frame`` (x right, y down, z forward),
  ``right_camera_optical_frame`` (the left one shifted by ``+baseline_m`` along its x): rigidly
  mounted on base_link with the extrinsics below. Rotations are roll-pitch-yaw about fixed axes
  x, y, z (``R = Rz(yaw) Ry(pitch) Rx(roll)``, transforms3d ``euler2mat(r, p, y, 'sxyz')``).
* The camera mount ``camera_xyz_m`` / ``camera_pitch_deg`` gives base_link -> left optical frame:
  the optical axis along base x, tilted DOWN by ``camera_pitch_deg``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..tools.scene_bag import BAG_STORAGES as STORAGES  # the storages the bag writer knows

TERRAINS = ('flat', 'hills', 'mountains')
DEM_KINDS = ('dem', 'dsm')
VERTICAL_DATUMS = ('ellipsoid', 'egm96')


@dataclasses.dataclass
class SynthConfig:
    """Every option of the generator. One (config, seed) -> one byte-identical world."""

    seed: int = 0
    frames: int = 20
    rate_hz: float = 10.0
    first_frame_s: float = 1.013  # camera clock offset: images are NOT aligned with IMU samples
    width: int = 640
    height: int = 480
    hfov_deg: float = 70.0
    baseline_m: float = 0.12
    noise_dn: float = 1.0
    raw: bool = False  # also write distorted raw images (image_raw) instead of image_rect
    k1: float = -0.12
    k2: float = 0.03
    supersample: int = 1

    terrain: str = 'hills'
    extent_m: float = 1500.0  # half-size of the square true-world terrain around the datum
    datum_lat_deg: float = 49.0
    datum_lon_deg: float = 8.45
    datum_height_m: float = 160.0  # ellipsoidal height of the ENU origin
    objects: int = 14
    textureless_patches: int = 3
    changes: bool = True  # a pit, a mound and a new building that the DEM does not know

    speed_mps: float = 5.0
    path_radius_m: float = 120.0
    axle_height_m: float = 0.35
    camera_xyz_m: tuple[float, float, float] = (1.2, 0.06, 1.5)
    camera_pitch_deg: float = 6.0
    imu_xyz_m: tuple[float, float, float] = (0.3, -0.1, 0.9)
    imu_rpy_rad: tuple[float, float, float] = (0.0, 0.0, math.pi / 2)
    gnss_xyz_m: tuple[float, float, float] = (-0.4, 0.0, 1.8)

    imu_rate_hz: float = 200.0
    gyro_noise_rad_s: float = 0.002  # white noise std per sample
    gyro_bias_rad_s: float = 0.001  # std of the constant per-axis bias
    accel_noise_m_s2: float = 0.02
    accel_bias_m_s2: float = 0.02
    imu_orientation: bool = True  # False -> orientation_covariance[0] = -1
    orientation_sigma_rp_rad: float = 0.005
    orientation_sigma_yaw_rad: float = 0.02

    gnss_rate_hz: float = 10.0
    gnss_sigma_h_m: float = 0.10
    gnss_sigma_v_m: float = 0.20
    gnss_nofix_s: tuple[tuple[float, float], ...] = ()  # (start, end) times of NO_FIX gaps
    gnss_degraded_s: tuple[tuple[float, float], ...] = ()  # (start, end) of degraded fixes
    gnss_degraded_sigma_m: float = 3.0

    dem_res_m: float = 5.0
    dem_extent_m: float = 1200.0  # half-size of the DEM around the datum (<= extent_m)
    dem_vertical_datum: str = 'egm96'
    dem_kind: str = 'dem'
    dem_offset_m: float = 0.0  # constant vertical error of the DEM (not in its stated accuracy)
    dem_sigma_m: float = 0.5  # random vertical error, 1 sigma (the DEM's stated accuracy)
    dem_sigma_h_m: float = 1.0  # horizontal error, per-axis 1 sigma (applied and stated)
    dem_corr_m: float = 40.0  # correlation length of the random vertical and horizontal error
    dem_holes: int = 0  # nodata holes (one of them in view of the first frame when > 0)
    dem_survey_date: str = '2021-06-15'
    dem_licence: str = 'CC0-1.0 (synthetic)'

    storage: str = 'mcap'

    def validate(self) -> 'SynthConfig':
        """Check every option; returns self. Raises ValueError naming the bad option."""
        def rng(name: str, lo: float, hi: float) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi \
                    or v != v:
                raise ValueError(f'{name} must be in [{lo}, {hi}], got {v!r}')

        for name in ('seed',):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f'{name} must be a non-negative int, got {getattr(self, name)!r}')
        rng('frames', 1, 10000)
        rng('rate_hz', 0.1, 200)
        rng('first_frame_s', 0.5, 100)
        rng('width', 64, 4096)
        rng('height', 48, 4096)
        rng('hfov_deg', 10, 150)
        rng('baseline_m', 0.01, 5)
        rng('noise_dn', 0, 20)
        rng('supersample', 1, 4)
        rng('extent_m', 300, 20000)
        rng('datum_lat_deg', -80, 84)
        rng('datum_lon_deg', -180, 180)
        rng('datum_height_m', -400, 9000)
        rng('objects', 0, 200)
        rng('textureless_patches', 0, 20)
        rng('speed_mps', 0.0, 40)
        rng('path_radius_m', 10, 1e6)
        rng('axle_height_m', 0, 3)
        rng('camera_pitch_deg', -45, 60)
        rng('imu_rate_hz', 10, 2000)
        rng('gnss_rate_hz', 0.5, 100)
        for name in ('gyro_noise_rad_s', 'gyro_bias_rad_s', 'accel_noise_m_s2', 'accel_bias_m_s2',
                     'orientation_sigma_rp_rad', 'orientation_sigma_yaw_rad', 'gnss_sigma_h_m',
                     'gnss_sigma_v_m', 'dem_sigma_m', 'dem_sigma_h_m'):
            rng(name, 0, 1000)
        rng('gnss_degraded_sigma_m', 0.01, 1000)
        rng('dem_res_m', 0.5, 1000)
        rng('dem_extent_m', 50, self.extent_m)
        rng('dem_offset_m', -1000, 1000)
        rng('dem_corr_m', 0, 10000)
        rng('dem_holes', 0, 50)
        for name, choices in (('terrain', TERRAINS), ('dem_kind', DEM_KINDS),
                              ('dem_vertical_datum', VERTICAL_DATUMS), ('storage', STORAGES)):
            if getattr(self, name) not in choices:
                raise ValueError(f'{name} must be one of {choices}, got {getattr(self, name)!r}')
        for name in ('gnss_nofix_s', 'gnss_degraded_s'):
            for iv in getattr(self, name):
                if len(iv) != 2 or not iv[0] < iv[1]:
                    raise ValueError(f'{name} entries must be (start, end) with start < end, got {iv!r}')
        for name in ('camera_xyz_m', 'imu_xyz_m', 'imu_rpy_rad', 'gnss_xyz_m'):
            v = getattr(self, name)
            if len(v) != 3 or not all(math.isfinite(float(x)) for x in v):
                raise ValueError(f'{name} must be 3 finite numbers, got {v!r}')
        import datetime

        try:
            datetime.date.fromisoformat(self.dem_survey_date)
        except ValueError as exc:
            raise ValueError(f'dem_survey_date must be an ISO date YYYY-MM-DD, got '
                             f'{self.dem_survey_date!r}') from exc
        return self

    @property
    def fx(self) -> float:
        """Focal length of the rectified cameras, pixels (from the horizontal field of view)."""
        return (self.width / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)

    @property
    def duration_s(self) -> float:
        """Time from t=0 (start of IMU/GNSS data) to 0.5 s after the last frame."""
        return self.first_frame_s + (self.frames - 1) / self.rate_hz + 0.5

    def frame_times_s(self) -> list[float]:
        """Image times, seconds since the start of the recording."""
        return [self.first_frame_s + i / self.rate_hz for i in range(self.frames)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of every option."""
        d = dataclasses.asdict(self)
        return {k: (list(map(list, v)) if k.endswith('_s') and isinstance(v, tuple)
                    else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
