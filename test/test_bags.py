"""Tests for hr_depth_ros.core.bags: rosbag2 (mcap, sqlite3), ROS 1 bags, and every failure mode."""
from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag1 import Writer as Writer1
from rosbags.rosbag2 import StoragePlugin, Writer as Writer2
from rosbags.typesys import Stores, get_typestore

from hr_depth_ros.core import bags
from hr_depth_ros.core.bags import BagError
from hr_depth_ros.core.image_decoding import image_to_rgb, rgb_to_image_fields

FRAMES = 4
T0 = 1_700_000_000 * 10**9


def frame_rgb(i: int) -> np.ndarray:
    return np.full((6, 8, 3), (10 * i, 20, 30), dtype=np.uint8)


def build_messages(typestore):
    """(topic, msgtype, timestamp_ns, msg) for FRAMES images and strings, interleaved in time."""
    types = typestore.types
    Image, Header, Time, String = (types['sensor_msgs/msg/Image'], types['std_msgs/msg/Header'],
                                   types['builtin_interfaces/msg/Time'], types['std_msgs/msg/String'])
    ros1 = 'seq' in Header.__dataclass_fields__
    out = []
    for i in range(FRAMES):
        stamp = T0 + i * 100_000_000
        header_args = dict(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id='cam')
        header = Header(seq=i, **header_args) if ros1 else Header(**header_args)
        out.append(('/camera/image_raw', 'sensor_msgs/msg/Image', stamp + 5_000_000,
                    Image(header=header, **rgb_to_image_fields(frame_rgb(i)))))
        out.append(('/chatter', 'std_msgs/msg/String', stamp + 1_000_000, String(data=f'hello {i}')))
    return out


