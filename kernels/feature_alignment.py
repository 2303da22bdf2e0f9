"""Fused feature-alignment loss (Depth Anything, arXiv 2401.10891, semantic-assisted perception).

cos_i = f_i . z_i / sqrt(max(|f_i|^2 |z_i|^2, eps^2)) (torch.nn.functional.cosine_similarity,
eps = 1e-8); kept = cos <= alpha; loss = sum_kept (1 - cos) / n_kept, 0 when nothing is kept.
Forward: one zero-fill of a 3-word scratch and one pass over rows (tiles of `ROWS` x `BLOCK_C`,
sum and count via two scalar atomics per program); the last program (atomic ticket) writes the
loss and the count. Backward: one pass that recomputes the norms. 3 launches in all.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

COS_EPS = 1e-8
# Elements of one [ROWS, BLOCK_C] tile: GPU registers (8 warps; the backward keeps both inputs
# live, so half the tile) vs interpreter (numpy) speed. Big forward tiles also keep its two
# same-address atomics per program few.
_GPU_FORWARD_TILE = 8192
_GPU_BACKWARD_TILE = 4096
_GPU_NUM_WARPS = 8
_GPU_MAX_BLOCK_C = 1024
_INTERPRETER_TILE = 1 << 16


def _row_tiles(rows: int, channels: int, device: torch.device, gpu_tile: int) -> tuple[int, int]:
    """(ROWS, BLOCK_C) for `rows` rows of `channels` channels."""
    tile = gpu_tile if device.type == "cuda" else _INTERPRETER_TILE
    block_c = triton.next_power_of_2(max(channels, 1))
    if device.type == "cuda":
        block_c = min(block_c, _GPU_MAX_BLOCK_C)
    block_c = min(block_c, tile)
    block_rows = max(1, min(tile // block_c, triton.next_power_of_2(max(rows, 1))))
    return block_rows, block_c


@triton.jit
def _load_channels(f_ptr, z_ptr, base, live, c0, C, BLOCK_C: tl.constexpr):
    """Channels [c0, c0 + BLOCK_C) of the rows at `base` [ROWS, 1]: f and z [ROWS, BLOCK_C] as
    fp32, their offsets and the in-bounds mask."""
    cols = c0 + tl.arange(0, BLOCK_C)
    inside = live[:, None] & (cols < C)[None, :]
    offs = base + cols[None, :]
    f = tl.load(f_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    return f, z, offs, inside


@triton.jit
def _row_products(f_ptr, z_ptr, rows, live, C, ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    """(f.z, |f|^2, |z|^2) per row [ROWS], fp32."""
    dot = tl.zeros([ROWS], dtype=tl.float32)
    f_sq = tl.zeros([ROWS], dtype=tl.float32)
    z_sq = tl.zeros([ROWS], dtype=tl.float32)
    base = rows.to(tl.int64)[:, None] * C
    for c0 in range(0, C, BLOCK_C):
        f, z, _, _ = _load_channels(f_ptr, z_ptr, base, live, c0, C, BLOCK_C)
        dot += tl.sum(f * z, axis=1)
        f_sq += tl.sum(f * f, axis=1)
        z_sq += tl.sum(z * z, axis=1)
    return dot, f_sq, z_sq


@triton.jit
def _program_rows(M, ROWS: tl.constexpr):
    """This program's ROWS row indices and which of them exist (< M)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    return rows, rows < M


