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

_LOG = logging.getLogger(__name__)

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
    def for_matcher(name: str) -> 'SigmaModel':
        """The calibrated model of a matcher: 'opencv_sgbm' (core.stereo) or 'sgm_torch' (core.sgm).

        Raises:
            ValueError: unknown matcher name.
        """
        if name not in CALIBRATED:
            raise ValueError(f'no sigma model for matcher {name!r}; one of {list(CALIBRATED)}')
        return CALIBRATED[name]

    def params(self) -> dict[str, float]:
        """The constants as a dict (for printing / replacing)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != 'matcher'}

    # ---- numpy
    def sigma_d_from_context(self, features: Mapping[str, np.ndarray], disparity: np.ndarray,
                             disp_range: np.ndarray, hole_frac: np.ndarray) -> np.ndarray:
        """sigma_d (px, float32) from the features, disparity (px) and precomputed context
        (:func:`disparity_context`), all the same shape; no NaN masking."""
        f32 = np.float32
        lr = np.asarray(features['lr_diff'], dtype=f32)
        tex = np.asarray(features['texture'], dtype=f32)
        s2 = (f32(self.a) ** 2 + (f32(self.b) * lr) ** 2 + (f32(self.c) * disp_range) ** 2
              + (f32(self.h) * hole_frac) ** 2 + (f32(self.g) / (np.maximum(tex, 0) + f32(self.t0))) ** 2)
        if self.uses_curvature:
            cur = np.asarray(features['curvature'], dtype=f32)
            s2 = s2 + (f32(self.k) / (np.maximum(cur, 0) + f32(self.c0))) ** 2
        if self.m > 0:
            d = np.maximum(np.nan_to_num(np.asarray(disparity, dtype=f32), nan=0.0), 0)
            s2 = s2 + (f32(self.m) / (d + f32(self.d0))) ** 2
        return np.sqrt(s2).astype(f32)

    def sigma_d(self, features: Mapping[str, np.ndarray], disparity: np.ndarray) -> np.ndarray:
        """Per-pixel 1-sigma disparity error.

        Args:
            features: name -> (H, W) array; needs ``required_features`` (``MatchResult.features``
                of either matcher: 'lr_diff' px, 'texture' DN/px, and 'curvature' for SGM).
            disparity: (H, W) float32 accepted disparity, px, NaN where the matcher rejected
                the pixel (``MatchResult.disparity``).

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
        rng, hole = disparity_context(disparity)
        s = self.sigma_d_from_context(features, disparity, rng, hole)
        s[np.isnan(disparity)] = np.nan
        return s

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


def disparity_context(disparity: np.ndarray, range_window: int = RANGE_WINDOW,
                      hole_window: int = HOLE_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Context features of an accepted-disparity map.

    Args:
        disparity: (H, W) float32 px, NaN where rejected.
        range_window, hole_window: odd window sizes, px.

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
    valid = np.isfinite(d)
    big = np.float32(1e9)
    k = np.ones((range_window, range_window), np.uint8)
    mx = cv2.dilate(np.where(valid, d, -big), k, borderType=cv2.BORDER_CONSTANT, borderValue=-1e9)
    mn = cv2.erode(np.where(valid, d, big), k, borderType=cv2.BORDER_CONSTANT, borderValue=1e9)
    rng = np.where(mx >= mn, mx - mn, np.float32(0)).astype(np.float32)
    hole = cv2.boxFilter((~valid).astype(np.float32), -1, (hole_window, hole_window),
                         normalize=True, borderType=cv2.BORDER_REPLICATE)
    return rng, hole.astype(np.float32)


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
_PROVENANCE = ('fitted 2026-11-22 (system date) by `python -m geo_depth_node.tools.calibrate_sigma '
               '--iterations 900`: synthetic worlds seeds 1-6 (hills, mountains, flat; SGBM 640x480 '
               'and 320x240 at 128 disparities, SGM 320x240 and 256x192 at 64) and the top half of '
               'Middlebury 2003 Cones (64 disparities); held-out coverage in that tool')

CALIBRATED: dict[str, SigmaModel] = {
    'opencv_sgbm': SigmaModel('opencv_sgbm', a=0.1261, b=2.343, c=0.2484, h=1.264, g=0.162,
                              t0=7.099, m=0.8297, d0=3.62),
    'sgm_torch': SigmaModel('sgm_torch', a=0.1053, b=0.5667, c=0.1958, h=0.1674, g=0.04924,
                            t0=21.13, k=0.004166, c0=0.8727, m=0.02453, d0=0.1),
}
