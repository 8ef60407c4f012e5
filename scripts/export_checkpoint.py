"""Export a checkpoint folder for shipping: encoder.pth + depth.pth + hr_depth_ros.json and the
pose network (pose_encoder.pth + pose.pth, so fine-tuning from it without odometry does not start a
pose network from scratch), no optimiser state; optionally with half-precision weights.

    python scripts/export_checkpoint.py SOURCE_DIR DEST_DIR [--fp16] [--note TEXT]

Used to make models/lite_hr_depth_synthetic from a fine-tuning run's best/ folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hr_depth_ros.core.checkpoint import (POSE_FILES, load_depth_checkpoint, load_extra_state,  # noqa: E402
                                          save_depth_checkpoint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('source')
    parser.add_argument('dest')
    parser.add_argument('--fp16', action='store_true', help='store weights as float16 (half the size)')
    parser.add_argument('--note', default='', help='added to the metadata as "note"')
    args = parser.parse_args(argv)
    checkpoint = load_depth_checkpoint(args.source)
    metadata = {k: v for k, v in checkpoint.metadata.items()
                if k not in ('arch', 'height', 'width', 'use_stereo', 'format')}
    if args.note:
        metadata['note'] = args.note
    metadata['exported_from'] = str(Path(args.source).resolve())
    dtype = torch.float16 if args.fp16 else None
    extra = {}
    if all((Path(args.source) / name).is_file() for name in POSE_FILES):
        for name in POSE_FILES:
            state = load_extra_state(args.source, name)
            extra[name] = {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v
                           for k, v in state.items()}
    else:
        print(f'note: {args.source} has no pose network; exporting the depth network only')
    dest = save_depth_checkpoint(args.dest, checkpoint.encoder, checkpoint.decoder, arch=checkpoint.arch,
                                 height=checkpoint.height, width=checkpoint.width,
                                 use_stereo=checkpoint.use_stereo, metadata=metadata,
                                 extra_state=extra, weights_dtype=dtype)
    size = sum(p.stat().st_size for p in dest.iterdir()) / 1e6
    print(f'exported {checkpoint.arch} {checkpoint.width}x{checkpoint.height} to {dest} ({size:.1f} MB)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
