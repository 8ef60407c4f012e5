"""Camera poses from a bag's TF (``/tf`` and ``/tf_static``), without ROS or tf2 (ROS-free).

A robot's odometry reaches a bag as ``tf2_msgs/TFMessage``: dynamic links (``odom -> base_link``
from wheels or VIO, 10-50 Hz, with jitter) on ``/tf`` and fixed links (``base_link ->
camera_link -> camera_optical_frame``) on ``/tf_static``, often written once at the start.
:class:`TransformTree` collects them and answers "where was frame B in frame A at time t" for
many stamps at once, the way tf2 does:

- frame names are compared without a leading ``/`` (ROS 1 era names and ROS 2 names mix);
- a chain of any depth is composed through the tree's common ancestor (links may point either
  way along the chain);
- dynamic links are interpolated at each stamp (linear translation, slerp rotation) between the
  two samples around it; a stamp outside a link's samples, or between two samples further apart
  than ``max_gap_ns``, has no pose (never extrapolated) and the reason is counted;
- duplicated samples (same link and stamp, e.g. a transform republished in two messages) count once;
- static links hold at every time.

Convention: ``T_a_b`` maps coordinates in frame ``b`` into frame ``a`` (``p_a = T_a_b @ p_b``),
which is what a ``TransformStamped`` with ``header.frame_id = a`` and ``child_frame_id = b`` holds.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hr_depth_ros.core.geometry import matrix_from_quaternion

__all__ = ['TransformError', 'TransformTree', 'PoseLookup', 'normalize_frame', 'slerp', 'DEFAULT_MAX_TF_GAP_S']

DEFAULT_MAX_TF_GAP_S = 0.25  # a dynamic link silent for longer than this gives no pose in between


class TransformError(ValueError):
    """No chain between two frames, or a tree that contradicts itself (a frame with two parents)."""


def normalize_frame(name: str) -> str:
    """Frame id without leading slashes or surrounding white space (``/odom`` and ``odom`` are one frame)."""
    return str(name).strip().lstrip('/')


def slerp(q0: np.ndarray, q1: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Spherical linear interpolation of ``N x 4`` unit quaternions by ``weight`` in [0, 1] (shortest arc)."""
    q0 = q0 / np.linalg.norm(q0, axis=-1, keepdims=True)
    q1 = q1 / np.linalg.norm(q1, axis=-1, keepdims=True)
    dot = np.sum(q0 * q1, axis=-1)
    q1 = np.where(dot[:, None] < 0, -q1, q1)
    dot = np.abs(dot).clip(0.0, 1.0)
    theta = np.arccos(dot)
    sin_theta = np.sin(theta)
    small = sin_theta < 1e-9
    safe = np.where(small, 1.0, sin_theta)
    w0 = np.where(small, 1.0 - weight, np.sin((1.0 - weight) * theta) / safe)
    w1 = np.where(small, weight, np.sin(weight * theta) / safe)
    q = w0[:, None] * q0 + w1[:, None] * q1
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


_MIN_CAPACITY = 1024  # samples of a dynamic link's first allocation; then it grows by 25 %


