"""Ground-truth depth from a depth sensor: REP 118 16UC1 (mm) and 32FC1 (m), matched by stamp, best/ by depth error."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from hr_depth_ros.core.bags import read_messages
from hr_depth_ros.core.image_decoding import array_to_image_fields, encode_compressed_depth
from hr_depth_ros.core.synthetic import SyntheticDrive
from hr_depth_ros.core.training.data import DataConfig, prepare_data
from hr_depth_ros.tools import finetune
from hr_depth_ros.tools.make_synthetic_bag import (DEPTH_GT_TOPIC, TOPIC_TYPES, frame_messages, odometry_msg,
                                                   static_tf_msg, tf_stamps_ns)

W, H = 128, 64
SENSOR = '/camera/depth/image_raw'
COMPRESSED_SENSOR = SENSOR + '/compressedDepth'


def write_depth_sensor_bag(path: Path, encoding: str, offset_ms: float, frames: int = 16,
                           compressed: bool = False) -> Path:
    """A synthetic drive whose depth comes from a 'sensor': ``encoding`` (16UC1 mm, 0 = none; 32FC1 m,
    0 = none), stamped ``offset_ms`` after the colour frame, on its own topic (``compressed``: through the
    compressedDepth transport on :data:`COMPRESSED_SENSOR`, as ``ros2 bag record`` stores it); colour only on
    /camera/image_raw."""
    drive = SyntheticDrive(W, H, fps=10.0, seed=7)
    typestore = get_typestore(Stores.LATEST)
    sensor = COMPRESSED_SENSOR if compressed else SENSOR
    types = TOPIC_TYPES | {sensor: 'sensor_msgs/msg/CompressedImage' if compressed else 'sensor_msgs/msg/Image'}
    events = []
    odometry = tf_stamps_ns(drive, frames, 30.0, 0.003)
    events.append((odometry[0], '/tf_static', static_tf_msg(typestore, odometry[0])))
    events += [(s, '/tf', odometry_msg(typestore, drive, s)) for s in odometry]
    for index in range(frames):
        stamp = drive.stamp_ns(index)
        for topic, msg in frame_messages(typestore, drive, index, 90).items():
            if topic == DEPTH_GT_TOPIC:
                metres = np.nan_to_num(drive.frame(index).depth, nan=0.0)
                metres[metres > 60.0] = 0.0  # beyond the sensor's range: no data
                data = (metres * 1000).round().astype(np.uint16) if encoding == '16UC1' else metres.astype(np.float32)
                shifted = stamp + int(offset_ms * 1e6)
                types_ = typestore.types
                header = types_['std_msgs/msg/Header'](frame_id=msg.header.frame_id, stamp=types_[
                    'builtin_interfaces/msg/Time'](sec=shifted // 1_000_000_000, nanosec=shifted % 1_000_000_000))
                if compressed:  # the plugin's far limit set beyond the drive's 60 m
                    fmt, payload = encode_compressed_depth(data, encoding, depth_max=100.0)
                    msg = types_['sensor_msgs/msg/CompressedImage'](header=header, format=fmt,
                                                                    data=np.frombuffer(payload, np.uint8))
                else:
                    msg = types_['sensor_msgs/msg/Image'](header=header, **array_to_image_fields(data, encoding))
                events.append((shifted, sensor, msg))
            elif topic in ('/camera/image_raw', '/camera/camera_info'):
                events.append((stamp, topic, msg))
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {t: writer.add_connection(t, types[t], typestore=typestore) for t in sorted({e[1] for e in events})}
        for stamp, topic, msg in sorted(events, key=lambda e: e[0]):
            writer.write(connections[topic], stamp, typestore.serialize_cdr(msg, types[topic]))
    return path


@pytest.mark.parametrize('encoding, compressed', [('16UC1', False), ('32FC1', False), ('16UC1', True),
                                                  ('32FC1', True)])
def test_depth_sensor_topic_is_read_in_metres_and_matched_by_stamp(tmp_path, encoding, compressed):
    """A depth sensor's topic, raw or through the compressedDepth transport, is read in metres."""
    bag = write_depth_sensor_bag(tmp_path / 'bag', encoding, offset_ms=7.0, compressed=compressed)
    sensor = COMPRESSED_SENSOR if compressed else SENSOR
    # compressedDepth 32FC1 is quantised inverse depth: a step is depth / 10100 (0.6 % at 60 m)
    rtol = 7e-3 if compressed and encoding == '32FC1' else 2e-3
    data = prepare_data(DataConfig(bags=[bag], width=W, height=H, gt_depth_topic=sensor, min_motion=0.0))
    try:
        assert data.store.has_depth.all()  # 7 ms off: within the default 20 ms
        assert data.topics['image'] == '/camera/image_raw'  # the depth image topic is never taken for colour
        drive = SyntheticDrive(W, H, fps=10.0, seed=7)
        index = int(np.flatnonzero(data.store.stamps_ns == drive.stamp_ns(5))[0])
        truth, read = drive.frame(5).depth, data.store.depth(index)
        both = np.isfinite(truth) & np.isfinite(read) & (truth < 60)
        assert both.mean() > 0.5 and np.allclose(read[both], truth[both], rtol=rtol, atol=1e-3)
        assert np.isnan(read[~np.isfinite(truth) | (truth > 60.5)]).all()  # 0 = no data
        assert not [line for line in data.warnings if sensor in line]
        # Chosen from the bag (options left unset) and said so; a 16-frame bag still validates on a few samples.
        assert any('/camera/image_raw' in line for line in data.topic_choices)
        assert any('/camera/camera_info' in line for line in data.topic_choices)
        assert len(data.val) >= 3 and any('validation samples' in line for line in data.warnings)
    finally:
        data.close()
    far = prepare_data(DataConfig(bags=[bag], width=W, height=H, gt_depth_topic=sensor, min_motion=0.0,
                                  gt_depth_tolerance=0.005))
    try:  # 7 ms off with a 5 ms tolerance: nothing matches, and the user is told so
        assert not far.store.has_depth.any()
        assert any(sensor in line and 'validation' in line for line in far.warnings)
    finally:
        far.close()


