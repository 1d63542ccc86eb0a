"""Render the stereo pair and its per-pixel truth by ray casting the true world with Open3D.

Independent of the node's own DEM ray-caster: Open3D (Embree) intersects the triangle mesh,
and the hit distance is then recomputed in float64 against the hit triangle's plane, so the
truth depth is exact for the rendered mesh (Open3D works in float32).

Radiance model (DN, 8-bit): albedo + multi-scale value-noise texture anchored to the surface
(terrain: ENU x, y; objects: the two axes of the face's dominant plane), times Lambertian sun
shading (ambient 0.45). Octaves finer than the pixel footprint fade out (a mip-map-like
prefilter), so far surfaces carry less texture, as they do in real images. Sky: a smooth
gradient with elevation, no texture. Then Gaussian sensor noise and rounding.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from .world import FIRST_OBJECT, SURFACE_SKY, SURFACE_TERRAIN, Terrain, WorldObject

_LOG = logging.getLogger(__name__)

_CELLS_M = (0.025, 0.06, 0.15, 0.38, 0.95, 2.4, 6.0)
_TABLE_N = 1024
_OCTAVE_STD = math.sqrt(4.0 / 27.0)  # std of one bilinear octave of U(-1, 1) lattice values
_TEXTURE_DN = 38.0
_AMBIENT = 0.45
_SUN_AZ_DEG, _SUN_EL_DEG = 135.0, 40.0  # azimuth clockwise from north


def pixel_rays(width: int, height: int, K: np.ndarray, D: np.ndarray | None = None,
               offsets: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Camera-frame ray directions (H, W, 3) float64 with z = 1 for every pixel centre.

    With distortion ``D`` (plumb_bob k1, k2, p1, p2, k3) the rays are those of the RAW
    (distorted) pixels, undistorted by Newton iteration to 1e-12 (own code, not OpenCV, so the
    node's OpenCV rectification is checked by an independent model). ``offsets``: sub-pixel
    shift (px).
    """
    u = np.arange(width, dtype=np.float64) + offsets[0]
    v = np.arange(height, dtype=np.float64) + offsets[1]
    uu, vv = np.meshgrid(u, v)
    if D is None or not np.any(D):
        x = (uu - K[0, 2]) / K[0, 0]
        y = (vv - K[1, 2]) / K[1, 1]
    else:
        x, y = _undistort((uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1],
                          np.asarray(D, dtype=np.float64))
    return np.stack([x, y, np.ones_like(x)], axis=-1)


def distort(x: np.ndarray, y: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """plumb_bob (k1, k2, p1, p2, k3) forward model on normalised coordinates."""
    k1, k2, p1, p2, k3 = (list(D) + [0.0] * 5)[:5]
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
            y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)


