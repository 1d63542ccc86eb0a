"""Fault suite: property-based tests (hypothesis) over every decoder and validator of input
the node does not control, and through the whole frame path.

The property, everywhere: an input is either refused with a clear error (a ValueError with a
message) or accepted as something usable; no other exception escapes (TypeError, IndexError,
ZeroDivisionError, OverflowError, cv2.error, RuntimeError, numpy's LinAlgError, ...), and what
is accepted keeps its promises (finite, in range, of the declared type; a calibration the
pipeline can use; a pose that is a pose). The inputs are duck-typed message objects
(``types.SimpleNamespace``) with the fields of the ROS messages, as the other tests use.

Callbacks that only buffer (``PoseEstimator.add_*``, ``OdometryPoseSource.add_odometry``,
``pose_at``) must not raise at all: the node calls them from its subscriptions without a
``try`` (bad samples are counted, not raised).

Every test is derandomized (one fixed sequence of examples, reproducible in CI); a failure
prints hypothesis' minimal falsifying example and the exception.
"""
from __future__ import annotations

import array
import datetime
import math
import string
from types import SimpleNamespace as NS
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from geo_depth_node.core.camera import (SUPPORTED_DISTORTION_MODELS, CameraModel, Rectifier,
                                        StereoModel, camera_model_from_msg, ray_norms)
from geo_depth_node.core.cloud import pack_points
from geo_depth_node.core.contract import Provenance
from geo_depth_node.core.images import SUPPORTED_ENCODINGS, image_from_msg, to_gray8
from geo_depth_node.core.params import PARAMETERS, PARAMS_BY_NAME, ParamSpec, validate_params

#: Reproducible in CI: one fixed example sequence, no example database, no deadline; no
#: "explain" phase (it re-runs a failure many times; the shrunk example is what matters).
FAULT = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                 print_blob=False,
                 phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink))
FAST = settings(FAULT, max_examples=300)
SLOW = settings(FAULT, max_examples=60)
E2E = settings(FAULT, max_examples=120)

NAN, INF = float('nan'), float('inf')
#: Numbers a corrupted or careless message carries.
NASTY_FLOATS = (NAN, INF, -INF, 1e40, -1e40, 0.0, -0.0, -1.0, 1e-300, 1e308, -1e308, 5e-324,
                3.5e38, 1e20)
T0_NS = 1_700_000_000 * 1_000_000_000


def value_error_or(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Exception | None]:
    """(fn(*args, **kwargs), None), or (None, the ValueError) when it refuses the input with a
    message; any other exception propagates (and fails the test with its traceback)."""
    try:
        return fn(*args, **kwargs), None
    except ValueError as exc:
        assert str(exc).strip(), f'{getattr(fn, "__qualname__", fn)} raised {type(exc).__name__} ' \
                                 f'without a message'
        return None, exc


def nasty_float() -> st.SearchStrategy[float]:
    """Any float, the hostile ones often."""
    return st.one_of(st.sampled_from(NASTY_FLOATS), st.floats())


def log_uniform(lo_exp: float, hi_exp: float) -> st.SearchStrategy[float]:
    """10**x for x uniform in [lo_exp, hi_exp] (with the ends)."""
    return st.one_of(st.sampled_from([10.0 ** lo_exp, 10.0 ** hi_exp]),
                     st.floats(lo_exp, hi_exp).map(lambda x: 10.0 ** x))


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, picked with the given integer weights (``st.one_of`` would
    merge repeated strategies instead of weighting them); shrinks towards the first."""
    total = sum(w for w, _ in choices)

    def pick(i: int) -> st.SearchStrategy[Any]:
        for w, strategy in choices:
            if i < w:
                return strategy
            i -= w
        raise AssertionError(i)

    return st.integers(0, total - 1).flatmap(pick)


def stamp_of(t_ns: int) -> NS:
    """builtin_interfaces/Time of a stamp in ns."""
    return NS(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)


def header(t_ns: int = T0_NS, frame_id: str = 'f') -> NS:
    """std_msgs/Header."""
    return NS(stamp=stamp_of(t_ns), frame_id=frame_id)


# ============================================================================= images
DATA_KINDS = ('bytes', 'bytearray', 'array', 'ndarray', 'memoryview')


def _wrap_data(raw: bytes, kind: str) -> Any:
    """The pixel buffer as rclpy (array.array('B')), rosbags (ndarray) or plain bytes give it."""
    if kind == 'bytearray':
        return bytearray(raw)
    if kind == 'array':
        return array.array('B', raw)
    if kind == 'ndarray':
        return np.frombuffer(raw, np.uint8).copy()
    if kind == 'memoryview':
        return memoryview(raw)
    return raw


@st.composite
def image_msgs(draw: st.DrawFn) -> NS:
    """sensor_msgs/Image with arbitrary width/height/step/encoding/is_bigendian/data length,
    often consistent enough to decode."""
    encoding = draw(st.one_of(st.sampled_from(SUPPORTED_ENCODINGS),
                              st.sampled_from(['yuv422', '', 'MONO8', '32FC3', 'bayer_rggb8',
                                               '16SC1', '64FC1', 'rgb16']),
                              st.text(max_size=8)))
    width = draw(st.one_of(st.integers(1, 24), st.integers(-3, 0),
                           st.sampled_from([2 ** 31, 2 ** 32 - 1, 10 ** 9])))
    height = draw(st.one_of(st.integers(1, 24), st.integers(-3, 0),
                            st.sampled_from([2 ** 31, 2 ** 32 - 1, 10 ** 9])))
    bpp = {'mono8': 1, '8UC1': 1, 'mono16': 2, '16UC1': 2, 'rgb8': 3, 'bgr8': 3, '8UC3': 3,
           'rgba8': 4, 'bgra8': 4, '32FC1': 4}.get(encoding, draw(st.integers(1, 4)))
    row = max(width, 0) * bpp
    step = draw(st.one_of(st.just(row), st.integers(row, row + 9),
                          st.integers(-5, max(row - 1, -5)),
                          st.sampled_from([0, -1, 2 ** 31, 2 ** 64])))
    need = step * (max(height, 1) - 1) + row if step >= 0 else 0
    n = draw(st.one_of(st.just(need), st.integers(0, 4 * 24 * 24 + 64),
                       st.integers(max(need - 3, 0), need + 3))) if need <= 8192 \
        else draw(st.integers(0, 8192))
    raw = draw(st.binary(min_size=n, max_size=n)) if n <= 2048 else bytes(range(256)) * (n // 256) \
        + bytes(n % 256)
    return NS(header=header(), width=width, height=height, encoding=encoding,
              is_bigendian=draw(st.one_of(st.integers(0, 1), st.integers(2, 255))),
              step=step, data=_wrap_data(raw, draw(st.sampled_from(DATA_KINDS))))


@FAST
@given(msg=image_msgs(), mono16_max=st.integers(0, 65535))
@example(msg=NS(header=header(), width=1, height=1, encoding='mono8', is_bigendian=0,
                step=2 ** 64, data=b'\0'), mono16_max=0)  # a step no C long holds
def test_image_decoder_refuses_or_decodes(msg: NS, mono16_max: int) -> None:
    """image_from_msg and to_gray8 (as the node calls them): a ValueError, or an (H, W[, C])
    array of the encoding's dtype and its (H, W) uint8 grey image."""
    img, _ = value_error_or(image_from_msg, msg)
    if img is None:
        return
    assert img.shape[:2] == (msg.height, msg.width)
    assert img.flags['C_CONTIGUOUS']
    ref = float(img.max()) if msg.encoding in ('mono16', '16UC1') else None
    gray, _ = value_error_or(to_gray8, img, msg.encoding, mono16_max, ref)
    if gray is not None:
        assert gray.shape == (msg.height, msg.width) and gray.dtype == np.uint8


# ============================================================================= CameraInfo
DISTORTION_MODELS = SUPPORTED_DISTORTION_MODELS + ('fisheye', 'PLUMB_BOB', 'kannala_brandt',
                                                   'rational', ' ')


