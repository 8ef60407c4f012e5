"""The per-pixel metric scale estimate (median of per-pixel best scales under TF poses)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hr_depth_ros.core.training.scale import median_pixel_scale


def test_median_of_per_pixel_scales_on_known_curves():
    """600 pixels whose error is lowest at their own scale (around 7, some at 5 or 10: a depth of the
    wrong shape), 400 that match by chance anywhere: the median follows the informative pixels, and
    chance alone stays at the centre it was given instead of drifting (the grid is even in flow)."""
    rng = np.random.default_rng(0)
    own = np.concatenate([np.full(400, 7.0), np.full(100, 5.0), np.full(100, 10.0)])
    noise = rng.uniform(0.5, 1.0, size=(200, 400))  # a fixed random error per (scale, pixel): texture-less

    def errors_at(scale: float) -> np.ndarray:
        informative = 0.1 + (1.0 / scale - 1.0 / own) ** 2 * 50
        column = int(abs(hash(round(scale, 9))) % 200)
        return np.concatenate([informative, noise[column]])

    identity = np.full(1000, 2.0)
    result = median_pixel_scale(errors_at, identity, centre=4.0, spread=1.0)
    assert result.scale == pytest.approx(7.0, rel=0.05) and result.pixels > 600
    chance = median_pixel_scale(lambda s: noise[int(abs(hash(round(s, 9))) % 200)], np.full(400, 2.0), 3.0, 0.5)
    assert chance.scale == pytest.approx(3.0, rel=0.15)
    with pytest.raises(ValueError):
        median_pixel_scale(errors_at, identity, centre=-1.0)


def test_median_pixel_scale_finds_a_known_factor_on_a_drive(tmp_path):
    """True depth divided by 7 under the drive's TF poses: the per-pixel median says 7."""
    from hr_depth_ros.core.training.data import DataConfig, TripletDataset, prepare_data
    from hr_depth_ros.core.training.trainer import SOURCE_OFFSETS, reprojection_loss
    from hr_depth_ros.core.training.losses import photometric_error
    from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag

    bag = write_synthetic_bag(tmp_path / 'drive', frames=10, width=160, height=64, seed=5)
    data = prepare_data(DataConfig(bags=[bag], width=160, height=64, gt_depth_topic='/camera/depth_gt',
                                   val_fraction=0.0, min_motion=0.0))
    try:
        batch = torch.utils.data.default_collate([TripletDataset(data.store, data.train)[i] for i in (1, 3, 5)])
    finally:
        data.close()
    valid = torch.isfinite(batch['depth_gt'])
    units = torch.nan_to_num(batch['depth_gt'], nan=100.0) / 7.0
    transforms = {offset: batch['T'][:, j] for j, offset in enumerate(SOURCE_OFFSETS)}
    color = batch['color']
    identity = torch.cat([photometric_error(color[:, j], color[:, 0]) for j in (1, 2)], 1).min(1, keepdim=True).values

    def errors_at(scale: float) -> np.ndarray:
        per_pixel, _ = reprojection_loss(color, units * scale, batch['K'], transforms, None)
        return per_pixel[valid].numpy()

    result = median_pixel_scale(errors_at, identity[valid].numpy(), centre=12.0, spread=0.9)
    assert result.scale == pytest.approx(7.0, rel=0.05)


def test_depth_headroom_warns_when_the_scene_reaches_an_end_of_the_representable_range():
    """A street checkpoint (0.1-100 units) scaled x5 for a desk at 0.55-4 m: the near end (0.5 m) is within
    the headroom and named with the fix; a scene well inside the range gets no warning."""
    from hr_depth_ros.core.training.scale import HEADROOM, depth_headroom

    desk = np.linspace(0.55, 4.0, 1000) / 5.0  # network depths at scale 1
    near = depth_headroom(desk, 5.0, 0.1, 100.0)
    assert near['representable_m'] == [0.5, 500.0]
    assert near['near_m'] == pytest.approx(0.585, rel=0.02) and near['far_m'] == pytest.approx(3.97, rel=0.02)
    assert near['near_m'] < HEADROOM * 0.5 and '--min-depth' in near['warning'] and '0.5 m' in near['warning']
    assert depth_headroom(desk, 5.0, 0.01, 100.0)['warning'] is None
    far = depth_headroom(np.array([50.0, 80.0, 90.0, np.nan, -1.0]), 1.0, 0.1, 100.0)
    assert '--max-depth' in far['warning'] and far['near_m'] == pytest.approx(50.6, rel=0.01)
    assert depth_headroom(np.array([np.nan]), 1.0, 0.1, 100.0)['warning'] is None
