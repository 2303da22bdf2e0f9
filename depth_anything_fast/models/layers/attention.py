"""Multi-head self-attention of the DINOv2 blocks with selectable kernels.

Backends compute the same function, softmax(q k^T / sqrt(d)) v:
- ``"sdpa"``: `torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient /
  cuDNN kernels on CUDA, a fused kernel on CPU). The default.
- ``"xformers"``: `xformers.ops.memory_efficient_attention` (CUDA only; xformers has no CPU
  attention).
- ``"math"``: explicit matmul-softmax-matmul, O(N^2) memory; the reference the others are tested
  against (what DINOv2 falls back to without xformers).
- ``"auto"``: ``"sdpa"``, which dispatches to the best fused kernel available itself.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_BACKENDS = ("auto", "sdpa", "xformers", "math")


def resolve_attention_backend(backend: str) -> str:
    """Return the concrete backend for `backend`, or raise if it cannot run here.

    Raises:
        ValueError: unknown name.
        RuntimeError: ``"xformers"`` requested but the package is not installed.
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(
            f"unknown attention backend {backend!r}; expected one of {ATTENTION_BACKENDS}"
        )
    if backend == "auto":
        return "sdpa"
    if backend == "xformers" and importlib.util.find_spec("xformers") is None:
        raise RuntimeError(
            "attention backend 'xformers' requested but xformers is not installed "
            "(pip install 'depth_anything_fast[xformers]'); use 'sdpa' instead"
        )
    return backend


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference attention. q, k, v: (B, heads, N, head_dim) -> (B, heads, N, head_dim)."""
    scale = q.shape[-1] ** -0.5
    weights = torch.matmul(q * scale, k.transpose(-2, -1)).softmax(dim=-1)
    return torch.matmul(weights, v)


def xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """xformers memory-efficient attention; same layout as `math_attention`."""
    if not q.is_cuda:
        raise RuntimeError(
            "attention backend 'xformers' needs CUDA tensors (xformers has no CPU attention); "
            f"got a tensor on {q.device}. Use attn_backend='sdpa'."
        )
    from xformers.ops import memory_efficient_attention

    # xformers wants (B, N, heads, head_dim)
    out = memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """Dispatch to a resolved backend. q, k, v: (B, heads, N, head_dim), any float dtype; the
    output has q's dtype."""
    if backend == "sdpa":
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # The CPU's bf16 SDPA kernel is no faster than its fp32 one forward and 3-4x slower
            # backward at the demo's sizes (N=65, head_dim 32; on par at ViT-S 518), so bf16
            # training on the CPU computes attention in fp32 (autocast would cast it back).
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
            return out.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "math":
        return math_attention(q, k, v)
    if backend == "xformers":
        return xformers_attention(q, k, v)
    raise ValueError(f"unresolved attention backend {backend!r}")


class Attention(nn.Module):
    """DINOv2 attention: fused `qkv` projection (rows q | k | v, each heads x head_dim), `proj`.

    Input/output (B, N, dim) in the module's dtype.
    """

    def __init__(self, dim: int, num_heads: int, backend: str = "auto") -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.backend = resolve_attention_backend(backend)
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v, self.backend)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))
