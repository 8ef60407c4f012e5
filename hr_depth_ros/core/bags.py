"""Reading rosbags without ROS: rosbag2 (sqlite3, MCAP) and ROS 1 ``.bag`` through ``rosbags``.

Messages come back deserialised by ``rosbags``; their fields match ``sensor_msgs`` etc., so
:mod:`hr_depth_ros.core.image_decoding` works on them directly. Every failure (missing path, not a
bag, corrupt or truncated file, missing topic) is a :class:`BagError` that names the bag and
the reason.

Topic names are reported and matched in their absolute form (``camera/image`` in a ROS 1 bag is
``/camera/image`` here, and may be asked for either way).

Partial bags: with ``partial=True`` / ``on_partial=...`` a bag cut short (a recorder that lost
power) is read up to its last readable message instead of refused: rosbag2 MCAP files are
scanned record by record, sqlite3 files read row by row (from a header-repaired temporary
copy) and ROS 1 bags scanned record by record (their index is at the end) when ``rosbags``
cannot open them; a bag that fails while being read ends there; messages that do not
deserialise are skipped. ``on_partial`` receives one line per bag saying what happened.
"""
from __future__ import annotations

import heapq
import io
import mmap
import shutil
import sqlite3
import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Union

from rosbags.highlevel import AnyReader
from rosbags.rosbag1.reader import Header as Ros1Header
from rosbags.rosbag1.reader import ReaderError as Ros1ReaderError
from rosbags.rosbag1.reader import RecordType as Ros1Record
from rosbags.rosbag1.reader import decompressors as ros1_decompressors
from rosbags.rosbag2.storage_mcap import decompress as mcap_decompress
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.msg import normalize_msgtype

__all__ = ['BagError', 'BagPaths', 'is_bag', 'open_reader', 'list_topics', 'topic_counts', 'inspect_bag', 'read_messages',
           'header_stamp_ns', 'canonical_topic']

BagPaths = Union[str, Path, Sequence[Union[str, Path]]]

# Used only for rosbag2 files that carry no message definitions (written before Humble).
_FALLBACK_STORE = Stores.ROS2_HUMBLE


class BagError(RuntimeError):
    """A bag cannot be read: missing, unsupported, corrupt or truncated, or lacks a topic."""


ROSBAG2_FILES = ('.db3', '.mcap')  # rosbag2 storage files (sqlite3, MCAP)


def is_bag(path: str | Path, complete: bool = False) -> bool:
    """Whether ``path`` is a bag: a ROS 1 ``.bag`` file or a rosbag2 folder.

    A rosbag2 folder has ``metadata.yaml``, or (a recording cut short before the recorder wrote it) holds
    ``.db3`` / ``.mcap`` files; ``complete`` asks for the ``metadata.yaml`` (what a finished recording has).
    The one rule every caller uses (``--bag`` folders, calibration sources, the readers here).
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path.suffix == '.bag'
    if not path.is_dir():
        return False
    if (path / 'metadata.yaml').is_file():
        return True
    return not complete and any(child.suffix in ROSBAG2_FILES and child.is_file() for child in path.iterdir())


def _resolve(path: str | Path, partial: bool = False) -> Path:
    """The path AnyReader wants: a rosbag2 directory or a ROS 1 ``.bag`` file.

    A rosbag2 folder without metadata.yaml (:func:`is_bag`) is read only with ``partial`` (its
    storage files scanned, :class:`_Salvage`).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise BagError(f'bag {path} does not exist')
    if path.is_dir():
        if is_bag(path, complete=not partial):
            return path
        if is_bag(path):
            raise BagError(f'bag {path}: directory has no metadata.yaml (a recording cut short?): run '
                           '`ros2 bag reindex` on it, or read it as a partial bag')
        raise BagError(f'bag {path}: directory has no metadata.yaml and no .db3/.mcap file, so it is not a rosbag2')
    if path.suffix == '.bag':
        return path
    if path.suffix in ROSBAG2_FILES and (path.parent / 'metadata.yaml').exists():
        return path.parent
    raise BagError(f'bag {path}: not a rosbag2 directory (with metadata.yaml) or a ROS 1 .bag file')


