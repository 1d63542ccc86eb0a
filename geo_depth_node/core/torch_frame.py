"""Device part of the frame path after matching: triangulation and packing in torch.

:class:`TorchFrame` does on a torch device exactly what ``DepthPipeline._triangulate``
(core/pipeline.py) and ``core.cloud.pack_points`` do in numpy, with the same float32
formulas in the same order (so the CPU result is bit-identical, CUDA equal to float
rounding of the optional rotation; on CUDA with triton, :meth:`TorchFrame.triangulate` and
:meth:`TorchFrame.pack` are one Triton launch each, same bytes):

    sigma_d = sqrt(sigma.disparity_px^2 + (sigma.lr_gain * lr_diff)^2)           [px]
    d_eff   = d - delta_cx;  Z = f*B / d_eff;  rel = sigma_d / d_eff             [m, -]
    sigma_Z = rel * Z;  sigma_r = sigma_Z * |ray|                                [m]
    BEYOND_RESOLUTION where not (d_eff > 0 and rel <= limit.max_relative_sigma) or
    (limit.max_sigma_m > 0 and not sigma_r <= limit.max_sigma_m).

The packed cloud is one (H, W, 24) uint8 tensor with the byte layout of
``contract.POINT_DTYPE`` (x y z sigma float32, provenance uint8, flags uint16, source
uint16, zero padding; NaN fields carry the bits of numpy's NaN, 0x7fc00000), so one
device -> host copy gives the PointCloud2 payload:
``np.frombuffer(packed.cpu().numpy(), POINT_DTYPE).reshape(H, W)``.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from .camera import StereoModel, ray_norms
from .contract import POINT_DTYPE, Flag, Provenance

_LOG = logging.getLogger(__name__)

#: parameters read (dotted names, as core/params.py)
FRAME_PARAMS = ('sigma.disparity_px', 'sigma.lr_gain', 'limit.max_relative_sigma',
                'limit.max_sigma_m', 'output.unrectify_points')


class TorchFrame:
    """Triangulate + classify + pack on a torch device, for one calibration at a time.

    Args:
        params: validated parameters (at least :data:`FRAME_PARAMS`).
        device: torch device.
        use_triton: force the Triton kernels on/off; default: on for CUDA devices when triton
            is installed (on the CPU only under ``sgm_triton.use_interpreter()``, for tests).

    Raises:
        ValueError: if a needed parameter is missing, or Triton is forced where it cannot run.
    """

    def __init__(self, params: Mapping[str, Any], device: Any = 'cpu',
                 use_triton: bool | None = None) -> None:
        import torch

        missing = [k for k in FRAME_PARAMS if k not in params]
        if missing:
            raise ValueError(f'TorchFrame needs parameters {missing}')
        self.params = {k: params[k] for k in FRAME_PARAMS}
        self.device = torch.device(device)
        self._cache_key: tuple | None = None
        self._geo: dict[str, Any] = {}
        if use_triton is None:
            use_triton = self.device.type == 'cuda' and _triton_ok()
        elif use_triton:
            from .sgm_triton import kernel_device_ok

            if not (_triton_ok() and kernel_device_ok(self.device)):
                raise ValueError(f'Triton kernels cannot run on {self.device} here')
        self.use_triton = bool(use_triton)

    def _use_triton(self) -> bool:
        """One fused Triton kernel per step instead of ~30 torch ops (CUDA with triton)."""
        return self.use_triton

    @staticmethod
    def geometry_key(stereo: StereoModel) -> tuple:
        """The calibration that the device constants depend on (a new one = new constants)."""
        return (stereo.left.key(), stereo.fb, stereo.delta_cx)

    def _geometry(self, stereo: StereoModel) -> dict[str, Any]:
        """Per-calibration constants on the device (computed in numpy exactly as the pipeline)."""
        import torch

        left = stereo.left
        key = self.geometry_key(stereo)
        if key != self._cache_key:
            u = (np.arange(left.width, dtype=np.float32) - np.float32(left.cx)) / np.float32(left.fx)
            v = (np.arange(left.height, dtype=np.float32) - np.float32(left.cy)) / np.float32(left.fy)
            rot = None
            if self.params['output.unrectify_points'] and not np.allclose(left.R, np.eye(3)):
                rot = torch.from_numpy(left.R.T.astype(np.float32).T.copy()).to(self.device)
            p = self.params
            consts = np.array([p['sigma.disparity_px'], p['sigma.lr_gain'], stereo.delta_cx, stereo.fb,
                               p['limit.max_relative_sigma'], p['limit.max_sigma_m'], np.nan, np.inf,
                               -np.inf], dtype=np.float32)
            c = torch.from_numpy(consts).to(self.device)
            # all constants live on the device: no host->device copy per frame (CUDA graphs)
            self._geo = {
                'u': torch.from_numpy(u).to(self.device), 'v': torch.from_numpy(v).to(self.device),
                'ray': torch.from_numpy(ray_norms(left)).to(self.device), 'rot': rot,
                's0': c[0], 'gain': c[1], 'dcx': c[2], 'fb': c[3], 'max_rel': c[4], 'max_sigma': c[5],
                'nan': c[6], 'inf': c[7], 'ninf': c[8], 'consts': c,
            }
            self._cache_key = key
        return self._geo

    def triangulate(self, disparity: Any, lr_diff: Any, flags: Any, stereo: StereoModel,
                    sigma_d: Any = None) -> dict[str, Any]:
        """Depth, sigma, provenance, points of every pixel, on the device.

        Args:
            disparity: (H, W) float32 px, NaN where the matcher gave no disparity.
            lr_diff: (H, W) float32 px.
            flags: (H, W) integer Flag bits from the matcher.
            stereo: the rectified pair (StereoModel.from_cameras).
            sigma_d: optional (H, W) float32 per-pixel disparity sigma (px) of the calibrated
                model (core.sigma_model ``sigma_d_torch``); None = the constant model above.

        Returns:
            dict of (H, W) tensors: 'depth', 'depth_sigma', 'sigma', 'sigma_disparity' (float32),
            'provenance' (uint8), 'flags' (int32), 'source' (int32 zeros), 'points' (H, W, 3)
            float32 (NaN for NONE), as ``FrameResult``.

        Raises:
            ValueError: on shapes that do not match the calibration.
        """
        import torch

        h, w = disparity.shape
        if (w, h) != (stereo.left.width, stereo.left.height):
            raise ValueError(f'disparity is {w}x{h} but the camera is '
                             f'{stereo.left.width}x{stereo.left.height}')
        p = self.params
        g = self._geometry(stereo)
        if self._use_triton():
            from . import sgm_triton as kt

            return kt.triangulate_triton(disparity, lr_diff, flags, g['u'], g['v'], g['ray'], g['rot'],
                                         g['consts'], float(p['limit.max_sigma_m']) > 0,
                                         sigma_d=sigma_d)
        nan = g['nan']
        matched = ~torch.isnan(disparity)
        s0, gain = g['s0'], g['gain']
        # sqrt via float64 = the correctly rounded float32 root (numpy's); torch's float32 CPU
        # sqrt differs from it in the last bit for ~15 % of inputs (measured)
        if sigma_d is None:
            sigma_d = torch.sqrt((s0 * s0 + (gain * lr_diff) ** 2).double()).float()
        else:
            sigma_d = sigma_d.float()
        sigma_d = torch.where(matched, sigma_d, nan)
        d_eff = disparity - g['dcx']
        z = g['fb'] / d_eff
        rel = sigma_d / d_eff
        sigma_z = rel * z
        sigma_r = sigma_z * g['ray']
        beyond = matched & ~((d_eff > 0) & (rel <= g['max_rel']))
        if float(p['limit.max_sigma_m']) > 0:
            beyond |= matched & ~(sigma_r <= g['max_sigma'])
        fl = flags.to(torch.int32) | torch.where(beyond, int(Flag.BEYOND_RESOLUTION), 0)
        measured = matched & ~beyond
        too_close = (flags.to(torch.int32) & int(Flag.TOO_CLOSE)) != 0
        depth = torch.where(measured, z, nan)
        depth = torch.where(beyond, g['inf'], depth)
        depth = torch.where(too_close, g['ninf'], depth)
        zm = torch.where(measured, depth, nan)
        pts = torch.stack([g['u'][None, :] * zm, g['v'][:, None] * zm, zm], dim=-1)
        if g['rot'] is not None:
            pts = (pts.reshape(-1, 3) @ g['rot']).reshape(h, w, 3)
        return {
            'depth': depth, 'depth_sigma': torch.where(measured, sigma_z, nan),
            'sigma': torch.where(measured, sigma_r, nan), 'sigma_disparity': sigma_d,
            'provenance': torch.where(measured, int(Provenance.MEASURED), 0).to(torch.uint8),
            'flags': fl, 'source': torch.zeros((h, w), dtype=torch.int32, device=z.device),
            'points': pts, 'measured': measured,
        }

    def pack(self, tri: Mapping[str, Any]) -> Any:
        """(H, W, 24) uint8 tensor in the POINT_DTYPE byte layout (organized cloud).

        NaN of x/y/z/sigma is selected from a NaN constant (never produced by arithmetic), so
        its bits are numpy's (0x7fc00000) on every device and the bytes equal
        ``core.cloud.pack_points``.
        """
        import torch

        pts = tri['points']
        if self.use_triton:
            from . import sgm_triton as kt

            return kt.pack_triton(tri)
        h, w = pts.shape[:2]
        measured = tri['measured']
        nan = tri['depth_sigma'].new_full((), float('nan'))
        words = torch.empty((h, w, 6), dtype=torch.int32, device=pts.device)
        for i in range(3):
            words[..., i] = torch.where(measured, pts[..., i], nan).view(torch.int32)
        words[..., 3] = torch.where(measured, tri['sigma'], nan).view(torch.int32)
        words[..., 4] = tri['provenance'].to(torch.int32) | (tri['flags'].to(torch.int32) << 16)
        words[..., 5] = tri['source'].to(torch.int32) & 0xFFFF
        return words.view(torch.uint8).reshape(h, w, POINT_DTYPE.itemsize)

    def process(self, disparity: Any, lr_diff: Any, flags: Any, stereo: StereoModel) -> tuple[dict, Any]:
        """:meth:`triangulate` then :meth:`pack`; returns (triangulation dict, packed tensor)."""
        tri = self.triangulate(disparity, lr_diff, flags, stereo)
        return tri, self.pack(tri)


_TRITON_OK: list[bool] = []


def _triton_ok() -> bool:
    """Whether triton can be imported (looked up once)."""
    if not _TRITON_OK:
        from .sgm_triton import triton_available

        _TRITON_OK.append(triton_available())
    return _TRITON_OK[0]


def packed_to_numpy(packed: Any) -> np.ndarray:
    """Device (H, W, 24) uint8 tensor -> (H, W) POINT_DTYPE array (one device -> host copy)."""
    arr = packed.cpu().numpy()
    h, w = arr.shape[:2]
    return np.frombuffer(arr.tobytes(), dtype=POINT_DTYPE).reshape(h, w)
