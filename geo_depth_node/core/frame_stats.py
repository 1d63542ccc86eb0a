"""What the node and ``geo-depth replay`` count about their inputs and frames, and the
/diagnostics status built from it: one implementation, so that the same bag gives the same
counters live and offline.

ROS-free. The node feeds it from its callbacks and worker and publishes :meth:`FrameStats.values`
and :meth:`FrameStats.status` every ``diagnostics_period_s``; replay does the same once per
frame (its diagnostics period is one frame).

Counters (the keys of :meth:`FrameStats.values`, as they appear on /diagnostics and in
replay's report.json):

* ``frames_processed``, ``frames_in_period``: frames that produced outputs;
* ``dropped_frames_queue``: frames dropped by the drop-oldest queue (node only; 0 offline);
* ``dropped_messages_unmatched``, ``messages_out_of_order``, ``time_jumps_back``: the stereo
  synchroniser (:class:`~geo_depth_node.core.sync.SyncStats`);
* ``input_frames_missing``: frames missing from the left image stream, from gaps in its stamps
  (a gap of k periods counts k - 1; the period is the median of the recent stamp steps): frames
  lost upstream or in DDS while the node was busy;
* ``processing_errors``: frames whose processing raised something other than a bad-input
  ValueError (a bug or an environment failure; named in the status text);
* ``input_problems`` and ``input_problem.<kind>``: rejected or doubtful inputs by kind;
* ``pose.ok|unavailable|degraded``: frames with / without a pose, with a degraded one;
* ``pose_input.<key>``: the pose source's own counters (bad, out-of-order, rejected inputs);
* ``fraction.<class>``, ``georef.<stat>``: of the last frame;
* ``latency_ms.<stage>.p50|max``: over the last ``window`` frames.
"""
from __future__ import annotations

import collections
import statistics
import threading
from typing import Any, Mapping

import numpy as np

from .contract import Provenance
from .stamps import StampGuard, Verdict

#: diagnostic_msgs/DiagnosticStatus levels
OK, WARN, ERROR = 0, 1, 2
#: a step in the left image stamps longer than this many periods is a gap
GAP_FACTOR = 1.5
#: stamp steps kept to estimate the image period
PERIOD_WINDOW = 32


