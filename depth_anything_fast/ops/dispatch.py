"""Backend selection and the two fused entry points used by `depth_anything_fast.losses`.

Backends: "triton" (CUDA, or CPU tensors under TRITON_INTERPRET=1), "cpu" (the C++ extension),
"reference" (plain PyTorch). "auto" picks triton for CUDA tensors when Triton is installed,
cpu for CPU tensors when the extension is built, else reference. A backend asked for by name
that cannot run the given tensors raises a ValueError (tensors) or RuntimeError (installation)
saying why. Inputs are validated by the caller; this module only routes (the reference
implementations live beside it, in `ops.reference`; `losses` depends on `ops`, never back).
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import torch
from torch import Tensor

from depth_anything_fast.ops import cpu
from depth_anything_fast.ops.autograd import AffineInvariantFunction, FeatureAlignmentFunction
from depth_anything_fast.ops.reference import (
    affine_invariant_loss_reference,
    feature_alignment_loss_reference,
)

BACKENDS = ("auto", "triton", "cpu", "reference")
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # the parent package itself is missing
        return False


def triton_available() -> bool:
    """Triton is installed (importing it is left to the first kernel launch)."""
    return _module_exists("triton")


def cpu_available() -> bool:
    """The C++ extension `depth_anything_fast._C` is built."""
    return cpu.extension() is not None


def _triton_device_ok(device: torch.device) -> bool:
    return device.type == "cuda" or (
        device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    )


def _triton_ops() -> ModuleType:
    # Imported on first use: defining triton_ops imports triton, and TRITON_INTERPRET must be
    # set before that happens (CPU users opt into the interpreter after importing the losses).
    from depth_anything_fast.ops import triton as triton_ops

    return triton_ops


def resolve_backend(backend: str, kernel_module: str, *tensors: Tensor) -> str:
    """The concrete backend for `tensors` (floating inputs first); raises if it cannot run them.

    `kernel_module` names the Triton launcher module the triton backend needs
    (e.g. "affine_invariant").
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = tensors[0].device
    dtypes_ok = all(t.dtype in FUSED_DTYPES for t in tensors if t.is_floating_point())
    kernels = f"depth_anything_fast.kernels.{kernel_module}"
    if backend == "auto":
        if not dtypes_ok:
            return "reference"
        if device.type == "cuda" and triton_available() and _module_exists(kernels):
            return "triton"
        if device.type == "cpu" and cpu_available():
            return "cpu"
        return "reference"
    if backend == "reference":
        return backend
    if not dtypes_ok:
        found = sorted({str(t.dtype) for t in tensors if t.is_floating_point()})
        raise ValueError(
            f"backend={backend!r} supports float32/float16/bfloat16 inputs, got {found}; "
            "use backend='reference' for float64"
        )
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' runs on CPU tensors, got tensors on {device}")
        cpu.require_extension()
        return backend
    if not triton_available():
        raise RuntimeError("backend='triton' needs the triton package, which is not installed")
    if not _module_exists(kernels):
        raise RuntimeError(f"backend='triton': kernel module {kernels} is missing")
    if not _triton_device_ok(device):
        raise ValueError(
            f"backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set "
            f"before triton is imported), got tensors on {device}"
        )
    return backend


def affine_invariant(
    pred: Tensor,
    target: Tensor,
    target_b: Tensor | None,
    mask: Tensor | None,
    segments: Tensor | None,
    num_segments: int,
    reduction: str,
    backend: str = "auto",
) -> Tensor:
    """Affine-invariant loss on validated flat images.

    pred, target: `(B, L)` float; mask: `(B, L)` bool or None; segments: `(B, L)` integer or
    None. With `target_b` (CutMix), `segments` is the box (bool/uint8, True: `target`, segment
    0; else `target_b`, segment 1) and num_segments is 2. reduction: "mean" (over images with a
    valid pixel) or "none" (`(B,)`). Returns float32 (float64 for float64 reference inputs).
    The fused backends launch their kernels only: no torch op before or after them.
    """
    floats = (pred, target) if target_b is None else (pred, target, target_b)
    resolved = resolve_backend(backend, "affine_invariant", *floats)
    mean = reduction == "mean"
    if resolved == "reference":
        if target_b is not None:
            box = segments != 0
            target = torch.where(box, target, target_b)
            segments = (~box).to(torch.int64)
        loss, n_valid = affine_invariant_loss_reference(pred, target, mask, segments, num_segments)
        return loss.sum() / (n_valid > 0).sum().clamp_min(1) if mean else loss
    inputs = (
        pred.contiguous(), target.contiguous(), _contiguous(target_b), _contiguous(mask),
        _contiguous(segments), num_segments, mean,
    )  # fmt: skip
    backend_ops = cpu if resolved == "cpu" else _triton_ops()
    if torch.compiler.is_compiling():  # the custom op: one node for the compiler
        op = cpu.affine_invariant_cpu if resolved == "cpu" else backend_ops.affine_invariant_triton
        loss, _, _, _ = op(*inputs)
        return loss
    return AffineInvariantFunction.apply(backend_ops.AFFINE_INVARIANT, *inputs)


def _contiguous(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def feature_alignment(
    features: Tensor, frozen: Tensor, alpha: float, backend: str = "auto"
) -> Tensor:
    """Mean 1 - cos over kept tokens: validated `(M, C)` inputs -> scalar float32."""
    resolved = resolve_backend(backend, "feature_alignment", features, frozen)
    if resolved == "reference":
        return feature_alignment_loss_reference(features, frozen, alpha)
    inputs = (features.contiguous(), frozen.detach().contiguous(), float(alpha))
    backend_ops = cpu if resolved == "cpu" else _triton_ops()
    if torch.compiler.is_compiling():
        op = (
            cpu.feature_alignment_cpu if resolved == "cpu" else backend_ops.feature_alignment_triton
        )
        loss, _, _ = op(*inputs)
        return loss
    return FeatureAlignmentFunction.apply(backend_ops.FEATURE_ALIGNMENT, *inputs)
