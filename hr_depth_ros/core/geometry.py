"""Camera geometry shared by training, the node's point clouds and the synthetic-data tests.

ROS-free (NumPy + torch). This module is the ONE implementation of back-projection and
projection in the package: :func:`pixel_rays` (NumPy) and :class:`BackprojectDepth` (torch)
are built on the same pixel grid (:func:`pixel_grid`), so point clouds and training agree.

Conventions
-----------
- Camera frame: REP 103 optical (z forward, x right, y down). Depth is z (metres), not range.
- Pixel coordinates: the integer pixel ``(u, v)`` is the CENTRE of column ``u``, row ``v``
  (OpenCV / ROS CameraInfo convention). An image of width ``W`` spans ``[-0.5, W - 0.5]``.
  Hence resizing by ``sx`` maps ``u -> (u + 0.5) * sx - 0.5`` (see :func:`scale_intrinsics`).
- Normalised intrinsics (monodepth2 style, fractions of the image size) measure the principal
  point from the image's left/top EDGE: ``cx_n = (cx + 0.5) / W``. So ``cx_n = 0.5`` is the
  exact image centre at every resolution, and
  ``scale_intrinsics(K, sx, sy) == pixel_intrinsics(normalized_intrinsics(K, W, H), W*sx, H*sy)``.
- Transforms ``T_target_to_src`` (4x4) map points in the target camera frame to the source
  camera frame: ``X_src = T @ X_tgt``. With camera-to-world poses,
  ``T_target_to_src = inv(pose_src) @ pose_tgt``.
- Sampling coordinates for ``grid_sample`` are normalised with ``u / (W - 1) * 2 - 1``, which
  matches ``align_corners=True`` (what monodepth2's normalisation assumes; it was written for
  torch 0.4 whose grid_sample behaved as align_corners=True). :func:`warp_image` uses exactly
  that pair, so a pixel warped onto itself samples itself.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    'disp_to_depth',
    'scale_intrinsics',
    'normalized_intrinsics',
    'pixel_intrinsics',
    'pixel_grid',
    'pixel_rays',
    'depth_to_points',
    'BackprojectDepth',
    'Project3D',
    'rot_from_axisangle',
    'get_translation_matrix',
    'transformation_from_parameters',
    'intrinsics_4x4',
    'warp_coordinates',
    'warp_image',
    'quaternion_from_matrix',
    'matrix_from_quaternion',
    'pose_matrix',
    'relative_transform',
]


def disp_to_depth(disp: Any, min_depth: float = 0.1, max_depth: float = 100.0) -> tuple[Any, Any]:
    """Sigmoid disparity -> (scaled disparity, depth) as monodepth2 does (NumPy or torch).

    ``scaled = 1/max_depth + (1/min_depth - 1/max_depth) * disp`` and ``depth = 1 / scaled``,
    so ``disp`` in ``[0, 1]`` gives depth in ``[min_depth, max_depth]``.
    """
    if not 0 < min_depth < max_depth:
        raise ValueError(f'need 0 < min_depth < max_depth, got {min_depth}, {max_depth}')
    min_disp = 1.0 / max_depth
    max_disp = 1.0 / min_depth
    scaled_disp = min_disp + (max_disp - min_disp) * disp
    depth = 1.0 / scaled_disp
    return scaled_disp, depth


def _as_K(K: Any) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f'K must be 3x3, got shape {K.shape}')
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f'K must be finite with positive fx, fy, got {K.tolist()}')
    return K


def scale_intrinsics(K: Any, sx: float, sy: float) -> np.ndarray:
    """K of the same camera after resizing the image by ``sx`` (width) and ``sy`` (height).

    Pixel-centre convention (module docstring): ``fx, skew -> * sx``, ``fy -> * sy``,
    ``cx -> (cx + 0.5) * sx - 0.5``, ``cy -> (cy + 0.5) * sy - 0.5``.
    """
    K = _as_K(K)
    out = K.copy()
    out[0, 0] = K[0, 0] * sx
    out[0, 1] = K[0, 1] * sx
    out[1, 1] = K[1, 1] * sy
    out[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return out


def normalized_intrinsics(K: Any, width: int, height: int) -> np.ndarray:
    """Pixel K -> monodepth2-style K in fractions of the image size (principal point from the edge)."""
    K = _as_K(K)
    Kn = K.copy()
    Kn[0, 0] = K[0, 0] / width
    Kn[0, 1] = K[0, 1] / width
    Kn[1, 1] = K[1, 1] / height
    Kn[0, 2] = (K[0, 2] + 0.5) / width
    Kn[1, 2] = (K[1, 2] + 0.5) / height
    return Kn


def pixel_intrinsics(Kn: Any, width: int, height: int) -> np.ndarray:
    """Normalised K (fractions of width/height, e.g. monodepth2's KITTI K) -> K in pixels of ``width x height``."""
    Kn = np.asarray(Kn, dtype=np.float64)
    if Kn.shape == (4, 4):
        Kn = Kn[:3, :3]
    Kn = _as_K(Kn)
    K = Kn.copy()
    K[0, 0] = Kn[0, 0] * width
    K[0, 1] = Kn[0, 1] * width
    K[1, 1] = Kn[1, 1] * height
    K[0, 2] = Kn[0, 2] * width - 0.5
    K[1, 2] = Kn[1, 2] * height - 0.5
    return K


def pixel_grid(height: int, width: int) -> np.ndarray:
    """Homogeneous pixel centres ``3 x (height*width)`` float64, row-major (u fastest): ``[u, v, 1]``."""
    if height <= 0 or width <= 0:
        raise ValueError(f'image size must be positive, got {width}x{height}')
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64), indexing='xy')
    return np.stack([u.ravel(), v.ravel(), np.ones(height * width)], axis=0)


