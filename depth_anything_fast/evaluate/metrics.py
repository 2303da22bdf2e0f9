"""Zero-shot depth metrics with per-image alignment (the protocol of the Depth Anything paper,
arXiv 2401.10891, Table 2, and of MiDaS, arXiv 1907.01341).

Relative models predict *disparity* up to an unknown scale and shift. Per image, the prediction
`p` is aligned to the ground-truth disparity `d = 1/z` by least squares over the valid pixels
(float64): `(s, t) = argmin sum_i (s*p_i + t - d_i)^2`, `d_hat = s*p + t`. The aligned disparity
is clipped to the evaluation depth range, `d_hat in [1/max_depth, 1/min_depth]` (so it stays
positive), and then compared in one of two conventions, named in the output as `space`:

* ``"disparity"`` (the convention of the paper's Table 2): errors between `d_hat` and `d`,
  e.g. ``abs_rel = mean |d_hat - d| / d``, ``rmse = sqrt(mean (d_hat - d)^2)`` in 1/metres.
* ``"depth"`` (MiDaS-style): invert, `z_hat = 1 / d_hat` (clipped as above, so
  `z_hat in [min_depth, max_depth]`), and compare `z_hat` with `z`:
  ``abs_rel = mean |z_hat - z| / z``, ``rmse`` in metres.

In both spaces, with `x_hat`, `x` the compared quantities: ``sq_rel = mean (x_hat - x)^2 / x``,
``log10 = mean |log10 x_hat - log10 x|``, ``delta_k = mean[max(x_hat/x, x/x_hat) < 1.25**k]``.
Because `d = 1/z` and the clipping is the same, delta1/2/3 and log10 are identical in the two
spaces; abs_rel, sq_rel and rmse differ.

When `min_depth` / `max_depth` are None, the per-image range of the valid ground truth is used.
Ground-truth pixels outside [min_depth, max_depth], non-finite or <= 0 are invalid.

Metric-depth models use `metric_depth_metrics`: optional median scaling
(`z_hat *= median(z) / median(z_pred)`), clipping to the range, depth-space metrics.

An image is *degenerate* when it has fewer than `MIN_VALID_PIXELS` valid pixels, a non-finite
prediction on a valid pixel, or (least-squares alignment) a constant prediction over its valid
pixels. Its metrics are NaN and its `degenerate` entry says why; `mean_metrics` excludes it and
counts it, so NaN never reaches an average.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch

from depth_anything_fast.transforms import as_tensor

METRIC_NAMES: tuple[str, ...] = ("abs_rel", "delta1", "delta2", "delta3", "rmse", "sq_rel", "log10")
MIN_VALID_PIXELS = 10
# A prediction whose spread over the valid pixels is below this fraction of its magnitude is
# constant up to float rounding: least squares would divide by ~0.
_CONSTANT_RTOL = 1e-9

Space = Literal["disparity", "depth"]
ArrayLike = torch.Tensor | np.ndarray


def _to_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return as_tensor(np.ascontiguousarray(x))  # contiguous: negative strides are copied
    if isinstance(x, torch.Tensor):
        return x
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _batch(
    pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(pred (B,H,W), gt (B,H,W), mask bool (B,H,W), batched), all on gt's device."""
    pred_t, gt_t = _to_tensor(pred, "pred"), _to_tensor(gt, "target")
    if pred_t.shape != gt_t.shape:
        raise ValueError(
            f"prediction shape {tuple(pred_t.shape)} != ground-truth shape {tuple(gt_t.shape)}"
        )
    if pred_t.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (B, H, W) arrays, got shape {tuple(pred_t.shape)}")
    if not (pred_t.is_floating_point() and gt_t.is_floating_point()):
        raise TypeError(
            f"prediction and ground truth must be floating point, got "
            f"{pred_t.dtype} and {gt_t.dtype}"
        )
    device = gt_t.device
    if mask is None:
        mask_t = torch.ones(gt_t.shape, dtype=torch.bool, device=device)
    else:
        mask_t = _to_tensor(mask, "mask")
        if mask_t.shape != gt_t.shape:
            raise ValueError(
                f"mask shape {tuple(mask_t.shape)} != ground-truth shape {tuple(gt_t.shape)}"
            )
        mask_t = mask_t.to(device=device, dtype=torch.bool)
    batched = pred_t.ndim == 3
    if not batched:
        pred_t, gt_t, mask_t = pred_t[None], gt_t[None], mask_t[None]
    return pred_t.to(device), gt_t, mask_t, batched


def _fit(p: torch.Tensor, d: torch.Tensor) -> tuple[float, float] | None:
    """Least-squares (scale, shift) of 1-D float64 p to d from centred sums; None if p is
    constant (up to float rounding) or has fewer than 2 values."""
    if p.numel() < 2:
        return None
    p_mean, d_mean = p.mean(), d.mean()
    pc = p - p_mean
    var = float(pc.dot(pc))
    if var <= p.numel() * (_CONSTANT_RTOL * float(p.abs().max())) ** 2:
        return None
    scale = float(pc.dot(d - d_mean)) / var
    return scale, float(d_mean) - scale * float(p_mean)


