"""Parameters are refused where the libraries under them fail, never accepted into a crash.

Every stereo/sigma/limit parameter runs at both ends of its declared range through
``DepthPipeline.process`` with both matchers (OpenCV SGBM and sgm_torch on the CPU), each
matcher in one child process that names every case before running it (OpenCV dies of some
values with SIGFPE/SIGSEGV, which would take pytest with it). Values that only fail in
combination (SGBM's 16-bit costs, sgm_torch's 256 disparities, the height grid's memory) are
refused by ``validate_params`` with the numbers in the message, and so are non-finite
floats. The refusal reaches the users: ``geo-depth replay`` exits 2 and ``ros2 param set``
is refused while the node lives on.
"""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import yaml

from geo_depth_node.core.params import (PARAMETERS, PARAMS_BY_NAME, grid_memory_mb,
                                        load_params_yaml, validate_params)
from geo_depth_node.core.stereo import (SGBM_COST_MAX, MatcherConfig, OpenCVStereoMatcher,
                                        sgbm_max_block_cost)

REPO = Path(__file__).resolve().parents[1]
MATCHERS = ('opencv_sgbm', 'sgm_torch')
#: bound cases refused by validate_params on purpose (matcher, case)
EXPECTED_REFUSALS = {('sgm_torch', 'stereo.num_disparities=512')}

# The child: runs the cases (JSON on stdin) one after the other, a line per case before and
# after, so that a crash names the case it died in.
_RUNNER = textwrap.dedent('''
    import json, sys
    import numpy as np
    from geo_depth_node.core.camera import CameraModel
    from geo_depth_node.core.params import validate_params
    from geo_depth_node.core.pipeline import DepthPipeline
    from geo_depth_node.core.scene import render_scene

    pairs = {}
    def pair(w, h):
        if (w, h) not in pairs:
            sc = render_scene(w, h, seed=3, supersample=1, baseline_m=0.5)
            lm = CameraModel.from_arrays(w, h, sc.K, np.zeros(5), np.eye(3), sc.P_left)
            rm = CameraModel.from_arrays(w, h, sc.K, np.zeros(5), np.eye(3), sc.P_right)
            pairs[w, h] = (sc.left, sc.right, lm, rm)
        return pairs[w, h]

    for case in json.load(sys.stdin):
        print('CASE', case['name'], flush=True)
        try:
            params = validate_params(case['params'])
        except ValueError as exc:
            print('REFUSED', exc, flush=True)
            continue
        try:
            res = DepthPipeline(params).process(*pair(*case['size']))
            print('OK', res.class_fractions()['MEASURED'], flush=True)
        except Exception as exc:
            print('ERROR', type(exc).__name__, exc, flush=True)
''')


def _child(code: str, stdin: str = '', timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], input=stdin, capture_output=True,
                          text=True, timeout=timeout, cwd=str(REPO / 'test'))


def _typed(spec, value):
    return int(value) if type(spec.default) is int else float(value)


def _bound_cases(matcher: str) -> list[dict]:
    """Every stereo/sigma/limit parameter at each end of its range (each choice, both bools),
    with just enough companions that the case is valid and the image wide enough."""
    base = {'stereo.matcher': matcher, 'stereo.num_disparities': 16}
    if matcher == 'sgm_torch':
        base['stereo.device'] = 'cpu'
    cases = []
    for spec in PARAMETERS:
        if not spec.name.startswith(('stereo.', 'sigma.', 'limit.')) \
                or spec.name in ('stereo.matcher', 'stereo.device'):
            continue
        if spec.choices:
            values = list(spec.choices)
        elif isinstance(spec.default, bool):
            values = [False, True]
        else:
            assert spec.min_value is not None and spec.max_value is not None, spec.name
            values = [_typed(spec, spec.min_value), _typed(spec, spec.max_value)]
        for v in values:
            params = dict(base, **{spec.name: v})
            if spec.name in ('stereo.p1', 'stereo.p2') and v == spec.max_value:
                # the largest penalties need the smallest block and prefilter cap
                params.update({'stereo.p1': int(PARAMS_BY_NAME['stereo.p1'].max_value),
                               'stereo.p2': int(PARAMS_BY_NAME['stereo.p2'].max_value),
                               'stereo.block_size': 1, 'stereo.pre_filter_cap': 1})
            size = [48, 36]
            if spec.name in ('stereo.num_disparities', 'stereo.min_disparity'):
                m = OpenCVStereoMatcher(MatcherConfig(
                    min_disparity=params.get('stereo.min_disparity', 0),
                    num_disparities=params['stereo.num_disparities']))
                size = [max(48, m.min_width + 8), 24]
            cases.append({'name': f'{spec.name}={v}', 'params': params, 'size': size})
    return cases


