"""Pinhole / stereo camera models from CameraInfo arrays, and rectification.

ROS-free: the shell converts ``sensor_msgs/CameraInfo`` into :class:`CameraModel`
(plain numpy arrays with the message's meaning), this module does the maths.

Conventions (sensor_msgs/CameraInfo):
    * ``K`` (3x3): intrinsics of the raw (distorted) image.
    * ``D``: distortion coefficients for ``distortion_model``
      (``plumb_bob`` / ``rational_polynomial``: OpenCV order k1 k2 p1 p2 k3 [k4 k5 k6];
      ``equidistant``: k1 k2 k3 k4, OpenCV fisheye).
    * ``R`` (3x3): rotation from the camera's optical frame into the rectified frame,
      ``p_rect = R @ p_cam``.
    * ``P`` (3x4): projection of the rectified image; for the right camera of a
      horizontal pair ``P[0, 3] = Tx = -fx' * B``.

Stereo depth follows image_geometry's StereoCameraModel (stereo_image_proc):
``Z = fx * B / (d - (cx_left - cx_right))`` with ``B = (Tx_left - Tx_right) / fx``.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

_LOG = logging.getLogger(__name__)

SUPPORTED_DISTORTION_MODELS = ('plumb_bob', 'rational_polynomial', 'equidistant', '')
#: numbers of distortion coefficients each model accepts (0 = no distortion): OpenCV's
#: k1 k2 p1 p2 [k3 [k4 k5 k6 [s1 s2 s3 s4 [tx ty]]]] for plumb_bob / rational_polynomial / '',
#: k1 k2 k3 k4 for equidistant (OpenCV fisheye; drivers pad D to 5 or 14 with zeros, accepted
#: when the padding is zero)
DISTORTION_LENGTHS = {'plumb_bob': (0, 4, 5, 8, 12, 14),
                      'rational_polynomial': (0, 4, 5, 8, 12, 14),
                      '': (0, 4, 5, 8, 12, 14), 'equidistant': (0, 4, 5, 8, 12, 14)}
#: plausibility bounds of a calibration (a value outside is a broken CameraInfo, not a camera):
MAX_IMAGE_SIDE_PX = 32768  # width or height
MIN_FOCAL_PX = 1.0  # fx, fy of K and P: below, pixel rays overflow float32
MAX_FOCAL_PX = 1e6  # fx, fy of K and P (a 100 mm lens on 0.1 um pixels)
MAX_PRINCIPAL_OFFSET = 10.0  # |cx| <= this * width, |cy| <= this * height
MAX_BASELINE_M = 100.0  # stereo baseline |Tx / fx|
ROTATION_TOL = 1e-3  # max |R R^T - I| element and |det R - 1|


@dataclasses.dataclass(frozen=True)
class CameraModel:
    """One camera as described by a CameraInfo message.

    Attributes:
        width, height: image size in pixels.
        K: (3, 3) float64 raw intrinsics.
        D: (N,) float64 distortion coefficients.
        R: (3, 3) float64 rectification rotation (optical frame -> rectified frame).
        P: (3, 4) float64 rectified projection matrix.
        distortion_model: CameraInfo distortion model name.
        frame_id: the optical frame of the camera.
    """

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray
    R: np.ndarray
    P: np.ndarray
    distortion_model: str = 'plumb_bob'
    frame_id: str = ''

    @staticmethod
    def from_arrays(width: int, height: int, K, D, R, P, distortion_model: str = 'plumb_bob',
                    frame_id: str = '') -> 'CameraModel':
        """Build and validate a model from flat or shaped arrays (as in CameraInfo).

        Checks (each a ValueError naming the bad value): size in 1..MAX_IMAGE_SIDE_PX; K 3x3,
        R 3x3, P 3x4, all finite; a supported distortion model with a supported number of
        coefficients (:data:`DISTORTION_LENGTHS`); R a rotation (orthonormal, det +1, within
        :data:`ROTATION_TOL`; all-zero R = identity, as CameraInfo of monocular cameras);
        P's focal lengths in [MIN_FOCAL_PX, MAX_FOCAL_PX], its principal point within
        MAX_PRINCIPAL_OFFSET image sizes, its last row (0, 0, 1, 0) and Ty = P[1, 3] = 0 (a
        horizontal rig); a stereo baseline |Tx / fx| <= MAX_BASELINE_M. K is checked where it
        is used (:class:`Rectifier`).

        Raises:
            ValueError: on a bad size, shape, non-finite or implausible value or an
                unsupported model.
        """
        try:
            width_i, height_i = int(width), int(height)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f'camera size must be integers, got {width!r}x{height!r}') from exc
        if not (0 < width_i <= MAX_IMAGE_SIDE_PX and 0 < height_i <= MAX_IMAGE_SIDE_PX):
            raise ValueError(f'camera size must be 1..{MAX_IMAGE_SIDE_PX} px per side, got '
                             f'{width}x{height}')
        width, height = width_i, height_i
        K = np.asarray(K, dtype=np.float64).reshape(-1)
        R = np.asarray(R, dtype=np.float64).reshape(-1)
        P = np.asarray(P, dtype=np.float64).reshape(-1)
        D = np.asarray(D, dtype=np.float64).reshape(-1)
        if K.size != 9:
            raise ValueError(f'K must have 9 elements, got {K.size}')
        if R.size != 9:
            raise ValueError(f'R must have 9 elements, got {R.size}')
        if P.size != 12:
            raise ValueError(f'P must have 12 elements, got {P.size}')
        for name, arr in (('K', K), ('R', R), ('P', P), ('D', D)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f'{name} has non-finite values: {arr.tolist()}')
        K, R, P = K.reshape(3, 3), R.reshape(3, 3), P.reshape(3, 4)
        if not np.any(R):  # CameraInfo leaves R all-zero for monocular cameras
            R = np.eye(3)
        if distortion_model not in SUPPORTED_DISTORTION_MODELS:
            raise ValueError(f'unsupported distortion model {distortion_model!r}; '
                             f'supported: {SUPPORTED_DISTORTION_MODELS}')
        if D.size not in DISTORTION_LENGTHS[distortion_model]:
            raise ValueError(f'distortion model {distortion_model!r} takes '
                             f'{" or ".join(map(str, DISTORTION_LENGTHS[distortion_model]))} '
                             f'coefficients, D has {D.size}: {D.tolist()}')
        if distortion_model == 'equidistant' and np.any(D[4:]):
            raise ValueError(f'distortion model equidistant takes 4 coefficients (k1..k4); D has '
                             f'non-zero entries after the fourth: {D.tolist()}')
        if not (MIN_FOCAL_PX <= P[0, 0] <= MAX_FOCAL_PX
                and MIN_FOCAL_PX <= P[1, 1] <= MAX_FOCAL_PX):
            raise ValueError(f'P must have focal lengths in [{MIN_FOCAL_PX:g}, {MAX_FOCAL_PX:g}] '
                             f'px, got fx={P[0, 0]}, fy={P[1, 1]}')
        if abs(P[0, 2]) > MAX_PRINCIPAL_OFFSET * width or \
                abs(P[1, 2]) > MAX_PRINCIPAL_OFFSET * height:
            raise ValueError(f'P principal point ({P[0, 2]}, {P[1, 2]}) px is implausible for a '
                             f'{width}x{height} image')
        if not np.allclose(P[2], [0.0, 0.0, 1.0, 0.0], rtol=0.0, atol=1e-9):
            raise ValueError(f'P must have the last row (0, 0, 1, 0), got {P[2].tolist()}')
        if abs(P[1, 3]) > 1e-9 * max(1.0, abs(P[0, 3])):
            raise ValueError(f'P[1, 3] (Ty) = {P[1, 3]}: only horizontal stereo rigs are '
                             'supported (Ty = 0)')
        if abs(P[0, 3] / P[0, 0]) > MAX_BASELINE_M:
            raise ValueError(f'P[0, 3] = {P[0, 3]} is a baseline of {abs(P[0, 3] / P[0, 0]):.6g} '
                             f'm (more than {MAX_BASELINE_M:g} m): a broken calibration')
        det = float(np.linalg.det(R))
        if abs(det - 1.0) > ROTATION_TOL or \
                np.abs(R @ R.T - np.eye(3)).max() > ROTATION_TOL:
            raise ValueError(f'R is not a rotation (det {det:.6f}, max |R R^T - I| '
                             f'{np.abs(R @ R.T - np.eye(3)).max():.3g}): {R.tolist()}')
        return CameraModel(width, height, K, D, R, P, distortion_model, frame_id)

    @property
    def fx(self) -> float:
        """Rectified focal length along x, pixels."""
        return float(self.P[0, 0])

    @property
    def fy(self) -> float:
        """Rectified focal length along y, pixels."""
        return float(self.P[1, 1])

    @property
    def cx(self) -> float:
        """Rectified principal point x, pixels."""
        return float(self.P[0, 2])

    @property
    def cy(self) -> float:
        """Rectified principal point y, pixels."""
        return float(self.P[1, 2])

    @property
    def Tx(self) -> float:  # noqa: N802 - name of the CameraInfo quantity
        """P[0, 3] = -fx * (x offset of this camera in the stereo rig), pixels*metres."""
        return float(self.P[0, 3])

    def key(self) -> tuple:
        """Hashable identity of the calibration (to cache rectification maps)."""
        return (self.width, self.height, self.distortion_model, self.K.tobytes(),
                self.D.tobytes(), self.R.tobytes(), self.P.tobytes())


@dataclasses.dataclass(frozen=True)
class StereoModel:
    """A rectified stereo pair: left and right models plus the derived geometry.

    Attributes:
        left, right: the two cameras.
        baseline_m: B, metres, positive when the right camera is to the right.
        delta_cx: cx_left - cx_right, pixels (disparity of a point at infinity).
    """

    left: CameraModel
    right: CameraModel
    baseline_m: float
    delta_cx: float

    @staticmethod
    def from_cameras(left: CameraModel, right: CameraModel, *, tol_px: float = 1e-3) -> 'StereoModel':
        """Check that ``left``/``right`` describe a horizontally rectified pair.

        Raises:
            ValueError: if sizes differ, rectified fx/fy/cy differ, or B <= 0.
        """
        if (left.width, left.height) != (right.width, right.height):
            raise ValueError(f'left is {left.width}x{left.height} but right is '
                             f'{right.width}x{right.height}')
        for name, a, b in (('fx', left.fx, right.fx), ('fy', left.fy, right.fy),
                           ('cy', left.cy, right.cy)):
            if abs(a - b) > tol_px * max(1.0, abs(a)):
                raise ValueError(f'not a rectified pair: P {name} differs (left {a}, right {b})')
        baseline = (left.Tx - right.Tx) / left.fx
        if not baseline > 0:
            raise ValueError(f'stereo baseline must be positive (right camera to the right); got '
                             f'B = (Tx_left - Tx_right)/fx = {baseline} m from P_left[0,3]={left.Tx}, '
                             f'P_right[0,3]={right.Tx}')
        return StereoModel(left, right, float(baseline), float(left.cx - right.cx))

    @property
    def fb(self) -> float:
        """fx * B in pixel-metres: Z = fb / (d - delta_cx)."""
        return self.left.fx * self.baseline_m

    def depth_from_disparity(self, disparity: np.ndarray) -> np.ndarray:
        """Z (metres, float32) along the rectified optical axis from disparity (pixels).

        Disparities at or below ``delta_cx`` (at or beyond infinity) give +inf.
        """
        d = np.asarray(disparity, dtype=np.float32) - np.float32(self.delta_cx)
        with np.errstate(divide='ignore', invalid='ignore'):
            z = np.where(d > 0, np.float32(self.fb) / d, np.float32(np.inf))
        return z.astype(np.float32)

    def disparity_from_depth(self, depth: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`depth_from_disparity` (pixels)."""
        with np.errstate(divide='ignore'):
            return (np.float32(self.fb) / np.asarray(depth, dtype=np.float32)
                    + np.float32(self.delta_cx)).astype(np.float32)


