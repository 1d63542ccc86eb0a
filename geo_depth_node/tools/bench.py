"""`geo-depth bench`: time the device frame path stage by stage against OpenCV SGBM.

Renders the analytic scene (core.scene.render_scene) at ``--size``, then per frame:
upload (pinned host -> device), rectify (only with ``--rectify``: a device remap with
the scene's ideal maps), match (cost / aggregate / select / postfilter of
core.sgm.TorchSGMMatcher), sigma (the calibrated per-pixel sigma of core.sigma_model, as
the node), triangulate and pack (core.torch_frame.TorchFrame), and
download (the packed cloud, device -> pinned host). Stage times are CUDA events on
CUDA, perf_counter on the CPU; medians over ``--iters`` frames after ``--warmup``.
The baseline is ``core.stereo.OpenCVStereoMatcher.match`` (the project's current
matcher: SGBM + its own LR pass and labels, same disparities) on the same images in
the same process.

Stages that do not exist yet (DEM ray-cast, fusion) are hooks: pass callables in
``extra_stages`` to :func:`run_bench` (name -> f(tri_dict) run after triangulation);
nothing is reported for them otherwise.

``--accuracy`` adds bad-2.0 (fraction of matched pixels with |d - d_gt| > 2 px) and
density (matched / pixels with truth) of both matchers on Middlebury Cones (shared
data, 64 disparities) and on the analytic scene (truth where the surface is not sky
and the point is visible from the right camera).

``--pipeline`` times the node's frame path instead: ``core.pipeline.DepthPipeline.process``
(``--matcher``, default opencv_sgbm, the CPU path that ``auto`` picks without CUDA: SGBM, the
left-right check, the calibrated sigma, triangulation) plus ``core.cloud.pack_points`` (the
packed ~/points payload), with the per-stage times of ``FrameResult.timings_ms`` made
exclusive (match_left, match_right, match_post, sigma, triangulate, pack, other), against
bare ``cv2.StereoSGBM.compute`` with the pipeline's own SGBM settings ("OpenCV SGBM alone")
on the same images, interleaved frame by frame (the order alternates) so that load drift on
a shared machine hits both alike. ``ratio_to_baseline`` = median frame / median SGBM;
``ratio_paired_median`` = median of the per-frame ratios (more robust under drifting load).
``--scene synth`` uses a frame of the synthetic world (geo_depth_node.synth) instead of
the analytic scene; ``--scene synth-georef`` generates a synthetic world of warmup + iters
frames WITH its DEM, IMU and GNSS, so that every frame also runs the pose interpolation, the
DEM ray-cast (``dem.device``), the sigma points and the fusion (stages pose, dem_retile,
dem_raycast, dem_sigma_points, fusion); when the ray-march is not the torch loop (numba on
the CPU, Triton on CUDA), two more frames run with the torch loop and ``dem_march``
gives both ray-cast times and the speed-up. Example (issue 4's CPU target, whole frame within
1.5x of SGBM alone)::

    geo-depth bench --pipeline --device cpu --size 640x480 --disparities 128 --iters 30
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

_LOG = logging.getLogger(__name__)


def parse_size(text: str, min_w: int = 32, min_h: int = 32) -> tuple[int, int]:
    """'WxH' -> (W, H) pixels, at least ``min_w`` x ``min_h`` (an argparse type)."""
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must be WxH, got {text!r}') from None
    if w < min_w or h < min_h:
        raise argparse.ArgumentTypeError(f'size must be at least {min_w}x{min_h}, got {text!r}')
    return w, h


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the bench command."""
    p = argparse.ArgumentParser(prog='geo-depth bench', description=__doc__.splitlines()[0])
    p.add_argument('--device', choices=('cpu', 'cuda'), default='cuda' if _cuda_ok() else 'cpu')
    p.add_argument('--size', type=parse_size, default=(1280, 720), help='WxH (default 1280x720)')
    p.add_argument('--disparities', type=int, default=128, help='number of disparities (16..256)')
    p.add_argument('--paths', type=int, choices=(4, 8), default=8)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--rectify', action='store_true', help='include a device remap stage')
    p.add_argument('--json', action='store_true', help='print one JSON object')
    p.add_argument('--accuracy', action='store_true', help='bad-2.0 / density on Cones and the scene')
    p.add_argument('--seed', type=int, default=0, help='analytic scene seed')
    p.add_argument('--no-graph', action='store_true',
                   help='CUDA: run eagerly (default: match..pack replayed as one CUDA graph)')
    p.add_argument('--agg-lines', type=int, default=4, help='scanlines per Triton aggregation program')
    p.add_argument('--pipeline', action='store_true',
                   help='time DepthPipeline.process + pack_points (the node frame path) against '
                        'bare OpenCV StereoSGBM, interleaved')
    p.add_argument('--matcher', choices=('opencv_sgbm', 'sgm_torch', 'auto'), default='opencv_sgbm',
                   help='--pipeline: stereo.matcher (default opencv_sgbm, the CPU path)')
    p.add_argument('--scene', choices=('analytic', 'synth', 'synth-georef'), default='analytic',
                   help='--pipeline: image pair from the analytic scene or the synthetic world; '
                        'synth-georef: the synthetic world WITH its DEM and IMU/GNSS, so the '
                        'frame includes pose, DEM ray-cast, prior sigma and fusion (one world '
                        'frame per timed frame)')
    p.add_argument('--set', action='append', default=[], metavar='NAME=VALUE',
                   help='--pipeline: extra pipeline parameter (e.g. stereo.lr_check_resolution=full)')
    return p


