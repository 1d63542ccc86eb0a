"""Live integration test: the node executable (as the launch file starts it) fed from
a rosbag2 of the synthetic world over real DDS, outputs checked against the contract and
the truth.

launch_testing does not exist here, so this is the same shape by hand: write a bag
with `rosbags`, start the installed executable with the installed params file in a
private ROS_DOMAIN_ID with localhost discovery, publish the bag's raw CDR frame by
frame, receive ~/points, ~/depth, ~/depth_sigma, ~/provenance, ~/provenance_legend
and /diagnostics.
"""
from __future__ import annotations

import random
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='rclpy not available (no ROS 2 here)')
pytest.importorskip('geo_depth_node.msg', reason='custom messages not built (run make build)')

from geo_depth_node.core.camera import CameraModel  # noqa: E402
from geo_depth_node.core.cloud import pack_points, unpack_points  # noqa: E402
from geo_depth_node.core.contract import (POINT_FIELDS, Flag,  # noqa: E402
                                          Provenance)
from geo_depth_node.core.params import load_params_yaml  # noqa: E402
from geo_depth_node.core.pipeline import DepthPipeline  # noqa: E402
from geo_depth_node.ros.harness import (BagReplayer, NodeProcess, installed_paths,  # noqa: E402
                                        isolated_ros_env)
from geo_depth_node.synth.config import SynthConfig  # noqa: E402
from geo_depth_node.synth.generate import generate_world  # noqa: E402
from geo_depth_node.tools.scene_bag import LEFT_FRAME  # noqa: E402

W, H, FRAMES = 320, 240, 3


@pytest.fixture(scope='module')
def live(tmp_path_factory):
    out = tmp_path_factory.mktemp('live')
    # The synthetic world (terrain, objects, sky; IMU, GNSS, tf in the same bag).
    info = generate_world(out, SynthConfig(frames=FRAMES, width=W, height=H, seed=3),
                          progress=False)
    domain = random.randint(100, 200)
    env = isolated_ros_env(domain)
    node = NodeProcess(env, log_path=out / 'node.log')
    node.__enter__()
    replayer = BagReplayer(domain)
    try:
        t0 = time.perf_counter()
        sent = replayer.replay(info['bag'], frame_timeout=60.0, discovery_timeout=60.0)
        wall = time.perf_counter() - t0
        replayer.wait_for(lambda: len(replayer.received.legends) >= 1, 10.0)
        yield dict(info=info, sent=sent, rx=replayer.received, node=node, replayer=replayer,
                   wall=wall, out=out)
    finally:
        replayer.close()
        rc = node.stop()
        print(f'\nnode exit code {rc}; log tail:\n' + node.log_text()[-1500:])


def _cloud(msg) -> np.ndarray:
    return unpack_points(msg.data, msg.height, msg.width)


def test_every_frame_produces_a_cloud_with_the_contract_layout(live):
    rx, sent = live['rx'], live['sent']
    assert len(sent) == FRAMES
    for stamp in sent:
        msg = rx.points[stamp]
        assert msg.header.frame_id == LEFT_FRAME
        assert (msg.height, msg.width) == (H, W)
        assert msg.point_step == 24 and msg.row_step == 24 * W and not msg.is_bigendian
        assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == list(POINT_FIELDS)
        assert len(msg.data) == H * W * 24
        for store in (rx.depth, rx.depth_sigma, rx.provenance):
            img = store[stamp]
            assert img.header.frame_id == LEFT_FRAME and (img.height, img.width) == (H, W)
        assert rx.depth[stamp].encoding == '32FC1' and rx.provenance[stamp].encoding == 'mono8'


def test_points_obey_provenance_and_sigma_contract(live):
    params = load_params_yaml(str(installed_paths().params_file))
    limit = params['limit.max_relative_sigma']
    for stamp in live['sent']:
        c = _cloud(live['rx'].points[stamp])
        xyz = np.stack([c['x'], c['y'], c['z']], axis=-1)
        prov = c['provenance']
        assert set(np.unique(prov)) <= {int(Provenance.NONE), int(Provenance.MEASURED)}
        meas = prov == Provenance.MEASURED
        # at 320 px width the 128 px border band (OUT_OF_VIEW), the sky and the far terrain
        # (BEYOND_RESOLUTION) take most pixels
        assert meas.mean() > 0.05
        assert np.all((c['flags'][:, :120] & Flag.OUT_OF_VIEW) != 0)
        assert np.all(np.isfinite(xyz[meas])) and np.all(np.isfinite(c['sigma'][meas]))
        rng = np.linalg.norm(xyz[meas], axis=-1)
        assert np.all(c['sigma'][meas] <= limit * rng * (1 + 1e-5))
        assert np.all(c['sigma'][meas] > 0)
        none = ~meas
        assert np.all(np.isnan(xyz[none])) and np.all(np.isnan(c['sigma'][none]))
        assert np.all(c['flags'][none] != 0), 'a NONE point without a reason flag'
        assert np.all(c['source'] == 0)
        prov_img = np.frombuffer(bytes(live['rx'].provenance[stamp].data), np.uint8).reshape(H, W)
        np.testing.assert_array_equal(prov_img, prov)
        depth = np.frombuffer(bytes(live['rx'].depth[stamp].data), np.float32).reshape(H, W)
        np.testing.assert_allclose(depth[meas], c['z'][meas], rtol=1e-6)
        beyond = (c['flags'] & Flag.BEYOND_RESOLUTION) != 0
        assert beyond.any() and np.all(np.isposinf(depth[beyond]))


def test_measured_points_agree_with_truth(live):
    truth = np.load(live['info']['truth'])
    within1, within2, n = 0, 0, 0
    for i, stamp in enumerate(live['sent']):
        c = _cloud(live['rx'].points[stamp])
        meas = c['provenance'] == Provenance.MEASURED
        xyz = np.stack([c['x'], c['y'], c['z']], axis=-1)[meas]
        K = truth['K']
        v, u = np.nonzero(meas)
        ray = np.sqrt(1 + ((u - K[0, 2]) / K[0, 0]) ** 2 + ((v - K[1, 2]) / K[1, 1]) ** 2)
        r_true = truth['depth'][i][meas] * ray
        err = np.abs(np.linalg.norm(xyz, axis=-1) - r_true)
        sig = c['sigma'][meas]
        within1 += int((err <= sig).sum())
        within2 += int((err <= 2 * sig).sum())
        n += int(meas.sum())
    f1, f2 = within1 / n, within2 / n
    print(f'\nlive node vs truth: {n} MEASURED points, {100 * f1:.1f} % within 1 sigma, '
          f'{100 * f2:.1f} % within 2 sigma')
    assert f2 > 0.85, f2  # sigma model not yet calibrated (a later issue); see README
    assert np.isfinite(f1)


def test_live_cloud_equals_the_core_pipeline_offline(live):
    """The node is a thin shell: the same images through the core give the same bytes."""
    from rosbags.rosbag2 import Reader

    from geo_depth_node.tools.scene_bag import kilted_typestore

    ts = kilted_typestore()
    params = load_params_yaml(str(installed_paths().params_file))
    pipeline = DepthPipeline(params)
    frames: dict[int, dict] = {}
    with Reader(live['info']['bag']) as reader:
        for conn, t, raw in reader.messages():
            frames.setdefault(t, {})[conn.topic] = ts.deserialize_cdr(raw, conn.msgtype)
    for stamp in live['sent']:
        f = frames[stamp]
        models = [CameraModel.from_arrays(m.width, m.height, m.k, m.d, m.r, m.p)
                  for m in (f['/left/camera_info'], f['/right/camera_info'])]
        imgs = [f[t].data.reshape(H, W) for t in ('/left/image_rect', '/right/image_rect')]
        offline = pack_points(pipeline.process(imgs[0], imgs[1], *models))
        live_cloud = _cloud(live['rx'].points[stamp])
        assert offline.tobytes() == live_cloud.tobytes()


