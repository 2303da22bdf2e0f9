"""The C++ backend (depth_anything_fast._C through the custom ops) against float64 oracles.

Oracle: `depth_anything_fast.losses.reference` run in float64 (itself checked against a naive
per-image loop in test_losses.py). Gradient comparisons are tie-aware: when several valid pixels
of a group hold the median value, the median's extra gradient term may land on any of them
(torch.nanmedian picks one arbitrarily), so those pixels are compared through their sum.
"""

from __future__ import annotations

import pytest
import torch

from depth_anything_fast.kernels import stats_layout as layout
from depth_anything_fast.losses import affine_invariant_loss, cutmix_loss, feature_alignment_loss
from depth_anything_fast.losses.reference import (
    affine_invariant_loss_reference,
    feature_alignment_loss_reference,
    masked_lower_median,
    valid_pixels,
)
from depth_anything_fast.ops import AffineInvariantArgs, cpu, cpu_available, resolve_backend
from depth_anything_fast.ops.autograd import CUSTOM_OPS

pytestmark = pytest.mark.skipif(not cpu_available(), reason="C++ extension _C not built")

# (rtol on values, atol on gradients relative to the largest gradient) per input dtype
TOLERANCES = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1e-2, 1e-2),
}


# Groups of at least this many pixels take the C++ sample select (kSampleSelectMin in
# csrc/losses.cpp), smaller ones the radix select on a gathered copy.
SAMPLE_SELECT_MIN = 4096


@pytest.fixture(params=["baseline", "avx2"])
def cpu_isa(request):
    """Run the test with each instruction set of the C++ forward (`_C.set_cpu_isa`)."""
    ext = cpu.require_extension()
    try:
        ext.set_cpu_isa(request.param)
    except ValueError:
        pytest.skip(f"no {request.param} on this CPU/build")
    assert ext.cpu_isa() == request.param
    yield request.param
    ext.set_cpu_isa("auto")


def make_inputs(batch, height, width, num_segments, dtype, *, masked=True, tied=False):
    if tied:  # few distinct values: many pixels equal the median
        pred = torch.randint(0, 4, (batch, height, width)).to(dtype)
    else:
        pred = torch.randn(batch, height, width).to(dtype)
    target = torch.rand(batch, height, width) * 3 + 0.1
    mask = torch.rand(batch, height, width) > 0.3 if masked else None
    segments = torch.randint(0, num_segments, (batch, height, width)) if num_segments > 1 else None
    return pred, target, mask, segments


def oracle(pred, target, mask, segments, num_segments, weights):
    """float64 per-image losses and the gradient of sum(weights * loss) w.r.t. pred."""
    flat = [
        None if x is None else x.reshape(x.shape[0], -1) for x in (pred, target, mask, segments)
    ]
    p = flat[0].detach().double().requires_grad_()
    loss, _ = affine_invariant_loss_reference(p, flat[1].double(), flat[2], flat[3], num_segments)
    (grad,) = torch.autograd.grad((loss * weights).sum(), p)
    return loss.detach(), grad.reshape(pred.shape)


def tied_median_pixels(pred, target, mask, segments, num_segments):
    """(B, S, L) bool: valid pixels of group (b, s) whose pred equals the group's lower median."""
    batch = pred.shape[0]
    p = pred.reshape(batch, -1).double()
    seg = None if segments is None else segments.reshape(batch, -1)
    valid = valid_pixels(
        target.reshape(batch, -1),
        None if mask is None else mask.reshape(batch, -1),
        seg,
        num_segments,
    )
    ids = torch.arange(num_segments)[None, :, None]
    groups = valid[:, None, :] & ((seg[:, None, :] == ids) if seg is not None else True)
    median, _ = masked_lower_median(p[:, None, :].expand_as(groups), groups)
    return groups & (p[:, None, :] == median[..., None])


