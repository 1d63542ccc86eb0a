"""numba kernels of :mod:`.raycast_numba` (imports numba; imported only when a march runs).

Module-level functions so that numba can cache the compiled code on disk (``cache=True``;
closures are not cached). See :mod:`.raycast_numba` for the method.
"""
import numba
import numpy as np

from ._numba import configure_threading

configure_threading(numba)


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
        buf[slot] = np.nan  # a NaN of the field dtype (np.nan would make f_at float64)
        return buf[slot]
    ix = np.floor(gx)
    iy = np.floor(gy)
    if ix > lim[2]:
        ix = lim[2]
    if iy > lim[3]:
        iy = lim[3]
    z, _, _ = patch(hflat, nx, int(iy) * nx + int(ix), gx - ix, gy - iy)
    return (oz + tc * dz) - z


@numba.njit(cache=True, nogil=True, inline='always')
def patch(hflat, nx, base, wx, wy):
    # the bilinear height and its gradient per grid unit (d/dgx, d/dgy) in the cell whose
    # south-west node has the flat index base, at the fraction (wx, wy) of the cell, in the
    # field's dtype, as raycast._bilinear computes them
    h00 = hflat[base]
    h01 = hflat[base + 1]
    h10 = hflat[base + nx]
    h11 = hflat[base + nx + 1]
    a = h00 + wx * (h01 - h00)
    b = h10 + wx * (h11 - h10)
    one = hflat.dtype.type(1)
    return a + wy * (b - a), (one - wy) * (h01 - h00) + wy * (h11 - h10), b - a


@numba.njit(cache=True, nogil=True)
def block_of(gx0, gy0, gdx, gdy, t, block, nby, nbx):
    # (row, column) of the block_max / block_slope block under the ray at range t, clamped
    # (NaN -> 0), as the torch loop and the Triton kernel
    bxf = np.floor((gx0 + t * gdx) / block)
    byf = np.floor((gy0 + t * gdy) / block)
    bx = 0 if not bxf >= 0 else min(int(bxf), nbx - 1)
    by = 0 if not byf >= 0 else min(int(byf), nby - 1)
    return by, bx


@numba.njit(cache=True, nogil=True)
def march_ray(buf, c, lim, hflat, nx, bmax, bslope, block, seg, step, target, n_seg,
              gx0, gy0, oz, gdx, gdy, dz, gx0c, gy0c, ozc, gdxc, gdyc, dzc, t, t_end):
    # March one ray from t (above the terrain there) to t_end and refine its first crossing:
    # (0 no event | 1 hit | 2 unavailable, range of the hit or NaN).
    nby, nbx = bmax.shape
    margin = 1e-3  # m: float32 terrain rounding kept out of the slope-bound step
    cell = seg / block
    fa = f_at(buf, c, lim, hflat, nx, gx0c, gy0c, ozc, gdxc, gdyc, dzc, t)
    fb = fa
    ta = t
    tb = t
    ev = 0
    while ev == 0 and t < t_end:
        # coarse: skip a segment that stays above the terrain bound under it
        te = min(t + seg, t_end)
        z_lo = min(oz + t * dz, oz + te * dz)
        by, bx = block_of(gx0, gy0, gdx, gdy, t, block, nby, nbx)
        if z_lo > bmax[by, bx]:
            t = t + seg
            continue
        fine_end = t + seg
        # the terrain where the fine phase starts (a coarse skip moved t past the last value:
        # a stale, larger fa would stretch the slope-bound steps over real crossings)
        fa = f_at(buf, c, lim, hflat, nx, gx0c, gy0c, ozc, gdxc, gdyc, dzc, t)
        # fine: steps up to fine_end, each `step` metres or, where the slope bound proves no
        # crossing, a whole number of steps (the samples stay on the lattice t0 + k step of
        # the torch loop, so both find the same crossings)
        d_h = np.hypot(gdx, gdy) * cell
        while True:
            by, bx = block_of(gx0, gy0, gdx, gdy, t, block, nby, nbx)
            den = bslope[by, bx] * d_h - dz
            k = n_seg  # den <= 0: the ray climbs faster than the terrain can
            if not den <= 0:  # den > 0, or NaN (unbounded slope, vertical ray)
                q = (fa - margin) / den  # metres proven free of any crossing
                k = 1
                if q >= n_seg * step:
                    k = n_seg
                elif q >= 2 * step:
                    k = int(np.floor(q / step))
            tn = min(t + k * step, t_end)
            fn = f_at(buf, c, lim, hflat, nx, gx0c, gy0c, ozc, gdxc, gdyc, dzc, tn)
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
        return ev, np.nan
    # refine: the first root of the bracket's piecewise-quadratic f (solve_bracket); where it
    # cannot answer (too many cells), bisection to the target width and a secant step
    code, th = solve_bracket(hflat, nx, int(lim[0]), int(lim[1]), gx0, gy0, oz, gdx, gdy, dz,
                             ta, tb)
    if code == 1:
        return 1, th
    if code == 2:
        return 2, np.nan
    ok, th = refine_bracket(buf, c, lim, hflat, nx, gx0c, gy0c, ozc, gdxc, gdyc, dzc, ta, tb, fa,
                            fb, 128, target)
    if not ok:
        return 2, np.nan
    return 1, th


