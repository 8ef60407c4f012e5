"""Shared fixtures. Every test run keeps ROS traffic on this machine, on its own domain."""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Local-only DDS for every process a test starts (this ROS ignores ROS_LOCALHOST_ONLY).
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('ROS_DOMAIN_ID', str(random.Random(os.getpid()).randint(1, 100)))


@pytest.fixture(scope='session', autouse=True)
def model_cache_dir(tmp_path_factory) -> Path:
    """Converted models (OpenVINO) go to a per-session folder, never the user's ~/.cache."""
    from hr_depth_ros.core.model_cache import CACHE_ENV

    folder = tmp_path_factory.mktemp('model_cache')
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)  # inherited by the nodes and CLIs the tests start
    yield folder
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture(scope='session')
def synthetic_bag(tmp_path_factory) -> Path:
    """A 60-frame 640x192 synthetic drive (MCAP) with every topic, made once per session."""
    from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag

    path = tmp_path_factory.mktemp('bags') / 'drive_mcap'
    write_synthetic_bag(path, frames=60, width=640, height=192, fps=10.0, storage='mcap', seed=0)
    return path


@pytest.fixture(scope='session')
def lite_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised Lite-HR-Depth checkpoint folder at 640x192."""
    import torch

    from hr_depth_ros.core.checkpoint import save_depth_checkpoint
    from hr_depth_ros.core.networks import build_depth_model

    torch.manual_seed(0)
    encoder, decoder = build_depth_model('lite_hr_depth')
    folder = tmp_path_factory.mktemp('checkpoints') / 'lite_random_640x192'
    save_depth_checkpoint(folder, encoder, decoder, arch='lite_hr_depth', height=192, width=640)
    return folder


@pytest.fixture(scope='session')
def colcon() -> str:
    """The colcon executable (the venv's, else PATH's); skips where colcon is not installed."""
    import shutil

    exe = shutil.which('colcon') or str(Path(sys.executable).with_name('colcon'))
    if not Path(exe).exists():
        pytest.skip('colcon is not installed (requirements.txt installs it; CI has it)')
    return exe


@pytest.fixture(scope='session')
def colcon_install(colcon, tmp_path_factory) -> Path:
    """``colcon build`` of this repository, once per session, as a ROS user's workspace does; the
    install base (``<it>/setup.bash``, ``<it>/hr_depth_ros``)."""
    import subprocess

    workspace = tmp_path_factory.mktemp('colcon_ws')
    env = dict(os.environ, PATH=f'{Path(sys.executable).parent}:{os.environ.get("PATH", "")}')
    build = subprocess.run(
        [colcon, '--log-base', str(workspace / 'log'), 'build', '--base-paths', str(REPO_ROOT),
         '--build-base', str(workspace / 'build'), '--install-base', str(workspace / 'install')],
        capture_output=True, text=True, env=env, cwd=workspace)
    assert build.returncode == 0, build.stdout + build.stderr
    return workspace / 'install'
