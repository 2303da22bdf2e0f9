"""Triton backend: the kernels of `depth_anything_fast.kernels`, as the kernel interface (the
eager path, `AFFINE_INVARIANT` / `FEATURE_ALIGNMENT`) and wrapped as `triton_op`s (the
torch.compile path).

`triton_op` makes the launchers visible to `torch.compile` (their kernels must be launched
through `torch.library.wrap_triton`), and the launcher itself serves as the fake implementation.
The kernel modules are imported lazily, on first call, so importing this module needs no Triton.
Under TRITON_INTERPRET=1 the same ops run on CPU tensors (Triton's interpreter).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from torch.library import triton_op

from depth_anything_fast.ops.autograd import (
    AffineInvariantKernels,
    FeatureAlignmentKernels,
    register_affine_invariant_autograd,
    register_feature_alignment_autograd,
)


def _on_device_of(t: Tensor) -> contextlib.AbstractContextManager[object]:
    """Triton launches on the current CUDA device: make it the tensors' own (a loss on cuda:1
    while cuda:0 is current would otherwise launch on the wrong GPU)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _affine_invariant(
    pred: Tensor,
    target: Tensor,
    target_b: Tensor | None,
    mask: Tensor | None,
    segments: Tensor | None,
    num_segments: int,
    mean: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from depth_anything_fast.kernels.affine_invariant import affine_invariant_forward

    with _on_device_of(pred):
        return affine_invariant_forward(pred, target, target_b, mask, segments, num_segments, mean)


def _affine_invariant_backward(
    grad_loss: Tensor,
    codes: Tensor,
    segments: Tensor | None,
    stats: Tensor,
    counts: Tensor,
    grad_dtype: torch.dtype,
) -> Tensor:
    from depth_anything_fast.kernels.affine_invariant import affine_invariant_backward

    with _on_device_of(codes):
        return affine_invariant_backward(grad_loss, codes, segments, stats, counts, grad_dtype)


def _feature_alignment(
    features: Tensor, frozen: Tensor, alpha: float
) -> tuple[Tensor, Tensor, Tensor]:
    from depth_anything_fast.kernels.feature_alignment import feature_alignment_forward

    with _on_device_of(features):
        return feature_alignment_forward(features, frozen, alpha)


def _feature_alignment_backward(
    grad_loss: Tensor, features: Tensor, frozen: Tensor, alpha: float, cos: Tensor, n_kept: Tensor
) -> Tensor:
    from depth_anything_fast.kernels.feature_alignment import feature_alignment_backward

    with _on_device_of(features):
        return feature_alignment_backward(grad_loss, features, frozen, alpha, cos, n_kept)


AFFINE_INVARIANT = AffineInvariantKernels(_affine_invariant, _affine_invariant_backward)
FEATURE_ALIGNMENT = FeatureAlignmentKernels(_feature_alignment, _feature_alignment_backward)


def _op(name: str, launcher: object) -> torch.library.CustomOpDef:
    return triton_op(f"depth_anything_fast::{name}", mutates_args=())(launcher)


affine_invariant_triton = _op("affine_invariant_triton", _affine_invariant)
affine_invariant_backward_triton = _op(
    "affine_invariant_backward_triton", _affine_invariant_backward
)
feature_alignment_triton = _op("feature_alignment_triton", _feature_alignment)
feature_alignment_backward_triton = _op(
    "feature_alignment_backward_triton", _feature_alignment_backward
)
register_affine_invariant_autograd(affine_invariant_triton, affine_invariant_backward_triton)
register_feature_alignment_autograd(feature_alignment_triton, feature_alignment_backward_triton)
