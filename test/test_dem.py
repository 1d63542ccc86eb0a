"""DEM sources: configuration, reading in any CRS/datum, and the local ENU height grid."""
from __future__ import annotations

import datetime
import math
import os

import numpy as np
import pytest

from geo_depth_node.core import dem, geodesy
from geo_depth_node.core.dem import DemSource, DemSourceSpec, LocalHeightGrid, parse_dem_sources
from geo_depth_node.core.geodesy import EnuFrame

EGM96_GTX = '/usr/share/proj/egm96_15.gtx'
needs_egm96 = pytest.mark.skipif(not os.path.exists(EGM96_GTX),
                                 reason=f'{EGM96_GTX} missing (apt-get install proj-data)')

LAT0, LON0, H0 = 49.0, 8.4, 150.0  # Karlsruhe


# --- configuration --------------------------------------------------------------------

def _fields(**over):
    d = dict(id=1, path='/x.tif', kind='dem', vertical_datum='egm96', sigma_v_m=1.0, sigma_h_m=2.0)
    d.update(over)
    return d


def test_flat_ros_parameters_and_nested_tree_parse_alike():
    flat = {'dem.sources': ['srtm', 'lidar'], 'dem.grid.cell_m': 2.0,  # other dem.* ignored
            **{f'dem.source.srtm.{k}': v for k, v in _fields(kind='dsm', priority=0).items()},
            **{f'dem.source.lidar.{k}': v for k, v in _fields(id=7, vertical_datum='ellipsoid',
                                                              priority=5, survey_date='2019-05-01',
                                                              licence='CC-BY 4.0').items()}}
    specs = parse_dem_sources(flat)
    assert [s.name for s in specs] == ['lidar', 'srtm']  # priority order
    lidar, srtm = specs
    assert lidar.id == 7 and lidar.vertical_datum == 'ellipsoid' and lidar.licence == 'CC-BY 4.0'
    assert lidar.survey_date == datetime.date(2019, 5, 1)
    assert srtm.is_surface_model and not lidar.is_surface_model and srtm.survey_date is None
    nested = {'dem': {'sources': ['srtm', 'lidar'],
                      'source': {'srtm': _fields(kind='dsm'),
                                 'lidar': _fields(id=7, vertical_datum='ellipsoid', priority=5,
                                                  survey_date='2019-05-01', licence='CC-BY 4.0')}}}
    assert parse_dem_sources(nested) == specs
    as_list = [dict(s.as_dict()) for s in specs]
    assert parse_dem_sources(as_list) == specs
    assert parse_dem_sources({'dem.sources': []}) == []


@pytest.mark.parametrize('over, match', [
    (dict(kind='lidar'), r'dem\.source\.a\.kind'),
    (dict(id=0), r'dem\.source\.a\.id.*1\.\.65535'),
    (dict(id=70000), r'dem\.source\.a\.id'),
    (dict(id=1.5), r'dem\.source\.a\.id.*integer'),
    (dict(sigma_v_m=0.0), r'dem\.source\.a\.sigma_v_m'),
    (dict(sigma_h_m=-1.0), r'dem\.source\.a\.sigma_h_m'),
    (dict(sigma_v_m=float('nan')), r'sigma_v_m'),
    (dict(vertical_datum='egm97'), r'dem\.source\.a\.vertical_datum.*egm97'),
    (dict(survey_date='2019-13-01'), r'dem\.source\.a\.survey_date'),
    (dict(sigma_v_growth_m_per_year=0.1), r'sigma_v_growth_m_per_year.*survey_date'),
    (dict(sigma_vm=1.0), r'dem\.source\.a\.sigma_vm'),
    (dict(path=''), r'dem\.source\.a\.path'),
    (dict(band=0), r'dem\.source\.a\.band'),
])
def test_bad_source_field_is_named(over, match):
    params = {'dem.sources': ['a'], **{f'dem.source.a.{k}': v for k, v in _fields(**over).items()}}
    with pytest.raises(ValueError, match=match):
        parse_dem_sources(params)


