"""The node refuses a bad params file at start-up (exit code 2, the bad name in the log),
instead of silently ignoring a typo or running with an out-of-range value."""
from __future__ import annotations

import random
import subprocess

import pytest
import yaml

pytest.importorskip('rclpy', reason='rclpy not available (no ROS 2 here)')
pytest.importorskip('geo_depth_node.msg', reason='custom messages not built (run make build)')

from geo_depth_node.ros.harness import installed_paths, isolated_ros_env  # noqa: E402


def _run_with(tmp_path, mutate, namespace: str | None = None) -> tuple[int, str]:
    doc = yaml.safe_load(installed_paths().params_file.read_text())
    mutate(doc['/**/geo_depth_node']['ros__parameters'])
    path = tmp_path / 'params.yaml'
    path.write_text(yaml.safe_dump(doc))
    ns = ['-r', f'__ns:={namespace}'] if namespace else []
    out = subprocess.run([str(installed_paths().executable), '--ros-args', '--params-file',
                          str(path), *ns], env=isolated_ros_env(random.randint(100, 200)),
                         capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout + out.stderr


def test_params_file_applies_in_any_namespace_and_ros_own_keys_pass(tmp_path):
    """The installed params file's section (``/**/geo_depth_node``) reaches the node under a
    launch namespace (a plain ``geo_depth_node:`` key would be silently ignored there): a typo
    in it is refused under /stereo too. ROS's own per-node parameters are not typos."""
    def mutate(p):
        p['stereo'].update(num_disparitys=64)
        p['start_type_description_service'] = True
        p['use_sim_time'] = False

    rc, log = _run_with(tmp_path, mutate, namespace='/stereo')
    assert rc == 2, log
    assert 'stereo.num_disparitys' in log and 'start_type_description_service' not in log, log


@pytest.mark.parametrize('mutate,expect', [
    (lambda p: p['stereo'].update(num_disparitys=64), 'stereo.num_disparitys'),
    (lambda p: p['limit'].update(max_relative_sigma=5.0), 'max_relative_sigma'),
    (lambda p: p['stereo'].update(num_disparities=100), 'num_disparities'),
    (lambda p: p['sync'].update(mode='fuzzy'), 'fuzzy'),
])
def test_bad_params_file_is_refused(tmp_path, mutate, expect):
    rc, log = _run_with(tmp_path, mutate)
    assert rc == 2, log
    assert expect in log, log


def _with_dem(p: dict, **source) -> None:
    p['dem'] = {'sources': 'survey', 'source': {'survey': {
        'id': 1, 'path': '/nonexistent/dem.tif', 'kind': 'dem', 'vertical_datum': 'egm96',
        'sigma_v_m': 0.5, 'sigma_h_m': 1.0, 'survey_date': '2021-06-15', 'licence': 'x',
        'priority': 0, **source}}}


@pytest.mark.parametrize('mutate,expect', [
    (lambda p: _with_dem(p), 'no file matches'),
    (lambda p: _with_dem(p, vertical_datum='navd88x'), 'navd88x'),
    (lambda p: _with_dem(p, sigma_v_m=-1.0), 'sigma_v_m'),
    (lambda p: (_with_dem(p), p['dem'].update(sources='other')), 'not listed in dem.sources'),
    (lambda p: p['extrinsics'].update(base_to_imu=[0.0, 1.0]), 'extrinsics.base_to_imu'),
    (lambda p: p['georef'].update(datum_mode='gps'), 'datum_mode'),
])
def test_bad_georeferencing_params_are_refused(tmp_path, mutate, expect):
    rc, log = _run_with(tmp_path, mutate)
    assert rc == 2, log
    assert expect in log, log


def test_synth_world_params_start_the_node_and_fill_the_legend(tmp_path):
    """The params file written by `geo-depth synth` is accepted; the legend lists the DEM."""
    from geo_depth_node.ros.harness import BagReplayer, NodeProcess
    from geo_depth_node.synth.config import SynthConfig
    from geo_depth_node.synth.generate import generate_world

    info = generate_world(tmp_path / 'w', SynthConfig(frames=1, width=96, height=64,
                                                      dem_survey_date='2019-04-01'),
                          progress=False)
    domain = random.randint(100, 200)
    with NodeProcess(isolated_ros_env(domain), params_file=info['params'],
                     log_path=tmp_path / 'node.log') as node:
        rep = BagReplayer(domain)
        try:
            assert rep.wait_for(lambda: len(rep.received.legends) >= 1, 30.0), node.log_text()
            legend = rep.received.legends[-1]
        finally:
            rep.close()
        assert node.alive(), node.log_text()
    (src,) = legend.sources
    assert src.id == 1 and src.name == 'synth' and src.uri.endswith('dem.tif')
    assert src.crs == 'EPSG:32632' and src.vertical_datum == 'EGM96'
    assert src.vertical_sigma_m == pytest.approx(0.5) and src.survey_date == '2019-04-01'
    assert src.kind == src.KIND_DEM_BARE_EARTH
