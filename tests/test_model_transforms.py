"""Official Depth Anything preprocessing: lower-bound resize rule, normalisation, channels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from depth_anything_fast.models.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    lower_bound_size,
    preprocess,
    resize_prediction,
    square_size,
    to_rgb,
)


def official_size(h: int, w: int, target: int = 518, multiple: int = 14) -> tuple[int, int]:
    """The official `Resize.get_size` (keep_aspect_ratio, lower_bound) with numpy rounding."""
    scale_h, scale_w = target / h, target / w
    scale = max(scale_h, scale_w)

    def constrain(x: float) -> int:
        y = int(np.round(x / multiple) * multiple)
        return int(np.ceil(x / multiple) * multiple) if y < target else y

    return constrain(scale * h), constrain(scale * w)


def test_640x480_is_686x518() -> None:
    assert lower_bound_size(480, 640) == (518, 686)
    assert lower_bound_size(640, 480) == (686, 518)
    assert lower_bound_size(518, 518) == (518, 518)
    assert lower_bound_size(1080, 1920) == (518, 924)


def test_lower_bound_size_matches_official_rule_on_random_sizes() -> None:
    sizes = torch.randint(1, 4000, (300, 2)).tolist() + [[1, 1], [7, 3000], [3000, 7]]
    for h, w in sizes:
        nh, nw = lower_bound_size(h, w)
        assert (nh, nw) == official_size(h, w), (h, w)
        assert nh % 14 == 0 and nw % 14 == 0 and min(nh, nw) >= 518
    assert lower_bound_size(45, 60, input_size=56) == (56, 70)


def test_square_size() -> None:
    assert square_size(518) == (518, 518)
    assert square_size(500) == (504, 504)


def test_preprocess_matches_float64_oracle() -> None:
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ())))
    rgb = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    x = preprocess(rgb, input_size=70)
    assert x.shape == (1, 3, 70, 98) and x.dtype == torch.float32
    ref = torch.from_numpy(rgb).permute(2, 0, 1)[None].double() / 255
    ref = F.interpolate(ref, size=(70, 98), mode="bicubic", align_corners=False)
    ref = (ref - torch.tensor(IMAGENET_MEAN).double().view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).double().view(1, 3, 1, 1)
    # float32 bicubic vs float64; 5e-5 normalised = 1e-5 of the [0, 1] range
    torch.testing.assert_close(x.double(), ref, rtol=0, atol=5e-5)
    # no resize needed: exact normalisation only
    same = rng.integers(0, 256, (28, 42, 3), dtype=np.uint8)
    y = preprocess(same, input_size=28)
    expected = (same / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(y[0].permute(1, 2, 0).numpy(), expected, rtol=0, atol=1e-6)
    assert preprocess(rgb, input_size=56, resize="square").shape == (1, 3, 56, 56)


def test_channel_variants_and_bad_inputs() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert to_rgb(grey).shape == (3, 4, 3) and (to_rgb(grey)[..., 2] == grey).all()
    assert to_rgb(grey[..., None]).shape == (3, 4, 3)
    rgba = np.zeros((3, 4, 4), np.uint8)
    assert to_rgb(rgba).shape == (3, 4, 3)
    with pytest.raises(ValueError, match="shape"):
        to_rgb(np.zeros((3, 4, 2), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        to_rgb(np.zeros((3, 4, 3), np.float32))
    with pytest.raises(ValueError, match="empty"):
        to_rgb(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="resize"):
        preprocess(np.zeros((3, 4, 3), np.uint8), resize="pad")
    with pytest.raises(ValueError, match="input_size"):
        lower_bound_size(10, 10, input_size=0)


def test_resize_prediction_is_bilinear_align_corners() -> None:
    pred = torch.randn(2, 14, 28)
    out = resize_prediction(pred, (30, 57))
    assert out.shape == (2, 30, 57)
    # align_corners=True keeps the corner values exactly
    torch.testing.assert_close(out[:, 0, 0], pred[:, 0, 0])
    torch.testing.assert_close(out[:, -1, -1], pred[:, -1, -1])
    assert resize_prediction(pred, (14, 28)) is pred
    assert math.isclose(out[0, 0, 56].item(), pred[0, 0, 27].item(), rel_tol=1e-6)
