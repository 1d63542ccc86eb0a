"""Fusion rules on analytic per-pixel inputs (every branch of the contract table)."""
from __future__ import annotations

import numpy as np
import pytest

from geo_depth_node.core.contract import Flag, Provenance
from geo_depth_node.core.fusion import RAY_HIT, RAY_SKY, FusionConfig, fuse
from geo_depth_node.core.pipeline import FrameResult

UNAVAILABLE = 3


def _frame(ranges, sigmas, prov, flags):
    h, w = len(ranges), 1
    ray = np.zeros((h, w, 3), np.float32)
    ray[..., 2] = 1.0
    r = np.array(ranges, np.float32).reshape(h, w)
    pts = ray * np.where(np.isfinite(r), r, np.nan)[..., None]
    res = FrameResult(depth=r.copy(), depth_sigma=np.array(sigmas, np.float32).reshape(h, w),
                      points=pts.astype(np.float32),
                      sigma=np.array(sigmas, np.float32).reshape(h, w),
                      provenance=np.array(prov, np.uint8).reshape(h, w),
                      flags=np.array(flags, np.uint16).reshape(h, w),
                      source=np.zeros((h, w), np.uint16),
                      disparity=np.zeros((h, w), np.float32),
                      sigma_disparity=np.zeros((h, w), np.float32), timings_ms={})
    return res, ray, np.ones((h, w))


M, N = int(Provenance.MEASURED), int(Provenance.NONE)
B, NM = int(Flag.BEYOND_RESOLUTION), int(Flag.NO_MATCH)


def test_every_rule():
    #            consistent  conflict  vs sky   no prior   beyond+hit  nomatch+sky  unavail  grazing
    res, ray, norm = _frame([10.0, 10.0, 10.0, 10.0, np.inf, np.nan, np.nan, np.inf],
                            [0.1, 0.1, 0.1, 0.1, np.nan, np.nan, np.nan, np.nan],
                            [M, M, M, M, N, N, N, N], [0, 0, 0, 0, B, NM, NM, B])
    pr = np.array([10.2, 14.0, np.nan, np.nan, 80.0, np.nan, np.nan, 300.0]).reshape(-1, 1)
    ps = np.array([0.2, 0.2, np.nan, np.nan, 4.0, np.nan, np.nan, 200.0]).reshape(-1, 1)
    st = np.array([RAY_HIT, RAY_HIT, RAY_SKY, UNAVAILABLE, RAY_HIT, RAY_SKY, UNAVAILABLE,
                   RAY_HIT]).reshape(-1, 1)
    src = np.full((8, 1), 7)
    counts = fuse(res, ray, norm, pr, ps, st, src, FusionConfig(gate_k=3.0), pose_degraded=True,
                  surface_model_ids=[7])
    p = res.provenance[:, 0]
    f = res.flags[:, 0]
    assert list(p) == [int(Provenance.FUSED), M, M, M, int(Provenance.PRIOR), N, N, N]
    # inverse-variance mean and sigma
    w1, w2 = 1 / 0.01, 1 / 0.04
    assert res.depth[0, 0] == pytest.approx((10 * w1 + 10.2 * w2) / (w1 + w2), rel=1e-6)
    assert res.sigma[0, 0] == pytest.approx(1 / np.sqrt(w1 + w2), rel=1e-6)
    assert f[0] & Flag.POSE_DEGRADED and f[0] & Flag.PRIOR_SURFACE_MODEL
    assert f[1] & Flag.PRIOR_CONFLICT and res.depth[1, 0] == 10.0  # stereo kept
    assert f[2] & Flag.PRIOR_CONFLICT
    assert f[3] & Flag.PRIOR_UNAVAILABLE and not f[3] & Flag.PRIOR_CONFLICT
    assert res.depth[4, 0] == pytest.approx(80.0) and res.sigma[4, 0] == pytest.approx(4.0)
    assert f[4] & Flag.BEYOND_RESOLUTION and res.source[4, 0] == 7  # reason kept, source named
    assert f[5] & Flag.SKY and f[5] & Flag.NO_MATCH
    assert f[6] & Flag.PRIOR_UNAVAILABLE
    assert f[7] & Flag.PRIOR_UNAVAILABLE and np.isinf(res.depth[7, 0])  # useless prior
    assert counts == {'fused': 1, 'prior': 1, 'conflict': 2, 'measured': 3,
                      'prior_ruled_out': 0}
    assert res.source[1, 0] == 0 and res.source[0, 0] == 7


