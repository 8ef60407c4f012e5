"""Colourising depth and disparity maps for humans and rviz (OpenCV colour maps)."""
from __future__ import annotations

import cv2
import numpy as np

COLORMAPS = {
    'magma': cv2.COLORMAP_MAGMA,
    'turbo': cv2.COLORMAP_TURBO,
    'viridis': cv2.COLORMAP_VIRIDIS,
    'inferno': cv2.COLORMAP_INFERNO,
    'jet': cv2.COLORMAP_JET,
}


def value_range(values: np.ndarray, percentile: float = 95.0) -> tuple[float, float]:
    """Robust display range of the finite values: (min, given upper percentile).

    monodepth2's test_simple uses ``vmax = percentile(disp, 95)`` with the minimum as
    ``vmin``; we do the same. Returns (0, 1) when nothing is finite.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    vmin = float(finite.min())
    vmax = float(np.percentile(finite, percentile))
    if vmax <= vmin:
        vmax = vmin + 1e-6
    return vmin, vmax


def colorize(
    values: np.ndarray,
    cmap: str = 'magma',
    vmin: float | None = None,
    vmax: float | None = None,
    percentile: float = 95.0,
    invalid_color: tuple[int, int, int] = (0, 0, 0),
    bgr: bool = False,
) -> np.ndarray:
    """Map a 2-D array to an ``H x W x 3`` uint8 colour image (RGB, or BGR with ``bgr``).

    ``vmin``/``vmax`` fix the range; either left as None comes from :func:`value_range`
    with ``percentile``. Non-finite values get ``invalid_color`` (RGB).
    """
    if values.ndim != 2:
        raise ValueError(f'colorize expects a 2-D array, got shape {values.shape}')
    if cmap not in COLORMAPS:
        raise ValueError(f'unknown colour map {cmap!r}; choose one of {sorted(COLORMAPS)}')
    values = np.asarray(values, dtype=np.float32)
    auto_min, auto_max = value_range(values, percentile) if vmin is None or vmax is None else (0.0, 1.0)
    lo = auto_min if vmin is None else float(vmin)
    hi = auto_max if vmax is None else float(vmax)
    if hi <= lo:
        hi = lo + 1e-6
    invalid = ~np.isfinite(values)
    normalized = np.clip((np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo), 0.0, 1.0)
    colored_bgr = cv2.applyColorMap((normalized * 255.0 + 0.5).astype(np.uint8), COLORMAPS[cmap])
    if invalid.any():
        colored_bgr[invalid] = invalid_color[::-1]
    if bgr:
        return colored_bgr
    return np.ascontiguousarray(colored_bgr[..., ::-1])
