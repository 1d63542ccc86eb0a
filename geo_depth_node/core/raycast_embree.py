"""Where each ray may first meet the terrain: a BVH (Open3D's Embree ``RaycastingScene``) over a
triangle mesh that bounds the height field's bilinear surface from above.

The ray-march of :func:`~.raycast.raycast` samples every ray from its start, every half cell,
over up to a kilometre: on the CPU that is most of a frame's prior cost. A BVH finds the first
crossing of a triangle mesh in a few hundred nanoseconds per ray, but a mesh is not the bilinear
surface the march defines. This module uses the mesh only as a **safe start**: a range before
which the march provably meets no event, so the march (the reference method, unchanged) starts
there and ends after a few samples. Statuses and ranges are those of the march (ranges to its
refinement tolerance: its samples start on another lattice).

The mesh (:class:`TerrainBvh`), in grid-local coordinates (x - x0, y - y0, z - z_min), float32:

* **Upper envelope.** Each cell is split along the diagonal whose mid-point is higher:
  along (0,0)-(1,1) when ``h00 + h11 >= h01 + h10``, else along (1,0)-(0,1). With
  ``d = h00 - h01 - h10 + h11`` the bilinear patch minus the (0,0)-(1,1) triangulation is
  ``-d y (1 - x)`` (``-d x (1 - y)`` in the other half), minus the other one ``d x y``
  (``d (1 - x)(1 - y)``): the chosen triangulation is never below the bilinear surface, and both
  agree on the cell edges. The mesh is lifted by :data:`LIFT_M` so float32 rounding of the
  vertices cannot bring it below the surface.
* **Nodata.** Every node of a cell that has a nodata node is raised to ``z_max +``
  :data:`NODATA_WALL_M`: a cell the march would find nodata in is capped above the highest
  terrain and walled by the sloping cells around it, so a ray in the march's slab
  (``z <= z_max``) meets the mesh before it can be over nodata.

Then for a ray whose origin is above the mesh, every point before the mesh's first hit ``t_s``
is above the bilinear surface and not over nodata within the slab: the march's first event is
at or after ``t_s``. :meth:`TerrainBvh.safe_start` returns ``t_s``, and the march starts on the
last sample of its own lattice ``t0 + k step`` at least a step before it (float32 hit
distances): it samples from there what it would have sampled from ``t0``, so statuses and
ranges are the march's. ``safe_start`` is 0 for a ray whose origin is not above the mesh (the
march then runs from its start, as without a BVH: a camera over a DEM hole, BELOW_TERRAIN),
and +inf for a ray that meets no triangle (it meets no terrain: the march's end rules give
SKY or UNAVAILABLE).

Rays from one camera (a frame's pixels) are first tested against its horizon
(:meth:`TerrainBvh.above_horizon`): a ray that rises faster than every terrain element it can
pass over meets nothing (+inf) and is not traversed (the sky: a miss traverses a tall BVH from
a camera near the ground for 100-200 ns). Building the BVH of a 1101 x 1101 grid (2.4 M
triangles) takes ~2 s on a 2-core machine, so :class:`~.dem.LocalHeightGrid` builds it with
the grid, off the frame path when re-tiling.
Open3D is optional: without it :func:`bvh_available` is False and the march runs from the
start.
"""
from __future__ import annotations

import importlib.util
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .raycast import HeightField

_LOG = logging.getLogger(__name__)

#: metres the envelope mesh is lifted above the bilinear surface (covers the float32 rounding
#: of vertices and rays in grid-local coordinates, ~1e-4 m over a few km)
LIFT_M = 0.01
#: metres above the highest terrain node that nodes around nodata cells are raised to
NODATA_WALL_M = 1.0
#: the camera's horizon (TerrainBvh.above_horizon): azimuth bins, block side (cells), the
#: blocks around the camera's block taken cell by cell, and the fewest rays it is made for
HORIZON_BINS = 4096
HORIZON_BLOCK = 8
HORIZON_NEAR_BLOCKS = 6
HORIZON_MIN_RAYS = 4096


def bvh_available() -> bool:
    """True when Open3D (and so its Embree ``RaycastingScene``) can be imported."""
    return importlib.util.find_spec('open3d') is not None


