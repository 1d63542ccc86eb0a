"""`geo-depth replay`: run the node's pipeline offline over a rosbag2, without ROS or DDS.

    geo-depth replay BAG --params PARAMS.yaml --out OUT_DIR [--truth TRUTH.npz] [--frames A:B]
    python -m geo_depth_node.tools.replay BAG --params PARAMS.yaml --out OUT_DIR ...

The bag (sqlite3 or mcap) is read with ``rosbags``; the four stereo inputs (left/right image +
camera_info, the topics the node subscribes to: ``image_rect``, or ``image_raw`` with
``rectify: true``) are paired by header stamp with the node's own synchroniser
(core.sync.TimeSynchronizer with the params' ``sync.*``; exact stamps in our bags), decoded
like the node's worker does, and run through the SAME :class:`DepthPipeline` the node builds
from the same parameters (core.params.load_params_yaml). Written into OUT_DIR:

* ``output.mcap`` (one MCAP file; ``ros2 bag play OUT_DIR/output.mcap``, Foxglove): the
  node's outputs with the INPUT stamps and the left image's frame_id: ``/geo_depth_node/points``
  (PointCloud2, the 24-byte layout of core.contract), ``/geo_depth_node/depth`` and
  ``/geo_depth_node/depth_sigma`` (32FC1, m), ``/geo_depth_node/provenance`` (mono8),
  ``/geo_depth_node/provenance_legend`` (transient local), ``/diagnostics`` (one per frame);
* ``report.json`` (see :func:`replay_bag`);
* ``frame_NNNN.png`` for chosen frames, ``sigma_vs_range.png``, ``cloud_3d.png``;
* ``cloud.ply``: every point with provenance != NONE of every replayed frame, each in its
  own frame's camera optical frame (not georeferenced yet), fields x y z sigma provenance
  flags source.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping, TextIO

import numpy as np

from ..core.contract import POINT_DTYPE, Flag, Provenance
from ..core.frame_stats import FrameStats

_LOG = logging.getLogger(__name__)

NODE_NAME = 'geo_depth_node'
STAGES_WINDOW = 50  # frames kept for the latency statistics of /diagnostics (as the node)
SAMPLES_PER_CLASS_AND_FRAME = 4000  # points kept for the sigma-against-range plot
REL_TOLERANCE = 1e-5  # float32 rounding allowed when checking sigma / range against the limit


# ------------------------------------------------------------------------ helpers
class Progress:
    """A plain-text progress bar with rate and ETA on a stream (stderr), throttled.

    Args:
        total: expected number of items (0 = unknown).
        stream: where to write; a terminal gets one updating line, anything else a line
            every ``interval_s * 10`` seconds.
        interval_s: minimum time between two updates on a terminal.
    """

    def __init__(self, total: int, stream: TextIO | None = None, interval_s: float = 0.5,
                 label: str = 'replay') -> None:
        self.total = max(0, int(total))
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, 'isatty', lambda: False)())
        self.interval_s = interval_s if self.tty else interval_s * 10
        self.label = label
        self.t0 = time.perf_counter()
        self._last = -math.inf
        self._done = 0

    def line(self, done: int) -> str:
        """The progress text for ``done`` items."""
        elapsed = time.perf_counter() - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = min(1.0, done / self.total)
            bar = '#' * int(round(24 * frac))
            eta = (self.total - done) / rate if rate > 0 else math.inf
            eta_s = f'{eta:5.0f} s' if math.isfinite(eta) else '    ? s'
            return (f'{self.label} [{bar:<24}] {done}/{self.total} frames {100 * frac:5.1f} % '
                    f'{rate:5.2f} frames/s ETA {eta_s}')
        return f'{self.label} {done} frames {rate:5.2f} frames/s'

    def update(self, done: int, force: bool = False) -> None:
        """Report ``done`` items (printed at most every interval unless ``force``)."""
        self._done = done
        now = time.perf_counter()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        end = '\r' if self.tty else '\n'
        self.stream.write(self.line(done) + end)
        self.stream.flush()

    def close(self) -> None:
        """Print the final state and end the line."""
        self.update(self._done, force=True)
        if self.tty:
            self.stream.write('\n')
            self.stream.flush()


def parse_frames(frames: Any) -> tuple[int, int | None]:
    """'A:B' | 'A:' | ':B' | 'A' | (A, B) | slice | None -> (start, stop or None), 0-based.

    Frames are the synchronised stereo frames in bag order; B is exclusive (Python slice).

    Raises:
        ValueError: negative or reversed bounds, a step, or unparsable text.
    """
    if frames is None:
        return 0, None
    if isinstance(frames, slice):
        if frames.step not in (None, 1):
            raise ValueError(f'--frames takes no step: {frames!r}')
        start, stop = frames.start, frames.stop
    elif isinstance(frames, str):
        text = frames.strip()
        try:
            if ':' in text:
                a, b = text.split(':', 1)
                start = int(a) if a.strip() else None
                stop = int(b) if b.strip() else None
            else:
                start = int(text)
                stop = start + 1
        except ValueError as exc:
            raise ValueError(f'--frames must look like A:B (0-based, B exclusive), got '
                             f'{frames!r}') from exc
    else:
        try:
            start, stop = frames
        except (TypeError, ValueError) as exc:
            raise ValueError(f'frames must be "A:B", (A, B) or a slice, got {frames!r}') from exc
    start = 0 if start is None else int(start)
    if start < 0 or (stop is not None and int(stop) < start):
        raise ValueError(f'--frames {frames!r}: need 0 <= A <= B (negative indices are not '
                         'supported)')
    return start, (None if stop is None else int(stop))


def _load_params(params: str | os.PathLike | Mapping[str, Any] | None) -> tuple[dict, str]:
    from ..core.params import load_params_yaml

    if params is None:
        return {}, 'defaults'
    if isinstance(params, Mapping):
        return dict(params), 'mapping'
    path = Path(params)
    if not path.is_file():
        raise FileNotFoundError(f'params file {path} does not exist')
    return load_params_yaml(str(path), NODE_NAME), str(path)


def _load_truth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f'truth file {p} does not exist')
    with np.load(p) as z:
        data = {k: z[k] for k in z.files}
    for key in ('stamps_ns', 'depth'):
        if key not in data:
            raise ValueError(f'truth file {p} has no {key!r} array (expected the truth.npz of '
                             '`geo-depth synth` / `geo-depth scene`)')
    if data['depth'].ndim != 3 or data['depth'].shape[0] != data['stamps_ns'].shape[0]:
        raise ValueError(f'truth file {p}: depth must be (F, H, W) with one row per stamp, got '
                         f'{data["depth"].shape} for {data["stamps_ns"].shape[0]} stamps')
    return data


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _json_ready(obj: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python ones (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _finite_or_none(float(obj))
    return obj


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {'p50': None, 'p95': None}
    arr = np.asarray(values, dtype=np.float64)
    return {'p50': float(np.percentile(arr, 50)), 'p95': float(np.percentile(arr, 95))}


def count_violations(result: Any, max_relative_sigma: float, max_sigma_m: float = 0.0
                     ) -> dict[str, int]:
    """Count breaches of the point cloud contract in one FrameResult.

    Args:
        result: a core.pipeline.FrameResult ((H, W) arrays).
        max_relative_sigma, max_sigma_m: the physical limit (``limit.*``; 0 = no absolute cap).

    Returns:
        ``measured_beyond_limit``: MEASURED/FUSED points with sigma / range above
        max_relative_sigma, or sigma above max_sigma_m (> 0), beyond float32 rounding;
        ``nan_without_flag``: NONE points without any flag, plus points with a class whose
        x, y, z or sigma is not finite.
    """
    prov = result.provenance
    rng = np.linalg.norm(result.points, axis=-1)
    sigma = result.sigma
    none = prov == np.uint8(Provenance.NONE)
    finite = np.all(np.isfinite(result.points), axis=-1) & np.isfinite(sigma)
    stereo = (prov == np.uint8(Provenance.MEASURED)) | (prov == np.uint8(Provenance.FUSED))
    with np.errstate(invalid='ignore', divide='ignore'):
        beyond = stereo & (sigma > max_relative_sigma * (1 + REL_TOLERANCE) * rng)
        if max_sigma_m > 0:
            beyond |= stereo & (sigma > max_sigma_m * (1 + REL_TOLERANCE))
    return {'measured_beyond_limit': int(np.count_nonzero(beyond)),
            'nan_without_flag': int(np.count_nonzero(none & (result.flags == 0))
                                    + np.count_nonzero(~none & ~finite))}


def _frame_stamp(frame: Mapping[str, Any]) -> int:
    """The left image's stamp of a synchronised frame, ns."""
    from .bag_io import stamp_ns

    return stamp_ns(frame['left_image'])


