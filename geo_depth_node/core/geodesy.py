"""WGS84 geodesy: geodetic <-> ECEF <-> local ENU, and vertical datums (geoid heights).

Everything here is closed-form numpy float64 and vectorised (any broadcastable shapes),
except the vertical datum conversion, which needs a geoid grid and goes through pyproj.
ROS-free; pyproj is imported lazily.

Conventions
-----------
* Geodetic coordinates: latitude and longitude in **degrees** (WGS84, EPSG:4326 meaning,
  but argument order is always ``lat, lon``), ``h`` = height above the WGS84 **ellipsoid** in
  metres (what GNSS and NavSatFix give; EPSG:4979).
* ECEF: WGS84 Earth-centred Earth-fixed cartesian coordinates in metres (EPSG:4978),
  x towards (0N, 0E), z towards the north pole. Arrays of shape (..., 3).
* Local ENU (:class:`EnuFrame`): a cartesian tangent frame at a datum point
  (``lat0, lon0, h0``, ellipsoidal height): x east, y north, z up along the ellipsoid
  normal at the datum, origin at the datum point itself. A point on the ellipsoid 1 km east
  of a datum at h0 = 0 has ENU z of about -7.8 cm (the Earth curves away), so ENU z is
  **not** a height; convert with :meth:`EnuFrame.geodetic_to_enu`.
* Rotation ``R_enu_to_ecef`` (3, 3): columns are the east, north, up unit vectors in ECEF,
  ``p_ecef = R @ p_enu + ecef(datum)``, ``p_enu = R.T @ (p_ecef - ecef(datum))``.

Vertical datums
---------------
Heights in a DEM are often orthometric (above a geoid): ``h_ellipsoidal = H + N`` where
``N`` is the geoid undulation at (lat, lon). Datum names accepted by :func:`vertical_datum_crs`:

* ``'ellipsoid'`` (aliases ``'ellipsoidal'``, ``'wgs84'``, ``'EPSG:4979'``): heights are
  already ellipsoidal; no conversion, no grid needed.
* ``'egm96'`` (EPSG:5773, grid ``egm96_15.gtx`` / ``us_nga_egm96_15.tif``),
  ``'egm2008'`` (EPSG:3855, ``us_nga_egm08_25.tif``), ``'egm84'`` (EPSG:5798).
* ``'EPSG:<code>'`` of any vertical CRS PROJ knows (e.g. ``'EPSG:7837'`` DHHN2016 height).

pyproj's bundled PROJ data holds no geoid grids, and PROJ then silently falls back to a
"ballpark" transformation that returns the height **unchanged**. This module therefore
(1) adds the directories of :data:`PROJ_GRID_DIRS` (plus ``$GEO_DEPTH_PROJ_GRIDS``,
``os.pathsep``-separated) to pyproj's search path (Debian's ``proj-data`` ships
``/usr/share/proj/egm96_15.gtx``), (2) refuses any datum whose best transformation is not
available or is a ballpark one, raising :class:`VerticalDatumError` that names the datum and
the missing grid files, and (3) transforms with ``errcheck=True`` and rejects non-finite
results (points outside the grid). A zero undulation is never returned silently.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import warnings
from typing import Any, Iterable

import numpy as np

_LOG = logging.getLogger(__name__)

# --- WGS84 ellipsoid ----------------------------------------------------------------
WGS84_A = 6378137.0  #: semi-major axis, metres
WGS84_F = 1.0 / 298.257223563  #: flattening
WGS84_B = WGS84_A * (1.0 - WGS84_F)  #: semi-minor axis, metres
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)  #: first eccentricity squared

#: Directories searched for geoid grids (added to pyproj's data path when they exist).
PROJ_GRID_DIRS: tuple[str, ...] = ('/usr/share/proj', '/usr/local/share/proj')
#: Environment variable with extra grid directories (``os.pathsep``-separated).
PROJ_GRID_ENV = 'GEO_DEPTH_PROJ_GRIDS'

_ELLIPSOID_NAMES = frozenset({'ellipsoid', 'ellipsoidal', 'wgs84', 'epsg:4979'})
_NAMED_DATUMS = {'egm96': 'EPSG:5773', 'egm2008': 'EPSG:3855', 'egm84': 'EPSG:5798'}


class VerticalDatumError(ValueError):
    """A vertical datum is unknown or cannot be converted (e.g. its geoid grid is missing)."""


# --- closed-form conversions ------------------------------------------------------------------

def _as_f64(*arrays: Any) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def geodetic_to_ecef(lat_deg: Any, lon_deg: Any, h_m: Any) -> np.ndarray:
    """WGS84 geodetic -> ECEF.

    Args:
        lat_deg, lon_deg: latitude / longitude in degrees (broadcastable shapes).
        h_m: height above the WGS84 ellipsoid, metres.

    Returns:
        (..., 3) float64 ECEF metres, ``...`` = the broadcast shape of the inputs.
    """
    lat, lon, h = _as_f64(lat_deg, lon_deg, h_m)
    phi, lam = np.radians(lat), np.radians(lon)
    sp, cp = np.sin(phi), np.cos(phi)
    n = WGS84_A / np.sqrt(1.0 - WGS84_E2 * sp * sp)  # prime vertical radius of curvature
    x = (n + h) * cp * np.cos(lam)
    y = (n + h) * cp * np.sin(lam)
    z = (n * (1.0 - WGS84_E2) + h) * sp
    return np.stack(np.broadcast_arrays(x, y, z), axis=-1)


def ecef_to_geodetic(xyz: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ECEF -> WGS84 geodetic, closed form (Vermeille 2002, J. Geodesy 76:451).

    Exact (no iteration) for every point farther than ~43 km from the Earth's centre (outside
    the evolute of the ellipsoid), i.e. anywhere a robot can be; round trip with
    :func:`geodetic_to_ecef` is at the 1e-9 m level.

    Args:
        xyz: (..., 3) ECEF metres.

    Returns:
        (lat_deg, lon_deg, h_m), each of shape (...).

    Raises:
        ValueError: if the last axis is not 3.
    """
    p = np.asarray(xyz, dtype=np.float64)
    if p.ndim == 0 or p.shape[-1] != 3:
        raise ValueError(f'ECEF coordinates must have shape (..., 3), got {p.shape}')
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    a2 = WGS84_A * WGS84_A
    e2 = WGS84_E2
    e4 = e2 * e2
    rho2 = x * x + y * y
    rho = np.sqrt(rho2)
    pp = rho2 / a2
    q = (1.0 - e2) / a2 * z * z
    r = (pp + q - e4) / 6.0
    s = e4 * pp * q / (4.0 * r ** 3)
    t = np.cbrt(1.0 + s + np.sqrt(s * (2.0 + s)))
    u = r * (1.0 + t + 1.0 / t)
    v = np.sqrt(u * u + e4 * q)
    w = e2 * (u + v - q) / (2.0 * v)
    k = np.sqrt(u + v + w * w) - w
    d = k * rho / (k + e2)
    dz = np.sqrt(d * d + z * z)
    lat = 2.0 * np.arctan2(z, d + dz)
    h = (k + e2 - 1.0) / k * dz
    lon = np.arctan2(y, x)
    return np.degrees(lat), np.degrees(lon), h


