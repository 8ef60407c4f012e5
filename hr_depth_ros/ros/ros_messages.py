"""NumPy -> sensor_msgs builders (rclpy): the one place ROS message objects are built from arrays.

Image field layout (encoding, step, bytes) comes from :mod:`hr_depth_ros.core.image_decoding` and
the PointCloud2 byte layout from :mod:`hr_depth_ros.core.pointcloud`; this module only fills
message objects. Byte payloads are assigned as ``array.array('B')`` filled with one
``frombytes`` copy, which the generated setters take as is (faster than ``tobytes()``, which
the setter would copy a second time).
"""
from __future__ import annotations

import array as pyarray  # not `array`: image_msg's first parameter is called array
from typing import Any

import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from hr_depth_ros.core import image_decoding
from hr_depth_ros.core.pointcloud import POINT_STEP, PackedCloud, pack_points, pointcloud_fields


def header_copy(header: Any | None, frame_id: str | None = None) -> Header:
    """A new std_msgs/Header with the stamp and frame_id of ``header`` (any object with those fields).

    ``frame_id`` overrides the frame when given. ``None`` gives an empty header.
    """
    out = Header()
    if header is not None:
        out.stamp.sec = int(header.stamp.sec)
        out.stamp.nanosec = int(header.stamp.nanosec)
        out.frame_id = str(header.frame_id)
    if frame_id is not None:
        out.frame_id = frame_id
    return out


def image_msg(array: np.ndarray, encoding: str, header: Any | None = None) -> Image:
    """sensor_msgs/Image from an array in ``encoding`` (e.g. 32FC1 ``H x W`` float32, bgr8 ``H x W x 3``)."""
    return _image_from_fields(image_decoding.array_to_image_fields(array, encoding), header)


def rgb_image_msg(rgb: np.ndarray, encoding: str = 'rgb8', header: Any | None = None) -> Image:
    """sensor_msgs/Image from ``H x W x 3`` uint8 RGB, stored in ``encoding`` (rgb8, bgr8, mono8, ...)."""
    return _image_from_fields(image_decoding.rgb_to_image_fields(rgb, encoding), header)


def _image_from_fields(fields: dict[str, Any], header: Any | None) -> Image:
    msg = Image()
    msg.header = header_copy(header)
    msg.height = int(fields['height'])
    msg.width = int(fields['width'])
    msg.encoding = str(fields['encoding'])
    msg.is_bigendian = int(fields['is_bigendian'])
    msg.step = int(fields['step'])
    msg.data = uint8_array(fields['data'])
    return msg


def uint8_array(data: Any) -> pyarray.array:
    """``array.array('B')`` holding a copy of a bytes-like object or a C-contiguous NumPy array."""
    out = pyarray.array('B')
    out.frombytes(np.ascontiguousarray(data).view(np.uint8).reshape(-1) if isinstance(data, np.ndarray) else data)
    return out


def compressed_image_msg(
    rgb: np.ndarray, fmt: str = 'jpeg', header: Any | None = None, quality: int = 90
) -> CompressedImage:
    """sensor_msgs/CompressedImage (jpeg or png) from ``H x W x 3`` uint8 RGB."""
    msg = CompressedImage()
    msg.header = header_copy(header)
    msg.format, encoded = image_decoding.encode_compressed(rgb, fmt, quality=quality)
    msg.data = uint8_array(bytes(encoded))
    return msg


def camera_info_msg(
    K: np.ndarray,
    width: int,
    height: int,
    header: Any | None = None,
    D: np.ndarray | None = None,
    distortion_model: str = 'plumb_bob',
) -> CameraInfo:
    """sensor_msgs/CameraInfo for a rectified pinhole camera with intrinsics ``K`` (3x3, pixels).

    ``R`` is identity and ``P = [K | 0]``; ``D`` defaults to five zeros.
    """
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f'K must be 3x3, got shape {K.shape}')
    msg = CameraInfo()
    msg.header = header_copy(header)
    msg.width = int(width)
    msg.height = int(height)
    msg.distortion_model = distortion_model
    msg.d = [float(v) for v in (np.zeros(5) if D is None else np.asarray(D, dtype=np.float64).ravel())]
    msg.k = [float(v) for v in K.ravel()]
    msg.r = [float(v) for v in np.eye(3).ravel()]
    msg.p = [float(v) for v in np.hstack([K, np.zeros((3, 1))]).ravel()]
    return msg


def pointcloud2_msg(
    points: np.ndarray,
    colors: np.ndarray | None = None,
    header: Any | None = None,
    organized_shape: tuple[int, int] | None = None,
) -> PointCloud2:
    """sensor_msgs/PointCloud2 (xyz, or xyzrgb with ``colors``) from ``N x 3`` or ``H x W x 3`` points.

    Organised clouds (``H x W x 3`` points, or ``organized_shape=(H, W)`` for ``N x 3``) get
    ``height=H, width=W`` and may hold NaN points (``is_dense`` False); others are ``1 x N``.
    """
    points = np.asarray(points, dtype=np.float32)
    if organized_shape is None and points.ndim == 3:
        organized_shape = (points.shape[0], points.shape[1])
    buffer, point_step = pack_points(points, colors)
    n_points = buffer.size // point_step
    height, width = (int(organized_shape[0]), int(organized_shape[1])) if organized_shape else (1, n_points)
    if height * width != n_points:
        raise ValueError(f'organized_shape {organized_shape} does not hold {n_points} points')
    cloud = PackedCloud(buffer, height, width, colors is not None, organized_shape is not None,
                        bool(np.isfinite(points).all()))
    return packed_cloud_msg(cloud, header)


def packed_cloud_msg(cloud: PackedCloud, header: Any | None = None) -> PointCloud2:
    """sensor_msgs/PointCloud2 from a :class:`~hr_depth_ros.core.pointcloud.PackedCloud` (its bytes are copied)."""
    msg = PointCloud2()
    msg.header = header_copy(header)
    msg.height = cloud.height
    msg.width = cloud.width
    msg.fields = [PointField(name=name, offset=offset, datatype=datatype, count=count)
                  for name, offset, datatype, count in pointcloud_fields(cloud.with_rgb)]
    msg.is_bigendian = False
    msg.point_step = POINT_STEP
    msg.row_step = POINT_STEP * cloud.width
    msg.is_dense = cloud.is_dense
    msg.data = uint8_array(cloud.data)
    return msg
