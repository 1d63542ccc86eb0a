"""The Triton kernels (core.sgm_triton) against the torch reference, bit for bit.

On a GPU machine they run compiled on CUDA; elsewhere in Triton's interpreter on the CPU
(conftest ``triton_device``), on smaller inputs because the interpreter is slow. Either way
the same kernel source is checked: census, cost, 8-path aggregation, selection, the fused
post-filter, the whole matcher, triangulation (constant and calibrated sigma) and packing.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('triton')

from geo_depth_node.core import sgm  # noqa: E402

# the interpreter evaluates both sides of tl.where with numpy: masked-out 0/0 warns
pytestmark = pytest.mark.filterwarnings('ignore:.*encountered in divide:RuntimeWarning')
from geo_depth_node.core.sgm import SGMConfig, TorchSGMMatcher  # noqa: E402
from test_sgm import _shift_pair  # noqa: E402


def _small(dev) -> bool:
    """Interpreter: keep the inputs small (seconds per kernel, not milliseconds)."""
    return dev.type == 'cpu'


def test_aggregation_equals_torch_on_random_volumes(triton_device):
    from geo_depth_node.core import sgm_triton as kt

    dev = triton_device
    g = torch.Generator().manual_seed(0)
    sizes = ((7, 11, 5, (8,)), (12, 9, 16, (0,))) if _small(dev) else \
        ((23, 37, 16, (0, 8)), (40, 29, 48, (0, 8)), (64, 96, 128, (0, 8)))
    for (h, w, d, ks) in sizes:
        cost = torch.randint(0, 63, (h, w, d), generator=g, dtype=torch.uint8)
        img = torch.randint(0, 256, (h, w), generator=g, dtype=torch.uint8)
        for k in ks:
            got = kt.aggregate_triton(cost.to(dev), img.to(dev), sgm.DIRECTIONS_8, 10, 120, k).cpu()
            for i, r in enumerate(sgm.DIRECTIONS_8):
                ref = sgm.aggregate_path_torch(cost, img, r, 10, 120, k)
                assert torch.equal(got[i].to(torch.int32), ref), (h, w, d, k, r)


def test_census_cost_select_equal_torch(triton_device):
    from geo_depth_node.core import sgm_triton as kt

    dev = triton_device
    h, w, nd = (14, 30, 8) if _small(dev) else (50, 90, 32)
    left, right = _shift_pair(h, w, 3.5 if _small(dev) else 6.5, seed=9)
    lt, rt = torch.from_numpy(left), torch.from_numpy(right)
    cl, cr = sgm.census_torch(lt), sgm.census_torch(rt)
    assert torch.equal(kt.census_triton(lt.to(dev), 9, 7).cpu(), cl)
    for mind in ((3,) if _small(dev) else (0, 3)):
        c_ref = sgm.cost_volume_torch(cl, cr, mind, nd, 62)
        c_dev = kt.cost_volume_triton(cl.to(dev), cr.to(dev), mind, nd, 62)
        assert torch.equal(c_dev.cpu(), c_ref)
        agg = kt.aggregate_triton(c_dev, lt.to(dev), sgm.DIRECTIONS_8, 10, 120, 8)
        s_ref = agg.to(torch.int32).sum(0).cpu()
        s, sel = kt.select_left_triton(agg, mind, 10, 0.01, 0)
        assert torch.equal(s.cpu().to(torch.int32), s_ref)
        ref = sgm.select_left_torch(s_ref, mind, 10, 0.01, 0)
        for key in ('min_cost', 'second_cost', 'unique'):
            assert torch.equal(sel[key].cpu(), ref[key]), key
        torch.testing.assert_close(sel['disparity'].cpu(), ref['disparity'], atol=1e-5, rtol=0)
        torch.testing.assert_close(sel['curvature'].cpu(), ref['curvature'], atol=1e-5, rtol=0)
        dr = kt.select_right_triton(s, mind, 0).cpu()
        dr_ref = sgm.select_right_torch(s_ref, mind, 0)
        torch.testing.assert_close(dr, dr_ref, atol=1e-5, rtol=0, equal_nan=True)
        assert int(torch.isfinite(sel['disparity']).sum()) > h * w // 2  # not vacuous


def test_triton_matcher_equals_torch_matcher(triton_device):
    from geo_depth_node.core.scene import render_scene

    dev = triton_device
    w, h, nd = (40, 24, 16) if _small(dev) else (256, 192, 32)
    sc = render_scene(w, h, seed=2)
    cfg = SGMConfig(num_disparities=nd)
    a = TorchSGMMatcher(cfg, 'cpu', use_triton=False).match(sc.left, sc.right)
    b = TorchSGMMatcher(cfg, dev, use_triton=True).match(sc.left, sc.right)
    # every stage is bit-exact (integer costs, correctly rounded divisions): identical results
    np.testing.assert_array_equal(a.flags, b.flags)
    np.testing.assert_array_equal(a.disparity, b.disparity)
    for k in sgm.FEATURE_NAMES:
        np.testing.assert_array_equal(a.features[k], b.features[k], err_msg=k)
    assert np.isfinite(a.disparity).mean() > 0.3


@pytest.mark.parametrize('kw', [{}, {'speckle_window_size': 0}, {'lr_check': False, 'min_texture': 0.0},
                                {'speckle_iterations': 2, 'speckle_window_size': 300}])
def test_postfilter_equals_label_matches(triton_device, kw):
    """The fused Triton post-filter (texture, LR, speckle, labels) is bit-exact with the torch one."""
    from geo_depth_node.core import sgm_triton as kt
    from geo_depth_node.core.scene import render_scene

    dev = triton_device
    w, h, nd = (44, 26, 16) if _small(dev) else (200, 120, 32)
    if _small(dev) and kw.get('speckle_window_size') == 300:
        kw = {**kw, 'speckle_window_size': 40}
    sc = render_scene(w, h, seed=3)
    cfg = SGMConfig(num_disparities=nd, **kw)
    m = TorchSGMMatcher(cfg, 'cpu')
    lt, rt = torch.from_numpy(sc.left), torch.from_numpy(sc.right)
    sel = m.select(m.aggregate(m.cost(lt, rt), lt))
    tex = sgm.texture_torch(lt, cfg.texture_window)
    rng = np.random.default_rng(0)
    lv = torch.from_numpy(rng.uniform(size=lt.shape) > 0.05)
    rv = torch.from_numpy(rng.uniform(size=lt.shape) > 0.05)
    for masks in ((None, None), (lv, rv)):
        ref = sgm.label_matches(cfg, sel['disparity'], sel['unique'], sel['disparity_right'], tex, *masks)
        got = kt.postfilter_triton(cfg, sel['disparity'].to(dev), sel['unique'].to(dev),
                                   sel['disparity_right'].to(dev), sel['min_cost'].int().to(dev),
                                   sel['second_cost'].int().to(dev), lt.to(dev),
                                   *(None if x is None else x.to(dev) for x in masks))
        got = {k: v.cpu() for k, v in got.items()}
        assert torch.equal(got['texture'], tex)
        assert torch.equal(got['flags'], ref['flags'])
        assert torch.equal(got['disparity'].nan_to_num(-1.0), ref['disparity'].nan_to_num(-1.0))
        assert torch.equal(got['lr_diff'], ref['lr_diff'])
        mc, m2 = sel['min_cost'].float(), sel['second_cost'].float()
        assert torch.equal(got['min_cost'], mc / cfg.paths)
        assert torch.equal(got['uniqueness'],
                           torch.where(m2 >= sgm._BIG, torch.zeros_like(mc), mc / m2.clamp_min(1.0)))
    assert int((ref['flags'] == 0).sum()) > (w * h) // 4  # not vacuous


def test_triangulate_and_pack_kernels_equal_torch(triton_device):
    """TorchFrame with the Triton kernels (constant and calibrated sigma) gives the same bytes
    as its torch ops, which test_torch_frame compares with the numpy pipeline."""
    from geo_depth_node.core.pipeline import DepthPipeline
    from geo_depth_node.core.torch_frame import TorchFrame, packed_to_numpy
    from test_torch_frame import _inputs, _stereo

    dev = triton_device
    stereo = _stereo()
    d, lr, flags = _inputs()
    rng = np.random.default_rng(3)
    sig = np.where(np.isfinite(d), rng.uniform(0.1, 3.0, d.shape), np.nan).astype(np.float32)
    for max_sigma in (0.0, 0.4):
        pl = DepthPipeline({'limit.max_sigma_m': max_sigma, 'limit.max_relative_sigma': 0.05})
        ref_frame = TorchFrame(pl.params, 'cpu', use_triton=False)
        k_frame = TorchFrame(pl.params, dev, use_triton=True)
        for sigma_d in (None, sig):
            args = [torch.from_numpy(x) for x in (d, lr, flags.astype(np.int32))]
            sd = None if sigma_d is None else torch.from_numpy(sigma_d)
            ref = ref_frame.triangulate(*args, stereo, sd)
            got = k_frame.triangulate(*(a.to(dev) for a in args), stereo,
                                      None if sd is None else sd.to(dev))
            for key in ('depth', 'depth_sigma', 'sigma', 'sigma_disparity', 'points'):
                np.testing.assert_array_equal(got[key].cpu().numpy(), ref[key].numpy(), err_msg=key)
            for key in ('provenance', 'flags', 'measured'):
                assert torch.equal(got[key].cpu(), ref[key]), key
            a = packed_to_numpy(k_frame.pack(got))
            b = packed_to_numpy(ref_frame.pack(ref))
            assert a.tobytes() == b.tobytes()
            assert (a['provenance'] == 1).sum() > 100


def test_device_frame_path_with_kernels_equals_torch(triton_device):
    """The device body (calibrated sigma, triangulation and packing kernels) gives the torch
    body's bytes; the matcher here is the torch one on both sides (its kernels are checked
    above)."""
    from geo_depth_node.core.camera import CameraModel, StereoModel
    from geo_depth_node.core.device_path import DeviceFramePath
    from geo_depth_node.core.pipeline import DepthPipeline
    from geo_depth_node.core.scene import render_scene

    dev = triton_device
    w, h = (64, 48) if _small(dev) else (256, 192)
    s = render_scene(w, h, seed=6)
    models = [CameraModel.from_arrays(w, h, s.K, np.zeros(5), np.eye(3), P)
              for P in (s.P_left, s.P_right)]
    stereo = StereoModel.from_cameras(*models)
    pipe = DepthPipeline({'stereo.matcher': 'sgm_torch', 'stereo.device': 'cpu',
                          'stereo.num_disparities': 16})
    assert pipe.sigma_model is not None
    ref = DeviceFramePath(pipe.params, pipe.matcher, pipe.sigma_model, use_triton=False)
    inputs = torch.from_numpy(np.stack([s.left, s.right]))
    a = ref.body(inputs, stereo)
    matcher = TorchSGMMatcher(pipe.matcher.config, dev, use_triton=dev.type == 'cuda')
    kpath = DeviceFramePath(pipe.params, matcher, pipe.sigma_model, use_graph=False,
                            use_triton=True)
    b = kpath.body(inputs.to(dev), stereo).cpu()
    assert torch.equal(a, b)


def test_raymarch_kernel_equals_torch_loop(triton_device):
    """The Triton ray-march kernel gives the torch loop's statuses and ranges (to the
    refinement tolerance) on rolling terrain with a nodata hole, a spike, sky and grazing rays,
    and the closed-form range on a plane."""
    from geo_depth_node.core.raycast import RayStatus, raycast
    from test_raycast import _camera_rays, _plane_field, _plane_range, _rolling_field

    dev = triton_device
    w, h = (24, 18) if _small(dev) else (320, 240)
    field = _rolling_field('cpu')
    fdev = field.to(dev)
    checked = 0
    seen = set()
    for (x, y, above), pitch, yaw in (((0.0, 0.0, 4.0), -12.0, 30.0), ((-30.0, 10.0, 2.0), -3.0, 160.0),
                                      ((80.0, -90.0, 15.0), -25.0, 110.0)):
        o = (x, y, float(field.sample(np.array([x]), np.array([y]))[0]) + above)
        d = _camera_rays(w, h, w * 0.8, pitch_deg=pitch, yaw_deg=yaw)
        ref = raycast(field, np.array(o), d, max_range_m=400.0, march='torch')
        got = raycast(fdev, np.array(o), d, max_range_m=400.0, march='triton')
        st_r, st_g = ref.status.numpy(), got.status.cpu().numpy()
        assert (st_r == st_g).mean() >= 0.995, np.unique(st_r[st_r != st_g])
        both = (st_r == RayStatus.HIT) & (st_g == RayStatus.HIT)
        np.testing.assert_allclose(got.range_m.cpu().numpy()[both], ref.range_m.numpy()[both],
                                   atol=2e-3, rtol=0)
        np.testing.assert_allclose(got.sigma_m.cpu().numpy()[both], ref.sigma_m.numpy()[both],
                                   rtol=1e-3)
        checked += int(both.sum())
        seen |= set(np.unique(st_g).tolist())
    # every outcome occurs: the comparison is not vacuous
    assert {RayStatus.HIT, RayStatus.SKY, RayStatus.UNAVAILABLE} <= seen, seen
    assert checked > 0.3 * 3 * w * h
    a, b, c = 0.05, 0.02, 1.0
    plane = _plane_field(a, b, c, half=300.0, device=dev)
    o = np.array([0.0, 0.0, 8.0])
    d = _camera_rays(w, h, w * 0.8)
    res = raycast(plane, o, d, max_range_m=500.0, march='triton')
    hit = res.status.cpu().numpy() == RayStatus.HIT
    assert hit.mean() > 0.3
    assert np.abs(res.range_m.cpu().double().numpy()[hit] - _plane_range(o, d, a, b, c)[hit]).max() < 2e-3


def test_raymarch_kernel_slope_steps_never_cross_the_terrain(triton_device):
    """Among 300 one-node spikes the kernel's slope-bound steps find the torch loop's crossings:
    0 of 2304 rays differed in the interpreter (with a slope bound 5x too small: 21)."""
    from geo_depth_node.core.raycast import RayStatus, raycast
    from test_raycast import _camera_rays
    from test_raycast_numba import _spiky_field

    dev = triton_device
    w, h = (24, 18) if _small(dev) else (160, 120)
    field = _spiky_field()
    fdev = field.to(dev)
    n = bad = hits = 0
    for (x, y, above), pitch, yaw in (((0.0, 0.0, 3.0), -6.0, 40.0), ((50.0, 20.0, 12.0), -2.0, 250.0),
                                      ((-20.0, -30.0, 6.0), -10.0, 130.0)):
        o = np.array([x, y, float(field.sample(np.array([x]), np.array([y]))[0]) + above])
        d = _camera_rays(w, h, w * 0.8, pitch_deg=pitch, yaw_deg=yaw)
        ref = raycast(field, o, d, max_range_m=250.0, march='torch')
        got = raycast(fdev, o, d, max_range_m=250.0, march='triton')
        st = got.status.cpu()
        both = (ref.status == RayStatus.HIT) & (st == RayStatus.HIT)
        bad += int((ref.status != st).sum())
        bad += int(((ref.range_m - got.range_m.cpu()).abs()[both] > 2e-3).sum())
        hits += int(both.sum())
        n += d.shape[0]
    assert hits > 0.5 * n
    assert bad <= 1e-4 * n, (bad, n)


def test_raymarch_kernel_after_coarse_skips(triton_device):
    """A lane turning fine after coarse skips sizes its slope-bound steps from the terrain where
    it turns: with the stale value from before the skips, all 11 of these rays (numba's
    failures, test_raycast_numba) jumped over their crossing in the interpreter."""
    from geo_depth_node.core.raycast import RayStatus, raycast
    from test_raycast import _rolling_field
    from test_raycast_numba import STALE_FA_RAYS, high_camera_rays

    field = _rolling_field('cpu')
    o, d = high_camera_rays()
    d = d[STALE_FA_RAYS]
    ref = raycast(field, o, d, max_range_m=400.0, march='torch')
    got = raycast(field.to(triton_device), o, d, max_range_m=400.0, march='triton')
    assert (ref.status == RayStatus.HIT).all()
    assert torch.equal(got.status.cpu(), ref.status)
    np.testing.assert_allclose(got.range_m.cpu().numpy(), ref.range_m.numpy(), atol=2e-3)


def test_raymarch_kernel_nodata_inside_a_bracket(triton_device):
    """A one-node nodata hole between two samples of a coarse step: the bisection meets NaN and
    both implementations call the ray UNAVAILABLE (not a HIT through the hole)."""
    from geo_depth_node.core.raycast import RayStatus, raycast
    from test_raycast import _plane_field

    dev = triton_device
    f = _plane_field(0.0, 0.0, 0.0, cell=1.0, half=40.0)
    h = f.height.clone()
    h[40, 60] = float('nan')  # the node at x = 20 m, y = 0
    h[75, 5] = 5.0  # a spike far off: z_max above the camera, so the ray is marched from 0
    f = type(f)(h, f.x0_m, f.y0_m, f.cell_m)
    o = np.array([0.0, 0.0, 2.0])
    xs = np.linspace(19.2, 20.8, 9)
    ys = np.linspace(-0.8, 0.8, 5)
    tx, ty = np.meshgrid(xs, ys)
    d = np.stack([tx.ravel(), ty.ravel(), -2.0 * np.ones(tx.size)], -1)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    n_unavailable = 0
    for step in (2.5, 3.0, 3.7):
        ref = raycast(f, o, d, max_range_m=60.0, step_m=step, march='torch')
        got = raycast(f.to(dev), o, d, max_range_m=60.0, step_m=step, march='triton')
        assert torch.equal(got.status.cpu(), ref.status), step
        n_unavailable += int((ref.status == RayStatus.UNAVAILABLE).sum())
        both = (ref.status == RayStatus.HIT).numpy()
        np.testing.assert_allclose(got.range_m.cpu().numpy()[both], ref.range_m.numpy()[both], atol=2e-3)
    assert n_unavailable > 0
