"""Synthetic outdoor world with exact ground truth (ROS-free; see synth/generate.py).

Modules:
    config     SynthConfig: every option with units, ranges and defaults
    geo        WGS84 / UTM / local ENU conversions and geoid heights via pyproj (independent of
               the node's own core.geodesy, so tests can check one against the other)
    world      analytic terrain, terrain changes, objects, the triangle mesh, the DEM raster
    motion     vehicle trajectory, IMU and GNSS samples (with noise, bias, gaps)
    render     Open3D ray casting of the stereo pair and the per-pixel truth
    generate   one call that writes the rosbag2, DEM GeoTIFF, truth and params of a world
"""
