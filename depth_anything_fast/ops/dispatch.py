"""The one dispatch of the fused ops: which backend computes a loss, then that one.

Implementations: "triton" (CUDA, or CPU tensors under TRITON_INTERPRET=1), "cpu" (the C++
extension), "reference" (plain PyTorch, `ops.pytorch`). "auto" picks triton for CUDA tensors
when Triton is installed, cpu for CPU tensors when the extension is built, else reference. An
backend asked for by name that cannot run the given tensors raises a ValueError (tensors)
or RuntimeError (installation) saying why. Inputs are validated by the caller (`losses`); this
module only routes.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

from depth_anything_fast.ops import cpu
from depth_anything_fast.ops.autograd import fused
from depth_anything_fast.ops.interface import (
    AFFINE_INVARIANT,
    FEATURE_ALIGNMENT,
    AffineInvariantArgs,
    FeatureAlignmentArgs,
)
from depth_anything_fast.ops.pytorch import (
    affine_invariant_loss_reference,
    feature_alignment_loss_reference,
)

BACKENDS = ("auto", "triton", "cpu", "reference")
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def triton_available() -> bool:
    """Triton is installed (importing it is left to the first kernel launch)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except ImportError:
        return False


def cpu_available() -> bool:
    """The C++ extension `depth_anything_fast._C` is built."""
    return cpu.extension() is not None


def _triton_device_ok(device: torch.device) -> bool:
    return device.type == "cuda" or (
        device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    )


def resolve_backend(backend: str, *tensors: Tensor) -> str:
    """The concrete backend for `tensors` (floating inputs first); raises if it cannot
    run them."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = tensors[0].device
    dtypes_ok = all(t.dtype in FUSED_DTYPES for t in tensors if t.is_floating_point())
    if backend == "auto":
        if not dtypes_ok:
            return "reference"
        if device.type == "cuda" and triton_available():
            return "triton"
        if device.type == "cpu" and cpu_available():
            return "cpu"
        return "reference"
    if backend == "reference":
        return backend
    if not dtypes_ok:
        found = sorted({str(t.dtype) for t in tensors if t.is_floating_point()})
        raise ValueError(
            f"backend={backend!r} supports float32/float16/bfloat16 inputs, got "
            f"{found}; use backend='reference' for float64"
        )
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' runs on CPU tensors, got tensors on {device}")
        cpu.require_extension()
        return backend
    if not triton_available():
        raise RuntimeError(
            "backend='triton' needs the triton package, which is not installed"
        )
    if not _triton_device_ok(device):
        raise ValueError(
            "backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 "
            f"set before triton is imported), got tensors on {device}"
        )
    return backend


def _contiguous(args: tuple) -> tuple:
    return type(args)(*(v.contiguous() if isinstance(v, Tensor) else v for v in args))


def affine_invariant(args: AffineInvariantArgs, backend: str = "auto") -> Tensor:
    """Affine-invariant loss of validated flat images (`AffineInvariantArgs`): float32 `()`
    with `args.mean` (over images with a valid pixel), else `(B,)`; float64 for float64 inputs
    on the reference backend. The fused backends launch their kernels only: no torch op
    before or after them."""
    floats = [t for t in (args.pred, args.target, args.target_b) if t is not None]
    backend = resolve_backend(backend, *floats)
    if backend != "reference":
        return fused(AFFINE_INVARIANT, backend, _contiguous(args))
    target, segments = args.target, args.segments
    if args.target_b is not None:  # CutMix: the box picks each pixel's target and segment
        box = segments != 0
        target = torch.where(box, target, args.target_b)
        segments = (~box).to(torch.int64)
    loss, n_valid = affine_invariant_loss_reference(
        args.pred, target, args.mask, segments, args.num_segments
    )
    return loss.sum() / (n_valid > 0).sum().clamp_min(1) if args.mean else loss


def feature_alignment(args: FeatureAlignmentArgs, backend: str = "auto") -> Tensor:
    """Mean 1 - cos over kept tokens of validated `(M, C)` inputs -> scalar float32."""
    backend = resolve_backend(backend, args.features, args.frozen)
    if backend != "reference":
        return fused(FEATURE_ALIGNMENT, backend, _contiguous(args))
    return feature_alignment_loss_reference(*args)
