"""Calibrated per-pixel disparity sigma for the stereo matchers (ROS-free, numpy / torch).

One closed-form model per matcher maps per-pixel match features to the 1-sigma disparity
error sigma_d (pixels)::

    sigma_d^2 = a^2                                  floor: noise + subpixel interpolation
              + (b * lr_diff)^2                      left-right disagreement, px
              + (c * disp_range)^2                   disparity discontinuity / slope nearby
              + (h * hole_frac)^2                    next to rejected pixels (edges, occlusions)
              + (g / (texture + t0))^2               weak image gradient -> noise-driven error
              + (k / (curvature + c0))^2             flat cost minimum (SGM only; k = 0 for SGBM)
              + (m / (disparity + d0))^2             far (small disparity): foreshortened,
                                                     compressed texture at grazing view
              + (e * disp_range * hole_frac)^2       depth edge next to rejected pixels
              + (j * max(step - j0, 0))^2            near side of a depth step (fattening)

Features (all (H, W) float32, evaluated where the matcher accepted the pixel):
    lr_diff: |d_left - d_right| px (``MatchResult.lr_diff`` / ``features['lr_diff']``).
    texture: mean |dI/dx| over the texture window, DN/px (``core.stereo.texture_map``;
        ``features['texture']`` of both matchers).
    curvature: SGM cost-curve sharpness at the minimum (``core.sgm`` module doc); SGM only.
    disp_range: max - min of the ACCEPTED disparities in a RANGE_WINDOW x RANGE_WINDOW window,
        px; computed here from the disparity itself (:func:`disparity_context`).
    hole_frac: fraction of NOT accepted (NaN) pixels in a HOLE_WINDOW x HOLE_WINDOW window
        (image borders replicated); computed here from the disparity.
    step: disparity - min of the accepted disparities in the same RANGE_WINDOW window, px
        (>= 0; 0 where rejected): how far the pixel sits above the farthest surface within
        2 px.

The depth sigma follows by the physics: sigma_Z = Z^2 / (f B) * sigma_d (first order), so a
coverage statement in disparity is the same statement in depth.

Calibration: ``python -m geo_depth_node.tools.calibrate_sigma`` fits the constants so that
|d - d_true| <= k * sigma_d holds for 68.3 % (k = 1) and 95.4 % (k = 2) of the accepted pixels
of synthetic worlds and Middlebury 2003 Cones (the fit data and the held-out coverage are
listed in that tool). The constants below are its output; see ``_PROVENANCE``.

Gross mismatches make the error distribution heavy-tailed. The typical one is foreground
fattening at a depth edge that passes the left-right check: the matcher's block / census
window straddles the edge, the textured foreground wins, and a band of up to the window radius
(2-3 px) on the far side gets the NEAR disparity; its error is the whole step. Such a pixel has
a lower accepted disparity within 2 px (step ~ the step height, where a smooth slope gives
step < ~1 px: the hinge at j0, fitted 0.6-1.3 px, separates the two) and, where the far side
is occluded in the right image, rejected neighbours (disp_range * hole_frac: the product is
large only where both are, unlike either term alone). The last two terms give these pixels a
sigma of the order of their error, without widening the smooth, well-matched majority.
:meth:`SigmaModel.reliable` marks pixels whose sigma_d exceeds ``max_sigma_px`` as unreliable
(a proposal for an extra rejection test; not applied unless the caller uses it).

The model is per-pixel closed form; the context features are fixed-window max / min / mean
reductions of the accepted-disparity map (numpy: cv2 dilate / erode / boxFilter; torch:
max_pool2d / avg_pool2d), so a fused GPU kernel can evaluate it in one pass.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

import numpy as np

from .images import RowBands

_LOG = logging.getLogger(__name__)

_ONE_BAND = RowBands(1)

#: Window of the disparity-range feature (odd, px).
RANGE_WINDOW = 5
#: Window of the rejected-neighbour fraction feature (odd, px).
HOLE_WINDOW = 9

MATCHERS = ('opencv_sgbm', 'sgm_torch')


@dataclasses.dataclass(frozen=True)
class SigmaModel:
    """Closed-form disparity-sigma model (formula in the module doc).

    Attributes:
        matcher: 'opencv_sgbm' or 'sgm_torch'.
        a: floor, px.
        b: gain on lr_diff (dimensionless).
        c: gain on disp_range (dimensionless).
        h: px per unit hole_frac.
        g: px * DN/px, numerator of the texture term.
        t0: DN/px, texture offset (keeps the term finite).
        k: px, numerator of the curvature term (0 = unused).
        c0: curvature offset (dimensionless).
        m: px^2, numerator of the disparity term (0 = unused).
        d0: px, disparity offset.
        e: gain on disp_range * hole_frac (dimensionless; 0 = unused).
        j: gain on the step above j0 (dimensionless; 0 = unused).
        j0: px, step below which the surface counts as smooth (>= 0).
        max_sigma_px: proposed rejection bound: sigma_d above it = unreliable (px).
    """

    matcher: str
    a: float
    b: float
    c: float
    h: float
    g: float
    t0: float
    k: float = 0.0
    c0: float = 1.0
    m: float = 0.0
    d0: float = 1.0
    e: float = 0.0
    j: float = 0.0
    j0: float = 1.0
    max_sigma_px: float = 1.0

    def __post_init__(self) -> None:
        for name in ('a', 'b', 'c', 'h', 'g', 'k', 'm', 'e', 'j', 'j0'):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f'SigmaModel.{name} must be finite and >= 0, got {v!r}')
        for name in ('t0', 'c0', 'd0', 'max_sigma_px'):
            v = getattr(self, name)
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f'SigmaModel.{name} must be finite and > 0, got {v!r}')
        if self.a <= 0:
            raise ValueError(f'SigmaModel.a (the floor) must be > 0, got {self.a!r}')

    @property
    def uses_curvature(self) -> bool:
        """Whether the model needs ``features['curvature']``."""
        return self.k > 0

    @property
    def required_features(self) -> tuple[str, ...]:
        """Names that ``features`` must hold."""
        return ('lr_diff', 'texture') + (('curvature',) if self.uses_curvature else ())

    @staticmethod
    def for_matcher(name: str, variant: str = '') -> 'SigmaModel':
        """The calibrated model of a matcher: 'opencv_sgbm' (core.stereo) or 'sgm_torch' (core.sgm).

        Args:
            name: the matcher.
            variant: '' = its default settings; a key of :data:`VARIANTS` for settings whose
                features differ (:func:`variant_for`).

        Raises:
            ValueError: unknown matcher name or variant.
        """
        if name not in CALIBRATED:
            raise ValueError(f'no sigma model for matcher {name!r}; one of {list(CALIBRATED)}')
        if not variant:
            return CALIBRATED[name]
        if (name, variant) not in VARIANTS:
            raise ValueError(f'no sigma model variant {variant!r} for matcher {name!r}; one of '
                             f'{sorted(v for m, v in VARIANTS if m == name)}')
        return VARIANTS[(name, variant)]

    def params(self) -> dict[str, float]:
        """The constants as a dict (for printing / replacing)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != 'matcher'}

    # ---- numpy
    def sigma_d_from_context(self, features: Mapping[str, np.ndarray], disparity: np.ndarray,
                             disp_range: np.ndarray, hole_frac: np.ndarray,
                             step: np.ndarray | None = None) -> np.ndarray:
        """sigma_d (px, float32) from the features, disparity (px) and precomputed context
        (:func:`disparity_context`), all the same shape; no NaN masking (a NaN disparity counts
        as 0 in the disparity term). ``step`` is needed only when the model uses it (j > 0).

        Raises:
            ValueError: the model uses the step term and ``step`` is None.
        """
        if step is None and self.uses_step:
            raise ValueError('sigma model uses the step term (j > 0): pass step '
                             '(disparity_context()[2])')
        d = np.maximum(np.nan_to_num(np.asarray(disparity, dtype=np.float32), nan=0.0), 0)
        return self._sigma_d(features, d, disp_range, hole_frac, step)

    @property
    def uses_step(self) -> bool:
        """Whether the step term (j > 0) is part of the model."""
        return self.j > 0

    def _term_used(self, numerator: float, offset: float) -> bool:
        """Whether a (numerator / (feature + offset))^2 term (feature >= 0) can matter: one whose
        largest value (numerator / offset)^2 is below 1e-6 a^2 changes sigma_d by < 5e-7
        relative (float32 resolution) and is skipped."""
        return numerator > 0 and (numerator / offset) ** 2 >= 1e-6 * self.a ** 2

    def _sigma_d(self, features: Mapping[str, np.ndarray], disparity: np.ndarray,
                 disp_range: np.ndarray, hole_frac: np.ndarray, step: np.ndarray | None = None,
                 win_min: np.ndarray | None = None, out: np.ndarray | None = None,
                 scratch: np.ndarray | None = None) -> np.ndarray:
        """The formula, evaluated in place in ``out`` with one float32 scratch array (both
        allocated when None); inputs of one shape, 1-D or 2-D (C-contiguous rows). The step
        term takes ``step``, or else ``disparity - win_min`` (the window min of
        :func:`_context`). NaN in ``disparity`` is not guaranteed to give NaN (the caller masks).

        Fused OpenCV element-wise passes (multiply with scale, scaleAdd, addWeighted,
        accumulateSquare / accumulateProduct, threshold-to-zero for max(x, 0)) keep the number
        of passes over the image low: this runs on every CPU frame.
        """
        import cv2

        f32 = np.float32
        lr = np.asarray(features['lr_diff'], dtype=f32)
        rng = np.asarray(disp_range, dtype=f32)
        hole = np.asarray(hole_frac, dtype=f32)
        tozero = cv2.THRESH_TOZERO
        s2 = cv2.multiply(lr, lr, dst=out, scale=self.b ** 2)  # (b lr)^2
        t = cv2.multiply(rng, rng, dst=scratch)  # disp_range^2
        cv2.scaleAdd(t, self.c ** 2, s2, dst=s2)  # + (c disp_range)^2
        # (h hole)^2 + (e disp_range hole)^2 = hole * (h^2 + e^2 disp_range^2) * hole
        cv2.addWeighted(t, self.e ** 2, t, 0.0, self.h ** 2, dst=t)
        cv2.multiply(t, hole, dst=t)
        cv2.accumulateProduct(t, hole, s2)
        if self.uses_step:  # (j * max(step - j0, 0))^2
            if step is not None:
                st = np.asarray(step, dtype=f32)
                cv2.addWeighted(st, self.j, st, 0.0, -self.j * self.j0, dst=t)
            else:
                cv2.addWeighted(disparity, self.j, win_min, -self.j, -self.j * self.j0, dst=t)
            cv2.threshold(t, 0, 0, tozero, dst=t)
            cv2.accumulateSquare(t, s2)
        for used, feature, numerator, offset in (
                (self._term_used(self.g, self.t0), 'texture', self.g, self.t0),
                (self.uses_curvature and self._term_used(self.k, self.c0), 'curvature', self.k,
                 self.c0),
                (self._term_used(self.m, self.d0), None, self.m, self.d0)):
            if not used:  # (numerator / (max(feature, 0) + offset))^2
                continue
            x = disparity if feature is None else features[feature]
            cv2.threshold(np.asarray(x, dtype=f32), 0, 0, tozero, dst=t)
            t += f32(offset)
            np.divide(f32(numerator), t, out=t)
            cv2.accumulateSquare(t, s2)
        s2 += f32(self.a) ** 2
        return np.sqrt(s2, out=s2)

    def sigma_d(self, features: Mapping[str, np.ndarray], disparity: np.ndarray, *,
                out: np.ndarray | None = None, workspace: Any = None,
                bands: Any = None) -> np.ndarray:
        """Per-pixel 1-sigma disparity error.

        Args:
            features: name -> (H, W) array; needs ``required_features`` (``MatchResult.features``
                of either matcher: 'lr_diff' px, 'texture' DN/px, and 'curvature' for SGM).
            disparity: (H, W) float32 accepted disparity, px, NaN where the matcher rejected
                the pixel (``MatchResult.disparity``).
            out: optional (H, W) float32 array for the result.
            workspace: optional core.images.Workspace for the temporaries (reused per shape).
            bands: optional core.images.RowBands: the per-pixel formula runs over row bands
                in parallel (same result).

        Returns:
            (H, W) float32 sigma_d in px; NaN where ``disparity`` is NaN.

        Raises:
            ValueError: a missing feature, or shapes that differ.
        """
        disparity = np.asarray(disparity, dtype=np.float32)
        if disparity.ndim != 2:
            raise ValueError(f'disparity must be (H, W), got shape {disparity.shape}')
        for name in self.required_features:
            if name not in features:
                raise ValueError(f'sigma model {self.matcher!r} needs feature {name!r}; got '
                                 f'{sorted(features)}')
            if np.shape(features[name]) != disparity.shape:
                raise ValueError(f'feature {name!r} has shape {np.shape(features[name])}, '
                                 f'disparity {disparity.shape}')
        if out is not None and (out.shape != disparity.shape or out.dtype != np.float32):
            raise ValueError(f'out must be {disparity.shape} float32, got {out.shape} {out.dtype}')
        shape = disparity.shape
        scratch = np.empty(shape, np.float32) if workspace is None else \
            workspace.get('sigma_scratch', shape, np.float32)
        out = np.empty(shape, np.float32) if out is None else out
        rng, hole, mn = _context(disparity, RANGE_WINDOW, HOLE_WINDOW, workspace)
        names = self.required_features

        def band(rows: slice) -> None:
            feats = {k: np.asarray(features[k])[rows] for k in names}
            s = self._sigma_d(feats, disparity[rows], rng[rows], hole[rows], win_min=mn[rows],
                              out=out[rows], scratch=scratch[rows])
            s += np.multiply(disparity[rows], np.float32(0), out=scratch[rows])  # NaN -> NaN

        (bands or _ONE_BAND).run(band, *shape)
        return out

    def reliable(self, sigma_d: np.ndarray) -> np.ndarray:
        """(H, W) bool: sigma_d finite and <= ``max_sigma_px`` (proposed rejection test)."""
        s = np.asarray(sigma_d)
        return np.isfinite(s) & (s <= np.float32(self.max_sigma_px))

    # ---- torch (same formula, for the GPU frame path)
    def sigma_d_torch(self, features: Mapping[str, Any], disparity: Any) -> Any:
        """As :meth:`sigma_d` for (H, W) torch tensors on any device; returns float32 tensor.

        ``features`` as ``TorchSGMMatcher.match_tensors`` returns them ('lr_diff', 'texture',
        'curvature'); ``disparity`` the accepted disparity (NaN where rejected).
        """
        import torch

        for name in self.required_features:
            if name not in features:
                raise ValueError(f'sigma model {self.matcher!r} needs feature {name!r}; got '
                                 f'{sorted(features)}')
        d = disparity.float()
        if d.dim() != 2:
            raise ValueError(f'disparity must be (H, W), got shape {tuple(d.shape)}')
        rng, hole, step = disparity_context_torch(d)
        lr = features['lr_diff'].float()
        tex = features['texture'].float().clamp_min(0)
        s2 = (self.a ** 2 + (self.b * lr) ** 2 + (self.c * rng) ** 2 + (self.h * hole) ** 2
              + (self.g / (tex + self.t0)) ** 2)
        if self.e > 0:
            s2 = s2 + (self.e * rng * hole) ** 2
        if self.uses_step:
            s2 = s2 + (self.j * (step - self.j0).clamp_min(0)) ** 2
        if self.uses_curvature:
            s2 = s2 + (self.k / (features['curvature'].float().clamp_min(0) + self.c0)) ** 2
        if self.m > 0:
            s2 = s2 + (self.m / (torch.nan_to_num(d, nan=0.0).clamp_min(0) + self.d0)) ** 2
        s = torch.sqrt(s2)
        return torch.where(torch.isnan(d), torch.full_like(s, float('nan')), s)


