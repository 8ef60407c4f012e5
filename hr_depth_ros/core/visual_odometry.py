"""Camera motion between two frames from the images themselves (two-view geometry), ROS-free.

For a target frame and a source frame (neighbours in time) with intrinsics ``K``:

1. corners (Shi-Tomasi) of the target are tracked into the source with pyramidal Lucas-Kanade
   optical flow and back again; a track whose round trip misses its start by more than
   ``max_round_trip`` pixels is dropped (occlusions, repeated texture);
2. the essential matrix is fitted to the tracks with RANSAC (``cv2.findEssentialMat`` on
   normalised coordinates, so ``fx != fy`` is fine) and decomposed with the cheirality check
   (``cv2.recoverPose``): the rotation and the translation's direction, ``T_target_to_source``
   (points in the target camera -> points in the source camera, as the photometric warp takes);
3. the translation's length is not observable from two images: :func:`translation_scale` fixes it
   from a depth map of the target (the depth network's): every inlier track, back-projected
   with that depth, must land on its source pixel; the scale that does this best for each track is
   found in closed form and the median, weighted by how strongly the track constrains it, is kept.
   The poses are then in the depth network's own units.

Geometry that cannot be trusted is refused with a reason, never guessed (:data:`FAILURES`): too
few tracks or RANSAC inliers, or too little parallax once the rotation is taken out (a static
camera or a pure rotation, whose translation direction is noise).

:class:`PairMotions` runs this over the frames of a :class:`~hr_depth_ros.core.training.data.FrameStore`
for every (t, t +- stride) pair (one estimate per pair, both directions from it), counts the
failures and saves / loads itself next to the cached frames.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

__all__ = ['TwoViewSettings', 'TwoView', 'two_view_motion', 'translation_scale', 'PairMotions', 'FAILURES',
           'VO_VERSION', 'store_motions', 'inverse_motion']

VO_VERSION = 1  # bump when the estimate changes (cached results are recomputed)
RECOVER_DISTANCE = 1e4  # points farther than this many baselines do not vote in the cheirality check
FAILURES = {
    'few_tracks': 'too few features tracked between the frames',
    'few_inliers': 'too few tracks agree on one camera motion (RANSAC inliers)',
    'no_parallax': 'too little parallax once the rotation is taken out (static camera or pure rotation)',
    'no_scale': 'too few inliers constrain the translation length with the depth',
}


@dataclass(frozen=True)
class TwoViewSettings:
    """Tuning of :func:`two_view_motion` (pixels are pixels of the images given)."""

    max_corners: int = 600          # Shi-Tomasi corners of the target
    corner_quality: float = 0.005
    min_corner_distance: float = 4.0
    lk_window: int = 15             # Lucas-Kanade window (pixels) and pyramid levels
    lk_levels: int = 3
    max_round_trip: float = 0.5     # forward-backward tracking error (pixels)
    ransac_threshold: float = 0.5   # Sampson distance (pixels) of an essential-matrix inlier
    min_tracks: int = 30
    min_inliers: int = 20
    min_inlier_fraction: float = 0.3
    min_parallax: float = 0.4       # median translation-induced flow of the inliers (pixels)


@dataclass
class TwoView:
    """One two-view estimate: ``T`` (4x4 ``T_target_to_source``, unit translation; NaN when it failed),
    ``status`` ('ok' or a key of :data:`FAILURES`), the inlier tracks (``target_px``, ``source_px``,
    N x 2 pixels), the counts and the median parallax (pixels)."""

    T: np.ndarray
    status: str
    target_px: np.ndarray
    source_px: np.ndarray
    tracks: int = 0
    inliers: int = 0
    parallax: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 'ok'


def _grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _normalised(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixels -> normalised image coordinates (K^-1 [u, v, 1], first two)."""
    return np.stack([(points[:, 0] - K[0, 2]) / K[0, 0], (points[:, 1] - K[1, 2]) / K[1, 1]], axis=1)


