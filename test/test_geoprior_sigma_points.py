"""GeoPrior.cast's sigma points when the camera is closer to the DEM than the vertical shift.

The raised-terrain sigma point lowers the camera by ``delta = sqrt(sigma_v^2 + P_zz)``; when
the camera is less than ``delta`` above the DEM under it, that camera would start inside the
terrain (every ray BELOW_TERRAIN). Such a sigma point does not exist, and the first-order
vertical term stands in for it (before, every prior of the frame became infinite).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from geo_depth_node.core.camera import CameraModel
from geo_depth_node.core.fusion import FusionConfig
from geo_depth_node.core.geoprior import GeoPrior, clearance_warning
from geo_depth_node.core.pose import PoseEstimate
from geo_depth_node.core.raycast import HeightField, RayStatus


class _Grid:
    """The part of dem.LocalHeightGrid that GeoPrior.cast uses."""

    def __init__(self, field: HeightField) -> None:
        self.field = field
        self.specs_by_id = {}
        self.last_read_problems: list[str] = []

    def retile_if_needed(self, _p, force: bool = False) -> bool:
        return False


def _prior(field: HeightField) -> GeoPrior:
    prior = GeoPrior.__new__(GeoPrior)  # without DEM files: the grid is given
    prior.grid = _Grid(field)
    prior.max_range_m = 300.0
    prior.fusion = FusionConfig()
    prior.surface_model_ids = []
    prior.sigma_points = True
    prior.march = 'auto'
    prior._ray_cache = None
    return prior


def _hill_field() -> HeightField:
    """Flat ground z = 0 with a 30 m ridge whose face rises from x = 100 m to x = 130 m."""
    cell = 2.0
    xs = np.arange(-200.0, 400.0 + cell, cell)
    x, _ = np.meshgrid(xs, xs)
    h = np.clip((x - 100.0) / 30.0, 0.0, 1.0) * 30.0
    return HeightField(torch.tensor(h, dtype=torch.float32), xs[0], xs[0], cell,
                       sigma_v=0.5, sigma_h=0.0)


def _pose(height_m: float) -> PoseEstimate:
    # camera looking east (optical z = ENU x), level: x_opt = -y_enu, y_opt = -z_enu
    r = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    return PoseEstimate(R_enu_base=np.eye(3), p_enu_base=np.array([0.0, 0.0, 0.0]),
                        R_enu_cam=r, p_enu_cam=np.array([0.0, 0.0, height_m]),
                        position_cov=np.diag([0.01, 0.01, 0.04]),
                        rpy_sigma=np.array([1e-4, 1e-4, 1e-4]), degraded=False, reasons=[])


def _model() -> CameraModel:
    w, h, f = 64, 48, 60.0
    k = [f, 0.0, w / 2, 0.0, f, h / 2, 0.0, 0.0, 1.0]
    p = [f, 0.0, w / 2, 0.0, 0.0, f, h / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    return CameraModel.from_arrays(w, h, k, [0.0] * 5, [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], p,
                                   'plumb_bob', 'cam')


def _face(res, height_m: float) -> np.ndarray:
    """Rays that hit the ridge face between 3 and 20 m up: near the crest (30 m) a shifted ray
    may miss, and near the foot one may hit the flat ground in front; there the large sigma
    is meant."""
    h, w = res['range_m'].shape
    v = (np.arange(h)[:, None] - h / 2) / 60.0
    u = (np.arange(w)[None, :] - w / 2) / 60.0
    z = height_m - res['range_m'] * v / np.sqrt(1.0 + u ** 2 + v ** 2)
    return (res['status'] == RayStatus.HIT) & (res['range_m'] > 100.0) & (z > 3.0) & (z < 20.0)


def test_camera_within_delta_of_the_dem_keeps_its_priors():
    field = _hill_field()
    delta = float(np.hypot(0.5, 0.2))  # sigma_v, sqrt(P_zz)
    low = _prior(field).cast(_pose(0.3), _model())  # 0.3 m above the DEM < delta
    high = _prior(field).cast(_pose(2.0), _model())  # 2 m above it > delta
    assert 0.3 < delta < 2.0
    for res, hgt in ((low, 0.3), (high, 2.0)):
        face = _face(res, hgt)
        assert face.sum() > 50  # the ridge face is seen
        s, s1 = res['sigma_m'][face], res['sigma_first_order_vertical_m'][face]
        assert np.all(np.isfinite(s)), 'priors on the ridge face must stay usable'
        # the sigma points refine, they do not explode or vanish: within 0.5..2 of first order
        assert np.all((s > 0.5 * s1) & (s < 2.0 * s1)), (s / s1).min()
    # the low camera's face priors: as uncertain as the high camera's, to 30 %
    f_low, f_high = _face(low, 0.3), _face(high, 2.0)
    assert abs(np.median(low['sigma_m'][f_low]) / np.median(high['sigma_m'][f_high]) - 1) < 0.3


def test_camera_clearance_and_its_warning():
    """camera_clearance: the camera's height above the DEM under it and the sigma points'
    shift; a camera closer to the DEM than the shift gets a /diagnostics warning."""
    field = _hill_field()
    delta = float(np.hypot(0.5, 0.2))
    low = _prior(field).camera_clearance(_pose(0.3))
    high = _prior(field).camera_clearance(_pose(2.0))
    assert low['camera_above_dem_m'] == pytest.approx(0.3, abs=1e-5)
    assert high['camera_above_dem_m'] == pytest.approx(2.0, abs=1e-5)
    assert low['dem_vertical_shift_m'] == pytest.approx(delta, rel=1e-6)
    assert 'camera 0.30 m above the DEM' in clearance_warning(low)
    assert clearance_warning(high) is None
    assert clearance_warning({}) is None
    off = _pose(2.0)
    off.p_enu_cam = np.array([5000.0, 0.0, 2.0])  # outside the grid: nothing known
    assert clearance_warning(_prior(field).camera_clearance(off)) is None


@pytest.mark.parametrize('above_m, consistent', [(6.0, True), (20.0, False)])
def test_height_gate_uses_the_dem_sigma_the_prior_uses(above_m, consistent):
    """The height test of a stereo point uses the DEM sigma of the node under it as the grid
    holds it (per source, grown with survey age: 0.5 m surveyed 10 years ago at 0.3 m/year is
    3.04 m), not the source's stated sigma: a point 6 m above such a DEM is consistent, 20 m
    is not (with the stated 0.5 m, every 6-m point was a PRIOR_CONFLICT). numpy and torch
    twins alike."""
    import datetime

    from geo_depth_node.core.dem import DemSourceSpec
    from geo_depth_node.core.georef_torch import height_consistency_torch
    from geo_depth_node.core.pipeline import FrameResult

    spec = DemSourceSpec(id=1, name='old', path='x', kind='dem', vertical_datum='ellipsoid',
                         sigma_v_m=0.5, sigma_h_m=0.0, survey_date=datetime.date(2015, 1, 1),
                         sigma_v_growth_m_per_year=0.3)
    sv = spec.sigma_v_at(datetime.date(2025, 1, 1))
    assert sv == pytest.approx(3.04, abs=0.01)
    cell = 2.0
    xs = np.arange(-200.0, 600.0 + cell, cell)
    field = HeightField(torch.zeros((xs.size, xs.size)), xs[0], xs[0], cell, sigma_v=sv,
                        sigma_h=0.0)
    prior = _prior(field)
    prior.grid.specs_by_id = {1: spec}
    cam_h, pose, model = 30.0, _pose(30.0), _model()
    d_cam, ray_unit, norm = prior.rays(model, True)
    down = (d_cam @ pose.R_enu_cam.T)[..., 2] < -0.05
    r_s = np.where(down, (cam_h - above_m) / -(d_cam @ pose.R_enu_cam.T)[..., 2], np.nan)
    r_s = r_s.astype(np.float32)
    pts = (ray_unit * r_s[..., None]).astype(np.float32)
    prov = down.astype(np.uint8)
    sig = np.where(down, 0.05 * r_s, np.nan).astype(np.float32)
    h, w = prov.shape
    res = FrameResult(depth=r_s / norm, depth_sigma=sig / norm, points=pts, sigma=sig,
                      provenance=prov, flags=np.zeros((h, w), np.uint16),
                      source=np.zeros((h, w), np.uint16),
                      disparity=np.full((h, w), np.nan, np.float32),
                      sigma_disparity=np.full((h, w), np.nan, np.float32), timings_ms={})
    ok = prior.height_consistency(res, pose, model)
    frame = {'points': torch.from_numpy(pts), 'provenance': torch.from_numpy(prov),
             'sigma': torch.from_numpy(sig)}
    ok_t = height_consistency_torch(prior, frame, pose, model).numpy()
    assert down.sum() > 1000
    np.testing.assert_array_equal(ok, ok_t)
    assert ok[down].all() if consistent else not ok[down].any()
