"""`geo-depth replay`: the node's pipeline offline over a rosbag2 (no ROS, no DDS).

A small synthetic world is generated here; the bag is replayed once with the truth, and the
report, the output bag, the pictures and the PLY are checked against the truth and against
the same DepthPipeline run directly in the test. The live-vs-replay equivalence (the node
over DDS and replay on the same bag with the same params file) needs rclpy and the built
messages and is skipped without them.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest

from geo_depth_node.core.camera import CameraModel
from geo_depth_node.core.cloud import pack_points, read_ply
from geo_depth_node.core.contract import POINT_FIELDS, Flag, Provenance
from geo_depth_node.core.params import load_params_yaml
from geo_depth_node.core.pipeline import DepthPipeline
from geo_depth_node.synth.config import SynthConfig
from geo_depth_node.synth.generate import LEFT_FRAME, generate_world

W, H, FRAMES = 256, 192, 3
OUT_TOPICS = ('/geo_depth_node/points', '/geo_depth_node/depth', '/geo_depth_node/depth_sigma',
              '/geo_depth_node/provenance', '/diagnostics')


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp('replay_world')
    return generate_world(out / 'world', SynthConfig(frames=FRAMES, width=W, height=H, seed=5),
                          progress=False)


@pytest.fixture(scope='module')
def reference(world):
    """The pipeline run directly on the bag's frames: stamp -> (FrameResult, left image)."""
    from rosbags.rosbag2 import Reader

    from geo_depth_node.tools.scene_bag import kilted_typestore

    from geo_depth_node.core.pose import gnss_fix_from_msg, imu_sample_from_msg

    ts = kilted_typestore()
    pipeline = DepthPipeline(load_params_yaml(world['params']))
    msgs: dict[int, dict] = {}
    with Reader(world['bag']) as reader:
        conns = [c for c in reader.connections if c.topic.startswith(('/left/', '/right/'))]
        for conn, t, raw in reader.messages(connections=conns):
            msgs.setdefault(t, {})[conn.topic] = ts.deserialize_cdr(raw, conn.msgtype)
        for conn, _t, raw in reader.messages(connections=[
                c for c in reader.connections if c.topic in ('/imu/data', '/gnss/fix')]):
            m = ts.deserialize_cdr(raw, conn.msgtype)
            if conn.topic == '/imu/data':
                pipeline.add_imu(imu_sample_from_msg(m))
            else:
                pipeline.add_gnss(gnss_fix_from_msg(m))
    out = {}
    for stamp in sorted(msgs):
        f = msgs[stamp]
        models = [CameraModel.from_arrays(m.width, m.height, m.k, m.d, m.r, m.p,
                                          m.distortion_model, m.header.frame_id)
                  for m in (f['/left/camera_info'], f['/right/camera_info'])]
        imgs = [f[t].data.reshape(H, W) for t in ('/left/image_rect', '/right/image_rect')]
        out[stamp] = pipeline.process(imgs[0], imgs[1], *models, stamp_ns=stamp)
    assert len(out) == FRAMES
    return out


@pytest.fixture(scope='module')
def replayed(world, tmp_path_factory):
    from geo_depth_node.tools.replay import replay_bag

    out = tmp_path_factory.mktemp('replay_out')
    report = replay_bag(world['bag'], world['params'], out, truth=world['truth'])
    return {'report': report, 'out': out}


def _read_output(path: Path) -> dict[str, list]:
    """topic -> [(bag time, message)] of an output.mcap."""
    from rosbags.highlevel import AnyReader

    from geo_depth_node.tools.bag_io import make_typestore

    got: dict[str, list] = {}
    with AnyReader([path], default_typestore=make_typestore()) as reader:
        for conn, t, raw in reader.messages():
            got.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
    return got


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _copy_bag(src: str, dst: Path, storage: str, keep=lambda topic: True) -> None:
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    from geo_depth_node.tools.scene_bag import kilted_typestore

    ts = kilted_typestore()
    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    with Reader(src) as reader, Writer(dst, version=9, storage_plugin=plugin) as writer:
        conns = {}
        for c in reader.connections:
            if keep(c.topic):
                conns[c.id] = writer.add_connection(c.topic, c.msgtype, typestore=ts)
        for conn, t, raw in reader.messages(connections=[c for c in reader.connections
                                                         if c.id in conns]):
            writer.write(conns[conn.id], t, raw)


