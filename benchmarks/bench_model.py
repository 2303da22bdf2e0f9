"""Model forward throughput and peak memory: ours vs transformers, attention backends.

Same weights (transformers' state dict loaded through our loader), same input, same precision.
CPU: vits at 518x518, batch 1 and 4, fp32. Attention backends at ViT-L shapes (N=1370,
16 heads of 64; batch 1 on CPU, 16 on GPU). GPU (skipped without CUDA): vits/vitl, batch
1/16/64, fp32 and bf16 eager, bf16 compiled. images/s and peak memory (MB) go to `extra_info`.

Before timing, each case's output is checked once against a reference: our forward against
transformers' fp32 forward (max |diff| <= 1e-4 x max |reference| in fp32, 0.1 x in bf16, the
tolerances of tests/test_model.py), each attention backend against float64 softmax attention
(1e-4 x max in fp32, 2e-2 in bf16), so a fast wrong forward fails instead of being timed.

    .venv/bin/python -m pytest benchmarks/bench_model.py --benchmark-only \
        --benchmark-json benchmarks/results/model_cpu.json
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from benchmark_support import peak_memory_mib

from depth_anything_fast.models import DepthAnything, DepthAnythingConfig
from depth_anything_fast.models import weights as ckpt
from depth_anything_fast.models.layers.attention import attention, resolve_attention_backend

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
ROUNDS = 10 if CUDA else 3


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


@functools.cache
def model_pair(encoder: str) -> tuple[torch.nn.Module, DepthAnything]:
    """(transformers model, our model) with identical random weights, fp32, eval."""
    import transformers

    config = DepthAnythingConfig.preset(encoder, "v2", interpolate_offset=0.0)
    backbone = transformers.Dinov2Config(
        image_size=518,
        patch_size=14,
        hidden_size=config.embed_dim,
        num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads,
        out_indices=[i + 1 for i in config.intermediate_layers],
        reshape_hidden_states=False,
    )
    hf_config = transformers.DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=config.embed_dim,
        neck_hidden_sizes=list(config.out_channels),
        fusion_hidden_size=config.features,
    )
    hf = transformers.DepthAnythingForDepthEstimation(hf_config).eval()
    ours = DepthAnything(config=config).eval()
    ckpt.load_into(ours, ckpt.to_ours(hf.state_dict()))
    return hf.to(DEVICE), ours.to(DEVICE)


def check_close(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """max |got - expected| <= tol x max |expected| (fp32 1e-4, reduced precision 0.1), and
    the reference is not constant."""
    tol = 1e-4 if dtype == torch.float32 else 0.1
    got, expected = got.double(), expected.double()
    assert got.shape == expected.shape and expected.std() > 0
    error = ((got - expected).abs().max() / expected.abs().max()).item()
    assert error <= tol, f"output off the reference by {error:.3g} x max (> {tol})"


def run_case(benchmark, fn: Callable[[], object], images: int) -> None:
    def timed() -> None:
        fn()
        _sync()

    benchmark.extra_info["peak_mem_mb"] = round(peak_memory_mib(timed, DEVICE), 1)
    benchmark.pedantic(timed, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = round(images / benchmark.stats.stats.mean, 2)


def forward_fn(
    impl: str, encoder: str, batch: int, dtype: torch.dtype, compiled: bool
) -> Callable[[], object]:
    hf, ours = model_pair(encoder)
    model = ours if impl == "ours" else hf
    if compiled:
        model = torch.compile(model)
    x = torch.randn(batch, 3, 518, 518, device=DEVICE)

    @torch.no_grad()
    def fn() -> object:
        with torch.autocast(DEVICE.type, dtype=dtype, enabled=dtype != torch.float32):
            return model(x) if impl == "ours" else model(pixel_values=x).predicted_depth

    if impl == "ours" or dtype != torch.float32 or compiled:  # else: the reference itself
        with torch.no_grad():
            expected = hf(pixel_values=x).predicted_depth
        check_close(fn(), expected, dtype)
    return fn


@pytest.mark.parametrize("impl", ["ours", "transformers"])
@pytest.mark.parametrize("batch", [1, 4])
def test_forward_cpu(benchmark, impl: str, batch: int) -> None:
    if CUDA:
        pytest.skip("CPU case")
    benchmark.group = f"forward vits 518x518 batch {batch} fp32 cpu"
    run_case(benchmark, forward_fn(impl, "vits", batch, torch.float32, False), batch)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
# Compiled in bf16 only: each compilation of a ViT-L costs about a minute of the GPU session.
@pytest.mark.parametrize(
    ("dtype", "compiled"),
    [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)],
    ids=["fp32-eager", "bf16-eager", "bf16-compiled"],
)
@pytest.mark.parametrize("batch", [1, 16, 64])
@pytest.mark.parametrize("encoder", ["vits", "vitl"])
@pytest.mark.parametrize("impl", ["ours", "transformers"])
def test_forward_gpu(
    benchmark, impl: str, encoder: str, batch: int, dtype: torch.dtype, compiled: bool
) -> None:
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    benchmark.group = (
        f"forward {encoder} 518x518 batch {batch} {name} {'compiled' if compiled else 'eager'}"
    )
    run_case(benchmark, forward_fn(impl, encoder, batch, dtype, compiled), batch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["sdpa", "math", "xformers"])
def test_attention_backends(benchmark, backend: str, dtype: torch.dtype) -> None:
    try:
        resolve_attention_backend(backend)
    except RuntimeError as err:
        pytest.skip(str(err))
    if backend == "xformers" and not CUDA:
        pytest.skip("xformers has no CPU attention")
    if dtype == torch.bfloat16 and not CUDA:
        pytest.skip("bf16 attention benchmarked on GPU only")
    batch = 16 if CUDA else 1
    q, k, v = (torch.randn(batch, 16, 1370, 64, device=DEVICE, dtype=dtype) for _ in range(3))
    q64, k64, v64 = (t[:1].double() for t in (q, k, v))  # the float64 reference on one image
    weights = torch.softmax(q64 @ k64.transpose(-1, -2) / 64**0.5, dim=-1)
    got = attention(q, k, v, backend)[:1]
    error = ((got.double() - weights @ v64).abs().max() / (weights @ v64).abs().max()).item()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert error <= tol, f"{backend}: attention off float64 softmax by {error:.3g} x max"
    benchmark.group = f"attention ViT-L N=1370 heads 16x64 batch {batch} {str(dtype)[6:]}"
    run_case(benchmark, lambda: attention(q, k, v, backend), batch)
