"""Checkpoint folders in the format of the HR-Depth / monodepth2 releases, plus our metadata.

A folder holds ``encoder.pth`` (encoder state dict plus ``height``, ``width``, ``use_stereo``)
and ``depth.pth`` (decoder state dict), exactly as the authors' releases
(HR_Depth_CS_K_MS_640x192, HR_Depth_K_MS_1024x320, HR_Depth_K_M_1280x384,
Lite_HR_Depth_K_T_1280x384, and monodepth2's mono/stereo folders). We add
``hr_depth_ros.json`` (architecture, resolution, intrinsics, training config, step, metrics)
and, for training, further state files (``pose_encoder.pth``, ``pose.pth``, ``adam.pth``);
the authors' tools ignore them, and ours read theirs. The architecture is recognised from
the keys, so no flag is needed.
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hr_depth_ros.core.networks import ARCHITECTURES, build_depth_model

ENCODER_FILE = 'encoder.pth'
DECODER_FILE = 'depth.pth'
METADATA_FILE = 'hr_depth_ros.json'
POSE_ENCODER_FILE = 'pose_encoder.pth'  # training state beside the authors' files (load_extra_state)
POSE_DECODER_FILE = 'pose.pth'
POSE_FILES = (POSE_ENCODER_FILE, POSE_DECODER_FILE)
OPTIMIZER_FILE = 'adam.pth'
ENCODER_EXTRA_KEYS = ('height', 'width', 'use_stereo')
MAX_LISTED_KEYS = 12
MAX_NETWORK_SIDE = 4096  # network input height/width above this are refused (the releases use <= 1280)
# metric_scale (metres per disp_to_depth unit) outside this range is refused wherever it is read: 1e39
# overflowed float32 in training (a segfault in backward), 1e30 published 2e29 m (see check_metric_scale).
METRIC_SCALE_RANGE = (1e-3, 1e4)
# What a state file may expand to when read: torch.save stores zip members uncompressed, so the members'
# declared sizes exceed the file's size only for a compressed (crafted) file; an absolute cap as well
# (the largest training state, adam.pth of hr_depth_resnet50, is ~0.9 GB).
MAX_EXPANSION_RATIO = 1.5
MAX_STATE_FILE_BYTES = 2 << 30
MAX_ZIP_MEMBERS = 100_000
MAX_METADATA_BYTES = 16 << 20
# Non-tensor values (pickle or JSON) are walked with a budget: nesting depth and values visited
# (a shared reference counts at every use), so a small file cannot format or walk into gigabytes.
MAX_VALUE_DEPTH = 64
MAX_VALUE_ITEMS = 200_000


class CheckpointError(RuntimeError):
    """A checkpoint folder or file is missing, unreadable or does not match the network."""


@dataclass
class DepthCheckpoint:
    """A loaded depth checkpoint: networks (in eval mode, on CPU) and what the folder says."""

    arch: str
    encoder: nn.Module
    decoder: nn.Module
    height: int
    width: int
    use_stereo: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def metric_scale(self) -> float | None:
        """Metres per unit of ``disp_to_depth`` when the checkpoint was trained metric (see
        :func:`metric_scale_of`), else None."""
        return metric_scale_of(self.metadata, (self.path or Path('.')) / METADATA_FILE)

    @property
    def depth_range(self) -> tuple[float, float]:
        """``(min_depth, max_depth)`` of ``disp_to_depth`` the network was trained with (see
        :func:`depth_range_of`; monodepth2's 0.1 / 100 when the folder does not say)."""
        return depth_range_of(self.metadata) or DEFAULT_DEPTH_RANGE


DEFAULT_DEPTH_RANGE = (0.1, 100.0)  # monodepth2's and HR-Depth's disp_to_depth range


def depth_range_of(metadata: dict[str, Any]) -> tuple[float, float] | None:
    """The ``depth_range`` ``[min_depth, max_depth]`` a fine-tuning run records in ``hr_depth_ros.json``
    (the range of ``disp_to_depth``, before ``metric_scale``); None when absent or not 0 < min < max."""
    value = metadata.get('depth_range') if isinstance(metadata, dict) else None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (low, high) if 0 < low < high < float('inf') else None


def check_metric_scale(value: Any, source: str) -> float:
    """``value`` as a metric scale (metres per ``disp_to_depth`` unit), or ValueError naming ``source`` (the
    file, option or parameter it came from) and the value: the one range check of every reader."""
    low, high = METRIC_SCALE_RANGE
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not low <= number <= high:  # NaN, inf, negative, zero, absurd, or not a number
        raise ValueError(f'{source}: metric_scale {_short(value)} is not a plausible metric scale (a number from '
                         f'{low:g} to {high:g} metres per depth unit)')
    return number


def metric_scale_of(metadata: dict[str, Any], source: str | Path = METADATA_FILE) -> float | None:
    """The ``metric_scale`` a fine-tuning run with metric poses records in ``hr_depth_ros.json``
    (depth in metres = metric_scale x disp_to_depth(disp)); None when absent. CheckpointError naming
    ``source`` when it is there but outside :data:`METRIC_SCALE_RANGE` (see :func:`check_metric_scale`)."""
    value = metadata.get('metric_scale') if isinstance(metadata, dict) else None
    if value is None:
        return None
    try:
        return check_metric_scale(value, str(source))
    except ValueError as error:
        raise CheckpointError(str(error)) from None


def _short(value: Any) -> str:
    """A value for an error message without formatting a (possibly huge or self-referencing) container."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)[:40]
    if isinstance(value, str):
        return repr(value[:40])
    return f'<{type(value).__name__}>'


def check_bounded(value: Any, where: str | Path) -> None:
    """CheckpointError naming ``where`` when ``value``'s non-tensor structure nests deeper than
    MAX_VALUE_DEPTH or holds more than MAX_VALUE_ITEMS values (shared references counted at each use)."""
    pending = [(value, 0)]
    seen = 0
    while pending:
        item, depth = pending.pop()
        seen += 1
        if seen > MAX_VALUE_ITEMS or depth > MAX_VALUE_DEPTH:
            what = f'nests deeper than {MAX_VALUE_DEPTH}' if depth > MAX_VALUE_DEPTH else \
                f'holds more than {MAX_VALUE_ITEMS} values'
            raise CheckpointError(f'{where}: refused: its data {what} (crafted or corrupt file)')
        if isinstance(item, dict):
            pending.extend((v, depth + 1) for v in item.values())
            pending.extend((k, depth + 1) for k in item if not isinstance(k, (str, int)))
        elif isinstance(item, (list, tuple, set, frozenset)):
            pending.extend((v, depth + 1) for v in item)


def _check_expansion(path: Path) -> None:
    """CheckpointError when the state file would expand to far more than its size (before reading it)."""
    size = path.stat().st_size
    limit = min(MAX_STATE_FILE_BYTES, int(MAX_EXPANSION_RATIO * size) + (1 << 20))
    if not zipfile.is_zipfile(path):
        if size > MAX_STATE_FILE_BYTES:
            raise CheckpointError(f'{path}: {size / 1e6:.0f} MB is more than a checkpoint file may hold '
                                  f'({MAX_STATE_FILE_BYTES / 1e6:.0f} MB)')
        return
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f'{path}: cannot be read as a PyTorch checkpoint (truncated or corrupt?): '
                              f'{type(error).__name__}: {error}') from error
    expanded = sum(member.file_size for member in members)
    if len(members) > MAX_ZIP_MEMBERS or expanded > limit:
        raise CheckpointError(f'{path}: refused: its {len(members)} zip members expand to {expanded / 1e6:.0f} MB '
                              f'from {size / 1e6:.1f} MB on disk (limit {limit / 1e6:.0f} MB; torch.save does not '
                              'compress: a crafted or corrupt file)')


def _read_state(path: Path, map_location: str | torch.device = 'cpu') -> dict[str, Any]:
    if not path.is_file():
        present = sorted(p.name for p in path.parent.iterdir()) if path.parent.is_dir() else []
        raise CheckpointError(f'{path}: file missing (folder holds: {", ".join(present) or "nothing"})')
    _check_expansion(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated zip, pickle error, ...: all reported by name
        raise CheckpointError(f'{path}: cannot be read as a PyTorch checkpoint '
                              f'(truncated or corrupt?): {type(error).__name__}: {error}') from error
    if not isinstance(state, dict):
        raise CheckpointError(f'{path}: holds a {type(state).__name__}, not a state dict')
    odd_keys = [key for key in state if not isinstance(key, str)]
    if odd_keys:
        raise CheckpointError(f'{path}: {len(odd_keys)} state-dict keys are not strings (first: '
                              f'{_short(odd_keys[0])}, a {type(odd_keys[0]).__name__}): not a state dict')
    check_bounded(state, path)
    return state


def read_metadata(path: str | Path) -> dict[str, Any]:
    """``hr_depth_ros.json`` as a dict; CheckpointError naming the file when it is too large, not JSON,
    nested too deeply or not an object."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_METADATA_BYTES:
            raise CheckpointError(f'{path}: {size / 1e6:.0f} MB is more than checkpoint metadata may hold '
                                  f'({MAX_METADATA_BYTES / 1e6:.0f} MB)')
        metadata = json.loads(path.read_text())
    except (ValueError, RecursionError) as error:  # RecursionError: JSON nested thousands deep
        raise CheckpointError(f'{path}: not valid JSON: {type(error).__name__}: {str(error)[:200]}') from None
    check_bounded(metadata, path)
    if not isinstance(metadata, dict):
        raise CheckpointError(f'{path}: holds a JSON {type(metadata).__name__}, not an object')
    return metadata


def _listing(keys: list[str]) -> str:
    shown = ', '.join(keys[:MAX_LISTED_KEYS])
    return shown + (f', ... ({len(keys)} in all)' if len(keys) > MAX_LISTED_KEYS else '')


def _network_size(extras: dict[str, Any], path: Path) -> tuple[int, int]:
    """(height, width) stored in encoder.pth: positive multiples of 32 up to MAX_NETWORK_SIDE, else CheckpointError."""
    size = []
    for name in ('height', 'width'):
        value = extras[name]
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, int):
            raise CheckpointError(f'{path}: {name} must be an integer, got {_short(value)} '
                                  f'({type(value).__name__})')
        if not 32 <= value <= MAX_NETWORK_SIDE or value % 32:
            raise CheckpointError(f'{path}: {name}={value} is not a network input size (a multiple of 32 '
                                  f'from 32 to {MAX_NETWORK_SIDE})')
        size.append(value)
    return size[0], size[1]


