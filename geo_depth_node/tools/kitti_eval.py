"""KITTI + DEM agreement: do stereo and the DEM prior agree on the road? (``kitti_eval``).

Usage::

    python -m geo_depth_node.tools.kitti_eval [OUT_DIR] [--bag BAG --params PARAMS.yaml]
        [--dem srtm|rhine] [--relaxed 10.0] [--json FILE]

Without ``--bag`` the shared KITTI drive is converted first (tools/kitti2bag.py) into OUT_DIR
(default: a temporary folder). Every stereo frame is run through the package's
:class:`~geo_depth_node.core.pipeline.DepthPipeline` (stereo part, no DEM), the camera pose
comes from the pipeline's own pose estimator fed with every /imu/data and /gnss/fix message
(interpolated at the image stamp), and the DEM prior of every pixel from
:class:`~geo_depth_node.core.geoprior.GeoPrior` (the node's ray-cast). The full pipeline with
the DEM is also run (with the params' ``fusion.max_prior_relative_sigma`` and a relaxed one)
to count what the fusion makes of the ground pixels.

GROUND PIXELS (the definition used for every number): MEASURED stereo pixels whose ray points
below the horizon (ENU direction z < -0.02) in the lower half of the image, at a stereo range
<= 30 m, whose stereo point lies within 0.3 m (vertically) of the ground plane fitted, per
frame, to those candidates (least squares, 3 passes, each keeping the points within
3 x the median absolute residual, at least 0.1 m). This is the road and the pavement seen by
stereo; cars and walls fall off the plane.

Reported (per frame and pooled): ground pixels; how many have a DEM prior (ray status HIT;
the ray-cast says BELOW_TERRAIN when the camera itself is under the DEM surface, which
happens with a surface model in a street); of those, the fraction with
``|r_prior - r_stereo| <= 2 sqrt(sigma_prior^2 + sigma_stereo^2)``; the median of
``r_prior - r_stereo`` (m, along the ray) and of ``h_dem - h_stereo`` (m, the DEM height at
the stereo point's east/north minus the stereo point's height: the DEM height error at the
road); the median relative prior sigma; and the fusion classes of the ground pixels.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

_LOG = logging.getLogger(__name__)

MAX_GROUND_RANGE_M = 30.0
PLANE_TOL_M = 0.3
HORIZON_DZ = -0.02


def _frames(bag: Path) -> list[dict[str, Any]]:
    """The stereo frames of the bag: dicts of the four inputs (exact stamps), in order."""
    from .bag_io import StereoBag, input_topics, stamp_ns

    by_stamp: dict[int, dict[str, Any]] = {}
    with StereoBag(bag, input_topics(False)) as sb:
        for name, msg in sb.messages():
            by_stamp.setdefault(stamp_ns(msg), {})[name] = msg
    return [dict(v, stamp=k) for k, v in sorted(by_stamp.items()) if len(v) == 4]


def _pose_messages(bag: Path) -> list[tuple[bool, Any]]:
    """(is_imu, GnssFix | ImuSample) of every pose message in the bag."""
    from rosbags.highlevel import AnyReader

    from ..core.pose import gnss_fix_from_msg, imu_sample_from_msg
    from .scene_bag import kilted_typestore

    out = []
    with AnyReader([bag], default_typestore=kilted_typestore()) as r:
        conns = [c for c in r.connections
                 if c.msgtype in ('sensor_msgs/msg/Imu', 'sensor_msgs/msg/NavSatFix')]
        for conn, _t, raw in r.messages(connections=conns):
            msg = r.deserialize(raw, conn.msgtype)
            imu = conn.msgtype.endswith('Imu')
            out.append((imu, imu_sample_from_msg(msg) if imu else gnss_fix_from_msg(msg)))
    return out


def fit_ground(p: np.ndarray, passes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Robust plane z = a x + b y + c through ENU points (N, 3); returns (coef (3,), residual (N,)).

    Raises:
        ValueError: fewer than 10 points.
    """
    if p.shape[0] < 10:
        raise ValueError(f'need >= 10 points to fit the ground plane, got {p.shape[0]}')
    keep = np.ones(p.shape[0], dtype=bool)
    a = np.c_[p[:, 0], p[:, 1], np.ones(p.shape[0])]
    coef = np.zeros(3)
    for _ in range(passes):
        coef, *_ = np.linalg.lstsq(a[keep], p[keep, 2], rcond=None)
        res = p[:, 2] - a @ coef
        tol = max(3.0 * float(np.median(np.abs(res[keep]))), 0.1)
        keep = np.abs(res) <= tol
    return coef, p[:, 2] - a @ coef


def _with_sources(params: dict[str, Any], dem: str) -> dict[str, Any]:
    """params restricted to one DEM source (``dem``) from the converted params file."""
    from ..core.params import dem_source_names

    if dem not in dem_source_names(params['dem.sources']):
        raise ValueError(f'DEM source {dem!r} is not in the params (dem.sources = '
                         f'{params["dem.sources"]!r})')
    out = {k: v for k, v in params.items()
           if not k.startswith('dem.source.') or k.startswith(f'dem.source.{dem}.')}
    out['dem.sources'] = dem
    return out


