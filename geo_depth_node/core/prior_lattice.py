"""The prior's ray-cast of a whole frame on the CPU: exact rays on a pixel lattice, the pixels
between them found next to the range their neighbours predict, exact rays wherever the
neighbours disagree.

The prior's range image is smooth except at silhouettes (terrain against the sky, a crest in
front of farther terrain) and the DEM is bilinear between nodes. So, with a lattice stride
``s`` (``dem.cast_stride``):

1. **Lattice.** The pixels of every ``s``-th row and column (and the last row and column) are
   cast exactly (:func:`~.raycast.raycast`: the march from the camera, started at the BVH's
   safe start, :mod:`.raycast_embree`).
2. **Smooth cells.** A lattice cell whose four corners are HIT with ranges within a factor
   ``1 +`` :data:`MAX_CORNER_RATIO` of each other is smooth. For a plane ``w = |d_rect| / r``
   is linear in the pixel coordinates (``r = c |d_rect| / (n . d_rect)``); a smooth cell is
   also *planar* when the second differences of ``w`` over the lattice are within
   :data:`PLANAR_TOL` of ``w`` at its four corners (a crest or a silhouette breaks that).
3. **Found between the neighbours.**

   a. An inner pixel of a planar cell predicts its range ``g`` by the bilinear interpolation of
      ``w`` (exact on a plane) and takes the crossing in ``[g - e, g + e]``
      (``e = GUESS_REL g + GUESS_PAD_M``) when the ray is above the terrain at its start and
      at or below it at its end; the crossing there is solved exactly (the bilinear terrain
      along a ray is a quadratic in each DEM cell, ``solve_bracket``).
   b. The other inner pixels of smooth cells (and those whose bracket held no crossing) run
      the ray-march itself (``march_ray``: the same skips, steps and refinement) over
      ``[(1 - rel) r_min - step, (1 + rel) r_max + step]`` of their cell's corner ranges
      (:data:`NEAR_REL`), starting on the march's own lattice, when the ray is above the
      terrain there.

   Either way the range is the crossing of the bilinear DEM, not an interpolated range.
4. **Exact where it matters.** Every other pixel — in a cell with a corner that is not a HIT
   (sky, nodata, below the terrain) or with a range jump (a silhouette or a crest), or whose
   search found no crossing — is cast exactly like the lattice.

The one assumption: an inner ray is clear of the terrain up to the start of its search, as
its four corner rays are up to theirs (they surround it, at most ``s r / f`` metres apart at
range ``r``). It fails only for terrain that rises between the four corner rays and none of
them: a bump narrower than the lattice spacing, while the DEM holds no feature narrower than
its cell (``s = 4``, ``f = 500`` px, 2 m cells: 2 m apart at 250 m).
test_prior_lattice.py compares every pixel with the full exact cast on synthetic worlds.

The hit geometry and the first-order sigma terms of every HIT (:func:`~.raycast.raycast`'s
``_hit_geometry``, the reference) are computed in one compiled pass
(:func:`hit_terms`). numba is needed (``available``); GeoPrior uses the full cast otherwise.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ._numba import numba_available

_LOG = logging.getLogger(__name__)

#: corners of a smooth lattice cell have ranges within this factor (+1) of each other
MAX_CORNER_RATIO = 0.3
#: an inner ray is marched from (1 - NEAR_REL) times the nearest corner range of its cell (less
#: a step) to (1 + NEAR_REL) times the farthest (plus a step)
NEAR_REL = 0.02
#: a cell is planar when the second differences of |d_rect| / r over the lattice are within
#: this fraction of it at its four corners
PLANAR_TOL = 0.01
#: the bracket around a predicted range: this fraction of it plus GUESS_PAD_M on each side
GUESS_REL = 0.01
GUESS_PAD_M = 0.25
_KERNELS: Any = None


def available() -> bool:
    """True when the compiled kernels can run (numba installed)."""
    return numba_available()


def _kernels() -> Any:
    global _KERNELS
    if _KERNELS is None:
        t = time.perf_counter()
        from . import _prior_numba_kernels as k

        _KERNELS = k
        _LOG.debug('prior lattice kernels imported in %.2f s', time.perf_counter() - t)
    return _KERNELS


def lattice_index(n: int, stride: int) -> np.ndarray:
    """Indices 0, stride, 2 stride, ... and n - 1 (sorted, unique) of a length-``n`` axis."""
    if n < 1 or stride < 1:
        raise ValueError(f'need n >= 1 and stride >= 1, got n={n}, stride={stride}')
    return np.unique(np.append(np.arange(0, n, stride), n - 1))


def _field_args(field: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(grid (x0, y0, cell) float64, heights and lim of :func:`.raycast_numba.kernel_arrays`,
    nx, ny) of a CPU HeightField."""
    from .raycast_numba import kernel_arrays

    ny, nx = field.shape
    h, lim = kernel_arrays(field)
    return np.array([field.x0_m, field.y0_m, field.cell_m]), h, lim, nx, ny


