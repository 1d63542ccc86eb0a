"""Triton (CUDA) kernels of the SGM matcher in :mod:`geo_depth_node.core.sgm`.

Nothing here imports triton or torch at module import time: the kernels are plain
functions at module level that :func:`_kernels` turns into ``triton.jit`` functions
on first use (their ``tl`` global is bound then). On a machine without triton the
module imports fine and only the ``*_triton`` entry points fail.

Kernels (all images row-major (H, W); volumes (H, W, D) with disparity contiguous):
    census:    (H, W) uint8 -> (H, W) int64 census bits (bit = neighbour < centre,
               row-major window order without the centre, first offset = highest bit).
    cost:      census L/R -> (H, W, D) uint8 Hamming distance; candidates whose right
               pixel x - (min_d + i) leaves the image get ``max_cost``.
    aggregate: one program per LINES scanlines and one path direction; the D costs of a
               pixel live in a register vector, the loop runs along the path; each path
               writes its own (H, W, D) uint8 plane of L_r (L_r <= max_cost + P2 <= 255).
               L_r(p-r, d+-1) are re-read from the plane just written (after a block
               barrier): Triton has no register shift across the vector.
    select_left:  sums the path planes into S (H, W, D) int16, winner-take-all with
               uniqueness, subpixel, features.
    select_right: right-image disparity from the same S along the diagonal
               S[y, xr + d, d] (no second SGM pass).
    post-filter (``postfilter_triton``, = ``sgm.texture_torch`` + ``sgm.label_matches``):
               texture_rows + prep (texture, uniqueness/texture test, LR check), conn
               (speckle connectivity bits + initial labels), speckle_round x iterations
               (min-label step + two pointer jumps fused: new() recomputed on the fly),
               speckle_count (component sizes / open flags, block-aggregated atomics),
               final (labels, output disparity, features).
    triangulate / pack: ``torch_frame.TorchFrame`` on CUDA, one launch each.
Float results equal the torch reference bit for bit: divisions and square roots use the
correctly rounded ``tl.math.div_rn`` / ``sqrt_rn``; the triangulation runs without FMA
contraction.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

_LOG = logging.getLogger(__name__)

_BIG = 1 << 20  # larger than any aggregated cost, small enough that BIG + P2 cannot overflow int32
_KERNELS: dict[str, Any] | None = None
_INTERPRET = False  # kernels built for Triton's CPU interpreter (use_interpreter)
_DIRS_CACHE: dict[tuple, Any] = {}


# --------------------------------------------------------------------------- kernel sources
# (plain functions; ``tl`` is bound as a module global by _kernels() before triton.jit)

def _census_kernel(img_ptr, out_ptr, H, W, CW: tl.constexpr, CH: tl.constexpr,  # noqa: F821
                   BX: tl.constexpr):  # noqa: F821
    y = tl.program_id(0)  # noqa: F821
    xs = tl.program_id(1) * BX + tl.arange(0, BX)  # noqa: F821
    xm = xs < W
    xc = tl.minimum(xs, W - 1)  # noqa: F821
    centre = tl.load(img_ptr + y * W + xc, mask=xm, other=0).to(tl.int32)  # noqa: F821
    acc = tl.zeros([BX], dtype=tl.int64)  # noqa: F821
    for i in tl.static_range(CH * CW):  # noqa: F821
        if i != (CH // 2) * CW + CW // 2:
            yy = tl.minimum(tl.maximum(y + (i // CW - CH // 2), 0), H - 1)  # noqa: F821
            xx = tl.minimum(tl.maximum(xc + (i % CW - CW // 2), 0), W - 1)  # noqa: F821
            nb = tl.load(img_ptr + yy * W + xx, mask=xm, other=0).to(tl.int32)  # noqa: F821
            acc = (acc << 1) | (nb < centre).to(tl.int64)  # noqa: F821
    tl.store(out_ptr + y * W + xs, acc, mask=xm)  # noqa: F821


def _cost_kernel(cl_ptr, cr_ptr, out_ptr, H, W, D, MIN_D, MAX_COST,
                 BX: tl.constexpr, BD: tl.constexpr):  # noqa: F821
    y = tl.program_id(0)  # noqa: F821
    xs = tl.program_id(1) * BX + tl.arange(0, BX)  # noqa: F821
    ds = tl.arange(0, BD)  # noqa: F821
    xm = xs < W
    dm = ds < D
    cl = tl.load(cl_ptr + y * W + xs, mask=xm, other=0)  # noqa: F821
    xr = xs[:, None] - (MIN_D + ds[None, :])
    inr = (xr >= 0) & (xr < W)
    m2 = xm[:, None] & dm[None, :]
    cr = tl.load(cr_ptr + y * W + xr, mask=m2 & inr, other=0)  # noqa: F821
    v = cl[:, None] ^ cr
    v = v - ((v >> 1) & 0x5555555555555555)
    v = (v & 0x3333333333333333) + ((v >> 2) & 0x3333333333333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0F
    v = ((v * 0x0101010101010101) >> 56) & 0xFF
    c = tl.where(inr, v.to(tl.int32), MAX_COST)  # noqa: F821
    off = (y * W + xs).to(tl.int64)[:, None] * D + ds[None, :]  # noqa: F821
    tl.store(out_ptr + off, c.to(tl.uint8), mask=m2)  # noqa: F821


def _aggregate_kernel(cost_ptr, img_ptr, out_ptr, dir_ptr, H, W, D, P1, P2, GK,
                      LINES: tl.constexpr, BD: tl.constexpr):  # noqa: F821
    pid = tl.program_id(0)  # noqa: F821
    path = tl.program_id(1)  # noqa: F821
    dx = tl.load(dir_ptr + 2 * path)  # noqa: F821
    dy = tl.load(dir_ptr + 2 * path + 1)  # noqa: F821
    horiz = dy == 0
    nlines = tl.where(horiz, H, W)  # noqa: F821
    n_steps = tl.where(horiz, W, H)  # noqa: F821
    n_steps = tl.where(pid * LINES < nlines, n_steps, 0)  # noqa: F821
    lines = pid * LINES + tl.arange(0, LINES)  # noqa: F821
    lm = lines < nlines
    ds = tl.arange(0, BD)  # noqa: F821
    dm = ds < D
    lm2 = lm[:, None] & dm[None, :]
    obase = out_ptr + path.to(tl.int64) * H * W * D  # noqa: F821
    m = tl.zeros([LINES], dtype=tl.int32)  # noqa: F821
    for t in range(0, n_steps):
        xh = tl.where(dx > 0, t, W - 1 - t)  # noqa: F821
        yv = tl.where(dy > 0, t, H - 1 - t)  # noqa: F821
        xv = ((lines + dx * t) % W + W) % W
        y = tl.where(horiz, lines, yv)  # noqa: F821
        x = tl.where(horiz, xh, xv)  # noqa: F821
        wrap = ((dx == 1) & (x == 0)) | ((dx == -1) & (x == W - 1))
        reset = (t == 0) | ((dy != 0) & wrap)
        keep = lm & (reset == 0)
        pix = (y * W + x).to(tl.int64)  # noqa: F821
        prev = ((y - dy) * W + (x - dx)).to(tl.int64)  # noqa: F821
        c = tl.load(cost_ptr + pix[:, None] * D + ds[None, :], mask=lm2, other=0).to(tl.int32)  # noqa: F821
        km = keep[:, None]
        pp = obase + prev[:, None] * D + ds[None, :]
        l0 = tl.load(pp, mask=km & dm[None, :], other=0).to(tl.int32)  # noqa: F821
        mlo = km & (ds[None, :] >= 1) & dm[None, :]
        mhi = km & (ds[None, :] + 1 < D)
        l_lo = tl.where(mlo, tl.load(pp - 1, mask=mlo, other=0).to(tl.int32), _BIGC)  # noqa: F821
        l_hi = tl.where(mhi, tl.load(pp + 1, mask=mhi, other=0).to(tl.int32), _BIGC)  # noqa: F821
        i0 = tl.load(img_ptr + y * W + x, mask=lm, other=0).to(tl.int32)  # noqa: F821
        i1 = tl.load(img_ptr + (y - dy) * W + (x - dx), mask=keep, other=0).to(tl.int32)  # noqa: F821
        g = tl.abs(i0 - i1)  # noqa: F821
        p2a = tl.maximum(P1 + 1, (P2 * GK) // tl.maximum(GK + g, 1))  # noqa: F821
        p2e = tl.where(GK > 0, p2a, P2)  # noqa: F821
        mp = tl.where(reset, 0, m)  # noqa: F821
        tt = tl.minimum(tl.minimum(l_lo, l_hi) + P1, l0)  # noqa: F821
        tt = tl.minimum(tt, (mp + p2e)[:, None])  # noqa: F821
        L = c + tt - mp[:, None]
        L = tl.where(dm[None, :], L, _BIGC)  # noqa: F821
        m = tl.min(L, axis=1)  # noqa: F821
        tl.store(obase + pix[:, None] * D + ds[None, :], L.to(tl.uint8), mask=lm2)  # noqa: F821
        tl.debug_barrier()  # noqa: F821


def _subpix(sm, sp, m, has_lo, has_hi, MODE):
    """Subpixel offset from the costs at best-1, best, best+1 (fp32)."""
    smf = sm.to(tl.float32)  # noqa: F821
    spf = sp.to(tl.float32)  # noqa: F821
    mf = m.to(tl.float32)  # noqa: F821
    if MODE == 0:
        den = 2.0 * (smf + spf - 2.0 * mf)
    else:
        den = 2.0 * (tl.maximum(smf, spf) - mf)  # noqa: F821
    ok = has_lo & has_hi & (den > 0)
    return tl.where(ok, tl.math.div_rn(smf - spf, tl.where(ok, den, 1.0)), 0.0)  # noqa: F821


def _select_left_kernel(agg_ptr, s_ptr, disp_ptr, m_ptr, m2_ptr, curv_ptr, uniq_ptr,
                        H, W, D, HWD, MIN_D, RATIO, CURV_SCALE,
                        NPATHS: tl.constexpr, MODE: tl.constexpr,  # noqa: F821
                        BX: tl.constexpr, BD: tl.constexpr):  # noqa: F821
    y = tl.program_id(0)  # noqa: F821
    xs = tl.program_id(1) * BX + tl.arange(0, BX)  # noqa: F821
    ds = tl.arange(0, BD)  # noqa: F821
    xm = xs < W
    dm = ds < D
    m2d = xm[:, None] & dm[None, :]
    pix = (y * W + xs).to(tl.int64)  # noqa: F821
    off = pix[:, None] * D + ds[None, :]
    s = tl.zeros([BX, BD], dtype=tl.int32)  # noqa: F821
    for p in tl.static_range(NPATHS):  # noqa: F821
        s += tl.load(agg_ptr + p * HWD.to(tl.int64) + off, mask=m2d, other=0).to(tl.int32)  # noqa: F821
    tl.store(s_ptr + off, s.to(tl.int16), mask=m2d)  # noqa: F821
    s = tl.where(dm[None, :], s, _BIGC)  # noqa: F821
    m = tl.min(s, axis=1)  # noqa: F821
    best = tl.min(tl.where(s == m[:, None], ds[None, :], BD * 2), axis=1)  # noqa: F821
    far = tl.abs(ds[None, :] - best[:, None]) > 1  # noqa: F821
    m2 = tl.min(tl.where(far, s, _BIGC), axis=1)  # noqa: F821
    sm = tl.sum(tl.where(ds[None, :] == best[:, None] - 1, s, 0), axis=1)  # noqa: F821
    sp = tl.sum(tl.where(ds[None, :] == best[:, None] + 1, s, 0), axis=1)  # noqa: F821
    has_lo = best > 0
    has_hi = best < D - 1
    offs = _subpix(sm, sp, m, has_lo, has_hi, MODE)
    two = (sm + sp - 2 * m).to(tl.float32)  # noqa: F821
    one = tl.where(has_lo, 2 * (sm - m), 2 * (sp - m)).to(tl.float32)  # noqa: F821
    curv = tl.where(has_lo & has_hi, two, tl.where(has_lo | has_hi, one, 0.0)) * CURV_SCALE  # noqa: F821
    uniq = (m2.to(tl.int64) * (100 - RATIO)) >= (m.to(tl.int64) * 100)  # noqa: F821
    tl.store(disp_ptr + pix, (MIN_D + best).to(tl.float32) + offs, mask=xm)  # noqa: F821
    tl.store(m_ptr + pix, m, mask=xm)  # noqa: F821
    tl.store(m2_ptr + pix, m2, mask=xm)  # noqa: F821
    tl.store(curv_ptr + pix, curv, mask=xm)  # noqa: F821
    tl.store(uniq_ptr + pix, uniq.to(tl.int8), mask=xm)  # noqa: F821


def _select_right_kernel(s_ptr, disp_ptr, H, W, D, MIN_D, MODE: tl.constexpr,  # noqa: F821
                         BX: tl.constexpr, BD: tl.constexpr):  # noqa: F821
    y = tl.program_id(0)  # noqa: F821
    xr = tl.program_id(1) * BX + tl.arange(0, BX)  # noqa: F821
    ds = tl.arange(0, BD)  # noqa: F821
    xm = xr < W
    dm = ds < D
    x = xr[:, None] + MIN_D + ds[None, :]
    valid = xm[:, None] & dm[None, :] & (x >= 0) & (x < W)
    off = (y * W + x).to(tl.int64) * D + ds[None, :]  # noqa: F821
    s = tl.load(s_ptr + off, mask=valid, other=0).to(tl.int32)  # noqa: F821
    s = tl.where(valid, s, _BIGC)  # noqa: F821
    m = tl.min(s, axis=1)  # noqa: F821
    best = tl.min(tl.where(s == m[:, None], ds[None, :], BD * 2), axis=1)  # noqa: F821
    sm = tl.sum(tl.where(ds[None, :] == best[:, None] - 1, s, 0), axis=1)  # noqa: F821
    sp = tl.sum(tl.where(ds[None, :] == best[:, None] + 1, s, 0), axis=1)  # noqa: F821
    has_lo = best > 0
    has_hi = (best < D - 1) & (xr + MIN_D + best + 1 < W)
    offs = _subpix(sm, sp, m, has_lo, has_hi, MODE)
    d = tl.where(m < _BIGC, (MIN_D + best).to(tl.float32) + offs, float('nan'))  # noqa: F821
    tl.store(disp_ptr + y * W + xr, d, mask=xm)  # noqa: F821


def _sym(i, n):
    """OpenCV BORDER_REFLECT index (cba|abc|cba) clamped to 0..n-1, as ``sgm._sym_index``."""
    i = tl.where(i < 0, -i - 1, i)  # noqa: F821
    i = tl.where(i >= n, 2 * n - 1 - i, i)  # noqa: F821
    return tl.minimum(tl.maximum(i, 0), n - 1)  # noqa: F821


def _pad1(i, n, repl):
    """Index of a 1-px pad: reflect-101 (torch 'reflect'), or replicate when ``repl``."""
    r = tl.where(i < 0, -i, tl.where(i >= n, 2 * n - 2 - i, i))  # noqa: F821
    r = tl.where(repl != 0, i, r)  # noqa: F821
    return tl.minimum(tl.maximum(r, 0), n - 1)  # noqa: F821


def _texture_rows_kernel(img_ptr, rs_ptr, H, W, REPL, R: tl.constexpr,  # noqa: F821
                         BX: tl.constexpr):  # noqa: F821
    # rs[y, x] = sum_{i=-R..R} |Gx(y, sym(x + i))|, Gx the integer Sobel-x (8 x texture_torch's g)
    y = tl.program_id(0)  # noqa: F821
    xs = tl.program_id(1) * BX + tl.arange(0, BX)  # noqa: F821
    xm = xs < W
    y0 = _pad1(y - 1, H, REPL)
    y2 = _pad1(y + 1, H, REPL)
    acc = tl.zeros([BX], dtype=tl.int32)  # noqa: F821
    for i in tl.static_range(2 * R + 1):  # noqa: F821
        xc = _sym(xs + (i - R), W)
        xl = _pad1(xc - 1, W, REPL)
        xr = _pad1(xc + 1, W, REPL)
        g = (tl.load(img_ptr + y0 * W + xr, mask=xm, other=0).to(tl.int32)  # noqa: F821
             - tl.load(img_ptr + y0 * W + xl, mask=xm, other=0).to(tl.int32)  # noqa: F821
             + 2 * (tl.load(img_ptr + y * W + xr, mask=xm, other=0).to(tl.int32)  # noqa: F821
                    - tl.load(img_ptr + y * W + xl, mask=xm, other=0).to(tl.int32))  # noqa: F821
             + tl.load(img_ptr + y2 * W + xr, mask=xm, other=0).to(tl.int32)  # noqa: F821
             - tl.load(img_ptr + y2 * W + xl, mask=xm, other=0).to(tl.int32))  # noqa: F821
        acc += tl.abs(g)  # noqa: F821
    tl.store(rs_ptr + y * W + xs, acc, mask=xm)  # noqa: F821


def _prep_kernel(rs_ptr, disp_ptr, uniq_ptr, dr_ptr, tex_ptr, lrd_ptr, state_ptr,
                 H, W, MIN_TEX, LR_MAX, WIN_F, LR_CHECK: tl.constexpr, R: tl.constexpr,  # noqa: F821
                 BX: tl.constexpr):  # noqa: F821
    # texture (box of rs), texture/uniqueness test, left-right check. state bit 0: ok, bit 1: lr_bad
    y = tl.program_id(0)  # noqa: F821
    xs = tl.program_id(1) * BX + tl.arange(0, BX)  # noqa: F821
    xm = xs < W
    pix = y * W + xs
    acc = tl.zeros([BX], dtype=tl.int32)  # noqa: F821
    for j in tl.static_range(2 * R + 1):  # noqa: F821
        yy = _sym(y + (j - R), H)
        acc += tl.load(rs_ptr + yy * W + xs, mask=xm, other=0)  # noqa: F821
    # exact: acc/8 is the float sum of texture_torch's |g|; one correctly rounded division
    g8 = acc.to(tl.float32) * 0.125  # noqa: F821
    tex = tl.math.div_rn(g8, tl.zeros_like(g8) + WIN_F)  # noqa: F821
    d = tl.load(disp_ptr + pix, mask=xm, other=0.0)  # noqa: F821
    ok = tl.load(uniq_ptr + pix, mask=xm, other=0) != 0  # noqa: F821
    ok = ok & (tex >= MIN_TEX)  # MIN_TEX = -inf: test off
    xmf = xs.to(tl.float32) - tl.where(ok, d, 0.0)  # noqa: F821
    fl = tl.floor(xmf)  # noqa: F821
    fr = xmf - fl  # exact
    odd = (fl.to(tl.int32) & 1) == 1  # noqa: F821
    xr = fl.to(tl.int32) + ((fr > 0.5) | ((fr == 0.5) & odd)).to(tl.int32)  # round half to even  # noqa: F821
    inr = (xr >= 0) & (xr < W)
    xrc = tl.minimum(tl.maximum(xr, 0), W - 1)  # noqa: F821
    dr = tl.load(dr_ptr + y * W + xrc, mask=xm, other=0.0)  # noqa: F821
    checked = ok & inr & (dr == dr)
    if LR_CHECK == 0:
        checked = checked & (xs < 0)  # no check: nothing is checked
    lrd = tl.where(checked, tl.abs(d - dr), 0.0)  # noqa: F821
    lr_bad = checked & (lrd > LR_MAX)
    state = ok.to(tl.int32) | (lr_bad.to(tl.int32) << 1)  # noqa: F821
    tl.store(tex_ptr + pix, tex, mask=xm)  # noqa: F821
    tl.store(lrd_ptr + pix, lrd, mask=xm)  # noqa: F821
    tl.store(state_ptr + pix, state.to(tl.uint8), mask=xm)  # noqa: F821


def _conn_kernel(disp_ptr, state_ptr, conn_ptr, lab_ptr, H, W, MAX_DIFF,
                 BX: tl.constexpr):  # noqa: F821
    # 4-connectivity of speckle pixels (ok and not lr_bad): bit 0 right, 1 left, 2 down, 3 up;
    # initial labels: own flat index, N (= H*W) outside
    y = tl.program_id(0)  # noqa: F821
    xs = tl.program_id(1) * BX + tl.arange(0, BX)  # noqa: F821
    xm = xs < W
    pix = y * W + xs
    v = (tl.load(state_ptr + pix, mask=xm, other=0) == 1) & xm  # noqa: F821
    d = tl.load(disp_ptr + pix, mask=xm, other=0.0)  # noqa: F821
    conn = tl.zeros([BX], dtype=tl.int32)  # noqa: F821
    for k in tl.static_range(4):  # noqa: F821
        if k == 0:
            nm = v & (xs + 1 < W)
            off = 1
        elif k == 1:
            nm = v & (xs >= 1)
            off = -1
        elif k == 2:
            nm = v & (y + 1 < H)
            off = W
        else:
            nm = v & (y >= 1)
            off = -W
        vn = tl.load(state_ptr + pix + off, mask=nm, other=0) == 1  # noqa: F821
        dn = tl.load(disp_ptr + pix + off, mask=nm, other=0.0)  # noqa: F821
        c = nm & vn & (tl.abs(d - dn) <= MAX_DIFF)  # noqa: F821
        conn = conn | (c.to(tl.int32) << k)  # noqa: F821
    tl.store(conn_ptr + pix, conn.to(tl.uint8), mask=xm)  # noqa: F821
    tl.store(lab_ptr + pix, tl.where(v, pix, H * W), mask=xm)  # noqa: F821


def _prop(lab_ptr, conn_ptr, q, qm, W, N):
    """One min-label step at pixels q (where qm): min of own and connected neighbours' labels."""
    cn = tl.load(conn_ptr + q, mask=qm, other=0).to(tl.int32)  # noqa: F821
    best = tl.load(lab_ptr + q, mask=qm, other=N)  # noqa: F821
    m = qm & ((cn & 1) != 0)
    best = tl.minimum(best, tl.load(lab_ptr + q + 1, mask=m, other=N))  # noqa: F821
    m = qm & ((cn & 2) != 0)
    best = tl.minimum(best, tl.load(lab_ptr + q - 1, mask=m, other=N))  # noqa: F821
    m = qm & ((cn & 4) != 0)
    best = tl.minimum(best, tl.load(lab_ptr + q + W, mask=m, other=N))  # noqa: F821
    m = qm & ((cn & 8) != 0)
    best = tl.minimum(best, tl.load(lab_ptr + q - W, mask=m, other=N))  # noqa: F821
    return best


