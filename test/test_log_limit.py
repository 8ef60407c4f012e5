"""LogLimiter: per-reason throttle, global burst cap, bounded memory (issue 12 item 2)."""
from __future__ import annotations

from hr_depth_ros.core.log_limit import LogLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_reason_and_period_with_suppressed_count():
    clock = Clock()
    limit = LogLimiter(period=5.0, burst=10, clock=clock)
    assert limit.allow('malformed') == 0
    assert all(limit.allow('malformed') is None for _ in range(100))
    clock.now = 5.0
    assert limit.allow('malformed') == 100


def test_unique_reasons_are_capped_in_lines_and_memory():
    clock = Clock()
    limit = LogLimiter(period=5.0, burst=10, max_reasons=64, clock=clock)
    passed = 0
    for i in range(3000):  # 3,000 distinct encodings within 13 s
        clock.now = i * 13.0 / 3000
        passed += limit.allow(f'encoding {i}') is not None
    assert passed <= 10 * 3 + 10  # burst per 5 s window over 13 s
    assert len(limit) == 64