def rotation_from_vector(w: np.ndarray) -> np.ndarray:
    """Rodrigues: the proper rotation of a rotation vector."""
    th = float(np.linalg.norm(w))
    if th < 1e-12:
        return np.eye(3)
    k = np.asarray(w, dtype=np.float64) / th
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(th) * kx + (1 - math.cos(th)) * (kx @ kx)


@st.composite
def rotations(draw: st.DrawFn, max_angle: float = math.pi, proper: bool = False) -> np.ndarray:
    """A proper rotation (often identity), or (unless ``proper``) with some probability a
    matrix that is not one: sheared (det 1, not orthonormal), scaled, reflected or
    degenerate."""
    kind = draw(st.sampled_from(['identity', 'rotation', 'rotation', 'rotation'] + (
        [] if proper else ['shear', 'scaled', 'reflection', 'zero', 'near'])))
    w = np.array(draw(st.lists(st.floats(-1, 1), min_size=3, max_size=3)))
    r = rotation_from_vector(w / max(np.linalg.norm(w), 1e-9)
                             * draw(st.floats(0, max_angle)))
    if kind == 'identity':
        return np.eye(3)
    if kind == 'shear':
        s = np.eye(3)
        s[0, 1] = draw(st.sampled_from([0.05, 0.5, 3.0, -1.0, 100.0]))
        return r @ s  # det 1: a determinant test does not see it
    if kind == 'scaled':
        return r * draw(st.sampled_from([0.5, 2.0, 1.01, 0.999]))
    if kind == 'reflection':
        return r @ np.diag([1.0, 1.0, -1.0])
    if kind == 'zero':
        return np.zeros((3, 3))
    if kind == 'near':
        return r + draw(st.sampled_from([1e-4, 1e-2, 0.1])) * np.ones((3, 3))
    return r


@st.composite
def corrupt(draw: st.DrawFn, values: list[float], max_hits: int = 3) -> list[float]:
    """``values`` with up to ``max_hits`` entries replaced by hostile numbers."""
    out = list(values)
    for _ in range(draw(st.integers(0, max_hits))):
        if out:
            out[draw(st.integers(0, len(out) - 1))] = draw(nasty_float())
    return out


@st.composite
def resized(draw: st.DrawFn, values: list[float]) -> list[float]:
    """``values``, or (rarely) too short / too long."""
    n = draw(st.sampled_from([len(values)] * 8 + [0, len(values) - 1, len(values) + 1, 16]))
    return (values + [0.0] * n)[:n]


