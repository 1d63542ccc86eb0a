"""The DEM input fails contained: a broken, vanished or holed DEM costs priors, never the frame.

* A DEM file that vanishes or is garbled after start-up: frames keep their stereo points, NONE
  points get PRIOR_UNAVAILABLE, ``FrameResult.prior_problem`` names the source and the file;
  the height grid is rebuilt (throttled) once the file is back, and the priors return.
* A nodata hole (tagged nodata, or untagged 1e30 / -32768 fill values) under the camera: rays
  are followed over the hole, so every ray that reaches valid terrain beyond it keeps its
  prior; the torch loop, the numba march and the Triton kernel agree ray by ray.
* A garbage, empty or directory DEM path at start-up: ValueError naming source and path; the
  replay tool exits with code 2.
* /diagnostics warns when the camera is implausibly far above the DEM.

Scene: a flat DEM at the datum's ellipsoidal height (EPSG:32632 GeoTIFF written here), the
robot still, the camera CAM_H above it looking YAW east of north, pitched PITCH down; the
upper image rows are textured (a stereo "wall": MEASURED), the rest is flat grey (NO_MATCH:
DEM priors only). Truth: a prior point lies on the ellipsoid height of the DEM (geodesy).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from geo_depth_node.core.camera import CameraModel
from geo_depth_node.core.contract import Flag, Provenance
from geo_depth_node.core.geodesy import EnuFrame
from geo_depth_node.core.geoprior import (CAMERA_FAR_ABOVE_DEM_M, DEM_GRID_RETRY_S,
                                          NO_DEM_UNDER_CAMERA, clearance_warning)
from geo_depth_node.core.pipeline import DepthPipeline
from geo_depth_node.core.pose import OdometrySample, rpy_to_matrix
from geo_depth_node.core.raycast import HeightField, RayStatus, raycast
from geo_depth_node.core.raycast_numba import numba_available
from geo_depth_node.synth.motion import matrix_to_quat_xyzw

LAT0, LON0, H0 = 49.0, 8.45, 160.0
W, H, F, B = 160, 120, 300.0, 0.12  # image px, focal px, baseline m
CAM_H = 1.5  # camera (= base_link) above the DEM, m
PITCH, YAW = math.radians(7.6), math.radians(20.0)  # nose down; ENU yaw (x east = 0)
HOLE_M = 12.5  # half side of the nodata square under the camera, m
T0 = 1_700_000_000 * 1_000_000_000
JUMP_S = 22.0  # odometry: the robot stands at the origin until 10 s, drives east at
JUMP_X_M = 120.0  # 10 m/s and stands JUMP_X_M east from JUMP_S on (beyond the re-tile margin)


def _write_dem(path: Path, *, hole: str | None = None) -> str:
    """Flat DEM (ellipsoidal height H0) in UTM 32N, 2 m pixels, +-400 m around the datum.
    ``hole``: a 2 HOLE_M square under the camera of 'tagged' (-9999, tagged nodata), '1e30'
    or '-32768' (untagged fill values)."""
    import rasterio
    from pyproj import Transformer
    from rasterio.transform import from_origin

    e0, n0 = Transformer.from_crs('EPSG:4326', 'EPSG:32632', always_xy=True).transform(LON0, LAT0)
    px, half = 2.0, 400.0
    n = int(2 * half / px)
    west, north = e0 - half, n0 + half
    h = np.full((n, n), H0, dtype=np.float32)
    nodata = None
    if hole is not None:
        ee = west + px * (np.arange(n) + 0.5)
        nn = north - px * (np.arange(n) + 0.5)
        inside = (np.abs(nn - n0)[:, None] < HOLE_M) & (np.abs(ee - e0)[None, :] < HOLE_M)
        value = {'tagged': -9999.0, '1e30': 1e30, '-32768': -32768.0}[hole]
        h[inside] = value
        nodata = -9999.0 if hole == 'tagged' else None
    with rasterio.open(path, 'w', driver='GTiff', height=n, width=n, count=1, dtype='float32',
                       crs='EPSG:32632', transform=from_origin(west, north, px, px),
                       nodata=nodata) as ds:
        ds.write(h, 1)
    return str(path)


def _params(dem_path: str) -> dict:
    return {'stereo.num_disparities': 32, 'dem.sources': 'flat',
            'dem.source.flat.id': 7, 'dem.source.flat.path': dem_path,
            'dem.source.flat.kind': 'dem', 'dem.source.flat.vertical_datum': 'ellipsoid',
            'dem.source.flat.sigma_v_m': 0.3, 'dem.source.flat.sigma_h_m': 0.3,
            'dem.grid_cell_m': 2.0, 'dem.grid_half_extent_m': 150.0,
            'dem.grid_retile_margin_m': 50.0, 'dem.max_range_m': 100.0, 'dem.device': 'cpu',
            'pose.source': 'odometry', 'georef.datum_mode': 'fixed',
            'georef.datum_latitude_deg': LAT0, 'georef.datum_longitude_deg': LON0,
            'georef.datum_height_m': H0}


def _cameras() -> tuple[CameraModel, CameraModel]:
    k = [F, 0.0, W / 2, 0.0, F, H / 2, 0.0, 0.0, 1.0]
    r = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    pl = [F, 0.0, W / 2, 0.0, 0.0, F, H / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    pr = list(pl)
    pr[3] = -F * B
    return (CameraModel.from_arrays(W, H, k, [0.0] * 5, r, pl, 'plumb_bob', 'left'),
            CameraModel.from_arrays(W, H, k, [0.0] * 5, r, pr, 'plumb_bob', 'left'))


def _images(disparity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Rows 0..21 random texture shifted by ``disparity`` px (MEASURED), the rest flat grey."""
    rng = np.random.default_rng(5)
    left = np.full((H, W), 110, dtype=np.uint8)
    left[:22] = rng.integers(0, 256, (22, W), dtype=np.uint8)
    right = np.roll(left, -disparity, axis=1)
    return left, right


