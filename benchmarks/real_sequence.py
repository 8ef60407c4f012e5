"""Fine-tuning on a real camera: TUM RGB-D fr1/xyz (shared/realdata), scored against the Kinect depth.

    nice -n 10 .venv/bin/python benchmarks/real_sequence.py [--bag ../shared/realdata/tum_fr1_xyz_37f]
        [--train-frames 24] [--split first|last] [--steps 60] [--batch-size 4] [--width 320 --height 96] [--seed 0]
        [--rows start tf tf_gt camera] [--output /tmp/real_sequence] [--threads 1] [--image docs/images/...]
        [--image-topic T] [--info-topic T] [--depth-topic T] [--odom-frame odom]

The bag (read its README): 37 colour frames of a hand-held Kinect over a desk, JPEG, plumb_bob
distortion, 16UC1 Kinect depth for 32 of them, motion-capture poses on /tf. The first
``--train-frames`` colour frames (and their depth and camera_info; TF whole) are copied into a
training bag; every later colour frame with a Kinect depth image is held out and scored
(``--split last``: the last ``--train-frames`` train, the earlier frames are scored; the camera
moves toward the desk, so the first split scores frames nearer than any it trained on, the
other farther). Each
row is one ``finetune`` process from ``models/lite_hr_depth_synthetic`` (Lite-HR-Depth, street
scenes) started by the demo's helper:

- ``tf``: camera motion from TF (metric), no depth sensor: ``best/`` chosen by the photometric loss
  under TF (and ``latest/``);
- ``tf_gt``: the same with ``--gt-depth-topic /camera/depth/image_raw``: ``best/`` chosen by the
  metric depth error on the validation frames (within the training frames);
- ``tf_label``: ``tf_gt`` with the depth sensor also a label on the training frames (``--gt-depth-weight 1``):
  not self-supervised; what any training loss on these frames can reach at most;
- ``camera``: camera only, the pose network (``--pose-source net``; anchored);
- ``camera_vo``: camera only, two-view geometry (``--pose-source vo``, issue 19).

Scoring as the depth node sees a frame: the colour image rectified with its camera_info (the
Kinect depth, registered to the colour image, rectified with the same maps, nearest-neighbour),
the network's depth resized to 640x480, against the Kinect depth (m, 0 = no data). Columns:
median-scaled abs_rel (shape), abs_rel of the depth as published (metres for a metric
checkpoint) and scale ratio median(Kinect) / median(published). TUM's fr1 depth has a known ~3.5 %
scale bias (not corrected). Prints a Markdown table; ``--image`` writes RGB | Kinect | start |
fine-tuned (one colour scale, metres) for the middle held-out frame.

Another RGB-D recording works the same way (``--bag``): the colour topic (Image or CompressedImage)
and its camera_info are found as fine-tuning finds them, the depth topic is the only Image (or
compressedDepth CompressedImage) topic with ``depth`` in its name (16UC1 mm or 32FC1 m; each colour
frame gets the depth image stamped nearest to it within 20 ms, one-to-one, as fine-tuning matches
ground truth); ``--*-topic`` choose, ``--odom-frame`` names the odometry's fixed frame in TF.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hr_depth_ros.core.bags import is_bag, list_topics, open_reader, read_messages  # noqa: E402
from hr_depth_ros.core.depth_options import NodeConfig  # noqa: E402
from hr_depth_ros.core.image_decoding import depth_to_metres, message_to_rgb  # noqa: E402
from hr_depth_ros.core.rectification import calibration_of, rectifier_for  # noqa: E402
from hr_depth_ros.core.training.data_config import (COMPRESSED_TYPE, IMAGE_TYPE, DataConfig, DataError,  # noqa: E402
                                                    is_depth_topic, resolve_topics)
from hr_depth_ros.core.visualization import colorize  # noqa: E402
from hr_depth_ros.tools.demo import EvalFrame, bundled_checkpoint, finetune, finetune_config, score_depths  # noqa: E402

DEFAULT_BAG = REPO.parent / 'shared' / 'realdata' / 'tum_fr1_xyz_37f'
IMAGE = '/camera/image_raw/compressed'   # the shared TUM bag's topics
INFO = '/camera/camera_info'
DEPTH = '/camera/depth/image_raw'
TUM_TOPICS = {'image': IMAGE, 'info': INFO, 'depth': DEPTH}
ROWS = {  # name -> (label, pose source, more TrainingConfig fields; 'gt': the depth topic as --gt-depth-topic)
    'tf': ('TF (no depth sensor)', 'tf', {}),
    'tf_gt': ('TF + `--gt-depth-topic`', 'tf', {'gt': True}),
    'tf_label': ('TF + the depth sensor as a label (`--gt-depth-weight 1`)', 'tf',
                 {'gt': True, 'gt_depth_weight': 1.0}),
    'camera': ('camera only (pose network)', 'net', {}),
    'camera_vo': ('camera only (two-view geometry)', 'vo', {}),
}


def sequence_topics(bag: Path, image: str | None = None, info: str | None = None,
                    depth: str | None = None) -> dict[str, str]:
    """The colour, camera_info and depth topics (keys image, info, depth) of an RGB-D bag: the given ones, else
    colour and camera_info as fine-tuning chooses them (``resolve_topics``) and the only Image / CompressedImage
    topic named for depth; DataError naming the candidates when that is ambiguous."""
    topics = list_topics(bag)
    if depth is None:
        depths = sorted(t for t, kind in topics.items() if kind in (IMAGE_TYPE, COMPRESSED_TYPE) and is_depth_topic(t))
        if len(depths) != 1:
            raise DataError(f'bag {bag}: {len(depths)} depth image topics ({", ".join(depths) or "none"}); give '
                            '--depth-topic')
        depth = depths[0]
    config, _ = resolve_topics(DataConfig(bags=[bag], image_topic=image or 'auto', camera_info_topic=info or 'auto',
                                          gt_depth_topic=depth), bag, topics)
    if not config.camera_info_topic:
        raise DataError(f'bag {bag} has no camera_info topic: scoring needs the calibration')
    return {'image': config.image_topic, 'info': config.camera_info_topic, 'depth': config.gt_depth_topic}


def depth_stamps(bag: Path, topics: dict[str, str] = TUM_TOPICS,
                 tolerance_s: float = DataConfig.gt_depth_tolerance) -> tuple[list[int], dict[int, int]]:
    """The colour frames' stamps in order, and colour stamp -> stamp of its depth image: the nearest within
    ``tolerance_s`` (fine-tuning's ``gt_depth_tolerance``), one-to-one, closest pairs first (TUM's associate.py).
    A depth camera stamps on its own clock tick; the shared TUM bag's depth carries the colour stamps."""
    colour, depth = [], []
    for topic, _, stamp, _ in read_messages(bag, [topics['image'], topics['depth']]):
        (colour if topic == topics['image'] else depth).append(stamp)
    colour, depth = sorted(colour), np.array(sorted(depth), dtype=np.int64)
    tolerance = int(tolerance_s * 1e9)
    candidates = []
    for c in colour:  # the depth stamps on either side of each colour stamp
        k = int(np.searchsorted(depth, c))
        candidates += [(abs(int(depth[j]) - c), c, int(depth[j])) for j in (k - 1, k)
                       if 0 <= j < len(depth) and abs(int(depth[j]) - c) <= tolerance]
    matched: dict[int, int] = {}
    used: set[int] = set()
    for _, c, d in sorted(candidates):
        if c not in matched and d not in used:
            matched[c] = d
            used.add(d)
    return colour, matched


