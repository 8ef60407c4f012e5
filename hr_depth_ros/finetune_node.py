"""ROS 2 node ``hr_depth_finetune``: runs one offline fine-tuning job from rosbags, then exits.

    ros2 run hr_depth_ros finetune_node --ros-args --params-file config/finetune.yaml \
        -p bags:="['/data/drive1']" -p output_dir:=/data/finetuned

Parameters mirror the ``finetune`` CLI (:data:`PARAMETERS`; defaults in config/finetune.yaml).
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

from hr_depth_ros.image_decoding import DEFAULT_MAX_PIXELS

__all__ = ['PARAMETERS', 'FinetuneNode', 'main']



class _Unset:
    """A parameter declared by type only (rclpy cannot infer a type from an empty array)."""

    def __init__(self, parameter_type: Parameter.Type) -> None:
        self.type = parameter_type

    def __repr__(self) -> str:
        return f'<unset {self.type.name}>'


_STRING_ARRAY = _Unset(Parameter.Type.STRING_ARRAY)
_DOUBLE_ARRAY = _Unset(Parameter.Type.DOUBLE_ARRAY)

# name -> (default, description). Array defaults are declared by type (no value = unset).
PARAMETERS: dict[str, tuple[Any, str]] = {
    'bags': (_STRING_ARRAY, 'rosbag2 folders / ROS 1 .bag files to train on (required)'),
    'output_dir': ('', 'output folder: latest/, best/ checkpoints and metrics.csv (required)'),
    'image_topic': ('/camera/image_raw', 'sensor_msgs/Image or CompressedImage topic in the bags'),
    'camera_info_topic': ('/camera/camera_info', 'sensor_msgs/CameraInfo topic (empty: use intrinsics)'),
    'intrinsics': (_DOUBLE_ARRAY, 'fx, fy, cx, cy in pixels when the bags have no camera_info'),
    'gt_depth_topic': ('', 'ground-truth depth topic for validation metrics (empty: none)'),
    'arch': ('lite_hr_depth', 'hr_depth | lite_hr_depth | monodepth2'),
    'init_weights': ('', 'checkpoint folder to start from (empty: random initialisation)'),
    'encoder_weights': ('', 'local ImageNet state dict for the encoders (empty: none)'),
    'teacher': ('', 'checkpoint folder of a distillation teacher (empty: no distillation)'),
    'distill_weight': (1.0, 'weight of the distillation loss'),
    'width': (640, 'training width (multiple of 32)'),
    'height': (192, 'training height (multiple of 32)'),
    'batch_size': (12, 'samples per optimiser step'),
    'steps': (1000, 'total optimiser steps (used when epochs is 0)'),
    'epochs': (0, 'epochs to train (0: use steps)'),
    'lr': (1e-4, 'Adam learning rate'),
    'device': ('auto', 'auto | cuda | cuda:N | cpu'),
    'amp': (True, 'mixed precision on CUDA'),
    'num_workers': (0, 'DataLoader worker processes'),
    'seed': (0, 'random seed'),
    'val_every': (0, 'validate every N steps (0: every epoch)'),
    'save_every': (500, 'save output_dir/latest every N steps'),
    'freeze_encoder_epochs': (0, 'keep the encoder frozen for the first N epochs'),
    'pose_source': ('auto', "camera motion: 'tf' (the bags' odometry; metric depth), 'net' (pose network), "
                            "'auto' (tf when every bag has a TF chain from odom_frame to the camera)"),
    'odom_frame': ('odom', 'fixed frame of the odometry in TF'),
    'camera_frame': ('', "camera optical frame in TF (empty: the images' header.frame_id)"),
    'max_tf_gap': (0.25, 'seconds; frames inside a longer TF silence get no pose and are dropped'),
    'metric_scale': (0.0, 'with TF poses: metres per depth unit of init_weights (0: recorded one, else searched)'),
    'pose_lr': (0.0, 'pose network learning rate (0: max(lr, 1e-4))'),
    'pose_warmup_steps': (-1, 'first N steps train only the pose network (-1: 160 when init_weights has no pose '
                              'network and poses come from it, else 0)'),
    'freeze_bn': (False, "keep the depth encoder's batch-norm statistics fixed"),
    'min_motion': (0.5, 'drop samples whose thumbnails differ less than this (grey levels)'),
    'val_fraction': (0.1, 'fraction of each bag held out (contiguous time blocks) for validation'),
    'resume': (False, 'continue from output_dir/latest'),
    'overwrite': (False, 'replace a previous run in output_dir (otherwise refused)'),
    'max_pixels': (DEFAULT_MAX_PIXELS, 'bag images larger than this (width x height) are skipped as malformed'),
    'progress_period': (1.0, 'minimum seconds between ~/progress messages'),
    'nproc': (1, 'processes: > 1 runs the job through torchrun (DistributedDataParallel; batch_size is per process)'),
    'frame_cache': ('', 'folder of decoded frames reused by later runs and by every process (empty: per run)'),
    'prepare_workers': (0, 'processes decoding bags in parallel (0: one per bag, at most the CPUs and 8)'),
}


class FinetuneNode(Node):
    """Declares the parameters and publishes progress; :meth:`run` does the job."""

    def __init__(self) -> None:
        super().__init__('hr_depth_finetune')
        for name, (default, description) in PARAMETERS.items():
            descriptor = ParameterDescriptor(description=description)
            self.declare_parameter(name, default.type if isinstance(default, _Unset) else default, descriptor)
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
        from hr_depth_ros.training.trainer import TrainingConfig

        bags = [b for b in (self.value('bags') or []) if b]
        if not bags:
            raise ValueError("parameter 'bags' is empty: give at least one bag")
        if not self.value('output_dir'):
            raise ValueError("parameter 'output_dir' is empty")
        intrinsics = self.value('intrinsics')
        epochs = int(self.value('epochs'))
        return TrainingConfig(
            bags=bags, output=self.value('output_dir'), arch=self.value('arch'),
            width=int(self.value('width')), height=int(self.value('height')),
            image_topic=self.value('image_topic'), camera_info_topic=self.value('camera_info_topic') or None,
            gt_depth_topic=self.value('gt_depth_topic') or None,
            intrinsics=list(intrinsics) if intrinsics is not None and len(intrinsics) else None,
            init=self.value('init_weights') or None, encoder_weights=self.value('encoder_weights') or None,
            teacher=self.value('teacher') or None, distill_weight=float(self.value('distill_weight')),
            steps=None if epochs > 0 else int(self.value('steps')), epochs=epochs if epochs > 0 else None,
            batch_size=int(self.value('batch_size')), lr=float(self.value('lr')), device=self.value('device'),
            amp=bool(self.value('amp')), num_workers=int(self.value('num_workers')), seed=int(self.value('seed')),
            val_every=int(self.value('val_every')), save_every=int(self.value('save_every')),
            freeze_encoder_epochs=int(self.value('freeze_encoder_epochs')),
            pose_warmup_steps=None if int(self.value('pose_warmup_steps')) < 0 else int(self.value('pose_warmup_steps')),
            pose_source=self.value('pose_source'), odom_frame=self.value('odom_frame'),
            camera_frame=self.value('camera_frame') or None, max_tf_gap=float(self.value('max_tf_gap')),
            metric_scale=float(self.value('metric_scale')) or None, pose_lr=float(self.value('pose_lr')) or None,
            freeze_bn=bool(self.value('freeze_bn')),
            min_motion=float(self.value('min_motion')), val_fraction=float(self.value('val_fraction')),
            resume=bool(self.value('resume')), overwrite=bool(self.value('overwrite')),
            max_pixels=int(self.value('max_pixels')), progress_bar=False,
            frame_cache=self.value('frame_cache') or None, prepare_workers=int(self.value('prepare_workers')))

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
        from hr_depth_ros.finetune import torchrun_command
        from hr_depth_ros.training.trainer import TrainingError

        self.publish({'state': 'training', 'processes': nproc})
        process = subprocess.Popen(torchrun_command(config, nproc), stdout=subprocess.DEVNULL,
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
        latest = Path(config.output).expanduser() / 'latest'
        meta = json.loads((latest / 'hr_depth_ros.json').read_text())
        best = latest.parent / 'best'
        return {'step': meta['step'], 'latest': latest, 'best': best if best.is_dir() else None,
                'val': meta.get('metrics', {})}

    def run(self) -> int:
        from hr_depth_ros.bags import BagError
        from hr_depth_ros.checkpoint import CheckpointError
        from hr_depth_ros.finetune import describe_os_error
        from hr_depth_ros.training.data import DataError
        from hr_depth_ros.training.trainer import TrainingError, train

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
