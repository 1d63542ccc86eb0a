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
"""
from __future__ import annotations

import logging
from typing import Any

_LOG = logging.getLogger(__name__)

_BIG = 1 << 20  # larger than any aggregated cost, small enough that BIG + P2 cannot overflow int32
_KERNELS: dict[str, Any] | None = None
_DIRS_CACHE: dict[tuple, Any] = {}


# --------------------------------------------------------------------------- kernel sources
# (plain functions; ``tl`` is bound as a module global by _kernels() before triton.jit)

def _census_kernel(img_ptr, out_ptr, H, W, CW: 'tl.constexpr', CH: 'tl.constexpr',  # noqa: F821
                   BX: 'tl.constexpr'):  # noqa: F821
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
                 BX: 'tl.constexpr', BD: 'tl.constexpr'):  # noqa: F821
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
                      LINES: 'tl.constexpr', BD: 'tl.constexpr'):  # noqa: F821
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
    return tl.where(ok, (smf - spf) / tl.where(ok, den, 1.0), 0.0)  # noqa: F821


def _select_left_kernel(agg_ptr, s_ptr, disp_ptr, m_ptr, m2_ptr, curv_ptr, uniq_ptr,
                        H, W, D, HWD, MIN_D, RATIO, CURV_SCALE,
                        NPATHS: 'tl.constexpr', MODE: 'tl.constexpr',  # noqa: F821
                        BX: 'tl.constexpr', BD: 'tl.constexpr'):  # noqa: F821
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


def _select_right_kernel(s_ptr, disp_ptr, H, W, D, MIN_D, MODE: 'tl.constexpr',  # noqa: F821
                         BX: 'tl.constexpr', BD: 'tl.constexpr'):  # noqa: F821
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
        # the select kernels call _subpix: rebind the global name to the jitted helper first.
        globals()['_subpix'] = triton.jit(_subpix)
        kernels['select_left'] = triton.jit(_select_left_kernel)
        kernels['select_right'] = triton.jit(_select_right_kernel)
        _KERNELS = kernels
        _LOG.debug('triton SGM kernels ready (triton %s)', triton.__version__)
    return _KERNELS


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
               'unique': uniq.bool()}


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
