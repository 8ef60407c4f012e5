"""Bags -> training triplets (t-1, t, t+1) for self-supervised fine-tuning (ROS-free).

Pipeline:

1. :func:`extract_frames` reads each bag once (via :mod:`hr_depth_ros.core.bags`), decodes every image
   of the image topic (``sensor_msgs/Image`` or ``CompressedImage``, detected from the topic type),
   resizes it to the training resolution and appends it to a compact on-disk cache (NumPy
   memmaps in a temporary folder) together with a small grey thumbnail and, when a ground-truth
   depth topic is given, the depth resized with nearest-neighbour. Nothing is held in memory but the
   index; DataLoader workers open the memmaps themselves (the OS page cache is the frame cache).
   When a bag has TF (``/tf``, ``/tf_static``) linking ``odom_frame`` to the camera's frame (the
   images' ``header.frame_id``), the camera pose of every frame is looked up at its stamp
   (:mod:`hr_depth_ros.core.tf_poses`: interpolated, never extrapolated).
2. :func:`build_samples` forms triplets by header timestamp per bag: neighbours ``frame_stride``
   frames away, no gap between consecutive frames larger than ``max_gap_factor`` x the median frame
   period, a TF pose for all three frames when poses come from TF, and at least ``min_motion`` mean
   absolute grey-level difference between the centre thumbnail and each neighbour's (a camera that
   barely moved teaches nothing).

Bad input costs only what is bad: a bag cut short is read up to its last readable message
(:mod:`hr_depth_ros.core.bags`), and frames that do not decode (corrupt, partly decoded, above
``max_pixels``) are skipped and counted; a bag is refused only when fewer than
``min_decodable_fraction`` (default half) of its frames decode, or when no bag has the three
consecutive frames a sample needs. What was skipped is reported in the sample summary.
3. :func:`split_samples` holds out contiguous time blocks: a sample goes to validation only if all
   its frames lie in a held-out block, to training only if none does, otherwise it is dropped, so no
   frame is seen by both sets.
4. :class:`TripletDataset` returns tensors with monodepth2's augmentation (colour jitter shared by
   the frames of a sample and used only for network inputs; horizontal flip p=0.5 with cx mirrored).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import ColorJitter
from torchvision.transforms import functional as TF

from hr_depth_ros.core.bags import BagError, canonical_topic, list_topics, read_messages, topic_counts
from hr_depth_ros.core.camera_info import camera_info_K, implausible_intrinsics
from hr_depth_ros.core.geometry import intrinsics_4x4, relative_transform, scale_intrinsics
from hr_depth_ros.core.image_decoding import DEFAULT_MAX_PIXELS, compressed_to_rgb, image_to_array, image_to_rgb
from hr_depth_ros.core.tf_poses import DEFAULT_MAX_TF_GAP_S, TransformError, TransformTree, normalize_frame
from hr_depth_ros.core.training.sources import expand_bags

__all__ = ['DataError', 'DataConfig', 'FrameStore', 'SampleReport', 'extract_frames', 'build_samples',
           'split_samples', 'TripletDataset', 'prepare_data', 'PreparedData', 'FRAME_OFFSETS', 'POSE_SOURCES',
           'resolve_pose_source', 'bag_reports']

IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
TF_TYPE = 'tf2_msgs/msg/TFMessage'
POSE_SOURCES = ('auto', 'tf', 'net', 'vo')
FRAME_OFFSETS = (0, -1, 1)          # monodepth2 frame_ids: target first, then the sources
THUMB_WIDTH = 64                    # motion check thumbnails: 64 px wide grey images
MIRROR_X = np.diag([-1.0, 1.0, 1.0, 1.0])   # a horizontal image flip mirrors the camera's x axis
JITTER = dict(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1)  # monodepth2 color_aug


class DataError(ValueError):
    """The bags cannot provide training data (missing topics, no intrinsics, too few samples)."""


@dataclass
class DataConfig:
    """What to read from which bags and how to cut it into samples."""

    bags: Sequence[str | Path]
    width: int = 640
    height: int = 192
    image_topic: str = '/camera/image_raw'
    camera_info_topic: str | None = '/camera/camera_info'
    gt_depth_topic: str | None = None
    intrinsics: Sequence[float] | None = None   # fx, fy, cx, cy in pixels of the bag's images
    frame_stride: int = 1
    max_gap_factor: float = 2.5
    min_motion: float = 0.5                     # mean |grey difference| (0-255) on thumbnails
    val_fraction: float = 0.1
    val_block_frames: int = 50
    cache_dir: str | Path | None = None         # parent of the frame cache (default: system temp)
    pose_source: str = 'auto'                   # 'tf' (odometry), 'net' (pose network), 'auto': tf if every bag has it
    odom_frame: str = 'odom'
    camera_frame: str | None = None             # default: the images' header.frame_id
    tf_topic: str = '/tf'
    tf_static_topic: str = '/tf_static'
    max_tf_gap: float = DEFAULT_MAX_TF_GAP_S    # seconds; longer TF silences give no pose
    cache_prefix: str = 'hr_depth_frames-'      # name prefix of the cache folder
    max_pixels: int = DEFAULT_MAX_PIXELS        # larger images are skipped as malformed
    min_decodable_fraction: float = 0.5         # refuse a bag when fewer of its frames decode
    frame_cache: str | Path | None = None       # persistent per-bag frame cache folder (see .cache)
    prepare_workers: int = 0                    # processes decoding bags in parallel (0: one per bag, <= CPUs, 8)
    progress: bool = False                      # a progress bar while preparing

    def __post_init__(self) -> None:  # bags list topics in absolute form (bags.canonical_topic)
        for name in ('image_topic', 'camera_info_topic', 'gt_depth_topic', 'tf_topic', 'tf_static_topic'):
            if getattr(self, name):
                setattr(self, name, canonical_topic(getattr(self, name)))


def _describe_topics(topics: dict[str, str]) -> str:
    return ', '.join(f'{t} ({ty})' for t, ty in sorted(topics.items())) or 'none'


@dataclass
class FrameStore:
    """Frames of all bags at training resolution in memmaps under ``folder`` (see module docstring).

    ``segment[i]``: which bag frame ``i`` came from; ``stamps_ns[i]``: its header stamp; frames of a
    segment are stored in time order. ``K[s]``: 3x3 intrinsics of segment ``s`` at training size.
    ``poses[i]``: camera-to-odometry 4x4 pose from TF (NaN when unknown); ``tf_segments[s]``:
    whether segment ``s`` had a TF chain to its camera (``tf_notes[s]`` says why not).
    ``parts``: when set, segment ``s``'s files are in ``parts[s]`` (one store per bag, e.g. from
    the persistent frame cache, :mod:`.cache`) instead of ``folder``.
    Pickles without the arrays, so each DataLoader worker maps the files itself.
    """

    folder: Path
    width: int
    height: int
    stamps_ns: np.ndarray
    segment: np.ndarray
    K: list[np.ndarray]
    has_depth: np.ndarray
    bags: list[str]
    poses: np.ndarray | None = None
    tf_segments: list[bool] = field(default_factory=list)
    tf_notes: list[str] = field(default_factory=list)
    frames_without_tf: int = 0
    owns_folder: bool = True
    skipped: int = 0                            # undecodable image messages
    bag_skipped: list[int] = field(default_factory=list)  # undecodable image messages per bag
    notes: list[str] = field(default_factory=list)  # partial bags, skipped frames: one line each
    parts: list[Path] = field(default_factory=list)  # per-segment folders (default: all in folder)
    _arrays: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.stamps_ns)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state['_arrays'] = None
        return state

    def _open(self) -> dict[str, Any]:
        if self._arrays is None:
            h, w = self.height, self.width
            if self.parts:
                sizes = np.bincount(self.segment, minlength=len(self.parts)).tolist()
                folders = list(zip(self.parts, sizes))
            else:
                folders = [(self.folder, len(self))]
            files = {'images': ('images.u8', np.uint8, (h, w, 3)),
                     'thumbs': ('thumbs.f32', np.float32, thumb_shape(w, h))}
            if self.has_depth.any():
                files['depth'] = ('depth.f32', np.float32, (h, w))
            arrays = {key: _Rows([np.memmap(folder / name, dtype, 'r', shape=(n, *shape)) for folder, n in folders])
                      for key, (name, dtype, shape) in files.items()}
            self._arrays = {key: rows.arrays[0] if len(rows.arrays) == 1 else rows for key, rows in arrays.items()}
        return self._arrays

    def image(self, index: int) -> np.ndarray:
        """H x W x 3 uint8 RGB at training resolution."""
        return np.array(self._open()['images'][index])  # a writable copy

    def depth(self, index: int) -> np.ndarray | None:
        """Ground-truth depth (metres, NaN invalid) at training resolution, or None."""
        if not self.has_depth[index]:
            return None
        return np.array(self._open()['depth'][index])

    def has_poses(self, indices: Sequence[int]) -> bool:
        """Whether every frame of ``indices`` (e.g. a sample's three) has a TF pose."""
        return self.poses is not None and bool(np.isfinite(self.poses[list(indices)]).all())

    @property
    def thumbs(self) -> np.ndarray:
        return self._open()['thumbs']

    def close(self) -> None:
        """Drop the cache folder (when this store created it)."""
        self._arrays = None
        if self.owns_folder:
            shutil.rmtree(self.folder, ignore_errors=True)


class _Rows:
    """Rows of several arrays, indexed as one (the frames of per-bag stores)."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.starts = np.cumsum([0] + [len(a) for a in arrays])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        part = int(np.searchsorted(self.starts, index, side='right')) - 1
        return self.arrays[part][int(index) - int(self.starts[part])]


def _camera_K(msg: Any, topic: str, bag: Path) -> tuple[np.ndarray, int, int]:
    try:
        K, width, height = camera_info_K(msg)
    except ValueError as error:
        raise DataError(f'bag {bag}: {topic}: {error}; give the intrinsics (fx, fy, cx, cy) as parameters '
                        'instead') from error
    problem = implausible_intrinsics(K, (width, height))
    if problem:
        raise DataError(f'bag {bag}: {topic} has implausible intrinsics: {problem}; give the intrinsics '
                        '(fx, fy, cx, cy) as parameters instead')
    return K, width, height


def _check_topics(bag: Path, config: DataConfig) -> tuple[dict[str, str], bool]:
    """Validate the topics of one bag; returns (topics, whether camera_info is read from the bag)."""
    topics = list_topics(bag, partial=True)
    image_type = topics.get(config.image_topic)
    if image_type is None:
        raise DataError(f'bag {bag} has no image topic {config.image_topic}; its topics are: '
                        f'{_describe_topics(topics)}')
    if image_type not in (IMAGE_TYPE, COMPRESSED_TYPE):
        raise DataError(f'bag {bag}: {config.image_topic} is {image_type}, not sensor_msgs/Image or '
                        f'sensor_msgs/CompressedImage; its topics are: {_describe_topics(topics)}')
    if config.gt_depth_topic and topics.get(config.gt_depth_topic) != IMAGE_TYPE:
        raise DataError(f'bag {bag} has no sensor_msgs/Image depth topic {config.gt_depth_topic}; '
                        f'its topics are: {_describe_topics(topics)}')
    info_type = topics.get(config.camera_info_topic) if config.camera_info_topic else None
    if info_type is not None and info_type != CAMERA_INFO_TYPE:
        raise DataError(f'bag {bag}: {config.camera_info_topic} is {info_type}, not sensor_msgs/CameraInfo')
    if config.pose_source not in POSE_SOURCES:
        raise DataError(f'pose source must be one of {", ".join(POSE_SOURCES)}, got {config.pose_source!r}')
    if config.pose_source == 'tf' and topics.get(config.tf_topic) != TF_TYPE:
        raise DataError(f'bag {bag} has no {TF_TYPE} topic {config.tf_topic} for poses from TF (pose source '
                        f'tf); its topics are: {_describe_topics(topics)}; use pose source vo (two-view geometry) '
                        'without odometry')
    if info_type is None and config.intrinsics is None:
        raise DataError(f'bag {bag} has no camera_info topic {config.camera_info_topic} and no intrinsics '
                        f'(fx, fy, cx, cy) were given; its topics are: {_describe_topics(topics)}')
    return topics, info_type is not None


def _resize(image: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    if nearest:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if image.shape[0] > height else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    height, width = thumb_shape(rgb.shape[1], rgb.shape[0])
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)


def config_bags(config: DataConfig) -> list[Path]:
    """The bags ``config.bags`` names (folders and patterns expanded); DataError when none."""
    if not config.bags:
        raise DataError('no bags given')
    try:
        return expand_bags(config.bags)
    except ValueError as error:
        raise DataError(str(error)) from error


def new_cache_folder(config: DataConfig) -> Path:
    """A new, empty frame cache folder (``cache_prefix``*) in ``cache_dir`` (default: the system's temp)."""
    parent = Path(config.cache_dir).expanduser() if config.cache_dir else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=config.cache_prefix, dir=parent))


