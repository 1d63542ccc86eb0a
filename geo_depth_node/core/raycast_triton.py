"""Triton ray-march kernel for :func:`core.raycast.raycast` (the marching and refinement).

Nothing here imports triton or torch at module import time (as :mod:`.sgm_triton`, whose
interpreter switch it shares: on the CPU the kernel runs only under
``sgm_triton.use_interpreter()``, in the tests).

One program marches ``BLOCK`` rays. Every ray is a small state machine, advanced once per loop
iteration (the loop runs until no ray of the block is active):

* coarse: the segment [t, t + seg] (seg = block_cells cells) is skipped when its lowest point
  is above the dilated block maximum of the height field under its start (the bound of
  ``HeightField.block_max``; the same test as the torch loop); otherwise the ray turns fine
  until t + seg.
* fine: one step of ``step`` metres, or k whole steps where the terrain's slope bound
  (``HeightField.block_slope``) proves they cross nothing (the same rule as
  :mod:`.raycast_numba`: the samples stay on the lattice ``t0 + k step``); ``f = z_ray -
  terrain <= 0`` brackets a crossing, a NaN terrain value ends the ray as UNAVAILABLE.

A bracketed crossing is refined by the same bisection (to the same final bracket width) and
final secant step as the torch code, with the same float32 terrain evaluation (grid-index
coordinates in float32, ranges in float64). Both sample the ray on the lattice ``t0 + k step``
inside the segments that can reach the terrain (the kernel skips only samples proven above
it), so they find the same crossings (a feature thinner than ``step`` can be missed by both)
and the refined ranges agree to the refinement tolerance.

The torch set-up of :func:`~.raycast.raycast` hands the kernel each ray's march interval
``[t0, t1]`` after its start rules: a ray whose march starts over nodata (a hole under the
camera) has already been followed over it (``raycast._cross_start_nodata``) and comes with
``t0`` at its first sample with data, above the terrain; so the kernel marches exactly the rays
and intervals the torch loop marches.

Output codes per ray: 0 = no event up to ``t1`` (the caller decides SKY or UNAVAILABLE), 1 =
HIT with its range, 2 = UNAVAILABLE (nodata met, or NaN during refinement).
"""
from __future__ import annotations

import logging
from typing import Any

_LOG = logging.getLogger(__name__)
_KERNEL: Any = None


def _f_at(h_ptr, nx, fx1, fy1, gx0, gy0, oz, gdx, gdy, dz, t):
    # z_ray - bilinear terrain at range t (float64 t, float32 terrain as raycast.f_at / _bilinear);
    # fx1, fy1 = Nx - 1, Ny - 1 as float32 (ints equal to 1 would be specialised to constants)
    tc = t.to(tl.float32)  # noqa: F821
    gx = gx0 + tc * gdx
    gy = gy0 + tc * gdy
    inside = (gx >= 0) & (gx <= fx1) & (gy >= 0) & (gy <= fy1)
    gxc = tl.minimum(tl.maximum(tl.where(gx == gx, gx, 0.0), 0.0), fx1)  # noqa: F821
    gyc = tl.minimum(tl.maximum(tl.where(gy == gy, gy, 0.0), 0.0), fy1)  # noqa: F821
    ix = tl.minimum(tl.floor(gxc), fx1 - 1.0)  # noqa: F821
    iy = tl.minimum(tl.floor(gyc), fy1 - 1.0)  # noqa: F821
    wx = gxc - ix
    wy = gyc - iy
    base = iy.to(tl.int64) * nx + ix.to(tl.int64)  # noqa: F821
    h00 = tl.load(h_ptr + base)  # noqa: F821
    h01 = tl.load(h_ptr + base + 1)  # noqa: F821
    h10 = tl.load(h_ptr + base + nx)  # noqa: F821
    h11 = tl.load(h_ptr + base + nx + 1)  # noqa: F821
    a = h00 + wx * (h01 - h00)
    b = h10 + wx * (h11 - h10)
    z = a + wy * (b - a)
    z = tl.where(inside, z, float('nan'))  # noqa: F821
    zr = oz + tc * dz
    return zr - z


