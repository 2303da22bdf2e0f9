"""Fused loss operators: one dispatch over a plain PyTorch reference, a C++ and a Triton backend.

The route of a fused op, top to bottom (the affine-invariant loss; feature alignment alike):

1. `losses/affine_invariant.py`: `affine_invariant_loss` / `AffineInvariantLoss` (and
   `cutmix_loss`) check the inputs and flatten them into an `AffineInvariantArgs`;
2. `ops/dispatch.py`: `affine_invariant(args, backend)` resolves the backend
   ("auto" | "triton" | "cpu" | "reference") and either runs `ops/pytorch.py` (plain
   PyTorch, autograd) or hands the args to
3. `ops/autograd.py`: `fused(op, backend, args)`, the autograd formula (eager) or the
   custom op (`torch.compile`), which calls the backend's kernels:
4. `ops/cpu.py` -> `csrc/losses.cpp` (`depth_anything_fast._C`), or `ops/triton.py` ->
   `kernels/affine_invariant.py` (Triton, imported as `depth_anything_fast.kernels`).

`ops/interface.py` names each op's kernel arguments and outputs once (`AffineInvariantArgs`,
`AffineInvariantOutputs`, `AffineInvariantGradArgs`, ...), with the shape rules every backend
shares; `kernels/stats_layout.py` is the stats/code layout the C++ and Triton kernels share.
"""

from depth_anything_fast.ops.dispatch import (
    BACKENDS,
    affine_invariant,
    cpu_available,
    feature_alignment,
    resolve_backend,
    triton_available,
)
from depth_anything_fast.ops.interface import AffineInvariantArgs, FeatureAlignmentArgs

__all__ = [
    "BACKENDS",
    "AffineInvariantArgs",
    "FeatureAlignmentArgs",
    "affine_invariant",
    "cpu_available",
    "feature_alignment",
    "resolve_backend",
    "triton_available",
]
