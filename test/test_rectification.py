"""Lens distortion: calibrations read from CameraInfo, OpenCV rectification maps, distorted synthetic drives."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hr_depth_ros.core.image_decoding import DEPTH_ENCODINGS, UnsupportedEncoding, array_to_image_fields, depth_to_metres
from hr_depth_ros.core.rectification import Calibration, Rectifier, apply_distortion, calibration_of, rectifier_for
from hr_depth_ros.core.synthetic import SyntheticDrive

W, H = 256, 128
LENSES = {  # model -> D of a strong lens (TUM fr1's k1 is 0.26)
    'plumb_bob': (-0.28, 0.08, 0.001, -0.001, 0.0),
    'rational_polynomial': (-0.25, 0.05, 0.0, 0.0, 0.0, 0.02, 0.01, 0.0),
    'equidistant': (-0.3, 0.05, 0.0, 0.0),
}


def camera_info(K: np.ndarray, model: str, D, width: int = W, height: int = H, P: np.ndarray | None = None):
    P = np.hstack([K, np.zeros((3, 1))]) if P is None else P
    return SimpleNamespace(k=K.ravel(), d=list(D), r=np.eye(3).ravel(), p=P.ravel(), distortion_model=model,
                           width=width, height=height)


@pytest.fixture(scope='module')
def frame():
    drive = SyntheticDrive(width=W, height=H, seed=3, num_frames=4)
    return drive, drive.frame(2)


@pytest.mark.parametrize('model', sorted(LENSES))
def test_rectify_undoes_a_known_distortion(frame, model):
    drive, shot = frame
    calibration = calibration_of(camera_info(drive.K, model, LENSES[model]))
    assert calibration.distorted and calibration.model == model
    distorted = apply_distortion(shot.rgb, calibration)
    rectifier = Rectifier(calibration)
    assert not rectifier.identity and np.allclose(rectifier.K, drive.K)  # P = K: the rectified camera is K
    rectified = rectifier.rectify(distorted)
    inner = (slice(H // 6, -H // 6), slice(W // 6, -W // 6))
    error = np.abs(rectified[inner].astype(float) - shot.rgb[inner]).mean()
    before = np.abs(distorted[inner].astype(float) - shot.rgb[inner]).mean()
    assert error < 3.0 and error < 0.4 * before, (error, before)  # what is left: two bilinear interpolations
    depth = rectifier.rectify(apply_distortion(shot.depth, calibration, nearest=True), nearest=True)
    both = np.isfinite(depth[inner]) & np.isfinite(shot.depth[inner])
    assert both.mean() > 0.5
    assert np.median(np.abs(depth[inner][both] / shot.depth[inner][both] - 1)) < 0.02


def test_calibrations_that_are_refused_or_need_no_maps():
    K = np.array([[200.0, 0, 128], [0, 200, 64], [0, 0, 1]])
    with pytest.raises(ValueError, match='distortion_model'):
        calibration_of(camera_info(K, 'kannala_brandt_9', (0.1, 0, 0, 0, 0, 0, 0, 0, 0)))
    with pytest.raises(ValueError, match='coefficients'):
        calibration_of(camera_info(K, 'plumb_bob', (0.1, 0.0, 0.0)))
    with pytest.raises(ValueError, match='non-finite'):
        calibration_of(camera_info(K, 'plumb_bob', (float('nan'), 0, 0, 0, 0)))
    pinhole = calibration_of(camera_info(K, 'whatever', (0.0,) * 5))  # all-zero D: a pinhole whatever the model
    assert not pinhole.distorted and Rectifier(pinhole).identity
    image = np.zeros((H, W, 3), np.uint8)
    assert Rectifier(pinhole).rectify(image) is image
    # Maps are built once per calibration and size.
    lens = calibration_of(camera_info(K, 'plumb_bob', LENSES['plumb_bob']))
    assert rectifier_for(lens, (W, H)) is rectifier_for(lens, (W, H))
    # Without P, the optimal new camera keeps only valid pixels.
    no_p = calibration_of(camera_info(K, 'plumb_bob', LENSES['plumb_bob'], P=np.zeros((3, 4))))
    rectified = Rectifier(no_p).rectify(np.full((H, W, 3), 200, np.uint8))
    assert (rectified[H // 4:-H // 4, W // 4:-W // 4] == 200).all()


def test_depth_images_in_metres_from_16uc1_and_32fc1():
    millimetres = np.array([[0, 1000], [2500, 65535]], dtype=np.uint16)
    msg = SimpleNamespace(**array_to_image_fields(millimetres, '16UC1'))
    depth = depth_to_metres(msg)
    assert depth.dtype == np.float32 and np.isnan(depth[0, 0])
    assert np.allclose(depth[[0, 1, 1], [1, 0, 1]], [1.0, 2.5, 65.535])
    metres = np.array([[0.0, 1.5], [np.nan, -2.0]], dtype=np.float32)
    depth = depth_to_metres(SimpleNamespace(**array_to_image_fields(metres, '32FC1')))
    assert depth[0, 1] == 1.5 and np.isnan(depth[[0, 1, 1], [0, 0, 1]]).all()
    with pytest.raises(UnsupportedEncoding, match='rgb8'):
        depth_to_metres(SimpleNamespace(**array_to_image_fields(np.zeros((2, 2, 3), np.uint8), 'rgb8')))
    assert '16UC1' in DEPTH_ENCODINGS and '32FC1' in DEPTH_ENCODINGS


def _warp_error(data) -> float:
    """Mean photometric error of warping the neighbours into each centre frame with its ground-truth
    depth and TF poses (pixels with depth only)."""
    from hr_depth_ros.core.training.data import TripletDataset
    from hr_depth_ros.core.training.losses import photometric_error
    from hr_depth_ros.core.training.trainer import SOURCE_OFFSETS, reprojection_loss

    dataset = TripletDataset(data.store, data.train)
    errors = []
    for item in (dataset[i] for i in range(len(dataset))):
        color, depth = item['color'][None], item['depth_gt'][None].clone()
        valid = torch.isfinite(depth)
        depth[~valid] = 1.0
        border = torch.ones_like(valid)  # the corners a rectified image has no pixels for are left out
        border[..., depth.shape[-2] // 6:-depth.shape[-2] // 6, depth.shape[-1] // 6:-depth.shape[-1] // 6] = False
        valid &= ~border
        transforms = {offset: item['T'][None, j] for j, offset in enumerate(SOURCE_OFFSETS)}
        per_pixel, _ = reprojection_loss(color, depth, item['K'][None], transforms, None)
        errors.append(per_pixel[valid].mean().item())
        assert photometric_error(color[:, 1], color[:, 0]).mean() > 0  # the camera moved
    return float(np.mean(errors))


def test_a_distorted_drive_is_rectified_for_training_and_warps_like_the_undistorted_one(tmp_path):
    """The same drive written twice, once through a strong barrel lens (camera_info D set): the
    training frames of the distorted bag match the undistorted bag's, and warping them with the true
    depth and poses is as good; read as a pinhole (the lens ignored) it is clearly worse."""
    from hr_depth_ros.core.training.data import DataConfig, prepare_data
    from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag

    lens = LENSES['plumb_bob']
    common = dict(frames=8, width=W, height=H, fps=10.0, seed=5)
    plain = write_synthetic_bag(tmp_path / 'plain', **common)
    distorted = write_synthetic_bag(tmp_path / 'distorted', distortion=lens, **common)
    drive = SyntheticDrive(width=W, height=H, fps=10.0, seed=5, num_frames=8)
    fx, fy, cx, cy = drive.K[0, 0], drive.K[1, 1], drive.K[0, 2], drive.K[1, 2]
    settings = dict(width=W, height=H, gt_depth_topic='/camera/depth_gt', val_fraction=0.0, min_motion=0.0)
    results = {}
    for name, config in (('plain', DataConfig(bags=[plain], **settings)),
                         ('rectified', DataConfig(bags=[distorted], **settings)),
                         ('ignored', DataConfig(bags=[distorted], camera_info_topic=None,
                                                intrinsics=(fx, fy, cx, cy), **settings))):
        data = prepare_data(config)
        try:
            results[name] = (_warp_error(data), data.store.image(3).astype(float), data.report.summary())
        finally:
            data.close()
    assert 'rectified' in results['rectified'][2] and 'rectified' not in results['plain'][2]
    inner = (slice(H // 6, -H // 6), slice(W // 6, -W // 6))
    assert np.abs(results['rectified'][1][inner] - results['plain'][1][inner]).mean() < 0.3 * np.abs(
        results['ignored'][1][inner] - results['plain'][1][inner]).mean()
    plain_error, rectified_error, ignored_error = (results[k][0] for k in ('plain', 'rectified', 'ignored'))
    assert rectified_error < 1.15 * plain_error and ignored_error > 1.3 * rectified_error, (
        plain_error, rectified_error, ignored_error)


def test_calibration_is_hashable_value():
    a = Calibration((1.0,) * 9, 'plumb_bob', (0.1,), (1.0,) * 9, (0.0,) * 9, 4, 3)
    b = Calibration((1.0,) * 9, 'plumb_bob', (0.1,), (1.0,) * 9, (0.0,) * 9, 4, 3)
    assert a == b and hash(a) == hash(b)


class _GreyEstimator:
    """Returns the grey image it was given (network size = input size): shows what the network saw."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height

    def predict_depth(self, rgb: np.ndarray) -> np.ndarray:
        return rgb.mean(2).astype(np.float32) + 1.0


