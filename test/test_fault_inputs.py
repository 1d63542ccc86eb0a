"""Faults in the stereo and pose inputs, through the core and through `geo-depth replay`:
bad calibrations are input problems (never a traceback, never non-finite MEASURED points), one
bad frame or one stray pose stamp costs nothing else, stamp gaps and frame-id mismatches are
counted, and replay keeps the node's counters (core.frame_stats).

A small synthetic world (geo_depth_node.synth) gives a bag with DEM sources, IMU and GNSS;
each test copies it with one fault and compares with the clean replay.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest

from geo_depth_node.core.camera import CameraModel, camera_model_from_msg
from geo_depth_node.core.contract import Provenance
from geo_depth_node.core.frame_stats import FrameStats
from geo_depth_node.core.pipeline import DepthPipeline
from geo_depth_node.synth.config import SynthConfig
from geo_depth_node.synth.generate import generate_world

W, H, FRAMES = 192, 144, 5
FX, B = 200.0, 0.3


# ----------------------------------------------------------------------------- helpers
def _models(d: list[float] | None = None, model: str = 'plumb_bob', fx: float = FX,
            baseline: float = B, r: np.ndarray | None = None, k_fx: float | None = None):
    k = [k_fx if k_fx is not None else fx, 0.0, W / 2, 0.0, fx, H / 2, 0.0, 0.0, 1.0]
    d = [0.0] * 5 if d is None else d
    r = np.eye(3) if r is None else r
    left = CameraModel.from_arrays(W, H, k, d, r, [fx, 0, W / 2, 0, 0, fx, H / 2, 0, 0, 0, 1, 0],
                                   model)
    right = CameraModel.from_arrays(W, H, k, d, r, [fx, 0, W / 2, -fx * baseline, 0, fx, H / 2,
                                                    0, 0, 0, 1, 0], model)
    return left, right


def _pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    ext = rng.integers(0, 256, (H, W + 12), dtype=np.uint8)
    return np.ascontiguousarray(ext[:, :W]), np.ascontiguousarray(ext[:, 12:])  # d = 12 px


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _set_stamp(msg, ns: int) -> None:
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(ns), 1_000_000_000)


def _copy_bag(src: str, dst: Path, edit: Callable[[str, int, Any], list[tuple[int, Any]]]
              ) -> None:
    """Copy a bag (mcap), passing every message through ``edit(topic, t, msg)``, which returns
    the (bag time, message) pairs to write (none: drop it; several: insert)."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    from geo_depth_node.tools.scene_bag import kilted_typestore

    ts = kilted_typestore()
    with Reader(src) as reader, Writer(dst, version=9,
                                       storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=ts)
                 for c in reader.connections}
        for conn, t, raw in reader.messages():
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            for t2, m2 in edit(conn.topic, t, msg):
                writer.write(conns[conn.id], t2, ts.serialize_cdr(m2, conn.msgtype))


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp('fault_world')
    return generate_world(out / 'world', SynthConfig(frames=FRAMES, width=W, height=H, seed=7),
                          progress=False)


@pytest.fixture(scope='module')
def clean(world, tmp_path_factory):
    from geo_depth_node.tools.replay import replay_bag

    out = tmp_path_factory.mktemp('fault_clean')
    return replay_bag(world['bag'], world['params'], out, pictures=0)


def _replay(world, bag, tmp_path, **kw) -> dict:
    from geo_depth_node.tools.replay import replay_bag

    return replay_bag(bag, world['params'], tmp_path / 'out', pictures=0, **kw)


def _priors(report: dict) -> int:
    return report['classes']['FUSED']['count'] + report['classes']['PRIOR']['count']


# ----------------------------------------------------------------------------- calibration
@pytest.mark.parametrize('d', [[0.01, 0.0, 0.0], [0.01] * 20, [0.0] * 6])
def test_unsupported_distortion_length_is_a_value_error(d):
    """plumb_bob D with 3, 6 or 20 coefficients: OpenCV raised cv2.error in rectification
    (the replay aborted with a traceback); now a ValueError naming the length."""
    with pytest.raises(ValueError, match=f'D has {len(d)}'):
        _models(d)


@pytest.mark.parametrize('fx', [1e40, 1e7, 0.0, -5.0])
def test_implausible_focal_length_is_a_value_error(fx):
    """P with fx = 1e40 ran (RuntimeError on the host path, 24 912 non-finite MEASURED points
    on the torch path); a focal length outside (0, 1e6] px is now refused."""
    with pytest.raises(ValueError, match='focal lengths'):
        _models(fx=fx)


def test_baseline_of_1e30_is_refused():
    with pytest.raises(ValueError, match='baseline'):
        _models(baseline=1e30)


def test_non_orthonormal_rotation_with_det_one_is_refused():
    """diag(2, 0.5, 1) has det 1 but scales ranges by up to 2x; it was accepted."""
    with pytest.raises(ValueError, match='not a rotation'):
        _models(r=np.diag([2.0, 0.5, 1.0]))