def write_all(writer, typestore, serialize) -> None:
    """Write build_messages() through an open rosbags writer (rosbag1 or rosbag2)."""
    connections = {}
    for topic, msgtype, stamp, msg in build_messages(typestore):
        if topic not in connections:
            connections[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
        writer.write(connections[topic], stamp, serialize(msg, msgtype))


def write_rosbag2(path: Path, storage: str) -> Path:
    typestore = get_typestore(Stores.LATEST)
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    with Writer2(path, version=9, storage_plugin=plugin) as writer:
        write_all(writer, typestore, typestore.serialize_cdr)
    return path


def write_rosbag1(path: Path) -> Path:
    typestore = get_typestore(Stores.ROS1_NOETIC)
    with Writer1(path) as writer:
        write_all(writer, typestore, typestore.serialize_ros1)
    return path


@pytest.fixture(scope='module')
def bag_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('bags')


@pytest.fixture(scope='module')
def written_bags(bag_dir) -> dict[str, Path]:
    return {
        'mcap': write_rosbag2(bag_dir / 'b_mcap', 'mcap'),
        'sqlite3': write_rosbag2(bag_dir / 'b_sqlite', 'sqlite3'),
        'ros1': write_rosbag1(bag_dir / 'b.bag'),
    }


@pytest.mark.parametrize('kind', ['mcap', 'sqlite3', 'ros1'])
def test_read_back_every_format(written_bags, kind):
    path = written_bags[kind]
    assert bags.list_topics(path) == {'/camera/image_raw': 'sensor_msgs/msg/Image', '/chatter': 'std_msgs/msg/String'}
    assert bags.topic_counts(path) == {'/camera/image_raw': FRAMES, '/chatter': FRAMES}
    items = list(bags.read_messages(path, ['/camera/image_raw', '/chatter']))
    assert [t for t, *_ in items] == ['/chatter', '/camera/image_raw'] * FRAMES
    stamps = [ts for _, ts, _, _ in items]
    assert stamps == sorted(stamps)
    images = [(ts, hs, msg) for topic, ts, hs, msg in items if topic == '/camera/image_raw']
    for i, (ts, hs, msg) in enumerate(images):
        assert hs == T0 + i * 100_000_000 and ts == hs + 5_000_000
        np.testing.assert_array_equal(image_to_rgb(msg), frame_rgb(i))
    strings = [(hs, msg) for topic, _, hs, msg in items if topic == '/chatter']
    assert strings[2][0] is None and strings[2][1].data == 'hello 2'
    # Topic selection.
    only = list(bags.read_messages(path, ['/chatter']))
    assert len(only) == FRAMES and {t for t, *_ in only} == {'/chatter'}
    assert list(bags.read_messages(path, [])) == []
    assert len(list(bags.read_messages(path))) == 2 * FRAMES


def test_the_db3_or_mcap_file_inside_a_bag_dir_is_accepted(written_bags):
    db3 = next(written_bags['sqlite3'].glob('*.db3'))
    assert bags.list_topics(db3) == bags.list_topics(written_bags['sqlite3'])


def test_several_bags_merge_in_time_order(written_bags, bag_dir):
    later = bag_dir / 'later.bag'
    typestore = get_typestore(Stores.ROS1_NOETIC)
    String = typestore.types['std_msgs/msg/String']
    with Writer1(later) as writer:
        conn = writer.add_connection('/chatter', 'std_msgs/msg/String', typestore=typestore)
        writer.write(conn, T0 + 150_000_000, typestore.serialize_ros1(String(data='between'), 'std_msgs/msg/String'))
    items = list(bags.read_messages([written_bags['ros1'], later], ['/chatter']))
    assert [m.data for *_, m in items] == ['hello 0', 'hello 1', 'between', 'hello 2', 'hello 3']


def test_missing_topic_names_bag_topic_and_lists_topics(written_bags):
    path = written_bags['mcap']
    with pytest.raises(BagError) as info:
        list(bags.read_messages(path, ['/camera/image_raw', '/camera/camera_info']))
    text = str(info.value)
    assert str(path) in text and '/camera/camera_info' in text
    assert '/camera/image_raw (sensor_msgs/msg/Image)' in text and '/chatter (std_msgs/msg/String)' in text


def test_missing_and_non_bag_paths(tmp_path):
    with pytest.raises(BagError, match='does not exist'):
        bags.list_topics(tmp_path / 'nope')
    with pytest.raises(BagError, match='no metadata.yaml'):
        bags.list_topics(tmp_path)
    text_file = tmp_path / 'notes.txt'
    text_file.write_text('hello')
    with pytest.raises(BagError, match='not a rosbag2'):
        list(bags.read_messages(text_file, ['/x']))
    fake = tmp_path / 'fake.bag'
    fake.write_bytes(b'this is not a ROS 1 bag' * 10)
    with pytest.raises(BagError, match=f'{fake}.*cannot open'):
        bags.list_topics(fake)


@pytest.mark.parametrize('kind', ['mcap', 'sqlite3', 'ros1'])
def test_truncated_bag_is_a_bag_error(written_bags, tmp_path, kind):
    import shutil

    source = written_bags[kind]
    target = tmp_path / source.name
    if source.is_dir():
        shutil.copytree(source, target)
        data_file = next(p for p in target.iterdir() if p.suffix in ('.mcap', '.db3'))
    else:
        shutil.copy(source, target)
        data_file = target
    raw = data_file.read_bytes()
    data_file.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BagError, match=str(target)):
        list(bags.read_messages(target, ['/camera/image_raw']))


def test_rosbag2_without_stored_definitions_uses_fallback_typestore(bag_dir):
    path = write_rosbag2(bag_dir / 'no_defs', 'sqlite3')
    db3 = next(path.glob('*.db3'))
    with sqlite3.connect(db3) as db:
        db.execute('DELETE FROM message_definitions')
    # Without a fallback, rosbags refuses such a bag; bags.py reads it with the Humble typestore.
    from rosbags.highlevel import AnyReader

    with pytest.raises(Exception, match='no type definitions'):
        with AnyReader([path]):
            pass
    items = list(bags.read_messages(path, ['/camera/image_raw']))
    assert len(items) == FRAMES
    np.testing.assert_array_equal(image_to_rgb(items[3][3]), frame_rgb(3))


