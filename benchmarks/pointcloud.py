"""Point cloud building: depth image (+ RGB) -> PointCloud2 bytes, old path vs the depth node's CloudPacker.

    .venv/bin/python benchmarks/pointcloud.py [--repeats 50] [--markdown]

Cases: 1024x320 xyzrgb at stride 1 and 2, organised, and a 640x480 camera at stride 2 (the
node's default). Methods, timed interleaved in the same run (median of ``--repeats``): the
baseline is the node's path before issue 11 (``depth_to_points``, colour gather by the valid
mask, ``pack_points``); ``CloudPacker`` is its one-pass path now (cached ray planes,
preallocated buffers). The bytes of both are checked to be identical.
Speed-up = baseline median / method median. Depth is random in 1..80 m with 2 % invalid pixels
and max range 50 m (as the node's default), so ~60 % of the points are kept.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hr_depth_ros.core.geometry import depth_to_points, ray_planes  # noqa: E402
from hr_depth_ros.core.pointcloud import CloudPacker, pack_points  # noqa: E402

MAX_RANGE = 50.0
CASES = (  # width, height, stride, organised
    (1024, 320, 1, False), (1024, 320, 2, False), (1024, 320, 1, True), (640, 480, 2, False))


def make_frame(width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 80.0, (height, width)).astype(np.float32)
    depth[rng.random((height, width)) < 0.02] = np.nan
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    K = np.array([[0.58 * width, 0, width / 2 - 0.5], [0, 1.92 * height, height / 2 - 0.5], [0, 0, 1]])
    return depth, rgb, K


def methods(width: int, height: int, stride: int, organized: bool) -> dict[str, Callable[[], np.ndarray]]:
    depth, rgb, K = make_frame(width, height)
    packer = CloudPacker()

    def depth_to_points_and_pack() -> np.ndarray:
        points, valid = depth_to_points(depth, K, stride=stride, max_range=MAX_RANGE, organized=organized)
        colors = rgb[::stride, ::stride]
        return pack_points(points, colors if organized else colors[valid])[0]

    def one_pass() -> np.ndarray:
        return packer.pack(depth[::stride, ::stride], ray_planes(K, height, width, stride), rgb[::stride, ::stride],
                           max_range=MAX_RANGE, organized=organized).data

    return {'depth_to_points + pack_points (before)': depth_to_points_and_pack, 'CloudPacker': one_pass}


def time_case(width: int, height: int, stride: int, organized: bool, repeats: int) -> list[list[str]]:
    runs = methods(width, height, stride, organized)
    reference = next(iter(runs.values()))().tobytes()
    for name, run in runs.items():
        if run().tobytes() != reference:
            raise AssertionError(f'{name} gives different bytes from the baseline')
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for index in range(repeats):  # interleaved, order rotated: load from other processes hits all alike
        for name in names[index % len(names):] + names[:index % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append((time.perf_counter() - start) * 1000)
    baseline = float(np.median(times[names[0]]))
    points = len(reference) // 16
    case = f'{width}x{height} stride {stride}' + (' organised' if organized else '')
    return [[case, str(points), name, f'{np.median(values):.2f}', f'{np.percentile(values, 90):.2f}',
             f'{baseline / np.median(values):.1f}x'] for name, values in times.items()]


HEADER = ['cloud (xyzrgb)', 'points', 'method', 'median ms', 'p90 ms', 'speed-up vs before']


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=50, help='timed calls per method and case (default 50)')
    parser.add_argument('--markdown', action='store_true', help='print a Markdown table')
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error('--repeats must be >= 1')
    rows = [row for case in CASES for row in time_case(*case, args.repeats)]
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'{"- " if args.markdown else ""}{os.cpu_count()} CPU cores, load average {load:.1f} '
          f'(shared with other processes); median of {args.repeats}, interleaved')
    if args.markdown:
        print('\n| ' + ' | '.join(HEADER) + ' |\n|---|---:|---|---:|---:|---:|')
        print('\n'.join('| ' + ' | '.join(row) + ' |' for row in rows))
    else:
        widths = [max(len(r[i]) for r in [HEADER] + rows) for i in range(len(HEADER))]
        print('\n'.join('  '.join(c.ljust(w) for c, w in zip(r, widths)) for r in [HEADER] + rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
