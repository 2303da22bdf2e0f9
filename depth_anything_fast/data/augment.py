"""Strong photometric perturbation of unlabelled images (student view), shared parameters.

As in Depth Anything / UniMatch: colour jitter (brightness, contrast, saturation 0.5, hue 0.25)
with probability 0.8, greyscale with probability 0.2, Gaussian blur (sigma ~ U(0.1, 2)) with
probability 0.5. Parameters are drawn on the host from the per-sample generator, so the DALI and
PIL backends apply the same perturbation. The operations follow DALI's definitions:
`brightness_contrast` (out = brightness * (128 + contrast * (in - 128))), then `hsv` (a hue
rotation and saturation scale in YIQ space), each rounding to uint8, then a Gaussian blur (DALI:
two 1-D `fn.filter` passes with `gaussian_kernel`, ~10x faster than `fn.gaussian_blur` on the
CPU; PIL: `ImageFilter.GaussianBlur`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONTRAST_CENTER = 128.0
# No blur: a Gaussian this narrow is the identity kernel.
NO_BLUR_SIGMA = 1e-3
# Blur kernel taps: 2 * ceil(3 * sigma) + 1 for the largest sigma drawn (2.0).
BLUR_TAPS = 13
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]], np.float64
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


@dataclass(frozen=True)
class StrongParams:
    """One sample's perturbation: brightness/contrast/saturation factors, hue in degrees,
    blur sigma in pixels (`NO_BLUR_SIGMA` = none)."""

    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    sigma: float = NO_BLUR_SIGMA


def sample_strong(
    rng: np.random.Generator,
    *,
    jitter_prob: float = 0.8,
    grey_prob: float = 0.2,
    blur_prob: float = 0.5,
    strength: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.25),
    sigma_range: tuple[float, float] = (0.1, 2.0),
) -> StrongParams:
    """Draw a `StrongParams` (always the same number of draws, so streams stay aligned).

    sigma_range must stay within what `BLUR_TAPS` covers (sigma <= 2)."""
    b, c, s, h = strength
    draws = rng.random(3)
    factors = rng.uniform([1 - b, 1 - c, 1 - s, -h], [1 + b, 1 + c, 1 + s, h])
    sigma = float(rng.uniform(*sigma_range))
    jitter = draws[0] < jitter_prob
    brightness, contrast, saturation, hue = factors if jitter else (1.0, 1.0, 1.0, 0.0)
    if draws[1] < grey_prob:
        saturation = 0.0
    return StrongParams(
        brightness=float(brightness),
        contrast=float(contrast),
        saturation=float(saturation),
        hue=float(hue) * 360.0,
        sigma=sigma if draws[2] < blur_prob else NO_BLUR_SIGMA,
    )


def gaussian_kernel(sigma: float, taps: int = BLUR_TAPS) -> np.ndarray:
    """(taps,) float32 normalised Gaussian weights (a unit impulse for tiny sigma)."""
    r = np.arange(taps, dtype=np.float64) - taps // 2
    k = np.exp(-0.5 * (r / max(sigma, NO_BLUR_SIGMA)) ** 2)
    return (k / k.sum()).astype(np.float32)


def hsv_matrix(hue_degrees: float, saturation: float) -> np.ndarray:
    """3x3 RGB->RGB matrix of DALI's `hsv` operator (value 1)."""
    h = np.deg2rad(hue_degrees)
    rot = np.array([[1, 0, 0], [0, np.cos(h), np.sin(h)], [0, -np.sin(h), np.cos(h)]])
    return _YIQ_TO_RGB @ rot @ np.diag([1.0, saturation, saturation]) @ _RGB_TO_YIQ


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def apply_strong(image: np.ndarray, params: StrongParams) -> np.ndarray:
    """Perturb an (H, W, 3) uint8 image on the CPU (the PIL backend's implementation)."""
    from PIL import Image, ImageFilter

    x = image.astype(np.float32)
    x = _to_uint8(params.brightness * (CONTRAST_CENTER + params.contrast * (x - CONTRAST_CENTER)))
    m = hsv_matrix(params.hue, params.saturation).astype(np.float32)
    x = _to_uint8(x.astype(np.float32) @ m.T)
    if params.sigma > NO_BLUR_SIGMA:
        x = np.array(Image.fromarray(x).filter(ImageFilter.GaussianBlur(params.sigma)))
    return x