def near_zero_residuals(pred, target, mask, segments, num_segments):
    """(B, L) bool, and (B, L) float64 pred scale: valid pixels whose normalised residual
    pred^ - target^ (float64) is non-zero but so close to 0 that float32 rounding may give it the
    other sign, and so flip its gradient (and its group median's) by 2 / (n s)."""
    batch = pred.shape[0]
    seg = None if segments is None else segments.reshape(batch, -1)
    valid = valid_pixels(target.reshape(batch, -1),
                         None if mask is None else mask.reshape(batch, -1), seg, num_segments)
    ids = torch.arange(num_segments)[None, :, None]
    groups = valid[:, None, :] & ((seg[:, None, :] == ids) if seg is not None else True)
    n = groups.sum(-1, keepdim=True).clamp(min=1)

    def normalised(x):
        x = x.reshape(batch, -1).double()[:, None, :].expand_as(groups)
        t, _ = masked_lower_median(x, groups)
        s = (((x - t[..., None]).abs() * groups).sum(-1, keepdim=True) / n).clamp(min=1e-6)
        return (x - t[..., None]) / s, s

    (p_hat, p_scale), (t_hat, _) = normalised(pred), normalised(target)
    r = p_hat - t_hat
    # float32 computes each normalised value to a few ulps of itself (exactly 0 at a median)
    near = groups & (r.abs() < 1e-5 * (p_hat.abs() + t_hat.abs()))
    return near.any(1), (groups * p_scale).sum(1)


def separate_near_zero_residuals(pred, target, mask, segments, num_segments):
    """`pred` with the pixels of `near_zero_residuals` moved by 1e-3 of their group's scale (at
    least two ulps of pred's dtype): the sign of the residual there is a float32 rounding, not
    something to compare with float64."""
    ulp = torch.finfo(pred.dtype).eps
    for _ in range(4):
        near, scale = near_zero_residuals(pred, target, mask, segments, num_segments)
        if not near.any():
            return pred
        p = pred.double()
        step = torch.maximum(1e-3 * scale.reshape(pred.shape), 2 * ulp * p.abs())
        pred = torch.where(near.reshape(pred.shape), p + step, p).to(pred.dtype)
    raise AssertionError("near-zero residuals remain after separating them")


def assert_grad_close_tie_aware(grad, expected, ties, atol):
    """Elementwise where the gradient is determined; over tied medians, their sum."""
    batch = grad.shape[0]
    g, e = grad.reshape(batch, -1).double(), expected.reshape(batch, -1)
    tied = ties.sum(1) > 0  # (B, L): pixels tied at a median (each pixel is in one group)
    group_has_ties = ties.sum(-1) > 1
    plain = ~(tied & (ties & group_has_ties[..., None]).any(1))
    torch.testing.assert_close(g[plain], e[plain], atol=atol, rtol=0)
    tie_sum = (ties * g[:, None, :]).sum(-1)
    tie_sum_expected = (ties * e[:, None, :]).sum(-1)
    torch.testing.assert_close(tie_sum, tie_sum_expected, atol=atol * 4, rtol=0)


def check_against_oracle(pred, target, mask, segments, num_segments):
    rtol, grad_tol = TOLERANCES[pred.dtype]
    pred = separate_near_zero_residuals(pred, target, mask, segments, num_segments)
    weights = torch.rand(pred.shape[0], dtype=torch.float64) + 0.5
    expected_loss, expected_grad = oracle(pred, target, mask, segments, num_segments, weights)
    p = pred.clone().requires_grad_()
    loss = affine_invariant_loss(
        p, target, mask, segments, num_segments=num_segments, reduction="none", backend="cpu"
    )
    assert loss.dtype == torch.float32 and loss.shape == (pred.shape[0],)
    torch.testing.assert_close(loss.double(), expected_loss, rtol=rtol, atol=rtol)
    (loss * weights.float()).sum().backward()
    assert p.grad.dtype == pred.dtype and torch.isfinite(p.grad).all()
    ties = tied_median_pixels(pred, target, mask, segments, num_segments)
    # Gradients are means over an image's pixels: O(1/L) where they do not cancel exactly (they do
    # for a constant target: the loss is then 1 whatever pred is), so 1/L floors the scale.
    scale = max(expected_grad.abs().max().item(), 1.0 / pred[0].numel())
    assert_grad_close_tie_aware(p.grad, expected_grad, ties, grad_tol * scale)


