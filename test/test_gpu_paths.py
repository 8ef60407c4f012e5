"""The CUDA code paths, checked on the CPU (issue 24).

- Mixed precision: CPU autocast with ``dtype=torch.float16`` applies CUDA's casting list (matmuls,
  convolutions in fp16), so a training step on a far scene shows what AMP on a GPU does.
- Devices: an explicit CUDA request that cannot be met is refused with the reason (CUDA's
  availability and device count mocked).
- The node's configure runs one inference, so a backend that fails there fails configure.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hr_depth_ros.core.training.trainer import Trainer, TrainingConfig

FP16_MAX = 65504.0
FAR_WIDTH, FAR_HEIGHT = 1280, 64  # fp16 overflows at Z x u > 65504: beyond ~51 m at u = 1280 px
FAR_METRIC_SCALE = 1500.0  # the random network's disparity ~0.5 gives ~0.2 depth units: ~300 m


def far_scene_batch(width: int, height: int) -> dict[str, torch.Tensor]:
    """One textured sample (frames -1 and +1 shifted by a pixel) with TF poses 0.5 m apart."""
    generator = torch.Generator().manual_seed(1)
    texture = torch.rand(1, 3, height, width + 2, generator=generator)
    color = torch.stack([texture[..., 1:1 + width], texture[..., :width], texture[..., 2:2 + width]], dim=1)
    K = torch.eye(4)[None]
    K[0, 0, 0] = K[0, 1, 1] = width / 2
    K[0, 0, 2], K[0, 1, 2] = width / 2, height / 2
    T = torch.eye(4).repeat(1, 2, 1, 1)
    T[0, 0, 2, 3], T[0, 1, 2, 3] = 0.5, -0.5
    return {'color': color, 'color_aug': color.clone(), 'K': K, 'T': T, 'index': torch.tensor([0])}


@pytest.fixture
def far_trainer(tmp_path):
    """A trainer on the CPU at 1280 px wide whose metric scale puts the scene at ~300 m, and its models."""
    trainer = Trainer(TrainingConfig(bags=['unused'], output=str(tmp_path / 'out'), width=FAR_WIDTH,
                                     height=FAR_HEIGHT, device='cpu', steps=1))
    trainer.state.pose_source, trainer.state.metric, trainer.state.metric_scale = 'tf', True, FAR_METRIC_SCALE
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 OpenMP threads on a loaded 2-core machine ran this step 10x slower
    try:
        yield trainer, trainer._build_models()
    finally:
        torch.set_num_threads(threads)


def test_fp16_autocast_training_step_learns_on_a_far_scene(far_trainer):
    """Issue 24 item 1: with the warp geometry in fp16, Z x u overflowed to inf: finite loss, NaN gradients."""
    trainer, models = far_trainer
    batch = far_scene_batch(FAR_WIDTH, FAR_HEIGHT)
    feature_dtypes = []
    hook = models.encoder.register_forward_hook(lambda module, args, output: feature_dtypes.append(output[-1].dtype))
    with torch.autocast('cpu', dtype=torch.float16):  # what the trainer wraps a step in on CUDA
        loss, info = trainer._losses(models, batch)
    hook.remove()
    assert feature_dtypes == [torch.float16]  # the networks still run in half precision
    depth = trainer._depth(info['disp'])
    assert depth.min() >= 200.0 and depth.max() * FAR_WIDTH > 2 * FP16_MAX  # far enough to overflow fp16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    depth_params = [p for m in (models.encoder, models.decoder) for p in m.parameters()]
    grads = [p.grad for p in depth_params if p.grad is not None]
    assert len(grads) > len(depth_params) // 2
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    before = [p.detach().clone() for p in depth_params]
    torch.optim.Adam(depth_params, lr=1e-4).step()
    changed = sum(not torch.equal(b, p) for b, p in zip(before, depth_params))
    assert changed > len(depth_params) // 2 and all(torch.isfinite(p).all() for p in depth_params)


def test_fp16_autocast_pose_network_transforms_stay_float32(far_trainer):
    """The pose network runs under autocast; its axis-angle -> matrix products do not (fp16 loses ~1e-3)."""
    trainer, models = far_trainer
    batch = far_scene_batch(128, 64)  # the pose network takes any size
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.float16):
        transforms = trainer._transforms(models, batch, 'net', batch['color_aug'])
    assert set(transforms) == {-1, 1}
    for T in transforms.values():
        assert T.dtype == torch.float32 and torch.isfinite(T).all()
        rotation = T[:, :3, :3]  # orthonormal to float32 precision, not fp16's ~1e-3
        assert torch.allclose(rotation @ rotation.transpose(1, 2), torch.eye(3).expand_as(rotation), atol=1e-5)


# Unit roundoff of the autocast dtypes; through the network the depth error seen is ~2 u (median)
# and ~13 u (largest pixel), near and far alike.
UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


@pytest.mark.parametrize('far', [False, True], ids=['near', 'far'])
def test_inference_under_fp16_and_bf16_autocast_matches_fp32(far):
    """The inference path (TorchBackend) under CPU autocast, as on CUDA: depth within a few unit roundoffs."""
    from golden_weights import golden_checkpoint
    from hr_depth_ros.core.backends import TorchBackend
    from hr_depth_ros.core.inference import DepthEstimator

    estimator = DepthEstimator(golden_checkpoint('lite_hr_depth', 320, 96), device='cpu', backend='torch', threads=1)
    if far:  # disparities 5e-4..0.05: depth ~2-70 units, where the sigmoid's input is large
        with torch.no_grad():
            estimator.net.decoder.convs.dispConvScale0.conv.bias -= 5.0
    image = estimator.preprocess(np.random.default_rng(0).integers(0, 256, (96, 320, 3), dtype=np.uint8))
    reference = estimator.disparity_to_depth(estimator.predict_batch(image)[0, 0].numpy())
    assert (reference.max() > 20.0) == far
    for dtype, roundoff in UNIT_ROUNDOFF.items():
        runner = TorchBackend(estimator.net, torch.device('cpu'), dtype, channels_last=True, compile=False)
        disparity = runner(image)
        assert disparity.dtype == torch.float32
        depth = estimator.disparity_to_depth(disparity[0, 0].numpy())
        error = np.abs(depth - reference) / reference
        assert np.isfinite(depth).all() and 0 < np.median(error) < 4 * roundoff and error.max() < 32 * roundoff, dtype


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    """CUDA present with two devices (nothing here runs on them: the requests are only validated)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)


