"""Geometry shared by the DALI and PIL pipelines, so both produce pixel-identical layouts.

Every spatial transform of a sample is described by one `CropBox`: a rectangle in the source
image's pixel coordinates (continuous, pixel centres at +0.5) that is resampled to an
`out_h x out_w` output, optionally mirrored. Resize-then-crop equals resampling the crop's
pre-image, so DALI (`fn.resize` with `roi_start`/`roi_end`; a reversed ROI mirrors) and the PIL
backend (`transforms.resample_bicubic`, the official preprocessing's resampler) apply the
very same mapping, and targets use it with nearest sampling.
All random choices come from `sample_rng(seed, epoch, index)`: independent of backend, batch
composition and sharding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The one implementation of the official resize rule (640x480 -> 686x518) and of the inference
# input size ("keep-aspect" or "square"): each batch of the inference loader is one such size.
from depth_anything_fast.transforms import lower_bound_size, network_size

__all__ = [
    "CropBox",
    "crop_nearest",
    "dali_roi",
    "full_box",
    "lower_bound_size",
    "network_size",
    "nearest_indices",
    "sample_crop",
    "sample_rng",
]

@dataclass(frozen=True)
class CropBox:
    """Source rectangle (y0, x0, y1, x1) in source pixels, resampled to (out_h, out_w).

    `flip` mirrors the output horizontally (applied after cropping).
    """

    y0: float
    x0: float
    y1: float
    x1: float
    out_h: int
    out_w: int
    flip: bool = False

    def scaled(self, sy: float, sx: float) -> CropBox:
        """The same box on a version of the source resized by (sy, sx) (e.g. a target map)."""
        return CropBox(
            self.y0 * sy, self.x0 * sx, self.y1 * sy, self.x1 * sx, self.out_h, self.out_w, self.flip
        )


def full_box(h: int, w: int, out_h: int, out_w: int) -> CropBox:
    """Resize of the whole (h, w) image to (out_h, out_w), no crop, no flip."""
    return CropBox(0.0, 0.0, float(h), float(w), out_h, out_w, False)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Per-sample generator: the same (seed, epoch, dataset index) gives the same draws."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, index])


def sample_crop(
    h: int, w: int, crop_size: int, rng: np.random.Generator, *, flip_prob: float = 0.5
) -> CropBox:
    """Training geometry: lower-bound resize to `crop_size`, random crop_size^2 crop, h-flip.

    The crop offset is an integer position in the resized image (as a crop of a materialised
    resize would be); the returned box is its pre-image in source pixels.
    """
    nh, nw = lower_bound_size(h, w, crop_size)
    top = int(rng.integers(0, nh - crop_size + 1))
    left = int(rng.integers(0, nw - crop_size + 1))
    flip = bool(rng.random() < flip_prob)
    sy, sx = h / nh, w / nw
    return CropBox(
        top * sy, left * sx, (top + crop_size) * sy, (left + crop_size) * sx,
        crop_size, crop_size, flip,
    )


def nearest_indices(box: CropBox, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour source rows (out_h,) and columns (out_w,) int64 for `box` on (h, w).

    Output pixel i samples the source pixel containing y0 + (i + 0.5) * (y1 - y0) / out_h.
    """
    ys = box.y0 + (np.arange(box.out_h) + 0.5) * ((box.y1 - box.y0) / box.out_h)
    xs = box.x0 + (np.arange(box.out_w) + 0.5) * ((box.x1 - box.x0) / box.out_w)
    # Centres that fall exactly on a pixel border (common: scales are ratios of small integers)
    # must round up as in exact arithmetic; float error is far below the 1e-6 nudge, and real
    # non-integer positions are at least 1/(2 * out size) away from a border.
    rows = np.clip(np.floor(ys + 1e-6).astype(np.int64), 0, h - 1)
    cols = np.clip(np.floor(xs + 1e-6).astype(np.int64), 0, w - 1)
    if box.flip:
        cols = cols[::-1]
    return rows, cols


def crop_nearest(array: np.ndarray, box: CropBox, image_hw: tuple[int, int]) -> np.ndarray:
    """Apply `box` (defined on an image of size `image_hw`) to a per-pixel map with nearest.

    `array`: (h, w) or (h, w, C), any dtype, possibly of another resolution than the image
    (the box is rescaled). Returns (out_h, out_w[, C]) of the same dtype.
    """
    th, tw = array.shape[:2]
    ih, iw = image_hw
    rows, cols = nearest_indices(box.scaled(th / ih, tw / iw), th, tw)
    return array[rows[:, None], cols[None, :]]


def dali_roi(box: CropBox) -> tuple[np.ndarray, np.ndarray]:
    """`fn.resize` roi_start / roi_end (float32 (y, x)); a reversed x range mirrors."""
    if box.flip:
        return (np.array([box.y0, box.x1], np.float32), np.array([box.y1, box.x0], np.float32))
    return np.array([box.y0, box.x0], np.float32), np.array([box.y1, box.x1], np.float32)
