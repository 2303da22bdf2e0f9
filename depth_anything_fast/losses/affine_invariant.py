"""Affine-invariant (median/MAD) depth loss, its segmented form and the CutMix loss built on it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from depth_anything_fast.losses.inputs import as_images, check_float, flat, image_inputs
from depth_anything_fast.ops import AffineInvariantArgs
from depth_anything_fast.ops import affine_invariant as fused_affine_invariant

REDUCTIONS = ("mean", "none")


def affine_invariant_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    segments: Tensor | None = None,
    *,
    num_segments: int | None = None,
    reduction: str = "mean",
    backend: str = "auto",
) -> Tensor:
    """Depth Anything's affine-invariant loss, with optional per-segment statistics.

    For each group g = (image, segment) of valid pixels, prediction and target are normalised as
    (x - t) / s with t the lower median and s = max(mean|x - t|, 1e-6); an image's loss is the
    mean over its valid pixels of |p^ - g^| (each pixel weighted 1/n_valid, whatever its segment).

    Args:
        pred: `(B, H, W)` or `(B, 1, H, W)` float32/float16/bfloat16 (float64 on the reference
            backend) predicted disparity; the only input that gets a gradient.
        target: same shape, float; non-finite values are invalid pixels.
        mask: same shape, bool, True = valid; None = all pixels (with finite target) valid.
        segments: same shape, integer, values in [0, num_segments); pixels with other values are
            ignored. None = one segment per image.
        num_segments: number of segments S. When None and `segments` is given it is inferred as
            `segments.max() + 1`, which synchronises with the device: pass it in training loops.
        reduction: "mean" (over images with at least one valid pixel; 0 with zero gradient when
            there is none) or "none" (`(B,)`, 0 for empty images).
        backend: "auto" | "triton" | "cpu" | "reference" (see `depth_anything_fast.ops`).

    Returns:
        float32 scalar (or `(B,)`), float64 for float64 inputs on the reference backend.
        Half-precision inputs are accumulated in float32; the gradient has pred's dtype.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    pred, target, mask, segments = image_inputs(pred, target, mask, segments)
    if segments is None:
        if num_segments not in (None, 1):
            raise ValueError(f"num_segments={num_segments} given without segments")
        num_segments = 1
    elif num_segments is None:
        num_segments = max(int(segments.max()) + 1, 1) if segments.numel() else 1  # host sync
    elif not isinstance(num_segments, int) or num_segments < 1:
        raise ValueError(f"num_segments must be a positive int, got {num_segments!r}")
    args = AffineInvariantArgs(flat(pred), flat(target), None, flat(mask), flat(segments),
                               num_segments, mean=reduction == "mean")  # fmt: skip
    return fused_affine_invariant(args, backend)


def cutmix_loss(
    pred: Tensor,
    target_a: Tensor,
    target_b: Tensor,
    box: Tensor,
    mask: Tensor | None = None,
    *,
    backend: str = "auto",
) -> Tensor:
    """Affine-invariant loss of a CutMix-ed prediction (Depth Anything's unlabelled loss).

    Pixels inside `box` are compared with `target_a`, the others with `target_b`, each region with
    its own median and scale, every valid pixel weighted equally (= the paper's area-weighted sum).

    Args:
        pred: `(B, H, W)` or `(B, 1, H, W)` float prediction on the mixed image.
        target_a, target_b: same shape, float pseudo-labels of the two source images.
        box: same shape, bool or uint8, True (non-zero) where the pixel came from image a.
        mask: optional bool validity mask of the same shape.
        backend: as for `affine_invariant_loss`.

    Returns:
        float32 scalar, mean over images with a valid pixel.
    """
    box = as_images(box, "box")
    if box.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"box must be a bool or uint8 tensor, got {box.dtype}")
    pred, target_a, mask, _ = image_inputs(pred, target_a, mask, target_name="target_a")
    target_b = as_images(target_b, "target_b")
    check_float(target_b, "target_b")
    for x, name in ((target_b, "target_b"), (box, "box")):
        if x.shape != pred.shape:
            raise ValueError(
                f"{name} shape {tuple(x.shape)} must be the same as pred's {tuple(pred.shape)}"
            )
        if x.device != pred.device:
            raise ValueError(f"{name} is on {x.device} but pred is on {pred.device}")
    # The kernels pick each pixel's target and segment from the box (0: from image a).
    args = AffineInvariantArgs(flat(pred), flat(target_a), flat(target_b), flat(mask), flat(box),
                               2, mean=True)  # fmt: skip
    return fused_affine_invariant(args, backend)


class AffineInvariantLoss(nn.Module):
    """Module form of `affine_invariant_loss` (same arguments, same shapes and dtypes)."""

    def __init__(self, reduction: str = "mean", backend: str = "auto") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.backend = backend

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        mask: Tensor | None = None,
        segments: Tensor | None = None,
        num_segments: int | None = None,
    ) -> Tensor:
        return affine_invariant_loss(
            pred,
            target,
            mask,
            segments,
            num_segments=num_segments,
            reduction=self.reduction,
            backend=self.backend,
        )


class CutMixLoss(nn.Module):
    """Module form of `cutmix_loss`."""

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        self.backend = backend

    def forward(
        self,
        pred: Tensor,
        target_a: Tensor,
        target_b: Tensor,
        box: Tensor,
        mask: Tensor | None = None,
    ) -> Tensor:
        return cutmix_loss(pred, target_a, target_b, box, mask, backend=self.backend)
