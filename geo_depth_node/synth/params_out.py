"""The node params file written next to a synthetic world (points the node at its DEM)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .generate import World


def node_params(world: 'World', dem_path: Path) -> dict[str, Any]:
    """Dotted parameter name -> value for the node on this world."""
    cfg = world.cfg
    return {'rectify': bool(cfg.raw)}


def write_node_params(world: 'World', path: Path, dem_path: Path) -> Path:
    """Write ``path`` as a ROS 2 params file for node ``geo_depth_node``."""
    import yaml

    nested: dict[str, Any] = {}
    for name, value in node_params(world, dem_path).items():
        d = nested
        parts = name.split('.')
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = value
    header = (f'# Node parameters for the synthetic world seed={world.cfg.seed} '
              f'(written by geo-depth synth).\n')
    path.write_text(header + yaml.safe_dump({'geo_depth_node': {'ros__parameters': nested}},
                                            sort_keys=True))
    return path
