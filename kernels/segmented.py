"""Building blocks shared by the per-(image, segment) kernels.

Images are flattened rows `(B, L)`. A program of a row-parallel kernel owns `tiles_per_prog`
consecutive tiles of `BLOCK` pixels of one row (grid `(B, chunks)`), so it can keep its partial
reductions in registers and publish them with one atomic per group at the end. Per-segment
reductions use a one-hot `[BLOCK, SEG_POW2]` layout: cheap for the few segments the losses use
(1 for plain images, 2 for CutMix); the cost grows linearly with the number of segments.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Programs per SM a row-parallel launch aims for on a GPU: enough to hide memory latency, few
# enough that each program reduces several tiles in registers before its atomics.
_PROGRAMS_PER_SM = 4
_GPU_BLOCK = 2048
# Under the interpreter every program instance costs ~0.6 ms of Python overhead while a tile is
# one numpy call: use one program per row and big tiles. Tests shrink both to exercise the
# multi-tile, multi-program paths that GPU shapes take.
_INTERPRETER_BLOCK = 8192
_INTERPRETER_TILES_PER_PROG = 1 << 20


@dataclass(frozen=True)
class TilePlan:
    """Launch geometry of a row-parallel kernel over `(rows, length)` data."""

    block: int
    tiles_per_prog: int
    chunks: int
    num_warps: int


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def tile_plan(rows: int, length: int, device: torch.device) -> TilePlan:
    """Choose `BLOCK`, tiles per program and chunks per row for `rows` rows of `length` pixels."""
    length = max(length, 1)
    if device.type == "cuda":
        block = min(_GPU_BLOCK, max(triton.next_power_of_2(length), 128))
        tiles = triton.cdiv(length, block)
        index = device.index if device.index is not None else torch.cuda.current_device()
        target_programs = _PROGRAMS_PER_SM * _sm_count(index)
        chunks = max(1, min(tiles, triton.cdiv(target_programs, max(rows, 1))))
        num_warps = 8 if block >= 2048 else 4
    else:
        block = min(_INTERPRETER_BLOCK, max(triton.next_power_of_2(length), 16))
        tiles = triton.cdiv(length, block)
        chunks = triton.cdiv(tiles, _INTERPRETER_TILES_PER_PROG)
        num_warps = 4
    tiles_per_prog = triton.cdiv(tiles, chunks)
    chunks = triton.cdiv(tiles, tiles_per_prog)
    return TilePlan(block=block, tiles_per_prog=tiles_per_prog, chunks=chunks, num_warps=num_warps)


def segment_pow2(segments: torch.Tensor | None, num_segments: int) -> int:
    """Width of the one-hot segment axis: 1 without a segment map (every pixel is segment 0)."""
    return 1 if segments is None else triton.next_power_of_2(num_segments)


# How pixels get their segment: none (all 0), an integer map, or a CutMix box (inside: 0).
SEG_NONE, SEG_MAP, SEG_BOX = 0, 1, 2
_MODE_MAP = tl.constexpr(SEG_MAP)
_MODE_BOX = tl.constexpr(SEG_BOX)


def check_images(
    name: str,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    segments: torch.Tensor | None,
    num_segments: int,
) -> None:
    """Validate the `(B, L)` image convention shared by the segmented kernels."""
    if x.dim() != 2:
        raise ValueError(f"{name} must be (B, L), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    for other_name, other in (("mask", mask), ("segments", segments)):
        if other is None:
            continue
        if other.shape != x.shape:
            raise ValueError(
                f"{other_name} shape {tuple(other.shape)} != {name} shape {tuple(x.shape)}"
            )
        if other.device != x.device:
            raise ValueError(f"{other_name} is on {other.device}, {name} on {x.device}")
        if not other.is_contiguous():
            raise ValueError(f"{other_name} must be contiguous")
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    if segments is not None and (segments.is_floating_point() or segments.dtype == torch.bool):
        raise TypeError(f"segments must be an integer tensor, got {segments.dtype}")


@triton.jit
def tile_columns(b, chunk, t, tiles_per_prog, L, BLOCK: tl.constexpr):
    """Tile `t` of program (b, chunk): columns [BLOCK], which of them are inside the row, and
    their flat offsets (int64: B * L may exceed 2**31)."""
    cols = (chunk * tiles_per_prog + t) * BLOCK + tl.arange(0, BLOCK)
    return cols, cols < L, b.to(tl.int64) * L + cols


@triton.jit
def image_groups(b, num_segments, SEG_POW2: tl.constexpr):
    """Groups [SEG_POW2] b * S + j of image b's segment columns j, and which are real (j < S)."""
    segs = tl.arange(0, SEG_POW2)
    return b * num_segments + segs, segs < num_segments


