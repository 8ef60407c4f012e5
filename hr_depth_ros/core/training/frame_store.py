"""The frame store: frames of all bags at training resolution in files one row per frame (ROS-free).

:class:`FrameStore` maps them (NumPy memmaps, opened lazily in each DataLoader worker; the OS page
cache is the frame cache); :class:`RowFile` writes them row by row while bags are decoded (nothing
mapped, nothing kept in memory). Files: ``images.u8`` (H x W x 3 RGB), ``thumbs.f32`` (grey motion
thumbnails, :func:`thumbnail`) and, with ground-truth depth, ``depth.f32`` (metres, NaN invalid).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from hr_depth_ros.core.training.data_config import DataConfig

__all__ = ['FrameStore', 'RowFile', 'thumb_shape', 'thumbnail', 'new_cache_folder', 'THUMB_WIDTH']

THUMB_WIDTH = 64                    # motion check thumbnails: 64 px wide grey images


@dataclass
class FrameStore:
    """Frames of all bags at training resolution in memmaps under ``folder`` (see module docstring).

    ``segment[i]``: which bag frame ``i`` came from; ``stamps_ns[i]``: its header stamp; frames of a
    segment are stored in time order. ``K[s]``: 3x3 intrinsics of segment ``s`` at training size.
    ``poses[i]``: camera-to-odometry 4x4 pose from TF (NaN when unknown); ``tf_segments[s]``:
    whether segment ``s`` had a TF chain to its camera (``tf_notes[s]`` says why not).
    ``parts``: when set, segment ``s``'s files are in ``parts[s]`` (one store per bag, e.g. from
    the persistent frame cache, :mod:`.cache`) instead of ``folder``.
    Pickles without the arrays, so each DataLoader worker maps the files itself.
    """

    folder: Path
    width: int
    height: int
    stamps_ns: np.ndarray
    segment: np.ndarray
    K: list[np.ndarray]
    has_depth: np.ndarray
    bags: list[str]
    poses: np.ndarray | None = None
    tf_segments: list[bool] = field(default_factory=list)
    tf_notes: list[str] = field(default_factory=list)
    frames_without_tf: int = 0
    owns_folder: bool = True
    skipped: int = 0                            # undecodable image messages
    bag_skipped: list[int] = field(default_factory=list)  # undecodable image messages per bag
    notes: list[str] = field(default_factory=list)  # partial bags, skipped frames: one line each
    parts: list[Path] = field(default_factory=list)  # per-segment folders (default: all in folder)
    _arrays: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.stamps_ns)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state['_arrays'] = None
        return state

    def _open(self) -> dict[str, Any]:
        if self._arrays is None:
            h, w = self.height, self.width
            if self.parts:
                sizes = np.bincount(self.segment, minlength=len(self.parts)).tolist()
                folders = list(zip(self.parts, sizes))
            else:
                folders = [(self.folder, len(self))]
            files = {'images': ('images.u8', np.uint8, (h, w, 3)),
                     'thumbs': ('thumbs.f32', np.float32, thumb_shape(w, h))}
            if self.has_depth.any():
                files['depth'] = ('depth.f32', np.float32, (h, w))
            arrays = {key: _Rows([np.memmap(folder / name, dtype, 'r', shape=(n, *shape)) for folder, n in folders])
                      for key, (name, dtype, shape) in files.items()}
            self._arrays = {key: rows.arrays[0] if len(rows.arrays) == 1 else rows for key, rows in arrays.items()}
        return self._arrays

    def image(self, index: int) -> np.ndarray:
        """H x W x 3 uint8 RGB at training resolution."""
        return np.array(self._open()['images'][index])  # a writable copy

    def depth(self, index: int) -> np.ndarray | None:
        """Ground-truth depth (metres, NaN invalid) at training resolution, or None."""
        if not self.has_depth[index]:
            return None
        return np.array(self._open()['depth'][index])

    def has_poses(self, indices: Sequence[int]) -> bool:
        """Whether every frame of ``indices`` (e.g. a sample's three) has a TF pose."""
        return self.poses is not None and bool(np.isfinite(self.poses[list(indices)]).all())

    @property
    def thumbs(self) -> np.ndarray:
        return self._open()['thumbs']

    def close(self) -> None:
        """Drop the cache folder (when this store created it)."""
        self._arrays = None
        if self.owns_folder:
            shutil.rmtree(self.folder, ignore_errors=True)


class _Rows:
    """Rows of several arrays, indexed as one (the frames of per-bag stores)."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.starts = np.cumsum([0] + [len(a) for a in arrays])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        part = int(np.searchsorted(self.starts, index, side='right')) - 1
        return self.arrays[part][int(index) - int(self.starts[part])]


class RowFile:
    """A file of fixed-size rows written by index with ``pwrite``: nothing mapped or kept in memory."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any) -> None:
        self.path, self.dtype = path, np.dtype(dtype)
        self.row_bytes = int(np.prod(shape)) * self.dtype.itemsize
        self.stream = open(path, 'w+b')

    def __setitem__(self, index: int, row: np.ndarray) -> None:
        os.pwrite(self.stream.fileno(), np.ascontiguousarray(row, dtype=self.dtype).tobytes(), index * self.row_bytes)

    def reorder(self, first: int, index: np.ndarray) -> None:
        """Rows ``first, first + 1, ...`` := rows ``index``, one row in memory at a time."""
        fd, size = self.stream.fileno(), self.row_bytes
        os.ftruncate(fd, max(os.fstat(fd).st_size, (first + len(index)) * size))  # unwritten rows read as zeros
        with tempfile.TemporaryFile(dir=self.path.parent) as scratch:
            for i, source in enumerate(index):
                os.pwrite(scratch.fileno(), os.pread(fd, size, int(source) * size), i * size)
            for i in range(len(index)):
                os.pwrite(fd, os.pread(scratch.fileno(), size, i * size), (first + i) * size)

    def close(self, rows: int) -> None:
        """Set the file to exactly ``rows`` rows (unwritten ones read as zeros) and close it."""
        os.ftruncate(self.stream.fileno(), rows * self.row_bytes)
        self.stream.close()


def thumb_shape(width: int, height: int) -> tuple[int, int]:
    """Rows x columns of the motion thumbnail of a ``width`` x ``height`` frame."""
    return max(8, round(THUMB_WIDTH * height / width)), THUMB_WIDTH


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    height, width = thumb_shape(rgb.shape[1], rgb.shape[0])
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)


def new_cache_folder(config: DataConfig) -> Path:
    """A new, empty frame cache folder (``cache_prefix``*) in ``cache_dir`` (default: the system's temp)."""
    parent = Path(config.cache_dir).expanduser() if config.cache_dir else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=config.cache_prefix, dir=parent))
