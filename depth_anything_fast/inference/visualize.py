"""Depth visualisation as in the official `run.py`: per-image min-max to 0..255, `Spectral_r`."""

from __future__ import annotations

import functools

import numpy as np

SEPARATOR_WIDTH = 50  # white gap between image and depth in side-by-side outputs (official value)


@functools.lru_cache(maxsize=4)
def colormap_lut(name: str = "Spectral_r") -> np.ndarray:
    """(256, 3) uint8 RGB lookup table of a matplotlib colour map."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    # Indexing a colormap with integers 0..255 reads its 256-entry table, like the official code.
    return (cmap(np.arange(256))[:, :3] * 255).astype(np.uint8)


def to_uint8(disparity: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """(H, W) float -> (H, W) uint8 by per-image min-max scaling (a constant map gives zeros),
    or with one `value_range` (lo, hi) for a whole sequence (values outside are clipped).

    Non-finite values raise ValueError rather than turning into arbitrary colours.
    """
    if disparity.ndim != 2:
        raise ValueError(f"expected a (H, W) disparity, got shape {disparity.shape}")
    # float32 arithmetic, as the official script on its float32 prediction: same codes exactly
    d = disparity.astype(np.float32)
    if not np.isfinite(d).all():
        raise ValueError("disparity contains non-finite values")
    lo, hi = (d.min(), d.max()) if value_range is None else np.float32(value_range)
    if hi <= lo:
        return np.zeros(d.shape, np.uint8)
    if value_range is not None:
        d = np.clip(d, lo, hi)
    return ((d - lo) / (hi - lo) * 255.0).astype(np.uint8)


def colorize(
    disparity: np.ndarray, *, grayscale: bool = False, cmap: str = "Spectral_r",
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """(H, W) float disparity -> (H, W, 3) uint8 RGB (near = red end of Spectral_r), scaled
    per image or with `value_range` (`to_uint8`)."""
    codes = to_uint8(disparity, value_range)
    if grayscale:
        return np.repeat(codes[..., None], 3, axis=-1)
    return colormap_lut(cmap)[codes]


def side_by_side(image: np.ndarray, depth_rgb: np.ndarray) -> np.ndarray:
    """[image | white gap | depth] as (H, W1 + 50 + W2, 3) uint8; both inputs (H, *, 3) uint8."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = image[..., :3]
    if image.shape[0] != depth_rgb.shape[0]:
        raise ValueError(f"heights differ: image {image.shape}, depth {depth_rgb.shape}")
    gap = np.full((image.shape[0], SEPARATOR_WIDTH, 3), 255, np.uint8)
    return np.concatenate([image.astype(np.uint8), gap, depth_rgb], axis=1)
