"""Self-supervised fine-tuning loop (monodepth2 monocular training, as HR-Depth trains), ROS-free.

Recipe (monodepth2 defaults unless noted): depth net + separate ResNet-18 pose net on two stacked
frames (frames 0, -1, +1; the pose of frame -1 is predicted from (-1, 0) and inverted), Adam with
lr 1e-4 (the HR-Depth README's correction of the paper's 1e-3), StepLR every 15 epochs x 0.1,
depth range 0.1-100, 4 scales upsampled to full resolution (``loss_scales``), losses from :mod:`.losses`.

Camera motion comes from one of two places (``pose_source``):

- ``tf``: the robot's odometry recorded in the bag (:mod:`hr_depth_ros.core.tf_poses`). The poses are
  right and metric, so the depth network learns metres: the factor between the start
  checkpoint's depth units and metres is found first by a photometric scale search
  (:mod:`.scale`) and kept as ``metric_scale`` (depth = metric_scale x disp_to_depth(disp)); the
  checkpoint records it and the depth node and ``predict`` publish metres with it.
- ``net``: the pose network, in its own Adam parameter group (``pose_lr``, at least 1e-4), with
  pose-only warm-up steps when it starts from scratch beside a trained depth network, and the
  depth network anchored to the start model (``anchor_weight``: L1 toward the ``--init``
  model's disparity) so that it does not bend to the pose network's errors.

Model selection is honest: ``best/`` is chosen by the ground-truth depth error when a depth
topic is given, else by the photometric loss under TF poses when the bag has them (a depth
network that bends to fit wrong predicted poses lowers its own loss, not this one), else by the
validation loss; the start model is scored too (step 0), so ``best/`` is never worse than the
start by that measure.

Under ``torchrun`` (:mod:`.distributed`) every rank runs this loop on its share of the training
samples with the step wrapped in one DistributedDataParallel; rank 0 alone prepares the output
folder, searches the metric scale, validates (results broadcast) and writes checkpoints, metrics
and progress. ``samples_seen`` counts the training samples of all ranks.

Checkpoints go through :func:`hr_depth_ros.core.checkpoint.save_depth_checkpoint` (atomic):
``OUTPUT/latest`` every ``save_every`` steps and at the end, ``OUTPUT/best`` at the lowest
validation loss; each holds the authors' ``encoder.pth`` / ``depth.pth``, ``hr_depth_ros.json``
metadata (arch, resolution, intrinsics, bags, topics, config, step, epoch, metrics) and ``pose_encoder.pth``,
``pose.pth``, ``adam.pth`` (optimiser, scheduler, step, epoch, AMP scaler, RNG) for ``resume``.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from hr_depth_ros.core.checkpoint import (METADATA_FILE, OPTIMIZER_FILE, POSE_DECODER_FILE, POSE_ENCODER_FILE,
                                          POSE_FILES, CheckpointError, check_metric_scale, load_depth_checkpoint,
                                          load_extra_state, metric_scale_of, read_metadata, save_depth_checkpoint)
from hr_depth_ros.core.evaluation import evaluate_depth, mean_errors
from hr_depth_ros.core.geometry import disp_to_depth, normalized_intrinsics, transformation_from_parameters, warp_image
from hr_depth_ros.core.image_decoding import DEFAULT_MAX_PIXELS
from hr_depth_ros.core.inference import select_device
from hr_depth_ros.core.networks import ARCHITECTURES, build_depth_model, build_pose_model
from hr_depth_ros.core.tf_poses import DEFAULT_MAX_TF_GAP_S
from hr_depth_ros.core.training.distributed import SINGLE, Distributed, data_parallel, from_environment, train_sampler
from hr_depth_ros.core.training.data import PreparedData, prepare_data
from hr_depth_ros.core.training.data_config import POSE_SOURCES, DataConfig
from hr_depth_ros.core.training.dataset import TripletDataset
from hr_depth_ros.core.training.losses import (IDENTITY_NOISE_STD, SMOOTHNESS_WEIGHT, depth_label_loss,
                                               distillation_loss, min_reprojection, photometric_error, smoothness_loss,
                                               upsample_to)
from hr_depth_ros.core.training.options import check_limits, option
from hr_depth_ros.core.training.run_log import RunLog
from hr_depth_ros.core.training.scale import ScaleSearch, depth_headroom, median_pixel_scale, search_scale
from hr_depth_ros.core.training.output import (BEST, FRAME_CACHE_PREFIX, LATEST, output_lock, prepare_output,
                                               remove_previous_run, removed_if_left_empty)

__all__ = ['TrainingConfig', 'TrainingError', 'Trainer', 'train', 'METRICS_COLUMNS']

LOGGER = logging.getLogger(__name__)
SCALES = (0, 1, 2, 3)
SOURCE_OFFSETS = (-1, 1)
METRICS_COLUMNS = ('step', 'epoch', 'split', 'loss', 'photometric', 'loss_tf', 'lr', 'samples_per_s', 'abs_rel',
                   'rmse', 'a1', 'abs_rel_metric', 'scale_ratio', 'selected', 'selected_by')
MAX_BAD_STEPS = 20  # consecutive non-finite losses before giving up
MIN_LOSS_SCALE = 1.0  # AMP: GradScaler starts at 65536; below 1 the gradients overflowed in nearly every step
MIN_POSE_LR = 1e-4  # measured: a fresh pose network barely learns below this
AUTO_POSE_WARMUP_STEPS = 160  # measured: translation converges in 120-160 steps at 1e-4
AUTO_ANCHOR_WEIGHT = 1.0  # measured (benchmarks/RESULTS.md): pose-network fine-tunes stop damaging the start model
SCALE_SEARCH_SAMPLES = 24  # training samples the metric scale search looks at
SCALE_REFINE_SPREAD = 0.5  # the re-estimation while training: inverse scales within +-50 % of the current one
DEFAULT_STEPS = 1000  # run length when neither steps nor epochs is given (command line, node)


class TrainingError(RuntimeError):
    """Fine-tuning cannot start or continue (bad settings, diverged, nothing to resume)."""


def freeze_batch_norm(module: nn.Module) -> None:
    """Put every batch-norm layer of ``module`` in eval mode (running statistics fixed)."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()


