"""The budget question on the synthetic world: does self-training pay more the longer one trains?
``python -m depth_anything_fast.recipe.budget`` (``make budget``).

The labelled-only control sees its 240 images again and again; the student keeps meeting new
(pseudo-labelled, perturbed) ones. For every budget in ``--steps`` and every seed, a student
and a labelled-only control are trained for that many steps (the same images per step), the
student learning from the demo's teacher of the same seed (the labelled-only model at the
demo's steps, which is also the control at that budget). Per budget and kind: student -
control and student - teacher, seed-paired, with the two-way bootstrap over seeds and images
(`recipe.statistics`). Writes ``budget.json``, ``budget.md`` and ``budget.png`` (the curve),
rewritten after every training; finished runs (also the demo's, with ``--world``) are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import pipeline, runs, statistics

DEFAULT_STEPS = (400, 800, 1600)
DEFAULT_SEEDS = (0, 1, 2, 3, 4)


def budget_arms(steps: int, base_steps: int) -> tuple[runs.Arm, runs.Arm]:
    """(control, student) trained for `steps`; at the demo's `base_steps` they are the demo's
    own pair (so its runs are reused), else named after their budget."""
    if steps == base_steps:
        return runs.TEACHER, runs.STUDENT
    return (runs.Arm(f"control_{steps}", overrides=(f"steps={steps}",)),
            runs.Arm(f"student_{steps}", teacher=runs.TEACHER.name,
                     overrides=(f"steps={steps}",)))


def summarise(scores: dict[str, dict[int, runs.Records]], budgets: Sequence[int],
              base_steps: int, kinds: list[str]) -> list[dict[str, Any]]:
    """One entry per budget whose control and student have a seed in common: mean AbsRel /
    delta1 per kind of control, student and teacher, and the seed-paired differences
    student - control and student - teacher per kind."""
    out = []
    for steps in budgets:
        control, student = (scores.get(a.name, {}) for a in budget_arms(steps, base_steps))
        teacher = scores.get(runs.TEACHER.name, {})
        if not set(control) & set(student):
            continue
        means = {}
        for label, by_seed in (("control", control), ("student", student),
                               ("teacher", teacher)):
            per_seed = [pipeline.summarise(r, kinds) for r in by_seed.values()]
            means[label] = {g: {m: float(np.mean([s[g][m] for s in per_seed]))
                                for m in ("abs_rel", "delta1")} for g in [*kinds, "overall"]}
        entry = {"steps": steps, "seeds": sorted(set(control) & set(student)), "mean": means,
                 "student - control": statistics.paired_report(student, control, kinds)}
        if set(teacher) & set(student):
            entry["student - teacher"] = statistics.paired_report(student, teacher, kinds)
        out.append(entry)
    return out


def _markdown(report: dict[str, Any]) -> str:
    meta, kinds = report["meta"], report["kinds"]
    groups = [*kinds, "overall"]
    lines = [f"# Budget curve on the synthetic world ({'complete' if meta['complete'] else 'PARTIAL'})",
             "", f"Command: `{meta['command']}`", "",
             f"Student and labelled-only control trained for each budget ({meta['images_per_step']} "
             f"images per step), seeds {', '.join(map(str, meta['seeds_requested']))}; every "
             f"student learns from the teacher of its seed (labelled only, {meta['base_steps']} "
             "steps: the control at that budget). AbsRel in depth space after per-image "
             "least-squares alignment in disparity; differences seed-paired, 95% CI: "
             + statistics.METHOD + ".", "",
             "| steps | seeds | comparison | " + " | ".join(groups) + " |",
             "|---|---|---|" + "---|" * len(groups)]
    for entry in report["budgets"]:
        seeds = ", ".join(map(str, entry["seeds"]))
        for comparison in ("student - control", "student - teacher"):
            if comparison in entry:
                d = entry[comparison]
                lines.append(f"| {entry['steps']} | {seeds} | {comparison} | " + " | ".join(
                    statistics.Interval(d[g]["mean"], d[g]["lo"], d[g]["hi"]).text()
                    for g in groups) + " |")
    lines += ["", "Mean AbsRel / δ1 over the seeds:", "",
              "| steps | model | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
    for entry in report["budgets"]:
        for model in ("control", "student"):
            m = entry["mean"][model]
            lines.append(f"| {entry['steps']} | {model} | " + " | ".join(
                f"{m[g]['abs_rel']:.4f} / {m[g]['delta1']:.3f}" for g in groups) + " |")
    if report["budgets"]:
        m = report["budgets"][0]["mean"]["teacher"]
        lines.append(f"| {meta['base_steps']} | teacher | " + " | ".join(
            f"{m[g]['abs_rel']:.4f} / {m[g]['delta1']:.3f}" for g in groups) + " |")
    lines += ["", f"Wall time {meta['elapsed_s']:.0f} s ({meta['workers']} training processes), "
              f"CPU time {meta['cpu_s']:.0f} s on {meta['machine']}; load average at the start "
              f"{meta['load_average_start']}, at the end {meta['load_average']}."]
    return "\n".join(lines) + "\n"


def _chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*report["kinds"], "overall"]
    budgets = report["budgets"]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.4 * len(groups), 3.6), sharey=True)
    for ax, group in zip(axes, groups):
        for comparison, shift, colour in (("student - control", -0.03, "#3d6fa6"),
                                          ("student - teacher", 0.03, "#c2703d")):
            points = [(e["steps"], e[comparison][group]) for e in budgets if comparison in e]
            if not points:
                continue
            x = np.array([s for s, _ in points], dtype=float) * 2**shift
            mean = np.array([d["mean"] for _, d in points])
            err = np.array([[d["mean"] - d["lo"], d["hi"] - d["mean"]] for _, d in points]).T
            ax.errorbar(x, mean, yerr=err, marker="o", capsize=3, color=colour, label=comparison)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks([e["steps"] for e in budgets],
                      [f"{e['steps']}\n{len(e['seeds'])} seeds" for e in budgets])
        ax.set_xlabel("training steps")
        ax.set_title(group)
    axes[0].set_ylabel("AbsRel difference (< 0: student better)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Self-training against the training budget, seed-paired 95% CI over the "
                 "seeds (per budget) and the images"
                 + ("" if report["meta"]["complete"] else " - PARTIAL"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_budget(out: Path, *, seeds: Sequence[int], budgets: Sequence[int],
               world_dir: Path | None = None, scale: float = 1.0, command: str = "",
               workers: int = 1, train: bool = True) -> dict[str, Any]:
    """Train every (budget, seed) pair and return the report (rewritten after each job)."""
    from depth_anything_fast.recipe.synthetic import KINDS
    from depth_anything_fast.train.config import load_config

    start, cpu_start = time.perf_counter(), pipeline.cpu_seconds()
    meta: dict[str, Any] = {"load_average_start": [round(v, 2) for v in os.getloadavg()]}
    pipeline.set_threads()
    out.mkdir(parents=True, exist_ok=True)
    budget = pipeline.WorldBudget().scaled(scale)
    world = pipeline.prepare_world(world_dir or out, budget)
    base_steps = load_config(pipeline.STUDENT_CONFIG).steps
    if scale < 1:  # smoke runs: every budget shrunk alike
        budgets = [max(int(s * scale), 2) for s in budgets]
        base_steps = max(int(base_steps * scale), 2)
    arms = [runs.TEACHER, *(a for s in budgets for a in budget_arms(s, base_steps))]
    extra = [] if scale >= 1 else [f"steps={base_steps}"]
    meta.update(command=command, seeds_requested=list(seeds), workers=workers,
                base_steps=base_steps, images_per_step=runs.images_per_step(),
                machine=f"{platform.machine()}, {os.cpu_count()} CPU cores (shared)")
    jobs, finals = runs.plan(world, out, seeds, list(dict.fromkeys(arms)),
                             [world_dir] if world_dir else [], extra)
    report: dict[str, Any] = {}

    def write(_job: str | None = None) -> None:
        done = runs.finished(finals)
        if not done:
            return
        scores = runs.score(world, out, done)
        meta.update(complete=len(done) == len(finals), elapsed_s=time.perf_counter() - start,
                    cpu_s=pipeline.cpu_seconds() - cpu_start,
                    load_average=[round(v, 2) for v in os.getloadavg()])
        report.update(meta=meta, kinds=list(KINDS),
                      budgets=summarise(scores, budgets, base_steps, list(KINDS)))
        (out / "budget.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "budget.md").write_text(_markdown(report))
        if report["budgets"]:
            _chart(report, out / "budget.png")

    if train:
        runs.run_jobs(jobs, workers, on_done=write)
    write()
    if not report:
        raise SystemExit(f"no finished budget run under {out}")
    print(_markdown(report), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m depth_anything_fast.recipe.budget",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="budget_out", help="output directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--steps", type=int, nargs="+", default=list(DEFAULT_STEPS),
                        help="training budgets of student and control (default 400 800 1600)")
    runs.add_run_arguments(parser, reuse=True)
    args = parser.parse_args(argv)
    for name in ("seeds", "steps"):
        values = getattr(args, name)
        if len(set(values)) != len(values):
            parser.error(f"--{name} must be distinct, got {values}")
    command = "python -m depth_anything_fast.recipe.budget " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    run_budget(Path(args.out), seeds=args.seeds, budgets=sorted(args.steps),
               world_dir=Path(args.world) if args.world else None, scale=args.scale,
               command=command.strip(), workers=args.workers or pipeline.default_workers(),
               train=not args.no_train)
    return 0


if __name__ == "__main__":
    sys.exit(main())
