"""numba kernel of :mod:`.triangulate_numba` (imports numba; imported only when it runs).

A module-level function so that numba can cache the compiled code on disk (``cache=True``).
See :func:`.triangulate_numba.triangulate_pack` for what it computes.
"""
import numba
import numpy as np

from ._numba import configure_threading

configure_threading(numba)


@numba.njit(cache=True, nogil=True, parallel=True)
def triangulate_pack_impl(disp, sd_src, mflags, ray, u, v, c, use_model, use_max_sigma,
                          unrectify, rt, beyond_bit, too_close_bit, depth, depth_sigma, sd_out,
                          rec_f, rec_b, rec_h):
    # c = float32 [f*B, delta_cx, max relative sigma, max sigma (m), sigma_d floor, lr gain];
    # rec_f / rec_b / rec_h: (H*W, 6) float32 / (H*W, 24) uint8 / (H*W, 12) uint16 views of
    # the packed cloud. All arithmetic in float32, in the numpy path's order of operations.
    h, w = disp.shape
    fb, dcx, limit, max_sigma, s0, gain = c[0], c[1], c[2], c[3], c[4], c[5]
    zero = np.float32(0.0)
    nan = np.float32(np.nan)
    inf = np.float32(np.inf)
    bad = 0
    for y in numba.prange(h):
        vy = v[y]
        for x in range(w):
            i = y * w + x
            d = disp[y, x]
            if use_model:
                s = sd_src[y, x]
            else:
                t = sd_src[y, x] * gain  # lr_diff
                t = t * t
                t += s0 * s0
                s = np.sqrt(t)
            s = s + d * zero  # NaN where unmatched
            sd_out[y, x] = s
            de = d - dcx
            z = fb / de
            rel = s / de
            meas = (de > zero) and (rel <= limit)
            if meas and use_max_sigma:
                meas = (rel * z) * ray[y, x] <= max_sigma
            fl = mflags[y, x]
            beyond = (not np.isnan(d)) and not meas
            if beyond:
                fl |= beyond_bit
            if meas:
                sz = rel * z
                sg = sz * ray[y, x]
                px = u[x] * z
                py = vy * z
                pz = z
                if unrectify:
                    qx = rt[0, 0] * px + rt[0, 1] * py + rt[0, 2] * pz
                    qy = rt[1, 0] * px + rt[1, 1] * py + rt[1, 2] * pz
                    qz = rt[2, 0] * px + rt[2, 1] * py + rt[2, 2] * pz
                    px, py, pz = qx, qy, qz
                if not np.isfinite(sg):
                    bad += 1
                depth[y, x] = z
            else:
                sz = sg = px = py = pz = nan
                if (fl & too_close_bit) != 0:
                    depth[y, x] = -inf
                elif beyond:
                    depth[y, x] = inf
                else:
                    depth[y, x] = nan
            depth_sigma[y, x] = sz
            rec_f[i, 0] = px
            rec_f[i, 1] = py
            rec_f[i, 2] = pz
            rec_f[i, 3] = sg
            rec_b[i, 16] = 1 if meas else 0  # Provenance MEASURED / NONE
            rec_b[i, 17] = 0
            rec_h[i, 9] = fl
            rec_h[i, 10] = 0  # source
            rec_h[i, 11] = 0
    return bad