def _as_path_list(paths: BagPaths, partial: bool = False) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [_resolve(paths, partial)]
    resolved = [_resolve(p, partial) for p in paths]
    if not resolved:
        raise BagError('no bag paths given')
    return resolved


@contextmanager
def open_reader(path: str | Path) -> Iterator[AnyReader]:
    """Open one bag as an open ``rosbags`` AnyReader (context manager), errors as BagError.

    rosbag2 files without stored message definitions are read with the Humble typestore.
    """
    with _open_or_salvage(path, partial=False) as reader:
        yield reader


@contextmanager
def _open_or_salvage(path: str | Path, partial: bool) -> Iterator[AnyReader | _Salvage]:
    """An open AnyReader; with ``partial``, a :class:`_Salvage` of a rosbag2 that rosbags cannot open."""
    bag = _resolve(path, partial)
    try:
        reader = AnyReader([bag], default_typestore=get_typestore(_FALLBACK_STORE))
        reader.open()
    except Exception as exc:  # rosbags raises many types for bad files (ReaderError, OSError, ...)
        reason = f'{type(exc).__name__}: {exc}'
        if not partial:
            reindex = 'rosbag reindex' if bag.suffix == '.bag' else 'ros2 bag reindex'
            raise BagError(f'bag {bag}: cannot open: {reason} (corrupt or truncated? a bag from an '
                           f'interrupted recording may need `{reindex}`)') from exc
        salvage = _Salvage(bag, f'cut short or corrupt ({reason})')
        try:
            yield salvage
        finally:
            salvage.close()
        return
    try:
        yield reader
    finally:
        try:
            reader.close()
        except Exception:  # a reader that failed mid-read may already be unusable
            pass


def canonical_topic(name: str) -> str:
    """The absolute form of a topic name (ROS 1 bags may record ``camera/image`` without the ``/``)."""
    return '/' + str(name).lstrip('/')


def list_topics(path: str | Path, partial: bool = False) -> dict[str, str]:
    """Topic -> message type (e.g. ``sensor_msgs/msg/Image``) of one bag (``partial``: see module doc)."""
    return inspect_bag(path, partial)[0]


def topic_counts(path: str | Path, partial: bool = False) -> dict[str, int]:
    """Topic -> number of messages of one bag (from its index; of a partial bag: what is readable)."""
    return inspect_bag(path, partial)[1]


def inspect_bag(path: str | Path, partial: bool = False) -> tuple[dict[str, str], dict[str, int]]:
    """(topic -> message type, topic -> number of messages) of one bag, opening it once."""
    with _open_or_salvage(path, partial) as reader:
        if isinstance(reader, _Salvage):
            return dict(reader.topics), {topic: reader.counts.get(topic, 0) for topic in reader.topics}
        topics: dict[str, str] = {}
        counts: dict[str, int] = {}
        for conn in reader.connections:
            topic = canonical_topic(conn.topic)
            topics[topic] = conn.msgtype
            counts[topic] = counts.get(topic, 0) + int(conn.msgcount)
        return topics, counts


def header_stamp_ns(msg: Any) -> int | None:
    """``header.stamp`` in nanoseconds, or None for messages without a header."""
    header = getattr(msg, 'header', None)
    stamp = getattr(header, 'stamp', None)
    if stamp is None:
        return None
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _describe(topics: dict[str, str]) -> str:
    return ', '.join(f'{topic} ({msgtype})' for topic, msgtype in sorted(topics.items())) or 'none'


def _wanted(bag: Path, available: dict[str, str], topics: Iterable[str] | None) -> set[str]:
    if topics is None:
        return set(available)
    wanted = {canonical_topic(t) for t in topics}
    missing = sorted(wanted - set(available))
    if missing:
        raise BagError(f'bag {bag} has no topic {", ".join(missing)}; its topics are: {_describe(available)}')
    return wanted


Message = tuple[str, int, 'int | None', Any]
PartialCallback = Callable[[str], None]


