"""Plain PyTorch references of the fused losses (affine-invariant, feature alignment).

The backend `"reference"` of `depth_anything_fast.ops`, the oracles the tests compare the
fused backends against (run them in float64) and the baselines the benchmarks time. They favour
readability over speed: autograd provides the reference gradients, with the median's gradient
going to the element `torch.nanmedian` selects. Re-exported, with the MiDaS and SILog
references, by `depth_anything_fast.losses.reference` (the public home of every oracle).

All functions take flattened images: `pred`/`target` `(B, L)`, `mask` `(B, L)` bool,
`segments` `(B, L)` integer. Half-precision inputs are computed in float32; float64 stays float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from depth_anything_fast.kernels.stats_layout import SCALE_EPS


def compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for half-precision inputs, the input dtype otherwise (float32 / float64)."""
    return torch.promote_types(x.dtype, torch.float32)


def masked_lower_median(x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Lower median of `x` over the `valid` entries of the last dimension.

    x: `(..., L)` float, valid: `(..., L)` bool -> (values `(...)`, indices `(...)` int64).
    The lower median is the valid element of rank floor((n-1)/2). A row without a valid entry
    gives NaN. `torch.nanmedian` over NaN-filled invalid entries is exact for per-row counts.
    """
    return torch.nanmedian(torch.where(valid, x, float("nan")), dim=-1)


def valid_pixels(
    target: Tensor, mask: Tensor | None, segments: Tensor | None, num_segments: int
) -> Tensor:
    """`(B, L)` bool: mask & isfinite(target) & 0 <= segment < num_segments."""
    valid = torch.isfinite(target)
    if mask is not None:
        valid = valid & mask
    if segments is not None:
        valid = valid & (segments >= 0) & (segments < num_segments)
    return valid


def _group_masks(valid: Tensor, segments: Tensor | None, num_segments: int) -> Tensor:
    """`(B, S, L)` bool: pixel valid and in segment s."""
    if segments is None:
        return valid[:, None, :]
    segment_ids = torch.arange(num_segments, device=valid.device)
    return valid[:, None, :] & (segments[:, None, :] == segment_ids[None, :, None])


def normalise(x: Tensor, in_group: Tensor) -> Tensor:
    """(x - t) / s per group: x `(B, L)`, in_group `(B, S, L)` -> `(B, S, L)`."""
    n = in_group.sum(-1)
    t, _ = masked_lower_median(x[:, None, :].expand_as(in_group), in_group)
    t = torch.where(n > 0, t, 0.0)  # an empty group's NaN median must not leak into gradients
    deviation = torch.where(in_group, (x[:, None, :] - t[..., None]).abs(), 0.0)
    s = (deviation.sum(-1) / n.clamp_min(1)).clamp_min(SCALE_EPS)
    return (x[:, None, :] - t[..., None]) / s[..., None]


def affine_invariant_loss_reference(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    segments: Tensor | None = None,
    num_segments: int = 1,
) -> tuple[Tensor, Tensor]:
    """Per-image affine-invariant loss with per-(image, segment) median/MAD statistics.

    pred, target: `(B, L)` float; mask: `(B, L)` bool or None; segments: `(B, L)` int or None
    (values outside [0, num_segments) are ignored, as in the fused kernels).
    Returns (loss `(B,)` in the compute dtype, n_valid `(B,)` int64); loss is 0 where n_valid is 0.
    Every valid pixel of an image is weighted 1/n_valid, whatever its segment.
    """
    dtype = compute_dtype(pred)
    valid = valid_pixels(target, mask, segments, num_segments)
    # Invalid pixels are zeroed first so that NaN/inf never reaches an autograd formula.
    p = torch.where(valid, pred.to(dtype), 0.0)
    g = torch.where(valid, target.detach().to(dtype), 0.0)
    in_group = _group_masks(valid, segments, num_segments)
    error = torch.where(in_group, (normalise(p, in_group) - normalise(g, in_group)).abs(), 0.0)
    n_valid = valid.sum(-1)
    return error.sum((1, 2)) / n_valid.clamp_min(1), n_valid


def feature_alignment_loss_reference(
    features: Tensor, frozen: Tensor, alpha: float = 0.85
) -> Tensor:
    """Mean of 1 - cos over tokens with cos <= alpha (0 when none): features/frozen `(..., C)`.

    Returns a scalar in the compute dtype; no gradient reaches `frozen`.
    """
    dtype = compute_dtype(features)
    cos = F.cosine_similarity(features.to(dtype), frozen.detach().to(dtype), dim=-1)
    kept = cos.detach() <= alpha
    return torch.where(kept, 1.0 - cos, 0.0).sum() / kept.sum().clamp_min(1)
