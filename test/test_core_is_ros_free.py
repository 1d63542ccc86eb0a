"""The core must run without ROS: it never imports rclpy or message modules."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / 'geo_depth_node' / 'core'
FORBIDDEN = ('rclpy', 'rosidl', 'std_msgs', 'sensor_msgs', 'geometry_msgs', 'nav_msgs',
             'diagnostic_msgs', 'visualization_msgs', 'builtin_interfaces', 'rcl_interfaces',
             'geo_depth_node.msg', 'geo_depth_node.ros', 'message_filters', 'cv_bridge', 'tf2')


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against geo_depth_node.core
                base = ['geo_depth_node', 'core'][:max(0, 2 - (node.level - 1))]
                names.append('.'.join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module or '')
    return names


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + '.') for f in FORBIDDEN)


def test_core_sources_import_no_ros():
    files = sorted(CORE.glob('*.py'))
    assert len(files) >= 8, files
    bad = {str(f.relative_to(REPO)): [n for n in _imports(f) if _forbidden(n)] for f in files}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f'core modules import ROS: {bad}'


def test_forbidden_detector_detects(tmp_path):
    """The checker itself must flag ROS imports (guards against a test that cannot fail)."""
    probe = tmp_path / 'probe.py'
    probe.write_text('import rclpy\nfrom sensor_msgs.msg import Image\nfrom ..ros import node\n')
    found = [n for n in _imports(probe) if _forbidden(n)]
    assert 'rclpy' in found and 'sensor_msgs.msg' in found and 'geo_depth_node.ros' in found


def test_core_imports_in_a_process_without_ros():
    """Import every core (and synthetic-world) module in a fresh interpreter that cannot see
    ROS at all."""
    code = (
        'import sys, importlib, pkgutil\n'
        'class Block:\n'
        '    def find_spec(self, name, path=None, target=None):\n'
        f'        if any(name == f or name.startswith(f + ".") for f in {FORBIDDEN!r}):\n'
        '            raise ImportError("ROS import from the core: " + name)\n'
        'sys.meta_path.insert(0, Block())\n'
        'import geo_depth_node.core as core\n'
        'mods = [m.name for m in pkgutil.iter_modules(core.__path__)]\n'
        'for m in mods: importlib.import_module("geo_depth_node.core." + m)\n'
        'import geo_depth_node.synth as synth\n'
        'for m in pkgutil.iter_modules(synth.__path__):\n'
        '    importlib.import_module("geo_depth_node.synth." + m.name)\n'
        'from geo_depth_node.core.pipeline import DepthPipeline\n'
        'DepthPipeline()\n'
        'print(len(mods))\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip().splitlines()[-1]) >= 8
