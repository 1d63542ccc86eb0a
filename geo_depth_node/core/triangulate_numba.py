"""The host frame path's triangulation and packing in ONE compiled pass (numba).

:meth:`core.pipeline.DepthPipeline._triangulate` on the CPU is a chain of whole-image numpy
passes (NaN propagation, lookup tables, row bands on threads), followed by
:func:`core.cloud.pack_points`, which copies the points into the 24-byte records of the
cloud. Here each pixel is done once: sigma_d, depth, the MEASURED test, flags, the depth
image with its REP-117 fill values, and the record of the packed cloud, written in place. The
FrameResult's points, sigma, provenance, flags and source are then views of that cloud (as on
the device path), so nothing is packed afterwards.

Same formulas, in float32 and in the numpy path's order of operations (see _triangulate); the
points un-rectified by R^T may differ from numpy's matrix product in the last bit.
test_cpu_pipeline.py runs the triangulation and packing tests with both.

numba is optional: without it (or if compiling fails, logged once) the numpy path runs.
Nothing here imports numba at module import time; the first call compiles (a few seconds,
then cached on disk by numba) and logs it.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ._numba import numba_available  # noqa: F401 - re-exported
from .contract import POINT_DTYPE, Flag

_LOG = logging.getLogger(__name__)
_IMPL: Any = None

# The record layout the kernel writes through (float32, uint8, uint16) views of the cloud.
if (POINT_DTYPE.itemsize, [POINT_DTYPE.fields[n][1] for n in POINT_DTYPE.names]) != (
        24, [0, 4, 8, 12, 16, 18, 20]):
    raise ImportError('triangulate_numba assumes the 24-byte point layout x y z sigma '
                      'provenance flags source at offsets 0 4 8 12 16 18 20')


class TriangulateInputError(ValueError):
    """An input :func:`triangulate_pack` cannot take (shape, dtype, layout): a caller's bug,
    unlike a failure of numba itself (which the pipeline answers with the numpy path)."""


def triangulate_pack(disparity: np.ndarray, sd_src: np.ndarray, sd_is_model: bool,
                     match_flags: np.ndarray, ray: np.ndarray, u: np.ndarray, v: np.ndarray,
                     consts: tuple[float, float, float, float, float, float],
                     unrectify_rt: np.ndarray | None, cloud: np.ndarray, depth: np.ndarray,
                     depth_sigma: np.ndarray, sigma_disparity: np.ndarray) -> int:
    """Triangulate a disparity map and write the packed cloud, in one pass over the pixels.

    Args:
        disparity: (H, W) float32 px, NaN where the matcher rejected the pixel.
        sd_src: (H, W) float32: the calibrated sigma_d (px) if ``sd_is_model``, else
            |d_left - d_right| (px) for the constant model sqrt(s0^2 + (gain * lr)^2).
        match_flags: (H, W) uint16 Flag bits of the matcher.
        ray: (H, W) float32 |ray| = |((u-cx)/fx, (v-cy)/fy, 1)| of the rectified left camera.
        u, v: (W,) and (H,) float32 (u-cx)/fx and (v-cy)/fy.
        consts: (f*B px m, delta_cx px, limit.max_relative_sigma, limit.max_sigma_m (<= 0:
            off), sigma_d floor px, sigma.lr_gain).
        unrectify_rt: (3, 3) R^T taking rectified points to the optical frame, or None.
        cloud: (H, W) POINT_DTYPE output (every byte written, padding zero).
        depth, depth_sigma, sigma_disparity: (H, W) float32 outputs (metres, metres, px).

    Returns:
        The number of MEASURED pixels whose sigma is not finite (0 unless something is wrong).

    Raises:
        TriangulateInputError: shapes, dtypes or layouts the kernel cannot take (anything
            else raised comes from numba: the kernel cannot run here).
    """
    global _IMPL
    h, w = shape = disparity.shape
    for name, a, dt in (('disparity', disparity, np.float32), ('sd_src', sd_src, np.float32),
                        ('match_flags', match_flags, np.uint16), ('ray', ray, np.float32),
                        ('depth', depth, np.float32), ('depth_sigma', depth_sigma, np.float32),
                        ('sigma_disparity', sigma_disparity, np.float32)):
        if a.shape != shape or a.dtype != dt:
            raise TriangulateInputError(f'{name} must be {shape} {np.dtype(dt)}, got {a.shape} {a.dtype}')
    if u.shape != (w,) or v.shape != (h,):
        raise TriangulateInputError(f'u, v must be ({w},), ({h},), got {u.shape}, {v.shape}')
    if cloud.shape != shape or cloud.dtype != POINT_DTYPE or not cloud.flags.c_contiguous:
        raise TriangulateInputError(f'cloud must be a C-contiguous {shape} POINT_DTYPE array')
    for name, a in (('depth', depth), ('depth_sigma', depth_sigma),
                    ('sigma_disparity', sigma_disparity)):
        if not a.flags.writeable:
            raise TriangulateInputError(f'{name} must be writeable')
    first = _IMPL is None
    t = time.perf_counter()
    if first:
        from ._triangulate_numba_kernels import triangulate_pack_impl

        _IMPL = triangulate_pack_impl
    raw = cloud.reshape(-1).view(np.uint8)
    rt = np.eye(3, dtype=np.float32) if unrectify_rt is None else \
        np.ascontiguousarray(unrectify_rt, dtype=np.float32)
    bad = _IMPL(np.ascontiguousarray(disparity), np.ascontiguousarray(sd_src),
                np.ascontiguousarray(match_flags), np.ascontiguousarray(ray),
                np.ascontiguousarray(u, dtype=np.float32), np.ascontiguousarray(v, dtype=np.float32),
                np.asarray(consts, dtype=np.float32), bool(sd_is_model), consts[3] > 0,
                unrectify_rt is not None, rt, np.uint16(Flag.BEYOND_RESOLUTION),
                np.uint16(Flag.TOO_CLOSE), depth, depth_sigma, sigma_disparity,
                raw.view(np.float32).reshape(-1, 6), raw.reshape(-1, 24),
                raw.view(np.uint16).reshape(-1, 12))
    if first:
        _LOG.info('numba triangulation ready (first call, compile or cache load included: '
                  '%.1f s)', time.perf_counter() - t)
    return int(bad)


def warm_up() -> float:
    """Run the kernel once on a 2x3 frame, so that the first real frame does not pay for
    loading it from numba's disk cache (~1 s) or compiling it (a few seconds after an install).

    Returns:
        Seconds taken. Raises what the kernel raises (the caller falls back, as for a frame).
    """
    t = time.perf_counter()
    f32 = np.float32
    disp = np.array([[10.0, np.nan, 0.5], [20.0, 30.0, 40.0]], f32)
    shape = disp.shape
    outs = [np.empty(shape, f32) for _ in range(3)]
    triangulate_pack(disp, np.full(shape, 0.3, f32), True, np.zeros(shape, np.uint16),
                     np.ones(shape, f32), np.zeros(3, f32), np.zeros(2, f32),
                     (100.0, 0.0, 0.1, 0.0, 0.2, 0.5), None, np.zeros(shape, POINT_DTYPE), *outs)
    return time.perf_counter() - t
