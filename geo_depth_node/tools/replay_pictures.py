"""Pictures of a replay (PNG): per-frame panels, sigma against range, a 3D view of the cloud.

* per frame: :func:`geo_depth_node.tools.pictures.save_frame_png` (left image with the
  provenance overlay, reasons, depth and sigma with colour bars);
* :func:`save_sigma_range_plot`: 1-sigma along the ray against the range per provenance class,
  with the stereo physics curve ``sigma_r = r^2 / (f B) * sigma_d`` (on-axis pixel) and the
  physical limit ``sigma = limit.max_relative_sigma * r``;
* :func:`save_cloud_view`: the accumulated cloud coloured by provenance, rendered offscreen with
  Open3D (Filament; needs a Vulkan loader and driver: apt ``libvulkan1 mesa-vulkan-drivers``)
  in a child process, falling back to a matplotlib 3D scatter.

matplotlib (Agg) and open3d are imported inside the functions. ROS-free.
"""
from __future__ import annotations

import ctypes.util
import logging
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from ..core.contract import Provenance
from .pictures import CLASS_COLOURS

_LOG = logging.getLogger(__name__)

#: classes that carry a sigma (NONE points have none)
POINT_CLASSES = (Provenance.MEASURED, Provenance.FUSED, Provenance.PRIOR)


