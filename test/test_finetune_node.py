"""The fine-tuning node: parameter table vs config/finetune.yaml, end-to-end job over DDS (test_launch runs
finetune.launch.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hr_depth_ros.ros.finetune_node import parameter_table
from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag
from hr_depth_ros.ros.transport import local_ros_env

REPO = Path(__file__).resolve().parents[1]
YAML_FILE = REPO / 'config' / 'finetune.yaml'
NODE_NAME = 'hr_depth_finetune'


def test_yaml_matches_parameter_table():
    params = yaml.safe_load(YAML_FILE.read_text())[NODE_NAME]['ros__parameters']
    table = {p.name: p for p in parameter_table()}
    lists = {name for name, p in table.items() if p.default is None}
    assert lists == {'bags', 'intrinsics'}
    assert set(params) == set(table) - lists, set(params) ^ (set(table) - lists)
    for name, value in params.items():
        default = table[name].default
        assert type(value) is type(default) and value == default, f'{name}: yaml {value!r} != code {default!r}'
        assert table[name].description, f'{name} has no description'


def test_node_defaults_match_the_cli():
    """A job started with the node's default parameters (config/finetune.yaml) is the job the command line
    runs without optional flags: the same TrainingConfig, through the two independent mappings."""
    from hr_depth_ros.core.training import options
    from hr_depth_ros.core.training.trainer import TrainingConfig
    from hr_depth_ros.tools.finetune import build_parser, config_from_args

    cli = config_from_args(build_parser().parse_args(['--bag', 'b', '--output', 'o']))
    params = yaml.safe_load(YAML_FILE.read_text())[NODE_NAME]['ros__parameters']
    node = options.config_from_parameters({**params, 'bags': ['b'], 'output_dir': 'o'}, TrainingConfig)
    assert node == cli
    assert cli.steps is not None and cli.epochs is None and cli.camera_info_topic == 'auto'  # chosen from the bag


@pytest.fixture(scope='module')
def tiny_bag(tmp_path_factory) -> Path:
    return write_synthetic_bag(tmp_path_factory.mktemp('node') / 'drive', frames=16, width=256, height=96, seed=2)


def _node_command(bag: str, output: Path, *extra: str) -> list[str]:
    return [sys.executable, '-m', 'hr_depth_ros.ros.finetune_node', '--ros-args', '--params-file', str(YAML_FILE),
            '-p', f"bags:=['{bag}']", '-p', f'output_dir:={output}', '-p', 'steps:=3', '-p', 'width:=128',
            '-p', 'height:=64', '-p', 'batch_size:=2', '-p', 'device:=cpu', '-p', 'progress_period:=0.0',
            '-p', 'val_fraction:=0.0', *extra]


def test_node_runs_a_job_and_publishes_progress(tiny_bag, tmp_path):
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    env = local_ros_env()
    context = Context()
    rclpy.init(context=context, domain_id=int(env['ROS_DOMAIN_ID']))
    received: list[dict] = []
    try:
        listener = rclpy.create_node('finetune_listener', context=context)
        listener.create_subscription(String, f'/{NODE_NAME}/progress', lambda m: received.append(json.loads(m.data)), 50)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(listener)
        output = tmp_path / 'out'
        log = tmp_path / 'node.log'
        with open(log, 'w') as handle:
            proc = subprocess.Popen(_node_command(str(tiny_bag), output), env=env, stdout=handle,
                                    stderr=subprocess.STDOUT, cwd=REPO)
            deadline = time.monotonic() + 150
            while proc.poll() is None and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.1)
            if proc.poll() is None:
                proc.kill()
                pytest.fail(f'node did not finish in time; log:\n{log.read_text()}')
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        listener.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert 'fine-tuning done at step 3' in text
    assert json.loads((output / 'latest' / 'hr_depth_ros.json').read_text())['step'] == 3
    states = [m['state'] for m in received]
    assert 'training' in states and states[-1] == 'done', received
    steps = [m['step'] for m in received if m['state'] == 'training']
    assert steps[-1] == 3 and all(m['total'] == 3 and 'eta_s' in m and 'loss' in m
                                  for m in received if m['state'] == 'training')


def test_node_fails_with_reason(tmp_path):
    output = tmp_path / 'out'
    result = subprocess.run(_node_command(str(tmp_path / 'no_such_bag'), output), env=local_ros_env(),
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 1
    assert 'fine-tuning failed' in result.stderr + result.stdout and 'no_such_bag' in result.stderr + result.stdout
    assert not output.exists()


def test_node_unwritable_output_is_one_line_exit_2(tiny_bag, tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    result = subprocess.run(_node_command(str(tiny_bag), blocker / 'out'), env=local_ros_env(),
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    text = result.stderr + result.stdout
    assert result.returncode == 2, text
    failures = [line for line in text.splitlines() if 'fine-tuning failed' in line]
    assert len(failures) == 1 and f'cannot write {blocker}' in failures[0] and 'Not a directory' in failures[0]


def test_node_launches_the_job_through_torchrun_when_asked(tiny_bag, tmp_path):
    output = tmp_path / 'out'
    env = {**local_ros_env(), 'OMP_NUM_THREADS': '1', 'MASTER_ADDR': '127.0.0.1'}
    result = subprocess.run(_node_command(str(tiny_bag), output, '-p', 'nproc:=2', '-p', 'pose_source:=net'),
                            env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    text = result.stderr + result.stdout
    assert result.returncode == 0, text
    assert 'fine-tuning done at step 3' in text and '2 processes (DistributedDataParallel)' in text
    meta = json.loads((output / 'latest' / 'hr_depth_ros.json').read_text())
    assert meta['world_size'] == 2 and meta['samples_seen'] == 3 * 2 * 2
