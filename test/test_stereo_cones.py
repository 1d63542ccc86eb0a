"""Stereo against ground truth on Middlebury 2003 Cones (quarter size, real images).

Cones has no camera calibration, so the check is in disparity: a nominal rig
(f = 1000 px, B = 0.1 m) turns disparity into depth, and the physical limit is
opened (max_relative_sigma = 1) so every stereo match counts as MEASURED.
Bounds were measured on this data set (see the numbers printed with -s):
bad-2.0 3.9 %, density 0.80 of ground-truth pixels with lr_check; OpenCV SGBM
with its own checks on the same pair: bad-2.0 4.6 %, density 0.81.
"""
from __future__ import annotations

import numpy as np
import pytest

from geo_depth_node.core.camera import CameraModel
from geo_depth_node.core.contract import Flag, Provenance
from geo_depth_node.core.pipeline import DepthPipeline


@pytest.fixture(scope='module')
def cones(shared_data):
    d = shared_data / 'middlebury2003_cones'
    if not d.is_dir():
        pytest.skip(f'Middlebury Cones not found at {d} (shared data absent)')
    import cv2
    import rasterio

    left = cv2.imread(str(d / 'tests_pandora_left.png'), cv2.IMREAD_GRAYSCALE)
    right = cv2.imread(str(d / 'tests_pandora_right.png'), cv2.IMREAD_GRAYSCALE)
    with rasterio.Env(CPL_LOG='/dev/null'):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with rasterio.open(d / 'notebooks_data_Cones_LEFT_GT.tif') as f:
                gt = f.read(1).astype(np.float32)
    occ = cv2.imread(str(d / 'tests_pandora_occlusion.png'), cv2.IMREAD_GRAYSCALE)
    return left, right, gt, occ


def _models(w, h, f=1000.0, b=0.1):
    k = [f, 0, w / 2, 0, f, h / 2, 0, 0, 1]
    left = CameraModel.from_arrays(w, h, k, [0] * 5, np.eye(3), [f, 0, w / 2, 0, 0, f, h / 2, 0,
                                                                 0, 0, 1, 0])
    right = CameraModel.from_arrays(w, h, k, [0] * 5, np.eye(3), [f, 0, w / 2, -f * b, 0, f, h / 2,
                                                                  0, 0, 0, 1, 0])
    return left, right


def _score(result, gt):
    measured = (result.provenance == Provenance.MEASURED) & (gt > 0)
    err = np.abs(result.disparity - gt)[measured]
    return float((err > 2.0).mean()), float(measured.sum() / (gt > 0).sum()), measured


def test_cones_bad2_and_density(cones):
    left, right, gt, _ = cones
    h, w = left.shape
    lm, rm = _models(w, h)
    pl = DepthPipeline({'stereo.num_disparities': 64, 'limit.max_relative_sigma': 1.0})
    r = pl.process(left, right, lm, rm)
    bad2, density, measured = _score(r, gt)
    print(f'\nCones (lr_check): bad-2.0 {100 * bad2:.2f} % of MEASURED, density {density:.3f}')
    assert bad2 < 0.045, bad2
    assert density > 0.78, density
    # every MEASURED pixel has a finite sigma, every NONE pixel a reason
    assert np.all(np.isfinite(r.sigma[r.provenance == Provenance.MEASURED]))
    none = r.provenance == Provenance.NONE
    assert np.all(r.flags[none] != 0)


def test_cones_lr_check_flags_occlusions(cones):
    """LR_INCONSISTENT concentrates on the pixels Middlebury marks occluded, and the LR check
    lowers bad-2.0. (It cannot catch everything: where SGBM fattens a foreground edge, both
    passes agree on the wrong disparity; measured here: ~20 % of occluded mismatches caught.)"""
    left, right, gt, occ = cones
    h, w = left.shape
    lm, rm = _models(w, h)
    base = {'stereo.num_disparities': 64, 'limit.max_relative_sigma': 1.0}
    with_lr = DepthPipeline(dict(base, **{'stereo.lr_check': True})).process(left, right, lm, rm)
    no_lr = DepthPipeline(dict(base, **{'stereo.lr_check': False})).process(left, right, lm, rm)
    inside = (np.arange(w)[None, :] >= 64) & (gt > 0)
    occluded = (occ == 0) & inside  # 0 = occluded in the Pandora mask
    visible = (occ > 0) & inside
    assert occluded.sum() > 1000
    lr = (with_lr.flags & Flag.LR_INCONSISTENT) != 0
    rate_occ, rate_vis = lr[occluded].mean(), lr[visible].mean()
    bad_lr, bad_no = _score(with_lr, gt)[0], _score(no_lr, gt)[0]
    print(f'\nCones LR_INCONSISTENT: {100 * rate_occ:.1f} % of occluded vs {100 * rate_vis:.1f} % '
          f'of visible pixels; bad-2.0 {100 * bad_lr:.2f} % with LR, {100 * bad_no:.2f} % without')
    assert rate_occ > 5 * rate_vis
    assert bad_lr < bad_no - 0.003


def test_cones_border_band_is_out_of_view(cones):
    left, right, gt, _ = cones
    h, w = left.shape
    lm, rm = _models(w, h)
    r = DepthPipeline({'stereo.num_disparities': 64}).process(left, right, lm, rm)
    band = r.flags[:, :20]
    assert np.all((band & Flag.OUT_OF_VIEW) != 0)
    assert np.all(r.provenance[:, :20] == Provenance.NONE)