# ----------------------------------------------------------------------------- report
def test_report_schema_and_values_against_truth(replayed, reference):
    r = replayed['report']
    on_disk = json.loads((replayed['out'] / 'report.json').read_text())
    assert on_disk == r
    assert r['frames'] == FRAMES
    assert set(r['classes']) == {p.name for p in Provenance}
    counts = np.zeros(len(Provenance), dtype=np.int64)
    for res in reference.values():
        counts += np.bincount(res.provenance.reshape(-1), minlength=len(Provenance))
    assert sum(c['count'] for c in r['classes'].values()) == FRAMES * H * W
    assert abs(sum(c['fraction'] for c in r['classes'].values()) - 1.0) < 1e-9
    for p in Provenance:
        c = r['classes'][p.name]
        assert c['count'] == counts[int(p)]
        assert set(c) >= {'count', 'fraction', 'coverage_1sigma', 'coverage_2sigma',
                          'median_abs_error_m'}
    # The world's params carry its DEM: near stereo points are FUSED with the prior (a few
    # stay MEASURED with PRIOR_CONFLICT), far terrain is PRIOR.
    fused = r['classes']['FUSED']
    assert fused['count'] + r['classes']['MEASURED']['count'] > 300 * FRAMES
    assert fused['coverage_2sigma'] >= 0.9 and 0.0 < fused['coverage_1sigma'] <= fused['coverage_2sigma']
    assert 0.0 < fused['median_abs_error_m'] < 0.5
    prior = r['classes']['PRIOR']
    assert prior['count'] > 0 and prior['coverage_2sigma'] is not None
    assert r['classes']['NONE']['coverage_1sigma'] is None
    assert r['classes']['NONE']['median_abs_error_m'] is None
    flags = {f.name: 0 for f in Flag}
    for res in reference.values():
        for k, v in res.flag_counts().items():
            flags[k] += v
    assert r['flags'] == flags
    stages = set().union(*(res.timings_ms for res in reference.values()))
    assert stages <= set(r['latency_ms']) and 'total' in r['latency_ms']
    for v in r['latency_ms'].values():
        assert 0.0 <= v['p50'] <= v['p95']
    assert r['violations'] == {'measured_beyond_limit': 0, 'nan_without_flag': 0}
    pipeline = DepthPipeline(load_params_yaml(replayed['report']['params']))
    assert (r['device'], r['matcher']) == (pipeline.device, pipeline.matcher_name)
    assert r['truth']['frames_matched'] == FRAMES
    assert r['frames_per_s'] > 0


def test_violations_are_counted(reference):
    """A broken frame (a MEASURED point beyond the limit, one with NaN sigma, a NONE point
    without a flag) is counted, not hidden; the real frames have none."""
    import copy

    from geo_depth_node.tools.replay import count_violations

    res = copy.deepcopy(next(iter(reference.values())))
    assert count_violations(res, 0.05) == {'measured_beyond_limit': 0, 'nan_without_flag': 0}
    v, u = np.argwhere(np.isin(res.provenance, [Provenance.MEASURED, Provenance.FUSED]))[:2].T
    res.sigma[v[0], u[0]] *= 100.0  # beyond the limit
    res.sigma[v[1], u[1]] = np.nan  # a point with a NaN sigma
    v0, u0 = np.argwhere(res.provenance == Provenance.NONE)[0]
    res.flags[v0, u0] = 0  # NONE without a reason
    assert count_violations(res, 0.05) == {'measured_beyond_limit': 1, 'nan_without_flag': 2}
    assert count_violations(res, 0.05, max_sigma_m=1e-3)['measured_beyond_limit'] > 1


# ----------------------------------------------------------------------------- output bag
def test_output_bag_has_every_topic_with_the_input_stamps(replayed, reference):
    got = _read_output(replayed['out'] / 'output.mcap')
    stamps = sorted(reference)
    for topic in OUT_TOPICS:
        assert [t for t, _ in got[topic]] == stamps, topic
        assert [_stamp(m) for _, m in got[topic]] == stamps, topic
    for topic in OUT_TOPICS[:4]:
        assert all(m.header.frame_id == LEFT_FRAME for _, m in got[topic])
    legends = got['/geo_depth_node/provenance_legend']
    assert len(legends) == 1 and legends[0][0] == stamps[0]
    lg = legends[0][1]
    assert lg.output_frame == LEFT_FRAME and lg.header.frame_id == LEFT_FRAME
    assert list(lg.flag_names) == [f.name for f in Flag]
    assert list(lg.flag_bits) == [int(f) for f in Flag]
    assert list(lg.provenance_names) == ['NONE', 'MEASURED', 'FUSED', 'PRIOR']
    assert lg.max_relative_sigma > 0 and 'ray' in lg.sigma_definition and lg.georeferenced
    assert [s.name for s in lg.sources] == ['synth'] and lg.sources[0].id == 1  # the DEM