class _Link:
    """One parent -> child link: a static transform or time-sorted samples.

    Samples are kept compactly (48 bytes each: int64 stamp, float64 translation, float32 quaternion) in
    arrays grown in place (``ndarray.resize``: realloc, no second copy), so a bag with millions of tiny
    TF messages costs tens of MB per million, not hundreds.
    """

    def __init__(self, static: bool) -> None:
        self.static = static
        self._stamps = np.empty(0, np.int64)
        self._translations = np.empty((0, 3), np.float64)
        self._rotations = np.empty((0, 4), np.float32)
        self.samples = 0  # stored (duplicates included until arrays() drops them)
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def add(self, stamp_ns: int, translation: Sequence[float], rotation: Sequence[float]) -> None:
        self._arrays = None  # views of the storage handed out before are invalid from here on
        if self.static:  # the latest static transform wins, as in tf2
            self.samples = 0
        capacity = len(self._stamps)
        if self.samples == capacity:
            capacity = max(_MIN_CAPACITY if not self.static else 1, capacity + capacity // 4)
            self._stamps.resize(capacity, refcheck=False)
            self._translations.resize((capacity, 3), refcheck=False)
            self._rotations.resize((capacity, 4), refcheck=False)
        index = self.samples
        self._stamps[index] = stamp_ns
        self._translations[index] = translation
        self._rotations[index] = rotation
        self.samples += 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(stamps, translations, quaternions (float32)) sorted by stamp, one sample per stamp (the first).

        Views of the storage, valid until the next :meth:`add`.
        """
        if self._arrays is None:
            count = self.samples
            stamps, translations, rotations = self._stamps[:count], self._translations[:count], self._rotations[:count]
            if count > 1 and not (stamps[1:] >= stamps[:-1]).all():
                order = np.argsort(stamps, kind='stable')
                stamps, translations, rotations = stamps[order], translations[order], rotations[order]
            keep = np.ones(count, dtype=bool)
            keep[1:] = stamps[1:] != stamps[:-1]  # duplicated samples count once (the first)
            if not keep.all():
                stamps, translations, rotations = stamps[keep], translations[keep], rotations[keep]
            if stamps.base is None:  # sorted or deduplicated copies: they become the storage (owning their data)
                stamps, translations, rotations = (part if part.flags.owndata else part.copy()
                                                   for part in (stamps, translations, rotations))
                self._stamps, self._translations, self._rotations = stamps, translations, rotations
                self.samples = len(stamps)
            self._arrays = (stamps, translations, rotations)
        return self._arrays

    def forget_before(self, stamp_ns: int) -> int:
        """Drop the samples before ``stamp_ns`` but the last one (see :meth:`TransformTree.forget_before`)."""
        if self.static or self.samples < 2:
            return 0
        stamps, translations, rotations = self.arrays()
        first = max(0, int(np.searchsorted(stamps, stamp_ns, side='left')) - 1)
        if first == 0:
            return 0
        self._stamps, self._translations, self._rotations = (
            part[first:].copy() for part in (stamps, translations, rotations))
        self.samples = len(self._stamps)
        self._arrays = None
        return first

    def at(self, stamps_ns: np.ndarray, max_gap_ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(T N x 4 x 4, outside N bool, gap N bool)`` of this link at ``stamps_ns``."""
        t, translations, quaternions = self.arrays()
        n = len(stamps_ns)
        T = np.tile(np.eye(4), (n, 1, 1))
        if self.static:
            T[:, :3, :3] = matrix_from_quaternion(quaternions[:1].astype(np.float64))[0]
            T[:, :3, 3] = translations[0]
            return T, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        outside = (stamps_ns < t[0]) | (stamps_ns > t[-1])
        upper = np.clip(np.searchsorted(t, stamps_ns, side='left'), 1, max(1, len(t) - 1))
        lower = upper - 1
        if len(t) == 1:
            lower = upper = np.zeros(n, dtype=np.int64)
        span = (t[upper] - t[lower]).astype(np.float64)
        gap = ~outside & (span > max_gap_ns)
        weight = np.divide((stamps_ns - t[lower]).astype(np.float64), span, out=np.zeros(n), where=span > 0)
        weight = weight.clip(0.0, 1.0)
        T[:, :3, 3] = translations[lower] + weight[:, None] * (translations[upper] - translations[lower])
        T[:, :3, :3] = matrix_from_quaternion(slerp(quaternions[lower].astype(np.float64),
                                                    quaternions[upper].astype(np.float64), weight))
        return T, outside, gap


@dataclass
class PoseLookup:
    """Result of :meth:`TransformTree.lookup`: ``poses`` N x 4 x 4 (NaN where ``valid`` is False)."""

    poses: np.ndarray
    valid: np.ndarray
    outside: int        # stamps before the first or after the last sample of a dynamic link
    gap: int            # stamps inside a gap of a dynamic link longer than the limit


class TransformTree:
    """A TF tree built from TFMessages; see the module docstring."""

    def __init__(self, max_gap_s: float = DEFAULT_MAX_TF_GAP_S) -> None:
        if max_gap_s <= 0:
            raise ValueError(f'max_gap_s must be positive, got {max_gap_s}')
        self.max_gap_ns = int(max_gap_s * 1e9)
        self._links: dict[str, tuple[str, _Link]] = {}   # child -> (parent, link)
        self.messages = 0

    def add_transform(self, parent: str, child: str, stamp_ns: int, translation: Sequence[float],
                      rotation_xyzw: Sequence[float], static: bool = False) -> None:
        """Add one sample of ``T_parent_child``."""
        parent, child = normalize_frame(parent), normalize_frame(child)
        if not parent or not child or parent == child:
            raise TransformError(f'invalid transform {parent!r} -> {child!r}')
        known = self._links.get(child)
        if known is not None and known[0] != parent:
            raise TransformError(f'frame {child!r} has two parents in the TF data: {known[0]!r} and {parent!r}')
        if known is None:
            known = (parent, _Link(static=static))
            self._links[child] = known
        elif known[1].static != static:
            raise TransformError(f'link {parent!r} -> {child!r} is published both on /tf and /tf_static')
        known[1].add(int(stamp_ns), translation, rotation_xyzw)

    def add_message(self, msg: Any, static: bool = False) -> None:
        """Add every transform of a ``tf2_msgs/TFMessage`` (rclpy or ``rosbags`` message)."""
        self.messages += 1
        for tf in msg.transforms:
            stamp = tf.header.stamp
            sec = getattr(stamp, 'sec', None)
            if sec is None:  # ROS 1 time: secs / nsecs
                sec, nanosec = stamp.secs, stamp.nsecs
            else:
                nanosec = stamp.nanosec
            t, r = tf.transform.translation, tf.transform.rotation
            self.add_transform(tf.header.frame_id, tf.child_frame_id, int(sec) * 1_000_000_000 + int(nanosec),
                               (t.x, t.y, t.z), (r.x, r.y, r.z, r.w), static=static)

    def forget_before(self, stamp_ns: int) -> int:
        """Drop dynamic samples older than ``stamp_ns`` (keeping the last one before it, so stamps from
        ``stamp_ns`` on still interpolate): bounds the memory of a tree fed by a live ``/tf``. Returns
        the number of samples dropped."""
        return sum(link.forget_before(stamp_ns) for _, link in self._links.values())

    @property
    def frames(self) -> set[str]:
        """Every frame named by a link."""
        return set(self._links) | {parent for parent, _ in self._links.values()}

    def _path_to_root(self, frame: str) -> list[str]:
        path = [frame]
        while path[-1] in self._links:
            path.append(self._links[path[-1]][0])
            if len(path) > len(self._links) + 1:
                raise TransformError(f'the TF data has a cycle through {frame!r}')
        return path

    def can_transform(self, target: str, source: str) -> bool:
        """Whether a chain links ``source`` to ``target``."""
        target, source = normalize_frame(target), normalize_frame(source)
        if target == source:
            return True
        return self._path_to_root(target)[-1] == self._path_to_root(source)[-1]

    def describe(self) -> str:
        """``parent -> child`` links, for error messages."""
        links = sorted(f'{p} -> {c}{" (static)" if link.static else ""}' for c, (p, link) in self._links.items())
        return ', '.join(links) or 'none'

    def lookup(self, target: str, source: str, stamps_ns: Iterable[int]) -> PoseLookup:
        """``T_target_source`` at every stamp (the pose of ``source`` in ``target``)."""
        target, source = normalize_frame(target), normalize_frame(source)
        stamps = np.asarray(list(stamps_ns), dtype=np.int64)
        if not self.can_transform(target, source):
            raise TransformError(f'no TF chain from {target!r} to {source!r}; links found: {self.describe()}')
        up_source, up_target = self._path_to_root(source), self._path_to_root(target)
        common = next(f for f in up_source if f in set(up_target))
        n = len(stamps)
        outside, gap = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)

        def compose_to(path: list[str]) -> np.ndarray:
            """T_common_frame for the path frame -> ... -> common."""
            T = np.tile(np.eye(4), (n, 1, 1))
            for child in path[:path.index(common)]:
                link_T, link_outside, link_gap = self._links[child][1].at(stamps, self.max_gap_ns)
                T = link_T @ T   # T_parent_frame = T_parent_child @ T_child_frame
                outside[:] |= link_outside
                gap[:] |= link_gap
            return T

        T_common_source = compose_to(up_source)
        T_common_target = compose_to(up_target)
        poses = np.linalg.inv(T_common_target) @ T_common_source
        valid = ~(outside | gap)
        poses[~valid] = np.nan
        return PoseLookup(poses=poses, valid=valid, outside=int(outside.sum()), gap=int((gap & ~outside).sum()))