@st.composite
def camera_info_pairs(draw: st.DrawFn, sane_size: bool = False) -> tuple[NS, NS]:
    """Two sensor_msgs/CameraInfo of a stereo pair: plausible, then corrupted (K/D/R/P with
    NaN/inf/1e40/0/negative entries and wrong lengths, D of 0..20 coefficients, distortion
    models, binning, ROI)."""
    if sane_size:
        w, h = draw(st.integers(16, 96)), draw(st.integers(12, 72))
    else:
        w = draw(st.one_of(st.integers(16, 96), st.sampled_from([0, -1, 1, 2 ** 31])))
        h = draw(st.one_of(st.integers(12, 72), st.sampled_from([0, -1, 1, 2 ** 31])))
    fx = draw(st.one_of(st.floats(20, 2000), st.sampled_from([1e-3, 1e-30, 1e40, 1e10])))
    fy = fx * draw(st.sampled_from([1.0, 1.0, 1.0, 0.5, 2.0]))
    cx = w / 2 + draw(st.floats(-10, 10))
    cy = h / 2 + draw(st.floats(-10, 10))
    baseline = draw(st.one_of(st.floats(0.01, 2.0), st.sampled_from([1e-9, 1e30, 0.0, -0.1])))
    model = draw(st.sampled_from(DISTORTION_MODELS))
    n_d = draw(st.one_of(st.sampled_from([5, 5, 8, 4, 0]), st.integers(0, 20)))
    msgs = []
    for side in ('left', 'right'):
        k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        d = draw(st.lists(st.floats(-0.5, 0.5), min_size=n_d, max_size=n_d))
        r = draw(rotations()).reshape(-1).tolist()
        tx = 0.0 if side == 'left' else -fx * baseline
        dcx = 0.0 if side == 'left' else draw(st.sampled_from([0.0, 0.0, 3.0, -2.5]))
        p = [fx, 0.0, cx - dcx, tx, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        roi = draw(st.sampled_from(['none'] * 6 + ['full', 'window', 'offset']))
        roi_fields = {'none': (0, 0, 0, 0), 'full': (0, 0, h, w), 'window': (2, 3, h // 2, w // 2),
                      'offset': (5, 5, 0, 0)}[roi]
        msgs.append(NS(
            header=header(frame_id=f'{side}_optical'), width=w, height=h,
            distortion_model=model,
            d=draw(corrupt(d, 2)), k=draw(resized(draw(corrupt(k)))),
            r=draw(resized(draw(corrupt(r, 2)))), p=draw(resized(draw(corrupt(p)))),
            binning_x=draw(st.sampled_from([0] * 6 + [1, 2, 4])),
            binning_y=draw(st.sampled_from([0] * 6 + [1, 2, 4])),
            roi=NS(x_offset=roi_fields[0], y_offset=roi_fields[1], height=roi_fields[2],
                   width=roi_fields[3], do_rectify=roi != 'none')))
    return msgs[0], msgs[1]


def _is_full_frame(msg: NS) -> bool:
    """No binning and no region of interest: the CameraInfo describes the whole image."""
    roi = msg.roi
    whole = (roi.x_offset, roi.y_offset, roi.width, roi.height) in ((0, 0, 0, 0),
                                                                   (0, 0, msg.width, msg.height))
    return msg.binning_x in (0, 1) and msg.binning_y in (0, 1) and whole


def assert_usable_camera(model: CameraModel, msg: NS) -> None:
    """What an accepted CameraInfo promises the pipeline."""
    assert _is_full_frame(msg), (
        f'CameraInfo with binning {msg.binning_x}x{msg.binning_y} / ROI {vars(msg.roi)} was '
        f'accepted: the node would treat a sub-sampled or cropped image as the full frame')
    for name in ('K', 'D', 'R', 'P'):
        a = getattr(model, name)
        assert np.all(np.isfinite(a)), f'{name} accepted with non-finite values {a.tolist()}'
    err = float(np.abs(model.R @ model.R.T - np.eye(3)).max())
    assert err <= 1e-2 and np.linalg.det(model.R) > 0, \
        f'R accepted but it is not a rotation (|R R^T - I| = {err:.3g}): {model.R.tolist()}'
    f32 = np.float32(np.array([model.fx, model.fy, model.cx, model.cy, model.Tx]))
    assert np.all(np.isfinite(f32)), f'P does not fit the float32 frame path: {model.P.tolist()}'
    norms = ray_norms(model)
    assert np.all(np.isfinite(norms)), (f'pixel rays are not finite in float32 for fx={model.fx}, '
                                        f'fy={model.fy}')


@FAULT
@given(pair=camera_info_pairs())
def test_camera_info_decoder_refuses_or_gives_a_usable_camera(pair: tuple[NS, NS]) -> None:
    """camera_model_from_msg: a ValueError, or a camera whose numbers the pipeline can use
    (finite, an orthonormal R, float32-representable, full frame), and whose rectification
    maps OpenCV can build."""
    msg = pair[0]
    model, _ = value_error_or(camera_model_from_msg, msg)
    if model is None:
        return
    assert_usable_camera(model, msg)
    if model.width * model.height <= 10 ** 6:
        image = np.zeros((model.height, model.width), np.uint8)
        out, _ = value_error_or(Rectifier().rectify, image, model)
        if out is not None:
            assert out[0].shape == image.shape and out[1].shape == image.shape


def sane_info(w: int = 64, h: int = 48, fx: float = 300.0, tx: float = 0.0,
              model: str = 'plumb_bob', d: list[float] | None = None,
              r: np.ndarray | None = None) -> NS:
    """A plausible sensor_msgs/CameraInfo (full frame, no binning) to change one thing of."""
    k = [fx, 0.0, w / 2, 0.0, fx, h / 2, 0.0, 0.0, 1.0]
    return NS(header=header(frame_id='cam'), width=w, height=h, distortion_model=model,
              d=[0.0] * 5 if d is None else list(d), k=k,
              r=(np.eye(3) if r is None else r).reshape(-1).tolist(),
              p=[fx, 0.0, w / 2, tx, 0.0, fx, h / 2, 0.0, 0.0, 0.0, 1.0, 0.0],
              binning_x=0, binning_y=0,
              roi=NS(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


@FAULT
@given(bx=st.sampled_from([0, 1, 2, 4]), by=st.sampled_from([0, 1, 2, 4]),
       roi=st.sampled_from([(0, 0, 0, 0), (0, 0, 48, 64), (2, 3, 24, 32), (5, 5, 0, 0),
                            (0, 0, 24, 64), (0, 0, 48, 32)]))
def test_camera_info_with_binning_or_a_roi_is_refused(bx: int, by: int,
                                                     roi: tuple[int, int, int, int]) -> None:
    """binning_x/y > 1 or a region of interest smaller than the image: the pixels are not the
    ones K/P describe; refused (ValueError), not treated as the full frame."""
    msg = sane_info()
    msg.binning_x, msg.binning_y = bx, by
    msg.roi = NS(x_offset=roi[0], y_offset=roi[1], height=roi[2], width=roi[3],
                 do_rectify=roi != (0, 0, 0, 0))
    model, _ = value_error_or(camera_model_from_msg, msg)
    if model is not None:
        assert_usable_camera(model, msg)


@FAULT
@given(r=rotations())
def test_camera_info_r_must_be_a_rotation(r: np.ndarray) -> None:
    """R (optical -> rectified frame) that is not orthonormal (sheared with det 1, scaled,
    reflected, all-zero = monocular identity): refused, or accepted only as a rotation."""
    msg = sane_info(r=r)
    model, _ = value_error_or(camera_model_from_msg, msg)
    if model is not None:
        assert_usable_camera(model, msg)


@FAULT
@given(model=st.sampled_from(DISTORTION_MODELS), n=st.integers(0, 20),
       k1=st.floats(-0.3, 0.3))
def test_camera_info_distortion_of_any_length_refuses_or_rectifies(model: str, n: int,
                                                                   k1: float) -> None:
    """D of 0..20 coefficients with every distortion model: refused, or rectification maps
    OpenCV can build (no cv2.error when the first raw frame arrives)."""
    msg = sane_info(model=model, d=([k1] + [0.01] * 19)[:n])
    cam, _ = value_error_or(camera_model_from_msg, msg)
    if cam is None:
        return
    out, _ = value_error_or(Rectifier().rectify, np.zeros((48, 64), np.uint8), cam)
    if out is not None:
        assert out[0].shape == (48, 64)


@FAULT
@given(fx=log_uniform(-40, 40))
@example(fx=1e-20)
def test_camera_info_focal_length_of_any_magnitude(fx: float) -> None:
    """fx = fy from 1e-40 to 1e40 px: refused, or a camera the float32 frame path can use
    (finite focal lengths and pixel rays)."""
    msg = sane_info(fx=fx)
    model, _ = value_error_or(camera_model_from_msg, msg)
    if model is not None:
        assert_usable_camera(model, msg)


@FAULT
@given(fx=log_uniform(-3, 12), baseline=st.one_of(log_uniform(-12, 40),
                                                   st.sampled_from([0.0, -0.1, -1e30])))
def test_stereo_baseline_of_any_magnitude(fx: float, baseline: float) -> None:
    """Baselines from 1e-12 to 1e40 m (and 0, negative) with fx 1e-3..1e12 px: refused, or a
    pair whose f*B is a positive float32 (the frame path divides it by the disparity)."""
    left, _ = value_error_or(camera_model_from_msg, sane_info(fx=fx))
    right, _ = value_error_or(camera_model_from_msg, sane_info(fx=fx, tx=-fx * baseline))
    if left is None or right is None:
        return
    stereo, _ = value_error_or(StereoModel.from_cameras, left, right)
    if stereo is not None:
        fb = np.float32(stereo.fb)
        assert np.isfinite(fb) and fb > 0, f'f*B = {stereo.fb} (fx {fx}, B {baseline}) accepted'


@FAULT
@given(pair=camera_info_pairs())
def test_stereo_pair_validator_refuses_or_gives_usable_geometry(pair: tuple[NS, NS]) -> None:
    """StereoModel.from_cameras on two accepted cameras: a ValueError, or a pair with a
    positive, finite baseline and f*B, delta_cx finite (also in float32, as the frame path
    computes depth = f*B / (d - delta_cx))."""
    left, _ = value_error_or(camera_model_from_msg, pair[0])
    right, _ = value_error_or(camera_model_from_msg, pair[1])
    if left is None or right is None:
        return
    stereo, _ = value_error_or(StereoModel.from_cameras, left, right)
    if stereo is None:
        return
    assert math.isfinite(stereo.baseline_m) and stereo.baseline_m > 0, stereo.baseline_m
    fb, dcx = np.float32(stereo.fb), np.float32(stereo.delta_cx)
    assert np.isfinite(fb) and fb > 0, f'f*B = {stereo.fb} is not a positive float32'
    assert np.isfinite(dcx), f'delta_cx = {stereo.delta_cx}'


@FAULT
@given(w=st.floats(-1, 1), kfx=st.sampled_from([0.0, -0.0, -300.0]), which=st.sampled_from('xy'))
def test_rectify_refuses_a_singular_raw_camera_matrix(w: float, kfx: float, which: str) -> None:
    """rectify: true with a raw K whose focal length is zero or negative (a camera that was
    never calibrated publishes K = 0): refused with a ValueError, by the CameraInfo check or
    by the pipeline, never rectified into an image of replicated columns labelled valid."""
    pipe = _pipeline()
    k = [300.0, 0.0, 32.0, 0.0, 300.0, 24.0, 0.0, 0.0, 1.0]
    k[0 if which == 'x' else 4] = kfx
    r = rotation_from_vector(np.array([0.0, w * 0.1, 0.0])).reshape(-1)
    models = []
    for tx in (0.0, -300.0 * 0.1):
        m, err = value_error_or(CameraModel.from_arrays, 64, 48, k, np.zeros(5), r,
                                [300.0, 0.0, 32.0, tx, 0.0, 300.0, 24.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        if m is None:
            return  # refused by the CameraInfo check: fine
        models.append(m)
    left_img, right_img = _images()
    res, err = value_error_or(pipe.process, left_img, right_img, *models, rectify=True)
    assert res is None, (f'rectify with K[{which}] focal length {kfx} was accepted: '
                         f'{res.class_fractions()}')


# ============================================================================= end to end
W, H, SHIFT = 64, 48, 12


def _images() -> tuple[np.ndarray, np.ndarray]:
    """A textured pair (left[x] = right[x - SHIFT]: disparity SHIFT) of W x H."""
    rng = np.random.default_rng(7)
    ext = rng.integers(0, 256, (H, W + SHIFT)).astype(np.uint8)
    import cv2

    ext = cv2.GaussianBlur(ext, (3, 3), 0)
    return np.ascontiguousarray(ext[:, :W]), np.ascontiguousarray(ext[:, SHIFT:])


_PIPES: dict[str, Any] = {}


def _pipeline() -> Any:
    """The default CPU pipeline (opencv_sgbm) with 16 disparities, made once."""
    if 'p' not in _PIPES:
        from geo_depth_node.core.pipeline import DepthPipeline

        _PIPES['p'] = DepthPipeline({'stereo.matcher': 'opencv_sgbm',
                                     'stereo.num_disparities': 16})
    return _PIPES['p']


@st.composite
def calibrations(draw: st.DrawFn) -> dict[str, Any]:
    """A random stereo calibration of a W x H pair: fx 1e-3..1e40, baseline 1e-9..1e30, random
    rectification rotations, D of 0..14 coefficients, K like P or not, rectify or not. Two
    thirds of the draws stay where a calibration may be accepted (fx <= 1e6 px, B <= 100 m, a
    proper R, a D length OpenCV takes), so that the pipeline itself is exercised."""
    fx = draw(weighted((2, log_uniform(-3, 6)), (1, log_uniform(-3, 40))))
    fy = fx * draw(st.sampled_from([1.0, 1.0, 0.5, 3.0]))
    baseline = draw(weighted((2, log_uniform(-9, 2)), (1, log_uniform(-9, 30))))
    cx = draw(st.one_of(st.just(W / 2), st.floats(-50, 120), st.sampled_from([0.0, W - 1.0])))
    cy = draw(st.one_of(st.just(H / 2), st.floats(-50, 100)))
    dcx = draw(st.sampled_from([0.0, 0.0, 2.0, -3.0, 15.5, 100.0, -1e3]))
    kfx = draw(st.one_of(st.just(fx), log_uniform(-3, 6)))
    model = draw(st.sampled_from(['plumb_bob', 'rational_polynomial', 'equidistant', '']))
    usual = [0, 4] if model == 'equidistant' else [0, 4, 5, 8, 12, 14]
    n_d = draw(weighted((2, st.sampled_from(usual)), (1, st.sampled_from([0, 4, 5, 8, 12, 14]))))
    d = draw(st.lists(st.one_of(st.floats(-0.3, 0.3), st.sampled_from([5.0, -20.0, 1e3])),
                      min_size=n_d, max_size=n_d))
    cams = []
    for side in ('left', 'right'):
        tx = 0.0 if side == 'left' else -fx * baseline
        c = cx if side == 'left' else cx - dcx
        cams.append(dict(
            K=[kfx, 0.0, W / 2, 0.0, kfx * fy / fx, H / 2, 0.0, 0.0, 1.0], D=d,
            R=draw(rotations(max_angle=draw(st.sampled_from([0.05, 0.5, math.pi])),
                             proper=draw(st.sampled_from([True, True, True, False])))),
            P=[fx, 0.0, c, tx, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0], model=model))
    return {'left': cams[0], 'right': cams[1], 'rectify': draw(st.booleans())}


def assert_contract(res: Any, params: dict[str, Any]) -> None:
    """The point cloud contract on one FrameResult (README, core/contract.py)."""
    from geo_depth_node.tools.replay import count_violations

    prov, flags, pts, sigma = res.provenance, res.flags, res.points, res.sigma
    assert set(np.unique(prov).tolist()) <= {int(p) for p in Provenance}
    point = prov != np.uint8(Provenance.NONE)
    bad = point & ~(np.all(np.isfinite(pts), axis=-1) & np.isfinite(sigma))
    for cls in (Provenance.MEASURED, Provenance.FUSED, Provenance.PRIOR):
        sel = bad & (prov == np.uint8(cls))
        assert not sel.any(), (
            f'{int(sel.sum())} {cls.name} points with non-finite x/y/z or sigma, e.g. '
            f'{pts[sel][:2].tolist()} sigma {sigma[sel][:2].tolist()}')
    assert np.all(sigma[point] > 0), f'points with sigma <= 0: {sigma[point & (sigma <= 0)][:3]}'
    none = ~point
    assert not np.any(none & (flags == 0)), f'{int((none & (flags == 0)).sum())} NONE without flag'
    assert np.all(np.isnan(pts[none])) and np.all(np.isnan(sigma[none]))
    viol = count_violations(res, params['limit.max_relative_sigma'], params['limit.max_sigma_m'])
    assert viol == {'measured_beyond_limit': 0, 'nan_without_flag': 0}, viol
    assert np.array_equal(np.isfinite(res.depth), np.isfinite(res.depth_sigma)), \
        'depth and depth_sigma are not finite at the same pixels'
    cloud = pack_points(res, organized=True)
    cp = cloud['provenance'] != np.uint8(Provenance.NONE)
    xyzs = np.stack([cloud[k] for k in ('x', 'y', 'z', 'sigma')], axis=-1)
    assert np.all(np.isfinite(xyzs[cp])), 'the packed cloud has non-finite points'


@E2E
@given(cal=calibrations())
def test_pipeline_refuses_or_keeps_the_contract_for_any_calibration(cal: dict[str, Any]) -> None:
    """DepthPipeline.process (default CPU path) with random calibrations: a ValueError, or a
    FrameResult in which no MEASURED/FUSED/PRIOR point has a non-finite x/y/z or sigma, every
    NONE point has a flag, and the rest of the contract holds."""
    pipe = _pipeline()
    models = []
    for side in ('left', 'right'):
        c = cal[side]
        m, _ = value_error_or(CameraModel.from_arrays, W, H, c['K'], c['D'], c['R'], c['P'],
                              c['model'], side)
        if m is None:
            return
        models.append(m)
    left_img, right_img = _images()
    res, _ = value_error_or(pipe.process, left_img, right_img, *models, rectify=cal['rectify'])
    if res is not None:
        assert_contract(res, pipe.params)


def test_pipeline_keeps_the_contract_on_a_plain_calibration() -> None:
    """The end-to-end property is not vacuous: a sane calibration gives MEASURED points."""
    pipe = _pipeline()
    lm = CameraModel.from_arrays(W, H, [100, 0, 32, 0, 100, 24, 0, 0, 1], [], np.eye(3),
                                 [100, 0, 32, 0, 0, 100, 24, 0, 0, 0, 1, 0])
    rm = CameraModel.from_arrays(W, H, [100, 0, 32, 0, 100, 24, 0, 0, 1], [], np.eye(3),
                                 [100, 0, 32, -10.0, 0, 100, 24, 0, 0, 0, 1, 0])
    res = pipe.process(*_images(), lm, rm)
    assert_contract(res, pipe.params)
    assert res.class_fractions()['MEASURED'] > 0.3


# ============================================================================= pose inputs
def _quat(draw: st.DrawFn) -> list[float]:
    q = np.array(draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4))) + [0, 0, 0, 1e-3]
    return (q / np.linalg.norm(q)).tolist()


@st.composite
def navsatfix_msgs(draw: st.DrawFn, t_ns: int) -> NS:
    """sensor_msgs/NavSatFix near 49 N 8.45 E, often corrupted."""
    lat = 49.0 + draw(st.floats(-1e-3, 1e-3))
    lon = 8.45 + draw(st.floats(-1e-3, 1e-3))
    alt = 160.0 + draw(st.floats(-5, 5))
    lat, lon, alt = draw(corrupt([lat, lon, alt], 2))
    cov = draw(resized(draw(corrupt([0.01, 0.0, 0.0, 0.0, 0.01, 0.0, 0.0, 0.0, 0.04], 2))))
    return NS(header=header(t_ns, 'gnss_link'),
              status=NS(status=draw(st.sampled_from([0, 0, 0, 1, 2, -1, -2, 127])), service=1),
              latitude=lat, longitude=lon, altitude=alt, position_covariance=cov,
              position_covariance_type=draw(st.sampled_from([2, 2, 0, 1, 3, 7, -1])))


def _vec3(values: list[float]) -> NS:
    return NS(x=values[0], y=values[1], z=values[2])


@st.composite
def imu_msgs(draw: st.DrawFn, t_ns: int) -> NS:
    """sensor_msgs/Imu: unit orientation, or scaled / zero / non-finite; covariance or -1."""
    scale = draw(st.sampled_from([1.0] * 6 + [0.0, 0.5, 2.0, 1e10, 1.0 + 1e-6]))
    q = [v * scale for v in _quat(draw)]
    q = draw(corrupt(q, 1))
    oc = draw(st.sampled_from([[1e-4, 0, 0, 0, 1e-4, 0, 0, 0, 1e-3], [-1.0] + [0.0] * 8,
                               [0.0] * 9]))
    gyro = draw(corrupt(draw(st.lists(st.floats(-0.5, 0.5), min_size=3, max_size=3)), 1))
    acc = draw(corrupt([draw(st.floats(-0.5, 0.5)), draw(st.floats(-0.5, 0.5)),
                        9.8 + draw(st.floats(-0.5, 0.5))], 1))
    return NS(header=header(t_ns, 'imu_link'), orientation=NS(x=q[0], y=q[1], z=q[2], w=q[3]),
              orientation_covariance=draw(resized(draw(corrupt(oc, 1)))),
              angular_velocity=_vec3(gyro), angular_velocity_covariance=[0.0] * 9,
              linear_acceleration=_vec3(acc), linear_acceleration_covariance=[0.0] * 9)


@st.composite
def odometry_msgs(draw: st.DrawFn, t_ns: int) -> NS:
    """nav_msgs/Odometry of base_link in the ENU frame, often corrupted."""
    scale = draw(st.sampled_from([1.0] * 6 + [0.0, 0.5, 2.0, 1.0 + 1e-6]))
    q = [v * scale for v in _quat(draw)]
    q = draw(corrupt(q, 1))
    pos = draw(corrupt(draw(st.lists(st.floats(-100, 100), min_size=3, max_size=3)), 1))
    cov = np.diag([0.01, 0.01, 0.04, 1e-4, 1e-4, 1e-3]).reshape(-1).tolist()
    cov = draw(st.sampled_from([cov, [0.0] * 36]))
    return NS(header=header(t_ns, draw(st.sampled_from(['map', 'odom']))),
              child_frame_id='base_link',
              pose=NS(pose=NS(position=_vec3(pos), orientation=NS(x=q[0], y=q[1], z=q[2], w=q[3])),
                      covariance=draw(resized(draw(corrupt(cov, 2))))),
              twist=NS(twist=NS(linear=_vec3([0, 0, 0]), angular=_vec3([0, 0, 0])),
                       covariance=[0.0] * 36))


#: Stamp steps between consecutive messages: mostly forward, sometimes equal, back or far.
STEPS = weighted((4, st.integers(1_000_000, 60_000_000)),
                 (1, st.sampled_from([0, -1, -5_000_000, -2_000_000_000, 10 ** 12, 10 ** 9])))


@st.composite
def pose_streams(draw: st.DrawFn, kinds: tuple[str, ...]) -> tuple[list[tuple[str, NS]], list[int]]:
    """A stream of pose messages of ``kinds`` and the stamps to look the pose up at."""
    makers = {'gnss': navsatfix_msgs, 'imu': imu_msgs, 'odometry': odometry_msgs}
    t = T0_NS
    events = []
    for kind, step in draw(st.lists(st.tuples(st.sampled_from(kinds), STEPS), min_size=1,
                                    max_size=30)):
        t = max(t + step, 0)
        events.append((kind, draw(makers[kind](t))))
    stamps = [T0_NS + draw(st.integers(0, 10 ** 9)) for _ in range(2)]
    stamps += [int(m.header.stamp.sec) * 10 ** 9 + int(m.header.stamp.nanosec) + d
               for (_, m), d in zip(events[-3:], (0, 1, -7_000_000), strict=False)]
    return events, stamps


def assert_pose(pose: Any) -> None:
    """A pose from pose_at is a pose: finite, orthonormal attitude, finite covariances."""
    for name in ('R_enu_base', 'p_enu_base', 'R_enu_cam', 'p_enu_cam', 'position_cov',
                 'rpy_sigma'):
        a = np.asarray(getattr(pose, name), dtype=np.float64)
        assert np.all(np.isfinite(a)), f'pose_at gave non-finite {name}: {a.tolist()}'
    for name in ('R_enu_base', 'R_enu_cam'):
        r = getattr(pose, name)
        assert np.abs(r @ r.T - np.eye(3)).max() < 1e-6, f'{name} is not a rotation: {r.tolist()}'
    cov = pose.pose_covariance()  # what the ray-cast takes
    for name in ('position', 'attitude'):
        a = np.asarray(getattr(cov, name), dtype=np.float64)
        assert np.all(np.isfinite(a)), f'pose covariance {name} is not finite: {a.tolist()}'


def _estimator(fixed: bool) -> Any:
    from geo_depth_node.core.params import defaults
    from geo_depth_node.core.pose import Extrinsics, PoseConfig, PoseEstimator

    return PoseEstimator(PoseConfig(datum=(49.0, 8.45, 160.0) if fixed else None),
                         Extrinsics.from_params(defaults()))


def plain_fix(t_ns: int, cov: list[float] | None = None) -> NS:
    """A good NavSatFix at 49 N 8.45 E (``cov`` replaces its covariance)."""
    return NS(header=header(t_ns, 'gnss_link'), status=NS(status=0, service=1), latitude=49.0,
              longitude=8.45, altitude=160.0,
              position_covariance=cov or [0.01, 0.0, 0.0, 0.0, 0.01, 0.0, 0.0, 0.0, 0.04],
              position_covariance_type=2)


def plain_imu(t_ns: int, gyro: tuple[float, float, float] = (0.0, 0.0, 0.0),
              orientation: bool = True) -> NS:
    """A good Imu at rest (``orientation`` False: orientation_covariance[0] = -1)."""
    return NS(header=header(t_ns, 'imu_link'), orientation=NS(x=0.0, y=0.0, z=0.0, w=1.0),
              orientation_covariance=[1e-4, 0, 0, 0, 1e-4, 0, 0, 0, 1e-3] if orientation
              else [-1.0] + [0.0] * 8, angular_velocity=_vec3(list(gyro)),
              linear_acceleration=_vec3([0.0, 0.0, 9.8]))


@FAULT
@given(stream=pose_streams(('gnss', 'imu')), fixed=st.booleans())
@example(stream=([('gnss', plain_fix(T0_NS)),
                  ('gnss', plain_fix(T0_NS + 10 ** 6, [0.01, 0, 0, 0, 1e308, 0, 0, 0, 0.04]))],
                 [T0_NS]), fixed=True)  # a covariance entry of 1e308
@example(stream=([('imu', plain_imu(T0_NS, orientation=False)),
                  ('imu', plain_imu(T0_NS + 10 ** 6, (1e308, 0.0, 0.0), orientation=False))],
                 [T0_NS]), fixed=False)  # a finite but absurd rate in the tilt filter
def test_gnss_imu_decoders_and_estimator(stream: tuple[list[tuple[str, NS]], list[int]],
                                         fixed: bool) -> None:
    """gnss_fix_from_msg / imu_sample_from_msg: a ValueError or a sample; PoseEstimator.add_*
    and pose_at never raise, and a pose they give is finite and a rotation."""
    from geo_depth_node.core.pose import gnss_fix_from_msg, imu_sample_from_msg

    est = _estimator(fixed)
    conv = {'gnss': gnss_fix_from_msg, 'imu': imu_sample_from_msg}
    for kind, msg in stream[0]:
        sample, _ = value_error_or(conv[kind], msg)
        if sample is not None:
            getattr(est, f'add_{kind}')(sample)
    for t in stream[1]:
        pose, why = est.pose_at(t)
        assert pose is not None or (isinstance(why, str) and why)
        if pose is not None:
            assert_pose(pose)


@FAULT
@given(q=st.lists(st.floats(-1, 1), min_size=4, max_size=4),
       scale=st.sampled_from([0.0, 0.5, 0.9, 1.05, 2.0, 10.0, 1e6]))
def test_imu_orientation_that_is_not_a_unit_quaternion_is_refused(q: list[float],
                                                                  scale: float) -> None:
    """An Imu orientation whose norm is off 1 (by >= 5 % here) is not a rotation: the
    converter refuses it (ValueError) or the estimator drops it (counted), as the odometry
    path does; no pose is made from it."""
    from geo_depth_node.core.pose import gnss_fix_from_msg, imu_sample_from_msg

    u = np.array(q) + [0.0, 0.0, 0.0, 1e-3]
    u = u / np.linalg.norm(u)
    est = _estimator(True)
    oc = [1e-4, 0, 0, 0, 1e-4, 0, 0, 0, 1e-3]
    for i, t in enumerate((T0_NS - 100_000_000, T0_NS + 100_000_000)):
        est.add_gnss(gnss_fix_from_msg(NS(
            header=header(t), status=NS(status=0), latitude=49.0, longitude=8.45 + i * 1e-6,
            altitude=160.0, position_covariance=[0.01, 0, 0, 0, 0.01, 0, 0, 0, 0.04],
            position_covariance_type=2)))
    good = dict(orientation_covariance=oc, angular_velocity=_vec3([0, 0, 0]),
                linear_acceleration=_vec3([0, 0, 9.8]))
    est.add_imu(imu_sample_from_msg(NS(header=header(T0_NS - 5_000_000),
                                       orientation=NS(x=u[0], y=u[1], z=u[2], w=u[3]), **good)))
    bad_q = u * scale
    sample, _ = value_error_or(imu_sample_from_msg, NS(
        header=header(T0_NS), orientation=NS(x=bad_q[0], y=bad_q[1], z=bad_q[2], w=bad_q[3]),
        **good))
    if sample is None:
        return
    before = sum(est.counts.values())
    est.add_imu(sample)
    pose, _ = est.pose_at(T0_NS)
    assert pose is None and sum(est.counts.values()) > before, (
        f'Imu orientation {bad_q.tolist()} (norm {np.linalg.norm(bad_q):.3g}) was used as an '
        f'attitude (counts {est.counts})')


@FAULT
@given(stream=pose_streams(('odometry',)))
@example(stream=([('odometry', NS(
    header=header(T0_NS, 'map'), child_frame_id='base_link',
    pose=NS(pose=NS(position=_vec3([0.0, 0.0, 0.0]), orientation=NS(x=0.0, y=0.0, z=0.0, w=1.0)),
            covariance=[1e308 if i in (0, 7) else 0.01 if i % 7 == 0 else 0.0
                        for i in range(36)])))], [T0_NS]))  # covariance entries of 1e308
def test_odometry_decoder_and_source(stream: tuple[list[tuple[str, NS]], list[int]]) -> None:
    """odometry_sample_from_msg: a ValueError or a sample; OdometryPoseSource.add_odometry and
    pose_at never raise, and a pose they give is finite and a rotation."""
    from geo_depth_node.core.params import defaults
    from geo_depth_node.core.pose import (Extrinsics, OdometryPoseConfig, OdometryPoseSource,
                                          odometry_sample_from_msg)

    src = OdometryPoseSource(OdometryPoseConfig(datum=(49.0, 8.45, 160.0), frame_id='map'),
                             Extrinsics.from_params(defaults()))
    for _, msg in stream[0]:
        sample, _ = value_error_or(odometry_sample_from_msg, msg)
        if sample is not None:
            src.add_odometry(sample)
    for t in stream[1]:
        pose, why = src.pose_at(t)
        assert pose is not None or (isinstance(why, str) and why)
        if pose is not None:
            assert_pose(pose)


# ============================================================================= parameters
HUGE_INTS = (10 ** 400, -10 ** 400, 2 ** 63, 2 ** 64, -2 ** 63 - 1)


def any_value() -> st.SearchStrategy[Any]:
    """Any value a YAML file or `ros2 param set` can carry (and some it cannot)."""
    scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE_INTS),
                       nasty_float(), st.text(max_size=12))
    return st.one_of(scalar, st.lists(scalar, max_size=7), st.lists(scalar, max_size=7).map(tuple),
                     st.dictionaries(st.text(max_size=4), scalar, max_size=2))


def values_for(spec: ParamSpec) -> st.SearchStrategy[Any]:
    """Values aimed at one parameter: its default, its range edges and beyond, NaN/inf, the
    wrong type, its choices and near misses, tuples with hostile elements."""
    d = spec.default
    near: list[Any] = [d]
    if spec.min_value is not None:
        near += [spec.min_value, spec.min_value - 1, type(d)(spec.min_value) if
                 not isinstance(d, (bool, tuple, str)) else spec.min_value]
    if spec.max_value is not None:
        near += [spec.max_value, spec.max_value + 1]
    if isinstance(d, float):
        near += [NAN, INF, -INF, 1e308, int(d), 10 ** 400]
    if isinstance(d, int) and not isinstance(d, bool):
        near += [float(d), d + 1, NAN]
    if isinstance(d, str):
        near += list(spec.choices) + [c.upper() for c in spec.choices] + ['', ' auto']
    if isinstance(d, tuple):
        n = len(d)
        near += [tuple([0.0] * n), [0.0] * n, tuple([0.0] * (n + 1)), tuple([0] * n),
                 tuple([10 ** 400] * n)]
        tuples = st.lists(nasty_float(), min_size=n, max_size=n).map(tuple)
        return st.one_of(st.sampled_from(near), tuples, any_value())
    return st.one_of(st.sampled_from(near), any_value())


def assert_param_value(spec: ParamSpec, value: Any) -> None:
    """An accepted value has the parameter's type, is finite and inside its range/choices."""
    d = spec.default
    if isinstance(d, tuple):
        assert isinstance(value, tuple) and len(value) == len(d), value
        assert all(isinstance(v, float) and math.isfinite(v) for v in value), \
            f'{spec.name} accepted non-finite {value!r}'
        return
    assert type(value) is type(d), f'{spec.name} accepted {value!r} ({type(value).__name__})'
    if isinstance(d, str):
        assert not spec.choices or value in spec.choices, value
        return
    if isinstance(d, float):
        assert math.isfinite(value), f'{spec.name} accepted {value!r}'
    if spec.min_value is not None:
        assert value >= spec.min_value, f'{spec.name} accepted {value!r} < {spec.min_value}'
    if spec.max_value is not None:
        assert value <= spec.max_value, f'{spec.name} accepted {value!r} > {spec.max_value}'


@st.composite
def param_values(draw: st.DrawFn, max_size: int = 1) -> dict[str, Any]:
    """{name: value} of 1..max_size declared parameters with aimed values."""
    specs = draw(st.lists(st.sampled_from(PARAMETERS), min_size=1, max_size=max_size,
                          unique_by=lambda s: s.name))
    return {s.name: draw(values_for(s)) for s in specs}


def check_param_values(values: dict[str, Any]) -> None:
    """validate_params(values): a ValueError, or every value with its parameter's type,
    finite and inside its range and choices."""
    out, _ = value_error_or(validate_params, values)
    if out is not None:
        for name in values:
            assert_param_value(PARAMS_BY_NAME[name], out[name])


@pytest.mark.parametrize('name', [p.name for p in PARAMETERS])
@settings(FAULT, max_examples=25, phases=(Phase.explicit, Phase.generate))  # values are small
@given(data=st.data())
def test_each_parameter_refuses_or_validates(name: str, data: st.DataObject) -> None:
    """validate_params over every ParamSpec, one at a time, with values aimed at it (range
    edges and beyond, NaN/inf, huge integers, the wrong type, near-miss choices)."""
    check_param_values({name: data.draw(values_for(PARAMS_BY_NAME[name]), label=name)})


@SLOW
@given(values=param_values(max_size=4))
def test_accepted_parameters_build_a_pipeline(values: dict[str, Any]) -> None:
    """Several parameters at once: validate_params refuses them (ValueError), or every accepted
    value is valid AND the node can start with them: the extrinsics make transforms and
    DepthPipeline(values) builds (or refuses with a ValueError, e.g. cuda without a GPU)."""
    from geo_depth_node.core.pipeline import DepthPipeline
    from geo_depth_node.core.pose import Extrinsics

    out, _ = value_error_or(validate_params, values)
    if out is None:
        return
    for name in values:
        assert_param_value(PARAMS_BY_NAME[name], out[name])
    Extrinsics.from_params(out)  # any exception here: validated extrinsics that are unusable
    value_error_or(DepthPipeline, values)


#: Hand-written YAML documents a probe would try.
YAML_SNIPPETS = (
    '', '- a\n- b\n', '5\n', 'null\n', ':\n', '{\n', '\t\n', 'a: [\n', '&a {x: *a}\n',
    '/**/geo_depth_node: &a {ros__parameters: {x: *a}}\n',
    'geo_depth_node: [1, 2]\n', 'geo_depth_node: {ros__parameters: [1, 2]}\n',
    'geo_depth_node: {ros__parameters: 7}\n', 'geo_depth_node: {ros__parameters: null}\n',
    'geo_depth_node: {ros__parameters: {rectify: yes}}\n',
    'geo_depth_node: {ros__parameters: {sync: {slop_s: .nan}}}\n',
    'geo_depth_node: {ros__parameters: {sync: {slop_s: .inf}}}\n',
    'geo_depth_node: {ros__parameters: {limit: {max_sigma_m: 1' + '0' * 400 + '}}}\n',
    'geo_depth_node: {ros__parameters: {extrinsics: {base_to_gnss: [1, 2, .inf]}}}\n',
    'geo_depth_node: {ros__parameters: {stereo: {num_disparities: 1' + '0' * 40 + '}}}\n',
    'geo_depth_node: {ros__parameters: {? [a, b] : 1}}\n',
    '? [a, b]\n: 1\n', '!!python/object/apply:os.system [ls]\n', 'x: !!binary aGk=\n',
    'geo_depth_node:\n  ros__parameters:\n    dem:\n      sources: a\n      source:\n'
    '        a: {id: 1, path: /nonexistent.tif, kind: dem, vertical_datum: egm96, '
    'sigma_v_m: 1, sigma_h_m: 1, survey_date: 2021-06-15 10:00:00}\n',
    'geo_depth_node:\n  ros__parameters:\n    dem: {sources: [a, b]}\n',
    'geo_depth_node:\n  ros__parameters:\n    dem: {source: {a: {id: 1}}}\n',
    '/**:\n  ros__parameters:\n    rectify: true\n', '/ns/geo_depth_node:\n  ros__parameters: {}\n',
    'geo_depth_node:\n  ros__parameters:\n    use_sim_time: 3\n',
)


def _yaml_trees() -> st.SearchStrategy[Any]:
    """Nested mappings of parameter-like names and any values."""
    names = st.one_of(st.sampled_from([p.name for p in PARAMETERS]), st.text(max_size=6),
                      st.integers(-3, 3), st.booleans())
    return st.recursive(any_value(), lambda kids: st.dictionaries(names, kids, max_size=4),
                        max_leaves=8)


@st.composite
def yaml_documents(draw: st.DrawFn) -> bytes:
    """A params file: hand-written, dumped from a random tree (often in a node section), or
    random text / bytes."""
    import yaml

    kind = draw(st.sampled_from(['snippet', 'tree', 'tree', 'text', 'bytes']))
    if kind == 'snippet':
        return draw(st.sampled_from(YAML_SNIPPETS)).encode()
    if kind == 'text':
        return draw(st.text(alphabet=string.printable, max_size=60)).encode()
    if kind == 'bytes':
        return draw(st.binary(max_size=60))
    tree = draw(_yaml_trees())
    key = draw(st.sampled_from(['geo_depth_node', '/**', '/**/geo_depth_node', 'other', 5]))
    if draw(st.booleans()):
        tree = {key: {'ros__parameters': tree}}
    return yaml.safe_dump(tree, allow_unicode=True).encode()


@settings(FAULT, suppress_health_check=[HealthCheck.function_scoped_fixture])  # one file, rewritten
@given(doc=yaml_documents())
def test_params_file_loader_refuses_or_validates(doc: bytes, tmp_path) -> None:
    """load_params_yaml of arbitrary YAML (or not YAML at all): a ValueError naming the
    problem, or validated parameters (typed, finite, in range)."""
    from geo_depth_node.core.params import load_params_yaml

    path = tmp_path / 'params.yaml'
    path.write_bytes(doc)
    out, _ = value_error_or(load_params_yaml, str(path))
    if out is None:
        return
    for name, value in out.items():
        if name in PARAMS_BY_NAME:
            assert_param_value(PARAMS_BY_NAME[name], value)


# ============================================================================= DEM sources
def _good_field(field: str) -> st.SearchStrategy[Any]:
    """A valid value of a DEM source field."""
    return {'id': st.integers(1, 65535), 'path': st.just('/data/dem.tif'),
            'kind': st.sampled_from(['dem', 'dsm']),
            'vertical_datum': st.sampled_from(['ellipsoid', 'egm96', 'EPSG:5773', 'egm2008']),
            'sigma_v_m': st.floats(0.01, 50), 'sigma_h_m': st.floats(0, 50),
            'survey_date': st.sampled_from(['', '2021-06-15']), 'licence': st.text(max_size=5),
            'priority': st.integers(-5, 5), 'sigma_v_growth_m_per_year': st.floats(0, 1),
            'band': st.integers(1, 3)}[field]


def _bad_field(field: str) -> st.SearchStrategy[Any]:
    """A hostile value of a DEM source field: aimed at the field, any number, anything."""
    odd = {'id': st.sampled_from([0, 65536, -1, True, 1.0, '1', 2 ** 64]),
           'path': st.sampled_from(['', ' ', '\0', '~/x', '[', 5]),
           'kind': st.sampled_from(['DEM', '', 'dtm', None]),
           'vertical_datum': st.sampled_from(['', 'EPSG:', 'epsg:4326', 'EPSG:99999999', 'wgs84',
                                              'EPSG:5773x', 'egm 96', None, 5]),
           'survey_date': st.sampled_from([datetime.date(2020, 1, 1),
                                           datetime.datetime(2020, 1, 1, 12, 0),
                                           '2021-13-01', '2021-06-15T10:00', 20210615, None,
                                           '99999-01-01']),
           'band': st.sampled_from([0, -1, 1.0, 2 ** 70])}.get(field, st.nothing())
    numbers = st.one_of(nasty_float(), st.sampled_from(HUGE_INTS), st.integers())
    return weighted((3, odd), (1, numbers), (1, any_value()))


FIELDS = ('id', 'path', 'kind', 'vertical_datum', 'sigma_v_m', 'sigma_h_m', 'survey_date',
          'licence', 'priority', 'sigma_v_growth_m_per_year', 'band')


@st.composite
def dem_source_configs(draw: st.DrawFn) -> Any:
    """The DEM source configuration in the three accepted shapes (flat dotted parameters, the
    nested YAML tree, a list of dicts), with arbitrary field values, missing and unknown
    fields, unlisted sources, and (rarely) not a configuration at all."""
    shape = draw(st.sampled_from(['flat', 'flat', 'nested', 'list', 'junk']))
    if shape == 'junk':
        return draw(any_value())
    names = draw(st.lists(st.sampled_from(['srtm', 'lidar', 'a_1', 'srtm', 'lidar', '1x', '',
                                           'a.b', 'srtm ']), min_size=1, max_size=3))
    sources = []
    for i, name in enumerate(names):
        optional = draw(st.lists(st.sampled_from(FIELDS[6:]), unique=True, max_size=5))
        src = {f: draw(_good_field(f)) for f in FIELDS[:6] + tuple(optional)}
        src['id'] = i + 1 if draw(st.booleans()) else src['id']
        for f in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=2)):
            src[f] = draw(_bad_field(f))
        if draw(st.sampled_from([False] * 8 + [True])):
            del src[draw(st.sampled_from(FIELDS[:6]))]
        if draw(st.sampled_from([False] * 8 + [True])):
            src['unknown_field'] = 1
        sources.append((name, src))
    if shape == 'list':
        return [{'name': n, **s} for n, s in sources]
    listed = draw(st.sampled_from(['list', 'string', 'string', 'string', 'junk']))
    value = {'list': [n for n, _ in sources], 'string': ', '.join(n for n, _ in sources),
             'junk': draw(any_value())}[listed]
    if shape == 'nested':
        return {'dem': {'sources': value, 'source': {n: s for n, s in sources}}}
    flat: dict[str, Any] = {'dem.sources': value}
    for n, s in sources:
        flat.update({f'dem.source.{n}.{k}': v for k, v in s.items()})
    if draw(st.sampled_from([False] * 5 + [True])):
        flat['dem.source.unlisted.id'] = 3
    return flat


