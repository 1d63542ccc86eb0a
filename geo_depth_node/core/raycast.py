"""Ray-casting camera rays into a local ENU height field (torch, any device), with a prior sigma.

ROS-free; torch is imported lazily. The height field is a regular grid in a local ENU frame
(see :mod:`geo_depth_node.core.geodesy`): node ``(i, j)`` (row ``i``, column ``j``) lies at
``x = x0_m + j * cell_m`` (east), ``y = y0_m + i * cell_m`` (north); row 0 is the southern
edge. ``height[i, j]`` is the ENU **z** of the terrain surface at that node (not a geodetic
height: the Earth's curvature is already in it), NaN where there is no data. Between nodes the
terrain is bilinear. Rays are straight lines in ENU (atmospheric refraction is ignored: at
1 km it would lift the ray by about 1 cm).

Algorithm (:func:`raycast`), all rays at once, no Python loop per ray:

1. Each ray ``p(t) = o + t d`` (``d`` unit, ``t`` = range in metres) is clipped to the part
   that can touch the terrain: ``0 <= t <= max_range_m``, inside the grid, and at or below the
   highest terrain node ``z_max`` of the grid.
2. The clipped part is sampled every ``step_m`` (default half a cell), a chunk of samples per
   ray per iteration (rays that have finished drop out); the first sample with
   ``f(t) = z_ray(t) - terrain(x(t), y(t)) <= 0`` brackets the hit.
3. The bracket is refined by bisection to below ``tol_m`` and a final secant step.
   Features thinner than ``step_m`` along the ray can be missed (a ray that enters and leaves
   a sharp ridge between two samples).

Nodata where the march starts (a hole in the DEM under the camera, typically): the ray is
followed over the hole on the same lattice ``t0 + k step`` to its first sample with data. If
the ray is above the terrain there, the march starts from that sample as usual: the terrain in
a hole the ray STARTS over is taken to be below the ray (the camera stands above the ground
under it; a ray that comes out of the hole above the terrain around it is taken not to have
touched ground in between). If it is at or below the terrain there, it crossed the terrain
before: the hole's edge between the last nodata sample and this one is located by bisection
(on nodata or not); where the ray is above the terrain at the edge, the crossing lies in data
between the edge and the sample (a HIT, refined as usual), else in the hole (UNAVAILABLE). A
ray that stays over nodata until it leaves the grid or reaches ``max_range_m`` is UNAVAILABLE;
one that climbs above ``z_max`` over the hole first is above all known terrain (the end rules
below: SKY). BELOW_TERRAIN cannot be tested over a hole. A hole FARTHER along a ray that has
had data under it still ends the ray as UNAVAILABLE (what is in it could block the ray).
Without this rule a hole of a few metres under the robot took every prior of the frame.

On CUDA (float32 fields, triton installed) steps 2 and 3 run in ONE Triton kernel
(:mod:`.raycast_triton`: a per-ray state machine, coarse skip or fine steps per iteration,
several at once where the terrain's slope bound proves them clear) instead of the torch
loop, whose per-iteration compaction costs a host sync; the statuses are the same and the
ranges agree to the refinement tolerance (tested in Triton's CPU interpreter,
test_triton_kernels.py). On the CPU, with numba installed, they run as a compiled per-ray
march over all cores (:mod:`.raycast_numba`), the same method; the torch loop is the
fallback everywhere.

Status per ray (:class:`RayStatus`), defined precisely:

* ``HIT``: a crossing of the terrain within ``max_range_m`` (inside the grid, over data).
* ``SKY``: no crossing within ``max_range_m`` and the ray is known to hit nothing: either it
  stays inside the grid up to ``max_range_m`` (where it may still be below ``z_max``: "nothing
  within range"), or it leaves the grid earlier while above ``z_max`` and not descending
  (only with ``sky_outside_grid=True``, the default: terrain outside the grid is assumed to
  be no higher than ``z_max`` inside it; set it False to get UNAVAILABLE there).
* ``UNAVAILABLE``: the answer is unknown: the ray meets a nodata cell (NaN in any of the 4
  nodes of the bilinear patch) while at or below ``z_max`` before any crossing (after the
  nodata its march may have started over, see above), or comes out of that starting nodata
  below the terrain, or stays over it in the ``z_max`` slab to its end, or it leaves the grid
  before ``max_range_m`` while it could still hit terrain outside it, or the origin is outside
  the grid.
* ``BELOW_TERRAIN``: the origin itself is at or below the terrain surface (camera "inside"
  the DEM: a surface model above the road, a DEM or pose error). No range.

Prior sigma along the ray (first-order, derived for the tangent plane at the hit point):
let ``n`` be the unit terrain normal at the hit (``n_z > 0``), ``d`` the unit ray direction,
``r`` the range and ``s = -n . d = sin(g)`` with ``g`` the grazing angle between the ray and
the tangent plane. The plane through the hit point ``q`` gives ``r = n . (q - o) / (n . d)``.

* DEM vertical error: the surface moves up by ``dh`` (``q -> q + dh e_z``):
  ``dr = dh n_z / (n . d) = -dh n_z / s``, so ``sigma_r = sigma_v n_z / sin(g)``
  (``n_z = cos(slope)``; on flat ground the familiar ``sigma_v / sin(g)``).
* DEM horizontal error: the surface moves by ``ds = (dsx, dsy, 0)`` with independent
  per-axis 1-sigma ``sigma_h``: ``dr = n . ds / (n . d)``, so
  ``sigma_r = sigma_h |n_h| / sin(g) = sigma_h sin(slope) / sin(g)`` (equivalently a height
  error of ``sigma_h tan(slope)``).
* Camera position error ``dc`` (covariance ``P``, 3x3 ENU): ``dr = n . dc / s``, so
  ``sigma_r^2 = n^T P n / s^2``.
* Camera attitude error, a small rotation vector ``dtheta`` in ENU (``R' = exp([dtheta]x) R``,
  covariance ``A``): ``dd = dtheta x d``, ``dr = -r (n . dd) / (n . d) = r dtheta . (d x n) / s``,
  so ``sigma_r^2 = r^2 (d x n)^T A (d x n) / s^2``.

All are independent and add in quadrature: ``sigma^2 = sigma_dem^2 + sigma_pose^2``. The DEM
sigmas are those of the grid node nearest the hit (the lead source's values, already grown
with the survey's age by the DEM module). A Monte-Carlo test checks the expression.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import math
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .geodesy import EnuFrame

_LOG = logging.getLogger(__name__)

#: Samples (rays x steps) evaluated per marching iteration: bounds the working memory
#: (about 100 bytes per sample) against the per-iteration overhead.
_SAMPLE_BUDGET = 1 << 18
#: side (cells) of the blocks whose height and slope bounds let the march skip (default)
BLOCK_CELLS = 8
#: compiled marches ('triton', 'numba') that failed in this process (then the torch loop)
_KERNEL_BROKEN: list[str] = []


class RayStatus(enum.IntEnum):
    """Outcome of one ray (see the module docstring for the precise definitions)."""

    HIT = 1  #: crossed the terrain within max range
    SKY = 2  #: known to hit nothing within max range
    UNAVAILABLE = 3  #: unknown: nodata, or left the grid while it could still hit
    BELOW_TERRAIN = 4  #: the origin is at or below the terrain surface


def resolve_device(device: Any = 'auto') -> 'torch.device':
    """'auto' -> cuda when available else cpu; anything else -> ``torch.device(device)``."""
    import torch

    if device is None or device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(device)


@dataclasses.dataclass(eq=False)
class HeightField:
    """A regular local-ENU height grid on a torch device (see the module docstring).

    Attributes:
        height: (Ny, Nx) float tensor, ENU z of the terrain at each node, metres; NaN = no data.
        x0_m, y0_m: ENU x / y of node (0, 0) (the south-west corner), metres.
        cell_m: node spacing in x and y, metres.
        source: (Ny, Nx) int32 tensor, source id of each node (0 where no data).
        sigma_v: (Ny, Nx) float tensor, vertical 1-sigma of each node, metres.
        sigma_h: (Ny, Nx) float tensor, horizontal per-axis 1-sigma of each node, metres.
        frame: the ENU frame the grid lives in (metadata; None for synthetic fields).
        bvh: a :class:`~.raycast_embree.TerrainBvh` of this field, or None: the numba march
            then starts each ray at the BVH's safe start (:func:`raycast`). Built by
            :meth:`build_bvh` (seconds for a large grid: off the frame path).
    """

    height: 'torch.Tensor'
    x0_m: float
    y0_m: float
    cell_m: float
    source: 'torch.Tensor | None' = None
    sigma_v: 'torch.Tensor | None' = None
    sigma_h: 'torch.Tensor | None' = None
    frame: 'EnuFrame | None' = None
    bvh: Any = dataclasses.field(default=None, repr=False, compare=False)
    _cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        import torch

        h = self.height
        if not isinstance(h, torch.Tensor):
            h = torch.as_tensor(np.asarray(h, dtype=np.float32))
        if h.ndim != 2 or h.shape[0] < 2 or h.shape[1] < 2:
            raise ValueError(f'height must be (Ny, Nx) with Ny, Nx >= 2, got {tuple(h.shape)}')
        if not h.is_floating_point():
            raise ValueError(f'height must be a float tensor, got {h.dtype}')
        self.height = h
        for name in ('x0_m', 'y0_m', 'cell_m'):
            v = float(getattr(self, name))
            if not math.isfinite(v):
                raise ValueError(f'HeightField.{name} must be finite, got {v}')
            setattr(self, name, v)
        if not self.cell_m > 0:
            raise ValueError(f'HeightField.cell_m must be > 0, got {self.cell_m}')
        valid = torch.isfinite(h)
        if self.source is None:
            self.source = valid.to(torch.int32)
        for name, dtype in (('source', torch.int32), ('sigma_v', h.dtype), ('sigma_h', h.dtype)):
            t = getattr(self, name)
            if t is None:
                t = torch.zeros(h.shape, dtype=dtype, device=h.device)
            elif not isinstance(t, torch.Tensor):
                t = torch.as_tensor(np.asarray(t))
            if t.ndim == 0:
                t = t.expand(h.shape)
            if tuple(t.shape) != tuple(h.shape):
                raise ValueError(f'HeightField.{name} must have the shape of height '
                                 f'{tuple(h.shape)}, got {tuple(t.shape)}')
            setattr(self, name, t.to(device=h.device, dtype=dtype).contiguous())
        self.source = torch.where(valid, self.source, torch.zeros_like(self.source))
        finite = h[valid]
        if finite.numel():
            self.z_min = float(finite.min())
            self.z_max = float(finite.max())
        else:
            self.z_min = self.z_max = float('nan')
        _LOG.debug('height field %s on %s: z %.2f..%.2f m, %.1f %% data', tuple(h.shape),
                   h.device, self.z_min, self.z_max, 100.0 * float(valid.float().mean()))

    def build_bvh(self) -> bool:
        """Build :attr:`bvh` when it can serve (a CPU field with data, Open3D installed).

        Returns:
            True when the field has a BVH now.
        """
        from .raycast_embree import TerrainBvh, bvh_available

        if self.bvh is None and self.device.type == 'cpu' and math.isfinite(self.z_max) \
                and bvh_available():
            self.bvh = TerrainBvh(self)
        return self.bvh is not None

    @property
    def shape(self) -> tuple[int, int]:
        """(Ny, Nx)."""
        return int(self.height.shape[0]), int(self.height.shape[1])

    @property
    def device(self) -> 'torch.device':
        """The device of the tensors."""
        return self.height.device

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) of the nodes, ENU metres."""
        ny, nx = self.shape
        return (self.x0_m, self.x0_m + (nx - 1) * self.cell_m,
                self.y0_m, self.y0_m + (ny - 1) * self.cell_m)

    def node_xy(self) -> tuple[np.ndarray, np.ndarray]:
        """ENU x of the columns (Nx,) and y of the rows (Ny,), float64 metres."""
        ny, nx = self.shape
        return (self.x0_m + self.cell_m * np.arange(nx, dtype=np.float64),
                self.y0_m + self.cell_m * np.arange(ny, dtype=np.float64))

    def block_max(self, block: int) -> 'torch.Tensor':
        """Highest node of every ``block`` x ``block``-cell block, dilated by one block.

        Returns:
            (nby, nbx) tensor: entry (bi, bj) bounds the terrain (bilinear) over blocks
            bi-1..bi+1, bj-1..bj+1; +inf where any of their nodes has no data (so rays are
            never skipped over nodata). Cached per block size.
        """
        import torch

        def build(b: int, nby: int, nbx: int) -> tuple['torch.Tensor', int]:
            ny, nx = self.shape
            h = torch.where(torch.isnan(self.height),
                            torch.full_like(self.height, float('inf')), self.height)
            pad = torch.full((nby * b + 1, nbx * b + 1), -float('inf'), dtype=h.dtype,
                             device=h.device)
            pad[:ny, :nx] = h
            return pad, b + 1  # block b covers nodes b*bi .. b*bi + b

        return self._block_reduce('block_max', block, build)

    def block_data(self, block: int) -> 'torch.Tensor':
        """Where the terrain has data, per ``block`` x ``block``-cell block, dilated by one
        block (the blocks of :meth:`block_max`).

        Returns:
            (nby, nbx) tensor of the height dtype: 1 where some node of blocks bi-1..bi+1,
            bj-1..bj+1 has data, 0 where all of them are nodata (or outside the grid): a ray
            segment of ``block`` cells starting in such a block meets only nodata. Cached per
            block size.
        """
        import torch

        def build(b: int, nby: int, nbx: int) -> tuple['torch.Tensor', int]:
            ny, nx = self.shape
            pad = torch.zeros((nby * b + 1, nbx * b + 1), dtype=self.height.dtype,
                              device=self.height.device)
            pad[:ny, :nx] = torch.isfinite(self.height).to(self.height.dtype)
            return pad, b + 1  # block b covers nodes b*bi .. b*bi + b

        return self._block_reduce('block_data', block, build)

    def block_slope(self, block: int) -> 'torch.Tensor':
        """Bound on the terrain's horizontal gradient over every ``block`` x ``block``-cell
        block, dilated by one block (the blocks of :meth:`block_max`).

        Within a cell the bilinear surface's ``|dz/dx|`` is at most the larger of the cell's
        two x-edge differences over ``cell_m`` (likewise y), so ``hypot`` of the two bounds
        ``|grad z|`` there. Returns (nby, nbx) float64 tensor, dimensionless (m per m); +inf
        where any node of blocks bi-1..bi+1, bj-1..bj+1 has no data. Cached per block size.
        """
        import torch

        def build(b: int, nby: int, nbx: int) -> tuple['torch.Tensor', int]:
            ny, nx = self.shape
            h = self.height.double()
            ex = (h[:, 1:] - h[:, :-1]).abs()  # (Ny, Nx-1): x-edges
            ey = (h[1:, :] - h[:-1, :]).abs()  # (Ny-1, Nx): y-edges
            gx = torch.maximum(ex[:-1, :], ex[1:, :])  # per cell (Ny-1, Nx-1)
            gy = torch.maximum(ey[:, :-1], ey[:, 1:])
            g = torch.hypot(gx, gy) / self.cell_m
            g = torch.where(torch.isnan(g), torch.full_like(g, float('inf')), g)
            pad = torch.zeros((nby * b, nbx * b), dtype=g.dtype, device=g.device)
            pad[:ny - 1, :nx - 1] = g
            return pad, b  # block b covers cells b*bi .. b*bi + b - 1

        return self._block_reduce('block_slope', block, build)

    def _block_reduce(self, name: str, block: int, build: Callable) -> 'torch.Tensor':
        """Cached max over the ``block``-cell blocks of the padded array ``build(b, nby, nbx)``
        returns (with its window size), dilated by one block; (nby, nbx)."""
        import torch.nn.functional as F  # noqa: N812 - usual torch alias

        key = (name, int(block))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        ny, nx = self.shape
        b = int(block)
        nby, nbx = max(1, -(-(ny - 1) // b)), max(1, -(-(nx - 1) // b))
        pad, window = build(b, nby, nbx)
        m = F.max_pool2d(pad[None, None], kernel_size=window, stride=b)
        m = F.max_pool2d(m, kernel_size=3, stride=1, padding=1)[0, 0]
        self._cache[key] = m
        return m

    def to(self, device: Any) -> 'HeightField':
        """A copy on ``device``."""
        dev = resolve_device(device)
        return HeightField(self.height.to(dev), self.x0_m, self.y0_m, self.cell_m,
                           self.source.to(dev), self.sigma_v.to(dev), self.sigma_h.to(dev),
                           self.frame)

    def sample(self, x: Any, y: Any) -> 'torch.Tensor':
        """Bilinear terrain z at ENU (x, y) (tensors or arrays, same shape), NaN outside/nodata."""
        import torch

        dt = self.height.dtype
        gx = (torch.as_tensor(x, dtype=torch.float64, device=self.device) - self.x0_m) / self.cell_m
        gy = (torch.as_tensor(y, dtype=torch.float64, device=self.device) - self.y0_m) / self.cell_m
        z, _, _ = _bilinear(self.height.reshape(-1), self.shape, gx.to(dt), gy.to(dt))
        return z

    def node_sigmas(self, x: Any, y: Any) -> tuple['torch.Tensor', 'torch.Tensor']:
        """(sigma_v, sigma_h) of the node nearest to ENU (x, y) (tensors or arrays, same
        shape), metres, in the field's dtype and on its device; NaN outside the grid. These
        are the sigmas the ray-cast's prior sigma uses (per source, grown with survey age)."""
        import torch

        gx = (torch.as_tensor(x, dtype=torch.float64, device=self.device) - self.x0_m) / self.cell_m
        gy = (torch.as_tensor(y, dtype=torch.float64, device=self.device) - self.y0_m) / self.cell_m
        node, inside = self.nearest_node(gx, gy)
        nan = torch.full_like(gx, float('nan'), dtype=self.height.dtype)
        return (torch.where(inside, self.sigma_v.reshape(-1)[node], nan),
                torch.where(inside, self.sigma_h.reshape(-1)[node], nan))

    def nearest_node(self, gx: 'torch.Tensor', gy: 'torch.Tensor'
                     ) -> tuple['torch.Tensor', 'torch.Tensor']:
        """(flat index into the (Ny, Nx) node arrays of the node nearest to grid-index
        coordinates (gx, gy), clamped to the grid (long); whether (gx, gy) lies within half a
        cell of the grid (bool)). NaN coordinates give node 0, outside."""
        import torch

        ny, nx = self.shape
        gx, gy = gx.double(), gy.double()
        inside = (gx >= -0.5) & (gx <= nx - 0.5) & (gy >= -0.5) & (gy <= ny - 0.5)
        jx = torch.round(torch.nan_to_num(gx, nan=0.0)).clamp(0, nx - 1).long()
        jy = torch.round(torch.nan_to_num(gy, nan=0.0)).clamp(0, ny - 1).long()
        return jy * nx + jx, inside


@dataclasses.dataclass(frozen=True)
class PoseCovariance:
    """Covariance of the camera pose in the local ENU frame.

    Attributes:
        position: (3, 3) covariance of the camera centre, ENU, m^2.
        attitude: (3, 3) covariance of the small rotation vector ``dtheta`` expressed in ENU,
            rad^2, for the perturbation ``R_enu_cam' = exp([dtheta]x) R_enu_cam``.
    """

    position: np.ndarray
    attitude: np.ndarray

    def __post_init__(self) -> None:
        for name in ('position', 'attitude'):
            m = np.asarray(getattr(self, name), dtype=np.float64)
            if m.shape != (3, 3) or not np.all(np.isfinite(m)):
                raise ValueError(f'PoseCovariance.{name} must be a finite (3, 3) matrix, got '
                                 f'shape {m.shape}')
            if not np.allclose(m, m.T, atol=1e-12 + 1e-9 * np.abs(m).max()):
                raise ValueError(f'PoseCovariance.{name} must be symmetric: {m.tolist()}')
            if np.linalg.eigvalsh(m).min() < -1e-12 * max(1.0, np.abs(m).max()):
                raise ValueError(f'PoseCovariance.{name} is not positive semi-definite')
            object.__setattr__(self, name, m)

    @staticmethod
    def zero() -> 'PoseCovariance':
        """A perfectly known pose."""
        return PoseCovariance(np.zeros((3, 3)), np.zeros((3, 3)))

    @staticmethod
    def from_rpy(position_cov: Any, rpy_rad: Any, sigma_rpy_rad: Any) -> 'PoseCovariance':
        """Build from independent roll/pitch/yaw sigmas of an attitude in ENU.

        The attitude is ``R = Rz(yaw) Ry(pitch) Rx(roll)`` (REP-103 fixed-axis roll, pitch,
        yaw; the same as transforms3d ``euler2mat(roll, pitch, yaw, 'sxyz')``). A perturbation
        of (roll, pitch, yaw) by (dr, dp, dy) rotates by ``dtheta = J (dr, dp, dy)`` in ENU with
        ``J = [Rz Ry e_x, Rz e_y, e_z]``; the attitude covariance is ``J diag(sigma^2) J^T``.
        For a camera rigidly mounted on the body, pass the body's rpy and sigmas: the ENU
        rotation vector is the same for the camera.

        Args:
            position_cov: (3, 3) position covariance, ENU, m^2 (or (3,) per-axis sigmas, m).
            rpy_rad: (3,) roll, pitch, yaw, radians.
            sigma_rpy_rad: (3,) 1-sigma of roll, pitch, yaw, radians.
        """
        rpy = np.asarray(rpy_rad, dtype=np.float64).reshape(-1)
        sig = np.asarray(sigma_rpy_rad, dtype=np.float64).reshape(-1)
        if rpy.shape != (3,) or sig.shape != (3,) or np.any(sig < 0) or not np.all(np.isfinite(sig)):
            raise ValueError(f'rpy and sigma_rpy must be (3,) with sigma >= 0, got {rpy} / {sig}')
        pos = np.asarray(position_cov, dtype=np.float64)
        if pos.shape == (3,):
            pos = np.diag(pos ** 2)
        _, pitch, yaw = rpy
        cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
        rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
        ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
        jac = np.stack([rz @ ry @ np.array([1.0, 0, 0]), rz @ np.array([0, 1.0, 0]),
                        np.array([0, 0, 1.0])], axis=1)
        return PoseCovariance(pos, jac @ np.diag(sig ** 2) @ jac.T)


@dataclasses.dataclass
class RaycastResult:
    """Per-ray results of :func:`raycast`; all tensors on the field's device, N rays.

    Attributes:
        status: (N,) int8 :class:`RayStatus`.
        range_m: (N,) distance from the origin to the hit along the unit ray, metres; NaN
            unless HIT.
        point: (N, 3) hit point in ENU, metres; NaN unless HIT.
        normal: (N, 3) unit terrain normal at the hit (from the bilinear gradient), NaN unless HIT.
        grazing_rad: (N,) angle between the ray and the terrain tangent plane, radians.
        source: (N,) int32 source id of the grid node nearest the hit (0 unless HIT).
        sigma_m: (N,) 1-sigma of ``range_m`` (DEM and pose), metres; NaN unless HIT.
        sigma_dem_m: (N,) the DEM part (vertical, horizontal), metres.
        sigma_pose_m: (N,) the pose part (position, attitude), metres.
        sigma_vertical_m: (N,) the part of ``sigma_m`` from a common vertical offset between
            the DEM and the camera (DEM vertical sigma and camera height variance):
            ``n_z sqrt(sigma_v^2 + P_zz) / sin(g)``, metres.
        sigma_attitude_m: (N,) the attitude part, metres.
        (``sigma_m^2 - sigma_vertical_m^2 - sigma_attitude_m^2`` is the rest: DEM horizontal
        and camera horizontal position.)
    """

    status: 'torch.Tensor'
    range_m: 'torch.Tensor'
    point: 'torch.Tensor'
    normal: 'torch.Tensor'
    grazing_rad: 'torch.Tensor'
    source: 'torch.Tensor'
    sigma_m: 'torch.Tensor'
    sigma_dem_m: 'torch.Tensor'
    sigma_pose_m: 'torch.Tensor'
    sigma_vertical_m: 'torch.Tensor'
    sigma_attitude_m: 'torch.Tensor'

    def prior_flags(self, surface_model_ids: Iterable[int] = ()) -> 'torch.Tensor':
        """Contract flags (uint16 bits of :class:`~geo_depth_node.core.contract.Flag`) per ray.

        SKY -> ``SKY``; UNAVAILABLE and BELOW_TERRAIN -> ``PRIOR_UNAVAILABLE``; HIT on a source
        listed in ``surface_model_ids`` (DSM) -> ``PRIOR_SURFACE_MODEL``; other HITs -> 0.
        Returned as int32 (torch has no uint16 arithmetic); cast when packing.
        """
        import torch

        from .contract import Flag

        st = self.status
        out = torch.zeros(st.shape, dtype=torch.int32, device=st.device)
        out[st == int(RayStatus.SKY)] = int(Flag.SKY)
        out[(st == int(RayStatus.UNAVAILABLE)) | (st == int(RayStatus.BELOW_TERRAIN))] = \
            int(Flag.PRIOR_UNAVAILABLE)
        ids = [int(i) for i in surface_model_ids]
        if ids:
            dsm = torch.isin(self.source, torch.tensor(ids, dtype=self.source.dtype, device=st.device))
            out[(st == int(RayStatus.HIT)) & dsm] |= int(Flag.PRIOR_SURFACE_MODEL)
        return out

    def counts(self) -> dict[str, int]:
        """Number of rays per status name."""
        import torch

        c = torch.bincount(self.status.long().reshape(-1), minlength=len(RayStatus) + 1).cpu()
        return {s.name: int(c[int(s)]) for s in RayStatus}


def _bilinear(hflat: 'torch.Tensor', shape: tuple[int, int], gx: 'torch.Tensor',
              gy: 'torch.Tensor') -> tuple['torch.Tensor', 'torch.Tensor', 'torch.Tensor']:
    """Bilinear z at grid-index coordinates (gx column, gy row); NaN outside the nodes or where a
    patch node is NaN. Also returns dz/dgx and dz/dgy (per index unit)."""
    import torch

    ny, nx = shape
    inside = (gx >= 0) & (gx <= nx - 1) & (gy >= 0) & (gy <= ny - 1)
    gxc = torch.nan_to_num(gx, nan=0.0).clamp(0, nx - 1)
    gyc = torch.nan_to_num(gy, nan=0.0).clamp(0, ny - 1)
    ix = torch.floor(gxc).clamp(max=nx - 2)
    iy = torch.floor(gyc).clamp(max=ny - 2)
    wx, wy = gxc - ix, gyc - iy
    base = iy.long() * nx + ix.long()
    h00 = hflat[base]
    h01 = hflat[base + 1]
    h10 = hflat[base + nx]
    h11 = hflat[base + nx + 1]
    a = h00 + wx * (h01 - h00)
    b = h10 + wx * (h11 - h10)
    z = a + wy * (b - a)
    nan = torch.full_like(z, float('nan'))
    z = torch.where(inside, z, nan)
    dzdx = (1 - wy) * (h01 - h00) + wy * (h11 - h10)
    dzdy = b - a
    return z, dzdx, dzdy


def _quad_form(v: 'torch.Tensor', m: Any) -> 'torch.Tensor':
    """``v_i^T M v_i`` for (N, 3) float64 ``v`` and a symmetric (3, 3) host matrix ``M``, as
    six scaled products (an (N, 3) @ (3, 3) matmul and a row sum cost ~5x more on the CPU)."""
    m = np.asarray(m, dtype=np.float64)
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    return (float(m[0, 0]) * x * x + float(m[1, 1]) * y * y + float(m[2, 2]) * z * z
            + float(m[0, 1] + m[1, 0]) * x * y + float(m[0, 2] + m[2, 0]) * x * z
            + float(m[1, 2] + m[2, 1]) * y * z)


def _as_rays(field: HeightField, origin: Any, directions: Any, unit: bool = False
             ) -> tuple['torch.Tensor', 'torch.Tensor']:
    """Validate and convert origin (3,)|(N, 3) and directions (N, 3) to float64 on the device
    (``unit``: the directions are known finite unit vectors: not checked nor normalised)."""
    import torch

    dev = field.device
    d = torch.as_tensor(directions, dtype=torch.float64, device=dev)
    if d.ndim != 2 or d.shape[1] != 3:
        raise ValueError(f'directions must be (N, 3), got {tuple(d.shape)}')
    if not unit:
        norm = torch.linalg.vector_norm(d, dim=1, keepdim=True)
        bad = ~(torch.isfinite(norm[:, 0]) & (norm[:, 0] > 0))
        if bool(bad.any()):
            raise ValueError(f'{int(bad.sum())} direction(s) are zero or non-finite')
        d = d / norm
    o = torch.as_tensor(origin, dtype=torch.float64, device=dev)
    if o.shape != (3,) and tuple(o.shape) != (d.shape[0], 3):
        raise ValueError(f'origin must be (3,) or (N, 3) with N = {d.shape[0]}, got {tuple(o.shape)}')
    if not bool(torch.isfinite(o).all()):
        raise ValueError('origin has non-finite values')
    if o.shape == (3,):
        o = o.expand(d.shape[0], 3)
    return o, d


#: ray-march implementations of :func:`raycast` (``march=``)
MARCHES = ('auto', 'torch', 'triton', 'numba')


def _auto_march(device: Any, dtype: Any) -> str:
    """What raycast(march='auto') uses: the Triton kernel on CUDA with float32 fields, numba on
    the CPU when it is installed, else the torch loop; a kernel that failed before in this
    process is not tried again."""
    if device.type == 'cuda':
        from .raycast_triton import kernel_ok

        return 'triton' if 'triton' not in _KERNEL_BROKEN and kernel_ok(device, dtype) \
            else 'torch'
    if device.type == 'cpu':
        from .raycast_numba import numba_available

        return 'numba' if 'numba' not in _KERNEL_BROKEN and numba_available() else 'torch'
    return 'torch'


def resolve_march(march: str, device: Any, dtype: Any) -> str:
    """The march :func:`raycast` runs for ``march`` on a field of this torch device and dtype:
    'auto' resolved (:func:`_auto_march`), a forced one checked.

    Raises:
        ValueError: an unknown name, or a march that cannot run there.
    """
    if march not in MARCHES:
        raise ValueError(f'march must be one of {MARCHES}, got {march!r}')
    if march == 'auto':
        return _auto_march(device, dtype)
    if march == 'triton':
        from .raycast_triton import kernel_ok

        if not kernel_ok(device, dtype):
            raise ValueError(f'the Triton ray-march kernel cannot run on {device} with {dtype}')
    elif march == 'numba':
        from .raycast_numba import numba_available

        if device.type != 'cpu' or not numba_available():
            raise ValueError(f'the numba ray-march needs numba and a CPU field, got {device}'
                             + ('' if numba_available() else ' and numba is not installed'))
    return march


def warm_up(device: Any = 'auto', march: str = 'auto') -> float:
    """Cast a few rays into a tiny field on ``device`` with ``march``, so that a compiled march
    is ready before the first frame (numba: loaded from its disk cache, ~1 s, or compiled after
    an install; Triton: JIT-compiled). A march that fails in 'auto' mode is logged and the
    torch loop answers from then on, as in :func:`raycast`.

    Returns:
        Seconds taken.

    Raises:
        ValueError: a forced ``march`` that cannot run on ``device``.
    """
    import time

    import torch

    t = time.perf_counter()
    dev = resolve_device(device)
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing='ij')
    field = HeightField((0.1 * xx + 0.05 * yy).to(dev), 0.0, 0.0, 1.0)
    d = np.array([[1.0, 0.3, -0.2], [0.2, 1.0, -0.5], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    raycast(field, np.array([1.0, 1.0, 3.0]), d, max_range_m=20.0, march=march)
    return time.perf_counter() - t


def march_params(field: HeightField, step_m: float | None = None, tol_m: float = 1e-4
                 ) -> tuple[float, int]:
    """(sampling step, metres: ``step_m`` or half a cell; bisections that refine a bracket
    one step long to ``tol_m``) of the march of :func:`raycast`.

    Raises:
        ValueError: a step or tolerance that is not > 0.
    """
    step = 0.5 * field.cell_m if step_m is None else float(step_m)
    if not step > 0:
        raise ValueError(f'step_m must be > 0, got {step_m!r}')
    if not tol_m > 0:
        raise ValueError(f'tol_m must be > 0, got {tol_m!r}')
    return step, max(1, int(math.ceil(math.log2(max(step, tol_m) / tol_m))) + 1)


def raycast(field: HeightField, origin: Any, directions: Any, *, max_range_m: float,
            step_m: float | None = None, pose_cov: PoseCovariance | None = None,
            sky_outside_grid: bool = True, tol_m: float = 1e-4, block_cells: int = BLOCK_CELLS,
            dtype: 'torch.dtype | None' = None, march: str = 'auto',
            ranges_only: bool = False, min_range_m: Any = None,
            unit_directions: bool = False) -> RaycastResult:
    """Cast rays into ``field`` (see the module docstring for the method, statuses and sigma).

    Args:
        field: the height field (its device is where everything runs).
        origin: (3,) or (N, 3) ray origins (camera centres), ENU metres.
        directions: (N, 3) ray directions in ENU (normalised here; zero rows are refused).
        max_range_m: farthest range searched, metres (> 0).
        step_m: sampling step along the ray, metres; default half a cell.
        pose_cov: camera pose covariance for the prior sigma; None = perfectly known pose.
        sky_outside_grid: rays leaving the grid above its highest node and not descending are
            SKY (True) or UNAVAILABLE (False).
        tol_m: refinement tolerance on the range, metres.
        block_cells: side of the blocks (in cells) of the max-height pyramid used to skip
            empty space; a speed knob only.
        dtype: computation dtype (default: the field's dtype; float32 keeps < 1 mm within a
            few km of the grid origin, float64 for tests or very large grids).
        march: which code marches and refines the rays (same statuses; ranges equal to the
            refinement tolerance): ``'torch'`` the batched torch loop (any device);
            ``'triton'`` one Triton kernel (core.raycast_triton; CUDA with float32 fields,
            or the CPU under ``sgm_triton.use_interpreter()`` for tests); ``'numba'`` the
            compiled per-ray march on the CPU (core.raycast_numba; needs numba);
            ``'auto'`` = triton on CUDA, numba on the CPU, else torch (a compiled march
            that fails is logged once and the torch loop answers from then on).
        ranges_only: compute only ``status`` and ``range_m``; the hit geometry and the sigma
            fields of the result are NaN (0 for ``source``), as read-only expanded views.
            For repeated casts of the same rays (the sigma points of GeoPrior.cast).
        min_range_m: None, a number or (N,) per-ray ranges, metres: the march starts there
            (the first crossing at or after it is the hit; a ray at or below the terrain
            there is a HIT at that range). For re-casting rays known to be clear of the
            terrain up to some range (the BVH safe start is not used then: the march starts
            near its events already).
        unit_directions: the caller guarantees finite unit ``directions`` (float64 rays it
            built so): they are neither checked nor normalised again.

    Returns:
        :class:`RaycastResult` with tensors on the field's device.

    Raises:
        ValueError: bad shapes, zero/non-finite directions or non-positive parameters.
    """
    import torch

    try:
        max_range_m = float(max_range_m)
    except (TypeError, ValueError) as e:
        raise ValueError(f'max_range_m must be a number, got {max_range_m!r}') from e
    if not (max_range_m > 0 and math.isfinite(max_range_m)):
        raise ValueError(f'max_range_m must be a positive finite number, got {max_range_m!r}')
    step, n_bisect = march_params(field, step_m, tol_m)
    ct = dtype or field.height.dtype
    dev = field.device
    o64, d64 = _as_rays(field, origin, directions, unit_directions)
    n = d64.shape[0]
    hflat = field.height.to(ct).reshape(-1)
    t_min = None
    if min_range_m is not None:
        t_min = torch.as_tensor(min_range_m, dtype=torch.float64, device=dev)
        if t_min.ndim > 1 or (t_min.ndim == 1 and t_min.shape[0] != n):
            raise ValueError(f'min_range_m must be a number or (N,) with N = {n}, got shape '
                             f'{tuple(t_min.shape)}')
        if not bool(torch.all(t_min >= 0)):
            raise ValueError('min_range_m must be >= 0 (and not NaN)')
    march_auto = march == 'auto'
    march = resolve_march(march, dev, ct)
    block = max(1, int(block_cells))
    found = None
    if march == 'numba':  # the whole status / range part in one compiled pass
        from .raycast_numba import cast as numba_cast

        safe = None
        if field.bvh is not None and n and t_min is None:  # skip what it proves free
            safe = field.bvh.safe_start(o64[:1] if o64.stride(0) == 0 else o64, d64,
                                        max_range_m)
        try:
            st, r64 = numba_cast(field, o64, d64, hflat, max_range_m=max_range_m, step=step,
                                 n_bisect=n_bisect, block=block,
                                 sky_outside_grid=sky_outside_grid, min_range_m=t_min,
                                 safe_start=safe)
            found = (st, r64.to(ct))
        except Exception as exc:  # noqa: BLE001 - a kernel that fails to build here
            _kernel_failed(march, march_auto, exc)
            march = 'torch'
    if found is None:
        found = _status_range(field, o64, d64, hflat, ct, march, march_auto, max_range_m,
                              step, n_bisect, block, sky_outside_grid, t_min)
    status, range_m = found
    return _hit_geometry(field, o64, d64, hflat, ct, status, range_m, pose_cov, ranges_only)


def _kernel_failed(march: str, march_auto: bool, exc: Exception) -> None:
    """A compiled march raised ``exc``: re-raise it when it was asked for by name; in auto
    mode log it once and let the torch loop answer from now on (the caller's fallback)."""
    if not march_auto:
        raise exc
    _KERNEL_BROKEN.append(march)
    _LOG.warning('%s ray-march failed (%r); using the torch loop from now on', march, exc)


def _status_range(field: HeightField, o64: 'torch.Tensor', d64: 'torch.Tensor',
                  hflat: 'torch.Tensor', ct: 'torch.dtype', march: str, march_auto: bool,
                  max_range_m: float, step: float, n_bisect: int, block: int,
                  sky_outside_grid: bool, t_min: 'torch.Tensor | None'
                  ) -> tuple['torch.Tensor', 'torch.Tensor']:
    """(status (N,) int8, range (N,) in ``ct``) of :func:`raycast` with the batched torch loop,
    or the Triton kernel marching the rays the torch code set up (``march`` 'torch' or
    'triton'; a Triton kernel that fails in auto mode falls back to the loop)."""
    import torch

    dev = field.device
    n = d64.shape[0]
    ny, nx = field.shape
    cell = field.cell_m
    z_max = field.z_max
    status = torch.full((n,), int(RayStatus.UNAVAILABLE), dtype=torch.int8, device=dev)
    range_m = torch.full((n,), float('nan'), dtype=ct, device=dev)
    t_a = torch.zeros(n, dtype=torch.float64, device=dev)
    t_b = torch.zeros(n, dtype=torch.float64, device=dev)
    f_a = torch.zeros(n, dtype=ct, device=dev)
    f_b = torch.zeros(n, dtype=ct, device=dev)
    hit = torch.zeros(n, dtype=torch.bool, device=dev)

    # Grid-index coordinates of the origins; the rays in index units per metre of range.
    gx0 = (o64[:, 0] - field.x0_m) / cell
    gy0 = (o64[:, 1] - field.y0_m) / cell
    gdx, gdy = d64[:, 0] / cell, d64[:, 1] / cell
    oz, dz = o64[:, 2], d64[:, 2]
    inside0 = (gx0 >= 0) & (gx0 <= nx - 1) & (gy0 >= 0) & (gy0 <= ny - 1)
    inf = torch.full_like(gx0, math.inf)

    def _exit(g0: 'torch.Tensor', gd: 'torch.Tensor', hi: int) -> 'torch.Tensor':
        t_pos = (hi - g0) / gd
        t_neg = (0 - g0) / gd
        return torch.where(gd > 0, t_pos, torch.where(gd < 0, t_neg, inf))

    t_grid = torch.minimum(_exit(gx0, gdx, nx - 1), _exit(gy0, gdy, ny - 1))  # leaves the grid
    if math.isnan(z_max):  # no data at all
        t_lo = torch.zeros_like(oz)
        t_hi = torch.zeros_like(oz)
        no_data = True
    else:
        no_data = False
        t_cross = (z_max - oz) / torch.where(dz == 0, torch.ones_like(dz), dz)
        above = oz > z_max
        # part of the ray at or below z_max: [t_lo, t_hi]
        t_lo = torch.where(dz < 0, torch.clamp(t_cross, min=0.0),
                           torch.where(above, inf, torch.zeros_like(oz)))
        t_hi = torch.where(dz > 0, t_cross, torch.where(above & (dz == 0), -inf, inf))
        t_hi = torch.where((dz > 0) & above, -inf, t_hi)
    t0 = torch.maximum(t_lo, torch.zeros_like(t_lo))
    if t_min is not None:
        t0 = torch.maximum(t0, t_min.expand(n))
    t1 = torch.minimum(torch.minimum(t_hi, t_grid), torch.full_like(t_hi, float(max_range_m)))

    # per-ray constants in the computation dtype (grid-index units relative to the grid origin,
    # so float32 keeps ~1e-4 m within a few km)
    gx0c, gy0c, ozc = gx0.to(ct), gy0.to(ct), oz.to(ct)
    gdxc, gdyc, dzc = gdx.to(ct), gdy.to(ct), dz.to(ct)

    def f_at(idx: 'torch.Tensor', t: 'torch.Tensor') -> 'torch.Tensor':
        """z_ray - terrain for rays ``idx`` at ranges ``t`` (shape (A,) or (A, S))."""
        shp = (-1,) + (1,) * (t.ndim - 1)
        tc = t.to(ct)
        gx = gx0c[idx].reshape(shp) + tc * gdxc[idx].reshape(shp)
        gy = gy0c[idx].reshape(shp) + tc * gdyc[idx].reshape(shp)
        terr, _, _ = _bilinear(hflat, (ny, nx), gx, gy)
        zr = ozc[idx].reshape(shp) + tc * dzc[idx].reshape(shp)
        return zr - terr

    candidates = torch.nonzero(inside0 & (t0 <= t1), as_tuple=False).reshape(-1)
    if no_data:
        candidates = candidates[:0]
    resolved = torch.zeros(n, dtype=torch.bool, device=dev)
    resolved[~inside0] = True  # origin outside the grid: UNAVAILABLE
    if candidates.numel():
        tc0 = t0[candidates]
        f0 = f_at(candidates, tc0)
        # nodata where the march starts (a hole under the camera): follow the ray over it to
        # the first sample with data and start there (see the module docstring); without a
        # hole none of this runs
        nan0 = torch.isnan(f0)
        pos = torch.nonzero(nan0, as_tuple=False).reshape(-1)
        emerged = None  # (candidates,) bool: came out of a hole at the start
        if pos.numel():
            emerged = torch.zeros(candidates.shape, dtype=torch.bool, device=dev)
            lost = torch.zeros_like(emerged)
            t_prev = torch.zeros_like(tc0)  # the last nodata sample before the emergence
            t_e, f_e, k_e = _cross_start_nodata(field, f_at, candidates[pos], t0, t1, gx0,
                                                gy0, gdx, gdy, step, block)
            found = torch.isfinite(t_e)
            emerged[pos[found]] = True
            lost[pos[~found]] = True
            t_prev[pos[found]] = tc0[pos[found]] + step * (k_e[found] - 1)
            tc0, f0 = tc0.clone(), f0.clone()
            tc0[pos[found]] = t_e[found]
            f0[pos[found]] = f_e[found]
            t0 = t0.clone()
            t0[candidates[pos[found]]] = t_e[found]
            nan0 = torch.isnan(f0)
            # over nodata all the way: unknown, unless the ray climbs out of the z_max slab
            # inside the grid and range (then above all terrain: the end rules below, SKY)
            climbs_out = t_hi[candidates] < torch.clamp(t_grid[candidates],
                                                        max=float(max_range_m))
            is_nan = nan0 & ~(lost & climbs_out)
        else:
            is_nan = nan0
        below = ~nan0 & (f0 <= 0)
        at_origin = tc0 <= 0
        # origin at/below terrain
        idx = candidates[below & at_origin]
        status[idx] = int(RayStatus.BELOW_TERRAIN)
        resolved[idx] = True
        # entering the z_max slab exactly on a terrain node at z_max: a touch at t0
        touch = below & ~at_origin if emerged is None else below & ~at_origin & ~emerged
        idx = candidates[touch]
        hit[idx] = True
        t_a[idx] = tc0[touch]
        t_b[idx] = t_a[idx]
        resolved[idx] = True
        # out of the hole below the terrain: the crossing is in the hole (UNAVAILABLE), or
        # between the hole's edge and the first sample with data (a HIT bracketed there)
        out_low = below & emerged if emerged is not None else None
        if out_low is not None and bool(out_low.any()):
            idx = candidates[out_low]
            t_d, f_d = _edge_of_nodata(f_at, idx, t_prev[out_low], tc0[out_low],
                                       f0[out_low], n_bisect)
            edge = f_d > 0
            idx_e = idx[edge]
            hit[idx_e] = True
            t_a[idx_e], t_b[idx_e] = t_d[edge], tc0[out_low][edge]
            f_a[idx_e], f_b[idx_e] = f_d[edge], f0[out_low][edge]
            resolved[idx_e] = True
            out_low[out_low.clone()] = ~edge
        # nodata at the start and no way out of it, or the crossing in the hole
        idx = candidates[is_nan if out_low is None else is_nan | out_low]
        status[idx] = int(RayStatus.UNAVAILABLE)
        resolved[idx] = True
        act = candidates[~nan0 & ~below]
        t_cur = t0[act].clone()
        dmax = field.block_max(block).to(ct)
        nby, nbx = dmax.shape
        dmax_flat = dmax.reshape(-1)
        seg = block * cell  # a segment this long moves at most one block sideways
        n_fine = max(1, int(math.ceil(seg / step)))
        budget = _SAMPLE_BUDGET
        code = None
        if act.numel() and march == 'triton':
            # the kernel marches AND refines: its hits skip the refinement below
            from .raycast_triton import march as compiled

            try:
                code, r_k = compiled(
                    gx0[act], gy0[act], oz[act], gdx[act], gdy[act], dz[act], t0[act], t1[act],
                    hflat, (ny, nx), dmax, block, seg, step, n_bisect,
                    bslope=field.block_slope(block))
            except Exception as exc:  # noqa: BLE001 - a kernel that fails to build here
                _kernel_failed(march, march_auto, exc)
        if code is not None:
            k_hit, k_nan = code == 1, code == 2
            status[act[k_hit]] = int(RayStatus.HIT)
            range_m[act[k_hit]] = r_k[k_hit].to(ct)
            status[act[k_nan]] = int(RayStatus.UNAVAILABLE)
            resolved[act[k_hit | k_nan]] = True
            act = act[:0]
        while act.numel():
            a = act.numel()
            t_stop = t1[act]
            # coarse phase: skip segments that stay above the highest terrain around them
            sc = int(min(256, max(4, budget // a)))
            ts = t_cur[:, None] + seg * torch.arange(sc, dtype=torch.float64, device=dev)[None, :]
            te = torch.minimum(ts + seg, t_stop[:, None])
            valid = ts < t_stop[:, None]
            z_lo = torch.minimum(oz[act, None] + ts * dz[act, None], oz[act, None] + te * dz[act, None])
            bx = torch.floor((gx0[act, None] + ts * gdx[act, None]) / block)
            by = torch.floor((gy0[act, None] + ts * gdy[act, None]) / block)
            bx = torch.nan_to_num(bx, nan=0.0).clamp(0, nbx - 1).long()
            by = torch.nan_to_num(by, nan=0.0).clamp(0, nby - 1).long()
            need = valid & ~(z_lo > dmax_flat[by * nbx + bx].double())
            has_need = need.any(dim=1)
            covered = (ts[:, -1] + seg) >= t_stop
            # rays whose whole remaining part is skippable: no event
            cont = ~has_need & ~covered
            t_cur_next = torch.where(cont, t_cur + sc * seg, t_cur)
            fine = has_need
            if bool(fine.any()):
                fidx = act[fine]
                kstar = torch.argmax(need[fine].to(torch.int8), dim=1)
                t_start = ts[fine].gather(1, kstar[:, None])[:, 0]
                af = fidx.numel()
                m = int(max(1, min(16, budget // (af * n_fine))))
                js = torch.arange(0, m * n_fine + 1, dtype=torch.float64, device=dev)[None, :]
                tf = torch.minimum(t_start[:, None] + step * js, t_stop[fine][:, None])
                f = f_at(fidx, tf)
                event = (f[:, 1:] <= 0) | torch.isnan(f[:, 1:])
                has = event.any(dim=1)
                first = torch.argmax(event.to(torch.int8), dim=1) + 1
                rows = torch.arange(af, device=dev)
                tb_all, fb_all = tf[rows, first], f[rows, first]
                ta_all, fa_all = tf[rows, first - 1], f[rows, first - 1]
                nan_ev = has & torch.isnan(fb_all)
                hit_ev = has & ~nan_ev
                idx = fidx[nan_ev]
                status[idx] = int(RayStatus.UNAVAILABLE)
                resolved[idx] = True
                idx = fidx[hit_ev]
                hit[idx] = True
                t_a[idx], t_b[idx] = ta_all[hit_ev], tb_all[hit_ev]
                f_a[idx], f_b[idx] = fa_all[hit_ev], fb_all[hit_ev]
                resolved[idx] = True
                fine_cont = ~has & (tf[:, -1] < t_stop[fine])
                cont_f = torch.zeros_like(cont)
                cont_f[torch.nonzero(fine, as_tuple=False).reshape(-1)[fine_cont]] = True
                t_cur_next[fine] = tf[:, -1]
                cont = cont | cont_f
            act = act[cont]
            t_cur = t_cur_next[cont]

    # Rays without an event: SKY or UNAVAILABLE by where they end.
    open_rays = ~resolved & ~hit
    stays_in = t_grid >= max_range_m
    z_exit = oz + torch.clamp(t_grid, max=1e12) * dz
    if no_data or not sky_outside_grid:
        leaves_high = torch.zeros_like(stays_in)
    else:
        leaves_high = (z_exit > z_max) & (dz >= 0)
    sky = open_rays & (stays_in | leaves_high)
    if no_data:  # nothing is known anywhere
        sky = torch.zeros_like(sky)
    status[sky] = int(RayStatus.SKY)
    status[open_rays & ~sky] = int(RayStatus.UNAVAILABLE)

    # Refine the hits: bisection, then one secant step in the final bracket.
    hidx = torch.nonzero(hit, as_tuple=False).reshape(-1)
    if hidx.numel():
        ta, tb, fa, fb = t_a[hidx], t_b[hidx], f_a[hidx], f_b[hidx]
        nan_seen = torch.zeros_like(ta, dtype=torch.bool)
        for _ in range(n_bisect):
            tm = 0.5 * (ta + tb)
            fm = f_at(hidx, tm)
            m_nan = torch.isnan(fm)
            nan_seen |= m_nan
            lower = m_nan | (fm <= 0)
            tb = torch.where(lower, tm, tb)
            fb = torch.where(lower, fm, fb)
            ta = torch.where(lower, ta, tm)
            fa = torch.where(lower, fa, fm)
        denom = fa - fb
        ok = torch.isfinite(fb) & (denom > 0)
        frac = torch.where(ok, fa / torch.where(ok, denom, torch.ones_like(denom)),
                           torch.ones_like(denom))
        th = ta + frac.double().clamp(0, 1) * (tb - ta)
        bad = nan_seen | ~torch.isfinite(th)
        status[hidx[bad]] = int(RayStatus.UNAVAILABLE)
        status[hidx[~bad]] = int(RayStatus.HIT)
        range_m[hidx[~bad]] = th[~bad].to(ct)
    return status, range_m


def _cross_start_nodata(field: HeightField, f_at: Callable, idx: 'torch.Tensor',
                        t0: 'torch.Tensor', t1: 'torch.Tensor', gx0: 'torch.Tensor',
                        gy0: 'torch.Tensor', gdx: 'torch.Tensor', gdy: 'torch.Tensor',
                        step: float, block: int
                        ) -> tuple['torch.Tensor', 'torch.Tensor', 'torch.Tensor']:
    """Follow rays ``idx`` whose march starts over nodata (f(t0) is NaN) to their first sample
    with terrain data.

    The samples are ``t_k = min(t0 + step * k, t1)``, k = 1, 2, ... (the lattice of the march;
    the numba march computes the same values). A ray whose ``block`` x ``block``-cell block
    under ``t_k`` has no data in its 3 x 3 neighbourhood (``HeightField.block_data``) skips
    ``n_seg`` samples at once: they lie within ``block`` cells of ``t_k`` and are nodata (the
    first sample with data is the same as sampling every step).

    Args:
        field: the height field; f_at: ``z_ray - terrain`` of :func:`_status_range`.
        idx: (M,) long ray indices; t0, t1: (N,) float64 march interval, metres.
        gx0, gy0, gdx, gdy: (N,) float64 grid-index origin and direction per metre.
        step: sample spacing, metres; block: block side, cells.

    Returns:
        (t (M,) float64 range of the first sample with data, NaN where none; f (M,) the
        terrain difference there; k (M,) float64 its sample number).
    """
    import torch

    dev = idx.device
    m = idx.numel()
    seg = block * field.cell_m
    n_seg = max(1, int(math.floor(seg / step + 1e-9)))  # as the numba march and Triton kernel
    bdata = field.block_data(block)
    nby, nbx = bdata.shape
    bflat = bdata.reshape(-1)
    js = torch.arange(n_seg, dtype=torch.float64, device=dev)[None, :]
    t_out = torch.full((m,), float('nan'), dtype=torch.float64, device=dev)
    f_out = None
    k_out = torch.full((m,), float('nan'), dtype=torch.float64, device=dev)
    k = torch.ones(m, dtype=torch.float64, device=dev)
    rem = torch.arange(m, device=dev)  # positions in idx still searching
    while rem.numel():
        r = idx[rem]
        t_end = t1[r]
        tk = torch.minimum(t0[r] + step * k[rem], t_end)
        bx = torch.floor((gx0[r] + tk * gdx[r]) / block)
        by = torch.floor((gy0[r] + tk * gdy[r]) / block)
        bx = torch.nan_to_num(bx, nan=0.0).clamp(0, nbx - 1).long()
        by = torch.nan_to_num(by, nan=0.0).clamp(0, nby - 1).long()
        empty = (bflat[by * nbx + bx] == 0) & (tk < t_end)
        go_on = empty.clone()
        look = torch.nonzero(~empty, as_tuple=False).reshape(-1)
        if look.numel():
            rl = r[look]
            ts = torch.minimum(t0[rl][:, None] + step * (k[rem[look]][:, None] + js),
                               t_end[look][:, None])
            f = f_at(rl, ts)
            if f_out is None:
                f_out = torch.full((m,), float('nan'), dtype=f.dtype, device=dev)
            valid = ~torch.isnan(f)
            has = valid.any(dim=1)
            first = torch.argmax(valid.to(torch.int8), dim=1)
            rows = torch.arange(look.numel(), device=dev)
            got = rem[look[has]]
            t_out[got] = ts[rows, first][has]
            f_out[got] = f[rows, first][has]
            k_out[got] = k[got] + first[has].double()
            go_on[look] = ~has & (ts[:, -1] < t_end[look])
        k[rem] += n_seg
        rem = rem[go_on]
    if f_out is None:
        f_out = torch.full((m,), float('nan'), dtype=field.height.dtype, device=dev)
    return t_out, f_out, k_out


def _edge_of_nodata(f_at: Callable, idx: 'torch.Tensor', t_nan: 'torch.Tensor',
                    t_data: 'torch.Tensor', f_data: 'torch.Tensor', n_bisect: int
                    ) -> tuple['torch.Tensor', 'torch.Tensor']:
    """The first point with data between a nodata sample ``t_nan`` and the sample ``t_data``
    after it (which has data, ``f_data``), by ``n_bisect`` bisections on nodata-or-not (as the
    numba march): (t (M,) float64, f (M,) there). A ray that comes out of a hole below the
    terrain crossed it in the hole when ``f <= 0`` there, else between t and t_data."""
    import torch

    a, b, fb = t_nan.clone(), t_data.clone(), f_data.clone()
    for _ in range(n_bisect):
        tm = 0.5 * (a + b)
        fm = f_at(idx, tm)
        no = torch.isnan(fm)
        a = torch.where(no, tm, a)
        b = torch.where(no, b, tm)
        fb = torch.where(no, fb, fm)
    return b, fb


def _hit_geometry(field: HeightField, o64: 'torch.Tensor', d64: 'torch.Tensor',
                  hflat: 'torch.Tensor', ct: 'torch.dtype', status: 'torch.Tensor',
                  range_m: 'torch.Tensor', pose_cov: 'PoseCovariance | None',
                  ranges_only: bool) -> RaycastResult:
    """The :class:`RaycastResult` of :func:`raycast`: hit points, normals, grazing angles,
    sources and the prior sigma of the HIT rays (NaN / 0 elsewhere, and everywhere with
    ``ranges_only``)."""
    import torch

    dev = field.device
    n = d64.shape[0]
    ny, nx = field.shape
    cell = field.cell_m
    if ranges_only:  # the geometry is not asked for: NaN / 0 views, nothing allocated
        nan = torch.full((1,), float('nan'), dtype=ct, device=dev)
        nan3 = nan.expand(n, 3)
        nan1 = nan.expand(n)
        return RaycastResult(status=status, range_m=range_m, point=nan3, normal=nan3,
                             grazing_rad=nan1, source=torch.zeros(1, dtype=torch.int32,
                                                                  device=dev).expand(n),
                             sigma_m=nan1, sigma_dem_m=nan1, sigma_pose_m=nan1,
                             sigma_vertical_m=nan1, sigma_attitude_m=nan1)
    hidx = torch.nonzero(status == int(RayStatus.HIT), as_tuple=False).reshape(-1)
    point = torch.full((n, 3), float('nan'), dtype=ct, device=dev)
    normal = torch.full((n, 3), float('nan'), dtype=ct, device=dev)
    grazing = torch.full((n,), float('nan'), dtype=ct, device=dev)
    source = torch.zeros(n, dtype=torch.int32, device=dev)
    sigma = torch.full((n,), float('nan'), dtype=ct, device=dev)
    sigma_dem = torch.full_like(sigma, float('nan'))
    sigma_pose = torch.full_like(sigma, float('nan'))
    sigma_vert = torch.full_like(sigma, float('nan'))
    sigma_att = torch.full_like(sigma, float('nan'))
    if hidx.numel():
        r = range_m[hidx].double()
        d = d64[hidx]
        p = o64[hidx] + r[:, None] * d
        point[hidx] = p.to(ct)
        gx = ((p[:, 0] - field.x0_m) / cell).to(ct)
        gy = ((p[:, 1] - field.y0_m) / cell).to(ct)
        _, dzdx, dzdy = _bilinear(hflat, (ny, nx), gx, gy)
        nrm = torch.stack([-dzdx.double() / cell, -dzdy.double() / cell,
                           torch.ones_like(r)], dim=1)
        nrm = nrm / torch.linalg.vector_norm(nrm, dim=1, keepdim=True)
        normal[hidx] = nrm.to(ct)
        sin_g = (-(nrm * d).sum(dim=1)).clamp(min=0.0)
        grazing[hidx] = torch.asin(sin_g.clamp(max=1.0)).to(ct)
        node, _ = field.nearest_node(gx, gy)
        source[hidx] = field.source.reshape(-1)[node]
        sv = field.sigma_v.reshape(-1)[node].double()
        sh = field.sigma_h.reshape(-1)[node].double()
        nz2 = nrm[:, 2] ** 2
        var_dem = nz2 * sv ** 2 + (1.0 - nz2).clamp(min=0.0) * sh ** 2
        var_att = torch.zeros_like(r)
        p_zz = 0.0
        if pose_cov is None:
            var_pose = torch.zeros_like(r)
        else:
            p_zz = float(pose_cov.position[2, 2])
            var_pos = _quad_form(nrm, pose_cov.position)
            c = torch.linalg.cross(d, nrm, dim=1)
            var_att = r ** 2 * _quad_form(c, pose_cov.attitude)
            var_pose = var_pos + var_att
        inv_s2 = torch.where(sin_g > 0, 1.0 / sin_g.clamp(min=1e-300) ** 2,
                             torch.full_like(sin_g, math.inf))
        sigma_dem[hidx] = torch.sqrt(var_dem * inv_s2).to(ct)
        sigma_pose[hidx] = torch.sqrt(var_pose * inv_s2).to(ct)
        sigma[hidx] = torch.sqrt((var_dem + var_pose) * inv_s2).to(ct)
        sigma_vert[hidx] = torch.sqrt(nz2 * (sv ** 2 + p_zz) * inv_s2).to(ct)
        sigma_att[hidx] = torch.sqrt(var_att * inv_s2).to(ct)

    return RaycastResult(status=status, range_m=range_m, point=point, normal=normal,
                         grazing_rad=grazing, source=source, sigma_m=sigma,
                         sigma_dem_m=sigma_dem, sigma_pose_m=sigma_pose,
                         sigma_vertical_m=sigma_vert, sigma_attitude_m=sigma_att)
