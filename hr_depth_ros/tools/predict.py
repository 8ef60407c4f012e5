"""Depth for images on disk, like monodepth2's ``test_simple.py``.

    python -m hr_depth_ros.tools.predict --weights HR_Depth_K_MS_1024x320 [--output-dir DIR]
        [--backend auto|torch|openvino] [--threads N] [--precision fp32|int8 [--calibration FOLDER_OR_BAG]]
        IMAGE_OR_FOLDER...

For each image writes ``<stem>_disp.npy`` (the network's scale-0 sigmoid disparity, an
``height x width`` float32 array at network resolution), ``<stem>_depth.npy`` (float32 depth
at network resolution: metres for a checkpoint fine-tuned with metric poses, whose
``hr_depth_ros.json`` records its ``metric_scale``; otherwise ``--depth-scale`` x
``disp_to_depth``, relative units unless you know the scale) and ``<stem>_disp.jpeg``
(colourised, magma, range from the minimum to the 95th percentile, at the image's
resolution). Unreadable images are reported and skipped.
"""
from __future__ import annotations

import argparse
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from hr_depth_ros.core.depth_options import add_tool_arguments, tool_values
from hr_depth_ros.core.image_decoding import IMAGE_FILE_EXTENSIONS as IMAGE_EXTENSIONS
from hr_depth_ros.core.image_decoding import read_image_file as read_rgb
from hr_depth_ros.core.visualization import colorize


def collect_images(inputs: list[str], ext: str | None) -> list[Path]:
    """Expand files and folders into a sorted, de-duplicated list of image paths."""
    extensions = (ext.lower().lstrip('.'),) if ext else IMAGE_EXTENSIONS
    images: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            images.extend(sorted(p for p in path.iterdir()
                                 if p.is_file() and p.suffix.lower().lstrip('.') in extensions
                                 and not p.stem.endswith('_disp')))
        else:
            images.append(path)
    seen: set[Path] = set()
    return [p for p in images if not (p in seen or seen.add(p))]


def write_results(target: Path, disparity: np.ndarray, depth: np.ndarray, rgb: np.ndarray, cmap: str) -> None:
    """``<target>_disp.npy`` / ``<target>_depth.npy`` (network resolution) and ``<target>_disp.jpeg``
    (colourised, image size)."""
    np.save(f'{target}_disp.npy', disparity.astype(np.float32))
    np.save(f'{target}_depth.npy', depth.astype(np.float32))
    full = cv2.resize(disparity, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(f'{target}_disp.jpeg', colorize(full, cmap=cmap, bgr=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='predict', description=__doc__.split('\n\n')[0])
    parser.add_argument('inputs', nargs='+', help='image files and/or folders of images')
    parser.add_argument('--weights', required=True, help='checkpoint folder (encoder.pth + depth.pth)')
    parser.add_argument('--output-dir', help='where to write results (default: beside each image)')
    parser.add_argument('--ext', help='only this extension inside folders (default: common image types)')
    add_tool_arguments(parser)  # --device, --backend, --precision, --depth-scale, --cmap, ... (the option table)
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns 0 when at least one image was processed and none failed, 1 otherwise."""
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from hr_depth_ros.core.checkpoint import CheckpointError
    from hr_depth_ros.core.depth_options import NodeConfig
    from hr_depth_ros.core.inference import DepthEstimator

    try:
        config = NodeConfig.from_values({**tool_values(args), 'weights': args.weights})
        estimator = DepthEstimator.from_config(config)
    except (CheckpointError, ValueError, ImportError) as error:  # ValueError: ConfigError; ImportError: no nncf
        print(f'predict: {error}', file=sys.stderr)
        return 2
    except OSError as error:  # e.g. a model cache that cannot be written (--cache-dir read-only)
        print(f'predict: cannot use {error.filename or args.cache_dir or "the model cache"}: '
              f'{error.strerror or error} (is --cache-dir / $HR_DEPTH_ROS_CACHE writable?)', file=sys.stderr)
        return 2
    images = collect_images(args.inputs, args.ext)
    if not images:
        print(f'predict: no images found in {args.inputs}', file=sys.stderr)
        return 1
    output_dir = Path(args.output_dir).expanduser() if args.output_dir else None
    if output_dir:
        output_dir.mkdir(parents=True, exist_ok=True)
    units = (f'metres (checkpoint metric scale {estimator.metric_scale:.4g})' if estimator.metric_scale
             else 'relative units (no metric scale in the checkpoint)')
    print(f'-> {estimator.arch} at {estimator.width}x{estimator.height} on {estimator.device} '
          f'with {estimator.backend_description}; '
          f'{len(images)} image(s); depth in {units} x {config.depth_scale:g}')
    failed: list[str] = []
    # Reading the next image and writing results run in I/O threads while the network runs
    # (both backends release the GIL): per image the slower of the two, not their sum.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix='predict_io') as io:
        next_rgb = io.submit(read_rgb, images[0])
        writes: deque[Future] = deque()
        for index, path in enumerate(tqdm(images, unit='img', disable=args.no_progress or len(images) < 2)):
            rgb_future = next_rgb
            if index + 1 < len(images):
                next_rgb = io.submit(read_rgb, images[index + 1])
            try:
                rgb = rgb_future.result()
            except ValueError as error:
                failed.append(str(error))
                tqdm.write(f'skipped {error}', file=sys.stderr)
                continue
            disparity = estimator.predict_disparity(rgb)
            writes.append(io.submit(write_results, (output_dir or path.parent) / path.stem, disparity,
                                   estimator.disparity_to_depth(disparity), rgb, config.colormap))
            while len(writes) > 2:  # bounded: results are written about as fast as they come
                writes.popleft().result()
        for write in writes:
            write.result()
    done = len(images) - len(failed)
    where = output_dir if output_dir else "the images' folders"
    print(f'-> wrote {done} result(s) to {where}' + (f'; skipped {len(failed)}' if failed else ''))
    return 0 if done and not failed else 1


if __name__ == '__main__':
    sys.exit(main())
