"""The demo end to end at a tiny size: bags, fine-tuning, depth_node over DDS, report."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from hr_depth_ros.core.pointcloud import read_ply

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_the_whole_loop(tmp_path):
    output = tmp_path / 'demo'
    command = [sys.executable, '-m', 'hr_depth_ros.tools.demo', '--output', str(output), '--device', 'cpu',
               '--width', '320', '--height', '96', '--net-width', '128', '--net-height', '64',
               '--train-frames', '16', '--eval-frames', '3', '--finetune-steps', '2', '--batch-size', '2',
               '--init', 'random']
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((output / 'report.json').read_text())
    assert report['frames_played'] == 3 and report['frames_processed'] == 3
    metrics = report['metrics']
    assert set(metrics) == {'random_init', 'finetuned_tf', 'finetuned_tf_metric', 'finetuned_camera_only',
                            'node_published', 'node_published_metric'}
    # What the node published over DDS is what the engine computes for the same checkpoint.
    for key in ('abs_rel', 'rmse', 'a1'):
        assert metrics['node_published'][key] == pytest.approx(metrics['finetuned_tf'][key], rel=1e-3, abs=1e-4)
        assert metrics['node_published_metric'][key] == pytest.approx(metrics['finetuned_tf_metric'][key],
                                                                      rel=1e-3, abs=1e-4)
    # The metric rows are not median-scaled: they differ from the scaled ones by the scale ratio.
    assert metrics['finetuned_tf_metric']['scale_ratio'] != pytest.approx(1.0, abs=1e-6)
    assert metrics['finetuned_tf_metric']['abs_rel'] != pytest.approx(metrics['finetuned_tf']['abs_rel'])
    finetuned = json.loads((output / 'finetune_tf' / 'latest' / 'hr_depth_ros.json').read_text())
    assert finetuned['pose_source'] == 'tf' and finetuned['metric_scale'] > 0
    camera_only = json.loads((output / 'finetune_camera_only' / 'latest' / 'hr_depth_ros.json').read_text())
    assert camera_only['pose_source'] == 'vo' and camera_only['selected_by'] == 'loss_tf'
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