class FrameStats:
    """Thread-safe counters of one node or replay run.

    Args:
        window: frames kept for the latency statistics.
        max_camera_above_dem_m: WARN when the camera is more than this above the DEM under it
            (``georef.max_camera_above_dem_m``).
    """

    def __init__(self, window: int = 50, max_camera_above_dem_m: float = 100.0) -> None:
        self._lock = threading.Lock()
        self.max_camera_above_dem_m = float(max_camera_above_dem_m)
        self._latency: dict[str, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=window))
        self._fractions = {p.name: 0.0 for p in Provenance}
        self._georef: dict[str, float] = {}
        self.frames_done = 0
        self._frames_in_period = 0
        self.input_problems: collections.Counter = collections.Counter()
        self._last_problem = ''
        self._last_doubt = ''
        self.processing_errors = 0
        self._errors_in_period = 0
        self._last_error = ''
        self._no_pose_in_period = 0
        self._last_no_pose = ''
        self._prior_problem = ''
        self.pose_status: collections.Counter = collections.Counter()
        self.frames_missing = 0
        self._image_guard: StampGuard[None] = StampGuard()
        self._steps: collections.deque = collections.deque(maxlen=PERIOD_WINDOW)

    # ---------------------------------------------------------------- inputs
    def input_problem(self, kind: str, text: str, *, doubtful: bool = False) -> None:
        """Count one bad input of ``kind`` (``input_problem.<kind>``); ``doubtful``: an input
        that was used all the same (it WARNs only when nothing more important does)."""
        with self._lock:
            self.input_problems[kind] += 1
            if doubtful:
                self._last_doubt = text
            else:
                self._last_problem = text

    def processing_error(self, exc: BaseException) -> None:
        """Count one frame whose processing raised ``exc`` (not a bad-input ValueError)."""
        with self._lock:
            self.processing_errors += 1
            self._errors_in_period += 1
            self._last_error = repr(exc)

    def image_stamp(self, stamp_ns: int) -> int:
        """Note the stamp of one left image as it arrives; returns the frames missing before
        it (0 without a gap). Stamps that go back are not gaps: a late or stray one is ignored,
        a confirmed jump back (a bag loop, :class:`~.stamps.StampGuard`) starts over."""
        with self._lock:
            last = self._image_guard.newest
            decision = self._image_guard.check(int(stamp_ns), None)
            if decision.verdict is Verdict.JUMP:
                self._steps.clear()
                return 0
            if decision.verdict is not Verdict.ACCEPT or last is None:
                return 0
            step = int(stamp_ns) - last
            missing = 0
            if len(self._steps) >= 2:
                period = statistics.median(self._steps)
                if period > 0 and step > GAP_FACTOR * period:
                    missing = int(round(step / period)) - 1
                    self.frames_missing += missing
            self._steps.append(step)  # gaps too: the median follows a camera that slows down
            return missing

    # ---------------------------------------------------------------- frames
    def frame_done(self, result: Any, stages: Mapping[str, float]) -> None:
        """Record one processed frame: a core.pipeline.FrameResult and its stage times (ms)."""
        fractions = result.class_fractions()
        with self._lock:
            for k, v in stages.items():
                self._latency[k].append(float(v))
            self._fractions = fractions
            self._georef = dict(result.georef_stats)
            if result.pose_status != 'off':
                self.pose_status['ok' if result.pose_status == 'ok' else 'unavailable'] += 1
                if result.pose_status != 'ok':
                    self._no_pose_in_period += 1
                    self._last_no_pose = result.pose_status
                self.pose_status['degraded'] += int(result.pose_degraded)
            problem = str(getattr(result, 'prior_problem', '') or '')
            if problem:
                self._prior_problem = problem
            self.frames_done += 1
            self._frames_in_period += 1

    # ---------------------------------------------------------------- diagnostics
    def values(self, sync: Any = None, pose_counts: Mapping[str, int] | None = None,
               dropped_frames_queue: int = 0) -> dict[str, object]:
        """The key/values of the diagnostics status (see the module docstring).

        Args:
            sync: a core.sync.SyncStats (None: zeros).
            pose_counts: the pose source's ``counts`` (None: no pose source).
            dropped_frames_queue: frames the drop-oldest queue dropped.
        """
        with self._lock:
            values: dict[str, object] = {
                'frames_processed': self.frames_done,
                'frames_in_period': self._frames_in_period,
                'dropped_frames_queue': int(dropped_frames_queue),
                'dropped_messages_unmatched': int(getattr(sync, 'dropped_unmatched', 0)),
                'messages_out_of_order': int(getattr(sync, 'out_of_order', 0)),
                'time_jumps_back': int(getattr(sync, 'time_jumps', 0)),
                'input_frames_missing': self.frames_missing,
                'processing_errors': self.processing_errors,
                'input_problems': sum(self.input_problems.values()),
            }
            for kind, n in sorted(self.pose_status.items()):
                values[f'pose.{kind}'] = n
            for kind, n in sorted((pose_counts or {}).items()):
                values[f'pose_input.{kind}'] = int(n)
            for kind, n in sorted(self.input_problems.items()):
                values[f'input_problem.{kind}'] = n
            for name, frac in self._fractions.items():
                values[f'fraction.{name}'] = float(frac)
            for name, v in sorted(self._georef.items()):
                values[f'georef.{name}'] = float(v)
            for stage, q in sorted(self._latency.items()):
                if q:
                    arr = np.fromiter(q, dtype=np.float64)
                    values[f'latency_ms.{stage}.p50'] = float(np.median(arr))
                    values[f'latency_ms.{stage}.max'] = float(arr.max())
        return values

    def status(self) -> tuple[int, str]:
        """(level, text) of the period that ends now; starts the next period.

        ERROR when processing raised in the period (the exception named); WARN for an input
        problem, no frames, priors missing for a reason the frame names (a DEM file that
        failed, no DEM data under the camera: FrameResult.prior_problem), frames without a
        pose, a camera too close to / too far above the DEM, or (last) a doubtful input that
        was used; OK otherwise.
        """
        from .geoprior import clearance_warning

        with self._lock:
            frames = self._frames_in_period
            last_problem, errors, last_error = self._last_problem, self._errors_in_period, \
                self._last_error
            no_pose, last_no_pose = self._no_pose_in_period, self._last_no_pose
            prior_problem = self._prior_problem
            doubt = self._last_doubt
            georef = dict(self._georef)
            self._frames_in_period = self._errors_in_period = self._no_pose_in_period = 0
            self._last_problem = self._prior_problem = self._last_doubt = ''
        if errors:
            return ERROR, (f'processing failed for {errors} frame(s) in the last period: '
                           f'{last_error}')
        if last_problem:
            return WARN, f'input problem: {last_problem}'
        if frames == 0:
            return WARN, 'no synchronized stereo frames in the last period'
        if prior_problem:
            return WARN, f'DEM priors missing: {prior_problem}'
        if no_pose:
            return WARN, (f'no pose for {no_pose} frame(s) in the last period ({last_no_pose}): '
                          'stereo only there, NONE points flagged PRIOR_UNAVAILABLE')
        if clearance := clearance_warning(georef, self.max_camera_above_dem_m):
            return WARN, clearance
        if doubt:
            return WARN, f'doubtful input used: {doubt}'
        return OK, f'{frames} frame(s) processed'
