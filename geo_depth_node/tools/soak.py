"""`geo-depth soak`: long runs of the frame path by hand: memory, buffers, drops, counters.

Two modes:

* soak (default): ``--frames`` frames (default 2000) of a small synthetic world WITH its DEM
  and its pose inputs (IMU + GNSS, or ``--pose odometry``: the world's odometry) through
  :class:`~geo_depth_node.core.pipeline.DepthPipeline`, as the node runs them. The world
  (``--world-frames`` frames, generated once into ``--workdir`` or a temporary directory) is
  replayed in passes, forward, backward, forward, ...: every pass restamps the images and
  pose inputs alike, one pass after the other, so time only goes forward, the vehicle never
  jumps, and the pose buffers fill up to ``buffer_s`` as on a long drive. Pose inputs are
  fed up to a little past each frame's stamp before the frame (the node's order). Every
  ``--every`` frames it prints: frames, RSS (MB), RSS growth since the warm-up (``--warmup``
  frames, after a ``gc.collect()``), the pose buffer lengths against their bounds
  (``buffer_s`` times the input's rate), frames with a pose, and frame milliseconds p50 / p95
  over the last ``--every`` frames.
* flood (``--flood``): the node's input path without ROS: the four stereo inputs (left/right
  image and camera_info, SimpleNamespace messages with the fields of the ROS messages) fed at
  ``--rate`` Hz for ``--seconds`` into a :class:`~geo_depth_node.core.sync.TimeSynchronizer`
  (approximate, as the node builds it) whose sets go into a
  :class:`~geo_depth_node.core.workqueue.DropOldestQueue` drained by one
  :class:`~geo_depth_node.core.workqueue.Worker` that decodes, runs the pipeline, packs the
  cloud and then sleeps ``--work-ms`` (a slow pipeline). ``--loss`` of the right images are
  lost on the way (their frames' other messages are dropped unmatched). It prints, every
  second and at the end: sent, received (sets the synchroniser completed), processed,
  dropped_frames_queue, dropped_unmatched, the largest synchroniser queue and work queue seen.
  After the worker drained the queue, received == processed + dropped_frames_queue and every
  message sent is accounted for (4 x received + dropped_unmatched + still pending +
  out_of_order).

``--json`` prints one JSON object at the end (the progress lines go to stderr). The exit status
is 1 when an invariant broke (a buffer over its bound, RSS growth above
``--max-rss-growth-mb``, counters that do not add up), else 0.

Examples::

    geo-depth soak --frames 2000 --size 160x120 --every 100
    geo-depth soak --flood --rate 50 --seconds 10 --work-ms 40 --json
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np

from .bag_io import INPUTS  # the synchroniser's inputs, in the node's order

#: Stamp of the flood's first frame (any positive stamp).
FLOOD_T0_NS = 1_700_000_000 * 1_000_000_000
#: How far past a frame's stamp the pose inputs are fed before the frame (the GNSS fix after
#: the stamp arrives within one GNSS period, 0.1 s at 10 Hz).
POSE_LOOKAHEAD_NS = 150_000_000


def rss_mb() -> float:
    """Resident set size of this process, MB (VmRSS of /proc/self/status); NaN where there is
    no /proc."""
    try:
        with open('/proc/self/status', encoding='ascii') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return float('nan')
    return float('nan')


def percentiles(values: list[float]) -> tuple[float, float]:
    """(p50, p95) of ``values`` (NaN, NaN when empty)."""
    if not values:
        return float('nan'), float('nan')
    a = np.asarray(values, dtype=np.float64)
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


# ----------------------------------------------------------------------------- the soak
@dataclasses.dataclass
class SoakWorld:
    """A synthetic world loaded for looping.

    Attributes:
        pipeline: the node's DepthPipeline with the world's params (DEM source, datum,
            extrinsics) and the chosen pose source.
        frames: [(stamp_ns, left, right)] of one loop, (H, W) uint8 rectified images.
        left, right: the CameraModels (from the bag's CameraInfo, through the node's decoder).
        pose_inputs: [(stamp_ns, kind, sample)] of one loop, by stamp; kind 'imu', 'gnss' or
            'odometry' (core.pose samples).
        t_min_ns, t_max_ns: first and last stamp of the world (frames and pose inputs).
        loop_ns: time from the start of one pass to the start of the next (the world's span
            plus one frame period).
        rates_hz: measured rate of each pose input kind.
        world_s: seconds spent generating and loading the world.
    """

    pipeline: Any
    frames: list[tuple[int, np.ndarray, np.ndarray]]
    left: Any
    right: Any
    pose_inputs: list[tuple[int, str, Any]]
    t_min_ns: int
    t_max_ns: int
    loop_ns: int
    rates_hz: dict[str, float]
    world_s: float


def load_soak_world(workdir: str | Path, *, width: int = 160, height: int = 120,
                    world_frames: int = 10, seed: int = 0, num_disparities: int = 32,
                    baseline_m: float = 0.5, pose_source: str = 'gnss_imu',
                    params: dict[str, Any] | None = None) -> SoakWorld:
    """Generate a small synthetic world (a 300 m DEM, few objects; a 0.5 m baseline by default,
    so that small images still have stereo points to fuse) into ``workdir`` and load it for
    :func:`run_soak`: its bag's images, CameraInfo and pose inputs (decoded with the node's
    converters) and a DepthPipeline with the world's params plus ``stereo.num_disparities``,
    ``pose.source`` and ``params``.

    Raises:
        ValueError: a bad size, pose source or parameter.
    """
    from rosbags.highlevel import AnyReader

    from ..core.camera import camera_model_from_msg
    from ..core.params import load_params_yaml
    from ..core.pipeline import DepthPipeline
    from ..core.pose import gnss_fix_from_msg, imu_sample_from_msg, odometry_sample_from_msg
    from ..synth.config import SynthConfig
    from ..synth.generate import generate_world

    if pose_source not in ('gnss_imu', 'odometry'):
        raise ValueError(f'pose source must be gnss_imu or odometry, got {pose_source!r}')
    t0 = time.perf_counter()
    cfg = SynthConfig(width=width, height=height, frames=world_frames, seed=seed,
                      baseline_m=baseline_m, dem_extent_m=300.0, extent_m=400.0, objects=4)
    info = generate_world(workdir, cfg, progress=False)
    values = load_params_yaml(info['params'])
    values.update({'stereo.num_disparities': int(num_disparities), 'pose.source': pose_source})
    values.update(params or {})
    pipeline = DepthPipeline(values)
    pipeline.warm_up()
    wanted = {'/imu/data': ('imu', imu_sample_from_msg),
              '/gnss/fix': ('gnss', gnss_fix_from_msg),
              '/ground_truth/odometry': ('odometry', odometry_sample_from_msg)}
    if pose_source == 'odometry':
        del wanted['/imu/data'], wanted['/gnss/fix']
    else:
        del wanted['/ground_truth/odometry']
    images: dict[int, dict[str, np.ndarray]] = {}
    infos: dict[str, Any] = {}
    pose_inputs: list[tuple[int, str, Any]] = []
    with AnyReader([Path(info['bag'])]) as reader:
        for conn, _, raw in reader.messages():
            if conn.topic in wanted:
                kind, convert = wanted[conn.topic]
                sample = convert(reader.deserialize(raw, conn.msgtype))
                pose_inputs.append((int(sample.stamp_ns), kind, sample))
            elif conn.topic in ('/left/image_rect', '/right/image_rect'):
                m = reader.deserialize(raw, conn.msgtype)
                stamp = int(m.header.stamp.sec) * 1_000_000_000 + int(m.header.stamp.nanosec)
                images.setdefault(stamp, {})[conn.topic.split('/')[1]] = \
                    np.ascontiguousarray(m.data.reshape(m.height, m.width))
            elif conn.topic in ('/left/camera_info', '/right/camera_info') \
                    and conn.topic not in infos:
                infos[conn.topic] = camera_model_from_msg(reader.deserialize(raw, conn.msgtype))
    frames = [(s, v['left'], v['right']) for s, v in sorted(images.items())
              if 'left' in v and 'right' in v]
    if not frames or not pose_inputs:
        raise ValueError(f'the world in {workdir} has no stereo frames or pose inputs')
    pose_inputs.sort(key=lambda e: e[0])
    stamps = [f[0] for f in frames] + [p[0] for p in pose_inputs]
    period_ns = int(round(1e9 / cfg.rate_hz))
    loop_ns = max(stamps) - min(stamps) + period_ns
    rates = {}
    for kind in sorted({k for _, k, _ in pose_inputs}):
        ts = [t for t, k, _ in pose_inputs if k == kind]
        rates[kind] = (len(ts) - 1) / max((ts[-1] - ts[0]) * 1e-9, 1e-9)
    return SoakWorld(pipeline, frames, infos['/left/camera_info'], infos['/right/camera_info'],
                     pose_inputs, min(stamps), max(stamps), loop_ns, rates,
                     time.perf_counter() - t0)


def pose_buffer_lengths(pipeline: Any) -> dict[str, int]:
    """Lengths of the pose source's sample buffers: 'gnss' and 'imu' (PoseEstimator) or
    'odometry' (OdometryPoseSource); {} without DEM sources."""
    georef = getattr(pipeline, 'georef', None)
    if georef is None:
        return {}
    pose = georef.pose
    with georef.lock:
        if hasattr(pose, '_gnss_t'):
            return {'gnss': len(pose._gnss_t), 'imu': len(pose._att_t)}
        return {'odometry': len(pose._t)}


def pose_buffer_bounds(pipeline: Any, rates_hz: dict[str, float]) -> dict[str, int]:
    """Most samples each pose buffer may hold: the samples of ``buffer_s`` seconds at the
    input's rate, both ends included, plus one (the buffers are trimmed to ``buffer_s`` before
    their second newest stamp, so that one stray future stamp never empties them)."""
    georef = getattr(pipeline, 'georef', None)
    if georef is None:
        return {}
    buffer_s = float(georef.pose.config.buffer_s)
    return {k: int(math.floor(round(buffer_s * r, 3))) + 2 for k, r in rates_hz.items()}


def _pass_stamp(world: SoakWorld, t_ns: int, k: int) -> int:
    """Stamp of the world's stamp ``t_ns`` in pass ``k``: even passes play the world forward,
    odd ones backward, each pass ``loop_ns`` after the previous one (so the vehicle never
    jumps: a backward pass starts where the forward pass ended)."""
    rel = t_ns - world.t_min_ns if k % 2 == 0 else world.t_max_ns - t_ns
    return world.t_min_ns + k * world.loop_ns + rel


def _looped_pose_inputs(world: SoakWorld) -> Iterator[tuple[int, str, Any]]:
    """The world's pose inputs, pass after pass (forward, backward, ...), restamped."""
    k = 0
    while True:
        seq = world.pose_inputs if k % 2 == 0 else world.pose_inputs[::-1]
        for t, kind, sample in seq:
            s = _pass_stamp(world, t, k)
            yield s, kind, dataclasses.replace(sample, stamp_ns=s)
        k += 1


