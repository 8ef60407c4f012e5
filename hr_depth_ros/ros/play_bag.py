"""Play a bag's camera topics into ROS 2 (rclpy), like a small ``ros2 bag play``.

    play_bag --bag drive_mcap --rate 1.0 --remap /camera/image_raw:=/image --qos best_effort

Reads rosbag2 (sqlite3 / MCAP) or ROS 1 bags through :mod:`hr_depth_ros.core.bags` (rosbags, no
ROS install needed) and republishes sensor_msgs/Image, CompressedImage and CameraInfo
messages (and tf2_msgs/TFMessage where tf2_msgs is installed), converted field by field to
rclpy messages. ``--rate 0`` publishes as fast as possible; ``--restamp`` replaces header
stamps with the current time (messages that shared a stamp in the bag share the new one).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

from hr_depth_ros.core.bags import BagError, list_topics, read_messages

SUPPORTED_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage', 'sensor_msgs/msg/CameraInfo',
                   'tf2_msgs/msg/TFMessage')  # TFMessage only where tf2_msgs is installed
INT_TYPES = {'int8', 'uint8', 'int16', 'uint16', 'int32', 'uint32', 'int64', 'uint64', 'byte', 'char', 'octet'}
FLOAT_TYPES = {'float', 'double', 'float32', 'float64'}
ACK_TIMEOUT_S = 5.0   # at the end of a reliable play: how long reliable subscribers get to acknowledge the tail


def message_class(msgtype: str) -> type:
    """rclpy message class of a ROS 2 type name such as ``sensor_msgs/msg/Image``."""
    package, _, name = msgtype.replace('/msg/', '/').partition('/')
    try:
        return getattr(importlib.import_module(f'{package}.msg'), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f'message type {msgtype} is not available in this ROS install: {error}') from error


def to_rclpy(source: Any, target: Any) -> Any:
    """Copy the fields of a rosbags (or any duck-typed) message into the rclpy message ``target``, recursively.

    Handles primitives, strings, nested messages, arrays and sequences of primitives (uint8
    data as bytes) and of messages (e.g. TFMessage.transforms).
    """
    for name, type_name in target.get_fields_and_field_types().items():
        if not hasattr(source, name):
            raise ValueError(f'{type(source).__name__} has no field {name!r} needed by {type(target).__name__}')
        value = getattr(source, name)
        element = type_name
        is_array = False
        if type_name.startswith('sequence<'):
            element, is_array = type_name[len('sequence<'):].split(',')[0].rstrip('>'), True
        elif type_name.endswith(']'):
            element, is_array = type_name[:type_name.index('[')], True
        if '/' in element:
            if is_array:
                element_class = message_class(element)
                setattr(target, name, [to_rclpy(item, element_class()) for item in value])
            else:
                to_rclpy(value, getattr(target, name))
            continue
        if is_array:
            if element in ('uint8', 'byte', 'octet', 'char'):
                setattr(target, name, bytes(memoryview(value).cast('B')) if not isinstance(value, bytes) else value)
            elif element in FLOAT_TYPES:
                setattr(target, name, [float(v) for v in value])
            elif element in INT_TYPES:
                setattr(target, name, [int(v) for v in value])
            else:
                setattr(target, name, list(value))
        elif element in FLOAT_TYPES:
            setattr(target, name, float(value))
        elif element in INT_TYPES:
            setattr(target, name, int(value))
        elif element == 'boolean':
            setattr(target, name, bool(value))
        else:
            setattr(target, name, str(value))
    return target


def parse_remaps(remaps: list[str]) -> dict[str, str]:
    """``['old:=new', ...]`` -> ``{old: new}``; ValueError on malformed entries."""
    mapping = {}
    for item in remaps:
        old, sep, new = item.partition(':=')
        if not sep or not old or not new:
            raise ValueError(f'--remap expects old:=new, got {item!r}')
        mapping[old] = new
    return mapping


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='play_bag', description=__doc__.split('\n\n')[0])
    parser.add_argument('--bag', required=True, help='bag folder (rosbag2) or file (ROS 1 .bag / .mcap)')
    parser.add_argument('--topics', nargs='+', help='topics to play (default: every Image/CompressedImage/CameraInfo)')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='1.0 = recorded rate, 2.0 = twice as fast, 0 = as fast as possible')
    parser.add_argument('--remap', action='append', default=[], metavar='OLD:=NEW', help='publish topic OLD as NEW')
    parser.add_argument('--qos', choices=('reliable', 'best_effort'), default='reliable')
    parser.add_argument('--qos-depth', type=int, default=10, help='publisher history depth')
    parser.add_argument('--loop', action='store_true', help='start again at the end')
    parser.add_argument('--restamp', action='store_true', help='stamp headers with the current time')
    parser.add_argument('--start-after', type=float, default=0.0, metavar='SECONDS',
                        help='skip the first SECONDS of the bag')
    parser.add_argument('--limit', type=int, default=0, help='stop after this many messages (per pass; 0 = all)')
    parser.add_argument('--wait-subscribers', type=float, default=0.0, metavar='SECONDS',
                        help='before playing, wait up to SECONDS until every publisher has a subscriber')
    return parser


def _importable(msgtype: str) -> bool:
    try:
        message_class(msgtype)
    except ValueError:
        return False
    return True


def _select_topics(bag: Path, requested: list[str] | None) -> dict[str, str]:
    """topic -> msgtype of the topics to play; BagError naming the bag for unknown/unsupported ones."""
    available = list_topics(bag)
    if requested:
        missing = [t for t in requested if t not in available]
        if missing:
            raise BagError(f'{bag}: topics {missing} not in the bag (has {sorted(available)})')
        unsupported = {t: available[t] for t in requested
                       if available[t] not in SUPPORTED_TYPES or not _importable(available[t])}
        if unsupported:
            raise BagError(f'{bag}: cannot play {unsupported}; supported types: {list(SUPPORTED_TYPES)}')
        return {t: available[t] for t in requested}
    chosen = {t: msgtype for t, msgtype in available.items() if msgtype in SUPPORTED_TYPES and _importable(msgtype)}
    if not chosen:
        raise BagError(f'{bag}: no playable topics (has {available}; plays {list(SUPPORTED_TYPES)})')
    return chosen


def _messages(bag: Path, topics: dict[str, str], start_after: float, limit: int) -> Iterator[tuple[str, int, Any]]:
    first_ns = None
    count = 0
    for topic, timestamp_ns, _header_stamp_ns, msg in read_messages(bag, list(topics)):
        first_ns = timestamp_ns if first_ns is None else first_ns
        if (timestamp_ns - first_ns) / 1e9 < start_after:
            continue
        yield topic, timestamp_ns, msg
        count += 1
        if limit and count >= limit:
            return


def play(args: argparse.Namespace) -> int:
    """Publish the bag as ``args`` say; returns the number of messages published."""
    import rclpy
    from rclpy.duration import Duration
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    bag = Path(args.bag).expanduser()
    topics = _select_topics(bag, args.topics)
    remaps = parse_remaps(args.remap)
    node = rclpy.create_node('play_bag')
    reliability = ReliabilityPolicy.RELIABLE if args.qos == 'reliable' else ReliabilityPolicy.BEST_EFFORT
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(1, args.qos_depth), reliability=reliability)
    publishers = {topic: node.create_publisher(message_class(msgtype), remaps.get(topic, topic), qos)
                  for topic, msgtype in topics.items()}
    classes = {topic: message_class(msgtype) for topic, msgtype in topics.items()}
    published = 0
    try:
        if args.wait_subscribers > 0:
            deadline = time.monotonic() + args.wait_subscribers
            while time.monotonic() < deadline and any(p.get_subscription_count() == 0 for p in publishers.values()):
                time.sleep(0.05)
        new_stamps: OrderedDict[tuple[int, int], Any] = OrderedDict()
        while rclpy.ok():
            start_wall = time.monotonic()
            first_ns = None
            for topic, timestamp_ns, msg in _messages(bag, topics, args.start_after, args.limit):
                first_ns = timestamp_ns if first_ns is None else first_ns
                if args.rate > 0:
                    delay = start_wall + (timestamp_ns - first_ns) / 1e9 / args.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                out = to_rclpy(msg, classes[topic]())
                if args.restamp and hasattr(out, 'header'):
                    key = (out.header.stamp.sec, out.header.stamp.nanosec)
                    if key not in new_stamps:
                        new_stamps[key] = node.get_clock().now().to_msg()
                        while len(new_stamps) > 64:
                            new_stamps.popitem(last=False)
                    out.header.stamp = new_stamps[key]
                publishers[topic].publish(out)
                published += 1
                if not rclpy.ok():
                    break
            if not args.loop:
                break
        if reliability == ReliabilityPolicy.RELIABLE and rclpy.ok():
            # Reliable subscribers get the tail of the bag too: a writer destroyed right after its last
            # publish can take undelivered samples with it (seen: the last frame of 120 missing).
            for publisher in publishers.values():
                publisher.wait_for_all_acked(Duration(seconds=ACK_TIMEOUT_S))
    finally:
        node.destroy_node()
    return published


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; 0 on success, 2 on a bad bag/argument (message on stderr)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    argv = sys.argv[1:] if argv is None else list(argv)
    # Our options come before any --ros-args (rclpy's remove_ros_args would also eat old:=new).
    args = build_parser().parse_args(argv[:argv.index('--ros-args')] if '--ros-args' in argv else argv)
    rclpy.init(args=['play_bag', *argv])
    try:
        published = play(args)
        print(f'play_bag: published {published} messages from {args.bag}', file=sys.stderr)
        return 0
    except (BagError, ValueError) as error:
        print(f'play_bag: {error}', file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == '__main__':
    sys.exit(main())