def test_missing_duplicate_and_unlisted_sources_are_refused():
    f = _fields()
    del f['sigma_v_m']
    with pytest.raises(ValueError, match=r'missing.*dem\.source\.a\.sigma_v_m'):
        parse_dem_sources({'dem.sources': ['a'], **{f'dem.source.a.{k}': v for k, v in f.items()}})
    with pytest.raises(ValueError, match='duplicate id 1'):
        parse_dem_sources([dict(name='a', **_fields()), dict(name='b', **_fields())])
    with pytest.raises(ValueError, match=r"dem\.source\.b\.\* given but 'b' is not in dem\.sources"):
        parse_dem_sources({'dem.sources': ['a'], **{f'dem.source.a.{k}': v for k, v in _fields().items()},
                           'dem.source.b.id': 2})
    with pytest.raises(ValueError, match=r'dem\.sources must be a list'):
        parse_dem_sources({'dem.sources': 5})
    one = parse_dem_sources({'dem.sources': ' a, ', **{f'dem.source.a.{k}': v for k, v in _fields().items()}})
    assert [x.name for x in one] == ['a']
    with pytest.raises(ValueError, match='name'):
        parse_dem_sources([dict(name='bad-name', **_fields())])


def test_sigma_grows_with_survey_age_in_quadrature():
    s = DemSourceSpec.from_dict(dict(name='a', **_fields(sigma_v_m=1.0, survey_date='2010-01-01',
                                                         sigma_v_growth_m_per_year=0.3)))
    later = datetime.date(2020, 1, 1)
    years = (later - datetime.date(2010, 1, 1)).days / 365.25
    assert abs(s.sigma_v_at(later) - math.hypot(1.0, 0.3 * years)) < 1e-12
    assert abs(s.sigma_v_at(later) - math.hypot(1.0, 3.0)) < 1e-3
    assert s.sigma_v_at(datetime.date(2009, 1, 1)) == 1.0  # before the survey: no growth
    assert s.sigma_v_at() > s.sigma_v_at(later)  # today is later than 2020


# --- synthetic rasters ---------------------------------------------------------------------

def _orthometric(lat, lon):
    """Smooth analytic terrain (orthometric heights, m): ~2 km waves on a slope."""
    return (120.0 + 30.0 * np.sin(2 * np.pi * (lon - LON0) / 0.03) * np.cos(2 * np.pi * (lat - LAT0) / 0.02)
            + 500.0 * (lat - LAT0))


def _gtx_undulation(lat, lon):
    """EGM96 undulation bilinearly from the grid file itself (independent of pyproj)."""
    import rasterio

    with rasterio.open(EGM96_GTX) as ds:
        t = ds.transform
        r = (np.asarray(lat) - t.f) / t.e - 0.5
        c = (np.asarray(lon) - t.c) / t.a - 0.5
        i0, j0 = int(np.floor(r.min())), int(np.floor(c.min()))
        i1, j1 = int(np.floor(r.max())) + 2, int(np.floor(c.max())) + 2
        from rasterio.windows import Window
        g = ds.read(1, window=Window(j0, i0, j1 - j0, i1 - i0)).astype(np.float64)
    i, j = np.floor(r).astype(int) - i0, np.floor(c).astype(int) - j0
    wr, wc = r - np.floor(r), c - np.floor(c)
    top = g[i, j] * (1 - wc) + g[i, j + 1] * wc
    bot = g[i + 1, j] * (1 - wc) + g[i + 1, j + 1] * wc
    return top * (1 - wr) + bot * wr


def _write(path, data, crs, transform, nodata=-9999.0):
    import rasterio

    with rasterio.open(path, 'w', driver='GTiff', height=data.shape[0], width=data.shape[1], count=1,
                       dtype='float32', crs=crs, transform=transform, nodata=nodata) as ds:
        ds.write(data.astype(np.float32), 1)
    return str(path)


def _utm_tif(path, datum, *, hole=None, pixel=5.0, half=1400.0):
    """UTM 32N raster around the datum; heights orthometric (egm96) or ellipsoidal."""
    from pyproj import Transformer
    from rasterio.transform import from_origin

    fwd = Transformer.from_crs('EPSG:4326', 'EPSG:32632', always_xy=True)
    e0, n0 = fwd.transform(LON0, LAT0)
    e0, n0 = round(e0 - half), round(n0 + half)
    n = int(2 * half / pixel)
    ee, nn = np.meshgrid(e0 + pixel * (np.arange(n) + 0.5), n0 - pixel * (np.arange(n) + 0.5))
    lon, lat = Transformer.from_crs('EPSG:32632', 'EPSG:4326', always_xy=True).transform(ee, nn)
    h = _orthometric(lat, lon)
    if datum == 'ellipsoid':
        h = h + _gtx_undulation(lat, lon)
    if hole is not None:
        h[hole] = -9999.0
    return _write(path, h, 'EPSG:32632', from_origin(e0, n0, pixel, pixel))


