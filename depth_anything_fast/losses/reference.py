"""Plain PyTorch reference implementations of every loss.

The MiDaS and SILog losses live here (they have no fused kernels); the oracles of the fused
losses live beside their ops in `depth_anything_fast.ops.pytorch` and are re-exported here.
Run them in float64 as oracles; autograd provides the reference gradients.

All functions take flattened images: `pred`/`target` `(B, L)`, `mask` `(B, L)` bool,
`segments` `(B, L)` integer. Half-precision inputs are computed in float32; float64 stays float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from depth_anything_fast.ops.pytorch import (
    SCALE_EPS,
    affine_invariant_loss_reference,
    compute_dtype,
    feature_alignment_loss_reference,
    masked_lower_median,
    normalise,
    valid_pixels,
)

__all__ = [
    "SCALE_EPS",
    "affine_invariant_loss_reference",
    "compute_dtype",
    "feature_alignment_loss_reference",
    "gradient_matching_loss",
    "least_squares_scale_shift",
    "masked_lower_median",
    "scale_shift_invariant_loss_reference",
    "silog_loss_reference",
    "valid_pixels",
]


def least_squares_scale_shift(pred: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image (scale, shift) minimising sum_valid (scale*pred + shift - target)^2.

    pred, target `(B, L)` (invalid entries already zeroed), valid `(B, L)` bool -> `(B,)`, `(B,)`;
    0, 0 where the 2x2 system is singular.
    """
    m = valid.to(pred.dtype)
    a00, a01, a11 = (m * pred * pred).sum(-1), (m * pred).sum(-1), m.sum(-1)
    b0, b1 = (m * pred * target).sum(-1), (m * target).sum(-1)
    det = a00 * a11 - a01 * a01
    ok = det != 0
    safe_det = torch.where(ok, det, 1.0)
    scale = torch.where(ok, (a11 * b0 - a01 * b1) / safe_det, 0.0)
    shift = torch.where(ok, (-a01 * b0 + a00 * b1) / safe_det, 0.0)
    return scale, shift


def gradient_matching_loss(residual: Tensor, valid: Tensor, scales: int) -> Tensor:
    """MiDaS multi-scale gradient matching, summed over scales k = 0..scales-1.

    residual, valid: `(B, H, W)`; at scale k both are subsampled with step 2^k and the masked
    absolute finite differences of the residual (both neighbours valid) are summed over the batch
    and divided by the number of valid pixels at that scale (0 when there is none).
    """
    total = residual.new_zeros(())
    for k in range(scales):
        step = 2**k
        m = valid[:, ::step, ::step].to(residual.dtype)
        r = residual[:, ::step, ::step] * m
        grad_x = (r[:, :, 1:] - r[:, :, :-1]).abs() * (m[:, :, 1:] * m[:, :, :-1])
        grad_y = (r[:, 1:, :] - r[:, :-1, :]).abs() * (m[:, 1:, :] * m[:, :-1, :])
        total = total + (grad_x.sum() + grad_y.sum()) / m.sum().clamp_min(1)
    return total


def scale_shift_invariant_loss_reference(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    *,
    alpha: float = 0.5,
    scales: int = 4,
    trimmed: bool = False,
    trim_fraction: float = 0.2,
) -> Tensor:
    """MiDaS loss: data term + alpha * multi-scale gradient matching (batch-based reductions).

    pred, target: `(B, H, W)` float; mask `(B, H, W)` bool (non-finite targets are also invalid).
    trimmed=False: least-squares aligned prediction, data term sum (p_ssi - g)^2 / (2 sum m).
    trimmed=True: median/MAD-normalised prediction and target (as the affine-invariant loss),
    data term = sum of the smallest (1 - trim_fraction) share of |p^ - g^| per image / (2 sum m).
    The gradient term acts on the residual of the same aligned pair. Returns a scalar.
    """
    dtype = compute_dtype(pred)
    batch, height, width = pred.shape
    valid = mask & torch.isfinite(target)
    flat_valid = valid.reshape(batch, -1)
    p = torch.where(flat_valid, pred.reshape(batch, -1).to(dtype), 0.0)
    g = torch.where(flat_valid, target.detach().reshape(batch, -1).to(dtype), 0.0)
    n_valid = flat_valid.sum(-1)
    if trimmed:
        in_group = flat_valid[:, None, :]
        p_aligned, g_aligned = normalise(p, in_group)[:, 0], normalise(g, in_group)[:, 0]
        error = torch.where(flat_valid, (p_aligned - g_aligned).abs(), float("inf"))
        sorted_error, _ = torch.sort(error, dim=-1)
        n_kept = (n_valid.to(dtype) * (1.0 - trim_fraction)).floor()
        kept = torch.arange(error.shape[-1], device=error.device)[None, :] < n_kept[:, None]
        data = torch.where(kept, sorted_error, 0.0).sum() / (2 * n_valid.sum()).clamp_min(1)
    else:
        scale, shift = least_squares_scale_shift(p, g, flat_valid)
        p_aligned, g_aligned = scale[:, None] * p + shift[:, None], g
        squared = torch.where(flat_valid, (p_aligned - g_aligned) ** 2, 0.0)
        data = squared.sum() / (2 * n_valid.sum()).clamp_min(1)
    if alpha <= 0:
        return data
    residual = (p_aligned - g_aligned).reshape(batch, height, width)
    return data + alpha * gradient_matching_loss(residual, valid, scales)


def silog_loss_reference(
    pred_depth: Tensor, target_depth: Tensor, mask: Tensor, lambd: float = 0.5
) -> Tensor:
    """Scale-invariant log loss (Depth Anything V2 metric fine-tuning), over the whole batch.

    sqrt(mean(d^2) - lambd * mean(d)^2), d = log(target) - log(pred) over pixels with mask,
    finite target > 0. Any matching shapes; returns a scalar, 0 when no pixel is valid.
    """
    dtype = compute_dtype(pred_depth)
    valid = mask & torch.isfinite(target_depth) & (target_depth > 0)
    safe_target = torch.where(valid, target_depth.detach().to(dtype), 1.0)
    safe_pred = torch.where(valid, pred_depth.to(dtype), 1.0)
    diff = torch.where(valid, safe_target.log() - safe_pred.log(), 0.0)
    n = valid.sum().clamp_min(1)
    mean, mean_sq = diff.sum() / n, (diff * diff).sum() / n
    # Rounding can make the variance slightly negative; the floor keeps sqrt's gradient finite.
    return (mean_sq - lambd * mean * mean).clamp_min(1e-12).sqrt() * valid.any()
