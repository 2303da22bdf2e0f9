"""Fused affine-invariant loss (Depth Anything, arXiv 2401.10891) with per-(image, segment) stats.

Forward, all on the device (no host sync), for `(B, L)` pred/target:

1. radix select (4 histogram passes + 4 scans, pred and target together) -> t_pred, t_target
   and n_g per group (`radix_select.py`);
2. stats pass: sum|p - t_pred|, sum|g - t_target|, C = sum sign(p - t_pred) and the lowest index
   of the pred median per group (atomics into the stats buffer);
3. scale kernel (one program per 1024 groups): s = max(mean|x - t|, 1e-6), scale_active,
   median_index;
4. loss pass: per-image sum |p^ - g^|, A = sum r, Bsum = sum r * p^ per group;
5. finalize kernel: loss_b = sum / n_b (0 when n_b == 0).

That is 6 passes over the pixels, 12 kernel launches and 4 small buffer fills. Backward is one
elementwise pass from the saved per-group scalars. The semantics (stats columns, gradient
formula) are the kernel interface shared with the C++ backend (csrc/), which the custom ops in
`depth_anything_fast.ops` wrap the same way.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .radix_select import NO_INDEX, first_index_of, radix_select_lower_median
from .segmented import (
    check_images,
    group_of,
    image_groups,
    load_validity,
    segment_onehot,
    segment_pow2,
    segment_sum,
    tile_columns,
    tile_plan,
    validity_args,
)

# Columns of the (B, S, 9) stats tensor.
N_G, T_PRED, S_PRED, A_SUM, B_SUM, C_SUM, SCALE_ACTIVE, T_TARGET, S_TARGET = range(9)
NUM_STATS = 9
SCALE_EPS = 1e-6


@triton.jit
def _sign(x):
    return (x > 0).to(tl.float32) - (x < 0).to(tl.float32)


@triton.jit
def _load_pred_target(
    pred_ptr,
    target_ptr,
    mask_ptr,
    seg_ptr,
    offs,
    in_row,
    num_segments,
    HAS_MASK: tl.constexpr,
    HAS_SEG: tl.constexpr,
):
    """One tile of pred and target as fp32 with the validity (taken from the target) and segment."""
    p = tl.load(pred_ptr + offs, mask=in_row, other=0.0).to(tl.float32)
    g = tl.load(target_ptr + offs, mask=in_row, other=0.0).to(tl.float32)
    valid, seg = load_validity(g, mask_ptr, seg_ptr, offs, in_row, num_segments, HAS_MASK, HAS_SEG)
    return p, g, valid, seg


@triton.jit
def _affine_stats_kernel(
    pred_ptr,
    target_ptr,
    mask_ptr,
    seg_ptr,
    median_ptr,
    stats_ptr,
    index_ptr,
    L,
    num_segments,
    num_groups,
    tiles_per_prog,
    HAS_MASK: tl.constexpr,
    HAS_SEG: tl.constexpr,
    BLOCK: tl.constexpr,
    SEG_POW2: tl.constexpr,
):
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    abs_pred = tl.zeros([SEG_POW2], dtype=tl.float32)
    abs_target = tl.zeros([SEG_POW2], dtype=tl.float32)
    sign_pred = tl.zeros([SEG_POW2], dtype=tl.float32)
    first = tl.full([SEG_POW2], 2147483647, dtype=tl.int32)
    for t in range(tiles_per_prog):
        cols, in_row, offs = tile_columns(b, chunk, t, tiles_per_prog, L, BLOCK)
        p, g, valid, seg = _load_pred_target(
            pred_ptr, target_ptr, mask_ptr, seg_ptr, offs, in_row, num_segments, HAS_MASK, HAS_SEG
        )
        group = group_of(b, seg, num_segments, HAS_SEG)
        t_pred = tl.load(median_ptr + group)
        t_target = tl.load(median_ptr + num_groups + group)
        onehot = segment_onehot(seg, valid, SEG_POW2)
        abs_pred += segment_sum(tl.abs(p - t_pred), onehot)
        abs_target += segment_sum(tl.abs(g - t_target), onehot)
        sign_pred += segment_sum(_sign(p - t_pred), onehot)
        first = tl.minimum(first, first_index_of(p, t_pred, onehot, cols))
    groups, real = image_groups(b, num_segments, SEG_POW2)
    row_stats = stats_ptr + groups * 9
    tl.atomic_add(row_stats + 2, abs_pred, mask=real)
    tl.atomic_add(row_stats + 5, sign_pred, mask=real)
    tl.atomic_add(row_stats + 8, abs_target, mask=real)
    tl.atomic_min(index_ptr + groups, first, mask=real)


@triton.jit
def _affine_scale_kernel(
    median_ptr,
    count_ptr,
    stats_ptr,
    index_ptr,
    median_index_ptr,
    num_groups,
    SCALE_EPS: tl.constexpr,
    GROUP_BLOCK: tl.constexpr,
):
    groups = tl.program_id(0) * GROUP_BLOCK + tl.arange(0, GROUP_BLOCK)
    live = groups < num_groups
    row_stats = stats_ptr + groups * 9
    count = tl.load(count_ptr + groups, mask=live, other=0)
    n = tl.maximum(count, 1).to(tl.float32)
    mean_abs_pred = tl.load(row_stats + 2, mask=live, other=0.0) / n
    mean_abs_target = tl.load(row_stats + 8, mask=live, other=0.0) / n
    tl.store(row_stats + 0, count.to(tl.float32), mask=live)
    tl.store(row_stats + 1, tl.load(median_ptr + groups, mask=live, other=0.0), mask=live)
    tl.store(row_stats + 2, tl.maximum(mean_abs_pred, SCALE_EPS), mask=live)
    tl.store(row_stats + 6, (mean_abs_pred > SCALE_EPS).to(tl.float32), mask=live)
    tl.store(
        row_stats + 7, tl.load(median_ptr + num_groups + groups, mask=live, other=0.0), mask=live
    )
    tl.store(row_stats + 8, tl.maximum(mean_abs_target, SCALE_EPS), mask=live)
    # No element matched: an empty group, or a NaN pred median (NaN equals nothing).
    index = tl.load(index_ptr + groups, mask=live, other=0)
    matched = index != 2147483647
    tl.store(median_index_ptr + groups, tl.where(matched, index.to(tl.int64), -1), mask=live)


@triton.jit
def _normalised_residual(p, g, row_stats):
    """(p^, p^ - g^) with p^ = (p - t_pred)/s_pred, g^ = (g - t_target)/s_target."""
    t_pred = tl.load(row_stats + 1)
    s_pred = tl.load(row_stats + 2)
    t_target = tl.load(row_stats + 7)
    s_target = tl.load(row_stats + 8)
    p_hat = (p - t_pred) / s_pred
    g_hat = (g - t_target) / s_target
    return p_hat, p_hat - g_hat


@triton.jit
def _affine_loss_kernel(
    pred_ptr,
    target_ptr,
    mask_ptr,
    seg_ptr,
    stats_ptr,
    loss_ptr,
    L,
    num_segments,
    tiles_per_prog,
    HAS_MASK: tl.constexpr,
    HAS_SEG: tl.constexpr,
    BLOCK: tl.constexpr,
    SEG_POW2: tl.constexpr,
):
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    abs_residual = tl.zeros([BLOCK], dtype=tl.float32)
    a_sum = tl.zeros([SEG_POW2], dtype=tl.float32)
    b_sum = tl.zeros([SEG_POW2], dtype=tl.float32)
    for t in range(tiles_per_prog):
        cols, in_row, offs = tile_columns(b, chunk, t, tiles_per_prog, L, BLOCK)
        p, g, valid, seg = _load_pred_target(
            pred_ptr, target_ptr, mask_ptr, seg_ptr, offs, in_row, num_segments, HAS_MASK, HAS_SEG
        )
        row_stats = stats_ptr + group_of(b, seg, num_segments, HAS_SEG) * 9
        p_hat, residual = _normalised_residual(p, g, row_stats)
        r = _sign(residual)
        onehot = segment_onehot(seg, valid, SEG_POW2)
        abs_residual += tl.where(valid, tl.abs(residual), 0.0)
        a_sum += segment_sum(r, onehot)
        b_sum += segment_sum(r * p_hat, onehot)
    tl.atomic_add(loss_ptr + b, tl.sum(abs_residual, axis=0))
    groups, real = image_groups(b, num_segments, SEG_POW2)
    row_stats = stats_ptr + groups * 9
    tl.atomic_add(row_stats + 3, a_sum, mask=real)
    tl.atomic_add(row_stats + 4, b_sum, mask=real)


@triton.jit
def _image_count(stats_ptr, b, num_segments, SEG_POW2: tl.constexpr):
    """n_b = sum over segments of n_g (stats column 0) for image b."""
    groups, real = image_groups(b, num_segments, SEG_POW2)
    counts = tl.load(stats_ptr + groups * 9, mask=real, other=0.0)
    return tl.sum(counts, axis=0)


@triton.jit
def _affine_finalize_kernel(stats_ptr, loss_ptr, num_segments, SEG_POW2: tl.constexpr):
    b = tl.program_id(0)
    n_image = _image_count(stats_ptr, b, num_segments, SEG_POW2)
    total = tl.load(loss_ptr + b)
    tl.store(loss_ptr + b, tl.where(n_image > 0, total / tl.maximum(n_image, 1.0), 0.0))


def affine_invariant_forward(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    segments: torch.Tensor | None,
    num_segments: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image affine-invariant loss with per-(image, segment) median/scale.

    Args:
        pred, target: `(B, L)` contiguous float32/float16/bfloat16 (loaded as fp32).
        mask: `(B, L)` bool or None.
        segments: `(B, L)` integer or None (every pixel in segment 0); values outside
            [0, num_segments) mark ignored pixels.
        num_segments: S.

    Valid pixel: mask & isfinite(target) & 0 <= segment < S.

    Returns:
        loss `(B,)` float32 (0 for an image without valid pixels);
        stats `(B, S, 9)` float32, columns n_g, t_pred, s_pred, A, Bsum, C, scale_active,
        t_target, s_target (an empty group has n_g = 0, t = 0, s = 1e-6, scale_active = 0);
        median_index `(B, S)` int64, lowest column holding the pred median, -1 for empty groups
        (and for a NaN median, which no element equals).
    """
    check_images("pred", pred, mask, segments, num_segments)
    check_images("target", target, mask, segments, num_segments)
    if target.shape != pred.shape or target.device != pred.device:
        raise ValueError(
            f"target {tuple(target.shape)} on {target.device} does not match pred "
            f"{tuple(pred.shape)} on {pred.device}"
        )
    B, L = pred.shape
    device = pred.device
    num_groups = B * num_segments
    medians, counts = radix_select_lower_median(pred, target, mask, segments, num_segments)
    stats = torch.zeros((B, num_segments, NUM_STATS), dtype=torch.float32, device=device)
    first_index = torch.full((num_groups,), NO_INDEX, dtype=torch.int32, device=device)
    median_index = torch.empty((B, num_segments), dtype=torch.int64, device=device)
    loss = torch.zeros((B,), dtype=torch.float32, device=device)
    plan = tile_plan(B, L, device)
    seg_pow2 = segment_pow2(segments, num_segments)
    mask_arg, seg_arg, flags = validity_args(pred, mask, segments)
    wrap_triton(_affine_stats_kernel)[(B, plan.chunks)](
        pred, target, mask_arg, seg_arg, medians, stats, first_index,
        L, num_segments, num_groups, plan.tiles_per_prog,
        **flags, BLOCK=plan.block, SEG_POW2=seg_pow2, num_warps=plan.num_warps,
    )  # fmt: skip
    group_block = min(triton.next_power_of_2(max(num_groups, 1)), 1024)
    wrap_triton(_affine_scale_kernel)[(triton.cdiv(num_groups, group_block),)](
        medians, counts, stats, first_index, median_index, num_groups,
        SCALE_EPS=SCALE_EPS, GROUP_BLOCK=group_block,
    )  # fmt: skip
    wrap_triton(_affine_loss_kernel)[(B, plan.chunks)](
        pred, target, mask_arg, seg_arg, stats, loss,
        L, num_segments, plan.tiles_per_prog,
        **flags, BLOCK=plan.block, SEG_POW2=seg_pow2, num_warps=plan.num_warps,
    )  # fmt: skip
    wrap_triton(_affine_finalize_kernel)[(B,)](
        stats, loss, num_segments, SEG_POW2=triton.next_power_of_2(num_segments)
    )
    return loss, stats, median_index