def test_select_device_refuses_an_explicit_gpu_that_is_not_there(monkeypatch):
    from hr_depth_ros.core.inference import DeviceError, select_device

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert select_device('auto') == select_device('cpu') == torch.device('cpu')  # auto may fall back
    for name in ('cuda', 'cuda:0', 'CUDA:1'):
        with pytest.raises(DeviceError, match=f"(?i){name}.*CUDA"):
            select_device(name)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert select_device('auto') == select_device('cuda') == torch.device('cuda')
    assert select_device('cuda:1') == torch.device('cuda', 1)
    with pytest.raises(DeviceError, match=r"cuda:2.* 2 "):  # names the device and how many there are
        select_device('cuda:2')
    with pytest.raises(ValueError, match='unknown device'):
        select_device('cuda:x')


def test_estimator_refuses_cuda_without_cuda(no_cuda, lite_checkpoint):
    from hr_depth_ros.core.inference import DepthEstimator, DeviceError

    with pytest.raises(DeviceError, match="'cuda'"):
        DepthEstimator(lite_checkpoint, device='cuda', backend='torch')


@pytest.mark.parametrize('device, cuda', [('cuda', 'no_cuda'), ('cuda:2', 'two_gpus')])
def test_trainer_refuses_an_unusable_gpu_before_writing_anything(device, cuda, request, tmp_path):
    from hr_depth_ros.core.training.trainer import TrainingError

    request.getfixturevalue(cuda)
    output = tmp_path / 'out'
    config = TrainingConfig(bags=[str(tmp_path)], output=str(output), device=device, steps=1)
    with pytest.raises(TrainingError, match=device):
        config.validate()
    with pytest.raises(ValueError, match=device):  # the first thing a run does
        Trainer(config).run()
    assert not output.exists()