def test_shape_mismatch_is_refused():
    res, ray, norm = _frame([1.0], [0.1], [M], [0])
    with pytest.raises(ValueError, match='prior_range'):
        fuse(res, ray, norm, np.zeros((2, 1)), np.zeros((1, 1)), np.zeros((1, 1)),
             np.zeros((1, 1)), FusionConfig())


def test_a_prior_that_only_agrees_because_it_is_vague_is_not_fused():
    """Stereo 10 +- 0.1 m, prior 12 +- 8 m: within the gate, but sigma/range 0.67 > 0.5: the
    point stays MEASURED (flag PRIOR_UNAVAILABLE), unchanged."""
    res, ray, norm = _frame([10.0], [0.1], [M], [0])
    fuse(res, ray, norm, np.array([[12.0]]), np.array([[8.0]]), np.array([[RAY_HIT]]),
         np.array([[1]]), FusionConfig(gate_k=3.0, max_prior_relative_sigma=0.5))
    assert res.provenance[0, 0] == M and res.depth[0, 0] == 10.0
    assert res.flags[0, 0] & Flag.PRIOR_UNAVAILABLE and not res.flags[0, 0] & Flag.PRIOR_CONFLICT


def test_height_gate_alone_does_not_fuse():
    """The optional height test passes but the ranges disagree by 10 sigma: conflict."""
    res, ray, norm = _frame([10.0], [0.1], [M], [0])
    fuse(res, ray, norm, np.array([[12.0]]), np.array([[0.2]]), np.array([[RAY_HIT]]),
         np.array([[1]]), FusionConfig(gate_k=3.0), consistent=np.array([[True]]))
    assert res.provenance[0, 0] == M and res.flags[0, 0] & Flag.PRIOR_CONFLICT


def test_weak_stereo_rules_out_a_prior_it_contradicts():
    """Beyond the stereo limit the disparity is still a (Gaussian) measurement: an object at
    40 m (d = 1.37 px, sigma_d 0.2 px) rules out the ground 80 m behind it (d = 0.69 px,
    3.4 sigma away); a prior at 45 m (d = 1.22 px, 0.8 sigma) is kept."""
    fb = 54.8  # f * B, px m
    res, ray, norm = _frame([np.inf, np.inf, np.nan], [np.nan] * 3, [N, N, N], [B, B, NM])
    d = np.array([[fb / 40], [fb / 40], [np.nan]])
    s_d = np.array([[0.2], [0.2], [np.nan]])
    pr = np.array([[80.0], [45.0], [80.0]])
    counts = fuse(res, ray, norm, pr, np.array([[5.0], [3.0], [5.0]]), np.full((3, 1), RAY_HIT),
                  np.ones((3, 1)), FusionConfig(gate_k=3.0), weak_stereo=(d, s_d, fb / pr))
    p, f = res.provenance[:, 0], res.flags[:, 0]
    assert p[0] == N and f[0] & Flag.PRIOR_CONFLICT and f[0] & Flag.BEYOND_RESOLUTION
    assert np.isnan(res.points[0, 0]).all()
    assert p[1] == int(Provenance.PRIOR) and res.depth[1, 0] == pytest.approx(45.0)
    assert p[2] == int(Provenance.PRIOR)  # no match: nothing to rule it out
    assert counts['prior_ruled_out'] == 1 and counts['prior'] == 2
    with pytest.raises(ValueError, match='prior_disparity'):
        fuse(res, ray, norm, pr, pr, np.full((3, 1), RAY_HIT), np.ones((3, 1)), FusionConfig(),
             weak_stereo=(d, s_d, np.zeros((2, 1))))


def test_fusion_drops_a_cloud_packed_before_it():
    """A result packed before the fusion (device path, compiled host triangulation) must not
    hand the stale cloud to pack_points afterwards."""
    from geo_depth_node.core.cloud import pack_points

    res, ray, norm = _frame([np.inf], [np.nan], [N], [B])
    res.packed = pack_points(res)
    fuse(res, ray, norm, np.array([[80.0]]), np.array([[4.0]]), np.array([[RAY_HIT]]),
         np.full((1, 1), 7), FusionConfig())
    assert res.packed is None
    cloud = pack_points(res)
    assert cloud['provenance'][0, 0] == Provenance.PRIOR and cloud['z'][0, 0] == pytest.approx(80.0)
    assert cloud['source'][0, 0] == 7