@pytest.mark.parametrize(
    "shape,num_segments,masked",
    [
        ((1, 1, 1), 1, False),
        ((1, 5, 7), 1, True),
        ((3, 17, 19), 1, True),
        ((2, 1, 33), 2, True),
        ((4, 23, 11), 3, True),
        ((2, 64, 65), 4, True),
        ((5, 9, 9), 4, False),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.usefixtures("cpu_isa")
def test_affine_invariant_matches_oracle(shape, num_segments, masked, dtype):
    check_against_oracle(*make_inputs(*shape, num_segments, dtype, masked=masked), num_segments)


def test_ignored_and_out_of_range_segments():
    """Negative segment values and values >= num_segments mark ignored pixels."""
    pred, target, mask, _ = make_inputs(3, 11, 12, 1, torch.float32)
    segments = torch.randint(-1, 2, (3, 11, 12))  # -1 ignored, 1 out of range for S = 1
    check_against_oracle(pred, target, mask, segments, 1)
    segments = torch.randint(-1, 4, (3, 11, 12))  # 3 out of range for S = 3
    check_against_oracle(pred, target, mask, segments, 3)


@pytest.mark.parametrize("num_segments", [1, 3])
@pytest.mark.usefixtures("cpu_isa")
def test_ties_at_median(num_segments):
    pred, target, mask, segments = make_inputs(3, 15, 16, num_segments, torch.float32, tied=True)
    check_against_oracle(pred, target, mask, segments, num_segments)


@pytest.mark.usefixtures("cpu_isa")
def test_edge_cases_all_invalid_single_pixel_constant_nonfinite():
    pred, target, mask, _ = make_inputs(5, 12, 13, 1, torch.float32)
    mask[0] = False  # all-invalid image
    mask[1] = False
    mask[1, 3, 4] = True  # a single valid pixel
    target[2] = 0.7  # constant target: s clamps to 1e-6
    target[3, 0, :5] = float("nan")
    target[3, 1, :5] = float("inf")
    target[4, 2, :5] = -float("inf")
    check_against_oracle(pred, target, mask, None, 1)
    loss = affine_invariant_loss(pred, target, mask, reduction="none", backend="cpu")
    assert loss[0] == 0 and loss[1] == 0


def test_nan_prediction_gives_nan_for_its_image_only():
    """A diverged model must show up as NaN, not crash the selection or leak into other images."""
    pred, target, _, segments = make_inputs(3, 10, 11, 2, torch.float32)
    pred[1, 4, 5] = float("nan")
    loss = affine_invariant_loss(
        pred, target, None, segments, num_segments=2, reduction="none", backend="cpu"
    )
    expected = affine_invariant_loss(
        pred.double(),
        target.double(),
        None,
        segments,
        num_segments=2,
        reduction="none",
        backend="reference",
    )
    assert torch.isnan(loss[1]) and torch.isnan(expected[1])
    torch.testing.assert_close(loss[[0, 2]].double(), expected[[0, 2]], rtol=2e-5, atol=2e-5)


def test_all_empty_batch_gives_zero_and_zero_grad():
    pred = torch.randn(3, 8, 9, requires_grad=True)
    target = torch.full((3, 8, 9), float("nan"))
    loss = affine_invariant_loss(pred, target, backend="cpu")
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))


def test_mean_reduction_skips_empty_images():
    pred, target, mask, _ = make_inputs(4, 10, 10, 1, torch.float32)
    mask[1] = False
    per_image = affine_invariant_loss(pred, target, mask, reduction="none", backend="cpu")
    mean = affine_invariant_loss(pred, target, mask, backend="cpu")
    torch.testing.assert_close(mean, per_image[[0, 2, 3]].mean())


def test_stats_and_lowest_median_index():
    pred, target, mask, segments = make_inputs(3, 11, 13, 3, torch.float32, tied=True)
    flat = [x.reshape(3, -1) for x in (pred, target, mask, segments)]
    _, stats, counts, _ = cpu.affine_invariant_forward(
        AffineInvariantArgs(flat[0], flat[1], None, flat[2], flat[3], 3, False)
    )
    median_index = counts[..., layout.MEDIAN_INDEX]
    ties = tied_median_pixels(pred, target, mask, segments, 3)
    for b in range(3):
        for s in range(3):
            hits = ties[b, s].nonzero()
            n = int(counts[b, s, layout.COUNT])
            assert n == int((flat[2][b] & (flat[3][b] == s)).sum())
            if n == 0:
                assert median_index[b, s] == -1
            else:
                assert median_index[b, s] == hits[0, 0]  # lowest tied index
                assert stats[b, s, layout.T_PRED] == flat[0][b, hits[0, 0]]


