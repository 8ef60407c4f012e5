"""Fine-tuning variants from the shipped checkpoint: held-out abs_rel per camera-motion source.

    .venv/bin/python benchmarks/finetune_pose_sources.py [--variants vo net_anchor1 tf ...] [--steps 30]
        [--seeds 0 1 2 3 4] [--output /tmp/pose_sources] [--eval-frames 24] [--threads 1]
    .venv/bin/python benchmarks/finetune_pose_sources.py --real ../shared/realdata/tum_fr1_xyz_37f \\
        [--variants vo net_anchor1 tf] [--steps 60] [--seeds 0 1 2]

The question it answers: which camera motion (odometry in TF, two-view geometry of the images,
the pose network) and which anchoring make a short fine-tune better than the model it starts
from. Lite-HR-Depth at 320x96, batch 4, lr 1e-4, from ``models/lite_hr_depth_synthetic``, each
variant and seed a ``finetune`` process (the demo's ``finetune_config`` / ``finetune`` helpers) on
``--threads`` threads. Scored: ``latest/`` (no model selection, so the table shows what training
did) and ``best/`` (what a user gets), median-scaled abs_rel against the ground truth, depth
capped at 80 m.

- Synthetic (default): drives as in the demo (tools/demo.py): training drive seed 1 (120 frames,
  640x192, 10 fps, odometry in TF, which the ``vo`` and ``net`` variants ignore), held-out drive
  seed 2 (72 frames, ``--eval-frames`` of them scored; ``--demo-eval``: the demo's own 12 of 36).
- ``--real BAG``: a real recording with a colour topic, camera_info and a depth sensor (the
  shared TUM RGB-D ``tum_fr1_xyz_37f``): training on its first ``--train-frames`` (24) frames (a
  copy of the bag cut there), scored on the next ``--heldout-frames`` (12) frames that have depth.
Prints a Markdown table: every run, then mean and range per variant.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hr_depth_ros.tools.demo import (EvalFrame, bundled_checkpoint, direct_metrics, ensure_bag,  # noqa: E402
                                    finetune, finetune_config, load_eval_frames)

VARIANTS = {  # name -> (pose source, more TrainingConfig fields)
    'tf': ('tf', {}),
    'tf_anchor1': ('tf', {'anchor_weight': 1.0}),
    'vo': ('vo', {}),
    'vo_anchor1': ('vo', {'anchor_weight': 1.0}),
    'net_no_anchor': ('net', {'anchor_weight': 0.0}),
    'net_anchor0.1': ('net', {'anchor_weight': 0.1}),
    'net_anchor1': ('net', {'anchor_weight': 1.0}),
    'net_anchor3': ('net', {'anchor_weight': 3.0}),
}
REAL_IMAGE_TOPIC = '/camera/image_raw/compressed'
REAL_INFO_TOPIC = '/camera/camera_info'
REAL_DEPTH_TOPIC = '/camera/depth/image_raw'


def cut_bag(source: Path, target: Path, frames: int, image_topic: str) -> Path:
    """A copy of ``source`` holding every message up to its ``frames``-th image (by receive time)."""
    from rosbags.rosbag2 import Reader, Writer

    if target.exists():
        shutil.rmtree(target)
    with Reader(source) as reader:
        stamps = sorted(t for c, t, _ in reader.messages() if c.topic == image_topic)
        last = stamps[frames - 1]
        with Writer(target, version=8) as writer:
            out = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=None, msgdef=c.msgdef.data,
                                               rihs01=c.digest) for c in reader.connections}
            for connection, stamp, raw in reader.messages():
                if stamp <= last:
                    writer.write(out[connection.id], stamp, raw)
    return target


def real_eval_frames(bag: Path, first: int, count: int) -> list[EvalFrame]:
    """Colour frames ``first``, ``first + 1``, ... of ``bag`` that have sensor depth (16UC1 mm or 32FC1 m),
    up to ``count`` frames."""
    from hr_depth_ros.core.bags import read_messages
    from hr_depth_ros.core.camera_info import camera_info_K
    from hr_depth_ros.core.image_decoding import compressed_to_rgb, image_to_array

    images, depths, K = [], {}, None
    for topic, _, stamp, msg in read_messages(bag, [REAL_IMAGE_TOPIC, REAL_INFO_TOPIC, REAL_DEPTH_TOPIC]):
        if topic == REAL_IMAGE_TOPIC:
            images.append((int(stamp), compressed_to_rgb(msg).copy()))
        elif topic == REAL_DEPTH_TOPIC:
            depth = image_to_array(msg).astype(np.float32).reshape(msg.height, msg.width)
            depth = depth / 1000.0 if msg.encoding == '16UC1' else depth
            depths[int(stamp)] = np.where(depth > 0, depth, np.nan)
        elif K is None:
            K = camera_info_K(msg)[0]
    images.sort(key=lambda item: item[0])
    return [EvalFrame(stamp, rgb, depths[stamp], K) for stamp, rgb in images[first:first + count] if stamp in depths]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--variants', nargs='+', default=['tf', 'vo', 'net_anchor1'], choices=list(VARIANTS))
    parser.add_argument('--steps', type=int, default=None, help='steps per run (default: 30; 60 with --real)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0], help='one run per seed and variant')
    parser.add_argument('--output', default='/tmp/pose_sources')
    parser.add_argument('--eval-frames', type=int, default=24)
    parser.add_argument('--demo-eval', action='store_true',
                        help="score on the demo's held-out frames (a 36-frame drive, 12 of them) instead")
    parser.add_argument('--reuse', action='store_true', help='score runs already in --output instead of training')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--real', default=None, help='a real bag (colour, camera_info, depth) instead of the drives')
    parser.add_argument('--train-frames', type=int, default=24, help='--real: frames trained on (the first ones)')
    parser.add_argument('--heldout-frames', type=int, default=12, help='--real: the next frames, scored')
    args = parser.parse_args()
    output = Path(args.output)
    start = bundled_checkpoint()
    if start is None:
        print('the shipped checkpoint models/lite_hr_depth_synthetic is missing', file=sys.stderr)
        return 1
    extra_data: dict[str, str] = {}
    if args.real:
        steps = args.steps or 60
        output.mkdir(parents=True, exist_ok=True)
        train = cut_bag(Path(args.real), output / 'bags' / 'train', args.train_frames, REAL_IMAGE_TOPIC)
        frames = real_eval_frames(Path(args.real), args.train_frames, args.heldout_frames)
        extra_data = {'image_topic': REAL_IMAGE_TOPIC}
    else:
        steps = args.steps or 30
        train = ensure_bag(output / 'bags' / 'train', 120, 640, 192, seed=1)
        if args.demo_eval:  # as tools/demo.py: max(3 x 12, 30) frames, 12 scored
            frames = load_eval_frames(ensure_bag(output / 'bags' / 'heldout_demo', 36, 640, 192, seed=2), 12)
        else:
            frames = load_eval_frames(ensure_bag(output / 'bags' / 'heldout', 72, 640, 192, seed=2), args.eval_frames)
    inference = {'device': 'cpu', 'backend': 'torch', 'threads': args.threads, 'precision': 'fp32'}

    def abs_rel(folder: Path) -> float:
        return direct_metrics(folder, frames, inference)[0]['abs_rel']

    baseline = abs_rel(start)
    print(f'start checkpoint: held-out abs_rel {baseline:.4f} on {len(frames)} frames', flush=True)
    os.environ['OMP_NUM_THREADS'] = str(args.threads)  # for the finetune processes
    rows = []
    for name in args.variants:
        for seed in args.seeds:
            run = output / f'{name}_seed{seed}'
            if not args.reuse:
                shutil.rmtree(run, ignore_errors=True)  # a fresh run each time (the demo's helper would reuse it)
            pose_source, more = VARIANTS[name]
            began = time.monotonic()
            finetune(finetune_config(train, run, start, steps, 320, 96, 'cpu', 4, 1e-4, pose_source, seed=seed,
                                     **more, **extra_data))
            seconds = time.monotonic() - began
            latest, best = abs_rel(run / 'latest'), abs_rel(run / 'best')
            flags = ' '.join(f'--{key.replace("_", "-")} {value:g}' for key, value in more.items())
            rows.append((name, seed, f'--pose-source {pose_source} {flags}'.strip(), latest, best, seconds))
            print(f'  done: {name} seed {seed} latest {latest:.4f} best {best:.4f} ({seconds:.0f} s)', flush=True)
    load = os.getloadavg()[0]
    print(f'\nstart checkpoint: held-out abs_rel {baseline:.4f} on {len(frames)} frames '
          f'({"real: " + args.real if args.real else "synthetic drives"}); {steps} steps per run; '
          f'load average {load:.1f}\n')
    print('| variant | seed | finetune arguments | latest abs_rel | vs start | best/ abs_rel | vs start | wall s |')
    print('|---|---:|---|---:|---:|---:|---:|---:|')
    for name, seed, extra, latest, best, seconds in rows:
        print(f'| {name} | {seed} | `{extra}` | {latest:.4f} | {100 * (latest / baseline - 1):+.1f} % | {best:.4f} | '
              f'{100 * (best / baseline - 1):+.1f} % | {seconds:.0f} |')
    print('\n| variant | runs | best/ vs start: mean | worst | best |\n|---|---:|---:|---:|---:|')
    for name in args.variants:
        gains = [100 * (best / baseline - 1) for n, _, _, _, best, _ in rows if n == name]
        print(f'| {name} | {len(gains)} | {np.mean(gains):+.1f} % | {max(gains):+.1f} % | {min(gains):+.1f} % |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
