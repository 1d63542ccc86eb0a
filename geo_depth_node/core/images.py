"""Decode raw image buffers (the fields of sensor_msgs/Image) into numpy, ROS-free.

Honours ``step`` (row padding) and ``is_bigendian`` like cv_bridge does, and
raises :class:`ImageDecodeError` (a ValueError) naming what it cannot read.

Also the image-sized buffers of the host frame path: :class:`Workspace` (reused scratch
arrays), :func:`alloc_arrays` (a frame's outputs in one huge-page-backed block) and
:class:`RowBands` (per-pixel passes over row bands on several threads).
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, TypeVar

import numpy as np

T = TypeVar('T')

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
    if step > max(buf.size, row_bytes):  # a row step beyond the whole buffer (ROS: step * height)
        raise ImageDecodeError(f'step {step} is larger than the image buffer ({buf.size} bytes) '
                               f'for {width}x{height} {encoding}')
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


# --------------------------------------------------------------------------- frame buffers
#: Transparent huge page size (x86-64 / aarch64 Linux).
_HUGE_PAGE = 2 << 20
#: numpy advises huge pages for allocations from this size on (its madvise threshold).
_HUGE_MIN = 4 << 20


class Workspace:
    """Reusable scratch arrays of the per-frame host path, by name (not thread-safe: one per
    matcher / pipeline, which process one frame at a time).

    A fresh large array costs one page fault per 4 KiB page on first touch (a few
    microseconds each in a virtual machine: more than the arithmetic that fills it), so
    temporaries are allocated once per shape and reused.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """The scratch array ``name`` with this shape and dtype (contents undefined)."""
        a = self._arrays.get(name)
        if a is None or a.shape != tuple(shape) or a.dtype != np.dtype(dtype):
            a = np.empty(shape, dtype)
            self._arrays[name] = a
        return a


def alloc_arrays(specs: list[tuple[tuple[int, ...], np.dtype | type]]) -> list[np.ndarray]:
    """Fresh arrays (contents undefined) carved out of ONE allocation, each 64-byte aligned.

    Outputs of a frame outlive it, so they cannot be scratch; one block from 4 MiB on is
    aligned to the huge page size so that the kernel backs it with transparent huge pages
    (numpy advises them for large allocations): a few faults instead of one per 4 KiB page.
    The block lives as long as any of the returned views.

    Args:
        specs: [(shape, dtype), ...].

    Returns:
        One C-contiguous array per spec.
    """
    sizes = [int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize for shape, dt in specs]
    padded = [(n + 63) // 64 * 64 for n in sizes]
    total = sum(padded)
    if total >= _HUGE_MIN:
        buf = np.empty(total + _HUGE_PAGE, np.uint8)
        start = (-buf.ctypes.data) % _HUGE_PAGE
    else:
        buf = np.empty(total + 64, np.uint8)
        start = (-buf.ctypes.data) % 64
    out = []
    for (shape, dt), n, p in zip(specs, sizes, padded, strict=True):
        out.append(buf[start:start + n].view(dt).reshape(shape))
        start += p
    return out


class RowBands:
    """Runs a function over horizontal bands of an image on several threads.

    numpy ufuncs and OpenCV release the GIL while they work on whole arrays, so per-pixel
    passes over disjoint row bands of the same arrays run in parallel; the caller's thread
    takes the first band, a shared pool the others. Small images run in one band.

    Args:
        n: number of bands (default: the CPU count, at most 4).
        min_pixels: images smaller than this run in one band.
    """

    _pool: Any = None
    _pool_lock = threading.Lock()

    def __init__(self, n: int | None = None, min_pixels: int = 1 << 16) -> None:
        if n is None:
            n = min(4, os.cpu_count() or 1)
        if n < 1:
            raise ValueError(f'RowBands needs n >= 1, got {n}')
        self.n = int(n)
        self.min_pixels = int(min_pixels)

    @classmethod
    def _executor(cls) -> Any:
        with cls._pool_lock:
            if cls._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                cls._pool = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1) - 1),
                                               thread_name_prefix='geo_depth_bands')
            return cls._pool

    def slices(self, h: int, w: int) -> list[slice]:
        """The row bands of an (h, w) image."""
        k = self.n if h * w >= self.min_pixels and h >= 2 * self.n else 1
        edges = [h * i // k for i in range(k + 1)]
        return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]

    def run(self, fn: Callable[[slice], T], h: int, w: int) -> list[T]:
        """[fn(band) for each band], the bands in parallel; exceptions propagate."""
        bands = self.slices(h, w)
        if len(bands) == 1:
            return [fn(bands[0])]
        futures = [self._executor().submit(fn, b) for b in bands[1:]]
        first = fn(bands[0])
        return [first] + [f.result() for f in futures]


def image_from_msg(msg: Any) -> np.ndarray:
    """A sensor_msgs/Image-like object (rclpy or rosbags; duck-typed) -> (H, W[, C]) array.

    Raises:
        ImageDecodeError (a ValueError): an encoding or layout it cannot decode.
    """
    return decode_image(msg.data, msg.width, msg.height, msg.encoding, msg.step,
                        bool(msg.is_bigendian))