@pytest.mark.usefixtures("cpu_isa")
def test_cutmix_loss_cpu_matches_reference():
    pred, target_a, mask, _ = make_inputs(3, 20, 21, 1, torch.float32)
    target_b = torch.rand(3, 20, 21) + 2
    box = torch.zeros(3, 20, 21, dtype=torch.bool)
    box[:, 3:12, 5:17] = True
    box[2] = True  # an image that was not mixed
    expected = cutmix_loss(
        pred.double(), target_a.double(), target_b.double(), box, mask, backend="reference"
    )
    got = cutmix_loss(pred, target_a, target_b, box, mask, backend="cpu")
    torch.testing.assert_close(got.double(), expected, rtol=2e-5, atol=2e-5)
    as_bytes = cutmix_loss(
        pred, target_a, target_b, box.to(torch.uint8), mask, backend="cpu"
    )
    torch.testing.assert_close(as_bytes, got)


def large_group_pred(pattern: str, batch: int, length: int) -> torch.Tensor:
    """`(batch, length)` predictions whose groups are large enough for the sample select."""
    i = torch.arange(length, dtype=torch.float32).expand(batch, length)
    if pattern == "normal":
        return torch.randn(batch, length)
    if pattern == "tied":  # most pixels tie with the median
        return torch.randint(0, 3, (batch, length)).float()
    if pattern == "ramp":
        return i / length
    if pattern == "reversed":
        return 1 - i / length
    if pattern == "constant":
        return torch.full((batch, length), 0.25)
    if pattern == "heavy_tails":  # most of the mass at +-1e30, a few finite values between
        x = torch.randn(batch, length)
        return torch.where(x.abs() > 0.2, torch.sign(x) * 1e30, x)
    if pattern == "sampled_positions_extreme":
        # Huge values on every 16th pixel: for an unmasked 128 x 128 image these are the pixels
        # the strided sample reads (8 sqrt(n) of them), so its bracket misses the median and the
        # radix select takes over. Other sample formulas still have to get it right.
        return torch.where(i % 16 == 8, 1e6 + i, torch.randn(batch, length))
    raise ValueError(pattern)


@pytest.mark.parametrize(
    "pattern",
    ["normal", "tied", "ramp", "reversed", "constant", "heavy_tails", "sampled_positions_extreme"],
)
@pytest.mark.parametrize("num_segments,masked", [(1, False), (1, True), (2, True)])
@pytest.mark.usefixtures("cpu_isa")
def test_large_groups_match_oracle(pattern, num_segments, masked):
    """Groups above SAMPLE_SELECT_MIN (the sample select), against the float64 oracle."""
    batch, height, width = 2, 128, 128
    pred = large_group_pred(pattern, batch, height * width).reshape(batch, height, width)
    _, target, mask, segments = make_inputs(batch, height, width, num_segments, torch.float32)
    if not masked:
        mask = None
    groups = height * width * (0.7 if masked else 1.0) / num_segments
    assert groups > SAMPLE_SELECT_MIN
    check_against_oracle(pred, target, mask, segments, num_segments)
    # the target's selection too, on the same patterns
    check_against_oracle(target, pred.clamp(-1e3, 1e3), mask, segments, num_segments)


@pytest.mark.usefixtures("cpu_isa")
def test_large_cutmix_matches_reference():
    pred, target_a, mask, _ = make_inputs(2, 128, 128, 1, torch.float32)
    target_b = torch.rand(2, 128, 128) + 2
    box = torch.zeros(2, 128, 128, dtype=torch.bool)
    box[:, 10:90, 20:110] = True  # 7200 of 16384 pixels inside
    expected = cutmix_loss(
        pred.double(), target_a.double(), target_b.double(), box, mask, backend="reference"
    )
    got = cutmix_loss(pred, target_a, target_b, box, mask, backend="cpu")
    torch.testing.assert_close(got.double(), expected, rtol=2e-5, atol=2e-5)


