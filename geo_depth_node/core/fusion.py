"""Fuse stereo with a DEM prior along each pixel ray and label every point's provenance.

ROS-free, numpy. Inputs are per pixel, all along the same ray (ranges in metres from the left
camera centre; sigma = 1-sigma of that range):

* stereo: a :class:`~geo_depth_node.core.pipeline.FrameResult` (MEASURED points within the
  physical limit; NONE points with their reason flags);
* prior: ``prior_range``, ``prior_sigma``, ``prior_status`` (core.raycast.RayStatus values),
  ``prior_source`` (source id), e.g. from :func:`geo_depth_node.core.raycast.raycast`.

Rules (the point cloud contract, README "Fusion"):

============================  ==================  =====================================================
stereo                        prior               result
============================  ==================  =====================================================
MEASURED                      HIT, consistent,    FUSED: inverse-variance mean along the ray, its sigma
                              usable
MEASURED                      HIT, inconsistent   MEASURED + PRIOR_CONFLICT (never averaged away)
MEASURED                      SKY                 MEASURED + PRIOR_CONFLICT (something the DEM lacks)
MEASURED                      unavailable, or     MEASURED + PRIOR_UNAVAILABLE
                              consistent but
                              not usable
NONE (any reason)             HIT, usable         PRIOR (+ the stereo reasons, source id)
NONE, BEYOND_RESOLUTION       HIT, usable, but    NONE + PRIOR_CONFLICT (the weak stereo measurement
                              the disparity       rules the prior out: e.g. an object in front of the
                              contradicts it      ground a bare-earth DEM sees behind it)
NONE                          SKY                 NONE + SKY
NONE                          unavailable         NONE + PRIOR_UNAVAILABLE
============================  ==================  =====================================================

"consistent": ``|r_s - r_p| <= gate_k * sqrt(sigma_s^2 + sigma_p^2)`` (and the optional second
test, see ``consistent``). "usable": the prior's
relative sigma ``sigma_p / r_p <= max_prior_relative_sigma`` (a grazing ray turns a small height
error into a useless range; such a prior is NONE + PRIOR_UNAVAILABLE, not a point). FUSED and
PRIOR points from a DSM source get PRIOR_SURFACE_MODEL; every FUSED/PRIOR point made with a
degraded pose gets POSE_DEGRADED.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable

import numpy as np

from .contract import Flag, Provenance

_LOG = logging.getLogger(__name__)

# RayStatus values of core.raycast (kept as ints so that this module needs no torch)
RAY_HIT, RAY_SKY = 1, 2


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """``gate_k``: consistency gate in combined sigmas; ``max_prior_relative_sigma``: largest
    sigma/range of a usable prior."""

    gate_k: float = 3.0
    max_prior_relative_sigma: float = 0.5

    def __post_init__(self) -> None:
        if not self.gate_k > 0:
            raise ValueError(f'gate_k must be > 0, got {self.gate_k}')
        if not self.max_prior_relative_sigma > 0:
            raise ValueError(f'max_prior_relative_sigma must be > 0, got '
                             f'{self.max_prior_relative_sigma}')


def classify(meas: Any, hit: Any, sky: Any, usable: Any, in_range: Any,
             consistent: Any = None) -> tuple[Any, Any, Any]:
    """The class rules of :func:`fuse` on (H, W) bool arrays (numpy or torch alike): stereo
    point (``meas``), prior hit / sky / usable alone, range gate passed, optional second test.
    Returns (fused, conflict, prior_only).

    Raises:
        ValueError: ``consistent`` has another shape than ``meas``.
    """
    if consistent is None:
        consistent = in_range
    elif tuple(consistent.shape) != tuple(meas.shape):
        raise ValueError(f'consistent has shape {tuple(consistent.shape)}, expected '
                         f'{tuple(meas.shape)}')
    else:
        consistent = consistent & in_range
    # A prior too uncertain to be used alone says nothing by agreeing: no FUSED label for it.
    consistent = meas & hit & consistent
    fused = consistent & usable
    conflict = meas & ((hit & ~consistent) | sky)
    prior_only = ~meas & usable
    return fused, conflict, prior_only


def fuse(result, ray_unit: np.ndarray, ray_norm_rect: np.ndarray, prior_range: np.ndarray,
         prior_sigma: np.ndarray, prior_status: np.ndarray, prior_source: np.ndarray,
         config: FusionConfig, *, pose_degraded: bool = False,
         surface_model_ids: Iterable[int] = (),
         consistent: np.ndarray | None = None,
         weak_stereo: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
         ) -> dict[str, int]:
    """Fuse in place: updates ``result`` (a FrameResult) and returns class counts.

    Args:
        result: FrameResult of the stereo pipeline (modified in place: depth, depth_sigma,
            points, sigma, provenance, flags, source).
        ray_unit: (H, W, 3) unit ray of each pixel in the frame of ``result.points``.
        ray_norm_rect: (H, W) |(x/z, y/z, 1)| of the rectified ray: range = depth * ray_norm.
        prior_range, prior_sigma: (H, W) metres (NaN unless HIT).
        prior_status: (H, W) RayStatus values; prior_source: (H, W) source ids.
        config: FusionConfig.
        pose_degraded: the pose behind the prior is degraded (flag POSE_DEGRADED).
        surface_model_ids: ids of DSM sources (flag PRIOR_SURFACE_MODEL).
        consistent: optional (H, W) bool from a second test of stereo vs prior (e.g. the
            height gate of core.geoprior); a point is consistent only if it passes BOTH that
            test and the range gate along the ray (the height test alone would fuse an object
            point of plausible height with the ground the ray reaches behind it).
        weak_stereo: optional ``(disparity, sigma_disparity, prior_disparity)``, (H, W) px
            each: the matcher's disparity and its sigma, and the disparity the prior's range
            would have. A point beyond the stereo limit (BEYOND_RESOLUTION) is too imprecise
            to be a measurement but can still rule a prior out: where
            ``|d - d_prior| > gate_k * sigma_d`` (a Gaussian test in disparity, where stereo
            noise is Gaussian) the prior is not used and the point is NONE + PRIOR_CONFLICT.

    Raises:
        ValueError: on shapes that do not match the result.
    """
    h, w = result.provenance.shape
    for name, arr in (('ray_unit', ray_unit), ('ray_norm_rect', ray_norm_rect),
                      ('prior_range', prior_range), ('prior_sigma', prior_sigma),
                      ('prior_status', prior_status), ('prior_source', prior_source)):
        if arr.shape[:2] != (h, w):
            raise ValueError(f'{name} has shape {arr.shape}, expected ({h}, {w}, ...)')
    meas = result.provenance == Provenance.MEASURED
    hit = (prior_status == RAY_HIT) & np.isfinite(prior_range) & np.isfinite(prior_sigma) \
        & (prior_sigma > 0)
    sky = prior_status == RAY_SKY
    usable = hit & (prior_sigma <= config.max_prior_relative_sigma * prior_range)
    r_s = np.linalg.norm(np.nan_to_num(result.points), axis=-1)
    s_s = result.sigma
    with np.errstate(invalid='ignore'):
        in_range = np.abs(r_s - prior_range) <= config.gate_k * np.sqrt(
            s_s ** 2 + prior_sigma ** 2)
    fused, conflict, prior_only = classify(meas, hit, sky, usable, in_range, consistent)
    ruled_out = np.zeros((h, w), dtype=bool)
    if weak_stereo is not None:
        d, s_d, d_p = (np.asarray(a, dtype=np.float64) for a in weak_stereo)
        for name, arr in (('disparity', d), ('sigma_disparity', s_d),
                          ('prior_disparity', d_p)):
            if arr.shape != (h, w):
                raise ValueError(f'weak_stereo {name} has shape {arr.shape}, expected ({h}, {w})')
        beyond = (result.flags & np.uint16(Flag.BEYOND_RESOLUTION)) != 0
        with np.errstate(invalid='ignore'):
            ruled_out = prior_only & beyond & np.isfinite(d) & np.isfinite(d_p) \
                & (s_d > 0) & (np.abs(d - d_p) > config.gate_k * s_d)
        prior_only &= ~ruled_out
    flags = result.flags.astype(np.uint16)
    flags[conflict | ruled_out] |= np.uint16(Flag.PRIOR_CONFLICT)
    flags[meas & ~sky & ~usable & ~conflict] |= np.uint16(Flag.PRIOR_UNAVAILABLE)
    flags[~meas & sky] |= np.uint16(Flag.SKY)
    flags[~meas & ~sky & ~usable] |= np.uint16(Flag.PRIOR_UNAVAILABLE)
    ids = np.array(sorted(set(int(i) for i in surface_model_ids)), dtype=np.int64)
    from_prior = fused | prior_only
    if ids.size:
        flags[from_prior & np.isin(prior_source, ids)] |= np.uint16(Flag.PRIOR_SURFACE_MODEL)
    if pose_degraded:
        flags[from_prior] |= np.uint16(Flag.POSE_DEGRADED)

    r = np.where(meas, r_s, np.nan)
    s = np.where(meas, s_s, np.nan)
    if fused.any():
        ws, wp = 1.0 / s_s[fused] ** 2, 1.0 / prior_sigma[fused] ** 2
        r[fused] = (ws * r_s[fused] + wp * prior_range[fused]) / (ws + wp)
        s[fused] = 1.0 / np.sqrt(ws + wp)
    r[prior_only] = prior_range[prior_only]
    s[prior_only] = prior_sigma[prior_only]

    prov = result.provenance.copy()
    prov[fused] = Provenance.FUSED
    prov[prior_only] = Provenance.PRIOR
    source = np.zeros((h, w), dtype=np.uint16)
    source[from_prior] = prior_source[from_prior].astype(np.uint16)
    changed = from_prior
    pts = result.points.copy()
    pts[changed] = (ray_unit[changed] * r[changed][:, None]).astype(np.float32)
    depth = result.depth.copy()
    depth[changed] = (r[changed] / ray_norm_rect[changed]).astype(np.float32)
    depth_sigma = result.depth_sigma.copy()
    depth_sigma[changed] = (s[changed] / ray_norm_rect[changed]).astype(np.float32)
    sigma = result.sigma.copy()
    sigma[changed] = s[changed].astype(np.float32)
    result.points, result.depth, result.depth_sigma, result.sigma = pts, depth, depth_sigma, sigma
    result.provenance, result.flags, result.source = prov, flags, source
    result.packed = None  # a cloud packed before the fusion is stale now
    return {'fused': int(fused.sum()), 'prior': int(prior_only.sum()),
            'conflict': int(conflict.sum()), 'measured': int((meas & ~fused).sum()),
            'prior_ruled_out': int(ruled_out.sum())}
