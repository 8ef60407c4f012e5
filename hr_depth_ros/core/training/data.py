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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import ColorJitter
from torchvision.transforms import functional as TF

from hr_depth_ros.core.bags import BagError, canonical_topic, list_topics, read_messages, topic_counts
from hr_depth_ros.core.camera_info import implausible_intrinsics
from hr_depth_ros.core.geometry import intrinsics_4x4, relative_transform, scale_intrinsics
from hr_depth_ros.core.image_decoding import DEFAULT_MAX_PIXELS, compressed_to_rgb, depth_to_metres, image_to_rgb
from hr_depth_ros.core.rectification import Calibration, calibration_of, rectifier_for
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
AUTO = 'auto'                       # image / camera_info topic chosen from the bag (resolve_topics)
MIN_VAL_FRAMES = 10                 # a held-out block of a short bag: at least this many frames ...
MIN_VAL_SHARE = 1 / 3               # ... but no more than this share of the bag
FEW_VAL_SAMPLES = 5                 # fewer validation samples are warned about
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
    image_topic: str = AUTO                     # AUTO: the bags' only image topic (see resolve_topics)
    camera_info_topic: str | None = AUTO        # AUTO: the camera_info beside the images; None: intrinsics
    gt_depth_topic: str | None = None
    gt_depth_tolerance: float = 0.02            # seconds between a depth image's stamp and its frame's
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
            if getattr(self, name) and getattr(self, name) != AUTO:
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


def _calibration(msg: Any, topic: str, bag: Path) -> Calibration:
    """The calibration of a camera_info message; DataError naming the bag and topic when unusable."""
    try:
        calibration = calibration_of(msg)
    except ValueError as error:
        raise DataError(f'bag {bag}: {topic}: {error}; give the intrinsics (fx, fy, cx, cy) as parameters '
                        'instead') from error
    problem = implausible_intrinsics(calibration.K_matrix, (calibration.width, calibration.height))
    if problem:
        raise DataError(f'bag {bag}: {topic} has implausible intrinsics: {problem}; give the intrinsics '
                        '(fx, fy, cx, cy) as parameters instead')
    return calibration


def _pinhole(intrinsics: Sequence[float], size: tuple[int, int]) -> Calibration:
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    return Calibration((fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0), 'plumb_bob', (), tuple(np.eye(3).ravel()),
                       (0.0,) * 9, *size)


def _only(names: list[str], what: str, bag: Path, topics: dict[str, str], hint: str) -> str:
    if len(names) != 1:
        raise DataError(f'bag {bag} has {len(names)} {what} topics ({", ".join(names) or "none"}); {hint}; its '
                        f'topics are: {_describe_topics(topics)}')
    return names[0]


