"""The true world: analytic terrain, changes since the survey, objects, their mesh, and the DEM.

Everything here is in the local ENU frame of :mod:`geo_depth_node.synth.geo` (metres; x east,
y north, z up). The true terrain is the smooth surface ``z = T(x, y)`` (:class:`Terrain`); the
rendered world is a triangle mesh whose vertices lie exactly on that surface (sampled on a
tensor-product grid, 0.5 m near the route growing to ~60 m at the edge), plus object meshes.
The DEM is an independent rasterisation of the SURVEYED world (terrain without the changes;
for a DSM also the objects that existed at the survey) in UTM with deliberate errors.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np

from .config import SynthConfig
from .geo import LocalFrame, geoid_undulation_egm96

_LOG = logging.getLogger(__name__)

SURFACE_SKY = 0
SURFACE_TERRAIN = 1
FIRST_OBJECT = 2  # object k has surface id FIRST_OBJECT + k
DEM_NODATA = -9999.0


@dataclasses.dataclass
class Wave:
    """One term of the terrain: ``amp * f(kx x + ky y + phase)``.

    ``kind`` 'sin': f = sin; 'ridge': f = 1 - sqrt(sin^2 + eps^2) (a smooth ridge line).
    ``smooth``: part of the large-scale ground the vehicle's roll/pitch follow.
    """

    amp: float
    kx: float
    ky: float
    phase: float
    kind: str = 'sin'
    smooth: bool = True


@dataclasses.dataclass
class Bump:
    """A local change of the terrain since the survey: ``dz * (1 - (r/radius)^2)^2`` for r < radius."""

    x: float
    y: float
    radius: float
    dz: float
    name: str


_RIDGE_EPS = 0.15


class Terrain:
    """The analytic height field ``z = T(x, y)`` (ENU metres) and its gradient.

    Args:
        waves: the terms of the surveyed terrain.
        changes: bumps present in the true world but not in the survey.
        window_radius_m: if > 0, terms are multiplied by ``1 - exp(-(r/R)^2)`` (a valley floor
            around the origin; used for 'mountains').
    """

    def __init__(self, waves: list[Wave], changes: list[Bump], window_radius_m: float = 0.0):
        self.waves = waves
        self.changes = changes
        self.window_radius_m = window_radius_m

    def _waves(self, x: np.ndarray, y: np.ndarray, smooth_only: bool
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z = np.zeros(np.broadcast(x, y).shape)
        gx = np.zeros_like(z)
        gy = np.zeros_like(z)
        for w in self.waves:
            if smooth_only and not w.smooth:
                continue
            a = w.kx * x + w.ky * y + w.phase
            s, c = np.sin(a), np.cos(a)
            if w.kind == 'sin':
                f, df = s, c
            else:
                root = np.sqrt(s * s + _RIDGE_EPS ** 2)
                f, df = 1.0 - root, -s * c / root
            z += w.amp * f
            gx += w.amp * df * w.kx
            gy += w.amp * df * w.ky
        if self.window_radius_m > 0:
            r2 = (x * x + y * y) / self.window_radius_m ** 2
            e = np.exp(-r2)
            win = 1.0 - e
            dwin_dx = e * 2.0 * x / self.window_radius_m ** 2
            dwin_dy = e * 2.0 * y / self.window_radius_m ** 2
            gx, gy = gx * win + z * dwin_dx, gy * win + z * dwin_dy
            z = z * win
        return z, gx, gy

    def height(self, x: np.ndarray, y: np.ndarray, *, surveyed: bool = False,
               smooth_only: bool = False) -> np.ndarray:
        """T(x, y) in metres; ``surveyed`` omits the changes; ``smooth_only`` also the roughness."""
        return self.height_and_gradient(x, y, surveyed=surveyed, smooth_only=smooth_only)[0]

    def height_and_gradient(self, x: np.ndarray, y: np.ndarray, *, surveyed: bool = False,
                            smooth_only: bool = False
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(T, dT/dx, dT/dy) at the points; arrays broadcast."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        z, gx, gy = self._waves(x, y, smooth_only)
        if not (surveyed or smooth_only):
            for b in self.changes:
                dx, dy = x - b.x, y - b.y
                q = 1.0 - (dx * dx + dy * dy) / b.radius ** 2
                inside = q > 0
                qq = np.where(inside, q, 0.0)
                z = z + b.dz * qq * qq
                dq = np.where(inside, 2.0 * b.dz * qq, 0.0) / b.radius ** 2
                gx = gx - dq * 2.0 * dx
                gy = gy - dq * 2.0 * dy
        return z, gx, gy

    def in_change(self, x: np.ndarray, y: np.ndarray, margin_m: float = 0.0) -> np.ndarray:
        """Whether points lie inside a change area (bool, broadcast shape)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        out = np.zeros(np.broadcast(x, y).shape, dtype=bool)
        for b in self.changes:
            out |= (x - b.x) ** 2 + (y - b.y) ** 2 < (b.radius + margin_m) ** 2
        return out