def _march_kernel(gx0_ptr, gy0_ptr, oz_ptr, gdx_ptr, gdy_ptr, dz_ptr, t0_ptr, t1_ptr, h_ptr,
                  bmax_ptr, bslope_ptr, code_ptr, range_ptr, N, nx, fx1, fy1, nbx, fbx1, fby1,
                  block, seg, step, n_seg, cell, target, max_iter,
                  N_BISECT: tl.constexpr, BLOCK: tl.constexpr):  # noqa: F821
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # noqa: F821
    rm = r < N
    gx0d = tl.load(gx0_ptr + r, mask=rm, other=0.0)  # noqa: F821
    gy0d = tl.load(gy0_ptr + r, mask=rm, other=0.0)  # noqa: F821
    ozd = tl.load(oz_ptr + r, mask=rm, other=0.0)  # noqa: F821
    gdxd = tl.load(gdx_ptr + r, mask=rm, other=0.0)  # noqa: F821
    gdyd = tl.load(gdy_ptr + r, mask=rm, other=0.0)  # noqa: F821
    dzd = tl.load(dz_ptr + r, mask=rm, other=0.0)  # noqa: F821
    t1 = tl.load(t1_ptr + r, mask=rm, other=0.0)  # noqa: F821
    t = tl.load(t0_ptr + r, mask=rm, other=0.0)  # noqa: F821
    gx0 = gx0d.to(tl.float32)  # noqa: F821
    gy0 = gy0d.to(tl.float32)  # noqa: F821
    oz = ozd.to(tl.float32)  # noqa: F821
    gdx = gdxd.to(tl.float32)  # noqa: F821
    gdy = gdyd.to(tl.float32)  # noqa: F821
    dz = dzd.to(tl.float32)  # noqa: F821
    d_h = tl.sqrt(gdxd * gdxd + gdyd * gdyd) * cell  # noqa: F821 - horizontal m per m
    active = rm & (t < t1)
    fine = tl.zeros([BLOCK], dtype=tl.int32)  # noqa: F821
    fine_end = t
    fa = _f_at(h_ptr, nx, fx1, fy1, gx0, gy0, oz, gdx, gdy, dz, t)
    code = tl.zeros([BLOCK], dtype=tl.int32)  # noqa: F821
    ta = t
    tb = t
    fb = fa
    it = tl.full([], 0, tl.int32)  # noqa: F821
    while (tl.max(active.to(tl.int32), axis=0) > 0) & (it < max_iter):  # noqa: F821
        # coarse lanes: skip the segment, or turn fine
        te = tl.minimum(t + seg, t1)  # noqa: F821
        z_lo = tl.minimum(ozd + t * dzd, ozd + te * dzd)  # noqa: F821
        bxf = tl.floor((gx0d + t * gdxd) / block)  # noqa: F821
        byf = tl.floor((gy0d + t * gdyd) / block)  # noqa: F821
        bx = tl.minimum(tl.maximum(tl.where(bxf == bxf, bxf, 0.0), 0.0), fbx1)  # noqa: F821
        by = tl.minimum(tl.maximum(tl.where(byf == byf, byf, 0.0), 0.0), fby1)  # noqa: F821
        bidx = by.to(tl.int64) * nbx + bx.to(tl.int64)  # noqa: F821
        bm = tl.load(bmax_ptr + bidx, mask=active, other=0.0).to(tl.float64)  # noqa: F821
        bs = tl.load(bslope_ptr + bidx, mask=active, other=0.0).to(tl.float64)  # noqa: F821
        coarse = active & (fine == 0)
        skip = coarse & (z_lo > bm)
        to_fine = coarse & ((z_lo > bm) == 0)
        t = tl.where(skip, t + seg, t)  # noqa: F821
        fine_end = tl.where(to_fine, t + seg, fine_end)  # noqa: F821
        # fine lanes (those that were fine at the start of this iteration): one step
        stepping = active & (fine != 0)
        # k whole steps where the slope bound proves they cross nothing (as raycast_numba):
        # den <= 0 -> a whole segment; NaN (unbounded slope, vertical ray) -> one step
        den = bs * d_h - dzd
        q = (fa.to(tl.float64) - 1e-3) / den  # noqa: F821
        k = tl.where(q >= n_seg * step, n_seg * 1.0,  # noqa: F821
                     tl.where(q >= 2.0 * step, tl.floor(q / step), 1.0))  # noqa: F821
        k = tl.where(den <= 0, n_seg * 1.0, k)  # noqa: F821
        tn = tl.minimum(t + k * step, t1)  # noqa: F821
        # one terrain lookup per lane: the next sample of a fine lane, or the start of the
        # fine phase of a lane turning fine (after coarse skips its fa is stale, and a stale,
        # larger fa would stretch the slope-bound steps over real crossings)
        f_ev = _f_at(h_ptr, nx, fx1, fy1, gx0, gy0, oz, gdx, gdy, dz,
                     tl.where(to_fine, t, tn))  # noqa: F821
        fa = tl.where(to_fine, f_ev, fa)  # noqa: F821
        fn = f_ev
        nan_ev = stepping & (fn != fn)
        hit_ev = stepping & (fn <= 0)
        ta = tl.where(hit_ev, t, ta)  # noqa: F821
        tb = tl.where(hit_ev, tn, tb)  # noqa: F821
        fb = tl.where(hit_ev, fn, fb)  # noqa: F821
        code = tl.where(hit_ev, 1, tl.where(nan_ev, 2, code))  # noqa: F821
        moved = stepping & (hit_ev == 0) & (nan_ev == 0)
        t = tl.where(moved, tn, t)  # noqa: F821
        fa = tl.where(moved, fn, fa)  # noqa: F821
        back = moved & (t >= fine_end)
        fine = tl.where(to_fine, 1, tl.where(back, 0, fine))  # noqa: F821
        active = active & (hit_ev == 0) & (nan_ev == 0) & (t < t1)
        it += 1
    # refine the brackets: bisection, then one secant step (as raycast())
    hit = code == 1
    nan_seen = tl.zeros([BLOCK], dtype=tl.int1)  # noqa: F821
    for _ in range(N_BISECT):
        # a lane stops at the torch loop's final bracket width (longer slope-step brackets
        # take more halvings)
        live = hit & ((tb - ta) > target)
        tm = 0.5 * (ta + tb)
        fm = _f_at(h_ptr, nx, fx1, fy1, gx0, gy0, oz, gdx, gdy, dz, tm)
        m_nan = fm != fm
        nan_seen = nan_seen | (live & m_nan)
        lower = m_nan | (fm <= 0)
        tb = tl.where(live & lower, tm, tb)  # noqa: F821
        fb = tl.where(live & lower, fm, fb)  # noqa: F821
        ta = tl.where(live & (lower == 0), tm, ta)  # noqa: F821
        fa = tl.where(live & (lower == 0), fm, fa)  # noqa: F821
    denom = fa - fb
    ok = (fb == fb) & (tl.abs(fb) < float('inf')) & (denom > 0)  # noqa: F821
    frac = tl.where(ok, fa / tl.where(ok, denom, 1.0), 1.0)  # noqa: F821
    frac = tl.minimum(tl.maximum(frac.to(tl.float64), 0.0), 1.0)  # noqa: F821
    th = ta + frac * (tb - ta)
    finite = (th == th) & (tl.abs(th) < float('inf'))  # noqa: F821
    bad = hit & (nan_seen | (finite == 0))
    code = tl.where(bad, 2, code)  # noqa: F821
    tl.store(code_ptr + r, code, mask=rm)  # noqa: F821
    tl.store(range_ptr + r, tl.where(code == 1, th, float('nan')), mask=rm)  # noqa: F821


