"""DEM priors for every pixel of a frame: pose on the Earth -> rays in ENU -> ray-cast -> fuse.

ROS-free glue between :mod:`pose`, :mod:`dem`, :mod:`raycast` and :mod:`fusion`, used by the node
and by offline tools alike. Pixel rays: the rectified left pixel ``(u, v)`` has the direction
``d_rect = ((u - cx)/fx, (v - cy)/fy, 1)`` in the rectified frame, ``d_cam = R^T d_rect`` in the
left camera optical frame (``R`` of the left CameraInfo), ``d_enu = R_enu_cam d_cam``.
"""
from __future__ import annotations

import datetime
import logging
import math
import time
from typing import Any, Callable, Mapping

import numpy as np

from .camera import CameraModel
from .fusion import FusionConfig, fuse
from .geodesy import EnuFrame
from .pose import PoseEstimate
from .torch_util import cpu_threads

_LOG = logging.getLogger(__name__)

#: Seconds between two attempts to build the height grid after a build failed (a DEM file
#: vanished or became unreadable): meanwhile frames use the previous grid, or have no priors.
DEM_GRID_RETRY_S = 5.0
#: A camera more than this many metres above the DEM surface under it gets a /diagnostics
#: warning (:func:`clearance_warning`): a ground robot's camera is a few metres up, so this is
#: a wrong datum, a DEM or altitude offset, or a DEM void filled with a low value. Rays then
#: meet the terrain far too steeply or far too late: priors are wrong, not merely missing.
CAMERA_FAR_ABOVE_DEM_M = 100.0
#: FrameResult.prior_problem text when the DEM has no data under the camera
NO_DEM_UNDER_CAMERA = 'DEM has no data under the camera'


def range_gradient(rng: np.ndarray) -> np.ndarray:
    """(H, W) largest |range difference| to a 4-neighbour, metres per pixel; a neighbour that is
    not a hit (NaN) counts as a jump to infinity (a silhouette against the sky)."""
    g = np.zeros_like(rng, dtype=np.float64)
    with np.errstate(invalid='ignore'):
        for axis in (0, 1):
            d = np.abs(np.diff(rng, axis=axis))
            d = np.where(np.isnan(d), np.inf, d)
            pad_lo = [(0, 0), (0, 0)]
            pad_hi = [(0, 0), (0, 0)]
            pad_lo[axis] = (1, 0)
            pad_hi[axis] = (0, 1)
            g = np.maximum(g, np.pad(d, pad_lo))
            g = np.maximum(g, np.pad(d, pad_hi))
    return np.where(np.isfinite(rng), g, np.nan)


def attitude_sigma_rad(pose_cov) -> float:
    """Largest 1-sigma attitude error (rad) of a raycast.PoseCovariance: the silhouette term
    of :meth:`GeoPrior.cast` moves a ray by ``f * sigma`` pixels."""
    return math.sqrt(max(float(np.linalg.eigvalsh(pose_cov.attitude).max()), 0.0))


def clearance_warning(stats: Mapping[str, float],
                      max_above_m: float = CAMERA_FAR_ABOVE_DEM_M) -> str | None:
    """The /diagnostics warning for a FrameResult.georef_stats (:meth:`GeoPrior.camera_clearance`),
    or None when the camera's height above the DEM is plausible (or nothing is known).

    Warns when the camera is less than ``dem_vertical_shift_m`` above the DEM under it
    (nearly every prior is refused), or more than ``max_above_m`` metres above it (default
    :data:`CAMERA_FAR_ABOVE_DEM_M`; the priors are then wrong: a datum or altitude error).
    """
    h = float(stats.get('camera_above_dem_m', float('nan')))
    shift = float(stats.get('dem_vertical_shift_m', float('nan')))
    if math.isfinite(h) and h > max_above_m:
        return (f'camera {h:.1f} m above the DEM under it, more than {max_above_m:g} m: the '
                'priors are placed wrongly (wrong vertical datum, altitude or DEM offset, or a '
                'DEM void filled low?)')
    if not (math.isfinite(h) and math.isfinite(shift)) or h >= shift:
        return None
    return (f'camera {h:.2f} m above the DEM under it, less than the DEM/height sigma '
            f'{shift:.2f} m: nearly every prior is refused (DEM offset, wrong datum or a '
            'terrain change where the vehicle stands?)')


