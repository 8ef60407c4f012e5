"""Bags -> training data: the pipeline the trainer calls (ROS-free).

:func:`prepare_data` runs the steps, each in its own module:

1. :mod:`.data_config`: :class:`DataConfig` (what to read), the bags expanded once and each opened
   once to check its topics (:func:`check_bags`);
2. :mod:`.cache` / :mod:`.extraction`: every bag decoded once (in parallel, into a persistent frame
   cache when asked) into a :class:`~.frame_store.FrameStore` (:mod:`.frame_store`: frames at training
   resolution on disk, TF camera poses);
3. :mod:`.samples`: triplets (t-1, t, t+1) and the time-block train / validation split, with a
   report of what was dropped and why;
4. :mod:`.dataset`: :class:`TripletDataset`, the samples as tensors with monodepth2's augmentation.

The names of those modules that callers need are importable from here too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hr_depth_ros.core.training.cache import prepare_frames
from hr_depth_ros.core.training.data_config import (AUTO, POSE_SOURCES, DataConfig, DataError, InputErrors, check_bags,
                                                    check_topics, resolve_topics)
from hr_depth_ros.core.training.dataset import FRAME_OFFSETS, TripletDataset
from hr_depth_ros.core.training.extraction import extract_frames
from hr_depth_ros.core.training.frame_store import FrameStore
from hr_depth_ros.core.training.samples import (SampleReport, bag_reports, build_samples, check_consecutive,
                                                resolve_pose_source, split_samples)

__all__ = ['DataError', 'DataConfig', 'FrameStore', 'SampleReport', 'extract_frames', 'build_samples',
           'split_samples', 'TripletDataset', 'prepare_data', 'PreparedData', 'FRAME_OFFSETS', 'POSE_SOURCES',
           'resolve_pose_source', 'bag_reports', 'InputErrors', 'check_bags', 'check_topics', 'resolve_topics', 'AUTO']

FEW_VAL_SAMPLES = 5                 # fewer validation samples are warned about


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


def prepare_data(config: DataConfig, min_train_samples: int = 1) -> PreparedData:
    """Extract, build triplets and split; DataError (naming the counts) when too few samples remain."""
    config, checked, choices = check_bags(config)
    store = prepare_frames(config, checked)
    try:
        pose_source = resolve_pose_source(config.pose_source, store)
        report = SampleReport(skipped_frames=store.skipped, notes=list(store.notes),
                              pose_source={'tf': 'TF (' + config.odom_frame + ' -> camera)', 'net': 'the pose network',
                                           'vo': 'two-view geometry of the images'}[pose_source])
        check_consecutive(store, config.frame_stride)
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