@lru_cache(maxsize=16)
def _cached_rays(K_key: tuple[float, ...], height: int, width: int) -> np.ndarray:
    K = np.asarray(K_key, dtype=np.float64).reshape(3, 3)
    rays = (np.linalg.inv(K) @ pixel_grid(height, width)).T.reshape(height, width, 3)
    rays = rays.astype(np.float32)
    rays.flags.writeable = False
    return rays


def pixel_rays(K: Any, height: int, width: int) -> np.ndarray:
    """Rays ``K^-1 [u, v, 1]`` (z = 1) for every pixel: ``(height, width, 3)`` float32, read-only.

    Cached per (K, size), so calling it every frame is cheap. Multiply by depth to get points.
    """
    K = _as_K(K)
    return _cached_rays(tuple(float(x) for x in K.ravel()), int(height), int(width))


def ray_planes(K: Any, height: int, width: int, stride: int = 1) -> np.ndarray:
    """Rays of every ``stride``-th pixel (from (0, 0)) as contiguous planes ``3 x H' x W'`` float32, read-only.

    The same values as ``pixel_rays(K, height, width)[::stride, ::stride]``, laid out so that
    ``planes[i] * depth`` is one contiguous pass; cached per (K, size, stride).
    """
    K = _as_K(K)
    return _cached_ray_planes(tuple(float(x) for x in K.ravel()), int(height), int(width), int(stride))


@lru_cache(maxsize=16)
def _cached_ray_planes(K_key: tuple[float, ...], height: int, width: int, stride: int) -> np.ndarray:
    planes = np.ascontiguousarray(_cached_rays(K_key, height, width)[::stride, ::stride].transpose(2, 0, 1))
    planes.flags.writeable = False
    return planes