def _geo_tif(path, datum, *, nodata=-9999.0, hole=None):
    """EPSG:4326 raster over the same area (~5 m pixels)."""
    from rasterio.transform import from_origin

    dlat, dlon = 0.00005, 0.00007
    lat_top, lon_left = LAT0 + 0.014, LON0 - 0.02
    nr, nc = int(0.028 / dlat), int(0.04 / dlon)
    lon, lat = np.meshgrid(lon_left + dlon * (np.arange(nc) + 0.5), lat_top - dlat * (np.arange(nr) + 0.5))
    h = _orthometric(lat, lon)
    if datum == 'ellipsoid':
        h = h + _gtx_undulation(lat, lon)
    if hole is not None:
        h[hole] = nodata
    return _write(path, h, 'EPSG:4326', from_origin(lon_left, lat_top, dlon, dlat), nodata=nodata)


def _spec(name, sid, path, datum, priority=0, **kw):
    return DemSourceSpec.from_dict(dict(name=name, id=sid, path=path, kind='dem', vertical_datum=datum,
                                        sigma_v_m=0.5, sigma_h_m=1.0, priority=priority, **kw))


def _truth_z(frame, xs, ys):
    """Independent truth: fixed point on ENU z with the closed-form geodesy only."""
    gx, gy = np.meshgrid(xs, ys)
    z = np.zeros_like(gx)
    for _ in range(6):
        lat, lon, _ = frame.enu_to_geodetic(np.stack([gx, gy, z], -1))
        h = _orthometric(lat, lon) + _gtx_undulation(lat, lon)
        z = frame.geodetic_to_enu(lat, lon, h)[..., 2]
    return z


@pytest.fixture(scope='module')
def rasters(tmp_path_factory):
    if not os.path.exists(EGM96_GTX):
        pytest.skip(f'{EGM96_GTX} missing (apt-get install proj-data)')
    d = tmp_path_factory.mktemp('dem')
    hole = (slice(250, 290), slice(300, 330))
    return {'utm_egm96': _utm_tif(d / 'utm_egm96.tif', 'egm96'),
            'utm_ell_hole': _utm_tif(d / 'utm_ell_hole.tif', 'ellipsoid', hole=hole),
            'geo_ell': _geo_tif(d / 'geo_ell.tif', 'ellipsoid'),
            'geo_egm96_nan': _geo_tif(d / 'geo_egm96_nan.tif', 'egm96', nodata=float('nan'),
                                      hole=(slice(250, 290), slice(260, 300)))}


FRAME = EnuFrame(LAT0, LON0, H0)


def _grid(sources, **kw):
    kw = {'cell_m': 5.0, 'half_extent_m': 600.0, 'retile_margin_m': 150.0, 'device': 'cpu', **kw}
    return LocalHeightGrid(sources, FRAME, **kw)


def test_utm_egm96_and_geographic_ellipsoidal_grids_agree(rasters):
    """Acceptance: the same terrain as UTM/EGM96 and as EPSG:4326/ellipsoidal -> same ENU grid."""
    g_utm = _grid([_spec('utm', 1, rasters['utm_egm96'], 'egm96')])
    g_geo = _grid([_spec('geo', 2, rasters['geo_ell'], 'ellipsoid')])
    assert g_utm.retile_if_needed([0.0, 0.0, 0.0]) and g_geo.retile_if_needed([0.0, 0.0])
    a = g_utm.field.height.double().numpy()
    b = g_geo.field.height.double().numpy()
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    assert np.max(np.abs(a - b)) < 0.01
    xs, ys = g_utm.field.node_xy()
    truth = _truth_z(FRAME, xs, ys)
    assert np.max(np.abs(a - truth)) < 0.005
    assert np.max(np.abs(b - truth)) < 0.005
    # ENU z is not a height: the curvature drop at the grid corner is visible in the truth
    assert np.ptp(a) > 20.0
    assert set(np.unique(g_utm.field.source.numpy())) == {1}
    assert float(g_utm.field.sigma_v[0, 0]) == 0.5 and float(g_utm.field.sigma_h[0, 0]) == 1.0