def _cuda_ok() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _models(scene: Any) -> Any:
    from ..core.camera import CameraModel, StereoModel

    h, w = scene.left.shape
    k = scene.K.reshape(-1)
    left = CameraModel.from_arrays(w, h, k, [0.0] * 5, np.eye(3), scene.P_left.reshape(-1))
    right = CameraModel.from_arrays(w, h, k, [0.0] * 5, np.eye(3), scene.P_right.reshape(-1))
    return StereoModel.from_cameras(left, right)


def _remap_grid(stereo: Any, device: Any) -> Any:
    """Sampling grid (1, H, W, 2) for torch grid_sample from the left camera's rectification maps."""
    import cv2
    import torch

    m = stereo.left
    mx, my = cv2.initUndistortRectifyMap(m.K, m.D, m.R, m.P[:, :3], (m.width, m.height), cv2.CV_32FC1)
    gx = 2.0 * (mx + 0.5) / m.width - 1.0
    gy = 2.0 * (my + 0.5) / m.height - 1.0
    return torch.from_numpy(np.stack([gx, gy], -1)[None].astype(np.float32)).to(device)


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float('nan')


def run_bench(device: str = 'cuda', size: tuple[int, int] = (1280, 720), disparities: int = 128,
              paths: int = 8, warmup: int = 3, iters: int = 10, rectify: bool = False, seed: int = 0,
              extra_stages: Mapping[str, Callable[[dict], Any]] | None = None, graph: bool = True,
              agg_lines: int = 4) -> dict[str, Any]:
    """Run the timing benchmark; returns the JSON-able result (see module doc).

    Raises:
        ValueError: bad sizes / counts, or CUDA requested without CUDA.
    """
    import torch

    from ..core.params import validate_params
    from ..core.scene import render_scene
    from ..core.sgm import SGMConfig, StageTimer, TorchSGMMatcher
    from ..core.sigma_model import SigmaModel
    from ..core.stereo import MatcherConfig, OpenCVStereoMatcher
    from ..core.torch_frame import TorchFrame

    if iters < 1 or warmup < 0:
        raise ValueError(f'need iters >= 1 and warmup >= 0, got {iters}, {warmup}')
    if device == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device cuda but CUDA is not available')
    w, h = size
    scene = render_scene(w, h, seed=seed)
    stereo = _models(scene)
    params = validate_params({'stereo.num_disparities': disparities})
    dev = torch.device(device)
    matcher = TorchSGMMatcher(SGMConfig.from_params(params, paths=paths), dev, agg_lines=agg_lines)
    frame = TorchFrame(params, dev)
    sigma_model = SigmaModel.for_matcher('sgm_torch')  # the node's calibrated sigma (sigma.model)
    pin = dev.type == 'cuda'
    host_l = torch.from_numpy(scene.left).pin_memory() if pin else torch.from_numpy(scene.left)
    host_r = torch.from_numpy(scene.right).pin_memory() if pin else torch.from_numpy(scene.right)
    host_out = torch.empty((h, w, 24), dtype=torch.uint8, pin_memory=pin)
    grid = _remap_grid(stereo, dev) if rectify else None

    def one_frame() -> dict[str, float]:
        timer = StageTimer(dev)
        left = host_l.to(dev, non_blocking=True)
        right = host_r.to(dev, non_blocking=True)
        timer.mark('upload')
        if grid is not None:
            import torch.nn.functional as F

            pair = torch.stack([left, right])[:, None].float()
            rect = F.grid_sample(pair, grid.expand(2, -1, -1, -1), mode='bilinear', align_corners=False)
            left, right = (rect[:, 0].round().clamp(0, 255).to(torch.uint8)).unbind(0)
            timer.mark('rectify')
        m = matcher.match_tensors(left, right, timer=timer)
        sigma_d = sigma_model.sigma_d_torch(m, m['disparity'])
        timer.mark('sigma')
        tri = frame.triangulate(m['disparity'], m['lr_diff'], m['flags'], stereo, sigma_d)
        timer.mark('triangulate')
        for name, fn in (extra_stages or {}).items():
            fn(tri)
            timer.mark(name)
        packed = frame.pack(tri)
        timer.mark('pack')
        host_out.copy_(packed, non_blocking=pin)
        timer.mark('download')
        return timer.results()

    def timed(fn: Callable[[], dict[str, float]]) -> tuple[dict[str, float], float, float]:
        for _ in range(warmup):
            fn()
        runs, walls = [], []
        for _ in range(iters):
            t0 = time.perf_counter()
            runs.append(fn())
            walls.append((time.perf_counter() - t0) * 1e3)
        med = {k: _median([r[k] for r in runs]) for k in runs[0]}
        return med, _median([sum(r.values()) for r in runs]), _median(walls)

    eager_stages, eager_total, eager_wall = timed(one_frame)
    stages, total, wall = eager_stages, eager_total, eager_wall
    use_graph = graph and dev.type == 'cuda'
    if use_graph:
        # match -> triangulate -> (extra stages) -> pack captured once and replayed per frame;
        # per frame: one upload into the static input buffers, replay, one download.
        static_l = torch.empty((h, w), dtype=torch.uint8, device=dev)
        static_r = torch.empty((h, w), dtype=torch.uint8, device=dev)

        def body() -> Any:
            left, right = static_l, static_r
            if grid is not None:
                import torch.nn.functional as F

                pair = torch.stack([left, right])[:, None].float()
                rect = F.grid_sample(pair, grid.expand(2, -1, -1, -1), mode='bilinear',
                                     align_corners=False)
                left, right = (rect[:, 0].round().clamp(0, 255).to(torch.uint8)).unbind(0)
            m = matcher.match_tensors(left, right)
            tri = frame.triangulate(m['disparity'], m['lr_diff'], m['flags'], stereo,
                                    sigma_model.sigma_d_torch(m, m['disparity']))
            for fn in (extra_stages or {}).values():
                fn(tri)
            return frame.pack(tri)

        static_l.copy_(host_l)
        static_r.copy_(host_r)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                body()
        torch.cuda.current_stream().wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            static_out = body()

        def graph_frame() -> dict[str, float]:
            timer = StageTimer(dev)
            static_l.copy_(host_l, non_blocking=True)
            static_r.copy_(host_r, non_blocking=True)
            timer.mark('upload')
            cuda_graph.replay()
            timer.mark('match_to_pack_graph')
            host_out.copy_(static_out, non_blocking=True)
            timer.mark('download')
            return timer.results()

        stages, total, wall = timed(graph_frame)
        eager_out = host_out.clone()
        one_frame()
        torch.cuda.synchronize()
        if not torch.equal(eager_out, host_out):
            _LOG.warning('CUDA graph and eager packed clouds differ')

    cv = OpenCVStereoMatcher(MatcherConfig(num_disparities=disparities))
    for _ in range(max(1, min(warmup, 2))):
        cv.match(scene.left, scene.right)
    base = []
    for _ in range(iters):
        t0 = time.perf_counter()
        cv.match(scene.left, scene.right)
        base.append((time.perf_counter() - t0) * 1e3)
    baseline = _median(base)
    out: dict[str, Any] = {
        'device': _device_name(dev), 'size': f'{w}x{h}', 'disparities': disparities, 'paths': paths,
        'stages_ms': {k: round(v, 4) for k, v in stages.items()}, 'total_ms': round(total, 4),
        'wall_ms': round(wall, 4), 'cuda_graph': use_graph,
        'eager_stages_ms': {k: round(v, 4) for k, v in eager_stages.items()},
        'eager_total_ms': round(eager_total, 4), 'eager_wall_ms': round(eager_wall, 4),
        'baseline_opencv_sgbm_ms': round(baseline, 4),
        'ratio_to_baseline': round(total / baseline, 4) if baseline > 0 else None,
        'iters': iters, 'warmup': warmup, 'cpu_threads': torch.get_num_threads(),
    }
    return out


