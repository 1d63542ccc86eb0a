"""Semi-global matching in PyTorch (CPU) with Triton kernels on CUDA, labelled like OpenCV SGBM.

A drop-in replacement for :class:`~geo_depth_node.core.stereo.OpenCVStereoMatcher`:
:meth:`TorchSGMMatcher.match` returns the same :class:`~geo_depth_node.core.stereo.MatchResult`
with the same failure labels, plus per-pixel features for a disparity-sigma model.
:meth:`TorchSGMMatcher.match_tensors` keeps everything on the device for a frame loop.

Algorithm (identical on CPU and CUDA; the CPU runs the pure-torch functions of this
module, which define it; CUDA runs the Triton kernels of :mod:`.sgm_triton` for every
stage, post-filter included, and gives bit-identical results: integer costs, the same
fixed speckle rounds, correctly rounded float32 divisions):

1. Census transform, ``census_width`` x ``census_height`` window (default 9 x 7 -> 62
   bits; bit = neighbour < centre; borders replicated).
2. Cost volume C (H, W, D) uint8 = Hamming distance between the left census at x and
   the right census at x - d, d = min_disparity .. min_disparity + D - 1; candidates
   leaving the right image cost ``max_cost`` (= number of census bits).
3. Aggregation along 8 (or 4) paths r:
   ``L_r(p, d) = C(p, d) + min(L_r(p-r, d), L_r(p-r, d+-1) + P1, min_k L_r(p-r, k) + P2')
   - min_k L_r(p-r, k)``, with the gradient-adapted ``P2' = max(P1 + 1,
   floor(P2 * k / (k + |I(p) - I(p-r)|)))`` (k = ``p2_gradient_k`` DN; 0 = fixed P2).
   L_r <= max_cost + P2 <= 255, so a path plane fits uint8 (checked in the config).
   Vertical and diagonal paths run one scanline per image column; diagonal lines wrap
   around at the image border and restart there (libSGM's layout), so every pixel is on
   exactly one line per direction.
4. S = sum_r L_r. Winner-take-all d* = argmin S (ties: smallest d). Uniqueness (OpenCV's
   rule): rejected if some d with |d - d*| > 1 has ``S(d) * (100 - ratio) < S(d*) * 100``.
   Subpixel: parabola (or equiangular) through S(d*-1), S(d*), S(d*+1).
5. Right disparity from the same S along the diagonal S(y, xr + d, d) (the right image's
   cost of disparity d); LR check ``|d_left(x) - d_right(round(x - d_left))| <=
   lr_max_diff_px``.
6. Texture test (mean |Sobel_x|/8 over a window, as ``stereo.texture_map``), speckle
   removal (below), labels as ``OpenCVStereoMatcher.match``: NO_MATCH (not unique, no
   texture, speckle), LR_INCONSISTENT, TOO_CLOSE (d >= max_disparity - 1), OUT_OF_VIEW
   (left border band whose match leaves the right image, invalid rectified area).

Speckle removal (what is done instead of OpenCV's flood fill): connected components of
the matched pixels (4-neighbours whose disparities differ by <= speckle_range px) by
min-label propagation with pointer jumping, a FIXED number of rounds
(``speckle_iterations``; no data-dependent loop, so it can be captured in a CUDA graph).
A component whose labels have converged (no connected neighbour carries another label)
is exact; if it has fewer than ``speckle_window_size`` pixels it is removed (NO_MATCH).
A component that has not converged within the rounds is kept: the filter can miss a
speckle of long geodesic extent but never removes a large region.

Per-pixel sigma features (``features`` of the result, float32 (H, W), computed for every
pixel; the consumer masks with ``flags``):
    curvature: (S(d*-1) + S(d*+1) - 2 S(d*)) / (n_paths * P1): cost-curve sharpness at the
        minimum, dimensionless (one-sided 2 (S(nb) - S(d*)) at the ends of the range).
    uniqueness: S(d*) / S_2, S_2 = smallest S outside d* +- 1 (0..1; small = distinct).
    lr_diff: |d_left - d_right| px (also ``MatchResult.lr_diff``; 0 where not checked).
    texture: mean |dI/dx| over the texture window, DN/px.
    min_cost: S(d*) / n_paths, mean aggregated cost per path at the minimum (cost units).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable, Mapping

import numpy as np

from .contract import Flag
from .stereo import MatcherConfig, MatchResult, check_stereo_pair

_LOG = logging.getLogger(__name__)

_BIG = 1 << 20
#: (dx, dy) of the aggregation paths; the first four are the 4-path set.
DIRECTIONS_8: tuple[tuple[int, int], ...] = ((1, 0), (-1, 0), (0, 1), (0, -1),
                                            (1, 1), (-1, 1), (1, -1), (-1, -1))
_SUBPIXEL = {'parabola': 0, 'equiangular': 1}
_SOBEL_CACHE: dict[str, Any] = {}
FEATURE_NAMES = ('curvature', 'uniqueness', 'lr_diff', 'texture', 'min_cost')


@dataclasses.dataclass(frozen=True)
class SGMConfig:
    """Settings of :class:`TorchSGMMatcher` (costs in census bits, disparities in pixels).

    Attributes:
        min_disparity: smallest searched disparity, px.
        num_disparities: D, 16..256, multiple of 16.
        census_width, census_height: odd census window; width*height - 1 <= 63 bits.
        p1, p2: SGM penalties for 1 px / larger disparity changes (cost units); p2 > p1 and
            max_cost + p2 <= 255.
        p2_gradient_k: DN; P2' = max(P1 + 1, P2 * k / (k + |dI|)) along the path; 0 = fixed P2.
        paths: 8 or 4.
        uniqueness_ratio: percent (OpenCV semantics); 0 = off.
        subpixel: 'parabola' or 'equiangular'.
        lr_check, lr_max_diff_px: left-right check and its tolerance (px).
        speckle_window_size: components smaller than this (pixels) are removed; 0 = off.
        speckle_range: px, largest disparity step inside one component.
        speckle_iterations: fixed rounds of label propagation (see module doc).
        min_texture, texture_window: texture test (DN/px, odd window); 0 = off.
    """

    min_disparity: int = 0
    num_disparities: int = 128
    census_width: int = 9
    census_height: int = 7
    p1: int = 10
    p2: int = 120
    p2_gradient_k: int = 8
    paths: int = 8
    uniqueness_ratio: int = 10
    subpixel: str = 'equiangular'
    lr_check: bool = True
    lr_max_diff_px: float = 1.0
    speckle_window_size: int = 100
    speckle_range: float = 2.0
    speckle_iterations: int = 12
    min_texture: float = 1.0
    texture_window: int = 9

    def __post_init__(self) -> None:
        if not 16 <= self.num_disparities <= 256 or self.num_disparities % 16:
            raise ValueError(f'num_disparities must be a multiple of 16 in 16..256, got '
                             f'{self.num_disparities}')
        for name in ('census_width', 'census_height', 'texture_window'):
            v = getattr(self, name)
            if v < 1 or v % 2 == 0:
                raise ValueError(f'{name} must be odd and >= 1, got {v}')
        if self.census_width * self.census_height - 1 > 63:
            raise ValueError(f'census window {self.census_width}x{self.census_height} has more '
                             'than 63 bits')
        if not 0 < self.p1 < self.p2:
            raise ValueError(f'need 0 < p1 < p2, got p1={self.p1} p2={self.p2}')
        if self.max_cost + self.p2 > 255:
            raise ValueError(f'p2 ({self.p2}) + max census cost ({self.max_cost}) must be <= 255 '
                             '(uint8 path planes)')
        if self.p2_gradient_k < 0:
            raise ValueError(f'p2_gradient_k must be >= 0, got {self.p2_gradient_k}')
        if self.paths not in (4, 8):
            raise ValueError(f'paths must be 4 or 8, got {self.paths}')
        if not 0 <= self.uniqueness_ratio < 100:
            raise ValueError(f'uniqueness_ratio must be in 0..99, got {self.uniqueness_ratio}')
        if self.subpixel not in _SUBPIXEL:
            raise ValueError(f'subpixel must be one of {list(_SUBPIXEL)}, got {self.subpixel!r}')
        if self.speckle_iterations < 1:
            raise ValueError(f'speckle_iterations must be >= 1, got {self.speckle_iterations}')

    @property
    def max_cost(self) -> int:
        """Census bits = largest matching cost."""
        return self.census_width * self.census_height - 1

    @property
    def max_disparity(self) -> int:
        """Largest searched disparity, pixels."""
        return self.min_disparity + self.num_disparities - 1

    @property
    def directions(self) -> tuple[tuple[int, int], ...]:
        """Aggregation path directions (dx, dy)."""
        return DIRECTIONS_8[:self.paths]

    @staticmethod
    def from_matcher_config(mc: MatcherConfig, **overrides: Any) -> 'SGMConfig':
        """Take the shared ``stereo.*`` settings (range, uniqueness, speckle, LR, texture).

        SGBM's p1/p2 are in its own (block-sum) cost units and are not carried over.
        """
        kw: dict[str, Any] = dict(
            min_disparity=mc.min_disparity, num_disparities=mc.num_disparities,
            uniqueness_ratio=mc.uniqueness_ratio, speckle_window_size=mc.speckle_window_size,
            speckle_range=float(mc.speckle_range), lr_check=mc.lr_check,
            lr_max_diff_px=mc.lr_max_diff_px, min_texture=mc.min_texture,
            texture_window=mc.texture_window)
        kw.update(overrides)
        return SGMConfig(**kw)

    @staticmethod
    def from_params(params: Mapping[str, Any], **overrides: Any) -> 'SGMConfig':
        """From a validated parameter dict (``stereo.*``)."""
        return SGMConfig.from_matcher_config(MatcherConfig.from_params(params), **overrides)


class StageTimer:
    """Per-stage wall times of the device work: CUDA events on CUDA, perf_counter on CPU.

    Call :meth:`mark` after each stage; :meth:`results` (synchronises) gives stage -> ms.
    """

    def __init__(self, device: Any) -> None:
        import torch

        self._cuda = torch.device(device).type == 'cuda'
        self._marks: list[tuple[str, Any]] = []
        self._start = self._now()

    def _now(self) -> Any:
        import torch

        if self._cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def mark(self, stage: str) -> None:
        """End the current stage (named ``stage``) and start the next."""
        self._marks.append((stage, self._now()))

    def results(self) -> dict[str, float]:
        """Stage -> milliseconds (sums stages marked twice)."""
        import torch

        out: dict[str, float] = {}
        prev = self._start
        if self._cuda:
            torch.cuda.synchronize()
        for name, t in self._marks:
            ms = prev.elapsed_time(t) if self._cuda else (t - prev) * 1e3
            out[name] = out.get(name, 0.0) + float(ms)
            prev = t
        return out


# --------------------------------------------------------------------------- torch reference

def census_torch(img: Any, cw: int = 9, ch: int = 7) -> Any:
    """Census transform. img: (H, W) uint8 tensor -> (H, W) int64 bits (see module doc).

    Bit order: window offsets row-major without the centre, the first offset ends up in the
    highest used bit; neighbours beyond the border replicate the edge pixel.
    """
    import torch
    import torch.nn.functional as F

    h, w = img.shape
    rx, ry = cw // 2, ch // 2
    x = img.to(torch.int16)
    pad = F.pad(x[None, None].float(), (rx, rx, ry, ry), mode='replicate')[0, 0].to(torch.int16)
    acc = torch.zeros((h, w), dtype=torch.int64, device=img.device)
    for i in range(cw * ch):
        oy, ox = i // cw - ry, i % cw - rx
        if oy == 0 and ox == 0:
            continue
        nb = pad[ry + oy:ry + oy + h, rx + ox:rx + ox + w]
        acc = (acc << 1) | (nb < x).to(torch.int64)
    return acc


def popcount64(v: Any) -> Any:
    """Bit count of non-negative int64 tensors (SWAR), as int64."""
    v = v - ((v >> 1) & 0x5555555555555555)
    v = (v & 0x3333333333333333) + ((v >> 2) & 0x3333333333333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0F
    return ((v * 0x0101010101010101) >> 56) & 0xFF


def cost_volume_torch(cl: Any, cr: Any, min_disparity: int, num_disparities: int, max_cost: int) -> Any:
    """Hamming cost (H, W, D) uint8 between left census at x and right census at x - d."""
    import torch

    h, w = cl.shape
    out = torch.full((h, w, num_disparities), max_cost, dtype=torch.uint8, device=cl.device)
    for i in range(num_disparities):
        d = int(min_disparity) + i
        x0, x1 = max(0, d), min(w, w + d)  # left columns whose right match x - d is inside
        if x1 > x0:
            out[:, x0:x1, i] = popcount64(cl[:, x0:x1] ^ cr[:, x0 - d:x1 - d]).to(torch.uint8)
    return out


def _path_step(lp: Any, mp: Any, c: Any, p2e: Any, p1: int) -> Any:
    """One SGM recursion step for N scanlines: lp (N, D) int32, mp (N, 1), c (N, D), p2e (N, 1)."""
    import torch

    big = torch.full_like(lp[:, :1], _BIG)
    nb = torch.minimum(torch.cat([big, lp[:, :-1]], 1), torch.cat([lp[:, 1:], big], 1)) + p1
    t = torch.minimum(torch.minimum(nb, lp), mp + p2e)
    return c + t - mp


def _p2_eff(g: Any, p1: int, p2: int, k: int) -> Any:
    import torch

    if k <= 0:
        return torch.full_like(g, p2)
    return torch.clamp_min((p2 * k) // (k + g), p1 + 1)


def aggregate_path_torch(cost: Any, img: Any, direction: tuple[int, int], p1: int, p2: int,
                         p2_gradient_k: int = 0, accumulate: Any = None) -> Any:
    """L_r of one path (pure torch; loop along the path, vectorised over scanlines and D).

    Args:
        cost: (H, W, D) integer tensor of matching costs.
        img: (H, W) uint8 guide image (adaptive P2).
        direction: (dx, dy) of the path r, each in {-1, 0, 1}.
        p1, p2, p2_gradient_k: see :class:`SGMConfig`.
        accumulate: optional (H, W, D) int32 tensor; L_r is added to it in place and it is
            returned (no per-path volume is kept).

    Returns:
        (H, W, D) int32 L_r (or ``accumulate``).
    """
    import torch

    dx, dy = direction
    if dx not in (-1, 0, 1) or dy not in (-1, 0, 1) or (dx, dy) == (0, 0):
        raise ValueError(f'bad path direction {direction!r}')
    h, w, d = cost.shape
    dev = cost.device
    out = accumulate if accumulate is not None else torch.zeros((h, w, d), dtype=torch.int32, device=dev)
    im = img.to(torch.int32)
    if dy == 0:
        lp = torch.zeros((h, d), dtype=torch.int32, device=dev)
        mp = torch.zeros((h, 1), dtype=torch.int32, device=dev)
        xs = range(w) if dx > 0 else range(w - 1, -1, -1)
        for t, x in enumerate(xs):
            if t == 0:
                p2e = torch.zeros((h, 1), dtype=torch.int32, device=dev)
            else:
                g = (im[:, x] - im[:, x - dx]).abs()[:, None]
                p2e = _p2_eff(g, p1, p2, p2_gradient_k)
            lcur = _path_step(lp, mp, cost[:, x, :].to(torch.int32), p2e, p1)
            out[:, x, :] += lcur
            lp = lcur
            mp = lcur.min(dim=1, keepdim=True).values
        return out
    lines = torch.arange(w, device=dev)
    lp = torch.zeros((w, d), dtype=torch.int32, device=dev)
    mp = torch.zeros((w, 1), dtype=torch.int32, device=dev)
    ys = range(h) if dy > 0 else range(h - 1, -1, -1)
    boundary = 0 if dx > 0 else w - 1
    for t, y in enumerate(ys):
        xs_t = torch.remainder(lines + dx * t, w)
        if t == 0:
            keep = torch.zeros((w, 1), dtype=torch.int32, device=dev)
        elif dx == 0:
            keep = torch.ones((w, 1), dtype=torch.int32, device=dev)
        else:
            keep = (xs_t != boundary).to(torch.int32)[:, None]
        lp = lp * keep
        mp = mp * keep
        cur = im[y].index_select(0, xs_t)
        if t == 0:
            g = torch.zeros_like(cur)
        else:
            g = (cur - im[y - dy].index_select(0, torch.remainder(xs_t - dx, w))).abs()
        p2e = _p2_eff(g[:, None], p1, p2, p2_gradient_k)
        lcur = _path_step(lp, mp, cost[y].index_select(0, xs_t).to(torch.int32), p2e, p1)
        out[y].index_add_(0, xs_t, lcur)
        lp = lcur
        mp = lcur.min(dim=1, keepdim=True).values
    return out


def _subpixel_torch(sm: Any, sp: Any, m: Any, has_lo: Any, has_hi: Any, mode: int) -> Any:
    import torch

    smf, spf, mf = sm.float(), sp.float(), m.float()
    den = 2.0 * (smf + spf - 2.0 * mf) if mode == 0 else 2.0 * (torch.maximum(smf, spf) - mf)
    ok = has_lo & has_hi & (den > 0)
    return torch.where(ok, (smf - spf) / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))


def select_left_torch(s: Any, min_disparity: int, uniqueness_ratio: int, curv_scale: float,
                      subpixel_mode: int) -> dict[str, Any]:
    """Winner-take-all on S (H, W, D) int: disparity (float32, subpixel), min_cost and
    second_cost (int32), curvature (float32, times ``curv_scale``), unique (bool)."""
    import torch

    h, w, d = s.shape
    s = s.to(torch.int32)
    m, best = s.min(dim=2)  # first minimum = smallest d
    ds = torch.arange(d, device=s.device)
    far = (ds[None, None, :] - best[..., None]).abs() > 1
    m2 = torch.where(far, s, _BIG).min(dim=2).values
    lo = (best - 1).clamp_min(0)
    hi = (best + 1).clamp_max(d - 1)
    sm = s.gather(2, lo[..., None])[..., 0]
    sp = s.gather(2, hi[..., None])[..., 0]
    has_lo, has_hi = best > 0, best < d - 1
    off = _subpixel_torch(sm, sp, m, has_lo, has_hi, subpixel_mode)
    two = (sm + sp - 2 * m).float()
    one = torch.where(has_lo, 2 * (sm - m), 2 * (sp - m)).float()
    curv = torch.where(has_lo & has_hi, two, torch.where(has_lo | has_hi, one, torch.zeros_like(one)))
    uniq = m2.to(torch.int64) * (100 - uniqueness_ratio) >= m.to(torch.int64) * 100
    return {'disparity': (best + min_disparity).float() + off, 'min_cost': m, 'second_cost': m2,
            'curvature': curv * curv_scale, 'unique': uniq}


def select_right_torch(s: Any, min_disparity: int, subpixel_mode: int) -> Any:
    """Right-image disparity (H, W) float32 from S (H, W, D): argmin_d S(y, xr + d, d)."""
    import torch

    h, w, d = s.shape
    # pad x on both sides so that x = xr + min_d + i is always addressable
    lpad = max(0, -min_disparity)
    rpad = max(0, min_disparity + d)
    sp_ = torch.full((h, lpad + w + rpad, d), _BIG, dtype=torch.int32, device=s.device)
    sp_[:, lpad:lpad + w] = s.to(torch.int32)
    st = sp_.stride()
    diag = sp_.as_strided((h, w, d), (st[0], st[1], st[1] + st[2]),
                          sp_.storage_offset() + (lpad + min_disparity) * st[1])
    m, best = diag.min(dim=2)
    xr = torch.arange(w, device=s.device)[None, :]
    lo = (best - 1).clamp_min(0)
    hi = (best + 1).clamp_max(d - 1)
    sm = diag.gather(2, lo[..., None])[..., 0]
    spv = diag.gather(2, hi[..., None])[..., 0]
    has_lo = best > 0
    has_hi = (best < d - 1) & (xr + min_disparity + best + 1 < w)
    off = _subpixel_torch(sm, spv, m, has_lo, has_hi, subpixel_mode)
    out = (best + min_disparity).float() + off
    return torch.where(m < _BIG, out, torch.full_like(out, float('nan')))


# --------------------------------------------------------------------------- shared post-filter

def _sym_index(n: int, r: int, device: Any) -> Any:
    """Indices of OpenCV BORDER_REFLECT (cba|abc|cba) padding by r of a length-n axis."""
    import torch

    i = torch.arange(-r, n + r, device=device)
    i = torch.where(i < 0, -i - 1, i)
    i = torch.where(i >= n, 2 * n - 1 - i, i)
    return i.clamp(0, n - 1)


def texture_torch(img: Any, window: int = 9) -> Any:
    """Mean |Sobel_x|/8 over a window x window box (DN/px); as ``stereo.texture_map``.

    img: (H, W) uint8 tensor -> (H, W) float32. Sobel borders reflect-101, box borders reflect.
    """
    import torch
    import torch.nn.functional as F

    if window < 1 or window % 2 == 0:
        raise ValueError(f'texture window must be odd and >= 1, got {window}')
    x = img.float()[None, None]
    k = _SOBEL_CACHE.get(str(img.device))
    if k is None:  # cached per device: no host->device copy per frame (CUDA-graph capturable)
        k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=img.device) / 8.0
        _SOBEL_CACHE[str(img.device)] = k
    mode = 'reflect' if min(img.shape) > 1 else 'replicate'
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode=mode), k[None, None]).abs()[0, 0]
    r = window // 2
    h, w = g.shape
    gp = g.index_select(0, _sym_index(h, r, g.device)).index_select(1, _sym_index(w, r, g.device))
    return F.avg_pool2d(gp[None, None], window, stride=1)[0, 0]


def remove_speckles(disp: Any, valid: Any, max_size: int, max_diff: float, iterations: int) -> Any:
    """Small connected components of ``valid`` pixels (see module doc).

    Args:
        disp: (H, W) float32 disparity, px.
        valid: (H, W) bool, pixels taking part.
        max_size: components with fewer pixels are speckles.
        max_diff: px, 4-neighbours with |disp difference| <= max_diff are connected.
        iterations: rounds of min-label propagation + pointer jumping.

    Returns:
        (H, W) bool: pixels in converged components smaller than ``max_size``.
    """
    import torch

    h, w = disp.shape
    n = h * w
    dev = disp.device
    big = n
    idx = torch.arange(n, device=dev, dtype=torch.int64).reshape(h, w)
    lab = torch.where(valid, idx, torch.full_like(idx, big))
    # connectivity to the right and down neighbours
    conn_r = valid[:, :-1] & valid[:, 1:] & ((disp[:, :-1] - disp[:, 1:]).abs() <= max_diff)
    conn_d = valid[:-1, :] & valid[1:, :] & ((disp[:-1, :] - disp[1:, :]).abs() <= max_diff)
    bigt = torch.full((1,), big, dtype=torch.int64, device=dev)
    for _ in range(iterations):
        new = lab.clone()
        new[:, :-1] = torch.minimum(new[:, :-1], torch.where(conn_r, lab[:, 1:], bigt))
        new[:, 1:] = torch.minimum(new[:, 1:], torch.where(conn_r, lab[:, :-1], bigt))
        new[:-1, :] = torch.minimum(new[:-1, :], torch.where(conn_d, lab[1:, :], bigt))
        new[1:, :] = torch.minimum(new[1:, :], torch.where(conn_d, lab[:-1, :], bigt))
        flat = new.reshape(-1)
        for _ in range(2):  # pointer jumping lab = lab[lab]: stays in the component, only decreases
            flat = torch.where(flat < big, flat.gather(0, flat.clamp_max(n - 1)), flat)
        lab = flat.reshape(h, w)
    open_r = conn_r & (lab[:, :-1] != lab[:, 1:])
    open_d = conn_d & (lab[:-1, :] != lab[1:, :])
    open_px = torch.zeros((h, w), dtype=torch.bool, device=dev)
    open_px[:, :-1] |= open_r
    open_px[:, 1:] |= open_r
    open_px[:-1, :] |= open_d
    open_px[1:, :] |= open_d
    labc = lab.reshape(-1).clamp_max(n - 1)
    vflat = valid.reshape(-1)
    size = torch.zeros(n, dtype=torch.int32, device=dev).scatter_add_(0, labc, vflat.to(torch.int32))
    grp_open = torch.zeros(n, dtype=torch.int32, device=dev).scatter_reduce_(
        0, labc, (open_px.reshape(-1) & vflat).to(torch.int32), reduce='amax')
    small = (size.gather(0, labc) < max_size) & (grp_open.gather(0, labc) == 0)
    return (small & vflat).reshape(h, w)


def label_matches(cfg: SGMConfig, d_raw: Any, unique: Any, d_right: Any, texture: Any,
                  left_valid: Any = None, right_valid: Any = None) -> dict[str, Any]:
    """Failure labels and final disparity (device tensors), as ``OpenCVStereoMatcher.match``.

    Args:
        cfg: settings.
        d_raw: (H, W) float32 left disparity (subpixel) of every pixel.
        unique: (H, W) bool uniqueness pass.
        d_right: (H, W) float32 right-image disparity (NaN where none).
        texture: (H, W) float32 texture measure.
        left_valid, right_valid: optional (H, W) bool image-data masks.

    Returns:
        dict with 'disparity' (float32, NaN where flags != 0), 'flags' (int32 Flag bits),
        'lr_diff' (float32, 0 where not checked).
    """
    import torch

    h, w = d_raw.shape
    dev = d_raw.device
    ok = unique.clone()
    if cfg.min_texture > 0:
        ok &= texture >= cfg.min_texture
    cols = torch.arange(w, device=dev, dtype=torch.float32)[None, :]
    x_match = cols - torch.where(ok, d_raw, torch.zeros_like(d_raw))
    xr = torch.round(x_match).to(torch.int64)
    xr_c = xr.clamp(0, w - 1)
    lr_diff = torch.zeros((h, w), dtype=torch.float32, device=dev)
    lr_bad = torch.zeros((h, w), dtype=torch.bool, device=dev)
    if cfg.lr_check:
        dr = d_right.gather(1, xr_c)
        checked = ok & (xr >= 0) & (xr < w) & ~torch.isnan(dr)
        lr_diff = torch.where(checked, (d_raw - dr).abs(), lr_diff)
        lr_bad = checked & (lr_diff > cfg.lr_max_diff_px)
    no_match = ~ok
    if cfg.speckle_window_size > 0:
        no_match |= remove_speckles(d_raw, ok & ~lr_bad, cfg.speckle_window_size, cfg.speckle_range,
                                    cfg.speckle_iterations)
    x_match = cols - torch.where(no_match, torch.zeros_like(d_raw), d_raw)
    band = cols < min(w, cfg.max_disparity)
    # in the band, a pixel without a consistent match inside the right image is OUT_OF_VIEW
    oov = band & ~(~no_match & ~lr_bad & (x_match >= 0))
    if left_valid is not None:
        oov |= ~left_valid
    if right_valid is not None:
        xr2 = torch.round(x_match).to(torch.int64).clamp(0, w - 1)
        oov |= ~no_match & ~right_valid.gather(1, xr2)
    flags = torch.zeros((h, w), dtype=torch.int32, device=dev)
    flags |= torch.where(oov, int(Flag.OUT_OF_VIEW), 0)
    flags |= torch.where(no_match & ~oov, int(Flag.NO_MATCH), 0)
    flags |= torch.where(lr_bad & ~no_match & ~oov, int(Flag.LR_INCONSISTENT), 0)
    too_close = ~no_match & (d_raw >= cfg.max_disparity - 1)
    flags |= torch.where(too_close & ~oov, int(Flag.TOO_CLOSE), 0)
    disp = torch.where(flags != 0, torch.full_like(d_raw, float('nan')), d_raw)
    return {'disparity': disp, 'flags': flags, 'lr_diff': torch.where(no_match, 0.0, lr_diff)}


# --------------------------------------------------------------------------- matcher

class TorchSGMMatcher:
    """SGM matcher on a torch device (CPU: pure torch; CUDA: Triton kernels).

    Args:
        config: an :class:`SGMConfig` (or a stereo :class:`MatcherConfig`, converted with
            :meth:`SGMConfig.from_matcher_config`).
        device: torch device ('cpu', 'cuda', 'cuda:1', ...).
        use_triton: force the Triton kernels on/off; default: on for CUDA devices (on the CPU
            only under ``sgm_triton.use_interpreter()``, for tests).
        agg_lines: scanlines per Triton aggregation program (tuning knob, power of 2).

    Raises:
        ValueError: for a CUDA device without CUDA, or Triton requested on the CPU.
    """

    def __init__(self, config: SGMConfig | MatcherConfig | None = None, device: Any = 'cpu',
                 use_triton: bool | None = None, agg_lines: int = 4) -> None:
        import torch

        if agg_lines < 1 or agg_lines & (agg_lines - 1):
            raise ValueError(f'agg_lines must be a power of 2, got {agg_lines}')
        self.agg_lines = int(agg_lines)

        if config is None:
            config = SGMConfig()
        if isinstance(config, MatcherConfig):
            config = SGMConfig.from_matcher_config(config)
        self.config = config
        self.device = torch.device(device)
        if self.device.type == 'cuda' and not torch.cuda.is_available():
            raise ValueError(f'device {device!r} requested but CUDA is not available')
        self.use_triton = self.device.type == 'cuda' if use_triton is None else bool(use_triton)
        if self.use_triton:
            from .sgm_triton import kernel_device_ok

            if not kernel_device_ok(self.device):
                raise ValueError(f'Triton kernels need a CUDA device (or, on the CPU, '
                                 f'sgm_triton.use_interpreter()), got {self.device}')
        self._agg_buf: Any = None

    # ---- stages
    def cost(self, left: Any, right: Any) -> Any:
        """(H, W) uint8 tensors -> (H, W, D) uint8 census cost volume."""
        c = self.config
        if self.use_triton:
            from . import sgm_triton as kt

            cl = kt.census_triton(left, c.census_width, c.census_height)
            cr = kt.census_triton(right, c.census_width, c.census_height)
            return kt.cost_volume_triton(cl, cr, c.min_disparity, c.num_disparities, c.max_cost)
        cl = census_torch(left, c.census_width, c.census_height)
        cr = census_torch(right, c.census_width, c.census_height)
        return cost_volume_torch(cl, cr, c.min_disparity, c.num_disparities, c.max_cost)

    def aggregate(self, cost: Any, left: Any) -> Any:
        """Cost volume -> aggregated paths: (P, H, W, D) uint8 planes (Triton) or S (H, W, D) int32."""
        import torch

        c = self.config
        if self.use_triton:
            from . import sgm_triton as kt

            shape = (c.paths,) + tuple(cost.shape)
            if self._agg_buf is None or tuple(self._agg_buf.shape) != shape:
                self._agg_buf = torch.empty(shape, dtype=torch.uint8, device=cost.device)
            return kt.aggregate_triton(cost, left, c.directions, c.p1, c.p2, c.p2_gradient_k,
                                       out=self._agg_buf, lines=self.agg_lines)
        s = torch.zeros(cost.shape, dtype=torch.int32, device=cost.device)
        # The per-step tensors are small (scanlines x D): run this loop single-threaded.
        from .torch_util import cpu_threads

        with cpu_threads(cost.device, 1):
            for r in c.directions:
                aggregate_path_torch(cost, left, r, c.p1, c.p2, c.p2_gradient_k, accumulate=s)
        return s

    def select(self, agg: Any) -> dict[str, Any]:
        """Aggregated costs -> left selection dict plus 'disparity_right'."""
        c = self.config
        mode = _SUBPIXEL[c.subpixel]
        scale = 1.0 / (c.paths * c.p1)
        if self.use_triton:
            from . import sgm_triton as kt

            s, sel = kt.select_left_triton(agg, c.min_disparity, c.uniqueness_ratio, scale, mode)
            sel['disparity_right'] = kt.select_right_triton(s, c.min_disparity, mode)
            return sel
        sel = select_left_torch(agg, c.min_disparity, c.uniqueness_ratio, scale, mode)
        sel['disparity_right'] = select_right_torch(agg, c.min_disparity, mode)
        return sel

    def match_tensors(self, left: Any, right: Any, left_valid: Any = None, right_valid: Any = None,
                      timer: StageTimer | None = None) -> dict[str, Any]:
        """Match a rectified pair on the device; no host synchronisation.

        Args:
            left, right: (H, W) uint8 tensors on ``self.device``.
            left_valid, right_valid: optional (H, W) bool tensors (image-data masks).
            timer: optional :class:`StageTimer`; stages 'cost', 'aggregate', 'select', 'postfilter'.

        Returns:
            dict of (H, W) device tensors: 'disparity' (float32 px, NaN where flags != 0),
            'flags' (int32 Flag bits), 'lr_diff', 'disparity_raw' (every pixel's WTA+subpixel),
            'disparity_right', and the features of the module doc ('curvature', 'uniqueness',
            'texture', 'min_cost'), all float32.

        Raises:
            ValueError: on non-(H, W) uint8 inputs, differing shapes, or the wrong device.
        """
        import torch

        for name, t in (('left', left), ('right', right)):
            if t.dim() != 2 or t.dtype != torch.uint8:
                raise ValueError(f'{name} must be an (H, W) uint8 tensor, got {tuple(t.shape)} {t.dtype}')
            if t.device.type != self.device.type:
                raise ValueError(f'{name} is on {t.device}, matcher on {self.device}')
        if left.shape != right.shape:
            raise ValueError(f'left {tuple(left.shape)} and right {tuple(right.shape)} differ in shape')
        c = self.config
        left = left.contiguous()
        right = right.contiguous()
        mark: Callable[[str], None] = timer.mark if timer is not None else (lambda _n: None)
        cost = self.cost(left, right)
        mark('cost')
        agg = self.aggregate(cost, left)
        mark('aggregate')
        sel = self.select(agg)
        mark('select')
        if self.use_triton:
            from . import sgm_triton as kt

            post = kt.postfilter_triton(c, sel['disparity'], sel['unique'], sel['disparity_right'],
                                        sel['min_cost'], sel['second_cost'], left, left_valid,
                                        right_valid)
            out = {'disparity_raw': sel['disparity'], 'disparity_right': sel['disparity_right'],
                   'curvature': sel['curvature'], **post}
            mark('postfilter')
            return out
        tex = texture_torch(left, c.texture_window)
        lab = label_matches(c, sel['disparity'], sel['unique'], sel['disparity_right'], tex,
                            left_valid, right_valid)
        m = sel['min_cost'].float()
        m2 = sel['second_cost'].float()
        out = {
            'disparity': lab['disparity'], 'flags': lab['flags'], 'lr_diff': lab['lr_diff'],
            'disparity_raw': sel['disparity'], 'disparity_right': sel['disparity_right'],
            'curvature': sel['curvature'],
            'uniqueness': torch.where(m2 >= _BIG, torch.zeros_like(m), m / m2.clamp_min(1.0)),
            'texture': tex, 'min_cost': m / c.paths,
        }
        mark('postfilter')
        return out

    def match(self, left: np.ndarray, right: np.ndarray, left_valid: np.ndarray | None = None,
              right_valid: np.ndarray | None = None) -> MatchResult:
        """Match a rectified numpy pair; drop-in for ``OpenCVStereoMatcher.match``.

        Args:
            left, right: (H, W) uint8 rectified images.
            left_valid, right_valid: optional (H, W) bool image-data masks.

        Returns:
            MatchResult with ``features`` (see module doc) and timings 'match_left' (cost to
            selection), 'match' (total, including transfers).

        Raises:
            ValueError: on mismatched shapes or a non-uint8 / non-2-D input.
        """
        import torch

        check_stereo_pair(left, right)
        t0 = time.perf_counter()
        dev = self.device

        def up(a: np.ndarray | None) -> Any:
            return None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(dev)

        lv = None if left_valid is None else up(left_valid.astype(bool))
        rv = None if right_valid is None else up(right_valid.astype(bool))
        timer = StageTimer(dev)
        out = self.match_tensors(up(left), up(right), lv, rv, timer=timer)
        host = {k: v.cpu().numpy() for k, v in out.items()}
        st = timer.results()
        timings = {f'sgm_{k}': v for k, v in st.items()}
        timings['match_left'] = sum(st.get(k, 0.0) for k in ('cost', 'aggregate', 'select'))
        timings['match'] = (time.perf_counter() - t0) * 1e3
        feats = {k: host[k].astype(np.float32) for k in FEATURE_NAMES}
        return MatchResult(disparity=host['disparity'].astype(np.float32),
                           lr_diff=host['lr_diff'].astype(np.float32),
                           flags=host['flags'].astype(np.uint16), timings_ms=timings,
                           features=feats)


def bad_pixel_rate(disparity: np.ndarray, gt: np.ndarray, threshold: float = 2.0,
                   gt_valid: np.ndarray | None = None) -> tuple[float, float]:
    """(bad-``threshold`` fraction of matched pixels, density) against ground truth.

    Args:
        disparity: (H, W) float32, NaN where unmatched.
        gt: (H, W) true disparity, px.
        threshold: px.
        gt_valid: (H, W) bool pixels with truth (default gt > 0 and finite).
    """
    if disparity.shape != gt.shape:
        raise ValueError(f'disparity {disparity.shape} and truth {gt.shape} differ in shape')
    if gt_valid is None:
        gt_valid = np.isfinite(gt) & (gt > 0)
    meas = gt_valid & np.isfinite(disparity)
    n_gt = max(1, int(gt_valid.sum()))
    if not meas.any():
        return math.nan, 0.0
    err = np.abs(disparity[meas] - gt[meas])
    return float((err > threshold).mean()), float(meas.sum()) / n_gt
