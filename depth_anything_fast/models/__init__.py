"""Depth Anything model: exact DINOv2 + DPT, checkpoint loading/conversion, preprocessing.

The modules holding torch code are imported on first use, so that the `convert` subcommand's
parser (and `depth-anything-fast --help`) and the training config do not import torch.
"""

from __future__ import annotations

from depth_anything_fast._lazy import lazy_exports

from .architecture import DepthAnythingConfig

_EXPORTS = {
    "ATTENTION_BACKENDS": ".layers",
    "DPTHead": ".dpt",
    "DepthAnything": ".depth_anything",
    "DinoVisionTransformer": ".dinov2",
    "build_frozen_encoder": ".depth_anything",
}

__all__ = [
    "ATTENTION_BACKENDS",
    "DPTHead",
    "DepthAnything",
    "DepthAnythingConfig",
    "DinoVisionTransformer",
    "build_frozen_encoder",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)
