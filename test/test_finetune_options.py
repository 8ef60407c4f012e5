"""The fine-tuning option table: every field reachable, CLI and node generated from it, one edit adds an option."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from pathlib import Path

import pytest
import yaml

from hr_depth_ros.tools import finetune
from hr_depth_ros.core.training import options
from hr_depth_ros.core.training.options import option
from hr_depth_ros.core.training.trainer import DEFAULT_STEPS, TrainingConfig

REPO = Path(__file__).resolve().parents[1]
YAML_FILE = REPO / 'config' / 'finetune.yaml'

# Spellings users have today: they must stay.
CLI_FLAGS = {'--bag', '--output', '--image-topic', '--camera-info-topic', '--intrinsics', '--gt-depth-topic', '--arch',
             '--init', '--encoder-weights', '--teacher', '--distill-weight', '--steps', '--epochs', '--batch-size',
             '--width', '--height', '--lr', '--device', '--no-amp', '--resume', '--overwrite', '--max-pixels',
             '--num-workers', '--frame-cache', '--prepare-workers', '--seed', '--deterministic', '--val-every',
             '--save-every', '--freeze-encoder-epochs', '--freeze-bn', '--pose-source', '--odom-frame',
             '--camera-frame', '--max-tf-gap', '--metric-scale', '--pose-lr', '--pose-warmup-steps',
             '--frame-stride', '--min-motion', '--val-fraction', '--quiet'}
NODE_PARAMETERS = {'bags', 'output_dir', 'image_topic', 'camera_info_topic', 'intrinsics', 'gt_depth_topic', 'arch',
                   'init_weights', 'encoder_weights', 'teacher', 'distill_weight', 'width', 'height', 'batch_size',
                   'steps', 'epochs', 'lr', 'device', 'amp', 'num_workers', 'seed', 'val_every', 'save_every',
                   'freeze_encoder_epochs', 'pose_source', 'odom_frame', 'camera_frame', 'max_tf_gap',
                   'metric_scale', 'pose_lr', 'pose_warmup_steps', 'freeze_bn', 'min_motion', 'val_fraction',
                   'resume', 'overwrite', 'max_pixels', 'progress_period', 'nproc', 'frame_cache', 'prepare_workers'}


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / 'scripts' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parser(config_class: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    options.add_arguments(parser, config_class)
    return parser


def test_every_field_is_reachable_from_the_cli_and_the_node_or_internal_with_a_reason():
    specs = {spec.name: spec for spec in options.options(TrainingConfig)}
    assert set(specs) == {f.name for f in dataclasses.fields(TrainingConfig)}
    internal = {name for name, spec in specs.items() if spec.internal}
    assert internal == {'progress_bar'}
    for name, spec in specs.items():
        if spec.internal:
            assert len(spec.internal) > 20 and spec.flag is None and spec.parameter is None, name
            continue
        assert spec.help, f'{name} has no help'
        assert spec.flag and spec.parameter, f'{name}: flag {spec.flag}, parameter {spec.parameter}'
        if spec.default is None and not spec.required and spec.nargs is None and spec.fallback is None:
            assert spec.unset is not None, f'{name} can be None but the node has no value standing for it'
    flags = [spec.flag for spec in specs.values() if spec.flag]
    names = [spec.parameter for spec in specs.values() if spec.parameter]
    assert len(set(flags)) == len(flags) and len(set(names)) == len(names)


def test_a_field_without_an_option_is_refused():
    @dataclasses.dataclass
    class Bare(TrainingConfig):
        forgotten: int = 3

    with pytest.raises(TypeError, match='forgotten'):
        options.options(Bare)


def test_cli_keeps_its_flags_and_defaults():
    parser = finetune.build_parser()
    assert CLI_FLAGS <= set(parser._option_string_actions)
    parse = parser.parse_args
    assert finetune.config_from_args(parse(['--bag', 'b', '--output', 'o'])) == TrainingConfig(
        bags=['b'], output='o', steps=DEFAULT_STEPS)
    config = finetune.config_from_args(parse(['--bag', 'a', '--bag', 'b*', '--output', 'o', '--epochs', '2',
                                              '--no-amp', '--camera-info-topic', '', '--intrinsics', '1', '2', '3',
                                              '4', '--init', 'ckpt', '--freeze-bn']))
    assert (config.bags, config.epochs, config.steps, config.amp) == (['a', 'b*'], 2, None, False)
    assert (config.camera_info_topic, config.intrinsics, config.init, config.freeze_bn) == (
        None, [1.0, 2.0, 3.0, 4.0], 'ckpt', True)
    assert finetune.config_from_args(parse(['--bag', 'b', '--output', 'o', '--steps', '7'])).steps == 7
    for bad in (['--output', 'o'], ['--bag', 'b', '--output', 'o', '--steps', '1', '--epochs', '1'],
                ['--bag', 'b', '--output', 'o', '--arch', 'nope']):
        with pytest.raises(SystemExit):
            parse(bad)
    assert parse(['--bag', 'b', '--output', 'o', '--quiet']).quiet


def test_every_setting_goes_through_the_command_line_unchanged():
    config = TrainingConfig(bags=['/a', '/b'], output='/o', gt_depth_topic='/gt', camera_info_topic=None,
                            intrinsics=[1.0, 2.0, 3.0, 4.0], init='/i', encoder_weights='/e', teacher='/t',
                            distill_weight=0.5, epochs=2, scheduler_step_epochs=3, scheduler_gamma=0.5, min_depth=0.2,
                            max_depth=80.0, smoothness_weight=0.01, pose_warmup_steps=0, camera_frame='cam',
                            pose_lr=1e-3, metric_scale=3.0, deterministic=True, amp=False, log_every=2,
                            max_val_samples=9, frame_stride=2, max_gap_factor=3.0, val_block_frames=7, augment=False)
    assert finetune.config_from_args(finetune.build_parser().parse_args(finetune.args_from_config(config))) == config


def test_node_keeps_its_parameter_names_and_maps_unset_values_to_none():
    table = {p.name: p.default for p in options.node_parameters(TrainingConfig)}
    assert NODE_PARAMETERS <= set(table)
    values = {**table, 'bags': ['b', ''], 'output_dir': 'o'}
    config = options.config_from_parameters(values, TrainingConfig, progress_bar=False)
    assert config == TrainingConfig(bags=['b'], output='o', steps=DEFAULT_STEPS, progress_bar=False)
    config = options.config_from_parameters({**values, 'epochs': 3, 'metric_scale': 2.0, 'pose_warmup_steps': 5,
                                             'intrinsics': [1.0, 2.0, 3.0, 4.0], 'init_weights': 'ckpt',
                                             'lr': 1}, TrainingConfig)
    assert (config.epochs, config.steps, config.metric_scale, config.pose_warmup_steps) == (3, None, 2.0, 5)
    assert (config.intrinsics, config.init, config.lr) == ([1.0, 2.0, 3.0, 4.0], 'ckpt', 1.0)
    assert isinstance(config.lr, float)
    with pytest.raises(ValueError, match="parameter 'bags' is empty"):
        options.config_from_parameters({**values, 'bags': None}, TrainingConfig)
    with pytest.raises(ValueError, match="parameter 'output_dir' is empty"):
        options.config_from_parameters({**values, 'output_dir': ''}, TrainingConfig)


def test_yaml_is_the_generated_one():
    assert YAML_FILE.read_text() == options.yaml_text(TrainingConfig), (
        'config/finetune.yaml is out of date: run python scripts/finetune_yaml.py --write')
    assert _load_script('finetune_yaml').finetune_yaml() == YAML_FILE.read_text()


# -- adding an option: one field ------------------------------------------------------------------------
@dataclasses.dataclass
class Extended(TrainingConfig):
    warp_factor: float = option(2.0, help='how far to warp')


def test_adding_an_option_is_one_edit():
    # command line
    parser = _parser(Extended)
    args = parser.parse_args(['--bag', 'b', '--output', 'o', '--warp-factor', '3.5'])
    config = options.config_from_args(args, Extended)
    assert config.warp_factor == 3.5 and config.steps == DEFAULT_STEPS
    assert options.config_from_args(parser.parse_args(options.args_from_config(config)), Extended) == config
    # node parameters, their mapping, the YAML and the README table
    table = {p.name: p for p in options.node_parameters(Extended)}
    assert table['warp_factor'].default == 2.0 and table['warp_factor'].description == 'how far to warp'
    values = {**{name: p.default for name, p in table.items()}, 'bags': ['b'], 'output_dir': 'o', 'warp_factor': 0.5}
    assert options.config_from_parameters(values, Extended).warp_factor == 0.5
    text = options.yaml_text(Extended)
    assert yaml.safe_load(text)[options.NODE_NAME]['ros__parameters']['warp_factor'] == 2.0
    assert text != YAML_FILE.read_text()  # the drift check would ask for the file to be regenerated
    assert '| `warp_factor` | `--warp-factor` | `2.0` | how far to warp |' in options.markdown_table(Extended)


def test_the_node_declares_the_table_and_builds_the_config():
    rclpy = pytest.importorskip('rclpy')
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from hr_depth_ros.ros.finetune_node import FinetuneNode

    context = Context()
    rclpy.init(context=context)
    try:
        node = FinetuneNode(Extended, context=context, parameter_overrides=[
            Parameter('bags', value=['/b']), Parameter('output_dir', value='/o'),
            Parameter('warp_factor', value=4.0), Parameter('epochs', value=2)])
        try:
            declared = set(node._parameters)
            assert {p.name for p in options.node_parameters(Extended)} <= declared
            config = node.config()
            assert isinstance(config, Extended) and config.warp_factor == 4.0 and config.bags == ['/b']
            assert (config.epochs, config.steps, config.progress_bar, config.intrinsics) == (2, None, False, None)
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_limits_from_the_table_are_checked_and_described():
    from hr_depth_ros.core.training.trainer import TrainingError

    specs = {spec.name: spec for spec in options.options(TrainingConfig)}
    assert specs['save_every'].limits == '>= 1' and '(>= 1)' in specs['save_every'].description
    assert specs['val_fraction'].limits == '0.0 .. 1.0'
    options.check_limits(TrainingConfig(bags=['b'], output='o', steps=1))
    # Limits, choices and list lengths: declared once in the table, checked by check_limits (validate has no copy).
    for name, value in (('save_every', 0), ('val_fraction', 1.5), ('frame_stride', 0), ('seed', -1), ('steps', 0),
                        ('batch_size', 0), ('width', 32), ('num_workers', -1), ('arch', 'resnet'),
                        ('pose_source', 'gps'), ('intrinsics', [1.0, 2.0])):
        config = TrainingConfig(**{'bags': ['b'], 'output': 'o', 'steps': 1, name: value})
        with pytest.raises(ValueError, match=name):
            options.check_limits(config)
        with pytest.raises(TrainingError, match=name):
            config.validate()
