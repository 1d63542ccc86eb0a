"""The node params file written next to a synthetic world (points the node at its DEM)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .motion import matrix_to_rpy

if TYPE_CHECKING:
    from .generate import World


def _pose6(m: np.ndarray) -> list[float]:
    return [float(x) for x in m[:3, 3]] + list(matrix_to_rpy(m[:3, :3]))


def node_params(world: 'World', dem_path: Path) -> dict[str, Any]:
    """Dotted parameter name -> value for the node on this world.

    The DEM is declared with its STATED accuracy (dem_sigma_m, dem_sigma_h_m), datum and survey
    date; a deliberate dem_offset_m is not part of the statement (that is the point of it).
    The ENU datum is fixed at the world's datum so that node output and truth share a frame.
    """
    cfg = world.cfg
    m = world.mounts
    src = 'dem.source.synth.'
    half = float(min(1500.0, cfg.dem_extent_m - min(100.0, 0.15 * cfg.dem_extent_m)))
    margin = float(min(100.0, 0.25 * half))
    return {
        'rectify': bool(cfg.raw),
        'georef.datum_mode': 'fixed',
        'georef.datum_latitude_deg': cfg.datum_lat_deg,
        'georef.datum_longitude_deg': cfg.datum_lon_deg,
        'georef.datum_height_m': cfg.datum_height_m,
        'extrinsics.base_to_imu': _pose6(m.base_imu),
        'extrinsics.base_to_camera': _pose6(m.base_left),
        'extrinsics.base_to_gnss': [float(x) for x in m.base_gnss[:3, 3]],
        'dem.sources': 'synth',
        # the height grid stays inside the DEM (and the DEM inside the rendered terrain)
        'dem.grid_cell_m': float(min(2.0, cfg.dem_res_m)),  # never coarser than the DEM
        'dem.grid_half_extent_m': half,
        'dem.grid_retile_margin_m': margin,
        'dem.max_range_m': half - margin,
        src + 'id': 1,
        src + 'path': str(Path(dem_path).resolve()),
        src + 'kind': cfg.dem_kind,
        src + 'vertical_datum': cfg.dem_vertical_datum,
        src + 'sigma_v_m': max(float(cfg.dem_sigma_m), 0.01),  # a survey always states one
        src + 'sigma_h_m': float(cfg.dem_sigma_h_m),
        src + 'survey_date': cfg.dem_survey_date,
        src + 'licence': cfg.dem_licence,
        src + 'priority': 0,
    }


def write_params_file(params: dict[str, Any], path: Path, header: str) -> Path:
    """Write dotted ``params`` as a ROS 2 params file for node ``geo_depth_node`` in any
    namespace (key ``/**/geo_depth_node``), nested as ROS flattens it back; ``header`` is
    written first (comment lines)."""
    import yaml

    nested: dict[str, Any] = {}
    for name, value in params.items():
        d = nested
        parts = name.split('.')
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = value
    path.write_text(header + yaml.safe_dump({'/**/geo_depth_node': {'ros__parameters': nested}},
                                            sort_keys=True, default_flow_style=None))
    return path


def write_node_params(world: 'World', path: Path, dem_path: Path) -> Path:
    """Write ``path`` as a ROS 2 params file for node ``geo_depth_node``."""
    header = (f'# Node parameters for the synthetic world seed={world.cfg.seed} (written by '
              'geo-depth synth):\n# the DEM with its stated accuracy, datum and survey date, '
              'the ENU datum and the\n# extrinsics ([x, y, z, roll, pitch, yaw], m and rad, '
              'see config/geo_depth.yaml).\n')
    return write_params_file(node_params(world, dem_path), path, header)
