"""Self-supervised fine-tuning from rosbags, without ROS (``finetune`` console script).

Usage::

    python -m hr_depth_ros.finetune --bag BAG [--bag BAG2 ...] --output DIR
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

    torchrun --standalone --nproc_per_node N -m hr_depth_ros.finetune --bag BAGS ... --output DIR

Rank 0 alone writes checkpoints, metrics.csv, TensorBoard and progress; the other ranks print
errors only, naming their rank. ``--batch-size`` is per rank: the effective batch is N times it.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from typing import Any, Sequence

__all__ = ['build_parser', 'config_from_args', 'args_from_config', 'torchrun_command', 'main']


def describe_os_error(error: OSError, output: str) -> str:
    """One line for a file-system failure: the path, what went wrong, what to check."""
    path = error.filename or output
    reason = error.strerror or str(error)
    hint = {errno.ENOSPC: ' (disk full: free space or choose another --output)',
            errno.EROFS: ' (read-only file system: choose another --output)',
            errno.EACCES: ' (permission denied: check the folder\'s owner and mode)',
            errno.EPERM: ' (operation not permitted: check the folder\'s owner and mode)'}.get(error.errno, '')
    return f'cannot write {path}: {reason}{hint}'


def build_parser() -> argparse.ArgumentParser:
    from hr_depth_ros.image_decoding import DEFAULT_MAX_PIXELS
    from hr_depth_ros.networks import ARCHITECTURES

    parser = argparse.ArgumentParser(prog='finetune', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--bag', action='append', required=True,
                        help='rosbag2 folder, ROS 1 .bag, a folder holding bags (searched recursively) or a glob '
                             'pattern (quoted); repeatable')
    parser.add_argument('--output', required=True, help='output folder (latest/, best/, metrics.csv)')
    parser.add_argument('--image-topic', default='/camera/image_raw', help='sensor_msgs/Image or CompressedImage topic')
    parser.add_argument('--camera-info-topic', default='/camera/camera_info')
    parser.add_argument('--intrinsics', type=float, nargs=4, metavar=('FX', 'FY', 'CX', 'CY'),
                        help='pixel intrinsics of the bag images when the bag has no camera_info')
    parser.add_argument('--gt-depth-topic', default=None, help='ground-truth depth (32FC1/16UC1) for validation metrics')
    parser.add_argument('--arch', default='lite_hr_depth', choices=ARCHITECTURES)
    parser.add_argument('--init', default=None, help='checkpoint folder to start from (default: random init)')
    parser.add_argument('--encoder-weights', default=None, help='local ImageNet state dict for the encoders')
    parser.add_argument('--teacher', default=None, help='checkpoint folder of a distillation teacher')
    parser.add_argument('--distill-weight', type=float, default=1.0)
    length = parser.add_mutually_exclusive_group()
    length.add_argument('--steps', type=int, default=None, help='total optimiser steps (default 1000)')
    length.add_argument('--epochs', type=int, default=None)
    parser.add_argument('--batch-size', type=int, default=12)
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=192)
    parser.add_argument('--lr', type=float, default=1e-4)
    parser.add_argument('--device', default='auto', help='auto, cuda, cuda:N or cpu')
    parser.add_argument('--no-amp', action='store_true', help='disable mixed precision on CUDA')
    parser.add_argument('--resume', action='store_true', help='continue from OUTPUT/latest')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace a previous run in OUTPUT (latest/, best/, metrics.csv); without it, refused')
    parser.add_argument('--max-pixels', type=int, default=DEFAULT_MAX_PIXELS,
                        help='bag images larger than this (width x height) are skipped as malformed')
    parser.add_argument('--num-workers', type=int, default=0)
    parser.add_argument('--frame-cache', default=None,
                        help='folder of decoded frames at training resolution, one entry per bag and settings, reused '
                             'by later runs and by the other ranks (default: decoded per run into OUTPUT)')
    parser.add_argument('--prepare-workers', type=int, default=0,
                        help='processes decoding bags in parallel (0: one per bag, at most the CPUs and 8)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--deterministic', action='store_true')
    parser.add_argument('--val-every', type=int, default=0, help='validate every N steps (0: every epoch)')
    parser.add_argument('--save-every', type=int, default=500, help='save OUTPUT/latest every N steps')
    parser.add_argument('--freeze-encoder-epochs', type=int, default=0)
    parser.add_argument('--freeze-bn', action='store_true',
                        help='keep the depth encoder\'s batch-norm statistics fixed (short runs from a trained model)')
    parser.add_argument('--pose-source', default='auto', choices=('auto', 'tf', 'net'),
                        help="camera motion from the bag's TF (odometry; gives metric depth) or the pose network; "
                             'auto: tf when every bag has a TF chain from --odom-frame to the camera')
    parser.add_argument('--odom-frame', default='odom', help='fixed frame of the odometry in TF')
    parser.add_argument('--camera-frame', default=None,
                        help="camera's optical frame in TF (default: the images' header.frame_id)")
    parser.add_argument('--max-tf-gap', type=float, default=0.25,
                        help='seconds; frames inside a longer TF silence get no pose and are dropped')
    parser.add_argument('--metric-scale', type=float, default=None,
                        help='with TF poses: metres per depth unit of --init (default: its recorded one, else '
                             'found by a photometric scale search)')
    parser.add_argument('--pose-lr', type=float, default=None, help='pose network learning rate (default max(lr, 1e-4))')
    parser.add_argument('--pose-warmup-steps', type=int, default=None,
                        help='first N steps train only the pose network (default: 160 when --init has no pose '
                             'network and poses come from it, else 0)')
    parser.add_argument('--frame-stride', type=int, default=1, help='neighbour frames are this many frames away')
    parser.add_argument('--min-motion', type=float, default=0.5,
                        help='drop samples whose thumbnails differ less than this (grey levels)')
    parser.add_argument('--val-fraction', type=float, default=0.1)
    parser.add_argument('--quiet', action='store_true', help='no log lines (errors still shown)')
    return parser


def config_from_args(args: argparse.Namespace):
    """argparse namespace -> :class:`~hr_depth_ros.training.trainer.TrainingConfig`."""
    from hr_depth_ros.training.trainer import TrainingConfig

    steps = args.steps if args.steps is not None or args.epochs is not None else 1000
    return TrainingConfig(
        bags=list(args.bag), output=args.output, arch=args.arch, width=args.width, height=args.height,
        image_topic=args.image_topic, camera_info_topic=args.camera_info_topic or None,
        gt_depth_topic=args.gt_depth_topic or None, intrinsics=args.intrinsics, init=args.init,
        encoder_weights=args.encoder_weights, teacher=args.teacher, distill_weight=args.distill_weight,
        steps=steps if args.epochs is None else None, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        device=args.device, amp=not args.no_amp, resume=args.resume, overwrite=args.overwrite,
        max_pixels=args.max_pixels, num_workers=args.num_workers, frame_cache=args.frame_cache,
        prepare_workers=args.prepare_workers, seed=args.seed,
        deterministic=args.deterministic, val_every=args.val_every, save_every=args.save_every,
        freeze_encoder_epochs=args.freeze_encoder_epochs, pose_warmup_steps=args.pose_warmup_steps,
        pose_source=args.pose_source, odom_frame=args.odom_frame, camera_frame=args.camera_frame,
        max_tf_gap=args.max_tf_gap, metric_scale=args.metric_scale, pose_lr=args.pose_lr,
        freeze_bn=args.freeze_bn,
        frame_stride=args.frame_stride,
        min_motion=args.min_motion, val_fraction=args.val_fraction)


def args_from_config(config: Any) -> list[str]:
    """A TrainingConfig -> the command-line arguments that give it back (:func:`config_from_args`).

    Settings the command line does not have keep their defaults.
    """
    from dataclasses import asdict

    fields = asdict(config)
    args: list[str] = []
    for action in build_parser()._actions:
        flag, dest = (action.option_strings or [''])[0], action.dest
        if dest in ('help', 'quiet'):
            continue
        if dest == 'no_amp':
            args += [] if config.amp else [flag]
            continue
        value = fields.get({'bag': 'bags'}.get(dest, dest))
        if isinstance(action, argparse._StoreTrueAction):
            args += [flag] if value else []
        elif value is None:  # a topic switched off is an empty argument; other unset settings are left out
            args += [flag, ''] if isinstance(action.default, str) else []
        elif dest == 'bag':
            for bag in value:
                args += [flag, str(bag)]
        elif action.nargs:
            args += [flag, *(str(v) for v in value)]
        else:
            args += [flag, str(value)]
    return args


def torchrun_command(config: Any, nproc: int) -> list[str]:
    """The ``torchrun`` command running ``config`` on ``nproc`` local processes (loopback rendezvous)."""
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc),
            '-m', 'hr_depth_ros.finetune', *args_from_config(config)]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get('RANK', '0'))  # set by torchrun; ranks other than 0 report errors only
    who = f'finetune (rank {rank})' if rank else 'finetune'
    logging.basicConfig(level=logging.WARNING if args.quiet or rank else logging.INFO, format='[finetune] %(message)s')
    from hr_depth_ros.bags import BagError
    from hr_depth_ros.checkpoint import CheckpointError
    from hr_depth_ros.training.data import DataError
    from hr_depth_ros.training.trainer import TrainingError, train

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