@numba.njit(cache=True, nogil=True)
def solve_bracket(hflat, nx, nx1, ny1, gx0, gy0, oz, gdx, gdy, dz, ta, tb):
    # The first crossing of the terrain in a bracket [ta, tb] (ray above the terrain at ta,
    # at or below it at tb), exactly: within one cell the bilinear terrain along a ray is a
    # quadratic in t, so the bracket is cut where the ray crosses cell edges and the first
    # piece with a root gives it (float64 on the field's heights). gx0, gy0, gdx, gdy: grid
    # units (per metre); nx1, ny1 = Nx - 1, Ny - 1. Returns (1, t) a hit, (2, nan) a nodata
    # cell before the crossing, (0, nan) not solved here (more than 64 cells, or no root
    # found by rounding): the caller bisects.
    # walk the cells along the ray (no allocation): the next x and y cell edges after t0
    t1 = ta
    for _ in range(64):
        t0 = t1
        if not t0 < tb:
            break
        t1 = tb
        for axis in range(2):
            g0 = gx0 if axis == 0 else gy0
            gd = gdx if axis == 0 else gdy
            if gd != 0:
                g = g0 + t0 * gd
                edge = np.floor(g) + 1.0 if gd > 0 else np.ceil(g) - 1.0
                te = (edge - g0) / gd
                if te > t0 and te < t1:
                    t1 = te
        tm = 0.5 * (t0 + t1)
        gxm = gx0 + tm * gdx
        gym = gy0 + tm * gdy
        ix = min(max(np.floor(gxm), 0.0), nx1 - 1.0)
        iy = min(max(np.floor(gym), 0.0), ny1 - 1.0)
        if not (gxm >= 0 and gxm <= nx1 and gym >= 0 and gym <= ny1):
            return 2, np.nan  # left the grid inside the bracket: unknown
        base = int(iy) * nx + int(ix)
        h00 = float(hflat[base])
        h01 = float(hflat[base + 1])
        h10 = float(hflat[base + nx])
        h11 = float(hflat[base + nx + 1])
        if not (h00 == h00 and h01 == h01 and h10 == h10 and h11 == h11):
            return 2, np.nan  # nodata before the crossing
        p = h01 - h00
        q = h10 - h00
        d = h00 - h01 - h10 + h11
        wx = gx0 + t0 * gdx - ix
        wy = gy0 + t0 * gdy - iy
        f0 = oz + t0 * dz - (h00 + p * wx + q * wy + d * wx * wy)
        if f0 <= 0:
            return 1, t0
        # f(t0 + s) = f0 + b s + a s^2
        a2 = -d * gdx * gdy
        b1 = dz - p * gdx - q * gdy - d * (wx * gdy + wy * gdx)
        s1 = t1 - t0
        root = np.inf
        if abs(a2) * s1 <= 1e-12 * (abs(b1) + 1e-300):
            if b1 < 0:
                root = -f0 / b1
        else:
            disc = b1 * b1 - 4.0 * a2 * f0
            if disc >= 0:
                sq = np.sqrt(disc)
                qq = -0.5 * (b1 + sq if b1 >= 0 else b1 - sq)
                r1 = qq / a2
                r2 = f0 / qq if qq != 0 else np.inf
                for r in (r1, r2):
                    if r >= 0 and r < root:
                        root = r
        if root <= s1:
            return 1, t0 + root
        fe = f0 + b1 * s1 + a2 * s1 * s1
        if fe <= 0:  # rounding: the root is at the end of this piece
            return 1, t1
    return 0, np.nan  # more than 64 cells, or no root found by rounding