def split_bag(source: Path, dest: Path, train_frames: int, last: bool = False,
              topics: dict[str, str] = TUM_TOPICS,
              pairing: tuple[list[int], dict[int, int]] | None = None) -> tuple[Path, list[int]]:
    """Copy the first (``last``: the last) ``train_frames`` colour frames of ``source`` (with their camera_info
    and the depth images matched to them, and all TF) into a new rosbag2 ``dest`` (from a rosbag2 or a ROS 1 bag,
    whose messages are converted); returns it and the stamps of all colour frames in order. ``pairing``: the bag's
    :func:`depth_stamps` when the caller has it (else read here)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    stamps, matched = pairing or depth_stamps(source, topics)
    kept = stamps[-train_frames:] if last else stamps[:train_frames]
    kept_depth = {matched[c] for c in kept if c in matched}
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    latest = get_typestore(Stores.LATEST)
    with open_reader(source) as reader, Writer(dest, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        # rosbag2: the bytes as they are, with the bag's own definitions; ROS 1: converted to CDR by the ROS 2
        # definitions (std_msgs/Header loses its seq), topics of types ROS 2 does not know left out.
        def store(msgtype: str) -> Any:
            return reader.typestore if reader.is2 and msgtype in reader.typestore.fielddefs else latest

        connections = [c for c in reader.connections if reader.is2 or c.msgtype in latest.fielddefs]
        out = {c.topic: writer.add_connection(c.topic, c.msgtype, typestore=store(c.msgtype)) for c in connections}
        for connection, t_ns, raw in reader.messages(connections=connections):
            if connection.topic in topics.values():
                header = reader.deserialize(raw, connection.msgtype).header
                stamp = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
                if connection.topic == topics['depth'] and stamp not in kept_depth:
                    continue
                if connection.topic != topics['depth'] and not kept[0] <= stamp <= kept[-1]:
                    continue
            writer.write(out[connection.topic], t_ns, raw if reader.is2 else latest.ros1_to_cdr(raw, connection.msgtype))
    return dest, stamps


def heldout_frames(bag: Path, stamps: list[int], train_frames: int, last: bool = False,
                   topics: dict[str, str] = TUM_TOPICS,
                   pairing: tuple[list[int], dict[int, int]] | None = None) -> list[EvalFrame]:
    """Colour frames after (``last``: before) the training ones that have a depth image matched to them
    (:func:`depth_stamps`; ``pairing``: its result when the caller has it), rectified (image and depth)."""
    wanted = set(stamps[:len(stamps) - train_frames] if last else stamps[train_frames:])
    _, matched = pairing or depth_stamps(bag, topics)
    colour_of = {d: c for c, d in matched.items() if c in wanted}
    rgb, depth, info = {}, {}, None
    for topic, _, stamp, msg in read_messages(bag, [topics['image'], topics['info'], topics['depth']]):
        if topic == topics['info'] and info is None:
            info = calibration_of(msg)
        elif stamp in wanted and topic == topics['image']:
            rgb[stamp] = message_to_rgb(msg)
        elif stamp in colour_of and topic == topics['depth']:
            depth[colour_of[stamp]] = depth_to_metres(msg)
    frames = []
    for stamp in sorted(set(rgb) & set(depth)):
        rectifier = rectifier_for(info, (rgb[stamp].shape[1], rgb[stamp].shape[0]))
        frames.append(EvalFrame(stamp, rectifier.rectify(rgb[stamp]), rectifier.rectify(depth[stamp], nearest=True),
                                rectifier.K))
    return frames


def predictions(weights: Path, frames: list[EvalFrame], threads: int) -> list[np.ndarray]:
    from hr_depth_ros.core.inference import DepthEstimator

    estimator = DepthEstimator.from_config(NodeConfig.from_values(
        {'weights': str(weights), 'device': 'cpu', 'backend': 'torch', 'threads': threads}))
    return [cv2.resize(estimator.predict_depth(f.rgb), (f.rgb.shape[1], f.rgb.shape[0]),
                       interpolation=cv2.INTER_LINEAR) for f in frames]


def checkpoint_info(folder: Path) -> dict:
    try:
        return json.loads((folder / 'hr_depth_ros.json').read_text())
    except (OSError, ValueError):
        return {}


def write_picture(path: Path, frame: EvalFrame, start: np.ndarray, tuned: np.ndarray,
                  sensor: str = 'Kinect') -> None:
    """RGB | Kinect | start (median-scaled: it has no metres) | fine-tuned (as published), one colour scale."""
    gt = frame.depth_gt
    valid = np.isfinite(gt)
    scaled_start = start * float(np.median(gt[valid]) / np.median(start[valid]))
    lo, hi = 0.5, float(np.nanpercentile(gt, 98))
    panels = [frame.rgb] + [colorize(1.0 / d, 'magma', 1.0 / hi, 1.0 / lo) for d in (gt, scaled_start, tuned)]
    labels = ['RGB (rectified)', f'{sensor} depth', 'start x median', 'fine-tuned, TF (metres)']
    small = []
    for panel, label in zip(panels, labels):
        panel = cv2.resize(panel, (320, 240), interpolation=cv2.INTER_AREA)
        cv2.putText(panel, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        small.append(panel)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.hstack(small), cv2.COLOR_RGB2BGR))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--bag', type=Path, default=DEFAULT_BAG)
    parser.add_argument('--train-frames', type=int, default=24)
    parser.add_argument('--split', choices=('first', 'last'), default='first',
                        help='train on the first (or last) --train-frames frames, score the others')
    parser.add_argument('--steps', type=int, default=60)
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--width', type=int, default=320)
    parser.add_argument('--height', type=int, default=96)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--rows', nargs='+', default=list(ROWS), choices=list(ROWS))
    parser.add_argument('--output', type=Path, default=Path('/tmp/real_sequence'))
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--image', type=Path, default=None, help='write the picture here (PNG)')
    parser.add_argument('--image-topic', help='colour Image or CompressedImage topic (default: found in the bag)')
    parser.add_argument('--info-topic', help='its CameraInfo topic (default: found in the bag)')
    parser.add_argument('--depth-topic', help='depth topic (Image or compressedDepth), 16UC1 mm or 32FC1 m, stamped '
                                              'within 20 ms of the colour frames (default: the only one named for '
                                              'depth)')
    parser.add_argument('--odom-frame', default='odom', help='fixed frame of the odometry in TF')
    args = parser.parse_args()
    if not is_bag(args.bag):
        print(f'no bag at {args.bag} (see shared/realdata/README.md)', file=sys.stderr)
        return 1
    try:
        topics = sequence_topics(args.bag, args.image_topic, args.info_topic, args.depth_topic)
    except DataError as error:
        print(error, file=sys.stderr)
        return 1
    print(f'topics: colour {topics["image"]}, camera_info {topics["info"]}, depth {topics["depth"]}')
    start = bundled_checkpoint()
    if start is None:
        print('the shipped checkpoint models/lite_hr_depth_synthetic is missing', file=sys.stderr)
        return 1
    last = args.split == 'last'
    pairing = depth_stamps(args.bag, topics)  # one pass over the bag's colour and depth for both
    train_bag, stamps = split_bag(args.bag, args.output / 'bags' / f'{args.split}_{args.train_frames}',
                                  args.train_frames, last, topics, pairing)
    frames = heldout_frames(args.bag, stamps, args.train_frames, last, topics, pairing)
    if not frames:
        print(f'no scored frame of {args.bag} has a depth image on {topics["depth"]} stamped within '
              f'{DataConfig.gt_depth_tolerance * 1000:g} ms of it', file=sys.stderr)
        return 1
    start_depth = predictions(start, frames, args.threads)
    results = [('start checkpoint', '', *score_depths([(f.depth_gt, d) for f, d in zip(frames, start_depth)]), '')]
    os.environ['OMP_NUM_THREADS'] = str(args.threads)  # for the finetune processes
    tuned_depth = None
    for name in args.rows:
        label, pose_source, extra = ROWS[name]
        extra = {**{k: v for k, v in extra.items() if k != 'gt'},
                 **({'gt_depth_topic': topics['depth']} if extra.get('gt') else {})}
        run = args.output / name
        shutil.rmtree(run, ignore_errors=True)
        began = time.monotonic()
        finetune(finetune_config(train_bag, run, start, args.steps, args.width, args.height, 'cpu', args.batch_size,
                                 1e-4, pose_source, seed=args.seed, val_every=10, image_topic=topics['image'],
                                 camera_info_topic=topics['info'], odom_frame=args.odom_frame, **extra))
        seconds = time.monotonic() - began
        for kind in ('best', 'latest'):
            folder = run / kind
            depth = predictions(folder, frames, args.threads)
            info = checkpoint_info(folder)
            note = (f'step {info.get("step")}' + (f', chosen by {info.get("selected_by")}' if kind == 'best' else '')
                    + (f', metric scale {info["metric_scale"]:.3g}' if 'metric_scale' in info else ''))
            results.append((f'{label}, `{kind}/`', note,
                            *score_depths([(f.depth_gt, d) for f, d in zip(frames, depth)]), f'{seconds:.0f}'))
            if name == 'tf' and kind == 'best':
                tuned_depth = depth
    print(f'\n{args.bag.name}: trained on the {args.split} {args.train_frames} colour frames, scored on the '
          f'{len(frames)} {"earlier" if last else "later"} frames with sensor depth; {args.steps} steps, batch {args.batch_size}, '
          f'{args.width}x{args.height}, seed {args.seed}, {args.threads} thread(s); load average '
          f'{os.getloadavg()[0]:.1f}\n')
    print('| model | checkpoint | median-scaled abs_rel | metric abs_rel | scale ratio (truth / published) | wall s |')
    print('|---|---|---:|---:|---:|---:|')
    base = results[0][2]['abs_rel']
    for label, note, scaled, published, seconds in results:
        gain = '' if label.startswith('start') else f' ({100 * (scaled["abs_rel"] / base - 1):+.0f} %)'
        metric = f'{published["abs_rel"]:.3f}' if 'metric scale' in note else '-'
        ratio = f'{published["scale_ratio"]:.2f}' if 'metric scale' in note else '-'
        print(f'| {label} | {note} | {scaled["abs_rel"]:.3f}{gain} | {metric} | {ratio} | {seconds} |')
    if args.image is not None and tuned_depth is not None:
        middle = len(frames) // 2
        write_picture(args.image, frames[middle], start_depth[middle], tuned_depth[middle],
                      'Kinect' if args.bag.resolve() == DEFAULT_BAG.resolve() else 'sensor')
        print(f'\npicture: {args.image} (held-out frame {middle + 1} of {len(frames)})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
