"""numba kernels of :mod:`.fusion_numba` (imports numba; imported only when a fusion runs).

Module-level functions so that numba can cache the compiled code on disk (``cache=True``;
closures are not cached). The helpers are inlined into the kernel (``inline='always'``): a
call between compiled functions costs several times a bilinear sample. See :mod:`.fusion_numba`
for what is computed and why each dtype is what it is.
"""
import math

import numba
import numpy as np

from ._raycast_numba_kernels import patch

from ._numba import configure_threading

configure_threading(numba)

# indices of the per-row counts
_N_FUSED, _N_PRIOR, _N_CONFLICT, _N_MEASURED, _N_RULED_OUT = 0, 1, 2, 3, 4


@numba.njit(cache=True, nogil=True, inline='always')
def bilinear(hflat, nx, ny, lim, buf, gx64, gy64):
    # raycast._bilinear's z at grid-index coordinates given in float64 and cast to the field
    # dtype first (HeightField.sample), computed in that dtype; float64 NaN outside the nodes.
    # buf: a 2-element scratch array of the field dtype (the casts);
    # lim = (Nx - 1, Ny - 1) in that dtype (keeps float32 float32)
    buf[0] = gx64
    buf[1] = gy64
    gx = buf[0]
    gy = buf[1]
    if not (gx >= 0 and gx <= lim[0] and gy >= 0 and gy <= lim[1]):  # also NaN
        return np.nan
    # floor(g) clamped to N - 2, as an integer: g >= 0 here, so truncation is the floor
    # (np.floor of a float32 is a library call, several times slower)
    ix = min(int(gx), nx - 2)
    iy = min(int(gy), ny - 2)
    buf[0] = ix  # exact: grid indices are far below 2**24
    buf[1] = iy
    wx = gx - buf[0]
    wy = gy - buf[1]
    z, _, _ = patch(hflat, nx, iy * nx + ix, wx, wy)
    return np.float64(z)


@numba.njit(cache=True, nogil=True, inline='always')
def nan_to_num(x, pmax):
    # np.nan_to_num of one value of the dtype of pmax (its largest finite value)
    if np.isnan(x):
        return pmax - pmax
    if np.isinf(x):
        return pmax if x > 0 else -pmax
    return x


@numba.njit(cache=True, nogil=True, inline='always')
def nearest_node(nx, ny, gx, gy):
    # HeightField.nearest_node for float64 grid-index coordinates: the flat node index, or -1
    # when (gx, gy) is not within half a cell of the grid (NaN included)
    if not (gx >= -0.5 and gx <= nx - 0.5 and gy >= -0.5 and gy <= ny - 0.5):
        return -1
    jx = min(max(np.rint(gx), 0.0), nx - 1.0)  # round half to even, as torch.round
    jy = min(max(np.rint(gy), 0.0), ny - 1.0)
    return int(jy) * nx + int(jx)


