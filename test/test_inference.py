"""The inference engine: preprocessing, depth conversion, devices and optimised modes."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from golden_weights import NETWORK_OUTPUT_ATOL
from hr_depth_ros.geometry import disp_to_depth
from hr_depth_ros.inference import DepthEstimator, select_device


@pytest.fixture(scope='module')
def estimator(lite_checkpoint):
    return DepthEstimator(lite_checkpoint, device='cpu', backend='torch')


@pytest.fixture(scope='module')
def image():
    return np.random.default_rng(0).integers(0, 256, (240, 800, 3), dtype=np.uint8)


def test_preprocess_resizes_and_scales(estimator, image):
    tensor = estimator.preprocess(image)
    assert tensor.shape == (1, 3, 192, 640) and tensor.dtype == torch.float32
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    same_size = np.full((192, 640, 3), 255, dtype=np.uint8)
    assert torch.all(estimator.preprocess(same_size) == 1.0)
    with pytest.raises(ValueError, match='uint8 RGB'):
        estimator.preprocess(image[..., 0])


def test_depth_is_scaled_converted_disparity(lite_checkpoint, image):
    plain = DepthEstimator(lite_checkpoint, device='cpu', min_depth=0.1, max_depth=100.0)
    scaled = DepthEstimator(lite_checkpoint, device='cpu', depth_scale=5.4)
    disparity = plain.predict_disparity(image)
    assert disparity.shape == (192, 640) and disparity.dtype == np.float32
    expected = disp_to_depth(disparity, 0.1, 100.0)[1]
    np.testing.assert_allclose(plain.predict_depth(image), expected, rtol=1e-6)
    np.testing.assert_allclose(scaled.predict_depth(image), 5.4 * expected, rtol=1e-5)
    assert np.all((expected >= 0.1) & (expected <= 100.0))


def test_device_selection(caplog):
    assert select_device('cpu') == torch.device('cpu')
    assert select_device('auto').type == ('cuda' if torch.cuda.is_available() else 'cpu')
    with pytest.raises(ValueError, match='unknown device'):
        select_device('tpu')
    if not torch.cuda.is_available():
        with caplog.at_level(logging.WARNING):
            assert select_device('cuda') == torch.device('cpu')
        assert 'CUDA is not available' in caplog.text


def test_fp16_on_cpu_falls_back_to_fp32(lite_checkpoint, caplog):
    with caplog.at_level(logging.WARNING):
        estimator = DepthEstimator(lite_checkpoint, device='cpu', precision='fp16')
    assert estimator.precision == 'fp32' and 'fp16 autocast needs CUDA' in caplog.text
    with pytest.raises(ValueError, match='precision'):
        DepthEstimator(lite_checkpoint, device='cpu', precision='int4')
    with pytest.raises(ValueError, match='min_depth'):
        DepthEstimator(lite_checkpoint, device='cpu', min_depth=5, max_depth=1)


def test_cpu_backend_choice_and_threads(lite_checkpoint, estimator):
    from hr_depth_ros.backends import default_threads, openvino_version

    auto = DepthEstimator(lite_checkpoint, device='cpu')
    assert auto.backend == ('openvino' if openvino_version() else 'torch')
    assert estimator.backend == 'torch' and estimator.threads == default_threads() == torch.get_num_threads()
    assert DepthEstimator(lite_checkpoint, device='cpu', backend='torch', threads=1).threads == 1
    with pytest.raises(ValueError, match='unknown backend'):
        DepthEstimator(lite_checkpoint, device='cpu', backend='onnx')


def test_channels_last_and_bf16_agree_with_eager(estimator, lite_checkpoint, image):
    reference = estimator.predict_disparity(image)
    channels_last = DepthEstimator(lite_checkpoint, device='cpu', backend='torch', channels_last=True)
    np.testing.assert_allclose(channels_last.predict_disparity(image), reference, atol=NETWORK_OUTPUT_ATOL)
    bf16 = DepthEstimator(lite_checkpoint, device='cpu', backend='torch', precision='bf16')
    assert np.abs(bf16.predict_disparity(image) - reference).mean() < 0.02


def test_compiled_model_agrees_with_eager(estimator, lite_checkpoint, image):
    # The aot_eager backend traces the networks as inductor does (graph capture, autograd-free
    # functionalisation) without minutes of C++ code generation on 2 cores; the inductor
    # backend itself is exercised by benchmarks/inference.py.
    try:
        compiled = DepthEstimator(lite_checkpoint, device='cpu', compile='aot_eager')
        result = compiled.predict_disparity(image)
    except Exception as error:  # noqa: BLE001 - no C++ toolchain for inductor, etc.
        pytest.skip(f'torch.compile cannot run here: {type(error).__name__}: {error}')
    np.testing.assert_allclose(result, estimator.predict_disparity(image), atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (none on this machine)')
def test_cuda_fp16_channels_last(lite_checkpoint, image, estimator):
    gpu = DepthEstimator(lite_checkpoint, device='cuda', precision='fp16')
    assert gpu.channels_last and gpu.device.type == 'cuda'
    assert np.abs(gpu.predict_disparity(image) - estimator.predict_disparity(image)).mean() < 0.01