@triton.jit
def load_pixels(x_ptr, y_ptr, y_b_ptr, mask_ptr, seg_ptr, offs, in_row, num_segments,
                HAS_Y: tl.constexpr, HAS_MASK: tl.constexpr, SEG_MODE: tl.constexpr):  # fmt: skip
    """One tile: (x, y, valid, segment) with x, y fp32 and the segment int32.

    y is the target (HAS_Y; else y = x); with SEG_MODE == SEG_BOX it is picked per pixel from
    `y_ptr` inside the box (`seg_ptr`, bool/uint8, segment 0) and `y_b_ptr` outside (segment
    1), so CutMix needs no prepared target or segment map. valid = in_row & mask &
    isfinite(y) & 0 <= segment < S, the range checked on the loaded integers (int64 ids beyond
    int32 stay ignored). Invalid pixels get segment 0, so per-group gathers need no mask and no
    atomic can land outside the per-group buffers.
    """
    x = tl.load(x_ptr + offs, mask=in_row, other=0.0).to(tl.float32)
    if SEG_MODE == _MODE_BOX:
        inside = tl.load(seg_ptr + offs, mask=in_row, other=0) != 0
        y_a = tl.load(y_ptr + offs, mask=in_row & inside, other=0.0).to(tl.float32)
        y_b = tl.load(y_b_ptr + offs, mask=in_row & (inside == 0), other=0.0).to(tl.float32)
        y = tl.where(inside, y_a, y_b)
    elif HAS_Y:
        y = tl.load(y_ptr + offs, mask=in_row, other=0.0).to(tl.float32)
    else:
        y = x
    valid = in_row & (tl.abs(y) < float("inf"))
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + offs, mask=in_row, other=0) != 0)
    if SEG_MODE == _MODE_MAP:
        raw = tl.load(seg_ptr + offs, mask=in_row, other=0)
        valid = valid & (raw >= 0) & (raw < num_segments)
        seg = tl.where(valid, raw, 0).to(tl.int32)
    elif SEG_MODE == _MODE_BOX:
        seg = tl.where(valid & (inside == 0), 1, 0).to(tl.int32)
    else:
        seg = tl.zeros_like(offs).to(tl.int32)
    return x, y, valid, seg


@triton.jit
def per_pixel(values, seg, SEG_POW2: tl.constexpr):
    """Each pixel's entry of a per-segment vector: values [SEG_POW2], seg [BLOCK] -> [BLOCK]
    (a scalar without segments)."""
    if SEG_POW2 == 1:
        return tl.sum(values, axis=0)
    else:
        onehot = seg[:, None] == tl.arange(0, SEG_POW2)[None, :]
        return tl.sum(tl.where(onehot, values[None, :], 0), axis=1)


@triton.jit
def segment_onehot(seg, valid, SEG_POW2: tl.constexpr):
    """[BLOCK, SEG_POW2] bool: pixel is valid and belongs to segment column j."""
    return valid[:, None] & (seg[:, None] == tl.arange(0, SEG_POW2)[None, :])


@triton.jit
def segment_sum(values, onehot):
    """Per-segment sums [SEG_POW2] of `values` [BLOCK] over the one-hot layout."""
    return tl.sum(tl.where(onehot, values[:, None], 0), axis=0)