def test_set_cpu_isa_rejects_unknown_names():
    ext = cpu.require_extension()
    with pytest.raises(ValueError, match="'auto', 'baseline' or 'avx2'"):
        ext.set_cpu_isa("sse9")
    assert ext.cpu_isa() in ("baseline", "avx2")


@pytest.mark.parametrize("shape", [(2, 37, 64), (1, 5, 3), (3, 10, 257)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_feature_alignment_matches_oracle(shape, dtype):
    features = torch.randn(shape).to(dtype)
    noise = torch.rand(shape[0], shape[1], 1) * 2  # a spread of similarities around alpha
    frozen = (features.float() + noise * torch.randn(shape)).to(dtype)
    f64 = features.double().requires_grad_()
    expected = feature_alignment_loss_reference(f64, frozen.double(), 0.85)
    (expected_grad,) = torch.autograd.grad(expected, f64)
    f = features.clone().requires_grad_()
    loss = feature_alignment_loss(f, frozen, 0.85, backend="cpu")
    loss.backward()
    rtol, grad_tol = TOLERANCES[dtype]
    assert loss.dtype == torch.float32 and f.grad.dtype == dtype
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=rtol, atol=rtol)
    scale = expected_grad.abs().max().item() or 1.0
    torch.testing.assert_close(f.grad.double(), expected_grad, atol=grad_tol * scale, rtol=0)


def test_feature_alignment_nothing_kept():
    features = torch.randn(2, 7, 16, requires_grad=True)
    loss = feature_alignment_loss(features, features.detach() * 2, 0.85, backend="cpu")
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(features.grad, torch.zeros_like(features))


def test_opcheck_affine_invariant():
    pred, target, mask, segments = make_inputs(2, 9, 10, 3, torch.float32)
    target[0, 0, 0] = float("nan")
    flat = [x.reshape(2, -1) for x in (pred, target, mask, segments)]
    torch.library.opcheck(
        CUSTOM_OPS["affine_invariant", "cpu"],
        (flat[0].requires_grad_(), flat[1], None, flat[2], flat[3].int(), 3, False),
    )
    torch.library.opcheck(
        CUSTOM_OPS["affine_invariant", "cpu"], (flat[0], flat[1], None, None, None, 1, True)
    )
    box = torch.rand(2, 90) > 0.5
    torch.library.opcheck(
        CUSTOM_OPS["affine_invariant", "cpu"], (flat[0], flat[1], flat[1] + 1, None, box, 2, True)
    )


def test_opcheck_feature_alignment():
    features = torch.randn(12, 32, requires_grad=True)
    frozen = features.detach() + torch.randn(12, 32)
    torch.library.opcheck(CUSTOM_OPS["feature_alignment", "cpu"], (features, frozen, 0.85))


def test_implementation_selection_and_errors(monkeypatch):
    x = torch.randn(2, 4, 4)
    assert resolve_backend("auto", x) == "cpu"
    assert resolve_backend("auto", x.double()) == "reference"
    with pytest.raises(ValueError, match="float64"):
        affine_invariant_loss(x.double(), x.double(), backend="cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        affine_invariant_loss(x, x, backend="cuda")
    with pytest.raises(ValueError, match="CPU tensors"):
        resolve_backend("cpu", torch.empty(2, 3, device="meta"))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises((ValueError, RuntimeError), match="triton"):
        affine_invariant_loss(x, x, backend="triton")
    monkeypatch.setattr(cpu, "extension", lambda: None)  # as if _C had not been built
    assert resolve_backend("auto", x) == "reference"
    with pytest.raises(RuntimeError, match="not built"):
        resolve_backend("cpu", x)


def test_counts_are_exact_beyond_2_to_the_24_pixels():
    """A float32 count stops at 2**24 (2**24 + 1 rounds down): counts are int64 throughout."""
    length = 2**24 + 3
    pred = (torch.arange(length, dtype=torch.float32) % 1024 * 0.25)[None]
    target = 2 * pred + 1  # an affine map of pred: the loss is 0
    loss, stats, counts, _ = cpu.affine_invariant_forward(
        AffineInvariantArgs(pred, target, None, None, None, 1, False)
    )
    assert counts[0, 0, layout.COUNT] == length
    assert stats[0, 0, layout.T_TARGET] == 2 * stats[0, 0, layout.T_PRED] + 1
    assert loss[0].abs() < 1e-5
