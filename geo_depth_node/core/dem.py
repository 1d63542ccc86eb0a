"""DEM / DSM sources: configuration, reading (rasterio, any CRS) and the local ENU height grid.

ROS-free; rasterio, pyproj and torch are imported lazily.

Source configuration
--------------------
ROS 2 parameters cannot hold a list of dicts, so sources are configured as a list of names
plus one parameter namespace per name (flat dotted names, exactly as ROS flattens the YAML)::

    dem:
      sources: [srtm, lidar]              # string array (or 'srtm, lidar'): enabled sources
      source:
        srtm:
          id: 1                           # int 1..65535, unique: the point's `source` field
          path: /data/srtm3/N4*E008.hgt   # file or glob; several files = tiles of one source
          kind: dsm                       # 'dem' (bare earth) or 'dsm' (surface model)
          vertical_datum: egm96           # ellipsoid | egm96 | egm2008 | egm84 | EPSG:<code>
          sigma_v_m: 9.0                  # vertical 1-sigma, m (> 0)
          sigma_h_m: 20.0                 # horizontal 1-sigma per axis, m (>= 0)
          survey_date: '2000-02-11'       # ISO date, '' = unknown
          licence: 'NASA SRTM v2, public domain'
          priority: 0                     # higher wins where several sources have data
          sigma_v_growth_m_per_year: 0.0  # optional, m/year (needs survey_date)
          band: 1                         # optional raster band (1-based)

i.e. ``dem.sources`` and ``dem.source.<name>.<field>``. :func:`parse_dem_sources` accepts that
flat mapping (or the nested YAML tree, or a plain list of per-source dicts with a ``name``) and
raises ValueError naming the bad parameter. The vertical sigma grows with the survey's age as
``sigma_v(t) = sqrt(sigma_v^2 + (growth * years_since_survey)^2)`` (survey error and later
terrain change are independent).

Height grid
-----------
:class:`LocalHeightGrid` resamples the sources onto a regular grid of a local ENU frame
(:class:`~geo_depth_node.core.geodesy.EnuFrame`; x east, y north, cell ``cell_m``, nodes at
integer multiples of ``cell_m`` so re-tiled grids share nodes) and returns a
:class:`~geo_depth_node.core.raycast.HeightField` on the chosen torch device. For every node
``(x, y)`` it finds the terrain point whose ENU x, y equal the node: ENU -> geodetic
(lat, lon) -> source CRS (pyproj) -> bilinear sample between pixel centres -> ellipsoidal
height ``h = H + N`` -> ENU, iterating on z (the vertical through a node is not the ellipsoid
normal at the terrain point; 2-3 iterations reach < 1 mm). The grid value is the ENU **z** of
the terrain (Earth curvature included). The smooth maps (geodetic -> source CRS, geoid
undulation) are evaluated exactly on a lattice about every ``lattice_m`` metres at two z levels
and interpolated (horizontal error ~ lattice_m^2 tan(lat) / (8 R): 0.06 mm at 50 m, 49 deg N).
A source with a nodata pixel (nodata value, NaN, masked) among the 4 pixels around a point
gives no value there; the next source by priority fills it; NaN where none has data. A stored
height (after the band's scale and offset, in the source's own vertical datum) outside
:data:`PLAUSIBLE_HEIGHT_M` (-500..9000 m) is nodata too, whatever the nodata tag says: fill
values such as 1e30, -1e30 or -32768 written without a tag are not terrain (the lowest land is
the Dead Sea shore at -430 m, the highest Everest at 8849 m; geoid undulations stay within
+-110 m).

Re-tiling in the background
---------------------------
:meth:`LocalHeightGrid.retile_if_needed` builds inline (the caller waits: reading the rasters
and the ray-cast BVH take seconds for a large grid). :meth:`LocalHeightGrid.start_build` runs
:meth:`LocalHeightGrid.build_field` in one background daemon thread instead (never more than one
build in flight) while ``field`` keeps serving; the finished build is taken into use by
:meth:`LocalHeightGrid.swap_build` on the caller's thread, so ``field`` only changes when the
caller says so. :meth:`LocalHeightGrid.wait` waits for the build in flight.

Failures
--------
Opening a source (:class:`DemSource`, at start-up) raises ValueError naming the source and the
file for anything that is not a readable raster (an empty or garbage file, a directory) and
FileNotFoundError when the path matches no file (:func:`open_dem_sources` turns it into a
ValueError). Reading pixels later (every grid build) raises :class:`DemReadError` (an OSError)
naming the source and the file when a file has vanished or become unreadable since; the caller
(:class:`~geo_depth_node.core.geoprior.GeoPrior`) keeps its last grid and retries.
"""
from __future__ import annotations

import dataclasses
import datetime
import glob
import logging
import math
import os
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from . import geodesy
from .geodesy import EnuFrame

if TYPE_CHECKING:  # pragma: no cover
    from .raycast import HeightField

_LOG = logging.getLogger(__name__)

DEM_KINDS = ('dem', 'dsm')
#: largest stated sigma of a source (sigma_v_m, sigma_h_m), m, and its growth, m/year: beyond,
#: it is a typo, not an accuracy (and overflows the sigma maths)
MAX_SIGMA_M = 1e4
MAX_GROWTH_M_PER_YEAR = 1e3
#: (lowest, highest) stored height in metres that can be terrain on the Earth; values outside
#: (after scale and offset) are nodata: untagged fill values like 1e30, -1e30, -32768
PLAUSIBLE_HEIGHT_M = (-500.0, 9000.0)
_NAME_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')
_REQUIRED = ('id', 'path', 'kind', 'vertical_datum', 'sigma_v_m', 'sigma_h_m')
_OPTIONAL = {'survey_date': '', 'licence': '', 'priority': 0, 'sigma_v_growth_m_per_year': 0.0,
             'band': 1}
FIELDS = ('name',) + _REQUIRED + tuple(_OPTIONAL)


