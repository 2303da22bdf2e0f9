"""Multi-block radix select of the lower median per (array, image, segment) group.

Floats map to order-preserving uint32 keys (flip all bits of negatives, the sign bit of
non-negatives; -0.0 is first folded into +0.0 so that equal values share one key). The key of
the element of rank floor((n-1)/2) is found digit by digit, most significant first, with 8-bit
digits: 4 passes, each

* a histogram kernel over a `(B, chunks)` grid: every program histograms the digits of the valid
  pixels whose higher digits match the group's prefix so far (`tl.histogram`, in registers
  across its tiles) and adds them to a `[groups, 256]` int32 buffer with one vector atomic;
* a tiny scan kernel: per group, the cumulative histogram picks the digit holding the wanted
  rank and updates the prefix and the rank remaining inside that digit.

Everything stays on the device (no host sync). Several arrays sharing one validity (the
affine-invariant loss's pred and target) share the passes: group `k * G + b * S + s` for array k.
The count per group falls out of the first histogram.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .segmented import (
    check_images,
    group_of,
    image_groups,
    load_validity,
    segment_onehot,
    segment_pow2,
    tile_columns,
    tile_plan,
    validity_args,
)

# 8-bit digits: the kernels hard-code 256 bins, SHIFT = 24 - 8 * PASS and PASS 3 as the last.
RADIX = 256
NUM_PASSES = 4
# atomic_min identity for the median index scratch (int32 indices: rows shorter than 2**31).
NO_INDEX = 2**31 - 1


@triton.jit
def float_to_key(x):
    """fp32 -> order-preserving uint32 key (-0.0 and +0.0 share the key of +0.0)."""
    x = tl.where(x == 0.0, 0.0, x)
    bits = x.to(tl.uint32, bitcast=True)
    flip = tl.where((bits >> 31) != 0, 0xFFFFFFFF, 0x80000000).to(tl.uint32)
    return bits ^ flip


@triton.jit
def key_to_float(key):
    """Inverse of `float_to_key` (uint32 -> fp32)."""
    bits = tl.where(key >= 0x80000000, key ^ 0x80000000, key ^ 0xFFFFFFFF).to(tl.uint32)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _digit_histogram(
    key, prefix_ptr, group, count_mask, PASS: tl.constexpr, SEG_BINS: tl.constexpr, seg
):
    """Histogram [SEG_BINS] of (segment, digit) over pixels matching their group's prefix."""
    SHIFT: tl.constexpr = 32 - 8 * (PASS + 1)
    if PASS > 0:
        prefix = tl.load(prefix_ptr + group).to(tl.uint32, bitcast=True)
        count_mask = count_mask & ((key >> (SHIFT + 8)) == (prefix >> (SHIFT + 8)))
    digit = ((key >> SHIFT) & 0xFF).to(tl.int32)
    return tl.histogram(seg * 256 + digit, SEG_BINS, mask=count_mask)


@triton.jit
def _radix_histogram_kernel(
    x_ptr,
    y_ptr,
    mask_ptr,
    seg_ptr,
    prefix_ptr,
    hist_ptr,
    L,
    num_segments,
    num_groups,
    tiles_per_prog,
    HAS_Y: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SEG: tl.constexpr,
    PASS: tl.constexpr,
    BLOCK: tl.constexpr,
    SEG_POW2: tl.constexpr,
):
    # grid (B, chunks); hist is [NUM_PASSES, K * G, 256] int32 (one allocation: no views are
    # handed to the kernels, which keeps torch.compile's mutation tracking simple).
    SEG_BINS: tl.constexpr = SEG_POW2 * 256
    ARRAYS: tl.constexpr = 2 if HAS_Y else 1
    hist_ptr += PASS * ARRAYS * num_groups * 256
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    hist_x = tl.zeros([SEG_BINS], dtype=tl.int32)
    hist_y = tl.zeros([SEG_BINS], dtype=tl.int32)
    for t in range(tiles_per_prog):
        cols, in_row, offs = tile_columns(b, chunk, t, tiles_per_prog, L, BLOCK)
        x = tl.load(x_ptr + offs, mask=in_row, other=0.0).to(tl.float32)
        if HAS_Y:
            y = tl.load(y_ptr + offs, mask=in_row, other=0.0).to(tl.float32)
            valid, seg = load_validity(
                y, mask_ptr, seg_ptr, offs, in_row, num_segments, HAS_MASK, HAS_SEG
            )
        else:
            valid, seg = load_validity(
                x, mask_ptr, seg_ptr, offs, in_row, num_segments, HAS_MASK, HAS_SEG
            )
        group = group_of(b, seg, num_segments, HAS_SEG)
        hist_x += _digit_histogram(float_to_key(x), prefix_ptr, group, valid, PASS, SEG_BINS, seg)
        if HAS_Y:
            hist_y += _digit_histogram(
                float_to_key(y), prefix_ptr, num_groups + group, valid, PASS, SEG_BINS, seg
            )
    bins = tl.arange(0, SEG_BINS)
    real = bins < num_segments * 256
    base = b.to(tl.int64) * num_segments * 256
    tl.atomic_add(hist_ptr + base + bins, hist_x, mask=real)
    if HAS_Y:
        tl.atomic_add(hist_ptr + num_groups * 256 + base + bins, hist_y, mask=real)


