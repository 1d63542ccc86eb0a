"""Analytic, textured stereo test scene with exact ground truth (numpy; cv2.remap for texture).

:func:`render_scene` ray-traces an ideal rectified stereo pair looking at a flat
ground plane (extending to infinity), a handful of axis-aligned boxes standing
on it and the sky, and returns both images together with the exact per-pixel
truth (depth, disparity, surface id, texture-free mask, occlusion mask). The
module is deliberately independent of any stereo code so that it can check the
stereo pipeline, the demo and the benchmarks against geometry alone.

Frames and conventions
----------------------
* Camera optical frame (REP-103): x right, y down, z forward, metres. The left
  camera centre is the origin; the right camera centre is at ``(+B, 0, 0)`` with
  the same orientation (ideal rectified pair). Both share the intrinsics ``K``
  (``fx = fy``, ``cx = (W-1)/2``, ``cy = (H-1)/2`` by default). Pixel ``(u, v)``
  has its centre at integer coordinates; its viewing ray in the camera frame is
  ``((u-cx)/fx, (v-cy)/fy, 1)``, so the ray parameter along it *is* the depth Z.
* Ground-aligned frame ``G`` (internal, also used for the box layout): origin at
  the left camera centre, X = camera x (right), Y down (along gravity), Z
  forward and horizontal. The camera is pitched *down* by ``pitch_deg``:
  ``p_G = R p_cam`` with ``R = [[1,0,0],[0,cos p,sin p],[0,-sin p,cos p]]``.
  The ground plane is ``Y = camera_height_m``; in the camera frame it is
  ``cos(p)*y + sin(p)*z = camera_height_m``. The horizon is the image row
  ``v = cy - fy*tan(p)`` (above the centre for a positive pitch).
* Disparity ``d = fx*B/Z`` (pixels); the right-image position of the left pixel
  ``(u, v)`` is ``(u - d, v)``.

Everything is a deterministic function of the arguments: the same arguments
give byte-identical outputs.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np

_LOG = logging.getLogger(__name__)

#: Surface ids in :attr:`StereoScene.surface`; boxes are numbered from ``_FIRST_BOX``.
SURFACE_SKY = 0
SURFACE_GROUND = 1
_FIRST_BOX = 2

# Box face codes (face through which a ray enters the box, in frame G).
_FACE_NONE = -1  # ground or sky
_FACE_XLO, _FACE_XHI, _FACE_YLO, _FACE_YHI, _FACE_ZLO, _FACE_ZHI = range(6)
# _FACE_YLO is the top face (Y points down), _FACE_ZLO the front face (toward the camera).

#: Cell sizes (metres) of the value-noise octaves: 2 cm .. 1.8 m, so that near
#: and far surfaces both carry texture at the pixel scale.
_CELLS_M = (0.02, 0.05, 0.12, 0.3, 0.75, 1.8)
_TABLE_N = 1024  # value-noise lattice period (cells), per octave
_TEXTURE_DN = 42.0  # contrast of the texture (DN per unit normalised noise)
_TEXTURELESS_DN = 140.0  # grey level of the texture-free patch
_OCC_MARGIN_M = 1e-4  # an occluder must be this much closer than the point (metres)
_CHUNK_SAMPLES = 1 << 16  # rays per tracing chunk (keeps temporaries cache-sized)
#: std of one bilinearly interpolated octave of U(-1, 1) lattice values: sqrt(1/3 * (2/3)^2).
_OCTAVE_STD = math.sqrt(4.0 / 27.0)


@dataclasses.dataclass
class StereoScene:
    """A rendered rectified stereo pair with exact ground truth.

    All images are ``(H, W)`` and indexed ``[v, u]``; truth arrays describe the
    ray through each LEFT pixel centre.

    Attributes:
        left: (H, W) uint8, rectified left image (DN).
        right: (H, W) uint8, rectified right image (DN).
        K: (3, 3) float64 intrinsics of both rectified cameras (pixels).
        P_left: (3, 4) float64 projection matrix ``[K | 0]``.
        P_right: (3, 4) float64 projection matrix ``[K | (-fx*B, 0, 0)^T]``
            (ROS CameraInfo convention, ``Tx = -fx*B``).
        baseline_m: stereo baseline B in metres (right camera at ``(+B, 0, 0)``
            in the left camera optical frame).
        depth: (H, W) float32, true Z in metres along the LEFT camera optical
            axis; ``+inf`` where the ray hits nothing (sky).
        disparity: (H, W) float32, true disparity ``fx*B/Z`` in pixels; 0 for sky.
        surface: (H, W) uint8 surface id: 0 = sky, 1 = ground plane, 2.. = boxes
            (one id per box).
        textureless: (H, W) bool, the pixel lies on the deliberately uniform
            (texture-free) patch.
        occluded: (H, W) bool, the left pixel's 3D point is not visible from the
            right camera: hidden by another surface, or its projection
            ``u - d`` lies outside the right image ``[-0.5, W - 0.5)``.
        camera_height_m: height of both camera centres above the ground plane (m).
        pitch_deg: downward pitch of the cameras (degrees; positive = looking down).
    """

    left: np.ndarray
    right: np.ndarray
    K: np.ndarray
    P_left: np.ndarray
    P_right: np.ndarray
    baseline_m: float
    depth: np.ndarray
    disparity: np.ndarray
    surface: np.ndarray
    textureless: np.ndarray
    occluded: np.ndarray
    camera_height_m: float
    pitch_deg: float


@dataclasses.dataclass(frozen=True)
class _World:
    """Scene content in frame G (internal).

    boxes: (N, 6) float64 rows ``(x_lo, x_hi, y_lo, y_hi, z_lo, z_hi)`` (metres, frame G);
        box ``i`` has surface id ``_FIRST_BOX + i``. Box 0 is the large front box.
    patch: ``(x_lo, x_hi, y_lo, y_hi)`` of the texture-free rectangle on the front
        face (``z = z_lo``) of box 0, or None.
    key_base / key_amp / key_off: per texture key (``surface*8 + face + 1``) base grey
        (DN), texture amplitude (DN per unit noise) and (K, 2) coordinate offsets (m).
    table: (TABLE_N, TABLE_N) float32 value-noise lattice, U(-1, 1), periodic.
    octave_off: (n_octaves, 2) float64 lattice offsets (cells) per octave.
    """

    height: float
    boxes: np.ndarray
    patch: tuple[float, float, float, float] | None
    key_base: np.ndarray
    key_amp: np.ndarray
    key_off: np.ndarray
    table: np.ndarray
    octave_off: np.ndarray


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(  # noqa: TRY004 - API: bad arguments raise ValueError
            f'{name} must be an integer, got {value!r}')
    if not lo <= int(value) <= hi:
        raise ValueError(f'{name} must be in [{lo}, {hi}], got {value!r}')
    return int(value)


def _check_float(name: str, value: object, lo: float, hi: float, *,
                 lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(  # noqa: TRY004 - API: bad arguments raise ValueError
            f'{name} must be a number, got {value!r}')
    v = float(value)
    bad = (not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo)
           or (hi_open and v == hi))
    if bad:
        raise ValueError(f'{name} must be in {"(" if lo_open else "["}{lo}, {hi}'
                         f'{")" if hi_open else "]"}, got {value!r}')
    return v


# --------------------------------------------------------------------------- layout

def _build_world(seed: int, height: float) -> _World:
    """Place the boxes and draw the texture tables from ``seed`` (frame G, metres)."""
    rng = np.random.default_rng([seed, 0x5CE7E])
    ground_y = height
    boxes: list[tuple[float, float, float, float, float, float]] = []

    # Box 0: large, roughly fronto-parallel front face 4.5-6.5 m ahead.
    z0 = rng.uniform(4.5, 6.5)
    w0 = rng.uniform(2.0, 2.6)
    h0 = rng.uniform(1.6, 2.2)
    dep0 = rng.uniform(0.8, 1.4)
    side = 1.0 if rng.uniform() < 0.5 else -1.0  # side of box 0 that the occluder covers
    xc0 = -side * rng.uniform(0.2, 0.7)
    boxes.append((xc0 - w0 / 2, xc0 + w0 / 2, ground_y - h0, ground_y, z0, z0 + dep0))

    # Texture-free patch on the front face of box 0, on the side away from the occluder.
    px0 = xc0 - side * 0.05 * w0
    px1 = xc0 - side * 0.45 * w0
    patch = (min(px0, px1), max(px0, px1), ground_y - 0.72 * h0, ground_y - 0.36 * h0)

    # Box 1: small occluder in front of box 0, straddling box 0's edge on `side` in the image.
    zo = rng.uniform(3.0, 3.5)
    dep_o = rng.uniform(0.4, 0.6)
    wo = rng.uniform(0.6, 0.9)
    ho = rng.uniform(0.7, 1.1)
    edge = xc0 + side * w0 / 2
    xco = edge * zo / z0
    boxes.append((xco - wo / 2, xco + wo / 2, ground_y - ho, ground_y, zo, zo + dep_o))

    # Boxes 2..: 3-5 boxes 8-25 m away, non-overlapping, limited horizontal coverage so
    # that the far ground near the horizon stays visible.
    n_far = int(rng.integers(3, 6))
    coverage = 0.0
    for _ in range(200):
        if len(boxes) >= 2 + n_far:
            break
        zf = rng.uniform(8.0, 25.0)
        wf = rng.uniform(0.8, 2.5)
        hf = rng.uniform(0.6, 3.5)
        df = rng.uniform(0.6, 2.5)
        xcf = rng.uniform(-0.45, 0.45) * zf
        cand = (xcf - wf / 2, xcf + wf / 2, ground_y - hf, ground_y, zf, zf + df)
        ang = wf / zf
        if coverage + ang > 0.35:
            continue
        gap = 0.3
        if any(cand[0] < b[1] + gap and b[0] < cand[1] + gap
               and cand[4] < b[5] + gap and b[4] < cand[5] + gap for b in boxes):
            continue
        boxes.append(cand)
        coverage += ang

    n_keys = (_FIRST_BOX + len(boxes)) * 8
    key_base = np.zeros(n_keys, np.float32)
    key_amp = np.zeros(n_keys, np.float32)
    key_off = rng.uniform(0.0, 1000.0, (n_keys, 2))
    key_base[SURFACE_GROUND * 8 + _FACE_NONE + 1] = 105.0
    key_amp[SURFACE_GROUND * 8 + _FACE_NONE + 1] = _TEXTURE_DN
    face_gain = {_FACE_XLO: 0.85, _FACE_XHI: 0.85, _FACE_YLO: 1.12, _FACE_YHI: 0.7,
                 _FACE_ZLO: 1.0, _FACE_ZHI: 0.9}
    for i in range(len(boxes)):
        base = rng.uniform(85.0, 150.0)
        for face, gain in face_gain.items():
            k = (_FIRST_BOX + i) * 8 + face + 1
            key_base[k] = base * gain
            key_amp[k] = _TEXTURE_DN * gain

    table = rng.uniform(-1.0, 1.0, (_TABLE_N, _TABLE_N)).astype(np.float32)
    octave_off = rng.uniform(0.0, _TABLE_N, (len(_CELLS_M), 2))
    return _World(height=height, boxes=np.asarray(boxes, np.float64), patch=patch,
                  key_base=key_base, key_amp=key_amp, key_off=key_off, table=table,
                  octave_off=octave_off)


# --------------------------------------------------------------------------- tracing

def _slab(lo: float, hi: float, o: float | np.ndarray, d: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Entry/exit ray parameters of ``o + t*d`` through the slab ``lo <= x <= hi``.

    ``d == 0`` gives ``(-inf, inf)`` inside the slab and ``(inf, -inf)`` outside.
    """
    with np.errstate(divide='ignore', invalid='ignore'):
        inv = 1.0 / d
        ta = (lo - o) * inv
        tb = (hi - o) * inv
    tn = np.minimum(ta, tb)
    tf = np.maximum(ta, tb)
    zero = d == 0
    if np.any(zero):
        inside = (lo < o) & (o < hi)
        tn = np.where(zero, np.where(inside, -np.inf, np.inf), tn)
        tf = np.where(zero, np.where(inside, np.inf, -np.inf), tf)
    return tn, tf


