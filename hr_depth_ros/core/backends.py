"""Inference backends under :class:`hr_depth_ros.core.inference.DepthEstimator` (ROS-free).

A backend runs the network ``B x 3 x H x W`` images in [0, 1] -> scale-0 disparity
``B x 1 x H x W`` float32; preprocessing and disparity -> depth stay in the estimator, so
every backend gives the same depth for the same image.

- ``torch``: PyTorch eager (autocast, channels-last, optional ``torch.compile``), any device.
- ``openvino``: the network converted with ``openvino.convert_model`` and compiled for the
  CPU in fp32 (measured 2.7-4.6x faster than PyTorch on the CPU, benchmarks/RESULTS.md), or,
  with ``precision='int8'``, that model quantised to INT8 by NNCF from calibration frames
  (:mod:`hr_depth_ros.core.quantization`; about 2x faster again). Converted and quantised
  models are cached on disk (:mod:`hr_depth_ros.core.model_cache`), keyed by the weights'
  content hash, the resolution and the OpenVINO version (INT8: also the calibration frames'
  hash and the NNCF version): only the first start converts or quantises.
- ``auto``: ``torch`` on CUDA (or when ``torch.compile`` is asked for), ``openvino`` on the
  CPU when it is installed, else ``torch``.

Threads: :func:`default_threads` is the number of cores this process may use. Set fewer on a
machine busy with other work: OpenMP threads spin-waiting for a descheduled sibling made
2-thread PyTorch 20-30x slower on a loaded 2-core machine.
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from hr_depth_ros.core.model_cache import cached_entry, default_cache_dir, remove_entry, weights_hash
from hr_depth_ros.core.quantization import QUANTIZATION_FORMAT, CalibrationSet, quantize_model, require_nncf

LOGGER = logging.getLogger(__name__)
BACKENDS = ('auto', 'torch', 'openvino')
OPENVINO_CACHE_FORMAT = 1  # bump when the conversion below changes what it writes
OPENVINO_MODEL_FILE = 'model.xml'
OPENVINO_PRECISIONS = ('fp32', 'int8')
CALIBRATION_FILE = 'calibration.json'  # in an INT8 entry: what it was calibrated on, NNCF version, time


def openvino_version() -> str | None:
    """The installed OpenVINO's version, or None when it cannot be imported."""
    try:
        import openvino
    except Exception:  # noqa: BLE001 - ImportError, or a broken native library
        return None
    return str(openvino.__version__).split('-')[0]


def resolve_backend(name: str, device: torch.device, compile: bool | str = False) -> str:
    """``torch`` or ``openvino`` for a requested backend name on ``device`` (see module docstring)."""
    if name not in BACKENDS:
        raise ValueError(f'unknown backend {name!r}; use one of {", ".join(BACKENDS)}')
    if name != 'auto':
        return name
    if device.type != 'cpu' or compile:
        return 'torch'
    if openvino_version() is None:
        LOGGER.info('backend auto: OpenVINO is not installed, running PyTorch on the CPU')
        return 'torch'
    return 'openvino'


