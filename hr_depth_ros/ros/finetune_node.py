"""ROS 2 node ``hr_depth_finetune``: runs one offline fine-tuning job from rosbags, then exits.

    ros2 run hr_depth_ros finetune_node --ros-args --params-file config/finetune.yaml \
        -p bags:="['/data/drive1']" -p output_dir:=/data/finetuned

Parameters: one per option of the ``finetune`` CLI, both generated from the option table of
``TrainingConfig`` (:mod:`hr_depth_ros.core.training.options`; defaults in config/finetune.yaml), plus
``progress_period`` and ``nproc``.
Progress is published on ``~/progress`` (std_msgs/String, JSON: state, step, total, epoch, loss,
eta_s, samples_per_s, best_val and, after a validation, its metrics) and logged through the node
logger. With ``nproc`` > 1 the node stays one process and runs the same job through ``torchrun
--standalone`` (PyTorch DistributedDataParallel on ``nproc`` local processes, one GPU each on CUDA;
``batch_size`` is per process): rank 0's log lines go to the node logger, ``~/progress`` says
starting / training / done / failed (no per-step figures: they stay in metrics.csv).
Exit code 0 when the job finished, 1 with the reason logged when it failed, 2 when the
output folder cannot be written (read-only, full disk, permissions; one line naming the path).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import String

from hr_depth_ros.core.training import options

__all__ = ['FinetuneNode', 'parameter_table', 'main', 'FINETUNE_MODULE']

# What torchrun starts for nproc > 1: the ROS-free finetune command line, as a process (not an import).
FINETUNE_MODULE = 'hr_depth_ros.tools.finetune'


# A list parameter (default None in the table) is declared by its type: rclpy cannot infer one from
# an empty array, and a list never set reads as None.
_LIST_TYPES = {str: Parameter.Type.STRING_ARRAY, float: Parameter.Type.DOUBLE_ARRAY,
               int: Parameter.Type.INTEGER_ARRAY, bool: Parameter.Type.BOOL_ARRAY}


def parameter_table(config_class: type | None = None) -> tuple[options.NodeParameter, ...]:
    """The node's parameters, generated from ``config_class`` (default: TrainingConfig)."""
    return options.node_parameters(config_class or _training_config())


def _training_config() -> type:
    from hr_depth_ros.core.training.trainer import TrainingConfig

    return TrainingConfig


class FinetuneNode(Node):
    """Declares the parameters (one per option of ``config_class``), publishes progress; :meth:`run` does the job."""

    def __init__(self, config_class: type | None = None, **kwargs: Any) -> None:
        super().__init__('hr_depth_finetune', **kwargs)  # options.NODE_NAME: the YAML's key
        self.config_class = config_class or _training_config()
        lists = options.list_parameters(self.config_class)
        for parameter in parameter_table(self.config_class):
            descriptor = ParameterDescriptor(name=parameter.name, description=parameter.description,
                                             dynamic_typing=isinstance(parameter.default, float))
            value = _LIST_TYPES[lists[parameter.name]] if parameter.name in lists else parameter.default
            self.declare_parameter(parameter.name, value, descriptor)
        self.progress_pub = self.create_publisher(String, '~/progress', 10)
        self._last_publish = 0.0
        self._last_validation: dict[str, Any] = {}

    def value(self, name: str) -> Any:
        """A parameter's value (None for an array parameter that was never set)."""
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:
            return None

    def config(self):
        """Parameters -> TrainingConfig (ValueError naming the parameter when required ones are empty)."""
        names = [p.name for p in parameter_table(self.config_class)]
        return options.config_from_parameters({name: self.value(name) for name in names}, self.config_class,
                                              progress_bar=False)

    def publish(self, payload: dict[str, Any]) -> None:
        self.progress_pub.publish(String(data=json.dumps(payload, default=str)))

    def on_event(self, event: dict[str, Any]) -> None:
        """Trainer callback: log lines to the node logger, progress (throttled) to ~/progress."""
        kind = event.get('event')
        if kind == 'log':
            self.get_logger().info(event['message'])
        elif kind == 'validation':
            self._last_validation = {k: v for k, v in event.items() if k != 'event'}
        elif kind == 'progress':
            now = time.monotonic()
            last = event['step'] >= event['total']
            if last or now - self._last_publish >= float(self.value('progress_period')):
                self._last_publish = now
                self.publish({'state': 'training', **{k: v for k, v in event.items() if k != 'event'},
                              'validation': self._last_validation})

    def run_torchrun(self, config: Any, nproc: int) -> dict[str, Any]:
        """The job on ``nproc`` processes through torchrun; TrainingError with the failing rank's reason."""
        from hr_depth_ros.core.training.distributed import torchrun_command
        from hr_depth_ros.core.training.trainer import TrainingError

        self.publish({'state': 'training', 'processes': nproc})
        process = subprocess.Popen(torchrun_command(config, nproc, FINETUNE_MODULE), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        errors = []
        for line in process.stderr:
            line = line.rstrip()
            if line.startswith('[finetune] '):
                self.get_logger().info(line[len('[finetune] '):])
            elif line.startswith('finetune'):  # 'finetune (rank N): error: ...'
                errors.append(line)
                self.get_logger().error(line)
        if process.wait() != 0:
            raise TrainingError(errors[0] if errors else f'torchrun exited with code {process.returncode}')
        from hr_depth_ros.core.checkpoint import METADATA_FILE
        from hr_depth_ros.core.training.output import BEST, LATEST

        latest = Path(config.output).expanduser() / LATEST
        meta = json.loads((latest / METADATA_FILE).read_text())
        best = latest.parent / BEST
        return {'step': meta['step'], 'latest': latest, 'best': best if best.is_dir() else None,
                'val': meta.get('metrics', {})}

    def run(self) -> int:
        from hr_depth_ros.core.bags import BagError
        from hr_depth_ros.core.checkpoint import CheckpointError
        from hr_depth_ros.core.training.output import describe_os_error
        from hr_depth_ros.core.training.data_config import DataError
        from hr_depth_ros.core.training.trainer import TrainingError, train

        try:
            config = self.config()
            self.publish({'state': 'starting', 'bags': list(config.bags), 'output': config.output})
            nproc = int(self.value('nproc'))
            result = self.run_torchrun(config, nproc) if nproc > 1 else train(config, callback=self.on_event)
        except (BagError, DataError, CheckpointError, TrainingError, ValueError) as error:
            self.get_logger().error(f'fine-tuning failed: {error}')
            self.publish({'state': 'failed', 'error': str(error)})
            return 1
        except OSError as error:  # read-only, full disk, permissions: one line naming the path
            text = describe_os_error(error, self.value('output_dir'))
            self.get_logger().error(f'fine-tuning failed: {text}')
            self.publish({'state': 'failed', 'error': text})
            return 2
        except Exception as error:  # noqa: BLE001 - reported, never silent
            self.get_logger().error(f'fine-tuning failed: {type(error).__name__}: {error}')
            self.publish({'state': 'failed', 'error': f'{type(error).__name__}: {error}'})
            return 1
        self.publish({'state': 'done', 'step': result['step'], 'latest': str(result['latest']),
                      'best': str(result['best']) if result['best'] else None, 'validation': result['val']})
        self.get_logger().info(f'fine-tuning done at step {result["step"]}: {result["latest"]}')
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    try:
        node = FinetuneNode()
        code = node.run()
        time.sleep(0.3)  # let the last progress message leave
        return code
    except KeyboardInterrupt:
        return 130
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == '__main__':
    sys.exit(main())
