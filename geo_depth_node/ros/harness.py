"""Run the node executable as a process and replay a rosbag2 into it over DDS.

Used by the demo and the live integration test (launch_testing does not exist
here): the node is started exactly as the launch file starts it (the installed
executable with the installed params file), the bag's raw CDR bytes are
published over DDS frame by frame, and every output is collected.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

_LOG = logging.getLogger(__name__)
PACKAGE = 'geo_depth_node'


@dataclasses.dataclass(frozen=True)
class InstalledPaths:
    """Where colcon installed what the launch file uses."""

    prefix: Path
    executable: Path
    params_file: Path
    launch_file: Path
    fastdds_profile: Path


def installed_paths() -> InstalledPaths:
    """Locate the installed package through the ament index (as ros2 launch does).

    Raises:
        FileNotFoundError: if the package is not built/installed or a file is missing.
    """
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        prefix = Path(get_package_prefix(PACKAGE))
    except PackageNotFoundError as exc:
        raise FileNotFoundError(f'{PACKAGE} is not installed: build it with colcon and source '
                                'the install (make build; source tools/env.sh)') from exc
    share = prefix / 'share' / PACKAGE
    paths = InstalledPaths(prefix, prefix / 'lib' / PACKAGE / PACKAGE,
                           share / 'config' / 'geo_depth.yaml',
                           share / 'launch' / 'geo_depth.launch.py',
                           share / 'config' / 'fastdds_shm.xml')
    for p in (paths.executable, paths.params_file, paths.launch_file):
        if not p.exists():
            raise FileNotFoundError(f'installed file missing: {p}')
    return paths


def isolated_ros_env(domain_id: int | None = None) -> dict[str, str]:
    """os.environ with a private ROS_DOMAIN_ID, localhost discovery and our Fast DDS profile."""
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(domain_id if domain_id is not None else random.randint(100, 200))
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    try:
        profile = installed_paths().fastdds_profile
    except FileNotFoundError as exc:
        _LOG.warning('Fast DDS profile not set: %s', exc)
    else:
        if profile.exists():
            env.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(profile))
    env['PYTHONUNBUFFERED'] = '1'
    return env


class NodeProcess:
    """The node executable as a child process (context manager)."""

    def __init__(self, env: dict[str, str], *, params_file: str | None = None,
                 namespace: str = '/', extra_ros_args: tuple[str, ...] = (),
                 log_path: str | os.PathLike | None = None) -> None:
        paths = installed_paths()
        self.cmd = [str(paths.executable), '--ros-args',
                    '--params-file', str(params_file or paths.params_file),
                    '-r', f'__ns:={namespace}', *extra_ros_args]
        self.env = env
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.returncode: int | None = None

    def __enter__(self) -> 'NodeProcess':
        out = subprocess.DEVNULL
        if self.log_path:
            self._log_file = open(self.log_path, 'wb')
            out = self._log_file
        _LOG.info('starting %s', ' '.join(self.cmd))
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT, wait, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _LOG.warning('node did not stop on SIGINT within %.0f s; killing it', timeout)
                self.proc.kill()
                self.proc.wait(5)
        self.returncode = self.proc.returncode
        if self._log_file:
            self._log_file.close()
        return self.returncode

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        """What the node printed so far (when started with log_path)."""
        return self.log_path.read_text(errors='replace') if self.log_path else ''


def _msg_class(typename: str):
    pkg, kind, name = typename.split('/')
    return getattr(importlib.import_module(f'{pkg}.{kind}'), name)


@dataclasses.dataclass
class Received:
    """Outputs collected from the node, keyed by header stamp (ns)."""

    points: dict[int, Any] = dataclasses.field(default_factory=dict)
    depth: dict[int, Any] = dataclasses.field(default_factory=dict)
    depth_sigma: dict[int, Any] = dataclasses.field(default_factory=dict)
    provenance: dict[int, Any] = dataclasses.field(default_factory=dict)
    legends: list[Any] = dataclasses.field(default_factory=list)
    diagnostics: list[Any] = dataclasses.field(default_factory=list)
    latency_s: dict[int, float] = dataclasses.field(default_factory=dict)


def _stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


class BagReplayer:
    """Publishes a bag's messages over DDS and collects the node's outputs.

    Use inside an rclpy context of its own (``rclpy.init(context=...)`` is handled here).
    """

    def __init__(self, env_domain_id: int, node_namespace: str = '/',
                 node_name: str = PACKAGE) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        # read by the RMW when the participant is created; the domain goes to rclpy.init
        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        self._ctx = Context()
        rclpy.init(context=self._ctx, domain_id=env_domain_id)
        self.node = rclpy.create_node('geo_depth_replayer', context=self._ctx)
        self._executor = SingleThreadedExecutor(context=self._ctx)
        self._executor.add_node(self.node)
        self._spin = threading.Thread(target=self._spin_loop, daemon=True)
        self._stop = threading.Event()
        self.received = Received()
        self._cv = threading.Condition()
        self._sent_at: dict[int, float] = {}
        self._pubs: dict[str, Any] = {}
        self.resend_s = 2.0
        self.resends = 0
        self.skipped_topics: list[str] = []
        self.lookahead_s = 0.25  # bag time published past a frame before waiting for it
        self.sensor_pause_s = 0.0005  # pause after each non-frame message
        ns = node_namespace.rstrip('/')
        base = f'{ns}/{node_name}'
        self._subscribe(base)
        self._spin.start()

    def _spin_loop(self) -> None:
        while not self._stop.is_set() and self._ctx.ok():
            self._executor.spin_once(timeout_sec=0.05)

    def _subscribe(self, base: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, PointCloud2

        from geo_depth_node.msg import ProvenanceLegend

        rel = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        legend_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)

        def keep(store: dict, with_latency: bool = False):
            def cb(msg: Any) -> None:
                stamp = _stamp_ns(msg)
                with self._cv:
                    store[stamp] = msg
                    if with_latency and stamp in self._sent_at:
                        self.received.latency_s[stamp] = time.perf_counter() - self._sent_at[stamp]
                    self._cv.notify_all()
            return cb

        r = self.received
        self.sub_points = self.node.create_subscription(PointCloud2, f'{base}/points',
                                                        keep(r.points, True), rel)
        self.node.create_subscription(Image, f'{base}/depth', keep(r.depth), rel)
        self.node.create_subscription(Image, f'{base}/depth_sigma', keep(r.depth_sigma), rel)
        self.node.create_subscription(Image, f'{base}/provenance', keep(r.provenance), rel)

        def on_legend(msg: Any) -> None:
            with self._cv:
                r.legends.append(msg)
                self._cv.notify_all()

        self.node.create_subscription(ProvenanceLegend, f'{base}/provenance_legend', on_legend,
                                      legend_qos)
        self.node.create_subscription(DiagnosticArray, '/diagnostics',
                                      lambda m: r.diagnostics.append(m), 10)

    def publisher(self, topic: str, typename: str):
        """A reliable publisher for ``topic`` (created once)."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        if topic not in self._pubs:
            self._pubs[topic] = self.node.create_publisher(
                _msg_class(typename), topic, QoSProfile(depth=10,
                                                        reliability=ReliabilityPolicy.RELIABLE))
        return self._pubs[topic]

    @property
    def sent_at(self) -> dict[int, float]:
        """Frame stamp (ns) -> time.perf_counter() when its last input was published."""
        with self._cv:
            return dict(self._sent_at)

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until ``predicate()`` is true (checked on every received message)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.1))
        return True

    def wait_for_discovery(self, timeout: float = 20.0, topics: set[str] | None = None) -> bool:
        """Wait until the node subscribes to the publishers of ``topics`` (default: all of
        them) and publishes points."""
        deadline = time.monotonic() + timeout
        pubs = [p for t, p in self._pubs.items() if topics is None or t in topics]
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() > 0 for p in pubs) \
                    and self.sub_points.get_publisher_count() > 0:
                return True
            time.sleep(0.05)
        return False

    def replay(self, bag_dir: str | os.PathLike, *, frame_timeout: float = 30.0,
               lockstep: bool = True, topic_prefix: str = '',
               discovery_timeout: float = 30.0,
               wait_topics: set[str] | None = None, realtime: bool = False) -> list[int]:
        """Publish the bag; with ``lockstep`` wait for each frame's points before the next;
        with ``realtime`` (and not ``lockstep``) publish every message at its bag time after
        the first one (a camera at its own rate: the node keeps up or drops frames).

        Frames (the /left/* and /right/* topics) are grouped by header stamp; a frame is
        complete once all of them are sent. Other topics are published in bag order; discovery
        waits for the frame topics and ``wait_topics`` (bag topic names).

        Returns:
            The stamps (ns) of the left images sent, in order.

        Raises:
            TimeoutError: if the node is not discovered, or a frame's output never arrives.
        """
        from rosbags.rosbag2 import Reader

        with Reader(bag_dir) as reader:
            conns = []
            for c in reader.connections:
                try:
                    self.publisher(topic_prefix + c.topic, c.msgtype)
                except ImportError as exc:  # e.g. tf2_msgs: no wheel here; the node needs none
                    _LOG.warning('not replaying %s: message type %s not available (%s)',
                                 c.topic, c.msgtype, exc)
                    self.skipped_topics.append(c.topic)
                    continue
                conns.append(c)
            # A frame = the stereo pair and its CameraInfos (one stamp). Other topics (IMU,
            # GNSS, tf, ...) are published in bag order and never waited for.
            frame_topics = {c.topic for c in conns
                            if c.topic.startswith(('/left/', '/right/'))}
            wait = {topic_prefix + t for t in (frame_topics | (wait_topics or set()))}
            if not self.wait_for_discovery(discovery_timeout, wait):
                counts = {t: p.get_subscription_count() for t, p in self._pubs.items()}
                raise TimeoutError(f'node not discovered within {discovery_timeout} s '
                                   f'(subscribers per topic: {counts})')
            sent: list[int] = []
            frame_msgs: dict[int, list] = {}
            left_topics = {t for t in frame_topics if t.startswith('/left/image')}
            # Lock-step with a look-ahead: a frame is waited for only once the sensor messages
            # up to ``lookahead_s`` after its stamp are out (the node interpolates IMU/GNSS at
            # the image stamp, so it needs the fix that follows the image).
            pending: list[tuple[int, list]] = []
            look_ns = int(self.lookahead_s * 1e9)

            def flush(until_ns: int | None) -> None:
                while pending and (until_ns is None or pending[0][0] + look_ns <= until_ns):
                    st, ms = pending.pop(0)
                    self._wait_frame(st, ms, frame_timeout)

            wall0 = bag0 = None
            for conn, t_bag, raw in reader.messages(connections=conns):
                if lockstep:
                    flush(t_bag)
                elif realtime:
                    if wall0 is None:
                        wall0, bag0 = time.perf_counter(), t_bag
                    wait = wall0 + (t_bag - bag0) * 1e-9 - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                pub = self._pubs[topic_prefix + conn.topic]
                pub.publish(bytes(raw))
                if conn.topic not in frame_topics:
                    if not realtime:
                        time.sleep(self.sensor_pause_s)  # do not burst past small queues
                    continue
                stamp = _header_stamp_from_cdr(raw)
                frame_msgs.setdefault(stamp, []).append((pub, bytes(raw), conn.topic))
                if len(frame_msgs[stamp]) < len(frame_topics):
                    continue
                msgs = frame_msgs.pop(stamp)
                with self._cv:
                    self._sent_at[stamp] = time.perf_counter()
                if any(t in left_topics for _p, _r, t in msgs):
                    sent.append(stamp)
                if lockstep:
                    pending.append((stamp, msgs))
            if lockstep:
                flush(None)
            return sent

    def _wait_frame(self, stamp: int, msgs: list, timeout: float) -> None:
        """Wait for the outputs of ``stamp``; re-send the frame every ``resend_s``.

        Sensor-data subscriptions are best effort: samples sent while discovery is still
        settling can be lost. Re-sending is safe: the node's synchroniser drops a repeated
        stamp once that frame has been emitted.
        """
        deadline = time.monotonic() + timeout
        done = lambda: stamp in self.received.points and stamp in self.received.provenance  # noqa: E731
        while not self.wait_for(done, min(self.resend_s, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise TimeoutError(f'no output for frame stamp {stamp} within {timeout} s')
            _LOG.info('no output for frame %d yet; sending it again', stamp)
            self.resends += 1
            for pub, raw, _topic in msgs:
                pub.publish(raw)

    def close(self) -> None:
        """Stop spinning and shut the private context down."""
        self._stop.set()
        self._spin.join(2.0)
        self._executor.shutdown()
        self.node.destroy_node()
        self._ctx.try_shutdown()


def _header_stamp_from_cdr(raw: bytes | memoryview) -> int:
    """Stamp of a CDR message whose first field is std_msgs/Header (4-byte encapsulation)."""
    import struct

    sec, nanosec = struct.unpack_from('<iI', bytes(raw[4:12]))
    return sec * 1_000_000_000 + nanosec
