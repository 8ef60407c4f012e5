"""SSIM's 3x3 window means on the CPU: ``avg_pool2d`` (monodepth2's way) vs sums of shifted slices.

    .venv/bin/python benchmarks/photometric_loss.py [--threads 1] [--size 320x96] [--batch 4] [--repeat 20]

Times, in one run, both ways of the window mean (:func:`hr_depth_ros.core.training.losses.box_mean_3x3`
and ``avg_pool2d`` of the reflection-padded image), forward and forward + backward; the SSIM loss of
a batch; and one online-adaptation / fine-tuning training step (Lite-HR-Depth from the shipped
checkpoint, batch ``--batch``, TF poses of a synthetic drive) with each. Prints a Markdown table with
the ratio to ``avg_pool2d``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hr_depth_ros.core.training import losses  # noqa: E402

SLICES = losses.box_mean_3x3


def pooled(image: torch.Tensor) -> torch.Tensor:
    """The reference: average pooling of the reflection-padded image."""
    return F.avg_pool2d(F.pad(image, (1, 1, 1, 1), mode='reflect'), 3, 1)


def timed(work: Callable[[], object], repeat: int) -> float:
    work()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        work()
    return (time.perf_counter() - start) / repeat * 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--size', default='320x96')
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--repeat', type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split('x'))
    x = torch.rand(args.batch, 3, height, width, requires_grad=True)
    y = torch.rand(args.batch, 3, height, width)
    rows = []

    def both(name: str, make: Callable[[], Callable[[], object]], repeat: int) -> None:
        results = {}
        for way, function in (('avg_pool2d', pooled), ('slices', SLICES)):
            losses.box_mean_3x3 = function
            try:
                results[way] = timed(make(), repeat)
            finally:
                losses.box_mean_3x3 = SLICES
        rows.append((name, results['avg_pool2d'], results['slices']))

    def window_forward() -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return losses.box_mean_3x3(x)
        return run

    def window_backward() -> Callable[[], object]:
        return lambda: losses.box_mean_3x3(x).sum().backward()

    def ssim_backward() -> Callable[[], object]:
        return lambda: losses.ssim_loss(x, y).mean().backward()

    both(f'window mean, forward ({args.batch}x3x{height}x{width})', window_forward, args.repeat)
    both('window mean, forward + backward', window_backward, args.repeat)
    both('SSIM loss, forward + backward', ssim_backward, args.repeat)
    both(f'training step (Lite-HR-Depth, batch {args.batch}, TF poses)', training_step(width, height, args.batch),
         max(3, args.repeat // 4))
    print(f'\n{args.threads} thread(s), torch {torch.__version__}\n')
    print('| operation | avg_pool2d ms | slices ms | speed-up |')
    print('|---|---:|---:|---:|')
    for name, reference, ours in rows:
        print(f'| {name} | {reference:.2f} | {ours:.2f} | {reference / ours:.2f}x |')
    return 0


def training_step(width: int, height: int, batch: int) -> Callable[[], Callable[[], object]]:
    """A factory of one online-adaptation training step on a synthetic drive (the worker's own code)."""
    from hr_depth_ros.core.adaptation_worker import Adapter, WorkerSettings
    from hr_depth_ros.core.synthetic import SyntheticDrive

    weights = str(REPO / 'models' / 'lite_hr_depth_synthetic')
    drive = SyntheticDrive(width=width, height=height, fps=10.0, seed=3, num_frames=40)
    adapter = Adapter(WorkerSettings(start=weights, anchor=weights, output=tempfile.mkdtemp(), batch_size=batch),
                      lambda event: None)
    adapter.reset(drive.K)
    for index in range(len(drive)):
        frame = drive.frame(index)
        adapter.add_frame(frame.rgb, frame.pose_world_from_camera, frame.stamp_ns)
    train, _ = adapter.ring.triplets(int(1e9))
    return lambda: (lambda: adapter._train_step(train))


if __name__ == '__main__':
    sys.exit(main())
