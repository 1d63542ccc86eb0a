"""rosbags-side twin of ``ros/conversions.py``: read stereo frames from a rosbag2 and build
the node's output messages as rosbags objects. No rclpy, no DDS: works without ROS.

Every builder here mirrors one function of :mod:`geo_depth_node.ros.conversions` field by
field (same layout, same encodings, same legend content), so a bag written by
``geo-depth replay`` carries what the live node would have published.

Message types: the ROS 2 Kilted typestore of ``rosbags`` plus the package's own
``geo_depth_node/msg/PriorSource`` and ``ProvenanceLegend``, registered from the ``.msg``
files of the source tree or of the colcon install (see :func:`find_msg_dir`).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from ..core.contract import POINT_FIELDS, POINT_STEP, SIGMA_DEFINITION, legend_tables

_LOG = logging.getLogger(__name__)
_LITTLE = sys.byteorder == 'little'

PACKAGE = 'geo_depth_node'
CUSTOM_MESSAGES = ('PriorSource', 'ProvenanceLegend')  # PriorSource first: the legend uses it
#: the names of the four stereo inputs (as in ros/node.py), in the synchroniser's order
INPUTS = ('left_image', 'left_info', 'right_image', 'right_info')



# ------------------------------------------------------------------------- types
def find_msg_dir() -> Path:
    """The directory holding ``PriorSource.msg`` and ``ProvenanceLegend.msg``.

    Looks in ``$GEO_DEPTH_MSG_DIR``, the source tree (``<repo>/msg``, also through the
    colcon symlink-install), ``<prefix>/share/geo_depth_node/msg`` next to an installed
    package, and every ``$AMENT_PREFIX_PATH`` entry.

    Raises:
        FileNotFoundError: if none of them has the files.
    """
    here = Path(__file__)
    candidates: list[Path] = []
    if os.environ.get('GEO_DEPTH_MSG_DIR'):
        candidates.append(Path(os.environ['GEO_DEPTH_MSG_DIR']))
    candidates.append(here.resolve().parents[2] / 'msg')  # source tree
    if len(here.parents) > 5:  # <prefix>/lib/pythonX.Y/site-packages/geo_depth_node/tools/
        candidates.append(here.parents[5] / 'share' / PACKAGE / 'msg')
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / 'share' / PACKAGE / 'msg')
    for c in candidates:
        if all((c / f'{m}.msg').is_file() for m in CUSTOM_MESSAGES):
            return c
    raise FileNotFoundError('cannot find the geo_depth_node .msg files (PriorSource.msg, '
                            'ProvenanceLegend.msg); looked in: '
                            + ', '.join(str(c) for c in candidates)
                            + ' (set GEO_DEPTH_MSG_DIR)')


def make_typestore():
    """ROS 2 Kilted typestore with ``geo_depth_node/msg/*`` registered (rosbags Typestore)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    msg_dir = find_msg_dir()
    types: dict = {}
    for name in CUSTOM_MESSAGES:
        text = (msg_dir / f'{name}.msg').read_text(encoding='utf-8')
        types.update(get_types_from_msg(text, f'{PACKAGE}/msg/{name}'))
    ts.register(types)
    return ts


def transient_local_qos() -> list:
    """Offered QoS of a latched topic as rosbag2 records it (reliable, transient local, 1)."""
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)

    inf = QosTime(sec=2147483647, nsec=4294967295)
    return [Qos(history=QosHistory.KEEP_LAST, depth=1, reliability=QosReliability.RELIABLE,
                durability=QosDurability.TRANSIENT_LOCAL, deadline=inf, lifespan=inf,
                liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=inf,
                avoid_ros_namespace_conventions=False)]


# ------------------------------------------------------------------------- builders
def stamp_ns(msg: Any) -> int:
    """header.stamp of a message in integer nanoseconds."""
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def header(ts, stamp: int, frame_id: str):
    """std_msgs/Header with ``stamp`` (ns) and ``frame_id``."""
    t = ts.types['builtin_interfaces/msg/Time'](sec=int(stamp // 1_000_000_000),
                                                nanosec=int(stamp % 1_000_000_000))
    return ts.types['std_msgs/msg/Header'](stamp=t, frame_id=frame_id)


def _as_bytes_array(array: np.ndarray) -> np.ndarray:
    """Flat uint8 view (a copy only when ``array`` is not C-contiguous)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def pointcloud2_msg(ts, hdr, cloud: np.ndarray, *, dense: bool):
    """POINT_DTYPE array ((H, W) organized or (N,)) -> sensor_msgs/PointCloud2.

    Same as ``conversions.pointcloud2``: fields from core.contract.POINT_FIELDS, little-endian,
    point_step 24, row_step 24 * width, data = the array's bytes.
    """
    PointField = ts.types['sensor_msgs/msg/PointField']
    if cloud.ndim == 2:
        height, width = int(cloud.shape[0]), int(cloud.shape[1])
    else:
        height, width = 1, int(cloud.shape[0])
    fields = [PointField(name=n, offset=o, datatype=t, count=c) for n, o, t, c in POINT_FIELDS]
    return ts.types['sensor_msgs/msg/PointCloud2'](
        header=hdr, height=height, width=width, fields=fields, is_bigendian=False,
        point_step=POINT_STEP, row_step=POINT_STEP * width, data=_as_bytes_array(cloud),
        is_dense=bool(dense))


def image_msg(ts, hdr, array: np.ndarray, encoding: str):
    """(H, W) float32 -> 32FC1 or (H, W) uint8 -> mono8 sensor_msgs/Image (as conversions)."""
    array = np.ascontiguousarray(array)
    return ts.types['sensor_msgs/msg/Image'](
        header=hdr, height=int(array.shape[0]), width=int(array.shape[1]), encoding=encoding,
        is_bigendian=0 if _LITTLE else 1, step=int(array.strides[0]),
        data=_as_bytes_array(array))


_DATUM_NAMES = {'ellipsoid': 'WGS84 ellipsoid', 'egm96': 'EGM96', 'egm2008': 'EGM2008',
                'egm84': 'EGM84'}


def prior_source_msg(ts, source: Any):
    """geo_depth_node/PriorSource for an opened core.dem.DemSource (as conversions)."""
    PriorSource = ts.types[f'{PACKAGE}/msg/PriorSource']
    spec = source.spec
    crs = [g.crs.to_string() for g in source.groups]
    return PriorSource(
        id=int(spec.id), name=spec.name, uri=', '.join(source.paths),
        kind=PriorSource.KIND_SURFACE_MODEL if spec.kind == 'dsm'
        else PriorSource.KIND_DEM_BARE_EARTH,
        crs=', '.join(dict.fromkeys(crs)),
        vertical_datum=_DATUM_NAMES.get(spec.vertical_datum.lower(), spec.vertical_datum),
        vertical_sigma_m=float(spec.sigma_v_m), horizontal_sigma_m=float(spec.sigma_h_m),
        survey_date=spec.survey_date.isoformat() if spec.survey_date else '',
        licence=spec.licence)


def legend_msg(ts, stamp: int, output_frame: str, max_relative_sigma: float,
               max_sigma_m: float, sources: Iterable = (), datum=None):
    """geo_depth_node/ProvenanceLegend filled like the node's (``datum``: the EnuFrame or None)."""
    pnames, pvalues, fnames, fbits = legend_tables()
    lat, lon, h = (datum.lat0_deg, datum.lon0_deg, datum.h0_m) if datum is not None \
        else (0.0, 0.0, 0.0)
    return ts.types[f'{PACKAGE}/msg/ProvenanceLegend'](
        header=header(ts, stamp, output_frame), provenance_names=pnames,
        provenance_values=np.asarray(pvalues, dtype=np.uint8), flag_names=fnames,
        flag_bits=np.asarray(fbits, dtype=np.uint16), sources=list(sources),
        output_frame=output_frame, georeferenced=datum is not None, datum_latitude_deg=lat,
        datum_longitude_deg=lon, datum_height_m=h,
        max_relative_sigma=float(max_relative_sigma), max_sigma_m=float(max_sigma_m),
        sigma_definition=SIGMA_DEFINITION)


def diagnostic_array(ts, stamp: int, name: str, level: int, message: str,
                     values: Mapping[str, object], hardware_id: str = ''):
    """diagnostic_msgs/DiagnosticArray with one status (values formatted as the node does:
    floats with 6 significant digits, the rest with str())."""
    KeyValue = ts.types['diagnostic_msgs/msg/KeyValue']
    status = ts.types['diagnostic_msgs/msg/DiagnosticStatus'](
        level=int(level), name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=k, value=(f'{v:.6g}' if isinstance(v, float) else str(v)))
                for k, v in values.items()])
    return ts.types['diagnostic_msgs/msg/DiagnosticArray'](header=header(ts, stamp, ''),
                                                          status=[status])


# ------------------------------------------------------------------------- decoding


# ------------------------------------------------------------------------- reading
def input_topics(rectify: bool, prefix: str = '',
                 overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Bag topic of each stereo input, as the node subscribes in namespace ``prefix``.

    Args:
        rectify: the ``rectify`` parameter: image_raw (True) or image_rect (False).
        prefix: namespace prepended to the relative names ('' or '/stereo').
        overrides: input name (INPUTS) -> full topic, like ROS remaps.

    Raises:
        ValueError: an override for an unknown input name.
    """
    kind = 'image_raw' if rectify else 'image_rect'
    ns = ('/' + prefix.strip('/')) if prefix.strip('/') else ''
    topics = {'left_image': f'{ns}/left/{kind}', 'left_info': f'{ns}/left/camera_info',
              'right_image': f'{ns}/right/{kind}', 'right_info': f'{ns}/right/camera_info'}
    for name, topic in (overrides or {}).items():
        if name not in topics:
            raise ValueError(f'unknown stereo input {name!r} in topic overrides; expected one '
                             f'of {INPUTS}')
        topics[name] = topic
    return topics


class StereoBag:
    """An open rosbag2 (sqlite3 or mcap) read through rosbags' AnyReader (context manager).

    Args:
        path: the bag directory (or a single .mcap / .db3 file).
        topics: input name (INPUTS) -> topic, see :func:`input_topics`.
        workdir: an existing directory for the recovered copy of a damaged MCAP (in a
            temporary subdirectory, removed on exit); None: the system's temporary directory.

    The bag is checked first (:func:`~geo_depth_node.tools.bag_open.open_checked`): an MCAP
    cut off while written (no footer) is read from a recovered copy of its messages up to the
    damage; ``recovery`` is then its report (messages per topic, last good log time, bytes
    read of total), else {}. ``read_path`` is what is actually read.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the bag lacks one of the four stereo topics (the message lists the
            Image / CameraInfo topics it does have).
        BagError (a ValueError): the bag is damaged or incomplete (missing storage file,
            damaged SQLite file, unreadable MCAP), here, on entering or while iterating.
    """

    def __init__(self, path: str | os.PathLike, topics: Mapping[str, str],
                 workdir: str | os.PathLike | None = None) -> None:
        import tempfile

        from rosbags.highlevel import AnyReader

        from .bag_open import READ_ERRORS, BagError, open_checked
        from .scene_bag import kilted_typestore

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f'bag {self.path} does not exist')
        self.topics = dict(topics)
        self._scratch = tempfile.TemporaryDirectory(prefix='geo_depth_bag_', dir=workdir)
        try:
            self.read_path, self.recovery = open_checked(self.path, self._scratch.name)
            self._reader = AnyReader([self.read_path], default_typestore=kilted_typestore())
        except BaseException as exc:
            self._scratch.cleanup()
            if isinstance(exc, READ_ERRORS) and not isinstance(exc, BagError):
                raise BagError(f'bag {self.path} cannot be opened: {type(exc).__name__}: '
                               f'{exc}') from exc
            raise

    def __enter__(self) -> 'StereoBag':
        from .bag_open import READ_ERRORS, BagError

        try:
            self._reader.open()
        except READ_ERRORS as exc:
            self._scratch.cleanup()
            raise BagError(f'bag {self.path} cannot be opened'
                           + (f' (recovered copy {self.read_path})' if self.recovery else '')
                           + f': {type(exc).__name__}: {exc}') from exc
        try:
            self._check()
        except BaseException:
            self._reader.close()
            self._scratch.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._reader.close()
        self._scratch.cleanup()

    def _check(self) -> None:
        by_topic = {c.topic: c for c in self._reader.connections}
        missing = [f'{name} ({t})' for name, t in self.topics.items() if t not in by_topic]
        if missing:
            have = sorted(f'{c.topic} [{c.msgtype}]' for c in self._reader.connections
                          if c.msgtype in ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CameraInfo'))
            raise ValueError(
                f'bag {self.path} has no stereo input topic(s) {", ".join(missing)}; its Image/'
                f'CameraInfo topics are: {", ".join(have) if have else "none"} (use '
                '--topic-prefix or --topic NAME:=TOPIC, and check the rectify parameter)')
        for name, topic in self.topics.items():
            want = 'sensor_msgs/msg/Image' if name.endswith('_image') else \
                'sensor_msgs/msg/CameraInfo'
            if by_topic[topic].msgtype != want:
                raise ValueError(f'bag topic {topic} ({name}) is {by_topic[topic].msgtype}, '
                                 f'expected {want}')
        self._conns = [c for c in self._reader.connections if c.topic in self.topics.values()]
        self._name_of = {t: n for n, t in self.topics.items()}

    @property
    def topic_names(self) -> list[str]:
        """Every topic in the bag."""
        return sorted({c.topic for c in self._reader.connections})

    def count(self, name: str) -> int:
        """Number of messages of one stereo input (from the bag's index)."""
        return sum(c.msgcount for c in self._conns if c.topic == self.topics[name])

    def messages(self) -> Iterator[tuple[str, Any]]:
        """(input name, deserialized message) of the four stereo inputs, in bag order."""
        for conn, _t, msg in self._read(self._conns):
            yield self._name_of[conn.topic], msg

    def topics_of_types(self, msgtypes: Iterable[str]) -> set[str]:
        """The topics of every connection of the given types (e.g. 'sensor_msgs/msg/Imu')."""
        wanted = set(msgtypes)
        return {c.topic for c in self._reader.connections if c.msgtype in wanted}

    def messages_with(self, topics: Iterable[str]
                      ) -> Iterator[tuple[str | None, str, Any, int]]:
        """The four stereo inputs and every connection on ``topics`` (e.g. the pose inputs),
        merged in bag order (receive order, as a node subscribed to them gets them):
        (stereo input name or None, topic, deserialized message, bag time ns)."""
        wanted = set(topics)
        conns = self._conns + [c for c in self._reader.connections
                               if c.topic in wanted and c.topic not in self._name_of]
        for conn, t, msg in self._read(conns):
            yield self._name_of.get(conn.topic), conn.topic, msg, int(t)

    def _read(self, conns: list) -> Iterator[tuple[Any, int, Any]]:
        """(connection, bag time ns, deserialized message) of ``conns`` in bag order; a reader
        error (damaged storage) raises BagError saying how far the reading got."""
        from .bag_open import read_guarded

        return read_guarded(self._reader, conns, self.path)
