"""WGS84 / UTM / local ENU conversions for the synthetic world, all through pyproj (float64).

Deliberately independent of ``geo_depth_node.core.geodesy`` (the node's closed-form code), so
the generator's truth can check the node's georeferencing.

Conventions: latitude/longitude in degrees, heights in metres above the WGS84 ellipsoid unless
a name says ``_egm96``; ENU axes x east, y north, z up at the datum; ECEF is EPSG:4978.
"""
from __future__ import annotations

import functools
import math

import numpy as np

#: Where Debian's proj-data puts the geoid grids (egm96_15.gtx).
SYSTEM_PROJ_DIR = '/usr/share/proj'


@functools.lru_cache(maxsize=None)
def _transformer(src: str, dst: str):
    import pyproj

    if SYSTEM_PROJ_DIR not in pyproj.datadir.get_data_dir().split(':'):
        pyproj.datadir.append_data_dir(SYSTEM_PROJ_DIR)
    return pyproj.Transformer.from_crs(src, dst, always_xy=True, only_best=True)


def utm_epsg(lat_deg: float, lon_deg: float) -> int:
    """EPSG code of the WGS84 UTM zone containing the point (326zz north, 327zz south)."""
    zone = int(math.floor((lon_deg + 180.0) / 6.0)) % 60 + 1
    return (32600 if lat_deg >= 0 else 32700) + zone


def geoid_undulation_egm96(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    """EGM96 geoid height N (m) = ellipsoidal height - EGM96 orthometric height.

    Raises:
        RuntimeError: when PROJ cannot find the EGM96 grid (it would otherwise return N = 0).
    """
    lat = np.asarray(lat_deg, dtype=np.float64)
    lon = np.asarray(lon_deg, dtype=np.float64)
    t = _transformer('EPSG:4979', 'EPSG:4326+5773')
    _, _, H = t.transform(lon, lat, np.zeros_like(lat), errcheck=True)
    n = -np.asarray(H, dtype=np.float64)
    if np.any(~np.isfinite(n)) or (n.size and np.all(n == 0.0)):
        raise RuntimeError('EGM96 geoid grid (egm96_15.gtx) not found by PROJ; install the '
                           f'proj-data package (it provides {SYSTEM_PROJ_DIR}/egm96_15.gtx)')
    return n


class LocalFrame:
    """The local ENU frame at a datum (lat, lon in degrees; h metres above the ellipsoid)."""

    def __init__(self, lat_deg: float, lon_deg: float, h_m: float) -> None:
        self.lat_deg, self.lon_deg, self.h_m = float(lat_deg), float(lon_deg), float(h_m)
        lat, lon = math.radians(lat_deg), math.radians(lon_deg)
        sl, cl, so, co = math.sin(lat), math.cos(lat), math.sin(lon), math.cos(lon)
        #: rows = ENU axes expressed in ECEF: p_enu = R (p_ecef - origin)
        self.R = np.array([[-so, co, 0.0],
                           [-sl * co, -sl * so, cl],
                           [cl * co, cl * so, sl]])
        x, y, z = _transformer('EPSG:4979', 'EPSG:4978').transform(lon_deg, lat_deg, h_m)
        self.origin_ecef = np.array([x, y, z], dtype=np.float64)
        self.utm_epsg = utm_epsg(lat_deg, lon_deg)

    def geodetic_to_enu(self, lat_deg, lon_deg, h_m) -> np.ndarray:
        """(..., 3) ENU metres of geodetic points (arrays broadcast)."""
        lat, lon, h = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64)
                                            for a in (lat_deg, lon_deg, h_m)))
        x, y, z = _transformer('EPSG:4979', 'EPSG:4978').transform(lon, lat, h, errcheck=True)
        ecef = np.stack([x, y, z], axis=-1) - self.origin_ecef
        return ecef @ self.R.T

    def enu_to_geodetic(self, enu: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lat_deg, lon_deg, h_m) of (..., 3) ENU points."""
        enu = np.asarray(enu, dtype=np.float64)
        if enu.shape[-1] != 3:
            raise ValueError(f'ENU points must be (..., 3), got {enu.shape}')
        ecef = enu @ self.R + self.origin_ecef
        lon, lat, h = _transformer('EPSG:4978', 'EPSG:4979').transform(
            ecef[..., 0], ecef[..., 1], ecef[..., 2], errcheck=True)
        return np.asarray(lat), np.asarray(lon), np.asarray(h)

    def utm_to_geodetic(self, e: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lat_deg, lon_deg) of UTM easting/northing (m) in this frame's zone."""
        lon, lat = _transformer(f'EPSG:{self.utm_epsg}', 'EPSG:4326').transform(
            np.asarray(e, dtype=np.float64), np.asarray(n, dtype=np.float64), errcheck=True)
        return np.asarray(lat), np.asarray(lon)

    def geodetic_to_utm(self, lat_deg, lon_deg) -> tuple[np.ndarray, np.ndarray]:
        """UTM (easting, northing) in metres of geodetic points, in this frame's zone."""
        e, n = _transformer('EPSG:4326', f'EPSG:{self.utm_epsg}').transform(
            np.asarray(lon_deg, dtype=np.float64), np.asarray(lat_deg, dtype=np.float64),
            errcheck=True)
        return np.asarray(e), np.asarray(n)
