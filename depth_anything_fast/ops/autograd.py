"""Autograd formulas shared by the C++ and Triton custom ops.

Both backends expose the same forward/backward pair (the kernel interface), so the backward
registration is written once and attached to each backend's forward op. Gradients of the
outputs that are not differentiable (stats, counts, codes) are not materialised: no zero-fill
launches in the backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from depth_anything_fast.kernels.stats_layout import CODE_MAX_SEGMENTS


def register_affine_invariant_autograd(forward_op: Any, backward_op: Any) -> None:
    """Backward of `forward_op(pred, target, target_b, mask, segments, num_segments, mean)
    -> (loss, stats, counts, codes)`: one pass of `backward_op` over the code bytes."""

    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        pred, _, target_b, _, segments, num_segments, _ = inputs
        _, stats, counts, codes = output
        # The segment map is read again only when a code byte cannot hold the segment.
        keep_map = target_b is None and num_segments > CODE_MAX_SEGMENTS
        ctx.save_for_backward(codes, segments if keep_map else None, stats, counts)
        ctx.grad_dtype = pred.dtype
        ctx.set_materialize_grads(False)

    def backward(ctx: Any, grad_loss: Tensor | None, *_: Tensor | None) -> tuple:
        codes, segments, stats, counts = ctx.saved_tensors
        if grad_loss is None or not ctx.needs_input_grad[0]:
            return (None,) * 7
        grad_pred = backward_op(
            grad_loss.to(torch.float32).contiguous(), codes, segments, stats, counts,
            ctx.grad_dtype,
        )  # fmt: skip
        return grad_pred, None, None, None, None, None, None

    forward_op.register_autograd(backward, setup_context=setup_context)


def register_feature_alignment_autograd(forward_op: Any, backward_op: Any) -> None:
    """Backward of `forward_op(features, frozen, alpha) -> (loss, cos, n_kept)` (to features)."""

    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        features, frozen, alpha = inputs
        _, cos, n_kept = output
        ctx.save_for_backward(features, frozen, cos, n_kept)
        ctx.alpha = alpha
        ctx.set_materialize_grads(False)

    def backward(ctx: Any, grad_loss: Tensor | None, *_: Tensor | None) -> tuple:
        features, frozen, cos, n_kept = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None
        grad_features = backward_op(
            grad_loss.to(torch.float32).contiguous(), features, frozen, ctx.alpha, cos, n_kept
        )
        return grad_features, None, None

    forward_op.register_autograd(backward, setup_context=setup_context)
