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
"""
from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hr_depth_ros.core.checkpoint import METADATA_FILE, recover_checkpoint

__all__ = ['OutputError', 'prepare_output', 'remove_previous_run', 'removed_if_left_empty', 'FRAME_CACHE_PREFIX',
           'RUN_FILES']

FRAME_CACHE_PREFIX = '.hr_depth_frames-'
LATEST, BEST = 'latest', 'best'  # the checkpoint folders of a run: the last saved step, the best validation
CHECKPOINT_NAMES = (LATEST, BEST)
RUN_FILES = (*CHECKPOINT_NAMES, 'metrics.csv', 'tensorboard')  # what a run writes into OUTPUT


class OutputError(ValueError):
    """The output folder holds a previous run and neither resume nor overwrite was asked for."""


def _describe_run(output: Path) -> str:
    try:
        step = json.loads((output / LATEST / METADATA_FILE).read_text()).get('step')
    except (OSError, ValueError, AttributeError):
        step = None
    found = [name + ('/' if (output / name).is_dir() else '') for name in RUN_FILES if (output / name).exists()]
    return ', '.join(found) + (f'; latest/ is at step {step}' if step is not None else '')


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