def _speckle_round_kernel(lab_in_ptr, lab_out_ptr, conn_ptr, W, N, BLOCK: tl.constexpr):  # noqa: F821
    # one round of sgm.remove_speckles: new = prop(lab); two synchronous pointer jumps
    # (flat = flat[flat] twice) = new applied 4 times, each new[q] recomputed from lab_in
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # noqa: F821
    pm = p < N
    q = _prop(lab_in_ptr, conn_ptr, p, pm, W, N)
    for _ in tl.static_range(4):  # noqa: F821
        qm = pm & (q < N)
        q = tl.where(qm, _prop(lab_in_ptr, conn_ptr, q, qm, W, N), q)  # noqa: F821
    tl.store(lab_out_ptr + p, q, mask=pm)  # noqa: F821


def _speckle_count_kernel(lab_ptr, conn_ptr, size_ptr, open_ptr, W, N, BLOCK: tl.constexpr):  # noqa: F821
    # size[label] += 1 and open[label] |= (a connected neighbour has another label) for labelled
    # pixels; a block whose labelled pixels share one label does one atomic per array
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # noqa: F821
    pm = p < N
    lab = tl.load(lab_ptr + p, mask=pm, other=N)  # noqa: F821
    v = pm & (lab < N)
    cn = tl.load(conn_ptr + p, mask=v, other=0).to(tl.int32)  # noqa: F821
    m = v & ((cn & 1) != 0)
    opn = m & (tl.load(lab_ptr + p + 1, mask=m, other=N) != lab)  # noqa: F821
    m = v & ((cn & 2) != 0)
    opn = opn | (m & (tl.load(lab_ptr + p - 1, mask=m, other=N) != lab))  # noqa: F821
    m = v & ((cn & 4) != 0)
    opn = opn | (m & (tl.load(lab_ptr + p + W, mask=m, other=N) != lab))  # noqa: F821
    m = v & ((cn & 8) != 0)
    opn = opn | (m & (tl.load(lab_ptr + p - W, mask=m, other=N) != lab))  # noqa: F821
    lmin = tl.min(tl.where(v, lab, N), axis=0)  # noqa: F821
    lmax = tl.max(tl.where(v, lab, -1), axis=0)  # noqa: F821
    uni = lmin == lmax
    cnt = tl.sum(v.to(tl.int32), axis=0)  # noqa: F821
    anyo = tl.max(opn.to(tl.int32), axis=0)  # noqa: F821
    lane0 = (tl.arange(0, BLOCK) == 0) & uni  # noqa: F821
    tgt = tl.where(lane0, lmin, tl.minimum(lab, N - 1))  # noqa: F821
    many = v & (uni == 0)
    tl.atomic_add(size_ptr + tgt, tl.where(lane0, cnt, 1), mask=lane0 | many)  # noqa: F821
    tl.atomic_max(open_ptr + tgt, tl.where(lane0, anyo, opn.to(tl.int32)),  # noqa: F821
                  mask=lane0 | (many & opn))


