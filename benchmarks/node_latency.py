"""End-to-end latency of the depth node: synthetic bag -> play_bag (30 Hz) -> depth node -> subscriber.

    .venv/bin/python benchmarks/node_latency.py [--arch lite_hr_depth hr_depth] [--size 640x192]
        [--camera 640x480] [--frames 90] [--rate-hz 30] [--device cpu] [--backend auto] [--threads N]
        [--precision fp16|fp32|int8] [--calibration-frames N] [--weights FOLDER]

For each model and network resolution: writes a synthetic bag at the camera resolution
(``--camera``, default: the network's), starts the node
(subprocess, local DDS with the large-data profile), plays the bag into it with restamped
headers and measures in this process: processed rate, dropped frames, latency stamp->depth
and stamp->points (p50/p95/p99; the stamp is set when play_bag publishes), and the share of
the node's time per stage (from its ~/statistics topic). Random weights unless --weights
(speed does not depend on the values). ``--precision int8`` quantises at the node's start
(empty model cache, synthetic calibration frames; the start-up wait allows for it). Also a micro-benchmark of building a 1024x320 cloud
(benchmarks/pointcloud.py compares it with the previous path).
Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hr_depth_ros.ros.transport import local_ros_env  # noqa: E402

STAGES = ('decode', 'inference', 'resize', 'colorize', 'points', 'publish')


def pointcloud_microbenchmark(width: int = 1024, height: int = 320, repeats: int = 20) -> dict[str, float]:
    """ms to build a full-resolution xyzrgb cloud as the node does, and its PointCloud2 message."""
    from hr_depth_ros.core.geometry import ray_planes
    from hr_depth_ros.core.pointcloud import CloudPacker
    from hr_depth_ros.ros.ros_messages import packed_cloud_msg

    sys.path.insert(0, str(REPO / 'benchmarks'))
    from pointcloud import make_frame

    depth, rgb, K = make_frame(width, height)
    packer = CloudPacker()
    timings: dict[str, list[float]] = {'cloud': [], 'message': []}
    for _ in range(repeats):
        start = time.perf_counter()
        cloud = packer.pack(depth, ray_planes(K, height, width), rgb, max_range=50.0)
        timings['cloud'].append(time.perf_counter() - start)
        start = time.perf_counter()
        packed_cloud_msg(cloud)
        timings['message'].append(time.perf_counter() - start)
    return {name: float(np.median(values) * 1000) for name, values in timings.items()}


class Listener:
    """Records arrival time - header stamp of depth and points, and the node's statistics."""

    def __init__(self, domain_id: int) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, PointCloud2
        from std_msgs.msg import String

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node('latency_listener', context=self.context)
        self.lock = threading.Lock()
        self.latency_ms: dict[str, dict[int, float]] = {'depth': {}, 'points': {}, 'colored': {}}
        self.input_stamps_ns: list[int] = []
        self.depth_arrivals_ns: list[int] = []
        self.statistics: list[dict] = []
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        camera_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
        self.subs = [
            self.node.create_subscription(Image, '/depth', lambda m: self._on_output('depth', m), qos),
            self.node.create_subscription(PointCloud2, '/points', lambda m: self._on_output('points', m), qos),
            # like rviz: someone watches the colourised depth, so the node computes it
            self.node.create_subscription(Image, '/depth/colored', lambda m: self._on_output('colored', m), qos),
            self.node.create_subscription(String, '/hr_depth/statistics', self._on_statistics, 10),
        ]
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.input_sub = self.node.create_subscription(Image, '/image', self._on_input, camera_qos)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_input(self, msg) -> None:
        with self.lock:
            self.input_stamps_ns.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)

    def _on_output(self, name: str, msg) -> None:
        now_ns = time.time_ns()
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.latency_ms[name][stamp_ns] = (now_ns - stamp_ns) / 1e6
            if name == 'depth':
                self.depth_arrivals_ns.append(now_ns)

    def _on_statistics(self, msg) -> None:
        with self.lock:
            self.statistics.append(json.loads(msg.data))

    def connected(self) -> bool:
        return all(sub.get_publisher_count() > 0 for sub in self.subs)

    def reset(self) -> None:
        with self.lock:
            for values in self.latency_ms.values():
                values.clear()
            self.statistics.clear()
            self.input_stamps_ns.clear()
            self.depth_arrivals_ns.clear()

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def make_checkpoint(arch: str, width: int, height: int, folder: Path) -> Path:
    import torch

    from hr_depth_ros.core.checkpoint import save_depth_checkpoint
    from hr_depth_ros.core.networks import build_depth_model

    torch.manual_seed(0)
    encoder, decoder = build_depth_model(arch)
    save_depth_checkpoint(folder, encoder, decoder, arch=arch, height=height, width=width)
    return folder


