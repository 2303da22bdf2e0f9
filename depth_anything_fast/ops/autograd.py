"""Autograd formulas shared by the C++ and Triton backends, on two paths.

Both backends expose the same forward/backward pair (the kernel interface). Under
`torch.compile` the losses call the backends' custom ops, whose autograd is registered here
(`register_*_autograd`); in eager mode they call the kernel interface through the
`autograd.Function`s below, which skips the custom-op dispatch (about 0.3 ms of Python per
forward+backward, comparable to the kernels themselves on small images). Both paths save the
same tensors and run the same backward (`_affine_invariant_*`, `_feature_alignment_*`).
Gradients of the outputs that are not differentiable (stats, counts, codes) are not
materialised: no zero-fill launches in the backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from depth_anything_fast.kernels.stats_layout import CODE_MAX_SEGMENTS


class AffineInvariantKernels(NamedTuple):
    """A backend's kernel interface of the affine-invariant loss.

    forward(pred, target, target_b, mask, segments, num_segments, mean)
        -> (loss, stats, counts, codes);
    backward(grad_loss, codes, segments, stats, counts, grad_dtype) -> grad_pred `(B, L)`.
    """

    forward: Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]
    backward: Callable[..., Tensor]


class FeatureAlignmentKernels(NamedTuple):
    """A backend's kernel interface of the feature-alignment loss.

    forward(features, frozen, alpha) -> (loss, cos, n_kept);
    backward(grad_loss, features, frozen, alpha, cos, n_kept) -> grad_features `(M, C)`.
    """

    forward: Callable[..., tuple[Tensor, Tensor, Tensor]]
    backward: Callable[..., Tensor]


def _affine_invariant_save(ctx: Any, inputs: tuple, output: tuple) -> None:
    pred, _, target_b, _, segments, num_segments, _ = inputs
    _, stats, counts, codes = output
    # The segment map is read again only when a code byte cannot hold the segment.
    keep_map = target_b is None and num_segments > CODE_MAX_SEGMENTS
    ctx.save_for_backward(codes, segments if keep_map else None, stats, counts)
    ctx.grad_dtype = pred.dtype
    ctx.set_materialize_grads(False)


def _affine_invariant_grad(
    ctx: Any, grad_loss: Tensor | None, backward: Callable[..., Tensor], needs_grad: bool
) -> Tensor | None:
    codes, segments, stats, counts = ctx.saved_tensors
    if grad_loss is None or not needs_grad:
        return None
    return backward(
        grad_loss.to(torch.float32).contiguous(), codes, segments, stats, counts, ctx.grad_dtype
    )


def _feature_alignment_save(ctx: Any, inputs: tuple, output: tuple) -> None:
    features, frozen, alpha = inputs
    _, cos, n_kept = output
    ctx.save_for_backward(features, frozen, cos, n_kept)
    ctx.alpha = alpha
    ctx.set_materialize_grads(False)


def _feature_alignment_grad(
    ctx: Any, grad_loss: Tensor | None, backward: Callable[..., Tensor]
) -> Tensor | None:
    features, frozen, cos, n_kept = ctx.saved_tensors
    if grad_loss is None:
        return None
    return backward(
        grad_loss.to(torch.float32).contiguous(), features, frozen, ctx.alpha, cos, n_kept
    )


def register_affine_invariant_autograd(forward_op: Any, backward_op: Any) -> None:
    """Backward of the custom op `forward_op(pred, target, target_b, mask, segments,
    num_segments, mean) -> (loss, stats, counts, codes)`: one pass of `backward_op`."""

    def backward(ctx: Any, grad_loss: Tensor | None, *_: Tensor | None) -> tuple:
        grad_pred = _affine_invariant_grad(ctx, grad_loss, backward_op, ctx.needs_input_grad[0])
        return (grad_pred,) + (None,) * 6

    forward_op.register_autograd(backward, setup_context=_affine_invariant_save)


def register_feature_alignment_autograd(forward_op: Any, backward_op: Any) -> None:
    """Backward of the custom op `forward_op(features, frozen, alpha) -> (loss, cos, n_kept)`."""

    def backward(ctx: Any, grad_loss: Tensor | None, *_: Tensor | None) -> tuple:
        return _feature_alignment_grad(ctx, grad_loss, backward_op), None, None

    forward_op.register_autograd(backward, setup_context=_feature_alignment_save)


class AffineInvariantFunction(torch.autograd.Function):
    """Eager path: `apply(kernels, pred, target, target_b, mask, segments, num_segments, mean)`
    -> loss (the kernel interface's first output)."""

    @staticmethod
    def forward(ctx: Any, kernels: AffineInvariantKernels, *inputs: Any) -> Tensor:
        output = kernels.forward(*inputs)
        _affine_invariant_save(ctx, inputs, output)
        ctx.kernels = kernels
        return output[0]

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None) -> tuple:
        grad_pred = _affine_invariant_grad(
            ctx, grad_loss, ctx.kernels.backward, ctx.needs_input_grad[1]
        )
        return (None, grad_pred) + (None,) * 6


class FeatureAlignmentFunction(torch.autograd.Function):
    """Eager path: `apply(kernels, features, frozen, alpha)` -> loss."""

    @staticmethod
    def forward(ctx: Any, kernels: FeatureAlignmentKernels, *inputs: Any) -> Tensor:
        output = kernels.forward(*inputs)
        _feature_alignment_save(ctx, inputs, output)
        ctx.kernels = kernels
        return output[0]

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None) -> tuple:
        return None, _feature_alignment_grad(ctx, grad_loss, ctx.kernels.backward), None, None