def _bag_messages(reader: AnyReader, bag: Path, topics: Iterable[str] | None,
                  on_partial: PartialCallback | None) -> Iterator[Message]:
    available = {canonical_topic(c.topic): c.msgtype for c in reader.connections}
    wanted = _wanted(bag, available, topics)
    connections = [c for c in reader.connections if canonical_topic(c.topic) in wanted]
    if not connections:  # rosbags reads every connection when given none
        return
    count = 0
    skipped = 0
    last, at_last = -(2**63), 0  # the latest timestamp read and how many messages had it
    try:
        for conn, timestamp, raw in reader.messages(connections=connections):
            last, at_last = (last, at_last + 1) if timestamp == last else (int(timestamp), 1)
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception:
                if on_partial is None:
                    raise
                skipped += 1
                continue
            count += 1
            yield canonical_topic(conn.topic), int(timestamp), header_stamp_ns(msg), msg
    except BagError:
        raise
    except Exception as exc:  # truncated / corrupt data surfaces only while reading
        reason = f'{type(exc).__name__}: {exc}'
        if on_partial is None:
            raise BagError(f'bag {bag}: failed while reading messages (corrupt or truncated?): {reason}') from exc
        if bag.is_dir() and any(path.suffix == '.mcap' for path in bag.iterdir()):
            # rosbags stops at a corrupt MCAP chunk; the scanner skips it (counted) and reads the chunks after it
            try:
                salvage = _Salvage(bag, f'corrupt data after {count} messages ({reason})')
            except BagError:
                salvage = None
            if salvage is not None:
                try:
                    yield from _salvaged_messages(salvage, bag, topics, on_partial, after=(last, at_last))
                finally:
                    salvage.close()
                return
        on_partial(f'bag {bag}: reading stopped after {count} messages ({reason}); used what was readable'
                   + (f', {skipped} undecodable messages skipped' if skipped else ''))
        return
    if skipped and on_partial is not None:
        on_partial(f'bag {bag}: {skipped} undecodable messages skipped')


def _salvaged_messages(salvage: _Salvage, bag: Path, topics: Iterable[str] | None,
                       on_partial: PartialCallback, after: tuple[int, int] | None = None) -> Iterator[Message]:
    """The readable messages of ``salvage``; ``after = (stamp, n)``: only those after the first ``n``
    messages at ``stamp`` (what a reader that failed there had already given)."""
    wanted = _wanted(bag, salvage.topics, topics)
    typestore = salvage.typestore()
    deserialize = typestore.deserialize_ros1 if salvage.ros1 else typestore.deserialize_cdr
    count = skipped = 0
    last, at_last = after if after is not None else (-(2**63), 0)
    for topic, timestamp, raw in salvage.raw():
        if topic not in wanted or timestamp < last:
            continue
        if timestamp == last and at_last > 0:
            at_last -= 1
            continue
        try:
            msg = deserialize(raw, salvage.topics[topic])
        except Exception:  # a message cut or corrupted: never yield part of it
            skipped += 1
            continue
        count += 1
        yield topic, timestamp, header_stamp_ns(msg), msg
    on_partial(f'bag {bag}: {salvage.reason}; read {count} ' + ('more ' if after is not None else '')
               + 'messages up to the last readable one' + (f' ({salvage.stopped})' if salvage.stopped else '')
               + (f', {salvage.bad_chunks} corrupt chunks skipped (first: {salvage.bad_chunk})'
                  if salvage.bad_chunks else '')
               + (f', {skipped} undecodable messages skipped' if skipped else ''))


