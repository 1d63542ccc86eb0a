"""Message <-> numpy conversions for the ROS shell (the only place that knows both)."""
from __future__ import annotations

import sys
from typing import Iterable

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import Header

from ..core.camera import camera_model_from_msg  # noqa: F401 (re-exported for the node)
from ..core.contract import POINT_FIELDS, POINT_STEP, SIGMA_DEFINITION, legend_tables
from ..core.images import image_from_msg  # noqa: F401 (re-exported for the node)

_LITTLE = sys.byteorder == 'little'






def pointcloud2(header: Header, cloud: np.ndarray, *, dense: bool) -> PointCloud2:
    """Wrap a POINT_DTYPE array ((H, W) organized or (N,)) in a PointCloud2."""
    msg = PointCloud2()
    msg.header = header
    if cloud.ndim == 2:
        msg.height, msg.width = int(cloud.shape[0]), int(cloud.shape[1])
    else:
        msg.height, msg.width = 1, int(cloud.shape[0])
    msg.fields = [PointField(name=n, offset=o, datatype=t, count=c) for n, o, t, c in POINT_FIELDS]
    msg.is_bigendian = False
    msg.point_step = POINT_STEP
    msg.row_step = POINT_STEP * msg.width
    msg.data = cloud.tobytes()  # bytes, not a memoryview: ~400x faster in rclpy
    msg.is_dense = dense
    return msg


def image_msg(header: Header, array: np.ndarray, encoding: str) -> Image:
    """(H, W) float32 -> 32FC1 or (H, W) uint8 -> mono8 Image with ``header``."""
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0 if _LITTLE else 1
    array = np.ascontiguousarray(array)
    msg.step = int(array.strides[0])
    msg.data = array.tobytes()
    return msg


_DATUM_NAMES = {'ellipsoid': 'WGS84 ellipsoid', 'egm96': 'EGM96', 'egm2008': 'EGM2008',
                'egm84': 'EGM84'}


def prior_source_msg(source):
    """geo_depth_node/PriorSource for an opened core.dem.DemSource."""
    from geo_depth_node.msg import PriorSource

    spec = source.spec
    m = PriorSource()
    m.id = int(spec.id)
    m.name = spec.name
    m.uri = ', '.join(source.paths)
    m.kind = PriorSource.KIND_SURFACE_MODEL if spec.kind == 'dsm' else PriorSource.KIND_DEM_BARE_EARTH
    crs = [g.crs.to_string() for g in source.groups]
    m.crs = ', '.join(dict.fromkeys(crs))
    m.vertical_datum = _DATUM_NAMES.get(spec.vertical_datum.lower(), spec.vertical_datum)
    m.vertical_sigma_m = float(spec.sigma_v_m)
    m.horizontal_sigma_m = float(spec.sigma_h_m)
    m.survey_date = spec.survey_date.isoformat() if spec.survey_date else ''
    m.licence = spec.licence
    return m


def fill_legend(msg, *, stamp, output_frame: str, max_relative_sigma: float,
                max_sigma_m: float, sources: Iterable = ()) -> None:
    """Fill a geo_depth_node/ProvenanceLegend message in place (stereo-only: no sources)."""
    pnames, pvalues, fnames, fbits = legend_tables()
    msg.header.stamp = stamp
    msg.header.frame_id = output_frame
    msg.provenance_names = pnames
    msg.provenance_values = pvalues
    msg.flag_names = fnames
    msg.flag_bits = fbits
    msg.sources = list(sources)
    msg.output_frame = output_frame
    msg.georeferenced = False
    msg.datum_latitude_deg = 0.0
    msg.datum_longitude_deg = 0.0
    msg.datum_height_m = 0.0
    msg.max_relative_sigma = float(max_relative_sigma)
    msg.max_sigma_m = float(max_sigma_m)
    msg.sigma_definition = SIGMA_DEFINITION


def diagnostic_status(name: str, level: bytes, message: str, values: dict[str, object],
                      hardware_id: str = '') -> DiagnosticStatus:
    """Build a DiagnosticStatus; ``level`` is a DiagnosticStatus constant (OK, WARN, ...);
    values are formatted with str() (floats to 6 digits)."""
    st = DiagnosticStatus()
    st.level = level
    st.name = name
    st.message = message
    st.hardware_id = hardware_id
    st.values = [KeyValue(key=k, value=(f'{v:.6g}' if isinstance(v, float) else str(v)))
                 for k, v in values.items()]
    return st
