"""Write a synthetic street drive (:mod:`hr_depth_ros.synthetic`) as a rosbag2, without ROS.

Topics (every topic of a frame carries the same header stamp, also used as the bag timestamp):

- ``/camera/image_raw``            sensor_msgs/msg/Image, rgb8
- ``/camera/image_raw/compressed`` sensor_msgs/msg/CompressedImage, jpeg
- ``/camera/camera_info``          sensor_msgs/msg/CameraInfo (K, P = [K|0], R = I, plumb_bob, D = 0)
- ``/camera/depth_gt``             sensor_msgs/msg/Image, 32FC1 metres along z, NaN invalid
- ``/tf``                          tf2_msgs/msg/TFMessage, ``odom`` -> ``camera_optical_frame``

Usage::

    python -m hr_depth_ros.make_synthetic_bag --output BAG_DIR [--frames N] [--width W --height H]
        [--fps F] [--storage mcap|sqlite3] [--seed S] [--preview PNG]

``--preview`` also saves one frame and its colourised inverse depth side by side (how
docs/images/synthetic_frame.png was made: ``--frames 60 --preview docs/images/synthetic_frame.png``,
frame 25 of seed 0).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from hr_depth_ros.geometry import quaternion_from_matrix
from hr_depth_ros.image_decoding import array_to_image_fields, encode_compressed, rgb_to_image_fields
from hr_depth_ros.synthetic import SyntheticDrive

__all__ = ['IMAGE_TOPIC', 'COMPRESSED_TOPIC', 'CAMERA_INFO_TOPIC', 'DEPTH_GT_TOPIC', 'TF_TOPIC',
           'CAMERA_FRAME', 'ODOM_FRAME', 'TOPIC_TYPES', 'write_synthetic_bag', 'save_preview', 'main']

IMAGE_TOPIC = '/camera/image_raw'
COMPRESSED_TOPIC = '/camera/image_raw/compressed'
CAMERA_INFO_TOPIC = '/camera/camera_info'
DEPTH_GT_TOPIC = '/camera/depth_gt'
TF_TOPIC = '/tf'
CAMERA_FRAME = 'camera_optical_frame'
ODOM_FRAME = 'odom'
TOPIC_TYPES = {
    IMAGE_TOPIC: 'sensor_msgs/msg/Image',
    COMPRESSED_TOPIC: 'sensor_msgs/msg/CompressedImage',
    CAMERA_INFO_TOPIC: 'sensor_msgs/msg/CameraInfo',
    DEPTH_GT_TOPIC: 'sensor_msgs/msg/Image',
    TF_TOPIC: 'tf2_msgs/msg/TFMessage',
}
_STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}


def _messages(typestore: Any, drive: SyntheticDrive, index: int, jpeg_quality: int) -> dict[str, Any]:
    """All messages of one frame, keyed by topic."""
    types = typestore.types
    Header, Time = types['std_msgs/msg/Header'], types['builtin_interfaces/msg/Time']
    frame = drive.frame(index)
    stamp = Time(sec=frame.stamp_ns // 1_000_000_000, nanosec=frame.stamp_ns % 1_000_000_000)
    header = Header(stamp=stamp, frame_id=CAMERA_FRAME)
    Image = types['sensor_msgs/msg/Image']
    fmt, payload = encode_compressed(frame.rgb, 'jpeg', quality=jpeg_quality)
    K = drive.K
    camera_info = types['sensor_msgs/msg/CameraInfo'](
        header=header, height=drive.height, width=drive.width, distortion_model='plumb_bob',
        d=np.zeros(5), k=K.ravel().astype(np.float64), r=np.eye(3).ravel(),
        p=np.hstack([K, np.zeros((3, 1))]).ravel().astype(np.float64), binning_x=0, binning_y=0,
        roi=types['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    pose = frame.pose_world_from_camera
    qx, qy, qz, qw = quaternion_from_matrix(pose)
    transform = types['geometry_msgs/msg/TransformStamped'](
        header=Header(stamp=stamp, frame_id=ODOM_FRAME), child_frame_id=CAMERA_FRAME,
        transform=types['geometry_msgs/msg/Transform'](
            translation=types['geometry_msgs/msg/Vector3'](x=float(pose[0, 3]), y=float(pose[1, 3]), z=float(pose[2, 3])),
            rotation=types['geometry_msgs/msg/Quaternion'](x=float(qx), y=float(qy), z=float(qz), w=float(qw))))
    return {
        IMAGE_TOPIC: Image(header=header, **rgb_to_image_fields(frame.rgb, 'rgb8')),
        COMPRESSED_TOPIC: types['sensor_msgs/msg/CompressedImage'](
            header=header, format=fmt, data=np.frombuffer(payload, dtype=np.uint8)),
        CAMERA_INFO_TOPIC: camera_info,
        DEPTH_GT_TOPIC: Image(header=header, **array_to_image_fields(frame.depth, '32FC1')),
        TF_TOPIC: types['tf2_msgs/msg/TFMessage'](transforms=[transform]),
    }


def write_synthetic_bag(path: str | Path, frames: int = 60, width: int = 640, height: int = 192,
                        fps: float = 10.0, storage: str = 'mcap', seed: int = 0, speed: float = 9.0,
                        noise: float = 0.0, exposure_jitter: float = 0.0, jpeg_quality: int = 90) -> Path:
    """Render ``frames`` frames of a :class:`SyntheticDrive` into a new rosbag2 directory at ``path``.

    Refuses to overwrite an existing path (FileExistsError). The bag is written next to ``path``
    under a temporary name and renamed when complete, so a failure never leaves a partial bag.
    Returns ``path``.
    """
    path = Path(path).expanduser()
    if path.exists():
        raise FileExistsError(f'{path} already exists; refusing to overwrite it (choose a new --output)')
    if storage not in _STORAGES:
        raise ValueError(f'unknown storage {storage!r}; choose one of {", ".join(_STORAGES)}')
    if frames < 1:
        raise ValueError(f'frames must be >= 1, got {frames}')
    if not path.parent.is_dir():
        raise FileNotFoundError(f'parent directory {path.parent} of {path} does not exist')
    drive = SyntheticDrive(width=width, height=height, fps=fps, speed=speed, seed=seed, noise=noise,
                           exposure_jitter=exposure_jitter, num_frames=frames)
    typestore = get_typestore(Stores.LATEST)
    staging = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', suffix='.partial', dir=path.parent))
    bag_tmp = staging / 'bag'
    try:
        with Writer(bag_tmp, version=8, storage_plugin=_STORAGES[storage]) as writer:
            connections = {topic: writer.add_connection(topic, msgtype, typestore=typestore)
                           for topic, msgtype in TOPIC_TYPES.items()}
            for index in range(frames):
                stamp_ns = drive.stamp_ns(index)
                for topic, msg in _messages(typestore, drive, index, jpeg_quality).items():
                    writer.write(connections[topic], stamp_ns, typestore.serialize_cdr(msg, TOPIC_TYPES[topic]))
        bag_tmp.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def save_preview(path: str | Path, drive: SyntheticDrive, index: int) -> Path:
    """Save frame ``index`` and its colourised inverse depth (magma, sky black) side by side as PNG."""
    import cv2

    from hr_depth_ros.visualization import colorize

    frame = drive.frame(index)
    inverse_depth = np.where(np.isfinite(frame.depth), 1.0 / frame.depth, np.nan)
    picture = np.hstack([frame.rgb, colorize(inverse_depth, cmap='magma')])
    path = Path(path)
    if not cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise OSError(f'could not write preview image {path}')
    return path


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='make_synthetic_bag', description=__doc__.split('\n\n')[0])
    parser.add_argument('--output', '-o', required=True, help='bag directory to create (must not exist)')
    parser.add_argument('--frames', type=int, default=60, help='number of frames (default 60)')
    parser.add_argument('--width', type=int, default=640, help='image width (default 640)')
    parser.add_argument('--height', type=int, default=192, help='image height (default 192)')
    parser.add_argument('--fps', type=float, default=10.0, help='frame rate in Hz (default 10)')
    parser.add_argument('--speed', type=float, default=9.0, help='forward speed in m/s (default 9)')
    parser.add_argument('--storage', choices=sorted(_STORAGES), default='mcap', help='rosbag2 storage (default mcap)')
    parser.add_argument('--seed', type=int, default=0, help='scene seed (default 0)')
    parser.add_argument('--noise', type=float, default=0.0, help='pixel noise std in grey levels (default 0)')
    parser.add_argument('--exposure-jitter', type=float, default=0.0, help='per-frame gain std (default 0)')
    parser.add_argument('--preview', help='also save frame min(25, frames-1) and its depth side by side as this PNG')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: write a synthetic bag and print what was written."""
    args = _parse_args(argv)
    start = time.monotonic()
    try:
        path = write_synthetic_bag(args.output, frames=args.frames, width=args.width, height=args.height,
                                   fps=args.fps, storage=args.storage, seed=args.seed, speed=args.speed,
                                   noise=args.noise, exposure_jitter=args.exposure_jitter)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f'make_synthetic_bag: error: {exc}', file=sys.stderr)
        return 2
    size_mb = sum(p.stat().st_size for p in path.rglob('*') if p.is_file()) / 1e6
    print(f'wrote {path} ({args.storage}, {size_mb:.1f} MB) in {time.monotonic() - start:.1f} s: '
          f'{args.frames} frames {args.width}x{args.height} at {args.fps:g} Hz, seed {args.seed}')
    for topic, msgtype in TOPIC_TYPES.items():
        print(f'  {topic:<30} {msgtype:<32} {args.frames} msgs')
    if args.preview:
        drive = SyntheticDrive(width=args.width, height=args.height, fps=args.fps, speed=args.speed, seed=args.seed,
                               noise=args.noise, exposure_jitter=args.exposure_jitter, num_frames=args.frames)
        print(f'preview: {save_preview(args.preview, drive, min(25, args.frames - 1))}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
