"""`geo-depth demo`: synthetic world -> the live node over DDS -> cloud, pictures, table.

The demo generates the synthetic outdoor world (geo_depth_node.synth: terrain, objects,
stereo rig on a moving vehicle, IMU, GNSS, DEM, exact truth), replays its bag into the real
node process over DDS, receives the clouds, and compares them with the truth.
"""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np

from ..core.contract import Flag, Provenance

_LOG = logging.getLogger(__name__)


def _node_stage_latency(diagnostics: list) -> dict[str, float]:
    """Median per-stage latency (ms) from the newest /diagnostics message that has them."""
    for arr in reversed(diagnostics):
        for st in arr.status:
            kv = {k.key: k.value for k in st.values}
            lat = {k[len('latency_ms.'):-len('.p50')]: float(v) for k, v in kv.items()
                   if k.startswith('latency_ms.') and k.endswith('.p50')}
            if lat:
                return lat
    return {}


def run_demo(out_dir: str, *, frames: int = 20, width: int = 640, height: int = 480,
             seed: int = 0, timeout_s: float = 120.0, terrain: str = 'hills') -> int:
    """Run the demo; returns the process exit code (0 = every frame came back)."""
    from .pictures import save_frame_png
    from ..core.cloud import unpack_points, write_ply
    from ..ros.harness import BagReplayer, NodeProcess, installed_paths, isolated_ros_env

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    from ..synth.config import SynthConfig
    from ..synth.generate import generate_world

    print(f'[1/5] generating the synthetic world ({terrain}, seed {seed}): {frames} stereo frames '
          f'{width}x{height}, IMU, GNSS, DEM into {out}/world ...')
    info = generate_world(out / 'world', SynthConfig(frames=frames, width=width, height=height,
                                                     seed=seed, terrain=terrain), progress=False)
    paths = installed_paths()
    domain = random.randint(100, 200)
    env = isolated_ros_env(domain)
    print(f'[2/5] starting {paths.executable.name} with the world\'s params {info["params"]} '
          f'(ROS_DOMAIN_ID={domain}, localhost only) ...')
    with NodeProcess(env, params_file=info['params'], log_path=out / 'node.log') as node:
        rep = BagReplayer(domain)
        try:
            print('[3/5] replaying the bag (stereo, IMU, GNSS) into the node over DDS, frame by '
                  'frame ...')
            sent = rep.replay(info['bag'], frame_timeout=timeout_s, discovery_timeout=timeout_s,
                              wait_topics={'/imu/data', '/gnss/fix'})
            rep.wait_for(lambda: len(rep.received.diagnostics) >= 1, 3.0)
            time.sleep(1.2)  # one more diagnostics period, so it covers every frame
            rx = rep.received
        finally:
            rep.close()
        rc = node.stop()
    if rc not in (0, -2):
        _LOG.warning('node exited with %s (see %s)', rc, out / 'node.log')

    print('[4/5] writing the live clouds (PLY) and pictures (PNG) ...')
    rows, flags_total = [], {f.name: 0 for f in Flag}
    classes_total = np.zeros(len(Provenance), dtype=np.int64)
    lefts = _left_images(info['bag'])
    for i, stamp in enumerate(sent):
        msg = rx.points[stamp]
        cloud = unpack_points(msg.data, msg.height, msg.width)
        write_ply(out / f'cloud_{i:03d}.ply', cloud)
        depth = np.frombuffer(bytes(rx.depth[stamp].data), np.float32).reshape(cloud.shape)
        save_frame_png(out / f'frame_{i:03d}.png', lefts[stamp], cloud['provenance'],
                       cloud['flags'], depth, cloud['sigma'], title=f'frame {i} (stamp {stamp})')
        classes_total += np.bincount(cloud['provenance'].reshape(-1), minlength=len(Provenance))
        for f in Flag:
            flags_total[f.name] += int(np.count_nonzero(cloud['flags'] & np.uint16(f)))
        rows.append({'stamp': stamp, 'latency_ms': 1e3 * rx.latency_s.get(stamp, float('nan'))})
    node_lat = _node_stage_latency(rx.diagnostics)
    n_px = max(1, int(classes_total.sum()))

    print('[5/5] the same bag through `geo-depth replay` (offline, no DDS) ...')
    from .replay import replay_bag

    report = replay_bag(info['bag'], info['params'], out / 'replay', truth=info['truth'],
                        progress=False)
    same = _same_clouds(rx, sent, out / 'replay' / 'output.mcap')
    # coverage against the truth: the replay report's (its clouds are the live ones: `same`)
    truth_table = {name: {'points': c.get('truth_points', 0),
                          'within_1sigma': c.get('coverage_1sigma'),
                          'within_2sigma': c.get('coverage_2sigma'),
                          'median_abs_error_m': c.get('median_abs_error_m')}
                   for name, c in report['classes'].items() if name != 'NONE'}
    summary = {
        'frames': len(sent), 'size': [width, height], 'seed': seed, 'terrain': terrain,
        'classes': {p.name: {'count': int(classes_total[int(p)]),
                             'fraction': float(classes_total[int(p)] / n_px)} for p in Provenance},
        'flags': flags_total,
        'against_truth': truth_table,
        'end_to_end_latency_ms_median': float(np.median([r['latency_ms'] for r in rows])),
        'node_stage_latency_ms_p50': node_lat,
        'replay': {'report': str(out / 'replay' / 'report.json'),
                   'identical_clouds': same, 'latency_ms_p50': {
                       k: v['p50'] for k, v in report['latency_ms'].items()}},
        'wall_time_s': time.perf_counter() - t0,
        'per_frame': rows,
    }
    (out / 'summary.json').write_text(json.dumps(summary, indent=2))
    print(format_table(summary))
    print(f'\nlive clouds:   {out}/cloud_*.ply (x y z sigma provenance flags source, camera frame)')
    print(f'live pictures: {out}/frame_*.png')
    print(f'replay:        {out}/replay/ (output.mcap for RViz/Foxglove, report.json, '
          'georeferenced cloud.ply, PNGs)')
    print(f'world:         {info["bag"]}, {info["dem"]}, truth {info["truth"]}; node log '
          f'{out}/node.log')
    return 0 if len(sent) == frames else 1