def test_raw_intrinsics_with_zero_focal_length_are_an_input_error_when_rectifying():
    """K with fx = 0 and rectify: a frame of NO_MATCH before; now a ValueError (the node
    counts input_problem.bad_calibration, replay skips the frame)."""
    left, right = _models(k_fx=0.0)
    pipe = DepthPipeline({'stereo.num_disparities': 32})
    with pytest.raises(ValueError, match='K must have focal lengths'):
        pipe.process(*_pair(), left, right, rectify=True)
    # without rectification K is not used: the frame is processed
    res = pipe.process(*_pair(), left, right, rectify=False)
    assert np.count_nonzero(res.provenance == Provenance.MEASURED) > 0.5 * W * H


def _info(**kw) -> SimpleNamespace:
    base = dict(width=W, height=H, k=[FX, 0, W / 2, 0, FX, H / 2, 0, 0, 1], d=[0.0] * 5,
                r=list(np.eye(3).reshape(-1)), p=[FX, 0, W / 2, 0, 0, FX, H / 2, 0, 0, 0, 1, 0],
                distortion_model='plumb_bob', header=SimpleNamespace(frame_id='cam'),
                binning_x=0, binning_y=0,
                roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0))
    base.update(kw)
    return SimpleNamespace(**base)


def test_binning_and_roi_are_refused_saying_so():
    assert camera_model_from_msg(_info()).width == W
    assert camera_model_from_msg(_info(roi=SimpleNamespace(x_offset=0, y_offset=0, width=W,
                                                           height=H))).width == W
    with pytest.raises(ValueError, match='binning 2x2 is not supported'):
        camera_model_from_msg(_info(binning_x=2, binning_y=2))
    with pytest.raises(ValueError, match='roi .* is not supported'):
        camera_model_from_msg(_info(roi=SimpleNamespace(x_offset=10, y_offset=0, width=100,
                                                        height=H)))


# ----------------------------------------------------------------------------- counters
def test_gaps_in_the_image_stamps_are_counted_as_missing_frames():
    """Frames lost upstream or in DDS while the node was busy: a gap of k periods counts
    k - 1; late, stray and looped stamps are not gaps."""
    st = FrameStats()
    period = 100_000_000
    stamps = [k * period for k in range(1, 11)]
    stamps += [14 * period, 15 * period]  # 11, 12, 13 missing
    stamps += [3]  # a stray stamp: not a gap, ignored
    stamps += [16 * period, 18 * period]  # 17 missing
    got = [st.image_stamp(s) for s in stamps]
    assert sum(got) == 4 and st.frames_missing == 4
    assert st.values()['input_frames_missing'] == 4


def test_a_camera_that_slows_down_is_not_counted_as_losing_frames():
    """30 fps, then 15 fps (auto-exposure, a reconfigured driver): the period estimate
    follows within a few frames instead of counting every later frame as lost (300 of 300
    before)."""
    st = FrameStats()
    t = 0
    for _ in range(60):
        t += 33_333_333
        st.image_stamp(t)
    for _ in range(300):
        t += 66_666_667
        st.image_stamp(t)
    assert st.frames_missing <= 20, st.frames_missing


def test_a_doubtful_input_does_not_hide_a_more_important_warning():
    st = FrameStats()
    st.input_problem('frame_id_mismatch', 'right camera_info frame_id differs', doubtful=True)
    st.frame_done(SimpleNamespace(class_fractions=lambda: {}, georef_stats={},
                                  pose_status='GNSS: gap of 3.00 s', pose_degraded=False,
                                  prior_problem=''), {})
    level, text = st.status()
    assert level == 1 and text.startswith('no pose'), text
    st.input_problem('frame_id_mismatch', 'right camera_info frame_id differs', doubtful=True)
    st.frame_done(SimpleNamespace(class_fractions=lambda: {}, georef_stats={},
                                  pose_status='ok', pose_degraded=False, prior_problem=''), {})
    level, text = st.status()
    assert level == 1 and text.startswith('doubtful input used'), text
    assert st.values()['input_problem.frame_id_mismatch'] == 2


def test_replay_counts_a_frame_dropped_from_the_bag(world, clean, tmp_path):
    stamps = clean['stamps_ns']
    drop = stamps['first'] + 3 * 100_000_000  # the fourth frame (10 Hz)

    def edit(topic, t, msg):
        if topic.startswith(('/left/', '/right/')) and _stamp(msg) == drop:
            return []
        return [(t, msg)]

    _copy_bag(world['bag'], tmp_path / 'bag', edit)
    r = _replay(world, tmp_path / 'bag', tmp_path)
    assert r['frames'] == FRAMES - 1
    assert r['counters']['input_frames_missing'] == 1


