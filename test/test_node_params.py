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


def _run_with(tmp_path, mutate) -> tuple[int, str]:
    doc = yaml.safe_load(installed_paths().params_file.read_text())
    mutate(doc['geo_depth_node']['ros__parameters'])
    path = tmp_path / 'params.yaml'
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run([str(installed_paths().executable), '--ros-args', '--params-file',
                          str(path)], env=isolated_ros_env(random.randint(100, 200)),
                         capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout + out.stderr


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