def _pipeline(dem_path: str) -> DepthPipeline:
    pipe = DepthPipeline(_params(dem_path))
    pipe.test_next_k = -20  # next odometry sample (see _frame)
    return pipe


def _frame(pipe: DepthPipeline, t_s: float):
    """Process the frame at T0 + t_s, first feeding the odometry (20 Hz) of the robot up to
    t_s + 0.5 s: still at the origin until 10 s, then moving east at 10 m/s until it stands
    JUMP_X_M east (from JUMP_S on)."""
    q = tuple(float(v) for v in matrix_to_quat_xyzw(rpy_to_matrix(0.0, PITCH, YAW)))
    cov = np.diag([0.02 ** 2] * 3 + [0.001 ** 2] * 3)
    while 0.05 * pipe.test_next_k <= t_s + 0.5:
        t = 0.05 * pipe.test_next_k
        x = min(max(t - 10.0, 0.0) * 10.0, JUMP_X_M)
        pipe.add_odometry(OdometrySample(T0 + int(round(t * 1e9)), np.array([x, 0.0, CAM_H]),
                                         q, cov, 'map', 'base_link'))
        pipe.test_next_k += 1
    left, right = _images()
    lm, rm = _cameras()
    return pipe.process(left, right, lm, rm, stamp_ns=T0 + int(round(t_s * 1e9)))


def _classes(res) -> dict[str, int]:
    return {p.name: int((res.provenance == p).sum()) for p in Provenance}


def _assert_stereo_only(res) -> None:
    """Stereo points kept, no prior, every NONE point PRIOR_UNAVAILABLE."""
    c = _classes(res)
    assert c['MEASURED'] > 1500 and c['FUSED'] == c['PRIOR'] == 0, c
    none = res.provenance == Provenance.NONE
    assert np.all(res.flags[none] & Flag.PRIOR_UNAVAILABLE)
    assert np.all(np.isnan(res.points[none]))


def _prior_heights(res) -> np.ndarray:
    """Ellipsoidal heights (m) of the PRIOR points (independent geodesy)."""
    sel = res.provenance == Provenance.PRIOR
    p_cam = res.points[sel].astype(np.float64)
    p_enu = p_cam @ res.T_enu_cam[:3, :3].T + res.T_enu_cam[:3, 3]
    _, _, h = EnuFrame(LAT0, LON0, H0).enu_to_geodetic(p_enu)
    return np.asarray(h)


