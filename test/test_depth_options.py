"""The depth side's option table: one declaration feeds the node, the tools' flags, the YAML, the README and
the estimator."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import yaml

from golden_weights import golden_checkpoint
from hr_depth_ros.core.depth_options import (NODE_NAME, PARAMETERS, PARAMETERS_BY_NAME, ConfigError, NodeConfig,
                                             add_tool_arguments, depth_markdown_table, depth_yaml, ros_arguments,
                                             tool_values)
from hr_depth_ros.core.visualization import COLORMAPS

REPO = Path(__file__).resolve().parents[1]
# The estimator's settings: the tools' flags (predict, the demo, benchmarks/node_latency.py).
TOOL_OPTIONS = {'device', 'precision', 'channels_last', 'compile', 'backend', 'threads', 'cache_dir', 'calibration',
                'calibration_topic', 'calibration_frames', 'min_depth', 'max_depth', 'depth_scale', 'colormap'}


def tool_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_tool_arguments(parser)
    return parser


def test_every_parameter_has_one_declaration_with_help_and_a_type():
    assert [spec.name for spec in PARAMETERS] == list(NodeConfig.__dataclass_fields__)
    for spec in PARAMETERS:
        assert spec.help and spec.value_type in (bool, int, float, str), spec.name
        assert type(spec.default) is spec.value_type, spec.name
        if spec.choices:
            assert spec.default in spec.choices, spec.name
    assert {spec.name for spec in PARAMETERS if spec.flag} == TOOL_OPTIONS
    # the node's read-only rule, unchanged: what the estimator and the subscriptions were built with
    assert {spec.name for spec in PARAMETERS if spec.read_only} == {
        'weights', 'autostart', 'device', 'precision', 'channels_last', 'compile', 'backend', 'threads', 'cache_dir',
        'calibration', 'calibration_topic', 'calibration_frames', 'min_depth', 'max_depth', 'depth_scale',
        'image_transport', 'qos_reliability', 'qos_depth', 'statistics_period',
        *(spec.name for spec in PARAMETERS if spec.name.startswith('adapt'))}  # online adaptation: read at configure


def test_tool_flags_give_the_node_defaults_except_the_declared_cli_default():
    values = tool_values(tool_parser().parse_args([]))
    assert set(values) == TOOL_OPTIONS
    config = NodeConfig.from_values({**values, 'weights': '/w'})
    defaults = NodeConfig.from_values({'weights': '/w'})
    differing = {name for name in TOOL_OPTIONS if getattr(config, name) != getattr(defaults, name)}
    assert differing == {'precision'} and config.precision == 'fp32' and defaults.precision == 'fp16'


def test_tool_flags_are_the_readme_commands_flags():
    args = tool_parser().parse_args(['--device', 'cpu', '--backend', 'openvino', '--threads', '2', '--precision',
                                     'int8', '--calibration-frames', '8', '--cache-dir', '/c', '--depth-scale', '5.4',
                                     '--cmap', 'turbo', '--no-channels-last', '--compile'])
    values = tool_values(args)
    assert values['device'] == 'cpu' and values['backend'] == 'openvino' and values['threads'] == 2
    assert values['precision'] == 'int8' and values['calibration_frames'] == 8 and values['cache_dir'] == '/c'
    assert values['depth_scale'] == 5.4 and values['colormap'] == 'turbo'
    assert values['channels_last'] is False and values['compile'] is True
    with pytest.raises(SystemExit):
        tool_parser().parse_args(['--precision', 'int4'])  # choices from the table


def test_out_of_range_tool_values_name_the_option():
    for name, value in (('threads', -1), ('calibration_frames', 0), ('depth_scale', 0.0), ('depth_scale', 1e39), ('device', 'tpu')):
        with pytest.raises(ConfigError, match=name):
            NodeConfig.from_values({'weights': '/w', name: value})


def test_ros_arguments_give_the_values_back_to_the_node():
    values = {'weights': '/data/my checkpoint', 'device': 'cpu', 'threads': 2, 'depth_scale': 5.4,
              'calibration': '', 'points_stride': 2, 'channels_last': False, 'qos_reliability': 'reliable'}
    arguments = ros_arguments(values)
    assert arguments[::2] == ['-p'] * (len(arguments) // 2)
    parsed = {}
    for item in arguments[1::2]:
        name, text = item.split(':=', 1)
        parsed[name] = yaml.safe_load(text)  # how rcl reads a -p value
    # the node's defaults are left to its parameter file
    assert parsed == {'weights': '/data/my checkpoint', 'device': 'cpu', 'threads': 2, 'depth_scale': 5.4,
                      'channels_last': False, 'qos_reliability': 'reliable'}
    assert NodeConfig.from_values(parsed).weights == '/data/my checkpoint'


def test_a_moved_option_is_one_declaration_on_every_surface():
    """``colormap``: the node's parameter and predict's --cmap are one declaration."""
    spec = PARAMETERS_BY_NAME['colormap']
    assert spec.flag == '--cmap' and set(spec.choices) == set(COLORMAPS)
    assert tool_values(tool_parser().parse_args(['--cmap', 'viridis']))['colormap'] == 'viridis'
    assert NodeConfig.from_values({'weights': '/w', 'colormap': 'viridis'}).colormap == 'viridis'
    assert yaml.safe_load(depth_yaml())[NODE_NAME]['ros__parameters']['colormap'] == 'magma'
    row = next(line for line in depth_markdown_table().splitlines() if line.startswith('| `colormap` |'))
    assert '`--cmap`' in row and '`magma`' in row and 'viridis' in row


def test_generated_files_are_up_to_date():
    assert (REPO / 'config' / 'depth.yaml').read_text() == depth_yaml()
    assert depth_markdown_table() in (REPO / 'README.md').read_text()


def test_the_estimator_is_built_from_the_config():
    from hr_depth_ros.core.inference import DepthEstimator

    config = NodeConfig.from_values({'weights': '/w', 'device': 'cpu', 'backend': 'torch', 'precision': 'fp32',
                                     'channels_last': False, 'threads': 1, 'min_depth': 0.5, 'max_depth': 50.0,
                                     'depth_scale': 2.0})
    checkpoint = golden_checkpoint('lite_hr_depth', 128, 64)
    estimator = DepthEstimator.from_config(dataclasses.replace(config, weights=checkpoint))  # a loaded one
    assert (estimator.backend, estimator.precision, estimator.channels_last, estimator.threads) == \
        ('torch', 'fp32', False, 1)
    assert (estimator.min_depth, estimator.max_depth, estimator.depth_scale) == (0.5, 50.0, 2.0)
    assert estimator.device.type == 'cpu'
