"""The pieces the demo and the ablation share: the synthetic world and its semantic encoder,
training runs from the demo configs, pseudo-labelling, per-kind evaluation and the paired
bootstrap.

Budgets live in `WorldBudget` and the `configs/demo_*.yaml` files; they were fixed before any
result was looked at (see the README's demo section).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from depth_anything_fast.configs import CONFIG_DIR

from .semantic_encoder import SemanticTraining, train_semantic_encoder

TEACHER_CONFIG = CONFIG_DIR / "demo_teacher.yaml"
STUDENT_CONFIG = CONFIG_DIR / "demo_student.yaml"
# Shorter side the models see at evaluation and pseudo-labelling (the training crop: same scale).
EVAL_INPUT_SIZE = 112
WORLD_FILE = "world.json"
Log = Callable[[str], None]


def log_line(message: str) -> None:
    print(message, flush=True)


@dataclass(frozen=True)
class WorldBudget:
    """The synthetic world of the demo: labelled data covers `labelled_kinds` only, the
    unlabelled and validation splits cover every kind (in turn, so equally)."""

    labelled_kinds: tuple[str, ...] = ("room", "street")
    n_labelled: int = 240
    n_unlabelled: int = 800
    n_val: int = 160
    size: tuple[int, int] = (120, 160)  # (H, W)
    encoder: SemanticTraining = field(default_factory=SemanticTraining)

    def scaled(self, scale: float) -> WorldBudget:
        """Smaller data and encoder training for smoke runs (scale < 1); at least 16 images of
        each split (one labelled-only batch of the demo configs) and 4 encoder steps."""
        if scale >= 1:
            return self

        def n(count: int) -> int:
            return max(int(count * scale), 16)

        return dataclasses.replace(
            self, n_labelled=n(self.n_labelled), n_unlabelled=n(self.n_unlabelled),
            n_val=n(self.n_val),
            encoder=dataclasses.replace(self.encoder, steps=max(int(self.encoder.steps * scale),
                                                                4)))


@dataclass(frozen=True)
class World:
    """A generated world: its dataset layout, val kinds and the semantic encoder checkpoint."""

    layout: Any  # recipe.synthetic.DatasetLayout
    val_kinds: dict[str, str]
    encoder: Path


def model_arch(config: Path = TEACHER_CONFIG) -> Any:
    """The `DepthAnythingConfig` the demo configs train (encoder of the semantic prior too)."""
    from depth_anything_fast.train.config import load_config
    from depth_anything_fast.train.trainer import build_model

    return build_model(load_config(config), initialise=False).config


def prepare_world(out: Path, budget: WorldBudget, seed: int, log: Log = log_line) -> World:
    """Generate the data under `out/data` (reused when `world.json` says it was made with the
    same budget and seed) and pretrain the semantic encoder (cached in `out/semantic_encoder`)."""
    from depth_anything_fast.recipe.synthetic import KINDS, generate_dataset, read_kinds

    data = out / "data"
    stamp = json.dumps({"budget": dataclasses.asdict(budget), "seed": seed}, sort_keys=True)
    if (data / WORLD_FILE).is_file() and (data / WORLD_FILE).read_text() == stamp:
        log(f"[world] reusing the synthetic data in {data}")
        from depth_anything_fast.recipe.synthetic import DatasetLayout

        layout = DatasetLayout(data, data / "labelled", data / "unlabelled", data / "val")
    else:
        start = time.perf_counter()
        if (data / WORLD_FILE).exists():
            (data / WORLD_FILE).unlink()  # a partial or different world: written again below
        layout = generate_dataset(
            data, n_labelled=budget.n_labelled, n_unlabelled=budget.n_unlabelled,
            n_val=budget.n_val, size=budget.size, seed=seed,
            labelled_kinds=budget.labelled_kinds, unlabelled_kinds=KINDS, val_kinds=KINDS)
        (data / WORLD_FILE).write_text(stamp)
        log(f"[world] {budget.n_labelled} labelled ({', '.join(budget.labelled_kinds)}), "
            f"{budget.n_unlabelled} unlabelled and {budget.n_val} val images (all of "
            f"{', '.join(KINDS)}) in {time.perf_counter() - start:.0f}s")
    encoder = train_semantic_encoder(data, model_arch(), out / "semantic_encoder",
                                     budget.encoder, log)
    return World(layout, read_kinds(data, "val"), encoder)


def train(config: Path, overrides: Sequence[str], label: str, log: Log = log_line) -> Path:
    """Train one stage (the `Trainer` of `config` with `overrides`); returns the exported model.
    Exits with 143 when stopped by SIGTERM (the checkpoint is saved)."""
    from depth_anything_fast.train.config import load_config
    from depth_anything_fast.train.trainer import Trainer

    cfg = load_config(config, [*overrides, "progress=" + str(sys.stderr.isatty()).lower()])
    start = time.perf_counter()
    result = Trainer(cfg).run()
    if result["status"] == "terminated":
        log(f"[{label}] stopped by SIGTERM at step {result['step']} (checkpoint saved); run "
            "again to start over")
        sys.exit(143)
    if result["status"] != "done" or result["export"] is None:
        raise RuntimeError(f"{label} training did not finish: {result}")
    log(f"[{label}] {result['step']} steps in {time.perf_counter() - start:.0f}s, final loss "
        f"{result['loss']:.4f} -> {result['export']}")
    return Path(result["export"])


def pseudo_label_images(teacher: Path, images: Path, out: Path, log: Log = log_line) -> Path:
    """Label `images` with `teacher` into `out` (the pseudo-label CLI's engine)."""
    from depth_anything_fast.inference.pseudo_label import pseudo_label

    start = time.perf_counter()
    summary = pseudo_label(teacher, images, out, batch_size=32, precision="fp32",
                           input_size=EVAL_INPUT_SIZE, original_size=True, device="cpu",
                           handle_signals=False)
    if summary.failed:
        raise RuntimeError(f"pseudo-labelling failed for {summary.failed} images: see {out}")
    log(f"[pseudo-labels] {summary.line()} ({time.perf_counter() - start:.0f}s)")
    return out


def set_threads() -> None:
    """Leave one core to the loaders' decode / augmentation threads: with every core running
    OpenMP compute as well, the two fight and a 2-core machine trains several times slower
    (measured on a busy 2-core machine: 1 compute thread was 3-5x faster per step than 2)."""
    import torch

    torch.set_num_threads(max((os.cpu_count() or 2) - 1, 1))


# ------------------------------------------------------------------------------ evaluation
def row_prior(shape: tuple[int, int]) -> np.ndarray:
    """Disparity growing linearly from the top row to the bottom row (the ground is near)."""
    rows = np.linspace(0.0, 1.0, shape[0], dtype=np.float32)
    return np.repeat(rows[:, None], shape[1], axis=1)


def _replay(maps: list[np.ndarray]) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """A predict function handing out already computed maps in order (the runner calls it
    batch by batch over the same samples)."""
    remaining = iter(maps)
    return lambda images: [next(remaining) for _ in images]


def _kind_of(name: str, kinds: dict[str, str]) -> str:
    return kinds[os.path.splitext(os.path.basename(name))[0]]


@dataclass
class Evaluation:
    """Per-image records ({name, kind, abs_rel, delta1}) of each model and baseline, the val
    samples and each model's predictions (for pictures)."""

    per_image: dict[str, list[dict[str, Any]]]
    samples: list[Any]
    predictions: dict[str, list[np.ndarray]]


def evaluate_models(world: World, models: dict[str, Path]) -> Evaluation:
    """Score each model and the two baselines on the val split.

    All rows are scored in depth space (least-squares alignment in disparity, then compared as
    depth, MiDaS style); the constant baseline cannot be aligned by least squares (a constant
    has no scale), so it is median-scaled (= the per-image median ground-truth depth), which is
    only comparable in depth space."""
    from depth_anything_fast.evaluate.datasets import get_reader
    from depth_anything_fast.evaluate.runner import evaluate_predictions
    from depth_anything_fast.inference.predictor import Predictor
    from depth_anything_fast.models import DepthAnything
    from depth_anything_fast.recipe.synthetic import DEPTH_SPEC

    samples = list(get_reader("generic", world.layout.val, encoding=DEPTH_SPEC))
    results: dict[str, Any] = {}
    shown: dict[str, list[np.ndarray]] = {}
    for name, weights in models.items():
        predictor = Predictor(DepthAnything.from_pretrained(weights), batch_size=16,
                              precision="fp32", input_size=EVAL_INPUT_SIZE, device="cpu")
        predictions = predictor.predict([s.image for s in samples])
        shown[name] = predictions
        results[name] = evaluate_predictions(samples, _replay(predictions),
                                             scoring="relative-depth", batch_size=16)
    results["baseline_constant"] = evaluate_predictions(
        samples, lambda images: [np.ones(im.shape[:2], np.float32) for im in images],
        scoring="metric-median")
    results["baseline_row_prior"] = evaluate_predictions(
        samples, lambda images: [row_prior(im.shape[:2]) for im in images],
        scoring="relative-depth")
    per_image = {
        name: [{"name": r["name"], "kind": _kind_of(r["name"], world.val_kinds),
                "abs_rel": r["abs_rel"], "delta1": r["delta1"]}
               for r in result.per_image if r.get("degenerate") is None]
        for name, result in results.items()}
    return Evaluation(per_image, samples, shown)


def summarise(records: list[dict[str, Any]], kinds: Sequence[str]) -> dict[str, dict]:
    """Mean AbsRel / delta1 (and image count) per kind and "overall" of one model's records."""
    out = {}
    for kind in [*kinds, "overall"]:
        rows = [r for r in records if kind == "overall" or r["kind"] == kind]
        out[kind] = {"abs_rel": float(np.mean([r["abs_rel"] for r in rows])) if rows else None,
                     "delta1": float(np.mean([r["delta1"] for r in rows])) if rows else None,
                     "n": len(rows)}
    return out


def paired_differences(a: list[dict[str, Any]], b: list[dict[str, Any]],
                       metric: str = "abs_rel") -> np.ndarray:
    """Per-image `metric` of a minus b over the images both scored (matched by name)."""
    values_b = {r["name"]: r[metric] for r in b}
    return np.array([r[metric] - values_b[r["name"]] for r in a if r["name"] in values_b])


def bootstrap_ci(values: np.ndarray, n_boot: int = 10_000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper): percentile bootstrap CI of the mean of `values` (resampling the
    images with replacement; a fixed seed, so the report is reproducible)."""
    if values.size == 0:
        raise ValueError("bootstrap of an empty sample")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (n_boot, values.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(lo), float(hi)
