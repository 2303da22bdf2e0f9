"""MiDaS losses (scale-and-shift-invariant MSE / trimmed MAE + gradient matching) and SILog.

Plain PyTorch: the implementations are those of `reference.py`, behind input validation.
"""

from __future__ import annotations

from torch import Tensor, nn

from depth_anything_fast.losses.inputs import image_inputs
from depth_anything_fast.losses.reference import (
    scale_shift_invariant_loss_reference,
    silog_loss_reference,
)


def scale_shift_invariant_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    *,
    alpha: float = 0.5,
    scales: int = 4,
    trimmed: bool = False,
) -> Tensor:
    """MiDaS loss: data term + alpha * sum over `scales` scales of gradient matching.

    Args:
        pred: `(B, H, W)` or `(B, 1, H, W)` float predicted disparity (gets the gradient).
        target: same shape, float; non-finite values are invalid.
        mask: same shape, bool valid pixels.
        alpha: weight of the gradient matching term (0 disables it).
        scales: number of scales (step 2^k, k < scales).
        trimmed: False -> least-squares scale/shift aligned MSE (SSI-MSE); True -> trimmed MAE on
            median/MAD-normalised maps, keeping the smallest 80% of residuals per image.

    Returns:
        scalar in float32 (float64 for float64 inputs), batch-based reductions; 0 without valid
        pixels.
    """
    if scales < 1:
        raise ValueError(f"scales must be >= 1, got {scales}")
    if mask is None:
        raise ValueError("mask is required (pass torch.ones_like(target, dtype=torch.bool))")
    pred, target, mask, _ = image_inputs(pred, target, mask)
    return scale_shift_invariant_loss_reference(
        pred, target, mask, alpha=alpha, scales=scales, trimmed=trimmed
    )


def silog_loss(
    pred_depth: Tensor, target_depth: Tensor, mask: Tensor, *, lambd: float = 0.5
) -> Tensor:
    """Scale-invariant log loss of Depth Anything V2's metric fine-tuning.

    Args:
        pred_depth: `(B, H, W)` or `(B, 1, H, W)` positive float metric depth.
        target_depth: same shape, float; pixels that are non-finite or <= 0 are invalid.
        mask: same shape, bool.
        lambd: variance weight (0.5 in V2).

    Returns:
        scalar sqrt(mean d^2 - lambd mean(d)^2), d = log target - log pred over the batch's valid
        pixels; 0 when there is none.
    """
    pred_depth, target_depth, mask, _ = image_inputs(
        pred_depth, target_depth, mask, target_name="target_depth"
    )
    return silog_loss_reference(pred_depth, target_depth, mask, lambd=lambd)


class ScaleShiftInvariantLoss(nn.Module):
    """Module form of `scale_shift_invariant_loss`."""

    def __init__(self, alpha: float = 0.5, scales: int = 4, trimmed: bool = False) -> None:
        super().__init__()
        self.alpha, self.scales, self.trimmed = alpha, scales, trimmed

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return scale_shift_invariant_loss(
            pred, target, mask, alpha=self.alpha, scales=self.scales, trimmed=self.trimmed
        )


class SiLogLoss(nn.Module):
    """Module form of `silog_loss`."""

    def __init__(self, lambd: float = 0.5) -> None:
        super().__init__()
        self.lambd = lambd

    def forward(self, pred_depth: Tensor, target_depth: Tensor, mask: Tensor) -> Tensor:
        return silog_loss(pred_depth, target_depth, mask, lambd=self.lambd)
