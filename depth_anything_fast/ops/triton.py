"""Triton backend: the kernel interface (`ops.interface`) over the launchers of
`depth_anything_fast.kernels` (the repository's top-level `kernels/` folder).

The kernel modules are imported on the first launch, so importing this module imports no Triton
(TRITON_INTERPRET must be set before Triton is imported; CPU users opt into the interpreter after
importing the losses). Under TRITON_INTERPRET=1 the kernels run on CPU tensors.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from depth_anything_fast.ops import interface
from depth_anything_fast.ops.interface import FusedOp, Kernels


def _on_device_of(t: Tensor) -> contextlib.AbstractContextManager[object]:
    """Triton launches on the current CUDA device: make it the tensors' own (a loss on cuda:1
    while cuda:0 is current would otherwise launch on the wrong GPU)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def affine_invariant_forward(
    args: interface.AffineInvariantArgs,
) -> interface.AffineInvariantOutputs:
    """`kernels.affine_invariant.affine_invariant_forward` (5 launches)."""
    from depth_anything_fast.kernels.affine_invariant import affine_invariant_forward as launch

    with _on_device_of(args.pred):
        return interface.AffineInvariantOutputs(*launch(*args))


def affine_invariant_backward(grad: interface.AffineInvariantGradArgs) -> Tensor:
    """`kernels.affine_invariant.affine_invariant_backward` (1 launch)."""
    from depth_anything_fast.kernels.affine_invariant import affine_invariant_backward as launch

    with _on_device_of(grad.codes):
        return launch(*grad)


def feature_alignment_forward(
    args: interface.FeatureAlignmentArgs,
) -> interface.FeatureAlignmentOutputs:
    """`kernels.feature_alignment.feature_alignment_forward`."""
    from depth_anything_fast.kernels.feature_alignment import feature_alignment_forward as launch

    with _on_device_of(args.features):
        return interface.FeatureAlignmentOutputs(*launch(*args))


def feature_alignment_backward(grad: interface.FeatureAlignmentGradArgs) -> Tensor:
    """`kernels.feature_alignment.feature_alignment_backward`."""
    from depth_anything_fast.kernels.feature_alignment import feature_alignment_backward as launch

    with _on_device_of(grad.features):
        return launch(*grad)


KERNELS: dict[FusedOp, Kernels] = {
    interface.AFFINE_INVARIANT: Kernels(affine_invariant_forward, affine_invariant_backward),
    interface.FEATURE_ALIGNMENT: Kernels(feature_alignment_forward, feature_alignment_backward),
}
