"""INT8 post-training quantisation for the OpenVINO backend, and its calibration frames (ROS-free).

``precision='int8'`` quantises the converted OpenVINO model with NNCF (``nncf.quantize``:
8-bit weights and activations, MIXED preset, fast bias correction, the disparity head kept in
fp32; :func:`quantize_model`) from a few **calibration** frames, and compiles the result for the CPU. The frames set the activation
ranges, so they should look like what the camera will see:

- a folder of images (``png``, ``jpg``, ...; sorted by name, evenly spaced picks),
- a rosbag (rosbag2 sqlite3 / MCAP or ROS 1) and its image topic (``sensor_msgs/Image`` or
  ``CompressedImage``; may be left empty when the bag has one image topic), read with
  :mod:`hr_depth_ros.core.bags` and decoded by :mod:`hr_depth_ros.core.image_decoding`,
- by default (no source given) frames of the synthetic street renderer
  (:mod:`hr_depth_ros.core.synthetic`): a street scene, but not your camera, so the estimator
  logs that real frames are better.

Frames are resized to the network's input exactly as at inference (``image_decoding.resize_rgb``)
and hashed (:attr:`CalibrationSet.content_hash`): the quantised model's cache key
(:func:`hr_depth_ros.core.backends.openvino_cache_key`) holds that hash and the NNCF and
OpenVINO versions, so a different calibration set, or an upgrade, quantises again.

``nncf`` is imported only when a model is quantised (it takes seconds to import); a missing
``nncf`` raises :class:`NNCFMissing` (an ImportError naming the package and its pin).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hr_depth_ros.core.image_decoding import (DEFAULT_MAX_PIXELS, IMAGE_FILE_EXTENSIONS, compressed_to_rgb,
                                              image_to_rgb, read_image_file, resize_rgb)

LOGGER = logging.getLogger(__name__)
DEFAULT_CALIBRATION_FRAMES = 32
MAX_CALIBRATION_FRAMES = 1000
QUANTIZATION_FORMAT = 1  # bump when quantize_model's settings change what it writes
IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
SYNTHETIC_SEED = 0
SYNTHETIC_FRAME_STEP = 10  # frames 1 s (9 m of street) apart: varied views
REAL_FRAMES_HINT = ('real frames from your camera calibrate INT8 better: set calibration to a folder of '
                    'images or a bag (+ calibration_topic)')


class CalibrationError(ValueError):
    """The calibration source cannot give frames: missing, empty, unreadable, ambiguous topic."""


class NNCFMissing(ImportError):
    """``precision int8`` without the ``nncf`` package."""


def nncf_version() -> str | None:
    """The installed NNCF's version (from its metadata, without importing it), or None."""
    from importlib import metadata

    try:
        return metadata.version('nncf')
    except metadata.PackageNotFoundError:
        return None


def require_nncf() -> str:
    """NNCF's version; :class:`NNCFMissing` (naming the package) when it is not installed."""
    version = nncf_version()
    if version is None:
        raise NNCFMissing('precision int8 needs the nncf package (NNCF, OpenVINO post-training quantisation), '
                          'which is not installed: pip install nncf (the pinned version is in '
                          'requirements-core.txt), or use precision fp32')
    return version


@dataclass(frozen=True)
class CalibrationSource:
    """Where calibration frames come from: ``path`` a folder of images or a bag ('' = synthetic),
    ``topic`` the bag's image topic ('' = its only image topic), ``frames`` how many."""

    path: str = ''
    topic: str = ''
    frames: int = DEFAULT_CALIBRATION_FRAMES
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if not 1 <= int(self.frames) <= MAX_CALIBRATION_FRAMES:
            raise CalibrationError(f'calibration frames must be 1..{MAX_CALIBRATION_FRAMES}, got {self.frames}')
        if self.topic and not self.path:
            raise CalibrationError(f'calibration topic {self.topic!r} given without a calibration bag')


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration frames at the network's input size (``H x W x 3`` uint8 RGB) and where they came from."""

    images: tuple[np.ndarray, ...]
    description: str
    synthetic: bool = False

    def __post_init__(self) -> None:
        if not self.images:
            raise CalibrationError(f'no calibration frames ({self.description})')
        shapes = {image.shape for image in self.images}
        if len(shapes) != 1 or any(image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3
                                   for image in self.images):
            raise CalibrationError(f'calibration frames must be H x W x 3 uint8 RGB of one size, got {sorted(shapes)}')

    @property
    def content_hash(self) -> str:
        """SHA-256 (hex) of the frames' sizes and pixels, in order."""
        digest = hashlib.sha256()
        for image in self.images:
            digest.update(f'{image.shape}|'.encode())
            digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()

    def tensors(self) -> list[np.ndarray]:
        """The frames as the network's inputs: ``1 x 3 x H x W`` float32 in [0, 1] (as ``DepthEstimator.preprocess``)."""
        return [np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255.0)
                for image in self.images]


def calibration_set(images: Sequence[np.ndarray], width: int, height: int, description: str,
                    synthetic: bool = False) -> CalibrationSet:
    """A :class:`CalibrationSet` of RGB frames of any size, resized to ``width x height``."""
    return CalibrationSet(tuple(np.ascontiguousarray(resize_rgb(np.asarray(image), width, height))
                                for image in images), description, synthetic)


def _picks(total: int, count: int) -> list[int]:
    """``count`` evenly spaced indices of ``total`` items (all of them when fewer)."""
    if total <= count:
        return list(range(total))
    return sorted(set(np.linspace(0, total - 1, count).round().astype(int).tolist()))