def align_scale_shift(
    pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None
) -> tuple[Any, Any]:
    """Least-squares scale and shift of `pred` to `target` per image, in float64.

    `(s, t) = argmin sum_{i in mask} (s * pred_i + t - target_i)^2`, computed from centred sums
    (no normal-equation cancellation). Pixels where mask is False or target/pred is non-finite
    are ignored.

    Args:
        pred: (H, W) or (B, H, W) float tensor/array (e.g. predicted disparity).
        target: same shape, float (e.g. ground-truth disparity 1/z).
        mask: same shape, bool, or None (all pixels).
    Returns:
        (scale, shift): python floats for a single image, float64 tensors (B,) for a batch.
        NaN for an image with fewer than 2 usable pixels or a constant prediction.
    """
    pred_t, target_t, mask_t, batched = _batch(pred, target, mask)
    mask_t = mask_t & torch.isfinite(target_t) & torch.isfinite(pred_t)
    fits = [
        _fit(pred_t[b][mask_t[b]].double(), target_t[b][mask_t[b]].double())
        for b in range(pred_t.shape[0])
    ]
    scale = [math.nan if f is None else f[0] for f in fits]
    shift = [math.nan if f is None else f[1] for f in fits]
    if batched:
        return torch.tensor(scale, dtype=torch.float64), torch.tensor(shift, dtype=torch.float64)
    return scale[0], shift[0]


def _valid_pixels(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor,
    min_depth: float | None,
    max_depth: float | None,
) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    """Float64 1-D (pred, gt depth) over one image's valid GT pixels, and why it is
    degenerate (or None)."""
    valid = mask & torch.isfinite(gt) & (gt > 0)
    if min_depth is not None:
        valid &= gt >= min_depth
    if max_depth is not None:
        valid &= gt <= max_depth
    p, z = pred[valid].double(), gt[valid].double()
    if z.numel() < MIN_VALID_PIXELS:
        return p, z, f"{z.numel()} valid pixels (< {MIN_VALID_PIXELS})"
    if not bool(torch.isfinite(p).all()):
        return p, z, "non-finite prediction on valid pixels"
    return p, z, None


