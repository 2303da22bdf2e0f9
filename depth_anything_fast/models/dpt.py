"""DPT head of Depth Anything, exactly as the official code (names included).

Four token maps -> `projects` (1x1) -> `resize_layers` (x4, x2, x1, x0.5) -> `scratch.layer*_rn`
(3x3, no bias) -> top-down fusion (`scratch.refinenet4..1`) -> `scratch.output_conv1` ->
bilinear (align_corners=True) to the input size -> `scratch.output_conv2`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualConvUnit(nn.Module):
    """Pre-activation residual unit: x + conv2(relu(conv1(relu(x)))). (B, C, h, w)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)
        self.activation = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.activation(x))
        return self.conv2(self.activation(out)) + x


class FeatureFusionBlock(nn.Module):
    """out_conv(upsample(RCU2(x0 + RCU1(x1)))); the upsample goes to `size` or doubles.

    `resConfUnit1` of the first (deepest) block is never called, as officially; its weights
    exist in every checkpoint.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, stride=1, padding=0, bias=True)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(
        self,
        x: torch.Tensor,
        skip: torch.Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """Dense prediction head.

    Args:
        in_channels: encoder width.
        features: fusion width.
        out_channels: widths of the four reassembled maps.
        metric: Sigmoid instead of the final ReLU (V2 metric models; scaled by max_depth
            outside the head).
    Input: four (B, N, in_channels) token maps with N = patch_h * patch_w.
    Output: (B, 1, 14 * patch_h, 14 * patch_w) float32 (the last 1x1 conv adds its bias in fp32
    under autocast and for half-precision weights too; everything before it is in the compute
    dtype).
    """

    def __init__(
        self,
        in_channels: int,
        features: int,
        out_channels: tuple[int, int, int, int] | list[int],
        metric: bool = False,
        patch_size: int = 14,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.projects = nn.ModuleList(
            nn.Conv2d(in_channels, c, kernel_size=1) for c in out_channels
        )
        c0, c1, _, c3 = out_channels
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c0, c0, kernel_size=4, stride=4, padding=0),
                nn.ConvTranspose2d(c1, c1, kernel_size=2, stride=2, padding=0),
                nn.Identity(),
                nn.Conv2d(c3, c3, kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = nn.Module()
        for i, channels in enumerate(out_channels, start=1):
            setattr(
                self.scratch,
                f"layer{i}_rn",
                nn.Conv2d(channels, features, kernel_size=3, stride=1, padding=1, bias=False),
            )
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FeatureFusionBlock(features))
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, kernel_size=3, stride=1, padding=1),
            nn.ReLU(inplace=True),  # as officially; saves a full-resolution tensor
            nn.Conv2d(32, 1, kernel_size=1, stride=1, padding=0),
            nn.Sigmoid() if metric else nn.ReLU(inplace=True),
        )

    def forward(self, tokens: list[torch.Tensor], patch_h: int, patch_w: int) -> torch.Tensor:
        s = self.scratch
        layers = []
        for i, x in enumerate(tokens):
            x = x.permute(0, 2, 1).reshape(x.shape[0], x.shape[-1], patch_h, patch_w)
            x = self.resize_layers[i](self.projects[i](x))
            layers.append(getattr(s, f"layer{i + 1}_rn")(x))
        # rebinding `path`/`out` frees each full-resolution intermediate as soon as it is used
        path = s.refinenet4(layers[3], size=layers[2].shape[2:])
        path = s.refinenet3(path, layers[2], size=layers[1].shape[2:])
        path = s.refinenet2(path, layers[1], size=layers[0].shape[2:])
        path = s.refinenet1(path, layers[0])
        del layers
        out = s.output_conv1(path)
        del path
        size = (patch_h * self.patch_size, patch_w * self.patch_size)
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        conv, relu, last, activation = s.output_conv2
        out = F.conv2d(relu(conv(out)), last.weight)
        # The last conv's bias (the map's level) is added in fp32, and the map stays fp32: its
        # variation within an image can be a small fraction of its level (a fresh head gives
        # 1 +- 0.003), which bf16's 8-bit mantissa would round to a few steps, and the losses
        # normalise by exactly that variation. The weighted sum before it keeps the compute
        # dtype (rounded relative to the signal, not to the level).
        with torch.autocast(out.device.type, enabled=False):
            out = out.float()
            if last.bias is not None:
                out = out + last.bias.float().view(1, -1, 1, 1)
            return activation(out)