@dataclasses.dataclass(frozen=True)
class DemSourceSpec:
    """One elevation source as configured.

    Attributes:
        id: source id written into the points' ``source`` field, 1..65535 (0 = none).
        name: short name ([A-Za-z][A-Za-z0-9_]*), also the parameter namespace.
        path: file path or glob pattern (matching files are tiles of this source).
        kind: 'dem' (bare earth) or 'dsm' (surface model: buildings, trees).
        vertical_datum: datum of the stored heights (see geodesy.canonical_datum).
        sigma_v_m: vertical 1-sigma at the survey date, metres (> 0).
        sigma_h_m: horizontal 1-sigma per axis, metres (>= 0).
        survey_date: date of the survey, or None if unknown.
        licence: licence / attribution text (for the legend).
        priority: higher wins where several sources have data.
        sigma_v_growth_m_per_year: growth of the vertical sigma with age, m/year (>= 0).
        band: raster band to read (1-based).
    """

    id: int
    name: str
    path: str
    kind: str
    vertical_datum: str
    sigma_v_m: float
    sigma_h_m: float
    survey_date: datetime.date | None = None
    licence: str = ''
    priority: int = 0
    sigma_v_growth_m_per_year: float = 0.0
    band: int = 1

    @property
    def is_surface_model(self) -> bool:
        """True for a DSM (points from it get PRIOR_SURFACE_MODEL)."""
        return self.kind == 'dsm'

    def sigma_v_at(self, epoch: datetime.date | None = None) -> float:
        """Vertical 1-sigma (metres) at ``epoch`` (default: today, UTC), grown with age."""
        if self.sigma_v_growth_m_per_year <= 0 or self.survey_date is None:
            return self.sigma_v_m
        epoch = epoch or datetime.datetime.now(datetime.timezone.utc).date()
        years = max(0.0, (epoch - self.survey_date).days / 365.25)
        return math.hypot(self.sigma_v_m, self.sigma_v_growth_m_per_year * years)

    @staticmethod
    def from_dict(d: Mapping[str, Any], *, where: str = '') -> 'DemSourceSpec':
        """Build and validate a spec from a plain dict (keys = the attribute names).

        Args:
            d: the fields; ``name`` is required.
            where: prefix for error messages, e.g. ``'dem.source.srtm.'``.

        Raises:
            ValueError: naming the missing/unknown/bad field and value.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f'{where or "DEM source"}: expected a mapping of fields, got {d!r}')
        unknown = sorted(set(d) - set(FIELDS))
        if unknown:
            raise ValueError(f'unknown DEM source field(s) {[where + k for k in unknown]}; '
                             f'known: {list(FIELDS)}')
        missing = [k for k in ('name',) + _REQUIRED if k not in d]
        if missing:
            raise ValueError(f'DEM source {d.get("name", "?")!r}: missing field(s) '
                             f'{[where + k for k in missing]}')
        v = dict(_OPTIONAL)
        v.update(d)

        def bad(field: str, why: str) -> ValueError:
            return ValueError(f'DEM source parameter {where}{field} = {v[field]!r}: {why}')

        name = v['name']
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise bad('name', 'must match [A-Za-z][A-Za-z0-9_]*')
        for f in ('id', 'priority', 'band'):
            if isinstance(v[f], bool) or not isinstance(v[f], (int, np.integer)):
                raise bad(f, 'must be an integer')
        if not 1 <= int(v['id']) <= 65535:
            raise bad('id', 'must be in 1..65535 (0 means "no source")')
        if int(v['band']) < 1:
            raise bad('band', 'must be >= 1')
        for f in ('path', 'kind', 'vertical_datum', 'licence'):
            if not isinstance(v[f], str):
                raise bad(f, 'must be a string')
        if not v['path'].strip():
            raise bad('path', 'must not be empty')
        if v['kind'] not in DEM_KINDS:
            raise bad('kind', f'must be one of {list(DEM_KINDS)}')
        try:
            datum = geodesy.canonical_datum(v['vertical_datum'])
        except geodesy.VerticalDatumError as e:
            raise bad('vertical_datum', str(e)) from e
        nums = {}
        for f, lo, strict, hi in (('sigma_v_m', 0.0, True, MAX_SIGMA_M),
                                  ('sigma_h_m', 0.0, False, MAX_SIGMA_M),
                                  ('sigma_v_growth_m_per_year', 0.0, False, MAX_GROWTH_M_PER_YEAR)):
            x = v[f]
            if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
                raise bad(f, 'must be a finite number')
            try:
                xf = float(x)
            except OverflowError:
                xf = math.inf
            if not math.isfinite(xf):
                raise bad(f, 'must be a finite number')
            if (xf <= lo) if strict else (xf < lo):
                raise bad(f, f'must be {">" if strict else ">="} {lo}')
            if xf > hi:
                raise bad(f, f'must be <= {hi:g} (a larger value is not an accuracy)')
            nums[f] = xf
        sd = v['survey_date']
        if sd in ('', None):
            date = None
        elif isinstance(sd, datetime.datetime):  # YAML gives a datetime for a timestamp
            date = sd.date()
        elif isinstance(sd, datetime.date):
            date = sd
        elif isinstance(sd, str):
            try:
                date = datetime.date.fromisoformat(sd)
            except ValueError as e:
                raise bad('survey_date', 'must be an ISO date YYYY-MM-DD or empty') from e
        else:
            raise bad('survey_date', 'must be an ISO date string YYYY-MM-DD or empty')
        if nums['sigma_v_growth_m_per_year'] > 0 and date is None:
            raise bad('sigma_v_growth_m_per_year', 'needs a survey_date')
        return DemSourceSpec(id=int(v['id']), name=name, path=v['path'], kind=v['kind'],
                             vertical_datum=datum, sigma_v_m=nums['sigma_v_m'],
                             sigma_h_m=nums['sigma_h_m'], survey_date=date, licence=v['licence'],
                             priority=int(v['priority']),
                             sigma_v_growth_m_per_year=nums['sigma_v_growth_m_per_year'],
                             band=int(v['band']))

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form (inverse of :meth:`from_dict`; date as ISO string)."""
        d = dataclasses.asdict(self)
        d['survey_date'] = self.survey_date.isoformat() if self.survey_date else ''
        return d


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, val in tree.items():
        if isinstance(val, Mapping):
            out.update(_flatten(val, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = val
    return out


def parse_dem_sources(params: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                      prefix: str = 'dem.') -> list[DemSourceSpec]:
    """Parse the DEM source configuration (see the module docstring for the scheme).

    Args:
        params: flat dotted parameters (``dem.sources``, ``dem.source.<name>.<field>``; other
            names are ignored), the nested YAML tree, or a list of per-source dicts.
        prefix: namespace of the DEM parameters.

    Returns:
        Specs sorted by priority (highest first), then id.

    Raises:
        ValueError: bad/missing field (named), duplicate name or id, parameters for a source
            not listed in ``<prefix>sources``.
    """
    if isinstance(params, Sequence) and not isinstance(params, (str, bytes)):
        specs = [DemSourceSpec.from_dict(d, where=f'{prefix}sources[{i}].')
                 for i, d in enumerate(params)]
    elif isinstance(params, Mapping):
        flat = _flatten(params)
        names = flat.get(prefix + 'sources', [])
        if isinstance(names, str):  # also accept 'a, b' (a plain string parameter)
            names = [x.strip() for x in names.split(',') if x.strip()]
        if not isinstance(names, (list, tuple)) or not all(isinstance(x, str) for x in names):
            raise ValueError(f'parameter {prefix}sources must be a list of source names (or a '
                             f'comma-separated string), got {names!r}')
        sp = prefix + 'source.'
        given: dict[str, dict[str, Any]] = {}
        for key, val in flat.items():
            if not key.startswith(sp):
                continue
            parts = key[len(sp):].split('.')
            if len(parts) != 2:
                raise ValueError(f'parameter {key!r}: expected {sp}<name>.<field>')
            given.setdefault(parts[0], {})[parts[1]] = val
        extra = sorted(set(given) - set(names))
        if extra:
            raise ValueError(f'parameters {sp}{extra[0]}.* given but {extra[0]!r} is not in '
                             f'{prefix}sources {list(names)}')
        specs = [DemSourceSpec.from_dict({'name': nm, **given.get(nm, {})}, where=f'{sp}{nm}.')
                 for nm in names]
    else:
        raise ValueError(f'DEM sources: expected a mapping or a list of dicts, got {type(params).__name__}')
    for attr in ('name', 'id'):
        seen: set = set()
        for s in specs:
            val = getattr(s, attr)
            if val in seen:
                raise ValueError(f'DEM sources: duplicate {attr} {val!r}')
            seen.add(val)
    return sorted(specs, key=lambda s: (-s.priority, s.id))


# --- reading rasters ------------------------------------------------------------------

class DemReadError(OSError):
    """A DEM file that opened at start-up cannot be read now (vanished, truncated, replaced by
    something that is not a raster, permissions).

    Attributes:
        source: the source's name.
        path: the file.
    """

    def __init__(self, source: str, path: str, why: str) -> None:
        super().__init__(f'DEM source {source!r}: cannot read {path}: {why}')
        self.source = source
        self.path = path

    @classmethod
    def joined(cls, problems: list[str]) -> 'DemReadError':
        """One error for several read problems (their texts joined by '; ')."""
        err = cls('', '', '')
        err.args = ('; '.join(problems),)
        return err


@dataclasses.dataclass
class _Tile:
    path: str
    row_off: int  # offset of this tile's pixel (0, 0) in the group's reference grid
    col_off: int
    height: int
    width: int
    nodata: float | None
    scale: float
    offset: float
    implausible_logged: bool = False  # heights outside PLAUSIBLE_HEIGHT_M were logged once


class _RasterGroup:
    """Tiles of one source that share a CRS and a pixel grid, read as one mosaic."""

    def __init__(self, crs_wkt: str, transform: Any, band: int, name: str = '') -> None:
        import pyproj

        self.name = name  # the source's name, for error messages
        self.crs = pyproj.CRS.from_wkt(crs_wkt)
        if self.crs.is_compound:
            self.crs = self.crs.sub_crs_list[0]
        self.transform = transform  # affine of the reference grid (pixel corner convention)
        self.band = band
        self.tiles: list[_Tile] = []
        self._to_src = pyproj.Transformer.from_crs('EPSG:4326', self.crs, always_xy=True)

    def offset_of(self, transform: Any) -> tuple[int, int] | None:
        """(row, col) offset of a tile with ``transform`` in this grid, or None if not aligned."""
        t0 = self.transform
        if not (math.isclose(transform.a, t0.a, rel_tol=1e-9)
                and math.isclose(transform.e, t0.e, rel_tol=1e-9)
                and transform.b == t0.b == 0 and transform.d == t0.d == 0):
            return None
        col, row = (transform.c - t0.c) / t0.a, (transform.f - t0.f) / t0.e
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            return None
        return int(round(row)), int(round(col))

    def lonlat_to_src(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Geodetic degrees -> source CRS coordinates."""
        u, v = self._to_src.transform(lon, lat)
        return np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)

    def read(self, r0: int, r1: int, c0: int, c1: int, problems: list[str] | None = None
             ) -> np.ndarray:
        """Mosaic of reference-grid rows [r0, r1) and columns [c0, c1), float64, NaN = no data
        (nodata tag, mask, NaN, or outside :data:`PLAUSIBLE_HEIGHT_M` after scale and offset).

        Args:
            problems: when given, a tile that cannot be read is left as no data and the reason
                (:class:`DemReadError` text) appended here, so one broken tile or source costs
                only its own area; None: raise.

        Raises:
            DemReadError: a tile cannot be opened or read (naming the source and the file),
                when ``problems`` is None.
        """
        import rasterio
        from rasterio.errors import RasterioError
        from rasterio.windows import Window

        out = np.full((r1 - r0, c1 - c0), np.nan)
        for t in self.tiles:
            rr0, rr1 = max(r0, t.row_off), min(r1, t.row_off + t.height)
            cc0, cc1 = max(c0, t.col_off), min(c1, t.col_off + t.width)
            if rr0 >= rr1 or cc0 >= cc1:
                continue
            win = Window(cc0 - t.col_off, rr0 - t.row_off, cc1 - cc0, rr1 - rr0)
            try:
                try:
                    with rasterio.open(t.path) as ds:
                        a = ds.read(self.band, window=win).astype(np.float64)
                        mask = ds.read_masks(self.band, window=win)
                except (RasterioError, OSError) as exc:
                    raise DemReadError(self.name, t.path, str(exc)) from exc
                if a.shape != (rr1 - rr0, cc1 - cc0):  # the file was replaced by another raster
                    raise DemReadError(self.name, t.path, f'read a {a.shape} window where '
                                       f'{(rr1 - rr0, cc1 - cc0)} was expected (file changed?)')
            except DemReadError as exc:
                if problems is None:
                    raise
                problems.append(str(exc))  # this tile's area stays without data
                continue
            bad = (mask == 0) | ~np.isfinite(a)
            if t.nodata is not None and np.isfinite(t.nodata):
                bad |= a == t.nodata
            a = a * t.scale + t.offset
            lo, hi = PLAUSIBLE_HEIGHT_M
            with np.errstate(invalid='ignore'):
                implausible = ~bad & ((a < lo) | (a > hi))
            if implausible.any():
                if not t.implausible_logged:
                    t.implausible_logged = True
                    _LOG.warning('DEM source %s: %s has %d height(s) outside the plausible '
                                 '%g..%g m (e.g. %g) in the window read: treated as nodata',
                                 self.name, t.path, int(implausible.sum()), lo, hi,
                                 float(a[implausible][0]))
                bad |= implausible
            a[bad] = np.nan
            dst = out[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0]
            fill = np.isnan(dst)
            dst[fill] = a[fill]
        return out

    def extent_rc(self) -> tuple[int, int, int, int]:
        """(r0, r1, c0, c1) of the union of the tiles in the reference grid."""
        return (min(t.row_off for t in self.tiles), max(t.row_off + t.height for t in self.tiles),
                min(t.col_off for t in self.tiles), max(t.col_off + t.width for t in self.tiles))

    def sample(self, u: np.ndarray, v: np.ndarray, problems: list[str] | None = None
               ) -> np.ndarray:
        """Bilinear sample between pixel centres at source-CRS (u, v); NaN outside / nodata
        (and over tiles that cannot be read, see :meth:`read` for ``problems``)."""
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        out = np.full(u.shape, np.nan)
        t = self.transform  # north-up / axis-aligned (checked when opening)
        cf = (u - t.c) / t.a - 0.5  # continuous index with pixel centres at integers
        rf = (v - t.f) / t.e - 0.5
        er0, er1, ec0, ec1 = self.extent_rc()
        ok = np.isfinite(cf) & np.isfinite(rf) & (rf >= er0) & (rf <= er1 - 1) \
            & (cf >= ec0) & (cf <= ec1 - 1)
        if not np.any(ok):
            return out
        r0 = int(np.floor(rf[ok].min()))
        r1 = int(np.floor(rf[ok].max())) + 2
        c0 = int(np.floor(cf[ok].min()))
        c1 = int(np.floor(cf[ok].max())) + 2
        r0, r1 = max(r0, er0), min(r1, er1)
        c0, c1 = max(c0, ec0), min(c1, ec1)
        if r1 - r0 < 2 or c1 - c0 < 2:
            return out
        win = self.read(r0, r1, c0, c1, problems)
        rl, cl = rf[ok] - r0, cf[ok] - c0
        i = np.clip(np.floor(rl), 0, win.shape[0] - 2).astype(np.int64)
        j = np.clip(np.floor(cl), 0, win.shape[1] - 2).astype(np.int64)
        wr, wc = rl - i, cl - j
        top = win[i, j] * (1 - wc) + win[i, j + 1] * wc
        bot = win[i + 1, j] * (1 - wc) + win[i + 1, j + 1] * wc
        out[ok] = top * (1 - wr) + bot * wr
        return out


class DemSource:
    """An opened source: its spec and the raster tiles (metadata only; pixels are read on demand).

    Raises:
        FileNotFoundError: no file matches ``spec.path``.
        ValueError: a file is not a readable raster (empty, garbage, a directory), has no CRS,
            lacks the band, or tiles are not on one grid per CRS; or the vertical datum cannot
            be converted (VerticalDatumError, a ValueError). The message names the source and
            the file.
    """

    def __init__(self, spec: DemSourceSpec) -> None:
        import rasterio
        from rasterio.errors import RasterioError

        self.spec = spec
        paths = sorted(glob.glob(os.path.expanduser(spec.path)))
        if not paths:
            raise FileNotFoundError(f'DEM source {spec.name!r}: no file matches path {spec.path!r}')
        try:
            geodesy.require_datum(spec.vertical_datum)
        except geodesy.VerticalDatumError as e:
            raise geodesy.VerticalDatumError(f'DEM source {spec.name!r}: {e}') from e
        self.groups: list[_RasterGroup] = []
        for p in paths:
            try:
                ds = rasterio.open(p)
            except (RasterioError, OSError) as exc:
                what = 'is a directory, not a raster file (tiles: a glob like dir/*.tif)' \
                    if os.path.isdir(p) else 'is not a readable raster'
                raise ValueError(f'DEM source {spec.name!r}: {p} {what} (path {spec.path!r}): '
                                 f'{exc}') from exc
            with ds:
                if ds.crs is None:
                    raise ValueError(f'DEM source {spec.name!r}: {p} has no CRS; cannot place it')
                if spec.band > ds.count:
                    raise ValueError(f'DEM source {spec.name!r}: {p} has {ds.count} band(s), '
                                     f'band {spec.band} requested')
                if ds.transform.b != 0 or ds.transform.d != 0:
                    raise ValueError(f'DEM source {spec.name!r}: {p} is rotated/sheared '
                                     f'({ds.transform}); not supported')
                wkt = ds.crs.to_wkt()
                tile_args = dict(height=ds.height, width=ds.width,
                                 nodata=None if ds.nodata is None else float(ds.nodata),
                                 scale=float(ds.scales[spec.band - 1] or 1.0),
                                 offset=float(ds.offsets[spec.band - 1] or 0.0))
                transform = ds.transform
            group = None
            off = None
            for g in self.groups:
                if g.crs.equals(wkt):
                    off = g.offset_of(transform)
                    if off is not None:
                        group = g
                        break
            if group is None:
                group = _RasterGroup(wkt, transform, spec.band, spec.name)
                off = (0, 0)
                self.groups.append(group)
            group.tiles.append(_Tile(p, off[0], off[1], **tile_args))
        _LOG.info('DEM source %s (id %d, %s, %s): %d file(s) in %d grid(s), sigma_v %.2f m, '
                  'sigma_h %.2f m', spec.name, spec.id, spec.kind, spec.vertical_datum, len(paths),
                  len(self.groups), spec.sigma_v_m, spec.sigma_h_m)

    @property
    def paths(self) -> list[str]:
        """All tile paths."""
        return [t.path for g in self.groups for t in g.tiles]

    def heights(self, lat_deg: Any, lon_deg: Any) -> np.ndarray:
        """Stored heights (the source's own vertical datum) at geodetic points, metres; NaN = none."""
        lat, lon = np.broadcast_arrays(np.asarray(lat_deg, np.float64), np.asarray(lon_deg, np.float64))
        out = np.full(lat.shape, np.nan)
        for g in self.groups:
            u, v = g.lonlat_to_src(lon, lat)
            val = g.sample(u, v)
            fill = np.isnan(out)
            out[fill] = val[fill]
        return out

    def ellipsoidal_heights(self, lat_deg: Any, lon_deg: Any) -> np.ndarray:
        """Heights above the WGS84 ellipsoid at geodetic points, metres; NaN = no data."""
        lat, lon = np.broadcast_arrays(np.asarray(lat_deg, np.float64), np.asarray(lon_deg, np.float64))
        hgt = self.heights(lat, lon)
        out = np.full(lat.shape, np.nan)
        ok = np.isfinite(hgt)
        if np.any(ok):
            out[ok] = geodesy.to_ellipsoidal(lat[ok], lon[ok], hgt[ok], self.spec.vertical_datum)
        return out


# --- the local grid -----------------------------------------------------------------------

def open_dem_sources(params: Mapping[str, Any]) -> list['DemSource']:
    """Parse ``dem.sources`` / ``dem.source.<name>.*`` of validated parameters and open every
    source (metadata only), in the order of :func:`parse_dem_sources`; [] when none is set.

    Raises:
        ValueError: a bad source parameter, an unusable vertical datum, a path that matches
            no file, or a file that is not a readable raster (empty, garbage, a directory),
            naming the source and the path (a missing or broken DEM stops the node and replay
            at start-up with exit code 2; one that breaks later only costs the priors, see
            :class:`~geo_depth_node.core.geoprior.GeoPrior`).
    """
    from .params import dem_source_names

    names = dem_source_names(params['dem.sources'])
    if not names:
        return []
    specs = parse_dem_sources({k: v for k, v in params.items() if k.startswith('dem.')}
                              | {'dem.sources': names})
    opened = []
    for spec in specs:
        try:
            opened.append(DemSource(spec))
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from exc
    return opened


@dataclasses.dataclass
class GridBuild:
    """A finished background height-grid build (:meth:`LocalHeightGrid.start_build`).

    Attributes:
        x_m, y_m: ENU position the build was requested for, metres.
        field: the built field; None when the build raised.
        problems: unreadable tiles (:class:`DemReadError` texts) that were left without data.
        error: the exception the build raised, or None.
        seconds: wall time of the build, seconds.
    """

    x_m: float
    y_m: float
    field: 'HeightField | None'
    problems: list[str]
    error: BaseException | None
    seconds: float


def _lattice_index(n: int, stride: int) -> np.ndarray:
    idx = np.arange(0, n, stride)
    if idx[-1] != n - 1:
        idx = np.append(idx, n - 1)
    return idx


def _interp_lattice(vals: np.ndarray, li: np.ndarray, lj: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """Bilinear interpolation of lattice values (len(li), len(lj)) to all (ny, nx) nodes."""
    ri = np.arange(ny)
    cj = np.arange(nx)
    a = np.searchsorted(li, ri, side='right') - 1
    a = np.clip(a, 0, len(li) - 2) if len(li) > 1 else np.zeros_like(a)
    b = np.searchsorted(lj, cj, side='right') - 1
    b = np.clip(b, 0, len(lj) - 2) if len(lj) > 1 else np.zeros_like(b)
    if len(li) > 1:
        wr = (ri - li[a]) / (li[a + 1] - li[a])
    else:
        wr = np.zeros(ny)
    if len(lj) > 1:
        wc = (cj - lj[b]) / (lj[b + 1] - lj[b])
    else:
        wc = np.zeros(nx)
    a1 = np.minimum(a + 1, len(li) - 1)
    b1 = np.minimum(b + 1, len(lj) - 1)
    v00 = vals[np.ix_(a, b)]
    v01 = vals[np.ix_(a, b1)]
    v10 = vals[np.ix_(a1, b)]
    v11 = vals[np.ix_(a1, b1)]
    wc = wc[None, :]
    wr = wr[:, None]
    return (v00 * (1 - wc) + v01 * wc) * (1 - wr) + (v10 * (1 - wc) + v11 * wc) * wr


class LocalHeightGrid:
    """Keeps the DEM near the robot as a local ENU height field on a torch device.

    Args:
        sources: the sources (specs are opened here); any order, priority decides.
        frame: the local ENU frame (datum).
        cell_m: node spacing, metres (> 0).
        half_extent_m: the grid spans centre +- half_extent_m in x and y, metres (> cell_m).
        retile_margin_m: rebuild when the robot comes closer than this to an edge, metres
            (0 <= margin < half_extent_m).
        device: torch device ('auto', 'cpu', 'cuda', ...).
        dtype: 'float32' or 'float64' for the height tensors.
        lattice_m: spacing of the exact CRS/geoid evaluations, metres (> 0; rounded to a
            whole number of cells, at least one).
        epoch: date at which the vertical sigmas are grown (None = today, UTC).

    Raises:
        ValueError: bad geometry parameters.

    A rebuild runs either inline (:meth:`retile_if_needed`) or in one background daemon thread
    (:meth:`start_build`, then :meth:`swap_build` on the thread that uses :attr:`field`; at
    most one build is in flight or waiting to be swapped in). The worker only calls
    :meth:`build_field`, which reads the rasters and builds the tensors without touching this
    object; the hand-over is guarded by a lock. The daemon thread never keeps the interpreter
    from exiting; :meth:`close` waits for a build in flight and refuses new ones.
    """

    def __init__(self, sources: Iterable[DemSource | DemSourceSpec], frame: EnuFrame, *,
                 cell_m: float = 2.0, half_extent_m: float = 1500.0,
                 retile_margin_m: float = 500.0, device: Any = 'auto', dtype: str = 'float32',
                 lattice_m: float = 50.0, epoch: datetime.date | None = None) -> None:
        srcs = [s if isinstance(s, DemSource) else DemSource(s) for s in sources]
        self.sources = sorted(srcs, key=lambda s: (-s.spec.priority, s.spec.id))
        ids = [s.spec.id for s in self.sources]
        if len(set(ids)) != len(ids):
            raise ValueError(f'DEM sources have duplicate ids: {ids}')
        if not isinstance(frame, EnuFrame):
            raise ValueError(f'frame must be an EnuFrame, got {type(frame).__name__}')
        if not (math.isfinite(cell_m) and cell_m > 0):
            raise ValueError(f'cell_m must be > 0, got {cell_m}')
        if not (math.isfinite(half_extent_m) and half_extent_m >= cell_m):
            raise ValueError(f'half_extent_m must be >= cell_m ({cell_m}), got {half_extent_m}')
        if not (0 <= retile_margin_m < half_extent_m):
            raise ValueError(f'retile_margin_m must be in [0, half_extent_m={half_extent_m}), '
                             f'got {retile_margin_m}')
        if dtype not in ('float32', 'float64'):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        if not (isinstance(lattice_m, (int, float)) and math.isfinite(lattice_m) and lattice_m > 0):
            raise ValueError(f'lattice_m must be > 0, got {lattice_m!r}')
        self.frame = frame
        self.cell_m = float(cell_m)
        self.half_cells = int(round(half_extent_m / cell_m))
        self.retile_margin_m = float(retile_margin_m)
        self.device = device
        self.dtype = dtype
        self.lattice_stride = max(1, int(round(lattice_m / self.cell_m)))
        self.epoch = epoch
        self.field: HeightField | None = None
        self.builds = 0  # grids built and taken into use
        #: why the last build missed data (unreadable tiles, their DemReadError texts)
        self.last_read_problems: list[str] = []
        #: wall time of the last finished build (inline or background), seconds; NaN before
        self.last_build_s = math.nan
        self._build_cv = threading.Condition(threading.Lock())  # guards the next three
        self._build_thread: threading.Thread | None = None  # the build in flight
        self._build_result: GridBuild | None = None  # finished, not yet swapped in
        self._closed = False

    @property
    def specs_by_id(self) -> dict[int, DemSourceSpec]:
        """Source id -> spec (for the legend and the PRIOR_SURFACE_MODEL flag)."""
        return {s.spec.id: s.spec for s in self.sources}

    def snapped_center(self, x: float, y: float) -> tuple[float, float]:
        """The grid centre for a robot at ENU (x, y): snapped to a multiple of cell_m."""
        return (round(x / self.cell_m) * self.cell_m, round(y / self.cell_m) * self.cell_m)

    def needs_retile(self, position_enu: Any) -> bool:
        """True if there is no grid yet or ``position_enu`` (x, y[, z]) is within the retile
        margin of an edge (or outside)."""
        p = np.asarray(position_enu, dtype=np.float64).reshape(-1)
        if p.size < 2 or not np.all(np.isfinite(p[:2])):
            raise ValueError(f'position_enu must hold finite x, y; got {p.tolist()}')
        if self.field is None:
            return True
        x0, x1, y0, y1 = self.field.extent
        m = self.retile_margin_m
        return not (x0 + m <= p[0] <= x1 - m and y0 + m <= p[1] <= y1 - m)

    def retile_if_needed(self, position_enu: Any, force: bool = False) -> bool:
        """Rebuild the grid around ``position_enu`` if needed (or ``force``); returns True if
        it was rebuilt.

        A tile that cannot be read costs only its own area: the grid is built from the rest
        and :attr:`last_read_problems` names what was missing ([] when nothing was).

        Raises:
            DemReadError: tiles could not be read and nothing else had data: ``field`` keeps
                the previous grid (or None).
        """
        if not force and not self.needs_retile(position_enu):
            return False
        p = np.asarray(position_enu, dtype=np.float64).reshape(-1)
        problems: list[str] = []
        t0 = time.perf_counter()
        try:
            field = self.build_field(float(p[0]), float(p[1]), problems)
        finally:
            self.last_build_s = time.perf_counter() - t0
        self._install(field, problems)
        return True

    def _install(self, field: 'HeightField', problems: list[str]) -> None:
        """Take a built field into use (see :meth:`retile_if_needed` for ``problems``).

        Raises:
            DemReadError: tiles could not be read and nothing else had data (``field`` is
                left as it was).
        """
        self.last_read_problems = list(dict.fromkeys(problems))
        if problems and math.isnan(field.z_max):  # nothing with data could be read
            raise DemReadError.joined(self.last_read_problems)
        self.field = field
        self.builds += 1

    # --- background builds ----------------------------------------------------------------

    @property
    def build_in_flight(self) -> bool:
        """True while a background build runs (:meth:`start_build`)."""
        with self._build_cv:
            return self._build_thread is not None

    @property
    def build_ready(self) -> bool:
        """True when a finished background build waits for :meth:`swap_build`."""
        with self._build_cv:
            return self._build_result is not None

    @property
    def build_pending(self) -> bool:
        """True from :meth:`start_build` until :meth:`swap_build` takes the result."""
        with self._build_cv:
            return self._build_thread is not None or self._build_result is not None

    def start_build(self, position_enu: Any) -> bool:
        """Start building the grid around ``position_enu`` (x, y[, z], ENU metres) in the
        background worker thread; :attr:`field` is not touched (see :meth:`swap_build`).

        Returns:
            True when a build was started; False when one is already in flight or waiting to
            be swapped in (never more than one), or after :meth:`close`.

        Raises:
            ValueError: ``position_enu`` has no finite x, y.
        """
        p = np.asarray(position_enu, dtype=np.float64).reshape(-1)
        if p.size < 2 or not np.all(np.isfinite(p[:2])):
            raise ValueError(f'position_enu must hold finite x, y; got {p.tolist()}')
        with self._build_cv:
            if self._closed or self._build_thread is not None or self._build_result is not None:
                return False
            worker = threading.Thread(target=self._build_worker, args=(float(p[0]), float(p[1])),
                                      name='height-grid-build', daemon=True)
            self._build_thread = worker
            worker.start()
        return True

    def _build_worker(self, x: float, y: float) -> None:
        """Body of the worker thread: build, then hand the result over under the lock."""
        t0 = time.perf_counter()
        problems: list[str] = []
        field = error = None
        try:
            field = self.build_field(x, y, problems)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of swap_build
            error = exc if isinstance(exc, Exception) else RuntimeError(
                f'height grid build interrupted: {type(exc).__name__}')
        result = GridBuild(x, y, field, problems, error, time.perf_counter() - t0)
        with self._build_cv:
            self._build_result = None if self._closed else result
            self._build_thread = None
            self._build_cv.notify_all()

    def swap_build(self) -> bool:
        """Take a finished background build into use (call it on the thread that uses
        :attr:`field`): sets :attr:`field`, :attr:`last_read_problems` and
        :attr:`last_build_s` as :meth:`retile_if_needed` does.

        Returns:
            True when a build was swapped in; False when none had finished.

        Raises:
            DemReadError: the build could not read anything with data (or raised it).
            Exception: whatever else the build raised. Either way the result is consumed and
                :attr:`field` keeps the previous grid.
        """
        with self._build_cv:
            result, self._build_result = self._build_result, None
        if result is None:
            return False
        self.last_build_s = result.seconds
        if result.error is not None:
            raise result.error
        self._install(result.field, result.problems)
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no background build is in flight (a finished one stays for
        :meth:`swap_build`).

        Args:
            timeout: seconds (>= 0); None waits as long as it takes.

        Returns:
            True when none is in flight; False when ``timeout`` passed first.

        Raises:
            ValueError: a negative or non-finite ``timeout``.
        """
        if timeout is not None and not (isinstance(timeout, (int, float))
                                        and math.isfinite(timeout) and timeout >= 0):
            raise ValueError(f'timeout must be None or a finite number >= 0 s, got {timeout!r}')
        with self._build_cv:
            return self._build_cv.wait_for(lambda: self._build_thread is None, timeout)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Refuse further background builds, wait for the one in flight (see :meth:`wait`)
        and drop any result not yet swapped in.

        Returns:
            True when no build is in flight any more.
        """
        with self._build_cv:
            self._closed = True
            self._build_result = None
        done = self.wait(timeout)
        with self._build_cv:
            self._build_result = None
        return done

    def build_field(self, x_center: float, y_center: float,
                    problems: list[str] | None = None) -> 'HeightField':
        """Build (without storing) the height field centred near ENU (x_center, y_center).

        Pure with respect to this object, so a caller may run it in a worker thread and then
        assign ``self.field`` (:meth:`start_build` does).

        Args:
            problems: see :meth:`sample_nodes` (a list: unreadable tiles are no data and their
                reasons are appended; None: they raise).

        Raises:
            DemReadError: a source file cannot be read (see :meth:`_RasterGroup.read`), when
                ``problems`` is None.
        """

        import torch

        from .raycast import HeightField, resolve_device

        t_start = time.perf_counter()
        cx, cy = self.snapped_center(x_center, y_center)
        n = 2 * self.half_cells + 1
        xs = cx + self.cell_m * np.arange(-self.half_cells, self.half_cells + 1, dtype=np.float64)
        ys = cy + self.cell_m * np.arange(-self.half_cells, self.half_cells + 1, dtype=np.float64)
        h, src, sv, sh = self.sample_nodes(xs, ys, problems=problems)
        dev = resolve_device(self.device)
        tdt = torch.float32 if self.dtype == 'float32' else torch.float64
        field = HeightField(torch.as_tensor(h, dtype=tdt).to(dev), float(xs[0]), float(ys[0]),
                            self.cell_m, source=torch.as_tensor(src, dtype=torch.int32).to(dev),
                            sigma_v=torch.as_tensor(sv, dtype=tdt).to(dev),
                            sigma_h=torch.as_tensor(sh, dtype=tdt).to(dev), frame=self.frame)
        t_bvh = time.perf_counter()
        field.build_bvh()  # the CPU ray-cast's acceleration structure (raycast_embree)
        _LOG.info('built %dx%d height grid (cell %.2f m) at ENU (%.1f, %.1f): %.1f %% data, '
                  '%.2f s (BVH %s)', n, n, self.cell_m, cx, cy,
                  100.0 * float(np.isfinite(h).mean()), time.perf_counter() - t_start,
                  f'{time.perf_counter() - t_bvh:.2f} s' if field.bvh is not None else 'none')
        return field

    def sample_nodes(self, xs: np.ndarray, ys: np.ndarray, *, max_iter: int = 5,
                     tol_m: float = 1e-4, problems: list[str] | None = None
                     ) -> tuple[np.ndarray, ...]:
        """Terrain ENU z at the nodes of the grid ``xs`` (Nx,) x ``ys`` (Ny,) (ENU metres).

        ``problems``: see :meth:`_RasterGroup.read` (None: an unreadable tile raises
        DemReadError; a list: it is no data and its reason is appended, the other tiles and
        sources fill the grid).

        Returns:
            (height (Ny, Nx) float64 ENU z, NaN = no data; source id (Ny, Nx) int32, 0 = none;
            sigma_v (Ny, Nx) float64 m, NaN where no data; sigma_h (Ny, Nx) float64 m).
        """
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        if xs.ndim != 1 or ys.ndim != 1 or xs.size < 2 or ys.size < 2:
            raise ValueError(f'xs and ys must be 1-D with >= 2 nodes, got {xs.shape}, {ys.shape}')
        ny, nx = ys.size, xs.size
        li, lj = _lattice_index(ny, self.lattice_stride), _lattice_index(nx, self.lattice_stride)
        lgx, lgy = np.meshgrid(xs[lj], ys[li])

        def interp(vals: np.ndarray) -> np.ndarray:
            return _interp_lattice(vals, li, lj, ny, nx)

        # Exact on the lattice, at two ENU z levels: geodetic position and ellipsoidal height of
        # the ENU point; interpolated to all nodes (and linearly in z between the levels). The
        # height is interpolated as the residual from its osculating quadratic, which carries
        # the Earth's curvature exactly enough (the residual is third order).
        lat0 = math.radians(self.frame.lat0_deg)
        w2 = 1.0 - geodesy.WGS84_E2 * math.sin(lat0) ** 2
        rn = geodesy.WGS84_A / math.sqrt(w2) + self.frame.h0_m  # prime vertical radius + h0
        rm = geodesy.WGS84_A * (1 - geodesy.WGS84_E2) / w2 ** 1.5 + self.frame.h0_m  # meridian

        def h_quad(x: np.ndarray, y: np.ndarray, z: Any) -> np.ndarray:
            return self.frame.h0_m + z + x * x / (2 * rn) + y * y / (2 * rm)

        z_levels = (0.0, 1000.0)
        lat_l, lon_l, h_res = [], [], []
        for zl in z_levels:
            la, lo, hh = self.frame.enu_to_geodetic(np.stack([lgx, lgy, np.full_like(lgx, zl)], -1))
            lat_l.append(la)
            lon_l.append(lo)
            h_res.append(interp(hh - h_quad(lgx, lgy, zl)))
        gx, gy = np.meshgrid(xs, ys)
        # ENU components of the ellipsoid normal ("up") at the nodes: moving a point along it
        # changes only h, so ENU(lat, lon, h) = ENU(lat, lon, h_k) + (h - h_k) * up.
        up_ecef = geodesy.enu_rotation(lat_l[0], lon_l[0])[..., :, 2]
        up = [interp(c) for c in np.moveaxis(up_ecef @ self.frame.R_enu_to_ecef, -1, 0)]
        up_h = np.hypot(up[0], up[1])
        prepared = []
        for s in self.sources:
            groups = []
            for g in s.groups:
                uv = []
                for k in range(2):
                    u, v = g.lonlat_to_src(lon_l[k], lat_l[k])
                    uv.append((interp(u), interp(v)))
                groups.append((g, uv))
            # NaN outside a regional geoid grid: no data from this source there
            und = geodesy.geoid_undulation(lat_l[0], lon_l[0], s.spec.vertical_datum, strict=False)
            prepared.append((s, groups, interp(und)))

        z = np.zeros((ny, nx))
        source = np.zeros((ny, nx), dtype=np.int32)
        mismatch = math.inf
        for it in range(max_iter):
            w = (z - z_levels[0]) / (z_levels[1] - z_levels[0])
            # ellipsoidal height of the ENU point (x, y, z)
            h_k = h_quad(gx, gy, z) + h_res[0] + (h_res[1] - h_res[0]) * w
            h_ell = np.full((ny, nx), np.nan)
            source = np.zeros((ny, nx), dtype=np.int32)
            for s, groups, und in prepared:
                todo = np.isnan(h_ell)
                if not np.any(todo):
                    break
                val = np.full((ny, nx), np.nan)
                for g, uv in groups:
                    need = todo & np.isnan(val)
                    if not np.any(need):
                        break
                    wn = w[need]
                    u = uv[0][0][need] + (uv[1][0][need] - uv[0][0][need]) * wn
                    v = uv[0][1][need] + (uv[1][1][need] - uv[0][1][need]) * wn
                    val[need] = g.sample(u, v, problems)
                got = todo & np.isfinite(val)
                h_ell[got] = val[got] + und[got]
                source[got] = s.spec.id
            ok = np.isfinite(h_ell)
            delta = np.where(ok, h_ell - h_k, 0.0)
            z = z + delta * up[2]
            mismatch = float(np.max(np.abs(delta) * up_h))
            _LOG.debug('height grid iteration %d: horizontal mismatch %.2e m', it, mismatch)
            if mismatch < tol_m:
                break
        else:
            _LOG.warning('height grid: horizontal mismatch %.2e m after %d iterations', mismatch,
                         max_iter)
        height = np.where(source > 0, z, np.nan)
        sigma_v = np.full((ny, nx), np.nan)
        sigma_h = np.full((ny, nx), np.nan)
        for s in self.sources:
            m = source == s.spec.id
            sigma_v[m] = s.spec.sigma_v_at(self.epoch)
            sigma_h[m] = s.spec.sigma_h_m
        return height, source, sigma_v, sigma_h
