"""C++ (pybind11 + OpenMP) backend: the kernel interface (`ops.interface`) over
`depth_anything_fast._C` (csrc/losses.cpp).

The extension takes numpy views (buffer protocol) of contiguous float32 / bool / int32 tensors
and writes into outputs allocated here; float16/bfloat16 inputs are converted to float32 first.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from depth_anything_fast.ops.interface import (
    AFFINE_INVARIANT,
    FEATURE_ALIGNMENT,
    AffineInvariantArgs,
    AffineInvariantGradArgs,
    AffineInvariantOutputs,
    FeatureAlignmentArgs,
    FeatureAlignmentGradArgs,
    FeatureAlignmentOutputs,
    FusedOp,
    Kernels,
)

if TYPE_CHECKING:
    import numpy as np


def extension() -> ModuleType | None:
    """The compiled `depth_anything_fast._C` module, or None when it was not built."""
    try:
        from depth_anything_fast import _C
    except ImportError:
        return None
    return _C


def require_extension() -> ModuleType:
    """The compiled `depth_anything_fast._C` module; a RuntimeError saying how to build it if
    it is absent."""
    ext = extension()
    if ext is None:
        raise RuntimeError(
            "backend='cpu' needs the C++ extension depth_anything_fast._C, which is not "
            "built: reinstall with a C++ compiler and pybind11 (pip install --no-build-isolation "
            "-e .)"
        )
    return ext


def _f32(t: Tensor) -> Tensor:
    return t.detach().to(torch.float32).contiguous()


def _optional(t: Tensor | None, dtype: torch.dtype) -> np.ndarray | None:
    return None if t is None else t.detach().to(dtype).contiguous().numpy()


def _int32_segments(segments: Tensor | None, num_segments: int) -> np.ndarray | None:
    """int32 segment ids for the extension, out-of-range values still out of range (int64 ids
    are clamped to [-1, S] first: the narrowing cast alone would wrap 2**32 to segment 0)."""
    if segments is None:
        return None
    if segments.dtype == torch.int64:
        segments = segments.clamp(-1, num_segments)
    return segments.detach().to(torch.int32).contiguous().numpy()


def affine_invariant_forward(args: AffineInvariantArgs) -> AffineInvariantOutputs:
    """`_C.affine_invariant_forward` into the outputs `AFFINE_INVARIANT.empty_outputs` makes."""
    ext = require_extension()
    out = AFFINE_INVARIANT.empty_outputs(args)
    box = args.target_b is not None
    ext.affine_invariant_forward(
        _f32(args.pred).numpy(),
        _f32(args.target).numpy(),
        None if args.target_b is None else _f32(args.target_b).numpy(),
        _optional(args.mask, torch.bool),
        None if box else _int32_segments(args.segments, args.num_segments),
        (args.segments != 0).contiguous().numpy() if box else None,
        args.num_segments,
        args.mean,
        out.loss.view(-1).numpy(),
        out.stats.numpy(),
        out.counts.numpy(),
        out.codes.numpy(),
    )
    return out


def affine_invariant_backward(grad: AffineInvariantGradArgs) -> Tensor:
    """Gradient w.r.t. pred `(B, L)` in grad_dtype from the code bytes."""
    ext = require_extension()
    grad_pred = torch.empty(grad.codes.shape, dtype=torch.float32)
    ext.affine_invariant_backward(
        _f32(grad.grad_loss).reshape(-1).numpy(),
        grad.grad_loss.dim() == 0,
        grad.codes.contiguous().numpy(),
        _int32_segments(grad.segments, grad.stats.shape[1]),
        _f32(grad.stats).numpy(),
        grad.counts.contiguous().numpy(),
        grad_pred.numpy(),
    )
    return grad_pred.to(grad.grad_dtype)


def feature_alignment_forward(args: FeatureAlignmentArgs) -> FeatureAlignmentOutputs:
    """`_C.feature_alignment_forward` into the outputs `FEATURE_ALIGNMENT.empty_outputs` makes."""
    ext = require_extension()
    out = FEATURE_ALIGNMENT.empty_outputs(args)
    ext.feature_alignment_forward(
        _f32(args.features).numpy(),
        _f32(args.frozen).numpy(),
        float(args.alpha),
        out.loss.view(1).numpy(),
        out.cos.numpy(),
        out.n_kept.view(1).numpy(),
    )
    return out


def feature_alignment_backward(grad: FeatureAlignmentGradArgs) -> Tensor:
    """Gradient w.r.t. features, `(M, C)` in features.dtype."""
    ext = require_extension()
    grad_features = torch.empty(grad.features.shape, dtype=torch.float32)
    ext.feature_alignment_backward(
        _f32(grad.grad_loss).reshape(1).numpy(),
        _f32(grad.features).numpy(),
        _f32(grad.frozen).numpy(),
        float(grad.alpha),
        _f32(grad.cos).numpy(),
        _f32(grad.n_kept).reshape(1).numpy(),
        grad_features.numpy(),
    )
    return grad_features.to(grad.features.dtype)


KERNELS: dict[FusedOp, Kernels] = {
    AFFINE_INVARIANT: Kernels(affine_invariant_forward, affine_invariant_backward),
    FEATURE_ALIGNMENT: Kernels(feature_alignment_forward, feature_alignment_backward),
}