def folder_images(folder: Path, count: int) -> list[np.ndarray]:
    """Up to ``count`` images of ``folder`` (sorted by name, evenly spaced) as RGB."""
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower().lstrip('.') in IMAGE_FILE_EXTENSIONS)
    if not files:
        raise CalibrationError(f'calibration folder {folder} has no images '
                               f'({", ".join(IMAGE_FILE_EXTENSIONS)})')
    try:
        return [read_image_file(files[i]) for i in _picks(len(files), count)]
    except ValueError as error:
        raise CalibrationError(f'calibration folder {folder}: {error}') from error


def bag_image_topic(bag: Path, topic: str) -> tuple[str, str]:
    """``(topic, message type)`` to calibrate from: ``topic`` (checked), or the bag's only image topic."""
    from hr_depth_ros.core.bags import canonical_topic, list_topics

    topics = list_topics(bag)
    images = sorted(name for name, kind in topics.items() if kind in IMAGE_TYPES)
    if topic:
        name = canonical_topic(topic)
        if topics.get(name) not in IMAGE_TYPES:
            raise CalibrationError(f'calibration bag {bag} has no image topic {name}; its image topics: '
                                   f'{", ".join(images) or "none"}')
        return name, topics[name]
    if len(images) != 1:
        raise CalibrationError(f'calibration bag {bag} has {len(images)} image topics '
                               f'({", ".join(images) or "none"}): set calibration_topic')
    return images[0], topics[images[0]]


def bag_images(bag: Path, topic: str, count: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[list[np.ndarray], str]:
    """Up to ``count`` evenly spaced frames of ``topic`` in ``bag`` as RGB, and the topic used."""
    from hr_depth_ros.core.bags import read_messages, topic_counts

    topic, kind = bag_image_topic(bag, topic)
    decode = compressed_to_rgb if kind.endswith('CompressedImage') else image_to_rgb
    wanted = set(_picks(topic_counts(bag)[topic], count))
    last = max(wanted, default=-1)
    images = []
    for index, (_, _, _, msg) in enumerate(read_messages(bag, [topic])):
        if index in wanted:
            try:
                rgb = decode(msg, max_pixels)
            except ValueError as error:  # UnsupportedEncoding (e.g. a depth topic), MalformedImage
                raise CalibrationError(f'calibration bag {bag}, topic {topic}, message {index}: {error}') from error
            images.append(np.array(rgb, copy=True))
        if index >= last:
            break
    if not images:
        raise CalibrationError(f'calibration bag {bag}: topic {topic} has no messages')
    return images, topic


def synthetic_images(width: int, height: int, count: int) -> list[np.ndarray]:
    """``count`` frames of the synthetic street drive (seed 0, 1 s apart, mild noise and exposure changes)."""
    from hr_depth_ros.core.synthetic import SyntheticDrive

    drive = SyntheticDrive(width=width, height=height, seed=SYNTHETIC_SEED, noise=2.0, exposure_jitter=0.1)
    return [drive.frame(i * SYNTHETIC_FRAME_STEP).rgb for i in range(count)]


def load_calibration(source: CalibrationSource, width: int, height: int) -> CalibrationSet:
    """The frames of ``source`` at the network's ``width x height``; CalibrationError when it gives none."""
    if not source.path:
        return calibration_set(synthetic_images(width, height, source.frames), width, height,
                               f'{source.frames} synthetic street frames', synthetic=True)
    path = Path(source.path).expanduser()
    if not path.exists():
        raise CalibrationError(f'calibration source {path} does not exist (a folder of images or a bag)')
    from hr_depth_ros.core.bags import BagError, is_bag

    if path.is_dir() and not is_bag(path):
        images = folder_images(path, source.frames)
        return calibration_set(images, width, height, f'{len(images)} images of {path}')

    try:
        images, topic = bag_images(path, source.topic, source.frames, source.max_pixels)
    except BagError as error:
        raise CalibrationError(f'calibration bag: {error}') from error
    return calibration_set(images, width, height, f'{len(images)} frames of {topic} in {path}')


def output_convolutions(model: Any) -> list[str]:
    """Names of the convolutions that produce the model's outputs (through bias adds and activations)."""
    names = []
    for output in model.outputs:
        node = output.get_node()
        while node.get_type_name() != 'Convolution' and node.get_input_size() > 0:
            node = node.input_value(0).get_node()
        if node.get_type_name() == 'Convolution':
            names.append(node.get_friendly_name())
    return names


def quantize_model(model: Any, calibration: CalibrationSet) -> Any:
    """``nncf.quantize`` of an ``openvino.Model`` on the calibration frames (progress bars kept off the log).

    Settings (measured on the shipped Lite-HR-Depth checkpoint, 40 held-out synthetic frames,
    benchmarks/RESULTS.md): the MIXED preset (symmetric weights, asymmetric activations: the
    decoder's activations are far from zero-centred) and the disparity head (the convolution
    before the output sigmoid) kept in fp32 bring the median per-pixel depth difference to fp32
    from 5.8 % (NNCF's default preset) to 1.5 %, at the same speed (HR-Depth 1024x320: 2.0x
    fp32 either way on an AVX2 CPU).
    """
    require_nncf()
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's rich progress bars and banner
        import nncf

        nncf.set_log_level(logging.WARNING)
        inputs = calibration.tensors()
        heads = output_convolutions(model)
        return nncf.quantize(model, nncf.Dataset(inputs), subset_size=len(inputs),
                             preset=nncf.QuantizationPreset.MIXED,
                             ignored_scope=nncf.IgnoredScope(names=heads) if heads else None)
