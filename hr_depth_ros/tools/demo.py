"""The whole loop in one command, on synthetic data, on a CPU in a few minutes.

    python -m hr_depth_ros.tools.demo [--output demo_output] [--device auto] [--backend auto|torch|openvino]
        [--precision fp32|int8 [--calibration FOLDER_OR_BAG]] [the depth node's other flags, see --help]

1. writes two synthetic drives as rosbag2 files (one to fine-tune on, with the robot's odometry
   in TF as a real robot records it, and one held out: other scenes than the bundled
   checkpoint was trained on);
2. fine-tunes Lite-HR-Depth on the first one, self-supervised (no depth labels), starting from
   the bundled checkpoint ``models/lite_hr_depth_synthetic`` (itself trained monocularly on
   another synthetic drive, so without metric scale) or from random weights when it is absent:
   once with camera motion from the odometry (``--pose-source tf``: metric depth) and, unless
   ``--skip-camera-only``, once from the camera alone: the same drive recorded without TF, as a
   user without odometry gets it (``--pose-source auto``): camera motion from the two-view geometry
   of the images, the translation length from the start depth network, ``best/`` chosen by the
   photometric error under those fixed poses;
3. starts the real ``depth_node`` as a process with the TF-fine-tuned checkpoint and plays the
   held-out frames into it over ROS 2 (DDS on loopback only), collecting what it publishes;
4. writes colourised depth strips beside the camera frames and the ground truth (PNG), a
   point cloud (PLY) and a report (abs_rel / rmse / a1 against the ground truth, median-scaled,
   and without median scaling for the metric checkpoint; frames processed; latency percentiles).

A second run reuses the bags and the fine-tuned checkpoint already in the output folder
(``--fresh`` starts over).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from hr_depth_ros.core.checkpoint import DECODER_FILE, METADATA_FILE
from hr_depth_ros.core.depth_options import NodeConfig, add_tool_arguments, ros_arguments, tool_values
from hr_depth_ros.core.evaluation import evaluate_depth, mean_errors
from hr_depth_ros.core.resources import package_file
from hr_depth_ros.core.visualization import colorize

BUNDLED_CHECKPOINT = Path('models') / 'lite_hr_depth_synthetic'
"""The shipped demo checkpoint, relative to the package's share (see :func:`package_file`)."""
IMAGE_TOPIC = '/camera/image_raw'
CAMERA_INFO_TOPIC = '/camera/camera_info'
DEPTH_GT_TOPIC = '/camera/depth_gt'
REPORTED_METRICS = ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1')


@dataclass
class EvalFrame:
    """One held-out frame: stamp, RGB image, ground-truth depth (NaN invalid), intrinsics."""

    stamp_ns: int
    rgb: np.ndarray
    depth_gt: np.ndarray
    K: np.ndarray


def step(index: int, total: int, text: str) -> float:
    """Print a progress line and return the start time."""
    print(f'[{index}/{total}] {text}', flush=True)
    return time.monotonic()


def done(start: float, text: str = '') -> None:
    print(f'      done in {time.monotonic() - start:.1f} s{(": " + text) if text else ""}', flush=True)


def bundled_checkpoint() -> Path | None:
    """The shipped demo checkpoint (installed share or checkout), None when it is not there."""
    try:
        folder = package_file(BUNDLED_CHECKPOINT)
    except FileNotFoundError:
        return None
    return folder if (folder / DECODER_FILE).is_file() else None


def ensure_bag(path: Path, frames: int, width: int, height: int, seed: int, with_tf: bool = True) -> Path:
    """Write a synthetic drive (with odometry in TF unless ``with_tf`` is False) unless a complete one is
    already there."""
    from hr_depth_ros.core.bags import is_bag
    from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag

    if is_bag(path, complete=True):
        return path
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_synthetic_bag(path, frames=frames, width=width, height=height, fps=10.0, storage='mcap', seed=seed,
                        with_tf=with_tf)
    return path


