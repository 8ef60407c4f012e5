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
from hr_depth_ros.core.camera_info import implausible_intrinsics
from hr_depth_ros.core.geometry import scale_intrinsics
from hr_depth_ros.core.image_decoding import compressed_to_rgb, depth_to_metres, image_to_rgb
from hr_depth_ros.core.rectification import Calibration, calibration_of, rectifier_for
from hr_depth_ros.core.tf_poses import TransformError, TransformTree, normalize_frame
from hr_depth_ros.core.training.data_config import (COMPRESSED_TYPE, TF_TYPE, CheckedBag, DataConfig, DataError,
                                                    check_bags)
from hr_depth_ros.core.training.frame_store import FrameStore, RowFile, new_cache_folder, thumb_shape, thumbnail

__all__ = ['extract_frames']


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
    if checked is None:
        config, checked, _ = check_bags(config)
    checked = list(checked)
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
    """One bag's frames on their way into the store: rectified with their own camera_info, resized, written
    row by row, ground-truth depth matched to them by stamp (within ``gt_depth_tolerance``), TF collected;
    :meth:`finish` checks the bag and gives its K at training size (``K``) and TF poses (``tf_ok``,
    ``tf_note``, ``without_tf``).

    Every frame is remapped (:mod:`hr_depth_ros.core.rectification`, maps built once per calibration)
    to one pinhole camera, ``target``: the first camera_info's rectified camera. A camera_info that
    changes mid-bag is used for the frames it describes (and noted), never silently ignored.
    Images that arrive before the first camera_info wait for it (up to MAX_WAITING_FRAMES).
    """

    MAX_WAITING_FRAMES = 300
    RECENT_FRAMES = 64       # frames a late depth image may still be matched to
    DEPTH_HORIZON_NS = 2_000_000_000  # unmatched depth images older than this behind the newest frame are dropped

    def __init__(self, config: DataConfig, bag: CheckedBag, writer: _StoreWriter, segment: int) -> None:
        self.config, self.bag, self.path, self.writer, self.segment = config, bag, bag.path, writer, segment
        self.notes = writer.notes
        self.compressed = bag.topics[config.image_topic] == COMPRESSED_TYPE
        # TF is read whenever the bag has it: with pose source net it still gives validation
        # an honest loss under the recorded motion.
        self.tf_topics = {t: t == config.tf_static_topic for t in (config.tf_topic, config.tf_static_topic)
                          if bag.topics.get(t) == TF_TYPE}
        self.tree = TransformTree(config.max_tf_gap)
        self.camera_frame = normalize_frame(config.camera_frame) if config.camera_frame else None
        self.first = writer.count
        self.calibration: Calibration | None = None
        self.first_calibration: Calibration | None = None
        self.target: Any = None                  # Rectifier of the first calibration (its K is the bag's)
        self.image_size: tuple[int, int] | None = None
        self.stamps: list[int] = []
        self.skipped: list[str] = []
        self.repeated = 0  # image messages whose header stamp an earlier frame of this bag already has
        self.by_stamp: dict[int, int] = {}
        self.waiting: list[tuple[np.ndarray, int]] = []
        self.waiting_depth: list[tuple[np.ndarray, int]] = []
        self.pending_depth: dict[int, np.ndarray] = {}
        self.depth_gap: dict[int, int] = {}      # row -> |depth stamp - frame stamp|
        self.depth_messages = self.depth_dropped = 0
        self.changes = 0
        self.tolerance_ns = int(config.gt_depth_tolerance * 1e9)
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
        for topic, t_ns, stamp_ns, msg in read_messages(self.path, wanted, on_partial=self.notes.append):
            stamp = stamp_ns if stamp_ns else t_ns
            if topic == config.camera_info_topic:
                self.on_camera_info(_calibration(msg, topic, self.path), stamp)
            elif topic in self.tf_topics:
                try:
                    self.tree.add_message(msg, static=self.tf_topics[topic])
                except TransformError as error:
                    raise DataError(f'bag {self.path}: {topic}: {error}') from error
            elif topic == config.image_topic:
                self.on_image_message(msg, stamp)
            else:  # ground-truth depth, matched by header stamp
                try:
                    self.on_depth(depth_to_metres(msg, config.max_pixels), stamp)
                except ValueError as error:
                    self.notes.append(f'bag {self.path}: {topic} at {stamp} ns skipped: {error}')

    def on_image_message(self, msg: Any, stamp: int) -> None:
        """An image message: decoded (skipped and counted when it does not decode) and handed on."""
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
        if not self.bag.has_info and self.calibration is None:
            self.on_camera_info(_pinhole(config.intrinsics, (rgb.shape[1], rgb.shape[0])), stamp)
        self.on_image(rgb, stamp)

    def on_camera_info(self, calibration: Calibration, stamp: int) -> None:
        if calibration != self.calibration and self.first_calibration is not None:
            self.changes += 1
            if self.changes == 1:
                self.notes.append(f'bag {self.path}: {self.config.camera_info_topic} changes at {stamp} ns (K '
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
            raise DataError(f'bag {self.path}: camera_info is for {declared[0]}x{declared[1]} images but '
                            f'{self.config.image_topic} has {size[0]}x{size[1]}')
        if self.target is None:
            self.target = rectifier_for(calibration, size)
            if not self.target.identity:
                self.notes.append(f'bag {self.path}: {self.target.describe()}')
        if calibration == self.first_calibration:
            return self.target
        return rectifier_for(calibration, size, self.target.K)

    def on_image(self, rgb: np.ndarray, stamp: int) -> None:
        if stamp in self.by_stamp:
            return  # duplicate stamp: keep the first
        if self.calibration is None:
            if len(self.waiting) >= self.MAX_WAITING_FRAMES:
                raise DataError(f'bag {self.path}: no message on {self.config.camera_info_topic} before the first '
                                f'{self.MAX_WAITING_FRAMES} frames of {self.config.image_topic}')
            self.waiting.append((rgb, stamp))
            return
        size = (rgb.shape[1], rgb.shape[0])
        if self.image_size is None:
            self.image_size = size
            self._flush()
        elif self.image_size != size:
            raise DataError(f'bag {self.path}: {self.config.image_topic} changes size from {self.image_size[0]}x'
                            f'{self.image_size[1]} to {size[0]}x{size[1]}')
        small = _resize(self._rectifier(size).rectify(rgb), self.writer.width, self.writer.height)
        row = self.writer.add(small, stamp, self.segment)
        self.stamps.append(stamp)
        self.by_stamp[stamp] = row
        if self.pending_depth:
            near = [s for s in self.pending_depth if abs(s - stamp) <= self.tolerance_ns]
            for depth_stamp in sorted(near, key=lambda s: abs(s - stamp))[:1]:
                self._assign(row, self.pending_depth.pop(depth_stamp), abs(depth_stamp - stamp))
            old = [s for s in self.pending_depth if s < stamp - self.DEPTH_HORIZON_NS]
            for depth_stamp in old:
                del self.pending_depth[depth_stamp]
            self.depth_dropped += len(old)

    def on_depth(self, metres: np.ndarray, stamp: int) -> None:
        if self.writer.depth is None:
            return
        if self.calibration is None or self.image_size is None:
            self.waiting_depth.append((metres, stamp))  # rectified once the calibration and image size are known
            return
        self.depth_messages += 1
        size = self.image_size
        full = _resize(metres, *size, nearest=True)  # a depth image of another resolution: to the colour image's
        small = _resize(self._rectifier(size).rectify(full, nearest=True), self.writer.width, self.writer.height,
                        nearest=True)
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
        self.writer.set_depth(row, small)
        self.depth_gap[row] = gap

    def _note_depth(self) -> None:
        """Frames still waiting for a camera_info are an error; depth matches are noted."""
        if self.waiting_depth:
            self.notes.append(f'bag {self.path}: {len(self.waiting_depth)} depth images before any image or '
                              'camera_info dropped')
        if self.waiting:
            raise DataError(f'bag {self.path}: no message on {self.config.camera_info_topic} and no intrinsics '
                            'given')
        if self.writer.depth is None:
            return
        matched = len(self.depth_gap)
        unmatched = self.depth_messages - matched
        text = (f'bag {self.path}: {self.config.gt_depth_topic}: {matched} of {len(self.stamps)} frames have '
                f'ground-truth depth ({self.depth_messages} depth images, matched by stamp within '
                f'{self.config.gt_depth_tolerance * 1000:g} ms; {unmatched} unmatched)')
        if matched == 0:
            text = ('warning: ' + text + ': no depth image is stamped near an image; are they the same camera '
                    'and clock?')
        self.notes.append(text)

    def finish(self) -> None:
        """Check what the bag gave (decodable frames, a camera), put its frames in time order, find their poses."""
        config, path, writer = self.config, self.path, self.writer
        self._note_depth()
        if self.repeated:
            self.notes.append(f'bag {path}: {self.repeated} frames on {config.image_topic} repeat the header stamp '
                              'of an earlier frame: dropped (the first of each stamp kept; check the camera '
                              'driver\'s clock)')
        _check_decodable(path, config, writer.count - self.first, self.skipped, self.notes)
        if self.target is None:
            raise DataError(f'bag {path}: no message on {config.camera_info_topic} and no intrinsics given')
        width, height = self.image_size
        self.K = scale_intrinsics(self.target.K, writer.width / width, writer.height / height)
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