def play(env: dict, bag: Path, rate: float, limit: int, log: Path) -> None:
    command = [sys.executable, '-m', 'hr_depth_ros.ros.play_bag', '--bag', str(bag), '--topics', '/camera/image_raw',
               '/camera/camera_info', '--rate', str(rate), '--restamp', '--qos', 'best_effort',
               '--wait-subscribers', '120', '--remap', '/camera/image_raw:=/image',
               '--remap', '/camera/camera_info:=/camera_info']
    if limit:
        command += ['--limit', str(limit)]
    with open(log, 'ab') as handle:
        subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, check=True, timeout=600)


def run_case(arch: str, width: int, height: int, args: argparse.Namespace, workdir: Path) -> dict:
    """One model/resolution: returns the table row values."""
    from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag

    case = workdir / f'{arch}_{width}x{height}'
    case.mkdir()
    camera_width, camera_height = parse_size(args.camera) if args.camera else (width, height)
    bag = write_synthetic_bag(case / 'bag', frames=args.frames, width=camera_width, height=camera_height,
                              fps=args.rate_hz, storage='mcap', seed=0)
    weights = Path(args.weights) if args.weights else make_checkpoint(arch, width, height, case / 'weights')
    env = local_ros_env()
    env.update(PYTHONUNBUFFERED='1', RCUTILS_LOGGING_BUFFERED_STREAM='0',
               HR_DEPTH_ROS_CACHE=str(workdir / 'model_cache'))  # converts on start, like a first start
    node_log = case / 'node.log'
    node_cmd = [sys.executable, '-m', 'hr_depth_ros.ros.depth_node', '--ros-args', '--params-file',
                str(REPO / 'config' / 'depth.yaml'), '-p', f'weights:={weights}', '-p', f'device:={args.device}',
                '-p', f'points_stride:={args.points_stride}', '-p', 'statistics_period:=0.5',
                '-p', f'backend:={args.backend}', '-p', f'threads:={args.threads}',
                '-p', f'precision:={args.precision}', '-p', f'calibration_frames:={args.calibration_frames}']
    listener = Listener(int(env['ROS_DOMAIN_ID']))
    with open(node_log, 'wb') as handle:
        node = subprocess.Popen(node_cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    started = time.monotonic()
    try:
        deadline = time.monotonic() + (900 if args.precision == 'int8' else 180)  # int8: quantises first
        while not listener.connected():
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'node did not come up; log:\n{node_log.read_text()}')
            time.sleep(0.1)
        startup_s = time.monotonic() - started
        play(env, bag, rate=1.0, limit=args.warmup, log=case / 'play.log')  # warm-up: first inferences are slow
        time.sleep(2.0)
        before = listener.statistics[-1] if listener.statistics else {'received': 0, 'processed': 0, 'dropped': 0}
        listener.reset()
        play(env, bag, rate=1.0, limit=0, log=case / 'play.log')
        time.sleep(3.0)
        with listener.lock:
            after = listener.statistics[-1]
            depth = np.array(list(listener.latency_ms['depth'].values()))
            points = np.array(list(listener.latency_ms['points'].values()))
            inputs = sorted(listener.input_stamps_ns)
            arrivals = sorted(listener.depth_arrivals_ns)
        # rates over the span of the input stamps (restamped when published), seen by this process
        played_s = (inputs[-1] - inputs[0]) / 1e9 * len(inputs) / max(1, len(inputs) - 1)
        stage_means = {s: after['stage_ms'].get(s, {}).get('mean', 0.0) for s in STAGES}
        total = sum(stage_means.values()) or 1.0
        ready = next((line for line in node_log.read_text(errors='replace').splitlines() if 'ready:' in line), '')
        return {
            'model': arch, 'size': f'{width}x{height}', 'camera': f'{camera_width}x{camera_height}',
            'device': args.device,
            'backend': ('openvino int8' if 'int8 (' in ready else 'openvino') if 'openvino' in ready else 'torch',
            'threads': args.threads or 'default', 'startup_s': startup_s,
            'frames': args.frames, 'input_hz': len(inputs) / played_s,
            'processed_hz': (len(arrivals) - 1) / ((arrivals[-1] - arrivals[0]) / 1e9) if len(arrivals) > 1 else 0.0,
            'received': after['received'] - before['received'],
            'processed': after['processed'] - before['processed'],
            'dropped': after['dropped'] - before['dropped'],
            'depth_ms': np.percentile(depth, [50, 95, 99]) if depth.size else [np.nan] * 3,
            'points_ms': np.percentile(points, [50, 95, 99]) if points.size else [np.nan] * 3,
            'stage_ms': stage_means,
            'stage_share': {s: 100.0 * v / total for s, v in stage_means.items()},
        }
    finally:
        listener.close()
        stop_process(node)


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    """SIGINT (a clean rclpy shutdown), SIGKILL after ``timeout``; the exit code."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


def parse_size(text: str) -> tuple[int, int]:
    """'640x192' -> (640, 192)."""
    width, height = (int(v) for v in text.lower().split('x'))
    return width, height


def machine_description() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    return (f'{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__}, '
            f'rmw_fastrtps_cpp with config/fastdds_large_data.xml')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', nargs='+', default=['lite_hr_depth'], help='lite_hr_depth, hr_depth, monodepth2')
    parser.add_argument('--size', nargs='+', default=['640x192'], help='WxH network (and camera) resolutions')
    parser.add_argument('--frames', type=int, default=90, help='frames played per case')
    parser.add_argument('--warmup', type=int, default=5, help='frames played before measuring')
    parser.add_argument('--rate-hz', type=float, default=30.0, help='camera rate')
    parser.add_argument('--camera', help='WxH camera resolution of the played images (default: --size)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--backend', default='auto', choices=('auto', 'torch', 'openvino'))
    parser.add_argument('--threads', type=int, default=0, help="the node's threads parameter (0: its default)")
    parser.add_argument('--precision', default='fp16', choices=('fp32', 'fp16', 'bf16', 'int8'),
                        help="the node's precision parameter (default fp16, the node's default: fp32 on the CPU)")
    parser.add_argument('--calibration-frames', type=int, default=32, help='precision int8: synthetic calibration frames')
    parser.add_argument('--points-stride', type=int, default=2)
    parser.add_argument('--weights', help='checkpoint folder to use instead of random weights (one --arch)')
    args = parser.parse_args(argv)

    print(f'Machine: {machine_description()}; load average {os.getloadavg()[0]:.1f} at the start\n')
    micro = pointcloud_microbenchmark()
    print('| point cloud 1024x320 xyzrgb (stride 1) | CloudPacker (back-project + pack) | PointCloud2 message (copy) |')
    print('| --- | ---: | ---: |')
    print(f"| median of 20 | {micro['cloud']:.1f} ms | {micro['message']:.1f} ms |\n")

    rows = []
    with tempfile.TemporaryDirectory(prefix='node_latency_') as tmp:
        for arch in args.arch:
            for size in args.size:
                width, height = parse_size(size)
                rows.append(run_case(arch, width, height, args, Path(tmp)))
    print(f'| model | size | camera | device | backend | threads | start-up s | input Hz | processed Hz | dropped / received | stamp->depth p50/p95/p99 ms '
          f'| stamp->points p50/p95/p99 ms | {" | ".join(STAGES)} (mean ms, share) |')
    print('| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ' + ' | '.join('---:' for _ in STAGES) + ' |')
    for row in rows:
        depth = '/'.join(f'{v:.0f}' for v in row['depth_ms'])
        points = '/'.join(f'{v:.0f}' for v in row['points_ms'])
        stages = ' | '.join(f"{row['stage_ms'][s]:.1f} ({row['stage_share'][s]:.0f}%)" for s in STAGES)
        print(f"| {row['model']} | {row['size']} | {row['camera']} | {row['device']} | {row['backend']} "
              f"| {row['threads']} | {row['startup_s']:.0f} | {row['input_hz']:.1f} | {row['processed_hz']:.1f} "
              f"| {row['dropped']} / {row['received']} | {depth} | {points} | {stages} |")
    print(f'\nload average {os.getloadavg()[0]:.1f} at the end; start-up = node process start until its outputs '
          'are subscribed (loading, conversion / quantisation when the model cache is empty)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