def evaluate(bag: str | Path, params_path: str | Path, *, dem: str = 'srtm',
             relaxed: float = 10.0) -> dict[str, Any]:
    """Run the agreement measurement (see the module docstring); returns the report dict.

    Raises:
        ValueError: a DEM source not in the params, or a bag without stereo frames.
    """
    from ..core.contract import Flag, Provenance
    from ..core.params import load_params_yaml
    from ..core.pipeline import DepthPipeline
    from ..core.raycast import RayStatus
    from ..core.frame_io import decode_stereo

    bag = Path(bag)
    base = {k: v for k, v in load_params_yaml(str(params_path)).items()}
    params = _with_sources(base, dem)
    stereo_params = dict(params, **{'dem.sources': ''})
    stereo_params = {k: v for k, v in stereo_params.items() if not k.startswith('dem.source.')}
    stereo = DepthPipeline(stereo_params)
    full = {'default': DepthPipeline(params),
            'relaxed': DepthPipeline(dict(params, **{'fusion.max_prior_relative_sigma': relaxed}))}
    pose_msgs = _pose_messages(bag)
    for pipe in full.values():
        # offline every pose message is known: keep them all (as tools/replay.py does)
        pipe.georef.pose.config = dataclasses.replace(pipe.georef.pose.config, buffer_s=1e9)
        for imu, s in pose_msgs:
            (pipe.add_imu if imu else pipe.add_gnss)(s)
    georef = full['default'].georef
    frames = _frames(bag)
    if not frames:
        raise ValueError(f'{bag}: no complete stereo frames')
    pooled: dict[str, list[np.ndarray]] = {k: [] for k in ('dr', 'sig', 'dh', 'rel', 'r', 'sig1', 'rel1')}
    classes = {k: {'FUSED': 0, 'MEASURED': 0, 'MEASURED_PRIOR_CONFLICT': 0, 'PRIOR': 0, 'NONE': 0}
               for k in full}
    per_frame = []
    n_ground_total = n_hit_total = 0
    status_counts: dict[str, int] = {}
    for fr in frames:
        left, right, lm, rm = decode_stereo(fr, 0)
        res = stereo.process(left, right, lm, rm, stamp_ns=fr['stamp'])
        pose, why = georef.pose.pose_at(fr['stamp'])
        if pose is None:
            per_frame.append({'stamp_ns': fr['stamp'], 'pose': why})
            continue
        with georef.lock:
            prior = georef.ensure_prior(params)  # the pipeline's own grid and sigma settings
        pri = prior.cast(pose, lm)
        s_first = pri['sigma_first_order_vertical_m'].reshape(-1)  # without the sigma points
        h, w = left.shape
        d_cam, _, _ = prior.rays(lm, True)
        d_enu = d_cam.reshape(-1, 3) @ pose.R_enu_cam.T
        meas = (res.provenance == Provenance.MEASURED).reshape(-1)
        r_st = np.linalg.norm(res.points.reshape(-1, 3).astype(np.float64), axis=1)
        rows = np.repeat(np.arange(h), w)
        cand = meas & (d_enu[:, 2] < HORIZON_DZ) & (rows >= h // 2) & (r_st <= MAX_GROUND_RANGE_M)
        if cand.sum() < 10:
            per_frame.append({'stamp_ns': fr['stamp'], 'ground_pixels': 0})
            continue
        p = pose.p_enu_cam + d_enu[cand] * r_st[cand, None]
        _, resid = fit_ground(p)
        ground = np.zeros(h * w, dtype=bool)
        ground[np.flatnonzero(cand)[np.abs(resid) <= PLANE_TOL_M]] = True
        st = pri['status'].reshape(-1)
        for s in RayStatus:
            status_counts[s.name] = status_counts.get(s.name, 0) + int((st[ground] == s).sum())
        hit = ground & (st == int(RayStatus.HIT)) & np.isfinite(pri['range_m'].reshape(-1))
        r_pr = pri['range_m'].reshape(-1)[hit].astype(np.float64)
        s_pr = pri['sigma_m'].reshape(-1)[hit].astype(np.float64)
        s_st = res.sigma.reshape(-1)[hit].astype(np.float64)
        pts = pose.p_enu_cam + d_enu[hit] * r_st[hit, None]
        z_dem = prior.grid.field.sample(pts[:, 0], pts[:, 1]).double().cpu().numpy()
        pooled['dr'].append(r_pr - r_st[hit])
        pooled['sig'].append(np.hypot(s_pr, s_st))
        pooled['dh'].append(z_dem - pts[:, 2])
        pooled['rel'].append(s_pr / r_pr)
        s1 = s_first[hit].astype(np.float64)
        pooled['sig1'].append(np.hypot(s1, s_st))
        pooled['rel1'].append(s1 / r_pr)
        pooled['r'].append(r_st[hit])
        n_ground_total += int(ground.sum())
        n_hit_total += int(hit.sum())
        for name, pipe in full.items():
            fres = pipe.process(left, right, lm, rm, stamp_ns=fr['stamp'])
            prov = fres.provenance.reshape(-1)[ground]
            conflict = (fres.flags.reshape(-1)[ground] & np.uint16(Flag.PRIOR_CONFLICT)) != 0
            c = classes[name]
            c['FUSED'] += int((prov == Provenance.FUSED).sum())
            c['PRIOR'] += int((prov == Provenance.PRIOR).sum())
            c['NONE'] += int((prov == Provenance.NONE).sum())
            m = prov == Provenance.MEASURED
            c['MEASURED_PRIOR_CONFLICT'] += int((m & conflict).sum())
            c['MEASURED'] += int((m & ~conflict).sum())
        cam_h = float(pose.p_enu_cam[2] - prior.grid.field.sample(
            np.array([pose.p_enu_cam[0]]), np.array([pose.p_enu_cam[1]])).double().cpu().numpy()[0])
        per_frame.append({'stamp_ns': fr['stamp'], 'ground_pixels': int(ground.sum()),
                          'prior_hit': int(hit.sum()),
                          'camera_above_dem_m': cam_h,
                          'camera_above_stereo_ground_m': float(np.median(
                              pose.p_enu_cam[2] - p[np.abs(resid) <= PLANE_TOL_M, 2]))})
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in pooled.items()}
    n = cat['dr'].size
    report: dict[str, Any] = {
        'dem': dem, 'frames': len(frames), 'ground_pixels': n_ground_total,
        'ground_pixels_with_prior': n_hit_total,
        'ray_status_of_ground_pixels': status_counts,
        'ground_definition': (f'MEASURED stereo, ray below the horizon (ENU dz < {HORIZON_DZ}), '
                              f'lower image half, stereo range <= {MAX_GROUND_RANGE_M} m, within '
                              f'{PLANE_TOL_M} m of the per-frame robust ENU plane fit'),
        'fraction_within_2sigma': float(np.mean(np.abs(cat['dr']) <= 2 * cat['sig'])) if n else None,
        'median_prior_minus_stereo_range_m': float(np.median(cat['dr'])) if n else None,
        'median_dem_minus_stereo_height_m': float(np.median(cat['dh'])) if n else None,
        'median_stereo_range_m': float(np.median(cat['r'])) if n else None,
        'median_prior_relative_sigma': float(np.median(cat['rel'])) if n else None,
        'fraction_prior_sigma_infinite': float(np.mean(np.isinf(cat['rel']))) if n else None,
        'fraction_within_2sigma_first_order': float(np.mean(
            np.abs(cat['dr']) <= 2 * cat['sig1'])) if n else None,
        'median_prior_relative_sigma_first_order': float(np.median(cat['rel1'])) if n else None,
        'fraction_prior_usable_default': float(np.mean(
            cat['rel'] <= params['fusion.max_prior_relative_sigma'])) if n else None,
        'max_prior_relative_sigma': {'default': params['fusion.max_prior_relative_sigma'],
                                     'relaxed': relaxed},
        'fusion_classes_of_ground_pixels': classes,
        'per_frame': per_frame,
    }
    return report