@pytest.mark.parametrize('encoding', ['16UC1', '32FC1'])
def test_best_is_chosen_by_the_depth_error_of_a_depth_sensor(tmp_path, lite_checkpoint, encoding):
    bag = write_depth_sensor_bag(tmp_path / 'bag', encoding, offset_ms=-4.0)
    output = tmp_path / 'run'
    assert finetune.main(['--bag', str(bag), '--output', str(output), '--init', str(lite_checkpoint), '--steps', '2',
                          '--val-every', '1', '--width', str(W), '--height', str(H), '--batch-size', '2',
                          '--device', 'cpu', '--quiet', '--gt-depth-topic', SENSOR, '--metric-scale', '3']) == 0
    rows = (output / 'metrics.csv').read_text().splitlines()
    header = rows[0].split(',')
    val = [dict(zip(header, r.split(','))) for r in rows[1:] if ',val,' in r]
    assert len(val) == 3 and all(float(v['abs_rel']) > 0 and float(v['abs_rel_metric']) > 0 for v in val)
    best = json.loads((output / 'best' / 'hr_depth_ros.json').read_text())
    assert best['selected_by'] == 'abs_rel_metric'
    chosen = min(val, key=lambda v: float(v['abs_rel_metric']))
    assert best['step'] == int(chosen['step'])


REAL = Path(__file__).resolve().parents[2] / 'shared' / 'realdata' / 'tum_fr1_xyz_37f'


@pytest.mark.skipif(not (REAL / 'metadata.yaml').is_file(),
                    reason='real data ../shared/realdata/tum_fr1_xyz_37f is absent (see its README); the logic is '
                           'tested above on synthetic depth sensors')
def test_a_real_kinect_bag_with_defaults():
    """TUM fr1/xyz as a new user gives it: the only (compressed) image topic and its camera_info are
    found, the distorted frames are rectified, the Kinect's 16UC1 depth is read in metres."""
    data = prepare_data(DataConfig(bags=[REAL], width=320, height=96, gt_depth_topic='/camera/depth/image_raw'))
    try:
        assert data.topics['image'] == '/camera/image_raw/compressed'
        assert data.topics['camera_info'] == '/camera/camera_info'
        assert any('rectified' in note for note in data.store.notes)
        assert data.store.has_depth.sum() == 32  # 5 colour frames have no depth image
        depths = np.concatenate([data.store.depth(i)[np.isfinite(data.store.depth(i))]
                                 for i in np.flatnonzero(data.store.has_depth)])
        assert 0.4 < np.percentile(depths, 1) and np.percentile(depths, 99) < 4.5 and 0.7 < np.median(depths) < 1.5
        assert len(data.val) >= 5 and data.pose_source == 'tf'
    finally:
        data.close()


@pytest.mark.skipif(not (REAL / 'metadata.yaml').is_file(),
                    reason='real data ../shared/realdata/tum_fr1_xyz_37f is absent (see its README)')