class _FailingFirstInference:
    """A torch backend that builds but fails its first inference (as bf16 on a pre-Ampere GPU, or OOM)."""

    def __init__(self, net, device, autocast_dtype, channels_last, compile) -> None:
        self.net, self.description = net, 'failing test backend'

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError('CUDA out of memory (test backend)')


def _configure(lite_checkpoint, ros_domain: int, capfd, **parameters) -> tuple[bool, str]:
    """Configure an in-process depth node with ``parameters``: (succeeded, its log)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from hr_depth_ros.ros.depth_node import SUCCESS, DepthNode

    values = {'weights': str(lite_checkpoint), 'backend': 'torch', 'threads': 1, 'autostart': False, **parameters}
    context = Context()
    rclpy.init(context=context, domain_id=ros_domain)
    try:
        node = DepthNode(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
        succeeded = node.trigger_configure() == SUCCESS
        assert (node.engine is not None) == succeeded
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    captured = capfd.readouterr()
    return succeeded, captured.out + captured.err


@pytest.fixture
def ros_domain() -> int:
    from hr_depth_ros.ros.transport import local_ros_env

    return int(local_ros_env()['ROS_DOMAIN_ID'])


@pytest.mark.parametrize('device, cuda', [('cuda', 'no_cuda'), ('cuda:2', 'two_gpus')])
def test_node_configure_refuses_an_unusable_gpu(device, cuda, request, lite_checkpoint, ros_domain, capfd):
    request.getfixturevalue(cuda)
    succeeded, log = _configure(lite_checkpoint, ros_domain, capfd, device=device)
    assert not succeeded and 'configure failed' in log and device in log and 'CUDA' in log


def test_node_configure_fails_when_the_first_inference_fails(monkeypatch, lite_checkpoint, ros_domain, capfd):
    """Issue 24 item 3: configure runs one inference, so the error is reported there, not on every frame."""
    import hr_depth_ros.core.inference as inference

    succeeded, log = _configure(lite_checkpoint, ros_domain, capfd, device='cpu')
    assert succeeded and 'warm-up' in log
    monkeypatch.setattr(inference, 'TorchBackend', _FailingFirstInference)
    succeeded, log = _configure(lite_checkpoint, ros_domain, capfd, device='cpu')
    assert not succeeded and 'configure failed' in log and 'CUDA out of memory (test backend)' in log


@pytest.mark.parametrize('channels_last', [False, True])
def test_torch_backend_feeds_the_network_the_layout_it_was_given(channels_last, lite_checkpoint):
    """A frame from preprocess (a permuted H x W x 3 array) is channels-last-strided; with channels_last
    off the network must get NCHW, not a layout change per convolution."""
    from hr_depth_ros.core.backends import TorchBackend
    from hr_depth_ros.core.inference import DepthEstimator

    estimator = DepthEstimator(lite_checkpoint, device='cpu', backend='torch', threads=1)
    frame = estimator.preprocess(np.zeros((192, 640, 3), np.uint8))
    layouts = []
    runner = TorchBackend(estimator.net, torch.device('cpu'), None, channels_last=channels_last, compile=False)
    hook = runner.net.register_forward_pre_hook(lambda module, args: layouts.append(
        (args[0].is_contiguous(), args[0].is_contiguous(memory_format=torch.channels_last))))
    runner(frame)
    hook.remove()
    assert layouts == [(not channels_last, channels_last)]


def test_cudnn_benchmark_unless_deterministic(monkeypatch):
    from hr_depth_ros.core.training import trainer

    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)  # restored after the test
    monkeypatch.setattr(torch, 'use_deterministic_algorithms', lambda *args, **kwargs: None)
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    trainer._seed_everything(0, deterministic=False)
    assert torch.backends.cudnn.benchmark
    trainer._seed_everything(0, deterministic=True)
    assert not torch.backends.cudnn.benchmark
    import os
    assert os.environ['CUBLAS_WORKSPACE_CONFIG'] in (':4096:8', ':16:8')  # cuBLAS's deterministic settings


def test_a_single_process_on_cuda_n_makes_that_gpu_current(monkeypatch):
    """Issue 24 item 5: without set_device, pin_memory and new tensors opened a context on GPU 0 too."""
    from hr_depth_ros.core.training.distributed import SINGLE, Distributed

    current = []
    monkeypatch.setattr(torch.cuda, 'set_device', lambda device: current.append(torch.device(device)))
    assert SINGLE.device(torch.device('cuda', 1)) == torch.device('cuda', 1) and current == [torch.device('cuda', 1)]
    assert SINGLE.device(torch.device('cpu')) == torch.device('cpu') and len(current) == 1
    rank = Distributed(rank=3, world_size=4, local_rank=2)
    assert rank.device(torch.device('cuda')) == torch.device('cuda', 2) and current[-1] == torch.device('cuda', 2)


def test_rng_state_keeps_the_cuda_generator_on_cuda(monkeypatch):
    """Validation and checkpoints save and restore the CUDA generator too (auto-mask noise is drawn there)."""
    from hr_depth_ros.core.training.trainer import rng_state, set_rng_state

    cuda_states = {}
    monkeypatch.setattr(torch.cuda, 'get_rng_state', lambda device: torch.tensor([7, int(device.index or 0)],
                                                                                   dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, 'set_rng_state', lambda state, device: cuda_states.update({device: state}))
    gpu = torch.device('cuda', 1)
    cpu_state = rng_state(torch.device('cpu'))
    assert set(cpu_state) == {'torch_rng'}
    saved = rng_state(gpu)
    assert torch.equal(saved['cuda_rng'], torch.tensor([7, 1], dtype=torch.uint8))
    expected = torch.rand(3)
    set_rng_state(saved, gpu)  # the CPU generator is back where it was, and so is GPU 1's
    assert torch.equal(torch.rand(3), expected) and torch.equal(cuda_states[gpu], saved['cuda_rng'])
    set_rng_state(saved, torch.device('cpu'))  # a CUDA run's state resumed on the CPU: the CPU part only
    assert len(cuda_states) == 1


def test_a_loss_scale_collapse_stops_the_run():
    """AMP's silent failure: inf/NaN gradients at every step, GradScaler skips each one and halves its scale
    while the loss stays finite. The trainer's check (at every logged step) turns it into an error."""
    from hr_depth_ros.core.training.trainer import MIN_LOSS_SCALE, TrainingError, check_loss_scale

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler('cpu')  # the same scaling rules as on CUDA
    check_loss_scale(scaler)
    check_loss_scale(None)  # AMP off
    for _ in range(20):
        optimizer.zero_grad()
        loss = (weight * torch.tensor([1.0, 0.0, 1.0])).sum() + (weight[1] * torch.tensor(float('inf'))).clamp(max=0)
        assert torch.isfinite(loss)
        scaler.scale(loss).backward()  # d(loss)/d(weight[1]) = inf x 0: NaN
        scaler.step(optimizer)
        scaler.update()
    assert torch.equal(weight.detach(), torch.ones(3))  # every step skipped: nothing learnt
    assert scaler.get_scale() < MIN_LOSS_SCALE
    with pytest.raises(TrainingError, match='amp'):
        check_loss_scale(scaler)
