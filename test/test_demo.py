"""The demo end to end at a tiny size: bags, fine-tuning, depth_node over DDS, report."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2

from hr_depth_ros.pointcloud import read_ply

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_the_whole_loop(tmp_path):
    output = tmp_path / 'demo'
    command = [sys.executable, '-m', 'hr_depth_ros.demo', '--output', str(output), '--device', 'cpu',
               '--width', '320', '--height', '96', '--net-width', '128', '--net-height', '64',
               '--train-frames', '16', '--eval-frames', '3', '--finetune-steps', '2', '--batch-size', '2',
               '--init', 'random']
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((output / 'report.json').read_text())
    assert report['frames_played'] == 3 and report['frames_processed'] == 3
    for name in ('random_init', 'finetuned', 'node_published'):
        assert 0.0 < report['metrics'][name]['abs_rel'] < 10.0
        assert 0.0 <= report['metrics'][name]['a1'] <= 1.0
    assert report['latency_ms_publish_to_depth']['p50'] > 0
    strip = cv2.imread(str(output / 'strips' / 'strip_00.png'))
    assert strip.shape == (3 * 96, 3 * 320, 3)  # rows of camera | ground truth | prediction
    points, colors = read_ply(output / 'points.ply')
    assert len(points) > 100 and colors is not None
    assert 'report.md' in result.stdout
    # A second run reuses the bags and the checkpoint.
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'reusing' in again.stdout
