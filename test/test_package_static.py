"""Static checks of the package: messages vs the core contract, the params YAML vs
the declared parameters, and the launch file (launch_ros does not exist here)."""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from geo_depth_node.core.contract import Flag, Provenance
from geo_depth_node.core.params import (PARAMETERS, PARAMS_BY_NAME, flatten, load_params_yaml,
                                        validate_params)

REPO = Path(__file__).resolve().parents[1]


def _msg_constants(path: Path) -> dict[str, int]:
    consts = {}
    for line in path.read_text().splitlines():
        m = re.match(r'^\s*u?int\d+\s+([A-Z_][A-Z0-9_]*)\s*=\s*(\d+)', line)
        if m:
            consts[m.group(1)] = int(m.group(2))
    return consts


def test_msg_constants_match_core_contract():
    consts = _msg_constants(REPO / 'msg' / 'ProvenanceLegend.msg')
    for p in Provenance:
        assert consts[p.name] == int(p), p
    for f in Flag:
        assert consts[f.name] == int(f), f
    assert set(consts) == {p.name for p in Provenance} | {f.name for f in Flag}


def test_generated_message_matches_core_contract():
    msg = pytest.importorskip('geo_depth_node.msg', reason='messages not built (colcon)')
    legend = msg.ProvenanceLegend
    for p in Provenance:
        assert getattr(legend, p.name) == int(p)
    for f in Flag:
        assert getattr(legend, f.name) == int(f)
    src = msg.PriorSource
    assert src.KIND_DEM_BARE_EARTH == 0 and src.KIND_SURFACE_MODEL == 1
    s = src(id=7, vertical_sigma_m=2.5, survey_date='2000-02-11')
    assert s.id == 7 and s.vertical_sigma_m == pytest.approx(2.5)


def test_installed_package_is_the_one_imported():
    """The colcon install (with generated msg/) must shadow the source tree."""
    msg = pytest.importorskip('geo_depth_node.msg', reason='messages not built (colcon)')
    import geo_depth_node
    assert Path(msg.__file__).parent.parent == Path(geo_depth_node.__file__).parent
    assert not (REPO / 'geo_depth_node' / 'msg').exists(), 'never create geo_depth_node/msg/ in src'
    assert not (REPO / 'test' / '__init__.py').exists()


def test_params_yaml_mirrors_declared_parameters():
    path = REPO / 'config' / 'geo_depth.yaml'
    doc = yaml.safe_load(path.read_text())
    flat = flatten(doc['/**/geo_depth_node']['ros__parameters'])
    assert set(flat) == set(PARAMS_BY_NAME), set(flat) ^ set(PARAMS_BY_NAME)
    for name, value in flat.items():
        spec = PARAMS_BY_NAME[name]
        if isinstance(spec.default, tuple):  # YAML sequence <-> fixed-length double array
            assert isinstance(value, list) and all(isinstance(v, float) for v in value), name
            value = tuple(value)
        else:
            assert type(value) is type(spec.default), name
        assert value == spec.default, f'{name}: YAML {value!r} != default {spec.default!r}'
    # every entry is documented right above it with a comment
    text = path.read_text().splitlines()
    for i, line in enumerate(text):
        m = re.match(r'^\s+([a-z_0-9]+):\s+\S', line)
        if m:
            assert text[i - 1].strip().startswith('#'), f'undocumented YAML key {m.group(1)}'
    assert validate_params(flat) == {p.name: p.default for p in PARAMETERS}
    assert load_params_yaml(str(path))['stereo.num_disparities'] == 128


def test_params_yaml_is_what_the_generator_writes():
    from geo_depth_node.cli import params_yaml
    assert (REPO / 'config' / 'geo_depth.yaml').read_text() == params_yaml(), \
        'config/geo_depth.yaml is stale: regenerate with `geo-depth params --yaml`'


def test_every_parameter_has_description_units_range():
    for spec in PARAMETERS:
        assert len(spec.description) > 20, spec.name
        if spec.type_name in ('int', 'float'):
            assert spec.min_value is not None and spec.max_value is not None, spec.name
            assert spec.min_value <= spec.default <= spec.max_value, spec.name
        if spec.type_name == 'str' and spec.name not in ('dem.sources', 'output.enu_frame_id'):
            assert spec.choices, spec.name
        if spec.type_name.startswith('float['):
            assert spec.units, spec.name


