"""Bags -> frames: every image of each bag decoded, resized and written to a :class:`.FrameStore` (ROS-free).

:func:`extract_frames` reads each bag once (:mod:`hr_depth_ros.core.bags`; its topics were checked
by :func:`.data_config.check_bags`), decodes every image of the image topic (``sensor_msgs/Image``
or ``CompressedImage``, detected from the topic type), resizes it to the training resolution and
writes it row by row with a small grey thumbnail and, when a ground-truth depth topic is given,
the depth resized with nearest-neighbour. When a bag has TF (``/tf``, ``/tf_static``) linking
``odom_frame`` to the camera's frame (the images' ``header.frame_id``), the camera pose of every
frame is looked up at its stamp (:mod:`hr_depth_ros.core.tf_poses`: interpolated, never extrapolated).

Bad input costs only what is bad: a bag cut short is read up to its last readable message, and
frames that do not decode (corrupt, partly decoded, above ``max_pixels``) are skipped and counted;
a bag is refused only when fewer than ``min_decodable_fraction`` (default half) of its frames decode.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from hr_depth_ros.core.bags import read_messages
from hr_depth_ros.core.camera_info import camera_info_K, implausible_intrinsics
from hr_depth_ros.core.geometry import scale_intrinsics
from hr_depth_ros.core.image_decoding import compressed_to_rgb, image_to_array, image_to_rgb
from hr_depth_ros.core.tf_poses import TransformError, TransformTree, normalize_frame
from hr_depth_ros.core.training.data_config import (COMPRESSED_TYPE, TF_TYPE, CheckedBag, DataConfig, DataError,
                                                    check_bags)
from hr_depth_ros.core.training.frame_store import FrameStore, RowFile, new_cache_folder, thumb_shape, thumbnail

__all__ = ['extract_frames']


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


def _resize(image: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    if nearest:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if image.shape[0] > height else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def extract_frames(config: DataConfig, checked: Sequence[CheckedBag] | None = None) -> FrameStore:
    """Decode the image (and ground-truth depth) topic of every bag into a :class:`FrameStore`.

    ``checked``: the bags of ``config`` as :func:`.data_config.check_bags` returned them (checked
    here when not given). Raises BagError for unreadable bags and DataError for missing topics /
    intrinsics, before anything is written. The cache folder is removed again on any failure.
    """
    checked = check_bags(config) if checked is None else list(checked)
    capacity = sum(bag.frames for bag in checked)
    if capacity == 0:
        raise DataError(f'no messages on {config.image_topic} in {", ".join(str(bag.path) for bag in checked)}')
    folder = new_cache_folder(config)
    writer = None
    try:
        # Written row by row (nothing mapped, nothing kept): memory does not grow with the bags.
        writer = _StoreWriter(folder, int(config.width), int(config.height), bool(config.gt_depth_topic), capacity)
        done = []
        for segment, bag in enumerate(checked):
            frames = _BagFrames(config, bag, writer, segment)
            frames.read()
            frames.finish()
            done.append(frames)
        writer.close()
        bags = [str(bag.path) for bag in checked]
        (folder / 'index.json').write_text(json.dumps({'bags': bags, 'frames': writer.count}))
        return FrameStore(folder=folder, width=writer.width, height=writer.height,
                          stamps_ns=np.asarray(writer.stamps, dtype=np.int64),
                          segment=np.asarray(writer.segments, dtype=np.int64), K=[f.K for f in done],
                          has_depth=writer.has_depth[:writer.count].copy(), bags=bags,
                          poses=writer.poses[:writer.count].copy(), tf_segments=[f.tf_ok for f in done],
                          tf_notes=[f.tf_note for f in done], frames_without_tf=sum(f.without_tf for f in done),
                          skipped=sum(len(f.skipped) for f in done), bag_skipped=[len(f.skipped) for f in done],
                          notes=writer.notes)
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(folder, ignore_errors=True)
        raise


class _StoreWriter:
    """The files of a :class:`FrameStore` being written, and its per-frame index (stamps, bags, depth, poses)."""

    def __init__(self, folder: Path, width: int, height: int, with_depth: bool, capacity: int) -> None:
        self.width, self.height = width, height
        self.files: list[RowFile] = []
        try:
            self.images = self._file(RowFile(folder / 'images.u8', (height, width, 3), np.uint8))
            self.depth = self._file(RowFile(folder / 'depth.f32', (height, width), np.float32)) if with_depth else None
            self.thumbs = self._file(RowFile(folder / 'thumbs.f32', thumb_shape(width, height), np.float32))
        except BaseException:
            self.abort()
            raise
        self.has_depth = np.zeros(capacity, dtype=bool)
        self.poses = np.full((capacity, 4, 4), np.nan)
        self.stamps: list[int] = []
        self.segments: list[int] = []
        self.notes: list[str] = []  # partial bags, skipped frames: one line each
        self.count = 0

    def _file(self, rows: RowFile) -> RowFile:
        self.files.append(rows)
        return rows

    def add(self, small: np.ndarray, stamp: int, segment: int) -> int:
        """Append one frame (at training size); its row."""
        row = self.count
        self.images[row] = small
        self.thumbs[row] = thumbnail(small)
        self.stamps.append(stamp)
        self.segments.append(segment)
        self.count += 1
        return row

    def set_depth(self, row: int, depth: np.ndarray) -> None:
        self.depth[row] = depth
        self.has_depth[row] = True

    def sort_rows(self, first: int) -> None:
        """Rows ``first...`` (one bag's, in receive order) into header-stamp order."""
        order = np.argsort(np.asarray(self.stamps[first:self.count], dtype=np.int64), kind='stable')
        if np.array_equal(order, np.arange(len(order))):
            return
        index = first + order
        for rows in self.files:
            rows.reorder(first, index)
        self.has_depth[first:self.count] = self.has_depth[index]
        self.stamps[first:self.count] = [self.stamps[i] for i in index]

    def close(self) -> None:
        for rows in self.files:
            rows.close(self.count)

    def abort(self) -> None:
        for rows in self.files:
            rows.stream.close()


class _BagFrames:
    """One bag's frames on their way into the store: decoded, resized and written row by row, ground-truth
    depth matched to them by header stamp, camera_info and TF collected; :meth:`finish` checks the bag and
    gives its K at training size (``K``) and TF poses (``tf_ok``, ``tf_note``, ``without_tf``)."""

    def __init__(self, config: DataConfig, bag: CheckedBag, writer: _StoreWriter, segment: int) -> None:
        self.config, self.bag, self.path, self.writer, self.segment = config, bag, bag.path, writer, segment
        self.compressed = bag.topics[config.image_topic] == COMPRESSED_TYPE
        # TF is read whenever the bag has it: with pose source net it still gives validation
        # an honest loss under the recorded motion.
        self.tf_topics = {t: t == config.tf_static_topic for t in (config.tf_topic, config.tf_static_topic)
                          if bag.topics.get(t) == TF_TYPE}
        self.tree = TransformTree(config.max_tf_gap)
        self.camera_frame = normalize_frame(config.camera_frame) if config.camera_frame else None
        self.K_raw: np.ndarray | None = None
        self.info_size: tuple[int, int] | None = None
        self.image_size: tuple[int, int] | None = None
        self.by_stamp: dict[int, int] = {}
        self.pending_depth: dict[int, np.ndarray] = {}
        self.first = writer.count
        self.skipped: list[str] = []
        self.repeated = 0  # image messages whose header stamp an earlier frame of this bag already has
        self.K = np.eye(3)
        self.tf_ok, self.tf_note, self.without_tf = False, '', 0

    def read(self) -> None:
        """Every message of the wanted topics, in receive order (a bag cut short: up to its last readable one)."""
        config = self.config
        wanted = [config.image_topic]
        if self.bag.has_info:
            wanted.append(config.camera_info_topic)
        if config.gt_depth_topic:
            wanted.append(config.gt_depth_topic)
        wanted += list(self.tf_topics)
        for topic, t_ns, stamp_ns, msg in read_messages(self.path, wanted, on_partial=self.writer.notes.append):
            stamp = stamp_ns if stamp_ns else t_ns
            if topic == config.camera_info_topic:
                if self.K_raw is None:
                    self.K_raw, iw, ih = _camera_K(msg, topic, self.path)
                    self.info_size = (iw, ih)
            elif topic in self.tf_topics:
                try:
                    self.tree.add_message(msg, static=self.tf_topics[topic])
                except TransformError as error:
                    raise DataError(f'bag {self.path}: {topic}: {error}') from error
            elif topic == config.image_topic:
                self.on_image(msg, stamp)
            else:  # ground-truth depth, matched by header stamp
                self.on_depth(msg, topic, stamp)

    def on_image(self, msg: Any, stamp: int) -> None:
        config = self.config
        if self.camera_frame is None:
            self.camera_frame = normalize_frame(msg.header.frame_id)
        if stamp in self.by_stamp:
            self.repeated += 1  # duplicate stamp: keep the first, count the rest (in the summary)
            return
        try:
            rgb = (compressed_to_rgb(msg, config.max_pixels) if self.compressed
                   else image_to_rgb(msg, config.max_pixels))
        except ValueError as error:  # skipped (never stored partly decoded), counted below
            self.skipped.append(f'{stamp} ns: {error}')
            return
        if self.image_size is None:
            self.image_size = (rgb.shape[1], rgb.shape[0])
        elif self.image_size != (rgb.shape[1], rgb.shape[0]):
            raise DataError(f'bag {self.path}: {config.image_topic} changes size from {self.image_size[0]}x'
                            f'{self.image_size[1]} to {rgb.shape[1]}x{rgb.shape[0]}')
        row = self.writer.add(_resize(rgb, self.writer.width, self.writer.height), stamp, self.segment)
        self.by_stamp[stamp] = row
        if self.writer.depth is not None and stamp in self.pending_depth:
            self.writer.set_depth(row, self.pending_depth.pop(stamp))

    def on_depth(self, msg: Any, topic: str, stamp: int) -> None:
        try:
            gt = _resize(image_to_array(msg, self.config.max_pixels).astype(np.float32).reshape(
                msg.height, msg.width), self.writer.width, self.writer.height, nearest=True)
        except ValueError as error:
            self.writer.notes.append(f'bag {self.path}: {topic} at {stamp} ns skipped: {error}')
            return
        if stamp in self.by_stamp:
            self.writer.set_depth(self.by_stamp[stamp], gt)
        else:
            self.pending_depth[stamp] = gt

    def finish(self) -> None:
        """Check what the bag gave (decodable frames, intrinsics), put its frames in time order, find their poses."""
        config, path, writer = self.config, self.path, self.writer
        if self.repeated:
            writer.notes.append(f'bag {path}: {self.repeated} frames on {config.image_topic} repeat the header stamp '
                                'of an earlier frame: dropped (the first of each stamp kept; check the camera '
                                'driver\'s clock)')
        _check_decodable(path, config, writer.count - self.first, self.skipped, writer.notes)
        if self.K_raw is None:
            if config.intrinsics is None:
                raise DataError(f'bag {path}: no message on {config.camera_info_topic} and no intrinsics given')
            fx, fy, cx, cy = (float(v) for v in config.intrinsics)
            self.K_raw = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
            self.info_size = self.image_size
        if self.info_size not in (self.image_size, (0, 0)):
            raise DataError(f'bag {path}: camera_info is for {self.info_size[0]}x{self.info_size[1]} images but '
                            f'{config.image_topic} has {self.image_size[0]}x{self.image_size[1]}')
        self.K = scale_intrinsics(self.K_raw, writer.width / self.image_size[0], writer.height / self.image_size[1])
        writer.sort_rows(self.first)  # bags are read in receive order
        self.tf_ok, self.tf_note, self.without_tf = _segment_poses(self.tree, config, path, self.camera_frame,
                                                                   writer.stamps[self.first:],
                                                                   writer.poses[self.first:writer.count])


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
