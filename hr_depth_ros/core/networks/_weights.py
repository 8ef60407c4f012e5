"""Loading ImageNet weights from a local file (this package never downloads anything)."""
from __future__ import annotations

from pathlib import Path

import torch


def load_local_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Read a state dict saved with ``torch.save``; a clear error when the file is missing or bad."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f'{what}: pretrained weights file {path} does not exist. hr_depth_ros never downloads '
            'weights; download them on a machine with internet and pass the local path.')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f'{what}: cannot read pretrained weights {path}: {error}') from error
    if isinstance(state, dict) and 'state_dict' in state and isinstance(state['state_dict'], dict):
        state = state['state_dict']
    if not isinstance(state, dict):
        raise ValueError(f'{what}: {path} does not hold a state dict')
    return state
