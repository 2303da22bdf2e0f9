"""Feed-forward layers of the DINOv2 blocks: GELU MLP (vits/vitb/vitl) and SwiGLU (vitg)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2. (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def swiglu_hidden_dim(mlp_hidden_dim: int) -> int:
    """DINOv2's SwiGLU width: two thirds of the MLP width, rounded up to a multiple of 8."""
    return (int(mlp_hidden_dim * 2 / 3) + 7) // 8 * 8


class SwiGLUFFN(nn.Module):
    """DINOv2 fused SwiGLU: `w12` (gate rows, then value rows), silu(gate) * value, `w3`.

    `hidden_dim` is the MLP width (dim * mlp_ratio); the SwiGLU width derives from it
    (vitg: 6144 -> 4096, so w12 has 8192 rows). (..., dim) -> (..., dim).
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        width = swiglu_hidden_dim(hidden_dim)
        self.w12 = nn.Linear(dim, 2 * width)
        self.w3 = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)
