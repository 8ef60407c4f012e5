"""Deterministic weights for golden tests: every tensor is a function of its key and shape.

The golden figures in test/data/golden/ were produced by filling the HR-Depth authors' and
monodepth2's own models with :func:`deterministic_state_dict` (see generate_golden.py there);
the tests fill a state dict with the same keys and shapes, save it in the released folder
format, load it through our checkpoint loader and compare outputs.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

from hr_depth_ros.core.checkpoint import DepthCheckpoint
from hr_depth_ros.core.networks import build_depth_model

# Outputs are sigmoid disparities in [0, 1]. float32 (eps 1.2e-7) through ~20-50 layers with
# reductions over up to ~4,600 products differs by 1e-6..1e-5 between CPUs, thread counts and
# kernel choices (1.02e-5 seen on a second machine of the same kind); scaling one decoder layer's
# weights by 1 % already moves them by ~7e-3, and a wiring or key-mapping error by far more.
# So allow 1e-4 of the output range: 10x the spread seen, well below any real difference.
NETWORK_OUTPUT_ATOL = 1e-4


def deterministic_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A tensor keyed by ``name``: fan-in scaled weights, BN statistics in sane ranges."""
    if dtype == torch.long:  # BN num_batches_tracked
        return torch.zeros(shape, dtype=torch.long)
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    noise = torch.randn(shape, generator=generator, dtype=torch.float64)
    leaf = name.rsplit('.', 1)[-1]
    if leaf == 'running_var':
        value = 1.0 + 0.2 * noise.abs()
    elif leaf == 'running_mean':
        value = 0.1 * noise
    elif len(shape) <= 1:  # biases, BN weight/bias
        value = (1.0 if leaf == 'weight' else 0.0) + 0.1 * noise
    else:
        fan_in = int(np.prod(shape[1:]))
        value = noise * np.sqrt(2.0 / fan_in)
    return value.to(dtype)


def deterministic_state_dict(layout: list[tuple[str, list[int], str]]) -> dict[str, torch.Tensor]:
    """State dict for a ``[(key, shape, dtype name), ...]`` layout."""
    return {key: deterministic_tensor(key, tuple(shape), getattr(torch, dtype)) for key, shape, dtype in layout}


def layout_of(module: torch.nn.Module) -> list[tuple[str, list[int], str]]:
    """Ordered ``(key, shape, dtype name)`` of a module's state dict."""
    return [(k, list(v.shape), str(v.dtype).replace('torch.', '')) for k, v in module.state_dict().items()]


def golden_input(height: int, width: int) -> torch.Tensor:
    """A smooth, deterministic RGB image in [0, 1] (1 x 3 x H x W)."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height, dtype=torch.float64),
                            torch.linspace(0, 1, width, dtype=torch.float64), indexing='ij')
    channels = [0.5 + 0.5 * torch.sin(6.0 * xs + 3.0 * ys), 0.5 + 0.5 * torch.cos(4.0 * xs * ys + 1.0),
                (xs + ys) / 2.0]
    return torch.stack(channels)[None].float()


def output_figures(outputs: dict, step: int = 8) -> dict[str, dict]:
    """Small fingerprint of disparities: mean, std and a decimated grid, per scale."""
    figures = {}
    for scale in range(4):
        disp = outputs[scale].detach().double()[0, 0]
        figures[str(scale)] = {'shape': list(disp.shape), 'mean': float(disp.mean()), 'std': float(disp.std()),
                               'grid': disp[::step, ::step].numpy().round(7).tolist()}
    return figures


def golden_checkpoint(arch: str, width: int, height: int) -> DepthCheckpoint:
    """A checkpoint of ``arch`` filled with the golden tests' deterministic weights."""
    encoder, decoder = build_depth_model(arch)
    for module in (encoder, decoder):
        module.load_state_dict(deterministic_state_dict(layout_of(module)))
    return DepthCheckpoint(arch=arch, encoder=encoder.eval(), decoder=decoder.eval(),
                           height=height, width=width, use_stereo=False)
