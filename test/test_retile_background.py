"""Re-tiling the height grid never stalls a frame.

Only the first grid is built on the frame thread (that frame waits; the log says so once).
Every later build (the camera within the re-tile margin of the grid's edge, or a retry after
a failed build) runs in one background worker while the frames keep using the current grid;
the finished grid is swapped in at the start of the next ``GeoPrior.update_grid``.

Scene: the flat UTM GeoTIFF DEM of test_fault_dem (+-400 m around the datum), a 301 x 301 m
grid (2 m cells, half extent 150 m, margin 50 m, max range 100 m). ``build_field`` is slowed
down by BUILD_S in the tests, so an inline rebuild would show in every frame-thread timing.
Truth: the grid centre is the camera position at the request snapped to the 2 m nodes; a
background-built field equals the one built inline at that centre, node for node.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from geo_depth_node.core.dem import DemReadError, DemSourceSpec
from geo_depth_node.core.geodesy import EnuFrame
from geo_depth_node.core.geoprior import DEM_GRID_RETRY_S, GeoPrior
from geo_depth_node.core.pose import PoseEstimate, rpy_to_matrix
from geo_depth_node.core.raycast import RayStatus
from test_fault_dem import H0, LAT0, LON0, _write_dem
from test_geoprior_sigma_points import _model

CELL_M, HALF_M, MARGIN_M, RANGE_M = 2.0, 150.0, 50.0, 100.0
BUILD_S = 0.5  # the added build time, s
FRAME_S = 0.1  # the bound on a frame-thread update_grid / dem_retile while a build runs, s
CAM_H = 1.5  # camera above the flat DEM, m


class _SlowBuilds:
    """Wraps LocalHeightGrid.build_field: sleeps ``BUILD_S`` first (or raises ``fail``), counts
    the builds and the most that ran at once, and records the requested centres."""

    def __init__(self, grid) -> None:
        self.build = grid.build_field  # the bound original
        self.lock = threading.Lock()
        self.running = self.most = self.calls = 0
        self.centres: list[tuple[float, float]] = []
        self.threads: set[str] = set()
        self.fail: Exception | None = None
        grid.build_field = self

    def __call__(self, x: float, y: float, problems=None):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.calls += 1
            self.centres.append((x, y))
            self.threads.add(threading.current_thread().name)
        try:
            time.sleep(BUILD_S)
            if self.fail is not None:
                raise self.fail
            return self.build(x, y, problems)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture()
def dem(tmp_path) -> str:
    return _write_dem(tmp_path / 'flat.tif')


def _prior(dem_path: str) -> GeoPrior:
    spec = DemSourceSpec(id=7, name='flat', path=dem_path, kind='dem',
                         vertical_datum='ellipsoid', sigma_v_m=0.3, sigma_h_m=0.3)
    return GeoPrior([spec], EnuFrame(LAT0, LON0, H0), cell_m=CELL_M, half_extent_m=HALF_M,
                    retile_margin_m=MARGIN_M, max_range_m=RANGE_M, device='cpu')


def _pose(x: float, y: float = 0.0) -> PoseEstimate:
    """Camera CAM_H above the flat DEM at ENU (x, y), looking east, 5 deg down."""
    opt_to_body = np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, -1.0, 0]])
    return PoseEstimate(R_enu_base=np.eye(3), p_enu_base=np.array([x, y, 0.0]),
                        R_enu_cam=rpy_to_matrix(0.0, math.radians(5.0), 0.0) @ opt_to_body,
                        p_enu_cam=np.array([x, y, CAM_H]), position_cov=np.diag([0.01] * 3),
                        rpy_sigma=np.full(3, 1e-4), degraded=False, reasons=[])


def _timed_update(prior: GeoPrior, x: float, y: float = 0.0) -> tuple[str, float]:
    t0 = time.perf_counter()
    problem = prior.update_grid(np.array([x, y, CAM_H]))
    return problem, time.perf_counter() - t0


def _centre(field) -> tuple[float, float]:
    x0, x1, y0, y1 = field.extent
    return (x0 + x1) / 2, (y0 + y1) / 2


def _snapped(x: float, y: float = 0.0) -> tuple[float, float]:
    return round(x / CELL_M) * CELL_M, round(y / CELL_M) * CELL_M


def test_first_grid_blocks_and_is_logged_once(dem, caplog):
    """The first update_grid builds on the frame thread (>= BUILD_S; the field is there when
    it returns) and logs that at INFO, once; the next re-tile neither blocks nor logs it."""
    prior = _prior(dem)
    slow = _SlowBuilds(prior.grid)
    with caplog.at_level(logging.INFO, logger='geo_depth_node.core.geoprior'):
        problem, took = _timed_update(prior, 0.0)
        assert problem == '' and took >= BUILD_S
        assert prior.grid.field is not None and _centre(prior.grid.field) == (0.0, 0.0)
        assert slow.threads == {threading.current_thread().name}
        assert prior.retile_stats['builds_started'] == prior.retile_stats['builds_swapped'] == 1
        assert prior.retile_stats['build_s_last'] >= BUILD_S
        _, took = _timed_update(prior, 120.0)  # within the margin: background
        assert took < FRAME_S, took
        assert prior.wait_for_grid(30.0)
        _, took = _timed_update(prior, 120.0)
        assert took < FRAME_S and _centre(prior.grid.field) == (120.0, 0.0)
    first = [r for r in caplog.records if 'first height grid' in r.getMessage()]
    assert len(first) == 1 and first[0].levelno == logging.INFO
    assert 'synchronously' in first[0].getMessage() and 'blocks this frame' in first[0].getMessage()
    prior.grid.close()


def test_retile_runs_in_the_background_and_is_swapped_in(dem):
    """The camera drives east across the margin, one frame (GeoPrior.cast) every 20 ms: no
    frame's dem_retile reaches FRAME_S while the BUILD_S build runs (they use the old grid and
    keep their priors); the build ran on another thread, once; the next frame after it
    finished has the new grid, centred on the camera position at the request and equal,
    node for node, to the field built inline there."""
    prior = _prior(dem)
    model = _model()
    prior.cast(_pose(0.0), model)  # the first grid, inline
    old = prior.grid.field
    slow = _SlowBuilds(prior.grid)
    x0 = 90.0  # 1 m per frame from here, up to 140 m; the margin starts at x = 100 m
    retile_ms, hits = [], []
    requested_at = None
    t_start = time.perf_counter()
    for k in itertools.count():
        x = min(x0 + k, 140.0)
        res = prior.cast(_pose(x), model)
        if requested_at is None and prior.grid.build_pending:
            requested_at = x
        if prior.grid.field is not old:
            break
        retile_ms.append(res['timings_ms']['dem_retile'])
        hits.append(int((res['status'] == RayStatus.HIT).sum()))
        assert prior.grid_problem == ''
        assert time.perf_counter() - t_start < 60.0, 'the new grid was never swapped in'
        time.sleep(0.02)
    waited = time.perf_counter() - t_start
    print(f'\nre-tile requested at x = {requested_at} m, swapped in at x = {x} m after '
          f'{waited:.2f} s; dem_retile max {max(retile_ms):.2f} ms over {len(retile_ms)} '
          f'frames; stats {prior.retile_stats}')
    assert requested_at == 101.0  # the first frame within the margin (x1 - 50 m = 100 m)
    assert max(retile_ms) < FRAME_S * 1e3, retile_ms
    assert min(hits) > 0  # the frames meanwhile kept their priors from the old grid
    assert slow.calls == 1 and slow.most == 1
    assert threading.current_thread().name not in slow.threads
    field = prior.grid.field
    assert _centre(field) == _snapped(requested_at)
    ref = slow.build(*_snapped(requested_at))
    assert torch.equal(torch.isnan(field.height), torch.isnan(ref.height))
    assert torch.allclose(field.height.nan_to_num(), ref.height.nan_to_num(), atol=0.0)
    stats = prior.retile_stats
    assert stats['builds_started'] == stats['builds_swapped'] == 2
    assert stats['build_s_last'] >= BUILD_S
    assert stats['frames_while_building'] == len(retile_ms) - int(requested_at - x0)
    assert prior.grid.builds == 2 and prior.grid_problem == ''
    prior.grid.close()


def test_only_one_build_in_flight_and_a_stale_grid_is_retiled_again(dem):
    """While a build runs, the camera drives on beyond the old grid's margin and beyond the
    request's grid margin too: every frame uses the old grid (grid_problem ''), no second
    build starts (start_build refuses), and the swap of the stale grid starts the next build
    at once, at the camera's position then."""
    prior = _prior(dem)
    prior.update_grid(np.zeros(3))
    old = prior.grid.field
    slow = _SlowBuilds(prior.grid)
    _timed_update(prior, 110.0)  # request 1, centre 110: valid x 10..210
    assert prior.grid.build_pending and not prior.grid.start_build([0.0, 0.0])
    for x in np.linspace(110.0, 250.0, 15):
        problem, took = _timed_update(prior, float(x))
        assert problem == '' and took < FRAME_S and prior.grid.field is old
    names = [t.name for t in threading.enumerate() if t.name == 'height-grid-build']
    assert len(names) <= 1
    assert prior.wait_for_grid(30.0) and prior.grid.build_ready
    problem, took = _timed_update(prior, 250.0)  # swap (centre 110) and request 2 at 250
    assert problem == '' and took < FRAME_S
    assert _centre(prior.grid.field) == (110.0, 0.0)
    assert prior.grid.build_pending and slow.calls == 2
    assert prior.wait_for_grid(30.0)
    _timed_update(prior, 250.0)
    assert _centre(prior.grid.field) == (250.0, 0.0)
    assert slow.most == 1 and slow.centres == [(110.0, 0.0), (250.0, 0.0)]
    stats = prior.retile_stats
    assert stats['builds_started'] == stats['builds_swapped'] == 3
    assert stats['frames_while_building'] == 17
    assert prior.grid.builds == 3
    prior.grid.close()


