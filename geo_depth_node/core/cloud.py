"""Pack a FrameResult into the ~/points byte layout, and write PLY files. ROS-free."""
from __future__ import annotations

import os

import numpy as np

from .contract import POINT_DTYPE, Provenance
from .images import RowBands, alloc_arrays
from .pipeline import FrameResult

_BANDS = RowBands()


def pack_points(result: FrameResult, organized: bool = True) -> np.ndarray:
    """Pack a frame into an array of POINT_DTYPE (bytes identical to PointCloud2.data).

    Args:
        result: the pipeline output.
        organized: True -> (H, W) array with every pixel (NaN x/y/z where there is no
            point); False -> (N,) array of points with provenance != NONE.

    Returns:
        A C-contiguous structured array; ``arr.tobytes()`` is the message payload.
    """
    h, w = result.shape
    packed = result.packed  # packed on the device by the torch frame path
    if packed is not None:
        if organized:
            return packed
        return _points_only(packed, result.provenance)
    # one aligned block (transparent huge pages from 4 MiB: few page faults), zeroed so that
    # the padding bytes are deterministic
    cloud, = alloc_arrays([((h, w), POINT_DTYPE)])

    def band(rows: slice) -> None:  # row bands in parallel (numpy releases the GIL)
        c = cloud[rows]
        c.view(np.uint8).fill(0)
        pts = result.points[rows]
        c['x'] = pts[..., 0]
        c['y'] = pts[..., 1]
        c['z'] = pts[..., 2]
        c['sigma'] = result.sigma[rows]
        c['provenance'] = result.provenance[rows]
        c['flags'] = result.flags[rows]
        c['source'] = result.source[rows]

    _BANDS.run(band, h, w)
    if organized:
        return cloud
    return _points_only(cloud, result.provenance)


def _points_only(cloud: np.ndarray, provenance: np.ndarray) -> np.ndarray:
    """(N,) records of ``cloud`` whose provenance is not NONE, padding bytes included (indexing
    the structured dtype itself copies field by field and leaves the padding undefined)."""
    keep = (provenance != np.uint8(Provenance.NONE)).reshape(-1)
    records = np.ascontiguousarray(cloud).reshape(-1).view(np.dtype((np.void, POINT_DTYPE.itemsize)))
    return records[keep].view(POINT_DTYPE)


def unpack_points(data: bytes | bytearray | memoryview, height: int, width: int) -> np.ndarray:
    """View a ~/points payload (PointCloud2.data) as a (height, width) POINT_DTYPE array.

    Raises:
        ValueError: if the payload size is not height * width * POINT_STEP.
    """
    buf = bytes(data)
    if len(buf) != height * width * POINT_DTYPE.itemsize:
        raise ValueError(f'cloud payload has {len(buf)} bytes, expected {height}x{width}x'
                         f'{POINT_DTYPE.itemsize}')
    return np.frombuffer(buf, dtype=POINT_DTYPE).reshape(height, width)


def write_ply(path: str | os.PathLike, cloud: np.ndarray, *, drop_none: bool = True) -> int:
    """Write points of POINT_DTYPE to a binary little-endian PLY, keeping every field.

    Properties: x y z sigma (float), provenance (uchar), flags source (ushort).

    Args:
        path: output file.
        cloud: (H, W) or (N,) array of POINT_DTYPE.
        drop_none: skip points with provenance NONE (their x/y/z are NaN).

    Returns:
        The number of points written.
    """
    if cloud.dtype != POINT_DTYPE:
        raise ValueError(f'cloud must have dtype POINT_DTYPE, got {cloud.dtype}')
    pts = cloud.reshape(-1)
    if drop_none:
        pts = pts[pts['provenance'] != np.uint8(Provenance.NONE)]
    packed = np.empty(pts.shape[0], dtype=np.dtype([
        ('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('sigma', '<f4'),
        ('provenance', 'u1'), ('flags', '<u2'), ('source', '<u2')]))
    for name in packed.dtype.names:
        packed[name] = pts[name]
    header = (
        'ply\nformat binary_little_endian 1.0\n'
        'comment geo_depth_node cloud: sigma = 1-sigma range along the viewing ray (m); '
        'provenance 0 NONE 1 MEASURED 2 FUSED 3 PRIOR; flags = bit mask (see README)\n'
        f'element vertex {packed.shape[0]}\n'
        'property float x\nproperty float y\nproperty float z\nproperty float sigma\n'
        'property uchar provenance\nproperty ushort flags\nproperty ushort source\n'
        'end_header\n')
    with open(path, 'wb') as f:
        f.write(header.encode('ascii'))
        f.write(packed.tobytes())
    return int(packed.shape[0])


def read_ply(path: str | os.PathLike) -> np.ndarray:
    """Read a PLY written by :func:`write_ply` back into a structured array (for tests/tools)."""
    with open(path, 'rb') as f:
        data = f.read()
    end = data.index(b'end_header\n') + len(b'end_header\n')
    header = data[:end].decode('ascii').splitlines()
    n = next(int(line.split()[2]) for line in header if line.startswith('element vertex'))
    dt = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('sigma', '<f4'),
                   ('provenance', 'u1'), ('flags', '<u2'), ('source', '<u2')])
    return np.frombuffer(data, dtype=dt, count=n, offset=end).copy()
