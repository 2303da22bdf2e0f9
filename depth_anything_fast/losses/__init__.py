"""Depth Anything losses: affine-invariant (median/MAD, segmented, CutMix), feature alignment,
MiDaS scale-shift-invariant + gradient matching, SILog.

Each fused loss takes `backend="auto" | "triton" | "cpu" | "reference"`; plain PyTorch
oracles live in `depth_anything_fast.losses.reference`.
"""

from depth_anything_fast.losses.affine_invariant import (
    AffineInvariantLoss,
    CutMixLoss,
    affine_invariant_loss,
    cutmix_loss,
)
from depth_anything_fast.losses.feature_alignment import (
    FeatureAlignmentLoss,
    feature_alignment_loss,
)
from depth_anything_fast.losses.midas import (
    ScaleShiftInvariantLoss,
    SiLogLoss,
    scale_shift_invariant_loss,
    silog_loss,
)

__all__ = [
    "AffineInvariantLoss",
    "CutMixLoss",
    "FeatureAlignmentLoss",
    "ScaleShiftInvariantLoss",
    "SiLogLoss",
    "affine_invariant_loss",
    "cutmix_loss",
    "feature_alignment_loss",
    "scale_shift_invariant_loss",
    "silog_loss",
]
