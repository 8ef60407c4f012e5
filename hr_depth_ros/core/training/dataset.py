"""Training samples as tensors: the torch Dataset the trainer loads (ROS-free)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import ColorJitter
from torchvision.transforms import functional as TF

from hr_depth_ros.core.geometry import intrinsics_4x4, relative_transform
from hr_depth_ros.core.training.frame_store import FrameStore

__all__ = ['TripletDataset', 'FRAME_OFFSETS']

FRAME_OFFSETS = (0, -1, 1)          # monodepth2 frame_ids: target first, then the sources
MIRROR_X = np.diag([-1.0, 1.0, 1.0, 1.0])   # a horizontal image flip mirrors the camera's x axis
JITTER = dict(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1)  # monodepth2 color_aug


class TripletDataset(Dataset):
    """Samples as tensors (monodepth2 layout, frames stacked in :data:`FRAME_OFFSETS` order).

    Items: ``color`` 3 x 3 x H x W (un-augmented, for the loss), ``color_aug`` (network inputs),
    ``K`` / ``inv_K`` 4 x 4 float32 at training resolution, ``depth_gt`` 1 x H x W (NaN when none),
    ``T`` 2 x 4 x 4 float32: ``T_target_to_source`` from TF for the sources -1 and +1 (identity
    when unknown), ``has_pose`` and ``index``. ``augment`` turns on colour jitter and horizontal
    flips (p = 0.5 each, as monodepth2); a flip mirrors K's principal point and the poses' x axis.
    ``color`` and ``color_aug`` are float in [0, 1], or with ``uint8`` 0-255 uint8 (jitter rounded):
    a quarter of the bytes to pin and copy to a GPU, scaled there.
    ``transforms``: N x 2 x 4 x 4 ``T_target_to_source`` by centre frame, instead of TF (two-view geometry).
    """

    def __init__(self, store: FrameStore, samples: Sequence[tuple[int, int, int]], augment: bool = False,
                 uint8: bool = False, transforms: np.ndarray | None = None) -> None:
        self.store = store
        self.transforms = transforms
        self.samples = list(samples)
        self.augment = augment
        self.uint8 = uint8
        self.jitter = ColorJitter(**JITTER)

    def __len__(self) -> int:
        return len(self.samples)

    def _jitter(self, images: torch.Tensor) -> torch.Tensor:
        order, brightness, contrast, saturation, hue = ColorJitter.get_params(
            self.jitter.brightness, self.jitter.contrast, self.jitter.saturation, self.jitter.hue)
        for fn in order.tolist():
            if fn == 0:
                images = TF.adjust_brightness(images, brightness)
            elif fn == 1:
                images = TF.adjust_contrast(images, contrast)
            elif fn == 2:
                images = TF.adjust_saturation(images, saturation)
            else:
                images = TF.adjust_hue(images, hue)
        return images

    def __getitem__(self, item: int) -> dict[str, Any]:
        prev, centre, nxt = self.samples[item]
        by_offset = {0: centre, -1: prev, 1: nxt}
        frames = np.stack([self.store.image(by_offset[o]) for o in FRAME_OFFSETS])
        color = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
        K = self.store.K[int(self.store.segment[centre])].copy()
        has_pose = self.store.has_poses((prev, centre, nxt))
        T = np.tile(np.eye(4), (2, 1, 1))
        if self.transforms is not None:
            has_pose = bool(np.isfinite(self.transforms[centre]).all())
            T = self.transforms[centre] if has_pose else T
        elif has_pose:
            poses = self.store.poses
            T = np.stack([relative_transform(poses[centre], poses[source]) for source in (prev, nxt)])
        gt = self.store.depth(centre)
        depth_gt = (torch.from_numpy(gt.copy())[None] if gt is not None
                    else torch.full((1, self.store.height, self.store.width), float('nan')))
        color_aug = color
        if self.augment:
            if torch.rand(()) < 0.5:
                color = color.flip(-1)
                depth_gt = depth_gt.flip(-1)
                K[0, 2] = self.store.width - 1 - K[0, 2]
                T = MIRROR_X @ T @ MIRROR_X  # the same motion seen in the mirrored image
            color_aug = self._jitter(color) if torch.rand(()) < 0.5 else color
        K4 = intrinsics_4x4(torch.from_numpy(K).float())[0]
        if self.uint8:
            color, color_aug = (images.mul(255.0).round_().to(torch.uint8) for images in (color, color_aug))
        return {'color': color, 'color_aug': color_aug.contiguous(), 'K': K4, 'inv_K': torch.linalg.inv(K4),
                'depth_gt': depth_gt, 'T': torch.from_numpy(T).float(), 'has_pose': has_pose, 'index': item}
