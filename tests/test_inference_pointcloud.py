"""Point clouds of metric depth (`predict --pointcloud`, `inference.pointcloud`)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import varied_tiny_model
from PIL import Image

from depth_anything_fast.cli import main
from depth_anything_fast.inference.pointcloud import (
    DEFAULT_FOCAL_LENGTH,
    backproject,
    encode_ply,
    focal_length_px,
)

plyfile = pytest.importorskip("plyfile", reason="the pointcloud extra is not installed")


def test_plane_of_known_depth_backprojects_onto_the_plane(np_rng: np.random.Generator) -> None:
    """Independent oracle: a tilted plane n . X = d seen by a pinhole camera; the depth of pixel
    (u, v) is z = d / (n . ((u - W/2)/fx, (v - H/2)/fy, 1)). Every back-projected point must lie
    on the plane and on its pixel's ray."""
    h, w = 45, 61
    fx, fy = np_rng.uniform(40, 90), np_rng.uniform(40, 90)
    normal = np.array([np_rng.uniform(-0.3, 0.3), np_rng.uniform(-0.3, 0.3), 1.0])
    normal /= np.linalg.norm(normal)
    distance = np_rng.uniform(1.0, 5.0)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([(u - w / 2) / fx, (v - h / 2) / fy, np.ones_like(u)], -1)
    depth = distance / (rays @ normal)
    assert (depth > 0).all()
    rgb = np_rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    points, colors = backproject(depth.astype(np.float32), rgb, fx, fy)
    assert points.shape == (h * w, 3) and points.dtype == np.float32
    on_plane = points.astype(np.float64) @ normal - distance
    # float32 depth and points: relative rounding ~1e-7 of the coordinates
    assert np.abs(on_plane).max() < 1e-5 * distance * 10
    np.testing.assert_allclose(points[:, :2] / points[:, 2:], rays.reshape(-1, 3)[:, :2],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(colors, rgb.reshape(-1, 3))
    # the principal point (W/2, H/2) lies on the optical axis (even sides: an exact pixel)
    centre_depth = np.full((4, 6), 2.0, np.float32)
    centre_points, _ = backproject(centre_depth, np.zeros((4, 6, 3), np.uint8), 5.0)
    assert centre_points[2 * 6 + 3].tolist() == [0.0, 0.0, 2.0]


def test_invalid_and_far_pixels_are_dropped(np_rng: np.random.Generator) -> None:
    depth = np_rng.uniform(1, 10, (6, 7)).astype(np.float32)
    depth[0, 0], depth[1, 1], depth[2, 2], depth[3, 3] = np.nan, 0.0, -1.0, np.inf
    depth[4, 4] = 25.0
    rgb = np_rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)
    points, colors = backproject(depth, rgb, 100.0, max_depth=20.0)
    assert len(points) == 42 - 5 and len(colors) == 37
    assert np.isfinite(points).all() and (points[:, 2] > 0).all() and points[:, 2].max() <= 20
    with pytest.raises(ValueError, match="colours"):
        backproject(depth, rgb[:, :3], 100.0)


def test_focal_length_from_field_of_view() -> None:
    assert focal_length_px(640) == DEFAULT_FOCAL_LENGTH == 470.4
    assert focal_length_px(640, focal_length=500) == 500
    assert focal_length_px(640, fov=90) == pytest.approx(320.0)
    assert focal_length_px(640, fov=60) == pytest.approx(320 / math.tan(math.radians(30)))
    for bad in ({"fov": 180}, {"fov": 0}, {"focal_length": -1}, {"focal_length": 1, "fov": 60}):
        with pytest.raises(ValueError):
            focal_length_px(640, **bad)


def test_ply_round_trip(np_rng: np.random.Generator) -> None:
    points = np_rng.normal(size=(17, 3)).astype(np.float32)
    colors = np_rng.integers(0, 256, (17, 3)).astype(np.uint8)
    vertex = plyfile.PlyData.read(io.BytesIO(encode_ply(points, colors)))["vertex"]
    np.testing.assert_array_equal(np.stack([vertex[k] for k in "xyz"], 1), points)
    np.testing.assert_array_equal(np.stack([vertex[k] for k in ("red", "green", "blue")], 1),
                                  colors)


def test_predict_pointcloud_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                np_rng: np.random.Generator) -> None:
    rgb = np_rng.integers(0, 256, (30, 44, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    relative = varied_tiny_model().save_pretrained(tmp_path / "rel.safetensors")
    base = ["predict", str(tmp_path / "x.png"), "--input-size", "42", "--no-progress",
            "--pointcloud"]
    assert main([*base, "--weights", str(relative), "--outdir", str(tmp_path / "r")]) == 2
    assert "--pointcloud needs a metric model" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    metric = varied_tiny_model(metric=True, max_depth=20.0)
    weights = metric.save_pretrained(tmp_path / "metric.safetensors")
    out = tmp_path / "m"
    assert main([*base, "--weights", str(weights), "--outdir", str(out), "--save-npy",
                 "--fov", "90"]) == 0
    depth = np.load(out / "x.npy")
    vertex = plyfile.PlyData.read(str(out / "x.ply"))["vertex"]
    assert len(vertex) == 30 * 44  # a metric model's depth is in (0, max_depth]
    expected, colors = backproject(depth, rgb, 22.0)  # fov 90: fx = W / 2
    np.testing.assert_allclose(np.stack([vertex[k] for k in "xyz"], 1), expected, rtol=1e-6)
    np.testing.assert_array_equal(vertex["red"], colors[:, 0])