def resolve_topics(config: DataConfig) -> tuple[DataConfig, list[str]]:
    """``config`` with its ``auto`` topics chosen from the first bag, and one line per choice.

    Image: the only Image / CompressedImage topic that is not the depth topic (``/camera/image_raw``
    when it is one of several). camera_info: ``camera_info`` beside the image topic (``/a/image_raw``
    and ``/a/image_raw/compressed`` -> ``/a/camera_info``), else the only CameraInfo topic, else none
    (intrinsics must be given). DataError naming the candidates when the choice is ambiguous.
    """
    if AUTO not in (config.image_topic, config.camera_info_topic):
        return config, []
    bag = config_bags(config)[0]
    topics = list_topics(bag, partial=True)
    chosen: dict[str, Any] = {}
    lines = []
    if config.image_topic == AUTO:
        images = sorted(t for t, kind in topics.items() if kind in (IMAGE_TYPE, COMPRESSED_TYPE)
                        and t != config.gt_depth_topic and 'depth' not in t.split('/'))
        default = '/camera/image_raw'
        chosen['image_topic'] = default if default in images else _only(
            images, 'image', bag, topics, 'give the image topic')
        lines.append(f'image topic {chosen["image_topic"]} ({topics[chosen["image_topic"]]}): the bag\'s '
                     + ('default' if len(images) > 1 else 'only') + ' image topic (set image_topic to choose)')
    if config.camera_info_topic == AUTO:
        image = chosen.get('image_topic', config.image_topic)
        base = image[:-len('/compressed')] if image.endswith('/compressed') else image
        beside = base.rsplit('/', 1)[0] + '/camera_info'
        infos = sorted(t for t, kind in topics.items() if kind == CAMERA_INFO_TYPE)
        if topics.get(beside) == CAMERA_INFO_TYPE:
            chosen['camera_info_topic'] = beside
        elif len(infos) == 1:
            chosen['camera_info_topic'] = infos[0]
        elif not infos and config.intrinsics is not None:
            chosen['camera_info_topic'] = None
        else:
            chosen['camera_info_topic'] = _only(infos, 'CameraInfo', bag, topics, 'give the camera_info topic '
                                                'or the intrinsics')
        lines.append(f'camera_info topic {chosen["camera_info_topic"]} (set camera_info_topic to choose)'
                     if chosen['camera_info_topic'] else 'no camera_info topic: using the given intrinsics')
    return replace(config, **chosen), lines


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
    config = resolve_topics(config)[0]
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
            frames = _BagFrames(config, bag, w, h, images, thumbs, depth, has_depth, notes, first=count)
            for topic, t_ns, stamp_ns, msg in read_messages(bag, wanted, on_partial=notes.append):
                stamp = stamp_ns if stamp_ns else t_ns
                if topic == config.camera_info_topic:
                    frames.on_camera_info(_calibration(msg, topic, bag), stamp)
                elif topic in tf_topics:
                    try:
                        tree.add_message(msg, static=tf_topics[topic])
                    except TransformError as error:
                        raise DataError(f'bag {bag}: {topic}: {error}') from error
                elif topic == config.image_topic:
                    if camera_frame is None:
                        camera_frame = normalize_frame(msg.header.frame_id)
                    if stamp in frames.by_stamp:
                        frames.repeated += 1  # duplicate stamp: keep the first, count the rest (in the summary)
                        continue
                    try:
                        rgb = (compressed_to_rgb(msg, config.max_pixels) if compressed
                               else image_to_rgb(msg, config.max_pixels))
                    except ValueError as error:  # skipped (never stored partly decoded), counted below
                        frames.skipped.append(f'{stamp} ns: {error}')
                        continue
                    if not has_info and frames.calibration is None:
                        frames.on_camera_info(_pinhole(config.intrinsics, (rgb.shape[1], rgb.shape[0])), stamp)
                    frames.on_image(rgb, stamp)
                else:  # ground-truth depth, matched by header stamp
                    try:
                        frames.on_depth(depth_to_metres(msg, config.max_pixels), stamp)
                    except ValueError as error:
                        notes.append(f'bag {bag}: {topic} at {stamp} ns skipped: {error}')
            frames.finish()
            if frames.repeated:
                notes.append(f'bag {bag}: {frames.repeated} frames on {config.image_topic} repeat the header stamp of '
                             'an earlier frame: dropped (the first of each stamp kept; check the camera driver\'s clock)')
            stamps += frames.stamps
            segments += [seg] * len(frames.stamps)
            count, first = frames.next_row, frames.first
            _check_decodable(bag, config, count - first, frames.skipped, notes)
            skipped += len(frames.skipped)
            bag_skipped_counts.append(len(frames.skipped))
            if frames.target is None:
                raise DataError(f'bag {bag}: no message on {config.camera_info_topic} and no intrinsics given')
            image_size = frames.image_size
            Ks.append(scale_intrinsics(frames.target.K, w / image_size[0], h / image_size[1]))
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


