"""Write a synthetic street drive (:mod:`hr_depth_ros.core.synthetic`) as a rosbag2, without ROS.

Topics (every topic of a frame carries the same header stamp, also used as the bag timestamp):

- ``/camera/image_raw``            sensor_msgs/msg/Image, rgb8
- ``/camera/image_raw/compressed`` sensor_msgs/msg/CompressedImage, jpeg
- ``/camera/camera_info``          sensor_msgs/msg/CameraInfo (K, P = [K|0], R = I, plumb_bob, D = 0)
- ``/camera/depth_gt``             sensor_msgs/msg/Image, 32FC1 metres along z, NaN invalid
- ``/tf``                          tf2_msgs/msg/TFMessage, ``odom`` -> ``base_link`` (wheel odometry),
                                   at ``tf_rate`` Hz, stamps offset from the camera's (as on robots)
- ``/tf_static``                   tf2_msgs/msg/TFMessage, once at the start: ``base_link`` ->
                                   ``camera_link`` (the mount) -> ``camera_optical_frame`` (REP 103)

The TF chain composes to the camera's exact pose, so the bag also tests pose reading from TF.

Usage::

    python -m hr_depth_ros.tools.make_synthetic_bag --output BAG_DIR [--frames N] [--width W --height H]
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
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from hr_depth_ros.core.bags import topic_counts
from hr_depth_ros.core.geometry import quaternion_from_matrix
from hr_depth_ros.core.image_decoding import array_to_image_fields, encode_compressed, rgb_to_image_fields
from hr_depth_ros.core.rectification import Calibration, apply_distortion
from hr_depth_ros.core.synthetic import SyntheticDrive

__all__ = ['IMAGE_TOPIC', 'COMPRESSED_TOPIC', 'CAMERA_INFO_TOPIC', 'DEPTH_GT_TOPIC', 'TF_TOPIC', 'TF_STATIC_TOPIC',
           'CAMERA_FRAME', 'CAMERA_LINK_FRAME', 'BASE_FRAME', 'ODOM_FRAME', 'TOPIC_TYPES', 'FRAME_TOPICS',
           'BASE_FROM_CAMERA_LINK', 'CAMERA_LINK_FROM_OPTICAL', 'frame_messages', 'odometry_msg', 'static_tf_msg',
           'tf_stamps_ns', 'write_synthetic_bag', 'save_preview', 'main']

IMAGE_TOPIC = '/camera/image_raw'
COMPRESSED_TOPIC = '/camera/image_raw/compressed'
CAMERA_INFO_TOPIC = '/camera/camera_info'
DEPTH_GT_TOPIC = '/camera/depth_gt'
TF_TOPIC = '/tf'
TF_STATIC_TOPIC = '/tf_static'
CAMERA_FRAME = 'camera_optical_frame'
CAMERA_LINK_FRAME = 'camera_link'
BASE_FRAME = 'base_link'
ODOM_FRAME = 'odom'
TOPIC_TYPES = {
    IMAGE_TOPIC: 'sensor_msgs/msg/Image',
    COMPRESSED_TOPIC: 'sensor_msgs/msg/CompressedImage',
    CAMERA_INFO_TOPIC: 'sensor_msgs/msg/CameraInfo',
    DEPTH_GT_TOPIC: 'sensor_msgs/msg/Image',
    TF_TOPIC: 'tf2_msgs/msg/TFMessage',
    TF_STATIC_TOPIC: 'tf2_msgs/msg/TFMessage',
}
FRAME_TOPICS = (IMAGE_TOPIC, COMPRESSED_TOPIC, CAMERA_INFO_TOPIC, DEPTH_GT_TOPIC)  # one message per frame
# The camera mount: camera_link 0.8 m ahead of and 1.3 m above base_link, then REP 103's optical
# rotation (x right, y down, z forward) from the body convention (x forward, y left, z up).
BASE_FROM_CAMERA_LINK = np.array([[1.0, 0, 0, 0.8], [0, 1, 0, 0], [0, 0, 1, 1.3], [0, 0, 0, 1]])
CAMERA_LINK_FROM_OPTICAL = np.array([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
_STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}


def frame_messages(typestore: Any, drive: SyntheticDrive, index: int, jpeg_quality: int,
                   distortion: Sequence[float] | None = None) -> dict[str, Any]:
    """All messages of one frame, keyed by topic. ``distortion``: plumb_bob D applied to the image and
    depth (:func:`~hr_depth_ros.core.rectification.apply_distortion`) and written to camera_info."""
    types = typestore.types
    Header, Time = types['std_msgs/msg/Header'], types['builtin_interfaces/msg/Time']
    frame = drive.frame(index)
    D = np.zeros(5) if distortion is None else np.asarray(distortion, dtype=np.float64)
    if D.any():
        calibration = Calibration(tuple(drive.K.ravel()), 'plumb_bob', tuple(D), tuple(np.eye(3).ravel()),
                                  tuple(drive.K.ravel()), drive.width, drive.height)
        frame = replace(frame, rgb=apply_distortion(frame.rgb, calibration),
                        depth=apply_distortion(frame.depth, calibration, nearest=True))
    stamp = Time(sec=frame.stamp_ns // 1_000_000_000, nanosec=frame.stamp_ns % 1_000_000_000)
    header = Header(stamp=stamp, frame_id=CAMERA_FRAME)
    Image = types['sensor_msgs/msg/Image']
    fmt, payload = encode_compressed(frame.rgb, 'jpeg', quality=jpeg_quality)
    K = drive.K
    camera_info = types['sensor_msgs/msg/CameraInfo'](
        header=header, height=drive.height, width=drive.width, distortion_model='plumb_bob',
        d=D, k=K.ravel().astype(np.float64), r=np.eye(3).ravel(),
        p=np.hstack([K, np.zeros((3, 1))]).ravel().astype(np.float64), binning_x=0, binning_y=0,
        roi=types['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    return {
        IMAGE_TOPIC: Image(header=header, **rgb_to_image_fields(frame.rgb, 'rgb8')),
        COMPRESSED_TOPIC: types['sensor_msgs/msg/CompressedImage'](
            header=header, format=fmt, data=np.frombuffer(payload, dtype=np.uint8)),
        CAMERA_INFO_TOPIC: camera_info,
        DEPTH_GT_TOPIC: Image(header=header, **array_to_image_fields(frame.depth, '32FC1')),
    }


def _transform_msg(typestore: Any, parent: str, child: str, stamp_ns: int, T: np.ndarray) -> Any:
    """A geometry_msgs/TransformStamped holding ``T_parent_child``."""
    types = typestore.types
    qx, qy, qz, qw = quaternion_from_matrix(T)
    return types['geometry_msgs/msg/TransformStamped'](
        header=types['std_msgs/msg/Header'](
            stamp=types['builtin_interfaces/msg/Time'](sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
            frame_id=parent),
        child_frame_id=child,
        transform=types['geometry_msgs/msg/Transform'](
            translation=types['geometry_msgs/msg/Vector3'](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
            rotation=types['geometry_msgs/msg/Quaternion'](x=float(qx), y=float(qy), z=float(qz), w=float(qw))))


def tf_stamps_ns(drive: SyntheticDrive, frames: int, tf_rate: float, tf_offset_s: float) -> list[int]:
    """Odometry stamps: every 1 / tf_rate s, offset from the camera's, covering every frame's stamp."""
    period = 1.0 / tf_rate
    last = (frames - 1) / drive.fps
    count = int(np.ceil((last + 2 * period) / period)) + 1
    return [drive.start_ns + int(round((k * period - period + tf_offset_s) * 1e9)) for k in range(count)]


def odometry_msg(typestore: Any, drive: SyntheticDrive, stamp_ns: int) -> Any:
    """The /tf message at ``stamp_ns``: ``odom -> base_link`` on the drive's exact trajectory."""
    world_from_optical = drive.pose_at((stamp_ns - drive.start_ns) / 1e9)
    world_from_base = world_from_optical @ np.linalg.inv(BASE_FROM_CAMERA_LINK @ CAMERA_LINK_FROM_OPTICAL)
    return typestore.types['tf2_msgs/msg/TFMessage'](
        transforms=[_transform_msg(typestore, ODOM_FRAME, BASE_FRAME, stamp_ns, world_from_base)])