def cast_frame(field: Any, origin: np.ndarray, d_enu: np.ndarray, norm: np.ndarray, *,
               max_range_m: float, stride: int, march: str = 'numba'
               ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Status and range of every pixel ray of a frame (module docstring).

    Args:
        field: the CPU :class:`~.raycast.HeightField` (with its BVH when it has one).
        origin: (3,) camera centre, ENU metres.
        d_enu: (H, W, 3) float64 unit pixel rays in ENU.
        norm: (H, W) |d_rect| of each pixel (the rectified ray before normalisation).
        max_range_m: farthest prior, metres.
        stride: lattice stride in pixels (1 = every pixel exact).
        march: the march of the exact casts (:func:`~.raycast.raycast`).

    Returns:
        (status (H, W) int8 RayStatus values, range (H, W) float64 metres (NaN unless HIT),
        stats {'exact': rays cast exactly, 'near': rays found near their prediction,
        'exact_mask': (H, W) bool, the pixels cast exactly}).
    """

    from .raycast import RayStatus, raycast

    h, w = norm.shape
    if d_enu.shape != (h, w, 3):
        raise ValueError(f'd_enu must be (H, W, 3) = ({h}, {w}, 3), got {d_enu.shape}')
    o = np.asarray(origin, dtype=np.float64).reshape(3)
    d_enu = np.ascontiguousarray(d_enu, dtype=np.float64)
    status = np.full((h, w), int(RayStatus.UNAVAILABLE), dtype=np.int8)
    rng = np.full((h, w), np.nan)
    exact = np.zeros((h, w), dtype=bool)

    def cast_exact(mask: np.ndarray) -> None:
        if not mask.any():
            return
        res = raycast(field, o, d_enu[mask], max_range_m=max_range_m, ranges_only=True,
                      march=march, unit_directions=True)
        status[mask] = res.status.numpy()
        rng[mask] = res.range_m.double().numpy()
        exact[mask] = True

    if stride <= 1:
        cast_exact(np.ones((h, w), dtype=bool))
        return status, rng, {'exact': h * w, 'guessed': 0, 'near': 0, 'exact_mask': exact}
    ms: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        ms[name] = round((now - t) * 1e3, 3)
        t = now

    ly, lx = lattice_index(h, stride), lattice_index(w, stride)
    on = np.zeros((h, w), dtype=bool)
    on[np.ix_(ly, lx)] = True
    cast_exact(on)
    lap('ms_lattice')
    hit = status[np.ix_(ly, lx)] == int(RayStatus.HIT)
    r_l = rng[np.ix_(ly, lx)]
    with np.errstate(invalid='ignore'):
        corners = np.stack([r_l[:-1, :-1], r_l[:-1, 1:], r_l[1:, :-1], r_l[1:, 1:]])
        r_min, r_max = corners.min(axis=0), corners.max(axis=0)
        smooth = hit[:-1, :-1] & hit[:-1, 1:] & hit[1:, :-1] & hit[1:, 1:] & \
            (r_max <= (1.0 + MAX_CORNER_RATIO) * r_min)
    # the cell of every pixel: rows ly[a]..ly[a+1], columns lx[b]..lx[b+1]
    a = np.clip(np.searchsorted(ly, np.arange(h), side='right') - 1, 0, ly.size - 2)
    b = np.clip(np.searchsorted(lx, np.arange(w), side='right') - 1, 0, lx.size - 2)
    grid, hflat, lim, nx, _ = _field_args(field)
    done = np.zeros((h, w), dtype=bool)  # inner pixels found by steps 3a / 3b
    flat = (d_enu.reshape(-1, 3), status.reshape(-1), rng.reshape(-1), done.reshape(-1))
    # 3a. planar cells: the bracket around the predicted range
    w_l = np.where(hit, norm[np.ix_(ly, lx)] / np.where(hit, r_l, 1.0), np.nan)
    planar = smooth & _planar_cells(w_l)
    idx = np.flatnonzero(planar[a[:, None], b[None, :]] & ~on)
    n_guess = 0
    if idx.size:
        lap('ms_cells')
        _kernels().guess_impl(o, flat[0], idx, w_l, ly, lx, a, b, w,
                              np.ascontiguousarray(norm.reshape(-1), dtype=np.float64),
                              GUESS_REL, GUESS_PAD_M, float(max_range_m), grid, hflat, lim, nx,
                              *flat[1:])
        n_guess = int(done.sum())
        lap('ms_guessed')
    # 3b. the other smooth cells, and the planar ones whose bracket failed: the march
    # between the corner ranges
    idx = np.flatnonzero(smooth[a[:, None], b[None, :]] & ~on & ~done)
    n_near = 0
    if idx.size:
        from .raycast import BLOCK_CELLS, march_params
        from .raycast_numba import kernel_arrays

        step, n_bisect = march_params(field)
        _, _, bm, bs, _ = kernel_arrays(field, block=BLOCK_CELLS)
        _kernels().between_impl(o, flat[0], idx, r_min, r_max, ly, lx, a, b, w, NEAR_REL,
                                float(max_range_m), grid, hflat, lim, nx, bm, bs,
                                float(BLOCK_CELLS), float(BLOCK_CELLS * field.cell_m), step,
                                n_bisect, float(field.z_max), *flat[1:])
        n_near = int(done.sum()) - n_guess
        lap('ms_near')
    cast_exact(~on & ~done)  # 4.
    lap('ms_exact')
    return status, rng, {'exact': int(exact.sum()), 'guessed': n_guess, 'near': n_near,
                         'exact_mask': exact, **ms}


def _planar_cells(w_l: np.ndarray) -> np.ndarray:
    """(nly - 1, nlx - 1) bool: lattice cells whose four corners have second differences of
    ``w_l`` (|d_rect| / r at the lattice, NaN where not a HIT) within :data:`PLANAR_TOL` of
    it along both axes (an edge node takes its inner neighbour's test)."""
    flat = np.isfinite(w_l)
    with np.errstate(invalid='ignore'):
        for axis in (0, 1):
            wl, fl = np.moveaxis(w_l, axis, 0), np.moveaxis(flat, axis, 0)
            if wl.shape[0] < 3:
                continue
            d2 = np.abs(wl[:-2] - 2 * wl[1:-1] + wl[2:])
            fl[1:-1] &= d2 <= PLANAR_TOL * np.abs(wl[1:-1])
            fl[0] &= fl[1]
            fl[-1] &= fl[-2]
    return flat[:-1, :-1] & flat[:-1, 1:] & flat[1:, :-1] & flat[1:, 1:]


def hit_terms(field: Any, origin: np.ndarray, d: np.ndarray, rng: np.ndarray,
              pose_cov: Any) -> dict[str, np.ndarray]:
    """The first-order prior sigma terms of HIT rays (``raycast._hit_geometry`` is the
    reference; one compiled pass).

    Args:
        field: the CPU HeightField; origin (3,) ENU metres.
        d: (..., 3) float64 unit ENU rays (e.g. (H, W, 3) of a frame).
        rng: (...) float64 hit ranges, metres (NaN: not a hit: outputs NaN / 0 there).
        pose_cov: core.raycast.PoseCovariance or None (a perfectly known pose).

    Returns:
        Arrays of ``rng``'s shape: 'source' int32, 'sin_g' (sine of the grazing angle),
        'delta' (metres, sqrt(sigma_v^2 + P_zz): the vertical shift of the sigma points; NaN
        at zero grazing), and range variances in m^2: 'var_rest' (DEM horizontal and camera
        horizontal position), 'var_vert' (first-order vertical: DEM vertical and camera
        height), 'var_att' (attitude); inf at zero grazing.
    """
    grid, hflat, lim, nx, ny = _field_args(field)
    shape = np.shape(rng)
    src = np.ascontiguousarray(field.source.reshape(-1).numpy())
    sv = np.ascontiguousarray(field.sigma_v.reshape(-1).numpy())
    sh = np.ascontiguousarray(field.sigma_h.reshape(-1).numpy())
    pc = np.zeros((3, 3)) if pose_cov is None else np.ascontiguousarray(pose_cov.position)
    ac = np.zeros((3, 3)) if pose_cov is None else np.ascontiguousarray(pose_cov.attitude)
    out = {'source': np.empty(shape, dtype=np.int32)}
    for name in ('sin_g', 'delta', 'var_rest', 'var_vert', 'var_att'):
        out[name] = np.empty(shape)
    _kernels().hit_geometry_impl(
        np.asarray(origin, dtype=np.float64).reshape(3),
        np.ascontiguousarray(d, dtype=np.float64).reshape(-1, 3),
        np.ascontiguousarray(rng, dtype=np.float64).reshape(-1), grid, hflat, lim, nx, ny, src,
        sv, sh, pc, ac, *(out[k].reshape(-1) for k in ('source', 'sin_g', 'delta', 'var_rest',
                                                         'var_vert', 'var_att')))
    return out


def interpolate_lattice(values: np.ndarray, stride: int) -> np.ndarray:
    """Bilinear interpolation in pixel coordinates of the values at the lattice pixels
    (:func:`lattice_index` rows and columns) of an (H, W) image to every pixel; NaN where a
    corner of the pixel's lattice cell is not finite (lattice pixels keep their own value).
    Only the lattice pixels of ``values`` are read."""
    h, w = values.shape
    ly, lx = lattice_index(h, stride), lattice_index(w, stride)
    if ly.size < 2 or lx.size < 2:
        raise ValueError(f'an image of {w}x{h} has no lattice cells at stride {stride}')
    out = np.empty((h, w))
    _kernels().interp_lattice_impl(np.ascontiguousarray(values[np.ix_(ly, lx)],
                                                        dtype=np.float64), ly, lx, out)
    return out


def warm_up() -> float:
    """Compile (or load from numba's disk cache) the kernels of a CPU prior cast on a tiny
    tilted-plane field: the lattice cast with all its steps, the hit terms and a cast with
    per-ray origins and start ranges (the sigma points). Returns seconds taken."""
    import torch

    from .raycast import HeightField, PoseCovariance, raycast

    t = time.perf_counter()
    yy, xx = np.mgrid[0:24, 0:24].astype(np.float64)
    field = HeightField(torch.tensor(0.05 * xx + 0.02 * yy + 0.3 * np.sin(xx * yy / 7.0),
                                     dtype=torch.float32), -23.0, -23.0, 2.0)
    field.build_bvh()
    u, v = np.meshgrid(np.linspace(-0.6, 0.6, 13), np.linspace(-0.2, 0.5, 9))
    d = np.stack([u, np.ones_like(u), -v], -1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.array([0.0, -15.0, 3.0])
    st, r, _ = cast_frame(field, o, d, np.sqrt(1 + u ** 2 + v ** 2), max_range_m=30.0,
                          stride=4)
    hit = st == 1
    hit_terms(field, o, d[hit], r[hit], PoseCovariance.zero())
    raycast(field, np.repeat(o[None], int(hit.sum()), 0), d[hit], max_range_m=30.0,
            ranges_only=True, march='numba', min_range_m=r[hit])
    return time.perf_counter() - t
