"""The paper's ablation (Depth Anything, Table 9 in spirit) and the levers that bear on the kind
of scene only the unlabelled data shows, on the synthetic world:
``python -m depth_anything_fast.recipe.ablation`` (``make ablation``).

Every row is one model per seed, trained with the demo's steps and images per step; each is
compared with its labelled-only control of the same seed (`recipe.runs`: same seed, same
initial weights and labelled-image order). The paper's rows, each adding one ingredient:

1. labelled only (the control, and the teacher of the rows below unless said otherwise);
2. + pseudo-labelled images, clean view, no CutMix, no feature alignment (plain self-training);
3. + strong colour perturbation (colour jitter, greyscale, blur) on the pseudo-labelled images;
4. + CutMix (the authors' box sampler, p = 0.5);
5. + feature alignment to the frozen semantic encoder (alpha 0.85): the full recipe.

The levers, each one change to the full recipe (`LEVERS`): a teacher larger than the student
(its own, larger semantic encoder); a stronger frozen encoder (pretrained 4x longer on the
unlabelled images; the student, its teacher and its control all start from it, as all start
from DINOv2 in the paper); the alignment threshold alpha; the share of pseudo-labelled images
per batch (same images per step). Nothing uses the depth of the unlabelled images.

Per row: mean over seeds of the overall and per-kind AbsRel / delta1, a t-interval over seeds,
and the seed-paired difference to its control per kind and overall with the two-way bootstrap
over seeds and images (`recipe.statistics`). And why the unseen kind gets worse
(`recipe.unseen_kind`): every teacher's pseudo-label error per kind on the unlabelled images,
and how each student's per-image error follows its teacher's, with a scatter picture for
`field`. The world (data and semantic encoder) is the demo's when ``--world`` is given, and so
are its finished runs (the demo trains rows 1 and 5). Results are rewritten after every
training, so an interrupted run leaves what it finished, marked partial; a rerun reuses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import pipeline, runs, statistics, unseen_kind
from .runs import Arm

NO_PERTURBATION = ("loss.strong_perturbation=false", "loss.cutmix_p=0.0",
                   "loss.feature_alignment=false")
# A teacher larger than the student: 2x the encoder width, 1.5x its depth and the head's
# features.
LARGE_MODEL = ("model.embed_dim=128", "model.depth=6", "model.num_heads=4", "model.features=48")
LARGE_ENCODER, STRONG_ENCODER = "large", "strong"
# How the extra semantic encoders are pretrained, relative to the demo's (`WorldBudget`).
STRONG_STEPS_FACTOR = 4


@dataclass(frozen=True)
class Row:
    """One line of the table: the model of `arm`, compared with the arm `control`."""

    label: str
    arm: Arm
    control: str = "teacher"
    lever: bool = False


PAPER_ROWS = (
    Row("labelled only (control; teacher of the rows below)", runs.TEACHER),
    Row("+ pseudo-labelled, no perturbation",
        Arm("plain", teacher="teacher", overrides=NO_PERTURBATION)),
    Row("+ strong colour perturbation",
        Arm("strong_colour", teacher="teacher", overrides=(
            "loss.strong_perturbation=true", "loss.cutmix_p=0.0",
            "loss.feature_alignment=false"))),
    Row("+ CutMix",
        Arm("cutmix", teacher="teacher", overrides=(
            "loss.strong_perturbation=true", "loss.cutmix_p=0.5",
            "loss.feature_alignment=false"))),
    Row("+ feature alignment (full recipe)", runs.STUDENT),
)
_LARGE_TEACHER = Arm("teacher_large", overrides=LARGE_MODEL, encoder=LARGE_ENCODER)
_STRONG_TEACHER = Arm("teacher_strong_encoder", encoder=STRONG_ENCODER)
LEVERS = (
    Row("larger model, labelled only (the larger teacher)", _LARGE_TEACHER, lever=True),
    Row("full recipe, taught by the larger teacher",
        Arm("student_large_teacher", teacher="teacher_large"), lever=True),
    Row("stronger semantic encoder, labelled only (control of the next row)", _STRONG_TEACHER,
        lever=True),
    Row("full recipe, stronger semantic encoder",
        Arm("student_strong_encoder", teacher="teacher_strong_encoder",
            encoder=STRONG_ENCODER), control="teacher_strong_encoder", lever=True),
    Row("full recipe, alpha 0.5 (fewer tokens aligned)",
        Arm("alpha_0.5", teacher="teacher", overrides=("loss.alpha=0.5",)), lever=True),
    Row("full recipe, alpha 1.0 (every token aligned)",
        Arm("alpha_1.0", teacher="teacher", overrides=("loss.alpha=1.0",)), lever=True),
    Row("full recipe, 6 labelled + 6 pseudo-labelled per step",
        Arm("share_1to1", teacher="teacher",
            overrides=("data.batch_size=6", "data.unlabelled_ratio=1")), lever=True),
    Row("full recipe, 2 labelled + 10 pseudo-labelled per step",
        Arm("share_1to5", teacher="teacher",
            overrides=("data.batch_size=2", "data.unlabelled_ratio=5")), lever=True),
)
ROWS = PAPER_ROWS + LEVERS
# Training order (row by row, every seed of a row first: `runs.plan`): the demo's pair, then
# the levers, those that change what the student is taught about unseen kinds before the loss
# settings (stronger encoder, larger unlabelled share, larger teacher, then alpha and the 1:1
# share), then the paper's middle rows, so that a run cut short has the two ends of the paper's
# table and whole levers over every seed. The order was fixed before any lever had run.
TRAIN_ORDER = (0, 4, 7, 8, 12, 5, 6, 10, 9, 11, 1, 2, 3)


def prepare_encoders(world: pipeline.World, budget: pipeline.WorldBudget,
                     log: pipeline.Log = pipeline.log_line) -> pipeline.World:
    """`world` with the levers' semantic encoders: the larger teacher's (its architecture,
    the demo's settings) and the stronger one (the demo's architecture, 4x the steps)."""
    world = pipeline.add_encoder(world, LARGE_ENCODER, budget.encoder, LARGE_MODEL, log)
    strong = dataclasses.replace(budget.encoder,
                                 steps=budget.encoder.steps * STRONG_STEPS_FACTOR)
    return pipeline.add_encoder(world, STRONG_ENCODER, strong, (), log)


def encoder_info(world: pipeline.World) -> dict[str, dict[str, Any]]:
    """Each semantic encoder's info.json (settings, seconds, val accuracy)."""
    from .semantic_encoder import INFO_FILE

    return {name: json.loads((path.parent / INFO_FILE).read_text())
            for name, path in world.encoders.items()}


