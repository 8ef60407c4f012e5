"""PointCloud2 byte layout, rgb packing and PLY round trip (ROS-free)."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from hr_depth_ros.core.pointcloud import (
    POINT_STEP,
    pack_points,
    pack_rgb_float,
    pointcloud_fields,
    read_ply,
    unpack_points,
    unpack_rgb_float,
    write_ply,
)


def test_fields_match_depth_image_proc_layout():
    assert pointcloud_fields(False) == [('x', 0, 7, 1), ('y', 4, 7, 1), ('z', 8, 7, 1)]
    assert pointcloud_fields(True)[-1] == ('rgb', 12, 7, 1)
    assert POINT_STEP == 16


def test_rgb_packing_is_0x00RRGGBB_little_endian():
    rgb = np.array([[0x12, 0x34, 0x56], [255, 0, 0], [0, 0, 255]], dtype=np.uint8)
    packed = pack_rgb_float(rgb)
    assert packed.dtype == np.float32
    as_int = packed.view(np.uint32)
    assert as_int.tolist() == [0x123456, 0xFF0000, 0x0000FF]
    # depth_image_proc / PCL memory order of the 4 bytes: b, g, r, a(0).
    assert packed[:1].tobytes() == bytes([0x56, 0x34, 0x12, 0x00])
    np.testing.assert_array_equal(unpack_rgb_float(packed), rgb)


def test_pack_points_decodes_field_by_field():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(7, 3)).astype(np.float32)
    points[2] = np.nan
    colors = rng.integers(0, 256, size=(7, 3), dtype=np.uint8)
    buffer, step = pack_points(points, colors)
    assert step == 16 and buffer.dtype == np.uint8 and buffer.size == 7 * 16
    raw = buffer.tobytes()
    for i in range(7):
        x, y, z = struct.unpack_from('<fff', raw, i * step)
        np.testing.assert_array_equal(np.float32([x, y, z]), points[i])
        b, g, r, a = raw[i * step + 12:i * step + 16]
        assert (r, g, b, a) == (*colors[i].tolist(), 0)
    decoded, decoded_colors = unpack_points(raw, with_rgb=True)
    np.testing.assert_array_equal(decoded, points)
    np.testing.assert_array_equal(decoded_colors, colors)


def test_pack_points_organized_keeps_row_major_order_and_pads_xyz():
    points = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    buffer, step = pack_points(points)
    decoded, colors = unpack_points(buffer, with_rgb=False)
    assert colors is None
    np.testing.assert_array_equal(decoded, points.reshape(-1, 3))
    assert np.frombuffer(buffer.tobytes(), dtype=np.float32).reshape(-1, 4)[:, 3].tolist() == [0.0] * 6


def test_pack_points_rejects_bad_shapes():
    with pytest.raises(ValueError, match='N x 3'):
        pack_points(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match='colours shape'):
        pack_points(np.zeros((4, 3), np.float32), np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match='uint8'):
        pack_rgb_float(np.zeros((3, 3), np.float32))


def test_ply_round_trip_with_colours_drops_non_finite(tmp_path):
    rng = np.random.default_rng(1)
    points = rng.normal(size=(4, 5, 3)).astype(np.float32)
    points[0, 0, 2] = np.nan
    colors = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    path = write_ply(tmp_path / 'sub' / 'cloud.ply', points, colors)
    header = path.read_bytes().split(b'end_header\n')[0].decode()
    assert 'format binary_little_endian 1.0' in header and 'element vertex 19' in header
    assert 'property uchar red' in header
    read_points, read_colors = read_ply(path)
    np.testing.assert_array_equal(read_points, points.reshape(-1, 3)[1:])
    np.testing.assert_array_equal(read_colors, colors.reshape(-1, 3)[1:])
    assert not list(tmp_path.glob('sub/*.tmp'))


def test_ply_without_colours(tmp_path):
    points = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    read_points, read_colors = read_ply(write_ply(tmp_path / 'a.ply', points))
    assert read_colors is None
    np.testing.assert_array_equal(read_points, points)


def test_ply_bad_colours_write_nothing(tmp_path):
    with pytest.raises(ValueError, match='colours'):
        write_ply(tmp_path / 'bad.ply', np.zeros((3, 3), np.float32), np.zeros((3, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('stride, max_range, organized, with_rgb', [
    (1, 50.0, False, True), (2, None, False, False), (3, 20.0, True, True), (1, None, True, False)])
def test_cloud_packer_reproduces_depth_to_points_and_pack_points(stride, max_range, organized, with_rgb):
    from hr_depth_ros.core.geometry import depth_to_points, ray_planes
    from hr_depth_ros.core.pointcloud import CloudPacker

    rng = np.random.default_rng(stride)
    height, width = 40, 70
    K = np.array([[60.0, 0.0, 33.5], [0.0, 55.0, 18.0], [0.0, 0.0, 1.0]])
    depth = rng.uniform(0.5, 80.0, (height, width)).astype(np.float32)
    depth[3, :] = np.nan
    depth[5, 4:9] = [np.inf, 0.0, -1.0, 90.0, 49.0]
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    points, valid = depth_to_points(depth, K, stride=stride, max_range=max_range, organized=organized)
    colors = rgb[::stride, ::stride] if organized else rgb[::stride, ::stride][valid]
    expected, _ = pack_points(points, colors if with_rgb else None)
    packer = CloudPacker()
    for _ in range(2):  # the second call reuses the buffers
        cloud = packer.pack(depth[::stride, ::stride], ray_planes(K, height, width, stride),
                            rgb[::stride, ::stride] if with_rgb else None, max_range=max_range, organized=organized)
        assert cloud.data.tobytes() == expected.tobytes()
    assert cloud.organized == organized and cloud.with_rgb == with_rgb
    assert (cloud.height, cloud.width) == (points.shape[:2] if organized else (1, len(points)))
    assert cloud.is_dense == bool(np.isfinite(points).all())
    np.testing.assert_array_equal(cloud.points, points)
    if with_rgb:
        np.testing.assert_array_equal(cloud.colors, colors)
    else:
        assert cloud.colors is None


def test_cloud_packer_edge_cases():
    from hr_depth_ros.core.geometry import pixel_rays, ray_planes
    from hr_depth_ros.core.pointcloud import CloudPacker

    K = np.array([[50.0, 0.0, 15.5], [0.0, 50.0, 7.5], [0.0, 0.0, 1.0]])
    planes = ray_planes(K, 16, 32, 2)
    assert planes.shape == (3, 8, 16) and planes.flags.c_contiguous and not planes.flags.writeable
    np.testing.assert_array_equal(planes.transpose(1, 2, 0), pixel_rays(K, 16, 32)[::2, ::2])
    packer = CloudPacker()
    empty = packer.pack(np.full((16, 32), np.nan, np.float32), ray_planes(K, 16, 32))
    assert (empty.height, empty.width, empty.data.size) == (1, 0, 0)
    dense = packer.pack(np.ones((8, 16), np.float32), planes)  # new size: buffers reallocated
    assert dense.width == 128 and dense.is_dense
    np.testing.assert_array_equal(dense.points[:, 2], 1.0)
    with pytest.raises(ValueError, match='rays of shape'):
        packer.pack(np.ones((4, 4), np.float32), planes)
    with pytest.raises(ValueError, match='colours must be uint8'):
        packer.pack(np.ones((8, 16), np.float32), planes, np.zeros((8, 16, 3), np.float32))
