"""core.device_path: the device frame path's host buffers and body (CPU; CUDA-graph capture
and pinned memory are exercised on a GPU machine by ``geo-depth bench --pipeline``)."""
from __future__ import annotations

import gc

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from geo_depth_node.core.camera import CameraModel  # noqa: E402
from geo_depth_node.core.contract import POINT_DTYPE, Provenance  # noqa: E402
from geo_depth_node.core.device_path import IMAGE_NAMES, DeviceFramePath, HostRing  # noqa: E402
from geo_depth_node.core.pipeline import DepthPipeline  # noqa: E402
from geo_depth_node.core.scene import render_scene  # noqa: E402


def test_host_ring_reuses_a_buffer_only_when_nothing_refers_to_it():
    ring = HostRing(pin=False, max_buffers=2)
    t1, a1 = ring.acquire(96)
    view = a1[:48].view(np.float32)  # a FrameResult-like view keeps the buffer busy
    del a1
    t2, a2 = ring.acquire(96)
    assert t2.data_ptr() != t1.data_ptr() and ring.allocations == 2
    del a2
    gc.collect()
    t3, _ = ring.acquire(96)  # the second one is free again
    assert t3.data_ptr() == t2.data_ptr() and ring.allocations == 2
    # both kept buffers busy (view + the array held above): a transient third one
    t4, a4 = ring.acquire(96)
    assert t4.data_ptr() not in (t1.data_ptr(), t2.data_ptr()) and ring.allocations == 3
    del view, a4
    gc.collect()
    t5, _ = ring.acquire(96)
    assert t5.data_ptr() == t1.data_ptr()
    t6, _ = ring.acquire(40)  # another size: buffers of the old size are dropped
    assert t6.numel() == 40 and ring.allocations == 4
    with pytest.raises(ValueError, match='max_buffers'):
        HostRing(pin=False, max_buffers=0)


def _scene(w=96, h=72, seed=4):
    s = render_scene(w, h, seed=seed)
    models = [CameraModel.from_arrays(w, h, s.K, np.zeros(5), np.eye(3), P)
              for P in (s.P_left, s.P_right)]
    return s, models


def test_device_results_survive_the_next_frame():
    """Each FrameResult of the device path views its own downloaded buffer."""
    s, models = _scene()
    s2, _ = _scene(seed=7)
    pipe = DepthPipeline({'stereo.matcher': 'sgm_torch', 'stereo.device': 'cpu',
                          'stereo.num_disparities': 16})
    r1 = pipe.process(s.left, s.right, *models)
    keep = {k: getattr(r1, k).copy() for k in ('depth', 'sigma', 'points', 'provenance')}
    packed = r1.packed.tobytes()  # (a structured .copy() need not keep the padding bytes)
    r2 = pipe.process(s2.left, s2.right, *models)
    for k, v in keep.items():
        np.testing.assert_array_equal(getattr(r1, k), v, err_msg=k)
    assert r1.packed.tobytes() == packed
    assert not np.array_equal(np.nan_to_num(r2.depth), np.nan_to_num(r1.depth))
    # the views are consistent with each other: x y z of the cloud = points
    np.testing.assert_array_equal(r1.packed['z'], r1.points[..., 2])
    assert np.isfinite(r1.disparity).mean() > 0.3 and (r1.provenance == Provenance.MEASURED).any()


def test_device_path_with_image_masks_equals_host_path():
    """rectify: the valid masks travel in the same upload (K = 4) and give the host result."""
    s, models = _scene()
    params = {'stereo.matcher': 'sgm_torch', 'stereo.device': 'cpu', 'stereo.num_disparities': 16}
    pipe = DepthPipeline(params)
    dev = pipe.process(s.left, s.right, *models, rectify=True)
    assert tuple(pipe._device_path._staging.shape) == (4, 72, 96)
    pipe.device_path = False
    host = pipe.process(s.left, s.right, *models, rectify=True)
    np.testing.assert_array_equal(dev.provenance, host.provenance)
    np.testing.assert_array_equal(dev.flags, host.flags)
    np.testing.assert_allclose(dev.depth, host.depth, rtol=1e-5)


def test_body_buffer_layout():
    s, models = _scene()
    pipe = DepthPipeline({'stereo.matcher': 'sgm_torch', 'stereo.device': 'cpu',
                          'stereo.num_disparities': 16})
    from geo_depth_node.core.camera import StereoModel

    stereo = StereoModel.from_cameras(*models)
    path = DeviceFramePath(pipe.params, pipe.matcher, pipe.sigma_model, use_graph=True)
    assert not path.use_graph  # CPU: no graphs
    out = path.body(torch.from_numpy(np.stack([s.left, s.right])), stereo)
    h, w = s.left.shape
    assert out.dtype == torch.uint8 and out.numel() == h * w * (POINT_DTYPE.itemsize + 4 * len(IMAGE_NAMES))
    timings: dict[str, float] = {}
    import time

    v = path.run(s.left, s.right, None, None, stereo, timings, time.perf_counter)
    assert set(timings) == {'upload', 'match_triangulate_pack', 'host_views'}
    assert v['cloud'].tobytes() == out.numpy()[:h * w * POINT_DTYPE.itemsize].tobytes()
    np.testing.assert_array_equal(v['depth'], out.numpy()[h * w * POINT_DTYPE.itemsize:]
                                  .view(np.float32)[:h * w].reshape(h, w))