def envelope_heights(height: np.ndarray) -> tuple[np.ndarray, float]:
    """The node heights of the envelope mesh and its wall height.

    Args:
        height: (Ny, Nx) ENU z of the terrain nodes, metres; NaN = no data.

    Returns:
        ((Ny, Nx) float64 node heights: the terrain, and ``z_max + NODATA_WALL_M`` at every
        node of a cell that has a nodata node; the wall height ``z_max + NODATA_WALL_M``).

    Raises:
        ValueError: a grid smaller than 2 x 2 or without any data.
    """
    h = np.asarray(height, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] < 2 or h.shape[1] < 2:
        raise ValueError(f'height must be (Ny, Nx) with Ny, Nx >= 2, got {h.shape}')
    nan = np.isnan(h)
    if nan.all():
        raise ValueError('the height field has no data: nothing to build a BVH of')
    wall = float(np.nanmax(h)) + NODATA_WALL_M
    out = h.copy()
    if nan.any():
        cell_nan = nan[:-1, :-1] | nan[:-1, 1:] | nan[1:, :-1] | nan[1:, 1:]  # (Ny-1, Nx-1)
        raise_node = np.zeros_like(nan)
        raise_node[:-1, :-1] |= cell_nan
        raise_node[:-1, 1:] |= cell_nan
        raise_node[1:, :-1] |= cell_nan
        raise_node[1:, 1:] |= cell_nan
        out[raise_node] = wall
    return out, wall


def envelope_triangles(z: np.ndarray) -> np.ndarray:
    """(2 (Ny-1)(Nx-1), 3) uint32 vertex indices (row-major nodes) of the upper-envelope
    triangulation of node heights ``z`` (Ny, Nx): per cell the diagonal with the higher
    mid-point (module docstring)."""
    ny, nx = z.shape
    i00 = (np.arange(ny - 1, dtype=np.uint32)[:, None] * nx
           + np.arange(nx - 1, dtype=np.uint32)[None, :])
    i01, i10 = i00 + 1, i00 + nx
    i11 = i10 + 1
    main = (z[:-1, :-1] + z[1:, 1:]) >= (z[:-1, 1:] + z[1:, :-1])  # diagonal 00-11
    t1 = np.where(main[..., None], np.stack([i00, i01, i11], -1), np.stack([i00, i01, i10], -1))
    t2 = np.where(main[..., None], np.stack([i00, i11, i10], -1), np.stack([i01, i11, i10], -1))
    return np.concatenate([t1.reshape(-1, 3), t2.reshape(-1, 3)]).astype(np.uint32)


