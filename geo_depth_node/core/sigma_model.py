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

Features (all (H, W) float32, evaluated where the matcher accepted the pixel):
    lr_diff: |d_left - d_right| px (``MatchResult.lr_diff`` / ``features['lr_diff']``).
    texture: mean |dI/dx| over the texture window, DN/px (``core.stereo.texture_map``;
        ``features['texture']`` of both matchers).
    curvature: SGM cost-curve sharpness at the minimum (``core.sgm`` module doc); SGM only.
    disp_range: max - min of the ACCEPTED disparities in a RANGE_WINDOW x RANGE_WINDOW window,
        px; computed here from the disparity itself (:func:`disparity_context`).
    hole_frac: fraction of NOT accepted (NaN) pixels in a HOLE_WINDOW x HOLE_WINDOW window
        (image borders replicated); computed here from the disparity.

The depth sigma follows by the physics: sigma_Z = Z^2 / (f B) * sigma_d (first order), so a
coverage statement in disparity is the same statement in depth.

Calibration: ``python -m geo_depth_node.tools.calibrate_sigma`` fits the constants so that
|d - d_true| <= k * sigma_d holds for 68.3 % (k = 1) and 95.4 % (k = 2) of the accepted pixels
of synthetic worlds and Middlebury 2003 Cones (the fit data and the held-out coverage are
listed in that tool). The constants below are its output; see ``_PROVENANCE``.

