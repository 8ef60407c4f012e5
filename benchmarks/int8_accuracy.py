"""Depth accuracy of precision int8 vs fp32 (OpenVINO) on held-out synthetic frames with ground truth.

    .venv/bin/python benchmarks/int8_accuracy.py [--weights models/lite_hr_depth_synthetic] [--frames 40]
        [--calibration-frames 32] [--threads N]

Held-out drive: a synthetic street drive with seed 2 (``make_synthetic_bag``, 640x192 camera,
exact depth on ``/camera/depth_gt``), scored as the demo scores (``tools.demo.load_eval_frames``
and ``score_depths``: per-frame median scaling, KITTI metrics, depth capped at 80 m). Rows:

- ``fp32``: the OpenVINO fp32 backend (equal to PyTorch fp32 within 1e-3 in disparity);
- ``int8, calibrated on another drive``: calibration frames from a seed-1 drive's bag
  (``calibration`` = that bag, topic ``/camera/image_raw``): real-like frames from "the camera";
- ``int8, default calibration``: no calibration source: the synthetic renderer's default frames.

Also per row: the median over frames of the median |depth - fp32 depth| / fp32 depth, and the
quantisation time. Prints Markdown tables (the machine's load average included).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hr_depth_ros.core.backends import openvino_version  # noqa: E402
from hr_depth_ros.core.inference import DepthEstimator  # noqa: E402
from hr_depth_ros.core.quantization import CalibrationSource, nncf_version  # noqa: E402
from hr_depth_ros.core.resources import package_file  # noqa: E402
from hr_depth_ros.tools.demo import REPORTED_METRICS, load_eval_frames, score_depths  # noqa: E402
from hr_depth_ros.tools.make_synthetic_bag import IMAGE_TOPIC, write_synthetic_bag  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--weights', default=None, help='checkpoint (default: the shipped models/lite_hr_depth_synthetic)')
    parser.add_argument('--frames', type=int, default=40, help='held-out frames scored (seed-2 drive)')
    parser.add_argument('--calibration-frames', type=int, default=32)
    parser.add_argument('--threads', type=int, default=None)
    args = parser.parse_args(argv)
    weights = Path(args.weights) if args.weights else package_file('models/lite_hr_depth_synthetic')
    print(f'- {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, load average '
          f'{os.getloadavg()[0]:.1f}; OpenVINO {openvino_version()}, NNCF {nncf_version()}; weights {weights}')
    with tempfile.TemporaryDirectory(prefix='int8_accuracy_') as tmp:
        tmp = Path(tmp)
        held_out = write_synthetic_bag(tmp / 'seed2', frames=args.frames, width=640, height=192, seed=2)
        calibration_bag = write_synthetic_bag(tmp / 'seed1', frames=args.calibration_frames, width=640, height=192,
                                              seed=1, with_tf=False)
        frames = load_eval_frames(held_out, args.frames)
        cache = tmp / 'cache'
        configurations = {
            'fp32': {'precision': 'fp32'},
            'int8, calibrated on another drive (seed 1 bag)': {
                'precision': 'int8',
                'calibration': CalibrationSource(str(calibration_bag), IMAGE_TOPIC, args.calibration_frames)},
            'int8, default calibration (synthetic frames)': {
                'precision': 'int8', 'calibration': CalibrationSource(frames=args.calibration_frames)},
        }
        depths: dict[str, list[np.ndarray]] = {}
        rows = []
        for name, options in configurations.items():
            start = time.perf_counter()
            estimator = DepthEstimator(weights, device='cpu', backend='openvino', threads=args.threads,
                                       cache_dir=cache, **options)
            built_s = time.perf_counter() - start
            depths[name] = [estimator.predict_depth(frame.rgb) for frame in frames]
            pairs = [(frame.depth_gt, cv2.resize(depth, (frame.rgb.shape[1], frame.rgb.shape[0]),
                                                 interpolation=cv2.INTER_LINEAR))
                     for frame, depth in zip(frames, depths[name])]
            metrics = score_depths(pairs)[0]
            difference = float(np.median([np.median(np.abs(d - r) / r) for d, r in zip(depths[name], depths['fp32'])]))
            quantized = getattr(estimator.runner, 'quantized_s', None)
            rows.append((name, metrics, difference, quantized, built_s))
            print(f'  done: {name}: {estimator.backend_description}', file=sys.stderr, flush=True)
    print(f'- {estimator.arch} {estimator.width}x{estimator.height}, {len(frames)} held-out frames (seed 2, 640x192), '
          f'{args.calibration_frames} calibration frames, {estimator.threads} thread(s); load average '
          f'{os.getloadavg()[0]:.1f} at the end\n')
    print('| precision | ' + ' | '.join(REPORTED_METRICS) + ' | median rel. depth diff. vs fp32 | quantisation s |')
    print('|---|' + '---:|' * (len(REPORTED_METRICS) + 2))
    for name, metrics, difference, quantized, _ in rows:
        print(f'| {name} | ' + ' | '.join(f'{metrics[k]:.4f}' for k in REPORTED_METRICS)
              + f' | {difference:.4f} | {"" if quantized is None else f"{quantized:.1f}"} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
