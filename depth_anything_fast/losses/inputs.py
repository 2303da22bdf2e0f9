"""Input checks shared by the public losses: shapes, dtypes, devices, with errors naming them."""

from __future__ import annotations

import torch
from torch import Tensor


def as_images(x: Tensor, name: str) -> Tensor:
    """`(B, H, W)` or `(B, 1, H, W)` -> `(B, H, W)`; anything else raises ValueError."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape (B, H, W) or (B, 1, H, W), got {tuple(x.shape)}")
    return x


def check_float(x: Tensor, name: str) -> None:
    """Raise TypeError naming `name` unless `x` (any shape) has a floating-point dtype."""
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def image_inputs(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    segments: Tensor | None = None,
    *,
    target_name: str = "target",
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Validate per-pixel inputs and return them as `(B, H, W)` tensors.

    pred/target floating point; mask bool; segments integer; all of one shape and device.
    """
    pred = as_images(pred, "pred")
    target = as_images(target, target_name)
    check_float(pred, "pred")
    check_float(target, target_name)
    others = [(target, target_name)]
    if mask is not None:
        mask = as_images(mask, "mask")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
        others.append((mask, "mask"))
    if segments is not None:
        segments = as_images(segments, "segments")
        if segments.is_floating_point() or segments.is_complex() or segments.dtype == torch.bool:
            raise TypeError(f"segments must be an integer tensor, got {segments.dtype}")
        others.append((segments, "segments"))
    for x, name in others:
        if x.shape != pred.shape:
            raise ValueError(
                f"{name} shape {tuple(x.shape)} does not match pred shape {tuple(pred.shape)}"
            )
        if x.device != pred.device:
            raise ValueError(f"{name} is on {x.device} but pred is on {pred.device}")
    return pred, target, mask, segments


def flat(x: Tensor | None) -> Tensor | None:
    """`(B, H, W)` -> `(B, H*W)` (a view where possible; B = 0 gives `(0, H*W)`)."""
    return None if x is None else x.flatten(1)
