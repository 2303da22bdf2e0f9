"""Fused affine-invariant loss (Depth Anything, arXiv 2401.10891) with per-(image, segment) stats.

Forward, all on the device (no host sync), for `(B, L)` pred/target, in 5 launches:

0. one zero-fill of a single int32 scratch buffer (histograms, sums, accumulators, tickets);
1-3. the radix-select passes of `radix_select.py` over pred and target together: 11-, 11- and
   10-bit digit histograms, each pass first scanning its image's previous histograms; the
   third also sums x - c below and above each group's 22-bit prefix;
4. the loss pass: every program scans the final histograms of its image's groups (lower median
   t, and mean|x - t| from the exact counts and sums), then over its pixels accumulates sum|r|
   (r = p^ - g^), A = sum sign(r), Bsum = sum sign(r) p^ and the lowest index of the pred
   median, and stores one code byte per pixel (`stats_layout`: signs and segment). The last
   program of each image (atomic ticket) writes the image's stats row, counts and loss; with
   the batch mean the last image's finaliser writes the mean.

That is 4 full reads of the inputs and one byte written per pixel. Backward (1 launch) reads
only the code bytes: grad = w (COEF_R sign(r) - COEF_P sign(p - t) + [median] COEF_MEDIAN).
CutMix passes the box (bool/uint8) and the second target: each pixel picks its target and
segment inside the kernels. The C++ backend (csrc/) implements the same interface.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import stats_layout as layout
from .radix_select import (
    HIST_WORDS,
    NUM_PASSES,
    atomic_histogram,
    hist_rows,
    histogram_bins,
    histogram_digits,
    program_prefix,
    publish_histogram,
    select_median,
)
from .segmented import (
    SEG_BOX,
    SEG_MAP,
    SEG_NONE,
    check_images,
    image_groups,
    load_pixels,
    per_pixel,
    segment_onehot,
    segment_pow2,
    segment_sum,
    tile_columns,
    tile_plan,
)

# The layout's columns as Triton constants (kernels may only read constexpr globals).
_T_PRED = tl.constexpr(layout.T_PRED)
_S_PRED = tl.constexpr(layout.S_PRED)
_T_TARGET = tl.constexpr(layout.T_TARGET)
_S_TARGET = tl.constexpr(layout.S_TARGET)
_A_SUM = tl.constexpr(layout.A_SUM)
_B_SUM = tl.constexpr(layout.B_SUM)
_C_SUM = tl.constexpr(layout.C_SUM)
_SCALE_ACTIVE = tl.constexpr(layout.SCALE_ACTIVE)
_COEF_R = tl.constexpr(layout.COEF_R)
_COEF_P = tl.constexpr(layout.COEF_P)
_COEF_MEDIAN = tl.constexpr(layout.COEF_MEDIAN)
_COUNT = tl.constexpr(layout.COUNT)
_MEDIAN_INDEX = tl.constexpr(layout.MEDIAN_INDEX)
_NUM_STATS = tl.constexpr(layout.NUM_STATS)
_NUM_COUNTS = tl.constexpr(layout.NUM_COUNTS)
_SCALE_EPS = tl.constexpr(layout.SCALE_EPS)
_SEGMENT_SHIFT = tl.constexpr(layout.CODE_SEGMENT_SHIFT)
# Words of accumulators after the radix scratch: A, Bsum, first index per group; loss sum and
# ticket per image; batch: sum of image losses, images with a valid pixel, ticket.
_BATCH_WORDS = 3


def _scratch_words(batch: int, num_segments: int) -> int:
    groups = batch * num_segments
    return 2 * groups * (HIST_WORDS + 2) + 3 * groups + 2 * batch + _BATCH_WORDS


@triton.jit
def _accumulators(scratch_ptr, num_groups):
    """(int32, fp32) views of the accumulators after the radix scratch: per group A [G], Bsum
    [G], L - first median column [G]; per image |r| sum [B] and ticket [B]; batch words."""
    base = scratch_ptr + 2 * num_groups * (5120 + 2)
    return base, base.to(tl.pointer_type(tl.float32), bitcast=True)


@triton.jit
def _affine_pass_kernel(
    pred_ptr, target_ptr, target_b_ptr, mask_ptr, seg_ptr, scratch_ptr, L, num_segments,
    tiles_per_prog, HAS_MASK: tl.constexpr, SEG_MODE: tl.constexpr, PASS: tl.constexpr,
    BLOCK: tl.constexpr, SEG_POW2: tl.constexpr, HIST_BINS: tl.constexpr, ATOMIC: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    num_groups = tl.num_programs(0) * num_segments
    total_rows = 2 * num_groups  # pred rows g, target rows num_groups + g
    rows, live = image_groups(b, num_segments, SEG_POW2)
    hist_p = tl.zeros([HIST_BINS], dtype=tl.int32)
    hist_g = tl.zeros([HIST_BINS], dtype=tl.int32)
    below_p = tl.zeros([SEG_POW2], dtype=tl.float32)
    above_p = tl.zeros([SEG_POW2], dtype=tl.float32)
    below_g = tl.zeros([SEG_POW2], dtype=tl.float32)
    above_g = tl.zeros([SEG_POW2], dtype=tl.float32)
    prefix_p = program_prefix(scratch_ptr, rows, live, total_rows, PASS)
    prefix_g = program_prefix(scratch_ptr, num_groups + rows, live, total_rows, PASS)
    first_row = b * num_segments
    rows_p = hist_rows(scratch_ptr, first_row, total_rows, PASS)
    rows_g = hist_rows(scratch_ptr, num_groups + first_row, total_rows, PASS)
    for t in range(tiles_per_prog):
        _, in_row, offs = tile_columns(b, chunk, t, tiles_per_prog, L, BLOCK)
        p, g, valid, seg = load_pixels(pred_ptr, target_ptr, target_b_ptr, mask_ptr, seg_ptr,
                                       offs, in_row, num_segments, True, HAS_MASK, SEG_MODE)  # fmt: skip
        hist_p, below_p, above_p = histogram_digits(p, valid, seg, prefix_p, hist_p, below_p,
                                                    above_p, rows_p, PASS, SEG_POW2, ATOMIC)  # fmt: skip
        hist_g, below_g, above_g = histogram_digits(g, valid, seg, prefix_g, hist_g, below_g,
                                                    above_g, rows_g, PASS, SEG_POW2, ATOMIC)  # fmt: skip
    publish_histogram(scratch_ptr, hist_p, below_p, above_p, first_row, num_segments,
                      total_rows, PASS, SEG_POW2, ATOMIC)  # fmt: skip
    publish_histogram(scratch_ptr, hist_g, below_g, above_g, num_groups + first_row,
                      num_segments, total_rows, PASS, SEG_POW2, ATOMIC)  # fmt: skip


@triton.jit
def _affine_loss_kernel(
    pred_ptr, target_ptr, target_b_ptr, mask_ptr, seg_ptr, scratch_ptr, loss_ptr, stats_ptr,
    counts_ptr, codes_ptr, L, num_segments, tiles_per_prog, HAS_MASK: tl.constexpr,
    SEG_MODE: tl.constexpr, SEG_IN_CODE: tl.constexpr, MEAN: tl.constexpr, BLOCK: tl.constexpr,
    SEG_POW2: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    num_images = tl.num_programs(0)
    num_groups = num_images * num_segments
    rows, live = image_groups(b, num_segments, SEG_POW2)
    t_p, count, n_lt, n_gt, p_lt, p_gt = select_median(scratch_ptr, rows, live, 2 * num_groups)
    t_g, _, _, _, g_lt, g_gt = select_median(scratch_ptr, num_groups + rows, live,
                                             2 * num_groups)  # fmt: skip
    n = tl.maximum(count, 1).to(tl.float32)
    mean_abs_p = (p_gt - p_lt) / n
    s_p = tl.maximum(mean_abs_p, _SCALE_EPS)
    s_g = tl.maximum((g_gt - g_lt) / n, _SCALE_EPS)
    abs_sum = tl.zeros([BLOCK], dtype=tl.float32)
    a_sum = tl.zeros([SEG_POW2], dtype=tl.int32)
    b_sum = tl.zeros([SEG_POW2], dtype=tl.float32)
    first = tl.zeros([SEG_POW2], dtype=tl.int32)  # L - lowest median column; 0: none yet
    for t in range(tiles_per_prog):
        cols, in_row, offs = tile_columns(b, chunk, t, tiles_per_prog, L, BLOCK)
        p, g, valid, seg = load_pixels(pred_ptr, target_ptr, target_b_ptr, mask_ptr, seg_ptr,
                                       offs, in_row, num_segments, True, HAS_MASK, SEG_MODE)  # fmt: skip
        tp = per_pixel(t_p, seg, SEG_POW2)
        p_hat = (p - tp) / per_pixel(s_p, seg, SEG_POW2)
        residual = p_hat - (g - per_pixel(t_g, seg, SEG_POW2)) / per_pixel(s_g, seg, SEG_POW2)
        r_pos = valid & (residual > 0)
        r_neg = valid & (residual < 0)
        sign_r = r_pos.to(tl.int32) - r_neg.to(tl.int32)
        onehot = segment_onehot(seg, valid, SEG_POW2)
        abs_sum += tl.where(valid, tl.abs(residual), 0.0)
        a_sum += segment_sum(sign_r, onehot)
        b_sum += segment_sum(sign_r.to(tl.float32) * p_hat, onehot)
        at_median = onehot & (p == tp)[:, None]
        first = tl.maximum(first, tl.max(tl.where(at_median, (L - cols)[:, None], 0), axis=0))
        code = (r_pos.to(tl.int32) | (r_neg.to(tl.int32) << 1)
                | ((valid & (p > tp)).to(tl.int32) << 2) | ((valid & (p < tp)).to(tl.int32) << 3))  # fmt: skip
        if SEG_IN_CODE:
            code = code | (seg << _SEGMENT_SHIFT)
        tl.store(codes_ptr + offs, code.to(tl.uint8), mask=in_row)
    acc, facc = _accumulators(scratch_ptr, num_groups)
    tl.atomic_add(acc + rows, a_sum, mask=live)
    tl.atomic_add(facc + num_groups + rows, b_sum, mask=live)
    tl.atomic_max(acc + 2 * num_groups + rows, first, mask=live)
    tl.atomic_add(facc + 3 * num_groups + b, tl.sum(abs_sum, axis=0))
    tl.debug_barrier()
    ticket = tl.atomic_add(acc + 3 * num_groups + num_images + b, 1)
    if ticket == tl.num_programs(1) - 1:  # the image's last program: finalise image b
        # Other programs' sums, read with atomics (at the coherence point, not from a cache).
        a_total = tl.atomic_add(acc + rows, tl.zeros_like(a_sum), mask=live)
        b_total = tl.atomic_add(facc + num_groups + rows, tl.zeros_like(b_sum), mask=live)
        first = tl.atomic_add(acc + 2 * num_groups + rows, tl.zeros_like(first), mask=live)
        abs_total = tl.atomic_add(facc + 3 * num_groups + b, 0.0)
        n_image = tl.sum(tl.where(live, count, 0), axis=0)
        weight = tl.where(n_image > 0, 1.0 / tl.maximum(n_image, 1).to(tl.float32), 0.0)
        image_loss = tl.where(n_image > 0, abs_total / tl.maximum(n_image, 1).to(tl.float32), 0.0)
        active = (mean_abs_p > _SCALE_EPS).to(tl.float32)
        c_total = n_gt - n_lt
        coef_r = weight / s_p
        coef_p = weight * active * b_total / (s_p * n)
        row = stats_ptr + rows.to(tl.int64) * _NUM_STATS
        tl.store(row + _T_PRED, t_p, mask=live)
        tl.store(row + _S_PRED, s_p, mask=live)
        tl.store(row + _T_TARGET, t_g, mask=live)
        tl.store(row + _S_TARGET, s_g, mask=live)
        tl.store(row + _A_SUM, a_total.to(tl.float32), mask=live)
        tl.store(row + _B_SUM, b_total, mask=live)
        tl.store(row + _C_SUM, c_total.to(tl.float32), mask=live)
        tl.store(row + _SCALE_ACTIVE, active, mask=live)
        tl.store(row + _COEF_R, coef_r, mask=live)
        tl.store(row + _COEF_P, coef_p, mask=live)
        tl.store(row + _COEF_MEDIAN, c_total.to(tl.float32) * coef_p
                 - a_total.to(tl.float32) * coef_r, mask=live)  # fmt: skip
        count_row = counts_ptr + rows.to(tl.int64) * _NUM_COUNTS
        tl.store(count_row + _COUNT, count.to(tl.int64), mask=live)
        median_index = tl.where(first > 0, (L - first).to(tl.int64), -1)
        tl.store(count_row + _MEDIAN_INDEX, median_index, mask=live)
        if MEAN:
            batch = 3 * num_groups + 2 * num_images
            tl.atomic_add(facc + batch, image_loss)
            tl.atomic_add(acc + batch + 1, (n_image > 0).to(tl.int32))
            tl.debug_barrier()
            if tl.atomic_add(acc + batch + 2, 1) == num_images - 1:  # the last image
                total = tl.atomic_add(facc + batch, 0.0)
                nonempty = tl.atomic_add(acc + batch + 1, 0)
                tl.store(loss_ptr, tl.where(nonempty > 0, total / tl.maximum(nonempty, 1), 0.0))
        else:
            tl.store(loss_ptr + b, image_loss)


def _check_forward(pred, target, target_b, mask, segments, num_segments) -> None:  # noqa: ANN001
    box = target_b is not None
    check_images("pred", pred, mask, None if box else segments, num_segments)
    others = [("target", target)] + ([("target_b", target_b)] if box else [])
    if box:
        others.append(("box", segments))
        if segments is None or segments.dtype not in (torch.bool, torch.uint8):
            raise TypeError("with target_b, segments must be the CutMix box (bool or uint8)")
        if num_segments != 2:
            raise ValueError(f"a CutMix box makes 2 segments, got num_segments={num_segments}")
    for name, other in others:
        if other.shape != pred.shape or other.device != pred.device:
            raise ValueError(
                f"{name} {tuple(other.shape)} on {other.device} does not match pred "
                f"{tuple(pred.shape)} on {pred.device}"
            )
        if not other.is_contiguous():
            raise ValueError(f"{name} must be contiguous")


def affine_invariant_forward(
    pred: torch.Tensor,
    target: torch.Tensor,
    target_b: torch.Tensor | None,
    mask: torch.Tensor | None,
    segments: torch.Tensor | None,
    num_segments: int,
    mean: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affine-invariant loss with per-(image, segment) median/scale (layout: `stats_layout`).

    Args:
        pred, target: `(B, L)` contiguous float32/float16/bfloat16 (loaded as fp32).
        target_b: None, or CutMix's second target `(B, L)`: then `segments` is the box
            (bool/uint8, True: the pixel takes `target` and segment 0, else `target_b` and
            segment 1) and num_segments must be 2.
        mask: `(B, L)` bool or None.
        segments: `(B, L)` integer (int32/int64) or None (every pixel in segment 0); values
            outside [0, num_segments) mark ignored pixels. Or the box (see target_b).
        num_segments: S.
        mean: True -> the loss is the mean over images with a valid pixel `()`, else `(B,)`.

    Valid pixel: mask & isfinite(target) & 0 <= segment < S.

    Returns:
        loss `()` or `(B,)` float32 (0 for an image without valid pixels, and for a batch
        without any); stats `(B, S, NUM_STATS)` float32; counts `(B, S, NUM_COUNTS)` int64;
        codes `(B, L)` uint8 (what the backward reads).
    """
    _check_forward(pred, target, target_b, mask, segments, num_segments)
    B, L = pred.shape
    device = pred.device
    loss = torch.empty(() if mean else (B,), dtype=torch.float32, device=device)
    stats = torch.empty((B, num_segments, layout.NUM_STATS), dtype=torch.float32, device=device)
    counts = torch.empty((B, num_segments, layout.NUM_COUNTS), dtype=torch.int64, device=device)
    codes = torch.empty((B, L), dtype=torch.uint8, device=device)
    if B == 0:  # no program would write the mean
        return loss.zero_() if mean else loss, stats, counts, codes
    scratch = torch.zeros(_scratch_words(B, num_segments), dtype=torch.int32, device=device)
    plan = tile_plan(B, L, device)
    if target_b is not None:
        seg_mode, seg_pow2 = SEG_BOX, 2
    else:
        seg_mode = SEG_NONE if segments is None else SEG_MAP
        seg_pow2 = segment_pow2(segments, num_segments)
    inputs = (
        pred, target, target if target_b is None else target_b,  # placeholders are never read
        pred if mask is None else mask, pred if segments is None else segments, scratch,
    )  # fmt: skip
    for radix_pass in range(NUM_PASSES):
        wrap_triton(_affine_pass_kernel)[(B, plan.chunks)](
            *inputs, L, num_segments, plan.tiles_per_prog, HAS_MASK=mask is not None,
            SEG_MODE=seg_mode, PASS=radix_pass, BLOCK=plan.block, SEG_POW2=seg_pow2,
            HIST_BINS=histogram_bins(seg_pow2, radix_pass), ATOMIC=atomic_histogram(seg_pow2),
            num_warps=plan.num_warps,
        )  # fmt: skip
    wrap_triton(_affine_loss_kernel)[(B, plan.chunks)](
        *inputs, loss, stats, counts, codes, L, num_segments, plan.tiles_per_prog,
        HAS_MASK=mask is not None, SEG_MODE=seg_mode,
        SEG_IN_CODE=seg_mode != SEG_NONE and num_segments <= layout.CODE_MAX_SEGMENTS,
        MEAN=mean, BLOCK=plan.block, SEG_POW2=seg_pow2, num_warps=plan.num_warps,
    )  # fmt: skip
    return loss, stats, counts, codes


