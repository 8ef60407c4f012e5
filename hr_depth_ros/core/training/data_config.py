"""What to read from which bags (:class:`DataConfig`), and whether the bags have it (ROS-free).

:func:`check_bags` expands ``config.bags`` once (:mod:`.sources`), chooses the ``auto`` topics from the
first bag (:func:`resolve_topics`) and opens each bag once (:func:`hr_depth_ros.core.bags.inspect_bag`) to
check its topics and count its frames before anything is decoded; the :class:`CheckedBag` results travel
with the bag to whoever decodes it (:mod:`.extraction`, :mod:`.cache`), so no bag is listed or checked
twice.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from hr_depth_ros.core.bags import BagError, canonical_topic, inspect_bag, list_topics
from hr_depth_ros.core.image_decoding import DEFAULT_MAX_PIXELS
from hr_depth_ros.core.tf_poses import DEFAULT_MAX_TF_GAP_S
from hr_depth_ros.core.training.sources import expand_bags

__all__ = ['DataError', 'DataConfig', 'CheckedBag', 'check_bags', 'check_topics', 'config_bags', 'resolve_topics',
           'is_depth_topic', 'POSE_SOURCES', 'AUTO', 'InputErrors']

IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
TF_TYPE = 'tf2_msgs/msg/TFMessage'
POSE_SOURCES = ('auto', 'tf', 'net', 'vo')
AUTO = 'auto'                       # image / camera_info topic chosen from the bag (resolve_topics)


class DataError(ValueError):
    """The bags cannot provide training data (missing topics, no intrinsics, too few samples)."""


@dataclass
class DataConfig:
    """What to read from which bags and how to cut it into samples."""

    bags: Sequence[str | Path]
    width: int = 640
    height: int = 192
    image_topic: str = AUTO                     # AUTO: the bags' only image topic (see resolve_topics)
    camera_info_topic: str | None = AUTO        # AUTO: the camera_info beside the images; None: intrinsics
    gt_depth_topic: str | None = None
    gt_depth_tolerance: float = 0.02            # seconds between a depth image's stamp and its frame's
    intrinsics: Sequence[float] | None = None   # fx, fy, cx, cy in pixels of the bag's images
    frame_stride: int = 1
    max_gap_factor: float = 2.5
    min_motion: float = 0.5                     # mean |grey difference| (0-255) on thumbnails
    val_fraction: float = 0.1
    val_block_frames: int = 50
    cache_dir: str | Path | None = None         # parent of the frame cache (default: system temp)
    pose_source: str = 'auto'                   # 'tf' (odometry), 'net' (pose network), 'auto': tf if every bag has it
    odom_frame: str = 'odom'
    camera_frame: str | None = None             # default: the images' header.frame_id
    tf_topic: str = '/tf'
    tf_static_topic: str = '/tf_static'
    max_tf_gap: float = DEFAULT_MAX_TF_GAP_S    # seconds; longer TF silences give no pose
    cache_prefix: str = 'hr_depth_frames-'      # name prefix of the cache folder
    max_pixels: int = DEFAULT_MAX_PIXELS        # larger images are skipped as malformed
    min_decodable_fraction: float = 0.5         # refuse a bag when fewer of its frames decode
    frame_cache: str | Path | None = None       # persistent per-bag frame cache folder (see .cache)
    prepare_workers: int = 0                    # processes decoding bags in parallel (0: one per bag, <= CPUs, 8)
    progress: bool = False                      # a progress bar while preparing

    def __post_init__(self) -> None:  # bags list topics in absolute form (bags.canonical_topic)
        for name in ('image_topic', 'camera_info_topic', 'gt_depth_topic', 'tf_topic', 'tf_static_topic'):
            if getattr(self, name) and getattr(self, name) != AUTO:
                setattr(self, name, canonical_topic(getattr(self, name)))


def _describe_topics(topics: dict[str, str]) -> str:
    return ', '.join(f'{t} ({ty})' for t, ty in sorted(topics.items())) or 'none'


@dataclass(frozen=True)
class CheckedBag:
    """One bag whose topics passed :func:`check_topics`: what its decoder needs to know up front."""

    path: Path
    topics: dict[str, str]      # topic -> message type
    has_info: bool              # camera_info is read from the bag (else the given intrinsics)
    frames: int                 # messages on the image topic (of a partial bag: the readable ones)


def is_depth_topic(topic: str) -> bool:
    """Whether a topic's name says it carries depth images (a name part containing ``depth``:
    ``/camera/depth/image_raw``, ``/camera/depth_registered/image``, ``/aligned_depth_to_color/image_raw``,
    ``.../compressedDepth``)."""
    return any('depth' in part.lower() for part in topic.split('/'))


def _only(names: list[str], what: str, bag: Path, topics: dict[str, str], hint: str) -> str:
    if len(names) != 1:
        raise DataError(f'bag {bag} has {len(names)} {what} topics ({", ".join(names) or "none"}); {hint}; its '
                        f'topics are: {_describe_topics(topics)}')
    return names[0]


def resolve_topics(config: DataConfig, bag: Path | None = None,
                   topics: dict[str, str] | None = None) -> tuple[DataConfig, list[str]]:
    """``config`` with its ``auto`` topics chosen from the first bag, and one line per choice.

    ``bag`` / ``topics``: the first bag and its topics when the caller has them (else read here).

    Image: the only Image / CompressedImage topic that is not the depth topic (``/camera/image_raw``
    when it is one of several). camera_info: ``camera_info`` beside the image topic (``/a/image_raw``
    and ``/a/image_raw/compressed`` -> ``/a/camera_info``), else the only CameraInfo topic, else none
    (intrinsics must be given). DataError naming the candidates when the choice is ambiguous.
    """
    if AUTO not in (config.image_topic, config.camera_info_topic):
        return config, []
    if topics is None:
        bag = config_bags(config)[0]
        topics = list_topics(bag, partial=True)
    chosen: dict[str, Any] = {}
    lines = []
    if config.image_topic == AUTO:
        images = sorted(t for t, kind in topics.items() if kind in (IMAGE_TYPE, COMPRESSED_TYPE)
                        and t != config.gt_depth_topic and not is_depth_topic(t))
        default = '/camera/image_raw'
        chosen['image_topic'] = default if default in images else _only(
            images, 'image', bag, topics, 'give the image topic')
        lines.append(f'image topic {chosen["image_topic"]} ({topics[chosen["image_topic"]]}): the bag\'s '
                     + ('default' if len(images) > 1 else 'only') + ' image topic (set image_topic to choose)')
    if config.camera_info_topic == AUTO:
        image = chosen.get('image_topic', config.image_topic)
        base = image[:-len('/compressed')] if image.endswith('/compressed') else image
        beside = base.rsplit('/', 1)[0] + '/camera_info'
        infos = sorted(t for t, kind in topics.items() if kind == CAMERA_INFO_TYPE)
        if topics.get(beside) == CAMERA_INFO_TYPE:
            chosen['camera_info_topic'] = beside
        elif len(infos) == 1:
            chosen['camera_info_topic'] = infos[0]
        elif not infos and config.intrinsics is not None:
            chosen['camera_info_topic'] = None
        else:
            chosen['camera_info_topic'] = _only(infos, 'CameraInfo', bag, topics, 'give the camera_info topic '
                                                'or the intrinsics')
        lines.append(f'camera_info topic {chosen["camera_info_topic"]} (set camera_info_topic to choose)'
                     if chosen['camera_info_topic'] else 'no camera_info topic: using the given intrinsics')
    return replace(config, **chosen), lines


def check_topics(bag: Path, config: DataConfig,
                 inspected: tuple[dict[str, str], dict[str, int]] | None = None) -> CheckedBag:
    """Open ``bag`` once (unless ``inspected``: its :func:`inspect_bag`) and check its topics against ``config``;
    DataError naming what is missing."""
    topics, counts = inspected if inspected is not None else inspect_bag(bag, partial=True)
    image_type = topics.get(config.image_topic)
    if image_type is None:
        raise DataError(f'bag {bag} has no image topic {config.image_topic}; its topics are: '
                        f'{_describe_topics(topics)}')
    if image_type not in (IMAGE_TYPE, COMPRESSED_TYPE):
        raise DataError(f'bag {bag}: {config.image_topic} is {image_type}, not sensor_msgs/Image or '
                        f'sensor_msgs/CompressedImage; its topics are: {_describe_topics(topics)}')
    if config.gt_depth_topic and topics.get(config.gt_depth_topic) not in (IMAGE_TYPE, COMPRESSED_TYPE):
        raise DataError(f'bag {bag} has no depth topic {config.gt_depth_topic} (sensor_msgs/Image, or '
                        f'CompressedImage of the compressedDepth transport); '
                        f'its topics are: {_describe_topics(topics)}')
    info_type = topics.get(config.camera_info_topic) if config.camera_info_topic else None
    if info_type is not None and info_type != CAMERA_INFO_TYPE:
        raise DataError(f'bag {bag}: {config.camera_info_topic} is {info_type}, not sensor_msgs/CameraInfo')
    if config.pose_source not in POSE_SOURCES:
        raise DataError(f'pose source must be one of {", ".join(POSE_SOURCES)}, got {config.pose_source!r}')
    if config.pose_source == 'tf' and topics.get(config.tf_topic) != TF_TYPE:
        raise DataError(f'bag {bag} has no {TF_TYPE} topic {config.tf_topic} for poses from TF (pose source '
                        f'tf); its topics are: {_describe_topics(topics)}; use pose source vo (two-view geometry) '
                        'without odometry')
    if info_type is None and config.intrinsics is None:
        raise DataError(f'bag {bag} has no camera_info topic {config.camera_info_topic} and no intrinsics '
                        f'(fx, fy, cx, cy) were given; its topics are: {_describe_topics(topics)}')
    return CheckedBag(bag, topics, info_type is not None, counts.get(config.image_topic, 0))


def config_bags(config: DataConfig) -> list[Path]:
    """The bags ``config.bags`` names (folders and patterns expanded); DataError when none."""
    if not config.bags:
        raise DataError('no bags given')
    try:
        return expand_bags(config.bags)
    except ValueError as error:
        raise DataError(str(error)) from error


def check_bags(config: DataConfig) -> tuple[DataConfig, list[CheckedBag], list[str]]:
    """(``config`` with its bags expanded and its ``auto`` topics chosen, every bag checked, one line per
    topic choice): the bags are expanded once and each is opened once (:func:`check_topics`)."""
    bags = config_bags(config)
    choices: list[str] = []
    first = None
    if AUTO in (config.image_topic, config.camera_info_topic):
        first = inspect_bag(bags[0], partial=True)
        config, choices = resolve_topics(config, bags[0], first[0])
    config = replace(config, bags=bags)
    checked = [check_topics(bag, config, first if i == 0 else None) for i, bag in enumerate(bags)]
    return config, checked, choices


# Kept for callers that catch both kinds of input error at once.
InputErrors = (BagError, DataError)
