"""Fleet-scale fine-tuning (issue 14): many bags per --bag, per-bag summaries."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hr_depth_ros.tools import finetune
from hr_depth_ros.core.checkpoint import load_depth_checkpoint
from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag
from hr_depth_ros.core.training.data import DataConfig, DataError, prepare_data
from hr_depth_ros.core.training.sources import bags_in, expand_bags

W, H = 128, 64


@pytest.fixture(scope='module')
def fleet(tmp_path_factory) -> Path:
    """A folder of three bags: two drives (one nested a level down) and a parked robot (no motion)."""
    root = tmp_path_factory.mktemp('fleet')
    (root / 'robot2').mkdir()
    write_synthetic_bag(root / 'robot1_drive', frames=16, width=256, height=96, seed=1)
    write_synthetic_bag(root / 'robot2' / 'drive', frames=20, width=256, height=96, seed=2, storage='sqlite3')
    write_synthetic_bag(root / 'robot3_parked', frames=12, width=256, height=96, seed=3, speed=0.0,
                        fps=1000.0, tf_rate=3000.0, tf_offset_s=0.0)
    (root / '.hr_depth_frames-old').mkdir()  # a hidden cache folder is never a bag
    (root / '.hr_depth_frames-old' / 'metadata.yaml').write_text('')
    return root


def test_folders_patterns_and_files_expand_to_bags(fleet, tmp_path):
    expected = [fleet / 'robot1_drive', fleet / 'robot2' / 'drive', fleet / 'robot3_parked']
    assert bags_in(fleet) == expected
    assert expand_bags([fleet]) == expected
    assert expand_bags([str(fleet / 'robot*')]) == expected
    # A bag named twice is read once; argument order is kept.
    assert expand_bags([fleet / 'robot3_parked', str(fleet / 'robot*')]) == [expected[2], *expected[:2]]
    ros1 = tmp_path / 'old.bag'
    ros1.write_bytes(b'#ROSBAG V2.0\n')
    assert expand_bags([tmp_path]) == [ros1]
    assert expand_bags([tmp_path / 'missing']) == [tmp_path / 'missing']  # the reader names it
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='holds no bag'):
        expand_bags([tmp_path / 'empty'])
    with pytest.raises(ValueError, match='matches no bag'):
        expand_bags([str(tmp_path / 'nothing*')])
    with pytest.raises(DataError, match=f'{tmp_path / "empty"}.*holds no bag'):
        prepare_data(DataConfig(bags=[tmp_path / 'empty'], width=W, height=H))


def test_a_folder_of_bags_keeps_bags_apart_and_reports_each(fleet):
    data = prepare_data(DataConfig(bags=[fleet], width=W, height=H, val_fraction=0.2, val_block_frames=4))
    try:
        store = data.store
        assert store.bags == [str(fleet / 'robot1_drive'), str(fleet / 'robot2' / 'drive'),
                              str(fleet / 'robot3_parked')]
        assert np.bincount(store.segment).tolist() == [16, 20, 12]
        for sample in data.train + data.val:
            assert len({int(store.segment[i]) for i in sample}) == 1  # no triplet spans two bags
        reports = data.bag_reports
        assert [r.frames for r in reports] == [16, 20, 12]
        assert sum(r.train for r in reports) == len(data.train) and sum(r.val for r in reports) == len(data.val)
        assert reports[2].train == reports[2].val == 0 and reports[2].dropped_no_motion == 12 - 2
        assert reports[0].train > 0 and reports[1].train > 0
        lines = data.bag_summaries()
        assert len(lines) == 3 and lines[2].startswith(f'bag {fleet / "robot3_parked"}: 12 frames -> 0 training')
        assert '10 without camera motion' in lines[2]
        for field in ('dropped_edges', 'dropped_gap', 'dropped_no_motion', 'dropped_no_pose', 'dropped_split'):
            assert sum(getattr(r, field) for r in reports) == getattr(data.report, field)
    finally:
        data.close()


# --- torchrun + DistributedDataParallel --------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
TORCHRUN_ARGS = ['--width', str(W), '--height', str(H), '--batch-size', '2', '--device', 'cpu',
                 '--gt-depth-topic', '/camera/depth_gt', '--val-fraction', '0.3', '--save-every', '100',
                 '--val-every', '3', '--pose-source', 'net']


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` (loopback rendezvous) on this worktree's package, 1 thread per rank."""
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1', 'MASTER_ADDR': '127.0.0.1'}
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc),
               '-m', 'hr_depth_ros.tools.finetune', *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline='') as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope='module')
