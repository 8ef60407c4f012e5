"""The online adaptation worker: self-supervised steps on the robot's recent frames, honest swaps (ROS-free).

Runs in its own process (:func:`worker_main`, started by :class:`hr_depth_ros.core.adaptation.OnlineAdaptation`)
at low priority with one torch thread on the CPU (its own CUDA stream on a GPU), so the depth
node's inference keeps its cores. What it does, one unit of work at a time (:meth:`Adapter.work`):

1. keeps the frames it is sent (network resolution, camera pose from TF) in a bounded
   :class:`FrameRing`; consecutive frames no further apart than ``max_gap_s`` form triplets
   (t-1, t, t+1), as fine-tuning's; one block of ``HOLDOUT_BLOCK`` frames in ``HOLDOUT_PERIOD``
   is held out (never trained on) to judge candidates, and a frame that revisits the place and
   view of an older frame in the ring (TF poses) takes that frame's split, so that a loop driven
   again, or a recording replayed, never shows the judge pixels it trained on. Without TF (``pose_source``
   ``vo``, a camera-only robot) the frames come without a pose and the worker places each one
   after the previous by two-view geometry (:mod:`hr_depth_ros.core.visual_odometry`: rotation and
   translation direction from tracked corners, the translation's length from the serving model's
   depth), chaining the poses; a pair the geometry refuses (standing still, too little texture)
   starts a new chain, and no triplet spans two chains. Depth then stays in the serving model's
   units (metres only if the start checkpoint has a metric scale);
2. with TF, a start checkpoint without metric scale first gets one from the photometric scale search
   under the TF poses (:func:`~hr_depth_ros.core.training.scale.search_scale`, as fine-tuning
   does): from then on depth is in metres and training keeps it so (the poses are metric);
3. trains a candidate copy of the serving model with fine-tuning's loss (the trainer's
   ``_losses``: minimum reprojection under the TF poses, smoothness, and an optional L1 pull to
   the start model, the anchor); encoder batch-norm statistics stay fixed. The candidate that is
   judged is an exponential average of the trained weights (``average``, with a short memory
   right after a start): one batch of 4 a step makes the trained weights wander (on the synthetic
   drive their depth error moved +-3 % between judgements, the average's +-1 %), and a judge on a
   few held-out frames must not be handed a lucky or unlucky moment of that walk;
4. every ``steps_per_round`` steps scores candidate and serving model on the held-out triplets
   by the criterion fine-tuning selects with under fixed poses (the mean minimum reprojection error
   of the depth under the TF or two-view poses, no noise) and accepts the candidate only when it is
   lower by ``margin`` (relative); an accepted model is written as a checkpoint (atomic) and
   sent to the node, which swaps it in between two frames. After ``RESET_AFTER`` judgements in a
   row in which it was no better at all the candidate restarts from the serving model (one that is
   better by less than the margin keeps its progress: on the synthetic drive restarts after
   near-misses threw away candidates 4-7 % better in depth).

Events go to the node as dicts (``event``: ready, log, metric, step, accepted, rejected, error).
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import queue
import random
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from hr_depth_ros.core.checkpoint import DepthCheckpoint, load_depth_checkpoint, save_depth_checkpoint
from hr_depth_ros.core.geometry import normalized_intrinsics
from hr_depth_ros.core.inference import select_device
from hr_depth_ros.core.training.dataset import TripletDataset
from hr_depth_ros.core.training.scale import search_scale
from hr_depth_ros.core.training.trainer import Trainer, TrainingConfig, _DisparityTarget, _Models, freeze_batch_norm
from hr_depth_ros.core.visual_odometry import inverse_motion, translation_scale, two_view_motion

__all__ = ['WorkerSettings', 'FrameRing', 'Adapter', 'worker_main', 'HOLDOUT_BLOCK', 'HOLDOUT_PERIOD', 'HOLDOUT_PHASE']

HOLDOUT_BLOCK = 10        # frames per held-out / training block (by arrival number)
HOLDOUT_PERIOD = 5        # one block in 5 is held out: 20 % of the frames judge, never train
HOLDOUT_PHASE = 1         # the held-out block of each period: the second (arrivals 10-19, 60-69, ...), so that
                          # a short loop (a room patrolled, a recording replayed) has held-out places on its first pass
REVISIT_STEPS = 0.5       # a frame within this many median frame spacings of an older one (and REVISIT_DEGREES)
REVISIT_DEGREES = 5.0     # revisits that frame's place: it takes that frame's split (held out or trained on)
MIN_HELD_OUT = 6          # held-out triplets needed before a candidate is judged
MAX_HELD_OUT = 32         # the most recent held-out triplets a judgement looks at
FIRST_ROUND_STEPS = 5     # steps before the first judgement (later: steps_per_round)
RESET_AFTER = 4           # judgements in a row in which the candidate was no better at all: it restarts from the
                          # serving model (one better by less than the margin keeps training)
PLACE_PER_UNIT = 8        # frames placed by two-view geometry per unit of work (pose_source vo)
POSE_SOURCES = ('tf', 'vo')
# Measured on the synthetic drive (benchmarks/RESULTS.md): with TF poses and the averaged judge 3e-4 gains about a
# third more per step than 1e-4; under two-view poses (noisier, chained) 3e-4 did worse in the node than 1e-4.
LEARNING_RATES = {'tf': 3e-4, 'vo': 1e-4}
CHECKPOINT_NAME = 'latest'  # OUTPUT/latest: the last accepted model


@dataclass(frozen=True)
class WorkerSettings:
    """What the worker process needs (picklable; the node builds it from its parameters)."""

    start: str                  # checkpoint folder the serving model starts from
    anchor: str                 # the start model the candidate is pulled toward (the node's weights)
    output: str                 # accepted models go to OUTPUT/latest
    pose_source: str = 'tf'     # 'tf': frames come with TF poses; 'vo': placed here by two-view geometry
    buffer_frames: int = 200
    batch_size: int = 4
    lr: float = 0.0             # Adam's learning rate; 0: LEARNING_RATES[pose_source]
    loss_scales: int = 1        # loss at the full-resolution output only (as much per step as 4 scales, 0.6x the time)
    steps_per_round: int = 10
    scale_triplets: int = 6     # triplets the metric scale search looks at
    margin: float = 0.01
    average: float = 0.9        # the judged candidate is this exponential average of the trained weights (0: the
                                # trained weights themselves); one small batch a step makes them noisy
    anchor_weight: float = 0.0
    max_gap_s: float = 0.5
    min_depth: float = 0.1
    max_depth: float = 100.0
    device: str = 'cpu'
    nice: int = 10
    seed: int = 0
    prepare: str = ''           # 'openvino': also convert each accepted model into the model cache
    cache_dir: str = ''


class FrameRing:
    """The last ``capacity`` frames (H x W x 3 uint8 at network size) with camera poses (4 x 4, camera -> odom).

    A frame added without a pose (pose source ``vo``) waits in ``unplaced`` until :meth:`place` gives it
    one; ``chain``: which run of chained two-view poses a frame belongs to (TF poses: all chain 0).

    Looks like a :class:`~hr_depth_ros.core.training.data.FrameStore` to
    :class:`~hr_depth_ros.core.training.data.TripletDataset` (``image``, ``depth``, ``has_poses``,
    ``poses``, ``K``, ``segment``, ``width``, ``height``). Memory: ``capacity`` frames, allocated once.
    """

    def __init__(self, capacity: int, width: int, height: int, K: np.ndarray) -> None:
        if capacity < 3:
            raise ValueError(f'the frame buffer needs at least 3 frames, got {capacity}')
        self.capacity, self.width, self.height = int(capacity), int(width), int(height)
        self.images = np.zeros((self.capacity, self.height, self.width, 3), np.uint8)
        self.poses = np.full((self.capacity, 4, 4), np.nan)
        self.stamps_ns = np.zeros(self.capacity, np.int64)
        self.arrival = np.full(self.capacity, -1, np.int64)
        self.segment = np.zeros(self.capacity, np.int64)
        self.chain = np.full(self.capacity, -1, np.int64)
        self.unplaced = np.zeros(self.capacity, bool)
        self.held = np.zeros(self.capacity, bool)   # held out: judges candidates, never trained on
        self.revisits = 0   # frames that took the split of an older frame at their place
        self.chains = 0     # chains started so far
        self.K = [np.asarray(K, np.float64)]
        self.added = 0      # frames ever added (arrival numbers continue across resets)
        self.first = 0      # arrival number of the oldest frame since the last reset

    def __len__(self) -> int:
        return min(self.added - self.first, self.capacity)

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.poses.nbytes + self.stamps_ns.nbytes + self.arrival.nbytes + self.held.nbytes

    def reset(self, K: np.ndarray) -> None:
        """Forget every frame (the camera changed); ``K``: the new camera's intrinsics at network size."""
        self.K = [np.asarray(K, np.float64)]
        self.first = self.added
        self.poses[:] = np.nan
        self.arrival[:] = -1
        self.chain[:] = -1
        self.unplaced[:] = False

    def add(self, rgb: np.ndarray, pose: np.ndarray | None, stamp_ns: int) -> None:
        """Keep a frame (overwriting the oldest); ``pose`` None: to be placed by :meth:`place`."""
        if rgb.shape != (self.height, self.width, 3):
            raise ValueError(f'frame of shape {rgb.shape}, the buffer holds {self.height}x{self.width}x3')
        slot = self.added % self.capacity
        self.held[slot] = self._held_out(pose)
        self.images[slot] = rgb
        self.poses[slot] = np.nan if pose is None else pose
        self.chain[slot] = -1 if pose is None else 0
        self.unplaced[slot] = pose is None
        self.stamps_ns[slot] = stamp_ns
        self.arrival[slot] = self.added
        self.added += 1

    def next_unplaced(self) -> tuple[int, int | None] | None:
        """(slot, slot of the frame before it or None) of the oldest frame waiting for a pose, or None."""
        for number in range(self.added - len(self), self.added):
            slot = number % self.capacity
            if self.unplaced[slot]:
                before = (number - 1) % self.capacity
                has_before = number - 1 >= self.added - len(self) and not self.unplaced[before]
                return slot, before if has_before else None
        return None

    def place(self, slot: int, pose: np.ndarray | None, after: int | None) -> None:
        """Give an unplaced frame its pose: chained to the frame in slot ``after``, or (``pose`` None) the
        start of a new chain."""
        if pose is None:
            self.poses[slot] = np.eye(4)
            self.chain[slot] = self.chains = self.chains + 1
        else:
            self.poses[slot] = pose
            self.chain[slot] = self.chain[after]
        self.unplaced[slot] = False

    def image(self, index: int) -> np.ndarray:
        return self.images[index].copy()

    def depth(self, index: int) -> None:
        return None

    def has_poses(self, indices: Any) -> bool:
        return bool(np.isfinite(self.poses[list(indices)]).all())

    @staticmethod
    def held_out(arrival: int) -> bool:
        """The split by arrival number: one block of ``HOLDOUT_BLOCK`` frames in ``HOLDOUT_PERIOD`` is held out."""
        return (arrival // HOLDOUT_BLOCK) % HOLDOUT_PERIOD == HOLDOUT_PHASE

    def _held_out(self, pose: np.ndarray | None) -> bool:
        """The split of the next frame: by arrival, unless (TF pose) it revisits the place and view of a frame in
        the ring at least a block older, whose split it takes. A robot passing again (or a replayed
        recording) must not be judged on what it trained on at that place, nor train on what judges it."""
        by_arrival = self.held_out(self.added)
        if pose is None:  # two-view poses: chained per run, not comparable across runs
            return by_arrival
        numbers = np.arange(self.added - len(self), self.added)
        slots = numbers % self.capacity
        placed = (self.chain[slots] == 0) & np.isfinite(self.poses[slots, 0, 0])
        steps = np.linalg.norm(np.diff(self.poses[slots, :3, 3], axis=0), axis=1)[placed[1:] & placed[:-1]]
        spacing = float(np.median(steps)) if len(steps) else 0.0
        if not spacing > 0.0:  # no camera motion yet to measure places by
            return by_arrival
        older = placed & (numbers <= self.added - HOLDOUT_BLOCK)
        if not older.any():
            return by_arrival
        candidates = slots[older]
        distance = np.linalg.norm(self.poses[candidates, :3, 3] - pose[:3, 3], axis=1)
        cos_angle = (np.einsum('nij,ij->n', self.poses[candidates, :3, :3], pose[:3, :3]) - 1.0) / 2.0
        near = (distance <= REVISIT_STEPS * spacing) & \
            (cos_angle >= math.cos(math.radians(REVISIT_DEGREES)))
        if not near.any():
            return by_arrival
        self.revisits += 1
        return bool(self.held[candidates[near][np.argmin(distance[near])]])

    def triplets(self, max_gap_ns: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """(training, held-out) triplets of slots, oldest first; a triplet with frames on both sides is in neither."""
        slots = [n % self.capacity for n in range(self.added - len(self), self.added)]
        train, held = [], []
        for a, b, c in zip(slots, slots[1:], slots[2:]):
            if (self.stamps_ns[b] - self.stamps_ns[a] > max_gap_ns or self.stamps_ns[c] - self.stamps_ns[b] > max_gap_ns
                    or not self.has_poses((a, b, c)) or not self.chain[a] == self.chain[b] == self.chain[c]):
                continue
            flags = {bool(self.held[s]) for s in (a, b, c)}
            if flags == {True}:
                held.append((a, b, c))
            elif flags == {False}:
                train.append((a, b, c))
        return train, held


Emit = Callable[[dict[str, Any]], None]


class Adapter:
    """The worker's state and one unit of work at a time (see the module docstring); usable in-process."""

    def __init__(self, settings: WorkerSettings, emit: Emit) -> None:
        self.settings = settings
        self.emit = emit
        self.device = select_device(settings.device)
        if settings.pose_source not in POSE_SOURCES:
            raise ValueError(f'pose_source {settings.pose_source!r}: one of {POSE_SOURCES}')
        self.lr = settings.lr or LEARNING_RATES[settings.pose_source]
        start = load_depth_checkpoint(settings.start)
        self.start = start
        self.arch, self.width, self.height = start.arch, start.width, start.height
        config = TrainingConfig(bags=('(online)',), output=settings.output, arch=start.arch, width=start.width,
                                height=start.height, steps=1, batch_size=settings.batch_size, lr=self.lr,
                                loss_scales=settings.loss_scales,
                                min_depth=settings.min_depth, max_depth=settings.max_depth,
                                init=settings.anchor, anchor_weight=settings.anchor_weight, freeze_bn=True,
                                device=settings.device, seed=settings.seed)
        self.trainer = Trainer(config)      # its loss and TF scoring, with this run's metric scale
        self.trainer.device = self.device
        self.two_view = settings.pose_source == 'vo'
        self.trainer.state.pose_source = 'tf'   # the loss takes the ring's poses as given, from TF or two-view geometry
        self.placed = self.refused = 0          # two-view placements: chained, refused (a new chain)
        scale = start.metric_scale
        self.trainer.state.metric = scale is not None
        self.trainer.state.metric_scale = scale if scale is not None else 1.0
        targets = []
        if settings.anchor_weight > 0:
            anchor = start if Path(settings.anchor).resolve() == Path(settings.start).resolve() else \
                load_depth_checkpoint(settings.anchor)
            anchor_encoder, anchor_decoder = (copy.deepcopy(m).requires_grad_(False).eval().to(self.device)
                                              for m in (anchor.encoder, anchor.decoder))
            targets.append(_DisparityTarget('anchor', anchor_encoder, anchor_decoder, anchor.height, anchor.width,
                                            settings.anchor_weight))
        self.serving = self._models(start.encoder, start.decoder, [])
        self.candidate = self._models(copy.deepcopy(start.encoder), copy.deepcopy(start.decoder), targets)
        self.averaged = self._models(copy.deepcopy(start.encoder), copy.deepcopy(start.decoder), []) \
            if settings.average > 0 else self.candidate
        self.averaged_steps = 0     # training steps in the average since it last restarted
        self._new_optimizer()
        self.ring: FrameRing | None = None
        self.lock = threading.Lock()    # frames arrive on another thread (worker_main's intake)
        self.rng = random.Random(settings.seed)
        self.steps = self.accepted = self.rejected = self.no_better_in_a_row = 0
        self.since_round = 0
        self.last_scores: dict[str, float] = {}
        self._serving_score: tuple[Any, float] | None = None
        torch.manual_seed(settings.seed)

    def _models(self, encoder: nn.Module, decoder: nn.Module, targets: list) -> _Models:
        return _Models(encoder.to(self.device), decoder.to(self.device), nn.Identity(), nn.Identity(), targets)

    def _new_optimizer(self) -> None:
        params = [p for m in (self.candidate.encoder, self.candidate.decoder) for p in m.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=self.lr)

    @property
    def metric(self) -> bool:
        return self.trainer.state.metric

    # -- frames -------------------------------------------------------------------------------
    def reset(self, K: np.ndarray) -> None:
        """A new camera (or new intrinsics): forget the buffered frames."""
        with self.lock:
            if self.ring is None:
                self.ring = FrameRing(self.settings.buffer_frames, self.width, self.height, K)
            else:
                self.ring.reset(K)

    def add_frame(self, rgb: np.ndarray, pose: np.ndarray, stamp_ns: int) -> None:
        with self.lock:
            if self.ring is None:
                raise RuntimeError('add_frame before reset(K): the worker needs the camera intrinsics first')
            self.ring.add(rgb, pose, stamp_ns)

    # -- work ---------------------------------------------------------------------------------
    def work(self) -> bool:
        """One unit of work (scale search, a training step or a judgement); False when the buffer is too thin."""
        with self.lock:
            if self.ring is None:
                return False
            train, held = self.ring.triplets(int(self.settings.max_gap_s * 1e9))
        if self.two_view and self._place_frames():
            return True
        if not self.metric and not self.two_view:
            if len(train) + len(held) < self.settings.scale_triplets:
                return False
            self._search_scale(train + held)
            return True
        # The first judgement comes early (FIRST_ROUND_STEPS): the robot gets the first gains soon.
        due = min(FIRST_ROUND_STEPS, self.settings.steps_per_round) if self.accepted <= 1 else self.settings.steps_per_round
        if self.since_round >= due and len(held) >= MIN_HELD_OUT:
            self._judge(held[-MAX_HELD_OUT:])
            return True
        if len(train) < self.settings.batch_size:
            return False
        self._train_step(train)
        return True

    def _place_frames(self) -> bool:
        """Place up to PLACE_PER_UNIT frames waiting for a pose by two-view geometry; False when none waits."""
        placed_any = False
        for _ in range(PLACE_PER_UNIT):
            with self.lock:
                found = self.ring.next_unplaced()
                if found is None:
                    return placed_any
                slot, before = found
                arrival = int(self.ring.arrival[slot])
                image = self.ring.image(slot)
                previous = None if before is None else (self.ring.image(before), self.ring.poses[before].copy(),
                                                        int(self.ring.stamps_ns[slot] - self.ring.stamps_ns[before]))
                K = self.ring.K[0]
            pose = None
            if previous is not None and previous[2] <= self.settings.max_gap_s * 1e9:
                pose = self._chained_pose(previous[0], image, K, previous[1])
            with self.lock:
                if int(self.ring.arrival[slot]) == arrival and self.ring.unplaced[slot]:  # still the same frame
                    self.ring.place(slot, pose, before)
            self.placed += pose is not None
            self.refused += pose is None and previous is not None
            placed_any = True
        return placed_any

    @torch.no_grad()
    def serving_depth(self, rgb: np.ndarray) -> np.ndarray:
        """The serving model's depth (H x W, metres once the metric scale is known, else its own units) of a
        frame at network size (H x W x 3 uint8), as the node publishes it."""
        self._eval(self.serving)
        tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(self.device).float().div_(255.0)
        disp = self.serving.decoder(self.serving.encoder(tensor))[('disp', 0)].float()
        return self.trainer._depth(disp)[0, 0].cpu().numpy()

    @torch.no_grad()
    def _chained_pose(self, before: np.ndarray, image: np.ndarray, K: np.ndarray,
                      pose_before: np.ndarray) -> np.ndarray | None:
        """The camera pose of ``image`` from the frame ``before`` it (pose ``pose_before``) by two-view geometry,
        the translation's length from the serving model's depth of ``before``; None when the geometry refuses."""
        motion = two_view_motion(before, image, K)
        if not motion.ok:
            return None
        T = motion.T.copy()  # points in the frame before -> points in this frame
        length = translation_scale(T, K, motion.target_px, motion.source_px, self.serving_depth(before))
        if not math.isfinite(length):
            return None
        T[:3, 3] *= length
        return pose_before @ inverse_motion(T)

    def _batches(self, samples: list[tuple[int, int, int]], augment: bool = False) -> list[dict[str, Any]]:
        """``samples`` as collated batches of ``batch_size`` (copied out of the ring under its lock)."""
        size = self.settings.batch_size
        with self.lock:
            dataset = TripletDataset(self.ring, samples, augment=augment)
            return [default_collate([dataset[i] for i in range(start, min(start + size, len(samples)))])
                    for start in range(0, len(samples), size)]

    def _search_scale(self, samples: list[tuple[int, int, int]]) -> None:
        count = self.settings.scale_triplets
        chosen = samples[::max(1, len(samples) // count)][:count]
        prepared = self.trainer._tf_scoring(self.trainer._disparities(self.serving, self._batches(chosen), len(chosen)))
        # A coarser grid than fine-tuning's (3 points a decade, then golden-section refinement to ~1 %):
        # the worker has one thread.
        def loss_at(scale: float) -> float:
            return self.trainer._photometric_under_tf(prepared, scale)

        search = search_scale(loss_at, points_per_decade=3, refine_steps=10)
        sharpness = min(loss_at(search.scale * 2), loss_at(search.scale / 2)) / max(search.loss, 1e-12) - 1.0
        self._eval(self.serving)
        state = self.trainer.state
        state.metric, state.metric_scale = True, search.scale
        state.scale_search = {'samples': len(chosen), 'loss': search.loss, 'sharpness': sharpness,
                              'how': 'photometric search under TF poses on the recent frames (online)'}
        self.emit({'event': 'metric', 'metric_scale': search.scale, 'loss': search.loss, 'sharpness': sharpness,
                   'triplets': len(chosen)})
        self._accept(score=search.loss, previous=None, reason='metric scale')

    def _train_step(self, train: list[tuple[int, int, int]]) -> None:
        chosen = self.rng.sample(range(len(train)), self.settings.batch_size)
        batch = self._batches([train[i] for i in chosen], augment=True)[0]
        models = self.candidate
        for module in (models.encoder, models.decoder):
            module.train()
        freeze_batch_norm(models.encoder)
        loss, _ = self.trainer._losses(models, batch, 'tf')
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self._restart_candidate()
            self.emit({'event': 'log', 'message': f'non-finite loss at step {self.steps + 1}: candidate restarted '
                                                  'from the serving model'})
            return
        loss.backward()
        self.optimizer.step()
        self._update_average()
        self.steps += 1
        self.since_round += 1
        if self.steps % 5 == 0:
            self.emit({'event': 'step', 'step': self.steps, 'loss': float(loss.item()), 'buffer': len(self.ring),
                       'triplets': len(train)})

    @torch.no_grad()
    def _update_average(self) -> None:
        """Move the judged weights (``averaged``) toward the trained ones by ``1 - average``."""
        if self.averaged is self.candidate:
            return
        # As TensorFlow's ExponentialMovingAverage with num_updates: a short memory right after a restart, so
        # the first judgement does not wait for the average to catch up.
        decay = min(self.settings.average, (1.0 + self.averaged_steps) / (10.0 + self.averaged_steps))
        self.averaged_steps += 1
        for averaged, trained in ((self.averaged.encoder, self.candidate.encoder),
                                  (self.averaged.decoder, self.candidate.decoder)):
            for mean, value in zip(averaged.parameters(), trained.parameters()):
                mean.lerp_(value, 1.0 - decay)
            for mean, value in zip(averaged.buffers(), trained.buffers()):
                mean.copy_(value)

    @staticmethod
    def _eval(models: _Models) -> None:
        for module in (models.encoder, models.decoder):
            module.eval()

    def score(self, models: _Models, held: list[tuple[int, int, int]]) -> float:
        """Mean minimum reprojection error of ``models``' metric depth under the TF poses on ``held`` (lower is better)."""
        scored = self.trainer._disparities(models, self._batches(held), len(held))
        return self.trainer._photometric_under_tf(self.trainer._tf_scoring(scored), self.trainer.state.metric_scale)

    def _judge(self, held: list[tuple[int, int, int]]) -> None:
        self.since_round = 0
        candidate = self.score(self.averaged, held)
        key = (tuple(int(self.ring.arrival[t[1]]) for t in held), _fingerprint(self.serving))
        if self._serving_score is None or self._serving_score[0] != key:
            self._serving_score = (key, self.score(self.serving, held))
            self._eval(self.serving)
        serving = self._serving_score[1]
        self.last_scores = {'candidate': candidate, 'serving': serving, 'held_out': len(held)}
        if math.isfinite(candidate) and candidate < serving * (1.0 - self.settings.margin):
            self.serving.encoder.load_state_dict(self.averaged.encoder.state_dict())
            self.serving.decoder.load_state_dict(self.averaged.decoder.state_dict())
            self.no_better_in_a_row = 0
            self._accept(score=candidate, previous=serving, reason='better on the held-out frames')
            return
        self.rejected += 1
        self.no_better_in_a_row = self.no_better_in_a_row + 1 if not candidate < serving else 0
        restart = self.no_better_in_a_row >= RESET_AFTER
        if restart:
            self._restart_candidate()
        self.emit({'event': 'rejected', 'step': self.steps, 'candidate': candidate, 'serving': serving,
                   'held_out': len(held), 'restarted': restart})

    def _restart_candidate(self) -> None:
        for models in {id(m): m for m in (self.candidate, self.averaged)}.values():
            models.encoder.load_state_dict(self.serving.encoder.state_dict())
            models.decoder.load_state_dict(self.serving.decoder.state_dict())
        self.averaged_steps = 0
        self._new_optimizer()
        self.no_better_in_a_row = 0

    def _accept(self, score: float, previous: float | None, reason: str) -> None:
        self.accepted += 1
        self._eval(self.serving)
        folder = self._save(score, previous)
        if self.settings.prepare == 'openvino':
            self._prepare_openvino()
        self.emit({'event': 'accepted', 'step': self.steps, 'candidate': score, 'serving': previous,
                   'reason': reason, 'checkpoint': str(folder), 'metric_scale': self.trainer.state.metric_scale,
                   'metric': self.metric,
                   'encoder': {k: v.detach().cpu() for k, v in self.serving.encoder.state_dict().items()},
                   'decoder': {k: v.detach().cpu() for k, v in self.serving.decoder.state_dict().items()}})

    def _save(self, score: float, previous: float | None) -> Path:
        with self.lock:
            K = self.ring.K[0].copy()
        state = self.trainer.state
        metric = {'metric_scale': state.metric_scale, 'scale_search': state.scale_search, 'depth_units': 'metres'} \
            if self.metric else {}
        metadata = {
            'architecture': self.arch, 'resolution': [self.width, self.height],
            'intrinsics': {'K': K.tolist(), 'width': self.width, 'height': self.height},
            'K_normalized': normalized_intrinsics(K, self.width, self.height).tolist(),
            'trained_with': 'hr_depth_ros.core.adaptation (online, in the depth node)',
            'pose_source': self.settings.pose_source,
            'selected_by': ('loss_vo' if self.two_view else 'loss_tf') + ' (held-out recent frames)', **metric,
            'online': {'step': self.steps, 'accepted': self.accepted, 'score': score, 'serving_score': previous,
                       'lr': self.lr, 'start': self.settings.start, 'anchor': self.settings.anchor,
                       'settings': asdict(self.settings), 'time': time.time()},
        }
        return save_depth_checkpoint(Path(self.settings.output).expanduser() / CHECKPOINT_NAME, self.serving.encoder,
                                     self.serving.decoder, arch=self.arch, height=self.height, width=self.width,
                                     metadata=metadata)

    def _prepare_openvino(self) -> None:
        """Convert the accepted model into the OpenVINO model cache here, at low priority, so that the
        node only reads and compiles it."""
        from hr_depth_ros.core.backends import OpenVINOBackend
        from hr_depth_ros.core.inference import _DepthNet

        start = time.perf_counter()
        net = _DepthNet(copy.deepcopy(self.serving.encoder).cpu(), copy.deepcopy(self.serving.decoder).cpu()).eval()
        OpenVINOBackend(net, self.arch, self.width, self.height, 1, self.settings.cache_dir or None)
        self.emit({'event': 'log', 'message': f'converted the accepted model for OpenVINO in '
                                              f'{time.perf_counter() - start:.1f} s'})


def _fingerprint(models: _Models) -> float:
    """A cheap summary of the weights (the sum of every parameter): changes when they change."""
    with torch.no_grad():
        return float(sum(p.double().sum() for m in (models.encoder, models.decoder) for p in m.parameters()))


def accepted_checkpoint(event: dict[str, Any], start: DepthCheckpoint) -> DepthCheckpoint:
    """The :class:`DepthCheckpoint` of an ``accepted`` event (weights from the event, the rest from ``start``)."""
    from hr_depth_ros.core.networks import build_depth_model

    encoder, decoder = build_depth_model(start.arch)
    encoder.load_state_dict(event['encoder'])
    decoder.load_state_dict(event['decoder'])
    metadata = dict(start.metadata, online_step=event['step'])
    if event.get('metric', True):
        metadata.update(metric_scale=event['metric_scale'], depth_units='metres')
    return DepthCheckpoint(start.arch, encoder.eval(), decoder.eval(), start.height, start.width, False, metadata,
                           Path(event['checkpoint']))


def worker_main(settings: WorkerSettings, inbox: Any, outbox: Any, camera_busy: Any, stop: Any) -> None:
    """The worker process: ``inbox`` gets ('reset', K) and ('frame', rgb, pose, stamp_ns); events go to ``outbox``.

    Frames are taken in by a thread of their own (so none is lost during a long unit of work);
    the work waits while ``camera_busy.value`` is set (the node is running a frame) and ends when
    ``stop.value`` is set (exit status 0). Both are lock-free shared bytes: a lock held by a worker
    that gets killed would block the node. An exception is reported as an ``error`` event and ends the process
    with status 1.
    """
    try:
        os.nice(settings.nice)
    except OSError:
        pass
    torch.set_num_threads(1)
    try:
        adapter = Adapter(settings, outbox.put)
        failed: list[BaseException] = []
        intake = threading.Thread(target=_intake, args=(adapter, inbox, stop, failed), daemon=True)
        intake.start()
        outbox.put({'event': 'ready', 'metric': adapter.metric, 'pose_source': settings.pose_source})
        stream = torch.cuda.Stream(adapter.device) if adapter.device.type == 'cuda' else None
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            while not stop.value:
                if failed:
                    raise failed[0]
                if camera_busy.value:  # the node is running a frame: yield the CPU to it
                    time.sleep(0.005)
                elif not adapter.work():
                    time.sleep(0.1)
        intake.join(timeout=1.0)
        status = 0
    except BaseException as error:  # noqa: BLE001 - reported to the node, which keeps serving
        outbox.put({'event': 'error', 'message': f'{type(error).__name__}: {error}',
                    'traceback': traceback.format_exc(limit=8)})
        status = 1
    # Flush the events, then leave without the interpreter's teardown (seconds with torch loaded on a
    # busy CPU; nothing in it matters: checkpoints are already written atomically).
    outbox.close()
    outbox.join_thread()
    os._exit(status)


def _intake(adapter: Adapter, inbox: Any, stop: Any, failed: list[BaseException]) -> None:
    """Move frames from the node into the adapter's ring until ``stop``."""
    try:
        while not stop.value:
            try:
                item = inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if item[0] == 'reset':
                adapter.reset(item[1])
            else:
                adapter.add_frame(*item[1:])
    except BaseException as error:  # noqa: BLE001 - the main loop raises it
        failed.append(error)
