"""Autograd formulas shared by the C++ and Triton custom ops.

Both backends expose the same forward/backward pair (the kernel interface), so the backward
registration is written once and attached to each backend's forward op.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def register_affine_invariant_autograd(forward_op: Any, backward_op: Any) -> None:
    """Backward of `forward_op(pred, target, mask, segments, num_segments) -> (loss, stats, idx)`.

    Only `pred` gets a gradient, computed by `backward_op` in one pass from the per-group sums
    saved in `stats` and the median element of `median_index`.
    """

    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        pred, target, mask, segments, num_segments = inputs
        _, stats, median_index = output
        ctx.save_for_backward(pred, target, mask, segments, stats, median_index)
        ctx.num_segments = num_segments

    def backward(ctx: Any, grad_loss: Tensor, _grad_stats: Tensor, _grad_index: Tensor) -> tuple:
        pred, target, mask, segments, stats, median_index = ctx.saved_tensors
        grad_pred = backward_op(
            grad_loss.to(torch.float32).contiguous(),
            pred,
            target,
            mask,
            segments,
            ctx.num_segments,
            stats,
            median_index,
        )
        return grad_pred, None, None, None, None

    forward_op.register_autograd(backward, setup_context=setup_context)


def register_feature_alignment_autograd(forward_op: Any, backward_op: Any) -> None:
    """Backward of `forward_op(features, frozen, alpha) -> (loss, cos, n_kept)` (to features)."""

    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        features, frozen, alpha = inputs
        _, cos, n_kept = output
        ctx.save_for_backward(features, frozen, cos, n_kept)
        ctx.alpha = alpha

    def backward(ctx: Any, grad_loss: Tensor, _grad_cos: Tensor, _grad_kept: Tensor) -> tuple:
        features, frozen, cos, n_kept = ctx.saved_tensors
        grad_features = backward_op(
            grad_loss.to(torch.float32).contiguous(), features, frozen, ctx.alpha, cos, n_kept
        )
        return grad_features, None, None

    forward_op.register_autograd(backward, setup_context=setup_context)