def read_messages(paths: BagPaths, topics: Sequence[str] | None = None,
                  on_partial: PartialCallback | None = None) -> Iterator[Message]:
    """Yield ``(topic, timestamp_ns, header_stamp_ns | None, msg)`` in time order.

    ``paths`` is one bag or a list of bags (merged by receive timestamp). ``topics`` selects
    topics (``None``: all); each bag must have every requested topic, otherwise BagError
    names the bag and the topic and lists what the bag has. With ``on_partial``, bags cut short
    are read to their last readable message and ``on_partial`` is told (see the module doc).
    """
    bags = _as_path_list(paths, on_partial is not None)
    if isinstance(topics, str):
        topics = [topics]
    with ExitStack() as stack:
        streams = []
        for bag in bags:
            reader = stack.enter_context(_open_or_salvage(bag, on_partial is not None))
            if isinstance(reader, _Salvage):
                streams.append(_salvaged_messages(reader, bag, topics, on_partial))
            else:
                streams.append(_bag_messages(reader, bag, topics, on_partial))
        if len(streams) == 1:
            yield from streams[0]
        else:
            yield from heapq.merge(*streams, key=lambda item: item[1])


# ---------------------------------------------------------------------------------------------
# Reading what is left of a rosbag2 that rosbags cannot open

_MCAP_MAGIC = b'\x89MCAP0\r\n'
_SQLITE_PAGE_SIZE_AT, _SQLITE_PAGES_AT = 16, 28


