"""Online adaptation in the depth node (issue 23): frame ring, poses and pauses, honest swaps, worker, lifecycle."""
from __future__ import annotations

import dataclasses
import math
import os
import queue
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hr_depth_ros.core.adaptation import AdaptationConfig, OnlineAdaptation, serving_config
from hr_depth_ros.core.adaptation_worker import (HOLDOUT_BLOCK, HOLDOUT_PERIOD, HOLDOUT_PHASE, Adapter, FrameRing,
                                                 WorkerSettings)
from hr_depth_ros.core.checkpoint import load_depth_checkpoint
from hr_depth_ros.core.depth_options import ConfigError, NodeConfig
from hr_depth_ros.core.evaluation import evaluate_depth
from hr_depth_ros.core.geometry import disp_to_depth
from hr_depth_ros.core.synthetic import SyntheticDrive

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / 'models' / 'lite_hr_depth_synthetic'
CAMERA = 'camera_optical_frame'


def adapt_config(values: dict) -> AdaptationConfig:
    """The adapt* values of a node config with ``values`` set."""
    return AdaptationConfig.from_node_config(NodeConfig.from_values({'weights': str(SHIPPED), **values}))


def tf_message(parent: str, child: str, stamp_ns: int, T: np.ndarray) -> SimpleNamespace:
    """A duck-typed tf2_msgs/TFMessage holding ``T_parent_child``."""
    from hr_depth_ros.core.geometry import quaternion_from_matrix

    qx, qy, qz, qw = quaternion_from_matrix(T)
    stamp = SimpleNamespace(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))
    transform = SimpleNamespace(translation=SimpleNamespace(x=T[0, 3], y=T[1, 3], z=T[2, 3]),
                                rotation=SimpleNamespace(x=qx, y=qy, z=qz, w=qw))
    return SimpleNamespace(transforms=[SimpleNamespace(header=SimpleNamespace(stamp=stamp, frame_id=parent),
                                                       child_frame_id=child, transform=transform)])


@pytest.fixture(scope='module')
def ros_domain() -> int:
    return int(os.environ['ROS_DOMAIN_ID'])


@pytest.fixture(scope='module')
def drive() -> SyntheticDrive:
    return SyntheticDrive(width=320, height=96, fps=10.0, seed=3, num_frames=45)  # frames 40-44: held out


@pytest.fixture(scope='module')
def frames(drive):
    return [drive.frame(i) for i in range(len(drive))]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class AliveProcess:
    pid = 0

    @staticmethod
    def is_alive() -> bool:
        return True


def node_side(tmp_path: Path, clock: Clock, **parameters) -> tuple[OnlineAdaptation, list[tuple[str, str]]]:
    """OnlineAdaptation without a worker process: what it sends lands in ``.inbox`` (a queue)."""
    logs: list[tuple[str, str]] = []
    config = adapt_config({'adapt': True, 'adapt_output': str(tmp_path / 'adapted'), **parameters})
    manager = OnlineAdaptation(config, load_depth_checkpoint(SHIPPED), str(SHIPPED), lambda c: c,
                               lambda level, text: logs.append((level, text)), clock=clock)
    manager.inbox, manager.process, manager.state = queue.Queue(maxsize=64), AliveProcess(), 'waiting'
    return manager, logs


def sent(manager: OnlineAdaptation) -> list[tuple]:
    items = []
    while not manager.inbox.empty():
        items.append(manager.inbox.get_nowait())
    return items


# --- the frame ring --------------------------------------------------------------------------------

