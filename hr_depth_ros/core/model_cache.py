"""On-disk cache of converted models (ROS-free), safe for several processes at once.

An entry is a folder ``<root>/<key>/`` holding the converted files plus ``manifest.json``
(size and SHA-256 of every file). Entries are built in a temporary sibling folder and renamed
into place in one step, so a reader sees either nothing or a complete entry; when two
processes build the same entry at once, the first rename wins and the other process uses the
winner's files. An entry whose manifest is missing or does not match its files (a crash of an
older version, a disk error, a hand edit) is deleted and rebuilt, with a warning.

The manifest also binds the entry to what it was built from: its key and the caller's ``identity``
(e.g. the full SHA-256 of the weights). An entry whose manifest names another key or identity (an
entry of other weights copied or moved under this key) is not used: it is rebuilt, with one warning,
so a planted folder never runs in place of the model the user gave.
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


def _manifest(entry: Path) -> dict:
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _is_complete(entry: Path) -> bool:
    """True when ``entry`` has a manifest that matches its files (sizes and hashes)."""
    manifest = _manifest(entry)
    try:
        return bool(manifest.get('files')) and manifest['files'] == _describe(entry)
    except OSError:
        return False


def _belongs(entry: Path, key: str, identity: dict[str, str]) -> bool:
    """True when ``entry``'s manifest was written for ``key`` and ``identity``."""
    manifest = _manifest(entry)
    return manifest.get('key') == key and manifest.get('identity', {}) == identity


def remove_entry(entry: Path) -> None:
    """Move ``entry`` aside (one atomic rename) and delete it; a concurrent reader never sees half of it."""
    trash = entry.parent / f'.{entry.name}.trash-{os.getpid()}-{os.urandom(4).hex()}'
    try:
        os.replace(entry, trash)
    except OSError:
        return  # already gone (another process got there first)
    shutil.rmtree(trash, ignore_errors=True)


def cached_entry(root: Path, key: str, build: Callable[[Path], None],
                 identity: dict[str, str] | None = None) -> tuple[Path, bool]:
    """The folder of entry ``key`` under ``root``; ``build(folder)`` writes its files when missing.

    ``identity``: what the entry is built from beyond its (shortened) key, e.g. the full weights hash;
    recorded in the manifest and checked at every use. Returns ``(folder, built)``: ``built`` is
    False when a complete entry of this key and identity was already there. A corrupt entry, or one
    written for another key or identity, is rebuilt. Errors of ``build`` propagate (nothing is left behind).
    """
    identity = dict(identity or {})
    if not key or Path(key).name != key or key.startswith('.'):
        raise ValueError(f'invalid cache key {key!r}')
    root = Path(root).expanduser()
    entry = root / key
    if entry.is_dir():
        if _is_complete(entry):
            if _belongs(entry, key, identity):
                return entry, False
            LOGGER.warning('model cache entry %s was not built from these weights (its manifest names another '
                           'key or content hash: copied or planted?): not using it, rebuilding it', entry)
        else:
            LOGGER.warning('model cache entry %s is incomplete or corrupt: rebuilding it', entry)
        remove_entry(entry)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{key}.tmp-', dir=root))
    try:
        build(staging)
        manifest = {'key': key, 'identity': identity, 'files': _describe(staging)}
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
            if not (_is_complete(entry) and _belongs(entry, key, identity)):  # lost the race to a bad entry
                remove_entry(entry)
                os.rename(staging, entry)
            # else another process finished the same entry first: use theirs
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry, True