def _pair(scene: str, size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray, Any, Any]:
    """(left, right, left CameraModel, right CameraModel) of a rectified pair at ``size``."""
    from ..core.camera import CameraModel

    w, h = size
    if scene == 'analytic':
        from ..core.scene import render_scene

        sc = render_scene(w, h, seed=seed)
        left, right, K, p_l, p_r = sc.left, sc.right, sc.K, sc.P_left, sc.P_right
    elif scene == 'synth':
        from ..synth.config import SynthConfig
        from ..synth.generate import World, render_frames

        world = World(SynthConfig(seed=seed + 1, frames=1, width=w, height=h))
        f = next(iter(render_frames(world)))
        left, right, K = f['left'], f['right'], world.K
        p_l, p_r = world.projection(False), world.projection(True)
    else:
        raise ValueError(f'unknown scene {scene!r}; one of analytic, synth')
    lm = CameraModel.from_arrays(w, h, K.reshape(-1), [0.0] * 5, np.eye(3), p_l.reshape(-1))
    rm = CameraModel.from_arrays(w, h, K.reshape(-1), [0.0] * 5, np.eye(3), p_r.reshape(-1))
    return left, right, lm, rm


def parse_sets(items: list[str]) -> dict[str, Any]:
    """['name=value', ...] -> {name: value} (YAML scalars: 1, 0.5, true, text).

    Raises:
        ValueError: an item without '=' or without a name.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition('=')
        if not sep or not name.strip():
            raise ValueError(f'--set wants NAME=VALUE, got {item!r}')
        out[name.strip()] = yaml.safe_load(value)
    return out


#: stages of the host path that run beside the stereo (their times overlap the matcher's)
BESIDE_STEREO = ('pose', 'dem_retile', 'dem_raycast', 'dem_sigma_points')


def run_pipeline_bench(device: str = 'cpu', size: tuple[int, int] = (640, 480),
                       disparities: int = 128, matcher: str = 'opencv_sgbm', warmup: int = 3,
                       iters: int = 10, seed: int = 0, scene: str = 'analytic',
                       params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Time the node's frame path (DepthPipeline.process + pack_points) per stage against bare
    OpenCV StereoSGBM with the same settings on the same images, interleaved (module doc).

    Returns:
        The JSON-able result: device, size, disparities, stages_ms (stage -> median ms,
        exclusive stages that add up to the frame), total_ms (median frame),
        baseline_opencv_sgbm_ms (median bare SGBM), ratio_to_baseline (total / baseline),
        ratio_paired_median, plus the settings.

    Raises:
        ValueError: bad counts, sizes or parameters.
    """
    import cv2

    from ..core.cloud import pack_points
    from ..core.pipeline import DepthPipeline
    from ..core.stereo import _MODES

    if iters < 1 or warmup < 0:
        raise ValueError(f'need iters >= 1 and warmup >= 0, got {iters}, {warmup}')
    w, h = size
    settings = dict(params or {}, **{'stereo.matcher': matcher, 'stereo.device': device,
                                     'stereo.num_disparities': disparities})
    tmp = None
    if scene == 'synth-georef':
        import tempfile

        from ..synth.config import SynthConfig
        from .prior_coverage import load_world

        tmp = tempfile.TemporaryDirectory(prefix='geo_depth_bench_')
        # + 2 frames for the torch-loop ray-cast baseline (dem_march): fresh stamps, poses.
        # World seed + 2: in world 1 the vehicle starts where the DEM is 1.7 m above the
        # ground (a terrain change), so nearly every prior is refused and the fusion and
        # sigma-point stages would be timed over nothing ('classes' shows what was fused).
        cfg = SynthConfig(seed=seed + 2, frames=warmup + iters + 2, width=w, height=h)
        pl, _, pairs, lm, rm = load_world(Path(tmp.name), cfg, settings)
    else:
        left, right, lm, rm = _pair(scene, size, seed)
        pl = DepthPipeline(settings)
        pairs = [(None, left, right)]
    c = pl.matcher_config
    counter = {'frame': 0, 'base': 0}
    sgbm = cv2.StereoSGBM.create(  # "OpenCV SGBM alone": the pipeline's own left pass
        minDisparity=c.min_disparity, numDisparities=c.num_disparities, blockSize=c.block_size,
        P1=c.p1 or 8 * c.block_size ** 2, P2=c.p2 or 32 * c.block_size ** 2, disp12MaxDiff=1,
        preFilterCap=c.pre_filter_cap, uniquenessRatio=c.uniqueness_ratio,
        speckleWindowSize=c.speckle_window_size, speckleRange=c.speckle_range,
        mode=getattr(cv2, _MODES[c.mode]))

    last: dict[str, Any] = {}

    def frame() -> dict[str, float]:
        stamp, left, right = pairs[counter['frame'] % len(pairs)]
        counter['frame'] += 1
        t0 = time.perf_counter()
        r = pl.process(left, right, lm, rm, stamp_ns=stamp)
        last['result'] = r
        t1 = time.perf_counter()
        pack_points(r, organized=bool(pl.params['output.organized']))
        t2 = time.perf_counter()
        tm = dict(r.timings_ms)
        st: dict[str, float] = {}
        if 'match' in tm:  # the host matcher: match = match_left + match_right + the rest
            for k in ('match_left', 'match_right'):
                if k in tm:
                    st[k] = tm[k]
            st['match_post'] = tm['match'] - sum(st.values())
        for k, v in tm.items():
            if k not in ('match', 'match_left', 'match_right', 'total'):
                st[k] = v
        st['pack'] = (t2 - t1) * 1e3
        total = (t2 - t0) * 1e3
        # the pose and the prior's cast run beside the stereo: dem_wait is what the frame
        # waited for them, their own times overlap the others and are not summed
        beside = BESIDE_STEREO if 'dem_wait' in st else ()
        st['other'] = total - sum(v for k, v in st.items() if k not in beside)
        st['total'] = total
        return st

    def base() -> float:
        _, left, right = pairs[counter['base'] % len(pairs)]
        counter['base'] += 1
        t0 = time.perf_counter()
        sgbm.compute(left, right)
        return (time.perf_counter() - t0) * 1e3

    for _ in range(warmup):
        frame()
        base()
    runs, bases = [], []
    for i in range(iters):
        if i % 2:  # alternate the order: neither side always runs on a warmer cache
            bases.append(base())
            runs.append(frame())
        else:
            runs.append(frame())
            bases.append(base())
    march_cmp = None
    prior = pl.georef.prior if pl.georef is not None else None
    if prior is not None:
        # the same frames' ray-casts with the torch loop: the march's baseline, same process
        from ..core.raycast import resolve_march

        field = prior.grid.field
        used = resolve_march(prior.march, field.device, field.height.dtype)
        if used != 'torch':
            keep = prior.march
            prior.march = 'torch'
            try:
                torch_runs = [frame() for _ in range(2)]
            finally:
                prior.march = keep
            cast = ('dem_raycast', 'dem_sigma_points')
            ours = _median([sum(r.get(k, 0.0) for k in cast) for r in runs])
            base_t = _median([sum(r.get(k, 0.0) for k in cast) for r in torch_runs])
            march_cmp = {'march': used, 'raycast_ms': round(ours, 3),
                         'torch_loop_raycast_ms': round(base_t, 3),
                         'speedup': round(base_t / ours, 3) if ours > 0 else None,
                         'vs_torch_loop': _prior_vs_reference(pl, pairs[-1][0], lm)}
    if tmp is not None:
        tmp.cleanup()
    keys = list(dict.fromkeys(k for r in runs for k in r if k != 'total'))
    classes = {k: round(float(v), 4) for k, v in last['result'].class_fractions().items()}
    stages = {k: _median([r.get(k, 0.0) for r in runs]) for k in keys}
    total = _median([r['total'] for r in runs])
    baseline = _median(bases)
    paired = _median([r['total'] / b for r, b in zip(runs, bases, strict=True) if b > 0])
    return {
        'mode': 'pipeline', 'device': _device_name_str(pl.device), 'matcher': pl.matcher_name,
        'scene': scene, 'size': f'{w}x{h}', 'disparities': disparities,
        'stages_ms': {k: round(v, 4) for k, v in stages.items()}, 'total_ms': round(total, 4),
        'baseline_opencv_sgbm_ms': round(baseline, 4),
        'ratio_to_baseline': round(total / baseline, 4) if baseline > 0 else None,
        'ratio_paired_median': round(paired, 4),
        'lr_check': c.lr_check, 'lr_check_resolution': c.lr_check_resolution,
        'iters': iters, 'warmup': warmup, 'cv_threads': cv2.getNumThreads(),
        'classes': classes,  # provenance fractions of the last frame
        **({'dem_march': march_cmp} if march_cmp else {}),
    }