@pytest.mark.parametrize('matcher', MATCHERS)
def test_every_stereo_parameter_runs_at_both_bounds(matcher):
    """Both ends of every declared range run through the pipeline (or are refused by
    validate_params where the matcher cannot take them); none kills the process."""
    cases = _bound_cases(matcher)
    out = _child(_RUNNER, json.dumps(cases), timeout=180.0)
    lines = out.stdout.splitlines()
    started = [ln[5:] for ln in lines if ln.startswith('CASE ')]
    assert out.returncode == 0, (f'{matcher} died (rc {out.returncode}) in case '
                                 f'{started[-1] if started else "?"}: {out.stderr[-2000:]}')
    results: dict[str, str] = {}
    for ln in lines:
        if ln.startswith('CASE '):
            name = ln[5:]
        elif ln.split(' ', 1)[0] in ('OK', 'REFUSED', 'ERROR'):
            results[name] = ln
    assert set(results) == {c['name'] for c in cases}, out.stdout[-2000:]
    errors = {k: v for k, v in results.items() if v.startswith('ERROR')}
    assert not errors, errors
    refused = {(matcher, k) for k, v in results.items() if v.startswith('REFUSED')}
    assert refused == {r for r in EXPECTED_REFUSALS if r[0] == matcher}, \
        {k: results[k] for _, k in refused}


def test_uniqueness_ratio_that_kills_opencv_is_refused():
    """100 % made OpenCV's sgbm_3way divide by zero (SIGFPE, replay rc -8); 99 is the top."""
    assert PARAMS_BY_NAME['stereo.uniqueness_ratio'].max_value == 99
    with pytest.raises(ValueError, match=r'stereo\.uniqueness_ratio: 100 is above the maximum 99'):
        validate_params({'stereo.uniqueness_ratio': 100})
    with pytest.raises(ValueError, match='uniqueness_ratio must be in 0..99'):
        MatcherConfig(uniqueness_ratio=100)
    assert validate_params({'stereo.uniqueness_ratio': 99})['stereo.uniqueness_ratio'] == 99


def test_sgbm_penalties_beyond_its_16_bit_costs_are_refused():
    """SGBM adds P2 to int16 block costs: past 32767 they wrap (P2 32768 matched nothing)."""
    p2_max = PARAMS_BY_NAME['stereo.p2'].max_value
    assert p2_max == SGBM_COST_MAX - sgbm_max_block_cost(1, 1)
    assert PARAMS_BY_NAME['stereo.p1'].max_value == p2_max - 1
    for bad in ({'stereo.p2': 32768}, {'stereo.p1': 100000}):
        with pytest.raises(ValueError, match='above the maximum'):
            validate_params(bad)
    # the block's cost limits P2 further: 11 px blocks at pre_filter_cap 63
    limit = SGBM_COST_MAX - sgbm_max_block_cost(11, 63)
    assert limit == 9898
    validate_params({'stereo.block_size': 11, 'stereo.p2': limit})
    with pytest.raises(ValueError, match=f'stereo.p2 {limit + 1} is too large.*p2 <= {limit}'):
        validate_params({'stereo.block_size': 11, 'stereo.p2': limit + 1})
    # p1 alone above the default p2 (32*block^2 = 800): refused at start-up, not later
    with pytest.raises(ValueError, match=r'stereo\.p2 800 \(0 = 32\*block_size\^2\) must exceed '
                                         r'stereo\.p1 1000'):
        validate_params({'stereo.p1': 1000})


