"""On-disk cache of converted models (ROS-free), safe for several processes at once.

An entry is a folder ``<root>/<key>/`` holding the converted files plus ``manifest.json``
(size and SHA-256 of every file). Entries are built in a temporary sibling folder and renamed
into place in one step, so a reader sees either nothing or a complete entry; when two
processes build the same entry at once, the first rename wins and the other process uses the
winner's files. An entry whose manifest is missing or does not match its files (a crash of an
older version, a disk error, a hand edit) is deleted and rebuilt, with a warning.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

LOGGER = logging.getLogger(__name__)
CACHE_ENV = 'HR_DEPTH_ROS_CACHE'
MANIFEST = 'manifest.json'


def default_cache_dir() -> Path:
    """``$HR_DEPTH_ROS_CACHE`` if set, else ``$XDG_CACHE_HOME/hr_depth_ros`` (``~/.cache/hr_depth_ros``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache').expanduser() / 'hr_depth_ros'


def weights_hash(*modules: nn.Module) -> str:
    """SHA-256 (hex) of the modules' state dicts: key names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for module in modules:
        for key, value in module.state_dict().items():
            tensor = value.detach().to('cpu').contiguous()
            digest.update(f'{key}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for block in iter(lambda: stream.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _describe(folder: Path) -> dict[str, dict[str, int | str]]:
    return {path.name: {'size': path.stat().st_size, 'sha256': _file_sha256(path)}
            for path in sorted(folder.iterdir()) if path.is_file() and path.name != MANIFEST}


def _is_complete(entry: Path) -> bool:
    """True when ``entry`` has a manifest that matches its files (sizes and hashes)."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        return bool(manifest.get('files')) and manifest['files'] == _describe(entry)
    except (OSError, ValueError, AttributeError):
        return False


def remove_entry(entry: Path) -> None:
    """Move ``entry`` aside (one atomic rename) and delete it; a concurrent reader never sees half of it."""
    trash = entry.parent / f'.{entry.name}.trash-{os.getpid()}-{os.urandom(4).hex()}'
    try:
        os.replace(entry, trash)
    except OSError:
        return  # already gone (another process got there first)
    shutil.rmtree(trash, ignore_errors=True)


def cached_entry(root: Path, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """The folder of entry ``key`` under ``root``; ``build(folder)`` writes its files when missing.

    Returns ``(folder, built)``: ``built`` is False when a complete entry was already there.
    A corrupt entry is rebuilt. Errors of ``build`` propagate (nothing is left behind).
    """
    if not key or Path(key).name != key or key.startswith('.'):
        raise ValueError(f'invalid cache key {key!r}')
    root = Path(root).expanduser()
    entry = root / key
    if entry.is_dir():
        if _is_complete(entry):
            return entry, False
        LOGGER.warning('model cache entry %s is incomplete or corrupt: rebuilding it', entry)
        remove_entry(entry)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{key}.tmp-', dir=root))
    try:
        build(staging)
        manifest = {'key': key, 'files': _describe(staging)}
        if not manifest['files']:
            raise RuntimeError(f'building cache entry {key} wrote no files')
        with open(staging / MANIFEST, 'w') as stream:
            json.dump(manifest, stream, indent=2)
            stream.flush()
            os.fsync(stream.fileno())
        for path in staging.iterdir():  # data on disk before the rename makes the entry visible
            with open(path, 'rb') as stream:
                os.fsync(stream.fileno())
        try:
            os.rename(staging, entry)
        except OSError:
            if not _is_complete(entry):  # lost the race to a broken entry: replace it
                remove_entry(entry)
                os.rename(staging, entry)
            # else another process finished the same entry first: use theirs
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry, True