def depth_to_points(
    depth: np.ndarray,
    K: Any,
    stride: int = 1,
    max_range: float | None = None,
    organized: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Back-project a depth image (metres along z) into camera-frame points (float32).

    ``stride`` keeps every ``stride``-th pixel in both directions, starting at pixel (0, 0)
    (the rays are those of the kept pixels in the full image, so no K adjustment is needed).
    Depth that is NaN, inf, ``<= 0`` or ``> max_range`` (compared with z, like depth images
    store it) is invalid.

    Returns ``(points, valid)`` with ``valid`` the ``(H', W')`` bool mask of the decimated grid.
    Unorganised (default): ``points`` is ``N x 3`` of the valid pixels, row-major order.
    Organised: ``points`` is ``(H', W', 3)`` with NaN for invalid pixels (as depth_image_proc).
    """
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise ValueError(f'depth must be H x W, got shape {depth.shape}')
    stride = int(stride)
    if stride < 1:
        raise ValueError(f'stride must be >= 1, got {stride}')
    height, width = depth.shape
    rays = pixel_rays(K, height, width)[::stride, ::stride]
    sub = depth[::stride, ::stride].astype(np.float32, copy=False)
    with np.errstate(invalid='ignore'):
        valid = np.isfinite(sub) & (sub > 0)
        if max_range is not None:
            valid &= sub <= max_range
    if organized:
        points = rays * sub[..., None]
        points[~valid] = np.nan
        return points, valid
    # Gather by flat index (several times faster than boolean-mask indexing of H x W x 3).
    index = np.flatnonzero(valid)
    points = np.take(rays.reshape(-1, 3), index, axis=0)
    points *= np.take(sub.reshape(-1), index)[:, None]
    return points, valid


# --------------------------------------------------------------------------------------------
# torch (training)
# --------------------------------------------------------------------------------------------

def backproject(depth: torch.Tensor, inv_K: torch.Tensor, pix_coords: torch.Tensor) -> torch.Tensor:
    """``depth`` B x 1 x H x W, ``inv_K`` B x 3x3 or 4x4, ``pix_coords`` 3 x N -> homogeneous points B x 4 x N."""
    batch = depth.shape[0]
    rays = torch.matmul(inv_K[:, :3, :3].to(depth.dtype), pix_coords.to(depth.dtype))
    cam = depth.reshape(batch, 1, -1) * rays
    ones = torch.ones_like(cam[:, :1])
    return torch.cat([cam, ones], dim=1)


def project(points: torch.Tensor, K: torch.Tensor, T: torch.Tensor, height: int, width: int,
            eps: float = 1e-7) -> torch.Tensor:
    """Project B x 4 x N points through ``T`` (B x 4 x 4) and ``K`` -> B x H x W x 2 in [-1, 1] (align_corners=True)."""
    batch = points.shape[0]
    P = torch.matmul(intrinsics_4x4(K).to(points.dtype), T.to(points.dtype))[:, :3, :]
    cam = torch.matmul(P, points)
    pix = cam[:, :2, :] / (cam[:, 2:3, :] + eps)
    pix = pix.reshape(batch, 2, height, width).permute(0, 2, 3, 1)
    scale = pix.new_tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
    return pix * scale - 1.0


class BackprojectDepth(nn.Module):
    """Depth image -> homogeneous camera points (monodepth2 layer; same pixel grid as :func:`pixel_rays`).

    ``forward(depth B x 1 x H x W, inv_K B x 4 x 4) -> B x 4 x (H*W)``. The batch dimension is
    taken from ``depth`` (a short last batch works); ``batch_size`` is kept for compatibility.
    Buffers are non-persistent, so they never appear in state dicts.
    """

    def __init__(self, batch_size: int, height: int, width: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.height = height
        self.width = width
        self.register_buffer('pix_coords', torch.from_numpy(pixel_grid(height, width)).float(), persistent=False)

    def forward(self, depth: torch.Tensor, inv_K: torch.Tensor) -> torch.Tensor:
        return backproject(depth, inv_K, self.pix_coords)


class Project3D(nn.Module):
    """Camera points -> ``grid_sample`` coordinates in another camera (monodepth2 layer).

    ``forward(points B x 4 x N, K B x 4 x 4, T B x 4 x 4) -> B x H x W x 2`` normalised to
    [-1, 1] for ``grid_sample(..., align_corners=True)``.
    """

    def __init__(self, batch_size: int, height: int, width: int, eps: float = 1e-7) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.height = height
        self.width = width
        self.eps = eps

    def forward(self, points: torch.Tensor, K: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
        return project(points, K, T, self.height, self.width, self.eps)


def rot_from_axisangle(vec: torch.Tensor) -> torch.Tensor:
    """Axis-angle (B x 1 x 3 or B x 3; angle = norm, radians) -> B x 4 x 4 rotation (Rodrigues)."""
    vec = vec.reshape(vec.shape[0], 3)
    angle = torch.linalg.vector_norm(vec, dim=1, keepdim=True)
    axis = vec / (angle + 1e-7)
    cos = torch.cos(angle)[..., None]
    sin = torch.sin(angle)[..., None]
    x, y, z = axis[:, 0], axis[:, 1], axis[:, 2]
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=1).reshape(-1, 3, 3)
    outer = axis[:, :, None] * axis[:, None, :]
    eye = torch.eye(3, dtype=vec.dtype, device=vec.device).expand_as(outer)
    R = cos * eye + sin * skew + (1 - cos) * outer
    out = F.pad(R, (0, 1, 0, 1))
    out[:, 3, 3] = 1.0
    return out


def get_translation_matrix(translation: torch.Tensor) -> torch.Tensor:
    """Translation (B x 1 x 3 or B x 3) -> B x 4 x 4 homogeneous translation."""
    t = translation.reshape(translation.shape[0], 3)
    T = torch.eye(4, dtype=t.dtype, device=t.device).repeat(t.shape[0], 1, 1)
    T[:, :3, 3] = t
    return T


def transformation_from_parameters(axisangle: torch.Tensor, translation: torch.Tensor,
                                   invert: bool = False) -> torch.Tensor:
    """Pose-network output -> B x 4 x 4 transform ``T @ R``; ``invert`` gives its inverse ``R^T @ -t``."""
    R = rot_from_axisangle(axisangle)
    t = translation.reshape(translation.shape[0], 3)
    if invert:
        R = R.transpose(1, 2)
        t = -t
    T = get_translation_matrix(t)
    return torch.matmul(R, T) if invert else torch.matmul(T, R)


def intrinsics_4x4(K: Any) -> torch.Tensor:
    """K as B x 4 x 4 tensor (accepts 3x3 / 4x4, batched or not, NumPy or torch)."""
    K = torch.as_tensor(K)
    if K.dim() == 2:
        K = K[None]
    if K.shape[-2:] == (4, 4):
        return K
    if K.shape[-2:] != (3, 3):
        raise ValueError(f'K must be 3x3 or 4x4, got shape {tuple(K.shape)}')
    out = torch.eye(4, dtype=K.dtype, device=K.device).repeat(K.shape[0], 1, 1)
    out[:, :3, :3] = K
    return out


_GRID_CACHE: dict[tuple[int, int, str, torch.dtype], torch.Tensor] = {}


def _grid_tensor(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`pixel_grid` as a tensor on ``device``, cached (a few sizes / devices per process)."""
    key = (height, width, str(device), dtype)
    grid = _GRID_CACHE.get(key)
    if grid is None:
        if len(_GRID_CACHE) > 16:
            _GRID_CACHE.clear()
        grid = _GRID_CACHE[key] = torch.from_numpy(pixel_grid(height, width)).to(device=device, dtype=dtype)
    return grid


def warp_coordinates(depth: torch.Tensor, K: torch.Tensor, T_target_to_src: torch.Tensor) -> torch.Tensor:
    """Where each target pixel lands in the source image: B x H x W x 2 in [-1, 1] (align_corners=True).

    Values outside [-1, 1] fall outside the source image.
    """
    batch, _, height, width = depth.shape
    K4 = intrinsics_4x4(K).to(device=depth.device, dtype=depth.dtype).expand(batch, 4, 4)
    points = backproject(depth, torch.linalg.inv(K4), _grid_tensor(height, width, depth.device, depth.dtype))
    return project(points, K4, T_target_to_src.to(device=depth.device, dtype=depth.dtype), height, width)


def warp_image(src: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, T_target_to_src: torch.Tensor) -> torch.Tensor:
    """Synthesise the target view from ``src`` (B x 3 x H x W) with target ``depth`` (B x 1 x H x W).

    ``K`` (B x 4 x 4 or 3x3) in pixels of this resolution; ``T_target_to_src`` maps target-frame
    points to the source frame. Bilinear ``grid_sample`` with ``padding_mode="border"`` and
    ``align_corners=True`` (matching the coordinate normalisation), as training uses.
    """
    coords = warp_coordinates(depth, K, T_target_to_src)
    return F.grid_sample(src, coords.to(src.dtype), mode='bilinear', padding_mode='border', align_corners=True)


# --------------------------------------------------------------------------------------------
# NumPy pose helpers (tf messages <-> 4x4)
# --------------------------------------------------------------------------------------------

def quaternion_from_matrix(R: Any) -> np.ndarray:
    """Rotation matrix (3x3 or the rotation of a 4x4) -> unit quaternion ``[x, y, z, w]`` (w >= 0)."""
    R = np.asarray(R, dtype=np.float64)[:3, :3]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = R.ravel()
    trace = m00 + m11 + m22
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = np.array([(m21 - m12) / s, (m02 - m20) / s, (m10 - m01) / s, 0.25 * s])
    elif m00 > m11 and m00 > m22:
        s = 2.0 * np.sqrt(1.0 + m00 - m11 - m22)
        q = np.array([0.25 * s, (m01 + m10) / s, (m02 + m20) / s, (m21 - m12) / s])
    elif m11 > m22:
        s = 2.0 * np.sqrt(1.0 + m11 - m00 - m22)
        q = np.array([(m01 + m10) / s, 0.25 * s, (m12 + m21) / s, (m02 - m20) / s])
    else:
        s = 2.0 * np.sqrt(1.0 + m22 - m00 - m11)
        q = np.array([(m02 + m20) / s, (m12 + m21) / s, 0.25 * s, (m10 - m01) / s])
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def matrix_from_quaternion(q: Any) -> np.ndarray:
    """Quaternion(s) ``[x, y, z, w]`` (``... x 4``, normalised here) -> rotation matrices ``... x 3 x 3``."""
    q = np.asarray(q, dtype=np.float64)
    x, y, z, w = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    rows = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def pose_matrix(rotation: Any, translation: Any) -> np.ndarray:
    """4x4 homogeneous transform from a 3x3 rotation (or ``[x, y, z, w]`` quaternion) and a translation."""
    rotation = np.asarray(rotation, dtype=np.float64)
    T = np.eye(4)
    T[:3, :3] = matrix_from_quaternion(rotation) if rotation.shape == (4,) else rotation
    T[:3, 3] = np.asarray(translation, dtype=np.float64).reshape(3)
    return T


def relative_transform(pose_target: Any, pose_source: Any) -> np.ndarray:
    """``T_target_to_src = inv(pose_source) @ pose_target`` for camera-to-world 4x4 poses."""
    return np.linalg.inv(np.asarray(pose_source, dtype=np.float64)) @ np.asarray(pose_target, dtype=np.float64)
