"""The whole Depth Anything recipe in minutes on a CPU: ``python -m depth_anything_fast.demo``.

1. Generate a synthetic RGB-D set (labelled, unlabelled, held-out val).
2. Train a tiny teacher on the labelled images (affine-invariant loss).
3. Pseudo-label the unlabelled images with the teacher (the pseudo-label CLI's engine).
4. Train a tiny student on labelled + pseudo-labelled images (1:2 per batch, strong colour
   perturbation and CutMix on the pseudo-labelled part, feature alignment to a frozen encoder).
   There is no pretrained DINOv2 here, so the frozen encoder is the teacher's encoder, and the
   student starts from random weights, as the teacher did (in the paper both start from DINOv2).
5. Evaluate teacher, student and two trivial baselines on the held-out images and write
   ``<out>/results.json``, ``<out>/results.md`` and depth visualisations.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SIZE = (120, 160)  # (H, W) of the synthetic images
N_LABELLED, N_UNLABELLED, N_VAL = 400, 800, 50
# Shorter side the models see at evaluation (the training crop size: same scale).
EVAL_INPUT_SIZE = 112
N_VISUALISED = 6


def _train(config: Path, overrides: list[str], label: str) -> Path:
    from depth_anything_fast.train.config import load_config
    from depth_anything_fast.train.trainer import Trainer

    cfg = load_config(config, overrides)
    start = time.perf_counter()
    result = Trainer(cfg).run()
    if result["status"] == "terminated":
        print(f"[demo] {label} stopped by SIGTERM at step {result['step']} (checkpoint saved); "
              "run the demo again to start over", flush=True)
        sys.exit(143)
    if result["status"] != "done" or result["export"] is None:
        raise RuntimeError(f"{label} training did not finish: {result}")
    print(f"[demo] {label}: {result['step']} steps in {time.perf_counter() - start:.0f}s, "
          f"final loss {result['loss']:.4f} -> {result['export']}", flush=True)
    return Path(result["export"])


def _row_prior(shape: tuple[int, int]) -> np.ndarray:
    """Disparity growing linearly from the top row to the bottom row (the ground is near)."""
    rows = np.linspace(0.0, 1.0, shape[0], dtype=np.float32)
    return np.repeat(rows[:, None], shape[1], axis=1)


def _replay(maps: list[np.ndarray]) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """A predict function handing out already computed maps in order (the runner calls it
    batch by batch over the same samples)."""
    remaining = iter(maps)
    return lambda images: [next(remaining) for _ in images]


def evaluate_all(val_root: Path, models: dict[str, Path], out: Path) -> dict[str, dict]:
    """Mean metrics of each model and of the two baselines on the held-out set (through the
    evaluate module's runner); writes side-by-side visualisations of the first images.

    All rows are scored in depth space (least-squares alignment in disparity, then compared as
    depth, MiDaS style): the constant baseline cannot be aligned by least squares (a constant
    has no scale), so it is median-scaled (= the per-image median ground-truth depth), which
    is only comparable in depth space."""
    from PIL import Image

    from depth_anything_fast.data.synthetic import DEPTH_SPEC
    from depth_anything_fast.evaluate.datasets import get_reader
    from depth_anything_fast.evaluate.runner import evaluate_predictions
    from depth_anything_fast.inference.predictor import Predictor
    from depth_anything_fast.inference.visualize import colorize
    from depth_anything_fast.models import DepthAnything

    samples = list(get_reader("generic", val_root, encoding=DEPTH_SPEC))
    results: dict[str, dict] = {}
    shown: dict[str, list[np.ndarray]] = {}
    for name, weights in models.items():
        predictor = Predictor(DepthAnything.from_pretrained(weights), batch_size=16,
                              precision="fp32", input_size=EVAL_INPUT_SIZE, device="cpu")
        predictions = predictor.predict([s.image for s in samples])
        shown[name] = predictions[:N_VISUALISED]
        results[name] = evaluate_predictions(samples, _replay(predictions),
                                             scoring="relative-depth", batch_size=16).mean
    results["baseline_constant"] = evaluate_predictions(
        samples, lambda images: [np.ones(im.shape[:2], np.float32) for im in images],
        scoring="metric-median").mean
    results["baseline_row_prior"] = evaluate_predictions(
        samples, lambda images: [_row_prior(im.shape[:2]) for im in images],
        scoring="relative-depth").mean

    vis_dir = out / "visualisations"
    vis_dir.mkdir(parents=True, exist_ok=True)
    for i, sample in enumerate(samples[:N_VISUALISED]):
        gap = np.full((sample.image.shape[0], 8, 3), 255, np.uint8)
        gt = np.where(sample.mask, 1.0 / np.maximum(sample.depth, 1e-6), 0.0)
        panels = [sample.image, colorize(gt), *(colorize(shown[n][i]) for n in models)]
        strip = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
        Image.fromarray(strip).save(vis_dir / f"{sample.name.replace('/', '_')}.png")
    (vis_dir / "README.txt").write_text(
        "Each strip: image | ground-truth disparity | " + " | ".join(models)
        + " (Spectral_r, near = red; per-image min-max).\n")
    return results


def _table(results: dict[str, dict]) -> str:
    lines = ["| model | AbsRel (lower is better) | delta1 (higher is better) |",
             "|---|---|---|"]
    for name, m in results.items():
        lines.append(f"| {name} | {m['abs_rel']:.4f} | {m['delta1']:.4f} |")
    return "\n".join(lines)


def _config_dir() -> Path:
    """configs/ of the checkout, which the wheel ships as the package depth_anything_fast.configs."""
    spec = importlib.util.find_spec("depth_anything_fast.configs")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "depth_anything_fast.configs not found: reinstall the package (pip install -e .)"
        )
    return Path(spec.origin).parent


def run_demo(out: Path, *, scale: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Run the full demo into ``out``; ``scale`` < 1 shrinks data and steps (tests)."""
    import torch

    from depth_anything_fast.data.synthetic import generate_dataset
    from depth_anything_fast.inference.pseudo_label import pseudo_label

    config_dir = _config_dir()
    # Leave one core to the loaders' decode / augmentation threads: with every core running
    # OpenMP compute as well, the two fight and a 2-core machine trains several times slower
    # (measured on a busy 2-core machine: 1 compute thread was 3-5x faster per step than 2).
    torch.set_num_threads(max((os.cpu_count() or 2) - 1, 1))
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)

    def n(count: int) -> int:
        return max(int(count * scale), 8)

    layout = generate_dataset(out / "data", n_labelled=n(N_LABELLED),
                              n_unlabelled=n(N_UNLABELLED), n_val=n(N_VAL), size=IMAGE_SIZE,
                              seed=seed)
    print(f"[demo] synthetic data in {layout.root} ({time.perf_counter() - start:.0f}s)",
          flush=True)

    steps = [] if scale >= 1 else [f"steps={max(int(600 * scale), 2)}"]
    common = [*steps, "progress=" + str(sys.stderr.isatty()).lower(), f"seed={seed}"]
    teacher = _train(config_dir / "demo_teacher.yaml",
                     [*common, f"out_dir={out / 'teacher'}", f"data.labelled={layout.labelled}"],
                     "teacher")

    t = time.perf_counter()
    summary = pseudo_label(teacher, layout.unlabelled, out / "pseudo_labels",
                           batch_size=32, precision="fp32", input_size=EVAL_INPUT_SIZE,
                           original_size=True, device="cpu", handle_signals=False)
    if summary.failed:
        raise RuntimeError(f"pseudo-labelling failed for {summary.failed} images: "
                           f"see {out / 'pseudo_labels'}")
    print(f"[demo] pseudo-labels: {summary.line()} ({time.perf_counter() - t:.0f}s)",
          flush=True)

    student = _train(config_dir / "demo_student.yaml",
                     [*common, f"seed={seed + 1}", f"out_dir={out / 'student'}",
                      f"data.labelled={layout.labelled}",
                      f"data.pseudo_labels={out / 'pseudo_labels'}",
                      f"model.frozen_encoder={teacher}"],
                     "student")

    metrics = evaluate_all(layout.val, {"teacher": teacher, "student": student}, out)
    results = {name: {"abs_rel": m["abs_rel"], "delta1": m["delta1"]}
               for name, m in metrics.items()}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = _table(results)
    (out / "results.md").write_text(
        f"Held-out synthetic images: {N_VAL if scale >= 1 else n(N_VAL)} (depth space, "
        f"per-image least-squares alignment in disparity; constant baseline: median depth)"
        f"\n\n{table}\n")
    elapsed = time.perf_counter() - start
    return {"results": results, "table": table, "elapsed_s": elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m depth_anything_fast.demo",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="shrink data and training steps (< 1: a quick smoke run)")
    args = parser.parse_args(argv)
    report = run_demo(Path(args.out), scale=args.scale, seed=args.seed)
    results = report["results"]
    print()
    print(report["table"])
    print()
    baselines = ("baseline_constant", "baseline_row_prior")
    for model in ("teacher", "student"):
        beats = all(results[model]["abs_rel"] < results[b]["abs_rel"]
                    and results[model]["delta1"] > results[b]["delta1"] for b in baselines)
        print(f"{model} beats both baselines: {'yes' if beats else 'NO'}")
    better = (results["student"]["abs_rel"] < results["teacher"]["abs_rel"]
              and results["student"]["delta1"] > results["teacher"]["delta1"])
    print(f"student beats teacher (AbsRel and delta1): {'yes' if better else 'no'}")
    print(f"[demo] done in {report['elapsed_s']:.0f}s; results in {args.out}/results.json, "
          f"visualisations in {args.out}/visualisations/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
