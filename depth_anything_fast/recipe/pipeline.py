"""The pieces the demo and the recipe's experiments share: the synthetic world and its semantic
encoders, training runs from the demo configs (finished runs reused), pseudo-labelling and the
per-kind evaluation. The statistics of the reports live in `recipe.statistics`, the training
plans (which models each seed trains, on how many worker processes) in `recipe.runs`.

Budgets live in `WorldBudget` and the `configs/demo_*.yaml` files (see the README's demo
section for when and why they were set).
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
# The world is drawn once (this seed) and shared by every training seed.
WORLD_SEED = 0
BASE_ENCODER = "base"
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
    """A generated world: its folder, dataset layout, val kinds and semantic encoder
    checkpoints by name (`BASE_ENCODER`: the demo's; experiments add others)."""

    root: Path
    layout: Any  # recipe.synthetic.DatasetLayout
    val_kinds: dict[str, str]
    encoders: dict[str, Path]

    @property
    def encoder(self) -> Path:
        """The demo's semantic encoder."""
        return self.encoders[BASE_ENCODER]

    def with_encoder(self, name: str, path: Path) -> World:
        return dataclasses.replace(self, encoders={**self.encoders, name: path})


def model_arch(config: Path = TEACHER_CONFIG, overrides: Sequence[str] = ()) -> Any:
    """The `DepthAnythingConfig` that `config` with `overrides` trains (and so the encoder its
    semantic prior needs)."""
    from depth_anything_fast.train.config import load_config
    from depth_anything_fast.train.trainer import build_model

    return build_model(load_config(config, list(overrides)), initialise=False).config


def prepare_world(out: Path, budget: WorldBudget, seed: int = WORLD_SEED,
                  log: Log = log_line) -> World:
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
            labelled_kinds=budget.labelled_kinds, unlabelled_kinds=KINDS, val_kinds=KINDS,
            workers=default_workers())
        (data / WORLD_FILE).write_text(stamp)
        log(f"[world] {budget.n_labelled} labelled ({', '.join(budget.labelled_kinds)}), "
            f"{budget.n_unlabelled} unlabelled and {budget.n_val} val images (all of "
            f"{', '.join(KINDS)}) in {time.perf_counter() - start:.0f}s")
    encoder = train_semantic_encoder(data, model_arch(), out / "semantic_encoder",
                                     budget.encoder, log)
    return World(out, layout, read_kinds(data, "val"), {BASE_ENCODER: encoder})


def add_encoder(world: World, name: str, settings: SemanticTraining,
                overrides: Sequence[str] = (), log: Log = log_line) -> World:
    """`world` with one more semantic encoder, `name`, pretrained (or reused) under
    `<world>/semantic_encoder_<name>` with `settings` for the architecture the teacher config
    with `overrides` trains."""
    path = train_semantic_encoder(world.layout.root, model_arch(TEACHER_CONFIG, overrides),
                                  world.root / f"semantic_encoder_{name}", settings, log)
    return world.with_encoder(name, path)


# Config fields that do not change what a run trains (where it writes, its progress bar).
_NOT_TRAINING = ("out_dir", "progress")


def _training_config(values: Any) -> Any:
    """A saved config without the fields of `_NOT_TRAINING`; the pseudo-label folder is kept
    by name only (`pseudo_<teacher>`: the same teacher's labels, wherever they were written)."""
    if not isinstance(values, dict):
        return values
    out = {k: _training_config(v) for k, v in values.items() if k not in _NOT_TRAINING}
    if out.get("pseudo_labels"):
        out["pseudo_labels"] = Path(out["pseudo_labels"]).name
    return out


def same_run(run_dir: Path, config: Path, overrides: Sequence[str]) -> str | None:
    """How `run_dir` relates to the run that `config` + `overrides` describe: "finished" (its
    exported model is there), "started" (same training configuration, not finished), or None
    (empty, or another configuration)."""
    from depth_anything_fast.train.config import config_to_dict, load_config

    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        return None
    saved = json.loads(saved_path.read_text())
    wanted = json.loads(json.dumps(config_to_dict(load_config(config, list(overrides)))))
    if _training_config(saved) != _training_config(wanted):
        return None
    return "finished" if (run_dir / "final" / "model.safetensors").is_file() else "started"


def train(config: Path, overrides: Sequence[str], label: str, log: Log = log_line) -> Path:
    """Train one stage (the `Trainer` of `config` with `overrides`); returns the exported model.

    A finished run of the same training configuration in `out_dir` is reused, a started one
    resumed from its newest checkpoint; anything else there is replaced. Exits with 143 when
    stopped by SIGTERM (the checkpoint is saved: running again resumes)."""
    from depth_anything_fast.train.config import load_config
    from depth_anything_fast.train.trainer import Trainer

    cfg = load_config(config, [*overrides, "progress=" + str(sys.stderr.isatty()).lower()])
    state = same_run(Path(cfg.out_dir), config, overrides)
    if state == "finished":
        log(f"[{label}] reusing {Path(cfg.out_dir) / 'final'} (same training configuration)")
        return Path(cfg.out_dir) / "final"
    start = time.perf_counter()
    result = Trainer(cfg, resume=state == "started", overwrite=state is None).run()
    if result["status"] == "terminated":
        log(f"[{label}] stopped by SIGTERM at step {result['step']} (checkpoint saved); run "
            "again to resume")
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


