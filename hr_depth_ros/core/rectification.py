"""Lens distortion removal for sensor_msgs/CameraInfo cameras (ROS-free, OpenCV maps built once).

A camera_info with a non-zero ``D`` describes a distorted image; the networks, the photometric
warp and the point cloud assume a pinhole. :class:`Rectifier` builds OpenCV remap tables once per
calibration (``plumb_bob`` and ``rational_polynomial`` through ``cv2.initUndistortRectifyMap``,
``equidistant`` through ``cv2.fisheye.initUndistortRectifyMap``) and maps every image, and depth
with nearest-neighbour, to the rectified pinhole camera. As ROS's ``image_proc`` does, the
rectified camera is ``P``'s left 3x3 (with ``R``) when the camera_info sets P, else the optimal new
camera matrix that keeps only valid pixels; any other target camera can be given (``K_target``),
so that frames whose camera_info changes can all be mapped to one camera.
:func:`calibration_of` reads a CameraInfo of ROS 2 or ROS 1 (``k d r p`` / ``K D R P``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from hr_depth_ros.core.camera_info import camera_info_K

__all__ = ['Calibration', 'Rectifier', 'calibration_of', 'rectifier_for', 'apply_distortion', 'DISTORTION_MODELS']

DISTORTION_MODELS = ('plumb_bob', 'rational_polynomial', 'equidistant')
_ALIASES = {'': 'plumb_bob', 'radtan': 'plumb_bob', 'fisheye': 'equidistant'}
_COEFFICIENTS = {'plumb_bob': (4, 5, 8, 12, 14), 'rational_polynomial': (4, 5, 8, 12, 14), 'equidistant': (4,)}


@dataclass(frozen=True)
class Calibration:
    """One camera's calibration: K, distortion model and coefficients, R, P (3x3 part), image size."""

    K: tuple[float, ...]
    model: str
    D: tuple[float, ...]
    R: tuple[float, ...]
    P: tuple[float, ...]
    width: int
    height: int

    @property
    def distorted(self) -> bool:
        """Whether any distortion coefficient is non-zero."""
        return any(abs(v) > 0.0 for v in self.D)

    @property
    def K_matrix(self) -> np.ndarray:
        return np.asarray(self.K, dtype=np.float64).reshape(3, 3)


def _floats(msg: Any, names: tuple[str, str]) -> list[float]:
    for name in names:
        value = getattr(msg, name, None)
        if value is not None:
            return [float(v) for v in value]
    return []


def calibration_of(msg: Any) -> Calibration:
    """The :class:`Calibration` of a CameraInfo; ValueError naming the field when it cannot be used
    (K as in :func:`~hr_depth_ros.core.camera_info.camera_info_K`, an unknown distortion model, a
    coefficient count the model does not have, non-finite D)."""
    K, width, height = camera_info_K(msg)
    model = str(getattr(msg, 'distortion_model', '') or '').strip().lower()
    model = _ALIASES.get(model, model)
    D = _floats(msg, ('d', 'D'))
    if not np.isfinite(D).all():
        raise ValueError(f'camera_info D holds non-finite values: {D}')
    if not any(D):
        D = []  # all zeros (or none): a pinhole, whatever the model says
    elif model not in DISTORTION_MODELS:
        raise ValueError(f'camera_info distortion_model {model!r} is not supported (use one of '
                         f'{", ".join(DISTORTION_MODELS)}, or rectify before the node)')
    elif len(D) not in _COEFFICIENTS[model]:
        raise ValueError(f'camera_info D has {len(D)} coefficients; {model} takes '
                         f'{" or ".join(map(str, _COEFFICIENTS[model]))}')
    R = _floats(msg, ('r', 'R'))
    R = R if len(R) == 9 and np.isfinite(R).all() and abs(np.linalg.det(np.reshape(R, (3, 3))) - 1) < 1e-3 \
        else list(np.eye(3).ravel())
    P = _floats(msg, ('p', 'P'))
    P3 = np.reshape(P, (3, 4))[:, :3] if len(P) == 12 and np.isfinite(P).all() else np.zeros((3, 3))
    P3 = P3 if P3[0, 0] > 0 and P3[1, 1] > 0 else np.zeros((3, 3))
    return Calibration(tuple(K.ravel()), model if D else 'plumb_bob', tuple(D), tuple(R), tuple(P3.ravel()),
                       width, height)


