"""The whole Depth Anything recipe in minutes on a CPU: ``python -m depth_anything_fast.demo``.

1. Generate a synthetic world with four kinds of scene (room, closeup, street, field). The
   labelled images cover two kinds only (room, street); the unlabelled and validation images
   cover all four, as real labelled sets cover less of the world than unlabelled photos do.
2. Pretrain a frozen semantic encoder on the unlabelled images' semantic classes (never depth),
   standing in for DINOv2 (`recipe.semantic_encoder`).
3. Train a tiny teacher on the labelled images, its encoder starting from the semantic encoder.
4. Pseudo-label the unlabelled images with the teacher (the pseudo-label CLI's engine).
5. Train a tiny student on labelled + pseudo-labelled images (1:2 per batch, strong colour
   perturbation and CutMix on the pseudo-labelled part, feature alignment to the frozen
   semantic encoder), its encoder also starting from the semantic encoder, not from the teacher.
6. Train a labelled-only control for the student's steps with as many (labelled) images per
   step as the student sees (labelled + pseudo-labelled), from the same start.
7. Evaluate teacher, student, control and two trivial baselines on the validation images per
   kind and overall; the paired per-image AbsRel difference student - control with a 95%
   bootstrap CI. Writes ``<out>/results.json``, ``results.md``, ``chart.png`` and depth pictures
   in ``<out>/visualisations``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from depth_anything_fast.recipe import pipeline

MODELS = ("teacher", "student", "control")
BASELINES = ("baseline_constant", "baseline_row_prior")
PICTURES_PER_KIND = 2


def _student_budget() -> tuple[int, int]:
    """(steps, images per step) of the demo student."""
    from depth_anything_fast.train.config import load_config

    cfg = load_config(pipeline.STUDENT_CONFIG)
    return cfg.steps, cfg.data.batch_size * (1 + cfg.data.unlabelled_ratio)


def train_demo_models(out: Path, world: pipeline.World, *, seed: int,
                      steps: int | None = None, overrides: Sequence[str] = ()) -> dict[str, Path]:
    """Teacher, pseudo-labels, student and the labelled-only control; `steps` overrides every
    stage's steps (smoke runs), `overrides` (``FIELD=VALUE``) every stage's config."""
    layout = world.layout
    student_steps, images_per_step = _student_budget()
    if steps is not None:
        student_steps = steps
    common = [f"data.labelled={layout.labelled}", f"model.init={world.encoder}", *overrides]
    step_override = [] if steps is None else [f"steps={steps}"]
    teacher = pipeline.train(pipeline.TEACHER_CONFIG,
                             [*common, *step_override, f"seed={seed}",
                              f"out_dir={out / 'teacher'}"], "teacher")
    pseudo = pipeline.pseudo_label_images(teacher, layout.unlabelled, out / "pseudo_labels")
    student = pipeline.train(pipeline.STUDENT_CONFIG,
                             [*common, *step_override, f"seed={seed + 1}",
                              f"out_dir={out / 'student'}", f"data.pseudo_labels={pseudo}",
                              f"model.frozen_encoder={world.encoder}"], "student")
    control = pipeline.train(pipeline.TEACHER_CONFIG,
                             [*common, f"steps={student_steps}", f"seed={seed + 2}",
                              f"data.batch_size={images_per_step}",
                              f"out_dir={out / 'control'}"], "control")
    return {"teacher": teacher, "student": student, "control": control}


def _pictures(evaluation: pipeline.Evaluation, world: pipeline.World, out: Path) -> None:
    """Side-by-side strips of the first `PICTURES_PER_KIND` val images of each kind."""
    from PIL import Image

    from depth_anything_fast.inference.visualize import colorize
    from depth_anything_fast.recipe.synthetic import KINDS

    vis_dir = out / "visualisations"
    vis_dir.mkdir(parents=True, exist_ok=True)
    taken: dict[str, int] = {}
    for i, sample in enumerate(evaluation.samples):
        kind = pipeline._kind_of(sample.name, world.val_kinds)
        if taken.get(kind, 0) >= PICTURES_PER_KIND:
            continue
        taken[kind] = taken.get(kind, 0) + 1
        gap = np.full((sample.image.shape[0], 6, 3), 255, np.uint8)
        gt = np.where(sample.mask, 1.0 / np.maximum(sample.depth, 1e-6), 0.0)
        panels = [sample.image, colorize(gt),
                  *(colorize(evaluation.predictions[m][i]) for m in MODELS)]
        strip = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
        name = sample.name.replace("/", "_")
        Image.fromarray(strip).save(vis_dir / f"{kind}_{name}.png")
    order = [k for k in KINDS if k in taken]
    (vis_dir / "README.txt").write_text(
        f"Two validation images per kind ({', '.join(order)}). Each strip: image | "
        "ground-truth disparity (pixels without depth, e.g. sky, at 0 = far) | " + " | ".join(MODELS)
        + " (Spectral_r, near = red; per-image min-max).\n")


def _chart(summary: dict[str, dict], kinds: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*kinds, "overall"]
    names = [*MODELS, *BASELINES]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(names)
    for ax, metric, title in ((axes[0], "abs_rel", "AbsRel (lower is better)"),
                              (axes[1], "delta1", "delta1 (higher is better)")):
        for j, name in enumerate(names):
            values = [summary[name][g][metric] for g in groups]
            ax.bar(np.arange(len(groups)) + (j - (len(names) - 1) / 2) * width, values, width,
                   label=name)
        ax.set_xticks(np.arange(len(groups)), groups)
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle("Synthetic world, validation per kind (labelled data: room, street only)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(report: dict[str, Any]) -> str:
    kinds = report["kinds"]
    groups = [*kinds, "overall"]
    summary = report["summary"]
    lines = [
        f"Synthetic world: labelled kinds {', '.join(report['labelled_kinds'])} "
        f"({report['n_labelled']} images); unlabelled and validation cover {', '.join(kinds)} "
        f"({report['n_unlabelled']} unlabelled, {report['n_val']} validation images). Scored in "
        "depth space after per-image least-squares alignment in disparity (constant baseline: "
        "median depth).", "",
        "| model | " + " | ".join(f"{g} AbsRel / δ1" for g in groups) + " |",
        "|---|" + "---|" * len(groups)]
    for name in [*MODELS, *BASELINES]:
        cells = [f"{summary[name][g]['abs_rel']:.4f} / {summary[name][g]['delta1']:.3f}"
                 for g in groups]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Paired per-image AbsRel difference (95% bootstrap CI over images):", "",
              "| comparison | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for label, diffs in report["paired"].items():
        cells = [f"{d['mean']:+.4f} ({d['lo']:+.4f} … {d['hi']:+.4f})" for d in
                 (diffs[g] for g in groups)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"Wall time {report['elapsed_s']:.0f} s; load average at the end "
              f"{report['load_average']}."]
    return "\n".join(lines) + "\n"


def run_demo(out: Path, *, scale: float = 1.0, seed: int = 0,
             overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run the full demo into ``out``; ``scale`` < 1 shrinks data and steps (tests);
    ``overrides`` (``FIELD=VALUE``) apply to every training stage's config."""
    import os

    from depth_anything_fast.recipe.synthetic import KINDS

    pipeline.set_threads()
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    budget = pipeline.WorldBudget().scaled(scale)
    world = pipeline.prepare_world(out, budget, seed)
    steps = None if scale >= 1 else max(int(400 * scale), 2)
    models = train_demo_models(out, world, seed=seed, steps=steps, overrides=overrides)
    evaluation = pipeline.evaluate_models(world, models)
    kinds = list(KINDS)
    summary = {name: pipeline.summarise(records, kinds)
               for name, records in evaluation.per_image.items()}
    paired: dict[str, dict[str, dict[str, float]]] = {}
    for a, b in (("student", "control"), ("student", "teacher")):
        paired[f"{a} - {b}"] = {}
        for group in [*kinds, "overall"]:
            rows = [r for r in evaluation.per_image[a] if group == "overall" or r["kind"] == group]
            diff = pipeline.paired_differences(rows, evaluation.per_image[b])
            mean, lo, hi = pipeline.bootstrap_ci(diff)
            paired[f"{a} - {b}"][group] = {"mean": mean, "lo": lo, "hi": hi, "n": int(diff.size)}
    report = {
        "kinds": kinds, "labelled_kinds": list(budget.labelled_kinds),
        "n_labelled": budget.n_labelled, "n_unlabelled": budget.n_unlabelled,
        "n_val": budget.n_val, "seed": seed, "overrides": list(overrides), "summary": summary,
        "paired": paired,
        "elapsed_s": time.perf_counter() - start,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(_markdown(report))
    _chart(summary, kinds, out / "chart.png")
    _pictures(evaluation, world, out)
    report["table"] = _markdown(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m depth_anything_fast.demo",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="shrink data and training steps (< 1: a quick smoke run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="FIELD=VALUE",
                        help="config override for every training stage, e.g. "
                             "dist.precision=fp32 (repeatable)")
    args = parser.parse_args(argv)
    report = run_demo(Path(args.out), scale=args.scale, seed=args.seed,
                      overrides=args.overrides)
    summary = report["summary"]
    print()
    print(report["table"])
    for model in MODELS:
        beats = all(summary[model]["overall"]["abs_rel"] < summary[b]["overall"]["abs_rel"]
                    and summary[model]["overall"]["delta1"] > summary[b]["overall"]["delta1"]
                    for b in BASELINES)
        print(f"{model} beats both baselines overall: {'yes' if beats else 'NO'}")
    d = report["paired"]["student - control"]["overall"]
    verdict = "yes" if d["hi"] < 0 else "no"
    print(f"student beats the labelled-only control (AbsRel difference {d['mean']:+.4f}, 95% CI "
          f"{d['lo']:+.4f} … {d['hi']:+.4f}, upper bound below 0): {verdict}")
    print(f"[demo] done in {report['elapsed_s']:.0f}s; results in {args.out}/results.md, "
          f"chart {args.out}/chart.png, pictures in {args.out}/visualisations/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