def _final_kernel(disp_ptr, state_ptr, lab_ptr, size_ptr, open_ptr, lrd_ptr, m_ptr, m2_ptr,
                  lv_ptr, rv_ptr, out_disp_ptr, flags_ptr, out_lrd_ptr, uq_ptr, mc_ptr,
                  H, W, MIN_SIZE, BAND, TC, NPATHS_F,
                  F_OOV: tl.constexpr, F_NM: tl.constexpr, F_LR: tl.constexpr,  # noqa: F821
                  F_TC: tl.constexpr, SPECKLE: tl.constexpr, HAS_LV: tl.constexpr,  # noqa: F821
                  HAS_RV: tl.constexpr, BX: tl.constexpr):  # noqa: F821
    # labels of sgm.label_matches after the speckle components, plus two features
    y = tl.program_id(0)  # noqa: F821
    xs = tl.program_id(1) * BX + tl.arange(0, BX)  # noqa: F821
    xm = xs < W
    pix = y * W + xs
    n = H * W
    d = tl.load(disp_ptr + pix, mask=xm, other=0.0)  # noqa: F821
    st = tl.load(state_ptr + pix, mask=xm, other=0).to(tl.int32)  # noqa: F821
    ok = (st & 1) != 0
    lr_bad = (st & 2) != 0
    no_match = ok == 0
    if SPECKLE:
        lab = tl.load(lab_ptr + pix, mask=xm, other=n)  # noqa: F821
        lv = xm & (st == 1) & (lab < n)
        sz = tl.load(size_ptr + lab, mask=lv, other=MIN_SIZE)  # noqa: F821
        op = tl.load(open_ptr + lab, mask=lv, other=1)  # noqa: F821
        no_match = no_match | (lv & (sz < MIN_SIZE) & (op == 0))
    xmf = xs.to(tl.float32) - tl.where(no_match, 0.0, d)  # noqa: F821
    oov = (xs < BAND) & (((no_match == 0) & (lr_bad == 0) & (xmf >= 0.0)) == 0)
    if HAS_LV:
        oov = oov | (tl.load(lv_ptr + pix, mask=xm, other=1) == 0)  # noqa: F821
    if HAS_RV:
        fl = tl.floor(xmf)  # noqa: F821
        fr = xmf - fl
        odd = (fl.to(tl.int32) & 1) == 1  # noqa: F821
        xr = fl.to(tl.int32) + ((fr > 0.5) | ((fr == 0.5) & odd)).to(tl.int32)  # noqa: F821
        xr = tl.minimum(tl.maximum(xr, 0), W - 1)  # noqa: F821
        rv = tl.load(rv_ptr + y * W + xr, mask=xm, other=1)  # noqa: F821
        oov = oov | ((no_match == 0) & (rv == 0))
    flags = tl.where(oov, F_OOV, 0)  # noqa: F821
    flags |= tl.where(no_match & (oov == 0), F_NM, 0)  # noqa: F821
    flags |= tl.where(lr_bad & (no_match == 0) & (oov == 0), F_LR, 0)  # noqa: F821
    flags |= tl.where((no_match == 0) & (d >= TC) & (oov == 0), F_TC, 0)  # noqa: F821
    lrd = tl.load(lrd_ptr + pix, mask=xm, other=0.0)  # noqa: F821
    m = tl.load(m_ptr + pix, mask=xm, other=0)  # noqa: F821
    m2 = tl.load(m2_ptr + pix, mask=xm, other=0)  # noqa: F821
    mf = m.to(tl.float32)  # noqa: F821
    uq = tl.where(m2 >= _BIGC, 0.0, tl.math.div_rn(mf, tl.maximum(m2.to(tl.float32), 1.0)))  # noqa: F821
    tl.store(out_disp_ptr + pix, tl.where(flags != 0, float('nan'), d), mask=xm)  # noqa: F821
    tl.store(flags_ptr + pix, flags, mask=xm)  # noqa: F821
    tl.store(out_lrd_ptr + pix, tl.where(no_match, 0.0, lrd), mask=xm)  # noqa: F821
    tl.store(uq_ptr + pix, uq, mask=xm)  # noqa: F821
    tl.store(mc_ptr + pix, tl.math.div_rn(mf, tl.zeros_like(mf) + NPATHS_F), mask=xm)  # noqa: F821


