"""Zero-shot depth metrics with per-image alignment (REFERENCE.md §4).

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

METRIC_NAMES: tuple[str, ...] = ("abs_rel", "delta1", "delta2", "delta3", "rmse", "sq_rel", "log10")
# lower is better for these; higher for delta*
LOWER_IS_BETTER: frozenset[str] = frozenset({"abs_rel", "rmse", "sq_rel", "log10"})
MIN_VALID_PIXELS = 10
# A prediction whose spread over the valid pixels is below this fraction of its magnitude is
# constant up to float rounding: least squares would divide by ~0.
_CONSTANT_RTOL = 1e-9

Space = Literal["disparity", "depth"]
ArrayLike = torch.Tensor | np.ndarray


def _to_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x)
        # read-only arrays (e.g. np.asarray of a PIL image) are copied: torch needs writable memory
        return torch.from_numpy(x if x.flags.writeable else x.copy())
    if isinstance(x, torch.Tensor):
        return x
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _batch(
    pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(pred float64 (B,H,W), gt float64 (B,H,W), mask bool (B,H,W), batched)."""
    pred_t, gt_t = _to_tensor(pred, "pred"), _to_tensor(gt, "target")
    if pred_t.shape != gt_t.shape:
        raise ValueError(
            f"prediction shape {tuple(pred_t.shape)} != ground-truth shape {tuple(gt_t.shape)}"
        )
    if pred_t.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (B, H, W) arrays, got shape {tuple(pred_t.shape)}")
    if not (pred_t.is_floating_point() and gt_t.is_floating_point()):
        raise TypeError(f"prediction and ground truth must be floating point, got "
                        f"{pred_t.dtype} and {gt_t.dtype}")
    device = gt_t.device
    if mask is None:
        mask_t = torch.ones(gt_t.shape, dtype=torch.bool, device=device)
    else:
        mask_t = _to_tensor(mask, "mask")
        if mask_t.shape != gt_t.shape:
            raise ValueError(f"mask shape {tuple(mask_t.shape)} != ground-truth shape "
                             f"{tuple(gt_t.shape)}")
        mask_t = mask_t.to(device=device, dtype=torch.bool)
    batched = pred_t.ndim == 3
    if not batched:
        pred_t, gt_t, mask_t = pred_t[None], gt_t[None], mask_t[None]
    return pred_t.to(device=device, dtype=torch.float64), gt_t.to(torch.float64), mask_t, batched


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Per-image mean of x over mask: (B,H,W) -> (B,); 0 where n == 0."""
    return torch.where(mask, x, 0.0).sum(dim=(1, 2)) / n.clamp_min(1)


def _least_squares(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image (scale, shift, pred_is_constant), all (B,), from centred float64 sums."""
    n = mask.sum(dim=(1, 2)).to(torch.float64)
    pred_mean = _masked_mean(pred, mask, n)
    target_mean = _masked_mean(target, mask, n)
    pc = torch.where(mask, pred - pred_mean[:, None, None], 0.0)
    tc = torch.where(mask, target - target_mean[:, None, None], 0.0)
    var = (pc * pc).sum(dim=(1, 2))
    cov = (pc * tc).sum(dim=(1, 2))
    magnitude = torch.where(mask, pred.abs(), 0.0).amax(dim=(1, 2))
    constant = var <= (n * (_CONSTANT_RTOL * magnitude) ** 2)
    scale = torch.where(constant, torch.nan, cov / torch.where(constant, 1.0, var))
    shift = target_mean - scale * pred_mean
    return scale, shift, constant


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
    scale, shift, constant = _least_squares(pred_t, target_t, mask_t)
    too_few = mask_t.sum(dim=(1, 2)) < 2
    scale = torch.where(too_few, torch.nan, scale)
    shift = torch.where(too_few | constant, torch.nan, shift)
    if batched:
        return scale, shift
    return float(scale[0]), float(shift[0])


