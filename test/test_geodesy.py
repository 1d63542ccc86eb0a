"""WGS84 geodesy and vertical datums against analytic truth, pyproj and the geoid grid itself."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from geo_depth_node.core import geodesy
from geo_depth_node.core.geodesy import EnuFrame, VerticalDatumError

EGM96_GTX = '/usr/share/proj/egm96_15.gtx'
needs_egm96 = pytest.mark.skipif(not os.path.exists(EGM96_GTX),
                                 reason=f'{EGM96_GTX} missing (apt-get install proj-data)')


def _prime_vertical_radius(lat_deg: float) -> float:
    s = math.sin(math.radians(lat_deg))
    return geodesy.WGS84_A / math.sqrt(1 - geodesy.WGS84_E2 * s * s)


def _meridian_radius(lat_deg: float) -> float:
    s = math.sin(math.radians(lat_deg))
    return geodesy.WGS84_A * (1 - geodesy.WGS84_E2) / (1 - geodesy.WGS84_E2 * s * s) ** 1.5


def test_ecef_of_special_points():
    a, b = geodesy.WGS84_A, geodesy.WGS84_B
    np.testing.assert_allclose(geodesy.geodetic_to_ecef(0, 0, 0), [a, 0, 0], atol=1e-9)
    np.testing.assert_allclose(geodesy.geodetic_to_ecef(0, 90, 10), [0, a + 10, 0], atol=1e-9)
    np.testing.assert_allclose(geodesy.geodetic_to_ecef(90, 0, 0), [0, 0, b], atol=1e-6)
    np.testing.assert_allclose(geodesy.geodetic_to_ecef(-90, 0, 5), [0, 0, -b - 5], atol=1e-6)


def test_ecef_matches_pyproj():
    from pyproj import Transformer

    rng = np.random.default_rng(1)
    lat = rng.uniform(-89.9, 89.9, 500)
    lon = rng.uniform(-180, 180, 500)
    h = rng.uniform(-500, 9000, 500)
    ours = geodesy.geodetic_to_ecef(lat, lon, h)
    tr = Transformer.from_crs('EPSG:4979', 'EPSG:4978', always_xy=True)
    ref = np.stack(tr.transform(lon, lat, h), axis=-1)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    la, lo, hh = geodesy.ecef_to_geodetic(ref)
    np.testing.assert_allclose(la, lat, atol=1e-9)
    np.testing.assert_allclose(lo, lon, atol=1e-9)
    np.testing.assert_allclose(hh, h, atol=1e-4)


@pytest.mark.parametrize('h', [-1000.0, 0.0, 115.0, 8848.0, 1.0e5, 4.0e6])
def test_geodetic_ecef_round_trip(h):
    lat, lon = np.meshgrid(np.linspace(-90, 90, 73), np.linspace(-179.5, 180, 80), indexing='ij')
    xyz = geodesy.geodetic_to_ecef(lat, lon, h)
    assert xyz.shape == lat.shape + (3,)
    la, lo, hh = geodesy.ecef_to_geodetic(xyz)
    assert np.max(np.abs(la - lat)) < 1e-9
    assert np.max(np.abs(hh - h)) < 1e-4
    not_pole = np.abs(lat) < 90
    dlon = (lo - lon + 180) % 360 - 180
    assert np.max(np.abs(dlon[not_pole])) < 1e-9


def test_ecef_to_geodetic_rejects_bad_shape():
    with pytest.raises(ValueError, match=r'\(\.\.\., 3\)'):
        geodesy.ecef_to_geodetic(np.zeros((4, 2)))


def test_enu_curvature_drop_east_and_north():
    """A point on the ellipsoid 1 km east / north of the datum lies d^2 / (2 R) below ENU z = 0."""
    lat0 = 49.0
    f = EnuFrame(lat0, 8.4, 0.0)
    for axis, radius in ((0, _prime_vertical_radius(lat0)), (1, _meridian_radius(lat0))):
        p = np.zeros(3)
        p[axis] = 1000.0
        lat, lon, _ = f.enu_to_geodetic(p)
        enu = f.geodetic_to_enu(lat, lon, 0.0)  # same horizontal position, on the ellipsoid
        drop = -1000.0 ** 2 / (2 * radius)
        assert abs(enu[2] - drop) < 1e-6, (axis, enu, drop)
        assert abs(drop + 0.0782) < 0.0005  # ~7.8 cm
        assert abs(enu[axis] - 1000.0) < 1e-4
        assert abs(enu[1 - axis]) < 1e-6


def test_enu_axes_and_round_trip():
    f = EnuFrame(-33.9, 151.2, 40.0)
    r = f.R_enu_to_ecef
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-15)
    assert abs(np.linalg.det(r) - 1) < 1e-12
    # up = straight above the datum, north = towards larger latitude, east = larger longitude
    np.testing.assert_allclose(f.geodetic_to_enu(-33.9, 151.2, 50.0), [0, 0, 10.0], atol=1e-8)
    e = f.geodetic_to_enu(-33.9, 151.2 + 1e-5, 40.0)
    n = f.geodetic_to_enu(-33.9 + 1e-5, 151.2, 40.0)
    assert e[0] > 0.9 and abs(e[1]) < 1e-6 and n[1] > 1.0 and abs(n[0]) < 1e-9
    rng = np.random.default_rng(2)
    p = rng.uniform(-5000, 5000, (100, 3))
    np.testing.assert_allclose(f.ecef_to_enu(f.enu_to_ecef(p)), p, atol=1e-8)
    lat, lon, h = f.enu_to_geodetic(p)
    np.testing.assert_allclose(f.geodetic_to_enu(lat, lon, h), p, atol=1e-6)
    # direction vectors rotate without translation
    np.testing.assert_allclose(f.vector_enu_to_ecef([0, 0, 1]), r[:, 2], atol=1e-15)


def test_enu_rotation_is_vectorised():
    rot = geodesy.enu_rotation(np.array([0.0, 45.0, 90.0]), np.array([0.0, 10.0, 20.0]))
    assert rot.shape == (3, 3, 3)
    np.testing.assert_allclose(rot[0], [[0, 0, 1], [1, 0, 0], [0, 1, 0]], atol=1e-15)


@pytest.mark.parametrize('bad', [dict(lat0_deg=91.0, lon0_deg=0.0), dict(lat0_deg=float('nan'), lon0_deg=0.0),
                                 dict(lat0_deg=0.0, lon0_deg=0.0, h0_m=float('inf')),
                                 dict(lat0_deg='49', lon0_deg=8.0)])
def test_enu_frame_validation(bad):
    with pytest.raises(ValueError, match='EnuFrame'):
        EnuFrame(**bad)


def _gtx_undulation(lat: float, lon: float) -> float:
    """EGM96 undulation read straight from the grid file (bilinear between its nodes)."""
    import rasterio

    with rasterio.open(EGM96_GTX) as ds:
        grid = ds.read(1).astype(np.float64)
        t = ds.transform
        col, row = (lon - t.c) / t.a, (lat - t.f) / t.e
    c, r = col - 0.5, row - 0.5  # node centres at integers
    i, j = int(math.floor(r)), int(math.floor(c))
    wr, wc = r - i, c - j
    top = grid[i, j] * (1 - wc) + grid[i, j + 1] * wc
    bot = grid[i + 1, j] * (1 - wc) + grid[i + 1, j + 1] * wc
    return float(top * (1 - wr) + bot * wr)


@needs_egm96
@pytest.mark.parametrize('lat, lon, lo, hi', [(49.0, 8.4, 47.5, 49.0),  # Karlsruhe
                                              (0.0, 0.0, 17.0, 17.3),  # Gulf of Guinea: +17.16 m
                                              (4.75, 78.75, -108.0, -104.0),  # Indian Ocean low
                                              (27.99, 86.93, -35.0, -20.0)])  # Everest
def test_egm96_undulation_matches_the_grid(lat, lon, lo, hi):
    n = float(geodesy.geoid_undulation(lat, lon, 'egm96'))
    assert lo < n < hi, n
    assert abs(n - _gtx_undulation(lat, lon)) < 2e-3, (n, _gtx_undulation(lat, lon))


@needs_egm96
def test_egm96_height_conversions():
    lat = np.array([49.0, 0.0, 49.02])
    lon = np.array([8.4, 0.0, 8.41])
    orth = np.array([100.0, 0.0, np.nan])
    h = geodesy.to_ellipsoidal(lat, lon, orth, 'EGM96')
    n = geodesy.geoid_undulation(lat, lon, 'egm96')
    np.testing.assert_allclose(h[:2], orth[:2] + n[:2], atol=1e-9)
    assert h[0] > 147.5  # ellipsoidal = orthometric + ~48 m at Karlsruhe (the sign matters)
    assert np.isnan(h[2])
    np.testing.assert_allclose(geodesy.from_ellipsoidal(lat, lon, h, 'egm96')[:2], orth[:2], atol=1e-9)
    np.testing.assert_allclose(geodesy.convert_height(lat, lon, orth, 'egm96', 'ellipsoid')[:2],
                               h[:2], atol=1e-9)
    # pyproj's own transformation (with the grid dir added) agrees
    from pyproj import Transformer

    tr = Transformer.from_crs('EPSG:4326+5773', 'EPSG:4979', always_xy=True)
    _, _, h_ref = tr.transform(8.4, 49.0, 100.0)
    assert abs(h_ref - h[0]) < 1e-6
    assert geodesy.datum_available('egm96')


def test_ellipsoid_datum_is_identity_and_aliases():
    for name in ('ellipsoid', 'WGS84', 'ellipsoidal', 'EPSG:4979'):
        assert geodesy.canonical_datum(name) == 'ellipsoid'
        np.testing.assert_array_equal(geodesy.to_ellipsoidal([1.0, 2.0], [3.0, 4.0], [5.0, 6.0], name),
                                      [5.0, 6.0])
    assert geodesy.vertical_datum_crs('egm2008') == 'EPSG:3855'
    assert geodesy.vertical_datum_crs('epsg:5773') == 'EPSG:5773'


@pytest.mark.parametrize('name', ['egm97', '', 'EPSG:32632', 'EPSG:999999', 7])
def test_unknown_or_non_vertical_datum_is_refused(name):
    with pytest.raises(VerticalDatumError):
        geodesy.to_ellipsoidal(49.0, 8.4, 100.0, name)


def test_missing_geoid_grid_raises_instead_of_returning_zero():
    """EGM2008's grid is not in proj-data: the conversion must fail loudly, naming it."""
    if geodesy.datum_available('egm2008'):
        pytest.skip('an EGM2008 grid is installed here; nothing missing to detect')
    with pytest.raises(VerticalDatumError, match=r"(?s)'egm2008'.*EPSG:3855.*egm08"):
        geodesy.to_ellipsoidal(49.0, 8.4, 100.0, 'egm2008')
    with pytest.raises(ValueError):  # VerticalDatumError is a ValueError (config error)
        geodesy.geoid_undulation(49.0, 8.4, 'egm2008')
    with pytest.raises(VerticalDatumError, match='egm2008'):
        geodesy.require_datum('egm2008')


def test_regional_datum_without_grid_is_refused():
    """DHHN2016 heights (EPSG:7837, Germany) need the BKG GCG2016 grid, not in proj-data."""
    if geodesy.datum_available('EPSG:7837'):
        pytest.skip('GCG2016 grid installed here')
    with pytest.raises(VerticalDatumError, match=r'(?s)EPSG:7837.*gcg2016'):
        geodesy.to_ellipsoidal(49.0, 8.4, 100.0, 'EPSG:7837')