def _triangulate_kernel(disp_ptr, lrd_ptr, flags_ptr, u_ptr, v_ptr, ray_ptr, rot_ptr, c_ptr,
                        sdin_ptr, depth_ptr, dsig_ptr, sig_ptr, sigd_ptr, prov_ptr, fl_ptr, pts_ptr,
                        meas_ptr, H, W, F_BEYOND: tl.constexpr, F_TC: tl.constexpr,  # noqa: F821
                        P_MEAS: tl.constexpr, HAS_ROT: tl.constexpr,  # noqa: F821
                        SIGMA_LIMIT: tl.constexpr, HAS_SIGMA: tl.constexpr,  # noqa: F821
                        BX: tl.constexpr):  # noqa: F821
    # torch_frame.TorchFrame.triangulate, same float32 operations (launched without FMA fusion)
    y = tl.program_id(0)  # noqa: F821
    xs = tl.program_id(1) * BX + tl.arange(0, BX)  # noqa: F821
    xm = xs < W
    pix = y * W + xs
    s0 = tl.load(c_ptr + 0)  # noqa: F821
    gain = tl.load(c_ptr + 1)  # noqa: F821
    dcx = tl.load(c_ptr + 2)  # noqa: F821
    fb = tl.load(c_ptr + 3)  # noqa: F821
    max_rel = tl.load(c_ptr + 4)  # noqa: F821
    max_sigma = tl.load(c_ptr + 5)  # noqa: F821
    d = tl.load(disp_ptr + pix, mask=xm, other=0.0)  # noqa: F821
    lr = tl.load(lrd_ptr + pix, mask=xm, other=0.0)  # noqa: F821
    fin = tl.load(flags_ptr + pix, mask=xm, other=0)  # noqa: F821
    matched = d == d
    if HAS_SIGMA:  # the calibrated model's per-pixel sigma_d (core.sigma_model)
        sd = tl.load(sdin_ptr + pix, mask=xm, other=0.0)  # noqa: F821
    else:
        gl = gain * lr
        var = s0 * s0 + gl * gl
        sd = tl.math.sqrt_rn(var)  # correctly rounded = torch.sqrt(var.double()).float()  # noqa: F821
    nan = float('nan')
    sd = tl.where(matched, sd, nan)  # noqa: F821
    d_eff = d - dcx
    dd = tl.where(matched, d_eff, 1.0)  # noqa: F821
    z = tl.where(matched, tl.math.div_rn(tl.zeros_like(dd) + fb, dd), nan)  # noqa: F821
    rel = tl.where(matched, tl.math.div_rn(sd, dd), nan)  # noqa: F821
    sz = rel * z
    ray = tl.load(ray_ptr + pix, mask=xm, other=1.0)  # noqa: F821
    sr = sz * ray
    beyond = matched & (((d_eff > 0) & (rel <= max_rel)) == 0)
    if SIGMA_LIMIT:
        beyond = beyond | (matched & ((sr <= max_sigma) == 0))
    fl = fin | tl.where(beyond, F_BEYOND, 0)  # noqa: F821
    measured = matched & (beyond == 0)
    too_close = (fin & F_TC) != 0
    depth = tl.where(measured, z, nan)  # noqa: F821
    depth = tl.where(beyond, float('inf'), depth)  # noqa: F821
    depth = tl.where(too_close, float('-inf'), depth)  # noqa: F821
    zm = tl.where(measured, z, nan)  # noqa: F821
    px = tl.load(u_ptr + xs, mask=xm, other=0.0) * zm  # noqa: F821
    py = tl.load(v_ptr + y) * zm  # noqa: F821
    pz = zm
    if HAS_ROT:
        r00 = tl.load(rot_ptr + 0)  # noqa: F821
        r01 = tl.load(rot_ptr + 1)  # noqa: F821
        r02 = tl.load(rot_ptr + 2)  # noqa: F821
        r10 = tl.load(rot_ptr + 3)  # noqa: F821
        r11 = tl.load(rot_ptr + 4)  # noqa: F821
        r12 = tl.load(rot_ptr + 5)  # noqa: F821
        r20 = tl.load(rot_ptr + 6)  # noqa: F821
        r21 = tl.load(rot_ptr + 7)  # noqa: F821
        r22 = tl.load(rot_ptr + 8)  # noqa: F821
        qx = px * r00 + py * r10 + pz * r20
        qy = px * r01 + py * r11 + pz * r21
        qz = px * r02 + py * r12 + pz * r22
        px, py, pz = qx, qy, qz
    tl.store(depth_ptr + pix, depth, mask=xm)  # noqa: F821
    tl.store(dsig_ptr + pix, tl.where(measured, sz, nan), mask=xm)  # noqa: F821
    tl.store(sig_ptr + pix, tl.where(measured, sr, nan), mask=xm)  # noqa: F821
    tl.store(sigd_ptr + pix, sd, mask=xm)  # noqa: F821
    tl.store(prov_ptr + pix, tl.where(measured, P_MEAS, 0).to(tl.uint8), mask=xm)  # noqa: F821
    tl.store(fl_ptr + pix, fl, mask=xm)  # noqa: F821
    tl.store(pts_ptr + 3 * pix, px, mask=xm)  # noqa: F821
    tl.store(pts_ptr + 3 * pix + 1, py, mask=xm)  # noqa: F821
    tl.store(pts_ptr + 3 * pix + 2, pz, mask=xm)  # noqa: F821
    tl.store(meas_ptr + pix, measured.to(tl.uint8), mask=xm)  # noqa: F821


