"""The node's parameters: one table with defaults, units, ranges and descriptions.

This table is the single source of truth. The ROS shell declares every entry
(with a ``ParameterDescriptor`` carrying description and range), the offline
tools read the same YAML through :func:`load_params_yaml`, and
``config/geo_depth.yaml`` mirrors it (a test checks both directions).
ROS-free: no rclpy here.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Iterable, Mapping

_LOG = logging.getLogger(__name__)

ParamValue = bool | int | float | str | tuple[float, ...]

#: Largest stereo.p2 OpenCV SGBM can take (block_size 1, pre_filter_cap <= 15): its costs are
#: int16 and start at P2, = stereo.SGBM_COST_MAX - stereo.sgbm_max_block_cost(1, 1); the limit
#: for the configured block is checked in validate_params.
_SGBM_P2_MAX = 32674
#: sgm_torch searches at most this many disparities (core/sgm.py SGMConfig).
_SGM_TORCH_MAX_DISPARITIES = 256
#: Host memory per height-grid node while a grid is built (core/dem.py LocalHeightGrid:
#: float64 work arrays of sample_nodes, the float32/int32 HeightField and the previous grid,
#: which is kept until the new one is ready), bytes: this plus _GRID_BYTES_PER_SOURCE for each
#: DEM source. Measured as the peak RSS of building 1501^2..5001^2-node grids and ray-casting
#: into them: 258 + 40 per source; the kept grid (height, source, sigma_v, sigma_h) is 16 and
#: the ray-cast's block maxima (8x8-cell blocks) ~0.2.
_GRID_BYTES_PER_NODE = 274
_GRID_BYTES_PER_SOURCE = 40


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One declared parameter.

    Attributes:
        name: dotted ROS parameter name, e.g. ``stereo.num_disparities``.
        default: default value; its Python type is the parameter type.
        description: what it means (shown by ``ros2 param describe``).
        units: physical unit or ``''`` for unitless.
        min_value / max_value: inclusive numeric range (None = unbounded).
        step: integer step (ROS IntegerRange step; 0 = any).
        choices: allowed values for string parameters (empty = free text).
        read_only: cannot change at run time (needs a restart).
    """

    name: str
    default: ParamValue
    description: str
    units: str = ''
    min_value: float | None = None
    max_value: float | None = None
    step: int = 0
    choices: tuple[str, ...] = ()
    read_only: bool = False

    @property
    def type_name(self) -> str:
        """'bool', 'int', 'float', 'str' or 'float[N]' (a fixed-length double array)."""
        if isinstance(self.default, tuple):
            return f'float[{len(self.default)}]'
        return type(self.default).__name__

    def full_description(self) -> str:
        """Description with units, range and choices appended (for descriptors and docs)."""
        parts = [self.description]
        if self.units:
            parts.append(f'[{self.units}]')
        if self.min_value is not None or self.max_value is not None:
            parts.append(f'range {self.min_value}..{self.max_value}')
        if self.choices:
            parts.append('one of: ' + ', '.join(self.choices))
        return ' '.join(parts)

    def validate(self, value: Any) -> ParamValue:
        """Return ``value`` converted to this parameter's type, or raise ValueError."""
        t = type(self.default)
        if t is tuple:
            n = len(self.default)
            if isinstance(value, (str, bytes)) or not hasattr(value, '__len__') \
                    or len(value) != n or any(_finite_float(v) is None for v in value):
                raise ValueError(f'parameter {self.name}: expected {n} finite numbers, got '
                                 f'{value!r}')
            return tuple(float(v) for v in value)
        if t is bool:
            if not isinstance(value, bool):
                raise ValueError(f'parameter {self.name}: expected bool, got {value!r}')
            return value
        if t is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f'parameter {self.name}: expected integer, got {value!r}')
        elif t is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f'parameter {self.name}: expected number, got {value!r}')
            number = _finite_float(value)
            if number is None:
                raise ValueError(f'parameter {self.name}: expected a finite number, got {value}')
            value = number
        elif t is str:
            if not isinstance(value, str):
                raise ValueError(f'parameter {self.name}: expected string, got {value!r}')
            if self.choices and value not in self.choices:
                raise ValueError(
                    f'parameter {self.name}: {value!r} is not one of {list(self.choices)}')
            return value
        if self.min_value is not None and value < self.min_value:
            raise ValueError(f'parameter {self.name}: {value} is below the minimum {self.min_value}')
        if self.max_value is not None and value > self.max_value:
            raise ValueError(f'parameter {self.name}: {value} is above the maximum {self.max_value}')
        if t is int and self.step > 1 and self.min_value is not None \
                and (value - int(self.min_value)) % self.step != 0:
            raise ValueError(f'parameter {self.name}: {value} is not min {self.min_value} '
                             f'+ a multiple of {self.step}')
        return value


