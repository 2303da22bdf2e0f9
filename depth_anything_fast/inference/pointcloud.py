"""Metric depth -> coloured point cloud, as the official `metric_depth/depth_to_pointcloud.py`.

A pinhole camera with the principal point at the image centre: pixel (u, v) (column, row) of
depth z becomes x = (u - W/2) / fx * z, y = (v - H/2) / fy * z, z (metres; x right, y down,
z forward, the official script's frame). The focal length defaults to the official script's
470.4 px for both axes; a horizontal field of view gives fx = (W/2) / tan(fov/2) with square
pixels. `predict --pointcloud` and the web page both go through `pointcloud_ply`.

Only metric models can be back-projected: a relative model's disparity has an unknown scale and
shift per image, so its points would not lie where the surfaces are.
"""

from __future__ import annotations

import io
import math

import numpy as np

# The official depth_to_pointcloud.py's default --focal-length-x / --focal-length-y.
DEFAULT_FOCAL_LENGTH = 470.4


def focal_length_px(width: int, *, focal_length: float | None = None,
                    fov: float | None = None) -> float:
    """The focal length in pixels for an image `width` pixels wide: `focal_length` as given,
    else from the horizontal field of view `fov` in degrees, else `DEFAULT_FOCAL_LENGTH`.
    Raises ValueError for both, a non-positive length or a field of view outside (0, 180)."""
    if focal_length is not None and fov is not None:
        raise ValueError("give either a focal length or a field of view, not both")
    if fov is not None:
        if not 0 < fov < 180:
            raise ValueError(f"field of view must be in (0, 180) degrees, got {fov}")
        return (width / 2) / math.tan(math.radians(fov) / 2)
    focal = DEFAULT_FOCAL_LENGTH if focal_length is None else float(focal_length)
    if not (math.isfinite(focal) and focal > 0):
        raise ValueError(f"focal length must be a positive number of pixels, got {focal}")
    return focal


def backproject(depth: np.ndarray, rgb: np.ndarray, fx: float, fy: float | None = None,
                max_depth: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Back-project every valid pixel of a depth map.

    Args:
        depth: (H, W) float depth in metres (z, along the optical axis).
        rgb: (H, W, 3) uint8 colours of the same pixels.
        fx, fy: focal lengths in pixels (`fy` defaults to `fx`); principal point (W/2, H/2).
        max_depth: pixels deeper than this are dropped (None keeps every depth).
    Returns:
        points (N, 3) float32 (x, y, z) and colours (N, 3) uint8, in row-major pixel order;
        non-finite and non-positive depths are dropped.
    """
    if depth.ndim != 2:
        raise ValueError(f"expected a (H, W) depth map, got shape {depth.shape}")
    if rgb.shape != (*depth.shape, 3):
        raise ValueError(f"colours {rgb.shape} do not match the depth map {depth.shape}")
    fy = fx if fy is None else fy
    if not (fx > 0 and fy > 0):
        raise ValueError(f"focal lengths must be positive, got fx={fx}, fy={fy}")
    h, w = depth.shape
    z = depth.astype(np.float64)
    valid = np.isfinite(z) & (z > 0)
    if max_depth is not None:
        valid &= z <= max_depth
    v, u = np.nonzero(valid)
    z = z[v, u]
    points = np.stack([(u - w / 2) / fx * z, (v - h / 2) / fy * z, z], axis=1)
    return points.astype(np.float32), np.ascontiguousarray(rgb[v, u], dtype=np.uint8)


def encode_ply(points: np.ndarray, colors: np.ndarray) -> bytes:
    """Binary little-endian PLY bytes of a coloured point cloud (vertex properties x, y, z
    float32 and red, green, blue uint8), written with `plyfile` (the `pointcloud` extra)."""
    try:
        from plyfile import PlyData, PlyElement
    except ImportError:
        raise ImportError("point clouds need plyfile: pip install 'depth_anything_fast"
                          "[pointcloud]'") from None
    if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape:
        raise ValueError(f"expected (N, 3) points and colours, got {points.shape} and "
                         f"{colors.shape}")
    vertex = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                          ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, name in enumerate(("x", "y", "z")):
        vertex[name] = points[:, i]
    for i, name in enumerate(("red", "green", "blue")):
        vertex[name] = colors[:, i]
    buf = io.BytesIO()
    PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(buf)
    return buf.getvalue()


def pointcloud_ply(depth: np.ndarray, rgb: np.ndarray, *, focal_length: float | None = None,
                   fov: float | None = None, max_depth: float | None = None) -> bytes:
    """The coloured .ply of a (H, W) metric depth map and its (H, W, 3) uint8 image, focal
    length from `focal_length_px` (both axes), pixels deeper than `max_depth` dropped."""
    focal = focal_length_px(depth.shape[1], focal_length=focal_length, fov=fov)
    points, colors = backproject(depth, rgb, focal, focal, max_depth=max_depth)
    return encode_ply(points, colors)
