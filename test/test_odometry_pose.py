"""pose.source odometry: the camera pose from a nav_msgs/Odometry estimator (base_link in a
local ENU frame at the fixed datum), against an analytic trajectory and the synthetic world.

Core only (no rclpy; one test starts the node executable when ROS 2 is there)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from geo_depth_node.core.contract import Flag, Provenance
from geo_depth_node.core.params import load_params_yaml, validate_params
from geo_depth_node.core.pipeline import DepthPipeline
from geo_depth_node.core.pose import (Extrinsics, OdometryPoseConfig, OdometryPoseSource,
                                      OdometrySample, gnss_fix_from_msg, imu_sample_from_msg,
                                      odometry_sample_from_msg, pose6_to_matrix,
                                      quat_xyzw_to_matrix, rpy_to_matrix, so3_exp, so3_log)
from geo_depth_node.synth.motion import matrix_to_quat_xyzw
from geo_depth_node.tools.prior_coverage import truth_cameras

T0 = 1_700_000_000 * 1_000_000_000
DT_NS = 20_000_000  # 50 Hz
DATUM = (49.0, 8.45, 160.0)
CAM = (1.2, 0.1, 1.5, -math.pi / 2, 0.0, -math.pi / 2 + 0.05)  # base_link -> left optical
EXT = Extrinsics(np.eye(4), pose6_to_matrix(CAM), np.eye(4))

# --- an analytic trajectory: a circle of radius RAD at OMEGA, heading along the tangent,
# --- rolling and pitching, going up and down
RAD, OMEGA = 20.0, 0.25  # m, rad/s (5 m/s)
H_AMP, H_FREQ = 0.5, 0.6  # m, rad/s
PITCH_AMP, PITCH_FREQ = 0.1, 0.6  # rad, rad/s
ROLL_AMP, ROLL_FREQ = 0.05, 0.4


def _true_pose(t: float) -> tuple[np.ndarray, np.ndarray]:
    """(R_enu_base (3, 3), p_enu_base (3,)) at t seconds."""
    p = np.array([RAD * math.cos(OMEGA * t), RAD * math.sin(OMEGA * t),
                  1.0 + H_AMP * math.sin(H_FREQ * t)])
    r = rpy_to_matrix(ROLL_AMP * math.cos(ROLL_FREQ * t), PITCH_AMP * math.sin(PITCH_FREQ * t),
                      OMEGA * t + math.pi / 2)
    return r, p


def _sample(stamp_ns: int, r: np.ndarray, p: np.ndarray, cov: np.ndarray | None = None,
            frame_id: str = 'map') -> OdometrySample:
    q = tuple(float(x) for x in matrix_to_quat_xyzw(r))
    return OdometrySample(stamp_ns, np.asarray(p, dtype=np.float64), q,
                          np.zeros((6, 6)) if cov is None else cov, frame_id, 'base_link')


def _source(**kw) -> OdometryPoseSource:
    return OdometryPoseSource(OdometryPoseConfig(datum=DATUM, **kw), EXT)


def _fill(src: OdometryPoseSource, t_end_s: float, cov: np.ndarray | None = None,
          skip: tuple[float, float] | None = None) -> None:
    """Samples of the analytic trajectory at 50 Hz on [0, t_end_s] (minus ``skip``)."""
    for k in range(int(round(t_end_s * 50)) + 1):
        t = k * DT_NS * 1e-9
        if skip is not None and skip[0] < t < skip[1]:
            continue
        r, p = _true_pose(t)
        src.add_odometry(_sample(T0 + k * DT_NS, r, p, cov))


def _stamp(t: float) -> int:
    return T0 + int(round(t * 1e9))


def _diag_cov(sigma_p: float, sigma_a: float) -> np.ndarray:
    return np.diag([sigma_p ** 2] * 3 + [sigma_a ** 2] * 3)


# ------------------------------------------------------------------------ interpolation
def _attitude_bound(t0: float, dt: float) -> float:
    """Bound of the slerp error on [t0, t0 + dt]: slerp is linear interpolation of
    phi(t) = log(R(t0)^T R(t)) (phi(t0) = 0), so |phi - phi_lin| <= max|phi''| dt^2 / 8; the
    rotation angle between exp(phi) and exp(phi_lin) is |phi - phi_lin| (1 + O(|phi|^2)),
    |phi| < 0.01 here. phi'' by central differences on the analytic trajectory (x1.5)."""
    r0 = _true_pose(t0)[0]

    def phi(t: float) -> np.ndarray:
        return so3_log(r0.T @ _true_pose(t)[0])

    h = 1e-3
    acc = max(float(np.linalg.norm(phi(t + h) - 2 * phi(t) + phi(t - h))) / h ** 2
              for t in np.linspace(t0, t0 + dt, 9))
    return 1.5 * acc * dt ** 2 / 8


def test_interpolated_pose_matches_the_analytic_trajectory():
    """Stamps between 50 Hz samples: position within max|p''| dt^2 / 8 (linear), attitude
    within the slerp bound; the camera follows through extrinsics.base_to_camera."""
    src = _source()
    _fill(src, 4.0, _diag_cov(0.05, 0.002))
    dt = DT_NS * 1e-9
    # |p''|: R omega^2 horizontally, H_AMP H_FREQ^2 vertically
    pos_bound = math.hypot(RAD * OMEGA ** 2, H_AMP * H_FREQ ** 2) * dt ** 2 / 8
    assert pos_bound < 1e-4  # tiny against the 0.1 m travelled between two samples
    rng = np.random.default_rng(4)
    worst_p = worst_a = 0.0
    for t in np.sort(rng.uniform(0.05, 3.95, 60)):
        pe, why = src.pose_at(_stamp(float(t)))
        assert why == 'ok' and pe is not None and not pe.degraded
        t = (_stamp(float(t)) - T0) * 1e-9  # the stamp actually asked for (ns rounding)
        r_true, p_true = _true_pose(t)
        k0 = math.floor(t / dt)
        att_bound = _attitude_bound(k0 * dt, dt)
        e_p = float(np.linalg.norm(pe.p_enu_base - p_true))
        e_a = float(np.linalg.norm(so3_log(r_true.T @ pe.R_enu_base)))
        assert e_p <= pos_bound + 1e-9, (t, e_p, pos_bound)
        assert e_a <= att_bound + 1e-9, (t, e_a, att_bound)
        # camera: p_cam = p_base + R t_bc, R_cam = R R_bc
        r_cam_true = r_true @ EXT.base_camera[:3, :3]
        p_cam_true = p_true + r_true @ EXT.base_camera[:3, 3]
        lever = float(np.linalg.norm(EXT.base_camera[:3, 3]))
        assert np.linalg.norm(pe.p_enu_cam - p_cam_true) <= pos_bound + lever * att_bound + 1e-9
        assert np.linalg.norm(so3_log(r_cam_true.T @ pe.R_enu_cam)) <= att_bound + 1e-9
        worst_p, worst_a = max(worst_p, e_p), max(worst_a, e_a)
    print(f'\nworst interpolation error: position {worst_p:.2e} m (bound {pos_bound:.2e}), '
          f'attitude {worst_a:.2e} rad')
    # exactly at a sample: the sample itself
    pe, _ = src.pose_at(T0 + 37 * DT_NS)
    r_true, p_true = _true_pose(37 * dt)
    np.testing.assert_allclose(pe.p_enu_base, p_true, atol=1e-12)
    np.testing.assert_allclose(pe.R_enu_base, r_true, atol=1e-12)


# ------------------------------------------------------------------------ covariance
def _spd6(seed: int) -> np.ndarray:
    """A full (correlated) 6x6 pose covariance: ~0.1 m and ~0.01 rad sigmas."""
    rng = np.random.default_rng(seed)
    scale = np.diag([0.1, 0.1, 0.15, 0.01, 0.01, 0.02])
    a = rng.normal(size=(6, 6))
    c = a @ a.T / 6 + 0.5 * np.eye(6)
    return scale @ c @ scale


def test_pose_covariance_is_the_message_covariance():
    cov = _spd6(1)
    src = _source()
    _fill(src, 1.0, cov)
    pe, why = src.pose_at(_stamp(0.513))
    assert why == 'ok' and not pe.degraded and pe.reasons == []
    pc = pe.pose_covariance()
    np.testing.assert_allclose(pc.position, cov[:3, :3], rtol=1e-12)
    np.testing.assert_allclose(pc.attitude, cov[3:, 3:], rtol=1e-12)
    np.testing.assert_allclose(pe.position_cov, cov[:3, :3], rtol=1e-12)
    np.testing.assert_allclose(pe.rpy_sigma, np.sqrt(np.diag(cov[3:, 3:])), rtol=1e-12)
    # two different covariances: interpolated linearly (weight 0.25 here)
    src = _source()
    c0, c1 = _spd6(2), _spd6(3)
    for k, c in ((0, c0), (1, c1)):
        r, p = _true_pose(k * 0.02)
        src.add_odometry(_sample(T0 + k * DT_NS, r, p, c))
    pc = src.pose_at(T0 + DT_NS // 4)[0].pose_covariance()
    np.testing.assert_allclose(pc.position, 0.75 * c0[:3, :3] + 0.25 * c1[:3, :3], rtol=1e-12)
    np.testing.assert_allclose(pc.attitude, 0.75 * c0[3:, 3:] + 0.25 * c1[3:, 3:], rtol=1e-12)


def _not_pd() -> np.ndarray:
    c = _diag_cov(0.1, 0.01)
    c[0, 1] = c[1, 0] = 0.05  # |cov_xy| > sigma_x sigma_y
    c[3, 4] = c[4, 3] = 0.001
    return c


@pytest.mark.parametrize('cov', [np.zeros((6, 6)), np.full((6, 6), np.nan), _not_pd()],
                         ids=['zero', 'nan', 'not_pd'])
def test_unusable_covariance_gives_the_default_sigmas_and_a_degraded_pose(cov):
    src = _source(default_position_sigma_m=2.0, default_attitude_sigma_rad=0.03)
    _fill(src, 0.2, cov)
    pe, why = src.pose_at(_stamp(0.11))
    assert why == 'ok' and pe.degraded
    assert any('position covariance unknown' in r for r in pe.reasons)
    assert any('attitude covariance unknown' in r for r in pe.reasons)
    pc = pe.pose_covariance()
    np.testing.assert_allclose(pc.position, 4.0 * np.eye(3))
    np.testing.assert_allclose(pc.attitude, 0.03 ** 2 * np.eye(3))
    np.testing.assert_allclose(pe.rpy_sigma, [0.03] * 3)
    assert src.counts['odometry_unknown_cov'] == 11


def test_only_the_unusable_block_is_replaced():
    cov = _diag_cov(0.2, 0.0)  # a 2D estimator that says nothing about its attitude
    src = _source(default_attitude_sigma_rad=0.04)
    _fill(src, 0.2, cov)
    pe, _ = src.pose_at(_stamp(0.05))
    assert pe.degraded and pe.reasons == ['odometry attitude covariance unknown: default '
                                          'sigma used']
    np.testing.assert_allclose(pe.position_cov, 0.04 * np.eye(3))
    np.testing.assert_allclose(pe.attitude_cov, 0.0016 * np.eye(3))


# ------------------------------------------------------------------------ no pose
def test_no_pose_outside_the_data_or_across_a_gap():
    src = _source(max_gap_s=0.25)
    assert src.pose_at(_stamp(0.5)) == (None, 'odometry: no data yet')
    _fill(src, 3.0, skip=(1.0, 2.0))  # samples on [0, 1] and [2, 3]: a 1 s gap
    pe, why = src.pose_at(T0 - 1)
    assert pe is None and why == 'odometry: before the buffered data'
    pe, why = src.pose_at(_stamp(3.001))
    # the pipeline waits (pose.wait_s) while the reason says 'after the newest'
    assert pe is None and why == 'odometry: after the newest data (not arrived yet?)'
    pe, why = src.pose_at(_stamp(1.5))
    assert pe is None and why == 'odometry: gap of 1.00 s'
    assert src.pose_at(_stamp(0.999))[0] is not None and src.pose_at(_stamp(2.001))[0] is not None


def test_bad_and_out_of_order_samples_are_counted_and_dropped():
    src = _source()
    r, p = _true_pose(0.0)
    src.add_odometry(_sample(T0, r, p))
    src.add_odometry(_sample(T0, r, p))  # same stamp again
    src.add_odometry(_sample(T0 - DT_NS, r, p))  # older
    # the next sample: the two late ones are held until it shows they were not a time jump
    src.add_odometry(_sample(T0 + DT_NS, r, p))
    t2 = T0 + 2 * DT_NS
    bad_q = dataclasses.replace(_sample(t2, r, p), orientation_xyzw=(0.0, 0.0, 0.0, 2.0))
    nan_p = _sample(t2, r, np.array([np.nan, 0.0, 0.0]))
    short_cov = dataclasses.replace(_sample(t2, r, p), covariance=np.zeros(35))
    for s in (bad_q, nan_p, short_cov):
        src.add_odometry(s)
    assert src.counts['odometry_out_of_order'] == 2 and src.counts['odometry_bad'] == 3
    assert src.pose_at(T0 + 3 * DT_NS // 2)[1].endswith('after the newest data (not arrived yet?)')


def test_header_frame_other_than_the_enu_frame_id_is_counted():
    src = _source(frame_id='map')
    r, p = _true_pose(0.0)
    src.add_odometry(_sample(T0, r, p, frame_id='odom'))
    src.add_odometry(_sample(T0 + DT_NS, r, p, frame_id='map'))
    assert src.counts['odometry_frame_mismatch'] == 1
    assert src.pose_at(T0)[0] is not None  # used all the same (a warning, not a refusal)


def _odom_msg(q=(0.0, 0.0, 0.0, 1.0), pos=(1.0, 2.0, 3.0), cov=None):
    ns = SimpleNamespace
    return ns(header=ns(stamp=ns(sec=1_700_000_001, nanosec=500), frame_id='map'),
              child_frame_id='base_link',
              pose=ns(pose=ns(position=ns(x=pos[0], y=pos[1], z=pos[2]),
                              orientation=ns(x=q[0], y=q[1], z=q[2], w=q[3])),
                      covariance=list(range(36)) if cov is None else cov))


def test_odometry_sample_from_msg():
    s = odometry_sample_from_msg(_odom_msg(q=(0.0, 0.0, math.sin(0.3), math.cos(0.3))))
    assert s.stamp_ns == 1_700_000_001_000_000_500
    assert s.frame_id == 'map' and s.child_frame_id == 'base_link'
    np.testing.assert_array_equal(s.position, [1.0, 2.0, 3.0])
    assert s.covariance.shape == (6, 6) and s.covariance[1, 0] == 6.0  # row-major
    assert s.orientation_xyzw == pytest.approx((0.0, 0.0, math.sin(0.3), math.cos(0.3)))
    odometry_sample_from_msg(_odom_msg(q=(0.0, 0.0, 0.0, 1.0 + 1e-5)))  # float noise: fine
    for kw, match in (({'q': (0.0, 0.0, 0.0, 2.0)}, 'not a unit quaternion'),
                      ({'q': (0.0, 0.0, 0.0, 0.0)}, 'not a unit quaternion'),
                      ({'q': (np.nan, 0.0, 0.0, 1.0)}, 'not a unit quaternion'),
                      ({'pos': (np.inf, 0.0, 0.0)}, 'not finite'),
                      ({'cov': [0.0] * 35}, '36')):
        with pytest.raises(ValueError, match=match):
            odometry_sample_from_msg(_odom_msg(**kw))


# ------------------------------------------------------------------------ parameters
def test_odometry_needs_a_fixed_datum(tmp_path):
    with pytest.raises(ValueError, match='georef.datum_mode must be fixed'):
        validate_params({'pose.source': 'odometry'})
    path = tmp_path / 'params.yaml'
    path.write_text('geo_depth_node:\n  ros__parameters:\n    pose:\n      source: odometry\n'
                    '    georef:\n      datum_mode: first_fix\n')
    with pytest.raises(ValueError, match="pose.source is odometry: georef.datum_mode must be "
                                         "fixed .* got 'first_fix'"):
        load_params_yaml(str(path))
    ok = validate_params({'pose.source': 'odometry', 'georef.datum_mode': 'fixed'})
    assert ok['pose.source'] == 'odometry'


def test_node_refuses_odometry_without_a_fixed_datum(tmp_path):
    """The node executable exits with code 2 and says why (ROS 2 needed)."""
    pytest.importorskip('rclpy', reason='rclpy not available (no ROS 2 here)')
    pytest.importorskip('geo_depth_node.msg', reason='custom messages not built')
    import random
    import subprocess

    import yaml

    from geo_depth_node.ros.harness import installed_paths, isolated_ros_env

    doc = yaml.safe_load(installed_paths().params_file.read_text())
    p = doc['/**/geo_depth_node']['ros__parameters']
    p['pose']['source'] = 'odometry'
    p['georef']['datum_mode'] = 'first_fix'
    path = tmp_path / 'params.yaml'
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run([str(installed_paths().executable), '--ros-args', '--params-file',
                          str(path)], env=isolated_ros_env(random.randint(100, 200)),
                         capture_output=True, text=True, timeout=60)
    log = out.stdout + out.stderr
    assert out.returncode == 2, log
    assert 'georef.datum_mode must be fixed' in log, log


# ------------------------------------------------------------------------ synthetic world
W, H = 256, 192
SIGMA_P, SIGMA_A = 0.1, 0.003  # stated (and simulated) odometry noise, m and rad


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    from geo_depth_node.synth.config import SynthConfig
    from geo_depth_node.synth.generate import generate_world

    return generate_world(tmp_path_factory.mktemp('odom_world'),
                          SynthConfig(width=W, height=H, frames=1, seed=0), progress=False)


def _odometry_params(info: dict) -> dict:
    p = load_params_yaml(info['params'])
    p['pose.source'] = 'odometry'
    p['stereo.num_disparities'] = 64
    return p


def test_end_to_end_with_noisy_odometry(world):
    """The world's true odometry (map = ENU at the datum -> base_link) with independent noise
    of a stated covariance (0.1 m, 0.003 rad per axis) written into the messages: the frame is
    georeferenced within a few sigma and the PRIOR points on the terrain are within 2 sigma of
    the true range for > 90 %. IMU/GNSS fed to an odometry pipeline are ignored and counted."""
    from rosbags.highlevel import AnyReader

    from geo_depth_node.synth.generate import load_truth

    truth = load_truth(world['truth'])
    pipe = DepthPipeline(_odometry_params(world))
    assert type(pipe.georef.pose).__name__ == 'OdometryPoseSource'
    rng = np.random.default_rng(7)
    cov = _diag_cov(SIGMA_P, SIGMA_A)
    frames: dict[int, dict] = {}
    n_odom = n_other = 0
    with AnyReader([Path(world['bag'])]) as r:
        for c, t, raw in r.messages():
            m = r.deserialize(raw, c.msgtype)
            if c.topic == '/ground_truth/odometry':
                s = odometry_sample_from_msg(m)
                r_noisy = so3_exp(rng.normal(0.0, SIGMA_A, 3)) @ quat_xyzw_to_matrix(s.orientation_xyzw)
                s = dataclasses.replace(
                    s, position=s.position + rng.normal(0.0, SIGMA_P, 3),
                    orientation_xyzw=tuple(float(x) for x in matrix_to_quat_xyzw(r_noisy)),
                    covariance=cov)
                pipe.add_odometry(s)
                n_odom += 1
            elif c.topic == '/imu/data':
                pipe.add_imu(imu_sample_from_msg(m))
                n_other += 1
            elif c.topic == '/gnss/fix':
                pipe.add_gnss(gnss_fix_from_msg(m))
                n_other += 1
            elif c.topic.endswith('image_rect'):
                frames.setdefault(t, {})[c.topic] = m.data.reshape(m.height, m.width)
    counts = pipe.georef.pose.counts
    assert n_odom > 50 and counts['imu_ignored'] + counts['gnss_ignored'] == n_other > 0
    assert counts['odometry_bad'] == counts['odometry_out_of_order'] == 0
    lm, rm, norm = truth_cameras(truth)
    st = int(truth['stamps_ns'][0])
    f = frames[st]
    res = pipe.process(f['/left/image_rect'], f['/right/image_rect'], lm, rm, stamp_ns=st)

    assert res.pose_status == 'ok' and not res.pose_degraded
    t_true = truth['T_enu_left'][0]
    d = res.T_enu_cam[:3, 3] - t_true[:3, 3]
    # camera centre: base position noise + lever arm x attitude noise (< 3 m x 0.003 rad)
    assert np.all(np.abs(d) < 4 * SIGMA_P), d
    assert np.linalg.norm(so3_log(t_true[:3, :3].T @ res.T_enu_cam[:3, :3])) < 4 * SIGMA_A * 2
    pose, _ = pipe.georef.pose.pose_at(st)
    np.testing.assert_allclose(pose.pose_covariance().position, cov[:3, :3], rtol=1e-12)
    np.testing.assert_allclose(pose.pose_covariance().attitude, cov[3:, 3:], rtol=1e-12)

    r_true = truth['depth'][0] * norm
    prior = (res.provenance == Provenance.PRIOR) & (truth['surface'][0] == 1) \
        & np.isfinite(r_true)
    e = np.abs(np.linalg.norm(res.points[prior], axis=-1) - r_true[prior])
    within2 = float(np.mean(e <= 2 * res.sigma[prior]))
    print(f'\nodometry pose: camera off by {d.round(3)} m; PRIOR on terrain {int(prior.sum())} '
          f'points, {100 * within2:.1f} % within 2 sigma')
    assert prior.sum() > 2000
    assert within2 > 0.9
    assert not np.any(res.flags[res.provenance == Provenance.PRIOR] & Flag.POSE_DEGRADED)


def test_replay_feeds_odometry_from_the_remapped_topic(world, tmp_path):
    """geo-depth replay with pose.source odometry reads nav_msgs/Odometry from the topic the
    node would subscribe (``odom``, remapped with --topic odom:=...), nothing else."""
    from geo_depth_node.tools.replay import replay_bag

    params = _odometry_params(world)
    with pytest.raises(ValueError, match=r'no nav_msgs/msg/Odometry message on /odom.*'
                                         r'/ground_truth/odometry'):
        replay_bag(world['bag'], params, tmp_path / 'a', pictures=0)
    stereo = {f'{side}_{kind}': f'/{side}/{topic}' for side in ('left', 'right')
              for kind, topic in (('image', 'image_rect'), ('info', 'camera_info'))}
    with pytest.raises(ValueError, match='on /robot/odom'):  # the namespace applies to odom
        replay_bag(world['bag'], params, tmp_path / 'b', pictures=0, topic_prefix='/robot',
                   topics=stereo)
    # the truth odometry carries an all-zero covariance: the default sigmas (small ones here,
    # so that priors stay usable) and POSE_DEGRADED on the priors
    params.update({'pose.odometry_default_position_sigma_m': SIGMA_P,
                   'pose.odometry_default_attitude_sigma_rad': SIGMA_A})
    rep = replay_bag(world['bag'], params, tmp_path / 'c', pictures=0,
                     topics={'odom': '/ground_truth/odometry'})
    assert rep['frames'] == 1 and rep['input_topics']['odom'] == '/ground_truth/odometry'
    assert 'odometry pose' in rep['cloud']['frame']  # georeferenced with the odometry
    n_prior = rep['classes']['PRIOR']['count'] + rep['classes']['FUSED']['count']
    assert n_prior > 100 and rep['flags']['POSE_DEGRADED'] >= n_prior


def test_live_node_georeferences_from_odometry(world, tmp_path):
    """The node executable with pose.source odometry subscribes ``odom`` (remapped here to the
    world's /ground_truth/odometry), georeferences the frame (PRIOR/FUSED points; the truth
    odometry has an all-zero covariance: default sigmas, POSE_DEGRADED), and counts a bad
    Odometry message on /diagnostics instead of crashing."""
    pytest.importorskip('rclpy', reason='rclpy not available (no ROS 2 here)')
    pytest.importorskip('geo_depth_node.msg', reason='custom messages not built')
    import random

    import yaml
    from nav_msgs.msg import Odometry

    from geo_depth_node.core.cloud import unpack_points
    from geo_depth_node.ros.harness import BagReplayer, NodeProcess, isolated_ros_env

    doc = yaml.safe_load(Path(world['params']).read_text())
    doc['/**/geo_depth_node']['ros__parameters'].setdefault('pose', {}).update({
        'source': 'odometry', 'odometry_default_position_sigma_m': SIGMA_P,
        'odometry_default_attitude_sigma_rad': SIGMA_A})  # small: the priors stay usable
    params = tmp_path / 'params.yaml'
    params.write_text(yaml.safe_dump(doc))
    domain = random.randint(100, 200)
    with NodeProcess(isolated_ros_env(domain), params_file=str(params),
                     extra_ros_args=('-r', 'odom:=/ground_truth/odometry'),
                     log_path=tmp_path / 'node.log') as node:
        rep = BagReplayer(domain)
        try:
            sent = rep.replay(world['bag'], frame_timeout=60.0, discovery_timeout=60.0,
                              wait_topics={'/ground_truth/odometry'})
            assert rep.wait_for(lambda: all(s in rep.received.points for s in sent), 30.0), \
                node.log_text()
            bad = Odometry()
            bad.header.stamp.sec = 1_700_000_100
            bad.pose.pose.orientation.w = 2.0  # not a unit quaternion
            rep.publisher('/ground_truth/odometry', 'nav_msgs/msg/Odometry').publish(bad)

            def diag() -> dict | None:
                for arr in reversed(rep.received.diagnostics):
                    for st in arr.status:
                        kv = {k.key: k.value for k in st.values}
                        if int(kv.get('input_problem.bad_odometry', 0)) >= 1:
                            return kv
                return None

            assert rep.wait_for(lambda: diag() is not None, 15.0), node.log_text()
            kv = diag()
            cloud = unpack_points(rep.received.points[sent[0]].data,
                                  rep.received.points[sent[0]].height,
                                  rep.received.points[sent[0]].width)
        finally:
            rep.close()
        assert node.alive(), node.log_text()
    assert int(kv['pose.ok']) == len(sent) and int(kv['pose.degraded']) == len(sent)
    assert int(kv['pose_input.odometry_unknown_cov']) > 0
    assert 'ground_truth/odometry (nav_msgs/Odometry' in node.log_text()
    prov = cloud['provenance']
    print(f'\nlive node, odometry pose: {[int((prov == c).sum()) for c in Provenance]} points '
          'NONE/MEASURED/FUSED/PRIOR')
    with_prior = (prov == Provenance.PRIOR) | (prov == Provenance.FUSED)
    assert with_prior.sum() > 100
    assert np.all(cloud['flags'][with_prior] & Flag.POSE_DEGRADED)