@triton.jit
def _feature_alignment_forward_kernel(
    f_ptr, z_ptr, cos_ptr, scratch_ptr, loss_ptr, kept_ptr, M, C, alpha,
    EPS_SQ: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # scratch (int32, zeroed): [sum of 1 - cos over kept rows (fp32 bits), kept rows, ticket]
    rows, live = _program_rows(M, ROWS)
    dot, f_sq, z_sq = _row_products(f_ptr, z_ptr, rows, live, C, ROWS, BLOCK_C)
    cos = dot / tl.sqrt(tl.maximum(f_sq * z_sq, EPS_SQ))
    tl.store(cos_ptr + rows, cos, mask=live)
    kept = live & (cos <= alpha)
    total_ptr = scratch_ptr.to(tl.pointer_type(tl.float32), bitcast=True)
    tl.atomic_add(total_ptr, tl.sum(tl.where(kept, 1.0 - cos, 0.0), axis=0))
    tl.atomic_add(scratch_ptr + 1, tl.sum(kept.to(tl.int32), axis=0))
    tl.debug_barrier()
    if tl.atomic_add(scratch_ptr + 2, 1) == tl.num_programs(0) - 1:  # the last program
        # Other programs' sums, read with atomics (at the coherence point, not from a cache).
        total = tl.atomic_add(total_ptr, 0.0)
        n_kept = tl.atomic_add(scratch_ptr + 1, 0).to(tl.float32)
        tl.store(loss_ptr, tl.where(n_kept > 0, total / tl.maximum(n_kept, 1.0), 0.0))
        tl.store(kept_ptr, n_kept)


def _check_features(features: torch.Tensor, frozen: torch.Tensor) -> None:
    if features.dim() != 2 or frozen.shape != features.shape:
        raise ValueError(
            f"features and frozen must both be (M, C), got {tuple(features.shape)} and "
            f"{tuple(frozen.shape)}"
        )
    if not (features.is_floating_point() and frozen.is_floating_point()):
        raise TypeError(f"features/frozen must be floating, got {features.dtype}/{frozen.dtype}")
    if frozen.device != features.device:
        raise ValueError(f"frozen is on {frozen.device}, features on {features.device}")
    if not (features.is_contiguous() and frozen.is_contiguous()):
        raise ValueError("features and frozen must be contiguous")


def feature_alignment_forward(
    features: torch.Tensor, frozen: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean of `1 - cos` over rows with `cos <= alpha`.

    Args:
        features, frozen: `(M, C)` contiguous float32/float16/bfloat16 (accumulated in fp32).
        alpha: tolerance; rows with cos > alpha are left out.

    Returns:
        loss `()` float32 (0 when nothing is kept), cos `(M,)` float32, n_kept `()` float32.
    """
    _check_features(features, frozen)
    M, C = features.shape
    device = features.device
    cos = torch.empty((M,), dtype=torch.float32, device=device)
    loss = torch.empty((), dtype=torch.float32, device=device)
    n_kept = torch.empty((), dtype=torch.float32, device=device)
    if M == 0:  # no program would write the loss
        return loss.zero_(), cos, n_kept.zero_()
    scratch = torch.zeros(3, dtype=torch.int32, device=device)
    block_rows, block_c = _row_tiles(M, C, device, _GPU_FORWARD_TILE)
    wrap_triton(_feature_alignment_forward_kernel)[(triton.cdiv(M, block_rows),)](
        features, frozen, cos, scratch, loss, n_kept, M, C, float(alpha),
        EPS_SQ=COS_EPS * COS_EPS, ROWS=block_rows, BLOCK_C=block_c, num_warps=_GPU_NUM_WARPS,
    )  # fmt: skip
    return loss, cos, n_kept


@triton.jit
def _feature_alignment_backward_kernel(
    grad_loss_ptr, f_ptr, z_ptr, cos_ptr, kept_ptr, grad_ptr, M, C, alpha,
    EPS_SQ: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    n_kept = tl.load(kept_ptr)
    rows, live = _program_rows(M, ROWS)
    weight = tl.where(n_kept > 0, tl.load(grad_loss_ptr) / tl.maximum(n_kept, 1.0), 0.0)
    _, f_sq, z_sq = _row_products(f_ptr, z_ptr, rows, live, C, ROWS, BLOCK_C)
    cos = tl.load(cos_ptr + rows, mask=live, other=2.0)
    kept = live & (cos <= alpha)
    norm_sq = f_sq * z_sq
    # d cos / d f = z / D - [D unclamped] * cos * f / |f|^2 with D = sqrt(max(|f|^2 |z|^2, eps^2)).
    coef_z = tl.where(kept, -weight / tl.sqrt(tl.maximum(norm_sq, EPS_SQ)), 0.0)
    coef_f = tl.where(kept & (norm_sq > EPS_SQ), weight * cos / tl.maximum(f_sq, 1e-30), 0.0)
    base = rows.to(tl.int64)[:, None] * C
    for c0 in range(0, C, BLOCK_C):
        f, z, offs, inside = _load_channels(f_ptr, z_ptr, base, live, c0, C, BLOCK_C)
        grad = coef_z[:, None] * z + coef_f[:, None] * f
        tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=inside)


def feature_alignment_backward(
    grad_loss: torch.Tensor,
    features: torch.Tensor,
    frozen: torch.Tensor,
    alpha: float,
    cos: torch.Tensor,
    n_kept: torch.Tensor,
) -> torch.Tensor:
    """Gradient of `grad_loss * loss` with respect to `features` (zero when nothing is kept).

    Args:
        grad_loss: `()` float32; features, frozen: `(M, C)`; alpha as in the forward;
        cos `(M,)` float32 and n_kept `()` float32 from the forward.

    Returns:
        grad_features `(M, C)` in features.dtype.
    """
    _check_features(features, frozen)
    M, C = features.shape
    if cos.shape != (M,) or n_kept.numel() != 1:
        raise ValueError(
            f"cos {tuple(cos.shape)} / n_kept {tuple(n_kept.shape)} do not match M={M}"
        )
    grad = torch.empty_like(features)
    block_rows, block_c = _row_tiles(M, C, features.device, _GPU_BACKWARD_TILE)
    wrap_triton(_feature_alignment_backward_kernel)[(triton.cdiv(M, block_rows),)](
        grad_loss.to(torch.float32).contiguous(), features, frozen, cos.contiguous(),
        n_kept.to(torch.float32).contiguous(), grad, M, C, float(alpha),
        EPS_SQ=COS_EPS * COS_EPS, ROWS=block_rows, BLOCK_C=block_c, num_warps=_GPU_NUM_WARPS,
    )  # fmt: skip
    return grad
