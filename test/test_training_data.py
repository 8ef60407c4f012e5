"""Bag -> triplet samples: topics, intrinsics, gaps, motion filter, time-block split, augmentation."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch

from hr_depth_ros.core.bags import BagError, read_messages
from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag
from hr_depth_ros.core.training.data import (DataConfig, DataError, SampleReport, TripletDataset, build_samples,
                                             extract_frames, prepare_data, split_samples)

W, H = 160, 64


@pytest.fixture(scope='module')
def small_bag(tmp_path_factory) -> Path:
    """30 frames at 320x96 (MCAP), every topic."""
    return write_synthetic_bag(tmp_path_factory.mktemp('data') / 'drive', frames=30, width=320, height=96, seed=3)


@pytest.fixture(scope='module')
def prepared(small_bag):
    data = prepare_data(DataConfig(bags=[small_bag], width=W, height=H, gt_depth_topic='/camera/depth_gt',
                                   val_fraction=0.2, val_block_frames=6))
    yield data
    data.close()


@dataclass
class FakeStore:
    """What build_samples / split_samples read: stamps, segments, thumbnails."""

    stamps_ns: np.ndarray
    segment: np.ndarray
    thumbs: np.ndarray

    def __len__(self) -> int:
        return len(self.stamps_ns)


def _fake_store(stamps_ms, segments=None, static=()):
    n = len(stamps_ms)
    rng = np.random.default_rng(0)
    thumbs = rng.uniform(0, 255, (n, 8, 16)).astype(np.float32)
    for i in static:  # frame identical to its predecessor
        thumbs[i] = thumbs[i - 1]
    return FakeStore(np.asarray(stamps_ms, dtype=np.int64) * 1_000_000,
                     np.zeros(n, dtype=np.int64) if segments is None else np.asarray(segments), thumbs)


def test_extract_frames_sizes_intrinsics_and_depth(prepared, small_bag):
    store = prepared.store
    assert len(store) == 30
    assert np.all(np.diff(store.stamps_ns) > 0)
    image = store.image(5)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8 and image.std() > 5
    depth = store.depth(5)
    assert depth.shape == (H, W) and np.nanmedian(depth) > 1.0
    # K scaled from 320x96 to 160x64 with the pixel-centre convention.
    from hr_depth_ros.core.synthetic import SyntheticDrive
    from hr_depth_ros.core.geometry import scale_intrinsics
    K_bag = SyntheticDrive(width=320, height=96).K
    np.testing.assert_allclose(store.K[0], scale_intrinsics(K_bag, W / 320, H / 96))


def test_compressed_topic_gives_the_same_frames(small_bag, prepared):
    store = extract_frames(DataConfig(bags=[small_bag], width=W, height=H, image_topic='/camera/image_raw/compressed'))
    try:
        assert len(store) == len(prepared.store)
        diff = np.abs(store.image(10).astype(int) - prepared.store.image(10).astype(int)).mean()
        assert diff < 4.0  # JPEG vs raw
    finally:
        store.close()
    assert not store.folder.exists()


def test_split_never_shares_a_frame(prepared):
    train_frames = {f for s in prepared.train for f in s}
    val_frames = {f for s in prepared.val for f in s}
    assert prepared.train and prepared.val
    assert not train_frames & val_frames
    report = prepared.report
    assert report.train == len(prepared.train) and report.val == len(prepared.val)
    assert report.dropped_split > 0  # samples straddling a block edge


def test_split_multiple_blocks_and_segments():
    store = _fake_store(list(range(0, 2000, 10)), segments=[0] * 100 + [1] * 100)
    samples = build_samples(store)
    train, val = split_samples(store, samples, val_fraction=0.2, val_block_frames=5)
    assert not {f for s in train for f in s} & {f for s in val for f in s}
    assert 0.1 < len(val) / (len(train) + len(val)) < 0.3
    assert {int(store.segment[s[1]]) for s in val} == {0, 1}  # each bag holds out its share
    assert all(store.segment[s[0]] == store.segment[s[2]] for s in samples)  # no triplet across bags


def test_gaps_and_static_frames_are_dropped_and_counted():
    stamps = [0, 100, 200, 300, 400, 1400, 1500, 1600, 1700, 1800]  # one 1 s gap at 10 Hz
    store = _fake_store(stamps, static=[8])
    report = SampleReport()
    samples = build_samples(store, max_gap_factor=2.5, min_motion=0.5, report=report)
    assert (3, 4, 5) not in samples and (4, 5, 6) not in samples
    assert report.dropped_gap == 2
    assert report.dropped_no_motion == 2  # frame 8 equals frame 7: samples centred on 7 and 8
    assert report.dropped_edges == 2
    assert samples == [(0, 1, 2), (1, 2, 3), (2, 3, 4), (5, 6, 7)]
    stride2 = build_samples(store, frame_stride=2, min_motion=0.0)
    assert stride2[0] == (0, 2, 4)


def test_too_few_samples_says_why(small_bag, tmp_path):
    # A threshold no frame pair reaches stands in for a camera that never moves.
    with pytest.raises(DataError, match='without camera motion') as info:
        prepare_data(DataConfig(bags=[small_bag], width=W, height=H, min_motion=1000.0))
    assert 'found 0' in str(info.value) and '28 without camera motion' in str(info.value)
    two = write_synthetic_bag(tmp_path / 'two', frames=2, width=64, height=32)
    with pytest.raises(DataError, match='no consecutive frames') as info:
        prepare_data(DataConfig(bags=[two], width=64, height=32))
    assert f'{two}: 2 usable frames' in str(info.value)


def test_missing_topic_lists_topics(small_bag):
    with pytest.raises(DataError) as info:
        prepare_data(DataConfig(bags=[small_bag], width=W, height=H, image_topic='/nope'))
    message = str(info.value)
    assert '/nope' in message and '/camera/image_raw (sensor_msgs/msg/Image)' in message


def test_intrinsics_from_parameters_when_no_camera_info(small_bag):
    with pytest.raises(DataError, match='no camera_info topic /missing_info'):
        prepare_data(DataConfig(bags=[small_bag], width=W, height=H, camera_info_topic='/missing_info'))
    store = extract_frames(DataConfig(bags=[small_bag], width=W, height=H, camera_info_topic='/missing_info',
                                      intrinsics=(200.0, 200.0, 159.5, 47.5)))
    try:
        np.testing.assert_allclose(store.K[0][0, 0], 100.0)
        np.testing.assert_allclose(store.K[0][0, 2], 79.5)
    finally:
        store.close()


def test_corrupt_bag_names_the_file(tmp_path):
    bag = tmp_path / 'broken'
    bag.mkdir()
    (bag / 'metadata.yaml').write_text('rosbag2_bagfile_information: {version: 8, storage_identifier: mcap}\n')
    with pytest.raises(BagError, match='broken'):
        prepare_data(DataConfig(bags=[bag], width=W, height=H))


def test_dataset_items_and_flip(prepared):
    dataset = TripletDataset(prepared.store, prepared.train, augment=False)
    item = dataset[0]
    assert item['color'].shape == (3, 3, H, W)
    assert torch.equal(item['color'], item['color_aug'])
    assert torch.allclose(item['K'] @ item['inv_K'], torch.eye(4), atol=1e-5)
    assert torch.isfinite(item['depth_gt']).any()
    augmented = TripletDataset(prepared.store, prepared.train, augment=True)
    flipped = jittered = 0
    torch.manual_seed(0)
    for _ in range(12):
        aug = augmented[0]
        if torch.allclose(aug['color'], item['color'].flip(-1)):
            flipped += 1
            assert aug['K'][0, 2].item() == pytest.approx(W - 1 - item['K'][0, 2].item())
        else:
            assert torch.equal(aug['color'], item['color'])
        if not torch.equal(aug['color'], aug['color_aug']):
            jittered += 1
            # the same jitter for all three frames: their differences keep the same sign pattern
            delta = aug['color_aug'] - aug['color']
            assert delta.abs().mean() > 0
    assert 0 < flipped < 12 and 0 < jittered < 12



def test_uint8_items_are_the_float_items_rounded(prepared):
    """uint8 items (what the trainer loads: a quarter of the bytes to pin and copy to a GPU)."""
    plain = TripletDataset(prepared.store, prepared.train)
    packed = TripletDataset(prepared.store, prepared.train, uint8=True)
    item = packed[0]
    assert item['color'].dtype == item['color_aug'].dtype == torch.uint8
    assert torch.equal(item['color'].float().div_(255.0), plain[0]['color'])  # exact: the frames are 8-bit
    plain.augment = packed.augment = True
    jittered = 0
    for seed in range(8):  # the same flips and jitter drawn: the jittered frames rounded to the nearest level
        torch.manual_seed(seed)
        expected = plain[0]
        torch.manual_seed(seed)
        item = packed[0]
        assert (item['color_aug'].float() - expected['color_aug'] * 255.0).abs().max() <= 0.5 + 1e-3
        assert torch.equal(item['color'].float().div_(255.0), expected['color'])
        jittered += not torch.equal(expected['color'], expected['color_aug'])
    assert jittered > 0

# --- ROS 1 bags, partial bags, undecodable frames (issue 12, items 8 and 9) ----------------------

def write_ros1_camera_bag(path: Path, frames: int, image_topic: str = 'camera/image_raw/compressed',
                          info_topic: str = 'camera/camera_info', corrupt: Sequence[int] = (),
                          replace: dict | None = None) -> Path:
    """A ROS 1 camera bag as a Raspberry Pi camera records it: CompressedImage (jpeg) + CameraInfo.

    Topic names without the leading '/'; frames in ``corrupt`` hold a JPEG cut in half, ``replace``
    maps frame index -> raw payload bytes.
    """
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    from hr_depth_ros.core.image_decoding import encode_compressed
    from hr_depth_ros.core.synthetic import SyntheticDrive

    typestore = get_typestore(Stores.ROS1_NOETIC)
    types = typestore.types
    Header, Time = types['std_msgs/msg/Header'], types['builtin_interfaces/msg/Time']
    drive = SyntheticDrive(width=W * 2, height=H * 2, fps=10.0, seed=5, num_frames=frames)
    K = drive.K
    with Writer(path) as writer:
        image_conn = writer.add_connection(image_topic, 'sensor_msgs/msg/CompressedImage', typestore=typestore)
        info_conn = writer.add_connection(info_topic, 'sensor_msgs/msg/CameraInfo', typestore=typestore)
        for i in range(frames):
            frame = drive.frame(i)
            header = Header(seq=i, stamp=Time(sec=frame.stamp_ns // 10**9, nanosec=frame.stamp_ns % 10**9),
                            frame_id='camera')
            payload = encode_compressed(frame.rgb, 'jpeg').data
            if i in corrupt:
                payload = payload[:len(payload) // 2]
            payload = (replace or {}).get(i, payload)
            image = types['sensor_msgs/msg/CompressedImage'](header=header, format='jpeg',
                                                             data=np.frombuffer(payload, np.uint8))
            info = types['sensor_msgs/msg/CameraInfo'](
                header=header, height=drive.height, width=drive.width, distortion_model='plumb_bob',
                D=np.zeros(5), K=K.ravel(), R=np.eye(3).ravel(), P=np.hstack([K, np.zeros((3, 1))]).ravel(),
                binning_x=0, binning_y=0, roi=types['sensor_msgs/msg/RegionOfInterest'](
                    x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
            writer.write(info_conn, frame.stamp_ns, typestore.serialize_ros1(info, 'sensor_msgs/msg/CameraInfo'))
            writer.write(image_conn, frame.stamp_ns + 1000,
                         typestore.serialize_ros1(image, 'sensor_msgs/msg/CompressedImage'))
    return path


def test_ros1_bag_with_upper_case_camera_info_and_relative_topics(tmp_path):
    bag = write_ros1_camera_bag(tmp_path / 'pi.bag', frames=12)
    # Asked for with and without the leading '/', as a new user would.
    data = prepare_data(DataConfig(bags=[bag], width=W, height=H, image_topic='/camera/image_raw/compressed',
                                   camera_info_topic='camera/camera_info', val_fraction=0.0))
    try:
        assert len(data.store) == 12 and len(data.train) > 0
        from hr_depth_ros.core.synthetic import SyntheticDrive

        K = SyntheticDrive(width=W * 2, height=H * 2, num_frames=1).K
        np.testing.assert_allclose(data.store.K[0][0, 0], K[0, 0] / 2)
        np.testing.assert_allclose(data.store.K[0][1, 2], (K[1, 2] + 0.5) / 2 - 0.5)
    finally:
        data.close()


def test_ros1_bag_with_one_image_is_refused_clearly(tmp_path):
    bag = write_ros1_camera_bag(tmp_path / 'one.bag', frames=1)
    with pytest.raises(DataError, match='no consecutive frames') as info:
        prepare_data(DataConfig(bags=[bag], width=W, height=H, image_topic='camera/image_raw/compressed',
                                camera_info_topic='/camera/camera_info'))
    assert f'{bag}: 1 usable frames' in str(info.value)


def test_undecodable_frames_are_skipped_counted_and_a_bad_bag_refused(tmp_path):
    from hr_depth_ros.core.image_decoding import encode_compressed

    bomb = encode_compressed(np.zeros((8, 8, 3), np.uint8), 'png').data
    bomb = bomb[:16] + (9000).to_bytes(4, 'big') * 2 + bomb[24:]  # IHDR says 9000 x 9000 (81 MP)
    bag = write_ros1_camera_bag(tmp_path / 'some_bad.bag', frames=14, corrupt=(3, 7), replace={10: bomb})
    config = DataConfig(bags=[bag], width=W, height=H, image_topic='camera/image_raw/compressed',
                        camera_info_topic='camera/camera_info', val_fraction=0.0, min_motion=0.0)
    data = prepare_data(config)
    try:
        assert len(data.store) == 11 and data.report.skipped_frames == 3
        summary = data.report.summary()
        assert '3 undecodable frames skipped' in summary and '3 of 14 frames' in summary
        for i in range(len(data.store)):  # nothing zero-filled or partly decoded was stored
            assert data.store.image(i).std() > 5
    finally:
        data.close()
    bad = write_ros1_camera_bag(tmp_path / 'mostly_bad.bag', frames=6, corrupt=(0, 1, 2, 4))
    with pytest.raises(DataError, match=r'only 2 of 6 frames .* decode \(need 50%\)'):
        prepare_data(DataConfig(**{**vars(config), 'bags': [bad]}))
    bombed = write_ros1_camera_bag(tmp_path / 'bomb.bag', frames=4, replace={0: bomb})
    with pytest.raises(DataError, match='9000x9000 = 81.0 MP is above the limit of 50.0 MP'):
        prepare_data(DataConfig(**{**vars(config), 'bags': [bombed], 'min_decodable_fraction': 1.0}))


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3', 'ros1'])
def test_bag_cut_short_is_used_up_to_its_last_readable_frame(tmp_path, storage):
    config = DataConfig(bags=[], width=W, height=H, val_fraction=0.0)
    if storage == 'ros1':
        full = write_ros1_camera_bag(tmp_path / 'full.bag', frames=30)
        bag = data_file = tmp_path / 'cut.bag'
        config = DataConfig(**{**vars(config), 'image_topic': 'camera/image_raw/compressed',
                               'camera_info_topic': 'camera/camera_info'})
        raw = full.read_bytes()
    else:
        full = write_synthetic_bag(tmp_path / 'full', frames=30, width=320, height=96, storage=storage, seed=3)
        bag = tmp_path / 'cut'
        shutil.copytree(full, bag)
        data_file = next(p for p in bag.iterdir() if p.suffix in ('.mcap', '.db3'))
        raw = data_file.read_bytes()
    data_file.write_bytes(raw[:int(len(raw) * 0.6)])
    with pytest.raises(BagError, match='cut|corrupt|malformed|damaged'):  # refused without partial reading
        list(read_messages(bag, [config.image_topic]))
    data = prepare_data(DataConfig(**{**vars(config), 'bags': [bag]}))
    try:
        assert 5 <= len(data.store) < 30
        assert any(f'bag {bag}' in note and 'last readable' in note for note in data.report.notes)
        assert 'last readable' in data.report.summary()
        for i in range(len(data.store)):
            assert data.store.image(i).std() > 5
    finally:
        data.close()


def test_finetune_cli_trains_on_a_ros1_camera_bag(tmp_path, capsys):
    """The issue's report: finetune on a ROS 1 CompressedImage + CameraInfo bag died with AttributeError 'k'."""
    from hr_depth_ros.tools import finetune

    bag = write_ros1_camera_bag(tmp_path / 'pi.bag', frames=12)
    output = tmp_path / 'out'
    code = finetune.main(['--bag', str(bag), '--output', str(output), '--image-topic', 'camera/image_raw/compressed',
                          '--camera-info-topic', 'camera/camera_info', '--steps', '1', '--width', '128',
                          '--height', '64', '--batch-size', '2', '--device', 'cpu', '--quiet', '--val-fraction', '0'])
    assert code == 0, capsys.readouterr().err
    import json

    meta = json.loads((output / 'latest' / 'hr_depth_ros.json').read_text())
    assert meta['step'] == 1 and meta['samples']['train'] > 0