# ----------------------------------------------------------------------------- replay
def test_a_bad_calibration_in_one_frame_is_skipped_and_counted(world, clean, tmp_path):
    """Frame 1's left CameraInfo has 3 distortion coefficients: that frame is an input
    problem; every other frame is replayed as in the clean bag, report and outputs written."""
    bad = clean['stamps_ns']['first'] + 100_000_000

    def edit(topic, t, msg):
        if topic == '/left/camera_info' and _stamp(msg) == bad:
            msg = copy.deepcopy(msg)
            msg.d = np.array([0.01, 0.0, 0.0])
        return [(t, msg)]

    _copy_bag(world['bag'], tmp_path / 'bag', edit)
    r = _replay(world, tmp_path / 'bag', tmp_path)
    assert r['frames'] == FRAMES - 1
    assert r['input_problems'] == {'bad_input': 1}
    assert r['counters']['input_problems'] == 1
    assert (tmp_path / 'out' / 'report.json').is_file()
    assert (tmp_path / 'out' / 'output.mcap').is_file()
    assert not (tmp_path / 'out' / '.output_bag').exists()
    stereo = ('MEASURED', 'FUSED')
    assert sum(r['classes'][c]['count'] for c in stereo) > \
        0.5 * sum(clean['classes'][c]['count'] for c in stereo) > 0


def test_an_unexpected_exception_in_one_frame_is_contained(world, clean, tmp_path,
                                                           monkeypatch):
    """A frame whose processing raises something other than ValueError (a bug, a library
    error) is a processing error: counted, the frame skipped, the rest replayed (before, the
    replay ended with a traceback, no report and its output left in a hidden folder)."""
    bad = clean['stamps_ns']['first'] + 200_000_000
    real = DepthPipeline.process

    def process(self, *a, **kw):
        if kw.get('stamp_ns') == bad:
            raise RuntimeError('simulated library failure')
        return real(self, *a, **kw)

    monkeypatch.setattr(DepthPipeline, 'process', process)
    r = _replay(world, world['bag'], tmp_path)
    assert r['frames'] == FRAMES - 1 and r['processing_errors'] == 1
    assert r['counters']['processing_errors'] == 1
    assert _priors(r) > 0
    assert json.loads((tmp_path / 'out' / 'report.json').read_text())['processing_errors'] == 1


def test_a_truth_of_another_size_skips_the_comparison_not_the_replay(world, clean, tmp_path):
    with np.load(world['truth']) as z:
        truth = {k: z[k] for k in z.files}
    truth['depth'] = truth['depth'][:, :H // 2, :W // 2].copy()
    np.savez(tmp_path / 'truth.npz', **truth)
    r = _replay(world, world['bag'], tmp_path, truth=tmp_path / 'truth.npz')
    assert r['frames'] == FRAMES
    assert r['truth']['frames_matched'] == 0
    assert len(r['truth']['frames_skipped_size_mismatch']) == FRAMES


def test_a_camera_info_frame_id_mismatch_is_counted_not_refused(world, clean, tmp_path):
    def edit(topic, t, msg):
        if topic == '/right/camera_info':
            msg = copy.deepcopy(msg)
            msg.header.frame_id = 'some_other_camera'
        return [(t, msg)]

    _copy_bag(world['bag'], tmp_path / 'bag', edit)
    r = _replay(world, tmp_path / 'bag', tmp_path)
    assert r['frames'] == FRAMES
    assert r['input_problems'] == {'frame_id_mismatch': FRAMES}
    assert r['classes'] == clean['classes']


@pytest.mark.parametrize('topic,stray_ns', [('/gnss/fix', 0), ('/gnss/fix', 1_000_000_000),
                                            ('/imu/data', 1_000_000_000)])
def test_one_stray_pose_stamp_removes_no_prior(world, clean, tmp_path, topic, stray_ns):
    """One NavSatFix / Imu stamped 0 or in 1970, in the middle of the bag: before, replay fed
    every pose message first and the stray stamp reset the pose buffers, so EVERY frame lost
    its pose (FUSED + PRIOR -> 0, exit 0, no input problem). Now replay feeds pose inputs in
    bag order with the node's rule, and the pose source holds a stray stamp instead of
    resetting: the priors are those of the clean bag, and the stray message is counted."""
    mid = clean['stamps_ns']['first'] + 150_000_000
    done = []

    def edit(t_topic, t, msg):
        out = [(t, msg)]
        if t_topic == topic and not done and _stamp(msg) >= mid:
            stray = copy.deepcopy(msg)
            _set_stamp(stray, stray_ns)
            out.append((t, stray))
            done.append(t)
        return out

    _copy_bag(world['bag'], tmp_path / 'bag', edit)
    r = _replay(world, tmp_path / 'bag', tmp_path)
    assert done
    assert _priors(clean) > 0.2 * FRAMES * W * H
    assert r['classes'] == clean['classes']
    c = r['counters']
    if stray_ns == 0:
        assert r['input_problems'] == {'zero_stamp': 1}
    else:
        kind = 'gnss' if topic == '/gnss/fix' else 'imu'
        counted = sum(v for k, v in c.items() if k.startswith(f'pose_input.{kind}_'))
        assert counted == 1, c
        assert c.get('pose_input.time_jumps', 0) == 0
