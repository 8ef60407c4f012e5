"""Procedural street drive: RGB, exact depth, exact camera poses and K, rendered by NumPy ray casting.

The scene (world frame = ``odom``: x along the street, y left, z up) is a road plane with lane
markings and sidewalks, building facades on both sides (with alleys through which a second row
of buildings is visible), parked cars (boxes) and a sky (no depth). Every texture is a function
of the WORLD coordinates of the surface point (multi-octave value noise and patterns), shaded
Lambertian by a fixed sun, so one surface point looks the same from every frame: warping a
frame into its neighbour with the true depth and pose reproduces it (what self-supervised
training relies on). Texture octaves finer than a pixel's footprint are faded out, so distant
surfaces do not alias (and stay consistent between frames).

The camera is a pinhole in the REP 103 optical frame (z forward, x right, y down), about
1.5 m above the road, driving along +x with a gentle S-curve (yaw follows the path) and small
pitch / roll / height oscillation. Depth is z along the optical axis, NaN for sky and beyond
``max_depth``. Deterministic for a seed; vectorised (no per-pixel Python loops).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from hr_depth_ros.core.geometry import pixel_rays

__all__ = ['SyntheticFrame', 'SyntheticDrive', 'kitti_like_intrinsics']

# Street layout (metres, world frame).
_LANE_EDGE = 3.5          # solid lines at |y| = 3.5, dashed centre line at y = 0
_SIDEWALK = 5.6           # sidewalk from here to the facades
_FACADE_Y = 9.0           # first row of buildings
_BACK_Y = 21.0            # second row, seen through alleys
_BUILDING_CELL = 14.0     # building lots along x (front row)
_BACK_CELL = 19.0
_CAR_CELL = 9.5
_CAR_Y = 4.5              # parked cars' centre |y|
_SUN = (np.array([0.45, -0.35, 0.82]) / np.linalg.norm([0.45, -0.35, 0.82])).astype(np.float32)
_AMBIENT = 0.42

_FACADE_COLOURS = np.array([
    [196, 170, 136], [160, 82, 62], [150, 150, 146], [214, 206, 188], [128, 102, 80], [180, 140, 110],
    [120, 130, 140], [200, 180, 120],
], dtype=np.float32) / 255.0
_CAR_COLOURS = np.array([
    [200, 30, 30], [30, 60, 160], [230, 230, 230], [40, 40, 45], [150, 150, 155], [20, 120, 60],
    [220, 170, 30], [120, 30, 90],
], dtype=np.float32) / 255.0


def kitti_like_intrinsics(width: int, height: int) -> np.ndarray:
    """KITTI-like pinhole K in pixels: ``fx = 0.58 W``, ``fy = 1.92 H``, principal point at the centre."""
    return np.array([[0.58 * width, 0.0, (width - 1) / 2.0],
                     [0.0, 1.92 * height, (height - 1) / 2.0],
                     [0.0, 0.0, 1.0]])


@dataclass
class SyntheticFrame:
    """One rendered frame: ``rgb`` H x W x 3 uint8, ``depth`` H x W float32 metres (NaN invalid),
    ``pose_world_from_camera`` 4x4 (camera optical frame -> world/odom), ``stamp_ns``, ``index``."""

    rgb: np.ndarray
    depth: np.ndarray
    pose_world_from_camera: np.ndarray
    stamp_ns: int
    index: int = 0


# ---------------------------------------------------------------------------------------------
# hashing and band-limited noise (all vectorised)
# ---------------------------------------------------------------------------------------------

_M1 = np.uint32(374761393)
_M2 = np.uint32(668265263)
_M3 = np.uint32(1274126177)


def _mix01(h: np.ndarray) -> np.ndarray:
    """uint32 -> well-mixed float32 in [0, 1)."""
    h = (h ^ (h >> np.uint32(13))) * _M3
    h ^= h >> np.uint32(16)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def _hash01(ix: np.ndarray | int, iy: np.ndarray | int, salt: int) -> np.ndarray:
    """Deterministic pseudo-random float32 in [0, 1) per integer lattice point (any int dtype)."""
    ux = np.asarray(ix).astype(np.int64).astype(np.uint32)
    uy = np.asarray(iy).astype(np.int64).astype(np.uint32)
    return _mix01(ux * _M1 + uy * _M2 + np.uint32((salt * 2246822519) & 0xFFFFFFFF))


def _value_noise(x: np.ndarray, y: np.ndarray, salt: int) -> np.ndarray:
    """Smooth 2-D value noise in [0, 1) with unit lattice spacing (float32)."""
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    fx = fx * fx * (3.0 - 2.0 * fx)
    fy = fy * fy * (3.0 - 2.0 * fy)
    hx0 = x0.astype(np.int32).view(np.uint32) * _M1
    hy0 = y0.astype(np.int32).view(np.uint32) * _M2 + np.uint32((salt * 2246822519) & 0xFFFFFFFF)
    hx1 = hx0 + _M1
    hy1 = hy0 + _M2
    a = _mix01(hx0 + hy0)
    b = _mix01(hx1 + hy0)
    c = _mix01(hx0 + hy1)
    d = _mix01(hx1 + hy1)
    top = a + (b - a) * fx
    bottom = c + (d - c) * fx
    return top + (bottom - top) * fy


def _fbm(x: np.ndarray, y: np.ndarray, footprint: np.ndarray, salt: int, base_freq: float,
         octaves: int, persistence: float = 0.7) -> np.ndarray:
    """Multi-octave noise, zero mean, std about 0.25 at full detail; octaves finer than the pixel
    ``footprint`` fade out (period vs footprint), so distant surfaces do not alias."""
    total = np.zeros_like(x)
    amplitude = 1.0
    norm = 0.0
    freq = base_freq
    for octave in range(octaves):
        norm += amplitude * amplitude
        weight = np.clip(2.0 - 4.0 * footprint * np.float32(freq), 0.0, 1.0)
        active = np.nonzero(weight > 0)[0]
        if active.size == x.size:
            total += (amplitude * weight) * (_value_noise(x * np.float32(freq), y * np.float32(freq), salt + 7919 * octave) - 0.5)
        elif active.size:
            total[active] += (amplitude * weight[active]) * (
                _value_noise(x[active] * np.float32(freq), y[active] * np.float32(freq), salt + 7919 * octave) - 0.5)
        amplitude *= persistence
        freq *= 2.0
    # Value noise minus 0.5 has std ~0.17; scale the sum to std ~0.25 at full detail.
    return total * np.float32(1.5 / np.sqrt(norm))


def _band(coord: np.ndarray, centre: float | np.ndarray, half_width: float, footprint: np.ndarray) -> np.ndarray:
    """Indicator of ``|coord - centre| < half_width`` box-filtered over one pixel footprint (anti-aliased)."""
    fp = np.maximum(footprint, 1e-4)
    overlap = np.minimum(coord + fp / 2, centre + half_width) - np.maximum(coord - fp / 2, centre - half_width)
    return np.clip(overlap / fp, 0.0, 1.0)


def _periodic_band(coord: np.ndarray, period: float, start: float, length: float, footprint: np.ndarray) -> np.ndarray:
    """Box-filtered indicator of ``coord mod period`` in ``[start, start + length)``; tends to its mean
    (``length / period``) once the footprint reaches the period."""
    centre = start + length / 2.0
    local = np.mod(coord - centre + period / 2.0, period) - period / 2.0
    mask = _band(local, 0.0, length / 2.0, footprint)
    fade = np.clip(2.0 * footprint / period - 1.0, 0.0, 1.0)
    return mask + (length / period - mask) * fade


# ---------------------------------------------------------------------------------------------
# the drive
# ---------------------------------------------------------------------------------------------

class SyntheticDrive:
    """A deterministic procedural street drive.

    Args:
        width, height: image size (640x192 default; 1024x320 also typical).
        fps: frame rate; frame ``i`` is at ``start_ns + i / fps``.
        speed: forward speed in m/s (default 9 m/s: 0.9 m between frames at 10 Hz).
        seed: scene layout and noise seed.
        noise: std of additive Gaussian pixel noise in grey levels (0: off).
        exposure_jitter: std of a per-frame multiplicative gain (0: off).
        num_frames: length used by ``len()`` and iteration (``frame(i)`` works for any i >= 0).
        camera_height: metres above the road; max_depth: farther surfaces get NaN depth.
        K: optional 3x3 intrinsics (default :func:`kitti_like_intrinsics`).
    """

    def __init__(self, width: int = 640, height: int = 192, fps: float = 10.0, speed: float = 9.0,
                 seed: int = 0, noise: float = 0.0, exposure_jitter: float = 0.0, num_frames: int = 60,
                 camera_height: float = 1.5, max_depth: float = 100.0, start_ns: int = 1_700_000_000_000_000_000,
                 K: np.ndarray | None = None) -> None:
        if width < 8 or height < 8:
            raise ValueError(f'image size must be at least 8x8, got {width}x{height}')
        if fps <= 0 or speed < 0 or max_depth <= 0:
            raise ValueError(f'need fps > 0, speed >= 0, max_depth > 0; got {fps}, {speed}, {max_depth}')
        self.width = int(width)
        self.height = int(height)
        self.fps = float(fps)
        self.speed = float(speed)
        self.seed = int(seed)
        self.noise = float(noise)
        self.exposure_jitter = float(exposure_jitter)
        self.num_frames = int(num_frames)
        self.camera_height = float(camera_height)
        self.max_depth = float(max_depth)
        self.start_ns = int(start_ns)
        self.K = kitti_like_intrinsics(width, height) if K is None else np.asarray(K, dtype=np.float64)
        rng = np.random.default_rng(self.seed)
        self._phase = rng.uniform(0, 2 * np.pi, size=4)
        self._x0 = float(rng.uniform(0, 200))
        self._salt = int(rng.integers(1, 2**20))
        self._ray_len: np.ndarray | None = None

    # -- trajectory -----------------------------------------------------------------------

    def __len__(self) -> int:
        return self.num_frames

    def __iter__(self) -> Iterator[SyntheticFrame]:
        for i in range(self.num_frames):
            yield self.frame(i)

    def stamp_ns(self, index: int) -> int:
        """Header stamp of frame ``index``."""
        return self.start_ns + int(round(index * 1e9 / self.fps))

    def pose(self, index: int) -> np.ndarray:
        """Exact camera-to-world 4x4 pose (optical frame) of frame ``index``."""
        return self.pose_at(index / self.fps)

    def pose_at(self, t: float) -> np.ndarray:
        """Exact camera-to-world 4x4 pose (optical frame) ``t`` seconds after frame 0 (any real ``t``)."""
        sway_amp, sway_omega = 0.9, 2 * np.pi / 9.0
        x = self._x0 + self.speed * t
        y = sway_amp * np.sin(sway_omega * t + self._phase[0])
        dy_dt = sway_amp * sway_omega * np.cos(sway_omega * t + self._phase[0])
        yaw = np.arctan2(dy_dt, max(self.speed, 1e-3)) if self.speed > 0 else 0.0
        pitch = np.radians(0.6) * np.sin(2 * np.pi * t / 1.7 + self._phase[1])
        roll = np.radians(0.5) * np.sin(2 * np.pi * t / 2.3 + self._phase[2])
        z = self.camera_height + 0.02 * np.sin(2 * np.pi * t / 1.1 + self._phase[3])
        cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
        Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
        Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])   # positive pitch: nose down
        Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
        body_from_optical = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
        pose = np.eye(4)
        pose[:3, :3] = Rz @ Ry @ Rx @ body_from_optical
        pose[:3, 3] = [x, y, z]
        return pose

    def T_target_to_source(self, target: int, source: int) -> np.ndarray:
        """4x4 mapping points in camera ``target`` to camera ``source`` (what ``geometry.warp_image`` takes)."""
        return np.linalg.inv(self.pose(source)) @ self.pose(target)

    # -- rendering ------------------------------------------------------------------------

    def frame(self, index: int) -> SyntheticFrame:
        """Render frame ``index`` (>= 0)."""
        if index < 0:
            raise ValueError(f'frame index must be >= 0, got {index}')
        pose = self.pose(index)
        rgb_linear, depth = self._render(pose)
        rng = np.random.default_rng([self.seed, index])
        if self.exposure_jitter > 0:
            rgb_linear = rgb_linear * np.float32(1.0 + self.exposure_jitter * rng.standard_normal())
        rgb = rgb_linear * 255.0
        if self.noise > 0:
            rgb = rgb + rng.normal(0.0, self.noise, size=rgb.shape).astype(np.float32)
        rgb = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
        return SyntheticFrame(rgb=rgb, depth=depth, pose_world_from_camera=pose,
                              stamp_ns=self.stamp_ns(index), index=index)

    def _render(self, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        H, W = self.height, self.width
        R = pose[:3, :3].astype(np.float32)
        C = pose[:3, 3].astype(np.float32)
        rays_cam = pixel_rays(self.K, H, W).reshape(-1, 3)          # z = 1: ray parameter == depth
        d = rays_cam @ R.T                                           # world directions, N x 3
        n = d.shape[0]
        t_best = np.full(n, np.inf, dtype=np.float32)
        surface = np.zeros(n, dtype=np.int8)                         # 0 sky, 1 ground, 2 front, 3 back, 4 car
        box_id = np.full(n, -1, dtype=np.int32)
        box_axis = np.zeros(n, dtype=np.int8)

        with np.errstate(divide='ignore', invalid='ignore'):
            # Ground plane z = 0.
            t = np.where(d[:, 2] < -1e-6, -C[2] / d[:, 2], np.inf).astype(np.float32)
            hit = t < t_best
            t_best[hit], surface[hit] = t[hit], 1
            # Facades: first row (lots with alleys and varying heights), then the back row.
            for plane_y, cell, code, salt in ((_FACADE_Y, _BUILDING_CELL, 2, 11), (_BACK_Y, _BACK_CELL, 3, 23)):
                side_y = np.where(d[:, 1] >= 0, plane_y, -plane_y).astype(np.float32)
                t = ((side_y - C[1]) / d[:, 1]).astype(np.float32)
                ok = (t > 0) & (t < t_best)
                idx = np.nonzero(ok)[0]
                px = C[0] + t[idx] * d[idx, 0]
                pz = C[2] + t[idx] * d[idx, 2]
                present = self._building_mask(px, pz, side_y[idx] > 0, cell, salt, code == 2)
                idx = idx[present]
                t_best[idx], surface[idx] = t[idx], code
            self._cast_cars(pose, d, C, t_best, surface, box_id, box_axis)

        depth = np.where(np.isfinite(t_best) & (t_best <= self.max_depth), t_best, np.nan).astype(np.float32)
        rgb = self._shade(d, C, t_best, surface, box_id, box_axis)
        return rgb.reshape(H, W, 3), depth.reshape(H, W)

    # -- scene layout (functions of integer cells, so the street is unbounded) --------------

    def _building_params(self, cell: np.ndarray, left: np.ndarray, salt: int, front: bool):
        key = cell * 2 + left.astype(np.int64)
        h1 = _hash01(key, 1, self._salt + salt)
        h2 = _hash01(key, 2, self._salt + salt)
        h3 = _hash01(key, 3, self._salt + salt)
        if front:
            gap = np.where(h1 < 0.35, 2.5 + 4.0 * h2, 0.0)      # alley before this lot
            top = 6.0 + 16.0 * h3
        else:
            gap = np.zeros_like(h1)
            top = 14.0 + 18.0 * h3
        return gap, top, key

    def _building_mask(self, px, pz, left, cell_len, salt, front) -> np.ndarray:
        cell = np.floor(px / cell_len).astype(np.int64)
        gap, top, _ = self._building_params(cell, left, salt, front)
        local = px - cell * cell_len
        return (local >= gap) & (pz <= top) & (pz >= 0)

    def _car_boxes(self, x_min: float, x_max: float) -> np.ndarray:
        """Parked cars overlapping [x_min, x_max]: rows of (xmin, ymin, zmin, xmax, ymax, zmax)."""
        cells = np.arange(int(np.floor(x_min / _CAR_CELL)) - 1, int(np.floor(x_max / _CAR_CELL)) + 1)
        boxes = []
        for left in (0, 1):
            key = cells * 2 + left
            h = [_hash01(key, k, self._salt + 101) for k in range(5)]
            present = h[0] < 0.6
            length = 3.9 + 0.8 * h[1]
            x0 = cells * _CAR_CELL + 0.4 + h[2] * (_CAR_CELL - length - 0.8)
            half_w = 0.85 + 0.1 * h[3]
            yc = (_CAR_Y + 0.3 * (h[4] - 0.5)) * (1 if left else -1)
            height = 1.4 + 0.25 * h[3]
            rows = np.stack([x0, yc - half_w, np.zeros_like(x0), x0 + length, yc + half_w, height,
                             key.astype(np.float64)], axis=1)
            boxes.append(rows[present])
        return np.concatenate(boxes, axis=0)

    def _cast_cars(self, pose, d, C, t_best, surface, box_id, box_axis) -> None:
        H, W = self.height, self.width
        K = self.K
        forward = pose[:3, 2]
        span = self.max_depth + 10.0
        boxes = self._car_boxes(C[0] - span, C[0] + span)
        world_to_cam = np.linalg.inv(pose)
        corners_sel = np.array([[i, j, k] for i in (0, 3) for j in (1, 4) for k in (2, 5)])
        d_cols = [np.ascontiguousarray(d[:, axis]) for axis in range(3)]
        for row in boxes:
            corners = row[corners_sel]                                    # 8 x 3
            centre = corners.mean(axis=0)
            if np.dot(centre - pose[:3, 3], forward) < -6.0:
                continue
            cam = corners @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
            if np.all(cam[:, 2] <= 0.05):
                continue
            if np.any(cam[:, 2] <= 0.05):
                u0, u1, v0, v1 = 0, W, 0, H
            else:
                u = K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 1] * cam[:, 1] / cam[:, 2] + K[0, 2]
                v = K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]
                u0, u1 = max(int(np.floor(u.min())) - 1, 0), min(int(np.ceil(u.max())) + 2, W)
                v0, v1 = max(int(np.floor(v.min())) - 1, 0), min(int(np.ceil(v.max())) + 2, H)
                if u0 >= u1 or v0 >= v1:
                    continue
            idx = (np.arange(v0, v1, dtype=np.int32)[:, None] * W + np.arange(u0, u1, dtype=np.int32)[None, :]).ravel()
            t_near = np.zeros(idx.size, dtype=np.float32)
            t_far = t_best[idx]                       # only hits closer than what is already there count
            axis_near = np.zeros(idx.size, dtype=np.int8)
            for axis in range(3):
                inv = 1.0 / d_cols[axis][idx]
                t0 = (np.float32(row[axis]) - C[axis]) * inv
                t1 = (np.float32(row[axis + 3]) - C[axis]) * inv
                near = np.minimum(t0, t1)
                far = np.maximum(t0, t1)
                later = near > t_near
                axis_near[later] = axis
                t_near = np.where(later, near, t_near)
                t_far = np.minimum(t_far, far)
            hit = (t_near < t_far) & (t_near > 0)
            idx_hit = idx[hit]
            t_best[idx_hit] = t_near[hit]
            surface[idx_hit] = 4
            box_id[idx_hit] = int(row[6])
            box_axis[idx_hit] = axis_near[hit]

    # -- appearance -----------------------------------------------------------------------

    def _shade(self, d, C, t_best, surface, box_id, box_axis) -> np.ndarray:
        """Colour of each ray's hit (surface 0 sky, 1 ground, 2/3 facades, 4 cars)."""
        rgb = np.empty((d.shape[0], 3), dtype=np.float32)
        # |R r| = |r|: the ray lengths depend only on K and the image size.
        ray_len = np.linalg.norm(pixel_rays(self.K, self.height, self.width), axis=2).reshape(-1) \
            if self._ray_len is None else self._ray_len
        self._ray_len = ray_len
        pixel_angle = np.float32(1.0 / self.K[0, 0])

        sky = surface == 0
        if sky.any():
            elevation = np.clip(d[sky, 2] / ray_len[sky], -0.2, 1.0)[:, None]
            rgb[sky] = np.array([0.78, 0.85, 0.95], np.float32) + elevation * np.array([-0.45, -0.30, -0.05], np.float32)

        def footprint(idx: np.ndarray, normal_dot: np.ndarray) -> np.ndarray:
            """World size of one pixel on the surface (grazing angles stretch it)."""
            return (t_best[idx] * ray_len[idx] * pixel_angle / np.maximum(np.abs(normal_dot), 0.05)).astype(np.float32)

        idx = np.nonzero(surface == 1)[0]
        if idx.size:
            rgb[idx] = self._shade_ground(C[0] + t_best[idx] * d[idx, 0], C[1] + t_best[idx] * d[idx, 1],
                                          footprint(idx, d[idx, 2] / ray_len[idx]))
        for code, cell_len, salt in ((2, _BUILDING_CELL, 11), (3, _BACK_CELL, 23)):
            idx = np.nonzero(surface == code)[0]
            if idx.size:
                rgb[idx] = self._shade_facade(code, cell_len, salt, C[0] + t_best[idx] * d[idx, 0],
                                              C[2] + t_best[idx] * d[idx, 2], d[idx, 1] >= 0,
                                              footprint(idx, d[idx, 1] / ray_len[idx]))
        idx = np.nonzero(surface == 4)[0]
        if idx.size:
            axis = box_axis[idx].astype(np.int64)
            normal_dot = d[idx, axis] / ray_len[idx]
            rgb[idx] = self._shade_car(C[None, :] + t_best[idx, None] * d[idx], axis, -np.sign(d[idx, axis]),
                                       footprint(idx, normal_dot), box_id[idx].astype(np.int64))
        return rgb

    def _shade_ground(self, px: np.ndarray, py: np.ndarray, fp: np.ndarray) -> np.ndarray:
        """Ground at world ``(px, py)`` (pixel footprint ``fp``): asphalt, lane markings, parking lanes,
        sidewalks with tiles, gravel behind facades."""
        s = self._salt
        grain = _fbm(px, py, fp, s + 1, 0.35, 8)
        ay = np.abs(py)
        base = np.where(ay < _SIDEWALK, 0.33, np.where(ay < _FACADE_Y, 0.58, 0.47)).astype(np.float32)
        albedo = np.repeat((base * (1.0 + 0.9 * grain))[:, None], 3, axis=1)
        albedo[ay >= _FACADE_Y] *= np.array([1.0, 0.95, 0.8], np.float32)      # gravel courtyards
        tiles = np.maximum(_periodic_band(px, 0.6, 0.0, 0.04, fp), _periodic_band(py, 0.6, 0.0, 0.04, fp))
        side = (ay >= _SIDEWALK) & (ay < _FACADE_Y)
        albedo[side] *= (1.0 - 0.35 * tiles[side])[:, None]
        paint = np.maximum(_band(ay, _LANE_EDGE, 0.08, fp),
                           _band(py, 0.0, 0.07, fp) * _periodic_band(px, 6.0, 0.0, 3.0, fp))
        paint = np.maximum(paint, _band(ay, _SIDEWALK, 0.1, fp) * 0.6)  # curb line
        albedo = albedo + (np.float32(0.88) - albedo) * paint[:, None]
        return albedo * np.float32(_AMBIENT + (1 - _AMBIENT) * _SUN[2])

    def _shade_facade(self, code: int, cell_len: float, salt: int, px: np.ndarray, pz: np.ndarray,
                      left: np.ndarray, fp: np.ndarray) -> np.ndarray:
        """Facade ``code`` at world ``(px, pz)``: per-building colour, wall noise, window grid, plinth."""
        s = self._salt
        cell = np.floor(px / cell_len).astype(np.int64)
        _, _, key = self._building_params(cell, left, salt, code == 2)
        colour = _FACADE_COLOURS[(_hash01(key, 4, s + salt) * len(_FACADE_COLOURS)).astype(np.int64)]
        wall = colour * (1.0 + 0.8 * _fbm(px, pz, fp, s + 3 + code, 0.4, 8))[:, None]
        win_w = 1.1 + 0.5 * _hash01(key, 5, s + salt)
        windows = _periodic_band(px - cell * cell_len, 3.0, 1.5 - win_w / 2, win_w, fp) * \
            _periodic_band(pz, 3.2, 0.9, 1.5, fp) * (pz > 3.0)
        in_window = np.nonzero(windows > 0)[0]
        reflection = _fbm(px[in_window], pz[in_window], fp[in_window], s + 5, 1.0, 5)
        glass = np.array([0.16, 0.21, 0.30], np.float32) * (1.0 + 1.5 * reflection)[:, None]
        albedo = wall
        albedo[in_window] += (glass - wall[in_window]) * windows[in_window, None]
        albedo *= (1.0 - np.float32(0.3) * (pz < 0.8))[:, None]
        normal_y = np.where(left, -1.0, 1.0).astype(np.float32)
        lambert = np.maximum(normal_y * _SUN[1], 0.0)
        return albedo * (np.float32(_AMBIENT) + np.float32(1 - _AMBIENT) * lambert)[:, None]

    def _shade_car(self, p: np.ndarray, axis: np.ndarray, sign: np.ndarray, fp: np.ndarray,
                   key: np.ndarray) -> np.ndarray:
        """Car faces at world points ``p`` (face ``axis``, facing ``sign``): per-car paint, noise, dark window
        band, wheels, face-dependent shading."""
        s = self._salt
        paint = _CAR_COLOURS[(_hash01(key, 9, s) * len(_CAR_COLOURS)).astype(np.int64)]
        u_coord = np.where(axis == 0, p[:, 1], p[:, 0])
        v_coord = np.where(axis == 2, p[:, 1], p[:, 2])
        albedo = paint * (1.0 + 0.5 * _fbm(u_coord, v_coord, fp, s + 9, 1.0, 7))[:, None] + np.float32(0.03)
        top = (1.4 + 0.25 * _hash01(key, 3, s + 101))
        window = _band(p[:, 2], top - 0.32, 0.2, fp) * (axis != 2)
        albedo = albedo + (np.float32(0.08) - albedo) * window[:, None]
        wheels = _band(p[:, 2], 0.2, 0.2, fp) * (axis == 1)
        albedo = albedo + (np.float32(0.05) - albedo) * wheels[:, None]
        lambert = np.maximum(sign * _SUN[axis], 0.0)
        return albedo * (np.float32(_AMBIENT) + np.float32(1 - _AMBIENT) * lambert)[:, None]