def check_finite(state: dict[str, Any], path: Path) -> None:
    """CheckpointError naming ``path`` and the first tensors when floating-point weights hold NaN or inf."""
    bad = [key for key, value in state.items()
           if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise CheckpointError(f'{path}: {len(bad)} tensors hold NaN or inf ({_listing(bad)}); '
                              'the weights are unusable (a diverged training run?)')


def detect_architecture(encoder_state: dict[str, Any], decoder_state: dict[str, Any]) -> str:
    """Architecture name from the state-dict keys (and shapes); CheckpointError when unknown."""
    if 'encoder.features.0.0.weight' in encoder_state:
        encoder_kind = 'mobile'
    elif 'encoder.conv1.weight' in encoder_state:
        encoder_kind = 'resnet50' if 'encoder.layer1.0.conv3.weight' in encoder_state else 'resnet18'
        if encoder_kind == 'resnet18' and 'encoder.layer1.2.conv1.weight' in encoder_state:
            raise CheckpointError('ResNet-34 encoders are not supported (keys encoder.layer1.2.*)')
    else:
        raise CheckpointError(f'unrecognised encoder keys: {_listing(sorted(encoder_state))}')
    if any(k.startswith('convs.X_') for k in decoder_state):
        decoder_kind = 'hr_depth'
    elif 'decoder.0.conv.conv.weight' in decoder_state:
        decoder_kind = 'monodepth2'
    else:
        raise CheckpointError(f'unrecognised decoder keys: {_listing(sorted(decoder_state))}')
    names = {('mobile', 'hr_depth'): 'lite_hr_depth', ('resnet18', 'hr_depth'): 'hr_depth',
             ('resnet50', 'hr_depth'): 'hr_depth_resnet50', ('resnet18', 'monodepth2'): 'monodepth2',
             ('resnet50', 'monodepth2'): 'monodepth2_resnet50'}
    if (encoder_kind, decoder_kind) not in names:
        raise CheckpointError(f'a {encoder_kind} encoder with a {decoder_kind} decoder is not a known architecture')
    return names[(encoder_kind, decoder_kind)]


def load_state_strict(module: nn.Module, state: dict[str, Any], path: Path) -> None:
    """Load ``state`` into ``module``; CheckpointError naming ``path`` and the offending keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in own
                  if k in state and hasattr(state[k], 'shape') and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f'missing keys: {_listing(missing)}')
    if unexpected:
        problems.append(f'unexpected keys: {_listing(unexpected)}')
    if mismatched:
        problems.append(f'shape mismatches (file vs network): {_listing(mismatched)}')
    if problems:
        raise CheckpointError(f'{path} does not match {type(module).__name__}: ' + '; '.join(problems))
    module.load_state_dict(state, strict=True)


def load_depth_checkpoint(folder: str | Path, map_location: str | torch.device = 'cpu') -> DepthCheckpoint:
    """Load a checkpoint folder (the authors', monodepth2's or ours) into fresh networks.

    Refused (CheckpointError naming the file): weights holding NaN/inf, and network sizes
    that are not integers, not positive multiples of 32 or above MAX_NETWORK_SIDE.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f'{folder}: checkpoint folder does not exist (expected encoder.pth + depth.pth)')
    encoder_path, decoder_path = folder / ENCODER_FILE, folder / DECODER_FILE
    metadata_path = folder / METADATA_FILE
    metadata = read_metadata(metadata_path) if metadata_path.is_file() else {}
    metric_scale_of(metadata, metadata_path)  # an implausible metric scale is refused before any weights are read
    encoder_state = _read_state(encoder_path, map_location)
    decoder_state = _read_state(decoder_path, map_location)
    extras = {k: encoder_state.pop(k) for k in ENCODER_EXTRA_KEYS if k in encoder_state}
    missing_extras = [k for k in ('height', 'width') if k not in extras]
    if missing_extras:
        raise CheckpointError(f'{encoder_path}: missing keys {", ".join(missing_extras)} '
                              '(the network input size the weights were trained at)')
    try:
        arch = detect_architecture(encoder_state, decoder_state)
    except CheckpointError as error:
        raise CheckpointError(f'{folder}: {error}') from None
    height, width = _network_size(extras, encoder_path)
    check_finite(encoder_state, encoder_path)
    check_finite(decoder_state, decoder_path)
    encoder, decoder = build_depth_model(arch)
    load_state_strict(encoder, encoder_state, encoder_path)
    load_state_strict(decoder, decoder_state, decoder_path)
    encoder.eval()
    decoder.eval()
    return DepthCheckpoint(arch=arch, encoder=encoder, decoder=decoder, height=height,
                           width=width, use_stereo=bool(extras.get('use_stereo', False)),
                           metadata=metadata, path=folder)


