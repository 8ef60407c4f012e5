"""Fine-tuning variants from the shipped checkpoint on the demo's drives: held-out abs_rel per variant.

    .venv/bin/python benchmarks/finetune_pose_sources.py [--variants net_no_anchor net_anchor1 ...] [--steps 30]
        [--output /tmp/pose_sources] [--eval-frames 24] [--threads 1]

The question it answers: which camera motion and which anchoring make a short fine-tune better
than the model it starts from. Drives as in the demo (tools/demo.py): training drive seed 1 (120
frames, 640x192, 10 fps, odometry in TF), held-out drive seed 2 (72 frames, ``--eval-frames`` of
them scored); Lite-HR-Depth at 320x96, batch 4, lr 1e-4, from ``models/lite_hr_depth_synthetic``,
each variant a ``finetune`` process (started by the demo's ``finetune`` helper) on ``--threads``
threads. Scored: ``latest/`` (no model selection, so the table shows what training did) and
``best/`` (what a user gets), median-scaled abs_rel against the ground truth, depth capped at
80 m. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hr_depth_ros.tools.demo import (bundled_checkpoint, direct_metrics, ensure_bag, finetune,  # noqa: E402
                                    finetune_config, load_eval_frames)

VARIANTS = {  # name -> (pose source, more TrainingConfig fields)
    'tf': ('tf', {}),
    'tf_anchor1': ('tf', {'anchor_weight': 1.0}),
    'net_no_anchor': ('net', {'anchor_weight': 0.0}),
    'net_anchor0.1': ('net', {'anchor_weight': 0.1}),
    'net_anchor1': ('net', {'anchor_weight': 1.0}),
    'net_anchor3': ('net', {'anchor_weight': 3.0}),
    'net_anchor1_seed1': ('net', {'anchor_weight': 1.0, 'seed': 1}),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--output', default='/tmp/pose_sources')
    parser.add_argument('--eval-frames', type=int, default=24)
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()
    output = Path(args.output)
    start = bundled_checkpoint()
    if start is None:
        print('the shipped checkpoint models/lite_hr_depth_synthetic is missing', file=sys.stderr)
        return 1
    train = ensure_bag(output / 'bags' / 'train', 120, 640, 192, seed=1)
    heldout = ensure_bag(output / 'bags' / 'heldout', 72, 640, 192, seed=2)
    frames = load_eval_frames(heldout, args.eval_frames)
    inference = {'device': 'cpu', 'backend': 'torch', 'threads': args.threads, 'precision': 'fp32'}

    def abs_rel(folder: Path) -> float:
        return direct_metrics(folder, frames, inference)[0]['abs_rel']

    baseline = abs_rel(start)
    os.environ['OMP_NUM_THREADS'] = str(args.threads)  # for the finetune processes
    rows = []
    for name in args.variants:
        run = output / name
        shutil.rmtree(run, ignore_errors=True)  # a fresh run each time (the demo's helper would reuse it)
        pose_source, more = VARIANTS[name]
        began = time.monotonic()
        config = finetune_config(train, run, start, args.steps, 320, 96, 'cpu', 4, 1e-4, pose_source, **more)
        finetune(config)
        seconds = time.monotonic() - began
        latest, best = abs_rel(run / 'latest'), abs_rel(run / 'best')
        flags = ' '.join(f'--{key.replace("_", "-")} {value:g}' for key, value in more.items())
        rows.append((name, f'--pose-source {pose_source} {flags}'.strip(), latest, best, seconds))
        print(f'  done: {name} latest {latest:.4f} best {best:.4f} ({seconds:.0f} s)', flush=True)
    load = os.getloadavg()[0]
    print(f'\nstart checkpoint: held-out abs_rel {baseline:.4f}; {args.steps} steps per variant; load average {load:.1f}\n')
    print('| variant | finetune arguments | latest abs_rel | vs start | best/ abs_rel | vs start | wall s |')
    print('|---|---|---:|---:|---:|---:|---:|')
    for name, extra, latest, best, seconds in rows:
        print(f'| {name} | `{extra}` | {latest:.4f} | {100 * (latest / baseline - 1):+.1f} % | {best:.4f} | '
              f'{100 * (best / baseline - 1):+.1f} % | {seconds:.0f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