def _pack_kernel(pts_ptr, meas_ptr, sig_ptr, prov_ptr, fl_ptr, src_ptr, out_ptr, N,
                 BLOCK: tl.constexpr):  # noqa: F821
    # 6 int32 words per point: x y z sigma (NaN = 0x7fc00000 where not measured),
    # provenance | flags << 16, source & 0xffff
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # noqa: F821
    pm = p < N
    meas = tl.load(meas_ptr + p, mask=pm, other=0) != 0  # noqa: F821
    qnan = 0x7FC00000
    for i in tl.static_range(3):  # noqa: F821
        v = tl.load(pts_ptr + 3 * p + i, mask=pm, other=0.0).to(tl.int32, bitcast=True)  # noqa: F821
        tl.store(out_ptr + 6 * p + i, tl.where(meas, v, qnan), mask=pm)  # noqa: F821
    sg = tl.load(sig_ptr + p, mask=pm, other=0.0).to(tl.int32, bitcast=True)  # noqa: F821
    tl.store(out_ptr + 6 * p + 3, tl.where(meas, sg, qnan), mask=pm)  # noqa: F821
    pv = tl.load(prov_ptr + p, mask=pm, other=0).to(tl.int32)  # noqa: F821
    fl = tl.load(fl_ptr + p, mask=pm, other=0).to(tl.int32)  # noqa: F821
    tl.store(out_ptr + 6 * p + 4, pv | (fl << 16), mask=pm)  # noqa: F821
    src = tl.load(src_ptr + p, mask=pm, other=0).to(tl.int32)  # noqa: F821
    tl.store(out_ptr + 6 * p + 5, src & 0xFFFF, mask=pm)  # noqa: F821


