"""The per-frame depth pipeline shared by the live node and the offline tools.

``DepthPipeline.process`` takes decoded images and the two camera models and
returns a :class:`FrameResult`: depth, sigma, provenance, flags and points for
every pixel of the left image. ROS-free.

Uncertainty model (documented in README, calibrated in a later issue):
    sigma_d^2 = sigma.disparity_px^2 + (sigma.lr_gain * |d_left - d_right|)^2      [px]
    sigma_Z   = Z^2 / (f * B) * sigma_d                                            [m]
    sigma_r   = sigma_Z * |ray|,  ray = ((u-cx)/fx, (v-cy)/fy, 1)                   [m]
    sigma_r / r = sigma_Z / Z = sigma_d / (d - delta_cx)

Physical limit: a stereo point is MEASURED only if sigma_r / r <= limit.max_relative_sigma
and (when limit.max_sigma_m > 0) sigma_r <= limit.max_sigma_m; otherwise it is NONE
with BEYOND_RESOLUTION.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from typing import Any, Mapping

import numpy as np

from .camera import CameraModel, Rectifier, StereoModel, ray_norms
from .contract import POINT_DTYPE, Flag, Provenance
from .images import RowBands, Workspace, alloc_arrays
from .params import ROS_ONLY_PARAMS, dem_source_names, validate_params
from .stereo import MatcherConfig, OpenCVStereoMatcher

_LOG = logging.getLogger(__name__)
#: why the compiled triangulation (core.triangulate_numba) failed in this process, if it did
_TAIL_BROKEN: list[str] = []

# _triangulate writes the MEASURED mask (bool) straight into the provenance image.
if (int(Provenance.NONE), int(Provenance.MEASURED)) != (0, 1):
    raise ImportError('pipeline._triangulate assumes Provenance NONE = 0 and MEASURED = 1')
# cv2.LUT tables (256 entries, indexed by uint8 codes) used by DepthPipeline._triangulate.
_NAN_OR_ONE = np.full(256, np.nan, np.float32)  # bool MEASURED -> factor NaN / 1
_NAN_OR_ONE[1] = 1.0
# code = MEASURED | BEYOND_RESOLUTION << 1 | TOO_CLOSE << 2 -> fill value of the depth image
# (MEASURED pixels get -inf, which fmax replaces by their finite depth)
_DEPTH_FILL = np.full(256, np.nan, np.float32)
_DEPTH_FILL[1] = -np.inf
_DEPTH_FILL[2] = np.inf
_DEPTH_FILL[4:8] = -np.inf


@dataclasses.dataclass
class FrameResult:
    """Everything the pipeline knows about one frame; arrays are (H, W) of the left image.

    Attributes:
        depth: float32 Z in metres along the rectified optical axis (REP-117: +inf beyond
            resolution, -inf too close, NaN no measurement).
        depth_sigma: float32 1-sigma of ``depth`` in metres, finite exactly where depth is.
        points: (H, W, 3) float32 x, y, z in metres in the output frame, NaN for NONE.
        sigma: float32 1-sigma of the range along the viewing ray, metres, NaN for NONE.
        provenance: uint8 Provenance.
        flags: uint16 Flag bits.
        source: uint16 prior source id (0 = none).
        disparity: float32 matched disparity, px (NaN where unmatched); diagnostic.
        sigma_disparity: float32 sigma_d, px (NaN where unmatched); diagnostic.
        timings_ms: stage -> milliseconds for this frame.
        pose_status: 'ok', 'off' (no DEM sources) or why there was no pose (no prior then).
        pose_degraded: the pose behind the priors was degraded (POSE_DEGRADED on them).
        prior_counts: fused / prior / conflict / measured pixel counts of the fusion.
        T_enu_cam: (4, 4) pose of the left optical frame in the local ENU frame, or None.
        georef_stats: with a pose and DEM sources: 'camera_above_dem_m', the ENU height of the
            camera centre above the DEM surface under it (NaN over nodata),
            'dem_vertical_shift_m', the sigma points' vertical shift sqrt(sigma_v^2 + P_zz)
            there, metres, and 'dem_data_under_camera', 1.0 / 0.0 whether the DEM has data
            under the camera (:meth:`GeoPrior.camera_clearance`), and 'grid_builds' (height
            grids built and taken into use; re-tiles are built in the background); {} while
            there is no height grid. All
            values are floats (the node and replay publish them as ``georef.*``).
        prior_problem: why this frame has no or fewer DEM priors than it should although it
            has a pose: '' when the DEM stage ran normally; else one line, parts joined by
            '; ': a failed height-grid (re)build naming the source, the file and the error
            and what the frame used instead ("DEM source 'srtm': cannot read /x.tif: ...;
            no height grid: stereo only, retrying every 5 s": the frame keeps its stereo
            points, NONE points get PRIOR_UNAVAILABLE; or "...; using the previous height
            grid, ..."), and/or 'DEM has no data under the camera ...' when the DEM has a
            hole (nodata) under the camera or the camera is outside the grid. Frames without a
            pose leave it '' (``pose_status`` says why). Meant for /diagnostics (a WARN).
    """

    depth: np.ndarray
    depth_sigma: np.ndarray
    points: np.ndarray
    sigma: np.ndarray
    provenance: np.ndarray
    flags: np.ndarray
    source: np.ndarray
    disparity: np.ndarray
    sigma_disparity: np.ndarray
    timings_ms: dict[str, float]
    pose_status: str = 'off'
    pose_degraded: bool = False
    prior_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    T_enu_cam: np.ndarray | None = None
    # (H, W) POINT_DTYPE cloud already packed (device path, compiled host triangulation);
    # whoever replaces the arrays above sets it to None
    packed: np.ndarray | None = None
    output_frame: str = 'camera'  # frame of ``points``: 'camera' or 'enu'
    georef_stats: dict[str, float] = dataclasses.field(default_factory=dict)
    prior_problem: str = ''

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return self.depth.shape

    def class_fractions(self) -> dict[str, float]:
        """Fraction of pixels in each provenance class."""
        n = max(1, self.provenance.size)
        counts = np.bincount(self.provenance.reshape(-1), minlength=len(Provenance))
        return {p.name: float(counts[int(p)]) / n for p in Provenance}

    def flag_counts(self) -> dict[str, int]:
        """Number of pixels carrying each flag."""
        f = self.flags.reshape(-1)
        return {fl.name: int(np.count_nonzero(f & np.uint16(fl))) for fl in Flag}


def points_to_enu(T_enu_cam: np.ndarray, model: CameraModel,
                  params: Mapping[str, Any]) -> np.ndarray:
    """(4, 4) transform of the cloud's camera-frame points into ENU: ``T_enu_cam`` (the pose of
    the left optical frame) when the points are in the optical frame
    (``output.unrectify_points``), else ``T_enu_cam`` composed with R^T (the points are in the
    rectified frame: p_cam = R^T p_rect, R the left camera's rectification)."""
    T = np.asarray(T_enu_cam, dtype=np.float64)
    if bool(params['output.unrectify_points']):
        return T
    rect = np.eye(4)
    rect[:3, :3] = np.asarray(model.R, dtype=np.float64).T
    return T @ rect


def resolve_matcher(matcher: str, device: str) -> tuple[str, str]:
    """('auto'|'sgm_torch'|'opencv_sgbm', 'auto'|'cpu'|'cuda') -> (matcher, torch device).

    auto picks sgm_torch on CUDA and opencv_sgbm otherwise (``device`` is 'cpu' for OpenCV).

    Raises:
        ValueError: an unknown name, or cuda requested where torch sees no CUDA device.
    """
    if matcher not in ('auto', 'sgm_torch', 'opencv_sgbm'):
        raise ValueError(f'unknown stereo.matcher {matcher!r}')
    if device not in ('auto', 'cpu', 'cuda'):
        raise ValueError(f'unknown stereo.device {device!r}')
    cuda = False
    if matcher != 'opencv_sgbm' and device != 'cpu':
        import torch

        cuda = torch.cuda.is_available()
        if device == 'cuda' and not cuda:
            raise ValueError('stereo.device is cuda but torch sees no CUDA device')
    if matcher == 'auto':
        matcher = 'sgm_torch' if cuda else 'opencv_sgbm'
    if matcher == 'opencv_sgbm':
        return matcher, 'cpu'
    return matcher, 'cuda' if cuda else 'cpu'


class DepthPipeline:
    """Rectify (optional) -> match -> triangulate -> classify, for one stereo pair at a time.

    Args:
        params: parameter values (dotted names, see core/params.py); missing ones take
            their defaults, unknown ones raise ValueError.
    """

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params = validate_params(dict(params or {}), allow_unknown=ROS_ONLY_PARAMS)
        self.matcher_config = MatcherConfig.from_params(self.params)
        self.matcher_name, self.device = resolve_matcher(self.params['stereo.matcher'],
                                                         self.params['stereo.device'])
        if self.matcher_name == 'sgm_torch':
            from .sgm import SGMConfig, TorchSGMMatcher

            self.matcher = TorchSGMMatcher(
                SGMConfig.from_params(self.params, paths=int(self.params['stereo.paths'])),
                device=self.device)
        else:
            self.matcher = OpenCVStereoMatcher(self.matcher_config)
        # torch matcher: keep the frame on the device (core/torch_frame.py)
        self.device_path = self.matcher_name == 'sgm_torch'
        self._device_path = None  # core.device_path.DeviceFramePath, made on first use
        self.sigma_model = None
        if self.params['sigma.model'] == 'calibrated':
            from .sigma_model import SigmaModel, variant_for

            self.sigma_model = SigmaModel.for_matcher(
                self.matcher_name, variant_for(self.matcher_name, self.params))
        self.georef = _Georef(self.params) if dem_source_names(self.params['dem.sources']) \
            else None
        self._rect_left = Rectifier()
        self._rect_right = Rectifier()
        self._grid_cache: tuple[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        self._ws = Workspace()  # temporaries of the host path (one frame at a time)
        # host path: triangulation + packing in one compiled pass (core.triangulate_numba)
        # when numba is installed, else numpy passes + cloud.pack_points; tests set either
        from .triangulate_numba import numba_available

        self.frame_tail = 'numba' if numba_available() and not _TAIL_BROKEN else 'numpy'
        self._bands = RowBands()  # per-pixel passes over row bands on the CPU cores

    @property
    def sigma_d0(self) -> float:
        """sigma_d floor in pixels."""
        return float(self.params['sigma.disparity_px'])

    def _grids(self, model: CameraModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-calibration pixel grids of the rectified left camera, cached: (H, W) |ray|,
        (1, W) (u - cx) / fx and (H, 1) (v - cy) / fy, float32."""
        key = (model.width, model.height, model.fx, model.fy, model.cx, model.cy)
        if self._grid_cache is None or self._grid_cache[0] != key:
            u = (np.arange(model.width, dtype=np.float32) - np.float32(model.cx)) \
                / np.float32(model.fx)
            v = (np.arange(model.height, dtype=np.float32) - np.float32(model.cy)) \
                / np.float32(model.fy)
            self._grid_cache = (key, (ray_norms(model), u[None, :], v[:, None]))
        return self._grid_cache[1]

    def process(self, left: np.ndarray, right: np.ndarray, left_model: CameraModel,
                right_model: CameraModel, *, rectify: bool = False,
                stamp_ns: int | None = None, wait_s: float = 0.0) -> FrameResult:
        """Run the pipeline on one pair.

        With DEM sources on the host path the pose lookup and the prior's cast
        (:meth:`_Georef.prepare`) run in one worker thread beside the matching, sigma and
        triangulation (they need only the stamp); the frame then waits for them
        (``timings_ms['dem_wait']``) and fuses. Their own timings overlap the stereo's.

        Args:
            left, right: (H, W) uint8 grey images (raw if ``rectify`` else rectified).
            left_model, right_model: the cameras (from CameraInfo).
            rectify: rectify raw inputs with the models' K, D, R, P first.
            stamp_ns: the frame's stamp; needed when DEM sources are configured (the pose is
                interpolated at it from the buffered IMU/GNSS).
            wait_s: how long to wait for IMU/GNSS data newer than the stamp (live node).

        Raises:
            ValueError: bad shapes / dtypes, or camera models that are not a rectified pair.
        """
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        stereo = StereoModel.from_cameras(left_model, right_model)
        for name, img, m in (('left', left, left_model), ('right', right, right_model)):
            if img.ndim != 2 or img.dtype != np.uint8:
                raise ValueError(f'{name} image must be (H, W) uint8, got {img.shape} {img.dtype}')
            if img.shape != (m.height, m.width):
                raise ValueError(f'{name} image is {img.shape[1]}x{img.shape[0]} but its '
                                 f'CameraInfo says {m.width}x{m.height}')
        left_valid = right_valid = None
        if rectify:
            t = time.perf_counter()
            left, left_valid = self._rect_left.rectify(left, left_model)
            right, right_valid = self._rect_right.rectify(right, right_model)
            timings['rectify'] = (time.perf_counter() - t) * 1e3

        if self.device_path:
            meta: dict[str, Any] = {}
            georef = None
            if self.georef is not None:
                if stamp_ns is None:
                    raise ValueError('DEM priors are configured: process() needs the frame '
                                     'stamp_ns')

                def georef(frame: dict[str, Any]) -> None:  # fused on the device
                    meta.update(self.georef.apply_device(frame, stamp_ns, left_model,
                                                         self.params, wait_s, stereo, timings))

            result = self._process_on_device(left, right, left_valid, right_valid, stereo,
                                             timings, georef)
            for name, value in meta.items():
                setattr(result, name, value)
            timings['total'] = (time.perf_counter() - t_start) * 1e3
            return result

        prepared = None
        if self.georef is not None:
            if stamp_ns is None:
                raise ValueError('DEM priors are configured: process() needs the frame stamp_ns')
            # the pose and the prior's cast need no stereo: they run beside the matcher
            prepared = self._prior_pool().submit(self.georef.prepare, stamp_ns, left_model,
                                                 self.params, wait_s)
        try:
            m = self.matcher.match(left, right, left_valid, right_valid)
            timings.update(m.timings_ms)
            out = self._alloc_outputs(m.disparity.shape)
            sigma_d = None
            if self.sigma_model is not None:
                t = time.perf_counter()
                sigma_d = self.sigma_model.sigma_d(m.features, m.disparity,
                                                   out=out['sigma_disparity'],
                                                   workspace=self._ws, bands=self._bands)
                timings['sigma'] = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            result = self._triangulate(m.disparity, m.lr_diff, m.flags, stereo, sigma_d, out)
            timings['triangulate'] = (time.perf_counter() - t) * 1e3
        except BaseException:
            if prepared is not None:  # a frame ends with its cast: the next one reuses them
                concurrent.futures.wait([prepared])
            raise
        result.timings_ms = timings
        if prepared is not None:
            t = time.perf_counter()
            ready = prepared.result()  # raises what the cast raised
            timings['dem_wait'] = (time.perf_counter() - t) * 1e3
            self.georef.apply(result, ready, left_model, self.params, stereo)
            self._to_enu(result, left_model)
        timings['total'] = (time.perf_counter() - t_start) * 1e3
        return result

    def _to_enu(self, result: FrameResult, model: CameraModel) -> None:
        """output.frame enu: move the points into the local ENU frame with the frame's pose."""
        if self.params['output.frame'] != 'enu' or result.T_enu_cam is None:
            return
        T = points_to_enu(result.T_enu_cam, model, self.params)
        pts = result.points.reshape(-1, 3).astype(np.float64) @ T[:3, :3].T + T[:3, 3]
        result.points = pts.astype(np.float32).reshape(result.points.shape)
        result.output_frame = 'enu'
        result.packed = None

    # -- georeferencing inputs (thread-safe; no-ops without DEM sources) -----------------
    # An input the configured pose.source does not use is ignored and counted in
    # ``georef.pose.counts['<kind>_ignored']``.
    def add_imu(self, sample) -> None:
        """Buffer a core.pose.ImuSample (sensor_msgs/Imu; pose.source gnss_imu)."""
        if self.georef is not None:
            self.georef.add(sample, 'imu')

    def add_gnss(self, fix) -> None:
        """Buffer a core.pose.GnssFix (sensor_msgs/NavSatFix; pose.source gnss_imu)."""
        if self.georef is not None:
            self.georef.add(fix, 'gnss')

    def add_odometry(self, sample) -> None:
        """Buffer a core.pose.OdometrySample (nav_msgs/Odometry; pose.source odometry)."""
        if self.georef is not None:
            self.georef.add(sample, 'odometry')

    #: pose message kinds: kind -> (converter in core.pose, message name)
    POSE_MESSAGES = {'imu': ('imu_sample_from_msg', 'Imu'),
                     'gnss': ('gnss_fix_from_msg', 'NavSatFix'),
                     'odometry': ('odometry_sample_from_msg', 'Odometry')}

    def add_pose_message(self, kind: str, msg: Any) -> tuple[str, str] | None:
        """Convert one sensor_msgs/Imu ('imu'), sensor_msgs/NavSatFix ('gnss') or
        nav_msgs/Odometry ('odometry') message (rclpy or rosbags; duck-typed) and buffer it for
        the pose: the one rule the node and replay share for pose inputs.

        Returns:
            None when buffered (the pose source may still count it as out of order, rejected
            or ignored: ``georef.pose.counts``), else ``(problem kind, text)`` of an input
            problem: ``bad_<kind>`` for a message the converter refuses, ``zero_stamp`` for a
            stamp <= 0.

        Raises:
            ValueError: an unknown ``kind``.
        """
        from . import pose

        if kind not in self.POSE_MESSAGES:
            raise ValueError(f'unknown pose message kind {kind!r}; expected one of '
                             f'{sorted(self.POSE_MESSAGES)}')
        convert, name = self.POSE_MESSAGES[kind]
        try:
            sample = getattr(pose, convert)(msg)
        except (ValueError, TypeError, OverflowError, AttributeError) as exc:
            return f'bad_{kind}', f'{name} ignored: {exc}'
        if sample.stamp_ns <= 0:
            return 'zero_stamp', f'{name}: message with a zero stamp ignored'
        getattr(self, f'add_{kind}')(sample)
        return None

    def _process_on_device(self, left: np.ndarray, right: np.ndarray, left_valid, right_valid,
                           stereo: StereoModel, timings: dict[str, float],
                           georef: Any = None) -> FrameResult:
        """The torch frame path (core/device_path.py): ONE host->device copy of the images,
        matching, the calibrated sigma, triangulation and packing on the device (replayed as a
        CUDA graph on CUDA), and ONE device->host copy of a single buffer holding the packed
        cloud and the depth / sigma / disparity images."""
        if self._device_path is None:
            from .device_path import DeviceFramePath

            self._device_path = DeviceFramePath(self.params, self.matcher, self.sigma_model,
                                                use_graph=bool(self.params['stereo.cuda_graph']))
        v = self._device_path.run(left, right, left_valid, right_valid, stereo, timings,
                                  time.perf_counter, georef)
        cloud = v['cloud']
        result = FrameResult(
            depth=v['depth'], depth_sigma=v['depth_sigma'], points=v['points'],
            sigma=cloud['sigma'], provenance=cloud['provenance'], flags=cloud['flags'],
            source=cloud['source'], disparity=v['disparity'],
            sigma_disparity=v['sigma_disparity'], timings_ms=timings)
        result.packed = cloud
        return result

    def _prior_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """The one worker thread that runs a frame's pose lookup and prior cast while its
        stereo matches (made on first use; a frame waits for its own cast before fusing)."""
        pool = self.__dict__.get('_pool')
        if pool is None:
            import weakref

            pool = self.__dict__['_pool'] = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix='geo-depth-prior')
            # a pipeline replaced at run time (a parameter change) takes its thread with it
            weakref.finalize(self, pool.shutdown, wait=False)
        return pool

    def _alloc_outputs(self, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """Fresh (H, W) output arrays of one frame, carved out of one allocation
        (core.images.alloc_arrays): sigma_disparity, depth, depth_sigma, sigma float32,
        points (H, W, 3) float32, provenance uint8, flags, source uint16.

        For the compiled triangulation (``frame_tail == 'numba'``) the allocation holds the
        packed cloud ('cloud', (H, W) POINT_DTYPE) instead, and points, sigma, provenance,
        flags and source are views of its fields (as on the device path)."""
        f32 = np.float32
        if self.frame_tail == 'numba':
            cloud, sd, depth, depth_sigma = alloc_arrays([(shape, POINT_DTYPE)] + [(shape, f32)] * 3)
            h, w = shape
            points = np.ndarray((h, w, 3), dtype=f32, buffer=cloud,
                                strides=(w * POINT_DTYPE.itemsize, POINT_DTYPE.itemsize, 4))
            return {'cloud': cloud, 'sigma_disparity': sd, 'depth': depth,
                    'depth_sigma': depth_sigma, 'sigma': cloud['sigma'], 'points': points,
                    'provenance': cloud['provenance'], 'flags': cloud['flags'],
                    'source': cloud['source']}
        names = ('sigma_disparity', 'depth', 'depth_sigma', 'sigma', 'points', 'provenance',
                 'flags', 'source')
        specs = [(shape, f32)] * 4 + [((*shape, 3), f32), (shape, np.uint8), (shape, np.uint16),
                                      (shape, np.uint16)]
        return dict(zip(names, alloc_arrays(specs), strict=True))

    def warm_up(self) -> dict[str, float]:
        """Make the compiled kernels this pipeline will run ready now, so that the first frame
        does not pay for them: numba loads them from its disk cache (~1 s) or compiles them
        (seconds, on the first run after an install); Triton compiles on first use. A kernel
        that fails here falls back as it would on a frame (logged once).

        Returns:
            kernel -> seconds ('stereo' for the device frame path of ``sgm_torch``;
            'triangulation' when the host path triangulates with numba;
            'dem_raycast' with DEM sources, a tiny cast with ``dem.raycast_march``, whichever
            march that is; 'dem_prior_cast' and 'dem_fusion' for the CPU prior cast and
            fusion of the host path); empty if there is none.

        Raises:
            ValueError: ``dem.raycast_march`` forced to a march that cannot run on
                ``dem.device``. A march forced by name that fails to build re-raises its
                error (as it would on the first frame).
        """
        took: dict[str, float] = {}
        if self.device_path:
            t = time.perf_counter()
            try:
                self._warm_up_device()
            except Exception as exc:  # noqa: BLE001 - the first frame will say it, with context
                _LOG.warning('warming up the device frame path failed (%r); the first frame '
                             'compiles what it needs', exc)
            else:
                took['stereo'] = time.perf_counter() - t
        if not self.device_path and self.frame_tail == 'numba':
            from .triangulate_numba import TriangulateInputError, warm_up

            try:
                took['triangulation'] = warm_up()
            except Exception as exc:  # noqa: BLE001 - as on a frame: numpy from now on
                if isinstance(exc, TriangulateInputError):
                    raise
                self._tail_failed(exc)
        if self.georef is not None:
            from .raycast import warm_up

            took['dem_raycast'] = warm_up(self.params['dem.device'],
                                          str(self.params['dem.raycast_march']))
            from .raycast import resolve_device

            if resolve_device(self.params['dem.device']).type == 'cpu' \
                    and not self.device_path:
                from . import fusion_numba, prior_lattice

                for name, run in (('dem_prior_cast', prior_lattice.warm_up),
                                  ('dem_fusion', lambda: fusion_numba.warm_up(
                                      self._alloc_outputs))):
                    try:
                        took[name] = run()
                    except Exception as exc:  # noqa: BLE001 - the frame compiles or falls back
                        _LOG.warning('warming up %s failed (%r); the first frame compiles it',
                                     name, exc)
        return took

    def _warm_up_device(self) -> None:
        """One eager pass of the device frame body (matching, sigma, triangulation, packing) on
        a small textured pair with this pipeline's disparity range: on CUDA the Triton kernels
        are compiled for it (their specialisations do not depend on the image size, which
        is a multiple of 16 here as in common camera sizes); the CUDA graph of the real size
        is captured on the first frame."""
        import torch

        from .device_path import DeviceFramePath

        if self._device_path is None:
            self._device_path = DeviceFramePath(self.params, self.matcher, self.sigma_model,
                                                use_graph=bool(self.params['stereo.cuda_graph']))
        n_disp = int(self.params['stereo.num_disparities'])
        w, h = (n_disp + 64 + 15) // 16 * 16, 32
        rng = np.random.default_rng(0)
        ext = rng.integers(0, 256, (h, w + 8), dtype=np.uint8)
        left = np.ascontiguousarray(ext[:, :w])
        right = np.ascontiguousarray(ext[:, 8:])  # left[x] = right[x - 8]: disparity 8 px
        f, b = 100.0, 0.1
        k = [f, 0.0, w / 2, 0.0, f, h / 2, 0.0, 0.0, 1.0]
        lm = CameraModel.from_arrays(w, h, k, np.zeros(5), np.eye(3),
                                     [f, 0.0, w / 2, 0.0, 0.0, f, h / 2, 0.0, 0.0, 0.0, 1.0, 0.0])
        rm = CameraModel.from_arrays(w, h, k, np.zeros(5), np.eye(3),
                                     [f, 0.0, w / 2, -f * b, 0.0, f, h / 2, 0.0, 0.0, 0.0, 1.0,
                                      0.0])
        inputs = torch.from_numpy(np.stack([left, right])).to(self._device_path.device)
        self._device_path.body(inputs, StereoModel.from_cameras(lm, rm))
        if self._device_path.cuda:
            torch.cuda.synchronize(self._device_path.device)

    def _tail_failed(self, exc: BaseException) -> None:
        """The compiled triangulation cannot run here: numpy passes from now on (logged)."""
        _TAIL_BROKEN.append(repr(exc))
        self.frame_tail = 'numpy'
        _LOG.warning('numba triangulation failed (%r); using the numpy passes from now on', exc)

    def _triangulate_numba(self, disparity: np.ndarray, lr_diff: np.ndarray,
                           match_flags: np.ndarray, stereo: StereoModel,
                           sigma_d: np.ndarray | None, out: dict[str, np.ndarray]
                           ) -> FrameResult | None:
        """:meth:`_triangulate` in one compiled pass that also packs the cloud
        (core.triangulate_numba; ``out`` from :meth:`_alloc_outputs` with a 'cloud').
        None if the kernel cannot run here (logged once; the numpy path takes over)."""
        from .triangulate_numba import TriangulateInputError, triangulate_pack

        p = self.params
        left = stereo.left
        ray, u, v = self._grids(left)
        unrectify = bool(p['output.unrectify_points']) and not np.allclose(left.R, np.eye(3))
        consts = (float(stereo.fb), float(stereo.delta_cx), float(p['limit.max_relative_sigma']),
                  float(p['limit.max_sigma_m']), self.sigma_d0, float(p['sigma.lr_gain']))
        try:
            bad = triangulate_pack(
                np.asarray(disparity, dtype=np.float32),
                np.asarray(lr_diff if sigma_d is None else sigma_d, dtype=np.float32),
                sigma_d is not None, match_flags, ray, u.reshape(-1), v.reshape(-1), consts,
                left.R.T if unrectify else None, out['cloud'], out['depth'], out['depth_sigma'],
                out['sigma_disparity'])
        except Exception as exc:  # noqa: BLE001 - numba missing a feature or failing to build
            if isinstance(exc, TriangulateInputError):
                raise
            self._tail_failed(exc)
            return None
        if bad:
            raise RuntimeError('internal error: MEASURED point without a finite sigma')
        result = FrameResult(
            depth=out['depth'], depth_sigma=out['depth_sigma'], points=out['points'],
            sigma=out['sigma'], provenance=out['provenance'], flags=out['flags'],
            source=out['source'], disparity=disparity, sigma_disparity=out['sigma_disparity'],
            timings_ms={})
        result.packed = out['cloud']
        return result

    def _triangulate(self, disparity: np.ndarray, lr_diff: np.ndarray, match_flags: np.ndarray,
                     stereo: StereoModel, sigma_d: np.ndarray | None = None,
                     out: dict[str, np.ndarray] | None = None) -> FrameResult:
        """Depth, sigma and provenance from a disparity map.

        Args:
            disparity: (H, W) float32 px, NaN where the matcher rejected the pixel.
            lr_diff: (H, W) float32 |d_left - d_right| px (the constant sigma model uses it).
            match_flags: (H, W) uint16 Flag bits of the matcher.
            stereo: the rectified pair (f*B, delta_cx, the left camera).
            sigma_d: (H, W) float32 per-pixel disparity sigma (px) of the calibrated model;
                None = the constant model. May be ``out['sigma_disparity']`` itself.
            out: output arrays from :meth:`_alloc_outputs` (allocated when None).

        Whole-image float32 passes with NaN propagation instead of masked assignments (slow on
        scattered masks): every quantity derived from a NaN disparity (or from a depth that is
        not MEASURED) is NaN. Temporaries live in the pipeline's workspace.
        """
        import cv2

        p = self.params
        f32 = np.float32
        left = stereo.left
        h, w = shape = disparity.shape
        match_flags = np.asarray(match_flags, dtype=np.uint16)
        if out is None:
            out = self._alloc_outputs(shape)
        if 'cloud' in out:
            result = self._triangulate_numba(disparity, lr_diff, match_flags, stereo, sigma_d,
                                             out)
            if result is not None:
                return result
            out = self._alloc_outputs(shape)  # the compiled pass failed: numpy from now on
        ws = self._ws
        # scratch (full size; each band works on its rows)
        f1, f2 = ws.get('tri_f1', shape, f32), ws.get('tri_f2', shape, f32)
        b1, b2 = ws.get('tri_b1', shape, bool), ws.get('tri_b2', shape, bool)
        u8, u8b = ws.get('tri_u8', shape, np.uint8), ws.get('tri_u8b', shape, np.uint8)
        u16 = ws.get('tri_u16', shape, np.uint16)
        ray, u, v = self._grids(left)
        s0 = f32(self.sigma_d0)
        gain = f32(p['sigma.lr_gain'])
        limit = f32(p['limit.max_relative_sigma'])
        max_sigma = float(p['limit.max_sigma_m'])
        unrectify = bool(p['output.unrectify_points']) and not np.allclose(left.R, np.eye(3))
        r_t = left.R.T.astype(f32)  # p_cam = R^T p_rect

        def band(rows: slice) -> tuple[int, int]:
            d = disparity[rows]
            bf1, bf2, bb1, bb2 = f1[rows], f2[rows], b1[rows], b2[rows]
            unmatched = np.isnan(d, out=bb2)
            nan_or_zero = np.multiply(d, f32(0), out=bf1)  # NaN where unmatched, else 0
            sd = out['sigma_disparity'][rows]
            if sigma_d is None:
                np.multiply(lr_diff[rows], gain, out=sd)
                np.multiply(sd, sd, out=sd)
                sd += s0 * s0
                np.sqrt(sd, out=sd)
                sd += nan_or_zero
            else:
                np.add(sigma_d[rows], nan_or_zero, out=sd)  # NaN where unmatched

            d_eff = np.subtract(d, f32(stereo.delta_cx), out=bf1)
            z = out['depth'][rows]  # z first, the depth image at the end
            rel = out['depth_sigma'][rows]  # sigma_d / d_eff first, sigma_Z at the end
            # MEASURED as bool straight in the provenance image (NONE = 0, MEASURED = 1)
            measured = out['provenance'][rows].view(bool)
            with np.errstate(divide='ignore', invalid='ignore'):
                np.divide(f32(stereo.fb), d_eff, out=z)
                np.divide(sd, d_eff, out=rel)  # = sigma_Z / Z = sigma_r / r
                # MEASURED: positive disparity and sigma within the limit (NaN compares False)
                np.greater(d_eff, f32(0), out=measured)
                measured &= np.less_equal(rel, limit, out=bb1)
                if max_sigma > 0:
                    sr = np.multiply(rel, z, out=bf2)
                    sr *= ray[rows]
                    measured &= np.less_equal(sr, f32(max_sigma), out=bb1)
            beyond = np.logical_not(unmatched, out=bb2)  # matched ...
            beyond &= np.logical_not(measured, out=bb1)  # ... but not MEASURED
            flags = np.multiply(beyond, np.uint16(Flag.BEYOND_RESOLUTION), out=out['flags'][rows])
            flags |= match_flags[rows]

            # z: depth of MEASURED pixels, NaN elsewhere (a per-pixel factor 1 or NaN)
            m8 = measured.view(np.uint8)
            z *= cv2.LUT(m8, _NAN_OR_ONE, dst=bf1)
            np.multiply(rel, z, out=rel)  # sigma_Z
            sigma = np.multiply(rel, ray[rows], out=out['sigma'][rows])  # sigma along the ray
            counts = (np.count_nonzero(np.isfinite(sigma, out=bb1)), np.count_nonzero(measured))

            # Points in the rectified frame, then (optionally) back to the optical frame.
            pts = cv2.merge([np.multiply(u, z, out=bf1), np.multiply(v[rows], z, out=bf2), z],
                            dst=out['points'][rows])
            if unrectify:
                pts[...] = (pts.reshape(-1, 3) @ r_t.T).reshape(pts.shape)

            # depth: z; +inf BEYOND_RESOLUTION; -inf TOO_CLOSE; NaN otherwise (fmax keeps z where
            # it is finite and takes the table's value where z is NaN)
            code = np.left_shift(beyond.view(np.uint8), 1, out=u8[rows])
            code |= m8
            tc = np.bitwise_and(match_flags[rows], np.uint16(Flag.TOO_CLOSE), out=u16[rows])
            code |= np.left_shift(np.not_equal(tc, 0, out=bb1).view(np.uint8), 2, out=u8b[rows])
            np.fmax(z, cv2.LUT(code, _DEPTH_FILL, dst=bf1), out=z)
            out['source'][rows].fill(0)
            return counts

        counts = self._bands.run(band, h, w)
        if sum(c[0] for c in counts) != sum(c[1] for c in counts):
            raise RuntimeError('internal error: MEASURED point without a finite sigma')
        depth, depth_sigma, pts = out['depth'], out['depth_sigma'], out['points']
        sigma, provenance, flags, source = out['sigma'], out['provenance'], out['flags'], \
            out['source']
        sd = out['sigma_disparity']

        return FrameResult(
            depth=depth, depth_sigma=depth_sigma, points=pts, sigma=sigma,
            provenance=provenance, flags=flags, source=source,
            disparity=disparity, sigma_disparity=sd, timings_ms={})


def _grid_stats(prior: Any) -> dict[str, float]:
    """The height grid's build counter for ``georef.<stat>`` on /diagnostics: grid_builds
    (grids taken into use); {} without a height grid."""
    if getattr(prior.grid, 'field', None) is None:
        return {}
    st = prior.retile_stats
    return {'grid_builds': float(st['builds_swapped'])}


def _waits(pose: Any, why: str) -> bool:
    """A pose lookup that found no pose only because the inputs after the stamp have not
    arrived yet (worth waiting for)."""
    return pose is None and 'after the newest' in why


class _Georef:
    """Pose source + DEM prior engine of a DepthPipeline (created when DEM sources exist).

    The pose source follows ``pose.source``: gnss_imu = core.pose.PoseEstimator (IMU + GNSS),
    odometry = core.pose.OdometryPoseSource (nav_msgs/Odometry in ENU at the fixed datum).
    Both have ``frame``, ``counts``, ``config`` and ``pose_at``. Inputs arrive from other
    threads in the node: every access takes the lock.
    """

    def __init__(self, params: Mapping[str, Any]) -> None:
        import threading

        from .dem import open_dem_sources
        from .pose import (Extrinsics, GateConfig, OdometryPoseConfig, OdometryPoseSource,
                           PoseConfig, PoseEstimator)

        self.sources = open_dem_sources(params)  # opened once: the grid and the legend use them
        datum = None
        if params['georef.datum_mode'] == 'fixed':
            datum = (params['georef.datum_latitude_deg'], params['georef.datum_longitude_deg'],
                     params['georef.datum_height_m'])
        ext = Extrinsics.from_params(dict(params))
        self.source_kind = params['pose.source']
        gate = {f.name: params[f'pose.{f.name}'] for f in dataclasses.fields(GateConfig)}
        if self.source_kind == 'odometry':
            if datum is None:  # validate_params refuses it; a direct caller gets it here
                raise ValueError('pose.source odometry needs georef.datum_mode fixed, got '
                                 f'{params["georef.datum_mode"]!r}')
            self.pose = OdometryPoseSource(OdometryPoseConfig(
                datum=datum, max_gap_s=params['pose.max_odometry_gap_s'],
                default_position_sigma_m=params['pose.odometry_default_position_sigma_m'],
                default_attitude_sigma_rad=params['pose.odometry_default_attitude_sigma_rad'],
                frame_id=params['output.enu_frame_id'],
                gate_max_rate_radps=params['pose.odometry_gate_max_rate_radps'], **gate), ext)
        else:
            self.pose = PoseEstimator(PoseConfig(
                datum=datum, max_gnss_gap_s=params['pose.max_gnss_gap_s'],
                max_imu_gap_s=params['pose.max_imu_gap_s'],
                default_gnss_sigma_m=params['pose.default_gnss_sigma_m'],
                tilt_sigma_rad=params['pose.tilt_sigma_rad'],
                course_min_speed_mps=params['pose.course_min_speed_mps'],
                default_orientation_sigma_rad=params['pose.imu_default_orientation_sigma_rad'],
                unknown_orientation_cov_degrades=bool(
                    params['pose.imu_unknown_covariance_degrades']), **gate), ext)
        self.prior = None  # GeoPrior, built once the ENU frame (datum) is known
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)

    def add(self, sample, kind: str) -> None:
        """Buffer one input of ``kind`` 'imu', 'gnss' or 'odometry'; one the pose source does
        not take is counted in ``pose.counts['<kind>_ignored']`` (warned about once)."""
        with self.cond:
            add = getattr(self.pose, f'add_{kind}', None)
            if add is None:
                key = f'{kind}_ignored'
                if key not in self.pose.counts:
                    _LOG.warning('%s input ignored: pose.source is %s', kind, self.source_kind)
                self.pose.counts[key] = self.pose.counts.get(key, 0) + 1
                return
            add(sample)
            self.cond.notify_all()

    def ensure_prior(self, params: Mapping[str, Any]):
        """The GeoPrior (built from ``params`` once the ENU datum is known), or None."""
        from .fusion import FusionConfig
        from .geoprior import GeoPrior

        if self.prior is None and self.pose.frame is not None:
            self.prior = GeoPrior(
                self.sources, self.pose.frame, cell_m=params['dem.grid_cell_m'],
                half_extent_m=params['dem.grid_half_extent_m'],
                retile_margin_m=params['dem.grid_retile_margin_m'],
                max_range_m=params['dem.max_range_m'], device=params['dem.device'],
                sigma_points=bool(params['dem.sigma_points']),
                march=str(params['dem.raycast_march']),
                fusion=FusionConfig(params['fusion.gate_k'],
                                    params['fusion.max_prior_relative_sigma']),
                retry_s=float(params['dem.grid_retry_s']),
                cast_stride=int(params['dem.cast_stride']))
        return self.prior

    def lookup(self, stamp_ns: int, params: Mapping[str, Any], wait_s: float
               ) -> tuple[Any, str, Any, float]:
        """(pose or None, why, GeoPrior or None, ms spent) for a frame stamp, waiting up to
        ``wait_s`` for IMU/GNSS newer than it."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + max(0.0, wait_s)
        with self.cond:
            while True:
                pose, why = self.pose.pose_at(stamp_ns)
                if not _waits(pose, why) or time.monotonic() >= deadline:
                    break
                self.cond.wait(min(0.02, max(0.0, deadline - time.monotonic())))
            prior = self.ensure_prior(params) if pose is not None else None
        return pose, why, prior, (time.perf_counter() - t0) * 1e3

    def pose_ready(self, stamp_ns: int) -> bool:
        """Whether a frame at ``stamp_ns`` need not wait for more pose inputs (the test of
        :meth:`lookup`, without waiting)."""
        with self.lock:
            return not _waits(*self.pose.pose_at(stamp_ns))

    def counts(self) -> dict[str, int]:
        """A snapshot of the pose source's counters (``pose_input.<key>`` on /diagnostics)."""
        with self.lock:
            return dict(self.pose.counts)

    @staticmethod
    def _pose_matrix(pose) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = pose.R_enu_cam, pose.p_enu_cam
        return T

    def prepare(self, stamp_ns: int, model: CameraModel, params: Mapping[str, Any],
                wait_s: float) -> tuple:
        """The part of :meth:`apply` that needs no stereo: the pose at the stamp and the
        prior's cast (``GeoPrior.cast``), so that it can run while the stereo matches.
        Returns (pose or None, why, GeoPrior or None, pose lookup ms, cast or None)."""
        pose, why, prior, ms = self.lookup(stamp_ns, params, wait_s)
        cast = prior.cast(pose, model) if pose is not None and prior is not None else None
        return pose, why, prior, ms, cast

    def apply(self, result: FrameResult, prepared: tuple, model: CameraModel,
              params: Mapping[str, Any], stereo: StereoModel | None = None) -> None:
        """The fusion of GeoPrior.apply on the host arrays of ``result`` with the pose and
        cast of :meth:`prepare`. A DEM file that fails after start-up costs only the priors
        (``GeoPrior.update_grid``; the reason in ``result.prior_problem``)."""
        pose, why, prior, ms, cast = prepared
        result.timings_ms['pose'] = ms
        result.pose_status = why
        if pose is None or prior is None:
            from .contract import Flag, Provenance

            result.flags[result.provenance == Provenance.NONE] |= np.uint16(Flag.PRIOR_UNAVAILABLE)
            return
        result.pose_degraded = pose.degraded
        result.T_enu_cam = self._pose_matrix(pose)
        result.prior_counts = prior.apply(result, pose, model, params, stereo=stereo,
                                          cast=cast)
        result.georef_stats = {**prior.camera_clearance(pose), **_grid_stats(prior)}
        result.prior_problem = prior.frame_problem(result.georef_stats)

    def apply_device(self, frame: dict[str, Any], stamp_ns: int, model: CameraModel,
                     params: Mapping[str, Any], wait_s: float, stereo: StereoModel | None,
                     timings: dict[str, float]) -> dict[str, Any]:
        """:meth:`apply` on the device frame path's tensors (core.georef_torch), in place;
        the points move to ENU when ``output.frame`` is enu. Returns the FrameResult fields
        to set: pose_status, pose_degraded, T_enu_cam, prior_counts, georef_stats,
        prior_problem, output_frame."""
        from .georef_torch import apply_torch, to_enu_torch

        pose, why, prior, ms = self.lookup(stamp_ns, params, wait_s)
        timings['pose'] = ms
        meta: dict[str, Any] = {'pose_status': why}
        if pose is None or prior is None:
            apply_torch(None, frame, None, model, params)  # NONE points: PRIOR_UNAVAILABLE
            return meta
        T = self._pose_matrix(pose)
        meta.update(pose_degraded=pose.degraded, T_enu_cam=T)
        meta['prior_counts'] = apply_torch(prior, frame, pose, model, params, stereo=stereo,
                                           timings=timings)
        meta['georef_stats'] = {**prior.camera_clearance(pose), **_grid_stats(prior)}
        meta['prior_problem'] = prior.frame_problem(meta['georef_stats'])
        if params['output.frame'] == 'enu':
            to_enu_torch(frame, points_to_enu(T, model, params))
            meta['output_frame'] = 'enu'
        return meta
