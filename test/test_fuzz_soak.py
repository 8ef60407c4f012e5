"""Short form of the fuzz and soak harness (benchmarks/fuzz_soak.py) against real depth node processes.

Two nodes (raw and compressed) receive malformed images, decompression bombs and implausible
camera_info, then 5 s of good frames; the harness checks they survive, publish nothing for bad
input, keep the good intrinsics, log boundedly and hold their memory (issue 12 items 1, 2, 7).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_short_fuzz_and_soak_passes_every_check(tmp_path):
    report_path = tmp_path / 'report.json'
    result = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'fuzz_soak.py'), '--short', '--json',
                             str(report_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    report = json.loads(report_path.read_text())
    failed = [name for name, ok in report['checks'].items() if not ok]
    assert result.returncode == 0 and not failed, f'{failed}\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}'
    sent = report['bad_inputs_sent']
    assert sent['compressed:png_bomb'] > 0 and sent['compressed:jpeg_bomb'] > 0 and sent['raw:unique_encoding'] > 0
    assert sum(report['bad_frames_counted'].values()) > 0
    assert all(log['size_limit_lines'] >= 1 and log['longest_line'] < 2000 for log in report['logs'].values())
    assert report['outputs_for_bad_input'] == 0 and report['good_K_kept']
