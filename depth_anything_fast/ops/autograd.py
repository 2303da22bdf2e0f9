"""The autograd and custom-op layer of the fused ops: `fused(op, backend, args)`.

One formula serves every op and backend: the forward's outputs and inputs give the backward's
inputs (`FusedOp.saved`), the backend's backward kernel gives the gradient of the op's first
argument (pred, features); no other input gets one. Two paths run it:

- eager: the `FusedFunction` autograd.Function calls the backend's kernels directly, skipping
  the custom-op dispatch (about 0.3 ms of Python per forward+backward, comparable to the
  kernels themselves on small images);
- under `torch.compile`: the custom ops `depth_anything_fast::<op>_<backend>` and
  `<op>_backward_<backend>` (schema read from the op's argument tuples, fake
  implementations from its shape rules), so that the compiler sees one node per op and
  `torch.compile(fullgraph=True)` traces a step without breaks.

Gradients of outputs that are not differentiable (stats, counts, codes, cos) are not
materialised: no zero-fill launches in the backward.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from depth_anything_fast.ops import cpu, triton
from depth_anything_fast.ops.interface import FUSED_OPS, FusedOp, Kernels

# The fused backends' kernels (`ops.dispatch.BACKENDS` less auto/reference).
KERNELS_BY_BACKEND: dict[str, dict[FusedOp, Kernels]] = {"cpu": cpu.KERNELS, "triton": triton.KERNELS}
# Where each backend's custom ops run: C++ on CPU tensors; Triton on CUDA tensors, or on CPU
# tensors under its interpreter.
_DEVICE_TYPES: dict[str, str | None] = {"cpu": "cpu", "triton": None}


def fused(op: FusedOp, backend: str, args: tuple) -> Tensor:
    """The loss (first output) of `op` on `args` (an `op.args` tuple of contiguous tensors) by
    the fused backend `backend` ("cpu" or "triton"), differentiable in `args[0]`."""
    if torch.compiler.is_compiling():
        return CUSTOM_OPS[op.name, backend](*args)[0]
    return FusedFunction.apply(op, KERNELS_BY_BACKEND[backend][op], *args)


def _save(ctx: Any, op: FusedOp, args: tuple, outputs: tuple) -> None:
    """Keep what the backward needs: tensors through `save_for_backward`, the rest on ctx."""
    saved = op.saved(op.args(*args), op.outputs(*outputs))
    ctx.tensor_fields = [isinstance(v, Tensor) for v in saved]
    ctx.save_for_backward(*(v for v, is_tensor in zip(saved, ctx.tensor_fields) if is_tensor))
    ctx.other_fields = [None if is_tensor else v for v, is_tensor in zip(saved, ctx.tensor_fields)]
    ctx.grad_args = op.grad_args
    ctx.set_materialize_grads(False)


def _grad_args(ctx: Any, grad_loss: Tensor) -> tuple:
    """The backward kernel's `op.grad_args` tuple, the loss's gradient in float32 first."""
    tensors = iter(ctx.saved_tensors)
    saved = [next(tensors) if is_tensor else v
             for v, is_tensor in zip(ctx.other_fields, ctx.tensor_fields)]  # fmt: skip
    return ctx.grad_args(grad_loss.to(torch.float32).contiguous(), *saved[1:])


class FusedFunction(torch.autograd.Function):
    """Eager path: `apply(op, kernels, *args)` -> the loss (the forward kernel's first output)."""

    @staticmethod
    def forward(ctx: Any, op: FusedOp, kernels: Kernels, *args: Any) -> Tensor:
        outputs = kernels.forward(op.args(*args))
        _save(ctx, op, args, outputs)
        ctx.backward_kernel = kernels.backward
        return outputs[0]

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None) -> tuple:
        no_grads = (None,) * (len(ctx.needs_input_grad) - 3)
        if grad_loss is None or not ctx.needs_input_grad[2]:
            return (None, None, None, *no_grads)
        return (None, None, ctx.backward_kernel(_grad_args(ctx, grad_loss)), *no_grads)


# ----------------------------------------------------------------------------- custom ops
def _flat(fn: Callable[[Any], Any], args_type: type[tuple], returns: Any) -> Callable[..., Any]:
    """`fn` of one `args_type` tuple as a function of its fields, with the signature (names and
    type hints) `torch.library` reads the op schema from."""

    def flat(*values: Any) -> Any:
        result = fn(args_type(*values))
        return tuple(result) if isinstance(result, tuple) else result

    hints = typing.get_type_hints(args_type)
    flat.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=hints[name])
         for name in args_type._fields],  # type: ignore[attr-defined]
        return_annotation=returns,
    )  # fmt: skip
    return flat


def _define_custom_op(op: FusedOp, backend: str) -> torch.library.CustomOpDef:
    """The forward custom op of `op` by `backend`, its backward op and autograd."""
    kernels = KERNELS_BY_BACKEND[backend][op]
    device_types = _DEVICE_TYPES[backend]
    outputs = tuple[tuple(typing.get_type_hints(op.outputs).values())]  # type: ignore[misc]
    forward = torch.library.custom_op(
        f"depth_anything_fast::{op.name}_{backend}",
        _flat(kernels.forward, op.args, outputs), mutates_args=(), device_types=device_types,
    )  # fmt: skip
    backward = torch.library.custom_op(
        f"depth_anything_fast::{op.name}_backward_{backend}",
        _flat(kernels.backward, op.grad_args, Tensor), mutates_args=(),
        device_types=device_types,
    )  # fmt: skip
    forward.register_fake(_flat(op.empty_outputs, op.args, outputs))
    backward.register_fake(_flat(op.empty_grad, op.grad_args, Tensor))

    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        _save(ctx, op, inputs, output)

    def backward_formula(ctx: Any, grad_loss: Tensor | None, *_: Tensor | None) -> tuple:
        no_grads = (None,) * (len(op.args._fields) - 1)  # type: ignore[attr-defined]
        if grad_loss is None or not ctx.needs_input_grad[0]:
            return (None, *no_grads)
        return (backward(*_grad_args(ctx, grad_loss)), *no_grads)

    forward.register_autograd(backward_formula, setup_context=setup_context)
    return forward


CUSTOM_OPS: dict[tuple[str, str], torch.library.CustomOpDef] = {
    (op.name, backend): _define_custom_op(op, backend)
    for op in FUSED_OPS
    for backend in KERNELS_BY_BACKEND
}