def load_extra_state(folder: str | Path, name: str, map_location: str | torch.device = 'cpu') -> dict[str, Any]:
    """A further state file of a checkpoint folder (``pose.pth``, ``adam.pth``, ...)."""
    return _read_state(Path(folder).expanduser() / name, map_location)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _save_file(obj: Any, path: Path) -> None:
    with open(path, 'wb') as stream:
        try:
            torch.save(obj, stream)
        except RuntimeError as error:  # torch reports a full disk as "unexpected pos ..." from its zip writer
            raise OSError(errno.ENOSPC if _free_bytes(path.parent) < (1 << 20) else errno.EIO,
                          f'writing failed (disk full?): {error}', str(path)) from error
        stream.flush()
        os.fsync(stream.fileno())


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62  # unknown: let the write itself tell


def _state_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_state_bytes(v) for v in obj)
    return 0


def check_free_space(folder: Path, states: list[Any], margin: float = 1.2) -> None:
    """OSError (ENOSPC, naming ``folder``) when its file system cannot hold ``states`` (x ``margin``, + 1 MB)."""
    needed = int(margin * sum(_state_bytes(state) for state in states)) + (1 << 20)
    free = _free_bytes(folder)
    if free < needed:
        raise OSError(errno.ENOSPC, f'not enough free disk space for the checkpoint: {needed / 1e6:.1f} MB '
                      f'needed, {free / 1e6:.1f} MB free', str(folder))


