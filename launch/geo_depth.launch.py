"""Launch geo_depth_node.

    ros2 launch geo_depth_node geo_depth.launch.py namespace:=stereo \
        params_file:=/path/to/geo_depth.yaml use_sim_time:=true

Starts the `geo_depth_node` executable of package `geo_depth_node` with
config/geo_depth.yaml (every parameter, commented) unless params_file says
otherwise, and points Fast DDS at config/fastdds_shm.xml (large shared-memory
segment, so full-size clouds are not dropped) unless FASTDDS_DEFAULT_PROFILES_FILE
is already set. Topics are relative: a namespace applies to inputs and outputs.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory('geo_depth_node')
    default_params = os.path.join(share, 'config', 'geo_depth.yaml')
    default_profile = os.path.join(share, 'config', 'fastdds_shm.xml')
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace of the node and of its relative topics'),
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='ROS 2 params YAML for geo_depth_node'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Use /clock (true when replaying bags)'),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE',
                               EnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE',
                                                   default_value=default_profile)),
        Node(
            package='geo_depth_node',
            executable='geo_depth_node',
            name='geo_depth_node',
            namespace=LaunchConfiguration('namespace'),
            parameters=[LaunchConfiguration('params_file'),
                        {'use_sim_time': LaunchConfiguration('use_sim_time')}],
            output='screen',
            emulate_tty=True,
        ),
    ])