class GeoPrior:
    """A DEM height grid around the robot plus the per-frame ray-cast and fusion.

    Args:
        specs: DEM sources: opened core.dem.DemSource objects or their specs.
        frame: the local ENU frame.
        cell_m, half_extent_m, retile_margin_m: height-grid geometry, metres.
        max_range_m: farthest prior, metres.
        device: torch device for the grid and the ray-cast ('auto', 'cpu', 'cuda').
        fusion: FusionConfig.
        epoch: date for the survey-age growth of the DEM sigma (None = today).
        sigma_points: refine the vertical part of the prior sigma with two extra ray casts
            (see :meth:`cast`); False = first order only (a third of the ray-cast time).
        march: the ray-march code of :func:`~.raycast.raycast` ('auto', 'torch', 'numba',
            'triton').
        retry_s: seconds between attempts to build the height grid after a failed build
            (default :data:`DEM_GRID_RETRY_S`).
        cast_stride: pixel lattice stride of the CPU cast (:mod:`.prior_lattice`; 1 = every
            pixel exact).

    A DEM file that vanishes or becomes unreadable after start-up costs the priors of its own
    area, never the frame nor the other sources: a grid (re)build reads every tile it can and
    leaves the unreadable ones without data; when nothing with data could be read it fails and
    :meth:`update_grid` keeps the grid it had (None before the first build; a frame without a
    grid keeps its stereo points, NONE ones get PRIOR_UNAVAILABLE). Either way it says why in
    :attr:`grid_problem` and tries again at most every ``retry_s`` seconds (``clock``,
    time.monotonic), so the priors come back with the file.

    Re-tiling never stalls a frame: only the first grid is built inline (that frame waits,
    and the log says so; so is a retry while there is no grid at all); every later build
    (the camera within ``retile_margin_m`` of the grid's edge, or a retry) runs in the height
    grid's single background worker thread
    (:meth:`~.dem.LocalHeightGrid.start_build`) while frames keep using the current grid,
    which still covers ``max_range_m`` around the camera (``max_range_m <= half_extent_m -
    retile_margin_m``). The finished grid is swapped in at the start of the next
    :meth:`update_grid`, never during a cast; a failed background build sets
    :attr:`grid_problem` as an inline one would. Should the camera drive beyond the old grid's
    coverage before the new one is ready, rays that leave it are UNAVAILABLE by the ray-cast's
    rules and :attr:`grid_problem` stays ''; :attr:`retile_stats` counts the frames that the
    previous grid served while a build ran (and the builds, and their wall time). The new
    grid is centred where the camera was when the build was requested; if the camera is again
    within the margin when it is swapped in, the next build starts at once.
    :meth:`wait_for_grid` waits for a build in flight.
    """

    #: why the last grid (re)build failed ('' = the grid is current); see update_grid
    grid_problem: str = ''
    retry_s: float = DEM_GRID_RETRY_S
    clock: Callable[[], float] = staticmethod(time.monotonic)
    _failed_at: float | None = None  # clock() of the last failed build
    _partial = False  # the grid was built without some unreadable tiles: rebuild on retry
    cast_stride: int = 4  # pixel lattice stride of the CPU cast (see __init__)
    _first_grid_logged = False  # the first (synchronous) grid build was logged

    def __init__(self, specs: list, frame: EnuFrame, *, cell_m: float = 2.0,
                 half_extent_m: float = 1500.0, retile_margin_m: float = 500.0,
                 max_range_m: float = 1000.0, device: Any = 'auto',
                 fusion: FusionConfig | None = None,
                 epoch: datetime.date | None = None, sigma_points: bool = True,
                 march: str = 'auto', retry_s: float = DEM_GRID_RETRY_S,
                 cast_stride: int = 4) -> None:
        from .dem import LocalHeightGrid
        from .raycast import MARCHES, resolve_device

        if march not in MARCHES:
            raise ValueError(f'march must be one of {MARCHES}, got {march!r}')
        dev = resolve_device(device)
        if (march == 'numba' and dev.type != 'cpu') or (march == 'triton' and dev.type != 'cuda'):
            raise ValueError(f'ray-march {march!r} cannot run on the DEM device {dev} '
                             '(numba: cpu, triton: cuda; auto picks one that can)')
        if not max_range_m <= half_extent_m - retile_margin_m:
            raise ValueError(f'max_range_m ({max_range_m}) must not exceed half_extent_m - '
                             f'retile_margin_m ({half_extent_m - retile_margin_m}): rays would '
                             'leave the grid')
        self.grid = LocalHeightGrid(specs, frame, cell_m=cell_m, half_extent_m=half_extent_m,
                                    retile_margin_m=retile_margin_m, device=device, epoch=epoch)
        self.max_range_m = float(max_range_m)
        self.fusion = fusion or FusionConfig()
        self.surface_model_ids = [i for i, s in self.grid.specs_by_id.items()
                                  if s.is_surface_model]
        self.sigma_points = bool(sigma_points)
        self.march = march
        if not (isinstance(retry_s, (int, float)) and math.isfinite(retry_s) and retry_s >= 0):
            raise ValueError(f'retry_s must be a finite number >= 0, got {retry_s!r}')
        self.retry_s = float(retry_s)
        if not (isinstance(cast_stride, (int, np.integer)) and 1 <= cast_stride <= 16):
            raise ValueError(f'cast_stride must be an integer in 1..16, got {cast_stride!r}')
        self.cast_stride = int(cast_stride)
        #: what the last lattice cast did ({'exact': rays, 'near': rays}; {} otherwise)
        self.last_cast_info: dict[str, int] = {}
        self._ray_cache: tuple | None = None

    def update_grid(self, p_enu: Any) -> str:
        """Keep the height grid around the camera at ENU ``p_enu`` (3,) current, containing
        failures (see the class docstring). Called at the start of every cast, on the frame's
        thread; it never waits for a re-tile:

        1. a background build that has finished is swapped in here (so the field never
           changes during a cast), or its failure is taken over into :attr:`grid_problem`;
        2. the first grid (none yet) is built here, blocking this frame (logged once at INFO);
        3. a later build (the camera within ``retile_margin_m`` of the grid's edge, or a retry
           after a failed or partial build) is started in the grid's background worker, one
           at a time, around the camera's position now; the frame uses the current grid.

        Returns:
            :attr:`grid_problem`: '' when the grid is current (or its replacement is being
            built), else why it is not, naming the source, the file and the error, and what
            the frame uses instead.
        """
        grid = self.grid
        stats = self.retile_stats
        background = callable(getattr(grid, 'start_build', None))
        if background and grid.build_ready:
            try:
                grid.swap_build()
            except Exception as exc:  # noqa: BLE001 - any failure costs the priors, not the frame
                stats['build_s_last'] = grid.last_build_s
                return self._grid_build_failed(exc, had=True)
            stats['build_s_last'] = grid.last_build_s
            stats['builds_swapped'] += 1
            _LOG.info('height grid: background build (%.2f s) swapped in', grid.last_build_s)
            if self._grid_built(list(grid.last_read_problems)):
                return self.grid_problem  # partial: rebuilt after retry_s
        if self._failed_at is not None and self.clock() - self._failed_at < self.retry_s:
            return self.grid_problem  # throttled: the last attempt failed too recently
        had = getattr(grid, 'field', None) is not None
        if not had or not background:  # the first grid (or a grid without a worker): inline
            t0 = time.perf_counter()
            try:
                # a grid built without some unreadable tiles is rebuilt at the next attempt
                rebuilt: bool | Exception = grid.retile_if_needed(p_enu, force=self._partial)
            except Exception as exc:  # noqa: BLE001 - any failure costs the priors, not the frame
                rebuilt = exc
            took_s = time.perf_counter() - t0
            if rebuilt is not False:
                stats['builds_started'] += 1
                stats['build_s_last'] = took_s
            if not had and not self._first_grid_logged:
                self._first_grid_logged = True
                _LOG.info('first height grid: building synchronously (blocks this frame): %s in '
                          '%.2f s; later re-tiles are built in the background',
                          'failed' if isinstance(rebuilt, Exception) else 'built', took_s)
            if isinstance(rebuilt, Exception):
                return self._grid_build_failed(rebuilt, had)
            if rebuilt:
                stats['builds_swapped'] += 1
            self._grid_built(list(grid.last_read_problems) if rebuilt else [])
            return self.grid_problem
        try:
            # a grid built without some unreadable tiles is rebuilt at the next attempt
            wanted = self._partial or grid.needs_retile(p_enu)
            if wanted and grid.start_build(p_enu):
                stats['builds_started'] += 1
                _LOG.info('height grid: re-tiling around ENU (%.1f, %.1f) in the background; '
                          'frames use the current grid meanwhile', *map(float, p_enu[:2]))
        except Exception as exc:  # noqa: BLE001 - any failure costs the priors, not the frame
            return self._grid_build_failed(exc, had)
        if grid.build_pending:
            stats['frames_while_building'] += 1  # this frame uses the previous grid
            return self.grid_problem
        if wanted:  # no build could be started (the grid's worker is closed)
            return self.grid_problem
        self._grid_built([])
        return self.grid_problem

    def _grid_build_failed(self, exc: Exception, had: bool) -> str:
        """Record a failed height-grid build in :attr:`grid_problem` (``had``: a previous grid
        stays in use) and start the retry period; returns the problem text."""
        from .dem import DemReadError

        if isinstance(exc, DemReadError):
            why = str(exc)
            _LOG.error('height grid build failed: %s', why)
        else:  # not a read failure: keep the traceback in the log
            why = f'height grid build failed unexpectedly: {type(exc).__name__}: {exc}'
            _LOG.error('height grid build failed (unexpected %s)', type(exc).__name__,
                       exc_info=exc)
        self._failed_at = self.clock()
        self.grid_problem = (
            f'{why}; ' + ('using the previous height grid' if had else
                          'no height grid: stereo only') +
            f', retrying every {self.retry_s:g} s')
        return self.grid_problem

    def _grid_built(self, missing: list[str]) -> bool:
        """Record a grid taken into use (or one that needs nothing): ``missing`` names the
        unreadable DEM data it lacks. Returns True when that is a problem (a partial grid:
        :attr:`grid_problem` says so, and it is rebuilt after the retry period)."""
        if missing:  # built from what could be read: those areas have no prior
            _LOG.error('height grid built without unreadable DEM data: %s', '; '.join(missing))
            self._partial = True
            self._failed_at = self.clock()
            self.grid_problem = (f'{"; ".join(missing)}; the height grid has no data there '
                                 f'(the other tiles and sources are used), retrying every '
                                 f'{self.retry_s:g} s')
            return True
        if self.grid_problem:
            _LOG.info('height grid current again; priors are back (%s)', self.grid_problem)
        self._partial = False
        self._failed_at = None
        self.grid_problem = ''
        return False

    @property
    def retile_stats(self) -> dict[str, float]:
        """Height-grid build counters for diagnostics (a live dict, updated by
        :meth:`update_grid` on the frame thread): ``builds_started`` (builds begun, the first
        synchronous one included), ``builds_swapped`` (builds taken into use),
        ``build_s_last`` (wall time of the last finished build, seconds; NaN before) and
        ``frames_while_building`` (frames that used the previous grid while a background
        build ran)."""
        stats = self.__dict__.get('_retile_stats')
        if stats is None:
            stats = self.__dict__['_retile_stats'] = {
                'builds_started': 0, 'builds_swapped': 0, 'build_s_last': math.nan,
                'frames_while_building': 0}
        return stats

    def wait_for_grid(self, timeout_s: float = 30.0) -> bool:
        """Wait until the height grid's background build (if any) has finished; the next
        :meth:`update_grid` swaps it in or reports its failure (for tests and tools that need
        the re-tiled grid deterministically; a live node never waits).

        Args:
            timeout_s: longest wait, seconds (finite, >= 0).

        Returns:
            True when no build is in flight; False when ``timeout_s`` passed first.

        Raises:
            ValueError: a negative or non-finite ``timeout_s``.
        """
        if isinstance(timeout_s, bool) or not (isinstance(timeout_s, (int, float))
                                               and math.isfinite(timeout_s) and timeout_s >= 0):
            raise ValueError(f'timeout_s must be a finite number >= 0, got {timeout_s!r}')
        wait = getattr(self.grid, 'wait', None)
        return True if wait is None else bool(wait(float(timeout_s)))

    def frame_problem(self, stats: Mapping[str, float]) -> str:
        """The FrameResult.prior_problem of a frame cast with this prior: why it has no or
        fewer priors than it should ('' when nothing is wrong): the grid problem
        (:meth:`update_grid`) and/or :data:`NO_DEM_UNDER_CAMERA` when ``stats``
        (:meth:`camera_clearance`) say the DEM has no data under the camera, joined by '; '."""
        parts = [self.grid_problem] if self.grid_problem else []
        if stats.get('dem_data_under_camera', 1.0) == 0.0:
            parts.append(f'{NO_DEM_UNDER_CAMERA} (nodata or outside the grid): rays are '
                         'followed over the hole, those landing in it have no prior')
        return '; '.join(parts)

    def rays(self, model: CameraModel, unrectify: bool) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
        """Unit pixel rays of the left camera, cached per calibration: (d_cam (H, W, 3) float64
        in the camera optical frame, the rays of the output frame (H, W, 3) float32 — camera if
        ``unrectify`` else rectified —, |((u-cx)/fx, (v-cy)/fy, 1)| (H, W) float64)."""
        # both output frames are kept: a frame asks for the camera rays (cast, height test)
        # and, with output.unrectify_points false, for the rectified ones (fusion)
        key = (model.width, model.height, model.fx, model.fy, model.cx, model.cy,
               model.R.tobytes())
        if self._ray_cache is None or self._ray_cache[0] != key:
            u = (np.arange(model.width) - model.cx) / model.fx
            v = (np.arange(model.height) - model.cy) / model.fy
            d = np.stack(np.broadcast_arrays(u[None, :], v[:, None], 1.0), axis=-1)
            norm = np.linalg.norm(d, axis=-1)
            d_rect = d / norm[..., None]
            d_cam = d_rect @ np.asarray(model.R, dtype=np.float64)  # R^T d for row vectors
            self._ray_cache = (key, d_cam, d_cam.astype(np.float32), d_rect.astype(np.float32),
                               norm)
        _, d_cam, cam32, rect32, norm = self._ray_cache
        return d_cam, (cam32 if unrectify else rect32), norm

    def cast(self, pose: PoseEstimate, model: CameraModel) -> dict[str, np.ndarray]:
        """Ray-cast every pixel; (H, W) arrays range_m, sigma_m, status, source (numpy), and
        sigma_first_order_vertical_m (sigma_m with the first-order vertical term, i.e. without
        the sigma points; for comparisons).

        The prior sigma is the first-order sigma of :func:`~.raycast.raycast` with two
        non-linear corrections:

        * vertical: with ``sigma_points`` the hit rays are cast again into the height field
          raised and lowered by ``sqrt(sigma_v^2 + P_zz)`` (DEM vertical sigma and camera
          height variance), and the sigma-point variance ``((r+ - r)^2 + (r- - r)^2) / 2``
          replaces the first-order vertical term (on a plane they agree): a ray that would
          hit a crest in front, or pass over the crest it hits, gets the range uncertainty
          it really has (infinite when a shifted ray misses: that prior is not usable).
          Where the camera is less than ``delta`` above the DEM under it, the lowered camera
          would start inside the terrain (every ray BELOW_TERRAIN): that sigma point does not
          exist (the camera is above the ground it stands on) and the first-order vertical
          term stands in for it; before, this dropped every prior of such a frame. Over a
          DEM hole under the camera that test is impossible: the lowered ray comes out of
          the hole below the terrain (UNAVAILABLE, see :mod:`.raycast`) exactly where it
          would start inside it, so there UNAVAILABLE counts as inside too (the lowered
          camera's ray follows the main ray's horizontal path, which had data up to its hit);
        * attitude: a rotation of ``sigma_att`` moves a ray by ``f sigma_att`` pixels, so the
          range change to the neighbouring pixels (``range_gradient * f * sigma_att``; a sky
          neighbour is an infinite jump) replaces the first-order attitude term where it is
          larger: silhouettes and crests.

        Measured with ``geo-depth prior-coverage``: first order alone is over-confident on
        rolling terrain (>3 sigma for 1.6 % of the points); with both corrections the PRIOR
        points are slightly conservative.

        Without a height grid (its first build failed, :meth:`update_grid`) every ray is
        UNAVAILABLE.
        """
        from .raycast import RayStatus

        t0 = time.perf_counter()
        self.update_grid(pose.p_enu_cam)
        t1 = time.perf_counter()
        field = self.grid.field
        h, w = model.height, model.width
        if field is None:
            nan = np.full((h, w), np.nan, dtype=np.float32)
            return {'range_m': nan.copy(), 'sigma_m': nan.copy(),
                    'sigma_first_order_vertical_m': nan,
                    'status': np.full((h, w), int(RayStatus.UNAVAILABLE), dtype=np.int8),
                    'source': np.zeros((h, w), dtype=np.int32),
                    'timings_ms': {'dem_retile': (t1 - t0) * 1e3}}
        pose_cov = pose.pose_covariance()
        if self._lattice_cast(field):
            rng, status, source, var, t2 = self._terms_lattice(pose, model, field, pose_cov)
        else:
            rng, status, source, var, t2 = self._terms_full(pose, model, field, pose_cov)
        var_rest, var_vert_first, var_vert, var_att = var
        t3 = time.perf_counter()
        sig_att = attitude_sigma_rad(pose_cov)
        if sig_att > 0:
            var_att = np.maximum(var_att, (range_gradient(rng) * model.fx * sig_att) ** 2)
        with np.errstate(invalid='ignore'):
            sigma = np.sqrt(var_rest + var_vert + var_att)
            sigma_first = np.sqrt(var_rest + var_vert_first + var_att)
        return {'range_m': rng,
                'sigma_m': sigma.astype(np.float32),
                'sigma_first_order_vertical_m': sigma_first.astype(np.float32),
                'status': status,
                'source': source,
                'timings_ms': {'dem_retile': (t1 - t0) * 1e3,
                               'dem_raycast': (t2 - t1) * 1e3,
                               'dem_sigma_points': (t3 - t2) * 1e3}}

    def _lattice_cast(self, field: Any) -> bool:
        """Whether this frame's cast runs through :mod:`.prior_lattice` (a CPU field whose
        march is the compiled one; with ``cast_stride`` 1 every pixel is cast exactly)."""
        from . import prior_lattice
        from .raycast import resolve_march

        return field.device.type == 'cpu' and prior_lattice.available() and \
            resolve_march(self.march, field.device, field.height.dtype) == 'numba'

    def _terms_lattice(self, pose: PoseEstimate, model: CameraModel, field: Any,
                       pose_cov: Any) -> tuple:
        """The cast's per-pixel terms with :mod:`.prior_lattice` (CPU): (range (H, W)
        float32, status (H, W) int8, source (H, W) int32, (var_rest, var_vert_first,
        var_vert, var_att) (H, W) float64 m^2, perf_counter after the cast).

        Sigma points: cast exactly for every pixel that was cast exactly; a pixel found near
        its prediction takes the ratio (sigma-point / first-order vertical variance)
        interpolated from its lattice cell's corners, where all four are finite, else it is
        cast exactly too."""
        from . import prior_lattice
        from .raycast import RayStatus

        h, w = model.height, model.width
        d_cam, _, norm = self.rays(model, True)
        d_enu = (d_cam.reshape(-1, 3) @ pose.R_enu_cam.T).reshape(h, w, 3)
        status, rng64, info = prior_lattice.cast_frame(
            field, pose.p_enu_cam, d_enu, norm, max_range_m=self.max_range_m,
            stride=self.cast_stride, march=self.march)
        self.last_cast_info = {k: v for k, v in info.items() if k != 'exact_mask'}
        hit = status == int(RayStatus.HIT)
        t = time.perf_counter()
        terms = prior_lattice.hit_terms(field, pose.p_enu_cam, d_enu, rng64, pose_cov)
        t2 = time.perf_counter()
        self.last_cast_info['ms_hit_terms'] = round((t2 - t) * 1e3, 3)
        var_rest, var_first, var_att = terms['var_rest'], terms['var_vert'], terms['var_att']
        source, delta = terms['source'], terms['delta']
        var_vert = var_first.copy()
        if self.sigma_points and hit.any():
            hole = self._camera_over_nodata(pose)

            def exact(mask: np.ndarray) -> None:
                if mask.any():
                    var_vert[mask] = self._sigma_point_var(field, pose, d_enu[mask],
                                                           rng64[mask], delta[mask],
                                                           var_first[mask], hole)

            exact_px = hit & info['exact_mask']
            exact(exact_px)
            inner = hit & ~info['exact_mask']
            if inner.any():
                with np.errstate(invalid='ignore', divide='ignore'):  # lattice pixels are read
                    ratio = np.where(var_first > 0, var_vert / var_first,
                                     np.where(var_vert == 0, 1.0, np.inf))
                ratio = prior_lattice.interpolate_lattice(ratio, self.cast_stride)
                ok = inner & np.isfinite(ratio)
                var_vert[ok] = var_first[ok] * ratio[ok]
                exact(inner & ~ok)
        return rng64.astype(np.float32), status, source, (var_rest, var_first, var_vert,
                                                          var_att), t2

    def _terms_full(self, pose: PoseEstimate, model: CameraModel, field: Any,
                    pose_cov: Any) -> tuple:
        """The cast's per-pixel terms of :meth:`_terms_lattice` with one
        :func:`~.raycast.raycast` of every pixel (any device and march)."""
        import torch

        from .raycast import RayStatus, raycast, resolve_march

        h, w = model.height, model.width
        d_cam, _, _ = self.rays(model, True)
        d_enu = d_cam.reshape(-1, 3) @ pose.R_enu_cam.T
        # the torch loop issues many small ops: one thread (see cpu_threads); around the numba
        # march torch works on whole-frame arrays, where the default threads help
        loop = resolve_march(self.march, field.device, field.height.dtype) == 'torch'
        with cpu_threads(field.device, 1 if loop else torch.get_num_threads()):
            res = raycast(field, pose.p_enu_cam, d_enu, max_range_m=self.max_range_m,
                          pose_cov=pose_cov, march=self.march)
            rng = res.range_m.cpu().numpy().reshape(h, w)
            sigma = res.sigma_m.double().cpu().numpy().reshape(h, w)
            s_vert = res.sigma_vertical_m.double().cpu().numpy().reshape(h, w)
            s_att = res.sigma_attitude_m.double().cpu().numpy().reshape(h, w)
            status = res.status.cpu().numpy().reshape(h, w)
            var_rest = np.maximum(sigma ** 2 - s_vert ** 2 - s_att ** 2, 0.0)
            var_vert_first = s_vert ** 2
            var_vert = var_vert_first.copy()
            t2 = time.perf_counter()
            hit = (status == RayStatus.HIT).reshape(-1)
            if self.sigma_points and hit.any():
                # delta = sqrt(sigma_v^2 + P_zz) at the hit node, recovered from the vertical
                # term n_z delta / sin(g) (NaN at a zero grazing angle: sigma is infinite)
                sin_g = np.sin(res.grazing_rad.double().cpu().numpy()[hit])
                n_z = res.normal[:, 2].double().cpu().numpy()[hit]
                with np.errstate(divide='ignore', invalid='ignore'):
                    delta = s_vert.reshape(-1)[hit] * sin_g / n_z
                var_vert.reshape(-1)[hit] = self._sigma_point_var(
                    field, pose, d_enu[hit], rng.reshape(-1)[hit].astype(np.float64), delta,
                    var_vert_first.reshape(-1)[hit], self._camera_over_nodata(pose))
        return rng, status, res.source.cpu().numpy().reshape(h, w), (
            var_rest, var_vert_first, var_vert, s_att ** 2), t2

    def _sigma_point_var(self, field: Any, pose: PoseEstimate, d_hit: np.ndarray,
                         r0: np.ndarray, delta: np.ndarray, var_first: np.ndarray,
                         hole: bool) -> np.ndarray:
        """The sigma-point vertical variance ``((r+ - r)^2 + (r- - r)^2) / 2`` (m^2) of HIT
        rays (see :meth:`cast`).

        Args:
            d_hit: (N, 3) unit ENU rays; r0: (N,) their hit ranges, metres; delta: (N,)
                sqrt(sigma_v^2 + P_zz), metres (NaN: infinite variance); var_first: (N,) the
                first-order vertical variance, m^2 (stands in for a sigma point inside the
                terrain); hole: the camera is over nodata.
        """
        from .raycast import RayStatus, raycast

        # Raising the terrain by delta is lowering the camera by delta: shift each hit ray's
        # origin instead of building two shifted grids every frame.
        dev2 = np.zeros_like(r0)
        for sign in (1.0, -1.0):
            origin = np.repeat(pose.p_enu_cam[None, :], r0.size, axis=0)
            origin[:, 2] -= sign * np.nan_to_num(delta)
            # raised terrain can only bring the hit closer; lowered terrain only pushes it
            # farther (f + delta > 0 before r0): march from r0
            reach = min(self.max_range_m, float(r0.max()) + field.cell_m) \
                if sign > 0 else self.max_range_m
            rs = raycast(field, origin, d_hit, max_range_m=reach, ranges_only=True,
                         march=self.march, min_range_m=None if sign > 0 else r0,
                         unit_directions=True)
            r_s = rs.range_m.double().cpu().numpy()
            st_s = rs.status.cpu().numpy()
            ok = (st_s == RayStatus.HIT) & np.isfinite(delta)
            # the camera lowered into the terrain under it (it is within delta of the DEM
            # there): this sigma point does not exist; its first-order term stands in
            inside = st_s == RayStatus.BELOW_TERRAIN
            if hole and sign > 0:  # cannot be tested over a hole (see cast)
                inside |= st_s == RayStatus.UNAVAILABLE
            dev2 += 0.5 * np.where(ok, (r_s - r0) ** 2, np.where(inside, var_first, np.inf))
            n_inside = int(inside.sum())
            if n_inside:
                _LOG.debug('sigma points: camera %.2f m lower is inside the DEM for %d rays; '
                           'first-order vertical term used', float(np.nanmax(delta)), n_inside)
        return dev2

    def _ground_under(self, pose: PoseEstimate) -> float:
        """ENU height (m) of the height grid under the camera centre; NaN over nodata,
        outside the grid or without one."""
        import torch

        field = self.grid.field
        if field is None:
            return math.nan
        x, y = (float(v) for v in pose.p_enu_cam[:2])
        with torch.no_grad(), cpu_threads(field.device, 1):
            return float(field.sample(np.array([x]), np.array([y]))[0])

    def _camera_over_nodata(self, pose: PoseEstimate) -> bool:
        """True when the height grid has no data (or no grid) under the camera centre."""
        return not math.isfinite(self._ground_under(pose))

    def camera_clearance(self, pose: PoseEstimate) -> dict[str, float]:
        """How high the camera is above the DEM under it, against the sigma points' shift.

        Returns ``{'camera_above_dem_m': z_cam - DEM(x_cam, y_cam)`` (ENU, metres; NaN over
        nodata or outside the grid)``, 'dem_vertical_shift_m': sqrt(sigma_v^2 + P_zz)`` (the
        DEM vertical sigma at the nearest node and the camera height variance, metres; NaN
        outside the grid), ``'dem_data_under_camera'``: 1.0 where the DEM has data under the
        camera, 0.0 over nodata or outside the grid}; {} without a height grid.
        A camera less than the shift above the DEM sees it at grazing angles only, so nearly
        every prior is refused: on a vehicle this points to a DEM offset or a terrain change
        where it stands; one far above it (:data:`CAMERA_FAR_ABOVE_DEM_M`) to a datum error
        (the node warns on /diagnostics, :func:`clearance_warning`).
        """
        import torch

        field = self.grid.field
        if field is None:
            return {}
        x, y, z = (float(v) for v in pose.p_enu_cam)
        ground = self._ground_under(pose)
        with torch.no_grad(), cpu_threads(field.device, 1):
            sv = float(field.node_sigmas(np.array([x]), np.array([y]))[0][0])
        shift = math.sqrt(sv ** 2 + max(float(pose.position_cov[2, 2]), 0.0))
        return {'camera_above_dem_m': z - ground, 'dem_vertical_shift_m': shift,
                'dem_data_under_camera': float(math.isfinite(ground))}

    def height_consistency(self, result, pose: PoseEstimate, model: CameraModel
                           ) -> np.ndarray | None:
        """Is each MEASURED stereo point consistent with the DEM, judged in HEIGHT?

        The stereo point is placed in ENU; its height above/below the DEM surface at its
        (x, y) is compared with ``gate_k`` times the combined vertical sigma: DEM vertical
        sigma, DEM horizontal sigma times the slope, camera height sigma, attitude error times
        the horizontal reach, and the stereo range sigma projected on the vertical and on the
        slope. Gating in range along the ray is weak for grazing rays (a height error and the
        prior's sigma grow alike, non-linearly), and an object or a changed surface is a
        height statement. :func:`~.fusion.fuse` fuses only points that pass this test AND the
        range gate (a point of plausible height on an object must not be averaged with the
        ground the ray reaches behind it). (H, W) bool, False where there is no DEM under the
        point; None when there are no stereo points.
        """
        import torch

        from .contract import Provenance

        meas = result.provenance == Provenance.MEASURED
        if not meas.any():
            return None
        field = self.grid.field
        d_cam, _, _ = self.rays(model, True)
        d = d_cam[meas] @ pose.R_enu_cam.T  # unit rays, ENU
        r = np.linalg.norm(result.points[meas].astype(np.float64), axis=-1)
        p = pose.p_enu_cam + d * r[:, None]
        eps = max(0.5 * field.cell_m, 0.5)
        xs = np.concatenate([p[:, 0], p[:, 0] + eps, p[:, 0] - eps, p[:, 0], p[:, 0]])
        ys = np.concatenate([p[:, 1], p[:, 1], p[:, 1], p[:, 1] + eps, p[:, 1] - eps])
        with torch.no_grad(), cpu_threads(field.device, 1):  # small ops: see cpu_threads
            z = field.sample(xs, ys).double().cpu().numpy().reshape(5, -1)
            # the DEM sigmas under each point, as the prior's sigma uses them (per source,
            # grown with survey age to the grid's epoch)
            sig_v, sig_h = (s.double().cpu().numpy() for s in field.node_sigmas(p[:, 0], p[:, 1]))
        slope = np.hypot(z[1] - z[2], z[3] - z[4]) / (2 * eps)
        d_h = np.hypot(d[:, 0], d[:, 1])
        att = float(max(pose.rpy_sigma[0], pose.rpy_sigma[1]))
        s_s = result.sigma[meas].astype(np.float64)
        var = (sig_v ** 2 + (sig_h * slope) ** 2 + float(pose.position_cov[2, 2])
               + (r * att * d_h) ** 2 + (s_s * (np.abs(d[:, 2]) + d_h * slope)) ** 2)
        with np.errstate(invalid='ignore'):
            ok = np.abs(p[:, 2] - z[0]) <= self.fusion.gate_k * np.sqrt(var)
        out = np.zeros(meas.shape, dtype=bool)
        out[meas] = ok & np.isfinite(z[0])
        return out

    def apply(self, result, pose: PoseEstimate | None, model: CameraModel,
              params: Mapping[str, Any], stereo: Any = None,
              cast: dict[str, Any] | None = None) -> dict[str, int]:
        """Ray-cast and fuse into ``result`` (a FrameResult, in place). Without a pose, or
        without a height grid (its build failed: :meth:`update_grid`), every point keeps its
        stereo class and NONE points get PRIOR_UNAVAILABLE.

        ``stereo``: the frame's core.camera.StereoModel (``fb`` = f * B in px m, ``delta_cx``
        px); with it, a disparity beyond the stereo limit can still rule a prior out (see
        ``weak_stereo`` of :func:`~.fusion.fuse`). ``cast``: this frame's :meth:`cast` when
        it was made already (beside the stereo), else it is made here."""
        from .contract import Flag, Provenance

        pri = cast if cast is not None else (self.cast(pose, model) if pose is not None
                                             else None)
        if pri is None or self.grid.field is None:
            if pri is not None:
                result.timings_ms.update(pri['timings_ms'])
            none = result.provenance == Provenance.NONE
            result.flags[none] |= np.uint16(Flag.PRIOR_UNAVAILABLE)
            return {'fused': 0, 'prior': 0, 'conflict': 0,
                    'measured': int((result.provenance == Provenance.MEASURED).sum())}
        _, ray_unit, norm = self.rays(model, bool(params.get('output.unrectify_points', True)))
        t = time.perf_counter()
        weak = None
        if stereo is not None and getattr(result, 'disparity', None) is not None \
                and getattr(result, 'sigma_disparity', None) is not None:
            with np.errstate(divide='ignore', invalid='ignore'):
                d_prior = float(stereo.fb) * norm / pri['range_m'] + float(stereo.delta_cx)
            weak = (result.disparity, result.sigma_disparity, d_prior)
        from . import fusion_numba

        field = self.grid.field
        if field.device.type == 'cpu' and fusion_numba.available():
            # the height test and the fusion in one compiled pass (equal to the two below)
            counts = fusion_numba.fuse_frame(
                result, field, pose, self.rays(model, True)[0], ray_unit, norm,
                pri['range_m'], pri['sigma_m'], pri['status'], pri['source'], self.fusion,
                surface_model_ids=self.surface_model_ids, weak_stereo=weak)
        else:  # the reference
            counts = fuse(result, ray_unit, norm, pri['range_m'], pri['sigma_m'],
                          pri['status'], pri['source'], self.fusion,
                          pose_degraded=pose.degraded, surface_model_ids=self.surface_model_ids,
                          consistent=self.height_consistency(result, pose, model),
                          weak_stereo=weak)
        result.timings_ms.update(pri['timings_ms'])
        result.timings_ms['fusion'] = (time.perf_counter() - t) * 1e3
        return counts