@pytest.mark.parametrize('last', [False, True])
def test_real_sequence_benchmark_splits_by_time(tmp_path, last):
    """benchmarks/real_sequence.py: the training bag holds exactly the first (last) 24 colour frames with their
    depth and camera_info, and the scored frames are the others with Kinect depth, rectified like the node's."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
    import real_sequence

    bag, stamps = real_sequence.split_bag(REAL, tmp_path / 'train', 24, last)
    kept = stamps[-24:] if last else stamps[:24]
    images = sorted(stamp for topic, _, stamp, _ in read_messages(bag, [real_sequence.IMAGE]))
    depth = [stamp for topic, _, stamp, _ in read_messages(bag, [real_sequence.DEPTH])]
    assert images == kept and set(depth) <= set(kept) and len(stamps) == 37
    frames = real_sequence.heldout_frames(REAL, stamps, 24, last)
    assert frames and not {f.stamp_ns for f in frames} & set(kept) and len(frames) <= 13
    assert all(f.rgb.shape == (480, 640, 3) and f.depth_gt.shape == (480, 640) for f in frames)
    assert all(0.3 < np.nanmedian(f.depth_gt) < 2.0 for f in frames) and frames[0].K[0, 0] > 0


@pytest.mark.skipif(not (REAL / 'metadata.yaml').is_file(),
                    reason='real data ../shared/realdata/tum_fr1_xyz_37f is absent (see its README)')
def test_online_adaptation_benchmark_streams_the_real_camera():
    """benchmarks/online_adaptation.py --tum: every colour frame in time order, rectified, at network size, with
    its motion-capture pose, and the Kinect depth where there is one; intrinsics scaled to the network size."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
    import online_adaptation

    frames, K = online_adaptation.tum_stream(REAL, 320, 96)
    stamps = [f['stamp_ns'] for f in frames]
    assert len(frames) == 37 and stamps == sorted(stamps) and sum(f['gt'] is not None for f in frames) == 32
    assert all(f['small'].shape == (96, 320, 3) and np.isfinite(f['pose']).all() for f in frames)
    path = np.linalg.norm(np.diff([f['pose'][:3, 3] for f in frames], axis=0), axis=1).sum()
    assert 0.3 < path < 0.5  # the README's 0.39 m
    assert K[0, 0] == pytest.approx(517.3 * 0.5, rel=0.02) and K[1, 1] == pytest.approx(516.5 * 0.2, rel=0.02)


def _as_ros1(bag: Path, dest: Path) -> Path:
    """The rosbag2 ``bag`` converted to a ROS 1 bag (Noetic definitions: headers with seq), as ``rosbags-convert``
    writes it: what a robot recorded with ROS 1 hands over."""
    from rosbags.convert import convert

    convert(srcs=[bag], dst=dest, dst_storage='sqlite3', dst_version=8, compress=None, compress_mode='file',
            default_typestore=None, typestore=get_typestore(Stores.ROS1_NOETIC), exclude_topics=[], include_topics=[],
            exclude_msgtypes=[], include_msgtypes=[])
    return dest


@pytest.mark.parametrize('ros1, offset_ms, compressed', [(False, 0.0, False), (True, 0.0, False),
                                                         (False, -15.0, True)])
