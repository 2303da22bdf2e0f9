"""Fused loss operators: torch custom ops over the C++ and Triton kernels, and backend dispatch."""

from depth_anything_fast.ops.dispatch import (
    BACKENDS,
    affine_invariant,
    cpu_available,
    feature_alignment,
    resolve_backend,
    triton_available,
)

__all__ = [
    "BACKENDS",
    "affine_invariant",
    "cpu_available",
    "feature_alignment",
    "resolve_backend",
    "triton_available",
]
