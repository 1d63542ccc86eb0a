"""PNG pictures of one frame: image with provenance overlay, depth, sigma, reasons. ROS-free."""
from __future__ import annotations

import os

import numpy as np

from ..core.contract import Flag, Provenance

#: colours (RGB 0..1) of the provenance classes and of the main reason of NONE pixels
CLASS_COLOURS = {
    Provenance.MEASURED: (0.10, 0.75, 0.25),
    Provenance.FUSED: (0.15, 0.45, 0.95),
    Provenance.PRIOR: (1.00, 0.60, 0.05),
}
REASON_COLOURS = {  # in priority order
    Flag.OUT_OF_VIEW: (0.25, 0.25, 0.25),
    Flag.SKY: (0.55, 0.80, 1.00),
    Flag.TOO_CLOSE: (0.00, 0.90, 0.90),
    Flag.LR_INCONSISTENT: (1.00, 0.90, 0.00),
    Flag.NO_MATCH: (0.90, 0.10, 0.10),
    Flag.BEYOND_RESOLUTION: (0.60, 0.20, 0.80),
}


def provenance_rgb(provenance: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """(H, W) provenance + flags -> (H, W, 3) float RGB: class colour, or the main reason."""
    rgb = np.zeros(provenance.shape + (3,), dtype=np.float32)
    for cls, col in CLASS_COLOURS.items():
        rgb[provenance == cls] = col
    none = provenance == Provenance.NONE
    done = ~none
    for flag, col in REASON_COLOURS.items():
        sel = none & ~done & ((flags & np.uint16(flag)) != 0)
        rgb[sel] = col
        done |= sel
    return rgb


def save_frame_png(path: str | os.PathLike, image: np.ndarray, provenance: np.ndarray,
                   flags: np.ndarray, depth: np.ndarray, sigma: np.ndarray,
                   title: str = '') -> None:
    """Write a 2x2 figure: image + provenance overlay, reasons map, depth, range sigma.

    Args:
        image: (H, W) uint8 left image.
        provenance, flags: (H, W) per-pixel class and flag bits.
        depth: (H, W) float32 Z in metres (non-finite = no point).
        sigma: (H, W) float32 range sigma in metres (NaN = no point).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Patch

    h, w = provenance.shape
    fig, axes = plt.subplots(2, 2, figsize=(12, 12 * h / w * 0.95 + 0.6), dpi=90)
    rgb = provenance_rgb(provenance, flags)
    base = np.repeat((image.astype(np.float32) / 255.0)[..., None], 3, axis=2)
    has_point = provenance != Provenance.NONE
    overlay = base.copy()
    overlay[has_point] = 0.45 * base[has_point] + 0.55 * rgb[has_point]
    ax = axes[0, 0]
    ax.imshow(overlay)
    ax.set_title('left image, points coloured by provenance')
    ax.legend(handles=[Patch(color=c, label=p.name) for p, c in CLASS_COLOURS.items()],
              loc='lower right', fontsize=8)
    ax = axes[0, 1]
    ax.imshow(rgb)
    ax.set_title('provenance / reason of NONE pixels')
    ax.legend(handles=[Patch(color=CLASS_COLOURS[Provenance.MEASURED], label='MEASURED')]
              + [Patch(color=c, label=f.name) for f, c in REASON_COLOURS.items()],
              loc='lower right', fontsize=7)
    finite = np.isfinite(depth)
    ax = axes[1, 0]
    d = np.where(finite, depth, np.nan)
    vmax = float(np.nanpercentile(d, 99)) if finite.any() else 1.0
    im = ax.imshow(d, cmap='turbo', vmin=0.0, vmax=vmax)
    ax.set_title('depth Z [m] (white: no point)')
    fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02, label='m')
    ax = axes[1, 1]
    s = np.where(np.isfinite(sigma) & (sigma > 0), sigma, np.nan)
    if np.isfinite(s).any():
        lo, hi = float(np.nanpercentile(s, 1)), float(np.nanpercentile(s, 99.5))
        im = ax.imshow(s, cmap='magma', norm=LogNorm(vmin=max(lo, 1e-4), vmax=max(hi, lo * 1.01)))
        fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02, label='m (log)')
    ax.set_title('1-sigma along the ray [m]')
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
