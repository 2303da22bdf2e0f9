"""Exact resampling of decoded images: the official preprocessing's filter on a crop box.

`models.transforms.resample_bicubic` (cv2.INTER_CUBIC: a = -0.75, no antialiasing, float) on
the box from `geometry`, then ImageNet normalisation. The PIL backend resamples every view this
way; the DALI backend does for inference batches (DALI decodes, this resamples on the same
device), so inference inputs equal `models.transforms.preprocess` whatever the backend.
"""

from __future__ import annotations

import torch

from ..models.transforms import normalize, resample_bicubic
from .geometry import CropBox


def resample_box(rgb: torch.Tensor, box: CropBox) -> torch.Tensor:
    """(H, W, 3) decoded image (uint8, any device) -> (out_h, out_w, 3) float32 in 0..255
    units, not rounded or clamped."""
    return resample_bicubic(
        rgb, (box.out_h, box.out_w), (box.y0, box.x0, box.y1, box.x1), flip=box.flip
    )


def normalise(rgb: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) values in 0..255 (any dtype) -> (3, H, W) float32 ImageNet-normalised."""
    x = rgb.to(torch.float32) / 255.0
    return normalize(x.permute(2, 0, 1).contiguous().unsqueeze(0))[0]
