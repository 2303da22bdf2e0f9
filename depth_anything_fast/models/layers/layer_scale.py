"""LayerScale: a learned per-channel scale on each residual branch (DINOv2, init 1.0)."""

from __future__ import annotations

import torch
from torch import nn


class LayerScale(nn.Module):
    """x * gamma, gamma of shape (dim,). Works on (..., dim)."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma
