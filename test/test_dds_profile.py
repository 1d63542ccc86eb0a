"""The Fast DDS profile (config/fastdds_shm.xml) and the RViz config (config/geo_depth.rviz).

* Static checks: both files parse and carry the settings the node depends on.
* A real transport check: two processes (publisher, subscriber) on a private
  ROS domain, with FASTDDS_DEFAULT_PROFILES_FILE pointing at the profile, move
  22 MB sensor_msgs/PointCloud2 messages with sensor-data (best-effort) QoS.
  With Fast DDS's defaults none of them arrives (512 KB shared-memory segment);
  with the profile at least 3 of 5 must arrive intact.  The test also prints
  how long publish() takes and the end-to-end latency.
"""
from __future__ import annotations

import json
import os
import random
import re
import statistics
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / 'config' / 'fastdds_shm.xml'
RVIZ = REPO / 'config' / 'geo_depth.rviz'

MIB = 1024 * 1024
POINTS_TOPIC = '/geo_depth_node/points'
CLOUD_W, CLOUD_H, POINT_STEP = 1280, 720, 24       # the node's largest cloud
CLOUD_BYTES = CLOUD_W * CLOUD_H * POINT_STEP       # 22,118,400 bytes
N_SENT, RATE_HZ, MIN_INTACT = 5, 5.0, 3
DEADLINE_S = 20.0                                  # subscriber gives up after this

# "[XMLPARSER Error]", "[RTPS_TRANSPORT_SHM Error]", ... once colour codes are stripped
ANSI = re.compile(r'\x1b\[[0-9;]*m')
FASTDDS_ERROR = re.compile(r'\[[A-Z0-9_]+ Error\]')


# ----------------------------------------------------------------- helpers
def _local(tag: str) -> str:
    """Element name without the XML namespace ('{http://www.eprosima.com}dds' -> 'dds')."""
    return tag.rsplit('}', 1)[-1]


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in elem if _local(c.tag) == name), None)


def _children(elem: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in elem if _local(c.tag) == name]


def _text(elem: ET.Element, name: str) -> str | None:
    c = _child(elem, name)
    return None if c is None or c.text is None else c.text.strip()


def _profiles() -> ET.Element:
    root = ET.parse(PROFILE).getroot()
    assert _local(root.tag) == 'dds', f'root element must be <dds>, got <{_local(root.tag)}>'
    profiles = _child(root, 'profiles')
    assert profiles is not None, '<dds> has no <profiles>'
    return profiles


def _transports() -> dict[str, ET.Element]:
    lists = _children(_profiles(), 'transport_descriptors')
    assert len(lists) == 1, 'exactly one <transport_descriptors> expected'
    out = {}
    for td in _children(lists[0], 'transport_descriptor'):
        tid = _text(td, 'transport_id')
        assert tid, 'transport_descriptor without transport_id'
        out[tid] = td
    return out


def _default_profile(kind: str) -> ET.Element:
    found = [p for p in _children(_profiles(), kind) if p.get('is_default_profile') == 'true']
    assert len(found) == 1, f'need exactly one <{kind} is_default_profile="true">, found {len(found)}'
    return found[0]


def _rviz() -> dict:
    yaml = pytest.importorskip('yaml', reason='PyYAML is needed to read the RViz config')
    with open(RVIZ, encoding='utf-8') as f:
        return yaml.safe_load(f)


def _displays(cfg: dict, cls: str) -> list[dict]:
    return [d for d in cfg['Visualization Manager']['Displays']
            if d.get('Class') == f'rviz_default_plugins/{cls}']


# --------------------------------------------------------- the DDS profile
def test_profile_has_large_shm_segment_and_udp():
    tr = _transports()
    shm = [t for t in tr.values() if _text(t, 'type') == 'SHM']
    udp = [t for t in tr.values() if _text(t, 'type') == 'UDPv4']
    assert len(shm) == 1 and len(udp) == 1, f'want one SHM and one UDPv4 transport, got {list(tr)}'
    shm, udp = shm[0], udp[0]

    segment = int(_text(shm, 'segment_size') or 0)
    assert segment >= 64 * MIB, f'SHM segment_size {segment} B < 64 MiB'
    # several 22 MB clouds (plus the 3.7 MB images) must fit in flight at once
    assert segment >= 2 * CLOUD_BYTES
    queue = int(_text(shm, 'port_queue_capacity') or 512)
    assert queue * 65500 >= CLOUD_BYTES, f'port_queue_capacity {queue} cannot hold one fragmented cloud'
    shm_max = _text(shm, 'maxMessageSize')
    if shm_max is not None:
        assert int(shm_max) <= segment, 'Fast DDS refuses maxMessageSize > segment_size'

    udp_max = int(_text(udp, 'maxMessageSize') or 65500)
    assert 1024 <= udp_max <= 65500, f'UDPv4 maxMessageSize {udp_max} out of range (Fast DDS max 65500)'
    for key in ('sendBufferSize', 'receiveBufferSize'):
        assert int(_text(udp, key) or 0) >= udp_max, f'UDPv4 {key} must be >= maxMessageSize'


def test_profile_default_participant_uses_only_these_transports():
    tr = _transports()
    part = _default_profile('participant')
    rtps = _child(part, 'rtps')
    assert rtps is not None
    assert _text(rtps, 'useBuiltinTransports') == 'false', \
        'useBuiltinTransports must be false, or the 512 KB default SHM transport is created too'
    user = _child(rtps, 'userTransports')
    assert user is not None
    ids = [t.text.strip() for t in _children(user, 'transport_id')]
    assert sorted(ids) == sorted(tr), f'userTransports {ids} must list every descriptor {list(tr)}'
    assert _text(tr[ids[0]], 'type') == 'SHM', 'list SHM first'
    # discovery must stay controlled by ROS_DOMAIN_ID / ROS_AUTOMATIC_DISCOVERY_RANGE
    assert _child(part, 'domainId') is None
    assert _child(rtps, 'builtin') is None


def test_profile_memory_policy_allows_unbounded_messages():
    ok = {'PREALLOCATED_WITH_REALLOC', 'DYNAMIC_REUSABLE'}
    for kind in ('data_writer', 'data_reader'):
        policy = _text(_default_profile(kind), 'historyMemoryPolicy')
        assert policy in ok, f'{kind} historyMemoryPolicy {policy!r} not in {ok}'
    # ROS QoS (reliability, durability, depth) must come from the publishers, not from here
    qos = _child(_default_profile('data_writer'), 'qos')
    if qos is not None:
        assert {_local(c.tag) for c in qos} <= {'publishMode'}


# ------------------------------------------------------------ the RViz config
def test_rviz_config_global_options_and_views():
    cfg = _rviz()
    assert set(cfg) >= {'Panels', 'Visualization Manager'}
    vm = cfg['Visualization Manager']
    assert vm['Global Options']['Fixed Frame'] == 'left_camera_optical_frame'
    assert len(_displays(cfg, 'Grid')) == 1
    assert len(_displays(cfg, 'TF')) == 1
    assert vm['Views']['Current']['Class'] == 'rviz_default_plugins/Orbit'
    assert any(p['Class'] == 'rviz_common/Displays' for p in cfg['Panels'])


def test_rviz_config_pointcloud_coloured_by_provenance():
    clouds = _displays(_rviz(), 'PointCloud2')
    assert len(clouds) == 1
    pc = clouds[0]
    assert pc['Topic']['Value'] == POINTS_TOPIC
    assert pc['Topic']['Reliability Policy'] == 'Best Effort'
    assert pc['Color Transformer'] == 'Intensity'
    assert pc['Channel Name'] == 'provenance'
    assert pc['Autocompute Intensity Bounds'] is False
    assert pc['Min Intensity'] == 0
    assert pc['Max Intensity'] == 3
    assert pc['Use rainbow'] is True
    assert pc['Style'] == 'Points'
    assert pc['Size (Pixels)'] == 2
    assert pc['Enabled'] is True


def test_rviz_config_images():
    topics = sorted(d['Topic']['Value'] for d in _displays(_rviz(), 'Image'))
    assert topics == ['/geo_depth_node/depth', '/geo_depth_node/provenance']


# --------------------------------------------------------- the real transport
_WORKER = textwrap.dedent('''
    """Publisher or subscriber of 22 MB PointCloud2 messages; one JSON object per line on stdout."""
    import hashlib, json, sys, time
    import numpy as np
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import PointCloud2, PointField

    role, n, w, h, step, rate, deadline = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
        int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
    topic = 'geo_depth_profile_test/points'

    def out(**kw):
        print(json.dumps(kw), flush=True)

    rclpy.init()
    node = rclpy.create_node('profile_test_' + role)
    if role == 'sub':
        got = []

        def cb(msg):
            t_ns = time.time_ns()
            sent_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            data = msg.data
            got.append(1)
            out(recv=msg.header.frame_id, size=len(data),
                digest=hashlib.blake2b(memoryview(data), digest_size=16).hexdigest(),
                latency_s=(t_ns - sent_ns) * 1e-9)

        node.create_subscription(PointCloud2, topic, cb, qos_profile_sensor_data)
        out(ready=True)
        end = time.monotonic() + deadline
        while time.monotonic() < end and len(got) < n:
            rclpy.spin_once(node, timeout_sec=0.05)
    else:
        pub = node.create_publisher(PointCloud2, topic, qos_profile_sensor_data)
        rng = np.random.default_rng(1234)
        msgs = []
        for i in range(n):                       # built before timing starts
            arr = np.frombuffer(rng.bytes(w * h * step), dtype=np.uint8)
            m = PointCloud2()
            m.header.frame_id = str(i)
            m.height, m.width, m.point_step, m.row_step = h, w, step, w * step
            m.fields = [PointField(name=f, offset=4 * k, datatype=PointField.FLOAT32, count=1)
                        for k, f in enumerate(('x', 'y', 'z'))]
            m.is_dense = False
            m.data = arr.tobytes()               # bytes: fast path (a memoryview is ~400x slower)
            msgs.append((m, hashlib.blake2b(arr, digest_size=16).hexdigest()))
        end = time.monotonic() + 10.0
        while pub.get_subscription_count() < 1 and time.monotonic() < end:
            time.sleep(0.02)
        out(matched=pub.get_subscription_count())
        time.sleep(1.0)                          # let the reader side match the writer too
        period = 1.0 / rate
        t_next = time.monotonic()
        for m, digest in msgs:
            now = time.time_ns()
            m.header.stamp.sec, m.header.stamp.nanosec = divmod(now, 1_000_000_000)
            t0 = time.perf_counter()
            pub.publish(m)
            out(sent=m.header.frame_id, digest=digest, publish_s=time.perf_counter() - t0)
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
        time.sleep(1.0)                          # keep our SHM segment alive for the reader
    node.destroy_node()
    rclpy.shutdown()
''')


def _ros_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in list(env):  # anything that could change the middleware's behaviour
        if key.startswith(('RMW_FASTRTPS_', 'FASTRTPS_', 'FASTDDS_', 'ROS_SECURITY_')) or key in (
                'SKIP_DEFAULT_XML_FILE', 'ROS_LOCALHOST_ONLY', 'ROS_STATIC_PEERS',
                'ROS_DISCOVERY_SERVER', 'ROS_SUPER_CLIENT'):
            del env[key]
    env.update({
        'FASTDDS_DEFAULT_PROFILES_FILE': str(PROFILE),
        'RMW_IMPLEMENTATION': 'rmw_fastrtps_cpp',
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
        'ROS_DOMAIN_ID': str(random.randint(100, 200)),
        'ROS_LOG_DIR': str(tmp_path / 'ros_log'),
        'PYTHONUNBUFFERED': '1',
    })
    return env


def _require_rclpy(env: dict[str, str], cwd: Path) -> None:
    """Skip unless rclpy + sensor_msgs import (in a child: a broken ROS install must not kill pytest)."""
    try:
        probe = subprocess.run(
            [sys.executable, '-c', 'import rclpy, numpy; from sensor_msgs.msg import PointCloud2'],
            check=False, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip('importing rclpy timed out')
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ['?'])[-1]
        pytest.skip(f'rclpy cannot be imported ({last})')


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith('{'):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:  # the worker prints only JSON: say what broke
                raise AssertionError(f'worker printed a malformed JSON line {line!r}: {exc}') from exc
    return out


def test_22mb_best_effort_clouds_cross_processes_with_profile(tmp_path):
    env = _ros_env(tmp_path)
    _require_rclpy(env, tmp_path)
    shm = Path('/dev/shm')
    if not shm.is_dir():
        pytest.skip('no /dev/shm: the shared-memory transport cannot work here')
    st = os.statvfs(shm)
    if st.f_frsize * st.f_blocks < 256 * MIB:
        pytest.skip(f'/dev/shm is only {st.f_frsize * st.f_blocks // MIB} MiB; '
                    'the profile needs >= 256 MiB (docker run --shm-size=1g)')

    script = tmp_path / 'dds_worker.py'
    script.write_text(_WORKER)
    args = [str(N_SENT), str(CLOUD_W), str(CLOUD_H), str(POINT_STEP), str(RATE_HZ), str(DEADLINE_S)]

    def spawn(role: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), role, *args], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    sub = spawn('sub')
    time.sleep(0.5)
    pub = spawn('pub')
    outputs = {}
    for role, proc in (('pub', pub), ('sub', sub)):
        try:
            outputs[role] = proc.communicate(timeout=DEADLINE_S + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            outputs[role] = proc.communicate()
            outputs[role] = (outputs[role][0], outputs[role][1] + f'\n[test] {role} killed after timeout')
    (pub_out, pub_err), (sub_out, sub_err) = outputs['pub'], outputs['sub']
    report = (f'--- publisher rc={pub.returncode}\n{pub_out}{pub_err}\n'
              f'--- subscriber rc={sub.returncode}\n{sub_out}{sub_err}')

    # The profile must load cleanly: a bad file makes Fast DDS print [XMLPARSER Error]
    # lines and silently fall back to its defaults.
    logs = ANSI.sub('', pub_err + sub_err + pub_out + sub_out)
    assert 'XMLPARSER' not in logs, f'Fast DDS could not parse {PROFILE}:\n{report}'
    errors = [ln for ln in logs.splitlines() if FASTDDS_ERROR.search(ln)]
    assert not errors, 'Fast DDS errors:\n' + '\n'.join(errors)
    assert pub.returncode == 0 and sub.returncode == 0, report

    pub_lines, sub_lines = _json_lines(pub_out), _json_lines(sub_out)
    assert any(d.get('matched', 0) >= 1 for d in pub_lines), f'publisher never matched:\n{report}'
    sent = {d['sent']: d for d in pub_lines if 'sent' in d}
    assert len(sent) == N_SENT, report
    recv = [d for d in sub_lines if 'recv' in d]
    intact = [d for d in recv if d['recv'] in sent and d['size'] == CLOUD_BYTES
              and d['digest'] == sent[d['recv']]['digest']]

    publish_ms = [sent[k]['publish_s'] * 1e3 for k in sorted(sent, key=int)]
    latency_ms = [d['latency_s'] * 1e3 for d in intact]
    print(f'\n22 MB PointCloud2 ({CLOUD_BYTES} B), best effort, {RATE_HZ:g} Hz, via {PROFILE.name}: '
          f'{len(intact)}/{N_SENT} intact, {len(recv)} received')
    print('publish() ms: ' + ', '.join(f'{v:.1f}' for v in publish_ms)
          + f'  (median {statistics.median(publish_ms):.1f})')
    if latency_ms:
        print('end-to-end latency ms: ' + ', '.join(f'{v:.1f}' for v in latency_ms)
              + f'  (median {statistics.median(latency_ms):.1f})')

    assert len(intact) >= MIN_INTACT, \
        f'only {len(intact)} of {N_SENT} 22 MB clouds arrived intact ({len(recv)} received)\n{report}'