@triton.jit
def _affine_backward_kernel(
    grad_loss_ptr,
    pred_ptr,
    target_ptr,
    mask_ptr,
    seg_ptr,
    stats_ptr,
    median_index_ptr,
    grad_ptr,
    L,
    num_segments,
    tiles_per_prog,
    HAS_MASK: tl.constexpr,
    HAS_SEG: tl.constexpr,
    BLOCK: tl.constexpr,
    ALL_SEG_POW2: tl.constexpr,
):
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    n_image = _image_count(stats_ptr, b, num_segments, ALL_SEG_POW2)
    weight = tl.where(n_image > 0, tl.load(grad_loss_ptr + b) / tl.maximum(n_image, 1.0), 0.0)
    for t in range(tiles_per_prog):
        cols, in_row, offs = tile_columns(b, chunk, t, tiles_per_prog, L, BLOCK)
        p, g, valid, seg = _load_pred_target(
            pred_ptr, target_ptr, mask_ptr, seg_ptr, offs, in_row, num_segments, HAS_MASK, HAS_SEG
        )
        group = group_of(b, seg, num_segments, HAS_SEG)
        row_stats = stats_ptr + group * 9
        p_hat, residual = _normalised_residual(p, g, row_stats)
        # s >= 1e-6 and n_g >= 1 keep invalid pixels (masked below) free of inf/NaN.
        n_group = tl.maximum(tl.load(row_stats + 0), 1.0)
        t_pred = tl.load(row_stats + 1)
        s_pred = tl.load(row_stats + 2)
        a_sum = tl.load(row_stats + 3)
        b_sum = tl.load(row_stats + 4)
        c_sum = tl.load(row_stats + 5)
        active = tl.load(row_stats + 6)
        is_median = (cols == tl.load(median_index_ptr + group)).to(tl.float32)
        # d/dp_k of sum_i |p^_i - g^_i|: direct term, the median's share through t, and the
        # scale's share through s = mean|p - t| (zero when s is clamped).
        grad = (
            _sign(residual)
            - is_median * a_sum
            - active * (b_sum / n_group) * (_sign(p - t_pred) - is_median * c_sum)
        ) * (weight / s_pred)
        grad = tl.where(valid, grad, 0.0)
        tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=in_row)


