"""The point cloud contract: provenance classes, reason flags and the point layout.

Everything a consumer of ``~/points`` needs to interpret a point lives here, in
plain numpy, so the core, the ROS shell, the offline tools and the tests share
one definition. The generated message ``geo_depth_node/msg/ProvenanceLegend``
carries the same constants; a test checks that both agree.

Point layout (little-endian, ``point_step`` = 24 bytes)::

    offset  name        type     meaning
    0       x           float32  metres, output frame (default: left camera optical frame, REP-103)
    4       y           float32  metres
    8       z           float32  metres
    12      sigma       float32  1-sigma uncertainty of the range along the pixel's viewing ray, metres
    16      provenance  uint8    Provenance value
    17      (padding)
    18      flags       uint16   bit mask of Flag values (reasons / qualifiers)
    20      source      uint16   PriorSource id, 0 = none
    22      (padding to 24)
"""
from __future__ import annotations

import enum

import numpy as np


class Provenance(enum.IntEnum):
    """Where a point's depth came from; exactly one value per point."""

    NONE = 0  #: no point: x, y, z (and sigma) are NaN; ``flags`` says why
    MEASURED = 1  #: stereo, sigma within the physical limit
    FUSED = 2  #: stereo + consistent prior, inverse-variance fused along the ray
    PRIOR = 3  #: prior (DEM) alone; ``source`` names it


class Flag(enum.IntFlag):
    """Reasons and qualifiers of a point (uint16 bit mask). Bit values are fixed forever."""

    BEYOND_RESOLUTION = 1 << 0  #: stereo sigma exceeds the physical limit (too far to resolve)
    NO_MATCH = 1 << 1  #: no unique stereo match (no texture / uniqueness / speckle)
    LR_INCONSISTENT = 1 << 2  #: left-right consistency check failed (occlusion or mismatch)
    TOO_CLOSE = 1 << 3  #: disparity at or beyond the top of the search range
    PRIOR_CONFLICT = 1 << 4  #: stereo and prior disagree beyond the gate (see core.fusion)
    PRIOR_UNAVAILABLE = 1 << 5  #: no prior for this ray (outside DEM, nodata, no pose)
    PRIOR_SURFACE_MODEL = 1 << 6  #: the prior is a surface model (DSM), not bare earth
    POSE_DEGRADED = 1 << 7  #: camera pose on the Earth is degraded
    SKY = 1 << 8  #: the ray hits nothing within range
    OUT_OF_VIEW = 1 << 9  #: outside the searchable stereo overlap (border band, invalid rectified area)


#: Flags that explain why a pixel has no stereo measurement.
STEREO_FAILURE_FLAGS = (Flag.BEYOND_RESOLUTION | Flag.NO_MATCH | Flag.LR_INCONSISTENT
                        | Flag.TOO_CLOSE | Flag.OUT_OF_VIEW | Flag.SKY)

#: What the ``sigma`` field means (also sent in the legend).
SIGMA_DEFINITION = (
    '1-sigma uncertainty, in metres, of the distance from the camera centre to the point '
    'along the pixel viewing ray (stereo: sigma_Z * |ray|, sigma_Z = Z^2/(f*B) * sigma_d); '
    'NaN where there is no point')

# sensor_msgs/PointField datatype codes (fixed by the message definition).
POINTFIELD_UINT8 = 2
POINTFIELD_UINT16 = 4
POINTFIELD_FLOAT32 = 7

#: (name, offset, PointField datatype, count) of every field of ~/points.
POINT_FIELDS: tuple[tuple[str, int, int, int], ...] = (
    ('x', 0, POINTFIELD_FLOAT32, 1),
    ('y', 4, POINTFIELD_FLOAT32, 1),
    ('z', 8, POINTFIELD_FLOAT32, 1),
    ('sigma', 12, POINTFIELD_FLOAT32, 1),
    ('provenance', 16, POINTFIELD_UINT8, 1),
    ('flags', 18, POINTFIELD_UINT16, 1),
    ('source', 20, POINTFIELD_UINT16, 1),
)
POINT_STEP = 24

#: numpy dtype of one point, byte-identical to the PointCloud2 layout.
POINT_DTYPE = np.dtype({
    'names': ['x', 'y', 'z', 'sigma', 'provenance', 'flags', 'source'],
    'formats': ['<f4', '<f4', '<f4', '<f4', 'u1', '<u2', '<u2'],
    'offsets': [0, 4, 8, 12, 16, 18, 20],
    'itemsize': POINT_STEP,
})


def flag_names(mask: int) -> list[str]:
    """Names of the flags set in ``mask``, lowest bit first.

    >>> flag_names(Flag.NO_MATCH | Flag.SKY)
    ['NO_MATCH', 'SKY']
    """
    return [f.name for f in Flag if int(mask) & int(f)]


def legend_tables() -> tuple[list[str], list[int], list[str], list[int]]:
    """Return (provenance names, provenance values, flag names, flag bits) for the legend."""
    return ([p.name for p in Provenance], [int(p) for p in Provenance],
            [f.name for f in Flag], [int(f) for f in Flag])
