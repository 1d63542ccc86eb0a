"""numba kernels of :mod:`.prior_lattice` (imports numba; imported only when that cast runs).

Module-level functions so that numba can cache the compiled code on disk. The terrain is
evaluated and marched with the ray-march's own ``f_at`` and ``march_ray``
(:mod:`._raycast_numba_kernels`): the same arithmetic as the march.
"""
import numba
import numpy as np

from ._numba import configure_threading
from ._raycast_numba_kernels import f_at, march_ray, patch, solve_bracket

configure_threading(numba)

#: parallel work items (each a contiguous chunk of the rays, one scratch slot each)
_GROUPS = 64


@numba.njit(cache=True, nogil=True)
def _cell_frac(p, width, ly, lx, a_row, b_col):
    # the lattice cell (row ca, column cb) of flat pixel p and its position in it (fy, fx)
    y = p // width
    x = p - y * width
    ca = a_row[y]
    cb = b_col[x]
    fy = (y - ly[ca]) / (ly[ca + 1] - ly[ca])
    fx = (x - lx[cb]) / (lx[cb + 1] - lx[cb])
    return ca, cb, fy, fx


@numba.njit(cache=True, nogil=True)
def _origin(origin, grid, hflat, n):
    # the work split and the camera in grid units for n rays: (groups, a scratch slot per
    # group in the field dtype, gx0, gy0, oz float64, and the three in the field dtype)
    ct = hflat.dtype.type
    groups = min(_GROUPS, max(n, 1))
    gx0 = (origin[0] - grid[0]) / grid[2]
    gy0 = (origin[1] - grid[1]) / grid[2]
    oz = origin[2]
    return (groups, np.empty(groups, dtype=hflat.dtype), gx0, gy0, oz, ct(gx0), ct(gy0),
            ct(oz))


@numba.njit(cache=True, nogil=True, inline='always')
def _found(p, th, max_range, status, rng, done):
    # a crossing at range th for flat pixel p: a HIT (status 1) within max_range
    if th <= max_range:
        status[p] = 1
        rng[p] = th
        done[p] = True