@numba.njit(cache=True, nogil=True)
def cross_start_nodata(buf, c, lim, hflat, nx, bdata, block, step, n_seg, gx0, gy0, gdx, gdy,
                       gx0c, gy0c, ozc, gdxc, gdyc, dzc, t0, t1):
    # The march starts over nodata: the first sample t_k = min(t0 + step * k, t1), k >= 1, with
    # terrain data, as raycast._cross_start_nodata (a block without data in its 3 x 3
    # neighbourhood skips n_seg samples, all nodata): (found, t_k, f there).
    nby, nbx = bdata.shape
    k = 1
    while True:
        tk = min(t0 + step * k, t1)
        by, bx = block_of(gx0, gy0, gdx, gdy, tk, block, nby, nbx)
        if bdata[by, bx] == 0 and tk < t1:
            k += n_seg
            continue
        f = f_at(buf, c, lim, hflat, nx, gx0c, gy0c, ozc, gdxc, gdyc, dzc, tk)
        if f == f:
            return True, tk, f, k
        if tk >= t1:
            return False, tk, f, k
        k += 1


@numba.njit(cache=True, nogil=True)
def edge_of_nodata(buf, c, lim, hflat, nx, gx0c, gy0c, ozc, gdxc, gdyc, dzc, t_nan, t_data,
                   f_data, n_bisect):
    # the first point with data between a nodata sample and the sample with data after it,
    # by n_bisect bisections, as raycast._edge_of_nodata: (t, f there)
    a = t_nan
    b = t_data
    fb = f_data
    for _ in range(n_bisect):
        tm = 0.5 * (a + b)
        fm = f_at(buf, c, lim, hflat, nx, gx0c, gy0c, ozc, gdxc, gdyc, dzc, tm)
        if fm != fm:
            a = tm
        else:
            b = tm
            fb = fm
    return b, fb


@numba.njit(cache=True, nogil=True)
def refine_bracket(buf, c, lim, hflat, nx, gx0c, gy0c, ozc, gdxc, gdyc, dzc, ta, tb, fa, fb,
                   n_bisect, target):
    # the refinement of raycast() of a bracket [ta, tb] (terrain above at ta, below at tb):
    # at most n_bisect bisections, stopping once the bracket is no wider than target (a
    # negative target: exactly n_bisect), then one secant step: (ok, range)
    nan_seen = False
    for _ in range(n_bisect):
        if not tb - ta > target:
            break
        tm = 0.5 * (ta + tb)
        fm = f_at(buf, c, lim, hflat, nx, gx0c, gy0c, ozc, gdxc, gdyc, dzc, tm)
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
        return False, np.nan
    return True, th


@numba.njit(cache=True, nogil=True)
def grid_exit(g0, gd, hi):
    # range at which a ray leaves [0, hi] in one grid-index axis (inf if it never does)
    if gd > 0:
        return (hi - g0) / gd
    if gd < 0:
        return (0 - g0) / gd
    return np.inf


