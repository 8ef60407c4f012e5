"""Online adaptation in the depth node: it keeps learning from the frames it serves, and never gets worse (ROS-free).

The node (:mod:`hr_depth_ros.ros.depth_node`, parameter ``adapt``) hands every served frame and
every ``/tf`` / ``/tf_static`` message to :class:`OnlineAdaptation`, which

- looks up the camera pose of each frame in TF (:class:`TFPoseSource`, over
  :class:`~hr_depth_ros.core.tf_poses.TransformTree`: interpolated, never extrapolated; a frame
  waits up to ``adapt_max_tf_wait`` s for the odometry to pass its stamp). When TF stops
  arriving (or never links ``adapt_odom_frame`` to the camera) adaptation pauses and says
  why: no pose is ever guessed. A camera-only robot sets ``adapt_pose_source`` ``vo``
  (:class:`TwoViewPoseSource`): the worker places the frames itself by two-view geometry and the
  depth stays in the model's units;
- drops frames that barely differ from the last one kept (``adapt_min_motion``, fine-tuning's
  thumbnail test), so a robot standing still adds nothing;
- restarts the buffer when the camera's intrinsics or size change;
- sends the rest, at network resolution, to a worker process
  (:mod:`hr_depth_ros.core.adaptation_worker`: ring buffer of ``adapt_buffer_frames`` frames,
  self-supervised steps, metric scale from TF, honest candidate-vs-serving judgement on held-out
  frames, atomic checkpoints) that runs at low priority with one thread and pauses while the
  node runs a frame;
- builds each model the worker accepts into an estimator in the background and swaps it in
  between two frames (:meth:`OnlineAdaptation.serving`); when the worker dies, the node keeps
  serving the last good model and says so.

The node's ``adapt*`` parameters are rows of its option table
(:class:`~hr_depth_ros.core.depth_options.NodeConfig`); :meth:`AdaptationConfig.from_node_config` reads them.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from hr_depth_ros.core.checkpoint import DepthCheckpoint
from hr_depth_ros.core.depth_options import ConfigError, NodeConfig
from hr_depth_ros.core.geometry import scale_intrinsics
from hr_depth_ros.core.image_decoding import resize_rgb
from hr_depth_ros.core.log_limit import LogLimiter
from hr_depth_ros.core.model_cache import default_cache_dir, remove_entry
from hr_depth_ros.core.tf_poses import DEFAULT_MAX_TF_GAP_S, TransformError, TransformTree, normalize_frame
from hr_depth_ros.core.training.frame_store import thumbnail

__all__ = ['ADAPTATION_PARAMETER_NAMES', 'AdaptationConfig', 'PoseSource', 'TFPoseSource', 'TwoViewPoseSource',
           'POSE_SOURCES', 'PoseAnswer', 'OnlineAdaptation', 'rebuild_estimator', 'serving_config']

INBOX_FRAMES = 16           # frames in flight to the worker; more are dropped (counted)
MAX_PENDING = 32            # frames waiting for their TF pose
TF_KEEP_S = 10.0            # TF history kept behind the newest frame


ADAPTATION_PARAMETER_NAMES = tuple(f.name for f in fields(NodeConfig) if f.name.startswith('adapt'))


@dataclass(frozen=True)
class AdaptationConfig:
    """The ``adapt*`` parameter values (field = parameter name without ``adapt_``; ``enabled`` = ``adapt``)."""

    enabled: bool
    output: str
    resume: bool
    pose_source: str
    odom_frame: str
    camera_frame: str
    max_tf_wait: float
    buffer_frames: int
    min_motion: float
    max_gap: float
    batch_size: int
    lr: float
    loss_scales: int
    steps_per_round: int
    margin: float
    anchor_weight: float
    device: str
    nice: int

    @classmethod
    def from_node_config(cls, config: NodeConfig) -> AdaptationConfig:
        """The ``adapt*`` values of the node's (validated) config."""
        values = {name: getattr(config, name) for name in ADAPTATION_PARAMETER_NAMES}
        result = cls(**{('enabled' if name == 'adapt' else name[len('adapt_'):]): value
                        for name, value in values.items()})
        if result.pose_source not in POSE_SOURCES:
            raise ConfigError(f'adapt_pose_source {result.pose_source!r}: available {sorted(POSE_SOURCES)}')
        return result

    def output_folder(self, weights: str) -> Path:
        """Where accepted models go."""
        if self.output:
            return Path(self.output).expanduser()
        return default_cache_dir() / 'adapted' / (Path(weights).expanduser().resolve().name or 'model')

    def start_folder(self, weights: str) -> tuple[str, bool]:
        """(checkpoint folder the serving model starts from, whether it is a previous run's accepted model)."""
        latest = self.output_folder(weights) / 'latest'
        if self.resume and (latest / 'hr_depth_ros.json').is_file():
            return str(latest), True
        return weights, False