def _undistort(xd: np.ndarray, yd: np.ndarray, D: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Invert :func:`distort` by Newton iteration (numerical Jacobian-free: 2x2 analytic).

    Raises:
        RuntimeError: if it does not converge to 1e-12 (distortion too strong for the FOV).
    """
    x, y = xd.copy(), yd.copy()
    for _ in range(50):
        fx_, fy_ = distort(x, y, D)
        ex, ey = fx_ - xd, fy_ - yd
        if max(np.max(np.abs(ex)), np.max(np.abs(ey))) < 1e-13:
            break
        h = 1e-7
        ax, ay = distort(x + h, y, D)
        bx, by = distort(x, y + h, D)
        j11, j21 = (ax - fx_) / h, (ay - fy_) / h
        j12, j22 = (bx - fx_) / h, (by - fy_) / h
        det = j11 * j22 - j12 * j21
        x = x - (j22 * ex - j12 * ey) / det
        y = y - (-j21 * ex + j11 * ey) / det
    fx_, fy_ = distort(x, y, D)
    if max(np.max(np.abs(fx_ - xd)), np.max(np.abs(fy_ - yd))) > 1e-12:
        raise RuntimeError('raw-image ray undistortion did not converge: distortion too strong')
    return x, y


@dataclasses.dataclass
class Hits:
    """Ray-cast results for N rays: ``t`` (N,) float64 ray parameter (inf = miss), ``surface``
    (N,) uint16 (0 sky, 1 terrain, 2.. objects), ``normal`` (N, 3) unit ENU normals facing the
    ray, ``point`` (N, 3) ENU hit points (NaN for misses)."""

    t: np.ndarray
    surface: np.ndarray
    normal: np.ndarray
    point: np.ndarray


class WorldRenderer:
    """An Open3D ray-casting scene of the true world, plus its appearance.

    Args:
        terrain_verts: (V, 3) ENU vertices of the terrain mesh; ``terrain_tris`` (M, 3) int32.
        objects: the objects (surface id FIRST_OBJECT + index).
        terrain: the analytic terrain (only for the texture-free patches' membership).
        patches: texture-free circles on the terrain, (x, y, radius) ENU metres.
        rng: for the texture lattice and per-surface texture offsets.
    """

    def __init__(self, terrain_verts: np.ndarray, terrain_tris: np.ndarray,
                 objects: list[WorldObject], terrain: Terrain,
                 patches: list[tuple[float, float, float]], rng: np.random.Generator) -> None:
        import open3d as o3d

        self.origin = terrain_verts.mean(axis=0).round(0)  # keep float32 coordinates small
        self._o3d = o3d
        self.scene = o3d.t.geometry.RaycastingScene()
        self._verts: list[np.ndarray] = []
        self._tris: list[np.ndarray] = []
        self._surface_of_geom: list[int] = []
        self._add(terrain_verts, terrain_tris, SURFACE_TERRAIN)
        for k, obj in enumerate(objects):
            m = obj.mesh()
            self._add(np.asarray(m.vertices), np.asarray(m.triangles, dtype=np.int32),
                      FIRST_OBJECT + k)
        self.objects = objects
        self.terrain = terrain
        self.patches = patches
        self.table = rng.uniform(-1.0, 1.0, (_TABLE_N, _TABLE_N)).astype(np.float32)
        n_surf = FIRST_OBJECT + len(objects)
        self.surface_offset = rng.uniform(0, _TABLE_N, (n_surf, 2))
        self.albedo = np.full(n_surf, 110.0)
        self.textureless_surface = np.zeros(n_surf, dtype=bool)
        for k, obj in enumerate(objects):
            self.albedo[FIRST_OBJECT + k] = obj.albedo
            self.textureless_surface[FIRST_OBJECT + k] = obj.textureless
        az, el = math.radians(_SUN_AZ_DEG), math.radians(_SUN_EL_DEG)
        self.sun = np.array([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el),
                             math.sin(el)])

    def _add(self, verts: np.ndarray, tris: np.ndarray, surface: int) -> None:
        o3d = self._o3d
        local = np.asarray(verts, dtype=np.float64) - self.origin
        gid = self.scene.add_triangles(o3d.core.Tensor(local.astype(np.float32)),
                                       o3d.core.Tensor(np.ascontiguousarray(tris, np.uint32)))
        if gid != len(self._verts):
            raise RuntimeError(f'unexpected Open3D geometry id {gid}')
        self._verts.append(local)
        self._tris.append(np.asarray(tris, dtype=np.int64))
        self._surface_of_geom.append(surface)

    def cast(self, origins: np.ndarray, dirs: np.ndarray) -> Hits:
        """Cast rays ``origin + t * dir`` (ENU, (N, 3) each; dirs need not be unit)."""
        o3d = self._o3d
        o_local = np.asarray(origins, dtype=np.float64) - self.origin
        d = np.asarray(dirs, dtype=np.float64)
        rays = np.concatenate([o_local, d], axis=1).astype(np.float32)
        ans = self.scene.cast_rays(o3d.core.Tensor(rays))
        gid = ans['geometry_ids'].numpy().astype(np.int64)
        pid = ans['primitive_ids'].numpy().astype(np.int64)
        n = d.shape[0]
        t = np.full(n, np.inf)
        surface = np.zeros(n, dtype=np.uint16)
        normal = np.zeros((n, 3))
        miss = gid == o3d.t.geometry.RaycastingScene.INVALID_ID
        for g in range(len(self._verts)):
            sel = np.nonzero(~miss & (gid == g))[0]
            if sel.size == 0:
                continue
            tri = self._tris[g][pid[sel]]
            v0, v1, v2 = (self._verts[g][tri[:, i]] for i in range(3))
            nrm = np.cross(v1 - v0, v2 - v0)
            nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
            den = np.sum(nrm * d[sel], axis=1)
            t[sel] = np.sum(nrm * (v0 - o_local[sel]), axis=1) / den
            normal[sel] = nrm * -np.sign(den)[:, None]  # facing the ray
            surface[sel] = self._surface_of_geom[g]
        point = np.where(np.isfinite(t)[:, None], origins + t[:, None] * d, np.nan)
        return Hits(t, surface, normal, point)

    def in_patch(self, point: np.ndarray, surface: np.ndarray) -> np.ndarray:
        """Texture-free pixels: terrain inside a patch, or a texture-free object (bool (N,))."""
        out = self.textureless_surface[surface.astype(np.int64)].copy()
        terr = surface == SURFACE_TERRAIN
        for (x, y, r) in self.patches:
            out |= terr & ((point[:, 0] - x) ** 2 + (point[:, 1] - y) ** 2 < r * r)
        return out

    def _noise(self, a: np.ndarray, b: np.ndarray, footprint: np.ndarray) -> np.ndarray:
        """Sum of value-noise octaves at surface coords (a, b) m, faded by footprint (m)."""
        import cv2

        n = a.size
        cols = 1024
        n_pad = -(-n // cols) * cols
        acc = np.zeros(n, np.float64)
        mx = np.zeros(n_pad, np.float32)
        my = np.zeros(n_pad, np.float32)
        for cell in _CELLS_M:
            w = np.clip(cell / np.maximum(footprint, 1e-9) - 1.0, 0.0, 1.0)
            if not np.any(w > 0):
                continue
            x = a / cell
            y = b / cell
            mx[:n] = x - _TABLE_N * np.floor(x / _TABLE_N)
            my[:n] = y - _TABLE_N * np.floor(y / _TABLE_N)
            val = cv2.remap(self.table, mx.reshape(-1, cols), my.reshape(-1, cols),
                            cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP).ravel()[:n]
            acc += w * val
        return acc / (_OCTAVE_STD * math.sqrt(len(_CELLS_M)))

    def radiance(self, hits: Hits, dirs: np.ndarray, fx: float) -> np.ndarray:
        """(N,) float64 DN of the rays (sky where missed)."""
        d = np.asarray(dirs, dtype=np.float64)
        dn = d / np.linalg.norm(d, axis=1, keepdims=True)
        out = np.clip(232.0 - 85.0 * np.clip(dn[:, 2], 0.0, 1.0), 0, 255)  # sky
        hit = hits.surface != SURFACE_SKY
        if not np.any(hit):
            return out
        idx = np.nonzero(hit)[0]
        s = hits.surface[idx].astype(np.int64)
        p = hits.point[idx]
        nrm = hits.normal[idx]
        rng_m = hits.t[idx] * np.linalg.norm(d[idx], axis=1)
        cos_inc = np.abs(np.sum(nrm * dn[idx], axis=1))
        footprint = rng_m / fx / np.maximum(cos_inc, 0.1)
        ax = np.argmax(np.abs(nrm), axis=1)
        a = np.where(ax == 0, p[:, 1], p[:, 0])
        b = np.where(ax == 2, p[:, 1], p[:, 2])
        a = a + self.surface_offset[s, 0] * 0.37
        b = b + self.surface_offset[s, 1] * 0.37
        tex = self._noise(a, b, footprint)
        flat = self.in_patch(p, hits.surface[idx])
        val = self.albedo[s] + np.where(flat, 0.0, _TEXTURE_DN * tex)
        shade = _AMBIENT + (1 - _AMBIENT) * np.clip(nrm @ self.sun, 0.0, 1.0)
        out[idx] = np.clip(val * shade, 0, 255)
        return out


@dataclasses.dataclass
class CameraView:
    """One rendered camera: ``image`` (H, W) uint8 and the truth of its pixel-centre rays."""

    image: np.ndarray
    depth: np.ndarray  # (H, W) float32 Z along the optical axis, m; +inf sky
    surface: np.ndarray  # (H, W) uint16
    textureless: np.ndarray  # (H, W) bool
    points: np.ndarray  # (H, W, 3) float64 ENU hit points (NaN sky)


def render_view(world: WorldRenderer, r_enu_cam: np.ndarray, p_enu_cam: np.ndarray,
                rays_cam: np.ndarray, fx: float, noise_dn: float, rng: np.random.Generator,
                supersample_rays: list[np.ndarray] | None = None) -> CameraView:
    """Render one camera at pose (R, p) (camera optical frame -> ENU) for pixel rays (H, W, 3).

    ``supersample_rays``: extra sub-pixel ray grids averaged into the image (anti-aliasing);
    the truth always belongs to the pixel-centre rays.
    """
    h, w, _ = rays_cam.shape
    dirs = rays_cam.reshape(-1, 3) @ r_enu_cam.T
    origins = np.broadcast_to(p_enu_cam, dirs.shape)
    hits = world.cast(origins, dirs)
    if supersample_rays:
        acc = np.zeros(h * w)
        for rc in supersample_rays:
            dd = rc.reshape(-1, 3) @ r_enu_cam.T
            acc += world.radiance(world.cast(origins, dd), dd, fx)
        rad = acc / len(supersample_rays)
    else:
        rad = world.radiance(hits, dirs, fx)
    if noise_dn > 0:
        rad = rad + rng.normal(0.0, noise_dn, rad.shape)
    img = np.clip(np.rint(rad), 0, 255).astype(np.uint8).reshape(h, w)
    depth = (hits.t * rays_cam.reshape(-1, 3)[:, 2]).astype(np.float32).reshape(h, w)
    return CameraView(img, depth, hits.surface.reshape(h, w),
                      world.in_patch(np.nan_to_num(hits.point), hits.surface).reshape(h, w)
                      & (hits.surface.reshape(h, w) != SURFACE_SKY),
                      hits.point.reshape(h, w, 3))


def occlusion_mask(world: WorldRenderer, points: np.ndarray, p_enu_other: np.ndarray,
                   eps_m: float = 2e-3) -> np.ndarray:
    """Whether each ENU point (H, W, 3) (NaN = sky) is hidden from a camera centre (bool)."""
    shape = points.shape[:-1]
    pts = points.reshape(-1, 3)
    ok = np.all(np.isfinite(pts), axis=1)
    out = np.zeros(pts.shape[0], dtype=bool)
    if np.any(ok):
        d = pts[ok] - p_enu_other
        hits = world.cast(np.broadcast_to(p_enu_other, d.shape), d)
        dist = np.linalg.norm(d, axis=1)
        out[ok] = hits.t * dist < dist - eps_m
    return out.reshape(shape)