def test_real_sequence_benchmark_takes_another_rgbd_recording(tmp_path, monkeypatch, ros1, offset_ms, compressed):
    """benchmarks/real_sequence.py on a recording shaped unlike the TUM bag (raw rgb8 colour, 32FC1 depth on
    another topic, raw or compressedDepth, rosbag2 or ROS 1, depth stamped by the depth camera's own clock tick up
    to 20 ms off): topics
    found, the split bag is a rosbag2 fine-tuning reads with the training frames' depth, scored frames carry the
    sensor's metres."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
    import real_sequence

    bag = write_depth_sensor_bag(tmp_path / 'bag', '32FC1', offset_ms=offset_ms, frames=12, compressed=compressed)
    if ros1:
        bag = _as_ros1(bag, tmp_path / 'robot.bag')
    sensor = COMPRESSED_SENSOR if compressed else SENSOR
    topics = real_sequence.sequence_topics(bag)
    assert topics == {'image': '/camera/image_raw', 'info': '/camera/camera_info', 'depth': sensor}
    train, stamps = real_sequence.split_bag(bag, tmp_path / 'train', 8, topics=topics)
    assert len(stamps) == 12
    depth_in_train = [stamp for _, _, stamp, _ in read_messages(train, [sensor])]
    assert sorted(depth_in_train) == [s + int(offset_ms * 1e6) for s in stamps[:8]]  # theirs, not the 9th frame's
    data = prepare_data(DataConfig(bags=[train], width=W, height=H, gt_depth_topic=sensor, min_motion=0.0))
    try:
        assert sorted(data.store.stamps_ns) == stamps[:8] and data.store.has_depth.all()
        assert data.pose_source == 'tf'  # TF came along whole
    finally:
        data.close()
    frames = real_sequence.heldout_frames(bag, stamps, 8, topics=topics)
    drive = SyntheticDrive(W, H, fps=10.0, seed=7)
    assert [f.stamp_ns for f in frames] == stamps[8:] and all(f.rgb.shape == (H, W, 3) for f in frames)
    truth = drive.frame(8).depth
    both = np.isfinite(truth) & (truth < 60) & np.isfinite(frames[0].depth_gt)
    assert both.mean() > 0.5 and np.allclose(frames[0].depth_gt[both], truth[both], rtol=7e-3 if compressed else 1e-5,
                                             atol=1e-4)
    # Two depth images (or none): the user is asked to choose, with the candidates named.
    two = {**real_sequence.list_topics(bag), '/camera/aligned_depth_to_color/image_raw': 'sensor_msgs/msg/Image'}
    monkeypatch.setattr(real_sequence, 'list_topics', lambda _: two)
    with pytest.raises(real_sequence.DataError, match='2 depth image topics.*aligned_depth_to_color.*--depth-topic'):
        real_sequence.sequence_topics(bag)
    assert real_sequence.sequence_topics(bag, depth=sensor)['depth'] == sensor


@pytest.mark.skipif(not (REAL / 'metadata.yaml').is_file(),
                    reason='real data ../shared/realdata/tum_fr1_xyz_37f is absent (see its README)')
def test_online_adaptation_benchmark_plays_the_real_camera_to_the_node_as_recorded():
    """benchmarks/online_adaptation.py --tum (node mode): the frames go out as the bag has them (JPEG, distorted,
    camera_info with D), with the motion-capture TF; the Kinect depth is rectified like the node's colour image;
    40 passes are reported in about 8 rows."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
    import online_adaptation

    drive = online_adaptation.load_tum(REAL)
    frames = drive['frames']
    assert len(frames) == 37 and all(hasattr(f['image'], 'format') and f['info'].d[0] > 0.2 for f in frames)
    assert len(drive['odometry']) == 220 and len(drive['static']) == 1
    assert sum(f['gt'] is not None for f in frames) == 32
    assert all(f['gt'].shape == (480, 640) for f in frames if f['gt'] is not None)
    rows = [{'pass': k + 1, 'answered': 30, 'sent': 32, 'abs_rel': 0.3 - 0.005 * k, 'abs_rel_published': 0.5,
             'scale_ratio': 1.0} for k in range(40)]
    merged = online_adaptation.grouped(rows)
    assert [r['pass_'] for r in merged][:2] == ['1-5', '6-10'] and len(merged) == 8
    assert merged[0]['answered'] == 150 and merged[0]['abs_rel'] == pytest.approx(0.29)


