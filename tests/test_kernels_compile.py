"""Every Triton kernel compiles for an H100/H200 (sm_90), also on a machine without a GPU.

The interpreter that runs the kernel tests on CPU-only machines accepts programs the compiler
rejects (a loop-carried value changing type, an op without a lowering, a block too large for
the registers). Here the Python launchers run on fake CUDA tensors (`FakeTensorMode`: shapes
and dtypes, no memory) with the GPU tiling, and each launch is compiled to a cubin by Triton's
own toolchain (ptxas ships with Triton) instead of being run, with the launch's argument types,
constexprs and `num_warps`. A child process does the work: the test process has imported
Triton in interpreter mode.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SM90_PROGRAMS = 132  # H100 SXM / H200: sets the chunks per image of the tile plan


def test_every_kernel_compiles_for_sm90(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    out = tmp_path / "compiled.json"
    run = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True,
                         text=True, timeout=600)
    if run.returncode == 3:
        pytest.skip(run.stdout.strip())
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["kernels"] and sorted(result["compiled"]) == sorted(result["kernels"])
    assert result["launches"] >= 40  # dtypes x validity flags x segment modes x reductions


# ------------------------------------------------------------------------- the child process
_POINTER_TYPES = {
    "float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int32": "i32", "int64": "i64",
    "bool": "i1", "uint8": "u8",
}


def _signature(fn, args: tuple, kwargs: dict) -> tuple[dict[str, str], dict[str, object]]:
    """Triton's launch-time types: tensors -> pointers, ints -> i32/i64 (1 -> constexpr, as
    the JIT specialises it), floats -> fp32, constexpr parameters by value."""
    import torch

    bound = inspect.signature(fn.fn).bind(*args, **kwargs)
    bound.apply_defaults()
    signature: dict[str, str] = {}
    constexprs: dict[str, object] = {}
    for param in fn.params:
        value = bound.arguments[param.name]
        if param.is_constexpr or value is None:
            signature[param.name], constexprs[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + _POINTER_TYPES[str(value.dtype).removeprefix("torch.")]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            if value == 1:
                signature[param.name], constexprs[param.name] = "constexpr", 1
            else:
                signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"{fn.fn.__name__}: argument {param.name} of type {type(value)}")
    return signature, constexprs


def _compile_all(out: Path) -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    sm90 = GPUTarget("cuda", 90, 32)
    try:
        @triton.jit
        def _probe(x_ptr):
            triton.language.store(x_ptr, 1.0)

        triton.compile(ASTSource(_probe, {"x_ptr": "*fp32"}, {}), target=sm90)
    except Exception as exc:  # noqa: BLE001 - no CUDA backend/toolchain in this Triton
        print(f"Triton cannot compile for sm_90 here ({type(exc).__name__}: {exc})")
        sys.exit(3)

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from depth_anything_fast.kernels import (
        affine_invariant,
        feature_alignment,
        radix_select,
        segmented,
        stats_layout,
    )

    modules = (affine_invariant, feature_alignment)
    kernels = sorted({
        name for module in modules for name, obj in vars(module).items()
        if isinstance(obj, JITFunction) and name.endswith("_kernel")
    })
    seen: set[str] = set()
    compiled: set[str] = set()
    launches = 0

    def compile_launch(self, *args, grid, warmup, **kwargs):
        nonlocal launches
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
        signature, constexprs = _signature(self, args, kwargs)
        key = json.dumps([self.fn.__name__, signature, constexprs, options], default=str)
        launches += 1
        if key in seen:
            return
        seen.add(key)
        try:
            kernel = triton.compile(ASTSource(self, signature, constexprs), target=sm90,
                                    options=options)
        except Exception as exc:
            raise RuntimeError(f"{self.fn.__name__} {signature} {constexprs} {options}") from exc
        if kernel.asm.get("cubin"):  # through ptxas: register allocation and all
            compiled.add(self.fn.__name__)

    JITFunction.run = compile_launch
    for module in modules:  # launch directly: torch's wrapper would not run under fake tensors
        module.wrap_triton = lambda kernel: kernel
    segmented._sm_count = lambda index: SM90_PROGRAMS
    cuda = torch.device("cuda", 0)
    with FakeTensorMode(allow_non_fake_inputs=True):
        B, L = 16, 518 * 518
        mask = torch.empty(B, L, dtype=torch.bool, device=cuda)
        box = torch.empty(B, L, dtype=torch.bool, device=cuda)
        i64 = torch.empty(B, L, dtype=torch.int64, device=cuda)
        i32 = torch.empty(B, L, dtype=torch.int32, device=cuda)
        # (dtype, CutMix?, segments, S, mask, mean, histogram): every segment mode, reduction and
        # histogram kind once in fp32, both half precisions once. One-hot widths
        # beyond 2 segments compile for minutes on 2 cores: the interpreter tests cover them,
        # and the backward's segment-map path (> 16 segments) is compiled on its own below.
        cases = [
            (torch.float32, False, None, 1, mask, True, "auto"),
            (torch.float32, False, None, 1, None, False, "atomics"),
            (torch.float32, False, i64, 2, mask, False, "auto"),
            (torch.float32, True, box, 2, mask, True, "auto"),
            (torch.float32, True, box.to(torch.uint8), 2, None, False, "auto"),
            (torch.bfloat16, False, None, 1, mask, True, "auto"),
            (torch.float16, True, box, 2, mask, True, "auto"),
        ]  # fmt: skip
        for dtype, cutmix, segments, num_segments, m, mean, histogram in cases:
            os.environ[radix_select.HISTOGRAM_ENV] = histogram
            pred = torch.empty(B, L, dtype=dtype, device=cuda)
            target = torch.empty(B, L, dtype=dtype, device=cuda)
            loss, stats, counts, codes = affine_invariant.affine_invariant_forward(
                pred, target, target if cutmix else None, m, segments, num_segments, mean
            )
            affine_invariant.affine_invariant_backward(
                torch.empty(loss.shape, device=cuda), codes, segments, stats, counts, dtype
            )
        os.environ[radix_select.HISTOGRAM_ENV] = "auto"
        many = 20  # more segments than a code byte holds: the backward reads the map
        affine_invariant.affine_invariant_backward(
            torch.empty(B, device=cuda), torch.empty(B, L, dtype=torch.uint8, device=cuda), i32,
            torch.empty(B, many, stats_layout.NUM_STATS, device=cuda),
            torch.empty(B, many, stats_layout.NUM_COUNTS, dtype=torch.int64, device=cuda),
            torch.float32,
        )
        for dtype in (torch.float32, torch.bfloat16):
            features = torch.empty(16 * 1369, 1024, dtype=dtype, device=cuda)
            frozen = torch.empty_like(features)
            loss, cos, n_kept = feature_alignment.feature_alignment_forward(features, frozen, 0.85)
            feature_alignment.feature_alignment_backward(
                torch.empty((), device=cuda), features, frozen, 0.85, cos, n_kept
            )
    out.write_text(json.dumps({"kernels": kernels, "compiled": sorted(compiled),
                               "launches": launches}))


if __name__ == "__main__":
    _compile_all(Path(sys.argv[1]))