@triton.jit
def _affine_backward_kernel(
    grad_loss_ptr, codes_ptr, seg_ptr, stats_ptr, counts_ptr, grad_ptr, L, num_segments,
    tiles_per_prog, MEAN: tl.constexpr, SEG_FROM_MAP: tl.constexpr, BLOCK: tl.constexpr,
    SEG_POW2: tl.constexpr, COUNT_BLOCK: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    rows, live = image_groups(b, num_segments, SEG_POW2)
    if MEAN:
        # d mean / d loss_b = 1 / (images with a valid pixel), counted from the counts.
        num_images = tl.num_programs(0)
        nonempty = 0
        for start in range(0, num_images, COUNT_BLOCK):
            images = start + tl.arange(0, COUNT_BLOCK)
            n = tl.zeros([COUNT_BLOCK], dtype=tl.int64)
            for s in range(num_segments):
                n += tl.load(counts_ptr + (images.to(tl.int64) * num_segments + s) * _NUM_COUNTS
                             + _COUNT, mask=images < num_images, other=0)  # fmt: skip
            nonempty += tl.sum((n > 0).to(tl.int32), axis=0)
        w = tl.load(grad_loss_ptr) / tl.maximum(nonempty, 1).to(tl.float32)
    else:
        w = tl.load(grad_loss_ptr + b)
    row = stats_ptr + rows.to(tl.int64) * _NUM_STATS
    coef_r = w * tl.load(row + _COEF_R, mask=live, other=0.0)
    coef_p = w * tl.load(row + _COEF_P, mask=live, other=0.0)
    coef_m = w * tl.load(row + _COEF_MEDIAN, mask=live, other=0.0)
    median = tl.load(counts_ptr + rows.to(tl.int64) * _NUM_COUNTS + _MEDIAN_INDEX,
                     mask=live, other=-1)  # fmt: skip
    for t in range(tiles_per_prog):
        cols, in_row, offs = tile_columns(b, chunk, t, tiles_per_prog, L, BLOCK)
        code = tl.load(codes_ptr + offs, mask=in_row, other=0).to(tl.int32)
        if SEG_FROM_MAP:
            raw = tl.load(seg_ptr + offs, mask=in_row, other=0)
            seg = tl.where((raw >= 0) & (raw < num_segments), raw, 0).to(tl.int32)
        else:
            seg = code >> _SEGMENT_SHIFT
        sign_r = ((code & 1) - ((code >> 1) & 1)).to(tl.float32)
        sign_p = (((code >> 2) & 1) - ((code >> 3) & 1)).to(tl.float32)
        grad = per_pixel(coef_r, seg, SEG_POW2) * sign_r - per_pixel(coef_p, seg, SEG_POW2) * sign_p
        at_median = cols.to(tl.int64) == per_pixel(median, seg, SEG_POW2)
        grad += tl.where(at_median, per_pixel(coef_m, seg, SEG_POW2), 0.0)
        tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=in_row)