def static_tf_msg(typestore: Any, stamp_ns: int) -> Any:
    """The /tf_static message: the camera mount and the optical rotation."""
    return typestore.types['tf2_msgs/msg/TFMessage'](transforms=[
        _transform_msg(typestore, BASE_FRAME, CAMERA_LINK_FRAME, stamp_ns, BASE_FROM_CAMERA_LINK),
        _transform_msg(typestore, CAMERA_LINK_FRAME, CAMERA_FRAME, stamp_ns, CAMERA_LINK_FROM_OPTICAL)])


def write_synthetic_bag(path: str | Path, frames: int = 60, width: int = 640, height: int = 192,
                        fps: float = 10.0, storage: str = 'mcap', seed: int = 0, speed: float = 9.0,
                        noise: float = 0.0, exposure_jitter: float = 0.0, jpeg_quality: int = 90,
                        tf_rate: float = 30.0, tf_offset_s: float = 0.007, with_tf: bool = True,
                        distortion: Sequence[float] | None = None) -> Path:
    """Render ``frames`` frames of a :class:`SyntheticDrive` into a new rosbag2 directory at ``path``.

    ``tf_rate`` / ``tf_offset_s``: odometry rate and its clock offset from the camera's stamps;
    ``with_tf=False`` writes no TF topics (a camera-only recording). ``distortion``: plumb_bob
    coefficients (k1, k2, p1, p2, k3) of a lens to apply to image and depth (camera_info's D).

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
    if tf_rate <= 0:
        raise ValueError(f'tf_rate must be positive, got {tf_rate}')
    if not path.parent.is_dir():
        raise FileNotFoundError(f'parent directory {path.parent} of {path} does not exist')
    drive = SyntheticDrive(width=width, height=height, fps=fps, speed=speed, seed=seed, noise=noise,
                           exposure_jitter=exposure_jitter, num_frames=frames)
    typestore = get_typestore(Stores.LATEST)
    staging = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', suffix='.partial', dir=path.parent))
    bag_tmp = staging / 'bag'
    try:
        with Writer(bag_tmp, version=8, storage_plugin=_STORAGES[storage]) as writer:
            topics = TOPIC_TYPES if with_tf else {t: TOPIC_TYPES[t] for t in FRAME_TOPICS}
            connections = {topic: writer.add_connection(topic, msgtype, typestore=typestore)
                           for topic, msgtype in topics.items()}

            def write(topic: str, stamp_ns: int, msg: Any) -> None:
                writer.write(connections[topic], stamp_ns, typestore.serialize_cdr(msg, TOPIC_TYPES[topic]))

            odometry = tf_stamps_ns(drive, frames, tf_rate, tf_offset_s) if with_tf else []
            if with_tf:
                write(TF_STATIC_TOPIC, odometry[0], static_tf_msg(typestore, odometry[0]))
            next_tf = 0
            for index in range(frames):
                stamp_ns = drive.stamp_ns(index)
                while next_tf < len(odometry) and odometry[next_tf] <= stamp_ns:
                    write(TF_TOPIC, odometry[next_tf], odometry_msg(typestore, drive, odometry[next_tf]))
                    next_tf += 1
                for topic, msg in frame_messages(typestore, drive, index, jpeg_quality, distortion).items():
                    write(topic, stamp_ns, msg)
            for stamp_ns in odometry[next_tf:]:
                write(TF_TOPIC, stamp_ns, odometry_msg(typestore, drive, stamp_ns))
        bag_tmp.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def save_preview(path: str | Path, drive: SyntheticDrive, index: int) -> Path:
    """Save frame ``index`` and its colourised inverse depth (magma, sky black) side by side as PNG."""
    import cv2

    from hr_depth_ros.core.visualization import colorize

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
    for topic, count in topic_counts(path).items():
        print(f'  {topic:<30} {TOPIC_TYPES[topic]:<32} {count} msgs')
    if args.preview:
        drive = SyntheticDrive(width=args.width, height=args.height, fps=args.fps, speed=args.speed, seed=args.seed,
                               noise=args.noise, exposure_jitter=args.exposure_jitter, num_frames=args.frames)
        print(f'preview: {save_preview(args.preview, drive, min(25, args.frames - 1))}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
