"""The geo_depth_node ROS 2 node: a thin shell around core.pipeline.DepthPipeline.

Callbacks only enqueue: the four stereo inputs are paired by TimeSynchronizer,
each pair goes into a drop-oldest queue, and one worker thread decodes, runs
the pipeline and publishes. Dropped frames and bad inputs are counted and
reported on /diagnostics.
"""
from __future__ import annotations

import copy
import functools
import threading
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, Image, Imu, NavSatFix, PointCloud2

from geo_depth_node.msg import ProvenanceLegend

from ..core.cloud import pack_points
from ..core.frame_io import decode_stereo, frame_warnings
from ..core.frame_stats import FrameStats
from ..core.params import (DEM_SOURCE_PREFIX, PARAMETERS, PARAMS_BY_NAME, ROS_ONLY_PARAMS,
                           ParamSpec, validate_params)
from ..core.pipeline import DepthPipeline
from ..core.sync import TimeSynchronizer
from ..core.workqueue import DropOldestQueue, Worker
from . import conversions as conv

NODE_NAME = 'geo_depth_node'
INPUTS = ('left_image', 'left_info', 'right_image', 'right_info')
STAGES_WINDOW = 50  # frames kept for latency statistics


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    d = ParameterDescriptor(description=spec.full_description(), read_only=spec.read_only)
    if spec.type_name == 'int' and (spec.min_value is not None or spec.max_value is not None):
        d.integer_range = [IntegerRange(from_value=int(spec.min_value), to_value=int(spec.max_value),
                                        step=int(spec.step) if spec.step > 1 else 0)]
    elif spec.type_name == 'float' and (spec.min_value is not None or spec.max_value is not None):
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.min_value),
                                                     to_value=float(spec.max_value), step=0.0)]
    if spec.choices:
        d.additional_constraints = 'one of: ' + ', '.join(spec.choices)
    return d


def _stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


