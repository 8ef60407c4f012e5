"""Camera motion from two-view geometry (core/visual_odometry.py): known-answer poses on synthetic
drives, refused pairs counted, the translation length tied to the depth, the cache and the
``vo`` pose source through data preparation and a short fine-tune."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from hr_depth_ros.core.geometry import scale_intrinsics
from hr_depth_ros.core.synthetic import SyntheticDrive
from hr_depth_ros.core.visual_odometry import (PairMotions, TwoViewSettings, inverse_motion, store_motions,
                                               translation_scale, two_view_motion)

TRAIN_W, TRAIN_H = 320, 96  # the demo's training resolution; the drive is rendered at 640x192


def rotation_error_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R_a.T @ R_b) - 1) / 2, -1.0, 1.0))))


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1.0, 1.0))))


@pytest.fixture(scope='module')
def drive_frames():
    """Six frames of the demo's drive (9 m/s at 10 fps) at training resolution, exact depth and K."""
    drive = SyntheticDrive(640, 192, seed=1, num_frames=6)
    frames = [drive.frame(i) for i in range(6)]
    K = scale_intrinsics(drive.K, TRAIN_W / 640, TRAIN_H / 192)
    images = [cv2.resize(f.rgb, (TRAIN_W, TRAIN_H), interpolation=cv2.INTER_AREA) for f in frames]
    depths = [cv2.resize(f.depth, (TRAIN_W, TRAIN_H), interpolation=cv2.INTER_NEAREST) for f in frames]
    return drive, images, depths, K


def test_known_answer_poses_on_a_drive(drive_frames):
    drive, images, depths, K = drive_frames
    for i in range(5):
        for target, source in ((i, i + 1), (i + 1, i)):
            result = two_view_motion(images[target], images[source], K)
            truth = drive.T_target_to_source(target, source)
            assert result.ok, result.status
            assert rotation_error_deg(result.T[:3, :3], truth[:3, :3]) < 1.0
            assert angle_deg(result.T[:3, 3], truth[:3, 3]) < 5.0
            assert np.linalg.norm(result.T[:3, 3]) == pytest.approx(1.0)
            # The length from the exact depth is the true one (0.9 m): within the estimate's few per cent.
            length = translation_scale(result.T, K, result.target_px, result.source_px, depths[target])
            assert length == pytest.approx(np.linalg.norm(truth[:3, 3]), rel=0.1)


def test_translation_length_follows_the_depth(drive_frames):
    """The length is in the units of the depth it is given: depth x 3 gives a translation x 3."""
    _, images, depths, K = drive_frames
    result = two_view_motion(images[2], images[3], K)
    metres = translation_scale(result.T, K, result.target_px, result.source_px, depths[2])
    tripled = translation_scale(result.T, K, result.target_px, result.source_px, 3.0 * depths[2])
    assert tripled == pytest.approx(3.0 * metres, rel=1e-6)
    # Without depth at the tracks the length is unknown: NaN, never a guess.
    assert np.isnan(translation_scale(result.T, K, result.target_px, result.source_px, np.full_like(depths[2], np.nan)))


def test_failures_are_refused_with_their_reason(drive_frames):
    _, images, _, K = drive_frames
    static = two_view_motion(images[0], images[0].copy(), K)
    assert static.status == 'no_parallax' and np.isnan(static.T).all()
    # A pure rotation (the image shifted sideways by a homography K R K^-1 of 2 degrees) has no parallax.
    angle = np.radians(2.0)
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    rotated = cv2.warpPerspective(images[0], K @ R @ np.linalg.inv(K), (TRAIN_W, TRAIN_H))
    assert two_view_motion(images[0], rotated, K).status == 'no_parallax'
    flat = np.full_like(images[0], 128)
    assert two_view_motion(flat, flat, K).status == 'few_tracks'
    noise = np.random.default_rng(0).integers(0, 255, images[0].shape, dtype=np.uint8)
    assert two_view_motion(images[0], noise, K).status in ('few_tracks', 'few_inliers')