def ddp_bag(tmp_path_factory) -> Path:
    return write_synthetic_bag(tmp_path_factory.mktemp('ddp') / 'drive', frames=30, width=256, height=96, seed=5)


def test_torchrun_two_processes_train_resume_and_validate_like_one(ddp_bag, tmp_path):
    output = tmp_path / 'ddp'
    args = ['--bag', str(ddp_bag), '--output', str(output), *TORCHRUN_ARGS]
    run = _torchrun([*args, '--steps', '3'])
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r'\b2 processes\b.*\bbatch 4\b', run.stderr)  # the processes and the effective batch
    assert run.stdout.count('finetune: done') == 1  # rank 1 reports nothing
    run = _torchrun([*args, '--steps', '5', '--resume'])
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'resumed from' in run.stderr
    rows = _rows(output / 'metrics.csv')
    keys = [(r['step'], r['split']) for r in rows]
    assert len(keys) == len(set(keys)) and ('3', 'val') in keys and ('5', 'val') in keys  # rank 0 alone writes
    meta = json.loads((output / 'latest' / 'hr_depth_ros.json').read_text())
    assert meta['step'] == 5 and meta['world_size'] == 2 and meta['effective_batch_size'] == 4
    assert meta['samples_seen'] == 5 * 2 * 2  # steps x per-rank batch x ranks, across the resume
    assert not list(output.glob('.hr_depth_frames-*'))  # every rank's frame cache removed
    load_depth_checkpoint(output / 'latest')
    # A single process validating the same checkpoint (step 0 of a run started from it) gets the
    # numbers the two ranks recorded for it (no anchor: the ranks' run had no start model to pull toward).
    single = tmp_path / 'single'
    assert finetune.main(['--bag', str(ddp_bag), '--output', str(single), '--init', str(output / 'latest'),
                          '--steps', '1', '--quiet', '--anchor-weight', '0', *TORCHRUN_ARGS]) == 0
    ddp_val = next(r for r in rows if (r['step'], r['split']) == ('5', 'val'))
    single_val = next(r for r in _rows(single / 'metrics.csv') if (r['step'], r['split']) == ('0', 'val'))
    for key in ('loss', 'photometric', 'loss_tf', 'abs_rel', 'rmse', 'a1'):
        assert float(single_val[key]) == pytest.approx(float(ddp_val[key]), rel=1e-4), key


def test_torchrun_failure_stops_every_rank_with_the_reason(tmp_path):
    run = _torchrun(['--bag', str(tmp_path / 'no_such_bag'), '--output', str(tmp_path / 'out'), *TORCHRUN_ARGS,
                     '--steps', '1'])
    assert run.returncode != 0
    assert 'finetune: error: ' in run.stderr and 'no_such_bag' in run.stderr
    assert not (tmp_path / 'out').exists()


# --- the persistent frame cache ----------------------------------------------------------------
def _same_frames(a, b) -> None:
    assert a.bags == b.bags and np.array_equal(a.stamps_ns, b.stamps_ns) and np.array_equal(a.segment, b.segment)
    assert all(np.array_equal(a.image(i), b.image(i)) for i in range(len(a)))
    assert np.array_equal(np.asarray([a.thumbs[i] for i in range(len(a))]),
                          np.asarray([b.thumbs[i] for i in range(len(b))]))
    assert np.array_equal(a.poses, b.poses, equal_nan=True)


