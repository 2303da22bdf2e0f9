"""One training step's loss for each stage: teacher, student, finetune-metric.

Each function takes the model being trained and one batch (dicts of tensors from the data
loaders, already on the device) and returns ``(total_loss, parts)`` where ``parts`` holds the
detached terms for logging. All loss arithmetic comes from ``depth_anything_fast.losses``.

The trainer calls them under its forward context (bf16 autocast where the compute dtype is bf16,
`train.distributed.autocast_context`): the model and the frozen encoder run in it, the losses
always in fp32 (predictions and tokens cast to float32, autocast off around the loss calls), so
a reduced-precision forward never reaches the loss arithmetic.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from .config import LossConfig

Batch = dict[str, Any]


def _fp32_losses(pred: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on `pred`'s device: what runs inside computes in its inputs' dtype
    (float32 here) whatever context the caller entered."""
    return torch.autocast(pred.device.type, enabled=False)


def teacher_loss(model: nn.Module, batch: Batch, cfg: LossConfig) -> tuple[Tensor, dict]:
    """Affine-invariant loss on labelled images, plus ``cfg.gradient_weight`` times the MiDaS
    scale-shift-invariant loss (least-squares aligned MSE + multi-scale gradient matching).

    batch: image (B,3,c,c) float32, disparity (B,c,c) float32 in [0,1], mask (B,c,c) bool.
    """
    from depth_anything_fast.losses import affine_invariant_loss, scale_shift_invariant_loss

    pred = model(batch["image"]).float()
    with _fp32_losses(pred):
        loss = affine_invariant_loss(pred, batch["disparity"], batch["mask"],
                                     backend=cfg.implementation)
        parts = {"affine": loss.detach()}
        if cfg.gradient_weight > 0:
            midas = scale_shift_invariant_loss(
                pred, batch["disparity"], batch["mask"], scales=cfg.gradient_scales
            )
            parts["midas"] = midas.detach()
            loss = loss + cfg.gradient_weight * midas
    return loss, parts


def student_loss(
    model: nn.Module,
    labelled: Batch,
    pseudo: Batch,
    frozen_encoder: nn.Module,
    cfg: LossConfig,
    generator: torch.Generator,
) -> tuple[Tensor, dict]:
    """Mean of the labelled affine-invariant loss, the CutMix-segmented loss on the strongly
    perturbed pseudo-labelled images, and feature alignment to the frozen encoder.

    labelled: image (B,3,c,c), disparity (B,c,c), mask (B,c,c).
    pseudo: image (U,3,c,c) clean view, strong (U,3,c,c) colour-perturbed view, disparity
    (U,c,c) teacher disparity of the clean view, mask (U,c,c). CutMix (probability
    ``cfg.cutmix_p``, boxes from ``cfg.cutmix_box``) mixes the strong images (the clean ones
    with ``cfg.strong_perturbation`` off); the pseudo-labels and masks follow the same boxes.
    One forward pass over the B + U images keeps FSDP2 at one all-gather per block; the
    alignment covers all of them. With ``cfg.feature_alignment`` off the total is the mean of
    the two depth terms and the frozen encoder is not run.
    """
    from depth_anything_fast.data.cutmix import cutmix
    from depth_anything_fast.losses import (
        affine_invariant_loss,
        cutmix_loss,
        feature_alignment_loss,
    )

    n_labelled = labelled["image"].shape[0]
    view = pseudo["strong"] if cfg.strong_perturbation else pseudo["image"]
    mixed, box, partner = cutmix(view, p=cfg.cutmix_p, generator=generator, box=cfg.cutmix_box)
    box, partner = box.to(mixed.device), partner.to(mixed.device)
    target_a, target_b = pseudo["disparity"], pseudo["disparity"][partner]
    mask = torch.where(box, pseudo["mask"], pseudo["mask"][partner])

    inputs = torch.cat([labelled["image"], mixed])
    pred, tokens = model(inputs, return_features=True)
    pred = pred.float()
    frozen_tokens = None
    if cfg.feature_alignment:
        frozen_dtype = next(frozen_encoder.parameters()).dtype
        with torch.no_grad():  # in the caller's context, as the student's forward
            frozen_tokens = frozen_encoder.patch_tokens(inputs.to(frozen_dtype))

    with _fp32_losses(pred):
        loss_l = affine_invariant_loss(
            pred[:n_labelled], labelled["disparity"], labelled["mask"], backend=cfg.implementation
        )
        loss_u = cutmix_loss(pred[n_labelled:], target_a, target_b, box, mask,
                             backend=cfg.implementation)
        parts = {"labelled": loss_l.detach(), "unlabelled": loss_u.detach()}
        if frozen_tokens is None:
            return (loss_l + loss_u) / 2, parts
        loss_f = feature_alignment_loss(
            tokens.flatten(0, 1).float(),
            frozen_tokens.flatten(0, 1).float(),
            cfg.alpha,
            backend=cfg.implementation,
        )
        parts["feature"] = loss_f.detach()
        return (loss_l + loss_u + loss_f) / 3, parts


def metric_loss(model: nn.Module, batch: Batch, cfg: LossConfig) -> tuple[Tensor, dict]:
    """SILog loss of the metric head (sigmoid * max_depth) against metric depth in metres.

    batch: image (B,3,c,c), depth (B,c,c) float32 metres, mask (B,c,c) bool.
    """
    from depth_anything_fast.losses import silog_loss

    pred = model(batch["image"]).float()
    with _fp32_losses(pred):
        loss = silog_loss(pred, batch["depth"], batch["mask"], lambd=cfg.silog_lambda)
    return loss, {"silog": loss.detach()}
