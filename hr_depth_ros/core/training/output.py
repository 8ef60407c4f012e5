"""The fine-tuning output folder: never overwrite a previous run by accident, recover from crashes.

:func:`prepare_output` runs before anything else of a run (and before ``--resume`` looks for
``latest/``):

1. ``latest/`` and ``best/`` left half-saved by a crash between the two renames of the atomic
   save are recovered from their complete staging copy, and stale staging folders removed
   (:func:`hr_depth_ros.core.checkpoint.recover_checkpoint`);
2. frame caches left by killed runs (``OUTPUT/.hr_depth_frames-*``, see :data:`FRAME_CACHE_PREFIX`)
   are removed;
3. a fresh run into a folder that holds a previous run (``latest/``, ``best/`` or ``metrics.csv``)
   is refused unless ``resume`` (continue it) or ``overwrite``; with ``overwrite`` the previous
   run's files are deleted by :func:`remove_previous_run` only once the new run's data is ready,
   so bad input never costs the previous run.

:func:`output_lock` is held around all of it, for the life of a run: an exclusive ``flock`` on
``OUTPUT/.hr_depth_ros.lock`` (which records the holder's PID). A second run into the same folder
is refused before it touches anything (a sweep by it would delete the live run's staging and
frame-cache folders).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hr_depth_ros.core.checkpoint import METADATA_FILE, recover_checkpoint

__all__ = ['OutputError', 'output_lock', 'prepare_output', 'remove_previous_run', 'removed_if_left_empty',
           'FRAME_CACHE_PREFIX', 'RUN_FILES']

FRAME_CACHE_PREFIX = '.hr_depth_frames-'
LATEST, BEST = 'latest', 'best'  # the checkpoint folders of a run: the last saved step, the best validation
CHECKPOINT_NAMES = (LATEST, BEST)
RUN_FILES = (*CHECKPOINT_NAMES, 'metrics.csv', 'tensorboard')  # what a run writes into OUTPUT
LOCK_FILE = '.hr_depth_ros.lock'  # flocked by the run that owns OUTPUT; holds its PID


class OutputError(ValueError):
    """The output folder holds a previous run and neither resume nor overwrite was asked for."""


def _describe_run(output: Path) -> str:
    try:
        step = json.loads((output / LATEST / METADATA_FILE).read_text()).get('step')
    except (OSError, ValueError, AttributeError):
        step = None
    found = [name + ('/' if (output / name).is_dir() else '') for name in RUN_FILES if (output / name).exists()]
    return ', '.join(found) + (f'; latest/ is at step {step}' if step is not None else '')


@contextmanager
def output_lock(output: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``output`` (created if missing) for the ``with`` block.

    OutputError naming the holder's PID when another run holds it; nothing in ``output`` is touched
    then. The lock file is removed on the way out (and the folder too when this call created it and
    it is left empty); the lock dies with its process, so a killed run never blocks the next one.
    """
    output = Path(output).expanduser()
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    path = output / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors='replace').strip() or 'unknown'
            os.close(fd)
            raise OutputError(f'output {output} is in use by another fine-tuning run (PID {holder}, lock '
                              f'{path}): wait for it to finish, or choose another --output') from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and flock: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
        yield
    finally:
        try:
            os.unlink(path)  # while still locked: a waiting opener sees a different file and retries
        except OSError:
            pass
        os.close(fd)
        if created:
            try:
                output.rmdir()  # only when left empty
            except OSError:
                pass


def prepare_output(output: str | Path, resume: bool = False, overwrite: bool = False) -> list[str]:
    """Recover, sweep and check ``output`` (see the module docstring); returns one line per action.

    Raises OutputError for a previous run without ``resume`` / ``overwrite``; OSError when the
    folder cannot be read or changed.
    """
    output = Path(output).expanduser()
    if not output.is_dir():
        return []
    actions: list[str] = []
    for name in CHECKPOINT_NAMES:
        actions += recover_checkpoint(output / name)
    for cache in output.glob(FRAME_CACHE_PREFIX + '*'):
        shutil.rmtree(cache, ignore_errors=True)
        actions.append(f'removed the frame cache {cache} left by an interrupted run')
    if not resume and not overwrite and any((output / name).exists() for name in RUN_FILES):
        raise OutputError(f'output {output} holds a previous run ({_describe_run(output)}): use --resume to '
                          'continue it, --overwrite to replace it, or another --output')
    return actions


def remove_previous_run(output: str | Path) -> list[str]:
    """Delete what a previous run wrote into ``output`` (for ``overwrite``); one line when there was any."""
    output = Path(output).expanduser()
    previous = [name for name in RUN_FILES if (output / name).exists()]
    for name in previous:
        path = output / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return [f'--overwrite: removed the previous run in {output} ({", ".join(previous)})'] if previous else []


@contextmanager
def removed_if_left_empty(output: str | Path) -> Iterator[None]:
    """On failure, remove ``output`` again when this run created it and left it empty (bad input writes nothing)."""
    output = Path(output).expanduser()
    existed = output.exists()
    try:
        yield
    except BaseException:
        if not existed and output.is_dir() and not any(output.iterdir()):
            output.rmdir()
        raise


def describe_os_error(error: OSError, output: str) -> str:
    """One line for a file-system failure: the path, what went wrong, what to check."""
    path = error.filename or output
    reason = error.strerror or str(error)
    hint = {errno.ENOSPC: ' (disk full: free space or choose another --output)',
            errno.EROFS: ' (read-only file system: choose another --output)',
            errno.EACCES: ' (permission denied: check the folder\'s owner and mode)',
            errno.EPERM: ' (operation not permitted: check the folder\'s owner and mode)'}.get(error.errno, '')
    return f'cannot write {path}: {reason}{hint}'