def load_eval_frames(bag: Path, limit: int) -> list[EvalFrame]:
    """Frames of ``bag`` with image, camera_info and ground-truth depth sharing a stamp."""
    from hr_depth_ros.core.bags import read_messages
    from hr_depth_ros.core.camera_info import camera_info_K
    from hr_depth_ros.core.image_decoding import image_to_array, image_to_rgb

    by_stamp: dict[int, dict] = {}
    for topic, _, stamp, msg in read_messages(bag, [IMAGE_TOPIC, CAMERA_INFO_TOPIC, DEPTH_GT_TOPIC]):
        entry = by_stamp.setdefault(int(stamp), {})
        if topic == IMAGE_TOPIC:
            entry['rgb'] = image_to_rgb(msg).copy()
        elif topic == DEPTH_GT_TOPIC:
            entry['depth'] = image_to_array(msg).astype(np.float32).copy()
        else:
            entry['K'] = camera_info_K(msg)[0]
    frames = [EvalFrame(s, e['rgb'], e['depth'], e['K'])
              for s, e in sorted(by_stamp.items()) if {'rgb', 'depth', 'K'} <= set(e)]
    if len(frames) > limit:
        picks = np.linspace(0, len(frames) - 1, limit).round().astype(int)
        frames = [frames[i] for i in picks]
    return frames


def checkpoint_step(folder: Path) -> int:
    """Training step recorded in our checkpoint metadata (-1 when absent or unreadable)."""
    try:
        return int(json.loads((folder / METADATA_FILE).read_text()).get('step', -1))
    except (OSError, ValueError, AttributeError):
        return -1


def make_random_checkpoint(folder: Path, width: int, height: int) -> Path:
    """A randomly initialised Lite-HR-Depth checkpoint (the 'before' of the report)."""
    import torch

    from hr_depth_ros.core.checkpoint import save_depth_checkpoint
    from hr_depth_ros.core.networks import build_depth_model

    if (folder / DECODER_FILE).is_file():
        return folder
    torch.manual_seed(0)
    encoder, decoder = build_depth_model('lite_hr_depth')
    save_depth_checkpoint(folder, encoder, decoder, arch='lite_hr_depth', height=height, width=width,
                          metadata={'note': 'random initialisation (demo baseline)'})
    return folder