def test_same_crs_different_datum_agree_and_nan_nodata_is_honoured(rasters):
    """EPSG:4326 as EGM96 (with a NaN-nodata hole) vs as ellipsoidal: equal outside the hole."""
    g_egm = _grid([_spec('g96', 3, rasters['geo_egm96_nan'], 'egm96')])
    g_ell = _grid([_spec('gell', 2, rasters['geo_ell'], 'ellipsoid')])
    g_egm.retile_if_needed([0.0, 0.0])
    g_ell.retile_if_needed([0.0, 0.0])
    a = g_egm.field.height.double().numpy()
    b = g_ell.field.height.double().numpy()
    hole = np.isnan(a)
    assert 0 < hole.mean() < 0.2
    assert np.max(np.abs(a[~hole] - b[~hole])) < 0.01
    assert np.all(g_egm.field.source.numpy()[hole] == 0)
    assert np.all(np.isnan(g_egm.field.sigma_v.numpy()[hole]))
    # the hole is where the raster's NaN pixels are (rows 250..289, cols 260..299)
    xs, ys = g_egm.field.node_xy()
    gx, gy = np.meshgrid(xs, ys)
    lat, lon, _ = FRAME.enu_to_geodetic(np.stack([gx, gy, np.zeros_like(gx)], -1))
    row = (LAT0 + 0.014 - lat) / 0.00005 - 0.5
    col = (lon - (LON0 - 0.02)) / 0.00007 - 0.5
    deep = (row > 250) & (row < 288) & (col > 260) & (col < 298)
    clear = (row < 248) | (row > 291) | (col < 258) | (col > 301)
    assert np.all(hole[deep]) and not np.any(hole[clear])


def test_priority_and_fallback_to_the_next_source(rasters):
    hi = _spec('hi', 1, rasters['utm_ell_hole'], 'ellipsoid', priority=10)
    lo = _spec('lo', 2, rasters['geo_ell'], 'ellipsoid', priority=1)
    g = _grid([lo, hi])  # order of the list does not matter
    g.retile_if_needed([0.0, 0.0])
    src = g.field.source.numpy()
    h = g.field.height.double().numpy()
    assert np.all(np.isfinite(h))
    assert 0 < (src == 2).mean() < 0.1 and set(np.unique(src)) == {1, 2}
    only_hi = _grid([hi])
    only_hi.retile_if_needed([0.0, 0.0])
    h_hi = only_hi.field.height.double().numpy()
    np.testing.assert_array_equal(np.isnan(h_hi), src == 2)  # fallback exactly where hi has none
    xs, ys = g.field.node_xy()
    assert np.max(np.abs(h - _truth_z(FRAME, xs, ys))) < 0.005
    assert g.specs_by_id[2].name == 'lo'


def test_retile_when_near_the_edge_and_shared_nodes_agree(rasters):
    g = _grid([_spec('utm', 1, rasters['utm_egm96'], 'egm96')], half_extent_m=300.0,
              retile_margin_m=100.0)
    assert g.needs_retile([0.0, 0.0])
    assert g.retile_if_needed([1.0, 2.0])
    first = g.field
    assert first.extent == (0.0 - 300.0, 300.0, 0.0 - 300.0, 300.0)  # centre snapped to the cells
    assert not g.retile_if_needed([150.0, -190.0])
    assert g.retile_if_needed([201.0, 0.0]) and g.builds == 2
    second = g.field
    assert second.extent[0] == -100.0 and second.extent[1] == 500.0
    # overlap x in [-100, 300]: same nodes, same heights
    a = first.height.numpy()[:, 40:]
    b = second.height.numpy()[:, :81]
    np.testing.assert_allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match='position_enu'):
        g.needs_retile([float('nan'), 0.0])


def test_lattice_spacing_does_not_change_the_result(rasters):
    spec = _spec('utm', 1, rasters['utm_egm96'], 'egm96')
    a = _grid([spec], half_extent_m=200.0, lattice_m=1.0)  # every node exact
    b = _grid([spec], half_extent_m=200.0, lattice_m=100.0)
    a.retile_if_needed([300.0, -250.0])
    b.retile_if_needed([300.0, -250.0])
    assert np.max(np.abs(a.field.height.numpy() - b.field.height.numpy())) < 1e-3


def test_grid_parameters_are_validated(rasters):
    spec = _spec('utm', 1, rasters['utm_egm96'], 'egm96')
    for kw, match in ((dict(cell_m=0.0), 'cell_m'), (dict(retile_margin_m=600.0), 'retile_margin_m'),
                      (dict(dtype='float16'), 'dtype'), (dict(lattice_m=0.0), 'lattice_m')):
        with pytest.raises(ValueError, match=match):
            _grid([spec], **kw)


def test_missing_file_and_unconvertible_datum(tmp_path, rasters):
    with pytest.raises(FileNotFoundError, match='nothing_here'):
        DemSource(_spec('a', 1, str(tmp_path / 'nothing_here*.tif'), 'egm96'))
    if geodesy.datum_available('egm2008'):
        pytest.skip('EGM2008 grid installed here')
    with pytest.raises(geodesy.VerticalDatumError, match=r"(?s)DEM source 'b'.*egm2008"):
        DemSource(_spec('b', 2, rasters['utm_egm96'], 'egm2008'))