def affine_invariant_backward(
    grad_loss: torch.Tensor,
    codes: torch.Tensor,
    segments: torch.Tensor | None,
    stats: torch.Tensor,
    counts: torch.Tensor,
    grad_dtype: torch.dtype,
) -> torch.Tensor:
    """Gradient of `sum(grad_loss * loss)` with respect to pred: one pass over the code bytes.

    Args:
        grad_loss: `()` (batch-mean loss) or `(B,)` float32.
        codes `(B, L)` uint8, stats `(B, S, NUM_STATS)`, counts `(B, S, NUM_COUNTS)`: from the
            forward. segments: the forward's integer segment map, read only when S is beyond
            what a code byte holds (else may be None).
        grad_dtype: pred's dtype.

    Returns:
        grad_pred `(B, L)` in grad_dtype; 0 on invalid pixels and images without valid pixels.
    """
    B, L = codes.shape
    num_segments = stats.shape[1]
    if stats.shape != (B, num_segments, layout.NUM_STATS) or counts.shape != (
        B, num_segments, layout.NUM_COUNTS
    ):  # fmt: skip
        raise ValueError(f"stats {tuple(stats.shape)} / counts {tuple(counts.shape)} do not "
                         f"match codes {tuple(codes.shape)}")  # fmt: skip
    mean = grad_loss.dim() == 0
    if not mean and grad_loss.shape != (B,):
        raise ValueError(f"grad_loss must be () or ({B},), got {tuple(grad_loss.shape)}")
    seg_from_map = num_segments > layout.CODE_MAX_SEGMENTS
    if seg_from_map and (segments is None or segments.dtype in (torch.bool, torch.uint8)):
        raise ValueError(f"{num_segments} segments need the segment map in the backward")
    grad = torch.empty((B, L), dtype=grad_dtype, device=codes.device)
    if B == 0:
        return grad
    plan = tile_plan(B, L, codes.device)
    wrap_triton(_affine_backward_kernel)[(B, plan.chunks)](
        grad_loss, codes, segments if seg_from_map else codes, stats, counts, grad, L,
        num_segments, plan.tiles_per_prog, MEAN=mean, SEG_FROM_MAP=seg_from_map,
        BLOCK=plan.block, SEG_POW2=1 if num_segments == 1 else triton.next_power_of_2(num_segments),
        COUNT_BLOCK=min(triton.next_power_of_2(B), 1024), num_warps=plan.num_warps,
    )  # fmt: skip
    return grad
