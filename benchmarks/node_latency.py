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
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hr_depth_ros.core.depth_options import (PARAMETERS_BY_NAME, add_tool_arguments, ros_arguments,  # noqa: E402
                                             tool_values)
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
    """Records arrival time - header stamp of depth and points, and the node's statistics (a GraphProbe)."""

    def __init__(self, domain_id: int) -> None:
        from sensor_msgs.msg import Image, PointCloud2
        from std_msgs.msg import String

        from hr_depth_ros.ros.probe import BEST_EFFORT, GraphProbe, stamp_ns

        self.probe = GraphProbe('latency_listener', domain_id=domain_id)
        self.probe.subscribe(Image, '/depth', 'depth', convert=stamp_ns)
        self.probe.subscribe(PointCloud2, '/points', 'points', convert=stamp_ns)
        # like rviz: someone watches the colourised depth, so the node computes it
        self.probe.subscribe(Image, '/depth/colored', 'colored', convert=stamp_ns)
        self.probe.subscribe(String, '/hr_depth/statistics', 'statistics', convert=lambda m: json.loads(m.data))
        self.probe.subscribe(Image, '/image', 'input', reliability=BEST_EFFORT, convert=stamp_ns)

    def connected(self) -> bool:
        """The node's outputs and statistics are discovered (the input tap may wait for play_bag)."""
        return all(sub.get_publisher_count() > 0 for sub in self.probe.subscriptions[:4])

    def reset(self) -> None:
        self.probe.clear()

    def close(self) -> None:
        self.probe.close()

    def latency_ms(self, name: str) -> np.ndarray:
        """Arrival - header stamp of the output ``name`` (one per stamp: the first arrival)."""
        first: dict[int, int] = {}
        for arrival, stamp in self.probe.arrivals(name):
            first.setdefault(stamp, arrival)
        return np.array([(arrival - stamp) / 1e6 for stamp, arrival in first.items()])

    def statistics(self) -> list[dict]:
        return self.probe.received('statistics')


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
    parameters = {**tool_values(args), 'weights': str(weights), 'points_stride': args.points_stride,
                  'statistics_period': 0.5}
    node_cmd = [sys.executable, '-m', 'hr_depth_ros.ros.depth_node', '--ros-args', '--params-file',
                str(REPO / 'config' / 'depth.yaml'), *ros_arguments(parameters)]
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
        before = (listener.statistics() or [{'received': 0, 'processed': 0, 'dropped': 0}])[-1]
        listener.reset()
        play(env, bag, rate=1.0, limit=0, log=case / 'play.log')
        time.sleep(3.0)
        after = listener.statistics()[-1]
        depth, points = listener.latency_ms('depth'), listener.latency_ms('points')
        inputs = sorted(listener.probe.received('input'))
        arrivals = sorted(arrival for arrival, _ in listener.probe.arrivals('depth'))
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
    add_tool_arguments(parser)  # the node's flags (--device, --backend, --threads, --precision, ...): the option table
    # The node as it starts by default (precision fp16: fp32 on the CPU), on the CPU.
    parser.set_defaults(device='cpu', precision=PARAMETERS_BY_NAME['precision'].default)
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
