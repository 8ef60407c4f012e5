"""KITTI metrics on hand-computed cases."""
import numpy as np
import pytest

from hr_depth_ros.core.evaluation import compute_depth_errors, crop_mask, evaluate_depth, mean_errors


def test_perfect_prediction_has_zero_error():
    gt = np.array([1.0, 2.0, 10.0, 50.0])
    errors = compute_depth_errors(gt, gt.copy())
    assert errors['abs_rel'] == 0.0 and errors['rmse'] == 0.0 and errors['rmse_log'] == 0.0
    assert errors['a1'] == errors['a2'] == errors['a3'] == 1.0


def test_hand_computed_metrics():
    gt = np.array([2.0, 4.0])
    pred = np.array([1.0, 5.0])
    errors = compute_depth_errors(gt, pred)
    # |2-1|/2 = 0.5, |4-5|/4 = 0.25
    assert errors['abs_rel'] == pytest.approx(0.375)
    # (1/2 + 1/4) / 2
    assert errors['sq_rel'] == pytest.approx(0.375)
    assert errors['rmse'] == pytest.approx(1.0)
    assert errors['rmse_log'] == pytest.approx(np.sqrt((np.log(2) ** 2 + np.log(0.8) ** 2) / 2))
    # ratios 2.0 and 1.25: a1 counts none (strict <), a2 (1.5625) and a3 (1.953) count 1.25 only
    assert errors['a1'] == 0.0
    assert errors['a2'] == 0.5
    assert errors['a3'] == 0.5


def test_median_scaling_removes_global_scale():
    rng = np.random.default_rng(0)
    gt = rng.uniform(2.0, 60.0, size=(20, 30))
    errors = evaluate_depth(gt, gt / 7.0, median_scaling=True)
    assert errors['abs_rel'] == pytest.approx(0.0, abs=1e-12)
    assert errors['scale_ratio'] == pytest.approx(7.0)
    unscaled = evaluate_depth(gt, gt / 7.0, median_scaling=False)
    assert unscaled['abs_rel'] == pytest.approx(6.0 / 7.0)


def test_invalid_ground_truth_and_range_are_ignored():
    gt = np.array([[np.nan, 0.0, 5.0, 100.0]])
    pred = np.array([[1.0, 1.0, 5.0, 1.0]])
    errors = evaluate_depth(gt, pred, median_scaling=False)
    assert errors['abs_rel'] == 0.0  # only the 5 m pixel counts
    with pytest.raises(ValueError, match='no valid'):
        evaluate_depth(np.full((2, 2), np.nan), np.ones((2, 2)))


def test_prediction_clamped_to_max_depth():
    gt = np.array([[70.0]])
    errors = evaluate_depth(gt, np.array([[500.0]]), median_scaling=False)
    assert errors['abs_rel'] == pytest.approx(10.0 / 70.0)


def test_garg_crop_region():
    mask = crop_mask(375, 1242, 'garg')
    rows = np.where(mask.any(axis=1))[0]
    cols = np.where(mask.any(axis=0))[0]
    assert rows[0] == int(0.40810811 * 375) and rows[-1] == int(0.99189189 * 375) - 1
    assert cols[0] == int(0.03594771 * 1242) and cols[-1] == int(0.96405229 * 1242) - 1
    assert crop_mask(4, 4, None).all()
    with pytest.raises(ValueError):
        crop_mask(4, 4, 'nope')


def test_shape_mismatch_and_mean():
    with pytest.raises(ValueError, match='shape'):
        evaluate_depth(np.ones((2, 2)), np.ones((2, 3)))
    assert mean_errors([{'abs_rel': 0.1}, {'abs_rel': 0.3}])['abs_rel'] == pytest.approx(0.2)
