"""pip install of the pure-Python part of geo_depth_node (for machines without ROS).

The ROS build is CMakeLists.txt (ament_cmake): it also generates the messages.
`pip install -e .` gives the ROS-free core and the `geo-depth` tool; the ROS
shell (geo_depth_node.ros) additionally needs rclpy and the built messages.
"""
from setuptools import setup

setup(
    name='geo_depth_node',
    version='0.1.0',
    packages=['geo_depth_node', 'geo_depth_node.core', 'geo_depth_node.ros', 'geo_depth_node.synth',
              'geo_depth_node.tools'],
    python_requires='>=3.10',
    entry_points={
        'console_scripts': [
            'geo-depth = geo_depth_node.cli:main',
        ],
    },
)
