"""Official Depth Anything preprocessing: lower-bound resize rule, normalisation, channels."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from depth_anything_fast.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    as_tensor,
    imagenet_normalise,
    lower_bound_size,
    network_size,
    normalise_rgb,
    preprocess,
    resample_bicubic,
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
    assert square_size(518) == (518, 518) == square_size()  # the default: the training size
    assert square_size(500) == (504, 504)
    grey = np.zeros((30, 40), np.uint8)
    assert preprocess(grey).shape == (1, 3, 518, 686)  # default: lower bound 518


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
    for empty in ((0, 4, 3), (4, 0, 3), (4, 0)):
        with pytest.raises(ValueError, match="empty image of shape"):
            to_rgb(np.zeros(empty, np.uint8))
    assert to_rgb(np.zeros((5, 1, 3), np.uint8)).shape == (5, 1, 3)  # one column is an image
    assert to_rgb(np.zeros((1, 5), np.uint8)).shape == (1, 5, 3)
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
    # every pixel: output i samples the source at i * (n_in - 1) / (n_out - 1), linearly
    def weights(n_in: int, n_out: int) -> np.ndarray:
        src = np.arange(n_out) * (n_in - 1) / (n_out - 1)
        low = np.minimum(np.floor(src).astype(int), n_in - 2)
        m = np.zeros((n_out, n_in))
        m[np.arange(n_out), low] = 1 - (src - low)
        m[np.arange(n_out), low + 1] = src - low
        return m

    expected = np.einsum("oh,bhw,pw->bop", weights(14, 30), pred.double().numpy(),
                         weights(28, 57))
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-5)


def _keys_cubic(d: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel at distances d (float64)."""
    d = np.abs(d)
    near = (a + 2) * d**3 - (a + 3) * d**2 + 1
    far = a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _resample_matrix(start: float, end: float, n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) float64 weights of the bicubic samples of [start, end), border replicated."""
    centres = start + (np.arange(n_out) + 0.5) * (end - start) / n_out - 0.5
    m = np.zeros((n_out, n_in))
    for i, c in enumerate(centres):
        for j in range(int(np.floor(c)) - 1, int(np.floor(c)) + 3):
            m[i, min(max(j, 0), n_in - 1)] += _keys_cubic(np.array(c - j))
    return m


def test_resample_bicubic_box_and_flip_match_float64_oracle() -> None:
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ())))
    for _ in range(8):
        h, w = (int(v) for v in rng.integers(5, 80, 2))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        y0, x0 = rng.uniform(-2, h / 2), rng.uniform(-2, w / 2)
        y1, x1 = y0 + rng.uniform(1, h), x0 + rng.uniform(1, w)
        out_h, out_w = (int(v) for v in rng.integers(1, 90, 2))  # up- and downsampling
        flip = bool(rng.random() < 0.5)
        got = resample_bicubic(torch.from_numpy(img), (out_h, out_w), (y0, x0, y1, x1), flip=flip)
        assert got.shape == (out_h, out_w, 3) and got.dtype == torch.float32
        wy, wx = _resample_matrix(y0, y1, out_h, h), _resample_matrix(x0, x1, out_w, w)
        ref = np.einsum("ih,hwc,jw->ijc", wy, img.astype(np.float64), wx)
        if flip:
            ref = ref[:, ::-1]
        # float32 sums of 16 products of values <= 255 with weights <= 1.3: error < 1e-3
        np.testing.assert_allclose(got.double().numpy(), ref, rtol=0, atol=1e-3)
    grey = torch.from_numpy(rng.random((9, 13)))
    assert resample_bicubic(grey, (4, 6)).shape == (4, 6)
    with pytest.raises(ValueError, match="empty"):
        resample_bicubic(grey, (4, 6), (2.0, 0.0, 2.0, 5.0))
    with pytest.raises(ValueError, match="positive"):
        resample_bicubic(grey, (0, 6))


def test_resample_bicubic_whole_image_is_torch_bicubic() -> None:
    for h, w, out in [(37, 50, (70, 98)), (300, 410, (98, 126)), (64, 64, (64, 64))]:
        img = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8)
        ref = F.interpolate(img.permute(2, 0, 1)[None].double(), size=out, mode="bicubic",
                            align_corners=False, antialias=False)[0].permute(1, 2, 0)
        torch.testing.assert_close(resample_bicubic(img, out).double(), ref, rtol=0, atol=1e-3)


def test_preprocess_reads_read_only_arrays_without_warning() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    want = preprocess(rgb, input_size=28)
    frozen = rgb.copy()
    frozen.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.from_numpy warns on read-only arrays
        torch.testing.assert_close(preprocess(frozen, input_size=28), want, rtol=0, atol=0)
        preprocess(np.broadcast_to(rgb[:1], rgb.shape), input_size=28)
    assert want.is_contiguous()


def test_lower_bound_size_other_input_sizes_match_official_rule() -> None:
    """Input sizes whose rounding falls under the bound (505: 36 x 14 = 504 < 505) take the
    official rule's ceil branch; input_size 1 is still a size."""
    sizes = torch.randint(1, 2000, (60, 2)).tolist() + [[505, 505], [100, 3000]]
    for target in (505, 392, 1, 700):
        for h, w in sizes:
            assert lower_bound_size(h, w, input_size=target) == official_size(h, w, target)
    assert lower_bound_size(505, 505, input_size=505) == (518, 518)
    for h, w in ((0, 5), (5, 0), (-1, 5), (5, -1), (0, 0)):
        with pytest.raises(ValueError, match=f"^image size must be positive, got {h}x{w}$"):
            lower_bound_size(h, w)