# ------------------------------------------------------------------------------ summary
def summarise(scores: dict[str, dict[int, runs.Records]], kinds: list[str],
              rows: Sequence[Row] = ROWS) -> list[dict[str, Any]]:
    """One entry per row that has a model for at least one seed: per-seed overall metrics,
    mean and t-interval over seeds, per-kind means, and the seed-paired difference to its
    control per kind and overall (over the seeds having both) with the two-way bootstrap."""
    out = []
    for row in rows:
        by_seed = scores.get(row.arm.name, {})
        if not by_seed:
            continue
        summaries = {s: pipeline.summarise(r, kinds) for s, r in by_seed.items()}
        overall = [m["overall"]["abs_rel"] for m in summaries.values()]
        entry: dict[str, Any] = {
            "row": row.label, "arm": row.arm.name, "control": row.control,
            "lever": row.lever, "seeds": sorted(by_seed),
            "abs_rel_per_seed": overall,
            "delta1_per_seed": [m["overall"]["delta1"] for m in summaries.values()],
            "abs_rel_mean": float(np.mean(overall)),
            "delta1_mean": float(np.mean([m["overall"]["delta1"] for m in summaries.values()])),
            "per_kind_abs_rel": {k: float(np.mean([m[k]["abs_rel"] for m in summaries.values()]))
                                 for k in kinds},
            "per_kind_delta1": {k: float(np.mean([m[k]["delta1"] for m in summaries.values()]))
                                for k in kinds},
        }
        if len(overall) > 1:
            interval = statistics.t_interval(overall)
            entry["abs_rel_ci"] = [interval.lo, interval.hi]
        control = scores.get(row.control, {})
        if row.arm.name != row.control and set(control) & set(by_seed):
            entry["vs_control"] = statistics.paired_report(by_seed, control, kinds)
        out.append(entry)
    return out


