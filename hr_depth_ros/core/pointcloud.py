"""PointCloud2 byte layout and PLY files from NumPy points (ROS-free).

The layout is the one ``depth_image_proc`` and PCL use: float32 ``x, y, z`` at offsets 0, 4, 8
and a 16-byte point. For coloured clouds the 4 bytes at offset 12 hold ``rgb``: the uint32
``0x00RRGGBB`` reinterpreted as a float32 (little-endian bytes b, g, r, 0), which rviz2's
"RGB8" colour transformer reads; for xyz clouds they are padding. Points come from
:func:`hr_depth_ros.core.geometry.depth_to_points`, or, in :class:`CloudPacker` (the depth node's
one-pass path), from the rays of :func:`hr_depth_ros.core.geometry.ray_planes` times depth.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
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


@dataclass
class PackedCloud:
    """PointCloud2 bytes (:func:`pack_points` layout) with their ``height x width`` arrangement.

    Unorganised clouds are ``1 x N`` of the valid points only; organised ones keep every pixel
    of the grid, with NaN points where depth was invalid (``is_dense`` False then).
    """

    data: np.ndarray  # 1-D uint8, height * width * POINT_STEP bytes
    height: int
    width: int
    with_rgb: bool
    organized: bool
    is_dense: bool

    @property
    def points(self) -> np.ndarray:
        """float32 view: ``N x 3``, or ``height x width x 3`` when organised."""
        xyz = self.data.view(np.float32).reshape(-1, 4)[:, :3]
        return xyz.reshape(self.height, self.width, 3) if self.organized else xyz

    @property
    def colors(self) -> np.ndarray | None:
        """uint8 RGB matching :attr:`points`, or None for xyz clouds."""
        if not self.with_rgb:
            return None
        return unpack_rgb_float(self.data.view(np.float32)[3::4]).reshape(self.points.shape)


class CloudPacker:
    """Depth -> PointCloud2 bytes in one pass, into buffers kept from frame to frame.

    ``pack`` multiplies the precomputed rays (:func:`hr_depth_ros.core.geometry.ray_planes`) by the
    depth, interleaves x, y, z and the packed rgb with one ``cv2.merge`` into a preallocated
    ``h x w x 4`` float32 grid and, for unorganised clouds, gathers the valid 16-byte points
    into a preallocated output: no per-point Python and no per-frame allocation of the large
    arrays. The returned cloud's data is a view of those buffers: valid until the next call.
    """

    def __init__(self) -> None:
        self._shape: tuple[int, int] | None = None

    def _allocate(self, height: int, width: int) -> None:
        if self._shape == (height, width):
            return
        self._xyz = np.empty((3, height, width), dtype=np.float32)
        self._bgra = np.empty((height, width, 4), dtype=np.uint8)
        self._no_rgb = np.zeros((height, width), dtype=np.float32)
        self._grid = np.empty((height, width, 4), dtype=np.float32)
        self._gathered = np.empty(height * width, dtype=np.complex128)  # one 16-byte point per element
        self._shape = (height, width)

    def pack(self, depth: np.ndarray, rays: np.ndarray, rgb: np.ndarray | None = None,
             max_range: float | None = None, organized: bool = False) -> PackedCloud:
        """Cloud of ``depth`` (``h x w``, metres along z), ``rays`` (``3 x h x w``) and optional ``h x w x 3`` RGB.

        Depth that is NaN, inf, ``<= 0`` or ``> max_range`` is invalid, as in ``depth_to_points``,
        whose points (and their order) this reproduces exactly.
        """
        depth = np.asarray(depth, dtype=np.float32)
        if depth.ndim != 2:
            raise ValueError(f'depth must be H x W, got shape {depth.shape}')
        height, width = depth.shape
        if rays.shape != (3, height, width):
            raise ValueError(f'rays of shape {rays.shape} do not match depth of shape {depth.shape}')
        if rgb is not None and (rgb.shape != (height, width, 3) or rgb.dtype != np.uint8):
            raise ValueError(f'colours must be uint8 of shape {(height, width, 3)}, got {rgb.dtype} {rgb.shape}')
        self._allocate(height, width)
        with np.errstate(invalid='ignore', over='ignore'):
            valid = np.isfinite(depth) & (depth > 0)
            if max_range is not None:
                valid &= depth <= max_range
            dense = bool(valid.all())
            if organized and not dense:
                depth = np.where(valid, depth, np.float32(np.nan))
            np.multiply(rays, depth, out=self._xyz)
        packed_rgb = self._no_rgb
        if rgb is not None:
            # One SIMD pass to bytes b, g, r, 255, then clear byte 3: the rgb float of pack_rgb_float.
            packed = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGRA, dst=self._bgra).view(np.uint32)[..., 0]
            np.bitwise_and(packed, np.uint32(0x00FFFFFF), out=packed)
            packed_rgb = packed.view(np.float32)
        cv2.merge([self._xyz[0], self._xyz[1], self._xyz[2], packed_rgb], dst=self._grid)
        if organized:
            return PackedCloud(self._grid.reshape(-1).view(np.uint8), height, width, rgb is not None, True, dense)
        rows = self._grid.reshape(-1).view(np.complex128)
        if dense:
            gathered = rows
        else:
            gathered = self._gathered[:int(np.count_nonzero(valid))]
            np.take(rows, np.flatnonzero(valid), out=gathered)
        return PackedCloud(gathered.view(np.uint8), 1, gathered.size, rgb is not None, False, True)


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
