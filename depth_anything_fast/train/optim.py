"""AdamW with encoder / decoder learning rates, warm-up + poly decay, gradient clipping.

Two presets (``optim.preset``, see ``config.OPTIM_PRESETS``): "default" (this project: no weight
decay on norms, biases and learned tokens, clipping at 1.0, warm-up as configured) and "paper"
(the authors' V2 code: no warm-up, weight decay on every parameter, no clipping).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import OptimConfig

# Devices on which torch ships a fused AdamW kernel.
_FUSED_DEVICES = ("cuda", "cpu", "xpu", "mps")


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Split trainable parameters into encoder / decoder groups, each with and without weight
    decay (1-D tensors — norms, biases — and the learned position / class / register tokens get
    none, as is usual for ViTs, unless ``cfg.decay_all_params``: the "paper" preset decays every
    parameter). The encoder is every parameter under ``encoder.``."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_encoder = name.startswith("encoder.") or ".encoder." in name
        no_decay = not cfg.decay_all_params and (param.ndim <= 1 or any(
            token in name for token in ("pos_embed", "cls_token", "register_tokens", "mask_token")
        ))
        groups.setdefault((is_encoder, no_decay), []).append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    out = []
    for (is_encoder, no_decay), params in sorted(groups.items()):
        lr = cfg.lr if is_encoder else cfg.lr * cfg.decoder_lr_mult
        out.append({
            "params": params,
            "lr": lr,
            "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            "name": f"{'encoder' if is_encoder else 'decoder'}{'_no_decay' if no_decay else ''}",
        })
    return out


def _fused_supported(params: list[torch.Tensor]) -> bool:
    return all(p.device.type in _FUSED_DEVICES and p.dtype.is_floating_point for p in params)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; fused when ``cfg.fused`` is None and the device allows,
    else the foreach implementation."""
    groups = param_groups(model, cfg)
    params = [p for g in groups for p in g["params"]]
    fused = _fused_supported(params) if cfg.fused is None else cfg.fused
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.betas[0], cfg.betas[1]),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=fused or None,
        foreach=None if fused else True,
    )


def lr_factor(step: int, total_steps: int, warmup_steps: int, poly_power: float) -> float:
    """Multiplier of the base LR at optimiser step ``step`` (0-based): linear warm-up over
    ``warmup_steps`` then ``(1 - progress) ** poly_power`` down to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return (1.0 - progress) ** poly_power


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps, cfg.warmup_steps, cfg.poly_power),
    )


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm (DTensor-aware under FSDP2: the norm is reduced over all
    shards). Returns the norm before clipping as a float32 tensor (no host sync)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return torch.zeros(())
    if max_norm <= 0:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
        norm = norm.full_tensor()
    return norm.float()
