"""Launch the hr_depth depth node (and optionally rviz2).

    ros2 launch hr_depth_ros depth.launch.py image:=/camera/image_raw \
        camera_info:=/camera/camera_info weights:=/path/to/HR_Depth_K_M_1280x384 use_rviz:=true

Arguments left empty (weights, device, image_transport, depth_scale, adapt) keep the value from
``params_file`` (default: the installed config/depth.yaml).

The node is a managed (lifecycle) node. ``autostart:=true`` (default) makes it configure and
activate itself, so it publishes as soon as it runs; ``autostart:=false`` leaves it unconfigured
for a lifecycle manager (``ros2 lifecycle set /hr_depth configure`` / ``activate``).

``use_rviz:=true`` starts rviz2 with config/depth.rviz; where rviz2 is not installed (no ``rviz2``
package in the sourced ROS environment) it logs a warning saying so and runs the depth node alone.

Transport: unless FASTDDS_DEFAULT_PROFILES_FILE is already set in the environment, it is set
to the shipped config/fastdds_large_data.xml for the processes started here. Without that
profile Fast DDS silently drops images and clouds over ~0.5 MB; the camera driver and any
other subscriber need the same variable (see the README's troubleshooting section).
"""
from __future__ import annotations

import os

from ament_index_python.packages import PackageNotFoundError, get_package_prefix, get_package_share_directory
import launch.logging
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = 'hr_depth_ros'
# Launch argument -> node parameter of the same name and its type; passed only when not empty.
NODE_PARAMETER_ARGUMENTS = {
    'weights': str,
    'device': str,
    'image_transport': str,
    'depth_scale': float,
    'autostart': bool,
    'adapt': bool,
}


def _share(*parts: str) -> str:
    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def _depth_node(context, *args, **kwargs):
    """The node, with only the non-empty parameter arguments overriding the params file."""
    overrides = {}
    for name, value_type in NODE_PARAMETER_ARGUMENTS.items():
        if LaunchConfiguration(name).perform(context) != '':
            # A substitution, not the performed string: ParameterValue refuses a str for bool/float.
            overrides[name] = ParameterValue(LaunchConfiguration(name), value_type=value_type)
    image = LaunchConfiguration('image').perform(context)
    camera_info = LaunchConfiguration('camera_info').perform(context)
    return [Node(
        package=PACKAGE,
        executable='depth_node',
        name='hr_depth',
        output='screen',
        emulate_tty=True,
        # Unloading torch + OpenVINO after Ctrl-C took 6-12 s on a saturated 2-core machine: more than
        # launch's default 5 s before SIGTERM. `sigterm_timeout:=N` on the command line still wins.
        sigterm_timeout=LaunchConfiguration('sigterm_timeout', default='15'),
        parameters=[LaunchConfiguration('params_file'), overrides],
        remappings=[
            ('image', image),
            ('image/compressed', image + '/compressed'),
            ('camera_info', camera_info),
        ],
    )]


def _rviz(context, *args, **kwargs):
    """rviz2 with config/depth.rviz, or a warning when rviz2 is not installed (the node runs anyway)."""
    try:
        get_package_prefix('rviz2')
    except PackageNotFoundError:
        launch.logging.get_logger('launch').warning(
            'use_rviz:=true but rviz2 is not installed (no rviz2 package in AMENT_PREFIX_PATH): '
            'running the depth node without rviz2')
        return []
    return [Node(
        package='rviz2',
        executable='rviz2',
        name='rviz2',
        arguments=['-d', _share('config', 'depth.rviz')],
    )]


def generate_launch_description() -> LaunchDescription:
    """image, camera_info, weights, device, image_transport, params_file, use_rviz, depth_scale, autostart, adapt."""
    return LaunchDescription([
        DeclareLaunchArgument('image', default_value='image', description='input image topic'),
        DeclareLaunchArgument('camera_info', default_value='camera_info', description='input camera_info topic'),
        DeclareLaunchArgument('weights', default_value='',
                              description='checkpoint folder (required unless set in params_file)'),
        DeclareLaunchArgument('device', default_value='', description='auto | cuda | cpu (empty: params_file)'),
        DeclareLaunchArgument('image_transport', default_value='',
                              description='raw | compressed (subscribes <image>/compressed); empty: params_file'),
        DeclareLaunchArgument('depth_scale', default_value='',
                              description='metric scale, 5.4 for stereo-trained checkpoints (empty: params_file)'),
        DeclareLaunchArgument('autostart', default_value='true',
                              description='configure and activate the lifecycle node on start-up (true | false)'),
        DeclareLaunchArgument('adapt', default_value='',
                              description='online adaptation with the poses from /tf (true | false; empty: params_file, '
                                          'default false)'),
        DeclareLaunchArgument('params_file', default_value=_share('config', 'depth.yaml'),
                              description='node parameters (YAML, hr_depth: ros__parameters:)'),
        DeclareLaunchArgument('use_rviz', default_value='false', description='start rviz2 with config/depth.rviz'),
        SetEnvironmentVariable(
            'FASTDDS_DEFAULT_PROFILES_FILE',
            EnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE',
                                default_value=_share('config', 'fastdds_large_data.xml'))),
        OpaqueFunction(function=_depth_node),
        OpaqueFunction(function=_rviz, condition=IfCondition(LaunchConfiguration('use_rviz'))),
    ])
