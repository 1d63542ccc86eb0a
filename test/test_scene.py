"""Tests of the analytic stereo scene (geo_depth_node.core.scene) against its own exact truth."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from geo_depth_node.core.scene import StereoScene, render_scene


@functools.cache
def _scene(width: int = 320, height: int = 240, seed: int = 0, **kwargs) -> StereoScene:
    """Rendered scene, cached per argument set (callers must not modify the arrays)."""
    return render_scene(width, height, seed=seed, **kwargs)


def _pixel_grid(scene: StereoScene) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) pixel-centre coordinates, each (H, W) float64."""
    h, w = scene.depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    return u, v


def _back_project(scene: StereoScene) -> np.ndarray:
    """(H, W, 3) camera-frame points Z * ((u-cx)/fx, (v-cy)/fy, 1) of every pixel (metres)."""
    u, v = _pixel_grid(scene)
    fx, fy, cx, cy = scene.K[0, 0], scene.K[1, 1], scene.K[0, 2], scene.K[1, 2]
    z = scene.depth.astype(np.float64)
    return np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], axis=-1)


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``img`` at (x, y) (pixel-centre coordinates, inside the image)."""
    im = img.astype(np.float64)
    x0 = np.floor(x).astype(int)
    y0 = np.floor(y).astype(int)
    fx = x - x0
    fy = y - y0
    x1 = np.minimum(x0 + 1, img.shape[1] - 1)
    y1 = np.minimum(y0 + 1, img.shape[0] - 1)
    top = im[y0, x0] * (1 - fx) + im[y0, x1] * fx
    bot = im[y1, x0] * (1 - fx) + im[y1, x1] * fx
    return top * (1 - fy) + bot * fy


def _interior_same_surface(surface: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood lies inside the image and on one surface."""
    h, w = surface.shape
    ok = np.zeros((h, w), bool)
    ok[radius:h - radius, radius:w - radius] = True
    s = surface.astype(np.int16)
    for dv in range(-radius, radius + 1):
        for du in range(-radius, radius + 1):
            shifted = np.roll(np.roll(s, dv, axis=0), du, axis=1)
            ok &= shifted == s
    return ok


def _photometric_mad(scene: StereoScene, extra_shift: float, margin: int = 8) -> tuple[float, int]:
    """Mean |left(u, v) - right(u - d - extra_shift, v)| over textured, visible pixels.

    Uses textured (not sky, not the uniform patch), non-occluded pixels with
    disparity > 2 px, away from surface boundaries and from the image borders
    (also at the shifted position). Returns (MAD in DN, number of pixels).
    """
    h, w = scene.depth.shape
    u, v = _pixel_grid(scene)
    xr = u - scene.disparity.astype(np.float64) - extra_shift
    sel = ((scene.surface > 0) & ~scene.textureless & ~scene.occluded
           & (scene.disparity > 2.0) & _interior_same_surface(scene.surface, 2)
           & (xr >= margin) & (xr <= w - 1 - margin)
           & (u >= margin) & (u <= w - 1 - margin) & (v >= margin) & (v <= h - 1 - margin))
    right = _bilinear(scene.right, xr[sel], v[sel])
    left = scene.left[sel].astype(np.float64)
    return float(np.mean(np.abs(left - right))), int(sel.sum())


# --------------------------------------------------------------------------- determinism

def test_same_seed_is_byte_identical() -> None:
    a = render_scene(160, 120, seed=3)
    b = render_scene(160, 120, seed=3)
    for name in ('left', 'right', 'K', 'P_left', 'P_right', 'depth', 'disparity', 'surface',
                 'textureless', 'occluded'):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), name


def test_different_seed_differs() -> None:
    a = _scene(seed=0)
    b = _scene(seed=1)
    assert a.left.tobytes() != b.left.tobytes()
    assert a.right.tobytes() != b.right.tobytes()
    assert a.depth.tobytes() != b.depth.tobytes()  # the box layout depends on the seed


# --------------------------------------------------------------------------- layout of the outputs

