"""The outside of a ROS graph under test: an rclpy node that publishes, records and waits.

:class:`GraphProbe` is what the demo, the benchmarks (node latency, fuzz soak) and the tests use
to drive a depth node running in another process: its own rclpy context (so it never disturbs,
or depends on, the process's default one), a node spun by a background executor, publishers,
subscriptions that record each message with its arrival time, and waits with deadlines.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

__all__ = ['GraphProbe', 'RELIABLE', 'BEST_EFFORT', 'stamp_ns']


def _qos(reliability: str, depth: int = 10) -> Any:
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    policy = ReliabilityPolicy.RELIABLE if reliability == 'reliable' else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=policy)


RELIABLE = 'reliable'
BEST_EFFORT = 'best_effort'


def stamp_ns(msg: Any) -> int:
    """A stamped message's header stamp in nanoseconds."""
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


class GraphProbe:
    """An rclpy node in a private context, spun in a thread (see the module docstring).

    ``domain_id`` None: ``ROS_DOMAIN_ID`` of the environment. Recorded messages are kept per key
    (default: the topic) as ``(arrival time.time_ns(), value)``, where value is the message or
    ``convert(message)`` (to keep only what is needed, e.g. a stamp).
    """

    def __init__(self, name: str, namespace: str = '', domain_id: int | None = None) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context, **({} if domain_id is None else {'domain_id': domain_id}))
        self.node = rclpy.create_node(name, namespace=namespace, context=self.context)
        self.lock = threading.Lock()
        self.publishers: list[Any] = []
        self.subscriptions: list[Any] = []
        self._records: dict[str, list[tuple[int, Any]]] = {}
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, name=f'{name}_spin', daemon=True)
        self.thread.start()

    def publisher(self, msg_type: Any, topic: str, reliability: str = RELIABLE, depth: int = 10) -> Any:
        """A publisher that :meth:`connected` waits for."""
        publisher = self.node.create_publisher(msg_type, topic, _qos(reliability, depth))
        self.publishers.append(publisher)
        return publisher

    def subscribe(self, msg_type: Any, topic: str, key: str | None = None, reliability: str = RELIABLE,
                  depth: int = 10, convert: Callable[[Any], Any] | None = None) -> Any:
        """Record every message of ``topic`` under ``key`` (default: ``topic``)."""
        records = self._records.setdefault(key or topic, [])

        def record(msg: Any) -> None:
            arrival = time.time_ns()
            value = msg if convert is None else convert(msg)
            with self.lock:
                records.append((arrival, value))

        subscription = self.node.create_subscription(msg_type, topic, record, _qos(reliability, depth))
        self.subscriptions.append(subscription)
        return subscription

    def received(self, key: str) -> list[Any]:
        """The values recorded under ``key``, oldest first (a copy)."""
        with self.lock:
            return [value for _, value in self._records.get(key, ())]

    def arrivals(self, key: str) -> list[tuple[int, Any]]:
        """``(arrival ns, value)`` recorded under ``key``, oldest first (a copy)."""
        with self.lock:
            return list(self._records.get(key, ()))

    def clear(self) -> None:
        """Forget everything recorded so far."""
        with self.lock:
            for records in self._records.values():
                records.clear()

    def connected(self, *publishers: Any) -> bool:
        """Whether ``publishers`` (default: all of this probe's) have a subscriber and every subscription
        has a publisher (DDS discovery done both ways)."""
        return (all(p.get_subscription_count() > 0 for p in (publishers or self.publishers))
                and all(s.get_publisher_count() > 0 for s in self.subscriptions))

    @staticmethod
    def wait_until(condition: Callable[[], Any], timeout: float, period: float = 0.01) -> Any:
        """``condition()``'s first truthy value within ``timeout`` seconds, else None."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() >= deadline:
                return None
            time.sleep(period)

    def wait_for_messages(self, key: str, count: int, timeout: float) -> bool:
        """Whether ``count`` messages were recorded under ``key`` within ``timeout`` seconds."""
        return bool(self.wait_until(lambda: len(self._records.get(key, ())) >= count, timeout))

    def close(self) -> None:
        """Stop spinning, destroy the node and shut the private context down."""
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