class Rectifier:
    """Remaps images of one :class:`Calibration` to a pinhole camera ``K`` (built once, then cheap).

    ``size``: (width, height) of the images (default: the calibration's). ``K_target``: the
    rectified camera (default: P's 3x3, else OpenCV's optimal new camera matrix with alpha 0).
    ``identity``: no remapping is needed (no distortion, R identity, target = K).
    """

    def __init__(self, calibration: Calibration, size: tuple[int, int] | None = None,
                 K_target: np.ndarray | None = None) -> None:
        width, height = size or (calibration.width, calibration.height)
        if width <= 0 or height <= 0:
            raise ValueError(f'no image size to rectify for (camera_info width/height {width}x{height})')
        self.calibration = calibration
        self.size = (int(width), int(height))
        K = calibration.K_matrix
        if calibration.width > 0 and (calibration.width, calibration.height) != self.size:
            sx, sy = width / calibration.width, height / calibration.height  # camera_info for another resolution
            K = np.diag([sx, sy, 1.0]) @ K
        D = np.asarray(calibration.D, dtype=np.float64)
        R = np.asarray(calibration.R, dtype=np.float64).reshape(3, 3)
        fisheye = calibration.model == 'equidistant' and D.size > 0
        if K_target is None:
            P3 = np.asarray(calibration.P, dtype=np.float64).reshape(3, 3)
            if P3[0, 0] > 0:
                K_target = P3 if calibration.width <= 0 or (calibration.width, calibration.height) == self.size \
                    else np.diag([width / calibration.width, height / calibration.height, 1.0]) @ P3
            elif D.size == 0:
                K_target = K
            elif fisheye:
                K_target = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(K, D.reshape(4, 1), self.size, R,
                                                                                  balance=0.0)
            else:
                K_target = cv2.getOptimalNewCameraMatrix(K, D, self.size, 0.0, self.size)[0]
        self.K = np.asarray(K_target, dtype=np.float64).reshape(3, 3).copy()
        self.identity = D.size == 0 and np.allclose(R, np.eye(3)) and np.allclose(self.K, K)
        self.maps: tuple[np.ndarray, np.ndarray] | None = None
        if not self.identity:
            if fisheye:
                self.maps = cv2.fisheye.initUndistortRectifyMap(K, D.reshape(4, 1), R, self.K, self.size, cv2.CV_16SC2)
            else:
                self.maps = cv2.initUndistortRectifyMap(K, D if D.size else None, R, self.K, self.size, cv2.CV_16SC2)

    def rectify(self, image: np.ndarray, nearest: bool = False) -> np.ndarray:
        """``image`` (H x W or H x W x C, of ``size``) seen by the rectified camera; outside the
        original view: 0, or NaN for float images with ``nearest`` (depth)."""
        if self.maps is None:
            return image
        if (image.shape[1], image.shape[0]) != self.size:
            raise ValueError(f'image is {image.shape[1]}x{image.shape[0]}, the rectifier was built for '
                             f'{self.size[0]}x{self.size[1]}')
        border = float('nan') if nearest and image.dtype.kind == 'f' else 0
        return cv2.remap(image, *self.maps, cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=border)

    def describe(self) -> str:
        c = self.calibration
        if self.identity:
            return 'no distortion (pinhole): images used as they are'
        return (f'{c.model} distortion D={[round(v, 6) for v in c.D]}: images rectified to fx {self.K[0, 0]:.2f} '
                f'fy {self.K[1, 1]:.2f} cx {self.K[0, 2]:.2f} cy {self.K[1, 2]:.2f} (OpenCV maps)')


@lru_cache(maxsize=8)
def _cached(calibration: Calibration, size: tuple[int, int], K_key: tuple[float, ...] | None) -> Rectifier:
    return Rectifier(calibration, size, None if K_key is None else np.reshape(K_key, (3, 3)))


def rectifier_for(calibration: Calibration, size: tuple[int, int] | None = None,
                  K_target: np.ndarray | None = None) -> Rectifier:
    """A :class:`Rectifier`, built once per (calibration, size, target) and then reused."""
    size = tuple(int(v) for v in (size or (calibration.width, calibration.height)))
    key = None if K_target is None else tuple(float(v) for v in np.asarray(K_target).ravel())
    return _cached(calibration, size, key)


@lru_cache(maxsize=4)
def _distortion_maps(calibration: Calibration) -> tuple[np.ndarray, np.ndarray]:
    width, height = calibration.width, calibration.height
    u, v = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    points = np.stack([u.ravel(), v.ravel()], 1)[:, None]
    K, D = calibration.K_matrix, np.asarray(calibration.D, dtype=np.float64)
    if calibration.model == 'equidistant':
        pinhole = cv2.fisheye.undistortPoints(points.astype(np.float64), K, D.reshape(4, 1), P=K)
    else:
        pinhole = cv2.undistortPointsIter(points, K, D, None, K, (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS,
                                                                  40, 1e-6))
    pinhole = pinhole.reshape(height, width, 2).astype(np.float32)
    return pinhole[..., 0], pinhole[..., 1]


def apply_distortion(image: np.ndarray, calibration: Calibration, nearest: bool = False) -> np.ndarray:
    """What a camera with ``calibration``'s distortion sees of the pinhole ``image`` (K = the calibration's):
    the inverse of :meth:`Rectifier.rectify`, for synthetic test data (outside the view: 0 / NaN)."""
    map_x, map_y = _distortion_maps(calibration)
    border = float('nan') if nearest and image.dtype.kind == 'f' else 0
    return cv2.remap(image, map_x, map_y, cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=border)