def test_shapes_dtypes_and_projection_matrices() -> None:
    s = _scene()
    assert s.left.shape == s.right.shape == (240, 320)
    assert s.left.dtype == s.right.dtype == np.uint8
    assert s.depth.dtype == s.disparity.dtype == np.float32
    assert s.surface.dtype == np.uint8
    assert s.textureless.dtype == s.occluded.dtype == np.bool_
    fx = 0.9 * 320
    np.testing.assert_allclose(s.K, [[fx, 0, 159.5], [0, fx, 119.5], [0, 0, 1]])
    np.testing.assert_allclose(s.P_left, np.hstack([s.K, np.zeros((3, 1))]))
    np.testing.assert_allclose(s.P_right[:, :3], s.K)
    np.testing.assert_allclose(s.P_right[:, 3], [-fx * 0.12, 0.0, 0.0])
    assert s.baseline_m == 0.12 and s.camera_height_m == 1.5 and s.pitch_deg == 5.0


def test_custom_fx_is_used() -> None:
    s = render_scene(160, 120, fx=200.0, supersample=1)
    assert s.K[0, 0] == s.K[1, 1] == 200.0
    finite = np.isfinite(s.depth)
    np.testing.assert_allclose(s.disparity[finite], 200.0 * 0.12 / s.depth[finite], rtol=1e-6)


# --------------------------------------------------------------------------- truth consistency

def test_disparity_matches_depth_and_sky() -> None:
    s = _scene()
    finite = np.isfinite(s.depth)
    sky = s.surface == 0
    np.testing.assert_array_equal(~finite, sky)
    assert np.all(np.isposinf(s.depth[sky]))
    assert np.all(s.disparity[sky] == 0)
    assert np.all(s.depth[finite] > 0)
    fxb = s.K[0, 0] * s.baseline_m
    np.testing.assert_allclose(s.disparity[finite], fxb / s.depth[finite].astype(np.float64),
                               rtol=1e-6)
    assert not s.textureless[sky].any() and not s.occluded[sky].any()


@pytest.mark.parametrize('height_m, pitch_deg', [(1.5, 5.0), (2.3, 12.0)])
def test_ground_pixels_lie_on_ground_plane(height_m: float, pitch_deg: float) -> None:
    s = _scene(pitch_deg=pitch_deg, camera_height_m=height_m, supersample=1)
    ground = s.surface == 1
    assert ground.sum() > 0.2 * ground.size
    p = _back_project(s)[ground]
    # Ground plane in the camera optical frame (y down, pitched down by p): cos(p)*y + sin(p)*z = h.
    a = math.radians(pitch_deg)
    dist = np.abs(math.cos(a) * p[:, 1] + math.sin(a) * p[:, 2] - height_m)
    assert dist.max() < 1e-3


def test_horizon_row_separates_sky_and_ground() -> None:
    s = _scene()
    fy, cy = s.K[1, 1], s.K[1, 2]
    horizon_v = cy - fy * math.tan(math.radians(s.pitch_deg))
    v = np.arange(s.depth.shape[0])
    assert not (s.surface[v > horizon_v + 1e-9] == 0).any()  # nothing but ground/boxes below
    assert not (s.surface[v < horizon_v] == 1).any()  # no ground above the horizon


def test_box_pixels_lie_in_front_of_the_horizon_distance() -> None:
    s = _scene()
    boxes = s.surface >= 2
    assert boxes.any()
    assert s.depth[boxes].min() > 2.5 and s.depth[boxes].max() < 30.0


def test_occlusion_includes_the_left_border_band() -> None:
    s = _scene()
    u, _ = _pixel_grid(s)
    outside = np.isfinite(s.depth) & (u - s.disparity < -0.5)
    assert outside.any()
    assert s.occluded[outside].all()


# --------------------------------------------------------------------------- photometry

def test_right_image_matches_left_at_true_disparity() -> None:
    s = _scene(640, 480)  # the defaults
    mad, n = _photometric_mad(s, 0.0)
    mad_half, _ = _photometric_mad(s, 0.5)
    mad_wrong, _ = _photometric_mad(s, 3.0)
    assert n > 0.2 * s.depth.size
    assert mad < 2.5, mad  # noise (sigma 1 DN in each image) + interpolation error
    assert mad_half > 2.0 * mad, (mad, mad_half)
    assert mad_wrong > 8.0 * mad, (mad, mad_wrong)


