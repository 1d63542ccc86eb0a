"""DEM prior and fusion on a torch device: the twin of GeoPrior.cast / height_consistency /
apply (core/geoprior.py) and fusion.fuse (core/fusion.py) for the device frame path.

The numpy functions are the reference and their docstrings define the rules; these functions
do the same arithmetic in the same dtypes (float64 where numpy works in float64) on the
frame's tensors, so that with ``stereo.matcher: sgm_torch`` the frame stays on the device from
the image upload to the packed cloud even with DEM sources: the ray-cast already runs on the
DEM grid's device (``dem.device``), and only the pose (a few numbers) comes from the host. On
CUDA this removes the download of every stereo image before the fusion and the host work after
it. test_georef_torch.py compares the two on synthetic worlds.

A "frame" here is a dict of (H, W) tensors on one device, as ``TorchFrame.triangulate``
returns them plus the matcher's 'disparity': 'points' (H, W, 3) float32, 'depth',
'depth_sigma', 'sigma', 'sigma_disparity', 'disparity' float32, 'provenance' uint8, 'flags'
int32, 'source' int32, 'measured' bool (here: the pixels that have a point, i.e. provenance
not NONE, which is what ``TorchFrame.pack`` writes).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Iterable, Mapping

import numpy as np

from .camera import CameraModel
from .contract import Flag, Provenance
from .fusion import RAY_HIT, RAY_SKY, FusionConfig, classify
from .geoprior import attitude_sigma_rad
from .pose import PoseEstimate
from .torch_util import cpu_threads

_LOG = logging.getLogger(__name__)


def range_gradient_torch(rng: Any) -> Any:
    """:func:`core.geoprior.range_gradient` for an (H, W) float tensor; float64 result."""
    import torch
    import torch.nn.functional as F  # noqa: N812 - usual torch alias

    g = torch.zeros(rng.shape, dtype=torch.float64, device=rng.device)
    inf = torch.tensor(float('inf'), dtype=rng.dtype, device=rng.device)
    for axis in (0, 1):
        d = torch.abs(torch.diff(rng, dim=axis))
        d = torch.where(torch.isnan(d), inf, d).double()
        lo = (0, 0, 1, 0) if axis == 0 else (1, 0)
        hi = (0, 0, 0, 1) if axis == 0 else (0, 1)
        g = torch.maximum(g, F.pad(d, lo))
        g = torch.maximum(g, F.pad(d, hi))
    return torch.where(torch.isfinite(rng), g, torch.full_like(g, float('nan')))


def _rays(prior: Any, model: CameraModel, unrectify: bool, device: Any) -> tuple[Any, Any, Any]:
    """GeoPrior.rays on the device, cached per calibration and device."""
    import torch

    key = (model.width, model.height, model.fx, model.fy, model.cx,
           model.cy, model.R.tobytes(), unrectify, str(device))
    cache = getattr(prior, '_torch_rays', None)
    if cache is None:  # key -> tensors; a frame asks for up to two output frames x devices
        cache = prior._torch_rays = {}
    if key not in cache:
        if len(cache) >= 4:
            cache.clear()  # a new calibration
        cache[key] = tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device)
                           for a in prior.rays(model, unrectify))
    return cache[key]


def cast_torch(prior: Any, pose: PoseEstimate, model: CameraModel) -> dict[str, Any]:
    """``GeoPrior.cast`` with the results left on the DEM grid's device: (H, W) tensors
    'range_m' float32, 'sigma_m' float32, 'status' int8, 'source' int32, and 'timings_ms'.
    Without a height grid (its build failed, ``GeoPrior.update_grid``) only 'timings_ms'."""
    import torch

    from .raycast import RayStatus, raycast

    t0 = time.perf_counter()
    prior.update_grid(pose.p_enu_cam)
    t1 = time.perf_counter()
    field = prior.grid.field
    if field is None:
        return {'timings_ms': {'dem_retile': (t1 - t0) * 1e3}}
    dev = field.device
    d_cam, _, _ = _rays(prior, model, True, dev)
    h, w = model.height, model.width
    r_enu = torch.from_numpy(np.ascontiguousarray(pose.R_enu_cam.T)).to(dev)
    d_enu = d_cam.reshape(-1, 3) @ r_enu
    pose_cov = pose.pose_covariance()
    with cpu_threads(dev, 1):
        res = raycast(field, pose.p_enu_cam, d_enu, max_range_m=prior.max_range_m,
                      pose_cov=pose_cov, march=prior.march)
        rng = res.range_m.reshape(h, w)
        sigma = res.sigma_m.double().reshape(h, w)
        s_vert = res.sigma_vertical_m.double().reshape(h, w)
        s_att = res.sigma_attitude_m.double().reshape(h, w)
        status = res.status.reshape(h, w)
        var_rest = torch.clamp(sigma ** 2 - s_vert ** 2 - s_att ** 2, min=0.0)
        var_vert = s_vert ** 2
        t2 = time.perf_counter()
        hit = (status == int(RayStatus.HIT)).reshape(-1)
        hidx = torch.nonzero(hit, as_tuple=False).reshape(-1)
        if prior.sigma_points and hidx.numel():
            sin_g = torch.sin(res.grazing_rad.double()[hidx])
            n_z = res.normal[:, 2].double()[hidx]
            delta = s_vert.reshape(-1)[hidx] * sin_g / n_z
            r0 = rng.reshape(-1)[hidx].double()
            dev2 = torch.zeros_like(r0)
            hole = prior._camera_over_nodata(pose)  # as GeoPrior.cast
            p = torch.as_tensor(pose.p_enu_cam, dtype=torch.float64, device=dev)
            for sign in (1.0, -1.0):
                origin = p.expand(r0.numel(), 3).clone()
                origin[:, 2] -= sign * torch.nan_to_num(delta, nan=0.0)  # as np.nan_to_num
                reach = min(prior.max_range_m, float(r0.max()) + field.cell_m) \
                    if sign > 0 else prior.max_range_m
                rs = raycast(field, origin, d_enu[hidx], max_range_m=reach,
                             ranges_only=True, march=prior.march,
                             min_range_m=None if sign > 0 else r0)  # as GeoPrior.cast
                ok = (rs.status == int(RayStatus.HIT)) & torch.isfinite(delta)
                inside = rs.status == int(RayStatus.BELOW_TERRAIN)  # as GeoPrior.cast
                if hole and sign > 0:
                    inside = inside | (rs.status == int(RayStatus.UNAVAILABLE))
                dev2 += 0.5 * torch.where(ok, (rs.range_m.double() - r0) ** 2,
                                          torch.where(inside, var_vert.reshape(-1)[hidx],
                                                      torch.full_like(r0, math.inf)))
            var_vert.reshape(-1)[hidx] = dev2
    t3 = time.perf_counter()
    sig_att = attitude_sigma_rad(pose_cov)
    var_att = s_att ** 2
    if sig_att > 0:
        var_att = torch.maximum(var_att, (range_gradient_torch(rng) * model.fx * sig_att) ** 2)
    sigma = torch.sqrt(var_rest + var_vert + var_att)
    return {'range_m': rng, 'sigma_m': sigma.float(), 'status': status,
            'source': res.source.reshape(h, w),
            'timings_ms': {'dem_retile': (t1 - t0) * 1e3, 'dem_raycast': (t2 - t1) * 1e3,
                           'dem_sigma_points': (t3 - t2) * 1e3}}


def height_consistency_torch(prior: Any, frame: Mapping[str, Any], pose: PoseEstimate,
                             model: CameraModel) -> Any:
    """``GeoPrior.height_consistency`` on the frame's tensors: (H, W) bool tensor, or None
    when there are no MEASURED points."""
    import torch

    dev = frame['points'].device
    meas = frame['provenance'] == int(Provenance.MEASURED)
    if not bool(meas.any()):
        return None
    field = prior.grid.field
    d_cam, _, _ = _rays(prior, model, True, dev)
    d = d_cam[meas] @ torch.from_numpy(np.ascontiguousarray(pose.R_enu_cam.T)).to(dev)
    r = torch.linalg.vector_norm(frame['points'][meas].double(), dim=-1)
    p = torch.as_tensor(pose.p_enu_cam, dtype=torch.float64, device=dev) + d * r[:, None]
    eps = max(0.5 * field.cell_m, 0.5)
    px, py = p[:, 0], p[:, 1]
    xs = torch.cat([px, px + eps, px - eps, px, px])
    ys = torch.cat([py, py, py, py + eps, py - eps])
    with torch.no_grad(), cpu_threads(field.device, 1):
        z = field.sample(xs.to(field.device), ys.to(field.device)).double().to(dev).reshape(5, -1)
        # the DEM sigmas under each point (per source, grown with survey age), as the prior's
        sig_v, sig_h = (s.double().to(dev) for s in field.node_sigmas(px.to(field.device),
                                                                       py.to(field.device)))
    slope = torch.hypot(z[1] - z[2], z[3] - z[4]) / (2 * eps)
    d_h = torch.hypot(d[:, 0], d[:, 1])
    att = float(max(pose.rpy_sigma[0], pose.rpy_sigma[1]))
    s_s = frame['sigma'][meas].double()
    var = (sig_v ** 2 + (sig_h * slope) ** 2 + float(pose.position_cov[2, 2])
           + (r * att * d_h) ** 2 + (s_s * (torch.abs(d[:, 2]) + d_h * slope)) ** 2)
    ok = torch.abs(p[:, 2] - z[0]) <= prior.fusion.gate_k * torch.sqrt(var)
    out = torch.zeros(meas.shape, dtype=torch.bool, device=dev)
    out[meas] = ok & torch.isfinite(z[0])
    return out


def fuse_torch(frame: dict[str, Any], ray_unit: Any, ray_norm_rect: Any, prior_range: Any,
               prior_sigma: Any, prior_status: Any, prior_source: Any, config: FusionConfig, *,
               pose_degraded: bool = False, surface_model_ids: Iterable[int] = (),
               consistent: Any = None, weak_stereo: tuple[Any, Any, Any] | None = None
               ) -> dict[str, int]:
    """:func:`core.fusion.fuse` on a frame dict of tensors (updated in place: 'points',
    'depth', 'depth_sigma', 'sigma', 'provenance', 'flags', 'source', 'measured'); returns
    the class counts.

    Raises:
        ValueError: on shapes that do not match the frame.
    """
    import torch

    prov0 = frame['provenance']
    h, w = prov0.shape
    dev = prov0.device
    for name, arr in (('ray_unit', ray_unit), ('ray_norm_rect', ray_norm_rect),
                      ('prior_range', prior_range), ('prior_sigma', prior_sigma),
                      ('prior_status', prior_status), ('prior_source', prior_source)):
        if tuple(arr.shape[:2]) != (h, w):
            raise ValueError(f'{name} has shape {tuple(arr.shape)}, expected ({h}, {w}, ...)')
    meas = prov0 == int(Provenance.MEASURED)
    hit = (prior_status == RAY_HIT) & torch.isfinite(prior_range) & torch.isfinite(prior_sigma) \
        & (prior_sigma > 0)
    sky = prior_status == RAY_SKY
    usable = hit & (prior_sigma <= config.max_prior_relative_sigma * prior_range)
    r_s = torch.linalg.vector_norm(torch.nan_to_num(frame['points']), dim=-1)
    s_s = frame['sigma']
    in_range = torch.abs(r_s - prior_range) <= config.gate_k * torch.sqrt(s_s ** 2 + prior_sigma ** 2)
    fused, conflict, prior_only = classify(meas, hit, sky, usable, in_range, consistent)
    ruled_out = torch.zeros((h, w), dtype=torch.bool, device=dev)
    if weak_stereo is not None:
        d, s_d, d_p = (a.double() for a in weak_stereo)
        for name, arr in (('disparity', d), ('sigma_disparity', s_d), ('prior_disparity', d_p)):
            if tuple(arr.shape) != (h, w):
                raise ValueError(f'weak_stereo {name} has shape {tuple(arr.shape)}, expected '
                                 f'({h}, {w})')
        beyond = (frame['flags'] & int(Flag.BEYOND_RESOLUTION)) != 0
        ruled_out = prior_only & beyond & torch.isfinite(d) & torch.isfinite(d_p) \
            & (s_d > 0) & (torch.abs(d - d_p) > config.gate_k * s_d)
        prior_only = prior_only & ~ruled_out
    flags = frame['flags'].to(torch.int32)

    def add(mask: Any, flag: Flag) -> Any:
        return torch.where(mask, flags | int(flag), flags)

    flags = add(conflict | ruled_out, Flag.PRIOR_CONFLICT)
    flags = add(meas & ~sky & ~usable & ~conflict, Flag.PRIOR_UNAVAILABLE)
    flags = add(~meas & sky, Flag.SKY)
    flags = add(~meas & ~sky & ~usable, Flag.PRIOR_UNAVAILABLE)
    ids = sorted(set(int(i) for i in surface_model_ids))
    from_prior = fused | prior_only
    if ids:
        is_dsm = torch.isin(prior_source.long(), torch.tensor(ids, dtype=torch.long, device=dev))
        flags = add(from_prior & is_dsm, Flag.PRIOR_SURFACE_MODEL)
    if pose_degraded:
        flags = add(from_prior, Flag.POSE_DEGRADED)

    # float32 as numpy's (its np.where with np.nan keeps float32)
    nan32 = torch.tensor(float('nan'), dtype=torch.float32, device=dev)
    r = torch.where(meas, r_s, nan32)
    s = torch.where(meas, s_s, nan32)
    ws = 1.0 / s_s ** 2
    wp = 1.0 / prior_sigma ** 2
    r = torch.where(fused, (ws * r_s + wp * prior_range) / (ws + wp), r)
    s = torch.where(fused, 1.0 / torch.sqrt(ws + wp), s)
    r = torch.where(prior_only, prior_range, r)
    s = torch.where(prior_only, prior_sigma, s)
    prov = torch.where(fused, int(Provenance.FUSED),
                       torch.where(prior_only, int(Provenance.PRIOR), prov0.to(torch.int32)))
    prov = prov.to(torch.uint8)
    source = torch.where(from_prior, prior_source.to(torch.int32) & 0xFFFF,
                         torch.zeros_like(prior_source, dtype=torch.int32))
    changed = from_prior
    new_pts = (ray_unit * r[..., None]).float()
    frame['points'] = torch.where(changed[..., None], new_pts, frame['points'])
    nrm = ray_norm_rect
    frame['depth'] = torch.where(changed, (r / nrm).float(), frame['depth'])
    frame['depth_sigma'] = torch.where(changed, (s / nrm).float(), frame['depth_sigma'])
    frame['sigma'] = torch.where(changed, s.float(), frame['sigma'])
    frame['provenance'] = prov
    frame['flags'] = flags
    frame['source'] = source
    frame['measured'] = prov != int(Provenance.NONE)
    return {'fused': int(fused.sum()), 'prior': int(prior_only.sum()),
            'conflict': int(conflict.sum()), 'measured': int((meas & ~fused).sum()),
            'prior_ruled_out': int(ruled_out.sum())}


def apply_torch(prior: Any, frame: dict[str, Any], pose: PoseEstimate | None,
                model: CameraModel, params: Mapping[str, Any], stereo: Any = None,
                timings: dict[str, float] | None = None) -> dict[str, int]:
    """``GeoPrior.apply`` on a frame dict of tensors (in place); returns the class counts.
    Without a pose, or without a height grid (its build failed), every point keeps its stereo
    class and NONE points get PRIOR_UNAVAILABLE."""
    import torch

    pri = cast_torch(prior, pose, model) if pose is not None else None
    if pri is None or 'status' not in pri:
        if pri is not None and timings is not None:
            timings.update(pri['timings_ms'])
        none = frame['provenance'] == int(Provenance.NONE)
        frame['flags'] = torch.where(none, frame['flags'] | int(Flag.PRIOR_UNAVAILABLE),
                                     frame['flags'])
        return {'fused': 0, 'prior': 0, 'conflict': 0,
                'measured': int((frame['provenance'] == int(Provenance.MEASURED)).sum())}
    dev = frame['points'].device
    pri = {k: (v.to(dev) if k != 'timings_ms' else v) for k, v in pri.items()}
    _, ray_unit, norm = _rays(prior, model, bool(params.get('output.unrectify_points', True)), dev)
    t = time.perf_counter()
    consistent = height_consistency_torch(prior, frame, pose, model)
    weak = None
    if stereo is not None and 'disparity' in frame and 'sigma_disparity' in frame:
        d_prior = float(stereo.fb) * norm / pri['range_m'].double() + float(stereo.delta_cx)
        weak = (frame['disparity'], frame['sigma_disparity'], d_prior)
    counts = fuse_torch(frame, ray_unit, norm, pri['range_m'], pri['sigma_m'], pri['status'],
                        pri['source'], prior.fusion, pose_degraded=pose.degraded,
                        surface_model_ids=prior.surface_model_ids, consistent=consistent,
                        weak_stereo=weak)
    if timings is not None:
        timings.update(pri['timings_ms'])
        timings['fusion'] = (time.perf_counter() - t) * 1e3
    return counts


def to_enu_torch(frame: dict[str, Any], T_enu_cam: np.ndarray) -> None:
    """``DepthPipeline._to_enu`` on the frame's points (float64 transform, float32 result)."""
    import torch

    dev = frame['points'].device
    T = torch.from_numpy(np.asarray(T_enu_cam, dtype=np.float64)).to(dev)
    pts = frame['points'].reshape(-1, 3).double() @ T[:3, :3].T + T[:3, 3]
    frame['points'] = pts.float().reshape(frame['points'].shape)