def test_the_depth_engine_rectifies_distorted_camera_info(frame):
    """The node's core: a camera_info with D rectifies each frame before the network, and the K the
    node publishes on depth/camera_info (D = 0) is the rectified camera's."""
    from hr_depth_ros.core.depth_engine import DepthEngine, InputChecker, NodeConfig

    drive, shot = frame
    info = camera_info(drive.K, 'plumb_bob', LENSES['plumb_bob'])
    distorted = apply_distortion(shot.rgb, calibration_of(info))
    warnings = []
    checker = InputChecker(lambda reason, text, error=False: warnings.append(text))
    checker.on_camera_info(info, '/camera/camera_info')
    intrinsics = checker.camera_info_for((W, H), '/camera/camera_info')
    engine = DepthEngine(_GreyEstimator(W, H), NodeConfig.from_values({'weights': '/w', 'output_resolution': 'camera'}))
    result = engine.process(distorted, intrinsics, want_colored=False, want_points=False)
    assert not warnings and 'rectified' in result.intrinsics_source and 'rectify' in result.timings_ms
    assert np.allclose(result.K, drive.K)
    inner = (slice(H // 6, -H // 6), slice(W // 6, -W // 6))
    seen = result.depth - 1.0
    assert np.abs(seen[inner] - shot.rgb.mean(2)[inner]).mean() < 0.4 * np.abs(
        distorted.mean(2)[inner] - shot.rgb.mean(2)[inner]).mean()
    # What online adaptation learns from: the rectified frame, whose camera is result.K (not the lens's frame).
    assert result.image.shape == distorted.shape and np.array_equal(result.image, Rectifier(
        calibration_of(info)).rectify(distorted))
    # A pinhole camera_info is used as it is (no maps, no copy).
    checker.on_camera_info(camera_info(drive.K, 'plumb_bob', (0.0,) * 5), '/camera/camera_info')
    plain = engine.process(shot.rgb, checker.camera_info_for((W, H), '/camera/camera_info'), False, False)
    assert plain.intrinsics_source == 'camera_info' and np.allclose(plain.depth - 1.0, shot.rgb.mean(2))


def test_camera_info_that_changes_mid_bag_is_used_for_its_frames(tmp_path):
    """From frame 4 on the camera_info says fx/fy are 10 % longer (a zoom): those frames are remapped
    with their own camera_info to the first one's camera (noted), the first frames are left as they are."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from hr_depth_ros.core.training.data import DataConfig, extract_frames
    from hr_depth_ros.tools.make_synthetic_bag import TOPIC_TYPES, frame_messages

    drive = SyntheticDrive(width=W, height=H, fps=10.0, seed=2)
    typestore = get_typestore(Stores.LATEST)
    topics = ('/camera/image_raw', '/camera/camera_info')
    path = tmp_path / 'zoom'
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {t: writer.add_connection(t, TOPIC_TYPES[t], typestore=typestore) for t in topics}
        for index in range(8):
            messages = frame_messages(typestore, drive, index, 90)
            if index >= 4:
                K = drive.K.copy()
                K[0, 0] *= 1.1
                K[1, 1] *= 1.1
                messages['/camera/camera_info'].k = K.ravel()
                messages['/camera/camera_info'].p = np.hstack([K, np.zeros((3, 1))]).ravel()
            for topic in topics:
                writer.write(connections[topic], drive.stamp_ns(index),
                             typestore.serialize_cdr(messages[topic], TOPIC_TYPES[topic]))
    store = extract_frames(DataConfig(bags=[path], width=W, height=H))
    try:
        assert any('changes' in note and 'own camera_info' in note for note in store.notes)
        assert np.allclose(store.K[0], drive.K)
        same = np.abs(store.image(1).astype(float) - drive.frame(1).rgb).mean()
        zoomed = np.abs(store.image(6).astype(float) - drive.frame(6).rgb).mean()
        assert same < 0.5 and zoomed > 4 * max(same, 0.5)
        # What frame 6 looks like through the first camera: its own image seen with fx, fy 10 % longer.
        zoom = drive.K.copy()
        zoom[0, 0] *= 1.1
        zoom[1, 1] *= 1.1
        expected = Rectifier(calibration_of(camera_info(zoom, 'plumb_bob', (0.0,) * 5)),
                             K_target=drive.K).rectify(drive.frame(6).rgb)
        inner = (slice(H // 6, -H // 6), slice(W // 6, -W // 6))
        assert np.abs(store.image(6)[inner].astype(float) - expected[inner]).mean() < 1.0
    finally:
        store.close()