def test_occluded_pixels_do_not_match() -> None:
    s = _scene(640, 480)
    w = s.depth.shape[1]
    u, v = _pixel_grid(s)
    xr = u - s.disparity.astype(np.float64)
    sel = (s.occluded & (s.surface > 0) & ~s.textureless & (xr >= 8) & (xr <= w - 9))
    assert sel.sum() > 500
    mad_occ = np.mean(np.abs(s.left[sel] - _bilinear(s.right, xr[sel], v[sel])))
    mad_vis, _ = _photometric_mad(s, 0.0)
    assert mad_occ > 10.0 * mad_vis, (mad_occ, mad_vis)


def test_noise_free_match_is_tighter() -> None:
    noisy, _ = _photometric_mad(_scene(), 0.0)
    clean, _ = _photometric_mad(_scene(noise_sigma=0.0), 0.0)
    wrong, _ = _photometric_mad(_scene(noise_sigma=0.0), 3.0)
    # 320x240: the 2 cm texture cells are near the pixel scale, so bilinear resampling
    # of the right image costs ~2 DN here (~1 DN at 640x480).
    assert clean < noisy and clean < 2.5, (clean, noisy)
    assert wrong > 5.0 * clean, (clean, wrong)


def test_texture_contrast_and_uniform_patch() -> None:
    s = _scene(noise_sigma=0.0)
    textured = (s.surface > 0) & ~s.textureless & _interior_same_surface(s.surface, 2)
    assert s.left[textured].astype(np.float64).std() > 20.0
    # Centre of the patch (away from its anti-aliased border) is perfectly uniform.
    core = s.textureless & _interior_same_surface(s.textureless.astype(np.uint8), 2)
    assert core.sum() > 100
    assert np.ptp(s.left[core]) == 0


def test_textureless_patch_can_be_disabled() -> None:
    s = _scene(textureless_patch=False)
    assert not s.textureless.any()


def test_sky_is_smooth_and_equal_in_both_images() -> None:
    s = _scene(noise_sigma=0.0)
    sky = (s.surface == 0) & _interior_same_surface(s.surface, 2)
    # The right pixel (u, v) shows what the left image shows at u + d; with sky on the
    # left over [u, u + 40] (more than any disparity above the horizon) it is sky too.
    run = 40
    sky_ahead = sky.copy()
    for du in range(1, run + 1):
        sky_ahead[:, :-du] &= sky[:, du:]
    sky_ahead[:, -run:] = False
    assert sky_ahead.sum() > 1000
    diff = np.abs(s.left.astype(int) - s.right.astype(int))[sky_ahead]
    assert diff.max() <= 1
    grad = np.abs(np.diff(s.left.astype(int), axis=1))[sky[:, 1:] & sky[:, :-1]]
    assert grad.max() <= 1


# --------------------------------------------------------------------------- content at the defaults

def test_default_scene_content_fractions() -> None:
    s = _scene(640, 480)  # the defaults
    finite = np.isfinite(s.depth)
    sky = float(np.mean(s.surface == 0))
    far_ground = float(np.mean(finite & (s.disparity < 1.0)))
    assert 0.05 < sky < 0.6
    assert far_ground > 0.002
    assert s.textureless.mean() >= 0.01
    assert s.occluded.any()
    assert len(np.unique(s.surface[s.surface >= 2])) >= 3
    # The large, roughly fronto-parallel front face at 4-8 m.
    near_face = (s.surface >= 2) & (s.depth > 4.0) & (s.depth < 8.0)
    assert near_face.mean() > 0.1


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize('kwargs', [
    {'width': 0}, {'height': 0}, {'width': -5}, {'width': 64.0},
    {'baseline_m': 0.0}, {'baseline_m': -0.1}, {'baseline_m': float('nan')},
    {'fx': 0.0}, {'camera_height_m': 0.0}, {'pitch_deg': 90.0},
    {'supersample': 0}, {'noise_sigma': -1.0}, {'seed': -1},
])
def test_bad_input_raises_value_error(kwargs: dict) -> None:
    args = {'width': 64, 'height': 48, **kwargs}
    with pytest.raises(ValueError) as info:
        render_scene(**args)
    bad = next(iter(kwargs.values()))
    assert repr(bad) in str(info.value)