# ----------------------------------------------------------------- vanishing / broken file
def test_dem_file_failing_after_start_up_costs_priors_not_frames(tmp_path, caplog):
    """The DEM file is deleted after start-up, restored, deleted again and garbled while the
    robot drives out of the grid's centre: every frame is returned with its stereo points;
    without a grid NONE points get PRIOR_UNAVAILABLE and prior_problem names source and file;
    the build is retried only every DEM_GRID_RETRY_S; a built grid keeps serving while the
    file is gone; once the file is back the priors return, on the DEM surface (< 1 cm).
    Before, every one of these frames raised RasterioIOError."""
    dem = _write_dem(tmp_path / 'flat.tif')
    saved = (tmp_path / 'flat.tif').read_bytes()
    pipe = _pipeline(dem)  # opens the source (metadata) at start-up
    os.remove(dem)  # gone before the first grid build
    now = [0.0]
    t = 0.0

    def frame():
        nonlocal t
        t += 0.5
        return _frame(pipe, t)

    res = frame()  # the first build fails: stereo only, the reason named
    assert res.pose_status == 'ok', res.pose_status
    prior = pipe.georef.prior
    prior.clock = lambda: now[0]
    assert res.pose_status == 'ok' and prior.grid.field is None
    _assert_stereo_only(res)
    assert "DEM source 'flat'" in res.prior_problem and dem in res.prior_problem
    assert 'stereo only' in res.prior_problem and res.georef_stats == {}

    Path(dem).write_bytes(saved)  # back, but the retry is throttled
    prior._failed_at = now[0]
    res = frame()
    _assert_stereo_only(res)
    assert prior.grid.builds == 0 and res.prior_problem
    now[0] += DEM_GRID_RETRY_S + 0.1  # retried: priors again, on the DEM surface
    res = frame()
    c = _classes(res)
    assert prior.grid.builds == 1 and res.prior_problem == ''
    assert c['PRIOR'] > 3000 and c['MEASURED'] > 1500, c
    h = _prior_heights(res)
    print(f'\npriors back: {c}; PRIOR heights - DEM: max |{np.abs(h - H0).max():.4f}| m')
    assert np.abs(h - H0).max() < 0.01
    n_prior = c['PRIOR']

    os.remove(dem)  # vanishes with a grid built: the grid it has keeps working
    res = frame()
    assert _classes(res)['PRIOR'] == n_prior and res.prior_problem == ''

    # garbled (truncated to its header) while the robot moves on: the re-tile (in the
    # background: the frame that starts it uses the current grid) fails, the previous grid
    # stays in use (the camera is still inside it), the reason is named from the next frame on
    Path(dem).write_bytes(saved[:600])
    now[0] += DEM_GRID_RETRY_S + 0.1
    t = JUMP_S + 0.5
    res = frame()
    assert res.prior_problem == '' and prior.grid.builds == 1
    assert prior.wait_for_grid(60.0)
    res = frame()
    assert res.pose_status == 'ok' and prior.grid.builds == 1
    assert "DEM source 'flat'" in res.prior_problem and dem in res.prior_problem
    assert 'using the previous height grid' in res.prior_problem
    assert _classes(res)['MEASURED'] > 1500 and _classes(res)['PRIOR'] > 1000
    assert np.all(res.flags[res.provenance == Provenance.NONE]
                  & (Flag.PRIOR_UNAVAILABLE | Flag.SKY))
    Path(dem).write_bytes(saved)  # restored: rebuilt around the new position
    now[0] += DEM_GRID_RETRY_S + 0.1
    frame()  # starts the background build
    assert prior.wait_for_grid(60.0)
    res = frame()  # swaps it in
    assert prior.grid.builds == 2 and res.prior_problem == ''
    assert abs(prior.grid.field.extent[0] + 150.0 - JUMP_X_M) < 2.0
    assert abs(_classes(res)['PRIOR'] - n_prior) < 0.02 * n_prior
    assert any('height grid build failed' in r.message for r in caplog.records)