def _directions(xs: np.ndarray, ys: np.ndarray, pitch_rad: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame-G components of the rays ``(xs[col], ys[row], 1)``: dX per column, dY, dZ per row."""
    c, s = math.cos(pitch_rad), math.sin(pitch_rad)
    return xs, c * ys + s, -s * ys + c


def _trace(world: _World, ox: float, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of the rays from ``(ox, 0, 0)`` (frame G) along ``(dx[c], dy[r], dz[r])``.

    Returns ``(t, sid, face)``, each (len(dy), len(dx)): the ray parameter of the
    nearest hit (= camera-frame depth Z, since the rays have unit camera z;
    ``+inf`` for sky), the surface id (uint8) and the entry face code (int8,
    ``_FACE_NONE`` for ground/sky).
    """
    nr, nc = dy.size, dx.size
    with np.errstate(divide='ignore'):
        tg = np.where(dy > 0, world.height / dy, np.inf)
    t = np.broadcast_to(tg[:, None], (nr, nc)).copy()
    sid = np.broadcast_to(np.where(np.isfinite(tg), SURFACE_GROUND, SURFACE_SKY)
                          .astype(np.uint8)[:, None], (nr, nc)).copy()
    face = np.full((nr, nc), _FACE_NONE, np.int8)
    for i, (x0, x1, y0, y1, z0, z1) in enumerate(world.boxes):
        txn, txf = _slab(x0, x1, ox, dx)
        tyn, tyf = _slab(y0, y1, 0.0, dy)
        tzn, tzf = _slab(z0, z1, 0.0, dz)
        trn = np.maximum(tyn, tzn)
        trf = np.minimum(tyf, tzf)
        cols = np.flatnonzero((txn <= txf) & (txf > 0))
        rows = np.flatnonzero((trn <= trf) & (trf > 0))
        if cols.size == 0 or rows.size == 0:
            continue
        c0, c1 = cols[0], cols[-1] + 1
        r0, r1 = rows[0], rows[-1] + 1
        a_n, a_f = txn[None, c0:c1], txf[None, c0:c1]
        b_n, b_f = trn[r0:r1, None], trf[r0:r1, None]
        tn = np.maximum(a_n, b_n)
        tf = np.minimum(a_f, b_f)
        t_sub = t[r0:r1, c0:c1]
        hit = (tn <= tf) & (tn > 0) & (tn < t_sub)
        if not hit.any():
            continue
        xface = np.where(dx[c0:c1] > 0, _FACE_XLO, _FACE_XHI).astype(np.int8)
        rface = np.where(tyn[r0:r1] >= tzn[r0:r1],
                         np.where(dy[r0:r1] > 0, _FACE_YLO, _FACE_YHI),
                         np.where(dz[r0:r1] > 0, _FACE_ZLO, _FACE_ZHI)).astype(np.int8)
        f_sub = np.where(a_n >= b_n, xface[None, :], rface[:, None])
        t_sub[hit] = tn[hit]
        sid[r0:r1, c0:c1][hit] = _FIRST_BOX + i
        face[r0:r1, c0:c1][hit] = f_sub[hit]
    return t, sid, face


def _face_coords(face: np.ndarray, X: np.ndarray, Y: np.ndarray, Z: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Surface-local 2-D coordinates (metres) of hit points (frame G) on the given faces.

    Ground and top/bottom faces: (X, Z); faces normal to X: (Z, Y); normal to Z: (X, Y).
    """
    xn = (face == _FACE_XLO) | (face == _FACE_XHI)
    yn = (face == _FACE_NONE) | (face == _FACE_YLO) | (face == _FACE_YHI)
    a = np.where(xn, Z, X)
    b = np.where(yn, Z, Y)
    return a, b


def _value_noise(world: _World, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Multi-scale value noise at surface coordinates ``(a, b)`` (metres), ~unit std.

    Args:
        a, b: 1-D float64 surface coordinates (metres), same length N.

    Returns:
        (N,) float32: the sum over the octaves of ``_CELLS_M`` of the bilinearly
        interpolated random lattice (period ``_TABLE_N`` cells), normalised to ~unit std.
    """
    import cv2  # local: keep the module import light

    n = a.size
    cols = 1024  # cv2.remap needs both map dimensions < 32767
    n_pad = -(-n // cols) * cols
    acc = np.zeros(n_pad, np.float32)
    mx = np.zeros(n_pad, np.float32)
    my = np.zeros(n_pad, np.float32)
    period = float(_TABLE_N)
    for cell, (oa, ob) in zip(_CELLS_M, world.octave_off, strict=True):
        x = a * (1.0 / cell) + oa
        y = b * (1.0 / cell) + ob
        mx[:n] = x - period * np.floor(x * (1.0 / period))
        my[:n] = y - period * np.floor(y * (1.0 / period))
        acc += cv2.remap(world.table, mx.reshape(-1, cols), my.reshape(-1, cols),
                         cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP).ravel()
    # Octaves are independent; normalise their sum to unit std.
    acc *= np.float32(1.0 / (_OCTAVE_STD * math.sqrt(len(_CELLS_M))))
    return acc[:n]


def _in_patch(world: _World, sid: np.ndarray, face: np.ndarray, X: np.ndarray,
              Y: np.ndarray) -> np.ndarray:
    """Whether hit points lie on the texture-free patch (front face of box 0)."""
    if world.patch is None:
        return np.zeros(sid.shape, bool)
    x0, x1, y0, y1 = world.patch
    return ((sid == _FIRST_BOX) & (face == _FACE_ZLO) & (X >= x0) & (X <= x1)
            & (Y >= y0) & (Y <= y1))


def _sky(dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """Smooth sky brightness (DN) from the elevation of each ray, (len(dy), len(dx)) float32."""
    norm = np.sqrt(dx[None, :] ** 2 + (dy * dy + dz * dz)[:, None])
    sin_elev = np.clip(-dy[:, None] / norm, 0.0, 1.0)
    return (228.0 - 110.0 * sin_elev).astype(np.float32)


def _shade(world: _World, ox: float, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray,
           textureless_patch: bool) -> np.ndarray:
    """Radiance (DN, float32) of every ray ``(dx[c], dy[r], dz[r])`` from ``(ox, 0, 0)``."""
    t, sid, face = _trace(world, ox, dx, dy, dz)
    out = _sky(dx, dy, dz)
    hit = sid != SURFACE_SKY
    if not hit.any():
        return out
    rr, cc = np.nonzero(hit)
    th = t[hit]
    X = ox + th * dx[cc]
    Y = th * dy[rr]
    Z = th * dz[rr]
    fh = face[hit]
    sh = sid[hit]
    a, b = _face_coords(fh, X, Y, Z)
    key = sh.astype(np.intp) * 8 + fh + 1
    a = a + world.key_off[key, 0]
    b = b + world.key_off[key, 1]
    val = world.key_base[key] + world.key_amp[key] * _value_noise(world, a, b)
    if textureless_patch:
        flat = _in_patch(world, sh, fh, X, Y)
        val[flat] = _TEXTURELESS_DN
    out[hit] = val
    return out


def _render_image(world: _World, ox: float, width: int, height: int, fx: float, fy: float,
                  cx: float, cy: float, pitch_rad: float, supersample: int,
                  textureless_patch: bool) -> np.ndarray:
    """Anti-aliased radiance image (H, W) float64 of the camera at ``(ox, 0, 0)`` (frame G)."""
    ss = supersample
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    us = (np.arange(width)[:, None] + sub[None, :]).ravel()
    xs = (us - cx) / fx
    img = np.empty((height, width), np.float64)
    chunk = max(1, _CHUNK_SAMPLES // (width * ss * ss))
    for r0 in range(0, height, chunk):
        r1 = min(r0 + chunk, height)
        vs = (np.arange(r0, r1)[:, None] + sub[None, :]).ravel()
        ys = (vs - cy) / fy
        dx, dy, dz = _directions(xs, ys, pitch_rad)
        rad = _shade(world, ox, dx, dy, dz, textureless_patch)
        img[r0:r1] = rad.reshape(r1 - r0, ss, width, ss).mean(axis=(1, 3), dtype=np.float64)
    return img


def _occluded(world: _World, baseline: float, X: np.ndarray, Y: np.ndarray,
              Z: np.ndarray) -> np.ndarray:
    """Whether the segment from the right camera ``(B, 0, 0)`` to each point (frame G) is blocked.

    Exact slab test against every box; a hit counts when it is at least
    ``_OCC_MARGIN_M`` closer than the point. The ground never blocks: both
    camera and points are on or above it, so the segment meets it at most at
    its end.
    """
    dX = X - baseline
    length = np.sqrt(dX * dX + Y * Y + Z * Z)
    s_max = 1.0 - _OCC_MARGIN_M / length
    occ = np.zeros(X.shape, bool)
    for (x0, x1, y0, y1, z0, z1) in world.boxes:
        txn, txf = _slab(x0, x1, baseline, dX)
        tyn, tyf = _slab(y0, y1, 0.0, Y)
        tzn, tzf = _slab(z0, z1, 0.0, Z)
        tn = np.maximum(np.maximum(txn, tyn), tzn)
        tf = np.minimum(np.minimum(txf, tyf), tzf)
        occ |= (tn <= tf) & (tn > 0) & (tn < s_max)
    return occ


# --------------------------------------------------------------------------- public API

def render_scene(width: int = 640, height: int = 480, *, fx: float | None = None,
                 baseline_m: float = 0.12, camera_height_m: float = 1.5, pitch_deg: float = 5.0,
                 seed: int = 0, noise_sigma: float = 1.0, supersample: int = 3,
                 textureless_patch: bool = True) -> StereoScene:
    """Render the analytic stereo scene and its exact ground truth.

    Args:
        width, height: image size in pixels (1..8192).
        fx: focal length in pixels (``fx = fy``); default ``0.9*width`` (~70 deg HFOV).
        baseline_m: stereo baseline B in metres (> 0); right camera at ``(+B, 0, 0)``.
        camera_height_m: height of the camera centres above the ground plane (m, > 0).
        pitch_deg: downward pitch of both cameras (degrees, |pitch| < 60).
        seed: non-negative integer; selects the box layout, the textures and the noise.
        noise_sigma: standard deviation (DN) of the Gaussian noise added to each image
            (independent for left and right), >= 0.
        supersample: rays per pixel along each axis (1..8); the image is the mean of
            ``supersample**2`` rays (box filter). Truth always uses the pixel centre.
        textureless_patch: paint a uniform grey rectangle on the front face of the large
            front box and flag it in :attr:`StereoScene.textureless`.

    Returns:
        A :class:`StereoScene`; see its docstring for shapes, units and frames.

    Raises:
        ValueError: on any out-of-range argument (the message names the value).
    """
    width = _check_int('width', width, 1, 8192)
    height = _check_int('height', height, 1, 8192)
    seed = _check_int('seed', seed, 0, 2**63 - 1)
    supersample = _check_int('supersample', supersample, 1, 8)
    fx_v = 0.9 * width if fx is None else _check_float('fx', fx, 0.0, 1e7, lo_open=True)
    baseline = _check_float('baseline_m', baseline_m, 0.0, 1e3, lo_open=True)
    cam_h = _check_float('camera_height_m', camera_height_m, 0.0, 1e3, lo_open=True)
    pitch = _check_float('pitch_deg', pitch_deg, -60.0, 60.0, lo_open=True, hi_open=True)
    sigma = _check_float('noise_sigma', noise_sigma, 0.0, 1e3)
    if not isinstance(textureless_patch, (bool, np.bool_)):
        raise ValueError(  # noqa: TRY004 - API: bad arguments raise ValueError
            f'textureless_patch must be a bool, got {textureless_patch!r}')

    t_start = time.perf_counter()
    fy_v = fx_v
    cx = (width - 1) / 2.0
    cy = (height - 1) / 2.0
    pitch_rad = math.radians(pitch)
    world = _build_world(seed, cam_h)

    # Images: anti-aliased radiance of both cameras, then independent noise.
    images = []
    for cam, ox in enumerate((0.0, baseline)):
        rad = _render_image(world, ox, width, height, fx_v, fy_v, cx, cy, pitch_rad,
                            supersample, bool(textureless_patch))
        if sigma > 0:
            rad = rad + np.random.default_rng([seed, 0x40153, cam]).normal(0.0, sigma, rad.shape)
        images.append(np.rint(np.clip(rad, 0.0, 255.0)).astype(np.uint8))

    # Truth: the ray through each left pixel centre, in row chunks.
    depth = np.empty((height, width), np.float32)
    disparity = np.zeros((height, width), np.float32)
    surface = np.empty((height, width), np.uint8)
    textureless = np.zeros((height, width), bool)
    occluded = np.zeros((height, width), bool)
    xs = (np.arange(width) - cx) / fx_v
    chunk = max(1, _CHUNK_SAMPLES // width)
    for r0 in range(0, height, chunk):
        r1 = min(r0 + chunk, height)
        ys = (np.arange(r0, r1) - cy) / fy_v
        dx, dy, dz = _directions(xs, ys, pitch_rad)
        t, sid, face = _trace(world, 0.0, dx, dy, dz)
        depth[r0:r1] = t
        surface[r0:r1] = sid
        finite = np.isfinite(t)
        rr, cc = np.nonzero(finite)
        th = t[finite]
        disp = fx_v * baseline / th
        disparity[r0:r1][finite] = disp
        X = th * dx[cc]
        Y = th * dy[rr]
        Z = th * dz[rr]
        if textureless_patch:
            textureless[r0:r1][finite] = _in_patch(world, sid[finite], face[finite], X, Y)
        u_right = cc - disp
        outside = (u_right < -0.5) | (u_right >= width - 0.5)
        occluded[r0:r1][finite] = outside | _occluded(world, baseline, X, Y, Z)

    K = np.array([[fx_v, 0.0, cx], [0.0, fy_v, cy], [0.0, 0.0, 1.0]])
    P_left = np.hstack([K, np.zeros((3, 1))])
    P_right = P_left.copy()
    P_right[0, 3] = -fx_v * baseline
    _LOG.debug('render_scene %dx%d ss=%d seed=%d: %d boxes, %.3f s', width, height,
               supersample, seed, len(world.boxes), time.perf_counter() - t_start)
    return StereoScene(left=images[0], right=images[1], K=K, P_left=P_left, P_right=P_right,
                       baseline_m=baseline, depth=depth, disparity=disparity, surface=surface,
                       textureless=textureless, occluded=occluded, camera_height_m=cam_h,
                       pitch_deg=pitch)
