"""Official Depth Anything V2 preprocessing and postprocessing, in torch.

Preprocessing (`image2tensor` of the official code): RGB in [0, 1] -> lower-bound resize keeping
the aspect ratio, each side a multiple of 14 -> bicubic -> ImageNet normalisation.

Resize vs the official cv2.INTER_CUBIC: both are bicubic with a = -0.75, half-pixel centres,
replicated borders and no antialiasing. `resample_bicubic` is the one implementation, used here
and by the data loaders' PIL backend (which also crops and flips with it): for a whole-image
resize it equals `torch.nn.functional.interpolate(mode="bicubic", align_corners=False,
antialias=False)` to float32 rounding. The measured gap to cv2 is documented in
benchmarks/results/model_cpu.md.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("keep-aspect", "square")


def _constrain_to_multiple(x: float, min_val: int, multiple: int) -> int:
    # official `constrain_to_multiple_of`: np.round (half to even, as Python's round), then ceil
    # when that falls under the lower bound
    y = int(round(x / multiple) * multiple)
    if y < min_val:
        y = int(math.ceil(x / multiple) * multiple)
    return y


def lower_bound_size(h: int, w: int, input_size: int = 518, multiple: int = 14) -> tuple[int, int]:
    """Network input size for an h x w image (official 'lower_bound' resize).

    Both sides are scaled by the larger of input_size/h and input_size/w, rounded to a multiple
    of `multiple` and raised (ceil) where under input_size. 480x640 -> (518, 686).
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    if input_size <= 0:
        raise ValueError(f"input_size must be positive, got {input_size}")
    scale = max(input_size / h, input_size / w)
    return (
        _constrain_to_multiple(scale * h, input_size, multiple),
        _constrain_to_multiple(scale * w, input_size, multiple),
    )