def test_one_unreadable_source_costs_only_its_own_priors(tmp_path, caplog):
    """Two sources over the same area: 'local' (priority 1) and 'fallback'. The local file
    vanishes before the first grid build: the grid is built from the fallback, every PRIOR
    point still lies on the DEM, and prior_problem names the local source and file. Before,
    one unreadable file aborted the whole build: no prior from any source."""
    local = _write_dem(tmp_path / 'local.tif')
    fallback = _write_dem(tmp_path / 'fallback.tif')
    params = _params(local)
    params['dem.sources'] = 'local, fallback'
    for key in [k for k in params if k.startswith('dem.source.flat.')]:
        value = params.pop(key)
        field = key.rsplit('.', 1)[1]
        params[f'dem.source.local.{field}'] = value
        params[f'dem.source.fallback.{field}'] = value
    params.update({'dem.source.local.id': 1, 'dem.source.local.priority': 1,
                   'dem.source.fallback.id': 2, 'dem.source.fallback.path': fallback})
    pipe = DepthPipeline(params)
    pipe.test_next_k = -20
    os.remove(local)
    res = _frame(pipe, 0.5)
    c = _classes(res)
    assert res.pose_status == 'ok' and c['PRIOR'] > 3000 and c['MEASURED'] > 1500, c
    assert np.all(res.source[res.provenance == Provenance.PRIOR] == 2)
    assert np.abs(_prior_heights(res) - H0).max() < 0.01
    assert "DEM source 'local'" in res.prior_problem and local in res.prior_problem
    assert 'other tiles and sources are used' in res.prior_problem
    # the file is back: after the retry period the grid is rebuilt with it
    prior = pipe.georef.prior
    now = [0.0]
    prior.clock = lambda: now[0]
    prior._failed_at = now[0]
    _write_dem(tmp_path / 'local.tif')
    now[0] += DEM_GRID_RETRY_S + 0.1
    _frame(pipe, 1.0)  # starts the rebuild in the background
    assert prior.wait_for_grid(60.0)
    res = _frame(pipe, 1.5)  # swaps it in
    assert res.prior_problem == ''
    assert np.all(res.source[res.provenance == Provenance.PRIOR] == 1)


# ----------------------------------------------------------------- nodata under the camera
@pytest.fixture(scope='module')
def hole_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp('hole')
    out = {}
    for kind in (None, 'tagged', '1e30', '-32768'):
        pipe = _pipeline(_write_dem(d / f'dem_{kind}.tif', hole=kind))
        out[kind] = (_frame(pipe, 1.0), pipe)
    return out


def _ground_xy(res) -> np.ndarray:
    """ENU x, y (H, W, 2) where each pixel ray meets the flat DEM (from the run without the
    hole: its prior/fused points), NaN elsewhere."""
    p = res.points.reshape(-1, 3).astype(np.float64) @ res.T_enu_cam[:3, :3].T \
        + res.T_enu_cam[:3, 3]
    xy = p[:, :2].reshape(H, W, 2)
    keep = np.isin(res.provenance, (Provenance.PRIOR, Provenance.FUSED))
    return np.where(keep[..., None], xy, np.nan)