def pseudo_label_errors(world: pipeline.World, out: Path,
                        finals: dict[runs.RunKey, Path], kinds: list[str]
                        ) -> dict[str, dict[int, runs.Records]]:
    """Teacher arm name -> seed -> per-image records of its pseudo-labels on the unlabelled
    images (cached in ``<out>/seed<s>/pseudo_<teacher>_error.json``)."""
    teachers = {row.arm.teacher for row in ROWS if row.arm.teacher is not None}
    samples: list[Any] | None = None
    errors: dict[str, dict[int, runs.Records]] = {}
    for (seed, name), final in sorted(finals.items()):
        pseudo = final.parent.parent / f"pseudo_{name}"
        if name not in teachers or not (pseudo / "run_config.json").is_file():
            continue
        cache = out / f"seed{seed}" / f"pseudo_{name}_error.json"

        def compute(pseudo: Path = pseudo) -> runs.Records:
            nonlocal samples
            samples = samples if samples is not None else unseen_kind.unlabelled_samples(world)
            return unseen_kind.score_pseudo_labels(world, pseudo, samples)

        errors.setdefault(name, {})[seed] = unseen_kind.cached(
            cache, final / "model.safetensors", compute)
    return errors


def student_unlabelled_errors(world: pipeline.World, out: Path,
                              finals: dict[runs.RunKey, Path]) -> dict[int, runs.Records]:
    """Seed -> per-image records of the full recipe's student on the unlabelled images (the
    images it was trained on, against the exact depth), cached next to its scores."""
    samples: list[Any] | None = None
    errors = {}
    for (seed, name), final in sorted(finals.items()):
        if name != runs.STUDENT.name or not (final / "model.safetensors").is_file():
            continue

        def compute(final: Path = final) -> runs.Records:
            nonlocal samples
            samples = samples if samples is not None else unseen_kind.unlabelled_samples(world)
            return unseen_kind.score_model_unlabelled(world, final, samples)

        errors[seed] = unseen_kind.cached(out / f"seed{seed}" / "student_unlabelled_error.json",
                                          final / "model.safetensors", compute)
    return errors


def field_analysis(world: pipeline.World, out: Path, finals: dict[runs.RunKey, Path],
                   scores: dict[str, dict[int, runs.Records]], kinds: list[str]
                   ) -> dict[str, Any]:
    """Pseudo-label error of every teacher per kind (mean and t-interval over seeds), and how
    every student's per-image error follows its teacher's: on the validation images, and for
    the full recipe also on the unlabelled images it learnt from."""
    pseudo = pseudo_label_errors(world, out, finals, kinds)
    teachers = {}
    for name, by_seed in pseudo.items():
        per_seed = [pipeline.summarise(r, kinds) for r in by_seed.values()]
        teachers[name] = {"seeds": sorted(by_seed), **{
            g: _mean_ci([m[g]["abs_rel"] for m in per_seed]) | {
                "delta1": float(np.mean([m[g]["delta1"] for m in per_seed]))}
            for g in [*kinds, "overall"]}}
    followed = {row.arm.name: unseen_kind.follows(scores[row.arm.teacher], scores[row.arm.name],
                                                  kinds)
                for row in ROWS if row.arm.teacher in scores and row.arm.name in scores}
    analysis: dict[str, Any] = {"pseudo_label_error": teachers, "follows_teacher_val": followed}
    student_unlabelled = student_unlabelled_errors(world, out, finals)
    if student_unlabelled and "teacher" in pseudo:
        analysis["follows_teacher_unlabelled"] = unseen_kind.follows(
            pseudo["teacher"], student_unlabelled, kinds)
        panels = [("validation images: full recipe vs its teacher (= control)",
                   scores["teacher"], scores["student"]),
                  ("unlabelled images: full recipe vs the pseudo-labels it learnt from",
                   pseudo["teacher"], student_unlabelled)]
        if "student_large_teacher" in scores and "teacher_large" in scores:
            panels.append(("validation images: student of the larger teacher vs that teacher",
                           scores["teacher_large"], scores["student_large_teacher"]))
        unseen_kind.scatter(panels, "field", out / "field_scatter.png")
    return analysis