def make_waves(cfg: SynthConfig, rng: np.random.Generator) -> tuple[list[Wave], float]:
    """Random terrain terms for ``cfg.terrain``; returns (waves, window radius)."""
    waves: list[Wave] = []

    def add(n: int, lam: tuple[float, float], amp: tuple[float, float], kind: str = 'sin',
            smooth: bool = True) -> None:
        for _ in range(n):
            wl = math.exp(rng.uniform(math.log(lam[0]), math.log(lam[1])))
            th = rng.uniform(0, 2 * math.pi)
            k = 2 * math.pi / wl
            waves.append(Wave(float(rng.uniform(*amp)), k * math.cos(th), k * math.sin(th),
                              float(rng.uniform(0, 2 * math.pi)), kind, smooth))

    if cfg.terrain == 'flat':
        return waves, 0.0
    if cfg.terrain == 'hills':
        add(5, (180.0, 700.0), (3.0, 9.0))
        add(3, (40.0, 90.0), (0.3, 0.8))
        add(2, (5.0, 9.0), (0.02, 0.04), smooth=False)  # ground roughness
        return waves, 0.0
    add(2, (250.0, 500.0), (4.0, 8.0))
    add(4, (700.0, 2500.0), (60.0, 160.0), kind='ridge')
    add(3, (150.0, 400.0), (8.0, 20.0))
    add(2, (5.0, 9.0), (0.02, 0.04), smooth=False)
    return waves, 350.0


@dataclasses.dataclass
class WorldObject:
    """An object standing on the terrain (ENU metres).

    ``kind`` box | pole | tree; ``x, y`` centre, ``z0`` base height (sunk into the ground),
    ``size`` (sx, sy, sz) of a box / (radius, 0, height) of a pole / (crown radius, 0, height) of a
    tree; ``yaw`` of a box (rad); ``in_survey``: present when the DEM (a DSM) was surveyed;
    ``textureless``: uniform albedo (a white wall).
    """

    kind: str
    x: float
    y: float
    z0: float
    size: tuple[float, float, float]
    yaw: float = 0.0
    in_survey: bool = True
    textureless: bool = False
    albedo: float = 120.0

    def mesh(self):
        """Open3D legacy TriangleMesh in ENU (float64)."""
        import open3d as o3d

        if self.kind == 'box':
            sx, sy, sz = self.size
            m = o3d.geometry.TriangleMesh.create_box(sx, sy, sz)
            m.translate((-sx / 2, -sy / 2, 0.0))
            c, s = math.cos(self.yaw), math.sin(self.yaw)
            m.rotate(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]), center=(0, 0, 0))
        elif self.kind == 'pole':
            r, _, h = self.size
            m = o3d.geometry.TriangleMesh.create_cylinder(r, h, resolution=16, split=1)
            m.translate((0, 0, h / 2))
        elif self.kind == 'tree':
            r, _, h = self.size
            trunk = o3d.geometry.TriangleMesh.create_cylinder(0.18, 0.45 * h, resolution=12)
            trunk.translate((0, 0, 0.225 * h))
            crown = o3d.geometry.TriangleMesh.create_cone(r, 0.7 * h, resolution=20, split=1)
            crown.translate((0, 0, 0.3 * h))
            m = trunk + crown
        else:
            raise ValueError(f'unknown object kind {self.kind!r}')
        m.translate((self.x, self.y, self.z0))
        return m

    def top_z(self) -> float:
        """Highest point, ENU metres."""
        return self.z0 + self.size[2]


def grid_axis(lo: float, hi: float, extent: float, fine_m: float, growth: float = 1.07,
              max_step: float = 60.0) -> np.ndarray:
    """1-D node coordinates: step ``fine_m`` over [lo, hi], growing geometrically to +-extent."""
    fine = np.arange(lo, hi + 0.5 * fine_m, fine_m)
    right = [fine[-1]]
    step = fine_m
    while right[-1] < extent:
        step = min(step * growth, max_step)
        right.append(min(right[-1] + step, extent))
    left = [fine[0]]
    step = fine_m
    while left[-1] > -extent:
        step = min(step * growth, max_step)
        left.append(max(left[-1] - step, -extent))
    return np.concatenate([np.array(left[:0:-1]), fine, np.array(right[1:])])


