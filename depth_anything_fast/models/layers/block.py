"""The DINOv2 transformer block (pre-norm, LayerScale on both residual branches)."""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .layer_scale import LayerScale
from .mlp import Mlp, SwiGLUFFN


class Block(nn.Module):
    """x + ls1(attn(norm1(x))), then + ls2(mlp(norm2(x))). (B, N, dim) -> (B, N, dim).

    LayerNorm eps 1e-6 as in DINOv2. No drop path (Depth Anything trains with 0).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn: str = "mlp",
        mlp_ratio: float = 4.0,
        attn_backend: str = "auto",
    ) -> None:
        super().__init__()
        hidden_dim = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_backend)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        if ffn == "mlp":
            self.mlp: nn.Module = Mlp(dim, hidden_dim)
        elif ffn == "swiglu":
            self.mlp = SwiGLUFFN(dim, hidden_dim)
        else:
            raise ValueError(f"unknown ffn {ffn!r}; expected 'mlp' or 'swiglu'")
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))