# ------------------------------------------------------------------------ the replay
class _Replay:
    """State of one replay: pipeline, output bag, statistics, what the pictures need."""

    def __init__(self, params: Mapping[str, Any], out: Path, truth: dict | None,
                 output_prefix: str) -> None:
        from ..core.pipeline import DepthPipeline
        from .bag_io import make_typestore

        self.pipeline = DepthPipeline(params)  # built exactly as the node builds it
        self.pipeline.warm_up()  # as the node: the first frame's latency is not a compile
        self.params = self.pipeline.params
        self.out = out
        self.truth = truth
        self.truth_index = ({int(s): i for i, s in enumerate(truth['stamps_ns'])}
                            if truth is not None else {})
        self.ts = make_typestore()
        self.prefix = '/' + output_prefix.strip('/')
        self.status_name = f'{self.prefix}: depth pipeline'
        georef = self.pipeline.georef  # the DEM sources it opened (for the legend)
        self.sources = georef.sources if georef is not None else []
        self.picture_indices: set[int] = set()
        self.size: tuple[int, int] | None = None  # (W, H)

        self.class_counts = np.zeros(len(Provenance), dtype=np.int64)
        self.flag_counts = {f.name: 0 for f in Flag}
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        # the node's counters and diagnostics status
        self.stats = FrameStats(STAGES_WINDOW, self.params['georef.max_camera_above_dem_m'])
        self.sync_stats: Any = None  # core.sync.SyncStats at the frame being processed
        self.truth_skipped: list[int] = []  # frames whose size is not the truth's
        self.bag_error = ''  # damage found while reading the bag (the replay ends there)
        self.errors: dict[str, list[np.ndarray]] = {p.name: [] for p in Provenance}
        self.sigmas: dict[str, list[np.ndarray]] = {p.name: [] for p in Provenance}
        self.samples: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {p.name: [] for p in
                                                                       Provenance}
        self.violations = {'measured_beyond_limit': 0, 'nan_without_flag': 0}
        self.chunks: list[np.ndarray] = []
        self.est_poses: dict[int, np.ndarray] = {}  # frame index -> estimated T_enu_left
        self.chunk_frames: list[int] = []
        self.poses: dict[int, np.ndarray] = {}
        self.kept: dict[int, dict[str, Any]] = {}
        self.last_kept: dict[str, Any] | None = None
        self.stamps: list[int] = []
        self.frame_ids: set[str] = set()
        self.rig: tuple[float, float] | None = None  # (f px, B m)
        self.truth_frames = 0
        self.written: collections.Counter = collections.Counter()
        self._legend_key: tuple | None = None
        self._rng = np.random.default_rng(0)
        self.writer = None
        self.conns: dict[str, Any] = {}

    # -- output bag ---------------------------------------------------------------------
    def open_writer(self, tmp_dir: Path) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        from .bag_io import transient_local_qos

        self.writer = Writer(tmp_dir, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        p = self.prefix
        for key, topic, typ in (
                ('points', f'{p}/points', 'sensor_msgs/msg/PointCloud2'),
                ('depth', f'{p}/depth', 'sensor_msgs/msg/Image'),
                ('depth_sigma', f'{p}/depth_sigma', 'sensor_msgs/msg/Image'),
                ('provenance', f'{p}/provenance', 'sensor_msgs/msg/Image'),
                ('legend', f'{p}/provenance_legend', f'{NODE_NAME}/msg/ProvenanceLegend'),
                ('diagnostics', '/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray')):
            qos = transient_local_qos() if key == 'legend' else ()
            self.conns[key] = self.writer.add_connection(topic, typ, typestore=self.ts,
                                                         offered_qos_profiles=qos)

    def close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _write(self, key: str, stamp: int, msg: Any) -> None:
        conn = self.conns[key]
        self.writer.write(conn, stamp, self.ts.serialize_cdr(msg, conn.msgtype))
        self.written[conn.topic] += 1

    # -- per frame ----------------------------------------------------------------------
    def problem(self, kind: str, text: str) -> None:
        """Count an input problem (the node's input_problem.<kind>) and log it."""
        self.stats.input_problem(kind, text)
        _LOG.warning('%s', text)

    def process(self, index: int, frame: Mapping[str, Any]) -> bool:
        """Decode, run the pipeline, write the outputs and collect statistics of one frame.

        As the node's worker: bad input (a ValueError) is an input problem, any other
        exception a processing error (counted, logged with its traceback); either way the
        frame is skipped and the replay goes on.

        Returns:
            False if the frame was skipped (bad input / calibration / no frame id / error).
        """
        try:
            return self._process(index, frame)
        except Exception as exc:  # noqa: BLE001 - one frame's failure must not end the replay
            self.stats.processing_error(exc)
            self._write_diagnostics(_frame_stamp(frame), {})
            _LOG.error('frame %d: processing failed, frame skipped: %r', index, exc,
                       exc_info=True)
            return False

    def _process(self, index: int, frame: Mapping[str, Any]) -> bool:
        from ..core.camera import StereoModel
        from ..core.cloud import pack_points
        from ..core.frame_io import decode_stereo, frame_warnings
        from . import bag_io as bio

        p = self.params
        t0 = time.perf_counter()
        try:
            left, right, left_model, right_model = decode_stereo(frame, p['input.mono16_max'])
        except ValueError as exc:
            self.problem('bad_input', f'frame {index}: stereo frame rejected: {exc}')
            self._write_diagnostics(_frame_stamp(frame), {})
            return False
        for kind, text in frame_warnings(frame):  # used all the same: counted, warned once
            if not self.stats.input_problems[kind]:
                _LOG.warning('frame %d: %s', index, text)
            self.stats.input_problem(kind, text, doubtful=True)
        t_decode = (time.perf_counter() - t0) * 1e3
        try:
            result = self.pipeline.process(left, right, left_model, right_model,
                                           rectify=p['rectify'],
                                           stamp_ns=_frame_stamp(frame))
        except ValueError as exc:
            self.problem('bad_calibration', f'frame {index}: stereo frame rejected: {exc}')
            self._write_diagnostics(_frame_stamp(frame), {})
            return False

        prior = getattr(self.pipeline.georef, 'prior', None)
        if prior is not None:  # offline: a re-tile requested by this frame serves the next
            prior.wait_for_grid()
        t1 = time.perf_counter()
        li = frame['left_image']
        stamp = bio.stamp_ns(li)
        frame_id = li.header.frame_id or frame['left_info'].header.frame_id
        if not frame_id:
            self.problem('no_frame_id', f'frame {index}: left image and camera_info have no '
                                        'frame_id')
            return False
        image_frame_id = frame_id
        if result.output_frame == 'enu':
            frame_id = p['output.enu_frame_id']
        georef = self.pipeline.georef
        datum = georef.pose.frame if georef is not None else None
        key = (frame_id, p['limit.max_relative_sigma'], p['limit.max_sigma_m'],
               None if datum is None else (datum.lat0_deg, datum.lon0_deg, datum.h0_m))
        if key != self._legend_key:
            self._write('legend', stamp, bio.legend_msg(
                self.ts, stamp, frame_id, key[1], key[2],
                [bio.prior_source_msg(self.ts, s) for s in self.sources], datum))
            self._legend_key = key
        organized = bool(p['output.organized'])
        cloud = pack_points(result, organized=organized)
        hdr = bio.header(self.ts, stamp, frame_id)
        ihdr = bio.header(self.ts, stamp, image_frame_id)  # images stay in the camera frame
        msgs = (('points', bio.pointcloud2_msg(self.ts, hdr, cloud, dense=not organized)),
                ('depth', bio.image_msg(self.ts, ihdr, result.depth, '32FC1')),
                ('depth_sigma', bio.image_msg(self.ts, ihdr, result.depth_sigma, '32FC1')),
                ('provenance', bio.image_msg(self.ts, ihdr, result.provenance, 'mono8')))
        raws = [(k, self.ts.serialize_cdr(m, self.conns[k].msgtype)) for k, m in msgs]
        t_pack = (time.perf_counter() - t1) * 1e3
        t2 = time.perf_counter()
        for k, raw in raws:
            self.writer.write(self.conns[k], stamp, raw)
            self.written[self.conns[k].topic] += 1
        t_write = (time.perf_counter() - t2) * 1e3

        stages = dict(result.timings_ms)
        stages.update(decode=t_decode, pack=t_pack, write=t_write,
                      frame_total=(time.perf_counter() - t0) * 1e3)
        for k, v in stages.items():
            self.latency[k].append(v)
        self.stats.frame_done(result, stages)
        self.stamps.append(stamp)
        self.frame_ids.add(frame_id)
        self.size = (left_model.width, left_model.height)
        if self.rig is None:
            st = StereoModel.from_cameras(left_model, right_model)
            self.rig = (st.left.fx, st.baseline_m)
        self._collect(index, stamp, result, cloud, left, left_model)
        self._write_diagnostics(stamp, stages)
        return True

    def pose_ready(self, stamp_ns: int) -> bool:
        """Whether a frame at ``stamp_ns`` need not wait for more pose inputs (as the node's
        lookup decides; True without a pose source)."""
        georef = self.pipeline.georef
        return georef is None or georef.pose_ready(stamp_ns)

    def pose_counts(self) -> dict[str, int] | None:
        """The pose source's counters (``pose_input.<key>`` on /diagnostics), or None."""
        georef = self.pipeline.georef
        return georef.counts() if georef is not None else None

    def _write_diagnostics(self, stamp: int, stages: Mapping[str, float]) -> None:
        """One DiagnosticArray per frame (also for a skipped one): the node's keys and status
        (core.frame_stats), the period being one frame; plus this frame's stage times."""
        from . import bag_io as bio

        values = self.stats.values(self.sync_stats, self.pose_counts())
        for stage, v in stages.items():
            values[f'latency_ms.{stage}.frame'] = float(v)
        level, text = self.stats.status()
        self._write('diagnostics', stamp, bio.diagnostic_array(
            self.ts, stamp, self.status_name, level, text, values, hardware_id='stereo'))

    def _collect(self, index: int, stamp: int, result: Any, cloud: np.ndarray,
                 left: np.ndarray, left_model: Any) -> None:
        """Statistics, truth errors, violations and what the pictures and the PLY need."""
        from ..core.camera import ray_norms

        p = self.params
        prov = result.provenance
        self.class_counts += np.bincount(prov.reshape(-1), minlength=len(Provenance))[:len(Provenance)]
        for name, n in result.flag_counts().items():
            self.flag_counts[name] += n

        for k, v in count_violations(result, float(p['limit.max_relative_sigma']),
                                     float(p['limit.max_sigma_m'])).items():
            self.violations[k] += v
        rng = np.linalg.norm(result.points, axis=-1)
        sigma = result.sigma

        t_idx = self.truth_index.get(stamp)
        if t_idx is not None and self.truth['depth'][t_idx].shape != prov.shape:
            _LOG.warning('frame %d: truth depth of stamp %d is %s but the frame is %s (W, H): '
                         'no truth comparison for this frame', index, stamp,
                         self.truth['depth'][t_idx].shape[::-1], prov.shape[::-1])
            self.truth_skipped.append(index)
            t_idx = None
        if t_idx is not None:
            depth_true = self.truth['depth'][t_idx]
            r_true = depth_true * ray_norms(left_model)
            for cls in (Provenance.MEASURED, Provenance.FUSED, Provenance.PRIOR):
                sel = prov == np.uint8(cls)
                if sel.any():
                    with np.errstate(invalid='ignore'):
                        self.errors[cls.name].append(np.abs(rng[sel] - r_true[sel]).astype(np.float64))
                    self.sigmas[cls.name].append(sigma[sel].astype(np.float64))
            self.truth_frames += 1
            if 'T_enu_left' in self.truth:
                self.poses[index] = self.truth['T_enu_left'][t_idx]

        for cls in (Provenance.MEASURED, Provenance.FUSED, Provenance.PRIOR):
            sel = np.flatnonzero((prov == np.uint8(cls)).reshape(-1))
            if sel.size:
                if sel.size > SAMPLES_PER_CLASS_AND_FRAME:
                    sel = self._rng.choice(sel, SAMPLES_PER_CLASS_AND_FRAME, replace=False)
                self.samples[cls.name].append((rng.reshape(-1)[sel], sigma.reshape(-1)[sel]))

        pts = cloud if cloud.ndim == 1 else cloud[prov != np.uint8(Provenance.NONE)]
        if result.T_enu_cam is not None:  # the pipeline's own pose estimate (not the truth)
            self.est_poses[index] = result.T_enu_cam
        self.chunks.append(np.ascontiguousarray(pts))
        self.chunk_frames.append(index)

        keep = {'index': index, 'stamp': stamp, 'left': left, 'model': left_model,
                'provenance': prov, 'flags': result.flags, 'depth': result.depth,
                'sigma': result.sigma}
        if index in self.picture_indices:
            self.kept[index] = keep
        self.last_kept = keep

    # -- report -------------------------------------------------------------------------
    def class_report(self, with_truth: bool) -> dict[str, dict[str, Any]]:
        total = max(1, int(self.class_counts.sum()))
        out: dict[str, dict[str, Any]] = {}
        for cls in Provenance:
            n = int(self.class_counts[int(cls)])
            entry: dict[str, Any] = {'count': n, 'fraction': n / total}
            if with_truth:
                errs = self.errors[cls.name]
                if cls != Provenance.NONE and errs:
                    err = np.concatenate(errs)
                    sig = np.concatenate(self.sigmas[cls.name])
                    m = max(1, err.size)
                    entry.update(coverage_1sigma=float(np.count_nonzero(err <= sig)) / m,
                                 coverage_2sigma=float(np.count_nonzero(err <= 2 * sig)) / m,
                                 median_abs_error_m=_finite_or_none(float(np.median(err))),
                                 truth_points=int(err.size))
                else:
                    entry.update(coverage_1sigma=None, coverage_2sigma=None,
                                 median_abs_error_m=None, truth_points=0)
            out[cls.name] = entry
        return out


def _concat_enu(chunks: list, poses: dict[int, np.ndarray]) -> np.ndarray:
    """(N, 3) float64 ENU of the (frame index, POINT_DTYPE chunk) list, with 4x4 T_enu_cam."""
    out = []
    for i, c in chunks:
        t = poses[i]
        xyz = np.stack([c['x'], c['y'], c['z']], axis=-1).astype(np.float64)
        out.append(xyz @ t[:3, :3].T + t[:3, 3])
    return np.concatenate(out) if out else np.zeros((0, 3))


def _concat_points(chunks: list[np.ndarray]) -> np.ndarray:
    """Concatenate (N_i,) POINT_DTYPE arrays keeping POINT_DTYPE (np.concatenate drops the
    padding of the 24-byte layout)."""
    out = np.zeros(sum(int(c.shape[0]) for c in chunks), dtype=POINT_DTYPE)
    i = 0
    for c in chunks:
        out[i:i + c.shape[0]] = c
        i += c.shape[0]
    return out


def _picture_indices(selected: range, n: int) -> list[int]:
    """First, middle, last (n = 3) or n evenly spaced of the selected frame indices."""
    if n <= 0 or len(selected) == 0:
        return []
    pos = np.unique(np.round(np.linspace(0, len(selected) - 1, min(n, len(selected)))).astype(int))
    return [selected[int(k)] for k in pos]


def _make_pictures(rep: _Replay, out: Path, renderer: str) -> dict[str, Any]:
    """Frame panels, the sigma-against-range plot and the 3D view; returns the report entry."""
    from ..core.camera import Rectifier
    from .pictures import save_frame_png
    from .replay_pictures import save_cloud_view, save_sigma_range_plot

    files: list[str] = []
    kept = dict(rep.kept)
    if rep.last_kept is not None and rep.last_kept['index'] not in kept and \
            (not kept or rep.last_kept['index'] > max(kept)):
        kept[rep.last_kept['index']] = rep.last_kept  # the bag ended early: still show the last
    for index in sorted(kept):
        k = kept[index]
        image = k['left']
        if rep.params['rectify']:  # draw on the rectified grid the results live on
            image = Rectifier().rectify(image, k['model'])[0]
        path = out / f'frame_{index:04d}.png'
        save_frame_png(path, image, k['provenance'], k['flags'], k['depth'], k['sigma'],
                       title=f'frame {index} (stamp {k["stamp"]} ns), replay of '
                             f'{rep.pipeline.matcher_name}')
        files.append(path.name)
    entry: dict[str, Any] = {'frames': sorted(kept)}
    if rep.rig is not None:
        samples = {}
        for name, lst in rep.samples.items():
            if lst:
                samples[name] = (np.concatenate([a for a, _ in lst]),
                                 np.concatenate([b for _, b in lst]))
        path = out / 'sigma_vs_range.png'
        save_sigma_range_plot(path, samples, focal_px=rep.rig[0], baseline_m=rep.rig[1],
                              sigma_d_px=float(rep.params['sigma.disparity_px']),
                              max_relative_sigma=float(rep.params['limit.max_relative_sigma']),
                              max_sigma_m=float(rep.params['limit.max_sigma_m']),
                              title=f'sigma against range, {len(rep.stamps)} frame(s)')
        files.append(path.name)
    chunks = [(i, c) for i, c in zip(rep.chunk_frames, rep.chunks, strict=True) if c.size]
    if chunks:
        est = all(i in rep.est_poses for i, _c in chunks)
        poses = rep.est_poses if est else rep.poses
        posed = [(i, c) for i, c in chunks if i in poses]
        if est:
            xyz = _concat_enu(chunks, poses)
            prov = np.concatenate([c['provenance'] for _i, c in chunks])
            fwd = sum(poses[i][:3, 2] for i, _c in chunks)
            frame = 'enu'
            note = (f'accumulated cloud of {len(chunks)} frame(s) in the local ENU frame, placed '
                    f'with the pipeline\'s own {_pose_source_words(rep.params)} pose '
                    'estimates (as cloud.ply)')
            title = f'{len(chunks)} frame(s), georeferenced (estimated poses), ENU'
        elif posed and len(posed) == len(chunks):
            xyz_l, prov_l, fwd = [], [], np.zeros(3)
            for i, c in posed:
                t = rep.poses[i]
                xyz = np.stack([c['x'], c['y'], c['z']], axis=-1).astype(np.float64)
                xyz_l.append(xyz @ t[:3, :3].T + t[:3, 3])
                prov_l.append(c['provenance'])
                fwd += t[:3, 2]
            xyz, prov, frame = np.concatenate(xyz_l), np.concatenate(prov_l), 'enu'  # noqa: F841
            note = (f'accumulated cloud of {len(posed)} frame(s) placed in the local ENU frame '
                    'with the TRUTH poses (truth T_enu_left); picture only: the cloud itself '
                    '(output.mcap, cloud.ply) is not georeferenced yet')
            title = f'{len(posed)} frame(s) placed with TRUTH poses (picture only), ENU'
        else:
            i, c = chunks[-1]
            xyz = np.stack([c['x'], c['y'], c['z']], axis=-1).astype(np.float64)
            prov, frame, fwd = c['provenance'], 'camera', None
            note = (f'one frame only (frame {i}) in its camera optical frame: no poses '
                    '(georeferencing does not exist yet and no truth poses were given)')
            title = f'frame {i} only, camera optical frame (no poses)'
        path = out / 'cloud_3d.png'
        res = save_cloud_view(path, xyz, prov, frame=frame, title=title, forward=fwd,
                              renderer=renderer)
        files.append(path.name)
        entry.update(cloud_3d=note, renderer_3d=res['renderer'])
        if res['open3d_error']:
            entry['open3d_unavailable'] = res['open3d_error']
    entry['files'] = files
    return entry


ODOMETRY_TYPE = 'nav_msgs/msg/Odometry'


#: pose inputs: remap name -> (the node's relative topic, message type, pose message kind)
POSE_INPUTS = {'imu': ('imu/data', 'sensor_msgs/msg/Imu', 'imu'),
               'gnss': ('gnss/fix', 'sensor_msgs/msg/NavSatFix', 'gnss'),
               'odom': ('odom', ODOMETRY_TYPE, 'odometry')}


def pose_input_topics(prefix: str = '', overrides: Mapping[str, str] | None = None
                      ) -> dict[str, str]:
    """Bag topics of the pose inputs, as the node subscribes its relative ``imu/data``,
    ``gnss/fix`` and ``odom`` in namespace ``prefix``: remap name ('imu', 'gnss', 'odom') ->
    topic; ``overrides[name]`` replaces one (like a ROS remap, ``--topic
    odom:=/ground_truth/odometry``)."""
    ns = ('/' + prefix.strip('/')) if prefix.strip('/') else ''
    out = {name: f'{ns}/{rel}' for name, (rel, _t, _k) in POSE_INPUTS.items()}
    out.update({k: v for k, v in (overrides or {}).items() if k in POSE_INPUTS and v})
    return out


def _pose_source_words(params: Mapping[str, Any]) -> str:
    """'GNSS/IMU' or 'odometry': what the pipeline's poses come from (pose.source)."""
    return 'odometry' if params.get('pose.source') == 'odometry' else 'GNSS/IMU'


def _pose_topics(pipeline: Any, sb: Any, topics: Mapping[str, str]) -> dict[str, str]:
    """The bag topics whose messages feed the pose source, topic -> pose message kind ('imu',
    'gnss', 'odometry'): the topics the node subscribes to (:func:`pose_input_topics`) for
    its pose.source; empty without DEM sources. Other topics of the same types (e.g. a
    ground-truth odometry, a raw IMU) are not used, as in the node.

    Raises:
        ValueError: pose.source odometry and the bag has no Odometry on its topic (the
            message lists the Odometry topics it has); a missing IMU or GNSS topic is
            warned about (the frames get no pose, as in the node).
    """
    if pipeline.georef is None:
        return {}
    names = ('odom',) if pipeline.params['pose.source'] == 'odometry' else ('imu', 'gnss')
    out: dict[str, str] = {}
    for name in names:
        _rel, msgtype, kind = POSE_INPUTS[name]
        have = sb.topics_of_types((msgtype,))
        if topics[name] not in have and name != 'odom':  # as the node: no pose, no priors
            _LOG.warning('bag %s has no %s message on %s (its topics of that type: %s): '
                         'frames get no pose and no DEM priors (use --topic-prefix or --topic '
                         '%s:=TOPIC)', sb.path, msgtype, topics[name],
                         ', '.join(sorted(have)) or 'none', name)
            continue
        if topics[name] not in have:
            raise ValueError(f'pose.source is {pipeline.params["pose.source"]} but bag '
                             f'{sb.path} has no {msgtype} message on {topics[name]}; its '
                             f'{msgtype.rsplit("/", 1)[-1]} topics are: '
                             f'{", ".join(sorted(have)) if have else "none"} (use '
                             f'--topic-prefix or --topic {name}:=TOPIC)')
        out[topics[name]] = kind
    return out


def replay_bag(bag: str | os.PathLike, params: str | os.PathLike | Mapping[str, Any] | None,
               out_dir: str | os.PathLike, truth: str | os.PathLike | None = None,
               frames: Any = None, *, topic_prefix: str = '',
               topics: Mapping[str, str] | None = None, output_prefix: str = f'/{NODE_NAME}',
               pictures: int = 3, renderer: str = 'auto', progress: bool = False) -> dict:
    """Replay a rosbag2 through the node's pipeline offline; write outputs; return the report.

    Args:
        bag: rosbag2 directory (sqlite3 or mcap) or a single .mcap/.db3 file.
        params: a node params file (``geo_depth_node: ros__parameters:``), a mapping of dotted
            names, or None for the defaults.
        out_dir: output directory (created; output.mcap, report.json, PNGs and cloud.ply in it
            are replaced).
        truth: optional truth.npz (``stamps_ns`` (F,), ``depth`` (F, H, W) Z in metres along
            the left rectified optical axis; ``T_enu_left`` (F, 4, 4) to place the 3D picture).
        frames: which synchronised frames (0-based, stop exclusive): 'A:B', (A, B), a slice.
        topic_prefix: namespace of the input topics in the bag (e.g. '/stereo'); also of
            ``odom`` (pose.source odometry).
        topics: input name (left_image, left_info, right_image, right_info, odom) -> topic
            overrides.
        output_prefix: the node's namespace + name for the output topics.
        pictures: how many frames get a picture (evenly spaced: 3 = first, middle, last);
            0 = no pictures at all.
        renderer: 3D view: 'auto' (Open3D offscreen, else matplotlib), 'open3d', 'matplotlib'.
        progress: print a progress bar with ETA on stderr.

    Returns:
        The report (also written to OUT_DIR/report.json): ``frames``; ``classes`` -> NONE,
        MEASURED, FUSED, PRIOR -> ``count``, ``fraction`` [, with truth: ``coverage_1sigma``,
        ``coverage_2sigma``, ``median_abs_error_m`` (|range - truth depth * |ray||, m; None for
        classes without points), ``truth_points``]; ``flags`` -> pixels per flag name;
        ``latency_ms`` -> stage (FrameResult.timings_ms keys incl. ``total`` = pipeline,
        plus ``decode``, ``pack``, ``write``, ``frame_total``) -> ``p50``, ``p95``;
        ``violations`` -> ``measured_beyond_limit``, ``nan_without_flag``; ``device``;
        ``matcher``; and more (input problems, outputs, cloud, pictures, timing).

    Raises:
        FileNotFoundError: bag, params or truth file missing.
        ValueError: bad parameters, a bag without the stereo topics (or, with pose.source
            odometry, without Odometry on the odom topic), a bad --frames, a truth file that
            does not fit.
    """
    from ..core.cloud import write_ply
    from ..core.sync import TimeSynchronizer
    from .bag_io import INPUTS, StereoBag, input_topics, stamp_ns
    from .bag_open import BagError

    t_wall = time.perf_counter()
    if pictures < 0:
        raise ValueError(f'pictures must be >= 0, got {pictures}')
    start, stop = parse_frames(frames)
    values, params_src = _load_params(params)
    truth_data = _load_truth(truth) if truth is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    rep = _Replay(values, out, truth_data, output_prefix)
    p = rep.params
    stereo_remaps = {k: v for k, v in (topics or {}).items() if k not in POSE_INPUTS}
    in_topics = input_topics(bool(p['rectify']), topic_prefix, stereo_remaps)
    pose_in = pose_input_topics(topic_prefix, topics)
    with StereoBag(bag, in_topics, workdir=out) as sb:
        n_bag = min(sb.count(n) for n in INPUTS)
        selected = range(n_bag)[start:stop]
        rep.picture_indices = set(_picture_indices(selected, pictures))
        bag_topics = sb.topic_names
        tmp = out / '.output_bag'
        final = out / 'output.mcap'
        for stale in (tmp, final):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
        emitted: list[dict[str, Any]] = []
        sync = TimeSynchronizer(INPUTS, emitted.append, mode=p['sync.mode'],
                                slop_ns=int(round(p['sync.slop_s'] * 1e9)),
                                queue_size=p['sync.queue_size'])
        bar = Progress(len(selected)) if progress else None
        _LOG.info('replaying %s (%d stereo frame(s) in the bag, %d selected) with %s on %s',
                  bag, n_bag, len(selected), rep.pipeline.matcher_name, rep.pipeline.device)
        pose_topics = _pose_topics(rep.pipeline, sb, pose_in)
        wait_ns = int(round(float(p['pose.wait_s']) * 1e9))
        # frames paired, waiting for their pose inputs: (index, frame, bag time when paired)
        pending: collections.deque[tuple[int, dict[str, Any], int]] = collections.deque()
        counts = {'paired': 0, 'processed': 0}

        def run_ready(now_ns: int, final: bool = False) -> None:
            """Process the waiting frames, oldest first, once the pose inputs after their
            stamp are in (or pose.wait_s of bag time has passed, or the bag ended): the
            node's rule, on the bag's clock."""
            while pending:
                index, frame, t_pair = pending[0]
                if not final and now_ns < t_pair + wait_ns and \
                        not rep.pose_ready(_frame_stamp(frame)):
                    return
                pending.popleft()
                rep.sync_stats = sync.stats
                if rep.process(index, frame):
                    counts['processed'] += 1
                if bar:
                    bar.update(counts['processed'])

        t_proc = time.perf_counter()
        rep.open_writer(tmp)
        finished = False
        try:
            now_ns = 0
            try:
                for name, topic, msg, now_ns in sb.messages_with(pose_topics):
                    if name is None:  # a pose input: the node's rule (DepthPipeline)
                        kind = pose_topics.get(topic)
                        if kind is None:
                            continue
                        problem = rep.pipeline.add_pose_message(kind, msg)
                        if problem is not None:
                            rep.problem(*problem)
                        run_ready(now_ns)
                        if finished and not pending:
                            break
                        continue
                    if finished:  # past --frames: only the pose inputs the last frames wait for
                        if not pending:
                            break
                        run_ready(now_ns)
                        continue
                    st = stamp_ns(msg)
                    if st <= 0:
                        rep.problem('zero_stamp', f'{name}: message with a zero stamp ignored')
                        continue
                    if name == 'left_image':
                        rep.stats.image_stamp(st)
                    sync.add(name, st, msg)
                    while emitted:
                        frame = emitted.pop(0)
                        index = counts['paired']
                        counts['paired'] += 1
                        if index < start:
                            continue
                        if stop is not None and index >= stop:
                            finished = True
                            break
                        pending.append((index, frame, now_ns))
                    run_ready(now_ns)
                    if finished and not pending:
                        break
            except BagError as exc:  # damage found while reading: keep what was read
                rep.bag_error = str(exc)
                _LOG.error('%s; the frames read before it are replayed', exc)
            run_ready(now_ns, final=True)
        finally:
            rep.close_writer()
            if bar:
                bar.close()
            produced = tmp / f'{tmp.name}.mcap'
            if produced.exists():  # also when the replay failed: never left hidden
                produced.replace(final)
            shutil.rmtree(tmp, ignore_errors=True)
        t_proc = time.perf_counter() - t_proc
        # what was read of a damaged bag (its temporary copy is gone after the replay)
        recovery = {k: v for k, v in (getattr(sb, 'recovery', {}) or {}).items()
                    if k != 'recovered_file'}
    processed = counts['processed']

    all_pts = _concat_points(rep.chunks)
    georef_cloud = bool(rep.chunks) and all(i in rep.est_poses for i in rep.chunk_frames)
    if georef_cloud:  # accumulate in the local ENU frame with the estimated poses
        xyz = _concat_enu(list(zip(rep.chunk_frames, rep.chunks, strict=True)), rep.est_poses)
        all_pts['x'], all_pts['y'], all_pts['z'] = (xyz[:, k].astype(np.float32) for k in range(3))
    n_ply = write_ply(out / 'cloud.ply', all_pts)
    pics: dict[str, Any] = {'files': []}
    if pictures > 0 and processed:
        pics = _make_pictures(rep, out, renderer)
    sync_s = sync.stats
    report: dict[str, Any] = {
        'frames': len(rep.stamps),
        'classes': rep.class_report(truth_data is not None),
        'flags': dict(rep.flag_counts),
        'latency_ms': {k: _percentiles(v) for k, v in rep.latency.items()},
        'violations': dict(rep.violations),
        'device': rep.pipeline.device,
        'matcher': rep.pipeline.matcher_name,
        'bag': str(bag),
        'params': params_src,
        'frames_in_bag': n_bag,
        'frame_range': [start, stop],
        'size': list(rep.size) if rep.size else None,
        'stamps_ns': {'first': rep.stamps[0] if rep.stamps else None,
                      'last': rep.stamps[-1] if rep.stamps else None},
        'frame_ids': sorted(rep.frame_ids),
        'input_topics': {**in_topics, **{k: pose_in[k] for k in POSE_INPUTS
                                         if pose_in[k] in pose_topics}},
        'input_problems': dict(rep.stats.input_problems),
        'processing_errors': rep.stats.processing_errors,
        # the node's /diagnostics counters at the end (core.frame_stats), same keys
        'counters': {k: v for k, v in rep.stats.values(sync_s, rep.pose_counts()).items()
                     if not k.startswith(('latency_ms.', 'fraction.', 'georef.'))
                     and k != 'frames_in_period'},
        'sync': {'mode': p['sync.mode'], 'dropped_unmatched': sync_s.dropped_unmatched,
                 'out_of_order': sync_s.out_of_order, 'time_jumps_back': sync_s.time_jumps},
        'bag_recovery': recovery or None,
        'bag_error': rep.bag_error or None,
        'output': {'bag': str(final), 'messages': dict(rep.written)},
        'cloud': {'path': str(out / 'cloud.ply'), 'points': n_ply,
                  'points_per_frame': [int(c.shape[0]) for c in rep.chunks],
                  'frame': ('local ENU at the datum of the legend (georeferenced with the '
                            f'pipeline\'s {_pose_source_words(p)} pose of every frame)')
                           if georef_cloud else
                           ('each point in the camera optical frame of its own frame (frame ids '
                            f'{sorted(rep.frame_ids)}); not georeferenced (no DEM sources / '
                            'pose): frames are not aligned with each other')},
        'pictures': pics,
        'truth': ({'path': str(truth), 'frames_matched': rep.truth_frames,
                   'frames_skipped_size_mismatch': list(rep.truth_skipped),
                   'ground_truth_odometry_in_bag': '/ground_truth/odometry' in bag_topics}
                  if truth_data is not None else None),
        'processing_s': t_proc,
        'frames_per_s': (len(rep.stamps) / t_proc) if t_proc > 0 else None,
        'wall_time_s': time.perf_counter() - t_wall,
    }
    if 'total' not in report['latency_ms']:
        report['latency_ms']['total'] = {'p50': None, 'p95': None}
    if truth_data is not None and rep.stamps and rep.truth_frames == 0:
        _LOG.warning('no replayed frame has a stamp in %s: coverage not computed', truth)
    report = _json_ready(report)
    (out / 'report.json').write_text(json.dumps(report, indent=2) + '\n')
    return report


# ------------------------------------------------------------------------ CLI
def format_report(r: Mapping[str, Any]) -> str:
    """The report as a short readable table (for the terminal)."""
    lines = [f'replayed {r["frames"]} frame(s) with {r["matcher"]} on {r["device"]}: '
             f'{r["frames_per_s"] or 0:.2f} frames/s ({r["processing_s"]:.1f} s), '
             f'wall time {r["wall_time_s"]:.1f} s', '',
             f'{"class":<10}{"pixels":>12}{"fraction":>10}{"in 1 sigma":>12}{"in 2 sigma":>12}'
             f'{"median |err|":>14}']
    for name, c in r['classes'].items():
        def pct(v: Any) -> str:
            return f'{100 * v:10.1f} %' if isinstance(v, (int, float)) else f'{"-":>12}'
        med = c.get('median_abs_error_m')
        med_s = f'{med:12.4f} m' if isinstance(med, (int, float)) else f'{"-":>14}'
        lines.append(f'{name:<10}{c["count"]:>12d}{100 * c["fraction"]:>9.1f}%'
                     f'{pct(c.get("coverage_1sigma"))}{pct(c.get("coverage_2sigma"))}{med_s}')
    flags = {k: v for k, v in r['flags'].items() if v}
    if flags:
        lines += ['', 'reasons (pixels carrying the flag): '
                  + ', '.join(f'{k} {v}' for k, v in flags.items())]
    lat = r['latency_ms']
    lines += ['', 'latency ms (p50 / p95): ' + ', '.join(
        f'{k} {v["p50"]:.1f}/{v["p95"]:.1f}' for k, v in lat.items() if v['p50'] is not None)]
    v = r['violations']
    lines.append(f'contract violations: measured_beyond_limit {v["measured_beyond_limit"]}, '
                 f'nan_without_flag {v["nan_without_flag"]}')
    if r.get('input_problems'):
        lines.append(f'input problems: {r["input_problems"]}')
    if r.get('processing_errors'):
        lines.append(f'processing errors (frames skipped): {r["processing_errors"]}')
    if r.get('bag_recovery'):
        rec = r['bag_recovery']
        lines.append(f'bag damaged: read up to the damage, {rec.get("messages_recovered")} '
                     'message(s) recovered')
    if r.get('bag_error'):
        lines.append(f'bag read error (replay stopped there): {r["bag_error"]}')
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``geo-depth replay``."""
    ap = argparse.ArgumentParser(
        prog='geo-depth replay',
        description='Run the node\'s depth pipeline offline over a rosbag2 (sqlite3 or mcap), '
                    'without ROS/DDS; write output.mcap, report.json, pictures and cloud.ply.')
    ap.add_argument('bag', help='rosbag2 directory (or a single .mcap / .db3 file)')
    ap.add_argument('--params', required=True,
                    help='node params file (the one the node is started with)')
    ap.add_argument('--out', required=True, help='output directory')
    ap.add_argument('--truth', help='truth.npz of geo-depth synth/scene: coverage against truth')
    ap.add_argument('--frames', help='A:B = synchronised frames A..B-1 (0-based)')
    ap.add_argument('--pictures', type=int, default=3,
                    help='frames with a picture, evenly spaced (3 = first, middle, last; '
                         '0 = no pictures at all)')
    ap.add_argument('--renderer', choices=('auto', 'open3d', 'matplotlib'), default='auto',
                    help='3D view: Open3D offscreen (needs libvulkan1 mesa-vulkan-drivers), '
                         'matplotlib, or auto (Open3D if it works)')
    ap.add_argument('--topic-prefix', default='',
                    help='namespace of the input topics in the bag (stereo, imu/data, '
                         'gnss/fix, odom), e.g. /stereo')
    ap.add_argument('--topic', action='append', default=[], metavar='NAME:=TOPIC',
                    help='remap one input (left_image, left_info, right_image, right_info, '
                         'imu, gnss, odom), e.g. left_image:=/cam0/image_rect or '
                         'odom:=/odometry/filtered '
                         '(odom: nav_msgs/Odometry with pose.source odometry); repeatable')
    ap.add_argument('--output-prefix', default=f'/{NODE_NAME}',
                    help='namespace/name of the output topics (default /geo_depth_node)')
    ap.add_argument('--quiet', action='store_true', help='no progress bar, no table')
    ap.add_argument('-v', '--verbose', action='store_true', help='log at INFO level')
    return ap


def main(argv: list[str] | None = None) -> int:
    """``geo-depth replay ...``; returns the exit code (0 ok, 1 no frame replayed, 2 bad input)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format='%(levelname)s %(name)s: %(message)s')
    remaps: dict[str, str] = {}
    for item in args.topic:
        name, sep, topic = item.partition(':=')
        if not sep or not topic:
            print(f'error: --topic wants NAME:=TOPIC, got {item!r}', file=sys.stderr)
            return 2
        remaps[name.strip()] = topic.strip()
    try:
        report = replay_bag(args.bag, args.params, args.out, truth=args.truth, frames=args.frames,
                            topic_prefix=args.topic_prefix, topics=remaps,
                            output_prefix=args.output_prefix, pictures=args.pictures,
                            renderer=args.renderer, progress=not args.quiet)
    except (ValueError, FileNotFoundError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    out = Path(args.out)
    if not args.quiet:
        print(format_report(report))
        print(f'\noutput bag: {out / "output.mcap"}  (ros2 bag play; Foxglove)')
        print(f'report:     {out / "report.json"}')
        print(f'cloud:      {out / "cloud.ply"} ({report["cloud"]["points"]} points)')
        pics = report['pictures'].get('files', [])
        if pics:
            print(f'pictures:   {", ".join(str(out / f) for f in pics)}'
                  f'  (3D view: {report["pictures"].get("renderer_3d", "-")})')
    if report['frames'] == 0:
        print('error: no stereo frame was replayed (see the warnings above)', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