def _prior_vs_reference(pl: Any, stamp: int, model: Any) -> dict[str, Any]:
    """One frame's prior cast as the pipeline runs it against the reference (the torch loop,
    every pixel cast, ``cast_stride`` 1): pixels whose status differs, and per status of the
    reference the largest range difference (m) among pixels of that status in both, and the
    largest relative difference of the prior sigma (HIT)."""
    import numpy as np

    from ..core.raycast import RayStatus

    prior = pl.georef.prior
    pose, why = pl.georef.pose.pose_at(stamp)
    if pose is None:
        return {'error': why}
    ours = prior.cast(pose, model)
    info = dict(prior.last_cast_info)
    keep = prior.march, prior.cast_stride
    prior.march, prior.cast_stride = 'torch', 1
    try:
        ref = prior.cast(pose, model)
    finally:
        prior.march, prior.cast_stride = keep
    out: dict[str, Any] = {'cast': info, 'pixels': int(ref['status'].size),
                           'status_differs': int((ours['status'] != ref['status']).sum())}
    for st in RayStatus:
        both = (ours['status'] == st) & (ref['status'] == st)
        with np.errstate(invalid='ignore'):
            dr = np.abs(ours['range_m'].astype(np.float64) - ref['range_m'])[both]
        dr = dr[np.isfinite(dr)]
        out[f'max_range_diff_m.{st.name}'] = round(float(dr.max()), 6) if dr.size else None
    hit = (ours['status'] == RayStatus.HIT) & (ref['status'] == RayStatus.HIT)
    with np.errstate(invalid='ignore', divide='ignore'):
        rel = np.abs(ours['sigma_m'].astype(np.float64) / ref['sigma_m'] - 1.0)[hit]
    rel = rel[np.isfinite(rel)]
    if rel.size:
        out['sigma_rel_diff.p50'] = round(float(np.median(rel)), 5)
        out['sigma_rel_diff.p99'] = round(float(np.percentile(rel, 99)), 5)
        out['sigma_rel_diff.max'] = round(float(rel.max()), 5)
    return out


