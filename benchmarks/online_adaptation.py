"""Online adaptation in the depth node (issue 23): published depth error over time, and the rate, adapt on vs off.

    .venv/bin/python benchmarks/online_adaptation.py [--frames 600] [--passes 3] [--off-passes 1]
        [--size 320x96] [--fps 10] [--seed 3] [--weights models/lite_hr_depth_synthetic]
        [--plot docs/images/online_adaptation.png] [--json FILE] [--node-param NAME:=VALUE ...]
    .venv/bin/python benchmarks/online_adaptation.py --worker-only 60 [--lr 0 (by pose source)] [--loss-scales 1] [--buffer 200]
    .venv/bin/python benchmarks/online_adaptation.py --worker-only 80 --tum [--passes 4]
    .venv/bin/python benchmarks/online_adaptation.py --tum [--passes 40] [--off-passes 5]

Writes a synthetic drive with TF (``tools/make_synthetic_bag``: camera, camera_info, ground-truth
depth, odometry ``odom -> base_link`` at 30 Hz, the camera mount on ``/tf_static``) and plays it
``--passes`` times in a row, in real time, into the depth node (a subprocess, local DDS) started
from ``--weights`` with ``adapt:=true``: headers restamped to the wall clock and continuing across
passes, the odometry continuing too (pass k's poses are the drive's, moved on by k times the
drive's own displacement: a robot driving on through the same street). Every published depth
image is scored against the ground truth of its frame: median-scaled abs_rel (the shape) and
median(gt) / median(depth) (the scale: 1 when the node publishes metres). Then the same with
``adapt:=false`` for ``--off-passes`` passes: the rate (frames answered / frames sent) and the error
without adaptation. Prints a table per pass and per 10 s, the acceptance numbers (third pass vs first,
scale, answered on / off), the node's last ``~/adaptation`` report; ``--plot`` draws the curve
(OpenCV, no matplotlib needed).

``--worker-only N --tum``: the worker alone on the real camera of ``shared/realdata/tum_fr1_xyz_37f``
(hand-held Kinect, 37 frames at 30 Hz, rectified, motion-capture poses from its TF) streamed
``--passes`` times (a time gap between passes: no triplet spans two), N / passes training steps
after each; the serving model is scored against the Kinect depth of every frame that has it, as
published (metres once the scale is found) and median-scaled.

``--tum`` (without ``--worker-only``): the same sequence played into the depth node with ``adapt`` on
(``--passes``, default 40, each its 37 JPEG frames at their own 30 Hz stamps with the motion-capture TF,
a 1.5 s pause between passes so that no triplet spans the jump back to the start; camera_info with
the lens distortion, so the node rectifies), scored against the rectified Kinect depth as published
(metres once the node found the scale) and median-scaled; then ``--off-passes`` with ``adapt`` off.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hr_depth_ros.core.bags import read_messages  # noqa: E402
from hr_depth_ros.core.depth_options import NodeConfig  # noqa: E402
from hr_depth_ros.core.evaluation import evaluate_depth  # noqa: E402
from hr_depth_ros.core.geometry import matrix_from_quaternion, quaternion_from_matrix  # noqa: E402
from hr_depth_ros.core.image_decoding import depth_to_metres, image_to_array  # noqa: E402
from hr_depth_ros.core.tf_poses import TransformTree  # noqa: E402
from hr_depth_ros.ros.transport import local_ros_env, random_domain_id  # noqa: E402
from hr_depth_ros.tools import make_synthetic_bag as bagtool  # noqa: E402
from hr_depth_ros.tools.demo import score_depths  # noqa: E402

WINDOW_S = 10.0
TUM_BAG = REPO.parent / 'shared' / 'realdata' / 'tum_fr1_xyz_37f'
TUM_PAUSE_S = 1.5       # between TUM passes: longer than adapt_max_gap (1 s), so no triplet spans two passes


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split('x'))
    return width, height


def load_drive(bag: Path) -> dict[str, Any]:
    """Frames (image, camera_info, ground truth), odometry and static TF of a synthetic bag, in time order."""
    frames: dict[int, dict[str, Any]] = {}
    odometry, static = [], []
    topics = [bagtool.IMAGE_TOPIC, bagtool.CAMERA_INFO_TOPIC, bagtool.DEPTH_GT_TOPIC, bagtool.TF_TOPIC,
              bagtool.TF_STATIC_TOPIC]
    for topic, timestamp_ns, _, msg in read_messages(bag, topics):
        if topic == bagtool.TF_TOPIC:
            odometry.append((timestamp_ns, msg))
        elif topic == bagtool.TF_STATIC_TOPIC:
            static.append(msg)
        else:
            frame = frames.setdefault(timestamp_ns, {})
            frame[{bagtool.IMAGE_TOPIC: 'image', bagtool.CAMERA_INFO_TOPIC: 'info',
                   bagtool.DEPTH_GT_TOPIC: 'gt'}[topic]] = msg if topic != bagtool.DEPTH_GT_TOPIC else \
                image_to_array(msg).astype(np.float32)
    ordered = [dict(frames[stamp], stamp_ns=stamp) for stamp in sorted(frames)]
    return {'frames': ordered, 'odometry': odometry, 'static': static}


def load_tum(bag: Path) -> dict[str, Any]:
    """The TUM bag as :func:`load_drive` gives a synthetic one: colour frames (``image``: the CompressedImage,
    ``info``, ``gt``: the Kinect depth in metres rectified like the node rectifies the colour image, at camera
    size, or None), the odometry, the static TF, and ``rectifier`` (the camera_info's)."""
    from hr_depth_ros.core.rectification import calibration_of, rectifier_for

    frames: dict[int, dict[str, Any]] = {}
    depths, odometry, static = {}, [], []
    for topic, timestamp_ns, stamp, msg in read_messages(bag, ['/camera/image_raw/compressed', '/camera/camera_info',
                                                              '/camera/depth/image_raw', '/tf', '/tf_static']):
        if topic == '/tf':
            odometry.append((timestamp_ns, msg))
        elif topic == '/tf_static':
            static.append(msg)
        elif topic == '/camera/depth/image_raw':
            depths[stamp] = depth_to_metres(msg)
        else:
            frames.setdefault(stamp, {})['image' if topic.endswith('compressed') else 'info'] = msg
    ordered = [dict(frames[stamp], stamp_ns=stamp) for stamp in sorted(frames)]
    rectifier = rectifier_for(calibration_of(ordered[0]['info']), (ordered[0]['info'].width,
                                                                    ordered[0]['info'].height))
    for frame in ordered:
        depth = depths.get(frame['stamp_ns'])
        frame['gt'] = None if depth is None else rectifier.rectify(depth, nearest=True)
    return {'frames': ordered, 'odometry': odometry, 'static': static, 'rectifier': rectifier}


def drive_tree(drive: dict[str, Any]) -> TransformTree:
    """The drive's TF (odometry and static transforms) as a :class:`TransformTree`."""
    tree = TransformTree(max_gap_s=1.0)
    for _, msg in drive['odometry']:
        tree.add_message(msg)
    for msg in drive['static']:
        tree.add_message(msg, static=True)
    return tree


def compressed(drive: dict[str, Any]) -> bool:
    """Whether the drive's frames are CompressedImage messages (else Image)."""
    return hasattr(drive['frames'][0]['image'], 'format')


def drive_displacement(drive: dict[str, Any]) -> np.ndarray:
    """``D`` with ``T_odom_base(t0 + N / fps) = D @ T_odom_base(t0)``, from the bag's own odometry.

    The bag's odometry ends about a frame after the last image; the pose one frame period after
    it is extrapolated from the last two frame intervals' motion (constant velocity), which is
    what a robot driving on through the same street again would report.
    """
    stamps = [f['stamp_ns'] for f in drive['frames']]
    poses = drive_tree(drive).lookup(bagtool.ODOM_FRAME, bagtool.BASE_FRAME, [stamps[0], stamps[-2], stamps[-1]]).poses
    step = np.linalg.inv(poses[1]) @ poses[2]          # one frame's motion at the end, in the body frame
    end = poses[2] @ step                              # the pose one frame period after the last frame
    return end @ np.linalg.inv(poses[0])


class Harness:
    """In-process rclpy node: plays the drive, records the node's depth (scored on arrival) and reports."""

    def __init__(self, domain_id: int, drive: dict[str, Any]) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image
        from std_msgs.msg import String
        from tf2_msgs.msg import TFMessage

        from hr_depth_ros.ros.play_bag import to_rclpy

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node('adaptation_benchmark', context=self.context)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        image_type = CompressedImage if compressed(drive) else Image
        self.image_pub = self.node.create_publisher(
            image_type, '/camera/image_raw/compressed' if compressed(drive) else '/camera/image_raw', reliable)
        self.info_pub = self.node.create_publisher(CameraInfo, '/camera/camera_info', reliable)
        self.tf_pub = self.node.create_publisher(TFMessage, '/tf', QoSProfile(depth=100,
                                                                               reliability=ReliabilityPolicy.RELIABLE))
        self.static_pub = self.node.create_publisher(TFMessage, '/tf_static', QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.lock = threading.Lock()
        self.expected: dict[int, tuple[int, int, float]] = {}   # stamp -> (pass, frame, play time)
        self.scores: list[dict[str, float]] = []
        self.reports: list[dict[str, Any]] = []
        self.statistics: list[dict[str, Any]] = []
        self.gt = [f['gt'] for f in drive['frames']]
        self.subs = [
            self.node.create_subscription(Image, '/depth', self._on_depth, reliable),
            self.node.create_subscription(String, '/hr_depth/adaptation',
                                          lambda m: self._append(self.reports, json.loads(m.data)), 10),
            self.node.create_subscription(String, '/hr_depth/statistics',
                                          lambda m: self._append(self.statistics, json.loads(m.data)), 10)]
        self.images = [to_rclpy(f['image'], image_type()) for f in drive['frames']]
        self.infos = [to_rclpy(f['info'], CameraInfo()) for f in drive['frames']]
        self.odometry = [(stamp, to_rclpy(msg, TFMessage())) for stamp, msg in drive['odometry']]
        self.odometry_T = [[_matrix(tf.transform) for tf in msg.transforms] for _, msg in self.odometry]
        self.static = [to_rclpy(msg, TFMessage()) for msg in drive['static']]
        self.frame_stamps = [f['stamp_ns'] for f in drive['frames']]
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _append(self, target: list, item: Any) -> None:
        with self.lock:
            target.append(item)

    def _on_depth(self, msg: Any) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            known = self.expected.get(stamp)
        if known is None:
            return
        pass_index, frame, played = known
        gt = self.gt[frame]
        if gt is None:  # a frame without ground truth (a TUM frame without a Kinect image)
            return
        depth = np.frombuffer(msg.data, np.float32).reshape(msg.height, msg.width)
        if depth.shape != gt.shape:
            depth = cv2.resize(depth, gt.shape[::-1], interpolation=cv2.INTER_LINEAR)
        try:
            errors, published = score_depths([(gt, np.nan_to_num(depth, nan=80.0))])
        except ValueError:
            return
        with self.lock:
            self.scores.append({'pass': pass_index, 'frame': frame, 't': played, 'abs_rel': errors['abs_rel'],
                                'scale_ratio': errors['scale_ratio'], 'abs_rel_published': published['abs_rel']})

    def connected(self) -> bool:
        return (self.image_pub.get_subscription_count() > 0 and self.info_pub.get_subscription_count() > 0
                and self.subs[0].get_publisher_count() > 0)

    def play(self, passes: int, fps: float, displacement: np.ndarray, log: Any, pause_s: float = 0.0) -> int:
        """Publish ``passes`` passes in real time, ``pause_s`` between two; returns the frames sent."""
        shift = time.time_ns() - self.frame_stamps[0]
        period_ns = self.frame_stamps[-1] - self.frame_stamps[0] + int(round(1e9 / fps)) + int(pause_s * 1e9)
        for msg in self.static:
            for tf in msg.transforms:
                _set_stamp(tf.header, tf_stamp(tf) + shift)
            self.static_pub.publish(msg)
        start = time.monotonic()
        sent = 0
        for pass_index in range(passes):
            moved = np.linalg.matrix_power(displacement, pass_index)
            events = [(stamp, 'tf', i) for i, (stamp, _) in enumerate(self.odometry)]
            events += [(stamp, 'frame', i) for i, stamp in enumerate(self.frame_stamps)]
            events.sort(key=lambda e: (e[0], e[1] == 'frame'))
            for stamp, kind, index in events:
                new_stamp = stamp + shift + pass_index * period_ns
                delay = start + (new_stamp - shift - self.frame_stamps[0]) / 1e9 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if kind == 'tf':
                    self.tf_pub.publish(_moved_tf(self.odometry[index][1], self.odometry_T[index], moved, new_stamp))
                    continue
                image, info = self.images[index], self.infos[index]
                _set_stamp(image.header, new_stamp)
                _set_stamp(info.header, new_stamp)
                with self.lock:
                    self.expected[new_stamp] = (pass_index, index, time.monotonic() - start)
                self.info_pub.publish(info)
                self.image_pub.publish(image)
                sent += 1
            if passes <= 10 or (pass_index + 1) % 10 == 0 or pass_index + 1 == passes:
                log(f'  pass {pass_index + 1}/{passes} played ({time.monotonic() - start:.0f} s)')
        return sent

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def _matrix(transform: Any) -> np.ndarray:
    t, r = transform.translation, transform.rotation
    T = np.eye(4)
    T[:3, :3] = matrix_from_quaternion(np.array([[r.x, r.y, r.z, r.w]]))[0]
    T[:3, 3] = (t.x, t.y, t.z)
    return T


def tf_stamp(tf: Any) -> int:
    return tf.header.stamp.sec * 1_000_000_000 + tf.header.stamp.nanosec


def _set_stamp(header: Any, stamp_ns: int) -> None:
    header.stamp.sec, header.stamp.nanosec = int(stamp_ns // 1_000_000_000), int(stamp_ns % 1_000_000_000)


def _moved_tf(msg: Any, originals: list[np.ndarray], moved: np.ndarray, stamp_ns: int) -> Any:
    """``msg`` with its transforms set to ``moved @ original``, restamped (modified in place and returned)."""
    for tf, original in zip(msg.transforms, originals):
        t, r = tf.transform.translation, tf.transform.rotation
        T = moved @ original
        t.x, t.y, t.z = (float(v) for v in T[:3, 3])
        r.x, r.y, r.z, r.w = (float(v) for v in quaternion_from_matrix(T))
        _set_stamp(tf.header, stamp_ns)
    return msg


def run_node(args: argparse.Namespace, drive: dict[str, Any], adapt: bool, passes: int, workdir: Path,
             displacement: np.ndarray, pause_s: float = 0.0) -> dict[str, Any]:
    """Start the node, play ``passes`` passes (``pause_s`` between two), collect the scores and the node's reports."""
    domain = args.domain if args.domain is not None else random_domain_id()
    env = local_ros_env(domain)
    os.environ.update({k: v for k, v in env.items() if k.startswith(('FASTDDS', 'ROS_'))})
    log_path = workdir / f'node_adapt_{"on" if adapt else "off"}.log'
    command = [sys.executable, '-m', 'hr_depth_ros.ros.depth_node', '--ros-args', '-p', f'weights:={args.weights}',
               '-p', f'adapt:={"true" if adapt else "false"}', '-p', f'adapt_output:={workdir / "adapted"}',
               '-p', 'adapt_resume:=false', '-p', 'statistics_period:=2.0',
               '-r', 'image:=/camera/image_raw', '-r', 'camera_info:=/camera/camera_info']
    if compressed(drive):
        command += ['-p', 'image_transport:=compressed', '-r', 'image/compressed:=/camera/image_raw/compressed']
    for parameter in args.node_param:
        command += ['-p', parameter]
    harness = Harness(domain, drive)
    with open(log_path, 'w') as log_file:
        proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600  # a first start converts the model for OpenVINO (minutes on a busy CPU)
        while not harness.connected():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'the node did not come up (rc {proc.poll()}); log {log_path}:\n'
                                   + log_path.read_text()[-3000:])
            time.sleep(0.1)
        time.sleep(1.0)
        print(f'adapt {"on" if adapt else "off"}: node ready, playing {passes} pass(es) of '
              f'{len(harness.frame_stamps)} frames', flush=True)
        sent = harness.play(passes, args.fps, displacement, lambda text: print(text, flush=True), pause_s)
        time.sleep(3.0)
        with harness.lock:
            result = {'adapt': adapt, 'passes': passes, 'sent': sent, 'scores': list(harness.scores),
                      'reports': list(harness.reports), 'statistics': list(harness.statistics), 'log': str(log_path)}
    finally:
        if proc.poll() is None:
            proc.send_signal(2)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        harness.close()
    result['exit_code'] = proc.returncode
    return result


def summarize(run: dict[str, Any], frames: int) -> list[dict[str, Any]]:
    """Per pass: answered fraction (of the ``frames`` frames with ground truth), mean median-scaled abs_rel,
    mean abs_rel as published, median scale ratio."""
    rows = []
    for pass_index in range(run['passes']):
        scores = [s for s in run['scores'] if s['pass'] == pass_index]

        def mean(key: str, scores: list = scores) -> float:
            return float(np.mean([s[key] for s in scores])) if scores else math.nan
        rows.append({'pass': pass_index + 1, 'sent': frames, 'answered': len(scores),
                     'answered_fraction': len(scores) / frames, 'abs_rel': mean('abs_rel'),
                     'abs_rel_published': mean('abs_rel_published'),
                     'scale_ratio': float(np.median([s['scale_ratio'] for s in scores])) if scores else math.nan})
    return rows


def grouped(rows: list[dict[str, Any]], groups: int = 8) -> list[dict[str, Any]]:
    """Per-pass rows merged into about ``groups`` rows of consecutive passes (``pass``: '1-5'); as they are when few."""
    if len(rows) <= 10:
        return [dict(row, pass_=str(row['pass'])) for row in rows]
    size = math.ceil(len(rows) / groups)
    merged = []
    for start in range(0, len(rows), size):
        part = [r for r in rows[start:start + size] if r['answered']]
        merged.append({'pass_': f"{rows[start]['pass']}-{rows[min(start + size, len(rows)) - 1]['pass']}",
                       'answered': sum(r['answered'] for r in rows[start:start + size]),
                       'sent': sum(r['sent'] for r in rows[start:start + size]),
                       **{key: float(np.mean([r[key] for r in part])) if part else math.nan
                          for key in ('abs_rel', 'abs_rel_published', 'scale_ratio')}})
    return merged


def windows(run: dict[str, Any]) -> list[tuple[float, float, float]]:
    """(window start s, mean abs_rel, median scale ratio) per WINDOW_S of play time."""
    if not run['scores']:
        return []
    times = np.array([s['t'] for s in run['scores']])
    out = []
    for start in np.arange(0.0, times.max() + 1e-9, WINDOW_S):
        chosen = [s for s in run['scores'] if start <= s['t'] < start + WINDOW_S]
        if chosen:
            out.append((float(start), float(np.mean([s['abs_rel'] for s in chosen])),
                        float(np.median([s['scale_ratio'] for s in chosen]))))
    return out


def plot(path: Path, on: dict[str, Any], off: dict[str, Any] | None, pass_s: float, title: str) -> None:
    """Median-scaled abs_rel per 2 s over play time (adapt on, and off), pass boundaries dashed; OpenCV drawing."""
    width, height, left, right, top, bottom = 900, 420, 70, 20, 40, 50
    canvas = np.full((height, width, 3), 255, np.uint8)

    def series(run: dict[str, Any]) -> list[tuple[float, float]]:
        bins: dict[int, list[float]] = {}
        for s in run['scores']:
            bins.setdefault(int(s['t'] // 2.0), []).append(s['abs_rel'])
        return [((k + 0.5) * 2.0, float(np.mean(v))) for k, v in sorted(bins.items())]

    curves = [(series(on), (200, 80, 20), 'adapt on')]
    if off is not None:  # the same drive without adaptation, drawn under every pass
        baseline = series(off)
        curves.append(([(t + k * pass_s, v) for k in range(on['passes']) for t, v in baseline if t < pass_s],
                       (60, 60, 200), 'adapt off'))
    t_max = max(pass_s * on['passes'], 1.0)
    values = [v for curve, _, _ in curves for _, v in curve]
    y_max = max(values) * 1.1 if values else 1.0
    y_min = min(values) * 0.9 if values else 0.0

    def xy(t: float, v: float) -> tuple[int, int]:
        return (int(left + (width - left - right) * t / t_max),
                int(top + (height - top - bottom) * (1 - (v - y_min) / max(y_max - y_min, 1e-9))))

    cv2.rectangle(canvas, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    few = on['passes'] <= 10  # pass boundaries and one line per pass; many short passes: one line
    for k in range(1, on['passes'] if few else 0):
        x = xy(k * pass_s, y_min)[0]
        for y in range(top, height - bottom, 8):
            cv2.line(canvas, (x, y), (x, y + 4), (150, 150, 150), 1)
    for k in range(6):
        v = y_min + (y_max - y_min) * k / 5
        cv2.putText(canvas, f'{v:.3f}', (5, xy(0, v)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for k in range(int(t_max // 30) + 1):
        x = xy(k * 30, y_min)[0]
        cv2.putText(canvas, f'{k * 30}', (x - 8, height - bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.putText(canvas, 'play time (s)' + ('; dashed: start of pass 2, 3' if few else ''), (left, height - 10), cv2.FONT_HERSHEY_SIMPLEX,
                0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (left, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for n, (curve, colour, label) in enumerate(curves):
        for k in range(on['passes'] if few else 1):  # one polyline per pass
            points = np.array([xy(t, v) for t, v in curve if not few or k * pass_s <= t < (k + 1) * pass_s], np.int32)
            if len(points) > 1:
                cv2.polylines(canvas, [points], False, colour, 2 if n == 0 else 1, cv2.LINE_AA)
        cv2.putText(canvas, label, (width - right - 110, top + 20 + 18 * n), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1,
                    cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), canvas)


def worker_settings(args: argparse.Namespace, output: str) -> Any:
    """The worker's settings for ``--worker-only`` (the node's adapt_* defaults unless given)."""
    from hr_depth_ros.core.adaptation_worker import WorkerSettings

    return WorkerSettings(start=args.weights, anchor=args.weights, output=output, lr=args.lr,
                          loss_scales=args.loss_scales, buffer_frames=args.buffer, margin=args.margin)


def worker_only(args: argparse.Namespace, width: int, height: int) -> int:
    """The worker alone, in this process, per step (no ROS, no clock): the drive's frames with their exact
    poses go into an Adapter (its ring keeps the last ``--buffer`` frames); it searches the metric scale,
    trains and judges as in the node; every 10 steps the serving model is scored on every 10th frame
    of the whole drive. Shows what the node gains per training step whatever the CPU is doing."""
    import torch

    from hr_depth_ros.core.adaptation_worker import Adapter
    from hr_depth_ros.core.synthetic import SyntheticDrive

    torch.set_num_threads(1)
    drive = SyntheticDrive(width=width, height=height, fps=args.fps, seed=args.seed, num_frames=args.frames)
    events: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix='online_adaptation_worker_') as tmp:
        adapter = Adapter(worker_settings(args, tmp), events.append)
        adapter.reset(drive.K)
        scored = [drive.frame(i) for i in range(0, args.frames, 10)]
        for index in range(args.frames):
            frame = drive.frame(index)
            adapter.add_frame(frame.rgb, frame.pose_world_from_camera, frame.stamp_ns)

        def evaluate() -> tuple[float, float]:
            errors = [evaluate_depth(frame.depth, adapter.serving_depth(frame.rgb), min_depth=1e-3, max_depth=80.0)
                      for frame in scored]
            return float(np.mean([e['abs_rel'] for e in errors])), float(np.median([e['scale_ratio'] for e in errors]))

        start_abs_rel, _ = evaluate()
        adapter.work()  # the metric scale search
        rows = [(0, 1, *evaluate(), 0.0)]
        began = time.perf_counter()
        while adapter.steps < args.worker_only:
            adapter.work()
            if adapter.steps % 10 == 0 and adapter.steps > rows[-1][0]:
                rows.append((adapter.steps, adapter.accepted, *evaluate(), time.perf_counter() - began))
                print(f'  step {rows[-1][0]}: serving abs_rel {rows[-1][2]:.4f}', flush=True)
    print(f'\nworker alone: lr {adapter.lr:g}, buffer {args.buffer} frames, margin {args.margin:g}; '
          f'start model abs_rel {start_abs_rel:.4f} '
          '(median-scaled, every 10th frame of the drive)')
    print('| steps | models accepted | serving abs_rel | vs start | scale ratio | worker s |')
    print('|---:|---:|---:|---:|---:|---:|')
    for steps, accepted, abs_rel, ratio, seconds in rows:
        print(f'| {steps} | {accepted} | {abs_rel:.4f} | {100 * (abs_rel / start_abs_rel - 1):+.1f} % | {ratio:.3f} | '
              f'{seconds:.0f} |')
    rejected = sum(e['event'] == 'rejected' for e in events)
    print(f'judgements: {sum(e["event"] == "accepted" for e in events) - 1} accepted, {rejected} rejected; '
          f'load average {os.getloadavg()}')
    return 0


def tum_stream(bag: Path, width: int, height: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The TUM bag's colour frames in time order as the node would hand them to the worker (rectified, at
    network size, camera pose from TF; ``gt``: rectified Kinect depth in metres at camera size or None, ``rgb``
    the rectified camera image) and the intrinsics at network size."""
    from hr_depth_ros.core.geometry import scale_intrinsics
    from hr_depth_ros.core.image_decoding import compressed_to_rgb, resize_rgb

    drive = load_tum(bag)
    stamps = [frame['stamp_ns'] for frame in drive['frames']]
    poses = drive_tree(drive).lookup('odom', 'camera_optical_frame', stamps).poses
    rectifier = drive['rectifier']
    frames = []
    for frame, pose in zip(drive['frames'], poses):
        rgb = rectifier.rectify(compressed_to_rgb(frame['image']))
        frames.append({'stamp_ns': frame['stamp_ns'], 'pose': pose, 'rgb': rgb, 'small': resize_rgb(rgb, width, height),
                       'gt': frame['gt']})
    size = frames[0]['rgb'].shape[1], frames[0]['rgb'].shape[0]
    return frames, scale_intrinsics(rectifier.K, width / size[0], height / size[1])


def tum_worker(args: argparse.Namespace, width: int, height: int) -> int:
    """``--worker-only N --tum``: see the module docstring."""
    import torch

    from hr_depth_ros.core.adaptation_worker import Adapter

    bag = TUM_BAG
    if not (bag / 'metadata.yaml').is_file():
        print(f'no bag at {bag} (see shared/realdata/README.md)', file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    frames, K = tum_stream(bag, width, height)
    scored = [f for f in frames if f['gt'] is not None]
    span_ns = frames[-1]['stamp_ns'] - frames[0]['stamp_ns'] + 2_000_000_000  # + 2 s: passes never form a triplet
    events: list[dict[str, Any]] = []
    rows = []
    with tempfile.TemporaryDirectory(prefix='online_adaptation_tum_') as tmp:
        adapter = Adapter(worker_settings(args, tmp), events.append)
        adapter.reset(K)

        def evaluate() -> tuple[dict[str, float], dict[str, float]]:
            return score_depths([(frame['gt'], cv2.resize(adapter.serving_depth(frame['small']), frame['gt'].shape[::-1],
                                                          interpolation=cv2.INTER_LINEAR)) for frame in scored])

        rows.append((0, 0, 0, *evaluate(), False))
        per_pass = max(1, args.worker_only // max(1, args.passes))
        for pass_index in range(args.passes):
            for frame in frames:
                adapter.add_frame(frame['small'], frame['pose'], frame['stamp_ns'] + pass_index * span_ns)
            target = adapter.steps + per_pass
            while adapter.steps < target:
                adapter.work()
            rows.append((pass_index + 1, adapter.steps, adapter.accepted, *evaluate(), adapter.metric))
            print(f'  pass {pass_index + 1}: {adapter.steps} steps, median-scaled abs_rel {rows[-1][3]["abs_rel"]:.4f}',
                  flush=True)
    print(f'\nworker alone on {bag.name}: {len(frames)} frames a pass ({len(scored)} scored against the Kinect), '
          f'{args.passes} passes, {per_pass} steps after each; lr {adapter.lr:g}, buffer {args.buffer}, margin '
          f'{args.margin:g}, {width}x{height}, one thread')
    print('| after pass | steps | models accepted | median-scaled abs_rel | abs_rel as published | scale ratio |')
    print('|---:|---:|---:|---:|---:|---:|')
    for pass_index, steps, accepted, scaled, published, metric in rows:
        metres = f'{published["abs_rel"]:.3f} | {published["scale_ratio"]:.3f}' if metric else '- | -'
        print(f'| {pass_index} | {steps} | {accepted} | {scaled["abs_rel"]:.3f} | {metres} |')
    rejected = sum(e['event'] == 'rejected' for e in events)
    print(f'judgements: {sum(e["event"] == "accepted" for e in events) - 1} accepted, {rejected} rejected; '
          f'load average {os.getloadavg()}')
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--frames', type=int, default=600, help='frames per pass (600 = 60 s at 10 Hz)')
    parser.add_argument('--passes', type=int, default=None, help='passes with adapt on (default 3; --tum: 40)')
    parser.add_argument('--off-passes', type=int, default=None,
                        help='passes with adapt off (0: skip that run; default 1; --tum: 5)')
    parser.add_argument('--size', default='320x96', help='camera size (the network size of the shipped model)')
    parser.add_argument('--fps', type=float, default=10.0)
    parser.add_argument('--seed', type=int, default=3, help='scene seed (the shipped model was trained on seed 11)')
    parser.add_argument('--weights', default=str(REPO / 'models' / 'lite_hr_depth_synthetic'))
    parser.add_argument('--bag', help='use this synthetic bag (default: written to a temporary folder)')
    parser.add_argument('--plot', help='write the curve as a PNG here')
    parser.add_argument('--json', help='write the numbers here')
    parser.add_argument('--workdir', help='keep the bag, node logs and accepted models here (default: a temporary '
                                          'folder, removed)')
    parser.add_argument('--domain', type=int, default=int(os.environ.get('ROS_DOMAIN_ID', '0') or 0) or None,
                        help='ROS domain (default: $ROS_DOMAIN_ID, else a random one)')
    parser.add_argument('--worker-only', type=int, default=0, metavar='STEPS',
                        help='instead: the worker alone in this process for STEPS steps, scored every 10 steps')
    node = NodeConfig()  # the worker-only defaults are the node's adapt_* defaults
    parser.add_argument('--lr', type=float, default=node.adapt_lr,
                        help='--worker-only: learning rate (adapt_lr; 0: by pose source)')
    parser.add_argument('--loss-scales', type=int, default=node.adapt_loss_scales,
                        help='--worker-only: decoder scales of the loss (adapt_loss_scales)')
    parser.add_argument('--buffer', type=int, default=node.adapt_buffer_frames,
                        help='--worker-only: frames in the ring (adapt_buffer_frames)')
    parser.add_argument('--margin', type=float, default=node.adapt_margin,
                        help='--worker-only: relative held-out improvement a candidate needs (adapt_margin)')
    parser.add_argument('--tum', action='store_true',
                        help='the real TUM RGB-D sequence of shared/realdata instead of a synthetic drive (see above)')
    parser.add_argument('--node-param', action='append', default=[], metavar='NAME:=VALUE',
                        help='extra node parameter for both runs (repeatable)')
    args = parser.parse_args(argv)
    width, height = parse_size(args.size)
    node_tum = args.tum and not args.worker_only
    args.passes = args.passes or (40 if node_tum else 3)
    args.off_passes = args.off_passes if args.off_passes is not None else 5 if node_tum else 1
    if args.worker_only:
        return tum_worker(args, width, height) if args.tum else worker_only(args, width, height)
    if node_tum and not (TUM_BAG / 'metadata.yaml').is_file():
        print(f'no bag at {TUM_BAG} (see shared/realdata/README.md)', file=sys.stderr)
        return 1
    if node_tum:
        args.fps = 30.0  # the frame interval that follows each pass (the frames keep their own stamps)
    with tempfile.TemporaryDirectory(prefix='online_adaptation_') as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if node_tum:
            drive, pause = load_tum(TUM_BAG), TUM_PAUSE_S
            displacement = np.eye(4)  # every pass the same poses: a hand-held camera going over the desk again
            print(f'{TUM_BAG.name}: {len(drive["frames"])} JPEG frames 640x480 with lens distortion, '
                  f'{sum(f["gt"] is not None for f in drive["frames"])} with Kinect depth, {len(drive["odometry"])} '
                  f'motion-capture TF messages; {pause:g} s between passes', flush=True)
        else:
            bag = Path(args.bag) if args.bag else workdir / 'drive' if (workdir / 'drive').is_dir() else \
                bagtool.write_synthetic_bag(
                workdir / 'drive', frames=args.frames, width=width, height=height, fps=args.fps, seed=args.seed)
            drive, pause = load_drive(bag), 0.0
            displacement = drive_displacement(drive)
            print(f'drive: {len(drive["frames"])} frames {width}x{height} at {args.fps:g} Hz, '
                  f'{len(drive["odometry"])} odometry messages; each pass moves the odometry on by '
                  f'{np.linalg.norm(displacement[:3, 3]):.1f} m', flush=True)
        frames = sum(f['gt'] is not None for f in drive['frames'])
        stamps = [f['stamp_ns'] for f in drive['frames']]
        pass_s = (stamps[-1] - stamps[0]) / 1e9 + 1.0 / args.fps + pause
        on = run_node(args, drive, True, args.passes, workdir, displacement, pause)
        off = run_node(args, drive, False, args.off_passes, workdir, displacement, pause) if args.off_passes else None
        on_rows = summarize(on, frames)
        off_rows = summarize(off, frames) if off else []
        print('\n| run | pass | answered / sent | abs_rel (median-scaled) | abs_rel as published | '
              'scale ratio median(gt)/median(depth) |')
        print('|---|---:|---:|---:|---:|---:|')
        for name, rows in (('adapt on', on_rows), ('adapt off', off_rows)):
            for row in grouped(rows):
                print(f"| {name} | {row['pass_']} | {row['answered']} / {row['sent']} | {row['abs_rel']:.4f} | "
                      f"{row['abs_rel_published']:.4f} | {row['scale_ratio']:.3f} |")
        print(f'\nadapt on, per {WINDOW_S:g} s of play: (start s, abs_rel, scale ratio)')
        for start, abs_rel, ratio in windows(on):
            print(f'  {start:5.0f}  {abs_rel:.4f}  {ratio:.3f}')
        first, last = on_rows[0], on_rows[-1]
        gain = 1.0 - last['abs_rel'] / first['abs_rel']
        answered_off = np.mean([r['answered_fraction'] for r in off_rows]) if off_rows else math.nan
        answered_on = np.mean([r['answered_fraction'] for r in on_rows])
        print(f'\nacceptance: abs_rel pass {last["pass"]} vs pass 1: {100 * gain:.1f} % better (>= 15 %); '
              f'scale ratio over pass {last["pass"]}: {last["scale_ratio"]:.3f} (within 10 % of 1); answered on / off: '
              f'{answered_on:.3f} / {answered_off:.3f} = {answered_on / answered_off:.2f}x (>= 0.8)')
        report = on['reports'][-1] if on['reports'] else {}
        print('node ~/adaptation at the end:', json.dumps({k: report.get(k) for k in (
            'state', 'reason', 'steps', 'accepted', 'rejected', 'swaps', 'restarts', 'kept', 'still', 'no_pose',
            'inbox_full', 'metric_scale', 'candidate', 'serving', 'depth_units')}))
        for run in (on, off):
            if run is not None and run['statistics']:
                last = run['statistics'][-1]
                inference = last.get('stage_ms', {}).get('inference', {})
                print(f"node statistics, adapt {'on' if run['adapt'] else 'off'}: processed {last['processed']} of "
                      f"{last['received']} received, inference mean {inference.get('mean')} ms / p95 "
                      f"{inference.get('p95')} ms")
        print(f'load average at the end: {os.getloadavg()}')
        if args.plot:
            plot(Path(args.plot), on, off, pass_s,
                 'published depth abs_rel (median-scaled, 2 s bins); '
                 + (TUM_BAG.name if node_tum else f'{width}x{height} drive') + f' with TF played {args.passes}x')
            print(f'plot: {args.plot}')
        if args.json:
            Path(args.json).write_text(json.dumps({
                'on': on_rows, 'off': off_rows, 'windows_on': windows(on), 'windows_off': windows(off) if off else [],
                'gain': gain, 'answered_ratio': answered_on / answered_off, 'report': report,
                'statistics': {name: run['statistics'][-1] for name, run in (('on', on), ('off', off))
                               if run is not None and run['statistics']},
                'load_average': os.getloadavg()}, indent=2))
        for run in (on, off):
            if run is not None and run['exit_code'] not in (0, -2):
                print(f"warning: the node exited with {run['exit_code']} (log {run['log']})")
    return 0


if __name__ == '__main__':
    sys.exit(main())