def test_sgm_torch_disparity_range_is_checked_at_start_up():
    with pytest.raises(ValueError, match=r'stereo\.num_disparities \(512\) must be <= 256'):
        validate_params({'stereo.matcher': 'sgm_torch', 'stereo.num_disparities': 512})
    assert validate_params({'stereo.matcher': 'opencv_sgbm', 'stereo.num_disparities': 512})


#: (min_disparity, num_disparities, lr_check_resolution) -> narrowest image OpenCV SGBM can
#: match, px: it matches the columns max(min_d + num_d, 0) .. width + min(min_d, 0) (left
#: pass); the half-resolution right pass searches the left pass's range halved and rounded up
#: to 16 disparities, on a half-width image.
NARROWEST = {(0, 16, 'full'): 17, (0, 16, 'half'): 33, (0, 48, 'half'): 65,
             (10, 32, 'half'): 43, (-20, 32, 'full'): 33, (-256, 32, 'full'): 257,
             (-256, 32, 'half'): 257}

_NARROW = textwrap.dedent('''
    import json, sys
    import numpy as np
    from geo_depth_node.core.stereo import MatcherConfig, OpenCVStereoMatcher
    rng = np.random.default_rng(0)
    for mind, numd, res, widths in json.load(sys.stdin):
        m = OpenCVStereoMatcher(MatcherConfig(min_disparity=mind, num_disparities=numd,
                                              lr_check_resolution=res, min_texture=0.0))
        for w in widths:
            img = rng.integers(0, 256, (12, w + 5), dtype=np.uint8)
            print('CASE', mind, numd, res, w, flush=True)
            try:
                m.match(np.ascontiguousarray(img[:, 5:]), np.ascontiguousarray(img[:, :w]))
                print('OK', flush=True)
            except ValueError as exc:
                print('REFUSED', f'image width {w} px' in str(exc), flush=True)
            except Exception as exc:
                print('ERROR', type(exc).__name__, str(exc)[:200], flush=True)
''')


def test_opencv_matcher_refuses_images_too_narrow_for_its_search_range():
    """Negative min_disparity asked OpenCV for 18 EB or crashed it (SIGSEGV); so did the
    half-resolution left-right pass on narrow images. Such frames are refused (ValueError
    naming the width), one pixel wider they match."""
    todo = [[*key, list(range(max(1, n - 20), n + 4))] for key, n in NARROWEST.items()]
    out = _child(_NARROW, json.dumps(todo))
    lines = out.stdout.splitlines()
    cases = [ln for ln in lines if ln.startswith('CASE')]
    assert out.returncode == 0, f'died (rc {out.returncode}) in {cases[-1:]}: {out.stderr[-1500:]}'
    verdicts = [ln for ln in lines if not ln.startswith('CASE')]
    assert len(verdicts) == len(cases) == sum(len(t[3]) for t in todo), out.stdout[-2000:]
    for case, verdict in zip(cases, verdicts, strict=True):
        mind, numd, res, w = case.split()[1:]
        narrowest = NARROWEST[int(mind), int(numd), res]
        expect = 'OK' if int(w) >= narrowest else 'REFUSED True'
        assert verdict == expect, (case, verdict, narrowest)
    for (mind, numd, res), n in NARROWEST.items():
        assert OpenCVStereoMatcher(MatcherConfig(min_disparity=mind, num_disparities=numd,
                                                 lr_check_resolution=res)).min_width == n


@pytest.mark.parametrize('spec', [s for s in PARAMETERS if type(s.default) is float],
                         ids=lambda s: s.name)
def test_float_parameters_refuse_non_finite_values(spec):
    """NaN passed every range check (limit.max_relative_sigma NaN removed every point)."""
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match=rf'{spec.name}: expected a finite number'):
            validate_params({spec.name: bad})


@pytest.mark.parametrize('spec', [s for s in PARAMETERS if type(s.default) is tuple],
                         ids=lambda s: s.name)
