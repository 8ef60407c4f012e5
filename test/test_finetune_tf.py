"""Fine-tuning with the robot's odometry: poses from messy TF in bags, the metric scale search,
honest best/ selection, and metric checkpoints that the inference engine and predict honour."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from hr_depth_ros.tools import finetune
from hr_depth_ros.core.checkpoint import load_depth_checkpoint, load_extra_state, save_depth_checkpoint
from hr_depth_ros.core.geometry import disp_to_depth, warp_image
from hr_depth_ros.core.inference import DepthEstimator
from hr_depth_ros.tools.make_synthetic_bag import (CAMERA_FRAME, FRAME_TOPICS, IMAGE_TOPIC, TF_STATIC_TOPIC, TF_TOPIC,
                                                   TOPIC_TYPES, frame_messages, odometry_msg, static_tf_msg,
                                                   write_synthetic_bag)
from hr_depth_ros.core.synthetic import SyntheticDrive
from hr_depth_ros.core.training.data import DataConfig, DataError, TripletDataset, extract_frames, prepare_data
from hr_depth_ros.core.training.scale import search_scale
from hr_depth_ros.core.training.trainer import SOURCE_OFFSETS, Trainer, TrainingConfig, reprojection_loss

W, H = 160, 64
FPS = 10.0


def write_messy_bag(path: Path, frames: int = 16, seed: int = 4) -> tuple[Path, SyntheticDrive, np.ndarray]:
    """A robot bag as they come: odometry at ~25 Hz with jitter, 4 ms off the camera clock, starting
    after the first image, silent for 0.6 s in the middle, some transforms published twice;
    /tf_static written once at the start; frame names with a leading '/'."""
    drive = SyntheticDrive(W, H, fps=FPS, seed=seed)
    typestore = get_typestore(Stores.LATEST)
    rng = np.random.default_rng(seed)
    first, last = drive.stamp_ns(0), drive.stamp_ns(frames - 1)
    odometry, t = [], first + 30_000_000 + 4_000_000          # after frame 0
    while t <= last + 50_000_000:
        if not 0.75e9 <= t - first <= 1.35e9:                    # the 0.6 s silence
            odometry.append(int(t))
        t += int(rng.uniform(0.03, 0.05) * 1e9)
    events = [(s, TF_TOPIC, odometry_msg(typestore, drive, s)) for s in odometry]
    events += [(s, TF_TOPIC, odometry_msg(typestore, drive, s)) for s in odometry[::4]]  # duplicates
    static = static_tf_msg(typestore, first - 1)
    for tf in static.transforms:
        tf.header.frame_id = '/' + tf.header.frame_id
        tf.child_frame_id = '/' + tf.child_frame_id
    events.append((first - 1, TF_STATIC_TOPIC, static))
    for index in range(frames):
        for topic, msg in frame_messages(typestore, drive, index, 90).items():
            if topic in (IMAGE_TOPIC, '/camera/camera_info', '/camera/depth_gt'):
                msg.header.frame_id = '/' + CAMERA_FRAME
                events.append((drive.stamp_ns(index), topic, msg))
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {topic: writer.add_connection(topic, TOPIC_TYPES[topic], typestore=typestore)
                       for topic in sorted({topic for _, topic, _ in events})}
        for stamp, topic, msg in sorted(events, key=lambda e: e[0]):
            writer.write(connections[topic], stamp, typestore.serialize_cdr(msg, TOPIC_TYPES[topic]))
    return path, drive, np.asarray(odometry, dtype=np.int64)


@pytest.fixture(scope='module')
def messy(tmp_path_factory):
    return write_messy_bag(tmp_path_factory.mktemp('messy') / 'bag')


@pytest.fixture(scope='module')
def tf_bag(tmp_path_factory) -> Path:
    return write_synthetic_bag(tmp_path_factory.mktemp('tf') / 'drive', frames=24, width=256, height=96, seed=5)


def test_messy_tf_gives_exact_poses_and_drops_what_it_cannot_know(messy):
    bag, drive, odometry = messy
    store = extract_frames(DataConfig(bags=[bag], width=W, height=H, pose_source='tf'))
    try:
        valid = np.array([store.has_poses([i]) for i in range(len(store))])
        times = (store.stamps_ns - drive.stamp_ns(0)) / 1e9
        # Frame 0 precedes the odometry, frames inside the 0.6 s silence fall in a gap > 0.25 s:
        # no pose for them (never extrapolated); every other frame has one.
        after = np.searchsorted(odometry, store.stamps_ns)
        inside = (after > 0) & (after < len(odometry))
        span = np.where(inside, odometry[np.minimum(after, len(odometry) - 1)] - odometry[np.maximum(after - 1, 0)], 0)
        expected = inside & (span <= 0.25e9)
        assert not expected[0] and (~expected).sum() >= 5
        np.testing.assert_array_equal(valid, expected)
        assert store.frames_without_tf == (~valid).sum() and store.tf_segments == [True]
        for index in np.flatnonzero(valid):
            frame = int(round(times[index] * FPS))
            np.testing.assert_allclose(store.poses[index], drive.pose(frame), atol=2e-3)
    finally:
        store.close()


def test_samples_need_all_three_poses_and_relative_motion_is_exact(messy):
    bag, drive, _ = messy
    data = prepare_data(DataConfig(bags=[bag], width=W, height=H, val_fraction=0.0, min_motion=0.0))
    try:
        assert data.pose_source == 'tf' and data.report.dropped_no_pose > 0
        assert 'without a TF pose' in data.report.summary() and 'poses from TF' in data.report.summary()
        dataset = TripletDataset(data.store, data.train)
        item = dataset[0]
        prev, centre, nxt = data.train[0]
        to_frame = lambda i: int(round((data.store.stamps_ns[i] - drive.stamp_ns(0)) / 1e9 * FPS))  # noqa: E731
        assert item['has_pose']
        np.testing.assert_allclose(item['T'][0].numpy(), drive.T_target_to_source(to_frame(centre), to_frame(prev)),
                                   atol=2e-3)
        np.testing.assert_allclose(item['T'][1].numpy(), drive.T_target_to_source(to_frame(centre), to_frame(nxt)),
                                   atol=2e-3)
    finally:
        data.close()


def test_flip_augmentation_mirrors_the_motion(tf_bag):
    """Warping the flipped source with the flipped pose and the flipped true depth reproduces the
    flipped target as well as the unflipped case does (a wrong mirror would not)."""
    data = prepare_data(DataConfig(bags=[tf_bag], width=W, height=H, gt_depth_topic='/camera/depth_gt',
                                   val_fraction=0.0, min_motion=0.0))
    try:
        plain = TripletDataset(data.store, data.train)[8]
        mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))
        errors = {}
        for name, flip, T in (('plain', False, plain['T']), ('flipped', True, mirror @ plain['T'] @ mirror),
                              ('flipped, motion not mirrored', True, plain['T'])):
            color, depth, K = plain['color'], plain['depth_gt'], plain['K'].clone()
            if flip:
                color, depth = color.flip(-1), depth.flip(-1)
                K[0, 2] = W - 1 - K[0, 2]
            depth = torch.nan_to_num(depth, nan=100.0)[None]
            warped = [warp_image(color[j][None], depth, K[None], T[j - 1][None]) for j in (1, 2)]
            errors[name] = sum((w - color[0][None]).abs().mean().item() for w in warped)
        assert errors['flipped'] == pytest.approx(errors['plain'], rel=0.05)
        assert errors['flipped, motion not mirrored'] > 1.25 * errors['flipped']  # 1.44 measured
        # The dataset's own flip does the same as the manual one above.
        torch.manual_seed(1)
        dataset = TripletDataset(data.store, data.train, augment=True)
        for _ in range(20):
            item = dataset[8]
            if torch.equal(item['color'], plain['color'].flip(-1)):
                torch.testing.assert_close(item['T'], mirror @ plain['T'] @ mirror)
                break
        else:
            pytest.fail('no flipped sample in 20 draws')
    finally:
        data.close()


def test_pose_source_tf_without_tf_is_refused_and_auto_falls_back(tmp_path):
    bag = write_synthetic_bag(tmp_path / 'camera_only', frames=8, width=W, height=H, seed=6, with_tf=False)
    with pytest.raises(DataError, match=r'camera_only has no tf2_msgs/msg/TFMessage topic /tf '):
        extract_frames(DataConfig(bags=[bag], width=W, height=H, pose_source='tf'))
    data = prepare_data(DataConfig(bags=[bag], width=W, height=H, val_fraction=0.0, min_motion=0.0))
    try:
        assert data.pose_source == 'vo' and 'two-view geometry' in data.report.summary()
    finally:
        data.close()
    with pytest.raises(DataError, match=r"no TF chain from 'map' to the camera frame 'camera_optical_frame'.*"
                                         r'odom -> base_link'):
        extract_frames(DataConfig(bags=[write_synthetic_bag(tmp_path / 'tf', frames=4, width=W, height=H)],
                                  width=W, height=H, pose_source='tf', odom_frame='map'))


def test_scale_search_finds_a_known_factor(tf_bag):
    """True depth divided by 7 (a network in unknown units): the photometric error under the
    bag's TF poses is lowest at 7."""
    data = prepare_data(DataConfig(bags=[tf_bag], width=W, height=H, gt_depth_topic='/camera/depth_gt',
                                   val_fraction=0.0, min_motion=0.0))
    try:
        batch = torch.utils.data.default_collate([TripletDataset(data.store, data.train)[i] for i in (2, 9, 15)])
    finally:
        data.close()
    depth_units = torch.nan_to_num(batch['depth_gt'], nan=100.0) / 7.0
    transforms = {offset: batch['T'][:, j] for j, offset in enumerate(SOURCE_OFFSETS)}

    def loss_at(scale: float) -> float:
        per_pixel, _ = reprojection_loss(batch['color'], depth_units * scale, batch['K'], transforms, None)
        return per_pixel.mean().item()

    result = search_scale(loss_at, low=0.01, high=1000.0)
    assert result.scale == pytest.approx(7.0, rel=0.03)
    assert result.sharpness() > 0.2  # clearly worse at half or double the scale
    assert loss_at(7.0) < 0.5 * loss_at(14.0) and loss_at(7.0) < 0.5 * loss_at(3.5)