def _finite_float(v: Any) -> float | None:
    """``v`` as a finite float, or None (not a number, a bool, NaN, +-inf, or an integer too
    large for a float)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


PARAMETERS: tuple[ParamSpec, ...] = (
    # --- inputs -----------------------------------------------------------------
    ParamSpec('rectify', False,
              'Inputs are raw (distorted) images on left/image_raw and right/image_raw; '
              'rectify them with the CameraInfo D/K/R/P. False: inputs are already rectified '
              '(left/image_rect, right/image_rect).', read_only=True),
    ParamSpec('sync.mode', 'approximate',
              'How the left/right images and camera infos are paired: exact stamps, or the '
              'closest stamps within sync.slop_s.', choices=('exact', 'approximate'),
              read_only=True),
    ParamSpec('sync.slop_s', 0.005,
              'Largest stamp difference accepted between the four stereo messages in '
              'approximate mode.', 's', 0.0, 1.0),
    ParamSpec('sync.queue_size', 10,
              'Messages kept per input topic while waiting for a match.', '', 1, 1000),
    ParamSpec('processing_queue_size', 2,
              'Synchronised frames waiting for the worker thread; when full the oldest is '
              'dropped and counted in diagnostics.', '', 1, 100, read_only=True),
    ParamSpec('input.mono16_max', 0,
              'mono16 images are scaled to 8 bit for matching by 255/mono16_max; 0 = use the '
              'left image maximum of each frame (the same scale for both images).',
              'DN', 0, 65535),
    # --- stereo matcher -----------------------------------------------------------
    ParamSpec('stereo.matcher', 'auto',
              'Stereo matcher: sgm_torch = semi-global matching in PyTorch (Triton kernels on '
              'CUDA; census cost, gradient-adapted P2, LR check from the same cost volume); '
              'opencv_sgbm = OpenCV StereoSGBM on the CPU with an own LR pass; auto = sgm_torch '
              'when CUDA is available, else opencv_sgbm (the torch matcher is a slow reference '
              'on the CPU).', choices=('auto', 'sgm_torch', 'opencv_sgbm'), read_only=True),
    ParamSpec('stereo.device', 'auto',
              'torch device of sgm_torch: auto = cuda when available, else cpu.',
              choices=('auto', 'cpu', 'cuda'), read_only=True),
    ParamSpec('stereo.cuda_graph', True,
              'sgm_torch on CUDA: capture the frame path (matching, sigma, triangulation, '
              'packing) as a CUDA graph once per image size and calibration and replay it per '
              'frame (one launch instead of ~25); false = launch the kernels one by one. A '
              'capture that fails falls back to the latter, logged.', read_only=True),
    ParamSpec('stereo.paths', 8,
              'Aggregation paths of sgm_torch (8 = horizontal, vertical and diagonal; 4 = '
              'horizontal and vertical, faster).', '', 4, 8, step=4, read_only=True),
    ParamSpec('stereo.min_disparity', 0,
              'Smallest disparity searched (0 for a standard rig).', 'px', -256, 256),
    ParamSpec('stereo.num_disparities', 128,
              'Width of the disparity search range; the largest searched disparity is '
              'min_disparity + num_disparities - 1. Sets the closest measurable range '
              'Z_min = f*B/(max disparity). sgm_torch searches at most 256. opencv_sgbm needs '
              'images wider than max(min_disparity + num_disparities, 0) - min(min_disparity, '
              '0) px (frames that are not are refused as bad input).', 'px', 16, 512, step=16),
    ParamSpec('stereo.block_size', 5,
              'Matching block size (odd).', 'px', 1, 11, step=2),
    ParamSpec('stereo.p1', 0,
              'opencv_sgbm penalty for disparity changes of 1 px between neighbours; 0 = '
              '8*block_size^2.', '', 0, _SGBM_P2_MAX - 1),
    ParamSpec('stereo.p2', 0,
              'opencv_sgbm penalty for larger disparity jumps (must exceed p1); 0 = '
              '32*block_size^2. OpenCV keeps its costs in 16 bits: p2 + block_size^2 * (2*f + '
              '63) must be <= 32767, f = max(pre_filter_cap, 15) rounded up to odd (p2 <= 28042 '
              'for block 5, 9898 for block 11 at pre_filter_cap 63; beyond, costs wrap around '
              'and nothing matches).',
              '', 0, _SGBM_P2_MAX),
    ParamSpec('stereo.uniqueness_ratio', 10,
              'A match must beat the second best cost by this margin, else NO_MATCH (100 would '
              'reject every match; OpenCV sgbm_3way dies of it).', '%', 0, 99),
    ParamSpec('stereo.speckle_window_size', 100,
              'Connected disparity blobs smaller than this are removed (NO_MATCH); 0 = off.',
              'px', 0, 10000),
    ParamSpec('stereo.speckle_range', 2,
              'Largest disparity variation inside one speckle blob.', 'px', 0, 64),
    ParamSpec('stereo.pre_filter_cap', 63,
              'Clip of the x-derivative prefilter of OpenCV SGBM.', '', 1, 63),
    ParamSpec('stereo.mode', 'sgbm_3way',
              'OpenCV SGBM variant: sgbm (5 paths), sgbm_3way (3 paths, fastest), hh (8 paths, '
              'full image), hh4 (4 paths). hh and hh4 keep whole cost volumes: about 4 bytes '
              'per pixel and disparity (1280x720 at 128 disparities: 0.4 GB).',
              choices=('sgbm', 'sgbm_3way', 'hh', 'hh4')),
    ParamSpec('stereo.min_texture', 1.0,
              'Texture test (as stereo_image_proc texture_threshold): pixels whose mean '
              '|dI/dx| over a texture_window x texture_window window is below this get NO_MATCH '
              'instead of a depth that SGM propagated from elsewhere. Set it above the image '
              'noise (about 0.56 * noise sigma); 0 = off.', 'DN/px', 0.0, 64.0),
    ParamSpec('stereo.texture_window', 9,
              'Window of the texture test (odd).', 'px', 3, 31, step=2),
    ParamSpec('stereo.lr_check', True,
              'Left-right consistency check (opencv_sgbm: a second SGBM pass right-to-left, see '
              'stereo.lr_check_resolution; sgm_torch: from the same cost volume); pixels that '
              'fail get LR_INCONSISTENT.'),
    ParamSpec('stereo.lr_max_diff_px', 1.0,
              'Largest |d_left(x) - d_right(x - d_left)| that passes the left-right check.',
              'px', 0.0, 16.0),
    ParamSpec('stereo.lr_check_resolution', 'half',
              'opencv_sgbm: resolution of the right-to-left SGBM pass of the left-right check '
              '(it searches only the disparities the left pass found). half = on a '
              'half-resolution pyramid level (about +10 % matching time; near depth edges it '
              'rejects a few per cent more good pixels); full = the exact check at full '
              'resolution (about +35 % on typical scenes, up to twice the matching time). The '
              'calibrated sigma model has constants for both.', choices=('half', 'full')),
    # --- uncertainty model and the physical limit ------------------------------------
    ParamSpec('sigma.model', 'calibrated',
              'Disparity sigma: calibrated = per-pixel model of the matcher (core/sigma_model.py: '
              'left-right disagreement, local disparity range, rejected neighbours, texture, '
              'cost curvature, disparity), fitted on ground truth so that ~68 %/95 % of points '
              'fall within 1/2 sigma; constant = sigma.disparity_px (+ sigma.lr_gain * '
              '|d_left - d_right|).', choices=('calibrated', 'constant')),
    ParamSpec('sigma.disparity_px', 0.35,
              'sigma.model constant: 1-sigma disparity error of a good match. The depth sigma '
              'is sigma_Z = Z^2/(f*B) * sigma_d.', 'px', 0.01, 10.0),
    ParamSpec('sigma.lr_gain', 1.0,
              'sigma_d grows with the left-right disagreement: sigma_d^2 = disparity_px^2 + '
              '(lr_gain * |d_left - d_right|)^2.', '', 0.0, 10.0),
    ParamSpec('limit.max_relative_sigma', 0.05,
              'Physical limit: a stereo point whose range sigma exceeds this fraction of its '
              'range is never MEASURED (NONE + BEYOND_RESOLUTION). Equivalent to a minimum '
              'disparity of sigma_d / max_relative_sigma.', '', 0.001, 1.0),
    ParamSpec('limit.max_sigma_m', 0.0,
              'Physical limit in metres: a stereo point whose range sigma exceeds this is never '
              'MEASURED; 0 = only max_relative_sigma applies.', 'm', 0.0, 1000.0),
    # --- output ------------------------------------------------------------------
    ParamSpec('output.organized', True,
              'Publish ~/points organized (height x width of the left image, NaN x/y/z where '
              'there is no point); false: only points with provenance != NONE.'),
    ParamSpec('output.unrectify_points', True,
              'Rotate points from the rectified frame back into the left camera optical '
              'frame (by R^T of the left CameraInfo), so x/y/z are in the frame the image '
              'header names. False: points stay in the rectified frame (as stereo_image_proc).'),
    # --- georeferencing: datum, extrinsics, DEM sources ---------------------------------
    ParamSpec('georef.datum_mode', 'first_fix',
              'Origin of the local ENU frame: first_fix = the first good GNSS fix (published in '
              'the legend); fixed = georef.datum_* below.', choices=('first_fix', 'fixed'),
              read_only=True),
    ParamSpec('georef.datum_latitude_deg', 0.0,
              'Fixed datum: WGS84 latitude (used when georef.datum_mode is fixed).', 'deg',
              -90.0, 90.0, read_only=True),
    ParamSpec('georef.datum_longitude_deg', 0.0,
              'Fixed datum: WGS84 longitude.', 'deg', -180.0, 180.0, read_only=True),
    ParamSpec('georef.datum_height_m', 0.0,
              'Fixed datum: height above the WGS84 ellipsoid (not above the geoid).', 'm',
              -1000.0, 10000.0, read_only=True),
    ParamSpec('extrinsics.base_to_imu', (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
              'Pose of imu_link in base_link: [x, y, z, roll, pitch, yaw]; metres and radians, '
              'rotation R = Rz(yaw) Ry(pitch) Rx(roll) about fixed axes (as tf2 and '
              'static_transform_publisher), p_base = R p_imu + t.', 'm, rad', read_only=True),
    ParamSpec('extrinsics.base_to_camera', (0.0, 0.0, 0.0, -1.5707963267948966, 0.0,
                                            -1.5707963267948966),
              'Pose of the LEFT camera optical frame (x right, y down, z forward) in base_link, '
              '[x, y, z, roll, pitch, yaw] as extrinsics.base_to_imu. The default is an '
              'optical frame looking along base_link x from its origin.', 'm, rad',
              read_only=True),
    ParamSpec('extrinsics.base_to_gnss', (0.0, 0.0, 0.0),
              'Position of the GNSS antenna phase centre in base_link [x, y, z].', 'm',
              read_only=True),
    ParamSpec('dem.sources', '',
              'Comma-separated names of the elevation sources to use for priors, e.g. '
              '"srtm, lidar"; each name needs a dem.source.<name>.* namespace with path, id, '
              'kind (dem|dsm), vertical_datum (ellipsoid|egm96|egm2008|...), sigma_v_m, '
              'sigma_h_m, survey_date, licence, priority (see config/geo_depth.yaml). Empty = '
              'stereo only.', read_only=True),
    ParamSpec('dem.grid_cell_m', 2.0,
              'Cell size of the local ENU height grid the DEM sources are resampled onto.', 'm',
              0.1, 100.0, read_only=True),
    ParamSpec('dem.grid_half_extent_m', 1500.0,
              'The height grid spans +- this around the robot (east and north).', 'm', 50.0,
              20000.0, read_only=True),
    ParamSpec('dem.max_grid_memory_mb', 4000,
              'Memory budget of the height grid: start-up refuses a dem.grid_cell_m, '
              'dem.grid_half_extent_m and number of DEM sources whose grid needs more host '
              'memory while it is built: (2*round(half_extent/cell) + 1)^2 nodes x (274 + 40 '
              'per source) bytes (measured; the grid kept on dem.device is 16 bytes per node). '
              'The default grid (1501^2 nodes, one source) needs ~710 MB.', 'MB', 16, 1000000,
              read_only=True),
    ParamSpec('dem.grid_retile_margin_m', 500.0,
              'Rebuild the grid around the robot when it comes closer than this to an edge; '
              'must leave dem.max_range_m inside: max_range <= half_extent - margin.', 'm', 0.0,
              19000.0, read_only=True),
    ParamSpec('dem.max_range_m', 1000.0,
              'Farthest DEM prior along a pixel ray; rays that hit nothing closer are SKY.', 'm',
              1.0, 20000.0, read_only=True),
    ParamSpec('dem.device', 'auto',
              'torch device of the height grid and the ray-cast: auto = cuda when available.',
              choices=('auto', 'cpu', 'cuda'), read_only=True),
    ParamSpec('dem.raycast_march', 'auto',
              'Code that marches the DEM rays (one method, the same samples: statuses equal, '
              'ranges within 2 mm): auto = '
              'the Triton kernel on CUDA, the compiled numba march on the CPU (when numba is '
              'installed), else torch; torch = the batched torch loop (any device, ~5x slower '
              'on the CPU); numba = CPU only; triton = CUDA only.',
              choices=('auto', 'torch', 'numba', 'triton'), read_only=True),
    ParamSpec('dem.cast_stride', 4,
              'CPU prior cast (numba march): pixels of every cast_stride-th row and column are '
              'ray-cast exactly; the pixels between them are found as the DEM crossing next to '
              'the range their four neighbours predict, and cast exactly wherever those '
              'neighbours disagree (silhouettes, crests, sky, nodata). 1 = every pixel cast '
              'exactly (~4x slower). The sigma-point correction is cast exactly on the same '
              'pixels and interpolated as a ratio between them. Not used on CUDA.', 'px', 1, 16,
              read_only=True),
    ParamSpec('dem.sigma_points', True,
              'Refine the vertical part of the prior sigma with two more ray casts into the '
              'DEM raised and lowered by its vertical sigma (catches rays that would hit a '
              'crest in front or skim over the crest they hit; ~2x the ray-cast time). False '
              '= first-order sigma with the silhouette term only.', read_only=True),
    ParamSpec('dem.grid_retry_s', 5.0,
              'After a failed build of the height grid (a DEM file removed or unreadable after '
              'start-up) the build is tried again at most this often; meanwhile frames keep '
              'their stereo points (the previous grid, or NONE + PRIOR_UNAVAILABLE without one) '
              'and /diagnostics names the source and the error.', 's', 0.0, 3600.0,
              read_only=True),
    ParamSpec('georef.max_camera_above_dem_m', 100.0,
              'WARN on /diagnostics when the camera is more than this above the DEM surface '
              'under it (a wrong altitude, datum or geoid: the priors would come from the wrong '
              'place). A drone or a mast camera needs a larger value.', 'm', 1.0, 100000.0,
              read_only=True),
    ParamSpec('fusion.gate_k', 3.0,
              'Stereo and prior are consistent (FUSED) when |r_stereo - r_prior| <= gate_k * '
              'sqrt(sigma_stereo^2 + sigma_prior^2); otherwise the point stays MEASURED with '
              'PRIOR_CONFLICT.', 'sigma', 0.5, 10.0, read_only=True),
    ParamSpec('fusion.max_prior_relative_sigma', 0.5,
              'A DEM prior whose range sigma exceeds this fraction of its range (grazing rays, '
              'poor pose) is not used: NONE + PRIOR_UNAVAILABLE instead of a PRIOR point.', '',
              0.001, 10.0, read_only=True),
    ParamSpec('pose.source', 'gnss_imu',
              'Where the pose of base_link on the Earth comes from: gnss_imu = sensor_msgs/Imu '
              'on imu/data + sensor_msgs/NavSatFix on gnss/fix (core/pose.py PoseEstimator); '
              'odometry = nav_msgs/Odometry on odom from an existing estimator (e.g. '
              'robot_localization): its header frame is a local ENU frame (x east, y north, '
              'z up) whose origin is the fixed datum georef.datum_* (georef.datum_mode must be '
              'fixed), child_frame_id is base_link, pose.covariance (x, y, z, rotX, rotY, rotZ '
              'about the fixed ENU axes) is the pose covariance.',
              choices=('gnss_imu', 'odometry'), read_only=True),
    ParamSpec('pose.max_gnss_gap_s', 1.0,
              'Largest time between the two GNSS fixes that bracket an image stamp; larger '
              'gaps (NO_FIX, dropouts) give no pose: NONE points get PRIOR_UNAVAILABLE.', 's',
              0.01, 60.0, read_only=True),
    ParamSpec('pose.max_imu_gap_s', 0.1,
              'Largest time between the two IMU samples that bracket an image stamp.', 's',
              0.001, 10.0, read_only=True),
    ParamSpec('pose.wait_s', 0.3,
              'How long a frame waits for the GNSS fix / IMU sample / odometry message after '
              'its stamp (the pose is interpolated, never taken from the latest message).', 's',
              0.0, 10.0, read_only=True),
    ParamSpec('pose.default_gnss_sigma_m', 5.0,
              'Position sigma used for fixes whose covariance type is UNKNOWN (such poses are '
              'POSE_DEGRADED).', 'm', 0.01, 1000.0, read_only=True),
    ParamSpec('pose.tilt_sigma_rad', 0.02,
              'Stated roll/pitch sigma of the gravity+gyro filter used when the IMU gives no '
              'orientation (vehicle accelerations bias it).', 'rad', 0.0001, 1.0, read_only=True),
    ParamSpec('pose.course_min_speed_mps', 1.0,
              'Without IMU orientation the yaw comes from the GNSS course over ground, only '
              'above this speed.', 'm/s', 0.1, 100.0, read_only=True),
    ParamSpec('pose.max_odometry_gap_s', 0.25,
              'pose.source odometry: largest time between the two Odometry messages that '
              'bracket an image stamp (position is interpolated linearly, attitude by slerp); '
              'larger gaps give no pose: NONE points get PRIOR_UNAVAILABLE.', 's', 0.001, 10.0,
              read_only=True),
    ParamSpec('pose.odometry_default_position_sigma_m', 5.0,
              'pose.source odometry: position sigma (each ENU axis) used when the message\'s '
              'position covariance is all zero, non-finite or not positive definite (such '
              'poses are POSE_DEGRADED).', 'm', 0.001, 1000.0, read_only=True),
    ParamSpec('pose.odometry_default_attitude_sigma_rad', 0.05,
              'pose.source odometry: attitude sigma (about each ENU axis) used when the '
              'message\'s orientation covariance is all zero, non-finite or not positive '
              'definite (such poses are POSE_DEGRADED).', 'rad', 0.0001, 3.2, read_only=True),
    ParamSpec('pose.imu_default_orientation_sigma_rad', 0.02,
              'Orientation sigma (each axis) used for a sensor_msgs/Imu orientation whose '
              'covariance is unknown (all zero, non-finite or a variance <= 0; counted as '
              'pose_input.imu_unknown_cov).', 'rad', 0.0001, 3.2, read_only=True),
    ParamSpec('pose.imu_unknown_covariance_degrades', True,
              'Poses from an IMU orientation with an unknown covariance are POSE_DEGRADED '
              '(sensor_msgs/Imu: all zero = unknown). False: you vouch for '
              'pose.imu_default_orientation_sigma_rad for this IMU, and such poses are not '
              'degraded.', read_only=True),
    # outlier gate on GNSS fixes and odometry positions (core/pose.py)
    ParamSpec('pose.gate_chi2', 16.27,
              'Outlier gate: a GNSS fix (or odometry position) is rejected when its squared '
              'Mahalanobis distance from the constant-velocity prediction of the recent '
              'trajectory exceeds this (3 degrees of freedom; 16.27 = 99.9 %, 11.34 = 99 %). '
              'Rejected inputs are counted (pose_input.gnss_rejected / odometry_rejected), '
              'never used for a pose, and poses near them are POSE_DEGRADED.', '', 1.0, 1e6,
              read_only=True),
    ParamSpec('pose.gate_accel_mps2', 3.0,
              'Outlier gate: acceleration taken as the 1-sigma process noise of the prediction '
              '(accelerations up to about sqrt(gate_chi2) times this pass).', 'm/s^2', 0.1,
              100.0, read_only=True),
    ParamSpec('pose.gate_jitter_m', 0.3,
              'Outlier gate: 1-sigma position jump per input (each axis) that is always '
              'tolerated, whatever the time step (RTK fix/float switches, estimator '
              'corrections).', 'm', 0.0, 100.0, read_only=True),
    ParamSpec('pose.gate_window_s', 1.0,
              'Outlier gate: time baseline of the velocity of the prediction.', 's', 0.1, 10.0,
              read_only=True),
    ParamSpec('pose.gate_max_speed_mps', 100.0,
              'Outlier gate: highest plausible speed (implied by an input beyond 3 sigma of '
              'the jump; also the velocity sigma while the velocity is unknown).', 'm/s', 1.0,
              1e4, read_only=True),
    ParamSpec('pose.gate_min_alt_m', -500.0,
              'Outlier gate: lowest plausible height above the WGS84 ellipsoid (also of '
              'odometry positions, through the datum).', 'm', -1e4, 1e4, read_only=True),
    ParamSpec('pose.gate_max_alt_m', 10000.0,
              'Outlier gate: highest plausible height above the WGS84 ellipsoid; must exceed '
              'pose.gate_min_alt_m.', 'm', 0.0, 1e6, read_only=True),
    ParamSpec('pose.gate_reset_count', 5,
              'Outlier gate: this many rejected inputs in a row that agree with each other '
              're-initialise the gate on them (the robot was moved, the GNSS re-converged); '
              'counted as pose_input.gate_resets, poses across it are POSE_DEGRADED.', '', 2,
              1000, read_only=True),
    ParamSpec('pose.gate_reset_s', 10.0,
              'Outlier gate: after this long without an accepted input the next rejected one '
              're-initialises the gate.', 's', 0.1, 3600.0, read_only=True),
    ParamSpec('pose.gate_degraded_s', 1.0,
              'Outlier gate: poses up to this long after a rejected input are POSE_DEGRADED.',
              's', 0.0, 60.0, read_only=True),
    ParamSpec('pose.odometry_gate_max_rate_radps', 5.0,
              'Outlier gate, pose.source odometry: highest plausible rotation rate between two '
              'odometry messages (beyond 3 sigma of their attitudes).', 'rad/s', 0.1, 100.0,
              read_only=True),
    ParamSpec('output.frame', 'camera',
              'Frame of x, y, z in ~/points: camera = the left camera optical frame (the image '
              'header frame); enu = the local ENU frame at the datum (needs DEM sources and a '
              'pose; a frame without a pose is published in the camera frame, its header says '
              'so). The depth images always stay in the camera frame.',
              choices=('camera', 'enu'), read_only=True),
    ParamSpec('output.enu_frame_id', 'map',
              'frame_id written into ~/points when output.frame is enu (REP-105: a world-fixed '
              'frame; its origin is the ENU datum published in the legend).', read_only=True),
    ParamSpec('diagnostics_period_s', 1.0,
              'Period of the DiagnosticArray on /diagnostics.', 's', 0.1, 60.0,
              read_only=True),
    ParamSpec('input_error_throttle_s', 5.0,
              'At most one log line per this period for each kind of bad input.', 's',
              0.0, 3600.0),
)

PARAMS_BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}


def defaults() -> dict[str, ParamValue]:
    """All parameters at their defaults, flat dotted names."""
    return {p.name: p.default for p in PARAMETERS}


def validate_params(values: Mapping[str, Any], *, allow_unknown: Iterable[str] = ()) -> dict[str, ParamValue]:
    """Return defaults overridden by ``values`` (dotted names), each validated.

    Raises:
        ValueError: on an unknown name (a typo must not be silently ignored) or a bad value.
    """
    out = defaults()
    allowed = set(allow_unknown)
    source_keys: dict[str, Any] = {}
    for name, value in values.items():
        spec = PARAMS_BY_NAME.get(name)
        if spec is None:
            if name.startswith(DEM_SOURCE_PREFIX):
                source_keys[name] = value
                continue
            if name in allowed:
                continue
            raise ValueError(f'unknown parameter {name!r}')
        out[name] = spec.validate(value)
    names = dem_source_names(out['dem.sources'])
    for key in source_keys:
        src = key[len(DEM_SOURCE_PREFIX):].split('.', 1)[0]
        if src not in names:
            raise ValueError(f'parameter {key!r} belongs to DEM source {src!r}, which is not '
                             f'listed in dem.sources ({out["dem.sources"]!r})')
    if names:
        from .dem import parse_dem_sources  # validates every dem.source.<name>.* field

        parse_dem_sources({'dem.sources': names, **source_keys})
    out.update(source_keys)
    if out['dem.max_range_m'] > out['dem.grid_half_extent_m'] - out['dem.grid_retile_margin_m']:
        raise ValueError(f'parameter dem.max_range_m ({out["dem.max_range_m"]}) must not exceed '
                         f'dem.grid_half_extent_m - dem.grid_retile_margin_m '
                         f'({out["dem.grid_half_extent_m"] - out["dem.grid_retile_margin_m"]})')
    if out['pose.source'] == 'odometry' and out['georef.datum_mode'] != 'fixed':
        raise ValueError(f'parameter pose.source is odometry: georef.datum_mode must be fixed '
                         f'(the Odometry header frame is a local ENU frame whose origin is '
                         f'georef.datum_latitude_deg/longitude_deg/height_m), got '
                         f'{out["georef.datum_mode"]!r}')
    if out['pose.gate_max_alt_m'] <= out['pose.gate_min_alt_m']:
        raise ValueError(f'parameter pose.gate_max_alt_m ({out["pose.gate_max_alt_m"]}) must '
                         f'exceed pose.gate_min_alt_m ({out["pose.gate_min_alt_m"]})')
    _check_stereo(out)
    if names:  # no height grid without DEM sources
        _check_grid(out, len(names))
    return out


def _check_stereo(out: Mapping[str, Any]) -> None:
    """Raise ValueError for ``stereo.*`` combinations the matchers cannot run."""
    from .stereo import sgbm_penalties  # the OpenCV SGBM limits live with the matcher

    if out['stereo.matcher'] != 'sgm_torch':  # OpenCV's 16-bit costs ('auto' may pick it)
        sgbm_penalties(out['stereo.block_size'], out['stereo.p1'], out['stereo.p2'],
                       out['stereo.pre_filter_cap'])
    elif out['stereo.p1'] and out['stereo.p2'] and out['stereo.p2'] <= out['stereo.p1']:
        raise ValueError(f'parameter stereo.p2 ({out["stereo.p2"]}) must exceed stereo.p1 '
                         f'({out["stereo.p1"]})')
    nd = out['stereo.num_disparities']
    if out['stereo.matcher'] == 'sgm_torch' and nd > _SGM_TORCH_MAX_DISPARITIES:
        raise ValueError(f'parameter stereo.num_disparities ({nd}) must be <= '
                         f'{_SGM_TORCH_MAX_DISPARITIES} with stereo.matcher sgm_torch')


def grid_memory_mb(cell_m: float, half_extent_m: float, n_sources: int = 1) -> float:
    """Host memory (MB, 1e6 bytes) the DEM height grid needs while it is built.

    Args:
        cell_m: dem.grid_cell_m, metres (> 0).
        half_extent_m: dem.grid_half_extent_m, metres.
        n_sources: number of DEM sources (each adds work arrays per node).

    Returns:
        (2 * round(half_extent_m / cell_m) + 1)^2 nodes (as core/dem.py LocalHeightGrid) times
        the measured bytes per node (_GRID_BYTES_PER_NODE + _GRID_BYTES_PER_SOURCE per source).
    """
    n = 2 * int(round(half_extent_m / cell_m)) + 1
    return n * n * (_GRID_BYTES_PER_NODE + _GRID_BYTES_PER_SOURCE * max(1, n_sources)) / 1e6


def _check_grid(out: Mapping[str, Any], n_sources: int) -> None:
    """Raise ValueError for a height grid that cannot be built (too small or over budget)."""
    cell, half = out['dem.grid_cell_m'], out['dem.grid_half_extent_m']
    if half < cell:
        raise ValueError(f'parameter dem.grid_half_extent_m ({half}) must be >= '
                         f'dem.grid_cell_m ({cell})')
    mb = grid_memory_mb(cell, half, n_sources)
    budget = out['dem.max_grid_memory_mb']
    if mb > budget:
        n = 2 * int(round(half / cell)) + 1
        raise ValueError(f'parameters dem.grid_cell_m {cell} and dem.grid_half_extent_m {half} '
                         f'make a {n} x {n} height grid that needs about {mb:,.0f} MB while it is '
                         f'built ({max(1, n_sources)} DEM source(s)), more than '
                         f'dem.max_grid_memory_mb {budget} MB: use larger cells, a smaller '
                         f'extent, or raise the budget')


def flatten(tree: Mapping[str, Any], prefix: str = '', _seen: tuple[int, ...] = ()
            ) -> dict[str, Any]:
    """Flatten a nested mapping into dotted names (as ROS does with YAML parameters).

    Raises:
        ValueError: a mapping that contains itself (YAML anchors can make one).
    """
    if id(tree) in _seen:
        raise ValueError(f'parameter {prefix.rstrip(".")!r} contains itself (a recursive YAML '
                         'anchor)')
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + '.', (*_seen, id(tree))))
        else:
            flat[name] = value
    return flat


ROS_ONLY_PARAMS = frozenset({'use_sim_time', 'start_type_description_service'})
#: the params-file key of the node's section: the node name in any namespace (a plain
#: ``geo_depth_node:`` key matches only ``/geo_depth_node``, so a launch with a namespace
#: would silently get the defaults)
PARAMS_FILE_KEY = '/**/geo_depth_node'

#: Per-source parameters (dynamic names): dem.source.<name>.<field>, see core/dem.py.
DEM_SOURCE_PREFIX = 'dem.source.'


def dem_source_names(text: str) -> list[str]:
    """'srtm, lidar' -> ['srtm', 'lidar'] (the value of dem.sources)."""
    return [n.strip() for n in str(text).split(',') if n.strip()]


def load_params_yaml(path: str, node_name: str = 'geo_depth_node') -> dict[str, ParamValue]:
    """Read a ROS 2 params file (``node: ros__parameters: ...``) into validated values.

    Accepts the node name, ``/**`` or any ``/ns/node`` key ending in ``node_name``.

    Raises:
        ValueError: if the file has no section for the node or holds unknown/bad values.
    """
    import yaml

    try:
        with open(path, encoding='utf-8') as f:
            doc = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f'{path}: not a readable YAML params file: {exc}') from exc
    if not isinstance(doc, Mapping):
        raise ValueError(f'{path}: a params file is a mapping of node names, got '
                         f'{type(doc).__name__}')
    section = None
    for key, value in doc.items():
        if key in (node_name, '/**') or str(key).rstrip('/').endswith('/' + node_name):
            if isinstance(value, Mapping) and 'ros__parameters' in value:
                section = value['ros__parameters']
                break
    if section is None:
        raise ValueError(f'{path}: no "{node_name}: ros__parameters:" section')
    if not isinstance(section, Mapping):
        raise ValueError(f'{path}: ros__parameters must be a mapping of names to values, got '
                         f'{section!r}')
    flat = flatten(section)
    _LOG.debug('loaded %d parameters from %s', len(flat), path)
    return validate_params(flat, allow_unknown=ROS_ONLY_PARAMS)