def _plt():
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def save_sigma_range_plot(path: str | os.PathLike, samples: Mapping[str, tuple[np.ndarray, np.ndarray]],
                          *, focal_px: float, baseline_m: float, sigma_d_px: float,
                          max_relative_sigma: float, max_sigma_m: float = 0.0,
                          title: str = '') -> None:
    """Scatter of sigma against range per class, with the physics curve and the limit.

    Args:
        path: PNG to write.
        samples: class name -> (range (N,) m, sigma (N,) m along the ray); classes may be empty.
        focal_px, baseline_m: f (rectified fx, px) and B (m) of the rig.
        sigma_d_px: the disparity sigma floor (``sigma.disparity_px``), px.
        max_relative_sigma, max_sigma_m: the physical limit (``limit.*``; 0 = no absolute cap).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 6), dpi=100)
    r_max, s_lo, s_hi = 1.0, math.inf, 0.0
    for name, (rng, sig) in samples.items():
        ok = np.isfinite(rng) & np.isfinite(sig) & (sig > 0)
        if not ok.any():
            continue
        r_max = max(r_max, float(np.percentile(rng[ok], 99.9)))
        s_lo, s_hi = min(s_lo, float(sig[ok].min())), max(s_hi, float(sig[ok].max()))
        colour = CLASS_COLOURS[Provenance[name]]
        ax.scatter(rng[ok], sig[ok], s=1.5, alpha=0.35, color=colour, linewidths=0,
                   label=f'{name} ({int(ok.sum())} pts shown)', rasterized=True)
    r = np.linspace(0.05, r_max * 1.1, 400)
    ax.plot(r, r * r / (focal_px * baseline_m) * sigma_d_px, 'k-', lw=1.5,
            label=rf'physics $\sigma_r = r^2/(fB)\,\sigma_d$ (on axis; f={focal_px:.0f} px, '
                  rf'B={baseline_m:.3f} m, $\sigma_d$={sigma_d_px:g} px)')
    ax.plot(r, max_relative_sigma * r, 'r--', lw=1.2,
            label=f'physical limit sigma = {max_relative_sigma:g} * r')
    if max_sigma_m > 0:
        ax.axhline(max_sigma_m, color='r', ls=':', lw=1.2, label=f'max_sigma_m = {max_sigma_m:g} m')
    ax.set_xlabel('range along the viewing ray r [m]')
    ax.set_ylabel('1-sigma along the ray [m]')
    ax.set_yscale('log')
    ax.set_xlim(0, r_max * 1.1)
    if s_hi > 0:  # the points and a decade around them, not the curves down to r = 0
        ax.set_ylim(s_lo / 10.0, max(s_hi, max_relative_sigma * r_max) * 3.0)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(loc='lower right', fontsize=8, markerscale=6)
    ax.set_title(title or 'sigma against range per provenance class')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def class_colours(provenance: np.ndarray) -> np.ndarray:
    """(N,) provenance -> (N, 3) float32 RGB 0..1 (the colours of tools/pictures.py)."""
    rgb = np.full(provenance.shape + (3,), 0.5, dtype=np.float32)
    for cls, col in CLASS_COLOURS.items():
        rgb[provenance == cls] = col
    return rgb


_O3D_SCRIPT = r'''
import sys
import numpy as np
import open3d as o3d
d = np.load(sys.argv[1])
xyz, rgb = d['xyz'].astype(np.float64), d['rgb'].astype(np.float64)
w, h = int(d['size'][0]), int(d['size'][1])
r = o3d.visualization.rendering.OffscreenRenderer(w, h)
r.scene.set_background([1.0, 1.0, 1.0, 1.0])
pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
pc.colors = o3d.utility.Vector3dVector(rgb)
mat = o3d.visualization.rendering.MaterialRecord()
mat.shader = 'defaultUnlit'
mat.point_size = 2.0
r.scene.add_geometry('cloud', pc, mat)
r.setup_camera(55.0, d['centre'], d['eye'], d['up'])
o3d.io.write_image(sys.argv[2], r.render_to_image())
'''


def _view(xyz: np.ndarray, up_axis: np.ndarray, forward: np.ndarray) -> tuple[np.ndarray, ...]:
    """(centre, eye, up) of a camera behind and above the cloud, looking along ``forward``."""
    lo, hi = np.percentile(xyz, 2, axis=0), np.percentile(xyz, 98, axis=0)
    centre = 0.5 * (lo + hi)
    size = float(np.linalg.norm(hi - lo)) or 1.0
    eye = centre - forward * 0.9 * size + up_axis * 0.6 * size
    return centre, eye, up_axis


def _render_open3d(path: Path, xyz: np.ndarray, rgb: np.ndarray, up: np.ndarray,
                   forward: np.ndarray, size: tuple[int, int], timeout_s: float) -> str:
    """Offscreen Open3D render in a child process (a driver crash cannot take us down).

    Returns:
        '' on success, otherwise why it did not work.
    """
    import importlib.util

    if importlib.util.find_spec('open3d') is None:
        return 'open3d is not installed'
    if ctypes.util.find_library('vulkan') is None:
        return ('no Vulkan loader (libvulkan.so.1): Open3D offscreen rendering needs the apt '
                'packages libvulkan1 mesa-vulkan-drivers')
    centre, eye, up = _view(xyz, up, forward)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / 'cloud.npz'
        np.savez(data, xyz=xyz.astype(np.float32), rgb=rgb.astype(np.float32), centre=centre,
                 eye=eye, up=up, size=np.array(size))
        try:
            proc = subprocess.run([sys.executable, '-c', _O3D_SCRIPT, str(data), str(path)],
                                  capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return f'Open3D offscreen rendering timed out after {timeout_s:.0f} s'
    if proc.returncode != 0 or not path.exists():
        lines = [ln for ln in (proc.stderr or '').splitlines() if ln.strip()]
        return (f'Open3D offscreen rendering failed (exit {proc.returncode}): '
                + (lines[-1] if lines else 'no message'))
    return ''


def _render_matplotlib(path: Path, xyz: np.ndarray, rgb: np.ndarray, labels: tuple[str, str, str],
                       title: str, legend: Mapping[str, tuple[float, float, float]],
                       azim: float) -> None:
    plt = _plt()
    from matplotlib.patches import Patch

    fig = plt.figure(figsize=(10, 8), dpi=100)
    ax = fig.add_subplot(projection='3d')
    ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=rgb, s=0.6, linewidths=0, depthshade=False,
               rasterized=True)
    lo, hi = np.percentile(xyz, 1, axis=0), np.percentile(xyz, 99, axis=0)
    centre, half = 0.5 * (lo + hi), 0.5 * float(np.max(hi - lo)) or 1.0
    for setter, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre, strict=True):
        setter(c - half, c + half)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_zlabel(labels[2])
    ax.view_init(elev=28, azim=azim)
    ax.legend(handles=[Patch(color=c, label=n) for n, c in legend.items()], loc='upper left',
              fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_cloud_view(path: str | os.PathLike, xyz: np.ndarray, provenance: np.ndarray, *,
                    frame: str, title: str, forward: np.ndarray | None = None,
                    renderer: str = 'auto', max_points: int = 150_000,
                    size: tuple[int, int] = (1200, 900), timeout_s: float = 90.0,
                    seed: int = 0) -> dict[str, str]:
    """Write a 3D view of a cloud coloured by provenance.

    Args:
        path: PNG to write.
        xyz: (N, 3) float points in metres, in ``frame``.
        provenance: (N,) uint8 class of each point.
        frame: 'camera' (optical frame: x right, y down, z forward) or 'enu' (x east,
            y north, z up): sets the viewing direction.
        title: picture title (say which frame and which poses).
        forward: viewing direction in ``frame`` (default: the optical axis z for 'camera',
            east for 'enu'); the view is from behind and above along it.
        renderer: 'auto' (Open3D offscreen, else matplotlib), 'open3d' or 'matplotlib'.
        max_points: random subsample above this many points (deterministic, ``seed``).

    Returns:
        {'renderer': 'open3d' | 'matplotlib', 'open3d_error': why Open3D was not used ('' if it was)}.

    Raises:
        ValueError: unknown renderer or frame, bad shapes, or no points.
    """
    if renderer not in ('auto', 'open3d', 'matplotlib'):
        raise ValueError(f'unknown renderer {renderer!r}; expected auto, open3d or matplotlib')
    if frame not in ('camera', 'enu'):
        raise ValueError(f'unknown frame {frame!r}; expected camera or enu')
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or xyz.shape[0] != provenance.shape[0]:
        raise ValueError(f'xyz must be (N, 3) matching provenance (N,), got {xyz.shape} and '
                         f'{provenance.shape}')
    ok = np.all(np.isfinite(xyz), axis=1)
    xyz, provenance = xyz[ok], provenance[ok]
    if xyz.shape[0] == 0:
        raise ValueError('no finite points to draw')
    if xyz.shape[0] > max_points:
        idx = np.random.default_rng(seed).choice(xyz.shape[0], max_points, replace=False)
        xyz, provenance = xyz[np.sort(idx)], provenance[np.sort(idx)]
    rgb = class_colours(provenance)
    legend = {p.name: c for p, c in CLASS_COLOURS.items() if np.any(provenance == p)}
    path = Path(path)
    if frame == 'camera':
        up = np.array([0.0, -1.0, 0.0])
        fwd = np.array([0.0, 0.0, 1.0]) if forward is None else np.asarray(forward, float)
        fwd = fwd - up * float(fwd @ up)
    else:
        up = np.array([0.0, 0.0, 1.0])
        fwd = np.array([1.0, 0.0, 0.0]) if forward is None else np.asarray(forward, float)
        fwd = np.array([fwd[0], fwd[1], 0.0])
    fwd = fwd / np.linalg.norm(fwd) if np.linalg.norm(fwd) > 1e-9 else np.array([1.0, 0.0, 0.0])
    why = 'not tried (renderer=matplotlib)'
    if renderer in ('auto', 'open3d'):
        why = _render_open3d(path, xyz, rgb, up, fwd, size, timeout_s)
        if not why:
            return {'renderer': 'open3d', 'open3d_error': ''}
        if renderer == 'open3d':
            raise RuntimeError(why)
        _LOG.info('3D view with matplotlib: %s', why)
    if frame == 'camera':  # show it upright: (x right, z forward, -y up)
        shown = np.stack([xyz[:, 0], xyz[:, 2], -xyz[:, 1]], axis=1)
        fwd2 = np.array([fwd[0], fwd[2]])
        labels = ('x right [m]', 'z forward [m]', '-y up [m]')
    else:
        shown, fwd2, labels = xyz, fwd[:2], ('east [m]', 'north [m]', 'up [m]')
    # matplotlib's azimuth is where the viewer stands: behind the cloud, 25 deg to the side
    azim = float(np.degrees(np.arctan2(-fwd2[1], -fwd2[0]))) - 25.0
    _render_matplotlib(path, shown, rgb, labels, title, legend, azim)
    return {'renderer': 'matplotlib', 'open3d_error': why}