def test_scale_search_on_a_known_curve():
    result = search_scale(lambda s: (np.log10(s) - np.log10(42.0)) ** 2 + 1.0)
    assert result.scale == pytest.approx(42.0, rel=0.01) and result.loss == pytest.approx(1.0, abs=1e-4)
    flat = search_scale(lambda s: 1.0)
    assert flat.sharpness() == pytest.approx(0.0)
    with pytest.raises(ValueError):
        search_scale(lambda s: 1.0, low=10.0, high=1.0)


def test_best_is_chosen_honestly(tf_bag, tmp_path, monkeypatch):
    """The training loss going down while the loss under TF poses goes up must not move best/;
    the start model (step 0) is scored too; ground truth, when given, comes first."""
    start = tmp_path / 'start'
    torch.manual_seed(0)
    from hr_depth_ros.core.networks import build_depth_model
    encoder, decoder = build_depth_model('lite_hr_depth')
    save_depth_checkpoint(start, encoder, decoder, arch='lite_hr_depth', height=64, width=128)
    scripted = iter([{'loss': 0.30, 'photometric': 0.3, 'loss_tf': 0.10},    # step 0: the start model
                     {'loss': 0.20, 'photometric': 0.2, 'loss_tf': 0.12},    # own loss down, TF loss up
                     {'loss': 0.10, 'photometric': 0.1, 'loss_tf': 0.11}])
    monkeypatch.setattr(Trainer, '_validate', lambda self, models, loader, tf_poses: next(scripted))
    output = tmp_path / 'run'
    assert finetune.main(['--bag', str(tf_bag), '--output', str(output), '--init', str(start), '--steps', '2',
                          '--val-every', '1', '--width', '128', '--height', '64', '--batch-size', '2',
                          '--device', 'cpu', '--quiet', '--pose-source', 'net', '--metric-scale', '3']) == 0
    best = json.loads((output / 'best' / 'hr_depth_ros.json').read_text())
    assert best['step'] == 0 and best['selected_by'] == 'loss_tf'
    rows = (output / 'metrics.csv').read_text().splitlines()
    header = rows[0].split(',')
    val = [dict(zip(header, r.split(','))) for r in rows[1:] if ',val,' in r]
    assert [(v['step'], v['selected']) for v in val] == [('0', '1'), ('1', '0'), ('2', '0')]
    trainer = Trainer(TrainingConfig(bags=[], output=str(tmp_path)))
    assert trainer._selection({'loss': 1, 'loss_tf': 2, 'abs_rel': 0.3}) == ('abs_rel', 0.3)
    trainer.state.metric = True
    assert trainer._selection({'loss': 1, 'abs_rel': 0.3, 'abs_rel_metric': 0.4}) == ('abs_rel_metric', 0.4)
    assert trainer._selection({'loss': 1}) == ('loss', 1)