def assert_dem_spec(spec: Any) -> None:
    """An accepted source has valid, finite fields, a usable sigma and round-trips."""
    import re

    from geo_depth_node.core.dem import DEM_KINDS, DemSourceSpec
    from geo_depth_node.core.geodesy import canonical_datum

    assert isinstance(spec.id, int) and 1 <= spec.id <= 65535, spec.id
    assert isinstance(spec.name, str) and re.fullmatch(r'[A-Za-z][A-Za-z0-9_]*', spec.name)
    assert isinstance(spec.path, str) and spec.path.strip()
    assert spec.kind in DEM_KINDS
    assert spec.vertical_datum == canonical_datum(spec.vertical_datum)
    for name, strict in (('sigma_v_m', True), ('sigma_h_m', False),
                         ('sigma_v_growth_m_per_year', False)):
        v = getattr(spec, name)
        assert isinstance(v, float) and math.isfinite(v) and (v > 0 if strict else v >= 0), \
            f'{name} = {v!r} accepted'
    assert isinstance(spec.band, int) and spec.band >= 1
    assert isinstance(spec.priority, int)
    for epoch in (None, datetime.date(2035, 1, 1)):
        s = spec.sigma_v_at(epoch)
        assert math.isfinite(s) and s >= spec.sigma_v_m, s
    assert DemSourceSpec.from_dict(spec.as_dict()) == spec, 'as_dict / from_dict do not round-trip'