def test_float_array_parameters_refuse_non_finite_elements(spec):
    for i in range(len(spec.default)):
        for bad in (math.nan, math.inf, -math.inf):
            value = list(spec.default)
            value[i] = bad
            with pytest.raises(ValueError, match=rf'{spec.name}: expected \d finite numbers'):
                validate_params({spec.name: value})


@pytest.mark.parametrize('field', ['sigma_v_m', 'sigma_h_m', 'sigma_v_growth_m_per_year'])
def test_dem_source_numbers_refuse_non_finite_values(field):
    src = {'dem.sources': 'survey', 'dem.source.survey.id': 1,
           'dem.source.survey.path': '/data/dem.tif', 'dem.source.survey.kind': 'dem',
           'dem.source.survey.vertical_datum': 'ellipsoid', 'dem.source.survey.sigma_v_m': 0.5,
           'dem.source.survey.sigma_h_m': 1.0, 'dem.source.survey.survey_date': '2021-06-15'}
    validate_params(src)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match=rf'dem\.source\.survey\.{field} = .*finite'):
            validate_params(dict(src, **{f'dem.source.survey.{field}': bad}))


def test_height_grid_over_the_memory_budget_is_refused_at_start_up():
    """dem.grid_cell_m 0.1 or dem.grid_half_extent_m 20000 asked for GiBs per array on the
    first frame; now start-up refuses them and says how much they would need. Without DEM
    sources no grid is built, so the grid parameters are not checked against the budget."""
    def dem(**kw):
        return {'dem.sources': 'srtm', 'dem.source.srtm.path': '/data/srtm.tif',
                'dem.source.srtm.id': 1, 'dem.source.srtm.kind': 'dem',
                'dem.source.srtm.vertical_datum': 'egm96', 'dem.source.srtm.sigma_v_m': 5.0,
                'dem.source.srtm.sigma_h_m': 10.0, **kw}

    spec = PARAMS_BY_NAME['dem.max_grid_memory_mb']
    assert spec.read_only and spec.units == 'MB'
    budget = spec.default
    need = grid_memory_mb(0.1, 1500.0)
    assert need > 50 * budget
    with pytest.raises(ValueError, match=rf'30001 x 30001 height grid that needs about '
                                         rf'{need:,.0f} MB.*dem\.max_grid_memory_mb {budget}'):
        validate_params(dem(**{'dem.grid_cell_m': 0.1}))
    with pytest.raises(ValueError, match=r'20001 x 20001 height grid that needs about [\d,]+ MB'):
        validate_params(dem(**{'dem.grid_half_extent_m': 20000.0}))
    # more sources, more work arrays per node
    assert grid_memory_mb(2.0, 1500.0, 3) > grid_memory_mb(2.0, 1500.0, 1)
    # the defaults fit with a wide margin; a larger budget admits a finer grid
    assert grid_memory_mb(2.0, 1500.0) < budget / 4
    validate_params(dem())
    validate_params(dem(**{'dem.grid_cell_m': 0.5, 'dem.max_grid_memory_mb': 20000}))
    validate_params({'dem.grid_cell_m': 0.1})  # stereo only: no grid, no budget
    with pytest.raises(ValueError, match=r'dem\.grid_half_extent_m \(60\.0\) must be >= '
                                         r'dem\.grid_cell_m \(100\.0\)'):
        validate_params(dem(**{'dem.grid_cell_m': 100.0, 'dem.grid_half_extent_m': 60.0,
                               'dem.grid_retile_margin_m': 10.0, 'dem.max_range_m': 10.0}))


def test_shipped_and_generated_params_pass_the_new_checks():
    """config/geo_depth.yaml and the parameters `geo-depth synth` writes (its default world and
    the small worlds of prior-coverage) load."""
    from geo_depth_node.synth.config import SynthConfig
    from geo_depth_node.synth.motion import Mounts
    from geo_depth_node.synth.params_out import node_params

    load_params_yaml(str(REPO / 'config' / 'geo_depth.yaml'))
    for cfg in (SynthConfig(), SynthConfig(dem_res_m=1.0),
                SynthConfig(dem_res_m=1.0, dem_extent_m=200.0)):
        world = types.SimpleNamespace(cfg=cfg, mounts=Mounts.from_config(cfg))
        validate_params(node_params(world, Path('/data/dem.tif')))


