"""Feature alignment loss (Depth Anything's semantic-assisted perception)."""

from __future__ import annotations

from torch import Tensor, nn

from depth_anything_fast.losses.inputs import check_float
from depth_anything_fast.ops import FeatureAlignmentArgs
from depth_anything_fast.ops import feature_alignment as fused_feature_alignment


def feature_alignment_loss(
    features: Tensor, frozen: Tensor, alpha: float = 0.85, *, backend: str = "auto"
) -> Tensor:
    """Mean of 1 - cos(f_i, f'_i) over tokens whose cosine similarity is <= alpha.

    Args:
        features: `(B, N, C)` (or any `(..., C)`) float32/float16/bfloat16 student tokens.
        frozen: same shape, float, tokens of the frozen encoder (no gradient reaches them;
            converted to features' dtype when it differs).
        alpha: tolerance; tokens already more similar than alpha are left out.
        backend: "auto" | "triton" | "cpu" | "reference" (see `depth_anything_fast.ops`).

    Returns:
        float32 scalar (float64 for float64 inputs on the reference backend); 0 with a zero
        gradient when no token is kept. Cosine as `torch.nn.functional.cosine_similarity`.
    """
    check_float(features, "features")
    check_float(frozen, "frozen")
    if features.dim() < 2 or features.shape != frozen.shape:
        raise ValueError(
            f"features {tuple(features.shape)} and frozen {tuple(frozen.shape)} must have the "
            "same shape (B, N, C)"
        )
    if features.device != frozen.device:
        raise ValueError(f"frozen is on {frozen.device} but features is on {features.device}")
    channels = features.shape[-1]
    args = FeatureAlignmentArgs(
        features.reshape(-1, channels),
        frozen.detach().to(features.dtype).reshape(-1, channels),
        float(alpha),
    )
    return fused_feature_alignment(args, backend)


class FeatureAlignmentLoss(nn.Module):
    """Module form of `feature_alignment_loss`."""

    def __init__(self, alpha: float = 0.85, backend: str = "auto") -> None:
        super().__init__()
        self.alpha = alpha
        self.backend = backend

    def forward(self, features: Tensor, frozen: Tensor) -> Tensor:
        return feature_alignment_loss(
            features, frozen, self.alpha, backend=self.backend
        )