@dataclass
class TrainingConfig:
    """Every setting of a fine-tuning run (recorded in the checkpoint metadata).

    Each field is one row of the option table (:mod:`.options`): the ``finetune`` command line, the
    node's parameters, config/finetune.yaml and the README table are generated from it.
    """

    bags: Sequence[str] = option(
        help='rosbag2 folder, ROS 1 .bag, a folder holding bags (searched recursively) or a glob pattern (quoted); '
             'repeatable', type=str, nargs='+', cli='--bag')
    output: str = option(help='output folder: latest/, best/ checkpoints and metrics.csv', type=str, unset='',
                         ros='output_dir')
    arch: str = option('lite_hr_depth', help='network architecture', choices=ARCHITECTURES)
    width: int = option(640, min_value=64, help='training width (multiple of 32)')
    height: int = option(192, min_value=32, help='training height (multiple of 32)')
    image_topic: str = option('auto', help="sensor_msgs/Image or CompressedImage topic in the bags (auto: the bag's "
                                           'only image topic besides the depth topic, logged)')
    camera_info_topic: str | None = option('auto', unset='',
                                           help='sensor_msgs/CameraInfo topic (auto: the one beside the image topic, '
                                                'else the only one; empty: use intrinsics); distorted images are '
                                                'rectified')
    gt_depth_topic: str | None = option(None, type=str, unset='',
                                        help='ground-truth depth topic (REP 118: 16UC1 mm or 32FC1 m, 0/NaN invalid; '
                                             'an Image or a compressedDepth CompressedImage; matched by stamp) for '
                                             'validation metrics and choosing best/')
    intrinsics: Sequence[float] | None = option(None, type=float, nargs=4, metavar=('FX', 'FY', 'CX', 'CY'),
                                                help='pixel intrinsics fx, fy, cx, cy of the bag images when the '
                                                     'bags have no camera_info')
    init: str | None = option(None, type=str, unset='', ros='init_weights',
                              help="checkpoint folder to start from (authors', monodepth2's or ours; default: "
                                   'random initialisation)')
    encoder_weights: str | None = option(None, type=str, unset='', help='local ImageNet state dict for the encoders')
    teacher: str | None = option(None, type=str, unset='', help='checkpoint folder of a distillation teacher')
    distill_weight: float = option(1.0, min_value=0.0, help='weight of the distillation loss')
    gt_depth_weight: float = option(0.0, min_value=0.0,
                                    help='weight of the ground-truth depth (--gt-depth-topic) as a label on the '
                                         'training frames where it has data (log-L1, metres; needs TF poses); 0: '
                                         'the depth sensor only scores validation')
    # An L1 pull of the disparity (every scale) toward what the start checkpoint (--init) gives for
    # the same frame. With poses from the pose network the depth network otherwise bends to the
    # pose errors and gets worse; anchored, short fine-tunes improve it (benchmarks/RESULTS.md).
    anchor_weight: float | None = option(
        None, type=float, min_value=0.0, unset=-1.0,
        help=f'weight of an L1 pull of the disparity toward the start checkpoint\'s (--init) on the same frame '
             f'(default: {AUTO_ANCHOR_WEIGHT:g} when poses come from the pose network and --init is given, else 0)')
    steps: int | None = option(None, type=int, min_value=1, exclusive='length', fallback=DEFAULT_STEPS,
                               help=f'total optimiser steps (default {DEFAULT_STEPS}; not with epochs)')
    epochs: int | None = option(None, type=int, min_value=1, exclusive='length', unset=0,
                                help='epochs to train (instead of steps)')
    batch_size: int = option(12, min_value=1, help='samples per optimiser step (per process under torchrun)')
    lr: float = option(1e-4, help='Adam learning rate')
    scheduler_step_epochs: int = option(15, min_value=1, help='the learning rate drops every N epochs (StepLR)')
    scheduler_gamma: float = option(0.1, min_value=0.0, help='factor of each learning-rate drop')
    min_depth: float = option(0.1, help='depth of the largest disparity')
    max_depth: float = option(100.0, help='depth of the smallest disparity')
    smoothness_weight: float = option(SMOOTHNESS_WEIGHT, min_value=0.0, help='weight of the edge-aware smoothness loss')
    loss_scales: int = option(len(SCALES), min_value=1, max_value=len(SCALES),
                              help='decoder scales the loss is computed at, from the full-resolution one (Monodepth2: '
                                   '4; 1 takes ~0.6x the time per step on a CPU)')
    freeze_encoder_epochs: int = option(0, min_value=0, help='keep the encoder frozen for the first N epochs')
    # Steps at the start during which only the pose network learns (depth networks frozen, in eval
    # mode): for depth checkpoints that come without their pose network (the authors' releases),
    # so that a random pose net does not push the depth net away from its weights at first.
    # None: AUTO_POSE_WARMUP_STEPS when poses come from a fresh pose network beside an --init depth
    # network, else 0.
    pose_warmup_steps: int | None = option(
        None, type=int, min_value=0, unset=-1, help=f'first N steps train only the pose network (default: '
                                       f'{AUTO_POSE_WARMUP_STEPS} when the start checkpoint has no pose network and '
                                       'poses come from it, else 0)')
    pose_source: str = option('auto', choices=POSE_SOURCES,
                              help="camera motion from the bags' TF (odometry; gives metric depth), the two-view "
                                   'geometry of the images (vo: feature tracks, essential matrix, translation length '
                                   'from the start depth network) or the pose network (net); auto: tf when every bag '
                                   'has a TF chain from odom_frame to the camera, else vo')
    odom_frame: str = option('odom', help='fixed frame of the odometry in TF')
    camera_frame: str | None = option(None, type=str, unset='',
                                      help="camera's optical frame in TF (default: the images' header.frame_id)")
    max_tf_gap: float = option(DEFAULT_MAX_TF_GAP_S,
                               help='seconds; frames inside a longer TF silence get no pose and are dropped')
    pose_lr: float | None = option(None, type=float, unset=0.0,
                                   help=f'pose network learning rate (default: max(lr, {MIN_POSE_LR}))')
    metric_scale: float | None = option(None, type=float, unset=0.0,
                                        help='with TF poses: metres per depth unit of the start checkpoint (default: '
                                             'its recorded one, else found by a photometric scale search)')
    # Keep the depth encoder's batch-norm statistics fixed (BN layers in eval mode): for short
    # fine-tuning runs with small batches from a trained checkpoint, where re-estimating them on a
    # few augmented batches moves the network more than the gradients do.
    freeze_bn: bool = option(False, help="keep the depth encoder's batch-norm statistics fixed (short runs from a "
                                         'trained model)')
    device: str = option('auto', help='auto, cuda, cuda:N or cpu')
    amp: bool = option(True, help='mixed precision on CUDA', cli_help='disable mixed precision on CUDA')
    num_workers: int = option(0, min_value=0, help='DataLoader worker processes')
    seed: int = option(0, min_value=0, help='random seed')
    deterministic: bool = option(False, help='deterministic algorithms (slower)')
    val_every: int = option(0, min_value=0, help='validate every N steps (0: every epoch)')
    save_every: int = option(500, min_value=1, help='save OUTPUT/latest every N steps')
    log_every: int = option(10, min_value=1, help='log a progress line every N steps')
    max_val_samples: int = option(200, min_value=0, help='validation samples looked at, at most')
    resume: bool = option(False, help='continue from OUTPUT/latest')
    overwrite: bool = option(False, help='replace a previous run in OUTPUT (latest/, best/, metrics.csv); without '
                                         'it, refused')
    max_pixels: int = option(DEFAULT_MAX_PIXELS, min_value=1,
                             help='bag images larger than this (width x height) are skipped as malformed')
    frame_stride: int = option(1, min_value=1, help='neighbour frames are this many frames away')
    max_gap_factor: float = option(2.5, min_value=0.0,
                                   help='a time gap longer than this many median frame intervals splits a sequence')
    min_motion: float = option(0.5, min_value=0.0,
                               help='drop samples whose thumbnails differ less than this (grey levels)')
    val_fraction: float = option(0.1, min_value=0.0, max_value=1.0,
                                 help='fraction of each bag held out (contiguous time blocks) for validation')
    val_block_frames: int = option(50, min_value=1, help='frames per held-out validation block')
    augment: bool = option(True, help='colour and flip augmentation of training samples',
                           cli_help='no colour and flip augmentation')
    progress_bar: bool | None = option(None, type=bool, internal='follows the terminal: a bar when stderr is a '
                                                                 'TTY; the node reports on ~/progress instead')
    frame_cache: str | None = option(None, type=str, unset='',
                                     help='folder of decoded frames at training resolution, one entry per bag and '
                                          'settings, reused by later runs and by the other ranks (default: decoded '
                                          'per run into OUTPUT)')
    prepare_workers: int = option(0, min_value=0,
                                  help='processes decoding bags in parallel (0: one per bag, at most the CPUs and 8)')

    def data_config(self) -> DataConfig:
        return DataConfig(bags=list(self.bags), width=self.width, height=self.height, image_topic=self.image_topic,
                          camera_info_topic=self.camera_info_topic, gt_depth_topic=self.gt_depth_topic,
                          intrinsics=self.intrinsics, frame_stride=self.frame_stride,
                          max_gap_factor=self.max_gap_factor, min_motion=self.min_motion,
                          val_fraction=self.val_fraction, val_block_frames=self.val_block_frames,
                          pose_source=self.pose_source, odom_frame=self.odom_frame, camera_frame=self.camera_frame,
                          max_tf_gap=self.max_tf_gap,
                          cache_dir=Path(self.output).expanduser(), cache_prefix=FRAME_CACHE_PREFIX,
                          max_pixels=self.max_pixels, frame_cache=self.frame_cache,
                          prepare_workers=self.prepare_workers,
                          progress=sys.stderr.isatty() if self.progress_bar is None else self.progress_bar)

    def validate(self) -> None:
        """TrainingError naming the first bad setting: what the option table declares (choices, limits,
        list lengths: :func:`~.options.check_limits`), then the rules across settings it cannot say."""
        try:
            check_limits(self)
        except ValueError as error:
            raise TrainingError(str(error)) from None
        if (self.steps is None) == (self.epochs is None):
            raise TrainingError('give exactly one of steps or epochs')
        if self.width % 32 or self.height % 32:
            raise TrainingError(f'width and height must be multiples of 32, got {self.width}x{self.height}')
        if self.lr <= 0:
            raise TrainingError(f'lr must be > 0, got {self.lr}')
        if not 0 < self.min_depth < self.max_depth:
            raise TrainingError(f'need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}')
        output = Path(self.output).expanduser()
        if output.exists() and not output.is_dir():
            raise TrainingError(f'output {output} exists and is not a directory')
        if self.resume and not (output / LATEST).is_dir():
            raise TrainingError(f'cannot resume: {output / LATEST} does not exist')
        for name in ('init', 'teacher'):
            value = getattr(self, name)
            if value and not Path(value).expanduser().is_dir():
                raise TrainingError(f'{name} checkpoint folder {value} does not exist')
        for name in ('pose_lr', 'max_tf_gap'):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise TrainingError(f'{name} must be a positive number, got {value}')
        if self.gt_depth_weight and not self.gt_depth_topic:
            raise TrainingError('gt_depth_weight needs a ground-truth depth topic (gt_depth_topic)')
        if self.metric_scale is not None:
            try:
                check_metric_scale(self.metric_scale, 'option metric_scale (--metric-scale)')
            except ValueError as error:
                raise TrainingError(str(error)) from None
        try:
            select_device(self.device)  # an explicit GPU that is not there: refused, with the reason
        except ValueError as error:
            raise TrainingError(str(error)) from None


