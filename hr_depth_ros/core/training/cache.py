"""Frame preparation for many bags: one bag per worker process, into a persistent on-disk cache (ROS-free).

Each bag becomes its own :class:`~hr_depth_ros.core.training.frame_store.FrameStore` folder (frames decoded and
resized once, at training resolution) named by :func:`cache_key`: the bag's path, the size and
modification time of every file in it, the topics, the resolution and every decoding / TF
setting. A later run, or another rank on the same machine, with the same key maps the folder
instead of decoding again. Entries are built in a temporary folder and renamed into place when
complete; a lock file per entry (``fcntl.flock``) makes concurrent preparers (ranks, runs) wait for
the one decoding it, so each bag is decoded once and a half-written entry is never read. An entry
whose bag changed gets a new key; old entries stay until the cache folder is deleted.

Without a persistent cache folder the same per-bag stores are built in a temporary folder that
closing the store removes (several bags still decode in parallel).

Memory while preparing: each worker holds one decoded frame, its resized copy, the reader's
buffers and the per-frame index (stamp, pose, flags: about 200 bytes a frame) plus the bag's TF
messages; frames go to disk row by row (:func:`~hr_depth_ros.core.training.extraction.extract_frames`).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from hr_depth_ros.core.training.data_config import CheckedBag, DataConfig, check_bags
from hr_depth_ros.core.training.extraction import extract_frames
from hr_depth_ros.core.training.frame_store import FrameStore, new_cache_folder, thumb_shape

__all__ = ['cache_key', 'cached_bag', 'prepare_frames', 'save_store', 'load_store', 'concat_stores', 'CACHE_VERSION']

CACHE_VERSION = 2  # bump when the stored layout or the decoding changes (2: rectified frames, depth in metres)
KEY_FIELDS = ('width', 'height', 'image_topic', 'camera_info_topic', 'gt_depth_topic', 'gt_depth_tolerance',
              'intrinsics', 'max_pixels',
              'min_decodable_fraction', 'pose_source', 'odom_frame', 'camera_frame', 'tf_topic', 'tf_static_topic',
              'max_tf_gap')
INDEX_ARRAYS = ('stamps_ns', 'segment', 'has_depth', 'poses')
INDEX_FIELDS = ('width', 'height', 'bags', 'tf_segments', 'tf_notes', 'frames_without_tf', 'skipped', 'bag_skipped',
                'notes')


def _bag_files(bag: Path) -> list[list[Any]]:
    files = sorted(p for p in bag.rglob('*') if p.is_file()) if bag.is_dir() else [bag]
    return [[str(p.relative_to(bag) if bag.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns]
            for p in files]


def cache_key(bag: Path, config: DataConfig) -> str:
    """Names the cache entry of ``bag`` under ``config``: changes when the bag or any setting does."""
    content = {'version': CACHE_VERSION, 'bag': str(bag.resolve()), 'files': _bag_files(bag),
               **{name: getattr(config, name) for name in KEY_FIELDS}}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return f'{bag.name}-{digest}'


def save_store(store: FrameStore, folder: Path) -> None:
    """Write ``store``'s index beside its frame files in ``folder`` (``index.npz``, ``store.json``)."""
    np.savez(folder / 'index.npz', K=np.asarray(store.K), **{name: getattr(store, name) for name in INDEX_ARRAYS})
    (folder / 'store.json').write_text(json.dumps({name: getattr(store, name) for name in INDEX_FIELDS}))


def load_store(folder: Path) -> FrameStore:
    """The store saved in ``folder`` (which it does not own: closing it keeps the folder)."""
    fields = json.loads((folder / 'store.json').read_text())
    with np.load(folder / 'index.npz') as index:
        arrays = {name: index[name] for name in INDEX_ARRAYS}
        K = list(index['K'])
    return FrameStore(folder=folder, K=K, owns_folder=False, **arrays, **fields)


