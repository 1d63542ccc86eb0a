"""The DEM fusion stage of a frame in ONE compiled pass (numba): the height test of
:meth:`core.geoprior.GeoPrior.height_consistency` and :func:`core.fusion.fuse`.

In numpy the stage is two chains of whole-image passes: the height test gathers the MEASURED
points, places them in ENU and samples the height field five times per point (bilinear
height and slope, through torch), then the fusion builds a dozen (H, W) masks and
scatters the fused, prior and flagged pixels into copies of the frame's arrays. Here each
pixel is done once, rows spread over the CPU cores (``numba.prange``), and the height test
runs only where its answer matters (a MEASURED point with a HIT prior, usable or not, that
passes the range gate).

Same rules and the same arithmetic as the numpy reference, in its dtypes:

* height test in float64: the ENU point ``p = p_cam + (R_enu_cam d_cam) |point|``, the
  bilinear terrain of :meth:`~.raycast.HeightField.sample` (grid coordinates computed in
  float64, then cast to the field's dtype and interpolated in that dtype, as
  ``raycast._bilinear``), the nearest node's sigmas of
  :meth:`~.raycast.HeightField.node_sigmas` (NaN outside the grid), and the gate
  ``|p_z - z| <= gate_k sqrt(var)``. The rotation ``R_enu_cam d_cam`` is summed in order;
  numpy's matrix product (BLAS, with fused multiply-adds) may round it differently in the
  last bit, which could change the test only for a point within a relative 1e-16 of the
  gate;
* fusion in the dtypes numpy computes in: the stereo range ``|nan_to_num(points)|`` and the
  range gate in the points' / sigma's / prior's dtypes (float32 for the pipeline's frames:
  a Python scalar of ``fuse`` takes the array's dtype), the weak-stereo test in float64,
  the inverse-variance mean in the promoted dtype of the stereo and prior arrays; points,
  depth, depth sigma and sigma rounded to float32 as ``fuse`` writes them.

numba is optional: without it (:func:`available` False) the caller runs the numpy reference.
Nothing here imports numba at module import time; the first :func:`fuse_frame` compiles
(about 10 s on a 2-core machine, then cached on disk by numba: under a second) and logs it.
Each combination of input dtypes and memory layouts (e.g. the strided views of a packed
cloud) is compiled once.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable

import numpy as np

from ._numba import numba_available
from .contract import Flag, Provenance
from .fusion import RAY_HIT, RAY_SKY, FusionConfig

_LOG = logging.getLogger(__name__)
_IMPL: Any = None

#: the counts returned by :func:`fuse_frame`, in the order of the kernel's per-row counts
COUNT_KEYS = ('fused', 'prior', 'conflict', 'measured', 'prior_ruled_out')

#: provenance, RayStatus and flag values the kernel uses, in the order it reads them
_CODES = np.array([Provenance.MEASURED, Provenance.FUSED, Provenance.PRIOR, RAY_HIT, RAY_SKY,
                   Flag.BEYOND_RESOLUTION, Flag.PRIOR_CONFLICT, Flag.PRIOR_UNAVAILABLE,
                   Flag.SKY, Flag.PRIOR_SURFACE_MODEL, Flag.POSE_DEGRADED], dtype=np.int64)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def available() -> bool:
    """Whether numba can be imported (does not import it)."""
    return numba_available()


def _impl() -> Any:
    """The compiled pass (imports numba; compiled or loaded from numba's disk cache on the
    first call)."""
    global _IMPL
    if _IMPL is None:
        from ._fusion_numba_kernels import fuse_impl

        _IMPL = fuse_impl
    return _IMPL


def _check(name: str, arr: np.ndarray, shape: tuple[int, ...], kinds: str) -> np.ndarray:
    """``arr`` as an ndarray of ``shape`` whose dtype kind is in ``kinds`` ('f' float32 or
    float64, 'iub' integer or bool); raises ValueError naming the bad shape or dtype."""
    arr = np.asarray(arr)
    if arr.shape != shape:
        raise ValueError(f'{name} has shape {arr.shape}, expected {shape}')
    if kinds == 'f' and arr.dtype not in _FLOATS:
        raise ValueError(f'{name} must be float32 or float64, got {arr.dtype}')
    if kinds != 'f' and arr.dtype.kind not in kinds:
        raise ValueError(f'{name} must be an integer array, got {arr.dtype}')
    return arr


def _const(value: float, *dtypes: np.dtype) -> np.ndarray:
    """``value`` as a 1-element array of the promoted dtype of ``dtypes`` (how numpy casts a
    Python float meeting arrays of those dtypes)."""
    return np.array([value], dtype=np.result_type(*dtypes))


def fuse_frame(result: Any, field: Any, pose: Any, d_cam: np.ndarray, ray_unit: np.ndarray,
               norm: np.ndarray, prior_range: np.ndarray, prior_sigma: np.ndarray,
               prior_status: np.ndarray, prior_source: np.ndarray, config: FusionConfig, *,
               surface_model_ids: Iterable[int] = (),
               weak_stereo: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
               ) -> dict[str, int]:
    """Height test and fusion of a frame in place, in one compiled pass: the same outputs as
    ``consistent = GeoPrior.height_consistency(result, pose, model)`` followed by
    ``fusion.fuse(result, ray_unit, norm, prior_range, prior_sigma, prior_status,
    prior_source, config, pose_degraded=pose.degraded, surface_model_ids=...,
    consistent=consistent, weak_stereo=weak_stereo)``.

    Args:
        result: the frame's :class:`~.pipeline.FrameResult` (H, W): points (H, W, 3) metres in
            the output frame, sigma metres, provenance, flags, depth, depth_sigma. Replaced in
            place by new arrays (points, depth, depth_sigma, sigma, provenance, flags uint16,
            source uint16); ``packed`` is set to None.
        field: the :class:`~.raycast.HeightField` of the priors, on the CPU (float32 or
            float64 heights, ENU metres).
        pose: the :class:`~.pose.PoseEstimate` of the left camera (R_enu_cam (3, 3),
            p_enu_cam (3,) ENU metres, position_cov (3, 3) m^2, rpy_sigma (3,) rad,
            degraded).
        d_cam: (H, W, 3) unit rays in the left camera optical frame (float64; the first array
            of :meth:`~.geoprior.GeoPrior.rays`).
        ray_unit: (H, W, 3) unit rays in the frame of ``result.points``.
        norm: (H, W) |((u-cx)/fx, (v-cy)/fy, 1)| of the rectified ray: range = depth * norm.
        prior_range, prior_sigma: (H, W) prior range along the ray and its 1-sigma, metres
            (NaN unless HIT).
        prior_status: (H, W) integer RayStatus values; prior_source: (H, W) integer source ids.
        config: the :class:`~.fusion.FusionConfig` (gate_k for both gates).
        surface_model_ids: ids of DSM sources (flag PRIOR_SURFACE_MODEL).
        weak_stereo: None, or (H, W) arrays (disparity px, sigma_disparity px,
            prior_disparity px): see :func:`~.fusion.fuse`.

    Returns:
        Pixel counts {'fused', 'prior', 'conflict', 'measured', 'prior_ruled_out'}, as
        :func:`~.fusion.fuse` returns them.

    Raises:
        ValueError: an array whose shape does not match the frame, or whose dtype the pass
            cannot take (floats must be float32 or float64), or a height field that is None or
            not on the CPU.
        Anything else raised comes from numba (the pass cannot run here; the caller can run
        the numpy reference instead).
    """
    prov = np.asarray(result.provenance)
    if prov.ndim != 2:
        raise ValueError(f'result.provenance must be (H, W), got shape {prov.shape}')
    h, w = shape = prov.shape
    if prov.dtype.kind not in 'iu':
        raise ValueError(f'result.provenance must be an integer array, got {prov.dtype}')
    points = _check('result.points', result.points, (h, w, 3), 'f')
    sigma = _check('result.sigma', result.sigma, shape, 'f')
    depth = _check('result.depth', result.depth, shape, 'f')
    depth_sigma = _check('result.depth_sigma', result.depth_sigma, shape, 'f')
    flags = _check('result.flags', result.flags, shape, 'iu')
    d_cam = _check('d_cam', d_cam, (h, w, 3), 'f')
    ray_unit = _check('ray_unit', ray_unit, (h, w, 3), 'f')
    norm = _check('norm', norm, shape, 'f')
    prior_range = _check('prior_range', prior_range, shape, 'f')
    prior_sigma = _check('prior_sigma', prior_sigma, shape, 'f')
    prior_status = _check('prior_status', prior_status, shape, 'iu')
    prior_source = _check('prior_source', prior_source, shape, 'iu')
    if weak_stereo is None:
        empty = np.zeros((0, 0))
        weak = (empty, empty, empty)
    else:
        if len(weak_stereo) != 3:
            raise ValueError(f'weak_stereo must be (disparity, sigma_disparity, '
                             f'prior_disparity), got {len(weak_stereo)} arrays')
        # float32 as it is (exact in float64, where the test is made), anything else as fuse
        weak = tuple(_check(f'weak_stereo {name}', a if np.asarray(a).dtype in _FLOATS else
                            np.asarray(a, dtype=np.float64), shape, 'f')
                     for name, a in zip(('disparity', 'sigma_disparity', 'prior_disparity'),
                                        weak_stereo, strict=True))
    rot = np.asarray(pose.R_enu_cam, dtype=np.float64)
    p_cam = np.asarray(pose.p_enu_cam, dtype=np.float64).reshape(-1)
    if rot.shape != (3, 3) or p_cam.shape != (3,):
        raise ValueError(f'pose.R_enu_cam must be (3, 3) and p_enu_cam (3,), got {rot.shape} '
                         f'and {p_cam.shape}')
    if field is None:
        raise ValueError('no height field: without one there is no prior to fuse')
    if field.device.type != 'cpu':
        raise ValueError(f'the compiled fusion runs on the CPU, the height field is on '
                         f'{field.device}')
    hflat = field.height.reshape(-1).numpy()
    if hflat.dtype not in _FLOATS:
        raise ValueError(f'height field dtype must be float32 or float64, got {hflat.dtype}')
    sv_flat = field.sigma_v.reshape(-1).numpy()
    sh_flat = field.sigma_h.reshape(-1).numpy()
    ny, nx = field.shape
    lim = np.array([nx - 1, ny - 1], dtype=hflat.dtype)
    eps = max(0.5 * field.cell_m, 0.5)  # the slope's half baseline, as height_consistency
    att = float(max(pose.rpy_sigma[0], pose.rpy_sigma[1]))
    geo = np.array([field.x0_m, field.y0_m, field.cell_m, eps, float(pose.position_cov[2, 2]),
                    att, config.gate_k], dtype=np.float64)
    # the Python scalars of fuse in the dtypes numpy computes them in
    s_dt, ps_dt, pr_dt, pt_dt = sigma.dtype, prior_sigma.dtype, prior_range.dtype, points.dtype
    c_one_s = _const(1.0, s_dt)
    c_one_ps = _const(1.0, ps_dt)
    c_one_sp = _const(1.0, s_dt, ps_dt)
    c_gate_sp = _const(config.gate_k, s_dt, ps_dt)
    c_maxrel_r = _const(config.max_prior_relative_sigma, pr_dt)
    c_pmax = np.array([np.finfo(pt_dt).max], dtype=pt_dt)
    ids = np.array(sorted(set(int(i) for i in surface_model_ids)), dtype=np.int64)

    out_points = np.empty((h, w, 3), dtype=points.dtype)
    out_sigma = np.empty(shape, dtype=sigma.dtype)
    out_depth = np.empty(shape, dtype=depth.dtype)
    out_depth_sigma = np.empty(shape, dtype=depth_sigma.dtype)
    out_prov = np.empty(shape, dtype=prov.dtype)
    out_flags = np.empty(shape, dtype=np.uint16)
    out_source = np.empty(shape, dtype=np.uint16)
    counts = np.zeros((h, len(COUNT_KEYS)), dtype=np.int64)
    first = _IMPL is None
    t = time.perf_counter()
    impl = _impl()
    impl(points, sigma, depth, depth_sigma, prov, flags, d_cam, rot, p_cam, geo, hflat, sv_flat,
         sh_flat, int(nx), int(ny), lim, ray_unit, norm, prior_range, prior_sigma, prior_status,
         prior_source, c_one_s, c_one_ps, c_one_sp, c_gate_sp, c_maxrel_r, c_pmax,
         weak_stereo is not None, *weak, ids, bool(pose.degraded), _CODES,
         out_points, out_sigma, out_depth, out_depth_sigma, out_prov, out_flags, out_source,
         counts)
    if first:
        _LOG.info('numba fusion ready (first call, compile or cache load included: %.1f s)',
                  time.perf_counter() - t)
    result.points, result.depth, result.depth_sigma = out_points, out_depth, out_depth_sigma
    result.sigma, result.provenance, result.flags = out_sigma, out_prov, out_flags
    result.source = out_source
    result.packed = None  # a cloud packed before the fusion is stale now
    total = counts.sum(axis=0)
    return {k: int(v) for k, v in zip(COUNT_KEYS, total, strict=True)}


def warm_up(alloc: Any = None) -> float:
    """Compile (or load from numba's disk cache) :func:`fuse_frame` for a frame whose arrays
    are laid out as ``alloc((H, W))`` makes them (the pipeline's ``_alloc_outputs``: a dict
    with depth, depth_sigma, points, sigma, provenance, flags, sigma_disparity; None: plain
    C-contiguous float32 / uint8 / uint16 arrays) on a tiny plane. Returns seconds taken."""
    import types

    import torch

    from .raycast import HeightField

    t = time.perf_counter()
    h, w = 6, 8
    a = alloc((h, w)) if alloc is not None else {
        'depth': np.zeros((h, w), np.float32), 'depth_sigma': np.zeros((h, w), np.float32),
        'points': np.zeros((h, w, 3), np.float32), 'sigma': np.zeros((h, w), np.float32),
        'provenance': np.zeros((h, w), np.uint8), 'flags': np.zeros((h, w), np.uint16),
        'sigma_disparity': np.zeros((h, w), np.float32)}
    rays = np.zeros((h, w, 3))
    rays[..., 2] = 1.0
    a['points'][...] = rays * 5.0
    a['depth'][...] = 5.0
    a['depth_sigma'][...] = 0.1
    a['sigma'][...] = 0.1
    a['provenance'][...] = int(Provenance.MEASURED)
    a['flags'][...] = 0
    a['sigma_disparity'][...] = 0.2
    result = types.SimpleNamespace(points=a['points'], sigma=a['sigma'], depth=a['depth'],
                                   depth_sigma=a['depth_sigma'], provenance=a['provenance'],
                                   flags=a['flags'], source=np.zeros((h, w), np.uint16),
                                   disparity=np.full((h, w), 10.0, np.float32),
                                   sigma_disparity=a['sigma_disparity'], packed=None)
    field = HeightField(torch.zeros((4, 4), dtype=torch.float32), -3.0, -3.0, 2.0)
    pose = types.SimpleNamespace(R_enu_cam=np.eye(3), p_enu_cam=np.array([0.0, 0.0, 5.0]),
                                 position_cov=np.eye(3) * 0.01, rpy_sigma=np.full(3, 1e-3),
                                 degraded=False)
    ones = np.ones((h, w))
    fuse_frame(result, field, pose, rays, rays.astype(np.float32), ones,
               np.full((h, w), 5.0, np.float32), np.full((h, w), 0.5, np.float32),
               np.full((h, w), RAY_HIT, np.int8), np.ones((h, w), np.int32), FusionConfig(),
               weak_stereo=(result.disparity, result.sigma_disparity, np.full((h, w), 10.0)))
    return time.perf_counter() - t