@pytest.mark.parametrize('values,match', [
    ({'stereo.num_disparitys': 64}, 'unknown parameter'),
    ({'stereo.num_disparities': 100}, 'multiple of 16'),
    ({'stereo.num_disparities': 1024}, 'maximum'),
    ({'limit.max_relative_sigma': 'high'}, 'expected number'),
    ({'sync.mode': 'fuzzy'}, 'not one of'),
    ({'stereo.p1': 500, 'stereo.p2': 100}, 'must exceed'),
    ({'rectify': 1}, 'expected bool'),
])
def test_bad_parameter_values_are_refused(values, match):
    with pytest.raises(ValueError, match=match):
        validate_params(values)


def _launch_tree():
    return ast.parse((REPO / 'launch' / 'geo_depth.launch.py').read_text())


def _calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, 'id', getattr(n.func, 'attr', None)) == name]


def test_launch_file_starts_the_installed_executable_with_the_params_file():
    tree = _launch_tree()
    nodes = _calls(tree, 'Node')
    assert len(nodes) == 1
    kw = {k.arg: k.value for k in nodes[0].keywords}
    assert ast.literal_eval(kw['package']) == 'geo_depth_node'
    assert ast.literal_eval(kw['executable']) == 'geo_depth_node'
    assert ast.literal_eval(kw['name']) == 'geo_depth_node'
    args = {ast.literal_eval(c.args[0]) for c in _calls(tree, 'DeclareLaunchArgument')}
    assert {'namespace', 'params_file', 'use_sim_time'} <= args
    src = (REPO / 'launch' / 'geo_depth.launch.py').read_text()
    assert "os.path.join(share, 'config', 'geo_depth.yaml')" in src
    assert "get_package_share_directory('geo_depth_node')" in src
    # what the launch file names exists in the source tree and is installed by CMake
    cmake = (REPO / 'CMakeLists.txt').read_text()
    assert (REPO / 'config' / 'geo_depth.yaml').exists()
    assert re.search(r'install\(DIRECTORY launch config', cmake)
    assert re.search(r'install\(PROGRAMS scripts/geo_depth_node DESTINATION lib/\$\{PROJECT_NAME\}\)',
                     cmake)
    assert (REPO / 'scripts' / 'geo_depth_node').stat().st_mode & 0o111
    # launch-argument names are what users pass; the YAML section is for that node name in
    # any namespace (the launch file's namespace argument)
    doc = yaml.safe_load((REPO / 'config' / 'geo_depth.yaml').read_text())
    assert list(doc) == ['/**/' + ast.literal_eval(kw['name'])]


def test_launch_file_compiles():
    compile((REPO / 'launch' / 'geo_depth.launch.py').read_text(), 'geo_depth.launch.py', 'exec')


def test_package_xml_is_ament_cmake_with_interfaces():
    root = ET.parse(REPO / 'package.xml').getroot()
    assert root.attrib['format'] == '3'
    assert root.findtext('name') == 'geo_depth_node'
    assert root.find('export/build_type').text == 'ament_cmake'
    assert root.findtext('member_of_group') == 'rosidl_interface_packages'
    deps = {e.text for e in root if e.tag.endswith('depend')}
    assert {'rosidl_default_generators', 'rclpy', 'sensor_msgs', 'launch_ros'} <= deps


def test_ci_runs_the_readme_test_command():
    readme = (REPO / 'README.md').read_text()
    ci = (REPO / '.ci' / 'run').read_text()
    assert 'make test' in readme and 'make demo' in readme
    cmds = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.startswith('#')
            and not ln.startswith(('set ', 'cd '))]
    assert cmds == ['make test'], cmds


def test_gpu_check_script_is_valid():
    """tools/gpu_check.sh (the GPU session's one command) parses and names existing tests,
    bench options and parameters."""
    import shutil
    import subprocess

    script = REPO / 'tools' / 'gpu_check.sh'
    text = script.read_text()
    if shutil.which('bash'):
        subprocess.run(['bash', '-n', str(script)], check=True)
    for name in re.findall(r'test/(test_\w+\.py)', text):
        assert (REPO / 'test' / name).is_file(), name
    from geo_depth_node.tools.bench import build_parser

    opts = {o for a in build_parser()._actions for o in a.option_strings}
    code = '\n'.join(ln for ln in text.splitlines() if not ln.lstrip().startswith('#')
                     and 'pip install' not in ln)
    for opt in set(re.findall(r'(?<=\s)(--[a-z][a-z-]+)', code)) - {'--target', '--upgrade'}:
        assert opt in opts, opt
    for name in re.findall(r'--set (\S+?)=', text):
        assert name in PARAMS_BY_NAME, name
