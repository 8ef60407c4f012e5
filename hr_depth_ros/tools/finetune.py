"""Self-supervised fine-tuning from rosbags, without ROS (``finetune`` console script).

Usage::

    python -m hr_depth_ros.tools.finetune --bag BAG [--bag BAG2 ...] --output DIR
        [--image-topic /camera/image_raw] [--camera-info-topic /camera/camera_info]
        [--intrinsics FX FY CX CY] [--gt-depth-topic /camera/depth_gt]
        [--arch hr_depth|lite_hr_depth|monodepth2] [--init CKPT_DIR] [--encoder-weights IMAGENET.pth]
        [--teacher CKPT_DIR] [--distill-weight W] [--steps N | --epochs N] [--batch-size N]
        [--width W --height H] [--lr LR] [--device auto|cuda|cpu] [--resume] [--num-workers N]
        [--seed S] [--val-every N] [--save-every N] [--overwrite] [--max-pixels N]
        [--frame-cache DIR] [--prepare-workers N]

``--bag`` takes bags, folders holding bags (searched recursively) and quoted glob patterns.

Writes ``DIR/latest/`` (and ``DIR/best/``) checkpoint folders loadable by the depth node, and
``DIR/metrics.csv``; the frame cache lives in ``DIR/.hr_depth_frames-*`` while it runs. A folder
holding a previous run is refused unless ``--resume`` or ``--overwrite``. Bad input, and a
folder that cannot be written (read-only, full disk, permissions): one line on stderr naming the
path, exit code 2.

Several processes (PyTorch DistributedDataParallel; gloo on the CPU, NCCL with one GPU per rank)::

    torchrun --standalone --nproc_per_node N -m hr_depth_ros.tools.finetune --bag BAGS ... --output DIR

Rank 0 alone writes checkpoints, metrics.csv, TensorBoard and progress; the other ranks print
errors only, naming their rank. ``--batch-size`` is per rank: the effective batch is N times it.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Sequence

__all__ = ['build_parser', 'config_from_args', 'args_from_config', 'main']


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per option of TrainingConfig (:mod:`hr_depth_ros.core.training.options`)."""
    from hr_depth_ros.core.training.options import add_arguments
    from hr_depth_ros.core.training.trainer import TrainingConfig

    parser = argparse.ArgumentParser(prog='finetune', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser, TrainingConfig)
    parser.add_argument('--quiet', action='store_true', help='no log lines (errors still shown)')
    return parser


def config_from_args(args: argparse.Namespace):
    """argparse namespace -> :class:`~hr_depth_ros.core.training.trainer.TrainingConfig`."""
    from hr_depth_ros.core.training import options
    from hr_depth_ros.core.training.trainer import TrainingConfig

    return options.config_from_args(args, TrainingConfig)


def args_from_config(config: Any) -> list[str]:
    """A TrainingConfig -> the command-line arguments that give it back (:func:`config_from_args`).

    Settings the command line does not have keep their defaults.
    """
    from hr_depth_ros.core.training import options

    return options.args_from_config(config)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get('RANK', '0'))  # set by torchrun; ranks other than 0 report errors only
    who = f'finetune (rank {rank})' if rank else 'finetune'
    logging.basicConfig(level=logging.WARNING if args.quiet or rank else logging.INFO, format='[finetune] %(message)s')
    from hr_depth_ros.core.bags import BagError
    from hr_depth_ros.core.checkpoint import CheckpointError
    from hr_depth_ros.core.training.data_config import DataError
    from hr_depth_ros.core.training.output import describe_os_error
    from hr_depth_ros.core.training.trainer import TrainingError, train

    try:
        result = train(config_from_args(args))
    except (BagError, DataError, CheckpointError, TrainingError, ValueError) as error:
        print(f'{who}: error: {error}', file=sys.stderr)
        return 2
    except OSError as error:
        print(f'{who}: error: {describe_os_error(error, args.output)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'{who}: interrupted (OUTPUT/latest holds the last saved step)', file=sys.stderr)
        return 130
    if rank:
        return 0
    print(f'finetune: done at step {result["step"]}; checkpoint {result["latest"]}'
          + (f', best {result["best"]}' if result['best'] else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
