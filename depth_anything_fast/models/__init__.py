"""Depth Anything model: exact DINOv2 + DPT, checkpoint loading/conversion, preprocessing.

The modules holding torch code are imported on first use, so that the `convert` subcommand's
parser (and `depth-anything-fast --help`) and the training config do not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import DepthAnythingConfig

_EXPORTS = {
    "ATTENTION_BACKENDS": "layers",
    "DPTHead": "dpt",
    "DepthAnything": "depth_anything",
    "DinoVisionTransformer": "dinov2",
    "build_frozen_encoder": "depth_anything",
}

__all__ = [
    "ATTENTION_BACKENDS",
    "DPTHead",
    "DepthAnything",
    "DepthAnythingConfig",
    "DinoVisionTransformer",
    "build_frozen_encoder",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
