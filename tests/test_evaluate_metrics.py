"""Metrics of depth_anything_fast.evaluate against independent float64 numpy oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from depth_anything_fast.evaluate.metrics import (
    METRIC_NAMES,
    align_scale_shift,
    mean_metrics,
    metric_depth_metrics,
    relative_depth_metrics,
)

RTOL = 1e-9  # float64 throughout; only summation order differs from the oracle


def oracle_relative(pred, gt, mask, space, min_depth=None, max_depth=None):
    """One image, plain numpy float64: lstsq on [p, 1] vs 1/z, clip, metrics."""
    pred, gt = pred.astype(np.float64), gt.astype(np.float64)
    valid = mask & np.isfinite(gt) & (gt > 0)
    if min_depth is not None:
        valid &= gt >= min_depth
    if max_depth is not None:
        valid &= gt <= max_depth
    p, z = pred[valid], gt[valid]
    d = 1.0 / z
    design = np.stack([p, np.ones_like(p)], axis=1)
    (s, t), *_ = np.linalg.lstsq(design, d, rcond=None)
    lo = z.min() if min_depth is None else min_depth
    hi = z.max() if max_depth is None else max_depth
    d_hat = np.clip(s * p + t, 1.0 / hi, 1.0 / lo)
    x_hat, x = (d_hat, d) if space == "disparity" else (1.0 / d_hat, z)
    return oracle_errors(x_hat, x) | {"n_valid": int(valid.sum()), "scale": s, "shift": t}


def oracle_errors(x_hat, x):
    ratio = np.maximum(x_hat / x, x / x_hat)
    return {
        "abs_rel": np.mean(np.abs(x_hat - x) / x),
        "delta1": np.mean(ratio < 1.25),
        "delta2": np.mean(ratio < 1.25**2),
        "delta3": np.mean(ratio < 1.25**3),
        "rmse": np.sqrt(np.mean((x_hat - x) ** 2)),
        "sq_rel": np.mean((x_hat - x) ** 2 / x),
        "log10": np.mean(np.abs(np.log10(x_hat) - np.log10(x))),
    }


def random_case(b=3, h=17, w=23, dtype=torch.float32):
    gt = torch.rand(b, h, w, dtype=torch.float64) * 9.5 + 0.5  # 0.5..10 m
    gt[torch.rand(b, h, w) < 0.1] = 0.0  # sensor holes
    mask = torch.rand(b, h, w) > 0.2
    # a noisy, affinely distorted disparity: the alignment cannot be exact
    pred = (1.0 / gt.clamp_min(0.5)) * 3.0 - 0.2 + 0.05 * torch.randn(b, h, w, dtype=torch.float64)
    return pred.to(dtype), gt.to(torch.float32), mask


@pytest.mark.parametrize("space", ["disparity", "depth"])
@pytest.mark.parametrize("depth_range", [(None, None), (1.0, 8.0)])
def test_batched_matches_oracle(space, depth_range):
    pred, gt, mask = random_case()
    out = relative_depth_metrics(
        pred, gt, mask, space=space, min_depth=depth_range[0], max_depth=depth_range[1]
    )
    assert out["space"] == space and out["degenerate"] == [None, None, None]
    for b in range(pred.shape[0]):
        ref = oracle_relative(pred[b].numpy(), gt[b].numpy(), mask[b].numpy(), space, *depth_range)
        for name in (*METRIC_NAMES, "scale", "shift"):
            assert out[name][b].item() == pytest.approx(ref[name], rel=RTOL, abs=1e-12), name
        assert int(out["n_valid"][b]) == ref["n_valid"]


def test_single_numpy_image_returns_python_scalars():
    pred, gt, mask = random_case(b=1)
    single = relative_depth_metrics(pred[0].numpy(), gt[0].numpy(), mask[0].numpy())
    batched = relative_depth_metrics(pred, gt, mask)
    assert isinstance(single["abs_rel"], float) and isinstance(single["n_valid"], int)
    assert single["degenerate"] is None
    for name in METRIC_NAMES:
        assert single[name] == pytest.approx(batched[name][0].item(), rel=1e-12)


@pytest.mark.parametrize("space", ["disparity", "depth"])
def test_known_scale_and_shift_is_exact(space):
    gt = torch.rand(4, 20, 30, dtype=torch.float64) * 50 + 1.0
    scale = torch.rand(4, 1, 1, dtype=torch.float64) * 10 + 0.1
    scale[1] *= -1  # a flipped-sign prediction aligns just as well
    shift = torch.randn(4, 1, 1, dtype=torch.float64)
    pred = (1.0 / gt - shift) / scale  # so that scale * pred + shift = 1 / gt exactly
    out = relative_depth_metrics(pred, gt, space=space)
    assert torch.allclose(out["abs_rel"], torch.zeros(4, dtype=torch.float64), atol=1e-10)
    assert torch.equal(out["delta1"], torch.ones(4, dtype=torch.float64))
    assert torch.allclose(out["rmse"], torch.zeros(4, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(out["scale"], scale.flatten(), rtol=1e-8)
    assert torch.allclose(out["shift"], shift.flatten(), rtol=1e-8, atol=1e-10)


def test_delta_and_log10_agree_between_spaces():
    # d = 1/z and identical clipping: the ratio max(x_hat/x, x/x_hat) is the same in both spaces
    pred, gt, mask = random_case()
    disp = relative_depth_metrics(pred, gt, mask, space="disparity")
    depth = relative_depth_metrics(pred, gt, mask, space="depth")
    for name in ("delta1", "delta2", "delta3", "log10"):
        assert torch.allclose(disp[name], depth[name], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(disp["abs_rel"], depth["abs_rel"])


def test_negative_aligned_disparity_is_clipped_to_max_depth():
    # GT disparity rises along the row; pred = GT disparity except far-right pixels that the
    # fit pushes below zero: they must become max_depth in depth space, not negative depth
    z = np.linspace(1.0, 40.0, 60).reshape(3, 20)
    pred = 1.0 / z
    pred[:, -3:] = -2.0
    out = relative_depth_metrics(pred, z, space="depth", max_depth=40.0, min_depth=0.5)
    ref = oracle_relative(pred, z, np.ones_like(z, bool), "depth", 0.5, 40.0)
    for name in METRIC_NAMES:
        assert out[name] == pytest.approx(ref[name], rel=RTOL)
    assert math.isfinite(out["log10"])


def test_hand_computed_metric_depth():
    gt = np.full((4, 5), 2.0)
    gt[0] = 4.0
    pred = gt * 1.1
    out = metric_depth_metrics(pred, gt, alignment="none", min_depth=0.1, max_depth=10.0)
    assert out["abs_rel"] == pytest.approx(0.1)
    assert out["delta1"] == 1.0
    assert out["sq_rel"] == pytest.approx(np.mean(0.01 * gt))  # (0.1 z)^2 / z
    assert out["rmse"] == pytest.approx(0.1 * math.sqrt((5 * 16 + 15 * 4) / 20))
    assert out["log10"] == pytest.approx(math.log10(1.1))
    # median scaling removes any global scale
    scaled = metric_depth_metrics(gt * 3.7, gt, alignment="median")
    assert scaled["abs_rel"] == pytest.approx(0.0, abs=1e-12) and scaled["scale"] == pytest.approx(
        1 / 3.7
    )


def test_hand_computed_disparity_delta():
    # 10 pixels at 1 m and 10 at 2 m (disparity 1 and 0.5), a two-level prediction
    gt = np.array([1.0] * 10 + [2.0] * 10).reshape(4, 5)
    pred = np.array([1.0] * 10 + [0.75] * 10).reshape(4, 5)
    out = relative_depth_metrics(pred, gt)
    # two distinct levels map exactly: s * 1 + t = 1, s * 0.75 + t = 0.5 -> s = 2, t = -1
    assert out["scale"] == pytest.approx(2.0) and out["shift"] == pytest.approx(-1.0)
    assert out["abs_rel"] == pytest.approx(0.0, abs=1e-12) and out["delta1"] == 1.0


def test_degenerate_images_are_reported_and_excluded():
    pred, gt, mask = random_case(b=4, h=8, w=8)
    mask[0] = False
    mask[0, 0, :9] = True  # at most 9 valid pixels
    pred[1] = 0.7  # constant prediction
    pred[2, 3, 3] = float("nan")
    mask[2, 3, 3] = True
    gt[2, 3, 3] = 2.0
    out = relative_depth_metrics(pred, gt, mask)
    reasons = out["degenerate"]
    assert "valid pixels" in reasons[0] and reasons[1] == "constant prediction"
    assert "non-finite" in reasons[2] and reasons[3] is None
    assert torch.isnan(out["abs_rel"][:3]).all() and torch.isfinite(out["abs_rel"][3])
    rows = [
        {
            k: (v[b] if k == "degenerate" else float(v[b]))
            for k, v in out.items()
            if k in (*METRIC_NAMES, "degenerate")
        }
        for b in range(4)
    ]
    summary = mean_metrics(rows)
    assert summary["n_images"] == 4 and summary["n_evaluated"] == 1 and summary["n_degenerate"] == 3
    assert summary["abs_rel"] == pytest.approx(out["abs_rel"][3].item())


def test_metric_depth_degenerate_median():
    gt = np.full((4, 4), 3.0)
    out = metric_depth_metrics(np.full((4, 4), -1.0), gt)
    assert out["degenerate"].startswith("median predicted depth")
    assert math.isnan(out["abs_rel"])


def test_mean_metrics_without_usable_images_is_nan_not_error():
    summary = mean_metrics([{**dict.fromkeys(METRIC_NAMES, float("nan")), "degenerate": "x"}])
    assert summary["n_evaluated"] == 0 and math.isnan(summary["abs_rel"])


def test_align_scale_shift_matches_polyfit():
    pred, gt, mask = random_case(b=2)
    target = torch.where(gt > 0, 1.0 / gt.double().clamp_min(1e-6), 0.0)
    valid = mask & (gt > 0)
    scale, shift = align_scale_shift(pred, target, valid)
    for b in range(2):
        s, t = np.polyfit(pred[b][valid[b]].double().numpy(), target[b][valid[b]].numpy(), 1)
        assert scale[b].item() == pytest.approx(s, rel=1e-9)
        assert shift[b].item() == pytest.approx(t, rel=1e-9, abs=1e-12)
    s1, t1 = align_scale_shift(np.full((3, 3), 2.0), np.ones((3, 3)))
    assert math.isnan(s1) and math.isnan(t1)


@pytest.mark.parametrize("batched", [False, True])
def test_align_scale_shift_ignores_nonfinite_pred_and_target(batched, np_rng):
    """NaN / +-inf in the prediction and in the target (where the other is finite): the fit is
    numpy.polyfit on the pixels where both are finite and the mask is set."""
    b, h, w = 3, 9, 11
    pred = np_rng.normal(size=(b, h, w))
    target = 2.5 * pred - 0.3 + 0.2 * np_rng.normal(size=(b, h, w))
    mask = np_rng.random((b, h, w)) > 0.1
    for bad, where in ((pred, np_rng.random((b, h, w)) < 0.15),
                       (target, np_rng.random((b, h, w)) < 0.15)):
        bad[where] = np_rng.choice([np.nan, np.inf, -np.inf], size=int(where.sum()))
    usable = mask & np.isfinite(pred) & np.isfinite(target)
    assert (~np.isfinite(pred) & mask & np.isfinite(target)).any()  # the cases under test occur
    assert (~np.isfinite(target) & mask & np.isfinite(pred)).any()
    if batched:
        scale, shift = align_scale_shift(pred, target, mask)
        scales, shifts = scale.tolist(), shift.tolist()
    else:
        fits = [align_scale_shift(pred[k], target[k], mask[k]) for k in range(b)]
        scales, shifts = [f[0] for f in fits], [f[1] for f in fits]
    for k in range(b):
        s, t = np.polyfit(pred[k][usable[k]], target[k][usable[k]], 1)
        assert scales[k] == pytest.approx(s, rel=1e-9) and shifts[k] == pytest.approx(t, rel=1e-9)


def test_relative_metrics_ignore_nonfinite_pred_off_the_valid_pixels(np_rng):
    """A non-finite prediction on a pixel the ground truth marks invalid changes nothing; on a
    valid pixel the image is degenerate (NaN never reaches a metric)."""
    pred, gt, mask = (x.numpy() for x in random_case(b=1))
    pred, gt, mask = pred[0].astype(np.float64), gt[0].astype(np.float64), mask[0]
    clean = relative_depth_metrics(pred, gt, mask)
    dirty = pred.copy()
    invalid = ~mask | (gt <= 0)
    dirty[invalid] = np_rng.choice([np.nan, np.inf, -np.inf], size=int(invalid.sum()))
    out = relative_depth_metrics(dirty, gt, mask)
    for name in (*METRIC_NAMES, "scale", "shift"):
        assert out[name] == pytest.approx(clean[name], rel=1e-12), name
    ref = oracle_relative(pred, gt, mask, "disparity")
    assert out["scale"] == pytest.approx(ref["scale"], rel=1e-9)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        relative_depth_metrics(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="space"):
        relative_depth_metrics(np.zeros((4, 4)), np.ones((4, 4)), space="log")
    with pytest.raises(TypeError, match="floating"):
        relative_depth_metrics(np.zeros((4, 4), np.int64), np.ones((4, 4)))
    with pytest.raises(ValueError, match="min_depth"):
        relative_depth_metrics(np.zeros((4, 4)), np.ones((4, 4)), min_depth=5, max_depth=1)
    with pytest.raises(TypeError, match="Tensor"):
        relative_depth_metrics([[1.0]], np.ones((1, 1)))


@pytest.mark.parametrize("n", [11, 12])
def test_median_scaling_matches_numpy_median(n, np_rng):
    gt = np_rng.uniform(1.0, 5.0, (1, n))
    pred = np_rng.uniform(0.5, 2.0, (1, n))
    out = metric_depth_metrics(pred, gt, alignment="median")
    assert out["scale"] == pytest.approx(np.median(gt) / np.median(pred), rel=1e-12)
    lo, hi = gt.min(), gt.max()
    ref = oracle_errors(np.clip(pred * out["scale"], lo, hi).ravel(), gt.ravel())
    for name in METRIC_NAMES:
        assert out[name] == pytest.approx(ref[name], rel=1e-9)


# ----------------------------------------------------------------- edges (from mutation testing)
def test_error_messages_name_the_bad_argument():
    good = np.ones((4, 4))
    cases = [
        (([[1.0]], good), TypeError, "pred must be a torch.Tensor or numpy.ndarray, got list"),
        ((good, [[1.0]]), TypeError, "target must be a torch.Tensor or numpy.ndarray, got list"),
        ((good, good, [[True]]), TypeError, "mask must be a torch.Tensor or numpy.ndarray"),
        ((np.ones((2, 2, 2, 2)), np.ones((2, 2, 2, 2))), ValueError,
         r"expected \(H, W\) or \(B, H, W\) arrays, got shape \(2, 2, 2, 2\)"),
        ((good, good, np.ones((4, 5), bool)), ValueError,
         r"mask shape \(4, 5\) != ground-truth shape \(4, 4\)"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            relative_depth_metrics(*args)
    with pytest.raises(ValueError, match="alignment must be 'median' or 'none', got 'mean'"):
        metric_depth_metrics(good, good, alignment="mean")
    for lo, hi in ((0.0, 5.0), (2.0, 2.0), (3.0, 2.0)):
        for fn in (relative_depth_metrics, metric_depth_metrics):
            with pytest.raises(ValueError, match="need 0 < min_depth < max_depth"):
                fn(good, good, min_depth=lo, max_depth=hi)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_mask_of_another_dtype_is_read_as_bool(dtype):
    pred, gt, mask = (x.numpy() for x in random_case(b=2))
    expected = relative_depth_metrics(pred, gt, mask)
    out = relative_depth_metrics(pred, gt, mask.astype(dtype))
    for name in METRIC_NAMES:
        torch.testing.assert_close(out[name], expected[name], rtol=0, atol=0)
    metric = metric_depth_metrics(np.abs(pred) + 0.1, gt, mask.astype(dtype))
    assert torch.equal(metric["n_valid"], metric_depth_metrics(np.abs(pred) + 0.1, gt, mask)["n_valid"])


def test_output_keys_types_and_space():
    pred, gt, mask = random_case(b=2)
    for fn, kwargs, space in ((relative_depth_metrics, {}, "disparity"),
                              (relative_depth_metrics, {"space": "depth"}, "depth"),
                              (metric_depth_metrics, {}, "depth")):
        p = pred.abs() + 0.1 if fn is metric_depth_metrics else pred
        single = fn(p[0].numpy(), gt[0].numpy(), mask[0].numpy(), **kwargs)
        batched = fn(p, gt, mask, **kwargs)
        assert single["space"] == batched["space"] == space
        assert isinstance(single["n_valid"], int) and single["degenerate"] is None
        assert single["n_valid"] == int((mask[0] & (gt[0] > 0)).sum())
        assert batched["n_valid"].dtype == torch.int64 and batched["n_valid"].shape == (2,)
        assert batched["degenerate"] == [None, None]
        assert batched["abs_rel"].shape == (2,) and batched["scale"].dtype == torch.float64


def test_align_needs_two_pixels_and_a_nonconstant_prediction():
    s, t = align_scale_shift(np.array([[1.0, 3.0]]), np.array([[2.0, 6.0]]))
    assert (s, t) == (pytest.approx(2.0), pytest.approx(0.0, abs=1e-12))  # two pixels: a fit
    s, t = align_scale_shift(np.array([[1.0, 3.0]]), np.array([[2.0, 6.0]]),
                             np.array([[True, False]]))
    assert math.isnan(s) and math.isnan(t)  # one pixel: none
    s, _ = align_scale_shift(np.zeros((3, 4)), np.ones((3, 4)))  # all zero: constant, no 0/0
    assert math.isnan(s)


@pytest.mark.parametrize("magnitude", [1.0, 1000.0])
def test_constant_prediction_threshold_is_relative_to_its_magnitude(magnitude, np_rng):
    """Spread below 1e-9 of the magnitude is float rounding (degenerate); above it, a fit."""
    noise = np_rng.normal(size=(6, 7))
    target = 0.5 + noise
    for spread, constant in ((1e-7, False), (1e-11, True)):
        pred = magnitude + spread * magnitude * noise
        s, t = align_scale_shift(pred, target)
        assert math.isnan(s) == constant, (magnitude, spread)
        if not constant:  # target = s * pred + t exactly, up to float64 rounding of pred
            assert s * spread * magnitude == pytest.approx(1.0, rel=1e-4)


def test_depth_range_bounds_are_inclusive_and_clip_both_ways():
    gt = np.linspace(1.0, 8.0, 24).reshape(4, 6)
    gt[0, 0], gt[0, 1] = 0.5, 20.0  # exactly min_depth, beyond max_depth
    pred = 1.0 / gt
    pred[1, 0], pred[1, 1] = 1e3, -1e3  # aligned far outside the range: clipped
    for fn, p in ((relative_depth_metrics, pred), (metric_depth_metrics, 1.0 / pred)):
        out = fn(p, gt, min_depth=0.5, max_depth=10.0)
        assert out["n_valid"] == 23  # 0.5 counts, 20 does not
        kwargs = {"alignment": "none"} if fn is metric_depth_metrics else {}
        out = fn(p, gt, min_depth=0.5, max_depth=10.0, **kwargs)
        valid = gt <= 10.0
        if fn is relative_depth_metrics:
            ref = oracle_relative(p, gt, np.ones_like(gt, bool), "disparity", 0.5, 10.0)
        else:
            ref = oracle_errors(np.clip(p[valid], 0.5, 10.0), gt[valid])
        for name in METRIC_NAMES:
            assert out[name] == pytest.approx(ref[name], rel=RTOL), (fn.__name__, name)


def test_exactly_min_valid_pixels_is_evaluated():
    from depth_anything_fast.evaluate.metrics import MIN_VALID_PIXELS

    gt = np.full((1, 20), 2.0)
    gt[0, ::2] = 4.0
    pred = 1.0 / gt
    mask = np.zeros((1, 20), bool)
    mask[0, :MIN_VALID_PIXELS] = True
    out = relative_depth_metrics(pred, gt, mask)
    assert out["degenerate"] is None and out["n_valid"] == MIN_VALID_PIXELS
    mask[0, MIN_VALID_PIXELS - 1] = False
    out = relative_depth_metrics(pred, gt, mask)
    assert out["degenerate"] == f"{MIN_VALID_PIXELS - 1} valid pixels (< {MIN_VALID_PIXELS})"
    assert out["n_valid"] == MIN_VALID_PIXELS - 1 and math.isnan(out["scale"])
    assert math.isnan(out["shift"])
    pred[0, 0] = np.inf
    mask[0, MIN_VALID_PIXELS - 1] = True
    out = relative_depth_metrics(pred, gt, mask)
    assert out["degenerate"] == "non-finite prediction on valid pixels"


@pytest.mark.parametrize("n", [7, 8, 9, 10, 12])
def test_median_is_numpys(n, np_rng):
    from depth_anything_fast.evaluate.metrics import _median

    x = np_rng.normal(size=n)
    assert _median(torch.from_numpy(x)) == pytest.approx(float(np.median(x)), rel=1e-15)


def test_metric_depth_median_edges_and_degenerate_rows():
    gt = np.tile(np.linspace(1.0, 4.0, 12), (3, 1)).reshape(3, 3, 4)
    pred = gt * 0.3  # median 0.75 < 1: still positive, scaled by 1 / 0.3
    pred[1] = 0.0  # median 0: degenerate
    out = metric_depth_metrics(pred, gt)
    assert out["degenerate"][0] is None and out["degenerate"][2] is None
    assert out["degenerate"][1] == "median predicted depth 0 <= 0"
    assert out["scale"][0].item() == pytest.approx(1 / 0.3) and math.isnan(out["scale"][1])
    assert out["n_valid"].tolist() == [12, 12, 12]
    assert out["abs_rel"][2].item() == pytest.approx(0.0, abs=1e-12)  # after a degenerate one
    single = metric_depth_metrics(pred[1], gt[1])
    assert math.isnan(single["scale"]) and single["n_valid"] == 12
    keep = gt[0] > 1.2  # 11 of 12 pixels
    masked = metric_depth_metrics(pred[0], gt[0], keep, alignment="none")
    assert masked["n_valid"] == 11
    ref = oracle_errors(pred[0][keep].clip(gt[0][keep].min()), gt[0][keep])
    assert masked["abs_rel"] == pytest.approx(ref["abs_rel"], rel=RTOL)


def test_delta_thresholds_are_strict():
    gt = np.full((1, 12), 4.0)
    # ratios exactly 1.25, 1.25**2, 1.25**3 (all exact in binary): each fails its own threshold
    pred = np.array([[5.0] * 3 + [6.25] * 3 + [7.8125] * 3 + [4.0] * 3])
    out = metric_depth_metrics(pred, gt, alignment="none", min_depth=1.0, max_depth=10.0)
    assert (out["delta1"], out["delta2"], out["delta3"]) == (0.25, 0.5, 0.75)


def test_mean_metrics_averages_several_images():
    rows = [{**dict.fromkeys(METRIC_NAMES, v), "degenerate": None} for v in (1.0, 2.0, 6.0)]
    rows.append({**dict.fromkeys(METRIC_NAMES, math.nan), "degenerate": "constant prediction"})
    summary = mean_metrics(rows)
    assert summary["abs_rel"] == 3.0 and summary["delta1"] == 3.0
    assert (summary["n_images"], summary["n_evaluated"], summary["n_degenerate"]) == (4, 3, 1)


def test_metric_depth_range_excludes_and_clips_with_the_given_bounds():
    """GT under min_depth is invalid; predictions are clipped to the given bounds, not to the
    valid GT's own extremes."""
    gt = np.linspace(1.0, 8.0, 24).reshape(4, 6)
    gt[0, 0] = 0.3  # under min_depth: invalid
    pred = gt.copy()
    pred[1, 0], pred[2, 0] = 0.6, 9.5  # inside [0.5, 10] but outside the GT's [1, 8]
    out = metric_depth_metrics(pred, gt, alignment="none", min_depth=0.5, max_depth=10.0)
    valid = gt >= 0.5
    assert out["n_valid"] == 23
    ref = oracle_errors(np.clip(pred[valid], 0.5, 10.0), gt[valid])
    for name in METRIC_NAMES:
        assert out[name] == pytest.approx(ref[name], rel=RTOL), name
