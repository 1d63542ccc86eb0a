"""Write analytic stereo scenes (core.scene) as a rosbag2 plus a truth file. ROS-free.

Bag topics (what the node subscribes to in the root namespace):
    /left/image_rect, /right/image_rect     sensor_msgs/msg/Image, mono8
    /left/camera_info, /right/camera_info   sensor_msgs/msg/CameraInfo (plumb_bob, D = 0, R = I)
Frame ids: ``left_camera_optical_frame`` and ``right_camera_optical_frame``.

Truth file ``truth.npz`` (one row per frame, same order as the bag):
    stamps_ns (N,) int64         header stamp of frame i
    depth (N, H, W) float32      true Z along the left optical axis, m (+inf = sky)
    disparity (N, H, W) float32  true f*B/Z, px
    surface (N, H, W) uint8      0 sky, 1 ground, 2.. objects
    textureless (N, H, W) bool   pixel on a uniform patch
    occluded (N, H, W) bool      not visible from the right camera
    K (3, 3), P_left (3, 4), P_right (3, 4) float64; baseline_m float
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

_LOG = logging.getLogger(__name__)

LEFT_FRAME = 'left_camera_optical_frame'
RIGHT_FRAME = 'right_camera_optical_frame'
TOPICS = {
    'left_image': ('/left/image_rect', 'sensor_msgs/msg/Image'),
    'left_info': ('/left/camera_info', 'sensor_msgs/msg/CameraInfo'),
    'right_image': ('/right/image_rect', 'sensor_msgs/msg/Image'),
    'right_info': ('/right/camera_info', 'sensor_msgs/msg/CameraInfo'),
}
START_NS = 1_700_000_000 * 1_000_000_000  # a fixed, realistic epoch stamp (deterministic bags)


def kilted_typestore():
    """The rosbags typestore of ROS 2 Kilted message definitions."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


BAG_STORAGES = ('mcap', 'sqlite3')


def check_storage(storage: str) -> None:
    """Raise ValueError unless ``storage`` is a rosbag2 storage we write (BAG_STORAGES)."""
    if storage not in BAG_STORAGES:
        raise ValueError(f'storage must be one of {list(BAG_STORAGES)}, got {storage!r}')


def new_bag_writer(bag_dir: Path, storage: str):
    """A rosbags rosbag2 Writer (format version 9) for a fresh ``bag_dir`` (an existing one is
    removed first) in ``storage`` ('mcap' or 'sqlite3'); use it as a context manager."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    check_storage(storage)
    if bag_dir.exists():
        shutil.rmtree(bag_dir)
    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    return Writer(bag_dir, version=9, storage_plugin=plugin)


def _header(ts, stamp_ns: int, frame_id: str):
    Time = ts.types['builtin_interfaces/msg/Time']
    Header = ts.types['std_msgs/msg/Header']
    return Header(stamp=Time(sec=int(stamp_ns // 1_000_000_000),
                             nanosec=int(stamp_ns % 1_000_000_000)), frame_id=frame_id)


def image_message(ts, stamp_ns: int, frame_id: str, img: np.ndarray, encoding: str = 'mono8'):
    """A rosbags sensor_msgs/Image for an (H, W) uint8 or (H, W, 3) array."""
    Image = ts.types['sensor_msgs/msg/Image']
    img = np.ascontiguousarray(img)
    return Image(header=_header(ts, stamp_ns, frame_id), height=img.shape[0], width=img.shape[1],
                 encoding=encoding, is_bigendian=0, step=int(img.strides[0]),
                 data=img.reshape(-1).view(np.uint8))


def camera_info_message(ts, stamp_ns: int, frame_id: str, width: int, height: int,
                        K: np.ndarray, P: np.ndarray, D: np.ndarray | None = None,
                        R: np.ndarray | None = None, distortion_model: str = 'plumb_bob'):
    """A rosbags sensor_msgs/CameraInfo."""
    CameraInfo = ts.types['sensor_msgs/msg/CameraInfo']
    RegionOfInterest = ts.types['sensor_msgs/msg/RegionOfInterest']
    return CameraInfo(
        header=_header(ts, stamp_ns, frame_id), height=height, width=width,
        distortion_model=distortion_model,
        d=np.asarray(D if D is not None else np.zeros(5), dtype=np.float64),
        k=np.asarray(K, dtype=np.float64).reshape(9),
        r=np.asarray(R if R is not None else np.eye(3), dtype=np.float64).reshape(9),
        p=np.asarray(P, dtype=np.float64).reshape(12), binning_x=0, binning_y=0,
        roi=RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def write_scene_bag(out_dir: str | os.PathLike, *, frames: int = 5, width: int = 640,
                    height: int = 480, baseline_m: float = 0.12, seed: int = 0,
                    rate_hz: float = 5.0, storage: str = 'mcap') -> dict[str, Any]:
    """Render ``frames`` scenes (seeds seed, seed+1, ...) and write OUT/bag + OUT/truth.npz.

    Returns:
        {'bag': path, 'truth': path, 'frames': n, 'stamps_ns': [...]}.

    Raises:
        ValueError: on a bad frame count, rate or storage name.
    """
    from ..core.scene import render_scene

    if frames < 1:
        raise ValueError(f'frames must be >= 1, got {frames}')
    if not rate_hz > 0:
        raise ValueError(f'rate_hz must be > 0, got {rate_hz}')
    check_storage(storage)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bag = out / 'bag'
    ts = kilted_typestore()
    period_ns = int(round(1e9 / rate_hz))
    truth: dict[str, list] = {k: [] for k in ('depth', 'disparity', 'surface', 'textureless',
                                              'occluded')}
    stamps: list[int] = []
    scene = None
    with new_bag_writer(bag, storage) as writer:
        conns = {k: writer.add_connection(topic, typ, typestore=ts)
                 for k, (topic, typ) in TOPICS.items()}
        for i in range(frames):
            scene = render_scene(width, height, baseline_m=baseline_m, seed=seed + i)
            stamp = START_NS + i * period_ns
            msgs = {
                'left_image': image_message(ts, stamp, LEFT_FRAME, scene.left),
                'left_info': camera_info_message(ts, stamp, LEFT_FRAME, width, height, scene.K,
                                                 scene.P_left),
                'right_image': image_message(ts, stamp, RIGHT_FRAME, scene.right),
                'right_info': camera_info_message(ts, stamp, RIGHT_FRAME, width, height, scene.K,
                                                  scene.P_right),
            }
            for key in ('left_info', 'right_info', 'left_image', 'right_image'):
                typ = TOPICS[key][1]
                writer.write(conns[key], stamp, bytes(ts.serialize_cdr(msgs[key], typ)))
            for k in truth:
                truth[k].append(getattr(scene, k))
            stamps.append(stamp)
            _LOG.info('frame %d/%d rendered', i + 1, frames)
    truth_path = out / 'truth.npz'
    np.savez_compressed(truth_path, stamps_ns=np.asarray(stamps, dtype=np.int64),
                        **{k: np.stack(v) for k, v in truth.items()},
                        K=scene.K, P_left=scene.P_left, P_right=scene.P_right,
                        baseline_m=np.float64(baseline_m))
    return {'bag': str(bag), 'truth': str(truth_path), 'frames': frames, 'stamps_ns': stamps}