def test_frame_cache_is_reused_and_keyed_by_bag_and_settings(fleet, tmp_path, monkeypatch):
    from hr_depth_ros.core.training import cache

    bags = [fleet / 'robot1_drive', fleet / 'robot2' / 'drive']
    config = DataConfig(bags=bags, width=W, height=H, frame_cache=tmp_path / 'cache', prepare_workers=1,
                        gt_depth_topic='/camera/depth_gt')
    reference = prepare_data(DataConfig(bags=bags, width=W, height=H, gt_depth_topic='/camera/depth_gt'))
    first = prepare_data(config)
    entries = sorted(p.name for p in (tmp_path / 'cache').iterdir() if not p.name.startswith('.'))
    assert len(entries) == 2 and entries[1].startswith('robot1_drive-')  # named by the bag, then the key
    monkeypatch.setattr(cache, 'extract_frames', lambda *a, **k: pytest.fail('decoded a cached bag'))
    second = prepare_data(config)
    try:
        for data in (first, second):
            _same_frames(reference.store, data.store)  # the cache gives what decoding gives
            assert data.train == reference.train and data.val == reference.val
            assert data.store.depth(3) is not None and np.allclose(data.store.depth(3), reference.store.depth(3),
                                                                   equal_nan=True)
    finally:
        for data in (reference, first, second):
            data.close()
    assert sorted(p.name for p in (tmp_path / 'cache').iterdir() if not p.name.startswith('.')) == entries  # kept
    key = cache.cache_key(bags[0], config)
    assert cache.cache_key(bags[0], DataConfig(**{**vars(config), 'width': 2 * W})) != key
    assert cache.cache_key(bags[0], DataConfig(**{**vars(config), 'image_topic': '/other'})) != key
    # An entry cut short (a full disk, a copy interrupted) is decoded again, never read half.
    images = tmp_path / 'cache' / entries[1] / 'images.u8'
    os.truncate(images, images.stat().st_size // 2)
    monkeypatch.undo()
    again = prepare_data(config)
    try:
        assert images.stat().st_size == 16 * H * W * 3
        _same_frames(again.store, first.store)
    finally:
        again.close()
    metadata = bags[0] / 'metadata.yaml'
    os.utime(metadata, ns=(metadata.stat().st_atime_ns, metadata.stat().st_mtime_ns + 1_000_000))
    assert cache.cache_key(bags[0], config) != key  # the bag changed


def test_each_bag_is_expanded_once_and_opened_twice(fleet, tmp_path, monkeypatch):
    """Checked once (topics and counts in one open) and read once, with or without the frame cache."""
    from contextlib import contextmanager

    from hr_depth_ros.core import bags as bags_module
    from hr_depth_ros.core.training import data_config

    opened: list[Path] = []
    expanded: list[list] = []
    original_open, original_expand = bags_module._open_or_salvage, data_config.expand_bags

    @contextmanager
    def counting_open(path, partial):
        opened.append(Path(path))
        with original_open(path, partial) as reader:
            yield reader

    monkeypatch.setattr(bags_module, '_open_or_salvage', counting_open)
    monkeypatch.setattr(data_config, 'expand_bags', lambda specs: expanded.append(list(specs)) or original_expand(specs))
    for cache in (None, tmp_path / 'cache'):
        opened.clear()
        expanded.clear()
        data = prepare_data(DataConfig(bags=[fleet], width=W, height=H, frame_cache=cache, prepare_workers=1))
        data.close()
        assert expanded == [[fleet]]
        assert sorted(map(str, opened)) == sorted(2 * [str(bag) for bag in expand_bags([fleet])])


def _prepare_in_child(args) -> bool:
    from dataclasses import replace

    from hr_depth_ros.core.training.cache import cached_bag
    from hr_depth_ros.core.training.data_config import check_bags
    bag, config, root = args
    config, (checked,), _ = check_bags(replace(config, bags=[bag]))  # 'auto' topics chosen, the bag checked
    return cached_bag(checked, config, root)[1]


def test_concurrent_preparers_decode_a_bag_once(fleet, tmp_path):
    import multiprocessing

    config = DataConfig(bags=[], width=W, height=H)
    with multiprocessing.get_context('spawn').Pool(2) as pool:
        decoded = pool.map(_prepare_in_child, [(fleet / 'robot1_drive', config, tmp_path)] * 2)
    assert sorted(decoded) == [False, True]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.partial')] == []


def test_a_folder_of_bags_trains_in_one_job(fleet, tmp_path, caplog):
    caplog.set_level('INFO')
    output = tmp_path / 'out'
    assert finetune.main(['--bag', str(fleet), '--output', str(output), '--width', str(W), '--height', str(H),
                          '--batch-size', '2', '--device', 'cpu', '--steps', '2', '--frame-cache',
                          str(tmp_path / 'cache'), '--prepare-workers', '2']) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('bag ')]
    names = ('robot1_drive', 'robot2/drive', 'robot3_parked')
    assert [line.split(':')[0] for line in lines] == [f'bag {fleet / name}' for name in names]
    meta = json.loads((output / 'latest' / 'hr_depth_ros.json').read_text())
    assert len(meta['bags']) == 3 and meta['samples_seen'] == 4 and meta['world_size'] == 1
    assert not list(output.glob('.hr_depth_frames-*'))