def test_tf_fine_tuning_records_metric_scale_and_pose_lr(tf_bag, lite_checkpoint, tmp_path):
    output = tmp_path / 'metric'
    assert finetune.main(['--bag', str(tf_bag), '--output', str(output), '--init', str(lite_checkpoint),
                          '--steps', '1', '--lr', '2e-5', '--width', '128', '--height', '64', '--batch-size', '2',
                          '--device', 'cpu', '--quiet']) == 0
    latest = load_depth_checkpoint(output / 'latest')
    meta = latest.metadata
    assert meta['pose_source'] == 'tf' and meta['depth_units'] == 'metres'
    assert latest.metric_scale == meta['metric_scale'] > 0
    assert 'photometric search' in meta['scale_search']['how'] and meta['scale_search']['evaluations'] > 40
    assert 0 < meta['scale_search']['near_m'] <= meta['scale_search']['far_m']  # where the scene sits, in metres
    groups = load_extra_state(output / 'latest', 'adam.pth')['optimizer']['param_groups']
    assert [g['lr'] for g in groups] == [2e-5, 1e-4]  # the pose network's own, at least 1e-4
    assert (output / 'latest' / 'pose.pth').is_file()   # every checkpoint carries its pose network
    columns = (output / 'metrics.csv').read_text().splitlines()[0].split(',')
    assert {'loss_tf', 'abs_rel_metric', 'scale_ratio', 'selected'} <= set(columns)


