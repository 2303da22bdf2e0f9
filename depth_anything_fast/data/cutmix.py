"""CutMix for unlabelled batches, in torch on the tensors' device (no host synchronisation).

Two box samplers:

- "unimatch" (default): the authors' sampler, UniMatch's `obtain_cutmix_box`, which Depth
  Anything's code builds on. With probability p, a box of area fraction U(0.02, 0.4) and aspect
  ratio r ~ U(0.3, 1/0.3) (width sqrt(area / r), height sqrt(area * r), truncated to pixels),
  its top-left corner uniform over the image; (r, corner) are drawn again until the box lies
  fully inside the image. We draw `_CANDIDATES` tries at once and take the first that fits,
  which is the same distribution unless none fits (probability < 1e-11); then the last try is
  shifted inside.
- "yun": Yun et al. 2019: lam ~ U(0, 1), a rectangle of sides (H, W) * sqrt(1 - lam) centred
  uniformly at random and clipped to the image (larger boxes on average).

The box is filled with the partner image; `box` marks the pixels that still come from the
image itself, matching `cutmix_loss(pred, target_a, target_b, box)` (target_b =
targets[partner]).
"""

from __future__ import annotations

import torch

BOX_SAMPLERS = ("unimatch", "yun")
# UniMatch obtain_cutmix_box defaults
AREA_RANGE = (0.02, 0.4)
RATIO_RANGE = (0.3, 1 / 0.3)
_CANDIDATES = 256


def _unimatch_boxes(
    b: int, h: int, w: int, generator: torch.Generator | None, gen_device: torch.device | str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y0, y1, x0, x1) int64 (b,) of boxes sampled as `obtain_cutmix_box`."""
    area = torch.empty(b, 1, device=gen_device).uniform_(*AREA_RANGE, generator=generator)
    ratio = torch.empty(b, _CANDIDATES, device=gen_device).uniform_(*RATIO_RANGE,
                                                                     generator=generator)
    size = area * (h * w)
    # float64 so that int() truncation matches numpy's on the same draw
    cut_w = torch.sqrt(size.double() / ratio.double()).long()
    cut_h = torch.sqrt(size.double() * ratio.double()).long()
    x = torch.randint(0, w, (b, _CANDIDATES), generator=generator, device=gen_device)
    y = torch.randint(0, h, (b, _CANDIDATES), generator=generator, device=gen_device)
    fits = (x + cut_w <= w) & (y + cut_h <= h)
    # first fitting candidate; the last one when none fits (then shifted inside below)
    first = torch.where(fits.any(dim=1), fits.long().argmax(dim=1),
                        torch.full((b,), _CANDIDATES - 1, device=gen_device))
    pick = first.view(b, 1)
    cut_w, cut_h = cut_w.gather(1, pick)[:, 0].clamp(max=w), cut_h.gather(1, pick)[:, 0].clamp(max=h)
    x0 = torch.minimum(x.gather(1, pick)[:, 0], w - cut_w)
    y0 = torch.minimum(y.gather(1, pick)[:, 0], h - cut_h)
    return y0, y0 + cut_h, x0, x0 + cut_w


def _yun_boxes(
    b: int, h: int, w: int, generator: torch.Generator | None, gen_device: torch.device | str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y0, y1, x0, x1) int64 (b,) of Yun et al.'s clipped boxes."""
    rand = torch.rand(b, 3, generator=generator, device=gen_device)
    cut = torch.sqrt(1.0 - rand[:, 0])
    half_h = torch.floor(h * cut).long() // 2
    half_w = torch.floor(w * cut).long() // 2
    cy = torch.floor(rand[:, 1] * h).long()
    cx = torch.floor(rand[:, 2] * w).long()
    return ((cy - half_h).clamp(0, h), (cy + half_h).clamp(0, h),
            (cx - half_w).clamp(0, w), (cx + half_w).clamp(0, w))


def cutmix(
    images: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None,
    box: str = "unimatch",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each image, with probability `p`, with another image of the batch.

    images: (B, C, H, W) any float dtype. `box`: "unimatch" (default) or "yun" (see the module
    docstring). Returns `mixed` (B, C, H, W) same dtype/device, `box` (B, H, W) bool (True =
    pixel from images[i]; all True for rows not mixed) and `partner` (B,) int64 (the image
    pasted into row i; i itself for rows not mixed). Partners differ from the row whenever
    B > 1 (a random non-zero cyclic shift of the batch).
    """
    if images.dim() != 4:
        raise ValueError(f"cutmix expects (B, C, H, W) images, got shape {tuple(images.shape)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"cutmix probability p must be in [0, 1], got {p}")
    if box not in BOX_SAMPLERS:
        raise ValueError(f"cutmix box sampler must be one of {BOX_SAMPLERS}, got {box!r}")
    b, _, h, w = images.shape
    device = images.device
    gen_device = generator.device if generator is not None else device
    apply = (torch.rand(b, generator=generator, device=gen_device) < p).to(device)
    if b > 1:
        shift = torch.randint(1, b, (1,), generator=generator, device=gen_device).to(device)
    else:
        shift = torch.zeros(1, dtype=torch.long, device=device)
    rows = torch.arange(b, device=device)
    partner = torch.where(apply, (rows + shift) % b, rows) if b > 1 else rows.clone()

    sampler = _unimatch_boxes if box == "unimatch" else _yun_boxes
    y0, y1, x0, x1 = (t.to(device) for t in sampler(b, h, w, generator, gen_device))
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    inside = (
        (ys >= y0.view(b, 1, 1)) & (ys < y1.view(b, 1, 1))
        & (xs >= x0.view(b, 1, 1)) & (xs < x1.view(b, 1, 1))
    )
    keep = ~(inside & (apply & (partner != rows)).view(b, 1, 1))
    mixed = torch.where(keep.unsqueeze(1), images, images[partner])
    return mixed, keep, partner

