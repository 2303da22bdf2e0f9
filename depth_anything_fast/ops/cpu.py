"""C++ (pybind11 + OpenMP) backend: the kernel interface over `depth_anything_fast._C`, wrapped
as torch custom ops so autograd and `torch.compile(fullgraph=True)` see them as single ops.

The extension takes numpy views (buffer protocol) of contiguous float32 / bool / int32 tensors
and writes into outputs allocated here; float16/bfloat16 inputs are converted to float32 first.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from depth_anything_fast.kernels import stats_layout as layout
from depth_anything_fast.ops.autograd import (
    AffineInvariantKernels,
    FeatureAlignmentKernels,
    register_affine_invariant_autograd,
    register_feature_alignment_autograd,
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
    """The compiled `depth_anything_fast._C` module; RuntimeError saying how to build it if absent."""
    ext = extension()
    if ext is None:
        raise RuntimeError(
            "backend='cpu' needs the C++ extension depth_anything_fast._C, which is not built: "
            "reinstall with a C++ compiler and pybind11 (pip install --no-build-isolation -e .)"
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


def affine_invariant_forward(
    pred: Tensor,
    target: Tensor,
    target_b: Tensor | None,
    mask: Tensor | None,
    segments: Tensor | None,
    num_segments: int,
    mean: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Kernel interface (as `kernels.affine_invariant.affine_invariant_forward`): (B, L)
    inputs -> loss `()` or `(B,)`, stats, counts, codes (layout: `kernels.stats_layout`)."""
    ext = require_extension()
    batch, length = pred.shape
    loss = torch.empty(() if mean else (batch,), dtype=torch.float32)
    stats = torch.empty(batch, num_segments, layout.NUM_STATS, dtype=torch.float32)
    counts = torch.empty(batch, num_segments, layout.NUM_COUNTS, dtype=torch.int64)
    codes = torch.empty(batch, length, dtype=torch.uint8)
    box = target_b is not None
    ext.affine_invariant_forward(
        _f32(pred).numpy(),
        _f32(target).numpy(),
        None if target_b is None else _f32(target_b).numpy(),
        _optional(mask, torch.bool),
        None if box else _int32_segments(segments, num_segments),
        (segments != 0).contiguous().numpy() if box else None,
        num_segments,
        mean,
        loss.view(-1).numpy(),
        stats.numpy(),
        counts.numpy(),
        codes.numpy(),
    )
    return loss, stats, counts, codes


def affine_invariant_backward(
    grad_loss: Tensor,
    codes: Tensor,
    segments: Tensor | None,
    stats: Tensor,
    counts: Tensor,
    grad_dtype: torch.dtype,
) -> Tensor:
    """Kernel interface: gradient w.r.t. pred `(B, L)` in grad_dtype from the code bytes."""
    ext = require_extension()
    grad_pred = torch.empty(codes.shape, dtype=torch.float32)
    ext.affine_invariant_backward(
        _f32(grad_loss).reshape(-1).numpy(),
        grad_loss.dim() == 0,
        codes.contiguous().numpy(),
        _int32_segments(segments, stats.shape[1]),
        _f32(stats).numpy(),
        counts.contiguous().numpy(),
        grad_pred.numpy(),
    )
    return grad_pred.to(grad_dtype)


def feature_alignment_forward(
    features: Tensor, frozen: Tensor, alpha: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Kernel interface: (M, C) inputs -> loss (), cos (M,), n_kept () (all float32)."""
    ext = require_extension()
    loss = torch.empty((), dtype=torch.float32)
    cos = torch.empty(features.shape[0], dtype=torch.float32)
    n_kept = torch.empty((), dtype=torch.float32)
    ext.feature_alignment_forward(
        _f32(features).numpy(),
        _f32(frozen).numpy(),
        float(alpha),
        loss.view(1).numpy(),
        cos.numpy(),
        n_kept.view(1).numpy(),
    )
    return loss, cos, n_kept


def feature_alignment_backward(
    grad_loss: Tensor, features: Tensor, frozen: Tensor, alpha: float, cos: Tensor, n_kept: Tensor
) -> Tensor:
    """Kernel interface: gradient w.r.t. features, (M, C) in features.dtype."""
    ext = require_extension()
    grad_features = torch.empty(features.shape, dtype=torch.float32)
    ext.feature_alignment_backward(
        _f32(grad_loss).reshape(1).numpy(),
        _f32(features).numpy(),
        _f32(frozen).numpy(),
        float(alpha),
        _f32(cos).numpy(),
        _f32(n_kept).reshape(1).numpy(),
        grad_features.numpy(),
    )
    return grad_features.to(features.dtype)


AFFINE_INVARIANT = AffineInvariantKernels(affine_invariant_forward, affine_invariant_backward)
FEATURE_ALIGNMENT = FeatureAlignmentKernels(feature_alignment_forward, feature_alignment_backward)


# Custom ops over the implementations above (the torch.compile path): their type hints are the
# op schemas.
def _cpu_op(name: str, implementation: Callable[..., Any]) -> torch.library.CustomOpDef:
    return torch.library.custom_op(
        f"depth_anything_fast::{name}", implementation, mutates_args=(), device_types="cpu"
    )


affine_invariant_cpu = _cpu_op("affine_invariant_cpu", affine_invariant_forward)
affine_invariant_backward_cpu = _cpu_op("affine_invariant_backward_cpu", affine_invariant_backward)
feature_alignment_cpu = _cpu_op("feature_alignment_cpu", feature_alignment_forward)
feature_alignment_backward_cpu = _cpu_op(
    "feature_alignment_backward_cpu", feature_alignment_backward
)


@affine_invariant_cpu.register_fake
def _affine_invariant_fake(
    pred: Tensor,
    target: Tensor,
    target_b: Tensor | None,
    mask: Tensor | None,
    segments: Tensor | None,
    num_segments: int,
    mean: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    batch, length = pred.shape
    return (
        pred.new_empty(() if mean else (batch,), dtype=torch.float32),
        pred.new_empty(batch, num_segments, layout.NUM_STATS, dtype=torch.float32),
        pred.new_empty(batch, num_segments, layout.NUM_COUNTS, dtype=torch.int64),
        pred.new_empty(batch, length, dtype=torch.uint8),
    )


@affine_invariant_backward_cpu.register_fake
def _affine_invariant_backward_fake(
    grad_loss: Tensor, codes: Tensor, segments: Tensor | None, stats: Tensor, counts: Tensor,
    grad_dtype: torch.dtype,
) -> Tensor:  # fmt: skip
    return codes.new_empty(codes.shape, dtype=grad_dtype)


@feature_alignment_cpu.register_fake
def _feature_alignment_fake(
    features: Tensor, frozen: Tensor, alpha: float
) -> tuple[Tensor, Tensor, Tensor]:
    return (
        features.new_empty((), dtype=torch.float32),
        features.new_empty(features.shape[0], dtype=torch.float32),
        features.new_empty((), dtype=torch.float32),
    )


@feature_alignment_backward_cpu.register_fake
def _feature_alignment_backward_fake(grad_loss: Tensor, features: Tensor, *_: object) -> Tensor:
    return torch.empty_like(features, memory_format=torch.contiguous_format)


register_affine_invariant_autograd(affine_invariant_cpu, affine_invariant_backward_cpu)
register_feature_alignment_autograd(feature_alignment_cpu, feature_alignment_backward_cpu)
