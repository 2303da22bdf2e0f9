"""CutMix for unlabelled batches, in torch on the tensors' device (no host synchronisation).

Box sampling is the standard CutMix one (Yun et al. 2019): lam ~ U(0, 1), a rectangle of sides
(H, W) * sqrt(1 - lam) centred uniformly at random and clipped to the image. The rectangle is
filled with the partner image; `box` marks the pixels that still come from the image itself,
matching `cutmix_loss(pred, target_a, target_b, box)` (target_b = targets[partner]).
"""

from __future__ import annotations

import torch


def cutmix(
    images: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each image, with probability `p`, with another image of the batch.

    images: (B, C, H, W) any float dtype. Returns `mixed` (B, C, H, W) same dtype/device,
    `box` (B, H, W) bool (True = pixel from images[i]; all True for rows not mixed) and
    `partner` (B,) int64 (the image pasted into row i; i itself for rows not mixed). Partners
    differ from the row whenever B > 1 (a random non-zero cyclic shift of the batch).
    """
    if images.dim() != 4:
        raise ValueError(f"cutmix expects (B, C, H, W) images, got shape {tuple(images.shape)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"cutmix probability p must be in [0, 1], got {p}")
    b, _, h, w = images.shape
    device = images.device
    gen_device = generator.device if generator is not None else device
    rand = torch.rand(b, 4, generator=generator, device=gen_device).to(device)
    apply = rand[:, 0] < p
    if b > 1:
        shift = torch.randint(1, b, (1,), generator=generator, device=gen_device).to(device)
    else:
        shift = torch.zeros(1, dtype=torch.long, device=device)
    rows = torch.arange(b, device=device)
    partner = torch.where(apply, (rows + shift) % b, rows) if b > 1 else rows.clone()

    lam = rand[:, 1]
    cut = torch.sqrt(1.0 - lam)
    half_h = torch.floor(h * cut).long() // 2
    half_w = torch.floor(w * cut).long() // 2
    cy = torch.floor(rand[:, 2] * h).long()
    cx = torch.floor(rand[:, 3] * w).long()
    y0, y1 = (cy - half_h).clamp(0, h), (cy + half_h).clamp(0, h)
    x0, x1 = (cx - half_w).clamp(0, w), (cx + half_w).clamp(0, w)
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    inside = (
        (ys >= y0.view(b, 1, 1)) & (ys < y1.view(b, 1, 1))
        & (xs >= x0.view(b, 1, 1)) & (xs < x1.view(b, 1, 1))
    )
    box = ~(inside & (apply & (partner != rows)).view(b, 1, 1))
    mixed = torch.where(box.unsqueeze(1), images, images[partner])
    return mixed, box, partner