def variant_for(matcher: str, params: Mapping[str, Any]) -> str:
    """The :data:`VARIANTS` key of a matcher's settings ('' = the default model).

    opencv_sgbm with the exact left-right check (``stereo.lr_check_resolution`` full) has a
    smaller, cleaner lr_diff than with the default half-resolution check, so it has its own
    constants ('lr_full').
    """
    if (matcher == 'opencv_sgbm' and params.get('stereo.lr_check', True)
            and params.get('stereo.lr_check_resolution', 'half') == 'full'):
        return 'lr_full'
    return ''


def disparity_context(disparity: np.ndarray, range_window: int = RANGE_WINDOW,
                      hole_window: int = HOLE_WINDOW, workspace: Any = None,
                      with_step: bool = True
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Context features of an accepted-disparity map.

    Args:
        disparity: (H, W) float32 px, NaN where rejected.
        range_window, hole_window: odd window sizes, px.
        workspace: optional core.images.Workspace: the results and temporaries live there
            (valid until its next use) instead of being allocated.
        with_step: also compute ``step`` (else None is returned in its place).

    Returns:
        (disp_range, hole_frac, step): (H, W) float32; disp_range = max - min of the accepted
        disparities in the range window (0 where the window holds none; pixels outside the
        image are ignored), px; hole_frac = fraction of rejected pixels in the hole window
        (borders replicated), 0..1; step = disparity - min of the accepted disparities in the
        range window, px (>= 0; 0 where the pixel is rejected).
    """
    d = np.asarray(disparity, dtype=np.float32)
    rng, hole, mn = _context(d, range_window, hole_window, workspace)
    step = None
    if with_step:  # an accepted pixel is in its own window: d - mn >= 0; NaN -> 0 (fmax)
        step = np.subtract(d, mn, out=None if workspace is None else
                           workspace.get('ctx_step', d.shape, np.float32))
        np.fmax(step, np.float32(0), out=step)
    return rng, hole, step


def _context(d: np.ndarray, range_window: int, hole_window: int, workspace: Any
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(disp_range, hole_frac, window min) of :func:`disparity_context` for a float32 (H, W)
    disparity; the window min is +1e9 where the window holds no accepted pixel."""
    import cv2

    for name, win in (('range_window', range_window), ('hole_window', hole_window)):
        if win < 1 or win % 2 == 0:
            raise ValueError(f'{name} must be odd and >= 1, got {win}')
    shape = d.shape

    def buf(name: str, dtype: Any) -> np.ndarray | None:
        return None if workspace is None else workspace.get(name, shape, dtype)

    invalid = np.isnan(d, out=buf('ctx_invalid', bool))
    k = np.ones((range_window, range_window), np.uint8)
    # Rejected pixels must not win the max / min: -1e9 / +1e9 in their place (a copy with
    # cv2.patchNaNs: ~3x faster than np.fmax / fmin; masked assignments are slow on scattered
    # masks); outside the image the same values (ignored). A window without accepted pixels
    # gives mx < mn -> range 0.
    lo = buf('ctx_fill', np.float32)
    lo = np.empty_like(d) if lo is None else lo
    np.copyto(lo, d)
    cv2.patchNaNs(lo, -1e9)
    mx = cv2.dilate(lo, k, dst=buf('ctx_range', np.float32), borderType=cv2.BORDER_CONSTANT,
                    borderValue=-1e9)
    np.copyto(lo, d)
    cv2.patchNaNs(lo, 1e9)
    mn = cv2.erode(lo, k, dst=buf('ctx_min', np.float32), borderType=cv2.BORDER_CONSTANT,
                   borderValue=1e9)
    np.subtract(mx, mn, out=mx)
    rng = cv2.threshold(mx, 0, 0, cv2.THRESH_TOZERO, dst=mx)[1]  # max(., 0); np.maximum is ~5x slower
    hole = cv2.boxFilter(invalid.view(np.uint8), cv2.CV_32F, (hole_window, hole_window),
                         dst=buf('ctx_hole', np.float32), normalize=True,
                         borderType=cv2.BORDER_REPLICATE)
    return rng, hole, mn


def disparity_context_torch(disparity: Any, range_window: int = RANGE_WINDOW,
                            hole_window: int = HOLE_WINDOW) -> tuple[Any, Any, Any]:
    """Torch twin of :func:`disparity_context` ((H, W) float tensors, any device); returns
    (disp_range, hole_frac, step)."""
    import torch
    import torch.nn.functional as F

    valid = ~torch.isnan(disparity)
    big = 1e9
    r = range_window // 2
    x_hi = torch.where(valid, disparity, torch.full_like(disparity, -big))[None, None]
    x_lo = torch.where(valid, -disparity, torch.full_like(disparity, -big))[None, None]
    mx = F.max_pool2d(x_hi, range_window, stride=1, padding=r)[0, 0]  # pads with -inf
    mn = -F.max_pool2d(x_lo, range_window, stride=1, padding=r)[0, 0]
    rng = torch.where(mx >= mn, mx - mn, torch.zeros_like(mx))
    step = torch.where(valid, (disparity - mn).clamp_min(0), torch.zeros_like(mn))
    q = hole_window // 2
    inv = (~valid).float()[None, None]
    hole = F.avg_pool2d(F.pad(inv, (q, q, q, q), mode='replicate'), hole_window, stride=1)[0, 0]
    return rng, hole, step


# --------------------------------------------------------------------------- calibrated constants
# Fitted by `python -m geo_depth_node.tools.calibrate_sigma` (see _PROVENANCE); replace both
# blocks together with the tool's printed output when the matchers change.
_PROVENANCE = ('all three models refitted 2026-11-23 (system date) with the gross-error terms (e, j, j0) by '
               '`python -m geo_depth_node.tools.calibrate_sigma --matchers M --iterations 900` (M = '
               'opencv_sgbm, the same with --set stereo.lr_check_resolution=full, and sgm_torch): synthetic '
               'worlds seeds 1-6 (hills, mountains, flat; SGBM 640x480 and 320x240 at 128 disparities, '
               'SGM 320x240 and 256x192 at 64) and the top half of Middlebury 2003 Cones (64 '
               'disparities), Cones weighted 3 (opencv_sgbm default) / 1 (lr_full, sgm_torch). '
               'Held-out coverage (1 / 2 sigma), synthetic pooled (seeds 51-56) and Cones bottom half: '
               'opencv_sgbm (half-resolution LR check, the default) 67.1 / 94.0 % and 69.3 / 94.0 % '
               '(before the new terms 67.8 / 94.1 % and 69.2 / 92.3 %); sgm_torch 70.8 / 95.1 % and '
               '69.3 / 93.7 % (before 71.1 / 94.9 % and 69.0 / 93.0 %)')

CALIBRATED: dict[str, SigmaModel] = {
    'opencv_sgbm': SigmaModel('opencv_sgbm', a=0.154, b=0.2409, c=0.1895, h=0.5482, g=0.1031,
                              t0=17.46, m=0.01458, d0=0.1021, e=4.527, j=2.038, j0=0.6209),
    'sgm_torch': SigmaModel('sgm_torch', a=0.1126, b=0.574, c=0.1768, h=0.1479, g=0.01325,
                            t0=50.07, k=5.134e-05, c0=2.175, m=0.02454, d0=0.1002, e=0.1767,
                            j=6.155, j0=1.272),
}

#: (matcher, variant) -> model for non-default settings (:func:`variant_for`). 'lr_full': OpenCV
#: SGBM with the full-resolution left-right check, fitted 2026-11-23 by `python -m
#: geo_depth_node.tools.calibrate_sigma --matchers opencv_sgbm --iterations 900 --set
#: stereo.lr_check_resolution=full` (same worlds, Cones weight 1); held-out coverage (1 / 2
#: sigma): synthetic pooled 66.3 / 94.4 %, Cones bottom half 69.6 / 93.7 % (before the gross-
#: error terms 66.6 / 94.4 % and 70.6 / 92.4 %).
VARIANTS: dict[tuple[str, str], SigmaModel] = {
    ('opencv_sgbm', 'lr_full'): SigmaModel('opencv_sgbm', a=0.1552, b=1.984, c=0.1122, h=0.8284,
                                           g=0.2108, t0=61.78, m=0.6099, d0=3.88, e=2.773,
                                           j=1.806, j0=0.6588),
}
