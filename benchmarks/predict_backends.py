"""Whole-process ``predict`` time per image, ``--backend torch`` vs ``--backend openvino``, same run.

    .venv/bin/python benchmarks/predict_backends.py [--arch lite_hr_depth] [--size 640x192]
        [--camera 640x480] [--images 40] [--threads 1] [--rounds 2]

Makes a random-weight checkpoint and ``--images`` synthetic street frames (PNG, camera size),
then runs ``python -m hr_depth_ros.tools.predict`` over the folder once per backend per round, in
alternating order, and times each process from start to exit (start-up, checkpoint loading,
model conversion or cache load, decoding, inference, writing .npy + .jpeg). The first
OpenVINO run starts with an empty cache (it converts); later ones load the cached model.
Each round also runs each backend on one image: its time is the start-up plus one image, so
``(t_all - t_one) / (images - 1)`` is the per-image cost with start-up taken out. Prints both
per-image figures, the speed-ups against the median torch run, and the largest |disparity|
difference between the backends over all images.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_inputs(folder: Path, arch: str, size: tuple[int, int], camera: tuple[int, int], images: int) -> Path:
    """Random-weight checkpoint and synthetic frames under ``folder``; returns the checkpoint folder."""
    import torch

    from hr_depth_ros.core.checkpoint import save_depth_checkpoint
    from hr_depth_ros.core.networks import build_depth_model
    from hr_depth_ros.core.synthetic import SyntheticDrive

    torch.manual_seed(0)
    encoder, decoder = build_depth_model(arch)
    weights = save_depth_checkpoint(folder / 'weights', encoder, decoder, arch=arch, height=size[1], width=size[0])
    drive = SyntheticDrive(width=camera[0], height=camera[1], num_frames=images)
    (folder / 'images').mkdir()
    (folder / 'one_image').mkdir()
    for index in range(images):
        rgb = drive.frame(index).rgb
        cv2.imwrite(str(folder / 'images' / f'{index:04d}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (folder / 'one_image' / '0000.png').symlink_to(folder / 'images' / '0000.png')
    return weights


def run_predict(folder: Path, weights: Path, backend: str, threads: int, output: Path, images: str) -> float:
    """Seconds the predict process took, start to exit, over the folder ``folder / images``."""
    command = [sys.executable, '-m', 'hr_depth_ros.tools.predict', '--weights', str(weights), '--device', 'cpu',
               '--backend', backend, '--threads', str(threads), '--cache-dir', str(folder / 'cache'),
               '--output-dir', str(output), '--no-progress', str(folder / images)]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3600,
                            env={**os.environ, 'OMP_NUM_THREADS': str(threads)})
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f'predict --backend {backend} failed:\n{result.stderr[-2000:]}')
    return elapsed


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split('x'))
    return width, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='lite_hr_depth')
    parser.add_argument('--size', default='640x192', help='network resolution WxH')
    parser.add_argument('--camera', default='640x480', help='image resolution WxH')
    parser.add_argument('--images', type=int, default=40)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=2)
    args = parser.parse_args(argv)
    backends = ('torch', 'openvino')
    with tempfile.TemporaryDirectory(prefix='predict_backends_') as tmp:
        folder = Path(tmp)
        weights = make_inputs(folder, args.arch, parse_size(args.size), parse_size(args.camera), args.images)
        runs: list[tuple[str, int, float, float]] = []  # backend, round, seconds all images, seconds one image
        for round_index in range(args.rounds):
            for backend in backends if round_index % 2 == 0 else backends[::-1]:
                seconds = run_predict(folder, weights, backend, args.threads, folder / f'out_{backend}', 'images')
                one = run_predict(folder, weights, backend, args.threads, folder / 'out_one', 'one_image')
                runs.append((backend, round_index, seconds, one))
                print(f'  done: {backend} round {round_index}: {seconds:.1f} s, one image {one:.1f} s',
                      file=sys.stderr, flush=True)
        diff = max(float(np.abs(np.load(path) - np.load(folder / 'out_torch' / path.name)).max())
                   for path in (folder / 'out_openvino').glob('*_disp.npy'))
    def per_image_ms(seconds: float, one: float) -> float:
        return 1000 * (seconds - one) / max(1, args.images - 1)

    torch_s = float(np.median([s for b, _, s, _ in runs if b == 'torch']))
    torch_ms = float(np.median([per_image_ms(s, one) for b, _, s, one in runs if b == 'torch']))
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'- {args.arch} {args.size}, {args.images} camera images {args.camera}, {args.threads} thread(s), '
          f'load average {load:.1f} (machine shared with other jobs)')
    print(f'- max |disparity openvino - torch| over all images: {diff:.2e}\n')
    print('| backend | run | process s | ms per image | speed-up vs torch (median) | start-up + 1 image s '
          '| ms per image without start-up | speed-up vs torch (median) |')
    print('|---|---|---:|---:|---:|---:|---:|---:|')
    first_openvino = True
    for backend, round_index, seconds, one in runs:
        note = ''
        if backend == 'openvino':
            note = ' (converts: empty cache)' if first_openvino else ' (cached model)'
            first_openvino = False
        marginal = per_image_ms(seconds, one)
        print(f'| {backend} | {round_index + 1}{note} | {seconds:.1f} | {1000 * seconds / args.images:.0f} '
              f'| {torch_s / seconds:.2f}x | {one:.1f} | {marginal:.0f} | {torch_ms / marginal:.2f}x |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
