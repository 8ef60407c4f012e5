"""Frames -> training samples: triplets (t-1, t, t+1) and a train / validation split (ROS-free).

:func:`build_samples` forms triplets by header timestamp per bag: neighbours ``frame_stride``
frames away, no gap between consecutive frames larger than ``max_gap_factor`` x the median frame
period, a TF pose for all three frames when poses come from TF, and at least ``min_motion`` mean
absolute grey-level difference between the centre thumbnail and each neighbour's (a camera that
barely moved teaches nothing). :func:`split_samples` holds out contiguous time blocks: a sample
goes to validation only if all its frames lie in a held-out block, to training only if none does,
otherwise it is dropped, so no frame is seen by both sets. What was dropped and why is counted in
a :class:`SampleReport`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from hr_depth_ros.core.training.data_config import DataConfig, DataError
from hr_depth_ros.core.training.frame_store import FrameStore

__all__ = ['SampleReport', 'build_samples', 'split_samples', 'bag_reports', 'check_consecutive', 'resolve_pose_source']

MIN_VAL_FRAMES = 10                 # a held-out block of a short bag: at least this many frames ...
MIN_VAL_SHARE = 1 / 3               # ... but no more than this share of the bag


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


def check_consecutive(store: FrameStore, frame_stride: int) -> None:
    """DataError when no bag has the 2 x frame_stride + 1 consecutive frames one sample needs."""
    per_bag = np.bincount(store.segment, minlength=len(store.bags))
    if per_bag.max(initial=0) < 2 * frame_stride + 1:
        counts = ', '.join(f'{bag}: {n}' for bag, n in zip(store.bags, per_bag))
        raise DataError(f'no consecutive frames to train on: a sample needs {2 * frame_stride + 1} frames of one '
                        f'bag (frame_stride {frame_stride}), the bags have {counts} usable frames')


def resolve_pose_source(requested: str, store: FrameStore) -> str:
    """'tf', 'net' or 'vo': 'auto' is 'tf' when every bag has a TF chain to its camera, else 'vo' (two-view
    geometry: measured better than the pose network, benchmarks/RESULTS.md)."""
    if requested == 'auto':
        return 'tf' if store.tf_segments and all(store.tf_segments) else 'vo'
    return requested