@pytest.mark.parametrize('kind', ['tagged', '1e30', '-32768'])
def test_nodata_hole_under_the_camera_keeps_the_priors_beyond_it(hole_runs, kind):
    """Every pixel whose ray meets the DEM outside the hole (+ one cell, the bilinear patches
    that touch it) keeps its prior, at the same point; the rays landing in it have none.
    Before, a ray that entered the terrain's height band over the hole was UNAVAILABLE (2921
    of these 3719 priors were left: on a flat DEM rays enter that band just above the ground;
    on rolling terrain none, see test_rays_start_their_march_over_a_hole), and untagged
    -32768 values were a 33-km pit that gave priors inside the hole."""
    full, _ = hole_runs[None]
    res, pipe = hole_runs[kind]
    xy = _ground_xy(full)
    with np.errstate(invalid='ignore'):
        out = np.any(np.abs(xy) > HOLE_M + 2.5, axis=-1)  # UTM vs ENU axes: 0.4 deg apart
        in_hole = np.all(np.abs(xy) < HOLE_M - 2.5, axis=-1)
    beyond = out & np.isfinite(xy[..., 0])
    got = np.isin(res.provenance, (Provenance.PRIOR, Provenance.FUSED))
    kept = int((got & beyond).sum())
    print(f'\n{kind}: priors {int(got.sum())} with the hole ({int(beyond.sum())} rays meet the '
          f'DEM beyond it; {int(np.isfinite(xy[..., 0]).sum())} priors without the hole)')
    assert beyond.sum() > 3000 and kept >= 0.99 * beyond.sum()
    same = got & beyond & (res.provenance == full.provenance)
    np.testing.assert_allclose(res.points[same], full.points[same], atol=2e-3)
    assert not np.any(got & in_hole)
    assert np.all(res.flags[in_hole & (res.provenance == Provenance.NONE)]
                  & Flag.PRIOR_UNAVAILABLE)
    assert res.georef_stats['dem_data_under_camera'] == 0.0
    assert math.isnan(res.georef_stats['camera_above_dem_m'])
    assert res.prior_problem.startswith(NO_DEM_UNDER_CAMERA)
    assert full.prior_problem == '' and full.georef_stats['dem_data_under_camera'] == 1.0
    assert full.georef_stats['camera_above_dem_m'] == pytest.approx(CAM_H, abs=0.01)
    # the implausible values are nodata in the grid, the rest is the flat DEM
    hgt = pipe.georef.prior.grid.field.height
    assert torch.isnan(hgt).any() and float(hgt[torch.isfinite(hgt)].abs().max()) < 0.01


def _hole_field(device, hole_m: float = HOLE_M) -> tuple[HeightField, HeightField]:
    """Rolling terrain (2 m cells) without and with a nodata square under the origin."""
    cell, n = 2.0, 151
    xs = cell * np.arange(n) - cell * (n - 1) / 2
    x, y = np.meshgrid(xs, xs)
    h = 1.5 * np.sin(0.02 * x + 0.5) + 1.0 * np.sin(0.03 * y + 0.013 * x)
    holed = h.copy()
    holed[(np.abs(x) <= hole_m) & (np.abs(y) <= hole_m)] = np.nan
    return tuple(HeightField(torch.tensor(a, dtype=torch.float32, device=device), xs[0], xs[0],
                             cell, sigma_v=0.5, sigma_h=0.5) for a in (h, holed))


def _rays(w: int, h: int, f: float, pitch_deg: float, yaw_deg: float) -> np.ndarray:
    u, v = np.meshgrid(np.arange(w) - w / 2 + 0.5, np.arange(h) - h / 2 + 0.5)
    d = np.stack([u / f, v / f, np.ones_like(u)], -1).reshape(-1, 3)
    opt_to_body = np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, -1.0, 0]])
    r = rpy_to_matrix(0.0, math.radians(pitch_deg), math.radians(yaw_deg)) @ opt_to_body
    d = d @ r.T
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _expected(full, holed_field, o, d):
    """Statuses expected with the hole from the cast without it: a HIT whose point has no
    data with the hole is UNAVAILABLE, everything else unchanged."""
    exp = full.status.clone()
    hit = full.status == RayStatus.HIT
    p = torch.as_tensor(o) + full.range_m.double()[:, None] * torch.as_tensor(d)
    z = holed_field.sample(p[:, 0], p[:, 1])
    exp[hit & torch.isnan(z)] = int(RayStatus.UNAVAILABLE)
    return exp


VIEWS = ((3.0, 30.0, 1.6), (1.0, 200.0, 2.5), (-4.0, 100.0, 1.6), (0.5, 300.0, 0.4))


@pytest.fixture(scope='module')
def hole_views():
    """Per view (pitch deg, yaw deg, camera height m): origin, rays, the torch loop's casts
    without and with the hole."""
    full_f, hole_f = _hole_field('cpu')
    out = []
    for pitch, yaw, above in VIEWS:
        o = np.array([1.0, -2.0, float(full_f.sample([1.0], [-2.0])[0]) + above])
        d = _rays(96, 64, 80.0, pitch, yaw)
        out.append((o, d, raycast(full_f, o, d, max_range_m=120.0, march='torch'),
                    raycast(hole_f, o, d, max_range_m=120.0, march='torch')))
    return hole_f, out