def test_output_clouds_and_images_equal_the_pipeline(replayed, reference):
    got = _read_output(replayed['out'] / 'output.mcap')
    points = dict(got['/geo_depth_node/points'])
    depth = dict(got['/geo_depth_node/depth'])
    sigma = dict(got['/geo_depth_node/depth_sigma'])
    prov = dict(got['/geo_depth_node/provenance'])
    for stamp, res in reference.items():
        msg = points[stamp]
        assert (msg.height, msg.width, msg.point_step, msg.row_step) == (H, W, 24, 24 * W)
        assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == list(POINT_FIELDS)
        assert not msg.is_bigendian and not msg.is_dense
        assert bytes(msg.data) == pack_points(res).tobytes()
        assert depth[stamp].encoding == '32FC1' and sigma[stamp].encoding == '32FC1'
        assert prov[stamp].encoding == 'mono8' and prov[stamp].step == W
        assert bytes(depth[stamp].data) == res.depth.tobytes()
        assert bytes(sigma[stamp].data) == res.depth_sigma.tobytes()
        assert bytes(prov[stamp].data) == res.provenance.tobytes()


def test_diagnostics_carry_fractions_and_latencies(replayed, reference):
    got = _read_output(replayed['out'] / 'output.mcap')
    for (stamp, arr), res in zip(got['/diagnostics'], reference.values(), strict=True):
        assert _stamp(arr) == stamp
        st = arr.status[0]
        assert st.name == '/geo_depth_node: depth pipeline' and st.level == 0
        kv = {k.key: k.value for k in st.values}
        for name, frac in res.class_fractions().items():
            assert float(kv[f'fraction.{name}']) == pytest.approx(frac, abs=1e-6)
        for stage in ('match', 'triangulate', 'total', 'decode', 'pack', 'write', 'frame_total'):
            assert float(kv[f'latency_ms.{stage}.p50']) > 0
            assert float(kv[f'latency_ms.{stage}.frame']) > 0
    assert int(kv['frames_processed']) == FRAMES and int(kv['input_problems']) == 0
    # the camera's clearance above the DEM (GeoPrior.camera_clearance), as the pipeline saw it
    n_geo = 0
    for (_, arr), res in zip(got['/diagnostics'], reference.values(), strict=True):
        kv = {k.key: k.value for k in arr.status[0].values}
        for name, v in res.georef_stats.items():
            assert float(kv[f'georef.{name}']) == pytest.approx(v, abs=1e-4)
        if res.georef_stats:
            n_geo += 1  # this world's camera is well clear of its DEM: level OK (above)
            assert res.georef_stats['camera_above_dem_m'] > res.georef_stats['dem_vertical_shift_m']
    assert n_geo >= FRAMES - 1


# ----------------------------------------------------------------------------- pictures, PLY
def test_pictures_exist_and_are_not_trivial(replayed):
    import matplotlib.image as mpimg

    pics = replayed['report']['pictures']
    assert pics['frames'] == [0, 1, 2]
    assert pics['renderer_3d'] in ('open3d', 'matplotlib')
    assert 'own GNSS/IMU pose estimates' in pics['cloud_3d']  # georeferenced, not truth
    names = set(pics['files'])
    assert {'frame_0000.png', 'frame_0001.png', 'frame_0002.png', 'sigma_vs_range.png',
            'cloud_3d.png'} <= names
    for name in names:
        path = replayed['out'] / name
        assert path.stat().st_size > 20_000, name
        img = mpimg.imread(path)[..., :3]
        assert img.std() > 0.02, name  # not a single colour
        rgb = (img.reshape(-1, 3) * 255).astype(np.uint32)
        colours = np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2])
        assert colours.size > 50, name