@numba.njit(cache=True, nogil=True, inline='always')
def height_ok(i, j, points, sigma, d_cam, rot, p_cam, geo, hflat, sv_flat, sh_flat, nx, ny,
              lim, buf):
    # GeoPrior.height_consistency of the MEASURED pixel (i, j), in float64:
    # geo = (x0, y0, cell, eps, P_zz, attitude sigma, gate_k)
    x0, y0, cell, eps, p_zz, att, gate_k = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6]
    q0 = np.float64(points[i, j, 0])
    q1 = np.float64(points[i, j, 1])
    q2 = np.float64(points[i, j, 2])
    r = math.sqrt((q0 * q0 + q1 * q1) + q2 * q2)
    c0 = np.float64(d_cam[i, j, 0])
    c1 = np.float64(d_cam[i, j, 1])
    c2 = np.float64(d_cam[i, j, 2])
    d0 = (c0 * rot[0, 0] + c1 * rot[0, 1]) + c2 * rot[0, 2]
    d1 = (c0 * rot[1, 0] + c1 * rot[1, 1]) + c2 * rot[1, 2]
    d2 = (c0 * rot[2, 0] + c1 * rot[2, 1]) + c2 * rot[2, 2]
    p0 = p_cam[0] + d0 * r
    p1 = p_cam[1] + d1 * r
    p2 = p_cam[2] + d2 * r
    gx = (p0 - x0) / cell
    gy = (p1 - y0) / cell
    z0 = bilinear(hflat, nx, ny, lim, buf, gx, gy)
    if not math.isfinite(z0):
        return False
    z1 = bilinear(hflat, nx, ny, lim, buf, ((p0 + eps) - x0) / cell, gy)
    z2 = bilinear(hflat, nx, ny, lim, buf, ((p0 - eps) - x0) / cell, gy)
    z3 = bilinear(hflat, nx, ny, lim, buf, gx, ((p1 + eps) - y0) / cell)
    z4 = bilinear(hflat, nx, ny, lim, buf, gx, ((p1 - eps) - y0) / cell)
    node = nearest_node(nx, ny, gx, gy)
    if node < 0:
        sig_v = np.nan
        sig_h = np.nan
    else:
        sig_v = np.float64(sv_flat[node])
        sig_h = np.float64(sh_flat[node])
    slope = np.hypot(z1 - z2, z3 - z4) / (2 * eps)
    d_h = np.hypot(d0, d1)
    s_s = np.float64(sigma[i, j])
    t_h = sig_h * slope
    t_a = r * att * d_h
    t_s = s_s * (abs(d2) + d_h * slope)
    var = sig_v * sig_v + t_h * t_h + p_zz + t_a * t_a + t_s * t_s
    return abs(p2 - z0) <= gate_k * math.sqrt(var)