def test_metric_checkpoints_give_metres_in_the_engine_and_predict(lite_checkpoint, tmp_path):
    import cv2

    from hr_depth_ros.tools import predict

    source = load_depth_checkpoint(lite_checkpoint)
    metric = save_depth_checkpoint(tmp_path / 'metric', source.encoder, source.decoder, arch=source.arch,
                                   height=source.height, width=source.width, metadata={'metric_scale': 7.5})
    image = np.random.default_rng(0).integers(0, 256, (96, 320, 3), dtype=np.uint8)
    plain = DepthEstimator(lite_checkpoint, device='cpu')
    scaled = DepthEstimator(metric, device='cpu')
    assert plain.metric_scale is None and scaled.metric_scale == 7.5
    np.testing.assert_allclose(scaled.predict_depth(image), 7.5 * plain.predict_depth(image), rtol=1e-5)
    cv2.imwrite(str(tmp_path / 'frame.png'), image[..., ::-1])
    for weights, factor, extra in ((metric, 7.5, []), (lite_checkpoint, 2.0, ['--depth-scale', '2'])):
        out = tmp_path / f'out_{factor}'
        assert predict.main(['--weights', str(weights), '--device', 'cpu', '--output-dir', str(out), '--no-progress',
                             *extra, str(tmp_path / 'frame.png')]) == 0
        disparity = np.load(out / 'frame_disp.npy')
        depth = np.load(out / 'frame_depth.npy')
        assert depth.dtype == np.float32 and depth.shape == disparity.shape
        np.testing.assert_allclose(depth, factor * disp_to_depth(disparity, 0.1, 100.0)[1], rtol=1e-5)


def test_the_anchor_keeps_a_pose_network_fine_tune_near_its_start(tf_bag, tmp_path):
    """With poses from the pose network the depth network bends to the pose errors; the anchor (L1
    toward the start model's disparity) holds it: same run, same seed, the disparity moves several
    times less. The default weight is on for pose-network runs from --init only."""
    start = tmp_path / 'start'
    torch.manual_seed(0)
    from hr_depth_ros.core.networks import build_depth_model
    encoder, decoder = build_depth_model('lite_hr_depth')
    save_depth_checkpoint(start, encoder, decoder, arch='lite_hr_depth', height=64, width=128)
    images = torch.rand(4, 3, 64, 128, generator=torch.Generator().manual_seed(1))

    def disparity(folder: Path) -> torch.Tensor:
        checkpoint = load_depth_checkpoint(folder)
        with torch.no_grad():
            return checkpoint.decoder(checkpoint.encoder(images))[('disp', 0)]

    drift = {}
    for weight in ('0', '10'):
        output = tmp_path / f'anchor_{weight}'
        assert finetune.main(['--bag', str(tf_bag), '--output', str(output), '--init', str(start), '--steps', '3',
                              '--lr', '1e-3', '--width', '128', '--height', '64', '--batch-size', '2',
                              '--device', 'cpu', '--quiet', '--pose-source', 'net', '--pose-warmup-steps', '0',
                              '--anchor-weight', weight, '--val-fraction', '0']) == 0
        assert json.loads((output / 'latest' / 'hr_depth_ros.json').read_text())['anchor_weight'] == float(weight)
        drift[weight] = float((disparity(output / 'latest') - disparity(start)).abs().mean())
    assert drift['10'] < 0.5 * drift['0'], drift   # measured: ~5x less on 1 and 2 threads

    def resolved(pose_source: str, **options) -> float:
        trainer = Trainer(TrainingConfig(bags=[], output=str(tmp_path / 'unused'), **options))
        trainer.state.pose_source = pose_source
        return trainer.anchor_weight()

    assert resolved('net', init=str(start)) == 1.0
    assert resolved('net') == 0.0                                  # nothing to anchor to
    assert resolved('tf', init=str(start)) == 0.0
    assert resolved('tf', init=str(start), anchor_weight=0.5) == 0.5