def _median(x: torch.Tensor) -> float:
    """Median of a 1-D tensor, averaging the two middle values for even sizes (as numpy);
    `torch.quantile` is limited to 2**24 elements, ETH3D images have 24M pixels."""
    n = x.numel()
    lower = float(torch.kthvalue(x, (n + 1) // 2).values)
    return lower if n % 2 else (lower + float(torch.kthvalue(x, n // 2 + 1).values)) / 2


def _depth_range(
    z: torch.Tensor, min_depth: float | None, max_depth: float | None
) -> tuple[float, float]:
    """[lo, hi] clipping range: the given bounds, else the valid GT's own extremes."""
    lo = float(z.min()) if min_depth is None else min_depth
    hi = float(z.max()) if max_depth is None else max_depth
    return lo, hi


def _errors(x_hat: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """Metrics of positive 1-D x_hat against positive 1-D x (float64)."""
    diff = x_hat - x
    sq = diff * diff
    ratio = torch.maximum(x_hat / x, x / x_hat)
    return {
        "abs_rel": float((diff.abs() / x).mean()),
        "delta1": float((ratio < 1.25).double().mean()),
        "delta2": float((ratio < 1.25**2).double().mean()),
        "delta3": float((ratio < 1.25**3).double().mean()),
        "rmse": math.sqrt(float(sq.mean())),
        "sq_rel": float((sq / x).mean()),
        "log10": float((torch.log10(x_hat) - torch.log10(x)).abs().mean()),
    }


def _collect(rows: list[dict[str, Any]], batched: bool, space: str) -> dict[str, Any]:
    """Per-image dicts -> one dict (floats for a single image, (B,) tensors for a batch)."""
    if not batched:
        return rows[0] | {"space": space}
    out: dict[str, Any] = {
        k: torch.tensor([r[k] for r in rows], dtype=torch.float64)
        for k in (*METRIC_NAMES, "scale", "shift")
        if k in rows[0]
    }
    out["n_valid"] = torch.tensor([r["n_valid"] for r in rows], dtype=torch.int64)
    out["degenerate"] = [r["degenerate"] for r in rows]
    out["space"] = space
    return out


def _degenerate_row(n_valid: int, reason: str, **extra: float) -> dict[str, Any]:
    return {
        **dict.fromkeys(METRIC_NAMES, math.nan),
        **extra,
        "n_valid": n_valid,
        "degenerate": reason,
    }


def relative_depth_metrics(
    pred_disparity: ArrayLike,
    gt_depth: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    space: Space = "disparity",
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> dict[str, Any]:
    """Metrics of an affine-invariant disparity prediction (see the module docstring).

    Args:
        pred_disparity: (H, W) or (B, H, W) float tensor/array, relative disparity (any scale
            and shift; larger = closer).
        gt_depth: same shape, float, metres (or any consistent unit); <= 0 / non-finite invalid.
        mask: same shape, bool, extra validity (e.g. an evaluation crop), or None.
        space: "disparity" (paper Table 2) or "depth" (align in disparity, invert, compare depth).
        min_depth, max_depth: evaluation range; GT outside it is invalid and the aligned
            prediction is clipped to it. None: the per-image range of the valid GT.
    Returns:
        dict with `abs_rel, delta1, delta2, delta3, rmse, sq_rel, log10` (python floats for a
        single image, float64 tensors (B,) for a batch; NaN for degenerate images), `n_valid`
        (int / int64 (B,)), `degenerate` (None or the reason / list of those), `scale`,
        `shift` (the alignment, same types) and `space`.
    """
    if space not in ("disparity", "depth"):
        raise ValueError(f"space must be 'disparity' or 'depth', got {space!r}")
    _check_range(min_depth, max_depth)
    pred, gt, mask_t, batched = _batch(pred_disparity, gt_depth, mask)
    rows = []
    for b in range(pred.shape[0]):
        p, z, reason = _valid_pixels(pred[b], gt[b], mask_t[b], min_depth, max_depth)
        d = 1.0 / z
        fit = _fit(p, d) if reason is None else None
        if fit is None:
            reason = reason or "constant prediction"
            rows.append(_degenerate_row(z.numel(), reason, scale=math.nan, shift=math.nan))
            continue
        scale, shift = fit
        lo, hi = _depth_range(z, min_depth, max_depth)
        # clipping to the depth range keeps the aligned disparity positive
        d_hat = (scale * p + shift).clamp(1.0 / hi, 1.0 / lo)
        metrics = _errors(d_hat, d) if space == "disparity" else _errors(1.0 / d_hat, z)
        rows.append(
            metrics | {"scale": scale, "shift": shift, "n_valid": z.numel(), "degenerate": None}
        )
    return _collect(rows, batched, space)


def _check_range(min_depth: float | None, max_depth: float | None) -> None:
    if min_depth is not None and max_depth is not None and not 0 < min_depth < max_depth:
        raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")


def metric_depth_metrics(
    pred_depth: ArrayLike,
    gt_depth: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    alignment: Literal["median", "none"] = "median",
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> dict[str, Any]:
    """Depth-space metrics of a metric-depth prediction, optionally median-scaled.

    `alignment="median"`: `z_hat = z_pred * median(z) / median(z_pred)` over the valid pixels
    (scale only); `"none"`: `z_hat = z_pred`. Then `z_hat` is clipped to [min_depth, max_depth]
    (per-image GT range when None) and compared with `z` in depth space.

    Args and returns as `relative_depth_metrics` (inputs (H, W) or (B, H, W); `scale` is the
    median ratio, 1.0 for "none"; `space` is "depth"). A non-positive median prediction makes
    the image degenerate.
    """
    if alignment not in ("median", "none"):
        raise ValueError(f"alignment must be 'median' or 'none', got {alignment!r}")
    _check_range(min_depth, max_depth)
    pred, gt, mask_t, batched = _batch(pred_depth, gt_depth, mask)
    rows = []
    for b in range(pred.shape[0]):
        p, z, reason = _valid_pixels(pred[b], gt[b], mask_t[b], min_depth, max_depth)
        scale = 1.0
        if reason is None and alignment == "median":
            pred_median = _median(p)
            if pred_median > 0:
                scale = _median(z) / pred_median
            else:
                reason = f"median predicted depth {pred_median:.3g} <= 0"
        if reason is not None:
            rows.append(_degenerate_row(z.numel(), reason, scale=math.nan))
            continue
        lo, hi = _depth_range(z, min_depth, max_depth)
        metrics = _errors((scale * p).clamp(lo, hi), z)
        rows.append(metrics | {"scale": scale, "n_valid": z.numel(), "degenerate": None})
    return _collect(rows, batched, "depth")


def mean_metrics(per_image: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean of each metric over the non-degenerate images of single-image metric dicts.

    Returns `{name: mean (float, NaN only if no image was usable)} | {"n_images": all,
    "n_evaluated": used, "n_degenerate": excluded}`.
    """
    rows = list(per_image)
    good = [r for r in rows if r.get("degenerate") is None]
    out: dict[str, Any] = {}
    for name in METRIC_NAMES:
        values = [float(r[name]) for r in good]
        out[name] = math.fsum(values) / len(values) if values else math.nan
    out.update(n_images=len(rows), n_evaluated=len(good), n_degenerate=len(rows) - len(good))
    return out
