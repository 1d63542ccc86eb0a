"""One synchronised stereo frame (four messages) decoded into images and camera models: the
step the node's worker and ``geo-depth replay`` share. ROS-free and duck-typed: the messages
are rclpy or rosbags objects with the sensor_msgs fields.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .camera import CameraModel, camera_model_from_msg
from .images import image_from_msg, to_gray8


def decode_stereo(frame: Mapping[str, Any], mono16_max: int
                  ) -> tuple[np.ndarray, np.ndarray, CameraModel, CameraModel]:
    """One synchronised frame -> (left, right (H, W) uint8 grey, left model, right model).

    Args:
        frame: 'left_image', 'right_image' (sensor_msgs/Image), 'left_info', 'right_info'
            (sensor_msgs/CameraInfo).
        mono16_max: ``input.mono16_max``: 16-bit images are scaled to 8 bit by 255/mono16_max
            (0: both by the LEFT image's maximum).

    Raises:
        ValueError: bad calibration, undecodable image or different encodings left/right.
    """
    li, ri = frame['left_image'], frame['right_image']
    left_model = camera_model_from_msg(frame['left_info'])
    right_model = camera_model_from_msg(frame['right_info'])
    left_raw = image_from_msg(li)
    right_raw = image_from_msg(ri)
    if li.encoding != ri.encoding:
        raise ValueError(f'left is {li.encoding} but right is {ri.encoding}')
    ref = float(left_raw.max()) if li.encoding in ('mono16', '16UC1') else None
    left = to_gray8(left_raw, li.encoding, mono16_max, ref)
    right = to_gray8(right_raw, ri.encoding, mono16_max, ref)
    return left, right, left_model, right_model


def frame_warnings(frame: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Doubtful but usable facts of one frame, as (input problem kind, text): the frame is
    processed all the same, the problem is counted and reported.

    * ``frame_id_mismatch``: a CameraInfo whose frame_id is not its image's (the calibration
      may belong to another camera); an empty one is not a mismatch.
    """
    out: list[tuple[str, str]] = []
    for side in ('left', 'right'):
        img = str(frame[f'{side}_image'].header.frame_id)
        info = str(frame[f'{side}_info'].header.frame_id)
        if img and info and img != info:
            out.append(('frame_id_mismatch', f'{side} camera_info frame_id {info!r} is not its '
                        f'image\'s {img!r}: the calibration is used all the same'))
    return out