@pytest.mark.parametrize('how', ['raises', 'file_gone'])
def test_failed_background_build_keeps_the_old_grid_and_says_why(dem, how):
    """A background build that raises DemReadError (or finds the file gone: nothing readable)
    leaves the old grid in use and sets grid_problem naming source, file and retry period,
    from the frame after the build ended; no frame waits for it; the retry waits retry_s and
    runs in the background too; the file back, the new grid comes and the problem goes."""
    prior = _prior(dem)
    now = [0.0]
    prior.clock = lambda: now[0]
    prior.update_grid(np.zeros(3))
    old = prior.grid.field
    slow = _SlowBuilds(prior.grid)
    saved = Path(dem).read_bytes()
    if how == 'raises':
        slow.fail = DemReadError('flat', dem, 'injected read error')
    else:
        os.remove(dem)
    problem, took = _timed_update(prior, 120.0)
    assert problem == '' and took < FRAME_S and prior.grid.build_pending
    assert prior.wait_for_grid(30.0)
    problem, took = _timed_update(prior, 120.0)
    assert took < FRAME_S and prior.grid.field is old and prior.grid.builds == 1
    assert problem == prior.grid_problem
    assert problem.startswith(f"DEM source 'flat': cannot read {dem}: ")
    assert problem.endswith(f'; using the previous height grid, retrying every '
                            f'{DEM_GRID_RETRY_S:g} s')
    assert not prior.grid.build_pending
    now[0] += DEM_GRID_RETRY_S - 0.1  # throttled: no new build
    assert _timed_update(prior, 120.0)[0] == problem and not prior.grid.build_pending
    slow.fail = None
    Path(dem).write_bytes(saved)
    now[0] += 0.2
    problem, took = _timed_update(prior, 120.0)  # the retry starts in the background
    assert took < FRAME_S and prior.grid.build_pending and problem.startswith('DEM source')
    assert prior.wait_for_grid(30.0)
    assert _timed_update(prior, 120.0)[0] == ''
    assert _centre(prior.grid.field) == (120.0, 0.0) and prior.grid_problem == ''
    stats = prior.retile_stats
    assert stats['builds_started'] == 3 and stats['builds_swapped'] == 2
    assert slow.most == 1
    prior.grid.close()