def serving_config(config: NodeConfig, adaptation: AdaptationConfig) -> tuple[NodeConfig, list[str]]:
    """The node's config as adaptation serves it, and notes: the start weights (resumed or not) and
    ``threads`` 0 -> the cores less one (the worker's)."""
    if not adaptation.enabled:
        return config, []
    notes = []
    start, resumed = adaptation.start_folder(config.weights)
    if resumed:
        notes.append(f'adapt: resuming from the last accepted model {start} (adapt_resume; {config.weights} '
                     'stays the anchor)')
    threads = config.threads
    if threads == 0:  # one core for the worker: torch slows down many times when its threads outnumber free cores
        from hr_depth_ros.core.backends import default_threads

        threads = max(1, default_threads() - 1)
        notes.append(f'adapt: inference on {threads} CPU thread(s), leaving a core to the adaptation worker '
                     '(threads sets it)')
    return replace(config, weights=start, threads=threads), notes


def rebuild_estimator(config: NodeConfig, checkpoint: DepthCheckpoint) -> Any:
    """The serving estimator (as ``config``, from :func:`serving_config`, describes it) for ``checkpoint``."""
    from hr_depth_ros.core.inference import DepthEstimator

    return DepthEstimator.from_config(config, checkpoint)


# ---------------------------------------------------------------------------------------------
# Pose sources

@dataclass(frozen=True)
class PoseAnswer:
    """A camera pose (4 x 4, camera -> odometry frame), or why there is none: ``wait`` (may come) or ``never``."""

    pose: np.ndarray | None
    status: str     # 'ok', 'wait', 'never'
    reason: str = ''


class PoseSource(Protocol):
    """Where camera poses come from; ``adapt_pose_source`` picks one of :data:`POSE_SOURCES`.

    A camera-only source (e.g. geometric visual odometry) implements ``on_frame`` to see the
    images; TF's implements ``on_tf``. Poses must be metric for the depth to become metric.
    """

    def on_tf(self, msg: Any, static: bool, now: float) -> None: ...

    def on_frame(self, rgb: np.ndarray, K: np.ndarray, stamp_ns: int) -> None: ...

    def pose(self, frame_id: str, stamp_ns: int) -> PoseAnswer: ...

    def silent_for(self, now: float) -> float: ...


class TFPoseSource:
    """Camera poses from ``/tf`` + ``/tf_static`` (``T_odom_camera`` at the frame's stamp, interpolated)."""

    name = 'tf'

    def __init__(self, config: AdaptationConfig) -> None:
        self.odom = normalize_frame(config.odom_frame)
        self.camera = normalize_frame(config.camera_frame)
        self.tree = TransformTree(max_gap_s=DEFAULT_MAX_TF_GAP_S)
        self.last_dynamic_at: float | None = None   # clock time of the last /tf message
        self.newest_ns = -1                        # newest dynamic stamp received
        self.bad_messages = 0

    def on_tf(self, msg: Any, static: bool, now: float) -> None:
        try:
            self.tree.add_message(msg, static=static)
        except TransformError:
            self.bad_messages += 1
            raise
        if not static:
            self.last_dynamic_at = now
            for tf in msg.transforms:
                stamp = tf.header.stamp
                self.newest_ns = max(self.newest_ns, int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec))

    def on_frame(self, rgb: np.ndarray, K: np.ndarray, stamp_ns: int) -> None:
        self.tree.forget_before(stamp_ns - int(TF_KEEP_S * 1e9))

    def silent_for(self, now: float) -> float:
        return math.inf if self.last_dynamic_at is None else now - self.last_dynamic_at

    def pose(self, frame_id: str, stamp_ns: int) -> PoseAnswer:
        camera = self.camera or normalize_frame(frame_id)
        if not camera:
            return PoseAnswer(None, 'never', 'the image has no header.frame_id: set adapt_camera_frame')
        try:
            found = self.tree.lookup(self.odom, camera, [stamp_ns])
        except TransformError:
            return PoseAnswer(None, 'wait', f'no TF chain from {self.odom} to {camera} (links: {self.tree.describe()})')
        if found.valid[0]:
            return PoseAnswer(found.poses[0], 'ok')
        if stamp_ns > self.newest_ns:
            return PoseAnswer(None, 'wait', 'odometry not yet past the frame')
        return PoseAnswer(None, 'never', 'no odometry around the frame (a gap in TF)')