def _complete(folder: Path) -> bool:
    """A checkpoint folder written to the end: its metadata (written last, after fsyncing the rest) parses."""
    try:
        read_metadata(folder / METADATA_FILE)
    except (OSError, CheckpointError):
        return False
    return (folder / ENCODER_FILE).is_file() and (folder / DECODER_FILE).is_file()


def recover_checkpoint(folder: str | Path) -> list[str]:
    """Finish or undo an atomic save of ``folder`` that a crash interrupted; sweep its staging folders.

    A crash between the two renames of :func:`save_depth_checkpoint` leaves no ``folder`` but a
    complete ``.NAME.tmp-*`` (the new one) and/or ``.NAME.old-*`` (the previous one): the newest
    complete one is renamed into place. Remaining staging folders (incomplete, or stale) are
    removed. Call only while no save into ``folder`` runs. Returns one line per action taken.
    """
    folder = Path(folder).expanduser()
    if not folder.parent.is_dir():
        return []
    staged = [p for p in folder.parent.glob(f'.{folder.name}.tmp-*') if p.is_dir()]
    previous = [p for p in folder.parent.glob(f'.{folder.name}.old-*') if p.is_dir()]
    actions = []
    if not folder.exists():
        by_age = sorted(staged, key=lambda p: p.stat().st_mtime, reverse=True) + \
            sorted(previous, key=lambda p: p.stat().st_mtime, reverse=True)
        chosen = next((p for p in by_age if _complete(p)), None)
        if chosen is not None:
            os.replace(chosen, folder)
            _fsync_dir(folder.parent)
            kind = 'new' if chosen in staged else 'previous'
            actions.append(f'recovered {folder} from the {kind} checkpoint {chosen.name} left by an interrupted save')
    for leftover in staged + previous:
        if leftover.exists():
            size = sum(f.stat().st_size for f in leftover.rglob('*') if f.is_file())
            shutil.rmtree(leftover, ignore_errors=True)
            actions.append(f'removed the stale staging folder {leftover} ({size / 1e6:.1f} MB)')
    return actions


