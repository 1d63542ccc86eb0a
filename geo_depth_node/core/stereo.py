"""CPU stereo matching with OpenCV SGBM, with a reason for every unmatched pixel.

OpenCV's own post-checks only say "invalid". To label each failure, the
matcher runs:
    1. SGBM left->right with the uniqueness test and speckle filter (its own
       left-right check disabled): pixels it rejects get NO_MATCH, and so do
       pixels without texture (mean |dI/dx| over a window below ``min_texture``),
       where SGM would otherwise propagate a depth it never measured;
    2. optionally SGBM right->left on the horizontally flipped pair: pixels whose
       left and right disparities disagree by more than ``lr_max_diff_px`` get
       LR_INCONSISTENT (occlusions, mismatches);
    3. disparities in the top pixel of the search range get TOO_CLOSE (the true
       minimum may lie beyond the range);
    4. pixels in the left border band where the search range leaves the right
       image, or in the invalid area of a rectified raw image, get OUT_OF_VIEW.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

import numpy as np

from .contract import Flag

_LOG = logging.getLogger(__name__)

_MODES = {'sgbm': 'STEREO_SGBM_MODE_SGBM', 'sgbm_3way': 'STEREO_SGBM_MODE_SGBM_3WAY',
          'hh': 'STEREO_SGBM_MODE_HH', 'hh4': 'STEREO_SGBM_MODE_HH4'}


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
        if self.mode not in _MODES:
            raise ValueError(f'unknown stereo mode {self.mode!r}; one of {list(_MODES)}')

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


def texture_map(image: np.ndarray, window: int = 9) -> np.ndarray:
    """Mean |dI/dx| (DN per pixel, Sobel 3x3 / 8) over a window x window box; (H, W) float32."""
    import cv2

    if window < 1 or window % 2 == 0:
        raise ValueError(f'texture window must be odd and >= 1, got {window}')
    grad = np.abs(cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3)) * np.float32(1.0 / 8.0)
    return cv2.boxFilter(grad, -1, (window, window), borderType=cv2.BORDER_REFLECT)


class OpenCVStereoMatcher:
    """OpenCV StereoSGBM with labelled failures. Inputs are rectified (H, W) uint8."""

    def __init__(self, config: MatcherConfig) -> None:
        import cv2

        self.config = config
        c = config
        p1 = c.p1 or 8 * c.block_size ** 2
        p2 = c.p2 or 32 * c.block_size ** 2
        if p2 <= p1:
            raise ValueError(f'SGBM P2 ({p2}) must exceed P1 ({p1})')
        self._sgbm = cv2.StereoSGBM.create(
            minDisparity=c.min_disparity, numDisparities=c.num_disparities,
            blockSize=c.block_size, P1=p1, P2=p2, disp12MaxDiff=-1,
            preFilterCap=c.pre_filter_cap, uniquenessRatio=c.uniqueness_ratio,
            speckleWindowSize=c.speckle_window_size, speckleRange=c.speckle_range,
            mode=getattr(cv2, _MODES[c.mode]))

    def _disp(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        raw = self._sgbm.compute(left, right)
        d = raw.astype(np.float32) * np.float32(1.0 / 16.0)
        d[raw < self.config.min_disparity * 16] = np.nan
        return d

    def match(self, left: np.ndarray, right: np.ndarray, left_valid: np.ndarray | None = None,
              right_valid: np.ndarray | None = None) -> MatchResult:
        """Match a rectified pair.

        Args:
            left, right: (H, W) uint8 rectified images.
            left_valid, right_valid: optional (H, W) bool masks of pixels with image data
                (False in the black border of rectified raw images).

        Raises:
            ValueError: on mismatched shapes or a non-uint8 / non-2-D input.
        """
        import time

        if left.ndim != 2 or left.dtype != np.uint8 or right.dtype != np.uint8:
            raise ValueError(f'matcher wants (H, W) uint8 images, got {left.shape} {left.dtype} '
                             f'and {right.shape} {right.dtype}')
        if left.shape != right.shape:
            raise ValueError(f'left {left.shape} and right {right.shape} differ in shape')
        c = self.config
        h, w = left.shape
        t0 = time.perf_counter()
        d_left = self._disp(left, right)
        t1 = time.perf_counter()
        timings = {'match_left': (t1 - t0) * 1e3}

        flags = np.zeros((h, w), dtype=np.uint16)
        no_match = np.isnan(d_left)
        if c.min_texture > 0:
            no_match |= texture_map(left, c.texture_window) < np.float32(c.min_texture)

        # Column of each left pixel's match in the right image (computed once per frame).
        cols = np.arange(w, dtype=np.float32)[None, :]
        x_match = cols - np.nan_to_num(d_left, nan=0.0)
        xr = np.rint(x_match).astype(np.intp)
        xr_clipped = np.clip(xr, 0, w - 1)
        # Border band: for x < max_disparity the search leaves the right image; pixels in the
        # band whose found match is still inside the right image are usable.
        band = np.zeros((h, w), dtype=bool)
        band[:, :max(0, min(w, c.max_disparity))] = True
        out_of_view = band & ~(~no_match & (x_match >= 0))
        if left_valid is not None:
            out_of_view |= ~left_valid
        if right_valid is not None:
            out_of_view |= ~no_match & ~np.take_along_axis(right_valid, xr_clipped, axis=1)
        flags[out_of_view] |= np.uint16(Flag.OUT_OF_VIEW)
        flags[no_match & ~out_of_view] |= np.uint16(Flag.NO_MATCH)

        lr_diff = np.zeros((h, w), dtype=np.float32)
        if c.lr_check:
            t2 = time.perf_counter()
            d_right = self._disp(np.ascontiguousarray(right[:, ::-1]),
                                 np.ascontiguousarray(left[:, ::-1]))[:, ::-1]
            timings['match_right'] = (time.perf_counter() - t2) * 1e3
            in_img = ~no_match & (xr >= 0) & (xr < w)
            dr = np.take_along_axis(d_right, xr_clipped, axis=1)
            checked = in_img & ~np.isnan(dr)
            lr_diff[checked] = np.abs(d_left[checked] - dr[checked])
            bad = checked & (lr_diff > np.float32(c.lr_max_diff_px))
            flags[bad & ~out_of_view] |= np.uint16(Flag.LR_INCONSISTENT)

        too_close = ~no_match & (d_left >= np.float32(c.max_disparity - 1))
        flags[too_close & ~out_of_view] |= np.uint16(Flag.TOO_CLOSE)

        d_left[flags != 0] = np.nan  # d_left is this call's own array: no copy needed
        timings['match'] = (time.perf_counter() - t0) * 1e3
        # Disparity-sigma features (core.sigma_model): lr_diff px, texture DN/px (the texture
        # test's measure, recomputed here so that it exists also with min_texture = 0).
        features = {'lr_diff': lr_diff, 'texture': texture_map(left, c.texture_window)}
        return MatchResult(d_left, lr_diff, flags, timings, features=features)