def _track(target: np.ndarray, source: np.ndarray, settings: TwoViewSettings) -> tuple[np.ndarray, np.ndarray]:
    """Corners of ``target`` and where they are in ``source`` (round-trip checked), N x 2 float32 each."""
    corners = cv2.goodFeaturesToTrack(target, settings.max_corners, settings.corner_quality,
                                      settings.min_corner_distance, blockSize=5)
    if corners is None:
        empty = np.zeros((0, 2), np.float32)
        return empty, empty
    lk = dict(winSize=(settings.lk_window, settings.lk_window), maxLevel=settings.lk_levels,
              criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    forward, found, _ = cv2.calcOpticalFlowPyrLK(target, source, corners, None, **lk)
    back, found_back, _ = cv2.calcOpticalFlowPyrLK(source, target, forward, None, **lk)
    height, width = target.shape
    inside = ((forward[:, 0, 0] >= 0) & (forward[:, 0, 0] <= width - 1) & (forward[:, 0, 1] >= 0)
              & (forward[:, 0, 1] <= height - 1))
    keep = (found[:, 0] == 1) & (found_back[:, 0] == 1) & inside & (
        np.linalg.norm(back - corners, axis=2)[:, 0] < settings.max_round_trip)
    return corners[keep, 0], forward[keep, 0]


def _failed(status: str, tracks: int = 0, inliers: int = 0, parallax: float = 0.0) -> TwoView:
    empty = np.zeros((0, 2), np.float32)
    return TwoView(np.full((4, 4), np.nan), status, empty, empty, tracks, inliers, parallax)


def two_view_motion(target: np.ndarray, source: np.ndarray, K: np.ndarray,
                    settings: TwoViewSettings = TwoViewSettings()) -> TwoView:
    """Rotation and translation direction from ``target`` to ``source`` (RGB or grey, same size); see
    the module docstring. ``K``: 3x3 pixel intrinsics of these images."""
    K = np.asarray(K, dtype=np.float64)
    target_px, source_px = _track(_grey(target), _grey(source), settings)
    tracks = len(target_px)
    if tracks < settings.min_tracks:
        return _failed('few_tracks', tracks)
    flow = np.hypot(*(source_px - target_px).T)
    if float(np.median(flow)) < settings.min_parallax:  # a static camera: nothing moved
        return _failed('no_parallax', tracks, 0, float(np.median(flow)))
    a, b = _normalised(target_px.astype(np.float64), K), _normalised(source_px.astype(np.float64), K)
    focal = float(np.sqrt(K[0, 0] * K[1, 1]))
    E, mask = cv2.findEssentialMat(a, b, np.eye(3), method=cv2.USAC_ACCURATE, prob=0.999,
                                   threshold=settings.ransac_threshold / focal)
    if E is None or E.shape != (3, 3):  # degenerate, or several solutions stacked: refuse
        return _failed('few_inliers', tracks)
    # Cheirality up to RECOVER_DISTANCE baselines: a hand-held camera moves ~1 % of the depth per frame.
    count, R, t, mask, _ = cv2.recoverPose(E, a, b, np.eye(3), distanceThresh=RECOVER_DISTANCE,
                                            mask=mask.copy())
    inlier = mask.ravel() > 0
    if count < max(settings.min_inliers, settings.min_inlier_fraction * tracks):
        return _failed('few_inliers', tracks, int(count))
    # Parallax: the inliers' displacement once the rotation is taken out (infinite homography).
    rays = np.concatenate([a[inlier], np.ones((int(inlier.sum()), 1))], axis=1) @ R.T
    rotated = rays[:, :2] / rays[:, 2:3]
    parallax = float(np.median(np.hypot((rotated[:, 0] - b[inlier, 0]) * K[0, 0],
                                        (rotated[:, 1] - b[inlier, 1]) * K[1, 1])))
    if parallax < settings.min_parallax:
        return _failed('no_parallax', tracks, int(count), parallax)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t.ravel() / np.linalg.norm(t)
    return TwoView(T, 'ok', target_px[inlier], source_px[inlier], tracks, int(count), parallax)


def translation_scale(T: np.ndarray, K: np.ndarray, target_px: np.ndarray, source_px: np.ndarray,
                      depth: np.ndarray, min_tracks: int = 10) -> float:
    """The length ``s`` of ``T``'s translation that makes ``depth`` (the target's depth map, same
    pixels as ``K``) reproject the target tracks onto their source pixels; NaN when fewer than
    ``min_tracks`` tracks have a valid depth and constrain ``s``.

    For a track with target point ``X = z K^-1 [u, v, 1]`` and source ray ``m``, ``m x (R X + s t)
    = 0`` gives ``s`` in closed form; the sensitivity of its reprojection to ``s`` (pixels per unit)
    weights a median over the tracks.
    """
    K = np.asarray(K, dtype=np.float64)
    if len(target_px) == 0:
        return float('nan')
    height, width = depth.shape
    cols = np.clip(np.round(target_px[:, 0]).astype(int), 0, width - 1)
    rows = np.clip(np.round(target_px[:, 1]).astype(int), 0, height - 1)
    z = depth[rows, cols].astype(np.float64)
    a = np.concatenate([_normalised(target_px.astype(np.float64), K), np.ones((len(z), 1))], axis=1)
    m = np.concatenate([_normalised(source_px.astype(np.float64), K), np.ones((len(z), 1))], axis=1)
    R, t = T[:3, :3], T[:3, 3]
    rotated = (a @ R.T) * z[:, None]
    mt = np.cross(m, t)
    s = -np.einsum('ij,ij->i', np.cross(m, rotated), mt) / np.maximum(np.einsum('ij,ij->i', mt, mt), 1e-18)
    # d(projection)/ds in pixels: the flow that one unit of translation adds to this track.
    depth_source = rotated[:, 2]
    projected = rotated[:, :2] / np.where(np.abs(depth_source) > 1e-12, depth_source, 1e-12)[:, None]
    sensitivity = np.hypot((t[0] - projected[:, 0] * t[2]) * K[0, 0],
                           (t[1] - projected[:, 1] * t[2]) * K[1, 1]) / np.maximum(np.abs(depth_source), 1e-12)
    valid = np.isfinite(z) & (z > 0) & np.isfinite(s) & (s > 0) & (depth_source > 0) & np.isfinite(sensitivity)
    if valid.sum() < min_tracks:
        return float('nan')
    return _weighted_median(s[valid], sensitivity[valid] ** 2)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def inverse_motion(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (NaN stays NaN)."""
    inverse = np.eye(4)
    inverse[:3, :3] = T[:3, :3].T
    inverse[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return inverse


@dataclass
class PairMotions:
    """Two-view motion of every frame towards its neighbours ``stride`` frames before and after.

    ``T[i, j]``: ``T_target_to_source`` of target frame ``i`` and source ``i - stride`` (j = 0) or
    ``i + stride`` (j = 1), unit translation until :meth:`scaled` (NaN: no estimate). ``status[i, j]``:
    'ok', a :data:`FAILURES` key, or '' (no such neighbour in the same bag). ``tracks``: inlier
    tracks per (i, j), target pixels then source pixels (``k x 4`` float32).
    """

    stride: int
    T: np.ndarray
    status: np.ndarray
    tracks: list[list[np.ndarray]]
    version: int = VO_VERSION
    failures: Counter = field(default_factory=Counter)
    seconds: float = 0.0            # time the estimate took (0: read from the cache)

    @classmethod
    def estimate(cls, images: Callable[[int], np.ndarray], segment: np.ndarray, Ks: Sequence[np.ndarray],
                 stride: int = 1, settings: TwoViewSettings = TwoViewSettings()) -> 'PairMotions':
        """Estimate every (i, i + stride) pair of frames of one segment (bag) once; ``images(i)``: frame
        ``i`` (RGB), ``segment[i]``: its bag, ``Ks[segment]``: the bag's intrinsics."""
        started = time.perf_counter()
        n = len(segment)
        T = np.full((n, 2, 4, 4), np.nan)
        status = np.full((n, 2), '', dtype=object)
        empty = np.zeros((0, 4), np.float32)
        tracks = [[empty, empty] for _ in range(n)]
        grey: dict[int, np.ndarray] = {}

        def frame(index: int) -> np.ndarray:
            if index not in grey:
                grey[index] = _grey(images(index))
                grey.pop(index - 2 * stride - 1, None)  # frames go by in order: keep a few
            return grey[index]

        for i in range(n - stride):
            k = i + stride
            if segment[k] != segment[i]:
                continue
            result = two_view_motion(frame(i), frame(k), Ks[int(segment[i])], settings)
            status[i, 1] = status[k, 0] = result.status
            if result.ok:
                T[i, 1], T[k, 0] = result.T, inverse_motion(result.T)
                tracks[i][1] = np.concatenate([result.target_px, result.source_px], axis=1)
                tracks[k][0] = np.concatenate([result.source_px, result.target_px], axis=1)
        motions = cls(stride, T, status, tracks, seconds=time.perf_counter() - started)
        motions.failures = Counter(s for s in status[:, 1] if s not in ('', 'ok'))
        return motions

    @classmethod
    def concat(cls, parts: Sequence['PairMotions']) -> 'PairMotions':
        """One result over the frames of ``parts`` in order (e.g. one per bag)."""
        motions = cls(parts[0].stride, np.concatenate([p.T for p in parts]), np.concatenate([p.status for p in parts]),
                      [row for p in parts for row in p.tracks])
        motions.failures = sum((p.failures for p in parts), Counter())
        motions.seconds = sum(p.seconds for p in parts)
        return motions

    def has_motion(self, centre: int) -> bool:
        """Whether frame ``centre`` has a motion towards both neighbours."""
        return bool(np.isfinite(self.T[centre]).all())

    def scaled(self, depth: Callable[[int], np.ndarray], Ks: Sequence[np.ndarray], segment: np.ndarray,
               frames: Sequence[int]) -> tuple[np.ndarray, Counter]:
        """``T`` of ``frames`` (targets) with translations in the units of ``depth(i)`` (the target's
        depth map at the frames' resolution); the others NaN. Also the failures (``no_scale``)."""
        result = np.full_like(self.T, np.nan)
        failures: Counter = Counter()
        for i in frames:
            K = Ks[int(segment[i])]
            target_depth = depth(i)
            for j in range(2):
                if not np.isfinite(self.T[i, j]).all():
                    continue
                pixels = self.tracks[i][j]
                scale = translation_scale(self.T[i, j], K, pixels[:, :2], pixels[:, 2:], target_depth)
                if not np.isfinite(scale):
                    failures['no_scale'] += 1
                    continue
                result[i, j] = self.T[i, j]
                result[i, j, :3, 3] *= scale
        return result, failures

    def summary(self) -> str:
        """How many pairs gave a motion and why the others did not."""
        pairs = int((self.status[:, 1] != '').sum())
        ok = int((self.status[:, 1] == 'ok').sum())
        why = ', '.join(f'{count} {FAILURES[key]}' for key, count in sorted(self.failures.items()))
        return (f'two-view geometry: {ok} of {pairs} frame pairs gave a camera motion'
                + (f' (refused: {why})' if why else '')
                + (f', {self.seconds:.1f} s' if self.seconds else ', from the frame cache'))

    # -- cache ----------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write to ``path`` (.npz) atomically."""
        counts = np.array([len(t) for row in self.tracks for t in row], dtype=np.int64)
        flat = np.concatenate([t for row in self.tracks for t in row]) if counts.sum() else np.zeros((0, 4))
        partial = path.with_name(f'.{path.name}.{os.getpid()}.partial.npz')
        np.savez(partial, T=self.T, status=self.status.astype(str), counts=counts, tracks=flat.astype(np.float32),
                 meta=json.dumps({'stride': self.stride, 'version': self.version}))
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path) -> 'PairMotions | None':
        """What :meth:`save` wrote, None when absent, damaged or of another version."""
        try:
            with np.load(path) as data:
                meta = json.loads(str(data['meta']))
                if meta.get('version') != VO_VERSION:
                    return None
                T, status, counts, flat = data['T'], data['status'].astype(object), data['counts'], data['tracks']
        except (OSError, ValueError, KeyError):
            return None
        bounds = np.concatenate([[0], np.cumsum(counts)])
        pieces = [flat[bounds[k]:bounds[k + 1]] for k in range(len(counts))]
        tracks = [pieces[2 * i:2 * i + 2] for i in range(len(T))]
        motions = cls(int(meta['stride']), T, status, tracks)
        motions.failures = Counter(s for s in status[:, 1] if s not in ('', 'ok'))
        return motions


def store_motions(store: Any, stride: int, settings: TwoViewSettings = TwoViewSettings()) -> PairMotions:
    """:class:`PairMotions` of a :class:`~hr_depth_ros.core.training.data.FrameStore`, bag by bag; a bag whose
    frames come from the persistent frame cache (``store.parts``) keeps its result there and reuses it."""
    results = []
    for seg in range(len(store.bags)):
        frames = np.flatnonzero(store.segment == seg)
        cache = (Path(store.parts[seg]) / f'two_view-stride{stride}-v{VO_VERSION}-{_settings_key(settings)}.npz'
                 if store.parts else None)
        motions = PairMotions.load(cache) if cache is not None else None
        if motions is None or len(motions.T) != len(frames):
            first = int(frames[0]) if len(frames) else 0
            motions = PairMotions.estimate(lambda i: store.image(first + i), np.zeros(len(frames), dtype=np.int64),
                                           [store.K[seg]], stride, settings)
            if cache is not None:
                try:
                    motions.save(cache)
                except OSError:  # a read-only cache still trains
                    pass
        results.append(motions)
    return PairMotions.concat(results)


def _settings_key(settings: TwoViewSettings) -> str:
    text = json.dumps(dataclasses.asdict(settings), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]
