"""Exact multi-block radix select of the lower median per (array, image, segment) group.

Floats map to order-preserving uint32 keys (flip all bits of negatives, the sign bit of
non-negatives; -0.0 is first folded into +0.0 so that equal values share one key). The key of
the element of rank floor((n-1)/2) is found digit by digit, most significant first, with digits
of 11, 11 and 10 bits: three histogram passes over the data, each over a `(B, chunks)` grid.
A program histograms the digits of its valid pixels whose higher digits match the group's
prefix so far (`tl.histogram` in registers across its tiles) and adds them to a
`[groups, bins]` int32 buffer with one vector atomic (with more than two segments the register
histogram would not fit: pixels are then counted with one atomic each). There is no scan kernel: each program of
the next pass scans its own image's histograms first (a few KiB, from L2) to learn the prefix.

After the third pass a group's 22-bit prefix leaves 1024 candidate keys, each one exact float,
so the last histogram gives, besides the median, the exact counts below and above it and the
sum over the last bin's elements; together with the sums of `x - c` over the elements below
and above the prefix (collected in the third pass, `c` the smallest value of the prefix),
`sum |x - t| = S_> - S_< + (t - c) (n_< - n_>)` needs no further pass.

Several arrays sharing one validity (the affine-invariant loss's pred and target) share the
passes: group `k * G + g` for array k. Counts are int32 histograms: exact up to 2**31 pixels.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from .segmented import (
    per_pixel,
    segment_sum,
)

# Digits, most significant first: bins and shift of each pass.
BINS = (2048, 2048, 1024)
NUM_PASSES = 3
# int32 words of histogram per (array, group): the three passes' bins.
HIST_WORDS = sum(BINS)
# Register histograms (`tl.histogram`, one vector atomic per program) up to this many bins per
# program and array; beyond (more than 2 segments), one global atomic per counted pixel.
REGISTER_HISTOGRAM_BINS = 4096
# DAF_TRITON_HISTOGRAM=atomics counts with atomics always: Triton 3.6 lowers tl.histogram to a
# ballot/popcount sequence several times slower than 3.9's shared-memory atomics, so the GPU
# check measures both kinds on the Triton it has.
HISTOGRAM_ENV = "DAF_TRITON_HISTOGRAM"


def atomic_histogram(seg_pow2: int) -> bool:
    """Whether the passes count with per-pixel atomics instead of register histograms."""
    mode = os.environ.get(HISTOGRAM_ENV, "auto")
    if mode not in ("auto", "atomics"):
        raise ValueError(f"{HISTOGRAM_ENV} must be 'auto' or 'atomics', got {mode!r}")
    return mode == "atomics" or seg_pow2 * BINS[0] > REGISTER_HISTOGRAM_BINS


def histogram_bins(seg_pow2: int, radix_pass: int) -> int:
    """Length of a program's register histogram (1, unused, with atomic histograms)."""
    return 1 if atomic_histogram(seg_pow2) else seg_pow2 * BINS[radix_pass]


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
def hist_offset(PASS: tl.constexpr, rows):
    """Word offset of pass PASS's histograms in the scratch (`rows` = arrays * groups)."""
    if PASS == 0:
        return rows * 0
    elif PASS == 1:
        return rows * 2048
    else:
        return rows * 4096


@triton.jit
def sums_offset(rows):
    """Word offset of the fp32 sums of x - c below / above the 22-bit prefix ([rows] each)."""
    return rows * 5120


@triton.jit
def _scan(hist_ptr, row, rank, NB: tl.constexpr):
    """One histogram row: the digit holding `rank` (-1: none -> 0), the count below it, the row."""
    bins = tl.arange(0, NB)
    h = tl.load(hist_ptr + row.to(tl.int64) * NB + bins)
    digit = tl.sum((tl.cumsum(h, axis=0) <= rank).to(tl.int32), axis=0)
    below = tl.sum(tl.where(bins < digit, h, 0), axis=0)
    return digit, below, h


