"""The live node under a contained fault: its DEM file disappears after start-up.

Before, every frame raised once the DEM could not be read and the node published nothing at
all, stereo included (15 of 15 frames lost). Now the frames keep their stereo points, NONE
points are PRIOR_UNAVAILABLE, /diagnostics WARNs naming the source, and the priors come back
when the file does (``dem.grid_retry_s``). The node process is started as the launch file
starts it and fed over DDS (ros/harness.py); the crash case (a parameter OpenCV dies of) is
in test_fault_params.py.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip('rclpy', reason='rclpy not available (no ROS 2 here)')
pytest.importorskip('geo_depth_node.msg', reason='custom messages not built (run make build)')

from geo_depth_node.core.contract import Provenance  # noqa: E402
from geo_depth_node.ros.harness import (BagReplayer, NodeProcess, installed_paths,  # noqa: E402
                                        isolated_ros_env)
from geo_depth_node.synth.config import SynthConfig  # noqa: E402
from geo_depth_node.synth.generate import START_NS, generate_world  # noqa: E402

W, H, FRAMES = 192, 144, 6


def _split_bag(src: str, first: Path, second: Path, t_split: int) -> None:
    """Copy a bag into two: messages before ``t_split`` (bag time, ns) and the rest."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    from geo_depth_node.tools.scene_bag import kilted_typestore

    ts = kilted_typestore()
    with Reader(src) as reader, \
            Writer(first, version=9, storage_plugin=StoragePlugin.MCAP) as wa, \
            Writer(second, version=9, storage_plugin=StoragePlugin.MCAP) as wb:
        ca = {c.id: wa.add_connection(c.topic, c.msgtype, typestore=ts) for c in reader.connections}
        cb = {c.id: wb.add_connection(c.topic, c.msgtype, typestore=ts) for c in reader.connections}
        for conn, t, raw in reader.messages():
            if t < t_split:
                wa.write(ca[conn.id], t, raw)
            else:
                wb.write(cb[conn.id], t, raw)


def _classes(img_msg) -> np.ndarray:
    prov = np.frombuffer(bytes(img_msg.data), dtype=np.uint8)
    return np.bincount(prov, minlength=len(Provenance))


def test_live_node_keeps_stereo_when_its_dem_file_vanishes(tmp_path):
    try:
        installed_paths()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    world = generate_world(tmp_path / 'world', SynthConfig(frames=FRAMES, width=W, height=H,
                                                            seed=5), progress=False)
    cfg = SynthConfig(frames=FRAMES, width=W, height=H, seed=5)
    stamps = [int(round(t * 1e9)) + START_NS for t in cfg.frame_times_s()]
    t_split = (stamps[2] + stamps[3]) // 2
    _split_bag(world['bag'], tmp_path / 'bag_a', tmp_path / 'bag_b', t_split)

    doc = yaml.safe_load(Path(world['params']).read_text())
    ros = doc['/**/geo_depth_node']['ros__parameters']
    dem = Path(ros['dem']['source']['synth']['path'])
    ros['dem']['grid_retry_s'] = 0.5
    params = tmp_path / 'params.yaml'
    params.write_text(yaml.safe_dump(doc))
    hidden = dem.with_name('dem.tif.away')

    env = isolated_ros_env(random.randint(100, 200))
    log = tmp_path / 'node.log'
    with NodeProcess(env, params_file=str(params), log_path=log) as node:
        deadline = time.monotonic() + 60
        while 'listening on' not in node.log_text() and time.monotonic() < deadline:
            assert node.alive(), node.log_text()[-2000:]
            time.sleep(0.2)
        assert 'listening on' in node.log_text(), node.log_text()[-2000:]
        dem.rename(hidden)  # opened at start-up; gone before the first grid is built
        rep = BagReplayer(int(env['ROS_DOMAIN_ID']))
        try:
            sent_a = rep.replay(tmp_path / 'bag_a', frame_timeout=60.0, discovery_timeout=60.0,
                                wait_topics={'/imu/data', '/gnss/fix'})
            rx = rep.received
            without = {s: _classes(rx.provenance[s]) for s in sent_a}
            rep.wait_for(lambda: any('DEM priors missing' in st.message
                                     for d in rx.diagnostics for st in d.status), 5.0)
            warn = [st for d in rx.diagnostics for st in d.status
                    if 'DEM priors missing' in st.message]
            hidden.rename(dem)  # the file is back: priors return after the retry period
            time.sleep(1.0)
            sent_b = rep.replay(tmp_path / 'bag_b', frame_timeout=60.0, discovery_timeout=60.0,
                                wait_topics={'/imu/data', '/gnss/fix'})
            with_dem = {s: _classes(rx.provenance[s]) for s in sent_b}
        finally:
            rep.close()
        assert node.alive(), node.log_text()[-2000:]
    assert len(sent_a) == 3 and len(sent_b) == 3
    for s, c in without.items():  # every frame published, stereo kept, no prior
        assert c[Provenance.MEASURED] > 0.02 * W * H, (s, c)
        assert c[Provenance.PRIOR] == 0 and c[Provenance.FUSED] == 0, (s, c)
    assert warn and warn[0].level == b'\x01', [st.message for d in rx.diagnostics
                                               for st in d.status]
    assert 'synth' in warn[0].message and 'dem.tif' in warn[0].message
    last = with_dem[sent_b[-1]]
    assert last[Provenance.PRIOR] + last[Provenance.FUSED] > 0.2 * W * H, last