def terrain_mesh_arrays(terrain: Terrain, xs: np.ndarray, ys: np.ndarray,
                        surveyed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (Ny*Nx, 3) float64 on T(x, y) and triangles (M, 3) int32 of the grid mesh.

    Triangles are counter-clockwise seen from above (normals point up). ``surveyed``: the
    terrain without the changes since the survey.
    """
    X, Y = np.meshgrid(xs, ys)
    Z = terrain.height(X, Y, surveyed=surveyed)
    verts = np.stack([X.ravel(), Y.ravel(), Z.ravel()], axis=1)
    nx, ny = xs.size, ys.size
    idx = np.arange(nx * ny, dtype=np.int64).reshape(ny, nx)
    a = idx[:-1, :-1].ravel()
    b = idx[:-1, 1:].ravel()
    c = idx[1:, 1:].ravel()
    d = idx[1:, :-1].ravel()
    tris = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)]).astype(np.int32)
    return verts, tris


@dataclasses.dataclass
class DemRaster:
    """The 'surveyed' DEM as written to the GeoTIFF (north-up, UTM).

    ``heights`` (Ny, Nx) float32 in ``vertical_datum`` (DEM_NODATA in holes); row 0 is the
    northern edge; node (r, c) is the centre of pixel (r, c) at easting ``west + (c + 0.5) res``,
    northing ``north - (r + 0.5) res``. ``error`` (Ny, Nx) float64: the applied vertical error
    (m); ``shift_e``, ``shift_n`` (Ny, Nx) float64: the applied horizontal error (m): node
    (r, c) holds the surveyed surface at (easting + shift_e, northing + shift_n);
    ``truth_h`` (Ny, Nx) float64: the surveyed-world ellipsoidal height there.
    """

    heights: np.ndarray
    epsg: int
    west: float
    north: float
    res: float
    vertical_datum: str
    error: np.ndarray
    truth_h: np.ndarray
    holes: list[tuple[float, float, float]]
    shift_e: np.ndarray
    shift_n: np.ndarray

    def write_geotiff(self, path: str, tags: dict[str, str]) -> None:
        """Write a float32 GeoTIFF with nodata, CRS and the tags (deterministic bytes)."""
        import rasterio
        from rasterio.transform import from_origin

        ny, nx = self.heights.shape
        with rasterio.open(path, 'w', driver='GTiff', width=nx, height=ny, count=1,
                           dtype='float32', crs=f'EPSG:{self.epsg}', nodata=DEM_NODATA,
                           transform=from_origin(self.west, self.north, self.res, self.res),
                           compress='deflate', tiled=True, blockxsize=256,
                           blockysize=256) as ds:
            ds.write(self.heights.astype(np.float32), 1)
            ds.update_tags(**tags)
            ds.update_tags(1, units='metre', vertical_datum=self.vertical_datum)


def surveyed_heights_at(frame: LocalFrame, terrain: Terrain, lat: np.ndarray, lon: np.ndarray,
                        iterations: int = 6) -> np.ndarray:
    """Ellipsoidal height (m) of the SURVEYED terrain at geodetic (lat, lon).

    Solves ``enu(lat, lon, h).z = T(enu.x, enu.y)`` for h by fixed-point iteration (ENU up
    and the ellipsoid normal differ by < 1e-3 rad over a few km, so it converges to < 1 um).
    """
    h = np.full(np.shape(lat), frame.h_m, dtype=np.float64)
    for _ in range(iterations):
        p = frame.geodetic_to_enu(lat, lon, h)
        dz = terrain.height(p[..., 0], p[..., 1], surveyed=True) - p[..., 2]
        h = h + dz
    return h


def make_dem(cfg: SynthConfig, frame: LocalFrame, survey, rng: np.random.Generator,
             hole_centres: list[tuple[float, float]]) -> DemRaster:
    """Rasterise the surveyed world into the DEM with the configured errors.

    Args:
        survey: a ``render.WorldRenderer`` of the SURVEYED world (terrain mesh without the
            changes; for a DSM plus the objects present at the survey).

    The DEM grid is aligned to multiples of ``dem_res_m`` in the UTM zone of the datum and covers
    +-``dem_extent_m`` around it. The surveyed height at a node is where the ellipsoid normal
    through the node's (lat, lon) meets the surveyed mesh (a straight ray in ENU, intersected
    exactly), so the DEM samples the very surface that is rendered. The horizontal error: each
    node samples the surface at a point displaced by a smooth random field of per-axis std
    ``dem_sigma_h_m`` (a mis-registration, like the vertical error correlated over
    ``dem_corr_m``). Then ``dem_offset_m`` and a smooth random vertical error of std
    ``dem_sigma_m`` are added (white noise blurred to ``dem_corr_m``, normalised to exactly zero
    mean and unit std over the grid) and the heights are converted to ``dem_vertical_datum``.
    So the DEM's error is exactly what it states (plus the offset, which it does not).
    """
    import cv2

    res = cfg.dem_res_m
    e0, n0 = frame.geodetic_to_utm(frame.lat_deg, frame.lon_deg)
    west = math.floor((float(e0) - cfg.dem_extent_m) / res) * res
    north = math.ceil((float(n0) + cfg.dem_extent_m) / res) * res
    n_cells = int(round(2 * cfg.dem_extent_m / res)) + 1
    cols = west + (np.arange(n_cells) + 0.5) * res
    rows = north - (np.arange(n_cells) + 0.5) * res
    E, N = np.meshgrid(cols, rows)

    def smooth_unit_field() -> np.ndarray:
        noise = rng.standard_normal(E.shape)
        if cfg.dem_corr_m > 0:
            s = cfg.dem_corr_m / res
            k = int(2 * math.ceil(3 * s) + 1)
            noise = cv2.GaussianBlur(noise, (k, k), s, borderType=cv2.BORDER_REFLECT)
        return (noise - noise.mean()) / noise.std()

    noise = smooth_unit_field()  # drawn first: worlds without a horizontal error stay as before
    if cfg.dem_sigma_h_m > 0:
        shift_e = cfg.dem_sigma_h_m * smooth_unit_field()
        shift_n = cfg.dem_sigma_h_m * smooth_unit_field()
    else:
        shift_e = shift_n = np.zeros_like(E)
    lat, lon = frame.utm_to_geodetic(E + shift_e, N + shift_n)
    surf_h = heights_along_normals(frame, survey, lat, lon)
    if not np.all(np.isfinite(surf_h)):
        raise RuntimeError('the DEM extends beyond the rendered terrain; lower dem_extent_m')
    error = cfg.dem_offset_m + cfg.dem_sigma_m * noise
    h_dem = surf_h + error
    if cfg.dem_vertical_datum == 'egm96':
        h_dem = h_dem - geoid_undulation_egm96(*frame.utm_to_geodetic(E, N))
    heights = h_dem.astype(np.float32)

    holes: list[tuple[float, float, float]] = []
    enu = frame.geodetic_to_enu(*frame.utm_to_geodetic(E, N), surf_h)
    for (hx, hy) in hole_centres:
        radius = float(rng.uniform(15.0, 40.0))
        inside = (enu[..., 0] - hx) ** 2 + (enu[..., 1] - hy) ** 2 < radius ** 2
        heights[inside] = DEM_NODATA
        holes.append((hx, hy, radius))
    return DemRaster(heights, frame.utm_epsg, west, north, res, cfg.dem_vertical_datum, error,
                     surf_h, holes, shift_e, shift_n)


def heights_along_normals(frame: LocalFrame, scene, lat: np.ndarray, lon: np.ndarray,
                          span_m: float = 5000.0) -> np.ndarray:
    """Ellipsoidal height (m) where the ellipsoid normal at (lat, lon) first meets ``scene``
    coming from above (NaN where it misses). ``scene``: a ``render.WorldRenderer``."""
    hi = frame.h_m + span_m
    lo = frame.h_m - span_m
    a = frame.geodetic_to_enu(lat, lon, np.full(np.shape(lat), hi))
    b = frame.geodetic_to_enu(lat, lon, np.full(np.shape(lat), lo))
    hits = scene.cast(a.reshape(-1, 3), (b - a).reshape(-1, 3))
    t = hits.t.reshape(np.shape(lat))
    return np.where(np.isfinite(t), hi + t * (lo - hi), np.nan)


def world_summary(terrain: Terrain, objects: list[WorldObject], dem: DemRaster) -> dict[str, Any]:
    """JSON-friendly description of the world (for world.json)."""
    return {
        'terrain_waves': [dataclasses.asdict(w) for w in terrain.waves],
        'terrain_window_radius_m': terrain.window_radius_m,
        'changes_since_survey': [dataclasses.asdict(b) for b in terrain.changes],
        'objects': [dict(dataclasses.asdict(o), surface_id=FIRST_OBJECT + i)
                    for i, o in enumerate(objects)],
        'dem': {'epsg': dem.epsg, 'west': dem.west, 'north': dem.north, 'res_m': dem.res,
                'shape': list(dem.heights.shape), 'vertical_datum': dem.vertical_datum,
                'nodata': DEM_NODATA,
                'error_mean_m': float(dem.error.mean()), 'error_std_m': float(dem.error.std()),
                'holes_enu_xyr': [list(h) for h in dem.holes]},
    }
