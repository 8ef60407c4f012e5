"""The inference engine the depth node, ``predict`` and the demo share (ROS-free).

Preprocessing follows monodepth2's ``test_simple``: resize the RGB image to the network's
input size, scale to [0, 1] (the encoders normalise), take the scale-0 sigmoid disparity,
and convert it to depth with ``disp_to_depth(min_depth=0.1, max_depth=100)`` times a metric
scale (5.4 for stereo-trained checkpoints, monodepth2's ``STEREO_SCALE_FACTOR``).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hr_depth_ros.core.backends import OpenVINOBackend, TorchBackend, configure_threads, resolve_backend
from hr_depth_ros.core.checkpoint import DepthCheckpoint, load_depth_checkpoint
from hr_depth_ros.core.depth_options import NodeConfig
from hr_depth_ros.core.geometry import disp_to_depth
from hr_depth_ros.core.image_decoding import resize_rgb
from hr_depth_ros.core.quantization import (REAL_FRAMES_HINT, CalibrationSet, CalibrationSource, load_calibration,
                                            require_nncf)

LOGGER = logging.getLogger(__name__)
STEREO_SCALE_FACTOR = 5.4  # monodepth2: baseline 0.54 m in KITTI / 0.1 units used in training
AUTOCAST = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}  # torch backend: autocast dtype
PRECISIONS = (*AUTOCAST, 'int8')  # int8: OpenVINO only (NNCF post-training quantisation)


class DeviceError(ValueError):
    """An explicitly requested device that cannot be used here (the reason in the message)."""


def cuda_unavailable_reason() -> str:
    """Why ``torch.cuda.is_available()`` is False, in words."""
    if torch.version.cuda is None:
        return f'this PyTorch ({torch.__version__}) is built without CUDA'
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    return (f'no CUDA GPU is usable (PyTorch {torch.__version__} for CUDA {torch.version.cuda}: no GPU, no driver '
            'or a driver too old' + (f'; CUDA_VISIBLE_DEVICES={visible!r}' if visible is not None else '') + ')')


def select_device(name: str = 'auto') -> torch.device:
    """'auto' (CUDA when available, else CPU), 'cpu', or 'cuda' / 'cuda:N': DeviceError with the reason
    when CUDA or GPU N is not there (an explicit GPU request never silently becomes the CPU)."""
    name = str(name).strip().lower()
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cpu':
        return torch.device('cpu')
    if name == 'cuda' or (name.startswith('cuda:') and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r}: {cuda_unavailable_reason()}; use device 'cpu' (or 'auto') to run "
                              'on the CPU')
        count = torch.cuda.device_count()
        if name != 'cuda' and int(name[5:]) >= count:
            raise DeviceError(f'device {name!r}: only {count} CUDA device(s) visible (cuda:0 to cuda:{count - 1})')
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}: use 'auto', 'cuda', 'cuda:N' or 'cpu'")


class _DepthNet(nn.Module):
    """Encoder + decoder returning only the scale-0 disparity (what inference needs)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))[('disp', 0)]


