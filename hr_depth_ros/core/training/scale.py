"""Metric scale without depth labels: the factor between a network's depth units and metres (ROS-free).

A monocular checkpoint predicts depth up to an unknown factor. With metric camera motion (the
robot's odometry through TF), the photometric reprojection error of ``scale x depth`` is lowest
at the true factor: too small a depth moves pixels too far, too large a depth too little. So
the factor is found by a 1-D search in log space over that error (a coarse grid, then a
golden-section refinement around its minimum), computed with the network's depth frozen.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ['ScaleSearch', 'search_scale']

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass
class ScaleSearch:
    """Result of :func:`search_scale`: the best ``scale``, its ``loss`` and every ``(scale, loss)`` tried."""

    scale: float
    loss: float
    curve: list[tuple[float, float]] = field(default_factory=list)

    def sharpness(self) -> float:
        """How much worse the loss is a factor 2 away from the best scale (the median of the tried
        points within 0.25-0.35 decades), relative to the best: ~0 means the data did not constrain it."""
        near = [loss for scale, loss in self.curve if 0.25 <= abs(math.log10(scale / self.scale)) <= 0.35]
        if not near or self.loss <= 0:
            return 0.0
        near.sort()
        return near[len(near) // 2] / self.loss - 1.0


def search_scale(loss_at: Callable[[float], float], low: float = 1e-3, high: float = 1e4,
                 points_per_decade: int = 6, refine_steps: int = 16) -> ScaleSearch:
    """Minimise ``loss_at(scale)`` over ``[low, high]`` (log space); see the module docstring.

    The coarse grid has ``points_per_decade`` points a decade; the refinement narrows the bracket
    around the best grid point by the golden ratio ``refine_steps`` times (final step
    ~0.2 % of the scale with the defaults).
    """
    if not 0 < low < high:
        raise ValueError(f'need 0 < low < high, got {low}, {high}')
    curve: list[tuple[float, float]] = []

    def evaluate(log_scale: float) -> float:
        scale = 10.0 ** log_scale
        loss = float(loss_at(scale))
        curve.append((scale, loss if math.isfinite(loss) else math.inf))
        return curve[-1][1]

    lo, hi = math.log10(low), math.log10(high)
    count = max(3, int(round((hi - lo) * points_per_decade)) + 1)
    grid = [lo + (hi - lo) * i / (count - 1) for i in range(count)]
    losses = [evaluate(x) for x in grid]
    best = min(range(count), key=losses.__getitem__)
    a, b = grid[max(0, best - 1)], grid[min(count - 1, best + 1)]
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = evaluate(c), evaluate(d)
    for _ in range(refine_steps):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = evaluate(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = evaluate(d)
    scale, loss = min(curve, key=lambda item: item[1])
    return ScaleSearch(scale=scale, loss=loss, curve=sorted(curve))