def test_pair_motions_count_scale_and_cache(drive_frames, tmp_path):
    drive, images, depths, K = drive_frames
    frames = [*images[:4], np.full_like(images[0], 128), *images[4:]]  # a blank frame breaks two pairs
    segment = np.zeros(len(frames), dtype=np.int64)
    motions = PairMotions.estimate(frames.__getitem__, segment, [K], stride=1)
    assert motions.failures['few_tracks'] == 2 and sum(motions.failures.values()) == 2
    assert [motions.has_motion(i) for i in range(len(frames))] == [False, True, True, False, False, False, False]
    # Both directions of a pair come from one estimate.
    np.testing.assert_allclose(motions.T[2, 1], inverse_motion(motions.T[3, 0]), atol=1e-9)
    truth = drive.T_target_to_source(2, 1)
    depth_of = {i: d for i, d in enumerate([*depths[:4], depths[0], *depths[4:]])}
    scaled, failures = motions.scaled(depth_of.__getitem__, [K], segment, [1, 2])
    assert not failures and np.isnan(scaled[0]).all() and np.isfinite(scaled[1:3]).all()
    assert np.linalg.norm(scaled[2, 0, :3, 3]) == pytest.approx(np.linalg.norm(truth[:3, 3]), rel=0.1)
    motions.save(tmp_path / 'vo.npz')
    loaded = PairMotions.load(tmp_path / 'vo.npz')
    np.testing.assert_array_equal(loaded.T, motions.T)
    assert loaded.failures == motions.failures and list(loaded.status[:, 1]) == list(motions.status[:, 1])
    np.testing.assert_array_equal(loaded.tracks[2][0], motions.tracks[2][0])
    (tmp_path / 'bad.npz').write_bytes(b'not a file')
    assert PairMotions.load(tmp_path / 'bad.npz') is None and PairMotions.load(tmp_path / 'none.npz') is None


def test_vo_pose_source_prepares_samples_and_caches_per_bag(tmp_path):
    from hr_depth_ros.core.training.cache import prepare_frames
    from hr_depth_ros.core.training.data import DataConfig, TripletDataset, prepare_data
    from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag

    bag = write_synthetic_bag(tmp_path / 'camera_only', frames=8, width=TRAIN_W, height=TRAIN_H, seed=3, with_tf=False)
    config = DataConfig(bags=[bag], width=TRAIN_W, height=TRAIN_H, val_fraction=0.0, frame_cache=tmp_path / 'cache')
    data = prepare_data(config)
    try:
        assert data.pose_source == 'vo' and data.motions is not None
        assert 'two-view geometry' in data.report.summary() and len(data.train) == 6
        assert all(data.motions.has_motion(centre) for _, centre, _ in data.train)
        cached = list((tmp_path / 'cache').glob('*/two_view-*.npz'))
        assert len(cached) == 1
        transforms = np.tile(np.eye(4), (len(data.store), 2, 1, 1))
        transforms[3, 1, 0, 3] = 0.5
        item = TripletDataset(data.store, data.train, transforms=transforms)[2]  # centre frame 3
        assert item['has_pose'] and float(item['T'][1, 0, 3]) == pytest.approx(0.5)
    finally:
        data.close()
    store = prepare_frames(config)  # a second preparation reuses the cached geometry
    try:
        stamp = cached[0].stat().st_mtime_ns
        assert store_motions(store, 1).failures == data.motions.failures and cached[0].stat().st_mtime_ns == stamp
    finally:
        store.close()


def test_vo_fine_tune_selects_best_by_the_fixed_poses(tmp_path, lite_checkpoint):
    """A camera-only bag fine-tunes with two-view poses; best/ is chosen by the photometric error under them."""
    import csv

    from hr_depth_ros.core.training.trainer import Trainer, TrainingConfig
    from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag

    bag = write_synthetic_bag(tmp_path / 'camera_only', frames=12, width=128, height=64, seed=5, with_tf=False)
    logs = []
    config = TrainingConfig(bags=[str(bag)], output=str(tmp_path / 'out'), width=128, height=64, steps=2,
                            batch_size=2, init=str(lite_checkpoint), val_fraction=0.3, val_block_frames=5,
                            val_every=1, device='cpu', progress_bar=False)
    result = Trainer(config, lambda event: logs.append(event.get('message', ''))).run()
    assert result['step'] == 2
    metadata = json.loads((tmp_path / 'out' / 'latest' / 'hr_depth_ros.json').read_text())
    assert metadata['pose_source'] == 'vo' and metadata['selected_by'] == 'loss_tf'
    assert metadata['anchor_weight'] == 0.0
    rows = [row for row in csv.DictReader(open(tmp_path / 'out' / 'metrics.csv')) if row['split'] == 'val']
    assert rows and all(row['loss_tf'] and row['selected_by'] == 'loss_tf' for row in rows)
    assert any('translation lengths from the start depth network' in line for line in logs)