def affine_invariant_backward(
    grad_loss: torch.Tensor,
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    segments: torch.Tensor | None,
    num_segments: int,
    stats: torch.Tensor,
    median_index: torch.Tensor,
) -> torch.Tensor:
    """Gradient of `sum_b grad_loss[b] * loss[b]` with respect to pred (one elementwise pass).

    Args:
        grad_loss: `(B,)` float32.
        pred, target, mask, segments, num_segments: as given to `affine_invariant_forward`.
        stats: `(B, S, 9)` float32 and median_index `(B, S)` int64 from the forward.

    Returns:
        grad_pred `(B, L)` in pred.dtype; 0 on invalid pixels and images without valid pixels.
    """
    check_images("pred", pred, mask, segments, num_segments)
    B, L = pred.shape
    if grad_loss.shape != (B,):
        raise ValueError(f"grad_loss must be ({B},), got {tuple(grad_loss.shape)}")
    if stats.shape != (B, num_segments, NUM_STATS) or median_index.shape != (B, num_segments):
        raise ValueError(
            f"stats {tuple(stats.shape)} / median_index {tuple(median_index.shape)} do not match "
            f"B={B}, S={num_segments}"
        )
    grad_loss = grad_loss.to(torch.float32).contiguous()
    grad = torch.empty_like(pred)
    plan = tile_plan(B, L, pred.device)
    mask_arg, seg_arg, flags = validity_args(pred, mask, segments)
    wrap_triton(_affine_backward_kernel)[(B, plan.chunks)](
        grad_loss, pred, target, mask_arg, seg_arg,
        stats.contiguous(), median_index.contiguous(), grad,
        L, num_segments, plan.tiles_per_prog, **flags, BLOCK=plan.block,
        ALL_SEG_POW2=triton.next_power_of_2(num_segments), num_warps=plan.num_warps,
    )  # fmt: skip
    return grad