def set_threads(processes: int = 1) -> None:
    """Compute threads of this process when `processes` train side by side: the cores shared
    out, less one for each process's loader threads (decode / augmentation): with every core
    running OpenMP compute as well, the two fight and a 2-core machine trains several times
    slower (measured on a busy 2-core machine: 1 compute thread was 3-5x faster per step than
    2). At least one."""
    import torch

    torch.set_num_threads(max((os.cpu_count() or 2) // max(processes, 1) - 1, 1))


def default_workers() -> int:
    """Training processes side by side: one per core, at most two (each keeps a core's share
    for its loader threads, see `set_threads`)."""
    return max(min(os.cpu_count() or 1, 2), 1)


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished worker processes."""
    import resource

    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                           resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# ------------------------------------------------------------------------------ evaluation
def row_prior(shape: tuple[int, int]) -> np.ndarray:
    """Disparity growing linearly from the top row to the bottom row (the ground is near)."""
    rows = np.linspace(0.0, 1.0, shape[0], dtype=np.float32)
    return np.repeat(rows[:, None], shape[1], axis=1)


def replay(maps: list[np.ndarray]) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """A predict function handing out already computed maps in order (the runner calls it
    batch by batch over the same samples)."""
    remaining = iter(maps)
    return lambda images: [next(remaining) for _ in images]


def kind_of(name: str, kinds: dict[str, str]) -> str:
    return kinds[os.path.splitext(os.path.basename(name))[0]]


@dataclass
class Evaluation:
    """Per-image records ({name, kind, abs_rel, delta1}) of each model and baseline, and the
    val samples."""

    per_image: dict[str, list[dict[str, Any]]]
    samples: list[Any]


def val_samples(world: World) -> list[Any]:
    """The validation split's samples (image, depth in metres, mask)."""
    from depth_anything_fast.evaluate.datasets import get_reader
    from depth_anything_fast.recipe.synthetic import DEPTH_SPEC

    return list(get_reader("generic", world.layout.val, encoding=DEPTH_SPEC))


def predict(weights: Path, images: list[np.ndarray]) -> list[np.ndarray]:
    """Disparity maps (H, W) float32 of the model in `weights` for `images` (H, W, 3) uint8, at
    the evaluation input size, fp32 on the CPU."""
    from depth_anything_fast.inference.predictor import Predictor
    from depth_anything_fast.models import DepthAnything

    predictor = Predictor(DepthAnything.from_pretrained(weights), batch_size=16,
                          precision="fp32", input_size=EVAL_INPUT_SIZE, device="cpu")
    return predictor.predict(images)


def evaluate_models(world: World, models: dict[str, Path], baselines: bool = True) -> Evaluation:
    """Score each model (and, with `baselines`, the two baselines) on the val split.

    All rows are scored in depth space (least-squares alignment in disparity, then compared as
    depth, MiDaS style); the constant baseline cannot be aligned by least squares (a constant
    has no scale), so it is median-scaled (= the per-image median ground-truth depth), which is
    only comparable in depth space."""
    from depth_anything_fast.evaluate.runner import evaluate_predictions

    samples = val_samples(world)
    results: dict[str, Any] = {}
    for name, weights in models.items():
        predictions = predict(weights, [s.image for s in samples])
        results[name] = evaluate_predictions(samples, replay(predictions),
                                             scoring="relative-depth", batch_size=16)
    if baselines:
        results["baseline_constant"] = evaluate_predictions(
            samples, lambda images: [np.ones(im.shape[:2], np.float32) for im in images],
            scoring="metric-median")
        results["baseline_row_prior"] = evaluate_predictions(
            samples, lambda images: [row_prior(im.shape[:2]) for im in images],
            scoring="relative-depth")
    per_image = {
        name: [{"name": r["name"], "kind": kind_of(r["name"], world.val_kinds),
                "abs_rel": r["abs_rel"], "delta1": r["delta1"]}
               for r in result.per_image if r.get("degenerate") is None]
        for name, result in results.items()}
    return Evaluation(per_image, samples)


def summarise(records: list[dict[str, Any]], kinds: Sequence[str]) -> dict[str, dict]:
    """Mean AbsRel / delta1 (and image count) per kind and "overall" of one model's records."""
    out = {}
    for kind in [*kinds, "overall"]:
        rows = [r for r in records if kind == "overall" or r["kind"] == kind]
        out[kind] = {"abs_rel": float(np.mean([r["abs_rel"] for r in rows])) if rows else None,
                     "delta1": float(np.mean([r["delta1"] for r in rows])) if rows else None,
                     "n": len(rows)}
    return out