Callback = Callable[[dict[str, Any]], None]


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic  # fixed-size batches: cuDNN times its kernels once
    if deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # cuBLAS's deterministic mode (README)
        torch.use_deterministic_algorithms(True, warn_only=True)


def check_loss_scale(scaler: torch.amp.GradScaler | None) -> None:
    """TrainingError when mixed precision's loss scale fell below :data:`MIN_LOSS_SCALE`. GradScaler skips
    every step whose gradients are inf/NaN and halves the scale: the model stops learning while the loss
    stays finite, so the non-finite-loss check never fires."""
    if scaler is not None and scaler.is_enabled() and scaler.get_scale() < MIN_LOSS_SCALE:
        raise TrainingError(f'mixed precision: the gradients were inf/NaN in nearly every recent step (loss scale '
                            f'{scaler.get_scale():.3g}); those steps were skipped, the model stopped learning: run '
                            'with --no-amp (amp: false); the last good checkpoint is kept')


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """PyTorch's CPU random generator state and, on CUDA, ``device``'s (auto-mask noise is drawn there)."""
    state = {'torch_rng': torch.get_rng_state()}
    if device.type == 'cuda':
        state['cuda_rng'] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved (the CUDA state only on CUDA)."""
    if 'torch_rng' in state:
        torch.set_rng_state(state['torch_rng'])
    if 'cuda_rng' in state and device.type == 'cuda':
        torch.cuda.set_rng_state(state['cuda_rng'], device)


def _finite(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters())


@dataclass
class _DisparityTarget:
    """A frozen depth network whose disparity the trained one is pulled toward (L1, every scale):
    a distillation ``teacher`` or the start model as ``anchor``."""

    name: str
    encoder: torch.nn.Module
    decoder: torch.nn.Module
    height: int
    width: int
    weight: float

    def disparity(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.decoder(self.encoder(upsample_to(images, self.height, self.width)))[('disp', 0)].float()


@dataclass
class _Models:
    encoder: torch.nn.Module
    decoder: torch.nn.Module
    pose_encoder: torch.nn.Module
    pose_decoder: torch.nn.Module
    targets: list[_DisparityTarget] = field(default_factory=list)
    pose_from_scratch: bool = True          # no pose network came with the start checkpoint
    init_metric_scale: float | None = None  # the start checkpoint's metric scale, if it has one

    def trainable(self) -> list[torch.nn.Module]:
        return [self.encoder, self.decoder, self.pose_encoder, self.pose_decoder]


def reprojection_loss(color: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, transforms: dict[int, torch.Tensor],
                      identity: list[torch.Tensor] | None, noise_std: float = IDENTITY_NOISE_STD,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel minimum reprojection error (and auto-mask) of the target ``color[:, 0]`` (monodepth2).

    ``color``: B x 3 x 3 x H x W frames in :data:`FRAME_OFFSETS` order; ``depth``: B x 1 x H x W;
    ``transforms``: ``T_target_to_source`` per source offset; ``identity``: the un-warped errors.
    """
    target = color[:, 0].float()
    reprojection = [photometric_error(warp_image(color[:, j].float(), depth, K, transforms[offset]), target)
                    for j, offset in enumerate(SOURCE_OFFSETS, start=1)]
    return min_reprojection(reprojection, identity, noise_std=noise_std)


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    best_val: float = math.inf
    last_val: dict[str, float] = field(default_factory=dict)
    skipped_steps: int = 0
    bad_in_a_row: int = 0                   # consecutive non-finite losses (MAX_BAD_STEPS)
    pose_source: str = 'net'                # resolved: 'tf' or 'net'
    metric_scale: float = 1.0               # depth = metric_scale x disp_to_depth(disp)
    metric: bool = False                    # whether that depth is in metres
    selected_by: str = 'loss'               # what best/ is chosen by
    scale_search: dict[str, Any] = field(default_factory=dict)
    samples_seen: int = 0                   # training samples consumed, all ranks together