@triton.jit
def _prefix_of_row(scratch_ptr, row, total_rows, DONE: tl.constexpr):
    """After DONE passes, for one group row: the key prefix found so far (digits in the low
    bits), the rank left inside it, the group count and the count below the prefix."""
    count = tl.sum(tl.load(scratch_ptr + row.to(tl.int64) * 2048 + tl.arange(0, 2048)), axis=0)
    rank = tl.where(count > 0, (count - 1) // 2, -1)
    digit, below, _ = _scan(scratch_ptr, row, rank, 2048)
    rank = tl.where(rank >= 0, rank - below, rank)
    prefix = digit
    n_below = below
    if DONE >= 2:
        digit, below, _ = _scan(scratch_ptr + hist_offset(1, total_rows), row, rank, 2048)
        rank = tl.where(rank >= 0, rank - below, rank)
        prefix = (prefix << 11) | digit
        n_below += below
    return prefix, rank, count, n_below


@triton.jit
def _median_of_row(scratch_ptr, row, total_rows):
    """After the three passes, for one group row: (t, count, n_<, n_>, S_<, S_>) with t the
    lower median (0.0 for an empty group) and S_< / S_> the sums of x - t below / above it (the
    third pass's sums of x - c plus the last histogram's exact bins; see the module doc)."""
    prefix, rank, count, n_below = _prefix_of_row(scratch_ptr, row, total_rows, 2)
    digit, below, h = _scan(scratch_ptr + hist_offset(2, total_rows), row, rank, 1024)
    high = prefix.to(tl.uint32) << 10
    empty = count == 0
    t = tl.where(empty, 0.0, key_to_float(high | digit.to(tl.uint32)))
    c = key_to_float(high)
    bins = tl.arange(0, 1024)
    # h > 0 guards: an empty bin may decode to inf or NaN.
    offset = tl.where(h > 0, h.to(tl.float32) * (key_to_float(high | bins.to(tl.uint32)) - c), 0.0)
    sums = scratch_ptr.to(tl.pointer_type(tl.float32), bitcast=True) + sums_offset(total_rows)
    below_sum = tl.load(sums + row) + tl.sum(tl.where(bins < digit, offset, 0.0), axis=0)
    above_sum = tl.load(sums + total_rows + row) + tl.sum(tl.where(bins > digit, offset, 0.0),
                                                          axis=0)  # fmt: skip
    n_lt = n_below + below
    n_gt = count - n_lt - tl.sum(tl.where(bins == digit, h, 0), axis=0)
    # Shift the sums from c to t: sum_{x<t} (x - t) = S_< - n_< (t - c), likewise above.
    shift = tl.where(empty, 0.0, t - c)
    below_sum = tl.where(empty, 0.0, below_sum - n_lt.to(tl.float32) * shift)
    above_sum = tl.where(empty, 0.0, above_sum - n_gt.to(tl.float32) * shift)
    return t, count, n_lt, n_gt, below_sum, above_sum


@triton.jit
def select_prefix(scratch_ptr, rows, live, total_rows, DONE: tl.constexpr):
    """`_prefix_of_row` for the rows [R] of an image's segments (`live`: real ones), one row at a
    time (a runtime loop: the code stays small for any number of segments)."""
    columns = tl.arange(0, rows.shape[0])
    prefix = tl.zeros_like(rows)
    rank = tl.zeros_like(rows)
    count = tl.zeros_like(rows)
    n_below = tl.zeros_like(rows)
    for j in range(tl.sum(live.to(tl.int32), axis=0)):
        here = columns == j
        p, r, c, n = _prefix_of_row(scratch_ptr, tl.sum(tl.where(here, rows, 0), axis=0),
                                    total_rows, DONE)  # fmt: skip
        prefix = tl.where(here, p, prefix)
        rank = tl.where(here, r, rank)
        count = tl.where(here, c, count)
        n_below = tl.where(here, n, n_below)
    return prefix, rank, count, n_below


@triton.jit
def select_median(scratch_ptr, rows, live, total_rows):
    """`_median_of_row` for the rows [R] of an image's segments, as vectors [R]."""
    columns = tl.arange(0, rows.shape[0])
    t = tl.zeros(rows.shape, dtype=tl.float32)
    below_sum = tl.zeros(rows.shape, dtype=tl.float32)
    above_sum = tl.zeros(rows.shape, dtype=tl.float32)
    count = tl.zeros_like(rows)
    n_lt = tl.zeros_like(rows)
    n_gt = tl.zeros_like(rows)
    for j in range(tl.sum(live.to(tl.int32), axis=0)):
        here = columns == j
        t_j, c_j, lt_j, gt_j, below_j, above_j = _median_of_row(
            scratch_ptr, tl.sum(tl.where(here, rows, 0), axis=0), total_rows
        )
        t = tl.where(here, t_j, t)
        count = tl.where(here, c_j, count)
        n_lt = tl.where(here, lt_j, n_lt)
        n_gt = tl.where(here, gt_j, n_gt)
        below_sum = tl.where(here, below_j, below_sum)
        above_sum = tl.where(here, above_j, above_sum)
    return t, count, n_lt, n_gt, below_sum, above_sum


@triton.jit
def program_prefix(scratch_ptr, rows, live, total_rows, PASS: tl.constexpr):
    """The key prefixes [SEG_POW2] pass PASS matches against (a program computes them once)."""
    if PASS == 0:
        return tl.zeros_like(rows)
    else:
        prefix, _, _, _ = select_prefix(scratch_ptr, rows, live, total_rows, PASS)
        return prefix


@triton.jit
def _count(hist, bins, match, hist_rows_ptr, NB: tl.constexpr, ATOMIC: tl.constexpr):
    """Count `bins` [BLOCK] (segment * NB + digit) of the `match` pixels: into the register
    histogram, or straight into the scratch rows at `hist_rows_ptr` with atomics."""
    if ATOMIC:
        tl.atomic_add(hist_rows_ptr + bins, tl.full(bins.shape, 1, tl.int32), mask=match)
    else:
        hist += tl.histogram(bins, hist.shape[0], mask=match)
    return hist


@triton.jit
def histogram_digits(x, valid, seg, prefix, hist, below, above, hist_rows_ptr, PASS: tl.constexpr,
                     SEG_POW2: tl.constexpr, ATOMIC: tl.constexpr):  # fmt: skip
    """Count one tile of `x` in pass PASS (and, in the last pass, add the per-segment sums of
    x - c below/above the prefix); `prefix` [SEG_POW2] from `program_prefix`, `seg` [BLOCK]
    each pixel's segment column, `hist_rows_ptr` the scratch rows of this array and image."""
    key = float_to_key(x)
    if PASS == 0:
        digit = (key >> 21).to(tl.int32)
        hist = _count(hist, seg * 2048 + digit, valid, hist_rows_ptr, 2048, ATOMIC)
    else:
        prefix = per_pixel(prefix, seg, SEG_POW2).to(tl.uint32)
        if PASS == 1:
            match = valid & ((key >> 21) == prefix)
            digit = ((key >> 10) & 0x7FF).to(tl.int32)
            hist = _count(hist, seg * 2048 + digit, match, hist_rows_ptr, 2048, ATOMIC)
        else:
            high = key >> 10
            match = valid & (high == prefix)
            digit = (key & 0x3FF).to(tl.int32)
            hist = _count(hist, seg * 1024 + digit, match, hist_rows_ptr, 1024, ATOMIC)
            deviation = x - key_to_float(prefix << 10)
            onehot = valid[:, None] & (seg[:, None] == tl.arange(0, SEG_POW2)[None, :])
            below += segment_sum(tl.where(high < prefix, deviation, 0.0), onehot)
            above += segment_sum(tl.where(high > prefix, deviation, 0.0), onehot)
    return hist, below, above


@triton.jit
def hist_rows(scratch_ptr, first_row, total_rows, PASS: tl.constexpr):
    """Pointer to pass PASS's histogram row `first_row` in the scratch."""
    NB: tl.constexpr = 2048 if PASS < 2 else 1024
    return scratch_ptr + hist_offset(PASS, total_rows) + first_row.to(tl.int64) * NB


@triton.jit
def publish_histogram(scratch_ptr, hist, below, above, first_row, num_segments, total_rows,
                      PASS: tl.constexpr, SEG_POW2: tl.constexpr, ATOMIC: tl.constexpr):  # fmt: skip
    """Add a program's register histogram [SEG_POW2 * bins] of rows first_row + j, j < S (and
    the last pass's sums [SEG_POW2]) to the scratch; empty bins take no atomic."""
    NB: tl.constexpr = 2048 if PASS < 2 else 1024
    if not ATOMIC:
        bins = tl.arange(0, SEG_POW2 * NB)
        real = bins < num_segments * NB
        base = hist_rows(scratch_ptr, first_row, total_rows, PASS)
        tl.atomic_add(base + bins, hist, mask=real & (hist != 0))
    if PASS == 2:
        rows = first_row + tl.arange(0, SEG_POW2)
        live = rows < first_row + num_segments
        sums = scratch_ptr.to(tl.pointer_type(tl.float32), bitcast=True) + sums_offset(total_rows)
        tl.atomic_add(sums + rows, below, mask=live)
        tl.atomic_add(sums + total_rows + rows, above, mask=live)