def test_unexpected_background_failure_is_named(dem):
    prior = _prior(dem)
    prior.update_grid(np.zeros(3))
    slow = _SlowBuilds(prior.grid)
    slow.fail = RuntimeError('boom')
    prior.update_grid(np.array([120.0, 0.0, CAM_H]))
    assert prior.wait_for_grid(30.0)
    problem = prior.update_grid(np.array([120.0, 0.0, CAM_H]))
    assert problem == ('height grid build failed unexpectedly: RuntimeError: boom; using the '
                       f'previous height grid, retrying every {DEM_GRID_RETRY_S:g} s')
    prior.grid.close()


def test_wait_and_close_reject_bad_timeouts(dem):
    prior = _prior(dem)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match='timeout'):
            prior.wait_for_grid(bad)
        with pytest.raises(ValueError, match='timeout'):
            prior.grid.wait(bad)
    with pytest.raises(ValueError, match='finite x, y'):
        prior.grid.start_build([math.nan, 0.0])
    assert prior.wait_for_grid(0.0)  # nothing in flight
    assert prior.grid.close(1.0) and not prior.grid.start_build([0.0, 0.0])


def test_pipeline_crossing_the_retile_margin_never_waits_for_the_grid(tmp_path):
    """A synthetic drive at 30 m/s through a small height grid (half extent 60 m, re-tile
    margin 40 m): the vehicle crosses the margin, the grid is re-built in the background and
    swapped in, and no frame after the first spends more than a quarter of the median frame
    in the height-grid step (an inline rebuild costs several frames' time)."""
    pytest.importorskip('rasterio')
    pytest.importorskip('rosbags')
    from geo_depth_node.synth.config import SynthConfig
    from geo_depth_node.tools.prior_coverage import load_world

    cfg = SynthConfig(seed=5, frames=14, width=160, height=120, speed_mps=30.0)
    pipe, _, pairs, lm, rm = load_world(tmp_path, cfg, {
        'dem.grid_half_extent_m': 60.0, 'dem.grid_retile_margin_m': 40.0,
        'dem.max_range_m': 20.0})
    totals, retile = [], []
    for stamp, left, right in pairs:
        r = pipe.process(left, right, lm, rm, stamp_ns=stamp)
        assert r.pose_status == 'ok'
        totals.append(r.timings_ms['total'])
        retile.append(r.timings_ms['dem_retile'])
    prior = pipe.georef.prior
    assert prior.wait_for_grid(30.0)
    stats = prior.retile_stats
    assert stats['builds_started'] >= 2 and stats['builds_swapped'] >= 2, stats
    median = float(np.median(totals[1:]))
    assert max(retile[1:]) <= 0.25 * median, (retile, totals)
    assert retile[0] > max(retile[1:])  # the first grid is built on the frame
    # the cast ran beside the stereo in the pipeline's own thread, which goes with it
    pool = pipe._prior_pool()
    assert all(t.name.startswith('geo-depth-prior') for t in pool._threads)
    del pipe, prior
    import gc

    gc.collect()
    assert pool._shutdown
