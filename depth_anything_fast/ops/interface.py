"""The kernel interface of each fused op: what its kernels take and return, named once.

Every backend (`ops.cpu`, `ops.triton`) implements an op as a `Kernels` pair: `forward(args)`
-> outputs and `backward(grad_args)` -> the gradient of the op's first argument. The custom ops
of `ops.autograd` take the same arguments, flat, in the same order (their schema is read from
these tuples). An op's `FusedOp` says what the backward needs from the forward (`saved`) and
the shapes and dtypes of the outputs (`empty_outputs`, `empty_grad`: the fake implementations,
and the CPU backend's output buffers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from depth_anything_fast.kernels.stats_layout import (
    CODE_MAX_SEGMENTS,
    NUM_COUNTS,
    NUM_STATS,
)


# ----------------------------------------------------------------------------- affine invariant
class AffineInvariantArgs(NamedTuple):
    """Affine-invariant loss inputs, validated flat images.

    pred, target: `(B, L)` float32/float16/bfloat16; target_b: `(B, L)` or None (CutMix: then
    `segments` is the box, bool/uint8, True: `target`, segment 0; else `target_b`, segment 1,
    and num_segments is 2); mask: `(B, L)` bool or None; segments: `(B, L)` integer or None
    (values outside [0, num_segments) are ignored pixels); mean: batch mean (else per image).
    """

    pred: Tensor
    target: Tensor
    target_b: Tensor | None
    mask: Tensor | None
    segments: Tensor | None
    num_segments: int
    mean: bool


class AffineInvariantOutputs(NamedTuple):
    """loss: float32 `()` (mean) or `(B,)`; stats `(B, S, NUM_STATS)` float32, counts
    `(B, S, NUM_COUNTS)` int64, codes `(B, L)` uint8 (layout: `kernels.stats_layout`)."""

    loss: Tensor
    stats: Tensor
    counts: Tensor
    codes: Tensor


class AffineInvariantGradArgs(NamedTuple):
    """Backward inputs: grad_loss float32 (the loss's shape), what the forward saved, and the
    gradient's dtype (pred's)."""

    grad_loss: Tensor | None
    codes: Tensor
    segments: Tensor | None  # the segment map, only where a code byte cannot hold the segment
    stats: Tensor
    counts: Tensor
    grad_dtype: torch.dtype


def _affine_invariant_saved(
    args: AffineInvariantArgs, out: AffineInvariantOutputs
) -> AffineInvariantGradArgs:
    keep_map = args.target_b is None and args.num_segments > CODE_MAX_SEGMENTS
    segments = args.segments if keep_map else None
    return AffineInvariantGradArgs(None, out.codes, segments, out.stats, out.counts,
                                   args.pred.dtype)  # fmt: skip


def _affine_invariant_outputs(args: AffineInvariantArgs) -> AffineInvariantOutputs:
    pred, segments = args.pred, args.num_segments
    batch, length = pred.shape
    return AffineInvariantOutputs(
        pred.new_empty(() if args.mean else (batch,), dtype=torch.float32),
        pred.new_empty(batch, segments, NUM_STATS, dtype=torch.float32),
        pred.new_empty(batch, segments, NUM_COUNTS, dtype=torch.int64),
        pred.new_empty(batch, length, dtype=torch.uint8),
    )


def _affine_invariant_grad(grad: AffineInvariantGradArgs) -> Tensor:
    return grad.codes.new_empty(grad.codes.shape, dtype=grad.grad_dtype)


# ---------------------------------------------------------------------------- feature alignment
class FeatureAlignmentArgs(NamedTuple):
    """Feature alignment inputs: features, frozen `(M, C)` float32/float16/bfloat16 of one
    dtype (no gradient reaches frozen); alpha: tokens with cos <= alpha are kept."""

    features: Tensor
    frozen: Tensor
    alpha: float


class FeatureAlignmentOutputs(NamedTuple):
    """loss `()`, cos `(M,)`, n_kept `()`, all float32."""

    loss: Tensor
    cos: Tensor
    n_kept: Tensor


class FeatureAlignmentGradArgs(NamedTuple):
    """Backward inputs: grad_loss `()` float32 and what the forward saved."""

    grad_loss: Tensor | None
    features: Tensor
    frozen: Tensor
    alpha: float
    cos: Tensor
    n_kept: Tensor


def _feature_alignment_saved(
    args: FeatureAlignmentArgs, out: FeatureAlignmentOutputs
) -> FeatureAlignmentGradArgs:
    return FeatureAlignmentGradArgs(None, args.features, args.frozen, args.alpha, out.cos,
                                    out.n_kept)  # fmt: skip


def _feature_alignment_outputs(args: FeatureAlignmentArgs) -> FeatureAlignmentOutputs:
    features = args.features
    return FeatureAlignmentOutputs(
        features.new_empty((), dtype=torch.float32),
        features.new_empty(features.shape[0], dtype=torch.float32),
        features.new_empty((), dtype=torch.float32),
    )


def _feature_alignment_grad(grad: FeatureAlignmentGradArgs) -> Tensor:
    return torch.empty_like(grad.features, memory_format=torch.contiguous_format)


# ----------------------------------------------------------------------------- the ops
@dataclass(frozen=True)
class FusedOp:
    """One fused op: its name (custom ops `depth_anything_fast::<name>_<backend>`), the
    tuples of its kernel interface, and the shape rules above."""

    name: str
    args: type[tuple]
    outputs: type[tuple]
    grad_args: type[tuple]
    # the backward's inputs but grad_loss (left None), from the forward's inputs and outputs
    saved: Callable[[Any, Any], Any]
    empty_outputs: Callable[[Any], Any]
    empty_grad: Callable[[Any], Tensor]


AFFINE_INVARIANT = FusedOp(
    "affine_invariant", AffineInvariantArgs, AffineInvariantOutputs, AffineInvariantGradArgs,
    _affine_invariant_saved, _affine_invariant_outputs, _affine_invariant_grad,
)  # fmt: skip
FEATURE_ALIGNMENT = FusedOp(
    "feature_alignment", FeatureAlignmentArgs, FeatureAlignmentOutputs, FeatureAlignmentGradArgs,
    _feature_alignment_saved, _feature_alignment_outputs, _feature_alignment_grad,
)  # fmt: skip
FUSED_OPS = (AFFINE_INVARIANT, FEATURE_ALIGNMENT)


class Kernels(NamedTuple):
    """A backend's backend of one `FusedOp`: `forward(args) -> outputs` and
    `backward(grad_args) -> gradient of the first argument` (its shape, in its dtype)."""

    forward: Callable[[Any], Any]
    backward: Callable[[Any], Tensor]