# --------------------------------------------------------------------------- build + launch

def _kernels() -> dict[str, Any]:
    """JIT the kernels on first use (imports triton)."""
    global _KERNELS
    if _KERNELS is None:
        import triton
        import triton.language as tl_mod

        globals()['tl'] = tl_mod
        globals()['_BIGC'] = tl_mod.constexpr(_BIG)
        kernels = {
            'census': triton.jit(_census_kernel),
            'cost': triton.jit(_cost_kernel),
            'aggregate': triton.jit(_aggregate_kernel),
        }
        # kernels calling helpers: rebind the helpers' global names to jitted versions first.
        for helper in (_subpix, _sym, _pad1, _prop):
            globals()[helper.__name__] = triton.jit(helper)
        kernels['select_left'] = triton.jit(_select_left_kernel)
        kernels['select_right'] = triton.jit(_select_right_kernel)
        kernels['texture_rows'] = triton.jit(_texture_rows_kernel)
        kernels['prep'] = triton.jit(_prep_kernel)
        kernels['conn'] = triton.jit(_conn_kernel)
        kernels['speckle_round'] = triton.jit(_speckle_round_kernel)
        kernels['speckle_count'] = triton.jit(_speckle_count_kernel)
        kernels['final'] = triton.jit(_final_kernel)
        kernels['triangulate'] = triton.jit(_triangulate_kernel)
        kernels['pack'] = triton.jit(_pack_kernel)
        _KERNELS = kernels
        _LOG.debug('triton SGM kernels ready (triton %s)', triton.__version__)
    return _KERNELS


def use_interpreter() -> None:
    """Run the kernels in Triton's interpreter, on CPU tensors (``TRITON_INTERPRET=1``).

    For the tests on machines without a GPU: every kernel then runs its Python body with
    numpy on the host, slowly but with the same integer and correctly rounded float
    arithmetic, so its results can be compared with the torch reference bit for bit. Call it
    before the first kernel launch of the process.

    Raises:
        RuntimeError: the kernels were already compiled for the GPU in this process.
    """
    global _INTERPRET
    if _KERNELS is not None and not _INTERPRET:
        raise RuntimeError('the Triton kernels are already compiled for the GPU in this process')
    if 'triton' in sys.modules and os.environ.get('TRITON_INTERPRET') != '1':
        # triton.language's own jit helpers (tl.min, tl.max, ...) were built in compiled mode
        raise RuntimeError('triton was imported before TRITON_INTERPRET=1 was set: set it in the '
                           'environment before triton is imported')
    os.environ['TRITON_INTERPRET'] = '1'
    _INTERPRET = True


