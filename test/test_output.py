"""The fine-tuning output folder: no silent overwrite, crash recovery, one-line disk errors (issue 12 items 3-5)."""
from __future__ import annotations

import csv
import errno
import json
import shutil
from pathlib import Path

import pytest

from hr_depth_ros.tools import finetune
from hr_depth_ros.core.checkpoint import recover_checkpoint
from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag
from hr_depth_ros.core.training.output import OutputError, prepare_output

COMMON = ['--width', '128', '--height', '64', '--batch-size', '2', '--device', 'cpu', '--quiet', '--save-every', '1',
          '--val-every', '2']


@pytest.fixture(scope='module')
def bag(tmp_path_factory) -> Path:
    return write_synthetic_bag(tmp_path_factory.mktemp('output') / 'drive', frames=16, width=256, height=96, seed=2)


def step_of(folder: Path) -> int:
    return json.loads((folder / 'hr_depth_ros.json').read_text())['step']


def run(bag: Path, output: Path, *extra: str) -> int:
    return finetune.main(['--bag', str(bag), '--output', str(output), *COMMON, *extra])


@pytest.fixture(scope='module')
def first_run(bag, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp('first') / 'out'
    assert run(bag, output, '--steps', '4') == 0
    return output


def test_a_fresh_run_into_a_previous_run_is_refused_unless_overwrite(bag, first_run, tmp_path, capsys):
    output = tmp_path / 'out'
    shutil.copytree(first_run, output)
    rows = (output / 'metrics.csv').read_text()
    best = (output / 'best' / 'encoder.pth').read_bytes()
    assert run(bag, output, '--steps', '2') == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and str(output) in err and 'step 4' in err and '--overwrite' in err
    assert step_of(output / 'latest') == 4 and (output / 'metrics.csv').read_text() == rows
    assert (output / 'best' / 'encoder.pth').read_bytes() == best
    assert run(bag, output, '--steps', '2', '--overwrite', '--image-topic', '/nope') == 2  # bad input: run kept
    assert step_of(output / 'latest') == 4 and (output / 'metrics.csv').read_text() == rows
    assert run(bag, output, '--steps', '2', '--overwrite') == 0
    assert step_of(output / 'latest') == 2
    assert [int(r['step']) for r in csv.DictReader(open(output / 'metrics.csv')) if r['split'] == 'val'] == [2]
    assert not list(output.glob('.hr_depth_frames-*'))  # the frame cache lived here and is gone


def _crash_between_renames(latest: Path, new_step: int) -> tuple[Path, Path]:
    """What a kill between the two os.replace calls of save_depth_checkpoint leaves: .old and .tmp, no latest."""
    old = latest.parent / '.latest.old-4242-abcdefgh'
    staged = latest.parent / '.latest.tmp-abcdefgh'
    shutil.copytree(latest, staged)
    meta = json.loads((staged / 'hr_depth_ros.json').read_text())
    meta['step'] = new_step
    (staged / 'hr_depth_ros.json').write_text(json.dumps(meta))
    latest.rename(old)
    return old, staged


def test_resume_recovers_a_save_interrupted_between_the_renames(bag, first_run, tmp_path):
    output = tmp_path / 'out'
    shutil.copytree(first_run, output)
    old, staged = _crash_between_renames(output / 'latest', new_step=4)
    stale = output / '.best.tmp-zzzzzzzz'  # a staging folder of a killed save, 57-182 MB in the issue
    stale.mkdir()
    (stale / 'encoder.pth').write_bytes(b'partial')
    cache = output / '.hr_depth_frames-dead'  # the frame cache of a killed run
    cache.mkdir()
    (cache / 'images.u8').write_bytes(bytes(1000))
    assert run(bag, output, '--steps', '5', '--resume') == 0
    assert step_of(output / 'latest') == 5
    assert not old.exists() and not staged.exists() and not stale.exists() and not cache.exists()


def test_recovery_prefers_the_complete_new_copy_and_falls_back_to_the_previous(first_run, tmp_path):
    output = tmp_path / 'out'
    shutil.copytree(first_run, output)
    old, staged = _crash_between_renames(output / 'latest', new_step=99)
    actions = recover_checkpoint(output / 'latest')
    assert step_of(output / 'latest') == 99 and 'new checkpoint' in actions[0]
    assert not old.exists() and any('stale staging' in a for a in actions)
    # The new copy incomplete (killed while writing it): the previous one comes back.
    old, staged = _crash_between_renames(output / 'latest', new_step=100)
    (staged / 'hr_depth_ros.json').unlink()
    recover_checkpoint(output / 'latest')
    assert step_of(output / 'latest') == 99 and not staged.exists()


def test_prepare_output_on_empty_or_missing_folders(tmp_path):
    assert prepare_output(tmp_path / 'missing') == []
    assert prepare_output(tmp_path) == []
    (tmp_path / 'metrics.csv').write_text('step\n')
    with pytest.raises(OutputError, match='metrics.csv'):
        prepare_output(tmp_path)
    assert prepare_output(tmp_path, resume=True) == []


def test_full_disk_is_one_line_naming_the_path(bag, tmp_path, capsys, monkeypatch):
    import hr_depth_ros.core.checkpoint as checkpoint

    output = tmp_path / 'out'
    monkeypatch.setattr(checkpoint.shutil, 'disk_usage', lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    assert run(bag, output, '--steps', '1') == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and str(output) in err and 'disk' in err.lower()  # the path and the reason
    assert not list(output.glob('.latest.tmp-*'))


def test_torch_zip_writer_failure_becomes_an_os_error(tmp_path, monkeypatch):
    import hr_depth_ros.core.checkpoint as checkpoint

    def failing_save(obj, stream):
        raise RuntimeError('[enforce fail at inline_container.cc:626] . unexpected pos 56831872 vs 56831764')

    monkeypatch.setattr(checkpoint.torch, 'save', failing_save)
    with pytest.raises(OSError) as info:
        checkpoint._save_file({}, tmp_path / 'encoder.pth')
    assert info.value.filename == str(tmp_path / 'encoder.pth') and 'unexpected pos' in str(info.value)


@pytest.mark.parametrize('code', [errno.EROFS, errno.EACCES])
def test_read_only_or_forbidden_output_is_one_line_exit_2(bag, tmp_path, capsys, monkeypatch, code):
    import os
    import tempfile

    output = tmp_path / 'out'
    real_mkdtemp = tempfile.mkdtemp

    def refusing_mkdtemp(prefix=None, dir=None, **kwargs):
        if dir is not None and Path(dir) == output:
            raise OSError(code, os.strerror(code), str(Path(dir) / (prefix + 'x')))
        return real_mkdtemp(prefix=prefix, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, 'mkdtemp', refusing_mkdtemp)
    assert run(bag, output, '--steps', '1') == 2
    err = capsys.readouterr().err
    assert err.startswith('finetune: error: cannot write ') and err.count('\n') == 1 and str(output) in err
    assert os.strerror(code) in err
    blocked = tmp_path / 'a_file'
    blocked.write_text('x')
    assert run(bag, blocked / 'out', '--steps', '1') == 2
    assert str(blocked) in capsys.readouterr().err
