"""`geo-depth live-bench`: the real node, fed at the camera's own rate, with DEM priors.

A synthetic world (terrain, stereo, IMU, GNSS, DEM; ``--size``, ``--frames`` at ``--rate`` Hz)
is generated, the node executable is started with the world's params (DEM sources, pose from
IMU + GNSS) in a private ROS domain, and the bag is published over DDS at its own timing
(every message at its bag time; not lock-step), from this process, beside the node. Nothing
waits for the node: it keeps up or drops frames, as on a robot.

It prints (and with ``--json`` writes one JSON object): frames sent and received, the node's
own counters from its last /diagnostics (frames processed, frames dropped by its drop-oldest
queue, unmatched messages, frames missing), clouds per second over the run (received clouds
over the time from the first frame sent to the last cloud), the image -> cloud latency (publish
of a frame's last input to the arrival of its cloud) p50 / p95 / max, the same in the steady
state after the first cloud (the first frame builds the height grid and its BVH: seconds of
dropped frames), and the node's per-stage p50 from /diagnostics. Needs ROS 2 (rclpy) and the
built package.

Example::

    geo-depth live-bench --size 640x480 --frames 60 --rate 10
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _last_values(diagnostics: list) -> dict[str, str]:
    """Key/values of the newest /diagnostics status that has ``frames_processed``."""
    for arr in reversed(diagnostics):
        for st in arr.status:
            kv = {k.key: k.value for k in st.values}
            if 'frames_processed' in kv:
                return kv
    return {}


def run_live_bench(*, size: tuple[int, int] = (640, 480), frames: int = 60,
                   rate_hz: float = 10.0, seed: int = 2, workdir: str | None = None,
                   params_set: dict[str, Any] | None = None, settle_s: float = 5.0,
                   timeout_s: float = 120.0) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns the JSON-able result.

    Args:
        size: (width, height) px; frames: stereo frames of the world; rate_hz: camera rate.
        seed: world seed; workdir: where the world goes (None: a temporary directory).
        params_set: parameters to override in the world's params file (NAME -> value).
        settle_s: seconds to wait after the last frame for the node's last clouds.
        timeout_s: node start-up / discovery limit, seconds.
    """
    import yaml

    from ..core.params import PARAMS_FILE_KEY
    from ..ros.harness import BagReplayer, NodeProcess, isolated_ros_env
    from ..synth.config import SynthConfig
    from ..synth.generate import generate_world

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix='geo_depth_live_bench_')
        workdir = tmp.name
    out = Path(workdir)
    w, h = size
    info = generate_world(out / 'world', SynthConfig(frames=frames, width=w, height=h, seed=seed,
                                                     rate_hz=rate_hz), progress=False)
    params_file = info['params']
    if params_set:
        doc = yaml.safe_load(Path(params_file).read_text())
        ros = doc[PARAMS_FILE_KEY]['ros__parameters']
        for name, value in params_set.items():
            node = ros
            *heads, last = name.split('.')
            for k in heads:
                node = node.setdefault(k, {})
            node[last] = value
        params_file = str(out / 'params_live_bench.yaml')
        Path(params_file).write_text(yaml.safe_dump(doc))
    domain = random.randint(100, 200)
    env = isolated_ros_env(domain)
    with NodeProcess(env, params_file=params_file, log_path=out / 'node.log') as node:
        rep = BagReplayer(domain)
        try:
            # the node's first frame builds the height grid and its BVH (seconds): the frames
            # dropped meanwhile are left out of the steady-state figures below
            t_start = time.perf_counter()
            sent = rep.replay(info['bag'], lockstep=False, realtime=True,
                              discovery_timeout=timeout_s,
                              wait_topics={'/imu/data', '/gnss/fix'})
            t_sent = time.perf_counter()
            last = sent[-1] if sent else None
            rep.wait_for(lambda: last in rep.received.points, settle_s)
            time.sleep(1.2)  # one more /diagnostics period
            rx = rep.received
            sent_at = dict(rep.sent_at)
        finally:
            rep.close()
        node.stop()
    got = [s for s in sent if s in rx.points]
    lat = np.array([rx.latency_s[s] for s in got if s in rx.latency_s]) * 1e3
    # arrival time of each cloud (perf_counter): when its frame was sent plus its latency
    arrive = {s: sent_at[s] + rx.latency_s[s] for s in got if s in rx.latency_s and s in sent_at}
    kv = _last_values(rx.diagnostics)
    span = t_sent - t_start
    # steady state: after the first cloud (the first frame builds the height grid and its
    # ray-cast BVH, seconds in which the camera's frames are dropped): clouds per second
    # between the first and the last arrival, and the frames sent in that time
    steady: dict[str, Any] = {}
    if len(arrive) >= 2:
        t0, t1 = min(arrive.values()), max(arrive.values())
        later = [s for s in sent if sent_at.get(s, -1.0) > t0 and sent_at[s] <= t1]
        steady = {'clouds_per_s': round((len(arrive) - 1) / (t1 - t0), 3),
                  'window_s': round(t1 - t0, 3),
                  'frames_sent': len(later),
                  'clouds': sum(1 for s in later if s in arrive),
                  'latency_ms_p50': round(float(np.percentile(
                      [rx.latency_s[s] * 1e3 for s in later if s in arrive] or [np.nan], 50)), 1),
                  'latency_ms_p95': round(float(np.percentile(
                      [rx.latency_s[s] * 1e3 for s in later if s in arrive] or [np.nan], 95)), 1)}
    result = {
        'size': f'{w}x{h}', 'frames_sent': len(sent), 'rate_hz': rate_hz,
        'clouds_received': len(got),
        'clouds_per_s': round(len(got) / span, 3) if span > 0 else None,
        'send_span_s': round(span, 3),
        'latency_ms': ({'p50': round(float(np.percentile(lat, 50)), 1),
                        'p95': round(float(np.percentile(lat, 95)), 1),
                        'max': round(float(lat.max()), 1),
                        'p50_after_first': round(float(np.percentile(lat[1:], 50)), 1)
                        if lat.size > 1 else None} if lat.size else {}),
        'node': {k: kv[k] for k in ('frames_processed', 'dropped_frames_queue',
                                    'dropped_messages_unmatched', 'input_frames_missing',
                                    'processing_errors') if k in kv},
        'node_stage_ms_p50': {k[len('latency_ms.'):-len('.p50')]: float(v) for k, v in kv.items()
                              if k.startswith('latency_ms.') and k.endswith('.p50')},
        'steady': steady,
    }
    if tmp is not None:
        tmp.cleanup()
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry (``geo-depth live-bench``)."""
    from .bench import parse_sets, parse_size

    p = argparse.ArgumentParser(prog='geo-depth live-bench', description=__doc__.split('\n')[0])
    p.add_argument('--size', default='640x480', help='WxH (default 640x480)')
    p.add_argument('--frames', type=int, default=60, help='stereo frames (default 60)')
    p.add_argument('--rate', type=float, default=10.0, help='camera rate, Hz (default 10)')
    p.add_argument('--seed', type=int, default=2, help='world seed (default 2)')
    p.add_argument('--workdir', default=None, help='keep the world and node.log here')
    p.add_argument('--set', action='append', default=[], metavar='NAME=VALUE',
                   help='override a node parameter (repeatable)')
    p.add_argument('--json', action='store_true', help='print one JSON object')
    a = p.parse_args(argv)
    try:
        res = run_live_bench(size=parse_size(a.size), frames=a.frames, rate_hz=a.rate,
                             seed=a.seed, workdir=a.workdir, params_set=parse_sets(a.set))
    except (ValueError, TimeoutError) as exc:
        print(f'geo-depth live-bench: {exc}', file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        lat = res['latency_ms']
        print(f"live node, {res['size']} at {res['rate_hz']:g} Hz with DEM priors: "
              f"{res['clouds_received']} of {res['frames_sent']} frames -> "
              f"{res['clouds_per_s']} clouds/s; image->cloud latency p50 {lat.get('p50')} ms, "
              f"p95 {lat.get('p95')} ms, max {lat.get('max')} ms")
        st = res['steady']
        if st:
            print(f"after the first cloud (grid + BVH built): {st['clouds']} of {st['frames_sent']} "
                  f"frames in {st['window_s']} s -> {st['clouds_per_s']} clouds/s, latency p50 "
                  f"{st['latency_ms_p50']} ms, p95 {st['latency_ms_p95']} ms")
        print(f"node counters: {res['node']}")
        print('node stages p50 ms: ' + ', '.join(f'{k} {v:.1f}' for k, v in
                                                  res['node_stage_ms_p50'].items()))
    return 0 if res['clouds_received'] else 1


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