def _device_name_str(device: str) -> str:
    import torch

    return _device_name(torch.device(device))


def _device_name(dev: Any) -> str:
    import torch

    if dev.type == 'cuda':
        return f'cuda: {torch.cuda.get_device_name(dev)}'
    import platform

    return f'cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)'


def run_accuracy(device: str = 'cpu', size: tuple[int, int] = (640, 480), disparities: int = 128,
                 paths: int = 8, seed: int = 0) -> dict[str, Any]:
    """bad-2.0 and density of TorchSGMMatcher and OpenCV SGBM on Cones and the analytic scene."""
    from ..core.scene import SURFACE_SKY, render_scene
    from ..core.sgm import SGMConfig, TorchSGMMatcher, bad_pixel_rate
    from ..core.stereo import MatcherConfig, OpenCVStereoMatcher
    from .calibrate_sigma import load_cones

    out: dict[str, Any] = {}
    cases = []
    try:
        cones = load_cones()
    except FileNotFoundError as exc:
        _LOG.warning('%s: skipped', exc)
    else:
        cases.append(('cones', cones[0], cones[1], cones[2], cones[2] > 0, 64))
    scene = render_scene(size[0], size[1], seed=seed)
    truth = (scene.surface != SURFACE_SKY) & ~scene.occluded
    cases.append(('scene', scene.left, scene.right, scene.disparity, truth, disparities))
    for name, left, right, gt, valid, nd in cases:
        res: dict[str, Any] = {'disparities': nd}
        ours = TorchSGMMatcher(SGMConfig(num_disparities=nd, paths=paths), device).match(left, right)
        cv = OpenCVStereoMatcher(MatcherConfig(num_disparities=nd)).match(left, right)
        for tag, r in (('sgm_torch', ours), ('opencv_sgbm', cv)):
            bad, dens = bad_pixel_rate(r.disparity, gt, 2.0, valid)
            res[tag] = {'bad2': round(bad, 5), 'density': round(dens, 5)}
        out[name] = res
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    try:
        if args.pipeline:
            result = run_pipeline_bench(args.device, args.size, args.disparities, args.matcher,
                                        args.warmup, args.iters, args.seed, args.scene,
                                        parse_sets(args.set))
            if args.accuracy:
                result['accuracy'] = run_accuracy(args.device, args.size, args.disparities,
                                                  args.paths, args.seed)
            if args.json:
                print(json.dumps(result))
            else:
                _print_pipeline(result)
            return 0
        result = run_bench(args.device, args.size, args.disparities, args.paths, args.warmup,
                           args.iters, args.rectify, args.seed, graph=not args.no_graph,
                           agg_lines=args.agg_lines)
        if args.accuracy:
            result['accuracy'] = run_accuracy(args.device, args.size, args.disparities, args.paths,
                                              args.seed)
    except ValueError as exc:
        print(f'geo-depth bench: {exc}', file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"device {result['device']}, {result['size']}, {result['disparities']} disparities, "
          f"{result['paths']} paths, median of {result['iters']} frames")
    for k, v in result['stages_ms'].items():
        print(f'  {k:<20s} {v:9.3f} ms')
    if result['cuda_graph']:
        print('  eager breakdown (no graph): ' + ', '.join(
            f'{k} {v:.3f}' for k, v in result['eager_stages_ms'].items())
            + f"; total {result['eager_total_ms']:.3f} ms")
    print(f"  {'total':<20s} {result['total_ms']:9.3f} ms   (wall {result['wall_ms']:.3f} ms)")
    print(f"OpenCV SGBM (OpenCVStereoMatcher.match, same disparities): "
          f"{result['baseline_opencv_sgbm_ms']:.3f} ms; ratio total/baseline "
          f"{result['ratio_to_baseline']}")
    _print_accuracy(result)
    return 0


