"""Decode raw image buffers (the fields of sensor_msgs/Image) into numpy, ROS-free.

Honours ``step`` (row padding) and ``is_bigendian`` like cv_bridge does, and
raises :class:`ImageDecodeError` (a ValueError) naming what it cannot read.
"""
from __future__ import annotations

import numpy as np

# encoding -> (numpy dtype, channels)
_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    'mono8': (np.dtype(np.uint8), 1),
    '8UC1': (np.dtype(np.uint8), 1),
    'mono16': (np.dtype(np.uint16), 1),
    '16UC1': (np.dtype(np.uint16), 1),
    'rgb8': (np.dtype(np.uint8), 3),
    'bgr8': (np.dtype(np.uint8), 3),
    '8UC3': (np.dtype(np.uint8), 3),
    'rgba8': (np.dtype(np.uint8), 4),
    'bgra8': (np.dtype(np.uint8), 4),
    '32FC1': (np.dtype(np.float32), 1),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


class ImageDecodeError(ValueError):
    """The image buffer cannot be read (encoding, size, step or length problem)."""


def decode_image(data: bytes | bytearray | memoryview | np.ndarray, width: int, height: int,
                 encoding: str, step: int, is_bigendian: bool = False) -> np.ndarray:
    """Decode an image buffer into an array of shape (H, W) or (H, W, C).

    Args:
        data: the pixel bytes (row-major, ``step`` bytes per row).
        width, height: pixels.
        encoding: a sensor_msgs image encoding (see SUPPORTED_ENCODINGS).
        step: bytes per row, >= width * channels * itemsize.
        is_bigendian: byte order of multi-byte pixels.

    Returns:
        A C-contiguous array in native byte order (a copy; the buffer may be reused).

    Raises:
        ImageDecodeError: unsupported encoding, bad size/step or a short buffer.
    """
    if encoding not in _ENCODINGS:
        raise ImageDecodeError(f'unsupported image encoding {encoding!r}; supported: '
                               f'{", ".join(SUPPORTED_ENCODINGS)}')
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f'image size must be positive, got {width}x{height}')
    dtype, channels = _ENCODINGS[encoding]
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageDecodeError(f'step {step} is smaller than width*channels*bytes = {row_bytes} '
                               f'for {width}x{height} {encoding}')
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
        else data.reshape(-1).view(np.uint8)
    need = step * (height - 1) + row_bytes
    if buf.size < need:
        raise ImageDecodeError(f'image buffer has {buf.size} bytes, {need} needed for '
                               f'{width}x{height} {encoding} with step {step}')
    rows = np.lib.stride_tricks.as_strided(buf, shape=(height, row_bytes), strides=(step, 1))
    order = '>' if is_bigendian else '<'
    typed = np.ascontiguousarray(rows).view(dtype.newbyteorder(order) if dtype.itemsize > 1
                                            else dtype)
    img = typed.reshape(height, width, channels) if channels > 1 else typed.reshape(height, width)
    return img.astype(dtype.newbyteorder('='), copy=True)


def to_gray8(image: np.ndarray, encoding: str, mono16_max: int = 0,
             ref_max: float | None = None) -> np.ndarray:
    """Convert a decoded image to (H, W) uint8 grey for matching.

    Args:
        image: output of :func:`decode_image`.
        encoding: its encoding (channel order matters for colour).
        mono16_max: 16-bit images are scaled by 255 / mono16_max; 0 = use ``ref_max``.
        ref_max: the value that maps to 255 when mono16_max is 0 (pass the LEFT image's
            maximum for both images so left and right get the same scale); None = own max.

    Raises:
        ImageDecodeError: for an encoding that has no grey conversion.
    """
    import cv2

    if encoding in ('mono8', '8UC1'):
        return image
    if encoding in ('rgb8',):
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if encoding in ('bgr8', '8UC3'):
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if encoding == 'rgba8':
        return cv2.cvtColor(image, cv2.COLOR_RGBA2GRAY)
    if encoding == 'bgra8':
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    if encoding in ('mono16', '16UC1'):
        top = float(mono16_max) if mono16_max > 0 else float(ref_max if ref_max is not None
                                                               else image.max())
        top = max(top, 1.0)
        return np.clip(image.astype(np.float32) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
    raise ImageDecodeError(f'encoding {encoding!r} cannot be used for stereo matching')