@triton.jit
def _radix_scan_kernel(
    hist_ptr,
    prefix_ptr,
    rank_ptr,
    count_ptr,
    median_ptr,
    total_groups,
    num_groups,
    PASS: tl.constexpr,
    GROUP_BLOCK: tl.constexpr,
):
    # One program per GROUP_BLOCK groups: pick the digit holding the remaining rank.
    SHIFT: tl.constexpr = 32 - 8 * (PASS + 1)
    groups = tl.program_id(0) * GROUP_BLOCK + tl.arange(0, GROUP_BLOCK)
    live = groups < total_groups
    bins = tl.arange(0, 256)
    hist_ptr += PASS * total_groups * 256
    hist = tl.load(hist_ptr + groups[:, None] * 256 + bins[None, :], mask=live[:, None], other=0)
    if PASS == 0:
        count = tl.sum(hist, axis=1)
        rank = tl.where(count > 0, (count - 1) // 2, -1)
        prefix = tl.zeros([GROUP_BLOCK], dtype=tl.uint32)
        tl.store(count_ptr + groups, count, mask=groups < num_groups)
    else:
        rank = tl.load(rank_ptr + groups, mask=live, other=-1)
        prefix = tl.load(prefix_ptr + groups, mask=live, other=0).to(tl.uint32, bitcast=True)
    cumulative = tl.cumsum(hist, axis=1)
    digit = tl.sum((cumulative <= rank[:, None]).to(tl.int32), axis=1)
    below = tl.sum(tl.where(bins[None, :] < digit[:, None], hist, 0), axis=1)
    # rank stays -1 for empty groups: no bin has cumulative <= -1, so digit and below are 0.
    rank = tl.where(rank >= 0, rank - below, rank)
    prefix = prefix | (digit.to(tl.uint32) << SHIFT)
    if PASS == 3:
        median = tl.where(rank >= 0, key_to_float(prefix), 0.0)
        tl.store(median_ptr + groups, median, mask=live)
    else:
        tl.store(rank_ptr + groups, rank, mask=live)
        tl.store(prefix_ptr + groups, prefix.to(tl.int32, bitcast=True), mask=live)


def radix_select_lower_median(
    x: torch.Tensor,
    y: torch.Tensor | None,
    mask: torch.Tensor | None,
    segments: torch.Tensor | None,
    num_segments: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower median per group of one or two `(B, L)` arrays sharing one validity.

    valid = mask & isfinite(last array) & 0 <= segments < num_segments. Inputs are validated by
    the caller (`check_images`).

    Returns `(medians, counts)`: medians `(K * B * S,)` float32, group `k*B*S + b*S + s` for array
    k (x is k=0, y is k=1), 0.0 for an empty group; counts `(B * S,)` int32 valid pixels.
    """
    B, L = x.shape
    arrays = 1 if y is None else 2
    num_groups = B * num_segments
    total_groups = arrays * num_groups
    device = x.device
    plan = tile_plan(B, L, device)
    seg_pow2 = segment_pow2(segments, num_segments)
    hist = torch.zeros((NUM_PASSES, total_groups, RADIX), dtype=torch.int32, device=device)
    prefix = torch.empty(total_groups, dtype=torch.int32, device=device)
    rank = torch.empty(total_groups, dtype=torch.int32, device=device)
    counts = torch.empty(num_groups, dtype=torch.int32, device=device)
    medians = torch.empty(total_groups, dtype=torch.float32, device=device)
    group_block = min(triton.next_power_of_2(max(total_groups, 1)), 16)
    mask_arg, seg_arg, flags = validity_args(x, mask, segments)
    for radix_pass in range(NUM_PASSES):
        wrap_triton(_radix_histogram_kernel)[(B, plan.chunks)](
            x,
            x if y is None else y,  # a placeholder pointer, never read without HAS_Y
            mask_arg,
            seg_arg,
            prefix,
            hist,
            L,
            num_segments,
            num_groups,
            plan.tiles_per_prog,
            HAS_Y=y is not None,
            **flags,
            PASS=radix_pass,
            BLOCK=plan.block,
            SEG_POW2=seg_pow2,
            num_warps=plan.num_warps,
        )
        wrap_triton(_radix_scan_kernel)[(triton.cdiv(total_groups, group_block),)](
            hist,
            prefix,
            rank,
            counts,
            medians,
            total_groups,
            num_groups,
            PASS=radix_pass,
            GROUP_BLOCK=group_block,
        )
    return medians, counts


@triton.jit
def first_index_of(values, target, onehot, cols):
    """Per-segment lowest column [SEG_POW2] int32 where `values == target` (NO_INDEX if none)."""
    hit = onehot & (values == target)[:, None]
    return tl.min(tl.where(hit, cols[:, None], 2147483647), axis=0)


@triton.jit
def _median_index_kernel(
    x_ptr,
    mask_ptr,
    seg_ptr,
    median_ptr,
    index_ptr,
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
    best = tl.full([SEG_POW2], 2147483647, dtype=tl.int32)
    for t in range(tiles_per_prog):
        cols, in_row, offs = tile_columns(b, chunk, t, tiles_per_prog, L, BLOCK)
        x = tl.load(x_ptr + offs, mask=in_row, other=0.0).to(tl.float32)
        valid, seg = load_validity(
            x, mask_ptr, seg_ptr, offs, in_row, num_segments, HAS_MASK, HAS_SEG
        )
        median = tl.load(median_ptr + group_of(b, seg, num_segments, HAS_SEG))
        onehot = segment_onehot(seg, valid, SEG_POW2)
        best = tl.minimum(best, first_index_of(x, median, onehot, cols))
    groups, real = image_groups(b, num_segments, SEG_POW2)
    tl.atomic_min(index_ptr + groups, best, mask=real)


def lower_median(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
    num_segments: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked, segmented lower median of `(B, L)` rows (what `torch.nanmedian` returns).

    Args:
        x: `(B, L)` float32/float16/bfloat16, contiguous.
        mask: `(B, L)` bool or None.
        segments: `(B, L)` integer or None; values outside [0, num_segments) are ignored pixels.
        num_segments: S.

    valid = mask & isfinite(x) & 0 <= segments < S.

    Returns:
        values `(B, S)` float32 (0.0 where a group has no valid pixel), index `(B, S)` int64
        (lowest column whose value equals the median, -1 for an empty group), count `(B, S)`
        int32.
    """
    check_images("x", x, mask, segments, num_segments)
    B, L = x.shape
    medians, counts = radix_select_lower_median(x, None, mask, segments, num_segments)
    plan = tile_plan(B, L, x.device)
    index = torch.full((B * num_segments,), NO_INDEX, dtype=torch.int32, device=x.device)
    mask_arg, seg_arg, flags = validity_args(x, mask, segments)
    wrap_triton(_median_index_kernel)[(B, plan.chunks)](
        x,
        mask_arg,
        seg_arg,
        medians,
        index,
        L,
        num_segments,
        plan.tiles_per_prog,
        **flags,
        BLOCK=plan.block,
        SEG_POW2=segment_pow2(segments, num_segments),
        num_warps=plan.num_warps,
    )
    index = torch.where(counts > 0, index.long(), -1)
    return medians.view(B, num_segments), index.view(B, num_segments), counts.view(B, num_segments)
