"""Tests for hr_depth_ros.core.geometry (NumPy and torch back-projection / projection)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hr_depth_ros.core import geometry

K_TEST = np.array([[371.2, 0.0, 319.5], [0.0, 368.6, 95.5], [0.0, 0.0, 1.0]])


def test_disp_to_depth_numpy_and_torch():
    disp = np.array([0.0, 1.0, 0.5])
    scaled, depth = geometry.disp_to_depth(disp, 0.1, 100.0)
    assert depth[0] == pytest.approx(100.0)
    assert depth[1] == pytest.approx(0.1)
    assert scaled[2] == pytest.approx(0.01 + 0.5 * (10.0 - 0.01))
    scaled_t, depth_t = geometry.disp_to_depth(torch.tensor(disp), 0.1, 100.0)
    np.testing.assert_allclose(depth_t.numpy(), depth)
    with pytest.raises(ValueError):
        geometry.disp_to_depth(disp, 10.0, 1.0)


def test_scale_intrinsics_pixel_centre_convention():
    K = geometry.scale_intrinsics(K_TEST, 0.5, 0.5)
    assert K[0, 0] == pytest.approx(185.6)
    assert K[1, 1] == pytest.approx(184.3)
    # Centre of a 640 wide image (319.5) stays the centre of the 320 wide image (159.5).
    assert K[0, 2] == pytest.approx(159.5)
    assert K[1, 2] == pytest.approx(47.5)
    # Normalised round trip, and scale == normalise then re-pixelise at the new size.
    Kn = geometry.normalized_intrinsics(K_TEST, 640, 192)
    assert Kn[0, 2] == pytest.approx(0.5) and Kn[1, 2] == pytest.approx(0.5)
    np.testing.assert_allclose(geometry.pixel_intrinsics(Kn, 640, 192), K_TEST)
    np.testing.assert_allclose(geometry.pixel_intrinsics(Kn, 1024, 320),
                               geometry.scale_intrinsics(K_TEST, 1024 / 640, 320 / 192))
    # monodepth2's KITTI K (4x4 normalised) is accepted.
    kitti = np.array([[0.58, 0, 0.5, 0], [0, 1.92, 0.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    Kp = geometry.pixel_intrinsics(kitti, 640, 192)
    assert Kp[0, 0] == pytest.approx(0.58 * 640) and Kp[0, 2] == pytest.approx(319.5)
    with pytest.raises(ValueError, match='3x3'):
        geometry.scale_intrinsics(np.eye(2), 1, 1)


def test_pixel_rays_and_hand_computed_point():
    rays = geometry.pixel_rays(K_TEST, 192, 640)
    assert rays.shape == (192, 640, 3) and rays.dtype == np.float32
    np.testing.assert_allclose(rays[..., 2], 1.0)
    depth = np.full((192, 640), 4.0, dtype=np.float32)
    depth[10, 600] = 7.5
    points, valid = geometry.depth_to_points(depth, K_TEST, organized=True)
    expected = np.array([(600 - 319.5) / 371.2 * 7.5, (10 - 95.5) / 368.6 * 7.5, 7.5])
    np.testing.assert_allclose(points[10, 600], expected, rtol=1e-5)
    assert valid.all()


def test_depth_to_points_stride_invalid_and_max_range():
    height, width = 12, 16
    K = np.array([[20.0, 0, 7.5], [0, 20.0, 5.5], [0, 0, 1]])
    depth = np.full((height, width), 2.0, dtype=np.float32)
    depth[0, 0] = np.nan
    depth[0, 2] = np.inf
    depth[2, 0] = -1.0
    depth[2, 2] = 0.0
    depth[4, 4] = 50.0
    depth[1, 1] = np.nan  # not on the stride-2 grid: irrelevant there
    pts_org, valid = geometry.depth_to_points(depth, K, stride=2, max_range=10.0, organized=True)
    assert pts_org.shape == (6, 8, 3) and valid.shape == (6, 8)
    assert not valid[0, 0] and not valid[0, 1] and not valid[1, 0] and not valid[1, 1] and not valid[2, 2]
    assert valid.sum() == 6 * 8 - 5
    assert np.isnan(pts_org[~valid]).all() and np.isfinite(pts_org[valid]).all()
    # Decimated pixel (3, 5) is full-resolution pixel (6, 10).
    np.testing.assert_allclose(pts_org[3, 5], [(10 - 7.5) / 20 * 2, (6 - 5.5) / 20 * 2, 2.0], rtol=1e-6)
    pts, valid2 = geometry.depth_to_points(depth, K, stride=2, max_range=10.0)
    assert pts.shape == (valid.sum(), 3)
    np.testing.assert_array_equal(valid, valid2)
    np.testing.assert_allclose(pts, pts_org[valid])
    # Without max_range, the 50 m pixel is kept.
    _, valid3 = geometry.depth_to_points(depth, K, stride=2)
    assert valid3[2, 2]
    with pytest.raises(ValueError, match='stride'):
        geometry.depth_to_points(depth, K, stride=0)
    with pytest.raises(ValueError, match='H x W'):
        geometry.depth_to_points(np.zeros(5), K)


def test_numpy_and_torch_backprojection_agree():
    height, width = 24, 40
    K = geometry.scale_intrinsics(K_TEST, width / 640, height / 192)
    rng = np.random.default_rng(0)
    depth = rng.uniform(1, 30, size=(height, width)).astype(np.float32)
    pts_np, _ = geometry.depth_to_points(depth, K, organized=True)
    inv_K = torch.from_numpy(np.linalg.inv(geometry.intrinsics_4x4(K)[0].numpy())).float()[None]
    layer = geometry.BackprojectDepth(1, height, width)
    cam = layer(torch.from_numpy(depth)[None, None], inv_K)
    assert cam.shape == (1, 4, height * width)
    np.testing.assert_allclose(cam[0, :3].T.reshape(height, width, 3).numpy(), pts_np, rtol=1e-5, atol=1e-5)
    assert 'pix_coords' not in layer.state_dict()


def test_project_backproject_round_trip_identity_pose():
    height, width, batch = 16, 24, 2
    K = torch.from_numpy(geometry.scale_intrinsics(K_TEST, width / 640, height / 192)).float()
    K4 = geometry.intrinsics_4x4(K).repeat(batch, 1, 1)
    depth = torch.rand(batch, 1, height, width) * 20 + 1
    points = geometry.BackprojectDepth(batch, height, width)(depth, torch.linalg.inv(K4))
    coords = geometry.Project3D(batch, height, width)(points, K4, torch.eye(4).repeat(batch, 1, 1))
    u = (coords[..., 0] + 1) / 2 * (width - 1)
    v = (coords[..., 1] + 1) / 2 * (height - 1)
    uu, vv = torch.meshgrid(torch.arange(width).float(), torch.arange(height).float(), indexing='xy')
    torch.testing.assert_close(u, uu.expand_as(u), atol=1e-3, rtol=0)
    torch.testing.assert_close(v, vv.expand_as(v), atol=1e-3, rtol=0)
    # Warping an image onto itself with identity pose returns the image.
    img = torch.rand(batch, 3, height, width)
    torch.testing.assert_close(geometry.warp_image(img, depth, K4, torch.eye(4).repeat(batch, 1, 1)), img,
                               atol=1e-4, rtol=0)


def test_warp_shifts_image_by_expected_pixels():
    # Fronto-parallel plane at depth 10, camera translated by +x 1 m: disparity fx*1/10 pixels.
    height, width = 10, 30
    K = np.array([[20.0, 0, 14.5], [0, 20.0, 4.5], [0, 0, 1]])
    depth = torch.full((1, 1, height, width), 10.0)
    T = torch.eye(4)[None].clone()
    T[0, 0, 3] = -1.0  # target point X maps to X - 1 in the source camera (source is 1 m to the right)
    src = torch.arange(width).float().repeat(1, 3, height, 1)  # value = column index
    warped = geometry.warp_image(src, depth, torch.from_numpy(K).float(), T)
    # Target column u samples source column u - 2 (border padding at the left edge).
    np.testing.assert_allclose(warped[0, 0, 5, 5:].numpy(), np.arange(3, width - 2), atol=1e-4)
    assert warped[0, 0, 5, 0].item() == pytest.approx(0.0)


def test_rot_from_axisangle_matches_known_rotation():
    angle = math.radians(30)
    R = geometry.rot_from_axisangle(torch.tensor([[[0.0, 0.0, angle]]]))
    expected = torch.tensor([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    torch.testing.assert_close(R[0, :3, :3], expected, atol=1e-6, rtol=0)
    assert R.shape == (1, 4, 4) and R[0, 3, 3] == 1
    # Arbitrary axis: orthonormal, det 1, axis is a fixed point.
    vec = torch.tensor([[0.3, -0.5, 0.2]])
    R = geometry.rot_from_axisangle(vec)[0, :3, :3]
    torch.testing.assert_close(R @ R.T, torch.eye(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(R @ vec[0], vec[0], atol=1e-6, rtol=0)
    assert torch.linalg.det(R).item() == pytest.approx(1.0, abs=1e-6)
    # Zero rotation is the identity, and gradients flow.
    zero = torch.zeros(1, 1, 3, requires_grad=True)
    torch.testing.assert_close(geometry.rot_from_axisangle(zero)[0], torch.eye(4))
    geometry.rot_from_axisangle(zero + 0.1).sum().backward()
    assert zero.grad is not None and torch.isfinite(zero.grad).all()


def test_transformation_from_parameters_and_inverse():
    axisangle = torch.tensor([[[0.05, -0.1, 0.02]], [[0.0, 0.2, 0.0]]])
    translation = torch.tensor([[[0.3, -0.1, 1.2]], [[-0.5, 0.0, 0.1]]])
    M = geometry.transformation_from_parameters(axisangle, translation)
    M_inv = geometry.transformation_from_parameters(axisangle, translation, invert=True)
    torch.testing.assert_close(M @ M_inv, torch.eye(4).repeat(2, 1, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(M[:, :3, 3], translation[:, 0])
    torch.testing.assert_close(geometry.get_translation_matrix(translation)[:, :3, 3], translation[:, 0])


def test_quaternion_round_trip_and_relative_transform():
    rng = np.random.default_rng(1)
    for _ in range(20):
        vec = torch.from_numpy(rng.normal(size=(1, 3)) * 1.5)
        R = geometry.rot_from_axisangle(vec)[0, :3, :3].numpy()
        q = geometry.quaternion_from_matrix(R)
        assert q[3] >= 0 and np.linalg.norm(q) == pytest.approx(1.0)
        np.testing.assert_allclose(geometry.matrix_from_quaternion(q), R, atol=1e-6)
    # 90 deg about z: q = (0, 0, sin 45, cos 45).
    Rz = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(geometry.quaternion_from_matrix(Rz), [0, 0, math.sqrt(0.5), math.sqrt(0.5)])
    pose_a = geometry.pose_matrix(Rz, [1, 2, 3])
    pose_b = geometry.pose_matrix([0, 0, 0, 1], [1, 2, 4])
    T = geometry.relative_transform(pose_a, pose_b)
    point_in_a = np.array([0.5, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(pose_b @ (T @ point_in_a), pose_a @ point_in_a)