def save_depth_checkpoint(
    folder: str | Path,
    encoder: nn.Module,
    decoder: nn.Module,
    *,
    arch: str,
    height: int,
    width: int,
    use_stereo: bool = False,
    metadata: dict[str, Any] | None = None,
    extra_state: dict[str, dict[str, Any]] | None = None,
    weights_dtype: torch.dtype | None = None,
) -> Path:
    """Write a checkpoint folder atomically and return its path.

    Everything is written to a temporary sibling folder and fsynced; only then is an existing
    folder moved aside, the new one renamed into place and the old one deleted. A failure at
    any point leaves the previous complete checkpoint (or nothing) under ``folder``.
    ``weights_dtype`` (e.g. ``torch.float16``) stores floating-point weights in that type to
    halve the size of a shipped checkpoint; loading casts them back to the network's type.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f'unknown architecture {arch!r}; choose one of {", ".join(ARCHITECTURES)}')
    folder = Path(folder).expanduser()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.tmp-', dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; a checkpoint folder is an ordinary folder
    try:
        def portable(module: nn.Module) -> dict[str, Any]:
            state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
            if weights_dtype is not None:
                state = {k: v.to(weights_dtype) if v.is_floating_point() else v for k, v in state.items()}
            return state

        encoder_state = portable(encoder)
        encoder_state.update(height=int(height), width=int(width), use_stereo=bool(use_stereo))
        check_free_space(folder.parent, [encoder_state, decoder.state_dict(), extra_state or {}])
        _save_file(encoder_state, staging / ENCODER_FILE)
        _save_file(portable(decoder), staging / DECODER_FILE)
        for name, state in (extra_state or {}).items():
            if Path(name).name != name or name in (ENCODER_FILE, DECODER_FILE, METADATA_FILE):
                raise ValueError(f'invalid extra state file name {name!r}')
            _save_file(state, staging / name)
        info = dict(metadata or {})
        info.update(arch=arch, height=int(height), width=int(width), use_stereo=bool(use_stereo),
                    format='hr_depth_ros checkpoint 1 (authors\' encoder.pth/depth.pth + this file)')
        with open(staging / METADATA_FILE, 'w') as stream:
            json.dump(info, stream, indent=2, default=str)
            stream.flush()
            os.fsync(stream.fileno())
        _fsync_dir(staging)
        old = None
        if folder.exists():
            old = folder.parent / f'.{folder.name}.old-{os.getpid()}-{staging.name[-8:]}'
            os.replace(folder, old)
        os.replace(staging, folder)
        _fsync_dir(folder.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
