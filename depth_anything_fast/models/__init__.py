"""Depth Anything model: exact DINOv2 + DPT, checkpoint loading/conversion, preprocessing."""

from .config import DepthAnythingConfig
from .depth_anything import DepthAnything, build_frozen_encoder
from .dinov2 import DinoVisionTransformer
from .dpt import DPTHead
from .layers import ATTENTION_BACKENDS

__all__ = [
    "ATTENTION_BACKENDS",
    "DPTHead",
    "DepthAnything",
    "DepthAnythingConfig",
    "DinoVisionTransformer",
    "build_frozen_encoder",
]