class TerrainBvh:
    """The Embree scene of a height field's upper-envelope mesh (module docstring).

    Args:
        field: the :class:`~.raycast.HeightField` (any device; the heights are copied to the
            host once).

    Raises:
        ValueError: a field without data.
        ImportError: Open3D is not installed.
    """

    def __init__(self, field: 'HeightField') -> None:
        import open3d as o3d

        t = time.perf_counter()
        h = field.height.detach().double().cpu().numpy()
        z, _ = envelope_heights(h)
        ny, nx = z.shape
        self.shape = (ny, nx)
        self.x0_m, self.y0_m, self.cell_m = field.x0_m, field.y0_m, field.cell_m
        self.z_ref = float(np.nanmin(h))
        self._z = z  # node heights of the envelope (float64), for above_envelope
        self._h = h  # the terrain's node heights (float64, NaN = no data), for the horizon
        self._horizon: tuple | None = None  # (camera, max range) -> its horizon, the last one
        b = HORIZON_BLOCK
        nby, nbx = -(-(ny - 1) // b), -(-(nx - 1) // b)
        pad = np.full((nby * b + 1, nbx * b + 1), -np.inf)
        pad[:ny, :nx] = h
        # highest node of every block (its (b + 1)^2 nodes; NaN where one has no data)
        self._bmax = np.max([pad[i:i + nby * b:b, j:j + nbx * b:b]
                             for i in range(b + 1) for j in range(b + 1)], axis=0)
        xs = np.arange(nx, dtype=np.float64) * self.cell_m
        ys = np.arange(ny, dtype=np.float64) * self.cell_m
        verts = np.empty((ny, nx, 3), dtype=np.float32)
        verts[..., 0] = xs[None, :]
        verts[..., 1] = ys[:, None]
        verts[..., 2] = z - self.z_ref + LIFT_M
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(verts.reshape(-1, 3)),
                                 o3d.core.Tensor(envelope_triangles(z)))
        # Embree builds its BVH lazily on the first query: build it here, off the frame path
        self.scene.cast_rays(o3d.core.Tensor(np.array([[0, 0, -1e6, 0, 0, 1]], np.float32)))
        _LOG.info('ray-cast BVH of the %dx%d height grid (%d triangles) built in %.2f s',
                  ny, nx, 2 * (ny - 1) * (nx - 1), time.perf_counter() - t)

    def above_horizon(self, origin: np.ndarray, d: np.ndarray, max_range_m: float = np.inf
                      ) -> np.ndarray:
        """(N,) bool: the rays ``d`` (N, 3) float64 unit ENU from the camera at ``origin`` (3,)
        ENU that rise faster than the terrain's horizon in their azimuth (an upper bound of the
        elevation of the terrain within ``max_range_m``, per :data:`HORIZON_BINS` azimuth bins:
        the grid's cells near the camera one by one, :data:`HORIZON_BLOCK`-cell blocks farther
        away, nodata as an infinitely high wall): such a ray meets no terrain, and so no event
        of the march (it ends SKY or UNAVAILABLE by its end rules)."""
        from ._prior_numba_kernels import above_horizon_impl, horizon_impl

        key = (float(origin[0]), float(origin[1]), float(origin[2]), float(max_range_m))
        if self._horizon is None or self._horizon[0] != key:  # once per camera position
            t_hor = np.empty(HORIZON_BINS)
            horizon_impl(self._h, self._bmax, HORIZON_BLOCK, self.cell_m,
                         (key[0] - self.x0_m) / self.cell_m, (key[1] - self.y0_m) / self.cell_m,
                         key[2], key[3], HORIZON_NEAR_BLOCKS, t_hor)
            self._horizon = (key, t_hor)
        t_hor = self._horizon[1]
        out = np.empty(d.shape[0], dtype=bool)
        above_horizon_impl(np.ascontiguousarray(d, dtype=np.float64), t_hor, out)
        return out

    def envelope_at(self, x: Any, y: Any) -> np.ndarray:
        """Height (ENU z, metres) of the envelope mesh at ENU (x, y) (arrays of one shape): the
        chosen triangulation of the cell plus :data:`LIFT_M`; NaN outside the grid."""
        ny, nx = self.shape
        gx = (np.asarray(x, dtype=np.float64) - self.x0_m) / self.cell_m
        gy = (np.asarray(y, dtype=np.float64) - self.y0_m) / self.cell_m
        inside = (gx >= 0) & (gx <= nx - 1) & (gy >= 0) & (gy <= ny - 1)
        j = np.clip(np.floor(np.nan_to_num(gx)), 0, nx - 2).astype(np.int64)
        i = np.clip(np.floor(np.nan_to_num(gy)), 0, ny - 2).astype(np.int64)
        u, v = gx - j, gy - i
        z = self._z
        h00, h01, h10, h11 = z[i, j], z[i, j + 1], z[i + 1, j], z[i + 1, j + 1]
        main = h00 + h11 >= h01 + h10  # diagonal 00-11
        e_main = np.where(u >= v, h00 + u * (h01 - h00) + v * (h11 - h01),
                          h00 + u * (h11 - h10) + v * (h10 - h00))
        e_other = np.where(u + v <= 1, h00 + u * (h01 - h00) + v * (h10 - h00),
                           h11 + (1 - u) * (h10 - h11) + (1 - v) * (h01 - h11))
        return np.where(inside, np.where(main, e_main, e_other) + LIFT_M, np.nan)

    def safe_start(self, origin: 'torch.Tensor', directions: 'torch.Tensor',
                   max_range_m: float = np.inf) -> 'torch.Tensor':
        """Per ray, a range before which the march of :func:`~.raycast.raycast` meets no event.

        Args:
            origin: (1, 3) or (N, 3) float64 CPU tensor, ENU metres.
            directions: (N, 3) float64 CPU tensor of unit ENU directions.
            max_range_m: the cast's farthest range (terrain beyond it is not the horizon).

        Returns:
            (N,) float64 CPU tensor, metres: the envelope's first hit (the march backs off a
            step from it onto its own lattice);
            0 where the origin is not above the envelope (or outside the grid); +inf where the
            ray meets no triangle.
        """
        import open3d as o3d
        import torch

        o = origin.reshape(-1, 3).numpy()
        d = directions.numpy()
        n = d.shape[0]
        rays = np.empty((n, 6), dtype=np.float32)
        rays[:, 0] = o[:, 0] - self.x0_m
        rays[:, 1] = o[:, 1] - self.y0_m
        rays[:, 2] = o[:, 2] - self.z_ref
        rays[:, 3:] = d
        start = np.full(n, np.inf)
        cast = np.ones(n, dtype=bool)
        if o.shape[0] == 1 and n >= HORIZON_MIN_RAYS:  # one camera: rays above its horizon
            cast = ~self.above_horizon(o[0], d, max_range_m)  # meet nothing: not traversed
        if cast.all():
            start = self.scene.cast_rays(o3d.core.Tensor(rays))['t_hit'].numpy().astype(
                np.float64)
        elif cast.any():
            start[cast] = self.scene.cast_rays(o3d.core.Tensor(
                np.ascontiguousarray(rays[cast])))['t_hit'].numpy()
        xy = o[:1, :2] if np.all(o[:, :2] == o[:1, :2]) else o[:, :2]  # one camera: one test
        with np.errstate(invalid='ignore'):  # NaN outside the grid: not above
            above = o[:, 2] > self.envelope_at(xy[:, 0], xy[:, 1])
        start[~np.broadcast_to(above, (n,))] = 0.0
        return torch.from_numpy(start)
