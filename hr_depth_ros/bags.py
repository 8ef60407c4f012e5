"""Reading rosbags without ROS: rosbag2 (sqlite3, MCAP) and ROS 1 ``.bag`` through ``rosbags``.

Messages come back deserialised by ``rosbags``; their fields match ``sensor_msgs`` etc., so
:mod:`hr_depth_ros.image_decoding` works on them directly. Every failure (missing path, not a
bag, corrupt or truncated file, missing topic) is a :class:`BagError` that names the bag and
the reason.
"""
from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Union

from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

__all__ = ['BagError', 'BagPaths', 'open_reader', 'list_topics', 'topic_counts', 'read_messages', 'header_stamp_ns']

BagPaths = Union[str, Path, Sequence[Union[str, Path]]]

# Used only for rosbag2 files that carry no message definitions (written before Humble).
_FALLBACK_STORE = Stores.ROS2_HUMBLE


class BagError(RuntimeError):
    """A bag cannot be read: missing, unsupported, corrupt or truncated, or lacks a topic."""


def _resolve(path: str | Path) -> Path:
    """The path AnyReader wants: a rosbag2 directory (metadata.yaml) or a ROS 1 ``.bag`` file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BagError(f'bag {path} does not exist')
    if path.is_dir():
        if not (path / 'metadata.yaml').exists():
            raise BagError(f'bag {path}: directory has no metadata.yaml, so it is not a rosbag2 '
                           '(run `ros2 bag reindex` on it if it holds .db3/.mcap files)')
        return path
    if path.suffix == '.bag':
        return path
    if path.suffix in ('.mcap', '.db3') and (path.parent / 'metadata.yaml').exists():
        return path.parent
    raise BagError(f'bag {path}: not a rosbag2 directory (with metadata.yaml) or a ROS 1 .bag file')


def _as_path_list(paths: BagPaths) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [_resolve(paths)]
    resolved = [_resolve(p) for p in paths]
    if not resolved:
        raise BagError('no bag paths given')
    return resolved


@contextmanager
def open_reader(path: str | Path) -> Iterator[AnyReader]:
    """Open one bag as an open ``rosbags`` AnyReader (context manager), errors as BagError.

    rosbag2 files without stored message definitions are read with the Humble typestore.
    """
    bag = _resolve(path)
    try:
        reader = AnyReader([bag], default_typestore=get_typestore(_FALLBACK_STORE))
        reader.open()
    except BagError:
        raise
    except Exception as exc:  # rosbags raises many types for bad files (ReaderError, OSError, ...)
        raise BagError(f'bag {bag}: cannot open: {type(exc).__name__}: {exc} (corrupt or truncated? '
                       'a bag from an interrupted recording may need `ros2 bag reindex`)') from exc
    try:
        yield reader
    finally:
        try:
            reader.close()
        except Exception:  # a reader that failed mid-read may already be unusable
            pass


def list_topics(path: str | Path) -> dict[str, str]:
    """Topic -> message type (e.g. ``sensor_msgs/msg/Image``) of one bag."""
    with open_reader(path) as reader:
        return {conn.topic: conn.msgtype for conn in reader.connections}


def topic_counts(path: str | Path) -> dict[str, int]:
    """Topic -> number of messages of one bag (from its index/metadata, no reading)."""
    with open_reader(path) as reader:
        counts: dict[str, int] = {}
        for conn in reader.connections:
            counts[conn.topic] = counts.get(conn.topic, 0) + int(conn.msgcount)
        return counts


def header_stamp_ns(msg: Any) -> int | None:
    """``header.stamp`` in nanoseconds, or None for messages without a header."""
    header = getattr(msg, 'header', None)
    stamp = getattr(header, 'stamp', None)
    if stamp is None:
        return None
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _describe(reader: AnyReader) -> str:
    return ', '.join(f'{c.topic} ({c.msgtype})' for c in sorted(reader.connections, key=lambda c: c.topic)) or 'none'


def _bag_messages(reader: AnyReader, bag: Path, topics: Iterable[str] | None) -> Iterator[tuple[str, int, int | None, Any]]:
    if topics is None:
        connections = list(reader.connections)
    else:
        wanted = list(topics)
        available = {c.topic for c in reader.connections}
        missing = [t for t in wanted if t not in available]
        if missing:
            raise BagError(f'bag {bag} has no topic {", ".join(missing)}; its topics are: {_describe(reader)}')
        connections = [c for c in reader.connections if c.topic in wanted]
    if not connections:  # rosbags reads every connection when given none
        return
    try:
        for conn, timestamp, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, conn.msgtype)
            yield conn.topic, int(timestamp), header_stamp_ns(msg), msg
    except BagError:
        raise
    except Exception as exc:  # truncated / corrupt data surfaces only while reading
        raise BagError(f'bag {bag}: failed while reading messages (corrupt or truncated?): '
                       f'{type(exc).__name__}: {exc}') from exc


def read_messages(paths: BagPaths, topics: Sequence[str] | None = None) -> Iterator[tuple[str, int, int | None, Any]]:
    """Yield ``(topic, timestamp_ns, header_stamp_ns | None, msg)`` in time order.

    ``paths`` is one bag or a list of bags (merged by receive timestamp). ``topics`` selects
    topics (``None``: all); each bag must have every requested topic, otherwise BagError
    names the bag and the topic and lists what the bag has.
    """
    bags = _as_path_list(paths)
    if isinstance(topics, str):
        topics = [topics]
    with ExitStack() as stack:
        streams = [_bag_messages(stack.enter_context(open_reader(bag)), bag, topics) for bag in bags]
        if len(streams) == 1:
            yield from streams[0]
        else:
            yield from heapq.merge(*streams, key=lambda item: item[1])
