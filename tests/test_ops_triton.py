"""Dispatch of the public losses to the Triton kernels (triton_op wrappers, autograd, opcheck).

On a CPU-only machine this runs through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), so shapes stay tiny. The kernels themselves are tested in depth in
test_kernels_triton.py; this checks the ops layer end to end against float64 references.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from depth_anything_fast.losses import affine_invariant_loss, cutmix_loss, feature_alignment_loss
from depth_anything_fast.losses.reference import (
    affine_invariant_loss_reference,
    feature_alignment_loss_reference,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None
    or (DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1"),
    reason="needs triton with CUDA or TRITON_INTERPRET=1",
)


def test_affine_invariant_triton_values_and_grads():
    batch, h, w, segments_n = 3, 9, 13, 2
    pred = torch.randn(batch, h, w, device=DEVICE)
    target = torch.rand(batch, h, w, device=DEVICE)
    mask = torch.rand(batch, h, w, device=DEVICE) > 0.3
    mask[1] = False  # an empty image
    target[0, 0, :3] = float("nan")
    segments = torch.randint(0, segments_n, (batch, h, w), device=DEVICE)
    weights = torch.rand(batch, dtype=torch.float64, device=DEVICE) + 0.5
    p64 = pred.double().requires_grad_()
    expected, _ = affine_invariant_loss_reference(
        p64.reshape(batch, -1),
        target.double().reshape(batch, -1),
        mask.reshape(batch, -1),
        segments.reshape(batch, -1),
        segments_n,
    )
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), p64)
    p = pred.clone().requires_grad_()
    loss = affine_invariant_loss(
        p, target, mask, segments, num_segments=segments_n, reduction="none", backend="triton"
    )
    (loss * weights.float()).sum().backward()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=2e-5, atol=2e-5)
    scale = expected_grad.abs().max().item()
    torch.testing.assert_close(p.grad.double(), expected_grad, atol=2e-5 * scale, rtol=0)


def test_cutmix_and_feature_alignment_triton():
    """CutMix: the kernels pick target and segment from the box (bool or uint8), values and
    gradients against the float64 reference."""
    pred, target_a, target_b = (torch.rand(2, 8, 10, device=DEVICE) for _ in range(3))
    target_b[0, 0, :4] = float("nan")
    box = torch.zeros(2, 8, 10, dtype=torch.bool, device=DEVICE)
    box[:, 2:6, 3:8] = True
    mask = torch.rand(2, 8, 10, device=DEVICE) > 0.2
    p64 = pred.double().requires_grad_()
    expected = cutmix_loss(
        p64, target_a.double(), target_b.double(), box, mask, backend="reference"
    )
    (expected_grad,) = torch.autograd.grad(expected, p64)
    for as_box in (box, box.to(torch.uint8)):
        p = pred.clone().requires_grad_()
        got = cutmix_loss(p, target_a, target_b, as_box, mask, backend="triton")
        got.backward()
        torch.testing.assert_close(got.double(), expected.detach(), rtol=2e-5, atol=2e-5)
        scale = expected_grad.abs().max().item()
        torch.testing.assert_close(p.grad.double(), expected_grad, atol=2e-5 * scale, rtol=0)

    features = torch.randn(2, 6, 32, device=DEVICE)
    frozen = features + torch.rand(2, 6, 1, device=DEVICE) * torch.randn(2, 6, 32, device=DEVICE)
    f64 = features.double().requires_grad_()
    expected = feature_alignment_loss_reference(f64, frozen.double(), 0.85)
    (expected_grad,) = torch.autograd.grad(expected, f64)
    f = features.clone().requires_grad_()
    loss = feature_alignment_loss(f, frozen, 0.85, backend="triton")
    loss.backward()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=2e-5, atol=2e-5)
    scale = expected_grad.abs().max().item() or 1.0
    torch.testing.assert_close(f.grad.double(), expected_grad, atol=2e-5 * scale, rtol=0)


def test_opcheck_triton_ops():
    """Full opcheck on CUDA; the interpreter runs kernels on FakeTensors, so not the fake test."""
    from depth_anything_fast.ops.autograd import CUSTOM_OPS

    checks = ("test_schema", "test_autograd_registration")
    if DEVICE == "cuda":
        checks = (*checks, "test_faketensor", "test_aot_dispatch_dynamic")

    pred = torch.randn(2, 40, device=DEVICE, requires_grad=True)
    target = torch.rand(2, 40, device=DEVICE)
    mask = torch.rand(2, 40, device=DEVICE) > 0.2
    torch.library.opcheck(
        CUSTOM_OPS["affine_invariant", "triton"],
        (pred, target, None, mask, None, 1, True),
        test_utils=checks,
    )
    box = torch.rand(2, 40, device=DEVICE) > 0.5
    torch.library.opcheck(
        CUSTOM_OPS["affine_invariant", "triton"],
        (pred, target, target + 1, None, box, 2, False),
        test_utils=checks,
    )
    features = torch.randn(5, 16, device=DEVICE, requires_grad=True)
    torch.library.opcheck(
        CUSTOM_OPS["feature_alignment", "triton"],
        (features, torch.randn(5, 16, device=DEVICE), 0.85),
        test_utils=checks,
    )


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_triton_ops_on_a_device_that_is_not_current():
    """Inputs on cuda:1 while cuda:0 is current: the kernels launch on the inputs' device."""
    device = torch.device("cuda", 1)
    assert torch.cuda.current_device() == 0
    pred = torch.randn(3, 20, 24, device=device, requires_grad=True)
    target = torch.rand(3, 20, 24, device=device)
    expected = affine_invariant_loss(pred.double(), target.double(), backend="reference")
    loss = affine_invariant_loss(pred, target, backend="triton")
    loss.backward()
    assert loss.device == device and pred.grad.device == device
    torch.testing.assert_close(loss.double(), expected, rtol=2e-5, atol=2e-5)
    features = torch.randn(2, 6, 32, device=device, requires_grad=True)
    frozen = torch.randn(2, 6, 32, device=device)
    got = feature_alignment_loss(features, frozen, 0.85, backend="triton")
    got.backward()
    expected = feature_alignment_loss_reference(features.double(), frozen.double(), 0.85)
    torch.testing.assert_close(got.double(), expected, rtol=2e-5, atol=2e-5)