def test_ply_holds_every_point(replayed, reference):
    cloud = read_ply(replayed['out'] / 'cloud.ply')
    n = sum(int(np.count_nonzero(res.provenance != Provenance.NONE)) for res in reference.values())
    assert cloud.shape[0] == n == replayed['report']['cloud']['points']
    assert np.all(cloud['provenance'] != Provenance.NONE)
    assert np.all(np.isfinite(cloud['x'])) and np.all(cloud['sigma'] > 0)
    # accumulated in the local ENU frame with the pipeline's own pose of each frame
    res0 = next(iter(reference.values()))
    first = pack_points(res0, organized=False)
    xyz = np.stack([first['x'], first['y'], first['z']], -1).astype(np.float64)
    T = res0.T_enu_cam
    enu = xyz @ T[:3, :3].T + T[:3, 3]
    np.testing.assert_allclose(cloud['z'][:first.shape[0]], enu[:, 2], atol=1e-3)
    np.testing.assert_array_equal(cloud['sigma'][:first.shape[0]], first['sigma'])
    assert 'local ENU' in replayed['report']['cloud']['frame']


# ----------------------------------------------------------------------------- options, bags
def test_frames_selects_a_range(world, reference, tmp_path):
    from geo_depth_node.tools.replay import main

    rc = main([world['bag'], '--params', world['params'], '--out', str(tmp_path),
               '--frames', '1:3', '--pictures', '0', '--quiet'])
    assert rc == 0
    r = json.loads((tmp_path / 'report.json').read_text())
    assert r['frames'] == 2 and r['frame_range'] == [1, 3]
    stamps = sorted(reference)[1:3]
    got = _read_output(tmp_path / 'output.mcap')
    assert [t for t, _ in got['/geo_depth_node/points']] == stamps
    assert 'coverage_1sigma' not in r['classes']['MEASURED']  # no --truth
    assert r['pictures']['files'] == []
    assert read_ply(tmp_path / 'cloud.ply').shape[0] == sum(
        int(np.count_nonzero(reference[s].provenance != Provenance.NONE)) for s in stamps)


def test_sqlite3_bag(world, reference, tmp_path):
    from geo_depth_node.tools.replay import replay_bag

    bag = tmp_path / 'bag_sqlite'
    _copy_bag(world['bag'], bag, 'sqlite3')
    assert list(bag.glob('*.db3'))
    r = replay_bag(bag, world['params'], tmp_path / 'out', truth=world['truth'], frames=':2',
                   pictures=0)
    assert r['frames'] == 2
    got = dict(_read_output(tmp_path / 'out' / 'output.mcap')['/geo_depth_node/points'])
    for stamp in sorted(reference)[:2]:
        assert bytes(got[stamp].data) == pack_points(reference[stamp]).tobytes()


def test_topic_prefix(world, reference, tmp_path):
    from geo_depth_node.tools.replay import replay_bag

    bag = tmp_path / 'bag_ns'
    _copy_bag(world['bag'], bag, 'mcap', keep=lambda t: t.startswith(('/left/', '/right/')))
    import shutil

    from rosbags.rosbag2 import Reader, Writer  # rename the topics into /stereo/...
    from geo_depth_node.tools.scene_bag import kilted_typestore

    ts = kilted_typestore()
    renamed = tmp_path / 'bag_stereo'
    with Reader(bag) as reader, Writer(renamed, version=9) as writer:
        conns = {c.id: writer.add_connection('/stereo' + c.topic, c.msgtype, typestore=ts)
                 for c in reader.connections}
        for conn, t, raw in reader.messages():
            writer.write(conns[conn.id], t, raw)
    shutil.rmtree(bag)
    with pytest.raises(ValueError, match='--topic-prefix'):
        replay_bag(renamed, world['params'], tmp_path / 'o1', frames='0:1', pictures=0)
    r = replay_bag(renamed, world['params'], tmp_path / 'o2', frames='0:1', pictures=0,
                   topic_prefix='/stereo')
    assert r['frames'] == 1 and r['input_topics']['left_image'] == '/stereo/left/image_rect'


def test_bag_without_images_is_a_clear_error(world, tmp_path):
    from geo_depth_node.tools.replay import main, replay_bag

    bag = tmp_path / 'imu_only'
    _copy_bag(world['bag'], bag, 'mcap', keep=lambda t: t == '/imu/data')
    with pytest.raises(ValueError, match=r'no stereo input topic.*/left/image_rect'):
        replay_bag(bag, world['params'], tmp_path / 'out', pictures=0)
    err = io.StringIO()
    import contextlib

    with contextlib.redirect_stderr(err):
        rc = main([str(bag), '--params', world['params'], '--out', str(tmp_path / 'out2'),
                   '--quiet'])
    assert rc == 2 and 'no stereo input topic' in err.getvalue()
    with contextlib.redirect_stderr(io.StringIO()):
        assert main([str(tmp_path / 'missing'), '--params', world['params'], '--out',
                     str(tmp_path / 'out3'), '--quiet']) == 2