class TwoViewPoseSource:
    """No TF (a camera-only robot): every frame goes to the worker without a pose, and the worker places it after
    the previous one by two-view geometry (:mod:`hr_depth_ros.core.adaptation_worker`). Never silent, never metric
    by itself (the depth stays in the start model's units)."""

    name = 'vo'

    def __init__(self, config: AdaptationConfig) -> None:
        self.config = config

    def on_tf(self, msg: Any, static: bool, now: float) -> None:
        return None

    def on_frame(self, rgb: np.ndarray, K: np.ndarray, stamp_ns: int) -> None:
        return None

    def silent_for(self, now: float) -> float:
        return 0.0

    def pose(self, frame_id: str, stamp_ns: int) -> PoseAnswer:
        return PoseAnswer(None, 'ok', 'placed by two-view geometry in the worker')


POSE_SOURCES: dict[str, Callable[[AdaptationConfig], PoseSource]] = {'tf': TFPoseSource, 'vo': TwoViewPoseSource}


# ---------------------------------------------------------------------------------------------
# The node side

Log = Callable[[str, str], None]    # log(level, text): level 'info' | 'warning' | 'error'


class OnlineAdaptation:
    """The node's side of online adaptation (see the module docstring); thread-safe.

    ``start_checkpoint``: the loaded checkpoint the node serves first (its folder is the worker's
    start); ``anchor``: the node's ``weights``; ``build_estimator(checkpoint)``: an estimator like
    the serving one (:func:`rebuild_estimator`); ``device``: the node's torch device type.
    """

    def __init__(self, config: AdaptationConfig, start_checkpoint: DepthCheckpoint, anchor: str,
                 build_estimator: Callable[[DepthCheckpoint], Any], log: Log, device: str = 'cpu',
                 cache_dir: str = '', prepare: str = '', min_depth: float = 0.1, max_depth: float = 100.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from hr_depth_ros.core.adaptation_worker import WorkerSettings

        self.config = config
        self.start_checkpoint = start_checkpoint
        self.build_estimator = build_estimator
        self.log = log
        self.clock = clock
        self.width, self.height = start_checkpoint.width, start_checkpoint.height
        self.output = config.output_folder(anchor)
        self.settings = WorkerSettings(
            start=str(start_checkpoint.path), anchor=anchor, output=str(self.output), pose_source=config.pose_source,
            buffer_frames=config.buffer_frames, batch_size=config.batch_size, lr=config.lr,
            loss_scales=config.loss_scales, steps_per_round=config.steps_per_round, margin=config.margin,
            anchor_weight=config.anchor_weight,
            max_gap_s=config.max_gap, min_depth=min_depth, max_depth=max_depth,
            device=device if config.device == 'auto' else config.device, nice=config.nice, prepare=prepare,
            cache_dir=cache_dir)
        self.pose_source = POSE_SOURCES[config.pose_source](config)
        self.lock = threading.Lock()
        self.pending: deque[tuple[int, str, np.ndarray]] = deque()
        self.camera: tuple[tuple[float, ...], tuple[int, int]] | None = None
        self.K_net: np.ndarray | None = None
        self.last_thumb: np.ndarray | None = None
        self.ready_estimator: Any = None
        self.process: Any = None
        self.receiver: threading.Thread | None = None
        self.state, self.reason = 'stopped', 'not started'
        self.metric_scale = start_checkpoint.metric_scale
        self.counts = dict(frames=0, kept=0, still=0, sent=0, no_pose=0, inbox_full=0, camera_changes=0,
                           steps=0, accepted=0, rejected=0, swaps=0, restarts=0)
        self.last: dict[str, Any] = {}
        self.busy: Any = None
        self.worker_ready = False
        self.adapted_entry: Path | None = None   # the model cache entry of the last accepted model
        self.log_limit = LogLimiter()

    # -- worker lifetime ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker process (its start: the last accepted model of this run, else the start checkpoint)."""
        from hr_depth_ros.core.adaptation_worker import worker_main

        if self.last.get('checkpoint'):  # a restarted worker goes on from what the node serves
            self.settings = replace(self.settings, start=self.last['checkpoint'])
        context = mp.get_context('spawn')
        self.inbox = context.Queue(maxsize=INBOX_FRAMES)
        self.outbox = context.Queue()
        self.busy = context.Value('b', 0, lock=False)
        self.stop_flag = context.Value('b', 0, lock=False)  # no lock: the worker may die holding it
        self.process = context.Process(target=worker_main, name='hr_depth_adaptation', daemon=True,
                                       args=(self.settings, self.inbox, self.outbox, self.busy, self.stop_flag))
        self.process.start()
        with self.lock:
            self.worker_ready = False
            self.camera = None          # the new worker needs the intrinsics again
            self.pending.clear()
            self.last_thumb = None
            self.state, self.reason = 'waiting', 'waiting for frames with camera poses'
        self.receiver = threading.Thread(target=self._receive, name='hr_depth_adaptation_receiver', daemon=True)
        self.receiver.start()
        self.log('info', f'adapt: worker started (pid {self.process.pid}, {self.settings.device}, one thread, '
                         f'nice +{self.settings.nice}); buffer {self.config.buffer_frames} frames, poses from '
                         f'{self.config.pose_source}, accepted models -> {self.output}/latest')

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker process and the receiver (idempotent)."""
        process, self.process = self.process, None
        if process is None:
            return
        self.stop_flag.value = 1
        process.join(timeout)
        if process.is_alive():
            self.log('warning', f'adapt: the worker did not stop within {timeout:g} s; terminating it')
            process.terminate()
            process.join(2.0)
        if self.receiver is not None:
            self.receiver.join(timeout=5.0)
            self.receiver = None
        for channel in (self.inbox, self.outbox):
            channel.cancel_join_thread()
            channel.close()
        with self.lock:
            if self.state != 'crashed':
                self.state, self.reason = 'stopped', 'worker stopped'

    @property
    def worker_alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    # -- inputs -------------------------------------------------------------------------------
    def on_tf(self, msg: Any, static: bool) -> None:
        """A ``tf2_msgs/TFMessage`` from ``/tf`` (``static`` False) or ``/tf_static``."""
        with self.lock:
            try:
                self.pose_source.on_tf(msg, static, self.clock())
            except TransformError as error:
                suppressed = self.log_limit.allow('tf')
                if suppressed is not None:
                    self.log('warning', f'adapt: ignoring a TF message: {error}'
                             + (f' ({suppressed} similar lines suppressed)' if suppressed else ''))
                return
            self._resolve()

    def on_frame(self, rgb: np.ndarray, stamp_ns: int, frame_id: str, K: np.ndarray) -> None:
        """A served frame (``H x W x 3`` uint8 RGB, header stamp and frame_id, ``K`` in pixels of ``rgb``)."""
        with self.lock:
            self.counts['frames'] += 1
            if not self.worker_alive or self.state == 'crashed':
                return
            height, width = rgb.shape[:2]
            K_net = scale_intrinsics(K, self.width / width, self.height / height)
            camera = (tuple(np.round(K_net[:2].ravel(), 3)), (width, height))
            if camera != self.camera:
                if self.camera is not None:
                    self.counts['camera_changes'] += 1
                    self.log('warning', f'adapt: the camera changed ({width}x{height}, fx {K[0, 0]:.1f}): '
                                        'restarting the frame buffer')
                self.camera, self.K_net = camera, K_net
                self.pending.clear()
                self.last_thumb = None
                self._send(('reset', K_net), count=False)
            small = np.ascontiguousarray(resize_rgb(rgb, self.width, self.height))
            self.pose_source.on_frame(small, K_net, stamp_ns)
            thumb = thumbnail(small)
            if self.last_thumb is not None and float(np.abs(thumb - self.last_thumb).mean()) < self.config.min_motion:
                self.counts['still'] += 1
                return
            self.last_thumb = thumb
            self.counts['kept'] += 1
            self.pending.append((int(stamp_ns), frame_id, small, self.clock()))
            while len(self.pending) > MAX_PENDING:
                self.pending.popleft()
                self.counts['no_pose'] += 1
            self._resolve()

    def _resolve(self) -> None:
        """Send the pending frames whose pose is known; drop those that will never get one; pause when TF is silent."""
        now = self.clock()
        silent = self.pose_source.silent_for(now)
        while self.pending:
            stamp_ns, frame_id, small, arrived = self.pending[0]
            answer = self.pose_source.pose(frame_id, stamp_ns)
            if answer.status == 'ok':
                self.pending.popleft()
                self._send(('frame', small, answer.pose, stamp_ns))
                if self.state == 'paused' or self.state == 'waiting':
                    self.state, self.reason = 'adapting', 'training on frames with camera poses'
                    self.log('info', f'adapt: camera poses from {self.config.pose_source}: adapting')
                continue
            waited = now - arrived
            if answer.status == 'never' or waited > self.config.max_tf_wait:
                self.pending.popleft()
                self.counts['no_pose'] += 1
                if answer.status == 'wait':
                    self._pause(answer.reason if silent <= self.config.max_tf_wait else
                                f'no odometry on TF for {silent:.1f} s')
                continue
            break

    def _pause(self, reason: str) -> None:
        if self.state in ('adapting', 'waiting') and (self.state, self.reason) != ('paused', reason):
            self.state, self.reason = 'paused', reason
            self.log('warning', f'adapt: paused: {reason} (no pose is guessed; it resumes when poses arrive)')

    def _send(self, item: tuple, count: bool = True) -> None:
        try:
            self.inbox.put_nowait(item)
        except queue.Full:
            if item[0] == 'reset':
                self.inbox.put(item, timeout=1.0)
            else:
                self.counts['inbox_full'] += 1
            return
        if count:
            self.counts['sent'] += 1

    # -- serving --------------------------------------------------------------------------------
    def set_busy(self, busy: bool) -> None:
        """The node is (not) running a frame: the worker waits while it is."""
        if self.busy is not None:
            self.busy.value = 1 if busy else 0

    def serving(self, current: Any) -> Any:
        """The estimator to run the next frame with: ``current``, or the newest accepted one (the swap)."""
        with self.lock:
            ready, self.ready_estimator = self.ready_estimator, None
            if ready is None:
                return current
            self.counts['swaps'] += 1
        return ready

    # -- worker events ------------------------------------------------------------------------
    def _receive(self) -> None:
        try:  # this thread builds estimators: keep it behind the inference thread (Linux: per-thread nice)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        process = self.process
        while process is not None:
            try:
                event = self.outbox.get(timeout=0.25)
            except (queue.Empty, EOFError, OSError, ValueError):
                event = None
            if event is not None:
                try:
                    self._handle(event)
                except Exception as error:  # noqa: BLE001 - a bad model must not stop the receiver
                    self.log('error', f'adapt: could not use the accepted model: {type(error).__name__}: {error}')
                continue
            if self.stop_flag.value:
                return
            if not process.is_alive():
                try:  # its last words (an error event) may still be in the pipe
                    last = self.outbox.get(timeout=1.0)
                except (queue.Empty, EOFError, OSError, ValueError):
                    last = None
                if last is not None:
                    self._handle(last)
                self._crashed(f'the worker process ended with exit code {process.exitcode}')
                return

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event['event']
        if kind == 'ready':
            with self.lock:
                self.worker_ready = True
            if event['metric']:
                detail = ''
            elif event.get('pose_source') == 'vo':
                detail = ('; camera-only poses (two-view geometry): the depth stays in the start model\'s units, '
                          'not metres')
            else:
                detail = '; the metric scale comes from the first frames with camera poses'
            self.log('info', 'adapt: worker ready' + detail)
        elif kind == 'step':
            with self.lock:
                self.counts['steps'] = event['step']
                self.last.update(loss=round(event['loss'], 5), buffer=event['buffer'], triplets=event['triplets'])
        elif kind == 'metric':
            self.log('info', f"adapt: metric scale {event['metric_scale']:.4g} from the photometric search under TF "
                             f"poses on {event['triplets']} triplets (sharpness {100 * event['sharpness']:.0f} %): "
                             'publishing metres from the next frame on')
        elif kind == 'accepted':
            self._accepted(event)
        elif kind == 'rejected':
            with self.lock:
                self.counts['rejected'] += 1
                self.counts['restarts'] += int(event['restarted'])
                self.last.update(candidate=round(event['candidate'], 6), serving=round(event['serving'], 6),
                                 held_out=event['held_out'], judged_at_step=event['step'])
            self.log('info', f"adapt: candidate rejected at step {event['step']}: {event['candidate']:.5f} vs serving "
                             f"{event['serving']:.5f} on {event['held_out']} held-out triplets"
                             + ('; restarting it from the serving model' if event['restarted'] else ''))
        elif kind == 'error':
            self._crashed(f"{event['message']}")
            self.log('error', f"adapt: worker traceback:\n{event.get('traceback', '')}")
        elif kind == 'log':
            self.log('info', f"adapt: {event['message']}")

    def _accepted(self, event: dict[str, Any]) -> None:
        from hr_depth_ros.core.adaptation_worker import accepted_checkpoint

        checkpoint = accepted_checkpoint(event, self.start_checkpoint)
        estimator = self.build_estimator(checkpoint)
        first_metric = self.metric_scale is None
        entry = getattr(getattr(estimator, 'runner', None), 'cache_entry', None)
        if entry is not None:  # OpenVINO: the worker converted it; the previous adapted one is not needed again
            if self.adapted_entry is not None and self.adapted_entry != entry:
                remove_entry(self.adapted_entry)  # its weights are in memory (ENABLE_MMAP off)
            self.adapted_entry = entry
        with self.lock:
            self.ready_estimator = estimator
            self.metric_scale = event['metric_scale'] if event.get('metric', True) else None
            self.counts['accepted'] += 1
            self.last.update(accepted_at_step=event['step'], checkpoint=event['checkpoint'])
            if event['serving'] is not None:
                self.last.update(candidate=round(event['candidate'], 6), serving=round(event['serving'], 6),
                                 judged_at_step=event['step'])
        if event['serving'] is None:
            self.log('info', f"adapt: serving the start model in metres (metric scale {event['metric_scale']:.4g}); "
                             f"written to {event['checkpoint']}")
        else:
            self.log('info', f"adapt: swapped in the model of step {event['step']}: {event['candidate']:.5f} vs "
                             f"serving {event['serving']:.5f} on held-out frames "
                             f"({100 * (1 - event['candidate'] / event['serving']):.1f} % better); "
                             f"written to {event['checkpoint']}"
                             + ('; publishing metres' if first_metric and self.metric_scale is not None else ''))

    def _crashed(self, reason: str) -> None:
        with self.lock:
            if self.state == 'crashed':
                return
            self.state, self.reason = 'crashed', reason
            self.pending.clear()
            accepted = self.counts['accepted']
        self.log('error', f'adapt: the worker crashed ({reason}); the node keeps serving the last good model '
                          f'({"accepted model " + str(accepted) if accepted else "the start model"}); adaptation '
                          'is off until the node is deactivated and activated again')

    # -- reporting ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What ``~/adaptation`` reports (JSON-ready)."""
        with self.lock:
            return {
                'state': self.state, 'reason': self.reason, 'pose_source': self.config.pose_source,
                'worker_pid': self.process.pid if self.process is not None else None,
                'worker_alive': self.worker_alive, 'worker_ready': self.worker_ready,
                'depth_units': 'metres' if self.metric_scale is not None else 'relative',
                'metric_scale': self.metric_scale, 'buffer_frames': self.config.buffer_frames,
                'pending_frames': len(self.pending), 'tf_silent_s': _finite_or_none(
                    self.pose_source.silent_for(self.clock())),
                **self.counts, **self.last,
            }


def _finite_or_none(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None

