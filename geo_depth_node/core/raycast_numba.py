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
  as the torch loop.

The terrain is evaluated as ``raycast.f_at`` does: the range cast to the field's dtype, grid
coordinates ``g0 + t * gd`` in that dtype, bilinear heights, so float32 fields give the same
terrain values as the torch code: statuses equal and ranges within the refinement tolerance
(test_raycast_numba.py, 0 of 921 600 rays differed; test_raycast.py runs with both).

numba is optional: without it (or if compiling fails) :func:`~.raycast.raycast` uses the torch
loop. Nothing here imports numba at module import time; the first :func:`march` compiles
(a few seconds, then cached on disk by numba) and logs it.

Output codes per ray, as the Triton kernel: 0 = no event up to ``t1`` (the caller decides SKY
or UNAVAILABLE), 1 = HIT with its range, 2 = UNAVAILABLE (nodata met, or NaN during the
refinement).
"""
from __future__ import annotations

import importlib.util
import logging
import time
from typing import Any

import numpy as np

_LOG = logging.getLogger(__name__)
_IMPL: Any = None
#: parallel work items (each takes every _GROUPS-th ray, one scratch buffer each)
_GROUPS = 64


def numba_available() -> bool:
    """Whether numba can be imported (does not import it)."""
    return importlib.util.find_spec('numba') is not None


def _impl() -> Any:
    """The compiled march (imports numba; compiled or loaded from numba's disk cache on the
    first call)."""
    global _IMPL
    if _IMPL is None:
        from ._raycast_numba_kernels import march_impl

        _IMPL = march_impl
    return _IMPL


def march(gx0, gy0, oz, gdx, gdy, dz, t0, t1, hflat, shape: tuple[int, int], bmax,
          block: int, seg: float, step: float, n_bisect: int, bslope=None) -> tuple[Any, Any]:
    """March and refine N rays on the CPU (the arguments of :func:`.raycast_triton.march`).

    Args:
        gx0, gy0: (N,) float64 CPU tensors, grid-index coordinates of the origins (column, row).
        oz: (N,) float64 origin ENU z, metres.
        gdx, gdy: (N,) float64 ray direction in grid-index units per metre of range.
        dz: (N,) float64 ray direction z per metre.
        t0, t1: (N,) float64 range interval to march, metres.
        hflat: (Ny * Nx,) float32 or float64 heights (NaN = no data); shape: (Ny, Nx).
        bmax: (nby, nbx) ``HeightField.block_max(block)`` in the field dtype.
        block: block side in cells; seg: block * cell (m); step: fine step (m).
        n_bisect: bisection iterations of a ``step``-long bracket (longer brackets are
            bisected to the same final width).
        bslope: (nby, nbx) ``HeightField.block_slope(block)``; None = no slope-bound steps
            (every fine step is ``step``).

    Returns:
        (code (N,) int32 tensor: 0 no event, 1 hit, 2 unavailable; range (N,) float64 tensor,
        NaN unless hit).

    Raises:
        ValueError: a tensor not on the CPU, or a field dtype other than float32/float64.
    """
    import torch

    first = _IMPL is None
    impl = _impl()
    for name, x in (('gx0', gx0), ('hflat', hflat), ('bmax', bmax)):
        if x.device.type != 'cpu':
            raise ValueError(f'the numba ray-march runs on the CPU, {name} is on {x.device}')
    if hflat.dtype not in (torch.float32, torch.float64):
        raise ValueError(f'height field dtype must be float32 or float64, got {hflat.dtype}')
    ny, nx = shape
    h = np.ascontiguousarray(hflat.numpy())
    ct = h.dtype
    cols = [np.ascontiguousarray(x.detach().to(torch.float64).numpy())
            for x in (gx0, gy0, oz, gdx, gdy, dz, t0, t1)]
    consts = [c.astype(ct, copy=False) for c in cols[:6]]
    lim = np.array([nx - 1, ny - 1, nx - 2, ny - 2], dtype=ct)
    bm = np.ascontiguousarray(bmax.detach().to(torch.float64).numpy())
    bs = np.full(bm.shape, np.inf) if bslope is None else \
        np.ascontiguousarray(bslope.detach().to(torch.float64).numpy())
    if bs.shape != bm.shape:
        raise ValueError(f'bslope must have the shape of bmax {bm.shape}, got {bs.shape}')
    n = cols[0].shape[0]
    code = np.zeros(n, dtype=np.int32)
    rng = np.full(n, np.nan)
    t = time.perf_counter()
    if n:
        impl(*cols, *consts, h, lim, int(nx), bm, bs, float(block), float(seg), float(step),
             int(n_bisect), min(_GROUPS, n), code, rng)
    if first:
        _LOG.info('numba ray-march ready (first call, compile or cache load included: %.1f s)',
                  time.perf_counter() - t)
    return torch.from_numpy(code), torch.from_numpy(rng)