class Trainer:
    """One fine-tuning run: ``Trainer(config, callback).run()`` -> summary dict.

    ``callback`` receives dicts with ``event`` = ``'log'`` (``message``), ``'progress'`` (step,
    total, epoch, loss, eta_s, samples_per_s, best_val) and ``'validation'`` (step + metrics).
    """

    def __init__(self, config: TrainingConfig, callback: Callback | None = None) -> None:
        self.config = config
        self.callback = callback
        self.device = torch.device('cpu')
        self.state = _State()
        self.dist: Distributed = SINGLE     # this process's rank in a torchrun job
        self._scale_loader: DataLoader | None = None  # samples of the metric scale search (searched scale only)

    # -- reporting ------------------------------------------------------------------------------
    def _emit(self, event: str, **fields: Any) -> None:
        if not self.dist.is_main:  # rank 0 alone reports; the others raise their errors
            return
        if event == 'log':
            LOGGER.info('%s', fields['message'])
        if self.callback is not None:
            self.callback({'event': event, **fields})

    def _log(self, message: str) -> None:
        self._emit('log', message=message)

    # -- set-up ---------------------------------------------------------------------------------
    def _build_models(self) -> _Models:
        cfg = self.config
        encoder, decoder = build_depth_model(cfg.arch, cfg.encoder_weights)
        pose_encoder, pose_decoder = build_pose_model(cfg.encoder_weights if cfg.arch != 'lite_hr_depth' else None)
        pose_from_scratch, init_metric_scale, init = True, None, None
        if cfg.init and not cfg.resume:
            init = load_depth_checkpoint(cfg.init)
            if init.arch != cfg.arch:
                raise TrainingError(f'init checkpoint {cfg.init} is {init.arch}, but the architecture is {cfg.arch}')
            encoder.load_state_dict(init.encoder.state_dict())
            decoder.load_state_dict(init.decoder.state_dict())
            init_metric_scale = init.metric_scale
            if init.depth_range != (cfg.min_depth, cfg.max_depth):
                self._log(f'warning: the start checkpoint {cfg.init} was trained with depth range {init.depth_range}, '
                          f'this run uses {cfg.min_depth}-{cfg.max_depth} (--min-depth, --max-depth)')
            folder = Path(cfg.init).expanduser()
            if all((folder / name).is_file() for name in POSE_FILES):
                pose_encoder.load_state_dict(load_extra_state(folder, POSE_ENCODER_FILE))
                pose_decoder.load_state_dict(load_extra_state(folder, POSE_DECODER_FILE))
                pose_from_scratch = False
                self._log(f'initialised depth and pose networks from {folder}')
            else:
                self._log(f'initialised the depth network from {folder} (it has no pose network)')
        targets = []
        anchor_weight = self.anchor_weight()
        for name, folder, weight in (('teacher', cfg.teacher, cfg.distill_weight), ('anchor', cfg.init, anchor_weight)):
            if not folder or not weight:
                continue
            # The anchor is the start model: its networks as loaded above (copied from, never trained), or read
            # again on --resume, so that it stays put across resumes.
            ckpt = init if name == 'anchor' and init is not None else load_depth_checkpoint(folder)
            for module in (ckpt.encoder, ckpt.decoder):
                module.requires_grad_(False).eval().to(self.device)
            targets.append(_DisparityTarget(name, ckpt.encoder, ckpt.decoder, ckpt.height, ckpt.width, weight))
            self._log(f'distilling from teacher {folder} ({ckpt.arch} {ckpt.width}x{ckpt.height}), weight {weight:g}'
                      if name == 'teacher' else
                      f'anchored to the start model {folder} (disparity L1, weight {weight:g})')
        models = _Models(encoder, decoder, pose_encoder, pose_decoder, targets, pose_from_scratch, init_metric_scale)
        for module in models.trainable():
            module.to(self.device)
        return models

    def anchor_weight(self) -> float:
        """The anchor's weight: the option, else AUTO_ANCHOR_WEIGHT for pose-network runs from --init."""
        cfg = self.config
        if not cfg.init:
            return 0.0
        if cfg.anchor_weight is not None:
            return cfg.anchor_weight
        return AUTO_ANCHOR_WEIGHT if self.state.pose_source == 'net' else 0.0

    def _loader(self, dataset: TripletDataset, shuffle: bool, generator: torch.Generator | None = None,
                sampler: Any = None) -> DataLoader:
        cfg = self.config
        return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=shuffle and sampler is None,
                          num_workers=cfg.num_workers, sampler=sampler,
                          drop_last=shuffle and len(sampler or dataset) >= cfg.batch_size, generator=generator,
                          pin_memory=self.device.type == 'cuda', persistent_workers=cfg.num_workers > 0)

    # -- the loss -------------------------------------------------------------------------------
    def _transforms(self, models: _Models, batch: dict[str, torch.Tensor], pose_source: str,
                    color_aug: torch.Tensor) -> dict[int, torch.Tensor]:
        """``T_target_to_source`` per source offset, from TF (the batch) or the pose network."""
        if pose_source in ('tf', 'vo'):  # fixed poses of the batch: odometry or two-view geometry
            T = batch['T'].to(self.device)
            return {offset: T[:, j] for j, offset in enumerate(SOURCE_OFFSETS)}
        transforms = {}
        for j, offset in enumerate(SOURCE_OFFSETS, start=1):
            pair = (color_aug[:, j], color_aug[:, 0]) if offset < 0 else (color_aug[:, 0], color_aug[:, j])
            axisangle, translation = models.pose_decoder([models.pose_encoder(torch.cat(pair, 1))])
            with self._full_precision():
                transforms[offset] = transformation_from_parameters(axisangle[:, 0].float(), translation[:, 0].float(),
                                                                    invert=offset < 0)
        return transforms

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        """A batch's frames on the device as float in [0, 1] (the loaders send uint8: a quarter of the bytes)."""
        images = images.to(self.device, non_blocking=True)
        return images.float().div_(255.0) if images.dtype == torch.uint8 else images

    def _full_precision(self) -> torch.autocast:
        """Autocast off: under mixed precision only the networks run in fp16. The warp geometry's matmuls
        would too, and ``Z x u`` passes fp16's 65504 beyond ~50 m at 1280 px (inf coordinates: a finite
        loss with NaN gradients, so every step is skipped); they and the losses run in float32."""
        return torch.autocast(self.device.type, enabled=False)

    def _depth(self, disp: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """Depth of a sigmoid disparity: ``scale`` (default: the run's metric scale) x disp_to_depth."""
        _, depth = disp_to_depth(disp, self.config.min_depth, self.config.max_depth)
        return depth * (self.state.metric_scale if scale is None else scale)

    def _losses(self, models: _Models, batch: dict[str, torch.Tensor], pose_source: str | None = None,
                outputs: dict | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """The training loss of one batch; ``outputs``: the depth network's, when already computed."""
        color = self._images(batch['color'])
        color_aug = self._images(batch['color_aug'])
        K = batch['K'].to(self.device)
        target = color[:, 0]
        if outputs is None:
            outputs = models.decoder(models.encoder(color_aug[:, 0]))
        transforms = self._transforms(models, batch, pose_source or self.state.pose_source, color_aug)
        pulls = [(pull.weight, pull.disparity(target)) for pull in models.targets]
        labels = batch['depth_gt'].to(self.device) if self.config.gt_depth_weight else None
        with self._full_precision():
            return self._loss_terms(outputs, color, K, transforms, pulls, labels)

    def _loss_terms(self, outputs: dict, color: torch.Tensor, K: torch.Tensor, transforms: dict[int, torch.Tensor],
                    pulls: list[tuple[float, torch.Tensor]], labels: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The loss of the networks' outputs (:meth:`_losses`), in float32; ``labels``: metres (NaN: none) for
        ``gt_depth_weight``'s term on the full-resolution depth."""
        cfg = self.config
        target32 = color[:, 0].float()
        height, width = target32.shape[-2:]
        identity = [photometric_error(color[:, j].float(), target32) for j in range(1, 1 + len(SOURCE_OFFSETS))]
        total = torch.zeros((), device=self.device)
        info: dict[str, Any] = {}
        scales = SCALES[:cfg.loss_scales]
        for scale in scales:
            disp = outputs[('disp', scale)].float()
            disp_full = upsample_to(disp, height, width)
            depth = self._depth(disp_full)
            per_pixel, automask = reprojection_loss(color, depth, K, transforms, identity)
            loss = per_pixel.mean()
            image_s = target32 if scale == 0 else F.interpolate(target32, size=disp.shape[-2:], mode='area')
            loss = loss + cfg.smoothness_weight * smoothness_loss(disp, image_s) / (2 ** scale)
            for weight, target_disp in pulls:
                loss = loss + weight * distillation_loss(disp_full, target_disp)
            total = total + loss
            if scale == 0:
                info['photometric'] = per_pixel.detach().mean()  # tensors: read (a host sync) when logged
                info['automask'] = automask.float().mean()
                info['disp'] = disp.detach()
                full_depth = depth
        total = total / len(scales)
        if labels is not None:
            label = depth_label_loss(full_depth, labels)
            total = total + cfg.gt_depth_weight * label
            info['label'] = label.detach()
        return total, info

    # -- validation -----------------------------------------------------------------------------
    def _tf_scoring(self, scored: list[tuple[dict[str, torch.Tensor], torch.Tensor]]) -> list[tuple[Any, ...]]:
        """What scoring depth under the TF poses needs, at any scale: per batch the frames (uint8: exact), the
        un-warped errors, K, the TF transforms and ``disp_to_depth`` of the full-size disparity. Kept on the
        CPU and moved per batch when scored: 200 validation samples took ~1.2 GB of GPU memory at 640x192
        and ~4.7 GB at 1280x384 (too much beside training on a Jetson); this form is ~45 % of that."""
        prepared = []
        for batch, disp in scored:
            color = self._images(batch['color'])
            identity = [photometric_error(color[:, j], color[:, 0]).cpu() for j in range(1, 1 + len(SOURCE_OFFSETS))]
            frames = batch['color'] if batch['color'].dtype == torch.uint8 else batch['color'].mul(255.0).round_()
            prepared.append((frames.to(torch.uint8), identity, batch['K'],
                             {offset: batch['T'][:, j] for j, offset in enumerate(SOURCE_OFFSETS)},
                             self._depth(upsample_to(disp.to(self.device), *color.shape[-2:]), 1.0).cpu()))
        return prepared

    def _photometric_under_tf(self, prepared: list[tuple[Any, ...]], scale: float) -> float:
        """Mean scale-0 minimum reprojection error of ``scale x disp_to_depth(disp)`` under the TF poses
        (``prepared`` by :meth:`_tf_scoring`)."""
        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(self.device, non_blocking=True)

        total, count = torch.zeros((), device=self.device), 0
        for color, identity, K, transforms, depth in prepared:
            per_pixel, _ = reprojection_loss(move(color).float().div_(255.0), move(depth) * scale, move(K),
                                             {offset: move(T) for offset, T in transforms.items()},
                                             [move(error) for error in identity], noise_std=0.0)
            total += per_pixel.mean() * len(depth)
            count += len(depth)
        return float(total) / max(count, 1)

    def _search_scale(self, prepared: list[tuple[Any, ...]]) -> ScaleSearch:
        """The depth scale whose reprojection under the TF poses (``prepared`` by :meth:`_tf_scoring`) is best
        (see :mod:`.scale`)."""
        return search_scale(lambda scale: self._photometric_under_tf(prepared, scale))

    def _pixel_scale(self, prepared: list[tuple[Any, ...]], centre: float, spread: float = 1.0,
                     points: int = 41) -> ScaleSearch:
        """The median of per-pixel best depth scales under the TF poses (``prepared`` by :meth:`_tf_scoring`),
        inverse scales within ``(1 +- spread) / centre`` (:func:`.scale.median_pixel_scale`)."""
        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(self.device, non_blocking=True)

        identity = np.concatenate([torch.cat(ident, 1).min(1).values.flatten().cpu().numpy()
                                   for _, ident, _, _, _ in prepared])

        def errors_at(scale: float) -> np.ndarray:
            return np.concatenate([
                reprojection_loss(move(color).float().div_(255.0), move(depth) * scale, move(K),
                                  {offset: move(T) for offset, T in transforms.items()}, None)[0].flatten().cpu().numpy()
                for color, _, K, transforms, depth in prepared])

        return median_pixel_scale(errors_at, identity, centre, spread, points)

    @torch.no_grad()
    def _disparities(self, models: _Models, loader: DataLoader, limit: int) -> list[tuple[dict, torch.Tensor]]:
        """``(batch, scale-0 disparity)`` pairs of up to ``limit`` samples, networks in eval mode."""
        scored, seen = [], 0
        for module in models.trainable():
            module.eval()
        try:
            for batch in loader:
                disp = models.decoder(models.encoder(self._images(batch['color_aug'][:, 0])))[('disp', 0)]
                scored.append((batch, disp.float()))
                seen += len(disp)
                if seen >= limit:
                    break
        finally:
            for module in models.trainable():
                module.train()
        return scored

    @torch.no_grad()
    def _validate(self, models: _Models, loader: DataLoader | None, tf_poses: bool) -> dict[str, float]:
        """Validation loss, the photometric error under TF poses (``tf_poses``) and ground-truth errors."""
        if loader is None:
            return {}
        for module in models.trainable():
            module.eval()
        losses, photometric, per_frame, per_frame_metric = [], [], [], []
        prepared = []  # for the photometric error under TF poses, on the CPU (_tf_scoring)
        seen = 0
        saved_rng = rng_state(self.device)
        torch.manual_seed(12345)  # identical auto-mask noise at every validation
        try:
            for batch in loader:
                outputs = models.decoder(models.encoder(self._images(batch['color_aug'][:, 0])))
                loss, info = self._losses(models, batch, outputs=outputs)
                losses.append(loss.item())
                photometric.append(float(info['photometric']))
                disp = outputs[('disp', 0)].float()
                if tf_poses:
                    prepared.extend(self._tf_scoring([(batch, disp)]))
                depth = self._depth(disp)[:, 0].cpu().numpy()
                for gt, pred in zip(batch['depth_gt'][:, 0].numpy(), depth):
                    if not np.isfinite(gt).any():
                        continue
                    try:
                        per_frame.append(evaluate_depth(gt, pred, min_depth=1e-3, max_depth=80.0))
                        if self.state.metric:
                            per_frame_metric.append(evaluate_depth(gt, pred, min_depth=1e-3, max_depth=80.0,
                                                                   median_scaling=False))
                    except ValueError:
                        pass  # no valid ground truth in this frame
                seen += len(depth)
                if seen >= self.config.max_val_samples:
                    break
        finally:
            set_rng_state(saved_rng, self.device)
            for module in models.trainable():
                module.train()
        result = {'loss': float(np.mean(losses)), 'photometric': float(np.mean(photometric))}
        if prepared:
            if self.state.metric:
                result['loss_tf'] = self._photometric_under_tf(prepared, self.state.metric_scale)
            else:  # relative depth: scored at its best scale (a scale-free measure of its shape)
                result['loss_tf'] = self._search_scale(prepared).loss
        if per_frame:
            errors = mean_errors(per_frame)
            result.update(abs_rel=errors['abs_rel'], rmse=errors['rmse'], a1=errors['a1'])
        if per_frame_metric:  # scale_ratio: median(gt) / median(prediction), 1 for exact metres
            result.update(abs_rel_metric=mean_errors(per_frame_metric)['abs_rel'], scale_ratio=errors['scale_ratio'])
        return result

    def _selection(self, result: dict[str, float]) -> tuple[str, float]:
        """What best/ is chosen by (lower is better): see the module docstring."""
        for key in ('abs_rel_metric' if self.state.metric else 'abs_rel', 'abs_rel', 'loss_tf', 'loss'):
            if key in result:
                return key, result[key]
        raise KeyError('empty validation result')

    # -- checkpoints ----------------------------------------------------------------------------
    def _save(self, models: _Models, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
              data: PreparedData, name: str) -> Path | None:
        cfg = self.config
        if not self.dist.is_main:  # rank 0 alone writes checkpoints
            return None
        if not all(_finite(m) for m in models.trainable()):
            self._log(f'not saving {name}/: the weights contain NaN/inf (the previous checkpoint is kept)')
            return None
        K = data.store.K[0]
        metadata = {
            'architecture': cfg.arch, 'resolution': [cfg.width, cfg.height],
            # The depth node reads "intrinsics" (depth_node.checkpoint_intrinsics) when no camera_info arrives.
            'intrinsics': {'K': K.tolist(), 'width': cfg.width, 'height': cfg.height},
            'K_normalized': normalized_intrinsics(K, cfg.width, cfg.height).tolist(),
            'bags': [str(b) for b in data.store.bags],  # --bag folders and patterns expanded
            'topics': data.topics or {'image': cfg.image_topic, 'camera_info': cfg.camera_info_topic,
                                      'gt_depth': cfg.gt_depth_topic},
            'config': asdict(cfg), 'step': self.state.step, 'epoch': self.state.epoch,
            'metrics': self.state.last_val, 'best_val_loss': None if math.isinf(self.state.best_val) else self.state.best_val,
            'samples': {'train': len(data.train), 'val': len(data.val)}, 'trained_with': 'hr_depth_ros.core.training',
            'world_size': self.dist.world_size, 'effective_batch_size': cfg.batch_size * self.dist.world_size,
            'samples_seen': self.state.samples_seen,
            'pose_source': self.state.pose_source, 'selected_by': self.state.selected_by,
            'anchor_weight': self.anchor_weight(),  # resolved: the start model's pull (0: none)
            'depth_units': 'metres' if self.state.metric else 'relative (monocular: no metric scale)',
        }
        metadata['depth_range'] = [cfg.min_depth, cfg.max_depth]  # every consumer reads it (checkpoint.depth_range_of)
        if self.state.metric:
            # depth_node / predict / DepthEstimator publish metres with it (checkpoint.metric_scale_of).
            metadata['metric_scale'] = self.state.metric_scale
            metadata['scale_search'] = self.state.scale_search
        training_state = {'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
                          'scaler': scaler.state_dict() if scaler is not None else {},
                          'step': self.state.step, 'epoch': self.state.epoch, 'best_val': self.state.best_val,
                          'samples_seen': self.state.samples_seen,
                          **rng_state(self.device)}
        folder = save_depth_checkpoint(
            Path(cfg.output).expanduser() / name, models.encoder, models.decoder, arch=cfg.arch,
            height=cfg.height, width=cfg.width, metadata=metadata,
            extra_state={POSE_ENCODER_FILE: models.pose_encoder.state_dict(),
                         POSE_DECODER_FILE: models.pose_decoder.state_dict(), OPTIMIZER_FILE: training_state})
        return folder

    def _resume(self, models: _Models, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any) -> None:
        cfg = self.config
        latest = Path(cfg.output).expanduser() / LATEST
        ckpt = load_depth_checkpoint(latest)
        if ckpt.arch != cfg.arch or (ckpt.width, ckpt.height) != (cfg.width, cfg.height):
            raise TrainingError(f'cannot resume {latest}: it is {ckpt.arch} {ckpt.width}x{ckpt.height}, '
                                f'this run is {cfg.arch} {cfg.width}x{cfg.height}')
        models.encoder.load_state_dict(ckpt.encoder.state_dict())
        models.decoder.load_state_dict(ckpt.decoder.state_dict())
        models.pose_encoder.load_state_dict(load_extra_state(latest, POSE_ENCODER_FILE))
        models.pose_decoder.load_state_dict(load_extra_state(latest, POSE_DECODER_FILE))
        state = load_extra_state(latest, OPTIMIZER_FILE)
        try:
            optimizer.load_state_dict(state['optimizer'])
            scheduler.load_state_dict(state['scheduler'])
            if scaler is not None and state.get('scaler'):
                scaler.load_state_dict(state['scaler'])
            self.state.step, self.state.epoch = int(state['step']), int(state['epoch'])
            # best/ may be newer than latest/ (a crash after a best save): its score stays the one to beat.
            self.state.best_val = min(float(state.get('best_val', math.inf)), self._best_saved(ckpt.metadata))
            self.state.samples_seen = int(state.get('samples_seen', 0))
            scale = metric_scale_of(ckpt.metadata)
            if scale is not None:
                self.state.metric_scale, self.state.metric = scale, True
                self.state.scale_search = ckpt.metadata.get('scale_search', {})
            set_rng_state(state, self.device)
        except (KeyError, ValueError) as error:
            raise CheckpointError(f'{latest / OPTIMIZER_FILE}: not a training state of this trainer: {error}') from error
        self._log(f'resumed from {latest} at step {self.state.step}, epoch {self.state.epoch}')

    def _best_saved(self, latest_metadata: dict[str, Any]) -> float:
        """The score recorded in OUTPUT/best when it was chosen by what latest/ records (else inf)."""
        best = Path(self.config.output).expanduser() / BEST / METADATA_FILE
        try:
            metadata = read_metadata(best)
        except (OSError, CheckpointError):
            return math.inf
        value = metadata.get('best_val_loss')
        if metadata.get('selected_by') != latest_metadata.get('selected_by') or not isinstance(value, (int, float)):
            return math.inf
        return float(value) if math.isfinite(value) else math.inf

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train; returns ``{'step', 'epoch', 'latest', 'best', 'val', 'samples_per_s', 'data', 'world_size',
        'samples_seen'}``. Under ``torchrun`` every rank calls it (see :mod:`.distributed`)."""
        cfg = self.config
        self.dist = from_environment(select_device(cfg.device).type)  # a torchrun job, or SINGLE
        try:
            return self._run_ranks()
        finally:
            self.dist.close()

    def _run_ranks(self) -> dict[str, Any]:
        # Rank 0 holds the output folder's lock for the whole run: a second run is refused untouched.
        with output_lock(self.config.output) if self.dist.is_main else contextlib.nullcontext():
            return self._run_locked()

    def _run_locked(self) -> dict[str, Any]:
        cfg = self.config
        if self.dist.is_main:  # the others wait until the output folder is recovered and checked
            for action in prepare_output(cfg.output, cfg.resume, cfg.overwrite):  # before validate looks for latest/
                self._log(action)
        self.dist.barrier()
        cfg.validate()
        _seed_everything(cfg.seed, cfg.deterministic)
        self.device = self.dist.device(select_device(cfg.device))
        data_config = cfg.data_config()
        data_config.progress = data_config.progress and self.dist.is_main
        rank_cache = None
        if self.dist.active and data_config.frame_cache is None:  # the ranks of a machine decode each bag once
            rank_cache = data_config.frame_cache = Path(cfg.output).expanduser() / f'{FRAME_CACHE_PREFIX}ranks'
        with removed_if_left_empty(cfg.output):  # the frame cache lives in output: bad input leaves nothing
            try:
                data = prepare_data(data_config, min_train_samples=1)
            except BaseException:
                if rank_cache is not None:
                    shutil.rmtree(rank_cache, ignore_errors=True)
                raise
        try:
            if cfg.overwrite and not cfg.resume and self.dist.is_main:  # only now that the new run's data is ready
                for action in remove_previous_run(cfg.output):
                    self._log(action)
            result = self._run(data)
        finally:
            data.close()
        if rank_cache is not None:  # once no rank maps it (after a failure: swept by the next run)
            self.dist.barrier()
            if self.dist.local_rank == 0:
                shutil.rmtree(rank_cache, ignore_errors=True)
        return result

    def _run(self, data: PreparedData) -> dict[str, Any]:
        """The recipe: set up, then train (step, log, validate, save) until the last step."""
        cfg = self.config
        self._report_data(data)
        self.state.pose_source = data.pose_source
        if cfg.gt_depth_weight and data.pose_source != 'tf':
            raise TrainingError(f'gt_depth_weight needs TF poses (metric depth to compare with the labels); camera '
                                f'motion here comes from {data.report.pose_source}')
        models = self._build_models()
        optimizer, scheduler, scaler = self._optimizer(models)
        if cfg.resume:
            self._resume(models, optimizer, scheduler, scaler)
        if data.pose_source == 'vo':
            self._scale_two_view(models, data)  # the two-view poses in the start depth network's units
        train_loader, sampler, val_loader = self._data_loaders(data)
        if not cfg.resume:
            self._share_metric_scale(models, data)
        pose_warmup = self._pose_warmup(models, data)
        steps_per_epoch = max(1, len(train_loader))
        total = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
        output = Path(cfg.output).expanduser()
        output.mkdir(parents=True, exist_ok=True)
        world = self.dist.world_size
        with RunLog(output, METRICS_COLUMNS, self.dist.is_main, cfg.resume, self.state.step, total,
                    cfg.batch_size * world, cfg.log_every, self._emit, cfg.progress_bar) as log:
            self._log(f'training {cfg.arch} at {cfg.width}x{cfg.height} on {self.device} for {total} steps '
                      f'({steps_per_epoch} per epoch, batch {cfg.batch_size}, lr {cfg.lr}), output {output}'
                      + (f'; {world} processes (DistributedDataParallel), effective batch {cfg.batch_size * world}'
                         if self.dist.active else ''))
            val_every = cfg.val_every if cfg.val_every > 0 else steps_per_epoch
            validate = functools.partial(self._validation_step, models, val_loader, optimizer, scheduler, scaler,
                                         data, log)
            if not cfg.resume and cfg.init:
                validate()  # the start model: best/ is never worse
            # One DistributedDataParallel over the whole step in a torchrun job (gradients averaged over
            # the ranks); validation, the scale search and checkpoints use the plain networks.
            train_step = data_parallel(self.dist, models.trainable(), functools.partial(self._losses, models),
                                       self.device)
            latest = None
            log.start_clock()
            for module in models.trainable():
                module.train()
            while self.state.step < total:
                frozen = self.state.epoch < cfg.freeze_encoder_epochs
                if sampler is not None:
                    sampler.set_epoch(self.state.epoch)
                for batch in train_loader:
                    self._set_trainable(models, frozen, warming_up=self.state.step < pose_warmup)
                    loss, info = self._optimise(train_step, batch, optimizer, scaler)
                    if loss is None:  # not finite: skipped
                        continue
                    if log.train_step(self.state.step, self.state.epoch, loss, info, optimizer.param_groups[0]['lr'],
                                      None if math.isinf(self.state.best_val) else self.state.best_val):
                        check_loss_scale(scaler)  # at every logged step: AMP's loss scale
                    if self.state.step % val_every == 0 or self.state.step == total:
                        validate()
                    if self.state.step % cfg.save_every == 0 or self.state.step == total:
                        latest = self._save(models, optimizer, scheduler, scaler, data, LATEST) or latest
                    if self.state.step >= total:
                        break
                else:  # the loader is exhausted: the epoch ends
                    self._end_epoch(scheduler)
                    continue
                if self.state.step >= total and len(train_loader) and self.state.step % steps_per_epoch == 0:
                    self._end_epoch(scheduler)
        return self._finish(data, output, latest, log.samples_per_s)

    # -- the steps of the run -------------------------------------------------------------------
    def _report_data(self, data: PreparedData) -> None:
        """What the bags gave: the topics chosen, the sample summary, warnings, one line per bag, TF notes."""
        for line in data.topic_choices:
            self._log(line)
        self._log(data.report.summary())
        for line in data.warnings:
            self._log(line)
        if len(data.store.bags) > 1:
            for line in data.bag_summaries():
                self._log(line)
        for note in data.store.tf_notes:
            if note:
                self._log(note)

    def _pose_lr(self) -> float:
        cfg = self.config
        return cfg.pose_lr if cfg.pose_lr is not None else max(cfg.lr, MIN_POSE_LR)

    def _optimizer(self, models: _Models) -> tuple[torch.optim.Optimizer, Any, Any]:
        """(Adam with the depth and pose parameter groups, its StepLR, the AMP scaler or None)."""
        cfg = self.config
        optimizer = torch.optim.Adam([
            {'params': [p for m in (models.encoder, models.decoder) for p in m.parameters()], 'lr': cfg.lr},
            {'params': [p for m in (models.pose_encoder, models.pose_decoder) for p in m.parameters()],
             'lr': self._pose_lr()},
        ])
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.scheduler_step_epochs, cfg.scheduler_gamma)
        use_amp = cfg.amp and self.device.type == 'cuda'
        scaler = torch.amp.GradScaler('cuda') if use_amp else None
        return optimizer, scheduler, scaler

    def _data_loaders(self, data: PreparedData) -> tuple[DataLoader, Any, DataLoader | None]:
        """(training loader, its distributed sampler or None, validation loader or None)."""
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed + self.state.step)
        train_set = TripletDataset(data.store, data.train, augment=cfg.augment, uint8=True, transforms=data.transforms)
        sampler = train_sampler(self.dist, train_set, cfg.seed)
        train_loader = self._loader(train_set, True, generator, sampler)
        val_loader = (self._loader(TripletDataset(data.store, data.val, uint8=True, transforms=data.transforms), False)
                      if data.val else None)
        return train_loader, sampler, val_loader

    def _share_metric_scale(self, models: _Models, data: PreparedData) -> None:
        """The metric scale chosen on rank 0 (:meth:`_choose_metric_scale`), the same for every rank."""
        if self.dist.is_main:
            self._choose_metric_scale(models, data)
        state = self.dist.broadcast((self.state.metric, self.state.metric_scale, self.state.scale_search))
        self.state.metric, self.state.metric_scale, self.state.scale_search = state

    def _pose_warmup(self, models: _Models, data: PreparedData) -> int:
        """Pose-only warm-up steps (the pose network frozen instead when poses are fixed: TF, two-view geometry);
        logs the set-up."""
        cfg = self.config
        pose_warmup = cfg.pose_warmup_steps
        if pose_warmup is None:
            pose_warmup = (AUTO_POSE_WARMUP_STEPS if data.pose_source == 'net' and cfg.init and models.pose_from_scratch
                           else 0)
        if data.pose_source in ('tf', 'vo'):
            pose_warmup = 0  # the pose network is not used
            models.pose_encoder.requires_grad_(False)
            models.pose_decoder.requires_grad_(False)
        self._log(f'camera motion from {data.report.pose_source}'
                  + (f'; depth in metres (metric scale {self.state.metric_scale:.4g})' if self.state.metric else
                     '; depth without metric scale')
                  + (f'; pose network lr {self._pose_lr():g}, {pose_warmup} pose-only warm-up steps'
                     if data.pose_source == 'net' else ''))
        if data.pose_source == 'net' and not data.val_has_poses and not cfg.gt_depth_topic:
            guard = (f'the anchor to the start model (weight {self.anchor_weight():g}) keeps the depth network near it'
                     if self.anchor_weight() else 'without an anchor to the start model (--init, --anchor-weight) '
                                                  'depth can get worse while that loss falls')
            self._log("warning: no odometry (TF) and no ground-truth depth to validate with: best/ is chosen by the "
                      f"pose network's own loss; {guard} (benchmarks/RESULTS.md); record /tf with the camera, or give "
                      '--gt-depth-topic, to select by depth quality')
        return pose_warmup

    def _set_trainable(self, models: _Models, frozen: bool, warming_up: bool) -> None:
        """Which networks learn this step: the encoder not while ``frozen`` (freeze_encoder_epochs), the depth
        network not while the pose network warms up; batch norm statistics kept with ``freeze_bn``."""
        models.encoder.requires_grad_(not (frozen or warming_up))
        models.decoder.requires_grad_(not warming_up)
        models.encoder.train(not warming_up)
        models.decoder.train(not warming_up)
        if self.config.freeze_bn:
            freeze_batch_norm(models.encoder)

    def _optimise(self, train_step: Callable[[dict], tuple[torch.Tensor, dict]], batch: dict[str, torch.Tensor],
                  optimizer: torch.optim.Optimizer, scaler: Any) -> tuple[float | None, dict[str, Any]]:
        """One optimiser step on ``batch``: (loss, loss terms); loss None when it is not finite on some rank
        (the step is skipped on every rank, :meth:`_skip_step`)."""
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=scaler is not None):
            loss, info = train_step(batch)
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()  # the step's one host sync
        if not self.dist.all_true(math.isfinite(loss_value), self.device):  # every rank skips
            self._skip_step(loss, loss_value, optimizer)
            return None, info
        self.state.bad_in_a_row = 0
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        self.state.step += 1
        self.state.samples_seen += len(batch['index']) * self.dist.world_size  # every rank's batch has this size
        return loss_value, info

    def _skip_step(self, loss: torch.Tensor, loss_value: float, optimizer: torch.optim.Optimizer) -> None:
        """A non-finite loss: no update (TrainingError after MAX_BAD_STEPS of them in a row)."""
        if self.dist.active:
            loss.backward()  # completes DDP's gradient exchange; the gradients are dropped
            optimizer.zero_grad(set_to_none=True)
        self.state.bad_in_a_row += 1
        self.state.skipped_steps += 1
        self._log(f'step {self.state.step + 1}: non-finite loss {loss_value}, step skipped')
        if self.state.bad_in_a_row >= MAX_BAD_STEPS:
            raise TrainingError(f'{self.state.bad_in_a_row} non-finite losses in a row: training diverged '
                                f'(lower the learning rate); the last good checkpoint is kept')

    def _end_epoch(self, scheduler: Any) -> None:
        self.state.epoch += 1
        scheduler.step()

    def _finish(self, data: PreparedData, output: Path, latest: Path | None, samples_per_s: float) -> dict[str, Any]:
        """The run's summary (see :meth:`run`)."""
        if latest is None and (output / LATEST).is_dir():
            latest = output / LATEST
        self._log(f'finished at step {self.state.step}: {samples_per_s:.2f} samples/s, latest {latest}, '
                  f'best validation {self.state.selected_by} {self.state.best_val:.4f}')
        return {'step': self.state.step, 'epoch': self.state.epoch, 'latest': latest,
                'world_size': self.dist.world_size, 'samples_seen': self.state.samples_seen,
                'best': output / BEST if (output / BEST).is_dir() else None, 'val': self.state.last_val,
                'samples_per_s': samples_per_s, 'skipped_steps': self.state.skipped_steps,
                'data': data.report.summary()}

    def _validation_step(self, models: _Models, val_loader: DataLoader | None, optimizer: Any, scheduler: Any,
                         scaler: Any, data: PreparedData, log: RunLog) -> Path | None:
        """Validate, record, and save best/ when the selection measure improved."""
        # Rank 0 validates on all the validation samples (the numbers of a single process) and
        # broadcasts the result, so every rank keeps the same best / selection state.
        if self._scale_loader is not None and self.state.step > 0 and not self.config.gt_depth_weight:
            self._refine_metric_scale(models)  # (depth labels keep the metres themselves)
        result = self.dist.broadcast(self._validate(models, val_loader, data.val_has_poses)
                                     if self.dist.is_main else None)
        if not result:
            return None
        self.state.last_val = result
        self.state.selected_by, value = self._selection(result)
        improved = math.isfinite(value) and value < self.state.best_val
        row = {'step': self.state.step, 'epoch': self.state.epoch, 'split': 'val', 'lr': optimizer.param_groups[0]['lr'],
               **{k: result.get(k) for k in METRICS_COLUMNS if k in result}, 'selected': int(improved),
               'selected_by': self.state.selected_by}  # what best/ is chosen by
        log.validation(row, result)
        text = ', '.join(f'{k} {v:.4f}' for k, v in result.items())
        self._log(f'validation at step {self.state.step}: {text}'
                  + (f' (new best by {self.state.selected_by})' if improved else ''))
        self._emit('validation', step=self.state.step, selected_by=self.state.selected_by, **result)
        if improved:
            self.state.best_val = value
            return self._save(models, optimizer, scheduler, scaler, data, BEST)
        return None

    def _refine_metric_scale(self, models: _Models) -> None:
        """Re-estimate the metric scale of the network as trained so far (on rank 0, broadcast): the
        depth network's shape changes while it trains, and so does the scale that fits it best."""
        scale = None
        if self.dist.is_main:
            scored = self._disparities(models, self._scale_loader, SCALE_SEARCH_SAMPLES)
            scale = self._pixel_scale(self._tf_scoring(scored), self.state.metric_scale, SCALE_REFINE_SPREAD, 21).scale
        scale = self.dist.broadcast(scale)
        if abs(math.log(scale / self.state.metric_scale)) > 1e-3:
            self._log(f'metric scale {self.state.metric_scale:.4g} -> {scale:.4g} (re-estimated at step '
                      f'{self.state.step})')
        self.state.metric_scale = scale
        self.state.scale_search.setdefault('updates', []).append([self.state.step, scale])

    @torch.no_grad()
    def _scale_two_view(self, models: _Models, data: PreparedData) -> None:
        """Two-view poses in the start depth network's units (:mod:`hr_depth_ros.core.visual_odometry`): the
        translation length of every sample from the network's depth of its centre frame, once (measured:
        benchmarks/RESULTS.md). Samples whose length the depth cannot fix are dropped and counted."""
        centres = sorted({centre for _, centre, _ in (*data.train, *data.val)})
        depths: dict[int, np.ndarray] = {}
        models.encoder.eval()
        models.decoder.eval()
        try:
            for first in range(0, len(centres), 16):
                chunk = centres[first:first + 16]
                images = torch.from_numpy(np.stack([data.store.image(i) for i in chunk])).permute(0, 3, 1, 2)
                disp = models.decoder(models.encoder(images.to(self.device).float().div_(255.0)))[('disp', 0)]
                for i, depth in zip(chunk, self._depth(disp.float(), 1.0)[:, 0].cpu().numpy()):
                    depths[i] = depth
        finally:
            models.encoder.train()
            models.decoder.train()
        data.transforms, failures = data.motions.scaled(depths.__getitem__, data.store.K, data.store.segment, centres)

        def keep(samples: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
            return [sample for sample in samples if np.isfinite(data.transforms[sample[1]]).all()]

        before = len(data.train) + len(data.val)
        data.train, data.val = keep(data.train), keep(data.val)
        self._log(f'two-view poses: translation lengths from the start depth network for '
                  f'{len(centres) - (before - len(data.train) - len(data.val))} of {len(centres)} samples'
                  + (f' ({failures["no_scale"]} pairs refused: too few tracks with depth to fix the length)'
                     if failures else ''))
        if not data.train:
            raise TrainingError('two-view geometry left no training sample with a camera motion; '
                                + data.motions.summary())

    def _choose_metric_scale(self, models: _Models, data: PreparedData) -> None:
        """Metric scale for TF poses: given, the start checkpoint's, or found by the scale search."""
        cfg = self.config
        if data.pose_source != 'tf':
            return
        self.state.metric = True
        if cfg.metric_scale is not None:
            self.state.metric_scale, how = cfg.metric_scale, 'given'
        elif models.init_metric_scale is not None:
            self.state.metric_scale, how = models.init_metric_scale, f'of the start checkpoint {cfg.init}'
        elif not cfg.init:
            self.state.metric_scale, how = 1.0, 'random initialisation learns metres directly'
        else:
            stride = max(1, len(data.train) // SCALE_SEARCH_SAMPLES)
            samples = data.train[::stride][:SCALE_SEARCH_SAMPLES]
            loader = self._loader(TripletDataset(data.store, samples, uint8=True), False)
            prepared = self._tf_scoring(self._disparities(models, loader, SCALE_SEARCH_SAMPLES))
            whole = self._search_scale(prepared)
            search = self._pixel_scale(prepared, whole.scale)
            self._scale_loader = loader  # re-estimated on the same samples at every validation
            self.state.metric_scale = search.scale
            self.state.scale_search = {'samples': len(samples), 'loss': search.loss, 'sharpness': search.sharpness(),
                                       'evaluations': len(search.curve) + len(whole.curve), 'pixels': search.pixels,
                                       'whole_image_minimum': whole.scale, 'updates': []}
            how = (f'photometric search under TF poses on {len(samples)} training samples: median of the per-pixel '
                   f'best scales of {search.pixels} pixels (the whole-image loss is lowest at {whole.scale:.4g}), '
                   f'loss {search.loss:.4f}, {100 * search.sharpness():.0f} % higher at x2 / x0.5')
            if search.sharpness() < 0.01:
                self._log('warning: the photometric loss barely changes with the depth scale (little camera '
                          'motion or texture?); the metric scale is uncertain')
            headroom = depth_headroom(torch.cat([depth.flatten() for *_, depth in prepared]).numpy(), search.scale,
                                      cfg.min_depth, cfg.max_depth)
            self.state.scale_search.update(near_m=headroom['near_m'], far_m=headroom['far_m'])
            if headroom['warning']:
                self._log(f"warning: {headroom['warning']}")
        self.state.scale_search.setdefault('how', how)
        near, far = self.state.scale_search.get('near_m'), self.state.scale_search.get('far_m')
        self._log(f'metric scale {self.state.metric_scale:.4g} ({how}); representable depth '
                  f'{self.state.metric_scale * cfg.min_depth:.3g}-{self.state.metric_scale * cfg.max_depth:.4g} m'
                  + (f', the scene (1-99 %) at {near:.3g}-{far:.3g} m' if near is not None else ''))


def train(config: TrainingConfig, callback: Callback | None = None) -> dict[str, Any]:
    """Run one fine-tuning job (see :class:`Trainer`)."""
    return Trainer(config, callback).run()