def _looped_frame(world: SoakWorld, i: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Frame ``i`` of the looped world: (stamp, left, right)."""
    n = len(world.frames)
    k, j = divmod(i, n)
    t, left, right = world.frames[j if k % 2 == 0 else n - 1 - j]
    return _pass_stamp(world, t, k), left, right


def run_soak(world: SoakWorld, frames: int, *, every: int = 100, warmup: int = 20,
             report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``frames`` frames of ``world`` (looped) through its pipeline.

    Args:
        world: from :func:`load_soak_world`.
        frames: number of frames.
        every: a progress line every this many frames (0 = none).
        warmup: frames before the RSS baseline (taken after gc.collect()).
        report: receives the progress lines (None = no progress).

    Returns:
        frames, pose_ok (frames with a pose), rss_start_mb / rss_warm_mb / rss_end_mb,
        rss_growth_mb (end - warm, after gc.collect(); None when frames <= warmup),
        max_pose_buffers and pose_buffer_bounds (per buffer), buffers_ok, frame_ms_p50 /
        frame_ms_p95 (after the warm-up), fractions (mean class fractions), loop_s,
        world_s, seconds (wall time of the frames).
    """
    pipe = world.pipeline
    bounds = pose_buffer_bounds(pipe, world.rates_hz)
    feed = _looped_pose_inputs(world)
    pending = next(feed)
    adders = {'imu': pipe.add_imu, 'gnss': pipe.add_gnss, 'odometry': pipe.add_odometry}
    gc.collect()
    rss_start = rss_mb()
    rss_warm: float | None = None
    ms: list[float] = []
    max_buf: dict[str, int] = {}
    pose_ok = 0
    fractions: dict[str, float] = {}
    t_run = time.perf_counter()
    for i in range(frames):
        stamp, left, right = _looped_frame(world, i)
        while pending[0] <= stamp + POSE_LOOKAHEAD_NS:
            adders[pending[1]](pending[2])
            pending = next(feed)
        t = time.perf_counter()
        res = pipe.process(left, right, world.left, world.right, stamp_ns=stamp)
        ms.append((time.perf_counter() - t) * 1e3)
        pose_ok += int(res.pose_status == 'ok')
        for k, v in res.class_fractions().items():
            fractions[k] = fractions.get(k, 0.0) + v / frames
        for k, v in pose_buffer_lengths(pipe).items():
            max_buf[k] = max(max_buf.get(k, 0), v)
        if i + 1 == warmup:
            gc.collect()
            rss_warm = rss_mb()
        if report is not None and every > 0 and ((i + 1) % every == 0 or i + 1 == frames):
            p50, p95 = percentiles(ms[-every:])
            rss = rss_mb()
            growth = f'{rss - rss_warm:+7.1f}' if rss_warm is not None else '    n/a'
            bufs = ' '.join(f'{k} {v}/{bounds.get(k, "?")}'
                            for k, v in pose_buffer_lengths(pipe).items())
            report(f'frame {i + 1:6d}  RSS {rss:7.1f} MB  growth {growth} MB  buffers {bufs}  '
                   f'pose ok {pose_ok}/{i + 1}  frame ms p50 {p50:6.1f} p95 {p95:6.1f}')
    seconds = time.perf_counter() - t_run
    gc.collect()
    rss_end = rss_mb()
    p50, p95 = percentiles(ms[warmup:] if frames > warmup else ms)
    return {
        'mode': 'soak', 'frames': frames, 'pose_ok': pose_ok,
        'rss_start_mb': rss_start, 'rss_warm_mb': rss_warm, 'rss_end_mb': rss_end,
        'rss_growth_mb': None if rss_warm is None else rss_end - rss_warm,
        'max_pose_buffers': max_buf, 'pose_buffer_bounds': bounds,
        'buffers_ok': all(v <= bounds.get(k, v) for k, v in max_buf.items()),
        'frame_ms_p50': p50, 'frame_ms_p95': p95, 'fractions': fractions,
        'loop_s': world.loop_ns * 1e-9, 'world_s': world.world_s, 'seconds': seconds,
        'size': [int(world.left.width), int(world.left.height)],
    }


# ----------------------------------------------------------------------------- the flood
def flood_messages(width: int, height: int, seed: int = 0, shift: int = 8
                   ) -> dict[str, SimpleNamespace]:
    """One stereo frame as message-like objects (fields of sensor_msgs/Image and CameraInfo):
    a textured mono8 pair with disparity ``shift`` and its rectified CameraInfos (fx = width,
    B = 0.1 m). The stamps are set per frame by :func:`stamped`."""
    rng = np.random.default_rng(seed)
    ext = rng.integers(0, 256, (height, width + shift)).astype(np.uint8)
    images = {'left_image': np.ascontiguousarray(ext[:, :width]),
              'right_image': np.ascontiguousarray(ext[:, shift:])}
    fx = float(width)
    out: dict[str, SimpleNamespace] = {}
    for side in ('left', 'right'):
        img = images[f'{side}_image']
        out[f'{side}_image'] = SimpleNamespace(
            header=None, height=height, width=width, encoding='mono8', is_bigendian=0,
            step=width, data=img.tobytes())
        tx = 0.0 if side == 'left' else -fx * 0.1
        out[f'{side}_info'] = SimpleNamespace(
            header=None, width=width, height=height, distortion_model='plumb_bob',
            d=[0.0] * 5, k=[fx, 0.0, width / 2, 0.0, fx, height / 2, 0.0, 0.0, 1.0],
            r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            p=[fx, 0.0, width / 2, tx, 0.0, fx, height / 2, 0.0, 0.0, 0.0, 1.0, 0.0],
            binning_x=0, binning_y=0,
            roi=SimpleNamespace(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    return out


def stamped(template: SimpleNamespace, stamp_ns: int, frame_id: str) -> SimpleNamespace:
    """A shallow copy of a message with its own header (the pixel buffer is shared)."""
    msg = SimpleNamespace(**vars(template))
    msg.header = SimpleNamespace(stamp=SimpleNamespace(sec=stamp_ns // 1_000_000_000,
                                                       nanosec=stamp_ns % 1_000_000_000),
                                 frame_id=frame_id)
    return msg


def run_flood(*, rate_hz: float = 50.0, seconds: float = 10.0, width: int = 160,
              height: int = 120, num_disparities: int = 32, work_ms: float = 40.0,
              loss: float = 0.02, sync_queue_size: int = 10, queue_size: int = 2,
              slop_s: float = 0.005, seed: int = 0,
              report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Feed the node's input path (synchroniser -> drop-oldest queue -> worker) at ``rate_hz``
    for ``seconds`` with a worker that is slower than the input (see the module docstring).

    Returns:
        frames_sent, messages_sent, lost (right images not sent), received (sets the
        synchroniser completed and queued), processed, dropped_frames_queue,
        dropped_unmatched, out_of_order, pending_end (messages still in the synchroniser),
        errors (worker handler exceptions), max_sync_pending (per input) and
        max_queue_len with their limits, frame_ms_p50 / p95 (decode + pipeline + pack), the
        checks ``frames_add_up`` (received == processed + dropped_frames_queue),
        ``messages_add_up`` and ``bounded``, and rss_start_mb / rss_end_mb.

    Raises:
        ValueError: a non-positive rate or duration, or a loss outside [0, 1).
    """
    from ..core.cloud import pack_points
    from ..core.frame_io import decode_stereo
    from ..core.pipeline import DepthPipeline
    from ..core.sync import TimeSynchronizer
    from ..core.workqueue import DropOldestQueue, Worker
    from .bag_io import stamp_ns

    if not (rate_hz > 0 and seconds > 0 and 0 <= loss < 1 and work_ms >= 0):
        raise ValueError(f'flood needs rate > 0, seconds > 0, 0 <= loss < 1, work_ms >= 0; got '
                         f'{rate_hz}, {seconds}, {loss}, {work_ms}')
    pipe = DepthPipeline({'stereo.matcher': 'opencv_sgbm',
                          'stereo.num_disparities': int(num_disparities)})
    pipe.warm_up()
    templates = flood_messages(width, height, seed)
    ms: list[float] = []
    lock = threading.Lock()

    def handle(frame: dict[str, Any]) -> None:
        t = time.perf_counter()
        left, right, lm, rm = decode_stereo(frame, 0)  # as the node's worker
        res = pipe.process(left, right, lm, rm, stamp_ns=stamp_ns(frame['left_image']))
        pack_points(res, organized=True)
        with lock:
            ms.append((time.perf_counter() - t) * 1e3)
        if work_ms > 0:
            time.sleep(work_ms * 1e-3)

    queue: DropOldestQueue[dict[str, Any]] = DropOldestQueue(int(queue_size))
    errors: list[str] = []
    worker = Worker(queue, handle, name='geo_depth_flood_worker',
                    on_error=lambda exc: errors.append(repr(exc)))
    sync = TimeSynchronizer(INPUTS, queue.put, mode='approximate',
                            slop_ns=int(round(slop_s * 1e9)), queue_size=int(sync_queue_size))
    rng = np.random.default_rng(seed)
    period_ns = int(round(1e9 / rate_hz))
    max_pending = {n: 0 for n in INPUTS}
    max_queue = 0
    sent = lost = 0
    gc.collect()
    rss_start = rss_mb()
    worker.start()
    t_start = time.monotonic()
    next_report = 1.0
    k = 0

    def counters() -> dict[str, int]:
        st = sync.stats
        return {'frames_sent': k, 'messages_sent': sent, 'lost': lost, 'received': st.matched,
                'processed': worker.processed, 'dropped_frames_queue': queue.dropped,
                'dropped_unmatched': st.dropped_unmatched, 'out_of_order': st.out_of_order}

    while True:
        now = time.monotonic() - t_start
        if now >= seconds:
            break
        due = k / rate_hz
        if now < due:
            time.sleep(due - now)
        stamp = FLOOD_T0_NS + k * period_ns
        for idx in rng.permutation(len(INPUTS)):
            name = INPUTS[int(idx)]
            if name == 'right_image' and rng.random() < loss:
                lost += 1
                continue
            side = name.split('_')[0]
            sync.add(name, stamp, stamped(templates[name], stamp, f'{side}_camera_optical_frame'))
            sent += 1
            for n, stamps in sync.pending_stamps().items():
                max_pending[n] = max(max_pending[n], len(stamps))
            max_queue = max(max_queue, len(queue))
        k += 1
        if report is not None and now >= next_report:
            next_report += 1.0
            c = counters()
            report(f't {now:5.1f} s  sent {c["frames_sent"]}  received {c["received"]}  '
                   f'processed {c["processed"]}  dropped_frames_queue '
                   f'{c["dropped_frames_queue"]}  dropped_unmatched {c["dropped_unmatched"]}  '
                   f'queue {len(queue)}/{queue.maxsize}  RSS {rss_mb():.1f} MB')
    worker.stop(timeout=max(10.0, 20 * work_ms * 1e-3 * queue_size))
    c = counters()
    pending_end = sum(len(v) for v in sync.pending_stamps().values())
    p50, p95 = percentiles(ms)
    out: dict[str, Any] = {
        'mode': 'flood', **c, 'pending_end': pending_end, 'errors': len(errors),
        'first_error': errors[0] if errors else '',
        'max_sync_pending': max_pending, 'sync_queue_size': int(sync_queue_size),
        'max_queue_len': max_queue, 'queue_size': int(queue_size),
        'frame_ms_p50': p50, 'frame_ms_p95': p95, 'rate_hz': rate_hz, 'seconds': seconds,
        'work_ms': work_ms, 'size': [width, height], 'rss_start_mb': rss_start,
        'rss_end_mb': rss_mb()}
    out['frames_add_up'] = c['received'] == c['processed'] + c['dropped_frames_queue']
    out['messages_add_up'] = c['messages_sent'] == (4 * c['received'] + c['dropped_unmatched']
                                                    + pending_end + c['out_of_order'])
    out['bounded'] = (max(max_pending.values()) <= sync_queue_size and max_queue <= queue_size)
    return out


# ----------------------------------------------------------------------------- command line
def _parse_size(text: str) -> tuple[int, int]:
    from .bench import parse_size

    return parse_size(text, 64, 48)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``geo-depth soak``."""
    p = argparse.ArgumentParser(prog='geo-depth soak', description=__doc__.split('\n\n')[0],
                                epilog='See the module docstring (geo_depth_node/tools/soak.py).')
    a = p.add_argument
    a('--flood', action='store_true', help='run the flood instead of the soak')
    a('--frames', type=int, default=2000, help='soak: frames (default 2000)')
    a('--size', type=_parse_size, default=(160, 120), help='WxH of the images (default 160x120)')
    a('--disparities', type=int, default=32, help='stereo.num_disparities (default 32)')
    a('--every', type=int, default=100, help='soak: a line every K frames (default 100)')
    a('--warmup', type=int, default=20, help='soak: frames before the RSS baseline (default 20)')
    a('--pose', choices=('gnss_imu', 'odometry'), default='gnss_imu',
      help='soak: pose inputs, IMU + GNSS or the world\'s odometry (default gnss_imu)')
    a('--world-frames', type=int, default=10, help='soak: frames of the looped world (default 10)')
    a('--workdir', help='soak: where the world is generated (default: a temporary directory)')
    a('--max-rss-growth-mb', type=float, default=20.0,
      help='soak: exit 1 when RSS grows more than this after the warm-up (default 20)')
    a('--rate', type=float, default=50.0, help='flood: input frame rate, Hz (default 50)')
    a('--seconds', type=float, default=10.0, help='flood: how long, s (default 10)')
    a('--work-ms', type=float, default=40.0,
      help='flood: extra time the worker takes per frame, ms (a slow pipeline; default 40)')
    a('--loss', type=float, default=0.02,
      help='flood: fraction of right images lost (default 0.02)')
    a('--sync-queue-size', type=int, default=10, help='flood: sync.queue_size (default 10)')
    a('--queue-size', type=int, default=2, help='flood: processing_queue_size (default 2)')
    a('--set', action='append', default=[], metavar='NAME=VALUE',
      help='soak: extra pipeline parameter (YAML value), e.g. dem.sigma_points=false; repeatable')
    a('--seed', type=int, default=0, help='world / image seed (default 0)')
    a('--json', action='store_true', help='print one JSON object (progress lines on stderr)')
    return p


def _soak_problems(rep: dict[str, Any], max_growth_mb: float) -> list[str]:
    out = []
    if not rep['buffers_ok']:
        out.append(f'pose buffers over their bounds: {rep["max_pose_buffers"]} > '
                   f'{rep["pose_buffer_bounds"]}')
    growth = rep['rss_growth_mb']
    if growth is not None and growth > max_growth_mb:
        out.append(f'RSS grew {growth:.1f} MB after the warm-up (limit {max_growth_mb:g} MB)')
    return out


def _flood_problems(rep: dict[str, Any]) -> list[str]:
    out = []
    if not rep['frames_add_up']:
        out.append(f'received {rep["received"]} != processed {rep["processed"]} + '
                   f'dropped_frames_queue {rep["dropped_frames_queue"]}')
    if not rep['messages_add_up']:
        out.append('messages sent != 4 x received + dropped_unmatched + pending + out_of_order')
    if not rep['bounded']:
        out.append(f'queues over their sizes: sync {rep["max_sync_pending"]} '
                   f'(size {rep["sync_queue_size"]}), work queue {rep["max_queue_len"]} '
                   f'(size {rep["queue_size"]})')
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: ``geo-depth soak``; returns the exit status (1 when an invariant broke)."""
    from .bench import parse_sets

    p = build_parser()
    a = p.parse_args(argv)
    if a.frames < 1 or a.every < 0 or a.warmup < 0 or a.world_frames < 2:
        p.error('need --frames >= 1, --every >= 0, --warmup >= 0, --world-frames >= 2')
    out = sys.stderr if a.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    width, height = a.size
    if a.flood:
        try:
            rep = run_flood(rate_hz=a.rate, seconds=a.seconds, width=width, height=height,
                            num_disparities=a.disparities, work_ms=a.work_ms, loss=a.loss,
                            sync_queue_size=a.sync_queue_size, queue_size=a.queue_size,
                            seed=a.seed, report=say)
        except ValueError as exc:
            p.error(str(exc))
        problems = _flood_problems(rep)
        summary = (f'flood {rep["seconds"]:g} s at {rep["rate_hz"]:g} Hz: sent '
                   f'{rep["frames_sent"]} frames ({rep["lost"]} right images lost), received '
                   f'{rep["received"]}, processed {rep["processed"]}, dropped_frames_queue '
                   f'{rep["dropped_frames_queue"]}, dropped_unmatched {rep["dropped_unmatched"]}, '
                   f'errors {rep["errors"]}; largest sync queue '
                   f'{max(rep["max_sync_pending"].values())}/{rep["sync_queue_size"]}, work queue '
                   f'{rep["max_queue_len"]}/{rep["queue_size"]}; frame ms p50 '
                   f'{rep["frame_ms_p50"]:.1f} p95 {rep["frame_ms_p95"]:.1f}')
    else:
        with tempfile.TemporaryDirectory(prefix='geo_depth_soak_') as tmp:
            say(f'generating a {width}x{height} world with {a.world_frames} frames ...')
            try:
                world = load_soak_world(a.workdir or tmp, width=width, height=height,
                                        world_frames=a.world_frames, seed=a.seed,
                                        num_disparities=a.disparities, pose_source=a.pose,
                                        params=parse_sets(a.set))
            except ValueError as exc:
                p.error(str(exc))
            rep = run_soak(world, a.frames, every=a.every, warmup=a.warmup, report=say)
        problems = _soak_problems(rep, a.max_rss_growth_mb)
        growth = rep['rss_growth_mb']
        summary = (f'soak {rep["frames"]} frames {width}x{height} in {rep["seconds"]:.1f} s: '
                   f'RSS {rep["rss_start_mb"]:.1f} -> {rep["rss_end_mb"]:.1f} MB, growth after '
                   f'the warm-up ' + ('n/a' if growth is None else f'{growth:+.1f} MB')
                   + f'; frame ms p50 {rep["frame_ms_p50"]:.1f} p95 {rep["frame_ms_p95"]:.1f}; '
                   f'pose ok {rep["pose_ok"]}/{rep["frames"]}; max buffers '
                   f'{rep["max_pose_buffers"]} (bounds {rep["pose_buffer_bounds"]})')
    rep['problems'] = problems
    if a.json:
        print(json.dumps(rep, default=float))
    else:
        print(summary)
        for line in problems:
            print(f'PROBLEM: {line}')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