@numba.njit(cache=True, parallel=True, nogil=True)
def fuse_impl(points, sigma, depth, depth_sigma, provenance, flags,
              d_cam, rot, p_cam, geo, hflat, sv_flat, sh_flat, nx, ny, lim,
              ray_unit, norm, prior_range, prior_sigma, prior_status, prior_source,
              c_one_s, c_one_ps, c_one_sp, c_gate_sp, c_maxrel_r, c_pmax,
              use_weak, disp, sigma_disp, prior_disp, surface_ids, pose_degraded, codes,
              out_points, out_sigma, out_depth, out_depth_sigma, out_provenance, out_flags,
              out_source, counts):
    # The height test and the fusion of every pixel, rows in parallel; writes every pixel of
    # the out_* arrays and the per-row counts (H, 5) (fused, prior, conflict, measured,
    # prior_ruled_out).
    # c_*: 1-element arrays holding the scalars of fusion.fuse in the dtype numpy computes them
    # in (a Python float is cast to the array's dtype): 1.0 for 1/sigma_s^2 (dtype S of
    # sigma), for 1/sigma_p^2 (PS of prior_sigma), for 1/sqrt(ws + wp) (S|PS); gate_k times
    # sqrt(sigma_s^2 + sigma_p^2) (S|PS); max_prior_relative_sigma times prior_range (R); the
    # largest finite value of the points' dtype (nan_to_num).
    # codes = (MEASURED, FUSED, PRIOR, RAY_HIT, RAY_SKY, BEYOND_RESOLUTION, PRIOR_CONFLICT,
    #          PRIOR_UNAVAILABLE, SKY, PRIOR_SURFACE_MODEL, POSE_DEGRADED)
    h, w = provenance.shape
    prov_meas, prov_fused, prov_prior = codes[0], codes[1], codes[2]
    st_hit, st_sky = codes[3], codes[4]
    f_beyond = np.uint16(codes[5])
    f_conflict = np.uint16(codes[6])
    f_unavail = np.uint16(codes[7])
    f_sky = np.uint16(codes[8])
    f_surface = np.uint16(codes[9])
    f_degraded = np.uint16(codes[10])
    one_s = c_one_s[0]
    one_ps = c_one_ps[0]
    one_sp = c_one_sp[0]
    gate_sp = c_gate_sp[0]
    maxrel_r = c_maxrel_r[0]
    pmax = c_pmax[0]
    gate_k = geo[6]
    n_ids = surface_ids.shape[0]
    for i in numba.prange(h):
        buf = np.empty(2, hflat.dtype)  # cast to the field dtype
        rbuf = np.empty(1, out_points.dtype)  # the fused range stored in the points' dtype
        sbuf = np.empty(1, out_sigma.dtype)  # the fused sigma stored in sigma's dtype
        n_fused = 0
        n_prior = 0
        n_conflict = 0
        n_measured = 0
        n_ruled_out = 0
        for j in range(w):
            prov = provenance[i, j]
            flag = np.uint16(flags[i, j])
            meas = prov == prov_meas
            st = prior_status[i, j]
            pr = prior_range[i, j]
            ps = prior_sigma[i, j]
            hit = st == st_hit and math.isfinite(pr) and math.isfinite(ps) and ps > 0
            sky = st == st_sky
            usable = hit and ps <= maxrel_r * pr
            s_s = sigma[i, j]
            r_s = pmax - pmax  # zero of the points' dtype
            consistent = False
            if meas and hit:
                # stereo range from the points with NaN -> 0, +-inf -> +-max (nan_to_num), in
                # the points' dtype, summed as numpy's norm does; the range gate
                q0 = nan_to_num(points[i, j, 0], pmax)
                q1 = nan_to_num(points[i, j, 1], pmax)
                q2 = nan_to_num(points[i, j, 2], pmax)
                r_s = np.sqrt((q0 * q0 + q1 * q1) + q2 * q2)
                consistent = np.abs(r_s - pr) <= gate_sp * np.sqrt(s_s * s_s + ps * ps)
            if consistent:
                consistent = height_ok(i, j, points, sigma, d_cam, rot, p_cam, geo, hflat,
                                       sv_flat, sh_flat, nx, ny, lim, buf)
            fused = consistent and usable
            conflict = meas and ((hit and not consistent) or sky)
            prior_only = (not meas) and usable
            ruled_out = False
            if use_weak and prior_only and (flag & f_beyond) != 0:
                dd = np.float64(disp[i, j])
                sd = np.float64(sigma_disp[i, j])
                dp = np.float64(prior_disp[i, j])
                ruled_out = math.isfinite(dd) and math.isfinite(dp) and sd > 0 \
                    and abs(dd - dp) > gate_k * sd
                prior_only = not ruled_out
            if conflict or ruled_out:
                flag |= f_conflict
            if meas and not sky and not usable and not conflict:
                flag |= f_unavail
            if (not meas) and sky:
                flag |= f_sky
            if (not meas) and not sky and not usable:
                flag |= f_unavail
            from_prior = fused or prior_only
            src = prior_source[i, j]
            if from_prior:
                for k in range(n_ids):
                    if surface_ids[k] == src:
                        flag |= f_surface
                        break
                if pose_degraded:
                    flag |= f_degraded
            out_flags[i, j] = flag
            if from_prior:
                if fused:
                    ws = one_s / (s_s * s_s)
                    wp = one_ps / (ps * ps)
                    rbuf[0] = (ws * r_s + wp * pr) / (ws + wp)
                    sbuf[0] = one_sp / np.sqrt(ws + wp)
                    out_provenance[i, j] = prov_fused
                else:
                    rbuf[0] = pr
                    sbuf[0] = ps
                    out_provenance[i, j] = prov_prior
                r = rbuf[0]
                s = sbuf[0]
                out_source[i, j] = np.uint16(src)
                for k in range(3):
                    out_points[i, j, k] = np.float32(ray_unit[i, j, k] * r)
                out_depth[i, j] = np.float32(r / norm[i, j])
                out_depth_sigma[i, j] = np.float32(s / norm[i, j])
                out_sigma[i, j] = np.float32(s)
            else:
                out_provenance[i, j] = prov
                out_source[i, j] = 0
                for k in range(3):
                    out_points[i, j, k] = points[i, j, k]
                out_depth[i, j] = depth[i, j]
                out_depth_sigma[i, j] = depth_sigma[i, j]
                out_sigma[i, j] = s_s
            n_fused += fused
            n_prior += prior_only
            n_conflict += conflict
            n_measured += meas and not fused
            n_ruled_out += ruled_out
        counts[i, _N_FUSED] = n_fused
        counts[i, _N_PRIOR] = n_prior
        counts[i, _N_CONFLICT] = n_conflict
        counts[i, _N_MEASURED] = n_measured
        counts[i, _N_RULED_OUT] = n_ruled_out