def _kernel() -> Any:
    """JIT the kernel on first use (imports triton)."""
    global _KERNEL
    if _KERNEL is None:
        import triton
        import triton.language as tl_mod

        globals()['tl'] = tl_mod
        globals()['_f_at'] = triton.jit(_f_at)
        _KERNEL = triton.jit(_march_kernel)
    return _KERNEL


def kernel_ok(device: Any, dtype: Any) -> bool:
    """Whether the kernel can march rays of a field on ``device`` with ``dtype`` terrain: float32
    on CUDA with triton, or on the CPU under ``sgm_triton.use_interpreter()``."""
    import torch

    from .sgm_triton import kernel_device_ok, triton_available

    return dtype == torch.float32 and kernel_device_ok(device) and triton_available()


def march(gx0, gy0, oz, gdx, gdy, dz, t0, t1, hflat, shape: tuple[int, int], bmax,
          block: int, seg: float, step: float, n_bisect: int, bslope=None) -> tuple[Any, Any]:
    """March and refine N rays in one launch.

    Args:
        gx0, gy0: (N,) float64 grid-index coordinates of the origins (column, row).
        oz: (N,) float64 origin ENU z, metres.
        gdx, gdy: (N,) float64 ray direction in grid-index units per metre of range.
        dz: (N,) float64 ray direction z per metre.
        t0, t1: (N,) float64 range interval to march, metres.
        hflat: (Ny * Nx,) float32 heights (NaN = no data); shape: (Ny, Nx).
        bmax: (nby, nbx) float32 ``HeightField.block_max(block)``.
        block: block side in cells; seg: block * cell (m); step: fine step (m).
        n_bisect: bisection iterations (of a ``step``-long bracket; longer brackets get
            more, to the same final width).
        bslope: (nby, nbx) ``HeightField.block_slope(block)``; None = every fine step is
            ``step`` metres.

    Returns:
        (code (N,) int32: 0 no event, 1 hit, 2 unavailable; range (N,) float64, NaN unless hit).
    """
    import math

    import torch

    k = _kernel()
    n = int(gx0.numel())
    dev = gx0.device
    code = torch.empty(n, dtype=torch.int32, device=dev)
    rng = torch.empty(n, dtype=torch.float64, device=dev)
    if n == 0:
        return code, rng
    ny, nx = shape
    nby, nbx = bmax.shape
    span = float((t1 - t0).clamp_min(0).max()) if n else 0.0
    max_iter = int(math.ceil(span / step) + math.ceil(span / seg)) + 8
    block_rays = 128
    n_seg = max(1, int(math.floor(seg / step + 1e-9)))
    bs = torch.full_like(bmax, math.inf) if bslope is None else bslope.to(bmax.dtype)
    if tuple(bs.shape) != tuple(bmax.shape):
        raise ValueError(f'bslope must have the shape of bmax {tuple(bmax.shape)}, got '
                         f'{tuple(bs.shape)}')
    # a bracket of up to n_seg steps needs log2(n_seg) more halvings for the same final width
    n_bis = int(n_bisect) + int(math.ceil(math.log2(n_seg)))
    c = [x.contiguous() for x in (gx0, gy0, oz, gdx, gdy, dz, t0, t1)]
    k[(-(-n // block_rays),)](*c, hflat.contiguous(), bmax.contiguous(), bs.contiguous(), code,
                              rng, n, nx, float(nx - 1), float(ny - 1), nbx, float(nbx - 1),
                              float(nby - 1), float(block), float(seg), float(step), n_seg,
                              float(seg / block), float(step * 0.5 ** int(n_bisect)), max_iter,
                              N_BISECT=n_bis, BLOCK=block_rays)
    return code, rng
