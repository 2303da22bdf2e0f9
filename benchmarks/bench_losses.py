"""Fused losses vs the eager PyTorch reference vs torch.compile(reference), side by side.

    pytest benchmarks/bench_losses.py --benchmark-only --benchmark-json out.json

One benchmark group per (loss, device, shape, pass); `impl` is "fused" (C++ on CPU, Triton on
CUDA), "eager" or "compiled". extra_info: `GB/s` = bytes that must be moved (inputs read once,
plus the gradient written once for fwd+bwd) / mean time, and `peak_MiB` = peak memory allocated
by one call above what was live before it (CPU: torch profiler allocation events, which do not
see the C++ kernels' own scratch, reported as `scratch_MiB`; CUDA: max_memory_allocated).

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
from support import peak_memory_mib

from depth_anything_fast.losses import affine_invariant_loss, feature_alignment_loss
from depth_anything_fast.losses.reference import (
    affine_invariant_loss_reference,
    feature_alignment_loss_reference,
)
from depth_anything_fast.ops import cpu_available

CUDA = torch.cuda.is_available()
IMPLS = ("fused", "eager", "compiled")
PASSES = ("fwd", "fwd+bwd")
AFFINE_CASES = [
    ("cpu", 4, 256),
    ("cpu", 16, 256),
    ("cpu", 4, 518),
    ("cuda", 4, 518),
    ("cuda", 16, 518),
]
FEATURE_CASES = [("cpu", 16, 1369, 1024), ("cuda", 16, 1369, 1024)]
CUDA_STEPS = 20
_compiled: dict[tuple, Callable] = {}


def _skip_unavailable(device: str, impl: str) -> None:
    if device == "cuda" and not CUDA:
        pytest.skip("no CUDA device")
    if device == "cpu" and impl == "fused" and not cpu_available():
        pytest.skip("C++ extension not built")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


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
    bytes_moved = pixels * (4 + 4 + 1) + (pixels * 4 if training else 0)
    if impl == "fused":
        backend = "cpu" if device == "cpu" else "triton"

        def loss_fn() -> torch.Tensor:
            return affine_invariant_loss(pred, target, mask, backend=backend)
    else:

        def reference(p: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            loss, n_valid = affine_invariant_loss_reference(
                p.reshape(batch, -1), t.reshape(batch, -1), m.reshape(batch, -1)
            )
            return loss.sum() / (n_valid > 0).sum().clamp_min(1)

        fn = reference
        if impl == "compiled":
            fn = _compiled.setdefault(
                ("affine", device, batch, size, pass_), torch.compile(reference)
            )

        def loss_fn() -> torch.Tensor:
            return fn(pred, target, mask)

    _run(benchmark, loss_fn, pred, device, training, bytes_moved)
    benchmark.extra_info["scratch_MiB"] = (
        round(torch.get_num_threads() * 16 * size * size / 2**20, 2)
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

    _run(benchmark, loss_fn, features, device, training, bytes_moved)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_copy_bandwidth(benchmark) -> None:
    src = torch.empty(2**28, device="cuda")  # 1 GiB: far beyond the L2 cache
    dst = torch.empty_like(src)
    benchmark.group = "copy bandwidth cuda"
    _time(benchmark, lambda: dst.copy_(src), "cuda", 2 * src.numel() * 4)