@FAULT
@given(config=dem_source_configs())
def test_dem_source_specs_refuse_or_validate(config: Any) -> None:
    """parse_dem_sources: a ValueError naming the bad parameter, or specs with valid fields,
    unique names and ids, sorted by priority."""
    from geo_depth_node.core.dem import parse_dem_sources

    specs, _ = value_error_or(parse_dem_sources, config)
    if specs is None:
        return
    for spec in specs:
        assert_dem_spec(spec)
    assert len({s.id for s in specs}) == len(specs) and len({s.name for s in specs}) == len(specs)
    assert [(-s.priority, s.id) for s in specs] == sorted((-s.priority, s.id) for s in specs)


@st.composite
def hostile_fields(draw: st.DrawFn) -> tuple[str, Any]:
    """(a DEM source field, a hostile value for it)."""
    field = draw(st.sampled_from(FIELDS))
    return field, draw(_bad_field(field))


@FAULT
@given(hostile=hostile_fields(), shape=st.sampled_from(['list', 'flat']))
@example(hostile=('survey_date', datetime.datetime(2020, 1, 1, 12, 0)), shape='list')  # YAML
@example(hostile=('sigma_v_m', 10 ** 400), shape='flat')
@example(hostile=('sigma_v_growth_m_per_year', 1e308), shape='list')
def test_dem_source_with_one_hostile_field(hostile: tuple[str, Any], shape: str) -> None:
    """One source with every field valid (a survey date and a sigma growth included) but ONE,
    set to a hostile value: a ValueError naming it, or a spec that keeps its promises
    (e.g. a datetime survey date must still give sigma_v_at and round-trip)."""
    from geo_depth_node.core.dem import parse_dem_sources

    src = {'id': 7, 'path': '/data/dem.tif', 'kind': 'dem', 'vertical_datum': 'egm96',
           'sigma_v_m': 0.5, 'sigma_h_m': 1.0, 'survey_date': '2021-06-15', 'licence': 'x',
           'priority': 1, 'sigma_v_growth_m_per_year': 0.1, 'band': 1}
    src[hostile[0]] = hostile[1]
    config: Any = [{'name': 'srtm', **src}] if shape == 'list' else {
        'dem.sources': 'srtm', **{f'dem.source.srtm.{k}': v for k, v in src.items()}}
    specs, _ = value_error_or(parse_dem_sources, config)
    if specs is not None:
        assert len(specs) == 1
        assert_dem_spec(specs[0])