def square_size(input_size: int = 518, multiple: int = 14) -> tuple[int, int]:
    """Fixed (s, s) batch size: input_size raised to a multiple of `multiple` (518 -> 518)."""
    side = int(math.ceil(input_size / multiple) * multiple)
    return side, side


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) grey, (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA uint8 -> (H, W, 3) uint8.

    Alpha is dropped (not composited), as cv2's BGRA->BGR conversion does.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got shape {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image of shape {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[:, :, :3]


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of (..., 3, H, W) float values in [0, 1] (same dtype)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def normalise_rgb(rgb: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) values in 0..255 (any dtype) -> (3, H, W) float32 ImageNet-normalised."""
    return imagenet_normalise((rgb.to(torch.float32) / 255.0).permute(2, 0, 1).contiguous())


def network_size(
    h: int, w: int, input_size: int = 518, resize: str = "keep-aspect"
) -> tuple[int, int]:
    """Network input (nh, nw) for an h x w image: `lower_bound_size` for "keep-aspect",
    `square_size` for "square"."""
    if resize == "keep-aspect":
        return lower_bound_size(h, w, input_size)
    if resize == "square":
        return square_size(input_size)
    raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor of `array`'s values: shares memory with a writable array; a read-only one
    (e.g. `np.asarray` of a PIL image) is copied, as torch cannot share it without a warning."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


# Keys' cubic convolution coefficient of cv2.INTER_CUBIC and torch's bicubic.
_CUBIC_A = -0.75


def _cubic_taps(
    start: float, end: float, n_out: int, n_in: int, device: torch.device | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices (n_out, 4) int64 (clamped: replicated border) and weights (n_out, 4)
    float32 sampling the source range [start, end) at n_out half-pixel centres."""
    a = _CUBIC_A
    centre = start + (np.arange(n_out, dtype=np.float64) + 0.5) * ((end - start) / n_out) - 0.5
    base = np.floor(centre)
    t = (centre - base)[:, None]
    d = np.abs(np.arange(-1, 3, dtype=np.float64)[None, :] - t)  # distances to the 4 taps
    near = ((a + 2) * d - (a + 3)) * d * d + 1  # |d| <= 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # 1 < |d| < 2
    weights = np.where(d <= 1, near, far)
    index = np.clip(base[:, None].astype(np.int64) + np.arange(-1, 3), 0, n_in - 1)
    return (
        torch.from_numpy(index).to(device),
        torch.from_numpy(weights.astype(np.float32)).to(device),
    )


def resample_bicubic(
    image: torch.Tensor,
    size: tuple[int, int],
    box: tuple[float, float, float, float] | None = None,
    *,
    flip: bool = False,
) -> torch.Tensor:
    """Bicubic resampling (a = -0.75, no antialiasing) of a source rectangle to `size`.

    Output pixel (i, j) samples the source at y = y0 + (i + 0.5) * (y1 - y0) / out_h and
    x = x0 + (j + 0.5) * (x1 - x0) / out_w (pixel centres at +0.5), reading source pixels
    outside the box where they exist and replicating the border beyond. Separable, rows first
    and channels last: gathered rows are whole memory rows, and a large uint8 image is
    converted to float only where it is read (4x faster than `F.interpolate` on a 12 MP photo).
    Tap positions and weights are computed in float64.

    Args:
        image: (H, W) or (H, W, C) tensor, any real dtype (uint8 included), any strides.
        size: (out_h, out_w).
        box: (y0, x0, y1, x1) in source pixels (floats); the whole image when None.
        flip: mirror the output horizontally (after cropping).
    Returns:
        (out_h, out_w) or (out_h, out_w, C) float32 in the units of `image`, not rounded or
        clamped (bicubic overshoots at edges).
    """
    if image.dim() not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty (H, W) or (H, W, C) image, got {tuple(image.shape)}")
    h, w = image.shape[:2]
    out_h, out_w = size
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"output size must be positive, got {out_h}x{out_w}")
    y0, x0, y1, x1 = (0.0, 0.0, float(h), float(w)) if box is None else box
    if not (y1 > y0 and x1 > x0):
        raise ValueError(f"resample box (y0, x0, y1, x1) = {box} is empty")
    rows, row_w = _cubic_taps(y0, y1, out_h, h, image.device)
    cols, col_w = _cubic_taps(x0, x1, out_w, w, image.device)
    if flip:
        cols, col_w = cols.flip(0), col_w.flip(0)
    channel_dims = (1,) * (image.dim() - 2)
    row_w = row_w.view(out_h, 4, 1, *channel_dims)
    col_w = col_w.view(out_w, 4, *channel_dims)
    out = image.index_select(0, rows[:, 0]).to(torch.float32).mul_(row_w[:, 0])
    for k in range(1, 4):
        out.add_(image.index_select(0, rows[:, k]).to(torch.float32).mul_(row_w[:, k]))
    result = out.index_select(1, cols[:, 0]).mul_(col_w[:, 0])
    for k in range(1, 4):
        result.add_(out.index_select(1, cols[:, k]).mul_(col_w[:, k]))
    return result


def preprocess(
    image: np.ndarray,
    input_size: int = 518,
    resize: str = "keep-aspect",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One uint8 image -> (1, 3, nh, nw) float32 normalised network input.

    Args:
        image: (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) / (H, W, 1) grey, uint8; read-only
            arrays are fine (copied; writable ones are read in place).
        input_size: lower bound of the short side ("keep-aspect") or the side ("square").
        resize: "keep-aspect" (official `lower_bound_size`) or "square" (`square_size`; the
            authors' advice for batching, no padding).
        device: where to resize; the CPU when None.
    Returns:
        (1, 3, nh, nw) float32, nh and nw multiples of 14.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    x = as_tensor(rgb).to(device=device)
    x = resample_bicubic(x, network_size(h, w, input_size, resize))
    return normalise_rgb(x)[None]


def resize_prediction(pred: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) prediction -> (B, H, W) by bilinear, align_corners=True (official V2)."""
    if tuple(pred.shape[-2:]) == tuple(size):
        return pred
    return F.interpolate(pred[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