class GeoDepthNode(Node):
    """Stereo images in; PointCloud2 with sigma and provenance, depth images, legend out."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._refuse_unknown_overrides()
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        values = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
        values.update(self._declare_dem_source_params())
        # Raises ValueError with the bad name/value: main() logs it and exits non-zero.
        self._params = validate_params(values)
        self._lock = threading.Lock()
        self._pipeline = DepthPipeline(self._params)  # opens the DEM sources (or refuses)
        took = self._pipeline.warm_up()  # compiled kernels ready before the first frame
        if took:
            self.get_logger().info('compiled kernels ready: ' + ', '.join(
                f'{name} {sec:.1f} s' for name, sec in took.items()))
        self._dem_sources = self._pipeline.georef.sources if self._pipeline.georef else []
        for src in self._dem_sources:
            spec = src.spec
            self.get_logger().info(
                f'DEM source {spec.name} (id {spec.id}, {spec.kind}, {spec.vertical_datum}, '
                f'sigma_v {spec.sigma_v_m} m, survey {spec.survey_date}): '
                f'{len(src.paths)} file(s)')
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        # --- outputs -----------------------------------------------------------------
        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                             reliability=ReliabilityPolicy.RELIABLE)
        overrides = QoSOverridingOptions.with_default_policies()
        self._pub_points = self.create_publisher(PointCloud2, '~/points', out_qos,
                                                 qos_overriding_options=overrides)
        self._pub_depth = self.create_publisher(Image, '~/depth', out_qos,
                                                qos_overriding_options=overrides)
        self._pub_sigma = self.create_publisher(Image, '~/depth_sigma', out_qos,
                                                qos_overriding_options=overrides)
        self._pub_prov = self.create_publisher(Image, '~/provenance', out_qos,
                                               qos_overriding_options=overrides)
        legend_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                                reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._pub_legend = self.create_publisher(ProvenanceLegend, '~/provenance_legend',
                                                 legend_qos)
        self._pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._legend_frame: str | None = None
        self._legend_key: tuple | None = None

        # --- statistics for /diagnostics (the same counters as geo-depth replay) ------------
        self._stats = FrameStats(STAGES_WINDOW, self._params['georef.max_camera_above_dem_m'])

        # --- inputs ------------------------------------------------------------------------
        self._queue: DropOldestQueue[dict[str, Any]] = DropOldestQueue(
            self._params['processing_queue_size'])
        self._worker = Worker(self._queue, self._process, name='geo_depth_worker',
                              on_error=self._on_worker_error)
        self._make_synchronizer()
        kind = 'image_raw' if self._params['rectify'] else 'image_rect'
        in_qos = qos_profile_sensor_data
        self._subs = [
            self.create_subscription(Image, f'left/{kind}', lambda m: self._on_input('left_image', m),
                                     in_qos, qos_overriding_options=overrides),
            self.create_subscription(CameraInfo, 'left/camera_info',
                                     lambda m: self._on_input('left_info', m), in_qos,
                                     qos_overriding_options=overrides),
            self.create_subscription(Image, f'right/{kind}',
                                     lambda m: self._on_input('right_image', m), in_qos,
                                     qos_overriding_options=overrides),
            self.create_subscription(CameraInfo, 'right/camera_info',
                                     lambda m: self._on_input('right_info', m), in_qos,
                                     qos_overriding_options=overrides),
        ]
        if self._pipeline.georef is not None and self._params['pose.source'] == 'odometry':
            # an estimator's output (robot_localization publishes reliable, depth 10); a deep
            # queue so that a busy executor does not lose the message after an image stamp
            odom_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                                  reliability=ReliabilityPolicy.RELIABLE)
            self._subs.append(self.create_subscription(
                Odometry, 'odom', functools.partial(self._on_pose_input, kind='odometry'),
                odom_qos, qos_overriding_options=overrides))
            self.get_logger().info(
                f'georeferencing from {self._subs[4].topic_name} (nav_msgs/Odometry in ENU at '
                f'the datum {self._params["georef.datum_latitude_deg"]:.8f} '
                f'{self._params["georef.datum_longitude_deg"]:.8f} '
                f'{self._params["georef.datum_height_m"]:.3f} m)')
        elif self._pipeline.georef is not None:  # DEM priors need the pose on the Earth
            # sensor-data QoS, but deep queues: 200 Hz IMU must not be lost to a busy executor
            imu_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=400,
                                 reliability=ReliabilityPolicy.BEST_EFFORT)
            gnss_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                                  reliability=ReliabilityPolicy.BEST_EFFORT)
            self._subs += [
                self.create_subscription(
                    Imu, 'imu/data', functools.partial(self._on_pose_input, kind='imu'),
                    imu_qos, qos_overriding_options=overrides),
                self.create_subscription(
                    NavSatFix, 'gnss/fix', functools.partial(self._on_pose_input, kind='gnss'),
                    gnss_qos, qos_overriding_options=overrides),
            ]
            self.get_logger().info(f'georeferencing from {self._subs[4].topic_name} and '
                                   f'{self._subs[5].topic_name}')
        self._worker.start()
        self._diag_timer = self.create_timer(self._params['diagnostics_period_s'],
                                             self._publish_diagnostics)
        # Announce the contract at once; the output frame is known with the first image.
        self._publish_legend('')
        self.get_logger().info(
            f'listening on {self._subs[0].topic_name}, {self._subs[2].topic_name} (+camera_info), '
            f'sync {self._params["sync.mode"]}, publishing {self._pub_points.topic_name}')

    # ---------------------------------------------------------------- parameters
    def _refuse_unknown_overrides(self) -> None:
        """A params-file key the node does not declare is a typo: refuse it, don't ignore it."""
        overrides = getattr(self, '_parameter_overrides', None)
        if overrides is None:  # rclpy internals changed: cannot check, say so
            self.get_logger().warning('cannot check the params file for unknown keys')
            return
        unknown = sorted(n for n in overrides if n not in PARAMS_BY_NAME
                         and n not in ROS_ONLY_PARAMS and not n.startswith('qos_overrides.')
                         and not n.startswith(DEM_SOURCE_PREFIX))
        if unknown:
            raise ValueError(f'unknown parameter(s) {unknown}; declared parameters are listed '
                             'in config/geo_depth.yaml (`geo-depth params`)')

    def _declare_dem_source_params(self) -> dict[str, Any]:
        """Declare the dem.source.<name>.<field> entries the params file gives (read-only).

        Their names depend on dem.sources, so they are declared from the overrides; the
        table check (core.params.validate_params) then refuses fields of unlisted sources and
        bad values.
        """
        overrides = getattr(self, '_parameter_overrides', None) or {}
        out: dict[str, Any] = {}
        for name in sorted(n for n in overrides if n.startswith(DEM_SOURCE_PREFIX)):
            src, _, field = name[len(DEM_SOURCE_PREFIX):].partition('.')
            desc = ParameterDescriptor(
                description=f'DEM source {src!r}: {field} (see dem.sources and '
                            'config/geo_depth.yaml)', read_only=True)
            self.declare_parameter(name, overrides[name].value, desc)
            out[name] = self.get_parameter(name).value
        return out

    def _validate_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Reject a change that does not pass the parameter table's checks."""
        candidate = dict(self._params)
        for p in params:
            spec = PARAMS_BY_NAME.get(p.name)
            if spec is None:
                continue  # use_sim_time, qos_overrides.* are ROS's own
            try:
                candidate[p.name] = spec.validate(p.value)
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        try:
            validate_params(candidate)
            DepthPipeline(candidate)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params: list[Parameter]) -> None:
        """Apply validated changes: rebuild the pipeline, re-announce the legend."""
        changed = [p for p in params if p.name in PARAMS_BY_NAME]
        if not changed:
            return
        with self._lock:
            for p in changed:
                self._params[p.name] = PARAMS_BY_NAME[p.name].validate(p.value)
            old = self._pipeline
            self._pipeline = DepthPipeline(self._params)
            if old.georef is not None:  # georef parameters are read-only: keep the buffered
                self._pipeline.georef = old.georef  # IMU/GNSS, the datum and the DEM grid
            self._make_synchronizer()
        self.get_logger().info('parameters changed: ' + ', '.join(f'{p.name}={p.value}'
                                                                for p in changed))
        if self._legend_frame is not None:
            self._publish_legend(self._legend_frame)

    def _make_synchronizer(self) -> None:
        """(Re)build the stereo synchroniser from the current sync.* parameters."""
        self._sync = TimeSynchronizer(
            INPUTS, self._queue.put, mode=self._params['sync.mode'],
            slop_ns=int(round(self._params['sync.slop_s'] * 1e9)),
            queue_size=self._params['sync.queue_size'])

    # ---------------------------------------------------------------- inputs
    def _on_input(self, name: str, msg: Any) -> None:
        """Executor thread: only pair and enqueue (cheap)."""
        stamp = _stamp_ns(msg)
        if stamp <= 0:
            self._input_problem('zero_stamp', f'{name}: message with a zero stamp ignored')
            return
        if name == 'left_image':
            self._stats.image_stamp(stamp)
        self._sync.add(name, stamp, msg)

    def _input_problem(self, kind: str, text: str) -> None:
        self._stats.input_problem(kind, text)
        self.get_logger().error(text, throttle_duration_sec=float(
            self._params['input_error_throttle_s']))

    def _on_worker_error(self, exc: BaseException) -> None:
        self._stats.processing_error(exc)
        self.get_logger().error(f'frame processing failed: {exc!r}', throttle_duration_sec=float(
            self._params['input_error_throttle_s']))

    def _on_pose_input(self, msg: Any, kind: str) -> None:
        """Executor thread: convert an Imu / NavSatFix / Odometry message and buffer it for the
        pose (cheap; DepthPipeline.add_pose_message, the rule replay uses too); a malformed or
        zero-stamped one becomes a diagnostic, not a sample."""
        with self._lock:
            pipeline = self._pipeline
        problem = pipeline.add_pose_message(kind, msg)
        if problem is not None:
            self._input_problem(*problem)

    # ---------------------------------------------------------------- worker
    def _process(self, frame: dict[str, Any]) -> None:
        """Worker thread: decode, run the pipeline, publish."""
        t0 = time.perf_counter()
        li = frame['left_image']
        with self._lock:
            pipeline, params = self._pipeline, dict(self._params)
        try:
            left, right, left_model, right_model = decode_stereo(frame, params['input.mono16_max'])
        except ValueError as exc:
            self._input_problem('bad_input', f'stereo frame rejected: {exc}')
            return
        for kind, text in frame_warnings(frame):  # used all the same: counted, warned once
            self._stats.input_problem(kind, text, doubtful=True)
            self.get_logger().warning(text, once=True)
        t_decode = (time.perf_counter() - t0) * 1e3
        try:
            result = pipeline.process(left, right, left_model, right_model,
                                      rectify=params['rectify'], stamp_ns=_stamp_ns(li),
                                      wait_s=params['pose.wait_s'])
        except ValueError as exc:
            self._input_problem('bad_calibration', f'stereo frame rejected: {exc}')
            return

        t1 = time.perf_counter()
        header = li.header
        if not header.frame_id:
            header.frame_id = frame['left_info'].header.frame_id
            if not header.frame_id:
                self._input_problem('no_frame_id', 'left image and camera_info have no frame_id')
                return
        cloud_header = header
        if result.output_frame == 'enu':
            cloud_header = copy.deepcopy(header)
            cloud_header.frame_id = params['output.enu_frame_id']
        # republished whenever any of its fields changes (frame, limits, the datum once the
        # first fix has set it): a no-op otherwise
        self._publish_legend(cloud_header.frame_id)
        organized = params['output.organized']
        cloud = pack_points(result, organized=organized)
        points_msg = conv.pointcloud2(cloud_header, cloud, dense=not organized)
        depth_msg = conv.image_msg(header, result.depth, '32FC1')
        sigma_msg = conv.image_msg(header, result.depth_sigma, '32FC1')
        prov_msg = conv.image_msg(header, result.provenance, 'mono8')
        t_pack = (time.perf_counter() - t1) * 1e3
        t2 = time.perf_counter()
        self._pub_points.publish(points_msg)
        self._pub_depth.publish(depth_msg)
        self._pub_sigma.publish(sigma_msg)
        self._pub_prov.publish(prov_msg)
        t_pub = (time.perf_counter() - t2) * 1e3

        stages = dict(result.timings_ms)
        stages['decode'] = t_decode
        stages['pack'] = t_pack
        stages['publish'] = t_pub
        stages['frame_total'] = (time.perf_counter() - t0) * 1e3
        self._stats.frame_done(result, stages)

    # ---------------------------------------------------------------- legend, diagnostics
    def _publish_legend(self, frame_id: str) -> None:
        with self._lock:
            georef = self._pipeline.georef
            frame = georef.pose.frame if georef is not None else None
            key = (frame_id, self._params['limit.max_relative_sigma'],
                   self._params['limit.max_sigma_m'],
                   None if frame is None else (frame.lat0_deg, frame.lon0_deg, frame.h0_m))
        if key == self._legend_key:
            return
        msg = ProvenanceLegend()
        conv.fill_legend(msg, stamp=self.get_clock().now().to_msg(), output_frame=frame_id,
                         max_relative_sigma=key[1], max_sigma_m=key[2],
                         sources=[conv.prior_source_msg(s) for s in self._dem_sources])
        if key[3] is not None:
            msg.georeferenced = True
            msg.datum_latitude_deg, msg.datum_longitude_deg, msg.datum_height_m = key[3]
        self._pub_legend.publish(msg)
        self._legend_frame, self._legend_key = frame_id, key

    def _publish_diagnostics(self) -> None:
        with self._lock:
            georef = self._pipeline.georef
        # bad / out-of-order / rejected / ignored pose inputs of the pose source
        pose_counts = georef.counts() if georef is not None else None
        values = self._stats.values(self._sync.stats, pose_counts, self._queue.dropped)
        level, text = self._stats.status()
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [conv.diagnostic_status(f'{self.get_fully_qualified_name()}: depth pipeline',
                                             bytes([level]), text, values, hardware_id='stereo')]
        self._pub_diag.publish(arr)

    def destroy_node(self) -> None:
        """Stop the worker before tearing the node down (also for a half-built node)."""
        worker = getattr(self, '_worker', None)
        if worker is not None:
            worker.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of the node executable; returns the process exit code."""
    rclpy.init(args=args)
    try:
        node = GeoDepthNode()
    except (ValueError, ParameterException) as exc:  # say which, exit non-zero
        rclpy.logging.get_logger(NODE_NAME).fatal(f'invalid parameters: {exc}')
        rclpy.try_shutdown()
        return 2
    code = 0
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        node.get_logger().info('interrupted, shutting down')
    except ExternalShutdownException:
        node.get_logger().info('external shutdown')
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return code