def interpreting() -> bool:
    """Whether :func:`use_interpreter` switched the kernels to Triton's CPU interpreter."""
    return _INTERPRET


def kernel_device_ok(device: Any) -> bool:
    """Whether the Triton kernels can run on tensors of this torch device: CUDA, or the CPU
    under :func:`use_interpreter`."""
    return device.type == 'cuda' or (device.type == 'cpu' and _INTERPRET)


def triton_available() -> bool:
    """True when triton can be imported (does not check for a GPU)."""
    import importlib.util

    return importlib.util.find_spec('triton') is not None


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def census_triton(img, cw: int, ch: int):
    """Census transform on the GPU. img: (H, W) uint8 CUDA tensor -> (H, W) int64."""
    import torch

    k = _kernels()
    h, w = img.shape
    out = torch.empty((h, w), dtype=torch.int64, device=img.device)
    bx = 128
    k['census'][(h, -(-w // bx))](img, out, h, w, CW=cw, CH=ch, BX=bx)
    return out


def cost_volume_triton(cl, cr, min_disparity: int, num_disparities: int, max_cost: int):
    """Hamming cost volume (H, W, D) uint8 from two (H, W) int64 census images."""
    import torch

    k = _kernels()
    h, w = cl.shape
    d = int(num_disparities)
    out = torch.empty((h, w, d), dtype=torch.uint8, device=cl.device)
    bd = _next_pow2(d)
    bx = max(1, 4096 // bd)
    k['cost'][(h, -(-w // bx))](cl, cr, out, h, w, d, int(min_disparity), int(max_cost), BX=bx, BD=bd)
    return out


def aggregate_triton(cost, img, directions, p1: int, p2: int, p2_gradient_k: int,
                     out=None, lines: int = 4):
    """Per-path SGM aggregation of all ``directions`` in one launch.

    Args:
        cost: (H, W, D) uint8 CUDA tensor, costs <= 255 - p2.
        img: (H, W) uint8 guide image for the adaptive P2.
        directions: sequence of (dx, dy) in {-1, 0, 1}^2, not (0, 0).
        p1, p2, p2_gradient_k: penalties (cost units) and the gradient scale (DN; 0 = fixed P2).
        out: optional preallocated (P, H, W, D) uint8 output.
        lines: scanlines per program.

    Returns:
        (P, H, W, D) uint8: L_r of each path.
    """
    import torch

    k = _kernels()
    h, w, d = cost.shape
    npaths = len(directions)
    if out is None:
        out = torch.empty((npaths, h, w, d), dtype=torch.uint8, device=cost.device)
    key = (str(cost.device), tuple(directions))
    dirs = _DIRS_CACHE.get(key)
    if dirs is None:  # cached: no host->device copy per frame (CUDA-graph capturable)
        dirs = torch.tensor([c for dxy in directions for c in dxy], dtype=torch.int32, device=cost.device)
        _DIRS_CACHE[key] = dirs
    bd = _next_pow2(d)
    grid = (-(-max(h, w) // lines), npaths)
    warps = max(1, min(8, lines * bd // 128))
    k['aggregate'][grid](cost, img, out, dirs, h, w, d, int(p1), int(p2), int(p2_gradient_k),
                         LINES=lines, BD=bd, num_warps=warps, num_stages=1)
    return out


def select_left_triton(agg, min_disparity: int, uniqueness_ratio: int, curv_scale: float,
                       subpixel_mode: int):
    """Sum the path planes and pick the left disparity; see ``sgm.select_left_torch``."""
    import torch

    k = _kernels()
    npaths, h, w, d = agg.shape
    dev = agg.device
    s = torch.empty((h, w, d), dtype=torch.int16, device=dev)
    disp = torch.empty((h, w), dtype=torch.float32, device=dev)
    m = torch.empty((h, w), dtype=torch.int32, device=dev)
    m2 = torch.empty((h, w), dtype=torch.int32, device=dev)
    curv = torch.empty((h, w), dtype=torch.float32, device=dev)
    uniq = torch.empty((h, w), dtype=torch.int8, device=dev)
    bd = _next_pow2(d)
    bx = max(1, 2048 // bd)
    k['select_left'][(h, -(-w // bx))](agg, s, disp, m, m2, curv, uniq, h, w, d, h * w * d,
                                       int(min_disparity),
                                       int(uniqueness_ratio), float(curv_scale), NPATHS=npaths,
                                       MODE=int(subpixel_mode), BX=bx, BD=bd)
    return s, {'disparity': disp, 'min_cost': m, 'second_cost': m2, 'curvature': curv,
               'unique': uniq.view(torch.bool)}  # the kernel stores 0/1: a valid bool view


def select_right_triton(s, min_disparity: int, subpixel_mode: int):
    """Right-image disparity (H, W) float32 from S along its diagonal (NaN where none)."""
    import torch

    k = _kernels()
    h, w, d = s.shape
    out = torch.empty((h, w), dtype=torch.float32, device=s.device)
    bd = _next_pow2(d)
    bx = max(1, 2048 // bd)
    k['select_right'][(h, -(-w // bx))](s, out, h, w, d, int(min_disparity), MODE=int(subpixel_mode),
                                        BX=bx, BD=bd)
    return out


def _texture_rows(img, window: int):
    """(H, W) int32 row sums over the window of the integer |Sobel-x| (see _texture_rows_kernel)."""
    import torch

    if window < 1 or window % 2 == 0:
        raise ValueError(f'texture window must be odd and >= 1, got {window}')
    k = _kernels()
    h, w = img.shape
    rs = torch.empty((h, w), dtype=torch.int32, device=img.device)
    bx = 256
    k['texture_rows'][(h, -(-w // bx))](img, rs, h, w, int(min(h, w) <= 1), R=window // 2, BX=bx)
    return rs


def postfilter_triton(cfg, d_raw, unique, d_right, min_cost, second_cost, img,
                      left_valid=None, right_valid=None) -> dict:
    """Texture, LR check, speckle removal and labels of ``sgm.label_matches`` in 16 launches.

    Same results as ``texture_torch`` + ``label_matches`` (bit-exact: integer texture sums,
    the same fixed speckle rounds, correctly rounded divisions).

    Args:
        cfg: ``sgm.SGMConfig``.
        d_raw: (H, W) float32 left disparity of every pixel (px).
        unique: (H, W) bool uniqueness pass.
        d_right: (H, W) float32 right disparity (NaN where none).
        min_cost, second_cost: (H, W) int32 S(d*) and S_2 of the selection.
        img: (H, W) uint8 left image (texture).
        left_valid, right_valid: optional (H, W) bool image-data masks.

    Returns:
        dict of (H, W) tensors: 'disparity', 'flags' (int32), 'lr_diff', 'texture',
        'uniqueness', 'min_cost' (float32).
    """
    import torch

    from .contract import Flag

    k = _kernels()
    h, w = d_raw.shape
    n = h * w
    if n >= (1 << 31) - 1:
        raise ValueError(f'image of {n} pixels is too large for int32 labels')
    dev = d_raw.device
    rs = _texture_rows(img, cfg.texture_window)
    tex = torch.empty((h, w), dtype=torch.float32, device=dev)
    lrd = torch.empty((h, w), dtype=torch.float32, device=dev)
    state = torch.empty((h, w), dtype=torch.uint8, device=dev)
    bx = 256
    grid2 = (h, -(-w // bx))
    r = cfg.texture_window // 2
    k['prep'][grid2](rs, d_raw, unique.view(torch.int8), d_right, tex, lrd, state, h, w,
                     float(cfg.min_texture) if cfg.min_texture > 0 else float('-inf'),
                     float(cfg.lr_max_diff_px), float(cfg.texture_window ** 2),
                     LR_CHECK=bool(cfg.lr_check), R=r, BX=bx)
    speckle = cfg.speckle_window_size > 0
    lab = size = opn = None
    if speckle:
        conn = torch.empty((h, w), dtype=torch.uint8, device=dev)
        lab = torch.empty(n, dtype=torch.int32, device=dev)
        k['conn'][grid2](d_raw, state, conn, lab, h, w, float(cfg.speckle_range), BX=bx)
        other = torch.empty_like(lab)
        block = 1024
        g1 = (-(-n // block),)
        for _ in range(cfg.speckle_iterations):
            k['speckle_round'][g1](lab, other, conn, w, n, BLOCK=block, num_warps=8)
            lab, other = other, lab
        cnt = torch.zeros(2 * n, dtype=torch.int32, device=dev)
        size, opn = cnt[:n], cnt[n:]
        k['speckle_count'][g1](lab, conn, size, opn, w, n, BLOCK=block, num_warps=8)
    out = {k_: torch.empty((h, w), dtype=torch.float32, device=dev)
           for k_ in ('disparity', 'lr_diff', 'uniqueness', 'min_cost')}
    flags = torch.empty((h, w), dtype=torch.int32, device=dev)
    dummy = state  # never read when the mask is absent
    lv = left_valid.contiguous().view(torch.uint8) if left_valid is not None else dummy
    rv = right_valid.contiguous().view(torch.uint8) if right_valid is not None else dummy
    k['final'][grid2](d_raw, state, lab if speckle else state, size if speckle else state,
                      opn if speckle else state, lrd, min_cost, second_cost, lv, rv,
                      out['disparity'], flags, out['lr_diff'], out['uniqueness'], out['min_cost'],
                      h, w, int(cfg.speckle_window_size), int(min(w, cfg.max_disparity)),
                      float(cfg.max_disparity - 1), float(cfg.paths),
                      F_OOV=int(Flag.OUT_OF_VIEW), F_NM=int(Flag.NO_MATCH),
                      F_LR=int(Flag.LR_INCONSISTENT), F_TC=int(Flag.TOO_CLOSE),
                      SPECKLE=speckle, HAS_LV=left_valid is not None,
                      HAS_RV=right_valid is not None, BX=bx)
    out['flags'] = flags
    out['texture'] = tex
    return out


def triangulate_triton(disparity, lr_diff, flags, u, v, ray, rot, consts, max_sigma_on: bool,
                       sigma_d=None) -> dict:
    """``TorchFrame.triangulate`` in one launch (same float32 operations, no FMA contraction).

    Args:
        disparity, lr_diff: (H, W) float32 CUDA tensors (px); flags: (H, W) int32.
        u: (W,) float32 (x - cx) / fx; v: (H,) float32 (y - cy) / fy; ray: (H, W) float32 |ray|.
        rot: optional (3, 3) float32 (points @ rot), or None.
        consts: (>= 6,) float32 device tensor: sigma.disparity_px, sigma.lr_gain, delta_cx (px),
            f*B (px m), limit.max_relative_sigma, limit.max_sigma_m.
        max_sigma_on: limit.max_sigma_m > 0.
        sigma_d: optional (H, W) float32 per-pixel disparity sigma (px) of the calibrated model;
            None = the constant model from ``consts``.

    Returns:
        dict as ``TorchFrame.triangulate``.
    """
    import torch

    from .contract import Flag, Provenance

    k = _kernels()
    h, w = disparity.shape
    dev = disparity.device
    f32 = dict(dtype=torch.float32, device=dev)
    out = {name: torch.empty((h, w), **f32) for name in ('depth', 'depth_sigma', 'sigma', 'sigma_disparity')}
    prov = torch.empty((h, w), dtype=torch.uint8, device=dev)
    fl = torch.empty((h, w), dtype=torch.int32, device=dev)
    pts = torch.empty((h, w, 3), **f32)
    meas = torch.empty((h, w), dtype=torch.uint8, device=dev)
    bx = 256
    k['triangulate'][(h, -(-w // bx))](
        disparity.contiguous(), lr_diff.contiguous(), flags.to(torch.int32).contiguous(), u, v,
        ray, rot if rot is not None else consts, consts,
        sigma_d.float().contiguous() if sigma_d is not None else consts, out['depth'],
        out['depth_sigma'], out['sigma'], out['sigma_disparity'], prov, fl, pts, meas, h, w,
        F_BEYOND=int(Flag.BEYOND_RESOLUTION), F_TC=int(Flag.TOO_CLOSE),
        P_MEAS=int(Provenance.MEASURED), HAS_ROT=rot is not None, SIGMA_LIMIT=bool(max_sigma_on),
        HAS_SIGMA=sigma_d is not None, BX=bx, enable_fp_fusion=False)
    out.update({'provenance': prov, 'flags': fl, 'points': pts, 'measured': meas.view(torch.bool),
                'source': torch.zeros((h, w), dtype=torch.int32, device=dev)})
    return out


def pack_triton(tri) -> Any:
    """``TorchFrame.pack`` in one launch: (H, W, 24) uint8 in the POINT_DTYPE byte layout."""
    import torch

    k = _kernels()
    pts = tri['points'].contiguous()
    h, w = pts.shape[:2]
    n = h * w
    words = torch.empty((h, w, 6), dtype=torch.int32, device=pts.device)
    block = 1024
    k['pack'][(-(-n // block),)](pts, tri['measured'].contiguous().view(torch.uint8),
                                 tri['sigma'].contiguous(), tri['provenance'].contiguous(),
                                 tri['flags'].to(torch.int32).contiguous(),
                                 tri['source'].to(torch.int32).contiguous(), words, n, BLOCK=block)
    return words.view(torch.uint8).reshape(h, w, 24)
