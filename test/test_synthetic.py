"""Tests for the synthetic street drive and its rosbag2 writer.

The key property: the rendered frames, depth, poses and K are mutually exact, so warping a
neighbouring frame into frame t with the ground truth (through ``geometry.warp_image``, the
code training uses) reproduces frame t, and a wrong pose clearly does not.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hr_depth_ros.core import geometry
from hr_depth_ros.core.bags import list_topics, read_messages, topic_counts
from hr_depth_ros.core.image_decoding import compressed_to_rgb, image_to_array, image_to_rgb
from hr_depth_ros.tools.make_synthetic_bag import (BASE_FRAME, CAMERA_FRAME, CAMERA_INFO_TOPIC, COMPRESSED_TOPIC,
                                                   DEPTH_GT_TOPIC, FRAME_TOPICS, IMAGE_TOPIC, ODOM_FRAME,
                                                   TF_STATIC_TOPIC, TF_TOPIC, TOPIC_TYPES, main, write_synthetic_bag)
from hr_depth_ros.core.tf_poses import TransformTree
from hr_depth_ros.core.synthetic import SyntheticDrive

WIDTH, HEIGHT = 640, 192


@pytest.fixture(scope='module')
def drive() -> SyntheticDrive:
    return SyntheticDrive(WIDTH, HEIGHT, seed=0)


@pytest.fixture(scope='module')
def triplet(drive):
    return {i: drive.frame(i) for i in (10, 11, 12)}


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


def photometric_l1(drive, frames, target: int, source: int, perturbation: np.ndarray | None = None):
    """(mean L1 in [0, 1] units over valid pixels, valid fraction) of source warped into target."""
    tgt, src = frames[target], frames[source]
    K = torch.from_numpy(drive.K).float()[None]
    T_true = drive.T_target_to_source(target, source)
    depth_t = torch.from_numpy(np.nan_to_num(tgt.depth, nan=1e3))[None, None]
    # Valid: finite GT, lands inside the source, and not occluded there (forward-backward depth
    # consistency with the true pose: the point's depth in the source frame matches the source GT).
    T = torch.from_numpy(T_true).float()[None]
    coords = geometry.warp_coordinates(depth_t, K, T)
    points = geometry.BackprojectDepth(1, HEIGHT, WIDTH)(depth_t, torch.linalg.inv(geometry.intrinsics_4x4(K)))
    z_in_source = (T @ points)[:, 2].reshape(1, 1, HEIGHT, WIDTH)
    depth_s = torch.from_numpy(np.nan_to_num(src.depth, nan=1e3))[None, None]
    z_source_gt = F.grid_sample(depth_s, coords, mode='nearest', align_corners=True)
    valid = (torch.from_numpy(np.isfinite(tgt.depth))[None, None]
             & (coords.abs() <= 1).all(-1)[:, None]
             & ((z_in_source - z_source_gt).abs() < 0.03 * z_in_source))
    T_used = T_true if perturbation is None else perturbation @ T_true
    warped = geometry.warp_image(to_tensor(src.rgb), depth_t, K, torch.from_numpy(T_used).float()[None])
    error = (warped - to_tensor(tgt.rgb)).abs().mean(1, keepdim=True)
    return error[valid].mean().item(), valid.float().mean().item()


def test_warping_neighbours_with_ground_truth_reproduces_frame(drive, triplet):
    angle = math.radians(2.0)
    wrong = np.eye(4)
    wrong[:3, :3] = [[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]]
    wrong[0, 3] = 0.3
    for source in (10, 12):
        error, valid_fraction = photometric_l1(drive, triplet, 11, source)
        wrong_error, _ = photometric_l1(drive, triplet, 11, source, perturbation=wrong)
        unwarped = (to_tensor(triplet[source].rgb) - to_tensor(triplet[11].rgb)).abs().mean().item()
        # Exact geometry leaves only bilinear resampling error and the pixel-footprint-dependent
        # texture detail (octaves fading with distance): measured ~0.006 (1.5 grey levels).
        # 0.015 (~4 grey levels) leaves margin yet is far below a 0.3 m / 2 deg pose error (~0.10)
        # and below not warping at all (~0.07).
        assert valid_fraction > 0.6, f'source {source}: only {valid_fraction:.2f} of pixels valid'
        assert error < 0.015, f'source {source}: photometric L1 {error:.4f} with the true pose'
        assert wrong_error > 4 * error and wrong_error > 0.04, f'source {source}: perturbed pose gives {wrong_error:.4f}'
        assert unwarped > 0.03, f'source {source}: frames barely differ ({unwarped:.4f}): no parallax'


def test_depth_and_pose_put_points_on_the_scene_surfaces(drive, triplet):
    frame = triplet[11]
    points, valid = geometry.depth_to_points(frame.depth, drive.K, organized=True)
    world = points @ frame.pose_world_from_camera[:3, :3].T + frame.pose_world_from_camera[:3, 3]
    # Bottom-centre pixels see the road: world z = 0.
    bottom = world[-5:, WIDTH // 2 - 20:WIDTH // 2 + 20]
    np.testing.assert_allclose(bottom[..., 2], 0.0, atol=2e-3)
    # Every valid point lies on a plane of the scene: road (z = 0), a facade (|y| = 9 or 21) or a
    # car face (boxes: |y| within the parking lane, z below 1.7 m).
    on_road = np.abs(world[..., 2]) < 2e-3
    on_facade = (np.abs(np.abs(world[..., 1]) - 9.0) < 2e-3) | (np.abs(np.abs(world[..., 1]) - 21.0) < 2e-3)
    on_car = (np.abs(world[..., 1]) > 3.4) & (np.abs(world[..., 1]) < 5.6) & (world[..., 2] < 1.7)
    assert (on_road | on_facade | on_car)[valid].all()
    assert on_road[valid].mean() > 0.2 and on_facade[valid].mean() > 0.2 and on_car[valid].any()
    # Sky and the far road are invalid (NaN), the rest within (0, max_depth].
    assert np.isnan(frame.depth[0]).any() and (np.nanmax(frame.depth) <= drive.max_depth)
    assert frame.rgb.shape == (HEIGHT, WIDTH, 3) and frame.rgb.dtype == np.uint8
    assert frame.depth.dtype == np.float32


def test_intrinsics_motion_and_stamps(drive):
    K = drive.K
    assert K[0, 0] == pytest.approx(0.58 * WIDTH) and K[1, 1] == pytest.approx(1.92 * HEIGHT)
    assert K[0, 2] == pytest.approx((WIDTH - 1) / 2) and K[1, 2] == pytest.approx((HEIGHT - 1) / 2)
    step = drive.pose(1)[:3, 3] - drive.pose(0)[:3, 3]
    assert 0.8 < np.linalg.norm(step) < 1.0  # ~9 m/s at 10 Hz
    assert drive.pose(0)[2, 3] == pytest.approx(1.5, abs=0.05)
    # Optical z looks forward along the street, optical y points down.
    np.testing.assert_allclose(drive.pose(0)[:3, 2], [1, 0, 0], atol=0.12)
    np.testing.assert_allclose(drive.pose(0)[:3, 1], [0, 0, -1], atol=0.05)
    assert drive.stamp_ns(10) - drive.stamp_ns(0) == 1_000_000_000
    assert len(drive) == 60


def test_deterministic_for_a_seed():
    a = SyntheticDrive(96, 32, seed=3, noise=2.0, exposure_jitter=0.05).frame(4)
    b = SyntheticDrive(96, 32, seed=3, noise=2.0, exposure_jitter=0.05).frame(4)
    c = SyntheticDrive(96, 32, seed=4).frame(4)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth, b.depth)
    np.testing.assert_array_equal(a.pose_world_from_camera, b.pose_world_from_camera)
    assert not np.array_equal(a.rgb, c.rgb)
    with pytest.raises(ValueError):
        SyntheticDrive(4, 4)


def frames_by_stamp(bag: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for topic, timestamp, header_stamp, msg in read_messages(bag, list(FRAME_TOPICS)):
        stamp = header_stamp if header_stamp is not None else timestamp
        assert header_stamp == timestamp
        assert topic not in out.setdefault(stamp, {})
        out[stamp][topic] = msg
    return out


def test_fixture_bag_contents(synthetic_bag):
    assert list_topics(synthetic_bag) == TOPIC_TYPES
    counts = topic_counts(synthetic_bag)
    assert {topic: counts[topic] for topic in FRAME_TOPICS} == {topic: 60 for topic in FRAME_TOPICS}
    assert counts[TF_STATIC_TOPIC] == 1 and counts[TF_TOPIC] >= 3 * 60  # odometry at 30 Hz
    by_stamp = frames_by_stamp(synthetic_bag)
    drive = SyntheticDrive(WIDTH, HEIGHT, fps=10.0, seed=0)
    assert sorted(by_stamp) == [drive.stamp_ns(i) for i in range(60)]
    for index in (0, 37):
        msgs = by_stamp[drive.stamp_ns(index)]
        assert set(msgs) == set(FRAME_TOPICS)
        truth = drive.frame(index)
        image = msgs[IMAGE_TOPIC]
        assert image.encoding == 'rgb8' and image.header.frame_id == CAMERA_FRAME
        rgb = image_to_rgb(image)
        np.testing.assert_array_equal(rgb, truth.rgb)
        decoded = compressed_to_rgb(msgs[COMPRESSED_TOPIC])
        assert 'jpeg' in msgs[COMPRESSED_TOPIC].format
        assert np.abs(decoded.astype(int) - rgb.astype(int)).mean() < 4.0  # JPEG q90 error
        depth_msg = msgs[DEPTH_GT_TOPIC]
        assert depth_msg.encoding == '32FC1'
        np.testing.assert_array_equal(image_to_array(depth_msg), truth.depth)
        info = msgs[CAMERA_INFO_TOPIC]
        assert (info.width, info.height, info.distortion_model) == (WIDTH, HEIGHT, 'plumb_bob')
        assert info.header.frame_id == CAMERA_FRAME
        np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), drive.K)
        np.testing.assert_allclose(np.asarray(info.p).reshape(3, 4)[:, :3], drive.K)
        np.testing.assert_allclose(np.asarray(info.r).reshape(3, 3), np.eye(3))
        np.testing.assert_array_equal(np.asarray(info.d), np.zeros(5))


def test_fixture_bag_tf_chain_gives_the_camera_poses(synthetic_bag):
    """odom -> base_link on /tf (30 Hz, stamps 7 ms off the camera's) and the static mount on /tf_static
    compose, interpolated at the image stamps, to the drive's exact camera poses."""
    tree = TransformTree()
    for topic, timestamp, _, msg in read_messages(synthetic_bag, [TF_TOPIC, TF_STATIC_TOPIC]):
        for tf in msg.transforms:
            assert tf.header.stamp.sec * 10**9 + tf.header.stamp.nanosec == timestamp
        tree.add_message(msg, static=topic == TF_STATIC_TOPIC)
        if topic == TF_TOPIC:
            assert [(t.header.frame_id, t.child_frame_id) for t in msg.transforms] == [(ODOM_FRAME, BASE_FRAME)]
    drive = SyntheticDrive(WIDTH, HEIGHT, fps=10.0, seed=0)
    lookup = tree.lookup(ODOM_FRAME, CAMERA_FRAME, [drive.stamp_ns(i) for i in range(60)])
    assert lookup.valid.all()
    for index in (0, 37, 59):
        # Linear interpolation between 30 Hz samples of a smooth drive: sub-millimetre.
        np.testing.assert_allclose(lookup.poses[index], drive.pose(index), atol=5e-4)


def test_sqlite3_bag_same_content_and_deterministic(tmp_path, synthetic_bag):
    first = write_synthetic_bag(tmp_path / 'a', frames=3, width=WIDTH, height=HEIGHT, storage='sqlite3', seed=0)
    assert list(first.glob('*.db3')) and list_topics(first) == TOPIC_TYPES
    small = frames_by_stamp(first)
    reference = frames_by_stamp(synthetic_bag)
    assert len(small) == 3
    for stamp, msgs in small.items():
        np.testing.assert_array_equal(image_to_rgb(msgs[IMAGE_TOPIC]), image_to_rgb(reference[stamp][IMAGE_TOPIC]))
        np.testing.assert_array_equal(bytes(msgs[COMPRESSED_TOPIC].data), bytes(reference[stamp][COMPRESSED_TOPIC].data))


def test_writer_refuses_overwrite_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    existing = tmp_path / 'exists'
    existing.mkdir()
    with pytest.raises(FileExistsError, match='refusing to overwrite'):
        write_synthetic_bag(existing, frames=1, width=32, height=16)
    with pytest.raises(ValueError, match='storage'):
        write_synthetic_bag(tmp_path / 'x', frames=1, width=32, height=16, storage='zip')

    def broken(self, index):
        if index == 1:
            raise RuntimeError('render failed')
        return original(self, index)

    original = SyntheticDrive.frame
    monkeypatch.setattr(SyntheticDrive, 'frame', broken)
    with pytest.raises(RuntimeError, match='render failed'):
        write_synthetic_bag(tmp_path / 'partial', frames=3, width=32, height=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['exists']


def test_cli_writes_a_bag(tmp_path, capsys):
    out = tmp_path / 'cli_bag'
    preview = tmp_path / 'preview.png'
    assert main(['--output', str(out), '--frames', '2', '--width', '64', '--height', '32', '--storage', 'mcap',
                 '--seed', '5', '--preview', str(preview)]) == 0
    printed = capsys.readouterr().out
    assert f'wrote {out}' in printed and '/camera/depth_gt' in printed
    import cv2

    assert cv2.imread(str(preview)).shape == (32, 128, 3)
    counts = topic_counts(out)
    assert {topic: counts[topic] for topic in FRAME_TOPICS} == {topic: 2 for topic in FRAME_TOPICS}
    image = next(msg for topic, _, _, msg in read_messages(out, [IMAGE_TOPIC]))
    assert (image.width, image.height) == (64, 32)
    assert main(['--output', str(out), '--frames', '2']) == 2
    assert 'already exists' in capsys.readouterr().err