def test_frame_ring_is_bounded_holds_out_blocks_and_splits_at_gaps():
    K = np.array([[10.0, 0, 4], [0, 10.0, 2], [0, 0, 1]])
    ring = FrameRing(40, 8, 4, K)
    size = ring.nbytes
    period = 100_000_000
    for n in range(120):
        stamp = n * period + (5 * 10 ** 9 if n >= 110 else 0)  # a 5 s silence before frame 110
        pose = np.full((4, 4), np.nan) if n == 100 else np.eye(4)
        ring.add(np.full((4, 8, 3), n % 256, np.uint8), pose, stamp)
    assert len(ring) == 40 and ring.nbytes == size  # memory is the capacity, whatever was added
    train, held = ring.triplets(max_gap_ns=2 * period)
    arrivals = {tuple(int(ring.arrival[s]) for s in t) for t in train + held}
    assert all(a >= 80 for t in arrivals for a in t)  # only what the ring still holds
    assert not any(100 in t for t in arrivals)         # a frame without a pose is in no triplet
    assert not any(t[0] < 110 <= t[2] for t in arrivals)  # none across the silence
    for t in held:
        assert all(FrameRing.held_out(int(ring.arrival[s])) for s in t)
    train_frames = {s for t in train for s in t}
    assert train and held and not train_frames & {s for t in held for s in t}  # judged frames are never trained on
    assert all((int(ring.arrival[s]) // HOLDOUT_BLOCK) % HOLDOUT_PERIOD != HOLDOUT_PHASE for s in train_frames)
    ring.reset(K * 2)
    assert len(ring) == 0 and ring.triplets(2 * period) == ([], [])
    for n in range(3):
        ring.add(np.zeros((4, 8, 3), np.uint8), np.eye(4), (200 + n) * period)
    assert len(ring) == 3 and np.allclose(ring.K[0], K * 2)


def test_a_revisited_place_keeps_its_split_so_the_judge_never_sees_trained_pixels_again():
    """A loop driven (or a recording replayed) again: each frame takes the split of the older frame at its
    place and view; a new path, or the same place seen in another direction, splits by arrival."""
    K = np.array([[10.0, 0, 4], [0, 10.0, 2], [0, 0, 1]])
    ring = FrameRing(200, 8, 4, K)
    period, loop = 100_000_000, 37  # 37 frames a pass: shifts against the 50-arrival hold-out cycle

    def pose(i: int, yaw_degrees: float = 0.0) -> np.ndarray:
        T = np.eye(4)
        T[:3, 3] = (0.01 * i, 0.0, 0.002 * i)
        c, s = math.cos(math.radians(yaw_degrees)), math.sin(math.radians(yaw_degrees))
        T[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
        return T

    stamp = 0
    for number in range(4 * loop):
        stamp += period + (2 * 10 ** 9 if number % loop == 0 else 0)  # a pause between passes
        ring.add(np.full((4, 8, 3), number % 256, np.uint8), pose(number % loop), stamp)
    first = {i: bool(ring.held[i]) for i in range(loop)}   # slots 0..36: pass 1, split by arrival
    assert [first[i] for i in range(loop)] == [FrameRing.held_out(i) for i in range(loop)]
    for number in range(loop, 4 * loop):  # passes 2-4
        assert bool(ring.held[number]) == first[number % loop], number
    assert ring.revisits == 3 * loop
    train, held = ring.triplets(max_gap_ns=2 * period)
    assert train and held
    trained_places = {tuple(ring.poses[s][:3, 3].round(6)) for t in train for s in t}
    judged_places = {tuple(ring.poses[s][:3, 3].round(6)) for t in held for s in t}
    assert not trained_places & judged_places  # no held-out frame shows a place trained on

    revisits = ring.revisits  # the same places seen turned by 30 degrees: new views, split by arrival
    for number in range(4 * loop, 5 * loop):
        stamp += period
        ring.add(np.zeros((4, 8, 3), np.uint8), pose(number % loop, 30.0), stamp)
        assert bool(ring.held[number % 200]) == FrameRing.held_out(number)
    assert ring.revisits == revisits


def test_tf_history_is_bounded_without_losing_the_stamps_still_needed():
    from hr_depth_ros.core.tf_poses import TransformTree

    tree = TransformTree(max_gap_s=0.5)
    for k in range(101):  # 10 s of odometry at 10 Hz
        T = np.eye(4)
        T[0, 3] = 0.1 * k
        tree.add_message(tf_message('odom', 'base', k * 100_000_000, T))
    assert tree.forget_before(5_050_000_000) == 50  # keeps 5.0 s (the sample before) and later
    assert tree.forget_before(5_050_000_000) == 0
    found = tree.lookup('odom', 'base', [5_050_000_000, 4_000_000_000])
    assert found.valid.tolist() == [True, False]
    assert found.poses[0][0, 3] == pytest.approx(5.05)


# --- parameters ------------------------------------------------------------------------------------

def test_adaptation_parameters_and_what_the_node_serves(tmp_path):
    assert adapt_config({}).enabled is False
    for bad in ({'adapt_buffer_frames': 2}, {'adapt_device': 'tpu'}, {'adapt_pose_source': 'sonar'},
                {'adapt_lr': 'fast'}, {'adapt_typo': 1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            adapt_config(bad)
    node = NodeConfig.from_values({'weights': str(SHIPPED)})
    off = adapt_config({'adapt_output': str(tmp_path)})
    assert serving_config(node, off) == (node, [])  # adapt off: the node is untouched
    on = adapt_config({'adapt': True, 'adapt_output': str(tmp_path)})
    served, notes = serving_config(node, on)
    assert served.backend == node.backend and served.weights == str(SHIPPED) and notes
    from hr_depth_ros.core.backends import default_threads
    assert served.threads == max(1, default_threads() - 1)  # a core left to the worker
    assert serving_config(NodeConfig.from_values({'weights': str(SHIPPED), 'threads': 3}), on)[0].threads == 3
    latest = tmp_path / 'latest'
    latest.mkdir()
    (latest / 'hr_depth_ros.json').write_text('{}')
    assert serving_config(node, on)[0].weights == str(latest)  # the next start resumes
    no_resume = adapt_config({'adapt': True, 'adapt_output': str(tmp_path), 'adapt_resume': False})
    assert serving_config(node, no_resume)[0].weights == str(SHIPPED)
    assert on.output_folder(str(SHIPPED)) == tmp_path


# --- poses from TF, pauses, motion, camera changes --------------------------------------------------

def test_tf_poses_and_a_pause_when_tf_stops(tmp_path, drive, frames):
    from hr_depth_ros.tools.make_synthetic_bag import BASE_FROM_CAMERA_LINK, CAMERA_LINK_FROM_OPTICAL

    clock = Clock()
    manager, logs = node_side(tmp_path, clock, adapt_max_tf_wait=0.5)
    mount = BASE_FROM_CAMERA_LINK @ CAMERA_LINK_FROM_OPTICAL
    manager.on_tf(tf_message('base_link', CAMERA, 0, mount), static=True)

    def odometry(stamp_ns: int) -> None:
        world_from_camera = drive.pose_at((stamp_ns - drive.start_ns) / 1e9)
        manager.on_tf(tf_message('odom', 'base_link', stamp_ns, world_from_camera @ np.linalg.inv(mount)), False)

    for i in range(10):  # odometry a little after each frame, as on a robot
        clock.now += 0.1
        manager.on_frame(frames[i].rgb, frames[i].stamp_ns, CAMERA, drive.K)
        odometry(frames[i].stamp_ns + 30_000_000)
    items = sent(manager)
    assert items[0][0] == 'reset' and [item[0] for item in items[1:]] == ['frame'] * 9  # the first has no odometry before it
    for item in items[1:]:
        index = next(i for i, f in enumerate(frames) if f.stamp_ns == item[3])
        np.testing.assert_allclose(item[2], frames[index].pose_world_from_camera, atol=1e-3)  # interpolated exactly
    assert manager.status()['state'] == 'adapting'
    for i in range(10, 16):  # TF stops: nothing is sent, no pose is guessed
        clock.now += 0.4
        manager.on_frame(frames[i].rgb, frames[i].stamp_ns, CAMERA, drive.K)
    status = manager.status()
    assert sent(manager) == [] and status['state'] == 'paused' and status['no_pose'] >= 4
    assert 'TF' in status['reason'] or 'odometry' in status['reason']
    assert any(level == 'warning' and 'paused' in text for level, text in logs)
    for i in range(16, 20):  # TF is back
        clock.now += 0.1
        manager.on_frame(frames[i].rgb, frames[i].stamp_ns, CAMERA, drive.K)
        odometry(frames[i].stamp_ns + 30_000_000)
    # The first frame back lies inside the odometry's silence (no interpolation across a TF gap): dropped.
    assert [item[0] for item in sent(manager)] == ['frame'] * 3 and manager.status()['state'] == 'adapting'


def test_standing_still_adds_nothing_and_a_new_camera_restarts_the_buffer(tmp_path, drive, frames):
    clock = Clock()
    manager, logs = node_side(tmp_path, clock)
    for _ in range(5):
        manager.on_frame(frames[0].rgb, frames[0].stamp_ns, CAMERA, drive.K)
    status = manager.status()
    assert status['kept'] == 1 and status['still'] == 4
    assert [item[0] for item in sent(manager)] == ['reset']
    wider = drive.K.copy()
    wider[0, 0] *= 0.8
    manager.on_frame(frames[1].rgb, frames[1].stamp_ns, CAMERA, wider)
    items = sent(manager)
    assert [item[0] for item in items] == ['reset'] and items[0][1][0, 0] == pytest.approx(wider[0, 0])
    assert manager.status()['camera_changes'] == 1 and manager.status()['pending_frames'] == 1
    assert any(level == 'warning' and 'camera' in text for level, text in logs)


# --- the worker's judgement -------------------------------------------------------------------------

def test_training_parameters_reach_the_worker(tmp_path):
    manager, _ = node_side(tmp_path, Clock(), adapt_lr=2e-4, adapt_loss_scales=2, adapt_batch_size=3)
    settings = manager.settings
    assert (settings.lr, settings.loss_scales, settings.batch_size) == (2e-4, 2, 3)
    adapter = Adapter(settings, lambda event: None)
    config = adapter.trainer.config
    assert (config.lr, config.loss_scales, config.batch_size) == (2e-4, 2, 3)
    assert adapter.optimizer.param_groups[0]['lr'] == 2e-4
    assert NodeConfig().adapt_lr == 0.0  # by pose source
    for pose_source, lr in (('tf', 3e-4), ('vo', 1e-4)):
        adapter = Adapter(WorkerSettings(start=str(SHIPPED), anchor=str(SHIPPED), output=str(tmp_path / 'out'),
                                         pose_source=pose_source), lambda event: None)
        assert adapter.trainer.config.loss_scales == NodeConfig().adapt_loss_scales == 1
        assert adapter.trainer.config.lr == adapter.optimizer.param_groups[0]['lr'] == lr


def test_metric_scale_from_tf_and_only_better_models_are_swapped_in(tmp_path, drive, frames):
    torch.manual_seed(0)
    events = []
    adapter = Adapter(WorkerSettings(start=str(SHIPPED), anchor=str(SHIPPED), output=str(tmp_path / 'out'),
                                     steps_per_round=1000, batch_size=2, scale_triplets=2), events.append)
    adapter.reset(drive.K)
    for frame in frames:
        adapter.add_frame(frame.rgb, frame.pose_world_from_camera, frame.stamp_ns)
    assert not adapter.metric and adapter.work()  # first unit: the scale search
    metric = next(e for e in events if e['event'] == 'metric')
    with torch.no_grad():
        image = torch.from_numpy(frames[20].rgb).permute(2, 0, 1)[None].float() / 255
        disp = adapter.serving.decoder(adapter.serving.encoder(image))[('disp', 0)][0, 0].numpy()
    depth = disp_to_depth(disp, 0.1, 100.0)[1] * metric['metric_scale']
    ratio = evaluate_depth(frames[20].depth, depth, min_depth=1e-3, max_depth=80.0)['scale_ratio']
    assert 0.8 < ratio < 1.25  # metres from the odometry alone (the start model is ~55x too small)
    first = next(e for e in events if e['event'] == 'accepted')
    assert first['serving'] is None and load_depth_checkpoint(first['checkpoint']).metric_scale == metric['metric_scale']

    before = {k: v.clone() for k, v in adapter.serving.decoder.state_dict().items()}
    assert adapter.work() and adapter.steps == 1  # a training step moves the candidate (and its average) only
    assert all(torch.equal(v, adapter.serving.decoder.state_dict()[k]) for k, v in before.items())
    trained, judged = ({k: v.detach() for k, v in m.decoder.named_parameters()}
                       for m in (adapter.candidate, adapter.averaged))
    moved = [k for k, v in trained.items() if not torch.equal(v, before[k])]
    assert moved
    for name in moved:  # the judged weights: between the old and the trained ones (a short memory after a start)
        step, pulled = trained[name] - before[name], judged[name] - before[name]
        assert torch.allclose(pulled, step * 0.9, atol=1e-6 + 1e-5 * float(step.abs().max()))

    _, held = adapter.ring.triplets(int(1e9))
    held = held[:2]
    with torch.no_grad():  # a candidate made worse is rejected; the serving model does not change
        for p in adapter.averaged.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    adapter._judge(held)
    rejected = events[-1]
    assert rejected['event'] == 'rejected' and rejected['candidate'] > rejected['serving']
    assert all(torch.equal(v, adapter.serving.decoder.state_dict()[k]) for k, v in before.items())

    adapter._restart_candidate()  # candidate = the start model; the serving one made worse: swapped
    assert all(torch.equal(v, adapter.averaged.decoder.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        for p in adapter.serving.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    adapter._judge(held)
    accepted = events[-1]
    assert accepted['event'] == 'accepted' and accepted['candidate'] < accepted['serving']
    assert all(torch.equal(v, accepted['decoder'][k]) for k, v in before.items())
    saved = load_depth_checkpoint(accepted['checkpoint'])
    assert saved.metric_scale == metric['metric_scale'] and saved.metadata['online']['score'] == accepted['candidate']


def test_a_near_miss_keeps_training_and_a_candidate_no_better_restarts(tmp_path, drive, frames, monkeypatch):
    """Rejected by less than the margin: the candidate keeps its progress; no better at all four times in a row:
    it restarts from the serving model."""
    adapter = Adapter(WorkerSettings(start=str(SHIPPED), anchor=str(SHIPPED), output=str(tmp_path / 'out'),
                                     margin=0.01, scale_triplets=2, batch_size=2), lambda event: None)
    adapter.reset(drive.K)
    for frame in frames[:24]:
        adapter.add_frame(frame.rgb, frame.pose_world_from_camera, frame.stamp_ns)
    _, held = adapter.ring.triplets(int(1e9))
    scores = {'candidate': 0.995}
    monkeypatch.setattr(adapter, 'score', lambda models, _: 1.0 if models is adapter.serving else scores['candidate'])
    restarts = []
    monkeypatch.setattr(adapter, '_restart_candidate', lambda: restarts.append(adapter.steps))
    for _ in range(6):  # 0.5 % better: rejected (margin 1 %), never restarted
        adapter._judge(held[:2])
    assert adapter.rejected == 6 and not restarts and adapter.accepted == 0
    scores['candidate'] = 1.002
    for _ in range(3):
        adapter._judge(held[:2])
    assert not restarts
    adapter._judge(held[:2])  # the fourth in a row no better at all
    assert len(restarts) == 1


def test_without_tf_the_worker_places_frames_by_two_view_geometry_and_trains(tmp_path, drive, frames):
    """adapt_pose_source vo: frames come without a pose; the worker chains two-view motions (directions as
    the drive's, lengths in the start model's units), keeps depth relative, trains and judges on them."""
    clock = Clock()
    manager, logs = node_side(tmp_path, clock, adapt_pose_source='vo')
    for frame in frames[:4]:  # no TF at all: every frame is sent, nothing pauses
        clock.now += 0.1
        manager.on_frame(frame.rgb, frame.stamp_ns, CAMERA, drive.K)
    items = sent(manager)
    assert [item[0] for item in items] == ['reset'] + ['frame'] * 4 and all(item[2] is None for item in items[1:])
    assert manager.status()['state'] == 'adapting' and manager.status()['pose_source'] == 'vo'
    manager._handle({'event': 'ready', 'metric': False, 'pose_source': 'vo'})
    assert 'not metres' in logs[-1][1] and manager.status()['depth_units'] == 'relative'

    events: list[dict] = []
    adapter = Adapter(WorkerSettings(start=str(SHIPPED), anchor=str(SHIPPED), output=str(tmp_path / 'out'),
                                     pose_source='vo', steps_per_round=1000, batch_size=2), events.append)
    adapter.reset(drive.K)
    for frame in frames:
        adapter.add_frame(frame.rgb, None, frame.stamp_ns)
    while adapter.ring.next_unplaced() is not None:
        assert adapter.work()
    assert adapter.placed >= 0.8 * (len(frames) - 1) and not adapter.metric
    ring = adapter.ring
    ratios = []
    for i in range(1, len(frames)):
        if ring.chain[i] != ring.chain[i - 1]:
            continue
        estimated = np.linalg.inv(ring.poses[i - 1]) @ ring.poses[i]
        true = np.linalg.inv(frames[i - 1].pose_world_from_camera) @ frames[i].pose_world_from_camera
        cosine = estimated[:3, 3] @ true[:3, 3] / (np.linalg.norm(estimated[:3, 3]) * np.linalg.norm(true[:3, 3]))
        assert cosine > np.cos(np.radians(10)), i  # the direction of the motion
        ratios.append(np.linalg.norm(estimated[:3, 3]) / np.linalg.norm(true[:3, 3]))
    ratios = np.array(ratios)  # lengths in the start model's units: one factor for the whole drive
    assert len(ratios) >= 30 and np.std(np.log(ratios)) < 0.25, ratios

    train, held = ring.triplets(int(1e9))
    assert train and held and all(ring.chain[a] == ring.chain[b] == ring.chain[c] for a, b, c in train + held)
    assert adapter.work() and adapter.steps == 1  # a training step on the two-view poses
    adapter.settings = dataclasses.replace(adapter.settings, margin=-1.0)  # accept whatever it scores
    adapter._judge(held[:2])
    accepted = events[-1]
    assert accepted['event'] == 'accepted' and accepted['metric'] is False
    saved = load_depth_checkpoint(accepted['checkpoint'])
    assert saved.metric_scale is None and saved.metadata['pose_source'] == 'vo'
    assert not any(e['event'] == 'metric' for e in events)  # no scale search without metric poses


def test_a_refused_pair_starts_a_new_chain_and_no_triplet_spans_two():
    K = np.array([[10.0, 0, 4], [0, 10.0, 2], [0, 0, 1]])
    ring = FrameRing(20, 8, 4, K)
    for n in range(9):
        ring.add(np.zeros((4, 8, 3), np.uint8), None, n * 100_000_000)
    step = np.eye(4)
    step[0, 3] = 1.0
    for n in range(9):
        slot, before = ring.next_unplaced()
        assert slot == n and before == (None if n == 0 else n - 1)
        refused = n in (0, 4)  # the first frame and a pair the geometry refused start chains
        ring.place(slot, None if refused else ring.poses[before] @ step, before)
    assert ring.next_unplaced() is None and list(ring.chain[:9]) == [1, 1, 1, 1, 2, 2, 2, 2, 2]
    train, held = ring.triplets(int(1e9))
    assert {tuple(t) for t in train + held} == {(0, 1, 2), (1, 2, 3), (4, 5, 6), (5, 6, 7), (6, 7, 8)}


# --- the worker process -----------------------------------------------------------------------------

def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f'timed out after {timeout:.0f} s waiting for {what}')


def test_a_worker_crash_keeps_the_last_good_model(tmp_path):
    logs: list[tuple[str, str]] = []
    config = adapt_config({'adapt': True, 'adapt_output': str(tmp_path)})
    manager = OnlineAdaptation(config, load_depth_checkpoint(SHIPPED), str(SHIPPED), lambda c: c,
                               lambda level, text: logs.append((level, text)))
    manager.start()
    wait_for(lambda: manager.status()['worker_ready'], 120, 'the worker to start')
    serving = object()
    os.kill(manager.process.pid, signal.SIGKILL)  # e.g. the kernel's OOM killer
    wait_for(lambda: manager.status()['state'] == 'crashed', 30, 'the crash to be noticed')
    assert manager.serving(serving) is serving  # the last good model keeps serving
    assert any(level == 'error' and 'crashed' in text for level, text in logs)
    manager.on_frame(np.zeros((96, 320, 3), np.uint8), 0, CAMERA, np.eye(3) * 100)  # ignored, no error
    manager.stop()  # returns at once: no lock of the dead worker is needed
    assert manager.status()['state'] == 'crashed' and not manager.worker_alive


# --- the node -------------------------------------------------------------------------------------

def test_node_lifecycle_with_and_without_adapt(tmp_path, ros_domain):
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from hr_depth_ros.ros.depth_node import SUCCESS, DepthNode

    context = Context()
    rclpy.init(context=context, domain_id=ros_domain)
    common = [Parameter('weights', value=str(SHIPPED)), Parameter('device', value='cpu'), Parameter('backend', value='torch'),
              Parameter('threads', value=1), Parameter('autostart', value=False)]
    try:
        plain = DepthNode(context=context, parameter_overrides=common)
        assert plain.trigger_configure() == SUCCESS and plain.trigger_activate() == SUCCESS
        assert plain.adaptation.manager is None and plain.adaptation.publisher is None
        assert not [s for s in plain.subscriptions if s.topic_name in ('/tf', '/tf_static')]
        assert plain.trigger_deactivate() == SUCCESS and plain.trigger_shutdown() == SUCCESS
        plain.destroy_node()

        node = DepthNode(context=context, parameter_overrides=[
            *common, Parameter('adapt', value=True), Parameter('adapt_output', value=str(tmp_path / 'adapted'))])
        assert node.trigger_configure() == SUCCESS
        assert node.adaptation.manager is not None and node.engine.estimator.threads == 1
        result = node.set_parameters([Parameter('adapt_lr', value=1e-3)])[0]
        assert not result.successful and 'adapt_lr' in result.reason  # read-only while configured
        assert node.trigger_activate() == SUCCESS
        manager = node.adaptation.manager
        process = manager.process
        assert process.is_alive()
        assert sorted(s.topic_name for s in node.adaptation.subscriptions) == ['/tf', '/tf_static']
        wait_for(lambda: manager.status()['worker_ready'], 120, 'the worker to start')
        assert node.trigger_deactivate() == SUCCESS  # stops the worker (cleanly) and the TF subscriptions
        assert process.exitcode == 0 and manager.process is None and node.adaptation.subscriptions == []
        assert manager.status()['state'] == 'stopped'
        assert node.trigger_cleanup() == SUCCESS and node.adaptation.manager is None
        assert node.trigger_shutdown() == SUCCESS
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