@pytest.mark.parametrize('march', ['torch', 'numba'])
def test_rays_start_their_march_over_a_hole(hole_views, march):
    """Torch loop and numba march, 4 views over rolling terrain with a 25 m hole under the
    camera: every ray's status is the one expected from the cast without the hole (a hit
    whose point has no data with the hole: UNAVAILABLE; a crossing just past the hole's edge
    is kept), the ranges equal to 1 mm, and both marches agree ray by ray."""
    if march == 'numba' and not numba_available():
        pytest.skip('numba is not installed')
    hole_f, views = hole_views
    n_hit = n_rays = n_full = 0
    for o, d, full, ref in views:
        got = ref if march == 'torch' else raycast(hole_f, o, d, max_range_m=120.0,
                                                   march=march)
        exp = _expected(full, hole_f, o, d)
        assert torch.equal(got.status, exp), int((got.status != exp).sum())
        assert torch.equal(got.status, ref.status)
        hit = got.status == RayStatus.HIT
        np.testing.assert_allclose(got.range_m[hit].numpy(), full.range_m[hit].numpy(), atol=1e-3)
        assert {RayStatus.HIT, RayStatus.UNAVAILABLE} <= set(got.status.tolist())
        n_hit += int(hit.sum())
        n_full += int((full.status == RayStatus.HIT).sum())
        n_rays += d.shape[0]
    print(f'\n{march}: {n_hit} of {n_rays} rays HIT over the DEM with the hole, {n_full} '
          'without it (before: 6 with the hole)')
    assert n_hit > 2000


def test_triton_march_over_a_hole_equals_the_torch_loop(triton_device):
    """The Triton kernel (interpreter without a GPU) on a small ray set over the hole."""
    full_f, hole_f = _hole_field('cpu')
    o = np.array([1.0, -2.0, float(full_f.sample([1.0], [-2.0])[0]) + 1.6])
    d = _rays(24, 16, 60.0, 3.0, 30.0)
    ref = raycast(hole_f, o, d, max_range_m=120.0, march='torch')
    got = raycast(hole_f.to(triton_device), o, d, max_range_m=120.0, march='triton')
    exp = _expected(raycast(full_f, o, d, max_range_m=120.0, march='torch'), hole_f, o, d)
    assert torch.equal(ref.status, exp)
    assert torch.equal(got.status.cpu(), ref.status)
    hit = (ref.status == RayStatus.HIT).numpy()
    assert hit.sum() > 60
    np.testing.assert_allclose(got.range_m.cpu().numpy()[hit], ref.range_m.numpy()[hit],
                               atol=2e-3)


def test_rays_over_nodata_to_their_end_are_unavailable_unless_they_climb_out():
    """Camera over nodata (east of x = 40 m), flat ground elsewhere, z_max 5 m: east and down
    stays over nodata to the grid edge (unknown); east and up climbs above all terrain (SKY,
    as without the hole); west and slightly down comes out of the hole above the ground and
    hits it at its true range; west and steeply down lands in the hole (unknown)."""
    cell = 2.0
    xs = cell * np.arange(101) - 100.0
    h = np.zeros((101, 101))
    h[:, xs > 40.0] = np.nan
    h[0, 0] = 5.0
    f = HeightField(torch.tensor(h, dtype=torch.float32), xs[0], xs[0], cell)
    o = np.array([60.0, 0.0, 2.0])
    d = np.array([[1.0, 0.0, -0.01], [1.0, 0.0, 0.2], [-1.0, 0.0, -0.05], [-1.0, 0.0, -0.2]])
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    for m in ['torch'] + (['numba'] if numba_available() else []):
        r = raycast(f, o, d, max_range_m=80.0, march=m)
        assert r.status.tolist() == [RayStatus.UNAVAILABLE, RayStatus.SKY, RayStatus.HIT,
                                     RayStatus.UNAVAILABLE], m
        assert r.range_m[2].item() == pytest.approx(2.0 / -d[2, 2], abs=1e-3)


