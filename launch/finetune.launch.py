"""Launch one offline fine-tuning job (the hr_depth_finetune node), which exits when done.

    ros2 launch hr_depth_ros finetune.launch.py bag:=/data/drive1 output_dir:=/data/finetuned \
        [params_file:=my_finetune.yaml]

``bag`` (one bag; give several through ``bags`` in params_file) and ``output_dir`` override
params_file when not empty (default params_file: the installed config/finetune.yaml).
"""
from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'hr_depth_ros'
NODE_NAME = 'hr_depth_finetune'


def _finetune_node(context, *args, **kwargs):
    """The node with the non-empty launch arguments overriding the params file."""
    overrides = {}
    bag = LaunchConfiguration('bag').perform(context)
    if bag:
        overrides['bags'] = [bag]
    output_dir = LaunchConfiguration('output_dir').perform(context)
    if output_dir:
        overrides['output_dir'] = output_dir
    return [Node(
        package=PACKAGE,
        executable='finetune_node',
        name=NODE_NAME,
        output='screen',
        emulate_tty=True,
        parameters=[LaunchConfiguration('params_file'), overrides],
    )]


def generate_launch_description() -> LaunchDescription:
    """bag, output_dir, params_file."""
    return LaunchDescription([
        DeclareLaunchArgument('bag', default_value='', description='rosbag to train on (empty: bags in params_file)'),
        DeclareLaunchArgument('output_dir', default_value='', description='output folder (empty: params_file)'),
        DeclareLaunchArgument(
            'params_file',
            default_value=os.path.join(get_package_share_directory(PACKAGE), 'config', 'finetune.yaml'),
            description='node parameters (YAML, hr_depth_finetune: ros__parameters:)'),
        OpaqueFunction(function=_finetune_node),
    ])