@numba.njit(cache=True, parallel=True, nogil=True)
def between_impl(origin, d, idx, r_min, r_max, ly, lx, a_row, b_col, width, rel, max_range,
                 grid, hflat, lim, nx, bmax, bslope, block, seg, step, n_bisect, z_max,
                 status, rng, done):
    # For each flat pixel p = idx[k]: the march of the ray-cast (march_ray: coarse skips,
    # slope-bound steps, the same refinement) over [(1 - rel) r_min - step, (1 + rel) r_max
    # + step] of its lattice cell's corner ranges (r_min / r_max (cells)), the start moved
    # down onto the march's lattice t0 + k step (t0: where the ray enters the slab below
    # z_max, as raycast_numba.cast), so it samples what the march from t0 samples there;
    # the ray must be above the terrain at that start (not nodata). origin (3,) ENU,
    # d (P, 3) unit ENU rays of all pixels, ly / lx lattice rows / columns, a_row / b_col the
    # cell of each row / column, grid = (x0, y0, cell), lim as f_at, bmax / bslope as
    # raycast_numba.cast. A crossing within max_range sets status[p] = 1 (HIT),
    # rng[p] and done[p]; others are left alone.
    n = idx.shape[0]
    cell = grid[2]
    ct = hflat.dtype.type
    target = step * 0.5 ** n_bisect
    n_seg = max(1, int(np.floor(seg / step + 1e-9)))
    groups, buf, gx0, gy0, oz, gx0c, gy0c, ozc = _origin(origin, grid, hflat, n)
    for c in numba.prange(groups):
        for k in range(c * n // groups, (c + 1) * n // groups):  # a contiguous chunk
            p = idx[k]
            ca, cb, _, _ = _cell_frac(p, width, ly, lx, a_row, b_col)
            ta = max(r_min[ca, cb] * (1.0 - rel) - step, 0.0)
            tb = min(r_max[ca, cb] * (1.0 + rel) + step, max_range)
            if not (tb > ta and tb < np.inf):
                continue
            gdx, gdy, dz = d[p, 0] / cell, d[p, 1] / cell, d[p, 2]
            t0 = 0.0
            if oz > z_max:
                if not dz < 0:
                    continue
                t0 = (z_max - oz) / dz
            if ta < t0:
                continue
            ta = t0 + step * np.floor((ta - t0) / step)
            gdxc, gdyc, dzc = ct(gdx), ct(gdy), ct(dz)
            fa = f_at(buf, c, lim, hflat, nx, gx0c, gy0c, ozc, gdxc, gdyc, dzc, ta)
            if not fa > 0:  # below the terrain there, or nodata: not for this search
                continue
            ev, th = march_ray(buf, c, lim, hflat, nx, bmax, bslope, block, seg, step, target,
                               n_seg, gx0, gy0, oz, gdx, gdy, dz, gx0c, gy0c, ozc, gdxc, gdyc,
                               dzc, ta, tb)
            if ev == 1:
                _found(p, th, max_range, status, rng, done)


@numba.njit(cache=True, parallel=True, nogil=True)
def guess_impl(origin, d, idx, w_l, ly, lx, a_row, b_col, width, norm, rel, pad, max_range,
               grid, hflat, lim, nx, status, rng, done):
    # For each flat pixel p = idx[k]: its range predicted by the bilinear interpolation of
    # w = |d_rect| / r over its lattice cell (w_l at the lattice; exact on a plane),
    # g = norm[p] / w, and the crossing in [g - (rel g + pad), g + (rel g + pad)] when the
    # ray is above the terrain at its start and at or below it at its end (f_at signs, not
    # nodata), solved exactly (solve_bracket). A crossing within max_range sets
    # status[p] = 1 (HIT), rng[p] and done[p]; others are left alone. Arguments as
    # between_impl; norm (P,) |d_rect| of every pixel.
    n = idx.shape[0]
    cell = grid[2]
    ct = hflat.dtype.type
    groups, buf, gx0, gy0, oz, gx0c, gy0c, ozc = _origin(origin, grid, hflat, n)
    nx1, ny1 = int(lim[0]), int(lim[1])
    for c in numba.prange(groups):
        for k in range(c * n // groups, (c + 1) * n // groups):  # a contiguous chunk
            p = idx[k]
            ca, cb, fy, fx = _cell_frac(p, width, ly, lx, a_row, b_col)
            top = w_l[ca, cb] + fx * (w_l[ca, cb + 1] - w_l[ca, cb])
            bot = w_l[ca + 1, cb] + fx * (w_l[ca + 1, cb + 1] - w_l[ca + 1, cb])
            g = norm[p] / (top + fy * (bot - top))
            if not (g > 0 and g < np.inf):
                continue
            half = rel * g + pad
            ta = max(g - half, 0.0)
            tb = g + half
            gdx, gdy, dz = d[p, 0] / cell, d[p, 1] / cell, d[p, 2]
            gdxc, gdyc, dzc = ct(gdx), ct(gdy), ct(dz)
            fa = f_at(buf, c, lim, hflat, nx, gx0c, gy0c, ozc, gdxc, gdyc, dzc, ta)
            fb = f_at(buf, c, lim, hflat, nx, gx0c, gy0c, ozc, gdxc, gdyc, dzc, tb)
            if not (fa > 0 and fb <= 0):
                continue
            code, th = solve_bracket(hflat, nx, nx1, ny1, gx0, gy0, oz, gdx, gdy, dz, ta, tb)
            if code == 1:
                _found(p, th, max_range, status, rng, done)


@numba.njit(cache=True, parallel=True, nogil=True)
def hit_geometry_impl(origin, d, rng, grid, hflat, lim, nx, ny, src, sv, sh, pcov, acov,
                      source, sin_g, delta, var_rest, var_vert, var_att):
    # Per HIT ray (rng finite; NaN / 0 for the others), the terms of the prior sigma of
    # raycast._hit_geometry, in its
    # dtypes: grid-index hit position in the field dtype, bilinear gradient there, unit
    # normal in float64, DEM sigmas of the nearest node. origin (3,), d (N, 3) unit ENU,
    # grid = (x0, y0, cell), pcov / acov (3, 3) position / attitude covariance (ENU).
    # Out (N,): source id, sin(grazing), delta = sqrt(sigma_v^2 + P_zz) (NaN at zero
    # grazing), and the range variances: var_rest (DEM horizontal + camera horizontal
    # position), var_vert (first-order vertical), var_att (attitude); inf at zero grazing.
    n = d.shape[0]
    x0, y0, cell = grid[0], grid[1], grid[2]
    ct = hflat.dtype.type
    p_zz = pcov[2, 2]
    for r in numba.prange(n):
        t = rng[r]
        if not (t == t):
            source[r] = 0
            sin_g[r] = np.nan
            delta[r] = np.nan
            var_rest[r] = np.nan
            var_vert[r] = np.nan
            var_att[r] = np.nan
            continue
        px = origin[0] + t * d[r, 0]
        py = origin[1] + t * d[r, 1]
        gx = ct((px - x0) / cell)
        gy = ct((py - y0) / cell)
        gxc = min(max(gx, ct(0)), lim[0])
        gyc = min(max(gy, ct(0)), lim[1])
        ix = min(np.floor(gxc), lim[2])
        iy = min(np.floor(gyc), lim[3])
        wx = gxc - ix
        wy = gyc - iy
        _, dzdx, dzdy = patch(hflat, nx, int(iy) * nx + int(ix), wx, wy)
        n0 = -float(dzdx) / cell
        n1 = -float(dzdy) / cell
        nn = np.sqrt(n0 * n0 + n1 * n1 + 1.0)
        n0, n1, n2 = n0 / nn, n1 / nn, 1.0 / nn
        s = -(n0 * d[r, 0] + n1 * d[r, 1] + n2 * d[r, 2])
        s = max(s, 0.0)
        sin_g[r] = s
        jx = min(max(int(np.round(float(gx))), 0), nx - 1)
        jy = min(max(int(np.round(float(gy))), 0), ny - 1)
        node = jy * nx + jx
        source[r] = src[node]
        s_v = float(sv[node])
        s_h = float(sh[node])
        nz2 = n2 * n2
        var_dem = nz2 * s_v * s_v + max(1.0 - nz2, 0.0) * s_h * s_h
        var_pos = (pcov[0, 0] * n0 * n0 + pcov[1, 1] * n1 * n1 + pcov[2, 2] * n2 * n2
                   + (pcov[0, 1] + pcov[1, 0]) * n0 * n1 + (pcov[0, 2] + pcov[2, 0]) * n0 * n2
                   + (pcov[1, 2] + pcov[2, 1]) * n1 * n2)
        c0 = d[r, 1] * n2 - d[r, 2] * n1
        c1 = d[r, 2] * n0 - d[r, 0] * n2
        c2 = d[r, 0] * n1 - d[r, 1] * n0
        va = t * t * (acov[0, 0] * c0 * c0 + acov[1, 1] * c1 * c1 + acov[2, 2] * c2 * c2
                      + (acov[0, 1] + acov[1, 0]) * c0 * c1
                      + (acov[0, 2] + acov[2, 0]) * c0 * c2
                      + (acov[1, 2] + acov[2, 1]) * c1 * c2)
        vv = nz2 * (s_v * s_v + p_zz)
        if s > 0:
            inv = 1.0 / (s * s)
            delta[r] = np.sqrt(s_v * s_v + p_zz)
            var_rest[r] = max(var_dem + var_pos - vv, 0.0) * inv
            var_vert[r] = vv * inv
            var_att[r] = va * inv
        else:
            delta[r] = np.nan
            var_rest[r] = np.inf
            var_vert[r] = np.inf
            var_att[r] = np.inf


@numba.njit(cache=True, parallel=True, nogil=True)
def interp_lattice_impl(v, ly, lx, out):
    # prior_lattice.interpolate_lattice: bilinear in pixel coordinates between the lattice
    # values v (nly, nlx) at rows ly, columns lx, into out (H, W); NaN where a corner of the
    # pixel's lattice cell is not finite; lattice pixels keep their value.
    h, w = out.shape
    nly, nlx = v.shape
    for y in numba.prange(h):
        a = 0
        while a < nly - 2 and ly[a + 1] <= y:
            a += 1
        fy = (y - ly[a]) / (ly[a + 1] - ly[a])
        b = 0
        for x in range(w):
            while b < nlx - 2 and lx[b + 1] <= x:
                b += 1
            c00, c01 = v[a, b], v[a, b + 1]
            c10, c11 = v[a + 1, b], v[a + 1, b + 1]
            fx = (x - lx[b]) / (lx[b + 1] - lx[b])
            if fx == 0.0 and fy == 0.0:
                out[y, x] = c00
            elif fx == 1.0 and fy == 0.0:
                out[y, x] = c01
            elif fx == 0.0 and fy == 1.0:
                out[y, x] = c10
            elif fx == 1.0 and fy == 1.0:
                out[y, x] = c11
            elif np.isfinite(c00) and np.isfinite(c01) and np.isfinite(c10) \
                    and np.isfinite(c11):
                top = c00 + fx * (c01 - c00)
                bot = c10 + fx * (c11 - c10)
                out[y, x] = top + fy * (bot - top)
            else:
                out[y, x] = np.nan


@numba.njit(cache=True, nogil=True)
def _horizon_add(t_out, nbins, x0, x1, y0, y1, zmax, oz, max_range):
    # one terrain element (the rectangle [x0, x1] x [y0, y1] in metres from the camera, its
    # highest point zmax): raise the horizon tangent of every azimuth bin it covers to
    # (zmax - oz) / (its nearest horizontal distance)
    if not zmax > oz:  # never above a rising ray (NaN: a wall, see the caller)
        if zmax == zmax:
            return
    dx = 0.0 if x0 <= 0.0 <= x1 else min(abs(x0), abs(x1))
    dy = 0.0 if y0 <= 0.0 <= y1 else min(abs(y0), abs(y1))
    dmin = np.sqrt(dx * dx + dy * dy)
    if dmin > max_range:
        return
    if dmin == 0.0 or zmax != zmax:
        t = np.inf
    else:
        t = (zmax - oz) / dmin
    if dmin == 0.0:
        for k in range(nbins):
            if t > t_out[k]:
                t_out[k] = t
        return
    ac = np.arctan2(0.5 * (y0 + y1), 0.5 * (x0 + x1))
    lo = 0.0
    hi = 0.0
    for cx, cy in ((x0, y0), (x1, y0), (x0, y1), (x1, y1)):
        da = np.arctan2(cy, cx) - ac
        if da > np.pi:
            da -= 2 * np.pi
        elif da < -np.pi:
            da += 2 * np.pi
        lo = min(lo, da)
        hi = max(hi, da)
    bw = 2 * np.pi / nbins
    k0 = int(np.floor((ac + lo + np.pi) / bw))
    k1 = int(np.floor((ac + hi + np.pi) / bw))
    for k in range(k0, k1 + 1):
        kk = k % nbins
        if t > t_out[kk]:
            t_out[kk] = t


@numba.njit(cache=True, nogil=True)
def horizon_impl(z, bmax, block, cell, gx, gy, oz, max_range, near_blocks, t_out):
    # The horizon of a camera at grid-index position (gx, gy), ENU height oz: per azimuth
    # bin (t_out (nbins,), bin k covers [-pi + k bw, -pi + (k + 1) bw) of atan2(north, east))
    # an upper bound of the tangent of the elevation at which terrain within max_range can
    # be seen: the cells of the blocks within near_blocks of the camera's block one by one
    # (the highest of their four nodes), farther blocks whole (bmax: the highest node of
    # each block x block-cell block, NaN = nodata in it). z (Ny, Nx): node heights (NaN =
    # no data). A ray rising faster than that in its bin meets no terrain.
    ny, nx = z.shape
    nby, nbx = bmax.shape
    nbins = t_out.shape[0]
    for k in range(nbins):
        t_out[k] = -np.inf
    cbx = int(gx // block)
    cby = int(gy // block)
    for by in range(nby):
        for bx in range(nbx):
            i0 = by * block
            j0 = bx * block
            i1 = min(i0 + block, ny - 1)
            j1 = min(j0 + block, nx - 1)
            if abs(by - cby) <= near_blocks and abs(bx - cbx) <= near_blocks:
                for i in range(i0, i1):
                    for j in range(j0, j1):
                        zc = max(max(z[i, j], z[i, j + 1]), max(z[i + 1, j], z[i + 1, j + 1]))
                        if (z[i, j] != z[i, j] or z[i, j + 1] != z[i, j + 1]
                                or z[i + 1, j] != z[i + 1, j]
                                or z[i + 1, j + 1] != z[i + 1, j + 1]):
                            zc = np.nan
                        _horizon_add(t_out, nbins, (j - gx) * cell, (j + 1 - gx) * cell,
                                     (i - gy) * cell, (i + 1 - gy) * cell, zc, oz, max_range)
            else:
                _horizon_add(t_out, nbins, (j0 - gx) * cell, (j1 - gx) * cell,
                             (i0 - gy) * cell, (i1 - gy) * cell, bmax[by, bx], oz, max_range)


@numba.njit(cache=True, parallel=True, nogil=True)
def above_horizon_impl(d, t_hor, out):
    # out[r]: ray d[r] (unit ENU) rises faster than the horizon of its azimuth bin
    n = d.shape[0]
    nbins = t_hor.shape[0]
    bw = 2 * np.pi / nbins
    for r in numba.prange(n):
        dz = d[r, 2]
        out[r] = False
        if not dz > 0:
            continue
        h = np.sqrt(d[r, 0] * d[r, 0] + d[r, 1] * d[r, 1])
        k = int(np.floor((np.arctan2(d[r, 1], d[r, 0]) + np.pi) / bw)) % nbins
        if h == 0.0:
            out[r] = True
        elif dz / h > t_hor[k] * (1.0 + 1e-9) + 1e-12:
            out[r] = True