def test_replay_with_the_crashing_uniqueness_ratio_exits_2(tmp_path):
    """`geo-depth replay` with uniqueness_ratio 100 died of SIGFPE (rc -8)."""
    from geo_depth_node.tools.scene_bag import write_scene_bag

    info = write_scene_bag(tmp_path / 'scene', frames=1, width=160, height=120)
    params = tmp_path / 'params.yaml'
    params.write_text(yaml.safe_dump({'/**/geo_depth_node': {'ros__parameters': {
        'stereo': {'matcher': 'opencv_sgbm', 'uniqueness_ratio': 100}}}}))
    code = ('import sys; from geo_depth_node.tools.replay import main; '
            'sys.exit(main(sys.argv[1:]))')
    out = subprocess.run([sys.executable, '-c', code, str(info['bag']), '--params', str(params),
                          '--out', str(tmp_path / 'out'), '--quiet'], capture_output=True,
                         text=True, timeout=120, cwd=str(REPO / 'test'))
    assert out.returncode == 2, (out.returncode, out.stderr[-1500:])
    assert 'stereo.uniqueness_ratio: 100 is above the maximum 99' in out.stderr, out.stderr


def test_ros2_param_set_of_the_crashing_uniqueness_ratio_is_refused(tmp_path, monkeypatch):
    """The node's on-set check refuses 100 (it accepted it, and the next frame killed the
    node); the node lives on and takes 99."""
    rclpy = pytest.importorskip('rclpy', reason='rclpy not available (no ROS 2 here)')
    pytest.importorskip('geo_depth_node.msg', reason='custom messages not built (run make build)')
    from rcl_interfaces.srv import SetParameters
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from geo_depth_node.ros.harness import NodeProcess, installed_paths, isolated_ros_env

    doc = yaml.safe_load(installed_paths().params_file.read_text())
    doc['/**/geo_depth_node']['ros__parameters']['stereo']['matcher'] = 'opencv_sgbm'
    params = tmp_path / 'params.yaml'
    params.write_text(yaml.safe_dump(doc))
    domain = random.randint(100, 200)
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')  # read by the RMW
    with NodeProcess(isolated_ros_env(domain), params_file=str(params),
                     log_path=tmp_path / 'node.log') as node:
        ctx = Context()
        rclpy.init(context=ctx, domain_id=domain)
        client_node = rclpy.create_node('fault_params_client', context=ctx)
        try:
            executor = SingleThreadedExecutor(context=ctx)
            executor.add_node(client_node)
            client = client_node.create_client(SetParameters, '/geo_depth_node/set_parameters')
            assert client.wait_for_service(timeout_sec=90.0), node.log_text()[-2000:]

            def set_uniqueness(value: int):
                request = SetParameters.Request(parameters=[
                    Parameter('stereo.uniqueness_ratio', value=value).to_parameter_msg()])
                future = client.call_async(request)
                executor.spin_until_future_complete(future, timeout_sec=30.0)
                assert future.done(), node.log_text()[-2000:]
                return future.result().results[0]

            refused = set_uniqueness(100)
            assert not refused.successful
            # rclpy checks the descriptor's range (from the same table) before the callback
            assert 'stereo.uniqueness_ratio' in refused.reason and '99' in refused.reason, \
                refused.reason
            accepted = set_uniqueness(99)
            assert accepted.successful, accepted.reason
            assert node.alive(), node.log_text()[-2000:]
        finally:
            client_node.destroy_node()
            rclpy.shutdown(context=ctx)


def test_matcher_config_agrees_with_the_table():
    """The direct API (tools, benches) refuses what the table refuses."""
    with pytest.raises(ValueError, match='must exceed'):
        MatcherConfig(p1=1000)
    with pytest.raises(ValueError, match='too large'):
        MatcherConfig(block_size=11, p2=9899)