class _Salvage:
    """The readable prefix of a bag's storage files (MCAP, sqlite3 or ROS 1), in file order."""

    def __init__(self, bag: Path, reason: str) -> None:
        self.bag = bag
        self.reason = reason
        self.stopped: str | None = None
        self.bad_chunks = 0  # MCAP chunks skipped because they do not decompress (the scan goes on after them)
        self.bad_chunk: str | None = None
        self._copies: list[Path] = []
        self.ros1 = bag.suffix == '.bag'
        self.files = [bag] if self.ros1 else sorted(p for p in bag.iterdir() if p.suffix in ROSBAG2_FILES)
        if not self.files:
            raise BagError(f'bag {bag}: {reason}, and it holds no .mcap / .db3 file to read')
        self.topics: dict[str, str] = {}
        self._schemas: dict[str, str] = {}
        # One pass collects the topics and their readable messages (cheap: nothing is deserialised).
        self.counts = Counter(topic for topic, _, _ in self.raw())
        readable = sum(self.counts.values())
        if not self.topics or (not readable and self.stopped):  # e.g. a corrupt page of sqlite's messages table
            self.close()
            raise BagError(f'bag {bag}: {reason}; nothing readable in {", ".join(p.name for p in self.files)}'
                           + (f' (the file is corrupt: {self.stopped})' if self.stopped else ''))

    def typestore(self) -> Any:
        """The fallback typestore plus the message definitions stored in the files."""
        typestore = get_typestore(Stores.ROS1_NOETIC if self.ros1 else _FALLBACK_STORE)
        for name, text in self._schemas.items():
            if name not in typestore.types:
                try:
                    typestore.register(get_types_from_msg(text, name))
                except Exception:  # noqa: BLE001 - an unparsable definition: its messages are skipped later
                    pass
        return typestore

    def raw(self) -> Iterator[tuple[str, int, bytes]]:
        """``(topic, timestamp_ns, serialized message)`` of every readable message."""
        self.stopped = None
        self.bad_chunks, self.bad_chunk = 0, None
        for path in self.files:
            reader = {'.mcap': self._mcap, '.db3': self._sqlite, '.bag': self._ros1}[path.suffix]
            yield from reader(path)

    def _ros1(self, path: Path) -> Iterator[tuple[str, int, bytes]]:
        with open(path, 'rb') as stream:
            if stream.read(13) != b'#ROSBAG V2.0\n':
                self.stopped = f'{path.name} is not a ROS 1 bag (version 2.0)'
                return
            yield from self._ros1_records(stream, path.stat().st_size, path.name, {})

    def _ros1_records(self, src: Any, end: int, name: str,
                      connections: dict[int, str]) -> Iterator[tuple[str, int, bytes]]:
        """Records of a ROS 1 bag (or of one of its chunks) from ``src`` up to ``end``."""
        while src.tell() < end:
            start = src.tell()
            try:
                header = Ros1Header.read(src)
                op = header.get_uint8('op')
                length = struct.unpack('<I', src.read(4))[0]
                data = src.read(length)
                if op == Ros1Record.CHUNK:
                    compression = header.get_string('compression')
                    if len(data) < length and compression != 'none':
                        raise Ros1ReaderError(f'compressed chunk cut short at byte {start}')
                    records = ros1_decompressors[compression](data)
                    yield from self._ros1_records(io.BytesIO(records), len(records), name, connections)
                    if len(data) < length:  # an uncompressed chunk cut short: its complete records were used
                        raise Ros1ReaderError(f'chunk cut short at byte {start}')
                elif len(data) < length:
                    raise Ros1ReaderError(f'record cut short at byte {start}')
                elif op == Ros1Record.CONNECTION:
                    fields = Ros1Header.read(io.BytesIO(struct.pack('<I', len(data)) + data))
                    topic = canonical_topic(header.get_string('topic'))
                    msgtype = normalize_msgtype(fields.get_string('type'))
                    connections[header.get_uint32('conn')] = topic
                    self.topics.setdefault(topic, msgtype)
                    self._schemas.setdefault(msgtype, fields.get_string('message_definition'))
                elif op == Ros1Record.MSGDATA:
                    topic = connections.get(header.get_uint32('conn'))
                    if topic is not None:
                        yield topic, header.get_time('time'), data
            except (Ros1ReaderError, struct.error, KeyError, ValueError) as error:
                self.stopped = f'{name}: {error}'
                return

    def _mcap(self, path: Path) -> Iterator[tuple[str, int, bytes]]:
        with open(path, 'rb') as stream:
            if stream.read(8) != _MCAP_MAGIC:
                self.stopped = f'{path.name} is not an MCAP file'
                return
            stream.seek(0, 2)
            if stream.tell() <= 8:
                self.stopped = f'{path.name} is empty'
                return
            data = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                schemas: dict[int, tuple[str, str]] = {}
                channels: dict[int, tuple[str, str]] = {}
                yield from self._mcap_records(memoryview(data), 8, path.name, schemas, channels)
            finally:
                try:
                    data.close()
                except BufferError:  # a memoryview still alive in an abandoned generator
                    pass

    def _mcap_records(self, buf: memoryview, pos: int, name: str, schemas: dict[int, tuple[str, str]],
                      channels: dict[int, tuple[str, str]]) -> Iterator[tuple[str, int, bytes]]:
        end = len(buf)
        while pos < end:
            if pos + 9 > end:
                self.stopped = f'{name} ends inside a record header at byte {pos}'
                return
            op, length = buf[pos], struct.unpack_from('<Q', buf, pos + 1)[0]
            start, pos = pos + 9, pos + 9 + length
            if pos > end:
                self.stopped = f'{name} ends inside a record at byte {start - 9}'
                if op == 0x06:  # an uncompressed chunk cut short: its complete messages are still readable
                    yield from self._partial_chunk(buf[start:end], name, schemas, channels)
                return
            body = buf[start:pos]
            try:
                if op == 0x03:  # schema: id, name, encoding, data
                    schema_id = struct.unpack_from('<H', body)[0]
                    schema_name, at = _mcap_string(body, 2)
                    _, at = _mcap_string(body, at)
                    text, _ = _mcap_string(body, at)
                    schemas[schema_id] = (schema_name, text)
                    self._schemas[schema_name] = text
                elif op == 0x04:  # channel: id, schema id, topic, ...
                    channel_id, schema_id = struct.unpack_from('<HH', body)
                    topic, _ = _mcap_string(body, 4)
                    if schema_id in schemas:
                        channels[channel_id] = (canonical_topic(topic), schemas[schema_id][0])
                        self.topics.setdefault(*channels[channel_id])
                elif op == 0x05:  # message: channel id, sequence, log time, publish time, data
                    channel_id, _, log_time = struct.unpack_from('<HIQ', body)
                    if channel_id in channels:
                        yield channels[channel_id][0], int(log_time), bytes(body[22:])
                elif op == 0x06:  # chunk: start, end, size, crc, compression, records
                    try:
                        size, crc = struct.unpack_from('<QI', body, 16)
                        compression, at = _mcap_string(body, 28)
                        records_length = struct.unpack_from('<Q', body, at)[0]
                        records = mcap_decompress(bytes(body[at + 8:at + 8 + records_length]), compression, size,
                                                  crc)
                    except Exception as error:  # noqa: BLE001 - its length is intact: skip it, read on
                        self.bad_chunks += 1
                        self.bad_chunk = self.bad_chunk or (f'{name} byte {start - 9}: {type(error).__name__}: '
                                                            f'{error}')
                        continue
                    yield from self._mcap_records(memoryview(records), 0, name, schemas, channels)
                    if self.stopped:
                        return
                elif op == 0x0F:  # data end: only summary records follow
                    return
            except Exception as error:  # noqa: BLE001 - struct, decompression, text: all end the scan
                self.stopped = f'{name}: unreadable record at byte {start - 9}: {type(error).__name__}: {error}'
                return

    def _partial_chunk(self, body: memoryview, name: str, schemas: dict[int, tuple[str, str]],
                       channels: dict[int, tuple[str, str]]) -> Iterator[tuple[str, int, bytes]]:
        stopped = self.stopped
        try:
            compression, at = _mcap_string(body, 28)
        except (struct.error, ValueError, UnicodeDecodeError):
            return
        if compression == '':
            yield from self._mcap_records(body[at + 8:], 0, name, schemas, channels)
        self.stopped = stopped

    def _sqlite(self, path: Path) -> Iterator[tuple[str, int, bytes]]:
        copy = self._repaired_copy(path)
        try:
            db = sqlite3.connect(f'file:{copy}?mode=ro&immutable=1', uri=True)
        except sqlite3.Error as error:
            self.stopped = f'{path.name}: {error}'
            return
        try:
            try:
                rows = db.execute('SELECT id, name, type FROM topics').fetchall()
            except sqlite3.Error as error:
                self.stopped = f'{path.name}: topics table unreadable: {error}'
                return
            by_id = {int(i): (canonical_topic(topic), msgtype) for i, topic, msgtype in rows}
            for topic, msgtype in by_id.values():
                self.topics.setdefault(topic, msgtype)
            try:
                for topic_id, timestamp, data in db.execute(
                        'SELECT topic_id, timestamp, data FROM messages ORDER BY id'):
                    if int(topic_id) in by_id:
                        yield by_id[int(topic_id)][0], int(timestamp), bytes(data)
            except sqlite3.Error as error:
                self.stopped = f'{path.name}: {error}'
        finally:
            db.close()

    def _repaired_copy(self, path: Path) -> Path:
        """A temporary copy cut to whole pages whose header page count matches (sqlite refuses it otherwise)."""
        for copy in self._copies:
            if copy.name.endswith(path.name):
                return copy
        folder = Path(tempfile.mkdtemp(prefix='hr_depth_salvage-'))
        copy = folder / path.name
        self._copies.append(copy)
        shutil.copyfile(path, copy)
        with open(copy, 'r+b') as stream:
            header = stream.read(100)
            if len(header) == 100 and header.startswith(b'SQLite format 3'):
                page_size = struct.unpack_from('>H', header, _SQLITE_PAGE_SIZE_AT)[0]
                page_size = 65536 if page_size == 1 else page_size
                pages = copy.stat().st_size // page_size
                stream.truncate(pages * page_size)
                stream.seek(_SQLITE_PAGES_AT)
                stream.write(struct.pack('>I', pages))
        return copy

    def close(self) -> None:
        """Remove the temporary sqlite copies."""
        for copy in self._copies:
            shutil.rmtree(copy.parent, ignore_errors=True)
        self._copies.clear()


def _mcap_string(body: memoryview, at: int) -> tuple[str, int]:
    length = struct.unpack_from('<I', body, at)[0]
    if at + 4 + length > len(body):
        raise ValueError(f'string of {length} bytes runs past its record')
    return bytes(body[at + 4:at + 4 + length]).decode(), at + 4 + length
