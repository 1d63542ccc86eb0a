"""Coverage of the provenance classes' sigmas against the exact truth of synthetic worlds.

``geo-depth prior-coverage --worlds 8 --frames 6`` generates worlds (``geo_depth_node.synth``),
runs each through the same :class:`~geo_depth_node.core.pipeline.DepthPipeline` as the node
(GNSS/IMU from the bag, the world's DEM and params) and counts, per class (MEASURED, FUSED,
PRIOR), the fraction of points within 1 and 2 sigma of the true range and beyond 3 sigma.

Points are pooled over all frames of all worlds. The DEM error of a world is a smooth random
field: pixels that see the same patch of it share one draw, so the fractions converge with the
number of independent patches seen, not with the number of pixels. Short correlation lengths
(``--dem-corr``), frames far apart (``--rate``) and many worlds make the estimate tight.
By default only terrain pixels that did not change since the survey are scored (``surface ==
1`` and outside the pit/mound/building of the world), the population for which the DEM's
stated accuracy holds.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

_LOG = logging.getLogger(__name__)

CLASSES = ('MEASURED', 'FUSED', 'PRIOR')


@dataclasses.dataclass
class Tally:
    """Counts of points and of points within 1 / 2 sigma and beyond 3 sigma."""

    n: int = 0
    in1: int = 0
    in2: int = 0
    out3: int = 0

    def add(self, err: np.ndarray, sigma: np.ndarray) -> None:
        """Add points with absolute errors ``err`` and sigmas ``sigma`` (same shape, metres)."""
        self.n += int(err.size)
        self.in1 += int((err <= sigma).sum())
        self.in2 += int((err <= 2 * sigma).sum())
        self.out3 += int((err > 3 * sigma).sum())

    def summary(self) -> dict[str, float]:
        """n and the fractions (NaN when empty)."""
        n = max(self.n, 1)
        nan = float('nan')
        return {'n': self.n, 'within_1sigma': self.in1 / n if self.n else nan,
                'within_2sigma': self.in2 / n if self.n else nan,
                'beyond_3sigma': self.out3 / n if self.n else nan}


def truth_cameras(truth: dict[str, Any]) -> tuple[Any, Any, np.ndarray]:
    """The rectified left and right CameraModels of a synthetic world's truth (``load_truth``)
    and the (H, W) ray norm ``|((u - cx)/fx, (v - cy)/fy, 1)|`` (range = depth * norm)."""
    from ..core.camera import CameraModel

    h, w = truth['depth'].shape[1:]
    K = truth['K']
    left, right = (CameraModel.from_arrays(w, h, K, truth['D'], np.eye(3), truth[k])
                   for k in ('P_left', 'P_right'))
    u = (np.arange(w) - K[0, 2]) / K[0, 0]
    v = (np.arange(h) - K[1, 2]) / K[1, 1]
    return left, right, np.sqrt(1 + u[None, :] ** 2 + v[:, None] ** 2)


def truth_points_enu(truth: dict[str, Any], i: int) -> np.ndarray:
    """(H, W, 3) true surface points of frame ``i`` in the world's ENU frame, metres (NaN / inf
    where the truth depth is sky)."""
    h, w = truth['depth'].shape[1:]
    K = truth['K']
    u = (np.arange(w) - K[0, 2]) / K[0, 0]
    v = (np.arange(h) - K[1, 2]) / K[1, 1]
    d = np.stack(np.broadcast_arrays(u[None, :], v[:, None], 1.0), -1)
    T = truth['T_enu_left'][i]
    with np.errstate(invalid='ignore'):
        return (d * truth['depth'][i][..., None]) @ T[:3, :3].T + T[:3, 3]


def load_world(out: Path, cfg, params_override: dict[str, Any] | None = None
               ) -> tuple[Any, dict[str, Any], list[tuple[int, np.ndarray, np.ndarray]], Any, Any]:
    """Generate one world (SynthConfig ``cfg``) into ``out`` and make the node's DepthPipeline
    with the world's params (updated by ``params_override``), IMU/GNSS of the whole bag fed:
    (pipeline, truth of load_truth, [(stamp_ns, left, right)] in frame order, left and right
    CameraModel)."""
    from rosbags.highlevel import AnyReader

    from ..core.params import load_params_yaml
    from ..core.pipeline import DepthPipeline
    from ..core.pose import gnss_fix_from_msg, imu_sample_from_msg
    from ..synth.generate import generate_world, load_truth

    info = generate_world(out, cfg, progress=False)
    truth = load_truth(info['truth'])
    params = load_params_yaml(info['params'])
    params.update(params_override or {})
    pipe = DepthPipeline(params)
    frames: dict[int, dict] = {}
    with AnyReader([Path(info['bag'])]) as reader:
        for c, t, raw in reader.messages():
            if c.topic == '/imu/data':
                pipe.add_imu(imu_sample_from_msg(reader.deserialize(raw, c.msgtype)))
            elif c.topic == '/gnss/fix':
                pipe.add_gnss(gnss_fix_from_msg(reader.deserialize(raw, c.msgtype)))
            elif c.topic in ('/left/image_rect', '/right/image_rect'):
                m = reader.deserialize(raw, c.msgtype)
                frames.setdefault(t, {})[c.topic] = m.data.reshape(m.height, m.width)
    left, right, _ = truth_cameras(truth)
    pairs = [(int(stamp), frames[int(stamp)]['/left/image_rect'],
              frames[int(stamp)]['/right/image_rect']) for stamp in truth['stamps_ns']]
    return pipe, truth, pairs, left, right


def process_world(out: Path, cfg, params_override: dict[str, Any] | None = None
                  ) -> tuple[Any, dict[str, Any], list]:
    """:func:`load_world`, then the pipeline over every frame: (pipeline, truth, FrameResults
    in frame order)."""
    pipe, truth, pairs, left, right = load_world(out, cfg, params_override)
    results = [pipe.process(lft, rgt, left, right, stamp_ns=stamp) for stamp, lft, rgt in pairs]
    return pipe, truth, results


def run_world(out: Path, cfg, params_override: dict[str, Any] | None = None,
              unchanged_terrain_only: bool = True) -> dict[str, Tally]:
    """:func:`process_world`, then the tallies per class against the truth."""
    from ..core.contract import Provenance
    from ..synth.generate import World

    _, truth, results = process_world(out, cfg, params_override)
    _, _, norm = truth_cameras(truth)
    terrain = World(cfg).terrain if unchanged_terrain_only else None
    tallies = {c: Tally() for c in CLASSES}
    for i, res in enumerate(results):
        r_true = truth['depth'][i] * norm
        sel = np.isfinite(r_true)
        if unchanged_terrain_only:
            sel &= truth['surface'][i] == 1
            p = truth_points_enu(truth, i)
            with np.errstate(invalid='ignore'):
                sel &= ~terrain.in_change(p[..., 0], p[..., 1], margin_m=2.0)
        for name in CLASSES:
            m = sel & (res.provenance == Provenance[name])
            err = np.abs(np.linalg.norm(res.points[m], axis=-1) - r_true[m])
            tallies[name].add(err, res.sigma[m])
    return tallies


def evaluate(worlds: int = 8, frames: int = 6, seed0: int = 100, workdir: str | None = None,
             params_override: dict[str, Any] | None = None, **synth: Any) -> dict[str, Any]:
    """Pool the tallies of ``worlds`` worlds (seeds seed0..) of ``frames`` frames each.

    ``synth``: SynthConfig options (defaults here: 256x192, 1 Hz frames, DEM 1 m cells with a
    4 m correlation length over +-200 m, 0.5 m vertical / 0.5 m horizontal sigma).
    Returns ``{'classes': {name: summary}, 'config': {...}}``.
    """
    from ..synth.config import SynthConfig

    opts = dict(width=256, height=192, rate_hz=1.0, dem_res_m=1.0, dem_corr_m=4.0,
                dem_extent_m=200.0, dem_sigma_m=0.5, dem_sigma_h_m=0.5)
    opts.update(synth)
    override = {'stereo.num_disparities': 64}
    override.update(params_override or {})
    total = {c: Tally() for c in CLASSES}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for k in range(worlds):
            cfg = SynthConfig(seed=seed0 + k, frames=frames, **opts).validate()
            tallies = run_world(Path(tmp) / f'w{k}', cfg, override)
            for c in CLASSES:
                t = tallies[c]
                total[c].n += t.n
                total[c].in1 += t.in1
                total[c].in2 += t.in2
                total[c].out3 += t.out3
            _LOG.info('world %d/%d: %s', k + 1, worlds,
                      {c: total[c].summary() for c in CLASSES})
    return {'classes': {c: total[c].summary() for c in CLASSES},
            'config': {'worlds': worlds, 'frames': frames, 'seed0': seed0, **opts,
                       'params_override': override}}


def format_table(report: dict[str, Any]) -> str:
    """A human-readable table of :func:`evaluate`'s report."""
    lines = [f'{"class":10s} {"points":>9s} {"<=1 sigma":>10s} {"<=2 sigma":>10s} '
             f'{">3 sigma":>9s}']
    for c, s in report['classes'].items():
        lines.append(f'{c:10s} {s["n"]:9d} {100 * s["within_1sigma"]:9.1f}% '
                     f'{100 * s["within_2sigma"]:9.1f}% {100 * s["beyond_3sigma"]:8.2f}%')
    lines.append('(target for an honest Gaussian sigma: 68.3 % / 95.4 % / 0.27 %)')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``geo-depth prior-coverage``."""
    import argparse

    ap = argparse.ArgumentParser(prog='geo-depth prior-coverage', description=__doc__.split(
        '\n\n')[0])
    ap.add_argument('--worlds', type=int, default=8, help='number of worlds (default 8)')
    ap.add_argument('--frames', type=int, default=6, help='frames per world (default 6)')
    ap.add_argument('--seed0', type=int, default=100, help='seed of the first world')
    ap.add_argument('--dem-corr', type=float, default=4.0, help='DEM error correlation, m')
    ap.add_argument('--dem-res', type=float, default=1.0, help='DEM cell, m')
    ap.add_argument('--terrain', default='hills', help='flat | hills | mountains')
    ap.add_argument('--json', action='store_true', help='print one JSON object')
    a = ap.parse_args(argv)
    rep = evaluate(a.worlds, a.frames, a.seed0, dem_corr_m=a.dem_corr, dem_res_m=a.dem_res,
                   terrain=a.terrain)
    print(json.dumps(rep) if a.json else format_table(rep))
    return 0
