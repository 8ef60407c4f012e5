"""Fine-tune Lite-HR-Depth from random weights on a synthetic drive; held-out metrics before/after.

    .venv/bin/python benchmarks/finetune_synthetic.py [--steps 150] [--minutes 10] [--width 256 --height 96]
        [--batch-size 4] [--lr 5e-4] [--device cpu] [--keep /tmp/finetuned_lite]

Recipe (constants documented here, everything else is the trainer's monodepth2 defaults):
training drive = synthetic seed 0, ``--train-frames`` frames at 2x the training resolution; held-out
drive = seed 1 (a different street), 30 frames. Lite-HR-Depth from random init, Adam ``--lr``
(5e-4: higher than the 1e-4 used for fine-tuning pretrained weights, since this starts from
scratch and has minutes, not days), batch ``--batch-size``, no validation split (the held-out drive
is the test). Training stops at ``--steps`` or when ``--minutes`` have passed, whichever is first.
Metrics: abs_rel / rmse / a1 with per-frame median scaling, ground truth capped at 80 m.
Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hr_depth_ros.core.checkpoint import save_depth_checkpoint  # noqa: E402
from hr_depth_ros.core.evaluation import evaluate_depth, mean_errors  # noqa: E402
from hr_depth_ros.core.inference import DepthEstimator  # noqa: E402
from hr_depth_ros.tools.make_synthetic_bag import DEPTH_GT_TOPIC, write_synthetic_bag  # noqa: E402
from hr_depth_ros.core.networks import build_depth_model  # noqa: E402
from hr_depth_ros.core.training.data import DataConfig, extract_frames  # noqa: E402
from hr_depth_ros.core.training.trainer import Trainer, TrainingConfig  # noqa: E402


class _OutOfTime(Exception):
    pass


def held_out_metrics(weights: Path, bag: Path, width: int, height: int) -> dict[str, float]:
    """Median-scaled metrics over every frame of the held-out bag, at training resolution."""
    estimator = DepthEstimator(weights, device='cpu')
    store = extract_frames(DataConfig(bags=[bag], width=width, height=height, gt_depth_topic=DEPTH_GT_TOPIC))
    try:
        per_frame = [evaluate_depth(store.depth(i), estimator.predict_depth(store.image(i)), max_depth=80.0)
                     for i in range(len(store))]
    finally:
        store.close()
    return mean_errors(per_frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--steps', type=int, default=400)
    parser.add_argument('--minutes', type=float, default=10.0)
    parser.add_argument('--width', type=int, default=256)
    parser.add_argument('--height', type=int, default=96)
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--lr', type=float, default=5e-4)
    parser.add_argument('--train-frames', type=int, default=200)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--keep', default='/tmp/finetuned_lite', help='copy the fine-tuned depth checkpoint (no pose/optimiser state) here')
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(tempfile.mkdtemp(prefix='finetune_bench-'))
    try:
        t0 = time.perf_counter()
        train_bag = write_synthetic_bag(work / 'train', frames=args.train_frames, width=2 * args.width,
                                        height=2 * args.height, seed=0)
        test_bag = write_synthetic_bag(work / 'test', frames=30, width=2 * args.width, height=2 * args.height, seed=1)
        print(f'bags written in {time.perf_counter() - t0:.1f} s', flush=True)
        torch.manual_seed(0)
        encoder, decoder = build_depth_model('lite_hr_depth')
        random_ckpt = save_depth_checkpoint(work / 'random', encoder, decoder, arch='lite_hr_depth',
                                            height=args.height, width=args.width)
        before = held_out_metrics(random_ckpt, test_bag, args.width, args.height)
        print(f'random init: abs_rel {before["abs_rel"]:.3f} a1 {before["a1"]:.3f}', flush=True)

        deadline = time.perf_counter() + 60 * args.minutes
        progress = {}

        def on_event(event: dict) -> None:
            if event['event'] == 'progress':
                progress.update(event)
                if event['step'] % 25 == 0:
                    print(f"  step {event['step']}/{event['total']} loss {event['loss']:.4f} "
                          f"{event['samples_per_s']:.2f} samples/s", flush=True)
                if time.perf_counter() > deadline and event['step'] < event['total']:
                    raise _OutOfTime

        output = work / 'run'
        config = TrainingConfig(bags=[str(train_bag)], output=str(output), arch='lite_hr_depth', width=args.width,
                                height=args.height, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                device=args.device, val_fraction=0.0, save_every=25, seed=0, progress_bar=False)
        t_train = time.perf_counter()
        stopped_early = False
        try:
            Trainer(config, on_event).run()
        except _OutOfTime:
            stopped_early = True  # latest/ holds the last multiple of save_every
        train_s = time.perf_counter() - t_train
        after = held_out_metrics(output / 'latest', test_bag, args.width, args.height)
        import json
        saved_step = json.loads((output / 'latest' / 'hr_depth_ros.json').read_text())['step']
        keep = Path(args.keep)
        if keep.exists():
            shutil.rmtree(keep)
        keep.mkdir(parents=True)
        for name in ('encoder.pth', 'depth.pth', 'hr_depth_ros.json'):  # the depth network only (no pose/Adam)
            shutil.copy2(output / 'latest' / name, keep / name)
        size_mb = sum(f.stat().st_size for f in keep.iterdir()) / 1e6
        print()
        print(f'Lite-HR-Depth, random init, {args.width}x{args.height}, batch {args.batch_size}, lr {args.lr}, '
              f'device {args.device}, {torch.get_num_threads()} threads; {progress.get("step", 0)} steps in '
              f'{train_s / 60:.1f} min{" (time budget reached)" if stopped_early else ""}; evaluated checkpoint '
              f'at step {saved_step}')
        print()
        print('| weights | abs_rel | sq_rel | rmse | a1 |')
        print('| --- | --- | --- | --- | --- |')
        for name, metrics in (('random init', before), (f'fine-tuned ({saved_step} steps)', after)):
            print(f'| {name} | {metrics["abs_rel"]:.3f} | {metrics["sq_rel"]:.3f} | {metrics["rmse"]:.3f} | '
                  f'{metrics["a1"]:.3f} |')
        print()
        print(f'training throughput: {progress.get("samples_per_s", 0):.2f} samples/s; abs_rel ratio after/before '
              f'{after["abs_rel"] / before["abs_rel"]:.2f}; checkpoint {keep} ({size_mb:.1f} MB)')
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
