"""PointCloud2 byte layout and PLY files from NumPy points (ROS-free).

The layout is the one ``depth_image_proc`` and PCL use: float32 ``x, y, z`` at offsets 0, 4, 8
and a 16-byte point. For coloured clouds the 4 bytes at offset 12 hold ``rgb``: the uint32
``0x00RRGGBB`` reinterpreted as a float32 (little-endian bytes b, g, r, 0), which rviz2's
"RGB8" colour transformer reads; for xyz clouds they are padding. Points come from
:func:`hr_depth_ros.geometry.depth_to_points`; this module never back-projects itself.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

# sensor_msgs/PointField datatype constants (kept here so this module needs no ROS).
POINTFIELD_FLOAT32 = 7
POINT_STEP = 16


def pointcloud_fields(with_rgb: bool) -> list[tuple[str, int, int, int]]:
    """``(name, offset, datatype, count)`` of each PointField, xyz (+ rgb at offset 12)."""
    fields = [('x', 0, POINTFIELD_FLOAT32, 1), ('y', 4, POINTFIELD_FLOAT32, 1), ('z', 8, POINTFIELD_FLOAT32, 1)]
    if with_rgb:
        fields.append(('rgb', 12, POINTFIELD_FLOAT32, 1))
    return fields


def pack_rgb_float(rgb: np.ndarray) -> np.ndarray:
    """Pack ``... x 3`` uint8 RGB into float32 whose bits are the uint32 ``0x00RRGGBB``."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
        raise ValueError(f'colours must be uint8 with a last axis of 3, got {rgb.dtype} {rgb.shape}')
    rgb32 = rgb.astype(np.uint32)
    packed = (rgb32[..., 0] << 16) | (rgb32[..., 1] << 8) | rgb32[..., 2]
    return packed.view(np.float32)


def unpack_rgb_float(rgb_float: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_rgb_float`: float32 -> ``... x 3`` uint8 RGB."""
    packed = np.asarray(rgb_float, dtype=np.float32).view(np.uint32)
    return np.stack([(packed >> 16) & 0xFF, (packed >> 8) & 0xFF, packed & 0xFF], axis=-1).astype(np.uint8)


def pack_points(points: np.ndarray, colors_rgb: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Pack ``N x 3`` or ``H x W x 3`` points (+ matching uint8 RGB) into PointCloud2 bytes.

    Returns ``(buffer, point_step)``: ``buffer`` is a C-contiguous 1-D uint8 array of
    ``n_points * 16`` bytes (pass ``buffer.tobytes()`` or the array itself to ``msg.data``),
    rows in the order of ``points`` (row-major for organised clouds).
    """
    points = np.asarray(points)
    if points.ndim not in (2, 3) or points.shape[-1] != 3:
        raise ValueError(f'points must be N x 3 or H x W x 3, got shape {points.shape}')
    flat = points.reshape(-1, 3)
    packed = np.empty((flat.shape[0], 4), dtype=np.float32)
    packed[:, :3] = flat
    if colors_rgb is None:
        packed[:, 3] = 0.0
        return packed.reshape(-1).view(np.uint8), POINT_STEP
    colors_rgb = np.asarray(colors_rgb)
    if colors_rgb.shape[:-1] != points.shape[:-1] or colors_rgb.shape[-1] != 3 or colors_rgb.dtype != np.uint8:
        raise ValueError(f'colours shape {colors_rgb.shape} ({colors_rgb.dtype}) does not match points shape '
                         f'{points.shape} as uint8 RGB')
    # Write the rgb float's bytes directly: little-endian 0x00RRGGBB is b, g, r, 0 (see pack_rgb_float).
    rgb = colors_rgb.reshape(-1, 3)
    as_bytes = packed.view(np.uint8)
    as_bytes[:, 12] = rgb[:, 2]
    as_bytes[:, 13] = rgb[:, 1]
    as_bytes[:, 14] = rgb[:, 0]
    as_bytes[:, 15] = 0
    return as_bytes.reshape(-1), POINT_STEP


def unpack_points(data: bytes | np.ndarray, with_rgb: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode bytes in the :func:`pack_points` layout back to ``(N x 3 float32, N x 3 uint8 or None)``."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size % POINT_STEP:
        raise ValueError(f'point cloud data of {buffer.size} bytes is not a multiple of {POINT_STEP}')
    as_float = buffer.view(np.float32).reshape(-1, 4)
    return as_float[:, :3], (unpack_rgb_float(as_float[:, 3]) if with_rgb else None)


def write_ply(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """Write a binary little-endian PLY of the finite points (+ uint8 RGB colours), atomically.

    ``points`` is ``N x 3`` or ``H x W x 3``; points with any non-finite coordinate are left out.
    Returns the path written.
    """
    path = Path(path)
    points = np.asarray(points, dtype=np.float32)
    if points.ndim not in (2, 3) or points.shape[-1] != 3:
        raise ValueError(f'points must be N x 3 or H x W x 3, got shape {points.shape}')
    flat = points.reshape(-1, 3)
    keep = np.isfinite(flat).all(axis=1)
    vertex_type = [('x', '<f4'), ('y', '<f4'), ('z', '<f4')]
    if colors is not None:
        colors = np.asarray(colors)
        if colors.dtype != np.uint8 or colors.shape[:-1] != points.shape[:-1] or colors.shape[-1] != 3:
            raise ValueError(f'colours must be uint8 of shape {points.shape[:-1] + (3,)}, '
                             f'got {colors.dtype} {colors.shape}')
        vertex_type += [('red', 'u1'), ('green', 'u1'), ('blue', 'u1')]
    vertices = np.empty(int(keep.sum()), dtype=vertex_type)
    vertices['x'], vertices['y'], vertices['z'] = flat[keep].T
    if colors is not None:
        rgb = colors.reshape(-1, 3)[keep]
        vertices['red'], vertices['green'], vertices['blue'] = rgb.T
    header = ['ply', 'format binary_little_endian 1.0', f'element vertex {len(vertices)}',
              'property float x', 'property float y', 'property float z']
    if colors is not None:
        header += ['property uchar red', 'property uchar green', 'property uchar blue']
    header.append('end_header')
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + '.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(('\n'.join(header) + '\n').encode('ascii'))
            handle.write(vertices.tobytes())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a PLY written by :func:`write_ply`: ``(N x 3 float32, N x 3 uint8 or None)``."""
    path = Path(path)
    raw = path.read_bytes()
    marker = b'end_header\n'
    end = raw.find(marker)
    if not raw.startswith(b'ply\n') or end < 0:
        raise ValueError(f'{path} is not a PLY file (missing ply/end_header)')
    header = raw[:end].decode('ascii').splitlines()
    if 'format binary_little_endian 1.0' not in header:
        raise ValueError(f'{path}: only binary_little_endian PLY is supported')
    count = next((int(line.split()[2]) for line in header if line.startswith('element vertex')), None)
    names = [line.split()[2] for line in header if line.startswith('property')]
    types = {'float': '<f4', 'uchar': 'u1'}
    dtype = [(line.split()[2], types[line.split()[1]]) for line in header if line.startswith('property')]
    if count is None:
        raise ValueError(f'{path}: no vertex element in header')
    vertices = np.frombuffer(raw, dtype=dtype, count=count, offset=end + len(marker))
    points = np.stack([vertices['x'], vertices['y'], vertices['z']], axis=1)
    colors = np.stack([vertices['red'], vertices['green'], vertices['blue']], axis=1) if 'red' in names else None
    return points, colors
