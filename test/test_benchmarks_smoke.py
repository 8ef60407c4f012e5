"""Smoke test of benchmarks/inference.py at the tiniest settings (speed itself is never asserted)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'benchmarks' / 'inference.py'
# A checkout of the authors' HR-Depth code (shawLyu/HR-Depth), given by the environment: never a fixed path.
AUTHORS = os.environ.get('HR_DEPTH_AUTHORS_DIR', '')
AUTHORS_DIR = Path(AUTHORS).expanduser() if AUTHORS else None


@pytest.fixture(scope='module')
def inference_benchmark():
    """The benchmark script imported as a module (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location('inference_benchmark', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def table_lines(output: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip('|').split('|')] for line in output.splitlines()
            if line.startswith('| ') and not line.startswith('| model')]


def test_script_prints_markdown_table_from_repo_root():
    """Runs as ``python benchmarks/inference.py`` (no install); header, baseline and CPU-only fp16 row."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), '--device', 'cpu', '--models', 'lite_hr_depth', '--resolutions', '192x64',
         '--modes', 'eager,channels_last,fp16,openvino', '--repeats', '1', '--warmup', '0', '--threads', '1', '--markdown'],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'torch ' + __import__('torch').__version__ in result.stdout
    assert 'threads 1' in result.stdout and 'cpu' in result.stdout
    rows = {row[2]: row for row in table_lines(result.stdout)}
    assert set(rows) == {'eager', 'channels_last', 'fp16', 'openvino'}
    assert rows['eager'][:2] == ['lite_hr_depth', '192x64']
    assert rows['eager'][6] == '1.00x'
    assert float(rows['channels_last'][3]) > 0 and rows['channels_last'][6].endswith('x')
    assert rows['fp16'][3] == 'n/a (CUDA only)'
    from hr_depth_ros.core.backends import openvino_version
    if openvino_version():
        assert f'OpenVINO {openvino_version()}' in result.stdout and float(rows['openvino'][3]) > 0
    else:
        assert rows['openvino'][3] == 'n/a (not installed)'


def test_bad_arguments_name_the_problem(inference_benchmark, capsys):
    for argv, named in ((['--models', 'hr_depht'], 'hr_depht'), (['--resolutions', '640x190'], '640x190'),
                        (['--modes', 'eager,fp8'], 'fp8'), (['--repeats', '0'], '--repeats')):
        with pytest.raises(SystemExit) as exit_info:
            inference_benchmark.main(argv)
        assert exit_info.value.code == 2
        assert named in capsys.readouterr().err


def test_rows_and_speedup_against_eager(inference_benchmark):
    """Speed-up = eager median / row median; failed or skipped runners keep their note."""
    bench = inference_benchmark
    runners = [bench.Runner('eager', None, times_ms=[10.0, 12.0, 11.0], warmup_s=0.5),
               bench.Runner('channels_last', None, times_ms=[5.0, 6.0, 5.5], warmup_s=0.25),
               bench.Runner('compile', None, note='failed: RuntimeError: no compiler')]
    rows = bench.table_rows('hr_depth', 640, 192, runners)
    assert rows[0][3:] == ['11.0', '11.8', '90.9', '1.00x', '0.5']
    assert rows[1][6] == '2.00x'
    assert rows[2][3] == 'failed: RuntimeError: no compiler'
    text = bench.format_table(rows, markdown=True)
    assert text.splitlines()[0].startswith('| model | resolution | mode | median ms')
    assert len(text.splitlines()) == 2 + len(rows)


def test_speedup_against_another_baseline(inference_benchmark):
    """--baseline openvino: the int8 row's ratio is against OpenVINO fp32 of the same run."""
    bench = inference_benchmark
    runners = [bench.Runner('openvino', None, times_ms=[10.0], warmup_s=0.1),
               bench.Runner('openvino_int8', None, times_ms=[5.0], warmup_s=0.1)]
    rows = bench.table_rows('hr_depth', 1024, 320, runners, baseline='openvino')
    assert [row[6] for row in rows] == ['1.00x', '2.00x']
    assert '| speed-up vs openvino |' in bench.format_table(rows, markdown=True, baseline='openvino')
    assert 'openvino_int8' in bench.MODES


def test_authors_dir_must_hold_their_networks(inference_benchmark, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        inference_benchmark.load_authors_networks(tmp_path)


@pytest.mark.skipif(AUTHORS_DIR is None or not (AUTHORS_DIR / 'networks' / '__init__.py').is_file(),
                    reason='set HR_DEPTH_AUTHORS_DIR to a checkout of the authors HR-Depth code (see '
                           'benchmarks/RESULTS.md) to time their networks')
def test_authors_row_runs_their_networks(inference_benchmark):
    """The authors' Lite-HR-Depth is timed in the same run beside ours."""
    import torch
    bench = inference_benchmark
    networks = bench.load_authors_networks(AUTHORS_DIR)
    images = torch.rand(1, 3, 64, 192)
    runners = bench.make_runners('lite_hr_depth', 192, 64, ['eager'], torch.device('cpu'), images, networks)
    assert [r.mode for r in runners] == ['eager', bench.AUTHORS_ROW]
    outputs = runners[1].run()
    assert outputs[('disparity', 'Scale0')].shape == (1, 1, 64, 192)
    assert runners[0].run().shape == (1, 1, 64, 192)
    monodepth2 = bench.make_runners('monodepth2', 192, 64, ['eager'], torch.device('cpu'), images, networks)
    assert monodepth2[1].run is None and monodepth2[1].note.startswith('n/a')


def test_failure_note_is_one_line(inference_benchmark):
    note = inference_benchmark.failure_note(RuntimeError('no compiler\nlong traceback'))
    assert note == 'failed: RuntimeError: no compiler'
    assert inference_benchmark.failure_note(ValueError()) == 'failed: ValueError: '
