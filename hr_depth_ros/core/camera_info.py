"""sensor_msgs/CameraInfo -> intrinsics, for ROS 2 (rclpy, rosbags) and ROS 1 (rosbags) messages alike.

ROS-free and duck-typed. ROS 2 spells the matrices ``k, d, r, p``; ROS 1 spells them ``K, D, R, P``:
:func:`camera_info_K` is the one place that reads K and the declared image size from either, and
:func:`implausible_intrinsics` the one sanity check of what it read (used by the depth node, the
training data reader and the demo).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ['camera_info_K', 'implausible_intrinsics', 'MAX_SIDE', 'FOCAL_RANGE', 'PRINCIPAL_MARGIN',
           'ASPECT_TOLERANCE']

MAX_SIDE = 65536               # largest declared width / height accepted (pixels)
FOCAL_RANGE = (0.02, 100.0)    # fx / width and fy / height: from a 180+ degree fisheye to a long telephoto
PIXEL_ASPECT_RANGE = (0.2, 5.0)  # fy / fx
PRINCIPAL_MARGIN = 0.5         # cx, cy may lie this fraction of the size outside the image, no further
ASPECT_TOLERANCE = 0.03        # relative difference of width / height between camera_info and the image


def camera_info_K(msg: Any) -> tuple[np.ndarray, int, int]:
    """``(K 3x3 float64, width, height)`` of a CameraInfo (ROS 2 ``k`` or ROS 1 ``K``).

    ValueError when K is not 9 finite numbers or the focal lengths are not positive (an all-zero,
    uncalibrated K). ``width``/``height`` are as declared (0 when the camera leaves them unset).
    """
    raw = getattr(msg, 'k', None)
    if raw is None:
        raw = getattr(msg, 'K', None)
    if raw is None:
        raise ValueError(f'{type(msg).__name__} has no K (k in ROS 2, K in ROS 1): not a CameraInfo')
    try:
        values = np.asarray(list(raw), dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f'camera_info K is not numeric: {error}') from error
    if values.size != 9 or not np.isfinite(values).all():
        raise ValueError(f'camera_info K must hold 9 finite numbers, got {values.tolist()[:12]}')
    K = values.reshape(3, 3)
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f'camera_info K has non-positive focal lengths fx={K[0, 0]}, fy={K[1, 1]} (uncalibrated?)')
    return K, int(msg.width), int(msg.height)


def implausible_intrinsics(K: np.ndarray, size: tuple[int, int],
                           image_size: tuple[int, int] | None = None) -> str | None:
    """Why ``K`` for images of ``size = (width, height)`` cannot be right, naming the field; None if plausible.

    ``size`` (0, 0) means undeclared: ``image_size`` (the images it is used with) stands in. Checks:
    declared sizes within 1..MAX_SIDE, focal lengths within FOCAL_RANGE of the size and fy/fx within
    PIXEL_ASPECT_RANGE, the principal point at most PRINCIPAL_MARGIN of the size outside the image,
    and the declared aspect ratio within ASPECT_TOLERANCE of the image's.
    """
    width, height = (int(v) for v in size)
    if (width, height) == (0, 0):
        if image_size is None:
            return None if np.isfinite(K).all() else 'K is not finite'
        width, height = (int(v) for v in image_size)
    elif not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        return f'width/height {width}x{height} outside 1..{MAX_SIDE}'
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    if not all(math.isfinite(v) for v in (fx, fy, cx, cy)):
        return f'K is not finite (fx={fx}, fy={fy}, cx={cx}, cy={cy})'
    low, high = FOCAL_RANGE
    if not low * width <= fx <= high * width:
        return f'fx={fx:.6g} outside {low:g}..{high:g} x width {width}'
    if not low * height <= fy <= high * max(width, height):
        return f'fy={fy:.6g} implausible for height {height}'
    if not PIXEL_ASPECT_RANGE[0] <= fy / fx <= PIXEL_ASPECT_RANGE[1]:
        return f'fy/fx={fy / fx:.3g} outside {PIXEL_ASPECT_RANGE[0]:g}..{PIXEL_ASPECT_RANGE[1]:g}'
    margin = PRINCIPAL_MARGIN
    if not -margin * width <= cx <= (1 + margin) * width:
        return f'cx={cx:.6g} far outside the {width} px wide image'
    if not -margin * height <= cy <= (1 + margin) * height:
        return f'cy={cy:.6g} far outside the {height} px high image'
    if image_size is not None and min(image_size) > 0:
        declared, actual = width / height, image_size[0] / image_size[1]
        if abs(declared / actual - 1.0) > ASPECT_TOLERANCE:
            return (f'width/height {width}x{height} (aspect {declared:.3f}) disagree with the '
                    f'{image_size[0]}x{image_size[1]} image (aspect {actual:.3f})')
    return None
