"""Log lines bounded in time and memory when the input is hostile (ROS-free).

A node that logs one line per bad message lets a sender fill the disk and the memory (one
remembered key per distinct bad string). :class:`LogLimiter` allows a reason at most once per
``period`` and at most ``burst`` lines of all reasons per ``period``, remembers at most
``max_reasons`` reasons (least recently seen forgotten first) and counts what it suppressed, so
the next line that passes can say so.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable

__all__ = ['LogLimiter']


class LogLimiter:
    """Decides which log lines pass (thread-safe); see the module docstring."""

    def __init__(self, period: float = 5.0, burst: int = 10, max_reasons: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self.burst = burst
        self.max_reasons = max_reasons
        self.clock = clock
        self._last: OrderedDict[str, float] = OrderedDict()
        self._window_start = -float('inf')
        self._window_count = 0
        self._suppressed = 0
        self._lock = threading.Lock()

    def allow(self, reason: str) -> int | None:
        """None when a line for ``reason`` must not be logged now, else how many were suppressed since the last."""
        with self._lock:
            now = self.clock()
            last = self._last.pop(reason, None)
            self._last[reason] = now if last is None or now - last >= self.period else last
            while len(self._last) > self.max_reasons:
                self._last.popitem(last=False)
            if now - self._window_start >= self.period:
                self._window_start, self._window_count = now, 0
            if (last is not None and now - last < self.period) or self._window_count >= self.burst:
                self._suppressed += 1
                return None
            self._window_count += 1
            suppressed, self._suppressed = self._suppressed, 0
            return suppressed

    def __len__(self) -> int:
        """Reasons remembered now (at most ``max_reasons``)."""
        return len(self._last)
