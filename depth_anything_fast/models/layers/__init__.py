"""Building blocks of the DINOv2 encoder."""

from .attention import ATTENTION_BACKENDS, Attention, resolve_attention_backend
from .block import Block
from .layer_scale import LayerScale
from .mlp import Mlp, SwiGLUFFN
from .patch_embed import PatchEmbed

__all__ = [
    "ATTENTION_BACKENDS",
    "Attention",
    "Block",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "SwiGLUFFN",
    "resolve_attention_backend",
]