def _mean_ci(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"mean": float(np.mean(values))}
    interval = statistics.t_interval(values)
    return {"mean": interval.mean, "lo": interval.lo, "hi": interval.hi}


# ------------------------------------------------------------------------------ report
def _ci_text(entry: dict[str, Any] | None, group: str) -> str:
    if not entry:
        return "—"
    d = entry[group]
    return statistics.Interval(d["mean"], d["lo"], d["hi"]).text()


def _rows_table(rows: list[dict[str, Any]], kinds: list[str]) -> list[str]:
    lines = ["| row | vs | AbsRel mean (95% CI over seeds) | seeds | per seed | δ1 mean | "
             + " | ".join(f"{k} AbsRel / δ1" for k in kinds)
             + " | Δ AbsRel vs control, overall | Δ field |",
             "|---|---|---|---|---|---|" + "---|" * len(kinds) + "---|---|"]
    for r in rows:
        ci = f" ({r['abs_rel_ci'][0]:.4f} … {r['abs_rel_ci'][1]:.4f})" if "abs_rel_ci" in r else ""
        vs = r.get("vs_control")
        lines.append(
            f"| {r['row']} | {r['control'] if vs else '—'} | {r['abs_rel_mean']:.4f}{ci} | "
            + ", ".join(map(str, r["seeds"])) + " | " + ", ".join(f"{v:.4f}" for v in r["abs_rel_per_seed"])
            + f" | {r['delta1_mean']:.3f} | "
            + " | ".join(f"{r['per_kind_abs_rel'][k]:.4f} / {r['per_kind_delta1'][k]:.3f}"
                         for k in kinds)
            + f" | {_ci_text(vs, 'overall')} | {_ci_text(vs, 'field') if vs else '—'} |")
    return lines