def default_threads() -> int:
    """Cores this process may use (its CPU affinity), or fewer if ``OMP_NUM_THREADS`` says so."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    limit = os.environ.get('OMP_NUM_THREADS', '')
    return max(1, min(cores, int(limit))) if limit.isdigit() and int(limit) > 0 else max(1, cores)


def configure_threads(threads: int | None) -> int:
    """Validate ``threads`` (None: :func:`default_threads`) and apply it to PyTorch; returns it."""
    threads = default_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f'threads must be >= 1, got {threads}')
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


class TorchBackend:
    """PyTorch eager or compiled on ``device``; ``autocast_dtype`` None runs fp32."""

    def __init__(self, net: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None,
                 channels_last: bool, compile: bool | str) -> None:
        net = net.to(device)
        if device.type == 'cuda':
            torch.backends.cudnn.benchmark = True  # one input size: cuDNN times its kernels once (at warm-up)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        if compile:
            net = torch.compile(net, backend=compile if isinstance(compile, str) else 'inductor')
        self.net = net
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self.description = 'torch'

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # The layout the network was converted to: a permuted H x W x 3 frame is channels-last-strided.
        images = images.to(self.device).contiguous(
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        dtype = self.autocast_dtype
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            return self.net(images).float()


def openvino_cache_key(arch: str, width: int, height: int, content_hash: str, version: str,
                       int8: tuple[str, str] | None = None) -> str:
    """Cache folder name: architecture, resolution, backend + version, format, weights hash; for an
    INT8 model ``int8 = (NNCF version, calibration frames' hash)`` adds precision, NNCF version,
    quantisation format and calibration hash."""
    quantized = ''
    if int8 is not None:
        nncf, calibration_hash = int8
        quantized = f'_int8-nncf-{nncf}-q{QUANTIZATION_FORMAT}-cal{calibration_hash[:16]}'
    return f'{arch}_{width}x{height}_openvino-{version}{quantized}_f{OPENVINO_CACHE_FORMAT}_{content_hash[:32]}'


def load_cache_entry(root: Path, key: str, build: Callable[[Path], None], use: Callable[[Path], Any],
                     identity: dict[str, str]) -> tuple[Path, Any]:
    """``use(entry)`` of the model cache entry ``key`` under ``root`` (built when missing; bound to
    ``identity``, see :func:`~.model_cache.cached_entry`); an entry that was already there but does not
    load is removed and built again once; a freshly built one that fails raises."""
    entry, built = cached_entry(root, key, build, identity)
    try:
        return entry, use(entry)
    except Exception as error:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
        if built:
            raise  # a fresh conversion that does not load is a real failure
        LOGGER.warning('cached model %s does not load (%s: %s): building it again', entry,
                       type(error).__name__, error)
        remove_entry(entry)
        entry, _ = cached_entry(root, key, build, identity)
        return entry, use(entry)


class OpenVINOBackend:
    """The network compiled by OpenVINO for the CPU (batch 1 at a fixed resolution), fp32 or INT8.

    ``precision``: 'fp32', or 'int8' (the fp32 model quantised by NNCF on ``calibration``, a
    :class:`~hr_depth_ros.core.quantization.CalibrationSet`; needs the ``nncf`` package).
    ``cache_dir``: where converted models live (None: :func:`model_cache.default_cache_dir`).
    After construction ``converted_s`` is the conversion time and ``quantized_s`` the
    quantisation time (None when that step was not run: loaded from the cache).
    """

    def __init__(self, net: nn.Module, arch: str, width: int, height: int, threads: int,
                 cache_dir: str | Path | None = None, precision: str = 'fp32',
                 calibration: CalibrationSet | None = None) -> None:
        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(f'the OpenVINO backend runs {" or ".join(OPENVINO_PRECISIONS)}, not {precision!r}')
        if precision == 'int8' and calibration is None:
            raise ValueError('precision int8 needs calibration frames')
        nncf_version = require_nncf() if precision == 'int8' else None  # before the slow conversion
        import openvino as ov

        version = openvino_version() or 'unknown'
        self.width, self.height = int(width), int(height)
        self.precision = precision
        net_hash = weights_hash(net)
        fp32_key = openvino_cache_key(arch, self.width, self.height, net_hash, version)
        key = fp32_key if precision == 'fp32' else openvino_cache_key(
            arch, self.width, self.height, net_hash, version, (nncf_version, calibration.content_hash))
        # The full hashes bind a cache entry to these weights (and calibration frames) inside its manifest.
        fp32_identity = {'weights_sha256': net_hash}
        identity = fp32_identity if precision == 'fp32' else {
            **fp32_identity, 'calibration_sha256': calibration.content_hash}
        self.converted_s: float | None = None
        self.quantized_s: float | None = None
        root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        core = ov.Core()
        core.set_property({'ENABLE_MMAP': False})  # own copy of the weights: the cache files may be replaced

        def convert(folder: Path) -> None:
            start = time.perf_counter()
            example = torch.zeros(1, 3, self.height, self.width)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings('ignore', category=FutureWarning, module='torch.jit')  # OpenVINO traces
                model = ov.convert_model(net.cpu().eval(), example_input=example)
            model.reshape([1, 3, self.height, self.width])
            ov.save_model(model, folder / OPENVINO_MODEL_FILE, compress_to_fp16=False)  # fp32 weights: parity
            self.converted_s = time.perf_counter() - start

        def read(entry: Path) -> Any:
            return core.read_model(entry / OPENVINO_MODEL_FILE)

        def quantize(folder: Path) -> None:
            _, model = load_cache_entry(root, fp32_key, convert, read, fp32_identity)  # from its own cache entry
            LOGGER.info('%s %dx%d: quantising to INT8 with NNCF %s on %s (once: the result is cached)',
                        arch, self.width, self.height, nncf_version, calibration.description)
            start = time.perf_counter()
            quantized = quantize_model(model, calibration)
            ov.save_model(quantized, folder / OPENVINO_MODEL_FILE, compress_to_fp16=False)
            self.quantized_s = time.perf_counter() - start
            (folder / CALIBRATION_FILE).write_text(json.dumps({
                'calibration': calibration.description, 'frames': len(calibration.images),
                'frame_size': [self.width, self.height], 'calibration_sha256': calibration.content_hash,
                'nncf': nncf_version, 'openvino': version, 'quantization_format': QUANTIZATION_FORMAT,
                'quantized_s': round(self.quantized_s, 3)}, indent=2))
            LOGGER.info('%s %dx%d: quantised to INT8 in %.1f s', arch, self.width, self.height, self.quantized_s)

        build = convert if precision == 'fp32' else quantize
        # fp32 everywhere (the INT8 model's remaining float layers too): CPUs with bf16/AMX units
        # would otherwise default to bf16 and lose parity.
        config = {'INFERENCE_NUM_THREADS': int(threads), 'INFERENCE_PRECISION_HINT': 'f32',
                  'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': 1}

        def compile_entry(entry: Path) -> Any:
            start = time.perf_counter()
            compiled = core.compile_model(read(entry), 'CPU', config)
            self.compile_s = time.perf_counter() - start
            return compiled

        self.cache_entry, compiled = load_cache_entry(root, key, build, compile_entry, identity)
        self.request = compiled.create_infer_request()
        self.description = self._describe(version, threads, calibration)
        LOGGER.info('%s %dx%d: %s', arch, self.width, self.height, self.description)

    def _describe(self, version: str, threads: int, calibration: CalibrationSet | None) -> str:
        """What runs, e.g. 'openvino 2026.4.1 fp32 (loaded from the cache, compiled in 0.4 s, 2 thread(s); ...)'."""
        steps = []
        if self.converted_s is not None:
            steps.append(f'converted in {self.converted_s:.1f} s')
        if self.quantized_s is not None:
            steps.append(f'quantised in {self.quantized_s:.1f} s on {calibration.description}')
        origin = ', '.join(steps) or 'loaded from the cache'
        return (f'openvino {version} {self.precision} ({origin}, compiled in {self.compile_s:.1f} s, '
                f'{threads} thread(s); {self.cache_entry})')

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[1:]) != (3, self.height, self.width):
            raise ValueError(f'the OpenVINO model takes B x 3 x {self.height} x {self.width} images, '
                             f'got {tuple(images.shape)}')
        batch = np.ascontiguousarray(images.detach().to('cpu', torch.float32).numpy())
        outputs = []
        for image in batch:
            self.request.infer({0: image[None]})
            outputs.append(np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True))
        return torch.from_numpy(np.concatenate(outputs, axis=0))