def test_legend_is_latched_and_complete(live):
    from geo_depth_node.msg import ProvenanceLegend

    legends = live['rx'].legends
    assert legends, 'no ~/provenance_legend received'
    last = legends[-1]
    assert last.output_frame == LEFT_FRAME and last.header.frame_id == LEFT_FRAME
    assert list(last.flag_names) == [f.name for f in Flag]
    assert list(last.flag_bits) == [int(f) for f in Flag]
    assert list(last.provenance_names) == ['NONE', 'MEASURED', 'FUSED', 'PRIOR']
    assert ProvenanceLegend.SKY == Flag.SKY
    assert last.max_relative_sigma > 0 and 'ray' in last.sigma_definition
    assert len(last.sources) == 0 and not last.georeferenced

    # a late subscriber still gets it (transient local)
    late = BagReplayer(int(live['node'].env['ROS_DOMAIN_ID']))
    try:
        assert late.wait_for(lambda: len(late.received.legends) >= 1, 15.0)
        assert late.received.legends[-1].output_frame == LEFT_FRAME
    finally:
        late.close()


def test_diagnostics_report_classes_latency_and_bad_input(live):
    """Publish an undecodable frame: the node must not crash, must say so on /diagnostics,
    and must go on processing good frames."""
    from sensor_msgs.msg import CameraInfo, Image

    rep, rx = live['replayer'], live['rx']
    node = rep.node
    pubs = {t: node.create_publisher(m, t, 10) for t, m in (
        ('/left/image_rect', Image), ('/right/image_rect', Image),
        ('/left/camera_info', CameraInfo), ('/right/camera_info', CameraInfo))}
    time.sleep(1.0)  # discovery of the new publishers

    def frame(stamp_ns: int, encoding: str) -> None:
        truth = np.load(live['info']['truth'])
        for side, P in (('left', truth['P_left']), ('right', truth['P_right'])):
            info = CameraInfo()
            info.header.stamp.sec, info.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
            info.header.frame_id = f'{side}_camera_optical_frame'
            info.width, info.height = W, H
            info.distortion_model = 'plumb_bob'
            info.d = [0.0] * 5
            info.k = truth['K'].reshape(-1).tolist()
            info.r = np.eye(3).reshape(-1).tolist()
            info.p = P.reshape(-1).tolist()
            img = Image()
            img.header = info.header
            img.width, img.height, img.encoding, img.step = W, H, encoding, W
            img.data = np.full(H * W, 128, np.uint8).tobytes()
            pubs[f'/{side}/camera_info'].publish(info)
            pubs[f'/{side}/image_rect'].publish(img)

    base = max(live['sent']) + 1_000_000_000
    frame(base, 'yuv422_not_real')
    frame(base + 200_000_000, 'mono8')  # a valid (flat grey) frame after the bad one
    assert rep.wait_for(lambda: base + 200_000_000 in rx.points, 30.0), 'node stopped working'
    assert live['node'].alive()
    flat = _cloud(rx.points[base + 200_000_000])
    assert np.all(flat['provenance'] == Provenance.NONE)  # no texture: nothing invented
    assert np.all(flat['flags'] != 0)

    def reported() -> dict | None:
        for arr in reversed(rx.diagnostics):
            for st in arr.status:
                kv = {k.key: k.value for k in st.values}
                if int(kv.get('input_problem.bad_input', 0)) >= 1 \
                        and int(kv.get('frames_processed', 0)) >= FRAMES + 1:
                    return kv
        return None

    assert rep.wait_for(lambda: reported() is not None, 10.0), 'bad input not in diagnostics'
    kv = reported()
    assert int(kv['frames_processed']) >= FRAMES + 1
    assert 0.0 <= float(kv['fraction.MEASURED']) <= 1.0
    assert float(kv['latency_ms.frame_total.p50']) > 0
    assert 'dropped_frames_queue' in kv
    assert 'unsupported image encoding' in live['node'].log_text()


def test_latency_is_reported(live):
    lat = sorted(live['rx'].latency_s.values())
    assert len(lat) == FRAMES
    print(f'\nend-to-end latency (publish inputs -> receive cloud) {W}x{H}: '
          f'median {1e3 * lat[len(lat) // 2]:.1f} ms; replay wall time {live["wall"]:.2f} s')