class _BagFrames:
    """One bag's frames on their way into the store: rectified with their own camera_info, resized,
    written row by row, ground-truth depth matched to them by stamp (within ``gt_depth_tolerance``).

    Every frame is remapped (:mod:`hr_depth_ros.core.rectification`, maps built once per calibration)
    to one pinhole camera, ``target``: the first camera_info's rectified camera. A camera_info that
    changes mid-bag is used for the frames it describes (and noted), never silently ignored.
    Images that arrive before the first camera_info wait for it (up to MAX_WAITING_FRAMES).
    """

    MAX_WAITING_FRAMES = 300
    RECENT_FRAMES = 64       # frames a late depth image may still be matched to
    DEPTH_HORIZON_NS = 2_000_000_000  # unmatched depth images older than this behind the newest frame are dropped

    def __init__(self, config: DataConfig, bag: Path, width: int, height: int, images: _RowFile, thumbs: _RowFile,
                 depth: _RowFile | None, has_depth: np.ndarray, notes: list[str], first: int) -> None:
        self.config, self.bag, self.width, self.height = config, bag, width, height
        self.images, self.thumbs, self.depth, self.has_depth, self.notes = images, thumbs, depth, has_depth, notes
        self.first = self.next_row = first
        self.calibration: Calibration | None = None
        self.first_calibration: Calibration | None = None
        self.target: Any = None                  # Rectifier of the first calibration (its K is the bag's)
        self.image_size: tuple[int, int] | None = None
        self.stamps: list[int] = []
        self.skipped: list[str] = []
        self.by_stamp: dict[int, int] = {}
        self.waiting: list[tuple[np.ndarray, int]] = []
        self.waiting_depth: list[tuple[np.ndarray, int]] = []
        self.pending_depth: dict[int, np.ndarray] = {}
        self.depth_gap: dict[int, int] = {}      # row -> |depth stamp - frame stamp|
        self.depth_messages = self.depth_dropped = 0
        self.repeated = 0                        # image messages repeating an earlier frame's stamp
        self.changes = 0
        self.tolerance_ns = int(config.gt_depth_tolerance * 1e9)

    def on_camera_info(self, calibration: Calibration, stamp: int) -> None:
        if calibration != self.calibration and self.first_calibration is not None:
            self.changes += 1
            if self.changes == 1:
                self.notes.append(f'bag {self.bag}: {self.config.camera_info_topic} changes at {stamp} ns (K '
                                  f'{self.first_calibration.K_matrix[[0, 1, 0, 1], [0, 1, 2, 2]].round(2).tolist()} -> '
                                  f'{calibration.K_matrix[[0, 1, 0, 1], [0, 1, 2, 2]].round(2).tolist()}, D '
                                  f'{list(calibration.D)}): every frame is remapped with its own camera_info '
                                  'to the first one\'s rectified camera')
        self.calibration = calibration
        if self.first_calibration is None:
            self.first_calibration = calibration
        self._flush()

    def _flush(self) -> None:
        """Handle the images and depth images that waited for a calibration / the image size."""
        waiting, waiting_depth, self.waiting, self.waiting_depth = self.waiting, self.waiting_depth, [], []
        for rgb, at in waiting:
            self.on_image(rgb, at)
        for gt, at in waiting_depth:
            self.on_depth(gt, at)

    def _rectifier(self, size: tuple[int, int]) -> Any:
        calibration = self.calibration
        declared = (calibration.width, calibration.height)
        if declared not in (size, (0, 0)):
            raise DataError(f'bag {self.bag}: camera_info is for {declared[0]}x{declared[1]} images but '
                            f'{self.config.image_topic} has {size[0]}x{size[1]}')
        if self.target is None:
            self.target = rectifier_for(calibration, size)
            if not self.target.identity:
                self.notes.append(f'bag {self.bag}: {self.target.describe()}')
        if calibration == self.first_calibration:
            return self.target
        return rectifier_for(calibration, size, self.target.K)

    def on_image(self, rgb: np.ndarray, stamp: int) -> None:
        if stamp in self.by_stamp:
            return  # duplicate stamp: keep the first
        if self.calibration is None:
            if len(self.waiting) >= self.MAX_WAITING_FRAMES:
                raise DataError(f'bag {self.bag}: no message on {self.config.camera_info_topic} before the first '
                                f'{self.MAX_WAITING_FRAMES} frames of {self.config.image_topic}')
            self.waiting.append((rgb, stamp))
            return
        size = (rgb.shape[1], rgb.shape[0])
        if self.image_size is None:
            self.image_size = size
            self._flush()
        elif self.image_size != size:
            raise DataError(f'bag {self.bag}: {self.config.image_topic} changes size from {self.image_size[0]}x'
                            f'{self.image_size[1]} to {size[0]}x{size[1]}')
        small = _resize(self._rectifier(size).rectify(rgb), self.width, self.height)
        row = self.next_row
        self.images[row] = small
        self.thumbs[row] = _thumbnail(small)
        self.stamps.append(stamp)
        self.by_stamp[stamp] = row
        self.next_row += 1
        if self.pending_depth:
            near = [s for s in self.pending_depth if abs(s - stamp) <= self.tolerance_ns]
            for depth_stamp in sorted(near, key=lambda s: abs(s - stamp))[:1]:
                self._assign(row, self.pending_depth.pop(depth_stamp), abs(depth_stamp - stamp))
            old = [s for s in self.pending_depth if s < stamp - self.DEPTH_HORIZON_NS]
            for depth_stamp in old:
                del self.pending_depth[depth_stamp]
            self.depth_dropped += len(old)

    def on_depth(self, metres: np.ndarray, stamp: int) -> None:
        if self.depth is None:
            return
        if self.calibration is None or self.image_size is None:
            self.waiting_depth.append((metres, stamp))  # rectified once the calibration and image size are known
            return
        self.depth_messages += 1
        size = self.image_size
        full = _resize(metres, *size, nearest=True)  # a depth image of another resolution: to the colour image's
        small = _resize(self._rectifier(size).rectify(full, nearest=True), self.width, self.height, nearest=True)
        recent = self.stamps[-self.RECENT_FRAMES:]
        if recent:
            nearest = min(recent, key=lambda s: abs(s - stamp))
            gap = abs(nearest - stamp)
            if gap <= self.tolerance_ns:
                self._assign(self.by_stamp[nearest], small, gap)
                return
        self.pending_depth[stamp] = small

    def _assign(self, row: int, small: np.ndarray, gap: int) -> None:
        if row in self.depth_gap and self.depth_gap[row] <= gap:
            return  # a closer depth image is already there
        self.depth[row] = small
        self.has_depth[row] = True
        self.depth_gap[row] = gap

    def finish(self) -> None:
        """Frames still waiting for a camera_info are an error; depth matches are noted."""
        if self.waiting_depth:
            self.notes.append(f'bag {self.bag}: {len(self.waiting_depth)} depth images before any image or '
                              'camera_info dropped')
        if self.waiting:
            raise DataError(f'bag {self.bag}: no message on {self.config.camera_info_topic} and no intrinsics '
                            'given')
        if self.depth is None:
            return
        matched = len(self.depth_gap)
        unmatched = self.depth_messages - matched
        text = (f'bag {self.bag}: {self.config.gt_depth_topic}: {matched} of {len(self.stamps)} frames have '
                f'ground-truth depth ({self.depth_messages} depth images, matched by stamp within '
                f'{self.config.gt_depth_tolerance * 1000:g} ms; {unmatched} unmatched)')
        if matched == 0:
            text = ('warning: ' + text + ': no depth image is stamped near an image; are they the same camera '
                    'and clock?')
        self.notes.append(text)


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
            if n_val < MIN_VAL_FRAMES:  # a short bag: validation with a few samples rather than one
                n_val = max(n_val, min(MIN_VAL_FRAMES, int(MIN_VAL_SHARE * n)))
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
    topic_choices: list[str] = field(default_factory=list)  # topics chosen from the bag (resolve_topics)
    warnings: list[str] = field(default_factory=list)       # what the user must see (logged on their own)
    topics: dict[str, str | None] = field(default_factory=dict)  # the topics read (auto ones resolved)
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

    config, choices = resolve_topics(config)
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
        warnings = [line for line in store.notes if line.startswith('warning')]
        if config.val_fraction > 0 and len(val) < FEW_VAL_SAMPLES:
            warnings.append(f'warning: only {len(val)} validation samples ({len(train)} training): best/ is chosen '
                            'on few frames; record a longer bag or raise val_fraction')
        if config.gt_depth_topic and val and not any(store.has_depth[centre] for _, centre, _ in val):
            warnings.append(f'warning: the ground-truth depth topic {config.gt_depth_topic} matches no validation '
                            f'frame (stamps within {config.gt_depth_tolerance * 1000:g} ms): best/ cannot be '
                            'chosen by depth error')
        topics = {'image': config.image_topic, 'camera_info': config.camera_info_topic,
                  'gt_depth': config.gt_depth_topic}
        return PreparedData(store, train, val, report, pose_source, by_bag, topic_choices=choices, warnings=warnings,
                            topics=topics, motions=motions)
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