class DepthEstimator:
    """Disparity / metric depth for RGB images with one checkpoint.

    ``backend``: 'auto' (PyTorch on CUDA, OpenVINO on the CPU when installed, else PyTorch),
    'torch' or 'openvino' (CPU only); see :mod:`hr_depth_ros.core.backends`. ``threads``: CPU
    threads for PyTorch and OpenVINO (None: the cores this process may use).
    ``cache_dir``: where OpenVINO keeps converted models (None: ``$HR_DEPTH_ROS_CACHE`` or
    ``~/.cache/hr_depth_ros``).
    The torch backend's options: ``precision``: 'fp32', or 'fp16' / 'bf16' autocast (CUDA; on
    the CPU fp16 falls back to fp32 with a warning, bf16 autocast runs). ``channels_last``:
    None turns it on (measured 1.06-1.19x faster than NCHW on the CPU too,
    benchmarks/RESULTS.md). ``compile``: ``torch.compile`` the network (True: the default
    inductor backend, whose first calls are slow; a string names another backend, e.g.
    'aot_eager'). OpenVINO runs fp32, or INT8 with ``precision='int8'``.

    ``precision='int8'``: OpenVINO INT8 on the CPU, quantised by NNCF (opt-in; never a
    default, since it trades some accuracy for ~2x speed). ``calibration`` gives the frames:
    a :class:`~hr_depth_ros.core.quantization.CalibrationSource` (a folder of images or a bag +
    topic), a folder / bag path, a ready :class:`~hr_depth_ros.core.quantization.CalibrationSet`
    (e.g. frames a tool passes in), or None for synthetic street frames (logged: real frames
    are better). int8 needs the OpenVINO backend: where the backend is torch (CUDA, ``compile``,
    ``backend='torch'``, or auto without OpenVINO) it falls back, with a warning, to fp16 on CUDA
    and fp32 elsewhere, so one launch file serves GPU and CPU robots. A missing ``nncf`` package
    is an error (:class:`~hr_depth_ros.core.quantization.NNCFMissing`), as is a calibration
    source that gives no frames (:class:`~hr_depth_ros.core.quantization.CalibrationError`).
    Under ``backend='auto'`` a quantisation that fails falls back to OpenVINO fp32 (then, if
    OpenVINO itself fails, to PyTorch), with a warning; ``backend='openvino'`` raises instead.
    """

    def __init__(self, checkpoint: DepthCheckpoint | str | Path, device: str | torch.device = 'auto',
                 precision: str = 'fp32', channels_last: bool | None = None, compile: bool | str = False,
                 min_depth: float | None = None, max_depth: float | None = None, depth_scale: float = 1.0,
                 backend: str = 'auto', threads: int | None = None, cache_dir: str | Path | None = None,
                 calibration: CalibrationSource | CalibrationSet | str | Path | None = None) -> None:
        if not isinstance(checkpoint, DepthCheckpoint):
            checkpoint = load_depth_checkpoint(checkpoint)
        if precision not in PRECISIONS:
            raise ValueError(f'unknown precision {precision!r}; use one of {", ".join(PRECISIONS)}')
        # The range the network was trained with (checkpoint.depth_range_of), unless given.
        min_depth = checkpoint.depth_range[0] if min_depth is None else min_depth
        max_depth = checkpoint.depth_range[1] if max_depth is None else max_depth
        if not 0 < min_depth < max_depth:
            raise ValueError(f'need 0 < min_depth < max_depth, got {min_depth} and {max_depth}')
        if depth_scale <= 0:
            raise ValueError(f'depth_scale must be positive, got {depth_scale}')
        self.checkpoint = checkpoint
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.backend = resolve_backend(backend, self.device, compile)
        self.threads = configure_threads(threads)
        if self.backend == 'openvino' and self.device.type != 'cpu':
            LOGGER.warning('backend openvino runs on the CPU, not %s', self.device)
            self.device = torch.device('cpu')
        if precision == 'int8' and self.backend != 'openvino':
            fallback = 'fp16' if self.device.type == 'cuda' else 'fp32'
            LOGGER.warning('precision int8 runs on the OpenVINO backend on the CPU only; backend %s on %s: '
                           'running %s instead', self.backend, self.device, fallback)
            precision = fallback
        if precision == 'fp16' and self.device.type != 'cuda':
            LOGGER.warning('fp16 autocast needs CUDA; running fp32 on %s', self.device)
            precision = 'fp32'
        if self.backend == 'openvino' and (precision not in ('fp32', 'int8') or compile):
            LOGGER.warning('backend openvino runs fp32 or int8 without torch.compile; ignoring precision=%s '
                           'compile=%s', precision, compile)
            precision = 'fp32'
        self.precision = precision
        self.channels_last = True if channels_last is None else bool(channels_last)
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.depth_scale = float(depth_scale)
        # A checkpoint fine-tuned with metric poses records metres per depth unit (checkpoint.metric_scale_of).
        self.metric_scale = checkpoint.metric_scale
        net = _DepthNet(checkpoint.encoder, checkpoint.decoder).eval()
        self.runner: TorchBackend | OpenVINOBackend | None = None
        self.calibration: CalibrationSet | None = None
        if self.backend == 'openvino' and precision == 'int8':
            require_nncf()  # a missing package is an error even under backend auto: int8 was asked for
            self.calibration = self._calibration_set(calibration)
        if self.backend == 'openvino':
            # Under backend auto a failure falls back one step at a time: OpenVINO int8 -> OpenVINO fp32 -> PyTorch.
            attempts = [precision, 'fp32'] if precision == 'int8' and backend == 'auto' else [precision]
            for attempt in attempts:
                try:
                    self.runner = OpenVINOBackend(net, checkpoint.arch, checkpoint.width, checkpoint.height,
                                                  self.threads, cache_dir, attempt,
                                                  self.calibration if attempt == 'int8' else None)
                except Exception as error:  # noqa: BLE001 - conversion/quantisation/compilation failures of any kind
                    if backend != 'auto':
                        raise
                    fallback = 'OpenVINO fp32' if attempt != attempts[-1] else (
                        f'PyTorch {"fp32" if precision == "int8" else precision}')
                    LOGGER.warning('backend auto: OpenVINO %s failed (%s: %s); running %s',
                                   attempt, type(error).__name__, error, fallback)
                else:
                    self.precision = precision = attempt
                    break
            if self.runner is None:
                self.backend = 'torch'
                self.precision = precision = 'fp32' if precision == 'int8' else precision
            if precision != 'int8':
                self.calibration = None  # set only while the INT8 model runs
        if self.runner is None:
            self.runner = TorchBackend(net, self.device, AUTOCAST[precision], self.channels_last, compile)
        self.net: nn.Module = getattr(self.runner, 'net', net)  # the torch module (what OpenVINO converted)

    @classmethod
    def from_config(cls, config: NodeConfig, checkpoint: DepthCheckpoint | None = None) -> DepthEstimator:
        """The estimator a :class:`~hr_depth_ros.core.depth_options.NodeConfig` describes: the one mapping of
        the option table to the estimator (the depth node, ``predict``, the demo and the benchmarks).
        ``checkpoint``: loaded weights to use instead of ``config.weights`` (online adaptation's models)."""
        return cls(checkpoint or config.weights, device=config.device, precision=config.precision,
                   channels_last=config.channels_last, compile=config.compile, min_depth=config.min_depth or None,
                   max_depth=config.max_depth or None, depth_scale=config.depth_scale, backend=config.backend,
                   threads=config.threads or None, cache_dir=config.cache_dir or None,
                   calibration=CalibrationSource(config.calibration, config.calibration_topic,
                                                 config.calibration_frames, config.max_pixels))

    def _calibration_set(self, calibration: CalibrationSource | CalibrationSet | str | Path | None) -> CalibrationSet:
        """The INT8 calibration frames at the network's size (see the class docstring)."""
        if isinstance(calibration, CalibrationSet):
            frames = calibration
            if frames.images[0].shape[:2] != (self.height, self.width):
                raise ValueError(f'calibration frames are {frames.images[0].shape[1]}x{frames.images[0].shape[0]}, '
                                 f'the network takes {self.width}x{self.height}')
        else:
            if not isinstance(calibration, CalibrationSource):
                calibration = CalibrationSource(str(calibration) if calibration else '')
            frames = load_calibration(calibration, self.width, self.height)
        if frames.synthetic:
            LOGGER.warning('INT8 calibration on %s (no calibration source given); %s',
                           frames.description, REAL_FRAMES_HINT)
        return frames

    @property
    def backend_description(self) -> str:
        """What runs the network, e.g. 'openvino 2026.4.1 (loaded from the cache, ...)'."""
        return self.runner.description

    @property
    def arch(self) -> str:
        return self.checkpoint.arch

    @property
    def height(self) -> int:
        return self.checkpoint.height

    @property
    def width(self) -> int:
        return self.checkpoint.width

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """``H x W x 3`` uint8 RGB -> ``1 x 3 x height x width`` float in [0, 1] on the device."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f'expected an H x W x 3 uint8 RGB image, got {rgb.shape} {rgb.dtype}')
        rgb = resize_rgb(rgb, self.width, self.height)
        tensor = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device, non_blocking=True)
        return tensor.permute(2, 0, 1)[None].float().div_(255.0)

    def warm_up(self) -> float:
        """One inference on a blank frame, so that compilation, cuDNN set-up and errors (no bf16 kernel on
        this GPU, out of memory, a failing ``torch.compile``) happen now, not on the first frame; its seconds."""
        start = time.perf_counter()
        self.predict_depth(np.zeros((self.height, self.width, 3), np.uint8))
        return time.perf_counter() - start

    def predict_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Scale-0 disparity ``B x 1 x H x W`` (float32) for ``B x 3 x H x W`` images in [0, 1]."""
        return self.runner(images)

    def predict_disparity(self, rgb: np.ndarray) -> np.ndarray:
        """The network's sigmoid disparity (``height x width`` float32) for one RGB image."""
        return self.predict_batch(self.preprocess(rgb))[0, 0].cpu().numpy()

    @property
    def total_depth_scale(self) -> float:
        """The factor on ``disp_to_depth``: the checkpoint's metric scale (if any) x ``depth_scale``."""
        return (self.metric_scale or 1.0) * self.depth_scale

    def disparity_to_depth(self, disparity: np.ndarray) -> np.ndarray:
        """Depth = the checkpoint's metric scale (metres for checkpoints fine-tuned with metric poses,
        else 1) x ``depth_scale`` x monodepth2's ``disp_to_depth``."""
        depth = disp_to_depth(disparity, self.min_depth, self.max_depth)[1]
        return (depth * self.total_depth_scale).astype(np.float32)

    def predict_depth(self, rgb: np.ndarray) -> np.ndarray:
        """Metric depth (``height x width`` float32, metres) for one RGB image."""
        return self.disparity_to_depth(self.predict_disparity(rgb))
