"""precision int8: OpenVINO INT8 by NNCF post-training quantisation, its calibration sources, cache and rules."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from golden_weights import golden_checkpoint
from messages import mentions, warned
from hr_depth_ros.core.backends import OpenVINOBackend, openvino_cache_key, openvino_version
from hr_depth_ros.core.checkpoint import save_depth_checkpoint
from hr_depth_ros.core.depth_options import PARAMETERS_BY_NAME, ConfigError, NodeConfig
from hr_depth_ros.core.image_decoding import resize_rgb
from hr_depth_ros.core.inference import DepthEstimator
from hr_depth_ros.core.quantization import (CalibrationError, CalibrationSet, CalibrationSource, NNCFMissing,
                                            REAL_FRAMES_HINT, calibration_set, load_calibration, nncf_version)
from hr_depth_ros.core.synthetic import SyntheticDrive

needs_int8 = pytest.mark.skipif(openvino_version() is None or nncf_version() is None,
                                reason='openvino and nncf are not both installed')
# int8 vs fp32 OpenVINO, golden weights, 128x64, 8 synthetic calibration frames, held-out synthetic
# frames of another drive: the median over pixels of |depth_int8 - depth_fp32| / depth_fp32 measured
# 0.011-0.012 (Lite-HR-Depth) and 0.017-0.021 (HR-Depth) per frame, 2 threads. The bounds leave 2x
# headroom over the worst frame (thread counts, CPUs) and still fail what breaks quantisation:
# calibrating on all-black frames (activation ranges that never saw an image, as a wrong input
# scaling would give) measured 0.027-0.030 (Lite) and 0.053-0.068 (HR-Depth), and wiring or model
# errors differ by order 1. Accuracy against ground truth is measured on the trained checkpoint
# (benchmarks/int8_accuracy.py, benchmarks/RESULTS.md).
MEDIAN_RELATIVE_DEPTH_BOUND = {'lite_hr_depth': 0.025, 'hr_depth': 0.04}
CALIBRATION_FRAMES = 8  # enough for the bounds above; keeps quantisation at ~5 s per model here


@pytest.fixture(scope='module')
def held_out_frames() -> list[np.ndarray]:
    """Camera frames (640x192) of a drive the synthetic calibration set does not use (seed 2)."""
    drive = SyntheticDrive(width=640, height=192, seed=2)
    return [drive.frame(index).rgb for index in (3, 40, 77)]


def median_relative_difference(depth: np.ndarray, reference: np.ndarray) -> float:
    return float(np.median(np.abs(depth - reference) / reference))


@pytest.fixture
def package_log():
    """Log lines of the ``hr_depth_ros`` loggers at INFO and above (a handler of their own: OpenVINO's
    converter saves and restores the root logger's handlers, which upsets pytest's caplog)."""
    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

        @property
        def text(self) -> str:
            return '\n'.join(self.lines)

    logger = logging.getLogger('hr_depth_ros')
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@needs_int8
@pytest.mark.parametrize('arch', ['lite_hr_depth', 'hr_depth'])
def test_int8_is_close_to_fp32_and_cached(arch, held_out_frames, model_cache_dir, package_log):
    checkpoint = golden_checkpoint(arch, 128, 64)
    reference = DepthEstimator(checkpoint, device='cpu', backend='openvino', cache_dir=model_cache_dir)
    caplog = package_log
    int8 = DepthEstimator(checkpoint, device='cpu', precision='int8', cache_dir=model_cache_dir,
                          calibration=CalibrationSource(frames=CALIBRATION_FRAMES))  # backend auto -> openvino
    assert int8.backend == 'openvino' and int8.precision == 'int8' and int8.runner.precision == 'int8'
    assert int8.calibration.synthetic and len(int8.calibration.images) == CALIBRATION_FRAMES
    assert caplog.text.count(REAL_FRAMES_HINT) == 1  # the hint, once
    built = int8.runner.quantized_s is not None  # False when an earlier test of this session quantised it
    if built:
        assert 'quantised in' in int8.backend_description
        assert any(mentions(line, 'int8', f'{int8.runner.quantized_s:.1f} s') for line in caplog.lines)
    entry = int8.runner.cache_entry
    assert entry != reference.runner.cache_entry
    assert f'int8-nncf-{nncf_version()}' in entry.name and int8.calibration.content_hash[:16] in entry.name
    recorded = json.loads((entry / 'calibration.json').read_text())
    assert recorded['calibration_sha256'] == int8.calibration.content_hash and recorded['nncf'] == nncf_version()

    differences = []
    for rgb in held_out_frames:
        expected, result = reference.predict_depth(rgb), int8.predict_depth(rgb)
        assert result.shape == expected.shape == (64, 128) and np.isfinite(result).all()
        differences.append(median_relative_difference(result, expected))
    assert max(differences) <= MEDIAN_RELATIVE_DEPTH_BOUND[arch], differences
    assert min(differences) > 1e-3, differences  # it really runs a quantised network

    # Second start: loaded from the cache, not quantised again, same output.
    again = DepthEstimator(checkpoint, device='cpu', precision='int8', cache_dir=model_cache_dir,
                           calibration=CalibrationSource(frames=CALIBRATION_FRAMES))
    assert again.runner.quantized_s is None and again.runner.converted_s is None
    assert 'loaded from the cache' in again.backend_description and again.runner.cache_entry == entry
    np.testing.assert_array_equal(again.predict_depth(held_out_frames[0]), int8.predict_depth(held_out_frames[0]))


def test_int8_cache_key_holds_precision_calibration_and_versions():
    fp32 = openvino_cache_key('hr_depth', 1024, 320, 'a' * 64, '2026.4.1')
    assert fp32 == f'hr_depth_1024x320_openvino-2026.4.1_f1_{"a" * 32}'  # unchanged: old caches stay valid
    int8 = openvino_cache_key('hr_depth', 1024, 320, 'a' * 64, '2026.4.1', ('3.4.0', 'c' * 64))
    assert 'int8' in int8 and 'nncf-3.4.0' in int8 and 'c' * 16 in int8 and int8 != fp32
    assert openvino_cache_key('hr_depth', 1024, 320, 'a' * 64, '2026.4.1', ('3.5.0', 'c' * 64)) != int8
    assert openvino_cache_key('hr_depth', 1024, 320, 'a' * 64, '2026.4.1', ('3.4.0', 'd' * 64)) != int8


# --- calibration sources -----------------------------------------------------------------------

def write_images(folder: Path, count: int, size: tuple[int, int] = (200, 120)) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    images = [np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for i in range(count)]
    for index, rgb in enumerate(images):
        cv2.imwrite(str(folder / f'frame_{index:02d}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return images


def test_calibration_from_a_folder(tmp_path):
    images = write_images(tmp_path / 'frames', 5)
    (tmp_path / 'frames' / 'notes.txt').write_text('not an image')
    picked = load_calibration(CalibrationSource(str(tmp_path / 'frames'), frames=3), 128, 64)
    assert len(picked.images) == 3 and not picked.synthetic and str(tmp_path / 'frames') in picked.description
    assert all(image.shape == (64, 128, 3) and image.dtype == np.uint8 for image in picked.images)
    expected = [cv2.resize(images[i], (128, 64), interpolation=cv2.INTER_AREA) for i in (0, 2, 4)]  # evenly spaced
    for image, want in zip(picked.images, expected):
        np.testing.assert_array_equal(image, want)
    everything = load_calibration(CalibrationSource(str(tmp_path / 'frames'), frames=32), 128, 64)
    assert len(everything.images) == 5 and everything.content_hash != picked.content_hash
    synthetic = load_calibration(CalibrationSource(frames=3), 128, 64)
    assert synthetic.synthetic and synthetic.content_hash != picked.content_hash
    assert load_calibration(CalibrationSource(frames=3), 128, 64).content_hash == synthetic.content_hash

    (tmp_path / 'empty').mkdir()
    with pytest.raises(CalibrationError, match='has no images'):
        load_calibration(CalibrationSource(str(tmp_path / 'empty')), 128, 64)
    with pytest.raises(CalibrationError, match='does not exist'):
        load_calibration(CalibrationSource(str(tmp_path / 'missing')), 128, 64)
    (tmp_path / 'frames' / 'frame_99.png').write_bytes(b'\x89PNG broken')
    with pytest.raises(CalibrationError, match='frame_99.png'):
        load_calibration(CalibrationSource(str(tmp_path / 'frames'), frames=32), 128, 64)
    with pytest.raises(CalibrationError, match='frames must be'):
        CalibrationSource(frames=0)
    with pytest.raises(CalibrationError, match='/camera/image_raw'):
        CalibrationSource(topic='/camera/image_raw')


@pytest.fixture(scope='module')
def small_bag(tmp_path_factory) -> Path:
    """A 6-frame 160x48 synthetic drive (raw + JPEG images, depth ground truth) as MCAP."""
    from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag

    path = tmp_path_factory.mktemp('calibration_bag') / 'drive'
    write_synthetic_bag(path, frames=6, width=160, height=48, fps=10.0, storage='mcap', seed=1)
    return path


def test_calibration_from_a_bag(small_bag):
    from hr_depth_ros.tools.make_synthetic_bag import COMPRESSED_TOPIC, DEPTH_GT_TOPIC, IMAGE_TOPIC

    raw = load_calibration(CalibrationSource(str(small_bag), IMAGE_TOPIC, frames=4), 128, 64)
    assert len(raw.images) == 4 and IMAGE_TOPIC in raw.description and raw.images[0].shape == (64, 128, 3)
    drive = SyntheticDrive(width=160, height=48, seed=1)
    np.testing.assert_array_equal(raw.images[0], resize_rgb(drive.frame(0).rgb, 128, 64))  # as inference resizes
    jpeg = load_calibration(CalibrationSource(str(small_bag), COMPRESSED_TOPIC.lstrip('/'), frames=4), 128, 64)
    assert COMPRESSED_TOPIC in jpeg.description
    assert np.abs(jpeg.images[0].astype(int) - raw.images[0]).mean() < 8  # the same frame, JPEG-compressed
    with pytest.raises(CalibrationError, match='set calibration_topic'):  # two image topics and a depth one
        load_calibration(CalibrationSource(str(small_bag)), 128, 64)
    with pytest.raises(CalibrationError, match='/camera/nothing'):
        load_calibration(CalibrationSource(str(small_bag), '/camera/nothing'), 128, 64)
    with pytest.raises(CalibrationError, match='32FC1'):
        load_calibration(CalibrationSource(str(small_bag), DEPTH_GT_TOPIC), 128, 64)


@needs_int8
def test_int8_from_bag_frames_is_a_separate_cache_entry(small_bag, held_out_frames, model_cache_dir):
    from hr_depth_ros.tools.make_synthetic_bag import IMAGE_TOPIC

    checkpoint = golden_checkpoint('lite_hr_depth', 128, 64)
    source = CalibrationSource(str(small_bag), IMAGE_TOPIC, frames=6)
    int8 = DepthEstimator(checkpoint, device='cpu', backend='openvino', precision='int8', calibration=source,
                          cache_dir=model_cache_dir)
    assert not int8.calibration.synthetic and 'int8' in int8.runner.cache_entry.name
    assert int8.calibration.content_hash[:16] in int8.runner.cache_entry.name
    reference = DepthEstimator(checkpoint, device='cpu', backend='openvino', cache_dir=model_cache_dir)
    difference = median_relative_difference(int8.predict_depth(held_out_frames[1]),
                                            reference.predict_depth(held_out_frames[1]))
    assert 1e-3 < difference <= MEDIAN_RELATIVE_DEPTH_BOUND['lite_hr_depth']
    # Frames handed in directly (a tool's own frames) work too, at any size, and must match the network.
    frames = calibration_set(held_out_frames[:2], 128, 64, '2 frames handed in')
    assert frames.images[0].shape == (64, 128, 3)
    with pytest.raises(ValueError, match='128x64'):
        DepthEstimator(checkpoint, device='cpu', backend='openvino', precision='int8', cache_dir=model_cache_dir,
                       calibration=calibration_set(held_out_frames[:2], 64, 32, 'wrong size'))


# --- rules: never the default, needs OpenVINO, missing nncf -----------------------------------

class FakeTorchBackend:
    """Records what TorchBackend would be built with (no CUDA needed)."""

    def __init__(self, net, device, autocast_dtype, channels_last, compile) -> None:
        self.net, self.device, self.autocast_dtype = net, device, autocast_dtype
        self.description = 'torch'


def test_int8_is_never_the_default():
    assert PARAMETERS_BY_NAME['precision'].default == 'fp16'
    assert 'int8' in PARAMETERS_BY_NAME['precision'].choices
    estimator = DepthEstimator(golden_checkpoint('lite_hr_depth', 128, 64), device='cpu', backend='torch')
    assert estimator.precision == 'fp32'


def test_int8_without_openvino_falls_back_with_a_warning(monkeypatch, caplog):
    import hr_depth_ros.core.inference as inference

    checkpoint = golden_checkpoint('lite_hr_depth', 128, 64)
    with caplog.at_level(logging.WARNING):
        cpu_torch = DepthEstimator(checkpoint, device='cpu', backend='torch', precision='int8')
    assert cpu_torch.backend == 'torch' and cpu_torch.precision == 'fp32' and cpu_torch.calibration is None
    assert warned(caplog, 'int8', 'fp32')  # what was asked, what runs instead
    compiled = DepthEstimator(checkpoint, device='cpu', precision='int8', compile='aot_eager')
    assert compiled.backend == 'torch' and compiled.precision == 'fp32'

    monkeypatch.setattr(inference, 'TorchBackend', FakeTorchBackend)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cuda = DepthEstimator(checkpoint, device=torch.device('cuda'), precision='int8')  # backend auto on CUDA
    assert cuda.backend == 'torch' and cuda.precision == 'fp16' and cuda.runner.autocast_dtype == torch.float16
    assert warned(caplog, 'int8', 'fp16')
    # auto without OpenVINO installed: torch fp32 on the CPU.
    monkeypatch.setattr(inference, 'resolve_backend', lambda name, device, compile=False: 'torch')
    assert DepthEstimator(checkpoint, device='cpu', precision='int8').precision == 'fp32'


@pytest.mark.skipif(openvino_version() is None, reason='openvino is not installed')
def test_int8_without_nncf_names_the_package(monkeypatch):
    import hr_depth_ros.core.quantization as quantization

    monkeypatch.setattr(quantization, 'nncf_version', lambda: None)
    checkpoint = golden_checkpoint('lite_hr_depth', 128, 64)
    for backend in ('openvino', 'auto'):  # auto too: int8 was asked for, nothing else gives it
        with pytest.raises(NNCFMissing, match='pip install nncf'):
            DepthEstimator(checkpoint, device='cpu', backend=backend, precision='int8')
    with pytest.raises(NNCFMissing, match='requirements-core.txt'):
        OpenVINOBackend(torch.nn.Identity(), 'tiny', 64, 32, threads=1, precision='int8',
                        calibration=CalibrationSet((np.zeros((32, 64, 3), np.uint8),), 'black'))
    with pytest.raises(ValueError, match='fp32 or int8'):
        OpenVINOBackend(torch.nn.Identity(), 'tiny', 64, 32, threads=1, precision='fp16')


# --- the node's parameters ---------------------------------------------------------------------

def test_node_parameters_for_int8(tmp_path):
    def config(**values):
        return NodeConfig.from_values({'weights': '/w', **values})

    assert config(precision='int8').calibration == ''  # synthetic frames
    folder = tmp_path / 'frames'
    folder.mkdir()
    assert config(precision='int8', calibration=str(folder), calibration_frames=8).calibration_frames == 8
    assert config(calibration=str(tmp_path / 'missing')).precision == 'fp16'  # only checked for int8
    with pytest.raises(ConfigError, match=str(tmp_path / 'missing')):  # names the path
        config(precision='int8', calibration=str(tmp_path / 'missing'))
    with pytest.raises(ConfigError, match='calibration_topic'):
        config(precision='int8', calibration_topic='/camera/image_raw')
    with pytest.raises(ConfigError, match='calibration_frames'):
        config(precision='int8', calibration_frames=0)
    with pytest.raises(ConfigError, match='precision'):
        config(precision='int4')


@pytest.fixture(scope='module')
def ros_domain() -> int:
    from hr_depth_ros.ros.transport import local_ros_env

    return int(local_ros_env()['ROS_DOMAIN_ID'])


@needs_int8
def test_node_configures_int8_from_the_cache_and_refuses_a_bad_calibration(tmp_path, ros_domain, model_cache_dir,
                                                                           small_bag):
    """In-process lifecycle node: int8 configures (quantised once per session: the cache entry of the
    tests above), and a calibration bag without the topic fails configure naming the problem."""
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from hr_depth_ros.ros.depth_node import FAILURE, SUCCESS, DepthNode

    checkpoint = golden_checkpoint('lite_hr_depth', 128, 64)
    weights = tmp_path / 'lite_128x64'
    save_depth_checkpoint(weights, checkpoint.encoder, checkpoint.decoder, arch='lite_hr_depth', height=64, width=128)
    context = Context()
    rclpy.init(context=context, domain_id=ros_domain)
    try:
        common = [Parameter('weights', value=str(weights)), Parameter('device', value='cpu'),
                  Parameter('threads', value=1), Parameter('autostart', value=False),
                  Parameter('precision', value='int8'), Parameter('cache_dir', value=str(model_cache_dir))]
        node = DepthNode(context=context, parameter_overrides=[
            *common, Parameter('calibration_frames', value=CALIBRATION_FRAMES)])
        assert node.trigger_configure() == SUCCESS
        estimator = node.engine.estimator
        assert estimator.precision == 'int8' and estimator.runner.precision == 'int8'
        assert node.engine.process(np.zeros((64, 128, 3), np.uint8)) is not None
        node.destroy_node()
        bad = DepthNode(context=context, parameter_overrides=[
            *common, Parameter('calibration', value=str(small_bag)),
            Parameter('calibration_topic', value='/camera/nothing')])
        assert bad.trigger_configure() == FAILURE and bad.engine is None
        bad.destroy_node()
    finally:
        rclpy.shutdown(context=context)


@needs_int8
def test_auto_falls_back_from_a_failed_quantisation_to_openvino_fp32(monkeypatch, model_cache_dir, caplog):
    """backend auto: when quantisation fails the estimator keeps OpenVINO (fp32), says why, and gives
    OpenVINO fp32's disparity; an explicit backend openvino raises instead."""
    import hr_depth_ros.core.backends as backends

    def broken(model, calibration):
        raise RuntimeError('quantiser exploded')

    monkeypatch.setattr(backends, 'quantize_model', broken)
    checkpoint = golden_checkpoint('lite_hr_depth', 128, 64)
    drive = SyntheticDrive(width=128, height=64, seed=3)
    frames = calibration_set([drive.frame(i).rgb for i in (0, 5)], 128, 64, 'two synthetic frames')
    with caplog.at_level(logging.WARNING):
        estimator = DepthEstimator(checkpoint, device='cpu', precision='int8', calibration=frames,
                                   cache_dir=model_cache_dir)
    assert estimator.backend == 'openvino' and estimator.precision == 'fp32' and estimator.calibration is None
    assert warned(caplog, 'int8', 'RuntimeError', 'quantiser exploded', 'fp32')  # the cause and the fallback
    reference = DepthEstimator(checkpoint, device='cpu', backend='openvino', cache_dir=model_cache_dir)
    image = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    assert torch.equal(estimator.predict_batch(image), reference.predict_batch(image))
    with pytest.raises(RuntimeError, match='quantiser exploded'):
        DepthEstimator(checkpoint, device='cpu', backend='openvino', precision='int8', calibration=frames,
                       cache_dir=model_cache_dir)
