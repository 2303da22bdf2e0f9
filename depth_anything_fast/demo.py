"""The whole Depth Anything recipe on a CPU, with a verdict that holds over seeds:
``python -m depth_anything_fast.demo``.

1. Generate a synthetic world with four kinds of scene (room, closeup, street, field), once. The
   labelled images cover two kinds only (room, street); the unlabelled and validation images
   cover all four, as real labelled sets cover less of the world than unlabelled photos do.
2. Pretrain a frozen semantic encoder on the unlabelled images' semantic classes (never depth),
   standing in for DINOv2 (`recipe.semantic_encoder`), once.
3. For every training seed (default 0, 1, 2), on worker processes side by side:
   a. a labelled-only model (the teacher config with the student's steps and images per step):
      the student's teacher and, being exactly what one trains without the unlabelled images,
      its control;
   b. the teacher's pseudo-labels of the unlabelled images (the pseudo-label CLI's engine);
   c. a student on labelled + pseudo-labelled images (1:2 per batch, strong colour
      perturbation and CutMix on the pseudo-labelled part, feature alignment to the frozen
      semantic encoder), its encoder starting from the semantic encoder, not from the teacher,
      with the same seed as its control: the same initial weights and labelled-image order.
4. Score every model and two trivial baselines on the validation images per kind; the
   seed-paired difference student - control per kind and overall with the 95% interval of the
   two-way bootstrap over seeds and images (`recipe.statistics`). The verdict is yes only when
   the overall interval lies below 0. Writes ``<out>/results.json``, ``results.md``,
   ``chart.png`` and depth pictures of the first seed in ``<out>/visualisations``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from depth_anything_fast.recipe import pipeline, runs, statistics

MODELS = ("teacher", "student")  # the teacher is the control
BASELINES = ("baseline_constant", "baseline_row_prior")
LABELS = {"teacher": "control (labelled only; the teacher)", "student": "student",
          "baseline_constant": "constant (median depth)", "baseline_row_prior": "row prior"}
PICTURES_PER_KIND = 2
DEFAULT_SEEDS = (0, 1, 2)


def _pictures(world: pipeline.World, models: dict[str, Path], out: Path) -> None:
    """Side-by-side strips of the first `PICTURES_PER_KIND` val images of each kind."""
    from PIL import Image

    from depth_anything_fast.inference.visualize import colorize
    from depth_anything_fast.recipe.synthetic import KINDS

    vis_dir = out / "visualisations"
    vis_dir.mkdir(parents=True, exist_ok=True)
    chosen, taken = [], {k: 0 for k in KINDS}
    for sample in pipeline.val_samples(world):
        kind = pipeline.kind_of(sample.name, world.val_kinds)
        if taken[kind] < PICTURES_PER_KIND:
            taken[kind] += 1
            chosen.append((kind, sample))
    maps = {m: pipeline.predict(models[m], [s.image for _, s in chosen]) for m in MODELS}
    for i, (kind, sample) in enumerate(chosen):
        gap = np.full((sample.image.shape[0], 6, 3), 255, np.uint8)
        gt = np.where(sample.mask, 1.0 / np.maximum(sample.depth, 1e-6), 0.0)
        panels = [sample.image, colorize(gt), *(colorize(maps[m][i]) for m in MODELS)]
        strip = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
        Image.fromarray(strip).save(vis_dir / f"{kind}_{sample.name.replace('/', '_')}.png")
    order = [k for k in KINDS if taken[k]]
    (vis_dir / "README.txt").write_text(
        f"Two validation images per kind ({', '.join(order)}), models of the first seed. Each "
        "strip: image | ground-truth disparity (pixels without depth, e.g. sky, at 0 = far) | "
        "control (labelled only, the teacher) | student (Spectral_r, near = red; per-image "
        "min-max).\n")


def _chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*report["kinds"], "overall"]
    x = np.arange(len(groups))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = [*MODELS, *BASELINES]
    width = 0.8 / len(names)
    for ax, metric, title in ((axes[0], "abs_rel", "AbsRel (lower is better)"),
                              (axes[1], "delta1", "delta1 (higher is better)")):
        for j, name in enumerate(names):
            offset = x + (j - (len(names) - 1) / 2) * width
            ax.bar(offset, [report["summary"][name][g][metric] for g in groups], width,
                   label=LABELS[name])
            for seed_summary in report["per_seed"].get(name, {}).values():
                ax.scatter(offset, [seed_summary[g][metric] for g in groups], color="k", s=6,
                           zorder=3)
        ax.set_xticks(x, groups)
        ax.set_title(title + "; dots: seeds")
    axes[0].legend(fontsize=7)
    paired = report["paired"]["student - control"]
    means = np.array([paired[g]["mean"] for g in groups])
    err = np.array([[paired[g]["mean"] - paired[g]["lo"], paired[g]["hi"] - paired[g]["mean"]]
                    for g in groups]).T
    axes[2].bar(x, means, yerr=err, capsize=4, color=["#8fb3d9"] * (len(groups) - 1)
                + ["#3d6fa6"])
    axes[2].axhline(0, color="k", lw=0.8)
    axes[2].set_xticks(x, groups)
    axes[2].set_title("student - control AbsRel, seed-paired (95% CI)")
    fig.suptitle(f"Synthetic world, validation per kind, {len(report['seeds'])} seeds "
                 "(labelled data: room, street only)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(report: dict[str, Any]) -> str:
    groups = [*report["kinds"], "overall"]
    summary = report["summary"]
    lines = [
        f"Synthetic world: labelled kinds {', '.join(report['labelled_kinds'])} "
        f"({report['n_labelled']} images); unlabelled and validation cover "
        f"{', '.join(report['kinds'])} ({report['n_unlabelled']} unlabelled, {report['n_val']} "
        f"validation images). Seeds {', '.join(map(str, report['seeds']))}; every model "
        f"{report['steps']} steps x {report['images_per_step']} images. Scored in depth space "
        "after per-image least-squares alignment in disparity (constant baseline: median "
        "depth). The control is the labelled-only model of the same seed, which is also the "
        "student's teacher.", "",
        "Mean over seeds:", "",
        "| model | " + " | ".join(f"{g} AbsRel / δ1" for g in groups) + " |",
        "|---|" + "---|" * len(groups)]
    for name in [*MODELS, *BASELINES]:
        cells = [f"{summary[name][g]['abs_rel']:.4f} / {summary[name][g]['delta1']:.3f}"
                 for g in groups]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    paired = report["paired"]["student - control"]
    lines += ["", "Student - control, AbsRel, paired by seed (95% CI: " + statistics.METHOD + "):", "",
              "| | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups),
              "| mean (95% CI) | " + " | ".join(statistics.Interval(
                  paired[g]["mean"], paired[g]["lo"], paired[g]["hi"]).text() for g in groups)
              + " |"]
    for i, seed in enumerate(report["seeds"]):
        lines.append(f"| seed {seed} | " + " | ".join(f"{paired[g]['per_seed'][i]:+.4f}"
                                                      for g in groups) + " |")
    lines += ["", report["verdict_line"], "",
              f"Wall time {report['elapsed_s']:.0f} s ({report['workers']} training processes), "
              f"CPU time {report['cpu_s']:.0f} s; load average at the start "
              f"{report['load_average_start']}, at the end {report['load_average']}."]
    return "\n".join(lines) + "\n"


def _verdict(paired: dict[str, Any]) -> tuple[str, str]:
    overall = paired["overall"]
    interval = statistics.Interval(overall["mean"], overall["lo"], overall["hi"])
    verdict = "yes" if interval.hi < 0 else "no"
    how = ("the whole interval below 0" if verdict == "yes" else
           "the interval above 0: the student is worse" if interval.lo > 0 else
           "the interval includes 0")
    return verdict, (f"Student beats the labelled-only control over {len(overall['seeds'])} "
                     f"seeds: **{verdict}** (AbsRel difference {interval.text()}; {how}).")


def _report(world: pipeline.World, out: Path, models: dict[runs.RunKey, Path],
            budget: pipeline.WorldBudget, steps: int) -> dict[str, Any]:
    from depth_anything_fast.recipe.synthetic import KINDS

    kinds = list(KINDS)
    scores = runs.score(world, out, models)
    baselines = runs.baseline_scores(world, out)
    per_seed = {name: {seed: pipeline.summarise(r, kinds) for seed, r in scores[name].items()}
                for name in MODELS}
    summary: dict[str, Any] = {name: pipeline.summarise(baselines[name], kinds)
                               for name in BASELINES}
    for name in MODELS:
        summary[name] = {g: {m: float(np.mean([s[g][m] for s in per_seed[name].values()]))
                             for m in ("abs_rel", "delta1")} for g in [*kinds, "overall"]}
    paired = {"student - control": statistics.paired_report(scores["student"],
                                                             scores["teacher"], kinds)}
    verdict, line = _verdict(paired["student - control"])
    return {"kinds": kinds, "labelled_kinds": list(budget.labelled_kinds),
            "n_labelled": budget.n_labelled, "n_unlabelled": budget.n_unlabelled,
            "n_val": budget.n_val, "seeds": sorted(scores["student"]), "steps": steps,
            "images_per_step": runs.images_per_step(), "summary": summary,
            "per_seed": {n: {str(s): v for s, v in d.items()} for n, d in per_seed.items()},
            "paired": paired, "method": statistics.METHOD, "verdict": verdict, "verdict_line": line}


def run_demo(out: Path, *, scale: float = 1.0, seeds: Sequence[int] = DEFAULT_SEEDS,
             workers: int | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run the full demo into ``out``; ``scale`` < 1 shrinks data and steps (tests);
    ``overrides`` (``FIELD=VALUE``) apply to every training stage's config. Finished runs of
    the same configuration under ``out`` are reused."""
    from depth_anything_fast.train.config import load_config

    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"seeds must be distinct and at least one, got {list(seeds)}")
    workers = pipeline.default_workers() if workers is None else workers
    load_start = [round(x, 2) for x in os.getloadavg()]
    start, cpu_start = time.perf_counter(), pipeline.cpu_seconds()
    pipeline.set_threads()
    out.mkdir(parents=True, exist_ok=True)
    budget = pipeline.WorldBudget().scaled(scale)
    world = pipeline.prepare_world(out, budget)
    steps = load_config(pipeline.STUDENT_CONFIG).steps
    if scale < 1:
        steps = max(int(steps * scale), 2)
    extra = [*([f"steps={steps}"] if scale < 1 else []), *overrides]
    models = runs.train_arms(world, out, seeds, (runs.TEACHER, runs.STUDENT), workers,
                             extra=extra)
    report = _report(world, out, models, budget, steps)
    report.update(overrides=list(overrides), workers=workers,
                  elapsed_s=time.perf_counter() - start, cpu_s=pipeline.cpu_seconds() - cpu_start,
                  load_average_start=load_start,
                  load_average=[round(x, 2) for x in os.getloadavg()])
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(_markdown(report))
    _chart(report, out / "chart.png")
    first = min(seeds)
    _pictures(world, {m: models[(first, m)] for m in MODELS}, out)
    report["table"] = _markdown(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m depth_anything_fast.demo",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                        help="training seeds, paired: each trains a control and a student "
                             "(default 0 1 2)")
    runs.add_run_arguments(parser, reuse=False)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="FIELD=VALUE",
                        help="config override for every training stage, e.g. "
                             "dist.precision=fp32 (repeatable)")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    report = run_demo(Path(args.out), scale=args.scale, seeds=args.seeds, workers=args.workers,
                      overrides=args.overrides)
    summary = report["summary"]
    print()
    print(report["table"])
    for model in MODELS:
        beats = all(summary[model]["overall"]["abs_rel"] < summary[b]["overall"]["abs_rel"]
                    and summary[model]["overall"]["delta1"] > summary[b]["overall"]["delta1"]
                    for b in BASELINES)
        print(f"{LABELS[model]} beats both baselines overall on AbsRel and delta1 (mean over "
              f"seeds): {'yes' if beats else 'NO'}")
    print(report["verdict_line"].replace("**", ""))
    print(f"[demo] done in {report['elapsed_s']:.0f}s (CPU {report['cpu_s']:.0f}s); results in "
          f"{args.out}/results.md, chart {args.out}/chart.png, pictures in "
          f"{args.out}/visualisations/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
