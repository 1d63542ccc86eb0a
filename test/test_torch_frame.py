"""core.torch_frame against the numpy pipeline: same bytes as _triangulate + pack_points."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from geo_depth_node.core.camera import CameraModel, StereoModel  # noqa: E402
from geo_depth_node.core.cloud import pack_points  # noqa: E402
from geo_depth_node.core.contract import POINT_DTYPE, Flag, Provenance  # noqa: E402
from geo_depth_node.core.pipeline import DepthPipeline  # noqa: E402
from geo_depth_node.core.torch_frame import TorchFrame, packed_to_numpy  # noqa: E402

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def _stereo(w=64, h=48, f=60.0, b=0.12, dcx=1.5, rot_deg=0.0):
    a = np.radians(rot_deg)
    r = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    k = [f, 0, 31.2, 0, f, 23.7, 0, 0, 1]
    left = CameraModel.from_arrays(w, h, k, [0] * 5, r, [f, 0, 31.2, 0, 0, f, 23.7, 0, 0, 0, 1, 0])
    right = CameraModel.from_arrays(w, h, k, [0] * 5, r, [f, 0, 31.2 - dcx, -f * b, 0, f, 23.7, 0,
                                                          0, 0, 1, 0])
    return StereoModel.from_cameras(left, right)


def _inputs(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.uniform(-1.0, 40.0, (h, w)).astype(np.float32)
    flags = np.zeros((h, w), np.uint16)
    pick = rng.uniform(size=(h, w))
    flags[pick < 0.1] = Flag.NO_MATCH
    flags[(pick >= 0.1) & (pick < 0.15)] = Flag.OUT_OF_VIEW
    flags[(pick >= 0.15) & (pick < 0.2)] = Flag.LR_INCONSISTENT
    too_close = (pick >= 0.2) & (pick < 0.22)
    flags[too_close] = Flag.TOO_CLOSE
    d[flags != 0] = np.nan
    lr = np.where(flags == 0, rng.exponential(0.5, (h, w)), 0).astype(np.float32)
    return d, lr, flags


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('max_sigma', [0.0, 0.4])
def test_packed_cloud_equals_numpy_pipeline_bytes(device, max_sigma):
    params = {'limit.max_sigma_m': max_sigma, 'limit.max_relative_sigma': 0.05}
    pl = DepthPipeline(params)
    stereo = _stereo()
    d, lr, flags = _inputs()
    ref = pl._triangulate(d, lr, flags, stereo)
    ref_cloud = pack_points(ref)
    tf = TorchFrame(pl.params, device)
    tri, packed = tf.process(torch.from_numpy(d).to(device), torch.from_numpy(lr).to(device),
                             torch.from_numpy(flags.astype(np.int32)).to(device), stereo)
    assert packed.dtype == torch.uint8 and tuple(packed.shape) == (48, 64, POINT_DTYPE.itemsize)
    cloud = packed_to_numpy(packed)
    assert cloud.tobytes() == ref_cloud.tobytes()
    # the classes are all present, so the comparison is not vacuous
    prov = cloud['provenance']
    assert (prov == Provenance.MEASURED).sum() > 100
    assert np.any(cloud['flags'] & Flag.BEYOND_RESOLUTION)
    for key in ('depth', 'depth_sigma', 'sigma'):
        np.testing.assert_array_equal(tri[key].cpu().numpy(), getattr(ref, key))
    np.testing.assert_array_equal(tri['flags'].cpu().numpy().astype(np.uint16), ref.flags)
    np.testing.assert_array_equal(np.isneginf(tri['depth'].cpu().numpy()),
                                  (flags & Flag.TOO_CLOSE) != 0)


@pytest.mark.parametrize('device', DEVICES)
def test_unrectified_points_match_to_float_rounding(device):
    pl = DepthPipeline({'limit.max_relative_sigma': 0.05})
    stereo = _stereo(rot_deg=3.0)
    d, lr, flags = _inputs(seed=1)
    ref = pack_points(pl._triangulate(d, lr, flags, stereo))
    _, packed = TorchFrame(pl.params, device).process(
        torch.from_numpy(d).to(device), torch.from_numpy(lr).to(device),
        torch.from_numpy(flags.astype(np.int32)).to(device), stereo)
    cloud = packed_to_numpy(packed)
    for name in ('provenance', 'flags', 'source', 'sigma'):
        np.testing.assert_array_equal(cloud[name], ref[name])
    for name in ('x', 'y', 'z'):
        np.testing.assert_allclose(cloud[name], ref[name], rtol=2e-6, atol=1e-6, equal_nan=True)
    meas = cloud['provenance'] == Provenance.MEASURED
    assert meas.sum() > 100 and not np.allclose(cloud['x'][meas], d[meas] * 0)  # rotated, non-trivial


def test_missing_parameter_is_refused():
    with pytest.raises(ValueError, match='sigma.lr_gain'):
        TorchFrame({'sigma.disparity_px': 0.3})