def concat_stores(stores: Sequence[FrameStore], folder: Path, owns_folder: bool) -> FrameStore:
    """One store over per-bag stores (bag ``s`` is segment ``s``; its files stay in its folder)."""
    def joined(name: str) -> list:
        return [item for store in stores for item in getattr(store, name)]

    return FrameStore(
        folder=folder, width=stores[0].width, height=stores[0].height,
        stamps_ns=np.concatenate([s.stamps_ns for s in stores]),
        segment=np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in enumerate(stores)]),
        K=joined('K'), has_depth=np.concatenate([s.has_depth for s in stores]), bags=joined('bags'),
        poses=np.concatenate([s.poses for s in stores]), tf_segments=joined('tf_segments'),
        tf_notes=joined('tf_notes'), frames_without_tf=sum(s.frames_without_tf for s in stores),
        owns_folder=owns_folder, skipped=sum(s.skipped for s in stores), bag_skipped=joined('bag_skipped'),
        notes=joined('notes'), parts=[s.folder for s in stores])


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, 'a') as stream:
        fcntl.flock(stream, fcntl.LOCK_EX)  # released when the file closes
        yield


def cached_bag(bag: CheckedBag, config: DataConfig, root: Path) -> tuple[Path, bool]:
    """The cache entry of ``bag`` (checked: :func:`.data_config.check_bags`) under ``root``, decoding it unless
    present; (folder, whether decoded)."""
    key = cache_key(bag.path, config)
    entry = root / key
    with _locked(root / f'.{key}.lock'):
        if _complete(entry):
            return entry, False
        for stale in root.glob(f'.partial-{key}-*'):  # left by a preparer killed while holding this lock
            shutil.rmtree(stale, ignore_errors=True)
        store = extract_frames(replace(config, bags=[bag.path], cache_dir=root, cache_prefix=f'.partial-{key}-'),
                               [bag])
        try:
            save_store(store, store.folder)
            if entry.exists():  # damaged (files cut short, index missing): decoded again
                shutil.rmtree(entry)
            os.rename(store.folder, entry)
        except BaseException:
            store.close()
            raise
        return entry, True


def _complete(entry: Path) -> bool:
    """Whether ``entry`` holds a whole store: its index and every frame file at its full size."""
    try:
        store = load_store(entry)
        rows = {'images.u8': store.height * store.width * 3, 'thumbs.f32': 4 * int(np.prod(thumb_shape(store.width,
                                                                                             store.height)))}
        if store.has_depth.any():
            rows['depth.f32'] = store.height * store.width * 4
        return all((entry / name).stat().st_size == len(store) * size for name, size in rows.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _cached_bag_job(job: tuple[CheckedBag, DataConfig, Path]) -> tuple[Path, bool]:
    return cached_bag(*job)


def _workers(requested: int, bags: int) -> int:
    return max(1, min(bags, requested if requested > 0 else min(os.cpu_count() or 1, 8)))


def prepare_frames(config: DataConfig, checked: Sequence[CheckedBag] | None = None) -> FrameStore:
    """Frames of every bag of ``config``: from ``config.frame_cache`` when there, decoded (in parallel) otherwise.

    ``checked``: the bags as :func:`.data_config.check_bags` returned them with ``config`` (checked here
    when not given): the bags are expanded and their topics checked once, before anything is decoded.
    Without ``frame_cache`` and with one worker this is :func:`extract_frames` itself.
    """
    if checked is None:  # 'auto' topics chosen from the first bag (once, before the cache keys)
        config, checked, _ = check_bags(config)
    bags = list(checked)
    workers = _workers(config.prepare_workers, len(bags))
    if config.frame_cache is None and workers == 1:
        return extract_frames(replace(config, bags=[bag.path for bag in bags]), bags)
    if config.frame_cache is not None:
        root, owned = Path(config.frame_cache).expanduser(), False
        root.mkdir(parents=True, exist_ok=True)
    else:
        root, owned = new_cache_folder(config), True
    try:
        jobs = [(bag, config, root) for bag in bags]
        bar = _progress(config.progress, len(bags))
        if workers == 1:
            results = [_advance(bar, cached_bag(*job)) for job in jobs]
        else:  # spawn: no fork of a process that holds torch's threads
            with multiprocessing.get_context('spawn').Pool(workers) as pool:
                results = [_advance(bar, result) for result in pool.imap(_cached_bag_job, jobs)]
        if bar is not None:
            bar.close()
        return concat_stores([load_store(folder) for folder, _ in results], root, owned)
    except BaseException:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
        raise


def _progress(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc='preparing frames', unit='bag')


def _advance(bar: Any, result: tuple[Path, bool]) -> tuple[Path, bool]:
    if bar is not None:
        bar.update(1)
        bar.set_postfix(last='decoded' if result[1] else 'cached')
    return result