@numba.njit(cache=True, parallel=True, nogil=True)
def cast_impl(origin, d, tmin, tsafe, grid, hflat, lim, nx, ny, bmax, bslope, bdata, block, seg, step,
              n_bisect, n_groups, sky_outside, status, rng):
    # raycast_numba.cast: the whole status / range part of raycast() per ray, in raycast()'s
    # float64 order of operations. origin (1 or N, 3), d (N, 3) unit ENU; tmin (N,) or (0,);
    # tsafe (N,) or (0,): a range before which the ray meets no event (raycast_embree), where
    # the march starts on its own lattice t0 + k step (inf: no event at all);
    # bdata: HeightField.block_data (0 = no data around the block);
    # grid = (x0, y0, cell, z_max (NaN = no data), max_range); status: RayStatus codes
    # (1 HIT, 2 SKY, 3 UNAVAILABLE, 4 BELOW_TERRAIN; raycast_numba checks them).
    n = d.shape[0]
    x0, y0, cell, z_max, max_range = grid[0], grid[1], grid[2], grid[3], grid[4]
    no_data = z_max != z_max
    ct = hflat.dtype.type
    target = step * 0.5 ** n_bisect
    n_seg = max(1, int(np.floor(seg / step + 1e-9)))
    buf = np.empty(n_groups, dtype=hflat.dtype)
    one_origin = origin.shape[0] == 1
    for c in numba.prange(n_groups):
        for r in range(c * n // n_groups, (c + 1) * n // n_groups):  # a contiguous chunk
            o = 0 if one_origin else r
            gx0 = (origin[o, 0] - x0) / cell
            gy0 = (origin[o, 1] - y0) / cell
            gdx = d[r, 0] / cell
            gdy = d[r, 1] / cell
            oz = origin[o, 2]
            dz = d[r, 2]
            rng[r] = np.nan
            if not (gx0 >= 0 and gx0 <= nx - 1 and gy0 >= 0 and gy0 <= ny - 1):
                status[r] = 3  # origin outside the grid: UNAVAILABLE
                continue
            t_grid = min(grid_exit(gx0, gdx, nx - 1), grid_exit(gy0, gdy, ny - 1))
            if no_data:
                t_lo = 0.0
                t_hi = 0.0
            else:
                t_cross = (z_max - oz) / (dz if dz != 0 else 1.0)
                above = oz > z_max
                if dz < 0:
                    t_lo = max(t_cross, 0.0)
                else:
                    t_lo = np.inf if above else 0.0
                if dz > 0:
                    t_hi = -np.inf if above else t_cross
                else:
                    t_hi = -np.inf if (above and dz == 0) else np.inf
            t0 = max(t_lo, 0.0)
            if tmin.shape[0]:
                t0 = max(t0, tmin[r])
            t1 = min(min(t_hi, t_grid), max_range)
            if tsafe.shape[0] and tsafe[r] > t0 + step:  # skip what is proven free
                t0 = t0 + step * np.floor((tsafe[r] - t0) / step - 1.0) \
                    if tsafe[r] < np.inf else np.inf
            ev = 0
            if not no_data and t0 <= t1:
                gx0c, gy0c, ozc = ct(gx0), ct(gy0), ct(oz)
                gdxc, gdyc, dzc = ct(gdx), ct(gdy), ct(dz)
                f0 = f_at(buf, c, lim, hflat, nx, gx0c, gy0c, ozc, gdxc, gdyc, dzc, t0)
                emerged = False
                lost = False
                t_prev = t0
                if f0 != f0:  # nodata where the march starts: cross it (raycast docstring)
                    found, t_e, f_e, k_e = cross_start_nodata(
                        buf, c, lim, hflat, nx, bdata, block, step, n_seg, gx0, gy0, gdx, gdy,
                        gx0c, gy0c, ozc, gdxc, gdyc, dzc, t0, t1)
                    if found:
                        emerged = True
                        t_prev = t0 + step * (k_e - 1)
                        t0 = t_e
                        f0 = f_e
                    else:
                        lost = True
                if lost:
                    # over nodata to its end: unknown, unless it climbs out of the z_max slab
                    # inside the grid and range (no event: the end rules, SKY)
                    if not t_hi < min(t_grid, max_range):
                        ev = 2
                elif f0 <= 0 and emerged:
                    # out of the hole below the terrain: crossed in the hole (unknown), or
                    # between its edge and this sample (a HIT bracketed there)
                    t_d, f_d = edge_of_nodata(buf, c, lim, hflat, nx, gx0c, gy0c, ozc, gdxc,
                                              gdyc, dzc, t_prev, t0, f0, n_bisect)
                    ev = 2
                    if f_d > 0:
                        ok, th = refine_bracket(buf, c, lim, hflat, nx, gx0c, gy0c, ozc, gdxc,
                                                gdyc, dzc, t_d, t0, f_d, f0, n_bisect, -1.0)
                        if ok:
                            ev = 1
                            rng[r] = th
                elif f0 <= 0:  # at or below the terrain where the march would start
                    if t0 <= 0:
                        status[r] = 4  # the origin: BELOW_TERRAIN
                        continue
                    ev = 1  # entering the z_max slab on a node at z_max: a touch at t0
                    rng[r] = t0
                elif t0 < t1:
                    ev, rng[r] = march_ray(
                        buf, c, lim, hflat, nx, bmax, bslope, block, seg, step, target, n_seg,
                        gx0, gy0, oz, gdx, gdy, dz, gx0c, gy0c, ozc, gdxc, gdyc, dzc, t0, t1)
            if ev == 1:
                status[r] = 1  # HIT
            elif ev == 2:
                status[r] = 3  # UNAVAILABLE
            else:  # no event: SKY or UNAVAILABLE by where the ray ends
                sky = False
                if not no_data:
                    stays_in = t_grid >= max_range
                    z_exit = oz + min(t_grid, 1e12) * dz
                    sky = stays_in or (sky_outside and z_exit > z_max and dz >= 0)
                status[r] = 2 if sky else 3  # SKY / UNAVAILABLE
