"""Score a model or saved predictions on a benchmark reader.

`evaluate_predictions(reader, predictions, scoring=...)` takes either a function mapping a list of RGB
uint8 images to a list of (H, W) predictions (e.g. `inference.Predictor.predict`) or a directory
of saved predictions (the `pseudo-label` CLI output: `<rel>.png` 16-bit with min/max in
`manifest*.jsonl`, or `<rel>.npy` float32), and returns per-image and mean metrics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from depth_anything_fast.evaluate.datasets import Sample
from depth_anything_fast.evaluate.metrics import (
    METRIC_NAMES,
    mean_metrics,
    metric_depth_metrics,
    relative_depth_metrics,
)
from depth_anything_fast.formats.codec import decode_png16
from depth_anything_fast.formats.manifest import read_all_records
from depth_anything_fast.formats.spec import folder_spec
from depth_anything_fast.transforms import as_tensor, resize_prediction

logger = logging.getLogger(__name__)

PredictFn = Callable[[list[np.ndarray]], Sequence[np.ndarray]]
Alignment = Literal["scale_shift", "median", "none"]
ALIGNMENTS: tuple[str, ...] = ("scale_shift", "median", "none")


@dataclass
class _StoredPrediction:
    path: Path
    fmt: str  # "png16" (needs lo/hi) or "npy"
    lo: float | None = None
    hi: float | None = None


def _components(path_without_ext: str) -> tuple[str, ...]:
    return tuple(p for p in Path(path_without_ext).as_posix().split("/") if p not in ("", "."))


class PredictionDirectory:
    """Saved disparity predictions, matched to samples.

    Index: every record of `manifest*.jsonl` (its `input` path and its `output` path without
    extension) and every `.npy` file under `root`. A sample matches, in order: the record whose
    input is the sample's image file; else the unique entry whose relative path without extension
    and the sample name end with the same path components (longest match wins, so predictions
    made from a sub-directory of the dataset still match). 16-bit PNGs need their manifest record
    (the min/max the codes stand for). `metric` is True when the directory's `spec.json`
    (written by pseudo-label) says the maps are depth in metres (a metric model's outputs).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"predictions directory {self.root} does not exist")
        spec = folder_spec(self.root)
        self.metric = spec is not None and spec.kind == "depth"
        self._by_input: dict[str, _StoredPrediction] = {}
        self._by_last: dict[str, list[tuple[tuple[str, ...], _StoredPrediction]]] = {}
        indexed: set[Path] = set()
        for record in read_all_records(self.root).values():
            if record.member is not None:
                raise ValueError(
                    f"{self.root}: predictions stored in tar shards ({record.output}) are not "
                    "supported; rerun pseudo-label with --format png16 or npy"
                )
            path = self.root / record.output
            fmt = "npy" if path.suffix == ".npy" else "png16"
            stored = _StoredPrediction(path, fmt, float(record.min), float(record.max))
            self._by_input[os.path.abspath(record.input)] = stored
            self._add(os.path.splitext(record.output)[0], stored)
            indexed.add(path)
        for path in sorted(self.root.rglob("*.npy")):
            if path not in indexed:
                self._add(
                    path.relative_to(self.root).with_suffix("").as_posix(),
                    _StoredPrediction(path, "npy"),
                )
        if not self._by_last:
            raise FileNotFoundError(
                f"{self.root}: no predictions found (expected manifest*.jsonl from pseudo-label, "
                "or <name>.npy files)"
            )

    def _add(self, rel_without_ext: str, stored: _StoredPrediction) -> None:
        parts = _components(rel_without_ext)
        self._by_last.setdefault(parts[-1], []).append((parts, stored))

    def find(self, sample: Sample) -> _StoredPrediction | None:
        """The stored prediction of `sample`, or None (no match, or an ambiguous one).

        Names tried: the sample's name, then (when they differ) the same with its image file's
        own stem as the last component, so `X_rgb.npy` made from DDAD's `X_rgb.png` matches the
        sample `X`."""
        if sample.image_path is not None:
            hit = self._by_input.get(os.path.abspath(sample.image_path))
            if hit is not None:
                return hit
        name = _components(sample.name)
        candidates = [name]
        if sample.image_path is not None and name:
            own = (*name[:-1], os.path.splitext(os.path.basename(sample.image_path))[0])
            if own != name:
                candidates.append(own)
        for parts in candidates:
            best = self._best_matches(parts)
            if len(best) > 1:
                logger.warning("%s: %d predictions match equally; skipped", sample.name, len(best))
                return None
            if best:
                return best[0]
        return None

    def _best_matches(self, name: tuple[str, ...]) -> list[_StoredPrediction]:
        """The entries whose paths end with the most components of `name` (empty: none)."""
        best: list[_StoredPrediction] = []
        best_len = 0
        for parts, stored in self._by_last.get(name[-1], []):
            n = min(len(parts), len(name))
            if parts[-n:] != name[-n:]:
                continue
            if n > best_len:
                best, best_len = [stored], n
            elif n == best_len:
                best.append(stored)
        return best

    def load(self, sample: Sample) -> np.ndarray | None:
        """(h, w) float32 prediction of `sample` (at the stored size), or None if not found."""
        stored = self.find(sample)
        if stored is None:
            return None
        if not stored.path.is_file():
            raise FileNotFoundError(f"{stored.path} is listed in the manifest but missing")
        if stored.fmt == "npy":
            return np.squeeze(np.load(stored.path)).astype(np.float32)
        if stored.lo is None or stored.hi is None:
            raise ValueError(f"{stored.path}: a 16-bit PNG prediction needs its manifest record")
        return decode_png16(str(stored.path), stored.lo, stored.hi)


@dataclass
class EvaluationResult:
    """Per-image and mean metrics of one evaluation run.

    `mean` has every name of `metrics.METRIC_NAMES` (averaged over `n_evaluated` images);
    `per_image` one dict per scored image (name, metrics, n_valid, scale, shift, degenerate);
    `degenerate` the excluded images with their reason; `missing` images without a prediction.
    """

    dataset: str
    space: str
    alignment: str
    min_depth: float | None
    max_depth: float | None
    mean: dict[str, float]
    n_images: int
    n_evaluated: int
    per_image: list[dict[str, Any]] = field(default_factory=list)
    degenerate: list[dict[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (NaN metrics of degenerate images become null)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not np.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean(asdict(self))


@dataclass(frozen=True)
class Scoring:
    """How predictions are compared with the ground truth.

    Attributes:
        predicted: what the predictions hold: "disparity" (relative models) or "depth" in
            metres (metric models).
        alignment: "scale_shift" (least squares on disparity; predicted depth is inverted
            first, pixels predicted at depth <= 0 left out), or "median" / "none" (metric depth
            compared in depth space).
        space: where errors are computed after "scale_shift": "disparity" (the paper's Table
            2) or "depth"; always "depth" for "median" / "none".
    Use a name of `SCORINGS`, or `Scoring.choose` for the defaults the CLI applies.
    """

    predicted: Literal["disparity", "depth"] = "disparity"
    alignment: Alignment = "scale_shift"
    space: Literal["disparity", "depth"] = "disparity"

    def __post_init__(self) -> None:
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {self.alignment!r}")
        if self.predicted not in ("disparity", "depth"):
            raise ValueError(f"predicted must be 'disparity' or 'depth', got {self.predicted!r}")
        if self.space not in ("disparity", "depth"):
            raise ValueError(f"space must be 'disparity' or 'depth', got {self.space!r}")
        if self.alignment != "scale_shift" and self.space != "depth":
            raise ValueError(f"alignment {self.alignment!r} scores metric depth: use space='depth'")
        if self.alignment != "scale_shift" and self.predicted != "depth":
            raise ValueError(
                f"alignment {self.alignment!r} scores metric depth, but the predictions are "
                "relative disparity (a metric model's output is predicted='depth')"
            )

    @classmethod
    def choose(
        cls, metric: bool, alignment: str | None = None, space: str | None = None
    ) -> Scoring:
        """The scoring of a relative (`metric` False) or metric model's predictions: alignment
        default "scale_shift" for relative and "median" for metric predictions; space default
        "disparity" after "scale_shift", else "depth"."""
        alignment = alignment or ("median" if metric else "scale_shift")
        space = space or ("disparity" if alignment == "scale_shift" else "depth")
        return cls("depth" if metric else "disparity", alignment, space)  # type: ignore[arg-type]


SCORINGS: dict[str, Scoring] = {
    "relative": Scoring("disparity", "scale_shift", "disparity"),  # the paper's Table 2
    "relative-depth": Scoring("disparity", "scale_shift", "depth"),
    "metric-as-relative": Scoring("depth", "scale_shift", "disparity"),
    "metric-as-relative-depth": Scoring("depth", "scale_shift", "depth"),
    "metric-median": Scoring("depth", "median", "depth"),
    "metric": Scoring("depth", "none", "depth"),
}


def scoring_named(scoring: str | Scoring) -> Scoring:
    """`scoring` itself, or the preset of that name in `SCORINGS`."""
    if isinstance(scoring, Scoring):
        return scoring
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; expected one of {sorted(SCORINGS)}")
    return SCORINGS[scoring]


def _batches(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _prediction_store(
    predictions: PredictFn | str | os.PathLike[str] | PredictionDirectory,
) -> PredictionDirectory | None:
    """The directory of saved predictions, or None for a predict function."""
    if isinstance(predictions, PredictionDirectory):
        return predictions
    if isinstance(predictions, (str, os.PathLike)):
        return PredictionDirectory(predictions)
    if not callable(predictions):
        raise TypeError(
            "predictions must be a callable or a predictions directory, got "
            f"{type(predictions).__name__}"
        )
    return None


def _predict_batch(batch: list[Sample], predict: PredictFn) -> list[np.ndarray | None]:
    """Run the model on the images of `batch` (one map per sample)."""
    images = []
    for s in batch:
        if s.image is None:
            raise ValueError(
                f"sample {s.name} has no image (reader built with load_images=False) but a "
                "model was given"
            )
        images.append(s.image)
    outputs = list(predict(images))
    if len(outputs) != len(batch):
        raise ValueError(f"predict function returned {len(outputs)} maps for {len(batch)} images")
    return outputs


def evaluate_predictions(
    reader: Iterable[Sample],
    predictions: PredictFn | str | os.PathLike[str] | PredictionDirectory,
    *,
    scoring: str | Scoring = "relative",
    min_depth: float | None = None,
    max_depth: float | None = None,
    batch_size: int = 8,
    dataset: str | None = None,
    on_image: Callable[[dict[str, Any]], None] | None = None,
) -> EvaluationResult:
    """Score predictions on every sample of `reader`.

    Args:
        reader: a `datasets.DatasetReader` (its `min_depth`/`max_depth`/`name` are the defaults)
            or any iterable of `Sample`s.
        predictions: a function `list of (H, W, 3) uint8 -> list of (h, w) arrays` called with
            `batch_size` images at a time (e.g. `Predictor.predict`), or a directory of saved
            predictions (see `PredictionDirectory`). Predictions of another size are resized
            to the ground truth as `Predictor.predict` does (bilinear, align_corners=True).
        scoring: a name of `SCORINGS` ("relative": the paper's aligned disparity; "metric":
            a metric model's depth as it is; ...) or a `Scoring`.
        min_depth, max_depth: evaluation range in metres; None takes the reader's.
        dataset: name stored in the result (default: the reader's `name`).
        on_image: called with each per-image record as it is computed (progress display).
    Returns:
        `EvaluationResult`. Raises ValueError if no image could be scored.
    """
    how = scoring_named(scoring)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    min_depth = getattr(reader, "min_depth", None) if min_depth is None else min_depth
    max_depth = getattr(reader, "max_depth", None) if max_depth is None else max_depth
    store = _prediction_store(predictions)
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    for batch in _batches(reader, batch_size):
        if store is not None:
            outputs = [store.load(s) for s in batch]
        else:
            outputs = _predict_batch(batch, predictions)  # type: ignore[arg-type]
        for sample, prediction in zip(batch, outputs):
            if prediction is None:
                missing.append(sample.name)
                continue
            rows.append(_score(sample, prediction, how, min_depth, max_depth))
            if on_image is not None:
                on_image(rows[-1])
    dataset = dataset or getattr(reader, "name", "") or type(reader).__name__
    return _summary(dataset, rows, missing, how, min_depth, max_depth)


def _summary(
    dataset: str,
    rows: list[dict[str, Any]],
    missing: list[str],
    how: Scoring,
    min_depth: float | None,
    max_depth: float | None,
) -> EvaluationResult:
    """The result of the scored `rows`; warns about missing and degenerate images. Raises
    ValueError when none could be scored."""
    if missing:
        logger.warning("%d images have no prediction (first: %s)", len(missing), missing[0])
    summary = mean_metrics(rows)
    if summary["n_evaluated"] == 0:
        raise ValueError(
            f"no image could be scored: {len(rows)} with predictions (all degenerate), "
            f"{len(missing)} without"
        )
    degenerate = [{"name": r["name"], "reason": r["degenerate"]} for r in rows if r["degenerate"]]
    for entry in degenerate:
        logger.warning("excluded %s: %s", entry["name"], entry["reason"])
    return EvaluationResult(
        dataset=dataset,
        space=how.space,
        alignment=how.alignment,
        min_depth=min_depth,
        max_depth=max_depth,
        mean={k: summary[k] for k in METRIC_NAMES},
        n_images=len(rows) + len(missing),
        n_evaluated=summary["n_evaluated"],
        per_image=rows,
        degenerate=degenerate,
        missing=missing,
    )


def _score(
    sample: Sample,
    prediction: np.ndarray,
    how: Scoring,
    min_depth: float | None,
    max_depth: float | None,
) -> dict[str, Any]:
    """Metrics record of one sample."""
    prediction = np.squeeze(np.asarray(prediction, dtype=np.float32))
    if prediction.ndim != 2:
        raise ValueError(f"{sample.name}: prediction must be (H, W), got shape {prediction.shape}")
    record: dict[str, Any] = {"name": sample.name}
    if prediction.shape != sample.depth.shape:
        # the Predictor's own resize back to the input size: a map stored at network size
        # (pseudo-label's default) scores exactly as the same model run in-process
        record["resized_from"] = list(prediction.shape)
        resized = resize_prediction(as_tensor(prediction)[None], sample.depth.shape)
        prediction = resized[0].numpy()
    if how.alignment == "scale_shift":
        mask = sample.mask
        if how.predicted == "depth":  # relative metrics align disparity
            mask = mask & (prediction > 0)
            prediction = np.where(prediction > 0, 1.0 / np.maximum(prediction, 1e-12), 0.0)
        metrics = relative_depth_metrics(
            prediction,
            sample.depth,
            mask,
            space=how.space,
            min_depth=min_depth,
            max_depth=max_depth,
        )
    else:
        metrics = metric_depth_metrics(
            prediction,
            sample.depth,
            sample.mask,
            alignment=how.alignment,  # type: ignore[arg-type]
            min_depth=min_depth,
            max_depth=max_depth,
        )
    metrics.pop("space")
    record.update(metrics)
    return record