@FAULT
@given(config=dem_source_configs())
def test_dem_sources_through_validate_params(config: Any) -> None:
    """The same configurations as node parameters (validate_params): a ValueError or validated
    parameters."""
    if not isinstance(config, dict) or 'dem.sources' not in config:
        return
    value = config['dem.sources']
    values = dict(config)
    values['dem.sources'] = ', '.join(value) if isinstance(value, list) and all(
        isinstance(v, str) for v in value) else value
    out, _ = value_error_or(validate_params, values)
    if out is not None:
        assert_param_value(PARAMS_BY_NAME['dem.sources'], out['dem.sources'])


@pytest.fixture(scope='module')
def dem_files(tmp_path_factory) -> dict[str, str]:
    """Files a DEM path may point at: a good GeoTIFF, one without a CRS, garbage, empty, a
    directory, a truncated GeoTIFF."""
    import rasterio
    from rasterio.transform import from_origin

    d = tmp_path_factory.mktemp('dem_files')
    good = d / 'good.tif'
    prof = dict(driver='GTiff', width=8, height=8, count=1, dtype='float32',
                transform=from_origin(8.4, 49.1, 0.01, 0.01), nodata=-9999.0)
    with rasterio.open(good, 'w', crs='EPSG:4326', **prof) as ds:
        ds.write(np.full((1, 8, 8), 100.0, np.float32))
    with rasterio.open(d / 'nocrs.tif', 'w', **prof) as ds:
        ds.write(np.full((1, 8, 8), 100.0, np.float32))
    (d / 'garbage.tif').write_bytes(b'not a raster at all\n' * 10)
    (d / 'empty.tif').write_bytes(b'')
    (d / 'truncated.tif').write_bytes(good.read_bytes()[:200])
    (d / 'adir.tif').mkdir()
    return {p.name: str(p) for p in d.iterdir()} | {'glob': str(d / '*.tif'),
                                                    'missing': str(d / 'missing.tif')}