def _kinds_table(rows: list[dict[str, Any]], kinds: list[str]) -> list[str]:
    groups = [*kinds, "overall"]
    lines = ["| row | vs | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
    for r in rows:
        if "vs_control" in r:
            lines.append(f"| {r['row']} | {r['control']} | "
                         + " | ".join(_ci_text(r["vs_control"], g) for g in groups) + " |")
    return lines


def _analysis_tables(analysis: dict[str, Any], kinds: list[str]) -> list[str]:
    groups = [*kinds, "overall"]
    lines = ["Pseudo-label AbsRel / δ1 of each teacher on the 800 unlabelled images, against their "
             "exact depth (rendered again for this measurement only), mean over seeds (95% "
             "t-interval over seeds):", "",
             "| teacher | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for name, t in analysis["pseudo_label_error"].items():
        cells = [f"{t[g]['mean']:.4f}" + (f" ({t[g]['lo']:.4f} … {t[g]['hi']:.4f})"
                                           if "lo" in t[g] else "") + f" / {t[g]['delta1']:.3f}"
                 for g in groups]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "How each student's per-image AbsRel follows its own teacher's (pooled over "
              "seeds; r: Pearson correlation, slope: least squares of student on teacher, "
              "better: share of images where the student's error is below its teacher's):", "",
              "| student | images | " + " | ".join(f"{g} r / slope / better" for g in groups)
              + " |", "|---|---|" + "---|" * len(groups)]
    sources = [(name, "validation", f) for name, f in analysis["follows_teacher_val"].items()]
    if "follows_teacher_unlabelled" in analysis:
        sources.append(("student", "unlabelled (its training images)",
                        analysis["follows_teacher_unlabelled"]))
    for name, where, f in sources:
        lines.append(f"| {name} | {where} | " + " | ".join(
            f"{f[g]['r']:.2f} / {f[g]['slope']:.2f} / {f[g]['student_better_share']:.2f}"
            if g in f else "—" for g in groups) + " |")
    return lines


def _markdown(report: dict[str, Any]) -> str:
    meta, rows, kinds = report["meta"], report["rows"], report["kinds"]
    status = "complete" if meta["complete"] else (
        "PARTIAL: not every row has every seed asked for (a run cut short, or rows trained "
        "for more seeds with --rows); each row gives its seeds")
    encoders = "; ".join(
        f"{name} ({info['settings']['steps']} steps): val patch-class accuracy "
        f"{info.get('val_patch_accuracy', float('nan')):.3f}, kind accuracy "
        f"{info.get('val_kind_accuracy', float('nan')):.3f}"
        for name, info in report["encoders"].items())
    lines = [
        f"# Ablation and levers on the synthetic world ({status})", "",
        f"Command: `{meta['command']}`", "",
        f"Every row: {meta['steps']} steps x {meta['images_per_step']} images per step; seeds "
        f"asked for {', '.join(map(str, meta['seeds_requested']))}; labelled data covers "
        f"{', '.join(meta['labelled_kinds'])} only, validation ({meta['n_val']} images) covers "
        f"{', '.join(kinds)}. AbsRel in depth space after per-image least-squares alignment in "
        "disparity (lower is better). Each row is compared with its labelled-only control of "
        "the same seed (\"vs\"). Semantic encoders: " + encoders + ".", "",
        *_rows_table(rows, kinds), "",
        "Difference to the control, AbsRel, seed-paired (95% CI: " + statistics.METHOD + "):",
        "", *_kinds_table(rows, kinds), ""]
    if report.get("analysis"):
        lines += ["## The unseen kind (field): pseudo-label error, and the student against its "
                  "teacher", "",
                  *_analysis_tables(report["analysis"], kinds), "",
                  "Scatter of the per-image errors on field: `field_scatter.png`.", ""]
    lines += [f"Wall time {meta['elapsed_s']:.0f} s ({meta['workers']} training processes), "
              f"CPU time {meta['cpu_s']:.0f} s on {meta['machine']}; load average at the start "
              f"{meta['load_average_start']}, at the end {meta['load_average']}."]
    return "\n".join(lines) + "\n"


def _chart(rows: list[dict[str, Any]], path: Path, partial: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared = [r for r in rows if "vs_control" in r]
    if not compared:
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(compared) + 1.8), sharey=True)
    y = np.arange(len(compared))[::-1]
    for ax, group in zip(axes, ("overall", "field")):
        d = [r["vs_control"][group] for r in compared]
        means = np.array([x["mean"] for x in d])
        err = np.array([[x["mean"] - x["lo"], x["hi"] - x["mean"]] for x in d]).T
        ax.barh(y, means, xerr=err, capsize=3,
                color=["#d9a98f" if r["lever"] else "#8fb3d9" for r in compared])
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"{group}: AbsRel difference to the control (95% CI; < 0: better)",
                     fontsize=9)
    axes[0].set_yticks(y, [r["row"] for r in compared], fontsize=7)
    fig.suptitle("Ablation (blue: the paper's rows; orange: levers), seed-paired"
                 + (" - PARTIAL" if partial else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class _Reporter:
    """Scores whatever is finished and rewrites ablation.json / .md / .png."""

    def __init__(self, world: pipeline.World, out: Path, kinds: list[str],
                 meta: dict[str, Any]) -> None:
        self.world, self.out, self.kinds, self.meta = world, out, kinds, meta
        self.finals: dict[runs.RunKey, Path] = {}
        self.report: dict[str, Any] = {}

    def write(self, _job: str | None = None) -> None:
        done = runs.finished(self.finals)
        if not done:
            return
        scores = runs.score(self.world, self.out, done)
        rows = summarise(scores, self.kinds)
        complete = all(k in done for k in self.finals) and len(self.finals) == len(
            self.meta["seeds_requested"]) * len(ROWS)
        cpu = pipeline.cpu_seconds()
        self.meta.update(complete=complete, elapsed_s=time.perf_counter() - self.meta["_start"],
                         cpu_s=cpu - self.meta["_cpu_start"],
                         load_average=[round(v, 2) for v in os.getloadavg()])
        self.report = {
            "meta": {k: v for k, v in self.meta.items() if not k.startswith("_")},
            "kinds": self.kinds, "rows": rows,
            "encoders": encoder_info(self.world),
            "analysis": field_analysis(self.world, self.out, done, scores, self.kinds)}
        (self.out / "ablation.json").write_text(json.dumps(self.report, indent=2) + "\n")
        (self.out / "ablation.md").write_text(_markdown(self.report))
        _chart(rows, self.out / "ablation.png", partial=not complete)


ROW_NAMES = tuple(row.arm.name for row in ROWS)


def row_jobs(jobs: dict[str, runs.Job], seeds: Sequence[int],
             names: Sequence[str]) -> dict[str, runs.Job]:
    """The jobs of `jobs` that the rows whose arms are named `names` need for `seeds`: their
    own training, their controls' and their teachers' (with the teachers' labels)."""
    unknown = sorted(set(names) - set(ROW_NAMES))
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}; the rows are {list(ROW_NAMES)}")
    arms = {name for row in ROWS if row.arm.name in names for name in (row.arm.name, row.control)}
    return runs.needed_by(jobs, [f"train {seed} {arm}" for arm in arms for seed in seeds])


def run_ablation(out: Path, *, seeds: list[int], world_dir: Path | None = None,
                 scale: float = 1.0, command: str = "", train: bool = True,
                 workers: int = 1, rows: Sequence[str] | None = None) -> dict[str, Any]:
    """Train every row (or only the rows whose arms `rows` names, with what they need) for
    every seed on `workers` processes (the report rewritten after each training) and return
    the final report of every finished row; `train=False` reports the finished rows only."""
    import platform

    from depth_anything_fast.recipe.synthetic import KINDS
    from depth_anything_fast.train.config import load_config

    meta: dict[str, Any] = {"_start": time.perf_counter(), "_cpu_start": pipeline.cpu_seconds(),
                            "load_average_start": [round(v, 2) for v in os.getloadavg()]}
    pipeline.set_threads()
    out.mkdir(parents=True, exist_ok=True)
    budget = pipeline.WorldBudget().scaled(scale)
    world = prepare_encoders(pipeline.prepare_world(world_dir or out, budget), budget)
    steps = load_config(pipeline.STUDENT_CONFIG).steps
    extra = [] if scale >= 1 else [f"steps={max(int(steps * scale), 2)}"]
    meta.update(command=command, seeds_requested=seeds, workers=workers,
                steps=steps if scale >= 1 else max(int(steps * scale), 2),
                images_per_step=runs.images_per_step(),
                labelled_kinds=list(budget.labelled_kinds), n_val=budget.n_val,
                machine=f"{platform.machine()}, {os.cpu_count()} CPU cores (shared)")
    reporter = _Reporter(world, out, list(KINDS), meta)
    arms = [ROWS[i].arm for i in TRAIN_ORDER]
    reuse = [world_dir] if world_dir is not None else []
    jobs, reporter.finals = runs.plan(world, out, seeds, arms, reuse, extra)
    if rows:
        jobs = row_jobs(jobs, seeds, rows)
    if train:
        runs.run_jobs(jobs, workers, on_done=reporter.write)
    reporter.write()
    if not reporter.report:
        raise SystemExit(f"no finished ablation row under {out}")
    print(_markdown(reporter.report), flush=True)
    return reporter.report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m depth_anything_fast.recipe.ablation",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="ablation_out",
                        help="output directory (default ablation_out)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", choices=ROW_NAMES, metavar="ARM",
                        help="train only these rows (by arm name, with their controls and "
                             "teachers), e.g. more seeds for one lever; the report still shows "
                             f"every finished row. Arms: {', '.join(ROW_NAMES)}")
    runs.add_run_arguments(parser, reuse=True)
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    command = "python -m depth_anything_fast.recipe.ablation " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    run_ablation(Path(args.out), seeds=args.seeds,
                 world_dir=Path(args.world) if args.world else None, scale=args.scale,
                 command=command.strip(), train=not args.no_train,
                 workers=args.workers or pipeline.default_workers(), rows=args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
