"""Fleet-scale fine-tuning figures: frame cache speed-up, memory while preparing, DDP samples/s.

    .venv/bin/python benchmarks/fleet.py [--parts cache,memory,ddp] [--bags 3] [--frames 60]
        [--memory-frames 120 240] [--ddp-steps 12] [--nproc 1 2]

- ``cache``: ``--bags`` synthetic drives (``--frames`` frames, 640x192 JPEG ``CompressedImage``, the
  common camera format) prepared at 256x96 three ways: without a cache (per-run decoding), into an
  empty ``--frame-cache`` (first run) and from it (second run); seconds and the ratio first/second.
- ``memory``: a raw ``sensor_msgs/Image`` 1280x720 rgb8 bag of each ``--memory-frames`` length
  prepared in a fresh process; peak RSS growth over the process's peak after a warm-up on a small
  bag (``ru_maxrss``) next to the bag's size.
- ``ddp``: ``torchrun --standalone --nproc_per_node N`` fine-tuning (128x64, batch 2 per rank, 1
  thread per rank, pose network) for ``--ddp-steps`` steps; samples/s of all ranks together as
  the trainer reports it (steady-state: from the first step on, data preparation excluded);
  ``--nproc 1 2 1 2`` interleaves repeated runs; ``--ddp-device cuda`` runs them on GPUs (NCCL).

Prints Markdown tables. Figures depend on the load of the machine: compare ratios within a run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hr_depth_ros.tools.make_synthetic_bag import COMPRESSED_TOPIC, write_synthetic_bag  # noqa: E402
from hr_depth_ros.core.training.cache import prepare_frames  # noqa: E402
from hr_depth_ros.core.training.data import DataConfig  # noqa: E402

BIG_TOPIC = '/camera/image_raw'


def write_raw_bag(path: Path, frames: int, width: int = 1280, height: int = 720) -> Path:
    """A camera-only rosbag2 (sqlite3) of ``frames`` raw rgb8 Images, fast to write: shifted noise frames."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.LATEST)
    types = typestore.types
    base = np.random.default_rng(0).integers(0, 256, (height, width + frames, 3), dtype=np.uint8)
    with Writer(path, version=8, storage_plugin=StoragePlugin.SQLITE3) as writer:
        connection = writer.add_connection(BIG_TOPIC, 'sensor_msgs/msg/Image', typestore=typestore)
        for i in range(frames):
            stamp = 1_000_000_000 + i * 100_000_000
            header = types['std_msgs/msg/Header'](
                stamp=types['builtin_interfaces/msg/Time'](sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id='cam')
            rgb = np.ascontiguousarray(base[:, i:i + width])
            msg = types['sensor_msgs/msg/Image'](header=header, height=height, width=width, encoding='rgb8',
                                                 is_bigendian=0, step=width * 3, data=rgb.reshape(-1))
            writer.write(connection, stamp, typestore.serialize_cdr(msg, 'sensor_msgs/msg/Image'))
    return path


def bag_bytes(bag: Path) -> int:
    return sum(p.stat().st_size for p in bag.rglob('*') if p.is_file())


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def measure_prepare_memory(bag: Path, warmup_bag: Path, width: int = 128, height: int = 64) -> dict[str, float]:
    """In this process: peak RSS growth (bytes) while preparing ``bag`` after a warm-up on ``warmup_bag``."""
    def config(b: Path) -> DataConfig:
        return DataConfig(bags=[b], width=width, height=height, image_topic=BIG_TOPIC, camera_info_topic=None,
                          intrinsics=(500.0, 500.0, 640.0, 360.0), prepare_workers=1)

    prepare_frames(config(warmup_bag)).close()  # imports, codecs and reader buffers at their size
    before = _peak_rss_bytes()
    start = time.perf_counter()
    store = prepare_frames(config(bag))
    seconds = time.perf_counter() - start
    frames = len(store)
    store.close()
    return {'frames': frames, 'growth': _peak_rss_bytes() - before, 'baseline': before, 'seconds': seconds}


def memory_in_child(bag: Path, warmup_bag: Path) -> dict[str, float]:
    """:func:`measure_prepare_memory` in a fresh interpreter (its own peak RSS)."""
    code = ('import json, sys; sys.path.insert(0, sys.argv[3]); sys.path.insert(0, sys.argv[4]); '
            'from fleet import measure_prepare_memory; from pathlib import Path; '
            'print(json.dumps(measure_prepare_memory(Path(sys.argv[1]), Path(sys.argv[2]))))')
    result = subprocess.run([sys.executable, '-c', code, str(bag), str(warmup_bag), str(REPO),
                             str(REPO / 'benchmarks')], capture_output=True, text=True, check=True,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_cache(work: Path, bags: int, frames: int) -> None:
    paths = [write_synthetic_bag(work / f'drive{i}', frames=frames, width=640, height=192, seed=i)
             for i in range(bags)]
    config = DataConfig(bags=paths, width=256, height=96, image_topic=COMPRESSED_TOPIC, prepare_workers=1)
    timings = {}
    for name, cache in (('no cache (decode every run)', None), ('--frame-cache, first run', work / 'cache'),
                        ('--frame-cache, second run', work / 'cache')):
        start = time.perf_counter()
        store = prepare_frames(DataConfig(**{**vars(config), 'frame_cache': cache}))
        timings[name] = time.perf_counter() - start
        count = len(store)
        store.close()
    first, second = timings['--frame-cache, first run'], timings['--frame-cache, second run']
    print(f'\n{bags} bags x {frames} frames (640x192 JPEG) -> {count} frames at 256x96, 1 worker\n')
    print('| preparation | seconds |\n| --- | --- |')
    for name, seconds in timings.items():
        print(f'| {name} | {seconds:.2f} |')
    print(f'\nsecond run / first run: {first / second:.1f}x faster')


def run_memory(work: Path, lengths: list[int]) -> None:
    warmup = write_raw_bag(work / 'warmup', 8)
    print('\n| bag | bag size (MB) | frames | peak RSS growth (MB) | process peak before (MB) | seconds |')
    print('| --- | --- | --- | --- | --- | --- |')
    for frames in lengths:
        bag = write_raw_bag(work / f'raw{frames}', frames)
        result = memory_in_child(bag, warmup)
        print(f'| raw 1280x720 rgb8 x {frames} | {bag_bytes(bag) / 1e6:.0f} | {result["frames"]} | '
              f'{result["growth"] / 1e6:.1f} | {result["baseline"] / 1e6:.0f} | {result["seconds"]:.1f} |')
        shutil.rmtree(bag)


def run_ddp(work: Path, nprocs: list[int], steps: int, device: str = 'cpu') -> None:
    bag = write_synthetic_bag(work / 'ddp_drive', frames=60, width=256, height=96, seed=7)
    print('\n| processes | per-rank batch | effective batch | steps | samples/s (all ranks) | wall s |')
    print('| --- | --- | --- | --- | --- | --- |')
    for run, nproc in enumerate(nprocs):
        output = work / f'ddp{run}-{nproc}'
        command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc),
                   '-m', 'hr_depth_ros.tools.finetune', '--bag', str(bag), '--output', str(output), '--width', '128',
                   '--height', '64', '--batch-size', '2', '--device', device, '--steps', str(steps),
                   '--pose-source', 'net', '--val-fraction', '0', '--save-every', str(steps)]
        env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO), 'MASTER_ADDR': '127.0.0.1'}
        start = time.perf_counter()
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode:
            raise SystemExit(f'torchrun failed:\n{result.stderr[-2000:]}')
        speed = float(re.search(r'finished at step \d+: ([\d.]+) samples/s', result.stderr).group(1))
        print(f'| {nproc} | 2 | {2 * nproc} | {steps} | {speed:.2f} | {wall:.1f} |')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--parts', default='cache,memory,ddp')
    parser.add_argument('--bags', type=int, default=3)
    parser.add_argument('--frames', type=int, default=60)
    parser.add_argument('--memory-frames', type=int, nargs='+', default=[120, 240])
    parser.add_argument('--ddp-steps', type=int, default=12)
    parser.add_argument('--nproc', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--ddp-device', default='cpu', help='ddp: cpu (gloo) or cuda (NCCL, one GPU per rank)')
    args = parser.parse_args(argv)
    import torch
    gpus = 'no GPU used'
    if args.ddp_device != 'cpu':
        gpus = f'DDP on {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}'
    print(f'torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {gpus}')
    work = Path(tempfile.mkdtemp(prefix='hr_depth_fleet_bench-'))
    try:
        parts = args.parts.split(',')
        if 'cache' in parts:
            run_cache(work, args.bags, args.frames)
        if 'memory' in parts:
            run_memory(work, args.memory_frames)
        if 'ddp' in parts:
            run_ddp(work, args.nproc, args.ddp_steps, args.ddp_device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