def build_parser() -> argparse.ArgumentParser:
    """Arguments of kitti_eval."""
    ap = argparse.ArgumentParser(prog='kitti_eval', description=__doc__.split('\n')[0])
    ap.add_argument('out', nargs='?', help='folder for the converted bag (default: temporary)')
    ap.add_argument('--bag', help='an already converted bag (with --params)')
    ap.add_argument('--params', help='its params.yaml')
    ap.add_argument('--dem', action='append', choices=('srtm', 'rhine'),
                    help='DEM source(s) to evaluate (repeatable; default srtm and rhine)')
    ap.add_argument('--relaxed', type=float, default=10.0,
                    help='relaxed fusion.max_prior_relative_sigma (default 10, the maximum)')
    ap.add_argument('--json', help='write the report here')
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; prints the report as JSON; 0 ok, 2 bad input."""
    from .kitti2bag import convert, default_drive_dir

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    dems = args.dem or ['srtm', 'rhine']
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if args.bag:
                if not args.params:
                    print('kitti_eval: --bag needs --params', file=sys.stderr)
                    return 2
                bag, params = Path(args.bag), Path(args.params)
            else:
                drive = default_drive_dir()
                if drive is None:
                    print('kitti_eval: the shared KITTI drive is absent', file=sys.stderr)
                    return 2
                out = Path(args.out) if args.out else Path(tmp)
                s = convert(drive, out, dem='both')
                bag, params = Path(s['bag']), Path(s['params'])
            reports = {d: evaluate(bag, params, dem=d, relaxed=args.relaxed) for d in dems}
        except (ValueError, FileNotFoundError) as e:
            print(f'kitti_eval: {e}', file=sys.stderr)
            return 2
    text = json.dumps(reports, indent=1)
    if args.json:
        Path(args.json).write_text(text + '\n')
    print(text)
    return 0


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
