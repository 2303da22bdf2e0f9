"""Fast inference: batched `Predictor`, the `pseudo_label` engine and the `predict` engine.

Names are imported on first use so that the CLI's `--help` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Predictor": "depth_anything_fast.inference.predictor",
    "load_model": "depth_anything_fast.inference.predictor",
    "pseudo_label": "depth_anything_fast.inference.pseudo_label",
    "Summary": "depth_anything_fast.inference.pseudo_label",
    "predict_files": "depth_anything_fast.inference.predict",
    "colorize": "depth_anything_fast.inference.visualize",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
