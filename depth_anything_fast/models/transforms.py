"""Official Depth Anything V2 preprocessing and postprocessing, in torch.

Preprocessing (`image2tensor` of the official code): RGB in [0, 1] -> lower-bound resize keeping
the aspect ratio, each side a multiple of 14 -> bicubic -> ImageNet normalisation.

Resize vs the official cv2.INTER_CUBIC: both are bicubic with a = -0.75, half-pixel centres,
replicated borders and no antialiasing, on a float image; we use
`torch.nn.functional.interpolate(mode="bicubic", align_corners=False, antialias=False)` on the
float32 image. The measured gap is documented in benchmarks/results/model_cpu.md.
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


def normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of (B, 3, H, W) values in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def preprocess(
    image: np.ndarray,
    input_size: int = 518,
    resize: str = "keep-aspect",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One uint8 image -> (1, 3, nh, nw) float32 normalised network input.

    Args:
        image: (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) / (H, W, 1) grey, uint8.
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
    size = (
        lower_bound_size(h, w, input_size) if resize == "keep-aspect" else square_size(input_size)
    )
    x = torch.from_numpy(np.require(rgb, requirements=["C", "W"])).to(device=device)
    x = x.permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 255.0
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=False)
    return normalize(x)


def resize_prediction(pred: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) prediction -> (B, H, W) by bilinear, align_corners=True (official V2)."""
    if tuple(pred.shape[-2:]) == tuple(size):
        return pred
    return F.interpolate(pred[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