def enu_rotation(lat_deg: Any, lon_deg: Any) -> np.ndarray:
    """Rotation ENU -> ECEF at (lat, lon): columns east, north, up in ECEF.

    Args:
        lat_deg, lon_deg: degrees, broadcastable.

    Returns:
        (..., 3, 3) float64 ``R`` with ``v_ecef = R @ v_enu`` (and ``v_enu = R.T @ v_ecef``).
    """
    lat, lon = _as_f64(lat_deg, lon_deg)
    lat, lon = np.broadcast_arrays(lat, lon)
    phi, lam = np.radians(lat), np.radians(lon)
    sp, cp, sl, cl = np.sin(phi), np.cos(phi), np.sin(lam), np.cos(lam)
    zero = np.zeros_like(sp)
    east = np.stack([-sl, cl, zero], axis=-1)
    north = np.stack([-sp * cl, -sp * sl, cp], axis=-1)
    up = np.stack([cp * cl, cp * sl, sp], axis=-1)
    return np.stack([east, north, up], axis=-1)


@dataclasses.dataclass(frozen=True)
class EnuFrame:
    """A local ENU frame (x east, y north, z up) at a datum point.

    Attributes:
        lat0_deg, lon0_deg: datum latitude / longitude, degrees.
        h0_m: datum height above the WGS84 ellipsoid, metres (the ENU origin is at this height).
    """

    lat0_deg: float
    lon0_deg: float
    h0_m: float = 0.0

    def __post_init__(self) -> None:
        for name in ('lat0_deg', 'lon0_deg', 'h0_m'):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                    or not np.isfinite(v):
                raise ValueError(f'EnuFrame.{name} must be a finite number, got {v!r}')
            object.__setattr__(self, name, float(v))
        if not -90.0 <= self.lat0_deg <= 90.0:
            raise ValueError(f'EnuFrame.lat0_deg must be in [-90, 90], got {self.lat0_deg}')
        if not -180.0 <= self.lon0_deg <= 360.0:
            raise ValueError(f'EnuFrame.lon0_deg must be in [-180, 360], got {self.lon0_deg}')

    @functools.cached_property
    def origin_ecef(self) -> np.ndarray:
        """(3,) ECEF of the datum point, metres."""
        return geodetic_to_ecef(self.lat0_deg, self.lon0_deg, self.h0_m)

    @functools.cached_property
    def R_enu_to_ecef(self) -> np.ndarray:  # noqa: N802 - rotation matrix name
        """(3, 3) rotation ENU -> ECEF at the datum (columns east, north, up)."""
        return enu_rotation(self.lat0_deg, self.lon0_deg)

    def ecef_to_enu(self, xyz: Any) -> np.ndarray:
        """(..., 3) ECEF metres -> (..., 3) ENU metres."""
        p = np.asarray(xyz, dtype=np.float64)
        if p.ndim == 0 or p.shape[-1] != 3:
            raise ValueError(f'ECEF coordinates must have shape (..., 3), got {p.shape}')
        return (p - self.origin_ecef) @ self.R_enu_to_ecef

    def enu_to_ecef(self, enu: Any) -> np.ndarray:
        """(..., 3) ENU metres -> (..., 3) ECEF metres."""
        p = np.asarray(enu, dtype=np.float64)
        if p.ndim == 0 or p.shape[-1] != 3:
            raise ValueError(f'ENU coordinates must have shape (..., 3), got {p.shape}')
        return p @ self.R_enu_to_ecef.T + self.origin_ecef

    def geodetic_to_enu(self, lat_deg: Any, lon_deg: Any, h_m: Any) -> np.ndarray:
        """Geodetic (degrees, ellipsoidal metres) -> (..., 3) ENU metres."""
        return self.ecef_to_enu(geodetic_to_ecef(lat_deg, lon_deg, h_m))

    def enu_to_geodetic(self, enu: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(..., 3) ENU metres -> (lat_deg, lon_deg, h_m ellipsoidal), each (...)."""
        return ecef_to_geodetic(self.enu_to_ecef(enu))

    def vector_enu_to_ecef(self, v: Any) -> np.ndarray:
        """Rotate (..., 3) direction vectors ENU -> ECEF (no translation)."""
        return np.asarray(v, dtype=np.float64) @ self.R_enu_to_ecef.T

    def as_dict(self) -> dict[str, float]:
        """Datum as a plain dict (for logs and the legend)."""
        return {'lat0_deg': self.lat0_deg, 'lon0_deg': self.lon0_deg, 'h0_m': self.h0_m}


# --- vertical datums ------------------------------------------------------------------------

_grid_lock = threading.Lock()
_grid_dirs_added: list[str] = []


def add_proj_grid_dirs(dirs: Iterable[str] | None = None) -> list[str]:
    """Append geoid-grid directories to pyproj's data search path (once each).

    Args:
        dirs: directories to add; None = :data:`PROJ_GRID_DIRS` plus ``$GEO_DEPTH_PROJ_GRIDS``.
            Directories that do not exist are skipped.

    Returns:
        All directories added so far by this function.
    """
    import pyproj

    if dirs is None:
        extra = [d for d in os.environ.get(PROJ_GRID_ENV, '').split(os.pathsep) if d]
        dirs = [*extra, *PROJ_GRID_DIRS]
    with _grid_lock:
        for d in dirs:
            d = os.path.abspath(d)
            if d in _grid_dirs_added or not os.path.isdir(d):
                continue
            pyproj.datadir.append_data_dir(d)
            _grid_dirs_added.append(d)
            _LOG.debug('added PROJ grid directory %s', d)
            _vertical_transformer.cache_clear()
        return list(_grid_dirs_added)


def canonical_datum(datum: str) -> str:
    """Normalise a datum name: 'ellipsoid', a named geoid ('egm96', ...) or 'EPSG:<code>'.

    Raises:
        VerticalDatumError: on a non-string or an unknown name.
    """
    if not isinstance(datum, str) or not datum.strip():
        raise VerticalDatumError(f'vertical datum must be a non-empty string, got {datum!r}')
    d = datum.strip().lower()
    if d in _ELLIPSOID_NAMES:
        return 'ellipsoid'
    if d in _NAMED_DATUMS:
        return d
    if d.startswith('epsg:') and d[5:].isdigit():
        return 'EPSG:' + d[5:]
    raise VerticalDatumError(
        f'unknown vertical datum {datum!r}; use one of ellipsoid, {", ".join(_NAMED_DATUMS)} '
        'or EPSG:<code> of a vertical CRS')


def vertical_datum_crs(datum: str) -> str | None:
    """The vertical CRS of ``datum`` as ``'EPSG:<code>'``, or None for 'ellipsoid'.

    Raises:
        VerticalDatumError: unknown datum, or an EPSG code that is not a vertical CRS.
    """
    d = canonical_datum(datum)
    if d == 'ellipsoid':
        return None
    if d in _NAMED_DATUMS:
        return _NAMED_DATUMS[d]
    import pyproj

    try:
        crs = pyproj.CRS.from_user_input(d)
    except pyproj.exceptions.CRSError as e:
        raise VerticalDatumError(f'vertical datum {datum!r}: PROJ does not know {d}: {e}') from e
    if not crs.is_vertical or crs.is_compound:
        raise VerticalDatumError(f'vertical datum {datum!r}: {d} ({crs.name}) is not a vertical CRS')
    return d


@functools.lru_cache(maxsize=16)
def _vertical_transformer(datum: str) -> Any:
    """Transformer (lon, lat, h_ellipsoidal) -> (lon, lat, H) for a canonical non-ellipsoid datum."""
    from pyproj.transformer import TransformerGroup

    vcrs = vertical_datum_crs(datum)
    with warnings.catch_warnings():  # pyproj warns about the missing grid; we raise instead
        warnings.simplefilter('ignore', UserWarning)
        group = TransformerGroup('EPSG:4979', f'EPSG:4326+{vcrs.split(":")[1]}', always_xy=True)
    missing = sorted({g.short_name for op in group.unavailable_operations for g in op.grids
                      if not g.available})
    if len(missing) > 6:
        missing = missing[:6] + [f'... ({len(missing) - 6} more)']
    if not group.best_available or not group.transformers:
        raise VerticalDatumError(
            f'vertical datum {datum!r} ({vcrs}): the geoid grid needed to convert heights is not '
            f'installed (missing: {", ".join(missing) or "unknown"}; searched pyproj data dirs '
            f'plus {list(_grid_dirs_added) or "nothing"}). Install it (Debian: apt-get install '
            f'proj-data gives egm96_15.gtx) or put it in ${PROJ_GRID_ENV}; refusing to assume a '
            'zero geoid undulation')
    tr = group.transformers[0]
    if 'ballpark' in tr.description.lower() or 'noop' in tr.definition:
        raise VerticalDatumError(
            f'vertical datum {datum!r} ({vcrs}): PROJ only offers a ballpark transformation '
            f'({tr.description}); refusing to assume a zero geoid undulation')
    _LOG.info('vertical datum %s (%s): %s', datum, vcrs, tr.description)
    return tr


def geoid_undulation(lat_deg: Any, lon_deg: Any, datum: str, *, strict: bool = True) -> np.ndarray:
    """Height of the ellipsoid-to-datum offset ``N`` such that ``h_ellipsoidal = H + N``.

    Args:
        lat_deg, lon_deg: degrees, broadcastable.
        datum: vertical datum name (see :func:`canonical_datum`); 'ellipsoid' gives zeros.
        strict: raise for points outside the datum's grid (True), or give NaN there (False;
            for regional datums whose grid covers only part of a DEM).

    Returns:
        float64 array of the broadcast shape, metres (NaN where lat/lon are NaN).

    Raises:
        VerticalDatumError: unknown datum, grid not installed, or (strict) a point outside it.
    """
    d = canonical_datum(datum)
    lat, lon = np.broadcast_arrays(*_as_f64(lat_deg, lon_deg))
    if d == 'ellipsoid':
        return np.zeros(lat.shape)
    add_proj_grid_dirs()
    tr = _vertical_transformer(d)
    flat_lat, flat_lon = lat.reshape(-1), lon.reshape(-1)
    ok = np.isfinite(flat_lat) & np.isfinite(flat_lon)
    out = np.full(flat_lat.shape, np.nan)
    if np.any(ok):
        from pyproj.exceptions import ProjError

        zeros = np.zeros(int(ok.sum()))
        try:
            _, _, hh = tr.transform(flat_lon[ok], flat_lat[ok], zeros, errcheck=strict)
        except ProjError as e:
            raise VerticalDatumError(f'vertical datum {datum!r}: conversion failed (a point '
                                     f'outside the geoid grid?): {e}') from e
        hh = np.asarray(hh, dtype=np.float64)
        bad = ~np.isfinite(hh)
        if strict and np.any(bad):
            raise VerticalDatumError(f'vertical datum {datum!r}: no geoid value at '
                                     f'{int(bad.sum())} point(s) (outside the grid)')
        hh[bad] = np.nan
        out[ok] = -hh  # H = h - N with h = 0
    return out.reshape(lat.shape)


def to_ellipsoidal(lat_deg: Any, lon_deg: Any, height_m: Any, datum: str) -> np.ndarray:
    """Heights in ``datum`` -> heights above the WGS84 ellipsoid (``h = H + N``), metres.

    NaN heights stay NaN. Raises :class:`VerticalDatumError` as :func:`geoid_undulation`.
    """
    (hgt,) = _as_f64(height_m)
    return hgt + geoid_undulation(lat_deg, lon_deg, datum)


def from_ellipsoidal(lat_deg: Any, lon_deg: Any, h_m: Any, datum: str) -> np.ndarray:
    """Heights above the WGS84 ellipsoid -> heights in ``datum`` (``H = h - N``), metres."""
    (h,) = _as_f64(h_m)
    return h - geoid_undulation(lat_deg, lon_deg, datum)


def convert_height(lat_deg: Any, lon_deg: Any, height_m: Any, from_datum: str,
                   to_datum: str) -> np.ndarray:
    """Convert heights between two vertical datums (via the WGS84 ellipsoid), metres."""
    return from_ellipsoidal(lat_deg, lon_deg, to_ellipsoidal(lat_deg, lon_deg, height_m, from_datum),
                            to_datum)


def require_datum(datum: str) -> str:
    """Check that heights in ``datum`` can be converted; returns the canonical name.

    Raises:
        VerticalDatumError: unknown datum, or its geoid grid is not installed (named).
    """
    d = canonical_datum(datum)
    if d != 'ellipsoid':
        add_proj_grid_dirs()
        _vertical_transformer(d)
    return d


def datum_available(datum: str) -> bool:
    """True if heights in ``datum`` can be converted (its grid is installed).

    Returns False (and logs the reason at debug level) instead of raising
    :class:`VerticalDatumError`.
    """
    try:
        require_datum(datum)
    except VerticalDatumError as e:
        _LOG.debug('datum %s unavailable: %s', datum, e)
        return False
    return True