# --- memory while preparing ----------------------------------------------------------------------
PREPARE_MEMORY_BOUND = 64 * 2**20  # bytes of peak RSS growth over a warmed-up process, any bag length


def test_preparing_a_bag_far_larger_than_the_bound_stays_within_it(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location('fleet', REPO / 'benchmarks' / 'fleet.py')
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    warmup = bench.write_raw_bag(tmp_path / 'warmup', 8)
    bag = bench.write_raw_bag(tmp_path / 'long', 110)  # 1280x720 rgb8: ~300 MB
    assert bench.bag_bytes(bag) > 4 * PREPARE_MEMORY_BOUND
    result = bench.memory_in_child(bag, warmup)
    assert result['frames'] == 110
    assert result['growth'] < PREPARE_MEMORY_BOUND, result


def test_a_config_goes_through_the_command_line_unchanged(tmp_path):
    from hr_depth_ros.core.training.trainer import TrainingConfig

    config = TrainingConfig(bags=['/a', str(tmp_path / '*')], output='/out', arch='hr_depth', width=320, height=96,
                            camera_info_topic=None, intrinsics=[1.0, 2.0, 3.0, 4.0], epochs=3, batch_size=5,
                            lr=2e-4, device='cpu', amp=False, resume=True, pose_source='tf', metric_scale=2.5,
                            frame_cache='/cache', prepare_workers=3, freeze_bn=True, min_motion=0.25)
    from hr_depth_ros.core.training.distributed import torchrun_command

    command = torchrun_command(config, 2, finetune.__name__)
    assert command[1:6] == ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    args = finetune.build_parser().parse_args(command[command.index(finetune.__name__) + 1:])
    assert finetune.config_from_args(args) == config


FAILING_RANK = '''
import os, sys
from hr_depth_ros.tools import finetune
from hr_depth_ros.core.training import trainer

if os.environ['RANK'] == '1':
    def fail(self, *args, **kwargs):
        raise trainer.TrainingError('injected failure on rank 1')
    trainer.Trainer._losses = fail
sys.exit(finetune.main())
'''


def test_a_failure_on_one_rank_stops_the_others_with_its_reason(ddp_bag, tmp_path):
    script = tmp_path / 'failing_rank.py'
    script.write_text(FAILING_RANK)
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1', 'MASTER_ADDR': '127.0.0.1'}
    run = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                          str(script), '--bag', str(ddp_bag), '--output', str(tmp_path / 'out'), *TORCHRUN_ARGS,
                          '--steps', '50'], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert any('rank 1' in line and 'injected failure on rank 1' in line for line in run.stderr.splitlines())
    assert 'finetune: done' not in run.stdout  # rank 0 was stopped, not left training alone
