"""Kernel launches per forward + backward of each fused loss, counted on the CPU.

A launch is either a Triton kernel (counted at the interpreter's `run`, i.e. one per grid) or a
torch operator that would launch a device kernel: everything the dispatcher sees except views,
metadata-only ops and uninitialised allocations (`torch.empty*`). Fills (`torch.zeros`), copies,
casts, reductions and arithmetic in the launchers, the ops layer, the public functions and the
autograd formulas all count; torch ops the interpreter itself runs to emulate a kernel do not.
The caller's seed gradient is made outside the count (`loss.backward(seed)`).

Each launch costs ~3-5 us of host time on a GPU, about what moving 10-15 MB takes, so the
limits below are design limits: they fail when someone adds a fill, a scan or a bit of torch
glue around the kernels. The lower bound makes the count able to fail the other way: the forward
and the backward each launch at least one Triton kernel (a hook that counted nothing, or a
`backend="triton"` that ran torch code instead, would otherwise pass).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from depth_anything_fast.losses import affine_invariant_loss, cutmix_loss, feature_alignment_loss

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") != "1",
    reason="counts Triton launches under the interpreter (TRITON_INTERPRET=1, no CUDA)",
)

LIMITS = {"affine_invariant": 6, "cutmix": 6, "feature_alignment": 3}
# Allocations that launch nothing (uninitialised memory).
_NO_LAUNCH = {"empty.memory_format", "empty_strided.default", "empty_like.default"}


class _LaunchCounter(TorchDispatchMode):
    """Records torch ops that would launch a kernel, plus Triton grids (see module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.launches: Counter[str] = Counter()
        self.in_triton = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        namespace = func.namespace
        if namespace not in ("aten", "prims"):
            # A custom op (the fused losses' own): count what runs inside it, not the op itself.
            # Redispatching to the backend key skips this mode's own key (no recursion).
            backend = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
            with self:
                return func.redispatch(backend, *args, **kwargs)
        name = func.__name__ if "." in func.__name__ else f"{func.__name__}.default"
        if not self.in_triton and not func.is_view and name not in _NO_LAUNCH:
            if name not in ("detach.default", "alias.default", "_local_scalar_dense.default"):
                self.launches[f"torch:{name}"] += 1
            if name == "_local_scalar_dense.default":
                raise AssertionError("a host sync (.item()) inside a fused loss")
        return func(*args, **kwargs)

    @contextlib.contextmanager
    def triton_hook(self) -> Iterator[None]:
        from triton.runtime.interpreter import InterpretedFunction

        original = InterpretedFunction.run
        counter = self

        def run(kernel, *args, **kwargs):  # noqa: ANN001, ANN202
            counter.launches[f"triton:{kernel.fn.__name__}"] += 1
            counter.in_triton += 1
            try:
                return original(kernel, *args, **kwargs)
            finally:
                counter.in_triton -= 1

        InterpretedFunction.run = run
        try:
            yield
        finally:
            InterpretedFunction.run = original


def count_launches(
    step: Callable[[], torch.Tensor], leaf: torch.Tensor
) -> tuple[Counter[str], Counter[str]]:
    """Launches of `step()` (the forward) and of its backward from `leaf`'s loss."""
    step().backward(torch.ones(()))  # warm-up: first-call caches stay out of the count
    leaf.grad = None
    seed = torch.ones(())
    forward, backward = _LaunchCounter(), _LaunchCounter()
    with forward.triton_hook(), forward:
        loss = step()
    with backward.triton_hook(), backward:
        loss.backward(seed)
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    return forward.launches, backward.launches


def check_launches(name: str, step: Callable[[], torch.Tensor], leaf: torch.Tensor) -> None:
    """At most `LIMITS[name]` launches in all; at least one Triton kernel in each pass."""
    forward, backward = count_launches(step, leaf)
    launches = forward + backward
    assert sum(launches.values()) <= LIMITS[name], _report(name, launches)
    for pass_, counted in (("forward", forward), ("backward", backward)):
        triton = sum(v for k, v in counted.items() if k.startswith("triton:"))
        assert triton >= 1, f"{name}: no Triton launch counted in the {pass_}: {dict(counted)}"


def _images(batch: int = 2, h: int = 6, w: int = 7) -> dict[str, torch.Tensor]:
    return {
        "pred": torch.randn(batch, h, w, requires_grad=True),
        "target": torch.rand(batch, h, w),
        "target_b": torch.rand(batch, h, w),
        "mask": torch.rand(batch, h, w) > 0.2,
        "box": torch.rand(batch, h, w) > 0.5,
    }


def _report(name: str, launches: Counter[str]) -> str:
    listing = ", ".join(f"{k} x{v}" for k, v in sorted(launches.items()))
    return f"{name}: {sum(launches.values())} launches > {LIMITS[name]}: {listing}"


def test_affine_invariant_launches() -> None:
    x = _images()
    check_launches(
        "affine_invariant",
        lambda: affine_invariant_loss(x["pred"], x["target"], x["mask"], backend="triton"),
        x["pred"],
    )


def test_cutmix_launches() -> None:
    x = _images()
    check_launches(
        "cutmix",
        lambda: cutmix_loss(
            x["pred"], x["target"], x["target_b"], x["box"], x["mask"], backend="triton"
        ),
        x["pred"],
    )


def test_feature_alignment_launches() -> None:
    features = torch.randn(2, 5, 16, requires_grad=True)
    frozen = torch.randn(2, 5, 16)
    check_launches(
        "feature_alignment",
        lambda: feature_alignment_loss(features, frozen, 0.85, backend="triton"),
        features,
    )


def test_counter_sees_fills_and_arithmetic() -> None:
    """The counter itself: a zero-fill and an arithmetic op count, views and empty do not."""
    x = torch.randn(4, requires_grad=True)
    forward, backward = count_launches(lambda: (x.view(2, 2) * torch.zeros(2, 2)).sum(), x)
    launches = forward + backward
    assert launches["torch:zeros.default"] + launches["torch:fill_.Scalar"] + launches[
        "torch:zero_.default"
    ] >= 1, launches
    assert launches["torch:mul.Tensor"] >= 1 and not any("view" in k for k in launches)
