"""Self-supervised monocular depth losses (monodepth2, Godard et al. ICCV 2019; used unchanged by HR-Depth).

Constants follow monodepth2's ``layers.SSIM`` and ``trainer.compute_losses``:

- SSIM on 3x3 windows with reflection padding, ``C1 = 0.01**2``, ``C2 = 0.03**2``; the loss is
  ``clamp((1 - SSIM) / 2, 0, 1)``.
- Photometric error ``0.85 * SSIM + 0.15 * L1`` averaged over colour channels.
- Per-pixel minimum over the source frames' reprojection errors, auto-masking by also taking the
  minimum over the identity (un-warped) errors, which get Gaussian noise of std ``1e-5`` to break ties.
- Edge-aware smoothness on mean-normalised disparity, weight ``1e-3`` divided by ``2 ** scale``.
- Four scales, disparities upsampled to full resolution before warping ("v1_multiscale" off).

Distillation (Lite-HR-Depth): the HR-Depth paper trains Lite-HR-Depth with a teacher; its exact
distillation loss could not be recovered from the sources reachable here, so this package assumes
(and documents) the common pseudo-label form: teacher = a frozen depth network (by default HR-Depth
ResNet-18 1280x384), its scale-0 sigmoid disparity is a pseudo-label, and the student's disparity at
every scale (upsampled to full resolution) is pulled towards it with an L1 loss of configurable weight.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ['SSIM_C1', 'SSIM_C2', 'SSIM_WEIGHT', 'SMOOTHNESS_WEIGHT', 'IDENTITY_NOISE_STD',
           'box_mean_3x3', 'ssim_loss', 'photometric_error', 'min_reprojection', 'smoothness_loss',
           'distillation_loss', 'upsample_to', 'depth_label_loss']

SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2
SSIM_WEIGHT = 0.85            # photometric error = 0.85 * SSIM + 0.15 * L1 (monodepth2)
SMOOTHNESS_WEIGHT = 1e-3      # monodepth2 --disparity_smoothness, divided by 2 ** scale
IDENTITY_NOISE_STD = 1e-5     # monodepth2: breaks ties between identity and reprojection errors


def box_mean_3x3(image: torch.Tensor) -> torch.Tensor:
    """The mean of every 3x3 window of a reflection-padded ``image`` (B x C x H x W -> same size), as
    ``avg_pool2d(pad(image), 3, 1)`` computes it (equal to float rounding), as two sums of shifted slices:
    PyTorch's CPU ``avg_pool2d`` with stride 1 takes ~11x longer forward and ~3.5x forward + backward
    (one thread, 4 x 3 x 96 x 320), and SSIM is most of a fine-tuning step's loss."""
    padded = F.pad(image, (1, 1, 1, 1), mode='reflect')
    rows = padded[..., :-2] + padded[..., 1:-1] + padded[..., 2:]
    return (rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]) / 9.0


def ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``clamp((1 - SSIM(x, y)) / 2, 0, 1)`` (B x C x H x W) on 3x3 reflection-padded windows."""
    channels = x.shape[1]
    means = box_mean_3x3(torch.cat([x, y, x * x, y * y, x * y], 1))  # one pass over the five window sums
    mu_x, mu_y, xx, yy, xy = means.split(channels, 1)
    sigma_x = xx - mu_x ** 2
    sigma_y = yy - mu_y ** 2
    sigma_xy = xy - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    denominator = (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    return torch.clamp((1 - numerator / denominator) / 2, 0, 1)


def photometric_error(pred: torch.Tensor, target: torch.Tensor, ssim_weight: float = SSIM_WEIGHT) -> torch.Tensor:
    """``ssim_weight * SSIM + (1 - ssim_weight) * L1``, averaged over channels -> B x 1 x H x W."""
    l1 = (target - pred).abs().mean(1, keepdim=True)
    if ssim_weight == 0:
        return l1
    return ssim_weight * ssim_loss(pred, target).mean(1, keepdim=True) + (1 - ssim_weight) * l1


def min_reprojection(reprojection_errors: Sequence[torch.Tensor],
                     identity_errors: Sequence[torch.Tensor] | None = None,
                     noise_std: float = IDENTITY_NOISE_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel minimum reprojection with auto-masking (monodepth2).

    ``reprojection_errors``: one B x 1 x H x W error per source frame (warped source vs target).
    ``identity_errors``: the same for the un-warped sources (None disables auto-masking).
    Returns ``(per-pixel loss B x 1 x H x W, mask B x 1 x H x W bool)`` where the mask is True for
    pixels whose minimum came from a reprojection (the ones that train the networks).
    """
    reprojection = torch.cat(list(reprojection_errors), 1)
    if identity_errors is None:
        loss, _ = reprojection.min(1, keepdim=True)
        return loss, torch.ones_like(loss, dtype=torch.bool)
    identity = torch.cat(list(identity_errors), 1)
    if noise_std > 0:
        identity = identity + torch.randn_like(identity) * noise_std
    combined = torch.cat([identity, reprojection], 1)
    loss, index = combined.min(1, keepdim=True)
    return loss, index >= identity.shape[1]


def smoothness_loss(disp: torch.Tensor, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Edge-aware smoothness of ``disp`` (B x 1 x H x W) given ``image`` (B x 3 x H x W) of the same size.

    With ``normalize`` the disparity is divided by its per-image mean first (monodepth2), so the
    loss does not reward shrinking the disparity.
    """
    if normalize:
        disp = disp / (disp.mean(dim=(2, 3), keepdim=True) + 1e-7)
    grad_disp_x = (disp[:, :, :, :-1] - disp[:, :, :, 1:]).abs()
    grad_disp_y = (disp[:, :, :-1, :] - disp[:, :, 1:, :]).abs()
    grad_img_x = (image[:, :, :, :-1] - image[:, :, :, 1:]).abs().mean(1, keepdim=True)
    grad_img_y = (image[:, :, :-1, :] - image[:, :, 1:, :]).abs().mean(1, keepdim=True)
    return (grad_disp_x * torch.exp(-grad_img_x)).mean() + (grad_disp_y * torch.exp(-grad_img_y)).mean()


def upsample_to(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize (align_corners=False, as monodepth2 upsamples disparities) to ``height x width``."""
    if tensor.shape[-2:] == (height, width):
        return tensor
    return F.interpolate(tensor, size=(height, width), mode='bilinear', align_corners=False)


def distillation_loss(student_disp: torch.Tensor, teacher_disp: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean L1 between the student's sigmoid disparity and the teacher's pseudo-label (resized to match).

    See the module docstring for why this form was chosen. ``mask`` (bool, broadcastable) limits
    the pixels that count.
    """
    teacher = upsample_to(teacher_disp.detach(), *student_disp.shape[-2:])
    error = (student_disp - teacher).abs()
    if mask is None:
        return error.mean()
    mask = mask.expand_as(error)
    return error[mask].mean() if mask.any() else error.sum() * 0.0


def depth_label_loss(depth: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean ``|log depth - log truth|`` over the pixels where ``truth`` (metres, NaN / 0 = no data, the
    size of ``depth``) has data: a depth sensor's image as a label; 0 (still in the graph) without any."""
    valid = torch.isfinite(truth) & (truth > 0)
    if not valid.any():
        return depth.sum() * 0.0
    return (torch.log(depth[valid]) - torch.log(truth[valid])).abs().mean()