Gross mismatches (e.g. foreground fattening that passes the left-right check) make the error
distribution heavy-tailed; the model gives them a large sigma_d through disp_range and
hole_frac, and :meth:`SigmaModel.reliable` marks pixels whose sigma_d exceeds
``max_sigma_px`` as unreliable (a proposal for an extra rejection test; not applied unless the
caller uses it).
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
    max_sigma_px: float = 1.0

    def __post_init__(self) -> None:
        for name in ('a', 'b', 'c', 'h', 'g', 'k', 'm'):
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
                             disp_range: np.ndarray, hole_frac: np.ndarray) -> np.ndarray:
        """sigma_d (px, float32) from the features, disparity (px) and precomputed context
        (:func:`disparity_context`), all the same shape; no NaN masking (a NaN disparity counts
        as 0 in the disparity term)."""
        d = np.maximum(np.nan_to_num(np.asarray(disparity, dtype=np.float32), nan=0.0), 0)
        return self._sigma_d(features, d, disp_range, hole_frac)

    def _term_used(self, numerator: float, offset: float) -> bool:
        """Whether a (numerator / (feature + offset))^2 term (feature >= 0) can matter: one whose
        largest value (numerator / offset)^2 is below 1e-6 a^2 changes sigma_d by < 5e-7
        relative (float32 resolution) and is skipped."""
        return numerator > 0 and (numerator / offset) ** 2 >= 1e-6 * self.a ** 2

    def _sigma_d(self, features: Mapping[str, np.ndarray], disparity: np.ndarray,
                 disp_range: np.ndarray, hole_frac: np.ndarray, out: np.ndarray | None = None,
                 scratch: np.ndarray | None = None) -> np.ndarray:
        """The formula, evaluated in place in ``out`` with one float32 scratch array (both
        allocated when None). NaN in ``disparity`` gives NaN (when the disparity term is
        used)."""
        f32 = np.float32
        lr = np.asarray(features['lr_diff'], dtype=f32)
        tex = np.asarray(features['texture'], dtype=f32)
        s2 = np.multiply(lr, f32(self.b), out=out)
        np.multiply(s2, s2, out=s2)
        t = np.multiply(np.asarray(disp_range, dtype=f32), f32(self.c), out=scratch)
        np.multiply(t, t, out=t)
        s2 += t
        np.multiply(np.asarray(hole_frac, dtype=f32), f32(self.h), out=t)
        np.multiply(t, t, out=t)
        s2 += t
        if self._term_used(self.g, self.t0):
            np.maximum(tex, f32(0), out=t)
            t += f32(self.t0)
            np.divide(f32(self.g), t, out=t)
            np.multiply(t, t, out=t)
            s2 += t
        if self.uses_curvature and self._term_used(self.k, self.c0):
            np.maximum(np.asarray(features['curvature'], dtype=f32), f32(0), out=t)
            t += f32(self.c0)
            np.divide(f32(self.k), t, out=t)
            np.multiply(t, t, out=t)
            s2 += t
        if self._term_used(self.m, self.d0):
            np.maximum(np.asarray(disparity, dtype=f32), f32(0), out=t)  # NaN stays NaN
            t += f32(self.d0)
            np.divide(f32(self.m), t, out=t)
            np.multiply(t, t, out=t)
            s2 += t
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
        rng, hole = disparity_context(disparity, workspace=workspace)
        names = self.required_features

        def band(rows: slice) -> None:
            feats = {k: np.asarray(features[k])[rows] for k in names}
            s = self._sigma_d(feats, disparity[rows], rng[rows], hole[rows], out=out[rows],
                              scratch=scratch[rows])
            if not self._term_used(self.m, self.d0):  # else the disparity term carries NaN
                s += np.multiply(disparity[rows], np.float32(0), out=scratch[rows])

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
        rng, hole = disparity_context_torch(d)
        lr = features['lr_diff'].float()
        tex = features['texture'].float().clamp_min(0)
        s2 = (self.a ** 2 + (self.b * lr) ** 2 + (self.c * rng) ** 2 + (self.h * hole) ** 2
              + (self.g / (tex + self.t0)) ** 2)
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
                      hole_window: int = HOLE_WINDOW, workspace: Any = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Context features of an accepted-disparity map.

    Args:
        disparity: (H, W) float32 px, NaN where rejected.
        range_window, hole_window: odd window sizes, px.
        workspace: optional core.images.Workspace: the results and temporaries live there
            (valid until its next use) instead of being allocated.

    Returns:
        (disp_range, hole_frac): (H, W) float32; disp_range = max - min of the accepted
        disparities in the window (0 where the window holds none; pixels outside the image are
        ignored), px; hole_frac = fraction of rejected pixels in the window (borders
        replicated), 0..1.
    """
    import cv2

    for name, win in (('range_window', range_window), ('hole_window', hole_window)):
        if win < 1 or win % 2 == 0:
            raise ValueError(f'{name} must be odd and >= 1, got {win}')
    d = np.asarray(disparity, dtype=np.float32)
    shape = d.shape

    def buf(name: str, dtype: Any) -> np.ndarray | None:
        return None if workspace is None else workspace.get(name, shape, dtype)

    invalid = np.isnan(d, out=buf('ctx_invalid', bool))
    k = np.ones((range_window, range_window), np.uint8)
    # Rejected pixels must not win the max / min: -1e9 / +1e9 in their place (fmax / fmin
    # replace NaN; masked assignments are slow on scattered masks); outside the image the same
    # values (ignored). A window without accepted pixels gives mx < mn -> range 0.
    lo = np.fmax(d, np.float32(-1e9), out=buf('ctx_fill', np.float32))
    mx = cv2.dilate(lo, k, dst=buf('ctx_range', np.float32), borderType=cv2.BORDER_CONSTANT,
                    borderValue=-1e9)
    np.fmin(d, np.float32(1e9), out=lo)
    mn = cv2.erode(lo, k, dst=buf('ctx_min', np.float32), borderType=cv2.BORDER_CONSTANT,
                   borderValue=1e9)
    np.subtract(mx, mn, out=mx)
    rng = np.maximum(mx, np.float32(0), out=mx)
    hole = cv2.boxFilter(invalid.view(np.uint8), cv2.CV_32F, (hole_window, hole_window),
                         dst=buf('ctx_hole', np.float32), normalize=True,
                         borderType=cv2.BORDER_REPLICATE)
    return rng, hole


def disparity_context_torch(disparity: Any, range_window: int = RANGE_WINDOW,
                            hole_window: int = HOLE_WINDOW) -> tuple[Any, Any]:
    """Torch twin of :func:`disparity_context` ((H, W) float tensors, any device)."""
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
    q = hole_window // 2
    inv = (~valid).float()[None, None]
    hole = F.avg_pool2d(F.pad(inv, (q, q, q, q), mode='replicate'), hole_window, stride=1)[0, 0]
    return rng, hole


# --------------------------------------------------------------------------- calibrated constants
# Fitted by `python -m geo_depth_node.tools.calibrate_sigma` (see _PROVENANCE); replace both
# blocks together with the tool's printed output when the matchers change.
_PROVENANCE = ('sgm_torch fitted 2026-11-22 (system date) by `python -m geo_depth_node.tools.calibrate_sigma '
               '--iterations 900`: synthetic worlds seeds 1-6 (hills, mountains, flat; SGM 320x240 and '
               '256x192 at 64 disparities) and the top half of Middlebury 2003 Cones (64 disparities). '
               'opencv_sgbm refitted 2026-11-23 by `python -m geo_depth_node.tools.calibrate_sigma '
               '--matchers opencv_sgbm --iterations 900` for the half-resolution left-right check '
               'with the adaptive right-pass range (stereo.lr_check_resolution half, the default): '
               'same worlds at 640x480 and 320x240 with 128 disparities, Cones weighted 3; '
               'held-out coverage (1 / 2 sigma): synthetic pooled 67.8 / 94.1 %, Cones bottom half '
               '69.2 / 92.3 %')

CALIBRATED: dict[str, SigmaModel] = {
    'opencv_sgbm': SigmaModel('opencv_sgbm', a=0.154, b=0.2785, c=0.2505, h=0.9625, g=0.002786,
                              t0=49.37, m=0.01503, d0=0.1),
    'sgm_torch': SigmaModel('sgm_torch', a=0.1053, b=0.5667, c=0.1958, h=0.1674, g=0.04924,
                            t0=21.13, k=0.004166, c0=0.8727, m=0.02453, d0=0.1),
}

#: (matcher, variant) -> model for non-default settings (:func:`variant_for`). 'lr_full': OpenCV
#: SGBM with the full-resolution left-right check, fitted 2026-11-23 by `python -m
#: geo_depth_node.tools.calibrate_sigma --matchers opencv_sgbm --iterations 900 --set
#: stereo.lr_check_resolution=full` (same worlds, Cones weight 1); held-out coverage (1 / 2
#: sigma): synthetic pooled 66.6 / 94.4 %, Cones bottom half 70.6 / 92.4 %.
VARIANTS: dict[tuple[str, str], SigmaModel] = {
    ('opencv_sgbm', 'lr_full'): SigmaModel('opencv_sgbm', a=0.1296, b=2.351, c=0.248, h=1.339,
                                           g=0.003444, t0=7.949, m=0.6203, d0=3.609),
}