def test_network_size_defaults_and_modes() -> None:
    assert network_size(480, 640) == (518, 686) == lower_bound_size(480, 640)  # keep-aspect 518
    assert network_size(480, 640, 392, "square") == (392, 392)
    with pytest.raises(ValueError, match=r"^resize must be one of \('keep-aspect', 'square'\), "
                       r"got 'pad'$"):
        network_size(480, 640, resize="pad")


def test_imagenet_normalise_keeps_float64_and_normalise_rgb_gives_float32() -> None:
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    got = imagenet_normalise(x)
    # float64 constants: float32 ones would be off by ~1e-8
    assert got.dtype == torch.float64 and torch.allclose(got, (x - mean) / std, rtol=0, atol=1e-15)
    rgb = torch.rand(4, 5, 3, dtype=torch.float64) * 255
    out = normalise_rgb(rgb)
    assert out.dtype == torch.float32 and out.shape == (3, 4, 5)
    torch.testing.assert_close(out.double(), (rgb.permute(2, 0, 1) / 255 - mean) / std,
                               rtol=0, atol=1e-6)


def test_as_tensor_shares_a_writable_array() -> None:
    array = np.zeros((2, 3), np.uint8)
    tensor = as_tensor(array)
    array[1, 2] = 7  # same memory: seen through the tensor
    assert int(tensor[1, 2]) == 7
    array.setflags(write=False)
    copy = as_tensor(array)
    assert not np.shares_memory(copy.numpy(), array) and torch.equal(copy, tensor)


def test_resample_bicubic_one_row_or_column_and_refusals() -> None:
    """Single rows and columns are images (against the float64 oracle); empty or 4-D images,
    non-positive output sizes and empty boxes are refused with the offending value."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ())))
    for h, w, out in [(1, 7, (1, 5)), (7, 1, (4, 1)), (1, 1, (3, 2)), (6, 9, (1, 1))]:
        img = rng.random((h, w))
        got = resample_bicubic(torch.from_numpy(img), out).double().numpy()
        ref = _resample_matrix(0, h, out[0], h) @ img @ _resample_matrix(0, w, out[1], w).T
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    for shape in ((0, 5), (5, 0), (0, 0), (2, 3, 3, 1), (4,)):
        message = re.escape(f"expected a non-empty (H, W) or (H, W, C) image, got {shape}")
        with pytest.raises(ValueError, match=f"^{message}$"):
            resample_bicubic(torch.zeros(shape), (2, 2))
    grey = torch.rand(5, 6)
    for size in ((0, 3), (3, 0), (-1, 3)):
        with pytest.raises(ValueError, match=f"got {size[0]}x{size[1]}$"):
            resample_bicubic(grey, size)
    for box in ((0.0, 2.0, 4.0, 2.0), (3.0, 0.0, 3.0, 6.0), (4.0, 0.0, 3.0, 6.0)):
        with pytest.raises(ValueError, match="is empty"):
            resample_bicubic(grey, (2, 2), box)
