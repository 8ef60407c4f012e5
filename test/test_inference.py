"""The inference engine: preprocessing, depth conversion, devices and optimised modes."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from golden_weights import NETWORK_OUTPUT_ATOL
from messages import warned
from hr_depth_ros.core.geometry import disp_to_depth
from hr_depth_ros.core.inference import DepthEstimator, select_device


@pytest.fixture(scope='module')
def estimator(lite_checkpoint):
    return DepthEstimator(lite_checkpoint, device='cpu', backend='torch')


@pytest.fixture(scope='module')
def image():
    return np.random.default_rng(0).integers(0, 256, (240, 800, 3), dtype=np.uint8)


def bilinear_columns(row: np.ndarray, width: int) -> np.ndarray:
    """Hand-written half-pixel-centre linear resize of ``row`` (W x C) to ``width`` columns (OpenCV's rule)."""
    source = np.clip((np.arange(width) + 0.5) * len(row) / width - 0.5, 0, len(row) - 1)
    left = np.floor(source).astype(int)
    right = np.minimum(left + 1, len(row) - 1)
    weight = (source - left)[:, None]
    return (1 - weight) * row[left] + weight * row[right]


def test_preprocess_resizes_and_scales(estimator):
    rng = np.random.default_rng(1)
    # shrinking 2x: the mean of each 2 x 2 block (area), channels kept in order, scaled to [0, 1]
    large = rng.integers(0, 256, (384, 1280, 3), dtype=np.uint8)
    blocks = large.reshape(192, 2, 640, 2, 3).astype(np.float64).mean(axis=(1, 3)) / 255.0
    tensor = estimator.preprocess(large)
    assert tensor.shape == (1, 3, 192, 640) and tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor[0].permute(1, 2, 0).numpy(), blocks, atol=0.51 / 255)
    # enlarging 2x along the width: linear interpolation between neighbouring columns
    narrow = np.repeat(rng.integers(0, 256, (1, 320, 3), dtype=np.uint8), 192, axis=0)
    expected = bilinear_columns(narrow[0].astype(np.float64), 640) / 255.0
    np.testing.assert_allclose(estimator.preprocess(narrow)[0, :, 5].T.numpy(), expected, atol=1.01 / 255)
    # the network's size: no resize, exactly value / 255
    same_size = rng.integers(0, 256, (192, 640, 3), dtype=np.uint8)
    np.testing.assert_array_equal(estimator.preprocess(same_size)[0].permute(1, 2, 0).numpy(),
                                  same_size.astype(np.float32) / np.float32(255.0))
    with pytest.raises(ValueError, match='uint8 RGB'):
        estimator.preprocess(large[..., 0])


def test_depth_is_scaled_converted_disparity(lite_checkpoint, image):
    plain = DepthEstimator(lite_checkpoint, device='cpu', min_depth=0.1, max_depth=100.0)
    scaled = DepthEstimator(lite_checkpoint, device='cpu', depth_scale=5.4)
    disparity = plain.predict_disparity(image)
    assert disparity.shape == (192, 640) and disparity.dtype == np.float32
    expected = disp_to_depth(disparity, 0.1, 100.0)[1]
    np.testing.assert_allclose(plain.predict_depth(image), expected, rtol=1e-6)
    np.testing.assert_allclose(scaled.predict_depth(image), 5.4 * expected, rtol=1e-5)
    assert np.all((expected >= 0.1) & (expected <= 100.0))


def test_device_selection():
    assert select_device('cpu') == torch.device('cpu')
    assert select_device('auto').type == ('cuda' if torch.cuda.is_available() else 'cpu')
    with pytest.raises(ValueError, match='unknown device'):
        select_device('tpu')
    if not torch.cuda.is_available():  # an explicit GPU request is refused, never run on the CPU (test_gpu_paths.py)
        with pytest.raises(ValueError, match='cuda'):
            select_device('cuda')


def test_fp16_on_cpu_falls_back_to_fp32(lite_checkpoint, caplog):
    with caplog.at_level(logging.WARNING):
        estimator = DepthEstimator(lite_checkpoint, device='cpu', precision='fp16')
    assert estimator.precision == 'fp32' and warned(caplog, 'fp16', 'fp32')
    with pytest.raises(ValueError, match='precision'):
        DepthEstimator(lite_checkpoint, device='cpu', precision='int4')
    with pytest.raises(ValueError, match='min_depth'):
        DepthEstimator(lite_checkpoint, device='cpu', min_depth=5, max_depth=1)


def test_cpu_backend_choice_and_threads(lite_checkpoint, estimator):
    from hr_depth_ros.core.backends import default_threads, openvino_version

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