def test_real_sequence_benchmark_runs_end_to_end_on_another_recording(tmp_path):
    """The benchmark's command on a small 32FC1 RGB-D recording: topics found, one TF fine-tuning run, a table
    with the start and the fine-tuned rows in metres, the picture written."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    bag = write_depth_sensor_bag(tmp_path / 'bag', '32FC1', offset_ms=0.0, frames=20)
    picture = tmp_path / 'picture.png'
    run = subprocess.run([sys.executable, str(repo / 'benchmarks' / 'real_sequence.py'), '--bag', str(bag),
                          '--train-frames', '14', '--steps', '2', '--batch-size', '2', '--width', str(W), '--height',
                          str(H), '--rows', 'tf', '--output', str(tmp_path / 'out'), '--image', str(picture)],
                         cwd=repo, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f'depth {SENSOR}' in run.stdout and 'colour /camera/image_raw' in run.stdout
    rows = [line for line in run.stdout.splitlines() if line.startswith('| TF (no depth sensor)')]
    assert len(rows) == 2 and all('metric scale' in row for row in rows)
    assert picture.is_file() and picture.stat().st_size > 1000


def test_a_depth_sensor_as_a_label_pulls_the_depth_to_its_metres(tmp_path):
    """``gt_depth_weight``: the sensor's depth, where it has data, is a label on the training frames as well (log-L1
    on metres): the loss is the self-supervised one plus weight x that term, and minimising it brings the depth to
    the sensor's, which the self-supervised loss alone does not."""
    import torch

    from hr_depth_ros.core.training.data import TripletDataset
    from hr_depth_ros.core.training.losses import depth_label_loss
    from hr_depth_ros.core.training.trainer import Trainer, TrainingConfig

    bag = write_depth_sensor_bag(tmp_path / 'bag', '16UC1', offset_ms=0.0, frames=8)
    base = TrainingConfig(bags=[str(bag)], output=str(tmp_path / 'out'), width=W, height=H, steps=1, device='cpu',
                          val_fraction=0.0, gt_depth_topic=SENSOR, loss_scales=1)
    data = prepare_data(base.data_config())
    try:
        batch = torch.utils.data.default_collate([TripletDataset(data.store, data.train)[i] for i in (0, 4)])
    finally:
        data.close()
    truth = batch['depth_gt']
    models = Trainer(base)._build_models()
    errors = {}
    for weight in (0.0, 1.0):
        config = TrainingConfig(**{**base.__dict__, 'gt_depth_weight': weight})
        config.validate()
        trainer = Trainer(config)
        trainer.state.pose_source = 'tf'  # as the run resolves it for this bag (the batch carries the TF poses)
        torch.manual_seed(0)
        logits = torch.full((2, 1, H, W), -3.0).requires_grad_()  # depth ~2 m: far from the drive's metres
        optimizer = torch.optim.Adam([logits], lr=0.1)
        for step in range(30):
            disp = logits.sigmoid()  # as the decoder's output
            loss, info = trainer._losses(models, batch, outputs={('disp', 0): disp})
            if step == 0 and weight:
                plain = Trainer(base)
                plain.state.pose_source = 'tf'
                alone, _ = plain._losses(models, batch, outputs={('disp', 0): disp})
                label = depth_label_loss(trainer._depth(disp), truth)
                assert loss.item() == pytest.approx(alone.item() + weight * label.item(), rel=1e-5)
                assert info['label'].item() == pytest.approx(label.item(), rel=1e-5)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        errors[weight] = depth_label_loss(trainer._depth(logits.detach().sigmoid()), truth).item()
    start = depth_label_loss(trainer._depth(torch.full((2, 1, H, W), -3.0).sigmoid()), truth).item()
    assert start > 1.0  # e^1: the start depth is off by more than 2.7x
    assert errors[1.0] < 0.2 * start and errors[0.0] > 0.5 * start, (start, errors)


@pytest.mark.parametrize('more, message', [
    ([], 'gt_depth_weight needs a ground-truth depth topic'),
    (['--gt-depth-topic', SENSOR, '--pose-source', 'vo'], 'gt_depth_weight needs TF poses'),
])
def test_a_label_weight_without_labels_or_metres_is_refused(tmp_path, capsys, more, message):
    bag = write_depth_sensor_bag(tmp_path / 'bag', '16UC1', offset_ms=0.0)
    assert finetune.main(['--bag', str(bag), '--output', str(tmp_path / 'run'), '--steps', '1', '--width', str(W),
                          '--height', str(H), '--device', 'cpu', '--quiet', '--gt-depth-weight', '1', *more]) == 2
    assert message in capsys.readouterr().err


def test_depth_labels_keep_the_metres_without_photometric_re_estimation(tmp_path, lite_checkpoint):
    """With labels the metric scale is found once (photometric search, as always) and then left to them: the
    re-estimation at each validation, which would pull against the labels, is skipped (it runs without them)."""
    bag = write_depth_sensor_bag(tmp_path / 'bag', '16UC1', offset_ms=0.0, frames=12)
    updates = {}
    for weight in ('0', '1'):
        output = tmp_path / f'run{weight}'
        assert finetune.main(['--bag', str(bag), '--output', str(output), '--init', str(lite_checkpoint), '--steps',
                              '2', '--val-every', '1', '--width', str(W), '--height', str(H), '--batch-size', '2',
                              '--device', 'cpu', '--quiet', '--gt-depth-topic', SENSOR,
                              '--gt-depth-weight', weight]) == 0
        meta = json.loads((output / 'latest' / 'hr_depth_ros.json').read_text())
        assert meta['scale_search']['how'].startswith('photometric search')
        updates[weight] = meta['scale_search']['updates']
    assert [step for step, _ in updates['0']] == [1, 2] and updates['1'] == []