def _print_accuracy(result: Mapping[str, Any]) -> None:
    for case, res in result.get('accuracy', {}).items():
        for tag in ('sgm_torch', 'opencv_sgbm'):
            print(f"{case:6s} {tag:12s} bad-2.0 {100 * res[tag]['bad2']:6.2f} %  "
                  f"density {res[tag]['density']:.3f}  ({res['disparities']} disparities)")


def _print_pipeline(result: Mapping[str, Any]) -> None:
    lr = result['lr_check_resolution'] if result['lr_check'] else 'off'
    print(f"pipeline ({result['matcher']}, LR check {lr}) on {result['device']}, {result['scene']} "
          f"{result['size']}, {result['disparities']} disparities, median of {result['iters']} "
          f"frames interleaved with bare SGBM ({result['cv_threads']} OpenCV threads)")
    beside = BESIDE_STEREO if 'dem_wait' in result['stages_ms'] else ()
    for k, v in result['stages_ms'].items():
        print(f'  {k:20s} {v:9.3f} ms' + ('  (beside the stereo)' if k in beside else ''))
    print(f"  {'total (frame)':20s} {result['total_ms']:9.3f} ms")
    print(f"OpenCV StereoSGBM alone (same images, settings, disparities): "
          f"{result['baseline_opencv_sgbm_ms']:.3f} ms; ratio frame/SGBM "
          f"{result['ratio_to_baseline']} (median of per-frame ratios "
          f"{result['ratio_paired_median']})")
    print('provenance of the last frame: ' + ', '.join(
        f'{k} {100 * v:.1f} %' for k, v in result['classes'].items()))
    m = result.get('dem_march')
    if m:
        print(f"DEM ray-casts (dem_raycast + dem_sigma_points) with the {m['march']} march "
              f"{m['raycast_ms']:.1f} ms, with the torch loop (same frames, same process) "
              f"{m['torch_loop_raycast_ms']:.1f} ms: {m['speedup']}x")
        v = m.get('vs_torch_loop') or {}
        if 'pixels' in v:
            print(f"prior of the last frame against the reference (torch loop, every pixel): "
                  f"status differs for {v['status_differs']} of {v['pixels']} pixels; "
                  "largest range difference " + ', '.join(
                      f"{k.split('.')[-1]} {val} m" for k, val in v.items()
                      if k.startswith('max_range_diff_m.') and val is not None)
                  + f"; prior sigma relative difference p50 {v.get('sigma_rel_diff.p50')}, "
                  f"p99 {v.get('sigma_rel_diff.p99')}, max {v.get('sigma_rel_diff.max')}")
            print(f"its cast: {v['cast']}")
    _print_accuracy(result)


if __name__ == '__main__':
    sys.exit(main())