def _valid_and_range(
    gt_depth: torch.Tensor,
    mask: torch.Tensor,
    min_depth: float | None,
    max_depth: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(valid (B,H,W), lo (B,), hi (B,)): valid GT pixels and the per-image depth range."""
    valid = mask & torch.isfinite(gt_depth) & (gt_depth > 0)
    if min_depth is not None:
        valid &= gt_depth >= min_depth
    if max_depth is not None:
        valid &= gt_depth <= max_depth
    if min_depth is not None and max_depth is not None and not 0 < min_depth < max_depth:
        raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
    inf = torch.tensor(math.inf, dtype=torch.float64, device=gt_depth.device)
    gt_lo = torch.where(valid, gt_depth, inf).amin(dim=(1, 2))
    gt_hi = torch.where(valid, gt_depth, -inf).amax(dim=(1, 2))
    lo = torch.full_like(gt_lo, min_depth) if min_depth is not None else gt_lo
    hi = torch.full_like(gt_hi, max_depth) if max_depth is not None else gt_hi
    return valid, lo, hi


def _errors(x_hat: torch.Tensor, x: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image metrics (B,) of positive x_hat against positive x over valid pixels."""
    n = valid.sum(dim=(1, 2)).to(torch.float64)
    # invalid pixels get harmless values so no inf/NaN is ever formed before masking
    x_hat = torch.where(valid, x_hat, 1.0)
    x = torch.where(valid, x, 1.0)
    diff = x_hat - x
    ratio = torch.maximum(x_hat / x, x / x_hat)
    out = {
        "abs_rel": _masked_mean(diff.abs() / x, valid, n),
        "delta1": _masked_mean((ratio < 1.25).double(), valid, n),
        "delta2": _masked_mean((ratio < 1.25**2).double(), valid, n),
        "delta3": _masked_mean((ratio < 1.25**3).double(), valid, n),
        "rmse": _masked_mean(diff * diff, valid, n).sqrt(),
        "sq_rel": _masked_mean(diff * diff / x, valid, n),
        "log10": _masked_mean((torch.log10(x_hat) - torch.log10(x)).abs(), valid, n),
    }
    return out


def _finish(
    metrics: dict[str, torch.Tensor],
    n_valid: torch.Tensor,
    reasons: list[str | None],
    batched: bool,
    extra: dict[str, Any],
) -> dict[str, Any]:
    bad = torch.tensor([r is not None for r in reasons], device=n_valid.device)
    out: dict[str, Any] = {k: torch.where(bad, torch.nan, v) for k, v in metrics.items()}
    out["n_valid"] = n_valid
    if batched:
        out["degenerate"] = reasons
        out.update(extra)
        return out
    single: dict[str, Any] = {k: float(v[0]) for k, v in out.items() if k != "n_valid"}
    single["n_valid"] = int(n_valid[0])
    single["degenerate"] = reasons[0]
    single.update(extra)
    return single


def _common_reasons(
    pred: torch.Tensor, valid: torch.Tensor, n_valid: torch.Tensor
) -> list[str | None]:
    nonfinite = (valid & ~torch.isfinite(pred)).any(dim=(1, 2)).tolist()
    reasons: list[str | None] = []
    for n, bad_pred in zip(n_valid.tolist(), nonfinite):
        if n < MIN_VALID_PIXELS:
            reasons.append(f"{n} valid pixels (< {MIN_VALID_PIXELS})")
        elif bad_pred:
            reasons.append("non-finite prediction on valid pixels")
        else:
            reasons.append(None)
    return reasons


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
    pred, gt, mask_t, batched = _batch(pred_disparity, gt_depth, mask)
    valid, lo, hi = _valid_and_range(gt, mask_t, min_depth, max_depth)
    n_valid = valid.sum(dim=(1, 2))
    reasons = _common_reasons(pred, valid, n_valid)
    fit = valid & torch.isfinite(pred)
    gt_disp = torch.where(valid, 1.0 / torch.where(valid, gt, 1.0), 0.0)
    scale, shift, constant = _least_squares(torch.where(fit, pred, 0.0), gt_disp, fit)
    reasons = [
        r if r is not None or not c else "constant prediction"
        for r, c in zip(reasons, constant.tolist())
    ]
    aligned = scale[:, None, None] * pred + shift[:, None, None]
    disp_lo, disp_hi = (1.0 / hi)[:, None, None], (1.0 / lo)[:, None, None]
    aligned = torch.minimum(torch.maximum(aligned, disp_lo), disp_hi)
    if space == "disparity":
        metrics = _errors(aligned, gt_disp, valid)
    else:
        metrics = _errors(1.0 / aligned, gt, valid)
    extra: dict[str, Any] = {"space": space}
    if batched:
        extra.update(scale=scale, shift=shift)
    else:
        extra.update(scale=float(scale[0]), shift=float(shift[0]))
    return _finish(metrics, n_valid, reasons, batched, extra)


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
    pred, gt, mask_t, batched = _batch(pred_depth, gt_depth, mask)
    valid, lo, hi = _valid_and_range(gt, mask_t, min_depth, max_depth)
    n_valid = valid.sum(dim=(1, 2))
    reasons = _common_reasons(pred, valid, n_valid)
    scale = torch.ones(pred.shape[0], dtype=torch.float64, device=pred.device)
    if alignment == "median":
        for b in range(pred.shape[0]):
            if reasons[b] is not None:
                continue
            pred_median = torch.quantile(pred[b][valid[b]], 0.5)
            if not pred_median > 0:
                reasons[b] = f"median predicted depth {float(pred_median):.3g} <= 0"
                continue
            scale[b] = torch.quantile(gt[b][valid[b]], 0.5) / pred_median
    z_hat = scale[:, None, None] * pred
    z_hat = torch.minimum(torch.maximum(z_hat, lo[:, None, None]), hi[:, None, None])
    metrics = _errors(z_hat, gt, valid)
    extra: dict[str, Any] = {"space": "depth", "scale": scale if batched else float(scale[0])}
    return _finish(metrics, n_valid, reasons, batched, extra)


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
