"""numba kernels of :mod:`.raycast_numba` (imports numba; imported only when a march runs).

Module-level functions so that numba can cache the compiled code on disk (``cache=True``;
closures are not cached). See :mod:`.raycast_numba` for the method.
"""
# ruff: noqa: N803 - the argument names follow raycast_numba.march
import numba
import numpy as np

if numba.config.THREADING_LAYER == 'default':
    # TBB first (numba's default order) only warns here about an old libtbb
    numba.config.THREADING_LAYER_PRIORITY = ['omp', 'workqueue', 'tbb']


@numba.njit(cache=True, nogil=True)
def f_at(buf, slot, lim, hflat, nx, gx0, gy0, oz, gdx, gdy, dz, t):
    # z_ray - bilinear terrain at range t; buf[slot] (the caller's own slot of a buffer in
    # the field dtype) casts t to it,
    # lim = (Nx - 1, Ny - 1, Nx - 2, Ny - 2) in that dtype (keeps float32 float32)
    buf[slot] = t
    tc = buf[slot]
    gx = gx0 + tc * gdx
    gy = gy0 + tc * gdy
    if not (gx >= 0 and gx <= lim[0] and gy >= 0 and gy <= lim[1]):  # also NaN
        return np.nan
    ix = np.floor(gx)
    iy = np.floor(gy)
    if ix > lim[2]:
        ix = lim[2]
    if iy > lim[3]:
        iy = lim[3]
    wx = gx - ix
    wy = gy - iy
    base = int(iy) * nx + int(ix)
    h00 = hflat[base]
    h01 = hflat[base + 1]
    h10 = hflat[base + nx]
    h11 = hflat[base + nx + 1]
    a = h00 + wx * (h01 - h00)
    b = h10 + wx * (h11 - h10)
    z = a + wy * (b - a)
    return (oz + tc * dz) - z


@numba.njit(cache=True, nogil=True)
def block_of(gx0, gy0, gdx, gdy, t, block, nby, nbx):
    # (row, column) of the block_max / block_slope block under the ray at range t, clamped
    # (NaN -> 0), as the torch loop and the Triton kernel
    bxf = np.floor((gx0 + t * gdx) / block)
    byf = np.floor((gy0 + t * gdy) / block)
    bx = 0 if not bxf >= 0 else min(int(bxf), nbx - 1)
    by = 0 if not byf >= 0 else min(int(byf), nby - 1)
    return by, bx


@numba.njit(cache=True, parallel=True, nogil=True)
def march_impl(gx0, gy0, oz, gdx, gdy, dz, t0, t1, gx0c, gy0c, ozc, gdxc, gdyc, dzc,
               hflat, lim, nx, bmax, bslope, block, seg, step, n_bisect, n_groups, code, rng):
    n = gx0.shape[0]
    nby, nbx = bmax.shape
    margin = 1e-3  # m: float32 terrain rounding kept out of the slope-bound step
    cell = seg / block
    target = step * 0.5 ** n_bisect  # final bracket width of the torch loop's bisection
    n_seg = max(1, int(np.floor(seg / step + 1e-9)))  # most whole steps in one long step
    # group c takes rays c, c + n_groups, ...: every group gets a like mix of cheap and
    # expensive rays (sky, ground, far), so the threads finish together
    buf = np.empty(n_groups, dtype=hflat.dtype)  # one slot per group: no shared scratch
    for c in numba.prange(n_groups):
        for r in range(c, n, n_groups):
            code[r] = 0
            rng[r] = np.nan
            t = t0[r]
            t_end = t1[r]
            if not t < t_end:
                continue
            fa = f_at(buf, c, lim, hflat, nx, gx0c[r], gy0c[r], ozc[r], gdxc[r], gdyc[r],
                      dzc[r], t)
            fb = fa
            ta = t
            tb = t
            ev = 0
            while ev == 0 and t < t_end:
                # coarse: skip a segment that stays above the terrain bound under it
                te = min(t + seg, t_end)
                z_lo = min(oz[r] + t * dz[r], oz[r] + te * dz[r])
                by, bx = block_of(gx0[r], gy0[r], gdx[r], gdy[r], t, block, nby, nbx)
                if z_lo > bmax[by, bx]:
                    t = t + seg
                    continue
                fine_end = t + seg
                # fine: steps up to fine_end, each `step` metres or, where the slope bound
                # proves no crossing, a whole number of steps (the samples stay on the lattice
                # t0 + k step of the torch loop, so both find the same crossings)
                d_h = np.hypot(gdx[r], gdy[r]) * cell
                while True:
                    by, bx = block_of(gx0[r], gy0[r], gdx[r], gdy[r], t, block, nby, nbx)
                    den = bslope[by, bx] * d_h - dz[r]
                    k = n_seg  # den <= 0: the ray climbs faster than the terrain can
                    if not den <= 0:  # den > 0, or NaN (unbounded slope, vertical ray)
                        q = (fa - margin) / den  # metres proven free of any crossing
                        k = 1
                        if q >= n_seg * step:
                            k = n_seg
                        elif q >= 2 * step:
                            k = int(np.floor(q / step))
                    adv = k * step
                    tn = min(t + adv, t_end)
                    fn = f_at(buf, c, lim, hflat, nx, gx0c[r], gy0c[r], ozc[r], gdxc[r],
                              gdyc[r], dzc[r], tn)
                    if fn != fn:
                        ev = 2
                        break
                    if fn <= 0:
                        ev = 1
                        ta = t
                        tb = tn
                        fb = fn
                        break
                    t = tn
                    fa = fn
                    if t >= t_end or t >= fine_end:
                        break
            if ev != 1:
                code[r] = ev
                continue
            # refine: bisection, then one secant step (as raycast())
            nan_seen = False
            for _ in range(128):
                if not tb - ta > target:
                    break
                tm = 0.5 * (ta + tb)
                fm = f_at(buf, c, lim, hflat, nx, gx0c[r], gy0c[r], ozc[r], gdxc[r], gdyc[r],
                          dzc[r], tm)
                m_nan = fm != fm
                if m_nan:
                    nan_seen = True
                if m_nan or fm <= 0:
                    tb = tm
                    fb = fm
                else:
                    ta = tm
                    fa = fm
            denom = fa - fb
            frac = 1.0
            if fb == fb and abs(fb) < np.inf and denom > 0:
                frac = min(max(float(fa / denom), 0.0), 1.0)
            th = ta + frac * (tb - ta)
            if nan_seen or not abs(th) < np.inf:
                code[r] = 2
            else:
                code[r] = 1
                rng[r] = th