@pytest.mark.parametrize('kind', ['mcap', 'sqlite3'])
def test_truncated_rosbag2_is_read_to_its_last_readable_message_when_asked(tmp_path, kind):
    from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag

    full = write_synthetic_bag(tmp_path / 'full', frames=20, width=64, height=32, storage=kind)
    expected = [msg for _, _, _, msg in bags.read_messages(full, ['/camera/image_raw'])]
    target = write_synthetic_bag(tmp_path / kind, frames=20, width=64, height=32, storage=kind)
    data_file = next(p for p in target.iterdir() if p.suffix in ('.mcap', '.db3'))
    raw = data_file.read_bytes()
    data_file.write_bytes(raw[: len(raw) // 2])
    notes: list[str] = []
    items = list(bags.read_messages(target, ['camera/image_raw'], on_partial=notes.append))
    assert 5 <= len(items) < 20
    for (_, _, _, msg), original in zip(items, expected):  # a prefix, every message whole
        np.testing.assert_array_equal(image_to_rgb(msg), image_to_rgb(original))
    assert len(notes) == 1 and str(target) in notes[0] and f'read {len(items)} messages' in notes[0]
    assert bags.list_topics(target, partial=True)['/camera/image_raw'] == 'sensor_msgs/msg/Image'
    assert bags.topic_counts(target, partial=True)['/camera/image_raw'] == len(items)
    assert not list(Path(tempfile.gettempdir()).glob('hr_depth_salvage-*/' + data_file.name))  # copies removed


def test_topics_without_leading_slash_are_absolute(bag_dir):
    path = bag_dir / 'relative.bag'
    typestore = get_typestore(Stores.ROS1_NOETIC)
    String = typestore.types['std_msgs/msg/String']
    with Writer1(path) as writer:
        conn = writer.add_connection('chatter', 'std_msgs/msg/String', typestore=typestore)
        writer.write(conn, T0, typestore.serialize_ros1(String(data='hi'), 'std_msgs/msg/String'))
    assert bags.list_topics(path) == {'/chatter': 'std_msgs/msg/String'}
    assert bags.topic_counts(path) == {'/chatter': 1}
    for name in ('chatter', '/chatter'):
        assert [(t, m.data) for t, _, _, m in bags.read_messages(path, [name])] == [('/chatter', 'hi')]


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_a_rosbag2_folder_without_metadata_is_a_bag_everywhere(tmp_path, storage):
    """One rule (bags.is_bag): a folder of .db3/.mcap files whose recorder never wrote metadata.yaml."""
    from hr_depth_ros.core.quantization import CalibrationError, CalibrationSource, load_calibration
    from hr_depth_ros.core.training.sources import expand_bags

    complete = write_rosbag2(tmp_path / 'complete', storage)
    cut = write_rosbag2(tmp_path / 'robots' / 'cut', storage)
    (cut / 'metadata.yaml').unlink()
    (tmp_path / 'notes').mkdir()
    (tmp_path / 'notes' / 'a.txt').write_text('x')
    assert bags.is_bag(complete) and bags.is_bag(complete, complete=True)
    assert bags.is_bag(cut) and not bags.is_bag(cut, complete=True)
    assert not bags.is_bag(tmp_path / 'notes') and not bags.is_bag(tmp_path / 'notes' / 'a.txt')
    assert not bags.is_bag(tmp_path / 'missing')
    assert expand_bags([tmp_path / 'robots']) == [cut]  # found by --bag folders
    with pytest.raises(BagError) as info:  # a complete read is refused, naming the bag and the missing file
        bags.list_topics(cut)
    assert str(cut) in str(info.value) and 'metadata.yaml' in str(info.value)
    assert bags.list_topics(cut, partial=True) == bags.list_topics(complete)  # read as a partial bag
    assert bags.topic_counts(cut, partial=True)['/camera/image_raw'] == FRAMES
    notes: list[str] = []
    items = list(bags.read_messages(cut, ['/camera/image_raw'], on_partial=notes.append))
    assert len(items) == FRAMES and len(notes) == 1 and str(cut) in notes[0]
    with pytest.raises(CalibrationError) as info:  # a bag to calibrate from, not a folder of images
        load_calibration(CalibrationSource(path=str(cut)), 64, 32)
    assert str(cut) in str(info.value) and 'metadata.yaml' in str(info.value)