def ray_norms(model: CameraModel) -> np.ndarray:
    """|ray| of every pixel's rectified viewing ray ((u-cx)/fx, (v-cy)/fy, 1).

    Returns:
        (H, W) float32; range = Z * |ray|.
    """
    u = (np.arange(model.width, dtype=np.float32) - np.float32(model.cx)) / np.float32(model.fx)
    v = (np.arange(model.height, dtype=np.float32) - np.float32(model.cy)) / np.float32(model.fy)
    return np.sqrt(1.0 + u[None, :] ** 2 + v[:, None] ** 2).astype(np.float32)


class Rectifier:
    """Rectifies raw images of one camera with its CameraInfo (maps cached per calibration)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._maps: tuple[np.ndarray, np.ndarray] | None = None
        self._valid: np.ndarray | None = None

    @staticmethod
    def check_intrinsics(model: CameraModel) -> None:
        """K of a raw camera must be usable to undistort: focal lengths in
        [MIN_FOCAL_PX, MAX_FOCAL_PX], a principal point within MAX_PRINCIPAL_OFFSET image sizes and the
        last row (0, 0, 1).

        Raises:
            ValueError: naming the bad value.
        """
        k = model.K
        if not (MIN_FOCAL_PX <= k[0, 0] <= MAX_FOCAL_PX
                and MIN_FOCAL_PX <= k[1, 1] <= MAX_FOCAL_PX):
            raise ValueError(f'K must have focal lengths in [{MIN_FOCAL_PX:g}, {MAX_FOCAL_PX:g}] '
                             f'px to rectify, got fx={k[0, 0]}, fy={k[1, 1]}')
        if abs(k[0, 2]) > MAX_PRINCIPAL_OFFSET * model.width or \
                abs(k[1, 2]) > MAX_PRINCIPAL_OFFSET * model.height:
            raise ValueError(f'K principal point ({k[0, 2]}, {k[1, 2]}) px is implausible for a '
                             f'{model.width}x{model.height} image')
        if not np.allclose(k[2], [0.0, 0.0, 1.0], rtol=0.0, atol=1e-9):
            raise ValueError(f'K must have the last row (0, 0, 1), got {k[2].tolist()}')

    def _build(self, model: CameraModel) -> None:
        import cv2

        self.check_intrinsics(model)
        size = (model.width, model.height)
        new_p = model.P[:, :3]
        try:
            if model.distortion_model == 'equidistant':
                d = model.D[:4] if model.D.size >= 4 else np.pad(model.D, (0, 4 - model.D.size))
                m1, m2 = cv2.fisheye.initUndistortRectifyMap(model.K, d, model.R, new_p, size,
                                                             cv2.CV_32FC1)
            else:
                m1, m2 = cv2.initUndistortRectifyMap(model.K, model.D, model.R, new_p, size,
                                                     cv2.CV_32FC1)
        except cv2.error as exc:  # a calibration OpenCV cannot use is bad input
            raise ValueError(f'cannot build rectification maps from this CameraInfo '
                             f'({model.distortion_model}, D {model.D.tolist()}): {exc}') from exc
        if not (np.isfinite(m1).any() and np.isfinite(m2).any()):
            raise ValueError('the CameraInfo K/D/R/P map no pixel into the raw image')
        # Pixels whose source lies outside the raw image have no data.
        valid = (m1 >= -0.5) & (m1 <= model.width - 0.5) & (m2 >= -0.5) & (m2 <= model.height - 0.5)
        self._maps, self._valid, self._key = (m1, m2), valid, model.key()
        _LOG.debug('built rectification maps %dx%d (%.1f %% valid)', model.width, model.height,
                   100.0 * valid.mean())

    def rectify(self, image: np.ndarray, model: CameraModel) -> tuple[np.ndarray, np.ndarray]:
        """Rectify ``image`` (H, W) or (H, W, C).

        Returns:
            (rectified image with the input's dtype, (H, W) bool mask of pixels with data).

        Raises:
            ValueError: if the image size does not match the camera model.
        """
        import cv2

        if image.shape[:2] != (model.height, model.width):
            raise ValueError(f'image is {image.shape[1]}x{image.shape[0]} but its CameraInfo says '
                             f'{model.width}x{model.height}')
        if self._key != model.key():
            self._build(model)
        m1, m2 = self._maps
        out = cv2.remap(image, m1, m2, interpolation=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return out, self._valid


def project_rectified(points_rect: np.ndarray, model: CameraModel) -> np.ndarray:
    """Project (N, 3) points in the rectified frame with P; returns (N, 2) pixels."""
    p = np.asarray(points_rect, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f'points must be (N, 3), got {p.shape}')
    h = p @ model.P[:, :3].T + model.P[:, 3]
    return h[:, :2] / h[:, 2:3]


def distort_points(points_cam: np.ndarray, model: CameraModel) -> np.ndarray:
    """Project (N, 3) points in the camera optical frame into the RAW image (pixels, (N, 2))."""
    import cv2

    p = np.asarray(points_cam, dtype=np.float64).reshape(-1, 1, 3)
    zero = np.zeros(3)
    if model.distortion_model == 'equidistant':
        d = model.D[:4] if model.D.size >= 4 else np.pad(model.D, (0, 4 - model.D.size))
        out, _ = cv2.fisheye.projectPoints(p, zero, zero, model.K, d)
    else:
        out, _ = cv2.projectPoints(p, zero, zero, model.K, model.D)
    return out.reshape(-1, 2)


def camera_model_from_msg(msg: Any) -> CameraModel:
    """A sensor_msgs/CameraInfo-like object (rclpy or rosbags; duck-typed) -> CameraModel.

    Binning (binning_x/y > 1) and a region of interest (roi other than all-zero or the full
    image) are not supported: the calibration would describe another image than the one
    matched, so such a CameraInfo is refused, saying so.

    Raises:
        ValueError: an unusable calibration.
    """
    bx, by = int(getattr(msg, 'binning_x', 0) or 0), int(getattr(msg, 'binning_y', 0) or 0)
    if bx > 1 or by > 1:
        raise ValueError(f'CameraInfo binning {bx}x{by} is not supported (publish full-resolution '
                         'images with binning 0 or 1)')
    roi = getattr(msg, 'roi', None)
    if roi is not None:
        full = (int(roi.x_offset), int(roi.y_offset)) == (0, 0) and \
            (int(roi.width), int(roi.height)) in ((0, 0), (int(msg.width), int(msg.height)))
        if not full:
            raise ValueError(f'CameraInfo roi (x {roi.x_offset}, y {roi.y_offset}, '
                             f'{roi.width}x{roi.height}) is not supported (publish the full '
                             'image: roi all zero)')
    return CameraModel.from_arrays(msg.width, msg.height, msg.k, msg.d, msg.r, msg.p,
                                   msg.distortion_model, msg.header.frame_id)