def _left_images(bag: str) -> dict[int, np.ndarray]:
    """Every left image of the bag, keyed by bag timestamp (= header stamp here), one pass."""
    from rosbags.rosbag2 import Reader

    from .scene_bag import kilted_typestore

    ts = kilted_typestore()
    out: dict[int, np.ndarray] = {}
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == '/left/image_rect']
        for conn, t, raw in reader.messages(connections=conns):
            m = ts.deserialize_cdr(raw, conn.msgtype)
            out[t] = m.data.reshape(m.height, m.width)
    return out


def _same_clouds(rx, sent: list[int], mcap: Path) -> str:
    """'k/n': how many live clouds are byte-identical to the replayed ones."""
    from rosbags.highlevel import AnyReader

    from .bag_io import make_typestore

    got = {}
    with AnyReader([mcap], default_typestore=make_typestore()) as reader:
        conns = [c for c in reader.connections if c.topic.endswith('/points')]
        for conn, t, raw in reader.messages(connections=conns):
            got[t] = bytes(reader.deserialize(raw, conn.msgtype).data)
    same = sum(1 for s in sent if s in got and bytes(rx.points[s].data) == got[s])
    return f'{same}/{len(sent)}'


def format_table(s: dict) -> str:
    """The demo summary as a readable text table."""
    lines = [f'\ngeo_depth_node demo: {s["frames"]} frames {s["size"][0]}x{s["size"][1]} '
             f'({s["terrain"]}), wall time {s["wall_time_s"]:.1f} s', '',
             f'{"class":<10}{"pixels":>10}{"fraction":>10}{"within 1 sigma":>16}'
             f'{"within 2 sigma":>16}{"median |err|":>14}']
    for name, c in s['classes'].items():
        t = s['against_truth'].get(name)
        extra = ''
        if t and t['points']:
            extra = (f'{100 * t["within_1sigma"]:>15.1f}%{100 * t["within_2sigma"]:>15.1f}%'
                     f'{t["median_abs_error_m"]:>12.3f} m')
        lines.append(f'{name:<10}{c["count"]:>10d}{100 * c["fraction"]:>9.1f}%{extra}')
    lines += ['(coverage against the exact truth, from the replay report, whose clouds are the '
              'live ones; an honest sigma gives ~68 % and ~95 %)', '',
              'reasons (pixels carrying the flag):']
    for name, n in s['flags'].items():
        if n:
            lines.append(f'  {name:<20}{n:>10d}')
    lines += ['', f'latency: inputs published -> cloud received (median) '
              f'{s["end_to_end_latency_ms_median"]:.1f} ms', 'node stages (median ms): '
              + ', '.join(f'{k} {v:.1f}' for k, v in sorted(s['node_stage_latency_ms_p50'].items())),
              f'replay: clouds identical to the live node: {s["replay"]["identical_clouds"]}; '
              f'report {s["replay"]["report"]}']
    return '\n'.join(lines)
