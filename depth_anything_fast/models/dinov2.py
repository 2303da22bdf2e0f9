"""DINOv2 vision transformer, as used by Depth Anything (no register tokens, no drop path).

Parameter names follow the official code (`cls_token`, `pos_embed`, `mask_token`,
`patch_embed.proj`, `blocks.i.*`, `norm`), so official weights load by a prefix rename.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import Block, PatchEmbed, resolve_attention_backend


def check_image_batch(x: torch.Tensor, patch_size: int, in_chans: int = 3) -> None:
    """Raise a ValueError/TypeError naming the problem unless x is (B, in_chans, H, W) float
    with H and W positive multiples of `patch_size`."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"expected a (B, {in_chans}, H, W) batch, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a normalised float image batch, got dtype {x.dtype}")
    _, channels, height, width = x.shape
    if channels != in_chans:
        raise ValueError(
            f"expected {in_chans} channels, got {channels} (input shape {tuple(x.shape)})"
        )
    if height < patch_size or width < patch_size or height % patch_size or width % patch_size:
        raise ValueError(
            f"H and W must be positive multiples of {patch_size}, got {height}x{width}; resize "
            "with depth_anything_fast.transforms.preprocess"
        )


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT with patch size `patch_size` and position embeddings for `img_size`.

    Args:
        interpolate_offset: 0.1 = official DINOv2 interpolation (bicubic with scale factor
            (n + 0.1) / n0); 0.0 = interpolate to the exact size (transformers' behaviour).
        attn_backend: "auto" | "sdpa" | "xformers" | "math" (see `layers.attention`).
        checkpoint_activations: recompute each block in backward while training.
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        ffn: str = "mlp",
        mlp_ratio: float = 4.0,
        patch_size: int = 14,
        img_size: int = 518,
        interpolate_offset: float = 0.1,
        attn_backend: str = "auto",
        checkpoint_activations: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.interpolate_offset = interpolate_offset
        self.checkpoint_activations = checkpoint_activations
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        # unused at inference; kept so that official/HF weights load strictly
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, ffn, mlp_ratio, attn_backend) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DINOv2 initialisation: trunc-normal(0.02) linears and embeddings, zero biases."""
        if self.pos_embed.is_meta:
            return  # built without storage (from_pretrained): the checkpoint fills it
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def set_attention_backend(self, backend: str) -> None:
        """Switch every block's attention kernel ("auto" | "sdpa" | "xformers" | "math")."""
        resolved = resolve_attention_backend(backend)
        for block in self.blocks:
            block.attn.backend = resolved

    @property
    def attention_backend(self) -> str:
        return self.blocks[0].attn.backend

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings (1, 1 + grid_h * grid_w, dim) for a grid_h x grid_w patch grid.

        Unchanged for the training grid; else bicubic (no antialias) computed in float32 and
        cast back to the parameter's dtype.
        """
        pos_embed = self.pos_embed
        dtype = pos_embed.dtype
        num_positions = pos_embed.shape[1] - 1
        side = int(math.sqrt(num_positions))
        if grid_h == side and grid_w == side:
            return pos_embed
        pos_embed = pos_embed.float()
        patch_pos = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            # official DINOv2: the offset avoids floor() rounding the output size down
            scale = (
                (grid_h + self.interpolate_offset) / side,
                (grid_w + self.interpolate_offset) / side,
            )
            patch_pos = F.interpolate(
                patch_pos, scale_factor=scale, mode="bicubic", antialias=False
            )
        else:
            patch_pos = F.interpolate(
                patch_pos, size=(grid_h, grid_w), mode="bicubic", align_corners=False
            )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat((pos_embed[:, :1], patch_pos), dim=1).to(dtype)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + H/p * W/p, dim): CLS + patch tokens + position embeddings."""
        check_image_batch(x, self.patch_size)
        grid_h, grid_w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.patch_embed(x)
        # as officially: under autocast the fp32 CLS token and position embeddings promote the
        # residual stream to fp32 (the linears still run in low precision)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        return tokens + self.interpolate_pos_encoding(grid_h, grid_w)

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_activations and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_features(
        self, x: torch.Tensor, layers: tuple[int, ...] | list[int], *, last: bool = False
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Normed patch tokens of selected blocks.

        Args:
            x: (B, 3, H, W) normalised float, H and W multiples of patch_size.
            layers: block indices (0-based).
            last: also return the normed patch tokens of the last block.
        Returns:
            ([ (B, N, dim) per index in `layers` ], (B, N, dim) or None), N = H/p * W/p,
            CLS token dropped, final `norm` applied to each.
        """
        wanted = set(layers)
        stop = len(self.blocks) - 1 if last else max(wanted)
        tokens = self.prepare_tokens(x)
        outputs: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.blocks):
            if index > stop:
                break
            tokens = self._run_block(block, tokens)
            if index in wanted:
                outputs[index] = self.norm(tokens)[:, 1:]
        final = None
        if last:
            final = outputs.get(len(self.blocks) - 1)
            if final is None:
                final = self.norm(tokens)[:, 1:]
        return [outputs[i] for i in layers], final

    def get_intermediate_layers(
        self, x: torch.Tensor, layers: tuple[int, ...] | list[int]
    ) -> list[torch.Tensor]:
        """Normed patch tokens (B, N, dim) of each block index in `layers`."""
        return self.forward_features(x, layers)[0]

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normed patch tokens of the last block, (B, N, dim): the features that
        `DepthAnything.forward(..., return_features=True)` returns."""
        return self.forward_features(x, (), last=True)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as `patch_tokens`."""
        return self.patch_tokens(x)
