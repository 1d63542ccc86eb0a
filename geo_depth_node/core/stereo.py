"""CPU stereo matching with OpenCV SGBM, with a reason for every unmatched pixel.

OpenCV's own post-checks only say "invalid". To label each failure, the
matcher runs:
    1. SGBM left->right with the uniqueness test, the speckle filter and OpenCV's internal
       cost-based cross-check (``disp12MaxDiff``: OpenCV treats any value <= 0 as 1, so it
       cannot be switched off; it is set to 1 explicitly). Pixels it rejects get NO_MATCH,
       and so do pixels without texture (mean |dI/dx| over a window below ``min_texture``),
       where SGM would otherwise propagate a depth it never measured;
    2. optionally the left-right check: SGBM right->left on the horizontally flipped pair,
       at half resolution by default (``lr_check_resolution`` 'half': a Gaussian pyramid
       level, block size ~half, no speckle filter; its disparities are doubled back to
       full-resolution pixels) or at full resolution ('full': the exact check, the left
       pass's settings). Either way it searches only the range of the left disparities that
       may still be accepted (plus a margin; see ``_set_right_range``), typically a few tens of
       disparities out of 128: the half-resolution pass costs ~1/10 of the left pass, the
       full one ~1/3 on such scenes (up to one whole pass when the scene fills the range).
       Pixels whose left disparity and the right disparity at their match disagree by more
       than ``lr_max_diff_px`` (full-resolution pixels) get LR_INCONSISTENT (occlusions,
       mismatches). The half-resolution check blurs the right disparity over ~2 px near
       depth edges, so it also rejects a few per cent of good pixels next to edges (on
       Middlebury Cones: 3.8 % bad-2.0 at density 0.76 against 4.0 % at 0.79 with the full
       check; see test/test_stereo_cones.py);
    3. disparities in the top pixel of the search range get TOO_CLOSE (the true
       minimum may lie beyond the range);
    4. pixels in the left border band where the search range leaves the right
       image, or in the invalid area of a rectified raw image, get OUT_OF_VIEW.

All post-processing is whole-image OpenCV / numpy work on float32 / uint16 arrays (no
per-pixel Python, no boolean fancy indexing); per-shape grids are cached.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Mapping

import numpy as np

from .contract import Flag
from .images import Workspace, alloc_arrays

_LOG = logging.getLogger(__name__)

_MODES = {'sgbm': 'STEREO_SGBM_MODE_SGBM', 'sgbm_3way': 'STEREO_SGBM_MODE_SGBM_3WAY',
          'hh': 'STEREO_SGBM_MODE_HH', 'hh4': 'STEREO_SGBM_MODE_HH4'}
LR_RESOLUTIONS = ('half', 'full')
#: Largest uniqueness ratio, percent. 100 rejects every pixel whose best cost is not zero, and
#: OpenCV's sgbm_3way divides by (100 - ratio): SIGFPE, the process dies.
MAX_UNIQUENESS_RATIO = 99
#: OpenCV SGBM keeps its costs in int16 and starts every matching cost at P2, so P2 plus the
#: largest block cost must stay <= this. Beyond it the costs wrap around: P2 = 32768 with a
#: 5 px block matched nothing, P2 = 66336 = 65536 + 800 gave exactly the result of P2 = 800.
SGBM_COST_MAX = 32767

_NO_MATCH = np.uint16(Flag.NO_MATCH)
_LR = np.uint16(Flag.LR_INCONSISTENT)
_TOO_CLOSE = np.uint16(Flag.TOO_CLOSE)
_OUT_OF_VIEW = np.uint16(Flag.OUT_OF_VIEW)
# cv2.LUT tables indexed by a bool viewed as uint8: per-pixel factors that turn masked
# assignments (slow on scattered masks) into one multiplication.
_SCALE_OR_NAN = np.full(256, np.nan, np.float32)
_SCALE_OR_NAN[0] = 1.0 / 16.0  # SGBM's fixed-point disparity -> px; NaN where rejected
_ONE_OR_NAN = np.full(256, np.nan, np.float32)
_ONE_OR_NAN[0] = 1.0


@dataclasses.dataclass(frozen=True)
class MatcherConfig:
    """Matcher settings (see core/params.py for meanings, units and ranges)."""

    min_disparity: int = 0
    num_disparities: int = 128
    block_size: int = 5
    p1: int = 0
    p2: int = 0
    uniqueness_ratio: int = 10
    speckle_window_size: int = 100
    speckle_range: int = 2
    pre_filter_cap: int = 63
    mode: str = 'sgbm_3way'
    lr_check: bool = True
    lr_max_diff_px: float = 1.0
    lr_check_resolution: str = 'half'
    min_texture: float = 1.0
    texture_window: int = 9

    @staticmethod
    def from_params(params: Mapping[str, Any]) -> 'MatcherConfig':
        """Take the ``stereo.*`` entries of a validated parameter dict."""
        fields = {f.name for f in dataclasses.fields(MatcherConfig)}
        kw = {k[len('stereo.'):]: v for k, v in params.items()
              if k.startswith('stereo.') and k[len('stereo.'):] in fields}
        return MatcherConfig(**kw)

    def __post_init__(self) -> None:
        if self.num_disparities < 16 or self.num_disparities % 16:
            raise ValueError(f'num_disparities must be a positive multiple of 16, got '
                             f'{self.num_disparities}')
        if self.block_size < 1 or self.block_size % 2 == 0:
            raise ValueError(f'block_size must be odd and >= 1, got {self.block_size}')
        if not 0 <= self.uniqueness_ratio <= MAX_UNIQUENESS_RATIO:
            raise ValueError(f'uniqueness_ratio must be in 0..{MAX_UNIQUENESS_RATIO} %, got '
                             f'{self.uniqueness_ratio}')
        sgbm_penalties(self.block_size, self.p1, self.p2, self.pre_filter_cap)
        if self.mode not in _MODES:
            raise ValueError(f'unknown stereo mode {self.mode!r}; one of {list(_MODES)}')
        if self.lr_check_resolution not in LR_RESOLUTIONS:
            raise ValueError(f'unknown lr_check_resolution {self.lr_check_resolution!r}; one of '
                             f'{list(LR_RESOLUTIONS)}')

    @property
    def max_disparity(self) -> int:
        """Largest searched disparity, pixels."""
        return self.min_disparity + self.num_disparities - 1


@dataclasses.dataclass
class MatchResult:
    """Matcher output for one rectified pair.

    Attributes:
        disparity: (H, W) float32 left disparity in pixels, NaN where ``flags`` != 0.
        lr_diff: (H, W) float32 |d_left - d_right| in pixels (0 where not checked).
        flags: (H, W) uint16 Flag bits (NO_MATCH, LR_INCONSISTENT, TOO_CLOSE, OUT_OF_VIEW).
        timings_ms: stage -> milliseconds.
        features: optional per-pixel disparity-sigma features, name -> (H, W) float32
            (filled by core.sgm.TorchSGMMatcher; see core/sgm.py for their definitions).
    """

    disparity: np.ndarray
    lr_diff: np.ndarray
    flags: np.ndarray
    timings_ms: dict[str, float]
    features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def texture_map(image: np.ndarray, window: int = 9, out: np.ndarray | None = None,
                scratch: np.ndarray | None = None) -> np.ndarray:
    """Mean |dI/dx| (DN per pixel, Sobel 3x3 / 8) over a window x window box; (H, W) float32.

    ``out`` / ``scratch``: optional (H, W) float32 arrays for the result and the gradient.
    """
    import cv2

    if window < 1 or window % 2 == 0:
        raise ValueError(f'texture window must be odd and >= 1, got {window}')
    grad = cv2.Sobel(image, cv2.CV_32F, 1, 0, dst=scratch, ksize=3, scale=0.125)
    np.abs(grad, out=grad)
    return cv2.boxFilter(grad, -1, (window, window), dst=out, borderType=cv2.BORDER_REFLECT)


def check_stereo_pair(left: np.ndarray, right: np.ndarray) -> None:
    """Raise ValueError unless ``left`` and ``right`` are (H, W) uint8 images of one shape."""
    if left.ndim != 2 or left.dtype != np.uint8 or right.dtype != np.uint8:
        raise ValueError(f'matcher wants (H, W) uint8 images, got {left.shape} {left.dtype} '
                         f'and {right.shape} {right.dtype}')
    if left.shape != right.shape:
        raise ValueError(f'left {left.shape} and right {right.shape} differ in shape')


def sgbm_max_block_cost(block_size: int, pre_filter_cap: int) -> int:
    """Largest matching cost OpenCV SGBM can sum over one ``block_size`` x ``block_size`` block
    of a grey image, in its cost units.

    Per pixel it adds the Birchfield-Tomasi difference of the clipped x-derivative (0 ..
    2 * ftzero, ftzero = max(pre_filter_cap, 15) made odd) and that of the intensity / 4
    (0 .. 63).
    """
    ftzero = max(int(pre_filter_cap), 15) | 1
    return int(block_size) ** 2 * (2 * ftzero + 63)


def sgbm_penalties(block_size: int, p1: int, p2: int, pre_filter_cap: int) -> tuple[int, int]:
    """The (P1, P2) OpenCV SGBM runs with for the ``stereo.*`` values (0 = the default
    8 * block_size^2 / 32 * block_size^2), in SGBM cost units.

    Raises:
        ValueError: P2 <= P1, or P2 plus the largest block cost
            (:func:`sgbm_max_block_cost`) above :data:`SGBM_COST_MAX` (the int16 costs would
            wrap around); the message names the values.
    """
    p1_eff = int(p1) or 8 * int(block_size) ** 2
    p2_eff = int(p2) or 32 * int(block_size) ** 2
    what1 = f'stereo.p1 {p1_eff}' + ('' if p1 else ' (0 = 8*block_size^2)')
    what2 = f'stereo.p2 {p2_eff}' + ('' if p2 else ' (0 = 32*block_size^2)')
    if p2_eff <= p1_eff:
        raise ValueError(f'parameter {what2} must exceed {what1}')
    cost = sgbm_max_block_cost(block_size, pre_filter_cap)
    if p2_eff + cost > SGBM_COST_MAX:
        raise ValueError(f'parameter {what2} is too large for block_size {block_size} and '
                         f'pre_filter_cap {pre_filter_cap}: OpenCV SGBM keeps costs in 16 bits, '
                         f'P2 + the largest block cost ({cost}) must be <= {SGBM_COST_MAX}, i.e. '
                         f'p2 <= {SGBM_COST_MAX - cost}')
    return p1_eff, p2_eff


def sgbm_min_width(min_disparity: int, num_disparities: int) -> int:
    """Narrowest image (px) OpenCV SGBM can match over disparities min_disparity ..
    min_disparity + num_disparities - 1.

    It matches the columns max(min_d + num_d, 0) .. width + min(min_d, 0); when there are
    none it fails an assertion, asks for ~18 EB, or crashes (SIGSEGV), depending on the width.
    """
    return max(min_disparity + num_disparities, 0) - min(min_disparity, 0) + 1


def _window_start(lo: int, hi: int, nd: int) -> int:
    """Start of the ``nd``-disparity window that covers ``lo .. hi`` and needs the narrowest
    image (:func:`sgbm_min_width` is smallest when the window contains 0 or lies close to it)."""
    return min(max(0, hi + 1 - nd), lo)


def _sgbm(cv2: Any, min_disparity: int, num_disparities: int, block_size: int, p1: int, p2: int,
          c: MatcherConfig, speckle_window_size: int, speckle_range: int) -> Any:
    if p2 <= p1:
        raise ValueError(f'SGBM P2 ({p2}) must exceed P1 ({p1})')
    # disp12MaxDiff: OpenCV runs its internal cross-check with max(1, value) whatever is
    # passed; 1 says so explicitly.
    return cv2.StereoSGBM.create(
        minDisparity=min_disparity, numDisparities=num_disparities, blockSize=block_size,
        P1=p1, P2=p2, disp12MaxDiff=1, preFilterCap=c.pre_filter_cap,
        uniquenessRatio=c.uniqueness_ratio, speckleWindowSize=speckle_window_size,
        speckleRange=speckle_range, mode=getattr(cv2, _MODES[c.mode]))


class OpenCVStereoMatcher:
    """OpenCV StereoSGBM with labelled failures. Inputs are rectified (H, W) uint8.

    Attributes:
        min_width: narrowest image (px) :meth:`match` takes with this configuration (both
            SGBM passes need columns whose whole search range lies inside the image).
    """

    def __init__(self, config: MatcherConfig) -> None:
        import cv2

        self.config = config
        c = config
        p1, p2 = sgbm_penalties(c.block_size, c.p1, c.p2, c.pre_filter_cap)
        self._sgbm = _sgbm(cv2, c.min_disparity, c.num_disparities, c.block_size, p1, p2, c,
                           c.speckle_window_size, c.speckle_range)
        self._right = None  # right->left SGBM of the LR check (its range is set per frame)
        self._right_scale = 1
        if c.lr_check and c.lr_check_resolution == 'half':
            # Half resolution: positions and disparities halve; the block shrinks to ~half
            # (odd), the penalties follow the block area. No speckle filter: the map only
            # serves the check, and the filter is a fifth of this pass's time for no
            # measurable change of the check (Cones).
            bh = max(1, (c.block_size // 2) | 1)
            area = (bh / c.block_size) ** 2
            p1h = max(1, round(c.p1 * area)) if c.p1 else 8 * bh ** 2
            p2h = max(p1h + 1, round(c.p2 * area)) if c.p2 else 32 * bh ** 2
            self._right_scale = 2
            self._right = _sgbm(cv2, 0, 16, bh, p1h, p2h, c, 0, c.speckle_range)
        elif c.lr_check:
            self._right = _sgbm(cv2, 0, 16, c.block_size, p1, p2, c, c.speckle_window_size,
                                c.speckle_range)
        # the disparities the right pass may search, at its resolution (disparities >=
        # max_disparity - 1 are TOO_CLOSE anyway: never checked)
        s_ = self._right_scale
        self._right_limits = (int(np.floor(c.min_disparity / s_)),
                              int(np.ceil((c.max_disparity - 2) / s_)))
        # narrowest image both passes can match (the right pass's widest window, placed as
        # _set_right_range places it when its first choice does not fit), full-resolution px
        lo_lim, hi_lim = self._right_limits
        nd_max = 16 * int(np.ceil((hi_lim - lo_lim + 1) / 16))
        right_min = sgbm_min_width(_window_start(lo_lim, hi_lim, nd_max), nd_max)
        self.min_width = max(sgbm_min_width(c.min_disparity, c.num_disparities),
                             s_ * (right_min - 1) + 1 if self._right is not None else 0)
        self._right_min = 0
        self._right_lut = _SCALE_OR_NAN * np.float32(self._right_scale)
        self._ws = Workspace()
        self._grid_key: tuple[int, int] | None = None
        self._cols = np.zeros((1, 0), np.float32)  # (1, W) column index
        self._rows = np.zeros((0, 0), np.float32)  # (H, W) row index (cv2.remap map_y)
        self._rows_right = self._rows  # (H, W) row index in the right-disparity image

    def _grids(self, h: int, w: int) -> None:
        """Cache the float32 pixel grids of an (h, w) image."""
        if self._grid_key != (h, w):
            self._cols = np.arange(w, dtype=np.float32)[None, :]
            rows = np.arange(h, dtype=np.float32)[:, None]
            self._rows = np.ascontiguousarray(np.broadcast_to(rows, (h, w)))
            self._rows_right = self._rows if self._right_scale == 1 else \
                self._rows * np.float32(1.0 / self._right_scale)
            self._grid_key = (h, w)

    def _set_right_range(self, d_lo: float, d_hi: float, width: int) -> None:
        """Search range of the right pass: the accepted left disparities [d_lo, d_hi] (px) plus
        a margin (the LR tolerance + 1 px, at least 2 px, at the pass's resolution), within the
        configured range, rounded up to a multiple of 16 disparities. The rounding extends the
        range upwards, or, where that would not fit the pass's image ``width`` (px, at its
        resolution; narrow images), to the side that fits (see ``min_width``).

        A right pixel's true match outside that range has no accepted left pixel with that
        disparity, so a left pixel that maps onto it is a mismatch or occluded either way: the
        narrower search changes no honest outcome, and searches typically 16-32 disparities
        instead of 128 (SGBM's time has a part that does not scale with the disparities: the
        half-resolution pass takes ~1/10 of the left pass instead of ~1/6).
        """
        s = self._right_scale
        lo_lim, hi_lim = self._right_limits
        margin = max(2, int(np.ceil(self.config.lr_max_diff_px / s)) + 1)
        lo = min(max(int(np.floor(d_lo / s)) - margin, lo_lim), hi_lim)
        hi = max(min(int(np.ceil(d_hi / s)) + margin, hi_lim), lo)
        nd = 16 * int(np.ceil((hi - lo + 1) / 16))
        if width < sgbm_min_width(lo, nd):
            lo = _window_start(lo, hi, nd)
        self._right.setMinDisparity(lo)
        self._right.setNumDisparities(nd)
        self._right_min = lo

    def _right_disparity(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Right-view disparity (right pixel x matches left pixel x + d), float32, in
        full-resolution pixels, NaN where rejected; shape (H, W) at full resolution or
        ((H+1)//2, (W+1)//2) at half. Lives in the workspace (valid until the next frame)."""
        import cv2

        ws = self._ws
        if self._right_scale == 2:
            hs = ((left.shape[0] + 1) // 2, (left.shape[1] + 1) // 2)
            left = cv2.pyrDown(left, dst=ws.get('left_half', hs, np.uint8))
            right = cv2.pyrDown(right, dst=ws.get('right_half', hs, np.uint8))
        shape = left.shape
        fr = cv2.flip(right, 1, dst=ws.get('flip_r', shape, np.uint8))
        fl = cv2.flip(left, 1, dst=ws.get('flip_l', shape, np.uint8))
        raw_f = self._right.compute(fr, fl, ws.get('raw_right_flipped', shape, np.int16))
        raw = cv2.flip(raw_f, 1, dst=ws.get('raw_right', shape, np.int16))
        rejected = np.less(raw, self._right_min * 16, out=ws.get('rejected_right', shape, bool))
        scale = cv2.LUT(rejected.view(np.uint8), self._right_lut,
                        dst=ws.get('scale_right', shape, np.float32))
        return np.multiply(raw, scale, out=ws.get('d_right', shape, np.float32))

    def match(self, left: np.ndarray, right: np.ndarray, left_valid: np.ndarray | None = None,
              right_valid: np.ndarray | None = None) -> MatchResult:
        """Match a rectified pair.

        Args:
            left, right: (H, W) uint8 rectified images.
            left_valid, right_valid: optional (H, W) bool masks of pixels with image data
                (False in the black border of rectified raw images).

        Returns:
            The MatchResult; its arrays are fresh (they outlive the next call), temporaries
            are reused between calls (so one matcher serves one thread at a time).

        Raises:
            ValueError: on mismatched shapes or a non-uint8 / non-2-D input.
        """
        import cv2

        check_stereo_pair(left, right)
        c = self.config
        h, w = shape = left.shape
        if w < self.min_width:
            # OpenCV's SGBM fails on such images (an assertion, a huge allocation or SIGSEGV)
            half = self.min_width > sgbm_min_width(c.min_disparity, c.num_disparities)
            raise ValueError(
                f'image width {w} px must exceed {self.min_width - 1} px for '
                f'stereo.num_disparities {c.num_disparities} and stereo.min_disparity '
                f'{c.min_disparity}' + (' with the half-resolution left-right check '
                                        '(stereo.lr_check_resolution full needs less)'
                                        if half else ''))
        self._grids(h, w)
        ws = self._ws
        f32 = np.float32
        d, lr_diff, texture, flags = alloc_arrays(
            [(shape, np.float32), (shape, np.float32), (shape, np.float32), (shape, np.uint16)])
        mask = ws.get('mask', shape, bool)  # scratch masks / factors
        u16 = ws.get('u16', shape, np.uint16)
        factor = ws.get('factor', shape, np.float32)

        t0 = time.perf_counter()
        raw = self._sgbm.compute(left, right, ws.get('raw', shape, np.int16))
        t1 = time.perf_counter()
        timings = {'match_left': (t1 - t0) * 1e3}

        no_match = np.less(raw, c.min_disparity * 16, out=ws.get('no_match', shape, bool))
        texture_map(left, c.texture_window, out=texture, scratch=ws.get('grad', shape, f32))
        if c.min_texture > 0:
            no_match |= np.less(texture, f32(c.min_texture), out=mask)
        # d: disparity px, NaN where no match (scaled by a per-pixel factor 1/16 or NaN: masked
        # assignments are slow on scattered masks)
        np.multiply(raw, cv2.LUT(no_match.view(np.uint8), _SCALE_OR_NAN, dst=factor), out=d)

        # Column of each left pixel's match in the right image (NaN where no match).
        x_match = np.subtract(self._cols, d, out=ws.get('x_match', shape, f32))
        # Border band: for x < max_disparity the search leaves the right image; pixels in the
        # band whose found match is still inside the right image are usable.
        out_of_view = ws.get('out_of_view', shape, bool)
        out_of_view.fill(False)
        nb = max(0, min(w, c.max_disparity))
        if nb:
            np.less(x_match[:, :nb], 0, out=out_of_view[:, :nb])
            out_of_view[:, :nb] |= no_match[:, :nb]
        if left_valid is not None:
            out_of_view |= np.logical_not(left_valid, out=mask)
        if right_valid is not None:  # the match lands outside the right image's data
            rv = cv2.remap(right_valid.view(np.uint8), x_match, self._rows, cv2.INTER_NEAREST,
                           dst=ws.get('right_valid_at_match', shape, np.uint8),
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            np.equal(rv, 0, out=mask)
            mask &= ~no_match
            out_of_view |= mask

        np.multiply(no_match, _NO_MATCH, out=flags)
        # TOO_CLOSE: top pixel of the search range (NaN compares False)
        too_close = np.greater_equal(d, f32(c.max_disparity - 1),
                                     out=ws.get('too_close', shape, bool))
        checked = False
        if self._right is not None:
            t2 = time.perf_counter()
            # range of the disparities that may still become MEASURED (not out of view, not
            # TOO_CLOSE): the right pass searches only there (_set_right_range)
            np.logical_or(out_of_view, too_close, out=mask)
            cand = np.multiply(d, cv2.LUT(mask.view(np.uint8), _ONE_OR_NAN, dst=factor),
                               out=ws.get('d_candidates', shape, f32))
            d_lo, d_hi = np.fmin.reduce(cand, axis=None), np.fmax.reduce(cand, axis=None)
            checked = bool(np.isfinite(d_lo))
        if checked:
            self._set_right_range(float(d_lo), float(d_hi), -(-w // self._right_scale))
            d_right = self._right_disparity(left, right)
            map_x = x_match if self._right_scale == 1 else \
                np.multiply(x_match, f32(1.0 / self._right_scale), out=factor)
            # d_right at the match (nearest pixel of the right disparity image); NaN where
            # unmatched or outside the image
            dr = cv2.remap(d_right, map_x, self._rows_right, cv2.INTER_NEAREST, dst=lr_diff,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)
            np.subtract(d, dr, out=lr_diff)
            np.abs(lr_diff, out=lr_diff)
            np.fmax(lr_diff, f32(0), out=lr_diff)  # not checked (NaN) -> 0
            flags |= np.multiply(np.greater(lr_diff, f32(c.lr_max_diff_px), out=mask), _LR,
                                 out=u16)
        else:
            lr_diff.fill(0.0)
        if self._right is not None:
            timings['match_right'] = (time.perf_counter() - t2) * 1e3

        flags |= np.multiply(too_close, _TOO_CLOSE, out=u16)
        # out of view: that reason alone
        flags *= np.logical_not(out_of_view, out=mask)
        flags |= np.multiply(out_of_view, _OUT_OF_VIEW, out=u16)
        d *= cv2.LUT(np.not_equal(flags, 0, out=mask).view(np.uint8), _ONE_OR_NAN, dst=factor)
        timings['match'] = (time.perf_counter() - t0) * 1e3
        # Disparity-sigma features (core.sigma_model): lr_diff px, texture DN/px (the texture
        # test's measure; it exists also with min_texture = 0).
        features = {'lr_diff': lr_diff, 'texture': texture}
        return MatchResult(d, lr_diff, flags, timings, features=features)
