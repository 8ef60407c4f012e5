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
from typing import Any

import numpy as np

__all__ = ['ScaleSearch', 'search_scale', 'median_pixel_scale', 'depth_headroom', 'HEADROOM']

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
HEADROOM = 1.5  # the scene's nearest / farthest 1 % should stay this far inside the representable range


@dataclass
class ScaleSearch:
    """Result of :func:`search_scale`: the best ``scale``, its ``loss`` and every ``(scale, loss)`` tried."""

    scale: float
    loss: float
    curve: list[tuple[float, float]] = field(default_factory=list)
    pixels: int = 0     # pixels the per-pixel search (median_pixel_scale) rests on; 0 for search_scale

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


def median_pixel_scale(errors_at: Callable[[float], np.ndarray], identity: np.ndarray, centre: float,
                       spread: float = 1.0, points: int = 41) -> ScaleSearch:
    """The scale whose inverse is the median over pixels of each pixel's best inverse scale.

    ``errors_at(scale)``: every scored pixel's reprojection error (1-D, the same pixels each call);
    ``identity``: their errors without warping. The pixels' inverse scales (proportional to the
    optical flow they make) are searched on an even grid over ``(1 +- spread) / centre``. A depth
    whose shape is wrong (a start checkpoint from another kind of scene) moves the minimum of the
    summed loss toward the regions whose shape is worst; the median of per-pixel best scales
    follows most of the image instead, as the median scaling of depth evaluation does. The grid is
    even in flow, so a pixel whose best match is chance (no texture) lands anywhere on it with equal
    odds on both sides of ``centre``: chance pulls toward ``centre``, never away from it (a grid even
    in log scale would favour small scales, whose steps sweep more pixels). Pixels count where
    warping beats not moving and whose best lies inside the grid (refined by a parabola through its
    neighbours). ``curve``: mean error at each scale tried; ``pixels``: the pixels the median rests on.
    """
    if centre <= 0 or not math.isfinite(centre) or not 0 < spread <= 1:
        raise ValueError(f'need centre > 0 and 0 < spread <= 1, got {centre}, {spread}')
    low = (1.0 - spread) / centre if spread < 1 else 1.0 / (centre * (points - 1))
    inverse = np.linspace(low, (1.0 + spread) / centre, points)
    errors = np.stack([np.asarray(errors_at(1.0 / x), dtype=np.float64) for x in inverse])  # scales x pixels
    errors[~np.isfinite(errors)] = np.inf
    best = errors.argmin(0)
    lowest = errors.min(0)
    usable = (best > 0) & (best < points - 1) & (lowest < np.asarray(identity, dtype=np.float64))
    curve = [(float(1.0 / x), float(np.mean(e[np.isfinite(e)])) if np.isfinite(e).any() else math.inf)
             for x, e in zip(inverse, errors)]
    if usable.sum() < 100:  # too little texture or motion: the minimum of the mean error
        scale, loss = min(curve, key=lambda item: item[1])
        return ScaleSearch(scale=scale, loss=loss, curve=sorted(curve), pixels=int(usable.sum()))
    index = np.flatnonzero(usable)
    b = best[index]
    left, mid, right = errors[b - 1, index], errors[b, index], errors[b + 1, index]
    denominator = left - 2 * mid + right
    offset = np.where(denominator > 0, 0.5 * (left - right) / np.maximum(denominator, 1e-12), 0.0)
    pixel_inverse = inverse[b] + np.clip(offset, -0.5, 0.5) * (inverse[1] - inverse[0])
    scale = float(1.0 / np.median(pixel_inverse))
    loss = float(np.interp(1.0 / scale, inverse, [c[1] for c in curve]))
    return ScaleSearch(scale=scale, loss=loss, curve=sorted(curve), pixels=int(usable.sum()))


def depth_headroom(depths: np.ndarray, scale: float, min_depth: float, max_depth: float) -> dict[str, Any]:
    """How the scene sits in the depth range the network can output once scaled.

    ``depths``: the network's depths of some frames at scale 1 (``disp_to_depth`` of its sigmoid);
    the network outputs ``scale x [min_depth, max_depth]`` at most (the sigmoid's ends, where its
    gradient vanishes). Returns the scene's 1st / 99th percentiles in metres (``near_m``, ``far_m``),
    the ``representable_m`` range and a ``warning`` (None when both ends keep :data:`HEADROOM`).
    """
    values = np.asarray(depths, dtype=np.float64).ravel()
    values = values[np.isfinite(values) & (values > 0)]
    low, high = scale * min_depth, scale * max_depth
    result: dict[str, Any] = {'representable_m': [low, high], 'near_m': None, 'far_m': None, 'warning': None}
    if not len(values):
        return result
    near, far = (float(v) * scale for v in np.quantile(values, [0.01, 0.99]))
    result.update(near_m=near, far_m=far)
    if near < HEADROOM * low:
        result['warning'] = (f'the nearest 1 % of the scene is at {near:.3g} m, close to the nearest depth the network '
                             f'can output ({low:.3g} m = metric scale {scale:.4g} x --min-depth {min_depth:g}): nearer '
                             f'surfaces are clamped there; fine-tune with a smaller --min-depth')
    elif far > high / HEADROOM:
        result['warning'] = (f'the farthest 1 % of the scene is at {far:.3g} m, close to the farthest depth the network '
                             f'can output ({high:.4g} m = metric scale {scale:.4g} x --max-depth {max_depth:g}); '
                             'fine-tune with a larger --max-depth')
    return result
