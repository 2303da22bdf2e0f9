"""Temporal alignment of relative disparity across the frames of a video.

A relative model predicts disparity up to an unknown scale and shift, and that affine freedom is
resolved afresh on every frame: with the official per-frame min-max colouring, a static scene
flickers as the frame's extremes move. `TemporalAligner` maps each frame onto a running
reference with a robust least-squares scale and shift, so every frame is in the reference's
units (those of the first frame), and `mean_frame_change` measures the flicker that is left.

The fit (`fit_scale_shift`) runs on a fixed subsampling grid of at most `max_points` pixels:
it starts from the median / mean-absolute-deviation alignment, then refits ordinary least squares
on the pixels whose residual is within `3 * 1.4826 * MAD` of the residuals (a trimmed fit, so
moving objects and disocclusions do not pull the scale), `iterations` times. The reference is an
exponential moving average of the aligned frames on that grid (`momentum` = weight of the newest
frame), which follows a moving camera while averaging out per-frame noise.
"""

from __future__ import annotations

import math

import numpy as np

_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution -> its standard deviation


def fit_scale_shift(pred: np.ndarray, target: np.ndarray, iterations: int = 3,
                    inlier_sigmas: float = 3.0) -> tuple[float, float]:
    """Robust (scale, shift) with `scale * pred + shift ~ target`.

    Args:
        pred, target: same-shape float arrays (any shape; flattened), finite.
        iterations: trimmed least-squares refits after the median/MAD start.
        inlier_sigmas: residuals beyond this many robust standard deviations are left out of
            the next refit.
    Returns:
        (scale, shift) as floats, computed in float64; scale > 0. A constant `pred` gives
        scale 1 and the shift of the medians; a refit that would flip the sign (no usable
        inliers) keeps the last positive fit.
    """
    p = np.asarray(pred, np.float64).ravel()
    t = np.asarray(target, np.float64).ravel()
    if p.shape != t.shape or p.size == 0:
        raise ValueError(f"pred and target must be non-empty and of one shape, got "
                         f"{np.shape(pred)} and {np.shape(target)}")
    p_med, t_med = np.median(p), np.median(t)
    p_dev, t_dev = np.mean(np.abs(p - p_med)), np.mean(np.abs(t - t_med))
    if not p_dev > 0:
        return 1.0, float(t_med - p_med)
    scale = t_dev / p_dev if t_dev > 0 else 1.0
    shift = t_med - scale * p_med
    for _ in range(iterations):
        residual = scale * p + shift - t
        centre = np.median(residual)
        sigma = _MAD_TO_SIGMA * np.median(np.abs(residual - centre))
        inliers = np.abs(residual - centre) <= max(inlier_sigmas * sigma, 1e-12)
        pi, ti = p[inliers], t[inliers]
        if pi.size < 2:
            break
        pm, tm = pi.mean(), ti.mean()
        var = np.mean((pi - pm) ** 2)
        if not var > 0:
            break
        new_scale = np.mean((pi - pm) * (ti - tm)) / var
        if not (math.isfinite(new_scale) and new_scale > 0):
            break
        scale, shift = new_scale, tm - new_scale * pm
    return float(scale), float(shift)


class TemporalAligner:
    """Aligns the disparity maps of consecutive frames to a running reference.

    Args:
        momentum: weight of the newest aligned frame in the reference's moving average (0 keeps
            the first frame as the reference for the whole video).
        max_points: pixels of the subsampling grid the fit and the reference use.

    Call `align` once per frame, in order; every frame must have the first frame's shape.
    """

    def __init__(self, momentum: float = 0.1, max_points: int = 16384) -> None:
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if max_points < 16:
            raise ValueError(f"max_points must be >= 16, got {max_points}")
        self.momentum = momentum
        self.max_points = max_points
        self._reference: np.ndarray | None = None
        self._stride = (1, 1)
        self._shape: tuple[int, int] | None = None

    def _grid(self, disparity: np.ndarray) -> np.ndarray:
        return disparity[:: self._stride[0], :: self._stride[1]].astype(np.float64)

    def align(self, disparity: np.ndarray) -> tuple[np.ndarray, float, float]:
        """(H, W) float disparity -> (aligned float32 map, scale, shift), aligned = scale *
        disparity + shift; the first frame is returned as it is (scale 1, shift 0) and becomes
        the reference. Raises ValueError for another shape than the first frame's or
        non-finite values."""
        if disparity.ndim != 2:
            raise ValueError(f"expected a (H, W) disparity, got shape {disparity.shape}")
        if not np.isfinite(disparity).all():
            raise ValueError("disparity contains non-finite values")
        if self._reference is None:
            h, w = disparity.shape
            step = max(1, math.ceil(math.sqrt(h * w / self.max_points)))
            self._stride, self._shape = (step, step), (h, w)
            self._reference = self._grid(disparity)
            return disparity.astype(np.float32, copy=False), 1.0, 0.0
        if disparity.shape != self._shape:
            raise ValueError(f"frame of shape {disparity.shape} after frames of {self._shape}")
        sample = self._grid(disparity)
        scale, shift = fit_scale_shift(sample, self._reference)
        self._reference += self.momentum * (scale * sample + shift - self._reference)
        aligned = (disparity.astype(np.float64) * scale + shift).astype(np.float32)
        return aligned, scale, shift


def mean_frame_change(frames: list[np.ndarray]) -> float:
    """Flicker of a picture sequence: the mean absolute difference between consecutive frames
    over all pixels and channels (for uint8 pictures in 0..255 levels), averaged over the
    frame pairs. Needs at least two frames of one shape."""
    if len(frames) < 2:
        raise ValueError("need at least two frames")
    changes = [np.abs(b.astype(np.float64) - a.astype(np.float64)).mean()
               for a, b in zip(frames[:-1], frames[1:], strict=True)]
    return float(np.mean(changes))
