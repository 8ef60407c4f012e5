"""Known-answer tests for the self-supervised losses."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hr_depth_ros.core.training.losses import (SSIM_C1, SSIM_C2, distillation_loss, min_reprojection,
                                               photometric_error, smoothness_loss, ssim_loss)


def _reference_ssim_loss(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Direct per-pixel loop: 3x3 windows over reflection-padded images, (1 - SSIM) / 2 clamped."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode='reflect')
    yp = np.pad(y, ((0, 0), (1, 1), (1, 1)), mode='reflect')
    out = np.zeros_like(x)
    for c in range(x.shape[0]):
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                wx = xp[c, i:i + 3, j:j + 3].ravel()
                wy = yp[c, i:i + 3, j:j + 3].ravel()
                mx, my = wx.mean(), wy.mean()
                vx, vy = ((wx - mx) ** 2).mean(), ((wy - my) ** 2).mean()
                cov = ((wx - mx) * (wy - my)).mean()
                s = ((2 * mx * my + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mx ** 2 + my ** 2 + SSIM_C1) * (vx + vy + SSIM_C2))
                out[c, i, j] = np.clip((1 - s) / 2, 0, 1)
    return out


def test_ssim_matches_direct_computation():
    rng = np.random.default_rng(0)
    x = rng.random((3, 6, 7))
    y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1)
    expected = _reference_ssim_loss(x, y)
    got = ssim_loss(torch.from_numpy(x)[None], torch.from_numpy(y)[None])[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert expected.max() > 0.05  # the images really differ


def test_identical_images_have_zero_photometric_error():
    image = torch.rand(2, 3, 12, 16)
    assert photometric_error(image, image.clone()).abs().max().item() < 1e-6
    other = torch.rand(2, 3, 12, 16)
    assert photometric_error(other, image).mean().item() > 0.1


def test_photometric_error_weights():
    a = torch.zeros(1, 3, 8, 8)
    b = torch.full((1, 3, 8, 8), 0.5)  # constant images: SSIM term only from the means
    l1_only = photometric_error(a, b, ssim_weight=0.0)
    assert torch.allclose(l1_only, torch.full_like(l1_only, 0.5))
    mixed = photometric_error(a, b)
    expected = 0.85 * ssim_loss(a, b).mean(1, keepdim=True) + 0.15 * 0.5
    assert torch.allclose(mixed, expected)


def test_min_reprojection_picks_the_minimum():
    errors = [torch.full((1, 1, 2, 2), 0.3), torch.tensor([[[[0.1, 0.5], [0.2, 0.9]]]])]
    loss, mask = min_reprojection(errors)
    assert torch.allclose(loss, torch.tensor([[[[0.1, 0.3], [0.2, 0.3]]]]))
    assert mask.all()


def test_automask_masks_static_sequence_everywhere():
    # A static camera: identity errors are zero, so no reprojection can beat them.
    target = torch.rand(2, 3, 10, 12)
    sources = [target.clone(), target.clone()]
    warped = [torch.roll(s, 1, dims=3) for s in sources]  # any warp of a static scene is no better
    reprojection = [photometric_error(w, target) for w in warped]
    identity = [photometric_error(s, target) for s in sources]
    torch.manual_seed(0)
    loss, mask = min_reprojection(reprojection, identity)
    assert not mask.any()
    assert loss.abs().max().item() < 1e-4


def test_automask_keeps_pixels_where_reprojection_wins():
    identity = [torch.full((1, 1, 3, 3), 0.5)] * 2
    reprojection = [torch.full((1, 1, 3, 3), 0.1), torch.full((1, 1, 3, 3), 0.7)]
    loss, mask = min_reprojection(reprojection, identity)
    assert mask.all()
    assert torch.allclose(loss, torch.full_like(loss, 0.1))


def test_smoothness_zero_on_constant_disparity_and_edge_aware():
    image = torch.rand(1, 3, 16, 16)
    assert smoothness_loss(torch.full((1, 1, 16, 16), 0.3), image).item() == pytest.approx(0.0, abs=1e-7)
    ramp = torch.linspace(0.1, 1.0, 16).repeat(1, 1, 16, 1)
    flat = torch.zeros(1, 3, 16, 16)
    edges = torch.zeros(1, 3, 16, 16)
    edges[..., ::2] = 1.0  # strong image gradients everywhere along x
    assert smoothness_loss(ramp, flat).item() > smoothness_loss(ramp, edges).item() > 0


def test_smoothness_is_scale_invariant_when_normalised():
    image = torch.rand(1, 3, 8, 8)
    disp = torch.rand(1, 1, 8, 8) + 0.1
    assert smoothness_loss(disp, image).item() == pytest.approx(smoothness_loss(disp * 7, image).item(), rel=1e-5)


def test_distillation_loss_zero_for_matching_teacher_and_resizes():
    teacher = torch.full((2, 1, 8, 8), 0.4)
    assert distillation_loss(torch.full((2, 1, 16, 16), 0.4), teacher).item() == pytest.approx(0.0, abs=1e-7)
    assert distillation_loss(torch.full((2, 1, 4, 4), 0.1), teacher).item() == pytest.approx(0.3, abs=1e-6)


def test_box_mean_is_the_reflection_padded_average_pool_with_its_gradient():
    """SSIM's 3x3 window means (slice sums, for speed) equal avg_pool2d over the reflection-padded image,
    values and gradients, at the edges too."""
    import torch.nn.functional as F

    from hr_depth_ros.core.training.losses import box_mean_3x3

    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 7, 11, generator=generator, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, 3, 7, 11, generator=generator, dtype=torch.float64)
    ours = box_mean_3x3(image)
    reference = F.avg_pool2d(F.pad(image, (1, 1, 1, 1), mode='reflect'), 3, 1)
    assert ours.shape == image.shape
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), image)
    (grad_reference,) = torch.autograd.grad((reference * weights).sum(), image)
    torch.testing.assert_close(grad_ours, grad_reference, rtol=1e-12, atol=1e-12)


def test_depth_label_loss_is_the_mean_log_error_where_the_label_has_data():
    from hr_depth_ros.core.training.losses import depth_label_loss

    depth = torch.tensor([[[[2.0, 1.0, 4.0, 3.0]]]], requires_grad=True)
    truth = torch.tensor([[[[1.0, float('nan'), 4.0, 0.0]]]])  # NaN and 0: no data
    loss = depth_label_loss(depth, truth)
    assert loss.item() == pytest.approx(math.log(2.0) / 2)
    loss.backward()
    assert depth.grad[0, 0, 0, 1] == 0 and depth.grad[0, 0, 0, 3] == 0 and depth.grad[0, 0, 0, 0] > 0
    empty = depth_label_loss(depth, torch.full_like(truth, float('nan')))
    assert empty.item() == 0 and empty.requires_grad  # a batch without labels still back-propagates