def finetune_config(bag: Path, output: Path, init: Path | None, steps: int, width: int, height: int, device: str,
                    batch_size: int, lr: float, pose_source: str, **more: Any) -> Any:
    """The demo's fine-tuning run as a TrainingConfig (``more``: further fields or other values of
    ``val_every`` / ``save_every``, e.g. benchmarks/finetune_pose_sources.py's variants)."""
    from hr_depth_ros.core.training.trainer import TrainingConfig

    fields = {'val_every': max(1, steps // 3), 'save_every': steps, **more}
    return TrainingConfig(bags=[str(bag)], output=str(output), arch='lite_hr_depth', steps=steps, width=width,
                          height=height, batch_size=batch_size, device=device, lr=lr, pose_source=pose_source,
                          init=str(init) if init else None, **fields)


def finetune(config: Any) -> Path:
    """Run the ROS-free fine-tuning CLI on ``config`` (its command line generated from the option table) as a
    process, resuming an unfinished run; returns its ``best/`` (else ``latest/``).

    No depth labels: ``best/`` is chosen as a user without a depth sensor gets it (the
    photometric loss under the odometry's poses, the start model included).
    """
    from hr_depth_ros.core.training.options import args_from_config
    from hr_depth_ros.core.training.output import BEST, LATEST

    output = Path(config.output)
    latest, best = output / LATEST, output / BEST
    if checkpoint_step(latest) >= config.steps:
        print(f'      reusing {latest} (step {checkpoint_step(latest)})')
    else:
        config = dataclasses.replace(config, resume=(latest / DECODER_FILE).is_file())
        subprocess.run([sys.executable, '-m', 'hr_depth_ros.tools.finetune', *args_from_config(config)], check=True)
    return best if (best / DECODER_FILE).is_file() else latest


def score_depths(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean metrics of ``(ground truth, depth)`` pairs: median-scaled (monocular), and as published
    (no scaling: metres when the checkpoint is metric), whose ``scale_ratio`` is median(truth) /
    median(published), 1 for exact metres."""
    scaled = [evaluate_depth(gt, depth) for gt, depth in pairs]
    published = [{**evaluate_depth(gt, depth, median_scaling=False), 'scale_ratio': s['scale_ratio']}
                 for (gt, depth), s in zip(pairs, scaled)]
    return mean_errors(scaled), mean_errors(published)


def direct_metrics(weights: Path, frames: list[EvalFrame],
                   values: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """:func:`score_depths` of a checkpoint on the held-out frames, through the inference engine configured by
    the depth node's parameter ``values`` (:func:`~hr_depth_ros.core.depth_options.tool_values`)."""
    from hr_depth_ros.core.inference import DepthEstimator

    estimator = DepthEstimator.from_config(NodeConfig.from_values({**values, 'weights': str(weights)}))
    pairs = []
    for frame in frames:
        depth = estimator.predict_depth(frame.rgb)
        pairs.append((frame.depth_gt, cv2.resize(depth, (frame.rgb.shape[1], frame.rgb.shape[0]),
                                                 interpolation=cv2.INTER_LINEAR)))
    return score_depths(pairs)


class NodeSession:
    """The demo's side of the ROS graph (a :class:`~hr_depth_ros.ros.probe.GraphProbe`): publishes camera
    frames, records the node's depth and points by stamp."""

    def __init__(self) -> None:
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        from hr_depth_ros.core.image_decoding import image_to_array
        from hr_depth_ros.core.pointcloud import unpack_points
        from hr_depth_ros.ros.probe import GraphProbe, stamp_ns

        def points(msg: Any) -> tuple[int, tuple[np.ndarray, np.ndarray | None]]:
            cloud, colors = unpack_points(bytes(msg.data), any(field.name == 'rgb' for field in msg.fields))
            return stamp_ns(msg), (cloud.copy(), None if colors is None else colors.copy())

        self.probe = GraphProbe('hr_depth_demo_player')
        self.image_pub = self.probe.publisher(Image, IMAGE_TOPIC, depth=5)
        self.info_pub = self.probe.publisher(CameraInfo, CAMERA_INFO_TOPIC, depth=5)
        self.probe.subscribe(Image, '/camera/depth', 'depth', depth=5,
                             convert=lambda msg: (stamp_ns(msg), image_to_array(msg).copy()))
        # like rviz: someone watches the colourised depth, so the node computes it
        self.probe.subscribe(Image, '/camera/depth/colored', 'colored', depth=5, convert=stamp_ns)
        self.probe.subscribe(PointCloud2, '/camera/points', 'points', depth=5, convert=points)

    def outputs(self, key: str) -> dict[int, tuple[Any, float]]:
        """Stamp (ns) -> (value, arrival time in s) of the outputs recorded under ``key`` ('depth', 'points')."""
        return {value[0]: (value[1], arrival / 1e9) for arrival, value in self.probe.arrivals(key)}

    def play(self, frame: EvalFrame, timeout: float) -> float | None:
        """Publish one frame and wait for its depth and points; returns the publish time (s) or None."""
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        from hr_depth_ros.ros.ros_messages import camera_info_msg, rgb_image_msg

        header = Header(stamp=Time(sec=frame.stamp_ns // 1_000_000_000, nanosec=frame.stamp_ns % 1_000_000_000),
                        frame_id='camera_optical_frame')
        self.info_pub.publish(camera_info_msg(frame.K, frame.rgb.shape[1], frame.rgb.shape[0], header))
        sent = time.time_ns() / 1e9
        self.image_pub.publish(rgb_image_msg(frame.rgb, 'rgb8', header))
        answered = self.probe.wait_until(lambda: all(frame.stamp_ns in self.outputs(key) for key in ('depth', 'points')),
                                         timeout, period=0.005)
        return sent if answered else None

    def close(self) -> None:
        self.probe.close()


def run_node_session(weights: Path, frames: list[EvalFrame], values: Mapping[str, Any], log_path: Path,
                     timeout: float) -> tuple[NodeSession, dict[int, float]]:
    """Start depth_node (parameters: the tools' ``values`` and ``weights``), play ``frames`` into it one by one;
    returns the session and send times."""
    from hr_depth_ros.ros.transport import local_ros_env

    env = local_ros_env()
    os.environ.update({k: env[k] for k in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DOMAIN_ID',
                                           'FASTDDS_DEFAULT_PROFILES_FILE', 'RMW_IMPLEMENTATION')})
    # Metres come from the checkpoint itself (fine-tuned with the odometry's metric poses): scale_mode fixed.
    parameters = {**values, 'weights': str(weights), 'points_stride': 2, 'qos_reliability': 'reliable',
                  'qos_depth': 5, 'scale_mode': 'fixed'}
    command = [sys.executable, '-m', 'hr_depth_ros.ros.depth_node', '--ros-args',
               '--params-file', str(package_file('config/depth.yaml')), *ros_arguments(parameters),
               '-r', f'image:={IMAGE_TOPIC}', '-r', f'camera_info:={CAMERA_INFO_TOPIC}',
               '-r', 'depth:=/camera/depth', '-r', 'depth/colored:=/camera/depth/colored',
               '-r', 'depth/camera_info:=/camera/depth/camera_info', '-r', 'points:=/camera/points']
    log = open(log_path, 'w')
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    session = NodeSession()
    sent: dict[int, float] = {}
    try:
        if not session.probe.wait_until(session.probe.connected, 60.0, period=0.1):
            raise RuntimeError(f'depth_node did not subscribe within 60 s; see {log_path}')
        time.sleep(1.0)  # let discovery finish both ways before the first frame
        for index, frame in enumerate(frames):
            when = session.play(frame, timeout)
            if process.poll() is not None:
                raise RuntimeError(f'depth_node exited with {process.returncode}; see {log_path}')
            if when is not None:
                sent[frame.stamp_ns] = when
            print(f'      frame {index + 1}/{len(frames)}: {"ok" if when is not None else "no answer"}',
                  flush=True)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
    return session, sent


def write_strips(frames: list[EvalFrame], depths: Mapping[int, tuple[np.ndarray, float]], folder: Path,
                 per_strip: int = 3) -> list[Path]:
    """PNG strips: per frame a row of camera | ground truth | predicted depth (``depths``: stamp -> (depth,
    arrival), :meth:`NodeSession.outputs`), same colour range."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for frame in frames:
        predicted = depths.get(frame.stamp_ns)
        if predicted is None:
            continue
        gt_disp = 1.0 / frame.depth_gt
        pred_disp = 1.0 / np.where(predicted[0] > 0, predicted[0], np.nan)
        # Median-scale the prediction's disparity so both use one colour range.
        valid = np.isfinite(gt_disp) & np.isfinite(pred_disp)
        if valid.any():
            pred_disp = pred_disp * np.median(gt_disp[valid]) / np.median(pred_disp[valid])
        lo, hi = np.nanmin(gt_disp), np.nanpercentile(gt_disp, 95)
        row = np.hstack([frame.rgb, colorize(gt_disp, vmin=lo, vmax=hi), colorize(pred_disp, vmin=lo, vmax=hi)])
        rows.append(row)
    paths = []
    for start in range(0, len(rows), per_strip):
        path = folder / f'strip_{start // per_strip:02d}.png'
        cv2.imwrite(str(path), cv2.cvtColor(np.vstack(rows[start:start + per_strip]), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def render_point_cloud(points: np.ndarray, colors: np.ndarray | None, width: int = 640, height: int = 360,
                       pitch_deg: float = 25.0, up: float = 7.0, back: float = 9.0) -> np.ndarray:
    """An oblique view of a camera-frame cloud (RGB image), seen from above and behind the camera.

    The virtual camera sits ``up`` metres above and ``back`` metres behind the real one,
    pitched down by ``pitch_deg``; nearer points are drawn over farther ones.
    """
    pitch = np.deg2rad(pitch_deg)
    # Rotation about x (optical frame: y down, z forward): looking down means tilting +y into z.
    rotation = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    centre = np.array([0.0, -up, -back])
    view = (points.astype(np.float64) - centre) @ rotation.T
    focal = 0.8 * width
    keep = view[:, 2] > 0.5
    view = view[keep]
    u = np.round(focal * view[:, 0] / view[:, 2] + width / 2).astype(int)
    v = np.round(focal * view[:, 1] / view[:, 2] + height / 2).astype(int)
    inside = (u >= 0) & (u < width - 1) & (v >= 0) & (v < height - 1)
    order = np.argsort(-view[inside, 2])  # far first, near last
    u, v = u[inside][order], v[inside][order]
    shade = (colors[keep][inside][order] if colors is not None
             else np.full((len(u), 3), 220, dtype=np.uint8))
    canvas = np.full((height, width, 3), 30, dtype=np.uint8)
    for du in (0, 1):  # 2x2 splats so a decimated cloud reads as surfaces
        for dv in (0, 1):
            canvas[v + dv, u + du] = shade
    return canvas


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values) * 1000.0
    return {f'p{p}': float(np.percentile(array, p)) for p in (50, 95, 99)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='demo', description=__doc__.split('\n\n')[0])
    parser.add_argument('--output', default='demo_output', help='output folder (default: demo_output)')
    add_tool_arguments(parser)  # the depth node's flags: --device, --backend, --precision, ... (the option table)
    parser.add_argument('--width', type=int, default=640, help='camera width of the synthetic drives')
    parser.add_argument('--height', type=int, default=192, help='camera height of the synthetic drives')
    parser.add_argument('--net-width', type=int, default=320, help='network width for fine-tuning')
    parser.add_argument('--net-height', type=int, default=96, help='network height for fine-tuning')
    parser.add_argument('--train-frames', type=int, default=120)
    parser.add_argument('--eval-frames', type=int, default=12, help='held-out frames played into the node')
    parser.add_argument('--finetune-steps', type=int, default=30,
                        help='fine-tuning steps of each run (from the bundled checkpoint)')
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--lr', type=float, default=1e-4, help='fine-tuning learning rate')
    parser.add_argument('--skip-camera-only', '--skip-net', dest='skip_net', action='store_true',
                        help='skip the fine-tuning run without odometry (camera only), to save time')
    parser.add_argument('--seed', type=int, default=0, help='random seed of the fine-tuning runs')
    parser.add_argument('--init', default=None,
                        help=f'checkpoint to start from (default: the shipped {BUNDLED_CHECKPOINT} '
                             "if present, else random; 'random' forces random weights)")
    parser.add_argument('--timeout', type=float, default=30.0, help='seconds to wait for each frame')
    parser.add_argument('--fresh', action='store_true', help='delete the output folder first')
    return parser


@dataclass
class NodeRun:
    """What step 4 collected: the session, the frames answered, publish -> output latencies (s)."""

    session: NodeSession
    answered: list[EvalFrame]
    latency_depth: list[float]
    latency_points: list[float]


TOTAL_STEPS = 5


def make_drives(args: argparse.Namespace, output: Path) -> tuple[list[EvalFrame], list[tuple[str, Path, str]]]:
    """Step 1: the synthetic bags; returns the held-out frames and the fine-tuning runs (name, pose source, bag,
    what)."""
    t = step(1, TOTAL_STEPS, f'synthetic drives ({args.width}x{args.height}) in {output / "bags"}')
    train_bag = ensure_bag(output / 'bags' / 'train', args.train_frames, args.width, args.height, seed=1)
    eval_bag = ensure_bag(output / 'bags' / 'heldout', max(args.eval_frames * 3, 30), args.width, args.height,
                          seed=2)
    runs = [('tf', 'tf', train_bag, 'camera motion from the odometry (TF)')]
    if not args.skip_net:  # the same drive as a robot without odometry records it
        camera_only = ensure_bag(output / 'bags' / 'train_camera_only', args.train_frames, args.width, args.height,
                                 seed=1, with_tf=False)
        runs.append(('camera_only', 'auto', camera_only, 'the same drive without TF: camera motion from the images '
                                                          '(two-view geometry)'))
    frames = load_eval_frames(eval_bag, args.eval_frames)
    done(t, f'{args.train_frames} training frames (camera + odometry in TF'
            + ('; and camera only' if not args.skip_net else '') + f'), {len(frames)} held-out frames')
    return frames, runs


def finetune_runs(args: argparse.Namespace, output: Path, init: Path | None,
                  runs: list[tuple[str, str, Path, str]], device: str) -> dict[str, Path]:
    """Step 2: one fine-tuning run per entry of ``runs``; returns its name -> checkpoint."""
    checkpoints = {}
    for name, pose_source, bag, what in runs:
        t = step(2, TOTAL_STEPS, f'fine-tuning Lite-HR-Depth at {args.net_width}x{args.net_height}, '
                                 f'{args.finetune_steps} steps from {init or "random weights"}, {what}')
        checkpoints[name] = finetune(finetune_config(
            bag, output / f'finetune_{name}', init, args.finetune_steps, args.net_width, args.net_height,
            device, args.batch_size, args.lr, pose_source, seed=args.seed))
        done(t, str(checkpoints[name]))
    return checkpoints


def evaluate_directly(args: argparse.Namespace, output: Path, init: Path | None, checkpoints: dict[str, Path],
                      frames: list[EvalFrame], values: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Step 3: the held-out metrics of random weights, the start and the fine-tuned checkpoints."""
    t = step(3, TOTAL_STEPS, 'evaluating random weights, the starting checkpoint and the fine-tuned ones')
    random_weights = make_random_checkpoint(output / 'random_init', args.net_width, args.net_height)
    results = {'random_init': direct_metrics(random_weights, frames, values)[0]}
    if init is not None:
        results['start_checkpoint'] = direct_metrics(init, frames, values)[0]
    results['finetuned_tf'], results['finetuned_tf_metric'] = direct_metrics(checkpoints['tf'], frames, values)
    if 'camera_only' in checkpoints:
        results['finetuned_camera_only'] = direct_metrics(checkpoints['camera_only'], frames, values)[0]
    done(t)
    return results


def play_into_node(weights: Path, frames: list[EvalFrame], values: Mapping[str, Any], output: Path,
                   timeout: float) -> NodeRun:
    """Step 4: depth_node with ``weights``, the held-out frames played into it."""
    t = step(4, TOTAL_STEPS, 'running depth_node and playing the held-out frames into it over ROS 2')
    session, sent = run_node_session(weights, frames, values, output / 'depth_node.log', timeout)
    depths, points = session.outputs('depth'), session.outputs('points')
    answered = [frame for frame in frames if frame.stamp_ns in sent]
    run = NodeRun(session, answered, [depths[f.stamp_ns][1] - sent[f.stamp_ns] for f in answered],
                  [points[f.stamp_ns][1] - sent[f.stamp_ns] for f in answered])
    done(t, f'{len(answered)}/{len(frames)} frames answered')
    return run


def report_lines(results: dict[str, dict[str, float]], run: NodeRun, played: int) -> list[str]:
    """report.md: the metrics table, what fine-tuning changed, the node's latencies."""
    lines = ['# hr_depth_ros demo report', '',
             f'Held-out synthetic frames: {len(run.answered)} processed by depth_node of {played} played.', '',
             '| model | ' + ' | '.join(REPORTED_METRICS) + ' | scale ratio |', '|---' * (len(REPORTED_METRICS) + 2) + '|']
    for name, metrics in results.items():
        ratio = f'{metrics["scale_ratio"]:.3f}' if name.endswith('_metric') else '(median-scaled)'
        lines.append(f'| {name} | ' + ' | '.join(f'{metrics[k]:.3f}' for k in REPORTED_METRICS) + f' | {ratio} |')
    lines += ['', 'Metrics are median-scaled (monocular), depth capped to 80 m, as on KITTI, except the '
              '`_metric` rows: those are the depth as published, in metres from the checkpoint\'s own metric '
              'scale (fine-tuned with the odometry\'s poses); scale ratio = median(truth) / median(published), '
              '1 for exact metres.']
    if 'start_checkpoint' in results:
        start = results['start_checkpoint']['abs_rel']
        for name, how in (('finetuned_tf', 'with the odometry (TF poses, metric)'),
                          ('finetuned_camera_only', 'from the camera alone (two-view geometry)')):
            if name in results:
                tuned = results[name]['abs_rel']
                lines += ['', f'Fine-tuning {how} changed abs_rel by {100 * (tuned - start) / start:+.1f} % '
                              f'({start:.3f} -> {tuned:.3f}).']
    lines += ['', '| latency (ms) | p50 | p95 | p99 |', '|---|---|---|---|']
    for name, values in (('publish -> depth', run.latency_depth), ('publish -> points', run.latency_points)):
        stats = percentiles(values)
        lines.append(f'| {name} | {stats["p50"]:.1f} | {stats["p95"]:.1f} | {stats["p99"]:.1f} |')
    return lines


def write_outputs(output: Path, frames: list[EvalFrame], run: NodeRun, results: dict[str, dict[str, float]],
                  report: dict[str, Any]) -> list[Path]:
    """Step 5: strips, the point cloud (PLY and a picture), report.json and report.md; returns what was written."""
    from hr_depth_ros.core.pointcloud import write_ply

    t = step(5, TOTAL_STEPS, 'writing pictures, point cloud and report')
    strips = write_strips(frames, run.session.outputs('depth'), output / 'strips')
    (points, colors), _ = run.session.outputs('points')[run.answered[len(run.answered) // 2].stamp_ns]
    ply = write_ply(output / 'points.ply', points, colors)
    cloud_view = output / 'points.png'
    cv2.imwrite(str(cloud_view), cv2.cvtColor(render_point_cloud(points, colors), cv2.COLOR_RGB2BGR))
    report.update({'frames_played': len(frames), 'frames_processed': len(run.answered),
                   'latency_ms_publish_to_depth': percentiles(run.latency_depth),
                   'latency_ms_publish_to_points': percentiles(run.latency_points), 'metrics': results})
    (output / 'report.json').write_text(json.dumps(report, indent=2))
    lines = report_lines(results, run, len(frames))
    (output / 'report.md').write_text('\n'.join(lines) + '\n')
    done(t)
    print('\n' + '\n'.join(lines))
    return [output / 'report.md', output / 'report.json', ply, cloud_view, *strips]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    values = tool_values(args)
    output = Path(args.output).expanduser().resolve()
    if args.fresh and output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    init = None if args.init == 'random' else (Path(args.init) if args.init else bundled_checkpoint())
    started = time.monotonic()
    frames, runs = make_drives(args, output)
    checkpoints = finetune_runs(args, output, init, runs, values['device'])
    results = evaluate_directly(args, output, init, checkpoints, frames, values)
    run = play_into_node(checkpoints['tf'], frames, values, output, args.timeout)
    try:
        if not run.answered:
            print(f'demo: depth_node produced nothing; see {output / "depth_node.log"}', file=sys.stderr)
            return 1
        published = run.session.outputs('depth')
        results['node_published'], results['node_published_metric'] = score_depths(
            [(frame.depth_gt, published[frame.stamp_ns][0]) for frame in run.answered])
        report = {'checkpoints': {'start': str(init) if init else None,
                                  **{f'finetuned_{k}': str(v) for k, v in checkpoints.items()}},
                  'device': values['device'], 'backend': values['backend'], 'precision': values['precision']}
        written = write_outputs(output, frames, run, results, report)
    finally:
        run.session.close()
    print(f'\nEverything is in {output}:')
    for path in [*written, output / 'depth_node.log']:
        print(f'  {path}')
    print(f'Total {time.monotonic() - started:.0f} s.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
