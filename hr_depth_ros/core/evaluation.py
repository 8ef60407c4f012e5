"""KITTI-style depth evaluation (Eigen et al. 2014 metrics, as monodepth2 / HR-Depth report them).

Constants follow monodepth2's ``evaluate_depth.py`` (which HR-Depth's evaluation keeps):
depths are capped to ``[1e-3, 80]`` m, monocular predictions are median-scaled to the
ground truth, and the Garg crop (or the Eigen crop) selects the evaluated region.
"""
from __future__ import annotations

import numpy as np

MIN_DEPTH = 1e-3
MAX_DEPTH = 80.0
METRIC_NAMES = ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'a2', 'a3')


def compute_depth_errors(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The seven standard metrics between matching 1-D arrays of positive depths."""
    gt = np.asarray(gt, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    if gt.shape != pred.shape or gt.size == 0:
        raise ValueError(f'need equal, non-empty depth arrays; got {gt.shape} and {pred.shape}')
    if (gt <= 0).any() or (pred <= 0).any():
        raise ValueError('depths must be positive (mask and clamp before computing errors)')
    ratio = np.maximum(gt / pred, pred / gt)
    return {
        'abs_rel': float(np.mean(np.abs(gt - pred) / gt)),
        'sq_rel': float(np.mean((gt - pred) ** 2 / gt)),
        'rmse': float(np.sqrt(np.mean((gt - pred) ** 2))),
        'rmse_log': float(np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2))),
        'a1': float(np.mean(ratio < 1.25)),
        'a2': float(np.mean(ratio < 1.25 ** 2)),
        'a3': float(np.mean(ratio < 1.25 ** 3)),
    }


def crop_mask(height: int, width: int, crop: str | None) -> np.ndarray:
    """Boolean mask of the evaluated region.

    ``'garg'``: rows 0.40810811-0.99189189 and columns 0.03594771-0.96405229 of the image
    (Garg et al. 2016, used by monodepth2 for the Eigen split); ``'eigen'``: rows
    0.3324324-0.91351351, columns 0.0359477-0.96405229 (Eigen et al. 2014); None: all.
    """
    mask = np.zeros((height, width), dtype=bool)
    if crop is None:
        mask[:] = True
        return mask
    fractions = {
        'garg': (0.40810811, 0.99189189, 0.03594771, 0.96405229),
        'eigen': (0.3324324, 0.91351351, 0.0359477, 0.96405229),
    }
    if crop not in fractions:
        raise ValueError(f'unknown crop {crop!r}; use "garg", "eigen" or None')
    top, bottom, left, right = fractions[crop]
    mask[int(top * height):int(bottom * height), int(left * width):int(right * width)] = True
    return mask


def evaluate_depth(
    gt_depth: np.ndarray,
    pred_depth: np.ndarray,
    min_depth: float = MIN_DEPTH,
    max_depth: float = MAX_DEPTH,
    median_scaling: bool = True,
    crop: str | None = None,
) -> dict[str, float]:
    """Metrics of one predicted depth map against its ground truth (same shape).

    Pixels count where the ground truth is finite and within ``(min_depth, max_depth)``
    and inside ``crop``. With ``median_scaling`` (monocular models) the prediction is
    multiplied by ``median(gt) / median(pred)``; the returned dict then has that factor as
    ``scale_ratio`` (1.0 otherwise). Predictions are clamped to ``[min_depth, max_depth]``.
    """
    gt_depth = np.asarray(gt_depth, dtype=np.float64)
    pred_depth = np.asarray(pred_depth, dtype=np.float64)
    if gt_depth.shape != pred_depth.shape:
        raise ValueError(f'ground truth {gt_depth.shape} and prediction {pred_depth.shape} differ in shape')
    valid = np.isfinite(gt_depth) & (gt_depth > min_depth) & (gt_depth < max_depth)
    valid &= np.isfinite(pred_depth) & (pred_depth > 0)
    valid &= crop_mask(*gt_depth.shape[-2:], crop) if gt_depth.ndim >= 2 else True
    if not valid.any():
        raise ValueError('no valid ground-truth pixels to evaluate')
    gt = gt_depth[valid]
    pred = pred_depth[valid]
    ratio = 1.0
    if median_scaling:
        ratio = float(np.median(gt) / np.median(pred))
        pred = pred * ratio
    pred = np.clip(pred, min_depth, max_depth)
    errors = compute_depth_errors(gt, pred)
    errors['scale_ratio'] = ratio
    return errors


def mean_errors(per_frame: list[dict[str, float]]) -> dict[str, float]:
    """Average of per-frame metric dicts (as KITTI evaluation averages over images)."""
    if not per_frame:
        raise ValueError('no frames to average')
    return {key: float(np.mean([frame[key] for frame in per_frame])) for key in per_frame[0]}