# ----------------------------------------------------------------- sigma points over a hole
def _level_pose(z: float, pitch_deg: float):
    """Camera at ENU (0, 0, z) looking east, pitched down; no attitude error (so the
    silhouette term, which treats a neighbour landing in the hole as a jump to infinity, stays
    out of the comparison)."""
    from geo_depth_node.core.pose import PoseEstimate

    opt_to_body = np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, -1.0, 0]])
    return PoseEstimate(R_enu_base=np.eye(3), p_enu_base=np.zeros(3),
                        R_enu_cam=rpy_to_matrix(0.0, math.radians(pitch_deg), 0.0) @ opt_to_body,
                        p_enu_cam=np.array([0.0, 0.0, z]), position_cov=np.diag([0.01, 0.01, 0.04]),
                        rpy_sigma=np.zeros(3), degraded=False, reasons=[])


@pytest.mark.parametrize('above_m', [0.45, 1.6])
def test_sigma_points_over_a_hole_do_not_refuse_priors(above_m):
    """GeoPrior.cast over a 12 m hole, the sigma points' shift 0.54 m: the lowered camera's
    rays come out of the hole below the terrain where, without the hole, that camera would be
    inside the terrain (0.45 m) or its ray would cross the terrain near the hole's edge: that
    sigma point does not exist or is unknown, and the first-order term stands in. The priors
    beyond the hole get the sigma they get without the hole (the march over the hole without
    this rule: none of them finite at 0.45 m, 54 % instead of 96 % at 1.6 m)."""
    from test_geoprior_sigma_points import _model, _prior

    full_f, hole_f = _hole_field('cpu', hole_m=6.0)
    pose = _level_pose(above_m + float(full_f.sample([0.0], [0.0])[0]), 5.0)
    full = _prior(full_f).cast(pose, _model())
    holed = _prior(hole_f).cast(pose, _model())
    both = (full['status'] == RayStatus.HIT) & (holed['status'] == RayStatus.HIT)
    ok = np.isfinite(full['sigma_m'][both])
    print(f'\n{above_m} m: {int(both.sum())} hits beyond the hole, {int(ok.sum())} with a '
          f'finite sigma without the hole, {int(np.isfinite(holed["sigma_m"][both]).sum())} '
          'with it')
    assert ok.sum() > 90
    assert np.array_equal(np.isfinite(holed['sigma_m'][both]), ok)
    np.testing.assert_allclose(holed['sigma_m'][both][ok], full['sigma_m'][both][ok],
                               rtol=1e-2)


# ----------------------------------------------------------------- start-up: exit code 2
@pytest.mark.parametrize('what', ['empty', 'garbage', 'directory'])
def test_unreadable_dem_at_start_up_exits_2_naming_source_and_path(tmp_path, capsys, what):
    import yaml

    from geo_depth_node.tools.replay import main

    bad = tmp_path / 'bad.tif'
    if what == 'empty':
        bad.write_bytes(b'')
    elif what == 'garbage':
        bad.write_bytes(b'II*\x00' + bytes(range(256)) * 4)
    else:
        bad.mkdir()
    p = _params(str(bad))
    with pytest.raises(ValueError, match=f"DEM source 'flat': {bad}"):
        DepthPipeline(p)
    tree: dict = {}
    for key, val in p.items():
        node = tree
        parts = key.split('.')
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = val
    params = tmp_path / 'params.yaml'
    params.write_text(yaml.safe_dump({'geo_depth_node': {'ros__parameters': tree}}))
    rc = main([str(tmp_path / 'no_bag'), '--params', str(params), '--out',
               str(tmp_path / 'out'), '--quiet'])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "DEM source 'flat'" in err and str(bad) in err, err


# ----------------------------------------------------------------- camera far above the DEM
def test_camera_far_above_the_dem_is_warned_about():
    stats = {'camera_above_dem_m': 160.0, 'dem_vertical_shift_m': 0.5,
             'dem_data_under_camera': 1.0}
    w = clearance_warning(stats)
    assert w is not None and 'more than 100 m' in w and '160.0 m above' in w
    ok = dict(stats, camera_above_dem_m=CAM_H)
    assert clearance_warning(ok) is None
    assert clearance_warning(dict(stats, camera_above_dem_m=CAMERA_FAR_ABOVE_DEM_M - 1)) is None
    assert clearance_warning(dict(stats, camera_above_dem_m=30.0), max_above_m=20.0)
    assert 'less than' in clearance_warning(dict(stats, camera_above_dem_m=0.2))