def test_bad_arguments_are_refused(world, tmp_path):
    from geo_depth_node.tools.replay import parse_frames, replay_bag

    assert parse_frames('2:5') == (2, 5) and parse_frames(':3') == (0, 3)
    assert parse_frames('4') == (4, 5) and parse_frames(None) == (0, None)
    for bad in ('3:1', 'a:b', '-1:2', slice(0, 4, 2)):
        with pytest.raises(ValueError):
            parse_frames(bad)
    with pytest.raises(FileNotFoundError):
        replay_bag(world['bag'], tmp_path / 'nope.yaml', tmp_path / 'o')
    with pytest.raises(ValueError, match='unknown parameter'):
        replay_bag(world['bag'], {'stereo.no_such_thing': 1}, tmp_path / 'o')


def test_progress_bar_has_rate_and_eta():
    from geo_depth_node.tools.replay import Progress

    buf = io.StringIO()
    bar = Progress(10, stream=buf, interval_s=0.0)
    bar.update(5)
    bar.close()
    text = buf.getvalue()
    assert '5/10 frames' in text and 'ETA' in text and 'frames/s' in text


# ----------------------------------------------------------------------------- live vs replay
def test_live_node_and_replay_give_the_same_outputs(world, replayed, tmp_path):
    """The same bag through the node process over DDS (started with the same params file)
    and through replay: identical clouds, depth, sigma and provenance images, legend."""
    pytest.importorskip('rclpy', reason='rclpy not available (no ROS 2 here)')
    pytest.importorskip('geo_depth_node.msg', reason='custom messages not built (make build)')
    from geo_depth_node.ros.harness import (BagReplayer, NodeProcess, installed_paths,
                                            isolated_ros_env)

    try:
        installed_paths()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    domain = random.randint(100, 200)
    env = isolated_ros_env(domain)
    with NodeProcess(env, params_file=world['params'], log_path=tmp_path / 'node.log') as node:
        rep = BagReplayer(domain)
        try:
            sent = rep.replay(world['bag'], frame_timeout=60.0, discovery_timeout=60.0,
                              wait_topics={'/imu/data', '/gnss/fix'})
            rep.wait_for(lambda: len(rep.received.legends) >= 1, 10.0)
            rx = rep.received
            n_diag = len(rx.diagnostics)  # the next status has every frame's counters
            rep.wait_for(lambda: len(rx.diagnostics) > n_diag, 5.0)
        finally:
            rep.close()
        assert node.alive(), node.log_text()[-2000:]
    # the same counters (core.frame_stats) live and offline
    live_values = {kv.key: kv.value for kv in rx.diagnostics[-1].status[0].values}
    offline_counters = replayed['report']['counters']
    for key in ('frames_processed', 'input_problems', 'processing_errors', 'pose.ok',
                'pose.unavailable', 'pose.degraded', 'time_jumps_back', 'input_frames_missing'):
        offline = offline_counters.get(key)
        assert live_values.get(key) == (None if offline is None else str(offline)), key
    assert live_values['frames_processed'] == str(len(sent))
    got = _read_output(replayed['out'] / 'output.mcap')
    assert sorted(sent) == [t for t, _ in got['/geo_depth_node/points']]
    for topic, live in (('points', rx.points), ('depth', rx.depth),
                        ('depth_sigma', rx.depth_sigma), ('provenance', rx.provenance)):
        offline = dict(got[f'/geo_depth_node/{topic}'])
        for stamp in sent:
            a, b = live[stamp], offline[stamp]
            assert a.header.frame_id == b.header.frame_id == LEFT_FRAME
            assert (a.height, a.width) == (b.height, b.width)
            assert bytes(a.data) == bytes(b.data), f'{topic} differs at {stamp}'
    a = rx.legends[-1]
    b = got['/geo_depth_node/provenance_legend'][-1][1]
    for field in ('output_frame', 'georeferenced', 'sigma_definition'):
        assert getattr(a, field) == getattr(b, field)
    assert list(a.flag_bits) == list(b.flag_bits)
    assert a.max_relative_sigma == pytest.approx(b.max_relative_sigma)
    assert [(s.id, s.name, s.uri, s.kind, s.crs, s.vertical_datum) for s in a.sources] == \
        [(s.id, s.name, s.uri, s.kind, s.crs, s.vertical_datum) for s in b.sources]
