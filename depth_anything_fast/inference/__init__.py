"""Fast inference: batched `Predictor`, the `pseudo_label` engine and the `predict` command's
engine (`pictures`).

Names are imported on first use so that the CLI's `--help` does not import torch.
"""

from __future__ import annotations

from depth_anything_fast._lazy import lazy_exports

_EXPORTS = {
    "Predictor": "depth_anything_fast.inference.predictor",
    "load_model": "depth_anything_fast.inference.predictor",
    "pseudo_label": "depth_anything_fast.inference.pseudo_label",
    "Summary": "depth_anything_fast.inference.pseudo_label",
    "predict_files": "depth_anything_fast.inference.pictures",
    "colorize": "depth_anything_fast.inference.visualize",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
