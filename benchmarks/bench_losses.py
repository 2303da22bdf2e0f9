"""Fused losses vs the eager PyTorch reference vs torch.compile(reference), side by side.

    pytest benchmarks/bench_losses.py --benchmark-only --benchmark-json out.json

One benchmark group per (loss, device, shape, pass); `impl` is "fused" (C++ on CPU, Triton on
CUDA), "eager" or "compiled". extra_info: `bytes` = the floor, bytes that must be moved (inputs
read once, for CutMix one target per pixel, plus the gradient written once for fwd+bwd), `GB/s`
= floor bytes / mean time, `design_bytes` (fused Triton rows) = what the kernels move by design
(`design_bytes` below), and `peak_MiB` = peak memory allocated
by one call above what was live before it (CPU: torch profiler allocation events, which do not
see the C++ kernels' own scratch, reported as `scratch_MiB`; CUDA: max_memory_allocated).

Before timing, each fused or compiled case is checked once against the eager reference in
float64 (`check_against_reference`): loss to 1e-4 relative, gradient to 1e-3 relative L2 norm
(pixels whose prediction ties another's in its image left out: which of them gets the median's
gradient is arbitrary), so a fast wrong kernel fails instead of being reported as a speed-up.

CUDA timing: a round is `CUDA_STEPS` calls queued back to back with one synchronisation at its
end, and the reported time is per call (pytest-benchmark's `iterations`): the GPU time of the
work, not the host's launch latency of one call. `copy bandwidth cuda` times a plain
device-to-device copy the same way (GB/s counting bytes read and written): the ceiling the
fused kernels' GB/s are compared with.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from benchmark_support import peak_memory_mib

from depth_anything_fast.losses import affine_invariant_loss, cutmix_loss, feature_alignment_loss
from depth_anything_fast.ops import AffineInvariantArgs, cpu_available
from depth_anything_fast.ops import affine_invariant as affine_invariant_op
from depth_anything_fast.ops.pytorch import feature_alignment_loss_reference

CUDA = torch.cuda.is_available()
IMPLS = ("fused", "eager", "compiled")
PASSES = ("fwd", "fwd+bwd")
AFFINE_CASES = [
    ("cpu", 4, 256),
    ("cpu", 16, 256),
    ("cpu", 4, 518),
    ("cuda", 16, 518),
]
CUTMIX_CASES = [("cpu", 4, 518), ("cuda", 16, 518)]
FEATURE_CASES = [("cpu", 16, 1369, 1024), ("cuda", 16, 1369, 1024)]
CUDA_STEPS = 20
_compiled: dict[tuple, Callable] = {}


def _skip_unavailable(device: str, impl: str) -> None:
    if device == "cuda" and not CUDA:
        pytest.skip("no CUDA device")
    if device == "cpu" and impl == "fused" and not cpu_available():
        pytest.skip("C++ extension not built")


def design_bytes(loss: str, pixels: int, training: bool, pass_bytes: int) -> int:
    """Bytes the Triton kernels move by design (`kernels/affine_invariant.py`,
    `kernels/feature_alignment.py`); `pass_bytes` = bytes one full read of the inputs moves.

    affine / CutMix: 3 radix passes + the loss pass read the inputs, the loss pass writes one
    code byte per pixel; the backward reads the codes and writes a 4-byte gradient.
    feature alignment: the forward reads features and frozen once (and writes one cos per
    token, negligible); the backward reads both again and writes the gradient.
    """
    if loss == "feature_alignment":
        return pass_bytes * (2 if training else 1) + (pixels * 4 if training else 0)
    return 4 * pass_bytes + pixels + ((pixels + 4 * pixels) if training else 0)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def check_against_reference(
    loss_fn: Callable[[], torch.Tensor],
    reference_fn: Callable[[torch.Tensor], torch.Tensor],
    leaf: torch.Tensor,
    training: bool,
) -> None:
    """`loss_fn()` (and its gradient at `leaf` when `training`) against
    `reference_fn(leaf in float64)`, once, before the case is timed."""
    loss = loss_fn()
    leaf64 = leaf.detach().double().requires_grad_(training)
    expected = reference_fn(leaf64)
    assert expected.dtype == torch.float64
    torch.testing.assert_close(loss.detach().double(), expected.detach(), rtol=1e-4, atol=1e-6)
    if not training:
        return
    (grad,) = torch.autograd.grad(loss, leaf)
    (expected_grad,) = torch.autograd.grad(expected, leaf64)
    keep = torch.ones_like(leaf, dtype=torch.bool)
    if leaf.dim() == 3:  # per-pixel losses: the median's gradient goes to one of its ties
        flat, keep = leaf.detach().flatten(1), keep.flatten(1)
        ordered, order = flat.sort(dim=1)
        tied = torch.zeros_like(keep)
        tied[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        tied[:, :-1] |= tied[:, 1:].clone()
        keep.scatter_(1, order, ~tied)
        keep = keep.view_as(leaf)
    error = (grad.double() - expected_grad)[keep].norm() / expected_grad[keep].norm()
    assert error <= 1e-3, f"gradient off the float64 reference by {error:.3g} (relative L2)"


def _run(
    benchmark,
    loss_fn: Callable[[], torch.Tensor],
    leaf: torch.Tensor,
    device: str,
    training: bool,
    bytes_moved: int,
) -> None:
    def work() -> None:
        loss = loss_fn()
        if training:
            loss.backward()
            leaf.grad = None

    _time(benchmark, work, device, bytes_moved)


def _time(benchmark, work: Callable[[], None], device: str, bytes_moved: int) -> None:
    """Peak memory of one call, then the timed rounds (CUDA: `CUDA_STEPS` queued calls each,
    synchronised after the last one)."""
    steps = CUDA_STEPS if device == "cuda" else 1
    calls = 0

    def step() -> None:
        nonlocal calls
        work()
        calls += 1
        if calls % steps == 0:
            _sync(device)

    work()  # warm-up: compilation, first-touch allocations
    _sync(device)
    benchmark.extra_info["peak_MiB"] = round(peak_memory_mib(work, device), 2)
    benchmark.pedantic(step, rounds=10, iterations=steps, warmup_rounds=1)
    benchmark.extra_info["bytes"] = bytes_moved
    if benchmark.stats is not None:  # None under --benchmark-disable (a run of the checks)
        benchmark.extra_info["GB/s"] = round(bytes_moved / benchmark.stats.stats.mean / 1e9, 3)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("device,batch,size", AFFINE_CASES)
def test_affine_invariant(benchmark, impl: str, pass_: str, device: str, batch: int, size: int):
    _skip_unavailable(device, impl)
    training = pass_ == "fwd+bwd"
    benchmark.group = f"affine_invariant {device} B={batch} {size}x{size} {pass_}"
    pred = torch.randn(batch, size, size, device=device, requires_grad=True)
    target = torch.rand(batch, size, size, device=device) + 0.1
    mask = torch.rand(batch, size, size, device=device) > 0.1
    pixels = batch * size * size
    read = pixels * (4 + 4 + 1)
    _loss_case(benchmark, impl, device, training, pred, (target, None, mask, None, 1),
               ("affine", device, batch, size, pass_), read, pixels)  # fmt: skip


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("device,batch,size", CUTMIX_CASES)
def test_cutmix(benchmark, impl: str, pass_: str, device: str, batch: int, size: int):
    """CutMix (UniMatch box, ~20% of the image) with a validity mask."""
    _skip_unavailable(device, impl)
    training = pass_ == "fwd+bwd"
    benchmark.group = f"cutmix {device} B={batch} {size}x{size} {pass_}"
    pred = torch.randn(batch, size, size, device=device, requires_grad=True)
    target_a = torch.rand(batch, size, size, device=device) + 0.1
    target_b = torch.rand(batch, size, size, device=device) + 0.1
    mask = torch.rand(batch, size, size, device=device) > 0.1
    box = torch.zeros(batch, size, size, dtype=torch.bool, device=device)
    side = int(size * 0.45)
    box[:, size // 5 : size // 5 + side, size // 3 : size // 3 + side] = True
    pixels = batch * size * size
    read = pixels * (4 + 4 + 1 + 1)  # pred, the pixel's target, box, mask
    _loss_case(benchmark, impl, device, training, pred, (target_a, target_b, mask, box, 2),
               ("cutmix", device, batch, size, pass_), read, pixels)  # fmt: skip


def _loss_case(benchmark, impl: str, device: str, training: bool, pred: torch.Tensor,
               inputs: tuple, key: tuple, read: int, pixels: int) -> None:  # fmt: skip
    """Time `impl` of the affine-invariant loss (CutMix when inputs has target_b)."""
    target, target_b, mask, box, num_segments = inputs
    batch = pred.shape[0]

    def reference(p, t, tb, m, bx) -> torch.Tensor:  # noqa: ANN001
        flat = [None if x is None else x.reshape(batch, -1) for x in (p, t, tb, m, bx)]
        args = AffineInvariantArgs(*flat, num_segments, mean=True)
        return affine_invariant_op(args, "reference")

    if impl == "fused":
        backend = "cpu" if device == "cpu" else "triton"
        if target_b is None:
            def loss_fn() -> torch.Tensor:
                return affine_invariant_loss(pred, target, mask, backend=backend)
        else:
            def loss_fn() -> torch.Tensor:
                return cutmix_loss(pred, target, target_b, box, mask, backend=backend)
    else:
        fn = reference
        if impl == "compiled":
            fn = _compiled.setdefault(key, torch.compile(reference))

        def loss_fn() -> torch.Tensor:
            return fn(pred, target, target_b, mask, box)

    if impl != "eager":
        target64, target_b64 = (None if t is None else t.double() for t in (target, target_b))
        check_against_reference(
            loss_fn, lambda p: reference(p, target64, target_b64, mask, box), pred, training
        )
    _run(benchmark, loss_fn, pred, device, training, read + (pixels * 4 if training else 0))
    if impl == "fused" and device == "cuda":
        benchmark.extra_info["design_bytes"] = design_bytes(key[0], pixels, training, read)
    benchmark.extra_info["scratch_MiB"] = (
        round(torch.get_num_threads() * 16 * pixels / batch / 2**20, 2)
        if impl == "fused" and device == "cpu"
        else 0.0
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("device,batch,tokens,channels", FEATURE_CASES)
def test_feature_alignment(
    benchmark, impl: str, pass_: str, device: str, batch: int, tokens: int, channels: int
):
    _skip_unavailable(device, impl)
    training = pass_ == "fwd+bwd"
    benchmark.group = f"feature_alignment {device} ({batch}, {tokens}, {channels}) {pass_}"
    features = torch.randn(batch, tokens, channels, device=device, requires_grad=True)
    # Per-token noise levels spread the similarities on both sides of alpha = 0.85.
    noise = torch.rand(batch, tokens, 1, device=device)
    frozen = features.detach() + noise * torch.randn(batch, tokens, channels, device=device)
    elements = batch * tokens * channels
    bytes_moved = elements * 4 * 2 + (elements * 4 if training else 0)
    if impl == "fused":
        backend = "cpu" if device == "cpu" else "triton"

        def loss_fn() -> torch.Tensor:
            return feature_alignment_loss(features, frozen, 0.85, backend=backend)
    else:
        fn = feature_alignment_loss_reference
        if impl == "compiled":
            fn = _compiled.setdefault(
                ("feature", device, batch, tokens, channels, pass_),
                torch.compile(feature_alignment_loss_reference),
            )

        def loss_fn() -> torch.Tensor:
            return fn(features, frozen, 0.85)

    if impl != "eager":
        frozen64 = frozen.double()
        check_against_reference(
            loss_fn, lambda f: feature_alignment_loss_reference(f, frozen64, 0.85), features,
            training,
        )
    _run(benchmark, loss_fn, features, device, training, bytes_moved)
    if impl == "fused" and device == "cuda":
        benchmark.extra_info["design_bytes"] = design_bytes(
            "feature_alignment", elements, training, elements * 4 * 2
        )


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_copy_bandwidth(benchmark) -> None:
    src = torch.empty(2**28, device="cuda")  # 1 GiB: far beyond the L2 cache
    dst = torch.empty_like(src)
    benchmark.group = "copy bandwidth cuda"
    _time(benchmark, lambda: dst.copy_(src), "cuda", 2 * src.numel() * 4)
