"""core.georef_torch (the device twin of the DEM prior and fusion) against the numpy reference
(GeoPrior.apply, fusion.fuse) on synthetic worlds with their DEM, IMU and GNSS."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('rasterio')
pytest.importorskip('rosbags')

from geo_depth_node.core.camera import StereoModel  # noqa: E402
from geo_depth_node.core.contract import Provenance  # noqa: E402
from geo_depth_node.core.georef_torch import (apply_torch, range_gradient_torch,  # noqa: E402
                                              to_enu_torch)
from geo_depth_node.core.geoprior import range_gradient  # noqa: E402

FIELDS = ('points', 'depth', 'depth_sigma', 'sigma', 'sigma_disparity', 'disparity')


def _frame(res, device='cpu'):
    f = {k: torch.from_numpy(np.ascontiguousarray(getattr(res, k))).to(device) for k in FIELDS}
    f['provenance'] = torch.from_numpy(res.provenance.copy()).to(device)
    f['flags'] = torch.from_numpy(res.flags.astype(np.int32)).to(device)
    f['source'] = torch.from_numpy(res.source.astype(np.int32)).to(device)
    f['measured'] = f['provenance'] == int(Provenance.MEASURED)
    return f


def test_range_gradient_twin():
    rng = np.random.default_rng(0).uniform(1, 50, (9, 13)).astype(np.float32)
    rng[2, 3] = rng[5, 0] = rng[8, 12] = np.nan
    got = range_gradient_torch(torch.from_numpy(rng)).numpy()
    np.testing.assert_array_equal(got, range_gradient(rng))


@pytest.mark.parametrize('seed, overrides', [(300, {}),
                                             (301, {'dem.sigma_points': False,
                                                    'output.unrectify_points': False}),
                                             (302, {'fusion.gate_k': 2.0})])
def test_apply_torch_equals_numpy(tmp_path, seed, overrides):
    from geo_depth_node.synth.config import SynthConfig
    from geo_depth_node.tools.prior_coverage import load_world

    cfg = SynthConfig(seed=seed, frames=2, width=160, height=120)
    # every pixel cast exactly on the host (the lattice's inner sigma points are interpolated)
    pipe, _, pairs, lm, rm = load_world(tmp_path, cfg, {**overrides, 'dem.cast_stride': 1})
    georef, pipe.georef = pipe.georef, None  # stereo only, then each fusion by hand
    stereo = StereoModel.from_cameras(lm, rm)
    classes = set()
    for stamp, left, right in pairs:
        res = pipe.process(left, right, lm, rm)
        pose, why = georef.pose.pose_at(stamp)
        assert pose is not None, why
        prior = georef.ensure_prior(pipe.params)
        frame = _frame(res)
        ref = copy.deepcopy(res)
        counts_np = prior.apply(ref, pose, lm, pipe.params, stereo=stereo)
        counts_t = apply_torch(prior, frame, pose, lm, pipe.params, stereo=stereo)
        prov = frame['provenance'].numpy()
        # identical up to float rounding at a gate: allow a handful of pixels to differ
        assert (prov != ref.provenance).sum() <= 2, counts_np
        same = prov == ref.provenance
        np.testing.assert_array_equal(frame['flags'].numpy().astype(np.uint16)[same], ref.flags[same])
        np.testing.assert_array_equal(frame['source'].numpy().astype(np.uint16)[same], ref.source[same])
        for k in ('points', 'depth', 'depth_sigma', 'sigma'):
            np.testing.assert_allclose(frame[k].numpy()[same], getattr(ref, k)[same], rtol=2e-5,
                                       atol=1e-5, equal_nan=True, err_msg=k)
        for k in counts_np:
            assert abs(counts_np[k] - counts_t[k]) <= 2, (k, counts_np, counts_t)
        np.testing.assert_array_equal(frame['measured'].numpy(), prov != Provenance.NONE)
        classes |= set(np.unique(prov).tolist())
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = pose.R_enu_cam, pose.p_enu_cam
        to_enu_torch(frame, T)
        pts = ref.points.reshape(-1, 3).astype(np.float64) @ T[:3, :3].T + T[:3, 3]
        np.testing.assert_allclose(frame['points'].numpy()[same],
                                   pts.astype(np.float32).reshape(ref.points.shape)[same],
                                   rtol=1e-6, atol=2e-3, equal_nan=True)
    # the comparison covers fused and prior points (and NONE)
    assert {int(Provenance.FUSED), int(Provenance.PRIOR), int(Provenance.NONE)} <= classes, classes


@pytest.mark.parametrize('frame_out', ['camera', 'enu'])
def test_device_path_with_dem_equals_host_path(tmp_path, frame_out):
    """stereo.matcher sgm_torch with DEM sources: the whole frame, fusion included, stays on
    the device and gives the host path's cloud (classes, flags, points, sigma)."""
    from geo_depth_node.core.cloud import pack_points
    from geo_depth_node.synth.config import SynthConfig
    from geo_depth_node.tools.prior_coverage import load_world

    cfg = SynthConfig(seed=310, frames=2, width=128, height=96)
    pipe, _, pairs, lm, rm = load_world(tmp_path, cfg, {
        'stereo.matcher': 'sgm_torch', 'stereo.device': 'cpu', 'stereo.num_disparities': 32,
        'output.frame': frame_out, 'dem.cast_stride': 1})
    assert pipe.device_path
    for stamp, left, right in pairs:
        pipe.device_path = True
        dev = pipe.process(left, right, lm, rm, stamp_ns=stamp)
        pipe.device_path = False
        host = pipe.process(left, right, lm, rm, stamp_ns=stamp)
        assert dev.packed is not None and dev.pose_status == host.pose_status == 'ok'
        assert dev.output_frame == host.output_frame == frame_out
        np.testing.assert_allclose(dev.T_enu_cam, host.T_enu_cam)
        assert (dev.provenance != host.provenance).sum() <= 2
        same = dev.provenance == host.provenance
        np.testing.assert_array_equal(dev.flags[same], host.flags[same])
        a, b = pack_points(dev), pack_points(host)
        for k in ('x', 'y', 'z', 'sigma'):
            np.testing.assert_allclose(a[k][same], b[k][same], rtol=1e-4, atol=2e-3, equal_nan=True,
                                       err_msg=k)
        for k in dev.prior_counts:
            assert abs(dev.prior_counts[k] - host.prior_counts[k]) <= 2, k
        assert {'pose', 'dem_raycast', 'fusion', 'pack_download'} <= set(dev.timings_ms)
        assert (dev.provenance == Provenance.PRIOR).sum() > 100
