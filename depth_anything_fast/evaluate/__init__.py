"""Zero-shot relative depth evaluation (Depth Anything paper, arXiv 2401.10891, Table 2).

- `metrics`: `align_scale_shift`, `relative_depth_metrics` (disparity / depth space),
  `metric_depth_metrics` (median scaling), `mean_metrics`.
- `datasets`: `get_reader(name, root, **options)` for kitti, nyuv2, sintel, diode, eth3d, ddad,
  generic, yielding `Sample(name, image, depth, mask)`.
- `runner`: `evaluate_predictions(reader, predict_fn_or_dir, scoring=...) -> EvaluationResult`
  (`SCORINGS`: named `Scoring` presets, e.g. "relative" for the paper's Table 2).
- `paper`: Table 2 of the Depth Anything paper. `cli`: the `evaluate` subcommand.

Names are imported on first use so that `depth-anything-fast --help` does not import torch.
"""

from __future__ import annotations

from depth_anything_fast._lazy import lazy_exports

_EXPORTS = {
    "align_scale_shift": ".metrics",
    "relative_depth_metrics": ".metrics",
    "metric_depth_metrics": ".metrics",
    "mean_metrics": ".metrics",
    "METRIC_NAMES": ".metrics",
    "get_reader": ".datasets",
    "Sample": ".datasets",
    "DatasetLayoutError": ".datasets",
    "evaluate_predictions": ".runner",
    "EvaluationResult": ".runner",
    "Scoring": ".runner",
    "SCORINGS": ".runner",
    "PredictionDirectory": ".runner",
    "paper_numbers": ".paper",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
