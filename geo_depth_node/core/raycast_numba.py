"""CPU ray-march for :func:`core.raycast.raycast`, compiled with numba (the CPU twin of
:mod:`.raycast_triton`).

The torch loop of :func:`~.raycast.raycast` marches all rays together, a batch of samples per
iteration; on the CPU it spends its time on the bookkeeping of ~40 tensor operations per
iteration (1.3-1.8 s for the 307 200 rays of a 640x480 frame on a 2-core machine). Here each
ray is marched on its own, sequentially, in compiled code, with the rays spread over the CPU
cores (``numba.prange``):

* coarse: the segment [t, t + seg] (seg = block_cells cells) is skipped when its lowest point
  is above the dilated block maximum of the height field under its start
  (``HeightField.block_max``, the bound the torch loop and the Triton kernel use);
  otherwise the ray samples every ``step`` metres up to t + seg;
* fine: ``f = z_ray - terrain <= 0`` brackets a crossing; a NaN terrain value ends the ray as
  UNAVAILABLE. A fine step is ``step`` metres, or a whole number of steps where the terrain's
  slope bound proves they cross nothing: with ``|grad z| <= L`` around the ray
  (``HeightField.block_slope``, +inf near nodata so nodata is never stepped over),
  ``f(t + s) >= f(t) - s (L |d_h| - d_z)``, so ``f`` stays positive for
  ``s < f(t) / (L |d_h| - d_z)`` (up to one segment when the ray climbs faster than the terrain
  can). The samples stay on the torch loop's lattice ``t0 + k step`` and the skipped ones are
  proven above the terrain, so both find the same brackets (a feature thinner than ``step``
  is missed by both alike);
* a bracket is refined by the same bisection (to the same final width) and final secant step
  as the torch loop;
* a ray whose march starts over nodata (a hole under the camera) is followed over it to its
  first sample with data on the same lattice as the torch loop (``cross_start_nodata``; blocks
  without data around them skip whole segments) and starts there, as
  :func:`~.raycast.raycast` defines it.

The terrain is evaluated as ``raycast.f_at`` does: the range cast to the field's dtype, grid
coordinates ``g0 + t * gd`` in that dtype, bilinear heights, so float32 fields give the same
terrain values as the torch code: statuses equal and ranges within the refinement tolerance
(test_raycast_numba.py, 0 of 921 600 rays differed; test_raycast.py runs with both).

The set-up before the march is compiled too (:func:`cast`): each ray's grid coordinates, its
exit from the grid, the part of it below the highest terrain, the terrain at its start
(BELOW_TERRAIN, a touch, or nodata there), and after the march SKY or UNAVAILABLE for a ray
without a crossing, all as :func:`~.raycast.raycast` computes them in float64. Over a whole
frame that torch bookkeeping cost about as much as the march itself.

numba is optional: without it (or if compiling fails) :func:`~.raycast.raycast` uses the torch
loop. Nothing here imports numba at module import time; the first :func:`cast` compiles
(a few seconds, then cached on disk by numba) and logs it.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ._numba import numba_available  # noqa: F401 - re-exported

_LOG = logging.getLogger(__name__)
_IMPL: Any = None
#: parallel work items (each a contiguous chunk of the rays, one scratch buffer each)
_GROUPS = 64


def _impl() -> Any:
    """The compiled cast (imports numba; compiled or loaded from numba's disk cache on the
    first call)."""
    global _IMPL
    if _IMPL is None:
        from ._raycast_numba_kernels import cast_impl

        _IMPL = cast_impl
    return _IMPL


def kernel_arrays(field: Any, hflat: Any = None, block: int | None = None) -> tuple:
    """The numpy arrays the compiled kernels read of a CPU HeightField: (heights (Ny*Nx,) in
    the computation dtype (``hflat``, default the field's), ``lim`` = (Nx - 1, Ny - 1, Nx - 2,
    Ny - 2) in that dtype, as ``f_at`` takes it) and, with ``block`` (cells), the block maxima
    rounded to that dtype (as the torch loop uses them), slope bounds and data flags of
    ``HeightField.block_max/block_slope/block_data``, float64."""
    import torch

    hflat = field.height.reshape(-1) if hflat is None else hflat
    ny, nx = field.shape
    h = np.ascontiguousarray(hflat.numpy())
    lim = np.array([nx - 1, ny - 1, nx - 2, ny - 2], dtype=h.dtype)
    if block is None:
        return h, lim
    return (h, lim,
            np.ascontiguousarray(field.block_max(block).to(hflat.dtype).to(torch.float64).numpy()),
            np.ascontiguousarray(field.block_slope(block).to(torch.float64).numpy()),
            np.ascontiguousarray(field.block_data(block).to(torch.float64).numpy()))


def cast(field: Any, origin: Any, directions: Any, hflat: Any, *, max_range_m: float,
         step: float, n_bisect: int, block: int, sky_outside_grid: bool,
         min_range_m: Any = None, safe_start: Any = None) -> tuple[Any, Any]:
    """Status and range of every ray in one compiled pass: what :func:`~.raycast.raycast` does
    before its hit geometry and sigma (ray set-up in grid units, grid exit, the z_max slab,
    the terrain at the start, the march and refinement, SKY or UNAVAILABLE for rays without
    a crossing), per ray and in the same float64 order of operations, so no torch
    bookkeeping runs over all rays.

    Args:
        field: the :class:`~.raycast.HeightField` (on the CPU).
        origin: (1, 3) or (N, 3) float64 CPU tensor, ENU metres (one origin for all rays,
            or one per ray).
        directions: (N, 3) float64 CPU tensor of unit ENU directions.
        hflat: (Ny * Nx,) heights in the computation dtype (float32 or float64).
        max_range_m, step: metres; n_bisect: bisection iterations of a ``step``-long bracket
            (longer brackets are bisected to the same final width); block: block side (cells).
        sky_outside_grid: see :func:`~.raycast.raycast`.
        min_range_m: None, or a 0-d or (N,) float64 CPU tensor, metres (>= 0).
        safe_start: None, or an (N,) float64 CPU tensor, metres: per ray a range before which
            it provably meets no event (``TerrainBvh.safe_start``; +inf: none at all). The
            march starts at the last sample of its own lattice ``t0 + k step`` at least one
            step before it, so it samples what it would have sampled from ``t0`` there on.

    Returns:
        (status (N,) int8 tensor of RayStatus values, range (N,) float64 tensor, NaN unless
        HIT).
    """
    import torch

    from .raycast import RayStatus

    first = _IMPL is None
    if first and [int(s) for s in RayStatus] != [1, 2, 3, 4]:
        raise RuntimeError('the numba cast writes RayStatus HIT..BELOW_TERRAIN as 1..4')
    cast_impl = _impl()
    if hflat.device.type != 'cpu':
        raise ValueError(f'the numba ray-march runs on the CPU, the field is on {hflat.device}')
    if hflat.dtype not in (torch.float32, torch.float64):
        raise ValueError(f'height field dtype must be float32 or float64, got {hflat.dtype}')
    ny, nx = field.shape
    h, lim, bm, bs, bd = kernel_arrays(field, hflat, block)
    seg = block * field.cell_m
    if origin.ndim == 2 and origin.shape[0] > 1 and origin.stride(0) == 0:
        origin = origin[:1]  # one origin expanded over the rays (raycast's _as_rays)
    o = np.ascontiguousarray(origin.reshape(-1, 3).numpy(), dtype=np.float64)
    d = np.ascontiguousarray(directions.numpy(), dtype=np.float64)
    n = d.shape[0]
    tmin = np.zeros(0) if min_range_m is None else \
        np.ascontiguousarray(min_range_m.to(torch.float64).expand(n).numpy())
    tsafe = np.zeros(0) if safe_start is None else \
        np.ascontiguousarray(safe_start.to(torch.float64).numpy())
    grid = np.array([field.x0_m, field.y0_m, field.cell_m, field.z_max, max_range_m])
    status = np.empty(n, dtype=np.int8)
    rng = np.empty(n)
    t = time.perf_counter()
    if n:
        cast_impl(o, d, tmin, tsafe, grid, h, lim, int(nx), int(ny), bm, bs, bd, float(block), float(seg),
                  float(step), int(n_bisect), min(_GROUPS, n), bool(sky_outside_grid), status,
                  rng)
    if first:
        _LOG.info('numba ray-march ready (first call, compile or cache load included: %.1f s)',
                  time.perf_counter() - t)
    return torch.from_numpy(status), torch.from_numpy(rng)