@SLOW
@given(which=st.sampled_from(['good.tif', 'nocrs.tif', 'garbage.tif', 'empty.tif',
                              'truncated.tif', 'adir.tif', 'glob', 'missing']),
       band=st.sampled_from([1, 1, 2]), datum=st.sampled_from(['egm96', 'ellipsoid',
                                                              'EPSG:5773', 'EPSG:4326']))
def test_dem_source_files_refuse_or_open(dem_files: dict[str, str], which: str, band: int,
                                         datum: str) -> None:
    """open_dem_sources (the node's start-up check of dem.source.<name>.path): a ValueError
    naming the source and file (a missing, empty, garbage, truncated file, a directory, a
    missing band, no CRS, a datum PROJ cannot convert), or opened sources."""
    from geo_depth_node.core.dem import open_dem_sources

    params, _ = value_error_or(validate_params, {'dem.sources': 'a', 'dem.source.a.id': 1,
                              'dem.source.a.path': dem_files[which], 'dem.source.a.kind': 'dem',
                              'dem.source.a.vertical_datum': datum, 'dem.source.a.sigma_v_m': 1.0,
                              'dem.source.a.sigma_h_m': 1.0, 'dem.source.a.band': band})
    if params is None:
        return
    opened, _ = value_error_or(open_dem_sources, params)
    if opened is not None:
        assert len(opened) == 1 and opened[0].spec.band == band
