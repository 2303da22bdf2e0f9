"""Triton kernels of the fused losses against float64 oracles.

Without CUDA the kernels run under the Triton interpreter (conftest sets TRITON_INTERPRET=1):
small shapes there, larger ones on a GPU. The oracles are written here from the definitions
(lower median, s = max(mean|x - t|, 1e-6), gradient through the lowest median element; the
stats columns of the kernel interface shared with the C++ backend), independent of the kernels.
"""

from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl
from depth_anything_fast.kernels.affine_invariant import (
    affine_invariant_backward,
    affine_invariant_forward,
)
from depth_anything_fast.kernels.feature_alignment import (
    feature_alignment_backward,
    feature_alignment_forward,
)
from torch.library import wrap_triton

from depth_anything_fast.kernels import feature_alignment, radix_select, segmented
from depth_anything_fast.kernels import stats_layout as layout

ON_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_CUDA else "cpu")
# Pixels per row are multiplied by this on a GPU, where size costs nothing.
GROW = 211 if ON_CUDA else 1
SCALE_EPS = 1e-6


@pytest.fixture(params=["big-tiles", "small-tiles"])
def geometry(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Interpreter geometry: one tile per row, or 16-pixel tiles, 2 per program (several programs
    per row meeting in the atomics, as GPU shapes do) and 32-element feature tiles (a loop over
    channel blocks)."""
    if request.param == "small-tiles":
        if ON_CUDA:
            pytest.skip("GPU shapes already take several tiles and programs per row")
        monkeypatch.setattr(segmented, "_INTERPRETER_BLOCK", 16)
        monkeypatch.setattr(segmented, "_INTERPRETER_TILES_PER_PROG", 2)
        monkeypatch.setattr(feature_alignment, "_INTERPRETER_TILE", 32)
    return request.param


# ----------------------------------------------------------------------------- radix select
# The radix select on its own: the loss's three histogram passes on one array, then the value
# and the index of the lower median (kernels written for these tests from the package's device
# functions; the loss itself folds the last two steps into its own passes).

# atomic_min identity for the median index scratch (int32 indices: rows shorter than 2**31).
NO_INDEX = 2**31 - 1


@triton.jit
def _lower_median_pass_kernel(
    x_ptr, mask_ptr, seg_ptr, scratch_ptr, L, num_segments, tiles_per_prog,
    HAS_MASK: tl.constexpr, SEG_MODE: tl.constexpr, PASS: tl.constexpr, BLOCK: tl.constexpr,
    SEG_POW2: tl.constexpr, HIST_BINS: tl.constexpr, ATOMIC: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    total_rows = tl.num_programs(0) * num_segments
    rows, live = segmented.image_groups(b, num_segments, SEG_POW2)
    hist = tl.zeros([HIST_BINS], dtype=tl.int32)
    below = tl.zeros([SEG_POW2], dtype=tl.float32)
    above = tl.zeros([SEG_POW2], dtype=tl.float32)
    prefix = radix_select.program_prefix(scratch_ptr, rows, live, total_rows, PASS)
    for t in range(tiles_per_prog):
        _, in_row, offs = segmented.tile_columns(b, chunk, t, tiles_per_prog, L, BLOCK)
        x, _, valid, seg = segmented.load_pixels(x_ptr, x_ptr, x_ptr, mask_ptr, seg_ptr, offs, in_row,
                                       num_segments, False, HAS_MASK, SEG_MODE)  # fmt: skip
        hist, below, above = radix_select.histogram_digits(
            x, valid, seg, prefix, hist, below, above,
            radix_select.hist_rows(scratch_ptr, b * num_segments, total_rows, PASS), PASS, SEG_POW2, ATOMIC,
        )  # fmt: skip
    radix_select.publish_histogram(scratch_ptr, hist, below, above, b * num_segments, num_segments,
                      total_rows, PASS, SEG_POW2, ATOMIC)  # fmt: skip


@triton.jit
def _lower_median_value_kernel(scratch_ptr, value_ptr, count_ptr, num_segments,
                               SEG_POW2: tl.constexpr):  # fmt: skip
    b = tl.program_id(0)
    rows, live = segmented.image_groups(b, num_segments, SEG_POW2)
    total_rows = tl.num_programs(0) * num_segments
    t, count, _, _, _, _ = radix_select.select_median(scratch_ptr, rows, live, total_rows)
    tl.store(value_ptr + rows, t, mask=live)
    tl.store(count_ptr + rows, count, mask=live)


@triton.jit
def first_index_of(values, target, onehot, cols):
    """Per-segment lowest column [SEG_POW2] int32 where `values == target` (NO_INDEX if none)."""
    hit = onehot & (values == target)[:, None]
    return tl.min(tl.where(hit, cols[:, None], 2147483647), axis=0)


@triton.jit
def _median_index_kernel(
    x_ptr, mask_ptr, seg_ptr, median_ptr, index_ptr, L, num_segments, tiles_per_prog,
    HAS_MASK: tl.constexpr, SEG_MODE: tl.constexpr, BLOCK: tl.constexpr, SEG_POW2: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    rows, live = segmented.image_groups(b, num_segments, SEG_POW2)
    median = tl.load(median_ptr + rows, mask=live, other=0.0)
    best = tl.full([SEG_POW2], 2147483647, dtype=tl.int32)
    for t in range(tiles_per_prog):
        cols, in_row, offs = segmented.tile_columns(b, chunk, t, tiles_per_prog, L, BLOCK)
        x, _, valid, seg = segmented.load_pixels(x_ptr, x_ptr, x_ptr, mask_ptr, seg_ptr, offs, in_row,
                                       num_segments, False, HAS_MASK, SEG_MODE)  # fmt: skip
        onehot = valid[:, None] & (seg[:, None] == tl.arange(0, SEG_POW2)[None, :])
        best = tl.minimum(best, first_index_of(x, segmented.per_pixel(median, seg, SEG_POW2), onehot, cols))
    tl.atomic_min(index_ptr + rows, best, mask=live)


def lower_median(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
    num_segments: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked, segmented lower median of `(B, L)` rows (what `torch.nanmedian` returns).

    The three histogram passes of the affine-invariant loss on one array, then a value kernel
    and an index kernel (a test tool: the loss folds both into its own passes, and this
    checks the radix select on its own).

    Args:
        x: `(B, L)` float32/float16/bfloat16, contiguous.
        mask: `(B, L)` bool or None.
        segments: `(B, L)` integer or None; values outside [0, num_segments) are ignored pixels.
        num_segments: S.

    valid = mask & isfinite(x) & 0 <= segments < S.

    Returns:
        values `(B, S)` float32 (0.0 where a group has no valid pixel), index `(B, S)` int64
        (lowest column whose value equals the median, -1 for an empty group), count `(B, S)`
        int32.
    """
    segmented.check_images("x", x, mask, segments, num_segments)
    B, L = x.shape
    groups = B * num_segments
    device = x.device
    plan = segmented.tile_plan(B, L, device)
    seg_pow2 = segmented.segment_pow2(segments, num_segments)
    seg_mode = segmented.SEG_NONE if segments is None else segmented.SEG_MAP
    scratch = torch.zeros(groups * (radix_select.HIST_WORDS + 2), dtype=torch.int32, device=device)
    values = torch.empty(groups, dtype=torch.float32, device=device)
    counts = torch.empty(groups, dtype=torch.int32, device=device)
    index = torch.full((groups,), NO_INDEX, dtype=torch.int32, device=device)
    mask_arg = x if mask is None else mask
    seg_arg = x if segments is None else segments
    for radix_pass in range(radix_select.NUM_PASSES):
        wrap_triton(_lower_median_pass_kernel)[(B, plan.chunks)](
            x, mask_arg, seg_arg, scratch, L, num_segments, plan.tiles_per_prog,
            HAS_MASK=mask is not None, SEG_MODE=seg_mode, PASS=radix_pass, BLOCK=plan.block,
            SEG_POW2=seg_pow2, HIST_BINS=radix_select.histogram_bins(seg_pow2, radix_pass),
            ATOMIC=radix_select.atomic_histogram(seg_pow2), num_warps=plan.num_warps,
        )  # fmt: skip
    wrap_triton(_lower_median_value_kernel)[(B,)](
        scratch, values, counts, num_segments, SEG_POW2=seg_pow2
    )
    wrap_triton(_median_index_kernel)[(B, plan.chunks)](
        x, mask_arg, seg_arg, values, index, L, num_segments, plan.tiles_per_prog,
        HAS_MASK=mask is not None, SEG_MODE=seg_mode, BLOCK=plan.block, SEG_POW2=seg_pow2,
        num_warps=plan.num_warps,
    )  # fmt: skip
    index = torch.where(counts > 0, index.long(), -1)
    return values.view(B, num_segments), index.view(B, num_segments), counts.view(B, num_segments)




def _nanmedian_oracle(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower median (B,) float64 with 0 for empty rows, lowest index of it, -1 for empty rows)."""
    x64 = x.double()
    values = torch.nanmedian(torch.where(valid, x64, math.nan), dim=1).values
    count = valid.sum(1)
    values = torch.where(count > 0, values, 0.0)
    hits = valid & (x64 == values[:, None])
    cols = torch.arange(x.shape[1]).expand_as(hits)
    index = torch.where(hits, cols, x.shape[1]).min(1).values
    return values, torch.where(count > 0, index, -1)


@pytest.mark.parametrize(
    ("batch", "length", "num_segments", "dtype"),
    [(1, 1, 1, torch.float32), (3, 37, 1, torch.float32), (2, 101, 3, torch.float32),
     (2, 64, 2, torch.float16), (1, 257, 1, torch.bfloat16)],
)  # fmt: skip
def test_lower_median_matches_nanmedian(
    geometry: str, batch: int, length: int, num_segments: int, dtype: torch.dtype
) -> None:
    length *= GROW
    x = torch.randn(batch, length).mul(3).round(decimals=1)  # many duplicates
    x[:, ::5] = 0.0
    x[:, 1::7] = -0.0
    x[:, 2::11] = -7.5  # negatives with ties
    x[:, 3::13] = math.inf
    x = x.to(dtype)
    mask = torch.rand(batch, length) > 0.3
    segments = torch.randint(-1, num_segments, (batch, length), dtype=torch.int32)
    mask[-1] = False  # an image with nothing valid
    values, index, count = lower_median(
        x.to(DEVICE), mask.to(DEVICE), segments.to(DEVICE), num_segments
    )
    for s in range(num_segments):
        valid = mask & (segments == s) & torch.isfinite(x)
        ref_values, ref_index = _nanmedian_oracle(x, valid)
        assert torch.equal(values[:, s].cpu().double(), ref_values)
        assert torch.equal(index[:, s].cpu(), ref_index)
        assert torch.equal(count[:, s].cpu(), valid.sum(1).int())


def test_lower_median_keys_order_every_sign_and_magnitude() -> None:
    # Values spanning all exponents and both signs (incl. subnormals, +-0): one row per shuffle.
    base = torch.tensor(
        [-3e38, -1.0, -1e-38, -1e-45, -0.0, 0.0, 1e-45, 1e-38, 1e-3, 1.0, 2.5, 3e38]
    )
    rows = [base[torch.randperm(len(base))][: k + 1] for k in range(len(base))]
    # Ragged rows: pad with NaN, which is invalid (not finite).
    x = torch.full((len(rows), len(base)), math.nan)
    for i, row in enumerate(rows):
        x[i, : len(row)] = row
    values, index, _ = lower_median(x.to(DEVICE))
    ref_values, ref_index = _nanmedian_oracle(x, torch.isfinite(x))
    assert torch.equal(values[:, 0].cpu().double(), ref_values)
    assert torch.equal(index[:, 0].cpu(), ref_index)


def test_lower_median_without_mask_and_segments_and_bad_input() -> None:
    x = torch.randn(2, 33 * GROW)
    values, index, count = lower_median(x.to(DEVICE))
    ref_values, ref_index = _nanmedian_oracle(x, torch.ones_like(x, dtype=torch.bool))
    assert torch.equal(values[:, 0].cpu().double(), ref_values)
    assert torch.equal(index[:, 0].cpu(), ref_index)
    assert count.flatten().tolist() == [x.shape[1]] * 2
    with pytest.raises(ValueError, match="mask shape"):
        lower_median(x.to(DEVICE), torch.ones(2, 3, dtype=torch.bool, device=DEVICE))
    with pytest.raises(TypeError, match="mask must be bool"):
        lower_median(x.to(DEVICE), torch.ones_like(x, device=DEVICE))


# ------------------------------------------------------------------------ affine invariant


def _affine_oracle(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    segments: torch.Tensor | None,
    num_segments: int,
    grad_loss: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """float64 loss, stats (`stats_layout` columns), counts, median_index and autograd gradient
    from the definitions."""
    p = pred.double().cpu()
    g = target.double().cpu()
    B, L = p.shape
    valid = torch.isfinite(g)
    if mask is not None:
        valid &= mask.cpu()
    seg = torch.zeros(B, L, dtype=torch.long) if segments is None else segments.cpu().long()
    valid &= (seg >= 0) & (seg < num_segments)
    leaf = p.clone().requires_grad_(True)
    stats = torch.zeros(B, num_segments, layout.NUM_STATS, dtype=torch.float64)
    counts = torch.zeros(B, num_segments, dtype=torch.long)
    median_index = torch.full((B, num_segments), -1, dtype=torch.long)
    losses = []
    ambiguous = torch.zeros((), dtype=torch.bool)
    for b in range(B):
        total = leaf.new_zeros(())
        for s in range(num_segments):
            sel = valid[b] & (seg[b] == s)
            n = int(sel.sum())
            counts[b, s] = n
            stats[b, s, layout.S_PRED] = stats[b, s, layout.S_TARGET] = SCALE_EPS
            if n == 0:
                continue
            idx = sel.nonzero()[:, 0]
            t_pred, m = (v.item() for v in _nanmedian_oracle(p[b : b + 1], sel[None]))
            t_target = _nanmedian_oracle(g[b : b + 1], sel[None])[0].item()
            pv, gv = leaf[b, idx], g[b, idx]
            t_ad = leaf[b, m]  # the gradient of the median goes to its (lowest) element
            mean_abs = (pv - t_ad).abs().mean()
            s_pred = mean_abs.clamp_min(SCALE_EPS)
            s_target = (gv - t_target).abs().mean().clamp_min(SCALE_EPS)
            p_hat = (pv - t_ad) / s_pred
            residual = p_hat - (gv - t_target) / s_target
            total = total + residual.abs().sum()
            r = residual.detach().sign()
            for column, value in (
                (layout.T_PRED, t_pred), (layout.S_PRED, s_pred.item()),
                (layout.T_TARGET, t_target), (layout.S_TARGET, s_target.item()),
                (layout.A_SUM, r.sum().item()), (layout.B_SUM, (r * p_hat.detach()).sum().item()),
                (layout.C_SUM, (pv.detach() - t_pred).sign().sum().item()),
                (layout.SCALE_ACTIVE, float(mean_abs.item() > SCALE_EPS)),
            ):  # fmt: skip
                stats[b, s, column] = value
            median_index[b, s] = m
            # A sign that fp32 could see differently: the test draws new inputs.
            exact_zero = (pv.detach() == t_pred) & (gv == t_target)
            ambiguous |= ((residual.detach().abs() < 2e-5) & ~exact_zero).any()
        n_image = int(valid[b].sum())
        losses.append(total / n_image if n_image else total * 0)
    loss = torch.stack(losses)
    (grad,) = torch.autograd.grad((loss * grad_loss.double().cpu()).sum(), leaf)
    return {
        "loss": loss.detach(), "stats": stats, "counts": counts, "median_index": median_index,
        "grad": grad, "ambiguous": ambiguous,
    }  # fmt: skip


def _draw_case(
    case: str, batch: int, length: int, num_segments: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    pred = torch.randn(batch, length) * 2 + 0.5
    target = torch.rand(batch, length) * 3 - 1
    mask: torch.Tensor | None = torch.rand(batch, length) > 0.25
    segments: torch.Tensor | None = torch.randint(
        -1 if num_segments > 1 else 0, num_segments, (batch, length), dtype=torch.int32
    )
    if num_segments == 1 and case != "segments-negative":
        segments = None
    if case == "no-mask":
        mask = None
    elif case == "all-invalid-image":
        mask[0] = False
    elif case == "single-valid-pixel":
        mask[-1] = False
        mask[-1, length // 2] = True
    elif case == "constant-target":
        target[0] = 0.25
    elif case == "constant-pred":
        pred[-1] = -1.0
    elif case == "nonfinite-target":
        target[:, ::3] = math.nan
        target[:, 1::7] = math.inf
        target[:, 2::9] = -math.inf
    elif case == "ties":
        pred = pred.round()  # a handful of distinct values: ties at the median
        target = target.round(decimals=1)
    elif case == "segments-negative":
        segments = segments.long()  # int64 maps load as well as int32
        segments[:, ::4] = -3
        segments[0, :] = -1  # the whole first image ignored through segments
    return pred.to(dtype), target.to(dtype), mask, segments


AFFINE_CASES = [
    ("plain", 3, 37, 1, torch.float32),
    ("no-mask", 1, 50, 1, torch.float32),
    ("all-invalid-image", 2, 45, 2, torch.float32),
    ("single-valid-pixel", 2, 29, 1, torch.float32),
    ("constant-target", 2, 41, 2, torch.float32),
    ("constant-pred", 2, 41, 1, torch.float32),
    ("nonfinite-target", 2, 63, 3, torch.float32),
    ("ties", 3, 55, 2, torch.float32),
    ("segments-negative", 2, 47, 3, torch.float32),
    ("segments-negative", 2, 47, 1, torch.float32),
    ("plain", 2, 129, 2, torch.float16),
    ("ties", 2, 40, 1, torch.bfloat16),
]


@pytest.mark.parametrize(("case", "batch", "length", "num_segments", "dtype"), AFFINE_CASES)
def test_affine_invariant_forward_backward(
    geometry: str, case: str, batch: int, length: int, num_segments: int, dtype: torch.dtype
) -> None:
    length *= GROW
    for _ in range(20):
        pred, target, mask, segments = _draw_case(case, batch, length, num_segments, dtype)
        grad_loss = torch.rand(batch) + 0.5
        oracle = _affine_oracle(pred, target, mask, segments, num_segments, grad_loss)
        if not oracle["ambiguous"]:
            break
    else:
        pytest.fail("could not draw inputs without near-zero residuals")
    on = {
        "pred": pred.to(DEVICE), "target": target.to(DEVICE),
        "mask": None if mask is None else mask.to(DEVICE),
        "segments": None if segments is None else segments.to(DEVICE),
        "num_segments": num_segments,
    }  # fmt: skip
    loss, stats, counts, codes = affine_invariant_forward(**on, target_b=None, mean=False)
    assert loss.shape == (batch,) and loss.dtype == torch.float32
    assert stats.shape == (batch, num_segments, layout.NUM_STATS)
    assert stats.dtype == torch.float32 and counts.dtype == torch.int64
    assert codes.shape == pred.shape and codes.dtype == torch.uint8
    torch.testing.assert_close(loss.cpu().double(), oracle["loss"], rtol=1e-5, atol=1e-6)
    ref = oracle["stats"]
    got = stats.cpu().double()
    assert torch.equal(counts[..., layout.COUNT].cpu(), oracle["counts"])
    # t, scale_active, sums of signs (A, C): exact; s and Bsum: fp32 sums.
    for column in (layout.T_PRED, layout.T_TARGET, layout.A_SUM, layout.C_SUM,
                   layout.SCALE_ACTIVE):  # fmt: skip
        assert torch.equal(got[..., column], ref[..., column]), f"stats column {column}"
    for column in (layout.S_PRED, layout.S_TARGET):
        torch.testing.assert_close(got[..., column], ref[..., column], rtol=2e-5, atol=1e-6)
    # Bsum sums n_g terms of either sign: absolute error grows with n_g.
    bsum_error = (got[..., layout.B_SUM] - ref[..., layout.B_SUM]).abs()
    n_group = oracle["counts"].double().clamp_min(1)
    assert (bsum_error <= 2e-5 * ref[..., layout.B_SUM].abs() + 1e-6 * n_group).all()
    assert torch.equal(counts[..., layout.MEDIAN_INDEX].cpu(), oracle["median_index"])

    grad = affine_invariant_backward(grad_loss.to(DEVICE), codes, on["segments"], stats, counts,
                                     dtype)  # fmt: skip
    assert grad.dtype == dtype and grad.shape == pred.shape
    ref_grad = oracle["grad"]
    # Size of one pixel's direct term w_b / s: the gradient can cancel to ~0 exactly (e.g. a
    # constant target makes the loss constant), leaving fp32 rounding noise of that size.
    n_image = oracle["counts"].sum(1, keepdim=True).clamp_min(1).double()
    unit_per_group = grad_loss.double()[:, None] / n_image / ref[..., layout.S_PRED]
    nonempty = oracle["counts"] > 0
    unit = unit_per_group[nonempty].max().item() if nonempty.any() else 0.0
    scale = max(ref_grad.abs().max().item(), unit)
    rtol = 1e-4 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize(("batch", "length"), [(0, 5), (2, 0)])
@pytest.mark.parametrize("mean", [False, True])
def test_affine_invariant_empty_inputs(batch: int, length: int, mean: bool) -> None:
    pred = torch.randn(batch, length, device=DEVICE)
    loss, stats, counts, codes = affine_invariant_forward(pred, pred, None, None, None, 1, mean)
    assert loss.shape == (() if mean else (batch,)) and not loss.any()
    assert stats.shape == (batch, 1, layout.NUM_STATS)
    assert torch.equal(counts[..., layout.MEDIAN_INDEX], -torch.ones(batch, 1, dtype=torch.long))
    grad = affine_invariant_backward(torch.ones_like(loss), codes, None, stats, counts,
                                     torch.float32)  # fmt: skip
    assert grad.shape == pred.shape and not grad.any()


def test_affine_invariant_nan_pred_median_has_no_index() -> None:
    """A NaN pred median equals no element: median_index is -1 (as on the C++ backend)."""
    pred, target = torch.randn(2, 7, device=DEVICE), torch.rand(2, 7, device=DEVICE)
    pred[0, :5] = float("nan")
    loss, _, counts, _ = affine_invariant_forward(pred, target, None, None, None, 1, False)
    median_index = counts[..., layout.MEDIAN_INDEX]
    assert loss[0].isnan() and loss[1].isfinite()
    assert median_index[0, 0] == -1 and 0 <= median_index[1, 0] < 7


def test_affine_invariant_many_segments_read_the_map_in_backward(geometry: str) -> None:
    """More segments than a code byte holds: the backward reads the segment map again."""
    batch, length, num_segments = 2, 90 * GROW, 20
    pred, target = torch.randn(batch, length), torch.rand(batch, length)
    segments = torch.randint(-1, num_segments, (batch, length))
    grad_loss = torch.rand(batch) + 0.5
    oracle = _affine_oracle(pred, target, None, segments, num_segments, grad_loss)
    loss, stats, counts, codes = affine_invariant_forward(
        pred.to(DEVICE), target.to(DEVICE), None, None, segments.to(DEVICE), num_segments, False
    )
    torch.testing.assert_close(loss.cpu().double(), oracle["loss"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="segment map"):
        affine_invariant_backward(grad_loss, codes, None, stats, counts, torch.float32)
    grad = affine_invariant_backward(grad_loss.to(DEVICE), codes, segments.to(DEVICE), stats,
                                     counts, torch.float32)  # fmt: skip
    scale = oracle["grad"].abs().max().item()
    torch.testing.assert_close(grad.cpu().double(), oracle["grad"], rtol=0, atol=1e-4 * scale)


def test_affine_invariant_rejects_mismatched_shapes() -> None:
    pred = torch.randn(2, 10, device=DEVICE)
    seg = torch.zeros(2, 9, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="segments shape"):
        affine_invariant_forward(pred, pred, None, None, seg, 1, False)
    with pytest.raises(ValueError, match=r"must be \(B, L\)"):
        affine_invariant_forward(pred[None], pred[None], None, None, None, 1, False)
    with pytest.raises(TypeError, match="segments must be an integer"):
        affine_invariant_forward(pred, pred, None, None, pred, 1, False)
    with pytest.raises(TypeError, match="CutMix box"):
        affine_invariant_forward(pred, pred, pred, None, seg, 2, False)
    with pytest.raises(ValueError, match="target_b"):
        affine_invariant_forward(pred, pred, pred[:, :9], None, pred > 0, 2, False)


# ---------------------------------------------------------------------- feature alignment


def _feature_alignment_oracle(
    features: torch.Tensor, frozen: torch.Tensor, alpha: float, grad_loss: float
) -> dict[str, torch.Tensor]:
    leaf = features.double().cpu().requires_grad_(True)
    z = frozen.double().cpu()
    denominator = ((leaf * leaf).sum(1) * (z * z).sum(1)).clamp_min(1e-16).sqrt()
    cos = (leaf * z).sum(1) / denominator
    kept = cos.detach() <= alpha
    n_kept = int(kept.sum())
    loss = (1 - cos[kept]).sum() / n_kept if n_kept else (cos * 0).sum()
    (grad,) = torch.autograd.grad(loss * grad_loss, leaf)
    near_alpha = ((cos.detach() - alpha).abs() < 1e-5).any()
    return {"loss": loss.detach(), "cos": cos.detach(), "n_kept": torch.tensor(float(n_kept)),
            "grad": grad, "ambiguous": near_alpha}  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "channels", "dtype", "kept"),
    [(37, 24, torch.float32, "some"), (5, 3, torch.float32, "none"),
     (20, 130, torch.float16, "some"), (9, 64, torch.bfloat16, "all"),
     (16, 40, torch.float32, "zero-rows")],
)  # fmt: skip
def test_feature_alignment(
    geometry: str, rows: int, channels: int, dtype: torch.dtype, kept: str
) -> None:
    rows *= GROW
    alpha = 0.85
    for _ in range(20):
        frozen = torch.randn(rows, channels)
        # Mix of aligned rows (cos near 1) and unrelated rows (cos near 0).
        noise = torch.rand(rows, 1) * (0.05 if kept == "none" else 3.0)
        if kept == "all":
            noise = noise + 2.0
        features = frozen * torch.rand(rows, 1).add(0.5) + noise * torch.randn(rows, channels)
        if kept == "zero-rows":
            features[::3] = 0.0  # |f| = 0: cos = 0 through the eps clamp, kept
            frozen[1::5] = 0.0
        features, frozen = features.to(dtype), frozen.to(dtype)
        grad_loss = torch.rand(()) + 0.5
        oracle = _feature_alignment_oracle(features, frozen, alpha, grad_loss.item())
        if not oracle["ambiguous"] and (kept != "none" or oracle["n_kept"] == 0):
            break
    else:
        pytest.fail(f"could not draw features with {kept} kept and no cos near alpha")
    loss, cos, n_kept = feature_alignment_forward(features.to(DEVICE), frozen.to(DEVICE), alpha)
    assert loss.shape == () and cos.shape == (rows,) and n_kept.shape == ()
    torch.testing.assert_close(cos.cpu().double(), oracle["cos"], rtol=1e-5, atol=1e-6)
    assert n_kept.item() == oracle["n_kept"].item()
    torch.testing.assert_close(loss.cpu().double(), oracle["loss"], rtol=1e-5, atol=1e-6)
    grad = feature_alignment_backward(
        grad_loss.to(DEVICE), features.to(DEVICE), frozen.to(DEVICE), alpha, cos, n_kept
    )
    assert grad.dtype == dtype and grad.shape == features.shape
    # Rows with |f| = 0 have gradients ~1/eps: tolerances scale per row.
    ref_grad = oracle["grad"]
    row_scale = ref_grad.abs().amax(1, keepdim=True) + 1e-12
    rtol = 1e-4 if dtype == torch.float32 else 1e-2
    error = (grad.cpu().double() - ref_grad).abs()
    assert (error <= rtol * (ref_grad.abs() + row_scale)).all(), error.max()
    if kept == "none":
        assert loss.item() == 0.0 and not grad.any()


def test_feature_alignment_cosine_matches_torch() -> None:
    features, frozen = torch.randn(2, 31, 17).unbind(0)
    _, cos, _ = feature_alignment_forward(features.to(DEVICE), frozen.to(DEVICE), 0.85)
    expected = torch.nn.functional.cosine_similarity(features, frozen, dim=-1, eps=1e-8)
    torch.testing.assert_close(cos.cpu(), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ CUDA only


@pytest.mark.cuda
@pytest.mark.skipif(not ON_CUDA, reason="needs a CUDA device")
def test_forward_and_backward_do_not_sync_the_host() -> None:
    B, L = 4, 518 * 518
    pred = torch.randn(B, L, device=DEVICE)
    target = torch.rand(B, L, device=DEVICE)
    mask = torch.rand(B, L, device=DEVICE) > 0.2
    segments = torch.randint(0, 2, (B, L), device=DEVICE, dtype=torch.int32)
    features = torch.randn(4 * 1369, 1024, device=DEVICE)
    affine_invariant_forward(pred, target, None, mask, segments, 2, True)  # compile first
    feature_alignment_forward(features, features.flip(0), 0.85)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, stats, counts, codes = affine_invariant_forward(pred, target, None, mask,
                                                              segments, 2, True)  # fmt: skip
        affine_invariant_backward(torch.ones_like(loss), codes, segments, stats, counts,
                                  torch.float32)  # fmt: skip
        f_loss, cos, n_kept = feature_alignment_forward(features, features.flip(0), 0.85)
        feature_alignment_backward(torch.ones_like(f_loss), features, features.flip(0), 0.85,
                                   cos, n_kept)  # fmt: skip
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_atomic_histograms_give_the_same_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """DAF_TRITON_HISTOGRAM=atomics (per-pixel atomics instead of tl.histogram) changes how
    the passes count, not what they find; a bad value is an error naming the variable."""
    from depth_anything_fast.kernels import radix_select

    pred = torch.randn(2, 70 * GROW).round(decimals=1).to(DEVICE)  # ties at the median
    target = torch.rand(2, 70 * GROW).to(DEVICE)
    mask = (torch.rand(2, 70 * GROW) > 0.2).to(DEVICE)
    default = affine_invariant_forward(pred, target, None, mask, None, 1, False)
    monkeypatch.setenv(radix_select.HISTOGRAM_ENV, "atomics")
    atomic = affine_invariant_forward(pred, target, None, mask, None, 1, False)
    assert torch.equal(default[2], atomic[2]) and torch.equal(default[3], atomic[3])
    torch.testing.assert_close(default[0], atomic[0], rtol=1e-6, atol=1e-7)
    monkeypatch.setenv(radix_select.HISTOGRAM_ENV, "shared")
    with pytest.raises(ValueError, match=radix_select.HISTOGRAM_ENV):
        affine_invariant_forward(pred, target, None, mask, None, 1, False)