def extract_frames(config: DataConfig) -> FrameStore:
    """Decode the image (and ground-truth depth) topic of every bag into a :class:`FrameStore`.

    Raises BagError for unreadable bags and DataError for missing topics / intrinsics, before
    anything is written. The cache folder is removed again on any failure.
    """
    bags = config_bags(config)
    checked = [(bag, *_check_topics(bag, config)) for bag in bags]
    capacity = 0
    for bag, _, _ in checked:
        capacity += topic_counts(bag, partial=True).get(config.image_topic, 0)
    if capacity == 0:
        raise DataError(f'no messages on {config.image_topic} in {", ".join(map(str, bags))}')
    w, h = int(config.width), int(config.height)
    folder = new_cache_folder(config)
    images = depth = thumbs = None
    try:
        # Written row by row (nothing mapped, nothing kept): memory does not grow with the bags.
        images = _RowFile(folder / 'images.u8', (h, w, 3), np.uint8)
        depth = _RowFile(folder / 'depth.f32', (h, w), np.float32) if config.gt_depth_topic else None
        thumbs = _RowFile(folder / 'thumbs.f32', thumb_shape(w, h), np.float32)
        stamps: list[int] = []
        segments: list[int] = []
        has_depth = np.zeros(capacity, dtype=bool)
        poses = np.full((capacity, 4, 4), np.nan)
        tf_segments: list[bool] = []
        tf_notes: list[str] = []
        frames_without_tf = 0
        Ks: list[np.ndarray] = []
        notes: list[str] = []
        count = skipped = 0
        bag_skipped_counts: list[int] = []
        for seg, (bag, topics, has_info) in enumerate(checked):
            compressed = topics[config.image_topic] == COMPRESSED_TYPE
            wanted = [config.image_topic]
            if has_info:
                wanted.append(config.camera_info_topic)
            if config.gt_depth_topic:
                wanted.append(config.gt_depth_topic)
            # TF is read whenever the bag has it: with pose source net it still gives validation
            # an honest loss under the recorded motion.
            tf_topics = {t: t == config.tf_static_topic for t in (config.tf_topic, config.tf_static_topic)
                         if topics.get(t) == TF_TYPE}
            wanted += list(tf_topics)
            tree = TransformTree(config.max_tf_gap)
            camera_frame = normalize_frame(config.camera_frame) if config.camera_frame else None
            K_raw: np.ndarray | None = None
            info_size: tuple[int, int] | None = None
            image_size: tuple[int, int] | None = None
            by_stamp: dict[int, int] = {}
            pending_depth: dict[int, np.ndarray] = {}
            first = count
            bag_skipped: list[str] = []
            repeated = 0  # image messages whose header stamp an earlier frame of this bag already has
            for topic, t_ns, stamp_ns, msg in read_messages(bag, wanted, on_partial=notes.append):
                stamp = stamp_ns if stamp_ns else t_ns
                if topic == config.camera_info_topic:
                    if K_raw is None:
                        K_raw, iw, ih = _camera_K(msg, topic, bag)
                        info_size = (iw, ih)
                elif topic in tf_topics:
                    try:
                        tree.add_message(msg, static=tf_topics[topic])
                    except TransformError as error:
                        raise DataError(f'bag {bag}: {topic}: {error}') from error
                elif topic == config.image_topic:
                    if camera_frame is None:
                        camera_frame = normalize_frame(msg.header.frame_id)
                    if stamp in by_stamp:
                        repeated += 1  # duplicate stamp: keep the first, count the rest (in the summary)
                        continue
                    try:
                        rgb = (compressed_to_rgb(msg, config.max_pixels) if compressed
                               else image_to_rgb(msg, config.max_pixels))
                    except ValueError as error:  # skipped (never stored partly decoded), counted below
                        bag_skipped.append(f'{stamp} ns: {error}')
                        continue
                    if image_size is None:
                        image_size = (rgb.shape[1], rgb.shape[0])
                    elif image_size != (rgb.shape[1], rgb.shape[0]):
                        raise DataError(f'bag {bag}: {topic} changes size from {image_size[0]}x{image_size[1]} '
                                        f'to {rgb.shape[1]}x{rgb.shape[0]}')
                    small = _resize(rgb, w, h)
                    images[count] = small
                    thumbs[count] = _thumbnail(small)
                    stamps.append(stamp)
                    segments.append(seg)
                    by_stamp[stamp] = count
                    if depth is not None and stamp in pending_depth:
                        depth[count] = pending_depth.pop(stamp)
                        has_depth[count] = True
                    count += 1
                else:  # ground-truth depth, matched by header stamp
                    try:
                        gt = _resize(image_to_array(msg, config.max_pixels).astype(np.float32).reshape(
                            msg.height, msg.width), w, h, nearest=True)
                    except ValueError as error:
                        notes.append(f'bag {bag}: {topic} at {stamp} ns skipped: {error}')
                        continue
                    if stamp in by_stamp:
                        depth[by_stamp[stamp]] = gt
                        has_depth[by_stamp[stamp]] = True
                    else:
                        pending_depth[stamp] = gt
            if repeated:
                notes.append(f'bag {bag}: {repeated} frames on {config.image_topic} repeat the header stamp of an '
                             'earlier frame: dropped (the first of each stamp kept; check the camera driver\'s clock)')
            _check_decodable(bag, config, count - first, bag_skipped, notes)
            skipped += len(bag_skipped)
            bag_skipped_counts.append(len(bag_skipped))
            if K_raw is None:
                if config.intrinsics is None:
                    raise DataError(f'bag {bag}: no message on {config.camera_info_topic} and no intrinsics given')
                fx, fy, cx, cy = (float(v) for v in config.intrinsics)
                K_raw = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
                info_size = image_size
            if info_size not in (image_size, (0, 0)):
                raise DataError(f'bag {bag}: camera_info is for {info_size[0]}x{info_size[1]} images but '
                                f'{config.image_topic} has {image_size[0]}x{image_size[1]}')
            Ks.append(scale_intrinsics(K_raw, w / image_size[0], h / image_size[1]))
            # Time order within the segment (bags are read in receive order).
            order = np.argsort(np.asarray(stamps[first:count], dtype=np.int64), kind='stable')
            if not np.array_equal(order, np.arange(len(order))):
                index = first + order
                for rows in (images, depth, thumbs):
                    if rows is not None:
                        rows.reorder(first, index)
                has_depth[first:count] = has_depth[index]
                stamps[first:count] = [stamps[i] for i in index]
            tf_ok, note, missing = _segment_poses(tree, config, bag, camera_frame, stamps[first:count],
                                                  poses[first:count])
            tf_segments.append(tf_ok)
            tf_notes.append(note)
            frames_without_tf += missing
        for rows in (images, depth, thumbs):
            if rows is not None:
                rows.close(count)
        (folder / 'index.json').write_text(json.dumps({'bags': [str(b) for b in bags], 'frames': count}))
        return FrameStore(folder=folder, width=w, height=h, stamps_ns=np.asarray(stamps, dtype=np.int64),
                          segment=np.asarray(segments, dtype=np.int64), K=Ks, has_depth=has_depth[:count].copy(),
                          bags=[str(b) for b in bags], poses=poses[:count].copy(), tf_segments=tf_segments,
                          tf_notes=tf_notes, frames_without_tf=frames_without_tf,
                          skipped=skipped, bag_skipped=bag_skipped_counts, notes=notes)
    except BaseException:
        for rows in (images, depth, thumbs):
            if rows is not None:
                rows.stream.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise


class _RowFile:
    """A file of fixed-size rows written by index with ``pwrite``: nothing mapped or kept in memory."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any) -> None:
        self.path, self.dtype = path, np.dtype(dtype)
        self.row_bytes = int(np.prod(shape)) * self.dtype.itemsize
        self.stream = open(path, 'w+b')

    def __setitem__(self, index: int, row: np.ndarray) -> None:
        os.pwrite(self.stream.fileno(), np.ascontiguousarray(row, dtype=self.dtype).tobytes(), index * self.row_bytes)

    def reorder(self, first: int, index: np.ndarray) -> None:
        """Rows ``first, first + 1, ...`` := rows ``index``, one row in memory at a time."""
        fd, size = self.stream.fileno(), self.row_bytes
        os.ftruncate(fd, max(os.fstat(fd).st_size, (first + len(index)) * size))  # unwritten rows read as zeros
        with tempfile.TemporaryFile(dir=self.path.parent) as scratch:
            for i, source in enumerate(index):
                os.pwrite(scratch.fileno(), os.pread(fd, size, int(source) * size), i * size)
            for i in range(len(index)):
                os.pwrite(fd, os.pread(scratch.fileno(), size, i * size), (first + i) * size)

    def close(self, rows: int) -> None:
        """Set the file to exactly ``rows`` rows (unwritten ones read as zeros) and close it."""
        os.ftruncate(self.stream.fileno(), rows * self.row_bytes)
        self.stream.close()


def thumb_shape(width: int, height: int) -> tuple[int, int]:
    """Rows x columns of the motion thumbnail of a ``width`` x ``height`` frame."""
    return max(8, round(THUMB_WIDTH * height / width)), THUMB_WIDTH


def _segment_poses(tree: TransformTree, config: DataConfig, bag: Path, camera_frame: str | None,
                   stamps: Sequence[int], out: np.ndarray) -> tuple[bool, str, int]:
    """Fill ``out`` with the camera poses of one bag's frames from its TF.

    Returns (whether the bag has a TF chain to the camera, a note on why not, frames without a
    pose). With pose source 'tf' a missing chain is a DataError naming the frames and topics.
    """
    odom = normalize_frame(config.odom_frame)
    if tree.messages == 0:
        note = f'bag {bag}: no TF messages on {config.tf_topic} / {config.tf_static_topic}'
    elif not camera_frame:
        note = f'bag {bag}: the images of {config.image_topic} have no header.frame_id; give the camera frame'
    elif not tree.can_transform(odom, camera_frame):
        note = (f'bag {bag}: no TF chain from {odom!r} to the camera frame {camera_frame!r} (header.frame_id of '
                f'{config.image_topic}); TF links found on {config.tf_topic} and {config.tf_static_topic}: '
                f'{tree.describe()}')
    else:
        lookup = tree.lookup(odom, camera_frame, stamps)
        out[:] = lookup.poses
        missing = int((~lookup.valid).sum())
        note = (f'{missing} frames without a TF pose ({lookup.outside} outside the TF data, {lookup.gap} in TF '
                f'gaps > {config.max_tf_gap:g} s)' if missing else '')
        return True, note, missing
    if config.pose_source == 'tf':
        raise DataError(note + '; use pose source vo (two-view geometry of the images) when the bag has no '
                        'odometry')
    return False, note, len(stamps)


def _check_decodable(bag: Path, config: DataConfig, decoded: int, skipped: list[str], notes: list[str]) -> None:
    """Note skipped frames of one bag; DataError when too few decoded (``min_decodable_fraction``)."""
    total = decoded + len(skipped)
    if total == 0:
        why = next((note for note in reversed(notes) if note.startswith(f'bag {bag}:')), '')  # a corrupt file
        raise DataError(f'bag {bag}: no readable messages on {config.image_topic}'
                        + (f' ({why[len(f"bag {bag}: "):]})' if why else ''))
    if skipped:
        notes.append(f'bag {bag}: {len(skipped)} of {total} frames on {config.image_topic} skipped '
                     f'(undecodable; first: {skipped[0]})')
    if decoded < config.min_decodable_fraction * total or decoded == 0:
        raise DataError(f'bag {bag}: only {decoded} of {total} frames on {config.image_topic} decode (need '
                        f'{config.min_decodable_fraction:.0%}); first failure: {skipped[0]}')


@dataclass
class SampleReport:
    """Why frames did or did not become samples (shown to the user)."""

    frames: int = 0
    candidates: int = 0
    dropped_edges: int = 0
    dropped_gap: int = 0
    dropped_no_motion: int = 0
    dropped_no_pose: int = 0
    dropped_split: int = 0
    pose_source: str = ''
    train: int = 0
    val: int = 0
    skipped_frames: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f'{self.frames} frames -> {self.train} training + {self.val} validation samples '
                f'(dropped: {self.dropped_edges} at sequence ends, {self.dropped_gap} across time gaps, '
                f'{self.dropped_no_motion} without camera motion, {self.dropped_no_pose} without a '
                f'{"two-view" if self.pose_source.startswith("two-view") else "TF"} pose, '
                f'{self.dropped_split} straddling the train/validation split; {self.skipped_frames} '
                f'undecodable frames skipped)'
                + (f'; camera poses from {self.pose_source}' if self.pose_source else '')
                + (f'; {"; ".join(self.notes)}' if self.notes else ''))


def build_samples(store: FrameStore, frame_stride: int = 1, max_gap_factor: float = 2.5,
                  min_motion: float = 0.5, report: SampleReport | None = None,
                  require_pose: bool = False, segments: Sequence[int] | None = None,
                  pose_ok: Callable[[int], bool] | None = None) -> list[tuple[int, int, int]]:
    """Triplets ``(previous, centre, next)`` of frame indices; see the module docstring for the rules.

    ``segments``: only these bags (default: all). ``pose_ok(centre)``: with ``require_pose``, whether the
    sample has its poses (default: TF poses of all three frames).
    """
    if frame_stride < 1:
        raise ValueError(f'frame_stride must be >= 1, got {frame_stride}')
    report = report if report is not None else SampleReport()
    thumbs = store.thumbs
    samples: list[tuple[int, int, int]] = []
    for seg in (np.unique(store.segment) if segments is None else segments):
        frames = np.flatnonzero(store.segment == seg)
        report.frames += len(frames)
        stamps = store.stamps_ns[frames]
        gaps = np.diff(stamps).astype(np.float64)
        limit = max_gap_factor * float(np.median(gaps)) if len(gaps) else 0.0
        k = frame_stride
        report.dropped_edges += min(len(frames), 2 * k)
        for p in range(k, len(frames) - k):
            report.candidates += 1
            if (gaps[p - k:p + k] > limit).any():
                report.dropped_gap += 1
                continue
            prev, centre, nxt = int(frames[p - k]), int(frames[p]), int(frames[p + k])
            if require_pose and not (pose_ok(centre) if pose_ok else store.has_poses((prev, centre, nxt))):
                report.dropped_no_pose += 1
                continue
            motion = min(float(np.abs(thumbs[centre] - thumbs[prev]).mean()),
                         float(np.abs(thumbs[centre] - thumbs[nxt]).mean()))
            if motion < min_motion:
                report.dropped_no_motion += 1
                continue
            samples.append((prev, centre, nxt))
    return samples


def split_samples(store: FrameStore, samples: Sequence[tuple[int, int, int]], val_fraction: float = 0.1,
                  val_block_frames: int = 50, report: SampleReport | None = None,
                  ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """(train, validation) samples with held-out contiguous time blocks in every bag.

    Each bag holds out about ``val_fraction`` of its frames as evenly spaced blocks of about
    ``val_block_frames`` frames. Samples with frames on both sides of a block edge are dropped.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f'val_fraction must be in [0, 1), got {val_fraction}')
    report = report if report is not None else SampleReport()
    in_val = np.zeros(len(store), dtype=bool)
    if val_fraction > 0:
        for seg in np.unique(store.segment):
            frames = np.flatnonzero(store.segment == seg)
            n = len(frames)
            n_val = max(3, round(val_fraction * n))
            blocks = max(1, round(n_val / max(3, val_block_frames)))
            length = max(3, n_val // blocks)
            for b in range(blocks):
                centre = int((b + 0.5) * n / blocks)
                start = min(max(0, centre - length // 2), max(0, n - length))
                in_val[frames[start:start + length]] = True
    train, val = [], []
    for sample in samples:
        flags = in_val[list(sample)]
        if flags.all():
            val.append(tuple(sample))
        elif not flags.any():
            train.append(tuple(sample))
        else:
            report.dropped_split += 1
    report.train, report.val = len(train), len(val)
    return train, val


class TripletDataset(Dataset):
    """Samples as tensors (monodepth2 layout, frames stacked in :data:`FRAME_OFFSETS` order).

    Items: ``color`` 3 x 3 x H x W (un-augmented, for the loss), ``color_aug`` (network inputs),
    ``K`` / ``inv_K`` 4 x 4 float32 at training resolution, ``depth_gt`` 1 x H x W (NaN when none),
    ``T`` 2 x 4 x 4 float32: ``T_target_to_source`` from TF for the sources -1 and +1 (identity
    when unknown), ``has_pose`` and ``index``. ``augment`` turns on colour jitter and horizontal
    flips (p = 0.5 each, as monodepth2); a flip mirrors K's principal point and the poses' x axis.
    ``color`` and ``color_aug`` are float in [0, 1], or with ``uint8`` 0-255 uint8 (jitter rounded):
    a quarter of the bytes to pin and copy to a GPU, scaled there.
    ``transforms``: N x 2 x 4 x 4 ``T_target_to_source`` by centre frame, instead of TF (two-view geometry).
    """

    def __init__(self, store: FrameStore, samples: Sequence[tuple[int, int, int]], augment: bool = False,
                 uint8: bool = False, transforms: np.ndarray | None = None) -> None:
        self.store = store
        self.transforms = transforms
        self.samples = list(samples)
        self.augment = augment
        self.uint8 = uint8
        self.jitter = ColorJitter(**JITTER)

    def __len__(self) -> int:
        return len(self.samples)

    def _jitter(self, images: torch.Tensor) -> torch.Tensor:
        order, brightness, contrast, saturation, hue = ColorJitter.get_params(
            self.jitter.brightness, self.jitter.contrast, self.jitter.saturation, self.jitter.hue)
        for fn in order.tolist():
            if fn == 0:
                images = TF.adjust_brightness(images, brightness)
            elif fn == 1:
                images = TF.adjust_contrast(images, contrast)
            elif fn == 2:
                images = TF.adjust_saturation(images, saturation)
            else:
                images = TF.adjust_hue(images, hue)
        return images

    def __getitem__(self, item: int) -> dict[str, Any]:
        prev, centre, nxt = self.samples[item]
        by_offset = {0: centre, -1: prev, 1: nxt}
        frames = np.stack([self.store.image(by_offset[o]) for o in FRAME_OFFSETS])
        color = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
        K = self.store.K[int(self.store.segment[centre])].copy()
        has_pose = self.store.has_poses((prev, centre, nxt))
        T = np.tile(np.eye(4), (2, 1, 1))
        if self.transforms is not None:
            has_pose = bool(np.isfinite(self.transforms[centre]).all())
            T = self.transforms[centre] if has_pose else T
        elif has_pose:
            poses = self.store.poses
            T = np.stack([relative_transform(poses[centre], poses[source]) for source in (prev, nxt)])
        gt = self.store.depth(centre)
        depth_gt = (torch.from_numpy(gt.copy())[None] if gt is not None
                    else torch.full((1, self.store.height, self.store.width), float('nan')))
        color_aug = color
        if self.augment:
            if torch.rand(()) < 0.5:
                color = color.flip(-1)
                depth_gt = depth_gt.flip(-1)
                K[0, 2] = self.store.width - 1 - K[0, 2]
                T = MIRROR_X @ T @ MIRROR_X  # the same motion seen in the mirrored image
            color_aug = self._jitter(color) if torch.rand(()) < 0.5 else color
        K4 = intrinsics_4x4(torch.from_numpy(K).float())[0]
        if self.uint8:
            color, color_aug = (images.mul(255.0).round_().to(torch.uint8) for images in (color, color_aug))
        return {'color': color, 'color_aug': color_aug.contiguous(), 'K': K4, 'inv_K': torch.linalg.inv(K4),
                'depth_gt': depth_gt, 'T': torch.from_numpy(T).float(), 'has_pose': has_pose, 'index': item}


@dataclass
class PreparedData:
    """Everything the trainer needs from the bags."""

    store: FrameStore
    train: list[tuple[int, int, int]]
    val: list[tuple[int, int, int]]
    report: SampleReport
    pose_source: str = 'net'        # what the trainer uses: 'tf', 'net' or 'vo'
    bag_reports: list[SampleReport] = field(default_factory=list)  # one per bag, in store.bags order
    motions: Any = None             # 'vo': the two-view geometry (visual_odometry.PairMotions)
    transforms: np.ndarray | None = None  # 'vo': its poses in the depth network's units (the trainer's)

    def bag_summaries(self) -> list[str]:
        """One line per bag: frames, kept samples, dropped and why."""
        return [f'bag {bag}: {report.summary()}' for bag, report in zip(self.store.bags, self.bag_reports)]

    @property
    def val_has_poses(self) -> bool:
        """Every validation sample has TF poses (so validation can score depth under them)."""
        if self.transforms is not None:
            return bool(self.val) and all(np.isfinite(self.transforms[centre]).all() for _, centre, _ in self.val)
        return bool(self.val) and all(self.store.has_poses(sample) for sample in self.val)

    def close(self) -> None:
        self.store.close()


def resolve_pose_source(requested: str, store: FrameStore) -> str:
    """'tf', 'net' or 'vo': 'auto' is 'tf' when every bag has a TF chain to its camera, else 'vo' (two-view
    geometry: measured better than the pose network, benchmarks/RESULTS.md)."""
    if requested == 'auto':
        return 'tf' if store.tf_segments and all(store.tf_segments) else 'vo'
    return requested


def prepare_data(config: DataConfig, min_train_samples: int = 1) -> PreparedData:
    """Extract, build triplets and split; DataError (naming the counts) when too few samples remain."""
    from hr_depth_ros.core.training.cache import prepare_frames  # (it builds on this module)

    store = prepare_frames(config)
    try:
        pose_source = resolve_pose_source(config.pose_source, store)
        report = SampleReport(skipped_frames=store.skipped, notes=list(store.notes),
                              pose_source={'tf': 'TF (' + config.odom_frame + ' -> camera)', 'net': 'the pose network',
                                           'vo': 'two-view geometry of the images'}[pose_source])
        _check_consecutive(store, config.frame_stride)
        motions = pose_ok = None
        if pose_source == 'vo':  # frame pairs without a trustworthy motion are dropped, counted
            from hr_depth_ros.core.visual_odometry import store_motions
            motions = store_motions(store, config.frame_stride)
            pose_ok = motions.has_motion
            report.notes.append(motions.summary())
        samples = build_samples(store, config.frame_stride, config.max_gap_factor, config.min_motion, report,
                                require_pose=pose_source in ('tf', 'vo'), pose_ok=pose_ok)
        train, val = split_samples(store, samples, config.val_fraction, config.val_block_frames, report)
        by_bag = bag_reports(store, config, require_pose=pose_source in ('tf', 'vo'), pose_ok=pose_ok)
        if len(train) < min_train_samples:
            raise DataError(f'too few usable training samples in {", ".join(store.bags)}: found '
                            f'{len(train)}, need {min_train_samples}; {report.summary()}')
        return PreparedData(store, train, val, report, pose_source, by_bag, motions)
    except BaseException:
        store.close()
        raise


def bag_reports(store: FrameStore, config: DataConfig, require_pose: bool,
                pose_ok: Callable[[int], bool] | None = None) -> list[SampleReport]:
    """The sample report of every bag on its own (same rules as :func:`prepare_data`)."""
    reports = []
    for seg in range(len(store.bags)):
        report = SampleReport(skipped_frames=store.bag_skipped[seg] if seg < len(store.bag_skipped) else 0,
                              notes=[store.tf_notes[seg]] if seg < len(store.tf_notes) and store.tf_notes[seg] else [])
        samples = build_samples(store, config.frame_stride, config.max_gap_factor, config.min_motion, report,
                                require_pose=require_pose, segments=[seg], pose_ok=pose_ok)
        split_samples(store, samples, config.val_fraction, config.val_block_frames, report)
        reports.append(report)
    return reports


def _check_consecutive(store: FrameStore, frame_stride: int) -> None:
    """DataError when no bag has the 2 x frame_stride + 1 consecutive frames one sample needs."""
    per_bag = np.bincount(store.segment, minlength=len(store.bags))
    if per_bag.max(initial=0) < 2 * frame_stride + 1:
        counts = ', '.join(f'{bag}: {n}' for bag, n in zip(store.bags, per_bag))
        raise DataError(f'no consecutive frames to train on: a sample needs {2 * frame_stride + 1} frames of one '
                        f'bag (frame_stride {frame_stride}), the bags have {counts} usable frames')


# Kept for callers that catch both kinds of input error at once.
InputErrors = (BagError, DataError)