def test_point_queries_in_source_datum_and_ellipsoidal(rasters):
    src = DemSource(_spec('utm', 1, rasters['utm_egm96'], 'egm96'))
    lat = np.array([49.001, 48.995, 60.0])
    lon = np.array([8.401, 8.39, 8.4])
    h = src.heights(lat, lon)
    np.testing.assert_allclose(h[:2], _orthometric(lat[:2], lon[:2]), atol=2e-3)
    assert np.isnan(h[2])  # outside the raster
    he = src.ellipsoidal_heights(lat, lon)
    np.testing.assert_allclose(he[:2] - h[:2], _gtx_undulation(lat[:2], lon[:2]), atol=2e-3)


# --- real SRTM tiles ----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def srtm_dir(shared_data):
    d = shared_data / 'srtm3'
    if not (d / 'N49E008.hgt').exists():
        pytest.skip(f'SRTM tiles not found in {d} (../shared/data absent)')
    if not os.path.exists(EGM96_GTX):
        pytest.skip(f'{EGM96_GTX} missing (apt-get install proj-data)')
    return d


def test_srtm_karlsruhe_heights_are_plausible(srtm_dir):
    import rasterio

    spec = DemSourceSpec.from_dict(dict(name='srtm', id=1, path=str(srtm_dir / 'N4*E008.hgt'), kind='dsm',
                                        vertical_datum='egm96', sigma_v_m=9.0, sigma_h_m=20.0,
                                        survey_date='2000-02-11', licence='public domain'))
    src = DemSource(spec)
    assert len(src.paths) == 2 and len(src.groups) == 1  # two tiles, one mosaic grid
    # Karlsruhe (Rhine plain) and across the tile seam at 49N
    lat = np.array([49.0093, 49.0, 48.9996, 49.0004])
    lon = np.array([8.4044, 8.4, 8.45, 8.45])
    h = src.heights(lat, lon)
    assert np.all((h > 95) & (h < 140)), h
    with rasterio.open(srtm_dir / 'N49E008.hgt') as ds:
        arr = ds.read(1)
        voids = np.argwhere(arr == -32768)
        assert len(voids) > 0
        r, c = voids[0]
        vlon, vlat = ds.xy(int(r), int(c))  # pixel centre of a void
        # the file's value at the pixel centre of (row 1000, col 480) and at Karlsruhe
        clon, clat = ds.xy(1000, 480)
        centre_val = float(arr[1000, 480])
    assert abs(float(src.heights(clat, clon)) - centre_val) < 1e-6  # pixel centres are exact
    assert np.isnan(src.heights(vlat, vlon))  # voids honoured
    he = src.ellipsoidal_heights(lat, lon)
    und = he - h
    assert np.all((und > 47.5) & (und < 49.0)), und  # ellipsoidal = orthometric + ~48 m
    np.testing.assert_allclose(und, _gtx_undulation(lat, lon), atol=2e-3)

    frame = EnuFrame(49.0093, 8.4044, float(he[0]))
    g = LocalHeightGrid([src], frame, cell_m=30.0, half_extent_m=1500.0, retile_margin_m=300.0,
                        device='cpu')
    g.retile_if_needed([0.0, 0.0])
    f = g.field
    assert f.shape == (101, 101) and bool(np.isfinite(f.height.numpy()).all())
    # the centre node is the datum's own terrain point: z = 0 there
    assert abs(float(f.height[50, 50])) < 1e-3
    assert -40.0 < f.z_min and f.z_max < 40.0  # flat Rhine plain (DSM: some buildings/trees)
    # a grid around a void has NaN nodes there
    vf = EnuFrame(float(vlat), float(vlon), 200.0)
    gv = LocalHeightGrid([src], vf, cell_m=30.0, half_extent_m=300.0, retile_margin_m=50.0, device='cpu')
    gv.retile_if_needed([0.0, 0.0])
    hv = gv.field.height.numpy()
    assert np.isnan(hv[10, 10]) and 0 < np.isnan(hv).mean() < 0.5


def test_dem_module_imports_lazily():
    import subprocess
    import sys

    code = ('import sys, geo_depth_node.core.dem, geo_depth_node.core.geodesy, '
            'geo_depth_node.core.raycast\n'
            'print(sorted(m for m in ("torch", "rasterio", "pyproj") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[]'
    assert dem.DEM_KINDS == ('dem', 'dsm')
