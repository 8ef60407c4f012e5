"""Network inference latency: model x resolution x mode, batch 1, random weights.

    .venv/bin/python benchmarks/inference.py [--device auto|cpu|cuda]
        [--models hr_depth,lite_hr_depth,monodepth2] [--resolutions 640x192,1024x320,1280x384]
        [--modes eager,channels_last,fp16,fp16_nchw,bf16,compile,openvino,openvino_int8] [--baseline MODE]
        [--repeats N] [--warmup N] [--threads N] [--calibration-frames N] [--markdown] [--authors-dir DIR]

Times ``DepthEstimator.predict_batch`` on a pre-made ``1 x 3 x H x W`` tensor already on the
device (network only: no decoding, resizing or copies back) under ``torch.inference_mode``.
Modes: ``eager`` fp32 NCHW (the baseline), ``channels_last`` fp32 NHWC, ``fp16`` / ``bf16``
autocast (fp16 on CUDA only; both NHWC on CUDA, NCHW on the CPU), ``fp16_nchw`` fp16 NCHW (CUDA:
whether channels-last pays there, with its reflection-pad layout round trips), ``compile``
``torch.compile`` inductor, fp32 (NHWC on CUDA), ``openvino`` the OpenVINO backend (CPU, fp32;
its one-off conversion is not in the warm-up time; converted models go to a temporary cache),
``openvino_int8`` the same model quantised to INT8 by NNCF (``precision='int8'``) on
``--calibration-frames`` synthetic street frames (the one-off quantisation time is printed,
not in the warm-up time; random weights time like trained ones).
``--threads`` applies to torch and OpenVINO alike. ``--authors-dir`` adds an "authors eager" row
timing the authors' own networks (a checkout of shawLyu/HR-Depth, imported, never committed).

All modes of one model/resolution are built and warmed up first, then timed interleaved
(one call of each per round, the order rotated every round) so that load from other
processes and position effects hit them alike. Each row:
median and p90 latency, FPS from the median, speed-up vs the ``--baseline`` row (default eager) of
the same model/resolution (baseline median / row median, >1 is faster) and the warm-up time
(first call + warm-up calls; for ``compile`` this is the compilation).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hr_depth_ros.core.backends import configure_threads, openvino_version  # noqa: E402
from hr_depth_ros.core.checkpoint import DepthCheckpoint  # noqa: E402
from hr_depth_ros.core.inference import DepthEstimator, select_device  # noqa: E402
from hr_depth_ros.core.networks import ARCHITECTURES, build_depth_model  # noqa: E402
from hr_depth_ros.core.quantization import DEFAULT_CALIBRATION_FRAMES, CalibrationSource, nncf_version  # noqa: E402

MODES = ('eager', 'channels_last', 'fp16', 'fp16_nchw', 'bf16', 'compile', 'openvino', 'openvino_int8')
DEFAULT_MODELS = ('hr_depth', 'lite_hr_depth', 'monodepth2')
DEFAULT_RESOLUTIONS = ('640x192', '1024x320', '1280x384')
AUTHORS_ROW = 'authors eager'
# arch -> (encoder factory, decoder factory) over the authors' ``networks`` module.
AUTHORS_FACTORIES: dict[str, tuple[Callable, Callable]] = {
    'hr_depth': (lambda n: n.ResnetEncoder(18, False), lambda n, e: n.HRDepthDecoder(e.num_ch_enc)),
    'lite_hr_depth': (lambda n: n.MobileEncoder(pretrained=None),
                      lambda n, e: n.HRDepthDecoder(e.num_ch_enc, mobile_encoder=True)),
}  # their networks/depth_decoder.py (monodepth2's decoder) reads an attribute it never sets: no row


@dataclass
class Runner:
    """One timed configuration: a callable running the network once on the prepared input."""

    mode: str
    run: Callable[[], object] | None
    note: str = ''
    warmup_s: float = float('nan')
    times_ms: list[float] = field(default_factory=list)


def parse_resolution(text: str) -> tuple[int, int]:
    """'640x192' -> (width, height)."""
    try:
        width, height = (int(part) for part in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'bad resolution {text!r}: expected WIDTHxHEIGHT, e.g. 640x192') from None
    if width <= 0 or height <= 0 or width % 32 or height % 32:
        raise argparse.ArgumentTypeError(f'bad resolution {text!r}: width and height must be positive multiples of 32')
    return width, height


def parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    """Comma-separated names, each one of ``allowed``."""
    names = [name.strip() for name in text.split(',') if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f'unknown {what} {", ".join(unknown) or "(none given)"}; '
                                         f'choose from {", ".join(allowed)}')
    return names


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model name and core count."""
    if device.type == 'cuda':
        return f'{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})'
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith('Model name:'):
                model = line.split(':', 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return f'{model}, {cores} cores available'


def failure_note(error: Exception) -> str:
    """One-line table cell for a configuration that could not run."""
    lines = str(error).splitlines() or ['']
    return f'failed: {type(error).__name__}: {lines[0][:80]}'


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def load_authors_networks(root: Path):
    """The authors' ``networks`` package imported from ``root`` (their ``layers`` beside it)."""
    if not (root / 'networks' / '__init__.py').is_file() or not (root / 'layers.py').is_file():
        raise FileNotFoundError(f'--authors-dir {root}: expected networks/__init__.py and layers.py '
                                '(a checkout of shawLyu/HR-Depth)')
    for name in [m for m in sys.modules if m == 'layers' or m == 'networks' or m.startswith('networks.')]:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module('networks')
    finally:
        sys.path.remove(str(root))


def make_runners(arch: str, width: int, height: int, modes: list[str], device: torch.device,
                 images: torch.Tensor, authors_networks, threads: int | None = None,
                 cache_dir: str | None = None, baseline: str = 'eager',
                 calibration_frames: int = DEFAULT_CALIBRATION_FRAMES) -> list[Runner]:
    """The baseline first (default eager), then the other modes, then the authors' row if asked for."""
    runners = []
    for mode in [baseline] + [m for m in modes if m != baseline]:
        if mode.startswith('fp16') and device.type != 'cuda':
            runners.append(Runner(mode, None, 'n/a (CUDA only)'))
            continue
        if mode.startswith('openvino') and (device.type != 'cpu' or openvino_version() is None):
            runners.append(Runner(mode, None, 'n/a (CPU only)' if device.type != 'cpu' else 'n/a (not installed)'))
            continue
        if mode == 'openvino_int8' and nncf_version() is None:
            runners.append(Runner(mode, None, 'n/a (nncf not installed)'))
            continue
        options = {'eager': {'channels_last': False},
                   'channels_last': {'channels_last': True},
                   'fp16': {'precision': 'fp16', 'channels_last': None},
                   'fp16_nchw': {'precision': 'fp16', 'channels_last': False},
                   'bf16': {'precision': 'bf16', 'channels_last': device.type == 'cuda'},
                   'compile': {'compile': True, 'channels_last': False},
                   'openvino': {'backend': 'openvino', 'cache_dir': cache_dir},
                   'openvino_int8': {'backend': 'openvino', 'cache_dir': cache_dir, 'precision': 'int8',
                                     'calibration': CalibrationSource(frames=calibration_frames)}}[mode]
        options.setdefault('backend', 'torch')
        torch.manual_seed(0)  # the same weights in every mode: openvino_int8 quantises the openvino row's model
        encoder, decoder = build_depth_model(arch)
        checkpoint = DepthCheckpoint(arch=arch, encoder=encoder.eval(), decoder=decoder.eval(),
                                     height=height, width=width, use_stereo=False)
        estimator = DepthEstimator(checkpoint, device=device, threads=threads, **options)
        if estimator.backend == 'openvino':
            print(f'  {arch} {width}x{height} {mode}: {estimator.backend_description}', file=sys.stderr, flush=True)
        runners.append(Runner(mode, lambda estimator=estimator: estimator.predict_batch(images)))
    if authors_networks is not None:
        if arch not in AUTHORS_FACTORIES:
            runners.append(Runner(AUTHORS_ROW, None, 'n/a (no working authors network)'))
        else:
            make_encoder, make_decoder = AUTHORS_FACTORIES[arch]
            try:
                encoder = make_encoder(authors_networks).eval().to(device)
                decoder = make_decoder(authors_networks, encoder).eval().to(device)
            except Exception as error:  # their code, not ours: report it in the row
                runners.append(Runner(AUTHORS_ROW, None, failure_note(error)))
                return runners

            def run_authors(encoder=encoder, decoder=decoder):
                with torch.inference_mode():
                    return decoder(encoder(images))
            runners.append(Runner(AUTHORS_ROW, run_authors))
    return runners


def time_runners(runners: list[Runner], device: torch.device, repeats: int, warmup: int) -> None:
    """Warm each runner up (timed as a whole), then time ``repeats`` interleaved rounds, rotated."""
    for runner in runners:
        if runner.run is None:
            continue
        start = time.perf_counter()
        try:
            for _ in range(max(warmup, 1)):
                runner.run()
            synchronize(device)
        except Exception as error:  # e.g. no C++ compiler for inductor: report, go on
            runner.note = failure_note(error)
            runner.run = None
            continue
        runner.warmup_s = time.perf_counter() - start
    active = [runner for runner in runners if runner.run is not None]
    for round_index in range(repeats):  # rotate the order: no configuration always runs first
        shift = round_index % max(len(active), 1)
        for runner in active[shift:] + active[:shift]:
            synchronize(device)
            start = time.perf_counter()
            runner.run()
            synchronize(device)
            runner.times_ms.append((time.perf_counter() - start) * 1000)


def table_rows(arch: str, width: int, height: int, runners: list[Runner], baseline: str = 'eager') -> list[list[str]]:
    """Formatted rows; the speed-up is against this model/resolution's ``baseline`` median."""
    baseline = next((float(np.median(r.times_ms)) for r in runners if r.mode == baseline and r.times_ms), None)
    rows = []
    for runner in runners:
        cells = [arch, f'{width}x{height}', runner.mode]
        if not runner.times_ms:
            rows.append(cells + [runner.note or 'n/a', '', '', '', ''])
            continue
        median = float(np.median(runner.times_ms))
        p90 = float(np.percentile(runner.times_ms, 90))
        speedup = f'{baseline / median:.2f}x' if baseline else 'n/a'
        rows.append(cells + [f'{median:.1f}', f'{p90:.1f}', f'{1000 / median:.1f}', speedup, f'{runner.warmup_s:.1f}'])
    return rows


HEADER = ['model', 'resolution', 'mode', 'median ms', 'p90 ms', 'FPS', 'speed-up vs eager', 'warm-up s']


def format_table(rows: list[list[str]], markdown: bool, baseline: str = 'eager') -> str:
    """Markdown or aligned plain-text table."""
    header = [f'speed-up vs {baseline}' if name == 'speed-up vs eager' else name for name in HEADER]
    if markdown:
        alignment = ['---' if index < 3 else '---:' for index in range(len(header))]
        lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(alignment) + '|']
        lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
        return '\n'.join(lines)
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    return '\n'.join('  '.join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='auto', help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument('--models', default=','.join(DEFAULT_MODELS),
                        type=lambda s: parse_list(s, ARCHITECTURES, 'model'))
    parser.add_argument('--resolutions', default=','.join(DEFAULT_RESOLUTIONS),
                        type=lambda s: [parse_resolution(r) for r in s.split(',') if r.strip()])
    parser.add_argument('--modes', default='eager,channels_last,fp16,bf16,openvino',
                        type=lambda s: parse_list(s, MODES, 'mode'),
                        help='default: all but compile (inductor compiles for minutes on a small CPU)')
    parser.add_argument('--baseline', default='eager', type=lambda s: parse_list(s, MODES, 'mode')[0],
                        help='the mode the speed-up column divides by (default eager; it is always run)')
    parser.add_argument('--calibration-frames', type=int, default=DEFAULT_CALIBRATION_FRAMES,
                        help=f'openvino_int8: synthetic calibration frames (default {DEFAULT_CALIBRATION_FRAMES})')
    parser.add_argument('--repeats', type=int, default=20, help='timed calls per configuration (default 20)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed calls per configuration first (default 3)')
    parser.add_argument('--threads', type=int, default=None,
                        help='CPU threads of torch and OpenVINO (default: the cores this process may use). On a '
                             'CPU shared with other busy processes use fewer threads than cores: OpenMP threads '
                             'waiting for a descheduled sibling make 2-thread runs on 2 busy cores ~20x slower')
    parser.add_argument('--markdown', action='store_true', help='print a Markdown table')
    parser.add_argument('--authors-dir', type=Path, default=None,
                        help="checkout of the authors' HR-Depth code: adds an 'authors eager' row")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error('--repeats must be >= 1 and --warmup >= 0')
    if args.threads is not None and args.threads < 1:
        parser.error('--threads must be >= 1')
    configure_threads(args.threads)
    try:
        authors_networks = load_authors_networks(args.authors_dir) if args.authors_dir else None
    except (FileNotFoundError, ImportError) as error:
        parser.error(str(error))
    device = select_device(args.device)
    torch.manual_seed(0)

    comment = '' if not args.markdown else '- '
    print(f'{comment}device: {device} ({device_name(device)})')
    print(f'{comment}torch {torch.__version__}, OpenVINO {openvino_version() or "not installed"}, '
          f'NNCF {nncf_version() or "not installed"}, '
          f'Python {platform.python_version()}, '
          f'threads {torch.get_num_threads()}, batch 1, random weights')
    load = ', load average %.1f (other processes share these cores)' % os.getloadavg()[0] \
        if device.type == 'cpu' and hasattr(os, 'getloadavg') else ''
    print(f'{comment}date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}{load}')
    print(f'{comment}repeats {args.repeats} (interleaved across modes, order rotated), warm-up {args.warmup}')
    if args.markdown:
        print()
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix='hr_depth_ros_benchmark_cache_') as cache_dir:
        for arch in args.models:
            for width, height in args.resolutions:
                images = torch.rand(1, 3, height, width, device=device)
                runners = make_runners(arch, width, height, args.modes, device, images, authors_networks,
                                       args.threads, cache_dir, args.baseline, args.calibration_frames)
                time_runners(runners, device, args.repeats, args.warmup)
                new_rows = table_rows(arch, width, height, runners, args.baseline)
                rows += new_rows
                for row in new_rows:  # progress on long CPU runs
                    print('  done:', ' '.join(row), file=sys.stderr, flush=True)
    print(format_table(rows, args.markdown, args.baseline))
    return 0


if __name__ == '__main__':
    sys.exit(main())
